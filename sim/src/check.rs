//! Invariant checkers (DESIGN.md §5) over the evidence of one run: the client history, the
//! engine's records (from the database's primary after the run) and the chain's own state.
//!
//! Each checker returns a [`Verdict`] whose violations say what a person needs to act: which
//! operation, which key, which nonce, when. Checkers read plain data ([`Evidence`]), so each one is
//! unit-tested on crafted bad histories.

use crate::history::{summarize, Op};
use crate::outcome::DataLoss;
use crate::scenario::FaultKind;
use alloy_primitives::{Address, B256, U256};
use dalp_engine::store::{JournalEntry, TxRecord, TxState};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub mod dead_letters;
pub mod effects;
pub mod failover;
pub mod finality;
pub mod visibility;

pub use crate::verdict::Verdict;

/// A workflow as the engine's database holds it after the run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkflowView {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub status: String,
    pub current_step: i32,
    pub input: Value,
    pub result: Option<Value>,
    pub error: Option<Value>,
}

/// A transaction in a canonical block.
#[derive(Clone, Debug, Serialize)]
pub struct ChainTx {
    pub hash: B256,
    pub from: Address,
    pub nonce: u64,
    pub to: Option<Address>,
    pub success: bool,
    pub block: u64,
}

/// A token's `Transfer` event in a canonical block.
#[derive(Clone, Debug, Serialize)]
pub struct TransferLog {
    pub block: u64,
    pub contract: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
}

/// A token's `IdentityRegistered` event in a canonical block.
#[derive(Clone, Debug, Serialize)]
pub struct IdentityLog {
    pub block: u64,
    pub contract: Address,
    pub account: Address,
    pub country: u16,
}

impl IdentityLog {
    /// The event, if `topics`/`data` are one (`account` indexed, `country` in the data).
    pub fn parse(block: u64, contract: Address, topics: &[B256], data: &[u8]) -> Option<Self> {
        use alloy_sol_types::SolEvent;
        if topics.first()
            != Some(&dalp_engine::contracts::AssetToken::IdentityRegistered::SIGNATURE_HASH)
            || topics.len() != 2
            || data.len() != 32
        {
            return None;
        }
        Some(IdentityLog {
            block,
            contract,
            account: Address::from_word(topics[1]),
            country: u16::try_from(U256::from_be_slice(data)).ok()?,
        })
    }
}

/// Everything the checkers read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evidence {
    pub ops: Vec<Op>,
    /// When every fault was lifted, and the liveness bound after it (simulated ms).
    pub heal_ms: u64,
    pub liveness_deadline_ms: u64,
    /// When the liveness phase ended (at the deadline, or once everything was seen finished).
    pub liveness_ended_ms: u64,
    pub workflows: Vec<WorkflowView>,
    pub journals: BTreeMap<i64, Vec<JournalEntry>>,
    pub txs: Vec<TxRecord>,
    pub signer: Address,
    pub chain_txs: Vec<ChainTx>,
    pub transfers: Vec<TransferLog>,
    pub identities: Vec<IdentityLog>,
    /// Transactions sent on purpose from outside the engine (external nonce use).
    pub external_txs: Vec<B256>,
    /// Zero-value gap fillers the engine recorded (no token effect).
    pub fillers: Vec<B256>,
    /// Writes the database accepted from a superseded lease holder, observed outside the store.
    pub stale_writes_accepted: Vec<Value>,
    /// Writes the database refused for a stale fence (`None`: not counted by the backend).
    pub fenced_writes: Option<u64>,
    /// The scenario's promise on dead letters (`[expect] max_dead_letters`).
    pub max_dead_letters: Option<u64>,
    /// What database failovers lost, as measured (`replication`, `lost_acknowledged`, …).
    pub data_loss: Vec<DataLoss>,
    /// Signer transactions still in the mempool after the run: (nonce, executable now).
    pub signer_pending: Vec<(u64, bool)>,
    /// Token addresses by plan index.
    pub tokens: BTreeMap<u32, Address>,
    /// `totalSupply()` and `balanceOf(investor)` read from the chain per token.
    pub supply: BTreeMap<Address, U256>,
    pub investor_balance: BTreeMap<Address, U256>,
    /// `maxBalance()` read from the chain per token (absent: not read).
    pub max_balance: BTreeMap<Address, U256>,
    pub investor: Address,
    /// The chain's finalized height, and the indexer's checkpoint at the end.
    pub finalized: u64,
    pub indexed_height: u64,
    /// Balances per (contract, holder) from indexed events at or below `finalized`.
    pub indexed_balances: BTreeMap<(Address, Address), U256>,
    /// The faults as injected and the engines' scraped metrics (invariant 9).
    pub visibility: visibility::VisibilityEvidence,
    /// The rows of `notifications` (`None`: not read).
    pub notifications: Option<Vec<effects::Notification>>,
    /// Every block the chain mined, orphaned ones included (`None`: not kept by the backend).
    pub block_history: Option<Vec<finality::MinedBlock>>,
    /// Every step completion the database committed, with its time.
    pub step_completions: Vec<finality::StepCompletion>,
    /// The engines' confirmation and finality depths.
    pub confirmations: u64,
    /// Attempts of a step before the engine dead-letters a failure that is not an outage.
    pub max_attempts: u32,
    pub finality_depth: u64,
    /// Every request the RPC hosts served (`None`: not logged by the backend), and the topology's
    /// endpoints.
    pub rpc_requests: Option<Vec<failover::RpcRequest>>,
    pub rpc_endpoints: usize,
    /// The schedule's fault windows, and the engine fault points that fired.
    pub fault_windows: Vec<crate::timing::FaultWindow>,
    pub fault_point_firings: Vec<failover::FaultPointFiring>,
}

impl Evidence {
    /// Counters of the run that both backends report: workflows by outcome, mined signer
    /// transactions, and workflows run by more than one engine (takeovers).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let mut stats = BTreeMap::new();
        stats.insert("workflows".to_string(), self.workflows.len() as u64);
        stats.insert(
            "signer_txs_mined".to_string(),
            self.chain_txs
                .iter()
                .filter(|t| t.from == self.signer)
                .count() as u64,
        );
        for st in ["completed", "failed", "dead_letter"] {
            stats.insert(
                st.to_string(),
                self.workflows.iter().filter(|w| w.status == st).count() as u64,
            );
        }
        let takeovers = self
            .journals
            .values()
            .filter(|j| {
                let nodes: BTreeSet<&str> = j
                    .iter()
                    .filter(|e| e.node.starts_with("engine-"))
                    .map(|e| e.node.as_str())
                    .collect();
                nodes.len() > 1
            })
            .count();
        stats.insert(
            "workflows_run_by_several_nodes".to_string(),
            takeovers as u64,
        );
        stats
    }

    /// The state the run ended in, for the trace's `final_state` event (`extra` adds the
    /// backend's own fields).
    pub fn final_state(&self, head: u64, extra: Value) -> Value {
        let mut rows: Vec<(u64, String, i64, i32)> = self
            .txs
            .iter()
            .map(|t| {
                (
                    t.nonce,
                    t.state.as_str().to_string(),
                    t.workflow_id,
                    t.step_index,
                )
            })
            .collect();
        rows.sort();
        let mut v = serde_json::json!({
            "signer_pool": self.signer_pending,
            "tx_records": rows,
            "dead_letters": self
                .workflows
                .iter()
                .filter(|w| w.status == "dead_letter")
                .map(|w| serde_json::json!({"id": w.id, "kind": w.kind, "key": w.key, "error": w.error}))
                .collect::<Vec<_>>(),
            "head": head,
            "finalized": self.finalized,
            "indexed_height": self.indexed_height,
        });
        if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        v
    }
}

fn s(ms: u64) -> String {
    format!("{:.3} s", ms as f64 / 1000.0)
}

const TERMINAL: &[&str] = &["completed", "failed", "dead_letter", "cancelled"];

