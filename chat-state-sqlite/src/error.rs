//! Turning SQLite failures (from sqlx at open, from rusqlite on the hot path) into the contract's typed [`Error`]s.

use std::fmt;

use chat_state_core::{Error, ErrorKind, Operation};

use crate::BACKEND;

/// Why [`SqliteState`](crate::SqliteState) refused to open a database, attached as the
/// [`source`](std::error::Error::source) of the returned [`Error`] so callers can match on it:
///
/// ```
/// # use chat_state_sqlite::OpenFailure;
/// fn explain(err: &chat_state_core::Error) -> Option<&OpenFailure> {
///     std::error::Error::source(err)?.downcast_ref::<OpenFailure>()
/// }
/// ```
///
/// In every case nothing in the file was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenFailure {
    /// The path names a directory, not a database file.
    IsDirectory {
        /// The path that was given.
        path: String,
    },
    /// The file exists but is not a SQLite database (or its header is corrupt).
    NotADatabase {
        /// The path that was given.
        path: String,
    },
    /// The file (or its directory) cannot be written: permissions, a read-only mount.
    ReadOnly {
        /// The path that was given.
        path: String,
    },
    /// The file was written by a newer version of this crate, whose schema this version does
    /// not know; opening it could corrupt the newer layout.
    SchemaTooNew {
        /// The schema version stored in the file.
        found: i64,
        /// The newest schema version this crate knows.
        supported: i64,
    },
    /// Verify-only mode ([`SchemaMode::VerifyOnly`](crate::SchemaMode::VerifyOnly)) found the
    /// schema missing or out of date.
    SchemaMissing {
        /// What is missing: table, index and trigger names, or the required version.
        missing: Vec<String>,
    },
}

impl fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenFailure::IsDirectory { path } => write!(
                f,
                "{path} is a directory; pass the path of a database file inside it \
                 (for example {path}/chat-state.db)"
            ),
            OpenFailure::NotADatabase { path } => write!(
                f,
                "{path} is not a SQLite database (or its header is corrupt); it was left \
                 untouched: point to another file or restore this one from a backup"
            ),
            OpenFailure::ReadOnly { path } => write!(
                f,
                "{path} cannot be written (file or directory permissions, or a read-only \
                 mount); the SQLite backend needs write access to the file and its directory \
                 (for the -wal and -shm files)"
            ),
            OpenFailure::SchemaTooNew { found, supported } => write!(
                f,
                "the database has chat-state schema version {found}, but this version of \
                 chat-state-sqlite knows versions up to {supported}; it was left untouched: \
                 upgrade chat-state-sqlite or use another file"
            ),
            OpenFailure::SchemaMissing { missing } => write!(
                f,
                "verify-only mode found the chat-state schema incomplete; missing: {}. Run \
                 the migrations once with SchemaMode::Create (or apply SqliteBackend::schema_sql())",
                missing.join(", ")
            ),
        }
    }
}

impl std::error::Error for OpenFailure {}

impl OpenFailure {
    fn kind(&self) -> ErrorKind {
        match self {
            OpenFailure::IsDirectory { .. } => ErrorKind::InvalidInput,
            OpenFailure::NotADatabase { .. } => ErrorKind::CorruptData,
            OpenFailure::ReadOnly { .. }
            | OpenFailure::SchemaTooNew { .. }
            | OpenFailure::SchemaMissing { .. } => ErrorKind::Backend,
        }
    }

    /// The typed error for this failure, with the failure itself as its source.
    pub(crate) fn into_error(self) -> Error {
        Error::new(self.kind(), self.to_string())
            .context(BACKEND, Operation::Open)
            .with_source(self)
    }
}

/// SQLite primary result codes we treat specially (the low byte of an extended code).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// The primary SQLite result code of a database error, if it is one.
pub(crate) fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff),
        _ => None,
    }
}

pub(crate) fn is_read_only(e: &sqlx::Error) -> bool {
    sqlite_code(e) == Some(SQLITE_READONLY)
}

pub(crate) fn is_not_a_database(e: &sqlx::Error) -> bool {
    matches!(sqlite_code(e), Some(SQLITE_NOTADB | SQLITE_CORRUPT))
}

