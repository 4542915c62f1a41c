//! The in-memory model of the engine's PostgreSQL database (`engine/migrations/0001_init.sql`)
//! and of every statement `PgStore` (`engine/src/store/pg.rs`) runs against it.
//!
//! One [`DbRequest`] per `Store` method; [`DbModel::apply`] executes it as one database
//! transaction at the database time `now_ms` (PostgreSQL's `now()` is the transaction's start
//! time, so one `now_ms` per request is exact) and returns the reply `PgStore` would return, or
//! the same [`EngineError`] variant with the same fields.
//!
//! # Contract
//!
//! * **Deterministic**: the result and the new state are a function of (state, request,
//!   `now_ms`) only. Every table is a `BTreeMap`/`BTreeSet`; nothing reads a clock, a random
//!   source or a hash map's order.
//! * **Atomic**: every statement's checks run before anything is touched, so an `Err` leaves
//!   the data ([`DbModel::tables`] and [`DbModel::sequences`]) unchanged — with one exception
//!   that pg.rs itself makes: `requeue` of a workflow that is not dead-lettered **commits** its
//!   "rejected" audit row and then returns `Err(Invalid)` (`Err(NotFound)` for
//!   an unknown workflow). (The inspection counter
//!   [`DbModel::fenced_writes`] also counts rejected fenced writes.)
//!
//!   *Sequences*: PostgreSQL does not roll a `bigserial` back with an aborted transaction, so a
//!   failed insert that already drew its value leaves a gap (`create_tx` or `adopt_orphan`
//!   hitting the `transactions_live_step` unique index burns a `transactions.id`; `set_tx_state`
//!   on a missing transaction burns a `tx_events.seq`). **The model deliberately does not mimic
//!   this**: it draws a value only when the insert succeeds, so that a replica which applies only
//!   the committed requests stays identical to its primary (a burnt id on the primary but not on
//!   the replica would make the next `create_tx` return different ids on the two). Consequence
//!   for a differential test against a real `PgStore`: transaction ids can differ after a 23505,
//!   and nothing else observable does (`tx_events.seq` is never read by the engine); the test
//!   (`tests/tests/store_conformance.rs`) checks that PostgreSQL's ids are the model's plus the
//!   number burnt.
//!
//!   Replication rule: ship exactly the requests for which [`DbModel::committed`] is true (every
//!   successful write, plus the refused `requeue`), in order, with their `now_ms`; replaying them
//!   gives each replica the primary's data ([`DbModel::same_data`]), and each replayed request
//!   returns what it returned on the primary (`Ok`, or that `requeue`'s refusal).
//! * **Serial**: the model executes one transaction at a time, so `FOR UPDATE` waits and
//!   `SKIP LOCKED` skips never happen, and the concurrent-insert branch of `submit` (a live key
//!   inserted by a concurrent transaction) is unreachable.
//!
//! # PostgreSQL behaviour mirrored
//!
//! * `BIGINT`/`INT` columns: values the engine binds with `as i64` are stored as `i64` and
//!   compared as `i64` (a `u64` above `i64::MAX` wraps negative, exactly as the bound value
//!   does). `fencing_token + 1`, `attempts + 1`, `step + 1` overflow with SQLSTATE 22003.
//! * `LIMIT` with a negative value (a `usize` above `i64::MAX` cast to `i64`) fails with 2201W.
//! * Text and JSONB parameters: a NUL character is refused (22021 for `TEXT`, 22P05 for a
//!   `\u0000` escape in `JSONB`), checked in parameter order at the statement that binds it.
//! * `NULL` vs JSON `null`: `Option<Value>` `None` is SQL `NULL`, `Some(Value::Null)` is the JSONB
//!   value `null` (which `COALESCE` keeps and which decodes back as `Some(Null)`).
//! * `ORDER BY` clauses are reproduced literally (including ties on timestamps, broken by the
//!   next sort key); timestamps are milliseconds (PostgreSQL has microseconds, the simulation's
//!   clock has milliseconds).
//! * `fetch_one` finding no row is sqlx's `RowNotFound`, which pg.rs maps to
//!   `Internal("database: no rows returned by a query that expected to return at least one row")`.
//! * Foreign keys (`tx_broadcasts.tx_id`, `tx_events.tx_id`) and the partial unique index
//!   `transactions_live_step` fail with 23503 / 23505 and PostgreSQL's messages.
//!
//! # Known deviations
//!
//! * Sequences do not burn a value on a failed insert (see *Atomic* above).
//! * Durations are carried as whole milliseconds in `u64` and added with saturation; PostgreSQL
//!   would fail with "interval out of range" / "timestamp out of range" for durations of
//!   hundreds of thousands of years.
//! * `allocate_nonce`'s `nonce + 1` is Rust arithmetic in pg.rs (panics in debug builds at
//!   `i64::MAX`); the model returns `Internal` instead of panicking the database node.
//! * `index_block` with an event whose `block_hash` differs from the block's: pg.rs panics in the
//!   engine (`assert_eq!`) before committing; [`super::StoreOver`] asserts the same way before
//!   sending, and the model itself refuses the request with `Internal` and no change.
//! * JSONB normalisation (key order, number formatting) is not modelled: values are kept as
//!   `serde_json::Value` (whose maps are sorted), which compares equal to what sqlx decodes.

use super::tracked::Tracked;
use alloy_primitives::{Address, Bytes, B256, U256, U512};
use dalp_engine::error::EngineError;
use dalp_engine::store::{
    foreign_tx, requeue_refused, workflow_ended, AuditEntry, Broadcast, Claim, DeadLetter, Fees,
    FeesView, Fence, IndexerCheckpoint, JournalEntry, NewWorkflow, NonceHold, NonceView, Orphan,
    Stats, Submitted, TokenEvent, TxIntent, TxRecord, TxState, WorkflowId, WorkflowRecord,
    WorkflowStatus,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

type Result<T> = std::result::Result<T, EngineError>;

// ---------------------------------------------------------------------------------------------
// Requests and replies
// ---------------------------------------------------------------------------------------------

/// One `Store` call with owned arguments: what a client sends to the simulated database node,
/// what the primary ships to its replicas, and what a differential test replays against both the
/// model and a real `PgStore` (see [`super::call_store`]).
#[derive(Clone, Debug)]
pub enum DbRequest {
    Submit {
        new: NewWorkflow,
        window_ms: u64,
    },
    Workflow {
        id: WorkflowId,
    },
    Journal {
        id: WorkflowId,
    },
    Claim {
        node: String,
        lease_ms: u64,
        limit: usize,
        /// The claimer's random identity for this claim (`Fence::lease_id`).
        lease_id: i64,
        /// Rows another session holds locked, which `FOR UPDATE SKIP LOCKED` passes over. The
        /// server executing the claim fills it in before applying and logging, so replicas
        /// replay the outcome the primary chose; clients send it empty.
        skip_locked: Vec<WorkflowId>,
    },
    RenewLease {
        fence: Fence,
        lease_ms: u64,
    },
    Release {
        fence: Fence,
    },
    CompleteStep {
        fence: Fence,
        step: i32,
        name: String,
        output: Value,
        result: Option<Value>,
    },
    ScheduleRetry {
        fence: Fence,
        step: i32,
        name: String,
        error: Value,
        delay_ms: u64,
    },
    Fail {
        fence: Fence,
        step: i32,
        name: String,
        error: Value,
        dead_letter: bool,
    },
    DeadLetters {
        limit: i64,
    },
    Requeue {
        id: WorkflowId,
        actor: String,
        reason: String,
    },
    Audit {
        entry: AuditEntry,
    },
    AuditLog {
        limit: i64,
    },
    TxForStep {
        workflow: WorkflowId,
        step: i32,
    },
    TxsForWorkflow {
        workflow: WorkflowId,
    },
    TxByNonce {
        signer: Address,
        chain_id: u64,
        nonce: u64,
    },
    NonceHolds {
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    },
    NonceFillers {
        signer: Address,
        chain_id: u64,
        nonce: u64,
    },
    RecordFiller {
        signer: Address,
        chain_id: u64,
        signed: Broadcast,
    },
    NamedNonces {
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    },
    RecordForeign {
        signer: Address,
        chain_id: u64,
        nonce: u64,
        hash: B256,
    },
    NonceView {
        signer: Address,
        chain_id: u64,
        tag: B256,
    },
    RecordOrphans {
        signer: Address,
        chain_id: u64,
        orphans: Vec<Orphan>,
    },
    AdoptOrphan {
        fence: Fence,
        step: i32,
        intent: TxIntent,
        signed: Broadcast,
    },
    CreateTx {
        fence: Fence,
        step: i32,
        intent: TxIntent,
        fees: Fees,
        chain_nonce: u64,
    },
    RecordSigned {
        fence: Fence,
        tx_id: i64,
        signed: Broadcast,
    },
    SetTxState {
        fence: Fence,
        tx_id: i64,
        state: TxState,
        detail: Option<String>,
        receipt: Option<Value>,
    },
    ReassignNonce {
        fence: Fence,
        tx_id: i64,
        chain_nonce: u64,
    },
    AbandonTx {
        fence: Fence,
        tx_id: i64,
        state: TxState,
        release: bool,
    },
    ResyncNonce {
        signer: Address,
        chain_id: u64,
        chain_nonce: u64,
    },
    Notify {
        fence: Fence,
        kind: String,
        payload: Value,
    },
    IndexerCheckpoint {
        chain_id: u64,
    },
    IndexedBlockHash {
        chain_id: u64,
        number: u64,
    },
    IndexBlock {
        chain_id: u64,
        /// The checkpoint the block extends, as the indexer read it.
        extends: Option<(u64, B256)>,
        number: u64,
        hash: B256,
        events: Vec<TokenEvent>,
        finalized: u64,
    },
    RollbackIndex {
        chain_id: u64,
        keep: u64,
    },
    IndexedBalances {
        chain_id: u64,
        contract: Address,
    },
    Stats {
        stalled_after_ms: u64,
    },
}

impl DbRequest {
    /// Whether the request may change the database (and so must be replicated). Reads never
    /// change anything, not even a sequence.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            DbRequest::Workflow { .. }
                | DbRequest::Journal { .. }
                | DbRequest::DeadLetters { .. }
                | DbRequest::AuditLog { .. }
                | DbRequest::TxForStep { .. }
                | DbRequest::TxsForWorkflow { .. }
                | DbRequest::TxByNonce { .. }
                | DbRequest::NonceHolds { .. }
                | DbRequest::NonceFillers { .. }
                | DbRequest::NamedNonces { .. }
                | DbRequest::NonceView { .. }
                | DbRequest::IndexerCheckpoint { .. }
                | DbRequest::IndexedBlockHash { .. }
                | DbRequest::IndexedBalances { .. }
                | DbRequest::Stats { .. }
        )
    }

    /// The `Store` method's name, for traces.
    pub fn name(&self) -> &'static str {
        match self {
            DbRequest::Submit { .. } => "submit",
            DbRequest::Workflow { .. } => "workflow",
            DbRequest::Journal { .. } => "journal",
            DbRequest::Claim { .. } => "claim",
            DbRequest::RenewLease { .. } => "renew_lease",
            DbRequest::Release { .. } => "release",
            DbRequest::CompleteStep { .. } => "complete_step",
            DbRequest::ScheduleRetry { .. } => "schedule_retry",
            DbRequest::Fail { .. } => "fail",
            DbRequest::DeadLetters { .. } => "dead_letters",
            DbRequest::Requeue { .. } => "requeue",
            DbRequest::Audit { .. } => "audit",
            DbRequest::AuditLog { .. } => "audit_log",
            DbRequest::TxForStep { .. } => "tx_for_step",
            DbRequest::TxsForWorkflow { .. } => "txs_for_workflow",
            DbRequest::TxByNonce { .. } => "tx_by_nonce",
            DbRequest::NonceHolds { .. } => "nonce_holds",
            DbRequest::NonceFillers { .. } => "nonce_fillers",
            DbRequest::RecordFiller { .. } => "record_filler",
            DbRequest::NamedNonces { .. } => "named_nonces",
            DbRequest::RecordForeign { .. } => "record_foreign",
            DbRequest::NonceView { .. } => "nonce_view",
            DbRequest::RecordOrphans { .. } => "record_orphans",
            DbRequest::AdoptOrphan { .. } => "adopt_orphan",
            DbRequest::CreateTx { .. } => "create_tx",
            DbRequest::RecordSigned { .. } => "record_signed",
            DbRequest::SetTxState { .. } => "set_tx_state",
            DbRequest::ReassignNonce { .. } => "reassign_nonce",
            DbRequest::AbandonTx { .. } => "abandon_tx",
            DbRequest::ResyncNonce { .. } => "resync_nonce",
            DbRequest::Notify { .. } => "notify",
            DbRequest::IndexerCheckpoint { .. } => "indexer_checkpoint",
            DbRequest::IndexedBlockHash { .. } => "indexed_block_hash",
            DbRequest::IndexBlock { .. } => "index_block",
            DbRequest::RollbackIndex { .. } => "rollback_index",
            DbRequest::IndexedBalances { .. } => "indexed_balances",
            DbRequest::Stats { .. } => "stats",
        }
    }

    /// The workflow whose fence the request presents, if it is a fenced write.
    pub fn fence(&self) -> Option<&Fence> {
        match self {
            DbRequest::RenewLease { fence, .. }
            | DbRequest::Release { fence }
            | DbRequest::CompleteStep { fence, .. }
            | DbRequest::ScheduleRetry { fence, .. }
            | DbRequest::Fail { fence, .. }
            | DbRequest::CreateTx { fence, .. }
            | DbRequest::RecordSigned { fence, .. }
            | DbRequest::SetTxState { fence, .. }
            | DbRequest::ReassignNonce { fence, .. }
            | DbRequest::AbandonTx { fence, .. }
            | DbRequest::AdoptOrphan { fence, .. }
            | DbRequest::Notify { fence, .. } => Some(fence),
            _ => None,
        }
    }
}

