//! Tests of the chain model through its JSON-RPC face, with transactions signed exactly as the
//! engine signs them (`dalp_engine::signer`). Expected codes and messages are Anvil 1.7.1's.

use super::*;
use alloy_primitives::{address, Address, Bytes, B256, U256};
use alloy_sol_types::{SolCall, SolValue};
use dalp_engine::contracts::{asset_token_deploy_code, transfer_topic, AssetToken};
use dalp_engine::signer::{SignerKey, UnsignedTx};
use serde_json::{json, Value};

// Anvil's well-known dev accounts 0 and 1.
const KEY0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const KEY1: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const A0: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
const A1: Address = address!("70997970C51812dc3A010C7d01b50e0d17dC79C8");
const A2: Address = address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");

fn eth(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

struct H {
    m: ChainModel,
    now: u64,
    k0: SignerKey,
    k1: SignerKey,
}

#[derive(Clone, Copy)]
struct Fees {
    max: u128,
    prio: u128,
}

const FEES: Fees = Fees {
    max: 3 * GWEI,
    prio: GWEI,
};

impl H {
    fn new() -> Self {
        Self::with(PoolPolicy::Anvil)
    }

    fn with(policy: PoolPolicy) -> Self {
        let mut p = ChainParams::anvil(vec![(A0, eth(10_000)), (A1, eth(10_000))]);
        p.finality_depth = 3;
        p.pool_policy = policy;
        H {
            m: ChainModel::new(p, 1_700_000_000_000),
            now: 1_700_000_000_000,
            k0: SignerKey::from_hex(KEY0).unwrap(),
            k1: SignerKey::from_hex(KEY1).unwrap(),
        }
    }

    fn raw(&mut self, method: &str, params: Value, lag: u64) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let out = self.m.handle_rpc(&body.to_string(), self.now, lag);
        serde_json::from_str(&out).expect("response is JSON")
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.raw(method, params, 0);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    fn err(&mut self, method: &str, params: Value) -> (i64, String, Value) {
        let r = self.raw(method, params, 0);
        let e = &r["error"];
        assert!(!e.is_null(), "{method} should fail: {r}");
        (
            e["code"].as_i64().unwrap(),
            e["message"].as_str().unwrap().to_string(),
            e.get("data").cloned().unwrap_or(Value::Null),
        )
    }

    fn mine(&mut self) -> MinedBlockSummary {
        self.now += 1000;
        self.m.mine_block(self.now)
    }

    #[allow(clippy::too_many_arguments)]
    fn sign(
        &self,
        key: u8,
        nonce: u64,
        to: Option<Address>,
        input: Bytes,
        value: U256,
        gas: u64,
        fees: Fees,
    ) -> (Bytes, B256) {
        let k = if key == 0 { &self.k0 } else { &self.k1 };
        k.sign(&UnsignedTx {
            chain_id: 31337,
            nonce,
            gas_limit: gas,
            max_fee_per_gas: fees.max,
            max_priority_fee_per_gas: fees.prio,
            to,
            value,
            input,
        })
        .unwrap()
    }

    fn send(&mut self, raw: &Bytes) -> Value {
        self.raw("eth_sendRawTransaction", json!([raw]), 0)
    }

    fn send_ok(&mut self, raw: &Bytes) -> B256 {
        let r = self.send(raw);
        assert!(r.get("error").is_none(), "send: {r}");
        serde_json::from_value(r["result"].clone()).unwrap()
    }

    fn transfer_eth(&mut self, key: u8, nonce: u64, fees: Fees) -> (Bytes, B256) {
        self.sign(
            key,
            nonce,
            Some(A2),
            Bytes::new(),
            U256::from(1),
            21_000,
            fees,
        )
    }

    fn receipt(&mut self, h: B256) -> Value {
        self.ok("eth_getTransactionReceipt", json!([h]))
    }

    fn nonce(&mut self, who: Address, tag: &str) -> u64 {
        let v = self.ok("eth_getTransactionCount", json!([who, tag]));
        dalp_engine::chain::types::quantity(&v).unwrap()
    }

    /// Deploy AssetToken from account 0 and mine it; returns the token address.
    fn deploy(&mut self) -> Address {
        let nonce = self.m.pending_nonce_of(A0);
        let (raw, h) = self.sign(
            0,
            nonce,
            None,
            asset_token_deploy_code("Bond", "BND", 18),
            U256::ZERO,
            3_000_000,
            FEES,
        );
        self.send_ok(&raw);
        self.mine();
        let r = self.receipt(h);
        assert_eq!(r["status"], "0x1", "{r}");
        // Same EVM and hardfork as Anvil 1.7.1: its deployment of the same code used 807102 gas.
        assert_eq!(r["gasUsed"], "0xc50be");
        serde_json::from_value(r["contractAddress"].clone()).unwrap()
    }

    fn call_token(&mut self, from: Address, token: Address, data: Vec<u8>) -> Value {
        self.raw(
            "eth_call",
            json!([{"from": from, "to": token, "data": Bytes::from(data)}, "latest"]),
            0,
        )
    }

    fn token_tx(&mut self, key: u8, token: Address, data: Vec<u8>) -> B256 {
        let from = if key == 0 { A0 } else { A1 };
        let nonce = self.m.pending_nonce_of(from);
        let (raw, _) = self.sign(
            key,
            nonce,
            Some(token),
            data.into(),
            U256::ZERO,
            200_000,
            FEES,
        );
        self.send_ok(&raw)
    }

    fn balance_of_token(&mut self, token: Address, who: Address) -> U256 {
        let r = self.call_token(who, token, AssetToken::balanceOfCall(who).abi_encode());
        let b: Bytes = serde_json::from_value(r["result"].clone()).unwrap();
        U256::abi_decode(&b).unwrap()
    }
}

#[test]
fn basic_queries_look_like_anvil() {
    let mut h = H::new();
    assert_eq!(h.ok("eth_chainId", json!([])), "0x7a69");
    assert_eq!(h.ok("eth_blockNumber", json!([])), "0x0");
    assert_eq!(h.ok("eth_maxPriorityFeePerGas", json!([])), "0x3b9aca00");
    assert_eq!(h.ok("eth_gasPrice", json!([])), "0x77359400");
    let b = h.ok("eth_getBlockByNumber", json!(["latest", false]));
    assert_eq!(b["baseFeePerGas"], "0x3b9aca00");
    assert_eq!(b["gasLimit"], "0x1c9c380");
    let hdr = dalp_engine::chain::types::BlockHeader::from_json(&b).unwrap();
    assert_eq!(hdr.number, 0);
    assert_eq!(
        h.ok("eth_getBlockByNumber", json!(["0x99", false])),
        Value::Null
    );
    assert_eq!(
        h.err("foo_bar", json!([])),
        (-32601, "Method not found".into(), Value::Null)
    );
    let (code, msg, _) = h.err("eth_getBalance", json!([]));
    assert_eq!(code, -32602);
    assert!(msg.contains("EthGetBalance with 2 elements"), "{msg}");
    assert_eq!(h.err("eth_getBalance", json!(["0xzz", "latest"])).0, -32602);
    let (code, msg, _) = h.err("eth_getTransactionCount", json!([A0, "0x99"]));
    assert_eq!(
        (code, msg.as_str()),
        (
            -32602,
            "BlockOutOfRangeError: block height is 0 but requested was 153"
        )
    );
    assert_eq!(
        h.m.handle_rpc("not json", 0, 0),
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}"#
    );
    assert_eq!(
        h.err("eth_sendRawTransaction", json!(["0x"])).1,
        "Empty transaction data"
    );
    assert_eq!(
        h.err("eth_sendRawTransaction", json!(["0x02f8"])).1,
        "Failed to decode transaction"
    );
    // Empty blocks: the base fee falls by 1/8 per block, as in Anvil.
    h.mine();
    h.mine();
    let fh = h.ok("eth_feeHistory", json!(["0x2", "latest", [50]]));
    assert_eq!(
        fh["baseFeePerGas"],
        json!(["0x3b9aca00", "0x342770c0", "0x2da282a8"])
    );
    assert_eq!(fh["reward"], json!([["0x0"], ["0x0"]]));
    assert_eq!(fh["oldestBlock"], "0x1");
}

