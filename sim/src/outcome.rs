//! What one seed produced, on either backend: the document each child process writes
//! ([`FinishedRun`]), and each run's entry in `results.json` ([`RunRecord`], in
//! [`crate::report::ResultsDoc`]). The schema is documented in `reports/README.md`; these types
//! are it, in both directions (the runner writes them, `report` reads them back).

use crate::isolation::IsolationReport;
use crate::scenario::{Fault, FaultKind};
use crate::timing::{FaultWindow, OpTiming};
use crate::verdict::Verdict;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What one seed produced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    /// What each database failover lost, as measured.
    pub data_loss: Vec<DataLoss>,
    pub simulated_ms: u64,
    pub stats: BTreeMap<String, u64>,
    /// Per planned operation: kind, planned, accepted and terminal times (for `isolation`).
    /// (Absent from v1 results.)
    #[serde(default)]
    pub ops: Vec<OpTiming>,
    /// The schedule's fault windows as applied (for `isolation`). (Absent from v1 results.)
    #[serde(default)]
    pub fault_windows: Vec<FaultWindow>,
    /// `real` for the real backend (absent: the simulation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The real backend's provider (`docker` or `local`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Faults of the schedule with no counterpart on this backend, and invariants it cannot
    /// judge, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub not_applicable: Vec<NotApplicable>,
    /// A failed real run: each engine's last warnings, errors and panics (its log is not kept).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub engine_logs: BTreeMap<String, Vec<String>>,
    /// The engine's coverage probes and fault points in this run (the simulation only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub coverage: Option<Coverage>,
    /// A swarm scenario's draw for this seed (`crate::swarm`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub swarm: Option<crate::swarm::SwarmDraw>,
}

/// What one simulated run reached of the engine's declared probes (`dalp_engine::probe`), and
/// which fault points the seed enabled. Outside the trace hash, but a function of the seed too.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    /// Times each probe and fault point was reached (absent: never).
    pub probes: BTreeMap<String, u64>,
    /// The fault points this seed enabled, with the probability each fires when reached.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub fault_points: BTreeMap<String, f64>,
    /// How often each enabled fault point fired.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub fired: BTreeMap<String, u64>,
}

impl RunResult {
    /// The invariants that did not hold, in verdict order.
    pub fn violated(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| !v.held)
    }
}

/// A run that finished with a result: what its child process wrote (the result, measurements of
/// the process outside the deterministic result, the trace files), and what the runner attaches
/// for scenarios judging `isolation` (the baseline and the isolation numbers).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinishedRun {
    #[serde(flatten)]
    pub result: RunResult,
    /// The child process's wall time (not deterministic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    /// The child process's peak resident set size (not deterministic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
    /// The JSON-lines trace and the Chrome timeline, when written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace_files: Vec<String>,
    /// The seed's fault-free run (scenarios judging `isolation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSummary>,
    /// The isolation invariant's thresholds and per-window numbers (scenarios judging it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationReport>,
}

impl FinishedRun {
    /// A child's result before the runner has seen it.
    pub fn new(result: RunResult) -> Self {
        FinishedRun {
            result,
            wall_ms: None,
            peak_rss_kib: None,
            trace_files: Vec::new(),
            baseline: None,
            isolation: None,
        }
    }
}

/// What `results.json` keeps of the baseline run under the faulty run (`baseline`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum BaselineSummary {
    Ran {
        /// Its own invariants held.
        passed: bool,
        trace_hash: String,
        trace_events: u64,
        simulated_ms: u64,
        recovery_ms: Option<u64>,
        /// Its violated invariants.
        violated: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wall_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        trace_files: Vec<String>,
    },
    /// The baseline's process gave no result.
    Crashed { passed: bool, crashed: String },
}

impl BaselineSummary {
    pub fn passed(&self) -> bool {
        match self {
            BaselineSummary::Ran { passed, .. } | BaselineSummary::Crashed { passed, .. } => {
                *passed
            }
        }
    }

    pub fn trace_hash(&self) -> Option<&str> {
        match self {
            BaselineSummary::Ran { trace_hash, .. } => Some(trace_hash),
            BaselineSummary::Crashed { .. } => None,
        }
    }
}

/// A run whose process gave no result: why, with the child's stderr.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Crash {
    pub scenario: String,
    pub seed: u64,
    /// Always false.
    pub passed: bool,
    pub crashed: String,
}

/// A run's result, or the crash that stands for it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RunOutput {
    Finished(Box<FinishedRun>),
    Crashed(Crash),
}

impl<'de> Deserialize<'de> for RunOutput {
    /// The two shapes are told apart by `crashed` (a `null` one is no crash). Results are JSON,
    /// so the entry is buffered as a JSON object to look before it is read as either.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = serde_json::Map::<String, Value>::deserialize(d)?;
        let crashed = m.get("crashed").is_some_and(|c| !c.is_null());
        let v = Value::Object(m);
        if crashed {
            Crash::deserialize(v).map(RunOutput::Crashed)
        } else {
            FinishedRun::deserialize(v).map(|f| RunOutput::Finished(Box::new(f)))
        }
        .map_err(D::Error::custom)
    }
}

