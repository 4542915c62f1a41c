//! Differential (conformance) tests: the simulation's database model
//! (`dalp_sim::db::DbModel`, `sim/src/db/model.rs`) against the real `PgStore`
//! (`engine/src/store/pg.rs`) on a real PostgreSQL.
//!
//! # What is compared
//!
//! proptest generates sequences of `Store` operations ([`DbRequest`]s) over a deliberately small
//! universe (3 idempotency keys × 2 request hashes, 2 nodes, 2 signers on one chain, nonces 0..4,
//! steps around each workflow's current step, 4 transaction hashes, 4 indexed blocks with forks)
//! so that keys collide, fences go stale, transactions clash on their step, nonce holes are
//! reused and blocks are re-indexed. Each request is concretised from the *model's* replies so
//! far (fences from its claims, transaction ids from its `create_tx`), applied to the model
//! ([`DbModel::apply`]) and replayed against a fresh PostgreSQL database through
//! [`call_store`]; the two replies must be equal, reply by reply: the same `Ok` value (every
//! field, including ids, fencing tokens and journal sequence numbers, which the model draws from
//! sequences like PostgreSQL's), or the same [`EngineError`] (variant and every field: SQLSTATE
//! and message, fencing tokens, messages of `Internal`/`Invalid`). At the end of a case the whole
//! state is compared through `Store` reads (every workflow, journal, transaction with its signed
//! versions, dead letters, audit log, stats, nonce fillers, `tx_by_nonce`, `nonce_holds`,
//! the indexer) and, for what no `Store` read exposes, through SQL against the model's tables
//! (idempotency keys, nonce counters and holes, notifications, `tx_events`,
//! `transactions.failure`).
//!
//! # Time
//!
//! The model's clock is logical (`now_ms`); PostgreSQL uses `now()`. Lease expiry, retry delays,
//! idempotency windows and the stalled count all compare a stored instant with a later `now()`.
//! This file maps time *exactly* instead of hoping for timing: every duration the generator uses
//! is either **0** (already past at the next operation: PostgreSQL's `now()` strictly increases
//! from one transaction to the next, and the model's clock advances 1 ms per operation) or **one
//! hour** (never reached within a case, which lasts well under a second of real time and 30 ms of
//! model time). Every comparison then has the same outcome on both sides, and ties never happen
//! (orderings by `next_attempt_at`, `failed_at`, `created_at` agree). Expiry *during* a lease is
//! covered by [`lease_expiry_and_renewal_in_real_time`], which sleeps for real with a short lease
//! and advances the model's clock by the time slept.
//!
//! # Deliberate differences (see `CONFORMANCE.md`)
//!
//! * PostgreSQL burns a `transactions.id` when `create_tx` fails on the `transactions_live_step`
//!   unique index (23505); the model does not (see `model.rs`, *Atomic*). The harness counts the
//!   burnt ids and checks that every later PostgreSQL id is exactly the model's id plus that count,
//!   then maps ids between the two sides.
//! * Serial execution: the model has no concurrency; [`concurrent_claims_never_share_a_workflow`]
//!   checks that two sessions racing against PostgreSQL (claims, the same step completed or its
//!   transaction created twice, one idempotency key submitted twice) keep the invariants the
//!   model's serial execution gives for free.
//!
//! The `contract_*` tests assert the documented `Store` contract where pg.rs (and the model, which
//! mirrors it) once broke it: found by this test, fixed in both (see CONFORMANCE.md).
//!
//! Run: `cargo test -p dalp-integration --test store_conformance` (`PROPTEST_CASES=n` for more or
//! fewer random cases, default 128; `CONFORMANCE_SHRINK_ITERS` bounds shrinking).

use alloy_primitives::{Address, Bytes, B256, U256};
use dalp_engine::error::EngineError;
use dalp_engine::store::pg::PgStore;
use dalp_engine::store::{
    AuditEntry, Broadcast, Fees, Fence, NewWorkflow, Orphan, Store, Submitted, TokenEvent,
    TxIntent, TxState, WorkflowStatus,
};
use dalp_integration::Postgres;
use dalp_sim::db::{call_store, DbModel, DbReply, DbRequest};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use sqlx::Row;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HOUR_MS: u64 = 3_600_000;
const CHAIN: u64 = 1;
const TIMEOUT: Duration = Duration::from_secs(20);
/// Ids no case reaches (a case has at most 30 operations).
const MISSING_ID: i64 = 1_000;
/// The lease id every claim of these tests presents (the engine draws one at random per claim).
const LEASE_ID: i64 = 7;

// ---------------------------------------------------------------------------------------------
// The real database: one server per test, a migrated template, a fresh database per case
// ---------------------------------------------------------------------------------------------

struct Server {
    pg: Postgres,
    admin: sqlx::PgPool,
    next: AtomicU32,
}

impl Server {
    /// Start PostgreSQL (failing, never skipping, when it is missing) and migrate a template.
    async fn start() -> Server {
        let pg = Postgres::start()
            .await
            .unwrap_or_else(|e| panic!("start PostgreSQL: {e}"));
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&pg.url())
            .await
            .expect("connect to postgres");
        sqlx::query("CREATE DATABASE conformance_template")
            .execute(&admin)
            .await
            .expect("create template");
        let tmpl = PgStore::connect(&db_url(&pg, "conformance_template"), 1, TIMEOUT)
            .await
            .expect("migrate the template");
        tmpl.pool().close().await;
        Server {
            pg,
            admin,
            next: AtomicU32::new(0),
        }
    }

    /// A fresh, migrated database (a copy of the template) and a `PgStore` on it.
    async fn fresh(&self, max_connections: u32) -> (PgStore, String) {
        let name = format!("case_{}", self.next.fetch_add(1, Ordering::SeqCst));
        sqlx::query(&format!(
            "CREATE DATABASE {name} TEMPLATE conformance_template"
        ))
        .execute(&self.admin)
        .await
        .expect("create case database");
        // Runs the migrator: a no-op on the template's copy, but it checks the checksums.
        let store = PgStore::connect(&db_url(&self.pg, &name), max_connections, TIMEOUT)
            .await
            .expect("connect to case database");
        (store, name)
    }

    async fn drop_db(&self, store: PgStore, name: &str) {
        store.pool().close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&self.admin)
            .await
            .expect("drop case database");
    }
}

fn db_url(pg: &Postgres, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}", pg.port)
}

// ---------------------------------------------------------------------------------------------
// The universe
// ---------------------------------------------------------------------------------------------

const NODES: [&str; 2] = ["n0", "n1"];
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

fn signer(i: u8) -> Address {
    Address::repeat_byte(0x11 * (i % 2 + 1))
}
fn contract() -> Address {
    Address::repeat_byte(0xcc)
}
fn holder(i: u8) -> Address {
    match i % 3 {
        0 => Address::ZERO,
        1 => Address::repeat_byte(0xa1),
        _ => Address::repeat_byte(0xb2),
    }
}
fn block_hash(number: u64, fork: bool) -> B256 {
    B256::repeat_byte((number as u8) * 2 + u8::from(fork) + 0x40)
}

fn orphan_tag(t: u8) -> B256 {
    B256::repeat_byte(0x90 + t)
}

fn new_workflow(key: u8, hash: u8, nul: bool) -> NewWorkflow {
    NewWorkflow {
        kind: if nul { "trans\0fer" } else { "transfer" }.into(),
        scope: "0xsigner/1/transfer".into(),
        idempotency_key: format!("k{key}"),
        request_hash: format!("h{hash}"),
        input: json!({ "key": key, "hash": hash }),
    }
}

fn intent(s: u8) -> TxIntent {
    TxIntent {
        signer: signer(s),
        chain_id: CHAIN,
        to: if s == 0 {
            Some(Address::repeat_byte(0xee))
        } else {
            None
        },
        input: Bytes::from(vec![0xde, 0xad, s]),
        value: U256::from(7u64 + u64::from(s)),
        gas_limit: 100_000,
    }
}

const FEES: Fees = Fees {
    max_fee_per_gas: 2_000_000_000,
    max_priority_fee_per_gas: 1_000_000_000,
};

fn broadcast(hash: u8, nonce: u64) -> Broadcast {
    Broadcast {
        hash: B256::repeat_byte(hash + 1),
        nonce,
        raw: Bytes::from(vec![hash; 3]),
        max_fee_per_gas: 3_000_000_000 + u128::from(hash),
        max_priority_fee_per_gas: 1_000_000_000,
    }
}

// ---------------------------------------------------------------------------------------------
// Abstract operations (resolved against the model's state when they run)
// ---------------------------------------------------------------------------------------------

/// Which fence a fenced write presents.
#[derive(Clone, Copy, Debug)]
enum FenceRef {
    /// The n-th most recent fence any claim returned (older ones are stale).
    Seen(usize),
    /// A made-up fence: workflow `1 + wf` (maybe missing), any token.
    Forged { wf: u8, token: i64, node: u8 },
}

/// A step relative to the workflow's current one.
#[derive(Clone, Copy, Debug)]
enum StepRef {
    Current,
    Prev,
    Next,
}

/// Which transaction: one the model created (by index), or a missing id.
#[derive(Clone, Copy, Debug)]
enum TxRef {
    /// The n-th most recent transaction any `create_tx` returned (often another workflow's).
    Known(usize),
    /// The n-th most recent transaction of the request's own workflow (the fence's), else as
    /// `Known`: without it most transaction requests stop at the owner check, and the paths
    /// behind it (abandon and release, reassign, state changes) are rarely compared.
    Owned(usize),
    Missing,
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        key: u8,
        hash: u8,
        long_window: bool,
        nul: bool,
    },
    Claim {
        node: u8,
        limit: usize,
        long_lease: bool,
    },
    Renew {
        fence: FenceRef,
        long_lease: bool,
    },
    Release {
        fence: FenceRef,
    },
    Complete {
        fence: FenceRef,
        step: StepRef,
        finish: u8,
        nul: bool,
    },
    Retry {
        fence: FenceRef,
        step: StepRef,
        long_delay: bool,
        null_error: bool,
    },
    Fail {
        fence: FenceRef,
        step: StepRef,
        dead_letter: bool,
        nul: bool,
    },
    /// Requeue a dead-lettered workflow if there is one (`dead`), else workflow `1 + wf`.
    Requeue {
        wf: u8,
        dead: bool,
        nul: bool,
    },
    CreateTx {
        fence: FenceRef,
        step: StepRef,
        signer: u8,
        chain_nonce: u64,
    },
    RecordSigned {
        fence: FenceRef,
        tx: TxRef,
        hash: u8,
        nonce: u64,
    },
    SetTxState {
        fence: FenceRef,
        tx: TxRef,
        state: u8,
        detail: u8,
        receipt: u8,
    },
    Reassign {
        fence: FenceRef,
        tx: TxRef,
        chain_nonce: u64,
    },
    Abandon {
        fence: FenceRef,
        tx: TxRef,
        state: u8,
        release: bool,
    },
    Resync {
        signer: u8,
        chain_nonce: u64,
    },
    RecordFiller {
        signer: u8,
        hash: u8,
        nonce: u64,
    },
    RecordForeign {
        signer: u8,
        hash: u8,
        nonce: u64,
    },
    Notify {
        fence: FenceRef,
        kind: u8,
        nul: bool,
    },
    /// Orphans `(hash, nonce, tag)` found on chain for a signer.
    RecordOrphans {
        signer: u8,
        orphans: Vec<(u8, u64, u8)>,
    },
    AdoptOrphan {
        fence: FenceRef,
        step: StepRef,
        signer: u8,
        hash: u8,
        nonce: u64,
    },
    NonceView(u8, u8),
    IndexBlock {
        number: u64,
        fork: bool,
        events: Vec<(u8, u8, u8)>,
        finalized: u64,
        /// The checkpoint it extends: 0 the current one (as the indexer reads it), 1 none,
        /// 2 or 3 block `number - 1` on the main chain or the fork (current or not).
        extends: u8,
    },
    Rollback {
        keep: u64,
    },
    Audit {
        nul: bool,
    },
    Workflow(u8),
    Journal(u8),
    Txs(u8),
    TxForStep(u8, StepRef),
    TxByNonce(u8, u64),
    /// `tx_by_nonce` at the signer and nonce of a known transaction.
    TxByNonceOf(TxRef),
    /// `nonce_holds` of a signer over `[from, from + len)`.
    Holds(u8, u64, u64),
    Fillers(u8, u64),
    /// `named_nonces` of a signer over `[from, from + len)`.
    Named(u8, u64, u64),
    Checkpoint,
    BlockHash(u64),
    Balances,
    Stats(bool),
    DeadLetters(i64),
    AuditLog(i64),
}

