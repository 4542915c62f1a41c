//! The engine instance: everything one engine process owns, built at its start-up (no global
//! state, so the simulation can run several in one process), and its background tasks: the
//! worker, the indexer and the maintenance loop.

use crate::chain::{Gateway, Transport};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{EngineError, ErrorClass, Result};
use crate::metrics::Metrics;
use crate::retry::{Jitter, RetryPolicy};
use crate::shutdown::wait_or_shutdown;
use crate::signer::SignerKey;
use crate::store::{Claim, NewWorkflow, Store, Submitted, WorkflowId, WorkflowRecord};
use crate::txmgr::TxManager;
use crate::workflow::{self, StepContext};
use alloy_primitives::Address;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

/// Idempotency window (DESIGN.md §4 reference figures).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

pub struct Engine {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub txm: TxManager,
    pub clock: Arc<dyn Clock>,
    jitter: Jitter,
    /// Each claim's random identity (`Fence::lease_id`); a stream of its own, so that the retry
    /// jitter's sequence does not depend on how often the node claimed.
    lease_ids: Jitter,
    policy: RetryPolicy,
}

/// What `submit` tells the caller.
#[derive(Clone, Debug, Serialize)]
pub struct Accepted {
    pub workflow_id: WorkflowId,
    pub status: String,
    /// False when the idempotency key named an existing workflow.
    pub created: bool,
    pub result: Option<Value>,
    pub error: Option<Value>,
}

