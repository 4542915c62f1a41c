//! The real run's services and the fault schedule applied to them.
//!
//! Every engine reaches the database, each RPC endpoint, and is reached by the clients, through
//! a proxy of its own, so a fault can hit one engine or all. The mapping (issue 5):
//! engine crash = SIGKILL then a new process; pause = SIGSTOP/SIGCONT; partition = black-holing
//! that engine's proxies (both directions: a proxy cannot lose one direction only); database
//! crash = SIGKILL / `docker kill`, restart on the same data; failover = kill the primary, then
//! `pg_promote()` the replica and re-point every engine's database proxy; switchover = the
//! primary made read-only in place (`default_transaction_read_only`), the replica promoted once
//! caught up, proxies re-pointed; connection loss = proxy reset and refusal; latency = proxy
//! delay; RPC down / 503 / timeout (also of one method) / ambiguous send = the RPC proxies;
//! reorg = `anvil_reorg`
//! (re-including the transactions unless they are to be dropped); mempool drop =
//! `anvil_dropTransaction`; gas spike = `anvil_setNextBlockBaseFeePerGas`; external nonce use =
//! a send from the signer's key outside the engine; signer funds = `anvil_setBalance`; region
//! failover = kill the active engines and the primary, promote, start the standby engines;
//! operator requeue = the operator API. A fault with no real counterpart is recorded as not
//! applicable, never silently skipped.

use super::engines::{operator_requeue, EngineProcess};
use super::evidence::Rpc;
use super::provision::{PgServer, Provider, Result};
use super::proxy::{HttpFaultProxy, HttpMode, TcpFaultProxy, TcpMode};
use alloy_primitives::{Address, Bytes, B256, U256};
use async_trait::async_trait;
use dalp_engine::signer::{SignerKey, UnsignedTx};
use dalp_sim::driver::{sleep_until_ms, FaultOutcome, FaultTarget};
use dalp_sim::engine_conf::{CHAIN_ID, SIGNER_KEY};
use dalp_sim::outcome::DataLoss;
use dalp_sim::scenario::Fault;
use serde_json::{json, Value};
use sqlx::Row;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The proxies of one engine.
pub struct EngineLinks {
    pub db: Arc<TcpFaultProxy>,
    pub rpc: Vec<Arc<HttpFaultProxy>>,
    pub api: Arc<HttpFaultProxy>,
}

pub struct Fleet {
    pub start: Instant,
    pub http: reqwest::Client,
    pub rpc: Rpc,
    pub signer: Address,
    pub links: Vec<EngineLinks>,
    pub engines: tokio::sync::Mutex<Vec<EngineProcess>>,
    pub standby: Vec<bool>,
    /// Database servers, index = `db-<j>`; `None` once removed.
    pub dbs: tokio::sync::Mutex<Vec<Box<dyn PgServer>>>,
    pub primary: Mutex<usize>,
    /// Where rejoining servers come from (a fresh replica of the current primary).
    pub provider: Box<dyn Provider>,
    pub rejoins: Mutex<u32>,
    /// The logs of servers a rejoin replaced (name, log), kept for a failed run's evidence: the
    /// demoted primary's log is where a lost commit would show.
    pub retired_db_logs: Mutex<Vec<(String, String)>>,
    /// Former primaries that crashed in a failover, waiting to rejoin.
    pub failed_over: Mutex<Vec<usize>>,
    pub sync_replication: bool,
    /// Anvil's interval-mining period (paused while a reorg is made).
    pub block_s: u64,
    pub external_txs: Mutex<Vec<B256>>,
    pub data_loss: Mutex<Vec<DataLoss>>,
    /// Sessions left inside a transaction (`db_stale_session`): held until the run ends, unless
    /// the server ends them first under the engine's idle-in-transaction bound.
    pub stale_sessions: Mutex<Vec<sqlx::PgConnection>>,
}

