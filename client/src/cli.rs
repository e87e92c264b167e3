//! The `client` command line (skeleton).

/// The whole `client` program.
pub fn main() -> std::process::ExitCode {
    eprintln!("client: not built yet");
    std::process::ExitCode::from(2)
}
