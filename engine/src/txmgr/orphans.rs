//! Orphans: signed transactions of ours on chain at nonces that no record holds.
//!
//! How they arise: the engine stores a transaction's record (nonce, signed bytes) and then
//! broadcasts it; when an *asynchronous* replica is promoted without the last commits, the
//! transaction is on chain but its record, and often the step's progress, are gone. The step then
//! runs again — and without this module it would allocate a fresh nonce and send its effect a
//! second time (DESIGN.md FM-DB-FAILOVER: "lost engine records never cause a duplicate on-chain
//! effect").
//!
//! How they are found: every transaction step appends a tag, a function of its idempotency key
//! and step index (`workflow::step_tag`), to its calldata. Before a step creates its transaction
//! it looks at the nonces the chain has used (below its pending count) that nothing on record
//! names, or whose records' versions are not the chain's transaction there; those are looked up
//! in recent blocks, re-created by signing the same fields again (RFC 6979 signatures are
//! deterministic, so the hash matches exactly when the transaction is ours), and stored in
//! `orphan_txs` with their tags (a lost gap filler is recorded again, anything else as a foreign
//! transaction, so each is looked up once). It also reads the node's pool for transactions of
//! ours queued behind a gap. A step whose tag is among the orphans adopts its orphan
//! (`Store::adopt_orphan`) and confirms it instead of sending. While such a nonce is still
//! pending, the step waits ([`EngineError::NonceReconciling`]): its own lost transaction may be
//! the one pending.

use super::TxManager;
use crate::chain::ChainTx;
use crate::error::{EngineError, Result};
use crate::signer::{SignerKey, UnsignedTx};
use crate::store::{Broadcast, Fence, NonceHold, Orphan, TxIntent, TxRecord, TxState};
use alloy_primitives::{Address, B256};
use std::collections::{BTreeMap, BTreeSet};

/// How many nonces below the chain's pending count one reconciliation looks at.
pub const ORPHAN_SCAN_NONCES: u64 = 64;
/// How many blocks back from the head one reconciliation searches.
pub const ORPHAN_SCAN_BLOCKS: u64 = 256;

impl TxManager {
    /// Before step `step` creates its transaction: adopt the step's orphan if there is one
    /// (returns its new record), after reconciling the nonces the chain has used that nothing on
    /// record accounts for. `pending` is the chain's pending transaction count of the signer,
    /// read before the call; it is raised when the search reads a higher one, and the
    /// transaction, when there is no orphan, is created at or above it.
    pub(super) async fn adopt_orphan(
        &self,
        fence: &Fence,
        step: i32,
        key: &SignerKey,
        intent: &TxIntent,
        tag: B256,
        pending: &mut u64,
    ) -> Result<Option<TxRecord>> {
        let signer = key.address();
        let ours = |found: Vec<Orphan>| {
            found
                .into_iter()
                .filter(|o| o.tag == tag)
                .map(|o| o.signed)
                .min_by_key(|b| b.nonce)
        };
        let mut orphan = ours(self.find_orphans(key, *pending).await?);
        if orphan.is_none() {
            orphan = ours(self.queued_orphans(key).await?);
        }
        if orphan.is_none() {
            // The count was read before the pool: a transaction of ours queued then may have
            // left the queue before the pool was read (the gap below it filled), and neither
            // read saw it (evidence schedule seed 118: the step sent its effect again). Once out
            // of the queue it is below the count, so a count that moved is searched again; one
            // that did not move leaves nothing unseen.
            let again = self.gateway.transaction_count(signer, "pending").await?;
            if again > *pending {
                crate::probe!("orphan.count_moved_during_search");
                *pending = again;
                orphan = ours(self.find_orphans(key, again).await?);
            }
        }
        if orphan.is_none() {
            // Read after the search, not before: another step's search may have stored this
            // step's orphan meanwhile, and to this step's search it is then accounted for
            // (evidence schedule seed 70: the orphan stored 8 ms after this read, when it came
            // first, and the step sent its effect again).
            orphan = self
                .store
                .nonce_view(signer, self.chain_id, tag)
                .await?
                .orphan;
        }
        let Some(signed) = orphan else {
            return Ok(None);
        };
        let rec = self
            .store
            .adopt_orphan(fence, step, intent, &signed)
            .await?;
        crate::probe!("orphan.adopted");
        self.metrics.inc(
            "dalp_orphans_adopted_total",
            &[("signer", &format!("{signer:#x}"))],
        );
        tracing::warn!(
            workflow_id = fence.workflow_id,
            step,
            nonce = signed.nonce,
            hash = %signed.hash,
            "the step's transaction is already on chain with no record (records lost): adopted it instead of sending again"
        );
        Ok(Some(rec))
    }

