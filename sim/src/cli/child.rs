//! `dalp-sim child` (internal, started by the parent once per seed): run one seed in this
//! process, write the result JSON, and the trace when asked or on failure.

use super::backend::{Backend, Provider};
use super::options::{LogLevel, SeedArgs};
use crate::outcome::{FinishedRun, RunResult};
use crate::scenario::{Fault, Scenario};
use crate::trace::{write_atomic, Trace};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Args)]
pub(super) struct ChildArgs {
    /// The scenario file
    file: PathBuf,
    #[command(flatten)]
    pub(super) run: SeedArgs,
    /// Where the result JSON is written
    #[arg(long, value_name = "FILE")]
    result: PathBuf,
    /// Where the trace is written (on failure, or always with --always-trace)
    #[arg(long, value_name = "DIR")]
    trace_dir: Option<PathBuf>,
    /// Write the trace also when the run passes (`--always-trace` or `--always-trace true`)
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub(super) always_trace: bool,
    /// The engines' logs at this level and above go into the trace (simulation only)
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Off)]
    pub(super) log: LogLevel,
}

/// Always `Ok(true)` once the result is written: the parent reads the verdict from it.
pub(super) fn child(a: &ChildArgs) -> Result<bool, String> {
    let (scenario, swarm) = Scenario::load(&a.file)
        .map_err(|e| e.to_string())?
        .for_seed(a.run.seed);
    let schedule = match &a.run.schedule {
        _ if a.run.baseline => Vec::new(),
        Some(p) => read_schedule(p)?,
        None => scenario.schedule(a.run.seed),
    };
    let started = Instant::now();
    let (result, trace) = match a.run.backend.backend()? {
        Backend::Sim => run_child(scenario, a.run.seed, schedule, a.log.level())?,
        Backend::Real(_) if a.log != LogLevel::Off => {
            return Err(
                "--log: the engines' logs go into the trace only in the simulation \
                        (--backend sim); the real backend keeps each engine's log file"
                    .into(),
            )
        }
        Backend::Real(p) => run_child_real(scenario, a.run.seed, schedule, p)?,
    };
    let mut run = FinishedRun::new(RunResult { swarm, ..result });
    // Measurements of this process, outside the deterministic result (never in the trace).
    run.wall_ms = Some(started.elapsed().as_millis() as u64);
    run.peak_rss_kib = peak_rss_kib();
    if let Some(dir) = &a.trace_dir {
        if a.always_trace || !run.result.passed {
            run.trace_files = write_trace(a, &run.result, &trace, dir)?;
        }
    }
    write_atomic(
        &a.result,
        serde_json::to_string(&run).expect("json").as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", a.result.display()))?;
    Ok(true)
}

/// Write the trace under `dir`; the files' paths.
fn write_trace(
    a: &ChildArgs,
    r: &RunResult,
    trace: &Trace,
    dir: &Path,
) -> Result<Vec<String>, String> {
    let stem = format!(
        "{}-{}{}",
        r.scenario,
        a.run.seed,
        if a.run.baseline { "-baseline" } else { "" }
    );
    let (jl, ch) = trace
        .write(dir, &stem)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(vec![jl, ch])
}

fn read_schedule(path: &Path) -> Result<Vec<Fault>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a fault schedule: {e}", path.display()))
}

/// This process's peak resident set size (Linux `VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `logs`: `--log`'s level. `DALP_SIM_LOG=<level>` (error … trace) still prints the engines' logs
/// to the child's stderr, each line with the simulated time (run `dalp-sim child` directly to see
/// them; a parent keeps a child's stderr only for a crash); both are installed by
/// `world::logs::install`.
#[cfg(madsim)]
fn run_child(
    scenario: Scenario,
    seed: u64,
    schedule: Vec<Fault>,
    logs: Option<tracing::Level>,
) -> Result<(RunResult, Trace), String> {
    Ok(crate::world::run::run_seed(
        std::sync::Arc::new(scenario),
        seed,
        schedule,
        logs,
    ))
}

#[cfg(not(madsim))]
fn run_child(
    _: Scenario,
    _: u64,
    _: Vec<Fault>,
    _: Option<tracing::Level>,
) -> Result<(RunResult, Trace), String> {
    Err(super::backend::NO_SIMULATION.into())
}

/// The real backend plugged in by `dalp-real` (an error in any other binary).
fn run_child_real(
    scenario: Scenario,
    seed: u64,
    schedule: Vec<Fault>,
    provider: Provider,
) -> Result<(RunResult, Trace), String> {
    super::backend::real()?.run_seed(std::sync::Arc::new(scenario), seed, schedule, provider)
}
