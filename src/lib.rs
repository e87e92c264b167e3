//! Switchyard's root package: it owns the end-to-end tests in `tests/` and the
//! benchmarks in `benches/`. The code lives in the workspace crates:
//! [`switchyard_common`] (the protocol seam), `switchyard-server` and
//! `switchyard-client`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use switchyard_common as common;