/// What a request returns: one variant per `Store` return type.
#[derive(Clone, Debug)]
pub enum DbReply {
    /// `()`: renew_lease, release, complete_step, schedule_retry, fail, audit, set_tx_state,
    /// abandon_tx, index_block.
    Unit,
    Submitted(Submitted),
    /// `workflow`.
    Workflow(Option<WorkflowRecord>),
    /// `requeue`.
    WorkflowRecord(WorkflowRecord),
    Journal(Vec<JournalEntry>),
    Claims(Vec<Claim>),
    DeadLetters(Vec<DeadLetter>),
    AuditLog(Vec<AuditEntry>),
    /// create_tx, record_signed, reassign_nonce.
    Tx(TxRecord),
    /// tx_for_step.
    OptTx(Option<TxRecord>),
    /// txs_for_workflow.
    Txs(Vec<TxRecord>),
    /// nonce_holds.
    Holds(Vec<NonceHold>),
    /// notify.
    Bool(bool),
    /// resync_nonce, rollback_index.
    U64(u64),
    Checkpoint(Option<IndexerCheckpoint>),
    OptHash(Option<B256>),
    Balances(Vec<(Address, U256)>),
    Stats(Stats),
    /// nonce_fillers.
    Broadcasts(Vec<Broadcast>),
    /// named_nonces.
    Nonces(Vec<u64>),
    /// nonce_view.
    NonceView(NonceView),
}

impl DbReply {
    /// The variant's name (for error messages and traces).
    pub fn variant(&self) -> &'static str {
        match self {
            DbReply::Unit => "Unit",
            DbReply::Submitted(_) => "Submitted",
            DbReply::Workflow(_) => "Workflow",
            DbReply::WorkflowRecord(_) => "WorkflowRecord",
            DbReply::Journal(_) => "Journal",
            DbReply::Claims(_) => "Claims",
            DbReply::DeadLetters(_) => "DeadLetters",
            DbReply::AuditLog(_) => "AuditLog",
            DbReply::Tx(_) => "Tx",
            DbReply::OptTx(_) => "OptTx",
            DbReply::Txs(_) => "Txs",
            DbReply::Holds(_) => "Holds",
            DbReply::Bool(_) => "Bool",
            DbReply::U64(_) => "U64",
            DbReply::Checkpoint(_) => "Checkpoint",
            DbReply::OptHash(_) => "OptHash",
            DbReply::Balances(_) => "Balances",
            DbReply::Stats(_) => "Stats",
            DbReply::Broadcasts(_) => "Broadcasts",
            DbReply::Nonces(_) => "Nonces",
            DbReply::NonceView(_) => "NonceView",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// A row of `workflows`. Times are database milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowRow {
    pub id: i64,
    pub kind: String,
    pub scope: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub input: Value,
    pub status: WorkflowStatus,
    pub current_step: i32,
    pub state: Value,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub attempts: i32,
    pub next_attempt_at_ms: u64,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<u64>,
    pub fencing_token: i64,
    /// The current claim's `lease_id` (0 before the first claim, as the column's default).
    pub lease_id: i64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl WorkflowRow {
    /// What `row_to_workflow` reads (`WF_COLS`).
    pub fn record(&self) -> WorkflowRecord {
        WorkflowRecord {
            id: self.id,
            kind: self.kind.clone(),
            idempotency_key: self.idempotency_key.clone(),
            input: self.input.clone(),
            status: self.status,
            current_step: self.current_step,
            state: self.state.clone(),
            result: self.result.clone(),
            error: self.error.clone(),
            attempts: self.attempts,
            fencing_token: self.fencing_token,
            lease_owner: self.lease_owner.clone(),
        }
    }

    /// `lease_expires_at IS NULL OR lease_expires_at < now()`.
    fn lease_free(&self, now_ms: u64) -> bool {
        self.lease_expires_at_ms.is_none_or(|t| t < now_ms)
    }

    fn runnable_status(&self) -> bool {
        matches!(
            self.status,
            WorkflowStatus::Pending | WorkflowStatus::Running
        )
    }
}

/// A row of `idempotency_keys`, keyed by (scope, key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKeyRow {
    pub workflow_id: i64,
    pub expires_at_ms: u64,
}

/// A row of `journal`, keyed by (workflow_id, seq); `seq` is one global sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRow {
    pub workflow_id: i64,
    pub seq: i64,
    pub step_index: i32,
    pub step_name: String,
    pub event: String,
    pub detail: Option<Value>,
    pub fencing_token: i64,
    pub node: String,
    pub at_ms: u64,
}

impl JournalRow {
    pub fn entry(&self) -> JournalEntry {
        JournalEntry {
            seq: self.seq,
            step_index: self.step_index,
            step_name: self.step_name.clone(),
            event: self.event.clone(),
            detail: self.detail.clone(),
            fencing_token: self.fencing_token,
            node: self.node.clone(),
        }
    }
}

/// A row of `nonces`, keyed by (signer, chain_id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonceRow {
    pub next_nonce: i64,
    pub updated_at_ms: u64,
}

/// A row of `transactions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxRow {
    pub id: i64,
    pub workflow_id: i64,
    pub step_index: i32,
    pub signer: Address,
    pub chain_id: i64,
    pub nonce: i64,
    pub state: TxState,
    pub to: Option<Address>,
    pub input: Bytes,
    pub value: U256,
    pub gas_limit: i64,
    pub max_fee: u128,
    pub priority_fee: u128,
    pub raw: Option<Bytes>,
    pub hash: Option<B256>,
    pub receipt: Option<Value>,
    pub failure: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl TxRow {
    /// In the partial unique index `transactions_live_step`.
    pub fn is_live(&self) -> bool {
        is_live_state(self.state)
    }

    fn record(&self, broadcasts: Vec<Broadcast>) -> TxRecord {
        TxRecord {
            id: self.id,
            workflow_id: self.workflow_id,
            step_index: self.step_index,
            intent_signer: self.signer,
            chain_id: self.chain_id as u64,
            nonce: self.nonce as u64,
            state: self.state,
            to: self.to,
            input: self.input.clone(),
            value: self.value,
            gas_limit: self.gas_limit as u64,
            fees: FeesView {
                max_fee_per_gas: self.max_fee,
                max_priority_fee_per_gas: self.priority_fee,
            },
            raw: self.raw.clone(),
            hash: self.hash,
            broadcasts,
            receipt: self.receipt.clone(),
        }
    }
}

