//! `finality`: a step completed on a transaction rests on a block that was canonical and deep
//! enough when the completion was persisted: `confirmations` blocks for a transaction step
//! (counted inclusively, 1 = included), and for a step awaiting finality a block the chain calls
//! finalized (at or below `head - finality_depth`: a reorg of `finality_depth` blocks, which the
//! catalog treats as within the finality promise, replaces every block above it). Judged from the chain's own history of mined
//! blocks (every block it ever produced, orphaned ones included, with the simulated time it was
//! mined), never from the engine's records of what it saw.
//!
//! The same is asked of a workflow as its client sees it, independent of the engine's step
//! list: a completed mint, transfer or registration reports its transaction final, so when its
//! last step committed (the commit that made it `completed`), the transaction it mined must
//! already rest on a final block. A step list that lost its finality wait, or a resume that
//! skipped it, fails here though every step it ran was judged correct.

use super::{Evidence, Verdict};
use alloy_primitives::B256;
use serde_json::Value;
use std::collections::BTreeMap;

/// A block as the chain mined it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MinedBlock {
    pub t_ms: u64,
    pub number: u64,
    pub hash: B256,
    pub parent: B256,
}

/// A step completion as the database committed it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepCompletion {
    pub workflow_id: i64,
    pub kind: String,
    pub step: String,
    pub t_ms: u64,
    pub output: Value,
}

/// A reorg within this long before a completion leaves it unjudged: the engine's check and its
/// write are apart by at least a network round trip, and a reorg in between is not its error.
const REORG_GRACE_MS: u64 = 5_000;

pub fn finality(ev: &Evidence) -> Verdict {
    let Some(history) = &ev.block_history else {
        return Verdict::new(
            "finality",
            "not judged: the backend keeps no history of mined blocks".into(),
            vec![],
        );
    };
    assert!(
        history.windows(2).all(|w| w[0].t_ms <= w[1].t_ms),
        "the chain's history is in mining order"
    );
    let by_hash: BTreeMap<B256, &MinedBlock> = history.iter().map(|b| (b.hash, b)).collect();
    // When the chain went back (a reorg mines from a lower height than the head before it).
    let reorgs: Vec<u64> = history
        .windows(2)
        .filter(|w| w[1].number <= w[0].number)
        .map(|w| w[1].t_ms)
        .collect();
    let mut v = Vec::new();
    let (mut judged, mut skipped) = (0, 0);
    // Steps that declared their transaction final: (completion, block number, block hash).
    let mut declared_final: Vec<(&StepCompletion, u64, B256)> = Vec::new();
    for c in &ev.step_completions {
        let required = if c.step == "await_confirmation" {
            ev.finality_depth + 1
        } else if dalp_engine::workflow::is_tx_step(&c.kind, &c.step) {
            ev.confirmations
        } else {
            continue;
        };
        let (Some(number), Some(hash)) = (
            c.output["block_number"].as_u64(),
            c.output["block_hash"]
                .as_str()
                .and_then(|h| h.parse::<B256>().ok()),
        ) else {
            v.push(format!(
                "workflow {} step {} completed with no block in its output: {}",
                c.workflow_id, c.step, c.output
            ));
            continue;
        };
        if c.step == "await_confirmation" {
            declared_final.push((c, number, hash));
        }
        if reorgs
            .iter()
            .any(|&r| r <= c.t_ms && r + REORG_GRACE_MS > c.t_ms)
        {
            skipped += 1;
            continue;
        }
        judged += 1;
        // The head when the completion was committed: the last block mined at or before it.
        let Some(head) = history.iter().rev().find(|b| b.t_ms <= c.t_ms) else {
            v.push(format!(
                "workflow {} step {} completed at {} ms, before any block was mined",
                c.workflow_id, c.step, c.t_ms
            ));
            continue;
        };
        let (canonical, depth) = standing(head, &by_hash, number, hash);
        if !canonical {
            v.push(format!(
                "workflow {} step {} completed at {:.3} s on block {number} {hash:#x}, which was not in the canonical chain then (head {} {:#x})",
                c.workflow_id,
                c.step,
                c.t_ms as f64 / 1000.0,
                head.number,
                head.hash
            ));
        } else if depth < required {
            v.push(format!(
                "workflow {} step {} completed at {:.3} s with its transaction {depth} blocks deep (block {number}, head {}); it needs {required}",
                c.workflow_id,
                c.step,
                c.t_ms as f64 / 1000.0,
                head.number
            ));
        }
    }
    let workflows = completed_workflows_final(ev, history, &by_hash, &reorgs, &mut v);
    for (c, number, hash) in &workflows.declared {
        if !declared_final
            .iter()
            .any(|(d, n, h)| d.workflow_id == c.workflow_id && n == number && h == hash)
        {
            declared_final.push((c, *number, *hash));
        }
    }
    let finals = final_chain_holds(ev, history, &by_hash, &declared_final, &mut v);
    Verdict::new(
        "finality",
        format!(
            "{judged} transaction step completions against {} mined blocks ({skipped} within {} s of a reorg not judged); {} completed {} judged final when they completed ({} within the grace not judged); {finals}",
            history.len(),
            REORG_GRACE_MS / 1000,
            workflows.judged,
            FINAL_WHEN_COMPLETED.join("/"),
            workflows.skipped,
        ),
        v,
    )
}

