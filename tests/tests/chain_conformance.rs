//! Differential (conformance) tests: the simulation's chain model (`dalp_sim::chain`) against the
//! real Anvil 1.7.1 (the npm package pinned under `fixtures/`).
//!
//! Each case starts a fresh Anvil with `--no-mining` (≈ 0.1 s, cheaper and more faithful than
//! `anvil_reset`, which keeps Anvil's running base fee) and a fresh [`ChainModel`] with the same
//! chain id, genesis accounts and balances, base fee and gas limit, then applies the same
//! operations to both *as JSON-RPC text*: the model through `ChainModel::handle_rpc`, Anvil over
//! HTTP, so `rpc.rs` (field names, encodings, error codes and messages) is compared too. Every
//! operation's response is compared, and after every operation that can change state a checkpoint
//! compares heads, nonces (latest and pending), balances, every block, every receipt and
//! transaction we sent, the pool's size, logs and the token's state.
//!
//! What legitimately differs is normalised (see [`norm`] and [`norm_block`]): block hashes and
//! everything derived from them, timestamps, state/transaction/receipt roots, `mixHash`
//! (prevrandao) and the block size. Deliberate differences are listed in `CONFORMANCE.md`.
//!
//! `PROPTEST_CASES` (default 64) sets the number of generated cases; `PROPTEST_RNG_SEED` fixes
//! the seed. Anvil is never skipped: if it cannot start, the test fails with the reason.

use alloy_primitives::{Address, Bytes, B256, U256};
use alloy_sol_types::SolCall;
use dalp_engine::contracts::{asset_token_deploy_code, AssetToken};
use dalp_engine::signer::{SignerKey, UnsignedTx};
use dalp_integration::Anvil;
use dalp_sim::chain::{ChainModel, ChainParams, GWEI};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Anvil's default dev keys 0..3 (well-known test keys, never real funds).
const KEYS: [&str; 4] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
];
/// An address with no funds and no key.
const OUTSIDER: Address = Address::new([0x5a; 20]);
/// Where the token calls go before any token is deployed (an empty account).
const NO_TOKEN: Address = Address::new([0x70; 20]);

fn eth(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

// ---- the two sides ------------------------------------------------------------------------------

/// The real Anvil, spoken to over HTTP.
struct Real {
    _anvil: Anvil,
    url: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Real {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let anvil = rt
            .block_on(Anvil::start_manual())
            .unwrap_or_else(|e| panic!("cannot start Anvil (fixtures/ npm package): {e}"));
        let url = anvil.url();
        Real {
            _anvil: anvil,
            url,
            rt,
            http: reqwest::Client::new(),
        }
    }

    fn post(&self, body: String) -> String {
        self.rt.block_on(async {
            let resp = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("Anvil unreachable: {e}"));
            resp.text().await.expect("Anvil response body")
        })
    }
}

/// One signed transaction we sent (to both sides, accepted or not).
#[derive(Clone, Debug)]
struct Sent {
    hash: B256,
    raw: Bytes,
    key: usize,
    nonce: u64,
    max_fee: u128,
    prio: u128,
}

/// Both chains, driven in lock step.
struct Pair {
    real: Real,
    model: ChainModel,
    now_ms: u64,
    keys: Vec<SignerKey>,
    sent: Vec<Sent>,
    /// Queued transactions replaced by a higher fee: Anvil keeps them in its queue (see
    /// [`Pair::checkpoint`]); the model removes them.
    ghosts: Vec<B256>,
    tokens: Vec<Address>,
    /// Every operation with both answers, for the failure message.
    transcript: String,
}

/// A JSON-RPC response, as a value (the id is always 1).
fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

impl Pair {
    fn new() -> Self {
        let real = Real::start();
        let keys: Vec<SignerKey> = KEYS
            .iter()
            .map(|k| SignerKey::from_hex(k).expect("key"))
            .collect();
        // The model's genesis is Anvil's: its dev accounts with the balances Anvil reports.
        let accounts = parse(&real.post(req("eth_accounts", json!([]))));
        let mut genesis = Vec::new();
        for a in accounts["result"].as_array().expect("eth_accounts") {
            let who: Address = serde_json::from_value(a.clone()).expect("address");
            let bal = parse(&real.post(req("eth_getBalance", json!([who, "latest"]))));
            let bal: U256 = serde_json::from_value(bal["result"].clone()).expect("balance");
            genesis.push((who, bal));
        }
        for k in &keys {
            assert!(
                genesis.iter().any(|(a, _)| *a == k.address()),
                "key {} is not one of Anvil's dev accounts",
                k.address()
            );
        }
        assert_eq!(genesis[0].1, eth(10_000), "Anvil's default dev balance");
        let now_ms = 1_700_000_000_000;
        let model = ChainModel::new(ChainParams::anvil(genesis), now_ms);
        Pair {
            real,
            model,
            now_ms,
            keys,
            sent: Vec::new(),
            ghosts: Vec::new(),
            tokens: Vec::new(),
            transcript: String::new(),
        }
    }

    fn addr(&self, i: usize) -> Address {
        match i % 6 {
            k @ 0..=3 => self.keys[k].address(),
            4 => OUTSIDER,
            _ => self.token(),
        }
    }

    fn token(&self) -> Address {
        self.tokens.last().copied().unwrap_or(NO_TOKEN)
    }

    /// The same request to both; returns (Anvil's response, the model's response).
    fn rpc(&mut self, method: &str, params: Value) -> (Value, Value) {
        let body = req(method, params);
        let real = parse(&self.real.post(body.clone()));
        self.now_ms += 1000;
        let model = parse(&self.model.handle_rpc(&body, self.now_ms, 0));
        (real, model)
    }

