//! `cargo bench --bench loadgen -- ADDR CONNS SIZE SECS`: the minimal mio
//! load generator that is the floor for the client's CPU per message (see
//! `strategies/loadgen.rs`); the strategy harness runs the same code as
//! `strategies --loadgen ...` beside the client.

#[path = "strategies/loadgen.rs"]
mod loadgen;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench" && a != loadgen::FLAG).collect();
    if args.is_empty() {
        // `cargo bench` without arguments runs every bench: nothing to load.
        println!("loadgen: give ADDR CONNS SIZE SECS (cargo bench --bench loadgen -- 127.0.0.1:7878 100 64 5)");
        return std::process::ExitCode::SUCCESS;
    }
    loadgen::main_with(&args)
}