fn fence_ref() -> impl Strategy<Value = FenceRef> {
    prop_oneof![
        6 => (0usize..4).prop_map(FenceRef::Seen),
        1 => (0u8..4, 0i64..4, 0u8..2).prop_map(|(wf, token, node)| FenceRef::Forged { wf, token, node }),
    ]
}

fn step_ref() -> impl Strategy<Value = StepRef> {
    prop_oneof![
        5 => Just(StepRef::Current),
        1 => Just(StepRef::Prev),
        1 => Just(StepRef::Next),
    ]
}

fn tx_ref() -> impl Strategy<Value = TxRef> {
    prop_oneof![
        8 => (0usize..4).prop_map(TxRef::Known),
        6 => (0usize..2).prop_map(TxRef::Owned),
        1 => Just(TxRef::Missing),
    ]
}

/// A chain nonce below `n`, rarely `u64::MAX` (bound `as i64`: -1 in PostgreSQL).
fn chain_nonce(n: u64) -> impl Strategy<Value = u64> {
    prop_oneof![30 => 0..n, 1 => Just(u64::MAX)]
}

/// Rarely true: a NUL character in a text or JSONB parameter.
fn nul() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.05)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..3, 0u8..2, prop::bool::weighted(0.8), nul())
            .prop_map(|(key, hash, long_window, nul)| Op::Submit { key, hash, long_window, nul }),
        6 => (0u8..2, prop_oneof![1 => Just(0usize), 6 => 1usize..4], prop::bool::weighted(0.7))
            .prop_map(|(node, limit, long_lease)| Op::Claim { node, limit, long_lease }),
        1 => (fence_ref(), any::<bool>()).prop_map(|(fence, long_lease)| Op::Renew { fence, long_lease }),
        1 => fence_ref().prop_map(|fence| Op::Release { fence }),
        6 => (fence_ref(), step_ref(), 0u8..6, nul())
            .prop_map(|(fence, step, finish, nul)| Op::Complete { fence, step, finish, nul }),
        2 => (fence_ref(), step_ref(), any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(fence, step, long_delay, null_error)| Op::Retry { fence, step, long_delay, null_error }),
        2 => (fence_ref(), step_ref(), any::<bool>(), nul())
            .prop_map(|(fence, step, dead_letter, nul)| Op::Fail { fence, step, dead_letter, nul }),
        2 => (0u8..4, prop::bool::weighted(0.7), nul()).prop_map(|(wf, dead, nul)| Op::Requeue { wf, dead, nul }),
        5 => (fence_ref(), step_ref(), 0u8..2, chain_nonce(4))
            .prop_map(|(fence, step, signer, chain_nonce)| Op::CreateTx { fence, step, signer, chain_nonce }),
        3 => (fence_ref(), tx_ref(), 0u8..4, 0u64..4)
            .prop_map(|(fence, tx, hash, nonce)| Op::RecordSigned { fence, tx, hash, nonce }),
        3 => (fence_ref(), tx_ref(), 0u8..8, 0u8..3, 0u8..3)
            .prop_map(|(fence, tx, state, detail, receipt)| Op::SetTxState { fence, tx, state, detail, receipt }),
        1 => (fence_ref(), tx_ref(), chain_nonce(6))
            .prop_map(|(fence, tx, chain_nonce)| Op::Reassign { fence, tx, chain_nonce }),
        3 => (fence_ref(), tx_ref(), 0u8..8, any::<bool>())
            .prop_map(|(fence, tx, state, release)| Op::Abandon { fence, tx, state, release }),
        1 => (0u8..2, chain_nonce(6)).prop_map(|(signer, chain_nonce)| Op::Resync { signer, chain_nonce }),
        2 => (0u8..2, 0u8..4, 0u64..4).prop_map(|(signer, hash, nonce)| Op::RecordFiller { signer, hash, nonce }),
        1 => (0u8..2, 0u8..4, 0u64..6).prop_map(|(signer, hash, nonce)| Op::RecordForeign { signer, hash, nonce }),
        2 => (fence_ref(), 0u8..2, nul()).prop_map(|(fence, kind, nul)| Op::Notify { fence, kind, nul }),
        2 => (0u8..2, prop::collection::vec((0u8..4, 0u64..4, 0u8..2), 0..3))
            .prop_map(|(signer, orphans)| Op::RecordOrphans { signer, orphans }),
        2 => (fence_ref(), step_ref(), 0u8..2, 0u8..4, 0u64..4)
            .prop_map(|(fence, step, signer, hash, nonce)| Op::AdoptOrphan { fence, step, signer, hash, nonce }),
        2 => (0u8..2, 0u8..2).prop_map(|(s, t)| Op::NonceView(s, t)),
        3 => (1u64..5, prop::bool::weighted(0.3), prop::collection::vec((0u8..3, 0u8..3, 1u8..6), 0..3), 0u64..5,
              prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)])
            .prop_map(|(number, fork, events, finalized, extends)| Op::IndexBlock { number, fork, events, finalized, extends }),
        1 => (0u64..5).prop_map(|keep| Op::Rollback { keep }),
        1 => nul().prop_map(|nul| Op::Audit { nul }),
        1 => (0u8..4).prop_map(Op::Workflow),
        1 => (0u8..4).prop_map(Op::Journal),
        1 => (0u8..4).prop_map(Op::Txs),
        1 => (0u8..4, step_ref()).prop_map(|(w, s)| Op::TxForStep(w, s)),
        1 => (0u8..2, 0u64..5).prop_map(|(s, n)| Op::TxByNonce(s, n)),
        2 => tx_ref().prop_map(Op::TxByNonceOf),
        1 => (0u8..2, 0u64..4, 0u64..5).prop_map(|(s, from, len)| Op::Holds(s, from, len)),
        1 => (0u8..2, 0u64..4).prop_map(|(s, n)| Op::Fillers(s, n)),
        1 => (0u8..2, 0u64..4, 0u64..6).prop_map(|(s, from, len)| Op::Named(s, from, len)),
        1 => Just(Op::Checkpoint),
        1 => (0u64..5).prop_map(Op::BlockHash),
        2 => Just(Op::Balances),
        1 => any::<bool>().prop_map(Op::Stats),
        1 => prop_oneof![9 => Just(100i64), 1 => Just(1i64), 1 => Just(-1i64)].prop_map(Op::DeadLetters),
        1 => prop_oneof![9 => Just(100i64), 1 => Just(1i64), 1 => Just(-1i64)].prop_map(Op::AuditLog),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running one sequence on both sides
// ---------------------------------------------------------------------------------------------

/// The model and a real `PgStore`, fed the same requests.
struct Pair {
    model: DbModel,
    /// The model's clock: advanced 1 ms before every request.
    now: u64,
    pg: PgStore,
    /// Fences the model's claims returned, oldest first.
    fences: Vec<Fence>,
    /// Transaction ids the model's `create_tx` returned, oldest first.
    txs: Vec<i64>,
    /// Model transaction id → PostgreSQL transaction id.
    tx_map: BTreeMap<i64, i64>,
    /// `transactions.id` values PostgreSQL burnt on a failed `create_tx` (a deliberate
    /// difference).
    burnt: i64,
    transcript: String,
    /// Each request's outcome class, in order (what a fixed sequence asserts).
    outcomes: Vec<String>,
    /// Outcomes per operation (coverage: how often each error path was compared).
    coverage: Coverage,
}

/// operation → outcome ("ok", "ok empty", "Fenced", "Db 23505", …) → count.
type Coverage = BTreeMap<&'static str, BTreeMap<String, u32>>;

fn outcome_class(r: &dalp_engine::error::Result<DbReply>) -> String {
    match r {
        Ok(DbReply::Claims(c)) if c.is_empty() => "ok empty".into(),
        Ok(DbReply::OptTx(None)) | Ok(DbReply::Workflow(None)) => "ok none".into(),
        Ok(DbReply::Submitted(Submitted::Existing(_))) => "ok existing".into(),
        Ok(DbReply::Bool(false)) => "ok false".into(),
        Ok(_) => "ok".into(),
        Err(EngineError::Db { sqlstate, .. }) => format!("Db {sqlstate}"),
        Err(e) => format!("{e:?}")
            .split([' ', '('])
            .next()
            .unwrap_or("?")
            .to_string(),
    }
}

type Outcome = Result<(), String>;

impl Pair {
    fn new(pg: PgStore) -> Pair {
        Pair {
            model: DbModel::new(),
            now: 1_000_000,
            pg,
            fences: Vec::new(),
            txs: Vec::new(),
            tx_map: BTreeMap::new(),
            burnt: 0,
            transcript: String::new(),
            outcomes: Vec::new(),
            coverage: Coverage::new(),
        }
    }

    fn current_step(&self, wf: i64) -> i32 {
        self.model
            .tables
            .workflows
            .get(&wf)
            .map_or(0, |w| w.current_step)
    }

    fn fence(&self, f: FenceRef) -> Fence {
        match f {
            FenceRef::Seen(n) if !self.fences.is_empty() => {
                let i = self.fences.len() - 1 - n % self.fences.len();
                self.fences[i].clone()
            }
            FenceRef::Seen(_) => Fence {
                workflow_id: 1,
                token: 0,
                node: "n0".into(),
                lease_id: LEASE_ID,
            },
            FenceRef::Forged { wf, token, node } => Fence {
                workflow_id: 1 + i64::from(wf),
                token,
                node: NODES[usize::from(node)].into(),
                lease_id: LEASE_ID,
            },
        }
    }

