//! The writer: one connection that runs every write, batching concurrent writes into one
//! transaction (group commit).
//!
//! Why: SQLite admits one writer per file at a time, so writes from a pool of connections
//! only queue on the file lock (and each pays its own commit). Here, callers hand their write
//! to one task; while it runs a transaction, later writes queue in a channel, and the next
//! transaction takes all of them. Every caller still gets its answer only after the
//! transaction holding its write has committed, and each write runs in the transaction as
//! its own atomic step, so:
//!
//! - atomicity: each read-modify-write is a statement (or several) inside `BEGIN IMMEDIATE`;
//!   other processes are locked out for the whole transaction;
//! - linearizability: all writes of a batch were pending when it started and are answered
//!   after it commits, so executing them in channel order is a valid order; readers on other
//!   connections see either none or all of a batch;
//! - isolation of failures: if any write of a batch fails, the batch is rolled back and each
//!   write is retried alone, so one caller's failure is never another's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chat_state_core::{Error, Operation, Result, SharedClock};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::BACKEND;
use crate::error::{classify, map_sqlx};

/// A write, with every timestamp it stores already computed by the caller (from the clock
/// read before sending, contract rule 12). The writer reads the clock again only to decide
/// what has expired.
#[derive(Debug)]
pub(crate) enum WriteOp {
    Subscribe {
        thread_id: String,
    },
    Unsubscribe {
        thread_id: String,
    },
    Acquire {
        lock_id: String,
        token: String,
        expires_at: i64,
    },
    Release {
        lock_id: String,
        token: String,
    },
    Extend {
        lock_id: String,
        token: String,
        expires_at: i64,
    },
    ForceRelease {
        lock_id: String,
    },
    Set {
        key: String,
        value: Vec<u8>,
        expires_at: Option<i64>,
    },
    SetIfNotExists {
        key: String,
        value: Vec<u8>,
        expires_at: Option<i64>,
    },
    Delete {
        key: String,
    },
    Append {
        key: String,
        value: Vec<u8>,
        expires_at: Option<i64>,
        max_length: Option<i64>,
    },
    Enqueue {
        thread_id: String,
        enqueued_at: i64,
        expires_at: i64,
        message: String,
        max_size: i64,
    },
    Dequeue {
        thread_id: String,
    },
    Cleanup {
        limit: i64,
    },
}

impl WriteOp {
    fn operation(&self) -> Operation {
        match self {
            WriteOp::Subscribe { .. } => Operation::Subscribe,
            WriteOp::Unsubscribe { .. } => Operation::Unsubscribe,
            WriteOp::Acquire { .. } => Operation::AcquireLock,
            WriteOp::Release { .. } => Operation::ReleaseLock,
            WriteOp::Extend { .. } => Operation::ExtendLock,
            WriteOp::ForceRelease { .. } => Operation::ForceReleaseLock,
            WriteOp::Set { .. } => Operation::Set,
            WriteOp::SetIfNotExists { .. } => Operation::SetIfNotExists,
            WriteOp::Delete { .. } => Operation::Delete,
            WriteOp::Append { .. } => Operation::AppendToList,
            WriteOp::Enqueue { .. } => Operation::Enqueue,
            WriteOp::Dequeue { .. } => Operation::Dequeue,
            WriteOp::Cleanup { .. } => Operation::Maintenance,
        }
    }

    /// Whether the write is one statement, which SQLite runs atomically on its own: alone, it
    /// needs no explicit transaction (saving two round trips to the SQLite thread).
    fn single_statement(&self) -> bool {
        !matches!(
            self,
            WriteOp::Append { .. } | WriteOp::Enqueue { .. } | WriteOp::Cleanup { .. }
        )
    }
}

/// Rows removed by one cleanup pass, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Expired locks.
    pub locks: u64,
    /// Expired cache entries.
    pub cache: u64,
    /// Expired lists (each with all its items).
    pub lists: u64,
    /// Items of expired lists (and items left without a live list).
    pub list_items: u64,
    /// Expired queue entries.
    pub queue_entries: u64,
}

impl CleanupReport {
    /// Total rows removed.
    pub fn total(&self) -> u64 {
        self.locks + self.cache + self.lists + self.list_items + self.queue_entries
    }

