//! The key space: one per process, shared by every connection of it
//! behind one mutex (commands are a hash lookup and a copy, so a
//! connection holds the lock for microseconds: for one read's batch of
//! pipelined commands, taken once per batch). Expiry is time-based: keys
//! with a deadline are also kept in deadline order, and every batch first
//! drops the keys whose time has come (the time read once per batch, and
//! only if some key has a deadline: the protocol has no clock of its own),
//! so an expired key is never seen and never stays behind.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// The store of one process.
#[derive(Debug, Default)]
pub struct Store {
    db: Mutex<Db>,
}

impl Store {
    /// The key space, locked (a connection that panicked while holding it
    /// left it consistent: every change is one map operation).
    pub fn lock(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keys, values, and the deadlines of the keys that have one.
#[derive(Debug, Default)]
pub struct Db {
    map: HashMap<Vec<u8>, Entry>,
    deadlines: BTreeSet<(Instant, Vec<u8>)>,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

/// The time of one batch of commands, read when the first of them needs
/// it (most batches never do: no key has a deadline, no `SET` sets one).
#[derive(Debug, Default)]
pub struct Clock(Option<Instant>);

impl Clock {
    /// Now, as read the first time this batch asked.
    pub fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// Why `INCR` failed (Redis' texts).
pub const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
/// `INCR` of `i64::MAX`.
pub const OVERFLOW: &str = "ERR increment or decrement would overflow";

impl Db {
    /// Drops every key whose deadline has come.
    pub fn expire(&mut self, clock: &mut Clock) {
        while let Some((at, _)) = self.deadlines.first() {
            if *at > clock.now() {
                break;
            }
            if let Some((_, key)) = self.deadlines.pop_first() {
                self.map.remove(&key);
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|e| e.value.as_slice())
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Sets `key` to `value`, with a deadline or none (a plain `SET`
    /// clears an earlier one, as in Redis).
    pub fn set(&mut self, key: &[u8], value: &[u8], expires: Option<Instant>) {
        match self.map.get_mut(key) {
            Some(e) => {
                e.value.clear();
                e.value.extend_from_slice(value);
                if e.expires != expires {
                    if let Some(old) = e.expires.take() {
                        self.deadlines.remove(&(old, key.to_vec()));
                    }
                    e.expires = expires;
                    if let Some(at) = expires {
                        self.deadlines.insert((at, key.to_vec()));
                    }
                }
            }
            None => {
                if let Some(at) = expires {
                    self.deadlines.insert((at, key.to_vec()));
                }
                self.map.insert(key.to_vec(), Entry { value: value.to_vec(), expires });
            }
        }
    }

    /// Removes `key`; whether it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(e) => {
                if let Some(at) = e.expires {
                    self.deadlines.remove(&(at, key.to_vec()));
                }
                true
            }
            None => false,
        }
    }

    /// Adds one to the integer at `key` (0 if missing), keeping its
    /// deadline; the new value.
    pub fn incr(&mut self, key: &[u8]) -> Result<i64, &'static str> {
        let Some(e) = self.map.get_mut(key) else {
            self.map.insert(key.to_vec(), Entry { value: b"1".to_vec(), expires: None });
            return Ok(1);
        };
        let n = crate::resp::parse_i64(&e.value).ok_or(NOT_AN_INTEGER)?;
        let n = n.checked_add(1).ok_or(OVERFLOW)?;
        e.value.clear();
        e.value.extend_from_slice(crate::resp::digits(n, &mut [0; 20]));
        Ok(n)
    }

    /// Keys stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.map.clear();
        self.deadlines.clear();
    }
}
