//! The `client` binary: see `switchyard_client::cli`.
fn main() -> std::process::ExitCode {
    switchyard_client::cli::main()
}
