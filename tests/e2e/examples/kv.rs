//! `examples/kv/`: the Redis-protocol key-value server, checked with the
//! Redis tools themselves.
//!
//! - A `redis-cli` session (one connection, every command, every error)
//!   answers in every strategy exactly what `redis-server` answers (the
//!   transcript is checked against a real `redis-server`, on a unix socket
//!   of its own: no port, no network);
//! - a raw pipeline (multibulk and inline commands, quotes and escapes,
//!   empty lines, errors, a protocol error at the end) gets the same bytes
//!   back as from `redis-server`, and the connection closed as it closes it;
//! - `redis-benchmark -t ping,set,get,incr`, with and without `-P 16`,
//!   completes without an error, and its `INCR`s all land in one counter
//!   where the store is shared;
//! - the store is one per process: a `SET` on one connection is seen from
//!   another in thread, pool, event, reactor, serial and a one-worker
//!   prefork, and not across fork children;
//! - limits: an over-long command, inline line or multibulk count gets
//!   Redis' protocol error and a close, before its bytes are waited for;
//!   a value just under the limit sent in pieces is stored whole; a
//!   pipeline whose replies pass the per-read bound gets an error; another
//!   connection is served all along;
//! - expiry by time, `INCR` keeping a deadline, a plain `SET` clearing one;
//! - the parser, in process: any stream of commands split at every byte
//!   position, or at random positions into many pieces, parses to the same
//!   commands; random bytes never panic it and never make it wait with
//!   more than one command's bytes buffered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use proptest::prelude::*;

use super::{in_modes, start, stop};
use crate::support::client::TempDir;
use crate::support::modes::Mode;
use crate::support::process::{poll_until, run_bounded_with_input};
use crate::support::programs::tool;
use crate::support::server::Server;

#[allow(dead_code)] // the replies are the server's; the tests use the parser
#[path = "../../../examples/kv/resp.rs"]
mod resp;

/// How long a Redis tool may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

// ----- a RESP client ---------------------------------------------------------

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }
}

/// Reads one reply.
fn read_reply(r: &mut impl BufRead) -> Result<Reply, String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).map_err(|e| format!("read a reply: {e}"))?;
    let text = String::from_utf8_lossy(line.strip_suffix(b"\r\n").ok_or_else(|| format!("cut reply {line:?}"))?);
    let (kind, rest) = text.split_at(1.min(text.len()));
    let int = || rest.parse::<i64>().map_err(|_| format!("bad length or integer in {text:?}"));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(int()?),
        "$" if int()? < 0 => Reply::Bulk(None),
        "$" => {
            let mut data = vec![0; int()? as usize + 2];
            r.read_exact(&mut data).map_err(|e| format!("read a bulk of {}: {e}", data.len()))?;
            data.truncate(data.len() - 2);
            Reply::Bulk(Some(data))
        }
        "*" => Reply::Array((0..int()?).map(|_| read_reply(r)).collect::<Result<_, _>>()?),
        _ => return Err(format!("not a reply: {text:?}")),
    })
}

/// A command as clients send it: an array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A connection to a kv server.
pub(crate) struct Resp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Resp {
    pub(crate) fn connect(s: &Server) -> Resp {
        let w = s.connect();
        Resp { r: BufReader::new(w.try_clone().expect("try_clone")), w }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
    }

    fn reply(&mut self) -> Reply {
        read_reply(&mut self.r).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn call(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&encode(&args));
        self.reply()
    }

    /// Reads on to end-of-file, which must come next (bounded by the
    /// socket's read timeout).
    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let r = self.r.read_to_end(&mut rest);
        assert!(r.is_ok() && rest.is_empty(), "expected EOF, got {r:?} and {:?}", String::from_utf8_lossy(&rest));
    }
}

// ----- redis-server, redis-cli, redis-benchmark -------------------------------

