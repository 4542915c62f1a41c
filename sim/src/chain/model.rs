//! The pure chain model: accounts, a mempool, blocks with an EIP-1559 base fee, receipts, logs,
//! reorgs and dropped transactions — one EVM chain, answering like Anvil.
//!
//! Pure on purpose: no runtime, no I/O, no clock, no randomness. Time comes in as `now_ms`; the
//! simulated node around it decides when to mine and when to inject faults, so the same calls give
//! the same chain byte for byte. Only ordered maps hold anything whose order can reach an output.

use super::evm::{self, BlockCtx, CallMode, ExecTx, WorldState};
use alloy_primitives::{keccak256, Address, Bloom, Bytes, B256, U256};
use revm::context_interface::transaction::AccessList;
use std::collections::{BTreeMap, VecDeque};

pub const GWEI: u128 = 1_000_000_000;
/// Anvil's smallest suggested priority fee (`eth_maxPriorityFeePerGas` on an empty head block;
/// otherwise the head block's lowest tip, if higher).
pub const DEFAULT_PRIORITY_FEE: u128 = GWEI;
/// The smallest gas limit a transaction may carry (Anvil's pool check).
pub const MIN_TRANSACTION_GAS: u64 = 21_000;
/// How many past block states are kept: bounds reorg depth and how far a lagging view can look.
pub const SNAPSHOTS_KEPT: u64 = 256;

/// Which node's mempool rules to follow. Anvil is the default because the production flavour runs
/// against Anvil; Geth's rules are there for scenarios that want a stricter pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoolPolicy {
    /// A replacement needs a strictly higher max fee (any amount), whether the original is ready
    /// or queued; at mining, a transaction that became invalid (max fee
    /// below the base fee, funds too low) is dropped from the pool with its ready successors.
    #[default]
    Anvil,
    /// A replacement needs a 10% bump of both the max fee and the priority fee; a transaction
    /// priced below the base fee stays pending until the base fee falls or it is replaced.
    Geth,
}

/// The chain's fixed parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainParams {
    pub chain_id: u64,
    /// The caller's mining interval; informational for the model (it mines when told).
    pub block_time_ms: u64,
    /// `finalized` = head − this (saturating); `safe` = head − half of it.
    pub finality_depth: u64,
    pub initial_base_fee: u128,
    pub block_gas_limit: u64,
    /// Funded accounts at genesis.
    pub genesis: Vec<(Address, U256)>,
    pub pool_policy: PoolPolicy,
}

impl ChainParams {
    /// Anvil's defaults (chain 31337, 1 gwei base fee, 30M gas, 64-block finality) with the given
    /// funded accounts.
    pub fn anvil(genesis: Vec<(Address, U256)>) -> Self {
        ChainParams {
            chain_id: 31337,
            block_time_ms: 1000,
            finality_depth: 64,
            initial_base_fee: GWEI,
            block_gas_limit: 30_000_000,
            genesis,
            pool_policy: PoolPolicy::Anvil,
        }
    }
}

/// A transaction known to the node, pending or mined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeTx {
    pub hash: B256,
    pub from: Address,
    pub nonce: u64,
    pub tx_type: u8,
    pub chain_id: Option<u64>,
    pub gas_limit: u64,
    /// Max fee per gas (type 2) or gas price (legacy / type 1): Anvil's "gas price" of a pool tx.
    pub max_fee: u128,
    pub priority_fee: Option<u128>,
    pub to: Option<Address>,
    pub value: U256,
    pub input: Bytes,
    pub access_list: AccessList,
    /// (r, s, y parity); `None` for an impersonated transaction.
    pub sig: Option<(U256, U256, bool)>,
    /// Arrival order in the pool: Anvil's tie-break between equal fees.
    pub seq: u64,
}

impl NodeTx {
    pub fn exec(&self) -> ExecTx {
        ExecTx {
            tx_type: self.tx_type,
            caller: self.from,
            gas_limit: self.gas_limit,
            gas_price: self.max_fee,
            priority_fee: self.priority_fee,
            to: self.to,
            value: self.value,
            data: self.input.clone(),
            nonce: self.nonce,
            chain_id: self.chain_id,
            access_list: self.access_list.clone(),
        }
    }

    pub fn effective_gas_price(&self, base_fee: u128) -> u128 {
        match self.priority_fee {
            Some(p) => self.max_fee.min(base_fee.saturating_add(p)),
            None => self.max_fee,
        }
    }

    fn max_cost(&self) -> Option<U256> {
        U256::from(self.gas_limit)
            .checked_mul(U256::from(self.max_fee))?
            .checked_add(self.value)
    }
}

/// Why the pool or the miner refuses a transaction; each maps to Anvil's code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxReject {
    InvalidChainId,
    IncompatibleEip155,
    GasTooLow,
    GasTooHigh,
    NonceTooLow,
    FeeCapTooLow,
    TipAboveFeeCap,
    InsufficientFunds,
    AlreadyImported,
    ReplacementUnderpriced,
    /// revm refused the transaction at execution (message as revm gives it).
    Evm(String),
}

