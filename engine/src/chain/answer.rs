//! A node's JSON-RPC `result`, kept as the text the node wrote and parsed by each reader only as
//! far as it reads.
//!
//! Why: a block's or a receipt's JSON carries a 512-digit bloom and fields the engine never
//! looks at, and building a `serde_json::Value` of every answer (a map with an allocated key per
//! field) was a tenth of a simulated run's instructions. Each reader has a *fast* path, straight
//! from the text into a borrowed wire struct, and falls back to its `Value` path whenever the
//! fast one refuses: what is accepted, what is refused and with which message stay exactly what
//! the `Value` path decides (a missing field, a number where a string belongs, an escaped
//! string, a duplicate key: all go the old way).

use super::types::{quantity, quantity_str, quantity_u128_str, BlockHeader, Log, Receipt};
use crate::error::{EngineError, Result};
use alloy_primitives::{Address, Bytes, B256};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A `result` as written (`None`: `null`, or no `result` at all: both read as `null`).
#[derive(Debug)]
pub struct Answer(Option<Box<RawValue>>);

impl Answer {
    pub(super) fn new(raw: Option<Box<RawValue>>) -> Self {
        Answer(raw)
    }

    /// From a parsed `result` (the envelope's slow path).
    pub(super) fn from_value(v: &Value) -> Self {
        if v.is_null() {
            return Answer(None);
        }
        let text = serde_json::to_string(v).expect("a JSON value serializes");
        Answer(Some(
            RawValue::from_string(text).expect("serde_json writes valid JSON"),
        ))
    }

    pub fn is_null(&self) -> bool {
        self.0.is_none()
    }

    /// The whole result as a `Value`: the slow path, and what generic callers get.
    pub fn value(&self) -> Result<Value> {
        match &self.0 {
            None => Ok(Value::Null),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| EngineError::RpcUnavailable("malformed JSON-RPC response".into())),
        }
    }

    /// `W` read straight from the text, or `None` (then the caller takes its `Value` path).
    fn wire<'a, W: Deserialize<'a>>(&'a self) -> Option<W> {
        serde_json::from_str(self.0.as_deref()?.get()).ok()
    }

    /// A wire struct, from an object only (see [`object`]).
    fn wire_object<'a, W: Deserialize<'a>>(&'a self) -> Option<W> {
        object(self.0.as_deref()?.get())
    }

    /// A hex quantity, as [`quantity`] reads one.
    pub fn quantity(&self) -> Result<u64> {
        match self.wire::<&str>() {
            Some(s) => quantity_str(s),
            None => quantity(&self.value()?),
        }
    }

    /// A value whose own `Deserialize` is the whole rule (a hash, bytes): read from the text,
    /// or, where that refuses, from the `Value` (`serde_json::from_value`'s message).
    pub fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        if let Some(t) = self.wire::<T>() {
            return Ok(t);
        }
        serde_json::from_value(self.value()?)
            .map_err(|e| EngineError::RpcUnavailable(format!("{what}: {e}")))
    }

    pub fn receipt(&self) -> Result<Receipt> {
        match self.wire_object::<ReceiptWire>().map(ReceiptWire::read) {
            Some(Ok(r)) => Ok(r),
            _ => Receipt::from_json(&self.value()?),
        }
    }

    pub fn block_header(&self) -> Result<BlockHeader> {
        match self.wire_object::<HeaderWire>().map(HeaderWire::read) {
            Some(Ok(b)) => Ok(b),
            _ => BlockHeader::from_json(&self.value()?),
        }
    }

    pub fn logs(&self) -> Result<Vec<Log>> {
        if let Some(Ok(logs)) = self.wire::<Vec<&RawValue>>().and_then(|w| read_logs(&w)) {
            return Ok(logs);
        }
        self.value()?
            .as_array()
            .ok_or_else(|| EngineError::RpcUnavailable("eth_getLogs: not an array".into()))?
            .iter()
            .map(Log::from_json)
            .collect()
    }
}

/// `W` from `text` if it is an object: a derived struct also reads a sequence of its fields,
/// which the `Value` readers refuse.
fn object<'a, W: Deserialize<'a>>(text: &'a str) -> Option<W> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// A response's `error` (present, even as `null`, counts: as it always has) and `result`, or
/// `None` for a response that is not JSON. Read into a borrowed envelope that leaves `result`
/// as text; a response that refuses it (not an object, a duplicate key) is read through a
/// `Value`, whose rules (the last duplicate wins, a non-object has neither) decide as before.
pub(super) fn read_envelope(text: &str) -> Option<(Option<Value>, Answer)> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(default, deserialize_with = "present")]
        error: Option<Value>,
        #[serde(borrow, default)]
        result: Option<&'a RawValue>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Value>, D::Error> {
        <Value as serde::Deserialize>::deserialize(d).map(Some)
    }
    if let Some(env) = object::<Envelope>(text) {
        return Some((env.error, Answer::new(env.result.map(|r| r.to_owned()))));
    }
    let resp: Value = serde_json::from_str(text).ok()?;
    let result = resp
        .get("result")
        .map_or(Answer::new(None), Answer::from_value);
    Some((resp.get("error").cloned(), result))
}

