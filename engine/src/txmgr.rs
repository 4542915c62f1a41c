//! The transaction lifecycle of one transaction step, persisted at every transition:
//! PREPARING (fees, nonce) → SIGNING → BROADCASTING (signed bytes stored first) → CONFIRMING →
//! COMPLETED, or FAILED / DEAD_LETTER / CANCELLED.
//!
//! The rules that make retries safe:
//! - a step's transaction row is created once, with its nonce, in the same database transaction
//!   as the nonce allocation; a re-run of the step finds it and never allocates again;
//! - the signed bytes are stored before any broadcast, so a retry re-sends the same bytes (same
//!   hash: a node answers "already known", never a second transaction);
//! - after an ambiguous outcome (timeout) the receipt and the nonce are checked before anything
//!   is re-sent, and only the stored bytes are re-sent;
//! - `nonce too low` with no receipt of ours means someone else used the nonce: resynchronise
//!   from the chain and take a fresh nonce; a stuck transaction is replaced with the same nonce
//!   and a bumped fee; every signed version stays on record because any of them may be mined;
//! - no nonce gap blocks later transactions: a step completed at `confirmations` blocks can still
//!   lose its transaction to a reorg that drops it, after its workflow has moved on, and then
//!   every later nonce of the signer waits behind the hole. The maintenance loop therefore runs
//!   [`TxManager::heal_nonce_gaps`]: from the chain's mined nonce upwards, a signed transaction of
//!   ours that has no receipt and that the node does not know is re-broadcast from its stored
//!   bytes (same nonce, same hash: at most one of them is ever mined). It needs no lease: it
//!   writes no workflow state. When the hole at the mined nonce is not ours (a nonce used outside
//!   the engine, then dropped by the node), the same pass fills it with a zero-value self-transfer
//!   once the gap has been seen on two passes; the filler is stored (`record_filler`) before it
//!   is broadcast, like every signed transaction.
//! - a step whose records were lost (an asynchronous replica promoted without them) finds its
//!   own transaction on chain by the tag at the end of its calldata and adopts it (`txmgr/orphans.rs`).

mod orphans;

use crate::chain::{Gateway, Receipt};
use crate::config::ChainConfig;
use crate::error::{node_rejection, EngineError, NodeRejection, Result};
use crate::metrics::Metrics;
use crate::signer::{SignerKey, UnsignedTx};
use crate::store::{
    Broadcast, Fees, Fence, NonceHold, Store, TxIntent, TxRecord, TxState, WorkflowId,
};
use alloy_primitives::{Address, B256};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a completed transaction step records in the journal.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TxOutcome {
    pub tx_hash: B256,
    pub nonce: u64,
    pub block_number: u64,
    pub block_hash: B256,
    pub contract_address: Option<Address>,
    pub gas_used: u64,
}

impl TxOutcome {
    fn from_receipt(r: &Receipt, nonce: u64) -> Self {
        TxOutcome {
            tx_hash: r.tx_hash,
            nonce,
            block_number: r.block_number,
            block_hash: r.block_hash,
            contract_address: r.contract_address,
            gas_used: r.gas_used,
        }
    }
}

pub struct TxManager {
    /// Per signer, the foreign nonce gap seen on the previous healing pass (a gap is filled only
    /// when seen on two passes in a row, so a nonce allocated a moment ago is never mistaken).
    pub gap_seen: std::sync::Mutex<std::collections::BTreeMap<Address, u64>>,
    pub store: Arc<dyn Store>,
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub chain: ChainConfig,
    pub chain_id: u64,
    pub lease: Duration,
}

