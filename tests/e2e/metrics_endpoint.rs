//! The metrics endpoint against hostile clients, in every mode: 1,000
//! connections that never send a byte and 50 that send half a request head
//! and stall hold the metrics port open, and a scrape still succeeds at once
//! (the endpoint keeps no small fixed pool of places idle clients could
//! fill: at its cap the oldest connection goes, and a head must arrive
//! within its time limit), while the data path serves as before.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::metrics::try_scrape;
use crate::support::modes::{per_mode, Mode};
use crate::support::net::{close_cleanly, dial, roundtrip};
use crate::support::process::{poll_until, raise_nofile};
use crate::support::server::Server;

fn a_scrape_gets_through_a_thousand_idle_clients(mode: &Mode) {
    raise_nofile();
    let server = Server::start(mode, &["--metrics", "127.0.0.1:0"]);
    let maddr = server.metrics_addr();
    let idle: Vec<TcpStream> = (0..1000)
        .map(|i| dial(maddr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{}: idle client {i}: {e}", mode.name)))
        .collect();
    let slow: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s =
                dial(maddr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{}: slow client {i}: {e}", mode.name));
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let mut page = None;
    poll_until(Duration::from_secs(5), || {
        page = try_scrape(maddr).ok();
        page.is_some()
    });
    let took = started.elapsed();
    let page = page.unwrap_or_else(|| panic!("{}: no scrape within 5 s beside 1,050 hostile clients", mode.name));
    assert!(page.value("switchyard_uptime_seconds") > 0.0, "{}: {}", mode.name, page.text);
    assert!(took < Duration::from_secs(2), "{}: the scrape took {took:?} beside 1,050 hostile clients", mode.name);
    let mut c = server.connect();
    roundtrip(&mut c, b"the data path serves beside them").unwrap_or_else(|e| panic!("{}: {e}", mode.name));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("{}: {e}", mode.name));
    drop((idle, slow));
}

per_mode!(=> a_scrape_gets_through_a_thousand_idle_clients);
