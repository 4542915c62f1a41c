//! Clients: submit the planned operations to the engines' API over the simulated network, retry
//! an unanswered submission with the same idempotency key (as a careful client does), follow each
//! accepted workflow to its terminal state, and record everything in the history.

use super::engine_node::{ApiRequest, ApiResponse};
use super::net::{CallError, Client};
use super::{engine_addr, sleep_until_ms, t_ms};
use crate::history::{History, Op, OpType};
use crate::plan::{OpKind, PlannedOp};
use alloy_primitives::Address;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Token addresses learned from completed issuances, by token index.
pub type TokenBook = Arc<Mutex<BTreeMap<u32, Address>>>;

pub struct ClientCtx {
    pub name: String,
    pub engines: usize,
    pub timeout: Duration,
    /// Stop trying (submitting or following) at this simulated time.
    pub deadline_ms: u64,
    pub history: History,
    pub tokens: TokenBook,
}

/// A client host's process: one task per planned operation.
pub async fn client_process(ctx: Arc<ClientCtx>, ops: Vec<PlannedOp>) {
    let client = Arc::new(Client::bind().await.expect("bind client"));
    let mut tasks = Vec::new();
    for op in ops {
        let ctx = ctx.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move { run_op(&ctx, &client, op).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Keep the host alive (an exited node would drop late replies silently anyway).
    std::future::pending::<()>().await;
}

fn record(
    ctx: &ClientCtx,
    op: &PlannedOp,
    typ: OpType,
    wf: Option<i64>,
    status: Option<String>,
    detail: Value,
) {
    ctx.history.push(Op {
        t_ms: t_ms(),
        client: ctx.name.clone(),
        op: op.index,
        kind: op.kind.name().to_string(),
        key: op.key.clone(),
        typ,
        workflow_id: wf,
        status,
        detail,
    });
}

async fn run_op(ctx: &ClientCtx, client: &Client, op: PlannedOp) {
    sleep_until_ms(op.at_ms).await;
    // Operations on a token wait for its issuance to finish.
    let token_addr = if matches!(op.kind, OpKind::Issuance { .. }) {
        None
    } else {
        loop {
            if let Some(a) = ctx
                .tokens
                .lock()
                .expect("tokens")
                .get(&op.kind.token())
                .copied()
            {
                break Some(a);
            }
            if t_ms() >= ctx.deadline_ms {
                record(
                    ctx,
                    &op,
                    OpType::Fail,
                    None,
                    None,
                    json!({"skipped": "token never issued"}),
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let input = op.kind.input(token_addr);
    let mut attempt = 0usize;
    // Submit, then follow; a workflow the database lost (an asynchronous failover) is submitted
    // again with the same key, as a careful client does when its id is unknown or names another
    // request.
    loop {
        let Some(id) = submit(ctx, client, &op, &input, &mut attempt).await else {
            return;
        };
        if follow(ctx, client, &op, id).await {
            return;
        }
    }
}

/// Submit until accepted (retrying an unknown outcome with the same key); `None` when refused
/// or out of time.
async fn submit(
    ctx: &ClientCtx,
    client: &Client,
    op: &PlannedOp,
    input: &Value,
    attempt: &mut usize,
) -> Option<i64> {
    loop {
        if t_ms() >= ctx.deadline_ms {
            return None;
        }
        let target = (op.index as usize + *attempt) % ctx.engines;
        *attempt += 1;
        record(
            ctx,
            op,
            OpType::Invoke,
            None,
            None,
            json!({"engine": target, "attempt": *attempt}),
        );
        let req = ApiRequest::Submit {
            kind: op.kind.workflow_kind().to_string(),
            key: op.key.clone(),
            input: input.clone(),
        };
        match client
            .call::<ApiRequest, ApiResponse>(engine_addr(target), req, ctx.timeout)
            .await
        {
            Ok(ApiResponse::Accepted(a)) => {
                record(
                    ctx,
                    op,
                    OpType::Ok,
                    Some(a.workflow_id),
                    Some(a.status.clone()),
                    json!({"created": a.created}),
                );
                return Some(a.workflow_id);
            }
            Ok(ApiResponse::Rejected { status, error }) if status < 500 => {
                record(
                    ctx,
                    op,
                    OpType::Fail,
                    None,
                    None,
                    json!({"http": status, "error": error}),
                );
                return None;
            }
            Ok(ApiResponse::Rejected { status, error }) => {
                record(
                    ctx,
                    op,
                    OpType::Unknown,
                    None,
                    None,
                    json!({"http": status, "error": error}),
                );
            }
            Ok(_) => {
                record(
                    ctx,
                    op,
                    OpType::Unknown,
                    None,
                    None,
                    json!({"error": "unexpected answer"}),
                );
            }
            Err(CallError::Timeout) => {
                record(
                    ctx,
                    op,
                    OpType::Unknown,
                    None,
                    None,
                    json!({"error": "timeout"}),
                );
            }
            Err(CallError::Io(e)) => {
                record(ctx, op, OpType::Unknown, None, None, json!({"error": e}));
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// Follow workflow `id` to its end. `true` when it ended (or time ran out), `false` when the
/// database no longer has it under this request's key.
async fn follow(ctx: &ClientCtx, client: &Client, op: &PlannedOp, id: i64) -> bool {
    let mut n = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        if t_ms() >= ctx.deadline_ms {
            return true;
        }
        n += 1;
        let target = (op.index as usize + n) % ctx.engines;
        let answer = client
            .call::<ApiRequest, ApiResponse>(
                engine_addr(target),
                ApiRequest::Status { id },
                ctx.timeout,
            )
            .await;
        let lost = match answer {
            Ok(ApiResponse::NotFound) => json!({"lost": id, "reason": "not found"}),
            Ok(ApiResponse::Status { key, .. }) if key != op.key => {
                json!({"lost": id, "reason": format!("now names key {key}")})
            }
            Ok(ApiResponse::Status {
                status,
                result,
                error,
                ..
            }) => {
                if !matches!(
                    status.as_str(),
                    "completed" | "failed" | "dead_letter" | "cancelled"
                ) {
                    continue;
                }
                if let (OpKind::Issuance { token }, Some(r)) = (&op.kind, &result) {
                    if let Some(a) = r
                        .get("token")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                    {
                        ctx.tokens.lock().expect("tokens").insert(*token, a);
                    }
                }
                let detail = json!({"result": result, "error": error});
                record(ctx, op, OpType::Observe, Some(id), Some(status), detail);
                return true;
            }
            _ => continue,
        };
        record(ctx, op, OpType::Unknown, Some(id), None, lost);
        return false;
    }
}