    fn step(&self, wf: i64, s: StepRef) -> i32 {
        let c = self.current_step(wf);
        match s {
            StepRef::Current => c,
            StepRef::Prev => c - 1,
            StepRef::Next => c + 1,
        }
    }

    fn tx(&self, t: TxRef) -> i64 {
        match t {
            TxRef::Known(n) | TxRef::Owned(n) if !self.txs.is_empty() => {
                self.txs[n % self.txs.len()]
            }
            _ => MISSING_ID,
        }
    }

    /// [`Pair::tx`] for a request made under `fence`.
    fn tx_for(&self, fence: &Fence, t: TxRef) -> i64 {
        let TxRef::Owned(n) = t else {
            return self.tx(t);
        };
        let owned: Vec<i64> = self
            .txs
            .iter()
            .rev()
            .copied()
            .filter(|id| {
                self.model
                    .tables
                    .transactions
                    .get(id)
                    .is_some_and(|r| r.workflow_id == fence.workflow_id)
            })
            .collect();
        match owned.len() {
            0 => self.tx(t),
            len => owned[n % len],
        }
    }

    /// The concrete request for an abstract operation, in the model's ids.
    fn request(&self, op: &Op) -> DbRequest {
        let step_name = |step: i32, nul: bool| {
            if nul {
                format!("s{step}\0")
            } else {
                format!("s{step}")
            }
        };
        match op.clone() {
            Op::Submit {
                key,
                hash,
                long_window,
                nul,
            } => DbRequest::Submit {
                new: new_workflow(key, hash, nul),
                window_ms: if long_window { HOUR_MS } else { 0 },
            },
            Op::Claim {
                node,
                limit,
                long_lease,
            } => DbRequest::Claim {
                node: NODES[usize::from(node)].into(),
                lease_ms: if long_lease { HOUR_MS } else { 0 },
                limit,
                lease_id: LEASE_ID,
                skip_locked: Vec::new(),
            },
            Op::Renew { fence, long_lease } => DbRequest::RenewLease {
                fence: self.fence(fence),
                lease_ms: if long_lease { HOUR_MS } else { 0 },
            },
            Op::Release { fence } => DbRequest::Release {
                fence: self.fence(fence),
            },
            Op::Complete {
                fence,
                step,
                finish,
                nul,
            } => {
                let fence = self.fence(fence);
                let step = self.step(fence.workflow_id, step);
                DbRequest::CompleteStep {
                    name: step_name(step, false),
                    output: if nul {
                        json!({ "out": "a\0b" })
                    } else {
                        json!({ "out": step, "by": fence.node })
                    },
                    result: match finish {
                        0 => Some(json!({ "done": step })),
                        1 => Some(Value::Null),
                        _ => None,
                    },
                    fence,
                    step,
                }
            }
            Op::Retry {
                fence,
                step,
                long_delay,
                null_error,
            } => {
                let fence = self.fence(fence);
                let step = self.step(fence.workflow_id, step);
                DbRequest::ScheduleRetry {
                    name: step_name(step, false),
                    error: if null_error {
                        Value::Null
                    } else {
                        json!({ "reason_code": "rpc_timeout", "message": "slow" })
                    },
                    delay_ms: if long_delay { HOUR_MS } else { 0 },
                    fence,
                    step,
                }
            }
            Op::Fail {
                fence,
                step,
                dead_letter,
                nul,
            } => {
                let fence = self.fence(fence);
                let step = self.step(fence.workflow_id, step);
                DbRequest::Fail {
                    name: step_name(step, nul),
                    error: json!({ "reason_code": "reverted", "message": format!("boom at {step}") }),
                    dead_letter,
                    fence,
                    step,
                }
            }
            Op::Requeue { wf, dead, nul } => DbRequest::Requeue {
                id: match self.model.tables.dead_letters.keys().next() {
                    Some(id) if dead => *id,
                    _ => 1 + i64::from(wf),
                },
                actor: if nul { "ops\0" } else { "ops" }.into(),
                reason: "fixed".into(),
            },
            Op::CreateTx {
                fence,
                step,
                signer,
                chain_nonce,
            } => {
                let fence = self.fence(fence);
                let step = self.step(fence.workflow_id, step);
                DbRequest::CreateTx {
                    fence,
                    step,
                    intent: intent(signer),
                    fees: FEES,
                    chain_nonce,
                }
            }
            Op::RecordSigned {
                fence,
                tx,
                hash,
                nonce,
            } => {
                let fence = self.fence(fence);
                DbRequest::RecordSigned {
                    tx_id: self.tx_for(&fence, tx),
                    fence,
                    signed: broadcast(hash, nonce),
                }
            }
            Op::SetTxState {
                fence,
                tx,
                state,
                detail,
                receipt,
            } => {
                let fence = self.fence(fence);
                DbRequest::SetTxState {
                    tx_id: self.tx_for(&fence, tx),
                    fence,
                    state: STATES[usize::from(state) % STATES.len()],
                    detail: match detail {
                        0 => None,
                        1 => Some("reverted on chain".into()),
                        _ => Some("mined".into()),
                    },
                    receipt: match receipt {
                        0 => None,
                        1 => Some(json!({ "status": "0x1", "blockNumber": "0x2" })),
                        _ => Some(Value::Null),
                    },
                }
            }
            Op::Reassign {
                fence,
                tx,
                chain_nonce,
            } => {
                let fence = self.fence(fence);
                DbRequest::ReassignNonce {
                    tx_id: self.tx_for(&fence, tx),
                    fence,
                    chain_nonce,
                }
            }
            Op::Abandon {
                fence,
                tx,
                state,
                release,
            } => {
                let fence = self.fence(fence);
                DbRequest::AbandonTx {
                    tx_id: self.tx_for(&fence, tx),
                    fence,
                    state: STATES[usize::from(state) % STATES.len()],
                    release,
                }
            }
            Op::Resync {
                signer: s,
                chain_nonce,
            } => DbRequest::ResyncNonce {
                signer: signer(s),
                chain_id: CHAIN,
                chain_nonce,
            },
            Op::RecordFiller {
                signer: s,
                hash,
                nonce,
            } => DbRequest::RecordFiller {
                signer: signer(s),
                chain_id: CHAIN,
                signed: broadcast(hash, nonce),
            },
            Op::RecordForeign {
                signer: s,
                hash,
                nonce,
            } => DbRequest::RecordForeign {
                signer: signer(s),
                chain_id: CHAIN,
                nonce,
                hash: B256::repeat_byte(0x80 + hash),
            },
            Op::Notify { fence, kind, nul } => DbRequest::Notify {
                fence: self.fence(fence),
                kind: if nul {
                    "mail\0".into()
                } else {
                    format!("kind{kind}")
                },
                payload: json!({ "kind": kind }),
            },
            Op::RecordOrphans { signer: s, orphans } => DbRequest::RecordOrphans {
                signer: signer(s),
                chain_id: CHAIN,
                orphans: orphans
                    .iter()
                    .map(|&(hash, nonce, tag)| Orphan {
                        tag: orphan_tag(tag),
                        signed: broadcast(hash, nonce),
                    })
                    .collect(),
            },
            Op::AdoptOrphan {
                fence,
                step,
                signer: s,
                hash,
                nonce,
            } => {
                let fence = self.fence(fence);
                let step = self.step(fence.workflow_id, step);
                DbRequest::AdoptOrphan {
                    fence,
                    step,
                    intent: intent(s),
                    signed: broadcast(hash, nonce),
                }
            }
            Op::NonceView(s, tag) => DbRequest::NonceView {
                signer: signer(s),
                chain_id: CHAIN,
                tag: orphan_tag(tag),
            },
            Op::IndexBlock {
                number,
                fork,
                events,
                finalized,
                extends,
            } => {
                let hash = block_hash(number, fork);
                let parent = number.saturating_sub(1);
                DbRequest::IndexBlock {
                    chain_id: CHAIN,
                    extends: match extends {
                        0 => self
                            .model
                            .tables
                            .indexer_checkpoint
                            .get(&(CHAIN as i64))
                            .map(|cp| (cp.last_block as u64, cp.last_hash)),
                        1 => None,
                        e => Some((parent, block_hash(parent, e == 3))),
                    },
                    number,
                    hash,
                    events: events
                        .iter()
                        .enumerate()
                        .map(|(i, &(from, to, value))| TokenEvent {
                            block_number: number,
                            block_hash: hash,
                            tx_hash: B256::repeat_byte(0x70 + i as u8),
                            log_index: i as u64,
                            contract: contract(),
                            from: holder(from),
                            to: holder(to),
                            value: U256::from(value),
                        })
                        .collect(),
                    finalized: finalized.min(number),
                }
            }
            Op::Rollback { keep } => DbRequest::RollbackIndex {
                chain_id: CHAIN,
                keep,
            },
            Op::Audit { nul } => DbRequest::Audit {
                entry: AuditEntry {
                    actor: "ops".into(),
                    action: "pause".into(),
                    args: json!({ "why": if nul { "x\0" } else { "maintenance" } }),
                    reason: "drill".into(),
                    outcome: "ok".into(),
                },
            },
            Op::Workflow(w) => DbRequest::Workflow {
                id: 1 + i64::from(w),
            },
            Op::Journal(w) => DbRequest::Journal {
                id: 1 + i64::from(w),
            },
            Op::Txs(w) => DbRequest::TxsForWorkflow {
                workflow: 1 + i64::from(w),
            },
            Op::TxForStep(w, s) => {
                let id = 1 + i64::from(w);
                DbRequest::TxForStep {
                    workflow: id,
                    step: self.step(id, s),
                }
            }
            Op::TxByNonce(s, nonce) => DbRequest::TxByNonce {
                signer: signer(s),
                chain_id: CHAIN,
                nonce,
            },
            Op::TxByNonceOf(t) => match self.model.tables.transactions.get(&self.tx(t)) {
                Some(x) => DbRequest::TxByNonce {
                    signer: x.signer,
                    chain_id: x.chain_id as u64,
                    nonce: x.nonce as u64,
                },
                None => DbRequest::TxByNonce {
                    signer: signer(0),
                    chain_id: CHAIN,
                    nonce: 0,
                },
            },
            Op::Holds(s, from, len) => DbRequest::NonceHolds {
                signer: signer(s),
                chain_id: CHAIN,
                from,
                to: from + len,
            },
            Op::Fillers(s, nonce) => DbRequest::NonceFillers {
                signer: signer(s),
                chain_id: CHAIN,
                nonce,
            },
            Op::Named(s, from, len) => DbRequest::NamedNonces {
                signer: signer(s),
                chain_id: CHAIN,
                from,
                to: from + len,
            },
            Op::Checkpoint => DbRequest::IndexerCheckpoint { chain_id: CHAIN },
            Op::BlockHash(number) => DbRequest::IndexedBlockHash {
                chain_id: CHAIN,
                number,
            },
            Op::Balances => DbRequest::IndexedBalances {
                chain_id: CHAIN,
                contract: contract(),
            },
            Op::Stats(zero) => DbRequest::Stats {
                stalled_after_ms: if zero { 0 } else { HOUR_MS },
            },
            Op::DeadLetters(limit) => DbRequest::DeadLetters { limit },
            Op::AuditLog(limit) => DbRequest::AuditLog { limit },
        }
    }