/// Kind and explanation for a SQLite result code (primary code, the low byte) and SQLite's
/// message.
fn classify_code(code: i32, detail: &str) -> (ErrorKind, String) {
    match code {
        SQLITE_BUSY | SQLITE_LOCKED => (
            ErrorKind::Unavailable,
            format!(
                "the database stayed locked by another connection or process for longer \
                 than busy_timeout ({detail}); retry, or raise busy_timeout"
            ),
        ),
        SQLITE_READONLY => (
            ErrorKind::Backend,
            format!(
                "the database is read-only ({detail}); check the permissions of the file \
                 and its directory"
            ),
        ),
        SQLITE_CORRUPT | SQLITE_NOTADB => (
            ErrorKind::CorruptData,
            format!(
                "the database file is corrupt or not a SQLite database ({detail}); \
                 restore it from a backup"
            ),
        ),
        SQLITE_FULL => (
            ErrorKind::Backend,
            format!("the disk is full ({detail}); free space and retry"),
        ),
        SQLITE_IOERR | SQLITE_CANTOPEN => (
            ErrorKind::Unavailable,
            format!("SQLite could not read or write the file ({detail})"),
        ),
        _ => (ErrorKind::Backend, format!("SQLite error {code}: {detail}")),
    }
}

/// The primary SQLite result code of a failure on the hot path (rusqlite), if it is one.
pub(crate) fn rusqlite_code(e: &rusqlite::Error) -> Option<i32> {
    e.sqlite_error().map(|f| f.extended_code & 0xff)
}

/// Whether a hot-path failure is `SQLITE_BUSY`/`SQLITE_LOCKED`: another connection holds
/// the lock, nothing was done, and the same work can run again once it is free.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(rusqlite_code(e), Some(SQLITE_BUSY | SQLITE_LOCKED))
}

/// Kind and explanation for a hot-path (rusqlite) error, without the source (so it can be
/// built more than once).
pub(crate) fn classify_rusqlite(e: &rusqlite::Error) -> (ErrorKind, String) {
    match e {
        rusqlite::Error::SqliteFailure(f, message) => {
            let detail = message
                .clone()
                .unwrap_or_else(|| rusqlite::ffi::code_to_str(f.extended_code).to_owned());
            classify_code(f.extended_code & 0xff, &detail)
        }
        other => (ErrorKind::Backend, other.to_string()),
    }
}

/// The typed error for an operation that failed on the hot path, with the rusqlite error as
/// its source.
pub(crate) fn map_rusqlite(e: rusqlite::Error, op: Operation) -> Error {
    let (kind, message) = classify_rusqlite(&e);
    Error::new(kind, message)
        .context(BACKEND, op)
        .with_source(e)
}

/// Kind and explanation for a sqlx error, without the source (so it can be built more than
/// once).
pub(crate) fn classify(e: &sqlx::Error) -> (ErrorKind, String) {
    if let Some(code) = sqlite_code(e) {
        let detail = match e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            _ => String::new(),
        };
        return classify_code(code, &detail);
    }
    match e {
        sqlx::Error::PoolTimedOut => (
            ErrorKind::Timeout,
            "no read connection became free in time; raise read_connections or lower load"
                .to_owned(),
        ),
        sqlx::Error::PoolClosed => (
            ErrorKind::Closed,
            "the connection pool was closed (by close(), or by the application that owns the \
             pool)"
                .to_owned(),
        ),
        sqlx::Error::Io(io) => (
            ErrorKind::Unavailable,
            format!("I/O error talking to SQLite: {io}"),
        ),
        sqlx::Error::WorkerCrashed => (
            ErrorKind::Unavailable,
            "the SQLite worker thread stopped; reopen the database".to_owned(),
        ),
        other => (ErrorKind::Backend, other.to_string()),
    }
}

/// The typed error for a failed operation, with the sqlx error as its source.
pub(crate) fn map_sqlx(e: sqlx::Error, op: Operation) -> Error {
    let (kind, message) = classify(&e);
    Error::new(kind, message)
        .context(BACKEND, op)
        .with_source(e)
}

/// Stored data this crate cannot decode (written by another client or damaged).
pub(crate) fn corrupt(op: Operation, message: impl Into<String>) -> Error {
    Error::corrupt(message).context(BACKEND, op)
}
