//! Fault-injecting proxies for the real backend.
//!
//! In a real-service run every `dalp-engine` process reaches PostgreSQL and each Anvil node through
//! its own proxy, so the fault schedule can break one engine's view of one service without
//! touching the service itself or the other engines. Two proxies:
//!
//! - [`TcpFaultProxy`] splices bytes (PostgreSQL's wire protocol, or anything else over TCP).
//! - [`HttpFaultProxy`] understands HTTP/1.1 request by request (JSON-RPC to Anvil), so it can
//!   fail individual requests and recognise transaction submissions.
//!
//! Each proxy listens on `127.0.0.1:<ephemeral>`; that address stays the same for the proxy's
//! life (also across [`TcpMode::Down`] and back), so an engine's configuration never changes.
//!
//! What the faults model:
//!
//! | fault | models | the client sees |
//! |---|---|---|
//! | `Down` | the process or host is down | connection refused; existing connections closed |
//! | `Blackhole` | a network partition or a hung node | connects succeed, nothing ever comes back (the client's own timeouts fire); data is read and discarded |
//! | `Latency(d)` | a slow link | every chunk (TCP) or request (HTTP) delayed by `d` |
//! | `Status503` (HTTP) | an overloaded node | `503 Service Unavailable`, the request is not forwarded |
//! | `AmbiguousSend` (HTTP) | a timeout after the node accepted a transaction | `eth_sendRawTransaction` is forwarded, the node has the transaction, the client gets a closed connection instead of the answer; other requests pass |
//! | `reset_connections` | connection loss | current connections closed; new ones work |
//! | `set_upstream` | failover re-pointing (a DNS or VIP switch) | current connections closed; new ones reach the new upstream |
//!
//! A connection that lost data to a blackhole cannot continue (its byte stream, or its
//! request/response pairing, is broken), so when the mode leaves `Blackhole` such connections are
//! closed, like a TCP connection whose retransmissions timed out during the partition. Connections
//! that lost nothing carry on.
//!
//! Every upstream connect is bounded by [`UPSTREAM_CONNECT_TIMEOUT`]; an HTTP exchange with the
//! upstream by [`UPSTREAM_RESPONSE_TIMEOUT`]. Peer resets end the affected connection, never the
//! proxy. Nothing is logged; the counters ([`TcpStats`], [`HttpStats`]) are the diagnostics.
//!
//! HTTP specifics: request bodies with `Content-Length` or `chunked` are accepted; responses with
//! `Content-Length`, `chunked` or read-until-close framing are forwarded verbatim (one upstream
//! keep-alive connection per client connection). `Expect: 100-continue` and protocol upgrades are
//! not supported (neither reqwest's JSON requests nor Anvil use them). When the upstream cannot be
//! reached at all the client gets `502 Bad Gateway` (nothing was sent); when the upstream fails
//! after the request was sent the client connection is closed without a response.
//!
//! Caveat: `Down` really closes the listening socket, and going back up re-binds the same port
//! (with `SO_REUSEADDR`). If another socket took the port meanwhile, the proxy keeps retrying the
//! bind in the background every 100 ms ([`TcpFaultProxy::is_listening`] tells).

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// Bound on every connect to the upstream.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one HTTP exchange with the upstream (request written, response read).
pub const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval of the background re-bind attempts when the port could not be re-bound at once.
const REBIND_RETRY: Duration = Duration::from_millis(100);
/// How long `shutdown` waits for the connection tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Chunks in flight per direction of a TCP connection (bounds memory under latency).
const CHUNK_QUEUE: usize = 64;
const CHUNK: usize = 16 * 1024;
const MAX_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 8 * 1024;
const MAX_BODY: usize = 256 * 1024 * 1024;
/// JSON-RPC methods whose answer `AmbiguousSend` swallows.
const SEND_METHODS: &[&str] = &["eth_sendRawTransaction", "eth_sendRawTransactionSync"];

/// Fault mode of a [`TcpFaultProxy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcpMode {
    /// Forward everything.
    #[default]
    Pass,
    /// Forward everything, each chunk delayed by this much (both directions; the round trip grows
    /// by twice the delay). Applies to data read after the change.
    Latency(Duration),
    /// Partition / hung node: connections (existing and new) stay open, data is read and
    /// discarded in both directions.
    Blackhole,
    /// Service down: the listener is closed (connection refused), existing connections closed.
    Down,
}

/// Fault mode of an [`HttpFaultProxy`]; applies per request, also on existing connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpMode {
    /// Forward every request.
    #[default]
    Pass,
    /// Each request waits this long before it is forwarded (it is forwarded even if the client
    /// gave up meanwhile, like a packet in flight).
    Latency(Duration),
    /// Answer every request `503 Service Unavailable` without forwarding it.
    Status503,
    /// Read requests, never answer; the connection stays open until the client gives up.
    Blackhole,
    /// Service down: connection refused, existing connections closed.
    Down,
    /// Requests calling `eth_sendRawTransaction` (alone or in a batch) are forwarded, the answer
    /// is discarded and the client connection closed without a response; others pass.
    AmbiguousSend,
}

/// Counters of a [`TcpFaultProxy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Client connections accepted since start.
    pub accepted: u64,
    /// Client connections currently open.
    pub open: u64,
    /// Connections closed because the upstream could not be reached.
    pub upstream_errors: u64,
}