    /// The same request to both, compared after `normalise`; the mismatch names the operation.
    fn same(
        &mut self,
        at: &str,
        method: &str,
        params: Value,
        normalise: fn(&Value) -> Value,
    ) -> Result<(Value, Value), String> {
        let (real, model) = self.rpc(method, params.clone());
        if normalise(&real) != normalise(&model) {
            return Err(self.mismatch(
                at,
                &format!("{method} {params}"),
                &normalise(&real),
                &normalise(&model),
            ));
        }
        Ok((real, model))
    }

    /// [`Self::same`] for a parameterless read of Anvil state that is updated asynchronously.
    fn same_eventually(&mut self, at: &str, method: &str, params: Value) -> Result<(), String> {
        for _ in 0..40 {
            let (real, model) = self.rpc(method, params.clone());
            if real == model {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.same(at, method, params, norm).map(|_| ())
    }

    fn mismatch(&self, at: &str, what: &str, real: &Value, model: &Value) -> String {
        let mut diffs = Vec::new();
        diff("", real, model, &mut diffs);
        format!(
            "MISMATCH at {at}: {what}\n  differs: {}\n  anvil: {}\n  model: {}\n\
             --- operations so far (anvil | model) ---\n{}",
            diffs.join("; "),
            shorten(real),
            shorten(model),
            self.transcript
        )
    }

    fn sign(&self, key: usize, nonce: u64, fees: (u128, u128), body: Body) -> Sent {
        let (raw, hash) = self.keys[key]
            .sign(&UnsignedTx {
                chain_id: 31337,
                nonce,
                gas_limit: body.gas,
                max_fee_per_gas: fees.0,
                max_priority_fee_per_gas: fees.1,
                to: body.to,
                value: body.value,
                input: body.input,
            })
            .expect("sign");
        Sent {
            hash,
            raw,
            key,
            nonce,
            max_fee: fees.0,
            prio: fees.1,
        }
    }

    // ---- operations ---------------------------------------------------------------------------

    /// Apply one operation to both sides and compare the answers.
    fn apply(&mut self, i: usize, op: &Op) -> Result<(), String> {
        let at = format!("op #{i} {op:?}");
        let mut line = format!("#{i} {op:?}");
        let out = self.apply_inner(&at, op, &mut line);
        let _ = writeln!(self.transcript, "{line}");
        out
    }

    fn apply_inner(&mut self, at: &str, op: &Op, line: &mut String) -> Result<(), String> {
        match op {
            Op::Send {
                key,
                nonce,
                fee,
                gas,
                what,
            } => {
                let key = *key as usize % KEYS.len();
                let from = self.keys[key].address();
                let latest = self.model.nonce_of(from);
                let pending = self.model.pending_nonce_of(from);
                let n = match nonce {
                    NonceSel::Next => pending,
                    NonceSel::Gap(g) => pending + *g as u64,
                    NonceSel::Low => latest.saturating_sub(1),
                    NonceSel::Head => latest,
                };
                let base = self.model.next_base_fee();
                let fees = match fee {
                    FeeSel::Normal => (2 * base + GWEI, GWEI),
                    FeeSel::High => (4 * base + 3 * GWEI, 2 * GWEI),
                    FeeSel::AtBase => (base, 0),
                    FeeSel::BelowBase => (base - 1, 0),
                    FeeSel::TipAboveMax => (2 * base, 2 * base + 1),
                };
                let mut body = self.body(key, what);
                body.gas = match gas {
                    GasSel::Enough => body.gas,
                    GasSel::TooLow => 20_000,
                    GasSel::AboveBlock => 30_000_001,
                    GasSel::Tight => 23_000,
                };
                if matches!(what, Payload::Deploy) {
                    // The address it will have if it is mined at this nonce.
                    self.tokens.push(from.create(n));
                }
                let tx = self.sign(key, n, fees, body);
                *line += &format!(" nonce={n} fees={fees:?} hash={:#x}", tx.hash);
                self.send(at, tx, line)
            }
            Op::Replace { key, bump } => {
                let key = *key as usize % KEYS.len();
                let Some(old) = self
                    .sent
                    .iter()
                    .rev()
                    .find(|s| s.key == key && self.model.is_pending(s.hash))
                    .cloned()
                else {
                    *line += " (nothing pending: skipped)";
                    return Ok(());
                };
                let max = match bump {
                    Bump::Higher => old.max_fee + 1,
                    Bump::Equal => old.max_fee,
                    Bump::Lower => old.max_fee - 1,
                };
                let body = Body {
                    to: Some(OUTSIDER),
                    value: U256::from(old.nonce + 1000),
                    input: Bytes::new(),
                    gas: 21_000,
                };
                let tx = self.sign(key, old.nonce, (max, old.prio.min(max)), body);
                *line += &format!(" replaces {:#x} max {max}", old.hash);
                self.send(at, tx, line)
            }
            Op::Resend(j) => {
                let Some(old) = self.pick(*j) else {
                    *line += " (nothing sent yet: skipped)";
                    return Ok(());
                };
                *line += &format!(" {:#x}", old.hash);
                self.send(at, old, line)
            }
            Op::Drop(j) => {
                let h = self.pick(*j).map_or(B256::repeat_byte(0x11), |s| s.hash);
                let (r, m) = self.same(at, "anvil_dropTransaction", json!([h]), norm)?;
                *line += &format!(" {h:#x} | {} | {}", r["result"], m["result"]);
                Ok(())
            }
            Op::Call { from, what } => {
                let from = self.addr(*from as usize % 4);
                let token = self.token();
                let (method, params) = match what {
                    CallSel::BalanceOf(who) => {
                        let who = self.addr(*who as usize);
                        let data = AssetToken::balanceOfCall(who).abi_encode();
                        (
                            "eth_call",
                            json!([{"from": from, "to": token, "data": Bytes::from(data)}, "latest"]),
                        )
                    }
                    CallSel::TotalSupplyPending => {
                        let data = AssetToken::totalSupplyCall {}.abi_encode();
                        (
                            "eth_call",
                            json!([{"from": from, "to": token, "data": Bytes::from(data)}, "pending"]),
                        )
                    }
                    CallSel::Mint(to) => {
                        let to = self.addr(*to as usize);
                        let data = AssetToken::mintCall {
                            to,
                            amount: U256::from(5),
                        }
                        .abi_encode();
                        (
                            "eth_call",
                            json!([{"from": from, "to": token, "data": Bytes::from(data)}, "latest"]),
                        )
                    }
                    CallSel::EstimateMint(to) => {
                        let to = self.addr(*to as usize);
                        let data = AssetToken::mintCall {
                            to,
                            amount: U256::from(5),
                        }
                        .abi_encode();
                        (
                            "eth_estimateGas",
                            json!([{"from": from, "to": token, "data": Bytes::from(data)}]),
                        )
                    }
                    CallSel::BalancePending(who) => (
                        "eth_getBalance",
                        json!([self.addr(*who as usize), "pending"]),
                    ),
                };
                let (r, m) = self.same(at, method, params, norm)?;
                *line += &format!(" | {} | {}", brief(&r), brief(&m));
                Ok(())
            }
            Op::Mine(n) => {
                let (r, m) = if *n <= 1 {
                    self.same(at, "evm_mine", json!([]), norm)?
                } else {
                    self.same(at, "anvil_mine", json!([*n as u64]), norm)?
                };
                *line += &format!(" | {} | {}", brief(&r), brief(&m));
                Ok(())
            }
            Op::SetBalance { who, amount } => {
                let who = self.addr(*who as usize % 5);
                let amount = match amount {
                    Amount::Zero => U256::ZERO,
                    Amount::Dust => U256::from(30_000u64) * U256::from(GWEI),
                    Amount::Plenty => eth(10_000),
                };
                let (r, m) = self.same(at, "anvil_setBalance", json!([who, amount]), norm)?;
                *line += &format!(" | {} | {}", brief(&r), brief(&m));
                Ok(())
            }
            Op::SetBaseFee(level) => {
                let base = self.model.next_base_fee();
                let fee = match level {
                    FeeLevel::Half => base / 2 + 1,
                    FeeLevel::Spike => base * 4,
                    FeeLevel::Huge => 100 * GWEI,
                };
                let (r, m) = self.same(
                    at,
                    "anvil_setNextBlockBaseFeePerGas",
                    json!([format!("{fee:#x}")]),
                    norm,
                )?;
                *line += &format!(" fee={fee} | {} | {}", brief(&r), brief(&m));
                Ok(())
            }
            Op::Rollback(depth) => {
                self.unready_rolled_back_senders(*depth as u64, at, line)?;
                let (r, m) = self.same(at, "anvil_rollback", json!([*depth as u64]), norm)?;
                *line += &format!(" | {} | {}", brief(&r), brief(&m));
                Ok(())
            }
            Op::Reorg { depth, drop_txs } => self.reorg(at, *depth as u64, *drop_txs, line),
        }
    }

    /// `ChainModel::reorg` (what the simulation's reorg fault calls) against its Anvil
    /// equivalent: `anvil_rollback(depth)`, the next base fee pinned to what the model derives
    /// from the new head (Anvil keeps its running base fee over a rollback), the removed
    /// transactions re-sent in chain order unless dropped, then `depth + 1` blocks mined.
    fn reorg(
        &mut self,
        at: &str,
        depth: u64,
        drop_txs: bool,
        line: &mut String,
    ) -> Result<(), String> {
        let head = self.model.head();
        let depth = depth.min(head);
        self.unready_rolled_back_senders(depth, at, line)?;
        let ancestor = head - depth;
        let fee = self
            .model
            .base_fee_override()
            .or_else(|| self.model.base_fee_after(ancestor))
            .expect("ancestor block");
        let removed: Vec<B256> = self
            .model
            .canonical_txs()
            .into_iter()
            .filter(|t| t.block_number > ancestor)
            .map(|t| t.hash)
            .collect();
        let call = |p: &Self, m: &str, params: Value| parse(&p.real.post(req(m, params)));
        if depth > 0 {
            let r = call(self, "anvil_rollback", json!([depth]));
            *line += &format!(" | rollback {}", brief(&r));
        }
        call(
            self,
            "anvil_setNextBlockBaseFeePerGas",
            json!([format!("{fee:#x}")]),
        );
        if !drop_txs {
            for h in &removed {
                let raw = self
                    .sent
                    .iter()
                    .find(|s| s.hash == *h)
                    .expect("every canonical tx is ours")
                    .raw
                    .clone();
                let r = call(self, "eth_sendRawTransaction", json!([raw]));
                *line += &format!(" resend {}", brief(&r));
            }
        }
        for _ in 0..=depth {
            call(self, "evm_mine", json!([]));
        }
        self.now_ms += 1000;
        let s = self.model.reorg(depth, drop_txs, self.now_ms);
        *line += &format!(
            " | model: ancestor {} reinjected {} dropped {}",
            s.common_ancestor,
            s.reinjected.len(),
            s.dropped.len()
        );
        Ok(())
    }

    /// An earlier transaction (never a ghost: Anvil still holds those, the model does not).
    /// Deliberate difference: Anvil does not re-check its pool after a rollback, so a sender's
    /// ready transactions stay ready although the sender's nonce went back (`pending` counts
    /// them; the next block drops them as invalid, or mines them out of order after a re-send);
    /// the model re-derives readiness from the state, so they wait, queued, for the missing
    /// nonces (as geth does after a reorg). Before a rollback the harness drops, on both sides,
    /// the ready transactions of every sender with a transaction in the blocks to be removed.
    fn unready_rolled_back_senders(
        &mut self,
        depth: u64,
        at: &str,
        line: &mut String,
    ) -> Result<(), String> {
        let head = self.model.head();
        if depth > head {
            return Ok(()); // refused, nothing rolls back
        }
        let senders: std::collections::BTreeSet<Address> = self
            .model
            .canonical_txs()
            .into_iter()
            .filter(|t| t.block_number > head - depth)
            .map(|t| t.from)
            .collect();
        for who in senders {
            let first = self.model.nonce_of(who);
            if self.model.pending_nonce_of(who) == first {
                continue;
            }
            let h = self
                .sent
                .iter()
                .find(|s| {
                    self.keys[s.key].address() == who
                        && s.nonce == first
                        && self.model.is_pending(s.hash)
                })
                .expect("a ready transaction at the sender's nonce")
                .hash;
            let (r, m) = self.same(at, "anvil_dropTransaction", json!([h]), norm)?;
            *line += &format!(" (unready {h:#x}: {} | {})", brief(&r), brief(&m));
        }
        Ok(())
    }

    fn pick(&self, j: u16) -> Option<Sent> {
        let live: Vec<&Sent> = self
            .sent
            .iter()
            .filter(|s| !self.ghosts.contains(&s.hash))
            .collect();
        if live.is_empty() {
            None
        } else {
            Some(live[j as usize % live.len()].clone())
        }
    }

    fn send(&mut self, at: &str, tx: Sent, line: &mut String) -> Result<(), String> {
        // The same signed bytes as a ghost (same key, nonce, fees and payload) would meet the
        // deliberate difference itself: Anvil still holds it ("transaction already imported"),
        // the model dropped it (so the rival in its slot answers "replacement transaction
        // underpriced"). Not sent, as `pick` never re-sends a ghost.
        if self.ghosts.contains(&tx.hash) {
            *line += &format!(" | identical to the ghost {:#x}: not sent", tx.hash);
            return Ok(());
        }
        let raw = tx.raw.clone();
        let from = self.keys[tx.key].address();
        // A queued transaction of the model in the same (sender, nonce) slot.
        let queued_rival = (tx.nonce >= self.model.pending_nonce_of(from))
            .then(|| {
                self.sent
                    .iter()
                    .find(|s| {
                        s.key == tx.key
                            && s.nonce == tx.nonce
                            && s.hash != tx.hash
                            && self.model.is_pending(s.hash)
                    })
                    .map(|s| s.hash)
            })
            .flatten();
        self.sent.push(tx);
        let (r, m) = self.same(at, "eth_sendRawTransaction", json!([raw]), norm)?;
        *line += &format!(" | {} | {}", brief(&r), brief(&m));
        if let Some(old) = queued_rival {
            if m.get("result").is_some() {
                self.ghosts.push(old);
                *line += &format!(" (ghost {old:#x})");
            }
        }
        Ok(())
    }

    fn body(&self, key: usize, what: &Payload) -> Body {
        let call = |data: Vec<u8>| Body {
            to: Some(self.token()),
            value: U256::ZERO,
            input: data.into(),
            gas: 200_000,
        };
        match what {
            Payload::Eth { to, amount } => Body {
                to: Some(self.addr(*to as usize)),
                value: match amount {
                    Amount::Zero => U256::ZERO,
                    Amount::Dust => U256::from(1),
                    Amount::Plenty => eth(20_000),
                },
                input: Bytes::new(),
                gas: 21_000,
            },
            Payload::Deploy => Body {
                to: None,
                value: U256::ZERO,
                input: asset_token_deploy_code("Bond", &format!("B{key}"), 18),
                gas: 3_000_000,
            },
            Payload::Mint { to, amount } => call(
                AssetToken::mintCall {
                    to: self.addr(*to as usize),
                    amount: U256::from(*amount),
                }
                .abi_encode(),
            ),
            Payload::Transfer { to, amount } => call(
                AssetToken::transferCall {
                    to: self.addr(*to as usize),
                    amount: U256::from(*amount),
                }
                .abi_encode(),
            ),
            Payload::Register { who } => call(
                AssetToken::registerIdentityCall {
                    account: self.addr(*who as usize),
                    country: 756,
                }
                .abi_encode(),
            ),
        }
    }

    // ---- checkpoints --------------------------------------------------------------------------

    /// Compare everything observable about the two chains.
    fn checkpoint(&mut self, at: &str) -> Result<(), String> {
        let (r, _) = self.same(at, "eth_blockNumber", json!([]), norm)?;
        let head = quantity(&r["result"]);
        // Anvil fills the fee-history cache its tip suggestion reads asynchronously after each
        // block: read these until they settle (at most ~0.2 s).
        self.same_eventually(at, "eth_gasPrice", json!([]))?;
        self.same_eventually(at, "eth_maxPriorityFeePerGas", json!([]))?;
        self.same_eventually(
            at,
            "eth_feeHistory",
            json!(["0x4", "latest", [10.0, 50.0, 90.0]]),
        )?;
        let mut who: Vec<Address> = (0..5).map(|i| self.addr(i)).collect();
        who.push(Address::ZERO); // the coinbase: priority fees
        who.extend(self.tokens.clone());
        for a in &who {
            self.same(at, "eth_getBalance", json!([a, "latest"]), norm)?;
        }
        for k in 0..KEYS.len() {
            let a = self.keys[k].address();
            self.same(at, "eth_getTransactionCount", json!([a, "latest"]), norm)?;
            self.same(at, "eth_getTransactionCount", json!([a, "pending"]), norm)?;
        }
        for n in 0..=head {
            self.same(
                at,
                "eth_getBlockByNumber",
                json!([format!("{n:#x}"), false]),
                norm_block,
            )?;
        }
        let mut hashes: Vec<B256> = self.sent.iter().map(|s| s.hash).collect();
        hashes.sort();
        hashes.dedup();
        // Deliberate difference: a queued transaction replaced by a higher fee stays in Anvil's
        // queue (found by hash, counted as queued) until the gap fills and the higher one wins;
        // the model drops it at once. Such a "ghost" may be pending in Anvil and unknown to the
        // model; everything else about it must agree.
        let mut ghosts_alive = 0u64;
        for h in hashes {
            self.same(at, "eth_getTransactionReceipt", json!([h]), norm)?;
            let (r, m) = self.rpc("eth_getTransactionByHash", json!([h]));
            let ghost = self.ghosts.contains(&h)
                && r["result"].get("blockHash") == Some(&Value::Null)
                && m["result"].is_null();
            if ghost {
                ghosts_alive += 1;
            } else if norm(&r) != norm(&m) {
                return Err(self.mismatch(
                    at,
                    &format!("eth_getTransactionByHash [{h:#x}]"),
                    &norm(&r),
                    &norm(&m),
                ));
            }
        }
        let (r, m) = self.rpc("txpool_status", json!([]));
        let mut r_adj = r.clone();
        if let Some(q) = r["result"]["queued"].as_str() {
            let q = quantity(&json!(q)) - ghosts_alive;
            r_adj["result"]["queued"] = json!(format!("{q:#x}"));
        }
        if r_adj != m {
            return Err(self.mismatch(
                at,
                &format!("txpool_status (Anvil's queued less {ghosts_alive} ghosts)"),
                &r,
                &m,
            ));
        }
        // The pool's content (the engine reads the queued part for its orphans). At a nonce
        // where Anvil still queues a ghost it lists the ghost, not the replacement the model
        // holds: such slots are left out of both sides; everything else must agree, each
        // transaction as `eth_getTransactionByHash` shows it.
        let (r, m) = self.rpc("txpool_content", json!([]));
        let ghost_slots: Vec<(String, String)> = r["result"]["queued"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(who, by_nonce)| {
                by_nonce
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, tx)| {
                        tx["hash"]
                            .as_str()
                            .and_then(|h| h.parse::<B256>().ok())
                            .is_some_and(|h| self.ghosts.contains(&h))
                    })
                    .map(|(n, _)| (who.clone(), n.clone()))
            })
            .collect();
        let content = |v: &Value| {
            let mut out = serde_json::Map::new();
            for side in ["pending", "queued"] {
                let mut senders = serde_json::Map::new();
                for (who, by_nonce) in v["result"][side].as_object().into_iter().flatten() {
                    let txs: serde_json::Map<String, Value> = by_nonce
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(n, _)| {
                            side == "pending" || !ghost_slots.contains(&(who.clone(), (*n).clone()))
                        })
                        .map(|(n, tx)| (n.clone(), norm(tx)))
                        .collect();
                    if !txs.is_empty() {
                        senders.insert(who.clone(), Value::Object(txs));
                    }
                }
                out.insert(side.into(), Value::Object(senders));
            }
            Value::Object(out)
        };
        if content(&r) != content(&m) {
            return Err(self.mismatch(
                at,
                &format!("txpool_content (without the ghosts' slots {ghost_slots:?})"),
                &content(&r),
                &content(&m),
            ));
        }
        self.same(
            at,
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "toBlock": "latest"}]),
            norm,
        )?;
        for t in self.tokens.clone() {
            self.same(at, "eth_getCode", json!([t, "latest"]), norm)?;
            let supply = AssetToken::totalSupplyCall {}.abi_encode();
            self.same(
                at,
                "eth_call",
                json!([{"to": t, "data": Bytes::from(supply)}, "latest"]),
                norm,
            )?;
            for a in &who[..5] {
                let data = AssetToken::balanceOfCall(*a).abi_encode();
                self.same(
                    at,
                    "eth_call",
                    json!([{"to": t, "data": Bytes::from(data)}, "latest"]),
                    norm,
                )?;
            }
        }
        Ok(())
    }
}

