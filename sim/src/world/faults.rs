//! The fault injector: applies a concrete fault schedule at simulated times, heals each fault when
//! its duration ends or at the heal instant (whichever comes first), and traces both, so the
//! timeline shows every fault as a span on the node it hit.

use super::chain_node::{ChainWorld, RpcMode};
use super::db_node::DbCluster;
use super::engine_node::EngineHost;
use super::{epoch_ms, ip, sleep_until_ms, t_ms, DB_SERVICE};
use crate::driver::{FaultOutcome, FaultTarget};
use crate::outcome::DataLoss;
use crate::scenario::{Direction, Fault, Scenario};
use crate::trace::Trace;
use alloy_primitives::U256;
use async_trait::async_trait;
use dalp_engine::store::WorkflowStatus;
use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Fleet {
    pub scenario: Arc<Scenario>,
    pub nodes: BTreeMap<String, NodeId>,
    pub db: Arc<DbCluster>,
    pub chain: Arc<ChainWorld>,
    pub engine_hosts: Vec<Arc<EngineHost>>,
    pub trace: Trace,
    /// The host operator actions run on.
    pub operator: madsim::runtime::NodeHandle,
    /// Hosts currently killed.
    pub down: Mutex<BTreeSet<String>>,
    paused: Mutex<BTreeMap<String, u32>>,
    /// Hashes of transactions sent outside the engine (external nonce use).
    pub external_txs: Mutex<Vec<alloy_primitives::B256>>,
    /// Commits lost by failovers.
    pub data_loss: Mutex<Vec<DataLoss>>,
}

impl Fleet {
    pub fn new(
        scenario: Arc<Scenario>,
        nodes: BTreeMap<String, NodeId>,
        db: Arc<DbCluster>,
        chain: Arc<ChainWorld>,
        engine_hosts: Vec<Arc<EngineHost>>,
        trace: Trace,
        operator: madsim::runtime::NodeHandle,
    ) -> Arc<Self> {
        Arc::new(Fleet {
            scenario,
            nodes,
            db,
            chain,
            engine_hosts,
            trace,
            operator,
            down: Mutex::default(),
            paused: Mutex::default(),
            external_txs: Mutex::default(),
            data_loss: Mutex::default(),
        })
    }

    fn id(&self, name: &str) -> NodeId {
        *self
            .nodes
            .get(name)
            .unwrap_or_else(|| panic!("validated node {name} exists"))
    }

    fn kill(&self, name: &str) -> bool {
        if !self.down.lock().expect("down").insert(name.to_string()) {
            return false;
        }
        Handle::current().kill(self.id(name));
        true
    }

    fn restart(&self, name: &str) {
        if self.down.lock().expect("down").remove(name) {
            // A fault point's crash may have restarted the node meanwhile (madsim restarts a
            // node that panicked after 1-10 s), and madsim's `restart` leaves the running
            // incarnation's sockets bound: kill first, which releases them.
            let h = Handle::current();
            h.kill(self.id(name));
            h.restart(self.id(name));
        }
    }

    /// Cut or restore the link from host `a` to host `b` (the network counts overlapping cuts).
    fn clog(&self, a: &str, b: &str, on: bool) {
        let ip = |n: &str| super::ip_of(n).unwrap_or_else(|| panic!("host {n} has an address"));
        super::net::cut(ip(a), ip(b), on);
    }

    fn partition(&self, node: &str, from: &[String], direction: Direction, on: bool) {
        let mut peers: BTreeSet<String> = from
            .iter()
            .flat_map(|p| self.scenario.expand(p).unwrap_or_default())
            .collect();
        // The metrics scraper sits on the clients' side of the network (like Prometheus next to
        // the load balancer): cut from `clients`, an engine is cut from its scraper too.
        if from.iter().any(|p| p == "clients") && self.nodes.contains_key(super::scrape::SCRAPER) {
            peers.insert(super::scrape::SCRAPER.to_string());
        }
        for p in peers {
            if matches!(direction, Direction::Both | Direction::Outbound) {
                self.clog(node, &p, on);
            }
            if matches!(direction, Direction::Both | Direction::Inbound) {
                self.clog(&p, node, on);
            }
        }
    }

