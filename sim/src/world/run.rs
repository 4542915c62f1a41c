//! One run: build the world for a scenario and a seed, run the workload under the fault
//! schedule, heal, wait out the liveness phase, collect the evidence and check the invariants.

use super::chain_node::{miner, rpc_process, ChainWorld};
use super::db_node::{db_process, DbCluster};
use super::engine_node::{engine_config, engine_process, EngineHost, CHAIN_ID, SIGNER_KEY};
use super::faults::{inject, wait_for, Fleet};
use super::scrape::{
    evidence as scrape_evidence, scraper_process, ScrapeLog, SCRAPER, SCRAPE_INTERVAL_MS,
};
use super::workload::{client_process, SimApi};
use super::{epoch_ms, ip, t_ms, DB_SERVICE};
use crate::chain::{ChainModel, ChainParams};
use crate::check::WorkflowView;
use crate::check::{check, ChainTx, Evidence, TransferLog};
use crate::client::{ClientCtx, TokenBook};
use crate::db::DbModel;
use crate::history::{summarize, History};
use crate::plan::{plan, INVESTOR};
use crate::scenario::{Fault, Scenario};
use crate::trace::Trace;
use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, SolEvent};
use dalp_engine::contracts::AssetToken;
use dalp_engine::signer::SignerKey;
use madsim::net::NetSim;
use madsim::runtime::{Handle, Runtime};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::outcome::RunResult;

/// Run `scenario` with `seed` and the concrete `schedule` in a fresh madsim runtime.
/// Call once per process (madsim keeps statics across runtimes).
pub fn run_seed(scenario: Arc<Scenario>, seed: u64, schedule: Vec<Fault>) -> (RunResult, Trace) {
    let mut cfg = madsim::Config::default();
    let [lo, hi] = scenario.topology.net_latency_ms;
    cfg.net.send_latency = Duration::from_millis(lo)..Duration::from_millis(hi.max(lo) + 1);
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
            let rt = Runtime::with_seed_and_config(seed, cfg);
            rt.block_on(async move { world(scenario, seed, schedule, t).await })
        })
        .expect("start the simulation thread")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    (result, trace)
}

