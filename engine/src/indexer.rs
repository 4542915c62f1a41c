//! The chain indexer: follows blocks, writes token `Transfer` events into the store, keeps a
//! finalized-block watermark, and rolls back and replays on a reorg (detected by block hash).
//!
//! Each block is stored with its events and the checkpoint in one database transaction, and
//! events are keyed by (block hash, log index): re-indexing a block after a crash is a no-op.

use crate::chain::gateway::Gateway;
use crate::config::Config;
use crate::contracts::transfer_topic;
use crate::error::{EngineError, Result};
use crate::metrics::Metrics;
use crate::shutdown::wait_or_shutdown;
use crate::store::Store;
use crate::store::TokenEvent;
use alloy_primitives::{Address, B256, U256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The indexer needs the engine's configuration, store, chain gateway and metrics, not the
/// engine itself (it neither runs workflows nor sends transactions).
pub struct Indexer {
    config: Config,
    store: Arc<dyn Store>,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    /// The orphaned tip of the last reorg counted, so a rollback retried after its commit's
    /// acknowledgement was lost (it may have committed) counts the reorg once, and exactly once.
    counted_reorg: std::sync::Mutex<Option<B256>>,
}

impl Indexer {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Indexer {
            config,
            store,
            gateway,
            metrics,
            counted_reorg: std::sync::Mutex::new(None),
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.config.indexer.poll_ms);
        loop {
            if let Err(e) = self.step().await {
                crate::probe!("indexer.iteration_failed");
                tracing::warn!(error = %e, "indexer iteration failed; retrying");
            }
            if wait_or_shutdown(&mut shutdown, poll).await {
                return;
            }
        }
    }

    /// Index up to `batch` blocks. Returns how many were indexed.
    pub async fn step(&self) -> Result<u64> {
        let e = self;
        let chain_id = e.config.chain_id;
        let head = e.gateway.block_number().await?;
        let finality = e.config.chain.finality_depth;
        let mut indexed = 0;
        let mut last = None;
        for _ in 0..e.config.indexer.batch {
            let cp = e.store.indexer_checkpoint(chain_id).await?;
            last = Some(cp.as_ref().map_or(0, |c| c.last_block));
            let next = cp.as_ref().map_or(0, |c| c.last_block + 1);
            if next > head {
                break;
            }
            let block = e.gateway.block(next).await?.ok_or_else(|| {
                EngineError::RpcUnavailable(format!("block {next} not served yet"))
            })?;
            if let Some(cp) = &cp {
                if block.parent_hash != cp.last_hash {
                    // Counted when detected, not when the rollback is acknowledged: a rollback
                    // that committed but whose acknowledgement was lost is not detected again.
                    self.count_reorg(cp.last_hash);
                    self.rollback(cp.last_block).await?;
                    continue;
                }
            }
            let logs = e
                .gateway
                .logs_in_block(block.hash, transfer_topic())
                .await?;
            let mut events = Vec::with_capacity(logs.len());
            for log in logs
                .iter()
                .filter(|l| !l.removed && l.topics.len() == 3 && l.data.len() == 32)
            {
                events.push(TokenEvent {
                    block_number: block.number,
                    block_hash: block.hash,
                    tx_hash: log.tx_hash,
                    log_index: log.log_index,
                    contract: log.address,
                    from: Address::from_word(log.topics[1]),
                    to: Address::from_word(log.topics[2]),
                    value: U256::from_be_slice(&log.data),
                });
            }
            let finalized = head.saturating_sub(finality);
            // A batch's edge: the block is read, nothing of it written yet.
            crate::fault_point!(
                "fp.indexer.batch",
                EngineError::DbUnavailable("fault point: indexer batch".into())
            );
            let extends = cp.as_ref().map(|c| (c.last_block, c.last_hash));
            if !e
                .store
                .index_block(
                    chain_id,
                    extends,
                    block.number,
                    block.hash,
                    &events,
                    finalized,
                )
                .await?
            {
                // The checkpoint moved since it was read (a failover lost the blocks after it,
                // a rollback or another indexer moved it): writing would skip the blocks in
                // between. Read it again.
                crate::probe!("indexer.checkpoint_moved");
                tracing::warn!(
                    block = block.number,
                    "the indexer checkpoint moved since it was read; reading it again"
                );
                continue;
            }
            e.metrics
                .set("dalp_indexer_last_block", &[], block.number as i64);
            last = Some(block.number);
            indexed += 1;
        }
        let last = last.unwrap_or(0);
        e.metrics.set(
            "dalp_indexer_lag_blocks",
            &[],
            head.saturating_sub(last) as i64,
        );
        Ok(indexed)
    }

    /// Walk back from `from` to the newest indexed block still on the canonical chain, and
    /// forget everything above it.
    async fn rollback(&self, from: u64) -> Result<()> {
        let e = self;
        let chain_id = e.config.chain_id;
        let mut keep = from;
        loop {
            let ours = e.store.indexed_block_hash(chain_id, keep).await?;
            let theirs = e.gateway.block(keep).await?.map(|b| b.hash);
            if ours.is_some() && ours == theirs {
                break;
            }
            if keep == 0 {
                // A reorg never replaces genesis: the chain itself was swapped under us.
                return Err(EngineError::Internal(
                    "genesis block changed: the chain was replaced".into(),
                ));
            }
            keep -= 1;
        }
        let removed = e.store.rollback_index(chain_id, keep).await?;
        if keep == from {
            // Our tip is still canonical, yet the block after it names another parent: the
            // chain moved between the two reads (the next pass sees it settled), or the node
            // serves blocks that do not link. Said out loud, since the indexer cannot advance
            // while it lasts.
            tracing::warn!(
                block = from + 1,
                "indexer: the block after the indexed tip does not link to it, although the tip is canonical; re-reading"
            );
        } else {
            crate::probe!("indexer.rollback");
            tracing::warn!(keep, removed, "reorg: indexed blocks rolled back");
        }
        Ok(())
    }

    fn count_reorg(&self, orphaned_tip: B256) {
        let mut last = self.counted_reorg.lock().expect("reorg counter lock");
        if *last != Some(orphaned_tip) {
            *last = Some(orphaned_tip);
            crate::probe!("indexer.reorg_detected");
            self.metrics.inc("dalp_indexer_reorgs_total", &[]);
            tracing::warn!(%orphaned_tip, "reorg detected: the indexed tip is no longer canonical");
        }
    }
}
