//! `/health`: liveness and readiness at constant cost. It is open to anyone, so it must not let
//! a flood load the database: the database is checked with `Store::ping` (`SELECT 1`, bounded by
//! the database timeout) at most once per `http.health_cache_ms`, by one caller at a time; the
//! others get the cached answer. Workflow statistics are behind authentication (`/v1/stats`).

use crate::engine::Engine;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The last database check: when, and whether the database answered.
#[derive(Default)]
pub struct HealthCache(Mutex<Option<(Instant, bool)>>);

impl HealthCache {
    /// Whether the database answered a ping within the last `max_age`, pinging if the cached
    /// answer is older. The lock is held across the ping: concurrent callers wait for it
    /// (bounded by the ping's timeout) instead of each sending one.
    async fn database_ok(&self, engine: &Engine, max_age: Duration) -> bool {
        let mut last = self.0.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < max_age {
                return ok;
            }
        }
        let bound = engine.config.db_timeout();
        let ok = matches!(
            tokio::time::timeout(bound, engine.store.ping()).await,
            Ok(Ok(()))
        );
        *last = Some((Instant::now(), ok));
        ok
    }
}

pub async fn health(State(state): State<super::ApiState>) -> Response {
    let engine = &state.engine;
    let max_age = Duration::from_millis(engine.config.http.health_cache_ms);
    let db_ok = state.health.database_ok(engine, max_age).await;
    let rpc = engine.gateway.health();
    let rpc_ok = rpc.iter().any(|e| e.healthy);
    let body = json!({
        "node_id": engine.config.node_id,
        "database": if db_ok { "ok" } else { "unavailable" },
        "rpc": rpc,
        "status": if db_ok && rpc_ok { "ok" } else { "degraded" },
    });
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Keeps `Arc<Engine>` handlers' `State` extractor working next to the cache.
impl axum::extract::FromRef<super::ApiState> for Arc<Engine> {
    fn from_ref(s: &super::ApiState) -> Arc<Engine> {
        s.engine.clone()
    }
}
