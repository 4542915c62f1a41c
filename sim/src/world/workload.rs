//! The simulation's client hosts: the shared client logic (`crate::client`) over madsim's
//! network, talking to the engine hosts' API servers.

use super::engine_node::{ApiRequest, ApiResponse};
use super::net::{CallError, Client};
use super::{engine_addr, t_ms};
use crate::client::{run_ops, Answer, CallFailure, ClientCtx, EngineApi};
use crate::plan::PlannedOp;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// [`EngineApi`] over the simulated network (`super::net`).
pub struct SimApi {
    client: Client,
    timeout: Duration,
}

impl SimApi {
    /// The API client of the host with address `ip`.
    pub fn bind(ip: std::net::IpAddr, timeout: Duration) -> Arc<Self> {
        Arc::new(SimApi {
            client: Client::bind(ip),
            timeout,
        })
    }

    async fn call(&self, engine: usize, req: ApiRequest) -> Result<Answer, CallFailure> {
        match self
            .client
            .call::<ApiRequest, ApiResponse>(engine_addr(engine), req, self.timeout)
            .await
        {
            Ok(r) => Ok(match r {
                ApiResponse::Accepted(a) => Answer::Accepted {
                    workflow_id: a.workflow_id,
                    status: a.status,
                    created: a.created,
                },
                ApiResponse::Rejected { status, error } => Answer::Rejected { status, error },
                ApiResponse::Status {
                    key,
                    status,
                    result,
                    error,
                } => Answer::Status {
                    key,
                    status,
                    result,
                    error,
                },
                ApiResponse::NotFound => Answer::NotFound,
                _ => Answer::Other("unexpected answer".into()),
            }),
            Err(CallError::Timeout) => Err(CallFailure::Timeout),
        }
    }
}

#[async_trait::async_trait]
impl EngineApi for SimApi {
    fn now_ms(&self) -> u64 {
        t_ms()
    }

    async fn submit(
        &self,
        engine: usize,
        kind: &str,
        key: &str,
        input: &Value,
    ) -> Result<Answer, CallFailure> {
        let req = ApiRequest::Submit {
            kind: kind.to_string(),
            key: key.to_string(),
            input: input.clone(),
        };
        self.call(engine, req).await
    }

    async fn status(&self, engine: usize, id: i64) -> Result<Answer, CallFailure> {
        self.call(engine, ApiRequest::Status { id }).await
    }
}

/// A client host's process: the planned operations, then idle (an exited node would drop late
/// replies silently anyway).
pub async fn client_process(ctx: Arc<ClientCtx>, ops: Vec<PlannedOp>) {
    run_ops(ctx, ops).await;
    std::future::pending::<()>().await;
}