/// Whether block `number` `hash` is on the chain ending at `head` (walked back through its
/// parents), and how deep it would be there (counted inclusively, 1 = the head).
fn standing(
    head: &MinedBlock,
    by_hash: &BTreeMap<B256, &MinedBlock>,
    number: u64,
    hash: B256,
) -> (bool, u64) {
    let mut at = Some(head);
    while let Some(b) = at.filter(|b| b.number > number) {
        at = by_hash.get(&b.parent).copied();
    }
    let canonical = at.is_some_and(|b| b.number == number && b.hash == hash);
    (canonical, (head.number + 1).saturating_sub(number))
}

/// The kinds whose completion tells the client the transaction is final (each ends by awaiting
/// finality; an issuance awaits it for its token's deployment only, mid-way, and is judged by
/// that step alone).
const FINAL_WHEN_COMPLETED: &[&str] = &[
    dalp_engine::workflow::MINT,
    dalp_engine::workflow::TRANSFER,
    dalp_engine::workflow::REGISTER_IDENTITY,
];

/// What [`completed_workflows_final`] judged.
struct WorkflowsFinal<'a> {
    judged: usize,
    skipped: usize,
    /// (the transaction's step completion, its block number and hash): final from then on.
    declared: Vec<(&'a StepCompletion, u64, B256)>,
}

/// Each completed workflow of a [`FINAL_WHEN_COMPLETED`] kind: the block its steps last named
/// for its transaction (of each step's last completion: an earlier one may be superseded) was,
/// when its last step committed, canonical and `finality_depth + 1` deep.
fn completed_workflows_final<'a>(
    ev: &'a Evidence,
    history: &[MinedBlock],
    by_hash: &BTreeMap<B256, &MinedBlock>,
    reorgs: &[u64],
    v: &mut Vec<String>,
) -> WorkflowsFinal<'a> {
    let mut out = WorkflowsFinal {
        judged: 0,
        skipped: 0,
        declared: Vec::new(),
    };
    let required = ev.finality_depth + 1;
    for w in ev
        .workflows
        .iter()
        .filter(|w| w.status == "completed" && FINAL_WHEN_COMPLETED.contains(&w.kind.as_str()))
    {
        // The last completion of each of its steps, in commit order.
        let mut last: BTreeMap<&str, &StepCompletion> = BTreeMap::new();
        for c in ev.step_completions.iter().filter(|c| c.workflow_id == w.id) {
            let e = last.entry(c.step.as_str()).or_insert(c);
            if c.t_ms >= e.t_ms {
                *e = c;
            }
        }
        let Some(done_ms) = last.values().map(|c| c.t_ms).max() else {
            continue; // completed with no completion the database kept: durability's to judge
        };
        // The block its transaction was last said to be in (a reorg between the transaction's
        // step and the finality wait moves it; the wait names where it settled).
        let named = last
            .values()
            .filter_map(|c| {
                let number = c.output.get("block_number")?.as_u64()?;
                let hash = c.output.get("block_hash")?.as_str()?.parse::<B256>().ok()?;
                Some((*c, number, hash))
            })
            .max_by_key(|(c, _, _)| c.t_ms);
        let Some((c, number, hash)) = named else {
            // A transaction step without its block is a violation of the check above.
            continue;
        };
        out.declared.push((c, number, hash));
        if reorgs
            .iter()
            .any(|&r| r <= done_ms && r + REORG_GRACE_MS > done_ms)
        {
            out.skipped += 1;
            continue;
        }
        out.judged += 1;
        let Some(head) = history.iter().rev().find(|b| b.t_ms <= done_ms) else {
            v.push(format!(
                "workflow {} ({}) completed at {} ms, before any block was mined",
                w.id, w.kind, done_ms
            ));
            continue;
        };
        let (canonical, depth) = standing(head, by_hash, number, hash);
        if !canonical || depth < required {
            v.push(format!(
                "workflow {} ({}) completed at {:.3} s, telling its client its transaction final, while its block {number} {hash:#x} (named by step {}) was {} (head {}); final needs {required} blocks deep on the canonical chain",
                w.id,
                w.kind,
                done_ms as f64 / 1000.0,
                c.step,
                if canonical {
                    format!("{depth} blocks deep")
                } else {
                    "not in the canonical chain".to_string()
                },
                head.number
            ));
        }
    }
    out
}

