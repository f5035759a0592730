#![doc = include_str!("../README.md")]

mod config;
mod error;
mod schema;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chat_state_core::{
    Cache, Error, ErrorKind, InspectLocks, ListOptions, Lists, Lock, LockInfo, Locks, OpenState,
    Operation, QueueEntry, Queues, Result, SharedClock, StateAdapter, Subscriptions,
    new_lock_token, validate,
};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection, SqlitePool};
use tokio::task::JoinHandle;

/// The read connections: in WAL mode reads run in parallel with the writer and each other.
///
/// A fixed set of connections behind async mutexes rather than an `sqlx` pool: a pool
/// acquire costs about as much as the read itself on a local file (measured: set+get at
/// concurrency 1 ran at half the raw speed through `SqlitePool`).
#[derive(Debug)]
struct Readers {
    conns: Vec<tokio::sync::Mutex<Option<SqliteConnection>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    async fn open(
        options: &SqliteConnectOptions,
        n: u32,
    ) -> std::result::Result<Self, sqlx::Error> {
        let mut conns = Vec::new();
        for _ in 0..n.max(1) {
            conns.push(tokio::sync::Mutex::new(Some(options.connect().await?)));
        }
        Ok(Self {
            conns,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The first free connection, else waits for one (round-robin). Preferring the first
    /// keeps few connections busy at low load: their SQLite threads stay awake and their
    /// page caches warm (measured: round-robin over idle connections halved read speed).
    async fn get(
        &self,
        op: Operation,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, SqliteConnection>> {
        let free = self.conns.iter().find_map(|c| c.try_lock().ok());
        let guard = match free {
            Some(g) => g,
            None => {
                let n = self.conns.len();
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
                self.conns[i].lock().await
            }
        };
        // An empty slot was emptied by close() while this call waited.
        tokio::sync::MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| Error::closed(BACKEND, op))
    }

    async fn close(&self) {
        for slot in &self.conns {
            if let Some(conn) = slot.lock().await.take() {
                let _ = conn.close().await;
            }
        }
    }
}

pub use config::{SchemaMode, SqliteBuilder, Synchronous};
pub use error::OpenFailure;
pub use writer::{CleanupReport, WriteStats};

use config::Source;
use error::{corrupt, map_sqlx};
use schema::SchemaError;
use writer::{WriteOp, WriteOut, Writer};

/// The backend name in errors and logs.
pub(crate) const BACKEND: &str = "sqlite";

/// The chat-state schema version this crate creates and understands.
pub const SCHEMA_VERSION: i64 = schema::LATEST_VERSION;

/// The SQLite backend: state in one file, shared safely by every process that opens it.
///
/// Open it with [`SqliteState::open`] (defaults) or [`SqliteState::builder`]; it is a cheap
/// handle (clones share one writer and its read connections). See the crate docs for the design.
#[derive(Debug, Clone)]
pub struct SqliteState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writer: Writer,
    readers: Readers,
    scope: Arc<str>,
    clock: SharedClock,
    cleanup_batch: usize,
    cleanup_task: Mutex<Option<JoinHandle<()>>>,
    open: OpenState,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The task only holds a Weak, but it would otherwise sleep until its next tick.
        if let Ok(mut task) = self.cleanup_task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

fn open_error(e: sqlx::Error) -> Error {
    map_sqlx(e, Operation::Open)
}

impl SqliteState {
    /// Opens (creating if missing) the database file at `path` with the default options:
    /// WAL mode, `synchronous = NORMAL`, a 5 s busy timeout, no key prefix, the system
    /// clock, schema created or upgraded, expired rows cleaned every 60 s.
    ///
    /// Must be called inside a tokio runtime (it starts the writer and cleanup tasks on it),
    /// and used while that runtime runs: once it shuts down, operations fail with
    /// [`ErrorKind::Closed`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open().await
    }

    /// A builder for a database file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteBuilder {
        SqliteBuilder::new(Source::Path(path.as_ref().to_path_buf()))
    }

    /// A builder that uses the application's existing pool: one of its connections is taken
    /// out of it (detached) to be the writer, and the read connections are opened with the
    /// pool's connect options (its file, flags and pragmas), plus this builder's
    /// `busy_timeout` and `synchronous`. The pool itself stays the application's, to use and
    /// close.
    pub fn builder_with_pool(pool: SqlitePool) -> SqliteBuilder {
        SqliteBuilder::new(Source::Pool(pool))
    }

    /// The DDL of the current schema, for applying with your own migration tooling before
    /// opening with [`SchemaMode::VerifyOnly`].
    pub fn schema_sql() -> String {
        schema::schema_sql()
    }

    pub(crate) async fn open_with(b: SqliteBuilder) -> Result<Self> {
        if !b.key_prefix.is_empty() {
            validate::key(BACKEND, Operation::Open, "key prefix", &b.key_prefix)?;
        }
        let (mut conn, read_options, path) = match &b.source {
            Source::Path(path) => {
                let shown = path.display().to_string();
                if path.is_dir() {
                    return Err(OpenFailure::IsDirectory { path: shown }.into_error());
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(b.schema_mode == SchemaMode::Create)
                    .busy_timeout(b.busy_timeout)
                    .synchronous(b.synchronous.to_sqlx())
                    // Our schema has no foreign keys; skip the per-connection pragma work.
                    .foreign_keys(false);
                // Connecting already runs pragmas, which read the file's header.
                let conn = options.connect().await.map_err(|e| {
                    if error::is_read_only(&e) {
                        OpenFailure::ReadOnly {
                            path: shown.clone(),
                        }
                        .into_error()
                    } else if error::is_not_a_database(&e) {
                        OpenFailure::NotADatabase {
                            path: shown.clone(),
                        }
                        .into_error()
                    } else {
                        open_error(e)
                    }
                })?;
                // `create_if_missing` off: a file deleted under us is an error, not a new
                // empty database.
                (conn, options.create_if_missing(false), shown)
            }
            Source::Pool(pool) => {
                let conn = pool.acquire().await.map_err(open_error)?.detach();
                let options = (*pool.connect_options()).clone();
                let path = options.get_filename().display().to_string();
                let options = options
                    .busy_timeout(b.busy_timeout)
                    .synchronous(b.synchronous.to_sqlx());
                (conn, options, path)
            }
        };
        if let Err(e) = prepare(&mut conn, &b, &path).await {
            schema::close_quietly(conn).await;
            return Err(e);
        }
        // Opened after the schema is in place, so they never see a half-built file.
        let readers = match Readers::open(&read_options, b.read_connections).await {
            Ok(readers) => readers,
            Err(e) => {
                schema::close_quietly(conn).await;
                return Err(open_error(e));
            }
        };
        let scope: Arc<str> = Arc::from(b.key_prefix.as_str());
        let writer = Writer::spawn(conn, scope.clone(), b.clock.clone(), b.max_batch);
        let state = SqliteState {
            inner: Arc::new(Inner {
                writer,
                readers,
                scope,
                clock: b.clock.clone(),
                cleanup_batch: b.cleanup_batch,
                cleanup_task: Mutex::new(None),
                open: OpenState::new(),
            }),
        };
        if let Some(every) = b.cleanup_interval {
            let task = tokio::spawn(cleanup_loop(Arc::downgrade(&state.inner), every));
            if let Ok(mut slot) = state.inner.cleanup_task.lock() {
                *slot = Some(task);
            }
        }
        tracing::debug!(path = %path, prefix = %b.key_prefix, "sqlite chat-state opened");
        Ok(state)
    }

    /// How many writes the writer has run and in how many batches (transactions) so far:
    /// `writes / batches` is the average group-commit size.
    pub fn write_stats(&self) -> WriteStats {
        self.inner.writer.stats()
    }

    /// The key prefix this adapter's state lives under.
    pub fn key_prefix(&self) -> &str {
        &self.inner.scope
    }

    /// Deletes every expired row in the file now (all key prefixes), in transactions of at
    /// most `cleanup_batch` rows per table, and reports how many it removed. Live rows are
    /// never touched: a row is deleted only if `expires_at <= now`. The background task calls
    /// this periodically; tests call it directly with a manual clock.
    pub async fn cleanup_expired(&self) -> Result<CleanupReport> {
        self.inner.cleanup_expired().await
    }
}

/// Connection settings, then the schema check or migration. Nothing is written before the
/// file is known to be a SQLite database of a schema version we understand.
async fn prepare(conn: &mut SqliteConnection, b: &SqliteBuilder, path: &str) -> Result<()> {
    let schema_err = |e: SchemaError| match e {
        SchemaError::Open(f) => f.into_error(),
        e if schema::read_only(&e) => OpenFailure::ReadOnly {
            path: path.to_owned(),
        }
        .into_error(),
        SchemaError::Sql(e) if error::is_not_a_database(&e) => OpenFailure::NotADatabase {
            path: path.to_owned(),
        }
        .into_error(),
        SchemaError::Sql(e) => open_error(e),
    };
    if matches!(b.source, Source::Pool(_)) {
        let busy_ms = i64::try_from(b.busy_timeout.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(&format!("PRAGMA busy_timeout = {busy_ms}"))
            .execute(&mut *conn)
            .await
            .map_err(open_error)?;
        sqlx::query(b.synchronous.pragma())
            .execute(&mut *conn)
            .await
            .map_err(open_error)?;
    }
    // Read first: a non-database file or a newer schema is rejected before any write.
    let version = schema::stored_version(conn)
        .await
        .map_err(|e| schema_err(e.into()))?;
    if version > SCHEMA_VERSION {
        return Err(OpenFailure::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        }
        .into_error());
    }
    if b.schema_mode == SchemaMode::VerifyOnly {
        schema::verify(conn).await.map_err(schema_err)?;
    }
    set_wal(conn, b.busy_timeout).await.map_err(schema_err)?;
    // In verify mode this only proves the file is writable (the schema is current).
    schema::migrate(conn).await.map_err(schema_err)?;
    Ok(())
}

/// Switches the file to WAL (persistent; a no-op if it already is). Changing the journal
/// mode needs an exclusive lock that `busy_timeout` does not wait for, so retry briefly when
/// another process is opening the same fresh file at the same moment.
async fn set_wal(conn: &mut SqliteConnection, busy_timeout: Duration) -> Result<(), SchemaError> {
    let deadline = tokio::time::Instant::now() + busy_timeout;
    loop {
        match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await
        {
            Ok(mode) => {
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(
                        %mode,
                        "SQLite refused WAL mode; readers and the writer will block each other"
                    );
                }
                return Ok(());
            }
            Err(e)
                if matches!(error::sqlite_code(&e), Some(5 | 6))
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn cleanup_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so opening does not start with a cleanup.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.open.is_closed() {
            return;
        }
        match inner.cleanup_expired().await {
            Ok(report) if report.total() > 0 => {
                tracing::debug!(?report, "removed expired chat-state rows");
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Closed => return,
            // Busy or I/O trouble: the next tick tries again; expired rows are never read.
            Err(e) => tracing::warn!(error = %e, "expired-row cleanup failed"),
        }
    }
}

fn unexpected(op: Operation, out: &WriteOut) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("internal error: the writer answered {out:?}; please report this bug"),
    )
    .context(BACKEND, op)
}

fn to_i64(v: u64) -> i64 {
    // Callers pass values the validators already bounded to the i64 range.
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Inner {
    fn check(&self, op: Operation) -> Result<()> {
        self.open.check(BACKEND, op)
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn expiry(&self, op: Operation, now: u64, ttl: Duration) -> Result<i64> {
        validate::expiry_ms(now, ttl)
            .map(to_i64)
            .map_err(|e| e.context(BACKEND, op))
    }

    fn optional_expiry(
        &self,
        op: Operation,
        now: u64,
        ttl: Option<Duration>,
    ) -> Result<Option<i64>> {
        ttl.map(|t| self.expiry(op, now, t)).transpose()
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOut> {
        self.writer.write(op).await
    }

    async fn write_unit(&self, operation: Operation, op: WriteOp) -> Result<()> {
        match self.write(op).await? {
            WriteOut::Unit => Ok(()),
            other => Err(unexpected(operation, &other)),
        }
    }

    async fn cleanup_expired(&self) -> Result<CleanupReport> {
        let op = Operation::Maintenance;
        self.check(op)?;
        let limit = self.cleanup_batch as u64;
        let mut total = CleanupReport::default();
        loop {
            let pass = match self
                .write(WriteOp::Cleanup {
                    limit: to_i64(limit),
                })
                .await?
            {
                WriteOut::Cleaned(report) => report,
                other => return Err(unexpected(op, &other)),
            };
            total.add(&pass);
            let full = [
                pass.locks,
                pass.cache,
                pass.lists,
                pass.list_items,
                pass.queue_entries,
            ]
            .iter()
            .any(|&n| n >= limit);
            if !full {
                return Ok(total);
            }
        }
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Subscriptions for SqliteState {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let op = Operation::Subscribe;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.inner.check(op)?;
        self.inner
            .write_unit(
                op,
                WriteOp::Subscribe {
                    thread_id: thread_id.to_owned(),
                },
            )
            .await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let op = Operation::Unsubscribe;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.inner.check(op)?;
        self.inner
            .write_unit(
                op,
                WriteOp::Unsubscribe {
                    thread_id: thread_id.to_owned(),
                },
            )
            .await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let op = Operation::IsSubscribed;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.inner.check(op)?;
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM chat_state_subscriptions WHERE scope = ?1 AND thread_id = ?2",
        )
        .bind(&*self.inner.scope)
        .bind(thread_id)
        .fetch_optional(&mut *self.inner.readers.get(op).await?)
        .await
        .map_err(|e| map_sqlx(e, op))?;
        Ok(found.is_some())
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl InspectLocks for SqliteState {
    /// Reads the lock row on a read connection; never writes. Open with
    /// [`SchemaMode::VerifyOnly`] to inspect a deployment's file without migrating it.
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        let op = Operation::LockInfo;
        validate::lock_info(BACKEND, lock_id)?;
        self.inner.check(op)?;
        let now = to_i64(self.inner.now());
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT token, expires_at, fence FROM chat_state_locks \
             WHERE scope = ?1 AND lock_id = ?2 AND expires_at > ?3",
        )
        .bind(&*self.inner.scope)
        .bind(lock_id)
        .bind(now)
        .fetch_optional(&mut *self.inner.readers.get(op).await?)
        .await
        .map_err(|e| map_sqlx(e, op))?;
        row.map(|(token, expires_at, fence)| {
            Ok(LockInfo {
                token,
                expires_at: u64::try_from(expires_at).map_err(|_| {
                    corrupt(op, format!("lock {lock_id:?} has expiry {expires_at}"))
                })?,
                fence: Some(
                    u64::try_from(fence)
                        .map_err(|_| corrupt(op, format!("lock {lock_id:?} has fence {fence}")))?,
                ),
            })
        })
        .transpose()
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Locks for SqliteState {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        let op = Operation::AcquireLock;
        validate::acquire_lock(BACKEND, lock_id, ttl)?;
        self.inner.check(op)?;
        // Read before sending (rule 12): the caller's expiry is never later than ours.
        let now = self.inner.now();
        let expires_at = self.inner.expiry(op, now, ttl)?;
        let token = new_lock_token().map_err(|e| e.context(BACKEND, op))?;
        let out = self
            .inner
            .write(WriteOp::Acquire {
                lock_id: lock_id.to_owned(),
                token: token.clone(),
                expires_at,
            })
            .await?;
        match out {
            WriteOut::Fence(None) => Ok(None),
            WriteOut::Fence(Some(fence)) => {
                let fence = u64::try_from(fence).map_err(|_| {
                    corrupt(
                        op,
                        format!("the stored fence counter is negative ({fence})"),
                    )
                })?;
                Ok(Some(Lock {
                    thread_id: lock_id.to_owned(),
                    token,
                    expires_at: expires_at as u64,
                    fence,
                }))
            }
            other => Err(unexpected(op, &other)),
        }
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let op = Operation::ReleaseLock;
        validate::release_lock(BACKEND, lock)?;
        self.inner.check(op)?;
        self.inner
            .write_unit(
                op,
                WriteOp::Release {
                    lock_id: lock.thread_id.clone(),
                    token: lock.token.clone(),
                },
            )
            .await
    }

    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        let op = Operation::ExtendLock;
        validate::extend_lock(BACKEND, lock, ttl)?;
        self.inner.check(op)?;
        let now = self.inner.now();
        let expires_at = self.inner.expiry(op, now, ttl)?;
        match self
            .inner
            .write(WriteOp::Extend {
                lock_id: lock.thread_id.clone(),
                token: lock.token.clone(),
                expires_at,
            })
            .await?
        {
            WriteOut::Bool(done) => Ok(done),
            other => Err(unexpected(op, &other)),
        }
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        let op = Operation::ForceReleaseLock;
        validate::force_release_lock(BACKEND, lock_id)?;
        self.inner.check(op)?;
        self.inner
            .write_unit(
                op,
                WriteOp::ForceRelease {
                    lock_id: lock_id.to_owned(),
                },
            )
            .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Cache for SqliteState {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let op = Operation::Get;
        validate::cache_key(BACKEND, op, key)?;
        self.inner.check(op)?;
        let now = to_i64(self.inner.now());
        sqlx::query_scalar(
            "SELECT value FROM chat_state_cache WHERE scope = ?1 AND cache_key = ?2
             AND (expires_at IS NULL OR expires_at > ?3)",
        )
        .bind(&*self.inner.scope)
        .bind(key)
        .bind(now)
        .fetch_optional(&mut *self.inner.readers.get(op).await?)
        .await
        .map_err(|e| map_sqlx(e, op))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let op = Operation::Set;
        validate::set(BACKEND, op, key, value, ttl)?;
        self.inner.check(op)?;
        let expires_at = self.inner.optional_expiry(op, self.inner.now(), ttl)?;
        self.inner
            .write_unit(
                op,
                WriteOp::Set {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    expires_at,
                },
            )
            .await
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let op = Operation::SetIfNotExists;
        validate::set(BACKEND, op, key, value, ttl)?;
        self.inner.check(op)?;
        let expires_at = self.inner.optional_expiry(op, self.inner.now(), ttl)?;
        match self
            .inner
            .write(WriteOp::SetIfNotExists {
                key: key.to_owned(),
                value: value.to_vec(),
                expires_at,
            })
            .await?
        {
            WriteOut::Bool(stored) => Ok(stored),
            other => Err(unexpected(op, &other)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let op = Operation::Delete;
        validate::cache_key(BACKEND, op, key)?;
        self.inner.check(op)?;
        self.inner
            .write_unit(
                op,
                WriteOp::Delete {
                    key: key.to_owned(),
                },
            )
            .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Lists for SqliteState {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let op = Operation::AppendToList;
        validate::append_to_list(BACKEND, key, value, &options)?;
        self.inner.check(op)?;
        let expires_at = self
            .inner
            .optional_expiry(op, self.inner.now(), options.ttl)?;
        self.inner
            .write_unit(
                op,
                WriteOp::Append {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    expires_at,
                    max_length: options.max_length.map(|n| to_i64(n as u64)),
                },
            )
            .await
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let op = Operation::GetList;
        validate::cache_key(BACKEND, op, key)?;
        self.inner.check(op)?;
        let now = to_i64(self.inner.now());
        // One statement, so one snapshot: the header's expiry and the items agree.
        sqlx::query_scalar(
            "SELECT i.value FROM chat_state_lists l
             JOIN chat_state_list_items i ON i.scope = l.scope AND i.list_key = l.list_key
             WHERE l.scope = ?1 AND l.list_key = ?2
               AND (l.expires_at IS NULL OR l.expires_at > ?3)
             ORDER BY i.id",
        )
        .bind(&*self.inner.scope)
        .bind(key)
        .bind(now)
        .fetch_all(&mut *self.inner.readers.get(op).await?)
        .await
        .map_err(|e| map_sqlx(e, op))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Queues for SqliteState {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let op = Operation::Enqueue;
        validate::enqueue(BACKEND, thread_id, &entry, max_size)?;
        self.inner.check(op)?;
        let message = serde_json::to_string(&entry.message).map_err(|e| {
            Error::invalid_input(format!("queue message is not serializable: {e}"))
                .context(BACKEND, op)
        })?;
        match self
            .inner
            .write(WriteOp::Enqueue {
                thread_id: thread_id.to_owned(),
                enqueued_at: to_i64(entry.enqueued_at),
                expires_at: to_i64(entry.expires_at),
                message,
                max_size: to_i64(max_size as u64),
            })
            .await?
        {
            WriteOut::Depth(depth) => usize::try_from(depth)
                .map_err(|_| corrupt(op, format!("SQLite counted {depth} entries"))),
            other => Err(unexpected(op, &other)),
        }
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let op = Operation::Dequeue;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.inner.check(op)?;
        let row = match self
            .inner
            .write(WriteOp::Dequeue {
                thread_id: thread_id.to_owned(),
            })
            .await?
        {
            WriteOut::Entry(row) => row,
            other => return Err(unexpected(op, &other)),
        };
        let Some((enqueued_at, expires_at, message)) = row else {
            return Ok(None);
        };
        // Rows written by another client may not decode; say so rather than guess.
        let time = |v: i64, what: &str| {
            u64::try_from(v)
                .map_err(|_| corrupt(op, format!("queue entry has a negative {what} ({v})")))
        };
        let message = serde_json::from_str(&message).map_err(|e| {
            corrupt(op, format!("queue entry message is not valid JSON: {e}")).with_source(e)
        })?;
        Ok(Some(QueueEntry {
            enqueued_at: time(enqueued_at, "enqueued_at")?,
            expires_at: time(expires_at, "expires_at")?,
            message,
        }))
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let op = Operation::QueueDepth;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.inner.check(op)?;
        let now = to_i64(self.inner.now());
        let depth: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chat_state_queue
             WHERE scope = ?1 AND thread_id = ?2 AND expires_at > ?3",
        )
        .bind(&*self.inner.scope)
        .bind(thread_id)
        .bind(now)
        .fetch_one(&mut *self.inner.readers.get(op).await?)
        .await
        .map_err(|e| map_sqlx(e, op))?;
        usize::try_from(depth).map_err(|_| corrupt(op, format!("SQLite counted {depth} entries")))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl StateAdapter for SqliteState {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn connect(&self) -> Result<()> {
        let op = Operation::Connect;
        self.inner.check(op)?;
        // The schema was applied at open; this proves the file is still readable.
        sqlx::query("SELECT 1 FROM chat_state_meta LIMIT 1")
            .execute(&mut *self.inner.readers.get(op).await?)
            .await
            .map_err(|e| map_sqlx(e, op))?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if !self.inner.open.close() {
            return Ok(());
        }
        let task = self
            .inner
            .cleanup_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
        }
        // Lets writes already handed to the writer commit, then closes its connection.
        self.inner.writer.shutdown().await;
        self.inner.readers.close().await;
        Ok(())
    }
}
