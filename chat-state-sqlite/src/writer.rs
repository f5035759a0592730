//! The writer: one connection that runs every write, batching concurrent writes into one
//! transaction (group commit). This module is the engine only (channel, batching,
//! transactions, retries); the SQL of each write lives in [`writes`](crate::writes), as one
//! [`Write`] type per operation.
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
//!
//! Replies are typed: each queued write carries a reply channel for its own
//! [`Write::Output`], so the writer can never answer a caller with another operation's result.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chat_state_core::{Error, Operation, Result, SharedClock};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::BACKEND;
use crate::error::{classify, map_sqlx};

/// One kind of write: its SQL and what it answers.
///
/// Every timestamp a write stores is computed by the caller before sending (from the clock
/// read before the request, contract rule 12); `now`, passed to [`Write::execute`], is the
/// writer's own reading of the clock, used only to decide what has expired.
pub(crate) trait Write: Send + Sync + 'static {
    /// What the write answers its caller.
    type Output: Send + 'static;

    /// The contract operation, for errors.
    const OPERATION: Operation;

    /// Whether the write is one statement, which SQLite runs atomically on its own: alone, it
    /// needs no explicit transaction (saving two round trips to the SQLite thread).
    const SINGLE_STATEMENT: bool;

    /// Runs the write on `conn`, inside the writer's transaction if it has one.
    fn execute(
        &self,
        conn: &mut SqliteConnection,
        scope: &str,
        now: i64,
    ) -> impl Future<Output = std::result::Result<Self::Output, sqlx::Error>> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How executing a job ended: the executed write, or the job back with the SQL error.
type Execution = std::result::Result<Box<dyn Executed>, (Box<dyn Job>, sqlx::Error)>;

/// A queued write of any type, with its caller's reply channel.
trait Job: Send {
    fn operation(&self) -> Operation;
    fn single_statement(&self) -> bool;
    /// Executes the write. On success the output is kept, unsent, until the transaction
    /// commits ([`Executed::answer`]) or rolls back ([`Executed::roll_back`]); on failure the
    /// job comes back for a retry or an error answer.
    fn execute<'a>(
        self: Box<Self>,
        conn: &'a mut SqliteConnection,
        scope: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Execution>;
    /// Answers the caller with an error.
    fn fail(self: Box<Self>, error: Error);
}

/// A write that ran, whose output waits for the outcome of its transaction.
trait Executed: Send {
    /// The transaction committed: the caller gets the output.
    fn answer(self: Box<Self>);
    /// The transaction rolled back: the output is discarded, the write can run again.
    fn roll_back(self: Box<Self>) -> Box<dyn Job>;
}

struct Pending<W: Write> {
    write: W,
    reply: oneshot::Sender<Result<W::Output>>,
}

struct Ran<W: Write> {
    pending: Pending<W>,
    output: W::Output,
}

impl<W: Write> Job for Pending<W> {
    fn operation(&self) -> Operation {
        W::OPERATION
    }

    fn single_statement(&self) -> bool {
        W::SINGLE_STATEMENT
    }

    fn execute<'a>(
        self: Box<Self>,
        conn: &'a mut SqliteConnection,
        scope: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Execution> {
        Box::pin(async move {
            match self.write.execute(conn, scope, now).await {
                Ok(output) => Ok(Box::new(Ran {
                    pending: *self,
                    output,
                }) as Box<dyn Executed>),
                Err(e) => Err((self as Box<dyn Job>, e)),
            }
        })
    }

    fn fail(self: Box<Self>, error: Error) {
        // A caller that stopped waiting no longer needs the answer.
        let _ = self.reply.send(Err(error));
    }
}

impl<W: Write> Executed for Ran<W> {
    fn answer(self: Box<Self>) {
        let _ = self.pending.reply.send(Ok(self.output));
    }

    fn roll_back(self: Box<Self>) -> Box<dyn Job> {
        Box::new(self.pending)
    }
}

enum Msg {
    Job(Box<dyn Job>),
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
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
}

/// How the writer has grouped writes so far (see
/// [`SqliteBackend::write_stats`](crate::SqliteBackend::write_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    pub(crate) async fn write<W: Write>(&self, write: W) -> Result<W::Output> {
        let (reply, answer) = oneshot::channel();
        // A failed send or a dropped reply both mean the writer has stopped: closed.
        self.tx
            .send(Msg::Job(Box::new(Pending { write, reply })))
            .map_err(|_| Error::closed(BACKEND, W::OPERATION))?;
        answer
            .await
            .map_err(|_| Error::closed(BACKEND, W::OPERATION))?
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
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
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
    batch: &mut Vec<Box<dyn Job>>,
) {
    if batch.len() == 1 {
        if let Some(job) = batch.pop() {
            run_alone(conn, scope, clock, job).await;
        }
        return;
    }
    match run_together(conn, scope, clock, std::mem::take(batch)).await {
        Ok(executed) => {
            for write in executed {
                write.answer();
            }
        }
        Err(jobs) => {
            // Some write failed (or the commit did): nothing of the batch was kept. Retry
            // each alone so only the write that fails reports a failure.
            for job in jobs {
                run_alone(conn, scope, clock, job).await;
            }
        }
    }
}

/// Runs every job of `batch` in one transaction. On success the executed writes are
/// returned to be answered; on any failure the transaction is rolled back and every job
/// comes back, in its original order, unanswered.
async fn run_together(
    conn: &mut SqliteConnection,
    scope: &str,
    clock: &SharedClock,
    batch: Vec<Box<dyn Job>>,
) -> std::result::Result<Vec<Box<dyn Executed>>, Vec<Box<dyn Job>>> {
    if sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        return Err(batch);
    }
    let mut executed: Vec<Box<dyn Executed>> = Vec::with_capacity(batch.len());
    let mut rest = batch.into_iter();
    while let Some(job) = rest.next() {
        match job.execute(conn, scope, now(clock)).await {
            Ok(write) => executed.push(write),
            Err((job, _)) => {
                rollback(conn).await;
                let jobs = executed
                    .into_iter()
                    .map(|write| write.roll_back())
                    .chain(std::iter::once(job))
                    .chain(rest)
                    .collect();
                return Err(jobs);
            }
        }
    }
    if sqlx::query("COMMIT").execute(&mut *conn).await.is_err() {
        rollback(conn).await;
        return Err(executed.into_iter().map(|w| w.roll_back()).collect());
    }
    Ok(executed)
}

/// Runs one job on its own (in a transaction unless it is a single statement) and answers it.
async fn run_alone(
    conn: &mut SqliteConnection,
    scope: &str,
    clock: &SharedClock,
    job: Box<dyn Job>,
) {
    let operation = job.operation();
    if job.single_statement() {
        match job.execute(conn, scope, now(clock)).await {
            Ok(write) => write.answer(),
            Err((job, e)) => job.fail(map_sqlx(e, operation)),
        }
        return;
    }
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        job.fail(map_sqlx(e, operation));
        return;
    }
    let write = match job.execute(conn, scope, now(clock)).await {
        Ok(write) => write,
        Err((job, e)) => {
            rollback(conn).await;
            job.fail(map_sqlx(e, operation));
            return;
        }
    };
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        rollback(conn).await;
        write.roll_back().fail(map_sqlx(e, operation));
        return;
    }
    write.answer();
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
fn now(clock: &SharedClock) -> i64 {
    i64::try_from(clock.now_ms()).unwrap_or(i64::MAX)
}
