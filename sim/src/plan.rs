//! The workload plan of one seed: which operation each client submits, and when.
//!
//! Issuances come first (each creates the token that later operations name by index); the rest
//! are spread uniformly over the submit window. The plan is a pure function of the scenario and
//! the seed, so a replay submits exactly the same requests at exactly the same times.

use crate::rng::SimRng;
use crate::scenario::Scenario;
use alloy_primitives::{address, Address};
use serde::Serialize;
use serde_json::{json, Value};

/// The investor every issuance registers; mints and transfers go to it.
pub const INVESTOR: Address = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
/// Initial supply of every token: large enough that planned transfers never exhaust it.
pub const INITIAL_SUPPLY: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    Issuance {
        token: u32,
    },
    Mint {
        token: u32,
        amount: u64,
    },
    Transfer {
        token: u32,
        amount: u64,
    },
    RegisterIdentity {
        token: u32,
        account: Address,
    },
    /// A transfer to an account without identity: compliance must block it.
    BlockedTransfer {
        token: u32,
        to: Address,
        amount: u64,
    },
    /// A mint to an account registered only later: dead-lettered (the token reverts), then
    /// completed once the cause is removed and an operator requeues it.
    UnverifiedMint {
        token: u32,
        to: Address,
        amount: u64,
    },
}

