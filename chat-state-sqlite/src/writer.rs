//! The writer: one connection that runs every write, batching concurrent writes into one
//! transaction (group commit). This module is the engine only (queue, batching,
//! transactions, retries); the SQL of each write lives in [`writes`](crate::writes), as one
//! [`Write`] type per operation.
//!
//! Why one connection: SQLite admits one writer per file at a time, so writes from a pool of
//! connections only queue on the file lock (and each pays its own commit). Here, every write
//! goes to one queue; whoever holds the writer's *lead* takes everything queued (up to
//! `max_batch`) and runs it as one transaction, statements back to back. Every caller still
//! gets its answer only after the transaction holding its write has committed, and each
//! write runs in the transaction as its own atomic step, so:
//!
//! - atomicity: each read-modify-write is a statement (or several) inside `BEGIN IMMEDIATE`;
//!   other processes are locked out for the whole transaction;
//! - linearizability: all writes of a batch were pending when it started and are answered
//!   after it commits, so executing them in queue order is a valid order; readers on other
//!   connections see either none or all of a batch;
//! - isolation of failures: if any write of a batch fails, the batch is rolled back and each
//!   write is retried alone, so one caller's failure is never another's.
//!
//! Why no writer task (flat combining): the lead is not a task of its own but is held by a
//! caller. A write that finds the writer idle takes the lead and runs its batch right there,
//! on its own thread, with no channel hop and no task switch: alone, a write costs what the
//! statement costs. A write that finds the writer busy queues and waits. The leader, after
//! a batch of several writes, yields once to the runtime (so the callers it just answered
//! can queue their next writes) and runs the next batch, for at most `LEAD_BUDGET`; then it
//! hands the lead to the oldest waiting write, whose caller continues. So under load batches
//! run back to back on whichever thread holds the lead, and every wake-up is one a caller
//! needs anyway to get its answer. (Measured, and why: see the README's Performance section;
//! a dedicated writer thread was tried and lost, see there too.)
//!
//! The lead runs SQLite synchronously on the caller's thread. That is what SQLite costs on a
//! local file (microseconds, plus an `fsync` with `synchronous = FULL`), except when another
//! process holds the file's write lock: then waiting up to `busy_timeout` would block a
//! runtime thread. So the inline path never waits (busy timeout 0): a batch that meets a
//! busy file is handed, unchanged (nothing of it ran), to a blocking thread
//! (`spawn_blocking`), which waits with the configured `busy_timeout` and keeps the lead
//! meanwhile.
//!
//! Replies are typed: each queued write carries a reply channel for its own
//! [`Write::Output`], so the writer can never answer a caller with another operation's result.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_state_core::{Error, Operation, Result, SharedClock};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::BACKEND;
use crate::error::{classify_rusqlite, is_busy, map_rusqlite};

/// One kind of write: its SQL and what it answers.
///
/// Every timestamp a write stores is computed by the caller before sending (from the clock
/// read before the request, contract rule 12); `now`, passed to [`Write::execute`], is the
/// writer's own reading of the clock, used only to decide what has expired.
pub(crate) trait Write: Send + 'static {
    /// What the write answers its caller.
    type Output: Send + 'static;

    /// The contract operation, for errors.
    const OPERATION: Operation;

    /// Whether the write is one statement, which SQLite runs atomically on its own: alone, it
    /// needs no explicit transaction (saving the `BEGIN` and `COMMIT` statements).
    const SINGLE_STATEMENT: bool;

    /// Runs the write on `conn`, inside the writer's transaction if it has one.
    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> rusqlite::Result<Self::Output>;
}

/// How executing a job ended: the executed write, or the job back with the SQL error.
type Execution = std::result::Result<Box<dyn Executed>, (Box<dyn Job>, rusqlite::Error)>;

/// What a waiting caller receives.
enum Reply<W: Write> {
    /// Its write committed (or failed): the answer.
    Done(Result<W::Output>),
    /// Its write has not run yet, and the caller now holds the lead: it runs the next batch,
    /// its own write included.
    Lead(W),
}

/// A queued write of any type, with its caller's reply channel.
trait Job: Send {
    fn operation(&self) -> Operation;
    fn single_statement(&self) -> bool;
    /// Executes the write. On success the output is kept, unsent, until the transaction
    /// commits ([`Executed::answer`]) or rolls back ([`Executed::roll_back`]); on failure the
    /// job comes back for a retry or an error answer.
    fn execute(self: Box<Self>, conn: &Connection, scope: &str, now: i64) -> Execution;
    /// Answers the caller with an error.
    fn fail(self: Box<Self>, error: Error);
    /// Hands the lead to this job's caller, with its write unrun. `false` if the caller has
    /// stopped waiting (its write is then dropped, never run, and the lead stays here).
    fn lead(self: Box<Self>) -> bool;
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
    reply: oneshot::Sender<Reply<W>>,
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

