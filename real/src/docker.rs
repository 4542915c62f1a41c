//! The services as containers: [`DockerProvider`] runs PostgreSQL (a primary and streaming
//! replicas) and Anvil in images built locally from this machine's own binaries
//! (`cargo xtask images`, recipe in `fixtures/images/`), through testcontainers' async API. No
//! registry is involved: testcontainers pulls only when an image is missing, and a missing image
//! is reported before anything starts ("run `cargo xtask images`").
//!
//! - Image names are configuration: `DALP_PG_IMAGE` (default `dalp/postgres:15-local`) and
//!   `DALP_ANVIL_IMAGE` (default `dalp/anvil:local`).
//! - Every container of a provider joins one user-defined network, `dalp-<run>`, created by
//!   testcontainers with the first container and removed with the last one; a replica reaches its
//!   primary by container name ([`PgServer::peer`]). The host reaches a container at the port
//!   Docker maps to 127.0.0.1 ([`PgServer::addr`]); nothing is published on other interfaces.
//! - Every container carries the label `dalp.run=<run>`, is registered with [`cleanup`] and is
//!   removed when its handle drops (testcontainers removes it; its drop needs a Tokio runtime, and
//!   without one the handle removes it with the docker CLI).
//! - [`PgServer::kill`] is `docker kill` (SIGKILL to PostgreSQL, which is PID 1: a crash) and
//!   [`PgServer::start`] is `docker start` on the same container, so PostgreSQL recovers from its
//!   WAL on the same data directory. Docker maps a new host port on every start, and
//!   testcontainers' `start()` does not wait for readiness again, so `start` re-reads the port and
//!   waits until PostgreSQL answers SQL from the host itself.
//!
//! The images' entrypoints (`fixtures/images/*/entrypoint.sh`) do the PostgreSQL-specific work:
//! `initdb` or `pg_basebackup -R` on the first start only, then PostgreSQL in the foreground with
//! the settings of `PG_SETTINGS` (one `name=value` a line).

use super::cleanup::{self, Resource};
use super::provision::{
    primary_settings, wait_until, workspace_root, AnvilNode, PgServer, Provider,
};
use super::provision::{Error, Result};
use sqlx::Connection;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::logs::LogFrame;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// Label on every container of a run (value: the run id), for `docker ps --filter`.
pub const RUN_LABEL: &str = "dalp.run";
/// Default image names; `DALP_PG_IMAGE` / `DALP_ANVIL_IMAGE` override them.
pub const DEFAULT_PG_IMAGE: &str = "dalp/postgres:15-local";
pub const DEFAULT_ANVIL_IMAGE: &str = "dalp/anvil:local";

const PG_PORT: u16 = 5432;
const ANVIL_PORT: u16 = 8545;
/// First start of a container (a replica's includes its base backup).
const STARTUP: Duration = Duration::from_secs(120);
/// PostgreSQL answering again after `start`.
const RESTART: Duration = Duration::from_secs(60);

/// The PostgreSQL image of this machine's configuration.
pub fn pg_image() -> String {
    std::env::var("DALP_PG_IMAGE").unwrap_or_else(|_| DEFAULT_PG_IMAGE.into())
}

/// The Anvil image of this machine's configuration.
pub fn anvil_image() -> String {
    std::env::var("DALP_ANVIL_IMAGE").unwrap_or_else(|_| DEFAULT_ANVIL_IMAGE.into())
}

/// Whether a Docker daemon answers (a ping through testcontainers' client, within 5 s).
pub async fn docker_available() -> bool {
    let Ok(docker) = testcontainers::core::client::docker_client_instance().await else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), docker.ping()).await,
        Ok(Ok(_))
    )
}

/// Set (by `dalp-real`'s `prepare`, for its children) once [`ensure_images`] succeeded in this
/// process tree: a child then only checks that the images exist.
pub const IMAGES_READY: &str = "DALP_IMAGES_READY";

