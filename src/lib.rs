//! Switchyard's root package: the `server` and `client` binaries (thin
//! wrappers over `switchyard_server::cli` and `switchyard_client::cli`), the
//! end-to-end tests in `tests/` and the benchmarks in `benches/`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use switchyard_client as client;
pub use switchyard_common as common;
pub use switchyard_server as server;
