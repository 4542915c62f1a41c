//! Request/response between the simulated hosts: the simulation's network.
//!
//! Messages are typed payloads (no serialization: `Box<dyn Any>`), each delivered after a latency
//! drawn from the scenario's range with madsim's seeded generator, over links a partition can cut
//! (`cut`, per direction and counted, checked when a message leaves, as a packet already on the
//! wire still arrives). A request arrives at the server after its latency and is handled then; the
//! reply travels back with a latency of its own. A message to a host that is down, to an address
//! no server holds, or over a cut link is lost: the caller hears nothing until its bound, exactly
//! like a request whose packets were dropped. A reply that arrives after the caller gave up is
//! never read, like a response on a connection the client already closed.
//!
//! Why not madsim's `Endpoint`: every message there costs two random sleeps (one when it leaves,
//! one when it is read), a timer, and its destination address formatted into a `String` and
//! hashed (madsim's virtual-service lookup, unused here): about a third of a run's instructions
//! (`cargo xtask bench count`). Here a call costs its two latencies and its bound: three timers.
//! Time and randomness are still madsim's, so a run stays a function of its seed.

use madsim::rand::Rng;
use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

type Payload = Box<dyn Any + Send + Sync>;

/// Why a call produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No answer within the bound (the request may or may not have been processed).
    Timeout,
}

/// A request on its way to a server.
struct Envelope {
    from: SocketAddr,
    /// When it arrives.
    at: Instant,
    req: Payload,
    /// Where the reply goes, with the instant it arrives.
    reply: oneshot::Sender<(Instant, Payload)>,
}

/// The network of one simulated run (one per thread: each run has a thread of its own).
struct Net {
    servers: BTreeMap<SocketAddr, mpsc::UnboundedSender<Envelope>>,
    /// Links cut by partitions, `(from, to)`, with how many partitions cut each.
    cut: BTreeMap<(IpAddr, IpAddr), u32>,
    latency: Range<Duration>,
    next_port: u16,
}

impl Net {
    fn new(latency: Range<Duration>) -> Self {
        assert!(!latency.is_empty(), "a latency range holds a value");
        Net {
            servers: BTreeMap::new(),
            cut: BTreeMap::new(),
            latency,
            next_port: FIRST_CLIENT_PORT,
        }
    }

    /// When a message leaving now from `from` reaches `to`; `None` when the link is cut.
    fn arrival(&self, from: IpAddr, to: IpAddr) -> Option<Instant> {
        if self.cut.contains_key(&(from, to)) {
            return None;
        }
        // madsim's generator, seeded by the run: the same seed draws the same latencies.
        Some(Instant::now() + madsim::rand::thread_rng().gen_range(self.latency.clone()))
    }
}

/// Client ports are handed out from here (servers listen on well-known ports below it).
const FIRST_CLIENT_PORT: u16 = 20_000;

thread_local! {
    static NET: RefCell<Net> = RefCell::new(Net::new(DEFAULT_LATENCY));
}

/// The latency of a network no run configured (unit tests): madsim's default range.
const DEFAULT_LATENCY: Range<Duration> = Duration::from_millis(1)..Duration::from_millis(10);

fn with_net<T>(f: impl FnOnce(&mut Net) -> T) -> T {
    NET.with(|n| f(&mut n.borrow_mut()))
}

/// A fresh network for the run starting on this thread, with one-way latencies drawn from
/// `latency`.
pub fn install(latency: Range<Duration>) {
    with_net(|n| *n = Net::new(latency));
}

/// Cut (`on`) or restore one direction of a link; cuts count, so overlapping partitions of the
/// same link heal when the last one does.
pub fn cut(from: IpAddr, to: IpAddr, on: bool) {
    with_net(|n| {
        let count = n.cut.entry((from, to)).or_insert(0);
        if on {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                n.cut.remove(&(from, to));
            }
        }
    });
}

/// A client of a host: its address is the host's, on a port of its own.
pub struct Client {
    addr: SocketAddr,
}

impl Client {
    /// A client on the host with address `ip`.
    pub fn bind(ip: IpAddr) -> Self {
        // A port only names the client to its servers (replies go to the calling future), so
        // after the last one the numbers start again rather than fail a long run.
        let port = with_net(|n| {
            let p = n.next_port;
            n.next_port = p.checked_add(1).unwrap_or(FIRST_CLIENT_PORT);
            p
        });
        Client {
            addr: SocketAddr::new(ip, port),
        }
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
        let (reply, answer) = oneshot::channel();
        with_net(|n| {
            let at = n.arrival(self.addr.ip(), dst.ip())?;
            let server = n.servers.get(&dst)?;
            let env = Envelope {
                from: self.addr,
                at,
                req: Box::new(req),
                reply,
            };
            // A server whose host went down since it registered has no receiver: lost too.
            server.send(env).ok()
        });
        let wait = async move {
            match answer.await {
                Ok((at, payload)) => {
                    tokio::time::sleep_until(at).await;
                    payload
                }
                // Lost on the way there or back: nothing ever arrives.
                Err(_) => std::future::pending().await,
            }
        };
        match dalp_engine::deadline::timeout(timeout, wait).await {
            Err(_) => Err(CallError::Timeout),
            Ok(payload) => Ok(*payload
                .downcast::<Resp>()
                .expect("reply of the type the server promises")),
        }
    }
}