#[test]
fn deploy_mint_transfer_with_logs_and_reverts() {
    let mut h = H::new();
    let token = h.deploy();
    assert!(!h.m.code_of(token).is_empty());
    // The constructor registered the owner: its IdentityRegistered log is in the receipt.
    // Mint to an unverified account reverts exactly like Anvil, with the Error(string) data.
    let mint_a1 = AssetToken::mintCall {
        to: A1,
        amount: U256::from(100),
    }
    .abi_encode();
    let r = h.call_token(A0, token, mint_a1.clone());
    assert_eq!(r["error"]["code"], 3);
    assert_eq!(
        r["error"]["message"],
        "execution reverted: identity not verified"
    );
    assert_eq!(
        r["error"]["data"],
        "0x08c379a0000000000000000000000000000000000000000000000000000000000000002000000000000000000000000000000000000000000000000000000000000000156964656e74697479206e6f742076657269666965640000000000000000000000"
    );
    let r = h.call_token(A1, token, mint_a1.clone());
    assert_eq!(r["error"]["message"], "execution reverted: not owner");
    let r = h.call_token(A0, token, vec![0x12, 0x34, 0x56, 0x78]);
    assert_eq!(r["error"]["message"], "execution reverted");
    assert_eq!(r["error"]["data"], "0x");
    // The engine's error parser reads it as a revert with the reason.
    let e = dalp_engine::EngineError::from_rpc(
        3,
        r#"execution reverted: identity not verified"#.into(),
        None,
    );
    assert!(matches!(e, dalp_engine::EngineError::Reverted(_)));

    // register A1, mint to A0, transfer to A1
    h.token_tx(
        0,
        token,
        AssetToken::registerIdentityCall {
            account: A1,
            country: 756,
        }
        .abi_encode(),
    );
    let mint = h.token_tx(
        0,
        token,
        AssetToken::mintCall {
            to: A0,
            amount: U256::from(100),
        }
        .abi_encode(),
    );
    let xfer = h.token_tx(
        0,
        token,
        AssetToken::transferCall {
            to: A1,
            amount: U256::from(30),
        }
        .abi_encode(),
    );
    let mined = h.mine();
    assert_eq!(mined.included.len(), 3);
    let r = h.receipt(xfer);
    let rec = dalp_engine::chain::types::Receipt::from_json(&r).unwrap();
    assert!(rec.success);
    assert_eq!(rec.logs.len(), 1);
    assert_eq!(rec.logs[0].topics[0], transfer_topic());
    assert_eq!(
        rec.logs[0].log_index, 2,
        "log index counts within the block"
    );
    let mint_rec = dalp_engine::chain::types::Receipt::from_json(&h.receipt(mint)).unwrap();
    // Same EVM, same gas as Anvil's first mint to the owner (74796 in Anvil 1.7.1).
    assert_eq!(mint_rec.gas_used, 74_796);
    assert_eq!(h.balance_of_token(token, A0), U256::from(70));
    assert_eq!(h.balance_of_token(token, A1), U256::from(30));
    // eth_getLogs by block hash and topic, as the indexer asks.
    let logs = h.ok(
        "eth_getLogs",
        json!([{"blockHash": rec.block_hash, "topics": [transfer_topic()]}]),
    );
    let logs: Vec<_> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| dalp_engine::chain::types::Log::from_json(l).unwrap())
        .collect();
    assert_eq!(logs.len(), 2);
    assert_eq!(Address::from_word(logs[1].topics[2]), A1);
    // range + topic filter with an OR list and a wildcard
    let logs = h.ok(
        "eth_getLogs",
        json!([{"fromBlock": "0x0", "toBlock": "latest", "topics": [[transfer_topic()], null, A1.into_word()]}]),
    );
    assert_eq!(logs.as_array().unwrap().len(), 1);
    assert_eq!(
        h.err(
            "eth_getLogs",
            json!([{"blockHash": B256::with_last_byte(1)}])
        )
        .1,
        "unknown block"
    );
    // A transfer that compliance forbids reverts on chain: status 0.
    let bad = h.token_tx(
        1,
        token,
        AssetToken::transferCall {
            to: A2,
            amount: U256::from(1),
        }
        .abi_encode(),
    );
    h.mine();
    assert_eq!(h.receipt(bad)["status"], "0x0");
    assert_eq!(
        h.m.call(A0, token, &AssetToken::totalSupplyCall {}.abi_encode())
            .map(|b| U256::abi_decode(&b).unwrap()),
        Ok(U256::from(100))
    );
    // estimateGas succeeds for a valid call and reverts like eth_call otherwise
    let est = h.ok(
        "eth_estimateGas",
        json!([{"from": A0, "to": token, "data": Bytes::from(AssetToken::mintCall { to: A0, amount: U256::from(1) }.abi_encode())}]),
    );
    assert!(dalp_engine::chain::types::quantity(&est).unwrap() > 21_000);
}

