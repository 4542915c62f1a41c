//! The world state of the simulated chain and its glue to revm (the EVM Anvil itself uses).
//!
//! State lives in ordered maps so that snapshots (kept per block for reorgs) clone cheaply and
//! nothing hash-ordered can reach an output. revm sees the state through [`DbView`], a read-only
//! `Database`; the changes of one execution are applied with [`WorldState::apply`].

use alloy_primitives::{Address, Bytes, Log, B256, U256};
use revm::bytecode::Bytecode;
use revm::context::result::{EVMError, ExecutionResult, InvalidTransaction, Output};
use revm::context::{BlockEnv, CfgEnv, Context, TxEnv};
use revm::context_interface::transaction::AccessList;
use revm::primitives::hardfork::SpecId;
use revm::primitives::{TxKind, KECCAK_EMPTY};
use revm::state::{AccountInfo, EvmState};
use revm::{Database, ExecuteEvm, MainBuilder, MainContext};
use std::collections::BTreeMap;
use std::convert::Infallible;

/// Anvil 1.x runs the latest hardfork (Osaka) with the EIP-7825 per-transaction gas cap disabled.
pub(crate) const SPEC: SpecId = SpecId::OSAKA;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Account {
    pub balance: U256,
    pub nonce: u64,
    pub code_hash: Option<B256>,
    pub storage: BTreeMap<U256, U256>,
}

/// Accounts, storage and code: everything a block changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorldState {
    pub accounts: BTreeMap<Address, Account>,
    pub codes: BTreeMap<B256, Bytecode>,
}

impl WorldState {
    pub fn balance(&self, who: Address) -> U256 {
        self.accounts.get(&who).map_or(U256::ZERO, |a| a.balance)
    }

    pub fn nonce(&self, who: Address) -> u64 {
        self.accounts.get(&who).map_or(0, |a| a.nonce)
    }

    pub fn code(&self, who: Address) -> Bytes {
        self.accounts
            .get(&who)
            .and_then(|a| a.code_hash)
            .and_then(|h| self.codes.get(&h))
            .map(|c| c.original_bytes())
            .unwrap_or_default()
    }

    pub fn set_balance(&mut self, who: Address, amount: U256) {
        self.accounts.entry(who).or_default().balance = amount;
    }

    pub fn set_storage(&mut self, at: Address, slot: U256, value: U256) {
        let storage = &mut self.accounts.entry(at).or_default().storage;
        if value.is_zero() {
            storage.remove(&slot);
        } else {
            storage.insert(slot, value);
        }
    }

    /// Apply the state changes of one execution (revm's journal output).
    pub fn apply(&mut self, changes: EvmState) {
        // `changes` is a hash map, but every account is applied independently into ordered maps,
        // so its iteration order cannot reach any output.
        for (addr, acc) in changes {
            if !acc.is_touched() {
                continue;
            }
            if acc.is_selfdestructed() {
                self.accounts.remove(&addr);
                continue;
            }
            let created = acc.is_created();
            let entry = self.accounts.entry(addr).or_default();
            if created {
                entry.storage.clear();
            }
            entry.balance = acc.info.balance;
            entry.nonce = acc.info.nonce;
            if acc.info.code_hash != KECCAK_EMPTY {
                entry.code_hash = Some(acc.info.code_hash);
                if let Some(code) = acc.info.code {
                    self.codes.entry(acc.info.code_hash).or_insert(code);
                }
            }
            for (k, slot) in acc.storage {
                if !slot.is_changed() && !created {
                    continue;
                }
                let v = slot.present_value();
                if v.is_zero() {
                    entry.storage.remove(&k);
                } else {
                    entry.storage.insert(k, v);
                }
            }
        }
    }
}

/// revm's view of a [`WorldState`] plus the canonical block hashes (for `BLOCKHASH`).
pub(crate) struct DbView<'a> {
    pub state: &'a WorldState,
    pub hashes: &'a [B256],
}