    /// A version of `rec` itself (signed by `key`, carrying `rec`'s step tag) that no record
    /// holds, at `rec`'s nonce or above: the database lost it (a failover kept the row but not
    /// the version — or not the nonce reassignment before it, so the version sits at a nonce the
    /// record no longer names). First among the orphans stored with the step's tag (another
    /// step's search may have found it in the node's pool, not mined yet), then in
    /// the last [`ORPHAN_SCAN_BLOCKS`] blocks.
    pub(super) async fn lost_version(
        &self,
        key: &SignerKey,
        rec: &TxRecord,
    ) -> Result<Option<Broadcast>> {
        if rec.input.len() < 32 {
            return Ok(None);
        }
        let tag = B256::from_slice(&rec.input[rec.input.len() - 32..]);
        let signer = key.address();
        // Found by another step's search (evidence schedule seed 478: a failover lost two
        // records' moves to nonces 39 and 40, another step's pool read stored both versions as
        // orphans, and the records, back at their old nonces, resynchronised and sent their
        // effects again).
        let stored = self
            .store
            .nonce_view(signer, self.chain_id, tag)
            .await?
            .orphan;
        if let Some(o) = stored
            .filter(|o| o.nonce >= rec.nonce && !rec.broadcasts.iter().any(|b| b.hash == o.hash))
        {
            crate::probe!("tx.lost_version_stored_orphan");
            return Ok(Some(o));
        }
        let head = self.gateway.block_number().await?;
        for number in (head.saturating_sub(ORPHAN_SCAN_BLOCKS)..=head).rev() {
            let Some((_, txs)) = self.gateway.block_transactions(number).await? else {
                continue;
            };
            let mut older = false;
            for t in txs.iter().filter(|t| t.from == signer) {
                // The tag is compared before the (costly) signature that proves the tx ours.
                let tagged = t.input.len() >= 32 && t.input[t.input.len() - 32..] == tag[..];
                if t.nonce >= rec.nonce && tagged {
                    let ours = recreate(key, t).filter(|o| {
                        o.tag == tag && !rec.broadcasts.iter().any(|b| b.hash == o.signed.hash)
                    });
                    if let Some(o) = ours {
                        return Ok(Some(o.signed));
                    }
                }
                // Blocks are read newest first: once one holds our nonce (or an older one), every
                // higher nonce was in the blocks already read.
                older |= t.nonce <= rec.nonce;
            }
            if older {
                break;
            }
        }
        Ok(None)
    }

