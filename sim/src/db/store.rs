//! The engine's `Store` over a [`DbCall`] (the simulated network in the simulation, a local
//! model in tests), and the inverse: replaying a [`DbRequest`] against any `Store` (for
//! differential tests against the real `PgStore`).

use super::model::{DbModel, DbReply, DbRequest};
use alloy_primitives::{Address, B256, U256};
use dalp_engine::error::{EngineError, Result};
use dalp_engine::store::{
    AuditEntry, Broadcast, Claim, DeadLetter, Fees, Fence, IndexerCheckpoint, JournalEntry,
    NewWorkflow, NonceHold, NonceView, Orphan, Stats, Store, Submitted, TokenEvent, TxIntent,
    TxRecord, TxState, WorkflowId, WorkflowRecord,
};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Executes one request against a database, wherever it is.
#[async_trait::async_trait]
pub trait DbCall: Send + Sync + 'static {
    async fn call(&self, req: DbRequest) -> Result<DbReply>;
}

/// Whole milliseconds, as pg.rs binds durations (`as_millis() as i64`); saturating.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wrong(method: &str, reply: &DbReply) -> EngineError {
    EngineError::Internal(format!(
        "database reply to {method} has the wrong shape: {}",
        reply.variant()
    ))
}

/// The engine's `Store`, each method one [`DbRequest`] through `C`.
pub struct StoreOver<C: DbCall>(pub C);

macro_rules! expect {
    ($self:ident, $method:literal, $req:expr, $pat:pat => $out:expr) => {
        match $self.0.call($req).await? {
            $pat => Ok($out),
            other => Err(wrong($method, &other)),
        }
    };
}

#[async_trait::async_trait]
impl<C: DbCall> Store for StoreOver<C> {
    async fn submit(&self, new: NewWorkflow, window: Duration) -> Result<Submitted> {
        let req = DbRequest::Submit {
            new,
            window_ms: ms(window),
        };
        expect!(self, "submit", req, DbReply::Submitted(s) => s)
    }

    async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>> {
        expect!(self, "workflow", DbRequest::Workflow { id }, DbReply::Workflow(w) => w)
    }

    async fn journal(&self, id: WorkflowId) -> Result<Vec<JournalEntry>> {
        expect!(self, "journal", DbRequest::Journal { id }, DbReply::Journal(j) => j)
    }

    async fn claim(
        &self,
        node: &str,
        lease: Duration,
        limit: usize,
        lease_id: i64,
    ) -> Result<Vec<Claim>> {
        let req = DbRequest::Claim {
            node: node.to_string(),
            lease_ms: ms(lease),
            limit,
            lease_id,
            skip_locked: Vec::new(),
        };
        expect!(self, "claim", req, DbReply::Claims(c) => c)
    }

    async fn renew_lease(&self, fence: &Fence, lease: Duration) -> Result<()> {
        let req = DbRequest::RenewLease {
            fence: fence.clone(),
            lease_ms: ms(lease),
        };
        expect!(self, "renew_lease", req, DbReply::Unit => ())
    }

    async fn release(&self, fence: &Fence) -> Result<()> {
        let req = DbRequest::Release {
            fence: fence.clone(),
        };
        expect!(self, "release", req, DbReply::Unit => ())
    }

    async fn complete_step(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        output: Value,
        result: Option<Value>,
    ) -> Result<()> {
        let req = DbRequest::CompleteStep {
            fence: fence.clone(),
            step,
            name: name.to_string(),
            output,
            result,
        };
        expect!(self, "complete_step", req, DbReply::Unit => ())
    }

    async fn schedule_retry(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        delay: Duration,
    ) -> Result<()> {
        let req = DbRequest::ScheduleRetry {
            fence: fence.clone(),
            step,
            name: name.to_string(),
            error: error.clone(),
            delay_ms: ms(delay),
        };
        expect!(self, "schedule_retry", req, DbReply::Unit => ())
    }

    async fn fail(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        dead_letter: bool,
    ) -> Result<()> {
        let req = DbRequest::Fail {
            fence: fence.clone(),
            step,
            name: name.to_string(),
            error: error.clone(),
            dead_letter,
        };
        expect!(self, "fail", req, DbReply::Unit => ())
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let req = DbRequest::DeadLetters { limit };
        expect!(self, "dead_letters", req, DbReply::DeadLetters(d) => d)
    }

