//! The RPC gateway: the engine's own JSON-RPC client over several endpoints, with health
//! tracking (errors, latency, block-height lag), failover, and a timeout on every call.
//!
//! Only the [`Transport`] differs between flavours: HTTP in production, the simulated network in
//! the simulation. Request encoding, error parsing and failover run the same code in both.

use super::answer::{read_envelope, Answer};
use super::endpoint::RpcEndpoint;
use super::types::*;
use crate::config::{ChainConfig, TimeoutConfig};
use crate::error::{EngineError, Result};
use crate::metrics::Metrics;
use alloy_primitives::{Address, Bytes, B256, U256};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A failure below JSON-RPC: the request may or may not have reached the node.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("http status {0}")]
    Status(u16),
    #[error("i/o: {0}")]
    Io(String),
}

#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// POST one JSON-RPC body to `endpoint` (the URL, secrets included), returning the
    /// response body. Errors must not echo the URL; the gateway scrubs them as well.
    async fn post(
        &self,
        endpoint: &str,
        body: String,
    ) -> std::result::Result<String, TransportError>;
}

#[derive(Debug, Default, Clone)]
struct Health {
    consecutive_failures: u32,
    cooling_until: Option<Instant>,
    latency_ms: u64,
    head: u64,
}

struct Endpoint {
    ep: RpcEndpoint,
    health: Mutex<Health>,
}

impl Endpoint {
    /// The name: what logs, metrics, `/health` and errors show.
    fn name(&self) -> &str {
        self.ep.name()
    }
}

/// A snapshot of one endpoint's health, for `/health` and tests.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointHealth {
    /// The endpoint's name, never its URL (which may hold a provider key).
    pub endpoint: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub latency_ms: u64,
    pub head: u64,
}

pub struct Gateway {
    endpoints: Vec<Endpoint>,
    transport: Arc<dyn Transport>,
    timeouts: TimeoutConfig,
    cooldown: Duration,
    max_lag: u64,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    /// The highest head any endpoint has reported to this process. With one endpoint (or all
    /// of them behind) there is no fresher endpoint to compare with; this remembers where the
    /// chain was, so a node that fell behind is still known to be behind.
    highest_seen: AtomicU64,
    /// When an endpoint last reported a head (any `eth_blockNumber` answer): the age of what
    /// `highest_seen` tells about the chain now, for `recent_head`.
    head_seen_at: Mutex<Option<Instant>>,
    /// An endpoint answered that it has no `txpool` namespace (`-32601`): hosted providers do
    /// not offer it, and asking again on every transaction would cost a call each time.
    pool_unreadable: AtomicBool,
}

impl Gateway {
    pub fn new(
        endpoints: &[RpcEndpoint],
        transport: Arc<dyn Transport>,
        timeouts: TimeoutConfig,
        chain: &ChainConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        assert!(
            !endpoints.is_empty(),
            "a gateway needs at least one endpoint"
        );
        Gateway {
            endpoints: endpoints
                .iter()
                .map(|e| Endpoint {
                    ep: e.clone(),
                    health: Mutex::new(Health::default()),
                })
                .collect(),
            transport,
            timeouts,
            cooldown: Duration::from_millis(chain.endpoint_cooldown_ms),
            max_lag: chain.max_lag_blocks,
            metrics,
            next_id: AtomicU64::new(1),
            highest_seen: AtomicU64::new(0),
            head_seen_at: Mutex::new(None),
            pool_unreadable: AtomicBool::new(false),
        }
    }

    fn timeout_for(&self, method: &str) -> Duration {
        Duration::from_millis(
            *self
                .timeouts
                .rpc_method_ms
                .get(method)
                .unwrap_or(&self.timeouts.rpc_ms),
        )
    }

