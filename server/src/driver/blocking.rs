//! The blocking driver: read, hand the bytes to the protocol, write all of
//! its output, repeat. On end-of-file the protocol gets `on_eof`, every
//! pending byte is written, and the write side is shut.
//!
//! Time limits are socket timeouts: `--idle-timeout` is SO_RCVTIMEO and
//! SO_SNDTIMEO (a silent peer or a peer that stops reading is dropped). A
//! stop signal that interrupts a read (`EINTR`, in single-threaded processes:
//! serial, a fork child, a prefork worker) or is seen between reads switches
//! the read timeout to what is left of the grace period, so the connection
//! keeps echoing until its peer closes or the grace ends. In multi-threaded
//! strategies the acceptor ends the grace period with `shutdown(SHUT_RD)` on
//! every live socket, which reads here as end-of-file.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use switchyard_common::{Protocol, Step};

use super::Totals;
use crate::shutdown::{Phase, Shutdown};
use crate::sys;

/// Bytes read per read(2) call at most.
pub const READ_CHUNK: usize = 32 * 1024;

/// Why a connection ended, when it ended without an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed its write side; everything was echoed.
    Eof,
    /// The protocol asked to close.
    Closed,
    /// No traffic for the idle timeout.
    Idle,
    /// The grace period of a graceful stop ended.
    Grace,
    /// Immediate stop.
    Stopped,
}

/// Serves one connection to its end.
pub fn serve(stream: &TcpStream, proto: &mut dyn Protocol, shutdown: &Shutdown, idle: Option<Duration>) -> io::Result<(End, Totals)> {
    let mut totals = Totals::default();
    let end = run(stream, proto, shutdown, idle, &mut totals)?;
    Ok((end, totals))
}

fn run(stream: &TcpStream, proto: &mut dyn Protocol, shutdown: &Shutdown, idle: Option<Duration>, totals: &mut Totals) -> io::Result<End> {
    if idle.is_some() {
        stream.set_read_timeout(idle)?;
        stream.set_write_timeout(idle)?;
    }
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    let mut draining = false;
    loop {
        if !draining {
            match shutdown.absorb_signals() {
                Phase::Running => {}
                Phase::Immediate => return Ok(End::Stopped),
                Phase::Draining => {
                    draining = true;
                    match shutdown.remaining() {
                        Some(left) if !left.is_zero() => stream.set_read_timeout(Some(left))?,
                        _ => return Ok(End::Grace),
                    }
                }
            }
        } else if shutdown.absorb_signals() == Phase::Immediate {
            return Ok(End::Stopped);
        }
        input.reserve(READ_CHUNK);
        match sys::read_into(stream, &mut input) {
            Ok(0) => {
                proto.on_eof(&mut output);
                write_out(stream, &mut output, totals)?;
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return Ok(End::Eof);
            }
            Ok(n) => {
                totals.bytes_in += n as u64;
                let step = proto.on_read(&mut input, &mut output);
                write_out(stream, &mut output, totals)?;
                if step == Step::Close {
                    return Ok(End::Closed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(if draining { End::Grace } else { End::Idle });
            }
            Err(e) => return Err(e),
        }
    }
}

fn write_out(mut stream: &TcpStream, output: &mut BytesMut, totals: &mut Totals) -> io::Result<()> {
    if !output.is_empty() {
        stream.write_all(output)?;
        totals.bytes_out += output.len() as u64;
        output.clear();
    }
    Ok(())
}