/// `state NOT IN ('FAILED', 'DEAD_LETTER', 'CANCELLED')`.
pub fn is_live_state(s: TxState) -> bool {
    !matches!(
        s,
        TxState::Failed | TxState::DeadLetter | TxState::Cancelled
    )
}

/// A row of `tx_broadcasts`, keyed by (tx_id, tx_hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastRow {
    pub nonce: i64,
    pub raw: Bytes,
    pub max_fee: u128,
    pub priority_fee: u128,
    pub created_at_ms: u64,
}

/// A row of `tx_events`, keyed by (tx_id, seq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxEventRow {
    pub state: TxState,
    pub detail: Option<String>,
    pub at_ms: u64,
}

/// A row of `dead_letters`, keyed by workflow_id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRow {
    pub step_index: i32,
    pub step_name: String,
    pub reason_code: String,
    pub reason: String,
    pub failed_at_ms: u64,
}

/// A row of `audit_log`, keyed by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub args: Value,
    pub reason: String,
    pub outcome: String,
}

impl AuditRow {
    pub fn entry(&self) -> AuditEntry {
        AuditEntry {
            actor: self.actor.clone(),
            action: self.action.clone(),
            args: self.args.clone(),
            reason: self.reason.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

/// A row of `nonce_fillers` (a gap filler the engine signed), keyed by hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillerRow {
    pub signer: Address,
    pub chain_id: i64,
    pub signed: Broadcast,
    pub created_at_ms: u64,
}

/// A row of `foreign_nonce_txs` (a transaction signed with the engine's key that it did not
/// send), keyed by hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignRow {
    pub signer: Address,
    pub chain_id: i64,
    pub nonce: i64,
    pub created_at_ms: u64,
}

/// A row of `orphan_txs` (a signed transaction of ours found on chain with no record), keyed by
/// hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanRow {
    pub signer: Address,
    pub chain_id: i64,
    pub tag: B256,
    pub signed: Broadcast,
    pub adopted_by: Option<i64>,
    pub created_at_ms: u64,
}

/// A row of `notifications`, keyed by (workflow_id, kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationRow {
    pub payload: Value,
    pub created_at_ms: u64,
}

/// A row of `indexer_checkpoint`, keyed by chain_id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRow {
    pub last_block: i64,
    pub last_hash: B256,
    pub finalized_block: i64,
    pub updated_at_ms: u64,
}

/// A row of `token_events`, keyed by (chain_id, block_hash, log_index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEventRow {
    pub block_number: i64,
    pub tx_hash: B256,
    pub contract: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
}

/// Every table of the schema, keyed by its primary key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub workflows: Tracked<i64, WorkflowRow>,
    /// (scope, idempotency_key) → row.
    pub idempotency_keys: BTreeMap<(String, String), IdempotencyKeyRow>,
    /// (workflow_id, seq) → row.
    pub journal: BTreeMap<(i64, i64), JournalRow>,
    /// (signer, chain_id) → row.
    pub nonces: Tracked<(Address, i64), NonceRow>,
    /// (signer, chain_id, nonce).
    pub nonce_holes: BTreeSet<(Address, i64, i64)>,
    pub transactions: Tracked<i64, TxRow>,
    /// (tx_id, tx_hash) → row.
    pub tx_broadcasts: BTreeMap<(i64, B256), BroadcastRow>,
    /// (tx_id, seq) → row.
    pub tx_events: BTreeMap<(i64, i64), TxEventRow>,
    pub dead_letters: BTreeMap<i64, DeadLetterRow>,
    pub audit_log: BTreeMap<i64, AuditRow>,
    /// (workflow_id, kind) → row.
    pub notifications: BTreeMap<(i64, String), NotificationRow>,
    /// tx_hash → gap filler (`nonce_fillers`).
    pub nonce_fillers: BTreeMap<B256, FillerRow>,
    /// tx_hash → orphan (`orphan_txs`).
    pub orphan_txs: BTreeMap<B256, OrphanRow>,
    /// tx_hash → foreign transaction (`foreign_nonce_txs`).
    pub foreign_nonce_txs: BTreeMap<B256, ForeignRow>,
    pub indexer_checkpoint: BTreeMap<i64, CheckpointRow>,
    /// (chain_id, number) → hash.
    pub indexed_blocks: BTreeMap<(i64, i64), B256>,
    /// (chain_id, block_hash, log_index) → row.
    pub token_events: BTreeMap<(i64, B256, i64), TokenEventRow>,
}

/// The last value each `bigserial` handed out (0 = never used; `nextval` returns last + 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequences {
    pub workflows: i64,
    pub journal: i64,
    pub transactions: i64,
    pub tx_events: i64,
    pub audit_log: i64,
}

/// The database: tables, sequences, and counters for the invariant checkers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbModel {
    pub tables: Tables,
    pub sequences: Sequences,
    /// Fenced writes rejected with `EngineError::Fenced` (inspection only).
    pub fenced_writes: u64,
    /// `release` calls that matched no row because the fence was stale (silently ignored, as in
    /// pg.rs).
    pub stale_releases: u64,
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL errors, as pg.rs maps them
// ---------------------------------------------------------------------------------------------

fn db_err(sqlstate: &str, message: impl Into<String>) -> EngineError {
    EngineError::Db {
        sqlstate: sqlstate.into(),
        message: message.into(),
    }
}

/// sqlx's `RowNotFound` through pg.rs's `map_err`.
pub fn row_not_found() -> EngineError {
    EngineError::Internal(
        "database: no rows returned by a query that expected to return at least one row".into(),
    )
}

fn unique_live_step() -> EngineError {
    db_err(
        "23505",
        "duplicate key value violates unique constraint \"transactions_live_step\"",
    )
}

fn fk_tx_id(table: &str) -> EngineError {
    db_err(
        "23503",
        format!(
            "insert or update on table \"{table}\" violates foreign key constraint \"{table}_tx_id_fkey\""
        ),
    )
}

fn int_out_of_range() -> EngineError {
    db_err("22003", "integer out of range")
}

/// `fencing_token + 1`: every end of a lease bumps the token (22003 past `i64::MAX`).
fn next_token(token: i64) -> Result<i64> {
    token.checked_add(1).ok_or_else(bigint_out_of_range)
}

fn bigint_out_of_range() -> EngineError {
    db_err("22003", "bigint out of range")
}

fn check_limit(limit: i64) -> Result<usize> {
    if limit < 0 {
        return Err(db_err("2201W", "LIMIT must not be negative"));
    }
    Ok(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// A `TEXT` parameter: PostgreSQL refuses NUL bytes.
fn text(s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(db_err(
            "22021",
            "invalid byte sequence for encoding \"UTF8\": 0x00",
        ));
    }
    Ok(())
}

/// A `JSONB` parameter: PostgreSQL refuses the `\u0000` escape (serde_json writes NUL as that).
fn jsonb(v: &Value) -> Result<()> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    if has_nul(v) {
        return Err(db_err("22P05", "unsupported Unicode escape sequence"));
    }
    Ok(())
}

fn opt_jsonb(v: Option<&Value>) -> Result<()> {
    v.map(jsonb).unwrap_or(Ok(()))
}

/// `now() + $n * interval '1 millisecond'`.
fn plus(now_ms: u64, ms: u64) -> u64 {
    now_ms.saturating_add(ms)
}

/// What `allocate_nonce` will do, computed before anything changes.
struct NoncePlan {
    key: (Address, i64),
    chain_nonce: i64,
    nonce: i64,
    /// `Some(next)` when the counter moves (no hole was taken).
    new_next: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

impl DbModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether applying `req` with this `result` committed something a replica must apply too:
    /// every successful write (an empty claim changes nothing, so it is left out), and the
    /// `requeue` refusal, whose audit row commits although the call returns `Err(Invalid)` or
    /// `Err(NotFound)`.
    /// Every other `Err` changed no data.
    pub fn committed(req: &DbRequest, result: &Result<DbReply>) -> bool {
        match result {
            Ok(DbReply::Claims(c)) => !c.is_empty(),
            Ok(_) => req.is_write(),
            Err(EngineError::Invalid(_) | EngineError::NotFound(_)) => {
                matches!(req, DbRequest::Requeue { .. })
            }
            Err(_) => false,
        }
    }

    /// The same rows and sequences (the inspection counters aside): what a replica that applied
    /// the primary's committed requests has.
    pub fn same_data(&self, other: &DbModel) -> bool {
        self.tables == other.tables && self.sequences == other.sequences
    }

    /// Execute one request as one transaction at database time `now_ms`.
    pub fn apply(&mut self, req: &DbRequest, now_ms: u64) -> Result<DbReply> {
        if !req.is_write() {
            return self.read(req, now_ms);
        }
        let out = self.write(req, now_ms);
        if let Err(EngineError::Fenced { .. }) = &out {
            self.fenced_writes += 1;
        }
        out
    }