    /// The nonces the chain has used (below `pending`, the last [`ORPHAN_SCAN_NONCES`] of them)
    /// that no record of ours accounts for are looked up in the last [`ORPHAN_SCAN_BLOCKS`]
    /// blocks; those that are ours are stored as orphans and returned. Unaccounted are:
    /// - a nonce that nothing on record names (`Store::named_nonces`: no transaction row or
    ///   version, filler, orphan or foreign transaction there): a failover lost its record and
    ///   its allocation. Wherever the counter is: an adoption or a resync raises the counter past
    ///   nonces whose records were lost (evidence schedule seed 121: a queued orphan adopted at
    ///   43 took the counter from 37 to 44 while the lost transactions at 37-41 were pending, and
    ///   their steps, run again, sent their effects at 44 and above);
    /// - a nonce whose live records are unsettled (not COMPLETED) and none of whose versions is
    ///   the chain's transaction there: a failover lost a transaction's record and its
    ///   allocation, and the nonce went to another step's record, whose own version the node
    ///   then refused (DESIGN.md FM-DB-FAILOVER; `fixtures/evidence/sim-orphan-nonce-reassigned`).
    ///
    /// Any unaccounted nonce still pending makes the step wait. A mined one that is not an
    /// orphan is recorded, so it is looked up once: a gap filler of ours whose record was lost
    /// is recorded again, anything else as a foreign transaction.
    pub(super) async fn find_orphans(&self, key: &SignerKey, pending: u64) -> Result<Vec<Orphan>> {
        let signer = key.address();
        let from = pending.saturating_sub(ORPHAN_SCAN_NONCES);
        let mut live: BTreeMap<u64, Vec<NonceHold>> = BTreeMap::new();
        if from < pending {
            for hold in self
                .store
                .nonce_holds(signer, self.chain_id, from, pending)
                .await?
            {
                assert!(
                    (from..pending).contains(&hold.nonce),
                    "a record outside the nonces asked for"
                );
                live.entry(hold.nonce).or_default().push(hold);
            }
        }
        let mut unaccounted = BTreeSet::new();
        let mut unheld = Vec::new();
        // Nonces whose records have not seen a version of theirs mined yet.
        let mut unsettled: BTreeMap<u64, Vec<NonceHold>> = BTreeMap::new();
        for n in from..pending {
            let holds = live.remove(&n).unwrap_or_default();
            if holds.is_empty() {
                unheld.push(n);
            } else if !holds.iter().any(|r| r.state == TxState::Completed) {
                unsettled.insert(n, holds);
            }
        }
        if !unheld.is_empty() {
            // One read, and only when some nonce has no live record: normally each has one.
            let named: BTreeSet<u64> = self
                .store
                .named_nonces(signer, self.chain_id, from, pending)
                .await?
                .into_iter()
                .collect();
            unaccounted.extend(unheld.iter().copied().filter(|n| !named.contains(n)));
        }
        if unaccounted.is_empty() && unsettled.is_empty() {
            return Ok(Vec::new());
        }
        let mined = self.gateway.transaction_count(signer, "latest").await?;
        for (n, holds) in unsettled {
            if !self.accounts_for(&holds, n, n >= mined).await? {
                unaccounted.insert(n);
            }
        }
        let Some(&lowest) = unaccounted.first() else {
            return Ok(Vec::new());
        };
        if let Some(&n) = unaccounted.iter().find(|&&n| n >= mined) {
            self.metrics.inc(
                "dalp_nonce_reconcile_waits_total",
                &[("signer", &format!("{signer:#x}"))],
            );
            return Err(EngineError::NonceReconciling(format!(
                "nonce {n} of {signer:#x} is pending on chain and no record accounts for it; the step waits until it is mined to know whether it is its own"
            )));
        }
        let head = self.gateway.block_number().await?;
        let mut found = Vec::new();
        for number in (head.saturating_sub(ORPHAN_SCAN_BLOCKS)..=head).rev() {
            let Some((_, txs)) = self.gateway.block_transactions(number).await? else {
                continue;
            };
            let mut older = false;
            for t in txs.iter().filter(|t| t.from == signer) {
                if unaccounted.remove(&t.nonce) {
                    if let Some(o) = recreate(key, t) {
                        found.push(o);
                    } else if let Some(filler) = recreate_filler(key, t) {
                        // Ours: a gap filler whose record a failover lost.
                        crate::probe!("orphan.filler_recorded_again");
                        self.store
                            .record_filler(signer, self.chain_id, &filler)
                            .await?;
                    } else {
                        // Signed with our key but not by us: someone else holds the key.
                        self.store
                            .record_foreign(signer, self.chain_id, t.nonce, t.hash)
                            .await?;
                        self.metrics.inc(
                            "dalp_nonce_external_use_total",
                            &[("signer", &format!("{signer:#x}"))],
                        );
                        tracing::warn!(
                            nonce = t.nonce,
                            hash = %t.hash,
                            block = number,
                            "a transaction signed with the engine's key that the engine did not send used a nonce; recorded, and the counter skips it"
                        );
                    }
                }
                older |= t.nonce < lowest;
            }
            if unaccounted.is_empty() || older {
                break;
            }
        }
        if !unaccounted.is_empty() {
            crate::probe!("orphan.missing");
            self.metrics.inc(
                "dalp_orphan_nonces_unresolved_total",
                &[("signer", &format!("{signer:#x}"))],
            );
            tracing::warn!(nonces = ?unaccounted, "nonces used on chain with no record were not found in the recent blocks");
        }
        if !found.is_empty() {
            crate::probe!("orphan.found");
            self.keep_orphans(signer, &found).await?;
        }
        Ok(found)
    }
}

