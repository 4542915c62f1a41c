//! Connecting at start-up: the database may come up after the engine (a fresh deployment, a
//! failover in progress), so the engine retries with backoff for a bounded time, logging where it
//! connects (never the password) and why it could not. A pool's acquire only says that it timed
//! out, so each failed attempt makes one direct connection to learn the cause.

use super::pg::PgStore;
use crate::error::{EngineError, Result};
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;
use std::str::FromStr;
use std::time::Duration;
use tokio::time::Instant;

/// `host:port/database` of a connection string: what logs and errors may show.
pub fn target(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        ),
        Err(_) => "<invalid database_url>".into(),
    }
}

/// Why one direct connection fails, bounded by `timeout`.
async fn cause(url: &str, timeout: Duration) -> String {
    let Ok(opts) = PgConnectOptions::from_str(url) else {
        return "invalid connection string".into();
    };
    match tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&opts)).await {
        Err(_) => format!("no answer within {} ms", timeout.as_millis()),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(c)) => {
            let _ = tokio::time::timeout(timeout, c.close()).await;
            "connected directly, but not through the pool".into()
        }
    }
}

/// [`PgStore::connect`], retried with backoff (250 ms doubling to 5 s) until it succeeds or
/// `give_up_after` has passed. An invalid connection string fails at once.
pub async fn connect_with_retry(
    url: &str,
    max_connections: u32,
    timeout: Duration,
    give_up_after: Duration,
) -> Result<PgStore> {
    let started = Instant::now();
    let database = target(url);
    let mut backoff = Duration::from_millis(250);
    loop {
        let e = match PgStore::connect(url, max_connections, timeout).await {
            Ok(store) => return Ok(store),
            Err(e @ EngineError::Invalid(_)) => return Err(e),
            Err(e) => e,
        };
        let why = format!("{e}; {}", cause(url, timeout).await);
        if started.elapsed() + backoff > give_up_after {
            return Err(EngineError::DbUnavailable(format!(
                "database {database} unreachable for {} s: {why}",
                started.elapsed().as_secs()
            )));
        }
        tracing::warn!(%database, error = %why, retry_in_ms = backoff.as_millis() as u64, "database unreachable; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_names_host_port_and_database_never_the_password() {
        let t = target("postgres://app:hunter2@db.internal:6543/ledger");
        assert_eq!(t, "db.internal:6543/ledger");
        assert_eq!(target("not a url"), "<invalid database_url>");
    }
}
