//! Coverage probes and fault points: named places in the engine that the simulation counts
//! ("was this path ever taken?", FoundationDB's `CODE_PROBE`) and may perturb (BUGGIFY).
//!
//! Both are declared once, in [`PROBES`], and compile to nothing outside `--cfg madsim`: the
//! macros expand to a compile-time check that the name is declared (a `const` assertion, no
//! code) and, in the simulation only, to a call into [`sim`]. A probe marked `must` names why
//! the `ci` suite has to reach it; a suite that declares `must_probes` fails when one is missed.

/// What a declared name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A path worth knowing was taken.
    Probe,
    /// A risky window where the simulation may delay, fail (transiently) or crash the node.
    FaultPoint {
        /// Whether the window may return a transient error (the site supplies which).
        error: bool,
        /// Whether the node may crash there (and be restarted, as a supervisor would).
        crash: bool,
    },
}

/// One declared probe or fault point.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub name: &'static str,
    pub kind: Kind,
    /// `Some(reason)`: the `ci` suite must reach it, for that reason.
    pub must: Option<&'static str>,
}

const fn p(name: &'static str) -> Probe {
    Probe {
        name,
        kind: Kind::Probe,
        must: None,
    }
}

const fn must(name: &'static str, reason: &'static str) -> Probe {
    Probe {
        name,
        kind: Kind::Probe,
        must: Some(reason),
    }
}

const fn fp(name: &'static str, error: bool, crash: bool) -> Probe {
    Probe {
        name,
        kind: Kind::FaultPoint { error, crash },
        must: None,
    }
}

