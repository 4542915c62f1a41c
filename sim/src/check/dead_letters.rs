//! `dead_letters`: every dead letter's cause is permanent by the error classification table
//! (DESIGN.md §3), judged here from the recorded cause itself, not from the class the engine
//! wrote beside it (a misclassification writes a wrong class too).
//!
//! - An outage (connection loss, read-only node, a timeout, 503, a lagging or failing node) is
//!   waited out: it never dead-letters, whatever the attempt count.
//! - A transient cause that is not an outage (a serialization failure, funds, a node with no
//!   code yet, a confirmation that outlived its bound, an unknown node error) dead-letters only
//!   once the retry budget is spent.
//! - A permanent cause (a revert, invalid input, a rejected call) may dead-letter at once, and
//!   is never retried: a retry in the journal for one is a misclassification as surely as an
//!   early dead letter for a transient one (the request would wait out a budget of attempts, and
//!   a later attempt could act on what was refused).

use super::{Evidence, Verdict};
#[cfg(test)]
use serde_json::Value;

/// How the table classifies a recorded cause.
#[derive(Debug, PartialEq, Eq)]
enum Cause {
    Outage,
    Transient,
    Permanent,
}

/// The SQLSTATE in a database error's message ("database error (SQLSTATE 25006): …").
fn sqlstate(message: &str) -> &str {
    message
        .split("SQLSTATE ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or("")
}

/// The JSON-RPC code in a node error's message ("rpc error -32000: …").
fn rpc_code(message: &str) -> Option<i64> {
    message
        .strip_prefix("rpc error ")?
        .split(':')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn classify(reason_code: &str, message: &str) -> Option<Cause> {
    Some(match reason_code {
        "db_unavailable"
        | "db_timeout"
        | "rpc_unavailable"
        | "rpc_timeout"
        | "fenced"
        | "nonce_reconciling"
        | "compliance_unsettled" => Cause::Outage,
        "db_error" => match sqlstate(message) {
            "" | "25006" | "57P01" | "57P02" | "57P03" | "57014" => Cause::Outage,
            s if s.starts_with("08") || s.starts_with("53") => Cause::Outage,
            "40001" | "40P01" | "55P03" => Cause::Transient,
            // A foreign key the engine wrote the parent of: the database lost an acknowledged
            // commit (an asynchronous failover), which the step recovers from on a later try.
            "23503" => Cause::Transient,
            _ => Cause::Permanent,
        },
        "rpc_error" => match rpc_code(message) {
            Some(-32600 | -32601 | -32602 | -32700 | 3) => Cause::Permanent,
            // Server error, limit exceeded, internal error, rate limited: another node or a
            // later try may answer.
            Some(-32000 | -32005 | -32603 | 429) => Cause::Outage,
            _ => Cause::Transient,
        },
        "signer_funds" | "no_contract_code" | "confirmation_timeout" | "record_lost" => {
            Cause::Transient
        }
        "reverted" | "invalid_input" | "internal" | "compliance_rejected" => Cause::Permanent,
        _ => return None,
    })
}

/// Judge every dead letter's recorded cause; `max_attempts` is the engines' retry budget.
pub fn dead_letters(ev: &Evidence, max_attempts: u32) -> Verdict {
    let mut v = Vec::new();
    let mut n = 0;
    for w in ev.workflows.iter().filter(|w| w.status == "dead_letter") {
        n += 1;
        let Some(e) = &w.error else {
            v.push(format!(
                "workflow {} is dead-lettered with no recorded cause",
                w.id
            ));
            continue;
        };
        let code = e["reason_code"].as_str().unwrap_or("");
        let message = e["message"].as_str().unwrap_or("");
        let attempt = e["attempt"].as_u64().unwrap_or(0);
        let step = e["step"].as_str().unwrap_or("?");
        match classify(code, message) {
            None => v.push(format!(
                "workflow {} is dead-lettered at step {step} with a cause the classification table does not know: {code:?} ({message})",
                w.id
            )),
            Some(Cause::Outage) => v.push(format!(
                "workflow {} is dead-lettered at step {step} (attempt {attempt}) for an outage, which must be waited out: {code} ({message})",
                w.id
            )),
            Some(Cause::Transient) if attempt < u64::from(max_attempts) => v.push(format!(
                "workflow {} is dead-lettered at step {step} after {attempt} of {max_attempts} attempts for a transient cause: {code} ({message})",
                w.id
            )),
            Some(_) => {}
        }
    }
    let retried = budget_counted(ev, max_attempts, &mut v);
    Verdict::new(
        "dead_letters",
        format!(
            "{n} dead letters' causes against the classification table; {retried} steps' retries against the budget"
        ),
        v,
    )
}

/// The other side of the budget, from each journal's `retry` entries (their recorded cause,
/// classified as above), counted per step since it was last claimed fresh (a completed step, a
/// requeue): a retry whose recorded `spent` (what the engine charged the budget) falls behind
/// the transient failures (not outages) in a row before it, which lets a step retry for ever;
/// and a retry at the budget's last attempt or later (the budget allows `max_attempts - 1`
/// retries), unless the engine marked it `settling` (it retries once more when it cannot settle
/// the step's transaction before dead-lettering). Causes the table counts as outages are not
/// counted, so an engine that charges more than the table says is never accused. Returns how
/// many steps were retried at all.
fn budget_counted(ev: &Evidence, max_attempts: u32, v: &mut Vec<String>) -> usize {
    let max = u64::from(max_attempts);
    let mut steps = 0;
    for (wf, journal) in &ev.journals {
        // (step, transient failures in a row, of them not settling, already reported)
        let mut run: Option<(i32, u64, u64, bool)> = None;
        for e in journal {
            match e.event.as_str() {
                "retry" => {}
                "completed" | "requeued" => {
                    run = None;
                    continue;
                }
                _ => continue,
            }
            if run.is_none_or(|(s, ..)| s != e.step_index) {
                steps += 1;
                run = Some((e.step_index, 0, 0, false));
            }
            let Some(d) = &e.detail else { continue };
            let code = d["reason_code"].as_str().unwrap_or("");
            let message = d["message"].as_str().unwrap_or("");
            match classify(code, message) {
                Some(Cause::Transient) => {}
                Some(Cause::Permanent) => {
                    v.push(format!(
                        "workflow {wf}: step {} ({}) was retried at journal seq {} for a permanent cause, which dead-letters at once: {code} ({message})",
                        e.step_index, e.step_name, e.seq
                    ));
                    continue;
                }
                _ => continue,
            }
            let (_, n, plain, reported) = run.as_mut().expect("set above");
            *n += 1;
            if d["settling"] != true {
                *plain += 1;
            }
            if *reported {
                continue;
            }
            if let Some(spent) = d["spent"].as_u64().filter(|s| s < n) {
                *reported = true;
                v.push(format!(
                    "workflow {wf}: step {} ({}) records {spent} attempts spent at journal seq {} after {n} transient failures in a row ({code}: {message}): its retry budget count falls behind",
                    e.step_index, e.step_name, e.seq
                ));
            } else if *plain >= max {
                *reported = true;
                v.push(format!(
                    "workflow {wf}: step {} ({}) was retried at journal seq {} after {n} transient failures in a row ({code}: {message}), not marked settling: a budget of {max_attempts} attempts allows {} retries",
                    e.step_index, e.step_name, e.seq, max - 1
                ));
            }
        }
    }
    steps
}

/// The recorded cause of a dead letter, as the engine writes it (for tests).
#[cfg(test)]
pub(super) fn cause(code: &str, message: &str, attempt: u64) -> Value {
    serde_json::json!({"reason_code": code, "message": message, "attempt": attempt, "step": "mint", "class": "permanent"})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::{base, mint_input, wf};
    use dalp_engine::store::JournalEntry;

    fn dead(id: i64, error: Value) -> crate::check::WorkflowView {
        let mut w = wf(id, "mint", &format!("k{id}"), "dead_letter", mint_input(1));
        w.error = Some(error);
        w
    }

    #[test]
    fn outages_and_early_transient_dead_letters_are_violations_permanent_ones_are_not() {
        let mut ev = base();
        ev.workflows = vec![
            dead(1, cause("reverted", "execution reverted: no identity", 1)),
            dead(2, cause("rpc_error", "rpc error -32602: invalid params", 1)),
            dead(3, cause("signer_funds", "insufficient funds", 8)),
        ];
        assert!(dead_letters(&ev, 8).held, "{:?}", dead_letters(&ev, 8));
        // A lagging node's "header not found", taken for final.
        ev.workflows.push(dead(
            4,
            cause("rpc_error", "rpc error -32000: header not found", 1),
        ));
        // An outage that spent the attempts: still an outage.
        ev.workflows.push(dead(
            5,
            cause(
                "rpc_unavailable",
                "rpc unavailable: every endpoint failed",
                8,
            ),
        ));
        // A read-only node.
        ev.workflows.push(dead(
            6,
            cause(
                "db_error",
                "database error (SQLSTATE 25006): read-only transaction",
                2,
            ),
        ));
        // A transient cause before the budget is spent.
        ev.workflows.push(dead(
            7,
            cause("no_contract_code", "no contract code: 0x…", 3),
        ));
        ev.workflows.push(dead(8, Value::Null));
        let mut w = dead(9, Value::Null);
        w.error = None;
        ev.workflows.push(w);
        let v = dead_letters(&ev, 8);
        assert!(!v.held);
        let ids: Vec<&str> = v
            .violations
            .iter()
            .map(|m| m.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(ids, ["4", "5", "6", "7", "8", "9"], "{v:?}");
        assert!(v.violations[0].contains("for an outage"), "{v:?}");
        assert!(v.violations[3].contains("after 3 of 8 attempts"), "{v:?}");
    }

    fn retry(seq: i64, step: i32, code: &str, message: &str, spent: u64) -> JournalEntry {
        JournalEntry {
            seq,
            step_index: step,
            step_name: "mint".into(),
            event: "retry".into(),
            detail: Some(
                serde_json::json!({"reason_code": code, "message": message, "spent": spent}),
            ),
            fencing_token: seq,
            node: "engine-0".into(),
        }
    }

    fn event(seq: i64, step: i32, event: &str) -> JournalEntry {
        JournalEntry {
            event: event.into(),
            detail: None,
            ..retry(seq, step, "", "", 0)
        }
    }

    #[test]
    fn retries_past_or_behind_the_budget_are_violations_outages_and_settle_retries_are_not() {
        let funds = |seq, spent| retry(seq, 1, "signer_funds", "insufficient funds", spent);
        let outage = |seq| retry(seq, 1, "rpc_unavailable", "every endpoint failed", 0);
        let mut ev = base();
        // Workflow 1: the third transient failure in a row records 2 spent (outages between
        // them are not counted, by either side).
        ev.journals.insert(
            1,
            vec![
                funds(1, 1),
                outage(2),
                funds(3, 2),
                outage(4),
                funds(5, 2),
                funds(6, 3),
            ],
        );
        // Workflow 2: settle retries past the budget (spent 3 and 4 of 3, marked) count
        // honestly; a requeue starts the count again.
        let settle = |seq, spent| {
            let mut e = funds(seq, spent);
            e.detail.as_mut().unwrap()["settling"] = serde_json::json!(true);
            e
        };
        ev.journals.insert(
            2,
            vec![
                funds(1, 1),
                funds(2, 2),
                settle(3, 3),
                settle(4, 4),
                event(5, 1, "requeued"),
                funds(6, 1),
                funds(7, 2),
            ],
        );
        // Workflow 3: a completed step and a new step start the count again.
        ev.journals.insert(
            3,
            vec![
                funds(1, 1),
                funds(2, 2),
                event(3, 1, "completed"),
                retry(4, 2, "signer_funds", "x", 1),
                retry(5, 2, "signer_funds", "x", 2),
            ],
        );
        let v = dead_letters(&ev, 3);
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert!(
            v.violations[0].starts_with(
                "workflow 1: step 1 (mint) records 2 attempts spent at journal seq 5 after 3"
            ),
            "{v:?}"
        );
        // Honest counts, but a retry at the budget's last attempt not marked settling.
        ev.journals
            .insert(4, vec![funds(1, 1), funds(2, 2), funds(3, 3)]);
        let v = dead_letters(&ev, 3);
        assert_eq!(v.violations.len(), 2, "{v:?}");
        assert!(
            v.violations[1].starts_with("workflow 4: step 1 (mint) was retried at journal seq 3 after 3 transient failures in a row"),
            "{v:?}"
        );
        ev.journals.remove(&4);
        // An engine that never counts its failures (spent always 1): caught at the second.
        ev.journals
            .insert(2, (1..=5).map(|i| funds(i, 1)).collect());
        let v = dead_letters(&ev, 3);
        assert_eq!(v.violations.len(), 2, "{v:?}");
        assert!(v.violations[1].contains("records 1 attempts spent at journal seq 2 after 2"));
    }

    /// A retry for a cause the table calls permanent is a violation wherever it falls; the
    /// same step retried for transient causes and outages is not.
    #[test]
    fn a_retry_for_a_permanent_cause_is_a_violation() {
        let mut ev = base();
        ev.journals.insert(
            1,
            vec![
                retry(1, 1, "rpc_unavailable", "every endpoint failed", 0),
                retry(2, 1, "signer_funds", "insufficient funds", 1),
            ],
        );
        ev.journals.insert(
            2,
            vec![
                retry(1, 1, "signer_funds", "insufficient funds", 1),
                retry(2, 1, "compliance_rejected", "canTransfer said no", 1),
            ],
        );
        ev.journals.insert(
            3,
            vec![
                retry(
                    1,
                    2,
                    "db_error",
                    "database error (SQLSTATE 23503): lost parent",
                    1,
                ),
                retry(
                    2,
                    2,
                    "db_error",
                    "database error (SQLSTATE 23505): duplicate",
                    1,
                ),
            ],
        );
        let v = dead_letters(&ev, 8);
        assert_eq!(v.violations.len(), 2, "{v:?}");
        assert!(
            v.violations[0].starts_with(
                "workflow 2: step 1 (mint) was retried at journal seq 2 for a permanent cause"
            ),
            "{v:?}"
        );
        assert!(
            v.violations[1].starts_with(
                "workflow 3: step 2 (mint) was retried at journal seq 2 for a permanent cause"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn causes_are_parsed_from_the_engine_messages() {
        assert_eq!(
            sqlstate("database error (SQLSTATE 40001): could not serialize"),
            "40001"
        );
        assert_eq!(rpc_code("rpc error -32000: header not found"), Some(-32000));
        // What the `rpc_error` fault's codes make the engine record: all outages.
        for m in [
            "rpc error -32000: header not found",
            "rpc error -32000: missing trie node 5f2a (path ) <nil>",
            "rpc error -32005: limit exceeded",
            "rpc error -32603: internal error",
        ] {
            assert_eq!(classify("rpc_error", m), Some(Cause::Outage), "{m}");
        }
        assert_eq!(
            classify("rpc_unavailable", "rpc unavailable: rpc-0: http status 429"),
            Some(Cause::Outage)
        );
        assert_eq!(rpc_code("rpc error 0: max initcode size exceeded"), Some(0));
        assert_eq!(
            classify("rpc_error", "rpc error 0: x"),
            Some(Cause::Transient)
        );
        assert_eq!(
            classify("db_error", "database error (SQLSTATE 23505): dup"),
            Some(Cause::Permanent)
        );
        assert_eq!(
            classify("db_error", "database error (SQLSTATE 08006): gone"),
            Some(Cause::Outage)
        );
    }
}
