//! The simulated chain host (one chain, mining a block every `block_time_ms`) and the RPC
//! endpoint hosts in front of it, which the fault injector can take down, make erroring, slow,
//! lagging, or make accept a transaction and then never answer (the ambiguous send), or put
//! behind a load balancer with a backend left on an old fork (the stale fork).

use super::net::{serve, CallError, Client};
use super::{epoch_ms, rpc_addr, t_ms};
use crate::chain::ChainModel;
use crate::check::failover::{RpcFailure, RpcRequest as LoggedRequest};
use crate::rng::SimRng;
use crate::trace::Trace;
use alloy_primitives::Address;
use dalp_engine::chain::{Transport, TransportError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One active fault on an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcMode {
    /// Connection refused.
    Down,
    /// An error answer, for every method or one: an HTTP status, or a JSON-RPC error code
    /// (negative; see [`crate::scenario::RPC_ERROR_CODES`]).
    Error(Option<String>, i64),
    /// No answer, for every method or one.
    Timeout(Option<String>),
    /// `eth_sendRawTransaction` reaches the mempool, the answer never comes back.
    Ambiguous,
    /// Serves a head this many blocks behind.
    Lag(u64),
}

/// A load balancer's backend that stopped following the chain (`rpc_stale_fork`).
pub struct StaleBackend {
    /// The chain as it was when the backend stopped.
    chain: ChainModel,
    /// The reads it answers (`None`: every read).
    methods: Option<Vec<String>>,
    /// A `null` it answers is answered by the live chain instead (a cache).
    cache: bool,
}

impl StaleBackend {
    fn serves(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == method))
    }
}

pub struct ChainWorld {
    pub model: Mutex<ChainModel>,
    /// Active faults per endpoint index, with an id each so overlapping faults heal separately.
    pub modes: Mutex<BTreeMap<usize, Vec<(u64, RpcMode)>>>,
    pub block_time: Duration,
    pub signer: Address,
    pub trace: Trace,
    /// Requests served per JSON-RPC method (for the run's statistics).
    pub calls: Mutex<BTreeMap<String, u64>>,
    /// Every request an RPC fault failed: (run ms, endpoint index). Visibility judges a fault
    /// only once it met a request (not traced: the trace hash stays a function of the seed
    /// whether or not visibility is checked).
    pub faulted: Mutex<Vec<(u64, usize)>>,
    /// Every request served, by whom and how it failed (the `failover` checker's evidence; not
    /// traced either).
    pub requests: Mutex<Vec<LoggedRequest>>,
    /// Per endpoint, the backends that stopped following the chain (one per active stale-fork
    /// fault, by its id): frozen copies of the chain as it was when they stopped.
    pub stale: Mutex<BTreeMap<usize, BTreeMap<u64, StaleBackend>>>,
    /// Which backend a load-balanced read goes to: seeded, drawn only while a stale backend is
    /// active (so other runs' traces do not depend on it).
    pub balancer: Mutex<SimRng>,
}

