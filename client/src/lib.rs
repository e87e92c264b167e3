//! The Switchyard load tester (skeleton; filled in by the client issue).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