/// Every probe and fault point of the engine. A name used in [`probe!`] or [`fault_point!`]
/// that is not here does not compile; a name here that no code uses is reported unreached.
pub const PROBES: &[Probe] = &[
    // Errors the engine handled (a failed step, a failed claim, a write that could not be
    // persisted: engine.rs, `error_probe`), by the cause's class.
    p("error.db.connection"),
    p("error.db.serialization"),
    must(
        "error.db.read_only",
        "SQLSTATE 25006: a failover's demoted primary answers so; db-read-only exists for it",
    ),
    p("error.db.resources"),
    p("error.db.shutdown"),
    p("error.db.permanent"),
    must(
        "error.db.unavailable",
        "a lost database connection is retried (FM-DB-CONN-LOST)",
    ),
    p("error.db.timeout"),
    p("error.rpc.transient"),
    p("error.rpc.permanent"),
    must(
        "error.rpc.unavailable",
        "every RPC endpoint down must be waited out (FM-RPC-ALL-DOWN)",
    ),
    p("error.rpc.timeout"),
    must(
        "error.reverted",
        "a revert is the permanent failure that goes to the dead-letter queue",
    ),
    must(
        "error.compliance_rejected",
        "fail closed (FM-COMPLIANCE) must be taken",
    ),
    p("error.compliance_unsettled"),
    p("error.signer_funds"),
    p("error.invalid_input"),
    p("error.not_found"),
    p("error.confirmation_timeout"),
    p("error.nonce_reconciling"),
    p("error.no_contract_code"),
    p("error.record_lost"),
    p("error.internal"),
    p("error.fenced"),
    p("claim.failed"),
    // What the engine did with the failure.
    must("step.retry_scheduled", "transient failures retry"),
    must(
        "step.retry_not_counted",
        "an outage of every endpoint spends no attempts",
    ),
    must(
        "step.dead_lettered",
        "permanent failures land in the dead-letter queue",
    ),
    p("step.dead_lettered_exhausted"),
    must(
        "step.failed_closed",
        "a compliance rejection fails the workflow",
    ),
    p("step.abandon_failed"),
    must(
        "lease.fenced",
        "a superseded holder's write is refused (fencing)",
    ),
    must(
        "store.persist_failed",
        "a step whose output could not be written resumes from its checkpoint",
    ),
    // The transaction manager.
    must(
        "tx.ambiguous_send",
        "a send whose answer was lost is resolved by receipt before re-sending",
    ),
    p("tx.already_known"),
    p("tx.nonce_too_low_unexplained"),
    p("tx.nonce_too_low_ours"),
    must(
        "tx.nonce_gone_resync",
        "a nonce used outside the engine is resynchronised",
    ),
    p("tx.resync_count_moved"),
    must(
        "tx.replaced_by_fee",
        "a stuck or underpriced transaction is replaced with the same nonce",
    ),
    must(
        "tx.rebroadcast",
        "a dropped transaction is re-sent from its stored bytes",
    ),
    p("tx.reorged"),
    must(
        "tx.reverted_on_chain",
        "a transaction that reverts on chain fails its step, never completes it",
    ),
    p("tx.rejected_other"),
    p("nonce.gap_rebroadcast"),
    must(
        "nonce.filler_sent",
        "a gap left by an external nonce user is filled",
    ),
    p("orphan.found"),
    p("orphan.queued_found"),
    p("orphan.count_moved_during_search"),
    p("orphan.filler_recorded_again"),
    p("orphan.adopted"),
    p("tx.lost_version_adopted"),
    p("tx.lost_version_at_another_nonce"),
    p("tx.lost_version_stored_orphan"),
    p("orphan.missing"),
    // The gateway.
    must(
        "rpc.failover",
        "a failing endpoint moves traffic to another",
    ),
    must(
        "rpc.all_endpoints_failed",
        "every endpoint down is an outage, not an answer",
    ),
    p("rpc.lagging_endpoint_skipped"),
    p("rpc.answer_from_lagging_rechecked"),
    p("rpc.call_head_spot_checked"),
    p("rpc.answer_from_lagging_refused"),
    // The indexer.
    must("indexer.reorg_detected", "the indexer follows reorgs"),
    p("indexer.rollback"),
    p("indexer.iteration_failed"),
    p("indexer.checkpoint_moved"),
    // Operator actions and off-chain effects.
    must("requeue.done", "an operator requeue resumes a dead letter"),
    must(
        "requeue.abandoned_version",
        "a requeued step adopts the transaction it abandoned, mined after all",
    ),
    p("requeue.abandoned_pending"),
    must("notify.first_delivery", "every issuance notifies once"),
    p("notify.duplicate_suppressed"),
    // Fault points: the risky windows between a durable write and its effect, or the reverse.
    fp("fp.tx.signed_before_broadcast", true, true),
    fp("fp.tx.broadcast_before_state", false, true),
    fp("fp.step.effect_before_complete", true, true),
    fp("fp.lease.renew", true, false),
    fp("fp.indexer.batch", true, true),
    fp("fp.retry.before_write", false, true),
    fp("fp.gateway.before_failover", true, false),
    fp("fp.notify.before_write", true, true),
    fp("fp.requeue.before_write", true, true),
    fp("fp.nonce.heal", true, true),
    fp("fp.notify.after_write", true, true),
];

/// The panic message a crashing fault point raises; the simulation restarts engine nodes whose
/// task panics with it (madsim's `restart_on_panic_matching`) and keeps it out of stderr.
pub const CRASH_MESSAGE: &str = "dalp fault point: crash at";

/// Whether `name` is declared in [`PROBES`] (usable in `const` context).
pub const fn is_declared(name: &str) -> bool {
    let mut i = 0;
    while i < PROBES.len() {
        if eq(PROBES[i].name.as_bytes(), name.as_bytes()) {
            return true;
        }
        i += 1;
    }
    false
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The declaration of `name`.
pub fn declared(name: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|p| p.name == name)
}