impl ChainWorld {
    pub fn add_mode(&self, endpoint: usize, id: u64, mode: RpcMode) {
        self.modes
            .lock()
            .expect("modes")
            .entry(endpoint)
            .or_default()
            .push((id, mode));
    }
    pub fn remove_mode(&self, endpoint: usize, id: u64) {
        if let Some(v) = self.modes.lock().expect("modes").get_mut(&endpoint) {
            v.retain(|(i, _)| *i != id);
        }
    }
    /// A backend of `endpoint` stops following the chain now (fault `id`); it answers `methods`
    /// (`None`: every read), and only what it knows when it is a `cache`.
    pub fn freeze_backend(
        &self,
        endpoint: usize,
        id: u64,
        methods: Option<Vec<String>>,
        cache: bool,
    ) {
        let chain = self.model.lock().expect("chain").clone();
        self.stale
            .lock()
            .expect("stale")
            .entry(endpoint)
            .or_default()
            .insert(
                id,
                StaleBackend {
                    chain,
                    methods,
                    cache,
                },
            );
    }
    pub fn thaw_backend(&self, endpoint: usize, id: u64) {
        if let Some(m) = self.stale.lock().expect("stale").get_mut(&endpoint) {
            m.remove(&id);
        }
    }
    /// A reorg is about to replace blocks of `chain`: every stale backend missed what happened
    /// since it stopped and now stops just before the reorg, on the fork the reorg abandons.
    pub fn strand_backends(&self, chain: &ChainModel) {
        for backends in self.stale.lock().expect("stale").values_mut() {
            for b in backends.values_mut() {
                b.chain = chain.clone();
            }
        }
    }
    /// The answer of `endpoint`'s stale backend to a read, when the balancer sends it there.
    fn stale_answer(&self, endpoint: usize, method: &str, req: &Value, lag: u64) -> Option<String> {
        let mut stale = self.stale.lock().expect("stale");
        let backend = stale
            .get_mut(&endpoint)?
            .values_mut()
            .find(|b| b.serves(method))?;
        if self.balancer.lock().expect("balancer").unit() >= 0.5 {
            return None;
        }
        let answer = backend.chain.handle_request(req, epoch_ms(), lag);
        if backend.cache && answer_is_null(&answer) {
            return None;
        }
        Some(answer)
    }
    fn modes_of(&self, endpoint: usize) -> Vec<RpcMode> {
        self.modes
            .lock()
            .expect("modes")
            .get(&endpoint)
            .map(|v| v.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default()
    }
}

/// The chain host's process: mine forever.
pub async fn miner(chain: Arc<ChainWorld>) {
    loop {
        tokio::time::sleep(chain.block_time).await;
        let summary = chain.model.lock().expect("chain").mine_block(epoch_ms());
        chain.trace.record(
            t_ms(),
            "chain",
            "chain",
            "block",
            json!({
                "number": summary.number, "hash": summary.hash, "base_fee": summary.base_fee.to_string(),
                "gas_used": summary.gas_used, "included": summary.included, "dropped": summary.dropped.len(),
            }),
        );
    }
}

pub struct RpcRequest(pub String);
pub struct RpcResponse(pub Result<String, TransportError>);

/// A request's method, and a hash of its method and parameters (not its id): the same call
/// sent to another endpoint hashes the same (FNV-1a over the parameters' structure, not their
/// text: serializing them again only to hash them cost more than answering; deterministic).
fn call_of(v: &Value) -> (String, u64) {
    let method = v
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut h = Fnv::default();
    h.bytes(method.as_bytes());
    h.bytes(&[0]);
    if let Some(p) = v.get("params") {
        h.value(p);
    }
    (method, h.0)
}

/// FNV-1a, fed a JSON value's shape and contents.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// Each kind of value starts with its own tag, and strings and containers say their length,
    /// so two different values never feed the same bytes.
    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.bytes(&[0]),
            Value::Bool(b) => self.bytes(&[1, u8::from(*b)]),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    self.bytes(&[2]);
                    self.bytes(&u.to_le_bytes());
                } else if let Some(i) = n.as_i64() {
                    self.bytes(&[3]);
                    self.bytes(&i.to_le_bytes());
                } else {
                    self.bytes(&[4]);
                    self.bytes(&n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes());
                }
            }
            Value::String(s) => self.string(s),
            Value::Array(a) => {
                self.bytes(&[6]);
                self.bytes(&(a.len() as u64).to_le_bytes());
                for x in a {
                    self.value(x);
                }
            }
            Value::Object(m) => {
                self.bytes(&[7]);
                self.bytes(&(m.len() as u64).to_le_bytes());
                for (k, x) in m {
                    self.string(k);
                    self.value(x);
                }
            }
        }
    }
    fn string(&mut self, s: &str) {
        self.bytes(&[5]);
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }
}

/// Whether a JSON-RPC answer's `result` is `null` (a cache miss).
fn answer_is_null(answer: &str) -> bool {
    serde_json::from_str::<Value>(answer).is_ok_and(|v| v.get("result").is_some_and(Value::is_null))
}