/// A `redis-server` on a unix socket of its own (no TCP port at all),
/// killed by its pid when dropped.
struct RedisServer {
    child: Child,
    socket: PathBuf,
    _dir: TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let dir = TempDir::new("kv-redis-server");
        let socket = dir.0.join("redis.sock");
        let mut cmd = Command::new(tool("redis-server", "redis-server"));
        cmd.args(["--port", "0", "--unixsocket"]).arg(&socket).args(["--save", "", "--appendonly", "no"]);
        cmd.arg("--dir").arg(&dir.0).args(["--daemonize", "no", "--loglevel", "warning"]);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server");
        let server = RedisServer { child, socket, _dir: dir };
        assert!(
            poll_until(Duration::from_secs(10), || UnixStream::connect(&server.socket).is_ok()),
            "redis-server did not listen on {} within 10 s",
            server.socket.display()
        );
        server
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `redis-cli` and `redis-benchmark` connect.
enum Target<'a> {
    Kv(&'a Server),
    Redis(&'a RedisServer),
}

impl Target<'_> {
    fn args(&self) -> Vec<String> {
        match self {
            Target::Kv(s) => vec!["-h".into(), "127.0.0.1".into(), "-p".into(), s.addr.port().to_string()],
            Target::Redis(r) => vec!["-s".into(), r.socket.display().to_string()],
        }
    }
}

/// `redis-cli` reading commands from stdin, one connection, replies as a
/// terminal shows them (`--no-raw`).
fn redis_cli(target: &Target, commands: &str) -> String {
    let mut cmd = Command::new(tool("redis-cli", "redis-tools"));
    cmd.args(target.args()).arg("--no-raw");
    let done = run_bounded_with_input(cmd, Some(commands.as_bytes()), TOOL_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(done.status.success(), "redis-cli: {done:?}");
    done.stdout
}

/// The session: every command, the errors too.
const SESSION: &str = r#"PING
PING "hello there"
PING a b
SET greeting hello
GET greeting
GET nothing
SET greeting again NX
SET fresh 1 NX
SET absent 1 XX
INCR n
INCR n
INCR greeting
EXISTS greeting n nothing greeting
DEL greeting n nothing
EXISTS greeting
FOO bar "baz qux"
GET
ECHO "a\tb"
SET k v EX 0
SET k v EX soon
SET k v PX
SET k v EX 5 PX 5
SET k v NX XX
SET k v EX 100
SET big 9223372036854775807
INCR big
SET z 007
INCR z
SET neg -12
INCR neg
DBSIZE
FLUSHALL nope
FLUSHALL
DBSIZE
CONFIG GET save
"#;

/// What `redis-server` 7 answers to [`SESSION`] (checked by
/// `session_is_what_redis_server_answers`).
const SESSION_REPLIES: &str = r#"PONG
"hello there"
(error) ERR wrong number of arguments for 'ping' command
OK
"hello"
(nil)
(nil)
OK
(nil)
(integer) 1
(integer) 2
(error) ERR value is not an integer or out of range
(integer) 3
(integer) 2
(integer) 0
(error) ERR unknown command 'FOO', with args beginning with: 'bar' 'baz qux' 
(error) ERR wrong number of arguments for 'get' command
"a\tb"
(error) ERR invalid expire time in 'set' command
(error) ERR value is not an integer or out of range
(error) ERR syntax error
(error) ERR syntax error
(error) ERR syntax error
OK
OK
(error) ERR increment or decrement would overflow
OK
(error) ERR value is not an integer or out of range
OK
(integer) -11
(integer) 5
(error) ERR syntax error
OK
(integer) 0
1) "save"
2) ""
"#;

/// A pipeline in one write: multibulk and inline commands, quotes and
/// escapes, a bare-LF line, an empty line and `*0` (no commands), errors,
/// and last a protocol error, after which the server closes.
const PIPELINE: &[u8] = b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\nq\r\n$5\r\nhello\r\nSET r \"a b\\x41\\n\"\r\n\
*2\r\n$3\r\nGET\r\n$1\r\nr\r\nGET q\n\r\n*0\r\nNOPE 1\r\n*1\r\n$3\r\nGET\r\n*2\r\n$4\r\nINCR\r\n$1\r\nq\r\n\
ECHO 'it\\'s'\r\n*1\r\n$x\r\n";

