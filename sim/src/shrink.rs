//! The shrinker behind `dalp-sim repro --minimize`: delta debugging (ddmin) over a failing
//! run's fault schedule, then a pass over the scenario's parameters, keeping a candidate only
//! when its run still violates one of the invariants the original run violated.
//!
//! Pure: a trial is a caller-given function of a candidate [`Scenario`] (the CLI runs it as a
//! child process), so the algorithm is unit-tested on synthetic predicates. Runs are
//! deterministic per (scenario, seed), so a candidate is tried once (results are cached by its
//! TOML text) and never retried.

use crate::scenario::{Fault, Scenario};
use std::collections::BTreeMap;
use std::io::Write;

/// What a trial answers: the invariants the candidate's run violated, or why it gave no verdict
/// (a crashed child: never the same failure).
pub type TrialResult = Result<Vec<String>, String>;

/// The shrinker's state: the target invariants, the trial budget, the progress sink.
pub struct Shrinker<'a, R: FnMut(&Scenario) -> TrialResult> {
    run: R,
    /// The invariants the original run violated; a candidate must violate one of them.
    target: Vec<String>,
    /// Trials run so far (cached and invalid candidates are not trials).
    pub trials: usize,
    pub max_trials: usize,
    progress: &'a mut dyn Write,
    seen: BTreeMap<String, bool>,
}

impl<'a, R: FnMut(&Scenario) -> TrialResult> Shrinker<'a, R> {
    pub fn new(
        run: R,
        target: Vec<String>,
        max_trials: usize,
        progress: &'a mut dyn Write,
    ) -> Self {
        Shrinker {
            run,
            target,
            trials: 0,
            max_trials,
            progress,
            seen: BTreeMap::new(),
        }
    }

    /// Whether the budget is spent.
    pub fn exhausted(&self) -> bool {
        self.trials >= self.max_trials
    }

    /// Shrink `s` (a failing, standalone scenario: explicit faults, no random draw): ddmin over
    /// the faults, then the parameters, repeated while the parameters shrink and the budget
    /// lasts. The result is `s` or a candidate that reproduced the failure.
    pub fn shrink(&mut self, s: Scenario) -> Scenario {
        let mut s = self.ddmin(s);
        while !self.exhausted() {
            let (next, changed) = self.parameters(s);
            s = next;
            if !changed {
                break;
            }
            s = self.ddmin(s);
        }
        s
    }

    /// Try one candidate: `None` when the budget is spent, `Some(false)` for an invalid one
    /// (no trial), else whether its run violated a target invariant.
    fn attempt(&mut self, c: &Scenario, what: &str) -> Option<bool> {
        if c.validate("(candidate)").is_err() {
            return Some(false);
        }
        let key = c.to_toml();
        if let Some(&r) = self.seen.get(&key) {
            return Some(r);
        }
        if self.exhausted() {
            return None;
        }
        self.trials += 1;
        let got = (self.run)(c);
        let kept = matches!(&got, Ok(v) if v.iter().any(|x| self.target.contains(x)));
        let outcome = match &got {
            _ if kept => "still fails (kept)".to_string(),
            Ok(v) if v.is_empty() => "passes (dropped)".into(),
            Ok(v) => format!("violates only {} (dropped)", v.join(", ")),
            Err(e) => format!("no verdict: {} (dropped)", e.lines().next().unwrap_or("")),
        };
        let _ = writeln!(
            self.progress,
            "shrink: trial {}/{} · {} · {what}: {outcome}",
            self.trials,
            self.max_trials,
            size_line(c)
        );
        self.seen.insert(key, kept);
        Some(kept)
    }

