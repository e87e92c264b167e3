//! The seam between a connection's protocol and whatever moves its bytes.
//!
//! Drivers (blocking or non-blocking, in the server crate) call
//! [`Protocol::on_read`] with the bytes that arrived and send whatever the
//! protocol appended to `output`. The protocol never sees a socket.

use std::sync::Arc;

use bytes::BytesMut;

/// What a protocol wants after it has handled some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep the connection open and keep reading.
    Continue,
    /// Send what is in `output`, then close the connection.
    Close,
}

/// A connection's protocol, written as a sans-IO state machine.
pub trait Protocol: Send + 'static {
    /// Take what you can from `input` (advance or clear it) and append replies
    /// to `output`. Bytes left in `input` are handed back, with more behind
    /// them, on the next call.
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step;

    /// The in-place path, for a protocol whose reply to some input is that
    /// input transformed where it landed (an echo, a stream cipher): turn
    /// `data` into the reply, byte for byte, and return `Some(step)`; the
    /// driver then sends `data` from where it is, and nothing is copied.
    /// `None` (the default) means "not this input": `data` must be left as
    /// it was, and the driver hands the same bytes to [`Protocol::on_read`].
    ///
    /// Drivers call it only when the protocol holds no input from an earlier
    /// call (nothing `on_read` left in `input`), so `data` is all there is.
    fn on_read_in_place(&mut self, _data: &mut [u8]) -> Option<Step> {
        None
    }

    /// The peer closed its write side: append any last bytes to `output`.
    /// The driver sends them and then closes.
    fn on_eof(&mut self, _output: &mut BytesMut) -> Step {
        Step::Close
    }
}

impl<P: Protocol + ?Sized> Protocol for Box<P> {
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        (**self).on_read(input, output)
    }

    fn on_read_in_place(&mut self, data: &mut [u8]) -> Option<Step> {
        (**self).on_read_in_place(data)
    }

    fn on_eof(&mut self, output: &mut BytesMut) -> Step {
        (**self).on_eof(output)
    }
}

/// Makes one protocol value per connection. Strategies share it across
/// threads (and, after fork, across processes).
pub type Factory = Arc<dyn Fn() -> Box<dyn Protocol> + Send + Sync>;

/// A [`Factory`] for any protocol that has a [`Default`].
pub fn factory_of<P: Protocol + Default>() -> Factory {
    Arc::new(|| Box::new(P::default()))
}
