//! Clients that echo in the background while a test does something to the
//! server (signals, upgrades): each opens a connection, does a number of
//! round trips (every one checked), closes it, again and again, until told
//! to stop or for at most 60 s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::net::{close_cleanly, dial, roundtrip};
use super::process::poll_until;
use super::server::SETTLE_TIMEOUT;

/// The clients, their round trips so far and their errors.
pub struct Load {
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` threads against `addr`, `trips` round trips per
    /// connection with `think` between them; connecting waits at most
    /// `connect` (a server between two processes may take a moment).
    pub fn start(addr: SocketAddr, clients: usize, trips: u32, think: Duration, connect: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut conn = 0;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        conn += 1;
                        let r = (|| {
                            let mut s = dial(addr, connect).map_err(|e| format!("connect: {e}"))?;
                            for i in 0..trips {
                                roundtrip(&mut s, format!("client {c} conn {conn} trip {i}").as_bytes())?;
                                done.fetch_add(1, Ordering::Relaxed);
                                if !think.is_zero() {
                                    thread::sleep(think); // the client's think time
                                }
                            }
                            close_cleanly(&mut s)
                        })();
                        if let Err(e) = r {
                            errors.lock().unwrap().push(format!("client {c}, connection {conn}: {e}"));
                        }
                    }
                })
            })
            .collect();
        Load { stop, trips: done, errors, threads }
    }

    /// Waits (bounded) until `n` more round trips were done.
    pub fn progresses(&self, n: u64) -> bool {
        let target = self.trips.load(Ordering::Relaxed) + n;
        poll_until(SETTLE_TIMEOUT, || self.trips.load(Ordering::Relaxed) >= target)
    }

    /// Stops the clients; the round trips done and the errors seen.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (self.trips.load(Ordering::Relaxed), std::mem::take(&mut *self.errors.lock().unwrap()))
    }
}
