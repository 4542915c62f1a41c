//! Provisioning of the real components for integration runs, the sample workload and the
//! benchmark: PostgreSQL (run as an unprivileged user, since it refuses root), Anvil (from the
//! pinned npm package under `fixtures/`), and `dalp-engine` processes that can be `kill -9`ed.
//!
//! Every child process is killed when its handle drops, so a failing test leaves nothing behind.

use serde_json::{json, Value};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod chain;

/// Where PostgreSQL's server binaries and the pinned Anvil are: one definition, shared with the
/// real backend's provisioning.
pub use dalp_sim::real::provision::{anvil_path, postgres_bin_dir};

/// Anvil's first two default accounts: well-known test keys, never real funds.
pub const SIGNER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
pub const SIGNER_ADDR: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
pub const INVESTOR_ADDR: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
pub const OTHER_ADDR: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
pub const API_TOKEN: &str = "test-api-token-1";
pub const OPERATOR_TOKEN: &str = "test-operator-token-1";

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A fresh scratch directory under `target/dalp-it/`.
pub fn scratch_dir(what: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = workspace_root()
        .join("target/dalp-it")
        .join(format!("{what}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A port reserved for this process (shared with the real backend, so parallel tests and runs
/// never pick the same one).
pub fn free_port() -> u16 {
    dalp_sim::real::provision::free_port().expect("reserve a port")
}

fn wait_until(what: &str, bound: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not ready after {bound:?}").into())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged user PostgreSQL runs as when we are root: `nobody`.
const NOBODY: u32 = 65534;

fn chown_r(path: &Path, uid: u32) -> Result<()> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()?;
    if !status.success() {
        return Err(format!("chown {} failed", path.display()).into());
    }
    Ok(())
}

fn as_db_user(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

/// A PostgreSQL server in a scratch directory, fsync on, listening on 127.0.0.1.
pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl Postgres {
    pub fn start() -> Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = scratch_dir("pg");
        let data = dir.join("data");
        if is_root() {
            // nobody must be able to reach the scratch directory.
            let mut p = dir.clone();
            while let Some(parent) = p.parent() {
                let _ = Command::new("chmod").arg("o+x").arg(parent).status();
                p = parent.to_path_buf();
                if p == Path::new("/") {
                    break;
                }
            }
            chown_r(&dir, NOBODY)?;
        }
        let out = as_db_user(
            Command::new(bin.join("initdb"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
        )
        .stdout(Stdio::null())
        .output()?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin,
            child: None,
        };
        pg.spawn()?;
        Ok(pg)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        if is_root() {
            chown_r(&self.dir.join("postgres.log"), NOBODY)?;
        }
        let child = as_db_user(
            Command::new(self.bin.join("postgres"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-k",
                ])
                .arg(&self.dir)
                .args([
                    "-c",
                    "fsync=on",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=128MB",
                ]),
        )
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
        self.child = Some(child);
        let port = self.port;
        wait_until("postgres", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        // Accepting TCP precedes accepting queries during start-up: ask pg_isready too.
        let bin = self.bin.clone();
        wait_until("postgres queries", Duration::from_secs(30), || {
            Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Fast shutdown (SIGINT) and wait: the server restarts from its WAL.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            c.wait()?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGQUIT) };
            let _ = c.wait();
        }
    }
}

/// An Anvil node on 127.0.0.1: interval mining (so confirmations advance) or on demand.
pub struct Anvil {
    pub port: u16,
    child: Child,
}

impl Anvil {
    pub fn start(block_time_secs: u64) -> Result<Self> {
        Self::start_with(&["--block-time", &block_time_secs.to_string()])
    }

    /// An Anvil that mines only when told (`evm_mine` / `anvil_mine`): `--no-mining`.
    pub fn start_manual() -> Result<Self> {
        Self::start_with(&["--no-mining"])
    }

    /// An Anvil on 127.0.0.1, chain id 31337, with the given extra arguments.
    pub fn start_with(extra: &[&str]) -> Result<Self> {
        let dir = scratch_dir("anvil");
        let port = free_port();
        let log = fs::File::create(dir.join("anvil.log"))?;
        let child = Command::new(anvil_path()?)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--chain-id",
                "31337",
            ])
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let anvil = Anvil { port, child };
        let url = anvil.url();
        wait_until("anvil", Duration::from_secs(30), || {
            rpc_blocking(&url, "eth_chainId", json!([])).is_ok()
        })?;
        Ok(anvil)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking JSON-RPC call for set-up code (the tests' async checks use `chain::ChainView`).
pub fn rpc_blocking(url: &str, method: &str, params: Value) -> Result<Value> {
    // Its own thread and runtime, so it also works when called from async set-up code.
    let (url, method) = (url.to_string(), method.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async { chain::rpc(&url, &method, params).await })
    })
    .join()
    .map_err(|_| "rpc thread panicked")?
}

/// Settings of one engine process.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    pub node_id: String,
    pub database_url: String,
    pub rpc_endpoints: Vec<String>,
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
            lease_ms: 4_000,
            max_attempts: 8,
            indexer: true,
        }
    }

    fn toml(&self, listen: &str) -> String {
        let endpoints: Vec<String> = self
            .rpc_endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        format!(
            r#"node_id = "{node}"
database_url = "{db}"
chain_id = 31337
rpc_endpoints = [{eps}]
listen = "{listen}"
api_token = "{API_TOKEN}"
operator_token = "{OPERATOR_TOKEN}"

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
            eps = endpoints.join(", "),
            lease = self.lease_ms,
            attempts = self.max_attempts,
            indexer = self.indexer,
        )
    }
}

/// Locate (building if needed) the `dalp-engine` binary of this workspace's debug build.
pub fn engine_binary() -> Result<PathBuf> {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join("dalp-engine");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "dalp-engine", "--bin", "dalp-engine"])
        .current_dir(&root);
    if profile == "release" {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        return Err("building dalp-engine failed".into());
    }
    Ok(path)
}

/// A running `dalp-engine` process with its HTTP API.
pub struct EngineProcess {
    pub spec: EngineSpec,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl EngineProcess {
    pub async fn start(spec: EngineSpec) -> Result<Self> {
        let dir = scratch_dir(&format!("engine-{}", spec.node_id));
        let port = free_port();
        let config = dir.join("engine.toml");
        fs::write(&config, spec.toml(&format!("127.0.0.1:{port}")))?;
        let log = dir.join("engine.log");
        let mut p = EngineProcess {
            spec,
            port,
            log,
            child: None,
            http: reqwest::Client::new(),
        };
        p.spawn(&config)?;
        p.wait_healthy().await?;
        Ok(p)
    }

    fn spawn(&mut self, config: &Path) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(engine_binary()?)
            .arg("--config")
            .arg(config)
            .env("DALP_SIGNER_KEY", SIGNER_KEY)
            .env("DALP_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&self) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = self
                .http
                .get(self.url("/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "engine {} not healthy; log: {}",
            self.spec.node_id,
            fs::read_to_string(&self.log).unwrap_or_default()
        )
        .into())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL: no shutdown hook runs, exactly like a crashed host.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again with the same configuration (a new process re-running start-up).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        let config = self.log.with_file_name("engine.toml");
        self.spawn(&config)?;
        self.wait_healthy().await
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
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill9();
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