    /// Endpoints in the order to try: healthy ones in configured order, then the rest.
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let best = self
            .endpoints
            .iter()
            .map(|e| e.health.lock().expect("health").head)
            .max()
            .unwrap_or(0);
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for (i, e) in self.endpoints.iter().enumerate() {
            let h = e.health.lock().expect("health");
            let cooling = h.cooling_until.is_some_and(|t| t > now);
            let lagging = best.saturating_sub(h.head) > self.max_lag;
            if lagging && !cooling {
                crate::probe!("rpc.lagging_endpoint_skipped");
            }
            if cooling || lagging {
                bad.push(i)
            } else {
                good.push(i)
            }
        }
        good.extend(bad);
        good
    }

    fn mark_ok(&self, i: usize, latency: Duration) {
        let mut h = self.endpoints[i].health.lock().expect("health");
        h.consecutive_failures = 0;
        h.cooling_until = None;
        h.latency_ms = latency.as_millis() as u64;
        drop(h);
        self.metrics.set(
            "dalp_rpc_endpoint_healthy",
            &[("endpoint", self.endpoints[i].name())],
            1,
        );
    }

    fn mark_failed(&self, i: usize) {
        let mut h = self.endpoints[i].health.lock().expect("health");
        h.consecutive_failures += 1;
        h.cooling_until = Some(Instant::now() + self.cooldown);
        drop(h);
        self.metrics.set(
            "dalp_rpc_endpoint_healthy",
            &[("endpoint", self.endpoints[i].name())],
            0,
        );
    }

    /// One JSON-RPC call with failover. Node answers (JSON-RPC errors) are returned as they are,
    /// except rate limiting and internal errors, which fail over like transport failures.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.call_raw(method, params).await?.value()
    }

    /// [`Gateway::call`], the result left as the node wrote it, for a typed reader.
    async fn call_raw(&self, method: &str, params: Value) -> Result<Answer> {
        self.call_at(method, params).await.0
    }

    /// [`Gateway::call`], and which endpoint gave the answer (`None`: none did).
    async fn call_at(&self, method: &str, params: Value) -> (Result<Answer>, Option<usize>) {
        let order = self.order();
        let mut last = EngineError::RpcUnavailable("no endpoint tried".into());
        for (n, i) in order.iter().copied().enumerate() {
            if n > 0 {
                if let Err(e) = crate::fault_point!(
                    result "fp.gateway.before_failover",
                    EngineError::RpcUnavailable("fault point: failover".into())
                ) {
                    return (Err(e), None);
                }
                crate::probe!("rpc.failover");
                self.metrics.inc(
                    "dalp_rpc_failovers_total",
                    &[("from", self.endpoints[order[n - 1]].name())],
                );
            }
            match self.call_one(i, method, params.clone()).await {
                Err(e) if fails_over(&e) => last = e,
                answer => return (answer, Some(i)),
            }
        }
        crate::probe!("rpc.all_endpoints_failed");
        (Err(last), None)
    }

    /// A call whose answer the engine acts on as final, when the answer may only say that the
    /// node has not seen something yet: `null` ("no such receipt", "unknown transaction": the
    /// engine re-sends or takes a nonce for lost), a revert or no code in a pre-flight call (it
    /// dead-letters). From an endpoint behind the best head the probes have seen, such an
    /// answer (`doubtful`) is not believed: the fresher endpoints are asked, best head first,
    /// and the first of them that answers is; when none answers, the outage is returned and the
    /// caller waits rather than act on a lagging node's ignorance.
    async fn call_fresh(
        &self,
        method: &str,
        params: Value,
        doubtful: fn(&Result<Answer>) -> bool,
    ) -> Result<Answer> {
        let (answer, by) = self.call_at(method, params.clone()).await;
        let Some(i) = by.filter(|_| doubtful(&answer)) else {
            return answer;
        };
        let mut heads = self.heads();
        if method == "eth_call" && heads.iter().all(|&h| h <= heads[i]) {
            // The engine decides on what a call reads (a compliance "no", a pre-flight revert
            // dead-letters), and the last probe may predate a lag: the answering endpoint's
            // head is asked now, so a node that fell behind since is known to be behind.
            crate::probe!("rpc.call_head_spot_checked");
            let _ = self.call_one(i, "eth_blockNumber", json!([])).await;
            heads = self.heads();
        }
        let mut fresher: Vec<usize> = (0..heads.len()).filter(|&j| heads[j] > heads[i]).collect();
        if fresher.is_empty() {
            // No endpoint is ahead of this one, but the chain was: a node that fell behind
            // (or a load balancer whose reads hit one) does not know of recent receipts, and
            // acting on that (re-signing a nonce that our mined transaction used) makes a second
            // effect. Wait for it to catch up instead.
            let behind = self
                .highest_seen
                .load(Ordering::Relaxed)
                .saturating_sub(heads[i]);
            if behind > self.max_lag {
                crate::probe!("rpc.answer_from_lagging_refused");
                return Err(EngineError::RpcUnavailable(format!(
                    "{method}: every endpoint is {behind} blocks or more behind the highest head seen; its answer is not acted on"
                )));
            }
            return answer;
        }
        crate::probe!("rpc.answer_from_lagging_rechecked");
        fresher.sort_by_key(|&j| (std::cmp::Reverse(heads[j]), j));
        let mut last = None;
        for j in fresher {
            match self.call_one(j, method, params.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if fails_over(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a fresher endpoint was tried"))
    }

    /// One call to one endpoint, bounded by the method's timeout; updates health.
    async fn call_one(&self, i: usize, method: &str, params: Value) -> Result<Answer> {
        let ep = &self.endpoints[i];
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // `serde_json::to_string`, not `Value`'s `Display`: written without `core::fmt` (a
        // measurable share of a simulated run, where every call is one of these).
        let body = serde_json::to_string(&Request {
            id,
            jsonrpc: "2.0",
            method,
            params: &params,
        })
        .expect("a JSON value serializes");
        let bound = self.timeout_for(method);
        let started = Instant::now();
        let outcome = crate::deadline::timeout(bound, self.transport.post(ep.ep.url(), body)).await;
        let text = match outcome {
            Err(_) => {
                self.mark_failed(i);
                self.metrics.inc(
                    "dalp_rpc_requests_total",
                    &[("endpoint", ep.name()), ("outcome", "timeout")],
                );
                return Err(EngineError::RpcTimeout {
                    method: method.to_string(),
                    ms: bound.as_millis() as u64,
                });
            }
            Ok(Err(e)) => {
                self.mark_failed(i);
                self.metrics.inc(
                    "dalp_rpc_requests_total",
                    &[("endpoint", ep.name()), ("outcome", "transport_error")],
                );
                return Err(EngineError::RpcUnavailable(
                    ep.ep.scrub(&format!("{}: {e}", ep.name())),
                ));
            }
            Ok(Ok(text)) => text,
        };
        let (error, result) = match read_envelope(&text) {
            Some(parts) => parts,
            None => {
                self.mark_failed(i);
                return Err(EngineError::RpcUnavailable(format!(
                    "{}: malformed JSON-RPC response",
                    ep.name()
                )));
            }
        };
        if let Some(err) = error {
            let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
            // A provider's answer may quote the key it was given.
            let message = ep
                .ep
                .scrub(err.get("message").and_then(Value::as_str).unwrap_or(""));
            let e = EngineError::from_rpc(code, message, err.get("data"));
            if fails_over(&e) {
                self.mark_failed(i);
            } else {
                self.mark_ok(i, started.elapsed());
            }
            self.metrics.inc(
                "dalp_rpc_requests_total",
                &[("endpoint", ep.name()), ("outcome", "rpc_error")],
            );
            return Err(e);
        }
        self.mark_ok(i, started.elapsed());
        self.metrics.inc(
            "dalp_rpc_requests_total",
            &[("endpoint", ep.name()), ("outcome", "ok")],
        );
        if method == "eth_blockNumber" {
            // Every head an endpoint reports is an observation, not only the probes': a lag
            // that starts between probes is seen at the next call that asks.
            if let Ok(head) = result.quantity() {
                self.record_head(i, head);
            }
        }
        Ok(result)
    }

    fn record_head(&self, i: usize, head: u64) {
        self.endpoints[i].health.lock().expect("health").head = head;
        self.highest_seen.fetch_max(head, Ordering::Relaxed);
        *self.head_seen_at.lock().expect("head time") = Some(Instant::now());
    }

    /// The highest head any endpoint has reported, if one reported a head within `max_age`.
    /// Only for deciding that something is *not yet* deep enough: the value is at least what an
    /// endpoint answered within `max_age` (and may be above the live chain's head: a node on a
    /// fork), so its "not deep yet" is one a read then would have given, at most `max_age`
    /// late; a "deep enough" is judged on a head read now. Callers waiting on depth share the
    /// health probe's and each other's reads instead of making one each per poll.
    pub fn recent_head(&self, max_age: Duration) -> Option<u64> {
        let at = (*self.head_seen_at.lock().expect("head time"))?;
        (at.elapsed() < max_age).then(|| self.highest_seen.load(Ordering::Relaxed))
    }

    /// Each endpoint's last reported head, in endpoint order.
    fn heads(&self) -> Vec<u64> {
        self.endpoints
            .iter()
            .map(|e| e.health.lock().expect("health").head)
            .collect()
    }

    /// Ask every endpoint for its head, recording latency and lag. Called periodically.
    pub async fn probe(&self) {
        for i in 0..self.endpoints.len() {
            // `call_one` records the head it answers.
            let _ = self.call_one(i, "eth_blockNumber", json!([])).await;
        }
        let heads = self.heads();
        let best = heads.iter().copied().max().unwrap_or(0);
        for (e, head) in self.endpoints.iter().zip(heads) {
            self.metrics.set(
                "dalp_rpc_endpoint_lag_blocks",
                &[("endpoint", e.name())],
                best.saturating_sub(head) as i64,
            );
        }
    }

    pub fn health(&self) -> Vec<EndpointHealth> {
        let now = Instant::now();
        let best = self
            .endpoints
            .iter()
            .map(|e| e.health.lock().expect("health").head)
            .max()
            .unwrap_or(0);
        self.endpoints
            .iter()
            .map(|e| {
                let h = e.health.lock().expect("health").clone();
                EndpointHealth {
                    endpoint: e.name().to_string(),
                    healthy: h.cooling_until.is_none_or(|t| t <= now)
                        && best.saturating_sub(h.head) <= self.max_lag,
                    consecutive_failures: h.consecutive_failures,
                    latency_ms: h.latency_ms,
                    head: h.head,
                }
            })
            .collect()
    }

    // ---- typed methods -------------------------------------------------------------------

    pub async fn chain_id(&self) -> Result<u64> {
        self.call_raw("eth_chainId", json!([])).await?.quantity()
    }

    pub async fn block_number(&self) -> Result<u64> {
        self.call_raw("eth_blockNumber", json!([]))
            .await?
            .quantity()
    }

    pub async fn transaction_count(&self, who: Address, tag: &str) -> Result<u64> {
        self.call_raw("eth_getTransactionCount", json!([who, tag]))
            .await?
            .quantity()
    }

    pub async fn balance(&self, who: Address) -> Result<U256> {
        quantity_u256(&self.call("eth_getBalance", json!([who, "latest"])).await?)
    }

    pub async fn send_raw(&self, raw: &Bytes) -> Result<B256> {
        self.call_raw("eth_sendRawTransaction", json!([raw]))
            .await?
            .parse("bad tx hash")
    }

    pub async fn receipt(&self, hash: B256) -> Result<Option<Receipt>> {
        let v = self
            .call_fresh("eth_getTransactionReceipt", json!([hash]), is_null)
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        v.receipt().map(Some)
    }

    /// Whether the node knows the transaction at all (pending or mined).
    pub async fn transaction_known(&self, hash: B256) -> Result<bool> {
        Ok(!self
            .call_fresh("eth_getTransactionByHash", json!([hash]), is_null)
            .await?
            .is_null())
    }

    /// `from`'s transactions that the node holds *queued*: in its pool but not executable, at
    /// nonces above a gap, so not counted by `eth_getTransactionCount(.., "pending")`. Read with
    /// `txpool_status` and, only when something is queued, `txpool_content` (geth's and Anvil's
    /// `txpool` namespace). `None` where the node does not offer it (`-32601`, remembered for
    /// the life of the process): most hosted providers do not. Any other error is returned: a
    /// node that could not answer now says nothing about what is queued.
    pub async fn queued_txs(&self, from: Address) -> Result<Option<Vec<ChainTx>>> {
        if self.pool_unreadable.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let unsupported = |e: &EngineError| {
            let no = matches!(e, EngineError::Rpc { code: -32601, .. });
            if no {
                self.pool_unreadable.store(true, Ordering::Relaxed);
            }
            no
        };
        let status = match self.call("txpool_status", json!([])).await {
            Err(e) if unsupported(&e) => return Ok(None),
            other => other?,
        };
        let queued = status.get("queued").map(quantity).transpose()?;
        if queued == Some(0) {
            return Ok(Some(Vec::new()));
        }
        let content = match self.call("txpool_content", json!([])).await {
            Err(e) if unsupported(&e) => return Ok(None),
            other => other?,
        };
        // Keyed by the sender's address in lower case (geth, Anvil), then by nonce.
        let Some(by_nonce) = content
            .get("queued")
            .and_then(|q| q.get(format!("{from:#x}")))
            .and_then(Value::as_object)
        else {
            return Ok(Some(Vec::new()));
        };
        let mut txs = by_nonce
            .values()
            .map(ChainTx::from_json)
            .collect::<Result<Vec<_>>>()?;
        if let Some(t) = txs.iter().find(|t| t.from != from) {
            return Err(EngineError::Rpc {
                code: -32603,
                message: format!("txpool_content lists {:#x} under sender {from:#x}", t.hash),
            });
        }
        txs.sort_by_key(|t| t.nonce);
        Ok(Some(txs))
    }

    pub async fn block(&self, number: u64) -> Result<Option<BlockHeader>> {
        let v = self
            .call_raw(
                "eth_getBlockByNumber",
                json!([format!("0x{number:x}"), false]),
            )
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        v.block_header().map(Some)
    }

    /// The block named by `hash` (`None` when the node does not know it). A hash names one
    /// block and its parent, whichever fork the answering node follows: a walk by parent hashes
    /// cannot be misled by a load balancer whose backends disagree, a read by number can.
    pub async fn block_by_hash(&self, hash: B256) -> Result<Option<BlockHeader>> {
        let v = self
            .call_raw("eth_getBlockByHash", json!([hash, false]))
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        let b = v.block_header()?;
        if b.hash != hash {
            return Err(EngineError::RpcUnavailable(format!(
                "eth_getBlockByHash {hash:#x} answered block {:#x}",
                b.hash
            )));
        }
        Ok(Some(b))
    }

    /// Whether block `hash`, number `number`, is on the chain `depth` blocks deep: an ancestor of
    /// the block at `number + depth - 1`. That block is read by number, the ones between by hash.
    /// A node left on a fork that a reorg abandoned (a load balancer's backend that missed it)
    /// can answer the read by number only when the reorg was deeper than `depth`, and a block
    /// read by hash is the same whichever node answers. Comparing the block read by number at
    /// `number` instead let a receipt and a block from such a backend make a step final on a
    /// block the live chain had replaced (scenario known-failures/rpc-stale-fork). Reads
    /// `max(1, depth - 1)` blocks.
    pub async fn settled(&self, number: u64, hash: B256, depth: u64) -> Result<bool> {
        assert!(depth >= 1, "a depth counts the block itself");
        let top = number + depth - 1;
        let Some(mut b) = self.block(top).await? else {
            return Ok(false);
        };
        if b.number != top {
            return Ok(false);
        }
        while b.number > number + 1 {
            match self.block_by_hash(b.parent_hash).await? {
                Some(parent) if parent.number + 1 == b.number => b = parent,
                _ => return Ok(false),
            }
        }
        Ok(if b.number == number {
            b.hash == hash
        } else {
            b.parent_hash == hash
        })
    }

    /// Block `number` with its transactions (`None` above the head).
    pub async fn block_transactions(
        &self,
        number: u64,
    ) -> Result<Option<(BlockHeader, Vec<ChainTx>)>> {
        let v = self
            .call(
                "eth_getBlockByNumber",
                json!([format!("0x{number:x}"), true]),
            )
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        let header = BlockHeader::from_json(&v)?;
        let txs = v
            .get("transactions")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(ChainTx::from_json).collect::<Result<Vec<_>>>())
            .transpose()?
            .unwrap_or_default();
        Ok(Some((header, txs)))
    }

    pub async fn latest_block(&self) -> Result<BlockHeader> {
        self.call_raw("eth_getBlockByNumber", json!(["latest", false]))
            .await?
            .block_header()
    }

    /// `eth_call` at the latest block; a revert is [`EngineError::Reverted`]. The engine
    /// decides on what a call reads (compliance), so any answer from an endpoint behind the
    /// best head is asked again of a fresher one: a lagging node's state is not the chain's.
    pub async fn eth_call(&self, from: Address, to: Address, data: &Bytes) -> Result<Bytes> {
        let v = self
            .call_fresh(
                "eth_call",
                json!([{"from": from, "to": to, "data": data}, "latest"]),
                |_| true,
            )
            .await?;
        v.parse("bad call result")
    }

    /// Simulate a transaction (deploys included) without sending it.
    pub async fn simulate(
        &self,
        from: Address,
        to: Option<Address>,
        data: &Bytes,
        value: U256,
        gas: u64,
    ) -> Result<()> {
        let mut tx =
            json!({"from": from, "data": data, "value": value, "gas": format!("0x{gas:x}")});
        if let Some(to) = to {
            tx["to"] = json!(to);
        }
        self.call_fresh("eth_call", json!([tx, "latest"]), reverted_or_empty)
            .await
            .map(|_| ())
    }

    pub async fn code(&self, at: Address) -> Result<Bytes> {
        self.call_raw("eth_getCode", json!([at, "latest"]))
            .await?
            .parse("bad code")
    }

    pub async fn logs_in_block(&self, block_hash: B256, topic0: B256) -> Result<Vec<Log>> {
        self.call_raw(
            "eth_getLogs",
            json!([{"blockHash": block_hash, "topics": [topic0]}]),
        )
        .await?
        .logs()
    }

    /// Fees for a new transaction: twice the next block's base fee plus the priority fee, so a
    /// transaction survives a few full blocks of base-fee growth.
    pub async fn suggest_fees(&self, priority_fee: u128) -> Result<super::types::Fees> {
        let latest = self.latest_block().await?;
        let base = latest.base_fee.unwrap_or(1_000_000_000);
        Ok(super::types::Fees {
            max_fee_per_gas: base * 2 + priority_fee,
            max_priority_fee_per_gas: priority_fee,
        })
    }
}

/// A JSON-RPC request, written as the map `json!({"jsonrpc", "id", "method", "params"})` would
/// be (serde_json's map sorts its keys: these fields are in that order), byte for byte, without
/// building the map: its keys, the method's copy and the parameters' move.
#[derive(serde::Serialize)]
struct Request<'a> {
    id: u64,
    jsonrpc: &'static str,
    method: &'a str,
    params: &'a Value,
}