/// What was declared final stays final: a step that awaited finality rests on a block of the
/// chain's last canonical branch, whenever it completed (within a reorg's grace too, where the
/// check above does not judge it). A reorg of at most `finality_depth` blocks cannot replace a
/// block `finality_depth + 1` deep; one deeper than that breaks the promise itself, and the
/// check is then not made. What the `checked` text says about it.
fn final_chain_holds(
    ev: &Evidence,
    history: &[MinedBlock],
    by_hash: &BTreeMap<B256, &MinedBlock>,
    declared_final: &[(&StepCompletion, u64, B256)],
    v: &mut Vec<String>,
) -> String {
    let deepest = history
        .windows(2)
        .filter(|w| w[1].number <= w[0].number)
        .map(|w| w[0].number + 1 - w[1].number)
        .max()
        .unwrap_or(0);
    if deepest > ev.finality_depth {
        return format!(
            "final steps not judged against the last chain: a reorg replaced {deepest} blocks, more than the finality depth {}",
            ev.finality_depth
        );
    }
    // The last block mined is the tip of the last canonical branch.
    let Some(tip) = history.last() else {
        return "no block mined".into();
    };
    let mut canonical = BTreeMap::new();
    let mut at = Some(tip);
    while let Some(b) = at {
        canonical.insert(b.number, b.hash);
        at = by_hash.get(&b.parent).copied();
    }
    for (c, number, hash) in declared_final {
        if canonical.get(number) != Some(hash) {
            v.push(format!(
                "workflow {} step {} completed at {:.3} s on block {number} {hash:#x}, which the last canonical chain does not hold (its block {number} is {}): a transaction declared final was replaced",
                c.workflow_id,
                c.step,
                c.t_ms as f64 / 1000.0,
                canonical
                    .get(number)
                    .map_or("missing".to_string(), |h| format!("{h:#x}"))
            ));
        }
    }
    format!(
        "{} final steps against the last canonical chain (tip {})",
        declared_final.len(),
        tip.number
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::base;
    use serde_json::json;

    fn h(n: u8) -> B256 {
        B256::repeat_byte(n)
    }

    /// Blocks 1..=5 a second apart (hashes 1..=5), then a reorg at 5.5 s replacing 4 and 5 with
    /// 14, 15 and 16.
    fn history() -> Vec<MinedBlock> {
        let mut blocks: Vec<MinedBlock> = (1..=5u8)
            .map(|n| MinedBlock {
                t_ms: n as u64 * 1000,
                number: n as u64,
                hash: h(n),
                parent: h(n - 1),
            })
            .collect();
        for (n, parent) in [(4u8, 3u8), (5, 14), (6, 15)] {
            blocks.push(MinedBlock {
                t_ms: 5_500,
                number: n as u64,
                hash: h(n + 10),
                parent: h(parent),
            });
        }
        blocks
    }

    fn done(step: &str, t_ms: u64, block: u64, hash: B256) -> StepCompletion {
        StepCompletion {
            workflow_id: 1,
            kind: "mint".into(),
            step: step.into(),
            t_ms,
            output: json!({"tx_hash": format!("{:#x}", h(99)), "block_number": block, "block_hash": format!("{hash:#x}")}),
        }
    }

    #[test]
    fn a_shallow_or_orphaned_completion_is_a_violation() {
        let mut ev = base();
        ev.block_history = Some(history());
        ev.confirmations = 2;
        ev.finality_depth = 2;
        // Block 2 at 3.5 s: head 3, two deep. Then finality at 4.2 s: head 4, block 2 at
        // head - finality_depth, the chain's finalized block.
        ev.step_completions = vec![
            done("mint", 3_500, 2, h(2)),
            done("await_confirmation", 4_200, 2, h(2)),
            done("notify", 100, 0, h(0)),
        ];
        let v = finality(&ev);
        assert!(v.held, "{v:?}");
        // One block early: block 3 at 3.5 s is one deep.
        ev.step_completions = vec![done("mint", 3_500, 3, h(3))];
        let v = finality(&ev);
        assert!(
            v.violations[0].contains("1 blocks deep (block 3, head 3); it needs 2"),
            "{v:?}"
        );
        // Finality one block early (head 3: block 2 is two deep, but a reorg of finality_depth
        // blocks can still replace it).
        ev.step_completions = vec![done("await_confirmation", 3_500, 2, h(2))];
        let v = finality(&ev);
        assert!(
            v.violations[0].contains("2 blocks deep (block 2, head 3); it needs 3"),
            "{v:?}"
        );
        // Completed at 12 s on block 4 of the orphaned branch: not canonical then.
        ev.step_completions = vec![done("mint", 12_000, 4, h(4))];
        let v = finality(&ev);
        assert!(
            v.violations[0].contains("not in the canonical chain then"),
            "{v:?}"
        );
        // The same on the new branch is fine; a completion right after the reorg is not judged.
        ev.step_completions = vec![done("mint", 12_000, 4, h(14)), done("mint", 6_000, 4, h(4))];
        let v = finality(&ev);
        assert!(
            v.held && v.checked.contains("1 within 5 s of a reorg not judged"),
            "{v:?}"
        );
        ev.block_history = None;
        assert!(finality(&ev).checked.starts_with("not judged"));
    }

    #[test]
    fn a_final_step_on_a_replaced_block_is_a_violation_whenever_it_completed() {
        let mut ev = base();
        ev.block_history = Some(history());
        ev.confirmations = 1;
        ev.finality_depth = 2;
        // Block 4 of the orphaned branch, declared final right after the reorg (inside the
        // grace the timing check leaves unjudged): the last chain's block 4 is another one.
        ev.step_completions = vec![done("await_confirmation", 6_000, 4, h(4))];
        let v = finality(&ev);
        assert!(!v.held, "{v:?}");
        assert!(
            v.violations[0]
                .contains("which the last canonical chain does not hold (its block 4 is 0x0e0e"),
            "{v:?}"
        );
        // Its replacement, or a block below the reorg, is held.
        ev.step_completions = vec![
            done("await_confirmation", 6_000, 4, h(14)),
            done("await_confirmation", 4_000, 2, h(2)),
        ];
        let v = finality(&ev);
        assert!(
            v.held
                && v.checked
                    .contains("2 final steps against the last canonical chain (tip 6)"),
            "{v:?}"
        );
        // A mint on the orphaned block inside the grace: not a final step, not judged here.
        ev.step_completions = vec![done("mint", 6_000, 4, h(4))];
        assert!(finality(&ev).held);
        // A reorg deeper than the finality depth (2 blocks replaced, finality 1): not judged.
        ev.finality_depth = 1;
        ev.step_completions = vec![done("await_confirmation", 6_000, 4, h(4))];
        let v = finality(&ev);
        assert!(
            v.held
                && v.checked
                    .contains("a reorg replaced 2 blocks, more than the finality depth 1"),
            "{v:?}"
        );
    }

    #[test]
    fn a_completed_mint_whose_transaction_is_not_final_yet_is_a_violation() {
        use crate::check::tests::wf;
        let mut ev = base();
        ev.block_history = Some(history());
        ev.confirmations = 1;
        ev.finality_depth = 2;
        ev.workflows = vec![wf(1, "mint", "k", "completed", json!({}))];
        // Its step list lost the finality wait: the mint step's commit completed it, block 2
        // two deep at 3.5 s (head 3), where final needs three.
        ev.step_completions = vec![done("mint", 3_500, 2, h(2))];
        let v = finality(&ev);
        assert!(!v.held, "{v:?}");
        assert!(
            v.violations[0].contains("workflow 1 (mint) completed at 3.500 s, telling its client its transaction final, while its block 2")
                && v.violations[0].contains("was 2 blocks deep (head 3); final needs 3"),
            "{v:?}"
        );
        // The same step with the wait after it, at head 4: held, judged once.
        ev.step_completions
            .push(done("await_confirmation", 4_200, 2, h(2)));
        let v = finality(&ev);
        assert!(
            v.held
                && v.checked
                    .contains("1 completed mint/transfer/register_identity judged"),
            "{v:?}"
        );
        // A reorg moved it between the step and the wait: the wait's block is the one judged.
        ev.step_completions = vec![
            done("mint", 4_500, 4, h(4)),
            done("await_confirmation", 12_000, 4, h(14)),
        ];
        assert!(finality(&ev).held);
        // Still running, or an issuance (final for its deployment only): not judged here.
        ev.step_completions = vec![done("mint", 3_500, 2, h(2))];
        ev.workflows[0].status = "running".into();
        assert!(finality(&ev).held);
        ev.workflows[0].status = "completed".into();
        ev.workflows[0].kind = "issuance".into();
        assert!(finality(&ev).held);
        // Completed on the orphaned branch, late: not canonical when it completed.
        ev.workflows[0].kind = "mint".into();
        ev.step_completions = vec![done("mint", 12_000, 4, h(4))];
        let v = finality(&ev);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("(mint) completed at 12.000 s")
                    && m.contains("not in the canonical chain")),
            "{v:?}"
        );
    }
}