/// The declaration of fault point `name`, if it can `fail` (return the site's transient error)
/// and `crash` as asked; otherwise why not (for scenario validation and the simulation).
pub fn fault_point_allowing(
    name: &str,
    fail: bool,
    crash: bool,
) -> std::result::Result<&'static Probe, String> {
    let Some(p) = declared(name).filter(|p| matches!(p.kind, Kind::FaultPoint { .. })) else {
        let known: Vec<&str> = PROBES
            .iter()
            .filter(|p| matches!(p.kind, Kind::FaultPoint { .. }))
            .map(|p| p.name)
            .collect();
        return Err(format!(
            "{name:?} is not a declared fault point; known: {}",
            known.join(", ")
        ));
    };
    let Kind::FaultPoint { error, crash: can } = p.kind else {
        unreachable!()
    };
    if fail && !error {
        return Err(format!("{name} has no transient error to fail with"));
    }
    if crash && !can {
        return Err(format!("{name} may not crash the node"));
    }
    Ok(p)
}

#[cfg(madsim)]
fn check_firing(name: &str, f: sim::Firing) -> std::result::Result<&'static Probe, String> {
    fault_point_allowing(name, f == sim::Firing::Fail, f == sim::Firing::Crash)
}

/// Count that the path named `$name` was taken (simulation only; nothing in production).
#[macro_export]
macro_rules! probe {
    ($name:literal) => {{
        const _: () = assert!(
            $crate::probe::is_declared($name),
            concat!("undeclared probe ", $name)
        );
        #[cfg(madsim)]
        $crate::probe::sim::hit($name);
    }};
}

/// A fault point (simulation only; nothing in production): counted as a probe, and when the
/// seed enabled it, it may sleep, return `Err($err)` from the enclosing function (a transient
/// error of the site's kind), or crash the node (which the simulation restarts).
#[macro_export]
macro_rules! fault_point {
    // The fault as a value (`Ok(())` unless it fails), for callers that handle it themselves.
    (result $name:literal, $err:expr) => {{
        const _: () = assert!(
            $crate::probe::is_declared($name),
            concat!("undeclared fault point ", $name)
        );
        #[cfg(madsim)]
        let r: ::std::result::Result<(), $crate::error::EngineError> =
            match $crate::probe::sim::fault($name) {
                $crate::probe::sim::Action::Continue => Ok(()),
                $crate::probe::sim::Action::Delay(d) => {
                    ::tokio::time::sleep(d).await;
                    Ok(())
                }
                $crate::probe::sim::Action::Fail => Err($err),
                $crate::probe::sim::Action::Crash => $crate::probe::sim::crash($name),
            };
        #[cfg(not(madsim))]
        let r: ::std::result::Result<(), $crate::error::EngineError> = Ok(());
        r
    }};
    ($name:literal, $err:expr) => {{
        $crate::fault_point!(result $name, $err)?;
    }};
    ($name:literal) => {{
        const _: () = assert!(
            $crate::probe::is_declared($name),
            concat!("undeclared fault point ", $name)
        );
        #[cfg(madsim)]
        match $crate::probe::sim::fault($name) {
            $crate::probe::sim::Action::Continue | $crate::probe::sim::Action::Fail => {}
            $crate::probe::sim::Action::Delay(d) => ::tokio::time::sleep(d).await,
            $crate::probe::sim::Action::Crash => $crate::probe::sim::crash($name),
        }
    }};
}

/// What an enabled fault point does when it fires: drawn each time (`Any`: mostly delays, else
/// the site's transient error or a crash, as the site allows), or always the one named. Outside
/// the simulation's module because scenario files name it (`firing = "fail"`) in both flavours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firing {
    #[default]
    Any,
    Delay,
    Fail,
    Crash,
}

/// The simulation's side: counts, and the seed's plan of which fault points are enabled.
/// One simulation runs on one thread (madsim), so the state is thread-local: tests running
/// simulations side by side do not share it.
#[cfg(madsim)]
pub mod sim {
    use super::{declared, Kind, PROBES};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::time::Duration;

    pub use super::{Firing, CRASH_MESSAGE};