    fn endpoints(&self, name: &str) -> Vec<usize> {
        self.scenario
            .expand(name)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.strip_prefix("rpc-").and_then(|k| k.parse().ok()))
            .collect()
    }

    /// The live replica with the most of the log (lowest index on a tie): what an operator or
    /// Patroni promotes.
    fn best_replica(&self, old: usize) -> Option<usize> {
        let down = self.down.lock().expect("down").clone();
        (0..self.db.disks.len())
            .filter(|j| *j != old && !down.contains(&format!("db-{j}")))
            .max_by_key(|j| {
                (
                    self.db.disks[*j].lock().expect("disk").lsn(),
                    usize::MAX - j,
                )
            })
    }

    /// Promote the best replica in place of the crashed primary `old`, rebuild the other live
    /// replicas from it, re-point `db.service`, and measure (and record) what was lost.
    fn fail_over(&self, old: usize) -> Option<(usize, Value)> {
        let to = self.best_replica(old)?;
        let lost = self.db.promote(to, old);
        let crash_epoch = epoch_ms();
        let down = self.down.lock().expect("down").clone();
        for j in 0..self.db.disks.len() {
            if j != to && j != old && !down.contains(&format!("db-{j}")) {
                self.db.rebuild_from_primary(j);
            }
        }
        NetSim::current().add_dns_record(DB_SERVICE, ip(2, to));
        let acked = self.db.acknowledged.lock().expect("acks").clone();
        let loss = DataLoss {
            lost_commits: Some(lost.len() as u64),
            lost_acknowledged: Some(
                lost.iter()
                    .filter(|e| acked.contains(&(old, e.lsn)))
                    .count() as u64,
            ),
            replication: format!("{:?}", self.db.replication).to_lowercase(),
            window_ms: lost
                .first()
                .map(|e| crash_epoch.saturating_sub(e.now_ms))
                .unwrap_or(0),
            ops: lost.iter().map(|e| e.req.name().to_string()).collect(),
            ..Default::default()
        };
        self.data_loss.lock().expect("loss").push(loss.clone());
        Some((to, json!(loss)))
    }

    /// Bring back every stopped host `which` selects; a database host other than the primary is
    /// first rebuilt from the primary (pg_rewind).
    fn rejoin(&self, which: impl Fn(&str) -> bool) -> Value {
        let p = self.db.primary();
        let down: Vec<String> = self.down.lock().expect("down").iter().cloned().collect();
        let mut rejoined = Vec::new();
        for name in down.iter().filter(|n| which(n)) {
            if let Some(j) = name
                .strip_prefix("db-")
                .and_then(|j| j.parse::<usize>().ok())
            {
                if j != p {
                    self.db.rebuild_from_primary(j);
                }
            }
            self.restart(name);
            rejoined.push(name.clone());
        }
        json!({"rejoined": rejoined, "primary": format!("db-{p}")})
    }

    fn engine_index(name: &str) -> usize {
        name.strip_prefix("engine-")
            .and_then(|i| i.parse().ok())
            .expect("engine name")
    }
}

#[async_trait]
impl FaultTarget for Fleet {
    fn t_ms(&self) -> u64 {
        t_ms()
    }

    async fn apply(&self, n: u64, fault: &Fault, heal_ms: u64) -> FaultOutcome {
        apply(self, n, fault, heal_ms).await
    }

    async fn heal(&self, n: u64, fault: &Fault) -> Value {
        heal(self, n, fault).await
    }
}

