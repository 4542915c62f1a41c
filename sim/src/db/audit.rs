//! The database model's own invariants, checked after every request a simulated host applies
//! (TigerBeetle's state checker). They hold for any history of requests, whatever the engine
//! does, so a violation is a bug of the model (or of the host around it), never an engine
//! verdict: the host stops the run at the first bad write and names it.
//!
//! Per host (a disk and what it has shown so far): sequences and nonce counters never go back,
//! a workflow's fencing token never goes back, the journal only grows, at most one live
//! transaction per (workflow, step) (the partial unique index `transactions_live_step`), and
//! every released nonce (hole) lies below its signer's counter. A disk replaced wholesale (a
//! rebuild from the new primary) starts new watermarks.

use super::model::{DbModel, DbRequest, Sequences};
use alloy_primitives::Address;
use std::collections::BTreeMap;

/// What a host's model has shown so far.
#[derive(Clone, Debug, Default)]
pub struct Watermarks {
    sequences: Sequences,
    tokens: BTreeMap<i64, i64>,
    nonce_counters: BTreeMap<(Address, i64), i64>,
    journal_rows: usize,
}

impl Watermarks {
    /// The watermarks of a model as it stands (a new disk, or one just rebuilt).
    pub fn of(m: &DbModel) -> Self {
        let mut w = Watermarks::default();
        w.absorb(m);
        w
    }

    /// Take `m`'s values as the new watermarks. Ids are never removed (a row that vanished keeps
    /// its last watermark). One ordered pass per map, updating in place: this runs after every
    /// request, so it must not rebuild maps that grow with the run.
    fn absorb(&mut self, m: &DbModel) {
        self.sequences = m.sequences.clone();
        merge_into(
            &mut self.tokens,
            m.tables
                .workflows
                .iter()
                .map(|(id, w)| (*id, w.fencing_token)),
        );
        merge_into(
            &mut self.nonce_counters,
            m.tables.nonces.iter().map(|(k, r)| (*k, r.next_nonce)),
        );
        self.journal_rows = m.tables.journal.len();
    }

    /// Check `m` after it applied `req`, then advance to it. `Err` names the broken invariant.
    pub fn advance(&mut self, m: &DbModel, req: &DbRequest) -> Result<(), String> {
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
        if let Some((id, before, after)) = first_decrease(
            &self.tokens,
            m.tables
                .workflows
                .iter()
                .map(|(id, w)| (*id, w.fencing_token)),
        ) {
            return Err(format!(
                "{op}: workflow {id}'s fencing token went back from {before} to {after}"
            ));
        }
        if m.tables.journal.len() < self.journal_rows {
            return Err(format!(
                "{op}: the journal shrank from {} to {} rows",
                self.journal_rows,
                m.tables.journal.len()
            ));
        }
        if let Some((key, before, after)) = first_decrease(
            &self.nonce_counters,
            m.tables.nonces.iter().map(|(k, r)| (*k, r.next_nonce)),
        ) {
            return Err(format!(
                "{op}: the nonce counter of {:#x} on chain {} went back from {before} to {after}",
                key.0, key.1
            ));
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
        if let Some(f) = req.fence() {
            let mut live_steps: Vec<i32> = m
                .tables
                .transactions
                .values()
                .filter(|t| t.workflow_id == f.workflow_id && t.is_live())
                .map(|t| t.step_index)
                .collect();
            live_steps.sort_unstable();
            if let Some(w) = live_steps.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!(
                    "{op}: workflow {} has two live transactions for step {}",
                    f.workflow_id, w[0]
                ));
            }
        }
        self.absorb(m);
        Ok(())
    }
}

/// The first key (in order) whose value in `now` is below its watermark in `marks`. `now` must
/// be in ascending key order (a `BTreeMap`'s iteration): one merged pass, no lookups.
fn first_decrease<K: Ord + Copy>(
    marks: &BTreeMap<K, i64>,
    now: impl Iterator<Item = (K, i64)>,
) -> Option<(K, i64, i64)> {
    let mut marks = marks.iter().peekable();
    for (key, value) in now {
        while marks.next_if(|(k, _)| **k < key).is_some() {}
        if let Some((_, before)) = marks.next_if(|(k, _)| **k == key) {
            if value < *before {
                return Some((key, *before, value));
            }
        }
    }
    None
}

/// Set every (key, value) of `now` (ascending key order) in `marks`, in one merged pass; keys
/// absent from `now` keep their value.
fn merge_into<K: Ord + Copy>(marks: &mut BTreeMap<K, i64>, now: impl Iterator<Item = (K, i64)>) {
    let mut new = Vec::new();
    let mut cursor = marks.iter_mut().peekable();
    for (key, value) in now {
        while cursor.next_if(|(k, _)| **k < key).is_some() {}
        match cursor.next_if(|(k, _)| **k == key) {
            Some((_, mark)) => *mark = value,
            None => new.push((key, value)),
        }
    }
    marks.extend(new);
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
        let mut w = Watermarks::of(&m);
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
        w.advance(&m, &submit)
            .expect("a submit keeps every invariant");
        let claim = DbRequest::Claim {
            node: "n".into(),
            lease_ms: HOUR,
            limit: 1,
            lease_id: 7,
            skip_locked: Vec::new(),
        };
        m.apply(&claim, 2_000).expect("claim");
        w.advance(&m, &claim)
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
        let e = w.advance(&m, &renew(&fence)).unwrap_err();
        assert!(
            e.contains("workflow 1's fencing token went back from 1 to 0"),
            "{e}"
        );
    }

    #[test]
    fn a_sequence_or_a_nonce_counter_that_goes_back_is_named() {
        let (mut m, mut w, fence) = claimed();
        m.sequences.workflows = 0;
        let e = w.advance(&m, &renew(&fence)).unwrap_err();
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
        w.advance(&m, &renew(&fence)).expect("a new counter");
        m.tables.nonces.insert(key, row(4));
        let e = w.advance(&m, &renew(&fence)).unwrap_err();
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
        let e = w.advance(&m, &renew(&fence)).unwrap_err();
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
        let e = w.advance(&m, &renew(&fence)).unwrap_err();
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
        w.advance(&m, &renew(&fence))
            .expect("one live row for step 0");
        m.tables
            .transactions
            .insert(3, tx_row(3, TxState::Broadcasting));
        let e = w.advance(&m, &renew(&fence)).unwrap_err();
        assert!(
            e.contains("workflow 1 has two live transactions for step 0"),
            "{e}"
        );
    }

    proptest::proptest! {
        /// The merged passes agree with the obvious lookups on any two maps.
        #[test]
        fn merged_passes_agree_with_lookups(
            marks in proptest::collection::btree_map(0i64..40, -5i64..5, 0..20),
            now in proptest::collection::btree_map(0i64..40, -5i64..5, 0..20),
        ) {
            let naive = now
                .iter()
                .find_map(|(k, v)| marks.get(k).filter(|b| v < *b).map(|b| (*k, *b, *v)));
            proptest::prop_assert_eq!(first_decrease(&marks, now.iter().map(|(k, v)| (*k, *v))), naive);
            let mut expected = marks.clone();
            for (k, v) in &now {
                expected.insert(*k, *v);
            }
            let mut merged = marks.clone();
            merge_into(&mut merged, now.iter().map(|(k, v)| (*k, *v)));
            proptest::prop_assert_eq!(merged, expected);
        }
    }
}
