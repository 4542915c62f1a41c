//! Unit and property tests of the database model (`cargo test -p dalp-sim db::`).

use super::model::*;
use super::*;
use alloy_primitives::{Address, Bytes, B256, U256};
use dalp_engine::error::EngineError;
use dalp_engine::store::{
    AuditEntry, Broadcast, Claim, Fees, Fence, NewWorkflow, NonceHold, Stats, Store, Submitted,
    TokenEvent, TxIntent, TxRecord, TxState, WorkflowRecord, WorkflowStatus,
};
use serde_json::{json, Value};
use std::time::Duration;

const DAY: u64 = 86_400_000;
const LEASE: u64 = 30_000;

fn new_wf(key: &str, hash: &str) -> NewWorkflow {
    NewWorkflow {
        kind: "transfer".into(),
        scope: "signer/1/transfer".into(),
        idempotency_key: key.into(),
        request_hash: hash.into(),
        input: json!({ "key": key }),
    }
}

fn signer(n: u8) -> Address {
    Address::repeat_byte(n)
}

fn intent(s: u8, chain_id: u64) -> TxIntent {
    TxIntent {
        signer: signer(s),
        chain_id,
        to: Some(Address::repeat_byte(0xee)),
        input: Bytes::from(vec![1, 2, 3]),
        value: U256::from(7),
        gas_limit: 100_000,
    }
}

const FEES: Fees = Fees {
    max_fee_per_gas: 2_000_000_000,
    max_priority_fee_per_gas: 1_000_000_000,
};

fn broadcast(b: u8, nonce: u64, fee: u128) -> Broadcast {
    Broadcast {
        hash: B256::repeat_byte(b),
        nonce,
        raw: Bytes::from(vec![b; 4]),
        max_fee_per_gas: fee,
        max_priority_fee_per_gas: 1,
    }
}

/// A small driver over `DbModel::apply` with a manual clock.
#[derive(Default, Clone)]
struct Db {
    m: DbModel,
    now: u64,
}

impl Db {
    fn ap(&mut self, req: DbRequest) -> Result<DbReply, EngineError> {
        self.m.apply(&req, self.now)
    }
    fn ok(&mut self, req: DbRequest) -> DbReply {
        let name = req.name();
        self.ap(req)
            .unwrap_or_else(|e| panic!("{name} failed: {e:?}"))
    }
    fn submit(&mut self, key: &str) -> WorkflowRecord {
        match self.ok(DbRequest::Submit {
            new: new_wf(key, "h"),
            window_ms: DAY,
        }) {
            DbReply::Submitted(Submitted::Created(w)) => w,
            other => panic!("{other:?}"),
        }
    }
    fn claim(&mut self, node: &str, limit: usize) -> Vec<Claim> {
        match self.ok(DbRequest::Claim {
            node: node.into(),
            lease_ms: LEASE,
            limit,
            lease_id: 7,
            skip_locked: Vec::new(),
        }) {
            DbReply::Claims(c) => c,
            other => panic!("{other:?}"),
        }
    }
    fn claim1(&mut self, node: &str) -> Fence {
        let c = self.claim(node, 1);
        assert_eq!(c.len(), 1, "nothing claimable");
        c[0].fence.clone()
    }
    fn wf(&self, id: i64) -> WorkflowRecord {
        self.m.tables.workflows[&id].record()
    }
    fn create_tx(&mut self, fence: &Fence, step: i32, s: u8, chain_nonce: u64) -> TxRecord {
        match self.ok(DbRequest::CreateTx {
            fence: fence.clone(),
            step,
            intent: intent(s, 1),
            fees: FEES,
            chain_nonce,
        }) {
            DbReply::Tx(t) => t,
            other => panic!("{other:?}"),
        }
    }
    fn complete(&mut self, fence: &Fence, step: i32, result: Option<Value>) {
        self.ok(DbRequest::CompleteStep {
            fence: fence.clone(),
            step,
            name: format!("s{step}"),
            output: json!({ "step": step }),
            result,
        });
    }
    fn events(&self, id: i64) -> Vec<String> {
        self.m.journal_rows(id).map(|r| r.event.clone()).collect()
    }
}

fn last_tx_event(m: &DbModel) -> TxEventRow {
    m.tables
        .tx_events
        .iter()
        .max_by_key(|((_, seq), _)| *seq)
        .unwrap()
        .1
        .clone()
}

fn is_fenced(r: &Result<DbReply, EngineError>, ours: i64, current: i64) -> bool {
    matches!(r, Err(EngineError::Fenced { ours: o, current: c, .. }) if *o == ours && *c == current)
}

// -------------------------------------------------------------------------------------------
// submit
// -------------------------------------------------------------------------------------------

