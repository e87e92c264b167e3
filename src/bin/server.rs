//! The `server` binary: uppercase echo, served by the strategy its flags
//! choose (see `switchyard::server_cli`).
fn main() -> std::process::ExitCode {
    switchyard::server_cli::echo_main()
}