impl Engine {
    /// `seed` feeds the retry jitter: the simulation passes its seed, production any per-process value.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        seed: u64,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        let gateway = Arc::new(Gateway::new(
            &config.rpc_endpoints,
            transport,
            config.timeouts.clone(),
            &config.chain,
            metrics.clone(),
        ));
        let txm = TxManager {
            gap_seen: Default::default(),
            store: store.clone(),
            gateway: gateway.clone(),
            metrics: metrics.clone(),
            chain: config.chain.clone(),
            chain_id: config.chain_id,
            lease: config.lease(),
        };
        let policy = RetryPolicy {
            max_attempts: config.worker.max_attempts,
            base: Duration::from_millis(config.worker.backoff_base_ms),
            max: Duration::from_millis(config.worker.backoff_max_ms),
            jitter: config.worker.jitter,
        };
        Arc::new(Engine {
            config,
            store,
            gateway,
            metrics,
            txm,
            clock,
            jitter: Jitter::new(seed),
            lease_ids: Jitter::new(seed ^ 0x6C65_6173_655F_6964),
            policy,
        })
    }

    /// Accept a request: validated, persisted, and answered at once; execution is asynchronous.
    pub async fn submit(
        &self,
        kind: &str,
        idempotency_key: &str,
        input: Value,
    ) -> Result<Accepted> {
        if idempotency_key.is_empty() || idempotency_key.len() > 200 {
            return Err(EngineError::Invalid(
                "Idempotency-Key must be 1 to 200 characters".into(),
            ));
        }
        if !idempotency_key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(EngineError::Invalid(
                "Idempotency-Key: only visible ASCII characters (0x20 to 0x7E) are allowed".into(),
            ));
        }
        let signer_name = workflow::validate(kind, &input)?;
        let signer = self.config.signers.get(&signer_name).ok_or_else(|| {
            EngineError::Invalid(format!("no signer named {signer_name:?} is configured"))
        })?;
        let canonical = serde_json::to_vec(&json!({"kind": kind, "input": input})).expect("json");
        let new = NewWorkflow {
            kind: kind.to_string(),
            scope: format!("{:#x}:{}:{kind}", signer.address(), self.config.chain_id),
            idempotency_key: idempotency_key.to_string(),
            request_hash: format!("{:#x}", alloy_primitives::keccak256(canonical)),
            input,
        };
        let (wf, created) = match self.store.submit(new, IDEMPOTENCY_WINDOW).await? {
            Submitted::Created(wf) => (wf, true),
            Submitted::Existing(wf) => (wf, false),
        };
        self.metrics.inc(
            "dalp_requests_total",
            &[
                ("kind", kind),
                ("new", if created { "true" } else { "false" }),
            ],
        );
        Ok(Accepted {
            workflow_id: wf.id,
            status: wf.status.as_str().into(),
            created,
            result: wf.result,
            error: wf.error,
        })
    }

    /// Requeue a dead-lettered workflow (operator action; audited by the store atomically).
    pub async fn requeue(
        &self,
        id: WorkflowId,
        actor: &str,
        reason: &str,
    ) -> Result<WorkflowRecord> {
        crate::fault_point!(
            "fp.requeue.before_write",
            EngineError::DbUnavailable("fault point: requeue".into())
        );
        let out = self.store.requeue(id, actor, reason).await;
        if out.is_ok() {
            crate::probe!("requeue.done");
        }
        self.metrics.inc(
            "dalp_operator_actions_total",
            &[
                ("action", "requeue"),
                ("outcome", if out.is_ok() { "ok" } else { "rejected" }),
            ],
        );
        out
    }

    /// Start the background tasks; they stop when `shutdown` turns true.
    pub fn start(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(self.clone().probe_loop(shutdown.clone())),
            tokio::spawn(self.clone().maintenance_loop(shutdown.clone())),
        ];
        if self.config.worker.enabled {
            tasks.push(tokio::spawn(self.clone().worker_loop(shutdown.clone())));
        }
        if self.config.indexer.enabled {
            let indexer = crate::indexer::Indexer::new(
                self.config.clone(),
                self.store.clone(),
                self.gateway.clone(),
                self.metrics.clone(),
            );
            tasks.push(tokio::spawn(indexer.run(shutdown)));
        }
        tasks
    }

    /// RPC endpoint health on its own loop: a slow database (the maintenance loop's statistics
    /// and nonce checks wait on it) must not delay noticing that an endpoint failed.
    async fn probe_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.config.chain.health_probe_ms);
        loop {
            self.gateway.probe().await;
            if wait_or_shutdown(&mut shutdown, every).await {
                return;
            }
        }
    }

    async fn maintenance_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.config.chain.health_probe_ms);
        loop {
            match self
                .store
                .stats(Duration::from_millis(self.config.worker.stalled_after_ms))
                .await
            {
                Ok(s) => {
                    self.metrics.set("dalp_workflows_active", &[], s.active);
                    self.metrics
                        .set("dalp_dead_letter_depth", &[], s.dead_letter);
                    self.metrics.set("dalp_stalled_workflows", &[], s.stalled);
                }
                Err(e) => self
                    .metrics
                    .inc("dalp_db_errors_total", &[("reason", e.reason_code())]),
            }
            if self.config.worker.enabled {
                self.heal_nonce_gaps().await;
            }
            if wait_or_shutdown(&mut shutdown, every).await {
                return;
            }
        }
    }

    /// One pass of the nonce-gap healer over every configured signer (see
    /// [`TxManager::heal_nonce_gaps`]). Errors are counted and left to the next tick.
    async fn heal_nonce_gaps(&self) {
        // One pass per distinct signer address, even when several names share a key.
        let signers: BTreeMap<Address, &SignerKey> = self
            .config
            .signers
            .values()
            .map(|k| (k.address(), k))
            .collect();
        for (signer, key) in signers {
            if let Err(e) = self.txm.heal_nonce_gaps(key).await {
                // RPC failures are already counted per request by the gateway.
                if matches!(
                    e,
                    EngineError::Db { .. }
                        | EngineError::DbUnavailable(_)
                        | EngineError::DbTimeout(_)
                ) {
                    self.metrics
                        .inc("dalp_db_errors_total", &[("reason", e.reason_code())]);
                }
                tracing::debug!(error = %e, signer = %signer, "nonce-gap check failed; next tick");
            }
        }
    }

    async fn worker_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.config.worker.concurrency));
        let poll = Duration::from_millis(self.config.worker.poll_ms);
        // An idle node backs off (doubling up to 5 × poll_ms) instead of querying the database
        // every poll_ms for nothing; any claim brings it back to poll_ms.
        let idle_max = poll * 5;
        let mut idle_wait = poll;
        loop {
            let free = slots.available_permits();
            let mut wait = poll;
            if free > 0 {
                match self
                    .store
                    .claim(
                        &self.config.node_id,
                        self.config.lease(),
                        free,
                        self.lease_ids.next_u64() as i64,
                    )
                    .await
                {
                    Ok(claims) => {
                        if claims.is_empty() {
                            wait = (idle_wait * 2).min(idle_max);
                        }
                        for claim in claims {
                            let permit = slots
                                .clone()
                                .acquire_owned()
                                .await
                                .expect("semaphore never closed");
                            let engine = self.clone();
                            // Boxed: a claim's future holds every step's state machine (tens
                            // of KiB), and an unboxed one is copied whole by each layer of the
                            // spawn (1.5% of a simulated seed's instructions).
                            tokio::spawn(async move {
                                Box::pin(engine.run_claim(claim)).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        crate::probe!("claim.failed");
                        error_probe(&e);
                        self.metrics
                            .inc("dalp_db_errors_total", &[("reason", e.reason_code())]);
                        tracing::warn!(error = %e, "claim failed");
                    }
                }
            }
            idle_wait = wait;
            if wait_or_shutdown(&mut shutdown, wait).await {
                return;
            }
        }
    }

    /// Run a claimed workflow from its checkpoint until it finishes, fails, or must wait.
    pub async fn run_claim(&self, claim: Claim) {
        let Claim {
            mut workflow,
            fence,
        } = claim;
        let Some(steps) = workflow::steps(&workflow.kind) else {
            let err = json!({"reason_code": "invalid_input", "message": format!("unknown kind {}", workflow.kind)});
            let _ = self
                .store
                .fail(&fence, workflow.current_step, "unknown", &err, true)
                .await;
            return;
        };
        while (workflow.current_step as usize) < steps.len() {
            let idx = workflow.current_step;
            let name = steps[idx as usize];
            let attempt = workflow.attempts + 1;
            let span = tracing::info_span!("step", workflow_id = workflow.id, kind = %workflow.kind, step = name, attempt, node = %fence.node);
            let outcome = async {
                let ctx = StepContext {
                    fence: &fence,
                    workflow: &workflow,
                    step: idx,
                    txm: &self.txm,
                    signers: &self.config.signers,
                };
                let bound = Duration::from_millis(self.config.timeouts.step_ms);
                match crate::deadline::timeout(bound, workflow::execute(&ctx, &workflow.kind, name))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(EngineError::ConfirmationTimeout {
                        tx_hash: String::new(),
                        secs: bound.as_secs(),
                    }),
                }
            }
            .instrument(span.clone())
            .await;
            match outcome {
                Ok(output) => {
                    // The step's effect happened, its output is not durable yet: a crash or a
                    // stall here re-runs the step, which must not repeat the effect.
                    if let Err(e) = crate::fault_point!(
                        result "fp.step.effect_before_complete",
                        EngineError::DbUnavailable("fault point: before complete_step".into())
                    ) {
                        error_probe(&e);
                        span.in_scope(|| self.on_store_error(&e, name));
                        return;
                    }
                    let last = idx as usize + 1 == steps.len();
                    let mut state = workflow.state.clone();
                    state[name] = output.clone();
                    let result = last.then(|| workflow::result(&workflow.kind, &state));
                    // The span is entered only around code that does not await: a span held
                    // across an await would be entered in whatever task runs next on this thread.
                    if let Err(e) = self
                        .store
                        .complete_step(&fence, idx, name, output, result.clone())
                        .instrument(span.clone())
                        .await
                    {
                        error_probe(&e);
                        span.in_scope(|| self.on_store_error(&e, name));
                        return;
                    }
                    self.metrics.inc(
                        "dalp_step_outcomes_total",
                        &[("step", name), ("outcome", "completed")],
                    );
                    span.in_scope(|| tracing::info!("step completed"));
                    workflow.state = state;
                    workflow.current_step += 1;
                    workflow.attempts = 0;
                    if last {
                        workflow.result = result;
                    }
                }
                Err(e) => {
                    self.on_step_error(&fence, &workflow, idx, name, attempt, e)
                        .instrument(span)
                        .await;
                    return;
                }
            }
        }
    }

    fn on_store_error(&self, e: &EngineError, step: &str) {
        if matches!(e, EngineError::Fenced { .. }) {
            crate::probe!("lease.fenced");
            self.metrics.inc("dalp_fenced_writes_total", &[]);
            self.metrics.inc(
                "dalp_step_outcomes_total",
                &[("step", step), ("outcome", "fenced")],
            );
            tracing::warn!(error = %e, "lease superseded; stopping");
        } else {
            // The lease will expire and the workflow is retried from its checkpoint.
            crate::probe!("store.persist_failed");
            self.metrics
                .inc("dalp_db_errors_total", &[("reason", e.reason_code())]);
            tracing::warn!(error = %e, "could not persist; the workflow resumes after its lease expires");
        }
    }

    async fn on_step_error(
        &self,
        fence: &crate::store::Fence,
        wf: &WorkflowRecord,
        idx: i32,
        name: &'static str,
        attempt: i32,
        e: EngineError,
    ) {
        error_probe(&e);
        if matches!(e, EngineError::Fenced { .. })
            || (matches!(e, EngineError::DbUnavailable(_) | EngineError::DbTimeout(_)))
        {
            // Nothing more can be written now; the checkpoint stands.
            self.on_store_error(&e, name);
            return;
        }
        // A node error every endpoint answered (rate limited, an internal error, a node behind
        // the chain), or a database that cannot serve writes now, is the service failing, not
        // an answer to the request: waited out like an outage.
        let outage = matches!(
            e,
            EngineError::RpcUnavailable(_)
                | EngineError::RpcTimeout { .. }
                | EngineError::NonceReconciling(_)
                | EngineError::ComplianceUnsettled { .. }
        ) || e.node_unavailable()
            || e.db_outage();
        // The budget counts failures that were not outages: `attempts` counts every retry
        // (it sets the backoff), so an outage's retries must not be charged to a later error.
        let spent = spent_before(wf.error.as_ref(), name, attempt) + u32::from(!outage);
        let mut err = json!({"reason_code": e.reason_code(), "class": e.class(), "message": e.to_string(), "step": name, "attempt": attempt, "spent": spent});
        if let EngineError::ComplianceUnsettled {
            rejected_at_block: Some(b),
            ..
        } = &e
        {
            // The next attempt needs it to tell whether the rejection has held long enough.
            err["rejected_at_block"] = json!(b);
        }
        tracing::warn!(error = %e, class = %e.class(), "step failed");
        // An outage of every RPC endpoint says nothing about the request: chain-bound work
        // waits for the chain durably (FM-RPC-ALL-DOWN) instead of spending its retry budget
        // and landing in the dead-letter queue. Backoff stays capped, alerts show the outage.
        // Waiting for unaccounted nonces to be mined is the same kind of wait.
        // The decision is made, not yet written: a crash here must leave the step to be
        // claimed again from its checkpoint, never half-decided.
        crate::fault_point!("fp.retry.before_write");
        let written = if e.class() == ErrorClass::Transient
            && (outage || self.policy.allows_another(spent))
        {
            let delay = self.policy.delay(attempt as u32, self.jitter.unit());
            if outage {
                crate::probe!("step.retry_not_counted");
            } else {
                crate::probe!("step.retry_scheduled");
            }
            self.metrics
                .inc("dalp_retries_total", &[("reason", e.reason_code())]);
            self.metrics.inc(
                "dalp_step_outcomes_total",
                &[("step", name), ("outcome", "retry")],
            );
            self.store
                .schedule_retry(fence, idx, name, &err, delay)
                .await
        } else if matches!(e, EngineError::ComplianceRejected(_)) {
            // Fail closed with a typed failure: the operation is blocked, nothing was sent.
            crate::probe!("step.failed_closed");
            self.metrics.inc(
                "dalp_step_outcomes_total",
                &[("step", name), ("outcome", "failed")],
            );
            self.store.fail(fence, idx, name, &err, false).await
        } else {
            // Permanent, or retries exhausted: dead-letter with the reason.
            if workflow::is_tx_step(&wf.kind, name) {
                if let Err(abandon) = self.txm.abandon_step(fence, idx).await {
                    crate::probe!("step.abandon_failed");
                    tracing::warn!(error = %abandon, "could not settle the step's transaction before dead-lettering; retrying later");
                    let delay = self.policy.delay(attempt.max(1) as u32, self.jitter.unit());
                    // Marked: a retry past the budget, which the journal says was to settle.
                    let mut settling = err;
                    settling["settling"] = json!(true);
                    let _ = self
                        .store
                        .schedule_retry(fence, idx, name, &settling, delay)
                        .await;
                    return;
                }
            }
            if e.is_transient() {
                crate::probe!("step.dead_lettered_exhausted");
            }
            crate::probe!("step.dead_lettered");
            self.metrics.inc(
                "dalp_step_outcomes_total",
                &[("step", name), ("outcome", "dead_letter")],
            );
            self.store.fail(fence, idx, name, &err, true).await
        };
        if let Err(store_err) = written {
            self.on_store_error(&store_err, name);
        }
    }
}