impl TxManager {
    /// Our transactions the node holds queued behind a nonce gap that no live record holds,
    /// stored as orphans and returned. The chain's pending count stops at the gap, so
    /// [`TxManager::find_orphans`] cannot see them: a transaction signed but never sent left the
    /// gap, those after it were sent and queued, and a failover lost all their records. Were the
    /// steps run again at fresh nonces, the first would fill the gap and the queued originals
    /// would be mined too (`fixtures/evidence/sim-orphan-nonce-reassigned`). Adopted, they wait
    /// for the gap: a step at the lowest free nonce, or the nonce-gap healer, fills it.
    /// Nothing where the node does not show its pool.
    pub(super) async fn queued_orphans(&self, key: &SignerKey) -> Result<Vec<Orphan>> {
        let signer = key.address();
        let Some(queued) = self.gateway.queued_txs(signer).await? else {
            return Ok(Vec::new());
        };
        let (Some(lo), Some(hi)) = (queued.first(), queued.last()) else {
            return Ok(Vec::new());
        };
        let held: BTreeSet<B256> = self
            .store
            .nonce_holds(signer, self.chain_id, lo.nonce, hi.nonce.saturating_add(1))
            .await?
            .into_iter()
            .flat_map(|h| h.versions)
            .collect();
        let found: Vec<Orphan> = queued
            .iter()
            .filter(|t| !held.contains(&t.hash))
            .filter_map(|t| recreate(key, t))
            .collect();
        if !found.is_empty() {
            crate::probe!("orphan.queued_found");
            self.keep_orphans(signer, &found).await?;
            tracing::warn!(
                nonces = ?found.iter().map(|o| o.signed.nonce).collect::<Vec<_>>(),
                "transactions of ours with no record wait in the node's pool behind a nonce gap: stored as orphans"
            );
        }
        Ok(found)
    }
}

impl TxManager {
    /// Store orphans found (idempotent by hash) and count them.
    async fn keep_orphans(&self, signer: Address, found: &[Orphan]) -> Result<()> {
        self.store
            .record_orphans(signer, self.chain_id, found)
            .await?;
        self.metrics.add(
            "dalp_orphans_found_total",
            &[("signer", &format!("{signer:#x}"))],
            found.len() as u64,
        );
        Ok(())
    }