/// Each entry as a log, `None` where one is not an object or does not read as a wire log.
fn read_logs(entries: &[&RawValue]) -> Option<Result<Vec<Log>>> {
    entries
        .iter()
        .map(|e| object::<LogWire>(e.get()).map(LogWire::read))
        .collect()
}

// The wire structs: the fields the `from_json` readers read, quantities as borrowed text (an
// escaped string cannot be borrowed, and so takes the slow path), every other field skipped
// unread. `read` applies the same quantity rule as the `Value` path; any error it returns is
// thrown away and the `Value` path decides, so the messages stay its own.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogWire<'a> {
    address: Address,
    topics: Vec<B256>,
    data: Bytes,
    block_number: &'a str,
    block_hash: B256,
    transaction_hash: B256,
    log_index: &'a str,
    #[serde(default)]
    removed: Option<bool>,
}

impl LogWire<'_> {
    fn read(self) -> Result<Log> {
        Ok(Log {
            address: self.address,
            topics: self.topics,
            data: self.data,
            block_number: quantity_str(self.block_number)?,
            block_hash: self.block_hash,
            tx_hash: self.transaction_hash,
            log_index: quantity_str(self.log_index)?,
            removed: self.removed.unwrap_or(false),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptWire<'a> {
    transaction_hash: B256,
    block_number: &'a str,
    block_hash: B256,
    status: &'a str,
    #[serde(default)]
    contract_address: Option<Address>,
    gas_used: &'a str,
    #[serde(borrow)]
    logs: Vec<&'a RawValue>,
}

impl ReceiptWire<'_> {
    fn read(self) -> Result<Receipt> {
        Ok(Receipt {
            tx_hash: self.transaction_hash,
            block_number: quantity_str(self.block_number)?,
            block_hash: self.block_hash,
            success: quantity_str(self.status)? == 1,
            contract_address: self.contract_address,
            gas_used: quantity_str(self.gas_used)?,
            logs: read_logs(&self.logs)
                .ok_or_else(|| EngineError::RpcUnavailable("malformed response: logs".into()))??,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderWire<'a> {
    number: &'a str,
    hash: B256,
    parent_hash: B256,
    #[serde(default)]
    base_fee_per_gas: Option<&'a str>,
    timestamp: &'a str,
}

impl HeaderWire<'_> {
    fn read(self) -> Result<BlockHeader> {
        Ok(BlockHeader {
            number: quantity_str(self.number)?,
            hash: self.hash,
            parent_hash: self.parent_hash,
            base_fee: self.base_fee_per_gas.map(quantity_u128_str).transpose()?,
            timestamp: quantity_str(self.timestamp)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn answer(v: &Value) -> Answer {
        Answer::from_value(v)
    }

    fn receipt_json() -> Value {
        json!({
            "transactionHash": format!("0x{}", "11".repeat(32)),
            "blockNumber": "0x10", "blockHash": format!("0x{}", "22".repeat(32)),
            "status": "0x1", "gasUsed": "0x5208", "contractAddress": null,
            "logsBloom": format!("0x{}", "00".repeat(256)), "type": "0x2",
            "logs": [{
                "address": format!("0x{}", "33".repeat(20)), "topics": [format!("0x{}", "44".repeat(32))],
                "data": "0x0102", "blockNumber": "0x10", "blockHash": format!("0x{}", "22".repeat(32)),
                "transactionHash": format!("0x{}", "11".repeat(32)), "logIndex": "0x3", "removed": false
            }]
        })
    }

    /// `object` with its field `key` removed (`None`) or set to `damage`.
    fn damage_field(object: &mut Value, key: &str, damage: &Option<Value>) {
        let fields = object.as_object_mut().expect("an object");
        match damage {
            None => fields.remove(key),
            Some(d) => fields.insert(key.to_string(), d.clone()),
        };
    }

    /// Each reader's answer, fast path or not, against its `Value` reader's: the same value or
    /// the same error message.
    fn same<T: PartialEq + std::fmt::Debug>(fast: Result<T>, slow: Result<T>) {
        match (fast, slow) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("fast {a:?}, slow {b:?}"),
        }
    }

    #[test]
    fn a_receipt_reads_the_same_both_ways() {
        let v = receipt_json();
        let a = answer(&v);
        assert!(
            a.wire_object::<ReceiptWire>().is_some(),
            "the fast path takes it"
        );
        same(a.receipt(), Receipt::from_json(&v));
    }

    /// Each field of a receipt removed, nulled, or given a wrong type: the fast path refuses or
    /// agrees, and the answer is the `Value` reader's.
    #[test]
    fn a_damaged_receipt_reads_the_same_both_ways() {
        let base = receipt_json();
        let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
        for key in keys {
            for damage in [
                None,
                Some(Value::Null),
                Some(json!(7)),
                Some(json!("0xzz")),
                Some(json!(true)),
            ] {
                let mut v = base.clone();
                damage_field(&mut v, &key, &damage);
                same(answer(&v).receipt(), Receipt::from_json(&v));
            }
        }
        let log_keys: Vec<String> = base["logs"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for key in log_keys {
            for damage in [
                None,
                Some(Value::Null),
                Some(json!(7)),
                Some(json!("0xzz")),
                Some(json!([])),
            ] {
                let mut v = base.clone();
                damage_field(&mut v["logs"][0], &key, &damage);
                same(answer(&v).receipt(), Receipt::from_json(&v));
                same(
                    answer(&v["logs"]).logs(),
                    answer(&v["logs"])
                        .value()
                        .and_then(|l| l.as_array().unwrap().iter().map(Log::from_json).collect()),
                );
            }
        }
    }

    #[test]
    fn a_header_reads_the_same_both_ways() {
        let v = json!({"number": "0x5", "hash": format!("0x{}", "aa".repeat(32)),
            "parentHash": format!("0x{}", "bb".repeat(32)), "baseFeePerGas": "0x3b9aca00",
            "timestamp": "0x64", "logsBloom": format!("0x{}", "00".repeat(256)), "transactions": []});
        same(answer(&v).block_header(), BlockHeader::from_json(&v));
        for key in ["number", "hash", "parentHash", "baseFeePerGas", "timestamp"] {
            for damage in [None, Some(Value::Null), Some(json!(7)), Some(json!("0x"))] {
                let mut w = v.clone();
                damage_field(&mut w, key, &damage);
                same(answer(&w).block_header(), BlockHeader::from_json(&w));
            }
        }
    }

    #[test]
    fn escaped_text_and_duplicate_keys_take_the_value_path() {
        // `\u0030x10` is "0x10": not borrowable, read through the `Value`.
        let text = r#"{"number":"\u0030x10","hash":"0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","parentHash":"0xbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","timestamp":"0x1","timestamp":"0x2"}"#;
        let a = Answer::new(Some(RawValue::from_string(text.into()).unwrap()));
        assert!(a.wire_object::<HeaderWire>().is_none());
        let b = a.block_header().unwrap();
        assert_eq!(
            (b.number, b.timestamp),
            (16, 2),
            "the last duplicate, as a map keeps it"
        );
    }

    /// A sequence of a struct's fields reads as that struct with serde's derive; the `Value`
    /// readers refuse it, and so do these.
    #[test]
    fn arrays_are_not_structs() {
        let h = format!("0x{}", "11".repeat(32));
        let header = json!(["0x1", h, h, null, "0x2"]);
        same(
            answer(&header).block_header(),
            BlockHeader::from_json(&header),
        );
        assert!(answer(&header).block_header().is_err());
        let a = format!("0x{}", "33".repeat(20));
        let log = json!([a, [h], "0x", "0x1", h, h, "0x0", false]);
        let logs = json!([log]);
        same(
            answer(&logs).logs(),
            Err(EngineError::RpcUnavailable(
                "malformed response: address".into(),
            )),
        );
        let mut receipt = receipt_json();
        receipt["logs"] = logs;
        same(answer(&receipt).receipt(), Receipt::from_json(&receipt));
        assert!(Receipt::from_json(&receipt).is_err());
    }

    /// The borrowed envelope reads a response as the `Value` did: an `error` present as `null`
    /// is an error, a non-object has neither part, the last of duplicate keys wins.
    #[test]
    fn envelopes_read_as_a_value_reads_them() {
        for (text, error, result) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"result":"0x10"}"#,
                None,
                json!("0x10"),
            ),
            (r#"{"id":1,"result":null}"#, None, Value::Null),
            (r#"{"id":1}"#, None, Value::Null),
            (
                r#"{"error":null,"result":"0x1"}"#,
                Some(Value::Null),
                json!("0x1"),
            ),
            (
                r#"{"error":{"code":-32000,"message":"m"}}"#,
                Some(json!({"code":-32000,"message":"m"})),
                Value::Null,
            ),
            (
                r#"{"result":"0x1","result":{"a":[1,2]}}"#,
                None,
                json!({"a":[1,2]}),
            ),
            (r#"[1,2]"#, None, Value::Null),
            (r#"7"#, None, Value::Null),
        ] {
            let (e, r) = read_envelope(text).expect(text);
            assert_eq!(e, error, "{text}");
            assert_eq!(r.value().unwrap(), result, "{text}");
        }
        for text in [
            "",
            "{",
            r#"{"result":"0x1"} x"#,
            r#"{"result":"0x1","logs":[}"#,
        ] {
            assert!(read_envelope(text).is_none(), "{text}");
        }
    }

    proptest! {
        /// Any string or number as a quantity: the same value or message both ways.
        #[test]
        fn quantities_read_the_same_both_ways(s in "(0x)?[0-9a-fA-Fg ]{0,20}", n in any::<u64>(), string in any::<bool>()) {
            let v = if string { json!(s) } else { json!(n) };
            same(answer(&v).quantity(), quantity(&v));
            same(answer(&v).parse::<B256>("hash"), serde_json::from_value::<B256>(v.clone())
                .map_err(|e| EngineError::RpcUnavailable(format!("hash: {e}"))));
        }
    }
}
