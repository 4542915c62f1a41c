//! 9. Visibility: each injected fault shows in the engines' metrics within a bound.
//!
//! The evidence is what an operator's Prometheus would hold: the scraper host (`world/scrape.rs`)
//! polls every engine's `/metrics` text once per simulated second over the simulated network and
//! keeps (a) each scrape's outcome (`up`: answered within the timeout or not) and (b) the changes
//! of the series that matter. Counters are read like `increase()`: a value below the previous one
//! is a restart, and the new value counts as the increase.
//!
//! Each fault is judged on the window `(start, start + bound]`, `start` being when the fault began
//! (for lost acknowledgements: when the first acknowledgement was actually lost), not when it
//! ended, so a fault shorter than a scrape interval is judged by what it caused, not by whether a
//! scrape happened to fall inside it. A change seen at the first scrape after `start` may include
//! up to one scrape interval before `start` (the scrape cannot tell). Faults that by design leave
//! nothing to see (clock skew: leases use database time; a reorg that removed no block the engine
//! had used; a gas spike with nothing pending; …) are reported as *not observable*, with the
//! reason, instead of passing or failing.

use super::{s, Evidence, Verdict};
use crate::scenario::FaultKind;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Default bound between a fault's start and its first evidence.
pub const DEFAULT_BOUND_MS: u64 = 15_000;

/// One injected fault as the injector applied it (from the trace's `fault`/`heal` events).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultView {
    pub kind: FaultKind,
    /// The node the fault hit (`engine-1`, `rpc-0`, `rpc`, `db`, `chain`, …).
    pub node: String,
    pub start_ms: u64,
    /// When it was healed (`None`: never, e.g. instantaneous faults not traced as spans).
    pub end_ms: Option<u64>,
    /// The fault's fields as scheduled (`Fault` serialized).
    pub fault: Value,
    /// What the injector recorded when applying it (`skipped`, `dropped`, `removed_signer_txs`, …).
    pub applied: Value,
}

/// A change of one series of one engine, seen by a scrape at `t_ms`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SeriesChange {
    pub t_ms: u64,
    pub engine: String,
    /// `name{labels}` exactly as exposed.
    pub series: String,
    pub value: f64,
    /// For counters: the increase since the previous scrape (reset-aware); gauges: 0.
    pub increase: f64,
}

/// What the visibility checker reads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VisibilityEvidence {
    /// 0 means [`DEFAULT_BOUND_MS`].
    pub bound_ms: u64,
    /// The engines' database timeout: slower answers are errors the engine counts.
    pub db_timeout_ms: u64,
    pub faults: Vec<FaultView>,
    /// Every scrape per engine: (time, up).
    pub scrapes: BTreeMap<String, Vec<(u64, bool)>>,
    /// Changes of the tracked series, in time order.
    pub changes: Vec<SeriesChange>,
    /// When the database lost a commit's acknowledgement (trace `ack_lost`).
    pub acks_lost_ms: Vec<u64>,
    /// The engines' `stuck_after_ms`: how long a transaction waits before it is replaced.
    pub stuck_after_ms: u64,
    /// When each RPC endpoint received an `eth_sendRawTransaction` (trace `send_raw`).
    pub sends: BTreeMap<String, Vec<u64>>,
    /// When each RPC endpoint failed a request because of an injected fault (down, 503,
    /// timeout): a fault that met no request cannot show anywhere.
    pub faulted_requests: BTreeMap<String, Vec<u64>>,
}

/// Parse Prometheus text exposition into `name{labels}` → value (comments skipped).
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.trim().to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The metric name of a series.
pub fn metric_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// A label's value in `name{a="x",b="y"}` (escapes kept as they are).
pub fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let inner = series.split_once('{')?.1.strip_suffix('}')?;
    let mut rest = inner;
    loop {
        let (k, after) = rest.split_once("=\"")?;
        let bytes = after.as_bytes();
        let mut end = 0;
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        if k.trim_start_matches(',') == key {
            return Some(&after[..end.min(after.len())]);
        }
        rest = after.get(end + 1..)?;
    }
}

/// Series the scraper keeps for the checker (everything the fault mapping reads).
pub fn tracked(series: &str) -> bool {
    match metric_name(series) {
        "dalp_rpc_requests_total" => label(series, "outcome") != Some("ok"),
        "dalp_step_outcomes_total" => label(series, "outcome") != Some("completed"),
        name => TRACKED.contains(&name),
    }
}

/// Tracked series that also go into the run's trace (changes only; the indexer's height moves
/// every block and stays out).
pub fn traced(series: &str) -> bool {
    tracked(series) && metric_name(series) != "dalp_indexer_last_block"
}

const TRACKED: &[&str] = &[
    "dalp_db_errors_total",
    "dalp_rpc_failovers_total",
    "dalp_rpc_endpoint_healthy",
    "dalp_rpc_endpoint_lag_blocks",
    "dalp_retries_total",
    "dalp_tx_reorged_total",
    "dalp_indexer_reorgs_total",
    "dalp_indexer_last_block",
    "dalp_nonce_resyncs_total",
    "dalp_nonce_gap_heals_total",
    "dalp_nonce_gap_fills_total",
    "dalp_nonce_external_use_total",
    "dalp_orphans_found_total",
    "dalp_orphans_adopted_total",
    "dalp_tx_replacements_total",
    "dalp_tx_rebroadcasts_total",
    "dalp_fenced_writes_total",
    "dalp_dead_letter_depth",
    "dalp_stalled_workflows",
    "dalp_operator_actions_total",
];

