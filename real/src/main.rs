//! `dalp-real`: the `dalp-sim` command line (every command, flag and exit code) with the real
//! backend plugged in, so `run … --backend real` and `repro … --backend real` run the scenario
//! files against real PostgreSQL, Anvil and `dalp-engine` processes. `cargo xtask sim … --backend
//! real` builds and runs it.

use dalp_real::{docker, engines, run};
use dalp_sim::cli::{Provider, RealBackend};
use dalp_sim::outcome::RunResult;
use dalp_sim::scenario::{Fault, Scenario};
use dalp_sim::trace::Trace;
use std::sync::Arc;

struct RealServices;

impl RealBackend for RealServices {
    fn prepare(&self, provider: Provider) -> Result<(), String> {
        if std::env::var_os("DALP_ENGINE_BIN").is_none() {
            let bin = engines::engine_binary().map_err(|e| e.to_string())?;
            std::env::set_var("DALP_ENGINE_BIN", bin);
        }
        // The image check hashes every file that goes into the images (~3.5 CPU-s): once here,
        // not once per child. With `auto` and no usable Docker, the children fall back as before.
        if provider != Provider::Local && std::env::var_os(docker::IMAGES_READY).is_none() {
            match docker::ensure_images() {
                Ok(()) => std::env::set_var(docker::IMAGES_READY, "1"),
                Err(e) if provider == Provider::Docker => return Err(e.to_string()),
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn run_seed(
        &self,
        scenario: Arc<Scenario>,
        seed: u64,
        schedule: Vec<Fault>,
        provider: Provider,
    ) -> Result<(RunResult, Trace), String> {
        run::run_seed_real(scenario, seed, schedule, provider)
    }
}

fn main() -> std::process::ExitCode {
    dalp_sim::cli::quiet_on_closed_stdout();
    dalp_sim::cli::plug_real(&RealServices);
    dalp_sim::cli::main(std::env::args().skip(1).collect())
}