    /// The same request in PostgreSQL's transaction ids.
    fn to_pg(&self, req: &DbRequest) -> DbRequest {
        let map = |id: i64| self.tx_map.get(&id).copied().unwrap_or(id);
        let mut req = req.clone();
        match &mut req {
            DbRequest::RecordSigned { tx_id, .. }
            | DbRequest::SetTxState { tx_id, .. }
            | DbRequest::ReassignNonce { tx_id, .. }
            | DbRequest::AbandonTx { tx_id, .. } => *tx_id = map(*tx_id),
            _ => {}
        }
        req
    }

    /// Apply `req` (in the model's ids) to both sides and compare the replies.
    async fn run(&mut self, req: DbRequest) -> Outcome {
        self.now += 1;
        let m = self.model.apply(&req, self.now);
        let p = call_store(&self.pg, self.to_pg(&req)).await;
        // The deliberate difference: PostgreSQL burns the id a failed create_tx drew.
        if let DbRequest::CreateTx { .. } | DbRequest::AdoptOrphan { .. } = req {
            match (&m, &p) {
                (Ok(DbReply::Tx(mt)), Ok(DbReply::Tx(pt))) => {
                    if pt.id != mt.id + self.burnt {
                        return self.mismatch(&req, &m, &p, "transaction ids");
                    }
                    self.tx_map.insert(mt.id, pt.id);
                }
                (_, Err(EngineError::Db { sqlstate, .. })) if sqlstate == "23505" => {
                    self.burnt += 1;
                }
                _ => {}
            }
        }
        let back: BTreeMap<i64, i64> = self.tx_map.iter().map(|(m, p)| (*p, *m)).collect();
        let (nm, np) = (
            norm(&m, &|id| id),
            norm(&p, &|id| *back.get(&id).unwrap_or(&id)),
        );
        let _ = writeln!(self.transcript, "{req:?}\n    -> {}", compact(&nm));
        self.outcomes.push(outcome_class(&m));
        *self
            .coverage
            .entry(req.name())
            .or_default()
            .entry(outcome_class(&m))
            .or_default() += 1;
        if nm != np {
            return self.mismatch(&req, &m, &p, "replies");
        }
        match &m {
            Ok(DbReply::Claims(c)) => self.fences.extend(c.iter().map(|c| c.fence.clone())),
            Ok(DbReply::Tx(t)) if !self.txs.contains(&t.id) => self.txs.push(t.id),
            _ => {}
        }
        Ok(())
    }

    fn mismatch(
        &self,
        req: &DbRequest,
        m: &dalp_engine::error::Result<DbReply>,
        p: &dalp_engine::error::Result<DbReply>,
        what: &str,
    ) -> Outcome {
        Err(format!(
            "{what} differ\nrequest: {req:?}\nmodel:      {m:?}\npostgresql: {p:?}\ntranscript so far:\n{}",
            self.transcript
        ))
    }

    async fn run_all(&mut self, reqs: impl IntoIterator<Item = DbRequest>) -> Outcome {
        for r in reqs {
            self.run(r).await?;
        }
        Ok(())
    }

    /// Compare the whole final state: through `Store` reads, then what only SQL can see.
    async fn final_check(&mut self) -> Outcome {
        let mut reads = Vec::new();
        let last_wf = self.model.sequences.workflows + 1;
        for id in 1..=last_wf {
            reads.push(DbRequest::Workflow { id });
            reads.push(DbRequest::Journal { id });
            reads.push(DbRequest::TxsForWorkflow { workflow: id });
            let c = self.current_step(id);
            for step in [c - 1, c, c + 1] {
                reads.push(DbRequest::TxForStep { workflow: id, step });
            }
        }
        reads.push(DbRequest::DeadLetters { limit: 100 });
        reads.push(DbRequest::AuditLog { limit: 100 });
        reads.push(DbRequest::Stats {
            stalled_after_ms: 0,
        });
        reads.push(DbRequest::Stats {
            stalled_after_ms: HOUR_MS,
        });
        for s in 0..2 {
            reads.push(DbRequest::NonceHolds {
                signer: signer(s),
                chain_id: CHAIN,
                from: 0,
                to: 7,
            });
            reads.push(DbRequest::NamedNonces {
                signer: signer(s),
                chain_id: CHAIN,
                from: 0,
                to: 8,
            });
            for nonce in 0..7 {
                reads.push(DbRequest::TxByNonce {
                    signer: signer(s),
                    chain_id: CHAIN,
                    nonce,
                });
                reads.push(DbRequest::NonceFillers {
                    signer: signer(s),
                    chain_id: CHAIN,
                    nonce,
                });
            }
            for tag in 0..2 {
                reads.push(DbRequest::NonceView {
                    signer: signer(s),
                    chain_id: CHAIN,
                    tag: orphan_tag(tag),
                });
            }
        }
        reads.push(DbRequest::IndexerCheckpoint { chain_id: CHAIN });
        for number in 0..6 {
            reads.push(DbRequest::IndexedBlockHash {
                chain_id: CHAIN,
                number,
            });
        }
        reads.push(DbRequest::IndexedBalances {
            chain_id: CHAIN,
            contract: contract(),
        });
        self.run_all(reads).await?;
        self.sql_check().await?;
        // The nonce counters: resync with 0 returns them (a write, so it comes last).
        self.run_all((0..2).map(|s| DbRequest::ResyncNonce {
            signer: signer(s),
            chain_id: CHAIN,
            chain_nonce: 0,
        }))
        .await
    }

    /// The tables no `Store` read exposes, row by row.
    async fn sql_check(&self) -> Outcome {
        let pool = self.pg.pool();
        let t = &self.model.tables;
        let back: BTreeMap<i64, i64> = self.tx_map.iter().map(|(m, p)| (*p, *m)).collect();
        let q = |sql: &'static str| async move {
            sqlx::query(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| format!("{sql}: {e}"))
        };
        let mut pg_rows: Vec<Value> = Vec::new();
        let mut model_rows: Vec<Value> = Vec::new();

        for r in q("SELECT scope, idempotency_key, workflow_id FROM idempotency_keys ORDER BY 1, 2")
            .await?
        {
            pg_rows.push(json!([
                "key",
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<i64, _>(2)
            ]));
        }
        for ((scope, key), k) in &t.idempotency_keys {
            model_rows.push(json!(["key", scope, key, k.workflow_id]));
        }

        for r in q("SELECT signer, chain_id, next_nonce FROM nonces ORDER BY 1, 2").await? {
            pg_rows.push(json!([
                "nonce",
                r.get::<String, _>(0),
                r.get::<i64, _>(1),
                r.get::<i64, _>(2)
            ]));
        }
        for ((s, c), n) in &t.nonces {
            model_rows.push(json!(["nonce", format!("{s:#x}"), c, n.next_nonce]));
        }

        for r in q("SELECT signer, chain_id, nonce FROM nonce_holes ORDER BY 1, 2, 3").await? {
            pg_rows.push(json!([
                "hole",
                r.get::<String, _>(0),
                r.get::<i64, _>(1),
                r.get::<i64, _>(2)
            ]));
        }
        for (s, c, n) in &t.nonce_holes {
            model_rows.push(json!(["hole", format!("{s:#x}"), c, n]));
        }

        for r in q("SELECT workflow_id, kind, payload FROM notifications ORDER BY 1, 2").await? {
            pg_rows.push(json!([
                "notify",
                r.get::<i64, _>(0),
                r.get::<String, _>(1),
                r.get::<Value, _>(2)
            ]));
        }
        for ((w, k), n) in &t.notifications {
            model_rows.push(json!(["notify", w, k, n.payload]));
        }

        for r in q("SELECT tx_id, state, detail FROM tx_events ORDER BY seq").await? {
            let id = r.get::<i64, _>(0);
            pg_rows.push(json!([
                "event",
                back.get(&id).copied().unwrap_or(id),
                r.get::<String, _>(1),
                r.get::<Option<String>, _>(2)
            ]));
        }
        let mut events: Vec<_> = t.tx_events.iter().collect();
        events.sort_by_key(|((_, seq), _)| *seq);
        for ((tx, _), e) in events {
            model_rows.push(json!(["event", tx, e.state.as_str(), e.detail]));
        }

        for r in q("SELECT id, failure FROM transactions ORDER BY id").await? {
            let id = r.get::<i64, _>(0);
            pg_rows.push(json!([
                "failure",
                back.get(&id).copied().unwrap_or(id),
                r.get::<Option<String>, _>(1)
            ]));
        }
        for (id, x) in &t.transactions {
            model_rows.push(json!(["failure", id, x.failure]));
        }

        for r in q(
            "SELECT tx_hash, signer, chain_id, nonce, tag, adopted_by FROM orphan_txs ORDER BY 1",
        )
        .await?
        {
            let adopted = r
                .get::<Option<i64>, _>(5)
                .map(|id| back.get(&id).copied().unwrap_or(id));
            pg_rows.push(json!([
                "orphan",
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<i64, _>(2),
                r.get::<i64, _>(3),
                r.get::<String, _>(4),
                adopted
            ]));
        }
        for (h, o) in &t.orphan_txs {
            model_rows.push(json!([
                "orphan",
                format!("{h:#x}"),
                format!("{:#x}", o.signer),
                o.chain_id,
                o.signed.nonce,
                format!("{:#x}", o.tag),
                o.adopted_by
            ]));
        }

        for r in
            q("SELECT tx_hash, signer, chain_id, nonce FROM foreign_nonce_txs ORDER BY 1").await?
        {
            pg_rows.push(json!([
                "foreign",
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<i64, _>(2),
                r.get::<i64, _>(3)
            ]));
        }
        for (h, f) in &t.foreign_nonce_txs {
            model_rows.push(json!([
                "foreign",
                format!("{h:#x}"),
                format!("{:#x}", f.signer),
                f.chain_id,
                f.nonce
            ]));
        }

        for r in q("SELECT chain_id, block_hash, log_index, block_number, tx_hash, from_address, to_address, value::text FROM token_events ORDER BY 1, 2, 3").await? {
            pg_rows.push(json!(["token_event", r.get::<i64, _>(0), r.get::<String, _>(1), r.get::<i64, _>(2), r.get::<i64, _>(3), r.get::<String, _>(4), r.get::<String, _>(5), r.get::<String, _>(6), r.get::<String, _>(7)]));
        }
        for ((c, h, li), e) in &t.token_events {
            model_rows.push(json!([
                "token_event",
                c,
                format!("{h:#x}"),
                li,
                e.block_number,
                format!("{:#x}", e.tx_hash),
                format!("{:#x}", e.from),
                format!("{:#x}", e.to),
                e.value.to_string()
            ]));
        }