/// Build the images if they are missing or out of date: runs `fixtures/images/build.sh`, the
/// same recipe as `cargo xtask images` (a few seconds when nothing changed). Blocking.
pub fn ensure_images() -> Result<()> {
    let script = workspace_root().join("fixtures/images/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let said = String::from_utf8_lossy(&out.stdout);
    for line in said.lines() {
        eprintln!("{line}");
    }
    if !out.status.success() {
        return Err(format!(
            "building the Docker images failed ({}): {}{}",
            out.status,
            said,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Both images exist locally; the error names the missing one and the command that builds it.
pub async fn check_images() -> Result<()> {
    let docker = testcontainers::core::client::docker_client_instance().await?;
    for image in [pg_image(), anvil_image()] {
        match tokio::time::timeout(Duration::from_secs(10), docker.inspect_image(&image)).await {
            Err(_) => {
                return Err(format!("inspecting Docker image {image} timed out after 10 s").into())
            }
            Ok(Err(_)) => {
                return Err(format!(
                    "Docker image {image} is missing: run `cargo xtask images` (builds it offline \
                     from this machine's PostgreSQL and Anvil)"
                )
                .into())
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

/// `name:tag` → (name, tag); a registry port is not a tag.
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.into(), tag.into()),
        _ => (image.into(), "latest".into()),
    }
}

/// A container name from a service name: Docker allows `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn new_run_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{:x}{}",
        std::process::id(),
        nanos & 0xfffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The last lines a container printed, kept from its creation on, for error messages (a
/// container that fails to start is removed before anyone could read its logs).
#[derive(Clone, Default)]
struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    const LINES: usize = 40;

    fn push(&self, bytes: &[u8]) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for line in String::from_utf8_lossy(bytes).lines() {
            if q.len() == Self::LINES {
                q.pop_front();
            }
            q.push_back(line.to_string());
        }
    }

    fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Containers through testcontainers, on a network of their own.
pub struct DockerProvider {
    run: String,
    network: String,
    pg_image: String,
    anvil_image: String,
    /// The network, for [`cleanup::kill_all`] (after the containers) if the run is interrupted.
    _network_guard: cleanup::Guard,
}

impl DockerProvider {
    /// A provider for one run. Fails when no daemon answers or an image is missing.
    pub async fn new() -> Result<Self> {
        if !docker_available().await {
            return Err("no Docker daemon reachable: start dockerd".into());
        }
        check_images().await?;
        let run = new_run_id();
        let network = format!("dalp-{run}");
        let guard = cleanup::register(Resource::Network(network.clone()));
        Ok(DockerProvider {
            network,
            run,
            pg_image: pg_image(),
            anvil_image: anvil_image(),
            _network_guard: guard,
        })
    }

    /// The value of [`RUN_LABEL`] on this provider's containers.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// The Docker network the containers share (exists while one of them does).
    pub fn network(&self) -> &str {
        &self.network
    }

    fn container_name(&self, name: &str) -> String {
        format!("dalp-{}-{}", self.run, sanitize(name))
    }

    /// Start a container of `image`: on the run's network, labelled, `port` published on
    /// 127.0.0.1 only (a random host port), ready when `ready` appears in its output.
    async fn run_container(
        &self,
        image: &str,
        name: &str,
        port: u16,
        ready: &str,
        env: &[(&str, String)],
        args: &[String],
    ) -> Result<Started> {
        let (repo, tag) = split_image(image);
        let container_name = self.container_name(name);
        let tail = LogTail::default();
        let sink = tail.clone();
        let mut req = GenericImage::new(repo, tag)
            .with_exposed_port(port.tcp())
            .with_wait_for(WaitFor::message_on_either_std(ready))
            .with_container_name(&container_name)
            .with_network(&self.network)
            .with_label(RUN_LABEL, &self.run)
            .with_label("dalp.service", name)
            .with_startup_timeout(STARTUP)
            .with_log_consumer(move |frame: &LogFrame| match frame {
                LogFrame::StdOut(b) | LogFrame::StdErr(b) => sink.push(b),
            })
            .with_host_config_modifier(move |hc: &mut HostConfig| {
                // Only on the loopback interface (trust authentication), a random port.
                hc.publish_all_ports = Some(false);
                hc.port_bindings = Some(HashMap::from([(
                    format!("{port}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )]));
            });
        for (k, v) in env {
            req = req.with_env_var(*k, v.clone());
        }
        if !args.is_empty() {
            req = req.with_cmd(args.iter().cloned());
        }
        let container = req.start().await.map_err(|e| {
            format!(
                "starting container {container_name} ({image}): {e}; its output:\n{}",
                tail.text()
            )
        })?;
        let guard = cleanup::register(Resource::Container(container.id().to_string()));
        let handle = Handle {
            container: Some(container),
            network: self.network.clone(),
            _guard: guard,
        };
        let host_port = handle.host_port(port).await?;
        Ok(Started {
            handle,
            container_name,
            host_port,
        })
    }

    async fn postgres(
        &self,
        name: &str,
        env: Vec<(&str, String)>,
        settings: Vec<String>,
    ) -> Result<DockerPg> {
        let mut env = env;
        env.push(("NAME", sanitize(name)));
        env.push(("PG_SETTINGS", settings.join("\n")));
        let s = self
            .run_container(
                &self.pg_image,
                name,
                PG_PORT,
                "database system is ready to accept",
                &env,
                &[],
            )
            .await?;
        let pg = DockerPg {
            name: name.into(),
            container_name: s.container_name,
            port: s.host_port,
            handle: s.handle,
        };
        pg.wait_ready(STARTUP).await?;
        Ok(pg)
    }
}

struct Started {
    handle: Handle,
    container_name: String,
    host_port: u16,
}

/// A running container of the run: removed when dropped.
struct Handle {
    container: Option<ContainerAsync<GenericImage>>,
    network: String,
    _guard: cleanup::Guard,
}

impl Handle {
    fn container(&self) -> Result<&ContainerAsync<GenericImage>> {
        self.container
            .as_ref()
            .ok_or_else(|| Error::from("container already removed"))
    }

    /// The host port Docker maps to `port` now (it changes on every start).
    async fn host_port(&self, port: u16) -> Result<u16> {
        let c = self.container()?;
        Ok(c.get_host_port_ipv4(port.tcp())
            .await
            .map_err(|e| format!("host port of container {}: {e}", c.id()))?)
    }

    async fn running(&self) -> Result<bool> {
        Ok(self.container()?.is_running().await?)
    }

    /// The container's output so far (stdout and stderr), last lines.
    async fn logs(&self) -> String {
        let text = self.all_logs().await;
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The container's whole output so far (stdout, then stderr).
    async fn all_logs(&self) -> String {
        let Ok(c) = self.container() else {
            return String::new();
        };
        let mut all = c.stdout_to_vec().await.unwrap_or_default();
        all.extend(c.stderr_to_vec().await.unwrap_or_default());
        String::from_utf8_lossy(&all).to_string()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let Some(container) = self.container.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // testcontainers removes it (and the network with the last container).
            drop(container);
        } else {
            // testcontainers' drop needs a runtime: remove it here, and the network if it was
            // the last one on it.
            for args in [
                vec!["rm", "-f", "-v", container.id()],
                vec!["network", "rm", &self.network],
            ] {
                let _ = Command::new("docker")
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            std::mem::forget(container);
        }
    }
}

/// PostgreSQL in a container of the run.
pub struct DockerPg {
    name: String,
    container_name: String,
    port: u16,
    handle: Handle,
}

impl DockerPg {
    /// The container's name (also its host name on the run's network).
    pub fn container_name(&self) -> &str {
        &self.container_name
    }

    async fn connect(&self) -> Result<sqlx::PgConnection> {
        let opts = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database("postgres");
        match tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::PgConnection::connect_with(&opts),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err("connect timed out".into()),
        }
    }

    /// Until PostgreSQL answers `SELECT 1` from the host on the current port; fails early, with
    /// the container's output, when the container stops.
    async fn wait_ready(&self, bound: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < bound {
            match self.connect().await {
                Ok(mut c) => {
                    let ok = sqlx::query("SELECT 1").execute(&mut c).await.is_ok();
                    let _ = c.close().await;
                    if ok {
                        return Ok(());
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if !self.handle.running().await.unwrap_or(false) {
                return Err(format!(
                    "postgres {} ({}) stopped while starting; its output:\n{}",
                    self.name,
                    self.container_name,
                    self.handle.logs().await
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "postgres {} ({}) not answering on 127.0.0.1:{} after {bound:?} ({last}); its output:\n{}",
            self.name,
            self.container_name,
            self.port,
            self.handle.logs().await
        )
        .into())
    }

    /// Until the replica's WAL receiver streams from its primary.
    async fn wait_streaming(&self, bound: Duration) -> Result<()> {
        let this = self;
        let result = wait_until(
            &format!("replica {} streaming", self.name),
            bound,
            move || async move {
                let Ok(mut c) = this.connect().await else {
                    return false;
                };
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM pg_stat_wal_receiver")
                        .fetch_optional(&mut c)
                        .await
                        .ok()
                        .flatten();
                let _ = c.close().await;
                status.as_deref() == Some("streaming")
            },
        )
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("{e}; its output:\n{}", self.handle.logs().await).into()),
        }
    }
}

#[async_trait::async_trait]
impl PgServer for DockerPg {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn peer(&self) -> (String, u16) {
        (self.container_name.clone(), PG_PORT)
    }

    async fn kill(&mut self) -> Result<()> {
        let id = self.handle.container()?.id().to_string();
        let docker = testcontainers::core::client::docker_client_instance().await?;
        if let Err(e) = docker.kill_container(&id, None).await {
            // Killing a stopped container is a no-op, as for a dead process.
            if self.handle.running().await? {
                return Err(format!("docker kill {}: {e}", self.container_name).into());
            }
        }
        let handle = &self.handle;
        wait_until(
            &format!("container {} stopped", self.container_name),
            Duration::from_secs(30),
            move || async move { !handle.running().await.unwrap_or(true) },
        )
        .await
    }

    async fn server_log(&self) -> String {
        self.handle.all_logs().await
    }

    async fn start(&mut self) -> Result<()> {
        // As for a local process: starting a running server restarts it (a crash first).
        self.kill().await?;
        self.handle
            .container()?
            .start()
            .await
            .map_err(|e| format!("docker start {}: {e}", self.container_name))?;
        self.port = self.handle.host_port(PG_PORT).await?;
        self.wait_ready(RESTART).await
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Anvil in a container of the run.
pub struct DockerAnvil {
    port: u16,
    _handle: Handle,
}

impl AnvilNode for DockerAnvil {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

#[async_trait::async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn postgres_primary(&self, name: &str, sync_standby: bool) -> Result<Box<dyn PgServer>> {
        let pg = self
            .postgres(
                name,
                vec![("ROLE", "primary".into())],
                primary_settings(sync_standby),
            )
            .await?;
        Ok(Box::new(pg))
    }

    /// `primary` must come from this provider (the replica reaches it by container name). The
    /// replica gets the primary's settings without a synchronous standby: promoted, it has none.
    async fn postgres_replica(
        &self,
        name: &str,
        primary: &dyn PgServer,
    ) -> Result<Box<dyn PgServer>> {
        let (host, port) = primary.peer();
        let pg = self
            .postgres(
                name,
                vec![
                    ("ROLE", "replica".into()),
                    ("PRIMARY_HOST", host),
                    ("PRIMARY_PORT", port.to_string()),
                ],
                primary_settings(false),
            )
            .await?;
        pg.wait_streaming(STARTUP).await?;
        Ok(Box::new(pg))
    }

    async fn anvil(&self, name: &str, args: &[String]) -> Result<Box<dyn AnvilNode>> {
        let s = self
            .run_container(
                &self.anvil_image,
                name,
                ANVIL_PORT,
                "Listening on",
                &[],
                args,
            )
            .await?;
        let node = DockerAnvil {
            port: s.host_port,
            _handle: s.handle,
        };
        super::provision::wait_for_anvil(node.addr()).await?;
        Ok(Box::new(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(
            split_image("dalp/postgres:15-local"),
            ("dalp/postgres".into(), "15-local".into())
        );
        assert_eq!(
            split_image("localhost:5000/anvil"),
            ("localhost:5000/anvil".into(), "latest".into())
        );
        assert_eq!(sanitize("db 0/x"), "db-0-x");
    }

    fn docker_cli(args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(args)
            .output()
            .expect("docker CLI");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run `q` on `pg`; a SELECT returns its one bigint column.
    async fn try_sql(pg: &dyn PgServer, q: &str) -> std::result::Result<Vec<i64>, sqlx::Error> {
        let url = format!("postgres://postgres@{}/postgres", pg.addr());
        let mut c = sqlx::PgConnection::connect(&url).await?;
        let rows = if q.trim_start().to_uppercase().starts_with("SELECT") {
            sqlx::query_scalar(q).fetch_all(&mut c).await
        } else {
            sqlx::query(q).execute(&mut c).await.map(|_| vec![])
        };
        let _ = c.close().await;
        rows
    }

    async fn sql(pg: &dyn PgServer, q: &str) -> Vec<i64> {
        try_sql(pg, q)
            .await
            .unwrap_or_else(|e| panic!("{q} on {}: {e}", pg.name()))
    }

    /// testcontainers removes a container in its drop only inside a Tokio runtime; a handle that
    /// outlives the runtime removes its container (and the network) itself.
    #[test]
    fn a_handle_dropped_outside_a_runtime_removes_its_container() {
        if std::env::var("DALP_DOCKER_TESTS").as_deref() != Ok("1") {
            eprintln!("skipped: set DALP_DOCKER_TESTS=1 to run the Docker provider test");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (provider, anvil) = rt.block_on(async {
            assert!(
                docker_available().await,
                "no Docker daemon reachable: start dockerd"
            );
            let provider = DockerProvider::new()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let anvil = provider.anvil("anvil", &[]).await.expect("anvil");
            (provider, anvil)
        });
        drop(rt);
        let (run, network) = (
            provider.run_id().to_string(),
            provider.network().to_string(),
        );
        drop((anvil, provider));
        let containers =
            docker_cli(&["ps", "-aq", "--filter", &format!("label={RUN_LABEL}={run}")]);
        assert!(containers.is_empty(), "containers left: {containers}");
        let networks = docker_cli(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name={network}"),
        ]);
        assert!(networks.is_empty(), "network left: {networks}");
    }

    /// Primary + streaming replica + Anvil in containers: replication, crash recovery, promotion,
    /// JSON-RPC, and nothing of the run left afterwards. Needs a Docker daemon and the images
    /// (`cargo xtask images`), so it runs only with `DALP_DOCKER_TESTS=1`.
    #[tokio::test(crate = "tokio", flavor = "multi_thread", worker_threads = 2)]
    async fn primary_replica_and_anvil_in_containers() {
        if std::env::var("DALP_DOCKER_TESTS").as_deref() != Ok("1") {
            eprintln!("skipped: set DALP_DOCKER_TESTS=1 to run the Docker provider test");
            return;
        }
        assert!(
            docker_available().await,
            "no Docker daemon reachable: start dockerd"
        );
        if let Err(e) = check_images().await {
            panic!("{e}");
        }
        let provider = DockerProvider::new().await.expect("provider");
        let run = provider.run_id().to_string();
        let network = provider.network().to_string();

        let t = Instant::now();
        let mut primary = provider
            .postgres_primary("db-0", true)
            .await
            .expect("primary");
        eprintln!("primary ready in {:?}", t.elapsed());
        let t = Instant::now();
        let replica = provider
            .postgres_replica("db-1", primary.as_ref())
            .await
            .expect("replica");
        eprintln!("replica streaming in {:?}", t.elapsed());
        assert_eq!(primary.peer(), (format!("dalp-{run}-db-0"), 5432));
        let names: Vec<String> = sqlx::query_scalar::<_, String>(
            "SELECT application_name::text FROM pg_stat_replication",
        )
        .fetch_all(
            &mut sqlx::PgConnection::connect(&format!(
                "postgres://postgres@{}/postgres",
                primary.addr()
            ))
            .await
            .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(names, vec!["db-1".to_string()], "the replica names itself");

        // A synchronous commit on the primary, streamed to the replica.
        sql(primary.as_ref(), "CREATE TABLE t (x bigint)").await;
        sql(primary.as_ref(), "INSERT INTO t VALUES (42)").await;
        let r = replica.as_ref();
        wait_until(
            "row on the replica",
            Duration::from_secs(20),
            move || async move { try_sql(r, "SELECT x FROM t").await.ok() == Some(vec![42]) },
        )
        .await
        .expect("the replica streams the row");

        // Crash and restart: recovery from the WAL on the same data directory.
        let before = primary.addr();
        primary.kill().await.expect("kill");
        let t = Instant::now();
        primary.start().await.expect("start after kill");
        eprintln!(
            "primary restarted in {:?} ({before} -> {})",
            t.elapsed(),
            primary.addr()
        );
        assert_eq!(sql(primary.as_ref(), "SELECT x FROM t").await, vec![42]);

        // Failover: the primary dies, the replica is promoted and takes writes.
        primary.kill().await.expect("kill again");
        assert_eq!(
            sql(replica.as_ref(), "SELECT pg_promote()::int::bigint").await,
            vec![1]
        );
        sql(replica.as_ref(), "INSERT INTO t VALUES (7)").await;
        assert_eq!(
            sql(replica.as_ref(), "SELECT x FROM t ORDER BY x").await,
            vec![7, 42]
        );

        // Anvil.
        let t = Instant::now();
        let anvil = provider
            .anvil("anvil", &["--chain-id".into(), "31337".into()])
            .await
            .expect("anvil");
        eprintln!("anvil ready in {:?}", t.elapsed());
        let reply: serde_json::Value = reqwest::Client::new()
            .post(format!("http://{}", anvil.addr()))
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
            .send()
            .await
            .expect("eth_chainId")
            .json()
            .await
            .expect("JSON-RPC reply");
        assert_eq!(reply["result"], "0x7a69", "{reply}");

        // Nothing of the run is left once the handles and the provider are gone.
        assert!(
            !docker_cli(&["ps", "-aq", "--filter", &format!("label={RUN_LABEL}={run}")]).is_empty()
        );
        drop((primary, replica, anvil, provider));
        let containers =
            docker_cli(&["ps", "-aq", "--filter", &format!("label={RUN_LABEL}={run}")]);
        assert!(containers.is_empty(), "containers left: {containers}");
        let networks = docker_cli(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name={network}"),
        ]);
        assert!(networks.is_empty(), "network left: {networks}");
        let live = cleanup::live();
        assert!(
            !live
                .iter()
                .any(|r| matches!(r, Resource::Network(n) if *n == network)),
            "still registered: {live:?}"
        );
    }
}