impl TxReject {
    /// Anvil's JSON-RPC error code and message for this rejection.
    pub fn rpc(&self) -> (i64, String) {
        match self {
            TxReject::InvalidChainId => (-32003, "invalid chain id for signer".into()),
            TxReject::IncompatibleEip155 => (
                -32003,
                "Incompatible EIP-155 transaction, signed for another chain".into(),
            ),
            TxReject::GasTooLow => (-32000, "intrinsic gas too low".into()),
            TxReject::GasTooHigh => (
                -32000,
                "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit".into(),
            ),
            TxReject::NonceTooLow => (-32003, "nonce too low".into()),
            TxReject::FeeCapTooLow => (-32003, "max fee per gas less than block base fee".into()),
            TxReject::TipAboveFeeCap => (
                -32003,
                "max priority fee per gas higher than max fee per gas".into(),
            ),
            TxReject::InsufficientFunds => {
                (-32003, "Insufficient funds for gas * price + value".into())
            }
            TxReject::AlreadyImported => (-32003, "transaction already imported".into()),
            TxReject::ReplacementUnderpriced => {
                (-32003, "replacement transaction underpriced".into())
            }
            TxReject::Evm(m) => (-32003, m.clone()),
        }
    }
}

/// One event log as stored in a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRec {
    pub address: Address,
    pub topics: Vec<B256>,
    pub data: Bytes,
    /// Index within the block (what `logIndex` reports).
    pub log_index: u64,
}

/// A transaction as included in a block, with its receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Included {
    pub tx: NodeTx,
    pub index: u64,
    pub success: bool,
    pub gas_used: u64,
    pub cumulative_gas_used: u64,
    pub effective_gas_price: u128,
    pub contract_address: Option<Address>,
    pub logs: Vec<LogRec>,
    /// The logs' bloom filter, computed once at inclusion: every receipt and block query
    /// reports it, and hashing the logs again per query was a hot path.
    pub bloom: Bloom,
}

/// The bloom filter of `logs` (addresses and topics), as a receipt reports it.
pub(crate) fn bloom_of<'a>(logs: impl IntoIterator<Item = &'a LogRec>) -> Bloom {
    let mut bloom = Bloom::default();
    for l in logs {
        bloom.accrue_raw_log(l.address, &l.topics);
    }
    bloom
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub number: u64,
    pub hash: B256,
    pub parent_hash: B256,
    /// Seconds, as the chain reports it.
    pub timestamp: u64,
    pub base_fee: u128,
    pub gas_limit: u64,
    pub gas_used: u64,
    pub prevrandao: B256,
    pub txs: Vec<Included>,
}

impl Block {
    pub fn ctx(&self) -> BlockCtx {
        BlockCtx {
            number: self.number,
            timestamp: self.timestamp,
            base_fee: self.base_fee,
            gas_limit: self.gas_limit,
            prevrandao: self.prevrandao,
        }
    }
}

/// A canonical transaction, for invariant checkers: the chain's own truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinedTx {
    pub hash: B256,
    pub from: Address,
    pub nonce: u64,
    /// `None` for a contract creation.
    pub to: Option<Address>,
    pub contract_address: Option<Address>,
    pub input: Bytes,
    pub value: U256,
    pub success: bool,
    pub gas_used: u64,
    pub block_number: u64,
    pub block_hash: B256,
    pub logs: Vec<LogRec>,
    /// Injected by [`ChainModel::external_use_nonce`] rather than sent signed.
    pub impersonated: bool,
}

/// What [`ChainModel::mine_block`] did, for the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinedBlockSummary {
    pub number: u64,
    pub hash: B256,
    pub base_fee: u128,
    pub gas_used: u64,
    pub included: Vec<B256>,
    /// Transactions found invalid at inclusion time and dropped from the pool, with the reason.
    pub dropped: Vec<(B256, String)>,
}

/// What [`ChainModel::reorg`] did, for the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReorgSummary {
    pub old_head: u64,
    pub common_ancestor: u64,
    pub removed_blocks: Vec<(u64, B256)>,
    /// Transactions of the removed blocks that went back to the pool.
    pub reinjected: Vec<B256>,
    /// Transactions of the removed blocks that were dropped.
    pub dropped: Vec<B256>,
    pub mined: Vec<MinedBlockSummary>,
}

