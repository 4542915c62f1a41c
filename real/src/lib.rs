//! `dalp-real`, the real backend of `dalp-sim`: the scenario files run against real services
//! instead of simulated ones —
//! `dalp-engine` processes, a PostgreSQL primary with streaming replicas, Anvil, and fault
//! proxies in front of them — provisioned as local processes or as containers. The seed drives
//! the workload and the fault schedule; the same checkers judge the same kind of evidence.
//!
//! - `provision.rs` — the [`provision::Provider`] boundary and local processes; `docker.rs` —
//!   the same services as containers (testcontainers, locally built images);
//! - `proxy.rs` — per-engine fault proxies (TCP for PostgreSQL, HTTP for JSON-RPC and the API);
//! - `engines.rs` — `dalp-engine` processes and the clients' HTTP API;
//! - `fleet.rs` — the fault schedule applied to the services;
//! - `evidence.rs` — the evidence read back from PostgreSQL and Anvil;
//! - `run.rs` — one run: provisioning, and the `dalp_sim::driver::Backend` over these services;
//! - `cleanup.rs` — nothing outlives a run, also when it is interrupted;
//! - `main.rs` — the `dalp-real` binary: `dalp-sim`'s command line with this backend plugged in.
//!
//! Its own crate so the simulation crate carries no real runtime, processes or containers: that
//! one builds in both flavours, this one only in the plain build.

pub mod cleanup;
pub mod docker;
pub mod engines;
pub mod evidence;
pub mod fleet;
pub mod provision;
pub mod proxy;
pub mod run;
