//! Invariant 8, **isolation** (DESIGN.md §5): workflows that do not depend on a failed component
//! keep completing during the fault (graceful degradation), measured against a fault-free
//! baseline of the same seed.
//!
//! The parent (`cli.rs`) runs a scenario that lists `isolation` twice per seed, each in its own
//! child process: once with the seed's fault schedule, once with none (the *baseline*; the seed
//! plans the same workload, so both runs submit the same operations at the same planned times).
//! Each run records per planned operation its planned submission, acceptance and terminal times
//! ([`OpTiming`]) and the fault windows of its schedule ([`FaultWindow`]); [`evaluate`] compares
//! the two, a pure function of that data.
//!
//! **Dependence.** Every workflow of this workload needs the database primary, the chain (and the
//! signer's funds on it), at least one RPC endpoint and at least one engine. So a fault of a
//! *redundant* component must not stop the others: one of several engines (crash, pause,
//! partition), one of several RPC endpoints (down, error, timeout, ambiguous send, lag), a
//! database replica whose loss does not block commits (asynchronous replication, or synchronous
//! with another replica left), a single client of several, or one engine's clock (skew fails no
//! component at all). Faults of non-redundant components are **exempt** and reported as such:
//! every RPC endpoint (`rpc`) or the only one, the only engine, the database primary (crash,
//! failover, connection resets, lost acknowledgements, latency), the only synchronous replica,
//! the chain itself (reorg, mempool drop, gas spike, external nonce use) and the signer's funds.
//! A redundant fault's window is exempt too when it overlaps a non-redundant fault, or when the
//! faults overlapping it together take out every member of its class (two RPC faults at once on
//! the only two endpoints are "every RPC endpoint").
//!
//! **The comparison**, per judged fault window `[start, end)` (simulated time):
//! - *throughput*: the operations that reached a terminal state inside the window, from
//!   `settle_s` after its start, number at least `min_ratio` × the baseline's count for the same
//!   span. The first `settle_s` are not counted: the work the failed component held *does*
//!   depend on it until another component takes it over (a workflow leased by a dead engine waits
//!   for its lease; a submission to a dead engine waits for the client's timeout and retry; and
//!   every operation on a token waits for that token's issuance, wherever it runs), and so does
//!   the tail of an earlier fault. Judged only when the baseline finished at least `min_ops` in
//!   that span: completions are quantised by the clients' 1 s status polling and the blocks, so
//!   one or two completions sliding across an edge is noise. A fault window no longer than
//!   `settle_s` is judged on latency alone;
//! - *latency*: the median of (terminal time − planned submission time) of the operations planned
//!   inside the window (those that finished in the baseline; an operation that never finished in
//!   the faulty run counts as infinitely slow) is at most `max_slowdown` × the baseline's median +
//!   `slack_s`. The latency is what the client sees: it includes unanswered submissions to a dead
//!   engine (client timeout, then the next engine) and waiting for the token's issuance.
//!
//! Defaults and why: `min_ratio = 0.5`: losing one of two endpoints or one of two or three
//! engines removes at most half of the capacity; below half, the others are not just slower but
//! held up. `max_slowdown = 3.0` with `slack_s = 10.0`: a workflow claimed by an engine that then
//! dies waits for its lease to expire (the engine's `lease_ms` is 10 s) before another engine takes
//! it over, a fixed delay independent of the baseline's latency, hence the additive slack equal to
//! the lease; the factor absorbs the client's timeout-and-retry on a dead engine (3 s + 1 s) and
//! the gateway's failover (a few failed calls before an endpoint is marked unhealthy) relative to
//! a baseline latency of a few 1–2 s blocks. `settle_s = 10.0`: the same lease (the longest
//! takeover), which also covers a client's failover to another engine (3 s timeout + 1 s).
//! `min_ops = 3`. Each is configurable per scenario
//! with an `[isolation]` table (scenarios/README.md).

pub use crate::scenario::IsolationCfg;
use crate::scenario::{Fault, FaultKind, Replication, Scenario};
use crate::timing::{fault_target, ms, FaultWindow, OpTiming};
use crate::verdict::Verdict;
use serde::{Deserialize, Serialize};

