//! The phases of one run, written once for both backends: start, plan, workload, fault phase,
//! heal, liveness, indexer settle, evidence, checks, result.
//!
//! A backend (the simulated world in `world::run`, real services in `real::run`) says only what
//! differs: how its clients and faults reach the engines, where its evidence comes from, and what
//! it cannot judge. The trace records of the phases, the fault/heal spans, the verdict loop and
//! the result are made here, so the two backends cannot drift apart in what a run means.
//!
//! Time is the backend's clock (`Backend::t_ms`) and `tokio::time` (madsim's in the simulation,
//! the real runtime's otherwise); a simulated run stays a pure function of its seed.

use crate::check::{check, recovery_ms, Evidence};
use crate::client::TokenBook;
use crate::history::History;
use crate::outcome::{NotApplicable, RunResult};
use crate::plan::{plan, PlannedOp, INVESTOR};
use crate::scenario::{Fault, FaultKind, Scenario};
use crate::timing::{fault_windows, op_timings};
use crate::trace::{Event, Trace};
use crate::verdict::Verdict;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the liveness and indexer-settle phases look again.
const POLL: Duration = Duration::from_millis(500);
/// How long the indexer gets to reach the finalized height after the liveness phase.
const SETTLE_MS: u64 = 30_000;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// What applying one fault did.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultOutcome {
    /// Applied; the detail the trace records. Healed at the fault's end.
    Applied(Value),
    /// Nothing to do in the run's present state (a crash of a node already down): not healed.
    Skipped(String),
    /// No counterpart on this backend: recorded with the reason in the result, never healed.
    NotApplicable(String),
}

impl FaultOutcome {
    /// The trace's `applied` detail.
    pub fn detail(&self) -> Value {
        match self {
            FaultOutcome::Applied(v) => v.clone(),
            FaultOutcome::Skipped(why) => json!({ "skipped": why }),
            FaultOutcome::NotApplicable(why) => json!({ "not_applicable": why }),
        }
    }
}

/// What faults are applied to. `n` is the fault's index in the schedule.
#[async_trait]
pub trait FaultTarget: Send + Sync + 'static {
    /// The run's clock (as `Backend::t_ms`).
    fn t_ms(&self) -> u64;
    async fn apply(&self, n: u64, fault: &Fault, heal_ms: u64) -> FaultOutcome;
    /// Undo an applied fault; the detail the trace records.
    async fn heal(&self, n: u64, fault: &Fault) -> Value;
}

/// The clients' shared state, handed to the backend that starts them.
pub struct Workload {
    /// Per client (`client-<c>`), its planned operations in plan order.
    pub clients: Vec<Vec<PlannedOp>>,
    pub history: History,
    pub tokens: TokenBook,
    /// Clients stop trying at this time.
    pub deadline_ms: u64,
}

/// What differs between the simulation and real services. Called in this order: `start_detail`,
/// `start_workload`, `fault_target` (then the schedule runs), `finalized` / `indexed_height`,
/// `collect`, `can_judge`, `observe_visibility`, `recorded`, `final_state`, `stats`, `claims`,
/// `finish`, `labels`. A backend dropped early (an error) must still stop what it started.
#[async_trait(?Send)]
pub trait Backend {
    /// Milliseconds since the run's clock started (the schedule's time base).
    fn t_ms(&self) -> u64;
    /// What the trace's `start` record adds (the provider, provisioning time, …).
    fn start_detail(&self) -> Value;
    /// Start every client on its operations.
    async fn start_workload(&mut self, w: &Workload);
    /// What the schedule's faults are applied to (created now: in the simulation, the hosts the
    /// fault injector and the operator run on).
    fn fault_target(&mut self) -> Arc<dyn FaultTarget>;
    /// Whether the fault phase may end before `fault_phase_s` once it is quiet: every fault has
    /// run its course and every operation is settled. A backend that waits on real time says
    /// yes (the rest of the phase would be idle wall time); the simulation keeps the scenario's
    /// heal instant, so its schedule and every trace hash stay as they are.
    fn heals_when_quiet(&self) -> bool {
        false
    }
    /// How many of the workflows `ids` the database holds and has not finished, read without
    /// disturbing the run; `None` when the backend cannot tell. A commit the client saw can be
    /// lost by an asynchronous failover, and the workflow then runs again: the liveness phase
    /// waits for it as well. (One that is gone is not waited for: nothing brings it back, and
    /// durability judges it.)
    async fn unfinished(&self, _ids: &std::collections::BTreeSet<i64>) -> Option<usize> {
        None
    }
    /// The finalized height the indexer must reach before the evidence is read.
    async fn finalized(&self) -> Result<u64>;
    async fn indexed_height(&self) -> u64;
    /// The state at the end of the run into `ev` (which holds the history, tokens and bounds).
    async fn collect(&self, ev: &mut Evidence) -> Result<()>;
    /// Whether this backend can judge `invariant` (the real backend has no metrics scraper for
    /// `visibility` and no fault-free baseline for `isolation`).
    fn can_judge(&self, invariant: &str) -> bool;
    /// The evidence of `visibility` (the engines' scraped metrics against the faults); waits
    /// until the last fault had its full bound. Called only when judged.
    async fn observe_visibility(&self, schedule: &[Fault], ev: &mut Evidence);
    /// What the fault layer recorded over the whole run (data loss, stale writes, external txs).
    fn recorded(&self, ev: &mut Evidence);
    /// The chain head and backend-specific fields of the trace's `final_state` record.
    async fn final_state(&self) -> Result<(u64, Value)>;
    /// Backend counters added to the result's `stats`.
    async fn stats(&self, stats: &mut BTreeMap<String, u64>);
    /// Claims per engine (`t_ms`, engine, workflow ids) for the operations' timings.
    fn claims(&self) -> Vec<(u64, String, Vec<i64>)>;
    /// Stop what runs; on a failed run, each engine's last warnings and errors.
    async fn finish(&mut self, passed: bool) -> BTreeMap<String, Vec<String>>;
    /// `backend` and `provider` of the result (absent for the simulation).
    fn labels(&self) -> (Option<String>, Option<String>);
    /// The engine's probe counts and the fault points armed (`None`: the backend has none).
    fn coverage(&self) -> Option<crate::outcome::Coverage>;
}

