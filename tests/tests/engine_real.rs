//! Integration tests of the engine against real PostgreSQL and a real Anvil node, through the
//! real `dalp-engine` binary and its HTTP API. Effects are counted on the chain itself.

use alloy_primitives::{Address, U256};
use dalp_integration::chain::ChainView;
use dalp_integration::*;
use serde_json::{json, Value};
use sqlx::Row;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(120);

struct World {
    pg: Postgres,
    anvil: Anvil,
    chain: ChainView,
}

async fn world() -> World {
    let pg = Postgres::start().await.expect("start PostgreSQL");
    let anvil = Anvil::start(1).await.expect("start Anvil");
    let chain = ChainView::new(&anvil.url());
    World { pg, anvil, chain }
}

fn signer() -> Address {
    SIGNER_ADDR.parse().unwrap()
}

async fn db(pg: &Postgres) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url())
        .await
        .expect("connect to test database")
}

async fn submit_ok(engine: &EngineProcess, kind: &str, key: &str, input: &Value) -> i64 {
    let (code, body) = engine.submit(kind, key, input).await.expect("submit");
    assert_eq!(code, 202, "submit {kind}: {body}");
    body["workflow_id"].as_i64().expect("workflow id")
}

async fn completed(engine: &EngineProcess, id: i64) -> Value {
    let s = wait_terminal(engine, id, BOUND).await.expect("terminal");
    assert_eq!(
        s["status"],
        "completed",
        "workflow {id}: {s}\nengine log tail:\n{}",
        tail(&engine.log_text())
    );
    s
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn issue(engine: &EngineProcess, symbol: &str, supply: u64) -> Address {
    let id = submit_ok(
        engine,
        "issuance",
        &format!("issue-{symbol}"),
        &issuance_input(symbol, supply),
    )
    .await;
    let s = completed(engine, id).await;
    s["result"]["token"]
        .as_str()
        .expect("token in result")
        .parse()
        .unwrap()
}

/// The private key must appear nowhere an operator or client can read.
async fn assert_no_secret(engine: &EngineProcess) {
    let key = SIGNER_KEY.trim_start_matches("0x");
    assert!(
        !engine.log_text().to_lowercase().contains(key),
        "private key in the engine log"
    );
    assert!(
        !engine.metrics().await.unwrap().contains(key),
        "private key in /metrics"
    );
    let (_, health) = engine.get("/health", "").await.unwrap();
    assert!(!health.to_string().contains(key), "private key in /health");
    let (_, dl) = engine
        .get("/v1/dead-letters", OPERATOR_TOKEN)
        .await
        .unwrap();
    assert!(
        !dl.to_string().contains(key),
        "private key in the dead-letter list"
    );
}

/// Every nonce of the signer was used exactly once, in order, and every mined transaction is one
/// the engine meant (no gaps, no duplicates).
fn assert_nonces_dense(txs: &[chain::MinedTx]) {
    let nonces: Vec<u64> = txs.iter().map(|t| t.nonce).collect();
    let expected: Vec<u64> = (0..txs.len() as u64).collect();
    assert_eq!(nonces, expected, "signer nonces must be dense and unique");
}

async fn wait_indexed(pool: &sqlx::PgPool, block: u64) {
    let start = std::time::Instant::now();
    loop {
        let last: Option<i64> = sqlx::query("SELECT last_block FROM indexer_checkpoint")
            .fetch_optional(pool)
            .await
            .unwrap()
            .map(|r| r.get(0));
        if last.is_some_and(|l| l as u64 >= block) {
            return;
        }
        assert!(
            start.elapsed() < BOUND,
            "indexer did not reach block {block}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_completes_end_to_end_and_indexed_balances_match_chain() {
    let w = world().await;
    let engine = EngineProcess::start(EngineSpec::new("node-a", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    let supply = 1_000_000u64;
    let token = issue(&engine, "ISS", supply).await;

    // On chain: deployed, compliance configured, supply minted to the issuer, investor registered.
    assert_eq!(
        w.chain.total_supply(token).await.unwrap(),
        U256::from(supply)
    );
    assert_eq!(
        w.chain.balance_of(token, signer()).await.unwrap(),
        U256::from(supply)
    );
    let txs = w.chain.mined_from(signer()).await.unwrap();
    assert_eq!(txs.len(), 4, "deploy, configure, mint, register: {txs:?}");
    assert!(txs[0].to.is_none() && txs[1..].iter().all(|t| t.to == Some(token)));
    assert!(txs.iter().all(|t| t.success));
    assert_nonces_dense(&txs);

    // Indexed state equals chain state.
    let pool = db(&w.pg).await;
    let head = w.chain.head().await.unwrap();
    wait_indexed(&pool, head).await;
    let rows = sqlx::query(
        "SELECT holder, balance::text FROM token_balances WHERE contract = $1 AND balance <> 0",
    )
    .bind(format!("{token:#x}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    for r in rows {
        let holder: Address = r.get::<String, _>(0).parse().unwrap();
        let indexed = U256::from_str_radix(&r.get::<String, _>(1), 10).unwrap();
        assert_eq!(
            indexed,
            w.chain.balance_of(token, holder).await.unwrap(),
            "indexed balance of {holder}"
        );
    }
    let notified: i64 = sqlx::query("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(notified, 1);
    assert_no_secret(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_rejected_by_compliance_fails_closed_without_a_transaction() {
    let w = world().await;
    let engine = EngineProcess::start(EngineSpec::new("node-a", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    let token = issue(&engine, "FCL", 500).await;
    let before = w.chain.mined_from(signer()).await.unwrap().len();

    // OTHER_ADDR has no registered identity: canTransfer is false.
    let input = json!({"token": token, "to": OTHER_ADDR, "amount": "10"});
    let id = submit_ok(&engine, "transfer", "xfer-blocked", &input).await;
    let s = wait_terminal(&engine, id, BOUND).await.unwrap();
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["error"]["reason_code"], "compliance_rejected", "{s}");
    assert_eq!(
        s["transactions"].as_array().unwrap().len(),
        0,
        "no transaction may be prepared"
    );

    // Give a wrongly sent transaction time to be mined before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.chain.mined_from(signer()).await.unwrap().len(),
        before,
        "no transaction sent"
    );
    assert_eq!(
        w.chain
            .balance_of(token, OTHER_ADDR.parse().unwrap())
            .await
            .unwrap(),
        U256::ZERO
    );

    // The allowed transfer (to the registered investor) goes through.
    let ok = submit_ok(
        &engine,
        "transfer",
        "xfer-ok",
        &json!({"token": token, "to": INVESTOR_ADDR, "amount": "10"}),
    )
    .await;
    completed(&engine, ok).await;
    assert_eq!(
        w.chain
            .balance_of(token, INVESTOR_ADDR.parse().unwrap())
            .await
            .unwrap(),
        U256::from(10)
    );
    assert_no_secret(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_returns_same_result_and_sends_nothing_new() {
    let w = world().await;
    let engine = EngineProcess::start(EngineSpec::new("node-a", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    let token = issue(&engine, "IDM", 100).await;
    let before = w.chain.mined_from(signer()).await.unwrap().len();

    let input = json!({"token": token, "to": SIGNER_ADDR, "amount": "7"});
    let id = submit_ok(&engine, "mint", "mint-once", &input).await;
    // A retry while the first is in flight attaches to it.
    let (code, again) = engine.submit("mint", "mint-once", &input).await.unwrap();
    assert_eq!(
        (code, again["workflow_id"].as_i64()),
        (200, Some(id)),
        "{again}"
    );
    assert_eq!(again["created"], false);
    let first = completed(&engine, id).await;

    // A retry after completion returns the recorded result.
    let (code, after) = engine.submit("mint", "mint-once", &input).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(after["workflow_id"].as_i64(), Some(id));
    assert_eq!(after["status"], "completed");
    assert_eq!(after["result"], first["result"]);

    // The same key for a different request is refused.
    let (code, body) = engine
        .submit(
            "mint",
            "mint-once",
            &json!({"token": token, "to": SIGNER_ADDR, "amount": "8"}),
        )
        .await
        .unwrap();
    assert_eq!(code, 422, "{body}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let txs = w.chain.mined_from(signer()).await.unwrap();
    assert_eq!(
        txs.len(),
        before + 1,
        "exactly one mint transaction on chain"
    );
    assert_eq!(w.chain.total_supply(token).await.unwrap(), U256::from(107));
    assert_nonces_dense(&txs);
}

/// Submit `n` issuances named `{prefix}{i}`, each minting `supply`.
async fn submit_issuances(engine: &EngineProcess, prefix: &str, n: usize, supply: u64) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let input = issuance_input(&format!("{prefix}{i}"), supply);
        ids.push(submit_ok(engine, "issuance", &format!("{prefix}-{i}"), &input).await);
    }
    ids
}

/// Wait until at least one workflow has completed a step past the first but not all finished.
async fn wait_mid_flight(engine: &EngineProcess, ids: &[i64]) {
    let start = std::time::Instant::now();
    loop {
        let mut progressed = false;
        for id in ids {
            if let Ok(s) = engine.status(*id).await {
                let step = s["current_step"].as_i64().unwrap_or(0);
                progressed |= step >= 2 && s["status"] != "completed";
            }
        }
        if progressed {
            return;
        }
        assert!(
            start.elapsed() < BOUND,
            "no workflow was ever seen mid-flight: the fault would hit nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_issuances_exact(w: &World, engine: &EngineProcess, ids: &[i64], supply: u64) {
    let mut tokens = Vec::new();
    for id in ids {
        let s = completed(engine, *id).await;
        tokens.push(
            s["result"]["token"]
                .as_str()
                .unwrap()
                .parse::<Address>()
                .unwrap(),
        );
    }
    let txs = w.chain.mined_from(signer()).await.unwrap();
    assert_eq!(
        txs.len(),
        4 * ids.len(),
        "exactly one transaction per transaction step: {:#?}",
        txs.iter()
            .map(|t| (&t.hash, t.nonce, t.to))
            .collect::<Vec<_>>()
    );
    assert_nonces_dense(&txs);
    assert_eq!(
        txs.iter().filter(|t| t.to.is_none()).count(),
        ids.len(),
        "one deployment per issuance"
    );
    for token in tokens {
        assert_eq!(
            txs.iter().filter(|t| t.to == Some(token)).count(),
            3,
            "configure, mint, register on {token}"
        );
        assert_eq!(
            w.chain.total_supply(token).await.unwrap(),
            U256::from(supply),
            "supply of {token} minted once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_workflow_then_restart_resumes_with_exactly_one_tx_per_step() {
    let w = world().await;
    let mut engine = EngineProcess::start(EngineSpec::new("node-a", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    let ids = submit_issuances(&engine, "CR", 4, 1000).await;
    // Two crashes at different points of the run.
    wait_mid_flight(&engine, &ids).await;
    engine.kill9();
    engine.restart().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    engine.kill9();
    engine.restart().await.unwrap();
    assert_issuances_exact(&w, &engine, &ids, 1000).await;
    assert_no_secret(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_killed_other_node_takes_over_without_duplicates() {
    let w = world().await;
    let mut a = EngineProcess::start(EngineSpec::new("node-a", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    let ids = submit_issuances(&a, "LS", 3, 500).await;
    wait_mid_flight(&a, &ids).await;
    // node-a holds the leases; it dies without releasing them.
    a.kill9();
    let pool = db(&w.pg).await;
    let held: i64 = sqlx::query(
        "SELECT count(*) FROM workflows WHERE lease_owner = 'node-a' AND lease_expires_at > now()",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert!(held > 0, "node-a should hold live leases when killed");
    let b = EngineProcess::start(EngineSpec::new("node-b", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    assert_issuances_exact(&w, &b, &ids, 500).await;

    // node-b finished what node-a started, under newer fencing tokens.
    for id in &ids {
        let rows = sqlx::query("SELECT node, fencing_token FROM journal WHERE workflow_id = $1 AND event = 'completed' ORDER BY seq")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
        let nodes: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        assert!(
            nodes.contains(&"node-b".to_string()),
            "workflow {id}: {nodes:?}"
        );
        assert!(
            tokens.windows(2).all(|p| p[0] <= p[1]),
            "fencing tokens never go back: {tokens:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_loses_nothing() {
    let mut w = world().await;
    let engine = EngineProcess::start(EngineSpec::new("node-a", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    let ids = submit_issuances(&engine, "PG", 3, 700).await;
    wait_mid_flight(&engine, &ids).await;
    w.pg.restart().await.unwrap();
    assert_issuances_exact(&w, &engine, &ids, 700).await;
    // Every accepted request is still there.
    let pool = db(&w.pg).await;
    let n: i64 = sqlx::query("SELECT count(*) FROM workflows")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ids.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_dead_letters_and_operator_requeue_completes_it() {
    let w = world().await;
    let engine = EngineProcess::start(EngineSpec::new("node-a", &w.pg.url(), &w.anvil.url()))
        .await
        .unwrap();
    let token = issue(&engine, "DLQ", 100).await;
    let before = w.chain.mined_from(signer()).await.unwrap().len();

    // Minting to an account without identity reverts: permanent, so dead-lettered, nothing sent.
    let id = submit_ok(
        &engine,
        "mint",
        "mint-unverified",
        &json!({"token": token, "to": OTHER_ADDR, "amount": "5"}),
    )
    .await;
    let s = wait_terminal(&engine, id, BOUND).await.unwrap();
    assert_eq!(s["status"], "dead_letter", "{s}");
    assert_eq!(s["error"]["reason_code"], "reverted");
    let (code, _) = engine.get("/v1/dead-letters", API_TOKEN).await.unwrap();
    assert_eq!(
        code, 403,
        "the client token cannot read the dead-letter queue"
    );
    let (code, dl) = engine
        .get("/v1/dead-letters", OPERATOR_TOKEN)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let entry = dl["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["workflow_id"] == id)
        .cloned()
        .expect("listed");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("identity not verified"),
        "{entry}"
    );
    assert_eq!(
        w.chain.mined_from(signer()).await.unwrap().len(),
        before,
        "nothing sent for a failing pre-flight"
    );

    // Requeue before the cause is removed is possible but would fail again; remove it first.
    let reg = submit_ok(
        &engine,
        "register_identity",
        "reg-other",
        &json!({"token": token, "account": OTHER_ADDR, "country": 56}),
    )
    .await;
    completed(&engine, reg).await;
    let (code, body) = engine
        .post(
            &format!("/v1/dead-letters/{id}/requeue"),
            API_TOKEN,
            &json!({"reason": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(code, 403, "{body}");
    // The shared operator token cannot act as alice (400): the actor is the credential's name.
    for (token, expect) in [(OPERATOR_TOKEN, 400), (ALICE_TOKEN, 200)] {
        let (code, body) = engine
            .post(
                &format!("/v1/dead-letters/{id}/requeue"),
                token,
                &json!({"reason": "identity registered", "operator": "alice"}),
            )
            .await
            .unwrap();
        assert_eq!(code, expect, "{body}");
    }
    completed(&engine, id).await;
    assert_eq!(
        w.chain
            .balance_of(token, OTHER_ADDR.parse().unwrap())
            .await
            .unwrap(),
        U256::from(5)
    );

    let pool = db(&w.pg).await;
    let audit = sqlx::query(
        "SELECT actor, action, args->>'workflow_id', reason, outcome FROM audit_log ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 1);
    let r = &audit[0];
    assert_eq!(
        (
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2),
            r.get::<String, _>(3),
            r.get::<String, _>(4)
        ),
        (
            "alice".into(),
            "requeue".into(),
            id.to_string(),
            "identity registered".into(),
            "ok".into()
        )
    );
    // A second requeue of a completed workflow is refused, and audited as such.
    let (code, _) = engine
        .post(
            &format!("/v1/dead-letters/{id}/requeue"),
            OPERATOR_TOKEN,
            &json!({"reason": "again"}),
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
    let outcomes: Vec<String> = sqlx::query("SELECT outcome FROM audit_log ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(outcomes[1].starts_with("rejected"), "{outcomes:?}");
    assert_no_secret(&engine).await;
}
