//! `UpperEcho`: every byte received is sent back ASCII-uppercased, in order.
//! The stream has no framing; the protocol never closes first. Its reply is
//! its input transformed, so it takes the in-place path
//! ([`Protocol::on_read_in_place`]): the received bytes are uppercased where
//! they landed and sent from there.

use bytes::BytesMut;

use crate::protocol::{Protocol, Step};
use crate::upper::upper_in_place;

/// The uppercase echo protocol. It keeps no state: all of `input` moves to
/// `output`, uppercased, on every call.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpperEcho;

impl Protocol for UpperEcho {
    #[inline]
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        let start = output.len();
        output.extend_from_slice(input);
        upper_in_place(&mut output[start..]);
        input.clear();
        Step::Continue
    }

    #[inline]
    fn on_read_in_place(&mut self, data: &mut [u8]) -> Option<Step> {
        upper_in_place(data);
        Some(Step::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upper::to_upper;

    /// Feeds `chunks` one by one and returns everything the protocol emitted.
    fn feed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut p = UpperEcho;
        let mut out = BytesMut::new();
        for c in chunks {
            let mut input = BytesMut::from(*c);
            assert_eq!(p.on_read(&mut input, &mut out), Step::Continue);
            assert!(input.is_empty(), "input not consumed");
        }
        assert_eq!(p.on_eof(&mut out), Step::Close);
        out.to_vec()
    }

    #[test]
    fn echoes_all_256_values_uppercased() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(feed(&[&all]), to_upper(&all));
    }

    #[test]
    fn split_at_every_position_gives_the_same_bytes() {
        let sample = "Hello, wörld! abc\u{00df}xyz \u{1F600} end".as_bytes();
        let want = to_upper(sample);
        for i in 0..=sample.len() {
            let (a, b) = sample.split_at(i);
            assert_eq!(feed(&[a, b]), want, "split at {i}");
        }
        for i in 0..=sample.len() {
            for j in i..=sample.len() {
                assert_eq!(feed(&[&sample[..i], &sample[i..j], &sample[j..]]), want);
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let sample = b"the quick brown fox JUMPS over 13 lazy dogs";
        let chunks: Vec<&[u8]> = sample.chunks(1).collect();
        assert_eq!(feed(&chunks), to_upper(sample));
    }

    #[test]
    fn output_appends_after_unsent_bytes() {
        let mut p = UpperEcho;
        let mut out = BytesMut::from(&b"PENDING:"[..]);
        let mut input = BytesMut::from(&b"more"[..]);
        p.on_read(&mut input, &mut out);
        assert_eq!(&out[..], b"PENDING:MORE");
    }

    #[test]
    fn in_place_gives_the_bytes_on_read_gives() {
        let sample: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let mut in_place = sample.clone();
        assert_eq!(UpperEcho.on_read_in_place(&mut in_place), Some(Step::Continue));
        assert_eq!(in_place, feed(&[&sample]));
    }

    #[test]
    fn empty_input_emits_nothing() {
        assert!(feed(&[b"", b""]).is_empty());
    }
}