async fn apply(fleet: &Fleet, n: u64, fault: &Fault, heal_ms: u64) -> FaultOutcome {
    let detail = match fault {
        Fault::EngineCrash { node, .. } => {
            if !fleet.kill(node) {
                return FaultOutcome::Skipped("already down".into());
            }
            json!({})
        }
        Fault::EnginePause { node, .. } => {
            let mut p = fleet.paused.lock().expect("paused");
            let c = p.entry(node.clone()).or_insert(0);
            *c += 1;
            if *c == 1 {
                Handle::current().pause(fleet.id(node));
            }
            json!({})
        }
        Fault::Partition {
            node,
            from,
            direction,
            ..
        } => {
            fleet.partition(node, from, *direction, true);
            json!({})
        }
        Fault::ClockSkew { node, skew_ms, .. } => {
            fleet.engine_hosts[Fleet::engine_index(node)]
                .skew_ms
                .store(*skew_ms, Ordering::Relaxed);
            json!({})
        }
        Fault::DbCrash { node, .. } => {
            if !fleet.kill(node) {
                return FaultOutcome::Skipped("already down".into());
            }
            json!({})
        }
        Fault::DbFailover {
            promote_after_s, ..
        } => {
            let old = fleet.db.primary();
            let old_name = format!("db-{old}");
            if !fleet.kill(&old_name) {
                return FaultOutcome::Skipped("primary already down".into());
            }
            let promote_at = t_ms() + (promote_after_s * 1000.0) as u64;
            sleep_until_ms(promote_at.min(heal_ms)).await;
            let why = if !fleet.down.lock().expect("down").contains(&old_name) {
                Some(format!("{old_name} was back before the promotion"))
            } else if fleet.db.primary() != old {
                Some(format!("db-{} took over meanwhile", fleet.db.primary()))
            } else {
                None
            };
            if let Some(why) = why {
                // Another fault changed the roles meanwhile (a rejoin, a switchover): promoting
                // now would make a second primary. A failover manager fences or stands down;
                // this one stands down.
                return FaultOutcome::Applied(json!({"promoted": null, "why": why}));
            }
            match fleet.fail_over(old) {
                // Nothing to promote: the old primary comes back at heal.
                None => json!({"promoted": null}),
                Some((to, loss)) => {
                    json!({"old_primary": old_name, "promoted": format!("db-{to}"), "loss": loss})
                }
            }
        }
        Fault::DbSwitchover { .. } => return switchover(fleet, heal_ms).await,
        Fault::RegionFailover {
            promote_after_s, ..
        } => region_failover(fleet, *promote_after_s, heal_ms).await,
        Fault::OperatorRequeue { .. } => return operator_requeue(fleet).await,
        Fault::DbConnReset { .. } => {
            fleet.db.faults.lock().expect("faults").conn_reset += 1;
            json!({})
        }
        Fault::DbLostAck { rate, .. } => {
            fleet.db.faults.lock().expect("faults").lost_ack.push(*rate);
            json!({})
        }
        Fault::DbStaleSession { .. } => stale_session(fleet),
        Fault::DbLatency { extra_ms, .. } => {
            fleet
                .db
                .faults
                .lock()
                .expect("faults")
                .extra_latency_ms
                .push(*extra_ms);
            json!({})
        }
        Fault::RpcDown { endpoint, .. } => rpc_mode(fleet, n, endpoint, RpcMode::Down),
        Fault::RpcError {
            endpoint,
            method,
            code,
            ..
        } => rpc_mode(
            fleet,
            n,
            endpoint,
            RpcMode::Error(method.clone(), code.unwrap_or(503)),
        ),
        Fault::RpcTimeout {
            endpoint, method, ..
        } => rpc_mode(fleet, n, endpoint, RpcMode::Timeout(method.clone())),
        Fault::RpcAmbiguousSend { endpoint, .. } => {
            rpc_mode(fleet, n, endpoint, RpcMode::Ambiguous)
        }
        Fault::RpcLag {
            endpoint, blocks, ..
        } => rpc_mode(fleet, n, endpoint, RpcMode::Lag(*blocks)),
        Fault::RpcStaleFork {
            endpoint,
            methods,
            cache,
            ..
        } => {
            for k in fleet.endpoints(endpoint) {
                fleet.chain.freeze_backend(k, n, methods.clone(), *cache);
            }
            json!({"head": fleet.chain.model.lock().expect("chain").head()})
        }
        Fault::Reorg {
            depth, drop_txs, ..
        } => {
            let mut m = fleet.chain.model.lock().expect("chain");
            let before = m.head();
            let signer = fleet.chain.signer;
            let ours: BTreeSet<_> = m
                .canonical_txs()
                .into_iter()
                .filter(|t| t.from == signer)
                .map(|t| t.hash)
                .collect();
            fleet.chain.strand_backends(&m);
            let r = m.reorg(*depth, *drop_txs, epoch_ms());
            // What the engine could notice (the visibility checker reads these).
            let removed_signer_txs = r
                .reinjected
                .iter()
                .chain(&r.dropped)
                .filter(|h| ours.contains(*h))
                .count();
            let dropped_signer_txs = r.dropped.iter().filter(|h| ours.contains(*h)).count();
            json!({"head_before": before, "head_after": m.head(),
                "common_ancestor": r.common_ancestor, "removed_signer_txs": removed_signer_txs,
                "dropped_signer_txs": dropped_signer_txs})
        }
        Fault::MempoolDrop { .. } => {
            let dropped = fleet
                .chain
                .model
                .lock()
                .expect("chain")
                .drop_all_pending_from(fleet.chain.signer);
            json!({"dropped": dropped})
        }
        Fault::GasSpike { base_fee_gwei, .. } => {
            let fee = *base_fee_gwei as u128 * 1_000_000_000;
            let mut m = fleet.chain.model.lock().expect("chain");
            m.set_next_base_fee(fee);
            // The engine's own pending transactions, and those the spike leaves underpriced.
            let external = fleet.external_txs.lock().expect("ext").clone();
            let signer = fleet.chain.signer;
            let ours: Vec<_> = m
                .pool
                .values()
                .filter(|t| t.from == signer && !external.contains(&t.hash))
                .collect();
            let underpriced = ours.iter().filter(|t| t.max_fee < fee).count();
            json!({"signer_pending": ours.len(), "signer_underpriced": underpriced})
        }
        Fault::ExternalNonce { .. } => {
            let h = fleet
                .chain
                .model
                .lock()
                .expect("chain")
                .external_use_nonce(fleet.chain.signer);
            fleet.external_txs.lock().expect("ext").push(h);
            json!({"tx": h})
        }
        Fault::BalanceCap { cap, .. } => {
            let tokens = set_balance_caps(fleet, U256::from(*cap));
            if tokens.is_empty() {
                return FaultOutcome::Skipped("no token deployed yet".into());
            }
            json!({"cap": cap, "tokens": tokens})
        }
        Fault::SignerDrain { balance_gwei, .. } => {
            let mut m = fleet.chain.model.lock().expect("chain");
            let before = m.balance_of(fleet.chain.signer);
            let left = U256::from(balance_gwei.unwrap_or(0)) * U256::from(1_000_000_000u64);
            m.set_balance(fleet.chain.signer, left);
            json!({"balance_before": before.to_string()})
        }
    };
    FaultOutcome::Applied(detail)
}

