//! `--max-conns-per-ip N` (nginx's `limit_conn`): at most N open connections
//! from one client address per process. The N+1th is closed at once after
//! accept (with the PROXY protocol: once the header named the client);
//! other addresses are unaffected. A permit is held for the whole life of a
//! connection and gives its place back when dropped. How many addresses
//! have a connection open is a gauge (`switchyard_client_addresses`).
//!
//! Caller: [`super::Admission::admit`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::process::scoreboard::{Counter, Slot};

/// The per-address counts of one process.
#[derive(Debug, Clone)]
pub(crate) struct PerIp {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    slot: Slot,
}

/// One connection's place in its address's count.
#[derive(Debug)]
pub(crate) struct IpPermit {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    slot: Slot,
}

impl PerIp {
    /// A limiter of `max` connections per address, counting addresses in `slot`.
    pub(crate) fn new(max: usize, slot: Slot) -> PerIp {
        PerIp { max: max.max(1), open: Arc::default(), slot }
    }

    /// A permit for one more connection from `ip`, or `None` at the limit.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<IpPermit> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        if *n == 1 {
            self.slot.add(Counter::Addresses, 1);
        }
        Some(IpPermit { ip, open: self.open.clone(), slot: self.slot })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip); // the map holds only addresses with open connections
                self.slot.sub(Counter::Addresses, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_address_separately() {
        let slot = Slot::leaked();
        let l = PerIp::new(2, slot);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none());
        let _q = l.admit(b).unwrap();
        drop(p1);
        let _p3 = l.admit(a).expect("a closed connection gives its place back");
        assert!(l.admit(a).is_none());
        assert!(l.open.lock().unwrap().len() == 2, "only addresses with open connections are kept");
        assert_eq!(slot.get(Counter::Addresses), 2);
        drop(_q);
        assert_eq!(slot.get(Counter::Addresses), 1, "the gauge follows the addresses");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(l.admit(mapped).is_none(), "an IPv4 client seen over IPv6 is the same client");
    }
}