impl Database for DbView<'_> {
    type Error = Infallible;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, Infallible> {
        Ok(self.state.accounts.get(&address).map(|a| {
            let (hash, code) = match a
                .code_hash
                .and_then(|h| self.state.codes.get(&h).map(|c| (h, c)))
            {
                Some((h, c)) => (h, c.clone()),
                None => (KECCAK_EMPTY, Bytecode::default()),
            };
            AccountInfo::new(a.balance, a.nonce, hash, code)
        }))
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, Infallible> {
        Ok(self
            .state
            .codes
            .get(&code_hash)
            .cloned()
            .unwrap_or_default())
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, Infallible> {
        Ok(self
            .state
            .accounts
            .get(&address)
            .and_then(|a| a.storage.get(&index).copied())
            .unwrap_or_default())
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, Infallible> {
        Ok(self
            .hashes
            .get(number as usize)
            .copied()
            .unwrap_or_default())
    }
}

/// The block a transaction or call executes in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockCtx {
    pub number: u64,
    pub timestamp: u64,
    pub base_fee: u128,
    pub gas_limit: u64,
    pub prevrandao: B256,
}

/// A transaction as revm needs it.
#[derive(Clone, Debug)]
pub(crate) struct ExecTx {
    pub tx_type: u8,
    pub caller: Address,
    pub gas_limit: u64,
    /// max fee per gas (EIP-1559) or gas price (legacy).
    pub gas_price: u128,
    pub priority_fee: Option<u128>,
    pub to: Option<Address>,
    pub value: U256,
    pub data: Bytes,
    pub nonce: u64,
    pub chain_id: Option<u64>,
    pub access_list: AccessList,
}

/// What one execution produced.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub success: bool,
    /// Revert data or return data.
    pub output: Bytes,
    pub created: Option<Address>,
    pub gas_used: u64,
    pub logs: Vec<Log>,
    /// A halt (out of gas, invalid opcode, …) rather than a `REVERT`.
    pub halted: Option<String>,
}

/// Options of a read-only call (`eth_call`): no fee charged, no nonce check.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallMode {
    pub read_only: bool,
}

/// Execute one transaction on `state`; returns the outcome and the state changes (not applied).
/// `Err` is a transaction-validity error (the transaction cannot be included at all).
pub(crate) fn execute(
    state: &WorldState,
    hashes: &[B256],
    chain_id: u64,
    block: BlockCtx,
    tx: &ExecTx,
    mode: CallMode,
) -> Result<(Outcome, EvmState), InvalidTransaction> {
    let mut cfg = CfgEnv::new_with_spec(SPEC);
    cfg.chain_id = chain_id;
    cfg.tx_gas_limit_cap = Some(u64::MAX);
    if mode.read_only {
        // Gas price 0 and base fee 0 (below): nothing is charged, no fee check applies.
        cfg.disable_nonce_check = true;
    }
    let block_env = BlockEnv {
        number: U256::from(block.number),
        timestamp: U256::from(block.timestamp),
        gas_limit: block.gas_limit,
        basefee: if mode.read_only {
            0
        } else {
            u64::try_from(block.base_fee).unwrap_or(u64::MAX)
        },
        prevrandao: Some(block.prevrandao),
        ..Default::default()
    };
    let tx_env = TxEnv {
        tx_type: tx.tx_type,
        caller: tx.caller,
        gas_limit: tx.gas_limit,
        gas_price: if mode.read_only { 0 } else { tx.gas_price },
        kind: match tx.to {
            Some(a) => TxKind::Call(a),
            None => TxKind::Create,
        },
        value: tx.value,
        data: tx.data.clone(),
        nonce: tx.nonce,
        chain_id: tx.chain_id,
        access_list: tx.access_list.clone(),
        gas_priority_fee: if mode.read_only {
            None
        } else {
            tx.priority_fee
        },
        ..Default::default()
    };
    let db = DbView { state, hashes };
    let ctx = Context::mainnet()
        .with_db(db)
        .with_cfg(cfg)
        .with_block(block_env);
    let mut evm = ctx.build_mainnet();
    let res = match evm.transact(tx_env) {
        Ok(r) => r,
        Err(EVMError::Transaction(e)) => return Err(e),
        Err(e) => unreachable!("the in-memory database cannot fail: {e:?}"),
    };
    let gas_used = res.result.tx_gas_used();
    let outcome = match res.result {
        ExecutionResult::Success { logs, output, .. } => {
            let (out, created) = match output {
                Output::Call(b) => (b, None),
                Output::Create(b, a) => (b, a),
            };
            Outcome {
                success: true,
                output: out,
                created,
                gas_used,
                logs,
                halted: None,
            }
        }
        ExecutionResult::Revert { output, .. } => Outcome {
            success: false,
            output,
            created: None,
            gas_used,
            logs: Vec::new(),
            halted: None,
        },
        ExecutionResult::Halt { reason, .. } => Outcome {
            success: false,
            output: Bytes::new(),
            created: None,
            gas_used,
            logs: Vec::new(),
            halted: Some(format!("{reason:?}")),
        },
    };
    Ok((outcome, res.state))
}