struct Body {
    to: Option<Address>,
    value: U256,
    input: Bytes,
    gas: u64,
}

fn req(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
}

fn quantity(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex")
}

/// A response shortened for the transcript.
fn brief(v: &Value) -> String {
    let s = match v.get("error") {
        Some(e) => format!("ERR {e}"),
        None => v["result"].to_string(),
    };
    if s.len() > 90 {
        format!("{}…", &s[..90])
    } else {
        s
    }
}

/// Long strings (contract code) elided in the middle, for failure messages.
fn shorten(v: &Value) -> Value {
    match v {
        Value::String(s) if s.len() > 140 => {
            json!(format!(
                "{}…({} chars)…{}",
                &s[..66],
                s.len(),
                &s[s.len() - 66..]
            ))
        }
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), shorten(x))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shorten).collect()),
        other => other.clone(),
    }
}

/// The paths where two responses differ, with both values.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                if x.contains_key(k) != y.contains_key(k) {
                    out.push(format!(
                        "{path}.{k}: anvil {} / model {}",
                        x.contains_key(k),
                        y.contains_key(k)
                    ));
                } else {
                    diff(&format!("{path}.{k}"), va, vb, out);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!(
            "{path}: anvil {} / model {}",
            shorten(a),
            shorten(b)
        )),
        _ => {}
    }
}

