//! The command line from the environment: every flag can come from a
//! `SWITCHYARD_*` variable, a flag on the command line wins, and a bad value
//! from the environment is a usage error like a bad flag.

use std::time::Duration;

use crate::support::modes::EVENT;
use crate::support::net::{read_sees_close, roundtrip};
use crate::support::server::{run_to_exit_with, Launch};

/// `SWITCHYARD_MAX_CONNS_PER_IP=1`: a second connection from one address is
/// closed at once, as with the flag; `--max-conns-per-ip 2` on the command
/// line overrides the variable.
#[test]
fn flags_come_from_the_environment_and_the_command_line_wins() {
    let limited = Launch::new(&EVENT, &[]).env("SWITCHYARD_MAX_CONNS_PER_IP", "1").start();
    let mut first = limited.connect();
    roundtrip(&mut first, b"first").unwrap();
    let mut second = limited.connect();
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    read_sees_close(&mut second).unwrap_or_else(|e| panic!("the variable was not applied: {e}\n{}", limited.log()));

    let overridden = Launch::new(&EVENT, &["--max-conns-per-ip", "2"]).env("SWITCHYARD_MAX_CONNS_PER_IP", "1").start();
    let mut first = overridden.connect();
    roundtrip(&mut first, b"first").unwrap();
    let mut second = overridden.connect();
    roundtrip(&mut second, b"second, allowed by the flag").unwrap_or_else(|e| panic!("{e}\n{}", overridden.log()));
}

#[test]
fn a_bad_value_in_the_environment_exits_2() {
    let done = run_to_exit_with(&["--listen", "127.0.0.1:0"], &[("SWITCHYARD_BACKLOG", "many")]);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("many"), "the message names the bad value: {}", done.stderr);
    assert!(!done.stdout.contains("listening on"), "{}", done.stdout);
}