        if pg_rows != model_rows {
            let diff: Vec<String> = pg_rows
                .iter()
                .zip(model_rows.iter())
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("  pg {a}\n  model {b}"))
                .collect();
            return Err(format!(
                "tables differ ({} PostgreSQL rows, {} model rows); first differences:\n{}\ntranscript:\n{}",
                pg_rows.len(),
                model_rows.len(),
                diff.iter().take(5).cloned().collect::<Vec<_>>().join("\n"),
                self.transcript
            ));
        }
        Ok(())
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(300).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// A reply as JSON, transaction ids mapped by `tx` (to the model's ids).
fn norm(r: &dalp_engine::error::Result<DbReply>, tx: &dyn Fn(i64) -> i64) -> Value {
    let txv = |t: &dalp_engine::store::TxRecord| {
        let mut v = serde_json::to_value(t).expect("tx to json");
        v["id"] = json!(tx(t.id));
        v
    };
    let j = |v: &dyn erased::Ser| v.json();
    let reply = match r {
        Err(e) => return json!({ "err": format!("{e:?}") }),
        Ok(r) => r,
    };
    match reply {
        DbReply::Unit => json!("unit"),
        DbReply::Submitted(Submitted::Created(w)) => json!({ "created": j(w) }),
        DbReply::Submitted(Submitted::Existing(w)) => json!({ "existing": j(w) }),
        DbReply::Workflow(w) => json!({ "workflow": w.as_ref().map(|w| j(w)) }),
        DbReply::WorkflowRecord(w) => json!({ "record": j(w) }),
        DbReply::Journal(e) => json!({ "journal": j(e) }),
        DbReply::Claims(c) => json!({ "claims": c.iter().map(|c| json!({
            "workflow": j(&c.workflow),
            "fence": [c.fence.workflow_id, c.fence.token, c.fence.node],
        })).collect::<Vec<_>>() }),
        DbReply::DeadLetters(d) => json!({ "dead_letters": j(d) }),
        DbReply::AuditLog(a) => json!({ "audit": j(a) }),
        DbReply::Tx(t) => json!({ "tx": txv(t) }),
        DbReply::OptTx(t) => json!({ "opt_tx": t.as_ref().map(txv) }),
        DbReply::Txs(ts) => json!({ "txs": ts.iter().map(txv).collect::<Vec<_>>() }),
        DbReply::Holds(hs) => json!({ "holds": hs.iter().map(|h| {
            let mut v = j(h);
            v["tx_id"] = json!(tx(h.tx_id));
            v
        }).collect::<Vec<_>>() }),
        DbReply::Bool(b) => json!({ "bool": b }),
        DbReply::U64(n) => json!({ "u64": n }),
        DbReply::Checkpoint(c) => json!({ "checkpoint": format!("{c:?}") }),
        DbReply::OptHash(h) => json!({ "hash": format!("{h:?}") }),
        DbReply::Balances(b) => json!({ "balances": format!("{b:?}") }),
        DbReply::Stats(s) => json!({ "stats": j(s) }),
        DbReply::Broadcasts(b) => json!({ "broadcasts": j(b) }),
        DbReply::Nonces(n) => json!({ "nonces": n }),
        DbReply::NonceView(v) => json!({ "nonce_view": {
            "next_nonce": v.next_nonce,
            "orphan": v.orphan.as_ref().map(|b| j(b)),
        } }),
    }
}

/// `serde::Serialize` is not object safe; this is the one method `norm` needs.
mod erased {
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("serialise a reply")
        }
    }
}

/// A case: a few submissions and a claim first (so that the random body finds workflows to work
/// on), then random operations; at most 30 in all.
fn case() -> impl Strategy<Value = Vec<Op>> {
    let submit =
        (0u8..3, 0u8..2, prop::bool::weighted(0.9)).prop_map(|(key, hash, long_window)| {
            Op::Submit {
                key,
                hash,
                long_window,
                nul: false,
            }
        });
    let claim =
        (0u8..2, 1usize..4, prop::bool::weighted(0.8)).prop_map(|(node, limit, long_lease)| {
            Op::Claim {
                node,
                limit,
                long_lease,
            }
        });
    (
        prop::collection::vec(submit, 1..=3),
        claim,
        prop::collection::vec(op(), 3..=26),
    )
        .prop_map(|(mut ops, claim, body)| {
            ops.push(claim);
            ops.extend(body);
            ops
        })
}

/// One generated case: a fresh database, the operations, the final state.
async fn run_case(server: &Server, ops: &[Op], coverage: &Mutex<Coverage>) -> Outcome {
    let (store, name) = server.fresh(1).await;
    let mut pair = Pair::new(store);
    let mut out = Ok(());
    for op in ops {
        let req = pair.request(op);
        out = pair.run(req).await;
        if out.is_err() {
            break;
        }
    }
    if out.is_ok() {
        add_coverage(coverage, &pair.coverage);
        out = pair.final_check().await;
    }
    if std::env::var_os("CONFORMANCE_DUMP").is_some() {
        eprintln!("---- case\n{}", pair.transcript);
    }
    server.drop_db(pair.pg, &name).await;
    out
}

/// A fixed sequence of requests (in the model's ids) on a fresh database, then the final check.
async fn run_fixed(server: &Server, build: impl FnOnce(&mut Seq)) -> Pair {
    let (store, _name) = server.fresh(2).await;
    let mut pair = Pair::new(store);
    let mut seq = Seq(Vec::new());
    build(&mut seq);
    for step in seq.0 {
        let req = step(&pair);
        if let Err(e) = pair.run(req).await {
            panic!("{e}");
        }
    }
    if let Err(e) = pair.final_check().await {
        panic!("{e}");
    }
    pair
}

fn add_coverage(total: &Mutex<Coverage>, case: &Coverage) {
    let mut total = total.lock().unwrap();
    for (op, outcomes) in case {
        for (o, n) in outcomes {
            *total.entry(op).or_default().entry(o.clone()).or_default() += n;
        }
    }
}

/// Builds one request of a fixed sequence from the replies so far (fences, tx ids).
type SeqStep = Box<dyn FnOnce(&Pair) -> DbRequest>;

/// A fixed sequence whose requests may depend on earlier replies.
struct Seq(Vec<SeqStep>);

