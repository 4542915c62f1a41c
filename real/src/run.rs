//! One real run: provision the services and start the engines behind their proxies, then let the
//! run driver (`dalp_sim::driver`) take the run through the same phases as a simulated one, in real
//! time; this module says only how real clients start and where the evidence is read.

use super::cleanup;
use super::engines::{engine_binary, engine_ports, EngineProcess, HttpApi};
use super::evidence::{self, Rpc};
use super::fleet::{EngineLinks, Fleet};
use super::provision::{AnvilNode, LocalProvider, PgServer, Provider, Result};
use super::proxy::{HttpFaultProxy, TcpFaultProxy};
use async_trait::async_trait;
use dalp_engine::signer::SignerKey;
use dalp_sim::check::Evidence;
use dalp_sim::cli::Provider as ProviderChoice;
use dalp_sim::client::{run_ops, ClientCtx};
use dalp_sim::driver::{drive, Backend, FaultTarget, Result as DriverResult, Workload};
use dalp_sim::engine_conf::{engine_toml, EngineConf, CHAIN_ID, SIGNER_KEY};
use dalp_sim::outcome::RunResult;
use dalp_sim::plan::INVESTOR;
use dalp_sim::scenario::{Fault, Replication, Scenario};
use dalp_sim::trace::Trace;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who starts the services: `Auto` is Docker when a daemon is reachable and the images build,
/// local processes otherwise.
async fn provider(choice: ProviderChoice) -> Result<Box<dyn Provider>> {
    let docker = || async {
        if std::env::var_os(super::docker::IMAGES_READY).is_some() {
            super::docker::check_images().await?;
        } else {
            tokio::task::spawn_blocking(super::docker::ensure_images)
                .await
                .map_err(|e| format!("building the images: {e}"))??;
        }
        super::docker::DockerProvider::new().await
    };
    match choice {
        ProviderChoice::Local => Ok(Box::new(LocalProvider)),
        ProviderChoice::Docker => Ok(Box::new(docker().await?)),
        ProviderChoice::Auto => {
            if super::docker::docker_available().await {
                match docker().await {
                    Ok(p) => return Ok(Box::new(p)),
                    Err(e) => eprintln!(
                        "dalp-sim: a Docker daemon is reachable but unusable ({e}); using local processes"
                    ),
                }
            }
            Ok(Box::new(LocalProvider))
        }
    }
}

/// Run `scenario` with `seed` and `schedule` against real services. Blocks; builds its own
/// runtime. Everything started is removed before it returns, also on error.
pub fn run_seed_real(
    scenario: Arc<Scenario>,
    seed: u64,
    schedule: Vec<Fault>,
    choice: ProviderChoice,
) -> std::result::Result<(RunResult, Trace), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let trace = Trace::new();
    let t = trace.clone();
    // This process runs one seed for a runner: if the runner dies, so does the run (SIGTERM,
    // which the interrupt handler turns into a clean-up); and what killed runs left is removed.
    cleanup::die_with_parent(libc::SIGTERM);
    cleanup::sweep_orphans();
    let out = rt.block_on(async move {
        cleanup::on_interrupt();
        let world = RealWorld::provision(scenario.clone(), choice).await?;
        drive(world, &scenario, seed, schedule, &t).await
    });
    drop(rt);
    cleanup::kill_all();
    out.map(|r| (r, trace)).map_err(|e| e.to_string())
}

/// Real services for one run, and what the driver reads from them.
struct RealWorld {
    scenario: Arc<Scenario>,
    fleet: Arc<Fleet>,
    api: Arc<HttpApi>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    provisioning_ms: u64,
    databases: usize,
    sync: bool,
    /// Kept for the run: dropping it stops Anvil.
    _anvil: Box<dyn AnvilNode>,
}

