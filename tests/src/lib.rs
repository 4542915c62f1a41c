//! Provisioning for integration runs, the sample workload and the benchmark. The services come
//! from the real backend's one provisioning stack (`dalp_real`), so its port reservation,
//! cleanup registration and running PostgreSQL as an unprivileged user hold here too; what is
//! here is what only the tests need: their accounts and tokens, the engine settings they run
//! with, and the HTTP calls they make to one engine. Every service stops when its handle drops.

use dalp_real::engines;
use dalp_real::provision::{primary_settings, LocalAnvil, LocalPg};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod chain;

/// The one provisioning stack's helpers, under the names the tests have always used.
pub use dalp_real::engines::engine_binary;
pub use dalp_real::provision::{
    anvil_path, free_port, postgres_bin_dir, scratch_dir, workspace_root, Error, Result,
};

/// Anvil's first two default accounts: well-known test keys, never real funds.
pub const SIGNER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
pub const SIGNER_ADDR: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
pub const INVESTOR_ADDR: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
pub const OTHER_ADDR: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
pub const API_TOKEN: &str = "test-api-token-1";
pub const OPERATOR_TOKEN: &str = "test-operator-token-1";
/// The named operator `alice`'s token (the engines' config holds only its SHA-256).
pub const ALICE_TOKEN: &str = "test-alice-token-1";

/// A PostgreSQL server for one test or tool: the real backend's local primary (fsync on), with
/// a larger buffer pool for the benchmark.
pub struct Postgres {
    pub port: u16,
    server: LocalPg,
}

impl Postgres {
    pub async fn start() -> Result<Self> {
        let mut settings = primary_settings(false);
        settings.push("shared_buffers=128MB".into());
        let server = LocalPg::primary("pg", &settings).await?;
        Ok(Postgres {
            port: server.port(),
            server,
        })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Fast shutdown and start again: the server restarts from its WAL.
    pub async fn restart(&mut self) -> Result<()> {
        self.server.restart().await
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.server.bin(tool)
    }
}

/// An Anvil node on 127.0.0.1, chain id 31337: interval mining (so confirmations advance) or on
/// demand.
pub struct Anvil {
    node: LocalAnvil,
}

impl Anvil {
    pub async fn start(block_time_secs: u64) -> Result<Self> {
        Self::start_with(&["--block-time", &block_time_secs.to_string()]).await
    }

    /// An Anvil that mines only when told (`evm_mine` / `anvil_mine`): `--no-mining`.
    pub async fn start_manual() -> Result<Self> {
        Self::start_with(&["--no-mining"]).await
    }

    /// An Anvil with the given extra arguments.
    pub async fn start_with(extra: &[&str]) -> Result<Self> {
        let args: Vec<String> = ["--chain-id", "31337"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect();
        Ok(Anvil {
            node: LocalAnvil::start("anvil", &args).await?,
        })
    }

    pub fn url(&self) -> String {
        self.node.url()
    }
}

/// Settings of one engine process.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    pub node_id: String,
    pub database_url: String,
    pub rpc_endpoints: Vec<String>,
    /// The `rpc_endpoints` value as raw TOML (named `{ name, url }` tables); replaces the list
    /// above when set.
    pub rpc_endpoints_toml: Option<String>,
    pub lease_ms: u64,
    pub max_attempts: u32,
    pub indexer: bool,
}

impl EngineSpec {
    pub fn new(node_id: &str, database_url: &str, rpc: &str) -> Self {
        EngineSpec {
            node_id: node_id.into(),
            database_url: database_url.into(),
            rpc_endpoints: vec![rpc.into()],
            rpc_endpoints_toml: None,
            lease_ms: 4_000,
            max_attempts: 8,
            indexer: true,
        }
    }

