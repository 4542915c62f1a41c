//! Simulated PostgreSQL hosts: a primary and replicas serving the engine's store operations over
//! the simulated network, with synchronous or asynchronous replication.
//!
//! Each host has a *disk* (its [`DbModel`] and write-ahead log) that survives a crash, and a
//! *process* (the server loop, replication senders, in-flight requests) that a crash loses. A
//! write is committed when it is in the primary's log; under synchronous replication it is
//! acknowledged only once a replica has it too (like `synchronous_standby_names = 'ANY 1 (…)'`),
//! so a failover to the most advanced replica loses no acknowledged write. Under asynchronous
//! replication a replica receives commits `replication_lag_ms` later, and what a failover loses
//! is measured and traced. A replica (or a demoted primary) refuses writes with SQLSTATE 25006,
//! as PostgreSQL does in a read-only transaction.

use super::net::{serve, CallError, Client};
use super::{db_addr, epoch_ms, ip, t_ms, DB_PORT, DB_SERVICE};
use crate::db::audit::Watermarks;
use crate::db::{DbCall, DbModel, DbReply, DbRequest};
use crate::rng::SimRng;
use crate::scenario::Replication;
use crate::trace::Trace;
use dalp_engine::error::{EngineError, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Clone, Debug)]
pub struct WalEntry {
    pub lsn: u64,
    pub req: DbRequest,
    pub now_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// What survives a crash.
#[derive(Clone)]
pub struct Disk {
    pub model: DbModel,
    /// What this disk's model has shown so far, for its invariants (`db::audit`).
    pub watermarks: Watermarks,
    /// Every committed write, in order; `lsn = index + 1`.
    pub wal: Vec<WalEntry>,
    pub role: Role,
}

impl Disk {
    pub fn lsn(&self) -> u64 {
        self.wal.len() as u64
    }
}

// Sent boxed through the simulated network, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum DbMsg {
    Query(DbRequest),
    /// Log entries for a replica, starting anywhere at or below its next LSN.
    Replicate(Vec<WalEntry>),
}

// Sent boxed through the simulated network, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum DbAnswer {
    Query(Result<DbReply>),
    /// The replica's LSN after applying.
    Ack(u64),
}

/// A session left inside a transaction holding one workflow's row lock (fault
/// `db_stale_session`): it lives in host `host`'s server process until `until_ms` (run time), or
/// for ever when the engine's connections set no idle-in-transaction bound.
#[derive(Clone, Copy, Debug)]
pub struct StaleSession {
    pub host: usize,
    pub until_ms: Option<u64>,
}

impl StaleSession {
    /// Whether the server has not ended it by `now_ms`.
    fn alive_at(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }
}

/// Faults that act inside the database process (the injector sets them).
#[derive(Default)]
pub struct DbFaults {
    pub conn_reset: u32,
    pub lost_ack: Vec<f64>,
    pub extra_latency_ms: Vec<u64>,
}

pub struct DbCluster {
    pub disks: Vec<Arc<Mutex<Disk>>>,
    pub replication: Replication,
    pub lag_ms: u64,
    pub faults: Mutex<DbFaults>,
    pub primary: Mutex<usize>,
    /// (host, LSN) of every commit whose success reached the client: what "acknowledged" means
    /// when a failover's loss is judged.
    pub acknowledged: Mutex<std::collections::BTreeSet<(usize, u64)>>,
    /// Requests served per store operation (for the run's statistics).
    pub calls: Mutex<BTreeMap<&'static str, u64>>,
    /// A primary demoted by a planned switchover that still ships its log's tail to the
    /// replicas (PostgreSQL's walsenders send everything up to the shutdown checkpoint before a
    /// clean stop); cleared once a replica is promoted.
    pub draining: Mutex<Option<usize>>,
    /// Every committed claim: (run ms, node, workflow ids). Who held which workflow when, for
    /// isolation's attribution of work to the engine a fault took down.
    pub claims: Mutex<Vec<(u64, String, Vec<i64>)>>,
    /// Row locks of sessions left inside a transaction, by workflow (fault `db_stale_session`).
    pub stale_sessions: Mutex<BTreeMap<i64, StaleSession>>,
    /// What the engine's connections set as `idle_in_transaction_session_timeout`
    /// (`dalp_engine::store::idle_in_transaction_bound`), which this server honours as
    /// PostgreSQL does; `statement_timeout` likewise bounds a wait on a lock.
    pub idle_in_transaction_ms: Option<u64>,
    pub statement_timeout_ms: u64,
    /// Writes the database accepted from a holder whose fencing token was already superseded
    /// (observed from outside the store's own check, so a store that forgets to fence shows).
    pub stale_writes_accepted: Mutex<Vec<serde_json::Value>>,
    rng: Mutex<SimRng>,
    pub trace: Trace,
}