/// One simulated EVM chain. See the module docs.
#[derive(Clone, Debug)]
pub struct ChainModel {
    pub(crate) params: ChainParams,
    pub(crate) blocks: Vec<Block>,
    /// State at the head.
    pub(crate) state: WorldState,
    /// State after each of the last [`SNAPSHOTS_KEPT`] blocks (and genesis), for reorgs and lag.
    snapshots: BTreeMap<u64, WorldState>,
    /// Every pool transaction (ready and queued) by hash.
    pub(crate) pool: BTreeMap<B256, NodeTx>,
    /// Pool transactions per sender and nonce: at most one per (sender, nonce).
    pub(crate) by_sender: BTreeMap<Address, BTreeMap<u64, B256>>,
    /// Canonical transactions: hash → (block number, index in block).
    pub(crate) tx_index: BTreeMap<B256, (u64, usize)>,
    next_seq: u64,
    /// The recovered sender of every signed transaction decoded so far, by hash (a cache: see
    /// `decode_raw`).
    pub(crate) senders: BTreeMap<B256, Address>,
    /// Receipts and blocks as JSON text, by block hash: a cache (see `kept_text`).
    pub(crate) kept: BTreeMap<(B256, crate::chain::rpc::Kept), Box<str>>,
    /// Bumped by every reorg so re-mined heights get new hashes.
    salt: u64,
    /// Every block mined, in order, orphaned ones included (the `finality` checker's evidence).
    pub(crate) history: Vec<crate::check::finality::MinedBlock>,
    next_base_fee_override: Option<u128>,
}

impl ChainModel {
    pub fn new(params: ChainParams, genesis_time_ms: u64) -> Self {
        let mut state = WorldState::default();
        for (who, amount) in &params.genesis {
            state.set_balance(*who, *amount);
        }
        let mut seed = b"dalp-sim genesis".to_vec();
        seed.extend(params.chain_id.to_be_bytes());
        seed.extend(genesis_time_ms.to_be_bytes());
        let genesis = Block {
            number: 0,
            hash: keccak256(&seed),
            parent_hash: B256::ZERO,
            timestamp: genesis_time_ms / 1000,
            base_fee: params.initial_base_fee,
            gas_limit: params.block_gas_limit,
            gas_used: 0,
            prevrandao: B256::ZERO,
            txs: Vec::new(),
        };
        let mut snapshots = BTreeMap::new();
        snapshots.insert(0, state.clone());
        let history = vec![crate::check::finality::MinedBlock {
            t_ms: genesis_time_ms,
            number: 0,
            hash: genesis.hash,
            parent: genesis.parent_hash,
        }];
        ChainModel {
            params,
            blocks: vec![genesis],
            state,
            snapshots,
            pool: BTreeMap::new(),
            by_sender: BTreeMap::new(),
            tx_index: BTreeMap::new(),
            next_seq: 0,
            senders: BTreeMap::new(),
            kept: BTreeMap::new(),
            salt: 0,
            next_base_fee_override: None,
            history,
        }
    }

    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    // ---- inspection ------------------------------------------------------------------------

    pub fn head(&self) -> u64 {
        self.blocks.len() as u64 - 1
    }

    pub fn finalized(&self) -> u64 {
        self.head().saturating_sub(self.params.finality_depth)
    }

    pub fn block_hash(&self, number: u64) -> Option<B256> {
        self.blocks.get(number as usize).map(|b| b.hash)
    }

    /// The base fee the next block will have (an override from [`Self::set_next_base_fee`] wins).
    pub fn next_base_fee(&self) -> u128 {
        self.next_base_fee_override
            .unwrap_or_else(|| next_base_fee(self.blocks.last().expect("genesis")))
    }

    /// The base fee set for the next block (`anvil_setNextBlockBaseFeePerGas`, or carried over a
    /// rollback), if any.
    pub fn base_fee_override(&self) -> Option<u128> {
        self.next_base_fee_override
    }

    /// The EIP-1559 base fee of a child of canonical block `number` (no override applied).
    pub fn base_fee_after(&self, number: u64) -> Option<u128> {
        self.blocks.get(number as usize).map(next_base_fee)
    }

    /// Every transaction in canonical blocks, in chain order.
    pub fn canonical_txs(&self) -> Vec<MinedTx> {
        self.blocks
            .iter()
            .flat_map(|b| {
                b.txs.iter().map(move |i| MinedTx {
                    hash: i.tx.hash,
                    from: i.tx.from,
                    nonce: i.tx.nonce,
                    to: i.tx.to,
                    contract_address: i.contract_address,
                    input: i.tx.input.clone(),
                    value: i.tx.value,
                    success: i.success,
                    gas_used: i.gas_used,
                    block_number: b.number,
                    block_hash: b.hash,
                    logs: i.logs.clone(),
                    impersonated: i.tx.sig.is_none(),
                })
            })
            .collect()
    }

    /// Transactions in the pool, ready and queued.
    pub fn pending_count(&self) -> usize {
        self.pool.len()
    }

    pub fn is_pending(&self, hash: B256) -> bool {
        self.pool.contains_key(&hash)
    }

    /// The nonce at the head (what `eth_getTransactionCount(.., "latest")` says).
    pub fn nonce_of(&self, who: Address) -> u64 {
        self.state.nonce(who)
    }

    /// The head nonce plus the sender's ready pool transactions (`"pending"`).
    pub fn pending_nonce_of(&self, who: Address) -> u64 {
        self.state.nonce(who) + self.ready_chain(who).len() as u64
    }

    pub fn balance_of(&self, who: Address) -> U256 {
        self.state.balance(who)
    }

