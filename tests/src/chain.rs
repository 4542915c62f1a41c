//! Reading the chain's own state, independently of the engine's tables: what the integration
//! tests compare the engine's claims against.

use crate::Result;
use alloy_primitives::{Address, U256};
use alloy_sol_types::SolCall;
use dalp_engine::contracts::AssetToken;
use serde_json::{json, Value};

pub async fn rpc(url: &str, method: &str, params: Value) -> Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let resp: Value = reqwest::Client::new()
        .post(url)
        .json(&body)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await?
        .json()
        .await?;
    if let Some(e) = resp.get("error") {
        return Err(format!("{method}: {e}").into());
    }
    Ok(resp["result"].clone())
}

fn q(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16).unwrap_or(0)
}

/// One mined transaction as the chain records it.
#[derive(Clone, Debug)]
pub struct MinedTx {
    pub hash: String,
    pub from: Address,
    pub to: Option<Address>,
    pub nonce: u64,
    pub input: String,
    pub success: bool,
}

pub struct ChainView {
    pub url: String,
}

impl ChainView {
    pub fn new(url: &str) -> Self {
        ChainView { url: url.into() }
    }

    pub async fn head(&self) -> Result<u64> {
        Ok(q(&rpc(&self.url, "eth_blockNumber", json!([])).await?))
    }

    /// Every transaction mined so far from `from`, in chain order, with its receipt status.
    pub async fn mined_from(&self, from: Address) -> Result<Vec<MinedTx>> {
        let head = self.head().await?;
        let mut out = Vec::new();
        for n in 0..=head {
            let b = rpc(
                &self.url,
                "eth_getBlockByNumber",
                json!([format!("0x{n:x}"), true]),
            )
            .await?;
            for tx in b["transactions"].as_array().cloned().unwrap_or_default() {
                let sender: Address = serde_json::from_value(tx["from"].clone())?;
                if sender != from {
                    continue;
                }
                let hash = tx["hash"].as_str().unwrap_or_default().to_string();
                let receipt = rpc(&self.url, "eth_getTransactionReceipt", json!([hash])).await?;
                out.push(MinedTx {
                    hash,
                    from: sender,
                    to: serde_json::from_value(tx["to"].clone()).ok(),
                    nonce: q(&tx["nonce"]),
                    input: tx["input"].as_str().unwrap_or_default().to_string(),
                    success: q(&receipt["status"]) == 1,
                });
            }
        }
        Ok(out)
    }

    pub async fn nonce(&self, who: Address) -> Result<u64> {
        Ok(q(&rpc(
            &self.url,
            "eth_getTransactionCount",
            json!([who, "latest"]),
        )
        .await?))
    }

    pub async fn balance_of(&self, token: Address, holder: Address) -> Result<U256> {
        let data = AssetToken::balanceOfCall(holder).abi_encode();
        let v = rpc(&self.url, "eth_call", json!([{"to": token, "data": format!("0x{}", alloy_primitives::hex::encode(data))}, "latest"])).await?;
        let bytes =
            alloy_primitives::hex::decode(v.as_str().unwrap_or("0x").trim_start_matches("0x"))?;
        Ok(U256::from_be_slice(&bytes))
    }

    pub async fn total_supply(&self, token: Address) -> Result<U256> {
        let data = AssetToken::totalSupplyCall {}.abi_encode();
        let v = rpc(&self.url, "eth_call", json!([{"to": token, "data": format!("0x{}", alloy_primitives::hex::encode(data))}, "latest"])).await?;
        let bytes =
            alloy_primitives::hex::decode(v.as_str().unwrap_or("0x").trim_start_matches("0x"))?;
        Ok(U256::from_be_slice(&bytes))
    }
}