    /// What a fault point does this time.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Action {
        Continue,
        Delay(Duration),
        Fail,
        Crash,
    }

    /// An enabled fault point: how often it fires when reached.
    #[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Enabled {
        pub fire_probability: f64,
        /// What it does when it fires.
        pub firing: Firing,
        /// Fires at most this many times in the run (`None`: no limit).
        pub max_fires: Option<u64>,
    }

    #[derive(Default)]
    struct State {
        counts: BTreeMap<&'static str, u64>,
        fired: BTreeMap<&'static str, u64>,
        enabled: BTreeMap<&'static str, Enabled>,
        rng: u64,
    }

    /// Told of every fault point that fires (the simulation traces them).
    type Observer = Box<dyn Fn(&'static str, Action)>;

    thread_local! {
        static STATE: RefCell<State> = RefCell::new(State::default());
        static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
    }

    /// Call `f` with every fault point that fires, before it acts.
    pub fn observe(f: impl Fn(&'static str, Action) + 'static) {
        OBSERVER.with(|o| *o.borrow_mut() = Some(Box::new(f)));
    }

    /// splitmix64: the fault points' own stream, seeded by the run, so arming them does not
    /// shift any other random draw of the simulation.
    fn next(rng: &mut u64) -> u64 {
        *rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(rng: &mut u64) -> f64 {
        (next(rng) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Start a run: counts cleared, every fault point disabled, no observer.
    pub fn reset() {
        STATE.with(|s| *s.borrow_mut() = State::default());
        OBSERVER.with(|o| *o.borrow_mut() = None);
    }

    /// Arm the fault points for a seed: each is enabled with `enable_probability`, and an
    /// enabled one fires with a probability drawn between 1 % and 25 %. Returns the enabled set.
    pub fn arm(seed: u64, enable_probability: f64) -> BTreeMap<String, Enabled> {
        assert!((0.0..=1.0).contains(&enable_probability));
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.rng = seed ^ 0x6275_6767_6966_7921; // "buggify!"
            s.enabled.clear();
            for p in PROBES {
                if let Kind::FaultPoint { .. } = p.kind {
                    let on = unit(&mut s.rng) < enable_probability;
                    let fire_probability = 0.01 + 0.24 * unit(&mut s.rng);
                    if on {
                        s.enabled.insert(
                            p.name,
                            Enabled {
                                fire_probability,
                                firing: Firing::Any,
                                max_fires: None,
                            },
                        );
                    }
                }
            }
            s.enabled.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        })
    }

    /// Enable the fault point `name` for this run whatever [`arm`] drew for it, as given. Errs
    /// (naming why) when `name` is not a declared fault point, or `e.firing` is something the
    /// site cannot do (a transient error where the site has none, a crash where it allows none).
    pub fn arm_always(name: &str, e: Enabled) -> Result<(), String> {
        let p = super::check_firing(name, e.firing)?;
        STATE.with(|s| {
            s.borrow_mut().enabled.insert(p.name, e);
        });
        Ok(())
    }

    /// The set [`arm`] and [`arm_always`] enabled.
    pub fn armed() -> BTreeMap<String, Enabled> {
        STATE.with(|s| {
            s.borrow()
                .enabled
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
        })
    }

    /// Disable every fault point (the run's quiet phase: liveness is judged without them).
    pub fn disarm() {
        STATE.with(|s| s.borrow_mut().enabled.clear());
    }

    /// Count a probe.
    pub fn hit(name: &'static str) {
        debug_assert!(declared(name).is_some(), "undeclared probe {name}");
        STATE.with(|s| *s.borrow_mut().counts.entry(name).or_insert(0) += 1);
    }

    /// Count a fault point and decide what it does this time.
    pub fn fault(name: &'static str) -> Action {
        let Some(Probe {
            kind: Kind::FaultPoint { error, crash },
            ..
        }) = declared(name).copied()
        else {
            panic!("{name} is not a declared fault point");
        };
        let action = STATE.with(|s| {
            let mut s = s.borrow_mut();
            *s.counts.entry(name).or_insert(0) += 1;
            let Some(e) = s.enabled.get(name).copied() else {
                return Action::Continue;
            };
            if e.max_fires
                .is_some_and(|m| s.fired.get(name).copied().unwrap_or(0) >= m)
            {
                return Action::Continue;
            }
            if unit(&mut s.rng) >= e.fire_probability {
                return Action::Continue;
            }
            *s.fired.entry(name).or_insert(0) += 1;
            match e.firing {
                Firing::Any => {}
                Firing::Fail if error => return Action::Fail,
                Firing::Crash if crash => return Action::Crash,
                // A delay; also what a firing the site cannot do becomes (never armed so).
                _ => {
                    let ms = (2f64).powf(13.0 * unit(&mut s.rng)) as u64;
                    return Action::Delay(Duration::from_millis(ms.max(1)));
                }
            }
            // Delays are most of it: they move the window's edges against everything else.
            let r = unit(&mut s.rng);
            if crash && r < 0.15 {
                Action::Crash
            } else if error && r < 0.45 {
                Action::Fail
            } else {
                // Between 1 ms and ~8 s, log-uniform: short ones reorder, long ones outlast leases.
                let ms = (2f64).powf(13.0 * unit(&mut s.rng)) as u64;
                Action::Delay(Duration::from_millis(ms.max(1)))
            }
        });
        if action != Action::Continue {
            OBSERVER.with(|o| {
                if let Some(f) = o.borrow().as_ref() {
                    f(name, action)
                }
            });
        }
        action
    }

    use super::Probe;

    /// Crash the node at a fault point: the panic unwinds this task, and the simulation,
    /// which restarts engine nodes on this message, restarts the whole node.
    pub fn crash(name: &'static str) -> ! {
        panic!("{CRASH_MESSAGE} {name}");
    }

    /// What this run reached: probe counts (fault points included) and fault points fired.
    #[derive(Clone, Debug, Default)]
    pub struct Coverage {
        pub counts: BTreeMap<String, u64>,
        pub fired: BTreeMap<String, u64>,
    }

    /// This run's coverage so far.
    pub fn coverage() -> Coverage {
        STATE.with(|s| {
            let s = s.borrow();
            Coverage {
                counts: s.counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                fired: s.fired.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_must_probes_say_why() {
        let mut seen = std::collections::BTreeSet::new();
        for p in PROBES {
            assert!(seen.insert(p.name), "{} declared twice", p.name);
            if let Some(why) = p.must {
                assert!(!why.is_empty(), "{} is `must` without a reason", p.name);
                assert_eq!(
                    p.kind,
                    Kind::Probe,
                    "{}: fault points are not `must`",
                    p.name
                );
            }
            assert_eq!(
                p.name.starts_with("fp."),
                matches!(p.kind, Kind::FaultPoint { .. }),
                "{}: fault points, and only they, are named fp.*",
                p.name
            );
        }
        assert!(is_declared("tx.rebroadcast"));
        assert!(!is_declared("tx.rebroadcas"));
        assert!(!is_declared("tx.rebroadcastx"));
    }

    #[test]
    fn fault_points_allow_what_their_site_can_do() {
        assert!(fault_point_allowing("fp.notify.after_write", true, false).is_ok());
        assert!(fault_point_allowing("fp.notify.after_write", false, true).is_ok());
        let e = fault_point_allowing("fp.retry.before_write", true, false).unwrap_err();
        assert!(e.contains("no transient error"), "{e}");
        let e = fault_point_allowing("fp.lease.renew", false, true).unwrap_err();
        assert!(e.contains("may not crash"), "{e}");
        let e = fault_point_allowing("notify.first_delivery", false, false).unwrap_err();
        assert!(
            e.contains("not a declared fault point") && e.contains("fp.nonce.heal"),
            "{e}"
        );
    }

    /// A declared name that no code uses would be reported unreached for ever: every
    /// declaration is used in the engine's source, through the macros or the step-error table.
    #[test]
    fn every_declared_name_is_used_in_the_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut text = String::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") && !path.ends_with("probe.rs")
                {
                    text.push_str(&std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        for p in PROBES {
            assert!(
                text.contains(&format!("\"{}\"", p.name)),
                "{} is declared but no engine code names it",
                p.name
            );
        }
    }
}
