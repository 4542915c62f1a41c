//! `dalp-sim`: see `cli/` for the commands. Build it with `--cfg madsim` (through
//! `cargo xtask sim …`) to simulate; the plain build can only list and validate scenarios. The
//! real backend is the `dalp-real` binary (crate real/), the same command line.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dalp_sim::cli::quiet_on_closed_stdout();
    dalp_sim::cli::main(std::env::args().skip(1).collect())
}