    fn execute(self: Box<Self>, conn: &Connection, scope: &str, now: i64) -> Execution {
        match self.write.execute(conn, scope, now) {
            Ok(output) => Ok(Box::new(Ran {
                pending: *self,
                output,
            })),
            Err(e) => Err((self, e)),
        }
    }

    fn fail(self: Box<Self>, error: Error) {
        // A caller that stopped waiting no longer needs the answer.
        let _ = self.reply.send(Reply::Done(Err(error)));
    }

    fn lead(self: Box<Self>) -> bool {
        let Pending { write, reply } = *self;
        reply.send(Reply::Lead(write)).is_ok()
    }
}

impl<W: Write> Executed for Ran<W> {
    fn answer(self: Box<Self>) {
        let _ = self.pending.reply.send(Reply::Done(Ok(self.output)));
    }

    fn roll_back(self: Box<Self>) -> Box<dyn Job> {
        Box::new(self.pending)
    }
}

/// Handle to the writer.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Used only by the holder of the lead, so never contended; `None` once shut down.
    conn: Mutex<Option<Connection>>,
    scope: Arc<str>,
    clock: SharedClock,
    max_batch: usize,
    /// How long a batch handed to a blocking thread waits for another process's lock.
    busy_timeout: Duration,
    counters: Counters,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("max_batch", &self.max_batch)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Writes not yet taken by a batch, oldest first.
    queue: VecDeque<Box<dyn Job>>,
    /// Whether someone holds the lead (a caller, or a blocking thread waiting on the file).
    leader: bool,
    /// No new writes are accepted (the ones queued still run).
    closed: bool,
    /// Told when the writer goes idle after `closed` was set.
    idle: Vec<oneshot::Sender<()>>,
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

/// How long a caller that took the lead keeps running batches while writes keep queueing,
/// before handing the lead to the oldest waiting write. Long enough that under load batches
/// run back to back on one thread (a hand-off wakes a task, which may sit behind every task
/// the last batch answered), short enough to bound the leader's own latency. Measured at
/// concurrency 64 (2 cores): 100 µs and 500 µs gave 5-15 % less throughput than 2 ms, and a
/// worse p99 latency; 10 ms was no better than 2 ms.
const LEAD_BUDGET: Duration = Duration::from_millis(2);

