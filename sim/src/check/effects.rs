//! `effects_once`: off-chain effects happen exactly once. The engine's effect is the row it
//! writes to `notifications` (the outbox a delivery service reads); the effect's identity is
//! the workflow and the event its payload names, not the key the engine deduplicates by (a
//! wrong key is the bug this looks for). Every completed issuance notified exactly once.

use super::{Evidence, Verdict};
use std::collections::BTreeMap;

/// One row of `notifications`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Notification {
    pub workflow_id: i64,
    /// The engine's deduplication key.
    pub kind: String,
    pub payload: serde_json::Value,
}

pub fn effects_once(ev: &Evidence) -> Verdict {
    let Some(rows) = &ev.notifications else {
        return Verdict::new(
            "effects_once",
            "not judged: the backend read no notifications".into(),
            vec![],
        );
    };
    let mut v = Vec::new();
    let mut per_effect: BTreeMap<(i64, String), Vec<&str>> = BTreeMap::new();
    for n in rows {
        let event = n.payload["event"].as_str().unwrap_or("").to_string();
        if event.is_empty() {
            v.push(format!(
                "workflow {}: notification {:?} names no event: {}",
                n.workflow_id, n.kind, n.payload
            ));
        }
        per_effect
            .entry((n.workflow_id, event))
            .or_default()
            .push(&n.kind);
    }
    for ((wf, event), kinds) in &per_effect {
        if kinds.len() > 1 {
            v.push(format!(
                "workflow {wf}: the {event} notification was written {} times (keys {kinds:?})",
                kinds.len()
            ));
        }
    }
    let mut completed = 0;
    for w in ev
        .workflows
        .iter()
        .filter(|w| w.kind == "issuance" && w.status == "completed")
    {
        completed += 1;
        if !per_effect.contains_key(&(w.id, "issuance_completed".into())) {
            v.push(format!(
                "workflow {}: a completed issuance with no issuance_completed notification",
                w.id
            ));
        }
    }
    Verdict::new(
        "effects_once",
        format!(
            "{} notifications, {completed} completed issuances",
            rows.len()
        ),
        v,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::{base, wf};
    use serde_json::json;

    fn note(wf: i64, kind: &str) -> Notification {
        Notification {
            workflow_id: wf,
            kind: kind.into(),
            payload: json!({"event": "issuance_completed", "workflow_id": wf}),
        }
    }

    #[test]
    fn a_second_delivery_or_a_missing_one_is_a_violation() {
        let mut ev = base();
        ev.workflows = vec![
            wf(1, "issuance", "k1", "completed", json!({})),
            wf(2, "issuance", "k2", "completed", json!({})),
        ];
        ev.notifications = Some(vec![
            note(1, "issuance_completed"),
            note(2, "issuance_completed"),
        ]);
        assert!(effects_once(&ev).held);
        // A re-run that wrote the effect under another key.
        ev.notifications
            .as_mut()
            .unwrap()
            .push(note(2, "issuance_completed#1"));
        let v = effects_once(&ev);
        assert!(!v.held);
        assert!(
            v.violations[0]
                .contains("workflow 2: the issuance_completed notification was written 2 times"),
            "{v:?}"
        );
        // A completed issuance that never notified.
        ev.notifications = Some(vec![note(1, "issuance_completed")]);
        let v = effects_once(&ev);
        assert!(
            v.violations[0].contains("workflow 2: a completed issuance with no"),
            "{v:?}"
        );
        ev.notifications = None;
        let v = effects_once(&ev);
        assert!(v.held && v.checked.starts_with("not judged"));
    }
}
