//! Drivers move bytes between a socket and a [`Protocol`]: the strategies
//! decide who runs them and when.
//!
//! - [`blocking`]: read, `on_read`, write everything, repeat. Used by serial,
//!   fork, thread, pool.
//! - [`nonblocking`]: a resumable per-connection state machine over mio
//!   readiness with bounded buffers. Used by the event loops.
//! - [`completion`]: the same over io_uring completions, with the ring's
//!   provided buffers. Used by the uring loops.
//! - `sim`: the non-blocking driver over a scripted in-memory peer, with
//!   the invariants it must keep. Compiled for tests and for the fuzz target
//!   (feature `sim`) only.
//!
//! [`Protocol`]: switchyard_common::Protocol

use bytes::BytesMut;

pub(crate) mod blocking;
pub(crate) mod completion;
pub(crate) mod nonblocking;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

/// An input and an output buffer of at least `chunk` bytes each, carved
/// from one allocation so that the output starts half a page (2 KiB, modulo
/// 4 KiB) after the input. Two buffers allocated one after the other start
/// 16 bytes past a multiple of 4 KiB apart; copying input to output then
/// hits 4K aliasing (the CPU takes loads for dependent on earlier stores to
/// the same page offset), which made `on_read` of 4 KiB 1.6 times slower on
/// the development machine (`cargo bench --bench upper -- on_read`: 428 ns
/// back to back, 270 ns shifted). `chunk` should be a multiple of 4 KiB.
pub(crate) fn buffer_pair(chunk: usize) -> (BytesMut, BytesMut) {
    let half = chunk + HALF_PAGE;
    let mut input = BytesMut::with_capacity(2 * half);
    let output = input.split_off(half);
    (input, output)
}

const HALF_PAGE: usize = 2048;

/// Bytes a connection moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Bytes read from the peer.
    pub(crate) bytes_in: u64,
    /// Bytes written to the peer.
    pub(crate) bytes_out: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_pair_is_half_a_page_apart_and_roomy() {
        for chunk in [4096, 32 * 1024, 64 * 1024] {
            let (input, output) = buffer_pair(chunk);
            let apart = (output.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
            assert_eq!(apart % 4096, 2048, "chunk {chunk}");
            assert!(input.capacity() >= chunk && output.capacity() >= chunk);
            // A full read's worth of output fits without moving the buffer.
            assert!(output.capacity() >= input.capacity());
        }
    }
}
