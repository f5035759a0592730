//! Options for opening a [`SqliteState`](crate::SqliteState).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Clock, SharedClock, system_clock};
use sqlx::SqlitePool;

/// SQLite's `synchronous` setting: how often it waits for the disk (`fsync`).
///
/// The backend always runs in WAL mode, where the trade-off is:
///
/// | setting | survives a process crash (`kill -9`) | survives power loss / OS crash | cost |
/// |---|---|---|---|
/// | [`Normal`](Synchronous::Normal) (default) | yes, every committed write | the last commits before the crash may be lost (the file stays consistent) | no `fsync` per commit |
/// | [`Full`](Synchronous::Full) | yes | yes, every committed write | one `fsync` per commit (group commit shares it among concurrent writes) |
/// | [`Off`](Synchronous::Off) | yes | no: the file may be corrupted | none |
///
/// `Normal` is the usual choice for bot state (dedupe keys, locks with TTLs, caches), whose
/// loss on power failure costs a retry. Choose `Full` when a lost acknowledged write matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Never waits for the disk. Fast, and unsafe on power loss.
    Off,
    /// Waits for the disk at WAL checkpoints only (the default).
    #[default]
    Normal,
    /// Waits for the disk at every commit.
    Full,
}

impl Synchronous {
    pub(crate) fn to_sqlx(self) -> sqlx::sqlite::SqliteSynchronous {
        match self {
            Synchronous::Off => sqlx::sqlite::SqliteSynchronous::Off,
            Synchronous::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
            Synchronous::Full => sqlx::sqlite::SqliteSynchronous::Full,
        }
    }

    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "PRAGMA synchronous = OFF",
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
            Synchronous::Full => "PRAGMA synchronous = FULL",
        }
    }
}

/// What to do about the schema at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaMode {
    /// Create the schema, or upgrade it to this version, with versioned migrations (the
    /// default). Runs DDL.
    #[default]
    Create,
    /// Only check that the current schema is present, and fail with an error naming what is
    /// missing otherwise. For deployments where the application may not run DDL; apply
    /// [`SqliteBackend::schema_sql`](crate::SqliteBackend::schema_sql) with your own tooling.
    VerifyOnly,
}

#[derive(Debug, Clone)]
pub(crate) enum Source {
    Path(PathBuf),
    Pool(SqlitePool),
}

/// Builder for a [`SqliteState`](crate::SqliteState). Start from
/// [`SqliteBackend::builder`](crate::SqliteBackend::builder) (a file path) or
/// [`SqliteBackend::builder_with_pool`](crate::SqliteBackend::builder_with_pool).
#[derive(Debug, Clone)]
pub struct SqliteBuilder {
    pub(crate) source: Source,
    pub(crate) key_prefix: String,
    pub(crate) busy_timeout: Duration,
    pub(crate) synchronous: Synchronous,
    pub(crate) clock: SharedClock,
    pub(crate) schema_mode: SchemaMode,
    pub(crate) cleanup_interval: Option<Duration>,
    pub(crate) cleanup_batch: usize,
    pub(crate) max_batch: usize,
    pub(crate) read_connections: u32,
}

impl SqliteBuilder {
    pub(crate) fn new(source: Source) -> Self {
        Self {
            source,
            key_prefix: String::new(),
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::default(),
            clock: system_clock(),
            schema_mode: SchemaMode::default(),
            cleanup_interval: Some(Duration::from_secs(60)),
            cleanup_batch: 500,
            max_batch: 256,
            read_connections: 4,
        }
    }

    /// Namespace for every key, id and lock of this adapter, so several bots can share one
    /// file without seeing each other's state. Default: empty. It is stored in its own
    /// column, so no choice of prefix and key can collide with another. Same rules as keys
    /// (at most 1024 bytes, no NUL), but may be empty.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long a write waits for another process holding the file's write lock before
    /// failing with [`ErrorKind::Unavailable`](chat_state_core::ErrorKind::Unavailable).
    /// Default: 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Durability of commits; see [`Synchronous`]. Default: [`Synchronous::Normal`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// The clock used for every expiry decision. Default: the system clock. Tests pass a
    /// [`ManualClock`](chat_state_core::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Like [`SqliteBuilder::clock`], with an already shared clock.
    pub fn shared_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Create/upgrade the schema (default) or only verify it; see [`SchemaMode`].
    pub fn schema_mode(mut self, mode: SchemaMode) -> Self {
        self.schema_mode = mode;
        self
    }

    /// How often the background task deletes expired rows; `None` disables it (call
    /// [`SqliteBackend::cleanup_expired`](crate::SqliteBackend::cleanup_expired) yourself).
    /// Default: every 60 s. Expired rows are never returned either way; cleanup only keeps
    /// the file from growing.
    pub fn cleanup_interval(mut self, every: Option<Duration>) -> Self {
        self.cleanup_interval = every;
        self
    }

    /// Most rows of each table one cleanup transaction deletes, so cleanup never holds the
    /// write lock for long. Default: 500. At least 1.
    pub fn cleanup_batch(mut self, rows: usize) -> Self {
        self.cleanup_batch = rows.max(1);
        self
    }

    /// Most concurrent writes committed in one transaction (group commit). Default: 256.
    /// 1 disables batching.
    pub fn max_batch(mut self, writes: usize) -> Self {
        self.max_batch = writes.max(1);
        self
    }

    /// Connections used for reads (`get`, `is_subscribed`, `get_list`, `queue_depth`), which
    /// in WAL mode run in parallel with the writer. Default: 4.
    pub fn read_connections(mut self, n: u32) -> Self {
        self.read_connections = n.max(1);
        self
    }

    /// Opens the database; see [`SqliteBackend::open`](crate::SqliteBackend::open).
    pub async fn open(self) -> chat_state_core::Result<crate::SqliteState> {
        crate::open::open(self).await
    }
}
