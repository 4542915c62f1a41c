//! The database model's own invariants, checked after every request a simulated host applies
//! (TigerBeetle's state checker). They hold for any history of requests, whatever the engine
//! does, so a violation is a bug of the model (or of the host around it), never an engine
//! verdict: the host stops the run at the first bad write and names it.
//!
//! Per host (a disk and what it has shown so far): sequences and nonce counters never go back,
//! a workflow's fencing token never goes back, the journal only grows, at most one live
//! transaction per (workflow, step) (the partial unique index `transactions_live_step`), and
//! every released nonce (hole) lies below its signer's counter. A disk replaced wholesale (a
//! rebuild from the new primary) takes that primary's watermarks with its model.
//!
//! The rows that can break the first three are read only where a write touched them: the
//! workflows, nonce counters and transactions tables are [`Tracked`](super::tracked::Tracked),
//! which note every key written, and the checker takes those notes. Its index of live
//! transactions is kept from the same notes (a property test checks it against a full scan).

use super::model::{DbModel, DbRequest, Sequences};
use alloy_primitives::Address;
use std::collections::{BTreeMap, BTreeSet};

/// A (workflow, step) slot of the unique index.
type Slot = (i64, i32);

/// What a host's model has shown so far.
#[derive(Clone, Debug, Default)]
pub struct Watermarks {
    sequences: Sequences,
    tokens: BTreeMap<i64, i64>,
    nonce_counters: BTreeMap<(Address, i64), i64>,
    journal_rows: usize,
    /// The live transactions of each slot, as the model last showed them.
    live: BTreeMap<Slot, BTreeSet<i64>>,
    /// The slot each live transaction is counted in.
    live_at: BTreeMap<i64, Slot>,
}

impl Watermarks {
    /// The watermarks of a model as it stands (a new disk, or one just rebuilt): every row is
    /// read, and the model's notes of written rows are taken.
    pub fn of(m: &mut DbModel) -> Self {
        let mut w = Watermarks::default();
        m.tables.workflows.take_written();
        m.tables.nonces.take_written();
        m.tables.transactions.take_written();
        w.sequences = m.sequences.clone();
        w.tokens = (m.tables.workflows.iter())
            .map(|(id, r)| (*id, r.fencing_token))
            .collect();
        w.nonce_counters = (m.tables.nonces.iter())
            .map(|(k, r)| (*k, r.next_nonce))
            .collect();
        w.journal_rows = m.tables.journal.len();
        let ids: Vec<i64> = m.tables.transactions.keys().copied().collect();
        w.relocate(m, &ids);
        w
    }

    /// Check `m` after it applied `req`, then advance to it. `Err` names the broken invariant.
    pub fn advance(&mut self, m: &mut DbModel, req: &DbRequest) -> Result<(), String> {
        let op = req.name();
        let (a, b) = (&self.sequences, &m.sequences);
        for (name, before, after) in [
            ("workflows", a.workflows, b.workflows),
            ("journal", a.journal, b.journal),
            ("transactions", a.transactions, b.transactions),
            ("tx_events", a.tx_events, b.tx_events),
            ("audit_log", a.audit_log, b.audit_log),
        ] {
            if after < before {
                return Err(format!(
                    "{op}: sequence {name} went back from {before} to {after}"
                ));
            }
        }
        self.sequences = m.sequences.clone();
        for id in m.tables.workflows.take_written() {
            // Ids are never removed from the watermarks: a row that vanished keeps its mark.
            let Some(row) = m.tables.workflows.get(&id) else {
                continue;
            };
            let after = row.fencing_token;
            if let Some(before) = self.tokens.insert(id, after).filter(|b| after < *b) {
                return Err(format!(
                    "{op}: workflow {id}'s fencing token went back from {before} to {after}"
                ));
            }
        }
        if m.tables.journal.len() < self.journal_rows {
            return Err(format!(
                "{op}: the journal shrank from {} to {} rows",
                self.journal_rows,
                m.tables.journal.len()
            ));
        }
        self.journal_rows = m.tables.journal.len();
        for key in m.tables.nonces.take_written() {
            let Some(row) = m.tables.nonces.get(&key) else {
                continue;
            };
            let after = row.next_nonce;
            if let Some(before) = self
                .nonce_counters
                .insert(key, after)
                .filter(|b| after < *b)
            {
                return Err(format!(
                    "{op}: the nonce counter of {:#x} on chain {} went back from {before} to {after}",
                    key.0, key.1
                ));
            }
        }
        for (signer, chain, nonce) in &m.tables.nonce_holes {
            let counter = m
                .tables
                .nonces
                .get(&(*signer, *chain))
                .map(|r| r.next_nonce);
            if counter.is_none_or(|c| *nonce >= c) {
                return Err(format!(
                    "{op}: released nonce {nonce} of {signer:#x} is not below its counter {counter:?}"
                ));
            }
        }
        let written: Vec<i64> = m.tables.transactions.take_written().into_iter().collect();
        for slot in self.relocate(m, &written) {
            if self.live[&slot].len() > 1 {
                return Err(format!(
                    "{op}: workflow {} has two live transactions for step {}",
                    slot.0, slot.1
                ));
            }
        }
        Ok(())
    }