#[test]
fn pool_rejections_match_anvil() {
    let mut h = H::new();
    let (raw0, h0) = h.transfer_eth(0, 0, FEES);
    h.send_ok(&raw0);
    // same bytes again
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([raw0])),
        (-32003, "transaction already imported".into(), Value::Null)
    );
    // Anvil: a replacement of a ready tx needs a strictly higher max fee, any amount.
    let (same_fee, _) = h.sign(0, 0, Some(A2), Bytes::new(), U256::from(2), 21_000, FEES);
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([same_fee])).1,
        "replacement transaction underpriced"
    );
    let (tiny_bump, h0b) = h.sign(
        0,
        0,
        Some(A2),
        Bytes::new(),
        U256::from(2),
        21_000,
        Fees {
            max: FEES.max + 1,
            prio: FEES.prio,
        },
    );
    assert_eq!(h.send_ok(&tiny_bump), h0b);
    assert!(!h.m.is_pending(h0) && h.m.is_pending(h0b));
    // the replaced one is unknown now; the replacement is pending
    assert_eq!(h.ok("eth_getTransactionByHash", json!([h0])), Value::Null);
    assert_eq!(
        h.ok("eth_getTransactionByHash", json!([h0b]))["blockHash"],
        Value::Null
    );
    assert_eq!(h.nonce(A0, "pending"), 1);
    assert_eq!(h.nonce(A0, "latest"), 0);
    let mined = h.mine();
    assert_eq!(mined.included, vec![h0b], "exactly one of the two is mined");
    assert_eq!(h.receipt(h0), Value::Null);
    // nonce too low
    let (low, _) = h.transfer_eth(
        0,
        0,
        Fees {
            max: 10 * GWEI,
            prio: GWEI,
        },
    );
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([low])),
        (-32003, "nonce too low".into(), Value::Null)
    );
    // max fee below the next base fee
    let (cheap, _) = h.transfer_eth(0, 1, Fees { max: 16, prio: 1 });
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([cheap])).1,
        "max fee per gas less than block base fee"
    );
    let (tip, _) = h.transfer_eth(
        0,
        1,
        Fees {
            max: 2 * GWEI,
            prio: 3 * GWEI,
        },
    );
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([tip])).1,
        "max priority fee per gas higher than max fee per gas"
    );
    let (hi_gas, _) = h.sign(0, 1, Some(A2), Bytes::new(), U256::ZERO, 40_000_000, FEES);
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([hi_gas])),
        (
            -32000,
            "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit".into(),
            Value::Null
        )
    );
    let (lo_gas, _) = h.sign(0, 1, Some(A2), Bytes::new(), U256::ZERO, 20_000, FEES);
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([lo_gas])),
        (-32000, "intrinsic gas too low".into(), Value::Null)
    );
    // wrong chain id
    let wrong =
        h.k0.sign(&UnsignedTx {
            chain_id: 1,
            nonce: 1,
            gas_limit: 21_000,
            max_fee_per_gas: FEES.max,
            max_priority_fee_per_gas: FEES.prio,
            to: Some(A2),
            value: U256::ZERO,
            input: Bytes::new(),
        })
        .unwrap()
        .0;
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([wrong])).1,
        "invalid chain id for signer"
    );
}