/// What `redis-server` sends back for [`PIPELINE`] before it closes.
const PIPELINE_REPLIES: &[u8] = b"+PONG\r\n+OK\r\n+OK\r\n$5\r\na bA\n\r\n$5\r\nhello\r\n\
-ERR unknown command 'NOPE', with args beginning with: '1' \r\n-ERR wrong number of arguments for 'get' command\r\n\
-ERR value is not an integer or out of range\r\n$4\r\nit's\r\n-ERR Protocol error: invalid bulk length\r\n";

/// Writes `bytes` and reads until the server closes.
fn to_eof(mut s: impl Read + Write, bytes: &[u8]) -> Vec<u8> {
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap_or_else(|e| panic!("read to EOF after {:?}: {e}", String::from_utf8_lossy(&out)));
    out
}

#[test]
fn session_is_what_redis_server_answers() {
    let redis = RedisServer::start();
    assert_eq!(redis_cli(&Target::Redis(&redis), SESSION), SESSION_REPLIES, "redis-server answers differently");
    let s = UnixStream::connect(&redis.socket).expect("connect to redis-server");
    s.set_read_timeout(Some(TOOL_TIMEOUT)).expect("timeout");
    let got = to_eof(s, PIPELINE);
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(PIPELINE_REPLIES), "redis-server's pipeline");
}

fn redis_cli_session(mode: &Mode) {
    let server = start("kv", mode, &[]);
    let got = redis_cli(&Target::Kv(&server), SESSION);
    assert_eq!(got, SESSION_REPLIES, "kv in {} mode answers differently from redis-server", mode.name);
    let got = to_eof(server.connect(), PIPELINE);
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(PIPELINE_REPLIES), "the pipeline's replies");
    stop(server);
}

in_modes!(redis_cli_session;
    serial: SERIAL, fork: FORK, thread: THREAD, pool: POOL, event: EVENT, reactor: REACTOR,
    uring: URING, uring_rings: URING_RINGS,
    prefork_event: PREFORK_EVENT, prefork_serial: PREFORK_SERIAL, prefork_thread: PREFORK_THREAD,
    prefork_pool: PREFORK_POOL, prefork_uring: PREFORK_URING,
);

/// Requests per test of a `redis-benchmark` run.
const BENCH_REQUESTS: u64 = 4000;

/// `redis-benchmark -t ping,set,get,incr` with `extra` flags: every test
/// reported, no error.
fn redis_benchmark(server: &Server, extra: &[&str]) {
    let mut cmd = Command::new(tool("redis-benchmark", "redis-tools"));
    cmd.args(Target::Kv(server).args()).args(["-t", "ping,set,get,incr", "-c", "10", "-q"]);
    cmd.args(["-n", &BENCH_REQUESTS.to_string()]).args(extra);
    let done = crate::support::process::run_bounded(cmd, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(done.status.success(), "redis-benchmark {extra:?}: {done:?}");
    let lines: Vec<&str> = done.stdout.split(['\r', '\n']).collect();
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"] {
        let rate = lines.iter().find_map(|l| {
            let rest = l.trim().strip_prefix(test)?.strip_prefix(": ")?;
            rest.split_once(" requests per second")?.0.parse::<f64>().ok()
        });
        assert!(rate.is_some_and(|r| r > 0.0), "no {test} rate in redis-benchmark's output:\n{}", done.stdout);
    }
    for bad in ["ERR", "Error", "rror:"] {
        assert!(!done.stdout.contains(bad) && !done.stderr.contains(bad), "redis-benchmark saw an error: {done:?}");
    }
    assert!(!done.stderr.contains("WARNING"), "redis-benchmark warned: {}", done.stderr);
}

/// Whether every connection of `mode` sees the same store.
fn shared(mode: &Mode) -> bool {
    match mode.name {
        "fork" => false,
        "prefork" => mode.args.windows(2).any(|w| w == ["--workers", "1"]),
        _ => true,
    }
}

