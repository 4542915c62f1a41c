//! Request/response over madsim's simulated network.
//!
//! Messages are passed as typed payloads (no serialization: the simulated network carries
//! `Box<dyn Any>`), so a request costs one allocation. Every request carries a reply tag unique
//! to the caller; a reply that arrives after the caller gave up is simply never read, exactly
//! like a response on a connection the client already closed.

use madsim::net::Endpoint;
use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The tag servers listen on.
pub const TAG_REQUEST: u64 = 1;

/// Why a call produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No answer within the bound (the request may or may not have been processed).
    Timeout,
    /// The local network stack refused to send.
    Io(String),
}

/// Reply tags, unique in the whole simulation (one seed per process), not per client: a
/// restarted process binds a new client that madsim may give the old one's port, and a late reply
/// to the old process's request must not match the new process's request of the same tag (seen
/// as "database reply to tx_by_nonce has the wrong shape" after an engine restart).
static NEXT_TAG: AtomicU64 = AtomicU64::new(1 << 20);

/// A client endpoint: one per node and purpose.
pub struct Client {
    ep: Endpoint,
}

impl Client {
    pub async fn bind() -> io::Result<Self> {
        Ok(Client {
            ep: Endpoint::bind("0.0.0.0:0").await?,
        })
    }

    /// Send `req` to `dst` and wait at most `timeout` for a `Resp`.
    pub async fn call<Req, Resp>(
        &self,
        dst: SocketAddr,
        req: Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Any + Send + Sync,
        Resp: Any + Send + Sync,
    {
        let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
        self.ep
            .send_to_raw(dst, TAG_REQUEST, Box::new((tag, req)))
            .await
            .map_err(|e| CallError::Io(e.to_string()))?;
        match dalp_engine::deadline::timeout(timeout, self.ep.recv_from_raw(tag)).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(e)) => Err(CallError::Io(e.to_string())),
            Ok(Ok((payload, _))) => Ok(*payload
                .downcast::<Resp>()
                .expect("reply of the type the server promises")),
        }
    }
}

/// Serve requests of type `Req` on `addr` forever; `handler` returns `None` to never answer.
pub async fn serve<Req, Resp, F, Fut>(addr: SocketAddr, handler: F)
where
    Req: Any + Send + Sync,
    Resp: Any + Send + Sync,
    F: Fn(Req, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Resp>> + Send + 'static,
{
    let ep = Arc::new(Endpoint::bind(addr).await.expect("bind server endpoint"));
    loop {
        let Ok((payload, from)) = ep.recv_from_raw(TAG_REQUEST).await else {
            return;
        };
        let (tag, req) = *payload
            .downcast::<(u64, Req)>()
            .expect("request of the type this server takes");
        let fut = handler(req, from);
        let ep = ep.clone();
        tokio::spawn(async move {
            if let Some(resp) = fut.await {
                let _ = ep.send_to_raw(from, tag, Box::new(resp)).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use dalp_engine::deadline::timeout;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    use std::time::Duration;

    /// Counts wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `call` by hand with a counting waker, waking it every 10 ms until it is done, then
    /// sleeps past its bound: the wakes its bound's timers delivered after it ended.
    async fn wakes_after_the_end<F: Future>(call: F) -> usize {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut call = Box::pin(call);
        while call
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(call);
        let before = count.0.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        count.0.load(Ordering::SeqCst) - before
    }

    /// madsim's timers cannot be cancelled and its `timeout` arms one per poll: a call polled
    /// ten times leaves ten timers that wake the task after it ended. `deadline::timeout` arms
    /// one and silences it.
    #[madsim::test]
    async fn a_finished_call_s_bound_wakes_nobody() {
        let work = || tokio::time::sleep(Duration::from_millis(95));
        let madsim_s =
            wakes_after_the_end(tokio::time::timeout(Duration::from_secs(1), work())).await;
        assert!(madsim_s >= 9, "{madsim_s}");
        let ours = wakes_after_the_end(timeout(Duration::from_secs(1), work())).await;
        assert_eq!(ours, 0);
    }
}
