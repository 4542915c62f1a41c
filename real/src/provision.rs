//! Where the real services come from. A [`Provider`] starts PostgreSQL servers (a primary, and
//! streaming replicas of it) and Anvil nodes; the runner reaches them at [`PgServer::addr`] /
//! [`AnvilNode::addr`] through its fault proxies and never cares how they run.
//!
//! Two providers: [`LocalProvider`] runs the host's binaries as child processes (PostgreSQL as the
//! unprivileged user `nobody` when we are root, since it refuses to run as root; Anvil from the
//! pinned npm package under `fixtures/`), and the Docker provider (`docker.rs`) runs the same
//! binaries in locally built images through testcontainers. Everything a provider starts is
//! registered with [`cleanup`], so it is removed when its handle drops, when the run fails, and
//! when the process is interrupted.

use super::cleanup::{self, Resource};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// A PostgreSQL server of the run (primary or replica). Superuser `postgres`, trust
/// authentication, `fsync` on.
#[async_trait::async_trait]
pub trait PgServer: Send + Sync {
    /// Where the harness and the proxies reach it.
    fn addr(&self) -> SocketAddr;
    /// Host and port where other servers of the same provider reach it (replication).
    fn peer(&self) -> (String, u16);
    /// Crash it (SIGKILL, `docker kill`): no shutdown, the data directory stays.
    async fn kill(&mut self) -> Result<()>;
    /// Start it again on its data directory (crash recovery from its WAL).
    async fn start(&mut self) -> Result<()>;
    fn name(&self) -> &str;
    /// The server's own log so far (empty when it cannot be read): evidence for a failed run.
    async fn server_log(&self) -> String;
}

/// An Anvil node of the run.
pub trait AnvilNode: Send + Sync {
    fn addr(&self) -> SocketAddr;
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// `local` or `docker`, for reports.
    fn name(&self) -> &'static str;
    /// A fresh, empty primary ready for queries. With `sync_standby`, a commit waits for one
    /// standby (`synchronous_standby_names = 'ANY 1 (*)'`).
    async fn postgres_primary(&self, name: &str, sync_standby: bool) -> Result<Box<dyn PgServer>>;
    /// A streaming replica of `primary` (`pg_basebackup -R`), started and streaming.
    async fn postgres_replica(
        &self,
        name: &str,
        primary: &dyn PgServer,
    ) -> Result<Box<dyn PgServer>>;
    /// An Anvil node with `args` (chain id, block time, …).
    async fn anvil(&self, name: &str, args: &[String]) -> Result<Box<dyn AnvilNode>>;
}

/// Settings every primary gets: replication on, enough connections for several engines.
pub fn primary_settings(sync_standby: bool) -> Vec<String> {
    let mut s: Vec<String> = [
        "fsync=on",
        "max_connections=200",
        "shared_buffers=64MB",
        "wal_level=replica",
        "max_wal_senders=10",
        "wal_keep_size=256MB",
        "hot_standby=on",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if sync_standby {
        s.push("synchronous_standby_names=ANY 1 (*)".into());
        s.push("synchronous_commit=on".into());
    }
    s
}

// ---- local processes ---------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sim/ has a parent")
        .to_path_buf()
}

/// Where scratch directories go: `target/dalp-real`, or `target/$DALP_REAL_SCRATCH` (one path
/// component), so that runs beside each other (the real suite beside the integration tests) can
/// each judge their own leftovers.
pub fn scratch_root() -> Result<PathBuf> {
    let name = std::env::var("DALP_REAL_SCRATCH").unwrap_or_else(|_| "dalp-real".into());
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(
            format!("DALP_REAL_SCRATCH={name:?}: must name one directory under target/").into(),
        );
    }
    Ok(workspace_root().join("target").join(name))
}