/// Counters of an [`HttpFaultProxy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Client connections accepted since start.
    pub accepted: u64,
    /// Client connections currently open.
    pub open: u64,
    /// Requests forwarded to the upstream and answered by it (swallowed sends included).
    pub forwarded: u64,
    /// Requests failed by an injected fault (503 or blackholed).
    pub failed_by_fault: u64,
    /// `eth_sendRawTransaction` requests forwarded whose answer was withheld (`AmbiguousSend`).
    pub swallowed_sends: u64,
    /// Requests failed because the upstream was unreachable or broke off.
    pub upstream_errors: u64,
}

// ---------------------------------------------------------------------------------------------
// The shared machinery: listener (closable and re-bindable on the same port), mode, upstream,
// connection kill switch, counters.

trait Mode: Copy + PartialEq + Default + Send + Sync + fmt::Debug + 'static {
    fn is_down(self) -> bool;
    fn is_blackhole(self) -> bool;
}

impl Mode for TcpMode {
    fn is_down(self) -> bool {
        self == TcpMode::Down
    }
    fn is_blackhole(self) -> bool {
        self == TcpMode::Blackhole
    }
}

impl Mode for HttpMode {
    fn is_down(self) -> bool {
        self == HttpMode::Down
    }
    fn is_blackhole(self) -> bool {
        self == HttpMode::Blackhole
    }
}

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type Serve<M> = fn(Arc<Core<M>>, TcpStream) -> BoxFut;

#[derive(Default)]
struct Listen {
    listener: Option<TcpListener>,
    accept: Option<JoinHandle<()>>,
    rebinding: bool,
}