    /// The engine's configuration file, listening on `listen`.
    pub fn toml(&self, listen: &str) -> String {
        let endpoints: Vec<String> = self
            .rpc_endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        format!(
            r#"node_id = "{node}"
database_url = "{db}"
chain_id = 31337
rpc_endpoints = {eps}
listen = "{listen}"
api_token = "{API_TOKEN}"
operator_token = "{OPERATOR_TOKEN}"

[[operators]]
name = "alice"
token_sha256 = "{alice}"

[signers]
default = "{SIGNER_KEY}"

[worker]
lease_ms = {lease}
poll_ms = 100
max_attempts = {attempts}
backoff_base_ms = 200
backoff_max_ms = 2000

[chain]
confirmations = 1
finality_depth = 2
receipt_poll_ms = 200
confirm_timeout_ms = 30000
stuck_after_ms = 10000
health_probe_ms = 1000

[indexer]
enabled = {indexer}
poll_ms = 300
"#,
            node = self.node_id,
            db = self.database_url,
            eps = self
                .rpc_endpoints_toml
                .clone()
                .unwrap_or_else(|| format!("[{}]", endpoints.join(", "))),
            lease = self.lease_ms,
            attempts = self.max_attempts,
            indexer = self.indexer,
            alice = alloy_primitives::hex::encode(
                dalp_engine::config::TokenHash::of(ALICE_TOKEN).as_bytes()
            ),
        )
    }
}

/// A `dalp-engine` process (the real backend's, so `kill -9`-able and cleaned up) with the
/// tests' calls to its HTTP API.
pub struct EngineProcess {
    pub spec: EngineSpec,
    pub port: u16,
    process: engines::EngineProcess,
    http: reqwest::Client,
}

impl EngineProcess {
    pub async fn start(spec: EngineSpec) -> Result<Self> {
        let port = free_port()?;
        let toml = spec.toml(&format!("127.0.0.1:{port}"));
        let mut process =
            engines::EngineProcess::named(&engine_binary()?, &spec.node_id, port, &toml)?;
        let http = reqwest::Client::new();
        process.start(&http).await?;
        Ok(EngineProcess {
            spec,
            port,
            process,
            http,
        })
    }

    pub fn url(&self, path: &str) -> String {
        self.process.url(path)
    }

    /// SIGKILL: no shutdown hook runs, exactly like a crashed host.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Start again with the same configuration (a new process re-running start-up).
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill9();
        self.process.start(&self.http).await
    }

    pub async fn submit(&self, kind: &str, key: &str, input: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(self.url(&format!("/v1/workflows/{kind}")))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", key)
            .json(input)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok((code, r.json().await?))
    }

    pub async fn status(&self, id: i64) -> Result<Value> {
        let r = self
            .http
            .get(self.url(&format!("/v1/workflows/id/{id}")))
            .bearer_auth(API_TOKEN)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("status {id}: HTTP {}", r.status()).into());
        }
        Ok(r.json().await?)
    }

    pub async fn get(&self, path: &str, token: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok((code, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok((code, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .text()
            .await?)
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// Poll `status` until the workflow is terminal or `bound` passes.
pub async fn wait_terminal(engine: &EngineProcess, id: i64, bound: Duration) -> Result<Value> {
    let start = Instant::now();
    loop {
        // A status call may fail while the engine restarts; keep polling within the bound.
        if let Ok(s) = engine.status(id).await {
            let status = s["status"].as_str().unwrap_or("");
            if matches!(status, "completed" | "failed" | "dead_letter" | "cancelled") {
                return Ok(s);
            }
            if start.elapsed() > bound {
                return Err(format!("workflow {id} not terminal after {bound:?}: {s}").into());
            }
        } else if start.elapsed() > bound {
            return Err(format!("workflow {id}: status unavailable after {bound:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The input of a small issuance.
pub fn issuance_input(symbol: &str, supply: u64) -> Value {
    json!({
        "name": format!("{symbol} Bond"), "symbol": symbol, "decimals": 18,
        "initial_supply": supply.to_string(), "max_balance": "0", "investor": INVESTOR_ADDR, "country": 56,
    })
}