/// Whether a workflow `status` is final.
/// The address a JSON object holds as a string under `key` (`None`: no object, no such string,
/// or not an address).
fn address_at(v: Option<&Value>, key: &str) -> Option<Address> {
    v?.get(key)?.as_str()?.parse().ok()
}

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// Run the named checkers.
pub fn check(names: &[String], ev: &Evidence) -> Vec<Verdict> {
    names
        .iter()
        .filter_map(|n| {
            Some(match n.as_str() {
                "durability" => durability(ev),
                "exactly_once" => exactly_once(ev),
                "nonce_safety" => nonce_safety(ev),
                "journal_monotonicity" => journal_monotonicity(ev),
                "fencing" => fencing(ev),
                "reconciliation" => reconciliation(ev),
                "fail_closed" => fail_closed(ev),
                "valid_work" => valid_work(ev),
                "visibility" => visibility::visibility(ev),
                "dead_letters" => dead_letters::dead_letters(ev, ev.max_attempts),
                "effects_once" => effects::effects_once(ev),
                "finality" => finality::finality(ev),
                "failover" => failover::failover(ev, ev.rpc_endpoints),
                // Checked outside one run (two processes, or a baseline run).
                _ => return None,
            })
        })
        .collect()
}

/// Recovery time: for every fault, from the moment it was lifted until the last request that was
/// in flight across it (accepted before it ended, not finished before it started) finished; the
/// maximum over the faults, and at least the time from the heal instant to the last completion.
/// `None` when some such request never finished.
pub fn recovery_ms(
    ops: &[crate::timing::OpTiming],
    windows: &[crate::timing::FaultWindow],
    heal_ms: u64,
) -> Option<u64> {
    let mut worst = 0u64;
    for w in windows {
        for o in ops {
            let Some(acc) = o.accepted_ms else { continue };
            if acc > w.end_ms || o.done_ms.is_some_and(|d| d < w.start_ms) {
                continue;
            }
            worst = worst.max(o.done_ms?.saturating_sub(w.end_ms));
        }
    }
    for o in ops.iter().filter(|o| o.accepted_ms.is_some()) {
        worst = worst.max(o.done_ms?.saturating_sub(heal_ms));
    }
    Some(worst)
}

/// 10. The same seed gives the same trace hash: `runs` are (where it ran, trace hash) pairs of one
///     scenario and seed, each from its own process.
pub fn determinism(scenario: &str, seed: u64, runs: &[(String, String)]) -> Verdict {
    let mut v = Vec::new();
    if let Some((first_at, first)) = runs.first() {
        for (at, h) in &runs[1..] {
            if h != first {
                v.push(format!(
                    "{scenario} seed {seed}: trace hash {h} ({at}) differs from {first} ({first_at}); replay both with `cargo xtask sim repro {scenario} --seed {seed}` and diff the JSON-lines traces to find the first diverging event"
                ));
            }
        }
    }
    Verdict::new("determinism", format!("{} runs of one seed", runs.len()), v)
}

/// 1. Every accepted request reaches a terminal state within the liveness bound after healing,
///    and no acknowledged request disappears — except by an asynchronous failover that lost
///    acknowledged commits (its RPO): a workflow the client then found gone and submitted again,
///    or one the client had seen finish before the failover ended (it never looks again).
pub fn durability(ev: &Evidence) -> Verdict {
    let by_id: BTreeMap<i64, &WorkflowView> = ev.workflows.iter().map(|w| (w.id, w)).collect();
    let mut v = Vec::new();
    let mut accepted = 0;
    // Under asynchronous replication a failover may lose acknowledged commits (measured in
    // `data_loss`); a client that finds its workflow gone submits it again with the same key.
    // (The real backend measures the WAL bytes the promoted replica lacked, not commits.)
    let async_loss = ev.data_loss.iter().any(DataLoss::lost_acknowledged_async);
    // The last moment a database failover was under way: a workflow its client saw finish before
    // then may be among the commits an asynchronous failover lost (within its RPO). The client,
    // done with it, never looks again, so it cannot report it gone.
    let last_failover_end = ev
        .fault_windows
        .iter()
        .filter(|w| matches!(w.kind, FaultKind::DbFailover | FaultKind::RegionFailover))
        .map(|w| w.end_ms)
        .max();
    for (op, sum) in summarize(&ev.ops) {
        let Some(at) = sum.accepted_at else { continue };
        accepted += 1;
        let finished_then_lost = async_loss
            && matches!((&sum.observed, last_failover_end), (Some((t, _, _)), Some(end)) if *t <= end);
        for id in &sum.workflow_ids {
            if sum.lost_ids.contains(id) {
                if !async_loss {
                    v.push(format!(
                        "op {op} ({} key {}) was acknowledged at {} as workflow {id}, which the client later found gone with no asynchronous failover to explain it: an acknowledged request disappeared",
                        sum.kind, sum.key, s(at)
                    ));
                }
                continue;
            }
            let gone = by_id.get(id).is_none_or(|w| w.key != sum.key);
            if gone && finished_then_lost {
                continue;
            }
            match by_id.get(id) {
                None => v.push(format!(
                    "op {op} ({} key {}) was acknowledged at {} as workflow {id}, which is not in the database: an acknowledged request disappeared",
                    sum.kind, sum.key, s(at)
                )),
                Some(w) if w.key != sum.key => v.push(format!(
                    "op {op} ({} key {}) was acknowledged at {} as workflow {id}, which the database now holds for key {}: an acknowledged request disappeared",
                    sum.kind, sum.key, s(at), w.key
                )),
                Some(w) if !TERMINAL.contains(&w.status.as_str()) => v.push(format!(
                    "op {op} ({} key {}) accepted at {} as workflow {id} is still `{}` at step {} {}",
                    sum.kind, sum.key, s(at), w.status, w.current_step,
                    match ev.liveness_ended_ms < ev.liveness_deadline_ms {
                        // The backend could not see it unfinished (it cannot read the database
                        // mid-run), so the phase ended when the clients were settled.
                        true => format!(
                            "when the liveness phase ended at {}, before its bound ({} after healing at {}): the clients had seen it finish",
                            s(ev.liveness_ended_ms), s(ev.liveness_deadline_ms.saturating_sub(ev.heal_ms)), s(ev.heal_ms)
                        ),
                        false => format!(
                            "after the liveness bound ({} after healing at {})",
                            s(ev.liveness_deadline_ms.saturating_sub(ev.heal_ms)), s(ev.heal_ms)
                        ),
                    }
                )),
                Some(_) => {}
            }
        }
        match &sum.observed {
            None => {
                if sum.workflow_ids.iter().all(|id| {
                    by_id
                        .get(id)
                        .is_some_and(|w| TERMINAL.contains(&w.status.as_str()))
                }) {
                    v.push(format!(
                        "op {op} ({} key {}): the client never saw workflow {:?} finish before the liveness deadline {}",
                        sum.kind, sum.key, sum.workflow_ids, s(ev.liveness_deadline_ms)
                    ));
                }
            }
            Some((t, _, _)) if *t > ev.liveness_deadline_ms => v.push(format!(
                "op {op} ({} key {}) finished at {}, after the liveness deadline {}",
                sum.kind,
                sum.key,
                s(*t),
                s(ev.liveness_deadline_ms)
            )),
            Some(_) => {}
        }
    }
    for loss in &ev.data_loss {
        let acked = loss.lost_acknowledged.unwrap_or(0);
        if loss.replication == "sync" && acked > 0 {
            v.push(format!(
                "a failover under synchronous replication lost {acked} acknowledged commits ({:?}): a write was acknowledged before a replica had it",
                loss.ops
            ));
        }
    }
    if let Some(max) = ev.max_dead_letters {
        let dead: Vec<&WorkflowView> = ev
            .workflows
            .iter()
            .filter(|w| w.status == "dead_letter")
            .collect();
        if dead.len() as u64 > max {
            for w in dead {
                v.push(format!(
                    "workflow {} ({} key {}) was dead-lettered although the scenario's faults are transient (at most {max} expected): {}",
                    w.id,
                    w.kind,
                    w.key,
                    w.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
                ));
            }
        }
    }
    Verdict::new("durability", format!("{accepted} accepted requests"), v)
}