/// A poisoned lock only means a panic elsewhere while it was held; the data it guards (a
/// queue, a connection) is still consistent, so keep going rather than panic too.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Writer {
    /// The writer over `conn`, whose busy timeout it sets to 0 (see the module docs).
    pub(crate) fn new(
        conn: Connection,
        scope: Arc<str>,
        clock: SharedClock,
        max_batch: usize,
        busy_timeout: Duration,
    ) -> std::result::Result<Self, Error> {
        conn.busy_timeout(Duration::ZERO)
            .map_err(|e| map_rusqlite(e, Operation::Open))?;
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                conn: Mutex::new(Some(conn)),
                scope,
                clock,
                max_batch: max_batch.max(1),
                busy_timeout,
                counters: Counters::default(),
            }),
        })
    }

    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            batches: self.shared.counters.batches.load(Ordering::Relaxed),
            writes: self.shared.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs one write and waits until it has committed.
    pub(crate) async fn write<W: Write>(&self, write: W) -> Result<W::Output> {
        let (reply, rx) = oneshot::channel();
        let lead = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(Error::closed(BACKEND, W::OPERATION));
            }
            state.queue.push_back(Box::new(Pending { write, reply }));
            !std::mem::replace(&mut state.leader, true)
        };
        let mut waiting = Waiting {
            rx: Some(rx),
            shared: &self.shared,
        };
        if lead {
            // The fast path: our write is the batch (with whatever queued since), run here.
            self.lead().await;
        }
        loop {
            let Some(rx) = waiting.rx.as_mut() else {
                return Err(Error::closed(BACKEND, W::OPERATION));
            };
            let reply = rx.await;
            waiting.rx = None;
            match reply {
                Ok(Reply::Done(result)) => return result,
                Ok(Reply::Lead(write)) => {
                    let (reply, rx) = oneshot::channel();
                    waiting.rx = Some(rx);
                    // Accepted before any close, so it runs even if the writer closed since.
                    lock(&self.shared.state)
                        .queue
                        .push_front(Box::new(Pending { write, reply }));
                    self.lead().await;
                }
                // Dropped unanswered: the writer was shut down, or the runtime that ran a
                // blocking batch went away.
                Err(_) => return Err(Error::closed(BACKEND, W::OPERATION)),
            }
        }
    }

    /// Runs batches as the holder of the lead, on the caller's thread and without waiting
    /// for a busy file. After a batch of several writes it yields to the runtime first, so
    /// the callers it just answered can queue their next writes and the next batch takes
    /// them all (without the yield, measured at concurrency 64: 2 writes per batch); it
    /// keeps the lead for at most [`LEAD_BUDGET`], then hands it to the oldest waiting
    /// write. The caller must hold the lead. Cancel-safe: dropped midway, it passes the lead
    /// on.
    async fn lead(&self) {
        let mut lead = Leading {
            shared: &self.shared,
            held: true,
        };
        let started = Instant::now();
        loop {
            match self.shared.run_one_batch() {
                Outcome::Nothing => {
                    // `take_batch` gave the lead up.
                    lead.held = false;
                    return;
                }
                Outcome::Busy(batch) => {
                    lead.held = false;
                    return self.shared.wait_in_background(batch);
                }
                Outcome::Batch(n) => {
                    if started.elapsed() >= LEAD_BUDGET {
                        // `lead`'s drop passes the lead on.
                        return;
                    }
                    if n > 1 || !lock(&self.shared.state).queue.is_empty() {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }

    /// Runs `read` on the writer's connection if the writer is idle (taking the lead for the
    /// read's duration), so that at low load reads and writes share one connection and its
    /// page cache, as a single-connection program would. `None` if the writer is busy or
    /// closed, or if the read met a busy file: then the read belongs on a read connection,
    /// which never waits for the writer.
    ///
    /// Why: another connection's commit empties a connection's whole page cache (SQLite
    /// cannot tell which pages changed), so a read on a read connection right after a write
    /// re-reads every page it touches, each looked up in the WAL index; measured, set+get at
    /// concurrency 1 ran 19 % more instructions that way than on the writer's connection.
    pub(crate) fn read_if_idle<T>(
        &self,
        op: Operation,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<Result<T>> {
        {
            let mut state = lock(&self.shared.state);
            if state.leader || state.closed {
                return None;
            }
            state.leader = true;
        }
        // Passes the lead on however the read ends.
        let _lead = LeadGuard(&self.shared);
        let conn = lock(&self.shared.conn);
        match read(conn.as_ref()?) {
            Ok(value) => Some(Ok(value)),
            Err(e) if is_busy(&e) => None,
            Err(e) => Some(Err(map_rusqlite(e, op))),
        }
    }

    /// Stops accepting writes, lets the ones already accepted commit, then closes the
    /// connection.
    pub(crate) async fn shutdown(&self) {
        let idle = {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            state.leader.then(|| {
                let (tx, rx) = oneshot::channel();
                state.idle.push(tx);
                rx
            })
        };
        if let Some(idle) = idle {
            let _ = idle.await;
        }
        // Closed and idle: nobody can lead again, so the connection is ours.
        let conn = lock(&self.shared.conn).take();
        if let Some(conn) = conn
            && let Err((_, e)) = conn.close()
        {
            let (kind, message) = classify_rusqlite(&e);
            tracing::debug!(%kind, %message, "closing the writer connection");
        }
    }
}

/// Held by a read on the writer's connection: passes the lead on when dropped (after the
/// connection's lock, declared later, is released).
struct LeadGuard<'a>(&'a Arc<Shared>);

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        self.0.pass_lead();
    }
}

/// What one batch did.
enum Outcome {
    /// Nothing was queued: the lead was given up.
    Nothing,
    /// A batch of this many writes ran and was answered.
    Batch(usize),
    /// The file was busy: this batch did not run, and needs a thread that may wait.
    Busy(Vec<Box<dyn Job>>),
}

/// The lead held by [`Writer::lead`]: passed on if dropped while `held`.
struct Leading<'a> {
    shared: &'a Arc<Shared>,
    held: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.held {
            self.shared.pass_lead();
        }
    }
}

/// A caller waiting for its reply. If the caller stops waiting (its future is dropped) just
/// as the lead is handed to it, the lead must not be lost with it: dropping passes it on.
struct Waiting<'a, W: Write> {
    rx: Option<oneshot::Receiver<Reply<W>>>,
    shared: &'a Arc<Shared>,
}

impl<W: Write> Drop for Waiting<'_, W> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Reply::Lead(_)) = rx.try_recv() {
                // Our write is dropped unrun (our caller is gone); the others still need a
                // leader.
                self.shared.pass_lead();
            }
        }
    }
}

