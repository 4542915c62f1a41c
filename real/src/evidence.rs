//! What a real run is judged on, read from the real services themselves: the database's tables
//! (through the engine's own `PgStore` and a few plain queries) and the chain's canonical blocks,
//! receipts, pool and token state (JSON-RPC against Anvil, never through a fault proxy). The
//! result is the same [`Evidence`] the simulation builds from its models.

use super::provision::Result;
use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{SolCall, SolEvent};
use dalp_engine::contracts::AssetToken;
use dalp_engine::store::pg::PgStore;
use dalp_engine::store::Store;
use dalp_sim::check::{ChainTx, Evidence, IdentityLog, TransferLog, WorkflowView};
use dalp_sim::engine_conf::CHAIN_ID;
use serde_json::{json, Value};
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::Duration;

/// A JSON-RPC client for the harness's own reads and chain faults.
#[derive(Clone)]
pub struct Rpc {
    pub http: reqwest::Client,
    pub url: String,
}

impl Rpc {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let v: Value = self
            .http
            .post(&self.url)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("{method}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        if let Some(e) = v.get("error") {
            return Err(format!("{method}: {e}").into());
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    pub async fn quantity(&self, method: &str, params: Value) -> Result<u64> {
        let v = self.call(method, params).await?;
        q(&v).ok_or_else(|| format!("{method}: not a quantity: {v}").into())
    }

    pub async fn head(&self) -> Result<u64> {
        self.quantity("eth_blockNumber", json!([])).await
    }

    pub async fn nonce(&self, who: Address, tag: &str) -> Result<u64> {
        self.quantity("eth_getTransactionCount", json!([who, tag]))
            .await
    }

    async fn call_u256(&self, to: Address, data: Vec<u8>) -> Result<U256> {
        let v = self
            .call(
                "eth_call",
                json!([{"to": to, "data": alloy_primitives::Bytes::from(data)}, "latest"]),
            )
            .await?;
        let bytes: alloy_primitives::Bytes = serde_json::from_value(v)?;
        Ok(U256::from_be_slice(&bytes[..32.min(bytes.len())]))
    }
}

pub fn q(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

fn addr(v: &Value) -> Option<Address> {
    v.as_str()?.parse().ok()
}

/// The chain side: every canonical signer transaction with its receipt status, every token
/// `Transfer`, the signer's pool, supplies and the investor's balances.
pub async fn chain(
    rpc: &Rpc,
    ev: &mut Evidence,
    finality_depth: u64,
    investor: Address,
) -> Result<()> {
    let head = rpc.head().await?;
    ev.finalized = head.saturating_sub(finality_depth);
    for n in 0..=head {
        let block = rpc
            .call("eth_getBlockByNumber", json!([format!("0x{n:x}"), true]))
            .await?;
        let Some(txs) = block.get("transactions").and_then(Value::as_array) else {
            continue;
        };
        for t in txs {
            let hash: B256 = serde_json::from_value(t["hash"].clone())?;
            let receipt = rpc.call("eth_getTransactionReceipt", json!([hash])).await?;
            ev.chain_txs.push(ChainTx {
                hash,
                from: addr(&t["from"]).unwrap_or_default(),
                nonce: q(&t["nonce"]).unwrap_or_default(),
                to: addr(&t["to"]),
                success: receipt["status"] == "0x1",
                block: n,
            });
            for log in receipt["logs"].as_array().into_iter().flatten() {
                let topics: Vec<B256> = serde_json::from_value(log["topics"].clone())?;
                let data: alloy_primitives::Bytes = serde_json::from_value(log["data"].clone())?;
                let contract = addr(&log["address"]).unwrap_or_default();
                if let Some(id) = IdentityLog::parse(n, contract, &topics, &data) {
                    ev.identities.push(id);
                }
                if topics.first() != Some(&AssetToken::Transfer::SIGNATURE_HASH)
                    || topics.len() != 3
                {
                    continue;
                }
                ev.transfers.push(TransferLog {
                    block: n,
                    contract,
                    from: Address::from_word(topics[1]),
                    to: Address::from_word(topics[2]),
                    value: U256::from_be_slice(&data[..32.min(data.len())]),
                });
            }
        }
    }
    let ready_to = rpc.nonce(ev.signer, "pending").await?;
    let pool = rpc.call("txpool_content", json!([])).await?;
    for part in ["pending", "queued"] {
        let Some(by_sender) = pool.get(part).and_then(Value::as_object) else {
            continue;
        };
        for (sender, txs) in by_sender {
            if sender.parse::<Address>().ok() != Some(ev.signer) {
                continue;
            }
            for nonce in txs.as_object().into_iter().flat_map(|m| m.keys()) {
                if let Ok(n) = nonce.parse::<u64>() {
                    ev.signer_pending.push((n, n < ready_to));
                }
            }
        }
    }
    let tokens: Vec<Address> = ev.tokens.values().copied().collect();
    for token in tokens {
        let supply = rpc
            .call_u256(token, AssetToken::totalSupplyCall {}.abi_encode())
            .await
            .unwrap_or_default();
        let bal = rpc
            .call_u256(token, AssetToken::balanceOfCall(investor).abi_encode())
            .await
            .unwrap_or_default();
        if let Ok(cap) = rpc
            .call_u256(token, AssetToken::maxBalanceCall {}.abi_encode())
            .await
        {
            ev.max_balance.insert(token, cap);
        }
        ev.supply.insert(token, supply);
        ev.investor_balance.insert(token, bal);
    }
    Ok(())
}

/// How many of the workflows `ids` the database at `url` holds and has not finished (terminal, by
/// the checkers' reading; one that is gone is not counted); `None` when it cannot be read within
/// a few seconds (a fault may still be settling: the liveness phase then goes by the clients
/// alone).
pub async fn unfinished(url: &str, ids: &std::collections::BTreeSet<i64>) -> Option<usize> {
    use sqlx::Connection;
    let ids: Vec<i64> = ids.iter().copied().collect();
    let read = async {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let rows = sqlx::query("SELECT status FROM workflows WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut conn)
            .await?;
        let _ = conn.close().await;
        let mut unfinished = 0;
        for r in rows {
            let status: String = r.try_get(0)?;
            unfinished += usize::from(!dalp_sim::check::is_terminal(&status));
        }
        Ok::<_, sqlx::Error>(unfinished)
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()?
        .ok()
}

/// The database side, from the current primary.
pub async fn database(url: &str, ev: &mut Evidence) -> Result<()> {
    let store = PgStore::open(url, 4, Duration::from_secs(10))
        .map_err(|e| format!("evidence: connect to the primary: {e}"))?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?;
    let rows = sqlx::query("SELECT id FROM workflows ORDER BY id")
        .fetch_all(&pool)
        .await?;
    for r in rows {
        let id: i64 = r.try_get(0)?;
        let Some(w) = store.workflow(id).await? else {
            continue;
        };
        ev.workflows.push(WorkflowView {
            id: w.id,
            kind: w.kind.clone(),
            key: w.idempotency_key.clone(),
            status: w.status.as_str().to_string(),
            current_step: w.current_step,
            input: w.input.clone(),
            result: w.result.clone(),
            error: w.error.clone(),
        });
        ev.journals.insert(id, store.journal(id).await?);
        ev.txs.extend(store.txs_for_workflow(id).await?);
    }
    let mut notifications = Vec::new();
    for r in sqlx::query(
        "SELECT workflow_id, kind, payload FROM notifications ORDER BY workflow_id, kind",
    )
    .fetch_all(&pool)
    .await?
    {
        notifications.push(dalp_sim::check::effects::Notification {
            workflow_id: r.try_get(0)?,
            kind: r.try_get(1)?,
            payload: r.try_get(2)?,
        });
    }
    ev.notifications = Some(notifications);
    for r in sqlx::query("SELECT tx_hash FROM nonce_fillers ORDER BY tx_hash")
        .fetch_all(&pool)
        .await?
    {
        let h: String = r.try_get(0)?;
        ev.fillers.push(h.parse()?);
    }
    ev.indexed_height = store
        .indexer_checkpoint(CHAIN_ID)
        .await?
        .map(|c| c.last_block)
        .unwrap_or(0);
    let mut balances: BTreeMap<(Address, Address), U256> = BTreeMap::new();
    for r in sqlx::query(
        "SELECT contract, from_address, to_address, value::text FROM token_events \
         WHERE chain_id = $1 AND block_number <= $2",
    )
    .bind(CHAIN_ID as i64)
    .bind(ev.finalized as i64)
    .fetch_all(&pool)
    .await?
    {
        let contract: Address = r.try_get::<String, _>(0)?.parse()?;
        let from: Address = r.try_get::<String, _>(1)?.parse()?;
        let to: Address = r.try_get::<String, _>(2)?.parse()?;
        let value = U256::from_str_radix(&r.try_get::<String, _>(3)?, 10)?;
        if from != Address::ZERO {
            let b = balances.entry((contract, from)).or_default();
            *b = b.wrapping_sub(value);
        }
        if to != Address::ZERO {
            let b = balances.entry((contract, to)).or_default();
            *b = b.wrapping_add(value);
        }
    }
    ev.indexed_balances = balances;
    pool.close().await;
    Ok(())
}

/// The indexer's checkpoint height on the primary at `url` (0 when unreadable).
pub async fn indexed_height(url: &str) -> u64 {
    let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
    else {
        return 0;
    };
    let h = sqlx::query("SELECT last_block FROM indexer_checkpoint WHERE chain_id = $1")
        .bind(CHAIN_ID as i64)
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<i64, _>(0).ok())
        .unwrap_or(0);
    pool.close().await;
    h.max(0) as u64
}
