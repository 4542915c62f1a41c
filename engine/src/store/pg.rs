//! The production store: sqlx + PostgreSQL.
//!
//! sqlx has no query timeout of its own, so every database await goes through [`PgStore::bounded`]
//! and the connection sets `statement_timeout` too. Every fenced write locks the workflow row
//! (`FOR UPDATE`) and compares fencing tokens inside the same transaction as the write.

use super::*;
use crate::error::EngineError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::future::Future;
use std::str::FromStr;

pub struct PgStore {
    pool: PgPool,
    timeout: Duration,
}

const WF_COLS: &str =
    "id, kind, idempotency_key, input, status, current_step, state, result, error, attempts, fencing_token, lease_owner";
const TX_COLS: &str = "id, workflow_id, step_index, signer, chain_id, nonce, state, to_address, input, value, gas_limit, max_fee, priority_fee, raw, tx_hash, receipt";

impl PgStore {
    /// A transaction row (if any) as a record with every signed version loaded.
    async fn with_broadcasts(
        &self,
        row: Option<sqlx::postgres::PgRow>,
    ) -> std::result::Result<Option<TxRecord>, DbFail> {
        let Some(r) = row else { return Ok(None) };
        let mut rec = row_to_tx(&r)?;
        rec.broadcasts = load_broadcasts(&self.pool, rec.id).await?;
        Ok(Some(rec))
    }

    /// Connect (bounded by `timeout`) and run the migrations.
    pub async fn connect(url: &str, max_connections: u32, timeout: Duration) -> Result<Self> {
        let store = Self::open(url, max_connections, timeout)?;
        store.migrate().await?;
        Ok(store)
    }

    /// A store over an existing, migrated database that never changes the schema: for readers
    /// such as audits and the harness, which may face a read-only server.
    pub fn open(url: &str, max_connections: u32, timeout: Duration) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| {
                EngineError::Invalid(format!(
                    "database_url: {}",
                    redact_url_error(&e.to_string())
                ))
            })?
            .options([("statement_timeout", format!("{}", timeout.as_millis()))])
            .application_name("dalp-engine");
        // The server's own bound on a session left inside a transaction by a client that went
        // away mid-transaction (see `idle_in_transaction_bound`).
        let opts = match idle_in_transaction_bound(timeout) {
            Some(b) => opts.options([(
                "idle_in_transaction_session_timeout",
                format!("{}", b.as_millis()),
            )]),
            None => opts,
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_lazy_with(opts);
        Ok(PgStore { pool, timeout })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<()> {
        let migrator = sqlx::migrate!("./migrations");
        // Migrations may take longer than one statement; still bounded.
        match tokio::time::timeout(self.timeout * 6, migrator.run(&self.pool)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(sqlx::migrate::MigrateError::Execute(e))) => Err(map_err(e)),
            Ok(Err(e)) => Err(EngineError::DbUnavailable(format!("migration failed: {e}"))),
            Err(_) => Err(EngineError::DbTimeout(self.timeout.as_millis() as u64 * 6)),
        }
    }

    /// Bound a database future by the configured timeout and map its error.
    async fn bounded<T, F>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, DbFail>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(DbFail::Sql(e))) => Err(map_err(e)),
            Ok(Err(DbFail::Engine(e))) => Err(e),
            Err(_) => Err(EngineError::DbTimeout(self.timeout.as_millis() as u64)),
        }
    }
}

/// Inside a bounded block: either a driver error or a decision of ours (fenced, invalid).
enum DbFail {
    Sql(sqlx::Error),
    Engine(EngineError),
}

impl From<sqlx::Error> for DbFail {
    fn from(e: sqlx::Error) -> Self {
        DbFail::Sql(e)
    }
}
impl From<EngineError> for DbFail {
    fn from(e: EngineError) -> Self {
        DbFail::Engine(e)
    }
}

type Tx<'a> = Transaction<'a, Postgres>;

/// A pooled connection for one transaction, safe to cancel at every await.
///
/// sqlx 0.8's `Pool::begin` is not: a future dropped while `BEGIN`'s round trip is in flight (our
/// own timeout, a step timeout) leaves the session inside a transaction nothing rolls back, and
/// the pool hands that connection to the next borrower, whose statements then run in it and hold
/// their row locks indefinitely (transact-rs/sqlx#4393). Here a claim held that way made `SKIP
/// LOCKED` skip one workflow for good after a latency spike. A `TxConn` whose `BEGIN` did not
/// complete is closed instead of returned: the server ends the session and its transaction.
/// Once `BEGIN` has completed, sqlx's own guard queues the rollback of a dropped transaction, and
/// [`TxConn::settle`] sends it before a failure is reported.
struct TxConn {
    conn: sqlx::pool::PoolConnection<Postgres>,
    beginning: bool,
}

impl TxConn {
    async fn acquire(pool: &PgPool) -> std::result::Result<Self, sqlx::Error> {
        Ok(TxConn {
            conn: pool.acquire().await?,
            beginning: false,
        })
    }

    async fn begin(&mut self) -> std::result::Result<Tx<'_>, sqlx::Error> {
        let TxConn { conn, beginning } = self;
        *beginning = true;
        let tx = sqlx::Connection::begin(&mut **conn).await?;
        *beginning = false;
        Ok(tx)
    }

    /// Ends the work `r` did on this connection (see [`transaction_body`]).
    ///
    /// A transaction dropped on an error path (a fenced write, a failed statement) only queues its
    /// `ROLLBACK`; sqlx sends it from a task it spawns once the connection is back in the pool. Until
    /// then the session keeps its row locks, so the caller's next call, on another connection, could
    /// find its own workflow locked: a claim right after a fenced notify skipped it (`SKIP LOCKED`)
    /// and returned nothing. Here the rollback goes out, and is answered, before the error returns.
    async fn settle<T>(
        mut self,
        r: std::result::Result<T, DbFail>,
    ) -> std::result::Result<T, DbFail> {
        if r.is_err() && sqlx::Connection::ping(&mut *self.conn).await.is_err() {
            // The session is broken: the server ends its transaction when the socket closes.
            self.conn.close_on_drop();
        }
        r
    }
}

/// The body of a transaction on a [`TxConn`], run before [`TxConn::settle`]: it begins, and
/// commits (or returns an error); this only fixes its error type for `?`.
fn transaction_body<T, F>(body: F) -> F
where
    F: std::future::Future<Output = std::result::Result<T, DbFail>>,
{
    body
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if self.beginning {
            // Dropped (cancelled or failed) during BEGIN: never reuse this session.
            self.conn.close_on_drop();
        }
    }
}

