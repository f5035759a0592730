//! [`PostgresBackend`]: every operation as one statement (for list appends and enqueues, one
//! call of a function of the schema that runs under a per-key advisory lock), with time taken
//! from the server.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_state_core::{
    Backend, Clock, Error, ListOptions, Lock, LockRequest, Operation, QueueEntry,
};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, PgPool, Postgres};
use tokio::task::JoinHandle;

use crate::error::{map, timed_out};
use crate::schema::{self, SchemaMode};
use crate::sql::Statements;
use crate::{BACKEND, PostgresBuilder};

// Children of this module, so they use its private helpers without widening them.
#[path = "admin.rs"]
mod admin;
#[path = "dispatch.rs"]
pub(crate) mod dispatch;
#[path = "orphan.rs"]
mod orphan;

/// Queue timestamps beyond this are clamped (timestamptz ends in 294276 AD).
const MAX_STORED_MS: i64 = 8_000_000_000_000_000;

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    owns_pool: bool,
    prefix: String,
    clock: Option<Arc<dyn Clock>>,
    /// Server clock minus ours, in microseconds, rounded towards "server behind".
    offset_us: AtomicI64,
    statement_timeout: Duration,
    sql: Statements,
}

/// The PostgreSQL [`Backend`]; use it as [`PostgresState`](crate::PostgresState), built with
/// [`PostgresBackend::builder`] or [`PostgresBackend::with_pool`].
#[derive(Debug)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
    sweep: Mutex<Option<JoinHandle<()>>>,
}

fn system_us() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn ms(ttl: Duration) -> i64 {
    i64::try_from(chat_state_core::validate::duration_ms(ttl)).unwrap_or(i64::MAX)
}

fn clamp_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A queue entry as stored: its upstream JSON (`{enqueuedAt, expiresAt, message}`, what
/// TypeScript bots read) and its expiry in milliseconds, clamped to what `timestamptz` holds.
fn stored_entry(op: Operation, entry: &QueueEntry) -> Result<(String, i64), Error> {
    let json = entry.to_json().map_err(|e| e.context(BACKEND, op))?;
    let expires = i64::try_from(entry.expires_at)
        .unwrap_or(i64::MAX)
        .min(MAX_STORED_MS);
    Ok((json, expires))
}

/// Text if the bytes are NUL-free UTF-8 (what TypeScript bots read), else `''` plus the bytes.
fn encode(value: &[u8]) -> (&str, Option<&[u8]>) {
    match std::str::from_utf8(value) {
        Ok(text) if !text.contains('\0') => (text, None),
        _ => ("", Some(value)),
    }
}

fn decode(value: String, raw: Option<Vec<u8>>) -> Vec<u8> {
    match raw {
        Some(raw) if value.is_empty() => raw,
        _ => value.into_bytes(),
    }
}

impl Inner {
    fn now(&self) -> Option<i64> {
        self.clock
            .as_ref()
            .map(|c| i64::try_from(c.now_ms()).unwrap_or(i64::MAX))
    }

    /// `sql` with its first three parameters bound: "now" (the test clock's, or `NULL` for
    /// the server's), the key prefix and `key`; bind the statement's own parameters after.
    fn at_key<'q>(&'q self, sql: &'q str, key: &'q str) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(sql)
            .bind(self.now())
            .bind(&self.prefix)
            .bind(key)
    }

    /// [`at_key`](Self::at_key) for a statement that returns one column.
    fn scalar_at_key<'q, O>(
        &'q self,
        sql: &'q str,
        key: &'q str,
    ) -> QueryScalar<'q, Postgres, O, PgArguments>
    where
        (O,): for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_scalar(sql)
            .bind(self.now())
            .bind(&self.prefix)
            .bind(key)
    }

    /// [`at_key`](Self::at_key) for a statement that returns rows of several columns.
    fn rows_at_key<'q, O>(
        &'q self,
        sql: &'q str,
        key: &'q str,
    ) -> QueryAs<'q, Postgres, O, PgArguments>
    where
        O: for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_as(sql)
            .bind(self.now())
            .bind(&self.prefix)
            .bind(key)
    }

    /// Runs `call` within the statement timeout, mapping its errors.
    async fn run<T>(
        &self,
        op: Operation,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.statement_timeout, call).await {
            Ok(result) => result.map_err(|e| map(op, e)),
            Err(_) => Err(timed_out(op, self.statement_timeout)),
        }
    }

    /// Runs `sql`, whose parameters are the key prefix and `key`, within the statement
    /// timeout; returns how many rows it touched.
    async fn execute_keyed(
        &self,
        op: Operation,
        sql: &'static str,
        key: &str,
    ) -> Result<u64, Error> {
        let query = sqlx::query(sql).bind(&self.prefix).bind(key);
        Ok(self
            .run(op, query.execute(&self.pool))
            .await?
            .rows_affected())
    }

    async fn sweep_once(&self, batch: i64) -> Result<u64, Error> {
        let mut total = 0;
        for statement in &self.sql.sweep {
            // Bounded: at most 100 batches per table per round.
            for _ in 0..100 {
                let done = self
                    .run(
                        Operation::Delete,
                        sqlx::query(statement)
                            .bind(self.now())
                            .bind(&self.prefix)
                            .bind(batch)
                            .execute(&self.pool),
                    )
                    .await?
                    .rows_affected();
                total += done;
                if i64::try_from(done).unwrap_or(i64::MAX) < batch {
                    break;
                }
            }
        }
        Ok(total)
    }
}