/// Whether workflows depend on what a fault hit.
#[derive(Clone, Debug, PartialEq)]
pub enum Dependence {
    /// One of several interchangeable components: `class` (`engines`, `rpc`, `clients`,
    /// `replicas`, `clock`) and the member hit. `class_size`: how many members the class has
    /// (`None`: losing all of them still blocks nothing).
    Redundant {
        class: &'static str,
        member: String,
        class_size: Option<usize>,
    },
    /// Every workflow needs it: not judged, and neither is a window overlapping it.
    Exempt(String),
    /// Not a component failure (an operator action): not judged, overlaps nothing.
    NoFailure(String),
}

/// Which database node is primary when fault `i` starts: `db-0` until a failover promotes another
/// one; after a failover the primary is not tracked here and every database node counts as it.
fn primary_known(schedule: &[Fault], i: usize) -> bool {
    let at = schedule[i].at_s();
    !schedule
        .iter()
        .enumerate()
        .any(|(k, f)| k != i && matches!(f, Fault::DbFailover { .. }) && f.at_s() <= at)
}

/// What fault `i` of `schedule` hit, and whether the workload depends on it (module docs).
pub fn dependence(s: &Scenario, schedule: &[Fault], i: usize) -> Dependence {
    use Dependence::{Exempt, Redundant};
    let t = &s.topology;
    // Standby engines (a region drill) do not run until the drill starts them.
    let engines = (t.engines as usize).saturating_sub(t.standby_engines.len());
    let engine = |node: &str| {
        if engines > 1 {
            Redundant {
                class: "engines",
                member: node.to_string(),
                class_size: Some(engines),
            }
        } else {
            Exempt(format!("{node} is the only engine"))
        }
    };
    let rpc = |ep: &str| {
        if ep == "rpc" {
            Exempt("every RPC endpoint: every workflow needs the chain".into())
        } else if t.rpc_endpoints <= 1 {
            Exempt(format!("{ep} is the only RPC endpoint"))
        } else {
            Redundant {
                class: "rpc",
                member: ep.to_string(),
                class_size: Some(t.rpc_endpoints as usize),
            }
        }
    };
    let db_node = |node: &str| {
        if node == "db-0" || !primary_known(schedule, i) {
            return Exempt(format!(
                "{node} is (or may be) the database primary: every workflow needs it"
            ));
        }
        match (t.replication, t.db_replicas) {
            (Replication::Async, _) => Redundant {
                class: "replicas",
                member: node.to_string(),
                class_size: None,
            },
            (Replication::Sync, n) if n >= 2 => Redundant {
                class: "replicas",
                member: node.to_string(),
                class_size: Some(n as usize),
            },
            (Replication::Sync, _) => Exempt(format!(
                "{node} is the only synchronous replica: every commit waits for it"
            )),
        }
    };
    // Exhaustive: a fault kind added later does not compile until it is classified here.
    let target = fault_target(&schedule[i]);
    let node = target.as_str();
    match schedule[i].kind() {
        FaultKind::EngineCrash | FaultKind::EnginePause => engine(node),
        FaultKind::ClockSkew => Redundant {
            class: "clock",
            member: target.clone(),
            class_size: None,
        },
        FaultKind::Partition => match node.split('-').next().unwrap_or("") {
            "engine" => engine(node),
            "rpc" => rpc(node),
            "db" => db_node(node),
            "client" if s.workload.clients > 1 => Redundant {
                class: "clients",
                member: target.clone(),
                class_size: Some(s.workload.clients as usize),
            },
            _ => Exempt(format!("{node} is the only client")),
        },
        FaultKind::DbCrash => db_node(node),
        FaultKind::RpcDown
        | FaultKind::RpcError
        | FaultKind::RpcTimeout
        | FaultKind::RpcAmbiguousSend
        | FaultKind::RpcStaleFork
        | FaultKind::RpcLag => rpc(node),
        FaultKind::DbFailover
        | FaultKind::DbSwitchover
        | FaultKind::DbConnReset
        | FaultKind::DbLostAck
        | FaultKind::DbLatency => Exempt("the database primary: every workflow needs it".into()),
        FaultKind::DbStaleSession => Exempt(
            "one workflow's row lock: that workflow alone waits, the rest are not in its window"
                .into(),
        ),
        FaultKind::RegionFailover => {
            Exempt("every active engine and the database primary: every workflow needs them".into())
        }
        FaultKind::Reorg
        | FaultKind::MempoolDrop
        | FaultKind::GasSpike
        | FaultKind::ExternalNonce => Exempt("the chain: every workflow needs it".into()),
        FaultKind::SignerDrain => {
            Exempt("the signer's funds: every workflow's transactions need them".into())
        }
        FaultKind::OperatorRequeue => {
            Dependence::NoFailure("an operator action, not a failure".into())
        }
        FaultKind::BalanceCap => Dependence::NoFailure(
            "an issuer's rule change: the work it blocks fails by the rules, not by a failing component"
                .into(),
        ),
    }
}

