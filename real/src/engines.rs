//! `dalp-engine` processes of a real run and the clients' HTTP view of them.
//!
//! Each engine is the real binary with a TOML file from `engine_conf` (the simulation's engines
//! get the same settings). Crash = SIGKILL (no shutdown hook runs), pause = SIGSTOP/SIGCONT,
//! restart = a new process re-running start-up on the same configuration.

use super::cleanup::{self, Resource};
use super::provision::{free_port, scratch_dir, workspace_root, Result};
use dalp_sim::client::{Answer, CallFailure, EngineApi};
use dalp_sim::engine_conf::{API_TOKEN, OPERATOR_TOKEN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `dalp-engine` binary of this workspace's debug build, built if missing or stale.
pub fn engine_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DALP_ENGINE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "dalp-engine", "--bin", "dalp-engine"])
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| format!("cargo build dalp-engine: {e}"))?;
    if !status.success() {
        return Err("building dalp-engine failed".into());
    }
    Ok(target.join("debug/dalp-engine"))
}

/// One engine host: its configuration, its current process (if running) and its API port.
pub struct EngineProcess {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    child: Option<(Child, cleanup::Guard)>,
    pub starts: u32,
}

impl EngineProcess {
    /// Prepare `engine-<i>` with `toml` (its `listen` must be `127.0.0.1:<port>`); not started.
    pub fn new(bin: &Path, index: usize, port: u16, toml: &str) -> Result<Self> {
        Self::named(bin, &format!("engine-{index}"), port, toml)
    }