#[test]
fn geth_policy_needs_ten_percent_on_both_fees() {
    let mut h = H::with(PoolPolicy::Geth);
    let (raw, _) = h.transfer_eth(0, 0, FEES);
    h.send_ok(&raw);
    let only_max = Fees {
        max: FEES.max * 11 / 10,
        prio: FEES.prio,
    };
    let (r1, _) = h.sign(
        0,
        0,
        Some(A2),
        Bytes::new(),
        U256::from(5),
        21_000,
        only_max,
    );
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([r1])).1,
        "replacement transaction underpriced"
    );
    let both = Fees {
        max: FEES.max * 11 / 10,
        prio: FEES.prio * 11 / 10,
    };
    let (r2, h2) = h.sign(0, 0, Some(A2), Bytes::new(), U256::from(5), 21_000, both);
    h.send_ok(&r2);
    assert_eq!(h.mine().included, vec![h2]);
    assert_eq!(h.m.canonical_txs().len(), 1);
}

#[test]
fn future_nonces_wait_in_the_queue_until_the_gap_fills() {
    let mut h = H::new();
    let (r2, h2) = h.transfer_eth(0, 2, FEES);
    let (r1, h1) = h.transfer_eth(0, 1, FEES);
    h.send_ok(&r2);
    h.send_ok(&r1);
    assert_eq!(h.nonce(A0, "pending"), 0, "queued txs do not count");
    assert!(h.mine().included.is_empty());
    assert_eq!(h.m.pending_count(), 2);
    let (r0, h0) = h.transfer_eth(0, 0, FEES);
    h.send_ok(&r0);
    assert_eq!(h.nonce(A0, "pending"), 3);
    assert_eq!(h.mine().included, vec![h0, h1, h2]);
    assert_eq!(h.nonce(A0, "latest"), 3);
    assert_eq!(h.m.pending_count(), 0);
}

#[test]
fn ordering_is_by_max_fee_across_senders() {
    let mut h = H::new();
    let (a, ha) = h.transfer_eth(0, 0, FEES);
    let (b, hb) = h.transfer_eth(
        1,
        0,
        Fees {
            max: 5 * GWEI,
            prio: GWEI,
        },
    );
    h.send_ok(&a);
    h.send_ok(&b);
    assert_eq!(h.mine().included, vec![hb, ha]);
}

