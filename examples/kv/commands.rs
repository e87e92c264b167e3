//! The commands, one table: name, arity as Redis counts it (the name
//! included; negative: at least that many), the flags and key positions
//! that `COMMAND` reports, and the function. Replies and error texts are
//! Redis' own, so clients and their tests see what they expect.

use std::time::Duration;

use bytes::BytesMut;

use crate::resp::{self, parse_i64, Args};
use crate::store::{Clock, Db, NOT_AN_INTEGER};

type Run = fn(&Args, &mut Db, &mut Clock, &mut BytesMut);

/// One command.
pub struct Command {
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    /// First key, last key, step (0, 0, 0: no key).
    keys: [i64; 3],
    run: Run,
}

#[rustfmt::skip]
const COMMANDS: &[Command] = &[
    Command { name: "ping", arity: -1, flags: &["fast"], keys: [0, 0, 0], run: ping },
    Command { name: "echo", arity: 2, flags: &["fast"], keys: [0, 0, 0], run: echo },
    Command { name: "set", arity: -3, flags: &["write", "denyoom"], keys: [1, 1, 1], run: set },
    Command { name: "get", arity: 2, flags: &["readonly", "fast"], keys: [1, 1, 1], run: get },
    Command { name: "del", arity: -2, flags: &["write"], keys: [1, -1, 1], run: del },
    Command { name: "exists", arity: -2, flags: &["readonly", "fast"], keys: [1, -1, 1], run: exists },
    Command { name: "incr", arity: 2, flags: &["write", "denyoom", "fast"], keys: [1, 1, 1], run: incr },
    Command { name: "dbsize", arity: 1, flags: &["readonly", "fast"], keys: [0, 0, 0], run: dbsize },
    Command { name: "flushall", arity: -1, flags: &["write"], keys: [0, 0, 0], run: flushall },
    Command { name: "command", arity: -1, flags: &["loading", "stale"], keys: [0, 0, 0], run: command },
    Command { name: "config", arity: -2, flags: &["admin", "loading", "stale"], keys: [0, 0, 0], run: config },
];

/// Runs one command and appends its reply.
pub fn execute(args: &Args, db: &mut Db, clock: &mut Clock, out: &mut BytesMut) {
    let name = args.get(0);
    let Some(cmd) = COMMANDS.iter().find(|c| name.eq_ignore_ascii_case(c.name.as_bytes())) else {
        return unknown_command(args, out);
    };
    let n = args.len() as i64;
    if (cmd.arity >= 0 && n != cmd.arity) || n < cmd.arity.abs() {
        return wrong_arity(cmd.name, out);
    }
    (cmd.run)(args, db, clock, out)
}

/// `ERR unknown command 'NAME', with args beginning with: 'A' 'B' `, the
/// arguments cut at 128 bytes in all, as Redis writes it.
fn unknown_command(args: &Args, out: &mut BytesMut) {
    let mut text = b"ERR unknown command '".to_vec();
    text.extend(args.get(0).iter().take(128));
    text.extend_from_slice(b"', with args beginning with: ");
    let mut quoted = 0;
    for arg in args.iter().skip(1) {
        if quoted >= 128 {
            break;
        }
        let take = arg.len().min(128 - quoted);
        text.push(b'\'');
        text.extend_from_slice(&arg[..take]);
        text.extend_from_slice(b"' ");
        quoted += take + 3;
    }
    resp::error_reply(out, &text);
}

fn wrong_arity(name: &str, out: &mut BytesMut) {
    resp::error_reply(out, format!("ERR wrong number of arguments for '{name}' command").as_bytes());
}

fn error(out: &mut BytesMut, text: &str) {
    resp::error_reply(out, text.as_bytes());
}

fn ping(args: &Args, _: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    match args.len() {
        1 => resp::simple(out, "PONG"),
        2 => resp::bulk(out, args.get(1)),
        _ => wrong_arity("ping", out),
    }
}

fn echo(args: &Args, _: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    resp::bulk(out, args.get(1));
}

/// `SET key value [NX | XX] [EX seconds | PX milliseconds]`.
fn set(args: &Args, db: &mut Db, clock: &mut Clock, out: &mut BytesMut) {
    let (mut expires, mut only_if) = (None, None);
    let mut i = 3;
    while i < args.len() {
        let opt = args.get(i);
        if opt.eq_ignore_ascii_case(b"NX") || opt.eq_ignore_ascii_case(b"XX") {
            let exists = opt.eq_ignore_ascii_case(b"XX");
            if only_if.is_some_and(|o| o != exists) {
                return error(out, "ERR syntax error");
            }
            only_if = Some(exists);
            i += 1;
            continue;
        }
        let ms_per_unit = if opt.eq_ignore_ascii_case(b"EX") {
            1000
        } else if opt.eq_ignore_ascii_case(b"PX") {
            1
        } else {
            return error(out, "ERR syntax error");
        };
        if expires.is_some() || i + 1 == args.len() {
            return error(out, "ERR syntax error");
        }
        let Some(n) = parse_i64(args.get(i + 1)) else { return error(out, NOT_AN_INTEGER) };
        let at = (n > 0)
            .then(|| n.checked_mul(ms_per_unit))
            .flatten()
            .and_then(|ms| clock.now().checked_add(Duration::from_millis(ms as u64)));
        let Some(at) = at else { return error(out, "ERR invalid expire time in 'set' command") };
        expires = Some(at);
        i += 2;
    }
    if only_if.is_some_and(|exists| db.contains(args.get(1)) != exists) {
        return resp::null(out); // NX of a key that exists, XX of one that does not
    }
    db.set(args.get(1), args.get(2), expires);
    resp::simple(out, "OK");
}