impl DbCluster {
    /// `db_timeout_ms`: the engine's database timeout, which its connections also set as
    /// `statement_timeout` and from which they derive their idle-in-transaction bound.
    pub fn new(
        hosts: usize,
        replication: Replication,
        lag_ms: u64,
        seed: u64,
        db_timeout_ms: u64,
        trace: Trace,
    ) -> Arc<Self> {
        assert!(hosts >= 1);
        assert!(db_timeout_ms > 0, "the engine bounds every database call");
        let disks = (0..hosts)
            .map(|j| {
                Arc::new(Mutex::new(Disk {
                    model: DbModel::new(),
                    watermarks: Watermarks::default(),
                    wal: Vec::new(),
                    role: if j == 0 { Role::Primary } else { Role::Replica },
                }))
            })
            .collect();
        Arc::new(DbCluster {
            disks,
            replication,
            lag_ms,
            faults: Mutex::new(DbFaults::default()),
            primary: Mutex::new(0),
            acknowledged: Mutex::default(),
            calls: Mutex::default(),
            stale_writes_accepted: Mutex::default(),
            stale_sessions: Mutex::default(),
            claims: Mutex::default(),
            draining: Mutex::new(None),
            idle_in_transaction_ms: dalp_engine::store::idle_in_transaction_bound(
                Duration::from_millis(db_timeout_ms),
            )
            .map(|d| d.as_millis() as u64),
            statement_timeout_ms: db_timeout_ms,
            rng: Mutex::new(SimRng::new(seed).fork("db-faults")),
            trace,
        })
    }

    pub fn primary(&self) -> usize {
        *self.primary.lock().expect("primary lock")
    }

    /// `f` of the primary's model as it stands (for the checkers; read in place, not copied).
    pub fn with_primary_model<T>(&self, f: impl FnOnce(&DbModel) -> T) -> T {
        f(&self.disks[self.primary()].lock().expect("disk").model)
    }

    /// Promote `to` (pg_promote) and rebuild every other host except `down` from it
    /// (pg_basebackup / pg_rewind). Returns the commits the old primary had that `to` lacks.
    pub fn promote(&self, to: usize, old: usize) -> Vec<WalEntry> {
        let lost = {
            let old_disk = self.disks[old].lock().expect("disk");
            let new_lsn = self.disks[to].lock().expect("disk").lsn() as usize;
            old_disk.wal.get(new_lsn..).unwrap_or_default().to_vec()
        };
        self.disks[to].lock().expect("disk").role = Role::Primary;
        *self.primary.lock().expect("primary lock") = to;
        lost
    }

    /// Replace host `j`'s disk with a copy of the primary's, as a replica.
    pub fn rebuild_from_primary(&self, j: usize) {
        let p = self.primary();
        assert_ne!(j, p, "the primary is not rebuilt from itself");
        let mut copy = self.disks[p].lock().expect("disk").clone();
        copy.role = Role::Replica;
        *self.disks[j].lock().expect("disk") = copy;
    }

    /// Leave a session of host `host` inside a transaction holding `workflow`'s row lock, from
    /// now until the server's idle-in-transaction bound ends it. Returns when it ends (run ms).
    pub fn leave_stale_session(&self, host: usize, workflow: i64) -> Option<u64> {
        let until_ms = self.idle_in_transaction_ms.map(|b| t_ms() + b);
        self.stale_sessions
            .lock()
            .expect("stale sessions")
            .insert(workflow, StaleSession { host, until_ms });
        until_ms
    }

    /// Workflows whose row lock a live stale session of host `host` holds now.
    fn stale_locked(&self, host: usize) -> Vec<i64> {
        let now = t_ms();
        let mut s = self.stale_sessions.lock().expect("stale sessions");
        s.retain(|_, l| l.alive_at(now));
        s.iter()
            .filter(|(_, l)| l.host == host)
            .map(|(w, _)| *w)
            .collect()
    }

