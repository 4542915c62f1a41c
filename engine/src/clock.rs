//! The one place the engine reads wall-clock time.
//!
//! Leases and retry schedules are decided by the database's clock (`now()` in SQL), so a node
//! whose clock is skewed cannot steal or keep a lease. Wall time here only stamps records that
//! are informational (metrics, logs). The simulation supplies a skewed clock per node through
//! this interface.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, as this node believes.
    fn now_ms(&self) -> u64;
}

/// The host's clock (madsim's virtual clock under the simulation flavour).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64
    }
}

/// A clock offset from another by a fixed amount (positive = ahead).
#[derive(Clone, Debug)]
pub struct SkewedClock<C: Clock> {
    pub inner: C,
    pub skew_ms: i64,
}

impl<C: Clock> Clock for SkewedClock<C> {
    fn now_ms(&self) -> u64 {
        (self.inner.now_ms() as i64)
            .saturating_add(self.skew_ms)
            .max(0) as u64
    }
}