/// 2. Per idempotency key one workflow, per transaction step at most one mined transaction with
///    effect, every signer transaction on chain accounted for, and token state equal to what the
///    completed operations imply.
pub fn exactly_once(ev: &Evidence) -> Verdict {
    let mut v = Vec::new();
    // One workflow per key.
    let mut per_key: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for w in &ev.workflows {
        per_key.entry(w.key.clone()).or_default().insert(w.id);
    }
    for (op, sum) in summarize(&ev.ops) {
        // A workflow the client found gone and submitted again is the durability checker's
        // business (allowed only after an asynchronous failover lost acknowledged commits).
        let live: Vec<i64> = sum
            .workflow_ids
            .iter()
            .copied()
            .filter(|id| !sum.lost_ids.contains(id))
            .collect();
        for id in &live {
            per_key.entry(sum.key.clone()).or_default().insert(*id);
        }
        if live.len() > 1 {
            v.push(format!(
                "op {op}: idempotency key {} was answered with different workflows {live:?}",
                sum.key
            ));
        }
    }
    for (key, ids) in &per_key {
        if ids.len() > 1 {
            v.push(format!(
                "idempotency key {key} names {} workflows {ids:?}",
                ids.len()
            ));
        }
    }
    // Map mined transactions to the engine's records.
    let mined: BTreeMap<B256, &ChainTx> = ev
        .chain_txs
        .iter()
        .filter(|t| t.from == ev.signer)
        .map(|t| (t.hash, t))
        .collect();
    let mut owner: BTreeMap<B256, (i64, i32)> = BTreeMap::new();
    let mut per_step: BTreeMap<(i64, i32), Vec<&ChainTx>> = BTreeMap::new();
    for tx in &ev.txs {
        for b in &tx.broadcasts {
            owner.insert(b.hash, (tx.workflow_id, tx.step_index));
            if let Some(m) = mined.get(&b.hash) {
                per_step
                    .entry((tx.workflow_id, tx.step_index))
                    .or_default()
                    .push(m);
            }
        }
    }
    // Steps the database recorded as completed: a transaction step among them must not rest on
    // transactions that all reverted (a receipt's status is the effect, not its inclusion).
    let completed: BTreeSet<(i64, i32)> = ev
        .journals
        .iter()
        .flat_map(|(wf, j)| {
            j.iter()
                .filter(|e| e.event == "completed")
                .map(move |e| (*wf, e.step_index))
        })
        .collect();
    for ((wf, step), txs) in &per_step {
        if completed.contains(&(*wf, *step)) && txs.iter().all(|t| !t.success) {
            v.push(format!(
                "workflow {wf} step {step} completed, but every transaction of it that was mined reverted: {}",
                txs.iter()
                    .map(|t| format!("{:#x} (nonce {}, block {})", t.hash, t.nonce, t.block))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let effective: Vec<_> = txs.iter().filter(|t| t.success).collect();
        if effective.len() > 1 {
            v.push(format!(
                "workflow {wf} step {step}: {} transactions with effect were mined: {}",
                effective.len(),
                effective
                    .iter()
                    .map(|t| format!("{:#x} (nonce {}, block {})", t.hash, t.nonce, t.block))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let external: BTreeSet<B256> = ev.external_txs.iter().copied().collect();
    let fillers: BTreeSet<B256> = ev.fillers.iter().copied().collect();
    for t in mined.values() {
        if !owner.contains_key(&t.hash) && !external.contains(&t.hash) && !fillers.contains(&t.hash)
        {
            v.push(format!(
                "signer transaction {:#x} (nonce {}, block {}) was mined but no engine record names it: a send outside the nonce manager, or a lost record",
                t.hash, t.nonce, t.block
            ));
        }
    }
    // Registrations as requested: a completed registration (an issuance's investor too) left its
    // account registered with the requested country on its token; no balance would show it.
    let registered: BTreeSet<(Address, Address, u16)> = ev
        .identities
        .iter()
        .map(|l| (l.contract, l.account, l.country))
        .collect();
    let mut registrations = 0;
    for w in ev.workflows.iter().filter(|w| w.status == "completed") {
        let (token, account) = match w.kind.as_str() {
            "register_identity" => (
                address_at(Some(&w.input), "token"),
                address_at(Some(&w.input), "account"),
            ),
            "issuance" => (
                address_at(w.result.as_ref(), "token"),
                address_at(Some(&w.input), "investor"),
            ),
            _ => continue,
        };
        let country = w
            .input
            .get("country")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok());
        let (Some(token), Some(account), Some(country)) = (token, account, country) else {
            continue;
        };
        registrations += 1;
        if !registered.contains(&(token, account, country)) {
            v.push(format!(
                "workflow {} ({}, key {}) completed, but no IdentityRegistered({account:#x}, {country}) of token {token:#x} is on chain",
                w.id, w.kind, w.key
            ));
        }
    }
    // Issuances as requested: a completed issuance's token has the per-holder cap it asked for
    // (not judged where a `balance_cap` fault rewrote the caps).
    let caps_rewritten = ev
        .fault_windows
        .iter()
        .any(|f| f.kind == crate::scenario::FaultKind::BalanceCap);
    for w in ev
        .workflows
        .iter()
        .filter(|w| w.status == "completed" && w.kind == "issuance" && !caps_rewritten)
    {
        let token = address_at(w.result.as_ref(), "token");
        let asked = w
            .input
            .get("max_balance")
            .and_then(Value::as_str)
            .map_or(Some(U256::ZERO), |a| U256::from_str_radix(a, 10).ok());
        let (Some(token), Some(asked)) = (token, asked) else {
            continue;
        };
        if let Some(cap) = ev.max_balance.get(&token).filter(|&&c| c != asked) {
            v.push(format!(
                "workflow {} (issuance, key {}) completed, but token {token:#x} caps holders at {cap}, not the {asked} it asked for",
                w.id, w.key
            ));
        }
    }
    // Token state implied by the completed operations.
    let mut expect_supply: BTreeMap<Address, U256> = BTreeMap::new();
    let mut expect_investor: BTreeMap<Address, U256> = BTreeMap::new();
    let mut unsettled: BTreeSet<Address> = BTreeSet::new();
    for w in &ev.workflows {
        let token =
            address_at(Some(&w.input), "token").or_else(|| address_at(w.result.as_ref(), "token"));
        let Some(token) = token else { continue };
        let amount = w
            .input
            .get(if w.kind == "issuance" {
                "initial_supply"
            } else {
                "amount"
            })
            .and_then(Value::as_str)
            .and_then(|a| U256::from_str_radix(a, 10).ok())
            .unwrap_or_default();
        let to_investor = address_at(Some(&w.input), "to") == Some(ev.investor);
        if !TERMINAL.contains(&w.status.as_str()) {
            unsettled.insert(token);
            continue;
        }
        if w.status != "completed" {
            continue;
        }
        match w.kind.as_str() {
            "issuance" => *expect_supply.entry(token).or_default() += amount,
            "mint" => {
                *expect_supply.entry(token).or_default() += amount;
                if to_investor {
                    *expect_investor.entry(token).or_default() += amount;
                }
            }
            "transfer" if to_investor => *expect_investor.entry(token).or_default() += amount,
            _ => {}
        }
    }
    let mut tokens_checked = 0;
    for (token, supply) in &ev.supply {
        if unsettled.contains(token) {
            continue;
        }
        tokens_checked += 1;
        let want = expect_supply.get(token).copied().unwrap_or_default();
        if *supply != want {
            v.push(format!(
                "token {token:#x}: totalSupply on chain is {supply}, the completed operations imply {want}"
            ));
        }
        let have = ev.investor_balance.get(token).copied().unwrap_or_default();
        let want = expect_investor.get(token).copied().unwrap_or_default();
        if have != want {
            v.push(format!(
                "token {token:#x}: the investor's balance on chain is {have}, the completed mints and transfers imply {want}"
            ));
        }
    }
    Verdict::new(
        "exactly_once",
        format!(
            "{} keys, {} signer transactions mined, {tokens_checked} tokens' supply and balances, {registrations} registrations",
            per_key.len(),
            mined.len()
        ),
        v,
    )
}

/// 3. No nonce used by two operations; no gap that blocks later transactions.
pub fn nonce_safety(ev: &Evidence) -> Verdict {
    let mut v = Vec::new();
    let mined: BTreeMap<B256, &ChainTx> = ev
        .chain_txs
        .iter()
        .filter(|t| t.from == ev.signer)
        .map(|t| (t.hash, t))
        .collect();
    let mut nonce_rows: BTreeMap<u64, BTreeSet<(i64, i32)>> = BTreeMap::new();
    for tx in &ev.txs {
        for b in &tx.broadcasts {
            if let Some(m) = mined.get(&b.hash) {
                nonce_rows
                    .entry(m.nonce)
                    .or_default()
                    .insert((tx.workflow_id, tx.step_index));
            }
        }
        // Two live records must never hold the same nonce.
    }
    // A version replacing another at the same nonce must outbid it on both fees by a node's
    // replacement rule (geth's 10 %, the least `chain.replacement_bump_percent` may be): a
    // smaller bump is refused, and the transaction stays stuck behind its own original while
    // the engine signs version after version.
    for tx in &ev.txs {
        for w in tx.broadcasts.windows(2) {
            let (old, new) = (&w[0], &w[1]);
            if old.nonce != new.nonce || old.hash == new.hash {
                continue;
            }
            let enough = |was: u128, now: u128| now >= was.saturating_mul(110) / 100;
            if !enough(old.max_fee_per_gas, new.max_fee_per_gas)
                || !enough(old.max_priority_fee_per_gas, new.max_priority_fee_per_gas)
            {
                v.push(format!(
                    "transaction record {} (workflow {}, step {}) replaced {:#x} at nonce {} by {:#x} with fees (cap {}, tip {}) after (cap {}, tip {}): a replacement must raise both by 10 % or a node refuses it",
                    tx.id, tx.workflow_id, tx.step_index, old.hash, old.nonce, new.hash,
                    new.max_fee_per_gas, new.max_priority_fee_per_gas,
                    old.max_fee_per_gas, old.max_priority_fee_per_gas
                ));
            }
        }
    }
    let mut live: BTreeMap<u64, Vec<(i64, i32)>> = BTreeMap::new();
    for tx in &ev.txs {
        if matches!(
            tx.state,
            TxState::Completed | TxState::Confirming | TxState::Broadcasting
        ) {
            live.entry(tx.nonce)
                .or_default()
                .push((tx.workflow_id, tx.step_index));
        }
    }
    for (n, rows) in &live {
        if rows.len() > 1 {
            v.push(format!(
                "nonce {n} is held by {} live transaction records (workflow, step): {rows:?}",
                rows.len()
            ));
        }
    }
    for (n, rows) in &nonce_rows {
        if rows.len() > 1 {
            v.push(format!(
                "mined nonce {n} belongs to several operations {rows:?}"
            ));
        }
    }
    let mut nonces: Vec<u64> = mined.values().map(|t| t.nonce).collect();
    nonces.sort_unstable();
    for w in nonces.windows(2) {
        if w[0] == w[1] {
            v.push(format!("nonce {} was mined twice for the signer", w[0]));
        }
    }
    let all_terminal = ev
        .workflows
        .iter()
        .all(|w| TERMINAL.contains(&w.status.as_str()));
    if all_terminal {
        for (n, executable) in &ev.signer_pending {
            if !executable {
                v.push(format!(
                    "signer transaction with nonce {n} is stuck in the mempool behind a nonce gap after every workflow finished"
                ));
            }
        }
    }
    Verdict::new(
        "nonce_safety",
        format!(
            "{} mined signer nonces, {} transaction records",
            nonces.len(),
            ev.txs.len()
        ),
        v,
    )
}

/// 4. A workflow never goes back to a step whose completion was persisted, and no step completes twice.
pub fn journal_monotonicity(ev: &Evidence) -> Verdict {
    let mut v = Vec::new();
    let mut entries = 0;
    for (wf, journal) in &ev.journals {
        let mut done: Option<i32> = None;
        for e in journal {
            entries += 1;
            // `workflow_completed` is written with its last step's `completed`, in one transaction.
            if matches!(
                e.event.as_str(),
                "requeued" | "received" | "workflow_completed"
            ) {
                continue;
            }
            if let Some(d) = done {
                if e.step_index <= d {
                    v.push(format!(
                        "workflow {wf}: journal seq {} records `{}` for step {} ({}) by {} after step {d} was persisted as completed",
                        e.seq, e.event, e.step_index, e.step_name, e.node
                    ));
                }
            }
            if e.event == "completed" {
                done = Some(done.map_or(e.step_index, |d| d.max(e.step_index)));
            }
        }
    }
    Verdict::new(
        "journal_monotonicity",
        format!("{} workflows, {entries} journal entries", ev.journals.len()),
        v,
    )
}

/// 5. No write from a superseded lease holder is accepted: fencing tokens in each journal never go back.
pub fn fencing(ev: &Evidence) -> Verdict {
    let mut v = Vec::new();
    for (wf, journal) in &ev.journals {
        let mut high: Option<(i64, &str, i64)> = None;
        for e in journal {
            if e.event == "received" || e.event == "requeued" {
                continue;
            }
            if let Some((tok, node, seq)) = high {
                if e.fencing_token < tok {
                    v.push(format!(
                        "workflow {wf}: journal seq {} (`{}` step {}) was written by {} with fencing token {} after {node} wrote seq {seq} with token {tok}: a superseded holder's write was accepted",
                        e.seq, e.event, e.step_index, e.node, e.fencing_token
                    ));
                }
            }
            if high.is_none_or(|(t, _, _)| e.fencing_token >= t) {
                high = Some((e.fencing_token, &e.node, e.seq));
            }
        }
    }
    for w in &ev.stale_writes_accepted {
        v.push(format!(
            "at {} the database accepted `{}` on workflow {} from {} with fencing token {}, superseded by token {}: a lease was taken over without fencing",
            s(w["t_ms"].as_u64().unwrap_or(0)),
            w["op"].as_str().unwrap_or("?"),
            w["workflow"],
            w["node"].as_str().unwrap_or("?"),
            w["ours"],
            w["current"]
        ));
    }
    // Nothing stopped any holder: no fault, no fault point fired. A write refused for a stale
    // fence then means a healthy holder lost its lease (renewed too late, or not at all), and
    // another node ran its workflow meanwhile: safe only thanks to fencing, never intended.
    let quiet = ev.fault_windows.is_empty() && ev.fault_point_firings.is_empty();
    if let Some(n) = ev.fenced_writes.filter(|&n| quiet && n > 0) {
        v.push(format!(
            "{n} writes were refused for a stale fence in a run where no fault was injected and no fault point fired: a holder nothing stopped lost its lease"
        ));
    }
    Verdict::new(
        "fencing",
        format!(
            "{} journals, every fenced write at the database{}",
            ev.journals.len(),
            if quiet && ev.fenced_writes.is_some() {
                "; no lease lost in a quiet run"
            } else {
                ""
            }
        ),
        v,
    )
}

/// 6. Indexed state equals chain state at the finalized height.
pub fn reconciliation(ev: &Evidence) -> Verdict {
    let mut v = Vec::new();
    if ev.indexed_height < ev.finalized {
        v.push(format!(
            "the indexer's checkpoint is block {}, below the finalized height {} at the end of the run",
            ev.indexed_height, ev.finalized
        ));
    }
    let mut chain: BTreeMap<(Address, Address), U256> = BTreeMap::new();
    for t in ev.transfers.iter().filter(|t| t.block <= ev.finalized) {
        if t.from != Address::ZERO {
            let e = chain.entry((t.contract, t.from)).or_default();
            *e = e.wrapping_sub(t.value);
        }
        if t.to != Address::ZERO {
            let e = chain.entry((t.contract, t.to)).or_default();
            *e = e.wrapping_add(t.value);
        }
    }
    chain.retain(|_, b| !b.is_zero());
    let mut indexed = ev.indexed_balances.clone();
    indexed.retain(|_, b| !b.is_zero());
    for (k, b) in &chain {
        let got = indexed.get(k).copied().unwrap_or_default();
        if got != *b {
            v.push(format!(
                "token {:#x} holder {:#x}: chain balance at block {} is {b}, indexed {got}",
                k.0, k.1, ev.finalized
            ));
        }
    }
    for (k, b) in &indexed {
        if !chain.contains_key(k) {
            v.push(format!(
                "token {:#x} holder {:#x}: indexed balance {b} at block {} has no counterpart on chain",
                k.0, k.1, ev.finalized
            ));
        }
    }
    Verdict::new(
        "reconciliation",
        format!(
            "{} balances at finalized block {}",
            chain.len(),
            ev.finalized
        ),
        v,
    )
}

/// Operation kinds the workload plans valid by the fixture's own rules: issuances, identity
/// registrations, and mints and transfers to the investor every issuance registers, from an
/// issuer whose initial supply covers every planned transfer. (Blocked transfers and unverified
/// mints are planted invalid on purpose: `fail_closed` and the requeue judge those.)
const VALID_KINDS: &[&str] = &["issuance", "mint", "transfer", "register_identity"];

/// Valid work completes: a workflow of an operation planned valid must not end `failed`, the
/// engine's typed refusal (a compliance check that answered from stale state, a revert taken for
/// the user's fault); the violation names the cause the engine recorded. Dead letters beyond
/// the scenario's allowance and work still running are `durability`'s.
pub fn valid_work(ev: &Evidence) -> Verdict {
    let by_id: BTreeMap<i64, &WorkflowView> = ev.workflows.iter().map(|w| (w.id, w)).collect();
    let mut v = Vec::new();
    let mut valid = 0;
    for (op, sum) in summarize(&ev.ops) {
        if !VALID_KINDS.contains(&sum.kind.as_str()) {
            continue;
        }
        valid += 1;
        for id in &sum.workflow_ids {
            let Some(w) = by_id.get(id).filter(|w| w.key == sum.key) else {
                continue;
            };
            if w.status == "failed" {
                let cause = w.error.as_ref().map_or_else(String::new, |e| {
                    format!(
                        "{} at step {}: {}",
                        e.get("reason_code").and_then(Value::as_str).unwrap_or("?"),
                        e.get("step").and_then(Value::as_str).unwrap_or("?"),
                        e.get("message").and_then(Value::as_str).unwrap_or("")
                    )
                });
                v.push(format!(
                    "op {op} ({} key {}), valid by the workload's rules, ended `failed` as workflow {id}: {cause}",
                    sum.kind, sum.key
                ));
            }
        }
    }
    Verdict::new("valid_work", format!("{valid} operations planned valid"), v)
}

/// 7. No transfer executes whose compliance check did not pass.
pub fn fail_closed(ev: &Evidence) -> Verdict {
    let mut v = Vec::new();
    let blocked: BTreeMap<Address, (u64, String)> = summarize(&ev.ops)
        .into_iter()
        .filter(|(_, s)| s.kind == "blocked_transfer")
        .filter_map(|(op, s)| {
            ev.workflows
                .iter()
                .find(|w| w.key == s.key)
                .and_then(|w| {
                    w.input
                        .get("to")
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse().ok())
                })
                .map(|to| (to, (op, s.key)))
        })
        .collect();
    for t in &ev.transfers {
        if let Some((op, key)) = blocked.get(&t.to) {
            v.push(format!(
                "op {op} (key {key}): {} tokens of {:#x} reached {:#x} in block {}, an account whose compliance check cannot pass",
                t.value, t.contract, t.to, t.block
            ));
        }
    }
    let blocked_keys: BTreeSet<&str> = blocked.values().map(|(_, k)| k.as_str()).collect();
    let with_tx: BTreeSet<i64> = ev.txs.iter().map(|t| t.workflow_id).collect();
    for w in ev
        .workflows
        .iter()
        .filter(|w| blocked_keys.contains(w.key.as_str()))
    {
        if w.status == "completed" {
            v.push(format!(
                "workflow {} (key {}): a blocked transfer completed",
                w.id, w.key
            ));
        } else if TERMINAL.contains(&w.status.as_str())
            && (w.status != "failed"
                || w.error
                    .as_ref()
                    .and_then(|e| e.get("reason_code"))
                    .and_then(Value::as_str)
                    != Some("compliance_rejected"))
        {
            v.push(format!(
                "workflow {} (key {}): a transfer the compliance check rejects must end `failed` with reason compliance_rejected (a typed failure), not `{}` ({})",
                w.id,
                w.key,
                w.status,
                w.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
            ));
        }
        if with_tx.contains(&w.id) {
            v.push(format!(
                "workflow {} (key {}): a transaction was created for a transfer whose compliance check did not pass",
                w.id, w.key
            ));
        }
    }
    Verdict::new(
        "fail_closed",
        format!("{} blocked transfers", blocked.len()),
        v,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::history::OpType;
    use alloy_primitives::{address, b256, Bytes};
    use dalp_engine::store::{Broadcast, FeesView};
    use serde_json::json;

    const SIGNER: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
    const INVESTOR: Address = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
    const TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");

    fn op(
        t: u64,
        op: u64,
        kind: &str,
        key: &str,
        typ: OpType,
        wf: Option<i64>,
        status: Option<&str>,
    ) -> Op {
        Op {
            t_ms: t,
            client: "client-0".into(),
            op,
            kind: kind.into(),
            key: key.into(),
            typ,
            workflow_id: wf,
            status: status.map(Into::into),
            detail: Value::Null,
        }
    }

    pub(crate) fn wf(id: i64, kind: &str, key: &str, status: &str, input: Value) -> WorkflowView {
        WorkflowView {
            id,
            kind: kind.into(),
            key: key.into(),
            status: status.into(),
            current_step: 0,
            input,
            result: None,
            error: None,
        }
    }

    fn tx(wf: i64, step: i32, nonce: u64, state: TxState, hashes: &[B256]) -> TxRecord {
        TxRecord {
            id: wf * 10 + step as i64,
            workflow_id: wf,
            step_index: step,
            intent_signer: SIGNER,
            chain_id: 31337,
            nonce,
            state,
            to: Some(TOKEN),
            input: Bytes::new(),
            value: U256::ZERO,
            gas_limit: 1,
            fees: FeesView {
                max_fee_per_gas: 1,
                max_priority_fee_per_gas: 1,
            },
            raw: None,
            hash: hashes.last().copied(),
            broadcasts: hashes
                .iter()
                .map(|h| Broadcast {
                    hash: *h,
                    nonce,
                    raw: Bytes::new(),
                    max_fee_per_gas: 1,
                    max_priority_fee_per_gas: 1,
                })
                .collect(),
            receipt: None,
        }
    }

    fn chain_tx(hash: B256, nonce: u64, block: u64) -> ChainTx {
        ChainTx {
            hash,
            from: SIGNER,
            nonce,
            to: Some(TOKEN),
            success: true,
            block,
        }
    }

    const H1: B256 = b256!("1111111111111111111111111111111111111111111111111111111111111111");
    const H2: B256 = b256!("2222222222222222222222222222222222222222222222222222222222222222");
    const H3: B256 = b256!("3333333333333333333333333333333333333333333333333333333333333333");
    const H4: B256 = b256!("4444444444444444444444444444444444444444444444444444444444444444");

    fn loss(replication: &str, acknowledged: u64, ops: &[&str]) -> DataLoss {
        DataLoss {
            replication: replication.into(),
            lost_acknowledged: Some(acknowledged),
            ops: ops.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    pub(crate) fn base() -> Evidence {
        Evidence {
            signer: SIGNER,
            investor: INVESTOR,
            heal_ms: 10_000,
            liveness_deadline_ms: 70_000,
            liveness_ended_ms: 70_000,
            ..Default::default()
        }
    }

    pub(crate) fn mint_input(amount: u64) -> Value {
        json!({"token": format!("{TOKEN:#x}"), "to": format!("{INVESTOR:#x}"), "amount": amount.to_string()})
    }

    #[test]
    fn durability_fails_when_an_accepted_request_never_finishes_or_vanishes() {
        let mut ev = base();
        ev.ops = vec![
            op(1000, 0, "mint", "k0", OpType::Invoke, None, None),
            op(1010, 0, "mint", "k0", OpType::Ok, Some(1), Some("pending")),
            op(1000, 1, "mint", "k1", OpType::Ok, Some(2), Some("pending")),
        ];
        ev.workflows = vec![wf(1, "mint", "k0", "running", mint_input(5))];
        let v = durability(&ev);
        assert!(!v.held);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("op 0") && m.contains("still `running`")),
            "{v:?}"
        );
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("op 1") && m.contains("disappeared")),
            "{v:?}"
        );
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("op 0") && m.contains("after the liveness bound (60.000 s")),
            "{v:?}"
        );
        // A phase that ended before its bound (the clients had seen it finish, and the backend
        // cannot read the database mid-run) is not called a bound exceeded.
        ev.liveness_ended_ms = 12_000;
        let early = durability(&ev);
        assert!(
            early.violations.iter().any(|m| m.contains("op 0")
                && m.contains("when the liveness phase ended at 12.000 s, before its bound")),
            "{early:?}"
        );
        // Terminal and observed in time: holds.
        ev.workflows = vec![
            wf(1, "mint", "k0", "completed", mint_input(5)),
            wf(2, "mint", "k1", "dead_letter", mint_input(5)),
        ];
        ev.ops.push(op(
            20_000,
            0,
            "mint",
            "k0",
            OpType::Observe,
            Some(1),
            Some("completed"),
        ));
        ev.ops.push(op(
            20_000,
            1,
            "mint",
            "k1",
            OpType::Observe,
            Some(2),
            Some("dead_letter"),
        ));
        assert!(durability(&ev).held, "{:?}", durability(&ev));
    }

    #[test]
    fn recovery_is_measured_from_each_fault_to_the_last_request_in_flight_across_it() {
        use crate::timing::{FaultWindow, OpTiming};
        let op = |op, acc: Option<u64>, done: Option<u64>| OpTiming {
            op,
            kind: "mint".into(),
            planned_ms: acc.unwrap_or(0),
            accepted_ms: acc,
            done_ms: done,
            status: None,
            token: 0,
            claimed_by: vec![],
            unanswered: vec![],
        };
        let window = FaultWindow {
            fault: 0,
            kind: crate::scenario::FaultKind::EngineCrash,
            target: "engine-0".into(),
            start_ms: 10_000,
            end_ms: 15_000,
        };
        // Accepted at 9 s, finished at 21 s: 6 s after the fault was lifted. Another finished
        // before the fault started and one was accepted after it: neither counts.
        let ops = vec![
            op(0, Some(9_000), Some(21_000)),
            op(1, Some(1_000), Some(5_000)),
            op(2, Some(30_000), Some(31_000)),
        ];
        assert_eq!(
            recovery_ms(&ops, std::slice::from_ref(&window), 60_000),
            Some(6_000)
        );
        // Something never finished: not recovered.
        let ops = vec![op(0, Some(9_000), None)];
        assert_eq!(recovery_ms(&ops, &[window], 60_000), None);
        // No faults: from the heal instant.
        let ops = vec![op(0, Some(59_000), Some(62_500))];
        assert_eq!(recovery_ms(&ops, &[], 60_000), Some(2_500));
    }

    #[test]
    fn determinism_fails_when_one_seed_gives_two_hashes() {
        let runs = vec![
            ("process 1".to_string(), "aa".to_string()),
            ("process 2".to_string(), "aa".to_string()),
        ];
        assert!(determinism("engine-crash", 3, &runs).held);
        let runs = vec![
            ("process 1".to_string(), "aa".to_string()),
            ("process 2".to_string(), "bb".to_string()),
        ];
        let v = determinism("engine-crash", 3, &runs);
        assert!(!v.held);
        assert!(
            v.violations[0].contains(
                "engine-crash seed 3: trace hash bb (process 2) differs from aa (process 1)"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn durability_fails_on_acknowledged_loss_under_sync_and_on_unexpected_dead_letters() {
        let mut ev = base();
        ev.data_loss = vec![loss("sync", 2, &["complete_step", "create_tx"])];
        let v = durability(&ev);
        assert!(
            v.violations[0].contains("lost 2 acknowledged commits"),
            "{v:?}"
        );
        ev.data_loss = vec![loss("async", 2, &[])];
        assert!(
            durability(&ev).held,
            "async loss is measured, not a violation by itself"
        );
        ev.workflows = vec![wf(4, "mint", "k4", "dead_letter", mint_input(1))];
        ev.workflows[0].error = Some(json!({"reason_code": "rpc_timeout"}));
        ev.max_dead_letters = Some(0);
        let v = durability(&ev);
        assert!(
            v.violations[0].contains("workflow 4") && v.violations[0].contains("rpc_timeout"),
            "{v:?}"
        );
        ev.max_dead_letters = Some(1);
        assert!(durability(&ev).held);
    }

    #[test]
    fn durability_allows_a_resubmitted_lost_workflow_only_after_an_async_loss() {
        let mut ev = base();
        let mut lost = op(5_000, 0, "mint", "k0", OpType::Unknown, Some(3), None);
        lost.detail = json!({"lost": 3, "reason": "now names key other"});
        ev.ops = vec![
            op(1_000, 0, "mint", "k0", OpType::Ok, Some(3), Some("pending")),
            lost,
            op(6_000, 0, "mint", "k0", OpType::Ok, Some(9), Some("pending")),
            op(
                9_000,
                0,
                "mint",
                "k0",
                OpType::Observe,
                Some(9),
                Some("completed"),
            ),
        ];
        // Id 3 now belongs to another request; the re-submission completed as 9.
        ev.workflows = vec![
            wf(3, "mint", "other", "completed", Value::Null),
            wf(9, "mint", "k0", "completed", Value::Null),
        ];
        let v = durability(&ev);
        assert!(
            !v.held
                && v.violations[0].contains("op 0 (mint key k0)")
                && v.violations[0].contains("workflow 3")
                && v.violations[0].contains("no asynchronous failover"),
            "{v:?}"
        );
        ev.data_loss = vec![loss("async", 1, &["submit"])];
        assert!(durability(&ev).held, "{:?}", durability(&ev));
        // The lost id is not a second workflow of the key for the exactly-once checker.
        assert!(exactly_once(&ev).held, "{:?}", exactly_once(&ev));
        // Without the client's report, an id that now names another key is a loss.
        ev.ops.remove(1);
        let v = durability(&ev);
        assert!(v.violations[0].contains("now holds for key other"), "{v:?}");
        // Unless the client had seen it finish before an asynchronous failover that lost
        // acknowledged commits ended: it was lost with them (RPO), and no client looks again.
        let failover = |end_ms| crate::timing::FaultWindow {
            fault: 0,
            kind: FaultKind::DbFailover,
            target: "-".into(),
            start_ms: 1_000,
            end_ms,
        };
        let observed = op(
            1900,
            0,
            "mint",
            "k0",
            OpType::Observe,
            Some(3),
            Some("completed"),
        );
        ev.ops.insert(1, observed);
        ev.ops.retain(|o| o.workflow_id != Some(9));
        ev.fault_windows = vec![failover(2_500)];
        assert!(durability(&ev).held, "{:?}", durability(&ev));
        // Seen finished only after the failover: its loss is not explained by it.
        ev.fault_windows = vec![failover(1_500)];
        assert!(!durability(&ev).held);
        // Nor without a loss of acknowledged commits.
        ev.fault_windows = vec![failover(2_500)];
        ev.data_loss = vec![loss("async", 0, &[])];
        assert!(!durability(&ev).held);
    }

    #[test]
    fn exactly_once_fails_on_a_duplicate_effect_and_on_an_unrecorded_send() {
        let mut ev = base();
        ev.workflows = vec![wf(1, "mint", "k0", "completed", mint_input(5))];
        // The step re-ran after a crash and signed a second transaction with a fresh nonce.
        ev.txs = vec![
            tx(1, 0, 0, TxState::Completed, &[H1]),
            tx(1, 0, 1, TxState::Completed, &[H2]),
        ];
        ev.chain_txs = vec![chain_tx(H1, 0, 3), chain_tx(H2, 1, 4)];
        let v = exactly_once(&ev);
        assert!(!v.held);
        assert!(
            v.violations[0].contains("workflow 1 step 0: 2 transactions with effect"),
            "{v:?}"
        );
        // A mined signer transaction nobody recorded.
        ev.txs = vec![tx(1, 0, 0, TxState::Completed, &[H1])];
        let v = exactly_once(&ev);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("no engine record names it") && m.contains("nonce 1")),
            "{v:?}"
        );
        ev.external_txs = vec![H2];
        assert!(exactly_once(&ev).held);
        // A gap filler the engine recorded is accounted for too.
        ev.external_txs.clear();
        ev.fillers = vec![H2];
        assert!(exactly_once(&ev).held);
    }

    #[test]
    fn exactly_once_fails_when_a_step_completed_on_a_reverted_transaction() {
        let reverted = |hash, nonce, block| ChainTx {
            success: false,
            ..chain_tx(hash, nonce, block)
        };
        let mut ev = base();
        let input = json!({"token": format!("{TOKEN:#x}"), "account": format!("{INVESTOR:#x}"), "country": 250});
        ev.workflows = vec![wf(1, "register_identity", "k0", "completed", input)];
        ev.journals
            .insert(1, vec![je(1, 0, "completed", 1, "engine-0")]);
        ev.txs = vec![tx(1, 0, 0, TxState::Completed, &[H1])];
        ev.chain_txs = vec![reverted(H1, 0, 3)];
        let v = exactly_once(&ev);
        assert!(!v.held);
        assert!(
            v.violations[0].starts_with(
                "workflow 1 step 0 completed, but every transaction of it that was mined reverted"
            ),
            "{v:?}"
        );
        // Reverted, then requeued and sent again with effect: completed on the second.
        ev.txs.push(tx(1, 0, 1, TxState::Completed, &[H2]));
        ev.chain_txs.push(chain_tx(H2, 1, 5));
        ev.identities = vec![IdentityLog {
            block: 5,
            contract: TOKEN,
            account: INVESTOR,
            country: 250,
        }];
        assert!(exactly_once(&ev).held, "{:?}", exactly_once(&ev));
        // A reverted transaction of a step that did not complete is no violation.
        ev.txs.pop();
        ev.chain_txs.pop();
        ev.journals.clear();
        ev.workflows[0].status = "dead_letter".into();
        assert!(exactly_once(&ev).held, "{:?}", exactly_once(&ev));
    }

    #[test]
    fn exactly_once_fails_when_a_completed_registration_is_not_on_chain_as_requested() {
        let mut ev = base();
        let input = json!({"token": format!("{TOKEN:#x}"), "account": format!("{INVESTOR:#x}"), "country": 250});
        ev.workflows = vec![wf(1, "register_identity", "k0", "completed", input)];
        let v = exactly_once(&ev);
        assert!(!v.held);
        assert!(
            v.violations[0]
                .contains("no IdentityRegistered(0x70997970c51812dc3a010c7d01b50e0d17dc79c8, 250)"),
            "{v:?}"
        );
        // Registered, but with another country than requested.
        let logged = |country| IdentityLog {
            block: 3,
            contract: TOKEN,
            account: INVESTOR,
            country,
        };
        ev.identities = vec![logged(0)];
        assert!(!exactly_once(&ev).held);
        ev.identities.push(logged(250));
        assert!(exactly_once(&ev).held, "{:?}", exactly_once(&ev));
        // The event parses from its topics and data as the contract emits it.
        use alloy_sol_types::SolEvent;
        let mut data = [0u8; 32];
        data[31] = 250;
        let topics = [
            dalp_engine::contracts::AssetToken::IdentityRegistered::SIGNATURE_HASH,
            INVESTOR.into_word(),
        ];
        let parsed = IdentityLog::parse(3, TOKEN, &topics, &data).unwrap();
        assert_eq!((parsed.account, parsed.country), (INVESTOR, 250));
        assert!(IdentityLog::parse(3, TOKEN, &topics[..1], &data).is_none());
    }

    #[test]
    fn exactly_once_fails_when_an_issuance_has_another_cap_than_it_asked_for() {
        let mut ev = base();
        let mut w = wf(
            1,
            "issuance",
            "k0",
            "completed",
            json!({"max_balance": "5000", "investor": format!("{INVESTOR:#x}"), "country": 56}),
        );
        w.result = Some(json!({"token": format!("{TOKEN:#x}")}));
        ev.workflows = vec![w];
        ev.identities = vec![IdentityLog {
            block: 2,
            contract: TOKEN,
            account: INVESTOR,
            country: 56,
        }];
        ev.max_balance.insert(TOKEN, U256::ZERO);
        let v = exactly_once(&ev);
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert!(
            v.violations[0].contains("caps holders at 0, not the 5000 it asked for"),
            "{v:?}"
        );
        ev.max_balance.insert(TOKEN, U256::from(5000));
        assert!(exactly_once(&ev).held, "{:?}", exactly_once(&ev));
        // A balance_cap fault rewrote the caps: not judged.
        ev.max_balance.insert(TOKEN, U256::ZERO);
        ev.fault_windows = vec![crate::timing::FaultWindow {
            fault: 0,
            kind: crate::scenario::FaultKind::BalanceCap,
            target: "-".into(),
            start_ms: 1_000,
            end_ms: 2_000,
        }];
        assert!(exactly_once(&ev).held);
    }

    #[test]
    fn exactly_once_fails_when_chain_supply_disagrees_with_completed_operations() {
        let mut ev = base();
        ev.workflows = vec![
            wf(1, "mint", "k0", "completed", mint_input(5)),
            wf(2, "mint", "k1", "dead_letter", mint_input(7)),
        ];
        ev.supply.insert(TOKEN, U256::from(12));
        ev.investor_balance.insert(TOKEN, U256::from(12));
        let v = exactly_once(&ev);
        assert!(!v.held);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("totalSupply on chain is 12") && m.contains("imply 5")),
            "{v:?}"
        );
        ev.supply.insert(TOKEN, U256::from(5));
        ev.investor_balance.insert(TOKEN, U256::from(5));
        assert!(exactly_once(&ev).held);
    }

    #[test]
    fn exactly_once_fails_when_one_key_names_two_workflows() {
        let mut ev = base();
        ev.workflows = vec![
            wf(1, "mint", "k0", "completed", Value::Null),
            wf(2, "mint", "k0", "completed", Value::Null),
        ];
        let v = exactly_once(&ev);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("key k0 names 2 workflows")),
            "{v:?}"
        );
    }

    #[test]
    fn nonce_safety_fails_on_a_reused_nonce_and_on_a_gap() {
        let mut ev = base();
        ev.workflows = vec![
            wf(1, "mint", "a", "completed", Value::Null),
            wf(2, "mint", "b", "completed", Value::Null),
        ];
        ev.txs = vec![
            tx(1, 0, 4, TxState::Completed, &[H1]),
            tx(2, 0, 4, TxState::Confirming, &[H2]),
        ];
        ev.chain_txs = vec![chain_tx(H1, 4, 9)];
        let v = nonce_safety(&ev);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("nonce 4 is held by 2 live")),
            "{v:?}"
        );
        ev.txs.pop();
        assert!(nonce_safety(&ev).held);
        ev.signer_pending = vec![(7, false)];
        let v = nonce_safety(&ev);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("nonce 7") && m.contains("gap")),
            "{v:?}"
        );
    }

    /// A replacement at the same nonce that does not raise both fees by 10 % is a violation;
    /// one that does, a re-signed identical version, and a version at a new nonce are not.
    #[test]
    fn nonce_safety_fails_on_a_replacement_a_node_refuses() {
        let mut ev = base();
        ev.workflows = vec![wf(1, "mint", "a", "completed", Value::Null)];
        let version = |hash, nonce, cap, tip| Broadcast {
            hash,
            nonce,
            raw: Bytes::new(),
            max_fee_per_gas: cap,
            max_priority_fee_per_gas: tip,
        };
        let mut rec = tx(1, 0, 4, TxState::Completed, &[]);
        rec.broadcasts = vec![
            version(H1, 3, 100, 10),
            version(H2, 4, 100, 10),
            version(H2, 4, 100, 10),
            version(H3, 4, 110, 11),
        ];
        ev.txs = vec![rec.clone()];
        assert!(nonce_safety(&ev).held, "{:?}", nonce_safety(&ev));
        rec.broadcasts.push(version(H4, 4, 200, 11));
        ev.txs = vec![rec];
        let v = nonce_safety(&ev);
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert!(
            v.violations[0].contains("with fees (cap 200, tip 11) after (cap 110, tip 11)"),
            "{v:?}"
        );
    }

    fn je(seq: i64, step: i32, event: &str, token: i64, node: &str) -> JournalEntry {
        JournalEntry {
            seq,
            step_index: step,
            step_name: format!("s{step}"),
            event: event.into(),
            detail: None,
            fencing_token: token,
            node: node.into(),
        }
    }

    #[test]
    fn journal_monotonicity_fails_when_a_completed_step_runs_again() {
        let mut ev = base();
        ev.journals.insert(
            7,
            vec![
                je(1, 0, "received", 0, "api"),
                je(2, 0, "completed", 1, "engine-0"),
                je(3, 1, "completed", 1, "engine-0"),
                je(4, 1, "completed", 2, "engine-1"),
            ],
        );
        let v = journal_monotonicity(&ev);
        assert!(!v.held);
        assert!(
            v.violations[0].contains("workflow 7: journal seq 4")
                && v.violations[0].contains("engine-1"),
            "{v:?}"
        );
        ev.journals.insert(
            7,
            vec![
                je(1, 0, "received", 0, "api"),
                je(2, 0, "retry", 1, "engine-0"),
                je(3, 0, "completed", 2, "engine-0"),
                je(4, 1, "completed", 2, "engine-0"),
            ],
        );
        assert!(journal_monotonicity(&ev).held);
    }

    #[test]
    fn fencing_fails_when_a_quiet_run_fenced_a_write() {
        let mut ev = base();
        ev.fenced_writes = Some(2);
        let v = fencing(&ev);
        assert!(!v.held);
        assert!(
            v.violations[0]
                .starts_with("2 writes were refused for a stale fence in a run where no fault"),
            "{v:?}"
        );
        // Something stopped a holder: a fault point fired (or a fault was injected).
        ev.fault_point_firings = vec![failover::FaultPointFiring {
            t_ms: 1_000,
            node: "engine-0".into(),
            point: "fp.lease.renew".into(),
            action: "delay".into(),
        }];
        assert!(fencing(&ev).held);
        // Not counted by the backend: not judged.
        ev.fault_point_firings.clear();
        ev.fenced_writes = None;
        assert!(fencing(&ev).held);
        ev.fenced_writes = Some(0);
        assert!(fencing(&ev).held);
    }

    #[test]
    fn fencing_fails_when_a_superseded_holder_writes_after_the_new_one() {
        let mut ev = base();
        ev.journals.insert(
            3,
            vec![
                je(1, 0, "received", 0, "api"),
                je(2, 0, "completed", 2, "engine-1"),
                je(3, 1, "retry", 1, "engine-0"),
            ],
        );
        let v = fencing(&ev);
        assert!(!v.held);
        assert!(
            v.violations[0].contains("engine-0 with fencing token 1 after engine-1"),
            "{v:?}"
        );
        ev.journals.insert(
            3,
            vec![
                je(1, 0, "received", 0, "api"),
                je(2, 0, "completed", 1, "engine-0"),
                je(3, 1, "completed", 2, "engine-1"),
            ],
        );
        assert!(fencing(&ev).held);
        // A stale write the store accepted without a journal entry (e.g. a transaction state).
        ev.stale_writes_accepted = vec![
            json!({"t_ms": 12_500, "op": "set_tx_state", "workflow": 3, "ours": 1, "current": 2, "node": "engine-0"}),
        ];
        let v = fencing(&ev);
        assert!(v.violations[0].contains("accepted `set_tx_state` on workflow 3 from engine-0 with fencing token 1, superseded by token 2"), "{v:?}");
    }

    #[test]
    fn reconciliation_fails_when_the_index_double_counts_or_lags() {
        let mut ev = base();
        ev.finalized = 10;
        ev.indexed_height = 10;
        ev.transfers = vec![TransferLog {
            block: 5,
            contract: TOKEN,
            from: Address::ZERO,
            to: INVESTOR,
            value: U256::from(9),
        }];
        ev.indexed_balances
            .insert((TOKEN, INVESTOR), U256::from(18));
        let v = reconciliation(&ev);
        assert!(
            v.violations
                .iter()
                .any(|m| m.contains("chain balance at block 10 is 9, indexed 18")),
            "{v:?}"
        );
        ev.indexed_balances.insert((TOKEN, INVESTOR), U256::from(9));
        assert!(reconciliation(&ev).held);
        ev.indexed_height = 8;
        assert!(!reconciliation(&ev).held);
    }

    #[test]
    fn fail_closed_fails_when_a_blocked_transfer_moves_tokens() {
        let mut ev = base();
        let bad = address!("bb00000000000000000000000000000000000001");
        ev.ops = vec![op(
            1,
            0,
            "blocked_transfer",
            "bt",
            OpType::Ok,
            Some(1),
            Some("pending"),
        )];
        ev.workflows = vec![wf(
            1,
            "transfer",
            "bt",
            "completed",
            json!({"token": format!("{TOKEN:#x}"), "to": format!("{bad:#x}"), "amount": "3"}),
        )];
        ev.txs = vec![tx(1, 1, 0, TxState::Completed, &[H1])];
        ev.transfers = vec![TransferLog {
            block: 4,
            contract: TOKEN,
            from: SIGNER,
            to: bad,
            value: U256::from(3),
        }];
        let v = fail_closed(&ev);
        assert_eq!(v.violation_count, 3, "{v:?}");
        ev.workflows[0].status = "failed".into();
        ev.txs.clear();
        ev.transfers.clear();
        ev.workflows[0].error = Some(json!({"reason_code": "compliance_rejected"}));
        assert!(fail_closed(&ev).held);
        // Misclassified: retried until exhausted and dead-lettered instead of a typed failure.
        ev.workflows[0].status = "dead_letter".into();
        ev.workflows[0].error = Some(json!({"reason_code": "rpc_error"}));
        let v = fail_closed(&ev);
        assert!(v.violations[0].contains("must end `failed`"), "{v:?}");
    }

    #[test]
    fn valid_work_that_ends_failed_is_named_with_its_cause_and_planted_invalid_work_is_not() {
        let mut ev = base();
        ev.ops = vec![
            op(1, 0, "transfer", "t", OpType::Ok, Some(1), Some("pending")),
            op(
                1,
                1,
                "blocked_transfer",
                "bt",
                OpType::Ok,
                Some(2),
                Some("pending"),
            ),
            op(1, 2, "mint", "m", OpType::Ok, Some(3), Some("pending")),
        ];
        let to = |a: Address| json!({"token": format!("{TOKEN:#x}"), "to": format!("{a:#x}"), "amount": "3"});
        let bad = address!("bb00000000000000000000000000000000000001");
        ev.workflows = vec![
            wf(1, "transfer", "t", "completed", to(INVESTOR)),
            wf(2, "transfer", "bt", "failed", to(bad)),
            wf(3, "mint", "m", "completed", to(INVESTOR)),
        ];
        ev.workflows[1].error = Some(json!({"reason_code": "compliance_rejected"}));
        let v = valid_work(&ev);
        assert!(v.held, "{v:?}");
        assert_eq!(v.checked, "2 operations planned valid");
        // A compliant transfer refused by a compliance check answered from stale state.
        ev.workflows[0].status = "failed".into();
        ev.workflows[0].error = Some(
            json!({"reason_code": "compliance_rejected", "step": "compliance_check",
                                             "message": "canTransfer returned false"}),
        );
        let v = valid_work(&ev);
        assert_eq!(v.violation_count, 1, "{v:?}");
        assert!(
            v.violations[0].contains("op 0 (transfer key t), valid by the workload's rules, ended `failed` as workflow 1")
                && v.violations[0].contains("compliance_rejected at step compliance_check: canTransfer returned false"),
            "{}",
            v.violations[0]
        );
        // A workflow id now holding another key (lost after an async failover) is not this op's.
        ev.workflows[0].key = "other".into();
        assert!(valid_work(&ev).held);
    }
}
