//! The protocol layer that the Switchyard server and client share.
//!
//! A connection's *protocol* is a sans-IO state machine: bytes in, bytes out,
//! and a decision to keep going or close. It never touches a socket or a
//! clock, so the same protocol runs under every server strategy, and its unit
//! tests feed bytes and assert bytes.
//!
//! - [`protocol`]: the [`Protocol`] trait, [`Step`], and [`Factory`] (one
//!   protocol value per connection).
//! - [`upper`]: the ASCII-uppercase routine on every hot path (server echo and
//!   client verification).
//! - [`echo`]: [`UpperEcho`], the "uppercase echo" protocol.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod echo;
pub mod protocol;
pub mod upper;

pub use echo::UpperEcho;
pub use protocol::{Factory, Protocol, Step};