fn redis_benchmark_load(mode: &Mode) {
    let server = start("kv", mode, &[]);
    redis_benchmark(&server, &[]);
    redis_benchmark(&server, &["-P", "16"]);
    // Every INCR went to `counter:__rand_int__`: in one shared store it
    // counted them all, under the lock, whatever the interleaving.
    let counter = Resp::connect(&server).call(&["GET", "counter:__rand_int__"]);
    if shared(mode) {
        assert_eq!(counter, Reply::bulk(&(2 * BENCH_REQUESTS).to_string()), "the INCRs of 20 connections");
    } else if mode.name == "fork" {
        assert_eq!(counter, Reply::Bulk(None), "a new fork child has an empty store");
    }
    stop(server);
}

in_modes!(redis_benchmark_load;
    fork: FORK, thread: THREAD, pool: POOL, event: EVENT, reactor: REACTOR, uring: URING,
    prefork_event: PREFORK_EVENT, prefork_thread: PREFORK_THREAD,
);

/// A prefork master with one event worker: one store.
const PREFORK_ONE_WORKER: Mode =
    Mode { args: &["--workers", "1", "--worker", "event"], ..crate::support::modes::PREFORK };

fn shared_store(mode: &Mode) {
    let server = start("kv", mode, &[]);
    let mut a = Resp::connect(&server);
    assert_eq!(a.call(&["SET", "written-by", "a"]), Reply::Simple("OK".into()));
    if !mode.concurrent {
        drop(a); // serial: one connection at a time; the store outlives it
        a = Resp::connect(&server);
        assert_eq!(a.call(&["GET", "written-by"]), Reply::bulk("a"));
        drop(a);
        let mut b = Resp::connect(&server);
        assert_eq!(b.call(&["GET", "written-by"]), Reply::bulk("a"), "the next connection sees the key");
        drop(b);
        return stop(server);
    }
    let mut b = Resp::connect(&server);
    let (seen_by_b, dbsize_b) = (b.call(&["GET", "written-by"]), b.call(&["DBSIZE"]));
    if shared(mode) {
        assert_eq!(seen_by_b, Reply::bulk("a"), "a SET on one connection, read from another");
        assert_eq!(dbsize_b, Reply::Int(1));
        assert_eq!(b.call(&["INCR", "both"]), Reply::Int(1));
        assert_eq!(a.call(&["INCR", "both"]), Reply::Int(2));
    } else {
        // fork: each connection is a process with its own copy of the store.
        assert_eq!(seen_by_b, Reply::Bulk(None), "a fork child saw another child's key");
        assert_eq!(dbsize_b, Reply::Int(0));
        assert_eq!(b.call(&["INCR", "both"]), Reply::Int(1));
        assert_eq!(a.call(&["INCR", "both"]), Reply::Int(1));
    }
    assert_eq!(a.call(&["GET", "written-by"]), Reply::bulk("a"), "the writer reads its own key");
    drop((a, b));
    stop(server);
}

in_modes!(shared_store;
    serial: SERIAL, fork: FORK, thread: THREAD, pool: POOL, event: EVENT, reactor: REACTOR,
    uring: URING, prefork_one_worker: PREFORK_ONE_WORKER,
);

fn limits(mode: &Mode) {
    let server = start("kv", mode, &[]);
    let mut bystander = Resp::connect(&server);
    assert_eq!(bystander.call(&["SET", "safe", "yes"]), Reply::Simple("OK".into()));

    // Declared sizes are refused before their bytes are waited for; what
    // came before gets its replies.
    let refused: [(&[u8], &str); 4] = [
        (b"PING\r\n*1\r\n$2000000\r\n", "too big request (one command may take 1048576 bytes)"),
        (b"*200000\r\n", "invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
    ];
    for (bytes, why) in refused {
        let got = to_eof(server.connect(), bytes);
        let pong: &[u8] = if bytes.starts_with(b"PING") { b"+PONG\r\n" } else { b"" };
        let want = [pong, format!("-ERR Protocol error: {why}\r\n").as_bytes()].concat();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "for {:?}",
            &bytes[..12.min(bytes.len())]
        );
    }
    let mut long_line = vec![b'a'; resp::MAX_INLINE + 10];
    long_line.insert(0, b' ');
    let got = to_eof(server.connect(), &long_line);
    assert_eq!(got, b"-ERR Protocol error: too big inline request\r\n");

    // A value near the limit, sent in 4 KiB pieces, is stored whole.
    let value: Vec<u8> = (0..resp::MAX_REQUEST - 100).map(|i| (i % 251) as u8).collect();
    let mut c = Resp::connect(&server);
    let set = encode(&[b"SET", b"big", &value]);
    for piece in set.chunks(4096) {
        c.send(piece);
    }
    assert_eq!(c.reply(), Reply::Simple("OK".into()));
    assert_eq!(c.call(&["GET", "big"]), Reply::Bulk(Some(value.clone())));

    // 20 GETs of it in one write: 20 MB of replies to one read, past the
    // 16 MiB bound: the first 17 are sent, then an error, then the close.
    c.send(&encode(&[b"GET", b"big"]).repeat(20));
    for i in 0..17 {
        assert_eq!(c.reply(), Reply::Bulk(Some(value.clone())), "reply {i}");
    }
    let bound = 16 * 1024 * 1024;
    assert_eq!(c.reply(), Reply::Error(format!("ERR replies to one read over {bound} bytes: pipeline less")));
    c.expect_eof();

    assert_eq!(bystander.call(&["GET", "safe"]), Reply::bulk("yes"), "the bystander after it all");
    drop(bystander);
    stop(server);
}