    /// Zeller's ddmin over `s.faults`: the empty schedule first, then chunks (up to quarters)
    /// and their complements at doubling granularity down to single faults. 1-minimal when the
    /// budget lasts: removing any one remaining fault loses the failure.
    pub fn ddmin(&mut self, s: Scenario) -> Scenario {
        let with = |idx: &[usize], s: &Scenario| Scenario {
            faults: idx.iter().map(|&i| s.faults[i].clone()).collect(),
            ..s.clone()
        };
        if s.faults.is_empty() {
            return s;
        }
        if self.attempt(&with(&[], &s), "without any fault") == Some(true) {
            return with(&[], &s);
        }
        let mut keep: Vec<usize> = (0..s.faults.len()).collect();
        let mut n = 2;
        while keep.len() >= 2 {
            let chunks: Vec<Vec<usize>> = split(&keep, n);
            let mut reduced = false;
            for (i, chunk) in chunks.iter().enumerate() {
                // A chunk alone is tried at coarse granularity only: a timing-sensitive failure
                // seldom rests on one small chunk, and those trials cost as much as the
                // complements that do shrink it (measured: 71 of 200 trials on a swarm seed).
                if n <= SUBSETS_UP_TO {
                    let what = format!("only {}", describe(&s.faults, chunk));
                    match self.attempt(&with(chunk, &s), &what) {
                        None => return with(&keep, &s),
                        Some(true) => {
                            keep = chunk.clone();
                            n = 2;
                            reduced = true;
                            break;
                        }
                        Some(false) => {}
                    }
                }
                // With two chunks, each one's complement is the other chunk.
                if n == 2 {
                    continue;
                }
                let rest: Vec<usize> = chunks
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, c)| c.iter().copied())
                    .collect();
                let what = format!("without {}", describe(&s.faults, chunk));
                match self.attempt(&with(&rest, &s), &what) {
                    None => return with(&keep, &s),
                    Some(true) => {
                        keep = rest;
                        n = (n - 1).max(2);
                        reduced = true;
                        break;
                    }
                    Some(false) => {}
                }
            }
            if !reduced {
                if n >= keep.len() {
                    break;
                }
                n = (2 * n).min(keep.len());
            }
        }
        with(&keep, &s)
    }

    /// One pass over the parameters: for each, the smallest of a few smaller values that still
    /// fails is kept. Whether anything changed.
    pub fn parameters(&mut self, mut s: Scenario) -> (Scenario, bool) {
        let mut changed = false;
        for p in 0..param_count(&s) {
            let values = candidates(&s, p);
            for (what, c) in values {
                match self.attempt(&c, &what) {
                    None => return (s, changed),
                    Some(true) => {
                        s = c;
                        changed = true;
                        break;
                    }
                    Some(false) => {}
                }
            }
        }
        (s, changed)
    }
}

/// The finest granularity at which ddmin tries a chunk alone (complements are tried at every
/// granularity, down to single faults).
const SUBSETS_UP_TO: usize = 4;

/// `keep` in `n` contiguous chunks of near-equal size.
fn split(keep: &[usize], n: usize) -> Vec<Vec<usize>> {
    let n = n.min(keep.len()).max(1);
    (0..n)
        .map(|i| keep[i * keep.len() / n..(i + 1) * keep.len() / n].to_vec())
        .filter(|c| !c.is_empty())
        .collect()
}

/// "faults #2–#3 (rpc_down@12s, reorg@30s)", short for progress lines.
fn describe(faults: &[Fault], idx: &[usize]) -> String {
    let names: Vec<String> = idx
        .iter()
        .take(4)
        .map(|&i| format!("#{i} {}@{}s", faults[i].kind(), faults[i].at_s()))
        .collect();
    let more = idx.len().saturating_sub(4);
    format!(
        "{} fault{} ({}{})",
        idx.len(),
        if idx.len() == 1 { "" } else { "s" },
        names.join(", "),
        if more > 0 {
            format!(", +{more}")
        } else {
            String::new()
        }
    )
}

/// The size of a candidate, for progress lines and the summary.
pub fn size_line(s: &Scenario) -> String {
    format!(
        "{} faults, {} ops, {} clients, {} engines, phase {} s",
        s.faults.len(),
        s.workload.operations,
        s.workload.clients,
        s.topology.engines,
        s.durations.fault_phase_s
    )
}

/// Smaller values than `x` worth a trial, smallest first: `min`, half, three quarters, `x - 1`.
fn smaller_u64(x: u64, min: u64) -> Vec<u64> {
    let mut v: Vec<u64> = [min, x / 2, x * 3 / 4, x.saturating_sub(1)]
        .into_iter()
        .filter(|&y| y >= min && y < x)
        .collect();
    v.dedup();
    v
}

/// Smaller spans than `x` seconds: `min`, half, three quarters (whole milliseconds).
fn smaller_f64(x: f64, min: f64) -> Vec<f64> {
    let ms = |y: f64| (y * 1000.0).round() / 1000.0;
    let mut v: Vec<f64> = [min, x / 2.0, x * 0.75]
        .into_iter()
        .map(ms)
        .filter(|&y| y >= min && y < x)
        .collect();
    v.dedup();
    v
}