// ---- normalisation ------------------------------------------------------------------------------

/// Fields whose values legitimately differ, replaced by a marker that keeps their presence and
/// kind (a hex string vs anything else):
/// - `blockHash`: the model's block hashes are its own (it does not compute state or
///   transaction tries), so every hash of a block differs;
/// - `blockTimestamp` / `timestamp`: Anvil stamps blocks with the wall clock, the model with the
///   time it is given.
const NORMALISED: [&str; 3] = ["blockHash", "blockTimestamp", "timestamp"];

/// Block fields that are hashes or sizes of block content the model does not build byte for byte
/// (tries, the header hash, prevrandao, the RLP size).
const BLOCK_NORMALISED: [&str; 7] = [
    "hash",
    "parentHash",
    "stateRoot",
    "transactionsRoot",
    "receiptsRoot",
    "mixHash",
    "size",
];

fn marker(v: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("0x") => json!("<hex>"),
        Value::Null => Value::Null,
        Value::Number(_) => json!("<number>"),
        other => json!(format!("<other: {other}>")),
    }
}

fn norm_with(v: &Value, keys: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    if keys.contains(&k.as_str()) {
                        (k.clone(), marker(x))
                    } else {
                        (k.clone(), norm_with(x, keys))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| norm_with(x, keys)).collect()),
        other => other.clone(),
    }
}