async fn world(s: Arc<Scenario>, seed: u64, schedule: Vec<Fault>, trace: Trace) -> RunResult {
    let handle = Handle::current();
    let topo = &s.topology;
    let history = History::default();
    let tokens: TokenBook = Arc::new(Mutex::new(BTreeMap::new()));
    let signer = SignerKey::from_hex(SIGNER_KEY)
        .expect("signer key")
        .address();
    let heal_ms = (s.durations.fault_phase_s * 1000.0).round() as u64;
    let deadline_ms = heal_ms + (s.durations.liveness_bound_s * 1000.0).round() as u64;
    trace.record(
        0,
        "sim",
        "phase",
        "start",
        json!({"scenario": s.name, "seed": seed, "faults": schedule.len()}),
    );
    let mut nodes = BTreeMap::new();

    // The chain and its RPC endpoints.
    let eth = U256::from(10u64).pow(U256::from(18u64));
    let chain = Arc::new(ChainWorld {
        model: Mutex::new(ChainModel::new(
            ChainParams {
                chain_id: CHAIN_ID,
                block_time_ms: topo.block_time_ms,
                finality_depth: topo.finality_depth,
                ..ChainParams::anvil(vec![(signer, U256::from(10_000u64) * eth)])
            },
            epoch_ms(),
        )),
        modes: Mutex::default(),
        calls: Mutex::default(),
        faulted: Mutex::default(),
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

    // The database hosts; `db.service` names the primary.
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

    // The engine hosts.
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
        );
        let tr = trace.clone();
        let n = handle
            .create_node()
            .name(name.clone())
            .ip(ip(1, i))
            .init(move || engine_process(i, config.clone(), host.clone(), seed, tr.clone()))
            .build();
        nodes.insert(name, n.id());
    }

    // The clients and their planned operations.
    let planned = plan(&s, seed);
    trace.record(
        0,
        "sim",
        "phase",
        "plan",
        json!({"operations": planned.len()}),
    );
    for c in 0..s.workload.clients as usize {
        let ops: Vec<_> = planned
            .iter()
            .filter(|o| o.client as usize == c)
            .cloned()
            .collect();
        let (name, engines, timeout) = (
            format!("client-{c}"),
            topo.engines as usize,
            Duration::from_millis(s.workload.client_timeout_ms),
        );
        let (history, tokens) = (history.clone(), tokens.clone());
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
                        api: SimApi::bind(timeout).await,
                    });
                    client_process(ctx, ops).await
                }
            })
            .build();
        nodes.insert(format!("client-{c}"), n.id());
    }

    // The metrics scraper (invariant 9), only when that invariant is checked: its traffic shifts
    // the run's timing, so scenarios without it keep their trace hashes.
    let scrape_log = Arc::new(Mutex::new(ScrapeLog::default()));
    let visibility = s.invariants.iter().any(|i| i == "visibility");
    if visibility {
        let (log, tr, engines) = (scrape_log.clone(), trace.clone(), topo.engines as usize);
        let n = handle
            .create_node()
            .name(SCRAPER)
            .ip(ip(7, 0))
            .init(move || scraper_process(engines, log.clone(), tr.clone()))
            .build();
        nodes.insert(SCRAPER.to_string(), n.id());
    }

    // Faults, and the host operator actions run on.
    let operator = handle
        .create_node()
        .name(super::faults::OPERATOR)
        .ip(ip(6, 0))
        .build();
    let fleet = Fleet::new(
        s.clone(),
        nodes,
        db.clone(),
        chain.clone(),
        hosts,
        trace.clone(),
        operator,
    );
    let injector = tokio::spawn(inject(fleet.clone(), schedule.clone(), heal_ms));
    super::sleep_until_ms(heal_ms).await;
    let _ = injector.await;
    trace.record(t_ms(), "sim", "phase", "healed", Value::Null);

    // Liveness: every accepted request must finish within the bound.
    let all_done = |h: &History| {
        summarize(&h.ops())
            .values()
            .filter(|o| o.accepted_at.is_some())
            .all(|o| o.observed.is_some())
    };
    let planned_n = planned.len();
    let settled = |h: &History| {
        // Every planned op was either refused, or accepted and observed finished; an op whose
        // submissions all went unanswered so far is still in play (the client keeps retrying).
        let sums = summarize(&h.ops());
        sums.len() == planned_n && sums.values().all(|o| o.observed.is_some() || o.refused)
    };
    let h = history.clone();
    wait_for(|| settled(&h), Duration::from_millis(500), deadline_ms).await;
    let finished_ms = summarize(&history.ops())
        .values()
        .filter_map(|o| o.observed.as_ref().map(|x| x.0))
        .max();
    let recovery_ms = all_done(&history)
        .then(|| finished_ms.map(|f| f.saturating_sub(heal_ms)))
        .flatten();
    trace.record(
        t_ms(),
        "sim",
        "phase",
        "liveness_done",
        json!({"recovery_ms": recovery_ms}),
    );

    // Let the indexer reach the finalized height (bounded).
    let settle_deadline = t_ms() + 30_000;
    let target = chain.model.lock().expect("chain").finalized();
    let dbc = db.clone();
    wait_for(
        || indexed_height(&dbc) >= target,
        Duration::from_millis(500),
        settle_deadline,
    )
    .await;

    let mut ev = collect(&db, &chain, &fleet, &history, &tokens, heal_ms, deadline_ms);
    if visibility {
        // Give the last fault its full bound before judging it.
        let bound_ms = (s.durations.visibility_bound_s.unwrap_or(15.0).max(0.0) * 1000.0) as u64;
        let cfg = engine_config(0, 1, topo.finality_depth, false);
        let stuck_ms = cfg.chain.stuck_after_ms;
        let last_start = schedule.iter().map(|f| (f.at_s() * 1000.0) as u64).max();
        if let Some(t) = last_start {
            let window = bound_ms.max(stuck_ms + 2 * SCRAPE_INTERVAL_MS);
            super::sleep_until_ms(t + window + SCRAPE_INTERVAL_MS).await;
        }
        let db_timeout_ms = cfg.db_timeout().as_millis() as u64;
        let faulted = chain.faulted.lock().expect("faulted").clone();
        ev.visibility = scrape_evidence(
            &scrape_log,
            &trace,
            bound_ms,
            db_timeout_ms,
            stuck_ms,
            &faulted,
        );
    }
    ev.investor = INVESTOR;
    ev.max_dead_letters = s.expect.max_dead_letters;
    ev.stale_writes_accepted = db.stale_writes_accepted.lock().expect("stale").clone();
    ev.data_loss = fleet.data_loss.lock().expect("loss").clone();
    {
        let m = chain.model.lock().expect("chain");
        let extra = json!({
            "signer_nonce_latest": m.nonce_of(signer),
            "signer_nonce_pending": m.pending_nonce_of(signer),
        });
        trace.record(
            t_ms(),
            "sim",
            "phase",
            "final_state",
            ev.final_state(m.head(), extra),
        );
    }
    let verdicts = check(&s.invariants, &ev);
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
    stats.insert(
        "chain_head".to_string(),
        chain.model.lock().expect("chain").head(),
    );
    // Read in place: the evidence already holds its own copy of the tables.
    let (fenced_writes, journal_seq) = {
        let disk = db.disks[db.primary()].lock().expect("disk");
        (disk.model.fenced_writes, disk.model.sequences.journal)
    };
    stats.insert("fenced_writes".to_string(), fenced_writes);
    stats.insert("db_commits".to_string(), journal_seq.max(0) as u64);
    for (m, n) in chain.calls.lock().expect("calls").iter() {
        stats.insert(format!("rpc.{m}"), *n);
    }
    for (m, n) in db.calls.lock().expect("calls").iter() {
        stats.insert(format!("db.{m}"), *n);
    }
    let data_loss = fleet.data_loss.lock().expect("loss").clone();
    let ops = crate::timing::op_timings(
        &planned
            .iter()
            .map(|o| (o.index, o.kind.name().to_string(), o.kind.token(), o.at_ms))
            .collect::<Vec<_>>(),
        &history.ops(),
        &db.claims.lock().expect("claims"),
    );
    let fault_windows = crate::timing::fault_windows(&schedule, heal_ms);
    RunResult {
        scenario: s.name.clone(),
        seed,
        passed,
        verdicts,
        trace_hash: trace.hash_hex(),
        trace_events: trace.len(),
        recovery_ms: if recovery_ms.is_some() {
            crate::check::recovery_ms(&ops, &fault_windows, heal_ms)
        } else {
            None
        },
        ops,
        fault_windows,
        schedule,
        data_loss,
        simulated_ms: t_ms(),
        stats,
        backend: None,
        provider: None,
        not_applicable: Vec::new(),
        engine_logs: Default::default(),
    }
}