#[test]
fn insufficient_funds_then_top_up() {
    let mut h = H::new();
    h.m.set_balance(A0, U256::ZERO);
    let (raw, hash) = h.transfer_eth(0, 0, FEES);
    let (code, msg, _) = h.err("eth_sendRawTransaction", json!([raw]));
    assert_eq!(
        (code, msg.as_str()),
        (-32003, "Insufficient funds for gas * price + value")
    );
    assert!(matches!(
        dalp_engine::EngineError::from_rpc(code, msg, None),
        dalp_engine::EngineError::SignerFunds { .. }
    ));
    h.m.set_balance(A0, eth(1));
    assert_eq!(h.send_ok(&raw), hash);
    h.mine();
    assert_eq!(h.receipt(hash)["status"], "0x1");
}

#[test]
fn gas_spike_drops_underpriced_like_anvil_and_replacement_gets_in() {
    let mut h = H::new();
    let (raw, hash) = h.transfer_eth(
        0,
        0,
        Fees {
            max: 2 * GWEI,
            prio: GWEI,
        },
    );
    h.send_ok(&raw);
    h.m.set_next_base_fee(100 * GWEI);
    let mined = h.mine();
    assert!(mined.included.is_empty());
    assert_eq!(mined.dropped[0].0, hash);
    assert_eq!(h.ok("eth_getTransactionByHash", json!([hash])), Value::Null);
    // the same bytes again are refused as underpriced (FeeTooLow for the engine)
    let (_, msg, _) = h.err("eth_sendRawTransaction", json!([raw]));
    assert_eq!(
        dalp_engine::error::node_rejection(&msg),
        dalp_engine::error::NodeRejection::FeeTooLow
    );
    let next = h.m.next_base_fee();
    let (bumped, hb) = h.transfer_eth(
        0,
        0,
        Fees {
            max: next * 2,
            prio: GWEI,
        },
    );
    h.send_ok(&bumped);
    assert_eq!(h.mine().included, vec![hb]);
}

#[test]
fn gas_spike_under_geth_policy_leaves_it_pending_until_replaced() {
    let mut h = H::with(PoolPolicy::Geth);
    let (raw, hash) = h.transfer_eth(
        0,
        0,
        Fees {
            max: 2 * GWEI,
            prio: GWEI,
        },
    );
    h.send_ok(&raw);
    h.m.set_next_base_fee(100 * GWEI);
    assert!(h.mine().included.is_empty());
    assert!(h.m.is_pending(hash));
    let next = h.m.next_base_fee();
    let (bumped, hb) = h.transfer_eth(
        0,
        0,
        Fees {
            max: next * 2,
            prio: 2 * GWEI,
        },
    );
    h.send_ok(&bumped);
    assert_eq!(h.mine().included, vec![hb]);
    assert!(!h.m.is_pending(hash));
}

#[test]
fn reorg_reincludes_or_drops_and_rolls_state_back() {
    let mut h = H::new();
    let token = h.deploy();
    let mint = h.token_tx(
        0,
        token,
        AssetToken::mintCall {
            to: A0,
            amount: U256::from(50),
        }
        .abi_encode(),
    );
    h.mine();
    let before = h.receipt(mint);
    let head = h.m.head();
    // re-included: same tx, new block hash, chain longer
    h.now += 1000;
    let s = h.m.reorg(1, false, h.now);
    assert_eq!(s.reinjected, vec![mint]);
    assert_eq!(h.m.head(), head + 1);
    let after = h.receipt(mint);
    assert_ne!(before["blockHash"], after["blockHash"]);
    assert_eq!(h.balance_of_token(token, A0), U256::from(50));
    // the engine's canonical check: receipt block hash == canonical block hash at that height
    let n = dalp_engine::chain::types::quantity(&after["blockNumber"]).unwrap();
    assert_eq!(
        h.m.block_hash(n).map(|x| format!("{x:#x}")),
        after["blockHash"].as_str().map(String::from)
    );
    // dropped: the receipt disappears and the state rolls back; nonce is free again
    let mined_in = n;
    let depth = h.m.head() - mined_in + 1;
    h.now += 1000;
    let s = h.m.reorg(depth, true, h.now);
    assert_eq!(s.dropped, vec![mint]);
    assert_eq!(h.receipt(mint), Value::Null);
    assert_eq!(h.ok("eth_getTransactionByHash", json!([mint])), Value::Null);
    assert_eq!(h.balance_of_token(token, A0), U256::ZERO);
    assert_eq!(h.m.nonce_of(A0), 1);
    assert_eq!(h.m.canonical_txs().len(), 1);
}

#[test]
fn dropped_tx_can_be_rebroadcast_with_the_same_bytes() {
    let mut h = H::new();
    let (r0, h0) = h.transfer_eth(0, 0, FEES);
    let (r1, h1) = h.transfer_eth(0, 1, FEES);
    h.send_ok(&r0);
    h.send_ok(&r1);
    // Anvil drops the ready successors with it
    assert_eq!(h.m.drop_pending_detailed(h0), vec![h0, h1]);
    assert_eq!(h.ok("eth_getTransactionByHash", json!([h0])), Value::Null);
    assert!(!h.m.drop_pending(h0));
    assert_eq!(h.send_ok(&r0), h0);
    assert_eq!(h.send_ok(&r1), h1);
    assert_eq!(h.mine().included, vec![h0, h1]);
    assert_eq!(h.m.drop_all_pending_from(A0), 0);
}