struct Core<M: Mode> {
    name: String,
    addr: SocketAddr,
    rt: tokio::runtime::Handle,
    serve: Serve<M>,
    upstream: Mutex<SocketAddr>,
    mode: watch::Sender<M>,
    /// Bumped to close every current connection; a connection subscribes when accepted.
    kill: watch::Sender<u64>,
    /// Also serialises mode changes, accepts and kills (see `accept_loop`).
    listen: Mutex<Listen>,
    stopped: AtomicBool,
    accepted: AtomicU64,
    open: AtomicU64,
    forwarded: AtomicU64,
    faulted: AtomicU64,
    swallowed: AtomicU64,
    upstream_errors: AtomicU64,
    /// HTTP only: the JSON-RPC method the mode applies to (`None`: every request).
    scope: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `std`'s bind sets `SO_REUSEADDR` on Unix, so the port can be re-bound while connections
/// accepted on it linger in `TIME_WAIT`.
fn bind_std(addr: SocketAddr) -> io::Result<StdListener> {
    let l = StdListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl<M: Mode> Core<M> {
    async fn start(name: &str, upstream: SocketAddr, serve: Serve<M>) -> io::Result<Arc<Self>> {
        // Below the ephemeral range: after `Down` the same port is bound again, and an
        // ephemeral port may meanwhile be some outgoing connection's local port.
        let port = super::provision::free_port().map_err(|e| io::Error::other(e.to_string()))?;
        let std = bind_std(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let core = Arc::new(Core {
            name: name.to_string(),
            addr: std.local_addr()?,
            rt: tokio::runtime::Handle::current(),
            serve,
            upstream: Mutex::new(upstream),
            mode: watch::channel(M::default()).0,
            kill: watch::channel(0).0,
            listen: Mutex::new(Listen::default()),
            stopped: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
            swallowed: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            scope: Mutex::new(None),
        });
        let mut l = lock(&core.listen);
        core.install(&mut l, std)?;
        drop(l);
        Ok(core)
    }

    fn install(self: &Arc<Self>, l: &mut Listen, std: StdListener) -> io::Result<()> {
        let listener = {
            let _ctx = self.rt.enter();
            TcpListener::from_std(std)?
        };
        l.listener = Some(listener);
        if let Some(old) = l.accept.take() {
            old.abort();
        }
        let me = Arc::clone(self);
        l.accept = Some(self.rt.spawn(async move { me.accept_loop().await }));
        Ok(())
    }

    /// Closes the listening socket synchronously (new connects are refused from now on).
    fn unbind(&self, l: &mut Listen) {
        l.listener = None;
        if let Some(t) = l.accept.take() {
            t.abort();
        }
    }

    fn rebind(self: &Arc<Self>, l: &mut Listen) {
        if bind_std(self.addr).and_then(|s| self.install(l, s)).is_ok() || l.rebinding {
            return;
        }
        l.rebinding = true;
        let me = Arc::clone(self);
        self.rt.spawn(async move {
            loop {
                sleep(REBIND_RETRY).await;
                let mut l = lock(&me.listen);
                let down = me.mode.borrow().is_down();
                if me.stopped.load(Relaxed) || down || l.listener.is_some() {
                    l.rebinding = false;
                    return;
                }
                if bind_std(me.addr)
                    .and_then(|s| me.install(&mut l, s))
                    .is_ok()
                {
                    l.rebinding = false;
                    return;
                }
            }
        });
    }

    fn kill_all(&self) {
        self.kill.send_modify(|epoch| *epoch += 1);
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            // The listener is polled under the lock and the new connection subscribes to the kill
            // switch under it too: a connection is either accepted before a kill/unbind (and
            // killed by it) or not at all.
            let next = poll_fn(|cx| {
                let l = lock(&self.listen);
                let Some(listener) = l.listener.as_ref() else {
                    return Poll::Ready(None);
                };
                listener
                    .poll_accept(cx)
                    .map(|r| Some(r.map(|(s, _)| (s, self.kill.subscribe()))))
            })
            .await;
            match next {
                None => return,
                Some(Ok((stream, kill))) => self.spawn_conn(stream, kill),
                // EMFILE and the like: back off a little instead of spinning.
                Some(Err(_)) => sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn spawn_conn(self: &Arc<Self>, stream: TcpStream, mut kill: watch::Receiver<u64>) {
        self.accepted.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
        let guard = OpenGuard(Arc::clone(self));
        let conn = (self.serve)(Arc::clone(self), stream);
        self.rt.spawn(async move {
            let _guard = guard;
            tokio::select! {
                biased;
                _ = kill.changed() => {}
                () = conn => {}
            }
        });
    }

    fn set_mode(self: &Arc<Self>, m: M) {
        let mut l = lock(&self.listen);
        let was = self.mode.send_replace(m);
        if self.stopped.load(Relaxed) {
            return;
        }
        match (was.is_down(), m.is_down()) {
            (false, true) => {
                self.unbind(&mut l);
                self.kill_all();
            }
            (true, false) => self.rebind(&mut l),
            _ => {}
        }
    }

    fn set_upstream(&self, a: SocketAddr) {
        let _l = lock(&self.listen);
        *lock(&self.upstream) = a;
        self.kill_all();
    }

    fn reset_connections(&self) {
        let _l = lock(&self.listen);
        self.kill_all();
    }

    fn upstream(&self) -> SocketAddr {
        *lock(&self.upstream)
    }

    fn is_listening(&self) -> bool {
        lock(&self.listen).listener.is_some()
    }

    fn stop(&self) {
        let mut l = lock(&self.listen);
        self.stopped.store(true, Relaxed);
        self.unbind(&mut l);
        self.kill_all();
    }

    async fn shutdown(&self) {
        self.stop();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.open.load(Relaxed) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(2)).await;
        }
    }
}

struct OpenGuard<M: Mode>(Arc<Core<M>>);

impl<M: Mode> Drop for OpenGuard<M> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Reads and discards until the peer goes away or the mode leaves `Blackhole` (then the caller
/// closes the connection: its stream lost data).
async fn discard_until_healed<M: Mode>(s: &mut TcpStream, mode_rx: &mut watch::Receiver<M>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            c = mode_rx.changed() => {
                let healed = c.is_err() || !mode_rx.borrow_and_update().is_blackhole();
                if healed { return }
            }
        }
    }
}

/// The public API both proxies share.
macro_rules! common_api {
    ($proxy:ident, $mode:ty) => {
        impl $proxy {
            /// The proxy's name (for diagnostics).
            pub fn name(&self) -> &str {
                &self.core.name
            }
            /// The address clients connect to; fixed for the proxy's life.
            pub fn addr(&self) -> SocketAddr {
                self.core.addr
            }
            /// Where new connections go.
            pub fn upstream(&self) -> SocketAddr {
                self.core.upstream()
            }
            /// Re-points the proxy (failover) and closes every current connection.
            pub fn set_upstream(&self, a: SocketAddr) {
                self.core.set_upstream(a);
            }
            /// The current fault mode.
            pub fn mode(&self) -> $mode {
                *self.core.mode.borrow()
            }
            /// Changes the fault mode; takes effect at once, also on existing connections.
            pub fn set_mode(&self, m: $mode) {
                self.core.set_mode(m);
            }
            /// Closes every current connection (connection loss); the mode is unchanged.
            pub fn reset_connections(&self) {
                self.core.reset_connections();
            }
            /// Whether the listening socket is bound (false while `Down`, after shutdown, or
            /// while a re-bind is being retried).
            pub fn is_listening(&self) -> bool {
                self.core.is_listening()
            }
            /// Closes the listener and every connection and waits (briefly) for the connection
            /// tasks to finish. Dropping the proxy does the same without waiting.
            pub async fn shutdown(&self) {
                self.core.shutdown().await;
            }
        }

        impl Drop for $proxy {
            fn drop(&mut self) {
                self.core.stop();
            }
        }

        impl fmt::Debug for $proxy {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($proxy))
                    .field("name", &self.core.name)
                    .field("addr", &self.core.addr)
                    .field("upstream", &self.upstream())
                    .field("mode", &self.mode())
                    .finish()
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// TCP

/// A byte-splicing TCP proxy with injectable faults (see the module doc).
pub struct TcpFaultProxy {
    core: Arc<Core<TcpMode>>,
}

common_api!(TcpFaultProxy, TcpMode);

impl TcpFaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 (below the ephemeral range) forwarding to
    /// `upstream`, in [`TcpMode::Pass`].
    pub async fn start(name: &str, upstream: SocketAddr) -> io::Result<Arc<TcpFaultProxy>> {
        let core = Core::start(name, upstream, |core, s| Box::pin(tcp_conn(core, s))).await?;
        Ok(Arc::new(TcpFaultProxy { core }))
    }

    /// The counters (diagnostics and tests).
    pub fn stats(&self) -> TcpStats {
        let c = &self.core;
        TcpStats {
            accepted: c.accepted.load(Relaxed),
            open: c.open.load(Relaxed),
            upstream_errors: c.upstream_errors.load(Relaxed),
        }
    }
}

async fn tcp_conn(core: Arc<Core<TcpMode>>, mut client: TcpStream) {
    let _ = client.set_nodelay(true);
    let mut mode_rx = core.mode.subscribe();
    let initial = *mode_rx.borrow_and_update();
    match initial {
        TcpMode::Down => return,
        // Partitioned from the start: no upstream connection at all.
        TcpMode::Blackhole => return discard_until_healed(&mut client, &mut mode_rx).await,
        TcpMode::Pass | TcpMode::Latency(_) => {}
    }
    let mut up = match timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        TcpStream::connect(core.upstream()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => {
            core.upstream_errors.fetch_add(1, Relaxed);
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let tainted = AtomicBool::new(false);
    let (cr, cw) = client.split();
    let (ur, uw) = up.split();
    let pump =
        async { tokio::try_join!(pipe(cr, uw, &core, &tainted), pipe(ur, cw, &core, &tainted)) };
    tokio::pin!(pump);
    loop {
        tokio::select! {
            _ = &mut pump => return,
            c = mode_rx.changed() => {
                if c.is_err() {
                    return;
                }
                let m = *mode_rx.borrow_and_update();
                if m == TcpMode::Down || (m != TcpMode::Blackhole && tainted.load(Relaxed)) {
                    return;
                }
            }
        }
    }
}

/// One direction of a TCP connection: a reader stamping each chunk with its delivery time and a
/// writer delivering in order at that time (latency without a bandwidth cap). Ends with `Ok` after
/// forwarding EOF (half-close), with `Err` on any I/O error (the caller then drops both sides).
async fn pipe<R, W>(
    mut r: R,
    mut w: W,
    core: &Core<TcpMode>,
    tainted: &AtomicBool,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(CHUNK_QUEUE);
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r.read(&mut buf).await?;
            let now = Instant::now();
            let mode = *core.mode.borrow();
            let at = match mode {
                TcpMode::Pass => now,
                TcpMode::Latency(d) => now + d,
                TcpMode::Blackhole | TcpMode::Down => {
                    if n == 0 {
                        // The peer left during the partition: nothing more to wait for.
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    tainted.store(true, Relaxed);
                    continue;
                }
            };
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((at, chunk)).await.is_err() || n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            if at > Instant::now() {
                sleep_until(at).await;
            }
            match chunk {
                Some(c) => w.write_all(&c).await?,
                None => {
                    w.shutdown().await?;
                    break;
                }
            }
        }
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// An HTTP/1.1 proxy with injectable per-request faults (see the module doc).
pub struct HttpFaultProxy {
    core: Arc<Core<HttpMode>>,
}

common_api!(HttpFaultProxy, HttpMode);

impl HttpFaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 (below the ephemeral range) forwarding to
    /// `upstream`, in [`HttpMode::Pass`].
    pub async fn start(name: &str, upstream: SocketAddr) -> io::Result<Arc<HttpFaultProxy>> {
        let core = Core::start(name, upstream, |core, s| Box::pin(http_conn(core, s))).await?;
        Ok(Arc::new(HttpFaultProxy { core }))
    }

    /// Make the mode apply only to requests calling JSON-RPC `method` (alone or in a batch);
    /// other requests pass. `None`: every request (the default).
    pub fn set_scope(&self, method: Option<&str>) {
        *lock(&self.core.scope) = method.map(str::to_string);
    }

    /// The counters (diagnostics and tests).
    pub fn stats(&self) -> HttpStats {
        let c = &self.core;
        HttpStats {
            accepted: c.accepted.load(Relaxed),
            open: c.open.load(Relaxed),
            forwarded: c.forwarded.load(Relaxed),
            failed_by_fault: c.faulted.load(Relaxed),
            swallowed_sends: c.swallowed.load(Relaxed),
            upstream_errors: c.upstream_errors.load(Relaxed),
        }
    }
}

async fn http_conn(core: Arc<Core<HttpMode>>, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let mut mode_rx = core.mode.subscribe();
    let mut c = Wire::new(client);
    let mut up: Option<Wire> = None;
    loop {
        let Ok(Some(req)) = read_request(&mut c).await else {
            return;
        };
        let mut mode = *mode_rx.borrow_and_update();
        let in_scope = in_scope(&core, req.json());
        if !in_scope && !matches!(mode, HttpMode::Down) {
            mode = HttpMode::Pass;
        }
        match mode {
            HttpMode::Down => return,
            HttpMode::Blackhole => {
                core.faulted.fetch_add(1, Relaxed);
                return discard_until_healed(&mut c.s, &mut mode_rx).await;
            }
            HttpMode::Status503 => {
                core.faulted.fetch_add(1, Relaxed);
                let answer = canned(
                    "503 Service Unavailable",
                    "service unavailable (injected fault)\n",
                    req.close,
                );
                if c.s.write_all(&answer).await.is_err() || req.close {
                    return;
                }
                continue;
            }
            HttpMode::AmbiguousSend if calls_send_raw(req.json()) => {
                if forward(&core, &mut up, &req).await.is_ok() {
                    core.swallowed.fetch_add(1, Relaxed);
                }
                return;
            }
            HttpMode::Latency(d) => sleep(d).await,
            HttpMode::Pass | HttpMode::AmbiguousSend => {}
        }
        let resp = match forward(&core, &mut up, &req).await {
            Ok(r) => r,
            Err(Unreachable) => {
                let answer = canned("502 Bad Gateway", "upstream unreachable\n", true);
                let _ = c.s.write_all(&answer).await;
                return;
            }
            Err(Broken) => return,
        };
        // Partitioned while the request was at the upstream: the answer is lost too.
        let now = *mode_rx.borrow_and_update();
        if now.is_blackhole() && in_scope {
            core.faulted.fetch_add(1, Relaxed);
            return discard_until_healed(&mut c.s, &mut mode_rx).await;
        }
        if c.s.write_all(&resp.raw).await.is_err() || req.close || resp.close {
            return;
        }
    }
}

use FwdError::{Broken, Unreachable};

enum FwdError {
    /// Nothing was sent: the upstream could not be connected to.
    Unreachable,
    /// The upstream failed after (part of) the request was sent.
    Broken,
}

/// Sends `req` on the connection's upstream keep-alive connection (opening one if needed) and
/// reads the answer. A reused connection that turns out closed before answering a single byte
/// (the usual idle keep-alive race) is replaced once; should the upstream have processed the
/// request and closed without answering, it sees the request twice (harmless for a raw
/// transaction: same hash).
async fn forward(
    core: &Core<HttpMode>,
    up: &mut Option<Wire>,
    req: &Request,
) -> Result<Response, FwdError> {
    for attempt in 0..2 {
        let reused = up.is_some();
        let u = match up {
            Some(u) => u,
            None => {
                let conn = timeout(
                    UPSTREAM_CONNECT_TIMEOUT,
                    TcpStream::connect(core.upstream()),
                );
                match conn.await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        up.insert(Wire::new(s))
                    }
                    _ => {
                        core.upstream_errors.fetch_add(1, Relaxed);
                        return Err(Unreachable);
                    }
                }
            }
        };
        let before = u.received;
        let exchange = async {
            u.s.write_all(&req.head).await?;
            u.s.write_all(&req.body).await?;
            read_response(u, req.is_head).await
        };
        let result = timeout(UPSTREAM_RESPONSE_TIMEOUT, exchange).await;
        if let Ok(Ok(Some(resp))) = result {
            core.forwarded.fetch_add(1, Relaxed);
            if resp.close || req.close {
                *up = None;
            }
            return Ok(resp);
        }
        let silent = result.is_ok() && u.received == before;
        *up = None;
        if !(reused && silent && attempt == 0) {
            break;
        }
    }
    core.upstream_errors.fetch_add(1, Relaxed);
    Err(Broken)
}

/// Whether the proxy's fault applies to a request with this body (its scope, if any).
fn in_scope(core: &Core<HttpMode>, body: &[u8]) -> bool {
    match lock(&core.scope).as_deref() {
        None => true,
        Some(m) => calls_any(body, &[m]),
    }
}

fn calls_send_raw(body: &[u8]) -> bool {
    calls_any(body, SEND_METHODS)
}

/// Whether a JSON-RPC body (a call or a batch) calls one of `methods`.
fn calls_any(body: &[u8], methods: &[&str]) -> bool {
    use serde_json::Value;
    let is_send = |v: &Value| {
        v.get("method")
            .and_then(Value::as_str)
            .is_some_and(|m| methods.contains(&m))
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(calls)) => calls.iter().any(is_send),
        Ok(call) => is_send(&call),
        Err(_) => false,
    }
}

fn canned(status: &str, body: &str, close: bool) -> Vec<u8> {
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// --- a minimal HTTP/1.1 message reader ----------------------------------------------------------

/// A TCP stream with a read buffer.
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
    /// Bytes read from the stream so far.
    received: u64,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Wire {
    fn new(s: TcpStream) -> Wire {
        Wire {
            s,
            buf: Vec::new(),
            received: 0,
        }
    }

    /// Reads more into the buffer; `false` at EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(CHUNK);
        let n = self.s.read_buf(&mut self.buf).await?;
        self.received += n as u64;
        Ok(n > 0)
    }

    /// The next message head (through the blank line); `None` on EOF before any byte of it.
    async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned: usize = 0;
        loop {
            let from = scanned.saturating_sub(3);
            if let Some(i) = find(&self.buf[from..], b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..from + i + 4).collect()));
            }
            scanned = self.buf.len();
            if scanned > MAX_HEAD {
                return Err(invalid("HTTP head too large"));
            }
            if !self.fill().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Moves exactly `n` bytes to `out`.
    async fn take(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        out.extend(self.buf.drain(..n));
        Ok(())
    }

