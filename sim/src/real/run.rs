//! One real run: provision the services, start the engines behind their proxies, run the seed's
//! workload under the seed's fault schedule (in real time), heal, wait out the liveness phase,
//! collect the evidence from the services and check the invariants — the phases of the
//! simulation's `world::run`, against real parts.

use super::cleanup;
use super::engines::{engine_binary, engine_ports, EngineProcess, HttpApi};
use super::evidence::{self, Rpc};
use super::fleet::{EngineLinks, Fleet};
use super::provision::{LocalProvider, PgServer, Provider, Result};
use super::proxy::{HttpFaultProxy, TcpFaultProxy};
use crate::check::{check, Evidence};
use crate::client::{run_ops, ClientCtx, TokenBook};
use crate::engine_conf::{engine_toml, EngineConf, CHAIN_ID, SIGNER_KEY};
use crate::history::{summarize, History};
use crate::outcome::RunResult;
use crate::plan::{plan, INVESTOR};
use crate::scenario::{Fault, Replication, Scenario};
use crate::trace::Trace;
use dalp_engine::signer::SignerKey;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which provider runs the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderChoice {
    /// Docker when a daemon is reachable and the images exist, local processes otherwise.
    Auto,
    Docker,
    Local,
}

impl ProviderChoice {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(ProviderChoice::Auto),
            "docker" => Ok(ProviderChoice::Docker),
            "local" => Ok(ProviderChoice::Local),
            other => Err(format!(
                "--provider: unknown provider `{other}` (auto, docker or local)"
            )),
        }
    }
}

async fn provider(choice: ProviderChoice) -> Result<Box<dyn Provider>> {
    let docker = || async {
        rtokio::task::spawn_blocking(super::docker::ensure_images)
            .await
            .map_err(|e| format!("building the images: {e}"))??;
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
    let rt = rtokio::runtime::Builder::new_multi_thread()
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
        world(scenario, seed, schedule, choice, t).await
    });
    drop(rt);
    cleanup::kill_all();
    out.map(|r| (r, trace)).map_err(|e| e.to_string())
}

