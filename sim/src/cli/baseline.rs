//! The isolation invariant's reference: a run of the same seed without faults (a job of its own,
//! `Job::baseline`), joined to the run's result.

use super::jobs::Job;
use super::repro::repro_command;
use crate::isolation;
use crate::scenario::Scenario;
use serde_json::Value;
use std::path::Path;

/// Whether a scenario's runs need a fault-free baseline run (the `isolation` invariant).
pub(super) fn needs_baseline(s: &Scenario) -> bool {
    s.invariants.iter().any(|i| i == "isolation")
}

/// The command that replays a seed's fault-free baseline.
fn baseline_repro_command(scenario: &Path, seed: u64) -> String {
    format!("{} --baseline", repro_command(scenario, seed))
}

/// Add the baseline and the isolation verdict to a run's result ([`isolation::attach`]); a
/// crashed run stays crashed.
pub(super) fn with_baseline(
    job: &Job,
    s: &Scenario,
    run: Result<Value, String>,
    baseline: &Result<Value, String>,
) -> Result<Value, String> {
    let mut v = run?;
    isolation::attach(
        &mut v,
        baseline.as_ref().map_err(String::as_str),
        s,
        &baseline_repro_command(&job.scenario, job.seed),
    )
    .map_err(|e| format!("the isolation invariant could not be evaluated: {e}"))?;
    Ok(v)
}

/// [`with_baseline`] when there is a baseline, else the run as it is.
pub(super) fn judged(
    job: &Job,
    s: &Scenario,
    run: Result<Value, String>,
    baseline: Option<&Result<Value, String>>,
) -> Result<Value, String> {
    match baseline {
        Some(b) => with_baseline(job, s, run, b),
        None => run,
    }
}