    pub fn code_of(&self, who: Address) -> Bytes {
        self.state.code(who)
    }

    /// A read-only call at the head. `Err` carries Anvil's message (`execution reverted: …`).
    pub fn call(&mut self, from: Address, to: Address, data: &[u8]) -> Result<Bytes, String> {
        let head = self.head();
        match self.run_call(
            head,
            from,
            Some(to),
            Bytes::copy_from_slice(data),
            U256::ZERO,
            None,
        ) {
            Ok(o) if o.success => Ok(o.output),
            Ok(o) => Err(revert_message(&o)),
            Err(r) => Err(r.rpc().1),
        }
    }

    /// State after block `number` (the nearest kept snapshot at or below it if it was pruned).
    pub(crate) fn state_at(&self, number: u64) -> &WorldState {
        if number >= self.head() {
            return &self.state;
        }
        self.snapshots
            .range(..=number)
            .next_back()
            .or_else(|| self.snapshots.iter().next())
            .map(|(_, s)| s)
            .expect("genesis snapshot")
    }

    pub(crate) fn hashes(&self) -> Vec<B256> {
        self.blocks.iter().map(|b| b.hash).collect()
    }

    /// Execute a read-only call on top of block `at`.
    pub(crate) fn run_call(
        &self,
        at: u64,
        from: Address,
        to: Option<Address>,
        data: Bytes,
        value: U256,
        gas: Option<u64>,
    ) -> Result<evm::Outcome, TxReject> {
        let block = &self.blocks[at.min(self.head()) as usize];
        // Legacy-typed with gas price 0: no chain id needed, nothing charged.
        let tx = ExecTx {
            tx_type: 0,
            caller: from,
            gas_limit: gas.unwrap_or(self.params.block_gas_limit),
            gas_price: 0,
            priority_fee: None,
            to,
            value,
            data,
            nonce: 0,
            chain_id: None,
            access_list: AccessList::default(),
        };
        let hashes = self.hashes();
        evm::execute(
            self.state_at(at),
            &hashes,
            self.params.chain_id,
            block.ctx(),
            &tx,
            CallMode { read_only: true },
        )
        .map(|(o, _)| o)
        .map_err(|e| match e {
            revm::context::result::InvalidTransaction::CallGasCostMoreThanGasLimit { .. }
            | revm::context::result::InvalidTransaction::GasFloorMoreThanGasLimit { .. } => {
                TxReject::Evm("intrinsic gas too high -- CallGasCostMoreThanGasLimit".into())
            }
            other => TxReject::Evm(other.to_string()),
        })
    }

    // ---- the pool ----------------------------------------------------------------------------

    /// The sender's pool transactions with consecutive nonces from its head nonce: what can be
    /// mined next. Everything else the sender has in the pool is queued behind a gap.
    fn ready_chain(&self, who: Address) -> Vec<B256> {
        let mut out = Vec::new();
        let Some(txs) = self.by_sender.get(&who) else {
            return out;
        };
        let mut n = self.state.nonce(who);
        while let Some(h) = txs.get(&n) {
            out.push(*h);
            n += 1;
        }
        out
    }

    fn is_ready(&self, tx: &NodeTx) -> bool {
        let n = self.state.nonce(tx.from);
        tx.nonce >= n && tx.nonce < self.pending_nonce_of(tx.from)
    }

    fn pool_insert(&mut self, tx: NodeTx) {
        self.by_sender
            .entry(tx.from)
            .or_default()
            .insert(tx.nonce, tx.hash);
        self.pool.insert(tx.hash, tx);
    }

    fn pool_remove(&mut self, hash: B256) -> Option<NodeTx> {
        let tx = self.pool.remove(&hash)?;
        if let Some(m) = self.by_sender.get_mut(&tx.from) {
            if m.get(&tx.nonce) == Some(&hash) {
                m.remove(&tx.nonce);
            }
            if m.is_empty() {
                self.by_sender.remove(&tx.from);
            }
        }
        Some(tx)
    }

    /// Remove `hash` and, when it is ready, the sender's ready transactions after it (Anvil drops
    /// the transactions a removed one unlocks). Returns what was removed, `hash` first.
    fn pool_remove_cascade(&mut self, hash: B256) -> Vec<B256> {
        let Some(tx) = self.pool.get(&hash).cloned() else {
            return Vec::new();
        };
        let mut removed = vec![hash];
        if self.is_ready(&tx) {
            let chain = self.ready_chain(tx.from);
            removed.extend(
                chain
                    .into_iter()
                    .filter(|h| self.pool.get(h).is_some_and(|t| t.nonce > tx.nonce)),
            );
        }
        for h in &removed {
            self.pool_remove(*h);
        }
        removed
    }

