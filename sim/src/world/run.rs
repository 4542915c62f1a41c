//! One simulated run: build the world for a scenario and a seed (chain, RPC, database and engine
//! hosts on the simulated network, `super::net`), then let the run driver (`crate::driver`) take it through its
//! phases; this module says only how the simulation starts clients, applies faults and reads its
//! evidence.

use super::chain_node::{miner, rpc_process, ChainWorld};
use super::db_node::{db_process, DbCluster};
use super::engine_node::{engine_config, engine_process, EngineHost, CHAIN_ID, SIGNER_KEY};
use super::faults::Fleet;
use super::scrape::{
    evidence as scrape_evidence, scraper_process, ScrapeLog, SCRAPER, SCRAPE_INTERVAL_MS,
};
use super::workload::{client_process, SimApi};
use super::{epoch_ms, ip, ip_of, t_ms, DB_SERVICE};
use crate::chain::{ChainModel, ChainParams};
use crate::check::WorkflowView;
use crate::check::{ChainTx, Evidence, IdentityLog, TransferLog};
use crate::client::ClientCtx;
use crate::db::DbModel;
use crate::driver::{drive, Backend, FaultTarget, Result, Workload};
use crate::plan::INVESTOR;
use crate::rng::SimRng;
use crate::scenario::{Fault, Scenario};
use crate::trace::Trace;
use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, SolEvent};
use async_trait::async_trait;
use dalp_engine::contracts::AssetToken;
use dalp_engine::signer::SignerKey;
use madsim::net::NetSim;
use madsim::runtime::{Handle, Runtime};
use madsim::task::NodeId;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::outcome::RunResult;

/// Run `scenario` with `seed` and the concrete `schedule` in a fresh madsim runtime; with
/// `logs`, the engines' events at that level or above go into the trace (`super::logs`).
/// Call once per process (madsim keeps statics across runtimes).
pub fn run_seed(
    scenario: Arc<Scenario>,
    seed: u64,
    schedule: Vec<Fault>,
    logs: Option<tracing::Level>,
) -> (RunResult, Trace) {
    let cfg = madsim::Config::default();
    let [lo, hi] = scenario.topology.net_latency_ms;
    let latency = Duration::from_millis(lo)..Duration::from_millis(hi.max(lo) + 1);
    // The runtime gets a thread of its own: madsim seeds std's `HashMap` keys from the seed only
    // on a thread that has not built a `RandomState` yet (argument and TOML parsing already did
    // on this one, from OS entropy), and the engine's deep async stacks want room. This thread
    // exists before the simulation starts; nothing inside the simulation spawns threads.
    let trace = Trace::new();
    let t = trace.clone();
    let result = std::thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .stack_size(256 << 20)
        .spawn(move || {
            let _logs = super::logs::install(&t, logs);
            let rt = Runtime::with_seed_and_config(seed, cfg);
            rt.block_on(async move {
                super::net::install(latency);
                let world = SimWorld::build(scenario.clone(), seed, t.clone());
                drive(world, &scenario, seed, schedule, &t)
                    .await
                    .unwrap_or_else(|e| panic!("the simulated run failed: {e}"))
            })
        })
        .expect("start the simulation thread")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    (result, trace)
}

/// The simulated world of one run: its hosts and what the driver reads from them.
struct SimWorld {
    scenario: Arc<Scenario>,
    trace: Trace,
    nodes: BTreeMap<String, NodeId>,
    chain: Arc<ChainWorld>,
    db: Arc<DbCluster>,
    hosts: Vec<Arc<EngineHost>>,
    scrape_log: Arc<Mutex<ScrapeLog>>,
    fleet: Option<Arc<Fleet>>,
    /// The engine's fault points this seed armed, with their firing probability, and every
    /// firing.
    fault_points: BTreeMap<String, f64>,
    fired: Fired,
}

type Fired = Arc<Mutex<Vec<crate::check::failover::FaultPointFiring>>>;