impl RealWorld {
    /// Start the database servers, Anvil, and each engine behind its own proxies. Provisioning
    /// takes seconds (containers, base backups); the run's clock starts once the engines are up,
    /// so the schedule's times mean what they mean in the simulation.
    async fn provision(s: Arc<Scenario>, choice: ProviderChoice) -> Result<Self> {
        let provisioning = Instant::now();
        let topo = &s.topology;
        let provider = provider(choice).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            .build()?;

        // Database: a primary and its streaming replicas.
        let sync = topo.replication == Replication::Sync && topo.db_replicas > 0;
        let mut dbs: Vec<Box<dyn PgServer>> = vec![provider.postgres_primary("db-0", sync).await?];
        for j in 1..=topo.db_replicas as usize {
            let r = provider
                .postgres_replica(&format!("db-{j}"), dbs[0].as_ref())
                .await?;
            dbs.push(r);
        }
        create_database(&dbs[0].addr().to_string(), topo.db_replicas > 0).await?;

        // The chain: one Anvil node; each RPC endpoint is a proxy of it per engine.
        let block_s = (topo.block_time_ms as f64 / 1000.0).max(1.0).round() as u64;
        let anvil = provider
            .anvil(
                "anvil",
                &[
                    "--chain-id".into(),
                    CHAIN_ID.to_string(),
                    "--block-time".into(),
                    block_s.to_string(),
                ],
            )
            .await?;
        let rpc = Rpc {
            http: http.clone(),
            url: format!("http://{}", anvil.addr()),
        };

        // Engines, each behind its own proxies.
        let n = topo.engines as usize;
        let ports = engine_ports(n)?;
        let bin = engine_binary()?;
        let mut links = Vec::new();
        let mut engines = Vec::new();
        let mut api_ports = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let name = format!("engine-{i}");
            let db = TcpFaultProxy::start(&format!("{name}-db"), dbs[0].addr()).await?;
            let mut rpcs = Vec::new();
            for k in 0..topo.rpc_endpoints as usize {
                rpcs.push(HttpFaultProxy::start(&format!("{name}-rpc-{k}"), anvil.addr()).await?);
            }
            let api = HttpFaultProxy::start(
                &format!("{name}-api"),
                std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
            )
            .await?;
            let endpoints: Vec<String> = rpcs
                .iter()
                .map(|p| format!("http://{}", p.addr()))
                .collect();
            let toml = engine_toml(&EngineConf {
                index: i,
                database_url: &format!("postgres://postgres@{}/dalp", db.addr()),
                rpc_endpoints: &endpoints,
                finality_depth: topo.finality_depth,
                indexer: topo.indexers.contains(&name),
                listen: Some(&format!("127.0.0.1:{port}")),
                knobs: &s.knobs(),
            });
            engines.push(EngineProcess::new(&bin, i, *port, &toml)?);
            api_ports.push(api.addr().port());
            links.push(EngineLinks { db, rpc: rpcs, api });
        }
        let standby: Vec<bool> = (0..n)
            .map(|i| topo.standby_engines.contains(&format!("engine-{i}")))
            .collect();
        for (i, e) in engines.iter_mut().enumerate() {
            if !standby[i] {
                e.start(&http).await?;
            }
        }
        let provisioning_ms = provisioning.elapsed().as_millis() as u64;
        let start = Instant::now();
        let databases = dbs.len();
        let fleet = Arc::new(Fleet {
            start,
            http: http.clone(),
            rpc,
            signer: SignerKey::from_hex(SIGNER_KEY)?.address(),
            links,
            engines: tokio::sync::Mutex::new(engines),
            standby,
            dbs: tokio::sync::Mutex::new(dbs),
            primary: Mutex::new(0),
            provider,
            rejoins: Mutex::new(0),
            retired_db_logs: Mutex::new(Vec::new()),
            failed_over: Mutex::default(),
            sync_replication: sync,
            block_s,
            external_txs: Mutex::default(),
            data_loss: Mutex::default(),
            stale_sessions: Mutex::default(),
        });
        let api = Arc::new(HttpApi {
            http,
            ports: api_ports,
            timeout: Duration::from_millis(s.workload.client_timeout_ms),
            start,
        });
        Ok(RealWorld {
            scenario: s,
            fleet,
            api,
            clients: Vec::new(),
            provisioning_ms,
            databases,
            sync,
            _anvil: anvil,
        })
    }

    async fn primary_url(&self) -> String {
        let dbs = self.fleet.dbs.lock().await;
        self.fleet.primary_url(&dbs)
    }
}

#[async_trait(?Send)]
impl Backend for RealWorld {
    fn t_ms(&self) -> u64 {
        self.fleet.t_ms()
    }

    fn start_detail(&self) -> Value {
        json!({"backend": "real", "provider": self.fleet.provider.name(),
               "databases": self.databases, "sync": self.sync,
               "provisioning_ms": self.provisioning_ms})
    }

    /// Each client a task, against the engines' API proxies.
    async fn start_workload(&mut self, w: &Workload) {
        for (c, ops) in w.clients.iter().enumerate() {
            let ctx = Arc::new(ClientCtx {
                name: format!("client-{c}"),
                engines: self.scenario.topology.engines as usize,
                deadline_ms: w.deadline_ms,
                history: w.history.clone(),
                tokens: w.tokens.clone(),
                api: self.api.clone(),
                max_balance: self.scenario.workload.max_balance,
            });
            self.clients.push(tokio::spawn(run_ops(ctx, ops.clone())));
        }
    }

    fn fault_target(&mut self) -> Arc<dyn FaultTarget> {
        self.fleet.clone()
    }