#[test]
fn external_nonce_use_makes_the_engines_nonce_too_low() {
    let mut h = H::new();
    let ext = h.m.external_use_nonce(A0);
    assert_eq!(h.nonce(A0, "pending"), 1);
    h.mine();
    let (raw, _) = h.transfer_eth(0, 0, FEES);
    let (_, msg, _) = h.err("eth_sendRawTransaction", json!([raw]));
    assert_eq!(
        dalp_engine::error::node_rejection(&msg),
        dalp_engine::error::NodeRejection::NonceTooLow
    );
    let txs = h.m.canonical_txs();
    assert_eq!(
        (txs[0].hash, txs[0].nonce, txs[0].impersonated),
        (ext, 0, true)
    );
    assert_eq!(h.receipt(ext)["status"], "0x1");
}

#[test]
fn finality_and_lagging_views() {
    let mut h = H::new();
    for _ in 0..5 {
        h.mine();
    }
    assert_eq!((h.m.head(), h.m.finalized()), (5, 2));
    let fin = h.ok("eth_getBlockByNumber", json!(["finalized", false]));
    assert_eq!(fin["number"], "0x2");
    let (raw, hash) = h.transfer_eth(0, 0, FEES);
    h.send_ok(&raw);
    h.mine();
    // two blocks behind: head 4, the receipt is not there yet, the tx looks pending
    let r = h.raw("eth_blockNumber", json!([]), 2);
    assert_eq!(r["result"], "0x4");
    let r = h.raw("eth_getTransactionReceipt", json!([hash]), 2);
    assert_eq!(r["result"], Value::Null);
    let r = h.raw("eth_getTransactionByHash", json!([hash]), 2);
    assert_eq!(r["result"]["blockHash"], Value::Null);
    let r = h.raw("eth_getTransactionCount", json!([A0, "latest"]), 2);
    assert_eq!(r["result"], "0x0");
    let r = h.raw("eth_getBlockByNumber", json!(["0x6", false]), 2);
    assert_eq!(r["result"], Value::Null);
    let r = h.raw("eth_getBlockByNumber", json!(["finalized", false]), 2);
    assert_eq!(r["result"]["number"], "0x1");
    assert_eq!(h.receipt(hash)["blockNumber"], "0x6");
}

/// Behaviours the conformance tests against Anvil found (`tests/tests/chain_conformance.rs`).
#[test]
fn anvil_pool_details() {
    let mut h = H::new();
    // A pending tx reports the price it would pay in the next block.
    let (r0, h0) = h.transfer_eth(0, 0, FEES);
    h.send_ok(&r0);
    let t = h.ok("eth_getTransactionByHash", json!([h0]));
    assert_eq!(t["gasPrice"], "0x77359400", "1 gwei base fee + 1 gwei tip");
    // A queued tx needs a strictly higher fee to be replaced, and cannot be dropped.
    let (q, hq) = h.transfer_eth(0, 2, FEES);
    h.send_ok(&q);
    let (same, _) = h.sign(0, 2, Some(A2), Bytes::new(), U256::from(7), 21_000, FEES);
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([same])).1,
        "replacement transaction underpriced"
    );
    assert_eq!(h.ok("anvil_dropTransaction", json!([hq])), Value::Null);
    assert!(h.m.is_pending(hq));
    // The nonce is checked before the gas limit.
    h.mine();
    let (low, _) = h.sign(0, 0, Some(A2), Bytes::new(), U256::ZERO, 20_000, FEES);
    assert_eq!(
        h.err("eth_sendRawTransaction", json!([low])).1,
        "nonce too low"
    );
}

