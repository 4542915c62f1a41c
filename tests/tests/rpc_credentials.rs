//! An RPC endpoint's credentials (user and password, a key in the path, a key in the query)
//! appear nowhere outside the transport: not in `/health`, `/metrics`, the errors clients read,
//! the engine's log, or the database. Real PostgreSQL, Anvil and `dalp-engine` process.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use dalp_integration::*;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every secret part of both endpoints' URLs.
const SECRETS: [&str; 8] = [
    "aliceuser",
    "s3cr3tpw",
    "pathkey123",
    "qkey456",
    "bobuser",
    "deadpw77",
    "deadkey99",
    "deadq88",
];

/// A provider's front: JSON-RPC on any path (the key is in it), forwarded to Anvil's `/`;
/// answers 503 while `down`.
#[derive(Clone)]
struct Front {
    anvil: String,
    down: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

async fn forward(
    State(f): State<Front>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let auth = headers.contains_key("authorization");
    f.seen.lock().unwrap().push(format!("{uri} auth={auth}"));
    if f.down.load(Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    let sent = f
        .http
        .post(&f.anvil)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match sent {
        Ok(r) => (
            StatusCode::from_u16(r.status().as_u16()).unwrap(),
            r.text().await.unwrap_or_default(),
        ),
        Err(_) => (StatusCode::BAD_GATEWAY, String::new()),
    }
}

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{s} in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_credentials_appear_nowhere_outside_the_transport() {
    let pg = Postgres::start().await.expect("start PostgreSQL");
    let anvil = Anvil::start(1).await.expect("start Anvil");
    let front = Front {
        anvil: anvil.url(),
        down: Arc::new(AtomicBool::new(false)),
        seen: Arc::default(),
        http: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(front.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dead_port = free_port().unwrap();

    // A dead endpoint first (named by its URL's public part), so every call fails over from it.
    let mut spec = EngineSpec::new("node-a", &pg.url(), &anvil.url());
    spec.rpc_endpoints_toml = Some(format!(
        "['http://bobuser:deadpw77@127.0.0.1:{dead_port}/v2/deadkey99?key=deadq88', \
         {{ name = 'provider-a', url = 'http://aliceuser:s3cr3tpw@127.0.0.1:{front_port}/v3/pathkey123?apikey=qkey456' }}]"
    ));
    let engine = EngineProcess::start(spec).await.expect("start the engine");
    let (code, body) = engine
        .submit("issuance", "cred-1", &issuance_input("CRD", 10))
        .await
        .unwrap();
    assert_eq!(code, 202, "{body}");
    let id = body["workflow_id"].as_i64().unwrap();
    let s = wait_terminal(&engine, id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(s["status"], "completed", "{s}\n{}", engine.log_text());
    // The provider got its key: the transport used the whole URL.
    let seen = front.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.contains("/v3/pathkey123?apikey=qkey456") && r.ends_with("auth=true")),
        "{seen:?}"
    );

    // Every endpoint fails now: the next workflow's step error reaches the client.
    front.down.store(true, Relaxed);
    let (_, body) = engine
        .submit("issuance", "cred-2", &issuance_input("CRE", 10))
        .await
        .unwrap();
    let id = body["workflow_id"].as_i64().unwrap();
    let started = Instant::now();
    let status = loop {
        let s = engine.status(id).await.unwrap();
        if !s["error"].is_null() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no error: {s}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        status["error"]["reason_code"], "rpc_unavailable",
        "{status}"
    );
    assert_clean("a workflow's status", &status.to_string());

    let dead_name = format!("http://127.0.0.1:{dead_port}");
    let (_, health) = engine.get("/health", "").await.unwrap();
    let health = health.to_string();
    assert!(
        health.contains("provider-a") && health.contains(&dead_name),
        "{health}"
    );
    assert_clean("/health", &health);
    let metrics = engine.metrics().await.unwrap();
    assert!(
        metrics.contains("endpoint=\"provider-a\"") && metrics.contains(&dead_name),
        "{metrics}"
    );
    assert_clean("/metrics", &metrics);
    let (_, dl) = engine
        .get("/v1/dead-letters", OPERATOR_TOKEN)
        .await
        .unwrap();
    assert_clean("the dead-letter list", &dl.to_string());
    let log = engine.log_text();
    assert!(log.contains("step failed"), "{log}");
    assert_clean("the engine log", &log);

    let dump = std::process::Command::new(pg.bin("pg_dump"))
        .arg("--data-only")
        .arg(pg.url())
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("rpc unavailable"), "the dump has the errors");
    assert_clean("the database", &dump);
}