#[test]
fn submit_is_idempotent_within_the_window() {
    let mut db = Db {
        now: 1_000,
        ..Default::default()
    };
    let w = db.submit("k1");
    assert_eq!(
        (w.id, w.status, w.fencing_token),
        (1, WorkflowStatus::Pending, 0)
    );
    assert_eq!(w.state, json!({}));
    assert_eq!(db.events(1), vec!["received"]);
    let j = &db.m.journal_rows(1).next().unwrap().clone();
    assert_eq!(
        (j.step_name.as_str(), j.node.as_str(), j.fencing_token),
        ("received", "api", 0)
    );

    // Same key, same request: the existing workflow, as it is now (claimed meanwhile).
    db.claim1("n1");
    let r = db.ok(DbRequest::Submit {
        new: new_wf("k1", "h"),
        window_ms: DAY,
    });
    match r {
        DbReply::Submitted(Submitted::Existing(e)) => {
            assert_eq!(
                (e.id, e.status, e.fencing_token),
                (1, WorkflowStatus::Running, 1)
            )
        }
        other => panic!("{other:?}"),
    }
    // Same key, different request: refused, nothing changes.
    let before = db.m.clone();
    let r = db.ap(DbRequest::Submit {
        new: new_wf("k1", "other"),
        window_ms: DAY,
    });
    assert_eq!(
        r.unwrap_err(),
        EngineError::Invalid(
            "idempotency key \"k1\" was already used for a different request".into()
        )
    );
    assert_eq!(db.m, before);
    // Same key in another scope: a new workflow.
    let mut other_scope = new_wf("k1", "other");
    other_scope.scope = "signer/2/transfer".into();
    assert!(matches!(
        db.ok(DbRequest::Submit { new: other_scope, window_ms: DAY }),
        DbReply::Submitted(Submitted::Created(w)) if w.id == 2
    ));
    // The key expires at exactly now + window (`expires_at > now()` is live).
    db.now = 1_000 + DAY - 1;
    assert!(matches!(
        db.ok(DbRequest::Submit { new: new_wf("k1", "h"), window_ms: DAY }),
        DbReply::Submitted(Submitted::Existing(w)) if w.id == 1
    ));
    db.now = 1_000 + DAY;
    let w = match db.ok(DbRequest::Submit {
        new: new_wf("k1", "x"),
        window_ms: DAY,
    }) {
        DbReply::Submitted(Submitted::Created(w)) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!(w.id, 3);
    let key = &db.m.tables.idempotency_keys[&("signer/1/transfer".into(), "k1".into())];
    assert_eq!((key.workflow_id, key.expires_at_ms), (3, 1_000 + 2 * DAY));
}

#[test]
fn nul_characters_are_refused_like_postgresql() {
    let mut db = Db::default();
    let r = db.ap(DbRequest::Submit {
        new: new_wf("k\0", "h"),
        window_ms: DAY,
    });
    assert!(matches!(r, Err(EngineError::Db { ref sqlstate, .. }) if sqlstate == "22021"));
    let mut n = new_wf("k", "h");
    n.input = json!({ "a": "b\0" });
    let r = db.ap(DbRequest::Submit {
        new: n,
        window_ms: DAY,
    });
    assert!(matches!(r, Err(EngineError::Db { ref sqlstate, .. }) if sqlstate == "22P05"));
    assert_eq!(db.m, DbModel::default());
}

// -------------------------------------------------------------------------------------------
// claim, lease, fencing
// -------------------------------------------------------------------------------------------

#[test]
fn claim_takes_runnable_work_in_order_and_bumps_the_token() {
    let mut db = Db::default();
    for k in ["a", "b", "c"] {
        db.submit(k);
        db.now += 1;
    }
    // Workflow 1 retries later: 2 and 3 come first (ORDER BY next_attempt_at, id).
    let f1 = db.claim1("n1");
    assert_eq!((f1.workflow_id, f1.token, f1.node.as_str()), (1, 1, "n1"));
    db.ok(DbRequest::ScheduleRetry {
        fence: f1.clone(),
        step: 0,
        name: "s0".into(),
        error: json!({"message": "boom"}),
        delay_ms: 10,
    });
    let c = db.claim("n2", 2);
    assert_eq!(
        c.iter().map(|c| c.workflow.id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(c
        .iter()
        .all(|c| c.workflow.status == WorkflowStatus::Running
            && c.workflow.lease_owner.as_deref() == Some("n2")));
    // Workflow 1 is not runnable before its time.
    db.now = 3 + 10 - 1;
    assert!(db.claim("n2", 10).is_empty());
    db.now = 13;
    let f1b = db.claim1("n2");
    // Claimed (1), retried (2), claimed again (3).
    assert_eq!((f1b.workflow_id, f1b.token), (1, 3));
    // Limit 0 takes nothing; a limit above i64::MAX is a negative LIMIT.
    assert!(db.claim("n3", 0).is_empty());
    let r = db.ap(DbRequest::Claim {
        node: "n".into(),
        lease_ms: 1,
        limit: usize::MAX,
        lease_id: 7,
        skip_locked: Vec::new(),
    });
    assert!(matches!(r, Err(EngineError::Db { ref sqlstate, .. }) if sqlstate == "2201W"));
}

#[test]
fn lease_expiry_is_by_the_database_clock_and_strict() {
    let mut db = Db {
        now: 100,
        ..Default::default()
    };
    db.submit("a");
    let old = db.claim1("n1");
    db.now = 100 + LEASE; // expires_at < now() is false at the instant of expiry
    assert!(db.claim("n2", 1).is_empty());
    // Renewal by the holder moves the expiry.
    db.ok(DbRequest::RenewLease {
        fence: old.clone(),
        lease_ms: LEASE,
    });
    db.now = 100 + 2 * LEASE;
    assert!(db.claim("n2", 1).is_empty());
    db.now += 1;
    let new = db.claim1("n2");
    assert_eq!(new.token, 2);
    assert_eq!(db.m.fenced_writes, 0);
    // The old holder's renewal and writes are fenced, with the same fields pg.rs returns.
    let r = db.ap(DbRequest::RenewLease {
        fence: old.clone(),
        lease_ms: LEASE,
    });
    assert!(is_fenced(&r, 1, 2));
    let r = db.ap(DbRequest::CompleteStep {
        fence: old.clone(),
        step: 0,
        name: "s0".into(),
        output: json!(1),
        result: None,
    });
    assert_eq!(
        r.unwrap_err(),
        EngineError::Fenced {
            workflow_id: 1,
            ours: 1,
            current: 2
        }
    );
    assert_eq!(db.m.fenced_writes, 2);
    // Unknown workflows: check_fence's Internal, renew's RowNotFound.
    let ghost = Fence {
        workflow_id: 99,
        token: 0,
        node: "n".into(),
        lease_id: 0,
    };
    assert_eq!(
        db.ap(DbRequest::Notify {
            fence: ghost.clone(),
            kind: "k".into(),
            payload: json!(1)
        })
        .unwrap_err(),
        EngineError::Internal("workflow 99 does not exist".into())
    );
    assert_eq!(
        db.ap(DbRequest::RenewLease {
            fence: ghost,
            lease_ms: 1
        })
        .unwrap_err(),
        row_not_found()
    );
}

/// After a failover that lost commits, a workflow id and fencing token can be handed out again
/// (the id sequence and the token rolled back): only the lease id tells the lost claim's holder,
/// still running, from the new one.
#[test]
fn a_fence_with_the_current_token_but_another_lease_id_is_refused() {
    let mut db = Db::default();
    db.submit("a");
    let f = db.claim1("n1");
    let lost = Fence {
        lease_id: f.lease_id + 1,
        ..f.clone()
    };
    let complete = |fence: &Fence| DbRequest::CompleteStep {
        fence: fence.clone(),
        step: 0,
        name: "check".into(),
        output: json!({}),
        result: None,
    };
    let before = db.m.tables.clone();
    assert!(is_fenced(&db.ap(complete(&lost)), f.token, f.token));
    assert!(is_fenced(
        &db.ap(DbRequest::RenewLease {
            fence: lost.clone(),
            lease_ms: LEASE,
        }),
        f.token,
        f.token
    ));
    db.ok(DbRequest::Release { fence: lost });
    assert_eq!(db.m.tables, before, "nothing written under the other lease");
    assert_eq!(db.m.stale_releases, 1);
    db.ok(complete(&f));
    assert_eq!(db.m.tables.workflows[&1].current_step, 1);
}

#[test]
fn release_gives_the_lease_up_and_ignores_stale_fences() {
    let mut db = Db::default();
    db.submit("a");
    let f = db.claim1("n1");
    let stale = Fence {
        token: 0,
        ..f.clone()
    };
    let before = db.m.tables.clone();
    db.ok(DbRequest::Release { fence: stale });
    assert_eq!(db.m.tables, before);
    assert_eq!(db.m.stale_releases, 1);
    db.ok(DbRequest::Release { fence: f.clone() });
    let w = &db.m.tables.workflows[&1];
    assert_eq!((w.lease_owner.clone(), w.lease_expires_at_ms), (None, None));
    assert_eq!(w.status, WorkflowStatus::Running);
    // Released (token 2), claimable again at once, with a new token.
    assert_eq!(db.claim1("n2").token, 3);
}

/// A holder whose lease ended by `release`, `schedule_retry` or `fail`, or whose workflow an
/// operator requeued, can write nothing afterwards with its old fence.
#[test]
fn every_end_of_a_lease_fences_its_holder_out() {
    let mut db = Db::default();
    let err = json!({"reason_code": "reverted", "message": "no"});
    let notify = |f: &Fence| DbRequest::Notify {
        fence: f.clone(),
        kind: "k".into(),
        payload: json!(1),
    };
    let fenced = |db: &mut Db, f: &Fence, after: &str| {
        let current = db.m.tables.workflows[&f.workflow_id].fencing_token;
        assert_eq!(
            db.ap(notify(f)).err(),
            Some(EngineError::Fenced {
                workflow_id: f.workflow_id,
                ours: f.token,
                current
            }),
            "a write with the fence held before {after}"
        );
    };
    db.submit("a");
    let f = db.claim1("n1");
    db.ok(DbRequest::Release { fence: f.clone() });
    fenced(&mut db, &f, "release");
    let f = db.claim1("n1");
    db.ok(DbRequest::ScheduleRetry {
        fence: f.clone(),
        step: 0,
        name: "s0".into(),
        error: err.clone(),
        delay_ms: 0,
    });
    fenced(&mut db, &f, "schedule_retry");
    let f = db.claim1("n1");
    db.ok(DbRequest::Fail {
        fence: f.clone(),
        step: 0,
        name: "s0".into(),
        error: err.clone(),
        dead_letter: true,
    });
    fenced(&mut db, &f, "fail");
    // Whoever held the token current before the requeue is fenced out after it.
    let before = Fence {
        token: db.m.tables.workflows[&1].fencing_token,
        ..f.clone()
    };
    db.ok(DbRequest::Requeue {
        id: 1,
        actor: "ops".into(),
        reason: "r".into(),
    });
    fenced(&mut db, &before, "requeue");
    // Claim 1, release 2, claim 3, retry 4, claim 5, fail 6, requeue 7; the next claim is 8.
    let f = db.claim1("n2");
    assert_eq!(f.token, 8);
    // A retry of another step than the current one ends nothing: the holder keeps writing.
    db.ok(DbRequest::ScheduleRetry {
        fence: f.clone(),
        step: 5,
        name: "s5".into(),
        error: err,
        delay_ms: 0,
    });
    db.ok(notify(&f));
}

/// A workflow at step 1 with a live transaction, whose old holder (token 1) was superseded.
fn superseded() -> (Db, Fence, Fence, i64) {
    let mut db = Db::default();
    db.submit("a");
    let old = db.claim1("n1");
    db.complete(&old, 0, None);
    let tx = db.create_tx(&old, 1, 1, 0);
    db.ok(DbRequest::RecordSigned {
        fence: old.clone(),
        tx_id: tx.id,
        signed: broadcast(1, 0, 10),
    });
    db.now += LEASE + 1;
    let new = db.claim1("n2");
    (db, old, new, tx.id)
}

#[test]
fn a_stale_fence_is_rejected_on_every_fenced_write_and_changes_nothing() {
    let (mut db, old, new, tx_id) = superseded();
    let reqs = vec![
        DbRequest::RenewLease {
            fence: old.clone(),
            lease_ms: 1,
        },
        DbRequest::CompleteStep {
            fence: old.clone(),
            step: 1,
            name: "s1".into(),
            output: json!(1),
            result: None,
        },
        DbRequest::ScheduleRetry {
            fence: old.clone(),
            step: 1,
            name: "s1".into(),
            error: json!({}),
            delay_ms: 5,
        },
        DbRequest::Fail {
            fence: old.clone(),
            step: 1,
            name: "s1".into(),
            error: json!({}),
            dead_letter: true,
        },
        DbRequest::CreateTx {
            fence: old.clone(),
            step: 2,
            intent: intent(1, 1),
            fees: FEES,
            chain_nonce: 0,
        },
        DbRequest::RecordSigned {
            fence: old.clone(),
            tx_id,
            signed: broadcast(2, 0, 20),
        },
        DbRequest::SetTxState {
            fence: old.clone(),
            tx_id,
            state: TxState::Confirming,
            detail: None,
            receipt: Some(json!({})),
        },
        DbRequest::ReassignNonce {
            fence: old.clone(),
            tx_id,
            chain_nonce: 5,
        },
        DbRequest::AbandonTx {
            fence: old.clone(),
            tx_id,
            state: TxState::Failed,
            release: true,
        },
        DbRequest::Notify {
            fence: old.clone(),
            kind: "k".into(),
            payload: json!(1),
        },
    ];
    let n = reqs.len() as u64;
    for req in reqs {
        let before = db.m.clone();
        let name = req.name();
        let r = db.ap(req);
        assert!(is_fenced(&r, old.token, new.token), "{name}: {r:?}");
        assert_eq!(db.m.tables, before.tables, "{name} changed a table");
        assert_eq!(db.m.sequences, before.sequences, "{name} drew a sequence");
    }
    assert_eq!(db.m.fenced_writes, n);
    // The new holder's writes go through.
    db.ok(DbRequest::Notify {
        fence: new,
        kind: "k".into(),
        payload: json!(1),
    });
}

// -------------------------------------------------------------------------------------------
// steps, retries, dead letters
// -------------------------------------------------------------------------------------------

#[test]
fn complete_step_is_idempotent_and_finishes_the_workflow() {
    let mut db = Db::default();
    db.submit("a");
    let f = db.claim1("n1");
    db.complete(&f, 0, None);
    let w = db.wf(1);
    assert_eq!(
        (w.current_step, w.status, w.state.clone()),
        (1, WorkflowStatus::Running, json!({"s0": {"step": 0}}))
    );
    // Completing it again (our commit went through unseen): no-op.
    let before = db.m.clone();
    db.complete(&f, 0, None);
    assert_eq!(db.m, before);
    // Skipping ahead is refused.
    let r = db.ap(DbRequest::CompleteStep {
        fence: f.clone(),
        step: 3,
        name: "s3".into(),
        output: json!(null),
        result: None,
    });
    assert_eq!(
        r.unwrap_err(),
        EngineError::Internal("workflow 1 is at step 1, cannot complete step 3".into())
    );
    assert_eq!(db.m, before);
    // Attempts and error are reset by a completion.
    db.ok(DbRequest::ScheduleRetry {
        fence: f.clone(),
        step: 1,
        name: "s1".into(),
        error: json!({"m": 1}),
        delay_ms: 0,
    });
    let f = db.claim1("n1");
    assert_eq!(db.wf(1).attempts, 1);
    db.complete(&f, 1, Some(json!({"done": true})));
    let w = db.wf(1);
    assert_eq!(w.status, WorkflowStatus::Completed);
    assert_eq!(w.result, Some(json!({"done": true})));
    assert_eq!((w.attempts, w.error.clone()), (0, None));
    assert_eq!(w.lease_owner, None);
    assert_eq!(db.m.tables.workflows[&1].lease_expires_at_ms, None);
    assert_eq!(
        db.events(1),
        vec![
            "received",
            "completed",
            "retry",
            "completed",
            "workflow_completed"
        ]
    );
    // Completed workflows are never claimed again.
    db.now += 10 * LEASE;
    assert!(db.claim("n1", 10).is_empty());
}

#[test]
fn schedule_retry_delays_the_next_claim() {
    let mut db = Db {
        now: 10,
        ..Default::default()
    };
    db.submit("a");
    let f = db.claim1("n1");
    db.ok(DbRequest::ScheduleRetry {
        fence: f.clone(),
        step: 0,
        name: "s0".into(),
        error: json!({"message": "rpc down"}),
        delay_ms: 1_000,
    });
    let w = &db.m.tables.workflows[&1];
    assert_eq!(w.attempts, 1);
    assert_eq!(w.error, Some(json!({"message": "rpc down"})));
    assert_eq!(w.next_attempt_at_ms, 1_010);
    assert_eq!(w.lease_owner, None);
    assert_eq!(w.status, WorkflowStatus::Running);
    db.now = 1_009;
    assert!(db.claim("n2", 5).is_empty());
    db.now = 1_010;
    let f2 = db.claim1("n2");
    // Claimed (1), retried (2), claimed again (3).
    assert_eq!(f2.token, 3);
    // A retry for another step than the current one changes no row and journals nothing.
    let before = db.m.tables.workflows.clone();
    db.ok(DbRequest::ScheduleRetry {
        fence: f2,
        step: 7,
        name: "s7".into(),
        error: json!({}),
        delay_ms: 1,
    });
    assert_eq!(db.m.tables.workflows, before);
    assert_eq!(db.events(1), vec!["received", "retry"]);
}

#[test]
fn dead_letter_requeue_and_audit() {
    let mut db = Db::default();
    db.submit("a");
    db.submit("b");
    let f = db.claim1("n1");
    db.complete(&f, 0, None);
    db.now = 50;
    db.ok(DbRequest::Fail {
        fence: f.clone(),
        step: 1,
        name: "transfer".into(),
        error: json!({"reason_code": "reverted", "message": "execution reverted: nope"}),
        dead_letter: true,
    });
    let w = db.wf(1);
    assert_eq!(
        (w.status, w.attempts, w.lease_owner),
        (WorkflowStatus::DeadLetter, 1, None)
    );
    let DbReply::DeadLetters(dl) = db.ok(DbRequest::DeadLetters { limit: 10 }) else {
        panic!()
    };
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (
            dl[0].workflow_id,
            dl[0].kind.as_str(),
            dl[0].step_index,
            dl[0].step_name.as_str()
        ),
        (1, "transfer", 1, "transfer")
    );
    assert_eq!(
        (dl[0].reason_code.as_str(), dl[0].reason.as_str()),
        ("reverted", "execution reverted: nope")
    );
    let DbReply::Stats(s) = db.ok(DbRequest::Stats {
        stalled_after_ms: 1_000_000,
    }) else {
        panic!()
    };
    assert_eq!(
        s,
        Stats {
            active: 1,
            dead_letter: 1,
            stalled: 0
        }
    );

    // Requeue: back to pending at its failed step, audited, journaled, atomically.
    db.now = 60;
    let DbReply::WorkflowRecord(w) = db.ok(DbRequest::Requeue {
        id: 1,
        actor: "alice".into(),
        reason: "fixed".into(),
    }) else {
        panic!()
    };
    assert_eq!(
        (
            w.status,
            w.current_step,
            w.attempts,
            w.error,
            w.fencing_token
        ),
        // Claimed (1), failed (2), requeued (3): each end of a lease bumps the token.
        (WorkflowStatus::Pending, 1, 0, None, 3)
    );
    assert!(db.m.tables.dead_letters.is_empty());
    let j = db.m.journal_rows(1).last().unwrap().clone();
    assert_eq!(
        (
            j.event.as_str(),
            j.step_name.as_str(),
            j.node.as_str(),
            j.fencing_token,
            j.step_index
        ),
        ("requeued", "requeue", "operator:alice", 3, 1)
    );
    assert_eq!(j.detail, Some(json!({"reason": "fixed"})));
    // A second requeue is refused, and the refusal is audited (committed despite the error).
    let r = db.ap(DbRequest::Requeue {
        id: 1,
        actor: "bob".into(),
        reason: "again".into(),
    });
    assert_eq!(
        r.unwrap_err(),
        EngineError::Invalid("workflow 1 is not in the dead-letter queue".into())
    );
    // An unknown workflow is NotFound (HTTP 404), audited the same way.
    let r = db.ap(DbRequest::Requeue {
        id: 42,
        actor: "bob".into(),
        reason: "typo".into(),
    });
    assert_eq!(
        r.unwrap_err(),
        EngineError::NotFound("workflow 42 does not exist".into())
    );
    assert!(DbModel::committed(
        &DbRequest::Requeue {
            id: 42,
            actor: "bob".into(),
            reason: "typo".into(),
        },
        &Err(EngineError::NotFound(String::new()))
    ));
    let DbReply::AuditLog(log) = db.ok(DbRequest::AuditLog { limit: 10 }) else {
        panic!()
    };
    let outcomes: Vec<_> = log.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        vec![
            "rejected: workflow is unknown",
            "rejected: workflow is pending",
            "ok"
        ]
    );
    assert_eq!(log[2].args, json!({"workflow_id": 1}));
    assert_eq!(
        (
            log[2].actor.as_str(),
            log[2].action.as_str(),
            log[2].reason.as_str()
        ),
        ("alice", "requeue", "fixed")
    );
    let DbReply::AuditLog(log) = db.ok(DbRequest::AuditLog { limit: 1 }) else {
        panic!()
    };
    assert_eq!(log.len(), 1);
    assert!(matches!(
        db.ap(DbRequest::AuditLog { limit: -1 }),
        Err(EngineError::Db { ref sqlstate, .. }) if sqlstate == "2201W"
    ));
    // The requeued workflow runs again at once; an operator audit entry goes in as given.
    assert_eq!(db.claim("n2", 5).len(), 2);
    db.ok(DbRequest::Audit {
        entry: AuditEntry {
            actor: "carol".into(),
            action: "pause".into(),
            args: json!([]),
            reason: "r".into(),
            outcome: "ok".into(),
        },
    });
    assert_eq!(db.m.audit_entries().last().unwrap().actor, "carol");
}

#[test]
fn fail_without_dead_letter_and_dead_letter_order() {
    let mut db = Db::default();
    for k in ["a", "b", "c"] {
        db.submit(k);
    }
    let c = db.claim("n", 3);
    db.now = 5;
    db.ok(DbRequest::Fail {
        fence: c[2].fence.clone(),
        step: 0,
        name: "x".into(),
        error: json!({"message": 1}),
        dead_letter: true,
    });
    db.now = 3;
    db.ok(DbRequest::Fail {
        fence: c[1].fence.clone(),
        step: 0,
        name: "x".into(),
        error: json!("plain"),
        dead_letter: true,
    });
    db.ok(DbRequest::Fail {
        fence: c[0].fence.clone(),
        step: 0,
        name: "x".into(),
        error: json!({}),
        dead_letter: false,
    });
    assert_eq!(db.wf(1).status, WorkflowStatus::Failed);
    assert_eq!(db.events(1).last().unwrap(), "failed");
    let DbReply::DeadLetters(dl) = db.ok(DbRequest::DeadLetters { limit: 10 }) else {
        panic!()
    };
    // ORDER BY failed_at: workflow 2 (t=3) before 3 (t=5); missing fields default.
    assert_eq!(
        dl.iter()
            .map(|d| (d.workflow_id, d.reason_code.as_str(), d.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![(2, "unknown", ""), (3, "unknown", "")]
    );
}

// -------------------------------------------------------------------------------------------
// transactions and nonces
// -------------------------------------------------------------------------------------------

/// `n` workflows, each claimed.
fn claimed(n: usize) -> (Db, Vec<Fence>) {
    let mut db = Db::default();
    for i in 0..n {
        db.submit(&format!("k{i}"));
    }
    let fences = db.claim("n1", n).into_iter().map(|c| c.fence).collect();
    (db, fences)
}

#[test]
fn nonces_are_dense_across_workflows_and_per_signer_chain() {
    let (mut db, f) = claimed(4);
    let n: Vec<u64> = (0..3).map(|i| db.create_tx(&f[i], 0, 1, 5).nonce).collect();
    assert_eq!(n, vec![5, 6, 7]);
    assert_eq!(db.m.next_nonce(signer(1), 1), Some(8));
    // Another signer has its own counter; so has another chain.
    assert_eq!(db.create_tx(&f[3], 0, 2, 0).nonce, 0);
    let DbReply::Tx(t) = db.ok(DbRequest::CreateTx {
        fence: f[3].clone(),
        step: 1,
        intent: intent(1, 2),
        fees: FEES,
        chain_nonce: 3,
    }) else {
        panic!()
    };
    assert_eq!((t.nonce, t.chain_id), (3, 2));
    // A chain count above the counter moves it.
    assert_eq!(db.create_tx(&f[0], 1, 1, 20).nonce, 20);
    assert_eq!(db.m.next_nonce(signer(1), 1), Some(21));
    // The record is what was asked for.
    let t = db.create_tx(&f[1], 1, 1, 0);
    assert_eq!(
        (
            t.state,
            t.step_index,
            t.workflow_id,
            t.intent_signer,
            t.gas_limit,
            t.value
        ),
        (
            TxState::Preparing,
            1,
            f[1].workflow_id,
            signer(1),
            100_000,
            U256::from(7)
        )
    );
    assert_eq!(t.fees.max_fee_per_gas, FEES.max_fee_per_gas);
    assert!(t.broadcasts.is_empty() && t.raw.is_none() && t.hash.is_none());
    let ev =
        db.m.tables
            .tx_events
            .iter()
            .find(|((id, _), _)| *id == t.id)
            .unwrap()
            .1;
    assert_eq!(ev.detail.as_deref(), Some("nonce 21"));
}

#[test]
fn a_second_live_tx_for_a_step_is_a_unique_violation() {
    let (mut db, f) = claimed(1);
    let t1 = db.create_tx(&f[0], 0, 1, 0);
    let before = db.m.clone();
    let r = db.ap(DbRequest::CreateTx {
        fence: f[0].clone(),
        step: 0,
        intent: intent(1, 1),
        fees: FEES,
        chain_nonce: 0,
    });
    assert_eq!(
        r.unwrap_err(),
        EngineError::Db {
            sqlstate: "23505".into(),
            message: "duplicate key value violates unique constraint \"transactions_live_step\""
                .into()
        }
    );
    // Nothing changed: the nonce allocation rolled back, and (unlike PostgreSQL, see the model's
    // docs) no id was burnt.
    assert_eq!(db.m, before);
    // After abandoning, a new live tx for the step is fine.
    db.ok(DbRequest::AbandonTx {
        fence: f[0].clone(),
        tx_id: t1.id,
        state: TxState::Failed,
        release: false,
    });
    let t2 = db.create_tx(&f[0], 0, 1, 0);
    assert_eq!((t2.id, t2.nonce), (2, 1));
    // Reviving the abandoned one would make two live rows.
    for req in [
        DbRequest::SetTxState {
            fence: f[0].clone(),
            tx_id: t1.id,
            state: TxState::Confirming,
            detail: None,
            receipt: None,
        },
        DbRequest::RecordSigned {
            fence: f[0].clone(),
            tx_id: t1.id,
            signed: broadcast(9, 0, 1),
        },
        DbRequest::ReassignNonce {
            fence: f[0].clone(),
            tx_id: t1.id,
            chain_nonce: 0,
        },
    ] {
        let before = db.m.clone();
        let r = db.ap(req);
        assert!(matches!(r, Err(EngineError::Db { ref sqlstate, .. }) if sqlstate == "23505"));
        assert_eq!(db.m, before);
    }
    let DbReply::OptTx(Some(live)) = db.ok(DbRequest::TxForStep {
        workflow: f[0].workflow_id,
        step: 0,
    }) else {
        panic!()
    };
    assert_eq!(live.id, t2.id);
    let DbReply::Txs(all) = db.ok(DbRequest::TxsForWorkflow {
        workflow: f[0].workflow_id,
    }) else {
        panic!()
    };
    assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn gap_fillers_are_recorded_once_by_hash_and_read_back_oldest_first() {
    let mut db = Db::default();
    let fillers = |db: &mut Db, nonce: u64| match db.ok(DbRequest::NonceFillers {
        signer: signer(1),
        chain_id: 31337,
        nonce,
    }) {
        DbReply::Broadcasts(b) => b,
        other => panic!("{other:?}"),
    };
    assert!(fillers(&mut db, 7).is_empty());
    let record = |db: &mut Db, b: Broadcast| {
        db.ok(DbRequest::RecordFiller {
            signer: signer(1),
            chain_id: 31337,
            signed: b,
        })
    };
    db.now = 10;
    record(&mut db, broadcast(0x22, 7, 5));
    db.now = 20;
    record(&mut db, broadcast(0x11, 7, 9));
    // Idempotent by hash: the same filler again changes nothing.
    let before = db.m.clone();
    record(&mut db, broadcast(0x11, 7, 9));
    assert!(db.m.same_data(&before));
    let got = fillers(&mut db, 7);
    assert_eq!(
        got.iter().map(|b| b.max_fee_per_gas).collect::<Vec<_>>(),
        vec![5, 9],
        "oldest first"
    );
    assert!(fillers(&mut db, 8).is_empty(), "other nonce");
    assert!(DbRequest::RecordFiller {
        signer: signer(1),
        chain_id: 1,
        signed: broadcast(1, 1, 1)
    }
    .is_write());
    assert!(!DbRequest::NonceFillers {
        signer: signer(1),
        chain_id: 1,
        nonce: 1
    }
    .is_write());
}

#[test]
fn named_nonces_are_those_any_row_names_and_foreign_ones_are_kept_once() {
    let (mut db, f) = claimed(1);
    let named = |db: &mut Db, from: u64, to: u64| match db.ok(DbRequest::NamedNonces {
        signer: signer(1),
        chain_id: 1,
        from,
        to,
    }) {
        DbReply::Nonces(n) => n,
        other => panic!("{other:?}"),
    };
    assert!(named(&mut db, 0, 100).is_empty());
    // A record at 5 signed there, then moved to 9 by a version at 9: both nonces are named.
    let tx = db.create_tx(&f[0], 0, 1, 5);
    assert_eq!(tx.nonce, 5);
    for (b, nonce) in [(1, 5), (2, 9)] {
        db.ok(DbRequest::RecordSigned {
            fence: f[0].clone(),
            tx_id: tx.id,
            signed: broadcast(b, nonce, 10),
        });
    }
    db.ok(DbRequest::RecordFiller {
        signer: signer(1),
        chain_id: 1,
        signed: broadcast(3, 2, 10),
    });
    db.ok(DbRequest::RecordOrphans {
        signer: signer(1),
        chain_id: 1,
        orphans: vec![dalp_engine::store::Orphan {
            tag: B256::repeat_byte(7),
            signed: broadcast(4, 12, 10),
        }],
    });
    let foreign = |db: &mut Db, s: u8, nonce: u64| {
        db.ok(DbRequest::RecordForeign {
            signer: signer(s),
            chain_id: 1,
            nonce,
            hash: B256::repeat_byte(0x40 + nonce as u8),
        })
    };
    foreign(&mut db, 1, 3);
    // Idempotent by hash.
    let before = db.m.clone();
    foreign(&mut db, 1, 3);
    assert!(db.m.same_data(&before));
    // Another signer's rows name nothing of this one's.
    foreign(&mut db, 2, 4);
    assert_eq!(named(&mut db, 0, 100), vec![2, 3, 5, 9, 12]);
    // `[from, to)`, ascending and distinct.
    assert_eq!(named(&mut db, 3, 12), vec![3, 5, 9]);
    assert!(named(&mut db, 13, 20).is_empty());
    assert!(!DbRequest::NamedNonces {
        signer: signer(1),
        chain_id: 1,
        from: 0,
        to: 1
    }
    .is_write());
    assert!(DbRequest::RecordForeign {
        signer: signer(1),
        chain_id: 1,
        nonce: 0,
        hash: B256::ZERO
    }
    .is_write());
}

#[test]
fn tx_by_nonce_finds_the_signed_live_record_holding_the_nonce() {
    let (mut db, f) = claimed(4);
    let by_nonce =
        |db: &mut Db, s: u8, chain_id: u64, nonce: u64| match db.ok(DbRequest::TxByNonce {
            signer: signer(s),
            chain_id,
            nonce,
        }) {
            DbReply::OptTx(t) => t,
            other => panic!("{other:?}"),
        };
    let t0 = db.create_tx(&f[0], 0, 1, 0);
    assert_eq!(t0.nonce, 0);
    // PREPARING: nothing signed yet, so nothing that could be on chain.
    assert!(by_nonce(&mut db, 1, 1, 0).is_none());
    db.ok(DbRequest::RecordSigned {
        fence: f[0].clone(),
        tx_id: t0.id,
        signed: broadcast(0xa0, 0, 10),
    });
    // BROADCASTING, then CONFIRMING and COMPLETED: found, with its signed versions.
    for state in [None, Some(TxState::Confirming), Some(TxState::Completed)] {
        if let Some(state) = state {
            db.ok(DbRequest::SetTxState {
                fence: f[0].clone(),
                tx_id: t0.id,
                state,
                detail: None,
                receipt: None,
            });
        }
        let got = by_nonce(&mut db, 1, 1, 0).expect("signed record");
        assert_eq!(got.id, t0.id);
        assert_eq!(got.state, state.unwrap_or(TxState::Broadcasting));
        assert_eq!(got.raw, Some(Bytes::from(vec![0xa0; 4])));
        assert_eq!(
            got.broadcasts.iter().map(|b| b.hash).collect::<Vec<_>>(),
            vec![B256::repeat_byte(0xa0)]
        );
    }
    // Another signer, another chain, another nonce: not found.
    assert!(by_nonce(&mut db, 2, 1, 0).is_none());
    assert!(by_nonce(&mut db, 1, 2, 0).is_none());
    assert!(by_nonce(&mut db, 1, 1, 1).is_none());
    // An abandoned record whose nonce was released is not found; the record that reuses the
    // hole is, once signed; and with two signed records holding the nonce the higher id wins.
    let t1 = db.create_tx(&f[1], 0, 1, 0);
    assert_eq!(t1.nonce, 1);
    db.ok(DbRequest::RecordSigned {
        fence: f[1].clone(),
        tx_id: t1.id,
        signed: broadcast(0xb1, 1, 10),
    });
    assert_eq!(by_nonce(&mut db, 1, 1, 1).map(|t| t.id), Some(t1.id));
    db.ok(DbRequest::AbandonTx {
        fence: f[1].clone(),
        tx_id: t1.id,
        state: TxState::DeadLetter,
        release: true,
    });
    assert!(by_nonce(&mut db, 1, 1, 1).is_none());
    let t2 = db.create_tx(&f[2], 0, 1, 0);
    assert_eq!(t2.nonce, 1);
    assert!(by_nonce(&mut db, 1, 1, 1).is_none());
    db.ok(DbRequest::RecordSigned {
        fence: f[2].clone(),
        tx_id: t2.id,
        signed: broadcast(0xb2, 1, 10),
    });
    assert_eq!(by_nonce(&mut db, 1, 1, 1).map(|t| t.id), Some(t2.id));
    // A reassigned record loses the nonce (back to PREPARING) even though its old signed
    // version stays on record.
    db.ok(DbRequest::ReassignNonce {
        fence: f[2].clone(),
        tx_id: t2.id,
        chain_nonce: 0,
    });
    assert!(by_nonce(&mut db, 1, 1, 1).is_none());
    // A read: nothing changed, and it is not replicated.
    let before = db.m.clone();
    by_nonce(&mut db, 1, 1, 0);
    assert_eq!(db.m, before);
    let req = DbRequest::TxByNonce {
        signer: signer(1),
        chain_id: 1,
        nonce: 0,
    };
    assert!(!req.is_write());
    assert_eq!(req.name(), "tx_by_nonce");
}

#[test]
fn nonce_holds_list_every_live_record_in_the_range_by_nonce_then_id() {
    let (mut db, f) = claimed(4);
    let holds =
        |db: &mut Db, s: u8, chain_id: u64, from: u64, to: u64| match db.ok(DbRequest::NonceHolds {
            signer: signer(s),
            chain_id,
            from,
            to,
        }) {
            DbReply::Holds(h) => h,
            other => panic!("{other:?}"),
        };
    let live = |db: &mut Db, s: u8, chain_id: u64, from: u64, to: u64| {
        holds(db, s, chain_id, from, to)
            .iter()
            .map(|h| (h.nonce, h.tx_id, h.state))
            .collect::<Vec<_>>()
    };
    // PREPARING counts (unlike tx_by_nonce): a record that holds the nonce before it signed.
    let t0 = db.create_tx(&f[0], 0, 1, 0);
    let t1 = db.create_tx(&f[1], 0, 1, 0);
    assert_eq!((t0.nonce, t1.nonce), (0, 1));
    assert_eq!(
        live(&mut db, 1, 1, 0, 2),
        vec![
            (0, t0.id, TxState::Preparing),
            (1, t1.id, TxState::Preparing)
        ]
    );
    // Versions come along, oldest first, those signed at the record's nonce only.
    db.ok(DbRequest::RecordSigned {
        fence: f[1].clone(),
        tx_id: t1.id,
        signed: broadcast(0xb1, 1, 10),
    });
    // Later, so the order is by time and not by hash.
    db.now += 1;
    db.ok(DbRequest::RecordSigned {
        fence: f[1].clone(),
        tx_id: t1.id,
        signed: broadcast(0x01, 1, 12),
    });
    db.ok(DbRequest::SetTxState {
        fence: f[0].clone(),
        tx_id: t0.id,
        state: TxState::Completed,
        detail: None,
        receipt: None,
    });
    // The range is half-open; other signers and chains are not listed.
    assert_eq!(
        holds(&mut db, 1, 1, 1, 2),
        vec![NonceHold {
            nonce: 1,
            tx_id: t1.id,
            state: TxState::Broadcasting,
            versions: vec![B256::repeat_byte(0xb1), B256::repeat_byte(0x01)],
        }]
    );
    assert_eq!(
        live(&mut db, 1, 1, 0, 1),
        vec![(0, t0.id, TxState::Completed)]
    );
    assert!(live(&mut db, 1, 1, 2, 9).is_empty());
    assert!(live(&mut db, 2, 1, 0, 9).is_empty());
    assert!(live(&mut db, 1, 2, 0, 9).is_empty());
    assert!(live(&mut db, 1, 1, 5, 0).is_empty());
    // Abandoned records are not live; the record reusing the released hole is, after the
    // abandoned one's id would have sorted first.
    db.ok(DbRequest::AbandonTx {
        fence: f[1].clone(),
        tx_id: t1.id,
        state: TxState::DeadLetter,
        release: true,
    });
    assert_eq!(live(&mut db, 1, 1, 1, 2), vec![]);
    let t2 = db.create_tx(&f[2], 0, 1, 0);
    assert_eq!(t2.nonce, 1);
    assert_eq!(
        live(&mut db, 1, 1, 0, u64::MAX),
        vec![
            (0, t0.id, TxState::Completed),
            (1, t2.id, TxState::Preparing)
        ]
    );
    // A record moved to another nonce does not list the versions it signed at the old one.
    db.ok(DbRequest::RecordSigned {
        fence: f[2].clone(),
        tx_id: t2.id,
        signed: broadcast(0xc1, 1, 10),
    });
    let moved = match db.ok(DbRequest::ReassignNonce {
        fence: f[2].clone(),
        tx_id: t2.id,
        chain_nonce: 5,
    }) {
        DbReply::Tx(t) => t,
        other => panic!("{other:?}"),
    };
    let at = holds(&mut db, 1, 1, moved.nonce, moved.nonce + 1);
    assert_eq!(at.len(), 1);
    assert_eq!((at[0].tx_id, at[0].versions.clone()), (t2.id, vec![]));
    // A read: nothing changed, and it is not replicated.
    let before = db.m.clone();
    live(&mut db, 1, 1, 0, 9);
    assert_eq!(db.m, before);
    let req = DbRequest::NonceHolds {
        signer: signer(1),
        chain_id: 1,
        from: 0,
        to: 1,
    };
    assert!(!req.is_write());
    assert_eq!(req.name(), "nonce_holds");
}

#[test]
fn released_holes_are_reused_first_and_stale_holes_dropped() {
    let (mut db, f) = claimed(5);
    let t: Vec<TxRecord> = (0..3).map(|i| db.create_tx(&f[i], 0, 1, 0)).collect();
    // Abandon the one holding nonce 1 with release: the next allocation takes 1.
    db.ok(DbRequest::AbandonTx {
        fence: f[1].clone(),
        tx_id: t[1].id,
        state: TxState::DeadLetter,
        release: true,
    });
    assert_eq!(db.m.nonce_holes(signer(1), 1), vec![1]);
    let last = last_tx_event(&db.m);
    assert_eq!(
        (last.state, last.detail.as_deref()),
        (TxState::DeadLetter, Some("abandoned; nonce released"))
    );
    assert_eq!(db.create_tx(&f[3], 0, 1, 0).nonce, 1);
    assert!(db.m.nonce_holes(signer(1), 1).is_empty());
    assert_eq!(db.m.next_nonce(signer(1), 1), Some(3));
    // Abandon without release keeps the nonce consumed.
    db.ok(DbRequest::AbandonTx {
        fence: f[2].clone(),
        tx_id: t[2].id,
        state: TxState::Cancelled,
        release: false,
    });
    assert!(db.m.nonce_holes(signer(1), 1).is_empty());
    // A hole below the chain's count is unusable: dropped, and the counter serves.
    db.ok(DbRequest::AbandonTx {
        fence: f[0].clone(),
        tx_id: t[0].id,
        state: TxState::Failed,
        release: true,
    });
    assert_eq!(db.m.nonce_holes(signer(1), 1), vec![0]);
    assert_eq!(db.create_tx(&f[4], 0, 1, 1).nonce, 3);
    assert!(db.m.nonce_holes(signer(1), 1).is_empty());
}

#[test]
fn resync_raises_the_counter_only() {
    let (mut db, f) = claimed(2);
    let resync = |db: &mut Db, n: u64| match db.ok(DbRequest::ResyncNonce {
        signer: signer(1),
        chain_id: 1,
        chain_nonce: n,
    }) {
        DbReply::U64(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(resync(&mut db, 4), 4); // seeds a fresh counter
    assert_eq!(db.create_tx(&f[0], 0, 1, 0).nonce, 4);
    assert_eq!(resync(&mut db, 20), 20);
    assert_eq!(resync(&mut db, 3), 20);
    assert_eq!(db.create_tx(&f[1], 0, 1, 0).nonce, 20);
}

#[test]
fn record_signed_keeps_every_version_and_reassign_gives_a_fresh_nonce() {
    let (mut db, f) = claimed(2);
    let t = db.create_tx(&f[0], 0, 1, 0);
    let other = db.create_tx(&f[1], 0, 1, 0);
    assert_eq!(other.nonce, 1);
    let rec = |db: &mut Db, b: Broadcast| match db.ok(DbRequest::RecordSigned {
        fence: f[0].clone(),
        tx_id: t.id,
        signed: b,
    }) {
        DbReply::Tx(t) => t,
        other => panic!("{other:?}"),
    };
    db.now = 10;
    let r1 = rec(&mut db, broadcast(0xaa, 0, 10));
    assert_eq!(r1.state, TxState::Broadcasting);
    assert_eq!(r1.hash, Some(B256::repeat_byte(0xaa)));
    db.now = 20;
    // A replacement with a lower hash sorts after the original (ORDER BY created_at first).
    let r2 = rec(&mut db, broadcast(0x11, 0, 20));
    assert_eq!(
        r2.broadcasts.iter().map(|b| b.hash[0]).collect::<Vec<_>>(),
        vec![0xaa, 0x11]
    );
    assert_eq!(
        (r2.raw.clone().unwrap()[0], r2.fees.max_fee_per_gas),
        (0x11, 20)
    );
    // Re-recording a known version adds no row but makes it current again.
    db.now = 30;
    let r3 = rec(&mut db, broadcast(0xaa, 0, 10));
    assert_eq!(r3.broadcasts.len(), 2);
    assert_eq!(r3.hash, Some(B256::repeat_byte(0xaa)));
    // Unknown transaction: the broadcasts' foreign key.
    let r = db.ap(DbRequest::RecordSigned {
        fence: f[0].clone(),
        tx_id: 99,
        signed: broadcast(1, 0, 1),
    });
    assert_eq!(
        r.unwrap_err(),
        EngineError::Db {
            sqlstate: "23503".into(),
            message: "insert or update on table \"tx_broadcasts\" violates foreign key constraint \"tx_broadcasts_tx_id_fkey\"".into()
        }
    );
    // The nonce was consumed outside the engine: a fresh one, old versions stay on record.
    let DbReply::Tx(r4) = db.ok(DbRequest::ReassignNonce {
        fence: f[0].clone(),
        tx_id: t.id,
        chain_nonce: 7,
    }) else {
        panic!()
    };
    assert_eq!(
        (r4.nonce, r4.state, r4.raw.clone(), r4.hash),
        (7, TxState::Preparing, None, None)
    );
    assert_eq!(r4.broadcasts.len(), 2);
    assert_eq!(r4.fees.max_fee_per_gas, 10);
    let last = last_tx_event(&db.m);
    assert_eq!(
        last.detail.as_deref(),
        Some("nonce reassigned to 7 (chain at 7)")
    );
    assert_eq!(
        db.ap(DbRequest::ReassignNonce {
            fence: f[0].clone(),
            tx_id: 99,
            chain_nonce: 7
        })
        .unwrap_err(),
        row_not_found()
    );
    assert_eq!(
        db.ap(DbRequest::AbandonTx {
            fence: f[0].clone(),
            tx_id: 99,
            state: TxState::Failed,
            release: true
        })
        .unwrap_err(),
        row_not_found()
    );
}

#[test]
fn set_tx_state_records_failure_and_receipt_like_the_sql() {
    let (mut db, f) = claimed(1);
    let t = db.create_tx(&f[0], 0, 1, 0);
    let set = |db: &mut Db, state, detail: Option<&str>, receipt: Option<Value>| {
        db.ap(DbRequest::SetTxState {
            fence: f[0].clone(),
            tx_id: t.id,
            state,
            detail: detail.map(Into::into),
            receipt,
        })
    };
    set(
        &mut db,
        TxState::Confirming,
        Some("sent"),
        Some(json!({"block": 1})),
    )
    .unwrap();
    let row = db.m.tables.transactions[&t.id].clone();
    // The detail is the failure only for a terminal state; the receipt is COALESCEd.
    assert_eq!(
        (row.failure, row.receipt.clone()),
        (None, Some(json!({"block": 1})))
    );
    set(&mut db, TxState::Completed, None, None).unwrap();
    assert_eq!(
        db.m.tables.transactions[&t.id].receipt,
        Some(json!({"block": 1}))
    );
    set(&mut db, TxState::Failed, Some("reverted"), None).unwrap();
    assert_eq!(
        db.m.tables.transactions[&t.id].failure.as_deref(),
        Some("reverted")
    );
    set(&mut db, TxState::Failed, None, Some(Value::Null)).unwrap();
    let row = &db.m.tables.transactions[&t.id];
    assert_eq!(row.failure.as_deref(), Some("reverted"));
    // JSON null is not SQL NULL.
    assert_eq!(row.receipt, Some(Value::Null));
    // Unknown transaction: the UPDATE matches nothing, the event's foreign key fails.
    let before = db.m.clone();
    let r = db.ap(DbRequest::SetTxState {
        fence: f[0].clone(),
        tx_id: 99,
        state: TxState::Failed,
        detail: None,
        receipt: None,
    });
    assert!(
        matches!(r, Err(EngineError::Db { ref sqlstate, ref message }) if sqlstate == "23503" && message.contains("\"tx_events\""))
    );
    assert_eq!(db.m, before);
}

#[test]
fn notify_once_per_workflow_and_kind() {
    let (mut db, f) = claimed(2);
    let notify = |db: &mut Db, f: &Fence, kind: &str| match db.ok(DbRequest::Notify {
        fence: f.clone(),
        kind: kind.into(),
        payload: json!({"k": kind}),
    }) {
        DbReply::Bool(b) => b,
        other => panic!("{other:?}"),
    };
    assert!(notify(&mut db, &f[0], "issued"));
    assert!(!notify(&mut db, &f[0], "issued"));
    assert!(notify(&mut db, &f[0], "other"));
    assert!(notify(&mut db, &f[1], "issued"));
    assert_eq!(db.m.tables.notifications.len(), 3);
}

// -------------------------------------------------------------------------------------------
// indexer
// -------------------------------------------------------------------------------------------

fn ev(block: u64, hash: u8, log: u64, from: Address, to: Address, value: u64) -> TokenEvent {
    TokenEvent {
        block_number: block,
        block_hash: B256::repeat_byte(hash),
        tx_hash: B256::repeat_byte(0x77),
        log_index: log,
        contract: Address::repeat_byte(0xcc),
        from,
        to,
        value: U256::from(value),
    }
}

fn balances(db: &mut Db) -> Result<Vec<(Address, U256)>, EngineError> {
    match db.ap(DbRequest::IndexedBalances {
        chain_id: 1,
        contract: Address::repeat_byte(0xcc),
    })? {
        DbReply::Balances(b) => Ok(b),
        other => panic!("{other:?}"),
    }
}

/// The indexer checkpoint of chain 1 as the indexer reads it.
fn checkpoint(db: &mut Db) -> Option<(u64, B256)> {
    match db.ok(DbRequest::IndexerCheckpoint { chain_id: 1 }) {
        DbReply::Checkpoint(cp) => cp.map(|c| (c.last_block, c.last_hash)),
        other => panic!("{other:?}"),
    }
}

/// A block that extends a checkpoint other than the current one (the indexer read it before a
/// failover, a rollback or another indexer moved it) writes nothing: it would skip the blocks in
/// between or undo newer ones. The block already at the checkpoint is a success (a retry).
#[test]
fn index_block_writes_only_over_the_checkpoint_it_extends() {
    let mut db = Db::default();
    let (z, a) = (Address::ZERO, signer(0xa0));
    let block = |extends: Option<(u64, B256)>, n: u64, h: u8| DbRequest::IndexBlock {
        chain_id: 1,
        extends,
        number: n,
        hash: B256::repeat_byte(h),
        events: vec![ev(n, h, 0, z, a, 10)],
        finalized: 0,
    };
    let one = Some((1, B256::repeat_byte(1)));
    assert!(matches!(db.ok(block(None, 1, 1)), DbReply::Bool(true)));
    assert!(matches!(db.ok(block(one, 2, 2)), DbReply::Bool(true)));
    let before = db.m.clone();
    // Block 4 over the checkpoint at 3 that this indexer read, which is no longer there (at 2).
    assert!(matches!(
        db.ok(block(Some((3, B256::repeat_byte(3))), 4, 4)),
        DbReply::Bool(false)
    ));
    // A first block while one is indexed; block 2 again over 1 with another hash.
    assert!(matches!(db.ok(block(None, 1, 7)), DbReply::Bool(false)));
    assert!(matches!(db.ok(block(one, 2, 9)), DbReply::Bool(false)));
    assert_eq!(db.m.tables, before.tables, "nothing written");
    // Block 2 again as it is: done already.
    assert!(matches!(db.ok(block(one, 2, 2)), DbReply::Bool(true)));
    assert_eq!(db.m.tables, before.tables);
    assert_eq!(checkpoint(&mut db), Some((2, B256::repeat_byte(2))));
}

#[test]
fn index_block_is_idempotent_and_rollback_is_exact() {
    let mut db = Db::default();
    let (z, a, b) = (Address::ZERO, signer(0xa0), signer(0x0b));
    // Each block extends the checkpoint as it stands.
    let index = |db: &mut Db, n: u64, h: u8, events: Vec<TokenEvent>, fin: u64| {
        let extends = checkpoint(db);
        db.ok(DbRequest::IndexBlock {
            chain_id: 1,
            extends,
            number: n,
            hash: B256::repeat_byte(h),
            events,
            finalized: fin,
        })
    };
    index(&mut db, 1, 1, vec![ev(1, 1, 0, z, a, 100)], 0);
    index(
        &mut db,
        2,
        2,
        vec![ev(2, 2, 0, a, b, 30), ev(2, 2, 1, b, z, 5)],
        1,
    );
    // Re-indexing the same block adds nothing.
    let before = db.m.tables.token_events.clone();
    index(
        &mut db,
        2,
        2,
        vec![ev(2, 2, 0, a, b, 30), ev(2, 2, 1, b, z, 5)],
        1,
    );
    assert_eq!(db.m.tables.token_events, before);
    // Zero address excluded; ORDER BY holder (0x0b.. before 0xa0..).
    assert_eq!(
        balances(&mut db).unwrap(),
        vec![(b, U256::from(25)), (a, U256::from(70))]
    );
    let DbReply::Checkpoint(Some(cp)) = db.ok(DbRequest::IndexerCheckpoint { chain_id: 1 }) else {
        panic!()
    };
    assert_eq!(
        (cp.last_block, cp.last_hash, cp.finalized_block),
        (2, B256::repeat_byte(2), 1)
    );
    // A reorg replaces block 2: roll back to 1, index the new 2 and 3.
    let DbReply::U64(removed) = db.ok(DbRequest::RollbackIndex {
        chain_id: 1,
        keep: 1,
    }) else {
        panic!()
    };
    assert_eq!(removed, 1);
    assert_eq!(balances(&mut db).unwrap(), vec![(a, U256::from(100))]);
    let DbReply::Checkpoint(Some(cp)) = db.ok(DbRequest::IndexerCheckpoint { chain_id: 1 }) else {
        panic!()
    };
    assert_eq!(
        (cp.last_block, cp.last_hash, cp.finalized_block),
        (1, B256::repeat_byte(1), 1)
    );
    assert!(matches!(
        db.ok(DbRequest::IndexedBlockHash {
            chain_id: 1,
            number: 2
        }),
        DbReply::OptHash(None)
    ));
    index(&mut db, 2, 0x22, vec![ev(2, 0x22, 0, a, b, 100)], 1);
    // a's balance is zero: filtered out (`balance <> 0`).
    assert_eq!(balances(&mut db).unwrap(), vec![(b, U256::from(100))]);
    // Rolling back below every indexed block deletes the checkpoint.
    let DbReply::U64(removed) = db.ok(DbRequest::RollbackIndex {
        chain_id: 1,
        keep: 0,
    }) else {
        panic!()
    };
    assert_eq!(removed, 2);
    assert!(matches!(
        db.ok(DbRequest::IndexerCheckpoint { chain_id: 1 }),
        DbReply::Checkpoint(None)
    ));
    assert!(balances(&mut db).unwrap().is_empty());
}

#[test]
fn negative_balances_fail_like_pg_parsing_them() {
    let mut db = Db::default();
    db.ok(DbRequest::IndexBlock {
        chain_id: 1,
        extends: None,
        number: 1,
        hash: B256::repeat_byte(1),
        events: vec![ev(1, 1, 0, signer(1), signer(2), 5)],
        finalized: 0,
    });
    assert_eq!(
        balances(&mut db).unwrap_err(),
        EngineError::Internal("bad number in database: -5".into())
    );
    // An event of another block is refused without a change (pg.rs panics in the engine).
    let before = db.m.clone();
    let r = db.ap(DbRequest::IndexBlock {
        chain_id: 1,
        extends: Some((1, B256::repeat_byte(1))),
        number: 2,
        hash: B256::repeat_byte(2),
        events: vec![ev(2, 3, 0, signer(1), signer(2), 5)],
        finalized: 0,
    });
    assert!(matches!(r, Err(EngineError::Internal(_))));
    assert_eq!(db.m, before);
}

#[test]
fn stats_count_active_dead_letter_and_stalled() {
    let mut db = Db::default();
    for k in ["a", "b", "c", "d"] {
        db.submit(k);
    }
    let c = db.claim("n", 2); // 1 and 2 leased
    db.ok(DbRequest::Fail {
        fence: c[1].fence.clone(),
        step: 0,
        name: "x".into(),
        error: json!({}),
        dead_letter: true,
    });
    let stats = |db: &mut Db, after: u64| match db.ok(DbRequest::Stats {
        stalled_after_ms: after,
    }) {
        DbReply::Stats(s) => s,
        other => panic!("{other:?}"),
    };
    db.now = 1_000;
    // 3 and 4 are pending and unleased since t=0; 1 is leased.
    assert_eq!(
        stats(&mut db, 999),
        Stats {
            active: 3,
            dead_letter: 1,
            stalled: 2
        }
    );
    assert_eq!(stats(&mut db, 1_000).stalled, 0);
    db.now = LEASE + 1; // 1's lease has expired: stalled too
    assert_eq!(stats(&mut db, 0).stalled, 3);
}

// -------------------------------------------------------------------------------------------
// The Store over a DbCall
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn store_over_local_db_runs_a_workflow() {
    let store = StoreOver(std::sync::Arc::new(LocalDb::new()));
    let db = store.0.clone();
    db.set_now(1_000);
    let Submitted::Created(w) = store
        .submit(new_wf("k", "h"), Duration::from_secs(86_400))
        .await
        .unwrap()
    else {
        panic!()
    };
    let claims = store
        .claim("n1", Duration::from_millis(LEASE), 10, 7)
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    let fence = claims[0].fence.clone();
    store
        .complete_step(&fence, 0, "check", json!({"ok": true}), None)
        .await
        .unwrap();
    let tx = store
        .create_tx(&fence, 1, &intent(1, 1), FEES, 3)
        .await
        .unwrap();
    assert_eq!(tx.nonce, 3);
    let tx = store
        .record_signed(&fence, tx.id, &broadcast(5, 3, 10))
        .await
        .unwrap();
    assert_eq!(store.tx_for_step(w.id, 1).await.unwrap().unwrap().id, tx.id);
    store
        .set_tx_state(&fence, tx.id, TxState::Completed, None, Some(&json!({})))
        .await
        .unwrap();
    store
        .complete_step(&fence, 1, "transfer", json!({}), Some(json!({"done": 1})))
        .await
        .unwrap();
    assert!(store.notify(&fence, "done", &json!({})).await.unwrap());
    let w = store.workflow(w.id).await.unwrap().unwrap();
    assert_eq!(w.status, WorkflowStatus::Completed);
    assert_eq!(store.journal(w.id).await.unwrap().len(), 4);
    assert_eq!(
        store.stats(Duration::from_secs(1)).await.unwrap(),
        Stats::default()
    );
    // Time moves with the LocalDb's clock.
    db.advance(5_000);
    assert_eq!(db.now_ms(), 6_000);
    assert_eq!(store.resync_nonce(signer(1), 1, 2).await.unwrap(), 4);
    // call_store is the inverse mapping: replaying a request through the Store gives the
    // model's reply.
    let r = call_store(&store, DbRequest::Workflow { id: w.id })
        .await
        .unwrap();
    assert!(matches!(r, DbReply::Workflow(Some(x)) if x.id == w.id));
}

struct AlwaysUnit;

#[async_trait::async_trait]
impl DbCall for AlwaysUnit {
    async fn call(&self, _req: DbRequest) -> Result<DbReply, EngineError> {
        Ok(DbReply::Unit)
    }
}

#[tokio::test]
async fn a_reply_of_the_wrong_shape_is_internal_naming_the_method() {
    let store = StoreOver(AlwaysUnit);
    let e = store.workflow(1).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Internal(m) if m.contains("workflow") && m.contains("Unit")),
        "{e:?}"
    );
    let e = store.claim("n", Duration::ZERO, 1, 7).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Internal(m) if m.contains("claim")),
        "{e:?}"
    );
    // Unit replies are the right shape for unit methods.
    store
        .release(&Fence {
            workflow_id: 1,
            token: 0,
            node: "n".into(),
            lease_id: 0,
        })
        .await
        .unwrap();
}

#[test]
fn committed_says_what_to_replicate() {
    let mut db = Db::default();
    db.submit("a");
    let claim = DbRequest::Claim {
        node: "n".into(),
        lease_ms: LEASE,
        limit: 1,
        lease_id: 7,
        skip_locked: Vec::new(),
    };
    let r = db.ap(claim.clone());
    assert!(DbModel::committed(&claim, &r));
    // An empty claim, a read, a refused write: nothing to ship.
    let r = db.ap(claim.clone());
    assert!(!DbModel::committed(&claim, &r));
    let read = DbRequest::Workflow { id: 1 };
    assert!(!DbModel::committed(&read, &db.ap(read.clone())));
    let dup = DbRequest::Submit {
        new: new_wf("a", "other"),
        window_ms: DAY,
    };
    assert!(!DbModel::committed(&dup, &db.ap(dup.clone())));
    // The refused requeue committed its audit row: shipped, and it fails the same way there.
    let requeue = DbRequest::Requeue {
        id: 1,
        actor: "a".into(),
        reason: "r".into(),
    };
    let before = db.m.clone();
    let r = db.ap(requeue.clone());
    assert!(r.is_err() && DbModel::committed(&requeue, &r));
    let mut replica = before;
    assert_eq!(
        format!("{:?}", replica.apply(&requeue, db.now)),
        format!("{r:?}")
    );
    assert!(replica.same_data(&db.m));
}

#[test]
fn request_names_and_write_classification() {
    let f = Fence {
        workflow_id: 1,
        token: 1,
        node: "n".into(),
        lease_id: 0,
    };
    assert!(DbRequest::Release { fence: f.clone() }.is_write());
    assert!(DbRequest::Requeue {
        id: 1,
        actor: "a".into(),
        reason: "r".into()
    }
    .is_write());
    assert!(!DbRequest::Stats {
        stalled_after_ms: 1
    }
    .is_write());
    assert!(!DbRequest::TxForStep {
        workflow: 1,
        step: 0
    }
    .is_write());
    assert_eq!(
        DbRequest::AbandonTx {
            fence: f.clone(),
            tx_id: 1,
            state: TxState::Failed,
            release: true
        }
        .name(),
        "abandon_tx"
    );
    assert_eq!(DbRequest::Release { fence: f.clone() }.fence(), Some(&f));
}

// -------------------------------------------------------------------------------------------
// Properties over random operation sequences
// -------------------------------------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// An abstract operation, turned into a request against the current state (so that fences
    /// are mostly current, sometimes stale, and transaction ids mostly exist).
    #[derive(Clone, Debug)]
    enum Op {
        Advance(u64),
        Submit {
            key: u8,
            hash: u8,
        },
        Claim {
            node: u8,
            limit: usize,
        },
        Renew {
            wf: i64,
            stale: bool,
        },
        Release {
            wf: i64,
            stale: bool,
        },
        Complete {
            wf: i64,
            stale: bool,
            delta: i32,
            last: bool,
        },
        Retry {
            wf: i64,
            stale: bool,
            delay: u64,
        },
        Fail {
            wf: i64,
            stale: bool,
            dl: bool,
        },
        Requeue {
            wf: i64,
        },
        CreateTx {
            wf: i64,
            stale: bool,
            signer: u8,
            chain_nonce: u64,
        },
        Sign {
            wf: i64,
            stale: bool,
            hash: u8,
        },
        SetState {
            wf: i64,
            stale: bool,
            state: u8,
        },
        Reassign {
            wf: i64,
            stale: bool,
            chain_nonce: u64,
        },
        Abandon {
            wf: i64,
            stale: bool,
            state: u8,
            release: bool,
        },
        Resync {
            signer: u8,
            n: u64,
        },
        Notify {
            wf: i64,
            stale: bool,
            kind: u8,
        },
        Index {
            number: u64,
            hash: u8,
            n_events: u8,
            /// Extends a checkpoint that is not the current one.
            stale: bool,
        },
        Rollback {
            keep: u64,
        },
        Read {
            which: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let wf = 0i64..64;
        prop_oneof![
            (0u64..40_000).prop_map(Op::Advance),
            (0u8..5, 0u8..2).prop_map(|(key, hash)| Op::Submit { key, hash }),
            (0u8..3, 0usize..3).prop_map(|(node, limit)| Op::Claim { node, limit }),
            (wf.clone(), prop::bool::weighted(0.2)).prop_map(|(wf, stale)| Op::Renew { wf, stale }),
            (wf.clone(), prop::bool::weighted(0.2))
                .prop_map(|(wf, stale)| Op::Release { wf, stale }),
            (
                wf.clone(),
                prop::bool::weighted(0.2),
                -1i32..2,
                prop::bool::weighted(0.2)
            )
                .prop_map(|(wf, stale, delta, last)| Op::Complete {
                    wf,
                    stale,
                    delta,
                    last
                }),
            (wf.clone(), prop::bool::weighted(0.2), 0u64..20_000)
                .prop_map(|(wf, stale, delay)| Op::Retry { wf, stale, delay }),
            (
                wf.clone(),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.2)
            )
                .prop_map(|(wf, stale, dl)| Op::Fail { wf, stale, dl }),
            wf.clone().prop_map(|wf| Op::Requeue { wf }),
            (wf.clone(), prop::bool::weighted(0.2), 0u8..2, 0u64..8).prop_map(
                |(wf, stale, signer, chain_nonce)| {
                    Op::CreateTx {
                        wf,
                        stale,
                        signer,
                        chain_nonce,
                    }
                }
            ),
            (wf.clone(), prop::bool::weighted(0.2), 0u8..4)
                .prop_map(|(wf, stale, hash)| Op::Sign { wf, stale, hash }),
            (wf.clone(), prop::bool::weighted(0.2), 0u8..8)
                .prop_map(|(wf, stale, state)| Op::SetState { wf, stale, state }),
            (wf.clone(), prop::bool::weighted(0.2), 0u64..12).prop_map(
                |(wf, stale, chain_nonce)| Op::Reassign {
                    wf,
                    stale,
                    chain_nonce
                }
            ),
            (
                wf.clone(),
                prop::bool::weighted(0.2),
                0u8..3,
                prop::bool::weighted(0.2)
            )
                .prop_map(|(wf, stale, state, release)| Op::Abandon {
                    wf,
                    stale,
                    state,
                    release
                }),
            (0u8..2, 0u64..12).prop_map(|(signer, n)| Op::Resync { signer, n }),
            (wf, prop::bool::weighted(0.2), 0u8..2).prop_map(|(wf, stale, kind)| Op::Notify {
                wf,
                stale,
                kind
            }),
            (0u64..5, 0u8..3, 0u8..3, proptest::bool::weighted(0.2)).prop_map(
                |(number, hash, n_events, stale)| Op::Index {
                    number,
                    hash,
                    n_events,
                    stale
                }
            ),
            (0u64..5).prop_map(|keep| Op::Rollback { keep }),
            (0u8..8).prop_map(|which| Op::Read { which }),
        ]
    }

    const STATES: [TxState; 8] = [
        TxState::Preparing,
        TxState::Signing,
        TxState::Broadcasting,
        TxState::Confirming,
        TxState::Completed,
        TxState::Failed,
        TxState::DeadLetter,
        TxState::Cancelled,
    ];
    const TERMINAL: [TxState; 3] = [TxState::Failed, TxState::DeadLetter, TxState::Cancelled];

    fn fence(m: &DbModel, wf: i64, stale: bool) -> Fence {
        let (token, lease_id) = m
            .tables
            .workflows
            .get(&wf)
            .map_or((0, 0), |w| (w.fencing_token, w.lease_id));
        Fence {
            workflow_id: wf,
            token: if stale { token - 1 } else { token },
            node: "n".into(),
            lease_id,
        }
    }

    /// The workflow's live transaction for its current step, as the engine would find it
    /// (`tx_for_step`); an id that does not exist otherwise.
    fn live_tx(m: &DbModel, wf: i64) -> i64 {
        let step = m.tables.workflows.get(&wf).map_or(0, |w| w.current_step);
        m.tables
            .transactions
            .values()
            .find(|t| t.workflow_id == wf && t.step_index == step && t.is_live())
            .map_or(1_000, |t| t.id)
    }

    /// Workflow ids are dense from 1: pick an existing one (or 1 when there is none yet).
    fn pick(m: &DbModel, wf: i64) -> i64 {
        let n = m.tables.workflows.len() as i64;
        if n == 0 {
            1
        } else {
            wf % n + 1
        }
    }

    fn materialize(op: &Op, m: &DbModel) -> Option<DbRequest> {
        let op = match op.clone() {
            Op::Renew { wf, stale } => Op::Renew {
                wf: pick(m, wf),
                stale,
            },
            Op::Release { wf, stale } => Op::Release {
                wf: pick(m, wf),
                stale,
            },
            Op::Complete {
                wf,
                stale,
                delta,
                last,
            } => Op::Complete {
                wf: pick(m, wf),
                stale,
                delta,
                last,
            },
            Op::Retry { wf, stale, delay } => Op::Retry {
                wf: pick(m, wf),
                stale,
                delay,
            },
            Op::Fail { wf, stale, dl } => Op::Fail {
                wf: pick(m, wf),
                stale,
                dl,
            },
            Op::Requeue { wf } => Op::Requeue { wf: pick(m, wf) },
            Op::CreateTx {
                wf,
                stale,
                signer,
                chain_nonce,
            } => Op::CreateTx {
                wf: pick(m, wf),
                stale,
                signer,
                chain_nonce,
            },
            Op::Sign { wf, stale, hash } => Op::Sign {
                wf: pick(m, wf),
                stale,
                hash,
            },
            Op::SetState { wf, stale, state } => Op::SetState {
                wf: pick(m, wf),
                stale,
                state,
            },
            Op::Reassign {
                wf,
                stale,
                chain_nonce,
            } => Op::Reassign {
                wf: pick(m, wf),
                stale,
                chain_nonce,
            },
            Op::Abandon {
                wf,
                stale,
                state,
                release,
            } => Op::Abandon {
                wf: pick(m, wf),
                stale,
                state,
                release,
            },
            Op::Notify { wf, stale, kind } => Op::Notify {
                wf: pick(m, wf),
                stale,
                kind,
            },
            other => other,
        };
        let step = |wf: i64| m.tables.workflows.get(&wf).map_or(0, |w| w.current_step);
        Some(match op {
            Op::Advance(_) => return None,
            Op::Submit { key, hash } => DbRequest::Submit {
                new: new_wf(&format!("k{key}"), &format!("h{hash}")),
                window_ms: 100_000,
            },
            Op::Claim { node, limit } => DbRequest::Claim {
                node: format!("n{node}"),
                lease_ms: LEASE,
                limit,
                // A claim's identity differs from every other claim's, as the engine draws it.
                lease_id: 1_000
                    + m.tables
                        .workflows
                        .values()
                        .map(|w| w.fencing_token)
                        .sum::<i64>(),
                skip_locked: Vec::new(),
            },
            Op::Renew { wf, stale } => DbRequest::RenewLease {
                fence: fence(m, wf, stale),
                lease_ms: LEASE,
            },
            Op::Release { wf, stale } => DbRequest::Release {
                fence: fence(m, wf, stale),
            },
            Op::Complete {
                wf,
                stale,
                delta,
                last,
            } => DbRequest::CompleteStep {
                fence: fence(m, wf, stale),
                step: step(wf) + delta,
                name: format!("s{}", step(wf) + delta),
                output: json!(step(wf)),
                result: last.then(|| json!("done")),
            },
            Op::Retry { wf, stale, delay } => DbRequest::ScheduleRetry {
                fence: fence(m, wf, stale),
                step: step(wf),
                name: "s".into(),
                error: json!({"message": "transient"}),
                delay_ms: delay,
            },
            Op::Fail { wf, stale, dl } => DbRequest::Fail {
                fence: fence(m, wf, stale),
                step: step(wf),
                name: "s".into(),
                error: json!({"reason_code": "x", "message": "y"}),
                dead_letter: dl,
            },
            Op::Requeue { wf } => DbRequest::Requeue {
                id: wf,
                actor: "op".into(),
                reason: "r".into(),
            },
            Op::CreateTx {
                wf,
                stale,
                signer,
                chain_nonce,
            } => DbRequest::CreateTx {
                fence: fence(m, wf, stale),
                step: step(wf),
                intent: intent(signer, 1),
                fees: FEES,
                chain_nonce,
            },
            Op::Sign { wf, stale, hash } => {
                let tx_id = live_tx(m, wf);
                let nonce = m
                    .tables
                    .transactions
                    .get(&tx_id)
                    .map_or(0, |t| t.nonce as u64);
                DbRequest::RecordSigned {
                    fence: fence(m, wf, stale),
                    tx_id,
                    signed: broadcast(hash, nonce, u128::from(hash)),
                }
            }
            Op::SetState { wf, stale, state } => DbRequest::SetTxState {
                fence: fence(m, wf, stale),
                tx_id: live_tx(m, wf),
                state: STATES[state as usize],
                detail: Some("d".into()),
                receipt: (state == 4).then(|| json!({"status": 1})),
            },
            Op::Reassign {
                wf,
                stale,
                chain_nonce,
            } => DbRequest::ReassignNonce {
                fence: fence(m, wf, stale),
                tx_id: live_tx(m, wf),
                chain_nonce,
            },
            Op::Abandon {
                wf,
                stale,
                state,
                release,
            } => DbRequest::AbandonTx {
                fence: fence(m, wf, stale),
                tx_id: live_tx(m, wf),
                state: TERMINAL[state as usize],
                release,
            },
            Op::Resync { signer: s, n } => DbRequest::ResyncNonce {
                signer: signer(s),
                chain_id: 1,
                chain_nonce: n,
            },
            Op::Notify { wf, stale, kind } => DbRequest::Notify {
                fence: fence(m, wf, stale),
                kind: format!("kind{kind}"),
                payload: json!(kind),
            },
            Op::Index {
                number,
                hash,
                n_events,
                stale,
            } => {
                let h = 16 * number as u8 + hash;
                let current = m
                    .tables
                    .indexer_checkpoint
                    .get(&1)
                    .map(|cp| (cp.last_block as u64, cp.last_hash));
                DbRequest::IndexBlock {
                    chain_id: 1,
                    extends: if stale {
                        Some((number.saturating_sub(1), B256::repeat_byte(0xee)))
                    } else {
                        current
                    },
                    number,
                    hash: B256::repeat_byte(h),
                    events: (0..n_events)
                        .map(|i| ev(number, h, u64::from(i), Address::ZERO, signer(i + 1), 10))
                        .collect(),
                    finalized: number.saturating_sub(2),
                }
            }
            Op::Rollback { keep } => DbRequest::RollbackIndex { chain_id: 1, keep },
            Op::Read { which } => match which {
                0 => DbRequest::Workflow { id: 1 },
                1 => DbRequest::Journal { id: 2 },
                2 => DbRequest::DeadLetters { limit: 3 },
                3 => DbRequest::AuditLog { limit: 3 },
                4 => DbRequest::TxsForWorkflow { workflow: 1 },
                5 => DbRequest::IndexedBalances {
                    chain_id: 1,
                    contract: Address::repeat_byte(0xcc),
                },
                6 => DbRequest::Stats {
                    stalled_after_ms: 1_000,
                },
                _ => DbRequest::IndexerCheckpoint { chain_id: 1 },
            },
        })
    }

    /// Live transactions' nonces are unique per (signer, chain), and each step has at most one.
    fn check_live_txs(m: &DbModel) -> std::result::Result<(), String> {
        let mut nonces: BTreeMap<(Address, i64, i64), i64> = BTreeMap::new();
        let mut steps = BTreeSet::new();
        for t in m.tables.transactions.values().filter(|t| t.is_live()) {
            if let Some(other) = nonces.insert((t.signer, t.chain_id, t.nonce), t.id) {
                return Err(format!("txs {other} and {} share nonce {}", t.id, t.nonce));
            }
            if !steps.insert((t.workflow_id, t.step_index)) {
                return Err(format!(
                    "two live txs for step {:?}",
                    (t.workflow_id, t.step_index)
                ));
            }
        }
        Ok(())
    }

    /// The final state, the requests with their times, the replies' debug dumps, and whether
    /// each request is shipped to replicas ([`DbModel::committed`]).
    type Run = (DbModel, Vec<(DbRequest, u64)>, Vec<String>, Vec<bool>);

    /// Run the ops; returns the requests with their times and the replies' debug dumps.
    fn run(ops: &[Op]) -> std::result::Result<Run, TestCaseError> {
        let mut m = DbModel::new();
        let mut now = 0u64;
        let mut log = Vec::new();
        let mut replies = Vec::new();
        let mut shipped = Vec::new();
        for op in ops {
            if let Op::Advance(ms) = op {
                now += ms;
                continue;
            }
            let req = materialize(op, &m).expect("not an advance");
            let before = m.clone();
            let r = m.apply(&req, now);
            replies.push(format!("{r:?}"));
            shipped.push(DbModel::committed(&req, &r));
            // Reads change nothing at all.
            if !req.is_write() {
                prop_assert_eq!(&m, &before);
            }
            // Atomicity: an error leaves the data as it was, except requeue's audited refusal.
            if let Err(e) = &r {
                match (&req, e) {
                    (
                        DbRequest::Requeue { .. },
                        EngineError::Invalid(_) | EngineError::NotFound(_),
                    ) => {
                        let mut t = m.tables.clone();
                        let last = *t.audit_log.keys().last().expect("audited");
                        prop_assert!(t.audit_log[&last].outcome.starts_with("rejected: "));
                        t.audit_log.remove(&last);
                        prop_assert_eq!(&t, &before.tables);
                    }
                    _ => prop_assert!(m.same_data(&before), "{} {:?}", req.name(), e),
                }
            }
            if let (
                Some(f),
                Err(EngineError::Fenced {
                    ours,
                    current,
                    workflow_id,
                }),
            ) = (req.fence(), &r)
            {
                prop_assert_eq!(*ours, f.token);
                prop_assert_eq!(*workflow_id, f.workflow_id);
                prop_assert_ne!(*current, f.token);
            }
            // Fencing tokens never decrease; a successful fenced write held the current token.
            for (id, w) in &before.tables.workflows {
                prop_assert!(m.tables.workflows[id].fencing_token >= w.fencing_token);
            }
            if let (Some(f), Ok(_)) = (req.fence(), &r) {
                if !matches!(req, DbRequest::Release { .. }) {
                    prop_assert_eq!(
                        before.tables.workflows[&f.workflow_id].fencing_token,
                        f.token
                    );
                }
            }
            check_live_txs(&m).map_err(TestCaseError::fail)?;
            // Journal sequence numbers are global and increasing.
            prop_assert!(m.sequences.journal >= before.sequences.journal);
            log.push((req, now));
        }
        Ok((m, log, replies, shipped))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold_over_random_operations(ops in prop::collection::vec(op(), 1..120)) {
            let (m, log, replies, shipped) = run(&ops)?;
            // Determinism: replaying the same requests at the same times on a fresh model gives
            // the same replies and the same state.
            let mut twin = DbModel::new();
            let replayed: Vec<String> = log
                .iter()
                .map(|(req, now)| format!("{:?}", twin.apply(req, *now)))
                .collect();
            prop_assert_eq!(&replayed, &replies);
            prop_assert_eq!(&twin, &m);
            // A replica that applies only the committed requests (the replication rule) has the
            // primary's data, and each replayed request returns what it returned on the primary.
            let mut replica = DbModel::new();
            let mut n = 0;
            for (i, (req, now)) in log.iter().enumerate() {
                if shipped[i] {
                    n += 1;
                    let r = replica.apply(req, *now);
                    prop_assert_eq!(format!("{r:?}"), replies[i].clone());
                }
            }
            prop_assert!(replica.same_data(&m), "replica diverged after {} requests", n);
        }
    }
}

#[test]
fn orphans_are_recorded_once_found_by_tag_and_adopted_under_the_fence() {
    use dalp_engine::store::{NonceView, Orphan};
    let mut db = Db::default();
    let view = |db: &mut Db, tag: u8| match db.ok(DbRequest::NonceView {
        signer: signer(1),
        chain_id: 1,
        tag: B256::repeat_byte(tag),
    }) {
        DbReply::NonceView(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(view(&mut db, 0xa1), NonceView::default());
    let orphan = |tag: u8, b: u8, nonce: u64| Orphan {
        tag: B256::repeat_byte(tag),
        signed: broadcast(b, nonce, 5),
    };
    let w = db.submit("k");
    let fence = db.claim1("n1");
    db.create_tx(&fence, 0, 1, 3); // counter: 4
    db.ok(DbRequest::RecordOrphans {
        signer: signer(1),
        chain_id: 1,
        orphans: vec![orphan(0xa1, 0x31, 6), orphan(0xa2, 0x32, 5)],
    });
    // Idempotent by hash.
    let before = db.m.clone();
    db.ok(DbRequest::RecordOrphans {
        signer: signer(1),
        chain_id: 1,
        orphans: vec![orphan(0xa1, 0x31, 6)],
    });
    assert!(db.m.same_data(&before));
    let v = view(&mut db, 0xa1);
    assert_eq!(v.next_nonce, Some(4));
    assert_eq!(
        v.orphan.as_ref().map(|b| b.hash),
        Some(B256::repeat_byte(0x31))
    );
    // A stale fence adopts nothing.
    let adopt = |db: &mut Db, fence: &Fence, step: i32| {
        db.ap(DbRequest::AdoptOrphan {
            fence: fence.clone(),
            step,
            intent: intent(1, 1),
            signed: broadcast(0x31, 6, 5),
        })
    };
    let stale = Fence {
        token: fence.token - 1,
        ..fence.clone()
    };
    let before = db.m.clone();
    assert!(is_fenced(
        &adopt(&mut db, &stale, 1),
        stale.token,
        fence.token
    ));
    assert!(db.m.same_data(&before));
    // Step 0 already has a live transaction: the unique index refuses a second.
    assert!(matches!(
        adopt(&mut db, &fence, 0),
        Err(EngineError::Db { ref sqlstate, .. }) if sqlstate == "23505"
    ));
    let rec = match adopt(&mut db, &fence, 1).unwrap() {
        DbReply::Tx(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!((rec.workflow_id, rec.step_index, rec.nonce), (w.id, 1, 6));
    assert_eq!(rec.state, TxState::Confirming);
    assert_eq!(rec.hash, Some(B256::repeat_byte(0x31)));
    assert_eq!(rec.broadcasts, vec![broadcast(0x31, 6, 5)]);
    // Adopted: no longer offered; the counter is past its nonce; the healer finds it by nonce.
    let v = view(&mut db, 0xa1);
    assert_eq!((v.next_nonce, v.orphan), (Some(7), None));
    assert!(matches!(
        db.ok(DbRequest::TxByNonce { signer: signer(1), chain_id: 1, nonce: 6 }),
        DbReply::OptTx(Some(ref t)) if t.id == rec.id
    ));
    assert_eq!(
        view(&mut db, 0xa2).orphan.map(|b| b.nonce),
        Some(5),
        "other tags stay"
    );
    assert!(!DbRequest::NonceView {
        signer: signer(1),
        chain_id: 1,
        tag: B256::ZERO
    }
    .is_write());
}

#[test]
fn a_claim_skips_rows_another_session_holds_and_replays_the_same_choice() {
    let mut db = Db::default();
    db.submit("a");
    db.submit("b");
    let claim = DbRequest::Claim {
        node: "n".into(),
        lease_ms: LEASE,
        limit: 2,
        lease_id: 7,
        skip_locked: vec![1],
    };
    let replica_before = db.m.clone();
    let r = db.ap(claim.clone());
    let Ok(DbReply::Claims(c)) = &r else {
        panic!("claim: {r:?}")
    };
    assert_eq!(
        c.iter().map(|c| c.fence.workflow_id).collect::<Vec<_>>(),
        vec![2],
        "the locked row is skipped"
    );
    // A replica replaying the logged request makes the same choice.
    let mut replica = replica_before;
    let now = db.now;
    let again = replica.apply(&claim, now);
    assert_eq!(format!("{again:?}"), format!("{r:?}"));
}
