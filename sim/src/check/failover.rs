//! `failover`: a call an RPC endpoint failed (refused, answered 503, or left unanswered past
//! the engine's timeout) is tried on another endpoint at once: within the call's timeout (when it
//! was left unanswered) plus [`SLACK_MS`], the same call (method and parameters) from the same
//! engine reaches some other endpoint (or reached one before, when this endpoint came later in
//! the gateway's order: each earlier one may have taken its whole timeout). A timeout on one endpoint must move traffic, not stall it
//! until the step's next attempt. Judged from the RPC hosts' log of every request they served.
//!
//! Not judged: `eth_blockNumber` (the health probe's per-endpoint call, which by design does not
//! fail over, and a worker's cannot be told from it); single-endpoint topologies; failures near
//! the end of the run; an engine that was
//! crashed, paused, partitioned or failed over around the failure, or whose failover decision
//! was itself perturbed by a fault point (`fp.gateway.before_failover`) or a crash.

use super::{Evidence, Verdict};
use crate::scenario::FaultKind;
use std::collections::BTreeMap;

/// How an endpoint failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RpcFailure {
    /// Refused or answered with an error status: the engine learns at once.
    Immediate,
    /// Never answered: the engine learns when its timeout for the method expires.
    Unanswered,
}

/// One request an RPC host received.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RpcRequest {
    pub t_ms: u64,
    pub endpoint: usize,
    /// The engine that sent it (`None`: not an engine, e.g. the workload's own reads).
    pub engine: Option<usize>,
    pub method: String,
    /// A hash of the method and parameters: the same call sent again has the same one.
    pub call: u64,
    pub failure: Option<RpcFailure>,
}

/// A fault point that fired inside an engine.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultPointFiring {
    pub t_ms: u64,
    pub node: String,
    pub point: String,
    pub action: String,
}

/// The network round trip and scheduling the engine gets to move a failed call on.
pub const SLACK_MS: u64 = 500;

/// The longest a fault point delays (see `dalp_engine::probe::sim::fault`).
const FAULT_POINT_DELAY_MAX_MS: u64 = 8_200;

