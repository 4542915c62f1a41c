//! The HTTP API of the production binary (axum). Not compiled in the simulation flavour.
//!
//! Every `/v1` route needs `Authorization: Bearer <api_token>`; operator routes (dead-letter
//! list and requeue) need the operator token, and every operator action is audited by the store.
//! `/health` and `/metrics` are open for probes and scrapers and reveal no secret.

use crate::engine::Engine;
use crate::error::EngineError;
use crate::store::WorkflowId;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/workflows/{kind}", post(submit))
        .route("/v1/workflows/id/{id}", get(status))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/{id}/requeue", post(requeue))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(engine)
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

#[derive(PartialEq)]
enum Role {
    Client,
    Operator,
}

fn authorize(engine: &Engine, headers: &HeaderMap, need: Role) -> Result<(), ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let operator = engine.config.operator_token.matches(token);
    let client = engine.config.api_token.matches(token);
    match need {
        Role::Operator if operator => Ok(()),
        Role::Client if client || operator => Ok(()),
        Role::Operator if client => Err(ApiError(
            StatusCode::FORBIDDEN,
            json!({"error": "operator token required"}),
        )),
        _ => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or invalid bearer token"}),
        )),
    }
}

async fn submit(
    State(engine): State<Arc<Engine>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Json<Value>,
) -> Result<Response, ApiError> {
    authorize(&engine, &headers, Role::Client)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                json!({"error": "the Idempotency-Key header is required"}),
            )
        })?;
    let accepted = engine.submit(&kind, key, body.0).await?;
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
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&engine, &headers, Role::Client)?;
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

async fn dead_letters(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&engine, &headers, Role::Operator)?;
    Ok(Json(
        json!({"dead_letters": engine.store.dead_letters(500).await?}),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    reason: String,
    #[serde(default)]
    operator: Option<String>,
}

async fn requeue(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<WorkflowId>,
    headers: HeaderMap,
    body: Json<RequeueBody>,
) -> Result<Json<Value>, ApiError> {
    authorize(&engine, &headers, Role::Operator)?;
    if body.reason.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            json!({"error": "a reason is required"}),
        ));
    }
    let actor = body.operator.clone().unwrap_or_else(|| "operator".into());
    let wf = engine.requeue(id, &actor, &body.reason).await?;
    Ok(Json(
        json!({"workflow_id": wf.id, "status": wf.status, "current_step": wf.current_step}),
    ))
}

async fn health(State(engine): State<Arc<Engine>>) -> Response {
    let db = engine.store.stats(std::time::Duration::from_secs(60)).await;
    let rpc = engine.gateway.health();
    let rpc_ok = rpc.iter().any(|e| e.healthy);
    let body = json!({
        "node_id": engine.config.node_id,
        "database": if db.is_ok() { "ok" } else { "unavailable" },
        "rpc": rpc,
        "status": if db.is_ok() && rpc_ok { "ok" } else { "degraded" },
    });
    let code = if db.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        engine.metrics.render(),
    )
        .into_response()
}