/// Run `scenario` with `seed` and `schedule` on `backend`.
pub async fn drive<B: Backend>(
    mut b: B,
    s: &Scenario,
    seed: u64,
    schedule: Vec<Fault>,
    trace: &Trace,
) -> Result<RunResult> {
    let planned_heal_ms = (s.durations.fault_phase_s * 1000.0).round() as u64;
    let liveness_ms = (s.durations.liveness_bound_s * 1000.0).round() as u64;
    let deadline_ms = planned_heal_ms + liveness_ms;
    let mut start = json!({"scenario": s.name, "seed": seed, "faults": schedule.len()});
    if let (Some(m), Value::Object(extra)) = (start.as_object_mut(), b.start_detail()) {
        m.extend(extra);
    }
    trace.record(0, "sim", "phase", "start", start);

    // The clients and their planned operations.
    let planned = plan(s, seed);
    trace.record(
        b.t_ms(),
        "sim",
        "phase",
        "plan",
        json!({"operations": planned.len()}),
    );
    let workload = Workload {
        clients: (0..s.workload.clients)
            .map(|c| planned.iter().filter(|o| o.client == c).cloned().collect())
            .collect(),
        history: History::default(),
        tokens: Arc::new(Mutex::new(BTreeMap::new())),
        deadline_ms,
    };
    b.start_workload(&workload).await;
    let history = &workload.history;

    // Faults until the heal instant (earlier once quiet, where the backend allows).
    let target = b.fault_target();
    let quiet = b
        .heals_when_quiet()
        .then_some(|| settled(history, planned.len()));
    let (not_applicable, heal_ms) =
        run_schedule(target, &schedule, planned_heal_ms, quiet, trace).await;
    let healed = match heal_ms < planned_heal_ms {
        true => json!({"quiet_before_ms": planned_heal_ms}),
        false => Value::Null,
    };
    trace.record(b.t_ms(), "sim", "phase", "healed", healed);
    // The liveness bound counts from the heal, as the scenario states it.
    let deadline_ms = heal_ms + liveness_ms;

    let coarse_recovery = liveness(&b, history, planned.len(), heal_ms, deadline_ms, trace).await;
    let liveness_ended_ms = b.t_ms();
    settle_indexer(&b).await?;

    // Evidence, then the checks.
    let mut ev = Evidence {
        ops: history.ops(),
        heal_ms,
        liveness_deadline_ms: deadline_ms,
        liveness_ended_ms,
        tokens: workload.tokens.lock().expect("tokens").clone(),
        investor: INVESTOR,
        max_dead_letters: s.expect.max_dead_letters,
        confirmations: s.confirmations(),
        max_attempts: s.max_attempts(),
        finality_depth: s.topology.finality_depth,
        rpc_endpoints: s.topology.rpc_endpoints as usize,
        fault_windows: fault_windows(&schedule, heal_ms),
        ..Default::default()
    };
    let (verdicts, head, not_judged) = judge(&mut b, s, &schedule, &mut ev, trace).await?;
    let passed = verdicts.iter().all(|v| v.held);

    // The result.
    let mut stats = ev.stats();
    stats.insert("chain_head".to_string(), head);
    b.stats(&mut stats).await;
    let timed: Vec<_> = planned
        .iter()
        .map(|o| (o.index, o.kind.name().to_string(), o.kind.token(), o.at_ms))
        .collect();
    let ops = op_timings(&timed, &history.ops(), &b.claims());
    let fault_windows = fault_windows(&schedule, heal_ms);
    let recovery_ms = coarse_recovery.and_then(|_| recovery_ms(&ops, &fault_windows, heal_ms));
    let mut not_applicable = not_applicable;
    for invariant in not_judged {
        not_applicable.push(NotApplicable::Invariant {
            invariant,
            reason: "checked in the simulation only (needs the metrics scraper / a fault-free baseline run)".into(),
        });
    }
    let coverage = b.coverage();
    if s.fault_points.is_some() && coverage.is_none() {
        not_applicable.push(NotApplicable::Setting {
            setting: "fault_points".into(),
            reason: "the engine's fault points are compiled into the simulation only".into(),
        });
    }
    if s.topology.mempool != crate::scenario::Mempool::Anvil && coverage.is_none() {
        not_applicable.push(NotApplicable::Setting {
            setting: "topology.mempool".into(),
            reason: "the real backend's chain is Anvil, with Anvil's pool rules".into(),
        });
    }
    let engine_logs = b.finish(passed).await;
    let (backend, provider) = b.labels();
    Ok(RunResult {
        scenario: s.name.clone(),
        seed,
        passed,
        verdicts,
        trace_hash: trace.hash_hex(),
        trace_events: trace.len(),
        schedule,
        recovery_ms,
        data_loss: ev.data_loss,
        simulated_ms: b.t_ms(),
        stats,
        ops,
        fault_windows,
        backend,
        provider,
        not_applicable,
        engine_logs,
        coverage,
        swarm: None,
    })
}