impl RunOutput {
    pub fn scenario(&self) -> &str {
        match self {
            RunOutput::Finished(f) => &f.result.scenario,
            RunOutput::Crashed(c) => &c.scenario,
        }
    }

    pub fn seed(&self) -> u64 {
        match self {
            RunOutput::Finished(f) => f.result.seed,
            RunOutput::Crashed(c) => c.seed,
        }
    }

    pub fn finished(&self) -> Option<&FinishedRun> {
        match self {
            RunOutput::Finished(f) => Some(f),
            RunOutput::Crashed(_) => None,
        }
    }

    /// Why the run gave no result, if it crashed.
    pub fn crashed(&self) -> Option<&str> {
        match self {
            RunOutput::Finished(_) => None,
            RunOutput::Crashed(c) => Some(&c.crashed),
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            RunOutput::Crashed(_) => Outcome::Crash,
            RunOutput::Finished(f) if f.result.passed => Outcome::Pass,
            RunOutput::Finished(_) => Outcome::Fail,
        }
    }

    /// The largest data-loss window (simulated ms) over the run's database failovers; 0 if none.
    pub fn data_loss_window_ms(&self) -> u64 {
        self.losses().map(|l| l.window_ms).max().unwrap_or(0)
    }

    /// The figures of each data-loss record (none for a crash).
    pub fn losses(&self) -> impl Iterator<Item = &DataLoss> + '_ {
        self.finished()
            .into_iter()
            .flat_map(|f| f.result.data_loss.iter())
    }
}

/// What one database failover lost. The simulation counts the commits the promoted replica
/// lacked (and which of them had been acknowledged to the engine); the real backend measures the
/// WAL bytes it had not replayed. Fields a backend does not measure are absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DataLoss {
    /// `sync` or `async`.
    pub replication: String,
    /// From the first lost commit (simulation) or the crash (real) to the promotion.
    pub window_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_commits: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_acknowledged: Option<u64>,
    /// The lost commits' requests (simulation).
    #[serde(default)]
    pub ops: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_wal_bytes: Option<u64>,
    /// What `lost_wal_bytes` means (real backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<String>,
}

impl DataLoss {
    /// Under asynchronous replication, acknowledged work may be gone: the engine must resubmit
    /// (by idempotency key), and durability does not blame the loss itself.
    pub fn lost_acknowledged_async(&self) -> bool {
        self.replication == "async"
            && (self.lost_acknowledged.unwrap_or(0) > 0 || self.lost_wal_bytes.unwrap_or(0) > 0)
    }
}

/// What this backend could not do of what the scenario asked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum NotApplicable {
    /// A fault of the schedule with no counterpart here (not applied, not healed).
    Fault {
        kind: FaultKind,
        at_s: f64,
        reason: String,
    },
    /// An invariant this backend cannot judge.
    Invariant { invariant: String, reason: String },
    /// A scenario setting this backend has no counterpart for (`fault_points`).
    Setting { setting: String, reason: String },
}

/// `pass`, `fail` (an invariant was violated) or `crash` (the run produced no result).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Pass,
    Fail,
    Crash,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Crash => "crash",
        }
    }
}

/// One run in `results.json`: its result (or crash), where it came from, how to replay it, the
/// catalog ids it covers, and what is derived from it (`outcome`, `data_loss_window_ms`; see
/// [`RunRecord::new`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    #[serde(flatten)]
    pub output: RunOutput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repro: Option<String>,
    /// The scenario's catalog ids (`[]`: a reference scenario; absent from v1 results).
    #[serde(default)]
    pub covers: Vec<String>,
    /// Derived from `output` (absent from v1 results).
    #[serde(default)]
    pub outcome: Outcome,
    /// Derived from `output` (absent from v1 results).
    #[serde(default)]
    pub data_loss_window_ms: u64,
}

impl RunRecord {
    pub fn new(
        output: RunOutput,
        scenario_file: Option<String>,
        repro: Option<String>,
        covers: Vec<String>,
    ) -> Self {
        let mut r = RunRecord {
            output,
            scenario_file,
            repro,
            covers,
            outcome: Outcome::Pass,
            data_loss_window_ms: 0,
        };
        r.derive();
        r
    }

    /// Recompute the derived fields (`outcome`, `data_loss_window_ms`) from the output: what a
    /// v1 result lacks, and what must agree with a result read from a file.
    pub fn derive(&mut self) {
        self.outcome = self.output.outcome();
        self.data_loss_window_ms = self.output.data_loss_window_ms();
    }

    /// The key results are sorted and de-duplicated by.
    pub fn key(&self) -> (String, u64) {
        (self.output.scenario().to_string(), self.output.seed())
    }
}
