//! The simulated chain: a pure, deterministic model of one EVM chain that answers the engine's
//! JSON-RPC requests as text, the way Anvil does.
//!
//! - [`model`]: accounts, mempool, blocks, base fee, receipts, reorgs, dropped transactions and
//!   the fault hooks; contract code runs on revm (the EVM Anvil uses), see [`evm`].
//! - [`rpc`]: `ChainModel::handle_rpc`, request text in, response text out.
//!
//! Everything here is pure (no runtime, no I/O, no clock, no randomness) so it compiles and is
//! tested in both flavours; the madsim node that serves it on the simulated network lives
//! elsewhere and only calls [`ChainModel`]'s methods.

mod ecrecover;
pub(crate) mod evm;
pub mod model;
pub mod rpc;

#[cfg(test)]
mod tests;

pub use model::{
    ChainModel, ChainParams, LogRec, MinedBlockSummary, MinedTx, PoolPolicy, ReorgSummary,
    TxReject, DEFAULT_PRIORITY_FEE, GWEI,
};
pub use rpc::RpcError;

/// The storage slot of the fixture token's `maxBalance` (solc's layout of
/// `fixtures/contracts/AssetToken.sol`: owner, name, symbol, decimals, totalSupply, balanceOf,
/// then maxBalance), for a rule change written straight to storage (`anvil_setStorageAt`).
/// A test checks it against the contract's own getter.
pub const MAX_BALANCE_SLOT: alloy_primitives::U256 =
    alloy_primitives::U256::from_limbs([6, 0, 0, 0]);
