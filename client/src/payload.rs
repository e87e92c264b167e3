//! Precomputed message payloads. One buffer per run holds `size` bytes plus a
//! little slack; message `k` of connection `c` is a window into it at an offset
//! derived from `(c, k)`, so consecutive messages differ without any
//! allocation on the hot path. `conn.rs` asks for a message's bytes when it
//! writes them, and for their uppercase (computed once, with the buffer) when
//! it compares the reply with it.

use std::fmt;
use std::str::FromStr;

/// What the bytes of a message look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PayloadKind {
    /// Printable mixed-case ASCII text.
    Text,
    /// Every byte value 0..=255 in turn.
    Binary,
    /// Pseudo-random bytes (fixed seed, so runs are repeatable).
    #[default]
    Random,
}

impl FromStr for PayloadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(PayloadKind::Text),
            "binary" => Ok(PayloadKind::Binary),
            "random" => Ok(PayloadKind::Random),
            _ => Err(format!("unknown payload `{s}` (text, binary or random)")),
        }
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadKind::Text => "text",
            PayloadKind::Binary => "binary",
            PayloadKind::Random => "random",
        })
    }
}

/// Extra bytes beyond one message: the number of distinct message offsets
/// (a prime, so offsets cycle through all of them).
const SLACK: usize = 4093;

/// How far apart consecutive messages of a connection start (below `SLACK`).
const STEP: usize = 613;

/// The payload buffer of a run, and its uppercase (what the replies must be).
#[derive(Debug)]
pub struct Payloads {
    buf: Vec<u8>,
    upper: Vec<u8>,
    size: usize,
}

impl Payloads {
    /// Builds the buffer for messages of `size` bytes.
    pub fn new(kind: PayloadKind, size: usize) -> Payloads {
        let len = size + SLACK;
        let buf: Vec<u8> = match kind {
            PayloadKind::Text => {
                const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog; Pack my box with five dozen liquor jugs! 0123456789 ";
                TEXT.iter().copied().cycle().take(len).collect()
            }
            PayloadKind::Binary => (0..len).map(|i| i as u8).collect(),
            PayloadKind::Random => {
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ size as u64;
                (0..len)
                    .map(|_| {
                        // xorshift64*
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                    })
                    .collect()
            }
        };
        let upper = switchyard_common::upper::to_upper(&buf);
        Payloads { buf, upper, size }
    }

    /// Bytes per message.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The bytes of message `k` of connection `conn`.
    #[inline]
    pub fn message(&self, conn: u64, k: u64) -> &[u8] {
        self.at(self.offset(conn, k))
    }

    /// Where message `k` of connection `conn` starts in the buffer.
    #[inline]
    pub fn offset(&self, conn: u64, k: u64) -> usize {
        (conn.wrapping_mul(7919).wrapping_add(k.wrapping_mul(STEP as u64)) % SLACK as u64) as usize
    }

    /// Where the message after the one at `off` (of the same connection)
    /// starts: the next offset without a division, for the hot path.
    #[inline]
    pub fn next_offset(&self, off: usize) -> usize {
        let o = off + STEP;
        if o >= SLACK {
            o - SLACK
        } else {
            o
        }
    }

    /// The message that starts at `off`.
    #[inline]
    pub fn at(&self, off: usize) -> &[u8] {
        &self.buf[off..off + self.size]
    }

    /// The reply expected to the message that starts at `off`: its uppercase.
    #[inline]
    pub fn reply_at(&self, off: usize) -> &[u8] {
        &self.upper[off..off + self.size]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_size_and_vary() {
        for kind in [PayloadKind::Text, PayloadKind::Binary, PayloadKind::Random] {
            let p = Payloads::new(kind, 64);
            assert_eq!(p.message(3, 5).len(), 64);
            assert_ne!(p.message(0, 0), p.message(0, 1), "{kind}");
            assert_eq!(p.message(2, 9), p.message(2, 9));
            assert_eq!(kind.to_string().parse::<PayloadKind>().unwrap(), kind);
        }
        let t = Payloads::new(PayloadKind::Text, 1000);
        assert!(t.message(0, 0).iter().any(u8::is_ascii_lowercase));
        let b = Payloads::new(PayloadKind::Binary, 256);
        let mut seen = [false; 256];
        b.message(1, 1).iter().for_each(|&x| seen[x as usize] = true);
        assert!(seen.iter().all(|&s| s));
        assert_eq!(Payloads::new(PayloadKind::Random, 0).message(5, 5), b"");
        let r = Payloads::new(PayloadKind::Random, 64);
        let off = r.offset(3, 9);
        assert!(switchyard_common::upper::is_upper_of(r.at(off), r.reply_at(off)));
    }

    #[test]
    fn next_offset_walks_the_messages_of_a_connection() {
        let p = Payloads::new(PayloadKind::Random, 16);
        for conn in [0u64, 1, 7, 123_456] {
            let mut off = p.offset(conn, 0);
            for k in 1..10_000 {
                off = p.next_offset(off);
                assert_eq!(off, p.offset(conn, k), "conn {conn} message {k}");
            }
        }
    }
}