fn is_null(answer: &Result<Answer>) -> bool {
    matches!(answer, Ok(a) if a.is_null())
}

/// A revert, or no data (no code at the address): what a node answers for state it has not
/// reached yet as well as for a call that is wrong.
fn reverted_or_empty(answer: &Result<Answer>) -> bool {
    match answer {
        Err(EngineError::Reverted(_)) => true,
        Ok(a) => a.value().is_ok_and(|v| v.as_str() == Some("0x")),
        Err(_) => false,
    }
}

fn fails_over(e: &EngineError) -> bool {
    match e {
        EngineError::RpcTimeout { .. } | EngineError::RpcUnavailable(_) => true,
        // limit exceeded, internal error, a node behind the chain: another node may do better
        EngineError::Rpc { .. } => e.node_unavailable(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One endpoint whose head the test moves; it knows no receipts.
    struct Node(Arc<AtomicU64>);

    #[async_trait::async_trait]
    impl Transport for Node {
        async fn post(&self, _: &str, body: String) -> std::result::Result<String, TransportError> {
            let req: Value = serde_json::from_str(&body).expect("json");
            let result = match req["method"].as_str() {
                Some("eth_blockNumber") => json!(format!("{:#x}", self.0.load(Ordering::Relaxed))),
                // No code anywhere: what a node answers for a contract it has not reached yet.
                Some("eth_call") => json!("0x"),
                _ => Value::Null,
            };
            Ok(json!({"jsonrpc": "2.0", "id": req["id"], "result": result}).to_string())
        }
    }

    /// A gateway over one [`Node`] at head `head`, and the handle that moves that head.
    fn sole_endpoint_at(head: u64) -> (Gateway, Arc<AtomicU64>) {
        let head = Arc::new(AtomicU64::new(head));
        let g = Gateway::new(
            &[RpcEndpoint::from_url("http://rpc-0")],
            Arc::new(Node(head.clone())),
            TimeoutConfig::default(),
            &ChainConfig::default(),
            Arc::new(Metrics::default()),
        );
        (g, head)
    }

    #[test]
    fn a_request_is_written_as_the_json_map_would_write_it() {
        let params = json!([{"from": Address::ZERO, "data": "0x01\"\\"}, "latest", 7, null]);
        for (id, method) in [(1, "eth_call"), (u64::MAX, "m\u{e9}thod \"quoted\"")] {
            let map = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            let written = serde_json::to_string(&Request {
                id,
                jsonrpc: "2.0",
                method,
                params: &params,
            })
            .unwrap();
            assert_eq!(written, serde_json::to_string(&map).unwrap());
        }
    }

    #[tokio::test]
    async fn a_sole_endpoint_that_fell_behind_is_not_believed_when_it_knows_nothing() {
        let (g, head) = sole_endpoint_at(100);
        g.probe().await;
        assert_eq!(
            g.receipt(B256::ZERO).await.unwrap(),
            None,
            "a current node's null"
        );
        // Ten blocks behind what it said before (max_lag_blocks is 5): its null may only mean
        // that it has not reached the block yet.
        head.store(90, Ordering::Relaxed);
        g.probe().await;
        let e = g.receipt(B256::ZERO).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(!g.transaction_known(B256::ZERO).await.is_ok_and(|k| !k));
        // Caught up to within the tolerance (a reorg shortens the chain by a block or two).
        head.store(97, Ordering::Relaxed);
        g.probe().await;
        assert_eq!(g.receipt(B256::ZERO).await.unwrap(), None);
    }

    /// Swarm seed 1463: the sole endpoint fell to head 0 after a probe saw it current, and its
    /// empty `eth_call` answer (no code "yet") dead-lettered a valid transfer.
    #[tokio::test]
    async fn a_call_answered_by_a_node_that_fell_behind_since_the_probe_is_not_believed() {
        let (g, head) = sole_endpoint_at(100);
        g.probe().await;
        assert_eq!(
            g.eth_call(Address::ZERO, Address::ZERO, &Bytes::new())
                .await
                .unwrap(),
            Bytes::new(),
            "a current node's answer is believed"
        );
        // The node falls behind between probes; nothing but the call itself can notice.
        head.store(0, Ordering::Relaxed);
        let e = g
            .eth_call(Address::ZERO, Address::ZERO, &Bytes::new())
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(matches!(e, EngineError::RpcUnavailable(_)), "{e}");
        // Back to within the tolerance: believed again, without waiting for a probe.
        head.store(98, Ordering::Relaxed);
        assert!(g
            .eth_call(Address::ZERO, Address::ZERO, &Bytes::new())
            .await
            .is_ok());
    }
    /// Two forks behind one load balancer: blocks 0..=12 of the live chain (fork 2), and an
    /// abandoned fork (fork 1) that shares 0..=8 and has its own 9 and 10. Reads by number
    /// alternate between the two backends (the abandoned one answers `null` above 10); reads by
    /// hash find either fork's block.
    struct TwoForks {
        reads: AtomicU64,
    }

    fn fork_hash(fork: u8, n: u64) -> B256 {
        let fork = if n <= 8 { 0 } else { fork };
        B256::from(U256::from(n) | (U256::from(fork) << 200))
    }

    fn fork_block(fork: u8, n: u64) -> Value {
        json!({"number": format!("{n:#x}"), "hash": fork_hash(fork, n),
            "parentHash": fork_hash(fork, n.saturating_sub(1)), "timestamp": "0x0",
            "baseFeePerGas": "0x1"})
    }

    #[async_trait::async_trait]
    impl Transport for TwoForks {
        async fn post(&self, _: &str, body: String) -> std::result::Result<String, TransportError> {
            let req: Value = serde_json::from_str(&body).expect("json");
            let p = &req["params"];
            let result = match req["method"].as_str() {
                Some("eth_getBlockByNumber") => {
                    let n = quantity(&p[0]).expect("a block number");
                    let stale = self.reads.fetch_add(1, Ordering::Relaxed) % 2 == 1;
                    match (stale, n) {
                        (true, 0..=10) => fork_block(1, n),
                        (false, 0..=12) => fork_block(2, n),
                        _ => Value::Null,
                    }
                }
                Some("eth_getBlockByHash") => (0..=10)
                    .map(|n| fork_block(1, n))
                    .chain((0..=12).map(|n| fork_block(2, n)))
                    .find(|b| b["hash"] == p[0])
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            };
            Ok(json!({"jsonrpc": "2.0", "id": req["id"], "result": result}).to_string())
        }
    }

    #[tokio::test]
    async fn settled_walks_down_from_the_depth_and_a_backend_left_on_a_fork_cannot_fool_it() {
        let g = Gateway::new(
            &[RpcEndpoint::from_url("http://rpc-0")],
            Arc::new(TwoForks {
                reads: AtomicU64::new(0),
            }),
            TimeoutConfig::default(),
            &ChainConfig::default(),
            Arc::new(Metrics::default()),
        );
        // The abandoned fork's block 9 (a receipt the stale backend serves): never settled at
        // depth 3, whichever backend answers (its block 11 by number is the live chain's, or
        // unknown to the stale backend). Comparing block 9 read by number (what the check did
        // before) is fooled every other read.
        for _ in 0..4 {
            assert!(!g.settled(9, fork_hash(1, 9), 3).await.unwrap());
        }
        let fooled = [g.block(9).await.unwrap(), g.block(9).await.unwrap()]
            .iter()
            .any(|b| b.as_ref().map(|b| b.hash) == Some(fork_hash(1, 9)));
        assert!(fooled, "the stale backend answers block 9 by number");
        // The live chain's block 9 at depth 3: settled when the live backend answers the read
        // by number; the stale one does not know block 11 (not yet: asked again next poll).
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            verdicts.push(g.settled(9, fork_hash(2, 9), 3).await.unwrap());
        }
        assert!(
            verdicts.contains(&true) && verdicts.contains(&false),
            "{verdicts:?}"
        );
        // A block both forks share: settled at depth 2 and 3, whoever answers.
        for depth in [2, 3] {
            for _ in 0..2 {
                assert!(g.settled(5, fork_hash(0, 5), depth).await.unwrap());
            }
        }
        // Not deep enough on the live chain yet (block 12 at depth 2 needs block 13).
        assert!(!g.settled(12, fork_hash(2, 12), 2).await.unwrap());
    }

    /// A node with a `txpool` namespace (`Some` content) or without one; counts the calls.
    struct Pool {
        content: Option<Value>,
        calls: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Transport for Pool {
        async fn post(&self, _: &str, body: String) -> std::result::Result<String, TransportError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let req: Value = serde_json::from_str(&body).expect("json");
            let answer = match (&self.content, req["method"].as_str()) {
                (None, _) => json!({"error": {"code": -32601, "message": "Method not found"}}),
                (Some(c), Some("txpool_status")) => json!({"result": {
                    "pending": "0x0",
                    "queued": format!("{:#x}", c["queued"].as_object().map_or(0, |q| q.values().map(|n| n.as_object().map_or(0, |n| n.len())).sum::<usize>())),
                }}),
                (Some(c), Some("txpool_content")) => json!({ "result": c }),
                _ => json!({ "result": null }),
            };
            let mut answer = answer;
            answer["jsonrpc"] = json!("2.0");
            answer["id"] = req["id"].clone();
            Ok(answer.to_string())
        }
    }

    fn over(pool: Arc<Pool>) -> Gateway {
        Gateway::new(
            &[RpcEndpoint::from_url("http://rpc-0")],
            pool,
            TimeoutConfig::default(),
            &ChainConfig::default(),
            Arc::new(Metrics::default()),
        )
    }

    fn pool_tx(from: Address, nonce: u64) -> Value {
        json!({
            "hash": B256::repeat_byte(nonce as u8), "from": from, "nonce": format!("{nonce:#x}"),
            "type": "0x2", "chainId": "0x7a69", "to": Address::repeat_byte(9), "value": "0x0",
            "input": "0x", "gas": "0x5208", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1",
            "blockHash": null, "blockNumber": null, "transactionIndex": null,
        })
    }

    #[tokio::test]
    async fn queued_transactions_are_the_senders_queued_part_of_the_pool() {
        let me = Address::repeat_byte(1);
        let other = Address::repeat_byte(2);
        let content = json!({
            "pending": { format!("{me:#x}"): { "3": pool_tx(me, 3) } },
            "queued": {
                format!("{me:#x}"): { "7": pool_tx(me, 7), "5": pool_tx(me, 5) },
                format!("{other:#x}"): { "9": pool_tx(other, 9) },
            },
        });
        let g = over(Arc::new(Pool {
            content: Some(content),
            calls: AtomicU64::new(0),
        }));
        let q = g.queued_txs(me).await.unwrap().expect("a pool");
        assert_eq!(q.iter().map(|t| t.nonce).collect::<Vec<_>>(), vec![5, 7]);
        assert_eq!(
            g.queued_txs(Address::repeat_byte(3)).await.unwrap(),
            Some(vec![])
        );
        // Nothing queued anywhere: one call, not two.
        let pool = Arc::new(Pool {
            content: Some(json!({"pending": {}, "queued": {}})),
            calls: AtomicU64::new(0),
        });
        let g = over(pool.clone());
        assert_eq!(g.queued_txs(me).await.unwrap(), Some(vec![]));
        assert_eq!(pool.calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_node_without_a_txpool_namespace_is_asked_once() {
        let pool = Arc::new(Pool {
            content: None,
            calls: AtomicU64::new(0),
        });
        let g = over(pool.clone());
        for _ in 0..3 {
            assert_eq!(g.queued_txs(Address::repeat_byte(1)).await.unwrap(), None);
        }
        assert_eq!(pool.calls.load(Ordering::Relaxed), 1);
    }
}