/// A whole-number parameter: (name, read, write, smallest value).
type Count = (
    &'static str,
    fn(&Scenario) -> u32,
    fn(&mut Scenario, u32),
    u32,
);

/// Scenario-level parameters, in the order tried: fewer operations first (they make every later
/// trial faster), then the submit window and the fault phase (indices 1 and 2), then the rest.
const COUNTS: [Count; 6] = [
    (
        "operations",
        |s| s.workload.operations,
        |s, v| s.workload.operations = v,
        1,
    ),
    (
        "clients",
        |s| s.workload.clients,
        |s, v| s.workload.clients = v,
        1,
    ),
    (
        "engines",
        |s| s.topology.engines,
        |s, v| s.topology.engines = v,
        1,
    ),
    (
        "tokens",
        |s| s.workload.tokens,
        |s, v| s.workload.tokens = v,
        1,
    ),
    (
        "rpc endpoints",
        |s| s.topology.rpc_endpoints,
        |s, v| s.topology.rpc_endpoints = v,
        1,
    ),
    (
        "db replicas",
        |s| s.topology.db_replicas,
        |s, v| s.topology.db_replicas = v,
        0,
    ),
];

/// The scenario-level parameters; then two per fault (its duration, its magnitude).
const SCENARIO_PARAMS: usize = COUNTS.len() + 2;

fn param_count(s: &Scenario) -> usize {
    SCENARIO_PARAMS + 2 * s.faults.len()
}

/// Parameter `p` of `s` set to each of its smaller values: (what changed, candidate).
/// The liveness bound is never shortened: a shorter one makes slow work a durability
/// violation, a new failure rather than the original one.
fn candidates(s: &Scenario, p: usize) -> Vec<(String, Scenario)> {
    let with = |f: &dyn Fn(&mut Scenario)| {
        let mut c = s.clone();
        f(&mut c);
        c
    };
    let (w, d) = (&s.workload, &s.durations);
    match p {
        1 => smaller_f64(w.submit_window_s, 1.0)
            .into_iter()
            .map(|v| {
                let what = format!("submit window {} s → {v} s", w.submit_window_s);
                (what, with(&|c| c.workload.submit_window_s = v))
            })
            .collect(),
        2 => {
            let last = s.faults.iter().map(Fault::at_s).fold(0.0, f64::max);
            let floor = (last + 1.0).max(w.submit_window_s);
            smaller_f64(d.fault_phase_s, floor)
                .into_iter()
                .map(|v| {
                    let what = format!("fault phase {} s → {v} s", d.fault_phase_s);
                    (what, with(&|c| c.durations.fault_phase_s = v))
                })
                .collect()
        }
        _ if p < SCENARIO_PARAMS => {
            let (name, get, set, min) = COUNTS[if p == 0 { 0 } else { p - 2 }];
            let now = get(s);
            smaller_u64(now.into(), min.into())
                .into_iter()
                .map(|v| {
                    let v = v as u32;
                    (format!("{name} {now} → {v}"), with(&|c| set(c, v)))
                })
                .collect()
        }
        _ => {
            let i = (p - SCENARIO_PARAMS) / 2;
            let f = &s.faults[i];
            let label = format!("#{i} {}@{}s", f.kind(), f.at_s());
            let variants = if (p - SCENARIO_PARAMS).is_multiple_of(2) {
                shorter(f, d.fault_phase_s)
            } else {
                milder(f)
            };
            variants
                .into_iter()
                .map(|(what, g)| {
                    (
                        format!("{label} {what}"),
                        with(&|c| c.faults[i] = g.clone()),
                    )
                })
                .collect()
        }
    }
}

