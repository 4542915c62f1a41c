//! The suite's probe coverage: which of the engine's declared probes and fault points
//! (`dalp_engine::probe::PROBES`) the runs reached, under which catalog ids and scenarios, which
//! no run reached, and which `must` probes were missed (a suite declaring `must_probes` fails).
//!
//! Only runs that carry coverage (the simulation's) count; with none, nothing is judged.

use crate::outcome::{RunOutput, RunRecord};
use dalp_engine::probe::{Kind, PROBES};
use std::collections::{BTreeMap, BTreeSet};

/// One declared probe's reach over a set of runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReach {
    pub name: &'static str,
    pub must: Option<&'static str>,
    pub fault_point: bool,
    /// Times reached, summed over runs.
    pub hits: u64,
    /// Runs that reached it.
    pub runs: usize,
    /// Scenarios whose runs reached it, per catalog id (`-`: a reference scenario).
    pub by_id: BTreeMap<String, BTreeSet<String>>,
    /// Runs where the seed enabled it (fault points), and how often it fired in all.
    pub armed_runs: usize,
    pub fired: u64,
}

/// The coverage of a set of runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Runs that carried coverage.
    pub runs: usize,
    /// One per declared probe, in declaration order.
    pub probes: Vec<ProbeReach>,
}

impl Matrix {
    /// The coverage of `results`; `None` when no run carries any (real runs, crashes only).
    pub fn of(results: &[RunRecord]) -> Option<Matrix> {
        let mut probes: Vec<ProbeReach> = PROBES
            .iter()
            .map(|p| ProbeReach {
                name: p.name,
                must: p.must,
                fault_point: matches!(p.kind, Kind::FaultPoint { .. }),
                hits: 0,
                runs: 0,
                by_id: BTreeMap::new(),
                armed_runs: 0,
                fired: 0,
            })
            .collect();
        let mut runs = 0;
        for r in results {
            let RunOutput::Finished(f) = &r.output else {
                continue;
            };
            let Some(c) = &f.result.coverage else {
                continue;
            };
            runs += 1;
            for p in &mut probes {
                if c.fault_points.contains_key(p.name) {
                    p.armed_runs += 1;
                }
                p.fired += c.fired.get(p.name).copied().unwrap_or(0);
                let n = c.probes.get(p.name).copied().unwrap_or(0);
                if n == 0 {
                    continue;
                }
                p.hits += n;
                p.runs += 1;
                let ids: Vec<String> = if r.covers.is_empty() {
                    vec!["-".into()]
                } else {
                    r.covers.clone()
                };
                for id in ids {
                    p.by_id
                        .entry(id)
                        .or_default()
                        .insert(f.result.scenario.clone());
                }
            }
        }
        (runs > 0).then_some(Matrix { runs, probes })
    }

    /// Declared probes (and fault points) that no run reached.
    pub fn unreached(&self) -> impl Iterator<Item = &ProbeReach> {
        self.probes.iter().filter(|p| p.runs == 0)
    }

    /// `must` probes no run reached, with their reasons.
    pub fn must_missed(&self) -> Vec<(&'static str, &'static str)> {
        self.unreached()
            .filter_map(|p| p.must.map(|why| (p.name, why)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Coverage, FinishedRun, RunResult};

    fn record(scenario: &str, covers: &[&str], probes: &[(&str, u64)]) -> RunRecord {
        let result = RunResult {
            scenario: scenario.into(),
            seed: 1,
            passed: true,
            verdicts: vec![],
            trace_hash: "00".into(),
            trace_events: 0,
            schedule: vec![],
            recovery_ms: None,
            data_loss: vec![],
            simulated_ms: 1,
            stats: BTreeMap::new(),
            ops: vec![],
            fault_windows: vec![],
            backend: None,
            provider: None,
            not_applicable: vec![],
            engine_logs: BTreeMap::new(),
            coverage: Some(Coverage {
                probes: probes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                fault_points: BTreeMap::from([("fp.lease.renew".to_string(), 0.1)]),
                fired: BTreeMap::from([("fp.lease.renew".to_string(), 2)]),
            }),
            swarm: None,
        };
        RunRecord::new(
            RunOutput::Finished(Box::new(FinishedRun::new(result))),
            None,
            None,
            covers.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn reach_is_counted_per_catalog_id_and_scenario_and_must_misses_are_named() {
        let runs = vec![
            record(
                "a",
                &["FM-REORG"],
                &[("tx.reorged", 3), ("rpc.failover", 1)],
            ),
            record("b", &[], &[("tx.reorged", 1)]),
        ];
        let m = Matrix::of(&runs).expect("coverage");
        assert_eq!(m.runs, 2);
        let reorged = m.probes.iter().find(|p| p.name == "tx.reorged").unwrap();
        assert_eq!((reorged.hits, reorged.runs), (4, 2));
        assert_eq!(
            reorged.by_id.keys().collect::<Vec<_>>(),
            vec![&"-".to_string(), &"FM-REORG".to_string()]
        );
        let renew = m
            .probes
            .iter()
            .find(|p| p.name == "fp.lease.renew")
            .unwrap();
        assert_eq!((renew.armed_runs, renew.fired, renew.runs), (2, 4, 0));
        let missed = m.must_missed();
        assert!(missed.iter().any(|(n, _)| *n == "tx.rebroadcast"));
        assert!(!missed
            .iter()
            .any(|(n, _)| *n == "tx.reorged" || *n == "rpc.failover"));
        assert!(m.unreached().any(|p| p.name == "orphan.adopted"));
    }

    #[test]
    fn runs_without_coverage_judge_nothing() {
        let mut r = record("a", &[], &[]);
        if let RunOutput::Finished(f) = &mut r.output {
            f.result.coverage = None;
        }
        assert_eq!(Matrix::of(&[r]), None);
    }
}
