//! What the platform promises per catalog id (DESIGN.md §4), and the recovery-time and data-loss
//! targets a scenario is judged against: its `[expect]` bounds, else its deployment pattern's
//! RTO/RPO. The audit report sets these beside what the runs measured.

use serde::{Deserialize, Serialize};

/// A deployment pattern of DESIGN.md §4, whose documented RTO/RPO are the default targets.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Deployment {
    /// RTO 2–15 min; RPO seconds to 1 min with synchronous replication.
    #[default]
    CloudNative,
    /// RTO 30–180 min; RPO 5–60 min.
    HotWarm,
    /// RTO 1–10 min; no RPO stated.
    HotHot,
}

impl Deployment {
    pub fn name(self) -> &'static str {
        match self {
            Deployment::CloudNative => "cloud-native",
            Deployment::HotWarm => "hot-warm",
            Deployment::HotHot => "hot-hot",
        }
    }

    /// The upper end of the documented RTO range, in seconds: a run recovering later breaks it.
    pub fn rto_s(self) -> f64 {
        match self {
            Deployment::CloudNative => 15.0 * 60.0,
            Deployment::HotWarm => 180.0 * 60.0,
            Deployment::HotHot => 10.0 * 60.0,
        }
    }

    /// The upper end of the documented RPO range, in seconds (`None`: §4 states none).
    pub fn rpo_s(self) -> Option<f64> {
        match self {
            Deployment::CloudNative => Some(60.0),
            Deployment::HotWarm => Some(60.0 * 60.0),
            Deployment::HotHot => None,
        }
    }
}

/// The largest target a scenario may state (a day): beyond it a target promises nothing.
pub const MAX_TARGET_S: f64 = 86_400.0;

/// A scenario's targets as the results record them (`summary.scenario_files[].targets`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Targets {
    pub deployment: Deployment,
    /// Recovery-time bound (s): `[expect] max_recovery_s`, else the deployment's RTO.
    pub recovery_s: f64,
    /// Where `recovery_s` came from: `expect` or the deployment's name.
    pub recovery_from: String,
    /// Data-loss window bound (s): `[expect] max_data_loss_s`, else the deployment's RPO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loss_s: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_loss_from: String,
}

impl Targets {
    /// The targets of `[expect]` (`deployment`, `max_recovery_s`, `max_data_loss_s`).
    pub fn of(e: &crate::scenario::Expect) -> Targets {
        let d = e.deployment.unwrap_or_default();
        let from = |given: bool| {
            if given {
                "expect".to_string()
            } else {
                format!("{} RTO/RPO", d.name())
            }
        };
        let data_loss_s = e.max_data_loss_s.or(d.rpo_s());
        Targets {
            deployment: d,
            recovery_s: e.max_recovery_s.unwrap_or(d.rto_s()),
            recovery_from: from(e.max_recovery_s.is_some()),
            data_loss_from: if data_loss_s.is_some() {
                from(e.max_data_loss_s.is_some())
            } else {
                String::new()
            },
            data_loss_s,
        }
    }
}

/// A target given in `[expect]`: finite, positive, at most [`MAX_TARGET_S`]; else the reason.
pub fn check_target(x: f64) -> Result<(), String> {
    if x.is_finite() && x > 0.0 && x <= MAX_TARGET_S {
        Ok(())
    } else {
        Err(format!(
            "must be a number of seconds in (0, {MAX_TARGET_S}], not {x}"
        ))
    }
}

/// The promised behaviour of each catalog id (DESIGN.md §4, the "promised behaviour" column).
pub fn behaviour(id: &str) -> &'static str {
    match id {
        "FM-RPC-NODE-DOWN" => "traffic fails over to a healthy endpoint; no workflow fails",
        "FM-RPC-ALL-DOWN" => {
            "chain-bound work queues durably (not dead-lettered, not lost); everything completes after recovery"
        }
        "FM-RPC-TIMEOUT" => {
            "status/receipt checked before any resubmission; no duplicate on-chain effect"
        }
        "FM-REORG" => {
            "detected by block hash; re-included or re-sent with the same nonce; indexed state rolled back and replayed; no double effect"
        }
        "FM-GAS-SPIKE" => "fee re-estimated; replacement with the same nonce; exactly one mined",
        "FM-NONCE-CONFLICT" => {
            "conflict detected; resync; no nonce reuse by two operations, no gap that blocks later transactions"
        }
        "FM-MEMPOOL-DROP" => "noticed by the receipt loop; the same signed bytes re-broadcast",
        "FM-ENGINE-CRASH" => {
            "resumes from the last checkpoint on restart or on another node; no data loss, no duplicate operation"
        }
        "FM-STEP-TRANSIENT" => "retried with backoff and jitter, then succeeds",
        "FM-STEP-EXHAUSTED" => {
            "routed to the dead-letter queue with a reason; requeue by an operator completes it once"
        }
        "FM-DB-CONN-LOST" => {
            "operations retried; no lost or duplicated state; commits of unknown outcome reconciled"
        }
        "FM-DB-FAILOVER" => {
            "sync: no acknowledged write lost; async: loss window measured, lost records never cause a duplicate on-chain effect"
        }
        "FM-DB-READ-ONLY" => {
            "errors classified; reconnect to the primary; nothing written to the wrong node"
        }
        "FM-PARTITION" => {
            "another node takes over after the lease; the old holder's late writes are fenced off"
        }
        "FM-CLOCK-SKEW" => "leases and timeouts stay correct (database time or fencing)",
        "FM-INDEXER-CRASH" => {
            "resumes from its checkpoint; idempotent; indexed state equals chain state"
        }
        "FM-FAIL-CLOSED" => "blocked with a typed failure; no transaction is sent",
        "FM-SIGNER-FUNDS" => {
            "sends fail with a typed reason and wait or dead-letter; after top-up they complete"
        }
        "FM-REGION-FAILOVER" => {
            "all accepted work completes; recovery time and data-loss window measured"
        }
        _ => "(not in the catalog of DESIGN.md §4)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Expect, CATALOG};

    #[test]
    fn targets_default_to_the_deployment_and_expect_overrides_them() {
        let t = Targets::of(&Expect::default());
        assert_eq!((t.recovery_s, t.data_loss_s), (900.0, Some(60.0)));
        assert_eq!(t.recovery_from, "cloud-native RTO/RPO");
        let e = Expect {
            deployment: Some(Deployment::HotWarm),
            max_recovery_s: Some(30.0),
            ..Expect::default()
        };
        let t = Targets::of(&e);
        assert_eq!((t.recovery_s, t.data_loss_s), (30.0, Some(3600.0)));
        assert_eq!(
            (t.recovery_from.as_str(), t.data_loss_from.as_str()),
            ("expect", "hot-warm RTO/RPO")
        );
        let hot = Targets::of(&Expect {
            deployment: Some(Deployment::HotHot),
            ..Expect::default()
        });
        assert_eq!((hot.data_loss_s, hot.data_loss_from.as_str()), (None, ""));
    }

    #[test]
    fn every_catalog_id_has_its_promise_and_bad_targets_are_refused() {
        for id in CATALOG {
            assert!(!behaviour(id).starts_with('('), "{id}");
        }
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_TARGET_S + 1.0] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
        assert!(check_target(MAX_TARGET_S).is_ok());
    }
}