    fn validate(&self, tx: &NodeTx, state: &WorldState, base_fee: u128) -> Result<(), TxReject> {
        if let Some(id) = tx.chain_id {
            if id != self.params.chain_id {
                return Err(if tx.tx_type == 0 {
                    TxReject::IncompatibleEip155
                } else {
                    TxReject::InvalidChainId
                });
            }
        }
        // Anvil 1.7.1 checks the nonce before the gas limit.
        if tx.nonce < state.nonce(tx.from) {
            return Err(TxReject::NonceTooLow);
        }
        if tx.gas_limit < MIN_TRANSACTION_GAS {
            return Err(TxReject::GasTooLow);
        }
        if tx.gas_limit > self.params.block_gas_limit {
            return Err(TxReject::GasTooHigh);
        }
        if tx.max_fee < base_fee {
            return Err(TxReject::FeeCapTooLow);
        }
        if tx.priority_fee.is_some_and(|p| p > tx.max_fee) {
            return Err(TxReject::TipAboveFeeCap);
        }
        match tx.max_cost() {
            Some(cost) if cost <= state.balance(tx.from) => Ok(()),
            _ => Err(TxReject::InsufficientFunds),
        }
    }

    /// Admit a decoded transaction to the pool (`eth_sendRawTransaction` after decoding).
    pub(crate) fn submit(&mut self, mut tx: NodeTx) -> Result<B256, TxReject> {
        self.validate(&tx, &self.state, self.next_base_fee())?;
        if self.pool.contains_key(&tx.hash) {
            return Err(TxReject::AlreadyImported);
        }
        let (from, nonce) = (tx.from, tx.nonce);
        let was_pending = self.pending_nonce_of(from);
        let existing = self
            .by_sender
            .get(&tx.from)
            .and_then(|m| m.get(&tx.nonce))
            .and_then(|h| self.pool.get(h))
            .cloned();
        if let Some(old) = existing {
            let ok = match self.params.pool_policy {
                // Ready or queued alike (Anvil 1.7.1 refuses an equal fee for a queued one too).
                PoolPolicy::Anvil => tx.max_fee > old.max_fee,
                PoolPolicy::Geth => {
                    let bumped = |new: u128, old: u128| new * 100 >= old * 110;
                    bumped(tx.max_fee, old.max_fee)
                        && bumped(
                            tx.priority_fee.unwrap_or(tx.max_fee),
                            old.priority_fee.unwrap_or(old.max_fee),
                        )
                }
            };
            if !ok {
                return Err(TxReject::ReplacementUnderpriced);
            }
            self.pool_remove(old.hash);
        }
        tx.seq = self.take_seq();
        let hash = tx.hash;
        self.pool_insert(tx);
        // Anvil numbers a transaction when it becomes ready (the tie-break between equal fees):
        // queued ones this one unlocks are numbered now, right after it, in nonce order.
        for n in (nonce + 1).max(was_pending)..self.pending_nonce_of(from) {
            let h = self.by_sender[&from][&n];
            let seq = self.take_seq();
            self.pool.get_mut(&h).expect("pool tx").seq = seq;
        }
        Ok(hash)
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    // ---- mining ------------------------------------------------------------------------------

    /// Mine the next block now: base fee from the parent (or the override), then the ready
    /// transactions in Anvil's order — the highest max fee first among each sender's next nonce,
    /// earlier arrival on a tie — up to the gas limit, executed with revm.
    pub fn mine_block(&mut self, now_ms: u64) -> MinedBlockSummary {
        let parent = self.blocks.last().expect("genesis").clone();
        let base_fee = self
            .next_base_fee_override
            .take()
            .unwrap_or_else(|| next_base_fee(&parent));
        let number = parent.number + 1;
        let timestamp = (now_ms / 1000).max(parent.timestamp + 1);
        let mut seed = number.to_be_bytes().to_vec();
        seed.extend(self.salt.to_be_bytes());
        seed.extend(b"prevrandao");
        let mut block = Block {
            number,
            hash: B256::ZERO,
            parent_hash: parent.hash,
            timestamp,
            base_fee,
            gas_limit: self.params.block_gas_limit,
            gas_used: 0,
            prevrandao: keccak256(&seed),
            txs: Vec::new(),
        };
        let hashes = self.hashes();
        let mut queues: BTreeMap<Address, VecDeque<B256>> = BTreeMap::new();
        for who in self.by_sender.keys() {
            let chain = self.ready_chain(*who);
            if !chain.is_empty() {
                queues.insert(*who, chain.into());
            }
        }
        let mut dropped = Vec::new();
        let mut log_index = 0u64;
        loop {
            // The best head across senders: highest max fee, then earliest arrival.
            let best = queues
                .iter()
                .filter_map(|(who, q)| q.front().map(|h| (*who, &self.pool[h])))
                .max_by(|(_, a), (_, b)| a.max_fee.cmp(&b.max_fee).then(b.seq.cmp(&a.seq)))
                .map(|(who, tx)| (who, tx.clone()));
            let Some((who, tx)) = best else { break };
            queues.get_mut(&who).expect("queue").pop_front();
            if block.gas_used.saturating_add(tx.gas_limit) > block.gas_limit {
                // Does not fit: the sender's later nonces cannot go before it; next block.
                queues.remove(&who);
                continue;
            }
            let verdict = self.validate(&tx, &self.state, base_fee).and_then(|()| {
                evm::execute(
                    &self.state,
                    &hashes,
                    self.params.chain_id,
                    block.ctx(),
                    &tx.exec(),
                    CallMode::default(),
                )
                .map_err(|e| TxReject::Evm(e.to_string()))
            });
            let (outcome, changes) = match verdict {
                Ok(v) => v,
                Err(reason) => {
                    queues.remove(&who);
                    let keep = self.params.pool_policy == PoolPolicy::Geth
                        && matches!(reason, TxReject::FeeCapTooLow | TxReject::InsufficientFunds);
                    if !keep {
                        let msg = reason.rpc().1;
                        for h in self.pool_remove_cascade(tx.hash) {
                            dropped.push((h, msg.clone()));
                        }
                    }
                    continue;
                }
            };
            self.state.apply(changes);
            self.pool_remove(tx.hash);
            block.gas_used += outcome.gas_used;
            let logs = outcome
                .logs
                .iter()
                .map(|l| {
                    let rec = LogRec {
                        address: l.address,
                        topics: l.data.topics().to_vec(),
                        data: l.data.data.clone(),
                        log_index,
                    };
                    log_index += 1;
                    rec
                })
                .collect::<Vec<_>>();
            block.txs.push(Included {
                bloom: bloom_of(&logs),
                index: block.txs.len() as u64,
                success: outcome.success,
                gas_used: outcome.gas_used,
                cumulative_gas_used: block.gas_used,
                effective_gas_price: tx.effective_gas_price(base_fee),
                contract_address: if outcome.success {
                    outcome.created
                } else {
                    None
                },
                logs,
                tx,
            });
        }
        // Anything left in the pool below its sender's nonce can never be mined.
        let stale: Vec<B256> = self
            .pool
            .values()
            .filter(|t| t.nonce < self.state.nonce(t.from))
            .map(|t| t.hash)
            .collect();
        for h in stale {
            self.pool_remove(h);
            dropped.push((h, TxReject::NonceTooLow.rpc().1));
        }
        block.hash = block_hash(&block, self.salt);
        for (i, inc) in block.txs.iter().enumerate() {
            self.tx_index.insert(inc.tx.hash, (number, i));
        }
        let summary = MinedBlockSummary {
            number,
            hash: block.hash,
            base_fee,
            gas_used: block.gas_used,
            included: block.txs.iter().map(|i| i.tx.hash).collect(),
            dropped,
        };
        self.history.push(crate::check::finality::MinedBlock {
            t_ms: now_ms,
            number,
            hash: block.hash,
            parent: block.parent_hash,
        });
        self.blocks.push(block);
        self.assert_head_consistent();
        self.snapshots.insert(number, self.state.clone());
        if number > SNAPSHOTS_KEPT {
            let cut = number - SNAPSHOTS_KEPT;
            self.snapshots = self.snapshots.split_off(&cut);
        }
        summary
    }

    /// The chain model's own invariants, checked on every block it produces (TigerBeetle's state
    /// checker): the head extends its parent (number and parent hash), and each sender's
    /// transactions in it carry the nonces that follow the parent state's, densely, ending at the
    /// head state's. A violation is a bug of the model, not of the engine: it stops the run
    /// naming the block, never a verdict.
    pub(crate) fn assert_head_consistent(&self) {
        let n = self.blocks.len();
        assert!(
            n >= 2,
            "chain model invariant violated: no parent for the head"
        );
        let (parent, head) = (&self.blocks[n - 2], &self.blocks[n - 1]);
        assert!(
            head.number == parent.number + 1 && head.parent_hash == parent.hash,
            "chain model invariant violated: block {} ({}) does not extend block {} ({}): parent hash {}",
            head.number,
            head.hash,
            parent.number,
            parent.hash,
            head.parent_hash
        );
        let before = self.snapshots.get(&parent.number);
        let mut next: BTreeMap<Address, u64> = BTreeMap::new();
        for inc in &head.txs {
            let from = inc.tx.from;
            let expected = *next
                .entry(from)
                .or_insert_with(|| before.map_or(inc.tx.nonce, |st| st.nonce(from)));
            assert_eq!(
                inc.tx.nonce, expected,
                "chain model invariant violated: block {} includes {} from {from} with nonce {}, expected {expected} (canonical nonces per sender must be dense)",
                head.number, inc.tx.hash, inc.tx.nonce
            );
            next.insert(from, expected + 1);
        }
        for (from, after) in next {
            assert_eq!(
                self.state.nonce(from),
                after,
                "chain model invariant violated: after block {} the state's nonce of {from} is {}, its transactions end at {}",
                head.number,
                self.state.nonce(from),
                after - 1
            );
        }
    }

    // ---- faults ------------------------------------------------------------------------------

    /// Remove the last `depth` blocks (never genesis; at most what snapshots allow), restore the
    /// state of the new head, put their transactions back in the pool (or drop them), then mine
    /// `depth + 1` replacement blocks: the canonical chain gets longer and differs in hash. In
    /// Anvil's terms: `anvil_rollback(depth)`, the removed transactions sent again in chain order
    /// (unless dropped), `depth + 1` blocks mined — what the conformance tests compare it with.
    pub fn reorg(&mut self, depth: u64, drop_txs: bool, now_ms: u64) -> ReorgSummary {
        let old_head = self.head();
        let (ancestor, removed) = self.unwind(depth);
        let depth = old_head - ancestor;
        let mut reinjected = Vec::new();
        let mut dropped = Vec::new();
        let base_fee = self.next_base_fee();
        for inc in removed.iter().flat_map(|b| b.txs.iter()) {
            let slot_taken = self
                .by_sender
                .get(&inc.tx.from)
                .is_some_and(|m| m.contains_key(&inc.tx.nonce));
            // Anvil takes a transaction back as if sent again now: one that no longer pays the
            // new head's base fee (or its cost) is refused there, and only that one; the
            // sender's later nonces wait behind the gap (Geth keeps such a one in the pool).
            let refused = self.params.pool_policy == PoolPolicy::Anvil
                && self.validate(&inc.tx, &self.state, base_fee).is_err();
            if drop_txs || slot_taken || refused {
                dropped.push(inc.tx.hash);
            } else {
                reinjected.push(inc.tx.hash);
                // Back in the pool as if sent again now (Anvil's order among equal fees).
                let mut tx = inc.tx.clone();
                tx.seq = self.take_seq();
                self.pool_insert(tx);
            }
        }
        let mined = (0..=depth).map(|_| self.mine_block(now_ms)).collect();
        ReorgSummary {
            old_head,
            common_ancestor: ancestor,
            removed_blocks: removed.iter().map(|b| (b.number, b.hash)).collect(),
            reinjected,
            dropped,
            mined,
        }
    }

    /// Remove the last `depth` blocks (never genesis; at most what snapshots allow) and restore
    /// the state of the new head; their transactions leave the index. Returns the new head and
    /// the removed blocks.
    fn unwind(&mut self, depth: u64) -> (u64, Vec<Block>) {
        let old_head = self.head();
        let oldest_kept = *self.snapshots.keys().next().expect("snapshot");
        let depth = depth.min(old_head - oldest_kept);
        let ancestor = old_head - depth;
        let removed = self.blocks.split_off(ancestor as usize + 1);
        self.state = self.snapshots[&ancestor].clone();
        self.snapshots = {
            let mut s = std::mem::take(&mut self.snapshots);
            s.split_off(&(ancestor + 1));
            s
        };
        self.salt += 1;
        for inc in removed.iter().flat_map(|b| b.txs.iter()) {
            self.tx_index.remove(&inc.tx.hash);
        }
        (ancestor, removed)
    }

    /// `anvil_rollback`: remove the last `depth` blocks; their transactions are forgotten (not
    /// put back in the pool), and — like Anvil, whose fee manager is not rolled back — the next
    /// block keeps the base fee it would have had before the rollback. Returns the hashes of the
    /// forgotten transactions; `Err` is Anvil's message when `depth` exceeds the chain height.
    pub fn rollback(&mut self, depth: u64) -> Result<Vec<B256>, String> {
        let head = self.head();
        if depth > head {
            return Err(format!(
                "Rollback depth must not exceed current chain height: current height {head}, depth {depth}"
            ));
        }
        let carry = self.next_base_fee();
        let (_, removed) = self.unwind(depth);
        self.next_base_fee_override = Some(carry);
        Ok(removed
            .iter()
            .flat_map(|b| b.txs.iter().map(|i| i.tx.hash))
            .collect())
    }

    /// The chain as it would be with the pool mined into a block now: Anvil's `pending` block,
    /// which state queries at the `pending` tag read.
    pub(crate) fn with_pending_block(&self, now_ms: u64) -> ChainModel {
        let mut m = ChainModel {
            params: self.params.clone(),
            blocks: self.blocks.clone(),
            state: self.state.clone(),
            snapshots: BTreeMap::from([(self.head(), self.state.clone())]),
            pool: self.pool.clone(),
            by_sender: self.by_sender.clone(),
            tx_index: self.tx_index.clone(),
            next_seq: self.next_seq,
            senders: BTreeMap::new(),
            kept: BTreeMap::new(),
            salt: self.salt,
            next_base_fee_override: self.next_base_fee_override,
            // A throwaway view: its history is not the chain's.
            history: Vec::new(),
        };
        m.mine_block(now_ms);
        m
    }

    /// Drop a ready pool transaction like `anvil_dropTransaction` (its ready successors go with
    /// it). Like Anvil, a queued one (behind a nonce gap) cannot be dropped this way.
    pub fn drop_pending(&mut self, hash: B256) -> bool {
        !self.drop_pending_detailed(hash).is_empty()
    }

    /// [`Self::drop_pending`], returning every hash removed.
    pub fn drop_pending_detailed(&mut self, hash: B256) -> Vec<B256> {
        match self.pool.get(&hash) {
            Some(tx) if self.is_ready(tx) => self.pool_remove_cascade(hash),
            _ => Vec::new(),
        }
    }

    /// Drop every pool transaction of `sender`; returns how many.
    pub fn drop_all_pending_from(&mut self, sender: Address) -> usize {
        let hashes: Vec<B256> = self
            .by_sender
            .get(&sender)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        for h in &hashes {
            self.pool_remove(*h);
        }
        hashes.len()
    }

    /// Empty the pool, like `anvil_dropAllTransactions`; returns how many were dropped.
    pub fn drop_all_pending(&mut self) -> usize {
        let n = self.pool.len();
        self.pool.clear();
        self.by_sender.clear();
        n
    }

    /// The next block's base fee, like `anvil_setNextBlockBaseFeePerGas` (a gas spike).
    pub fn set_next_base_fee(&mut self, fee: u128) {
        self.next_base_fee_override = Some(fee);
    }

    /// Drain or top up an account at the head.
    pub fn set_balance(&mut self, who: Address, amount: U256) {
        self.state.set_balance(who, amount);
        let head = self.head();
        self.snapshots.insert(head, self.state.clone());
    }

    /// Write one storage slot of `at` at the head, like `anvil_setStorageAt`: the next block and
    /// every call from now on see it.
    pub fn set_storage(&mut self, at: Address, slot: U256, value: U256) {
        self.state.set_storage(at, slot, value);
        let head = self.head();
        self.snapshots.insert(head, self.state.clone());
    }

    /// Someone outside the engine uses `from`'s next pending nonce: an impersonated (unsigned)
    /// zero-value self-transfer enters the pool and is mined with the next block. Returns its hash.
    pub fn external_use_nonce(&mut self, from: Address) -> B256 {
        let nonce = self.pending_nonce_of(from);
        let seq = self.take_seq();
        let mut seed = b"impersonated".to_vec();
        seed.extend(from.as_slice());
        seed.extend(nonce.to_be_bytes());
        seed.extend(seq.to_be_bytes());
        let hash = keccak256(&seed);
        let max_fee = self.next_base_fee() * 2 + DEFAULT_PRIORITY_FEE;
        if let Some(old) = self
            .by_sender
            .get(&from)
            .and_then(|m| m.get(&nonce))
            .copied()
        {
            self.pool_remove(old);
        }
        self.pool_insert(NodeTx {
            hash,
            from,
            nonce,
            tx_type: 2,
            chain_id: Some(self.params.chain_id),
            gas_limit: MIN_TRANSACTION_GAS,
            max_fee,
            priority_fee: Some(DEFAULT_PRIORITY_FEE),
            to: Some(from),
            value: U256::ZERO,
            input: Bytes::new(),
            access_list: AccessList::default(),
            sig: None,
            seq,
        });
        hash
    }

    /// The contracts `deployer` created on the canonical chain, in the order they were mined.
    pub fn contracts_created_by(&self, deployer: Address) -> Vec<Address> {
        self.blocks
            .iter()
            .flat_map(|b| &b.txs)
            .filter(|i| i.tx.from == deployer && i.success)
            .filter_map(|i| i.contract_address)
            .collect()
    }
}

/// `execution reverted[: reason]`, as Anvil words a revert.
pub(crate) fn revert_message(o: &evm::Outcome) -> String {
    if let Some(h) = &o.halted {
        // revm's `OutOfGas(Basic)` is Anvil's `OutOfGas`.
        return format!("EVM error {}", h.split('(').next().unwrap_or(h));
    }
    let hex = format!("0x{}", alloy_primitives::hex::encode(&o.output));
    match dalp_engine::error::decode_error_string(&hex) {
        Some(reason) => format!("execution reverted: {reason}"),
        None => "execution reverted".to_string(),
    }
}

/// EIP-1559: the base fee moves toward a half-full block by at most 1/8 per block.
/// Anvil starts block 1 at the genesis base fee (genesis itself does not move it).
pub(crate) fn next_base_fee(parent: &Block) -> u128 {
    if parent.number == 0 {
        return parent.base_fee;
    }
    let target = (parent.gas_limit / 2) as u128;
    let used = parent.gas_used as u128;
    let base = parent.base_fee;
    if target == 0 || used == target {
        base
    } else if used > target {
        base + (base * (used - target) / target / 8).max(1)
    } else {
        base - base * (target - used) / target / 8
    }
}

fn block_hash(b: &Block, salt: u64) -> B256 {
    let mut buf = Vec::with_capacity(128 + 32 * b.txs.len());
    buf.extend(b.parent_hash.as_slice());
    buf.extend(b.number.to_be_bytes());
    buf.extend(b.timestamp.to_be_bytes());
    buf.extend(b.base_fee.to_be_bytes());
    buf.extend(b.gas_used.to_be_bytes());
    buf.extend(salt.to_be_bytes());
    for i in &b.txs {
        buf.extend(i.tx.hash.as_slice());
    }
    keccak256(&buf)
}