    /// Execute a read-only request (anything else is refused with `Internal`).
    pub fn read(&self, req: &DbRequest, now_ms: u64) -> Result<DbReply> {
        let t = &self.tables;
        Ok(match req {
            DbRequest::Workflow { id } => {
                DbReply::Workflow(t.workflows.get(id).map(|w| w.record()))
            }
            DbRequest::Journal { id } => {
                DbReply::Journal(self.journal_rows(*id).map(JournalRow::entry).collect())
            }
            DbRequest::DeadLetters { limit } => {
                let limit = check_limit(*limit)?;
                let mut rows: Vec<(&i64, &DeadLetterRow)> = t.dead_letters.iter().collect();
                rows.sort_by_key(|(id, d)| (d.failed_at_ms, **id));
                DbReply::DeadLetters(
                    rows.into_iter()
                        .filter_map(|(id, d)| {
                            // JOIN workflows: the foreign key guarantees the row.
                            let w = t.workflows.get(id)?;
                            Some(DeadLetter {
                                workflow_id: *id,
                                kind: w.kind.clone(),
                                step_index: d.step_index,
                                step_name: d.step_name.clone(),
                                reason_code: d.reason_code.clone(),
                                reason: d.reason.clone(),
                            })
                        })
                        .take(limit)
                        .collect(),
                )
            }
            DbRequest::AuditLog { limit } => {
                let limit = check_limit(*limit)?;
                DbReply::AuditLog(
                    t.audit_log
                        .values()
                        .rev()
                        .take(limit)
                        .map(AuditRow::entry)
                        .collect(),
                )
            }
            DbRequest::TxForStep { workflow, step } => DbReply::OptTx(
                t.transactions
                    .values()
                    .find(|x| x.workflow_id == *workflow && x.step_index == *step && x.is_live())
                    .map(|x| self.load_tx(x)),
            ),
            DbRequest::TxsForWorkflow { workflow } => DbReply::Txs(
                t.transactions
                    .values()
                    .filter(|x| x.workflow_id == *workflow)
                    .map(|x| self.load_tx(x))
                    .collect(),
            ),
            DbRequest::TxByNonce {
                signer,
                chain_id,
                nonce,
            } => DbReply::OptTx(
                // `ORDER BY id DESC LIMIT 1` over the signed states.
                t.transactions
                    .values()
                    .rev()
                    .find(|x| {
                        x.signer == *signer
                            && x.chain_id == *chain_id as i64
                            && x.nonce == *nonce as i64
                            && matches!(
                                x.state,
                                TxState::Broadcasting | TxState::Confirming | TxState::Completed
                            )
                    })
                    .map(|x| self.load_tx(x)),
            ),
            DbRequest::NonceHolds {
                signer,
                chain_id,
                from,
                to,
            } => {
                // `ORDER BY nonce, id` over the live states; bounds clamped as PgStore binds them.
                let range = (*from).min(i64::MAX as u64) as i64..(*to).min(i64::MAX as u64) as i64;
                let mut live: Vec<&TxRow> = t
                    .transactions
                    .values()
                    .filter(|x| {
                        x.signer == *signer
                            && x.chain_id == *chain_id as i64
                            && range.contains(&x.nonce)
                            && matches!(
                                x.state,
                                TxState::Preparing
                                    | TxState::Broadcasting
                                    | TxState::Confirming
                                    | TxState::Completed
                            )
                    })
                    .collect();
                live.sort_by_key(|x| (x.nonce, x.id));
                DbReply::Holds(live.into_iter().map(|x| self.nonce_hold(x)).collect())
            }
            DbRequest::NonceView {
                signer,
                chain_id,
                tag,
            } => {
                let next_nonce = t
                    .nonces
                    .get(&(*signer, *chain_id as i64))
                    .map(|r| r.next_nonce as u64);
                // ORDER BY nonce, tx_hash LIMIT 1 over the unadopted rows with the tag.
                let orphan = t
                    .orphan_txs
                    .values()
                    .filter(|o| {
                        o.signer == *signer
                            && o.chain_id == *chain_id as i64
                            && o.tag == *tag
                            && o.adopted_by.is_none()
                    })
                    .min_by_key(|o| (o.signed.nonce as i64, o.signed.hash))
                    .map(|o| o.signed.clone());
                DbReply::NonceView(NonceView { next_nonce, orphan })
            }
            DbRequest::NonceFillers {
                signer,
                chain_id,
                nonce,
            } => {
                // ORDER BY created_at, tx_hash
                let mut rows: Vec<&FillerRow> = t
                    .nonce_fillers
                    .values()
                    .filter(|f| {
                        f.signer == *signer
                            && f.chain_id == *chain_id as i64
                            && f.signed.nonce == *nonce
                    })
                    .collect();
                rows.sort_by_key(|f| (f.created_at_ms, f.signed.hash));
                DbReply::Broadcasts(rows.into_iter().map(|f| f.signed.clone()).collect())
            }
            DbRequest::NamedNonces {
                signer,
                chain_id,
                from,
                to,
            } => {
                // The UNION of five tables' nonces in the range, ORDER BY 1 (distinct).
                let range = (*from).min(i64::MAX as u64) as i64..(*to).min(i64::MAX as u64) as i64;
                let c = *chain_id as i64;
                let mut named = BTreeSet::new();
                for x in t.transactions.values() {
                    if x.signer == *signer && x.chain_id == c && range.contains(&x.nonce) {
                        named.insert(x.nonce as u64);
                    }
                }
                for ((id, _), b) in &t.tx_broadcasts {
                    let theirs = t
                        .transactions
                        .get(id)
                        .is_some_and(|x| x.signer == *signer && x.chain_id == c);
                    if theirs && range.contains(&b.nonce) {
                        named.insert(b.nonce as u64);
                    }
                }
                let rows = t
                    .nonce_fillers
                    .values()
                    .map(|f| (f.signer, f.chain_id, f.signed.nonce as i64))
                    .chain(
                        t.orphan_txs
                            .values()
                            .map(|o| (o.signer, o.chain_id, o.signed.nonce as i64)),
                    )
                    .chain(
                        t.foreign_nonce_txs
                            .values()
                            .map(|f| (f.signer, f.chain_id, f.nonce)),
                    );
                for (s, ch, n) in rows {
                    if s == *signer && ch == c && range.contains(&n) {
                        named.insert(n as u64);
                    }
                }
                DbReply::Nonces(named.into_iter().collect())
            }
            DbRequest::IndexerCheckpoint { chain_id } => {
                DbReply::Checkpoint(t.indexer_checkpoint.get(&(*chain_id as i64)).map(|c| {
                    IndexerCheckpoint {
                        last_block: c.last_block as u64,
                        last_hash: c.last_hash,
                        finalized_block: c.finalized_block as u64,
                    }
                }))
            }
            DbRequest::IndexedBlockHash { chain_id, number } => DbReply::OptHash(
                t.indexed_blocks
                    .get(&(*chain_id as i64, *number as i64))
                    .copied(),
            ),
            DbRequest::IndexedBalances { chain_id, contract } => {
                DbReply::Balances(self.balances(*chain_id as i64, *contract)?)
            }
            DbRequest::Stats { stalled_after_ms } => {
                let mut s = Stats::default();
                let now = i128::from(now_ms);
                for w in t.workflows.values() {
                    if w.runnable_status() {
                        s.active += 1;
                        if i128::from(w.next_attempt_at_ms) < now - i128::from(*stalled_after_ms)
                            && w.lease_free(now_ms)
                        {
                            s.stalled += 1;
                        }
                    }
                    if w.status == WorkflowStatus::DeadLetter {
                        s.dead_letter += 1;
                    }
                }
                DbReply::Stats(s)
            }
            other => {
                return Err(EngineError::Internal(format!(
                    "{} is not a read-only request",
                    other.name()
                )))
            }
        })
    }

    fn write(&mut self, req: &DbRequest, now: u64) -> Result<DbReply> {
        match req {
            DbRequest::Submit { new, window_ms } => self.submit(new, *window_ms, now),
            DbRequest::Claim {
                node,
                lease_ms,
                limit,
                lease_id,
                skip_locked,
            } => self.claim(node, *lease_ms, *limit, *lease_id, skip_locked, now),
            DbRequest::RenewLease { fence, lease_ms } => self.renew_lease(fence, *lease_ms, now),
            DbRequest::Release { fence } => self.release(fence),
            DbRequest::CompleteStep {
                fence,
                step,
                name,
                output,
                result,
            } => self.complete_step(fence, *step, name, output, result.as_ref(), now),
            DbRequest::ScheduleRetry {
                fence,
                step,
                name,
                error,
                delay_ms,
            } => self.schedule_retry(fence, *step, name, error, *delay_ms, now),
            DbRequest::Fail {
                fence,
                step,
                name,
                error,
                dead_letter,
            } => self.fail_workflow(fence, *step, name, error, *dead_letter, now),
            DbRequest::Requeue { id, actor, reason } => self.requeue(*id, actor, reason, now),
            DbRequest::Audit { entry } => self.audit(entry, now),
            DbRequest::CreateTx {
                fence,
                step,
                intent,
                fees,
                chain_nonce,
            } => self.create_tx(fence, *step, intent, *fees, *chain_nonce, now),
            DbRequest::RecordSigned {
                fence,
                tx_id,
                signed,
            } => self.record_signed(fence, *tx_id, signed, now),
            DbRequest::SetTxState {
                fence,
                tx_id,
                state,
                detail,
                receipt,
            } => self.set_tx_state(
                fence,
                *tx_id,
                *state,
                detail.as_deref(),
                receipt.as_ref(),
                now,
            ),
            DbRequest::ReassignNonce {
                fence,
                tx_id,
                chain_nonce,
            } => self.reassign_nonce(fence, *tx_id, *chain_nonce, now),
            DbRequest::AbandonTx {
                fence,
                tx_id,
                state,
                release,
            } => self.abandon_tx(fence, *tx_id, *state, *release, now),
            DbRequest::RecordOrphans {
                signer,
                chain_id,
                orphans,
            } => Ok(self.record_orphans(*signer, *chain_id, orphans, now)),
            DbRequest::AdoptOrphan {
                fence,
                step,
                intent,
                signed,
            } => self.adopt_orphan(fence, *step, intent, signed, now),
            DbRequest::RecordFiller {
                signer,
                chain_id,
                signed,
            } => Ok(self.record_filler(*signer, *chain_id, signed, now)),
            DbRequest::RecordForeign {
                signer,
                chain_id,
                nonce,
                hash,
            } => {
                // INSERT … ON CONFLICT DO NOTHING (keyed by hash).
                self.tables
                    .foreign_nonce_txs
                    .entry(*hash)
                    .or_insert_with(|| ForeignRow {
                        signer: *signer,
                        chain_id: *chain_id as i64,
                        nonce: (*nonce).min(i64::MAX as u64) as i64,
                        created_at_ms: now,
                    });
                Ok(DbReply::Unit)
            }
            DbRequest::ResyncNonce {
                signer,
                chain_id,
                chain_nonce,
            } => Ok(self.resync_nonce(*signer, *chain_id, *chain_nonce, now)),
            DbRequest::Notify {
                fence,
                kind,
                payload,
            } => self.notify(fence, kind, payload, now),
            DbRequest::IndexBlock {
                chain_id,
                extends,
                number,
                hash,
                events,
                finalized,
            } => self.index_block(*chain_id, *extends, *number, *hash, events, *finalized, now),
            DbRequest::RollbackIndex { chain_id, keep } => {
                Ok(self.rollback_index(*chain_id, *keep, now))
            }
            read => Err(EngineError::Internal(format!(
                "{} is not a write request",
                read.name()
            ))),
        }
    }