/// Whether a batch may wait for another process's lock on the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// No: on a busy file give the batch back (inline, on a runtime thread).
    No,
    /// Yes, up to `busy_timeout` (on a blocking thread).
    Yes,
}

impl Shared {
    /// Runs one batch (everything queued, up to `max_batch`) as the holder of the lead,
    /// without waiting for a busy file.
    fn run_one_batch(&self) -> Outcome {
        let Some(batch) = self.take_batch() else {
            return Outcome::Nothing;
        };
        let n = batch.len();
        let conn = lock(&self.conn);
        match conn.as_ref() {
            Some(conn) => match self.run_batch(conn, batch, Wait::No) {
                Ok(()) => Outcome::Batch(n),
                Err(batch) => Outcome::Busy(batch),
            },
            None => {
                fail_closed(batch);
                Outcome::Batch(n)
            }
        }
    }

    /// Up to `max_batch` queued writes, or `None` (and the lead given up) if none.
    fn take_batch(&self) -> Option<Vec<Box<dyn Job>>> {
        let mut state = lock(&self.state);
        if state.queue.is_empty() {
            go_idle(&mut state);
            return None;
        }
        let n = state.queue.len().min(self.max_batch);
        let batch: Vec<_> = state.queue.drain(..n).collect();
        drop(state);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.writes.fetch_add(n as u64, Ordering::Relaxed);
        Some(batch)
    }

    /// The lead goes to the oldest waiting write's caller, or is given up if nothing is
    /// queued.
    fn pass_lead(&self) {
        loop {
            let next = {
                let mut state = lock(&self.state);
                match state.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        go_idle(&mut state);
                        return;
                    }
                }
            };
            if next.lead() {
                return;
            }
            // That caller is gone; its write is dropped unrun. Try the next one.
        }
    }

    /// Runs `batch`, which met a busy file, on a blocking thread that may wait for the lock;
    /// the lead stays with that thread until it passes it on.
    fn wait_in_background(self: &Arc<Self>, batch: Vec<Box<dyn Job>>) {
        let work = Background {
            shared: self.clone(),
            batch,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // If the runtime is shutting down the closure is dropped unrun; `Background`'s
                // drop still answers the batch (closed) and passes the lead on.
                drop(runtime.spawn_blocking(move || work.run()));
            }
            // Not on a runtime: there is no other thread to hand the wait to.
            Err(_) => work.run(),
        }
    }

    fn set_busy_timeout(&self, conn: &Connection, timeout: Duration) {
        if let Err(e) = conn.busy_timeout(timeout) {
            let (kind, message) = classify_rusqlite(&e);
            tracing::debug!(%kind, %message, "setting the busy timeout");
        }
    }

    /// Runs a batch: one transaction (a lone write runs alone, without `BEGIN` if it is a
    /// single statement), answered after it commits. If it fails, it is rolled back and each
    /// write retried alone. With [`Wait::No`], writes that met a busy file come back unrun.
    fn run_batch(
        &self,
        conn: &Connection,
        mut batch: Vec<Box<dyn Job>>,
        wait: Wait,
    ) -> std::result::Result<(), Vec<Box<dyn Job>>> {
        if batch.len() == 1 {
            if let Some(job) = batch.pop() {
                return self.run_alone(conn, job, wait).map_err(|job| vec![job]);
            }
            return Ok(());
        }
        match self.run_together(conn, batch) {
            Ok(executed) => {
                for write in executed {
                    write.answer();
                }
                Ok(())
            }
            Err((jobs, busy)) if busy && wait == Wait::No => Err(jobs),
            Err((jobs, _)) => {
                // Some write failed (or the commit did): nothing of the batch was kept.
                // Retry each alone so only the write that fails reports a failure.
                let mut rest = jobs.into_iter();
                while let Some(job) = rest.next() {
                    if let Err(job) = self.run_alone(conn, job, wait) {
                        return Err(std::iter::once(job).chain(rest).collect());
                    }
                }
                Ok(())
            }
        }
    }

    /// Runs every job of `batch` in one transaction. On success the executed writes are
    /// returned to be answered; on any failure the transaction is rolled back and every job
    /// comes back, in its original order, unanswered, with whether the failure was a busy
    /// file.
    #[allow(clippy::type_complexity)]
    fn run_together(
        &self,
        conn: &Connection,
        batch: Vec<Box<dyn Job>>,
    ) -> std::result::Result<Vec<Box<dyn Executed>>, (Vec<Box<dyn Job>>, bool)> {
        if let Err(e) = begin(conn) {
            return Err((batch, is_busy(&e)));
        }
        let mut executed: Vec<Box<dyn Executed>> = Vec::with_capacity(batch.len());
        let mut rest = batch.into_iter();
        while let Some(job) = rest.next() {
            match job.execute(conn, &self.scope, self.now()) {
                Ok(write) => executed.push(write),
                Err((job, e)) => {
                    rollback(conn);
                    let jobs = executed
                        .into_iter()
                        .map(|write| write.roll_back())
                        .chain(std::iter::once(job))
                        .chain(rest)
                        .collect();
                    return Err((jobs, is_busy(&e)));
                }
            }
        }
        if let Err(e) = commit(conn) {
            rollback(conn);
            let jobs = executed.into_iter().map(|w| w.roll_back()).collect();
            return Err((jobs, is_busy(&e)));
        }
        Ok(executed)
    }

    /// Runs one job on its own and answers it, or, with [`Wait::No`] on a busy file, gives
    /// it back unrun.
    fn run_alone(
        &self,
        conn: &Connection,
        job: Box<dyn Job>,
        wait: Wait,
    ) -> std::result::Result<(), Box<dyn Job>> {
        let operation = job.operation();
        let give_back = |e: &rusqlite::Error| wait == Wait::No && is_busy(e);
        // A single statement is atomic on its own. When waiting for the lock it still runs
        // in `BEGIN IMMEDIATE`, which takes the write lock up front through the busy handler
        // (an autocommit statement that read a snapshot another process then changed fails
        // with SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out).
        if job.single_statement() && wait == Wait::No {
            match job.execute(conn, &self.scope, self.now()) {
                Ok(write) => write.answer(),
                Err((job, e)) if give_back(&e) => return Err(job),
                Err((job, e)) => job.fail(map_rusqlite(e, operation)),
            }
            return Ok(());
        }
        if let Err(e) = begin(conn) {
            if give_back(&e) {
                return Err(job);
            }
            job.fail(map_rusqlite(e, operation));
            return Ok(());
        }
        let write = match job.execute(conn, &self.scope, self.now()) {
            Ok(write) => write,
            Err((job, e)) => {
                rollback(conn);
                if give_back(&e) {
                    return Err(job);
                }
                job.fail(map_rusqlite(e, operation));
                return Ok(());
            }
        };
        if let Err(e) = commit(conn) {
            rollback(conn);
            let job = write.roll_back();
            if give_back(&e) {
                return Err(job);
            }
            job.fail(map_rusqlite(e, operation));
            return Ok(());
        }
        write.answer();
        Ok(())
    }

    /// The clock as SQLite's `INTEGER` (times beyond `i64` cannot be stored, and the
    /// validators keep every stored expiry within it).
    fn now(&self) -> i64 {
        i64::try_from(self.clock.now_ms()).unwrap_or(i64::MAX)
    }
}

