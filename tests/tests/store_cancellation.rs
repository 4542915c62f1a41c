//! A store call cancelled at any await (a timeout of ours, a step timeout, a dropped request)
//! never leaves a PostgreSQL session inside a transaction. Such a session keeps its row locks,
//! and `claim`'s `FOR UPDATE SKIP LOCKED` then skips that workflow for good: the real suite saw a
//! transfer stuck at step 2 for 90 s after a database-latency fault (`db-conn-lost` seed 1).
//! The cause was sqlx's `Pool::begin`, which is not cancel-safe (transact-rs/sqlx#4393).
//!
//! Nor does a call that fails inside its transaction return before its row locks are gone.

use dalp_engine::error::EngineError;
use dalp_engine::store::{pg::PgStore, NewWorkflow, Store, Submitted};
use dalp_integration::Postgres;
use dalp_real::proxy::{TcpFaultProxy, TcpMode};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn new_workflow(key: String) -> NewWorkflow {
    NewWorkflow {
        kind: "mint".into(),
        scope: "cancellation-test".into(),
        idempotency_key: key.clone(),
        request_hash: key,
        input: json!({}),
    }
}

/// Sessions of the store's pool that sit inside a transaction, polled until none is left or
/// `bound` passes (a cancelled transaction's rollback is sent when its connection is released).
async fn sessions_in_transaction(probe: &sqlx::PgPool, bound: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT state, query FROM pg_stat_activity \
             WHERE application_name = 'dalp-engine' AND state LIKE 'idle in transaction%'",
        )
        .fetch_all(probe)
        .await
        .expect("read pg_stat_activity");
        if rows.is_empty() || start.elapsed() > bound {
            return rows.into_iter().map(|(s, q)| format!("{s}: {q}")).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A migrated database; a store of one connection reaching it through a fault proxy; a direct
/// connection that watches it.
async fn store_behind_a_proxy(
    pg: &Postgres,
) -> (PgStore, std::sync::Arc<TcpFaultProxy>, sqlx::PgPool) {
    PgStore::connect(&pg.url(), 1, Duration::from_secs(5))
        .await
        .expect("migrate");
    let probe = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url())
        .await
        .expect("probe connection");
    let upstream: SocketAddr = format!("127.0.0.1:{}", pg.port).parse().unwrap();
    let proxy = TcpFaultProxy::start("pg", upstream).await.expect("proxy");
    let store = PgStore::open(
        &format!("postgres://postgres@{}/postgres", proxy.addr()),
        1,
        Duration::from_secs(5),
    )
    .expect("store");
    (store, proxy, probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_call_cancelled_at_any_await_leaves_no_session_inside_a_transaction() {
    let pg = Postgres::start().await.expect("start PostgreSQL");
    // One connection, so a poisoned one would be the next borrower's.
    let (store, proxy, probe) = store_behind_a_proxy(&pg).await;
    // 100 ms each way: each round trip takes 200 ms; cutting every 40 ms up to 1.2 s lands
    // several cuts inside each await of `submit` (acquire's ping, BEGIN, the queries, COMMIT).
    let one_way = Duration::from_millis(100);
    let mut cut_inside = 0;
    for i in 0..30u64 {
        proxy.set_mode(TcpMode::Pass);
        store
            .submit(new_workflow(format!("warm-{i}")), Duration::from_secs(3600))
            .await
            .expect("a call without faults succeeds");
        proxy.set_mode(TcpMode::Latency(one_way));
        let cut = Duration::from_millis(40 * i);
        let r = tokio::time::timeout(
            cut,
            store.submit(new_workflow(format!("cut-{i}")), Duration::from_secs(3600)),
        )
        .await;
        if r.is_err() {
            cut_inside += 1;
        }
        proxy.set_mode(TcpMode::Pass);
        let stuck = sessions_in_transaction(&probe, Duration::from_secs(3)).await;
        assert!(
            stuck.is_empty(),
            "a call cancelled after {cut:?} left a session inside a transaction: {stuck:?}"
        );
    }
    assert!(
        cut_inside >= 10,
        "only {cut_inside} calls were cut mid-flight: the latency did not take effect"
    );
    // And the pool still works, with every call's effect either committed or absent.
    proxy.set_mode(TcpMode::Pass);
    store
        .submit(new_workflow("after".into()), Duration::from_secs(3600))
        .await
        .expect("the pool recovers");
}

/// A call that fails after taking a row lock (a fenced `notify`) has rolled back when it returns,
/// so the caller's next call, on another connection, finds the workflow unlocked. sqlx only queues
/// a dropped transaction's `ROLLBACK` and sends it from a task it spawns when the connection goes
/// back to the pool. With 100 ms between the store and the server, that rollback arrives long
/// after the call returned, and a `NOWAIT` lock taken at once on a direct connection (as a claim's
/// `SKIP LOCKED` would) is refused. The store conformance suite saw the race now and then as "the
/// model claims the workflow, PostgreSQL claims nothing".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_failing_inside_its_transaction_has_released_its_locks_when_it_returns() {
    let pg = Postgres::start().await.expect("start PostgreSQL");
    let (store, proxy, probe) = store_behind_a_proxy(&pg).await;
    let hour = Duration::from_secs(3600);
    for i in 0..3 {
        proxy.set_mode(TcpMode::Pass);
        let id = match store
            .submit(new_workflow(format!("locked-{i}")), hour)
            .await
            .expect("submit")
        {
            Submitted::Created(w) => w.id,
            Submitted::Existing(w) => panic!("key {i} was new, got workflow {}", w.id),
        };
        let claimed = store.claim("n0", hour, 1, 7).await.expect("claim");
        assert_eq!(claimed.len(), 1, "round {i}: the new workflow is claimable");
        let stale = claimed[0].fence.clone();
        store.release(&stale).await.expect("release");
        proxy.set_mode(TcpMode::Latency(Duration::from_millis(100)));
        match store.notify(&stale, "kind", &json!({})).await {
            Err(EngineError::Fenced { .. }) => {}
            other => panic!("round {i}: a released fence must be refused, got {other:?}"),
        }
        let lock = sqlx::query("SELECT id FROM workflows WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(id)
            .execute(&probe)
            .await;
        assert!(
            lock.is_ok(),
            "round {i}: the row the fenced call locked was still locked after it returned: {lock:?}"
        );
    }
}