/// The fault's duration, when it has one (`None`: until the heal instant).
fn span_mut(f: &mut Fault) -> Option<&mut Option<f64>> {
    match f {
        Fault::EngineCrash {
            restart_after_s: d, ..
        }
        | Fault::DbCrash {
            restart_after_s: d, ..
        }
        | Fault::DbFailover {
            rejoin_after_s: d, ..
        }
        | Fault::EnginePause { for_s: d, .. }
        | Fault::Partition { for_s: d, .. }
        | Fault::ClockSkew { for_s: d, .. }
        | Fault::DbConnReset { for_s: d, .. }
        | Fault::DbLostAck { for_s: d, .. }
        | Fault::DbLatency { for_s: d, .. }
        | Fault::RpcDown { for_s: d, .. }
        | Fault::RpcError { for_s: d, .. }
        | Fault::RpcTimeout { for_s: d, .. }
        | Fault::RpcAmbiguousSend { for_s: d, .. }
        | Fault::RpcStaleFork { for_s: d, .. }
        | Fault::RpcLag { for_s: d, .. }
        | Fault::SignerDrain { for_s: d, .. }
        | Fault::BalanceCap { for_s: d, .. } => Some(d),
        Fault::DbStaleSession { .. }
        | Fault::Reorg { .. }
        | Fault::MempoolDrop { .. }
        | Fault::GasSpike { .. }
        | Fault::ExternalNonce { .. }
        | Fault::DbSwitchover { .. }
        | Fault::RegionFailover { .. }
        | Fault::OperatorRequeue { .. } => None,
    }
}

/// The fault's magnitude, when it has one: (name, value, smallest value).
fn magnitude_mut(f: &mut Fault) -> Option<(&'static str, &mut u64, u64)> {
    match f {
        Fault::Reorg { depth, .. } => Some(("depth", depth, 1)),
        Fault::RpcLag { blocks, .. } => Some(("lag blocks", blocks, 1)),
        Fault::DbLatency { extra_ms, .. } => Some(("extra ms", extra_ms, 1)),
        Fault::GasSpike { base_fee_gwei, .. } => Some(("base fee gwei", base_fee_gwei, 1)),
        Fault::EngineCrash { .. }
        | Fault::EnginePause { .. }
        | Fault::Partition { .. }
        | Fault::ClockSkew { .. }
        | Fault::DbCrash { .. }
        | Fault::DbFailover { .. }
        | Fault::DbConnReset { .. }
        | Fault::DbLostAck { .. }
        | Fault::DbStaleSession { .. }
        | Fault::RpcDown { .. }
        | Fault::RpcError { .. }
        | Fault::RpcTimeout { .. }
        | Fault::RpcAmbiguousSend { .. }
        | Fault::RpcStaleFork { .. }
        | Fault::MempoolDrop { .. }
        | Fault::ExternalNonce { .. }
        | Fault::SignerDrain { .. }
        | Fault::BalanceCap { .. }
        | Fault::DbSwitchover { .. }
        | Fault::RegionFailover { .. }
        | Fault::OperatorRequeue { .. } => None,
    }
}

/// The fault with a shorter duration (for "until the heal instant", at most half the time left).
fn shorter(f: &Fault, phase: f64) -> Vec<(String, Fault)> {
    let Some(now) = span_mut(&mut f.clone()).map(|d| d.unwrap_or(phase - f.at_s())) else {
        return Vec::new();
    };
    smaller_f64(now, 0.1)
        .into_iter()
        .map(|v| {
            let mut g = f.clone();
            *span_mut(&mut g).expect("has a span") = Some(v);
            (format!("lasting {now} s → {v} s"), g)
        })
        .collect()
}

/// The fault at a smaller magnitude: reorg depth, lag, latency, gas spike, clock skew.
fn milder(f: &Fault) -> Vec<(String, Fault)> {
    if let Fault::ClockSkew { skew_ms: now, .. } = f {
        return smaller_u64(now.unsigned_abs(), 0)
            .into_iter()
            .map(|v| {
                let v = v as i64 * now.signum();
                let mut g = f.clone();
                if let Fault::ClockSkew { skew_ms, .. } = &mut g {
                    *skew_ms = v;
                }
                (format!("skew {now} ms → {v} ms"), g)
            })
            .collect();
    }
    let Some((name, now, min)) = magnitude_mut(&mut f.clone()).map(|(n, x, m)| (n, *x, m)) else {
        return Vec::new();
    };
    smaller_u64(now, min)
        .into_iter()
        .map(|v| {
            let mut g = f.clone();
            *magnitude_mut(&mut g).expect("has a magnitude").1 = v;
            (format!("{name} {now} → {v}"), g)
        })
        .collect()
}

#[cfg(test)]
mod tests;