    pub(crate) fn add(&mut self, other: &CleanupReport) {
        self.locks += other.locks;
        self.cache += other.cache;
        self.lists += other.lists;
        self.list_items += other.list_items;
        self.queue_entries += other.queue_entries;
    }
}

/// What a write produced.
#[derive(Debug)]
pub(crate) enum WriteOut {
    Unit,
    Bool(bool),
    Fence(Option<i64>),
    Depth(i64),
    Entry(Option<(i64, i64, String)>),
    Cleaned(CleanupReport),
}

pub(crate) struct Job {
    pub(crate) op: WriteOp,
    pub(crate) reply: oneshot::Sender<Result<WriteOut>>,
}

pub(crate) enum Msg {
    Job(Job),
    /// Finish the writes already received, close the connection, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Msg>,
    counters: Arc<Counters>,
}

/// Counts of the writer's work, for monitoring group commit.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
}

/// How the writer has grouped writes so far (see
/// [`SqliteState::write_stats`](crate::SqliteState::write_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Groups of writes taken from the queue together, each committed as one transaction
    /// (or, if one of its writes failed, retried one by one).
    pub batches: u64,
    /// Writes executed.
    pub writes: u64,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn spawn(
        conn: SqliteConnection,
        scope: Arc<str>,
        clock: SharedClock,
        max_batch: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(
            conn,
            rx,
            scope,
            clock,
            max_batch.max(1),
            counters.clone(),
        ));
        Self { tx, counters }
    }

    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs one write and waits until it has committed.
    pub(crate) async fn write(&self, op: WriteOp) -> Result<WriteOut> {
        let operation = op.operation();
        let (reply, answer) = oneshot::channel();
        // A failed send or a dropped reply both mean the writer has stopped: closed.
        self.tx
            .send(Msg::Job(Job { op, reply }))
            .map_err(|_| Error::closed(BACKEND, operation))?;
        answer
            .await
            .map_err(|_| Error::closed(BACKEND, operation))?
    }

    /// Asks the writer to stop after the writes it already has, and waits for it.
    pub(crate) async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).is_ok() {
            let _ = finished.await;
        }
    }
}

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    scope: Arc<str>,
    clock: SharedClock,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    while shutdown.is_none() {
        // Wait for the first write; then take, without waiting, whatever else is queued.
        // Never waiting for more keeps a lone caller's latency at one transaction.
        match rx.recv().await {
            Some(Msg::Job(job)) => batch.push(job),
            Some(Msg::Shutdown(done)) => shutdown = Some(done),
            None => break,
        }
        while shutdown.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Shutdown(done)) => shutdown = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            run_batch(&mut conn, &scope, &clock, &mut batch).await;
        }
    }
    // Writes sent after the shutdown request are dropped unanswered: their callers see
    // `Closed`, as the contract says for operations racing with close.
    drop(rx);
    let _ = conn.close().await;
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

async fn run_batch(
    conn: &mut SqliteConnection,
    scope: &str,
    clock: &SharedClock,
    batch: &mut Vec<Job>,
) {
    if batch.len() == 1 {
        if let Some(job) = batch.pop() {
            let result = run_alone(conn, scope, clock, &job.op).await;
            let _ = job.reply.send(result);
        }
        return;
    }
    match run_together(conn, scope, clock, batch).await {
        Ok(outputs) => {
            for (job, out) in batch.drain(..).zip(outputs) {
                let _ = job.reply.send(Ok(out));
            }
        }
        Err(_) => {
            // Some write failed (or the commit did): nothing of the batch was kept. Retry
            // each alone so only the write that fails reports a failure.
            for job in batch.drain(..) {
                let result = run_alone(conn, scope, clock, &job.op).await;
                let _ = job.reply.send(result);
            }
        }
    }
}

async fn run_together(
    conn: &mut SqliteConnection,
    scope: &str,
    clock: &SharedClock,
    batch: &[Job],
) -> std::result::Result<Vec<WriteOut>, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let mut outputs = Vec::with_capacity(batch.len());
    for job in batch {
        match execute(conn, scope, now(clock), &job.op).await {
            Ok(out) => outputs.push(out),
            Err(e) => {
                rollback(conn).await;
                return Err(e);
            }
        }
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        rollback(conn).await;
        return Err(e);
    }
    Ok(outputs)
}

