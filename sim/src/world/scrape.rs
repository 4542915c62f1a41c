//! The metrics scraper: a host like Prometheus that polls every engine's `/metrics` text
//! ([`ApiRequest::Metrics`], the same text production serves) once per simulated second over the
//! simulated network, with a short timeout.
//!
//! Per engine it keeps every scrape's outcome (`up`: answered in time or not: dead, paused or cut
//! off) and the changes of the series the visibility checker reads ([`tracked`]). Only changes go
//! into the trace (category `metrics`: `up`/`down` transitions and `changed` with the new values
//! of the [`traced`] series), so the trace stays small; maps are ordered, so it stays
//! deterministic. The scraper sits on the clients' side of the network: a partition of an engine
//! from `clients` cuts it from the scraper too (`faults.rs`).

use super::engine_node::{ApiRequest, ApiResponse};
use super::net::Client;
use super::{engine_addr, sleep_until_ms, t_ms};
use crate::check::visibility::{
    is_counter, parse_prometheus, traced, tracked, FaultView, SeriesChange, VisibilityEvidence,
};
use crate::scenario::Fault;
use crate::trace::Trace;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The scraper's host name (its address is 10.0.7.1).
pub const SCRAPER: &str = "scraper";
pub const SCRAPE_INTERVAL_MS: u64 = 1_000;
/// Prometheus' timeout must stay below the interval; an engine slower than this is `up == 0`.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the scraper saw, shared with the runner.
#[derive(Default)]
pub struct ScrapeLog {
    pub scrapes: BTreeMap<String, Vec<(u64, bool)>>,
    pub changes: Vec<SeriesChange>,
}

/// The scraper host's process: one polling loop per engine.
pub async fn scraper_process(engines: usize, log: Arc<Mutex<ScrapeLog>>, trace: Trace) {
    let client = Arc::new(Client::bind(
        super::ip_of(SCRAPER).expect("the scraper has an address"),
    ));
    let tasks: Vec<_> = (0..engines)
        .map(|i| tokio::spawn(scrape_engine(i, client.clone(), log.clone(), trace.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn scrape_engine(i: usize, client: Arc<Client>, log: Arc<Mutex<ScrapeLog>>, trace: Trace) {
    let name = format!("engine-{i}");
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut was_up: Option<bool> = None;
    let mut tick = 1;
    loop {
        sleep_until_ms(tick * SCRAPE_INTERVAL_MS).await;
        tick += 1;
        let answer = client
            .call::<ApiRequest, ApiResponse>(engine_addr(i), ApiRequest::Metrics, SCRAPE_TIMEOUT)
            .await;
        let now = t_ms();
        let text = match answer {
            Ok(ApiResponse::Metrics(text)) => Some(text),
            _ => None,
        };
        let up = text.is_some();
        let mut g = log.lock().expect("scrape log");
        g.scrapes.entry(name.clone()).or_default().push((now, up));
        if was_up != Some(up) {
            trace.record(
                now,
                &name,
                "metrics",
                if up { "up" } else { "down" },
                Value::Null,
            );
            was_up = Some(up);
        }
        let Some(text) = text else { continue };
        let cur: BTreeMap<String, f64> = parse_prometheus(&text)
            .into_iter()
            .filter(|(s, _)| tracked(s))
            .collect();
        let mut changed = Map::new();
        // Counters absent after a restart read as 0 (a reset); a gauge that disappears is simply
        // not exported any more (no change: a new process has not set it yet).
        let keys: Vec<String> = last.keys().chain(cur.keys()).cloned().collect();
        let keys: std::collections::BTreeSet<String> = keys.into_iter().collect();
        for key in keys {
            let counter = is_counter(&key);
            let new = match cur.get(&key) {
                Some(v) => *v,
                None if counter => 0.0,
                None => {
                    last.remove(&key);
                    continue;
                }
            };
            let old = last.get(&key).copied();
            if old == Some(new) || (old.is_none() && counter && new == 0.0) {
                continue;
            }
            let increase = match (counter, old) {
                (false, _) => 0.0,
                (true, Some(o)) if new >= o => new - o,
                (true, _) => new,
            };
            g.changes.push(SeriesChange {
                t_ms: now,
                engine: name.clone(),
                series: key.clone(),
                value: new,
                increase,
            });
            if traced(&key) {
                changed.insert(key.clone(), json!(new));
            }
            last.insert(key, new);
        }
        drop(g);
        if !changed.is_empty() {
            trace.record(now, &name, "metrics", "changed", Value::Object(changed));
        }
    }
}

/// The visibility evidence of a run: the faults as the injector traced them (start, heal, what
/// was applied), lost acknowledgements, and what the scraper saw.
pub fn evidence(
    log: &Mutex<ScrapeLog>,
    trace: &Trace,
    bound_ms: u64,
    db_timeout_ms: u64,
    stuck_after_ms: u64,
    faulted: &[(u64, usize)],
) -> VisibilityEvidence {
    let mut faulted_requests: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (t, k) in faulted {
        faulted_requests
            .entry(format!("rpc-{k}"))
            .or_default()
            .push(*t);
    }
    let mut sends: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in trace.of_cat("chain") {
        if e.name == "send_raw" {
            sends.entry(e.node.clone()).or_default().push(e.t_ms);
        }
    }
    let events = trace.of_cat("fault");
    let heals = trace.of_cat("heal");
    let mut faults = Vec::new();
    let mut acks_lost_ms = Vec::new();
    for e in &events {
        if e.name == "ack_lost" {
            acks_lost_ms.push(e.t_ms);
            continue;
        }
        let Some(args) = e.args.get("fault") else {
            continue;
        };
        let Ok(fault) = serde_json::from_value::<Fault>(args.clone()) else {
            continue;
        };
        let start_ms = (fault.at_s() * 1000.0).round() as u64;
        let end_ms = heals
            .iter()
            .find(|h| h.t_ms == start_ms && h.node == e.node && h.name == e.name)
            .and_then(|h| h.args.get("healed_at_ms").and_then(Value::as_u64));
        faults.push(FaultView {
            kind: fault.kind(),
            node: e.node.clone(),
            start_ms,
            end_ms,
            fault: args.clone(),
            applied: e.args.get("applied").cloned().unwrap_or(Value::Null),
        });
    }
    faults.sort_by_key(|f| f.start_ms);
    acks_lost_ms.sort_unstable();
    let g = log.lock().expect("scrape log");
    VisibilityEvidence {
        bound_ms,
        db_timeout_ms,
        faults,
        scrapes: g.scrapes.clone(),
        changes: g.changes.clone(),
        acks_lost_ms,
        stuck_after_ms,
        sends,
        faulted_requests,
    }
}