/// Counters end in `_total`; everything else tracked is a gauge.
pub fn is_counter(series: &str) -> bool {
    metric_name(series).ends_with("_total")
}

enum Judgement {
    Seen,
    Missing { expected: String, detail: String },
    NotObservable(String),
}

struct Ctx<'a> {
    ev: &'a VisibilityEvidence,
    from: u64,
    to: u64,
}

impl Ctx<'_> {
    fn in_window(&self, t: u64) -> bool {
        t > self.from && t <= self.to
    }

    /// A counter matching `pred` increased on `engine` (or any engine) within the window.
    fn increased(&self, engine: Option<&str>, pred: impl Fn(&str) -> bool) -> bool {
        self.ev.changes.iter().any(|c| {
            self.in_window(c.t_ms)
                && c.increase > 0.0
                && engine.is_none_or(|e| c.engine == e)
                && pred(&c.series)
        })
    }

    /// A gauge matching `pred` changed to a value satisfying `value` within the window.
    fn gauge(
        &self,
        engine: Option<&str>,
        pred: impl Fn(&str) -> bool,
        value: impl Fn(f64) -> bool,
    ) -> bool {
        self.ev.changes.iter().any(|c| {
            self.in_window(c.t_ms)
                && !is_counter(&c.series)
                && engine.is_none_or(|e| c.engine == e)
                && pred(&c.series)
                && value(c.value)
        })
    }

    /// A scrape of `engine` failed within the window (`[from, to]`: a scrape in flight when the
    /// fault began counts).
    fn scrape_failed(&self, engine: &str) -> bool {
        self.ev.scrapes.get(engine).is_some_and(|v| {
            v.iter()
                .any(|(t, up)| !up && *t >= self.from && *t <= self.to)
        })
    }

    /// How `engine` was scraped in the window: (scrapes, failed).
    fn coverage(&self, engine: &str) -> (usize, usize) {
        let v: Vec<&(u64, bool)> = self
            .ev
            .scrapes
            .get(engine)
            .map(|v| v.iter().filter(|(t, _)| self.in_window(*t)).collect())
            .unwrap_or_default();
        (v.len(), v.iter().filter(|(_, up)| !up).count())
    }

    /// Whether any engine answered a scrape in the window (else engine-wide evidence cannot be
    /// read at all).
    fn any_up(&self) -> bool {
        self.ev
            .scrapes
            .values()
            .flatten()
            .any(|(t, up)| *up && self.in_window(*t))
    }

    /// The last value of a gauge series (by name) on any engine at or before `t`, max over engines.
    fn gauge_before(&self, name: &str, t: u64) -> Option<f64> {
        let mut last: BTreeMap<&str, f64> = BTreeMap::new();
        for c in self.ev.changes.iter().filter(|c| c.t_ms <= t) {
            if metric_name(&c.series) == name {
                last.insert(&c.engine, c.value);
            }
        }
        last.values().copied().reduce(f64::max)
    }
}

fn named<'a>(names: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
    move |series| names.contains(&metric_name(series))
}

/// Series of `names` labelled with `endpoint` (`rpc` = any) in label `key`.
fn on_endpoint<'a>(
    names: &'a [&'a str],
    key: &'a str,
    endpoint: &'a str,
) -> impl Fn(&str) -> bool + 'a {
    move |series| {
        names.contains(&metric_name(series))
            && (endpoint == "rpc"
                || label(series, key).is_some_and(|u| u.contains(&format!("//{endpoint}:"))))
    }
}

/// A request the endpoint failed (no answer in time, or no answer at all). `rpc_error` outcomes
/// are the node's own JSON-RPC answers (reverts, nonce too low): not an endpoint failure.
fn rpc_failed(series: &str) -> bool {
    metric_name(series) == "dalp_rpc_requests_total"
        && matches!(
            label(series, "outcome"),
            Some("timeout" | "transport_error")
        )
}

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k)
}

/// Evidence that should be there and is not.
fn missing(expected: &str, detail: String) -> Judgement {
    Judgement::Missing {
        expected: expected.into(),
        detail,
    }
}

impl Ctx<'_> {
    /// Evidence any engine may show: seen, else missing, unless no engine answered a scrape in
    /// the window (then nothing could be read).
    fn engine_wide(&self, expected: &str, seen: bool) -> Judgement {
        if seen {
            Judgement::Seen
        } else if !self.any_up() {
            Judgement::NotObservable("no engine answered a scrape in the window".into())
        } else {
            missing(expected, String::new())
        }
    }

    /// `dalp_db_errors_total` increased on some engine.
    fn any_db_error(&self) -> bool {
        self.increased(None, named(&["dalp_db_errors_total"]))
    }
}

