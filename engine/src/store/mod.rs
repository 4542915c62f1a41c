//! The store boundary: the engine's transactional operations, and nothing more.
//!
//! Production implements it with sqlx + PostgreSQL (`pg`); the simulation implements it with a
//! client of a simulated database node. Every operation that writes on behalf of a workflow
//! takes a [`Fence`] and must reject the write with [`EngineError::Fenced`] when the workflow's
//! fencing token has moved on: that is what makes lease takeover safe. Every operation that
//! ends a holder's lease (`claim`, `release`, `schedule_retry`, `fail`, `requeue`) bumps the
//! token, so the holder it ended can write nothing afterwards.

use crate::error::Result;
use alloy_primitives::{Address, Bytes, B256, U256};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

#[cfg(not(madsim))]
pub mod pg;
#[cfg(not(madsim))]
pub mod startup;

pub type WorkflowId = i64;

/// How long the database server lets one of the engine's sessions sit idle inside a transaction
/// before it ends the session (`idle_in_transaction_session_timeout`, set on every connection).
///
/// A session left inside a transaction by a client that went away mid-transaction (a bug of
/// ours or of the driver, a process frozen between statements) keeps its row locks, and claims
/// skip locked rows: without this bound that workflow would never run again. Each transaction of
/// ours is bounded by `db_timeout` on the client side, so twice that is well past any live one.
/// The simulated PostgreSQL honours the same setting (fault `db_stale_session`).
pub fn idle_in_transaction_bound(db_timeout: Duration) -> Option<Duration> {
    Some((db_timeout * 2).max(Duration::from_secs(1)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    Pending,
    Running,
    Completed,
    Failed,
    DeadLetter,
    Cancelled,
}

impl WorkflowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Pending => "pending",
            WorkflowStatus::Running => "running",
            WorkflowStatus::Completed => "completed",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::DeadLetter => "dead_letter",
            WorkflowStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => WorkflowStatus::Pending,
            "running" => WorkflowStatus::Running,
            "completed" => WorkflowStatus::Completed,
            "failed" => WorkflowStatus::Failed,
            "dead_letter" => WorkflowStatus::DeadLetter,
            "cancelled" => WorkflowStatus::Cancelled,
            _ => return None,
        })
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Completed
                | WorkflowStatus::Failed
                | WorkflowStatus::DeadLetter
                | WorkflowStatus::Cancelled
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkflowRecord {
    pub id: WorkflowId,
    pub kind: String,
    pub idempotency_key: String,
    pub input: Value,
    pub status: WorkflowStatus,
    pub current_step: i32,
    /// Outputs of completed steps, by step name: the checkpoint a resumed run starts from.
    pub state: Value,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub attempts: i32,
    pub fencing_token: i64,
    pub lease_owner: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewWorkflow {
    pub kind: String,
    /// What the key is scoped to: signer, chain and operation.
    pub scope: String,
    pub idempotency_key: String,
    /// A digest of the request, so the same key with a different request is refused.
    pub request_hash: String,
    pub input: Value,
}

#[derive(Clone, Debug)]
pub enum Submitted {
    Created(WorkflowRecord),
    /// The key is live: this is the workflow it already names (in flight or finished).
    Existing(WorkflowRecord),
}

/// Proof of holding a workflow's lease: every fenced write presents it.
///
/// The token alone is not enough: a failover to a replica that lacks the last commits rolls
/// fencing tokens and sequences back, so a lost claim's `(workflow_id, token)` can be handed out
/// again, to another workflow (a reused id) or another holder. `lease_id`, drawn at random by the
/// claimer, tells the two claims apart: a write holds only if token *and* lease id match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub workflow_id: WorkflowId,
    pub token: i64,
    pub node: String,
    pub lease_id: i64,
}

impl Fence {
    /// Whether this fence is the lease a workflow row records.
    pub fn holds(&self, token: i64, lease_id: i64) -> bool {
        self.token == token && self.lease_id == lease_id
    }
}

#[derive(Clone, Debug)]
pub struct Claim {
    pub workflow: WorkflowRecord,
    pub fence: Fence,
}

