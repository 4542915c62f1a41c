//! Waiting that ends early on shutdown: shared by the engine's loops and the indexer.

use std::time::Duration;
use tokio::sync::watch;

/// Sleep for `d` unless shutdown is signalled first; returns true on shutdown.
pub async fn wait_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}
