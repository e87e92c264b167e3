//! Switchyard's root package: the `server` and `client` binaries, the
//! server's command line ([`server_cli`], which a program serving a
//! protocol of its own reuses whole), the end-to-end tests in `tests/` and
//! the benchmarks in `benches/`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod echo;
mod log_file;
pub mod server_cli;
mod work;

pub use switchyard_client as client;
pub use switchyard_common as common;
pub use switchyard_server as server;