fn overlaps(a: &FaultWindow, b: &FaultWindow) -> bool {
    if b.start_ms == b.end_ms {
        // Instantaneous: inside a's window.
        return a.start_ms <= b.start_ms && b.start_ms < a.end_ms;
    }
    b.start_ms < a.end_ms && a.start_ms < b.end_ms
}

fn secs(ms: u64) -> String {
    format!("{:.3} s", ms as f64 / 1000.0)
}

/// Lower median (`None` sorts last: an unfinished operation is infinitely slow).
fn median(mut xs: Vec<Option<u64>>) -> Option<u64> {
    xs.sort_by_key(|x| x.unwrap_or(u64::MAX));
    xs.get((xs.len().max(1) - 1) / 2).copied().flatten()
}

/// The numbers of one fault window, for the verdict and `results.json` (`isolation.windows`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WindowReport {
    pub fault: usize,
    pub kind: FaultKind,
    pub target: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// `null` when judged; otherwise why not (non-redundant component, overlap, empty window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exempt: Option<String>,
    /// Completions are counted from here (`start_ms` + `settle_s`) to `end_ms`.
    pub counted_from_ms: u64,
    /// Operations that reached a terminal state in `[counted_from_ms, end_ms)`: this run and the
    /// baseline.
    pub finished: u64,
    pub baseline_finished: u64,
    /// Operations planned inside the window that finished in the baseline, and their median
    /// latency (planned submission → terminal) in this run (`null`: not finished) and the
    /// baseline.
    pub submitted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_median_latency_ms: Option<u64>,
    pub held: bool,
}

