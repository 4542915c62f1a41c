//! Clients of the engine's API, shared by both backends: submit the planned operations, retry an
//! unanswered submission with the same idempotency key (as a careful client does), follow each
//! accepted workflow to its terminal state, submit again (same key) a workflow the database lost,
//! and record everything in the history. Only [`EngineApi`] differs: the simulated network in the
//! simulation, HTTP against `dalp-engine` processes on the real backend.

use crate::history::{History, Op, OpType};
use crate::plan::{OpKind, PlannedOp};
use alloy_primitives::Address;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Token addresses learned from completed issuances, by token index.
pub type TokenBook = Arc<Mutex<BTreeMap<u32, Address>>>;

/// An engine's answer, whichever transport carried it.
#[derive(Clone, Debug)]
pub enum Answer {
    Accepted {
        workflow_id: i64,
        status: String,
        created: bool,
    },
    /// An HTTP error status: below 500 a definitive refusal, from 500 an unknown outcome.
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
    Other(String),
}

/// No answer: the request may or may not have been processed.
#[derive(Clone, Debug)]
pub enum CallFailure {
    Timeout,
    Io(String),
}

/// The engines' API as a client sees it. `engine` indexes the engine hosts.
#[async_trait::async_trait]
pub trait EngineApi: Send + Sync {
    /// Milliseconds since the run started (simulated or real).
    fn now_ms(&self) -> u64;
    async fn submit(
        &self,
        engine: usize,
        kind: &str,
        key: &str,
        input: &Value,
    ) -> Result<Answer, CallFailure>;
    async fn status(&self, engine: usize, id: i64) -> Result<Answer, CallFailure>;
}

pub struct ClientCtx {
    pub name: String,
    pub engines: usize,
    /// Stop trying (submitting or following) at this time since the start.
    pub deadline_ms: u64,
    pub history: History,
    pub tokens: TokenBook,
    pub api: Arc<dyn EngineApi>,
    /// The cap issuances ask for (`workload.max_balance`).
    pub max_balance: u64,
}

impl ClientCtx {
    async fn sleep_until_ms(&self, t: u64) {
        let now = self.api.now_ms();
        if t > now {
            tokio::time::sleep(Duration::from_millis(t - now)).await;
        }
    }
}

/// Run one client's planned operations, one task each, until all are done.
pub async fn run_ops(ctx: Arc<ClientCtx>, ops: Vec<PlannedOp>) {
    let mut tasks = Vec::new();
    for op in ops {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move { run_op(&ctx, op).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
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
        t_ms: ctx.api.now_ms(),
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

async fn run_op(ctx: &ClientCtx, op: PlannedOp) {
    ctx.sleep_until_ms(op.at_ms).await;
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
            if ctx.api.now_ms() >= ctx.deadline_ms {
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
    let input = op.kind.input(token_addr, ctx.max_balance);
    let mut attempt = 0usize;
    // Submit, then follow; a workflow the database lost (an asynchronous failover) is submitted
    // again with the same key, as a careful client does when its id is unknown or names another
    // request.
    loop {
        let Some(id) = submit(ctx, &op, &input, &mut attempt).await else {
            return;
        };
        if follow(ctx, &op, id).await {
            return;
        }
    }
}

/// Submit until accepted (retrying an unknown outcome with the same key); `None` when refused
/// or out of time.
async fn submit(
    ctx: &ClientCtx,
    op: &PlannedOp,
    input: &Value,
    attempt: &mut usize,
) -> Option<i64> {
    loop {
        if ctx.api.now_ms() >= ctx.deadline_ms {
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
        let answer = ctx
            .api
            .submit(target, op.kind.workflow_kind(), &op.key, input)
            .await;
        match answer {
            Ok(Answer::Accepted {
                workflow_id,
                status,
                created,
            }) => {
                record(
                    ctx,
                    op,
                    OpType::Ok,
                    Some(workflow_id),
                    Some(status),
                    json!({"created": created}),
                );
                return Some(workflow_id);
            }
            Ok(Answer::Rejected { status, error }) if status < 500 => {
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
            Ok(Answer::Rejected { status, error }) => {
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
            Err(CallFailure::Timeout) => {
                record(
                    ctx,
                    op,
                    OpType::Unknown,
                    None,
                    None,
                    json!({"error": "timeout"}),
                );
            }
            Err(CallFailure::Io(e)) => {
                record(ctx, op, OpType::Unknown, None, None, json!({"error": e}));
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// Follow workflow `id` to its end. `true` when it ended (or time ran out), `false` when the
/// database no longer has it under this request's key.
async fn follow(ctx: &ClientCtx, op: &PlannedOp, id: i64) -> bool {
    let mut n = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        if ctx.api.now_ms() >= ctx.deadline_ms {
            return true;
        }
        n += 1;
        let target = (op.index as usize + n) % ctx.engines;
        let answer = ctx.api.status(target, id).await;
        let lost = match answer {
            Ok(Answer::NotFound) => json!({"lost": id, "reason": "not found"}),
            Ok(Answer::Status { key, .. }) if key != op.key => {
                json!({"lost": id, "reason": format!("now names key {key}")})
            }
            Ok(Answer::Status {
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
