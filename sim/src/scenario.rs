//! Scenario files: the failure-mode catalog as data (TOML under `scenarios/`).
//!
//! Parsing is strict: an unknown field, fault kind, node or invariant, or an impossible topology,
//! is an error that names the file, the field and the reason. A parsed [`Scenario`] is fully
//! validated, so the runner never discovers a bad scenario halfway through a run.
//!
//! Time in scenarios is simulated seconds from the start of the run. A run has three phases: the
//! fault phase `[0, fault_phase_s)` (workload submitted, faults injected), the heal instant
//! `fault_phase_s` (every fault still active is lifted, every stopped node restarted), and the
//! liveness phase (at most `liveness_bound_s`) in which every accepted request must finish.
//! On the real backend the heal comes earlier once the fault phase is quiet (every fault has run
//! its course and every operation is settled): the rest would be idle wall time.

use crate::rng::SimRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The catalog ids of DESIGN.md §4.
pub const CATALOG: &[&str] = &[
    "FM-RPC-NODE-DOWN",
    "FM-RPC-ALL-DOWN",
    "FM-RPC-TIMEOUT",
    "FM-REORG",
    "FM-GAS-SPIKE",
    "FM-NONCE-CONFLICT",
    "FM-MEMPOOL-DROP",
    "FM-ENGINE-CRASH",
    "FM-STEP-TRANSIENT",
    "FM-STEP-EXHAUSTED",
    "FM-DB-CONN-LOST",
    "FM-DB-FAILOVER",
    "FM-DB-READ-ONLY",
    "FM-PARTITION",
    "FM-CLOCK-SKEW",
    "FM-INDEXER-CRASH",
    "FM-FAIL-CLOSED",
    "FM-SIGNER-FUNDS",
    "FM-REGION-FAILOVER",
];

/// The invariant checkers a scenario may ask for (DESIGN.md §5).
pub const INVARIANTS: &[&str] = &[
    "durability",
    "exactly_once",
    "nonce_safety",
    "journal_monotonicity",
    "fencing",
    "reconciliation",
    "fail_closed",
    "valid_work",
    "isolation",
    "visibility",
    "determinism",
    "dead_letters",
    "effects_once",
    "finality",
    "failover",
];

/// Invariants judged in every run, whether or not the scenario lists them: promises no fault
/// or workload makes inapplicable.
pub const ALWAYS_CHECKED: &[&str] = &["dead_letters", "effects_once", "finality", "failover"];

/// A scenario error: which file, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: field `{field}`: {reason}")]
pub struct ScenarioError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Catalog ids this scenario exercises (may be empty only for reference scenarios).
    #[serde(default)]
    pub covers: Vec<String>,
    pub topology: Topology,
    pub workload: Workload,
    pub durations: Durations,
    /// Invariants checked after the run; default: all that apply to every run.
    #[serde(default = "default_invariants")]
    pub invariants: Vec<String>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub random: Option<RandomFaults>,
    /// Thresholds of the `isolation` invariant (`[isolation]`; defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationCfg>,
    /// Promises specific to this scenario, checked with the invariants.
    #[serde(default)]
    pub expect: Expect,
    /// The engine's fault points (BUGGIFY), armed per seed (`[fault_points]`; absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_points: Option<FaultPoints>,
    /// The engine's knobs (`[engine]`; absent ones keep the engine's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKnobs>,
    /// Swarm mode (`[swarm]`): each seed draws its own topology, knobs, workload and faults
    /// (`crate::swarm`); `for_seed` gives the concrete scenario of a seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<crate::swarm::Swarm>,
    /// The one seed this scenario runs (a shrunk failure kept under `regressions/`: its other
    /// seeds are not the failure); `run` ignores suite seeds and `--seeds` for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// `[engine]`: the engine settings a scenario may change; both backends write them into the
/// engines' configuration, and the checkers judge by them (attempts before a dead letter,
/// confirmation depth).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineKnobs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Blocks on top of a transaction's block before its step completes (default: the
    /// harness's choice for the chain's finality depth, `engine_conf::confirmations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmations: Option<u64>,
}

/// `[fault_points]`: each of the engine's fault points (`dalp_engine::probe`) is enabled for a
/// seed with `enable_probability`, drawn from the seed; an enabled one fires when reached with a
/// probability also drawn from the seed (1–25 %), and then delays, fails transiently or crashes
/// the engine node (restarted as a supervisor would). The simulation only; the real backend
/// lists them as not applicable.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultPoints {
    /// FoundationDB's BUGGIFY enables each site in a quarter of the runs. 0: only `always`.
    #[serde(default = "default_enable_probability")]
    pub enable_probability: f64,
    /// Fault points enabled on every seed, as given (`[[fault_points.always]]`), whatever the
    /// seed drew for them: a window the scenario is about is then reached on every seed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub always: Vec<AlwaysFaultPoint>,
}

/// One fault point enabled on every seed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlwaysFaultPoint {
    /// A fault point declared in `dalp_engine::probe::PROBES` (`fp.*`).
    pub name: String,
    /// How often it fires when reached (default 1).
    #[serde(default = "one")]
    pub fire_probability: f64,
    /// What it does when it fires: `any` (default: drawn each time, mostly delays), `delay`,
    /// `fail` (the site's transient error) or `crash` (the engine node, restarted).
    #[serde(default)]
    pub firing: Firing,
    /// It fires at most this many times in a run (absent: no limit). Keeps a fault point that
    /// fails every time from spending every retry of the step it sits in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fires: Option<u64>,
}

/// What an always-enabled fault point does when it fires (the engine's own type).
pub use dalp_engine::probe::Firing;

fn default_enable_probability() -> f64 {
    0.25
}

/// Scenario-specific promises (checked as part of `durability`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// At most this many workflows may end in the dead-letter queue. Scenarios whose faults
    /// are all transient promise 0: "transient failures retry, permanent ones land in the DLQ".
    #[serde(default)]
    pub max_dead_letters: Option<u64>,
    /// The deployment pattern whose RTO/RPO (DESIGN.md §4) are the targets not given below
    /// (default cloud-native). Read by the audit report, never by the checkers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<crate::promise::Deployment>,
    /// Recovery-time target in seconds (the report's promise; default: the deployment's RTO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recovery_s: Option<f64>,
    /// Data-loss window target in seconds (default: the deployment's RPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_loss_s: Option<f64>,
}