    // -- statements shared by several operations ----------------------------------------------

    fn wf_mut(&mut self, id: i64) -> &mut WorkflowRow {
        self.tables
            .workflows
            .get_mut(&id)
            .expect("checked by the caller")
    }

    fn tx_mut(&mut self, id: i64) -> &mut TxRow {
        self.tables
            .transactions
            .get_mut(&id)
            .expect("checked by the caller")
    }

    /// `check_fence`: the workflow exists and its token is the fence's; returns the current step.
    fn check_fence(&self, fence: &Fence) -> Result<i32> {
        let Some(w) = self.tables.workflows.get(&fence.workflow_id) else {
            return Err(EngineError::Internal(format!(
                "workflow {} does not exist",
                fence.workflow_id
            )));
        };
        if !fence.holds(w.fencing_token, w.lease_id) {
            return Err(EngineError::Fenced {
                workflow_id: fence.workflow_id,
                ours: fence.token,
                current: w.fencing_token,
            });
        }
        Ok(w.current_step)
    }

    /// A fence proves the lease of its own workflow only: a transaction of another workflow is
    /// refused (a missing one is left to the statement's own error).
    fn check_tx_owner(&self, fence: &Fence, tx_id: i64) -> Result<()> {
        match self.tables.transactions.get(&tx_id) {
            Some(tx) if tx.workflow_id != fence.workflow_id => {
                Err(foreign_tx(tx.workflow_id, fence))
            }
            _ => Ok(()),
        }
    }

    /// A fenced write to transaction `tx_id`: the fence holds and the transaction, if it exists,
    /// is its workflow's (checked in that order); `None` leaves the missing row to the caller.
    fn fenced_tx(&self, fence: &Fence, tx_id: i64) -> Result<Option<&TxRow>> {
        self.check_fence(fence)?;
        self.check_tx_owner(fence, tx_id)?;
        Ok(self.tables.transactions.get(&tx_id))
    }

    /// Moving `tx` to `state` must not put a second live row for its step into
    /// `transactions_live_step` (a row already live may change between live states).
    fn check_live_unique(&self, tx: &TxRow, state: TxState) -> Result<()> {
        if !is_live_state(state) || tx.is_live() {
            return Ok(());
        }
        let clash = self.tables.transactions.values().any(|o| {
            o.id != tx.id
                && o.workflow_id == tx.workflow_id
                && o.step_index == tx.step_index
                && o.is_live()
        });
        if clash {
            return Err(unique_live_step());
        }
        Ok(())
    }

    fn journal_append(
        &mut self,
        fence: &Fence,
        step: i32,
        name: &str,
        event: &str,
        detail: Option<Value>,
        now: u64,
    ) {
        self.sequences.journal += 1;
        let seq = self.sequences.journal;
        self.tables.journal.insert(
            (fence.workflow_id, seq),
            JournalRow {
                workflow_id: fence.workflow_id,
                seq,
                step_index: step,
                step_name: name.to_string(),
                event: event.to_string(),
                detail,
                fencing_token: fence.token,
                node: fence.node.clone(),
                at_ms: now,
            },
        );
    }

    fn tx_event(&mut self, tx_id: i64, state: TxState, detail: Option<String>, now: u64) {
        self.sequences.tx_events += 1;
        self.tables.tx_events.insert(
            (tx_id, self.sequences.tx_events),
            TxEventRow {
                state,
                detail,
                at_ms: now,
            },
        );
    }

    /// `INSERT INTO tx_broadcasts … ON CONFLICT DO NOTHING`: every signed version is kept once.
    fn insert_broadcast(&mut self, tx_id: i64, signed: &Broadcast, now: u64) {
        self.tables
            .tx_broadcasts
            .entry((tx_id, signed.hash))
            .or_insert_with(|| BroadcastRow {
                nonce: signed.nonce as i64,
                raw: signed.raw.clone(),
                max_fee: signed.max_fee_per_gas,
                priority_fee: signed.max_priority_fee_per_gas,
                created_at_ms: now,
            });
    }

    /// Logs a transaction's new state and returns the transaction as the engine reads it back.
    fn tx_changed(&mut self, tx_id: i64, state: TxState, detail: String, now: u64) -> DbReply {
        self.tx_event(tx_id, state, Some(detail), now);
        DbReply::Tx(self.load_tx(&self.tables.transactions[&tx_id]))
    }

    fn insert_audit(
        &mut self,
        actor: &str,
        action: &str,
        args: Value,
        reason: &str,
        outcome: &str,
        now: u64,
    ) {
        self.sequences.audit_log += 1;
        self.tables.audit_log.insert(
            self.sequences.audit_log,
            AuditRow {
                at_ms: now,
                actor: actor.into(),
                action: action.into(),
                args,
                reason: reason.into(),
                outcome: outcome.into(),
            },
        );
    }

    /// `allocate_nonce`, first half: decide without changing anything.
    fn plan_nonce(&self, signer: Address, chain_id: i64, chain_nonce: i64) -> Result<NoncePlan> {
        let key = (signer, chain_id);
        // INSERT ... ON CONFLICT DO NOTHING seeds the counter with chain_nonce.
        let next = self
            .tables
            .nonces
            .get(&key)
            .map_or(chain_nonce, |r| r.next_nonce);
        // Holes below chain_nonce are deleted; the lowest remaining one is taken.
        let hole = self
            .tables
            .nonce_holes
            .range((signer, chain_id, chain_nonce)..=(signer, chain_id, i64::MAX))
            .next()
            .map(|h| h.2);
        if let Some(nonce) = hole {
            return Ok(NoncePlan {
                key,
                chain_nonce,
                nonce,
                new_next: None,
            });
        }
        let nonce = next.max(chain_nonce);
        let new_next = nonce.checked_add(1).ok_or_else(|| {
            EngineError::Internal(format!("nonce counter overflow for {signer:#x}"))
        })?;
        Ok(NoncePlan {
            key,
            chain_nonce,
            nonce,
            new_next: Some(new_next),
        })
    }

    /// `allocate_nonce`, second half: apply the plan; returns the nonce.
    fn apply_nonce(&mut self, plan: NoncePlan, now: u64) -> i64 {
        let (signer, chain_id) = plan.key;
        let t = &mut self.tables;
        t.nonces.entry(plan.key).or_insert(NonceRow {
            next_nonce: plan.chain_nonce,
            updated_at_ms: now,
        });
        let stale: Vec<_> = t
            .nonce_holes
            .range((signer, chain_id, i64::MIN)..(signer, chain_id, plan.chain_nonce))
            .copied()
            .collect();
        for h in stale {
            t.nonce_holes.remove(&h);
        }
        match plan.new_next {
            None => {
                t.nonce_holes.remove(&(signer, chain_id, plan.nonce));
            }
            Some(next) => {
                let row = t.nonces.get_mut(&plan.key).expect("inserted above");
                row.next_nonce = next;
                row.updated_at_ms = now;
            }
        }
        plan.nonce
    }

    /// `load_tx` / `load_broadcasts`: broadcasts `ORDER BY created_at, tx_hash`.
    /// `tx`'s hold on its nonce: its versions at that nonce, in `load_tx`'s order.
    fn nonce_hold(&self, tx: &TxRow) -> NonceHold {
        let mut versions: Vec<(u64, B256)> = self
            .tables
            .tx_broadcasts
            .range((tx.id, B256::ZERO)..=(tx.id, B256::repeat_byte(0xff)))
            .filter(|(_, b)| b.nonce == tx.nonce)
            .map(|((_, hash), b)| (b.created_at_ms, *hash))
            .collect();
        versions.sort();
        NonceHold {
            nonce: tx.nonce as u64,
            tx_id: tx.id,
            state: tx.state,
            versions: versions.into_iter().map(|(_, h)| h).collect(),
        }
    }

    fn load_tx(&self, tx: &TxRow) -> TxRecord {
        let mut bs: Vec<(&(i64, B256), &BroadcastRow)> = self
            .tables
            .tx_broadcasts
            .range((tx.id, B256::ZERO)..=(tx.id, B256::repeat_byte(0xff)))
            .collect();
        bs.sort_by_key(|((_, hash), b)| (b.created_at_ms, *hash));
        tx.record(
            bs.into_iter()
                .map(|((_, hash), b)| Broadcast {
                    hash: *hash,
                    nonce: b.nonce as u64,
                    raw: b.raw.clone(),
                    max_fee_per_gas: b.max_fee,
                    max_priority_fee_per_gas: b.priority_fee,
                })
                .collect(),
        )
    }