    /// Moves one CRLF-terminated line to `out`; returns it without the CRLF.
    async fn line(&mut self, out: &mut Vec<u8>) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                out.extend(self.buf.drain(..i + 2));
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(invalid("HTTP line too long"));
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Moves everything up to EOF to `out`.
    async fn until_eof(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while self.fill().await? {
            if self.buf.len() > MAX_BODY {
                return Err(invalid("HTTP body too large"));
            }
        }
        out.append(&mut self.buf);
        Ok(())
    }
}

/// What matters of a message head.
struct Head {
    start: String,
    content_length: Option<usize>,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(&raw[..raw.len() - 4]);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let mut head = Head {
        start,
        content_length: None,
        transfer_encoding: false,
        chunked: false,
        close: false,
        keep_alive: false,
    };
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("bad HTTP header"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| invalid("bad Content-Length"))?;
            if head.content_length.is_some_and(|m| m != n) || n > MAX_BODY {
                return Err(invalid("bad Content-Length"));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            head.chunked = last.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                head.close |= token.eq_ignore_ascii_case("close");
                head.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    Ok(head)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads a body framed as `framing`; returns the bytes as received and, for chunked framing, the
/// decoded payload.
async fn read_body(w: &mut Wire, framing: Framing) -> io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut raw = Vec::new();
    match framing {
        Framing::Length(n) => w.take(n, &mut raw).await?,
        Framing::UntilClose => w.until_eof(&mut raw).await?,
        Framing::Chunked => {
            let mut decoded = Vec::new();
            loop {
                let line = w.line(&mut raw).await?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size =
                    usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    while !w.line(&mut raw).await?.is_empty() {}
                    break;
                }
                if decoded.len() + size > MAX_BODY {
                    return Err(invalid("HTTP body too large"));
                }
                let at = raw.len();
                w.take(size + 2, &mut raw).await?;
                if !raw.ends_with(b"\r\n") {
                    return Err(invalid("bad chunk"));
                }
                decoded.extend_from_slice(&raw[at..at + size]);
            }
            return Ok((raw, Some(decoded)));
        }
    }
    Ok((raw, None))
}