/// `txpool_content`: the pool by readiness, sender and nonce (checked against Anvil by
/// `chain_conformance`); a queued transaction becomes pending when the gap below it is filled.
#[test]
fn txpool_content_splits_the_pool_into_pending_and_queued() {
    let mut h = H::new();
    let empty = h.ok("txpool_content", json!([]));
    assert_eq!(empty, json!({"pending": {}, "queued": {}}));
    let (r0, h0) = h.transfer_eth(0, 0, FEES);
    let (r2, h2) = h.transfer_eth(0, 2, FEES);
    h.send_ok(&r0);
    h.send_ok(&r2);
    let who = format!("{A0:#x}");
    let c = h.ok("txpool_content", json!([]));
    assert_eq!(c["pending"][&who]["0"]["hash"], json!(h0));
    assert_eq!(c["queued"][&who]["2"]["hash"], json!(h2));
    assert_eq!(c["queued"][&who]["2"]["blockHash"], Value::Null);
    assert_eq!(c["pending"][&who].as_object().unwrap().len(), 1);
    assert_eq!(c["queued"][&who].as_object().unwrap().len(), 1);
    assert_eq!(
        h.ok("txpool_status", json!([])),
        json!({"pending": "0x1", "queued": "0x1"})
    );
    let (r1, _) = h.transfer_eth(0, 1, FEES);
    h.send_ok(&r1);
    let c = h.ok("txpool_content", json!([]));
    assert_eq!(c["pending"][&who].as_object().unwrap().len(), 3);
    assert_eq!(c["queued"], json!({}));
    h.mine();
    assert_eq!(
        h.ok("txpool_content", json!([])),
        json!({"pending": {}, "queued": {}})
    );
}

#[test]
fn anvil_fee_suggestion_and_pending_state() {
    let mut h = H::new();
    assert_eq!(h.ok("eth_maxPriorityFeePerGas", json!([])), "0x3b9aca00");
    let tip3 = Fees {
        max: 10 * GWEI,
        prio: 3 * GWEI,
    };
    let (raw, _) = h.transfer_eth(0, 0, tip3);
    h.send_ok(&raw);
    // `pending` state includes the pool; `latest` does not.
    let latest = h.ok("eth_getBalance", json!([A2, "latest"]));
    let pending = h.ok("eth_getBalance", json!([A2, "pending"]));
    assert_eq!(latest, "0x0");
    assert_eq!(pending, "0x1");
    h.mine();
    // The head block's lowest tip (3 gwei) is the suggestion now.
    assert_eq!(h.ok("eth_maxPriorityFeePerGas", json!([])), "0xb2d05e00");
    h.mine();
    assert_eq!(h.ok("eth_maxPriorityFeePerGas", json!([])), "0x3b9aca00");
}

#[test]
fn anvil_rollback_forgets_blocks_and_keeps_the_running_base_fee() {
    let mut h = H::new();
    let (raw, hash) = h.transfer_eth(0, 0, FEES);
    h.send_ok(&raw);
    assert_eq!(h.ok("evm_mine", json!([])), "0x0");
    let next = h.m.next_base_fee();
    assert_eq!(
        h.err("anvil_rollback", json!([5])).1,
        "Rollback depth must not exceed current chain height: current height 1, depth 5"
    );
    assert_eq!(h.ok("anvil_rollback", json!([1])), Value::Null);
    assert_eq!(h.m.head(), 0);
    assert_eq!(h.receipt(hash), Value::Null);
    assert!(
        !h.m.is_pending(hash),
        "a rolled-back tx is not put back in the pool"
    );
    assert_eq!(h.m.nonce_of(A0), 0);
    assert_eq!(
        h.m.next_base_fee(),
        next,
        "Anvil's fee manager is not rolled back"
    );
    assert_eq!(h.ok("anvil_mine", json!([2])), Value::Null);
    assert_eq!(h.m.head(), 2);
}

