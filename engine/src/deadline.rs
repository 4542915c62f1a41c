//! A timeout that arms one timer per call and disarms it when the call ends.
//!
//! `tokio::time::timeout` polls its `Sleep` on every wake of the future it bounds. Under the
//! simulation (madsim), every pending poll of a `Sleep` adds a timer that cannot be cancelled:
//! a step bounded by `timeouts.step_ms` that is woken a hundred times leaves a hundred timers,
//! each of which later wakes the task again for nothing. Measured on `steady-state` (issue 13):
//! ~12 timers per request, a third of the simulation's timer heap work and of its task polls.
//! Here the `Sleep` is polled once, with a waker that forwards to the task's current waker and
//! goes silent once the call has ended, so a finished call's timer wakes nobody. The result is
//! the same as tokio's in both flavours (the future is polled first, as tokio and madsim do).

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// The bound passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Run `fut` for at most `bound`.
pub async fn timeout<F: Future>(bound: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    let mut sleep = pin!(tokio::time::sleep(bound));
    let forward = Disarm(Arc::new(Forward::default()));
    let mut armed = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        forward.0.follow(cx.waker());
        if !armed {
            armed = true;
            let waker = Waker::from(forward.0.clone());
            if sleep
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return Poll::Ready(Err(Elapsed));
            }
        } else if sleep.is_elapsed() {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    })
    .await
}

/// The waker the timer holds: the bounded task's latest waker, or nobody once the call ended.
#[derive(Default)]
struct Forward(Mutex<Option<Waker>>);

impl Forward {
    fn follow(&self, w: &Waker) {
        let mut slot = self.0.lock().expect("timeout waker");
        if !slot.as_ref().is_some_and(|s| s.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }
}

impl Wake for Forward {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let w = self.0.lock().expect("timeout waker").clone();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// Silences the timer when the call ends, however it ends (finished, elapsed or dropped).
struct Disarm(Arc<Forward>);

impl Drop for Disarm {
    fn drop(&mut self) {
        self.0 .0.lock().expect("timeout waker").take();
    }
}

/// (The property the simulation relies on, that a finished call's timer wakes nobody, shows only
/// under madsim, whose timers are never cancelled: `sim/src/world/net.rs`'s tests.)
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_future_that_finishes_in_time_gives_its_output() {
        let r = timeout(Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            7
        })
        .await;
        assert_eq!(r, Ok(7));
        // Ready at once (no timer is armed at all).
        assert_eq!(timeout(Duration::from_secs(5), async { 8 }).await, Ok(8));
    }

    #[tokio::test]
    async fn a_future_that_outlives_the_bound_is_cut_off_at_it() {
        let start = std::time::Instant::now();
        let r = timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed));
        assert!(start.elapsed() >= Duration::from_millis(50));
        // Woken many times before the bound (each wake polls it again): still cut off.
        let r = timeout(Duration::from_millis(50), async {
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert_eq!(r, Err(Elapsed));
    }
}