fn norm(v: &Value) -> Value {
    norm_with(v, &NORMALISED)
}

fn norm_block(v: &Value) -> Value {
    let mut keys = NORMALISED.to_vec();
    keys.extend(BLOCK_NORMALISED);
    norm_with(v, &keys)
}

// ---- operations (generated) ---------------------------------------------------------------------

#[derive(Clone, Debug)]
enum NonceSel {
    /// The pending nonce: the next one.
    Next,
    /// Pending + n: a future nonce, queued behind a gap.
    Gap(u8),
    /// Below the mined nonce (`nonce too low` once anything is mined).
    Low,
    /// The mined nonce: the first pending slot (a replacement when something is pending).
    Head,
}

#[derive(Clone, Debug)]
enum FeeSel {
    Normal,
    High,
    /// Max fee exactly the next base fee, no tip: admitted, dropped after a base-fee rise.
    AtBase,
    BelowBase,
    TipAboveMax,
}

#[derive(Clone, Debug)]
enum GasSel {
    Enough,
    TooLow,
    AboveBlock,
    /// Enough for a plain transfer, not for a contract call (out of gas during execution).
    Tight,
}

#[derive(Clone, Debug)]
enum Bump {
    Higher,
    Equal,
    Lower,
}

#[derive(Clone, Debug)]
enum Amount {
    Zero,
    Dust,
    Plenty,
}