#[test]
fn same_inputs_same_bytes() {
    let run = || {
        let mut h = H::new();
        let token = h.deploy();
        h.token_tx(
            0,
            token,
            AssetToken::mintCall {
                to: A0,
                amount: U256::from(9),
            }
            .abi_encode(),
        );
        h.mine();
        h.now += 1000;
        h.m.reorg(2, false, h.now);
        let mut out = String::new();
        for n in 0..=h.m.head() {
            let body = json!({"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":[format!("0x{n:x}"), true]});
            out.push_str(&h.m.handle_rpc(&body.to_string(), h.now, 0));
        }
        for t in h.m.canonical_txs() {
            let body = json!({"jsonrpc":"2.0","id":1,"method":"eth_getTransactionReceipt","params":[t.hash]});
            out.push_str(&h.m.handle_rpc(&body.to_string(), h.now, 0));
        }
        out
    };
    assert_eq!(run(), run());
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        /// send (signer, nonce offset from pending, fee bump step)
        Send(u8, u8, u8),
        Mine,
        Reorg(u8, bool),
        DropFirstPending,
        External(u8),
        Spike,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..2, 0u8..3, 0u8..4).prop_map(|(k, o, b)| Op::Send(k, o, b)),
            3 => Just(Op::Mine),
            1 => (1u8..4, any::<bool>()).prop_map(|(d, x)| Op::Reorg(d, x)),
            1 => Just(Op::DropFirstPending),
            1 => (0u8..2).prop_map(Op::External),
            1 => Just(Op::Spike),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// Whatever the interleaving of sends, replacements, drops, spikes and reorgs: per
        /// sender the canonical nonces are exactly 0..n, no (sender, nonce) is mined twice, the
        /// head nonce equals the count, and the pool holds at most one tx per (sender, nonce).
        #[test]
        fn canonical_nonces_are_dense_and_unique(ops in proptest::collection::vec(op(), 1..40)) {
            let mut h = H::new();
            for o in ops {
                match o {
                    Op::Send(k, off, bump) => {
                        let who = if k == 0 { A0 } else { A1 };
                        let nonce = h.m.pending_nonce_of(who).saturating_sub(1) + off as u64;
                        let fees = Fees { max: 3 * GWEI + bump as u128 * GWEI, prio: GWEI + bump as u128 };
                        let (raw, _) = h.transfer_eth(k, nonce, fees);
                        let _ = h.send(&raw);
                    }
                    Op::Mine => { h.mine(); }
                    Op::Reorg(d, drop) => { h.now += 1000; h.m.reorg(d as u64, drop, h.now); }
                    Op::DropFirstPending => {
                        if let Some(first) = h.m.pool.keys().next().copied() { h.m.drop_pending(first); }
                    }
                    Op::External(k) => { h.m.external_use_nonce(if k == 0 { A0 } else { A1 }); }
                    Op::Spike => h.m.set_next_base_fee(4 * GWEI),
                }
            }
            let mut per: BTreeMap<Address, Vec<u64>> = BTreeMap::new();
            for t in h.m.canonical_txs() {
                per.entry(t.from).or_default().push(t.nonce);
            }
            for (who, nonces) in per {
                let expect: Vec<u64> = (0..nonces.len() as u64).collect();
                prop_assert_eq!(&nonces, &expect);
                prop_assert_eq!(h.m.nonce_of(who), nonces.len() as u64);
            }
            let mut slots = std::collections::BTreeSet::new();
            for t in h.m.pool.values() {
                prop_assert!(slots.insert((t.from, t.nonce)));
                prop_assert!(t.nonce >= h.m.nonce_of(t.from));
            }
        }
    }
}

#[test]
#[should_panic(expected = "does not extend block")]
fn the_model_stops_on_a_head_that_does_not_extend_its_parent() {
    let mut h = H::new();
    h.mine();
    // A model bug that forked the parent hash: the next block's check names it.
    let n = h.m.blocks.len();
    h.m.blocks[n - 1].hash = B256::repeat_byte(0xee);
    h.m.blocks[n - 1].parent_hash = B256::repeat_byte(0xdd);
    h.m.assert_head_consistent();
}

#[test]
#[should_panic(expected = "canonical nonces per sender must be dense")]
fn the_model_stops_on_a_block_whose_sender_nonces_skip() {
    let mut h = H::new();
    let (r0, _) = h.transfer_eth(0, 0, FEES);
    h.send_ok(&r0);
    h.mine();
    // A model bug that included nonce 1 as if it were the sender's first.
    let n = h.m.blocks.len();
    h.m.blocks[n - 1].txs[0].tx.nonce = 1;
    h.m.assert_head_consistent();
}

#[test]
fn a_cap_written_to_storage_is_the_tokens_max_balance_and_reverts_a_mint_already_sent() {
    let mut h = H::new();
    let token = h.deploy();
    assert_eq!(
        h.m.contracts_created_by(A0),
        vec![token],
        "the signer's deployments"
    );
    let mint = || {
        AssetToken::mintCall {
            to: A0,
            amount: U256::from(100),
        }
        .abi_encode()
    };
    // Checked (the pre-flight call passes), then sent; the rule changes before its block.
    assert!(h.call_token(A0, token, mint()).get("result").is_some());
    let sent = h.token_tx(0, token, mint());
    h.m.set_storage(token, crate::chain::MAX_BALANCE_SLOT, U256::from(1));
    let r = h.call_token(A0, token, AssetToken::maxBalanceCall {}.abi_encode());
    let b: Bytes = serde_json::from_value(r["result"].clone()).unwrap();
    assert_eq!(
        U256::abi_decode(&b).unwrap(),
        U256::from(1),
        "slot 6 is maxBalance"
    );
    h.mine();
    let rec = dalp_engine::chain::types::Receipt::from_json(&h.receipt(sent)).unwrap();
    assert!(!rec.success, "the mint reverts on chain: {rec:?}");
    assert_eq!(h.balance_of_token(token, A0), U256::ZERO);
    // Lifted (0 = no cap): the same mint goes through.
    h.m.set_storage(token, crate::chain::MAX_BALANCE_SLOT, U256::ZERO);
    let again = h.token_tx(0, token, mint());
    h.mine();
    let rec = dalp_engine::chain::types::Receipt::from_json(&h.receipt(again)).unwrap();
    assert!(rec.success);
    assert_eq!(h.balance_of_token(token, A0), U256::from(100));
}