#[derive(Clone, Debug, Serialize)]
pub struct JournalEntry {
    pub seq: i64,
    pub step_index: i32,
    pub step_name: String,
    pub event: String,
    pub detail: Option<Value>,
    pub fencing_token: i64,
    pub node: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub workflow_id: WorkflowId,
    pub kind: String,
    pub step_index: i32,
    pub step_name: String,
    pub reason_code: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub args: Value,
    pub reason: String,
    pub outcome: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TxState {
    Preparing,
    Signing,
    Broadcasting,
    Confirming,
    Completed,
    Failed,
    DeadLetter,
    Cancelled,
}

impl TxState {
    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Preparing => "PREPARING",
            TxState::Signing => "SIGNING",
            TxState::Broadcasting => "BROADCASTING",
            TxState::Confirming => "CONFIRMING",
            TxState::Completed => "COMPLETED",
            TxState::Failed => "FAILED",
            TxState::DeadLetter => "DEAD_LETTER",
            TxState::Cancelled => "CANCELLED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PREPARING" => TxState::Preparing,
            "SIGNING" => TxState::Signing,
            "BROADCASTING" => TxState::Broadcasting,
            "CONFIRMING" => TxState::Confirming,
            "COMPLETED" => TxState::Completed,
            "FAILED" => TxState::Failed,
            "DEAD_LETTER" => TxState::DeadLetter,
            "CANCELLED" => TxState::Cancelled,
            _ => return None,
        })
    }
}

/// What a transaction step wants on chain, before any nonce or fee is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxIntent {
    pub signer: Address,
    pub chain_id: u64,
    /// `None` deploys a contract.
    pub to: Option<Address>,
    pub input: Bytes,
    pub value: U256,
    pub gas_limit: u64,
}

/// EIP-1559 fees: a chain type, re-exported here because transaction records carry them.
pub use crate::chain::types::Fees;

/// One signed version of a transaction (the original or a replacement).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Broadcast {
    pub hash: B256,
    pub nonce: u64,
    pub raw: Bytes,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// A signed transaction of ours found on chain at a nonce that no record holds (its records were
/// lost, e.g. when an asynchronous replica was promoted without the last commits), keyed by the
/// step tag its input ends with (`workflow::step_tag`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub tag: B256,
    pub signed: Broadcast,
}

/// What a step about to create its transaction must know first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NonceView {
    /// The signer's nonce counter (`None` before its first allocation).
    pub next_nonce: Option<u64>,
    /// An orphan carrying the step's tag that no record has adopted yet (lowest nonce first).
    pub orphan: Option<Broadcast>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TxRecord {
    pub id: i64,
    pub workflow_id: WorkflowId,
    pub step_index: i32,
    pub intent_signer: Address,
    pub chain_id: u64,
    pub nonce: u64,
    pub state: TxState,
    pub to: Option<Address>,
    pub input: Bytes,
    pub value: U256,
    pub gas_limit: u64,
    pub fees: FeesView,
    /// The latest signed bytes (what a re-broadcast sends).
    pub raw: Option<Bytes>,
    pub hash: Option<B256>,
    /// Every signed version, oldest first.
    pub broadcasts: Vec<Broadcast>,
    pub receipt: Option<Value>,
}

