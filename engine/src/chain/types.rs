//! JSON-RPC wire types the engine reads, parsed by hand so both flavours share one parser.

use crate::error::{EngineError, Result};
use alloy_primitives::{Address, Bytes, B256, U256};
use serde::Deserialize;
use serde_json::Value;

fn bad(what: &str) -> EngineError {
    EngineError::RpcUnavailable(format!("malformed response: {what}"))
}

/// A hex quantity (`"0x1a"`) as u64.
pub fn quantity(v: &Value) -> Result<u64> {
    quantity_str(v.as_str().ok_or_else(|| bad("quantity is not a string"))?)
}

/// A hex quantity's text (`0x1a`) as u64.
pub fn quantity_str(s: &str) -> Result<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| bad("quantity is not hex"))
}

pub fn quantity_u128(v: &Value) -> Result<u128> {
    quantity_u128_str(v.as_str().ok_or_else(|| bad("quantity is not a string"))?)
}

pub fn quantity_u128_str(s: &str) -> Result<u128> {
    u128::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| bad("quantity is not hex"))
}

pub fn quantity_u256(v: &Value) -> Result<U256> {
    let s = v.as_str().ok_or_else(|| bad("quantity is not a string"))?;
    U256::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| bad("quantity is not hex"))
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name).ok_or_else(|| bad(name))
}

/// Field `name` deserialized in place: `&Value` is itself a deserializer, so this is
/// `from_value` (the same visitor, the same verdict) without cloning the field first.
fn parse<T: serde::de::DeserializeOwned>(v: &Value, name: &str) -> Result<T> {
    T::deserialize(field(v, name)?).map_err(|_| bad(name))
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Log {
    pub address: Address,
    pub topics: Vec<B256>,
    pub data: Bytes,
    pub block_number: u64,
    pub block_hash: B256,
    pub tx_hash: B256,
    pub log_index: u64,
    pub removed: bool,
}

impl Log {
    pub fn from_json(v: &Value) -> Result<Self> {
        Ok(Log {
            address: parse(v, "address")?,
            topics: parse(v, "topics")?,
            data: parse(v, "data")?,
            block_number: quantity(field(v, "blockNumber")?)?,
            block_hash: parse(v, "blockHash")?,
            tx_hash: parse(v, "transactionHash")?,
            log_index: quantity(field(v, "logIndex")?)?,
            removed: v.get("removed").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    pub tx_hash: B256,
    pub block_number: u64,
    pub block_hash: B256,
    pub success: bool,
    pub contract_address: Option<Address>,
    pub gas_used: u64,
    pub logs: Vec<Log>,
}

impl Receipt {
    pub fn from_json(v: &Value) -> Result<Self> {
        let contract_address = match v.get("contractAddress") {
            None | Some(Value::Null) => None,
            Some(a) => Some(Address::deserialize(a).map_err(|_| bad("contractAddress"))?),
        };
        Ok(Receipt {
            tx_hash: parse(v, "transactionHash")?,
            block_number: quantity(field(v, "blockNumber")?)?,
            block_hash: parse(v, "blockHash")?,
            success: quantity(field(v, "status")?)? == 1,
            contract_address,
            gas_used: quantity(field(v, "gasUsed")?)?,
            logs: field(v, "logs")?
                .as_array()
                .ok_or_else(|| bad("logs"))?
                .iter()
                .map(Log::from_json)
                .collect::<Result<_>>()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub number: u64,
    pub hash: B256,
    pub parent_hash: B256,
    pub base_fee: Option<u128>,
    pub timestamp: u64,
}

impl BlockHeader {
    pub fn from_json(v: &Value) -> Result<Self> {
        Ok(BlockHeader {
            number: quantity(field(v, "number")?)?,
            hash: parse(v, "hash")?,
            parent_hash: parse(v, "parentHash")?,
            base_fee: v
                .get("baseFeePerGas")
                .filter(|b| !b.is_null())
                .map(quantity_u128)
                .transpose()?,
            timestamp: quantity(field(v, "timestamp")?)?,
        })
    }
}

/// A transaction as `eth_getBlockByNumber(n, true)` lists it: what the orphan reconciliation
/// needs to recognise one of ours and re-create its signed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTx {
    pub hash: B256,
    pub from: Address,
    pub nonce: u64,
    /// 2 for EIP-1559.
    pub tx_type: u64,
    pub chain_id: Option<u64>,
    pub to: Option<Address>,
    pub value: U256,
    pub input: Bytes,
    pub gas_limit: u64,
    pub max_fee_per_gas: Option<u128>,
    pub max_priority_fee_per_gas: Option<u128>,
}

impl ChainTx {
    pub fn from_json(v: &Value) -> Result<Self> {
        let opt_q128 = |name: &str| {
            v.get(name)
                .filter(|x| !x.is_null())
                .map(quantity_u128)
                .transpose()
        };
        Ok(ChainTx {
            hash: parse(v, "hash")?,
            from: parse(v, "from")?,
            nonce: quantity(field(v, "nonce")?)?,
            tx_type: v.get("type").map(quantity).transpose()?.unwrap_or(0),
            chain_id: v
                .get("chainId")
                .filter(|x| !x.is_null())
                .map(quantity)
                .transpose()?,
            to: v
                .get("to")
                .filter(|x| !x.is_null())
                .map(|_| parse(v, "to"))
                .transpose()?,
            value: quantity_u256(field(v, "value")?)?,
            input: parse(v, "input")?,
            gas_limit: quantity(field(v, "gas")?)?,
            max_fee_per_gas: opt_q128("maxFeePerGas")?,
            max_priority_fee_per_gas: opt_q128("maxPriorityFeePerGas")?,
        })
    }
}

/// EIP-1559 fees of a transaction: what the gateway suggests and what each signed version pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_receipt() {
        let v = json!({
            "transactionHash": format!("0x{}", "11".repeat(32)),
            "blockNumber": "0x10", "blockHash": format!("0x{}", "22".repeat(32)),
            "status": "0x1", "gasUsed": "0x5208", "contractAddress": null,
            "logs": [{
                "address": format!("0x{}", "33".repeat(20)), "topics": [format!("0x{}", "44".repeat(32))],
                "data": "0x", "blockNumber": "0x10", "blockHash": format!("0x{}", "22".repeat(32)),
                "transactionHash": format!("0x{}", "11".repeat(32)), "logIndex": "0x0"
            }]
        });
        let r = Receipt::from_json(&v).unwrap();
        assert!(r.success && r.block_number == 16 && r.logs.len() == 1 && r.gas_used == 21000);
    }

    #[test]
    fn parses_a_block_transaction() {
        let v = json!({
            "hash": format!("0x{}", "11".repeat(32)), "from": format!("0x{}", "33".repeat(20)),
            "nonce": "0x7", "type": "0x2", "chainId": "0x7a69", "to": null, "value": "0x0",
            "input": "0x6001", "gas": "0x5208", "maxFeePerGas": "0x3b9aca00",
            "maxPriorityFeePerGas": "0x1"
        });
        let t = ChainTx::from_json(&v).unwrap();
        assert_eq!(
            (t.nonce, t.tx_type, t.chain_id, t.to),
            (7, 2, Some(31337), None)
        );
        assert_eq!((t.max_fee_per_gas, t.input.len()), (Some(1_000_000_000), 2));
        assert!(ChainTx::from_json(&json!({"hash": "0x"})).is_err());
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert!(Receipt::from_json(&json!({"status": 1})).is_err());
        assert!(quantity(&json!("zz")).is_err());
    }
}