async fn world(
    s: Arc<Scenario>,
    seed: u64,
    schedule: Vec<Fault>,
    choice: ProviderChoice,
    trace: Trace,
) -> Result<RunResult> {
    // Provisioning takes seconds (containers, base backups); the run's clock starts once the
    // engines are up, so the schedule's times mean what they mean in the simulation.
    let provisioning = Instant::now();
    let topo = &s.topology;
    let heal_ms = (s.durations.fault_phase_s * 1000.0).round() as u64;
    let deadline_ms = heal_ms + (s.durations.liveness_bound_s * 1000.0).round() as u64;
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
    let t_ms = move || start.elapsed().as_millis() as u64;
    trace.record(
        0,
        "sim",
        "phase",
        "start",
        json!({"scenario": s.name, "seed": seed, "faults": schedule.len(), "backend": "real",
               "provider": provider.name(), "databases": dbs.len(), "sync": sync,
               "provisioning_ms": provisioning_ms}),
    );
    let signer = SignerKey::from_hex(SIGNER_KEY)?.address();
    let fleet = Arc::new(Fleet {
        start,
        trace: trace.clone(),
        http: http.clone(),
        rpc: rpc.clone(),
        signer,
        links,
        engines: rtokio::sync::Mutex::new(engines),
        standby,
        dbs: rtokio::sync::Mutex::new(dbs),
        primary: Mutex::new(0),
        provider,
        rejoins: Mutex::new(0),
        failed_over: Mutex::default(),
        sync_replication: sync,
        block_s,
        external_txs: Mutex::default(),
        data_loss: Mutex::default(),
        not_applicable: Mutex::default(),
        stale_sessions: Mutex::default(),
    });

    // Clients: the seed's plan, against the engines' API proxies.
    let history = History::default();
    let tokens: TokenBook = Arc::new(Mutex::new(BTreeMap::new()));
    let planned = plan(&s, seed);
    trace.record(
        t_ms(),
        "sim",
        "phase",
        "plan",
        json!({"operations": planned.len()}),
    );
    let api = Arc::new(HttpApi {
        http: http.clone(),
        ports: api_ports,
        timeout: Duration::from_millis(s.workload.client_timeout_ms),
        start,
    });
    let mut clients = Vec::new();
    for c in 0..s.workload.clients as usize {
        let ops: Vec<_> = planned
            .iter()
            .filter(|o| o.client as usize == c)
            .cloned()
            .collect();
        let ctx = Arc::new(ClientCtx {
            name: format!("client-{c}"),
            engines: n,
            deadline_ms,
            history: history.clone(),
            tokens: tokens.clone(),
            api: api.clone(),
        });
        clients.push(rtokio::spawn(run_ops(ctx, ops)));
    }

    // Faults until the heal instant.
    let mut injected = Vec::new();
    for f in schedule.iter().cloned() {
        injected.push(rtokio::spawn(fleet.clone().one(f, heal_ms)));
    }
    sleep_until(start, heal_ms).await;
    for t in injected {
        let _ = t.await;
    }
    trace.record(t_ms(), "sim", "phase", "healed", Value::Null);

    // Liveness: every accepted request must finish within the bound.
    let planned_n = planned.len();
    let settled = |h: &History| {
        let sums = summarize(&h.ops());
        sums.len() == planned_n && sums.values().all(|o| o.observed.is_some() || o.refused)
    };
    while !settled(&history) && t_ms() < deadline_ms {
        rtokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_done = summarize(&history.ops())
        .values()
        .filter(|o| o.accepted_at.is_some())
        .all(|o| o.observed.is_some());
    trace.record(
        t_ms(),
        "sim",
        "phase",
        "liveness_done",
        json!({"all_done": all_done}),
    );
    for c in clients {
        c.abort();
    }

    // Let the indexer reach the finalized height (bounded).
    let primary_url = {
        let dbs = fleet.dbs.lock().await;
        fleet.primary_url(&dbs)
    };
    let settle_until = t_ms() + 30_000;
    let target = rpc.head().await?.saturating_sub(topo.finality_depth);
    while evidence::indexed_height(&primary_url).await < target && t_ms() < settle_until {
        rtokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut ev = Evidence {
        ops: history.ops(),
        heal_ms,
        liveness_deadline_ms: deadline_ms,
        signer,
        external_txs: fleet.external_txs.lock().expect("ext").clone(),
        tokens: tokens.lock().expect("tokens").clone(),
        investor: INVESTOR,
        max_dead_letters: s.expect.max_dead_letters,
        data_loss: fleet.data_loss.lock().expect("loss").clone(),
        ..Default::default()
    };
    evidence::chain(&rpc, &mut ev, topo.finality_depth, INVESTOR).await?;
    evidence::database(&primary_url, &mut ev).await?;
    let head = rpc.head().await?;
    trace.record(
        t_ms(),
        "sim",
        "phase",
        "final_state",
        ev.final_state(head, json!({})),
    );

    // Visibility needs the metrics scraper and isolation a fault-free baseline: simulation only.
    let invariants: Vec<String> = s
        .invariants
        .iter()
        .filter(|i| !matches!(i.as_str(), "visibility" | "isolation" | "determinism"))
        .cloned()
        .collect();
    let verdicts = check(&invariants, &ev);
    let passed = verdicts.iter().all(|v| v.held);
    for v in &verdicts {
        trace.record(
            t_ms(),
            "sim",
            "check",
            &v.invariant,
            json!({"held": v.held, "violations": v.violation_count}),
        );
    }
    let mut stats = ev.stats();
    stats.insert("chain_head".to_string(), head);
    stats.insert("provisioning_ms".to_string(), provisioning_ms);
    {
        let engines = fleet.engines.lock().await;
        let starts: u32 = engines.iter().map(|e| e.starts).sum();
        stats.insert("engine_process_starts".to_string(), starts as u64);
    }
    let ops = crate::timing::op_timings(
        &planned
            .iter()
            .map(|o| (o.index, o.kind.name().to_string(), o.kind.token(), o.at_ms))
            .collect::<Vec<_>>(),
        &history.ops(),
        &[],
    );
    let fault_windows = crate::timing::fault_windows(&schedule, heal_ms);
    let recovery_ms = if all_done {
        crate::check::recovery_ms(&ops, &fault_windows, heal_ms)
    } else {
        None
    };
    let mut not_applicable = fleet.not_applicable.lock().expect("na").clone();
    for i in &s.invariants {
        if matches!(i.as_str(), "visibility" | "isolation") {
            not_applicable.push(json!({"invariant": i, "reason": "checked in the simulation only (needs the metrics scraper / a fault-free baseline run)"}));
        }
    }
    let data_loss = fleet.data_loss.lock().expect("loss").clone();
    let mut engine_logs = std::collections::BTreeMap::new();
    if !passed {
        for e in fleet.engines.lock().await.iter() {
            engine_logs.insert(
                e.name.clone(),
                super::engines::log_excerpt(&e.log_text(), 15),
            );
        }
    }
    // Stop the engines first (they hold connections), then everything else drops.
    fleet
        .engines
        .lock()
        .await
        .iter_mut()
        .for_each(|e| e.kill9());
    for l in &fleet.links {
        l.db.shutdown().await;
        l.api.shutdown().await;
        for p in &l.rpc {
            p.shutdown().await;
        }
    }
    Ok(RunResult {
        scenario: s.name.clone(),
        seed,
        passed,
        verdicts,
        trace_hash: trace.hash_hex(),
        trace_events: trace.len(),
        schedule,
        recovery_ms,
        data_loss,
        simulated_ms: t_ms(),
        stats,
        ops,
        fault_windows,
        backend: Some("real".into()),
        provider: Some(fleet.provider.name().into()),
        not_applicable,
        engine_logs,
    })
}

async fn sleep_until(start: Instant, t_ms: u64) {
    let now = start.elapsed().as_millis() as u64;
    if t_ms > now {
        rtokio::time::sleep(Duration::from_millis(t_ms - now)).await;
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
            rtokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !streaming {
            return Err("no replica is streaming from the primary after 30 s".into());
        }
    }
    rtokio::time::timeout(
        Duration::from_secs(30),
        sqlx::query("CREATE DATABASE dalp").execute(&pool),
    )
    .await
    .map_err(|_| "CREATE DATABASE timed out")??;
    pool.close().await;
    Ok(())
}