fn map_err(e: sqlx::Error) -> EngineError {
    match e {
        sqlx::Error::Database(db) => EngineError::Db {
            sqlstate: db.code().map(|c| c.to_string()).unwrap_or_default(),
            message: db.message().to_string(),
        },
        sqlx::Error::Io(io) => EngineError::DbUnavailable(format!("i/o: {io}")),
        sqlx::Error::PoolTimedOut => EngineError::DbUnavailable("connection pool timed out".into()),
        sqlx::Error::PoolClosed => EngineError::DbUnavailable("connection pool closed".into()),
        sqlx::Error::Tls(t) => EngineError::DbUnavailable(format!("tls: {t}")),
        sqlx::Error::Protocol(p) => EngineError::DbUnavailable(format!("protocol: {p}")),
        sqlx::Error::WorkerCrashed => {
            EngineError::DbUnavailable("connection worker crashed".into())
        }
        other => EngineError::Internal(format!("database: {other}")),
    }
}

/// Connection-string parse errors can echo the URL, password included.
fn redact_url_error(msg: &str) -> String {
    if msg.contains('@') {
        "invalid connection string".into()
    } else {
        msg.to_string()
    }
}

fn hex_addr(a: &Address) -> String {
    format!("{a:#x}")
}
fn hex_b256(h: &B256) -> String {
    format!("{h:#x}")
}
fn parse_addr(s: &str) -> std::result::Result<Address, DbFail> {
    s.parse().map_err(|_| {
        DbFail::Engine(EngineError::Internal(format!(
            "bad address in database: {s}"
        )))
    })
}
fn parse_b256(s: &str) -> std::result::Result<B256, DbFail> {
    s.parse()
        .map_err(|_| DbFail::Engine(EngineError::Internal(format!("bad hash in database: {s}"))))
}
fn parse_u128(s: &str) -> std::result::Result<u128, DbFail> {
    s.parse().map_err(|_| {
        DbFail::Engine(EngineError::Internal(format!(
            "bad number in database: {s}"
        )))
    })
}
fn parse_u256(s: &str) -> std::result::Result<U256, DbFail> {
    U256::from_str_radix(s, 10).map_err(|_| {
        DbFail::Engine(EngineError::Internal(format!(
            "bad number in database: {s}"
        )))
    })
}

fn row_to_workflow(r: &PgRow) -> std::result::Result<WorkflowRecord, DbFail> {
    let status: String = r.try_get("status")?;
    Ok(WorkflowRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        idempotency_key: r.try_get("idempotency_key")?,
        input: r.try_get("input")?,
        status: WorkflowStatus::parse(&status)
            .ok_or_else(|| DbFail::Engine(EngineError::Internal(format!("bad status {status}"))))?,
        current_step: r.try_get("current_step")?,
        state: r.try_get("state")?,
        result: r.try_get("result")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        fencing_token: r.try_get("fencing_token")?,
        lease_owner: r.try_get("lease_owner")?,
    })
}

async fn load_tx(tx: &mut Tx<'_>, id: i64) -> std::result::Result<TxRecord, DbFail> {
    let r = sqlx::query(&format!("SELECT {TX_COLS} FROM transactions WHERE id = $1"))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    let mut rec = row_to_tx(&r)?;
    rec.broadcasts = load_broadcasts(&mut **tx, id).await?;
    Ok(rec)
}

async fn load_broadcasts<'e, E>(ex: E, id: i64) -> std::result::Result<Vec<Broadcast>, DbFail>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let rows = sqlx::query(
        "SELECT tx_hash, nonce, raw, max_fee, priority_fee FROM tx_broadcasts WHERE tx_id = $1 ORDER BY created_at, tx_hash",
    )
    .bind(id)
    .fetch_all(ex)
    .await?;
    rows.iter().map(row_to_broadcast).collect()
}

/// The records of `rows`, each with its signed versions.
async fn load_txs(pool: &PgPool, rows: &[PgRow]) -> std::result::Result<Vec<TxRecord>, DbFail> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut rec = row_to_tx(r)?;
        rec.broadcasts = load_broadcasts(pool, rec.id).await?;
        out.push(rec);
    }
    Ok(out)
}

fn row_to_broadcast(r: &PgRow) -> std::result::Result<Broadcast, DbFail> {
    Ok(Broadcast {
        hash: parse_b256(&r.try_get::<String, _>("tx_hash")?)?,
        nonce: r.try_get::<i64, _>("nonce")? as u64,
        raw: Bytes::from(r.try_get::<Vec<u8>, _>("raw")?),
        max_fee_per_gas: parse_u128(&r.try_get::<String, _>("max_fee")?)?,
        max_priority_fee_per_gas: parse_u128(&r.try_get::<String, _>("priority_fee")?)?,
    })
}

fn tx_state(r: &PgRow) -> std::result::Result<TxState, DbFail> {
    let state: String = r.try_get("state")?;
    TxState::parse(&state)
        .ok_or_else(|| DbFail::Engine(EngineError::Internal(format!("bad tx state {state}"))))
}

fn row_to_tx(r: &PgRow) -> std::result::Result<TxRecord, DbFail> {
    let to: Option<String> = r.try_get("to_address")?;
    let hash: Option<String> = r.try_get("tx_hash")?;
    Ok(TxRecord {
        id: r.try_get("id")?,
        workflow_id: r.try_get("workflow_id")?,
        step_index: r.try_get("step_index")?,
        intent_signer: parse_addr(&r.try_get::<String, _>("signer")?)?,
        chain_id: r.try_get::<i64, _>("chain_id")? as u64,
        nonce: r.try_get::<i64, _>("nonce")? as u64,
        state: tx_state(r)?,
        to: to.as_deref().map(parse_addr).transpose()?,
        input: Bytes::from(r.try_get::<Vec<u8>, _>("input")?),
        value: parse_u256(&r.try_get::<String, _>("value")?)?,
        gas_limit: r.try_get::<i64, _>("gas_limit")? as u64,
        fees: FeesView {
            max_fee_per_gas: parse_u128(&r.try_get::<String, _>("max_fee")?)?,
            max_priority_fee_per_gas: parse_u128(&r.try_get::<String, _>("priority_fee")?)?,
        },
        raw: r.try_get::<Option<Vec<u8>>, _>("raw")?.map(Bytes::from),
        hash: hash.as_deref().map(parse_b256).transpose()?,
        broadcasts: Vec::new(),
        receipt: r.try_get("receipt")?,
    })
}

/// Lock the workflow row and check that `fence` still holds it; returns the current step.
async fn check_fence(tx: &mut Tx<'_>, fence: &Fence) -> std::result::Result<i32, DbFail> {
    Ok(check_fence_status(tx, fence).await?.0)
}

