//! The HTTP API over an in-memory store (the simulation's database model, `LocalDb`): routes and
//! their checks through `tower::ServiceExt::oneshot`, the server's timeouts and connection limit
//! over real TCP (`api::serve`). No PostgreSQL or chain: the handlers under test reach neither.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use dalp_engine::chain::http::HttpTransport;
use dalp_engine::clock::SystemClock;
use dalp_engine::config::Config;
use dalp_engine::error::Result;
use dalp_engine::Engine;
use dalp_integration::{EngineSpec, ALICE_TOKEN, API_TOKEN, INVESTOR_ADDR, OPERATOR_TOKEN};
use dalp_sim::db::model::{DbReply, DbRequest};
use dalp_sim::db::{DbCall, LocalDb, StoreOver};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// `LocalDb` that counts the requests it is sent, by kind (`stats`, `submit`, …).
#[derive(Default)]
struct Counting {
    db: LocalDb,
    seen: Mutex<BTreeMap<&'static str, usize>>,
}

impl Counting {
    fn count(&self, kind: &str) -> usize {
        self.seen.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.seen.lock().unwrap().values().sum()
    }
}

#[async_trait::async_trait]
impl DbCall for Counting {
    async fn call(&self, req: DbRequest) -> Result<DbReply> {
        *self.seen.lock().unwrap().entry(req.name()).or_default() += 1;
        self.db.apply(&req)
    }
}

/// The integration tests' engine configuration (alice included), plus `extra`.
fn config(extra: &str) -> Config {
    let spec = EngineSpec::new("api-test", "postgres://unused", "http://127.0.0.1:9");
    Config::from_toml(&format!("{}\n{extra}", spec.toml("127.0.0.1:0")), "test")
        .expect("test config")
}

fn new_engine(extra: &str) -> (Arc<Engine>, Arc<Counting>) {
    let db = Arc::new(Counting::default());
    let engine = Engine::new(
        config(extra),
        Arc::new(StoreOver(db.clone())),
        Arc::new(HttpTransport::new(Duration::from_secs(1))),
        Arc::new(SystemClock),
        1,
    );
    (engine, db)
}

/// One request through the router: (status, JSON body or the text as a string).
async fn call(
    engine: &Arc<Engine>,
    method: &str,
    uri: &str,
    headers: &[(&str, &[u8])],
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, axum::http::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = dalp_engine::api::router(engine.clone())
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

/// An authenticated GET.
async fn get(engine: &Arc<Engine>, uri: &str, token: &str) -> (StatusCode, Value) {
    let auth = bearer(token);
    call(engine, "GET", uri, &[("authorization", &auth)], vec![]).await
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

fn mint() -> String {
    json!({"token": INVESTOR_ADDR, "to": INVESTOR_ADDR, "amount": "5"}).to_string()
}

#[tokio::test]
async fn an_unauthenticated_caller_gets_401_before_its_path_or_body_is_read() {
    let (engine, db) = new_engine("");
    let big = vec![b'x'; 2 * 1024 * 1024];
    for (method, uri, body) in [
        ("POST", "/v1/workflows/issuance", big.clone()),
        ("POST", "/v1/workflows/issuance", b"not json".to_vec()),
        ("GET", "/v1/workflows/id/not-a-number", vec![]),
        ("POST", "/v1/dead-letters/xyz/requeue", big.clone()),
        ("GET", "/v1/stats", vec![]),
    ] {
        let (code, body) = call(&engine, method, uri, &[], body).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
        let (code, _) = call(
            &engine,
            method,
            uri,
            &[("authorization", b"Bearer wrong-token")],
            vec![],
        )
        .await;
        assert_eq!(
            code,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} with a wrong token"
        );
    }
    assert_eq!(
        db.total(),
        0,
        "the database was reached without authentication"
    );
    // Authenticated, the same requests meet the body limit and the JSON check.
    let auth = bearer(API_TOKEN);
    let key: &[(&str, &[u8])] = &[("authorization", &auth), ("idempotency-key", b"k1")];
    let (code, body) = call(&engine, "POST", "/v1/workflows/mint", key, big).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (code, body) = call(&engine, "POST", "/v1/workflows/mint", key, "not json").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("request body"),
        "{body}"
    );
    // The client token does not open operator routes.
    let (code, _) = get(&engine, "/v1/dead-letters", API_TOKEN).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let (engine, _) = new_engine("");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {API_TOKEN}").into_bytes();
        let h: &[(&str, &[u8])] = &[("authorization", &auth)];
        let (code, body) = call(&engine, "GET", "/v1/stats", h, vec![]).await;
        assert_eq!(code, StatusCode::OK, "{scheme}: {body}");
    }
}