    /// Prepare an engine called `name` (its scratch directory's name) with `toml`; not started.
    pub fn named(bin: &Path, name: &str, port: u16, toml: &str) -> Result<Self> {
        let dir = scratch_dir(name)?;
        std::fs::write(dir.join("engine.toml"), toml)?;
        Ok(EngineProcess {
            name: name.to_string(),
            port,
            dir,
            bin: bin.to_path_buf(),
            child: None,
            starts: 0,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Start the process and wait until its API answers `/health`.
    pub async fn start(&mut self, http: &reqwest::Client) -> Result<()> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("engine.log"))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.dir.join("engine.toml"))
            .env("DALP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        let guard = cleanup::register(Resource::Process(child.id()));
        self.child = Some((child, guard));
        self.starts += 1;
        let url = self.url("/health");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let healthy = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(());
            }
            // A process that exited will never answer: say why at once.
            if let Some((c, _)) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "{} exited at start-up ({status}); log: {}",
                        self.name,
                        self.log_tail()
                    )
                    .into());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{} not ready after 60 s; log: {}",
            self.name,
            self.log_tail()
        )
        .into())
    }

    /// SIGKILL: no shutdown hook runs, exactly like a crashed host.
    pub fn kill9(&mut self) {
        if let Some((mut c, _guard)) = self.child.take() {
            // A paused process dies from SIGKILL too.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`pause = true`) or SIGCONT: a frozen host keeps its connections and state.
    pub fn signal_pause(&self, pause: bool) {
        if let Some((c, _)) = &self.child {
            let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("engine.log")).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The last `n` warnings, errors and panics of an engine log (colour codes removed): what a
/// failed real run reports, since its scratch directory is not kept with the results.
pub fn log_excerpt(text: &str, n: usize) -> Vec<String> {
    let plain = strip_ansi(text);
    let notable: Vec<&str> = plain
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .collect();
    notable[notable.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// The last `n` lines of a PostgreSQL server log that say something went wrong or changed role:
/// warnings and errors (a cancelled wait for a synchronous standby is a WARNING), and the
/// server's own lifecycle lines (promotion, recovery, shutdown).
pub fn pg_log_excerpt(text: &str, n: usize) -> Vec<String> {
    const NOTABLE: [&str; 9] = [
        "WARNING:",
        "ERROR:",
        "FATAL:",
        "PANIC:",
        "promot",
        "recovery",
        "shut",
        "timeline",
        "synchronous",
    ];
    let notable: Vec<&str> = text
        .lines()
        .filter(|l| NOTABLE.iter().any(|k| l.contains(k)))
        .collect();
    notable[notable.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The clients' [`EngineApi`] over HTTP, against the engines' API ports.
pub struct HttpApi {
    pub http: reqwest::Client,
    pub ports: Vec<u16>,
    pub timeout: Duration,
    pub start: Instant,
}

impl HttpApi {
    fn url(&self, engine: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[engine])
    }
}

fn failure(e: reqwest::Error) -> CallFailure {
    if e.is_timeout() {
        CallFailure::Timeout
    } else {
        CallFailure::Io(e.to_string())
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match status {
        200 | 202 if body.get("idempotency_key").is_some() => Answer::Status {
            key: text("idempotency_key"),
            status: text("status"),
            result: body.get("result").cloned().filter(|v| !v.is_null()),
            error: body.get("error").cloned().filter(|v| !v.is_null()),
        },
        200 | 202 => match body.get("workflow_id").and_then(Value::as_i64) {
            Some(id) => Answer::Accepted {
                workflow_id: id,
                status: text("status"),
                created: body
                    .get("created")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            None => Answer::Other(format!("HTTP {status}: {body}")),
        },
        404 => Answer::NotFound,
        _ => Answer::Rejected {
            status,
            error: body.to_string(),
        },
    }
}

#[async_trait::async_trait]
impl EngineApi for HttpApi {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn submit(
        &self,
        engine: usize,
        kind: &str,
        key: &str,
        input: &Value,
    ) -> std::result::Result<Answer, CallFailure> {
        let r = self
            .http
            .post(self.url(engine, &format!("/v1/workflows/{kind}")))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", key)
            .json(input)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(failure)?;
        Ok(answer(r).await)
    }

    async fn status(&self, engine: usize, id: i64) -> std::result::Result<Answer, CallFailure> {
        let r = self
            .http
            .get(self.url(engine, &format!("/v1/workflows/id/{id}")))
            .bearer_auth(API_TOKEN)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(failure)?;
        Ok(answer(r).await)
    }
}

/// An operator's dead-letter listing and requeue of every entry, through engine `port`'s API.
/// Returns the requeued workflow ids.
pub async fn operator_requeue(http: &reqwest::Client, port: u16) -> Result<Vec<i64>> {
    let base = format!("http://127.0.0.1:{port}");
    let list: Value = http
        .get(format!("{base}/v1/dead-letters"))
        .bearer_auth(OPERATOR_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<i64> = list
        .as_array()
        .or_else(|| list.get("dead_letters").and_then(Value::as_array))
        .map(|a| {
            a.iter()
                .filter_map(|d| d.get("workflow_id").and_then(Value::as_i64))
                .collect()
        })
        .unwrap_or_default();
    for id in &ids {
        http.post(format!("{base}/v1/dead-letters/{id}/requeue"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(
                &serde_json::json!({"operator": "operator", "reason": "cause removed (scenario)"}),
            )
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
    }
    Ok(ids)
}

/// A port for each of `n` engines.
pub fn engine_ports(n: usize) -> Result<Vec<u16>> {
    (0..n).map(|_| free_port()).collect()
}

/// Shared, mutable set of engines (the injector and the runner both reach them).
pub type Engines = Arc<Mutex<Vec<EngineProcess>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_log_excerpt_keeps_warnings_errors_and_role_changes() {
        let log = "2026-12-02 07:07:20.1 UTC [41] LOG:  checkpoint starting: time\n\
                   2026-12-02 07:07:20.5 UTC [77] WARNING:  canceling wait for synchronous replication due to user request\n\
                   2026-12-02 07:07:20.6 UTC [12] LOG:  received promote request\n\
                   2026-12-02 07:07:20.7 UTC [12] LOG:  selected new timeline ID: 2\n\
                   2026-12-02 07:07:21.0 UTC [80] ERROR:  cannot execute INSERT in a read-only transaction\n\
                   2026-12-02 07:07:22.0 UTC [81] LOG:  connection received: host=127.0.0.1\n";
        let all = pg_log_excerpt(log, 10);
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(all[0].contains("canceling wait for synchronous replication"));
        assert!(all[3].contains("read-only transaction"));
        assert_eq!(pg_log_excerpt(log, 1), vec![all[3].clone()]);
    }

    #[test]
    fn a_log_excerpt_keeps_the_last_warnings_without_colour() {
        let log = "\u{1b}[2m2026-12-01T09:49:40Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m started\n\
                   t1 \u{1b}[33m WARN\u{1b}[0m first\n\
                   t2 \u{1b}[31mERROR\u{1b}[0m second\n\
                   thread 'tokio-runtime-worker' panicked at src/indexer.rs:1:1\n\
                   t3  WARN third\n";
        assert_eq!(
            log_excerpt(log, 2),
            vec![
                "thread 'tokio-runtime-worker' panicked at src/indexer.rs:1:1".to_string(),
                "t3  WARN third".to_string()
            ]
        );
        assert_eq!(log_excerpt(log, 10).len(), 4);
        assert!(log_excerpt(log, 10)[0].ends_with("WARN first"));
    }
}