    /// A fenced write on a row a stale session holds waits for the lock, as PostgreSQL's
    /// `SELECT … FOR UPDATE` does, until the session ends or `statement_timeout` cancels it.
    async fn wait_for_row_lock(&self, host: usize, workflow: i64) -> Result<()> {
        let deadline = t_ms() + self.statement_timeout_ms;
        loop {
            let held = self
                .stale_sessions
                .lock()
                .expect("stale sessions")
                .get(&workflow)
                .copied()
                .filter(|l| l.host == host && l.alive_at(t_ms()));
            let Some(lock) = held else { return Ok(()) };
            let now = t_ms();
            if now >= deadline {
                return Err(EngineError::Db {
                    sqlstate: "57014".into(),
                    message: "canceling statement due to statement timeout".into(),
                });
            }
            let wake = lock.until_ms.map_or(deadline, |u| u.min(deadline));
            tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now).max(1))).await;
        }
    }

    fn roll(&self, rate: f64) -> bool {
        self.rng.lock().expect("rng").unit() < rate
    }
}

/// The server process of host `j` (re-run from scratch on restart).
pub async fn db_process(cluster: Arc<DbCluster>, j: usize) {
    let me = cluster.disks[j].clone();
    let hosts = cluster.disks.len();
    let (acked_tx, acked_rx) = watch::channel(0u64);
    let acked_tx = Arc::new(acked_tx);
    let wake = Arc::new(Notify::new());
    let acked: Arc<Mutex<BTreeMap<usize, u64>>> = Arc::default();
    let name = format!("db-{j}");
    // A (re)started server has no sessions: the old process's ended with it.
    cluster
        .stale_sessions
        .lock()
        .expect("stale sessions")
        .retain(|_, l| l.host != j);
    cluster.trace.record(
        t_ms(),
        &name,
        "db",
        "process_started",
        json!({"lsn": me.lock().expect("disk").lsn()}),
    );
    for r in (0..hosts).filter(|r| *r != j) {
        tokio::spawn(ship(
            cluster.clone(),
            j,
            r,
            wake.clone(),
            acked.clone(),
            acked_tx.clone(),
        ));
    }
    let handler = {
        let cluster = cluster.clone();
        move |msg: DbMsg, _from: SocketAddr| {
            let cluster = cluster.clone();
            let me = me.clone();
            let wake = wake.clone();
            let mut acked_rx = acked_rx.clone();
            let name = name.clone();
            async move {
                match msg {
                    DbMsg::Replicate(entries) => {
                        Some(DbAnswer::Ack(apply_replicated(&me, entries)))
                    }
                    DbMsg::Query(mut req) => {
                        *cluster
                            .calls
                            .lock()
                            .expect("calls")
                            .entry(req.name())
                            .or_default() += 1;
                        let (reset, lost_ack, latency) = {
                            let f = cluster.faults.lock().expect("faults");
                            (
                                f.conn_reset > 0,
                                f.lost_ack.iter().cloned().fold(0.0, f64::max),
                                f.extra_latency_ms.iter().sum::<u64>(),
                            )
                        };
                        if latency > 0 {
                            tokio::time::sleep(Duration::from_millis(latency)).await;
                        }
                        if reset {
                            return Some(DbAnswer::Query(Err(EngineError::DbUnavailable(
                                "connection reset by peer".into(),
                            ))));
                        }
                        // Row locks of stale sessions: claims skip them, fenced writes wait.
                        if let DbRequest::Claim { skip_locked, .. } = &mut req {
                            *skip_locked = cluster.stale_locked(j);
                        } else if let Some(f) = req.fence().filter(|_| req.is_write()) {
                            let wf = f.workflow_id;
                            if let Err(e) = cluster.wait_for_row_lock(j, wf).await {
                                return Some(DbAnswer::Query(Err(e)));
                            }
                        }
                        let (result, lsn) = {
                            let mut d = me.lock().expect("disk");
                            if d.role != Role::Primary && req.is_write() {
                                return Some(DbAnswer::Query(Err(EngineError::Db {
                                    sqlstate: "25006".into(),
                                    message: "cannot execute statement in a read-only transaction"
                                        .into(),
                                })));
                            }
                            let now = epoch_ms();
                            // The token the workflow holds before this write, to judge the write
                            // from outside the store (a release with a stale fence is a no-op).
                            let superseded = req
                                .fence()
                                .filter(|_| req.name() != "release")
                                .and_then(|f| {
                                    let cur =
                                        d.model.tables.workflows.get(&f.workflow_id)?.fencing_token;
                                    (f.token < cur).then(|| (f.clone(), cur))
                                });
                            let r = d.model.apply(&req, now);
                            if let (Some((f, cur)), true) =
                                (&superseded, DbModel::committed(&req, &r))
                            {
                                let ev = json!({"t_ms": t_ms(), "op": req.name(), "workflow": f.workflow_id,
                                                "ours": f.token, "current": cur, "node": f.node});
                                cluster.trace.record(
                                    t_ms(),
                                    &name,
                                    "db",
                                    "stale_write_accepted",
                                    ev.clone(),
                                );
                                cluster
                                    .stale_writes_accepted
                                    .lock()
                                    .expect("stale")
                                    .push(ev);
                            }
                            if let Err(EngineError::Fenced {
                                workflow_id,
                                ours,
                                current,
                            }) = &r
                            {
                                cluster.trace.record(
                                    t_ms(),
                                    &name,
                                    "db",
                                    "fenced",
                                    json!({"op": req.name(), "workflow": workflow_id, "ours": ours, "current": current,
                                           "node": req.fence().map(|f| f.node.clone())}),
                                );
                            }
                            let mut lsn = 0;
                            // What PostgreSQL would have committed (an empty claim writes
                            // nothing; a rejected requeue still commits its audit row).
                            let wrote = DbModel::committed(&req, &r);
                            if wrote {
                                let Disk {
                                    model, watermarks, ..
                                } = &mut *d;
                                if let Err(e) = watermarks.advance(model, &req) {
                                    panic!("database model invariant violated on {name}: {e}");
                                }
                                lsn = d.lsn() + 1;
                                d.wal.push(WalEntry {
                                    lsn,
                                    req: req.clone(),
                                    now_ms: now,
                                });
                            }
                            (r, lsn)
                        };
                        if let (DbRequest::Claim { node, .. }, Ok(DbReply::Claims(c)), true) =
                            (&req, &result, lsn > 0)
                        {
                            let ids = c.iter().map(|c| c.fence.workflow_id).collect();
                            cluster.claims.lock().expect("claims").push((
                                t_ms(),
                                node.clone(),
                                ids,
                            ));
                        }
                        if lsn > 0 {
                            cluster.trace.record(
                                t_ms(),
                                &name,
                                "db",
                                req.name(),
                                json!({"lsn": lsn}),
                            );
                            wake.notify_waiters();
                            if cluster.replication == Replication::Sync && hosts > 1 {
                                // Acknowledge only once a replica has the commit.
                                while *acked_rx.borrow() < lsn {
                                    if acked_rx.changed().await.is_err() {
                                        return None;
                                    }
                                }
                            }
                            cluster.acknowledged.lock().expect("acks").insert((j, lsn));
                            if lost_ack > 0.0 && cluster.roll(lost_ack) {
                                cluster.trace.record(
                                    t_ms(),
                                    &name,
                                    "fault",
                                    "ack_lost",
                                    json!({"lsn": lsn, "op": req.name()}),
                                );
                                return None;
                            }
                        }
                        Some(DbAnswer::Query(result))
                    }
                }
            }
        }
    };
    serve(db_addr(j), handler).await;
}