struct Request {
    head: Vec<u8>,
    body: Vec<u8>,
    decoded: Option<Vec<u8>>,
    is_head: bool,
    /// The client asked for the connection to be closed after the answer.
    close: bool,
}

impl Request {
    fn json(&self) -> &[u8] {
        self.decoded.as_deref().unwrap_or(&self.body)
    }
}

/// The next request on a client connection; `None` when the client closed between requests.
async fn read_request(w: &mut Wire) -> io::Result<Option<Request>> {
    let Some(raw) = w.head().await? else {
        return Ok(None);
    };
    let head = parse_head(&raw)?;
    let framing = if head.chunked {
        Framing::Chunked
    } else if head.transfer_encoding {
        return Err(invalid("unsupported Transfer-Encoding"));
    } else {
        Framing::Length(head.content_length.unwrap_or(0))
    };
    let (body, decoded) = read_body(w, framing).await?;
    let mut parts = head.start.split(' ');
    let method = parts.next().unwrap_or_default();
    let http10 = head.start.ends_with("HTTP/1.0");
    Ok(Some(Request {
        is_head: method == "HEAD",
        close: head.close || (http10 && !head.keep_alive),
        head: raw,
        body,
        decoded,
    }))
}

struct Response {
    /// Head and body as received.
    raw: Vec<u8>,
    /// The upstream connection ends after this response.
    close: bool,
}

