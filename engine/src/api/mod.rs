//! The HTTP API of the production binary (axum). Not compiled in the simulation flavour.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` (`auth.rs`, checked before the path
//! or body is looked at): client routes the api token or an operator credential, operator routes
//! (dead letters, requeue) an operator credential, whose name is the audited actor. `/health`
//! (constant cost, `health.rs`) and `/metrics` are open for probes and scrapers and reveal no
//! secret. The server's timeouts and connection limit are in `serve.rs`.

mod auth;
mod health;
mod serve;

pub use auth::bearer;
pub use serve::serve;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::store::WorkflowId;
use auth::Operator;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Longest requeue `reason` and `comment`, in characters (they go into the audit log).
pub const MAX_REASON: usize = 500;

/// What the handlers share: the engine and `/health`'s cached database check.
#[derive(Clone)]
pub struct ApiState {
    engine: Arc<Engine>,
    health: Arc<health::HealthCache>,
}

pub fn router(engine: Arc<Engine>) -> Router {
    let http = engine.config.http.clone();
    let client = Router::new()
        .route("/v1/workflows/{kind}", post(submit))
        .route("/v1/workflows/id/{id}", get(status))
        .route("/v1/stats", get(stats))
        .route_layer(from_fn_with_state(engine.clone(), auth::client));
    let operator = Router::new()
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/{id}/requeue", post(requeue))
        .route_layer(from_fn_with_state(engine.clone(), auth::operator));
    let state = ApiState {
        engine,
        health: Default::default(),
    };
    Router::new()
        .merge(client)
        .merge(operator)
        .route("/health", get(health::health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
        .layer(from_fn_with_state(
            Duration::from_millis(http.request_timeout_ms),
            request_timeout,
        ))
        .with_state(state)
}

/// Bounds a request's handling; past the bound the caller gets 503 (its work, if any was
/// accepted, continues durably: a submission is idempotent by its key).
async fn request_timeout(State(bound): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(bound, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!("request not handled within {} ms", bound.as_millis())}),
        )
        .into_response(),
    }
}

struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError(
            status,
            json!({"error": e.to_string(), "reason_code": e.reason_code()}),
        )
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, json!({"error": msg.into()}))
}

/// A JSON body, with a 400 naming what is wrong (axum's `Json` would answer 415/422).
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("request body: {e}")))
}

async fn submit(
    State(engine): State<Arc<Engine>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => return Err(bad_request("the Idempotency-Key header is required")),
        Some(v) => v.to_str().map_err(|_| {
            bad_request("Idempotency-Key: only visible ASCII characters (0x20 to 0x7E) are allowed")
        })?,
    };
    let input: Value = json_body(&body)?;
    let accepted = engine.submit(&kind, key, input).await?;
    let code = if accepted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(json!(accepted))).into_response())
}

async fn status(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<WorkflowId>,
) -> Result<Json<Value>, ApiError> {
    let wf = engine.store.workflow(id).await?.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no workflow {id}")}),
        )
    })?;
    let txs: Vec<Value> = engine
        .store
        .txs_for_workflow(id)
        .await?
        .iter()
        .map(|t| json!({"step": t.step_index, "state": t.state, "nonce": t.nonce, "tx_hash": t.hash, "versions": t.broadcasts.len()}))
        .collect();
    let steps = crate::workflow::steps(&wf.kind).unwrap_or(&[]);
    Ok(Json(json!({
        "workflow_id": wf.id, "kind": wf.kind, "idempotency_key": wf.idempotency_key, "status": wf.status, "current_step": wf.current_step,
        "current_step_name": steps.get(wf.current_step as usize), "steps": steps,
        "attempts": wf.attempts, "result": wf.result, "error": wf.error, "transactions": txs,
    })))
}

/// Workflow counts: a full-table aggregate, so authenticated (it used to run on every `/health`).
async fn stats(State(engine): State<Arc<Engine>>) -> Result<Json<Value>, ApiError> {
    let stalled_after = Duration::from_millis(engine.config.worker.stalled_after_ms);
    let s = engine.store.stats(stalled_after).await?;
    Ok(Json(
        json!({"active": s.active, "dead_letter": s.dead_letter, "stalled": s.stalled}),
    ))
}

async fn dead_letters(State(engine): State<Arc<Engine>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"dead_letters": engine.store.dead_letters(500).await?}),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    reason: String,
    /// Free text added to the audit record.
    #[serde(default)]
    comment: Option<String>,
    /// Accepted only when it names the authenticated operator (older clients send it); the
    /// actor is always the credential's name.
    #[serde(default)]
    operator: Option<String>,
}

/// `field` is not blank (if `required`), at most [`MAX_REASON`] characters, and has no NUL.
fn audit_text(field: &str, v: &str, required: bool) -> Result<(), ApiError> {
    if required && v.trim().is_empty() {
        return Err(bad_request(format!("`{field}` is required")));
    }
    if v.chars().count() > MAX_REASON {
        return Err(bad_request(format!(
            "`{field}`: longer than {MAX_REASON} characters"
        )));
    }
    if v.contains('\0') {
        return Err(bad_request(format!("`{field}`: contains a NUL character")));
    }
    Ok(())
}

async fn requeue(
    State(engine): State<Arc<Engine>>,
    Extension(Operator(actor)): Extension<Operator>,
    Path(id): Path<WorkflowId>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: RequeueBody = json_body(&body)?;
    if let Some(claimed) = body.operator.as_deref().filter(|o| *o != actor) {
        return Err(bad_request(format!(
            "`operator`: {claimed:?} is not the authenticated operator {actor:?}; the actor is \
             the credential's name (omit the field, or use `comment`)"
        )));
    }
    audit_text("reason", &body.reason, true)?;
    let reason = match &body.comment {
        Some(c) => {
            audit_text("comment", c, false)?;
            format!("{} (comment: {c})", body.reason)
        }
        None => body.reason,
    };
    let wf = engine.requeue(id, &actor, &reason).await?;
    Ok(Json(
        json!({"workflow_id": wf.id, "status": wf.status, "current_step": wf.current_step}),
    ))
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        engine.metrics.render(),
    )
        .into_response()
}