/// A stale session on the primary holding the lowest running workflow's row lock.
fn stale_session(fleet: &Fleet) -> Value {
    let p = fleet.db.primary();
    let running = fleet.db.disks[p]
        .lock()
        .expect("disk")
        .model
        .tables
        .workflows
        .values()
        .find(|w| w.status == WorkflowStatus::Running && w.lease_owner.is_some())
        .map(|w| w.id);
    match running {
        None => json!({"workflow": null, "reason": "no workflow in flight"}),
        Some(wf) => {
            let until = fleet.db.leave_stale_session(p, wf);
            json!({"workflow": wf, "host": format!("db-{p}"), "ends_at_ms": until})
        }
    }
}

fn rpc_mode(fleet: &Fleet, n: u64, endpoint: &str, mode: RpcMode) -> Value {
    for k in fleet.endpoints(endpoint) {
        fleet.chain.add_mode(k, n, mode.clone());
    }
    json!({})
}

async fn heal(fleet: &Fleet, n: u64, fault: &Fault) -> Value {
    match fault {
        Fault::EngineCrash { node, .. } | Fault::DbCrash { node, .. } => {
            fleet.restart(node);
            json!({"restarted": node})
        }
        Fault::EnginePause { node, .. } => {
            let mut p = fleet.paused.lock().expect("paused");
            let c = p.entry(node.clone()).or_insert(1);
            *c -= 1;
            if *c == 0 {
                Handle::current().resume(fleet.id(node));
            }
            json!({})
        }
        Fault::Partition {
            node,
            from,
            direction,
            ..
        } => {
            fleet.partition(node, from, *direction, false);
            json!({})
        }
        Fault::ClockSkew { node, .. } => {
            fleet.engine_hosts[Fleet::engine_index(node)]
                .skew_ms
                .store(0, Ordering::Relaxed);
            json!({})
        }
        // The old primary rejoins as a replica rebuilt from the new primary (pg_rewind).
        Fault::DbFailover { .. } => fleet.rejoin(|name| name.starts_with("db-")),
        // The lost region comes back: its engines restart, its old primary rejoins as a replica.
        Fault::RegionFailover { .. } => fleet.rejoin(|_| true),
        // The session ends when the server's bound says, not at heal.
        Fault::DbSwitchover { .. }
        | Fault::OperatorRequeue { .. }
        | Fault::DbStaleSession { .. } => json!({}),
        Fault::DbConnReset { .. } => {
            fleet.db.faults.lock().expect("faults").conn_reset -= 1;
            json!({})
        }
        Fault::DbLostAck { rate, .. } => {
            let mut f = fleet.db.faults.lock().expect("faults");
            if let Some(i) = f.lost_ack.iter().position(|r| r == rate) {
                f.lost_ack.remove(i);
            }
            json!({})
        }
        Fault::DbLatency { extra_ms, .. } => {
            let mut f = fleet.db.faults.lock().expect("faults");
            if let Some(i) = f.extra_latency_ms.iter().position(|r| r == extra_ms) {
                f.extra_latency_ms.remove(i);
            }
            json!({})
        }
        Fault::RpcDown { endpoint, .. }
        | Fault::RpcError { endpoint, .. }
        | Fault::RpcTimeout { endpoint, .. }
        | Fault::RpcAmbiguousSend { endpoint, .. }
        | Fault::RpcLag { endpoint, .. } => {
            for k in fleet.endpoints(endpoint) {
                fleet.chain.remove_mode(k, n);
            }
            json!({})
        }
        Fault::RpcStaleFork { endpoint, .. } => {
            for k in fleet.endpoints(endpoint) {
                fleet.chain.thaw_backend(k, n);
            }
            json!({})
        }
        Fault::SignerDrain { .. } => {
            let topup = U256::from(10_000u64) * U256::from(10u64).pow(U256::from(18u64));
            fleet
                .chain
                .model
                .lock()
                .expect("chain")
                .set_balance(fleet.chain.signer, topup);
            json!({"topped_up_wei": topup.to_string()})
        }
        Fault::BalanceCap { .. } => json!({"lifted": set_balance_caps(fleet, U256::ZERO)}),
        Fault::Reorg { .. }
        | Fault::MempoolDrop { .. }
        | Fault::GasSpike { .. }
        | Fault::ExternalNonce { .. } => json!({}),
    }
}

