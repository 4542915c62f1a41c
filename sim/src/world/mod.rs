//! The simulated world of one run (simulation flavour only): database, chain and RPC nodes,
//! engine nodes, clients and the fault injector.
//!
//! Hosts and addresses: `engine-<i>` 10.0.1.x, `db-<j>` 10.0.2.x (the service name `db.service`
//! points at the primary and is re-pointed on failover), `rpc-<k>` 10.0.3.x, `chain` 10.0.4.1,
//! `client-<c>` 10.0.5.x, the operator 10.0.6.1, the metrics scraper 10.0.7.1; all on the
//! simulation's network (`net`).

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

/// The address of the host named `name` (see the module's list); `None` for a name no host has.
pub fn ip_of(name: &str) -> Option<IpAddr> {
    let numbered = |prefix: &str| -> Option<usize> { name.strip_prefix(prefix)?.parse().ok() };
    let (group, index) = match name {
        "chain" => (4, 0),
        crate::driver::OPERATOR => (6, 0),
        scrape::SCRAPER => (7, 0),
        _ => {
            if let Some(i) = numbered("engine-") {
                (1, i)
            } else if let Some(j) = numbered("db-") {
                (2, j)
            } else if let Some(k) = numbered("rpc-") {
                (3, k)
            } else {
                (5, numbered("client-")?)
            }
        }
    };
    Some(ip(group, index))
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

#[cfg(test)]
mod tests {
    use super::{ip, ip_of};

    /// The addresses the fault injector cuts links by are the hosts' own.
    #[test]
    fn every_host_name_has_its_address() {
        assert_eq!(ip_of("engine-2"), Some(ip(1, 2)));
        assert_eq!(ip_of("db-1"), Some(ip(2, 1)));
        assert_eq!(ip_of("rpc-0"), Some(ip(3, 0)));
        assert_eq!(ip_of("chain"), Some(ip(4, 0)));
        assert_eq!(ip_of("client-3"), Some(ip(5, 3)));
        assert_eq!(ip_of(crate::driver::OPERATOR), Some(ip(6, 0)));
        assert_eq!(ip_of(super::scrape::SCRAPER), Some(ip(7, 0)));
        for unknown in ["engine-", "engine-x", "db", "clients", "nobody"] {
            assert_eq!(ip_of(unknown), None, "{unknown}");
        }
    }
}