impl SimWorld {
    /// The chain and its RPC endpoints, the database hosts and the engine hosts (created in
    /// this order: node ids, and so the seed's schedule of tasks, depend on it).
    fn build(s: Arc<Scenario>, seed: u64, trace: Trace) -> Self {
        let mut nodes = BTreeMap::new();
        let chain = chain_hosts(&s, seed, &trace, &mut nodes);
        let db = db_hosts(&s, seed, &trace, &mut nodes);
        let hosts = engine_hosts(&s, seed, &trace, &mut nodes);
        let fired = Fired::default();
        let fault_points = arm_fault_points(&s, seed, &trace, &nodes, &fired);
        SimWorld {
            scenario: s,
            trace,
            nodes,
            chain,
            db,
            hosts,
            scrape_log: Arc::new(Mutex::new(ScrapeLog::default())),
            fleet: None,
            fault_points,
            fired,
        }
    }

    fn fleet(&self) -> &Fleet {
        self.fleet.as_deref().expect("the fault phase ran")
    }

    fn visibility_checked(&self) -> bool {
        self.scenario.invariants.iter().any(|i| i == "visibility")
    }
}

type Nodes = BTreeMap<String, NodeId>;

/// Clear the engine's probe counts and, when the scenario asks, arm its fault points for this
/// seed; every firing is traced on the engine's track. The armed set, with firing probabilities.
fn arm_fault_points(
    s: &Scenario,
    seed: u64,
    trace: &Trace,
    nodes: &Nodes,
    fired: &Fired,
) -> BTreeMap<String, f64> {
    use dalp_engine::probe::sim;
    sim::reset();
    let Some(fp) = &s.fault_points else {
        return BTreeMap::new();
    };
    sim::arm(seed, fp.enable_probability);
    for a in &fp.always {
        sim::arm_always(
            &a.name,
            sim::Enabled {
                fire_probability: a.fire_probability,
                firing: a.firing,
                max_fires: a.max_fires,
            },
        )
        .expect("validated with the scenario");
    }
    let armed = sim::armed();
    trace.record(
        t_ms(),
        "sim",
        "fault_point",
        "armed",
        json!({"enabled": armed.keys().collect::<Vec<_>>()}),
    );
    // Quiet after the fault phase, like every other fault: liveness is judged without them.
    let quiet = Duration::from_secs_f64(s.durations.fault_phase_s);
    let tr = trace.clone();
    madsim::task::spawn(async move {
        madsim::time::sleep(quiet).await;
        sim::disarm();
        tr.record(t_ms(), "sim", "fault_point", "disarmed", json!({}));
    });
    let names: BTreeMap<NodeId, String> = nodes.iter().map(|(k, v)| (*v, k.clone())).collect();
    let tr = trace.clone();
    let fired = fired.clone();
    sim::observe(move |point, action| {
        let node = names
            .get(&madsim::plugin::node())
            .map_or("?", String::as_str);
        let what = match action {
            sim::Action::Delay(d) => {
                json!({"point": point, "action": "delay", "ms": d.as_millis() as u64})
            }
            sim::Action::Fail => json!({"point": point, "action": "fail"}),
            sim::Action::Crash => json!({"point": point, "action": "crash"}),
            sim::Action::Continue => return,
        };
        fired
            .lock()
            .expect("fired")
            .push(crate::check::failover::FaultPointFiring {
                t_ms: t_ms(),
                node: node.to_string(),
                point: point.to_string(),
                action: what["action"].as_str().unwrap_or("").to_string(),
            });
        tr.record(t_ms(), node, "fault_point", "fired", what);
    });
    armed
        .into_iter()
        .map(|(k, v)| (k, v.fire_probability))
        .collect()
}