fn default_invariants() -> Vec<String> {
    [
        "durability",
        "exactly_once",
        "nonce_safety",
        "journal_monotonicity",
        "fencing",
        "reconciliation",
        "fail_closed",
        "valid_work",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Replication {
    /// A commit is acknowledged only once every replica has it.
    Sync,
    /// A commit is acknowledged at once and shipped after `replication_lag_ms`.
    Async,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub engines: u32,
    #[serde(default)]
    pub db_replicas: u32,
    #[serde(default = "default_replication")]
    pub replication: Replication,
    /// Delay before an async replica receives a commit.
    #[serde(default = "default_replication_lag")]
    pub replication_lag_ms: u64,
    pub rpc_endpoints: u32,
    #[serde(default = "default_block_time")]
    pub block_time_ms: u64,
    /// Blocks below the head before a block is final (the chain's and the engine's).
    #[serde(default = "default_finality")]
    pub finality_depth: u64,
    /// One-way network latency range on every link, in milliseconds.
    #[serde(default = "default_latency")]
    pub net_latency_ms: [u64; 2],
    /// Engine nodes that run the chain indexer (default: the first).
    #[serde(default = "default_indexers")]
    pub indexers: Vec<String>,
    /// Engines of the standby region: not running until a `region_failover` starts them.
    #[serde(default)]
    pub standby_engines: Vec<String>,
    /// Whose transaction-pool rules the chain follows: `anvil` (default: a transaction that
    /// became unpayable at inclusion, its fee cap below the base fee or its sender short of
    /// funds, is dropped) or `geth` (it stays pending until it can be included or is replaced,
    /// as in geth's pool; replacements need a 10 % bump). Simulation only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mempool: Mempool,
}

/// A chain's transaction-pool rules (`topology.mempool`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mempool {
    #[default]
    Anvil,
    Geth,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_replication() -> Replication {
    Replication::Sync
}
fn default_replication_lag() -> u64 {
    200
}
fn default_block_time() -> u64 {
    2000
}
fn default_finality() -> u64 {
    2
}
fn default_latency() -> [u64; 2] {
    [1, 5]
}
fn default_indexers() -> Vec<String> {
    vec!["engine-0".into()]
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Client nodes submitting requests.
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// Issuances submitted first (each creates a token the other operations use).
    pub tokens: u32,
    /// Operations submitted after the issuances, spread over `submit_window_s`.
    pub operations: u32,
    /// Submissions are spread over `[0, submit_window_s)`.
    pub submit_window_s: f64,
    /// Relative weights of the operation kinds.
    #[serde(default)]
    pub mix: Mix,
    /// How long a client waits for an answer before recording the outcome as unknown and
    /// retrying with the same idempotency key.
    #[serde(default = "default_client_timeout")]
    pub client_timeout_ms: u64,
    /// The per-holder balance cap every issuance asks for (0, the default: none). At least
    /// [`MIN_ISSUANCE_CAP`] when set: the initial supply is minted to the issuer after the cap
    /// is configured, and the planned mints and transfers must stay valid under it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_balance: u64,
}

/// The smallest `workload.max_balance` a scenario may ask for: twice the initial supply.
pub const MIN_ISSUANCE_CAP: u64 = 2 * crate::plan::INITIAL_SUPPLY;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_clients() -> u32 {
    2
}
fn default_client_timeout() -> u64 {
    3000
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default)]
    pub mint: f64,
    #[serde(default)]
    pub transfer: f64,
    #[serde(default)]
    pub register_identity: f64,
    /// Transfers to an account without identity: must fail closed.
    #[serde(default)]
    pub blocked_transfer: f64,
    /// Mints to an account whose identity is registered only later (by a planned
    /// register_identity 5 s after): dead-lettered at first, completed after an operator requeue.
    #[serde(default)]
    pub unverified_mint: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            mint: 3.0,
            transfer: 3.0,
            register_identity: 1.0,
            blocked_transfer: 1.0,
            unverified_mint: 0.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Durations {
    /// Faults happen in `[0, fault_phase_s)`; at `fault_phase_s` everything heals.
    pub fault_phase_s: f64,
    /// After healing, every accepted request must reach a terminal state within this bound.
    pub liveness_bound_s: f64,
    /// The `visibility` invariant: each fault must show in the engines' metrics within this
    /// many seconds of its start (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_bound_s: Option<f64>,
}

/// The JSON-RPC reads the engine makes that a backend left on an old fork answers from its own
/// chain (`rpc_stale_fork`'s `methods`); sends always reach the live chain.
pub const STALE_READS: [&str; 11] = [
    "eth_blockNumber",
    "eth_getBalance",
    "eth_getTransactionCount",
    "eth_getCode",
    "eth_getTransactionByHash",
    "eth_getTransactionReceipt",
    "eth_getBlockByNumber",
    "eth_getBlockByHash",
    "eth_getLogs",
    "eth_call",
    "eth_estimateGas",
];

/// What an `rpc_error` fault may answer, modelled on what providers and nodes answer when they
/// cannot serve a request now: HTTP statuses from a provider's proxy or load balancer (503
/// overloaded or down, 502 bad gateway, 429 rate limited) and JSON-RPC error codes (geth's and
/// Erigon's -32000 "header not found"/"missing trie node" from a lagging or syncing node,
/// -32005 "limit exceeded" from a rate-limited provider, -32603 "internal error").
pub const RPC_ERROR_CODES: &[i64] = &[503, 502, 429, -32000, -32005, -32603];

/// Where a fault hits. Node names: `engine-<i>`, `db-<j>` (`db-0` starts as primary), `rpc-<k>`,
/// `client-<c>`; groups: `db`, `rpc`, `engines`, `clients`.
pub type NodeName = String;

/// One scheduled fault. `at_s` is when it starts; `for_s`, where present, how long it lasts
/// (absent: until the heal instant).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Kill an engine node (like `kill -9`); it restarts after `restart_after_s` (re-running
    /// start-up like a new process), or at the heal instant.
    EngineCrash {
        node: NodeName,
        at_s: f64,
        restart_after_s: Option<f64>,
    },
    /// Freeze an engine node (GC pause, VM stall): nothing runs, nothing is lost.
    EnginePause {
        node: NodeName,
        at_s: f64,
        for_s: Option<f64>,
    },
    /// Cut `node` from `from` (nodes or groups). `direction`: `both`, `outbound` (node → peers
    /// lost) or `inbound` (peers → node lost).
    Partition {
        node: NodeName,
        from: Vec<NodeName>,
        #[serde(default = "default_direction")]
        direction: Direction,
        at_s: f64,
        for_s: Option<f64>,
    },
    /// Offset one engine node's wall clock by `skew_ms` (positive = ahead).
    ClockSkew {
        node: NodeName,
        skew_ms: i64,
        at_s: f64,
        for_s: Option<f64>,
    },
    /// Crash a database node; it restarts with its durable state after `restart_after_s`.
    DbCrash {
        node: NodeName,
        at_s: f64,
        restart_after_s: Option<f64>,
    },
    /// Crash the primary and promote the first live replica after `promote_after_s`; the
    /// service address is re-pointed to it. The old primary rejoins, demoted to read-only, after
    /// `rejoin_after_s` (absent: stays down until the heal instant).
    DbFailover {
        at_s: f64,
        #[serde(default = "default_promote_after")]
        promote_after_s: f64,
        rejoin_after_s: Option<f64>,
    },
    /// Every database connection is reset: in-flight and new requests fail for `for_s`.
    DbConnReset { at_s: f64, for_s: Option<f64> },
    /// The primary commits but the acknowledgement is lost (outcome unknown to the client).
    DbLostAck {
        at_s: f64,
        for_s: Option<f64>,
        #[serde(default = "one")]
        rate: f64,
    },
    /// A session of the engine's pool is left inside a transaction holding the row lock of one
    /// running workflow (the lowest id), as a client that went away mid-transaction leaves it
    /// (a cancelled `BEGIN` under sqlx 0.8, a process frozen between statements). Fenced writes
    /// to that workflow wait on the lock until their statement timeout; claims skip it. Only the
    /// server ends such a session: after the `idle_in_transaction_session_timeout` the engine's
    /// connections set (`dalp_engine::store::idle_in_transaction_bound`), or never.
    DbStaleSession { at_s: f64 },
    /// Extra latency on every database request.
    DbLatency {
        at_s: f64,
        for_s: Option<f64>,
        extra_ms: u64,
    },
    /// An RPC endpoint (or `rpc` for all) is unreachable: connection refused.
    RpcDown {
        endpoint: NodeName,
        at_s: f64,
        for_s: Option<f64>,
    },
    /// An RPC endpoint answers an error (optionally only for `method`): `code` is an HTTP
    /// status (503 when absent; 502, 429) or a JSON-RPC error code a node answers when it
    /// cannot serve a request now (-32000 "header not found"/"missing trie node": a lagging or
    /// syncing node; -32005 rate limited; -32603 internal error); see [`RPC_ERROR_CODES`].
    RpcError {
        endpoint: NodeName,
        at_s: f64,
        for_s: Option<f64>,
        method: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i64>,
    },
    /// An RPC endpoint never answers (optionally only for `method`).
    RpcTimeout {
        endpoint: NodeName,
        at_s: f64,
        for_s: Option<f64>,
        method: Option<String>,
    },
    /// An RPC endpoint accepts `eth_sendRawTransaction` into the mempool, then never answers.
    RpcAmbiguousSend {
        endpoint: NodeName,
        at_s: f64,
        for_s: Option<f64>,
    },
    /// An RPC endpoint is a load balancer over two backends, one of which stopped following the
    /// chain when the fault began, and stays on the old fork when a reorg happens during the
    /// fault (it stops just before it): one read in two (seeded) is answered by that backend,
    /// the others by the live chain; sends reach the live chain. Receipts, blocks and heads from
    /// one endpoint then disagree with each other, as behind real providers' load balancers.
    /// `methods` limits the stale backend to those reads; with `cache`, a `null` it answers (a
    /// transaction or block it does not know) is answered by the live chain instead. Both
    /// together model a provider's receipt cache that missed a reorg: `methods =
    /// ["eth_getTransactionReceipt"]`, `cache = true`.
    RpcStaleFork {
        endpoint: NodeName,
        at_s: f64,
        for_s: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cache: bool,
    },
    /// An RPC endpoint serves a head `blocks` behind.
    RpcLag {
        endpoint: NodeName,
        at_s: f64,
        for_s: Option<f64>,
        blocks: u64,
    },
    /// Reorganise the last `depth` blocks away; their transactions are re-included, or dropped
    /// when `drop_txs`.
    Reorg {
        at_s: f64,
        depth: u64,
        #[serde(default)]
        drop_txs: bool,
    },
    /// Drop every pending transaction of the engine's signer from the mempool.
    MempoolDrop { at_s: f64 },
    /// Set the next block's base fee (a spike), in gwei.
    GasSpike { at_s: f64, base_fee_gwei: u64 },
    /// Someone outside the engine uses the signer's next nonce.
    ExternalNonce { at_s: f64 },
    /// Drain the signer's balance (to zero, or to `balance_gwei`: a low balance that pays for
    /// the transactions already sent but not for re-pricing them in a gas spike); it is topped
    /// up again after `for_s`.
    SignerDrain {
        at_s: f64,
        for_s: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        balance_gwei: Option<u64>,
    },
    /// A planned switchover: the primary is demoted in place (it stays up, read-only), the most
    /// advanced replica is promoted once it has caught up, and `db.service` is re-pointed.
    /// Engines still connected to the old primary get SQLSTATE 25006 until they reconnect.
    DbSwitchover { at_s: f64 },
    /// A hot-warm region drill: every active engine and the database primary are lost (killed);
    /// the most advanced replica is promoted after `promote_after_s`, and the standby engines
    /// (`topology.standby_engines`) start; clients find them on their own. The old region comes
    /// back at the heal instant.
    RegionFailover {
        at_s: f64,
        #[serde(default = "default_promote_after")]
        promote_after_s: f64,
    },
    /// An operator lists the dead-letter queue and requeues every entry (through the API).
    OperatorRequeue { at_s: f64 },
    /// A compliance agent (a key of its own, not the engine's) lowers every token's per-holder
    /// balance cap to `cap`; after `for_s` it lifts the cap again. Mints and transfers that would
    /// take a holder above it revert: in the pre-flight call, or on chain for those already
    /// checked and sent (a rule changed between the check and the block). Written to the
    /// token's storage (`anvil_setStorageAt` on the real backend): it uses no nonce of the
    /// signer's.
    BalanceCap {
        at_s: f64,
        for_s: Option<f64>,
        #[serde(default = "default_cap")]
        cap: u64,
    },
}

fn default_cap() -> u64 {
    1
}

impl EngineKnobs {
    /// The first knob out of range, and why.
    fn invalid(&self, finality_depth: u64) -> Option<(&'static str, String)> {
        let out = |f: &'static str, r: &str| Some((f, r.to_string()));
        match self {
            EngineKnobs {
                lease_ms: Some(l), ..
            } if *l < 1000 => out(
                "lease_ms",
                "must be at least 1000 (renewal needs round trips)",
            ),
            EngineKnobs {
                poll_ms: Some(p), ..
            } if *p < 10 => out("poll_ms", "must be at least 10"),
            EngineKnobs {
                max_attempts: Some(0),
                ..
            } => out("max_attempts", "must be at least 1"),
            EngineKnobs {
                concurrency: Some(0),
                ..
            } => out("concurrency", "must be at least 1"),
            EngineKnobs {
                confirmations: Some(c),
                ..
            } if *c == 0 || *c > finality_depth => Some((
                "confirmations",
                format!("must be 1 to topology.finality_depth ({finality_depth})"),
            )),
            _ => None,
        }
    }
}