/// Compare a faulty run with its fault-free baseline (module docs). `schedule`, `windows` and
/// `ops` are the faulty run's; `baseline` the baseline's operations.
pub fn evaluate(
    s: &Scenario,
    cfg: &IsolationCfg,
    schedule: &[Fault],
    windows: &[FaultWindow],
    ops: &[OpTiming],
    baseline: &[OpTiming],
) -> (Verdict, Vec<WindowReport>) {
    let deps: Vec<Dependence> = (0..schedule.len())
        .map(|i| dependence(s, schedule, i))
        .collect();
    let dep_of = |w: &FaultWindow| deps.get(w.fault).cloned();
    let mut reports = Vec::new();
    let mut violations = Vec::new();
    for w in windows {
        let label = format!(
            "fault #{} {} {} [{}, {})",
            w.fault,
            w.kind,
            w.target,
            secs(w.start_ms),
            secs(w.end_ms)
        );
        // Work that depended on the failed engine is not judged (module docs): the operations
        // it held or was sent while down, and every operation on a token whose issuance it held.
        let dependent = dependent_ops(dep_of(w).as_ref(), w, ops);
        // Throughput is counted once the held work could have been taken over.
        let from = w.start_ms + ms(cfg.settle_s);
        let finished_in = |xs: &[OpTiming]| {
            xs.iter()
                .filter(|o| !dependent.contains(&o.op))
                .filter(|o| o.done_ms.is_some_and(|d| from <= d && d < w.end_ms))
                .count() as u64
        };
        let mut r = WindowReport {
            fault: w.fault,
            kind: w.kind,
            target: w.target.clone(),
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            counted_from_ms: from,
            exempt: None,
            finished: finished_in(ops),
            baseline_finished: finished_in(baseline),
            submitted: 0,
            median_latency_ms: None,
            baseline_median_latency_ms: None,
            held: true,
        };
        let exempt = match dep_of(w) {
            None => Some("not in the schedule".to_string()),
            Some(Dependence::Exempt(why)) => Some(format!("non-redundant: {why}")),
            Some(Dependence::NoFailure(why)) => Some(why),
            Some(Dependence::Redundant {
                class,
                member,
                class_size,
            }) => {
                let others: Vec<&FaultWindow> = windows
                    .iter()
                    .filter(|o| o.fault != w.fault && overlaps(w, o))
                    .collect();
                let blocking = others
                    .iter()
                    .find(|o| matches!(dep_of(o), Some(Dependence::Exempt(_))));
                let mut hit = std::collections::BTreeSet::from([member]);
                for o in &others {
                    if let Some(Dependence::Redundant {
                        class: c, member, ..
                    }) = dep_of(o)
                    {
                        if c == class {
                            hit.insert(member);
                        }
                    }
                }
                if w.end_ms <= w.start_ms {
                    Some("an empty window".to_string())
                } else if let Some(o) = blocking {
                    Some(format!(
                        "overlaps fault #{} {} {} [{}, {}), which every workflow depends on",
                        o.fault,
                        o.kind,
                        o.target,
                        secs(o.start_ms),
                        secs(o.end_ms)
                    ))
                } else if class_size.is_some_and(|n| hit.len() >= n) {
                    Some(format!(
                        "together with the faults overlapping it, every member of {class} is hit ({})",
                        hit.into_iter().collect::<Vec<_>>().join(", ")
                    ))
                } else {
                    None
                }
            }
        };
        if exempt.is_some() {
            r.exempt = exempt;
            reports.push(r);
            continue;
        }
        // Throughput.
        let (got, base) = (r.finished, r.baseline_finished);
        if w.end_ms.saturating_sub(from) >= min_judged_span_ms(cfg)
            && base >= u64::from(cfg.min_ops)
            && (got as f64) < cfg.min_ratio * base as f64
        {
            r.held = false;
            violations.push(format!(
                "{label}: {got} operations finished in [{}, {}) ({} s after the fault began, when work it held has been taken over), the fault-free baseline of the same seed finished {base} (need at least {} = {} x {base}): workflows that do not need {} stalled",
                secs(from),
                secs(w.end_ms),
                cfg.settle_s,
                (cfg.min_ratio * base as f64).ceil(),
                cfg.min_ratio,
                w.target
            ));
        }
        // Latency of what was submitted inside the window.
        let inside: Vec<(&OpTiming, u64)> = baseline
            .iter()
            .filter(|b| w.start_ms <= b.planned_ms && b.planned_ms < w.end_ms)
            .filter(|b| !dependent.contains(&b.op))
            .filter_map(|b| b.done_ms.map(|d| (b, d.saturating_sub(b.planned_ms))))
            .collect();
        r.submitted = inside.len() as u64;
        if !inside.is_empty() {
            let base_med = median(inside.iter().map(|(_, l)| Some(*l)).collect());
            let faulty: Vec<Option<u64>> = inside
                .iter()
                .map(|(b, _)| {
                    ops.iter()
                        .find(|o| o.op == b.op)
                        .and_then(|o| o.done_ms.map(|d| d.saturating_sub(o.planned_ms)))
                })
                .collect();
            let unfinished = faulty.iter().filter(|x| x.is_none()).count();
            let med = median(faulty);
            r.median_latency_ms = med;
            r.baseline_median_latency_ms = base_med;
            let base_med = base_med.unwrap_or(0);
            let limit = cfg.max_slowdown * base_med as f64 + cfg.slack_s * 1000.0;
            match med {
                None => {
                    r.held = false;
                    violations.push(format!(
                        "{label}: {unfinished} of the {} operations submitted inside the window never finished (the baseline finished them all, median latency {}): workflows that do not need {} stalled",
                        inside.len(),
                        secs(base_med),
                        w.target
                    ));
                }
                Some(m) if m as f64 > limit => {
                    r.held = false;
                    violations.push(format!(
                        "{label}: the median latency (planned submission to terminal state) of the {} operations submitted inside the window was {}, the fault-free baseline's {} (limit {} x {} + {} s = {}){}",
                        inside.len(),
                        secs(m),
                        secs(base_med),
                        cfg.max_slowdown,
                        secs(base_med),
                        cfg.slack_s,
                        secs(limit as u64),
                        if unfinished > 0 {
                            format!("; {unfinished} never finished")
                        } else {
                            String::new()
                        }
                    ));
                }
                Some(_) => {}
            }
        }
        reports.push(r);
    }
    let judged: Vec<&WindowReport> = reports.iter().filter(|r| r.exempt.is_none()).collect();
    let exempt = reports.len() - judged.len();
    let detail: Vec<String> = judged
        .iter()
        .map(|r| {
            format!(
                "{} {} {}–{}: {}{}",
                r.kind,
                r.target,
                secs(r.start_ms),
                secs(r.end_ms),
                if r.counted_from_ms >= r.end_ms {
                    "shorter than settle_s".to_string()
                } else if r.end_ms - r.counted_from_ms < min_judged_span_ms(cfg) {
                    format!(
                        "throughput not judged: {}/{} finished in a span of {} (too few operations to tell from the clients' 1 s polling; at least {})",
                        r.finished,
                        r.baseline_finished,
                        secs(r.end_ms - r.counted_from_ms),
                        secs(min_judged_span_ms(cfg))
                    )
                } else if r.baseline_finished < u64::from(cfg.min_ops) {
                    format!(
                        "throughput not judged: {}/{} finished from {} (fewer than min_ops = {})",
                        r.finished,
                        r.baseline_finished,
                        secs(r.counted_from_ms),
                        cfg.min_ops
                    )
                } else {
                    format!(
                        "{}/{} finished from {}",
                        r.finished,
                        r.baseline_finished,
                        secs(r.counted_from_ms)
                    )
                },
                match (r.median_latency_ms, r.baseline_median_latency_ms) {
                    (Some(m), Some(b)) => format!(", median latency {}/{}", secs(m), secs(b)),
                    (None, Some(b)) => format!(", median latency never/{}", secs(b)),
                    _ => String::new(),
                }
            )
        })
        .collect();
    let checked = format!(
        "{} fault windows against the fault-free baseline (this run/baseline){}{}; {exempt} exempt (non-redundant component or overlap)",
        judged.len(),
        if detail.is_empty() { "" } else { ": " },
        detail.join("; ")
    );
    (verdict(checked, violations), reports)
}