/// The window `(from, to]` the fault is judged on, or why it cannot be judged at all.
fn judged_window(
    f: &FaultView,
    ev: &VisibilityEvidence,
    bound: u64,
) -> Result<(u64, u64), Judgement> {
    if let Some(why) = field(&f.applied, "skipped") {
        return Err(Judgement::NotObservable(format!(
            "skipped by the injector ({why})"
        )));
    }
    let mut from = f.start_ms;
    if f.kind == FaultKind::DbLostAck {
        let end = f.end_ms.unwrap_or(u64::MAX);
        match ev
            .acks_lost_ms
            .iter()
            .find(|t| **t >= f.start_ms && **t <= end)
        {
            Some(t) => from = *t,
            None => {
                return Err(Judgement::NotObservable(
                    "no commit lost its acknowledgement while the fault was active".into(),
                ))
            }
        }
    }
    if f.kind == FaultKind::GasSpike {
        // The engine replaces a transaction once it has waited `stuck_after_ms`; nothing shows a
        // stuck transaction earlier (no metric for it), so the spike gets that long plus a
        // receipt poll and a scrape.
        let underpriced = field(&f.applied, "signer_underpriced")
            .or_else(|| field(&f.applied, "signer_pending"))
            .and_then(Value::as_u64);
        if underpriced == Some(0) {
            return Err(Judgement::NotObservable(
                "no pending signer transaction was left underpriced; later ones are priced from the new base fee".into(),
            ));
        }
    }
    let window = if f.kind == FaultKind::GasSpike {
        bound.max(ev.stuck_after_ms + 2_000)
    } else {
        bound
    };
    Ok((from, from + window))
}

/// Why a clock skew is never judged.
const STALE_FORK_UNSEEN: &str = "a backend left on an old fork answers like a node behind the chain, or like the chain before a reorg; the engine is not required to tell its answers from the chain's own motion";
const CLOCK_SKEW_UNSEEN: &str = "by design: leases use the database's clock, so a skewed wall clock changes nothing the engine measures";

/// Judges one fault: the window it is judged on, then the evidence its kind must leave there.
fn judge(
    f: &FaultView,
    ev: &VisibilityEvidence,
    bound: u64,
    canonical_external: &BTreeSet<String>,
) -> Judgement {
    let (from, to) = match judged_window(f, ev, bound) {
        Ok(window) => window,
        Err(not_judged) => return not_judged,
    };
    let cx = Ctx { ev, from, to };
    // Exhaustive: a new fault kind does not compile until its observability is stated here.
    match f.kind {
        FaultKind::EngineCrash | FaultKind::EnginePause => judge_engine_down(f, &cx),
        FaultKind::Partition => judge_partition(f, &cx),
        FaultKind::ClockSkew => Judgement::NotObservable(CLOCK_SKEW_UNSEEN.into()),
        FaultKind::DbCrash
        | FaultKind::DbFailover
        | FaultKind::DbConnReset
        | FaultKind::DbLostAck
        | FaultKind::DbSwitchover => cx.engine_wide(
            "an increase of dalp_db_errors_total on some engine",
            cx.any_db_error(),
        ),
        FaultKind::DbStaleSession => judge_stale_session(f, &cx),
        FaultKind::DbLatency => judge_db_latency(f, &cx),
        FaultKind::RpcDown
        | FaultKind::RpcError
        | FaultKind::RpcTimeout
        | FaultKind::RpcAmbiguousSend => judge_rpc_endpoint(f, &cx, bound),
        FaultKind::RpcLag => judge_rpc_lag(f, &cx),
        // Its answers are those of a node behind, or on another fork, mixed with the live chain's:
        // the engine may rightly never tell them apart from the chain's own motion.
        FaultKind::RpcStaleFork => Judgement::NotObservable(STALE_FORK_UNSEEN.into()),
        FaultKind::Reorg => judge_reorg(f, &cx),
        FaultKind::MempoolDrop => judge_mempool_drop(f, &cx),
        FaultKind::GasSpike => cx.engine_wide(
            "an increase of dalp_tx_replacements_total or dalp_retries_total",
            cx.increased(
                None,
                named(&["dalp_tx_replacements_total", "dalp_retries_total"]),
            ),
        ),
        FaultKind::ExternalNonce => judge_external_nonce(f, &cx, canonical_external),
        FaultKind::SignerDrain => cx.engine_wide(
            "dalp_retries_total{reason=\"signer_funds\"} or a dead-letter step outcome",
            cx.increased(None, |s| {
                (metric_name(s) == "dalp_retries_total"
                    && label(s, "reason") == Some("signer_funds"))
                    || (metric_name(s) == "dalp_step_outcomes_total"
                        && label(s, "outcome") == Some("dead_letter"))
            }),
        ),
        FaultKind::RegionFailover => judge_region_failover(&cx),
        FaultKind::OperatorRequeue => judge_operator_requeue(f, &cx),
        // A rule change, not a failure: it shows only in the work it blocks, if any was tried.
        FaultKind::BalanceCap => {
            if cx.increased(None, |s| {
                metric_name(s) == "dalp_step_outcomes_total"
                    && label(s, "outcome") == Some("dead_letter")
            }) {
                Judgement::Seen
            } else {
                Judgement::NotObservable(
                    "an issuer's rule change blocks only the work tried under it: none was dead-lettered in the window"
                        .into(),
                )
            }
        }
    }
}

