//! `dalp-sim`: the deterministic simulation harness for the dalp engine.
//!
//! The engine's real code runs on madsim nodes (`--cfg madsim`) against simulated PostgreSQL
//! (`db`) and chain/RPC nodes (`chain`) on the simulated network (`world::net`); scenarios (`scenario`)
//! schedule faults; every run records a trace (`trace`) whose hash is a pure function of the seed.
//! The pure parts (models, scenario parsing, plan, checkers, CLI) compile in both flavours so they
//! are unit-tested with plain `cargo test`; the simulated world (`world`) is `cfg(madsim)`.

pub mod bundle;
pub mod chain;
pub mod check;
pub mod cli;
pub mod client;
pub mod coverage;
pub mod db;
pub mod driver;
pub mod engine_conf;
pub mod history;
pub mod isolation;
pub mod outcome;
pub mod plan;
pub mod promise;
pub mod provenance;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod shrink;
pub mod swarm;
pub mod timing;
pub mod trace;
pub mod verdict;

#[cfg(madsim)]
pub mod world;
