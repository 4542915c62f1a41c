//! `dalp-sim repro`: replay one seed (beside its fault-free baseline when the scenario judges
//! isolation), print its outcome and trace, and minimize a failing schedule on request.

use super::backend::{prepare, Backend};
use super::baseline::{judged, needs_baseline};
use super::jobs::{run_jobs, Job};
use super::minimize::{minimize, Options};
use super::options::{LogLevel, SeedArgs};
use super::resolve::one_scenario;
use crate::outcome::FinishedRun;
use crate::scenario::Scenario;
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Replay one seed: outcome, trace-hash, trace files
#[derive(Debug, Args)]
pub(super) struct ReproArgs {
    /// Scenario name or file
    pub(super) scenario: String,
    #[command(flatten)]
    pub(super) run: SeedArgs,
    /// Where the traces (and --minimize's scenario) are written
    #[arg(long, value_name = "DIR", default_value = "reports/repro")]
    out: PathBuf,
    /// When the run fails: shrink it (delta debugging over the faults, then smaller parameters)
    /// while it still violates one of the same invariants, and write the result as a standalone
    /// scenario TOML under DIR/minimize
    #[arg(long)]
    pub(super) minimize: bool,
    /// --minimize runs at most this many trial runs
    #[arg(long, value_name = "N", default_value_t = 200, requires = "minimize",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(super) max_trials: u64,
    /// --minimize also saves the result as <scenarios>/regressions/NAME.toml, which the `ci`
    /// suite replays with its pinned seed (it must pass once the bug is fixed)
    #[arg(long, value_name = "NAME", requires = "minimize")]
    pub(super) save_regression: Option<String>,
    /// The engines' logs at this level and above go into the trace (simulation only)
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info)]
    pub(super) log: LogLevel,
}

/// The command that replays one seed, as printed for a failure.
pub fn repro_command(scenario: &Path, seed: u64) -> String {
    format!("cargo xtask sim repro {} --seed {seed}", scenario.display())
}

/// `Ok(false)` when the run failed.
pub(super) fn repro(dir: &Path, a: &ReproArgs) -> Result<bool, String> {
    let file = one_scenario(dir, &a.scenario, "repro takes one scenario")?;
    let scenario = Scenario::load(&file).map_err(|e| e.to_string())?;
    let backend = a.run.backend.backend()?;
    backend.supported()?;
    if let Some(pinned) = scenario.seed.filter(|p| *p != a.run.seed) {
        eprintln!(
            "note: {} pins seed {pinned}; running seed {} as asked",
            file.display(),
            a.run.seed
        );
    }
    let mut extra = vec!["--always-trace".to_string(), "true".to_string()];
    extra.extend(backend.child_args());
    if backend == Backend::Sim {
        extra.extend(a.log.child_args());
    }
    prepare(&backend)?;
    if let Some(s) = &a.run.schedule {
        extra.push("--schedule".into());
        extra.push(s.display().to_string());
    }
    let job = Job {
        baseline: a.run.baseline,
        ..Job::new(file, a.run.seed)
    };
    // The isolation invariant compares the run with the seed's fault-free baseline (run beside
    // it, in a process of its own).
    let with_baseline = needs_baseline(&scenario) && !a.run.baseline && backend == Backend::Sim;
    let jobs: Vec<Job> = std::iter::once(job.clone())
        .chain(with_baseline.then(|| job.as_baseline()))
        .collect();
    let mut got: BTreeMap<bool, Result<FinishedRun, String>> = BTreeMap::new();
    run_jobs(jobs, 2, &a.out, &extra, |j, r, _| {
        got.insert(j.baseline, r);
    })?;
    let _ = std::fs::remove_dir_all(a.out.join(".runs"));
    let run = got.remove(&a.run.baseline).expect("the run ran");
    let base = got.remove(&true).filter(|_| !a.run.baseline);
    let v = judged(&job, &scenario, run, base.as_ref())?;
    let passed = v.result.passed;
    print_outcome(&v);
    if !passed && a.minimize {
        let o = Options {
            max_trials: a.max_trials as usize,
            save_regression: a.save_regression.as_deref(),
            scenarios_dir: dir,
            child_args: backend.child_args(),
            baselines: backend == Backend::Sim,
        };
        minimize(&job, &scenario, &a.out, &v, &o)?;
    } else if a.minimize {
        eprintln!("minimize: the run passed; nothing to shrink");
    }
    Ok(passed)
}

fn print_outcome(v: &FinishedRun) {
    let r = &v.result;
    println!("scenario: {}", r.scenario);
    println!("seed: {}", r.seed);
    if let Some(d) = &r.swarm {
        println!("swarm draw: {}", d.line);
    }
    println!("outcome: {}", if r.passed { "pass" } else { "FAIL" });
    for verdict in &r.verdicts {
        println!(
            "  {} {:<22} {}",
            if verdict.held { "held    " } else { "VIOLATED" },
            verdict.invariant,
            verdict.checked
        );
        for m in &verdict.violations {
            println!("      - {m}");
        }
    }
    println!("faults: {}", r.schedule.len());
    if let Some(b) = &v.baseline {
        println!(
            "baseline (same seed, no faults): {}, trace-hash {}",
            if b.passed() { "pass" } else { "FAIL" },
            b.trace_hash().unwrap_or("?")
        );
    }
    if let Some(ms) = r.recovery_ms {
        println!("recovery: {:.3} s after healing", ms as f64 / 1000.0);
    }
    println!("simulated: {:.1} s", r.simulated_ms as f64 / 1000.0);
    for f in &v.trace_files {
        println!("trace: {f}");
    }
    println!("trace-hash: {}", r.trace_hash);
}