fn indexed_height(db: &DbCluster) -> u64 {
    checkpoint(&db.disks[db.primary()].lock().expect("disk").model)
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

fn collect(
    db: &DbCluster,
    chain: &ChainWorld,
    fleet: &Fleet,
    history: &History,
    tokens: &TokenBook,
    heal_ms: u64,
    deadline_ms: u64,
) -> Evidence {
    let model = db.primary_model();
    let mut ev = Evidence {
        ops: history.ops(),
        heal_ms,
        liveness_deadline_ms: deadline_ms,
        signer: chain.signer,
        external_txs: fleet.external_txs.lock().expect("ext").clone(),
        tokens: tokens.lock().expect("tokens").clone(),
        ..Default::default()
    };
    ev.workflows = workflow_views(&model);
    for row in model.tables.journal.values() {
        ev.journals
            .entry(row.workflow_id)
            .or_default()
            .push(row.entry());
    }
    ev.txs = model.txs().collect();
    ev.fillers = model.tables.nonce_fillers.keys().copied().collect();
    ev.indexed_height = checkpoint(&model);

    let mut m = chain.model.lock().expect("chain");
    ev.finalized = m.finalized();
    ev.indexed_balances = indexed_balances_at(&model, ev.finalized);
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
        let supply = m
            .call(
                chain.signer,
                token,
                &AssetToken::totalSupplyCall {}.abi_encode(),
            )
            .ok()
            .map(|b| U256::from_be_slice(&b[..32.min(b.len())]))
            .unwrap_or_default();
        let bal = m
            .call(
                chain.signer,
                token,
                &AssetToken::balanceOfCall(INVESTOR).abi_encode(),
            )
            .ok()
            .map(|b| U256::from_be_slice(&b[..32.min(b.len())]))
            .unwrap_or_default();
        ev.supply.insert(token, supply);
        ev.investor_balance.insert(token, bal);
    }
    ev
}