#[derive(Clone, Debug)]
enum FeeLevel {
    Half,
    Spike,
    Huge,
}

/// What a sent transaction does. Token calls go to the most recently deployed token.
#[derive(Clone, Debug)]
enum Payload {
    Eth { to: u8, amount: Amount },
    Deploy,
    Mint { to: u8, amount: u64 },
    Transfer { to: u8, amount: u64 },
    Register { who: u8 },
}

#[derive(Clone, Debug)]
enum CallSel {
    BalanceOf(u8),
    TotalSupplyPending,
    Mint(u8),
    EstimateMint(u8),
    BalancePending(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        key: u8,
        nonce: NonceSel,
        fee: FeeSel,
        gas: GasSel,
        what: Payload,
    },
    /// Re-sign the key's newest pending transaction's nonce with a changed fee.
    Replace {
        key: u8,
        bump: Bump,
    },
    /// Send the exact bytes of an earlier transaction again.
    Resend(u16),
    Call {
        from: u8,
        what: CallSel,
    },
    Mine(u8),
    Drop(u16),
    SetBalance {
        who: u8,
        amount: Amount,
    },
    SetBaseFee(FeeLevel),
    Rollback(u8),
    /// `ChainModel::reorg` (the simulation's reorg fault) against its Anvil equivalent.
    Reorg {
        depth: u8,
        drop_txs: bool,
    },
}