    // -- operations -----------------------------------------------------------------------------

    fn submit(&mut self, new: &NewWorkflow, window_ms: u64, now: u64) -> Result<DbReply> {
        text(&new.scope)?;
        text(&new.idempotency_key)?;
        let key = (new.scope.clone(), new.idempotency_key.clone());
        if let Some(k) = self.tables.idempotency_keys.get(&key) {
            if k.expires_at_ms > now {
                let w = self
                    .tables
                    .workflows
                    .get(&k.workflow_id)
                    .expect("foreign key idempotency_keys.workflow_id");
                if w.request_hash != new.request_hash {
                    return Err(EngineError::key_reused(&new.idempotency_key));
                }
                return Ok(DbReply::Submitted(Submitted::Existing(w.record())));
            }
        }
        text(&new.kind)?;
        text(&new.request_hash)?;
        jsonb(&new.input)?;
        self.sequences.workflows += 1;
        let id = self.sequences.workflows;
        let row = WorkflowRow {
            id,
            kind: new.kind.clone(),
            scope: new.scope.clone(),
            idempotency_key: new.idempotency_key.clone(),
            request_hash: new.request_hash.clone(),
            input: new.input.clone(),
            status: WorkflowStatus::Pending,
            current_step: 0,
            state: json!({}),
            result: None,
            error: None,
            attempts: 0,
            next_attempt_at_ms: now,
            lease_owner: None,
            lease_expires_at_ms: None,
            fencing_token: 0,
            lease_id: 0,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let rec = row.record();
        self.tables.workflows.insert(id, row);
        // The key is free or expired here (serial execution): the upsert takes it.
        self.tables.idempotency_keys.insert(
            key,
            IdempotencyKeyRow {
                workflow_id: id,
                expires_at_ms: plus(now, window_ms),
            },
        );
        let api = Fence {
            workflow_id: id,
            token: 0,
            node: "api".into(),
            lease_id: 0,
        };
        self.journal_append(&api, 0, "received", "received", None, now);
        Ok(DbReply::Submitted(Submitted::Created(rec)))
    }

    fn claim(
        &mut self,
        node: &str,
        lease_ms: u64,
        limit: usize,
        lease_id: i64,
        skip_locked: &[WorkflowId],
        now: u64,
    ) -> Result<DbReply> {
        text(node)?;
        let limit = check_limit(limit as i64)?;
        let mut eligible: Vec<(u64, i64)> = self
            .tables
            .workflows
            .values()
            .filter(|w| w.runnable_status() && w.next_attempt_at_ms <= now && w.lease_free(now))
            .filter(|w| !skip_locked.contains(&w.id))
            .map(|w| (w.next_attempt_at_ms, w.id))
            .collect();
        eligible.sort_unstable();
        eligible.truncate(limit);
        let mut ids: Vec<i64> = eligible.into_iter().map(|(_, id)| id).collect();
        ids.sort_unstable();
        for id in &ids {
            if self.tables.workflows[id]
                .fencing_token
                .checked_add(1)
                .is_none()
            {
                return Err(bigint_out_of_range());
            }
        }
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            let w = self.wf_mut(id);
            w.lease_owner = Some(node.to_string());
            w.lease_expires_at_ms = Some(plus(now, lease_ms));
            w.fencing_token += 1;
            w.lease_id = lease_id;
            w.status = WorkflowStatus::Running;
            w.updated_at_ms = now;
            let workflow = w.record();
            claims.push(Claim {
                fence: Fence {
                    workflow_id: id,
                    token: workflow.fencing_token,
                    node: node.to_string(),
                    lease_id,
                },
                workflow,
            });
        }
        Ok(DbReply::Claims(claims))
    }

    fn complete_step(
        &mut self,
        fence: &Fence,
        step: i32,
        name: &str,
        output: &Value,
        result: Option<&Value>,
        now: u64,
    ) -> Result<DbReply> {
        let current = self.check_fence(fence)?;
        if current > step {
            // Our earlier commit went through although we did not see it: nothing to do.
            return Ok(DbReply::Unit);
        }
        let status = self.tables.workflows[&fence.workflow_id].status;
        if status.is_terminal() {
            return Err(workflow_ended(fence.workflow_id, status, "complete_step"));
        }
        if current != step {
            return Err(EngineError::Internal(format!(
                "workflow {} is at step {current}, cannot complete step {step}",
                fence.workflow_id
            )));
        }
        text(name)?;
        jsonb(output)?;
        opt_jsonb(result)?;
        let next = step.checked_add(1).ok_or_else(int_out_of_range)?;
        let done = result.is_some();
        let w = self.wf_mut(fence.workflow_id);
        w.current_step = next;
        match &mut w.state {
            Value::Object(m) => {
                m.insert(name.to_string(), output.clone());
            }
            other => *other = json!({ name: output }),
        }
        w.attempts = 0;
        w.error = None;
        w.result = result.cloned();
        w.status = if done {
            WorkflowStatus::Completed
        } else {
            WorkflowStatus::Running
        };
        if done {
            w.lease_owner = None;
            w.lease_expires_at_ms = None;
        }
        w.updated_at_ms = now;
        self.journal_append(fence, step, name, "completed", Some(output.clone()), now);
        if let Some(r) = result {
            self.journal_append(
                fence,
                step,
                name,
                "workflow_completed",
                Some(r.clone()),
                now,
            );
        }
        Ok(DbReply::Unit)
    }

    fn requeue(&mut self, id: i64, actor: &str, reason: &str, now: u64) -> Result<DbReply> {
        let status = self.tables.workflows.get(&id).map(|w| w.status);
        let args = json!({ "workflow_id": id });
        if status != Some(WorkflowStatus::DeadLetter) {
            let outcome = format!(
                "rejected: workflow is {}",
                status.map_or("unknown", WorkflowStatus::as_str)
            );
            text(actor)?;
            text(reason)?;
            // Committed before the error is returned, as pg.rs does.
            self.insert_audit(actor, "requeue", args, reason, &outcome, now);
            return Err(requeue_refused(id, status.is_some()));
        }
        let token = next_token(self.tables.workflows[&id].fencing_token)?;
        let detail = json!({ "reason": reason });
        jsonb(&detail)?;
        let node = format!("operator:{actor}");
        text(&node)?;
        text(reason)?;
        let w = self.wf_mut(id);
        w.status = WorkflowStatus::Pending;
        w.attempts = 0;
        w.error = None;
        w.next_attempt_at_ms = now;
        w.lease_owner = None;
        w.lease_expires_at_ms = None;
        w.fencing_token = token;
        w.updated_at_ms = now;
        let rec = w.record();
        self.tables.dead_letters.remove(&id);
        let fence = Fence {
            workflow_id: id,
            token: rec.fencing_token,
            node,
            lease_id: 0,
        };
        self.journal_append(
            &fence,
            rec.current_step,
            "requeue",
            "requeued",
            Some(detail),
            now,
        );
        self.insert_audit(actor, "requeue", args, reason, "ok", now);
        Ok(DbReply::WorkflowRecord(rec))
    }

    fn create_tx(
        &mut self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        fees: Fees,
        chain_nonce: u64,
        now: u64,
    ) -> Result<DbReply> {
        self.check_fence(fence)?;
        let chain_id = intent.chain_id as i64;
        let plan = self.plan_nonce(intent.signer, chain_id, chain_nonce as i64)?;
        // The unique index refuses a second live row for the step. (PostgreSQL has drawn the
        // id by then and keeps the gap; the model does not: see "Atomic" in the module docs.)
        let clash = self
            .tables
            .transactions
            .values()
            .any(|o| o.workflow_id == fence.workflow_id && o.step_index == step && o.is_live());
        if clash {
            return Err(unique_live_step());
        }
        self.sequences.transactions += 1;
        let id = self.sequences.transactions;
        let nonce = self.apply_nonce(plan, now);
        self.tables.transactions.insert(
            id,
            TxRow {
                id,
                workflow_id: fence.workflow_id,
                step_index: step,
                signer: intent.signer,
                chain_id,
                nonce,
                state: TxState::Preparing,
                to: intent.to,
                input: intent.input.clone(),
                value: intent.value,
                gas_limit: intent.gas_limit as i64,
                max_fee: fees.max_fee_per_gas,
                priority_fee: fees.max_priority_fee_per_gas,
                raw: None,
                hash: None,
                receipt: None,
                failure: None,
                created_at_ms: now,
                updated_at_ms: now,
            },
        );
        Ok(self.tx_changed(id, TxState::Preparing, format!("nonce {nonce}"), now))
    }

    fn adopt_orphan(
        &mut self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        signed: &Broadcast,
        now: u64,
    ) -> Result<DbReply> {
        self.check_fence(fence)?;
        let clash = self
            .tables
            .transactions
            .values()
            .any(|o| o.workflow_id == fence.workflow_id && o.step_index == step && o.is_live());
        if clash {
            return Err(unique_live_step());
        }
        let chain_id = intent.chain_id as i64;
        self.sequences.transactions += 1;
        let id = self.sequences.transactions;
        self.tables.transactions.insert(
            id,
            TxRow {
                id,
                workflow_id: fence.workflow_id,
                step_index: step,
                signer: intent.signer,
                chain_id,
                nonce: signed.nonce as i64,
                state: TxState::Confirming,
                to: intent.to,
                input: intent.input.clone(),
                value: intent.value,
                gas_limit: intent.gas_limit as i64,
                max_fee: signed.max_fee_per_gas,
                priority_fee: signed.max_priority_fee_per_gas,
                raw: Some(signed.raw.clone()),
                hash: Some(signed.hash),
                receipt: None,
                failure: None,
                created_at_ms: now,
                updated_at_ms: now,
            },
        );
        self.insert_broadcast(id, signed, now);
        if let Some(o) = self.tables.orphan_txs.get_mut(&signed.hash) {
            o.adopted_by = Some(id);
        }
        // INSERT … ON CONFLICT DO UPDATE SET next_nonce = GREATEST(…), updated_at = now().
        let row = self
            .tables
            .nonces
            .entry((intent.signer, chain_id))
            .or_insert(NonceRow {
                next_nonce: signed.nonce as i64 + 1,
                updated_at_ms: now,
            });
        row.next_nonce = row.next_nonce.max(signed.nonce as i64 + 1);
        row.updated_at_ms = now;
        Ok(self.tx_changed(
            id,
            TxState::Confirming,
            format!("adopted orphan {:#x}", signed.hash),
            now,
        ))
    }