/// Every token's per-holder balance cap (`maxBalance`) set to `cap` at the head, as a compliance
/// agent other than the engine's key would (ERC-3643 agents hold their own keys): written to the
/// token's storage like `anvil_setStorageAt`, so it takes none of the signer's nonces and lands
/// between the engine's pre-flight calls and its blocks. Returns the tokens changed.
fn set_balance_caps(fleet: &Fleet, cap: U256) -> Vec<alloy_primitives::Address> {
    let mut m = fleet.chain.model.lock().expect("chain");
    let tokens = m.contracts_created_by(fleet.chain.signer);
    for &token in &tokens {
        m.set_storage(token, crate::chain::MAX_BALANCE_SLOT, cap);
    }
    tokens
}

/// Demote the primary in place, promote the most advanced replica once it has caught up, and
/// re-point `db.service`. Nothing is lost; writes in between get 25006.
async fn switchover(fleet: &Fleet, heal_ms: u64) -> FaultOutcome {
    let old = fleet.db.primary();
    if fleet
        .down
        .lock()
        .expect("down")
        .contains(&format!("db-{old}"))
    {
        // A planned switchover needs a running primary; a failover of the crashed one is due.
        return FaultOutcome::Skipped("the primary is down".into());
    }
    fleet.db.disks[old].lock().expect("disk").role = super::db_node::Role::Replica;
    // Read-only now, so its log is final; it keeps shipping that log until a replica takes over.
    *fleet.db.draining.lock().expect("draining") = Some(old);
    let target_lsn = fleet.db.disks[old].lock().expect("disk").lsn();
    let down = fleet.down.lock().expect("down").clone();
    let candidates: Vec<usize> = (0..fleet.db.disks.len())
        .filter(|j| *j != old && !down.contains(&format!("db-{j}")))
        .collect();
    let deadline = (t_ms() + 10_000).min(heal_ms);
    let lsn = |j: usize| fleet.db.disks[j].lock().expect("disk").lsn();
    wait_for(
        || candidates.iter().any(|j| lsn(*j) >= target_lsn),
        Duration::from_millis(10),
        deadline,
    )
    .await;
    *fleet.db.draining.lock().expect("draining") = None;
    let Some(to) = fleet.best_replica(old) else {
        fleet.db.disks[old].lock().expect("disk").role = super::db_node::Role::Primary;
        return FaultOutcome::Skipped("no live replica".into());
    };
    let lost = fleet.db.promote(to, old);
    NetSim::current().add_dns_record(DB_SERVICE, ip(2, to));
    if !lost.is_empty() {
        // The replica took over without the old primary's tail (it did not catch up in time):
        // the old primary's log has forked from the new timeline, so it is rewound and rebuilt
        // from the new primary (pg_rewind) instead of replaying the new log on a diverged state.
        fleet.db.rebuild_from_primary(old);
    }
    FaultOutcome::Applied(
        json!({"demoted": format!("db-{old}"), "promoted": format!("db-{to}"), "lost_commits": lost.len(),
           "rewound": !lost.is_empty()}),
    )
}

