//! The simulated world of one run (simulation flavour only): database, chain and RPC nodes,
//! engine nodes, clients and the fault injector, all on madsim's simulated network.
//!
//! Hosts and addresses: `engine-<i>` 10.0.1.x, `db-<j>` 10.0.2.x (the service name `db.service`
//! points at the primary and is re-pointed on failover), `rpc-<k>` 10.0.3.x, `chain` 10.0.4.1,
//! `client-<c>` 10.0.5.x.

pub mod chain_node;
pub mod db_node;
pub mod engine_node;
pub mod faults;
pub mod logs;
pub mod net;
pub mod run;
pub mod scrape;
pub mod workload;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DB_PORT: u16 = 5432;
pub const API_PORT: u16 = 8080;
pub const RPC_PORT: u16 = 8545;
pub const DB_SERVICE: &str = "db.service";

/// Simulated milliseconds since the run started.
pub fn t_ms() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_millis() as u64
}

/// Simulated wall-clock milliseconds since the Unix epoch (what a database's `now()` reads).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

pub fn ip(group: u8, index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, group, index as u8 + 1))
}

pub fn engine_addr(i: usize) -> SocketAddr {
    SocketAddr::new(ip(1, i), API_PORT)
}
pub fn db_addr(j: usize) -> SocketAddr {
    SocketAddr::new(ip(2, j), DB_PORT)
}
pub fn rpc_addr(k: usize) -> SocketAddr {
    SocketAddr::new(ip(3, k), RPC_PORT)
}

/// Sleep until `t` simulated ms since the start (no-op when already past).
pub async fn sleep_until_ms(t: u64) {
    let now = t_ms();
    if t > now {
        tokio::time::sleep(Duration::from_millis(t - now)).await;
    }
}