    /// Whether one of `holds`' versions (at nonce `n`) is the chain's transaction there: known to
    /// the node while `n` is still `pending` (a pool holds one transaction per nonce), else mined.
    async fn accounts_for(&self, holds: &[NonceHold], n: u64, pending: bool) -> Result<bool> {
        assert!(
            holds.iter().all(|h| h.nonce == n),
            "a hold at another nonce"
        );
        for &hash in holds.iter().flat_map(|h| h.versions.iter().rev()) {
            let there = if pending {
                self.gateway.transaction_known(hash).await?
            } else {
                self.gateway.receipt(hash).await?.is_some()
            };
            if there {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The orphan a chain transaction is, if `key` signed exactly these fields (a tagged EIP-1559
/// transaction of ours): signing them again gives the same bytes and hash.
fn recreate(key: &SignerKey, t: &ChainTx) -> Option<Orphan> {
    if t.input.len() < 32 {
        return None;
    }
    let signed = resign(key, t)?;
    Some(Orphan {
        tag: B256::from_slice(&t.input[t.input.len() - 32..]),
        signed,
    })
}

/// The gap filler a chain transaction is, if `key` signed exactly these fields: a zero-value
/// self-transfer with no calldata, as `TxManager::fill_foreign_gap` signs them.
fn recreate_filler(key: &SignerKey, t: &ChainTx) -> Option<Broadcast> {
    if t.to != Some(key.address()) || !t.value.is_zero() || !t.input.is_empty() {
        return None;
    }
    resign(key, t)
}

/// `t`'s signed bytes, if `key` signed exactly these fields as an EIP-1559 transaction (RFC 6979
/// signatures are deterministic: signing them again gives the same bytes and hash).
fn resign(key: &SignerKey, t: &ChainTx) -> Option<Broadcast> {
    if t.tx_type != 2 {
        return None;
    }
    let unsigned = UnsignedTx {
        chain_id: t.chain_id?,
        nonce: t.nonce,
        gas_limit: t.gas_limit,
        max_fee_per_gas: t.max_fee_per_gas?,
        max_priority_fee_per_gas: t.max_priority_fee_per_gas?,
        to: t.to,
        value: t.value,
        input: t.input.clone(),
    };
    let (raw, hash) = key.sign(&unsigned).ok()?;
    if hash != t.hash {
        return None;
    }
    Some(Broadcast {
        hash,
        nonce: t.nonce,
        raw,
        max_fee_per_gas: unsigned.max_fee_per_gas,
        max_priority_fee_per_gas: unsigned.max_priority_fee_per_gas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Address, Bytes, U256};

    const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const OTHER: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn mined(key: &SignerKey, input: Vec<u8>) -> ChainTx {
        let unsigned = UnsignedTx {
            chain_id: 31337,
            nonce: 9,
            gas_limit: 120_000,
            max_fee_per_gas: 3_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: Some(Address::repeat_byte(7)),
            value: U256::ZERO,
            input: Bytes::from(input.clone()),
        };
        let (_, hash) = key.sign(&unsigned).unwrap();
        ChainTx {
            hash,
            from: key.address(),
            nonce: 9,
            tx_type: 2,
            chain_id: Some(31337),
            to: unsigned.to,
            value: U256::ZERO,
            input: input.into(),
            gas_limit: 120_000,
            max_fee_per_gas: Some(3_000_000_000),
            max_priority_fee_per_gas: Some(1_000_000_000),
        }
    }

    #[test]
    fn a_tagged_transaction_of_ours_is_recreated_byte_for_byte() {
        let key = SignerKey::from_hex(KEY).unwrap();
        let tag = crate::workflow::step_tag("mint", "key-1", 0);
        let mut input = vec![0xab; 68];
        input.extend_from_slice(tag.as_slice());
        let t = mined(&key, input);
        let o = recreate(&key, &t).expect("ours");
        assert_eq!((o.tag, o.signed.hash, o.signed.nonce), (tag, t.hash, 9));
        assert_eq!(alloy_primitives::keccak256(&o.signed.raw), t.hash);
    }

    #[test]
    fn someone_elses_or_untagged_or_altered_transactions_are_not_orphans() {
        let key = SignerKey::from_hex(KEY).unwrap();
        let other = SignerKey::from_hex(OTHER).unwrap();
        let input = vec![0xcd; 100];
        // Signed by another key (the fields alone do not make it ours).
        assert!(recreate(&key, &mined(&other, input.clone())).is_none());
        // Too short to carry a tag.
        assert!(recreate(&key, &mined(&key, vec![1, 2, 3])).is_none());
        // Any field that differs from what was signed changes the hash.
        let mut t = mined(&key, input);
        t.gas_limit += 1;
        assert!(recreate(&key, &t).is_none());
        // Legacy transactions are never ours.
        let mut t = mined(&key, vec![0; 40]);
        t.tx_type = 0;
        assert!(recreate(&key, &t).is_none());
    }

    #[test]
    fn a_gap_filler_of_ours_is_recognised_and_nothing_else_is() {
        let key = SignerKey::from_hex(KEY).unwrap();
        let other = SignerKey::from_hex(OTHER).unwrap();
        let filler = |key: &SignerKey, to: Address, value: U256| {
            let mut t = mined(key, Vec::new());
            let unsigned = UnsignedTx {
                chain_id: 31337,
                nonce: 9,
                gas_limit: 21_000,
                max_fee_per_gas: 3_000_000_000,
                max_priority_fee_per_gas: 1_000_000_000,
                to: Some(to),
                value,
                input: Bytes::new(),
            };
            t.hash = key.sign(&unsigned).unwrap().1;
            (t.to, t.value, t.gas_limit) = (Some(to), value, 21_000);
            t
        };
        let me = key.address();
        let t = filler(&key, me, U256::ZERO);
        let b = recreate_filler(&key, &t).expect("our filler");
        assert_eq!((b.hash, b.nonce), (t.hash, 9));
        assert_eq!(alloy_primitives::keccak256(&b.raw), t.hash);
        assert!(recreate(&key, &t).is_none(), "no tag: not an orphan");
        // Someone else's self-transfer, a transfer to another address, or one with value.
        assert!(recreate_filler(&key, &filler(&other, me, U256::ZERO)).is_none());
        let elsewhere = filler(&key, Address::repeat_byte(9), U256::ZERO);
        assert!(recreate_filler(&key, &elsewhere).is_none());
        assert!(recreate_filler(&key, &filler(&key, me, U256::from(1))).is_none());
    }

    #[test]
    fn step_tags_differ_by_key_kind_and_step() {
        use crate::workflow::step_tag;
        let a = step_tag("mint", "k", 1);
        assert_ne!(a, step_tag("mint", "k", 2));
        assert_ne!(a, step_tag("mint", "k2", 1));
        assert_ne!(a, step_tag("transfer", "k", 1));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(step_tag("ab", "c", 1), step_tag("a", "bc", 1));
    }
}