impl Seq {
    fn op(&mut self, op: Op) -> &mut Self {
        self.0.push(Box::new(move |p| p.request(&op)));
        self
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The random differential test
// ---------------------------------------------------------------------------------------------

#[test]
fn model_matches_postgres_on_random_sequences() {
    let rt = runtime();
    let server = rt.block_on(Server::start());
    let cases = env_u32("PROPTEST_CASES", 128);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: env_u32("CONFORMANCE_SHRINK_ITERS", 300),
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let coverage = Mutex::new(Coverage::new());
    let result = runner.run(&case(), |ops| {
        rt.block_on(run_case(&server, &ops, &coverage))
            .map_err(TestCaseError::fail)
    });
    eprintln!(
        "store conformance: {cases} cases in {:.1} s; outcomes compared (generated operations):",
        started.elapsed().as_secs_f64()
    );
    for (op, outcomes) in coverage.lock().unwrap().iter() {
        eprintln!("  {op:20} {outcomes:?}");
    }
    if let Err(e) = result {
        panic!("model and PostgreSQL disagree: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Time: a real short lease against the model's clock advanced by the time slept
// ---------------------------------------------------------------------------------------------

#[test]
fn lease_expiry_and_renewal_in_real_time() {
    let rt = runtime();
    rt.block_on(async {
        let server = Server::start().await;
        let (store, _) = server.fresh(1).await;
        let mut p = Pair::new(store);
        const LEASE: u64 = 1_500;
        let claim = |node: &str| DbRequest::Claim {
            node: node.into(),
            lease_ms: LEASE,
            limit: 1,
            lease_id: LEASE_ID,
            skip_locked: Vec::new(),
        };
        let sleep = |p: &mut Pair, ms: u64| {
            p.now += ms;
            tokio::time::sleep(Duration::from_millis(ms))
        };
        p.run(DbRequest::Submit {
            new: new_workflow(0, 0, false),
            window_ms: HOUR_MS,
        })
        .await
        .unwrap();
        p.run(claim("n0")).await.unwrap();
        let f1 = p.fences[0].clone();
        // Held: n1 gets nothing.
        p.run(claim("n1")).await.unwrap();
        sleep(&mut p, 1_000).await;
        p.run(DbRequest::RenewLease {
            fence: f1.clone(),
            lease_ms: LEASE,
        })
        .await
        .unwrap();
        let renewed = Instant::now();
        sleep(&mut p, 1_000).await;
        // 2 s after the claim, 1 s after the renewal: still held.
        assert!(
            renewed.elapsed() < Duration::from_millis(1_300),
            "too slow for this test's timing assumptions: {:?}",
            renewed.elapsed()
        );
        p.run(claim("n1")).await.unwrap();
        assert_eq!(p.fences.len(), 1, "the renewed lease was taken");
        sleep(&mut p, 800).await;
        // 1.8 s after the renewal: expired, n1 takes over; n0's writes are fenced.
        p.run(claim("n1")).await.unwrap();
        assert_eq!(p.fences.len(), 2, "the expired lease was not taken over");
        p.run(DbRequest::CompleteStep {
            fence: f1.clone(),
            step: 0,
            name: "s0".into(),
            output: json!(1),
            result: None,
        })
        .await
        .unwrap();
        p.run(DbRequest::Stats {
            stalled_after_ms: 0,
        })
        .await
        .unwrap();
        p.final_check().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Concurrency: what the model's serial execution gives for free must hold for PostgreSQL
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_claims_never_share_a_workflow() {
    let rt = runtime();
    rt.block_on(async {
        let server = Server::start().await;
        let (a, name) = server.fresh(4).await;
        let b = PgStore::connect(&db_url(&server.pg, &name), 4, TIMEOUT)
            .await
            .expect("second session");
        const N: usize = 24;
        for k in 0..N {
            let mut w = new_workflow(0, 0, false);
            w.idempotency_key = format!("c{k}");
            a.submit(w, Duration::from_secs(3600)).await.unwrap();
        }
        let mut owner: BTreeMap<i64, (String, i64)> = BTreeMap::new();
        let mut rounds = 0;
        while owner.len() < N && rounds < 50 {
            rounds += 1;
            let lease = Duration::from_secs(3600);
            let (ca, cb) = tokio::join!(
                a.claim("a", lease, 5, LEASE_ID),
                b.claim("b", lease, 5, LEASE_ID)
            );
            for (node, claims) in [("a", ca.unwrap()), ("b", cb.unwrap())] {
                for c in claims {
                    assert_eq!(c.fence.token, 1, "claimed twice: {:?}", c.workflow);
                    let prev = owner.insert(c.workflow.id, (node.to_string(), c.fence.token));
                    assert!(
                        prev.is_none(),
                        "workflow {} claimed by {prev:?} and {node}",
                        c.workflow.id
                    );
                }
            }
        }
        assert_eq!(owner.len(), N, "not every workflow was claimed");
        for (id, (node, token)) in &owner {
            let w = a.workflow(*id).await.unwrap().unwrap();
            assert_eq!(w.lease_owner.as_deref(), Some(node.as_str()));
            assert_eq!(w.fencing_token, *token);
        }

        // The same fence completing the same step twice at once: one commit, one no-op.
        let (id, (node, token)) = owner.iter().next().map(|(i, o)| (*i, o.clone())).unwrap();
        let fence = Fence {
            workflow_id: id,
            token,
            node,
            lease_id: LEASE_ID,
        };
        let (r1, r2) = tokio::join!(
            a.complete_step(&fence, 0, "s0", json!(1), None),
            b.complete_step(&fence, 0, "s0", json!(1), None)
        );
        r1.unwrap();
        r2.unwrap();
        let completed = a
            .journal(id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event == "completed")
            .count();
        assert_eq!(completed, 1);

        // Two workflows allocating for one signer at once: distinct, dense nonces.
        let fences: Vec<Fence> = owner
            .iter()
            .skip(1)
            .take(6)
            .map(|(i, (n, t))| Fence {
                workflow_id: *i,
                token: *t,
                node: n.clone(),
                lease_id: LEASE_ID,
            })
            .collect();
        let mut nonces = Vec::new();
        let intent0 = intent(0);
        for pair in fences.chunks(2) {
            let (x, y) = tokio::join!(
                a.create_tx(&pair[0], 0, &intent0, FEES, 5),
                b.create_tx(&pair[1], 0, &intent0, FEES, 5)
            );
            nonces.push(x.unwrap().nonce);
            nonces.push(y.unwrap().nonce);
        }
        nonces.sort_unstable();
        assert_eq!(nonces, (5..11).collect::<Vec<u64>>());

        // One step creating its transaction twice at once: one row, one 23505, no nonce lost.
        let f = owner
            .iter()
            .nth(8)
            .map(|(i, (n, t))| Fence {
                workflow_id: *i,
                token: *t,
                node: n.clone(),
                lease_id: LEASE_ID,
            })
            .unwrap();
        let (x, y) = tokio::join!(
            a.create_tx(&f, 0, &intent0, FEES, 0),
            b.create_tx(&f, 0, &intent0, FEES, 0)
        );
        let (ok, err) = match (x, y) {
            (Ok(t), Err(e)) | (Err(e), Ok(t)) => (t, e),
            other => panic!("expected one Ok and one Err: {other:?}"),
        };
        assert_eq!(ok.nonce, 11);
        assert!(
            matches!(&err, EngineError::Db { sqlstate, .. } if sqlstate == "23505"),
            "{err:?}"
        );
        let next = a
            .create_tx(&owner_fence(&owner, 9), 0, &intent0, FEES, 0)
            .await
            .unwrap();
        assert_eq!(next.nonce, 12, "the refused create_tx kept its nonce");

        // The same idempotency key submitted twice at once: the branch the serial model cannot
        // reach (a live key inserted by a concurrent transaction) answers `Existing`.
        for round in 0..5 {
            let mut w = new_workflow(0, 0, false);
            w.idempotency_key = format!("race{round}");
            let (x, y) = tokio::join!(
                a.submit(w.clone(), Duration::from_secs(3600)),
                b.submit(w, Duration::from_secs(3600))
            );
            match (x.unwrap(), y.unwrap()) {
                (Submitted::Created(c), Submitted::Existing(e))
                | (Submitted::Existing(e), Submitted::Created(c)) => assert_eq!(c.id, e.id),
                other => panic!("expected one Created and one Existing: {other:?}"),
            }
        }

        // The same key with different requests at once: one is created, the other refused (422)
        // whichever way the race goes, never answered with the winner's workflow.
        for round in 0..5 {
            let key = format!("race-diff{round}");
            let (mut w0, mut w1) = (new_workflow(0, 0, false), new_workflow(0, 1, false));
            (w0.idempotency_key, w1.idempotency_key) = (key.clone(), key);
            let (x, y) = tokio::join!(
                a.submit(w0, Duration::from_secs(3600)),
                b.submit(w1, Duration::from_secs(3600))
            );
            match (x, y) {
                (Ok(Submitted::Created(_)), Err(e)) | (Err(e), Ok(Submitted::Created(_))) => {
                    assert_eq!(e.http_status(), 422, "{e:?}")
                }
                other => panic!("expected one Created and one 422: {other:?}"),
            }
        }
        // Forced: the loser reads no live key, then waits on the winner's uncommitted insert of
        // it — the branch where a concurrent insert won — and must still compare the requests.
        let loser = new_workflow(2, 0, false);
        let mut held = b.pool().begin().await.unwrap();
        let winner: i64 = sqlx::query(
            "INSERT INTO workflows (kind, scope, idempotency_key, request_hash, input, status) \
             VALUES ($1, $2, $3, 'another request', '{}', 'pending') RETURNING id",
        )
        .bind(&loser.kind)
        .bind(&loser.scope)
        .bind(&loser.idempotency_key)
        .fetch_one(&mut *held)
        .await
        .unwrap()
        .get(0);
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, idempotency_key, workflow_id, expires_at) \
             VALUES ($1, $2, $3, now() + interval '1 hour')",
        )
        .bind(&loser.scope)
        .bind(&loser.idempotency_key)
        .bind(winner)
        .execute(&mut *held)
        .await
        .unwrap();
        let (lost, ()) = tokio::join!(a.submit(loser, Duration::from_secs(3600)), async {
            wait_for_lock_waiter(&a, &name).await;
            held.commit().await.unwrap();
        });
        match lost {
            Err(e) => assert_eq!(e, EngineError::key_reused("k2")),
            Ok(s) => panic!("a different request under a key won concurrently got {s:?}"),
        }
        b.pool().close().await;
        server.drop_db(a, &name).await;
    });
}

/// Wait (bounded) until a session of database `db` waits on a lock.
async fn wait_for_lock_waiter(store: &PgStore, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(db)
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no session waited on the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The harness itself: a divergence must be reported
// ---------------------------------------------------------------------------------------------

#[test]
fn harness_reports_a_divergence() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (store, _) = server.fresh(1).await;
        let mut p = Pair::new(store);
        p.run(DbRequest::Submit {
            new: new_workflow(0, 0, false),
            window_ms: HOUR_MS,
        })
        .await
        .unwrap();
        // A reply that differs.
        p.model.tables.workflows.get_mut(&1).unwrap().attempts = 9;
        let e = p.run(DbRequest::Workflow { id: 1 }).await.unwrap_err();
        assert!(e.contains("replies differ"), "{e}");
        p.model.tables.workflows.get_mut(&1).unwrap().attempts = 0;
        // A row no read exposes.
        p.model.tables.nonce_holes.insert((signer(0), 1, 3));
        let e = p.final_check().await.unwrap_err();
        assert!(e.contains("tables differ"), "{e}");
    });
}

// ---------------------------------------------------------------------------------------------
// Fixed sequences: the contract gaps this test found (fixed), and regressions of mismatches found
// ---------------------------------------------------------------------------------------------

fn owner_fence(owner: &BTreeMap<i64, (String, i64)>, n: usize) -> Fence {
    let (id, (node, token)) = owner.iter().nth(n).expect("enough claims");
    Fence {
        workflow_id: *id,
        token: *token,
        node: node.clone(),
        lease_id: LEASE_ID,
    }
}

fn seen(n: usize) -> FenceRef {
    FenceRef::Seen(n)
}

/// A workflow claimed by n0 (fence `Seen(0)`).
fn submit_and_claim(s: &mut Seq, key: u8) {
    s.op(Op::Submit {
        key,
        hash: 0,
        long_window: true,
        nul: false,
    })
    .op(Op::Claim {
        node: 0,
        limit: 1,
        long_lease: true,
    });
}

/// Found 1 (fixed): the old holder's late `complete_step` was accepted after the workflow was
/// dead-lettered, and a completed workflow could be failed by its holder. Now both are refused
/// on both sides ([`contract_no_write_revives_a_dead_lettered_workflow`]); this sequence checks
/// that model and PostgreSQL still agree around it.
#[test]
fn regression_late_complete_after_fail_same_on_both() {
    runtime().block_on(async {
        let server = Server::start().await;
        let p = run_fixed(&server, |s| {
            submit_and_claim(s, 0);
            s.op(Op::Fail {
                fence: seen(0),
                step: StepRef::Current,
                dead_letter: true,
                nul: false,
            })
            .op(Op::Complete {
                fence: seen(0),
                step: StepRef::Current,
                finish: 2,
                nul: false,
            })
            .op(Op::Workflow(0))
            .op(Op::DeadLetters(100))
            .op(Op::Requeue {
                wf: 0,
                dead: false,
                nul: false,
            })
            .op(Op::Release { fence: seen(0) })
            .op(Op::Retry {
                fence: seen(0),
                step: StepRef::Current,
                long_delay: true,
                null_error: false,
            })
            .op(Op::Complete {
                fence: seen(0),
                step: StepRef::Current,
                finish: 0,
                nul: false,
            });
            // A completed workflow failed afterwards by the holder that completed it.
            submit_and_claim(s, 1);
            s.op(Op::Complete {
                fence: seen(0),
                step: StepRef::Current,
                finish: 0,
                nul: false,
            })
            .op(Op::Fail {
                fence: seen(0),
                step: StepRef::Prev,
                dead_letter: false,
                nul: false,
            });
        })
        .await;
        let (w1, w2) = (&p.model.tables.workflows[&1], &p.model.tables.workflows[&2]);
        eprintln!(
            "workflow 1 (dead-lettered, then completed by its late holder): {:?}, still in the \
             dead-letter table: {}; workflow 2 (completed, then failed by its holder): {:?}",
            w1.status,
            p.model.tables.dead_letters.contains_key(&1),
            w2.status
        );
    });
}

/// Every list a read returns compared while it holds several entries, in the order each side
/// gives: an order is only compared when there are two, and the random sequences seldom leave
/// two dead letters (a dead letter needs a current fence at the current step, and a requeue
/// removes it). Three workflows claimed at once, all dead-lettered, one requeued (an audited
/// success) and requeued again (an audited refusal); read in full and cut to one, and again by
/// the final comparison.
#[test]
fn lists_with_several_entries_same_on_both() {
    runtime().block_on(async {
        let server = Server::start().await;
        let p = run_fixed(&server, |s| {
            for key in 0..3 {
                s.op(Op::Submit {
                    key,
                    hash: 0,
                    long_window: true,
                    nul: false,
                });
            }
            s.op(Op::Claim {
                node: 0,
                limit: 3,
                long_lease: true,
            });
            for n in 0..3 {
                s.op(Op::Fail {
                    fence: seen(n),
                    step: StepRef::Current,
                    dead_letter: true,
                    nul: false,
                });
            }
            s.op(Op::DeadLetters(100)).op(Op::DeadLetters(1));
            s.op(Op::Requeue {
                wf: 0,
                dead: true,
                nul: false,
            })
            .op(Op::Requeue {
                wf: 0,
                dead: false,
                nul: false,
            })
            .op(Op::AuditLog(100))
            .op(Op::AuditLog(1))
            .op(Op::Journal(0));
        })
        .await;
        // What makes this test worth its run: several entries in each list at the end.
        let t = &p.model.tables;
        assert_eq!(
            t.dead_letters.len(),
            2,
            "dead letters: {:?}",
            t.dead_letters
        );
        assert_eq!(t.audit_log.len(), 2, "audit log: {:?}", t.audit_log);
    });
}

/// Every outcome of `index_block` over the checkpoint it extends, compared: a first block, the
/// next one, a block over a checkpoint that moved (refused), a first block while one is indexed
/// (refused), a block indexed again over the current checkpoint with another hash (its row's hash
/// replaced: the random sequences seldom index a number again once blocks must extend the
/// checkpoint), and a first block after a rollback of everything.
#[test]
fn index_block_over_the_checkpoint_it_extends_same_on_both() {
    runtime().block_on(async {
        let server = Server::start().await;
        let block = |number: u64, fork: bool, extends: u8| Op::IndexBlock {
            number,
            fork,
            events: vec![(0, 1, number as u8 + 1)],
            finalized: 0,
            extends,
        };
        let p = run_fixed(&server, |s| {
            s.op(block(1, false, 1))
                .op(block(2, false, 0))
                .op(block(4, false, 2))
                .op(block(1, true, 1))
                .op(Op::Checkpoint)
                .op(block(1, true, 0))
                .op(Op::BlockHash(1))
                .op(Op::Checkpoint)
                .op(Op::Balances)
                .op(Op::Rollback { keep: 0 })
                .op(block(1, false, 1))
                .op(Op::BlockHash(1))
                .op(Op::Balances);
        })
        .await;
        let index: Vec<&str> = [0, 1, 2, 3, 5, 10].map(|i| p.outcomes[i].as_str()).to_vec();
        assert_eq!(
            index,
            ["ok", "ok", "ok false", "ok false", "ok", "ok"],
            "{}",
            p.transcript
        );
    });
}

/// Found 2 (fixed): `record_signed` / `set_tx_state` / `abandon_tx` / `reassign_nonce` checked the
/// fence of the workflow presented but wrote the transaction by id only. Now a transaction of
/// another workflow is refused, the same way on both sides.
#[test]
fn regression_cross_workflow_tx_writes_same_on_both() {
    runtime().block_on(async {
        let server = Server::start().await;
        run_fixed(&server, |s| {
            submit_and_claim(s, 0);
            submit_and_claim(s, 1);
            // Workflow 2 (fence Seen(0)) creates its transaction; workflow 1's fence is Seen(1).
            s.op(Op::CreateTx {
                fence: seen(0),
                step: StepRef::Current,
                signer: 0,
                chain_nonce: 0,
            })
            .op(Op::RecordSigned {
                fence: seen(1),
                tx: TxRef::Known(0),
                hash: 1,
                nonce: 0,
            })
            .op(Op::SetTxState {
                fence: seen(1),
                tx: TxRef::Known(0),
                state: 4,
                detail: 2,
                receipt: 1,
            })
            .op(Op::Abandon {
                fence: seen(1),
                tx: TxRef::Known(0),
                state: 5,
                release: true,
            })
            .op(Op::Reassign {
                fence: seen(1),
                tx: TxRef::Known(0),
                chain_nonce: 0,
            })
            .op(Op::Txs(1));
        })
        .await;
    });
}

/// Found 3 (fixed): `schedule_retry` with a step that is not the current one changed nothing on
/// the workflow but still journalled "retry". Now it journals nothing, on both sides.
#[test]
fn regression_retry_on_step_mismatch_same_on_both() {
    runtime().block_on(async {
        let server = Server::start().await;
        let p = run_fixed(&server, |s| {
            submit_and_claim(s, 0);
            s.op(Op::Retry {
                fence: seen(0),
                step: StepRef::Next,
                long_delay: true,
                null_error: false,
            })
            .op(Op::Journal(0))
            .op(Op::Workflow(0));
        })
        .await;
        let events: Vec<&str> = p.model.journal_rows(1).map(|r| r.event.as_str()).collect();
        eprintln!("journal after a mismatched retry: {events:?}");
    });
}

/// Suspect 4 (new methods never run against PostgreSQL before): `tx_by_nonce`, `nonce_fillers`
/// and `record_filler` (migration 0002), including duplicates, several versions and states.
#[test]
fn regression_nonce_fillers_and_tx_by_nonce() {
    runtime().block_on(async {
        let server = Server::start().await;
        run_fixed(&server, |s| {
            submit_and_claim(s, 0);
            s.op(Op::CreateTx {
                fence: seen(0),
                step: StepRef::Current,
                signer: 0,
                chain_nonce: 2,
            })
            .op(Op::TxByNonce(0, 2))
            .op(Op::RecordSigned {
                fence: seen(0),
                tx: TxRef::Known(0),
                hash: 0,
                nonce: 2,
            })
            .op(Op::RecordSigned {
                fence: seen(0),
                tx: TxRef::Known(0),
                hash: 3,
                nonce: 2,
            })
            .op(Op::RecordSigned {
                fence: seen(0),
                tx: TxRef::Known(0),
                hash: 0,
                nonce: 2,
            })
            .op(Op::TxByNonce(0, 2))
            .op(Op::SetTxState {
                fence: seen(0),
                tx: TxRef::Known(0),
                state: 3,
                detail: 0,
                receipt: 2,
            })
            .op(Op::TxByNonce(0, 2))
            .op(Op::TxByNonce(1, 2))
            .op(Op::RecordFiller {
                signer: 0,
                hash: 2,
                nonce: 1,
            })
            .op(Op::RecordFiller {
                signer: 0,
                hash: 1,
                nonce: 1,
            })
            .op(Op::RecordFiller {
                signer: 1,
                hash: 2,
                nonce: 3,
            })
            .op(Op::Fillers(0, 1))
            .op(Op::Fillers(1, 3))
            .op(Op::Fillers(0, 2));
        })
        .await;
    });
}

/// The deliberate difference: a `create_tx` refused by `transactions_live_step` burns an id in
/// PostgreSQL only; later ids are offset by exactly the burnt count (checked by `Pair::run`).
#[test]
fn regression_burnt_transaction_ids_are_the_only_id_difference() {
    runtime().block_on(async {
        let server = Server::start().await;
        let p = run_fixed(&server, |s| {
            submit_and_claim(s, 0);
            let create = |s: &mut Seq| {
                s.op(Op::CreateTx {
                    fence: seen(0),
                    step: StepRef::Current,
                    signer: 0,
                    chain_nonce: 0,
                });
            };
            create(s);
            create(s); // 23505: burns an id in PostgreSQL
            s.op(Op::Abandon {
                fence: seen(0),
                tx: TxRef::Known(0),
                state: 5,
                release: true,
            });
            create(s); // reuses the released nonce 0, id 2 (model) / 3 (PostgreSQL)
            s.op(Op::SetTxState {
                fence: seen(0),
                tx: TxRef::Known(1),
                state: 1,
                detail: 0,
                receipt: 0,
            });
        })
        .await;
        assert_eq!(p.burnt, 1);
        assert_eq!(p.tx_map.get(&2), Some(&3));
    });
}

// ---------------------------------------------------------------------------------------------
// The contract, where pg.rs (and the model that mirrors it) broke it until this test found it
// ---------------------------------------------------------------------------------------------

/// `fail` ends the workflow (`Store::fail`); a later write by the holder that failed it must
/// not bring it back (pg.rs used to accept it: `fail` did not bump the fencing token, and
/// `complete_step` set `status` unconditionally).
#[test]
fn contract_no_write_revives_a_dead_lettered_workflow() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, _) = server.fresh(1).await;
        s.submit(new_workflow(0, 0, false), Duration::from_secs(3600))
            .await
            .unwrap();
        let c = s
            .claim("n0", Duration::from_secs(3600), 1, LEASE_ID)
            .await
            .unwrap()
            .remove(0);
        let err = json!({ "reason_code": "reverted", "message": "no" });
        s.fail(&c.fence, 0, "s0", &err, true).await.unwrap();
        let late = s.complete_step(&c.fence, 0, "s0", json!(1), None).await;
        let w = s.workflow(c.fence.workflow_id).await.unwrap().unwrap();
        assert_eq!(
            w.status,
            WorkflowStatus::DeadLetter,
            "late complete_step answered {late:?} and left the workflow {:?}",
            w.status
        );
        // Nor may a completed workflow be failed afterwards.
        s.submit(new_workflow(1, 0, false), Duration::from_secs(3600))
            .await
            .unwrap();
        let c = s
            .claim("n0", Duration::from_secs(3600), 1, LEASE_ID)
            .await
            .unwrap()
            .remove(0);
        s.complete_step(&c.fence, 0, "s0", json!(1), Some(json!("done")))
            .await
            .unwrap();
        let late = s.fail(&c.fence, 0, "s0", &err, false).await;
        let w = s.workflow(c.fence.workflow_id).await.unwrap().unwrap();
        assert_eq!(
            w.status,
            WorkflowStatus::Completed,
            "late fail answered {late:?} and left the workflow {:?}",
            w.status
        );
    });
}