/// The chain (its miner) and one host per RPC endpoint.
fn chain_hosts(s: &Scenario, seed: u64, trace: &Trace, nodes: &mut Nodes) -> Arc<ChainWorld> {
    let handle = Handle::current();
    let topo = &s.topology;
    let signer = SignerKey::from_hex(SIGNER_KEY)
        .expect("signer key")
        .address();
    let eth = U256::from(10u64).pow(U256::from(18u64));
    let chain = Arc::new(ChainWorld {
        model: Mutex::new(ChainModel::new(
            ChainParams {
                chain_id: CHAIN_ID,
                block_time_ms: topo.block_time_ms,
                finality_depth: topo.finality_depth,
                pool_policy: match topo.mempool {
                    crate::scenario::Mempool::Anvil => crate::chain::PoolPolicy::Anvil,
                    crate::scenario::Mempool::Geth => crate::chain::PoolPolicy::Geth,
                },
                ..ChainParams::anvil(vec![(signer, U256::from(10_000u64) * eth)])
            },
            epoch_ms(),
        )),
        modes: Mutex::default(),
        calls: Mutex::default(),
        faulted: Mutex::default(),
        requests: Mutex::default(),
        stale: Mutex::default(),
        balancer: Mutex::new(SimRng::new(seed).fork("rpc-balancer")),
        block_time: Duration::from_millis(topo.block_time_ms),
        signer,
        trace: trace.clone(),
    });
    {
        let c = chain.clone();
        let n = handle
            .create_node()
            .name("chain")
            .ip(ip(4, 0))
            .init(move || miner(c.clone()))
            .build();
        nodes.insert("chain".to_string(), n.id());
    }
    for k in 0..topo.rpc_endpoints as usize {
        let c = chain.clone();
        let n = handle
            .create_node()
            .name(format!("rpc-{k}"))
            .ip(ip(3, k))
            .init(move || rpc_process(c.clone(), k))
            .build();
        nodes.insert(format!("rpc-{k}"), n.id());
    }
    chain
}

/// The database hosts; `db.service` names the primary.
fn db_hosts(s: &Scenario, seed: u64, trace: &Trace, nodes: &mut Nodes) -> Arc<DbCluster> {
    let handle = Handle::current();
    let topo = &s.topology;
    let db = DbCluster::new(
        topo.db_replicas as usize + 1,
        topo.replication,
        topo.replication_lag_ms,
        seed,
        // The engines run with the default database timeout (`engine_conf` sets none).
        dalp_engine::config::TimeoutConfig::default().db_ms,
        trace.clone(),
    );
    NetSim::current().add_dns_record(DB_SERVICE, ip(2, 0));
    for j in 0..db.disks.len() {
        let d = db.clone();
        let n = handle
            .create_node()
            .name(format!("db-{j}"))
            .ip(ip(2, j))
            .init(move || db_process(d.clone(), j))
            .build();
        nodes.insert(format!("db-{j}"), n.id());
    }
    db
}