#[tokio::test]
async fn health_is_cheap_and_the_statistics_need_a_token() {
    let (engine, db) = new_engine("[http]\nhealth_cache_ms = 60000\n");
    for _ in 0..50 {
        let (code, body) = call(&engine, "GET", "/health", &[], vec![]).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["database"], "ok");
    }
    assert_eq!(db.count("stats"), 0, "/health ran the workflows aggregate");
    // A fresh router has a fresh cache: one database round trip per router, not per call.
    assert!(db.total() <= 50, "{:?}", db.seen.lock().unwrap());
    let (engine2, db2) = new_engine("[http]\nhealth_cache_ms = 60000\n");
    let router = dalp_engine::api::router(engine2.clone());
    for _ in 0..50 {
        let req = Request::get("/health").body(Body::empty()).unwrap();
        assert_eq!(
            router.clone().oneshot(req).await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(db2.total(), 1, "{:?}", db2.seen.lock().unwrap());
    // The statistics moved behind authentication.
    let (code, _) = call(&engine, "GET", "/v1/stats", &[], vec![]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, body) = get(&engine, "/v1/stats", ALICE_TOKEN).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"active": 0, "dead_letter": 0, "stalled": 0}));
    assert_eq!(db.count("stats"), 1);
}

/// A dead-lettered mint, straight through the store.
async fn dead_letter(engine: &Arc<Engine>) -> i64 {
    let accepted = engine
        .submit("mint", "dl-1", serde_json::from_str(&mint()).unwrap())
        .await
        .unwrap();
    let claim = engine
        .store
        .claim("n", Duration::from_secs(10), 1, 1)
        .await
        .unwrap();
    let fence = &claim[0].fence;
    engine
        .store
        .fail(fence, 0, "mint", &json!({"error": "test"}), true)
        .await
        .unwrap();
    accepted.workflow_id
}

#[tokio::test]
async fn the_audited_actor_is_the_credentials_name() {
    let (engine, _) = new_engine("");
    let id = dead_letter(&engine).await;
    let uri = format!("/v1/dead-letters/{id}/requeue");
    let alice = bearer(ALICE_TOKEN);
    let auth: &[(&str, &[u8])] = &[("authorization", &alice)];
    // The body cannot change the actor.
    let body = json!({"reason": "fixed", "operator": "mallory"}).to_string();
    let (code, body) = call(&engine, "POST", &uri, auth, body).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("mallory") && msg.contains("alice"), "{msg}");
    // Bounded text, no NUL.
    for bad in [
        json!({"reason": "r".repeat(501)}),
        json!({"reason": "ok", "comment": "c".repeat(501)}),
        json!({"reason": "a\u{0}b"}),
        json!({"reason": "  "}),
    ] {
        let (code, body) = call(&engine, "POST", &uri, auth, bad.to_string()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let ok = json!({"reason": "fixed", "comment": "ticket 42", "operator": "alice"});
    let (code, body) = call(&engine, "POST", &uri, auth, ok.to_string()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let audit = engine.store.audit_log(10).await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].actor, "alice");
    assert_eq!(audit[0].reason, "fixed (comment: ticket 42)");
    // The shared token still works, as the credential named `operator`.
    let shared = bearer(OPERATOR_TOKEN);
    let again = json!({"reason": "again"}).to_string();
    let (code, _) = call(&engine, "POST", &uri, &[("authorization", &shared)], again).await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "a pending workflow is not requeued"
    );
    let audit = engine.store.audit_log(10).await.unwrap();
    assert!(audit.iter().any(|a| a.actor == "operator"), "{audit:?}");
}

