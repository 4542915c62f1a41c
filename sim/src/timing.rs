//! When things happened in a run, in simulated milliseconds: each planned operation's times and
//! each scheduled fault's window. Shared by the checkers (recovery time), isolation and the
//! results document; depends only on the history and the scenario.

use crate::history::{summarize, Op};
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

/// The per-operation times of a run from its plan (`(index, kind, planned ms)`) and history.
pub fn op_timings(planned: &[(u64, String, u64)], ops: &[Op]) -> Vec<OpTiming> {
    let sums = summarize(ops);
    planned
        .iter()
        .map(|(op, kind, at)| {
            let s = sums.get(op);
            OpTiming {
                op: *op,
                kind: kind.clone(),
                planned_ms: *at,
                accepted_ms: s.and_then(|s| s.accepted_at),
                done_ms: s.and_then(|s| s.observed.as_ref().map(|o| o.0)),
                status: s.and_then(|s| s.observed.as_ref().map(|o| o.1.clone())),
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
