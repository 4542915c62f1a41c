//! `dalp-sim`: see `cli.rs` for the commands. Build it with `--cfg madsim` (through
//! `cargo xtask sim …`) to simulate; the plain build can only list and validate scenarios.

fn main() -> std::process::ExitCode {
    dalp_sim::cli::main(std::env::args().skip(1).collect())
}
