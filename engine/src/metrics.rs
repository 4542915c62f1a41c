//! Per-engine-instance metrics with Prometheus text exposition.
//!
//! No global registry: the simulation runs several engine nodes in one process, and each must
//! report its own numbers. Series are kept in ordered maps so the exposition is stable.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

type Labels = Vec<(&'static str, String)>;

#[derive(Default, Debug)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), i64>>,
}

/// Metric names and their help text: the contract with dashboards and `alerts.yml`.
pub const HELP: &[(&str, &str, &str)] = &[
    (
        "dalp_requests_total",
        "counter",
        "Workflow requests accepted, by kind and whether they were new.",
    ),
    (
        "dalp_step_outcomes_total",
        "counter",
        "Step executions by step and outcome (completed, retry, dead_letter, failed, fenced).",
    ),
    (
        "dalp_retries_total",
        "counter",
        "Step attempts scheduled for retry, by reason.",
    ),
    (
        "dalp_dead_letter_depth",
        "gauge",
        "Workflows currently in the dead-letter queue.",
    ),
    (
        "dalp_stalled_workflows",
        "gauge",
        "Active workflows whose next attempt is overdue beyond the stall bound.",
    ),
    (
        "dalp_workflows_active",
        "gauge",
        "Workflows pending or running.",
    ),
    (
        "dalp_rpc_requests_total",
        "counter",
        "JSON-RPC requests by endpoint and outcome.",
    ),
    (
        "dalp_rpc_failovers_total",
        "counter",
        "Requests moved to another endpoint after a failure, by failed endpoint.",
    ),
    (
        "dalp_rpc_endpoint_healthy",
        "gauge",
        "1 when an endpoint is considered healthy.",
    ),
    (
        "dalp_rpc_endpoint_lag_blocks",
        "gauge",
        "Blocks an endpoint's head is behind the best head seen at the last health probe.",
    ),
    (
        "dalp_nonce_resyncs_total",
        "counter",
        "Nonce resynchronisations from the chain, by signer.",
    ),
    (
        "dalp_nonce_gap_heals_total",
        "counter",
        "Stored signed transactions re-broadcast to fill a nonce gap that blocked later ones, by signer.",
    ),
    (
        "dalp_nonce_gap_fills_total",
        "counter",
        "Zero-value self-transfers sent to fill a nonce used and abandoned outside the engine, by signer.",
    ),
    (
        "dalp_nonce_external_use_total",
        "counter",
        "Nonces of the engine's signer used on chain by transactions the engine did not sign (someone else holds the key), by signer.",
    ),
    (
        "dalp_orphans_found_total",
        "counter",
        "Signed transactions of ours found on chain at nonces no record held (records lost), by signer.",
    ),
    (
        "dalp_orphans_adopted_total",
        "counter",
        "Steps that adopted their own orphaned transaction instead of sending again, by signer.",
    ),
    (
        "dalp_orphan_nonces_unresolved_total",
        "counter",
        "Reconciliations that left a nonce used on chain without a record unexplained, by signer.",
    ),
    (
        "dalp_nonce_reconcile_waits_total",
        "counter",
        "Steps that waited for a nonce pending on chain that no record holds, by signer.",
    ),
    (
        "dalp_tx_replacements_total",
        "counter",
        "Replace-by-fee transactions sent.",
    ),
    (
        "dalp_tx_rebroadcasts_total",
        "counter",
        "Stored signed transactions re-broadcast (dropped or unknown outcome).",
    ),
    (
        "dalp_tx_reorged_total",
        "counter",
        "Transactions whose block was reorganised away.",
    ),
    (
        "dalp_fenced_writes_total",
        "counter",
        "Writes rejected because the lease was superseded.",
    ),
    (
        "dalp_db_errors_total",
        "counter",
        "Database errors by reason.",
    ),
    (
        "dalp_indexer_lag_blocks",
        "gauge",
        "Chain head minus the last indexed block.",
    ),
    (
        "dalp_indexer_reorgs_total",
        "counter",
        "Reorganisations the indexer rolled back.",
    ),
    ("dalp_indexer_last_block", "gauge", "Last block indexed."),
    (
        "dalp_operator_actions_total",
        "counter",
        "Operator actions by action and outcome.",
    ),
];

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        debug_assert!(
            HELP.iter()
                .any(|(h, kind, _)| *h == name && *kind == "counter"),
            "undeclared counter {name}"
        );
        let key = (name, owned(labels));
        *self
            .counters
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default() += n;
    }

    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], v: i64) {
        debug_assert!(
            HELP.iter()
                .any(|(h, kind, _)| *h == name && *kind == "gauge"),
            "undeclared gauge {name}"
        );
        self.gauges
            .lock()
            .expect("metrics lock")
            .insert((name, owned(labels)), v);
    }

    /// Current value of a counter summed over all label sets (for tests and reports).
    pub fn counter_total(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .expect("metrics lock")
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, v)| v)
            .sum()
    }

    pub fn gauge(&self, name: &str, labels: &[(&'static str, &str)]) -> Option<i64> {
        self.gauges
            .lock()
            .expect("metrics lock")
            .get(&(leak_free_name(name)?, owned(labels)))
            .copied()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let counters = self.counters.lock().expect("metrics lock");
        let gauges = self.gauges.lock().expect("metrics lock");
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let series: Vec<(String, String)> = if *kind == "counter" {
                counters
                    .iter()
                    .filter(|((n, _), _)| n == name)
                    .map(|((_, l), v)| (fmt_labels(l), v.to_string()))
                    .collect()
            } else {
                gauges
                    .iter()
                    .filter(|((n, _), _)| n == name)
                    .map(|((_, l), v)| (fmt_labels(l), v.to_string()))
                    .collect()
            };
            if series.is_empty() {
                if *kind == "counter" && !HAS_LABELS.contains(name) {
                    let _ = writeln!(out, "{name} 0");
                }
                continue;
            }
            for (labels, v) in series {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        }
        out
    }
}

/// Counters that are always labelled: no unlabelled zero series is printed for them.
const HAS_LABELS: &[&str] = &[
    "dalp_requests_total",
    "dalp_step_outcomes_total",
    "dalp_retries_total",
    "dalp_rpc_requests_total",
    "dalp_rpc_failovers_total",
    "dalp_nonce_resyncs_total",
    "dalp_nonce_gap_heals_total",
    "dalp_nonce_gap_fills_total",
    "dalp_nonce_external_use_total",
    "dalp_orphans_found_total",
    "dalp_orphans_adopted_total",
    "dalp_orphan_nonces_unresolved_total",
    "dalp_nonce_reconcile_waits_total",
    "dalp_db_errors_total",
    "dalp_operator_actions_total",
];

fn leak_free_name(name: &str) -> Option<&'static str> {
    HELP.iter().find(|(n, _, _)| *n == name).map(|(n, _, _)| *n)
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn fmt_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.inc(
            "dalp_requests_total",
            &[("kind", "transfer"), ("new", "true")],
        );
        m.inc(
            "dalp_requests_total",
            &[("kind", "transfer"), ("new", "true")],
        );
        m.set("dalp_dead_letter_depth", &[], 3);
        m.inc("dalp_tx_replacements_total", &[]);
        let text = m.render();
        assert!(
            text.contains("dalp_requests_total{kind=\"transfer\",new=\"true\"} 2"),
            "{text}"
        );
        assert!(text.contains("dalp_dead_letter_depth 3"));
        assert!(text.contains("dalp_tx_replacements_total 1"));
        assert!(
            text.contains("dalp_nonce_resyncs_total")
                && text.contains("# TYPE dalp_nonce_resyncs_total counter")
        );
        assert_eq!(m.counter_total("dalp_requests_total"), 2);
        assert_eq!(m.gauge("dalp_dead_letter_depth", &[]), Some(3));
    }

    #[test]
    fn instances_are_independent() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.inc("dalp_tx_rebroadcasts_total", &[]);
        assert_eq!(b.counter_total("dalp_tx_rebroadcasts_total"), 0);
    }
}