/// A crashed or paused engine fails its own scrapes.
fn judge_engine_down(f: &FaultView, cx: &Ctx) -> Judgement {
    let node = f.node.as_str();
    if cx.scrape_failed(node) {
        Judgement::Seen
    } else {
        let (n, _) = cx.coverage(node);
        missing(
            &format!("a failed scrape of {node} (up == 0)"),
            format!("{n} scrapes of {node} in the window all answered"),
        )
    }
}

/// A stale session shows only through a write that waits on its lock until a timeout.
fn judge_stale_session(f: &FaultView, cx: &Ctx) -> Judgement {
    if field(&f.applied, "workflow").is_none_or(Value::is_null) {
        Judgement::NotObservable("no workflow was in flight to lock".into())
    } else if cx.any_db_error() {
        Judgement::Seen
    } else {
        Judgement::NotObservable(
            "a lock on one workflow's row shows only when that workflow writes while it is held (a statement timeout); the engine exports no lock-wait metric".into(),
        )
    }
}

/// Extra latency shows only as timeouts, so only at or above the engines' database timeout.
fn judge_db_latency(f: &FaultView, cx: &Ctx) -> Judgement {
    let extra = field(&f.fault, "extra_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if extra < cx.ev.db_timeout_ms {
        Judgement::NotObservable(format!(
            "{extra} ms extra is below the engines' database timeout ({} ms) and the engine exports no database latency metric",
            cx.ev.db_timeout_ms
        ))
    } else {
        cx.engine_wide(
            "an increase of dalp_db_errors_total (timeouts) on some engine",
            cx.any_db_error(),
        )
    }
}

/// An endpoint down, erroring, timing out or losing send answers: judged only if a request
/// (a send, for ambiguous sends) met it while it was active.
fn judge_rpc_endpoint(f: &FaultView, cx: &Ctx, bound: u64) -> Judgement {
    let ep = f.node.as_str();
    let (ev, from) = (cx.ev, cx.from);
    // Only sends are affected, and the endpoint records each one it receives (it fails
    // the others before they reach the chain, so only this mode can be checked for it).
    let sends_only = f.kind == FaultKind::RpcAmbiguousSend;
    let end = f.end_ms.unwrap_or(from + bound);
    // Whether `log` (times per endpoint) has an entry for this fault's endpoints in its window.
    let in_window = |log: &BTreeMap<String, Vec<u64>>| {
        log.iter()
            .filter(|(e, _)| ep == "rpc" || e.as_str() == ep)
            .flat_map(|(_, v)| v)
            .any(|t| *t >= from && *t <= end)
    };
    let sent = in_window(&ev.sends);
    if sends_only && !sent {
        return Judgement::NotObservable(format!(
            "no transaction was sent through {ep} while the fault was active"
        ));
    }
    let met = in_window(&ev.faulted_requests);
    if !sends_only && !met {
        return Judgement::NotObservable(format!(
            "the fault healed before any request met it (no request to {ep}{} failed while it was active)",
            field(&f.fault, "method")
                .and_then(Value::as_str)
                .map(|m| format!(" calling {m}"))
                .unwrap_or_default()
        ));
    }
    let seen = cx.increased(None, |s| {
        on_endpoint(&["dalp_rpc_requests_total"], "endpoint", ep)(s) && rpc_failed(s)
    }) || cx.increased(None, on_endpoint(&["dalp_rpc_failovers_total"], "from", ep))
        || cx.gauge(
            None,
            on_endpoint(&["dalp_rpc_endpoint_healthy"], "endpoint", ep),
            |v| v == 0.0,
        );
    cx.engine_wide(
        &format!(
            "a failed (timeout, transport_error) dalp_rpc_requests_total, a dalp_rpc_failovers_total or dalp_rpc_endpoint_healthy == 0 for {ep}"
        ),
        seen,
    )
}

/// A lag of two blocks or more shows in the endpoint's lag gauge (or a failover from it).
fn judge_rpc_lag(f: &FaultView, cx: &Ctx) -> Judgement {
    let node = f.node.as_str();
    let blocks = field(&f.fault, "blocks")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if blocks < 2 {
        return Judgement::NotObservable(format!(
            "a lag of {blocks} block is within one block of propagation"
        ));
    }
    let seen = cx.gauge(
        None,
        on_endpoint(&["dalp_rpc_endpoint_lag_blocks"], "endpoint", node),
        |v| v >= 2.0,
    ) || cx.increased(
        None,
        on_endpoint(&["dalp_rpc_failovers_total"], "from", node),
    );
    cx.engine_wide(
        &format!("dalp_rpc_endpoint_lag_blocks >= 2 for {node}"),
        seen,
    )
}