    /// Extends the lease only under the current fencing token (a missing workflow is sqlx's
    /// `RowNotFound`, not `check_fence`'s error).
    fn renew_lease(&mut self, fence: &Fence, lease_ms: u64, now: u64) -> Result<DbReply> {
        let Some(w) = self.tables.workflows.get_mut(&fence.workflow_id) else {
            return Err(row_not_found());
        };
        if !fence.holds(w.fencing_token, w.lease_id) {
            return Err(EngineError::Fenced {
                workflow_id: fence.workflow_id,
                ours: fence.token,
                current: w.fencing_token,
            });
        }
        w.lease_expires_at_ms = Some(plus(now, lease_ms));
        Ok(DbReply::Unit)
    }

    /// Drops the lease under the current token and bumps it (the holder can write no more); a
    /// stale fence matches no row and is only counted, never an error (as in pg.rs).
    fn release(&mut self, fence: &Fence) -> Result<DbReply> {
        match self.tables.workflows.get_mut(&fence.workflow_id) {
            Some(w) if fence.holds(w.fencing_token, w.lease_id) => {
                w.fencing_token = next_token(w.fencing_token)?;
                w.lease_owner = None;
                w.lease_expires_at_ms = None;
            }
            _ => self.stale_releases += 1,
        }
        Ok(DbReply::Unit)
    }

    /// Spends an attempt and defers the workflow, only if `step` is still its current step.
    fn schedule_retry(
        &mut self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        delay_ms: u64,
        now: u64,
    ) -> Result<DbReply> {
        let current = self.check_fence(fence)?;
        jsonb(error)?;
        let bump = current == step;
        let w = &self.tables.workflows[&fence.workflow_id];
        let (attempts, token) = if bump {
            let attempts = w.attempts.checked_add(1).ok_or_else(int_out_of_range)?;
            (attempts, next_token(w.fencing_token)?)
        } else {
            (w.attempts, w.fencing_token)
        };
        if bump {
            text(name)?;
            let w = self.wf_mut(fence.workflow_id);
            w.attempts = attempts;
            w.fencing_token = token;
            w.error = Some(error.clone());
            w.next_attempt_at_ms = plus(now, delay_ms);
            w.lease_owner = None;
            w.lease_expires_at_ms = None;
            w.updated_at_ms = now;
            // A retry of another step than the current one did not happen: no entry.
            self.journal_append(fence, step, name, "retry", Some(error.clone()), now);
        }
        Ok(DbReply::Unit)
    }

    /// Ends a workflow that has not ended yet as `failed`, or `dead_letter` with its
    /// dead-letter row.
    fn fail_workflow(
        &mut self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        dead_letter: bool,
        now: u64,
    ) -> Result<DbReply> {
        self.check_fence(fence)?;
        let now_status = self.tables.workflows[&fence.workflow_id].status;
        if now_status.is_terminal() {
            return Err(workflow_ended(fence.workflow_id, now_status, "fail"));
        }
        jsonb(error)?;
        let attempts = self.tables.workflows[&fence.workflow_id]
            .attempts
            .checked_add(1)
            .ok_or_else(int_out_of_range)?;
        let token = next_token(self.tables.workflows[&fence.workflow_id].fencing_token)?;
        let (status, event) = if dead_letter {
            (WorkflowStatus::DeadLetter, "dead_letter")
        } else {
            (WorkflowStatus::Failed, "failed")
        };
        let code = error
            .get("reason_code")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let reason = error.get("message").and_then(Value::as_str).unwrap_or("");
        text(name)?;
        if dead_letter {
            text(code)?;
            text(reason)?;
        }
        let w = self.wf_mut(fence.workflow_id);
        w.status = status;
        w.error = Some(error.clone());
        w.attempts = attempts;
        w.fencing_token = token;
        w.lease_owner = None;
        w.lease_expires_at_ms = None;
        w.updated_at_ms = now;
        if dead_letter {
            self.tables.dead_letters.insert(
                fence.workflow_id,
                DeadLetterRow {
                    step_index: step,
                    step_name: name.to_string(),
                    reason_code: code.to_string(),
                    reason: reason.to_string(),
                    failed_at_ms: now,
                },
            );
        }
        self.journal_append(fence, step, name, event, Some(error.clone()), now);
        Ok(DbReply::Unit)
    }

    /// Appends an operator's audit entry, its parameters checked in bind order.
    fn audit(&mut self, entry: &AuditEntry, now: u64) -> Result<DbReply> {
        text(&entry.actor)?;
        text(&entry.action)?;
        jsonb(&entry.args)?;
        text(&entry.reason)?;
        text(&entry.outcome)?;
        self.insert_audit(
            &entry.actor,
            &entry.action,
            entry.args.clone(),
            &entry.reason,
            &entry.outcome,
            now,
        );
        Ok(DbReply::Unit)
    }

    /// Stores the signed bytes (every signed version is kept) before the transaction moves to
    /// BROADCASTING.
    fn record_signed(
        &mut self,
        fence: &Fence,
        tx_id: i64,
        signed: &Broadcast,
        now: u64,
    ) -> Result<DbReply> {
        let Some(tx) = self.fenced_tx(fence, tx_id)? else {
            return Err(fk_tx_id("tx_broadcasts"));
        };
        self.check_live_unique(tx, TxState::Broadcasting)?;
        self.insert_broadcast(tx_id, signed, now);
        let tx = self.tx_mut(tx_id);
        let (old_nonce, signer, chain_id) = (tx.nonce, tx.signer, tx.chain_id);
        tx.nonce = signed.nonce as i64;
        tx.raw = Some(signed.raw.clone());
        tx.hash = Some(signed.hash);
        tx.max_fee = signed.max_fee_per_gas;
        tx.priority_fee = signed.max_priority_fee_per_gas;
        tx.state = TxState::Broadcasting;
        tx.updated_at_ms = now;
        if old_nonce != signed.nonce as i64 {
            // The record moved to its lost version's nonce (see `Store::record_signed`).
            if let Some(o) = self.tables.orphan_txs.get_mut(&signed.hash) {
                o.adopted_by = Some(tx_id);
            }
            let row = self
                .tables
                .nonces
                .entry((signer, chain_id))
                .or_insert(NonceRow {
                    next_nonce: signed.nonce as i64 + 1,
                    updated_at_ms: now,
                });
            row.next_nonce = row.next_nonce.max(signed.nonce as i64 + 1);
            row.updated_at_ms = now;
        }
        Ok(self.tx_changed(
            tx_id,
            TxState::Broadcasting,
            format!("{:#x}", signed.hash),
            now,
        ))
    }

    /// Moves a transaction to `state` (a failure detail is kept for terminal states only) and
    /// logs the event.
    fn set_tx_state(
        &mut self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        detail: Option<&str>,
        receipt: Option<&Value>,
        now: u64,
    ) -> Result<DbReply> {
        let tx = self.fenced_tx(fence, tx_id)?;
        let terminal = !is_live_state(state);
        // UPDATE's parameters: the failure detail (terminal states only), the receipt.
        if terminal {
            detail.map(text).unwrap_or(Ok(()))?;
        }
        opt_jsonb(receipt)?;
        if let Some(tx) = tx {
            self.check_live_unique(tx, state)?;
        }
        // tx_events' parameters, then its foreign key (PostgreSQL would have drawn a
        // `tx_events.seq` by then; the model does not: see "Atomic" in the module docs).
        detail.map(text).unwrap_or(Ok(()))?;
        if tx.is_none() {
            return Err(fk_tx_id("tx_events"));
        }
        let tx = self.tx_mut(tx_id);
        tx.state = state;
        if terminal {
            if let Some(d) = detail {
                tx.failure = Some(d.to_string());
            }
        }
        if let Some(r) = receipt {
            tx.receipt = Some(r.clone());
        }
        tx.updated_at_ms = now;
        self.tx_event(tx_id, state, detail.map(str::to_string), now);
        Ok(DbReply::Unit)
    }

    /// Gives the transaction a freshly allocated nonce and forgets its signed bytes (back to
    /// PREPARING).
    fn reassign_nonce(
        &mut self,
        fence: &Fence,
        tx_id: i64,
        chain_nonce: u64,
        now: u64,
    ) -> Result<DbReply> {
        let Some(tx) = self.fenced_tx(fence, tx_id)? else {
            return Err(row_not_found());
        };
        let plan = self.plan_nonce(tx.signer, tx.chain_id, chain_nonce as i64)?;
        self.check_live_unique(tx, TxState::Preparing)?;
        let nonce = self.apply_nonce(plan, now);
        let tx = self.tx_mut(tx_id);
        tx.nonce = nonce;
        tx.raw = None;
        tx.hash = None;
        tx.state = TxState::Preparing;
        tx.updated_at_ms = now;
        Ok(self.tx_changed(
            tx_id,
            TxState::Preparing,
            format!("nonce reassigned to {nonce} (chain at {chain_nonce})"),
            now,
        ))
    }