/// One host per engine (a standby host starts its engine only when activated).
fn engine_hosts(s: &Scenario, seed: u64, trace: &Trace, nodes: &mut Nodes) -> Vec<Arc<EngineHost>> {
    let handle = Handle::current();
    let topo = &s.topology;
    let mut hosts = Vec::new();
    for i in 0..topo.engines as usize {
        let host = Arc::new(EngineHost::default());
        if topo.standby_engines.contains(&format!("engine-{i}")) {
            host.standby
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        hosts.push(host.clone());
        let name = format!("engine-{i}");
        let config = engine_config(
            i,
            topo.rpc_endpoints as usize,
            topo.finality_depth,
            topo.indexers.contains(&name),
            &s.knobs(),
        );
        let tr = trace.clone();
        let n = handle
            .create_node()
            .name(name.clone())
            .ip(ip(1, i))
            // A fault point's crash: the node restarts, as under a process supervisor.
            .restart_on_panic_matching(dalp_engine::probe::CRASH_MESSAGE)
            .init(move || engine_process(i, config.clone(), host.clone(), seed, tr.clone()))
            .build();
        hosts[i].node.set(n.id()).expect("one node per engine host");
        nodes.insert(name, n.id());
    }
    hosts
}

#[async_trait(?Send)]
impl Backend for SimWorld {
    fn t_ms(&self) -> u64 {
        t_ms()
    }

    fn start_detail(&self) -> Value {
        json!({})
    }

    /// One host per client; and the metrics scraper (invariant 9), only when that invariant is
    /// checked: its traffic shifts the run's timing, so scenarios without it keep their hashes.
    async fn start_workload(&mut self, w: &Workload) {
        let handle = Handle::current();
        let s = &self.scenario;
        for (c, ops) in w.clients.iter().enumerate() {
            let (name, engines, timeout) = (
                format!("client-{c}"),
                s.topology.engines as usize,
                Duration::from_millis(s.workload.client_timeout_ms),
            );
            let (history, tokens, ops) = (w.history.clone(), w.tokens.clone(), ops.clone());
            let deadline_ms = w.deadline_ms;
            let max_balance = s.workload.max_balance;
            let n = handle
                .create_node()
                .name(format!("client-{c}"))
                .ip(ip(5, c))
                .init(move || {
                    let (name, history, tokens, ops) =
                        (name.clone(), history.clone(), tokens.clone(), ops.clone());
                    async move {
                        let ctx = Arc::new(ClientCtx {
                            name,
                            engines,
                            deadline_ms,
                            history,
                            tokens,
                            api: SimApi::bind(ip(5, c), timeout),
                            max_balance,
                        });
                        client_process(ctx, ops).await
                    }
                })
                .build();
            self.nodes.insert(format!("client-{c}"), n.id());
        }
        if self.visibility_checked() {
            let (log, tr, engines) = (
                self.scrape_log.clone(),
                self.trace.clone(),
                s.topology.engines as usize,
            );
            let n = handle
                .create_node()
                .name(SCRAPER)
                .ip(ip_of(SCRAPER).expect("the scraper has an address"))
                .init(move || scraper_process(engines, log.clone(), tr.clone()))
                .build();
            self.nodes.insert(SCRAPER.to_string(), n.id());
        }
    }

    /// The fleet of hosts faults act on, and the host operator actions run on.
    fn fault_target(&mut self) -> Arc<dyn FaultTarget> {
        let operator = Handle::current()
            .create_node()
            .name(crate::driver::OPERATOR)
            .ip(ip_of(crate::driver::OPERATOR).expect("the operator has an address"))
            .build();
        let fleet = Fleet::new(
            self.scenario.clone(),
            self.nodes.clone(),
            self.db.clone(),
            self.chain.clone(),
            self.hosts.clone(),
            self.trace.clone(),
            operator,
        );
        self.fleet = Some(fleet.clone());
        fleet
    }

    async fn finalized(&self) -> Result<u64> {
        Ok(self.chain.model.lock().expect("chain").finalized())
    }

    async fn indexed_height(&self) -> u64 {
        checkpoint(&self.db.disks[self.db.primary()].lock().expect("disk").model)
    }

    async fn collect(&self, ev: &mut Evidence) -> Result<()> {
        self.db
            .with_primary_model(|model| collect(model, &self.chain, ev));
        Ok(())
    }

    /// Read from the primary's model directly: no message, no await, nothing the run sees.
    async fn unfinished(&self, ids: &std::collections::BTreeSet<i64>) -> Option<usize> {
        Some(self.db.with_primary_model(|m| {
            ids.iter()
                .filter_map(|id| m.tables.workflows.get(id))
                .filter(|w| !crate::check::is_terminal(w.status.as_str()))
                .count()
        }))
    }

    fn can_judge(&self, _invariant: &str) -> bool {
        true
    }

    /// Give the last fault its full bound, then judge from what the scraper saw.
    async fn observe_visibility(&self, schedule: &[Fault], ev: &mut Evidence) {
        let s = &self.scenario;
        let bound_ms = (s.durations.visibility_bound_s.unwrap_or(15.0).max(0.0) * 1000.0) as u64;
        let cfg = engine_config(0, 1, s.topology.finality_depth, false, &s.knobs());
        let stuck_ms = cfg.chain.stuck_after_ms;
        let last_start = schedule.iter().map(|f| (f.at_s() * 1000.0) as u64).max();
        if let Some(t) = last_start {
            let window = bound_ms.max(stuck_ms + 2 * SCRAPE_INTERVAL_MS);
            super::sleep_until_ms(t + window + SCRAPE_INTERVAL_MS).await;
        }
        let db_timeout_ms = cfg.db_timeout().as_millis() as u64;
        let faulted = self.chain.faulted.lock().expect("faulted").clone();
        ev.visibility = scrape_evidence(
            &self.scrape_log,
            &self.trace,
            bound_ms,
            db_timeout_ms,
            stuck_ms,
            &faulted,
        );
    }

    fn recorded(&self, ev: &mut Evidence) {
        let fleet = self.fleet();
        ev.external_txs = fleet.external_txs.lock().expect("ext").clone();
        ev.stale_writes_accepted = self.db.stale_writes_accepted.lock().expect("stale").clone();
        ev.data_loss = fleet.data_loss.lock().expect("loss").clone();
        ev.rpc_requests = Some(self.chain.requests.lock().expect("requests").clone());
        ev.fault_point_firings = self.fired.lock().expect("fired").clone();
        ev.fenced_writes = Some(
            self.db.disks[self.db.primary()]
                .lock()
                .expect("disk")
                .model
                .fenced_writes,
        );
    }

    async fn final_state(&self) -> Result<(u64, Value)> {
        let m = self.chain.model.lock().expect("chain");
        let extra = json!({
            "signer_nonce_latest": m.nonce_of(self.chain.signer),
            "signer_nonce_pending": m.pending_nonce_of(self.chain.signer),
        });
        Ok((m.head(), extra))
    }

    async fn stats(&self, stats: &mut BTreeMap<String, u64>) {
        // Read in place: the evidence already holds its own copy of the tables.
        let (fenced_writes, journal_seq) = {
            let disk = self.db.disks[self.db.primary()].lock().expect("disk");
            (disk.model.fenced_writes, disk.model.sequences.journal)
        };
        stats.insert("fenced_writes".to_string(), fenced_writes);
        stats.insert("db_commits".to_string(), journal_seq.max(0) as u64);
        for (m, n) in self.chain.calls.lock().expect("calls").iter() {
            stats.insert(format!("rpc.{m}"), *n);
        }
        for (m, n) in self.db.calls.lock().expect("calls").iter() {
            stats.insert(format!("db.{m}"), *n);
        }
    }

    fn claims(&self) -> Vec<(u64, String, Vec<i64>)> {
        self.db.claims.lock().expect("claims").clone()
    }

    async fn finish(&mut self, _passed: bool) -> BTreeMap<String, Vec<String>> {
        BTreeMap::new()
    }

    fn labels(&self) -> (Option<String>, Option<String>) {
        (None, None)
    }

    fn coverage(&self) -> Option<crate::outcome::Coverage> {
        let c = dalp_engine::probe::sim::coverage();
        Some(crate::outcome::Coverage {
            probes: c.counts,
            fault_points: self.fault_points.clone(),
            fired: c.fired,
        })
    }
}

fn checkpoint(model: &DbModel) -> u64 {
    model
        .tables
        .indexer_checkpoint
        .get(&(CHAIN_ID as i64))
        .map(|c| c.last_block.max(0) as u64)
        .unwrap_or(0)
}

fn workflow_views(model: &DbModel) -> Vec<WorkflowView> {
    model
        .tables
        .workflows
        .values()
        .map(|w| WorkflowView {
            id: w.id,
            kind: w.kind.clone(),
            key: w.idempotency_key.clone(),
            status: w.status.as_str().to_string(),
            current_step: w.current_step,
            input: w.input.clone(),
            result: w.result.clone(),
            error: w.error.clone(),
        })
        .collect()
}

/// Balances from the indexed events at or below `height`, as the balances view computes them.
fn indexed_balances_at(model: &DbModel, height: u64) -> BTreeMap<(Address, Address), U256> {
    let mut out: BTreeMap<(Address, Address), U256> = BTreeMap::new();
    for e in model.token_events(CHAIN_ID) {
        if e.block_number > height {
            continue;
        }
        if e.from != Address::ZERO {
            let b = out.entry((e.contract, e.from)).or_default();
            *b = b.wrapping_sub(e.value);
        }
        if e.to != Address::ZERO {
            let b = out.entry((e.contract, e.to)).or_default();
            *b = b.wrapping_add(e.value);
        }
    }
    out
}

/// The database's (`model`: the primary's) and the chain's state at the end of the run.
fn collect(model: &DbModel, chain: &ChainWorld, ev: &mut Evidence) {
    ev.signer = chain.signer;
    ev.workflows = workflow_views(model);
    for row in model.tables.journal.values() {
        ev.journals
            .entry(row.workflow_id)
            .or_default()
            .push(row.entry());
    }
    ev.txs = model.txs().collect();
    ev.fillers = model.tables.nonce_fillers.keys().copied().collect();
    ev.notifications = Some(
        model
            .tables
            .notifications
            .iter()
            .map(|((wf, kind), row)| crate::check::effects::Notification {
                workflow_id: *wf,
                kind: kind.clone(),
                payload: row.payload.clone(),
            })
            .collect(),
    );
    ev.indexed_height = checkpoint(model);

    ev.step_completions = model
        .tables
        .journal
        .values()
        .filter(|r| r.event == "completed")
        .filter_map(|r| {
            let w = model.tables.workflows.get(&r.workflow_id)?;
            Some(crate::check::finality::StepCompletion {
                workflow_id: r.workflow_id,
                kind: w.kind.clone(),
                step: r.step_name.clone(),
                t_ms: r.at_ms,
                output: r.detail.clone().unwrap_or_default(),
            })
        })
        .collect();
    let mut m = chain.model.lock().expect("chain");
    ev.block_history = Some(m.history.clone());
    ev.finalized = m.finalized();
    ev.indexed_balances = indexed_balances_at(model, ev.finalized);
    for t in m.canonical_txs() {
        ev.chain_txs.push(ChainTx {
            hash: t.hash,
            from: t.from,
            nonce: t.nonce,
            to: t.to,
            success: t.success,
            block: t.block_number,
        });
        for log in &t.logs {
            if let Some(id) =
                IdentityLog::parse(t.block_number, log.address, &log.topics, &log.data)
            {
                ev.identities.push(id);
            }
            if log.topics.first() == Some(&AssetToken::Transfer::SIGNATURE_HASH)
                && log.topics.len() == 3
            {
                ev.transfers.push(TransferLog {
                    block: t.block_number,
                    contract: log.address,
                    from: Address::from_word(log.topics[1]),
                    to: Address::from_word(log.topics[2]),
                    value: U256::from_be_slice(&log.data[..32.min(log.data.len())]),
                });
            }
        }
    }
    let ready_to = m.pending_nonce_of(chain.signer);
    ev.signer_pending = m
        .pool
        .values()
        .filter(|t| t.from == chain.signer)
        .map(|t| (t.nonce, t.nonce < ready_to))
        .collect();
    let token_addrs: Vec<Address> = ev.tokens.values().copied().collect();
    for token in token_addrs {
        let mut read = |data: Vec<u8>| {
            m.call(chain.signer, token, &data)
                .ok()
                .map(|b| U256::from_be_slice(&b[..32.min(b.len())]))
        };
        let supply = read(AssetToken::totalSupplyCall {}.abi_encode()).unwrap_or_default();
        let bal = read(AssetToken::balanceOfCall(INVESTOR).abi_encode()).unwrap_or_default();
        let cap = read(AssetToken::maxBalanceCall {}.abi_encode());
        ev.supply.insert(token, supply);
        ev.investor_balance.insert(token, bal);
        if let Some(cap) = cap {
            ev.max_balance.insert(token, cap);
        }
    }
}
