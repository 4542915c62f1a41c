//! When things happened in a run, in simulated milliseconds: each planned operation's times and
//! each scheduled fault's window. Shared by the checkers (recovery time), isolation and the
//! results document; depends only on the history and the scenario.

use crate::history::{summarize, Op, OpType};
use crate::scenario::{Fault, FaultKind};
use serde::{Deserialize, Serialize};

/// One planned operation's times in a run (simulated ms); in `results.json` as `ops`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct OpTiming {
    pub op: u64,
    pub kind: String,
    /// When the plan submits it (the same in every run of the seed).
    pub planned_ms: u64,
    /// The first acceptance by an engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_ms: Option<u64>,
    /// When the client saw it reach a terminal state, and which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The plan's token index (an operation waits for its token's issuance).
    #[serde(default)]
    pub token: u32,
    /// Each claim of its workflow: (run ms, engine). Simulation only (from the database's log).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claimed_by: Vec<(u64, String)>,
    /// Each submission attempt that got no acceptance: (run ms, engine index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<(u64, usize)>,
}

impl OpTiming {
    /// Whether this operation waited on engine `engine` failing at `start_ms` (and down until
    /// `end_ms`): the engine last claimed its workflow before the failure and it had not finished
    /// by then (its lease had to expire before another engine could take it over), or one of its
    /// submissions to that engine went unanswered while it was down.
    pub fn waited_on_engine(&self, engine: &str, start_ms: u64, end_ms: u64) -> bool {
        if self.done_ms.is_some_and(|d| d < start_ms) {
            return false;
        }
        let held = self
            .claimed_by
            .iter()
            .rev()
            .find(|(t, _)| *t <= start_ms)
            .is_some_and(|(_, n)| n == engine);
        let index = engine
            .strip_prefix("engine-")
            .and_then(|i| i.parse::<usize>().ok());
        let unanswered = self
            .unanswered
            .iter()
            .any(|(t, e)| Some(*e) == index && start_ms <= *t && *t < end_ms);
        held || unanswered
    }
}

/// The window of one scheduled fault; in `results.json` as `fault_windows`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct FaultWindow {
    /// Index into the run's `schedule`.
    pub fault: usize,
    pub kind: FaultKind,
    /// The node, endpoint or group it hit (`-` for the chain or the database service).
    pub target: String,
    pub start_ms: u64,
    /// When it was lifted: its duration's end or the heal instant, whichever comes first
    /// (`start_ms` for instantaneous faults).
    pub end_ms: u64,
}

/// One planned operation as the timings need it: (index, kind, token, planned ms).
pub type PlannedTiming = (u64, String, u32, u64);

/// The per-operation times of a run from its plan and history, with `claims` (each committed
/// claim: run ms, engine, workflow ids; empty where unknown) for attribution.
pub fn op_timings(
    planned: &[PlannedTiming],
    ops: &[Op],
    claims: &[(u64, String, Vec<i64>)],
) -> Vec<OpTiming> {
    let sums = summarize(ops);
    let mut unanswered: std::collections::BTreeMap<u64, Vec<(u64, usize)>> = Default::default();
    let mut last_invoke: std::collections::BTreeMap<u64, (u64, usize)> = Default::default();
    for o in ops {
        match o.typ {
            OpType::Invoke => {
                if let Some(e) = o.detail.get("engine").and_then(|e| e.as_u64()) {
                    last_invoke.insert(o.op, (o.t_ms, e as usize));
                }
            }
            OpType::Unknown if o.workflow_id.is_none() => {
                if let Some(at) = last_invoke.remove(&o.op) {
                    unanswered.entry(o.op).or_default().push(at);
                }
            }
            _ => {}
        }
    }
    planned
        .iter()
        .map(|(op, kind, token, at)| {
            let s = sums.get(op);
            let ids: &[i64] = s.map_or(&[], |s| &s.workflow_ids);
            let claimed_by = claims
                .iter()
                .filter(|(_, _, c)| c.iter().any(|id| ids.contains(id)))
                .map(|(t, n, _)| (*t, n.clone()))
                .collect();
            OpTiming {
                op: *op,
                kind: kind.clone(),
                planned_ms: *at,
                accepted_ms: s.and_then(|s| s.accepted_at),
                done_ms: s.and_then(|s| s.observed.as_ref().map(|o| o.0)),
                status: s.and_then(|s| s.observed.as_ref().map(|o| o.1.clone())),
                token: *token,
                claimed_by,
                unanswered: unanswered.remove(op).unwrap_or_default(),
            }
        })
        .collect()
}

pub(crate) fn fault_target(f: &Fault) -> String {
    f.node().unwrap_or("-").to_string()
}

pub(crate) fn ms(s: f64) -> u64 {
    (s * 1000.0).round().max(0.0) as u64
}

/// The windows of a schedule, as the injector applies them: each fault from `at_s` until its
/// duration ends or the heal instant `heal_ms`, whichever comes first.
pub fn fault_windows(schedule: &[Fault], heal_ms: u64) -> Vec<FaultWindow> {
    schedule
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let start = ms(f.at_s()).min(heal_ms);
            let end = match f.duration_s() {
                Some(d) => ms(f.at_s() + d).min(heal_ms),
                None => heal_ms,
            };
            FaultWindow {
                fault: i,
                kind: f.kind(),
                target: fault_target(f),
                start_ms: start,
                end_ms: end.max(start),
            }
        })
        .collect()
}
