use super::*;
use crate::scenario::scenario_files;
use std::path::Path;

/// A scenario with `n` faults: an external nonce each second, and one reorg of depth 3.
fn with_faults(n: usize) -> Scenario {
    let mut text = String::from(
        r#"
name = "t"
description = "d"
[topology]
engines = 3
db_replicas = 1
rpc_endpoints = 2
finality_depth = 6
[workload]
clients = 3
tokens = 2
operations = 40
submit_window_s = 10
[durations]
fault_phase_s = 60
liveness_bound_s = 60
[[faults]]
kind = "reorg"
at_s = 0.5
depth = 3
"#,
    );
    for i in 1..n {
        text.push_str(&format!(
            "[[faults]]\nkind = \"rpc_down\"\nendpoint = \"rpc-0\"\nat_s = {i}\nfor_s = 8\n"
        ));
    }
    Scenario::parse(&text, "t.toml").unwrap()
}

fn at(s: &Scenario) -> Vec<f64> {
    s.faults.iter().map(Fault::at_s).collect()
}

/// A failure needing the faults at 3 s and 11 s: "durability" violated, else nothing.
fn needs_3_and_11(s: &Scenario) -> TrialResult {
    let t = at(s);
    Ok(if t.contains(&3.0) && t.contains(&11.0) {
        vec!["durability".into()]
    } else {
        vec![]
    })
}

#[test]
fn ddmin_finds_the_minimal_failing_subset_in_fewer_trials_than_one_at_a_time() {
    let mut log = Vec::new();
    let mut sh = Shrinker::new(needs_3_and_11, vec!["durability".into()], 500, &mut log);
    let got = sh.ddmin(with_faults(32));
    assert_eq!(at(&got), vec![3.0, 11.0]);
    // One fault at a time needs 32 trials to get there; chunks take fewer.
    assert!(sh.trials < 32, "{} trials", sh.trials);
}

#[test]
fn ddmin_keeps_the_empty_schedule_when_the_failure_needs_no_fault() {
    let mut log = Vec::new();
    let always = |_: &Scenario| -> TrialResult { Ok(vec!["fencing".into()]) };
    let mut sh = Shrinker::new(always, vec!["fencing".into()], 50, &mut log);
    assert!(sh.ddmin(with_faults(9)).faults.is_empty());
    assert_eq!(sh.trials, 1);
}

#[test]
fn only_the_same_invariant_counts_and_a_crash_never_does() {
    // Without the reorg or the fault at 5 s the run still fails, but on another invariant: not
    // the same failure.
    let f = |s: &Scenario| -> TrialResult {
        match at(s).contains(&0.5) && at(s).contains(&5.0) {
            _ if s.faults.is_empty() => Err("the simulator crashed".into()),
            true => Ok(vec!["reconciliation".into()]),
            false => Ok(vec!["durability".into()]),
        }
    };
    let mut log = Vec::new();
    let mut sh = Shrinker::new(f, vec!["reconciliation".into()], 100, &mut log);
    let got = sh.ddmin(with_faults(6));
    assert_eq!(at(&got), vec![0.5, 5.0]);
    let text = String::from_utf8(log).unwrap();
    assert!(
        text.contains("violates only durability (dropped)"),
        "{text}"
    );
    assert!(
        text.contains("no verdict: the simulator crashed (dropped)"),
        "{text}"
    );
}

/// Fails while operations ≥ 7, the reorg is ≥ 2 deep and the fault at 3 s lasts ≥ 2 s.
fn needs_params(s: &Scenario) -> TrialResult {
    let depth = s.faults.iter().find_map(|f| match f {
        Fault::Reorg { depth, .. } => Some(*depth),
        _ => None,
    });
    let three = s.faults.iter().find_map(|f| match f {
        Fault::RpcDown { at_s, for_s, .. } if *at_s == 3.0 => *for_s,
        _ => None,
    });
    let fails = s.workload.operations >= 7
        && depth.is_some_and(|d| d >= 2)
        && three.is_some_and(|d| d >= 2.0);
    Ok(if fails {
        vec!["exactly_once".into()]
    } else {
        vec![]
    })
}

#[test]
fn the_parameter_pass_shrinks_every_parameter_and_never_loses_the_failure() {
    let mut log = Vec::new();
    let mut sh = Shrinker::new(needs_params, vec!["exactly_once".into()], 500, &mut log);
    let got = sh.shrink(with_faults(12));
    assert_eq!(needs_params(&got).unwrap(), ["exactly_once"]);
    assert_eq!(at(&got), vec![0.5, 3.0]);
    assert_eq!(got.workload.operations, 7);
    assert_eq!(
        (
            got.workload.clients,
            got.topology.engines,
            got.workload.tokens
        ),
        (1, 1, 1)
    );
    assert_eq!(
        (got.topology.rpc_endpoints, got.topology.db_replicas),
        (1, 0)
    );
    assert!(matches!(got.faults[0], Fault::Reorg { depth: 2, .. }));
    // The submit window first, then the fault phase down to a second past the last fault.
    assert_eq!(got.workload.submit_window_s, 1.0);
    assert_eq!(got.durations.fault_phase_s, 4.0);
    // The liveness bound is never shortened.
    assert_eq!(got.durations.liveness_bound_s, 60.0);
    got.validate("shrunk").unwrap();
}

