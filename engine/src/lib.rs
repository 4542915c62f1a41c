//! `dalp-engine`: a durable blockchain workflow engine.
//!
//! Workflows are journaled in PostgreSQL at every step boundary, executed by workers that hold
//! leases with fencing tokens, and send EVM transactions through a persisted nonce manager and an
//! RPC gateway with failover. The same code compiles under `--cfg madsim`: only what sits behind
//! the [`store::Store`] and [`chain::Transport`] boundaries differs. See ARCHITECTURE.md.

pub mod chain;
pub mod clock;
pub mod config;
pub mod contracts;
pub mod deadline;
pub mod engine;
pub mod error;
pub mod indexer;
pub mod metrics;
pub mod probe;
pub mod retry;
pub mod shutdown;
pub mod signer;
pub mod store;
pub mod txmgr;
pub mod workflow;

#[cfg(not(madsim))]
pub mod api;

pub use engine::Engine;
pub use error::{EngineError, ErrorClass};
