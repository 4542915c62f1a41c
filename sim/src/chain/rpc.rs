//! JSON-RPC over the chain model: request text in, response text out, shaped like Anvil's.
//!
//! The engine's own client (`dalp_engine::chain::gateway`) parses these answers, so field names,
//! quantity encoding, error codes and messages follow what the real Anvil binary returns (checked
//! against Anvil 1.7.1, continuously by `tests/tests/chain_conformance.rs`). Responses are built
//! from ordered maps only, so the same model state gives the same bytes. Anvil's test methods
//! (`evm_mine`, `anvil_mine`, `anvil_dropTransaction`, `anvil_setBalance`,
//! `anvil_setNextBlockBaseFeePerGas`, `anvil_rollback`, …) are answered too, so the conformance
//! tests drive both the same way; the simulation itself injects faults through the model's methods.

use super::model::{
    revert_message, Block, ChainModel, Included, LogRec, NodeTx, TxReject, DEFAULT_PRIORITY_FEE,
};
use alloy_consensus::{Transaction as _, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, Bloom, Bytes, B256, U256};
use revm::context_interface::transaction::{AccessList, AccessListItem};
use serde_json::{json, Map, Value};

const INVALID_REQUEST: &str =
    r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}"#;
/// Appends `v`'s JSON text to `out` (a `Value` always serializes).
fn write_json(out: &mut Vec<u8>, v: &Value) {
    serde_json::to_writer(out, v).expect("a JSON value serializes");
}

const EMPTY_OMMERS: &str = "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347";
const EMPTY_ROOT: &str = "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421";
const EMPTY_REQUESTS: &str = "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), json!(self.code));
        m.insert("message".into(), json!(self.message));
        if let Some(d) = &self.data {
            m.insert("data".into(), d.clone());
        }
        Value::Object(m)
    }
}

impl From<TxReject> for RpcError {
    fn from(r: TxReject) -> Self {
        let (code, message) = r.rpc();
        RpcError::new(code, message)
    }
}

type RpcResult = Result<Value, RpcError>;

/// The methods whose answers depend only on a block, and are kept as text (see `kept_text`).
const KEPT_AS_TEXT: [&str; 3] = [
    "eth_getTransactionReceipt",
    "eth_getBlockByNumber",
    "eth_getBlockByHash",
];

/// What is kept of a block: one transaction's receipt (by index), or the block itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kept {
    Receipt(usize),
    Block { full: bool },
}

// ---- encoding -------------------------------------------------------------------------------

fn q(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}
fn q128(v: u128) -> Value {
    Value::String(format!("{v:#x}"))
}
fn q256(v: U256) -> Value {
    Value::String(format!("{v:#x}"))
}
fn addr(a: Address) -> Value {
    Value::String(format!("{a:#x}"))
}
fn opt_addr(a: Option<Address>) -> Value {
    a.map_or(Value::Null, addr)
}
fn h256(h: B256) -> Value {
    Value::String(format!("{h:#x}"))
}
fn bytes(b: &[u8]) -> Value {
    Value::String(format!("0x{}", alloy_primitives::hex::encode(b)))
}

// ---- decoding -------------------------------------------------------------------------------

fn param(params: &[Value], i: usize) -> Option<&Value> {
    params.get(i).filter(|v| !v.is_null())
}

/// Anvil (serde) complains about a short parameter list in these words.
fn need(params: &[Value], n: usize, variant: &str) -> Result<(), RpcError> {
    if params.len() < n {
        return Err(RpcError::params(format!(
            "invalid length {}, expected tuple variant EthRequest::{variant} with {n} elements",
            params.len()
        )));
    }
    Ok(())
}

/// Anvil's words for a short parameter list of its `anvil_*` methods.
fn need_seq(params: &[Value], n: usize) -> Result<(), RpcError> {
    if params.len() < n {
        return Err(RpcError::params(format!(
            "expected params sequence with length {n} but got {}",
            params.len()
        )));
    }
    Ok(())
}

fn parse_hex_str(v: &Value) -> Result<&str, RpcError> {
    v.as_str()
        .map(|s| s.strip_prefix("0x").unwrap_or(s))
        .ok_or_else(|| RpcError::params("invalid type: expected a hex string"))
}

fn p_u256(v: &Value) -> Result<U256, RpcError> {
    if let Some(n) = v.as_u64() {
        return Ok(U256::from(n));
    }
    let s = parse_hex_str(v)?;
    U256::from_str_radix(if s.is_empty() { "0" } else { s }, 16)
        .map_err(|_| RpcError::params("invalid hex quantity"))
}