impl OpKind {
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Issuance { .. } => "issuance",
            OpKind::Mint { .. } => "mint",
            OpKind::Transfer { .. } => "transfer",
            OpKind::RegisterIdentity { .. } => "register_identity",
            OpKind::BlockedTransfer { .. } => "blocked_transfer",
            OpKind::UnverifiedMint { .. } => "unverified_mint",
        }
    }
    /// The engine's workflow kind.
    pub fn workflow_kind(&self) -> &'static str {
        match self {
            OpKind::BlockedTransfer { .. } => "transfer",
            OpKind::UnverifiedMint { .. } => "mint",
            k => k.name(),
        }
    }
    pub fn token(&self) -> u32 {
        match self {
            OpKind::Issuance { token }
            | OpKind::Mint { token, .. }
            | OpKind::Transfer { token, .. }
            | OpKind::RegisterIdentity { token, .. }
            | OpKind::BlockedTransfer { token, .. }
            | OpKind::UnverifiedMint { token, .. } => *token,
        }
    }
    /// The request body, given the token's address once its issuance finished, and the
    /// per-holder cap issuances ask for (`workload.max_balance`; 0: none).
    pub fn input(&self, token_addr: Option<Address>, max_balance: u64) -> Value {
        let t = token_addr.map(|a| format!("{a:#x}"));
        match self {
            OpKind::Issuance { token } => json!({
                "name": format!("Sim Bond {token}"), "symbol": format!("SB{token}"), "decimals": 18,
                "initial_supply": INITIAL_SUPPLY.to_string(), "max_balance": max_balance.to_string(),
                "investor": format!("{INVESTOR:#x}"), "country": 56,
            }),
            OpKind::Mint { amount, .. } | OpKind::Transfer { amount, .. } => {
                json!({"token": t, "to": format!("{INVESTOR:#x}"), "amount": amount.to_string()})
            }
            OpKind::RegisterIdentity { account, .. } => {
                json!({"token": t, "account": format!("{account:#x}"), "country": 250})
            }
            OpKind::BlockedTransfer { to, amount, .. }
            | OpKind::UnverifiedMint { to, amount, .. } => {
                json!({"token": t, "to": format!("{to:#x}"), "amount": amount.to_string()})
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedOp {
    pub index: u64,
    pub at_ms: u64,
    pub client: u32,
    pub key: String,
    pub kind: OpKind,
}

/// Accounts that get an identity (never the target of a blocked transfer).
pub fn registered_account(i: u64) -> Address {
    let mut b = [0u8; 20];
    b[0] = 0x1d;
    b[12..].copy_from_slice(&i.to_be_bytes());
    Address::from(b)
}

/// Accounts that get an identity only after a mint to them was attempted.
pub fn late_account(i: u64) -> Address {
    let mut b = [0u8; 20];
    b[0] = 0x1e;
    b[12..].copy_from_slice(&i.to_be_bytes());
    Address::from(b)
}

/// Accounts that never get an identity.
pub fn unregistered_account(i: u64) -> Address {
    let mut b = [0u8; 20];
    b[0] = 0xbb;
    b[12..].copy_from_slice(&i.to_be_bytes());
    Address::from(b)
}

pub fn plan(s: &Scenario, seed: u64) -> Vec<PlannedOp> {
    let mut rng = SimRng::new(seed).fork("workload");
    let w = &s.workload;
    let window_ms = (w.submit_window_s * 1000.0) as u64;
    let issue_end = (window_ms / 10).clamp(1, 5000);
    let mut ops = Vec::new();
    for t in 0..w.tokens {
        ops.push((rng.range(0, issue_end - 1), OpKind::Issuance { token: t }));
    }
    let m = &w.mix;
    let weights = [
        m.mint,
        m.transfer,
        m.register_identity,
        m.blocked_transfer,
        m.unverified_mint,
    ];
    for i in 0..w.operations as u64 {
        let at = rng.range(issue_end, window_ms.max(issue_end + 1) - 1);
        let token = rng.range(0, w.tokens as u64 - 1) as u32;
        let kind = match rng.weighted(&weights) {
            0 => OpKind::Mint {
                token,
                amount: rng.range(1, 1000),
            },
            1 => OpKind::Transfer {
                token,
                amount: rng.range(1, 100),
            },
            2 => OpKind::RegisterIdentity {
                token,
                account: registered_account(i),
            },
            3 => OpKind::BlockedTransfer {
                token,
                to: unregistered_account(i),
                amount: rng.range(1, 100),
            },
            _ => {
                let to = late_account(i);
                // The cause is removed 5 s later (at the latest at the end of the window).
                let fix_at = (at + 5000).min(window_ms.max(issue_end + 1) - 1);
                ops.push((fix_at, OpKind::RegisterIdentity { token, account: to }));
                OpKind::UnverifiedMint {
                    token,
                    to,
                    amount: rng.range(1, 1000),
                }
            }
        };
        ops.push((at, kind));
    }
    ops.sort_by_key(|(at, _)| *at);
    ops.into_iter()
        .enumerate()
        .map(|(i, (at_ms, kind))| PlannedOp {
            index: i as u64,
            at_ms,
            client: rng.range(0, w.clients as u64 - 1) as u32,
            key: format!("{}-{seed}-{i}", kind.name()),
            kind,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_a_function_of_the_seed_and_issuances_come_first() {
        let text = r#"
name = "p"
description = "d"
[topology]
engines = 1
rpc_endpoints = 1
[workload]
tokens = 2
operations = 30
submit_window_s = 60
[durations]
fault_phase_s = 60
liveness_bound_s = 60
"#;
        let s = Scenario::parse(text, "p.toml").unwrap();
        let a = plan(&s, 3);
        assert_eq!(a, plan(&s, 3));
        assert_ne!(a, plan(&s, 4));
        assert_eq!(a.len(), 32);
        assert!(a[..2]
            .iter()
            .all(|o| matches!(o.kind, OpKind::Issuance { .. })));
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let keys: std::collections::BTreeSet<_> = a.iter().map(|o| &o.key).collect();
        assert_eq!(keys.len(), a.len(), "keys are unique per planned op");
        assert!(a.iter().all(|o| o.at_ms < 60_000));
    }

    #[test]
    fn registered_and_unregistered_accounts_never_collide() {
        for i in 0..100 {
            assert_ne!(registered_account(i), unregistered_account(i));
            assert_ne!(registered_account(i), INVESTOR);
        }
    }
}