/// A live record's hold on its nonce, as the orphan search reads it (`Store::nonce_holds`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NonceHold {
    pub nonce: u64,
    pub tx_id: i64,
    pub state: TxState,
    /// The hashes of the record's versions signed at `nonce`, oldest first (a record moved to a
    /// new nonce keeps its older versions at the old one; they are not listed).
    pub versions: Vec<B256>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct FeesView {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

impl TxRecord {
    pub fn fees(&self) -> Fees {
        Fees {
            max_fee_per_gas: self.fees.max_fee_per_gas,
            max_priority_fee_per_gas: self.fees.max_priority_fee_per_gas,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexerCheckpoint {
    pub last_block: u64,
    pub last_hash: B256,
    pub finalized_block: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    pub block_number: u64,
    pub block_hash: B256,
    pub tx_hash: B256,
    pub log_index: u64,
    pub contract: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub active: i64,
    pub dead_letter: i64,
    pub stalled: i64,
}

/// The refusal of a step write (`complete_step`, `fail`) to a workflow that has already ended: a
/// late write of its last holder must not revive or re-end it (a completed step stays a no-op).
pub fn workflow_ended(
    id: WorkflowId,
    status: WorkflowStatus,
    what: &str,
) -> crate::error::EngineError {
    crate::error::EngineError::Internal(format!(
        "workflow {id} is already {}: {what} refused",
        status.as_str()
    ))
}

/// The refusal of a requeue: an unknown workflow is `NotFound` (HTTP 404), one that is not in
/// the dead-letter queue `Invalid` (400).
pub fn requeue_refused(id: WorkflowId, exists: bool) -> crate::error::EngineError {
    if exists {
        crate::error::EngineError::Invalid(format!("workflow {id} is not in the dead-letter queue"))
    } else {
        crate::error::EngineError::NotFound(format!("workflow {id} does not exist"))
    }
}

/// The refusal of a transaction write presented under another workflow's fence: a fence proves
/// the lease of its own workflow only. The step got that transaction id from the database, so
/// another owner means the database lost the commit that created it and reused the id
/// (`RecordLost`, transient: the step re-reads its state).
pub fn foreign_tx(owner: WorkflowId, fence: &Fence) -> crate::error::EngineError {
    // (No transaction id in the text: PostgreSQL burns ids on failed inserts, the model does not,
    // so the same transaction may have different ids on the two; workflow ids agree.)
    crate::error::EngineError::RecordLost(format!(
        "the transaction belongs to workflow {owner}, not to workflow {} whose fence was presented",
        fence.workflow_id
    ))
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Accept a request, or return the live workflow its idempotency key already names.
    async fn submit(&self, new: NewWorkflow, window: Duration) -> Result<Submitted>;
    async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>>;
    async fn journal(&self, id: WorkflowId) -> Result<Vec<JournalEntry>>;

    /// Take up to `limit` runnable workflows whose lease is free or expired (by the database's
    /// clock), bumping each one's fencing token and recording `lease_id` (the claimer's random
    /// identity for this claim, see [`Fence`]).
    async fn claim(
        &self,
        node: &str,
        lease: Duration,
        limit: usize,
        lease_id: i64,
    ) -> Result<Vec<Claim>>;
    async fn renew_lease(&self, fence: &Fence, lease: Duration) -> Result<()>;
    /// Give the lease up, bumping the fencing token, without changing anything else.
    async fn release(&self, fence: &Fence) -> Result<()>;

    /// Persist a step's completion and output; `result` set means the workflow is finished.
    /// Idempotent: completing an already completed step under the same fence is a no-op.
    async fn complete_step(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        output: Value,
        result: Option<Value>,
    ) -> Result<()>;
    /// Record a failed attempt and when the next one may run; gives up the lease (bumping the
    /// fencing token). A retry of another step than the current one changes nothing.
    async fn schedule_retry(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        delay: Duration,
    ) -> Result<()>;
    /// End the workflow with a typed failure, in the dead-letter queue or not; bumps the
    /// fencing token.
    async fn fail(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        dead_letter: bool,
    ) -> Result<()>;

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>>;
    /// Put a dead-lettered workflow back to pending at its failed step (bumping the fencing
    /// token), and audit it, atomically. Refused with [`requeue_refused`], audited too.
    async fn requeue(&self, id: WorkflowId, actor: &str, reason: &str) -> Result<WorkflowRecord>;
    async fn audit(&self, entry: &AuditEntry) -> Result<()>;
    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>>;

    async fn tx_for_step(&self, workflow: WorkflowId, step: i32) -> Result<Option<TxRecord>>;
    async fn txs_for_workflow(&self, workflow: WorkflowId) -> Result<Vec<TxRecord>>;
    /// The transaction record holding `nonce` for (signer, chain) whose signed bytes may be or
    /// may have been on chain — state BROADCASTING, CONFIRMING or COMPLETED — with its signed
    /// versions loaded; the highest id if several. Any workflow's: the nonce-gap healer reads it
    /// without holding a lease, so it is a plain read.
    async fn tx_by_nonce(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
    ) -> Result<Option<TxRecord>>;
    /// Every live record of (signer, chain) — state PREPARING, BROADCASTING, CONFIRMING or
    /// COMPLETED — at a nonce in `[from, to)`, by nonce then id, each with the hashes of its
    /// versions signed at that nonce. One read for the orphan search, which checks that the
    /// chain's transaction at each such nonce is one of the record's own (a failover can hand a
    /// lost transaction's nonce to another); it carries no signed bytes or receipts, since the
    /// search runs before every transaction a step creates.
    async fn nonce_holds(
        &self,
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<NonceHold>>;
    /// Allocate a nonce for (signer, chain) — a released hole first, else the next one, seeding
    /// the counter from `chain_nonce` on first use — and create the step's transaction row, in
    /// one database transaction.
    async fn create_tx(
        &self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        fees: Fees,
        chain_nonce: u64,
    ) -> Result<TxRecord>;
    /// Store a signed version before it is broadcast; `raw`/`hash` become the current ones. A
    /// version at another nonce than the record's (a lost version found on chain) moves the
    /// record to that nonce: an orphan row of that hash is marked adopted by it, and the
    /// signer's counter is raised past the nonce.
    async fn record_signed(
        &self,
        fence: &Fence,
        tx_id: i64,
        signed: &Broadcast,
    ) -> Result<TxRecord>;
    async fn set_tx_state(
        &self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        detail: Option<&str>,
        receipt: Option<&Value>,
    ) -> Result<()>;
    /// The nonce was consumed outside the engine: move the counter to at least `chain_nonce`
    /// and give this transaction a fresh nonce (its old signed versions stay on record).
    async fn reassign_nonce(&self, fence: &Fence, tx_id: i64, chain_nonce: u64)
        -> Result<TxRecord>;
    /// The transaction will never be sent again: release its nonce for reuse if `release`.
    async fn abandon_tx(
        &self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        release: bool,
    ) -> Result<()>;
    /// Raise the counter to at least `chain_nonce` (after `nonce too low`).
    async fn resync_nonce(&self, signer: Address, chain_id: u64, chain_nonce: u64) -> Result<u64>;

    /// Gap fillers already signed for (signer, chain, nonce), oldest first.
    async fn nonce_fillers(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
    ) -> Result<Vec<Broadcast>>;
    /// Store a gap filler (a zero-value self-transfer at `signed.nonce`) before it is broadcast.
    /// Idempotent by hash.
    async fn record_filler(&self, signer: Address, chain_id: u64, signed: &Broadcast)
        -> Result<()>;

    /// The nonces in `[from, to)` that something on record names for (signer, chain): a
    /// transaction row (any state) or a signed version at that nonce, a gap filler, an orphan
    /// (adopted or not) or a foreign transaction. Ascending, distinct. The orphan search looks up
    /// on chain only the nonces nothing names: a failover lost everything about them.
    async fn named_nonces(
        &self,
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<u64>>;
    /// Store a transaction signed with the signer's key that the engine did not send, found on
    /// chain at `nonce`. Idempotent by hash.
    async fn record_foreign(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
        hash: B256,
    ) -> Result<()>;

    /// The signer's nonce counter and an unadopted orphan tagged `tag`, in one read.
    async fn nonce_view(&self, signer: Address, chain_id: u64, tag: B256) -> Result<NonceView>;
    /// Store orphans found on chain. Idempotent by hash.
    async fn record_orphans(
        &self,
        signer: Address,
        chain_id: u64,
        orphans: &[Orphan],
    ) -> Result<()>;
    /// Create the step's transaction row for an orphan — its nonce, its signed bytes, state
    /// CONFIRMING — mark the orphan adopted, and raise the counter past its nonce, in one
    /// database transaction.
    async fn adopt_orphan(
        &self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        signed: &Broadcast,
    ) -> Result<TxRecord>;

    /// Record an off-chain side effect exactly once per (workflow, kind).
    async fn notify(&self, fence: &Fence, kind: &str, payload: &Value) -> Result<bool>;

    async fn indexer_checkpoint(&self, chain_id: u64) -> Result<Option<IndexerCheckpoint>>;
    async fn indexed_block_hash(&self, chain_id: u64, number: u64) -> Result<Option<B256>>;
    /// Store a block's events and advance the checkpoint to it, atomically, **only if the
    /// checkpoint is still `extends`** (`(number - 1, its hash)` as the indexer read it; `None`:
    /// no block indexed yet). Otherwise it moved since that read (a failover lost the blocks
    /// after it, a rollback or another indexer moved it): nothing is written and the answer is
    /// `false`, as writing would skip the blocks between the two or undo newer ones. A block
    /// already at the checkpoint answers `true` (a retry whose acknowledgement was lost).
    async fn index_block(
        &self,
        chain_id: u64,
        extends: Option<(u64, B256)>,
        number: u64,
        hash: B256,
        events: &[TokenEvent],
        finalized: u64,
    ) -> Result<bool>;
    /// Forget blocks above `keep` (a reorg) and their events; returns how many blocks went.
    async fn rollback_index(&self, chain_id: u64, keep: u64) -> Result<u64>;
    async fn indexed_balances(
        &self,
        chain_id: u64,
        contract: Address,
    ) -> Result<Vec<(Address, U256)>>;

    async fn stats(&self, stalled_after: Duration) -> Result<Stats>;
    /// A constant-cost round trip (readiness): unlike `stats`, it reads no table that grows.
    /// The default is one single-row lookup; `PgStore` sends `SELECT 1`.
    async fn ping(&self) -> Result<()> {
        self.indexer_checkpoint(0).await.map(|_| ())
    }
}