/// `n` workflows submitted (keys 0..n, long windows) and claimed by n0 under long leases.
async fn submitted_and_claimed(s: &PgStore, n: u8) -> Vec<dalp_engine::store::Claim> {
    for k in 0..n {
        s.submit(new_workflow(k, 0, false), Duration::from_secs(3600))
            .await
            .unwrap();
    }
    let claims = s
        .claim("n0", Duration::from_secs(3600), usize::from(n), LEASE_ID)
        .await
        .unwrap();
    assert_eq!(claims.len(), usize::from(n), "every workflow claimed");
    claims
}

/// A fence proves the lease of *its* workflow only: a transaction of another workflow must not be
/// written under it.
#[test]
fn contract_a_fence_does_not_cover_another_workflows_transaction() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, _) = server.fresh(1).await;
        let claims = submitted_and_claimed(&s, 2).await;
        let (f1, f2) = (&claims[0].fence, &claims[1].fence);
        let tx = s.create_tx(f2, 0, &intent(0), FEES, 0).await.unwrap();
        let r = s.record_signed(f1, tx.id, &broadcast(1, 0)).await;
        let after = s.tx_for_step(f2.workflow_id, 0).await.unwrap().unwrap();
        assert!(
            r.is_err() && after.hash.is_none(),
            "record_signed under workflow {}'s fence rewrote workflow {}'s transaction: {r:?}",
            f1.workflow_id,
            f2.workflow_id
        );
    });
}