impl TxManager {
    /// The chain's mined nonce for `signer` when every transaction of ours the engine completed
    /// is in the canonical chain, `None` when one is missing: a completed record sits at or above
    /// the mined nonce (a reorg removed it and it waits to be re-included or re-broadcast, maybe
    /// behind in-flight ones). A decision read from chain state (a compliance "no") is not final
    /// while that is so. Looks at the records from the mined nonce up, as the gap healer does,
    /// in one read: at each nonce the record [`Store::tx_by_nonce`] would give (the highest id of
    /// those whose bytes may be on chain), which a read per nonce took up to [`HEAL_SCAN`] round
    /// trips to find, twice per compliance check (issue 13: the database's most frequent request).
    pub async fn own_history_canonical(&self, signer: Address) -> Result<Option<u64>> {
        let mined = self.gateway.transaction_count(signer, "latest").await?;
        // Up to the counter, past nonces no record holds: a nonce used outside the engine (or
        // a filler) that a reorg dropped sits below our completed records (random-chaos seed
        // 87: the scan stopped there and a transfer's "no" was final while the recipient's
        // identity registration, completed, was out of the chain).
        let allocated = self
            .store
            .nonce_view(signer, self.chain_id, B256::ZERO)
            .await?
            .next_nonce
            .unwrap_or(mined);
        let end = allocated.min(mined.saturating_add(HEAL_SCAN));
        if end <= mined {
            return Ok(Some(mined));
        }
        let holds = self
            .store
            .nonce_holds(signer, self.chain_id, mined, end)
            .await?;
        let mut at_nonce: BTreeMap<u64, &NonceHold> = BTreeMap::new();
        for h in holds.iter().filter(|h| signed_state(h.state)) {
            debug_assert!(
                (mined..end).contains(&h.nonce),
                "a hold outside the range read"
            );
            let e = at_nonce.entry(h.nonce).or_insert(h);
            if h.tx_id > e.tx_id {
                *e = h;
            }
        }
        if at_nonce.values().any(|h| h.state == TxState::Completed) {
            return Ok(None);
        }
        Ok(Some(mined))
    }
}

/// `Store::tx_by_nonce`'s states: a record whose signed bytes may be, or may have been, on
/// chain. The range reads (`Store::nonce_holds`) that replace per-nonce `tx_by_nonce` reads
/// filter on it.
fn signed_state(state: TxState) -> bool {
    matches!(
        state,
        TxState::Broadcasting | TxState::Confirming | TxState::Completed
    )
}

/// Whether a receipt in block `block` is `depth` blocks deep when the head is `head`: its own
/// block counts as one (depth 1 is "mined").
fn deep_enough(head: u64, block: u64, depth: u64) -> bool {
    head + 1 >= block + depth
}

/// How many nonces above the chain's mined one [`TxManager::heal_nonce_gaps`] looks at per call.
pub const HEAL_SCAN: u64 = 16;

enum Sent {
    Accepted,
    Rejected(NodeRejection, String),
    /// The outcome is unknown: the node may have the transaction.
    Ambiguous,
}

impl TxManager {
    /// Run a transaction step to `confirmations` blocks, resuming whatever an earlier attempt
    /// (of this process or another) left on record.
    /// `intent.input` ends with the step's `tag` (see `txmgr/orphans.rs`).
    pub async fn execute(
        &self,
        fence: &Fence,
        step: i32,
        key: &SignerKey,
        intent: TxIntent,
        tag: B256,
    ) -> Result<TxOutcome> {
        assert_eq!(intent.signer, key.address(), "intent signer and key differ");
        assert!(
            intent.input.ends_with(tag.as_slice()),
            "a step's calldata ends with its tag"
        );
        let rec = match self.store.tx_for_step(fence.workflow_id, step).await? {
            Some(rec) => rec,
            None => {
                if let Some(done) = self.adopt_abandoned(fence.workflow_id, step).await? {
                    return Ok(done);
                }
                let mut chain_nonce = self
                    .gateway
                    .transaction_count(intent.signer, "pending")
                    .await?;
                match self
                    .adopt_orphan(fence, step, key, &intent, tag, &mut chain_nonce)
                    .await?
                {
                    Some(adopted) => adopted,
                    None => {
                        // Pre-flight: a call that would revert is a permanent failure with no
                        // transaction sent.
                        self.gateway
                            .simulate(
                                intent.signer,
                                intent.to,
                                &intent.input,
                                intent.value,
                                intent.gas_limit,
                            )
                            .await?;
                        let fees = self
                            .gateway
                            .suggest_fees(self.chain.priority_fee_wei)
                            .await?;
                        self.store
                            .create_tx(fence, step, &intent, fees, chain_nonce)
                            .await?
                    }
                }
            }
        };
        self.drive(fence, rec, key, self.chain.confirmations).await
    }

