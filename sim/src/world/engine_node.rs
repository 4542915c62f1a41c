//! Engine hosts: each runs the engine's worker, maintenance and (where configured) indexer loops
//! exactly as the `dalp-engine` binary does, built from a TOML configuration through
//! `Config::from_toml`, plus an API server that takes the same requests as the HTTP API and calls
//! the same engine methods. A restart re-runs all of this from scratch, like a new process.

use super::chain_node::{endpoint_url, SimTransport};
use super::db_node::NetDb;
use super::net::serve;
use super::{engine_addr, epoch_ms, t_ms};
use crate::db::StoreOver;
use crate::trace::Trace;
use dalp_engine::clock::Clock;
use dalp_engine::config::Config;
use dalp_engine::engine::Accepted;
use dalp_engine::Engine;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine_conf::{engine_toml, EngineConf};
pub use crate::engine_conf::{CHAIN_ID, SIGNER_KEY};

/// A node's wall clock: the simulated clock plus a skew the injector can change.
pub struct SimClock {
    pub skew_ms: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        (epoch_ms() as i64)
            .saturating_add(self.skew_ms.load(Ordering::Relaxed))
            .max(0) as u64
    }
}

/// Per-host state that outlives a process: its clock skew (the host's, not the process's) and
/// how many times the process started (feeds the retry jitter seed, as a new PID would).
#[derive(Default)]
pub struct EngineHost {
    pub skew_ms: Arc<AtomicI64>,
    pub starts: AtomicU64,
    /// A standby host (hot-warm region) starts its engine only once this is set.
    pub standby: std::sync::atomic::AtomicBool,
    pub activated: tokio::sync::Notify,
    /// The host's node, set once it is built (see `engine_process`).
    pub node: std::sync::OnceLock<madsim::task::NodeId>,
}

pub fn engine_config(
    i: usize,
    rpc_endpoints: usize,
    finality_depth: u64,
    indexer: bool,
    knobs: &crate::scenario::EngineKnobs,
) -> Config {
    let endpoints: Vec<String> = (0..rpc_endpoints).map(endpoint_url).collect();
    let text = engine_toml(&EngineConf {
        index: i,
        database_url: "postgres://dalp@db.service:5432/dalp",
        rpc_endpoints: &endpoints,
        finality_depth,
        indexer,
        listen: None,
        knobs,
    });
    Config::from_toml(&text, &format!("engine-{i} (generated)"))
        .expect("generated engine config is valid")
}

pub enum ApiRequest {
    Submit {
        kind: String,
        key: String,
        input: Value,
    },
    Status {
        id: i64,
    },
    /// `GET /metrics`: the instance's Prometheus text, as production serves it.
    Metrics,
    /// `GET /v1/dead-letters` (operator).
    DeadLetters,
    /// `POST /v1/dead-letters/{id}/requeue` (operator).
    Requeue {
        id: i64,
        actor: String,
        reason: String,
    },
}

pub enum ApiResponse {
    Accepted(Accepted),
    Rejected {
        status: u16,
        error: String,
    },
    Status {
        /// The request's idempotency key (a careful client checks it: after an asynchronous
        /// failover the id it was given may name another request's workflow).
        key: String,
        status: String,
        result: Option<Value>,
        error: Option<Value>,
    },
    NotFound,
    /// Prometheus text exposition (answer to [`ApiRequest::Metrics`]).
    Metrics(String),
    DeadLetters(Vec<i64>),
    Requeued,
}

/// Engine host `i`'s process.
pub async fn engine_process(
    i: usize,
    config: Config,
    host: Arc<EngineHost>,
    seed: u64,
    trace: Trace,
) {
    // A standby engine waits (no process, no API) until a region failover activates it.
    while host.standby.load(Ordering::Relaxed) {
        let activated = host.activated.notified();
        if !host.standby.load(Ordering::Relaxed) {
            break;
        }
        activated.await;
    }
    let start = host.starts.fetch_add(1, Ordering::Relaxed);
    let name = format!("engine-{i}");
    let db = NetDb::connect(super::ip(1, i), config.db_timeout());
    let store = Arc::new(StoreOver(db));
    let transport = Arc::new(SimTransport::new(
        super::ip(1, i),
        config.rpc_endpoints.len(),
    ));
    let clock = Arc::new(SimClock {
        skew_ms: host.skew_ms.clone(),
    });
    let jitter_seed = seed ^ ((i as u64 + 1) << 32) ^ start.wrapping_mul(0x9E37_79B9);
    let engine = Engine::new(config, store, transport, clock, jitter_seed);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let _tasks = engine.start(shutdown_rx);
    trace.record(t_ms(), &name, "engine", "started", json!({"start": start}));
    serve(engine_addr(i), move |req: ApiRequest, _from: SocketAddr| {
        let engine = engine.clone();
        async move { Some(handle_api(&engine, req).await) }
    })
    .await;
    drop(shutdown_tx);
}

async fn handle_api(engine: &Engine, req: ApiRequest) -> ApiResponse {
    match req {
        ApiRequest::Metrics => ApiResponse::Metrics(engine.metrics.render()),
        ApiRequest::DeadLetters => match engine.store.dead_letters(1000).await {
            Ok(d) => ApiResponse::DeadLetters(d.iter().map(|x| x.workflow_id).collect()),
            Err(e) => ApiResponse::Rejected {
                status: e.http_status(),
                error: e.to_string(),
            },
        },
        ApiRequest::Requeue { id, actor, reason } => {
            match engine.requeue(id, &actor, &reason).await {
                Ok(_) => ApiResponse::Requeued,
                Err(e) => ApiResponse::Rejected {
                    status: e.http_status(),
                    error: e.to_string(),
                },
            }
        }
        ApiRequest::Submit { kind, key, input } => match engine.submit(&kind, &key, input).await {
            Ok(a) => ApiResponse::Accepted(a),
            Err(e) => ApiResponse::Rejected {
                status: e.http_status(),
                error: e.to_string(),
            },
        },
        ApiRequest::Status { id } => match engine.store.workflow(id).await {
            Ok(Some(wf)) => ApiResponse::Status {
                key: wf.idempotency_key,
                status: wf.status.as_str().to_string(),
                result: wf.result,
                error: wf.error,
            },
            Ok(None) => ApiResponse::NotFound,
            Err(e) => ApiResponse::Rejected {
                status: e.http_status(),
                error: e.to_string(),
            },
        },
    }
}