/// Declares [`FaultKind`]: one variant per [`Fault`] variant, with its name in scenario files.
macro_rules! fault_kinds {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The kind of a fault without its parameters. Every place that handles faults (the
        /// injectors, the real mapping, the checkers, the random draw) matches on it with no
        /// catch-all arm, so a new kind does not compile until each place says what it does.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum FaultKind {
            $($variant),*
        }

        impl FaultKind {
            pub const ALL: &'static [FaultKind] = &[$(FaultKind::$variant),*];

            /// The name scenario files, traces and results use.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(FaultKind::$variant => $name),*
                }
            }
        }
    };
}

fault_kinds! {
    EngineCrash => "engine_crash",
    EnginePause => "engine_pause",
    Partition => "partition",
    ClockSkew => "clock_skew",
    DbCrash => "db_crash",
    DbFailover => "db_failover",
    DbConnReset => "db_conn_reset",
    DbLostAck => "db_lost_ack",
    DbLatency => "db_latency",
    DbStaleSession => "db_stale_session",
    RpcDown => "rpc_down",
    RpcError => "rpc_error",
    RpcTimeout => "rpc_timeout",
    RpcAmbiguousSend => "rpc_ambiguous_send",
    RpcLag => "rpc_lag",
    Reorg => "reorg",
    MempoolDrop => "mempool_drop",
    GasSpike => "gas_spike",
    ExternalNonce => "external_nonce",
    SignerDrain => "signer_drain",
    DbSwitchover => "db_switchover",
    RegionFailover => "region_failover",
    OperatorRequeue => "operator_requeue",
    RpcStaleFork => "rpc_stale_fork",
    BalanceCap => "balance_cap"
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown fault kind {s:?}"))
    }
}

impl FaultKind {
    /// Whether a `[random]` table may draw it: the kinds that need no scenario-specific setup
    /// (standby engines in another region, a dead-letter queue to requeue, a funded signer to
    /// drain and refill) and whose random parameters are meaningful. A drawn failover or
    /// switchover without a replica to promote is a crash and restart of the primary.
    pub fn drawable(self) -> bool {
        match self {
            FaultKind::EngineCrash
            | FaultKind::EnginePause
            | FaultKind::Partition
            | FaultKind::ClockSkew
            | FaultKind::DbCrash
            | FaultKind::DbConnReset
            | FaultKind::DbLostAck
            | FaultKind::DbLatency
            | FaultKind::DbStaleSession
            | FaultKind::RpcDown
            | FaultKind::RpcError
            | FaultKind::RpcTimeout
            | FaultKind::RpcAmbiguousSend
            | FaultKind::RpcLag
            | FaultKind::RpcStaleFork
            | FaultKind::Reorg
            | FaultKind::MempoolDrop
            | FaultKind::GasSpike
            | FaultKind::ExternalNonce
            | FaultKind::DbFailover
            | FaultKind::DbSwitchover => true,
            FaultKind::SignerDrain
            | FaultKind::RegionFailover
            | FaultKind::OperatorRequeue
            | FaultKind::BalanceCap => false,
        }
    }

    /// The kinds a `[random]` table may name, in declaration order.
    pub fn drawable_kinds() -> Vec<FaultKind> {
        FaultKind::ALL
            .iter()
            .copied()
            .filter(|k| k.drawable())
            .collect()
    }
}

/// Thresholds of the isolation invariant (the scenario's optional `[isolation]` table).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IsolationCfg {
    /// Completions inside a fault window must be at least this fraction of the baseline's.
    #[serde(default = "default_min_ratio")]
    pub min_ratio: f64,
    /// The median latency may be at most this factor of the baseline's, plus `slack_s`.
    #[serde(default = "default_max_slowdown")]
    pub max_slowdown: f64,
    /// Additive latency allowance in seconds (default: the engine's lease, 10 s).
    #[serde(default = "default_slack_s")]
    pub slack_s: f64,
    /// Completions are counted from this many seconds after a window's start (the takeover of
    /// the work the failed component held; default: the engine's lease, 10 s).
    #[serde(default = "default_slack_s")]
    pub settle_s: f64,
    /// The throughput check needs at least this many baseline completions in the window.
    #[serde(default = "default_min_ops")]
    pub min_ops: u32,
}

fn default_min_ratio() -> f64 {
    0.5
}
fn default_max_slowdown() -> f64 {
    3.0
}
fn default_slack_s() -> f64 {
    10.0
}
fn default_min_ops() -> u32 {
    3
}

impl Default for IsolationCfg {
    fn default() -> Self {
        IsolationCfg {
            min_ratio: default_min_ratio(),
            max_slowdown: default_max_slowdown(),
            slack_s: default_slack_s(),
            settle_s: default_slack_s(),
            min_ops: default_min_ops(),
        }
    }
}

impl IsolationCfg {
    /// `Err((field, reason))` for a nonsensical threshold.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let e = |f: &str, r: &str| Err((f.to_string(), r.to_string()));
        if !(self.min_ratio > 0.0 && self.min_ratio <= 1.0) {
            return e("min_ratio", "must be in (0, 1]");
        }
        if !(self.max_slowdown >= 1.0 && self.max_slowdown.is_finite()) {
            return e("max_slowdown", "must be a finite number >= 1");
        }
        if !(self.slack_s >= 0.0 && self.slack_s.is_finite()) {
            return e("slack_s", "must be a finite number >= 0");
        }
        if !(self.settle_s >= 0.0 && self.settle_s.is_finite()) {
            return e("settle_s", "must be a finite number >= 0");
        }
        if self.min_ops == 0 {
            return e("min_ops", "must be at least 1");
        }
        if self.max_slowdown > 1e6
            || self.slack_s > limits::SECONDS
            || self.settle_s > limits::SECONDS
        {
            return e(
                "max_slowdown/slack_s/settle_s",
                "must be at most 1e6 (max_slowdown) and 3600 s (slack_s, settle_s)",
            );
        }
        Ok(())
    }
}

fn default_direction() -> Direction {
    Direction::Both
}
fn default_promote_after() -> f64 {
    2.0
}
fn one() -> f64 {
    1.0
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Both,
    Outbound,
    Inbound,
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::EngineCrash { .. } => FaultKind::EngineCrash,
            Fault::EnginePause { .. } => FaultKind::EnginePause,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::ClockSkew { .. } => FaultKind::ClockSkew,
            Fault::DbCrash { .. } => FaultKind::DbCrash,
            Fault::DbFailover { .. } => FaultKind::DbFailover,
            Fault::DbConnReset { .. } => FaultKind::DbConnReset,
            Fault::DbLostAck { .. } => FaultKind::DbLostAck,
            Fault::DbLatency { .. } => FaultKind::DbLatency,
            Fault::DbStaleSession { .. } => FaultKind::DbStaleSession,
            Fault::RpcDown { .. } => FaultKind::RpcDown,
            Fault::RpcError { .. } => FaultKind::RpcError,
            Fault::RpcTimeout { .. } => FaultKind::RpcTimeout,
            Fault::RpcAmbiguousSend { .. } => FaultKind::RpcAmbiguousSend,
            Fault::RpcLag { .. } => FaultKind::RpcLag,
            Fault::RpcStaleFork { .. } => FaultKind::RpcStaleFork,
            Fault::Reorg { .. } => FaultKind::Reorg,
            Fault::MempoolDrop { .. } => FaultKind::MempoolDrop,
            Fault::GasSpike { .. } => FaultKind::GasSpike,
            Fault::ExternalNonce { .. } => FaultKind::ExternalNonce,
            Fault::SignerDrain { .. } => FaultKind::SignerDrain,
            Fault::DbSwitchover { .. } => FaultKind::DbSwitchover,
            Fault::RegionFailover { .. } => FaultKind::RegionFailover,
            Fault::OperatorRequeue { .. } => FaultKind::OperatorRequeue,
            Fault::BalanceCap { .. } => FaultKind::BalanceCap,
        }
    }

    pub fn at_s(&self) -> f64 {
        match self {
            Fault::EngineCrash { at_s, .. }
            | Fault::EnginePause { at_s, .. }
            | Fault::Partition { at_s, .. }
            | Fault::ClockSkew { at_s, .. }
            | Fault::DbCrash { at_s, .. }
            | Fault::DbFailover { at_s, .. }
            | Fault::DbConnReset { at_s, .. }
            | Fault::DbLostAck { at_s, .. }
            | Fault::DbLatency { at_s, .. }
            | Fault::DbStaleSession { at_s }
            | Fault::RpcDown { at_s, .. }
            | Fault::RpcError { at_s, .. }
            | Fault::RpcTimeout { at_s, .. }
            | Fault::RpcAmbiguousSend { at_s, .. }
            | Fault::RpcLag { at_s, .. }
            | Fault::RpcStaleFork { at_s, .. }
            | Fault::Reorg { at_s, .. }
            | Fault::MempoolDrop { at_s }
            | Fault::GasSpike { at_s, .. }
            | Fault::ExternalNonce { at_s }
            | Fault::SignerDrain { at_s, .. }
            | Fault::DbSwitchover { at_s }
            | Fault::RegionFailover { at_s, .. }
            | Fault::OperatorRequeue { at_s }
            | Fault::BalanceCap { at_s, .. } => *at_s,
        }
    }

    /// The node or endpoint (or group) a fault is aimed at; `None` for faults of the database
    /// service, the chain, the whole deployment or the operator.
    pub fn node(&self) -> Option<&str> {
        match self {
            Fault::EngineCrash { node, .. }
            | Fault::EnginePause { node, .. }
            | Fault::Partition { node, .. }
            | Fault::ClockSkew { node, .. }
            | Fault::DbCrash { node, .. } => Some(node),
            Fault::RpcDown { endpoint, .. }
            | Fault::RpcError { endpoint, .. }
            | Fault::RpcTimeout { endpoint, .. }
            | Fault::RpcAmbiguousSend { endpoint, .. }
            | Fault::RpcLag { endpoint, .. }
            | Fault::RpcStaleFork { endpoint, .. } => Some(endpoint),
            Fault::DbFailover { .. }
            | Fault::DbConnReset { .. }
            | Fault::DbLostAck { .. }
            | Fault::DbLatency { .. }
            | Fault::DbStaleSession { .. }
            | Fault::Reorg { .. }
            | Fault::MempoolDrop { .. }
            | Fault::GasSpike { .. }
            | Fault::ExternalNonce { .. }
            | Fault::SignerDrain { .. }
            | Fault::DbSwitchover { .. }
            | Fault::RegionFailover { .. }
            | Fault::OperatorRequeue { .. }
            | Fault::BalanceCap { .. } => None,
        }
    }

    /// How long the fault lasts (`None`: until the heal instant; instantaneous faults: zero).
    pub fn duration_s(&self) -> Option<f64> {
        match self {
            Fault::EngineCrash {
                restart_after_s, ..
            }
            | Fault::DbCrash {
                restart_after_s, ..
            } => *restart_after_s,
            Fault::DbFailover { rejoin_after_s, .. } => *rejoin_after_s,
            Fault::EnginePause { for_s, .. }
            | Fault::Partition { for_s, .. }
            | Fault::ClockSkew { for_s, .. }
            | Fault::DbConnReset { for_s, .. }
            | Fault::DbLostAck { for_s, .. }
            | Fault::DbLatency { for_s, .. }
            | Fault::RpcDown { for_s, .. }
            | Fault::RpcError { for_s, .. }
            | Fault::RpcTimeout { for_s, .. }
            | Fault::RpcAmbiguousSend { for_s, .. }
            | Fault::RpcLag { for_s, .. }
            | Fault::RpcStaleFork { for_s, .. }
            | Fault::SignerDrain { for_s, .. }
            | Fault::BalanceCap { for_s, .. } => *for_s,
            Fault::Reorg { .. }
            | Fault::MempoolDrop { .. }
            | Fault::GasSpike { .. }
            | Fault::ExternalNonce { .. }
            | Fault::DbSwitchover { .. }
            | Fault::OperatorRequeue { .. } => Some(0.0),
            // Lasts as long as the server lets the session live (the engine's setting).
            Fault::DbStaleSession { .. } => Some(0.0),
            // The lost region stays lost until the heal instant.
            Fault::RegionFailover { .. } => None,
        }
    }
}