    /// Wait until the transaction of step `tx_step` is final on the canonical chain (its block at
    /// or below `head - finality_depth`, the chain's `finalized` tag: a reorg of `finality_depth`
    /// blocks can replace any block above it), re-including it (same bytes, same nonce) if a reorg
    /// dropped it. `drive` counts depth inclusively (1 = included), hence `finality_depth + 1`.
    pub async fn await_finality(
        &self,
        fence: &Fence,
        tx_step: i32,
        key: &SignerKey,
    ) -> Result<TxOutcome> {
        let rec = self
            .store
            .tx_for_step(fence.workflow_id, tx_step)
            .await?
            .ok_or_else(|| {
                EngineError::Internal(format!("no transaction recorded for step {tx_step}"))
            })?;
        self.drive(fence, rec, key, self.chain.finality_depth + 1)
            .await
    }

    /// A step re-run after its transaction was abandoned (dead-letter, then requeue) first checks
    /// whether one of the abandoned versions was mined after all (adopted), or is still pending
    /// (waited for: `NonceReconciling`).
    async fn adopt_abandoned(&self, workflow: WorkflowId, step: i32) -> Result<Option<TxOutcome>> {
        for old in self
            .store
            .txs_for_workflow(workflow)
            .await?
            .iter()
            .filter(|t| t.step_index == step)
        {
            if let Some(r) = self.find_receipt(old).await? {
                if r.success {
                    // Adopted as the step's outcome only when it is as settled as a step's own
                    // transaction must be: `confirmations` deep on the canonical chain.
                    let head = self.gateway.block_number().await?;
                    let depth = self.chain.confirmations;
                    let canonical = deep_enough(head, r.block_number, depth)
                        && self
                            .gateway
                            .settled(r.block_number, r.block_hash, depth)
                            .await?;
                    if !canonical {
                        crate::probe!("requeue.abandoned_pending");
                        return Err(EngineError::NonceReconciling(format!(
                            "transaction {:#x} (nonce {}) that this step abandoned when it was dead-lettered was mined at block {} and is not settled yet ({depth} confirmations on the canonical chain)",
                            r.tx_hash, old.nonce, r.block_number
                        )));
                    }
                    crate::probe!("requeue.abandoned_version");
                    return Ok(Some(TxOutcome::from_receipt(&r, old.nonce)));
                }
                continue;
            }
            // Not mined, but a pool may still hold it (stuck underpriced when the step was
            // dead-lettered): a new transaction now would let both be mined. Wait, as for any
            // unsettled nonce of ours, until it is mined (adopted above) or gone.
            for b in old.broadcasts.iter().rev() {
                if self.gateway.transaction_known(b.hash).await? {
                    crate::probe!("requeue.abandoned_pending");
                    return Err(EngineError::NonceReconciling(format!(
                        "transaction {:#x} (nonce {}) that this step abandoned when it was dead-lettered is still pending; waiting for it to be mined or dropped",
                        b.hash, old.nonce
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Before a workflow is dead-lettered at a transaction step: if the step's transaction never
    /// used its nonce on chain, release the nonce so no gap blocks later transactions.
    pub async fn abandon_step(&self, fence: &Fence, step: i32) -> Result<()> {
        let Some(rec) = self.store.tx_for_step(fence.workflow_id, step).await? else {
            return Ok(());
        };
        if self.find_receipt(&rec).await?.is_some() {
            self.store
                .abandon_tx(fence, rec.id, TxState::DeadLetter, false)
                .await?;
            return Ok(());
        }
        let chain_nonce = self
            .gateway
            .transaction_count(rec.intent_signer, "latest")
            .await?;
        let release = chain_nonce <= rec.nonce;
        self.store
            .abandon_tx(fence, rec.id, TxState::DeadLetter, release)
            .await
    }

    /// Heal nonce gaps of `signer`: starting at the chain's mined (`latest`) nonce L, for each
    /// n = L, L+1, … (at most [`HEAL_SCAN`] nonces, stopping at the first n with no signed
    /// record or whose transaction the node knows), re-broadcast the stored bytes of our transaction holding n if the node does not
    /// know it and none of its signed versions has a receipt — a reorg dropped it (possibly
    /// after its step completed) or the mempool lost it, and every later nonce waits behind it.
    /// Never signs anything and never writes to the store (it holds no fence); a workflow
    /// driving the same transaction sends the same bytes, so racing it is harmless. Returns how
    /// many transactions were re-broadcast.
    pub async fn heal_nonce_gaps(&self, key: &SignerKey) -> Result<u32> {
        let signer = key.address();
        let mined = self.gateway.transaction_count(signer, "latest").await?;
        let mut healed = 0;
        for nonce in mined..mined.saturating_add(HEAL_SCAN) {
            let Some(rec) = self.store.tx_by_nonce(signer, self.chain_id, nonce).await? else {
                if nonce == mined {
                    healed += self.fill_foreign_gap(key, mined).await?;
                } else {
                    self.gap_seen.lock().expect("gap lock").remove(&signer);
                }
                break;
            };
            self.gap_seen.lock().expect("gap lock").remove(&signer);
            let (Some(hash), Some(_)) = (rec.hash, rec.raw.as_ref()) else {
                continue;
            };
            // Known to the node (pending, queued or mined): nothing below it is missing that this
            // pass could fix, and what is missing above it becomes the lowest on a later pass.
            if self.gateway.transaction_known(hash).await? {
                break;
            }
            if self.find_receipt(&rec).await?.is_some() {
                continue;
            }
            crate::fault_point!(
                "fp.nonce.heal",
                EngineError::RpcUnavailable("fault point: nonce healer".into())
            );
            crate::probe!("nonce.gap_rebroadcast");
            let outcome = match self.send(&rec).await? {
                Sent::Accepted => "accepted",
                Sent::Rejected(NodeRejection::AlreadyKnown, _) => "already_known",
                Sent::Rejected(NodeRejection::NonceTooLow, _) => "nonce_too_low",
                Sent::Rejected(_, _) => "rejected",
                Sent::Ambiguous => "ambiguous",
            };
            healed += 1;
            self.metrics.inc(
                "dalp_nonce_gap_heals_total",
                &[("signer", &format!("{signer:#x}"))],
            );
            tracing::warn!(
                tx_id = rec.id,
                workflow_id = rec.workflow_id,
                nonce,
                %hash,
                state = rec.state.as_str(),
                outcome,
                "nonce gap: our transaction is unknown to the node; re-broadcast its stored bytes"
            );
        }
        Ok(healed)
    }

    /// The lowest unmined nonce `nonce` holds no record of ours. If the node has nothing
    /// executable at it while our transactions wait above it, the nonce was used outside the
    /// engine and then abandoned (dropped from the mempool): every later transaction is blocked.
    /// Once the same gap is seen on two passes, fill it with a zero-value self-transfer, stored
    /// before broadcast, with fees above any earlier filler's. Returns 1 if a filler was sent.
    async fn fill_foreign_gap(&self, key: &SignerKey, nonce: u64) -> Result<u32> {
        let signer = key.address();
        let forget = || {
            self.gap_seen.lock().expect("gap lock").remove(&signer);
        };
        // One read for the nonces above the gap, not one per nonce, and before the node is
        // asked: a healing pass comes here for every signer whenever everything of ours is
        // mined, and then nothing of ours waits (a database read instead of a provider call).
        let ours_waiting = self
            .store
            .nonce_holds(
                signer,
                self.chain_id,
                nonce + 1,
                nonce.saturating_add(HEAL_SCAN),
            )
            .await?
            .iter()
            .any(|h| signed_state(h.state));
        if !ours_waiting || self.gateway.transaction_count(signer, "pending").await? > nonce {
            forget();
            return Ok(0);
        }
        let seen_before = self
            .gap_seen
            .lock()
            .expect("gap lock")
            .insert(signer, nonce)
            == Some(nonce);
        if !seen_before {
            return Ok(0);
        }
        let earlier = self
            .store
            .nonce_fillers(signer, self.chain_id, nonce)
            .await?;
        if let Some(last) = earlier.last() {
            if self.gateway.transaction_known(last.hash).await? {
                return Ok(0);
            }
        }
        let suggested = self
            .gateway
            .suggest_fees(self.chain.priority_fee_wei)
            .await?;
        let fees = match earlier.last() {
            Some(b) => self.bumped(
                Fees {
                    max_fee_per_gas: b.max_fee_per_gas,
                    max_priority_fee_per_gas: b.max_priority_fee_per_gas,
                },
                suggested,
            ),
            None => suggested,
        };
        let unsigned = UnsignedTx {
            chain_id: self.chain_id,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: Some(signer),
            value: alloy_primitives::U256::ZERO,
            input: alloy_primitives::Bytes::new(),
        };
        let (raw, hash) = key.sign(&unsigned)?;
        let filler = Broadcast {
            hash,
            nonce,
            raw,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        };
        self.store
            .record_filler(signer, self.chain_id, &filler)
            .await?;
        let answer = self.gateway.send_raw(&filler.raw).await;
        crate::probe!("nonce.filler_sent");
        self.metrics.inc(
            "dalp_nonce_gap_fills_total",
            &[("signer", &format!("{signer:#x}"))],
        );
        tracing::warn!(nonce, %hash, answer = ?answer.as_ref().map(|_| "accepted"), "nonce gap left by a transaction outside the engine: sent a zero-value filler");
        forget();
        Ok(1)
    }

    async fn find_receipt(&self, rec: &TxRecord) -> Result<Option<Receipt>> {
        for b in rec.broadcasts.iter().rev() {
            if let Some(r) = self.gateway.receipt(b.hash).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    async fn sign_and_store(
        &self,
        fence: &Fence,
        rec: &TxRecord,
        key: &SignerKey,
        fees: Fees,
    ) -> Result<TxRecord> {
        let unsigned = UnsignedTx {
            chain_id: rec.chain_id,
            nonce: rec.nonce,
            gas_limit: rec.gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: rec.to,
            value: rec.value,
            input: rec.input.clone(),
        };
        let (raw, hash) = key.sign(&unsigned)?;
        let b = Broadcast {
            hash,
            nonce: rec.nonce,
            raw,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        };
        let signed = self.store.record_signed(fence, rec.id, &b).await?;
        // The bytes are durable, nothing is sent yet: a crash here must resume to these bytes.
        crate::fault_point!(
            "fp.tx.signed_before_broadcast",
            EngineError::DbUnavailable("fault point: after signing".into())
        );
        Ok(signed)
    }

    async fn send(&self, rec: &TxRecord) -> Result<Sent> {
        let raw = rec
            .raw
            .as_ref()
            .expect("signed bytes are stored before broadcast");
        match self.gateway.send_raw(raw).await {
            Ok(_) => Ok(Sent::Accepted),
            // Every endpoint answered that it cannot serve now (rate limited, an internal
            // error, behind the chain): no verdict on the transaction, which may be in a pool.
            Err(e) if e.node_unavailable() => {
                crate::probe!("tx.ambiguous_send");
                Ok(Sent::Ambiguous)
            }
            Err(EngineError::Rpc { message, .. }) => {
                Ok(Sent::Rejected(node_rejection(&message), message))
            }
            Err(EngineError::SignerFunds { message, .. }) => Err(EngineError::SignerFunds {
                signer: format!("{:#x}", rec.intent_signer),
                message,
            }),
            Err(e) if e.is_transient() => {
                crate::probe!("tx.ambiguous_send");
                Ok(Sent::Ambiguous)
            }
            Err(e) => Err(e),
        }
    }

    fn bumped(&self, old: Fees, suggested: Fees) -> Fees {
        let pct = self.chain.replacement_bump_percent as u128;
        Fees {
            max_fee_per_gas: (old.max_fee_per_gas * (100 + pct) / 100)
                .max(suggested.max_fee_per_gas),
            max_priority_fee_per_gas: (old.max_priority_fee_per_gas * (100 + pct) / 100)
                .max(suggested.max_priority_fee_per_gas),
        }
    }

    async fn replace(&self, fence: &Fence, rec: &TxRecord, key: &SignerKey) -> Result<TxRecord> {
        let suggested = self
            .gateway
            .suggest_fees(self.chain.priority_fee_wei)
            .await?;
        let fees = self.bumped(rec.fees(), suggested);
        crate::probe!("tx.replaced_by_fee");
        self.metrics.inc("dalp_tx_replacements_total", &[]);
        tracing::info!(
            tx_id = rec.id,
            nonce = rec.nonce,
            max_fee = fees.max_fee_per_gas,
            "replacing transaction with bumped fee"
        );
        self.sign_and_store(fence, rec, key, fees).await
    }

    /// Move `rec` to a fresh nonce at or above the chain's pending count. The counter jumps
    /// over every nonce between it and that count: those the chain used with no record (lost
    /// in a failover) must already be stored as orphans, or their steps, run again below a
    /// counter that has passed them, would never find them and send their effects twice. The
    /// caller searched below `searched_to`; only nonces the chain used since are searched here.
    async fn resync(
        &self,
        fence: &Fence,
        rec: &TxRecord,
        key: &SignerKey,
        searched_to: u64,
    ) -> Result<TxRecord> {
        let chain_nonce = self
            .gateway
            .transaction_count(rec.intent_signer, "pending")
            .await?;
        if chain_nonce > searched_to {
            crate::probe!("tx.resync_count_moved");
            self.find_orphans(key, chain_nonce).await?;
        }
        self.metrics.inc(
            "dalp_nonce_resyncs_total",
            &[("signer", &format!("{:#x}", rec.intent_signer))],
        );
        tracing::warn!(
            tx_id = rec.id,
            old_nonce = rec.nonce,
            chain_nonce,
            "nonce used outside this transaction; resynchronising"
        );
        self.store.reassign_nonce(fence, rec.id, chain_nonce).await
    }

    /// The state machine. Bounded by `confirm_timeout_ms`; on timeout the step retries later
    /// and resumes from the stored record.
    async fn drive(
        &self,
        fence: &Fence,
        mut rec: TxRecord,
        key: &SignerKey,
        depth: u64,
    ) -> Result<TxOutcome> {
        let deadline = Instant::now() + Duration::from_millis(self.chain.confirm_timeout_ms);
        let poll = Duration::from_millis(self.chain.receipt_poll_ms);
        let stuck_after = Duration::from_millis(self.chain.stuck_after_ms);
        let mut last_sent = Instant::now();
        let mut nonce_gone_seen = 0u32;
        let mut misses = 0u32;
        let mut shallow = None;
        // The lease is renewed when a third of it has passed, not on every poll: a renewal is a
        // database write, and the fencing check on every other write already catches a lost lease.
        let renew_every = self.lease / 3;
        let mut renewed_at: Option<Instant> = None;
        loop {
            if renewed_at.is_none_or(|t| t.elapsed() >= renew_every) {
                crate::fault_point!(
                    "fp.lease.renew",
                    EngineError::DbUnavailable("fault point: lease renewal".into())
                );
                self.store.renew_lease(fence, self.lease).await?;
                renewed_at = Some(Instant::now());
            }
            match rec.state {
                TxState::Preparing | TxState::Signing => {
                    if rec.state == TxState::Preparing {
                        self.store
                            .set_tx_state(fence, rec.id, TxState::Signing, None, None)
                            .await?;
                    }
                    rec = self.sign_and_store(fence, &rec, key, rec.fees()).await?;
                    continue;
                }
                TxState::Broadcasting => {
                    let sent = self.send(&rec).await?;
                    // Sent (or maybe sent), not yet recorded as such: a crash here re-enters
                    // BROADCASTING, which must not make a second effect.
                    crate::fault_point!("fp.tx.broadcast_before_state");
                    match sent {
                        Sent::Accepted
                        | Sent::Rejected(NodeRejection::AlreadyKnown, _)
                        | Sent::Ambiguous => {
                            if matches!(sent, Sent::Rejected(NodeRejection::AlreadyKnown, _)) {
                                crate::probe!("tx.already_known");
                            }
                            // Ambiguous: the confirming state checks the receipt before re-sending.
                            self.store
                                .set_tx_state(fence, rec.id, TxState::Confirming, None, None)
                                .await?;
                            rec.state = TxState::Confirming;
                            last_sent = Instant::now();
                        }
                        Sent::Rejected(NodeRejection::NonceTooLow, _) => {
                            // Ours (mined, maybe by a healer's re-broadcast), or someone else's.
                            // No receipt does not tell: the node that answered may be behind
                            // the one that took the send. The confirmation check decides, and
                            // resynchronises only once the nonce is seen taken without our
                            // receipt twice, a poll apart.
                            if self.find_receipt(&rec).await?.is_some() {
                                crate::probe!("tx.nonce_too_low_ours");
                            } else {
                                crate::probe!("tx.nonce_too_low_unexplained");
                            }
                            rec.state = TxState::Confirming;
                            continue;
                        }
                        Sent::Rejected(
                            NodeRejection::ReplacementUnderpriced | NodeRejection::FeeTooLow,
                            _,
                        ) => {
                            rec = self.replace(fence, &rec, key).await?;
                            continue;
                        }
                        Sent::Rejected(NodeRejection::Other, message) => {
                            crate::probe!("tx.rejected_other");
                            return Err(EngineError::Rpc { code: 0, message });
                        }
                    }
                }
                TxState::Confirming | TxState::Completed => {
                    if let Some(outcome) = self
                        .check_confirmation(
                            fence,
                            &mut rec,
                            key,
                            depth,
                            &mut last_sent,
                            stuck_after,
                            &mut nonce_gone_seen,
                            &mut misses,
                            &mut shallow,
                        )
                        .await?
                    {
                        return Ok(outcome);
                    }
                }
                TxState::Failed | TxState::DeadLetter | TxState::Cancelled => {
                    return Err(EngineError::Internal(format!(
                        "transaction {} is {:?}",
                        rec.id, rec.state
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(EngineError::ConfirmationTimeout {
                    tx_hash: rec.hash.map(|h| format!("{h:#x}")).unwrap_or_default(),
                    secs: self.chain.confirm_timeout_ms / 1000,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn check_confirmation(
        &self,
        fence: &Fence,
        rec: &mut TxRecord,
        key: &SignerKey,
        depth: u64,
        last_sent: &mut Instant,
        stuck_after: Duration,
        nonce_gone_seen: &mut u32,
        misses: &mut u32,
        shallow: &mut Option<u64>,
    ) -> Result<Option<TxOutcome>> {
        // Depth is judged on the head; a head reported within the poll (the health probe's,
        // another transaction's) may say "not deep yet" without a call of its own: it is at least
        // what an endpoint answered within the poll, so that answer is one a read then gave, at
        // most one poll late. A "deep enough" is always judged on a head read now.
        let poll = Duration::from_millis(self.chain.receipt_poll_ms);
        let not_deep_yet = |block: u64| {
            self.gateway
                .recent_head(poll)
                .is_some_and(|seen| !deep_enough(seen, block, depth))
        };
        let mut head_read = None;
        if let Some(block) = *shallow {
            // A receipt was seen in `block`, not deep enough. Until the head reaches
            // its depth, asking for it again could only delay: a receipt still there is not deep
            // enough either, and one reorganised away or into another block is seen when it is
            // asked for at that depth (the decision is always made on a receipt read then, and
            // its block's canonical hash). At most one head read per poll instead of the
            // receipt's.
            if not_deep_yet(block) {
                return Ok(None);
            }
            let head = self.gateway.block_number().await?;
            if !deep_enough(head, block, depth) {
                return Ok(None);
            }
            *shallow = None;
            head_read = Some(head);
        }
        if let Some(receipt) = self.find_receipt(rec).await? {
            *nonce_gone_seen = 0;
            *misses = 0;
            // A receipt that is not deep enough yet needs no canonical check now: the check that
            // matters is the one made when it is (a reorg before that changes nothing). A revert
            // waits for depth too: on a fork that a reorg abandons, the transaction may revert
            // where the live chain's copy of it, re-included in another state, does not. A head
            // read just before the receipt does for the gate: whether the block is still on the
            // canonical chain is checked below, on its hash, either way.
            if head_read.is_none() && not_deep_yet(receipt.block_number) {
                *shallow = Some(receipt.block_number);
                return Ok(None);
            }
            let head = match head_read {
                Some(head) => head,
                None => self.gateway.block_number().await?,
            };
            if !deep_enough(head, receipt.block_number, depth) {
                *shallow = Some(receipt.block_number);
                return Ok(None);
            }
            if !self
                .gateway
                .settled(receipt.block_number, receipt.block_hash, depth)
                .await?
            {
                // Reorganised away; the node will re-include it or drop it (then we re-broadcast).
                crate::probe!("tx.reorged");
                self.metrics.inc("dalp_tx_reorged_total", &[]);
                return Ok(None);
            }
            if !receipt.success {
                crate::probe!("tx.reverted_on_chain");
                let detail = format!("reverted on chain in {:#x}", receipt.tx_hash);
                self.store
                    .set_tx_state(
                        fence,
                        rec.id,
                        TxState::Failed,
                        Some(&detail),
                        Some(&serde_json::to_value(&receipt).expect("receipt json")),
                    )
                    .await?;
                return Err(EngineError::Reverted(detail));
            }
            if rec.state != TxState::Completed {
                let json = serde_json::to_value(&receipt).expect("receipt json");
                self.store
                    .set_tx_state(fence, rec.id, TxState::Completed, None, Some(&json))
                    .await?;
                rec.state = TxState::Completed;
            }
            return Ok(Some(TxOutcome::from_receipt(&receipt, rec.nonce)));
        }
        // No receipt for any of our signed versions. The deeper checks (nonce, mempool) cost two
        // more calls; a transaction normally waits a block or more, so they run on every fourth
        // poll only (and at once after a reorg or a send).
        *misses += 1;
        if *misses % 4 != 1 {
            return Ok(None);
        }
        let mined_nonce = self
            .gateway
            .transaction_count(rec.intent_signer, "latest")
            .await?;
        if mined_nonce > rec.nonce {
            // Our nonce is used on chain by something that is not ours — unless our receipt is
            // merely not visible yet on this endpoint: insist on seeing it twice.
            *nonce_gone_seen += 1;
            if *nonce_gone_seen >= 2 {
                *nonce_gone_seen = 0;
                // The orphan search first: a version of this record that the database lost may
                // still be in the pool, not in a block yet, and a block scan alone then misses it
                // (evidence schedule seed 397: mined 90 ms after the scan, and the record
                // resynchronised and sent its effect again). Pending, it makes the record wait;
                // mined or queued, it is stored as an orphan, where `lost_version` looks first.
                let pending = self
                    .gateway
                    .transaction_count(rec.intent_signer, "pending")
                    .await?;
                self.find_orphans(key, pending).await?;
                self.queued_orphans(key).await?;
                if let Some(signed) = self.lost_version(key, rec).await? {
                    // A version of this very transaction whose record the database lost (a
                    // failover kept the row but not the version, or not the nonce it was moved
                    // to): keep it, at its nonce, and confirm it; a new nonce would send the
                    // effect a second time.
                    crate::probe!("tx.lost_version_adopted");
                    if signed.nonce != rec.nonce {
                        crate::probe!("tx.lost_version_at_another_nonce");
                    }
                    tracing::warn!(
                        tx_id = rec.id,
                        nonce = rec.nonce,
                        version_nonce = signed.nonce,
                        hash = %signed.hash,
                        "our nonce was used by a version of this transaction the database lost: recorded it instead of resynchronising"
                    );
                    *rec = self.store.record_signed(fence, rec.id, &signed).await?;
                    return Ok(None);
                }
                crate::probe!("tx.nonce_gone_resync");
                *rec = self.resync(fence, rec, key, pending).await?;
            }
            return Ok(None);
        }
        *nonce_gone_seen = 0;
        let hash = rec.hash.expect("a confirming transaction has a hash");
        if !self.gateway.transaction_known(hash).await? {
            // Dropped from the mempool, or never arrived (ambiguous send): the same bytes again.
            crate::probe!("tx.rebroadcast");
            self.metrics.inc("dalp_tx_rebroadcasts_total", &[]);
            tracing::info!(tx_id = rec.id, %hash, "transaction unknown to the node; re-broadcasting stored bytes");
            if let Sent::Rejected(
                NodeRejection::ReplacementUnderpriced | NodeRejection::FeeTooLow,
                _,
            ) = self.send(rec).await?
            {
                *rec = self.replace(fence, rec, key).await?;
                self.send(rec).await?;
            }
            *last_sent = Instant::now();
            return Ok(None);
        }
        if last_sent.elapsed() >= stuck_after {
            let base = self.gateway.latest_block().await?.base_fee.unwrap_or(0);
            if rec.fees().max_fee_per_gas < base * 2 || last_sent.elapsed() >= stuck_after * 2 {
                *rec = self.replace(fence, rec, key).await?;
                self.send(rec).await?;
                *last_sent = Instant::now();
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::deep_enough;

    #[test]
    fn a_receipt_is_deep_enough_once_its_block_and_depth_minus_one_more_are_on_chain() {
        // Depth 1: mined is enough.
        assert!(deep_enough(10, 10, 1));
        assert!(!deep_enough(9, 10, 1));
        // Depth 3: its block and two more.
        assert!(!deep_enough(11, 10, 3));
        assert!(deep_enough(12, 10, 3));
        assert!(deep_enough(40, 10, 3));
    }
}