    async fn requeue(&self, id: WorkflowId, actor: &str, reason: &str) -> Result<WorkflowRecord> {
        let req = DbRequest::Requeue {
            id,
            actor: actor.to_string(),
            reason: reason.to_string(),
        };
        expect!(self, "requeue", req, DbReply::WorkflowRecord(w) => w)
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let req = DbRequest::Audit {
            entry: entry.clone(),
        };
        expect!(self, "audit", req, DbReply::Unit => ())
    }

    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let req = DbRequest::AuditLog { limit };
        expect!(self, "audit_log", req, DbReply::AuditLog(a) => a)
    }

    async fn tx_for_step(&self, workflow: WorkflowId, step: i32) -> Result<Option<TxRecord>> {
        let req = DbRequest::TxForStep { workflow, step };
        expect!(self, "tx_for_step", req, DbReply::OptTx(t) => t)
    }

    async fn txs_for_workflow(&self, workflow: WorkflowId) -> Result<Vec<TxRecord>> {
        let req = DbRequest::TxsForWorkflow { workflow };
        expect!(self, "txs_for_workflow", req, DbReply::Txs(t) => t)
    }

    async fn nonce_fillers(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
    ) -> Result<Vec<Broadcast>> {
        let req = DbRequest::NonceFillers {
            signer,
            chain_id,
            nonce,
        };
        expect!(self, "nonce_fillers", req, DbReply::Broadcasts(b) => b)
    }

    async fn record_filler(
        &self,
        signer: Address,
        chain_id: u64,
        signed: &Broadcast,
    ) -> Result<()> {
        let req = DbRequest::RecordFiller {
            signer,
            chain_id,
            signed: signed.clone(),
        };
        expect!(self, "record_filler", req, DbReply::Unit => ())
    }

    async fn named_nonces(
        &self,
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<u64>> {
        let req = DbRequest::NamedNonces {
            signer,
            chain_id,
            from,
            to,
        };
        expect!(self, "named_nonces", req, DbReply::Nonces(n) => n)
    }

    async fn record_foreign(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
        hash: B256,
    ) -> Result<()> {
        let req = DbRequest::RecordForeign {
            signer,
            chain_id,
            nonce,
            hash,
        };
        expect!(self, "record_foreign", req, DbReply::Unit => ())
    }

    async fn nonce_view(&self, signer: Address, chain_id: u64, tag: B256) -> Result<NonceView> {
        let req = DbRequest::NonceView {
            signer,
            chain_id,
            tag,
        };
        expect!(self, "nonce_view", req, DbReply::NonceView(v) => v)
    }

    async fn record_orphans(
        &self,
        signer: Address,
        chain_id: u64,
        orphans: &[Orphan],
    ) -> Result<()> {
        let req = DbRequest::RecordOrphans {
            signer,
            chain_id,
            orphans: orphans.to_vec(),
        };
        expect!(self, "record_orphans", req, DbReply::Unit => ())
    }

    async fn adopt_orphan(
        &self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        signed: &Broadcast,
    ) -> Result<TxRecord> {
        let req = DbRequest::AdoptOrphan {
            fence: fence.clone(),
            step,
            intent: intent.clone(),
            signed: signed.clone(),
        };
        expect!(self, "adopt_orphan", req, DbReply::Tx(t) => t)
    }

    async fn tx_by_nonce(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
    ) -> Result<Option<TxRecord>> {
        let req = DbRequest::TxByNonce {
            signer,
            chain_id,
            nonce,
        };
        expect!(self, "tx_by_nonce", req, DbReply::OptTx(t) => t)
    }

    async fn nonce_holds(
        &self,
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<NonceHold>> {
        let req = DbRequest::NonceHolds {
            signer,
            chain_id,
            from,
            to,
        };
        expect!(self, "nonce_holds", req, DbReply::Holds(h) => h)
    }

    async fn create_tx(
        &self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        fees: Fees,
        chain_nonce: u64,
    ) -> Result<TxRecord> {
        let req = DbRequest::CreateTx {
            fence: fence.clone(),
            step,
            intent: intent.clone(),
            fees,
            chain_nonce,
        };
        expect!(self, "create_tx", req, DbReply::Tx(t) => t)
    }

    async fn record_signed(
        &self,
        fence: &Fence,
        tx_id: i64,
        signed: &Broadcast,
    ) -> Result<TxRecord> {
        let req = DbRequest::RecordSigned {
            fence: fence.clone(),
            tx_id,
            signed: signed.clone(),
        };
        expect!(self, "record_signed", req, DbReply::Tx(t) => t)
    }

    async fn set_tx_state(
        &self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        detail: Option<&str>,
        receipt: Option<&Value>,
    ) -> Result<()> {
        let req = DbRequest::SetTxState {
            fence: fence.clone(),
            tx_id,
            state,
            detail: detail.map(str::to_string),
            receipt: receipt.cloned(),
        };
        expect!(self, "set_tx_state", req, DbReply::Unit => ())
    }

    async fn reassign_nonce(
        &self,
        fence: &Fence,
        tx_id: i64,
        chain_nonce: u64,
    ) -> Result<TxRecord> {
        let req = DbRequest::ReassignNonce {
            fence: fence.clone(),
            tx_id,
            chain_nonce,
        };
        expect!(self, "reassign_nonce", req, DbReply::Tx(t) => t)
    }

    async fn abandon_tx(
        &self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        release: bool,
    ) -> Result<()> {
        let req = DbRequest::AbandonTx {
            fence: fence.clone(),
            tx_id,
            state,
            release,
        };
        expect!(self, "abandon_tx", req, DbReply::Unit => ())
    }

    async fn resync_nonce(&self, signer: Address, chain_id: u64, chain_nonce: u64) -> Result<u64> {
        let req = DbRequest::ResyncNonce {
            signer,
            chain_id,
            chain_nonce,
        };
        expect!(self, "resync_nonce", req, DbReply::U64(n) => n)
    }

    async fn notify(&self, fence: &Fence, kind: &str, payload: &Value) -> Result<bool> {
        let req = DbRequest::Notify {
            fence: fence.clone(),
            kind: kind.to_string(),
            payload: payload.clone(),
        };
        expect!(self, "notify", req, DbReply::Bool(b) => b)
    }

    async fn indexer_checkpoint(&self, chain_id: u64) -> Result<Option<IndexerCheckpoint>> {
        let req = DbRequest::IndexerCheckpoint { chain_id };
        expect!(self, "indexer_checkpoint", req, DbReply::Checkpoint(c) => c)
    }

    async fn indexed_block_hash(&self, chain_id: u64, number: u64) -> Result<Option<B256>> {
        let req = DbRequest::IndexedBlockHash { chain_id, number };
        expect!(self, "indexed_block_hash", req, DbReply::OptHash(h) => h)
    }

    async fn index_block(
        &self,
        chain_id: u64,
        extends: Option<(u64, B256)>,
        number: u64,
        hash: B256,
        events: &[TokenEvent],
        finalized: u64,
    ) -> Result<bool> {
        // pg.rs asserts this in the engine process, before anything commits.
        for e in events {
            assert_eq!(
                e.block_hash, hash,
                "events must belong to the block being indexed"
            );
        }
        let req = DbRequest::IndexBlock {
            chain_id,
            extends,
            number,
            hash,
            events: events.to_vec(),
            finalized,
        };
        expect!(self, "index_block", req, DbReply::Bool(b) => b)
    }

    async fn rollback_index(&self, chain_id: u64, keep: u64) -> Result<u64> {
        let req = DbRequest::RollbackIndex { chain_id, keep };
        expect!(self, "rollback_index", req, DbReply::U64(n) => n)
    }

    async fn indexed_balances(
        &self,
        chain_id: u64,
        contract: Address,
    ) -> Result<Vec<(Address, U256)>> {
        let req = DbRequest::IndexedBalances { chain_id, contract };
        expect!(self, "indexed_balances", req, DbReply::Balances(b) => b)
    }

    async fn stats(&self, stalled_after: Duration) -> Result<Stats> {
        let req = DbRequest::Stats {
            stalled_after_ms: ms(stalled_after),
        };
        expect!(self, "stats", req, DbReply::Stats(s) => s)
    }
}

/// Replay one request against any `Store` (the inverse of [`StoreOver`]): a differential test
/// feeds the same `Vec<DbRequest>` to a real `PgStore` through this and to [`DbModel::apply`].
pub async fn call_store<S: Store + ?Sized>(store: &S, req: DbRequest) -> Result<DbReply> {
    let ms = Duration::from_millis;
    Ok(match req {
        DbRequest::Submit { new, window_ms } => {
            DbReply::Submitted(store.submit(new, ms(window_ms)).await?)
        }
        DbRequest::Workflow { id } => DbReply::Workflow(store.workflow(id).await?),
        DbRequest::Journal { id } => DbReply::Journal(store.journal(id).await?),
        DbRequest::Claim {
            node,
            lease_ms,
            limit,
            lease_id,
            skip_locked,
        } => {
            // Locks of other sessions exist only in the simulated server; a replayed client
            // request never carries them.
            assert!(skip_locked.is_empty(), "a replayed claim names locked rows");
            DbReply::Claims(store.claim(&node, ms(lease_ms), limit, lease_id).await?)
        }
        DbRequest::RenewLease { fence, lease_ms } => {
            store.renew_lease(&fence, ms(lease_ms)).await?;
            DbReply::Unit
        }
        DbRequest::Release { fence } => {
            store.release(&fence).await?;
            DbReply::Unit
        }
        DbRequest::CompleteStep {
            fence,
            step,
            name,
            output,
            result,
        } => {
            store
                .complete_step(&fence, step, &name, output, result)
                .await?;
            DbReply::Unit
        }
        DbRequest::ScheduleRetry {
            fence,
            step,
            name,
            error,
            delay_ms,
        } => {
            store
                .schedule_retry(&fence, step, &name, &error, ms(delay_ms))
                .await?;
            DbReply::Unit
        }
        DbRequest::Fail {
            fence,
            step,
            name,
            error,
            dead_letter,
        } => {
            store.fail(&fence, step, &name, &error, dead_letter).await?;
            DbReply::Unit
        }
        DbRequest::DeadLetters { limit } => DbReply::DeadLetters(store.dead_letters(limit).await?),
        DbRequest::Requeue { id, actor, reason } => {
            DbReply::WorkflowRecord(store.requeue(id, &actor, &reason).await?)
        }
        DbRequest::Audit { entry } => {
            store.audit(&entry).await?;
            DbReply::Unit
        }
        DbRequest::AuditLog { limit } => DbReply::AuditLog(store.audit_log(limit).await?),
        DbRequest::TxForStep { workflow, step } => {
            DbReply::OptTx(store.tx_for_step(workflow, step).await?)
        }
        DbRequest::TxsForWorkflow { workflow } => {
            DbReply::Txs(store.txs_for_workflow(workflow).await?)
        }
        DbRequest::NonceFillers {
            signer,
            chain_id,
            nonce,
        } => DbReply::Broadcasts(store.nonce_fillers(signer, chain_id, nonce).await?),
        DbRequest::RecordFiller {
            signer,
            chain_id,
            signed,
        } => {
            store.record_filler(signer, chain_id, &signed).await?;
            DbReply::Unit
        }
        DbRequest::NonceView {
            signer,
            chain_id,
            tag,
        } => DbReply::NonceView(store.nonce_view(signer, chain_id, tag).await?),
        DbRequest::RecordOrphans {
            signer,
            chain_id,
            orphans,
        } => {
            store.record_orphans(signer, chain_id, &orphans).await?;
            DbReply::Unit
        }
        DbRequest::AdoptOrphan {
            fence,
            step,
            intent,
            signed,
        } => DbReply::Tx(store.adopt_orphan(&fence, step, &intent, &signed).await?),
        DbRequest::TxByNonce {
            signer,
            chain_id,
            nonce,
        } => DbReply::OptTx(store.tx_by_nonce(signer, chain_id, nonce).await?),
        DbRequest::NonceHolds {
            signer,
            chain_id,
            from,
            to,
        } => DbReply::Holds(store.nonce_holds(signer, chain_id, from, to).await?),
        DbRequest::NamedNonces {
            signer,
            chain_id,
            from,
            to,
        } => DbReply::Nonces(store.named_nonces(signer, chain_id, from, to).await?),
        DbRequest::RecordForeign {
            signer,
            chain_id,
            nonce,
            hash,
        } => {
            store.record_foreign(signer, chain_id, nonce, hash).await?;
            DbReply::Unit
        }
        DbRequest::CreateTx {
            fence,
            step,
            intent,
            fees,
            chain_nonce,
        } => DbReply::Tx(
            store
                .create_tx(&fence, step, &intent, fees, chain_nonce)
                .await?,
        ),
        DbRequest::RecordSigned {
            fence,
            tx_id,
            signed,
        } => DbReply::Tx(store.record_signed(&fence, tx_id, &signed).await?),
        DbRequest::SetTxState {
            fence,
            tx_id,
            state,
            detail,
            receipt,
        } => {
            store
                .set_tx_state(&fence, tx_id, state, detail.as_deref(), receipt.as_ref())
                .await?;
            DbReply::Unit
        }
        DbRequest::ReassignNonce {
            fence,
            tx_id,
            chain_nonce,
        } => DbReply::Tx(store.reassign_nonce(&fence, tx_id, chain_nonce).await?),
        DbRequest::AbandonTx {
            fence,
            tx_id,
            state,
            release,
        } => {
            store.abandon_tx(&fence, tx_id, state, release).await?;
            DbReply::Unit
        }
        DbRequest::ResyncNonce {
            signer,
            chain_id,
            chain_nonce,
        } => DbReply::U64(store.resync_nonce(signer, chain_id, chain_nonce).await?),
        DbRequest::Notify {
            fence,
            kind,
            payload,
        } => DbReply::Bool(store.notify(&fence, &kind, &payload).await?),
        DbRequest::IndexerCheckpoint { chain_id } => {
            DbReply::Checkpoint(store.indexer_checkpoint(chain_id).await?)
        }
        DbRequest::IndexedBlockHash { chain_id, number } => {
            DbReply::OptHash(store.indexed_block_hash(chain_id, number).await?)
        }
        DbRequest::IndexBlock {
            chain_id,
            extends,
            number,
            hash,
            events,
            finalized,
        } => DbReply::Bool(
            store
                .index_block(chain_id, extends, number, hash, &events, finalized)
                .await?,
        ),
        DbRequest::RollbackIndex { chain_id, keep } => {
            DbReply::U64(store.rollback_index(chain_id, keep).await?)
        }
        DbRequest::IndexedBalances { chain_id, contract } => {
            DbReply::Balances(store.indexed_balances(chain_id, contract).await?)
        }
        DbRequest::Stats { stalled_after_ms } => {
            DbReply::Stats(store.stats(ms(stalled_after_ms)).await?)
        }
    })
}

/// A clock for [`LocalDb`]: database milliseconds.
pub type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// A database in this process: the model behind a mutex, and a clock (by default a manual one,
/// advanced with [`LocalDb::advance`]).
pub struct LocalDb {
    model: Mutex<DbModel>,
    now_ms: AtomicU64,
    clock: Option<Clock>,
}

impl Default for LocalDb {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalDb {
    /// An empty database at time 0 with a manual clock.
    pub fn new() -> Self {
        Self::with_model(DbModel::new())
    }

    pub fn with_model(model: DbModel) -> Self {
        LocalDb {
            model: Mutex::new(model),
            now_ms: AtomicU64::new(0),
            clock: None,
        }
    }

    /// Read the time from `clock` instead of the manual clock.
    pub fn with_clock(clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        LocalDb {
            clock: Some(Box::new(clock)),
            ..Self::new()
        }
    }

    /// The database time.
    pub fn now_ms(&self) -> u64 {
        match &self.clock {
            Some(c) => c(),
            None => self.now_ms.load(Ordering::SeqCst),
        }
    }

    /// Move the manual clock forward.
    pub fn advance(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Set the manual clock.
    pub fn set_now(&self, ms: u64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }

    /// The model, locked (for inspection in tests).
    pub fn model(&self) -> MutexGuard<'_, DbModel> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply one request now, synchronously.
    pub fn apply(&self, req: &DbRequest) -> Result<DbReply> {
        let now = self.now_ms();
        self.model().apply(req, now)
    }
}

#[async_trait::async_trait]
impl DbCall for LocalDb {
    async fn call(&self, req: DbRequest) -> Result<DbReply> {
        self.apply(&req)
    }
}

#[async_trait::async_trait]
impl<T: DbCall> DbCall for std::sync::Arc<T> {
    async fn call(&self, req: DbRequest) -> Result<DbReply> {
        (**self).call(req).await
    }
}