/// Faults drawn from the seed: a Poisson process per class over a window.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    /// Expected occurrences per simulated minute, by fault kind.
    pub rate_per_min: BTreeMap<String, f64>,
    /// Random faults start within `[window_s[0], window_s[1])`.
    pub window_s: [f64; 2],
    /// Duration range of windowed faults, in seconds.
    #[serde(default = "default_random_duration")]
    pub duration_s: [f64; 2],
}

fn default_random_duration() -> [f64; 2] {
    [2.0, 10.0]
}

impl Scenario {
    /// Read and validate a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            field: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Scenario::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
            file: file.into(),
            field: toml_error_field(text, &e),
            reason: e.message().to_string(),
        })?;
        s.validate(file)?;
        Ok(s)
    }

    /// The concrete scenario of `seed`: a swarm scenario's draw (and what was drawn), any other
    /// scenario as it is.
    pub fn for_seed(&self, seed: u64) -> (Scenario, Option<crate::swarm::SwarmDraw>) {
        match &self.swarm {
            None => (self.clone(), None),
            Some(sw) => {
                let (s, d) = sw.draw(self, seed);
                debug_assert!(s.validate("(swarm draw)").is_ok(), "{}", d.line);
                (s, Some(d))
            }
        }
    }

    /// The standalone scenario of one run: `seed`'s concrete scenario with `schedule` as its
    /// explicit `[[faults]]` and no random draw, so it replays that run by itself (the seed
    /// still draws the workload, the fault points and the runtime's choices).
    pub fn standalone(&self, seed: u64, schedule: Vec<Fault>) -> Scenario {
        let (mut s, _) = self.for_seed(seed);
        s.swarm = None;
        s.random = None;
        s.faults = schedule;
        s
    }

    /// The scenario as TOML that [`Scenario::parse`] reads back to the same value.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a scenario is representable in TOML")
    }

    /// Attempts of a step before a failure that is not an outage is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.knobs()
            .max_attempts
            .unwrap_or_else(crate::engine_conf::max_attempts)
    }

    /// The engines' confirmation depth.
    pub fn confirmations(&self) -> u64 {
        self.knobs()
            .confirmations
            .unwrap_or_else(|| crate::engine_conf::confirmations(self.topology.finality_depth))
    }

    /// The scenario's engine knobs (all defaults when it has no `[engine]` table).
    pub fn knobs(&self) -> EngineKnobs {
        self.engine.clone().unwrap_or_default()
    }

    pub fn engine_names(&self) -> Vec<String> {
        (0..self.topology.engines)
            .map(|i| format!("engine-{i}"))
            .collect()
    }
    pub fn db_names(&self) -> Vec<String> {
        (0..=self.topology.db_replicas)
            .map(|i| format!("db-{i}"))
            .collect()
    }
    pub fn rpc_names(&self) -> Vec<String> {
        (0..self.topology.rpc_endpoints)
            .map(|i| format!("rpc-{i}"))
            .collect()
    }
    pub fn client_names(&self) -> Vec<String> {
        (0..self.workload.clients)
            .map(|i| format!("client-{i}"))
            .collect()
    }

    /// Expand a node name or group into node names.
    pub fn expand(&self, name: &str) -> Option<Vec<String>> {
        let groups: [(&str, Vec<String>); 4] = [
            ("engines", self.engine_names()),
            ("db", self.db_names()),
            ("rpc", self.rpc_names()),
            ("clients", self.client_names()),
        ];
        for (g, members) in &groups {
            if name == *g {
                return Some(members.clone());
            }
        }
        groups
            .iter()
            .any(|(_, m)| m.iter().any(|n| n == name))
            .then(|| vec![name.to_string()])
    }

    pub(crate) fn validate(&self, file: &str) -> Result<(), ScenarioError> {
        let err = |field: &str, reason: String| ScenarioError {
            file: file.into(),
            field: field.into(),
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        for (i, id) in self.covers.iter().enumerate() {
            if !CATALOG.contains(&id.as_str()) {
                return Err(err(
                    &format!("covers[{i}]"),
                    format!("unknown catalog id {id:?}; known: {}", CATALOG.join(", ")),
                ));
            }
        }
        for (i, inv) in self.invariants.iter().enumerate() {
            if !INVARIANTS.contains(&inv.as_str()) {
                return Err(err(
                    &format!("invariants[{i}]"),
                    format!(
                        "unknown invariant {inv:?}; known: {}",
                        INVARIANTS.join(", ")
                    ),
                ));
            }
        }
        for (field, v) in [
            ("expect.max_recovery_s", self.expect.max_recovery_s),
            ("expect.max_data_loss_s", self.expect.max_data_loss_s),
        ] {
            if let Some(v) = v {
                crate::promise::check_target(v).map_err(|why| err(field, why))?;
            }
        }
        if let Some(fp) = &self.fault_points {
            let floor_ok = fp.enable_probability > 0.0
                || (fp.enable_probability == 0.0 && !fp.always.is_empty());
            if !(floor_ok && fp.enable_probability <= 1.0) {
                return Err(err(
                    "fault_points.enable_probability",
                    format!(
                        "must be in (0, 1] (0 only with fault_points.always), not {}",
                        fp.enable_probability
                    ),
                ));
            }
            for (i, a) in fp.always.iter().enumerate() {
                let field = |f: &str| format!("fault_points.always[{i}].{f}");
                if fp.always[..i].iter().any(|b| b.name == a.name) {
                    return Err(err(&field("name"), format!("{} is listed twice", a.name)));
                }
                dalp_engine::probe::fault_point_allowing(
                    &a.name,
                    a.firing == Firing::Fail,
                    a.firing == Firing::Crash,
                )
                .map_err(|why| {
                    let f = if why.contains("not a declared") {
                        "name"
                    } else {
                        "firing"
                    };
                    err(&field(f), why)
                })?;
                if !(a.fire_probability > 0.0 && a.fire_probability <= 1.0) {
                    return Err(err(
                        &field("fire_probability"),
                        format!("must be in (0, 1], not {}", a.fire_probability),
                    ));
                }
                if a.max_fires == Some(0) {
                    return Err(err(&field("max_fires"), "must be at least 1".into()));
                }
            }
        }
        if let Some(k) = &self.engine {
            if let Some((field, reason)) = k.invalid(self.topology.finality_depth) {
                return Err(err(&format!("engine.{field}"), reason));
            }
        }
        if let Some(sw) = &self.swarm {
            sw.validate(self)
                .map_err(|(field, reason)| err(&format!("swarm.{field}"), reason))?;
        }
        let t = &self.topology;
        if !(1..=8).contains(&t.engines) {
            return Err(err("topology.engines", "must be 1 to 8".into()));
        }
        if t.db_replicas > 3 {
            return Err(err("topology.db_replicas", "must be 0 to 3".into()));
        }
        if !(1..=4).contains(&t.rpc_endpoints) {
            return Err(err("topology.rpc_endpoints", "must be 1 to 4".into()));
        }
        if t.block_time_ms < 100 {
            return Err(err("topology.block_time_ms", "must be at least 100".into()));
        }
        if t.finality_depth == 0 || t.finality_depth > 64 {
            return Err(err("topology.finality_depth", "must be 1 to 64".into()));
        }
        if t.net_latency_ms[0] > t.net_latency_ms[1] {
            return Err(err(
                "topology.net_latency_ms",
                "must be [min, max] with min <= max".into(),
            ));
        }
        if t.indexers.is_empty() {
            return Err(err(
                "topology.indexers",
                "at least one engine must run the indexer".into(),
            ));
        }
        let engines = self.engine_names();
        for (i, n) in t.indexers.iter().enumerate() {
            if !engines.contains(n) {
                return Err(err(
                    &format!("topology.indexers[{i}]"),
                    format!(
                        "no engine node named {n:?} (engines: {})",
                        engines.join(", ")
                    ),
                ));
            }
        }
        for (i, n) in t.standby_engines.iter().enumerate() {
            if !engines.contains(n) {
                return Err(err(
                    &format!("topology.standby_engines[{i}]"),
                    format!(
                        "no engine node named {n:?} (engines: {})",
                        engines.join(", ")
                    ),
                ));
            }
        }
        if t.standby_engines.len() >= engines.len() {
            return Err(err(
                "topology.standby_engines",
                "at least one engine must be active from the start".into(),
            ));
        }
        let w = &self.workload;
        if w.clients == 0 || w.clients > 16 {
            return Err(err("workload.clients", "must be 1 to 16".into()));
        }
        if w.tokens == 0 {
            return Err(err(
                "workload.tokens",
                "at least one issuance is needed (the other operations use its token)".into(),
            ));
        }
        if !positive(w.submit_window_s) {
            return Err(err("workload.submit_window_s", "must be positive".into()));
        }
        if w.max_balance != 0 && w.max_balance < MIN_ISSUANCE_CAP {
            return Err(err(
                "workload.max_balance",
                format!(
                    "must be 0 (no cap) or at least {MIN_ISSUANCE_CAP} (twice the initial supply, which is minted to the issuer under the cap), not {}",
                    w.max_balance
                ),
            ));
        }
        let m = &w.mix;
        if [
            m.mint,
            m.transfer,
            m.register_identity,
            m.blocked_transfer,
            m.unverified_mint,
        ]
        .iter()
        .any(|x| *x < 0.0 || !x.is_finite())
            || (w.operations > 0
                && m.mint
                    + m.transfer
                    + m.register_identity
                    + m.blocked_transfer
                    + m.unverified_mint
                    <= 0.0)
        {
            return Err(err(
                "workload.mix",
                "weights must be non-negative and not all zero".into(),
            ));
        }
        let d = &self.durations;
        if !positive(d.fault_phase_s) || !positive(d.liveness_bound_s) {
            return Err(err(
                "durations",
                "fault_phase_s and liveness_bound_s must be positive".into(),
            ));
        }
        if w.submit_window_s > d.fault_phase_s {
            return Err(err(
                "workload.submit_window_s",
                format!(
                    "submissions end at {} s, after the fault phase ends at {} s",
                    w.submit_window_s, d.fault_phase_s
                ),
            ));
        }
        self.within_limits()
            .map_err(|(field, reason)| err(&field, reason))?;
        for (i, f) in self.faults.iter().enumerate() {
            self.validate_fault(f)
                .map_err(|(field, reason)| err(&format!("faults[{i}].{field}"), reason))?;
        }
        if let Some(iso) = &self.isolation {
            if !self.invariants.iter().any(|i| i == "isolation") {
                return Err(err(
                    "isolation",
                    "thresholds for an invariant the scenario does not check (add \"isolation\" to `invariants`)".into(),
                ));
            }
            iso.validate()
                .map_err(|(field, reason)| err(&format!("isolation.{field}"), reason))?;
        }
        if let Some(r) = &self.random {
            for (k, rate) in &r.rate_per_min {
                if !k.parse::<FaultKind>().is_ok_and(FaultKind::drawable) {
                    let known: Vec<&str> = FaultKind::drawable_kinds()
                        .into_iter()
                        .map(FaultKind::as_str)
                        .collect();
                    return Err(err(
                        &format!("random.rate_per_min.{k}"),
                        format!("unknown fault kind; known: {}", known.join(", ")),
                    ));
                }
                if !(*rate >= 0.0 && rate.is_finite()) {
                    return Err(err(
                        &format!("random.rate_per_min.{k}"),
                        "must be a non-negative number".into(),
                    ));
                }
            }
            if !(r.window_s[0] >= 0.0 && r.window_s[0] < r.window_s[1])
                || r.window_s[1] > d.fault_phase_s
            {
                return Err(err(
                    "random.window_s",
                    format!(
                        "must be [start, end) with 0 <= start < end <= fault_phase_s ({})",
                        d.fault_phase_s
                    ),
                ));
            }
            if !(r.duration_s[0] > 0.0 && r.duration_s[0] <= r.duration_s[1]) {
                return Err(err(
                    "random.duration_s",
                    "must be [min, max] with 0 < min <= max".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_fault(&self, f: &Fault) -> Result<(), (String, String)> {
        let e = |field: &str, reason: String| Err((field.to_string(), reason));
        let at = f.at_s();
        if !(at >= 0.0 && at < self.durations.fault_phase_s) {
            return e(
                "at_s",
                format!(
                    "must be within the fault phase [0, {})",
                    self.durations.fault_phase_s
                ),
            );
        }
        if let Some(d) = f.duration_s() {
            if !(d >= 0.0 && d.is_finite()) {
                return e("for_s", "durations must be non-negative".into());
            }
            if d > limits::SECONDS {
                return e(
                    "for_s",
                    format!("must be at most {} s, not {d}", limits::SECONDS),
                );
            }
        }
        let big = limits::at_most;
        match f {
            Fault::ClockSkew { skew_ms, .. } => {
                big("skew_ms", skew_ms.unsigned_abs(), limits::SKEW_MS)?
            }
            Fault::DbLatency { extra_ms, .. } => big("extra_ms", *extra_ms, limits::DELAY_MS)?,
            Fault::RpcLag { blocks, .. } => big("blocks", *blocks, limits::LAG_BLOCKS)?,
            Fault::GasSpike { base_fee_gwei, .. } => {
                big("base_fee_gwei", *base_fee_gwei, limits::BASE_FEE_GWEI)?
            }
            Fault::DbFailover {
                promote_after_s, ..
            }
            | Fault::RegionFailover {
                promote_after_s, ..
            } if !(*promote_after_s >= 0.0 && *promote_after_s <= limits::SECONDS) => {
                return e(
                    "promote_after_s",
                    format!(
                        "must be in [0, {}] s, not {promote_after_s}",
                        limits::SECONDS
                    ),
                )
            }
            _ => {}
        }
        let engine = |n: &str| -> Result<(), (String, String)> {
            if self.engine_names().iter().any(|x| x == n) {
                Ok(())
            } else {
                e(
                    "node",
                    format!(
                        "no engine node named {n:?} (engines: {})",
                        self.engine_names().join(", ")
                    ),
                )
            }
        };
        let endpoint = |n: &str| -> Result<(), (String, String)> {
            if n == "rpc" || self.rpc_names().iter().any(|x| x == n) {
                Ok(())
            } else {
                e(
                    "endpoint",
                    format!(
                        "no RPC endpoint named {n:?} (endpoints: {}, or `rpc` for all)",
                        self.rpc_names().join(", ")
                    ),
                )
            }
        };
        match f {
            Fault::EngineCrash { node, .. }
            | Fault::EnginePause { node, .. }
            | Fault::ClockSkew { node, .. } => engine(node),
            Fault::Partition { node, from, .. } => {
                if self.expand(node).is_none_or(|v| v.len() != 1) {
                    return e("node", format!("no node named {node:?}"));
                }
                if from.is_empty() {
                    return e("from", "must name at least one node or group".into());
                }
                for (i, p) in from.iter().enumerate() {
                    match self.expand(p) {
                        None => {
                            return e(
                                &format!("from[{i}]"),
                                format!(
                                "no node or group named {p:?} (groups: engines, db, rpc, clients)"
                            ),
                            )
                        }
                        Some(v) if v.contains(node) => {
                            return e(
                                &format!("from[{i}]"),
                                format!("{p:?} contains {node:?} itself"),
                            )
                        }
                        Some(_) => {}
                    }
                }
                Ok(())
            }
            Fault::DbCrash { node, .. } => {
                if self.db_names().contains(node) {
                    Ok(())
                } else {
                    e(
                        "node",
                        format!(
                            "no database node named {node:?} (nodes: {})",
                            self.db_names().join(", ")
                        ),
                    )
                }
            }
            Fault::RegionFailover { .. }
                if self.topology.standby_engines.is_empty() || self.topology.db_replicas == 0 =>
            {
                e(
                    "kind",
                    "region_failover needs topology.standby_engines and db_replicas >= 1".into(),
                )
            }
            Fault::DbFailover { .. } | Fault::DbSwitchover { .. } => {
                if self.topology.db_replicas == 0 {
                    e(
                        "kind",
                        "db_failover and db_switchover need topology.db_replicas >= 1 (nothing to promote)".into(),
                    )
                } else {
                    Ok(())
                }
            }
            Fault::DbLostAck { rate, .. } if !(*rate > 0.0 && *rate <= 1.0) => {
                e("rate", "must be in (0, 1]".into())
            }
            Fault::RpcError { code: Some(c), .. } if !RPC_ERROR_CODES.contains(c) => e(
                "code",
                format!(
                    "{c} is not an error an RPC endpoint answers here; known: {}",
                    RPC_ERROR_CODES
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Fault::RpcStaleFork {
                methods: Some(m), ..
            } if m.is_empty() => e(
                "methods",
                "at least one method, or leave it out for every read".into(),
            ),
            Fault::RpcStaleFork {
                methods: Some(m), ..
            } if m.iter().any(|x| !STALE_READS.contains(&x.as_str())) => {
                let x = m
                    .iter()
                    .find(|x| !STALE_READS.contains(&x.as_str()))
                    .expect("one is not known");
                e(
                    "methods",
                    format!(
                        "{x:?} is not a read a backend can answer from an old fork; known: {}",
                        STALE_READS.join(", ")
                    ),
                )
            }
            Fault::RpcDown { endpoint: n, .. }
            | Fault::RpcError { endpoint: n, .. }
            | Fault::RpcTimeout { endpoint: n, .. }
            | Fault::RpcAmbiguousSend { endpoint: n, .. }
            | Fault::RpcLag { endpoint: n, .. }
            | Fault::RpcStaleFork { endpoint: n, .. } => endpoint(n),
            Fault::Reorg { depth, .. } if *depth == 0 || *depth > 32 => {
                e("depth", "must be 1 to 32".into())
            }
            Fault::GasSpike { base_fee_gwei, .. } if *base_fee_gwei == 0 => {
                e("base_fee_gwei", "must be positive".into())
            }
            Fault::BalanceCap { cap: 0, .. } => e(
                "cap",
                "must be at least 1 (0 is the contract's \"no cap\": nothing would change)".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The concrete fault schedule of one seed: the scheduled faults plus the random ones drawn
    /// from the seed, ordered by start time (stable for equal times).
    pub fn schedule(&self, seed: u64) -> Vec<Fault> {
        let mut out = self.faults.clone();
        if let Some(r) = &self.random {
            let mut rng = SimRng::new(seed).fork("random-faults");
            for (kind, rate) in &r.rate_per_min {
                if *rate <= 0.0 {
                    continue;
                }
                let mut t = r.window_s[0];
                loop {
                    t += rng.exp(*rate / 60.0);
                    if t >= r.window_s[1] {
                        break;
                    }
                    let dur = r.duration_s[0] + rng.unit() * (r.duration_s[1] - r.duration_s[0]);
                    let kind = kind.parse::<FaultKind>().expect("validated random kind");
                    out.push(self.random_fault(kind, round_ms(t), round_ms(dur), &mut rng));
                }
            }
        }
        out.sort_by(|a, b| a.at_s().total_cmp(&b.at_s()));
        out
    }

    fn random_fault(&self, kind: FaultKind, at_s: f64, dur: f64, rng: &mut SimRng) -> Fault {
        let pick = |names: Vec<String>, rng: &mut SimRng| -> String {
            names[rng.range(0, names.len() as u64 - 1) as usize].clone()
        };
        let engine = pick(self.engine_names(), rng);
        let endpoint = pick(self.rpc_names(), rng);
        let for_s = Some(dur);
        match kind {
            FaultKind::EngineCrash => Fault::EngineCrash {
                node: engine,
                at_s,
                restart_after_s: for_s,
            },
            FaultKind::EnginePause => Fault::EnginePause {
                node: engine,
                at_s,
                for_s,
            },
            FaultKind::Partition => {
                let from = ["db", "rpc", "clients"][rng.range(0, 2) as usize].to_string();
                Fault::Partition {
                    node: engine,
                    from: vec![from],
                    direction: [Direction::Both, Direction::Outbound, Direction::Inbound]
                        [rng.range(0, 2) as usize],
                    at_s,
                    for_s,
                }
            }
            FaultKind::ClockSkew => Fault::ClockSkew {
                node: engine,
                skew_ms: (rng.range(0, 120_000) as i64) - 60_000,
                at_s,
                for_s,
            },
            FaultKind::DbCrash => Fault::DbCrash {
                node: "db-0".into(),
                at_s,
                restart_after_s: for_s,
            },
            FaultKind::DbConnReset => Fault::DbConnReset { at_s, for_s },
            FaultKind::DbLostAck => Fault::DbLostAck {
                at_s,
                for_s,
                rate: 0.5,
            },
            FaultKind::DbLatency => Fault::DbLatency {
                at_s,
                for_s,
                extra_ms: rng.range(50, 2000),
            },
            FaultKind::DbStaleSession => Fault::DbStaleSession { at_s },
            FaultKind::RpcDown => Fault::RpcDown {
                endpoint,
                at_s,
                for_s,
            },
            FaultKind::RpcError => Fault::RpcError {
                endpoint,
                at_s,
                for_s,
                method: None,
                // A stream of its own, so the draw shifts no other part of the schedule.
                code: {
                    let mut c = rng.fork("rpc-error-code");
                    Some(RPC_ERROR_CODES[c.range(0, RPC_ERROR_CODES.len() as u64 - 1) as usize])
                },
            },
            FaultKind::RpcTimeout => Fault::RpcTimeout {
                endpoint,
                at_s,
                for_s,
                method: None,
            },
            FaultKind::RpcAmbiguousSend => Fault::RpcAmbiguousSend {
                endpoint,
                at_s,
                for_s,
            },
            FaultKind::RpcLag => Fault::RpcLag {
                endpoint,
                at_s,
                for_s,
                blocks: rng.range(2, 20),
            },
            FaultKind::RpcStaleFork => Fault::RpcStaleFork {
                endpoint,
                at_s,
                for_s,
                methods: None,
                cache: false,
            },
            FaultKind::Reorg => Fault::Reorg {
                at_s,
                depth: rng.range(1, self.topology.finality_depth),
                drop_txs: rng.unit() < 0.5,
            },
            FaultKind::MempoolDrop => Fault::MempoolDrop { at_s },
            FaultKind::GasSpike => Fault::GasSpike {
                at_s,
                base_fee_gwei: rng.range(20, 500),
            },
            FaultKind::ExternalNonce => Fault::ExternalNonce { at_s },
            // The primary rejoins as a replica after the fault's duration.
            FaultKind::DbFailover => Fault::DbFailover {
                at_s,
                promote_after_s: round_ms(0.2 + rng.unit() * 4.8),
                rejoin_after_s: for_s,
            },
            FaultKind::DbSwitchover => Fault::DbSwitchover { at_s },
            FaultKind::SignerDrain
            | FaultKind::RegionFailover
            | FaultKind::OperatorRequeue
            | FaultKind::BalanceCap => {
                unreachable!("{kind} is not drawable (validated when the scenario was loaded)")
            }
        }
    }
}

/// The largest values a scenario may give: what the simulation represents exactly (milliseconds
/// in a u64, seeded schedules) and finishes in bounded time and memory. Validation refuses
/// anything beyond them with the field's name, so a hostile or mistyped file fails at load,
/// never as an overflow, a hang or an allocation of gigabytes in the run.
pub mod limits {
    /// Any time span in seconds: phases, bounds, fault durations (one simulated hour).
    pub const SECONDS: f64 = 3600.0;
    /// Operations per run.
    pub const OPERATIONS: u32 = 10_000;
    /// Issuances (tokens) per run.
    pub const TOKENS: u32 = 100;
    /// Faults per simulated minute of one kind in `[random]` (ten a second).
    pub const RATE_PER_MIN: f64 = 600.0;
    /// Relative weight of one operation kind.
    pub const WEIGHT: f64 = 1e6;
    /// Delays in milliseconds: replication lag, extra latency, network latency, block time.
    pub const DELAY_MS: u64 = 60_000;
    /// A client's wait for an answer, in milliseconds.
    pub const CLIENT_TIMEOUT_MS: u64 = 600_000;
    /// A clock's skew, in milliseconds (a day).
    pub const SKEW_MS: u64 = 86_400_000;
    /// Blocks an endpoint lags.
    pub const LAG_BLOCKS: u64 = 10_000;
    /// A base fee in gwei.
    pub const BASE_FEE_GWEI: u64 = 1_000_000;

    /// `x` at most `max`, or the field and why not.
    pub fn at_most(field: &str, x: u64, max: u64) -> Result<(), (String, String)> {
        if x > max {
            Err((field.to_string(), format!("must be at most {max}, not {x}")))
        } else {
            Ok(())
        }
    }
}

impl Scenario {
    /// The first number outside [`limits`]: field and reason.
    fn within_limits(&self) -> Result<(), (String, String)> {
        let secs = |field: &str, x: f64| -> Result<(), (String, String)> {
            if x > limits::SECONDS {
                Err((
                    field.to_string(),
                    format!("must be at most {} s, not {x}", limits::SECONDS),
                ))
            } else {
                Ok(())
            }
        };
        let max = limits::at_most;
        let d = &self.durations;
        secs("durations.fault_phase_s", d.fault_phase_s)?;
        secs("durations.liveness_bound_s", d.liveness_bound_s)?;
        if let Some(v) = d.visibility_bound_s {
            if !(0.0..=limits::SECONDS).contains(&v) {
                return Err((
                    "durations.visibility_bound_s".into(),
                    format!("must be in [0, {}] s, not {v}", limits::SECONDS),
                ));
            }
        }
        let t = &self.topology;
        max(
            "topology.replication_lag_ms",
            t.replication_lag_ms,
            limits::DELAY_MS,
        )?;
        max("topology.block_time_ms", t.block_time_ms, limits::DELAY_MS)?;
        max(
            "topology.net_latency_ms",
            t.net_latency_ms[1],
            limits::DELAY_MS,
        )?;
        let w = &self.workload;
        max(
            "workload.operations",
            w.operations.into(),
            limits::OPERATIONS.into(),
        )?;
        max("workload.tokens", w.tokens.into(), limits::TOKENS.into())?;
        max(
            "workload.client_timeout_ms",
            w.client_timeout_ms,
            limits::CLIENT_TIMEOUT_MS,
        )?;
        if w.client_timeout_ms == 0 {
            return Err((
                "workload.client_timeout_ms".into(),
                "must be positive".into(),
            ));
        }
        let m = &w.mix;
        for (k, x) in [
            ("mint", m.mint),
            ("transfer", m.transfer),
            ("register_identity", m.register_identity),
            ("blocked_transfer", m.blocked_transfer),
            ("unverified_mint", m.unverified_mint),
        ] {
            if x > limits::WEIGHT {
                return Err((
                    format!("workload.mix.{k}"),
                    format!("must be at most {}, not {x}", limits::WEIGHT),
                ));
            }
        }
        if let Some(r) = &self.random {
            for (k, rate) in &r.rate_per_min {
                if *rate > limits::RATE_PER_MIN {
                    return Err((
                        format!("random.rate_per_min.{k}"),
                        format!(
                            "must be at most {} per minute, not {rate}",
                            limits::RATE_PER_MIN
                        ),
                    ));
                }
            }
            secs("random.duration_s", r.duration_s[1])?;
        }
        if let Some(k) = &self.engine {
            let fields: [(&str, Option<u64>, u64); 4] = [
                ("engine.lease_ms", k.lease_ms, 600_000),
                ("engine.poll_ms", k.poll_ms, limits::DELAY_MS),
                ("engine.max_attempts", k.max_attempts.map(u64::from), 100),
                ("engine.concurrency", k.concurrency.map(u64::from), 256),
            ];
            for (f, v, m) in fields {
                if let Some(v) = v {
                    max(f, v, m)?;
                }
            }
        }
        Ok(())
    }
}

/// A finite number above zero (NaN is not).
fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

/// Millisecond resolution keeps schedules readable and exactly reproducible from JSON.
fn round_ms(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Best effort at naming the field a TOML error is about: the key on the line it points at.
fn toml_error_field(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    if let Some(span) = e.span() {
        let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[span.start..]
            .find('\n')
            .map_or(text.len(), |i| span.start + i);
        let line = text[line_start..line_end].trim();
        let key = line.split('=').next().unwrap_or(line).trim();
        let lineno = text[..span.start].matches('\n').count() + 1;
        return format!("{key} (line {lineno})");
    }
    "-".into()
}

/// Every `*.toml` scenario under `dir` (not recursive), by file name.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const MINIMAL: &str = r#"
name = "t"
description = "d"
covers = ["FM-ENGINE-CRASH"]
[topology]
engines = 2
db_replicas = 1
rpc_endpoints = 2
[workload]
tokens = 1
operations = 4
submit_window_s = 10
[durations]
fault_phase_s = 20
liveness_bound_s = 60
[[faults]]
kind = "engine_crash"
node = "engine-1"
at_s = 5
restart_after_s = 3
"#;

    #[test]
    fn minimal_scenario_parses() {
        let s = Scenario::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(s.faults.len(), 1);
        assert_eq!(s.faults[0].kind(), FaultKind::EngineCrash);
        assert_eq!(s.topology.replication, Replication::Sync);
    }

    fn bad(text: &str) -> ScenarioError {
        Scenario::parse(text, "bad.toml").expect_err("must be rejected")
    }

    #[test]
    fn unknown_field_is_named() {
        let e = bad(&MINIMAL.replace("engines = 2", "engines = 2\nengnies = 3"));
        assert_eq!(e.file, "bad.toml");
        assert_eq!(e.field, "engnies");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_fault_kind_is_named() {
        let e = bad(&MINIMAL.replace("\"engine_crash\"", "\"engine_explode\""));
        assert!(e.reason.contains("engine_explode"), "{e}");
    }

    #[test]
    fn unknown_node_is_named() {
        let e = bad(&MINIMAL.replace("\"engine-1\"", "\"engine-7\""));
        assert_eq!(e.field, "faults[0].node");
        assert!(e.reason.contains("engine-7"), "{e}");
    }

    #[test]
    fn impossible_topology_is_rejected() {
        let e = bad(&MINIMAL.replace("engines = 2", "engines = 0"));
        assert_eq!(e.field, "topology.engines");
        let text = MINIMAL.replace("db_replicas = 1", "db_replicas = 0")
            + "[[faults]]\nkind = \"db_failover\"\nat_s = 1\n";
        let e = bad(&text);
        assert_eq!(e.field, "faults[1].kind");
        assert!(e.reason.contains("db_replicas"), "{e}");
    }

    #[test]
    fn recovery_and_data_loss_targets_are_checked_and_named() {
        let with = |extra: &str| format!("{MINIMAL}[expect]\n{extra}\n");
        let e = bad(&with("max_recovery_s = 0"));
        assert_eq!(e.field, "expect.max_recovery_s");
        assert!(e.reason.contains("(0, 86400]"), "{e}");
        let e = bad(&with("max_data_loss_s = 1e9"));
        assert_eq!(e.field, "expect.max_data_loss_s");
        let e = bad(&with("deployment = \"hot-cold\""));
        assert!(e.reason.contains("hot-cold"), "{e}");
        let s = Scenario::parse(
            &with("deployment = \"hot-warm\"\nmax_recovery_s = 30"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(s.expect.max_recovery_s, Some(30.0));
        assert_eq!(
            s.expect.deployment,
            Some(crate::promise::Deployment::HotWarm)
        );
    }

    #[test]
    fn fault_after_the_fault_phase_is_rejected() {
        let e = bad(&MINIMAL.replace("at_s = 5", "at_s = 25"));
        assert_eq!(e.field, "faults[0].at_s");
    }

    #[test]
    fn unknown_catalog_id_and_invariant_are_rejected() {
        let e = bad(&MINIMAL.replace("FM-ENGINE-CRASH", "FM-NOPE"));
        assert_eq!(e.field, "covers[0]");
        let e = bad(&MINIMAL.replace("covers = [", "invariants = [\"durabilty\"]\ncovers = ["));
        assert_eq!(e.field, "invariants[0]");
    }

    #[test]
    fn random_schedule_is_a_function_of_the_seed() {
        let text = format!(
            "{MINIMAL}\n[random]\nrate_per_min = {{ engine_crash = 6.0, rpc_down = 6.0 }}\nwindow_s = [0, 20]\n"
        );
        let s = Scenario::parse(&text, "r.toml").unwrap();
        assert_eq!(s.schedule(1), s.schedule(1));
        assert_ne!(s.schedule(1), s.schedule(2));
        let sched = s.schedule(1);
        assert!(sched.windows(2).all(|w| w[0].at_s() <= w[1].at_s()));
        assert!(sched.iter().all(|f| f.at_s() < 20.0));
    }

    #[test]
    fn rpc_error_codes_are_validated_and_drawn() {
        let fault = |code: &str| {
            format!(
                "{MINIMAL}\n[[faults]]\nkind = \"rpc_error\"\nendpoint = \"rpc\"\nat_s = 1\n{code}"
            )
        };
        let s = Scenario::parse(&fault("code = -32000\n"), "c.toml").unwrap();
        assert!(matches!(
            s.faults[1],
            Fault::RpcError {
                code: Some(-32000),
                ..
            }
        ));
        let e = bad(&fault("code = -32602\n"));
        assert_eq!(e.field, "faults[1].code");
        assert!(
            e.reason.contains("-32602") && e.reason.contains("-32005"),
            "{e}"
        );
        // Random draws answer codes real nodes and providers answer, each of them over seeds.
        let text = format!(
            "{MINIMAL}\n[random]\nrate_per_min = {{ rpc_error = 30.0 }}\nwindow_s = [0, 20]\n"
        );
        let s = Scenario::parse(&text, "r.toml").unwrap();
        let mut drawn = std::collections::BTreeSet::new();
        for seed in 1..20 {
            for f in s.schedule(seed) {
                if let Fault::RpcError { code, .. } = f {
                    drawn.insert(code.expect("a drawn code"));
                }
            }
        }
        assert_eq!(
            drawn,
            RPC_ERROR_CODES.iter().copied().collect(),
            "every code is drawn"
        );
    }

    #[test]
    fn a_stale_fork_names_reads_only() {
        let fault = |extra: &str| {
            format!(
                "{MINIMAL}\n[[faults]]\nkind = \"rpc_stale_fork\"\nendpoint = \"rpc-0\"\nat_s = 1\nfor_s = 2\n{extra}"
            )
        };
        let s = Scenario::parse(
            &fault("methods = [\"eth_getTransactionReceipt\"]\ncache = true\n"),
            "s.toml",
        )
        .unwrap();
        assert!(matches!(
            &s.faults[1],
            Fault::RpcStaleFork { methods: Some(m), cache: true, .. } if m == &["eth_getTransactionReceipt"]
        ));
        // Every read by default, no cache: the fields are left out when written back.
        let s = Scenario::parse(&fault(""), "s.toml").unwrap();
        let text = toml::to_string(&s.faults[1]).unwrap();
        assert!(
            !text.contains("methods") && !text.contains("cache"),
            "{text}"
        );
        // A send is not a read a stale backend answers; an empty list says nothing.
        let e = bad(&fault("methods = [\"eth_sendRawTransaction\"]\n"));
        assert_eq!(e.field, "faults[1].methods");
        assert!(
            e.reason.contains("eth_sendRawTransaction") && e.reason.contains("eth_call"),
            "{e}"
        );
        let e = bad(&fault("methods = []\n"));
        assert_eq!(e.field, "faults[1].methods");
        // A valid list still needs an endpoint that exists.
        let e = bad(&fault("methods = [\"eth_call\"]\n").replace("rpc-0", "rpc-9"));
        assert_eq!(e.field, "faults[1].endpoint");
    }

    #[test]
    fn always_enabled_fault_points_are_validated() {
        let with =
            |always: &str| format!("{MINIMAL}\n[fault_points]\nenable_probability = 0\n{always}");
        let ok = with(
            "[[fault_points.always]]\nname = \"fp.notify.after_write\"\nfiring = \"fail\"\nmax_fires = 3\n",
        );
        let s = Scenario::parse(&ok, "f.toml").unwrap();
        let a = &s.fault_points.as_ref().unwrap().always[0];
        assert_eq!(
            (a.firing, a.max_fires, a.fire_probability),
            (Firing::Fail, Some(3), 1.0)
        );
        // Nothing enabled at all.
        let e = bad(&with(""));
        assert_eq!(e.field, "fault_points.enable_probability");
        let e = bad(&with("[[fault_points.always]]\nname = \"fp.nope\"\n"));
        assert_eq!(e.field, "fault_points.always[0].name");
        assert!(e.reason.contains("fp.notify.after_write"), "{e}");
        // A site with no transient error cannot be made to fail.
        let e = bad(&with(
            "[[fault_points.always]]\nname = \"fp.retry.before_write\"\nfiring = \"fail\"\n",
        ));
        assert_eq!(e.field, "fault_points.always[0].firing");
        let e = bad(&with(
            "[[fault_points.always]]\nname = \"fp.nonce.heal\"\nfire_probability = 1.5\n",
        ));
        assert_eq!(e.field, "fault_points.always[0].fire_probability");
        let e = bad(&with(
            "[[fault_points.always]]\nname = \"fp.nonce.heal\"\nmax_fires = 0\n",
        ));
        assert_eq!(e.field, "fault_points.always[0].max_fires");
        let twice = "[[fault_points.always]]\nname = \"fp.nonce.heal\"\n";
        let e = bad(&with(&format!("{twice}{twice}")));
        assert_eq!(e.field, "fault_points.always[1].name");
    }

    /// Always-enabled fault points act as given: a `fail` one fails every time it fires, up to
    /// `max_fires`; the drawn ones keep their draws.
    #[cfg(madsim)]
    #[test]
    fn always_enabled_fault_points_fire_as_given() {
        use dalp_engine::probe::sim;
        sim::reset();
        let drawn = sim::arm(7, 0.5);
        sim::arm_always(
            "fp.notify.after_write",
            sim::Enabled {
                fire_probability: 1.0,
                firing: sim::Firing::Fail,
                max_fires: Some(2),
            },
        )
        .unwrap();
        let actions: Vec<_> = (0..4)
            .map(|_| sim::fault("fp.notify.after_write"))
            .collect();
        assert_eq!(
            actions,
            [
                sim::Action::Fail,
                sim::Action::Fail,
                sim::Action::Continue,
                sim::Action::Continue
            ]
        );
        let armed = sim::armed();
        for (k, v) in drawn.iter().filter(|(k, _)| *k != "fp.notify.after_write") {
            assert_eq!(armed.get(k), Some(v), "{k}");
        }
        assert!(sim::arm_always(
            "fp.retry.before_write",
            sim::Enabled {
                fire_probability: 1.0,
                firing: sim::Firing::Fail,
                max_fires: None,
            },
        )
        .is_err());
        sim::reset();
    }

    #[test]
    fn mempool_and_drain_balance_are_parsed() {
        let text = MINIMAL.replace("rpc_endpoints = 2", "rpc_endpoints = 2\nmempool = \"geth\"")
            + "[[faults]]\nkind = \"signer_drain\"\nat_s = 1\nbalance_gwei = 2000000\n";
        let s = Scenario::parse(&text, "m.toml").unwrap();
        assert_eq!(s.topology.mempool, Mempool::Geth);
        assert!(matches!(
            s.faults[1],
            Fault::SignerDrain {
                balance_gwei: Some(2_000_000),
                ..
            }
        ));
        assert_eq!(
            Scenario::parse(MINIMAL, "m.toml").unwrap().topology.mempool,
            Mempool::Anvil
        );
        let e = bad(&MINIMAL.replace(
            "rpc_endpoints = 2",
            "rpc_endpoints = 2\nmempool = \"erigon\"",
        ));
        assert!(e.reason.contains("erigon"), "{e}");
    }

    #[test]
    fn an_issuance_cap_below_twice_the_initial_supply_is_refused() {
        let with = |cap: u64| {
            MINIMAL.replace(
                "[workload]\n",
                &format!("[workload]\nmax_balance = {cap}\n"),
            )
        };
        assert_eq!(
            Scenario::parse(&with(MIN_ISSUANCE_CAP), "m.toml")
                .unwrap()
                .workload
                .max_balance,
            MIN_ISSUANCE_CAP
        );
        let e = bad(&with(MIN_ISSUANCE_CAP - 1));
        assert_eq!(e.field, "workload.max_balance", "{e}");
        assert!(e.reason.contains("twice the initial supply"), "{e}");
        assert_eq!(
            Scenario::parse(MINIMAL, "m.toml")
                .unwrap()
                .workload
                .max_balance,
            0
        );
    }

    #[test]
    fn balance_cap_defaults_to_one_and_refuses_zero() {
        let text = format!("{MINIMAL}\n[[faults]]\nkind = \"balance_cap\"\nat_s = 1\nfor_s = 2\n");
        let s = Scenario::parse(&text, "m.toml").unwrap();
        assert!(matches!(
            s.faults.last(),
            Some(Fault::BalanceCap { cap: 1, for_s: Some(d), .. }) if *d == 2.0
        ));
        let e = bad(&format!("{text}cap = 0\n"));
        assert_eq!(e.field, "faults[1].cap", "{e}");
        assert!(e.reason.contains("at least 1"), "{e}");
    }

    #[test]
    fn unknown_random_kind_is_rejected() {
        let text =
            format!("{MINIMAL}\n[random]\nrate_per_min = {{ meteor = 1.0 }}\nwindow_s = [0, 20]\n");
        let e = bad(&text);
        assert_eq!(e.field, "random.rate_per_min.meteor");
    }
}

/// Hostile and extreme numbers in every numeric field: a file either loads with a clear error
/// or describes a run the simulation can represent and finish (bounded schedule, plan, times).
#[cfg(test)]
mod hostile_numbers {
    use super::*;
    use proptest::prelude::*;

    /// Each placeholder of [`TEMPLATE`] and a sane value for it.
    const FIELDS: &[(&str, &str)] = &[
        ("ENGINES", "2"),
        ("LAG", "100"),
        ("BLOCKS", "3"),
        ("BLOCK", "1000"),
        ("FINALITY", "2"),
        ("OPS", "10"),
        ("TOKENS", "1"),
        ("WINDOW", "10"),
        ("CTIMEOUT", "3000"),
        ("PHASE", "60"),
        ("LIVE", "60"),
        ("RATE", "1"),
        ("DUR", "5"),
        ("AT", "5"),
        ("FOR", "5"),
        ("SKEW", "100"),
        ("EXTRA", "100"),
        ("FEE", "100"),
        ("MINT", "1"),
    ];

    /// `TEMPLATE` with `values[i]` for field `i`, its sane value where `None`.
    fn fill(values: &[Option<String>]) -> String {
        // In the order above: longer names (BLOCKS) before their prefixes (BLOCK).
        let mut text = TEMPLATE.to_string();
        for (i, (name, sane)) in FIELDS.iter().enumerate() {
            let v = values.get(i).cloned().flatten();
            text = text.replace(name, v.as_deref().unwrap_or(sane));
        }
        text
    }

    const TEMPLATE: &str = r#"
name = "hostile"
description = "d"
[topology]
engines = ENGINES
rpc_endpoints = 2
replication_lag_ms = LAG
block_time_ms = BLOCK
finality_depth = FINALITY
[workload]
tokens = TOKENS
operations = OPS
submit_window_s = WINDOW
client_timeout_ms = CTIMEOUT
mix = { mint = MINT, transfer = 1 }
[durations]
fault_phase_s = PHASE
liveness_bound_s = LIVE
[random]
window_s = [0, 1]
duration_s = [1, DUR]
rate_per_min = { engine_crash = RATE, db_latency = RATE }
[[faults]]
kind = "clock_skew"
node = "engine-0"
skew_ms = SKEW
at_s = AT
for_s = FOR
[[faults]]
kind = "db_latency"
extra_ms = EXTRA
at_s = AT
[[faults]]
kind = "rpc_lag"
endpoint = "rpc-0"
blocks = BLOCKS
at_s = AT
[[faults]]
kind = "gas_spike"
base_fee_gwei = FEE
at_s = AT
"#;

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_string()),
            Just("1".to_string()),
            Just("-1".to_string()),
            Just("2".to_string()),
            Just("30".to_string()),
            Just("1e308".to_string()),
            Just("1e300".to_string()),
            Just("nan".to_string()),
            Just("inf".to_string()),
            Just("4294967295".to_string()),
            Just("18446744073709551615".to_string()),
            Just("9223372036854775807".to_string()),
            Just("-9223372036854775808".to_string()),
            Just("0.001".to_string()),
            (0u64..100_000).prop_map(|x| x.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn a_loaded_scenario_is_bounded_and_a_refused_one_names_its_field(
            values in proptest::collection::vec(proptest::option::weighted(0.25, number()), FIELDS.len()),
            seed in 0u64..1000,
        ) {
            let text = fill(&values);
            match Scenario::parse(&text, "hostile.toml") {
                Err(e) => {
                    prop_assert_eq!(e.file.as_str(), "hostile.toml");
                    prop_assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e}");
                }
                Ok(s) => {
                    let phase = s.durations.fault_phase_s;
                    prop_assert!(phase <= limits::SECONDS && s.durations.liveness_bound_s <= limits::SECONDS);
                    let sched = s.schedule(seed);
                    // Two kinds at most 600 a minute over the window, plus the four scheduled.
                    prop_assert!(sched.len() <= 2 * 600 + 4 + 10, "{} faults", sched.len());
                    for f in &sched {
                        prop_assert!(f.at_s().is_finite() && f.at_s() < phase);
                        prop_assert!(f.duration_s().is_none_or(|d| d.is_finite() && d <= limits::SECONDS));
                    }
                    let plan = crate::plan::plan(&s, seed);
                    prop_assert!(plan.len() as u64 <= u64::from(limits::OPERATIONS + limits::TOKENS));
                }
            }
        }
    }

    #[test]
    fn the_outside_probes_files_are_refused_with_their_field() {
        let base = fill(&[]);
        Scenario::parse(&base, "ok.toml").expect("the base is valid");
        for (from, to, field) in [
            (
                "rate_per_min = { engine_crash = 1,",
                "rate_per_min = { engine_crash = 1e300,",
                "random.rate_per_min.engine_crash",
            ),
            (
                "operations = 10",
                "operations = 4294967295",
                "workload.operations",
            ),
            (
                "fault_phase_s = 60",
                "fault_phase_s = 1e7",
                "durations.fault_phase_s",
            ),
            ("for_s = 5", "for_s = 1e308", "faults[0].for_s"),
            (
                "skew_ms = 100",
                "skew_ms = 9223372036854775807",
                "faults[0].skew_ms",
            ),
            (
                "extra_ms = 100",
                "extra_ms = 9223372036854775807",
                "faults[1].extra_ms",
            ),
        ] {
            assert!(base.contains(from), "{from}");
            let e = Scenario::parse(&base.replacen(from, to, 1), "bad.toml").unwrap_err();
            assert_eq!(e.field, field, "{to}: {e}");
        }
    }
}