/// A reorg must show unless it removed no indexed block and dropped no signer transaction.
fn judge_reorg(f: &FaultView, cx: &Ctx) -> Judgement {
    let ancestor = field(&f.applied, "common_ancestor").and_then(Value::as_u64);
    // Re-included transactions are checked only once deep enough (a reorg before that
    // changes nothing for the engine); dropped ones must be re-broadcast.
    let ours = field(&f.applied, "dropped_signer_txs")
        .or_else(|| field(&f.applied, "removed_signer_txs"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let seen = cx.increased(
        None,
        named(&[
            "dalp_tx_reorged_total",
            "dalp_indexer_reorgs_total",
            "dalp_nonce_gap_heals_total",
            "dalp_tx_rebroadcasts_total",
        ]),
    );
    let indexed = match (
        ancestor,
        cx.gauge_before("dalp_indexer_last_block", f.start_ms),
    ) {
        (Some(a), Some(h)) => h > a as f64,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if !seen && ours == 0 && !indexed {
        return Judgement::NotObservable(
            "the removed blocks held no indexed block and dropped no signer transaction".into(),
        );
    }
    cx.engine_wide(
        "an increase of dalp_tx_reorged_total, dalp_indexer_reorgs_total, dalp_nonce_gap_heals_total or dalp_tx_rebroadcasts_total",
        seen,
    )
}

/// Dropped signer transactions are re-broadcast (or their nonce gap healed).
fn judge_mempool_drop(f: &FaultView, cx: &Ctx) -> Judgement {
    if field(&f.applied, "dropped").and_then(Value::as_u64) == Some(0) {
        return Judgement::NotObservable("no signer transaction was pending".into());
    }
    cx.engine_wide(
        "an increase of dalp_tx_rebroadcasts_total or dalp_nonce_gap_heals_total",
        cx.increased(
            None,
            named(&["dalp_tx_rebroadcasts_total", "dalp_nonce_gap_heals_total"]),
        ),
    )
}

/// An external use of the signer's nonce must show once its transaction reached a block.
fn judge_external_nonce(
    f: &FaultView,
    cx: &Ctx,
    canonical_external: &BTreeSet<String>,
) -> Judgement {
    let seen = cx.increased(
        None,
        named(&[
            "dalp_nonce_resyncs_total",
            "dalp_nonce_gap_fills_total",
            "dalp_nonce_gap_heals_total",
            "dalp_nonce_external_use_total",
        ]),
    );
    let tx = field(&f.applied, "tx")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !seen && !canonical_external.contains(tx) {
        return Judgement::NotObservable(
            "the external transaction never reached a block (the engine's own transaction at that nonce replaced it in the mempool) and left no gap".into(),
        );
    }
    cx.engine_wide(
        "an increase of dalp_nonce_resyncs_total, dalp_nonce_gap_fills_total, dalp_nonce_gap_heals_total or dalp_nonce_external_use_total",
        seen,
    )
}

/// Losing the active region fails some engine's scrapes.
fn judge_region_failover(cx: &Ctx) -> Judgement {
    let seen = cx.ev.scrapes.keys().any(|e| cx.scrape_failed(e));
    if seen {
        Judgement::Seen
    } else {
        missing("a failed scrape of some engine (up == 0)", String::new())
    }
}

/// An operator action that requeued something is counted.
fn judge_operator_requeue(f: &FaultView, cx: &Ctx) -> Judgement {
    if field(&f.applied, "requeued")
        .and_then(Value::as_array)
        .is_some_and(|a| a.is_empty())
    {
        return Judgement::NotObservable("an operator action that found nothing to requeue".into());
    }
    cx.engine_wide(
        "an increase of dalp_operator_actions_total",
        cx.increased(None, named(&["dalp_operator_actions_total"])),
    )
}

fn judge_partition(f: &FaultView, cx: &Ctx) -> Judgement {
    let node = f.node.as_str();
    let from: Vec<&str> = field(&f.fault, "from")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let group = |g: &str| {
        from.iter()
            .any(|p| *p == g || p.starts_with(&format!("{g}-")))
    };
    let mut expected = Vec::new();
    let mut seen = false;
    if from.contains(&"clients") {
        expected.push(format!("a failed scrape of {node} (up == 0)"));
        seen |= cx.scrape_failed(node);
    }
    if group("db") {
        expected.push(format!("an increase of {node}'s dalp_db_errors_total"));
        seen |= cx.increased(Some(node), named(&["dalp_db_errors_total"]));
    }
    if group("rpc") {
        expected.push(format!(
            "a failed (timeout, transport_error) dalp_rpc_requests_total, dalp_rpc_failovers_total or dalp_rpc_endpoint_healthy == 0 on {node}"
        ));
        seen |= cx.increased(Some(node), rpc_failed)
            || cx.increased(Some(node), named(&["dalp_rpc_failovers_total"]))
            || cx.gauge(Some(node), named(&["dalp_rpc_endpoint_healthy"]), |v| {
                v == 0.0
            });
    }
    if expected.is_empty() {
        return Judgement::NotObservable(format!(
            "{node} does not talk to {from:?} (engines coordinate through the database only)"
        ));
    }
    if seen {
        return Judgement::Seen;
    }
    let (n, failed) = cx.coverage(node);
    if !from.contains(&"clients") && n > 0 && failed == n {
        // Its own counters could not be read: it was down or unreachable the whole window (which
        // the failed scrapes show).
        return Judgement::NotObservable(format!(
            "{node} answered none of its {n} scrapes in the window (down or cut off by another fault)"
        ));
    }
    Judgement::Missing {
        expected: expected.join(" or "),
        detail: format!("{node}: {n} scrapes in the window, {failed} failed"),
    }
}

/// 9. Each injected fault shows in the engines' metrics within the bound.
pub fn visibility(all: &Evidence) -> Verdict {
    let ev = &all.visibility;
    // External transactions that made it into a block (the engine must then notice the nonce).
    let canonical_external: BTreeSet<String> = all
        .chain_txs
        .iter()
        .filter(|t| all.external_txs.contains(&t.hash))
        .filter_map(|t| serde_json::to_value(t.hash).ok())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let bound = if ev.bound_ms == 0 {
        DEFAULT_BOUND_MS
    } else {
        ev.bound_ms
    };
    let mut v = Vec::new();
    let (mut seen, mut hidden) = (0, BTreeMap::<String, usize>::new());
    for f in &ev.faults {
        match judge(f, ev, bound, &canonical_external) {
            Judgement::Seen => seen += 1,
            Judgement::NotObservable(why) => {
                *hidden.entry(format!("{} ({why})", f.kind)).or_default() += 1;
            }
            Judgement::Missing { expected, detail } => v.push(format!(
                "{} on {} at {} ({}): expected {expected} by {} ({} bound), none seen{}",
                f.kind,
                f.node,
                s(f.start_ms),
                f.fault,
                s(f.start_ms + bound),
                s(bound),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!("; {detail}")
                }
            )),
        }
    }
    let not_observable: usize = hidden.values().sum();
    let mut checked = format!(
        "{} faults: {seen} seen within {}, {} not seen, {not_observable} not observable",
        ev.faults.len(),
        s(bound),
        v.len()
    );
    if !hidden.is_empty() {
        let list: Vec<String> = hidden
            .iter()
            .map(|(k, n)| {
                if *n > 1 {
                    format!("{n}× {k}")
                } else {
                    k.clone()
                }
            })
            .collect();
        checked.push_str(&format!(": {}", list.join("; ")));
    }
    Verdict::new("visibility", checked, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fault(kind: &str, node: &str, start_ms: u64, fault: Value, applied: Value) -> FaultView {
        FaultView {
            kind: kind.parse().expect("a fault kind"),
            node: node.into(),
            start_ms,
            end_ms: Some(start_ms + 5_000),
            fault,
            applied,
        }
    }

    fn change(t_ms: u64, engine: &str, series: &str, value: f64, increase: f64) -> SeriesChange {
        SeriesChange {
            t_ms,
            engine: engine.into(),
            series: series.into(),
            value,
            increase,
        }
    }

    fn run(ev: &VisibilityEvidence) -> Verdict {
        visibility(&Evidence {
            visibility: ev.clone(),
            ..Default::default()
        })
    }

    /// Two engines scraped every second from 1 s to 60 s, all up.
    fn base() -> VisibilityEvidence {
        let mut ev = VisibilityEvidence {
            bound_ms: 15_000,
            db_timeout_ms: 5_000,
            stuck_after_ms: 15_000,
            ..Default::default()
        };
        for e in ["engine-0", "engine-1"] {
            ev.scrapes
                .insert(e.into(), (1..=60).map(|k| (k * 1000 + 3, true)).collect());
        }
        ev
    }

    #[test]
    fn parses_prometheus_text_and_labels() {
        let text = "# HELP x y\n# TYPE x counter\ndalp_db_errors_total{reason=\"db_timeout\"} 3\n\
                    dalp_rpc_requests_total{endpoint=\"http://rpc-0:8545\",outcome=\"timeout\"} 2\n\
                    dalp_tx_reorged_total 0\n";
        let m = parse_prometheus(text);
        assert_eq!(m["dalp_db_errors_total{reason=\"db_timeout\"}"], 3.0);
        assert_eq!(m["dalp_tx_reorged_total"], 0.0);
        let s = "dalp_rpc_requests_total{endpoint=\"http://rpc-0:8545\",outcome=\"timeout\"}";
        assert_eq!(label(s, "endpoint"), Some("http://rpc-0:8545"));
        assert_eq!(label(s, "outcome"), Some("timeout"));
        assert_eq!(label(s, "reason"), None);
        assert_eq!(metric_name(s), "dalp_rpc_requests_total");
        assert!(tracked(s) && traced(s));
        assert!(!tracked(
            "dalp_rpc_requests_total{endpoint=\"http://rpc-0:8545\",outcome=\"ok\"}"
        ));
        assert!(tracked("dalp_indexer_last_block") && !traced("dalp_indexer_last_block"));
    }

    #[test]
    fn fails_when_a_crash_or_db_partition_shows_nothing_within_the_bound() {
        let mut ev = base();
        ev.faults = vec![
            fault(
                "engine_crash",
                "engine-1",
                8_000,
                json!({"restart_after_s": 5.0}),
                json!({}),
            ),
            fault(
                "partition",
                "engine-0",
                10_000,
                json!({"from": ["db"], "direction": "both"}),
                json!({}),
            ),
        ];
        // The db errors show, but only after the bound (10 s + 15 s).
        ev.changes.push(change(
            26_003,
            "engine-0",
            "dalp_db_errors_total{reason=\"db_timeout\"}",
            1.0,
            1.0,
        ));
        let v = run(&ev);
        assert!(!v.held);
        assert_eq!(v.violation_count, 2, "{v:?}");
        assert!(
            v.violations[0].contains("engine_crash on engine-1 at 8.000 s")
                && v.violations[0].contains("a failed scrape of engine-1 (up == 0)")
                && v.violations[0].contains("by 23.000 s"),
            "{}",
            v.violations[0]
        );
        assert!(
            v.violations[1].contains("partition on engine-0 at 10.000 s")
                && v.violations[1].contains("engine-0's dalp_db_errors_total"),
            "{}",
            v.violations[1]
        );
    }

    #[test]
    fn a_stale_session_is_not_judged_when_nothing_could_show_it() {
        // One lock on one workflow's row shows only if that workflow writes while it is held;
        // with no database error in the window it is "not observable", never a violation.
        let mut ev = base();
        ev.faults = vec![
            fault(
                "db_stale_session",
                "db",
                8_000,
                json!({}),
                json!({"workflow": null, "reason": "no workflow in flight"}),
            ),
            fault(
                "db_stale_session",
                "db",
                20_000,
                json!({}),
                json!({"workflow": 7, "host": "db-0", "ends_at_ms": 30_000}),
            ),
        ];
        let v = run(&ev);
        assert!(v.held, "{v:?}");
    }

    #[test]
    fn an_rpc_fault_that_met_no_request_is_not_judged_but_one_that_did_must_show() {
        // step-transient seed 6 of the nightly: a 3 s 503 on eth_call that no eth_call met.
        let mut ev = base();
        let f = || {
            fault(
                "rpc_error",
                "rpc",
                24_000,
                json!({"method": "eth_call"}),
                json!({}),
            )
        };
        ev.faults = vec![f()];
        // A request failed by it, but outside its window [24 s, 29 s].
        ev.faulted_requests.insert("rpc-0".into(), vec![40_000]);
        let v = run(&ev);
        assert!(v.held, "{v:?}");
        assert!(
            v.checked.contains("healed before any request met it")
                && v.checked.contains("calling eth_call"),
            "{}",
            v.checked
        );
        // It met one: now it must show in the metrics, and nothing did.
        ev.faulted_requests.insert("rpc-1".into(), vec![25_000]);
        let v = run(&ev);
        assert_eq!(v.violation_count, 1, "{v:?}");
    }

    #[test]
    fn holds_when_each_fault_shows_within_the_bound() {
        let mut ev = base();
        ev.faults = vec![
            fault("engine_crash", "engine-1", 8_000, json!({}), json!({})),
            fault(
                "partition",
                "engine-0",
                10_000,
                json!({"from": ["db"]}),
                json!({}),
            ),
            fault("rpc_down", "rpc-0", 12_000, json!({}), json!({})),
            fault("db_conn_reset", "db", 20_000, json!({}), json!({})),
            fault(
                "reorg",
                "chain",
                30_000,
                json!({"depth": 2}),
                json!({"common_ancestor": 20, "removed_signer_txs": 1}),
            ),
        ];
        ev.scrapes.get_mut("engine-1").unwrap()[8].1 = false; // 9.003 s
        ev.faulted_requests.insert("rpc-0".into(), vec![12_500]);
        ev.changes = vec![
            change(
                13_003,
                "engine-0",
                "dalp_db_errors_total{reason=\"db_timeout\"}",
                1.0,
                1.0,
            ),
            change(
                14_003,
                "engine-1",
                "dalp_rpc_endpoint_healthy{endpoint=\"http://rpc-0:8545\"}",
                0.0,
                0.0,
            ),
            change(
                21_003,
                "engine-1",
                "dalp_db_errors_total{reason=\"db_unavailable\"}",
                2.0,
                1.0,
            ),
            change(31_003, "engine-0", "dalp_indexer_reorgs_total", 1.0, 1.0),
        ];
        let v = run(&ev);
        assert!(v.held, "{v:?}");
        assert!(v.checked.starts_with("5 faults: 5 seen"), "{}", v.checked);
    }

    #[test]
    fn evidence_for_another_endpoint_or_node_does_not_count() {
        let mut ev = base();
        ev.faults = vec![
            fault("rpc_error", "rpc-1", 12_000, json!({}), json!({})),
            fault(
                "partition",
                "engine-1",
                10_000,
                json!({"from": ["rpc"]}),
                json!({}),
            ),
        ];
        // rpc-1 failed requests (the fault met them); rpc-0's are another endpoint's.
        ev.faulted_requests.insert("rpc-1".into(), vec![12_100]);
        ev.faulted_requests.insert("rpc-0".into(), vec![12_200]);
        ev.changes = vec![change(
            13_003,
            "engine-0",
            "dalp_rpc_requests_total{endpoint=\"http://rpc-0:8545\",outcome=\"timeout\"}",
            1.0,
            1.0,
        )];
        let v = run(&ev);
        assert_eq!(v.violation_count, 2, "{v:?}");
        assert!(
            v.violations[0].contains("rpc_error on rpc-1"),
            "{}",
            v.violations[0]
        );
        assert!(
            v.violations[1].contains("partition on engine-1"),
            "{}",
            v.violations[1]
        );
    }

    #[test]
    fn faults_with_nothing_to_see_are_reported_not_observable() {
        let mut ev = base();
        ev.faults = vec![
            fault(
                "clock_skew",
                "engine-0",
                5_000,
                json!({"skew_ms": 30_000}),
                json!({}),
            ),
            fault(
                "reorg",
                "chain",
                30_000,
                json!({"depth": 1}),
                json!({"common_ancestor": 20, "removed_signer_txs": 0}),
            ),
            fault(
                "mempool_drop",
                "chain",
                31_000,
                json!({}),
                json!({"dropped": 0}),
            ),
            fault(
                "gas_spike",
                "chain",
                32_000,
                json!({}),
                json!({"signer_pending": 0}),
            ),
            fault(
                "db_latency",
                "db",
                33_000,
                json!({"extra_ms": 300}),
                json!({}),
            ),
            fault("db_lost_ack", "db", 34_000, json!({"rate": 0.5}), json!({})),
            fault(
                "engine_crash",
                "engine-0",
                35_000,
                json!({}),
                json!({"skipped": "already down"}),
            ),
        ];
        // The indexer was at block 19, below the reorg's common ancestor.
        ev.changes = vec![change(
            29_003,
            "engine-0",
            "dalp_indexer_last_block",
            19.0,
            0.0,
        )];
        let v = run(&ev);
        assert!(v.held, "{v:?}");
        assert!(
            v.checked.contains("0 seen") && v.checked.contains("7 not observable"),
            "{}",
            v.checked
        );
        assert!(v.checked.contains("clock_skew (by design"), "{}", v.checked);
        // The same reorg over an indexed block must show.
        ev.changes = vec![change(
            29_003,
            "engine-0",
            "dalp_indexer_last_block",
            22.0,
            0.0,
        )];
        let v = run(&ev);
        assert_eq!(v.violation_count, 1, "{v:?}");
        assert!(
            v.violations[0].starts_with("reorg on chain at 30.000 s"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn lost_acks_are_judged_from_the_first_lost_acknowledgement() {
        let mut ev = base();
        ev.faults = vec![fault("db_lost_ack", "db", 10_000, json!({}), json!({}))];
        ev.acks_lost_ms = vec![14_000];
        // 14 s + 5 s timeout: the error shows at 20 s, 10 s after the fault began but within the
        // bound after the first lost acknowledgement.
        ev.changes = vec![change(
            28_003,
            "engine-1",
            "dalp_db_errors_total{reason=\"db_timeout\"}",
            1.0,
            1.0,
        )];
        assert_eq!(run(&ev).violation_count, 0);
        ev.changes[0].t_ms = 29_003;
        let v = run(&ev);
        assert_eq!(v.violation_count, 1, "{v:?}");
    }

    #[test]
    fn gas_spikes_get_the_engines_stuck_bound_and_sends_decide_ambiguous_sends() {
        let mut ev = base();
        ev.faults = vec![
            fault(
                "gas_spike",
                "chain",
                10_000,
                json!({"base_fee_gwei": 200}),
                json!({"signer_pending": 2, "signer_underpriced": 1}),
            ),
            fault("rpc_ambiguous_send", "rpc-1", 20_000, json!({}), json!({})),
            fault(
                "gas_spike",
                "chain",
                40_000,
                json!({}),
                json!({"signer_pending": 1, "signer_underpriced": 0}),
            ),
        ];
        // Replaced after stuck_after (15 s) and a receipt poll: 16.5 s after the spike.
        ev.changes = vec![change(
            26_503,
            "engine-0",
            "dalp_tx_replacements_total",
            1.0,
            1.0,
        )];
        let v = run(&ev);
        assert!(v.held, "{v:?}");
        assert!(
            v.checked.contains("no transaction was sent through rpc-1"),
            "{}",
            v.checked
        );
        assert!(v.checked.contains("left underpriced"), "{}", v.checked);
        // A send went through rpc-1 during the fault, and nothing showed.
        ev.sends.insert("rpc-1".into(), vec![21_000]);
        let v = run(&ev);
        assert_eq!(v.violation_count, 1, "{v:?}");
        assert!(
            v.violations[0].starts_with("rpc_ambiguous_send on rpc-1 at 20.000 s"),
            "{}",
            v.violations[0]
        );
        // The spike's replacement comes too late.
        ev.sends.clear();
        ev.changes[0].t_ms = 27_503;
        let v = run(&ev);
        assert_eq!(v.violation_count, 1, "{v:?}");
        assert!(
            v.violations[0].starts_with("gas_spike on chain at 10.000 s"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn a_mined_external_nonce_must_show_and_a_replaced_one_need_not() {
        let hash = alloy_primitives::B256::repeat_byte(7);
        let mut vis = base();
        vis.faults = vec![fault(
            "external_nonce",
            "chain",
            10_000,
            json!({}),
            json!({"tx": hash}),
        )];
        let mut all = Evidence {
            visibility: vis,
            external_txs: vec![hash],
            ..Default::default()
        };
        let v = visibility(&all);
        assert!(
            v.held && v.checked.contains("never reached a block"),
            "{v:?}"
        );
        all.chain_txs.push(crate::check::ChainTx {
            hash,
            from: alloy_primitives::Address::ZERO,
            nonce: 5,
            to: None,
            success: true,
            block: 9,
        });
        let v = visibility(&all);
        assert_eq!(v.violation_count, 1, "{v:?}");
        assert!(
            v.violations[0].contains("dalp_nonce_resyncs_total"),
            "{}",
            v.violations[0]
        );
        all.visibility.changes = vec![change(
            12_003,
            "engine-2",
            "dalp_nonce_resyncs_total{signer=\"0xf39f\"}",
            1.0,
            1.0,
        )];
        assert!(visibility(&all).held);
    }
}