    /// Re-read transactions `ids` into the index of live ones; returns the slots they are live
    /// in now.
    fn relocate(&mut self, m: &DbModel, ids: &[i64]) -> BTreeSet<Slot> {
        let mut now_live = BTreeSet::new();
        for id in ids {
            if let Some(slot) = self.live_at.remove(id) {
                let set = self.live.get_mut(&slot).expect("indexed both ways");
                set.remove(id);
                if set.is_empty() {
                    self.live.remove(&slot);
                }
            }
            if let Some(t) = m.tables.transactions.get(id).filter(|t| t.is_live()) {
                let slot = (t.workflow_id, t.step_index);
                self.live.entry(slot).or_default().insert(*id);
                self.live_at.insert(*id, slot);
                now_live.insert(slot);
            }
        }
        now_live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::model::{NonceRow, TxRow};
    use alloy_primitives::{Bytes, U256};
    use dalp_engine::store::{Fence, NewWorkflow, TxState};
    use serde_json::json;

    const HOUR: u64 = 3_600_000;

    /// A model with one workflow claimed by `n` (token 1), and its watermarks.
    fn claimed() -> (DbModel, Watermarks, Fence) {
        let mut m = DbModel::new();
        let mut w = Watermarks::of(&mut m);
        let submit = DbRequest::Submit {
            new: NewWorkflow {
                kind: "mint".into(),
                scope: "s".into(),
                idempotency_key: "k".into(),
                request_hash: "h".into(),
                input: json!({}),
            },
            window_ms: HOUR,
        };
        m.apply(&submit, 1_000).expect("submit");
        w.advance(&mut m, &submit)
            .expect("a submit keeps every invariant");
        let claim = DbRequest::Claim {
            node: "n".into(),
            lease_ms: HOUR,
            limit: 1,
            lease_id: 7,
            skip_locked: Vec::new(),
        };
        m.apply(&claim, 2_000).expect("claim");
        w.advance(&mut m, &claim)
            .expect("a claim keeps every invariant");
        let fence = Fence {
            workflow_id: 1,
            token: m.tables.workflows[&1].fencing_token,
            node: "n".into(),
            lease_id: 7,
        };
        (m, w, fence)
    }

    fn renew(fence: &Fence) -> DbRequest {
        DbRequest::RenewLease {
            fence: fence.clone(),
            lease_ms: HOUR,
        }
    }

    fn tx_row(id: i64, state: TxState) -> TxRow {
        TxRow {
            id,
            workflow_id: 1,
            step_index: 0,
            signer: Address::repeat_byte(1),
            chain_id: 1,
            nonce: id,
            state,
            to: None,
            input: Bytes::new(),
            value: U256::ZERO,
            gas_limit: 21_000,
            max_fee: 1,
            priority_fee: 1,
            raw: None,
            hash: None,
            receipt: None,
            failure: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_fencing_token_that_goes_back_is_named() {
        let (mut m, mut w, fence) = claimed();
        m.tables.workflows.get_mut(&1).unwrap().fencing_token -= 1;
        let e = w.advance(&mut m, &renew(&fence)).unwrap_err();
        assert!(
            e.contains("workflow 1's fencing token went back from 1 to 0"),
            "{e}"
        );
    }

    #[test]
    fn a_sequence_or_a_nonce_counter_that_goes_back_is_named() {
        let (mut m, mut w, fence) = claimed();
        m.sequences.workflows = 0;
        let e = w.advance(&mut m, &renew(&fence)).unwrap_err();
        assert!(
            e.contains("sequence workflows went back from 1 to 0"),
            "{e}"
        );

        let (mut m, mut w, fence) = claimed();
        let key = (Address::repeat_byte(1), 1);
        let row = |n| NonceRow {
            next_nonce: n,
            updated_at_ms: 0,
        };
        m.tables.nonces.insert(key, row(5));
        w.advance(&mut m, &renew(&fence)).expect("a new counter");
        m.tables.nonces.insert(key, row(4));
        let e = w.advance(&mut m, &renew(&fence)).unwrap_err();
        assert!(e.contains("went back from 5 to 4"), "{e}");
    }

    #[test]
    fn a_shrinking_journal_and_a_hole_above_the_counter_are_named() {
        let (mut m, mut w, fence) = claimed();
        let first = *m
            .tables
            .journal
            .keys()
            .next()
            .expect("the submit journalled");
        m.tables.journal.remove(&first);
        let e = w.advance(&mut m, &renew(&fence)).unwrap_err();
        assert!(e.contains("the journal shrank"), "{e}");

        let (mut m, mut w, fence) = claimed();
        let signer = Address::repeat_byte(1);
        m.tables.nonces.insert(
            (signer, 1),
            NonceRow {
                next_nonce: 3,
                updated_at_ms: 0,
            },
        );
        m.tables.nonce_holes.insert((signer, 1, 3));
        let e = w.advance(&mut m, &renew(&fence)).unwrap_err();
        assert!(
            e.contains("released nonce 3") && e.contains("Some(3)"),
            "{e}"
        );
    }

    #[test]
    fn two_live_transactions_for_one_step_are_named_but_a_failed_one_is_not_live() {
        let (mut m, mut w, fence) = claimed();
        m.tables.transactions.insert(1, tx_row(1, TxState::Failed));
        m.tables
            .transactions
            .insert(2, tx_row(2, TxState::Confirming));
        w.advance(&mut m, &renew(&fence))
            .expect("one live row for step 0");
        m.tables
            .transactions
            .insert(3, tx_row(3, TxState::Broadcasting));
        let e = w.advance(&mut m, &renew(&fence)).unwrap_err();
        assert!(
            e.contains("workflow 1 has two live transactions for step 0"),
            "{e}"
        );
    }

    #[test]
    fn a_row_changed_to_live_is_named_and_one_no_longer_live_frees_its_step() {
        let (mut m, mut w, fence) = claimed();
        m.tables
            .transactions
            .insert(1, tx_row(1, TxState::Confirming));
        m.tables.transactions.insert(2, tx_row(2, TxState::Failed));
        w.advance(&mut m, &renew(&fence)).expect("one live row");
        // A write that changes a row in place, not an insert.
        m.tables.transactions.get_mut(&2).unwrap().state = TxState::Preparing;
        let e = w.advance(&mut m, &renew(&fence)).unwrap_err();
        assert!(e.contains("two live transactions for step 0"), "{e}");

        let (mut m, mut w, fence) = claimed();
        m.tables
            .transactions
            .insert(1, tx_row(1, TxState::Confirming));
        w.advance(&mut m, &renew(&fence)).expect("one live row");
        m.tables.transactions.get_mut(&1).unwrap().state = TxState::Failed;
        m.tables
            .transactions
            .insert(2, tx_row(2, TxState::Confirming));
        w.advance(&mut m, &renew(&fence))
            .expect("the failed row no longer holds step 0");
    }

    proptest::proptest! {
        /// The index kept from the tables' notes is the one a full scan builds, after any
        /// history of inserts, in-place changes and removals.
        #[test]
        fn the_live_index_agrees_with_a_full_scan(
            ops in proptest::collection::vec((0u8..3, 1i64..12, 0i32..3, 0u8..4), 1..60),
        ) {
            let (mut m, mut w, _) = claimed();
            let states = [TxState::Preparing, TxState::Confirming, TxState::Failed, TxState::Completed];
            for (op, id, step, state) in ops {
                let t = &mut m.tables.transactions;
                match op {
                    0 => {
                        let mut row = tx_row(id, states[state as usize]);
                        row.step_index = step;
                        t.insert(id, row);
                    }
                    1 => {
                        if let Some(row) = t.get_mut(&id) {
                            row.state = states[state as usize];
                        }
                    }
                    _ => {
                        t.remove(&id);
                    }
                }
                let written: Vec<i64> = m.tables.transactions.take_written().into_iter().collect();
                w.relocate(&m, &written);
                let mut full: BTreeMap<Slot, BTreeSet<i64>> = BTreeMap::new();
                for (id, t) in m.tables.transactions.iter().filter(|(_, t)| t.is_live()) {
                    full.entry((t.workflow_id, t.step_index)).or_default().insert(*id);
                }
                proptest::prop_assert_eq!(&w.live, &full);
                let fresh = Watermarks::of(&mut m);
                proptest::prop_assert_eq!(&fresh.live, &full);
            }
        }
    }
}