impl Op {
    /// Operations that cannot change state need no checkpoint.
    fn is_read(&self) -> bool {
        matches!(self, Op::Call { .. })
    }
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        1 => Just(Amount::Zero),
        3 => Just(Amount::Dust),
        1 => Just(Amount::Plenty),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        4 => (0u8..6, amount()).prop_map(|(to, amount)| Payload::Eth { to, amount }),
        2 => Just(Payload::Deploy),
        3 => (0u8..6, prop_oneof![Just(1u64), Just(50), Just(1_000_000)])
            .prop_map(|(to, amount)| Payload::Mint { to, amount }),
        2 => (0u8..6, prop_oneof![Just(1u64), Just(40)])
            .prop_map(|(to, amount)| Payload::Transfer { to, amount }),
        1 => (0u8..5).prop_map(|who| Payload::Register { who }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let nonce = prop_oneof![
        8 => Just(NonceSel::Next),
        2 => (1u8..3).prop_map(NonceSel::Gap),
        1 => Just(NonceSel::Low),
        2 => Just(NonceSel::Head),
    ];
    let fee = prop_oneof![
        8 => Just(FeeSel::Normal),
        2 => Just(FeeSel::High),
        2 => Just(FeeSel::AtBase),
        1 => Just(FeeSel::BelowBase),
        1 => Just(FeeSel::TipAboveMax),
    ];
    let gas = prop_oneof![
        12 => Just(GasSel::Enough),
        1 => Just(GasSel::TooLow),
        1 => Just(GasSel::AboveBlock),
        1 => Just(GasSel::Tight),
    ];
    let call = prop_oneof![
        (0u8..6).prop_map(CallSel::BalanceOf),
        Just(CallSel::TotalSupplyPending),
        (0u8..6).prop_map(CallSel::Mint),
        (0u8..6).prop_map(CallSel::EstimateMint),
        (0u8..6).prop_map(CallSel::BalancePending),
    ];
    prop_oneof![
        12 => (0u8..3, nonce, fee, gas, payload()).prop_map(|(key, nonce, fee, gas, what)| Op::Send {
            key,
            nonce,
            fee,
            gas,
            what
        }),
        2 => (0u8..3, prop_oneof![Just(Bump::Higher), Just(Bump::Equal), Just(Bump::Lower)])
            .prop_map(|(key, bump)| Op::Replace { key, bump }),
        1 => any::<u16>().prop_map(Op::Resend),
        2 => (0u8..4, call).prop_map(|(from, what)| Op::Call { from, what }),
        6 => prop_oneof![4 => Just(1u8), 1 => Just(2u8)].prop_map(Op::Mine),
        1 => any::<u16>().prop_map(Op::Drop),
        1 => (0u8..5, amount()).prop_map(|(who, amount)| Op::SetBalance { who, amount }),
        1 => prop_oneof![Just(FeeLevel::Half), Just(FeeLevel::Spike), Just(FeeLevel::Huge)]
            .prop_map(Op::SetBaseFee),
        1 => (1u8..4).prop_map(Op::Rollback),
        1 => (0u8..3, any::<bool>()).prop_map(|(depth, drop_txs)| Op::Reorg { depth, drop_txs }),
    ]
}

/// Run one sequence against a fresh Anvil and a fresh model; `Err` describes the first mismatch.
fn run_case(ops: &[Op]) -> Result<(), String> {
    let mut p = Pair::new();
    p.checkpoint("genesis")?;
    for (i, op) in ops.iter().enumerate() {
        p.apply(i, op)?;
        if !op.is_read() {
            p.checkpoint(&format!("checkpoint after op #{i} {op:?}"))?;
        }
    }
    // Mine what is left so the last pool state is compared as blocks and receipts too.
    let end = ops.len();
    p.apply(end, &Op::Mine(1))?;
    p.checkpoint(&format!("final checkpoint after op #{end} (mine)"))
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 256,
        // Found mismatches are kept as the named regression tests below instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_answers_like_anvil(ops in proptest::collection::vec(op(), 1..=25)) {
        if let Err(e) = run_case(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ---- regression cases: fixed sequences for every mismatch found ----------------------------------

fn check(ops: Vec<Op>) {
    if let Err(e) = run_case(&ops) {
        panic!("{e}");
    }
}

fn send(key: u8, nonce: NonceSel, fee: FeeSel, what: Payload) -> Op {
    Op::Send {
        key,
        nonce,
        fee,
        gas: GasSel::Enough,
        what,
    }
}

fn dust(to: u8) -> Payload {
    Payload::Eth {
        to,
        amount: Amount::Dust,
    }
}

/// The basic life of a token: deploy, mint (one allowed, one reverting), transfer, reads.
#[test]
fn token_life() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::Normal, Payload::Deploy),
        Op::Mine(1),
        send(
            0,
            NonceSel::Next,
            FeeSel::Normal,
            Payload::Mint { to: 0, amount: 50 },
        ),
        send(
            0,
            NonceSel::Next,
            FeeSel::Normal,
            Payload::Mint { to: 1, amount: 50 },
        ),
        send(
            1,
            NonceSel::Next,
            FeeSel::Normal,
            Payload::Register { who: 1 },
        ),
        send(
            0,
            NonceSel::Next,
            FeeSel::High,
            Payload::Register { who: 1 },
        ),
        Op::Mine(1),
        send(
            0,
            NonceSel::Next,
            FeeSel::Normal,
            Payload::Transfer { to: 1, amount: 20 },
        ),
        Op::Call {
            from: 1,
            what: CallSel::Mint(1),
        },
        Op::Call {
            from: 0,
            what: CallSel::EstimateMint(0),
        },
        Op::Mine(1),
    ]);
}

/// Pool rules: gaps, replacement (higher / equal / lower), drops, base-fee spikes, rollback.
#[test]
fn pool_life() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::Normal, dust(4)),
        send(0, NonceSel::Gap(1), FeeSel::Normal, dust(4)),
        Op::Replace {
            key: 0,
            bump: Bump::Equal,
        },
        Op::Replace {
            key: 0,
            bump: Bump::Higher,
        },
        send(1, NonceSel::Next, FeeSel::AtBase, dust(2)),
        Op::SetBaseFee(FeeLevel::Spike),
        Op::Mine(1),
        send(0, NonceSel::Next, FeeSel::Normal, dust(4)),
        send(0, NonceSel::Next, FeeSel::Normal, dust(4)),
        Op::Drop(5),
        Op::Rollback(1),
        Op::Mine(2),
        Op::Reorg {
            depth: 1,
            drop_txs: false,
        },
        Op::Reorg {
            depth: 1,
            drop_txs: true,
        },
    ]);
}

// Each of the following reproduces one mismatch the generated cases found (fixed in the model
// unless CONFORMANCE.md lists it as deliberate; then the harness normalises it and the case keeps
// the normalisation honest).

/// A pending transaction's `gasPrice` is what it would pay at the next base fee (the model said
/// its max fee).
#[test]
fn pending_tx_reports_its_price_at_the_next_base_fee() {
    check(vec![send(0, NonceSel::Next, FeeSel::Normal, dust(4))]);
}

/// Replacing a queued transaction needs a strictly higher fee too (the model took an equal one);
/// a replaced queued transaction lingers in Anvil's queue (deliberate difference, normalised).
#[test]
fn queued_replacement_needs_a_higher_fee() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::Normal, dust(4)),
        send(0, NonceSel::Gap(1), FeeSel::Normal, dust(4)),
        Op::Replace {
            key: 0,
            bump: Bump::Equal,
        },
        Op::Replace {
            key: 0,
            bump: Bump::Higher,
        },
        send(0, NonceSel::Next, FeeSel::Normal, dust(4)),
        Op::Mine(1),
    ]);
}

