//! `dalp-sim child` (internal, started by the parent once per seed): run one seed in this
//! process, write the result JSON, and the trace when asked or on failure.

use super::backend::{Backend, Provider};
use super::options::SeedArgs;
use crate::scenario::{Fault, Scenario};
use crate::trace::{write_atomic, Trace};
use clap::Args;
use serde_json::{json, Value};
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
}

/// Always `Ok(true)` once the result is written: the parent reads the verdict from it.
pub(super) fn child(a: &ChildArgs) -> Result<bool, String> {
    let scenario = Scenario::load(&a.file).map_err(|e| e.to_string())?;
    let schedule = match &a.run.schedule {
        _ if a.run.baseline => Vec::new(),
        Some(p) => read_schedule(p)?,
        None => scenario.schedule(a.run.seed),
    };
    let started = Instant::now();
    let (mut v, trace) = match a.run.backend.backend()? {
        Backend::Sim => run_child(scenario, a.run.seed, schedule)?,
        Backend::Real(p) => run_child_real(scenario, a.run.seed, schedule, p)?,
    };
    // Measurements of this process, outside the deterministic result (never in the trace).
    v["wall_ms"] = json!(started.elapsed().as_millis() as u64);
    if let Some(kib) = peak_rss_kib() {
        v["peak_rss_kib"] = json!(kib);
    }
    let passed = v["passed"].as_bool().unwrap_or(false);
    if let Some(dir) = &a.trace_dir {
        if a.always_trace || !passed {
            v["trace_files"] = write_trace(a, &v, &trace, dir)?;
        }
    }
    write_atomic(
        &a.result,
        serde_json::to_string(&v).expect("json").as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", a.result.display()))?;
    Ok(true)
}

/// Write the trace under `dir`; the files' paths.
fn write_trace(a: &ChildArgs, v: &Value, trace: &Trace, dir: &Path) -> Result<Value, String> {
    let stem = format!(
        "{}-{}{}",
        v["scenario"].as_str().unwrap_or("run"),
        a.run.seed,
        if a.run.baseline { "-baseline" } else { "" }
    );
    let (jl, ch) = trace
        .write(dir, &stem)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(json!([jl, ch]))
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

#[cfg(madsim)]
fn run_child(
    scenario: Scenario,
    seed: u64,
    schedule: Vec<Fault>,
) -> Result<(Value, Trace), String> {
    let (result, trace) =
        crate::world::run::run_seed(std::sync::Arc::new(scenario), seed, schedule);
    Ok((serde_json::to_value(&result).expect("result json"), trace))
}

#[cfg(not(madsim))]
fn run_child(_: Scenario, _: u64, _: Vec<Fault>) -> Result<(Value, Trace), String> {
    Err(super::backend::NO_SIMULATION.into())
}

#[cfg(not(madsim))]
fn run_child_real(
    scenario: Scenario,
    seed: u64,
    schedule: Vec<Fault>,
    provider: Provider,
) -> Result<(Value, Trace), String> {
    use crate::real::run::{run_seed_real, ProviderChoice};
    let choice = ProviderChoice::parse(provider.name())?;
    let (result, trace) = run_seed_real(std::sync::Arc::new(scenario), seed, schedule, choice)?;
    Ok((serde_json::to_value(&result).expect("result json"), trace))
}

#[cfg(madsim)]
fn run_child_real(
    _: Scenario,
    _: u64,
    _: Vec<Fault>,
    provider: Provider,
) -> Result<(Value, Trace), String> {
    Err(Backend::Real(provider).supported().unwrap_err())
}