/// The shortest span whose completions are judged for throughput. A completion is seen at the
/// clients' next 1 s status poll and lands in a 1 s block, so up to 2 s of completions can slide
/// across a span's edges between two runs of the same seed; the ratio test tells "at least
/// `min_ratio` of the baseline" from that noise only when the noise is at most the allowed shortfall:
/// 2 s ≤ (1 − min_ratio) × span, i.e. span ≥ 2 s / (1 − min_ratio) (4 s at the default 0.5).
fn min_judged_span_ms(cfg: &IsolationCfg) -> u64 {
    let shortfall = (1.0 - cfg.min_ratio).max(0.05);
    (2_000.0 / shortfall).ceil() as u64
}

/// The operations of the faulty run that waited on the engine window `w` took down (see
/// [`OpTiming::waited_on_engine`]), and those on a token whose issuance did: they depend on the
/// failed component. Empty for faults of other classes.
fn dependent_ops(
    dep: Option<&Dependence>,
    w: &FaultWindow,
    ops: &[OpTiming],
) -> std::collections::BTreeSet<u64> {
    let Some(Dependence::Redundant { class, member, .. }) = dep else {
        return Default::default();
    };
    if *class != "engines" {
        return Default::default();
    }
    let waited: std::collections::BTreeSet<u64> = ops
        .iter()
        .filter(|o| o.waited_on_engine(member, w.start_ms, w.end_ms))
        .map(|o| o.op)
        .collect();
    let held_tokens: std::collections::BTreeSet<u32> = ops
        .iter()
        .filter(|o| o.kind == "issuance" && waited.contains(&o.op))
        .map(|o| o.token)
        .collect();
    ops.iter()
        .filter(|o| waited.contains(&o.op) || held_tokens.contains(&o.token))
        .map(|o| o.op)
        .collect()
}

/// The `isolation` verdict with these violations (at most 20 kept, all counted).
pub fn verdict(checked: String, mut violations: Vec<String>) -> Verdict {
    let violation_count = violations.len();
    violations.truncate(20);
    Verdict {
        invariant: "isolation".into(),
        held: violation_count == 0,
        checked,
        violations,
        violation_count,
    }
}

