//! `client`: load tester for uppercase echo servers (skeleton).
fn main() {
    eprintln!("client: not built yet");
    std::process::exit(2);
}