/// A batch that met a busy file, run on a blocking thread with the busy timeout on.
struct Background {
    shared: Arc<Shared>,
    batch: Vec<Box<dyn Job>>,
}

impl Background {
    fn run(mut self) {
        let batch = std::mem::take(&mut self.batch);
        let shared = &self.shared;
        let conn = lock(&shared.conn);
        let Some(conn) = conn.as_ref() else {
            fail_closed(batch);
            return;
        };
        shared.set_busy_timeout(conn, shared.busy_timeout);
        // With `Wait::Yes` every job is answered.
        let _ = shared.run_batch(conn, batch, Wait::Yes);
        shared.set_busy_timeout(conn, Duration::ZERO);
        // `drop` passes the lead on.
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Unrun jobs (the closure was dropped by a runtime shutting down) answer closed.
        fail_closed(std::mem::take(&mut self.batch));
        self.shared.pass_lead();
    }
}

/// Answers every job of `batch` with `Closed`.
fn fail_closed(batch: Vec<Box<dyn Job>>) {
    for job in batch {
        let op = job.operation();
        job.fail(Error::closed(BACKEND, op));
    }
}

/// Gives up the lead; wakes a `shutdown` waiting for the writer to be idle.
fn go_idle(state: &mut State) {
    state.leader = false;
    for idle in state.idle.drain(..) {
        let _ = idle.send(());
    }
}

fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    Ok(())
}

fn commit(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("COMMIT")?.execute([])?;
    Ok(())
}

fn rollback(conn: &Connection) {
    if conn.is_autocommit() {
        // SQLite already rolled back (some errors do): the state we want.
        return;
    }
    let result = conn
        .prepare_cached("ROLLBACK")
        .and_then(|mut s| s.execute([]));
    if let Err(e) = result {
        let (kind, message) = classify_rusqlite(&e);
        tracing::debug!(%kind, %message, "rollback after a failed write");
    }
}