/// [`check_fence`], also returning the workflow's status.
async fn check_fence_status(
    tx: &mut Tx<'_>,
    fence: &Fence,
) -> std::result::Result<(i32, WorkflowStatus), DbFail> {
    let row = sqlx::query(
        "SELECT fencing_token, current_step, status, lease_id FROM workflows WHERE id = $1 FOR UPDATE",
    )
    .bind(fence.workflow_id)
    .fetch_optional(&mut **tx)
    .await?;
    let (current, step, status, lease_id): (i64, i32, String, i64) = match row {
        Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
        None => {
            return Err(EngineError::Internal(format!(
                "workflow {} does not exist",
                fence.workflow_id
            ))
            .into())
        }
    };
    if !fence.holds(current, lease_id) {
        return Err(EngineError::Fenced {
            workflow_id: fence.workflow_id,
            ours: fence.token,
            current,
        }
        .into());
    }
    let status = WorkflowStatus::parse(&status)
        .ok_or_else(|| DbFail::Engine(EngineError::Internal(format!("bad status {status}"))))?;
    Ok((step, status))
}

async fn journal_append(
    tx: &mut Tx<'_>,
    fence: &Fence,
    step: i32,
    name: &str,
    event: &str,
    detail: Option<&Value>,
) -> std::result::Result<(), DbFail> {
    sqlx::query(
        "INSERT INTO journal (workflow_id, step_index, step_name, event, detail, fencing_token, node) VALUES ($1,$2,$3,$4,$5,$6,$7)",
    )
    .bind(fence.workflow_id)
    .bind(step)
    .bind(name)
    .bind(event)
    .bind(detail)
    .bind(fence.token)
    .bind(&fence.node)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn tx_event(
    tx: &mut Tx<'_>,
    tx_id: i64,
    state: TxState,
    detail: Option<&str>,
) -> std::result::Result<(), DbFail> {
    sqlx::query("INSERT INTO tx_events (tx_id, state, detail) VALUES ($1, $2, $3)")
        .bind(tx_id)
        .bind(state.as_str())
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Refuse a write to a transaction of another workflow than the fence's (a missing transaction
/// is left to the statement's own error).
async fn check_tx_owner(
    tx: &mut Tx<'_>,
    fence: &Fence,
    tx_id: i64,
) -> std::result::Result<(), DbFail> {
    let owner: Option<i64> = sqlx::query("SELECT workflow_id FROM transactions WHERE id = $1")
        .bind(tx_id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    match owner {
        Some(w) if w != fence.workflow_id => Err(foreign_tx(w, fence).into()),
        _ => Ok(()),
    }
}

/// Keep a signed version of transaction `tx_id` (idempotent by hash).
async fn insert_broadcast(
    tx: &mut Tx<'_>,
    tx_id: i64,
    signed: &Broadcast,
) -> std::result::Result<(), DbFail> {
    sqlx::query(
        "INSERT INTO tx_broadcasts (tx_id, tx_hash, nonce, raw, max_fee, priority_fee) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
    )
    .bind(tx_id)
    .bind(hex_b256(&signed.hash))
    .bind(signed.nonce as i64)
    .bind(signed.raw.to_vec())
    .bind(signed.max_fee_per_gas.to_string())
    .bind(signed.max_priority_fee_per_gas.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A signed version found on chain (`signed`) now belongs to transaction `tx_id`: its orphan row,
/// if any, is marked adopted, and the signer's counter is raised past its nonce.
async fn take_found_version(
    tx: &mut Tx<'_>,
    tx_id: i64,
    signer: &str,
    chain_id: i64,
    signed: &Broadcast,
) -> std::result::Result<(), DbFail> {
    sqlx::query("UPDATE orphan_txs SET adopted_by = $2 WHERE tx_hash = $1")
        .bind(hex_b256(&signed.hash))
        .bind(tx_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO nonces (signer, chain_id, next_nonce) VALUES ($1, $2, $3) \
         ON CONFLICT (signer, chain_id) DO UPDATE SET next_nonce = GREATEST(nonces.next_nonce, EXCLUDED.next_nonce), updated_at = now()",
    )
    .bind(signer)
    .bind(chain_id)
    .bind(signed.nonce as i64 + 1)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Take the lowest released nonce at or above `chain_nonce`, else the counter's next one.
async fn allocate_nonce(
    tx: &mut Tx<'_>,
    signer: &str,
    chain_id: i64,
    chain_nonce: i64,
) -> std::result::Result<i64, DbFail> {
    sqlx::query("INSERT INTO nonces (signer, chain_id, next_nonce) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(signer)
        .bind(chain_id)
        .bind(chain_nonce)
        .execute(&mut **tx)
        .await?;
    // Serialises allocation per (signer, chain).
    let next: i64 =
        sqlx::query("SELECT next_nonce FROM nonces WHERE signer = $1 AND chain_id = $2 FOR UPDATE")
            .bind(signer)
            .bind(chain_id)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
    // Holes below the chain's count were consumed (or are pending) on chain: unusable.
    sqlx::query("DELETE FROM nonce_holes WHERE signer = $1 AND chain_id = $2 AND nonce < $3")
        .bind(signer)
        .bind(chain_id)
        .bind(chain_nonce)
        .execute(&mut **tx)
        .await?;
    let hole: Option<i64> = sqlx::query(
        "DELETE FROM nonce_holes WHERE (signer, chain_id, nonce) = (SELECT signer, chain_id, nonce FROM nonce_holes WHERE signer = $1 AND chain_id = $2 ORDER BY nonce LIMIT 1) RETURNING nonce",
    )
    .bind(signer)
    .bind(chain_id)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    if let Some(n) = hole {
        return Ok(n);
    }
    let nonce = next.max(chain_nonce);
    sqlx::query(
        "UPDATE nonces SET next_nonce = $3, updated_at = now() WHERE signer = $1 AND chain_id = $2",
    )
    .bind(signer)
    .bind(chain_id)
    .bind(nonce + 1)
    .execute(&mut **tx)
    .await?;
    Ok(nonce)
}

/// The workflow a live idempotency key names (row: `request_hash` and [`WF_COLS`]), or the
/// refusal of a different request under that key.
fn existing(new: &NewWorkflow, r: &PgRow) -> std::result::Result<Submitted, DbFail> {
    let hash: String = r.try_get("request_hash")?;
    if hash != new.request_hash {
        return Err(EngineError::key_reused(&new.idempotency_key).into());
    }
    Ok(Submitted::Existing(row_to_workflow(r)?))
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn submit(&self, new: NewWorkflow, window: Duration) -> Result<Submitted> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                let live = sqlx::query(&format!(
                    "SELECT w.request_hash, {cols} FROM idempotency_keys k JOIN workflows w ON w.id = k.workflow_id \
                     WHERE k.scope = $1 AND k.idempotency_key = $2 AND k.expires_at > now() FOR UPDATE OF k",
                    cols = WF_COLS.split(", ").map(|c| format!("w.{c}")).collect::<Vec<_>>().join(", ")
                ))
                .bind(&new.scope)
                .bind(&new.idempotency_key)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = live {
                    tx.commit().await?;
                    return existing(&new, &r);
                }
                let r = sqlx::query(&format!(
                    "INSERT INTO workflows (kind, scope, idempotency_key, request_hash, input, status) \
                     VALUES ($1, $2, $3, $4, $5, 'pending') RETURNING {WF_COLS}"
                ))
                .bind(&new.kind)
                .bind(&new.scope)
                .bind(&new.idempotency_key)
                .bind(&new.request_hash)
                .bind(&new.input)
                .fetch_one(&mut *tx)
                .await?;
                let wf = row_to_workflow(&r)?;
                // Takes an expired key over; a live key inserted concurrently wins instead.
                let took = sqlx::query(
                    "INSERT INTO idempotency_keys (scope, idempotency_key, workflow_id, expires_at) \
                     VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') \
                     ON CONFLICT (scope, idempotency_key) DO UPDATE SET workflow_id = EXCLUDED.workflow_id, expires_at = EXCLUDED.expires_at \
                     WHERE idempotency_keys.expires_at <= now() RETURNING workflow_id",
                )
                .bind(&new.scope)
                .bind(&new.idempotency_key)
                .bind(wf.id)
                .bind(window.as_millis() as i64)
                .fetch_optional(&mut *tx)
                .await?;
                if took.is_none() {
                    tx.rollback().await?;
                    let r = sqlx::query(&format!(
                        "SELECT request_hash, {WF_COLS} FROM workflows WHERE id = (SELECT workflow_id FROM idempotency_keys WHERE scope = $1 AND idempotency_key = $2)"
                    ))
                    .bind(&new.scope)
                    .bind(&new.idempotency_key)
                    .fetch_one(&self.pool)
                    .await?;
                    // The winner may have submitted another request under the key: refused as if
                    // it had committed first.
                    return existing(&new, &r);
                }
                sqlx::query(
                    "INSERT INTO journal (workflow_id, step_index, step_name, event, detail, fencing_token, node) VALUES ($1, 0, 'received', 'received', NULL, 0, 'api')",
                )
                .bind(wf.id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Submitted::Created(wf))
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>> {
        self.bounded(async {
            let r = sqlx::query(&format!("SELECT {WF_COLS} FROM workflows WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            r.as_ref().map(row_to_workflow).transpose()
        })
        .await
    }

    async fn journal(&self, id: WorkflowId) -> Result<Vec<JournalEntry>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT seq, step_index, step_name, event, detail, fencing_token, node FROM journal WHERE workflow_id = $1 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(JournalEntry {
                        seq: r.try_get("seq")?,
                        step_index: r.try_get("step_index")?,
                        step_name: r.try_get("step_name")?,
                        event: r.try_get("event")?,
                        detail: r.try_get("detail")?,
                        fencing_token: r.try_get("fencing_token")?,
                        node: r.try_get("node")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn claim(
        &self,
        node: &str,
        lease: Duration,
        limit: usize,
        lease_id: i64,
    ) -> Result<Vec<Claim>> {
        self.bounded(async {
            let rows = sqlx::query(&format!(
                "UPDATE workflows SET lease_owner = $1, lease_expires_at = now() + $2 * interval '1 millisecond', \
                 fencing_token = fencing_token + 1, lease_id = $4, status = 'running', updated_at = now() \
                 WHERE id IN (SELECT id FROM workflows WHERE status IN ('pending', 'running') AND next_attempt_at <= now() \
                   AND (lease_expires_at IS NULL OR lease_expires_at < now()) ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING {WF_COLS}"
            ))
            .bind(node)
            .bind(lease.as_millis() as i64)
            .bind(limit as i64)
            .bind(lease_id)
            .fetch_all(&self.pool)
            .await?;
            let mut claims: Vec<Claim> = rows
                .iter()
                .map(|r| {
                    let wf = row_to_workflow(r)?;
                    let fence = Fence { workflow_id: wf.id, token: wf.fencing_token, node: node.to_string(), lease_id };
                    Ok::<_, DbFail>(Claim { workflow: wf, fence })
                })
                .collect::<std::result::Result<_, _>>()?;
            claims.sort_by_key(|c| c.workflow.id);
            Ok(claims)
        })
        .await
    }

    async fn renew_lease(&self, fence: &Fence, lease: Duration) -> Result<()> {
        self.bounded(async {
            let r = sqlx::query(
                "UPDATE workflows SET lease_expires_at = now() + $3 * interval '1 millisecond' \
                 WHERE id = $1 AND fencing_token = $2 AND lease_id = $4 RETURNING id",
            )
            .bind(fence.workflow_id)
            .bind(fence.token)
            .bind(lease.as_millis() as i64)
            .bind(fence.lease_id)
            .fetch_optional(&self.pool)
            .await?;
            if r.is_none() {
                let current: i64 = sqlx::query("SELECT fencing_token FROM workflows WHERE id = $1")
                    .bind(fence.workflow_id)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?;
                return Err(EngineError::Fenced {
                    workflow_id: fence.workflow_id,
                    ours: fence.token,
                    current,
                }
                .into());
            }
            Ok(())
        })
        .await
    }

    async fn release(&self, fence: &Fence) -> Result<()> {
        self.bounded(async {
            sqlx::query(
                "UPDATE workflows SET lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1 \
                 WHERE id = $1 AND fencing_token = $2 AND lease_id = $3",
            )
            .bind(fence.workflow_id)
            .bind(fence.token)
            .bind(fence.lease_id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn complete_step(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        output: Value,
        result: Option<Value>,
    ) -> Result<()> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                let (current, status) = check_fence_status(&mut tx, fence).await?;
                if current > step {
                    // Our earlier commit went through although we did not see it: nothing to do.
                    tx.commit().await?;
                    return Ok(());
                }
                if status.is_terminal() {
                    return Err(workflow_ended(fence.workflow_id, status, "complete_step").into());
                }
                if current != step {
                    return Err(EngineError::Internal(format!(
                        "workflow {} is at step {current}, cannot complete step {step}",
                        fence.workflow_id
                    ))
                    .into());
                }
                let done = result.is_some();
                sqlx::query(
                    "UPDATE workflows SET current_step = $2 + 1, state = state || jsonb_build_object($3::text, $4::jsonb), \
                     attempts = 0, error = NULL, result = $5, status = CASE WHEN $6 THEN 'completed' ELSE 'running' END, \
                     lease_owner = CASE WHEN $6 THEN NULL ELSE lease_owner END, \
                     lease_expires_at = CASE WHEN $6 THEN NULL ELSE lease_expires_at END, updated_at = now() WHERE id = $1",
                )
                .bind(fence.workflow_id)
                .bind(step)
                .bind(name)
                .bind(&output)
                .bind(&result)
                .bind(done)
                .execute(&mut *tx)
                .await?;
                journal_append(&mut tx, fence, step, name, "completed", Some(&output)).await?;
                if let Some(result) = &result {
                    journal_append(&mut tx, fence, step, name, "workflow_completed", Some(result)).await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn schedule_retry(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        delay: Duration,
    ) -> Result<()> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                let updated = sqlx::query(
                    "UPDATE workflows SET attempts = attempts + 1, error = $2, next_attempt_at = now() + $3 * interval '1 millisecond', \
                     lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1, updated_at = now() \
                     WHERE id = $1 AND current_step = $4",
                )
                .bind(fence.workflow_id)
                .bind(error)
                .bind(delay.as_millis() as i64)
                .bind(step)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // A retry of another step than the current one did not happen: no entry.
                if updated == 1 {
                    journal_append(&mut tx, fence, step, name, "retry", Some(error)).await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn fail(
        &self,
        fence: &Fence,
        step: i32,
        name: &str,
        error: &Value,
        dead_letter: bool,
    ) -> Result<()> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                let (_, now) = check_fence_status(&mut tx, fence).await?;
                if now.is_terminal() {
                    return Err(workflow_ended(fence.workflow_id, now, "fail").into());
                }
                let status = if dead_letter { "dead_letter" } else { "failed" };
                sqlx::query(
                    "UPDATE workflows SET status = $2, error = $3, attempts = attempts + 1, lease_owner = NULL, lease_expires_at = NULL, \
                     fencing_token = fencing_token + 1, updated_at = now() WHERE id = $1",
                )
                .bind(fence.workflow_id)
                .bind(status)
                .bind(error)
                .execute(&mut *tx)
                .await?;
                if dead_letter {
                    let code = error.get("reason_code").and_then(Value::as_str).unwrap_or("unknown");
                    let reason = error.get("message").and_then(Value::as_str).unwrap_or("");
                    sqlx::query(
                        "INSERT INTO dead_letters (workflow_id, step_index, step_name, reason_code, reason) VALUES ($1,$2,$3,$4,$5) \
                         ON CONFLICT (workflow_id) DO UPDATE SET step_index = $2, step_name = $3, reason_code = $4, reason = $5, failed_at = now()",
                    )
                    .bind(fence.workflow_id)
                    .bind(step)
                    .bind(name)
                    .bind(code)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                }
                journal_append(&mut tx, fence, step, name, status, Some(error)).await?;
                tx.commit().await?;
                Ok(())
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT d.workflow_id, w.kind, d.step_index, d.step_name, d.reason_code, d.reason FROM dead_letters d \
                 JOIN workflows w ON w.id = d.workflow_id ORDER BY d.failed_at, d.workflow_id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(DeadLetter {
                        workflow_id: r.try_get("workflow_id")?,
                        kind: r.try_get("kind")?,
                        step_index: r.try_get("step_index")?,
                        step_name: r.try_get("step_name")?,
                        reason_code: r.try_get("reason_code")?,
                        reason: r.try_get("reason")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn requeue(&self, id: WorkflowId, actor: &str, reason: &str) -> Result<WorkflowRecord> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                let status: Option<String> = sqlx::query("SELECT status FROM workflows WHERE id = $1 FOR UPDATE")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                let args = serde_json::json!({ "workflow_id": id });
                if status.as_deref() != Some("dead_letter") {
                    let outcome = format!("rejected: workflow is {}", status.as_deref().unwrap_or("unknown"));
                    insert_audit(&mut tx, actor, "requeue", &args, reason, &outcome).await?;
                    tx.commit().await?;
                    return Err(requeue_refused(id, status.is_some()).into());
                }
                let r = sqlx::query(&format!(
                    "UPDATE workflows SET status = 'pending', attempts = 0, error = NULL, next_attempt_at = now(), \
                     lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1, updated_at = now() \
                     WHERE id = $1 RETURNING {WF_COLS}"
                ))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let wf = row_to_workflow(&r)?;
                sqlx::query("DELETE FROM dead_letters WHERE workflow_id = $1").bind(id).execute(&mut *tx).await?;
                let fence = Fence { workflow_id: id, token: wf.fencing_token, node: format!("operator:{actor}"), lease_id: 0 };
                journal_append(&mut tx, &fence, wf.current_step, "requeue", "requeued", Some(&serde_json::json!({ "reason": reason })))
                    .await?;
                insert_audit(&mut tx, actor, "requeue", &args, reason, "ok").await?;
                tx.commit().await?;
                Ok(wf)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                insert_audit(&mut tx, &e.actor, &e.action, &e.args, &e.reason, &e.outcome).await?;
                tx.commit().await?;
                Ok(())
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        self.bounded(async {
            let rows = sqlx::query("SELECT actor, action, args, reason, outcome FROM audit_log ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditEntry {
                        actor: r.try_get("actor")?,
                        action: r.try_get("action")?,
                        args: r.try_get("args")?,
                        reason: r.try_get("reason")?,
                        outcome: r.try_get("outcome")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn tx_for_step(&self, workflow: WorkflowId, step: i32) -> Result<Option<TxRecord>> {
        self.bounded(async {
            let r = sqlx::query(&format!(
                "SELECT {TX_COLS} FROM transactions WHERE workflow_id = $1 AND step_index = $2 \
                 AND state NOT IN ('FAILED', 'DEAD_LETTER', 'CANCELLED')"
            ))
            .bind(workflow)
            .bind(step)
            .fetch_optional(&self.pool)
            .await?;
            self.with_broadcasts(r).await
        })
        .await
    }

    async fn txs_for_workflow(&self, workflow: WorkflowId) -> Result<Vec<TxRecord>> {
        self.bounded(async {
            let rows = sqlx::query(&format!(
                "SELECT {TX_COLS} FROM transactions WHERE workflow_id = $1 ORDER BY id"
            ))
            .bind(workflow)
            .fetch_all(&self.pool)
            .await?;
            load_txs(&self.pool, &rows).await
        })
        .await
    }

    async fn tx_by_nonce(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
    ) -> Result<Option<TxRecord>> {
        self.bounded(async {
            // Served by the index `transactions_nonce` (signer, chain_id, nonce).
            let r = sqlx::query(&format!(
                "SELECT {TX_COLS} FROM transactions WHERE signer = $1 AND chain_id = $2 \
                 AND nonce = $3 AND state IN ('BROADCASTING', 'CONFIRMING', 'COMPLETED') \
                 ORDER BY id DESC LIMIT 1"
            ))
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(nonce as i64)
            .fetch_optional(&self.pool)
            .await?;
            self.with_broadcasts(r).await
        })
        .await
    }

    async fn nonce_holds(
        &self,
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<NonceHold>> {
        self.bounded(async {
            // One statement: the records by the index `transactions_nonce` (signer, chain_id,
            // nonce), their versions at that nonce by the broadcasts' primary key.
            let rows = sqlx::query(
                "SELECT t.id, t.nonce, t.state, \
                 COALESCE(array_agg(b.tx_hash ORDER BY b.created_at, b.tx_hash) \
                          FILTER (WHERE b.tx_hash IS NOT NULL), '{}') AS versions \
                 FROM transactions t \
                 LEFT JOIN tx_broadcasts b ON b.tx_id = t.id AND b.nonce = t.nonce \
                 WHERE t.signer = $1 AND t.chain_id = $2 AND t.nonce >= $3 AND t.nonce < $4 \
                 AND t.state IN ('PREPARING', 'BROADCASTING', 'CONFIRMING', 'COMPLETED') \
                 GROUP BY t.id, t.nonce, t.state \
                 ORDER BY t.nonce, t.id",
            )
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(from.min(i64::MAX as u64) as i64)
            .bind(to.min(i64::MAX as u64) as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(NonceHold {
                        nonce: r.try_get::<i64, _>("nonce")? as u64,
                        tx_id: r.try_get("id")?,
                        state: tx_state(r)?,
                        versions: r
                            .try_get::<Vec<String>, _>("versions")?
                            .iter()
                            .map(|h| parse_b256(h))
                            .collect::<std::result::Result<_, _>>()?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn create_tx(
        &self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        fees: Fees,
        chain_nonce: u64,
    ) -> Result<TxRecord> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                let signer = hex_addr(&intent.signer);
                let nonce = allocate_nonce(&mut tx, &signer, intent.chain_id as i64, chain_nonce as i64).await?;
                let id: i64 = sqlx::query(
                    "INSERT INTO transactions (workflow_id, step_index, signer, chain_id, nonce, state, to_address, input, value, gas_limit, max_fee, priority_fee) \
                     VALUES ($1,$2,$3,$4,$5,'PREPARING',$6,$7,$8,$9,$10,$11) RETURNING id",
                )
                .bind(fence.workflow_id)
                .bind(step)
                .bind(&signer)
                .bind(intent.chain_id as i64)
                .bind(nonce)
                .bind(intent.to.as_ref().map(hex_addr))
                .bind(intent.input.to_vec())
                .bind(intent.value.to_string())
                .bind(intent.gas_limit as i64)
                .bind(fees.max_fee_per_gas.to_string())
                .bind(fees.max_priority_fee_per_gas.to_string())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                tx_event(&mut tx, id, TxState::Preparing, Some(&format!("nonce {nonce}"))).await?;
                let rec = load_tx(&mut tx, id).await?;
                tx.commit().await?;
                Ok(rec)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn record_signed(
        &self,
        fence: &Fence,
        tx_id: i64,
        signed: &Broadcast,
    ) -> Result<TxRecord> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                check_tx_owner(&mut tx, fence, tx_id).await?;
                insert_broadcast(&mut tx, tx_id, signed).await?;
                // One statement: the old nonce (the CTE reads the row before the update) decides
                // whether the record moved.
                let r = sqlx::query(
                    "WITH old AS (SELECT nonce FROM transactions WHERE id = $1) \
                     UPDATE transactions t SET nonce = $6, raw = $2, tx_hash = $3, max_fee = $4, priority_fee = $5, state = 'BROADCASTING', updated_at = now() \
                     FROM old WHERE t.id = $1 RETURNING old.nonce, t.signer, t.chain_id",
                )
                .bind(tx_id)
                .bind(signed.raw.to_vec())
                .bind(hex_b256(&signed.hash))
                .bind(signed.max_fee_per_gas.to_string())
                .bind(signed.max_priority_fee_per_gas.to_string())
                .bind(signed.nonce as i64)
                .fetch_one(&mut *tx)
                .await?;
                let (old_nonce, signer, chain_id): (i64, String, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                if old_nonce != signed.nonce as i64 {
                    take_found_version(&mut tx, tx_id, &signer, chain_id, signed).await?;
                }
                tx_event(&mut tx, tx_id, TxState::Broadcasting, Some(&hex_b256(&signed.hash))).await?;
                let rec = load_tx(&mut tx, tx_id).await?;
                tx.commit().await?;
                Ok(rec)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn set_tx_state(
        &self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        detail: Option<&str>,
        receipt: Option<&Value>,
    ) -> Result<()> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                check_tx_owner(&mut tx, fence, tx_id).await?;
                sqlx::query(
                    "UPDATE transactions SET state = $2, failure = COALESCE($3, failure), receipt = COALESCE($4, receipt), updated_at = now() WHERE id = $1",
                )
                .bind(tx_id)
                .bind(state.as_str())
                .bind(if matches!(state, TxState::Failed | TxState::DeadLetter | TxState::Cancelled) { detail } else { None })
                .bind(receipt)
                .execute(&mut *tx)
                .await?;
                tx_event(&mut tx, tx_id, state, detail).await?;
                tx.commit().await?;
                Ok(())
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn reassign_nonce(
        &self,
        fence: &Fence,
        tx_id: i64,
        chain_nonce: u64,
    ) -> Result<TxRecord> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                check_tx_owner(&mut tx, fence, tx_id).await?;
                let r = sqlx::query("SELECT signer, chain_id FROM transactions WHERE id = $1")
                    .bind(tx_id)
                    .fetch_one(&mut *tx)
                    .await?;
                let (signer, chain_id): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
                let nonce = allocate_nonce(&mut tx, &signer, chain_id, chain_nonce as i64).await?;
                sqlx::query(
                    "UPDATE transactions SET nonce = $2, raw = NULL, tx_hash = NULL, state = 'PREPARING', updated_at = now() WHERE id = $1",
                )
                .bind(tx_id)
                .bind(nonce)
                .execute(&mut *tx)
                .await?;
                tx_event(&mut tx, tx_id, TxState::Preparing, Some(&format!("nonce reassigned to {nonce} (chain at {chain_nonce})"))).await?;
                let rec = load_tx(&mut tx, tx_id).await?;
                tx.commit().await?;
                Ok(rec)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn abandon_tx(
        &self,
        fence: &Fence,
        tx_id: i64,
        state: TxState,
        release: bool,
    ) -> Result<()> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                check_tx_owner(&mut tx, fence, tx_id).await?;
                let r = sqlx::query("UPDATE transactions SET state = $2, updated_at = now() WHERE id = $1 RETURNING signer, chain_id, nonce")
                    .bind(tx_id)
                    .bind(state.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                if release {
                    sqlx::query("INSERT INTO nonce_holes (signer, chain_id, nonce) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                        .bind(r.try_get::<String, _>(0)?)
                        .bind(r.try_get::<i64, _>(1)?)
                        .bind(r.try_get::<i64, _>(2)?)
                        .execute(&mut *tx)
                        .await?;
                }
                tx_event(&mut tx, tx_id, state, Some(if release { "abandoned; nonce released" } else { "abandoned" })).await?;
                tx.commit().await?;
                Ok(())
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn resync_nonce(&self, signer: Address, chain_id: u64, chain_nonce: u64) -> Result<u64> {
        self.bounded(async {
            let r = sqlx::query(
                "INSERT INTO nonces (signer, chain_id, next_nonce) VALUES ($1, $2, $3) \
                 ON CONFLICT (signer, chain_id) DO UPDATE SET next_nonce = GREATEST(nonces.next_nonce, EXCLUDED.next_nonce), updated_at = now() \
                 RETURNING next_nonce",
            )
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(chain_nonce as i64)
            .fetch_one(&self.pool)
            .await?;
            Ok(r.try_get::<i64, _>(0)? as u64)
        })
        .await
    }

    async fn nonce_fillers(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
    ) -> Result<Vec<Broadcast>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT tx_hash, nonce, raw, max_fee, priority_fee FROM nonce_fillers \
                 WHERE signer = $1 AND chain_id = $2 AND nonce = $3 ORDER BY created_at, tx_hash",
            )
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(nonce as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(row_to_broadcast).collect()
        })
        .await
    }

    async fn record_filler(
        &self,
        signer: Address,
        chain_id: u64,
        signed: &Broadcast,
    ) -> Result<()> {
        self.bounded(async {
            sqlx::query(
                "INSERT INTO nonce_fillers (tx_hash, signer, chain_id, nonce, raw, max_fee, priority_fee) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING",
            )
            .bind(hex_b256(&signed.hash))
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(signed.nonce as i64)
            .bind(signed.raw.to_vec())
            .bind(signed.max_fee_per_gas.to_string())
            .bind(signed.max_priority_fee_per_gas.to_string())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn nonce_view(&self, signer: Address, chain_id: u64, tag: B256) -> Result<NonceView> {
        self.bounded(async {
            let next: Option<i64> =
                sqlx::query("SELECT next_nonce FROM nonces WHERE signer = $1 AND chain_id = $2")
                    .bind(hex_addr(&signer))
                    .bind(chain_id as i64)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
            let orphan = sqlx::query(
                "SELECT tx_hash, nonce, raw, max_fee, priority_fee FROM orphan_txs \
                 WHERE signer = $1 AND chain_id = $2 AND tag = $3 AND adopted_by IS NULL \
                 ORDER BY nonce, tx_hash LIMIT 1",
            )
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(hex_b256(&tag))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(row_to_broadcast)
            .transpose()?;
            Ok(NonceView {
                next_nonce: next.map(|n| n as u64),
                orphan,
            })
        })
        .await
    }

    async fn named_nonces(
        &self,
        signer: Address,
        chain_id: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<u64>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT nonce FROM transactions \
                 WHERE signer = $1 AND chain_id = $2 AND nonce >= $3 AND nonce < $4 \
                 UNION SELECT b.nonce FROM tx_broadcasts b JOIN transactions t ON t.id = b.tx_id \
                 WHERE t.signer = $1 AND t.chain_id = $2 AND b.nonce >= $3 AND b.nonce < $4 \
                 UNION SELECT nonce FROM nonce_fillers \
                 WHERE signer = $1 AND chain_id = $2 AND nonce >= $3 AND nonce < $4 \
                 UNION SELECT nonce FROM orphan_txs \
                 WHERE signer = $1 AND chain_id = $2 AND nonce >= $3 AND nonce < $4 \
                 UNION SELECT nonce FROM foreign_nonce_txs \
                 WHERE signer = $1 AND chain_id = $2 AND nonce >= $3 AND nonce < $4 \
                 ORDER BY 1",
            )
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(from.min(i64::MAX as u64) as i64)
            .bind(to.min(i64::MAX as u64) as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<i64, _>(0)? as u64))
                .collect()
        })
        .await
    }

    async fn record_foreign(
        &self,
        signer: Address,
        chain_id: u64,
        nonce: u64,
        hash: B256,
    ) -> Result<()> {
        self.bounded(async {
            sqlx::query(
                "INSERT INTO foreign_nonce_txs (tx_hash, signer, chain_id, nonce) \
                 VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
            )
            .bind(hex_b256(&hash))
            .bind(hex_addr(&signer))
            .bind(chain_id as i64)
            .bind(nonce as i64)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn record_orphans(
        &self,
        signer: Address,
        chain_id: u64,
        orphans: &[Orphan],
    ) -> Result<()> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                for o in orphans {
                    sqlx::query(
                        "INSERT INTO orphan_txs (tx_hash, signer, chain_id, nonce, tag, raw, max_fee, priority_fee) \
                         VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT DO NOTHING",
                    )
                    .bind(hex_b256(&o.signed.hash))
                    .bind(hex_addr(&signer))
                    .bind(chain_id as i64)
                    .bind(o.signed.nonce as i64)
                    .bind(hex_b256(&o.tag))
                    .bind(o.signed.raw.to_vec())
                    .bind(o.signed.max_fee_per_gas.to_string())
                    .bind(o.signed.max_priority_fee_per_gas.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn adopt_orphan(
        &self,
        fence: &Fence,
        step: i32,
        intent: &TxIntent,
        signed: &Broadcast,
    ) -> Result<TxRecord> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                let signer = hex_addr(&intent.signer);
                let id: i64 = sqlx::query(
                    "INSERT INTO transactions (workflow_id, step_index, signer, chain_id, nonce, state, to_address, input, value, gas_limit, max_fee, priority_fee, raw, tx_hash) \
                     VALUES ($1,$2,$3,$4,$5,'CONFIRMING',$6,$7,$8,$9,$10,$11,$12,$13) RETURNING id",
                )
                .bind(fence.workflow_id)
                .bind(step)
                .bind(&signer)
                .bind(intent.chain_id as i64)
                .bind(signed.nonce as i64)
                .bind(intent.to.as_ref().map(hex_addr))
                .bind(intent.input.to_vec())
                .bind(intent.value.to_string())
                .bind(intent.gas_limit as i64)
                .bind(signed.max_fee_per_gas.to_string())
                .bind(signed.max_priority_fee_per_gas.to_string())
                .bind(signed.raw.to_vec())
                .bind(hex_b256(&signed.hash))
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                insert_broadcast(&mut tx, id, signed).await?;
                take_found_version(&mut tx, id, &signer, intent.chain_id as i64, signed).await?;
                tx_event(
                    &mut tx,
                    id,
                    TxState::Confirming,
                    Some(&format!("adopted orphan {}", hex_b256(&signed.hash))),
                )
                .await?;
                let rec = load_tx(&mut tx, id).await?;
                tx.commit().await?;
                Ok(rec)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn notify(&self, fence: &Fence, kind: &str, payload: &Value) -> Result<bool> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                check_fence(&mut tx, fence).await?;
                let n = sqlx::query("INSERT INTO notifications (workflow_id, kind, payload) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(fence.workflow_id)
                    .bind(kind)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn indexer_checkpoint(&self, chain_id: u64) -> Result<Option<IndexerCheckpoint>> {
        self.bounded(async {
            let r = sqlx::query("SELECT last_block, last_hash, finalized_block FROM indexer_checkpoint WHERE chain_id = $1")
                .bind(chain_id as i64)
                .fetch_optional(&self.pool)
                .await?;
            r.map(|r| {
                Ok(IndexerCheckpoint {
                    last_block: r.try_get::<i64, _>(0)? as u64,
                    last_hash: parse_b256(&r.try_get::<String, _>(1)?)?,
                    finalized_block: r.try_get::<i64, _>(2)? as u64,
                })
            })
            .transpose()
        })
        .await
    }

    async fn indexed_block_hash(&self, chain_id: u64, number: u64) -> Result<Option<B256>> {
        self.bounded(async {
            let r =
                sqlx::query("SELECT hash FROM indexed_blocks WHERE chain_id = $1 AND number = $2")
                    .bind(chain_id as i64)
                    .bind(number as i64)
                    .fetch_optional(&self.pool)
                    .await?;
            r.map(|r| parse_b256(&r.try_get::<String, _>(0)?))
                .transpose()
        })
        .await
    }

    async fn index_block(
        &self,
        chain_id: u64,
        extends: Option<(u64, B256)>,
        number: u64,
        hash: B256,
        events: &[TokenEvent],
        finalized: u64,
    ) -> Result<bool> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                // The checkpoint moves first, compared in the same statement (an UPDATE on the
                // row read, or an INSERT of the first one): its row stays locked until the
                // commit, so no other indexer moves it between this and the writes below.
                let moved = match extends {
                    Some((block, parent)) => sqlx::query(
                        "UPDATE indexer_checkpoint SET last_block = $2, last_hash = $3, finalized_block = $4, updated_at = now() \
                         WHERE chain_id = $1 AND last_block = $5 AND last_hash = $6",
                    )
                    .bind(chain_id as i64)
                    .bind(number as i64)
                    .bind(hex_b256(&hash))
                    .bind(finalized as i64)
                    .bind(block as i64)
                    .bind(hex_b256(&parent)),
                    None => sqlx::query(
                        "INSERT INTO indexer_checkpoint (chain_id, last_block, last_hash, finalized_block) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (chain_id) DO NOTHING",
                    )
                    .bind(chain_id as i64)
                    .bind(number as i64)
                    .bind(hex_b256(&hash))
                    .bind(finalized as i64),
                }
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    let current: Option<(i64, String)> = sqlx::query_as(
                        "SELECT last_block, last_hash FROM indexer_checkpoint WHERE chain_id = $1",
                    )
                    .bind(chain_id as i64)
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.rollback().await?;
                    let already = current.is_some_and(|(n, h)| n == number as i64 && h == hex_b256(&hash));
                    return Ok(already);
                }
                sqlx::query("INSERT INTO indexed_blocks (chain_id, number, hash) VALUES ($1, $2, $3) ON CONFLICT (chain_id, number) DO UPDATE SET hash = EXCLUDED.hash")
                    .bind(chain_id as i64)
                    .bind(number as i64)
                    .bind(hex_b256(&hash))
                    .execute(&mut *tx)
                    .await?;
                for e in events {
                    assert_eq!(e.block_hash, hash, "events must belong to the block being indexed");
                    sqlx::query(
                        "INSERT INTO token_events (chain_id, block_number, block_hash, tx_hash, log_index, contract, from_address, to_address, value) \
                         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::numeric) ON CONFLICT DO NOTHING",
                    )
                    .bind(chain_id as i64)
                    .bind(e.block_number as i64)
                    .bind(hex_b256(&e.block_hash))
                    .bind(hex_b256(&e.tx_hash))
                    .bind(e.log_index as i64)
                    .bind(hex_addr(&e.contract))
                    .bind(hex_addr(&e.from))
                    .bind(hex_addr(&e.to))
                    .bind(e.value.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn rollback_index(&self, chain_id: u64, keep: u64) -> Result<u64> {
        self.bounded(async {
            let mut conn = TxConn::acquire(&self.pool).await?;
            let r = transaction_body(async {
                let mut tx = conn.begin().await?;
                sqlx::query("DELETE FROM token_events WHERE chain_id = $1 AND block_number > $2")
                    .bind(chain_id as i64)
                    .bind(keep as i64)
                    .execute(&mut *tx)
                    .await?;
                let removed = sqlx::query("DELETE FROM indexed_blocks WHERE chain_id = $1 AND number > $2")
                    .bind(chain_id as i64)
                    .bind(keep as i64)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let kept: Option<String> = sqlx::query("SELECT hash FROM indexed_blocks WHERE chain_id = $1 AND number = $2")
                    .bind(chain_id as i64)
                    .bind(keep as i64)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                match kept {
                    Some(hash) => {
                        sqlx::query("UPDATE indexer_checkpoint SET last_block = $2, last_hash = $3, finalized_block = LEAST(finalized_block, $2), updated_at = now() WHERE chain_id = $1")
                            .bind(chain_id as i64)
                            .bind(keep as i64)
                            .bind(hash)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM indexer_checkpoint WHERE chain_id = $1").bind(chain_id as i64).execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
                Ok(removed)
            })
            .await;
            conn.settle(r).await
        })
        .await
    }

    async fn indexed_balances(
        &self,
        chain_id: u64,
        contract: Address,
    ) -> Result<Vec<(Address, U256)>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT holder, balance::text FROM token_balances WHERE chain_id = $1 AND contract = $2 AND balance <> 0 ORDER BY holder",
            )
            .bind(chain_id as i64)
            .bind(hex_addr(&contract))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok((parse_addr(&r.try_get::<String, _>(0)?)?, parse_u256(&r.try_get::<String, _>(1)?)?)))
                .collect()
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.bounded(async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    async fn stats(&self, stalled_after: Duration) -> Result<Stats> {
        self.bounded(async {
            let r = sqlx::query(
                "SELECT count(*) FILTER (WHERE status IN ('pending','running')), \
                        count(*) FILTER (WHERE status = 'dead_letter'), \
                        count(*) FILTER (WHERE status IN ('pending','running') AND next_attempt_at < now() - $1 * interval '1 millisecond' \
                                         AND (lease_expires_at IS NULL OR lease_expires_at < now())) \
                 FROM workflows",
            )
            .bind(stalled_after.as_millis() as i64)
            .fetch_one(&self.pool)
            .await?;
            Ok(Stats { active: r.try_get(0)?, dead_letter: r.try_get(1)?, stalled: r.try_get(2)? })
        })
        .await
    }
}

async fn insert_audit(
    tx: &mut Tx<'_>,
    actor: &str,
    action: &str,
    args: &Value,
    reason: &str,
    outcome: &str,
) -> std::result::Result<(), DbFail> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, args, reason, outcome) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(args)
    .bind(reason)
    .bind(outcome)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