/// A fresh scratch directory under [`scratch_root`]: `<what>-<owner pid>-<n>`.
pub fn scratch_dir(what: &str) -> Result<PathBuf> {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = scratch_root()?.join(format!("{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Ports a run reserves for a listener it starts later (and restarts on the same port) come from
/// below Linux's ephemeral range (32768–60999): an ephemeral port that was free a moment ago may
/// by then be the local port of some outgoing connection, or a container's published port.
const RESERVED_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A port below the ephemeral range, reserved for this process until it exits.
///
/// Probing with a bind and letting go is not a reservation: a parallel run probing the same port
/// before our listener starts gets it too (seen: `listen on 127.0.0.1:27602: Address already in
/// use`). So every dalp process takes an exclusive `flock` on `$TMPDIR/dalp-ports/<port>` before
/// probing, and holds it for its lifetime (the kernel drops it when the process dies, even by
/// SIGKILL); a port is handed out only when the lock was won and the port binds. Ports are never
/// handed out twice within a process either. What is reserved here is free of every other run's
/// choice; other software binding fixed ports in 20000–31999 is outside what this can prevent.
pub fn free_port() -> Result<u16> {
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;
    static HELD: Mutex<BTreeMap<u16, File>> = Mutex::new(BTreeMap::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("dalp-ports");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let span = RESERVED_PORTS.end - RESERVED_PORTS.start;
    let base = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port =
            (RESERVED_PORTS.start + base.wrapping_add(n.wrapping_mul(104_729)) % span) as u16;
        if held.contains_key(&port) {
            continue;
        }
        let path = dir.join(port.to_string());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is shared with the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // another live dalp process holds it
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            held.insert(port, file);
            return Ok(port);
        }
        // Bound by someone else: dropping the file releases our lock.
    }
    Err(format!("no free port in {RESERVED_PORTS:?}").into())
}

pub async fn wait_until<F, Fut>(what: &str, bound: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < bound {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what} not ready after {bound:?}").into())
}

/// Wait until the Anvil node at `addr` answers JSON-RPC.
pub async fn wait_for_anvil(addr: SocketAddr) -> Result<()> {
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    wait_until("anvil", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(&url)
                .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged user PostgreSQL runs as when we are root: `nobody`.
const NOBODY: u32 = 65534;

fn as_db_user(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Make `dir` (and the path to it) usable by `nobody` when we are root.
fn hand_to_db_user(dir: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut p = dir.to_path_buf();
    while let Some(parent) = p.parent() {
        let _ = Command::new("chmod").arg("o+x").arg(parent).status();
        p = parent.to_path_buf();
        if p == Path::new("/") {
            break;
        }
    }
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{NOBODY}:{NOBODY}"))
            .arg(dir),
        "chown",
    )
}

pub fn postgres_bin_dir() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| {
            "PostgreSQL is not installed (no /usr/lib/postgresql); run `cargo xtask setup`"
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .ok_or_else(|| "no PostgreSQL server binaries under /usr/lib/postgresql".into())
}

/// Path of the anvil binary shipped by the pinned npm package (installed by `cargo xtask setup`).
pub fn anvil_path() -> Result<PathBuf> {
    let fixtures = workspace_root().join("fixtures");
    let rel = std::fs::read_to_string(fixtures.join("ANVIL_PATH.txt"))
        .map_err(|e| format!("fixtures/ANVIL_PATH.txt: {e}"))?;
    let path = fixtures.join(rel.trim());
    if !path.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&fixtures)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() || !path.exists() {
            return Err(format!(
                "anvil not found at {} and `npm ci` in fixtures/ failed",
                path.display()
            )
            .into());
        }
    }
    Ok(path)
}

/// The host's binaries as child processes.
pub struct LocalProvider;

/// A local PostgreSQL process on its own data directory.
pub struct LocalPg {
    name: String,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    guard: Option<cleanup::Guard>,
}

impl LocalPg {
    /// A fresh primary in its own scratch directory with `settings` (`key=value`, e.g.
    /// [`primary_settings`]), started and ready for queries; replicas may stream from it.
    pub async fn primary(name: &str, settings: &[String]) -> Result<LocalPg> {
        let mut pg = Self::create(
            name,
            "initdb",
            &["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        )?;
        pg.settings_file(settings)?;
        // Replication connections from the host.
        let hba = pg.data().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba)?;
        text.push_str("host replication all 127.0.0.1/32 trust\n");
        std::fs::write(&hba, text)?;
        pg.spawn().await?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `postgres` database, as superuser `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A tool of the same PostgreSQL installation (`pgbench`, `psql`, …).
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }

    /// Fast shutdown (SIGINT: sessions are ended, a checkpoint is written) and start again: a
    /// clean restart, where [`PgServer::kill`] is a crash.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            let stopped = wait_until(
                &format!("postgres {} shutdown", self.name),
                Duration::from_secs(60),
                || {
                    let exited = !matches!(c.try_wait(), Ok(None));
                    async move { exited }
                },
            )
            .await;
            let _ = c.kill();
            let _ = c.wait();
            self.guard = None;
            stopped?;
        }
        self.spawn().await
    }

    /// A server whose data directory `tool` (`initdb`, `pg_basebackup`) fills, run as the
    /// database user; not started.
    fn create(name: &str, tool: &str, args: &[&str]) -> Result<LocalPg> {
        let bin = postgres_bin_dir()?;
        let dir = scratch_dir(name)?;
        hand_to_db_user(&dir)?;
        run_ok(
            as_db_user(
                Command::new(bin.join(tool))
                    .args(args)
                    .arg("-D")
                    .arg(dir.join("data")),
            ),
            tool,
        )?;
        Ok(LocalPg {
            name: name.into(),
            port: free_port()?,
            dir,
            bin,
            child: None,
            guard: None,
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        let child = as_db_user(
            Command::new(self.bin.join("postgres"))
                .arg("-D")
                .arg(self.data())
                .args(["-p", &self.port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1", "-k"])
                .arg(&self.dir),
        )
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start postgres {}: {e}", self.name))?;
        self.guard = Some(cleanup::register(Resource::Process(child.id())));
        self.child = Some(child);
        let (bin, port) = (self.bin.clone(), self.port);
        wait_until(
            &format!("postgres {}", self.name),
            Duration::from_secs(60),
            || {
                let ready = Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                async move { ready }
            },
        )
        .await
        .map_err(|e| {
            format!(
                "{e}; log: {}",
                std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
            )
            .into()
        })
    }

    fn settings_file(&self, settings: &[String]) -> Result<()> {
        let conf = self.data().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        for s in settings {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| format!("setting {s:?} is not key=value"))?;
            text.push_str(&format!("{k} = '{v}'\n"));
        }
        std::fs::write(&conf, text)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl PgServer for LocalPg {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    fn peer(&self) -> (String, u16) {
        ("127.0.0.1".into(), self.port)
    }
    async fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.guard = None;
        Ok(())
    }
    async fn start(&mut self) -> Result<()> {
        self.kill().await?;
        // A killed postmaster leaves its pid file; PostgreSQL removes a stale one itself.
        self.spawn().await
    }
    fn name(&self) -> &str {
        &self.name
    }
    async fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The data directory is ~300 MB: kept for a person to read only when its owner is
        // dropped by a panic (a failing test); the server's log stays beside it either way.
        // The rest waits for the sweep of finished runs' scratch directories.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.data());
        }
    }
}

/// A local Anvil process.
pub struct LocalAnvil {
    port: u16,
    child: Child,
    _guard: cleanup::Guard,
}

impl LocalAnvil {
    /// An Anvil on 127.0.0.1 with `args` (chain id, block time, …), answering JSON-RPC.
    pub async fn start(name: &str, args: &[String]) -> Result<LocalAnvil> {
        let dir = scratch_dir(name)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("anvil.log"))?;
        let child = Command::new(anvil_path()?)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start anvil: {e}"))?;
        let guard = cleanup::register(Resource::Process(child.id()));
        let node = LocalAnvil {
            port,
            child,
            _guard: guard,
        };
        wait_for_anvil(node.addr()).await?;
        Ok(node)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl AnvilNode for LocalAnvil {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for LocalAnvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn postgres_primary(&self, name: &str, sync_standby: bool) -> Result<Box<dyn PgServer>> {
        Ok(Box::new(
            LocalPg::primary(name, &primary_settings(sync_standby)).await?,
        ))
    }

    async fn postgres_replica(
        &self,
        name: &str,
        primary: &dyn PgServer,
    ) -> Result<Box<dyn PgServer>> {
        let (host, port) = primary.peer();
        let port_arg = port.to_string();
        let mut pg = LocalPg::create(
            name,
            "pg_basebackup",
            &[
                "-h",
                &host,
                "-p",
                &port_arg,
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--no-sync",
            ],
        )?;
        // The replica names itself, so the primary's `ANY 1 (*)` counts it; the primary's
        // synchronous setting (copied by the base backup) would make it, once promoted, wait for
        // a standby it does not have.
        pg.settings_file(&[
            format!(
                "primary_conninfo=host={host} port={port} user=postgres application_name={name}"
            ),
            "synchronous_standby_names=".into(),
        ])?;
        pg.spawn().await?;
        Ok(Box::new(pg))
    }

    async fn anvil(&self, name: &str, args: &[String]) -> Result<Box<dyn AnvilNode>> {
        Ok(Box::new(LocalAnvil::start(name, args).await?))
    }
}