    /// The rest of a quiet fault phase would be idle wall time (a third of a typical run).
    fn heals_when_quiet(&self) -> bool {
        true
    }

    async fn finalized(&self) -> DriverResult<u64> {
        let head = self.fleet.rpc.head().await?;
        Ok(head.saturating_sub(self.scenario.topology.finality_depth))
    }

    async fn indexed_height(&self) -> u64 {
        evidence::indexed_height(&self.primary_url().await).await
    }

    async fn collect(&self, ev: &mut Evidence) -> DriverResult<()> {
        ev.signer = self.fleet.signer;
        let depth = self.scenario.topology.finality_depth;
        evidence::chain(&self.fleet.rpc, ev, depth, INVESTOR).await?;
        evidence::database(&self.primary_url().await, ev).await?;
        Ok(())
    }

    async fn unfinished(&self, ids: &std::collections::BTreeSet<i64>) -> Option<usize> {
        evidence::unfinished(&self.primary_url().await, ids).await
    }

    /// No metrics scraper (`visibility`) and no fault-free baseline run (`isolation`) here.
    fn can_judge(&self, invariant: &str) -> bool {
        !matches!(invariant, "visibility" | "isolation")
    }

    async fn observe_visibility(&self, _schedule: &[Fault], _ev: &mut Evidence) {
        unreachable!("visibility is not judged on the real backend")
    }

    fn recorded(&self, ev: &mut Evidence) {
        ev.external_txs = self.fleet.external_txs.lock().expect("ext").clone();
        ev.data_loss = self.fleet.data_loss.lock().expect("loss").clone();
    }

    async fn final_state(&self) -> DriverResult<(u64, Value)> {
        Ok((self.fleet.rpc.head().await?, json!({})))
    }

    async fn stats(&self, stats: &mut BTreeMap<String, u64>) {
        stats.insert("provisioning_ms".to_string(), self.provisioning_ms);
        let engines = self.fleet.engines.lock().await;
        let starts: u32 = engines.iter().map(|e| e.starts).sum();
        stats.insert("engine_process_starts".to_string(), starts as u64);
    }

    fn claims(&self) -> Vec<(u64, String, Vec<i64>)> {
        Vec::new()
    }

    /// Stop the clients and the engines first (they hold connections), then the proxies; the
    /// services drop with the fleet.
    async fn finish(&mut self, passed: bool) -> BTreeMap<String, Vec<String>> {
        for c in self.clients.drain(..) {
            c.abort();
        }
        let mut engine_logs = BTreeMap::new();
        let mut engines = self.fleet.engines.lock().await;
        if !passed {
            for e in engines.iter() {
                engine_logs.insert(
                    e.name.clone(),
                    super::engines::log_excerpt(&e.log_text(), 15),
                );
            }
        }
        engines.iter_mut().for_each(|e| e.kill9());
        drop(engines);
        if !passed {
            // The database servers' own account (switchovers, cancelled waits, crashes): the
            // current ones and those a rejoin replaced.
            let mut logs: Vec<(String, String)> = Vec::new();
            for (j, db) in self.fleet.dbs.lock().await.iter().enumerate() {
                logs.push((format!("db-{j} {}", db.name()), db.server_log().await));
            }
            logs.extend(
                self.fleet
                    .retired_db_logs
                    .lock()
                    .expect("retired logs")
                    .drain(..),
            );
            for (name, text) in logs {
                engine_logs.insert(
                    format!("postgres {name}"),
                    super::engines::pg_log_excerpt(&text, 25),
                );
            }
        }
        for l in &self.fleet.links {
            l.db.shutdown().await;
            l.api.shutdown().await;
            for p in &l.rpc {
                p.shutdown().await;
            }
        }
        engine_logs
    }

    fn labels(&self) -> (Option<String>, Option<String>) {
        (Some("real".into()), Some(self.fleet.provider.name().into()))
    }

    /// Probes and fault points compile to nothing outside the simulation.
    fn coverage(&self) -> Option<dalp_sim::outcome::Coverage> {
        None
    }
}

/// Create the engines' database `dalp` on the primary; with replicas, wait until one streams
/// (a synchronous commit would otherwise wait for ever).
async fn create_database(addr: &str, replicas: bool) -> Result<()> {
    let url = format!("postgres://postgres@{addr}/postgres");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await?;
    if replicas {
        let mut streaming = false;
        for _ in 0..300 {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .fetch_one(&pool)
            .await?;
            if n > 0 {
                streaming = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !streaming {
            return Err("no replica is streaming from the primary after 30 s".into());
        }
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        sqlx::query("CREATE DATABASE dalp").execute(&pool),
    )
    .await
    .map_err(|_| "CREATE DATABASE timed out")??;
    pool.close().await;
    Ok(())
}