/// Count the error the engine is handling by its class (a coverage probe; nothing in
/// production).
fn error_probe(_e: &EngineError) {
    #[cfg(madsim)]
    crate::probe::sim::hit(error_probe_name(_e));
}

#[cfg(madsim)]
fn error_probe_name(e: &EngineError) -> &'static str {
    match e {
        EngineError::Db { sqlstate, .. } => match sqlstate.as_str() {
            "" => "error.db.connection",
            "25006" => "error.db.read_only",
            "55P03" => "error.db.serialization",
            c if c.starts_with("08") => "error.db.connection",
            c if c.starts_with("40") => "error.db.serialization",
            c if c.starts_with("53") => "error.db.resources",
            c if c.starts_with("57") => "error.db.shutdown",
            _ => "error.db.permanent",
        },
        EngineError::DbUnavailable(_) => "error.db.unavailable",
        EngineError::DbTimeout(_) => "error.db.timeout",
        EngineError::Fenced { .. } => "error.fenced",
        EngineError::Rpc { .. } if e.is_transient() => "error.rpc.transient",
        EngineError::Rpc { .. } => "error.rpc.permanent",
        EngineError::RpcUnavailable(_) => "error.rpc.unavailable",
        EngineError::RpcTimeout { .. } => "error.rpc.timeout",
        EngineError::Reverted(_) => "error.reverted",
        EngineError::ComplianceRejected(_) => "error.compliance_rejected",
        EngineError::ComplianceUnsettled { .. } => "error.compliance_unsettled",
        EngineError::SignerFunds { .. } => "error.signer_funds",
        EngineError::Invalid(_) => "error.invalid_input",
        EngineError::NotFound(_) => "error.not_found",
        EngineError::ConfirmationTimeout { .. } => "error.confirmation_timeout",
        EngineError::NonceReconciling(_) => "error.nonce_reconciling",
        EngineError::NoContractCode(_) => "error.no_contract_code",
        EngineError::RecordLost(_) => "error.record_lost",
        EngineError::Internal(_) => "error.internal",
    }
}