#[test]
fn every_kept_candidate_reproduced_the_failure_whatever_the_budget() {
    for budget in [0, 1, 3, 10, 30, 100] {
        let mut log = Vec::new();
        let mut sh = Shrinker::new(needs_params, vec!["exactly_once".into()], budget, &mut log);
        let got = sh.shrink(with_faults(12));
        assert!(sh.trials <= budget, "{} > {budget}", sh.trials);
        assert_eq!(needs_params(&got).unwrap(), ["exactly_once"], "{budget}");
    }
}

#[test]
fn progress_names_the_trial_the_size_what_was_tried_and_the_outcome() {
    let mut log = Vec::new();
    let mut sh = Shrinker::new(needs_3_and_11, vec!["durability".into()], 40, &mut log);
    sh.shrink(with_faults(16));
    let trials = sh.trials;
    let text = String::from_utf8(log).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        "shrink: trial 1/40 · 0 faults, 40 ops, 3 clients, 3 engines, phase 60 s · without any fault: passes (dropped)"
    );
    assert!(
        text.contains(
            "only 4 faults (#0 reorg@0.5s, #1 rpc_down@1s, #2 rpc_down@2s, #3 rpc_down@3s)"
        ),
        "{text}"
    );
    assert!(text.contains("still fails (kept)"), "{text}");
    assert!(text.contains("operations 40 → 1"), "{text}");
    // One line per trial, none for a cached or invalid candidate.
    assert_eq!(text.lines().count(), trials, "{text}");
}

#[test]
fn candidates_of_each_fault_are_shorter_or_milder_and_valid_ones_only_are_tried() {
    assert_eq!(smaller_u64(40, 1), vec![1, 20, 30, 39]);
    assert_eq!(smaller_u64(2, 1), vec![1]);
    assert!(smaller_u64(1, 1).is_empty());
    assert_eq!(smaller_f64(8.0, 0.1), vec![0.1, 4.0, 6.0]);
    let f = Fault::RpcLag {
        endpoint: "rpc-0".into(),
        at_s: 2.0,
        for_s: None,
        blocks: 10,
    };
    let short: Vec<String> = shorter(&f, 12.0).into_iter().map(|(w, _)| w).collect();
    assert_eq!(
        short,
        [
            "lasting 10 s → 0.1 s",
            "lasting 10 s → 5 s",
            "lasting 10 s → 7.5 s"
        ]
    );
    let mild: Vec<String> = milder(&f).into_iter().map(|(w, _)| w).collect();
    assert_eq!(
        mild,
        [
            "lag blocks 10 → 1",
            "lag blocks 10 → 5",
            "lag blocks 10 → 7",
            "lag blocks 10 → 9"
        ]
    );
    let skew = Fault::ClockSkew {
        node: "engine-0".into(),
        skew_ms: -4000,
        at_s: 1.0,
        for_s: Some(2.0),
    };
    assert_eq!(milder(&skew)[1].0, "skew -4000 ms → -2000 ms");
    assert!(milder(&Fault::MempoolDrop { at_s: 1.0 }).is_empty());
    // Fewer engines than a fault names is refused by validation, so it costs no trial.
    let mut s = with_faults(1);
    s.faults.push(Fault::EngineCrash {
        node: "engine-2".into(),
        at_s: 4.0,
        restart_after_s: Some(1.0),
    });
    let mut log = Vec::new();
    let mut sh = Shrinker::new(needs_3_and_11, vec!["x".into()], 100, &mut log);
    let one_engine = candidates(&s, 4).remove(0).1;
    assert_eq!(sh.attempt(&one_engine, "engines 3 → 1"), Some(false));
    assert_eq!(sh.trials, 0);
}

/// Every scenario's run, written standalone, reads back as the same scenario and replays the
/// same schedule: what `--minimize` writes is a scenario like any other.
#[test]
fn standalone_scenarios_round_trip_through_toml_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    for f in scenario_files(&dir).unwrap() {
        let s = Scenario::load(&f).unwrap();
        for seed in 1..=8 {
            let schedule = s.for_seed(seed).0.schedule(seed);
            let alone = Scenario {
                seed: Some(seed),
                ..s.standalone(seed, schedule.clone())
            };
            let text = alone.to_toml();
            let back = Scenario::parse(&text, "standalone.toml")
                .unwrap_or_else(|e| panic!("{}: seed {seed}: {e}\n{text}", f.display()));
            assert_eq!(back, alone, "{}", f.display());
            assert_eq!(back.schedule(seed), schedule, "{}", f.display());
        }
    }
}

#[test]
fn an_explicit_schedule_is_validated_naming_the_fault_and_field() {
    let mut s = with_faults(3);
    s.faults[1] = Fault::RpcDown {
        endpoint: "rpc-9".into(),
        at_s: 1.0,
        for_s: Some(1.0),
    };
    let e = Scenario::parse(&s.to_toml(), "shrunk.toml").unwrap_err();
    assert!(e.field.starts_with("faults[1]"), "{e}");
    assert!(e.to_string().contains("rpc-9"), "{e}");
}
