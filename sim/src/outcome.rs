//! What one seed produced, on either backend: the document each child process writes and the
//! runner merges into `results.json`.

use crate::scenario::Fault;
use crate::verdict::Verdict;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// What one seed produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub seed: u64,
    pub passed: bool,
    pub verdicts: Vec<Verdict>,
    pub trace_hash: String,
    pub trace_events: usize,
    pub schedule: Vec<Fault>,
    /// Simulated ms from the heal instant until the last accepted request finished (`None`: not
    /// every request finished).
    pub recovery_ms: Option<u64>,
    /// Commits lost by database failovers (async replication), as measured.
    pub data_loss: Vec<Value>,
    pub simulated_ms: u64,
    pub stats: BTreeMap<String, u64>,
    /// Per planned operation: kind, planned, accepted and terminal times (for `isolation`).
    pub ops: Vec<crate::timing::OpTiming>,
    /// The schedule's fault windows as applied (for `isolation`).
    pub fault_windows: Vec<crate::timing::FaultWindow>,
    /// `real` for the real backend (absent: the simulation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The real backend's provider (`docker` or `local`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Faults of the schedule with no counterpart on this backend, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub not_applicable: Vec<Value>,
    /// A failed real run: each engine's last warnings, errors and panics (its log is not kept).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub engine_logs: BTreeMap<String, Vec<String>>,
}