/// Attempts at step `step` that failed for something other than an outage, before this one
/// (`attempt`): what the workflow's last recorded error says, when it is this step's previous
/// attempt; an error recorded before `spent` existed is taken as all spent.
fn spent_before(last: Option<&serde_json::Value>, step: &str, attempt: i32) -> u32 {
    let previous = (attempt - 1).max(0) as u32;
    match last {
        Some(e) if e.get("step").and_then(|s| s.as_str()) == Some(step) => e
            .get("spent")
            .and_then(|s| s.as_u64())
            .map_or(previous, |s| (s as u32).min(previous)),
        _ => previous,
    }
}

#[cfg(test)]
mod spent_tests {
    use super::spent_before;
    use serde_json::json;

    #[test]
    fn outage_retries_are_not_charged_to_a_later_error() {
        // Seven retries of this step, two of them spent (the rest were outages).
        let last = json!({"step": "mint", "attempt": 7, "spent": 2});
        assert_eq!(spent_before(Some(&last), "mint", 8), 2);
        // Recorded before `spent` existed: every earlier attempt counts.
        let legacy = json!({"step": "mint", "attempt": 7});
        assert_eq!(spent_before(Some(&legacy), "mint", 8), 7);
        // Another step's error, or none (a fresh step, a requeue): as many as the attempts say.
        assert_eq!(spent_before(Some(&last), "notify", 1), 0);
        assert_eq!(spent_before(None, "mint", 3), 2);
        // Never more than the attempts made.
        let odd = json!({"step": "mint", "spent": 40});
        assert_eq!(spent_before(Some(&odd), "mint", 3), 2);
    }
}