in_modes!(limits; thread: THREAD, event: EVENT, reactor: REACTOR, uring: URING);

fn expiry(mode: &Mode) {
    let server = start("kv", mode, &[]);
    let mut c = Resp::connect(&server);
    let ok = Reply::Simple("OK".into());
    // `count` is set first: its deadline is no later than `short`'s, so
    // once `short` has expired, `count` must have too.
    assert_eq!(c.call(&["SET", "count", "5", "PX", "300"]), ok);
    assert_eq!(c.call(&["INCR", "count"]), Reply::Int(6), "INCR keeps the value's deadline");
    let t0 = Instant::now();
    assert_eq!(c.call(&["SET", "short", "lived", "PX", "300"]), ok);
    assert_eq!(c.call(&["SET", "kept", "v", "PX", "300"]), ok);
    assert_eq!(c.call(&["SET", "kept", "w"]), ok, "a plain SET clears the deadline");
    assert_eq!(c.call(&["SET", "long", "lived", "EX", "100"]), ok);
    assert_eq!(c.call(&["GET", "short"]), Reply::bulk("lived"), "expired early");
    assert_eq!(c.call(&["DBSIZE"]), Reply::Int(4));
    let gone = poll_until(Duration::from_secs(5), || c.call(&["GET", "short"]) == Reply::Bulk(None));
    let after = t0.elapsed();
    assert!(gone, "a 300 ms key still there after 5 s");
    assert!(after >= Duration::from_millis(300), "a 300 ms key gone after {after:?}");
    assert_eq!(c.call(&["GET", "count"]), Reply::Bulk(None), "the INCRed key kept its deadline");
    assert_eq!(c.call(&["GET", "kept"]), Reply::bulk("w"));
    assert_eq!(c.call(&["DBSIZE"]), Reply::Int(2), "expired keys are not counted");
    drop(c);
    stop(server);
}

in_modes!(expiry; thread: THREAD, event: EVENT, uring: URING);

// ----- the parser, in process --------------------------------------------------

/// Feeds `chunks` to the parser the way a driver does (appended to what
/// is left, every whole command taken): the commands, and the protocol
/// error if one came. Checks on the way that the parser never waits with
/// more than one command's worth of bytes buffered.
fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Vec<Vec<u8>>>, Option<resp::ProtocolError>) {
    let mut parser = resp::Parser::default();
    let mut input = BytesMut::new();
    let mut commands = Vec::new();
    for chunk in chunks {
        input.extend_from_slice(chunk);
        loop {
            match parser.parse(&input) {
                Ok(Some(n)) => {
                    let args = parser.args(&input);
                    if !args.is_empty() {
                        commands.push(args.iter().map(<[u8]>::to_vec).collect());
                    }
                    input.advance(n);
                }
                Ok(None) => {
                    assert!(input.len() <= resp::MAX_REQUEST + 32, "waiting with {} bytes", input.len());
                    break;
                }
                Err(e) => return (commands, Some(e)),
            }
        }
    }
    (commands, None)
}

