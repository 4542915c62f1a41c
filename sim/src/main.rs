//! `dalp-sim`: see `cli.rs` for the commands. Build it with `--cfg madsim` (through
//! `cargo xtask sim …`) to simulate; the plain build can only list and validate scenarios.

fn main() -> std::process::ExitCode {
    quiet_on_closed_stdout();
    dalp_sim::cli::main(std::env::args().skip(1).collect())
}

/// A reader that closes the pipe early (`dalp-sim list | head -3`) wants no more output. Rust
/// ignores SIGPIPE, so `println!` panics on EPIPE; end quietly instead, as `head`'s writer
/// should. (Restoring SIGPIPE's default instead would also kill the real backend's proxies when
/// a peer resets a socket they write to.)
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