/// The engine a request came from, by its address (`ip(1, i)`).
fn engine_of(from: SocketAddr) -> Option<usize> {
    match from.ip() {
        std::net::IpAddr::V4(a) if a.octets()[..3] == [10, 0, 1] => {
            Some(usize::from(a.octets()[3]) - 1)
        }
        _ => None,
    }
}

/// A node's JSON-RPC error answer to `body` with `code`, in the words real nodes use: geth's and
/// Erigon's for a node behind the chain (state reads lack the trie, block reads the header),
/// a provider's rate limit, an internal error.
fn error_answer(body: &str, method: &str, code: i64) -> String {
    let id = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    let message = match code {
        -32000 => match method {
            "eth_call" | "eth_estimateGas" | "eth_getBalance" | "eth_getCode"
            | "eth_getStorageAt" | "eth_getTransactionCount" => {
                "missing trie node 5f2a4e6b1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f (path ) <nil>"
            }
            _ => "header not found",
        },
        -32005 => "limit exceeded",
        _ => "internal error",
    };
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

/// RPC endpoint `k`'s process.
pub async fn rpc_process(chain: Arc<ChainWorld>, k: usize) {
    let name = format!("rpc-{k}");
    serve(rpc_addr(k), move |req: RpcRequest, from: SocketAddr| {
        let chain = chain.clone();
        let name = name.clone();
        async move {
            let body = req.0;
            // Parsed once: for the request log here and for the model's answer below.
            let parsed = serde_json::from_str::<Value>(&body).ok();
            let (method, call) = call_of(parsed.as_ref().unwrap_or(&Value::Null));
            *chain
                .calls
                .lock()
                .expect("calls")
                .entry(method.clone())
                .or_default() += 1;
            let modes = chain.modes_of(k);
            let hits = |m: &Option<String>| m.as_deref().is_none_or(|x| x == method);
            let failed = modes.contains(&RpcMode::Down)
                || modes
                    .iter()
                    .any(|m| matches!(m, RpcMode::Timeout(x) | RpcMode::Error(x, _) if hits(x)));
            if failed {
                chain.faulted.lock().expect("faulted").push((t_ms(), k));
            }
            let unanswered = modes
                .iter()
                .any(|m| matches!(m, RpcMode::Timeout(x) if hits(x)))
                || (method == "eth_sendRawTransaction" && modes.contains(&RpcMode::Ambiguous));
            chain
                .requests
                .lock()
                .expect("requests")
                .push(LoggedRequest {
                    t_ms: t_ms(),
                    endpoint: k,
                    engine: engine_of(from),
                    method: method.clone(),
                    call,
                    failure: if failed && !unanswered {
                        Some(RpcFailure::Immediate)
                    } else if unanswered {
                        Some(RpcFailure::Unanswered)
                    } else {
                        None
                    },
                });
            if modes.contains(&RpcMode::Down) {
                return Some(RpcResponse(Err(TransportError::Unreachable(
                    "connection refused".into(),
                ))));
            }
            if modes
                .iter()
                .any(|m| matches!(m, RpcMode::Timeout(x) if hits(x)))
            {
                return None;
            }
            if let Some(code) = modes.iter().find_map(|m| match m {
                RpcMode::Error(x, code) if hits(x) => Some(*code),
                _ => None,
            }) {
                return Some(RpcResponse(if code > 0 {
                    Err(TransportError::Status(code as u16))
                } else {
                    Ok(error_answer(&body, &method, code))
                }));
            }
            let lag = modes
                .iter()
                .filter_map(|m| match m {
                    RpcMode::Lag(b) => Some(*b),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            // Sends reach the live chain whichever backend takes them (nodes gossip them).
            let stale = match &parsed {
                Some(req) if method != "eth_sendRawTransaction" => {
                    chain.stale_answer(k, &method, req, lag)
                }
                _ => None,
            };
            let answer = match stale {
                Some(a) => a,
                None => {
                    let mut model = chain.model.lock().expect("chain");
                    match &parsed {
                        Some(req) => model.handle_request(req, epoch_ms(), lag),
                        None => model.handle_rpc(&body, epoch_ms(), lag),
                    }
                }
            };
            if method == "eth_sendRawTransaction" {
                chain.trace.record(
                    t_ms(),
                    &name,
                    "chain",
                    "send_raw",
                    json!({"answer": answer}),
                );
                if modes.contains(&RpcMode::Ambiguous) {
                    return None;
                }
            }
            Some(RpcResponse(Ok(answer)))
        }
    })
    .await;
}

/// The engine's transport in the simulation: JSON-RPC bodies over the simulated network to the
/// endpoint named in the URL (`http://rpc-<k>:8545`).
pub struct SimTransport {
    client: Client,
    endpoints: BTreeMap<String, SocketAddr>,
}

impl SimTransport {
    /// The transport of the host with address `ip`.
    pub fn new(ip: std::net::IpAddr, endpoints: usize) -> Self {
        SimTransport {
            client: Client::bind(ip),
            endpoints: (0..endpoints)
                .map(|k| (endpoint_url(k), rpc_addr(k)))
                .collect(),
        }
    }
}

pub fn endpoint_url(k: usize) -> String {
    format!("http://rpc-{k}:8545")
}

#[async_trait::async_trait]
impl Transport for SimTransport {
    async fn post(&self, endpoint: &str, body: String) -> Result<String, TransportError> {
        let addr = *self
            .endpoints
            .get(endpoint)
            .ok_or_else(|| TransportError::Unreachable(format!("unknown host in {endpoint}")))?;
        // The gateway bounds every call; this outer bound only keeps abandoned calls finite.
        match self
            .client
            .call::<RpcRequest, RpcResponse>(addr, RpcRequest(body), Duration::from_secs(120))
            .await
        {
            Ok(RpcResponse(r)) => r,
            Err(CallError::Timeout) => Err(TransportError::Io("timed out".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainParams;

    #[test]
    fn a_call_hashes_by_method_and_parameters_not_id() {
        let call = |text: &str| call_of(&serde_json::from_str(text).unwrap());
        let a = call(
            r#"{"id":1,"jsonrpc":"2.0","method":"eth_getBlockByNumber","params":["0x5",false]}"#,
        );
        let b = call(
            r#"{"id":9,"jsonrpc":"2.0","method":"eth_getBlockByNumber","params":["0x5",false]}"#,
        );
        assert_eq!(a, b);
        assert_eq!(a.0, "eth_getBlockByNumber");
        for other in [
            r#"{"id":1,"method":"eth_getBlockByNumber","params":["0x5",true]}"#,
            r#"{"id":1,"method":"eth_getBlockByNumber","params":["0x6",false]}"#,
            r#"{"id":1,"method":"eth_getBlockByHash","params":["0x5",false]}"#,
            r#"{"id":1,"method":"eth_getBlockByNumber","params":[["0x5"],false]}"#,
            r#"{"id":1,"method":"eth_getBlockByNumber","params":["0x5false"]}"#,
            r#"{"id":1,"method":"eth_getBlockByNumber","params":{"0x5":false}}"#,
            r#"{"id":1,"method":"eth_getBlockByNumber"}"#,
        ] {
            assert_ne!(call(other).1, a.1, "{other}");
        }
    }

    #[test]
    fn a_stale_backend_serves_its_methods_and_a_cache_only_what_it_knows() {
        let backend = |methods: Option<Vec<String>>| StaleBackend {
            chain: ChainModel::new(ChainParams::anvil(vec![]), 0),
            methods,
            cache: true,
        };
        let receipts = backend(Some(vec!["eth_getTransactionReceipt".into()]));
        assert!(receipts.serves("eth_getTransactionReceipt"));
        assert!(!receipts.serves("eth_getBlockByNumber"));
        assert!(backend(None).serves("eth_getBlockByNumber"));
        // A receipt it never saw is a miss (the live chain answers); an answer, or an error, is not.
        assert!(answer_is_null(r#"{"jsonrpc":"2.0","id":1,"result":null}"#));
        assert!(!answer_is_null(
            r#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#
        ));
        assert!(!answer_is_null(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}"#
        ));
        assert!(!answer_is_null("not json"));
    }
}
