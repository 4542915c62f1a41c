//! The simulated database: a pure, in-memory model of the engine's PostgreSQL schema and of
//! every statement `PgStore` runs, and the engine's `Store` implemented over it.
//!
//! Why it exists: in the simulation the engine's real code reaches its database through the
//! same `Store` trait as in production, but the database is a simulated node on the simulated network
//! (primary and replicas, replication, crash, failover, unknown commit outcomes). That node keeps
//! a [`DbModel`] and executes each [`DbRequest`] with [`DbModel::apply`].
//!
//! What the model promises (details and the deliberate deviations in [`model`]'s docs):
//! * **the same semantics as `PgStore`** (`engine/src/store/pg.rs`): the same rows, the same
//!   replies, the same `EngineError` variants with the same fields and messages, for the same
//!   conditions — idempotency keys, claim order and lease expiry by the database clock, fencing,
//!   nonce allocation, the transaction rows, the indexer tables and the balances view;
//! * **deterministic**: `apply` is a function of (state, request, `now_ms`); all tables are
//!   ordered maps;
//! * **atomic**: an `Err` changes no row and no sequence, except `requeue`'s refusal, which
//!   commits its audit row as pg.rs does (sequences deliberately do *not* burn values on a failed
//!   insert as PostgreSQL's do: see [`model`]). A replica that applies, in order and with the
//!   same `now_ms`, the requests [`DbModel::committed`] selects has exactly the primary's data.
//!
//! [`StoreOver`] turns any [`DbCall`] into the engine's `Store` (the lead implements `DbCall`
//! over the simulated network); [`LocalDb`] is a `DbCall` in this process for tests;
//! [`call_store`] replays a request against any `Store`, so a differential test can run the same
//! `Vec<DbRequest>` against the model and a real `PgStore`.

pub mod audit;
pub mod model;
pub mod store;
pub mod tracked;

#[cfg(test)]
mod tests;

pub use model::{DbModel, DbReply, DbRequest, Sequences, Tables};
pub use store::{call_store, Clock, DbCall, LocalDb, StoreOver};