/// `results.json`'s `isolation` of a judged run: the thresholds used and each fault window's
/// numbers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IsolationReport {
    pub thresholds: IsolationCfg,
    pub windows: Vec<WindowReport>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::timing::fault_windows;

    /// A scenario judging isolation, with `extra` TOML appended.
    pub(crate) fn scenario(extra: &str) -> Scenario {
        Scenario::parse(
            &format!(
                r#"
name = "t"
description = "t"
invariants = ["durability", "isolation"]
[topology]
engines = 3
rpc_endpoints = 2
db_replicas = 1
[workload]
tokens = 1
operations = 10
submit_window_s = 20
[durations]
fault_phase_s = 40
liveness_bound_s = 60
{extra}
"#
            ),
            "t.toml",
        )
        .expect("test scenario")
    }

    fn rpc_down(endpoint: &str, at_s: f64, for_s: f64) -> Fault {
        Fault::RpcDown {
            endpoint: endpoint.into(),
            at_s,
            for_s: Some(for_s),
        }
    }

    /// Operations planned every second from 0 to 29 s, each finishing `lat(i)` ms later.
    pub(crate) fn ops(lat: impl Fn(u64) -> Option<u64>) -> Vec<OpTiming> {
        (0..30)
            .map(|i| OpTiming {
                op: i,
                kind: "mint".into(),
                planned_ms: i * 1000,
                accepted_ms: Some(i * 1000 + 10),
                done_ms: lat(i).map(|l| i * 1000 + l),
                status: lat(i).map(|_| "completed".into()),
                token: 0,
                claimed_by: vec![],
                unanswered: vec![],
            })
            .collect()
    }

    fn engine_crash(node: &str, at_s: f64, for_s: f64) -> Fault {
        Fault::EngineCrash {
            node: node.into(),
            at_s,
            restart_after_s: Some(for_s),
        }
    }

    #[test]
    fn a_counting_span_too_short_to_tell_from_polling_is_not_judged_on_throughput() {
        // engine-crash seed 6 of the nightly: [20 s, 32 s), counted from 30 s, 1 finished against
        // the baseline's 3 in two seconds.
        let s = scenario("");
        let sched = vec![engine_crash("engine-1", 20.0, 12.0)];
        let w = fault_windows(&sched, 40_000);
        // The baseline finishes ops 27, 28, 29 at 30.0, 30.5 and 31.0 s; this run only op 27 by
        // 32 s, the other two at 33 s.
        let base = ops(|i| {
            Some(if i >= 27 {
                30_000 + (i - 27) * 500 - i * 1000
            } else {
                500
            })
        });
        let bad = ops(|i| {
            Some(if i >= 28 {
                33_000 - i * 1000
            } else if i == 27 {
                3_000
            } else {
                500
            })
        });
        let (v, r) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &bad, &base);
        assert_eq!((r[0].finished, r[0].baseline_finished), (1, 3));
        assert!(v.held, "{v:?}");
        assert!(v.checked.contains("throughput not judged"), "{}", v.checked);
        // The same shortfall over a long enough span is still a violation.
        let sched = vec![engine_crash("engine-1", 5.0, 20.0)];
        let w = fault_windows(&sched, 40_000);
        let stalled = ops(|i| Some(if (5..25).contains(&i) { 30_000 } else { 500 }));
        let (v, _) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &stalled, &base);
        assert!(!v.held, "{v:?}");
    }

    #[test]
    fn work_the_failed_engine_held_is_not_judged_but_independent_work_is() {
        // engine-crash seed 4 of the nightly: the operations submitted while engine-0 was down
        // waited for work it held (their token's issuance) to be taken over after its lease.
        let s = scenario("");
        let sched = vec![engine_crash("engine-0", 8.0, 5.0)];
        let w = fault_windows(&sched, 40_000);
        let base = ops(|_| Some(3_000));
        let slow = |held: bool| {
            let mut v = ops(|i| Some(if (8..13).contains(&i) { 29_000 } else { 3_000 }));
            // The token's issuance (op 0) was last claimed by engine-0, at 7 s, and had not
            // finished when it crashed.
            v[0].kind = "issuance".into();
            v[0].done_ms = Some(20_000);
            if held {
                v[0].claimed_by = vec![(7_000, "engine-0".into())];
            }
            v
        };
        let (v, _) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &slow(true), &base);
        assert!(v.held, "{v:?}");
        let (v, _) = evaluate(
            &s,
            &IsolationCfg::default(),
            &sched,
            &w,
            &slow(false),
            &base,
        );
        assert!(
            !v.held,
            "work that did not depend on engine-0 is still judged: {v:?}"
        );
        // Held by another engine: not engine-0's work.
        let mut other = slow(false);
        other[0].claimed_by = vec![(7_000, "engine-1".into())];
        let (v, _) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &other, &base);
        assert!(!v.held, "{v:?}");
        // A submission to the dead engine that went unanswered is its work too.
        let mut sent = ops(|i| Some(if i == 9 { 29_000 } else { 3_000 }));
        sent[9].unanswered = vec![(9_000, 0)];
        assert!(sent[9].waited_on_engine("engine-0", 8_000, 13_000));
        assert!(!sent[9].waited_on_engine("engine-1", 8_000, 13_000));
    }

    #[test]
    fn a_window_in_which_nothing_finishes_fails_with_the_fault_and_the_numbers() {
        let s = scenario("");
        let sched = vec![rpc_down("rpc-0", 5.0, 20.0)];
        let w = fault_windows(&sched, 40_000);
        assert_eq!((w[0].start_ms, w[0].end_ms), (5000, 25000));
        let base = ops(|_| Some(3000));
        // Nothing planned from 2 s on finishes until the heal (40 s).
        let bad = ops(|i| Some(if i < 2 { 3000 } else { 41_000 - i * 1000 }));
        let (v, r) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &bad, &base);
        assert!(!v.held, "{v:?}");
        assert_eq!(r[0].finished, 0);
        assert_eq!(r[0].baseline_finished, 10);
        let all = v.violations.join("\n");
        assert!(
            all.contains("fault #0 rpc_down rpc-0 [5.000 s, 25.000 s)")
                && all.contains("0 operations finished in [15.000 s, 25.000 s)")
                && all.contains("finished 10"),
            "{all}"
        );
        assert!(
            all.contains("median latency") && all.contains("limit 3 x 3.000 s + 10 s"),
            "{all}"
        );
        // Operations that never finish at all count as infinitely slow.
        let never = ops(|i| if i < 2 { Some(3000) } else { None });
        let (v, _) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &never, &base);
        assert!(
            v.violations.iter().any(|m| m.contains("never finished")),
            "{v:?}"
        );
    }

    #[test]
    fn degradation_within_the_margins_holds() {
        let s = scenario("");
        let sched = vec![
            rpc_down("rpc-0", 5.0, 20.0),
            Fault::EngineCrash {
                node: "engine-1".into(),
                at_s: 26.0,
                restart_after_s: Some(12.0),
            },
        ];
        let w = fault_windows(&sched, 40_000);
        let base = ops(|_| Some(3000));
        // Slower (2.5x + a lease for some) and a few fewer completions in each window.
        let slow = ops(|i| Some(if i % 3 == 0 { 17_000 } else { 7_000 }));
        let (v, r) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &slow, &base);
        assert!(v.held, "{v:?}");
        assert!(r.iter().all(|r| r.exempt.is_none() && r.held));
        assert!(v.checked.starts_with("2 fault windows"), "{}", v.checked);
        // A stricter scenario threshold turns the same data into a violation.
        let strict = IsolationCfg {
            max_slowdown: 1.5,
            slack_s: 1.0,
            ..IsolationCfg::default()
        };
        let (v, _) = evaluate(&s, &strict, &sched, &w, &slow, &base);
        assert!(!v.held);
    }

    #[test]
    fn faults_of_components_every_workflow_needs_are_exempt() {
        let s = scenario("");
        let sched = vec![
            rpc_down("rpc", 5.0, 10.0),
            Fault::DbFailover {
                at_s: 20.0,
                promote_after_s: 2.0,
                rejoin_after_s: Some(5.0),
            },
            // Overlaps the failover: exempt too.
            rpc_down("rpc-1", 21.0, 2.0),
            // rpc-0 and rpc-1 together: every endpoint.
            rpc_down("rpc-0", 30.0, 4.0),
            rpc_down("rpc-1", 31.0, 1.0),
            // The only synchronous replica.
            Fault::DbCrash {
                node: "db-1".into(),
                at_s: 35.0,
                restart_after_s: Some(2.0),
            },
        ];
        let w = fault_windows(&sched, 40_000);
        let base = ops(|_| Some(3000));
        let dead = ops(|_| None);
        let (v, r) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &dead, &base);
        assert!(v.held, "{v:?}");
        let why: Vec<&str> = r.iter().map(|r| r.exempt.as_deref().unwrap()).collect();
        assert!(why[0].contains("every RPC endpoint"), "{why:?}");
        assert!(why[1].contains("database primary"), "{why:?}");
        assert!(why[2].contains("overlaps fault #1 db_failover"), "{why:?}");
        assert!(why[3].contains("every member of rpc"), "{why:?}");
        assert!(why[4].contains("every member of rpc"), "{why:?}");
        // After a failover the primary is not tracked: any database node may be it.
        assert!(why[5].contains("may be) the database primary"), "{why:?}");
        let crash = |node: &str| Fault::DbCrash {
            node: node.into(),
            at_s: 5.0,
            restart_after_s: Some(2.0),
        };
        assert!(matches!(
            dependence(&s, &[crash("db-1")], 0),
            Dependence::Exempt(m) if m.contains("only synchronous replica")
        ));
        let two = Scenario {
            topology: crate::scenario::Topology {
                db_replicas: 2,
                ..s.topology.clone()
            },
            ..s.clone()
        };
        assert!(matches!(
            dependence(&two, &[crash("db-2")], 0),
            Dependence::Redundant {
                class: "replicas",
                ..
            }
        ));
        assert!(v.checked.contains("0 fault windows") && v.checked.contains("6 exempt"));
        // One engine only: its crash is exempt.
        let one = Scenario {
            topology: crate::scenario::Topology {
                engines: 1,
                ..s.topology.clone()
            },
            ..s.clone()
        };
        let sched = vec![Fault::EngineCrash {
            node: "engine-0".into(),
            at_s: 5.0,
            restart_after_s: None,
        }];
        assert_eq!(
            dependence(&one, &sched, 0),
            Dependence::Exempt("engine-0 is the only engine".into())
        );
        assert_eq!(fault_windows(&sched, 40_000)[0].end_ms, 40_000);
    }

    #[test]
    fn short_windows_and_few_completions_skip_the_throughput_check() {
        let s = scenario("");
        // Shorter than settle_s: judged on latency alone.
        let sched = vec![rpc_down("rpc-0", 5.0, 2.0)];
        let w = fault_windows(&sched, 40_000);
        let base = ops(|_| Some(3000));
        let shifted = ops(|i| Some(if (2..9).contains(&i) { 9000 } else { 3000 }));
        let (v, r) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &shifted, &base);
        assert_eq!((r[0].counted_from_ms, r[0].finished), (15_000, 0));
        assert!(v.held, "{v:?}");
        assert!(v.checked.contains("shorter than settle_s"), "{}", v.checked);
        let stuck = ops(|i| Some(if (2..9).contains(&i) { 30_000 } else { 3000 }));
        let (v, _) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &stuck, &base);
        assert!(
            !v.held && v.violations[0].contains("median latency"),
            "{v:?}"
        );
        // Fewer than min_ops baseline completions in the counted span: not judged.
        let sched = vec![rpc_down("rpc-0", 5.0, 12.0)];
        let w = fault_windows(&sched, 40_000);
        let late = ops(|i| {
            Some(if (10..14).contains(&i) {
                17_500 - i * 1000
            } else {
                3000
            })
        });
        let (v, r) = evaluate(&s, &IsolationCfg::default(), &sched, &w, &late, &base);
        assert_eq!((r[0].finished, r[0].baseline_finished), (0, 2));
        assert!(v.held, "{v:?}");
    }

    #[test]
    fn thresholds_parse_strictly_and_validate() {
        let s = scenario("[isolation]\nmin_ratio = 0.3\nslack_s = 15");
        let c = s.isolation.unwrap();
        assert_eq!(
            (c.min_ratio, c.slack_s, c.max_slowdown, c.settle_s),
            (0.3, 15.0, 3.0, 10.0)
        );
        let e = Scenario::parse(
            &format!("{}\n[isolation]\nmin_ratio = 1.5\n", base_text()),
            "f.toml",
        )
        .unwrap_err();
        assert_eq!(e.field, "isolation.min_ratio");
        let e = Scenario::parse(
            &format!("{}\n[isolation]\nratio = 0.5\n", base_text()),
            "f.toml",
        )
        .unwrap_err();
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    fn base_text() -> String {
        r#"
name = "t"
description = "t"
invariants = ["durability", "isolation"]
[topology]
engines = 2
rpc_endpoints = 2
[workload]
tokens = 1
operations = 10
submit_window_s = 20
[durations]
fault_phase_s = 40
liveness_bound_s = 60
"#
        .to_string()
    }
}
