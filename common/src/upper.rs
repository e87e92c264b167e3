//! ASCII uppercase, exactly as Python's `bytes.upper()`: `a`..=`z` become
//! `A`..=`Z`; every other byte, including 0x80..=0xFF, is unchanged, so the
//! length never changes and UTF-8 passes through byte for byte.
//!
//! This is on every hot path: the server's echo and the client's check of
//! each reply. The loops are written so that the compiler vectorizes them
//! (branch-free, one byte in, one byte out); `benches/upper.rs` measures them
//! against `memcpy` of the same buffer.

/// The uppercase of one byte.
#[inline(always)]
pub const fn upper_byte(b: u8) -> u8 {
    // Clear bit 5 when `b` is in a..=z; branch-free so loops vectorize.
    b ^ ((b.wrapping_sub(b'a') < 26) as u8) << 5
}

/// Uppercases `buf` in place.
#[inline]
pub fn upper_in_place(buf: &mut [u8]) {
    for b in buf {
        *b = upper_byte(*b);
    }
}

/// Writes the uppercase of `src` into `dst`. Both have the same length.
///
/// # Panics
/// If the lengths differ.
#[inline]
pub fn upper_into(src: &[u8], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "upper_into: lengths differ");
    for (d, s) in dst.iter_mut().zip(src) {
        *d = upper_byte(*s);
    }
}

/// Whether `reply` is exactly the uppercase of `sent`.
#[inline]
pub fn is_upper_of(sent: &[u8], reply: &[u8]) -> bool {
    sent.len() == reply.len() && sent.iter().zip(reply).fold(0u8, |acc, (s, r)| acc | (upper_byte(*s) ^ r)) == 0
}

/// The uppercase of `src`, as a new vector.
pub fn to_upper(src: &[u8]) -> Vec<u8> {
    let mut v = src.to_vec();
    upper_in_place(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's definition, written the slow and obvious way.
    fn python_upper(b: u8) -> u8 {
        if b.is_ascii_lowercase() {
            b - 32
        } else {
            b
        }
    }

    #[test]
    fn all_256_byte_values() {
        for b in 0..=255u8 {
            assert_eq!(upper_byte(b), python_upper(b), "byte {b:#04x}");
        }
        let all: Vec<u8> = (0..=255).collect();
        let want: Vec<u8> = all.iter().map(|&b| python_upper(b)).collect();
        assert_eq!(to_upper(&all), want);
        let mut dst = vec![0; 256];
        upper_into(&all, &mut dst);
        assert_eq!(dst, want);
        assert!(is_upper_of(&all, &want));
        assert!(!is_upper_of(&all, &all));
    }

    #[test]
    fn matches_python_on_known_strings() {
        assert_eq!(to_upper(b"hello, World! 123 az{`@["), b"HELLO, WORLD! 123 AZ{`@[");
        // UTF-8 and Latin-1 bytes are not ASCII and stay as they are.
        let s = "straße ünïcode ß é".as_bytes();
        let up = to_upper(s);
        assert_eq!(up, "STRAßE üNïCODE ß é".as_bytes());
        assert!(std::str::from_utf8(&up).is_ok());
    }

    #[test]
    fn long_buffers_at_every_alignment() {
        let src: Vec<u8> = (0..4099u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..17 {
            let s = &src[start..];
            let want: Vec<u8> = s.iter().map(|&b| python_upper(b)).collect();
            assert_eq!(to_upper(s), want, "start {start}");
        }
    }

    #[test]
    fn mismatch_is_detected_anywhere() {
        let sent = b"abcdefghijklmnopqrstuvwxyz0123456789".to_vec();
        let good = to_upper(&sent);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(!is_upper_of(&sent, &bad), "flip at {i} not seen");
        }
        assert!(!is_upper_of(&sent, &good[..good.len() - 1]));
    }
}