/// The next response on an upstream connection (interim 1xx responses are dropped); `None` when
/// the upstream closed before sending a byte of it.
async fn read_response(w: &mut Wire, to_head: bool) -> io::Result<Option<Response>> {
    loop {
        let Some(mut raw) = w.head().await? else {
            return Ok(None);
        };
        let head = parse_head(&raw)?;
        let status: u16 = head
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad HTTP status line"))?;
        if (100..200).contains(&status) {
            continue;
        }
        let framing = if to_head || status == 204 || status == 304 {
            Framing::Length(0)
        } else if head.chunked {
            Framing::Chunked
        } else if let (false, Some(n)) = (head.transfer_encoding, head.content_length) {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let (body, _) = read_body(w, framing).await?;
        raw.extend_from_slice(&body);
        let http10 = head.start.starts_with("HTTP/1.0");
        let close = head.close || framing == Framing::UntilClose || (http10 && !head.keep_alive);
        return Ok(Some(Response { raw, close }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHORT: Duration = Duration::from_millis(250);

    /// An upstream answering each chunk with `tag` followed by the chunk.
    async fn echo_server(tag: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        let mut out = tag.to_vec();
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], tag: &[u8]) -> Vec<u8> {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; tag.len() + msg.len()];
        timeout(Duration::from_secs(2), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    }

    /// True when the peer closed (EOF or reset) within a second.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 64];
        matches!(
            timeout(Duration::from_secs(1), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test(crate = "tokio")]
    async fn tcp_pass_forwards_both_ways() {
        let up = echo_server(b"A:").await;
        let p = TcpFaultProxy::start("db", up).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"hello", b"A:").await, b"A:hello");
        assert_eq!(roundtrip(&mut s, b"again", b"A:").await, b"A:again");
        let st = p.stats();
        assert_eq!((st.accepted, st.open), (1, 1));
        drop(s);
        p.shutdown().await;
        assert_eq!(p.stats().open, 0);
    }

    #[tokio::test(crate = "tokio")]
    async fn tcp_latency_delays_each_direction() {
        let up = echo_server(b"A:").await;
        let p = TcpFaultProxy::start("db", up).await.unwrap();
        p.set_mode(TcpMode::Latency(Duration::from_millis(100)));
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let t = Instant::now();
        assert_eq!(roundtrip(&mut s, b"x", b"A:").await, b"A:x");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        p.set_mode(TcpMode::Pass);
        let t = Instant::now();
        roundtrip(&mut s, b"y", b"A:").await;
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(crate = "tokio")]
    async fn tcp_blackhole_times_out_but_keeps_connections_open() {
        let up = echo_server(b"A:").await;
        let p = TcpFaultProxy::start("db", up).await.unwrap();
        let mut old = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut old, b"1", b"A:").await;
        let mut idle = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut idle, b"1", b"A:").await;
        p.set_mode(TcpMode::Blackhole);
        let mut new = TcpStream::connect(p.addr()).await.unwrap();
        let mut b = [0u8; 8];
        for s in [&mut old, &mut new] {
            s.write_all(b"lost").await.unwrap();
            assert!(
                timeout(SHORT, s.read(&mut b)).await.is_err(),
                "read must time out"
            );
        }
        assert_eq!(p.stats().open, 3);
        // Healing closes the connections that lost data; the untouched one carries on.
        p.set_mode(TcpMode::Pass);
        assert!(closed(&mut old).await);
        assert!(closed(&mut new).await);
        assert_eq!(roundtrip(&mut idle, b"2", b"A:").await, b"A:2");
    }

    #[tokio::test(crate = "tokio", flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_down_refuses_and_pass_rebinds_same_port() {
        let up = echo_server(b"A:").await;
        let p = TcpFaultProxy::start("db", up).await.unwrap();
        let addr = p.addr();
        let mut s = TcpStream::connect(addr).await.unwrap();
        roundtrip(&mut s, b"1", b"A:").await;
        p.set_mode(TcpMode::Down);
        assert!(!p.is_listening());
        let e = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(closed(&mut s).await);
        p.set_mode(TcpMode::Pass);
        assert_eq!(p.addr(), addr);
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"back", b"A:").await, b"A:back");
    }

    #[tokio::test(crate = "tokio", flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_reset_and_set_upstream_close_connections() {
        let a = echo_server(b"A:").await;
        let b = echo_server(b"B:").await;
        let p = TcpFaultProxy::start("db", a).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut s, b"1", b"A:").await;
        p.reset_connections();
        assert!(closed(&mut s).await);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"2", b"A:").await, b"A:2");
        p.set_upstream(b);
        assert!(closed(&mut s).await);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"3", b"B:").await, b"B:3");
        assert_eq!(p.mode(), TcpMode::Pass);
        assert_eq!(p.stats().accepted, 3);
    }

    #[tokio::test(crate = "tokio")]
    async fn tcp_unreachable_upstream_closes_client() {
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let p = TcpFaultProxy::start("db", gone).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(closed(&mut s).await);
        assert_eq!(p.stats().upstream_errors, 1);
    }

    #[tokio::test(crate = "tokio")]
    async fn shutdown_and_drop_release_the_port() {
        let up = echo_server(b"A:").await;
        let p = TcpFaultProxy::start("db", up).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut s, b"1", b"A:").await;
        p.shutdown().await;
        assert!(closed(&mut s).await);
        assert_eq!(p.stats().open, 0);
        p.set_mode(TcpMode::Down);
        p.set_mode(TcpMode::Pass); // no re-bind after shutdown
        assert!(TcpStream::connect(p.addr()).await.is_err());

        let h = HttpFaultProxy::start("rpc", up).await.unwrap();
        let addr = h.addr();
        drop(h);
        let e = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    // --- HTTP ---

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A JSON-RPC upstream recording the methods it was called with and answering `result`
    /// (with Content-Length, or chunked).
    async fn rpc_server(result: &'static str, chunked: bool) -> (SocketAddr, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Seen::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut w = Wire::new(s);
                    while let Ok(Some(req)) = read_request(&mut w).await {
                        let v: serde_json::Value = serde_json::from_slice(req.json()).unwrap();
                        let calls = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
                        for c in calls {
                            lock(&seen).push(c["method"].as_str().unwrap().to_string());
                        }
                        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{result}"}}"#);
                        let answer = if chunked {
                            let (a, b) = body.split_at(10);
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                                a.len(),
                                b.len()
                            )
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        };
                        if w.s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    fn client(t: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(t)
            .build()
            .unwrap()
    }

    fn call(method: &str) -> serde_json::Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": []})
    }

    async fn rpc(
        c: &reqwest::Client,
        p: &HttpFaultProxy,
        body: serde_json::Value,
    ) -> reqwest::Result<(u16, String)> {
        let r = c
            .post(format!("http://{}/", p.addr()))
            .json(&body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    #[tokio::test(crate = "tokio")]
    async fn http_pass_keep_alive_many_requests_one_connection() {
        let (up, seen) = rpc_server("0x1", false).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        let c = client(Duration::from_secs(2));
        for _ in 0..5 {
            let (status, body) = rpc(&c, &p, call("eth_blockNumber")).await.unwrap();
            assert_eq!(status, 200);
            assert!(body.contains("0x1"), "{body}");
        }
        let st = p.stats();
        assert_eq!((st.accepted, st.forwarded, st.failed_by_fault), (1, 5, 0));
        assert_eq!(lock(&seen).len(), 5);

        // By hand on one connection: one request, then two pipelined.
        let mut w = Wire::new(TcpStream::connect(p.addr()).await.unwrap());
        let req = post(&call("eth_chainId"));
        w.s.write_all(&req).await.unwrap();
        assert!(read_response(&mut w, false).await.unwrap().is_some());
        w.s.write_all(&[req.clone(), req].concat()).await.unwrap();
        for _ in 0..2 {
            let resp = read_response(&mut w, false).await.unwrap().unwrap();
            assert!(resp.raw.starts_with(b"HTTP/1.1 200"));
        }
        let st = p.stats();
        assert_eq!((st.accepted, st.forwarded), (2, 8));
    }

    fn post(body: &serde_json::Value) -> Vec<u8> {
        let body = body.to_string();
        format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    #[tokio::test(crate = "tokio")]
    async fn http_chunked_responses_pass() {
        let (up, _) = rpc_server("0xabc", true).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        let c = client(Duration::from_secs(2));
        for _ in 0..2 {
            let (status, body) = rpc(&c, &p, call("eth_chainId")).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, r#"{"jsonrpc":"2.0","id":1,"result":"0xabc"}"#);
        }
        assert_eq!(p.stats().accepted, 1);
    }

    #[tokio::test(crate = "tokio")]
    async fn http_latency_delays_requests() {
        let (up, _) = rpc_server("0x1", false).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        p.set_mode(HttpMode::Latency(Duration::from_millis(150)));
        let t = Instant::now();
        rpc(&client(Duration::from_secs(2)), &p, call("eth_blockNumber"))
            .await
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(crate = "tokio")]
    async fn http_status503_answers_without_forwarding() {
        let (up, seen) = rpc_server("0x1", false).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        p.set_mode(HttpMode::Status503);
        let c = client(Duration::from_secs(2));
        for _ in 0..2 {
            let (status, _) = rpc(&c, &p, call("eth_blockNumber")).await.unwrap();
            assert_eq!(status, 503);
        }
        assert!(lock(&seen).is_empty());
        let st = p.stats();
        assert_eq!((st.accepted, st.failed_by_fault, st.forwarded), (1, 2, 0));
        p.set_mode(HttpMode::Pass);
        assert_eq!(rpc(&c, &p, call("eth_blockNumber")).await.unwrap().0, 200);
    }

    #[tokio::test(crate = "tokio")]
    async fn http_scoped_faults_hit_only_their_method() {
        let (up, seen) = rpc_server("0x1", false).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        p.set_scope(Some("eth_call"));
        p.set_mode(HttpMode::Status503);
        let c = client(Duration::from_secs(2));
        assert_eq!(rpc(&c, &p, call("eth_call")).await.unwrap().0, 503);
        assert_eq!(rpc(&c, &p, call("eth_blockNumber")).await.unwrap().0, 200);
        assert_eq!(
            lock(&seen).len(),
            1,
            "only the other method reached the node"
        );
        // A scoped black hole: the method times out, other requests still pass.
        p.set_mode(HttpMode::Blackhole);
        let e = rpc(&client(SHORT), &p, call("eth_call")).await.unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert_eq!(rpc(&c, &p, call("eth_blockNumber")).await.unwrap().0, 200);
        p.set_mode(HttpMode::Pass);
        p.set_scope(None);
        assert_eq!(rpc(&c, &p, call("eth_call")).await.unwrap().0, 200);
    }

    #[tokio::test(crate = "tokio")]
    async fn http_blackhole_times_out() {
        let (up, seen) = rpc_server("0x1", false).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        p.set_mode(HttpMode::Blackhole);
        let e = rpc(&client(SHORT), &p, call("eth_blockNumber"))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(lock(&seen).is_empty());
        assert_eq!(p.stats().failed_by_fault, 1);
    }

    #[tokio::test(crate = "tokio")]
    async fn http_ambiguous_send_forwards_but_withholds_the_answer() {
        let (up, seen) = rpc_server("0x1", false).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        p.set_mode(HttpMode::AmbiguousSend);
        let c = client(Duration::from_secs(2));
        let e = rpc(&c, &p, call("eth_sendRawTransaction"))
            .await
            .unwrap_err();
        assert!(!e.is_timeout(), "{e:?}");
        let batch = json!([call("eth_blockNumber"), call("eth_sendRawTransaction")]);
        assert!(rpc(&c, &p, batch).await.is_err());
        let (status, _) = rpc(&c, &p, call("eth_blockNumber")).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            *lock(&seen),
            [
                "eth_sendRawTransaction",
                "eth_blockNumber",
                "eth_sendRawTransaction",
                "eth_blockNumber"
            ]
        );
        let st = p.stats();
        assert_eq!((st.swallowed_sends, st.forwarded), (2, 3));
    }

    #[tokio::test(crate = "tokio")]
    async fn http_down_refuses_and_pass_rebinds_same_port() {
        let (up, _) = rpc_server("0x1", false).await;
        let p = HttpFaultProxy::start("rpc", up).await.unwrap();
        let addr = p.addr();
        p.set_mode(HttpMode::Down);
        let e = rpc(&client(Duration::from_secs(2)), &p, call("eth_blockNumber"))
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        p.set_mode(HttpMode::Pass);
        assert_eq!(p.addr(), addr);
        assert_eq!(
            rpc(&client(Duration::from_secs(2)), &p, call("eth_blockNumber"))
                .await
                .unwrap()
                .0,
            200
        );
    }

    #[tokio::test(crate = "tokio")]
    async fn http_set_upstream_closes_connections_and_switches() {
        let (a, _) = rpc_server("0xa", false).await;
        let (b, _) = rpc_server("0xb", false).await;
        let p = HttpFaultProxy::start("rpc", a).await.unwrap();
        let mut w = Wire::new(TcpStream::connect(p.addr()).await.unwrap());
        w.s.write_all(&post(&call("eth_blockNumber")))
            .await
            .unwrap();
        let resp = read_response(&mut w, false).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&resp.raw).contains("0xa"));
        p.set_upstream(b);
        assert!(closed(&mut w.s).await);
        let (_, body) = rpc(&client(Duration::from_secs(2)), &p, call("eth_blockNumber"))
            .await
            .unwrap();
        assert!(body.contains("0xb"), "{body}");
    }

    #[tokio::test(crate = "tokio")]
    async fn http_unreachable_upstream_answers_502() {
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let p = HttpFaultProxy::start("rpc", gone).await.unwrap();
        let (status, _) = rpc(&client(Duration::from_secs(2)), &p, call("eth_blockNumber"))
            .await
            .unwrap();
        assert_eq!(status, 502);
        assert_eq!(p.stats().upstream_errors, 1);
    }

    #[test]
    fn recognises_sends() {
        assert!(calls_send_raw(
            br#"{"method":"eth_sendRawTransaction","params":["0x"]}"#
        ));
        assert!(calls_send_raw(
            br#"[{"method":"eth_call"},{"method":"eth_sendRawTransaction"}]"#
        ));
        assert!(!calls_send_raw(br#"{"method":"eth_blockNumber"}"#));
        assert!(!calls_send_raw(b"not json"));
    }
}
