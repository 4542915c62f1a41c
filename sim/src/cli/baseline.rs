//! The isolation invariant's reference: a run of the same seed without faults (a job of its own,
//! `Job::baseline`), joined to the run's result.

use super::jobs::Job;
use super::repro::repro_command;
use crate::isolation;
use crate::isolation::IsolationReport;
use crate::outcome::{BaselineSummary, FinishedRun};
use crate::scenario::Scenario;
use std::path::Path;

/// Whether a scenario's runs need a fault-free baseline run (the `isolation` invariant).
pub(super) fn needs_baseline(s: &Scenario) -> bool {
    s.invariants.iter().any(|i| i == "isolation")
}

/// The command that replays a seed's fault-free baseline.
fn baseline_repro_command(scenario: &Path, seed: u64) -> String {
    format!("{} --baseline", repro_command(scenario, seed))
}

/// Add the baseline and the isolation verdict to a run's result ([`attach`]); a crashed run
/// stays crashed.
pub(super) fn with_baseline(
    job: &Job,
    s: &Scenario,
    run: Result<FinishedRun, String>,
    baseline: &Result<FinishedRun, String>,
) -> Result<FinishedRun, String> {
    let mut run = run?;
    attach(
        &mut run,
        baseline.as_ref().map_err(|e| e.as_str()),
        s,
        &baseline_repro_command(&job.scenario, job.seed),
    );
    Ok(run)
}

/// What `results.json` keeps of the baseline run under the faulty run (`baseline`).
fn baseline_summary(b: &FinishedRun) -> BaselineSummary {
    BaselineSummary::Ran {
        passed: b.result.passed,
        trace_hash: b.result.trace_hash.clone(),
        trace_events: b.result.trace_events as u64,
        simulated_ms: b.result.simulated_ms,
        recovery_ms: b.result.recovery_ms,
        violated: b.result.violated().map(|v| v.invariant.clone()).collect(),
        wall_ms: b.wall_ms,
        trace_files: b.trace_files.clone(),
    }
}

/// Attach the baseline to a faulty run and add the `isolation` verdict to its verdicts (and
/// `passed`): violated when the baseline crashed or failed its own invariants (the scenario is
/// broken, not the engine under faults), otherwise [`isolation::evaluate`]'s verdict.
/// `baseline_repro`: how to replay the baseline, for the messages.
fn attach(
    run: &mut FinishedRun,
    baseline: Result<&FinishedRun, &str>,
    s: &Scenario,
    baseline_repro: &str,
) {
    let vd = match baseline {
        Err(e) => {
            run.baseline = Some(BaselineSummary::Crashed {
                passed: false,
                crashed: e.to_string(),
            });
            isolation::verdict(
                "the fault-free baseline run".into(),
                vec![format!(
                    "the fault-free baseline of this seed (same scenario, no faults) crashed: {}; reproduce: {baseline_repro}",
                    e.lines().next().unwrap_or("")
                )],
            )
        }
        Ok(b) => {
            run.baseline = Some(baseline_summary(b));
            if b.result.passed {
                let r = &run.result;
                let cfg = s.isolation.clone().unwrap_or_default();
                let (vd, windows) = isolation::evaluate(
                    s,
                    &cfg,
                    &r.schedule,
                    &r.fault_windows,
                    &r.ops,
                    &b.result.ops,
                );
                run.isolation = Some(IsolationReport {
                    thresholds: cfg,
                    windows,
                });
                vd
            } else {
                let firsts: Vec<String> = b
                    .result
                    .violated()
                    .map(|v| {
                        let first = v.violations.first().map(String::as_str).unwrap_or("");
                        format!("{} ({first})", v.invariant)
                    })
                    .collect();
                isolation::verdict(
                    "the fault-free baseline run".into(),
                    vec![format!(
                        "the fault-free baseline of this seed (same scenario, no faults) fails its own invariants, so the scenario is broken, not the engine under faults: {}; reproduce: {baseline_repro}",
                        if firsts.is_empty() { "no result".to_string() } else { firsts.join("; ") }
                    )],
                )
            }
        }
    };
    if !vd.held {
        run.result.passed = false;
    }
    run.result.verdicts.push(vd);
}

/// [`with_baseline`] when there is a baseline, else the run as it is.
pub(super) fn judged(
    job: &Job,
    s: &Scenario,
    run: Result<FinishedRun, String>,
    baseline: Option<&Result<FinishedRun, String>>,
) -> Result<FinishedRun, String> {
    match baseline {
        Some(b) => with_baseline(job, s, run, b),
        None => run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::tests::{ops, scenario};
    use crate::outcome::RunResult;
    use crate::scenario::Fault;
    use crate::timing::fault_windows;
    use crate::verdict::Verdict;

    fn run(verdicts: Vec<Verdict>, lat: Option<u64>) -> FinishedRun {
        let schedule = vec![Fault::RpcDown {
            endpoint: "rpc-0".into(),
            at_s: 5.0,
            for_s: Some(20.0),
        }];
        FinishedRun::new(RunResult {
            scenario: "t".into(),
            seed: 1,
            passed: verdicts.iter().all(|v| v.held),
            verdicts,
            trace_hash: "ab".into(),
            trace_events: 1,
            fault_windows: fault_windows(&schedule, 40_000),
            schedule,
            recovery_ms: None,
            data_loss: vec![],
            simulated_ms: 60_000,
            stats: Default::default(),
            ops: ops(|_| lat),
            backend: None,
            provider: None,
            not_applicable: vec![],
            engine_logs: Default::default(),
            coverage: None,
            swarm: None,
        })
    }

    fn held(invariant: &str) -> Verdict {
        Verdict {
            invariant: invariant.into(),
            held: true,
            checked: String::new(),
            violations: vec![],
            violation_count: 0,
        }
    }

    #[test]
    fn attach_adds_the_verdict_and_the_baseline_and_fails_on_a_broken_baseline() {
        let s = scenario("");
        let base = run(vec![], Some(3000));
        let mut good = run(vec![held("durability")], Some(3500));
        attach(&mut good, Ok(&base), &s, "x");
        assert!(good.result.passed);
        assert_eq!(good.result.verdicts[1].invariant, "isolation");
        assert_eq!(good.baseline.as_ref().unwrap().trace_hash(), Some("ab"));
        assert_eq!(
            good.isolation.as_ref().unwrap().windows[0].baseline_finished,
            10
        );

        let mut stalled = run(vec![held("durability")], None);
        attach(&mut stalled, Ok(&base), &s, "x");
        assert!(!stalled.result.passed);
        assert!(!stalled.result.verdicts[1].held);

        let mut broken = base.clone();
        broken.result.passed = false;
        broken.result.verdicts = vec![Verdict {
            held: false,
            violations: vec!["op 3 never finished".into()],
            violation_count: 1,
            ..held("durability")
        }];
        let mut r2 = run(vec![], Some(3500));
        attach(&mut r2, Ok(&broken), &s, "REPRO");
        assert!(!r2.result.passed);
        let msg = &r2.result.verdicts[0].violations[0];
        assert!(
            msg.contains("scenario is broken")
                && msg.contains("durability (op 3 never finished)")
                && msg.contains("REPRO"),
            "{msg}"
        );
        match r2.baseline.as_ref().unwrap() {
            BaselineSummary::Ran { violated, .. } => assert_eq!(violated, &["durability"]),
            other => panic!("{other:?}"),
        }

        let mut r3 = run(vec![], Some(3500));
        attach(&mut r3, Err("boom"), &s, "x");
        assert!(!r3.result.passed);
        assert!(r3.result.verdicts[0].violations[0].contains("crashed: boom"));
    }
}