/// Found by the random test on a loaded fresh clone (cc39): a queued transaction replaced by a
/// higher fee, then the same transaction built again. Its bytes are the ghost's, which only
/// Anvil still holds: the harness does not send it (see `send`).
#[test]
fn a_queued_transaction_built_again_after_its_replacement_is_the_ghost() {
    check(vec![
        send(2, NonceSel::Gap(2), FeeSel::Normal, Payload::Deploy),
        Op::Replace {
            key: 2,
            bump: Bump::Higher,
        },
        send(2, NonceSel::Gap(2), FeeSel::Normal, Payload::Deploy),
    ]);
}

/// `eth_gasPrice` / `eth_maxPriorityFeePerGas` suggest the head block's lowest tip, at least
/// 1 gwei (the model always said 1 gwei).
#[test]
fn tip_suggestion_follows_the_head_block() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::High, dust(0)),
        Op::Replace {
            key: 0,
            bump: Bump::Higher,
        },
        Op::Mine(1),
    ]);
}

/// State queries at `pending` see the pool mined into a block (the model answered `latest`).
#[test]
fn pending_state_queries_see_the_pool() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::Normal, Payload::Deploy),
        Op::Mine(1),
        send(
            0,
            NonceSel::Next,
            FeeSel::Normal,
            Payload::Mint { to: 0, amount: 50 },
        ),
        Op::Call {
            from: 0,
            what: CallSel::BalancePending(0),
        },
        Op::Call {
            from: 1,
            what: CallSel::TotalSupplyPending,
        },
    ]);
}

/// `eth_estimateGas` without a block estimates against the pending block (the model used
/// `latest`, where the token was not deployed yet).
#[test]
fn estimate_gas_defaults_to_pending() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::Normal, Payload::Deploy),
        Op::Call {
            from: 0,
            what: CallSel::EstimateMint(0),
        },
    ]);
}

/// `anvil_dropTransaction` cannot drop a queued transaction (the model dropped it).
#[test]
fn queued_tx_cannot_be_dropped() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::Normal, dust(0)),
        send(0, NonceSel::Next, FeeSel::Normal, dust(0)),
        send(0, NonceSel::Next, FeeSel::Normal, dust(0)),
        send(0, NonceSel::Gap(1), FeeSel::Normal, dust(0)),
        Op::Drop(3),
    ]);
}

/// Anvil checks the nonce before the gas limit (the model said `intrinsic gas too low`).
#[test]
fn nonce_is_checked_before_the_gas_limit() {
    check(vec![
        send(1, NonceSel::Next, FeeSel::Normal, dust(0)),
        Op::Mine(1),
        Op::Send {
            key: 1,
            nonce: NonceSel::Low,
            fee: FeeSel::Normal,
            gas: GasSel::TooLow,
            what: dust(0),
        },
    ]);
}

/// Among equal fees, a transaction unlocked from the queue goes after those that were ready
/// before it (Anvil numbers transactions when they become ready; the model used arrival).
#[test]
fn promoted_txs_rank_by_when_they_became_ready() {
    check(vec![
        send(2, NonceSel::Gap(1), FeeSel::Normal, Payload::Deploy),
        send(0, NonceSel::Next, FeeSel::Normal, dust(0)),
        send(0, NonceSel::Next, FeeSel::Normal, dust(0)),
        send(2, NonceSel::Low, FeeSel::High, dust(0)),
    ]);
}

/// A reorg that removes a sender's mined transaction while a later one of it is pending: Anvil
/// drops the later one at the next block, the model queues it (deliberate difference; the
/// harness drops it on both sides first, also when the reorg is deeper than the chain). Also the
/// rollback's base fee carry-over.
#[test]
fn reorg_over_a_sender_with_pending_successors() {
    check(vec![
        send(0, NonceSel::Next, FeeSel::Normal, Payload::Deploy),
        Op::Reorg {
            depth: 0,
            drop_txs: false,
        },
        send(0, NonceSel::Head, FeeSel::Normal, dust(0)),
        Op::Reorg {
            depth: 2,
            drop_txs: true,
        },
        send(2, NonceSel::Next, FeeSel::Normal, dust(0)),
        Op::Mine(1),
        send(2, NonceSel::Head, FeeSel::Normal, dust(0)),
        Op::Reorg {
            depth: 1,
            drop_txs: true,
        },
        send(2, NonceSel::Next, FeeSel::Normal, dust(0)),
        Op::Mine(1),
        send(2, NonceSel::Next, FeeSel::Normal, dust(0)),
        Op::Rollback(2),
        Op::Mine(1),
    ]);
}

/// Found by the property test in CI: a reorg takes back a transaction that no longer pays the
/// new head's base fee (sent at the base fee, no tip) and, in the same block, its sender's next
/// nonce. Anvil refuses the first when it is sent again and keeps the second queued behind the
/// gap; the model used to take both back and then drop both while mining.
#[test]
fn reorg_refuses_a_taken_back_transaction_below_the_base_fee_and_keeps_its_successor_queued() {
    let zero = || Payload::Eth {
        to: 0,
        amount: Amount::Zero,
    };
    check(vec![
        Op::Reorg {
            depth: 0,
            drop_txs: false,
        },
        Op::Mine(1),
        send(0, NonceSel::Gap(1), FeeSel::Normal, zero()),
        Op::Mine(1),
        Op::Rollback(1),
        send(0, NonceSel::Next, FeeSel::AtBase, zero()),
        Op::Mine(1),
        Op::Reorg {
            depth: 1,
            drop_txs: false,
        },
    ]);
}