impl PostgresBackend {
    pub(crate) fn new(pool: PgPool, owns_pool: bool, b: &PostgresBuilder) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                owns_pool,
                prefix: b.key_prefix.clone(),
                clock: b.clock.clone(),
                offset_us: AtomicI64::new(0),
                statement_timeout: b.statement_timeout,
                sql: Statements::new(),
            }),
            sweep: Mutex::new(None),
        }
    }

    /// The key prefix this backend's rows are stored under.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The pool the backend runs on.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Deletes this prefix's expired rows now, in bounded batches; returns how many. The
    /// background sweep calls this; expiry never depends on it.
    pub async fn sweep_expired(&self) -> Result<u64, Error> {
        self.inner.sweep_once(1000).await
    }

    /// The measured offset of the server's clock from ours, in milliseconds (conservative:
    /// [`Backend::now_ms`] adds it and never runs ahead of the server).
    pub fn server_clock_offset_ms(&self) -> i64 {
        self.inner
            .offset_us
            .load(Ordering::Relaxed)
            .div_euclid(1000)
    }

    pub(crate) async fn open(&self, mode: SchemaMode) -> Result<(), Error> {
        let op = Operation::Open;
        let inner = &self.inner;
        inner
            .run(op, sqlx::query("SELECT 1").execute(&inner.pool))
            .await?;
        schema::prepare(&inner.pool, mode).await?;
        self.measure_clock().await
    }

    /// Reads the server's clock three times and keeps the tightest bound: the true offset
    /// lies in `[s - after, s - before]`; we keep the lower end (never ahead of the server),
    /// or 0 when 0 lies in the interval (the clocks agree within the measurement).
    async fn measure_clock(&self) -> Result<(), Error> {
        let inner = &self.inner;
        if inner.clock.is_some() {
            return Ok(());
        }
        let mut best: Option<(i64, i64)> = None;
        for _ in 0..3 {
            let before = system_us();
            let server: i64 = inner
                .run(
                    Operation::Open,
                    sqlx::query_scalar(
                        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
                    )
                    .fetch_one(&inner.pool),
                )
                .await?;
            let after = system_us();
            let (lo, hi) = (server - after, server - before);
            if best.is_none_or(|(l, h)| hi - lo < h - l) {
                best = Some((lo, hi));
            }
        }
        let (lo, hi) = best.unwrap_or((0, 0));
        let offset = if lo <= 0 && 0 <= hi { 0 } else { lo };
        inner.offset_us.store(offset, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn start_sweep(&self, interval: Option<Duration>, batch: i64) {
        let Some(interval) = interval else { return };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.sweep_once(batch).await {
                    tracing::debug!(error = %e, "chat-state-postgres sweep failed; retrying later");
                }
            }
        });
        if let Ok(mut slot) = self.sweep.lock() {
            *slot = Some(handle);
        }
    }

    fn stop_sweep(&self) {
        if let Ok(mut slot) = self.sweep.lock()
            && let Some(handle) = slot.take()
        {
            handle.abort();
        }
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.stop_sweep();
    }
}

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn now_ms(&self) -> u64 {
        let inner = &self.inner;
        match &inner.clock {
            Some(clock) => clock.now_ms(),
            None => {
                let us = system_us().saturating_add(inner.offset_us.load(Ordering::Relaxed));
                u64::try_from(us.div_euclid(1000)).unwrap_or(0)
            }
        }
    }

    async fn connect(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner
            .run(
                Operation::Connect,
                sqlx::query("SELECT 1").execute(&inner.pool),
            )
            .await
            .map(drop)
    }

    async fn close(&self) -> Result<(), Error> {
        self.stop_sweep();
        if self.inner.owns_pool {
            self.inner.pool.close().await;
        }
        Ok(())
    }

    async fn subscribe(&self, thread_id: &str) -> Result<(), Error> {
        self.inner
            .execute_keyed(
                Operation::Subscribe,
                "INSERT INTO chat_state_subscriptions (key_prefix, thread_id)
                 VALUES ($1, $2) ON CONFLICT DO NOTHING",
                thread_id,
            )
            .await
            .map(drop)
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<(), Error> {
        self.inner
            .execute_keyed(
                Operation::Unsubscribe,
                "DELETE FROM chat_state_subscriptions WHERE key_prefix = $1 AND thread_id = $2",
                thread_id,
            )
            .await
            .map(drop)
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool, Error> {
        let inner = &self.inner;
        inner
            .run(
                Operation::IsSubscribed,
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM chat_state_subscriptions
                     WHERE key_prefix = $1 AND thread_id = $2)",
                )
                .bind(&inner.prefix)
                .bind(thread_id)
                .fetch_one(&inner.pool),
            )
            .await
    }

    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>, Error> {
        let fence = orphan::acquire(&self.inner, request).await?;
        Ok(fence.map(|f| u64::try_from(f).unwrap_or(0)))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<(), Error> {
        let inner = &self.inner;
        inner
            .run(
                Operation::ReleaseLock,
                sqlx::query(inner.sql.release)
                    .bind(&inner.prefix)
                    .bind(&lock.thread_id)
                    .bind(&lock.token)
                    .execute(&inner.pool),
            )
            .await
            .map(drop)
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool, Error> {
        let inner = &self.inner;
        let done = inner
            .run(
                Operation::ExtendLock,
                inner
                    .at_key(&inner.sql.extend, request.lock_id)
                    .bind(request.token)
                    .bind(ms(request.ttl))
                    .execute(&inner.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<(), Error> {
        self.inner
            .execute_keyed(
                Operation::ForceReleaseLock,
                "DELETE FROM chat_state_locks WHERE key_prefix = $1 AND thread_id = $2",
                lock_id,
            )
            .await
            .map(drop)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let inner = &self.inner;
        let row: Option<(String, Option<Vec<u8>>)> = inner
            .run(
                Operation::Get,
                inner
                    .rows_at_key(&inner.sql.get, key)
                    .fetch_optional(&inner.pool),
            )
            .await?;
        Ok(row.map(|(value, raw)| decode(value, raw)))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        let inner = &self.inner;
        let (text, raw) = encode(value);
        inner
            .run(
                Operation::Set,
                inner
                    .at_key(&inner.sql.set, key)
                    .bind(text)
                    .bind(raw)
                    .bind(ttl.map(ms))
                    .execute(&inner.pool),
            )
            .await
            .map(drop)
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        let inner = &self.inner;
        let (text, raw) = encode(value);
        let done = inner
            .run(
                Operation::SetIfNotExists,
                inner
                    .at_key(&inner.sql.set_if_not_exists, key)
                    .bind(text)
                    .bind(raw)
                    .bind(ttl.map(ms))
                    .execute(&inner.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.inner
            .execute_keyed(
                Operation::Delete,
                "DELETE FROM chat_state_cache WHERE key_prefix = $1 AND cache_key = $2",
                key,
            )
            .await
            .map(drop)
    }

    async fn append_to_list(
        &self,
        key: &str,
        value: &[u8],
        options: ListOptions,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let (text, raw) = encode(value);
        inner
            .run(
                Operation::AppendToList,
                inner
                    .at_key(inner.sql.list_append, key)
                    .bind(text)
                    .bind(raw)
                    .bind(options.ttl.map(ms))
                    .bind(options.max_length.map(clamp_i64))
                    .execute(&inner.pool),
            )
            .await
            .map(drop)
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>, Error> {
        let inner = &self.inner;
        let rows: Vec<(String, Option<Vec<u8>>)> = inner
            .run(
                Operation::GetList,
                inner
                    .rows_at_key(&inner.sql.get_list, key)
                    .fetch_all(&inner.pool),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(value, raw)| decode(value, raw))
            .collect())
    }

    async fn enqueue(
        &self,
        thread_id: &str,
        entry: QueueEntry,
        max_size: usize,
    ) -> Result<usize, Error> {
        let inner = &self.inner;
        let op = Operation::Enqueue;
        let (json, expires) = stored_entry(op, &entry)?;
        let depth: i64 = inner
            .run(
                op,
                inner
                    .scalar_at_key(inner.sql.enqueue, thread_id)
                    .bind(&json)
                    .bind(expires)
                    .bind(clamp_i64(max_size))
                    .fetch_one(&inner.pool),
            )
            .await?;
        Ok(usize::try_from(depth).unwrap_or(0))
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>, Error> {
        let inner = &self.inner;
        let op = Operation::Dequeue;
        let value: Option<String> = inner
            .run(
                op,
                inner
                    .scalar_at_key(&inner.sql.dequeue, thread_id)
                    .fetch_optional(&inner.pool),
            )
            .await?;
        value
            .map(|entry| dispatch::decode_entry(op, thread_id, &entry))
            .transpose()
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize, Error> {
        let inner = &self.inner;
        let depth: i64 = inner
            .run(
                Operation::QueueDepth,
                inner
                    .scalar_at_key(&inner.sql.depth, thread_id)
                    .fetch_one(&inner.pool),
            )
            .await?;
        Ok(usize::try_from(depth).unwrap_or(0))
    }

    const ATOMIC_DISPATCH: bool = true;

    async fn admit(
        &self,
        request: &chat_state_core::AdmitRequest<'_>,
    ) -> Result<chat_state_core::AdmitOutcome, Error> {
        Ok(dispatch::admit(&self.inner, request, None).await?.0)
    }

    async fn admit_and_read(
        &self,
        request: &chat_state_core::AdmitRequest<'_>,
        read: &str,
    ) -> Result<(chat_state_core::AdmitOutcome, Option<Vec<u8>>), Error> {
        dispatch::admit(&self.inner, request, Some(read)).await
    }

    async fn release_or_next(
        &self,
        request: &LockRequest<'_>,
    ) -> Result<chat_state_core::Handoff, Error> {
        dispatch::release_or_next(&self.inner, request, None).await
    }

    async fn release_or_next_with(
        &self,
        request: &LockRequest<'_>,
        lock: &Lock,
        write: &chat_state_core::FencedSet<'_>,
    ) -> Result<chat_state_core::Handoff, Error> {
        dispatch::release_or_next(&self.inner, request, Some((lock, write))).await
    }

    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<chat_state_core::FencedWrite, Error> {
        dispatch::set_fenced(&self.inner, lock, key, value, ttl).await
    }
}