/// Serve requests of type `Req` on `addr` until the host goes down (or another incarnation of
/// it takes the address); `handler` returns `None` to never answer. Each request is handled in a
/// task of its own on this host, from the instant it arrives.
pub async fn serve<Req, Resp, F, Fut>(addr: SocketAddr, handler: F)
where
    Req: Any + Send + Sync,
    Resp: Any + Send + Sync,
    F: Fn(Req, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Resp>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    with_net(|n| n.servers.insert(addr, tx));
    let handler = Arc::new(handler);
    while let Some(env) = rx.recv().await {
        let Envelope {
            from,
            at,
            req,
            reply,
        } = env;
        let req = *req
            .downcast::<Req>()
            .expect("request of the type this server takes");
        let handler = handler.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(resp) = handler(req, from).await else {
                return;
            };
            if let Some(at) = with_net(|n| n.arrival(addr.ip(), from.ip())) {
                let payload: Payload = Box::new(resp);
                let _ = reply.send((at, payload));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{cut, install, serve, CallError, Client};
    use dalp_engine::deadline::timeout;
    use madsim::runtime::Handle;
    use std::future::Future;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    use std::time::Duration;
    use tokio::time::Instant;

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

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 9, 1));
    const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 9, 2));
    const ADDR: SocketAddr = SocketAddr::new(SERVER, 7000);
    const BOUND: Duration = Duration::from_secs(1);

    /// A server host at `ADDR` that answers `n + 1` to `n` and counts the requests it handled.
    fn start_server() -> (madsim::runtime::NodeHandle, Arc<AtomicUsize>) {
        let handled = Arc::new(AtomicUsize::new(0));
        let h = handled.clone();
        let node = Handle::current()
            .create_node()
            .name("server")
            .ip(SERVER)
            .init(move || {
                let h = h.clone();
                serve(ADDR, move |n: u64, _from: SocketAddr| {
                    h.fetch_add(1, Ordering::SeqCst);
                    async move { Some(n + 1) }
                })
            })
            .build();
        (node, handled)
    }

    /// A fresh network with one-way latencies of `ms` to `ms + 1` ms, the server listening, and
    /// a client.
    async fn network(ms: u64) -> (madsim::runtime::NodeHandle, Arc<AtomicUsize>, Client) {
        install(Duration::from_millis(ms)..Duration::from_millis(ms + 1));
        let (node, handled) = start_server();
        // Let the server's host start listening.
        tokio::time::sleep(Duration::from_millis(1)).await;
        (node, handled, Client::bind(CLIENT))
    }

    #[madsim::test]
    async fn a_call_takes_a_latency_each_way() {
        let (_node, handled, client) = network(10).await;
        let start = Instant::now();
        let answer = client.call::<u64, u64>(ADDR, 41, BOUND).await;
        assert_eq!(answer, Ok(42));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(20) && took < Duration::from_millis(22),
            "{took:?}"
        );
        assert_eq!(handled.load(Ordering::SeqCst), 1);
    }

    /// A cut request never reaches the server; a cut reply is lost after the server acted on
    /// the request (the ambiguous case); either way the caller hears nothing until its bound.
    #[madsim::test]
    async fn a_cut_link_loses_what_leaves_over_it() {
        let (_node, handled, client) = network(1).await;
        cut(CLIENT, SERVER, true);
        let start = Instant::now();
        assert_eq!(
            client.call::<u64, u64>(ADDR, 1, BOUND).await,
            Err(CallError::Timeout)
        );
        assert!(start.elapsed() >= BOUND);
        assert_eq!(handled.load(Ordering::SeqCst), 0, "the request was lost");
        cut(CLIENT, SERVER, false);
        cut(SERVER, CLIENT, true);
        assert_eq!(
            client.call::<u64, u64>(ADDR, 1, BOUND).await,
            Err(CallError::Timeout)
        );
        assert_eq!(handled.load(Ordering::SeqCst), 1, "the server acted on it");
        cut(SERVER, CLIENT, false);
        assert_eq!(client.call::<u64, u64>(ADDR, 1, BOUND).await, Ok(2));
    }

    /// Two partitions over one link: it heals when the last one does.
    #[madsim::test]
    async fn overlapping_cuts_heal_with_the_last() {
        let (_node, _, client) = network(1).await;
        cut(CLIENT, SERVER, true);
        cut(CLIENT, SERVER, true);
        cut(CLIENT, SERVER, false);
        assert_eq!(
            client.call::<u64, u64>(ADDR, 1, BOUND).await,
            Err(CallError::Timeout)
        );
        cut(CLIENT, SERVER, false);
        assert_eq!(client.call::<u64, u64>(ADDR, 1, BOUND).await, Ok(2));
    }

    /// A request already on the wire when the link is cut still arrives (the cut is checked as
    /// a message leaves).
    #[madsim::test]
    async fn a_message_on_the_wire_outlives_a_cut() {
        let (_node, handled, client) = network(10).await;
        let call = tokio::spawn(async move { client.call::<u64, u64>(ADDR, 1, BOUND).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        cut(CLIENT, SERVER, true);
        assert_eq!(call.await.unwrap(), Ok(2));
        assert_eq!(handled.load(Ordering::SeqCst), 1);
    }

    /// A host that is down answers nothing, and a restarted one serves again.
    #[madsim::test]
    async fn a_server_whose_host_is_down_answers_nothing() {
        let (node, handled, client) = network(1).await;
        Handle::current().kill(node.id());
        assert_eq!(
            client.call::<u64, u64>(ADDR, 1, BOUND).await,
            Err(CallError::Timeout)
        );
        assert_eq!(handled.load(Ordering::SeqCst), 0);
        Handle::current().restart(node.id());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(client.call::<u64, u64>(ADDR, 1, BOUND).await, Ok(2));
    }
}