fn ms(s: f64) -> u64 {
    (s * 1000.0).round() as u64
}

/// A fault with no real counterpart on this backend.
fn na(why: &str) -> Result<FaultOutcome> {
    Ok(FaultOutcome::NotApplicable(why.into()))
}

fn applied(detail: Value) -> Result<FaultOutcome> {
    Ok(FaultOutcome::Applied(detail))
}

fn engine_index(node: &str) -> Option<usize> {
    node.strip_prefix("engine-")?.parse().ok()
}

fn db_index(node: &str) -> Option<usize> {
    node.strip_prefix("db-")?.parse().ok()
}

impl Fleet {
    pub fn t_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn primary_url(&self, dbs: &[Box<dyn PgServer>]) -> String {
        let p = *self.primary.lock().expect("primary");
        format!("postgres://postgres@{}/dalp", dbs[p].addr())
    }

    async fn sql(&self, db: &dyn PgServer, statements: &[&str]) -> Result<Vec<Value>> {
        let url = format!("postgres://postgres@{}/dalp", db.addr());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|e| format!("{}: {e}", db.name()))?;
        let mut out = Vec::new();
        for s in statements {
            let rows =
                tokio::time::timeout(Duration::from_secs(30), sqlx::query(s).fetch_all(&pool))
                    .await
                    .map_err(|_| format!("{}: `{s}` timed out", db.name()))?
                    .map_err(|e| format!("{}: `{s}`: {e}", db.name()))?;
            out.push(
                rows.first()
                    .and_then(|r| r.try_get::<String, _>(0).ok())
                    .map(Value::String)
                    .unwrap_or(Value::Null),
            );
        }
        pool.close().await;
        Ok(out)
    }

    /// A session on the primary, with the engine's session settings, that locks the lowest
    /// running workflow's row inside a transaction and is then left idle (`db_stale_session`).
    async fn stale_session(&self) -> Result<Value> {
        use sqlx::Connection;
        let j = *self.primary.lock().expect("primary");
        let addr = self.dbs.lock().await[j].addr();
        let bound = dalp_engine::store::idle_in_transaction_bound(Duration::from_millis(
            dalp_engine::config::TimeoutConfig::default().db_ms,
        ));
        let step = Duration::from_secs(10);
        let url = format!("postgres://postgres@{addr}/dalp");
        let mut conn = tokio::time::timeout(step, sqlx::PgConnection::connect(&url))
            .await
            .map_err(|_| format!("db-{j}: connect timed out"))??;
        let statements = [
            // 0: no bound, as PostgreSQL reads it.
            format!(
                "SET idle_in_transaction_session_timeout = {}",
                bound.map_or(0, |b| b.as_millis())
            ),
            "BEGIN".to_string(),
        ];
        for q in &statements {
            tokio::time::timeout(step, sqlx::query(q).execute(&mut conn))
                .await
                .map_err(|_| format!("db-{j}: `{q}` timed out"))??;
        }
        let row: Option<(i64,)> = tokio::time::timeout(
            step,
            sqlx::query_as(
                "SELECT id FROM workflows WHERE status = 'running' AND lease_owner IS NOT NULL \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut conn),
        )
        .await
        .map_err(|_| format!("db-{j}: locking a running workflow timed out"))??;
        let Some((wf,)) = row else {
            return Ok(json!({"workflow": null, "reason": "no workflow in flight"}));
        };
        let now = self.start.elapsed().as_millis() as u64;
        self.stale_sessions
            .lock()
            .expect("stale sessions")
            .push(conn);
        Ok(json!({"workflow": wf, "host": format!("db-{j}"),
                  "ends_at_ms": bound.map(|b| now + b.as_millis() as u64)}))
    }

    fn engine_targets(&self, node: &str) -> Vec<usize> {
        if node == "engines" {
            return (0..self.links.len()).collect();
        }
        engine_index(node).into_iter().collect()
    }

    fn rpc_targets(&self, endpoint: &str) -> Vec<Arc<HttpFaultProxy>> {
        let k: Option<usize> = endpoint.strip_prefix("rpc-").and_then(|k| k.parse().ok());
        self.links
            .iter()
            .flat_map(|l| {
                l.rpc
                    .iter()
                    .enumerate()
                    .filter(move |(i, _)| k.is_none_or(|k| k == *i))
                    .map(|(_, p)| p.clone())
            })
            .collect()
    }

    /// Kill the primary (if up), promote the most advanced live replica, re-point every
    /// engine's database proxy. Returns the promoted index and the measured loss.
    async fn fail_over(&self, kill_old: bool, promote_after_ms: u64) -> Result<Value> {
        let mut dbs = self.dbs.lock().await;
        let old = *self.primary.lock().expect("primary");
        // No acknowledgement may leave the old primary after its WAL position is read, or a
        // commit acknowledged in between is lost without being measured: the engines' links go
        // silent first (a crash cuts them anyway) and get their modes back once it is dead.
        let modes: Vec<TcpMode> = match kill_old {
            true => self
                .links
                .iter()
                .map(|l| {
                    let m = l.db.mode();
                    l.db.set_mode(TcpMode::Blackhole);
                    m
                })
                .collect(),
            false => Vec::new(),
        };
        // Where each server's WAL stands just before the crash: what the replica lacks is lost.
        let before = self
            .sql(dbs[old].as_ref(), &["SELECT pg_current_wal_lsn()::text"])
            .await
            .ok()
            .and_then(|v| v.first().cloned());
        if kill_old {
            let killed = dbs[old].kill().await;
            for (l, m) in self.links.iter().zip(modes) {
                // Its connections lead to the dead server, some with a reply cut short.
                l.db.reset_connections();
                l.db.set_mode(m);
            }
            killed?;
        }
        let crashed_at = self.t_ms();
        drop(dbs);
        sleep_until_ms(self, crashed_at + promote_after_ms).await;
        let dbs = self.dbs.lock().await;
        let mut to = None;
        for j in (0..dbs.len()).filter(|j| *j != old) {
            let standby = self
                .sql(dbs[j].as_ref(), &["SELECT pg_is_in_recovery()::text"])
                .await
                .ok()
                .and_then(|v| v.first().cloned());
            if standby == Some(json!("true")) {
                to = Some(j);
                break;
            }
        }
        let Some(to) = to else {
            return Ok(json!({"promoted": null, "why": "no live replica"}));
        };
        let replayed = self
            .sql(dbs[to].as_ref(), &["SELECT pg_last_wal_replay_lsn()::text"])
            .await?;
        let lost_bytes = match (&before, replayed.first()) {
            (Some(Value::String(b)), Some(Value::String(r))) => self
                .sql(
                    dbs[to].as_ref(),
                    &[&format!(
                        "SELECT greatest(pg_wal_lsn_diff('{b}', '{r}'), 0)::bigint::text"
                    )],
                )
                .await?
                .first()
                .and_then(|v| v.as_str().and_then(|s| s.parse::<u64>().ok()))
                .unwrap_or(0),
            _ => 0,
        };
        // The promoted server inherited the old primary's synchronous setting: with no standby
        // of its own, every commit would wait for ever.
        self.sql(
            dbs[to].as_ref(),
            &[
                "SELECT pg_promote(true, 60)::text",
                "ALTER SYSTEM RESET synchronous_standby_names",
                "SELECT pg_reload_conf()::text",
            ],
        )
        .await?;
        *self.primary.lock().expect("primary") = to;
        if kill_old {
            self.failed_over.lock().expect("failed over").push(old);
        }
        for l in &self.links {
            l.db.set_upstream(dbs[to].addr());
        }
        let window_ms = self.t_ms().saturating_sub(crashed_at);
        let loss = DataLoss {
            replication: if self.sync_replication {
                "sync"
            } else {
                "async"
            }
            .into(),
            lost_wal_bytes: Some(lost_bytes),
            window_ms,
            measured: Some(
                "WAL the promoted replica had not replayed when the primary crashed".into(),
            ),
            ..Default::default()
        };
        self.data_loss.lock().expect("loss").push(loss.clone());
        Ok(
            json!({"old_primary": format!("db-{old}"), "promoted": format!("db-{to}"), "loss": loss}),
        )
    }

    /// A demoted or crashed former primary comes back as a replica of the current primary: a
    /// new base backup (its old WAL may have diverged; PostgreSQL would need `pg_rewind`).
    async fn rejoin(&self, j: usize) -> Result<Value> {
        let mut dbs = self.dbs.lock().await;
        let p = *self.primary.lock().expect("primary");
        if j == p {
            return Ok(json!({"rejoined": null, "why": "it is the primary"}));
        }
        let log = dbs[j].server_log().await;
        self.retired_db_logs
            .lock()
            .expect("retired logs")
            .push((format!("db-{j} {}", dbs[j].name()), log));
        dbs[j].kill().await?;
        let n = {
            let mut r = self.rejoins.lock().expect("rejoins");
            *r += 1;
            *r
        };
        let name = format!("db-{j}-rejoin{n}");
        let fresh = self
            .provider
            .postgres_replica(&name, dbs[p].as_ref())
            .await?;
        dbs[j] = fresh;
        Ok(json!({"rejoined": format!("db-{j}"), "as": "replica", "of": format!("db-{p}")}))
    }

    async fn start_engine(&self, i: usize) -> Result<()> {
        let mut engines = self.engines.lock().await;
        if !engines[i].running() {
            engines[i].start(&self.http).await?;
        }
        Ok(())
    }

    /// Apply `fault`: what was done (the trace's detail), or why it has no counterpart here.
    async fn apply_fault(&self, fault: &Fault, heal_ms: u64) -> Result<FaultOutcome> {
        match fault {
            Fault::EngineCrash { node, .. } => {
                let mut engines = self.engines.lock().await;
                let Some(i) = engine_index(node) else {
                    return na("only engine nodes crash on this backend");
                };
                engines[i].kill9();
                applied(json!({"signal": "SIGKILL"}))
            }
            Fault::EnginePause { node, .. } => {
                let engines = self.engines.lock().await;
                for i in self.engine_targets(node) {
                    engines[i].signal_pause(true);
                }
                applied(json!({"signal": "SIGSTOP"}))
            }
            Fault::Partition { node, from, .. } => self.partition(node, from),
            Fault::ClockSkew { .. } => na(
                "a real process reads the host's clock; skewing it needs a time namespace or libfaketime",
            ),
            Fault::DbCrash { node, .. } => self.crash_db(node).await,
            Fault::DbFailover {
                promote_after_s, ..
            } => {
                let promote = ms(*promote_after_s).min(heal_ms.saturating_sub(self.t_ms()));
                self.fail_over(true, promote).await.map(FaultOutcome::Applied)
            }
            Fault::DbSwitchover { .. } => self.switch_over().await.map(FaultOutcome::Applied),
            Fault::DbConnReset { .. } => {
                for l in &self.links {
                    l.db.reset_connections();
                    l.db.set_mode(TcpMode::Down);
                }
                applied(json!({"proxies": "reset, refusing"}))
            }
            Fault::DbLostAck { .. } => na(
                "losing a commit's acknowledgement needs a proxy that understands the PostgreSQL protocol",
            ),
            Fault::DbLatency { extra_ms, .. } => {
                for l in &self.links {
                    l.db.set_mode(TcpMode::Latency(Duration::from_millis(*extra_ms)));
                }
                applied(json!({}))
            }
            Fault::DbStaleSession { .. } => self.stale_session().await.map(FaultOutcome::Applied),
            Fault::RpcDown { endpoint, .. } => {
                for p in self.rpc_targets(endpoint) {
                    p.set_mode(HttpMode::Down);
                }
                applied(json!({}))
            }
            Fault::RpcError {
                code: Some(c), ..
            } if *c != 503 => na(
                "the fault proxy answers HTTP 503 only, not other statuses or JSON-RPC error codes",
            ),
            Fault::RpcError {
                endpoint, method, ..
            } => applied(self.fail_rpc_calls(endpoint, method.as_deref(), HttpMode::Status503)),
            Fault::RpcTimeout {
                endpoint, method, ..
            } => applied(self.fail_rpc_calls(endpoint, method.as_deref(), HttpMode::Blackhole)),
            Fault::RpcAmbiguousSend { endpoint, .. } => {
                for p in self.rpc_targets(endpoint) {
                    p.set_mode(HttpMode::AmbiguousSend);
                }
                applied(json!({}))
            }
            Fault::RpcLag { .. } => {
                na("a lagging endpoint needs a second node following the chain late")
            }
            Fault::RpcStaleFork { .. } => na(
                "a load balancer with a backend left on an old fork needs a second node that stops following the chain",
            ),
            Fault::Reorg {
                depth, drop_txs, ..
            } => self.reorg(*depth, *drop_txs).await.map(FaultOutcome::Applied),
            Fault::MempoolDrop { .. } => self.drop_signer_txs().await.map(FaultOutcome::Applied),
            Fault::GasSpike { base_fee_gwei, .. } => {
                let wei = U256::from(*base_fee_gwei) * U256::from(1_000_000_000u64);
                self.rpc
                    .call("anvil_setNextBlockBaseFeePerGas", json!([wei]))
                    .await?;
                applied(json!({}))
            }
            Fault::ExternalNonce { .. } => self.send_external().await.map(FaultOutcome::Applied),
            Fault::BalanceCap { cap, .. } => {
                let tokens = self.set_balance_caps(U256::from(*cap)).await?;
                if tokens.is_empty() {
                    return Ok(FaultOutcome::Skipped("no token deployed yet".into()));
                }
                applied(json!({"cap": cap, "tokens": tokens}))
            }
            Fault::SignerDrain { balance_gwei, .. } => {
                let left = u128::from(balance_gwei.unwrap_or(0)) * 1_000_000_000;
                self.rpc
                    .call("anvil_setBalance", json!([self.signer, format!("{left:#x}")]))
                    .await?;
                applied(json!({}))
            }
            Fault::RegionFailover {
                promote_after_s, ..
            } => self.fail_over_region(*promote_after_s, heal_ms).await.map(FaultOutcome::Applied),
            Fault::OperatorRequeue { .. } => self.requeue_dead_letters().await.map(FaultOutcome::Applied),
        }
    }

    /// Black-hole the proxies between engine `node` and the peers in `from` (both directions).
    fn partition(&self, node: &str, from: &[String]) -> Result<FaultOutcome> {
        let Some(i) = engine_index(node) else {
            return na("only an engine's links go through proxies on this backend");
        };
        let l = &self.links[i];
        let mut cut = Vec::new();
        for peer in from {
            if peer == "db" || peer.starts_with("db-") {
                l.db.set_mode(TcpMode::Blackhole);
                cut.push("db");
            } else if peer == "rpc" || peer.starts_with("rpc-") {
                for (k, p) in l.rpc.iter().enumerate() {
                    if peer == "rpc" || *peer == format!("rpc-{k}") {
                        p.set_mode(HttpMode::Blackhole);
                    }
                }
                cut.push("rpc");
            } else if peer == "clients" || peer.starts_with("client-") {
                l.api.set_mode(HttpMode::Blackhole);
                cut.push("clients");
            }
        }
        if cut.is_empty() {
            return na("engines do not talk to each other: nothing to cut");
        }
        applied(
            json!({"blackholed": cut, "direction": "both (a proxy cannot lose one direction only)"}),
        )
    }

    /// SIGKILL database server `node`; it restarts on the same data at the heal.
    async fn crash_db(&self, node: &str) -> Result<FaultOutcome> {
        let Some(j) = db_index(node) else {
            return na("unknown database node");
        };
        let mut dbs = self.dbs.lock().await;
        if j >= dbs.len() {
            return na("no such database node");
        }
        dbs[j].kill().await?;
        applied(json!({"signal": "SIGKILL"}))
    }

    /// A planned switchover: the primary made read-only in place, the replica promoted once
    /// caught up, the old primary rejoined as a replica.
    async fn switch_over(&self) -> Result<Value> {
        let old = *self.primary.lock().expect("primary");
        {
            let dbs = self.dbs.lock().await;
            self.sql(
                dbs[old].as_ref(),
                &[
                    "ALTER SYSTEM SET default_transaction_read_only = on",
                    "SELECT pg_reload_conf()::text",
                ],
            )
            .await?;
            // Let the replica catch up before it takes over (a planned switchover).
            let target = self
                .sql(dbs[old].as_ref(), &["SELECT pg_current_wal_lsn()::text"])
                .await?;
            if let (Some(Value::String(lsn)), Some(to)) =
                (target.first(), (0..dbs.len()).find(|j| *j != old))
            {
                let q = format!("SELECT (pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn)::text");
                for _ in 0..100 {
                    let v = self.sql(dbs[to].as_ref(), &[&q]).await?;
                    if v.first() == Some(&json!("true")) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let detail = self.fail_over(false, 0).await?;
        let rejoin = self.rejoin(old).await?;
        Ok(json!({"demoted_in_place": format!("db-{old}"), "failover": detail, "rejoin": rejoin}))
    }

    /// The RPC proxies of `endpoint` fail (only `method`, if given) in `mode`.
    fn fail_rpc_calls(&self, endpoint: &str, method: Option<&str>, mode: HttpMode) -> Value {
        for p in self.rpc_targets(endpoint) {
            p.set_scope(method);
            p.set_mode(mode);
        }
        json!({"method": method})
    }

    /// Drop every transaction of the signer from Anvil's mempool (pending and queued).
    async fn drop_signer_txs(&self) -> Result<Value> {
        let pool = self.rpc.call("txpool_content", json!([])).await?;
        let mut dropped = Vec::new();
        for part in ["pending", "queued"] {
            for (sender, txs) in pool[part].as_object().into_iter().flatten() {
                if sender.parse::<Address>().ok() != Some(self.signer) {
                    continue;
                }
                for tx in txs.as_object().into_iter().flat_map(|m| m.values()) {
                    self.rpc
                        .call("anvil_dropTransaction", json!([tx["hash"]]))
                        .await?;
                    dropped.push(tx["hash"].clone());
                }
            }
        }
        Ok(json!({"dropped": dropped}))
    }

    /// Use the signer's next nonce outside the engine: a transfer signed with its key and sent
    /// directly (its hash recorded as external).
    async fn send_external(&self) -> Result<Value> {
        let key = SignerKey::from_hex(SIGNER_KEY)?;
        let nonce = self.rpc.nonce(self.signer, "pending").await?;
        let fee = self.rpc.quantity("eth_gasPrice", json!([])).await? as u128;
        let (raw, hash) = key.sign(&UnsignedTx {
            chain_id: CHAIN_ID,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: fee * 2,
            max_priority_fee_per_gas: fee.min(1_000_000_000),
            to: Some(Address::repeat_byte(0x99)),
            value: U256::from(1u64),
            input: Bytes::new(),
        })?;
        self.external_txs.lock().expect("ext").push(hash);
        self.rpc
            .call("eth_sendRawTransaction", json!([raw]))
            .await?;
        Ok(json!({"nonce": nonce, "hash": hash}))
    }

    /// Every token's per-holder balance cap set to `cap` by `anvil_setStorageAt` (what the
    /// simulation does: a compliance agent's change that takes none of the signer's nonces).
    /// The tokens are the contracts with code at the signer's CREATE addresses (nonces below its
    /// mined count). Returns the tokens changed.
    async fn set_balance_caps(&self, cap: U256) -> Result<Vec<Address>> {
        let mined = self.rpc.nonce(self.signer, "latest").await?;
        let mut tokens = Vec::new();
        for n in 0..mined {
            let at = self.signer.create(n);
            let code = self.rpc.call("eth_getCode", json!([at, "latest"])).await?;
            if code.as_str().is_some_and(|c| c.len() > 2) {
                tokens.push(at);
            }
        }
        let slot = B256::from(dalp_sim::chain::MAX_BALANCE_SLOT);
        let value = B256::from(cap);
        for token in &tokens {
            self.rpc
                .call("anvil_setStorageAt", json!([token, slot, value]))
                .await?;
        }
        Ok(tokens)
    }

    /// Lose the active region: kill its engines and the primary, promote after
    /// `promote_after_s` (at the latest by the heal instant), start the standby engines.
    async fn fail_over_region(&self, promote_after_s: f64, heal_ms: u64) -> Result<Value> {
        {
            let mut engines = self.engines.lock().await;
            for (i, e) in engines.iter_mut().enumerate() {
                if !self.standby[i] {
                    e.kill9();
                }
            }
        }
        let promote = ms(promote_after_s).min(heal_ms.saturating_sub(self.t_ms()));
        let detail = self.fail_over(true, promote).await?;
        for i in (0..self.standby.len()).filter(|i| self.standby[*i]) {
            self.start_engine(i).await?;
        }
        Ok(json!({"failover": detail, "standby_started": true}))
    }

    /// An operator requeues every dead letter through a running engine's API.
    async fn requeue_dead_letters(&self) -> Result<Value> {
        let port = {
            let engines = self.engines.lock().await;
            engines
                .iter()
                .find(|e| e.running())
                .map(|e| e.port)
                .ok_or("no engine is running")?
        };
        let ids = operator_requeue(&self.http, port).await?;
        Ok(json!({"requeued": ids}))
    }

    /// Undo `fault` at its end (or at the heal instant).
    async fn heal_fault(&self, fault: &Fault) -> Result<Value> {
        match fault {
            Fault::EngineCrash { node, .. } => {
                if let Some(i) = engine_index(node) {
                    self.start_engine(i).await?;
                }
            }
            Fault::EnginePause { node, .. } => {
                let engines = self.engines.lock().await;
                for i in self.engine_targets(node) {
                    engines[i].signal_pause(false);
                }
            }
            Fault::Partition { node, .. } => {
                if let Some(i) = engine_index(node) {
                    let l = &self.links[i];
                    l.db.set_mode(TcpMode::Pass);
                    l.api.set_mode(HttpMode::Pass);
                    for p in &l.rpc {
                        p.set_mode(HttpMode::Pass);
                    }
                }
            }
            Fault::DbCrash { node, .. } => {
                if let Some(j) = db_index(node) {
                    let mut dbs = self.dbs.lock().await;
                    if j < dbs.len() {
                        dbs[j].start().await?;
                        // A restarted container may listen on another host port.
                        if j == *self.primary.lock().expect("primary") {
                            for l in &self.links {
                                l.db.set_upstream(dbs[j].addr());
                            }
                        }
                    }
                }
            }
            Fault::DbConnReset { .. } | Fault::DbLatency { .. } => {
                for l in &self.links {
                    l.db.set_mode(TcpMode::Pass);
                }
            }
            Fault::RpcDown { endpoint, .. }
            | Fault::RpcError { endpoint, .. }
            | Fault::RpcTimeout { endpoint, .. }
            | Fault::RpcAmbiguousSend { endpoint, .. } => {
                for p in self.rpc_targets(endpoint) {
                    p.set_mode(HttpMode::Pass);
                    p.set_scope(None);
                }
            }
            Fault::BalanceCap { .. } => {
                let lifted = self.set_balance_caps(U256::ZERO).await?;
                return Ok(json!({ "lifted": lifted }));
            }
            Fault::SignerDrain { .. } => {
                let eth = U256::from(10u64).pow(U256::from(18u64));
                self.rpc
                    .call(
                        "anvil_setBalance",
                        json!([self.signer, U256::from(10_000u64) * eth]),
                    )
                    .await?;
            }
            Fault::RegionFailover { .. } => {
                for i in (0..self.standby.len()).filter(|i| !self.standby[*i]) {
                    self.start_engine(i).await?;
                }
            }
            // The old primary comes back as a replica (at `rejoin_after_s` or the heal instant).
            Fault::DbFailover { .. } => {
                let old = self.failed_over.lock().expect("failed over").pop();
                if let Some(old) = old {
                    return self.rejoin(old).await;
                }
            }
            // Nothing to undo: no real counterpart (recorded as not applicable, never healed),
            // instantaneous, or ended by the server itself (a stale session).
            Fault::ClockSkew { .. }
            | Fault::DbLostAck { .. }
            | Fault::RpcLag { .. }
            | Fault::RpcStaleFork { .. }
            | Fault::DbStaleSession { .. }
            | Fault::Reorg { .. }
            | Fault::MempoolDrop { .. }
            | Fault::GasSpike { .. }
            | Fault::ExternalNonce { .. }
            | Fault::DbSwitchover { .. }
            | Fault::OperatorRequeue { .. } => {}
        }
        Ok(json!({}))
    }

    async fn reorg(&self, depth: u64, drop_txs: bool) -> Result<Value> {
        // No block may be mined between reading the head (and the transactions to re-include)
        // and the reorg, or `depth` would name other blocks: interval mining pauses meanwhile.
        self.rpc.call("evm_setIntervalMining", json!([0])).await?;
        let made = self.reorg_paused(depth, drop_txs).await;
        self.rpc
            .call("evm_setIntervalMining", json!([self.block_s]))
            .await?;
        made
    }

    async fn reorg_paused(&self, depth: u64, drop_txs: bool) -> Result<Value> {
        let head = self.rpc.head().await?;
        let depth = depth.min(head);
        let mut pairs = Vec::new();
        if !drop_txs {
            for (offset, n) in (head + 1 - depth..=head).enumerate() {
                let block = self
                    .rpc
                    .call("eth_getBlockByNumber", json!([format!("0x{n:x}"), false]))
                    .await?;
                for h in block["transactions"].as_array().into_iter().flatten() {
                    let raw = self
                        .rpc
                        .call("eth_getRawTransactionByHash", json!([h]))
                        .await?;
                    pairs.push(json!([raw, offset]));
                }
            }
        }
        let n = pairs.len();
        self.rpc.call("anvil_reorg", json!([depth, pairs])).await?;
        Ok(json!({"depth": depth, "reincluded": n}))
    }
}

#[async_trait]
impl FaultTarget for Fleet {
    fn t_ms(&self) -> u64 {
        Fleet::t_ms(self)
    }

    /// A fault that fails to apply is recorded with its error and still healed at its end.
    async fn apply(&self, _n: u64, fault: &Fault, heal_ms: u64) -> FaultOutcome {
        self.apply_fault(fault, heal_ms)
            .await
            .unwrap_or_else(|e| FaultOutcome::Applied(json!({"error": e.to_string()})))
    }

    async fn heal(&self, _n: u64, fault: &Fault) -> Value {
        self.heal_fault(fault)
            .await
            .unwrap_or_else(|e| json!({"error": e.to_string()}))
    }
}