fn p_u64(v: &Value) -> Result<u64, RpcError> {
    u64::try_from(p_u256(v)?).map_err(|_| RpcError::params("quantity out of range"))
}

fn p_fixed<const N: usize>(v: &Value) -> Result<[u8; N], RpcError> {
    let s = parse_hex_str(v)?;
    let raw =
        alloy_primitives::hex::decode(s).map_err(|_| RpcError::params("invalid string length"))?;
    raw.try_into()
        .map_err(|_| RpcError::params("invalid string length"))
}

fn p_addr(v: &Value) -> Result<Address, RpcError> {
    Ok(Address::from(p_fixed::<20>(v)?))
}

fn p_b256(v: &Value) -> Result<B256, RpcError> {
    Ok(B256::from(p_fixed::<32>(v)?))
}

fn p_bytes(v: &Value) -> Result<Bytes, RpcError> {
    let s = parse_hex_str(v)?;
    alloy_primitives::hex::decode(s)
        .map(Bytes::from)
        .map_err(|_| RpcError::params("invalid hex data"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Num(u64),
    Latest,
    Pending,
    Earliest,
    Finalized,
    Safe,
}

impl ChainModel {
    fn p_tag(&self, v: Option<&Value>) -> Result<Tag, RpcError> {
        let Some(v) = v else { return Ok(Tag::Latest) };
        if let Some(obj) = v.as_object() {
            // EIP-1898
            if let Some(h) = obj.get("blockHash") {
                let h = p_b256(h)?;
                return self
                    .blocks
                    .iter()
                    .find(|b| b.hash == h)
                    .map(|b| Tag::Num(b.number))
                    .ok_or_else(|| RpcError::new(-32001, "block not found"));
            }
            if let Some(n) = obj.get("blockNumber") {
                return self.p_tag(Some(n));
            }
            return Err(RpcError::params("invalid block id"));
        }
        Ok(match v.as_str() {
            Some("latest") => Tag::Latest,
            Some("pending") => Tag::Pending,
            Some("earliest") => Tag::Earliest,
            Some("finalized") => Tag::Finalized,
            Some("safe") => Tag::Safe,
            _ => Tag::Num(p_u64(v)?),
        })
    }

    /// The block a tag names as seen from `view` (the possibly lagging head).
    fn resolve(&self, tag: Tag, view: u64) -> u64 {
        let depth = self.params.finality_depth;
        match tag {
            Tag::Num(n) => n,
            Tag::Latest | Tag::Pending => view,
            Tag::Earliest => 0,
            Tag::Finalized => view.saturating_sub(depth),
            Tag::Safe => view.saturating_sub(depth / 2),
        }
    }

    /// A block number for a state query; past the visible head is Anvil's out-of-range error.
    fn state_block(&self, tag: Tag, view: u64) -> Result<u64, RpcError> {
        let n = self.resolve(tag, view);
        if n > view {
            return Err(RpcError::params(format!(
                "BlockOutOfRangeError: block height is {view} but requested was {n}"
            )));
        }
        Ok(n)
    }

    /// One JSON-RPC request body in (an object, or a batch array), the response body out.
    /// `lag_blocks` > 0 answers like an endpoint that is that many blocks behind: the head, the
    /// `latest` state, blocks, receipts and logs are as of `head - lag_blocks`. `now_ms` is the
    /// time a block mined by `evm_mine` / `anvil_mine` gets.
    pub fn handle_rpc(&mut self, body: &str, now_ms: u64, lag_blocks: u64) -> String {
        match serde_json::from_str::<Value>(body) {
            Ok(req) => self.handle_request(&req, now_ms, lag_blocks),
            Err(_) => INVALID_REQUEST.to_string(),
        }
    }

    /// [`Self::handle_rpc`] of a body already parsed (the node's process parses it once, for
    /// its request log as well).
    pub fn handle_request(&mut self, req: &Value, now_ms: u64, lag_blocks: u64) -> String {
        match req {
            Value::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|r| self.handle_one(r, now_ms, lag_blocks))
                    .collect();
                format!("[{}]", parts.join(","))
            }
            Value::Object(_) => self.handle_one(req, now_ms, lag_blocks),
            _ => INVALID_REQUEST.to_string(),
        }
    }

    /// One answer, written straight into its buffer: formatting a `Value` through `Display`
    /// goes through `core::fmt` token by token, and answers (receipts, blocks) are large.
    fn handle_one(&mut self, req: &Value, now_ms: u64, lag: u64) -> String {
        let id = req.get("id").unwrap_or(&Value::Null);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        write_json(&mut out, id);
        let answer = match req.get("method").and_then(Value::as_str) {
            None => Err(RpcError::new(-32600, "Invalid request")),
            Some(method) => {
                let params: &[Value] = match req.get("params") {
                    None | Some(Value::Null) => &[],
                    Some(Value::Array(a)) => a,
                    Some(other) => std::slice::from_ref(other),
                };
                if KEPT_AS_TEXT.contains(&method) {
                    let view = self.head().saturating_sub(lag);
                    match self.kept_text(method, params, view) {
                        Ok(text) => {
                            out.extend_from_slice(br#","result":"#);
                            out.extend_from_slice(text.as_bytes());
                            out.push(b'}');
                            return String::from_utf8(out).expect("serde_json writes UTF-8");
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.dispatch(method, params, now_ms, lag)
                }
            }
        };
        match answer {
            Ok(v) => {
                out.extend_from_slice(br#","result":"#);
                write_json(&mut out, &v);
            }
            Err(e) => {
                out.extend_from_slice(br#","error":"#);
                write_json(&mut out, &e.to_json());
            }
        }
        out.push(b'}');
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    fn dispatch(&mut self, method: &str, p: &[Value], now_ms: u64, lag: u64) -> RpcResult {
        let view = self.head().saturating_sub(lag);
        let state_query = matches!(
            method,
            "eth_getBalance" | "eth_getCode" | "eth_call" | "eth_estimateGas"
        );
        // Anvil's `eth_estimateGas` defaults to the pending block.
        let pending = match param(p, 1) {
            Some(tag) => tag == "pending",
            None => method == "eth_estimateGas",
        };
        if state_query && pending && lag == 0 && !self.pool.is_empty() {
            // Anvil answers `pending` state queries from a block of the pool mined now.
            let mut latest = p.to_vec();
            latest.resize(latest.len().max(2), Value::Null);
            latest[1] = json!("latest");
            return self
                .with_pending_block(now_ms)
                .dispatch(method, &latest, now_ms, 0);
        }
        match method {
            "eth_chainId" => Ok(q(self.params.chain_id)),
            "net_version" => Ok(Value::String(self.params.chain_id.to_string())),
            "web3_clientVersion" => Ok(json!("dalp-sim/chain-model")),
            "eth_blockNumber" => Ok(q(view)),
            "eth_gasPrice" => Ok(q128(self.next_base_fee() + self.suggested_tip(view))),
            "eth_maxPriorityFeePerGas" => Ok(q128(self.suggested_tip(view))),
            "eth_getBalance" => {
                need(p, 2, "EthGetBalance")?;
                let who = p_addr(&p[0])?;
                let n = self.state_block(self.p_tag(param(p, 1))?, view)?;
                Ok(q256(self.state_at(n).balance(who)))
            }
            "eth_getTransactionCount" => {
                need(p, 2, "EthGetTransactionCount")?;
                let who = p_addr(&p[0])?;
                let tag = self.p_tag(param(p, 1))?;
                if tag == Tag::Pending {
                    return Ok(q(self.pending_nonce_of(who)));
                }
                let n = self.state_block(tag, view)?;
                Ok(q(self.state_at(n).nonce(who)))
            }
            "eth_getCode" => {
                need(p, 2, "EthGetCodeAt")?;
                let who = p_addr(&p[0])?;
                let n = self.state_block(self.p_tag(param(p, 1))?, view)?;
                Ok(bytes(&self.state_at(n).code(who)))
            }
            "eth_sendRawTransaction" => {
                need(p, 1, "EthSendRawTransaction")?;
                let raw = p_bytes(&p[0])?;
                let tx = self.decode_raw(&raw)?;
                Ok(h256(self.submit(tx)?))
            }
            "eth_getTransactionByHash" => {
                need(p, 1, "EthGetTransactionByHash")?;
                let h = p_b256(&p[0])?;
                if let Some((b, inc)) = self.mined(h, view) {
                    return Ok(tx_json(&inc.tx, Some((b, inc)), b.base_fee));
                }
                if let Some(tx) = self.pool.get(&h) {
                    return Ok(tx_json(tx, None, self.next_base_fee()));
                }
                // Mined above a lagging view: that node still has it pending.
                if let Some(&(n, i)) = self.tx_index.get(&h) {
                    let base_fee = self.blocks[view as usize + 1].base_fee;
                    return Ok(tx_json(&self.blocks[n as usize].txs[i].tx, None, base_fee));
                }
                Ok(Value::Null)
            }
            // `handle_one` writes these answers from `kept_text` directly; these arms are the
            // same answers for any other caller.
            "eth_getTransactionReceipt" | "eth_getBlockByNumber" | "eth_getBlockByHash" => {
                Ok(serde_json::from_str(self.kept_text(method, p, view)?)
                    .expect("a kept answer is JSON"))
            }
            "eth_getLogs" => {
                need(p, 1, "EthGetLogs")?;
                self.get_logs(&p[0], view)
            }
            "eth_call" => {
                need(p, 1, "EthCall")?;
                let n = self.state_block(self.p_tag(param(p, 1))?, view)?;
                let c = CallArgs::parse(&p[0])?;
                let o = self.run_call(n, c.from, c.to, c.data, c.value, c.gas)?;
                if o.success {
                    Ok(bytes(&o.output))
                } else {
                    Err(call_error(&o))
                }
            }
            "eth_estimateGas" => {
                need(p, 1, "EthEstimateGas")?;
                let n = self.state_block(self.p_tag(param(p, 1))?, view)?;
                let c = CallArgs::parse(&p[0])?;
                self.estimate_gas(n, &c)
            }
            "eth_feeHistory" => {
                need(p, 2, "EthFeeHistory")?;
                self.fee_history(p, view)
            }
            "txpool_status" => {
                let ready: usize = self
                    .pool
                    .values()
                    .map(|t| t.from)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .map(|who| (self.pending_nonce_of(who) - self.nonce_of(who)) as usize)
                    .sum();
                Ok(
                    json!({"pending": q(ready as u64), "queued": q((self.pool.len() - ready) as u64)}),
                )
            }
            "txpool_content" => {
                // Anvil's shape: {pending, queued} → sender (lower-case hex) → nonce (decimal) →
                // the transaction as `eth_getTransactionByHash` shows a pending one, except that
                // its gas price is the fee cap (found by `chain_conformance`).
                let (mut pending, mut queued) = (Map::new(), Map::new());
                for (who, by_nonce) in &self.by_sender {
                    let ready = self.pending_nonce_of(*who);
                    let (mut p, mut q) = (Map::new(), Map::new());
                    for (n, h) in by_nonce {
                        let tx = self.pool.get(h).expect("by_sender lists pool transactions");
                        let side = if *n < ready { &mut p } else { &mut q };
                        let mut j = tx_json(tx, None, 0);
                        j["gasPrice"] = q128(tx.max_fee);
                        side.insert(n.to_string(), j);
                    }
                    if !p.is_empty() {
                        pending.insert(format!("{who:#x}"), Value::Object(p));
                    }
                    if !q.is_empty() {
                        queued.insert(format!("{who:#x}"), Value::Object(q));
                    }
                }
                Ok(json!({"pending": pending, "queued": queued}))
            }
            // Anvil's test methods (the simulation drives its faults through the model's methods;
            // these answer like Anvil so the conformance tests can drive both the same way).
            "evm_mine" => {
                self.mine_block(now_ms);
                Ok(json!("0x0"))
            }
            "anvil_mine" => {
                let n = param(p, 0).map(p_u64).transpose()?.unwrap_or(1);
                for _ in 0..n {
                    self.mine_block(now_ms);
                }
                Ok(Value::Null)
            }
            "anvil_dropTransaction" => {
                need_seq(p, 1)?;
                let h = p_b256(&p[0])?;
                Ok(if self.drop_pending(h) {
                    h256(h)
                } else {
                    Value::Null
                })
            }
            "anvil_dropAllTransactions" => {
                self.drop_all_pending();
                Ok(Value::Null)
            }
            "anvil_setBalance" => {
                need_seq(p, 2)?;
                self.set_balance(p_addr(&p[0])?, p_u256(&p[1])?);
                Ok(Value::Null)
            }
            "anvil_setNextBlockBaseFeePerGas" => {
                need_seq(p, 1)?;
                let fee = u128::try_from(p_u256(&p[0])?)
                    .map_err(|_| RpcError::params("quantity out of range"))?;
                self.set_next_base_fee(fee);
                Ok(Value::Null)
            }
            "anvil_rollback" => {
                need_seq(p, 1)?;
                let depth = p_u64(&p[0])?;
                if depth == 0 {
                    // What Anvil 1.7.1 answers for a rollback by 0.
                    return Err(RpcError::new(-32603, "Required data unavailable"));
                }
                self.rollback(depth).map_err(RpcError::params)?;
                Ok(Value::Null)
            }
            _ => Err(RpcError::new(-32601, "Method not found")),
        }
    }

    /// Anvil's tip suggestion (`eth_maxPriorityFeePerGas`, added to the base fee by
    /// `eth_gasPrice`): the lowest tip paid in the head block, at least [`DEFAULT_PRIORITY_FEE`].
    fn suggested_tip(&self, view: u64) -> u128 {
        let b = &self.blocks[view as usize];
        b.txs
            .iter()
            .map(|i| {
                let above_base = i.tx.max_fee.saturating_sub(b.base_fee);
                i.tx.priority_fee.map_or(above_base, |p| p.min(above_base))
            })
            .min()
            .map_or(DEFAULT_PRIORITY_FEE, |t| t.max(DEFAULT_PRIORITY_FEE))
    }

    /// The answer to one of [`KEPT_AS_TEXT`] as JSON text (`null`: not at or below `view`).
    ///
    /// The engine polls a receipt until it is deep enough, and reads the blocks around it, so
    /// the same receipts and blocks are asked for many times (~12 times each receipt on
    /// `steady-state`). Each is written once, per block hash, and kept. A block never changes
    /// once its hash is set (a reorg mines new blocks, with new hashes: see `salt`), so a kept
    /// text never goes stale.
    fn kept_text(&mut self, method: &str, p: &[Value], view: u64) -> Result<&str, RpcError> {
        let (n, kept) = match method {
            "eth_getTransactionReceipt" => {
                need(p, 1, "EthGetTransactionReceipt")?;
                let h = p_b256(&p[0])?;
                match self.tx_index.get(&h) {
                    Some(&(n, i)) if n <= view => (n, Kept::Receipt(i)),
                    _ => return Ok("null"),
                }
            }
            "eth_getBlockByNumber" => {
                need(p, 2, "EthGetBlockByNumber")?;
                let n = self.resolve(self.p_tag(param(p, 0))?, view);
                let full = param(p, 1).and_then(Value::as_bool).unwrap_or(false);
                if n > view {
                    return Ok("null");
                }
                (n, Kept::Block { full })
            }
            "eth_getBlockByHash" => {
                need(p, 2, "EthGetBlockByHash")?;
                let h = p_b256(&p[0])?;
                let full = param(p, 1).and_then(Value::as_bool).unwrap_or(false);
                match self.blocks[..=view as usize].iter().find(|b| b.hash == h) {
                    Some(b) => (b.number, Kept::Block { full }),
                    None => return Ok("null"),
                }
            }
            _ => unreachable!("{method} is not kept as text"),
        };
        let b = &self.blocks[n as usize];
        let text = self.kept.entry((b.hash, kept)).or_insert_with(|| {
            let v = match kept {
                Kept::Receipt(i) => receipt_json(b, &b.txs[i]),
                Kept::Block { full } => block_json(b, full),
            };
            serde_json::to_string(&v)
                .expect("an answer serializes")
                .into_boxed_str()
        });
        Ok(text)
    }

    fn mined(&self, h: B256, view: u64) -> Option<(&Block, &Included)> {
        let &(n, i) = self.tx_index.get(&h)?;
        if n > view {
            return None;
        }
        let b = &self.blocks[n as usize];
        Some((b, &b.txs[i]))
    }

    /// Decode and recover a signed EIP-2718 transaction (legacy, EIP-2930 or EIP-1559).
    ///
    /// The sender of a transaction already seen is taken from [`ChainModel::senders`]: recovery
    /// is a pure function of the signed bytes, which the hash covers, and it was the largest cost
    /// of a simulated send (an engine re-broadcasts the same bytes, to every endpoint).
    fn decode_raw(&mut self, raw: &[u8]) -> Result<NodeTx, RpcError> {
        if raw.is_empty() {
            return Err(RpcError::params("Empty transaction data"));
        }
        let failed = || RpcError::params("Failed to decode transaction");
        let env = TxEnvelope::decode_2718(&mut &raw[..]).map_err(|_| failed())?;
        let (tx_type, sig) = match &env {
            TxEnvelope::Legacy(s) => (0u8, *s.signature()),
            TxEnvelope::Eip2930(s) => (1, *s.signature()),
            TxEnvelope::Eip1559(s) => (2, *s.signature()),
            _ => {
                return Err(RpcError::params(
                    "transaction type not supported by the simulated chain",
                ))
            }
        };
        let hash = *env.tx_hash();
        let from = match self.senders.get(&hash) {
            Some(from) => *from,
            None => {
                let from = super::ecrecover::recover_sender(&sig, &env.signature_hash())
                    .ok_or_else(failed)?;
                self.senders.insert(hash, from);
                from
            }
        };
        let access_list = AccessList(
            env.access_list()
                .map(|l| {
                    l.iter()
                        .map(|i| AccessListItem {
                            address: i.address,
                            storage_keys: i.storage_keys.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        );
        Ok(NodeTx {
            hash,
            from,
            nonce: env.nonce(),
            tx_type,
            chain_id: env.chain_id(),
            gas_limit: env.gas_limit(),
            max_fee: env.max_fee_per_gas(),
            priority_fee: if tx_type == 2 {
                env.max_priority_fee_per_gas()
            } else {
                None
            },
            to: env.to(),
            value: env.value(),
            input: env.input().clone(),
            access_list,
            sig: Some((sig.r(), sig.s(), sig.v())),
            seq: 0,
        })
    }

    fn get_logs(&self, filter: &Value, view: u64) -> RpcResult {
        let f = filter
            .as_object()
            .ok_or_else(|| RpcError::params("invalid filter"))?;
        let (from, to) = if let Some(h) = f.get("blockHash").filter(|v| !v.is_null()) {
            let h = p_b256(h)?;
            let b = self.blocks[..=view as usize]
                .iter()
                .find(|b| b.hash == h)
                .ok_or_else(|| RpcError::new(-32000, "unknown block"))?;
            (b.number, b.number)
        } else {
            let from = self.resolve(
                self.p_tag(f.get("fromBlock").filter(|v| !v.is_null()))?,
                view,
            );
            let to = self
                .resolve(self.p_tag(f.get("toBlock").filter(|v| !v.is_null()))?, view)
                .min(view);
            (from, to)
        };
        let addresses: Vec<Address> = match f.get("address") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.iter().map(p_addr).collect::<Result<_, _>>()?,
            Some(v) => vec![p_addr(v)?],
        };
        let mut topics: Vec<Option<Vec<B256>>> = Vec::new();
        if let Some(Value::Array(ts)) = f.get("topics") {
            for t in ts {
                topics.push(match t {
                    Value::Null => None,
                    Value::Array(alts) => {
                        let v: Vec<B256> = alts
                            .iter()
                            .filter(|a| !a.is_null())
                            .map(p_b256)
                            .collect::<Result<_, _>>()?;
                        if v.is_empty() {
                            None
                        } else {
                            Some(v)
                        }
                    }
                    v => Some(vec![p_b256(v)?]),
                });
            }
        }
        let matches = |l: &LogRec| {
            (addresses.is_empty() || addresses.contains(&l.address))
                && topics.iter().enumerate().all(|(i, want)| match want {
                    None => true,
                    Some(alts) => l.topics.get(i).is_some_and(|t| alts.contains(t)),
                })
        };
        let mut out = Vec::new();
        if from <= to {
            for b in &self.blocks[from as usize..=to as usize] {
                for inc in &b.txs {
                    for l in inc.logs.iter().filter(|l| matches(l)) {
                        out.push(log_json(b, inc, l));
                    }
                }
            }
        }
        Ok(Value::Array(out))
    }

    /// The smallest gas limit with which the call succeeds (binary search, like Anvil).
    fn estimate_gas(&self, at: u64, c: &CallArgs) -> RpcResult {
        let cap = c.gas.unwrap_or(self.params.block_gas_limit);
        let run = |gas: u64| self.run_call(at, c.from, c.to, c.data.clone(), c.value, Some(gas));
        let first = run(cap)?;
        if !first.success {
            return Err(call_error(&first));
        }
        let (mut lo, mut hi) = (first.gas_used.saturating_sub(1), cap);
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            match run(mid) {
                Ok(o) if o.success => hi = mid,
                _ => lo = mid,
            }
        }
        Ok(q(hi))
    }

    fn fee_history(&self, p: &[Value], view: u64) -> RpcResult {
        let count = p_u64(&p[0])?.min(1024);
        let newest = self.resolve(self.p_tag(param(p, 1))?, view);
        if newest > view {
            return Err(RpcError::params(format!(
                "BlockOutOfRangeError: block height is {view} but requested was {newest}"
            )));
        }
        let percentiles: Vec<f64> = match param(p, 2) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
            _ => Vec::new(),
        };
        if count == 0 {
            return Ok(json!({"baseFeePerGas": [], "gasUsedRatio": [], "oldestBlock": q(0)}));
        }
        let oldest = (newest + 1).saturating_sub(count);
        let blocks = &self.blocks[oldest as usize..=newest as usize];
        let mut base: Vec<Value> = blocks.iter().map(|b| q128(b.base_fee)).collect();
        let next = if newest == self.head() {
            self.next_base_fee()
        } else {
            self.blocks[newest as usize + 1].base_fee
        };
        base.push(q128(next));
        let ratio: Vec<Value> = blocks
            .iter()
            .map(|b| json!(b.gas_used as f64 / b.gas_limit as f64))
            .collect();
        let n = blocks.len();
        let reward: Vec<Value> = if percentiles.is_empty() {
            Vec::new()
        } else {
            blocks
                .iter()
                .map(|b| {
                    Value::Array(
                        percentiles
                            .iter()
                            .map(|pc| q128(reward_at(b, *pc)))
                            .collect(),
                    )
                })
                .collect()
        };
        Ok(json!({
            "baseFeePerGas": base,
            "gasUsedRatio": ratio,
            "baseFeePerBlobGas": vec![q(1); n + 1],
            "blobGasUsedRatio": vec![json!(0.0); n],
            "oldestBlock": q(oldest),
            "reward": reward,
        }))
    }
}

/// The priority fee paid at percentile `pc` of the block's gas (0 for an empty block).
fn reward_at(b: &Block, pc: f64) -> u128 {
    if b.txs.is_empty() || b.gas_used == 0 {
        return 0;
    }
    let mut tips: Vec<(u128, u64)> = b
        .txs
        .iter()
        .map(|i| (i.effective_gas_price.saturating_sub(b.base_fee), i.gas_used))
        .collect();
    tips.sort();
    let threshold = (b.gas_used as f64 * pc / 100.0) as u64;
    let mut acc = 0u64;
    for (tip, gas) in &tips {
        acc += gas;
        if acc >= threshold {
            return *tip;
        }
    }
    tips.last().map_or(0, |t| t.0)
}

/// The fields of an `eth_call` / `eth_estimateGas` request object.
struct CallArgs {
    from: Address,
    to: Option<Address>,
    data: Bytes,
    value: U256,
    gas: Option<u64>,
}

impl CallArgs {
    fn parse(v: &Value) -> Result<Self, RpcError> {
        let o = v
            .as_object()
            .ok_or_else(|| RpcError::params("invalid transaction request"))?;
        let get = |k: &str| o.get(k).filter(|v| !v.is_null());
        Ok(CallArgs {
            from: get("from").map(p_addr).transpose()?.unwrap_or_default(),
            to: get("to").map(p_addr).transpose()?,
            data: get("input")
                .or(get("data"))
                .map(p_bytes)
                .transpose()?
                .unwrap_or_default(),
            value: get("value").map(p_u256).transpose()?.unwrap_or_default(),
            gas: get("gas").map(p_u64).transpose()?,
        })
    }
}

/// Anvil's error for a failed call: code 3 with the revert data for a revert, -32603 for a halt.
fn call_error(o: &super::evm::Outcome) -> RpcError {
    if o.halted.is_some() {
        return RpcError::new(-32603, revert_message(o));
    }
    RpcError {
        code: 3,
        message: revert_message(o),
        data: Some(bytes(&o.output)),
    }
}

fn access_list_json(l: &AccessList) -> Value {
    Value::Array(
        l.0.iter()
            .map(|i| {
                json!({
                    "address": addr(i.address),
                    "storageKeys": i.storage_keys.iter().map(|k| h256(*k)).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// A transaction object; a pending one reports the price it would pay at `base_fee` (the next
/// block's), as Anvil does.
fn tx_json(tx: &NodeTx, mined: Option<(&Block, &Included)>, base_fee: u128) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), q(tx.tx_type as u64));
    if let Some(id) = tx.chain_id {
        m.insert("chainId".into(), q(id));
    }
    m.insert("nonce".into(), q(tx.nonce));
    m.insert("gas".into(), q(tx.gas_limit));
    if tx.tx_type == 2 {
        m.insert("maxFeePerGas".into(), q128(tx.max_fee));
        m.insert(
            "maxPriorityFeePerGas".into(),
            q128(tx.priority_fee.unwrap_or(0)),
        );
    }
    if tx.tx_type >= 1 {
        m.insert("accessList".into(), access_list_json(&tx.access_list));
    }
    m.insert("to".into(), opt_addr(tx.to));
    m.insert("value".into(), q256(tx.value));
    m.insert("input".into(), bytes(&tx.input));
    let (r, s, parity) = tx.sig.unwrap_or((U256::ZERO, U256::ZERO, false));
    m.insert("r".into(), q256(r));
    m.insert("s".into(), q256(s));
    let v = if tx.tx_type == 0 {
        match tx.chain_id {
            Some(id) => id * 2 + 35 + parity as u64,
            None => 27 + parity as u64,
        }
    } else {
        m.insert("yParity".into(), q(parity as u64));
        parity as u64
    };
    m.insert("v".into(), q(v));
    m.insert("hash".into(), h256(tx.hash));
    m.insert("from".into(), addr(tx.from));
    match mined {
        Some((b, inc)) => {
            m.insert("blockHash".into(), h256(b.hash));
            m.insert("blockNumber".into(), q(b.number));
            m.insert("transactionIndex".into(), q(inc.index));
            m.insert("gasPrice".into(), q128(inc.effective_gas_price));
            m.insert("blockTimestamp".into(), q(b.timestamp));
        }
        None => {
            m.insert("blockHash".into(), Value::Null);
            m.insert("blockNumber".into(), Value::Null);
            m.insert("transactionIndex".into(), Value::Null);
            m.insert("gasPrice".into(), q128(tx.effective_gas_price(base_fee)));
        }
    }
    Value::Object(m)
}

fn log_json(b: &Block, inc: &Included, l: &LogRec) -> Value {
    json!({
        "address": addr(l.address),
        "topics": l.topics.iter().map(|t| h256(*t)).collect::<Vec<_>>(),
        "data": bytes(&l.data),
        "blockHash": h256(b.hash),
        "blockNumber": q(b.number),
        "blockTimestamp": q(b.timestamp),
        "transactionHash": h256(inc.tx.hash),
        "transactionIndex": q(inc.index),
        "logIndex": q(l.log_index),
        "removed": false,
    })
}

fn receipt_json(b: &Block, inc: &Included) -> Value {
    json!({
        "type": q(inc.tx.tx_type as u64),
        "status": q(inc.success as u64),
        "cumulativeGasUsed": q(inc.cumulative_gas_used),
        "logs": inc.logs.iter().map(|l| log_json(b, inc, l)).collect::<Vec<_>>(),
        "logsBloom": bytes(inc.bloom.as_slice()),
        "transactionHash": h256(inc.tx.hash),
        "transactionIndex": q(inc.index),
        "blockHash": h256(b.hash),
        "blockNumber": q(b.number),
        "gasUsed": q(inc.gas_used),
        "effectiveGasPrice": q128(inc.effective_gas_price),
        "blobGasPrice": q(1),
        "from": addr(inc.tx.from),
        "to": opt_addr(inc.tx.to),
        "contractAddress": opt_addr(inc.contract_address),
        "blockTimestamp": b.timestamp,
    })
}

/// The union of the block's receipts' blooms.
fn block_bloom(b: &Block) -> Bloom {
    let mut bloom = Bloom::default();
    for i in &b.txs {
        bloom.accrue_bloom(&i.bloom);
    }
    bloom
}

fn block_json(b: &Block, full: bool) -> Value {
    let derived = |what: &[u8]| {
        let mut buf = b.hash.to_vec();
        buf.extend(what);
        h256(alloy_primitives::keccak256(&buf))
    };
    let (tx_root, receipts_root) = if b.txs.is_empty() {
        (json!(EMPTY_ROOT), json!(EMPTY_ROOT))
    } else {
        (derived(b"transactions"), derived(b"receipts"))
    };
    let txs: Vec<Value> = b
        .txs
        .iter()
        .map(|i| {
            if full {
                tx_json(&i.tx, Some((b, i)), b.base_fee)
            } else {
                h256(i.tx.hash)
            }
        })
        .collect();
    let size = 615
        + b.txs
            .iter()
            .map(|i| 120 + i.tx.input.len() as u64)
            .sum::<u64>();
    json!({
        "hash": h256(b.hash),
        "parentHash": h256(b.parent_hash),
        "sha3Uncles": EMPTY_OMMERS,
        "miner": addr(Address::ZERO),
        "stateRoot": derived(b"state"),
        "transactionsRoot": tx_root,
        "receiptsRoot": receipts_root,
        "logsBloom": bytes(block_bloom(b).as_slice()),
        "difficulty": q(0),
        "number": q(b.number),
        "gasLimit": q(b.gas_limit),
        "gasUsed": q(b.gas_used),
        "timestamp": q(b.timestamp),
        "extraData": "0x",
        "mixHash": h256(b.prevrandao),
        "nonce": "0x0000000000000000",
        "baseFeePerGas": q128(b.base_fee),
        "withdrawalsRoot": EMPTY_ROOT,
        "blobGasUsed": q(0),
        "excessBlobGas": q(0),
        "parentBeaconBlockRoot": h256(B256::ZERO),
        "requestsHash": EMPTY_REQUESTS,
        "totalDifficulty": q(0),
        "size": q(size),
        "uncles": [],
        "transactions": txs,
        "withdrawals": [],
    })
}