/// The hot-warm drill: lose the active region (engines and primary), promote the replica,
/// start the standby engines.
async fn region_failover(fleet: &Fleet, promote_after_s: f64, heal_ms: u64) -> Value {
    let standby = &fleet.scenario.topology.standby_engines;
    let mut killed = Vec::new();
    for name in fleet.scenario.engine_names() {
        if !standby.contains(&name) && fleet.kill(&name) {
            killed.push(name);
        }
    }
    let old = fleet.db.primary();
    let old_name = format!("db-{old}");
    if fleet.kill(&old_name) {
        killed.push(old_name);
    }
    let started = t_ms();
    sleep_until_ms((started + (promote_after_s * 1000.0) as u64).min(heal_ms)).await;
    let promoted = fleet.fail_over(old);
    let best = promoted.as_ref().map(|(to, _)| *to);
    let loss = promoted.map_or(Value::Null, |(_, loss)| loss);
    for name in standby {
        let host = &fleet.engine_hosts[Fleet::engine_index(name)];
        host.standby.store(false, Ordering::Relaxed);
        host.activated.notify_waiters();
    }
    json!({"lost_region": killed, "promoted": best.map(|j| format!("db-{j}")), "loss": loss,
           "standby_started": standby, "switch_ms": t_ms() - started})
}

/// List the dead-letter queue through an engine's API and requeue every entry, as an operator
/// would; tries the engines in order until one answers.
async fn operator_requeue(fleet: &Fleet) -> FaultOutcome {
    use super::engine_node::{ApiRequest, ApiResponse};
    let engines = fleet.scenario.engine_names().len();
    let task = fleet.operator.spawn(async move {
        let client = super::net::Client::bind(
            super::ip_of(crate::driver::OPERATOR).expect("the operator has an address"),
        );
        let timeout = Duration::from_secs(3);
        for e in 0..engines {
            let addr = super::engine_addr(e);
            let Ok(ApiResponse::DeadLetters(ids)) = client
                .call::<ApiRequest, ApiResponse>(addr, ApiRequest::DeadLetters, timeout)
                .await
            else {
                continue;
            };
            let mut requeued = Vec::new();
            let mut refused = Vec::new();
            for id in ids {
                let req = ApiRequest::Requeue {
                    id,
                    actor: "sim-operator".into(),
                    reason: "scenario: the cause was removed".into(),
                };
                match client
                    .call::<ApiRequest, ApiResponse>(addr, req, timeout)
                    .await
                {
                    Ok(ApiResponse::Requeued) => requeued.push(id),
                    _ => refused.push(id),
                }
            }
            return FaultOutcome::Applied(
                json!({"engine": e, "requeued": requeued, "refused": refused}),
            );
        }
        FaultOutcome::Skipped("no engine answered".into())
    });
    task.await.unwrap_or(FaultOutcome::Applied(Value::Null))
}

/// Wait helper for the runner: true once `f` holds, polling every `every`, or false at `deadline_ms`.
pub async fn wait_for(mut f: impl FnMut() -> bool, every: Duration, deadline_ms: u64) -> bool {
    loop {
        if f() {
            return true;
        }
        if t_ms() >= deadline_ms {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}