async fn run_alone(
    conn: &mut SqliteConnection,
    scope: &str,
    clock: &SharedClock,
    op: &WriteOp,
) -> Result<WriteOut> {
    let operation = op.operation();
    if op.single_statement() {
        return execute(conn, scope, now(clock), op)
            .await
            .map_err(|e| map_sqlx(e, operation));
    }
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, operation))?;
    let out = match execute(conn, scope, now(clock), op).await {
        Ok(out) => out,
        Err(e) => {
            rollback(conn).await;
            return Err(map_sqlx(e, operation));
        }
    };
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        rollback(conn).await;
        return Err(map_sqlx(e, operation));
    }
    Ok(out)
}

async fn rollback(conn: &mut SqliteConnection) {
    // Fails only if no transaction is open (SQLite already rolled back), which is the
    // state we want anyway.
    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
        let (kind, message) = classify(&e);
        tracing::debug!(%kind, %message, "rollback after a failed write");
    }
}

/// The clock as SQLite's `INTEGER` (times beyond `i64` cannot be stored, and the validators
/// keep every stored expiry within it).
pub(crate) fn now(clock: &SharedClock) -> i64 {
    i64::try_from(clock.now_ms()).unwrap_or(i64::MAX)
}

/// Runs one write on `conn` (inside a transaction if the write needs one).
async fn execute(
    conn: &mut SqliteConnection,
    scope: &str,
    now: i64,
    op: &WriteOp,
) -> std::result::Result<WriteOut, sqlx::Error> {
    match op {
        WriteOp::Subscribe { thread_id } => {
            sqlx::query(
                "INSERT OR IGNORE INTO chat_state_subscriptions (scope, thread_id) VALUES (?1, ?2)",
            )
            .bind(scope)
            .bind(thread_id)
            .execute(&mut *conn)
            .await?;
            Ok(WriteOut::Unit)
        }
        WriteOp::Unsubscribe { thread_id } => {
            sqlx::query("DELETE FROM chat_state_subscriptions WHERE scope = ?1 AND thread_id = ?2")
                .bind(scope)
                .bind(thread_id)
                .execute(&mut *conn)
                .await?;
            Ok(WriteOut::Unit)
        }
        WriteOp::Acquire {
            lock_id,
            token,
            expires_at,
        } => {
            // One statement: insert, or take over a row whose lock has expired (rule 1:
            // held iff now < expires_at). The fence is one above the file's floor, which the
            // trigger then raises: strictly increasing across release, expiry and restarts.
            let fence: Option<i64> = sqlx::query_scalar(
                "INSERT INTO chat_state_locks (scope, lock_id, token, expires_at, fence)
                 VALUES (?1, ?2, ?3, ?4,
                         (SELECT value + 1 FROM chat_state_meta WHERE name = 'fence'))
                 ON CONFLICT (scope, lock_id) DO UPDATE SET
                     token = excluded.token,
                     expires_at = excluded.expires_at,
                     fence = excluded.fence
                 WHERE chat_state_locks.expires_at <= ?5
                 RETURNING fence",
            )
            .bind(scope)
            .bind(lock_id)
            .bind(token)
            .bind(expires_at)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(WriteOut::Fence(fence))
        }
        WriteOp::Release { lock_id, token } => {
            sqlx::query(
                "DELETE FROM chat_state_locks WHERE scope = ?1 AND lock_id = ?2 AND token = ?3",
            )
            .bind(scope)
            .bind(lock_id)
            .bind(token)
            .execute(&mut *conn)
            .await?;
            Ok(WriteOut::Unit)
        }
        WriteOp::Extend {
            lock_id,
            token,
            expires_at,
        } => {
            // Only the current, unexpired holder: never resurrects (rule 3).
            let done = sqlx::query(
                "UPDATE chat_state_locks SET expires_at = ?4
                 WHERE scope = ?1 AND lock_id = ?2 AND token = ?3 AND expires_at > ?5",
            )
            .bind(scope)
            .bind(lock_id)
            .bind(token)
            .bind(expires_at)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(WriteOut::Bool(done.rows_affected() == 1))
        }
        WriteOp::ForceRelease { lock_id } => {
            sqlx::query("DELETE FROM chat_state_locks WHERE scope = ?1 AND lock_id = ?2")
                .bind(scope)
                .bind(lock_id)
                .execute(&mut *conn)
                .await?;
            Ok(WriteOut::Unit)
        }
        WriteOp::Set {
            key,
            value,
            expires_at,
        } => {
            sqlx::query(
                "INSERT INTO chat_state_cache (scope, cache_key, value, expires_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, cache_key) DO UPDATE SET
                     value = excluded.value, expires_at = excluded.expires_at",
            )
            .bind(scope)
            .bind(key)
            .bind(value.as_slice())
            .bind(*expires_at)
            .execute(&mut *conn)
            .await?;
            Ok(WriteOut::Unit)
        }
        WriteOp::SetIfNotExists {
            key,
            value,
            expires_at,
        } => {
            // An expired row counts as absent (rule 5), so it is overwritten in place.
            let stored: Option<i64> = sqlx::query_scalar(
                "INSERT INTO chat_state_cache (scope, cache_key, value, expires_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, cache_key) DO UPDATE SET
                     value = excluded.value, expires_at = excluded.expires_at
                 WHERE chat_state_cache.expires_at IS NOT NULL
                   AND chat_state_cache.expires_at <= ?5
                 RETURNING 1",
            )
            .bind(scope)
            .bind(key)
            .bind(value.as_slice())
            .bind(*expires_at)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(WriteOut::Bool(stored.is_some()))
        }
        WriteOp::Delete { key } => {
            sqlx::query("DELETE FROM chat_state_cache WHERE scope = ?1 AND cache_key = ?2")
                .bind(scope)
                .bind(key)
                .execute(&mut *conn)
                .await?;
            Ok(WriteOut::Unit)
        }
        WriteOp::Append {
            key,
            value,
            expires_at,
            max_length,
        } => {
            // Items without a live list header belong to an expired list (or to one whose
            // header cleanup already removed): an expired list restarts empty (rule 6).
            sqlx::query(
                "DELETE FROM chat_state_list_items WHERE scope = ?1 AND list_key = ?2
                 AND NOT EXISTS (SELECT 1 FROM chat_state_lists
                                 WHERE scope = ?1 AND list_key = ?2
                                   AND (expires_at IS NULL OR expires_at > ?3))",
            )
            .bind(scope)
            .bind(key)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            // With a TTL the whole list's expiry becomes now + TTL; without one it stays,
            // unless the old list had expired (then the restarted list has none).
            sqlx::query(
                "INSERT INTO chat_state_lists (scope, list_key, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, list_key) DO UPDATE SET expires_at =
                     CASE WHEN excluded.expires_at IS NOT NULL
                               OR chat_state_lists.expires_at <= ?4
                          THEN excluded.expires_at
                          ELSE chat_state_lists.expires_at END",
            )
            .bind(scope)
            .bind(key)
            .bind(*expires_at)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO chat_state_list_items (scope, list_key, value) VALUES (?1, ?2, ?3)",
            )
            .bind(scope)
            .bind(key)
            .bind(value.as_slice())
            .execute(&mut *conn)
            .await?;
            if let Some(max) = max_length {
                // Keep the newest `max`: drop everything older than the max-th newest item.
                sqlx::query(
                    "DELETE FROM chat_state_list_items WHERE scope = ?1 AND list_key = ?2
                     AND id < (SELECT id FROM chat_state_list_items
                               WHERE scope = ?1 AND list_key = ?2
                               ORDER BY id DESC LIMIT 1 OFFSET ?3 - 1)",
                )
                .bind(scope)
                .bind(key)
                .bind(*max)
                .execute(&mut *conn)
                .await?;
            }
            Ok(WriteOut::Unit)
        }
        WriteOp::Enqueue {
            thread_id,
            enqueued_at,
            expires_at,
            message,
            max_size,
        } => {
            // Expired entries first, so they neither count nor take a slot (rule 7).
            sqlx::query(
                "DELETE FROM chat_state_queue
                 WHERE scope = ?1 AND thread_id = ?2 AND expires_at <= ?3",
            )
            .bind(scope)
            .bind(thread_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            // An entry dead on arrival is accepted but, by rule 7, neither stored nor counted
            // (so it does not push a live entry out either).
            if *expires_at > now {
                sqlx::query(
                    "INSERT INTO chat_state_queue
                         (scope, thread_id, enqueued_at, expires_at, message)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(scope)
                .bind(thread_id)
                .bind(*enqueued_at)
                .bind(*expires_at)
                .bind(message)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query(
                "DELETE FROM chat_state_queue WHERE scope = ?1 AND thread_id = ?2
                 AND id < (SELECT id FROM chat_state_queue
                           WHERE scope = ?1 AND thread_id = ?2
                           ORDER BY id DESC LIMIT 1 OFFSET ?3 - 1)",
            )
            .bind(scope)
            .bind(thread_id)
            .bind(*max_size)
            .execute(&mut *conn)
            .await?;
            let depth: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM chat_state_queue
                 WHERE scope = ?1 AND thread_id = ?2 AND expires_at > ?3",
            )
            .bind(scope)
            .bind(thread_id)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            Ok(WriteOut::Depth(depth))
        }
        WriteOp::Dequeue { thread_id } => {
            // Select and delete in one statement: two dequeuers (even in two processes)
            // can never both get the entry.
            let row: Option<(i64, i64, String)> = sqlx::query_as(
                "DELETE FROM chat_state_queue WHERE id =
                     (SELECT id FROM chat_state_queue
                      WHERE scope = ?1 AND thread_id = ?2 AND expires_at > ?3
                      ORDER BY id LIMIT 1)
                 RETURNING enqueued_at, expires_at, message",
            )
            .bind(scope)
            .bind(thread_id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(WriteOut::Entry(row))
        }
        WriteOp::Cleanup { limit } => cleanup(conn, now, *limit).await.map(WriteOut::Cleaned),
    }
}

/// Deletes up to `limit` expired rows of each table, across every key prefix in the file.
/// Every condition is `expires_at <= now`, the exact complement of "live" (rule 1), so a live
/// row is never touched.
async fn cleanup(
    conn: &mut SqliteConnection,
    now: i64,
    limit: i64,
) -> std::result::Result<CleanupReport, sqlx::Error> {
    let locks = sqlx::query(
        "DELETE FROM chat_state_locks WHERE (scope, lock_id) IN
             (SELECT scope, lock_id FROM chat_state_locks WHERE expires_at <= ?1 LIMIT ?2)",
    )
    .bind(now)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let cache = sqlx::query(
        "DELETE FROM chat_state_cache WHERE rowid IN
             (SELECT rowid FROM chat_state_cache WHERE expires_at <= ?1 LIMIT ?2)",
    )
    .bind(now)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // Items first (bounded too), then headers: a header goes only once its items are gone,
    // and items without a live header are never read (see Append and get_list).
    let list_items = sqlx::query(
        "DELETE FROM chat_state_list_items WHERE id IN
             (SELECT i.id FROM chat_state_lists l
              JOIN chat_state_list_items i ON i.scope = l.scope AND i.list_key = l.list_key
              WHERE l.expires_at <= ?1 LIMIT ?2)",
    )
    .bind(now)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let lists = sqlx::query(
        "DELETE FROM chat_state_lists WHERE (scope, list_key) IN
             (SELECT l.scope, l.list_key FROM chat_state_lists l
              WHERE l.expires_at <= ?1
                AND NOT EXISTS (SELECT 1 FROM chat_state_list_items i
                                WHERE i.scope = l.scope AND i.list_key = l.list_key)
              LIMIT ?2)",
    )
    .bind(now)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let queue_entries = sqlx::query(
        "DELETE FROM chat_state_queue WHERE id IN
             (SELECT id FROM chat_state_queue WHERE expires_at <= ?1 LIMIT ?2)",
    )
    .bind(now)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(CleanupReport {
        locks,
        cache,
        lists,
        list_items,
        queue_entries,
    })
}