    /// Ends a transaction in `state`; with `release`, its nonce becomes a hole for reuse.
    fn abandon_tx(
        &mut self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        release: bool,
        now: u64,
    ) -> Result<DbReply> {
        let Some(tx) = self.fenced_tx(fence, tx_id)? else {
            return Err(row_not_found());
        };
        self.check_live_unique(tx, state)?;
        let tx = self.tx_mut(tx_id);
        tx.state = state;
        tx.updated_at_ms = now;
        let hole = (tx.signer, tx.chain_id, tx.nonce);
        if release {
            self.tables.nonce_holes.insert(hole);
        }
        let detail = if release {
            "abandoned; nonce released"
        } else {
            "abandoned"
        };
        self.tx_event(tx_id, state, Some(detail.into()), now);
        Ok(DbReply::Unit)
    }

    /// Keeps each orphan found on chain once (the first sighting wins).
    fn record_orphans(
        &mut self,
        signer: Address,
        chain_id: u64,
        orphans: &[Orphan],
        now: u64,
    ) -> DbReply {
        // INSERT … ON CONFLICT DO NOTHING (keyed by hash), one row per orphan.
        for o in orphans {
            self.tables
                .orphan_txs
                .entry(o.signed.hash)
                .or_insert_with(|| OrphanRow {
                    signer,
                    chain_id: chain_id as i64,
                    tag: o.tag,
                    signed: o.signed.clone(),
                    adopted_by: None,
                    created_at_ms: now,
                });
        }
        DbReply::Unit
    }

    /// Keeps a gap filler the engine signed, once (the first record wins).
    fn record_filler(
        &mut self,
        signer: Address,
        chain_id: u64,
        signed: &Broadcast,
        now: u64,
    ) -> DbReply {
        // INSERT … ON CONFLICT DO NOTHING (keyed by hash).
        self.tables
            .nonce_fillers
            .entry(signed.hash)
            .or_insert_with(|| FillerRow {
                signer,
                chain_id: chain_id as i64,
                signed: signed.clone(),
                created_at_ms: now,
            });
        DbReply::Unit
    }

    /// Raises the nonce counter to at least the chain's nonce (never lowers it); returns it.
    fn resync_nonce(
        &mut self,
        signer: Address,
        chain_id: u64,
        chain_nonce: u64,
        now: u64,
    ) -> DbReply {
        let row = self
            .tables
            .nonces
            .entry((signer, chain_id as i64))
            .or_insert(NonceRow {
                next_nonce: chain_nonce as i64,
                updated_at_ms: now,
            });
        // ON CONFLICT DO UPDATE runs (and touches updated_at) whenever the row existed;
        // for a fresh row the values are the same either way.
        row.next_nonce = row.next_nonce.max(chain_nonce as i64);
        row.updated_at_ms = now;
        DbReply::U64(row.next_nonce as u64)
    }

    /// Records an off-chain effect once per (workflow, kind); `false` if it was already there.
    fn notify(&mut self, fence: &Fence, kind: &str, payload: &Value, now: u64) -> Result<DbReply> {
        self.check_fence(fence)?;
        text(kind)?;
        jsonb(payload)?;
        let key = (fence.workflow_id, kind.to_string());
        if self.tables.notifications.contains_key(&key) {
            return Ok(DbReply::Bool(false));
        }
        self.tables.notifications.insert(
            key,
            NotificationRow {
                payload: payload.clone(),
                created_at_ms: now,
            },
        );
        Ok(DbReply::Bool(true))
    }

    /// Stores a block's events (idempotent, keyed by block hash and log index) together with
    /// the checkpoint, if the checkpoint is still `extends` (`true`; also for the block already
    /// at the checkpoint, writing nothing); else writes nothing (`false`).
    #[allow(clippy::too_many_arguments)]
    fn index_block(
        &mut self,
        chain_id: u64,
        extends: Option<(u64, B256)>,
        number: u64,
        hash: B256,
        events: &[TokenEvent],
        finalized: u64,
        now: u64,
    ) -> Result<DbReply> {
        if let Some(e) = events.iter().find(|e| e.block_hash != hash) {
            return Err(EngineError::Internal(format!(
                "index_block: event {} of block {:#x} belongs to block {:#x}",
                e.log_index, hash, e.block_hash
            )));
        }
        let chain = chain_id as i64;
        let t = &mut self.tables;
        let current = t
            .indexer_checkpoint
            .get(&chain)
            .map(|cp| (cp.last_block as u64, cp.last_hash));
        if current != extends {
            return Ok(DbReply::Bool(current == Some((number, hash))));
        }
        t.indexed_blocks.insert((chain, number as i64), hash);
        for e in events {
            t.token_events
                .entry((chain, e.block_hash, e.log_index as i64))
                .or_insert_with(|| TokenEventRow {
                    block_number: e.block_number as i64,
                    tx_hash: e.tx_hash,
                    contract: e.contract,
                    from: e.from,
                    to: e.to,
                    value: e.value,
                });
        }
        t.indexer_checkpoint.insert(
            chain,
            CheckpointRow {
                last_block: number as i64,
                last_hash: hash,
                finalized_block: finalized as i64,
                updated_at_ms: now,
            },
        );
        Ok(DbReply::Bool(true))
    }

    /// Forgets every block above `keep` and its events, and moves the checkpoint back to `keep`
    /// (or drops it if `keep` was never indexed); returns how many blocks were removed.
    fn rollback_index(&mut self, chain_id: u64, keep: u64, now: u64) -> DbReply {
        let chain = chain_id as i64;
        let keep = keep as i64;
        let t = &mut self.tables;
        t.token_events
            .retain(|(c, _, _), e| !(*c == chain && e.block_number > keep));
        let before = t.indexed_blocks.len();
        t.indexed_blocks
            .retain(|(c, n), _| !(*c == chain && *n > keep));
        let removed = (before - t.indexed_blocks.len()) as u64;
        match t.indexed_blocks.get(&(chain, keep)).copied() {
            Some(hash) => {
                if let Some(cp) = t.indexer_checkpoint.get_mut(&chain) {
                    cp.last_block = keep;
                    cp.last_hash = hash;
                    cp.finalized_block = cp.finalized_block.min(keep);
                    cp.updated_at_ms = now;
                }
            }
            None => {
                t.indexer_checkpoint.remove(&chain);
            }
        }
        DbReply::U64(removed)
    }

    /// The `token_balances` view for one (chain, contract): per holder, incoming minus outgoing,
    /// the zero address excluded, `balance <> 0`, `ORDER BY holder`; a negative balance or one
    /// above `U256::MAX` fails to parse in pg.rs (`bad number in database`), in holder order.
    fn balances(&self, chain_id: i64, contract: Address) -> Result<Vec<(Address, U256)>> {
        let mut sums: BTreeMap<Address, (U512, U512)> = BTreeMap::new();
        for ((c, _, _), e) in &self.tables.token_events {
            if *c != chain_id || e.contract != contract {
                continue;
            }
            let v = U512::from(e.value);
            if e.to != Address::ZERO {
                sums.entry(e.to).or_default().0 += v;
            }
            if e.from != Address::ZERO {
                sums.entry(e.from).or_default().1 += v;
            }
        }
        let mut out = Vec::new();
        for (holder, (inc, outg)) in sums {
            if inc == outg {
                continue;
            }
            if inc < outg {
                return Err(EngineError::Internal(format!(
                    "bad number in database: -{}",
                    outg - inc
                )));
            }
            let bal = inc - outg;
            if bal > U512::from(U256::MAX) {
                return Err(EngineError::Internal(format!(
                    "bad number in database: {bal}"
                )));
            }
            out.push((holder, U256::from(bal)));
        }
        Ok(out)
    }

    // -- inspection -----------------------------------------------------------------------------

    /// Every workflow as the engine reads it, by id.
    pub fn workflows(&self) -> impl Iterator<Item = WorkflowRecord> + '_ {
        self.tables.workflows.values().map(WorkflowRow::record)
    }

    /// One workflow's journal rows in `seq` order.
    pub fn journal_rows(&self, id: WorkflowId) -> impl Iterator<Item = &JournalRow> + '_ {
        self.tables
            .journal
            .range((id, i64::MIN)..=(id, i64::MAX))
            .map(|(_, r)| r)
    }

    /// Every transaction with its broadcasts, by id.
    pub fn txs(&self) -> impl Iterator<Item = TxRecord> + '_ {
        self.tables.transactions.values().map(|t| self.load_tx(t))
    }

    /// One transaction with its broadcasts.
    pub fn tx(&self, id: i64) -> Option<TxRecord> {
        self.tables.transactions.get(&id).map(|t| self.load_tx(t))
    }

    /// The next nonce the counter would hand out for (signer, chain), if seeded.
    pub fn next_nonce(&self, signer: Address, chain_id: u64) -> Option<u64> {
        self.tables
            .nonces
            .get(&(signer, chain_id as i64))
            .map(|r| r.next_nonce as u64)
    }

    /// The released nonces waiting for reuse for (signer, chain), ascending.
    pub fn nonce_holes(&self, signer: Address, chain_id: u64) -> Vec<u64> {
        let c = chain_id as i64;
        self.tables
            .nonce_holes
            .range((signer, c, i64::MIN)..=(signer, c, i64::MAX))
            .map(|h| h.2 as u64)
            .collect()
    }

    /// Every indexed event of a chain, in primary-key order (block hash, log index).
    pub fn token_events(&self, chain_id: u64) -> Vec<TokenEvent> {
        let c = chain_id as i64;
        self.tables
            .token_events
            .iter()
            .filter(|((ch, _, _), _)| *ch == c)
            .map(|((_, block_hash, log_index), e)| TokenEvent {
                block_number: e.block_number as u64,
                block_hash: *block_hash,
                tx_hash: e.tx_hash,
                log_index: *log_index as u64,
                contract: e.contract,
                from: e.from,
                to: e.to,
                value: e.value,
            })
            .collect()
    }

    /// The audit log, oldest first.
    pub fn audit_entries(&self) -> Vec<AuditEntry> {
        self.tables
            .audit_log
            .values()
            .map(AuditRow::entry)
            .collect()
    }
}