pub fn failover(ev: &Evidence, endpoints: usize) -> Verdict {
    let Some(log) = &ev.rpc_requests else {
        return Verdict::new(
            "failover",
            "not judged: the backend keeps no log of RPC requests".into(),
            vec![],
        );
    };
    if endpoints < 2 {
        return Verdict::new(
            "failover",
            "not judged: one RPC endpoint, nothing to fail over to".into(),
            vec![],
        );
    }
    let timeouts = dalp_engine::config::TimeoutConfig::default();
    let longest = timeouts
        .rpc_method_ms
        .values()
        .copied()
        .chain([timeouts.rpc_ms])
        .max()
        .unwrap_or(0);
    let end_ms = log.iter().map(|r| r.t_ms).max().unwrap_or(0);
    // Requests by (engine, call), in time order.
    let mut by_call: BTreeMap<(usize, u64), Vec<&RpcRequest>> = BTreeMap::new();
    for r in log {
        if let Some(e) = r.engine {
            by_call.entry((e, r.call)).or_default().push(r);
        }
    }
    let disrupted = |engine: usize, from: u64, to: u64| {
        let name = format!("engine-{engine}");
        ev.fault_windows.iter().any(|w| {
            let hits_engine = w.target == name
                || matches!(w.kind, FaultKind::RegionFailover | FaultKind::Partition);
            let engine_fault = matches!(
                w.kind,
                FaultKind::EngineCrash
                    | FaultKind::EnginePause
                    | FaultKind::Partition
                    | FaultKind::RegionFailover
            );
            // A crash's window ends at its restart; the process needs a moment to be back. A
            // call sent into a partition fails only when its timeout expires, after the heal:
            // its failover attempt may be the failure judged.
            engine_fault && hits_engine && w.start_ms <= to && w.end_ms + 1_000 + longest >= from
        }) || ev.fault_point_firings.iter().any(|f| {
            f.node == name
                && (f.action == "crash" || f.point == "fp.gateway.before_failover")
                && f.t_ms <= to
                && f.t_ms + FAULT_POINT_DELAY_MAX_MS >= from
        })
    };
    let mut v = Vec::new();
    let (mut judged, mut skipped) = (0, 0);
    for r in log {
        let (Some(failure), Some(engine)) = (r.failure, r.engine) else {
            continue;
        };
        // The health probe asks each endpoint for its head on purpose, one by one, without
        // failing over; the same call from a worker cannot be told apart, so neither is judged.
        if r.method == "eth_blockNumber" {
            continue;
        }
        let wait = match failure {
            RpcFailure::Immediate => 0,
            RpcFailure::Unanswered => *timeouts
                .rpc_method_ms
                .get(&r.method)
                .unwrap_or(&timeouts.rpc_ms),
        };
        let bound = wait + SLACK_MS;
        if r.t_ms + bound > end_ms
            || disrupted(engine, r.t_ms.saturating_sub(bound), r.t_ms + bound)
        {
            skipped += 1;
            continue;
        }
        judged += 1;
        // Tried elsewhere before (this endpoint came later in the order: the earlier ones may
        // each have taken their whole timeout) or just after.
        let before = (endpoints as u64 - 1) * (longest + SLACK_MS);
        let elsewhere = by_call[&(engine, r.call)].iter().any(|o| {
            o.endpoint != r.endpoint && o.t_ms + before >= r.t_ms && o.t_ms <= r.t_ms + bound
        });
        if !elsewhere {
            v.push(format!(
                "engine-{engine}'s {} failed at rpc-{} at {:.3} s ({}) and reached no other endpoint within {:.1} s",
                r.method,
                r.endpoint,
                r.t_ms as f64 / 1000.0,
                match failure {
                    RpcFailure::Immediate => "refused or an error status",
                    RpcFailure::Unanswered => "unanswered",
                },
                bound as f64 / 1000.0
            ));
        }
    }
    Verdict::new(
        "failover",
        format!(
            "{judged} failed RPC requests against {} served ({skipped} not judged: end of run or a disrupted engine)",
            log.len()
        ),
        v,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::base;
    use crate::timing::FaultWindow;

    fn req(t_ms: u64, endpoint: usize, call: u64, failure: Option<RpcFailure>) -> RpcRequest {
        RpcRequest {
            t_ms,
            endpoint,
            engine: Some(0),
            method: "eth_getTransactionReceipt".into(),
            call,
            failure,
        }
    }

    #[test]
    fn a_failed_call_must_move_to_another_endpoint_at_once() {
        let mut ev = base();
        let mut log = vec![
            // Refused at rpc-0, tried at rpc-1 10 ms later.
            req(1_000, 0, 7, Some(RpcFailure::Immediate)),
            req(1_010, 1, 7, None),
            // Unanswered at rpc-0: tried at rpc-1 after the 3 s timeout.
            req(2_000, 0, 8, Some(RpcFailure::Unanswered)),
            req(5_020, 1, 8, None),
            // Failed at rpc-1 after rpc-0 had been tried (rpc-1 last in the order).
            req(6_000, 0, 9, Some(RpcFailure::Immediate)),
            req(6_010, 1, 9, Some(RpcFailure::Immediate)),
            req(60_000, 0, 1, None),
        ];
        ev.rpc_requests = Some(log.clone());
        let v = failover(&ev, 2);
        assert!(v.held, "{v:?}");
        assert!(v.checked.starts_with("4 failed RPC requests"), "{v:?}");
        // Unanswered at rpc-0, retried on rpc-1 only at the step's next attempt 9 s later.
        log.push(req(20_000, 0, 10, Some(RpcFailure::Unanswered)));
        log.push(req(29_000, 1, 10, None));
        ev.rpc_requests = Some(log.clone());
        let v = failover(&ev, 2);
        assert!(!v.held);
        assert!(
            v.violations[0].contains("failed at rpc-0 at 20.000 s (unanswered) and reached no other endpoint within 3.5 s"),
            "{v:?}"
        );
        // Not judged when the engine crashed meanwhile, nor with one endpoint.
        ev.fault_windows = vec![FaultWindow {
            fault: 0,
            kind: FaultKind::EngineCrash,
            target: "engine-0".into(),
            start_ms: 21_000,
            end_ms: 25_000,
        }];
        assert!(failover(&ev, 2).held);
        assert!(failover(&ev, 1).checked.starts_with("not judged"));
        ev.fault_windows.clear();
        ev.fault_point_firings = vec![FaultPointFiring {
            t_ms: 22_000,
            node: "engine-0".into(),
            point: "fp.gateway.before_failover".into(),
            action: "delay".into(),
        }];
        assert!(failover(&ev, 2).held);
        ev.fault_point_firings.clear();
        // A partition of the engine from the RPC endpoints ends at 40.0 s; a call sent into it
        // (to rpc-0, never logged) times out at 41.6 s, fails over to rpc-1, which is down.
        let mut log = vec![req(41_600, 1, 11, Some(RpcFailure::Immediate))];
        log.push(req(60_000, 0, 1, None));
        ev.rpc_requests = Some(log.clone());
        ev.fault_windows = vec![FaultWindow {
            fault: 0,
            kind: FaultKind::Partition,
            target: "engine-0".into(),
            start_ms: 35_000,
            end_ms: 40_000,
        }];
        assert!(failover(&ev, 2).held, "a call sent into the partition");
        // The same failure long after the heal is judged.
        log[0].t_ms = 50_000;
        ev.rpc_requests = Some(log);
        assert!(!failover(&ev, 2).held, "long after the partition");
    }
}
