#![doc = include_str!("../README.md")]

// Module layout:
// - `backend`: the contract operations (`Backend`, `LockInspector`): inputs turned into
//   reads and writes, rows decoded into results;
// - `reads` / `writes`: the SQL of each read and of each write (one `Write` type per write,
//   with its own output type);
// - `writer`: the group-commit engine (queue, lead hand-off, batching, transactions,
//   retries);
// - `readers`: the read connections;
// - `open`, `config`, `schema`: opening (schema and migrations through sqlx, then the
//   hot-path connections on libsqlite3 through rusqlite), its options, the versioned schema;
// - `cleanup`: expired-row cleanup, on demand and in the background;
// - `error`: SQLite failures as the contract's typed errors.

mod backend;
mod cleanup;
mod config;
mod error;
mod open;
mod readers;
mod reads;
mod schema;
mod writer;
mod writes;

use std::path::Path;
use std::sync::{Arc, Mutex};

use chat_state_core::{Checked, OpenState, Result, SharedClock};
use sqlx::SqlitePool;
use tokio::task::JoinHandle;

pub use config::{SchemaMode, SqliteBuilder, Synchronous};
pub use error::OpenFailure;
pub use writer::WriteStats;
pub use writes::CleanupReport;

use config::Source;
use readers::Readers;
use writer::Writer;

/// The backend name in errors and logs.
pub(crate) const BACKEND: &str = "sqlite";

/// The chat-state schema version this crate creates and understands.
pub const SCHEMA_VERSION: i64 = schema::LATEST_VERSION;

/// The SQLite backend as a [`StateAdapter`](chat_state_core::StateAdapter): the
/// [`SqliteBackend`] behind core's rule layer, state in one file shared safely by every
/// process that opens it.
///
/// Open it with [`SqliteBackend::open`] (defaults) or [`SqliteBackend::builder`]. To share
/// one adapter between tasks, put it in an `Arc`. Backend-specific methods
/// ([`write_stats`](SqliteBackend::write_stats),
/// [`cleanup_expired`](SqliteBackend::cleanup_expired), ...) are reached through
/// [`Checked::backend`]. See the crate docs for the design.
pub type SqliteState = Checked<SqliteBackend>;

/// The SQLite backend's storage: one writer connection (group commit) and a set of read
/// connections on one database file.
///
/// Use it as a [`SqliteState`], which is what the constructors return; the layer validates
/// inputs, enforces close, and builds locks, while this type only runs the SQL.
#[derive(Debug)]
pub struct SqliteBackend {
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
    /// Closed by [`Backend::close`](chat_state_core::Backend::close); read by the cleanup
    /// task and by [`SqliteBackend::cleanup_expired`], which the layer does not guard.
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

impl SqliteBackend {
    /// Opens (creating if missing) the database file at `path` with the default options:
    /// WAL mode, `synchronous = NORMAL`, a 5 s busy timeout, no key prefix, the system
    /// clock, schema created or upgraded, expired rows cleaned every 60 s.
    ///
    /// Must be called inside a tokio runtime (it starts the cleanup task on it, and a write
    /// that finds the file locked by another process waits on the runtime's blocking
    /// threads).
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteState> {
        Self::builder(path).open().await
    }

    /// A builder for a database file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteBuilder {
        SqliteBuilder::new(Source::Path(path.as_ref().to_path_buf()))
    }

    /// A builder that uses the application's existing pool: one of its connections is taken
    /// out of it (detached) to check and migrate the schema, then closed; the backend's own
    /// connections (the writer and the readers) are opened on the pool's file, with this
    /// builder's `busy_timeout` and `synchronous`. The pool itself stays the application's,
    /// to use and close. A pool on an in-memory database is refused (`InvalidInput`): no
    /// other connection could see its data.
    pub fn builder_with_pool(pool: SqlitePool) -> SqliteBuilder {
        SqliteBuilder::new(Source::Pool(pool))
    }

    /// The DDL of the current schema, for applying with your own migration tooling before
    /// opening with [`SchemaMode::VerifyOnly`].
    pub fn schema_sql() -> String {
        schema::schema_sql()
    }

    fn new(
        writer: Writer,
        readers: Readers,
        scope: Arc<str>,
        clock: SharedClock,
        cleanup_batch: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                writer,
                readers,
                scope,
                clock,
                cleanup_batch,
                cleanup_task: Mutex::new(None),
                open: OpenState::new(),
            }),
        }
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
    /// this periodically; tests call it directly with a manual clock. After close it fails
    /// with [`ErrorKind::Closed`](chat_state_core::ErrorKind::Closed).
    pub async fn cleanup_expired(&self) -> Result<CleanupReport> {
        cleanup::expired(&self.inner).await
    }
}

/// A value for SQLite's `INTEGER`. Callers pass values the validators already bounded to
/// the `i64` range.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
