//! The history of client operations, in the style of a Jepsen history: each request is an
//! `invoke` followed by `ok` (accepted), `fail` (refused) or `unknown` (no answer in time), and,
//! once accepted, the terminal state the client later observed (`observe`). Timestamps are
//! simulated milliseconds since the start of the run.

use serde::Serialize;
use serde_json::Value;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Unknown,
    /// The client saw the workflow reach a terminal state.
    Observe,
}

#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub t_ms: u64,
    pub client: String,
    /// The planned operation's index (stable across seeds' re-runs).
    pub op: u64,
    /// `issuance`, `mint`, `transfer`, `register_identity`, `blocked_transfer`.
    pub kind: String,
    pub key: String,
    #[serde(rename = "type")]
    pub typ: OpType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<i64>,
    /// The status the engine answered or the client observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// Shared, append-only.
#[derive(Clone, Default)]
pub struct History {
    ops: Arc<Mutex<Vec<Op>>>,
}

impl History {
    pub fn push(&self, op: Op) {
        self.ops.lock().expect("history lock").push(op);
    }
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock").clone()
    }
    /// [`summarize`] of the history so far, without copying it (the driver asks on every poll).
    pub fn summary(&self) -> std::collections::BTreeMap<u64, OpSummary> {
        summarize(&self.ops.lock().expect("history lock"))
    }
}

/// What the history says about one planned operation.
#[derive(Clone, Debug, Default)]
pub struct OpSummary {
    pub kind: String,
    pub key: String,
    pub accepted_at: Option<u64>,
    pub workflow_ids: Vec<i64>,
    /// Workflow ids the client found gone (unknown, or naming another key) and re-submitted.
    pub lost_ids: Vec<i64>,
    pub observed: Option<(u64, String, Value)>,
    /// The client got a definitive refusal (4xx) or gave up before submitting.
    pub refused: bool,
}

/// Fold the history per operation index.
pub fn summarize(ops: &[Op]) -> std::collections::BTreeMap<u64, OpSummary> {
    let mut out = std::collections::BTreeMap::<u64, OpSummary>::new();
    for o in ops {
        let s = out.entry(o.op).or_default();
        s.kind.clone_from(&o.kind);
        s.key.clone_from(&o.key);
        match o.typ {
            OpType::Ok => {
                s.accepted_at.get_or_insert(o.t_ms);
                if let Some(id) = o.workflow_id {
                    if !s.workflow_ids.contains(&id) {
                        s.workflow_ids.push(id);
                    }
                }
            }
            OpType::Fail => s.refused = true,
            OpType::Unknown => {
                if let Some(id) = o.detail.get("lost").and_then(Value::as_i64) {
                    s.lost_ids.push(id);
                }
            }
            OpType::Observe if s.observed.is_none() => {
                s.observed = Some((
                    o.t_ms,
                    o.status.clone().unwrap_or_default(),
                    o.detail.clone(),
                ));
            }
            _ => {}
        }
    }
    out
}
