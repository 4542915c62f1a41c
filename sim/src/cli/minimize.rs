//! `dalp-sim repro --minimize`: remove faults one at a time while the run still fails.

use super::baseline::judged;
use super::jobs::{run_one, Job};
use crate::outcome::FinishedRun;
use crate::scenario::{Fault, Scenario};
use crate::trace::write_atomic;
use std::path::Path;

/// Shrink the schedule of the failed run `first` and print the smallest one found.
/// `baseline`: the seed's fault-free run (the same for every schedule), to re-judge isolation.
pub(super) fn minimize(
    job: &Job,
    scenario: &Scenario,
    out_dir: &Path,
    first: &FinishedRun,
    baseline: Option<&Result<FinishedRun, String>>,
) -> Result<(), String> {
    let mut schedule: Vec<Fault> = first.result.schedule.clone();
    let failing = violated(first);
    eprintln!(
        "minimize: {} faults; keeping runs that still violate {}",
        schedule.len(),
        failing.join(", ")
    );
    let sched_dir = out_dir.join("minimize");
    std::fs::create_dir_all(&sched_dir).map_err(|e| format!("{}: {e}", sched_dir.display()))?;
    let path = sched_dir.join(format!(
        "{}-{}.schedule.json",
        job.scenario
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("s"),
        job.seed
    ));
    let mut i = 0;
    while i < schedule.len() {
        let mut trial = schedule.clone();
        let removed = trial.remove(i);
        write_schedule(&path, &trial)?;
        let v = run_one(
            job,
            out_dir,
            &["--schedule".into(), path.display().to_string()],
        );
        let v = judged(job, scenario, v, baseline)?;
        let still = violated(&v).iter().any(|x| failing.contains(x));
        eprintln!(
            "minimize: without {} at {} s: {}",
            removed.kind(),
            removed.at_s(),
            if still {
                "still fails (dropped)"
            } else {
                "passes (kept)"
            }
        );
        if still {
            schedule = trial;
        } else {
            i += 1;
        }
    }
    write_schedule(&path, &schedule)?;
    print_minimized(job, &schedule, &path);
    Ok(())
}

/// The invariants a run violated.
fn violated(v: &FinishedRun) -> Vec<String> {
    v.result.violated().map(|x| x.invariant.clone()).collect()
}

fn write_schedule(path: &Path, schedule: &[Fault]) -> Result<(), String> {
    write_atomic(
        path,
        serde_json::to_string_pretty(schedule)
            .expect("json")
            .as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

fn print_minimized(job: &Job, schedule: &[Fault], path: &Path) {
    println!("minimized schedule ({} faults):", schedule.len());
    for f in schedule {
        println!("  {}", serde_json::to_string(f).expect("json"));
    }
    println!(
        "reproduce: cargo xtask sim repro {} --seed {} --schedule {}",
        job.scenario.display(),
        job.seed,
        path.display()
    );
}