/// `args` as an inline command: every argument double-quoted, every byte
/// that needs it escaped as `\xHH`.
fn inline(args: &[Vec<u8>], lf_only: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.push(b'"');
        for &b in a {
            if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
                out.push(b);
            } else {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
        }
        out.push(b'"');
    }
    out.extend_from_slice(if lf_only { b"\n" } else { b"\r\n" });
    out
}

/// Commands (1 to 6 arguments of any bytes, the first never empty), each
/// with how it is written: multibulk, inline with CRLF, or inline with LF.
fn commands() -> impl Strategy<Value = Vec<(Vec<Vec<u8>>, u8)>> {
    let arg = proptest::collection::vec(any::<u8>(), 0..24);
    let command = (proptest::collection::vec(any::<u8>(), 1..8), proptest::collection::vec(arg, 0..5)).prop_map(
        |(name, mut rest)| {
            rest.insert(0, name);
            rest
        },
    );
    proptest::collection::vec((command, 0u8..3), 1..8)
}

fn wire(commands: &[(Vec<Vec<u8>>, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (args, how) in commands {
        match how {
            0 => out.extend(encode(&args.iter().map(Vec::as_slice).collect::<Vec<_>>())),
            _ => out.extend(inline(args, *how == 2)),
        }
    }
    out
}

proptest! {
    /// Every split position of the whole stream: the same commands.
    #[test]
    fn parser_splits_at_every_byte(cmds in commands()) {
        let bytes = wire(&cmds);
        let want: Vec<Vec<Vec<u8>>> = cmds.iter().map(|(a, _)| a.clone()).collect();
        for at in 0..=bytes.len() {
            let (got, err) = feed([&bytes[..at], &bytes[at..]]);
            prop_assert!(err.is_none(), "split at {}: {:?}", at, err);
            prop_assert_eq!(&got, &want, "split at {}", at);
        }
    }

    /// Random pieces, as many as bytes at most: the same commands; and a
    /// protocol error after them comes after all of them.
    #[test]
    fn parser_takes_any_pieces(cmds in commands(), cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let mut bytes = wire(&cmds);
        let want: Vec<Vec<Vec<u8>>> = cmds.iter().map(|(a, _)| a.clone()).collect();
        bytes.extend_from_slice(b"*1\r\n$oops\r\n");
        let mut at: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        at.extend([0, bytes.len()]);
        at.sort_unstable();
        let pieces: Vec<&[u8]> = at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
        let (got, err) = feed(pieces);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(err, Some(resp::ProtocolError("invalid bulk length".into())));
    }

    /// Random bytes: no panic, and never more than a command buffered
    /// (checked by `feed`).
    #[test]
    fn parser_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), star in any::<bool>()) {
        let mut bytes = bytes;
        if star {
            bytes.insert(0, b'*');
        }
        let _ = feed(bytes.chunks(7));
    }
}

#[test]
fn parser_reads_inline_quoting_as_redis_does() {
    let (got, err) = feed([&br#"set "a \"q\" \x41\n" 'it\'s' plain  "" end"#[..], b"\r\n"]);
    assert!(err.is_none(), "{err:?}");
    let want: Vec<Vec<u8>> = vec![
        b"set".to_vec(),
        b"a \"q\" A\n".to_vec(),
        b"it's".to_vec(),
        b"plain".to_vec(),
        b"".to_vec(),
        b"end".to_vec(),
    ];
    assert_eq!(got, [want]);
    for bad in [&b"get \"open\r\n"[..], b"get 'open\r\n", b"get \"a\"b\r\n"] {
        let (_, err) = feed([bad]);
        assert_eq!(err, Some(resp::ProtocolError("unbalanced quotes in request".into())), "{bad:?}");
    }
    // A split inline line is waited for, up to the limit.
    let big = vec![b'x'; resp::MAX_INLINE + 1];
    assert_eq!(feed([&big[..resp::MAX_INLINE]]).1, None);
    assert_eq!(feed([&big[..]]).1, Some(resp::ProtocolError("too big inline request".into())));
}
