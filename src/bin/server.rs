//! The `server` binary: see `switchyard_server::cli`.
fn main() -> std::process::ExitCode {
    switchyard_server::cli::main()
}