/// Apply the entries that extend this host's log, in order; returns its LSN.
fn apply_replicated(disk: &Mutex<Disk>, entries: Vec<WalEntry>) -> u64 {
    let mut d = disk.lock().expect("disk");
    if d.role == Role::Primary {
        // A primary never takes a log from elsewhere; report nothing applied.
        return 0;
    }
    for e in entries {
        if e.lsn == d.lsn() + 1 {
            let r = d.model.apply(&e.req, e.now_ms);
            assert!(
                DbModel::committed(&e.req, &r),
                "replica diverged applying lsn {} ({}): {r:?}",
                e.lsn,
                e.req.name()
            );
            let Disk {
                model, watermarks, ..
            } = &mut *d;
            if let Err(err) = watermarks.advance(model, &e.req) {
                panic!(
                    "database model invariant violated on a replica applying lsn {}: {err}",
                    e.lsn
                );
            }
            d.wal.push(e);
        }
    }
    d.lsn()
}

/// Ship the log to replica `r` while this host is the primary.
async fn ship(
    cluster: Arc<DbCluster>,
    me: usize,
    r: usize,
    wake: Arc<Notify>,
    acked: Arc<Mutex<BTreeMap<usize, u64>>>,
    acked_tx: Arc<watch::Sender<u64>>,
) {
    let client = Client::bind(ip(2, me));
    let disk = cluster.disks[me].clone();
    let lag = match cluster.replication {
        Replication::Sync => 0,
        Replication::Async => cluster.lag_ms,
    };
    loop {
        let notified = wake.notified();
        let (is_primary, batch) = {
            let d = disk.lock().expect("disk");
            let known = acked.lock().expect("acked").get(&r).copied();
            let now = epoch_ms();
            let batch: Vec<WalEntry> = match known {
                // First contact: ask where the replica is.
                None => Vec::new(),
                Some(a) => d
                    .wal
                    .get(a as usize..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|e| e.now_ms + lag <= now)
                    .take(512)
                    .cloned()
                    .collect(),
            };
            let draining = *cluster.draining.lock().expect("draining") == Some(me);
            (
                d.role == Role::Primary || draining,
                (known.is_none() || !batch.is_empty()).then_some(batch),
            )
        };
        if is_primary {
            if let Some(batch) = batch {
                let answer = client
                    .call::<DbMsg, DbAnswer>(
                        db_addr(r),
                        DbMsg::Replicate(batch),
                        Duration::from_millis(500),
                    )
                    .await;
                if let Ok(DbAnswer::Ack(lsn)) = answer {
                    let best = {
                        let mut a = acked.lock().expect("acked");
                        a.insert(r, lsn);
                        a.values().copied().max().unwrap_or(0)
                    };
                    acked_tx.send_if_modified(|v| {
                        let changed = best > *v;
                        *v = (*v).max(best);
                        changed
                    });
                    continue;
                }
            }
        }
        let tick = Duration::from_millis(if lag > 0 { lag.min(100) } else { 100 });
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// The engine's side: a client of `db.service`, like a connection pool with a DNS name. It keeps
/// the resolved address until a connection-level error, then resolves again — which is how a
/// re-pointed service name reaches it after failover.
pub struct NetDb {
    client: Client,
    cached: Mutex<Option<SocketAddr>>,
    timeout: Duration,
}

impl NetDb {
    /// A client on the host with address `ip`.
    pub fn connect(ip: IpAddr, timeout: Duration) -> Self {
        NetDb {
            client: Client::bind(ip),
            cached: Mutex::new(None),
            timeout,
        }
    }

    async fn resolve(&self) -> Result<SocketAddr> {
        if let Some(a) = *self.cached.lock().expect("cache") {
            return Ok(a);
        }
        let a = madsim::net::lookup_host((DB_SERVICE, DB_PORT))
            .await
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| EngineError::DbUnavailable(format!("cannot resolve {DB_SERVICE}")))?;
        *self.cached.lock().expect("cache") = Some(a);
        Ok(a)
    }

    fn forget(&self) {
        *self.cached.lock().expect("cache") = None;
    }
}

/// Errors after which a pool drops the connection and reconnects.
fn reconnect_worthy(e: &EngineError) -> bool {
    match e {
        EngineError::DbUnavailable(_) | EngineError::DbTimeout(_) => true,
        EngineError::Db { sqlstate, .. } => {
            sqlstate == "25006" || sqlstate.starts_with("08") || sqlstate == "57P01"
        }
        _ => false,
    }
}

#[async_trait::async_trait]
impl DbCall for NetDb {
    async fn call(&self, req: DbRequest) -> Result<DbReply> {
        let addr = self.resolve().await?;
        let out = match self
            .client
            .call::<DbMsg, DbAnswer>(addr, DbMsg::Query(req), self.timeout)
            .await
        {
            Ok(DbAnswer::Query(r)) => r,
            Ok(DbAnswer::Ack(_)) => Err(EngineError::Internal("replication ack to a query".into())),
            Err(CallError::Timeout) => Err(EngineError::DbTimeout(self.timeout.as_millis() as u64)),
        };
        if let Err(e) = &out {
            if reconnect_worthy(e) {
                self.forget();
            }
        }
        out
    }
}