fn get(args: &Args, db: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    match db.get(args.get(1)) {
        Some(v) => resp::bulk(out, v),
        None => resp::null(out),
    }
}

fn del(args: &Args, db: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    let n = args.iter().skip(1).filter(|k| db.remove(k)).count();
    resp::integer(out, n as i64);
}

fn exists(args: &Args, db: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    let n = args.iter().skip(1).filter(|k| db.contains(k)).count();
    resp::integer(out, n as i64);
}

fn incr(args: &Args, db: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    match db.incr(args.get(1)) {
        Ok(n) => resp::integer(out, n),
        Err(e) => error(out, e),
    }
}

fn dbsize(_: &Args, db: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    resp::integer(out, db.len() as i64);
}

/// `FLUSHALL [ASYNC | SYNC]` (both are synchronous here).
fn flushall(args: &Args, db: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    let mode_ok = |m: &[u8]| m.eq_ignore_ascii_case(b"ASYNC") || m.eq_ignore_ascii_case(b"SYNC");
    match args.len() {
        1 => {}
        2 if mode_ok(args.get(1)) => {}
        _ => return error(out, "ERR syntax error"),
    }
    db.clear();
    resp::simple(out, "OK");
}

fn unknown_subcommand(args: &Args, out: &mut BytesMut, of: &str) {
    let mut text = b"ERR unknown subcommand '".to_vec();
    text.extend(args.get(1).iter().take(128));
    text.extend_from_slice(format!("'. Try {of} HELP.").as_bytes());
    resp::error_reply(out, &text);
}

/// What a client asks when it connects: `COMMAND` (every command's
/// name, arity, flags and key positions), `COMMAND COUNT`, `COMMAND INFO
/// name...`, `COMMAND DOCS` (none: an empty reply).
fn command(args: &Args, _: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    let info = |out: &mut BytesMut, c: &Command| {
        resp::array(out, 6);
        resp::bulk(out, c.name.as_bytes());
        resp::integer(out, c.arity);
        resp::array(out, c.flags.len());
        for f in c.flags {
            resp::simple(out, f);
        }
        for k in c.keys {
            resp::integer(out, k);
        }
    };
    if args.len() == 1 {
        resp::array(out, COMMANDS.len());
        return COMMANDS.iter().for_each(|c| info(out, c));
    }
    let sub = args.get(1);
    if sub.eq_ignore_ascii_case(b"COUNT") && args.len() == 2 {
        resp::integer(out, COMMANDS.len() as i64);
    } else if sub.eq_ignore_ascii_case(b"DOCS") {
        resp::array(out, 0);
    } else if sub.eq_ignore_ascii_case(b"INFO") {
        if args.len() == 2 {
            resp::array(out, COMMANDS.len());
            return COMMANDS.iter().for_each(|c| info(out, c));
        }
        resp::array(out, args.len() - 2);
        for name in args.iter().skip(2) {
            match COMMANDS.iter().find(|c| name.eq_ignore_ascii_case(c.name.as_bytes())) {
                Some(c) => info(out, c),
                None => resp::null(out),
            }
        }
    } else {
        unknown_subcommand(args, out, "COMMAND");
    }
}

/// `CONFIG GET parameter...`: the two that `redis-benchmark` asks for at
/// start (`save`, `appendonly`: nothing is persisted), as name-value pairs.
fn config(args: &Args, _: &mut Db, _: &mut Clock, out: &mut BytesMut) {
    const PARAMS: [(&str, &str); 2] = [("save", ""), ("appendonly", "no")];
    if !args.get(1).eq_ignore_ascii_case(b"GET") {
        return unknown_subcommand(args, out, "CONFIG");
    }
    if args.len() < 3 {
        return wrong_arity("config|get", out);
    }
    let wanted = |p: &str| args.iter().skip(2).any(|a| a == b"*" || a.eq_ignore_ascii_case(p.as_bytes()));
    let found: Vec<_> = PARAMS.iter().filter(|(p, _)| wanted(p)).collect();
    resp::array(out, found.len() * 2);
    for (p, v) in found {
        resp::bulk(out, p.as_bytes());
        resp::bulk(out, v.as_bytes());
    }
}