/// `schedule_retry` records a failed attempt of the *current* step; for another step it must not
/// journal a retry that did not happen.
#[test]
fn contract_retry_of_another_step_journals_nothing() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, _) = server.fresh(1).await;
        s.submit(new_workflow(0, 0, false), Duration::from_secs(3600))
            .await
            .unwrap();
        let c = s
            .claim("n0", Duration::from_secs(3600), 1, LEASE_ID)
            .await
            .unwrap()
            .remove(0);
        let r = s
            .schedule_retry(&c.fence, 5, "s5", &json!({}), Duration::from_secs(1))
            .await;
        let journal = s.journal(c.fence.workflow_id).await.unwrap();
        assert!(
            journal.iter().all(|e| e.event != "retry"),
            "schedule_retry of step 5 at step 0 answered {r:?} and journalled {journal:?}"
        );
    });
}

/// Every end of a lease — `release`, `schedule_retry`, `fail`, and an operator's `requeue` —
/// bumps the fencing token: a write under the fence held before it is refused, the same way on
/// both sides (they used to agree on accepting it).
#[test]
fn regression_stale_fence_after_every_end_of_a_lease_same_on_both() {
    runtime().block_on(async {
        let server = Server::start().await;
        let notify = |fence| Op::Notify {
            fence,
            kind: 0,
            nul: false,
        };
        // The fence holding workflow 1 just before the requeue (read when the step is built).
        let before_requeue = std::rc::Rc::new(std::cell::Cell::new(0));
        let (set, get) = (before_requeue.clone(), before_requeue);
        let p = run_fixed(&server, |s| {
            submit_and_claim(s, 0);
            s.op(Op::Release { fence: seen(0) }).op(notify(seen(0)));
            s.op(Op::Claim {
                node: 0,
                limit: 1,
                long_lease: true,
            })
            .op(Op::Retry {
                fence: seen(0),
                step: StepRef::Current,
                long_delay: false,
                null_error: false,
            })
            .op(notify(seen(0)));
            s.op(Op::Claim {
                node: 0,
                limit: 1,
                long_lease: true,
            })
            .op(Op::Fail {
                fence: seen(0),
                step: StepRef::Current,
                dead_letter: true,
                nul: false,
            })
            .op(notify(seen(0)));
            s.0.push(Box::new(move |p: &Pair| {
                set.set(p.model.tables.workflows[&1].fencing_token);
                p.request(&Op::Workflow(0))
            }));
            s.op(Op::Requeue {
                wf: 0,
                dead: true,
                nul: false,
            });
            s.0.push(Box::new(move |p: &Pair| {
                p.request(&notify(FenceRef::Forged {
                    wf: 0,
                    token: get.get(),
                    node: 0,
                }))
            }));
        })
        .await;
        let stale: Vec<&str> = [3, 6, 9, 12].map(|i| p.outcomes[i].as_str()).to_vec();
        assert_eq!(
            stale, ["Fenced"; 4],
            "writes after release, retry, fail, requeue:\n{}",
            p.transcript
        );
    });
}

/// A worker whose lease ended — it released it, scheduled a retry, failed the workflow, or an
/// operator requeued it — must not write afterwards with its old fence.
#[test]
fn contract_every_end_of_a_lease_fences_its_holder_out() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, _) = server.fresh(1).await;
        let hour = Duration::from_secs(3600);
        let err = json!({ "reason_code": "reverted", "message": "no" });
        s.submit(new_workflow(0, 0, false), hour).await.unwrap();
        let stale = |what: &'static str, r: dalp_engine::error::Result<bool>| {
            assert!(
                matches!(r, Err(EngineError::Fenced { .. })),
                "a write with the fence held before {what} answered {r:?}"
            )
        };
        let f = s
            .claim("n0", hour, 1, LEASE_ID)
            .await
            .unwrap()
            .remove(0)
            .fence;
        s.release(&f).await.unwrap();
        stale("release", s.notify(&f, "k", &json!(1)).await);
        let f = s
            .claim("n0", hour, 1, LEASE_ID)
            .await
            .unwrap()
            .remove(0)
            .fence;
        s.schedule_retry(&f, 0, "s0", &err, Duration::ZERO)
            .await
            .unwrap();
        stale("schedule_retry", s.notify(&f, "k", &json!(1)).await);
        let f = s
            .claim("n0", hour, 1, LEASE_ID)
            .await
            .unwrap()
            .remove(0)
            .fence;
        s.fail(&f, 0, "s0", &err, true).await.unwrap();
        stale("fail", s.notify(&f, "k", &json!(1)).await);
        let held = s
            .workflow(f.workflow_id)
            .await
            .unwrap()
            .unwrap()
            .fencing_token;
        s.requeue(f.workflow_id, "ops", "fixed").await.unwrap();
        let before = Fence { token: held, ..f };
        stale("requeue", s.notify(&before, "k", &json!(1)).await);
    });
}

/// After a failover that lost commits, a workflow id and fencing token can be handed out again:
/// a fence with the current token but another claim's lease id must write nothing.
#[test]
fn contract_a_fence_of_another_claim_with_the_same_token_is_refused() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, _) = server.fresh(1).await;
        let hour = Duration::from_secs(3600);
        s.submit(new_workflow(0, 0, false), hour).await.unwrap();
        let f = s
            .claim("n0", hour, 1, LEASE_ID)
            .await
            .unwrap()
            .remove(0)
            .fence;
        let lost = Fence {
            lease_id: LEASE_ID + 1,
            ..f.clone()
        };
        let fenced = |what: &str, r: dalp_engine::error::Result<()>| {
            assert!(
                matches!(r, Err(EngineError::Fenced { .. })),
                "{what} under another claim's lease id answered {r:?}"
            )
        };
        fenced(
            "complete_step",
            s.complete_step(&lost, 0, "s0", json!(1), None).await,
        );
        fenced("renew_lease", s.renew_lease(&lost, hour).await);
        fenced("notify", s.notify(&lost, "k", &json!(1)).await.map(|_| ()));
        s.release(&lost).await.unwrap();
        let w = s.workflow(f.workflow_id).await.unwrap().unwrap();
        assert_eq!(
            (w.current_step, w.fencing_token, w.lease_owner.as_deref()),
            (0, f.token, Some("n0")),
            "nothing changed under the other lease id"
        );
        s.complete_step(&f, 0, "s0", json!(1), None).await.unwrap();
    });
}

/// The nonce manager never hands out a nonce the chain has consumed: a released nonce (a hole) is
/// reused only at or above the chain's count, a reassignment lands at or above it, and a resync
/// never moves the counter back. Below the count, the nonce is taken on chain (by a transaction
/// of ours the database lost, or someone else's): a transaction signed at it can never be mined.
#[test]
fn contract_no_nonce_below_the_chains_count_is_handed_out() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, _) = server.fresh(1).await;
        let claims = submitted_and_claimed(&s, 3).await;
        let f: Vec<&Fence> = claims.iter().map(|c| &c.fence).collect();
        let t0 = s.create_tx(f[0], 0, &intent(0), FEES, 0).await.unwrap();
        let t1 = s.create_tx(f[1], 0, &intent(0), FEES, 0).await.unwrap();
        assert_eq!((t0.nonce, t1.nonce), (0, 1));
        for (fence, t) in [(f[0], &t0), (f[1], &t1)] {
            s.abandon_tx(fence, t.id, TxState::Cancelled, true)
                .await
                .unwrap();
        }
        // Nonces 0 and 1 released; the chain has used 0 since.
        let t2 = s.create_tx(f[2], 0, &intent(0), FEES, 1).await.unwrap();
        assert_eq!(
            t2.nonce, 1,
            "the chain's count is 1: hole 0 is consumed, hole 1 is the one to reuse"
        );
        let again = s.reassign_nonce(f[2], t2.id, 5).await.unwrap();
        assert!(
            again.nonce >= 5,
            "reassigned below the chain's count 5: {}",
            again.nonce
        );
        let counter = s.resync_nonce(signer(0), CHAIN, 3).await.unwrap();
        assert!(
            counter > again.nonce,
            "a resync to 3 moved the counter back to {counter}, at or below nonce {} in use",
            again.nonce
        );
    });
}

/// Two allocations for one signer never hand out the same nonce: an allocation waits for a
/// concurrent one holding the counter (its row lock) and then reads what that one left. Made
/// deterministic, not left to a race: a session of ours plays the concurrent engine, holds the
/// counter's lock until the store's allocation is seen waiting on a lock (`pg_locks`), then
/// takes nonce 1 and commits.
#[test]
fn contract_a_nonce_allocation_waits_for_a_concurrent_one() {
    use sqlx::Connection;
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, name) = server.fresh(2).await;
        let claims = submitted_and_claimed(&s, 2).await;
        let first = s
            .create_tx(&claims[0].fence, 0, &intent(0), FEES, 0)
            .await
            .unwrap();
        assert_eq!(first.nonce, 0);
        let mut other = sqlx::PgConnection::connect(&db_url(&server.pg, &name))
            .await
            .unwrap();
        let signer0 = format!("{:#x}", signer(0));
        sqlx::query("BEGIN").execute(&mut other).await.unwrap();
        let next: i64 = sqlx::query_scalar(
            "SELECT next_nonce FROM nonces WHERE signer = $1 AND chain_id = $2 FOR UPDATE",
        )
        .bind(&signer0)
        .bind(CHAIN as i64)
        .fetch_one(&mut other)
        .await
        .unwrap();
        assert_eq!(next, 1, "the counter after nonce 0");
        let intent0 = intent(0);
        let ours = s.create_tx(&claims[1].fence, 0, &intent0, FEES, 0);
        let theirs = async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let waiting: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
                        .fetch_one(&mut other)
                        .await
                        .unwrap();
                if waiting > 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the store's allocation never waited on a lock"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sqlx::query("UPDATE nonces SET next_nonce = 2 WHERE signer = $1 AND chain_id = $2")
                .bind(&signer0)
                .bind(CHAIN as i64)
                .execute(&mut other)
                .await
                .unwrap();
            sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        };
        let (ours, ()) = tokio::join!(ours, theirs);
        let ours = ours.unwrap();
        assert_eq!(
            ours.nonce, 2,
            "nonce 1 was taken by the concurrent allocation; the store handed it out again"
        );
    });
}

/// Requeueing a workflow that does not exist is `NotFound` (HTTP 404), not a bad request; the
/// refusal is audited.
#[test]
fn contract_requeue_of_an_unknown_workflow_is_not_found() {
    runtime().block_on(async {
        let server = Server::start().await;
        let (s, _) = server.fresh(1).await;
        let e = s.requeue(MISSING_ID, "ops", "typo").await.unwrap_err();
        assert_eq!(
            (e.clone(), e.http_status()),
            (
                EngineError::NotFound(format!("workflow {MISSING_ID} does not exist")),
                404
            )
        );
        let log = s.audit_log(10).await.unwrap();
        assert_eq!(log[0].outcome, "rejected: workflow is unknown");
    });
}