/// Wait until every planned operation was refused or seen finished and the database holds every
/// workflow the clients were given as finished, or the liveness bound. The heal-to-last-finish
/// time when every accepted operation finished.
async fn liveness<B: Backend>(
    b: &B,
    history: &History,
    planned: usize,
    heal_ms: u64,
    deadline_ms: u64,
    trace: &Trace,
) -> Option<u64> {
    while b.t_ms() < deadline_ms {
        if settled(history, planned) {
            // Asked only once the clients are settled, so a run with nothing lost polls exactly
            // as it did before this check existed.
            let ids = accepted_ids(history);
            if b.unfinished(&ids).await.is_none_or(|n| n == 0) {
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let sums = history.summary();
    let all_done = sums
        .values()
        .filter(|o| o.accepted_at.is_some())
        .all(|o| o.observed.is_some());
    let last_finished = sums
        .values()
        .filter_map(|o| o.observed.as_ref().map(|x| x.0))
        .max();
    let recovery = all_done
        .then(|| last_finished.map(|f| f.saturating_sub(heal_ms)))
        .flatten();
    trace.record(
        b.t_ms(),
        "sim",
        "phase",
        "liveness_done",
        json!({"recovery_ms": recovery}),
    );
    recovery
}

/// Whether every planned operation was refused or seen finished. An op whose submissions all went
/// unanswered so far is still in play (its client keeps retrying).
fn settled(history: &History, planned: usize) -> bool {
    let sums = history.summary();
    sums.len() == planned && sums.values().all(|o| o.observed.is_some() || o.refused)
}

/// The workflows the clients were given for accepted requests and did not find gone: those the
/// durability checker judges.
fn accepted_ids(history: &History) -> std::collections::BTreeSet<i64> {
    history
        .summary()
        .values()
        .filter(|o| o.accepted_at.is_some())
        .flat_map(|o| o.workflow_ids.iter().filter(|id| !o.lost_ids.contains(id)))
        .copied()
        .collect()
}

/// Let the indexer reach the finalized height (bounded by `SETTLE_MS`). The target is read
/// again on every poll: an indexer that is catching up (restarted late in the run) takes
/// seconds, and the chain finalizes blocks meanwhile; the evidence is read against the height
/// finalized when the settling ends, not when it began.
async fn settle_indexer<B: Backend>(b: &B) -> Result<()> {
    let settle_until = b.t_ms() + SETTLE_MS;
    while b.indexed_height().await < b.finalized().await? && b.t_ms() < settle_until {
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Complete the evidence, trace the final state, and check the invariants this backend can
/// judge: the verdicts, the chain head, and the invariants left unjudged.
async fn judge<B: Backend>(
    b: &mut B,
    s: &Scenario,
    schedule: &[Fault],
    ev: &mut Evidence,
    trace: &Trace,
) -> Result<(Vec<Verdict>, u64, Vec<String>)> {
    b.collect(ev).await?;
    let mut names = s.invariants.clone();
    for always in crate::scenario::ALWAYS_CHECKED {
        if !names.iter().any(|n| n == always) {
            names.push(always.to_string());
        }
    }
    let (invariants, not_judged): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|i| b.can_judge(i));
    if invariants.iter().any(|i| i == "visibility") {
        b.observe_visibility(schedule, ev).await;
    }
    b.recorded(ev);
    let (head, extra) = b.final_state().await?;
    trace.record(
        b.t_ms(),
        "sim",
        "phase",
        "final_state",
        ev.final_state(head, extra),
    );
    let verdicts = check(&invariants, ev);
    for v in &verdicts {
        trace.record(
            b.t_ms(),
            "sim",
            "check",
            &v.invariant,
            json!({"held": v.held, "violations": v.violation_count}),
        );
    }
    Ok((verdicts, head, not_judged))
}

/// Apply every fault at its time and heal it at its end (or the heal instant), each in a task
/// of its own, until `heal_ms`; with `quiet`, until the first poll after every fault task has
/// ended (none lasts until the heal) at which `quiet()` holds, if that comes first. Returns
/// once every fault has healed: the faults this backend could not apply, and the heal instant.
async fn run_schedule(
    target: Arc<dyn FaultTarget>,
    schedule: &[Fault],
    heal_ms: u64,
    quiet: Option<impl Fn() -> bool>,
    trace: &Trace,
) -> (Vec<NotApplicable>, u64) {
    // One injector task spawning one task per fault (the shape the simulation's task schedule,
    // and so every trace hash, was recorded with).
    let (t, schedule, trace) = (target.clone(), schedule.to_vec(), trace.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let faults_done = done.clone();
    let injector = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for (n, fault) in schedule.into_iter().enumerate() {
            let (target, trace) = (t.clone(), trace.clone());
            tasks.push(tokio::spawn(async move {
                one(&*target, n as u64, fault, heal_ms, &trace).await
            }));
        }
        let mut not_applicable = Vec::new();
        for t in tasks {
            if let Ok(Some(na)) = t.await {
                not_applicable.push(na);
            }
        }
        faults_done.store(true, std::sync::atomic::Ordering::SeqCst);
        not_applicable
    });
    let healed = match quiet {
        None => {
            sleep_until_ms(&*target, heal_ms).await;
            heal_ms
        }
        Some(quiet) => loop {
            let now = target.t_ms();
            if now >= heal_ms {
                break heal_ms;
            }
            if done.load(std::sync::atomic::Ordering::SeqCst) && quiet() {
                break now;
            }
            tokio::time::sleep(POLL.min(Duration::from_millis(heal_ms - now))).await;
        },
    };
    (injector.await.unwrap_or_default(), healed)
}

/// Sleep until `t` ms on `clock`'s run clock (no-op when already past).
pub async fn sleep_until_ms(clock: &dyn FaultTarget, t: u64) {
    let now = clock.t_ms();
    if t > now {
        tokio::time::sleep(Duration::from_millis(t - now)).await;
    }
}

/// One fault: wait for its start, apply, wait for its end, heal; the trace gets the fault's
/// record when applied and its span when healed. A fault with no counterpart on this backend
/// comes back as a `not_applicable` entry.
async fn one(
    target: &dyn FaultTarget,
    n: u64,
    fault: Fault,
    heal_ms: u64,
    trace: &Trace,
) -> Option<NotApplicable> {
    let start = (fault.at_s() * 1000.0).round() as u64;
    sleep_until_ms(target, start).await;
    let node = fault_track(&fault);
    let args = serde_json::to_value(&fault).unwrap_or(Value::Null);
    let outcome = target.apply(n, &fault, heal_ms).await;
    trace.record(
        target.t_ms(),
        &node,
        "fault",
        fault.kind().as_str(),
        json!({"fault": args, "applied": outcome.detail()}),
    );
    match outcome {
        FaultOutcome::Applied(_) => {}
        FaultOutcome::Skipped(_) => return None,
        FaultOutcome::NotApplicable(reason) => {
            return Some(NotApplicable::Fault {
                kind: fault.kind(),
                at_s: fault.at_s(),
                reason,
            })
        }
    }
    let end = match fault.duration_s() {
        Some(d) => (start + (d * 1000.0).round() as u64).min(heal_ms),
        None => heal_ms,
    };
    if end > start {
        sleep_until_ms(target, end).await;
    }
    let healed = target.heal(n, &fault).await;
    let now = target.t_ms();
    trace.push(Event {
        t_ms: start,
        node,
        cat: "heal".into(),
        name: fault.kind().as_str().into(),
        args: json!({"healed_at_ms": now, "detail": healed}),
        dur_ms: Some(now.saturating_sub(start)),
    });
    None
}

/// The trace track a fault is drawn on: its node, else the service it hits.
pub fn fault_track(f: &Fault) -> String {
    if let Some(node) = f.node() {
        return node.to_string();
    }
    match f.kind() {
        FaultKind::DbFailover
        | FaultKind::DbSwitchover
        | FaultKind::DbConnReset
        | FaultKind::DbLostAck
        | FaultKind::DbLatency
        | FaultKind::DbStaleSession => "db".into(),
        FaultKind::RegionFailover => "sim".into(),
        FaultKind::OperatorRequeue => OPERATOR.into(),
        FaultKind::Reorg
        | FaultKind::MempoolDrop
        | FaultKind::GasSpike
        | FaultKind::ExternalNonce
        | FaultKind::SignerDrain
        | FaultKind::BalanceCap => "chain".into(),
        // Aimed at a node: answered by `Fault::node` above.
        FaultKind::EngineCrash
        | FaultKind::EnginePause
        | FaultKind::Partition
        | FaultKind::ClockSkew
        | FaultKind::DbCrash
        | FaultKind::RpcDown
        | FaultKind::RpcError
        | FaultKind::RpcTimeout
        | FaultKind::RpcAmbiguousSend
        | FaultKind::RpcStaleFork
        | FaultKind::RpcLag => unreachable!("{} names its node", f.kind()),
    }
}

/// The host operator actions run on (its trace track).
pub const OPERATOR: &str = "operator";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_details_name_what_happened() {
        assert_eq!(
            FaultOutcome::Skipped("already down".into()).detail(),
            json!({"skipped": "already down"})
        );
        assert_eq!(
            FaultOutcome::NotApplicable("no proxy".into()).detail(),
            json!({"not_applicable": "no proxy"})
        );
        assert_eq!(
            FaultOutcome::Applied(json!({"signal": "SIGKILL"})).detail(),
            json!({"signal": "SIGKILL"})
        );
    }

    /// In simulated time: the phase lasts a minute.
    #[cfg(madsim)]
    mod quiet_heal {
        use super::*;

        /// A target whose clock is tokio's: applies and heals everything.
        struct Clock(tokio::time::Instant);

        #[async_trait]
        impl FaultTarget for Clock {
            fn t_ms(&self) -> u64 {
                self.0.elapsed().as_millis() as u64
            }
            async fn apply(&self, _: u64, _: &Fault, _: u64) -> FaultOutcome {
                FaultOutcome::Applied(Value::Null)
            }
            async fn heal(&self, _: u64, _: &Fault) -> Value {
                Value::Null
            }
        }

        fn crash(restart_after_s: Option<f64>) -> Fault {
            Fault::EngineCrash {
                node: "engine-0".into(),
                at_s: 1.0,
                restart_after_s,
            }
        }

        /// The heal instant of `schedule` run to 60 s, with `quiet` (when given) always true.
        async fn healed_at(schedule: &[Fault], quiet: bool) -> u64 {
            let target = Arc::new(Clock(tokio::time::Instant::now()));
            let quiet = quiet.then_some(|| true);
            run_schedule(target, schedule, 60_000, quiet, &Trace::new())
                .await
                .1
        }

        /// A quiet phase heals early only where allowed and only after every fault has run its
        /// course: a fault that lasts until the heal instant keeps the phase open to its end.
        #[madsim::test]
        async fn a_quiet_fault_phase_heals_early_only_after_every_fault_ended() {
            let ends_at_3s = [crash(Some(2.0))];
            assert_eq!(healed_at(&ends_at_3s, false).await, 60_000);
            let early = healed_at(&ends_at_3s, true).await;
            assert!(
                (3_000..3_000 + POLL.as_millis() as u64 + 10).contains(&early),
                "{early}"
            );
            assert_eq!(
                healed_at(&[crash(Some(2.0)), crash(None)], true).await,
                60_000
            );
        }
    }
}