#[tokio::test]
async fn bad_input_gets_400_naming_the_field_before_the_database() {
    let (engine, db) = new_engine("");
    let auth = bearer(API_TOKEN);
    let submit = |key: &'static [u8], body: Value| {
        let (engine, auth) = (engine.clone(), auth.clone());
        async move {
            let h: &[(&str, &[u8])] = &[("authorization", &auth), ("idempotency-key", key)];
            call(&engine, "POST", "/v1/workflows/mint", h, body.to_string()).await
        }
    };
    let cases = [
        (
            json!({"token": INVESTOR_ADDR, "to": INVESTOR_ADDR, "amount": "5\u{0}"}),
            "`input.amount`",
        ),
        (
            json!({"token": INVESTOR_ADDR, "to": INVESTOR_ADDR, "amount": "5", "k\u{0}": 1}),
            "NUL",
        ),
        (
            json!({"token": INVESTOR_ADDR, "to": INVESTOR_ADDR, "amount": "1_000"}),
            "`amount`",
        ),
        (
            json!({"token": INVESTOR_ADDR, "to": INVESTOR_ADDR, "amount": " 5 "}),
            "`amount`",
        ),
        (
            json!({"token": INVESTOR_ADDR, "to": INVESTOR_ADDR, "amount": ""}),
            "`amount`",
        ),
        (
            json!({"token": INVESTOR_ADDR, "to": INVESTOR_ADDR, "amount": "0x"}),
            "`amount`",
        ),
        (
            json!({"token": INVESTOR_ADDR, "to": &INVESTOR_ADDR[2..], "amount": "5"}),
            "`to`",
        ),
        (
            json!({"token": INVESTOR_ADDR, "to": "0x70997970c51812dc3a010c7d01b50e0d17dc79C8", "amount": "5"}),
            "EIP-55",
        ),
    ];
    for (body, names) in cases {
        let (code, answer) = submit(b"k", body.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(names), "{body}: {msg}");
    }
    let (code, answer) = submit("clé".as_bytes(), serde_json::from_str(&mint()).unwrap()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("visible ASCII"),
        "{answer}"
    );
    // No key at all: refused, naming the header (a retry could not be told from a new request).
    let h: &[(&str, &[u8])] = &[("authorization", &auth)];
    let (code, answer) = call(&engine, "POST", "/v1/workflows/mint", h, mint()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{answer}"
    );
    assert_eq!(db.count("submit"), 0, "bad input reached the database");
    let (code, answer) = submit(b"good", serde_json::from_str(&mint()).unwrap()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
}

/// Serve `engine` on a fresh local port.
async fn server(engine: Arc<Engine>) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(dalp_engine::api::serve(listener, engine, stop_rx));
    (addr, stop)
}

/// Read until the peer closes (Ok: what it sent) or `bound` passes (Err).
async fn read_to_close(s: &mut TcpStream, bound: Duration) -> std::result::Result<String, String> {
    let mut got = Vec::new();
    match tokio::time::timeout(bound, s.read_to_end(&mut got)).await {
        Ok(_) => Ok(String::from_utf8_lossy(&got).into()),
        Err(_) => Err(format!(
            "still open after {bound:?}; read {:?}",
            String::from_utf8_lossy(&got)
        )),
    }
}

#[tokio::test]
async fn a_half_sent_header_is_disconnected_within_the_bound() {
    let (engine, _) = new_engine("[http]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 60000\n");
    let (addr, _stop) = server(engine).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    read_to_close(&mut s, Duration::from_secs(3)).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (engine, _) = new_engine("[http]\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 300\n");
    let (addr, _stop) = server(engine).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut s, Duration::from_secs(3)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_a_slot_frees() {
    let (engine, _) = new_engine(
        "[http]\nmax_connections = 1\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 30000\n",
    );
    let (addr, _stop) = server(engine).await;
    let first = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // accepted: it holds the one slot
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    drop(first);
    let answer = read_to_close(&mut second, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
