//! Opening a database: connection settings, the schema check or migration and WAL mode
//! (through sqlx), then the writer, the read connections (the hot path, on libsqlite3
//! directly) and the background cleanup task.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Checked, Error, Operation, Result, validate};
use rusqlite::{Connection, OpenFlags};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};

use crate::config::{SchemaMode, Source, Synchronous};
use crate::error::{self, OpenFailure, map_rusqlite, map_sqlx};
use crate::readers::Readers;
use crate::schema::{self, SchemaError};
use crate::writer::Writer;
use crate::{BACKEND, SCHEMA_VERSION, SqliteBackend, SqliteBuilder, SqliteState, cleanup};

fn open_error(e: sqlx::Error) -> Error {
    map_sqlx(e, Operation::Open)
}

/// Opens the database `b` describes; see [`SqliteBackend::open`].
pub(crate) async fn open(b: SqliteBuilder) -> Result<SqliteState> {
    if !b.key_prefix.is_empty() {
        validate::key(BACKEND, Operation::Open, "key prefix", &b.key_prefix)?;
    }
    let (mut conn, file, path) = match &b.source {
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
            (conn, path.clone(), shown)
        }
        Source::Pool(pool) => {
            let file = pool.connect_options().get_filename().to_path_buf();
            // sqlx names the database of an in-memory pool `file:sqlx-in-memory-<n>` (a
            // shared-cache URI), or keeps `:memory:`.
            let name = file.to_string_lossy();
            if name.is_empty() || name == ":memory:" || name.starts_with("file:sqlx-in-memory-") {
                return Err(Error::invalid_input(
                    "the pool is on an in-memory database, which only its own connections \
                     can see; open the pool on a file",
                )
                .context(BACKEND, Operation::Open));
            }
            // Detached: the pragmas set on it below must not leak back into the pool.
            let conn = pool.acquire().await.map_err(open_error)?.detach();
            let path = file.display().to_string();
            (conn, file, path)
        }
    };
    let prepared = prepare(&mut conn, &b, &path).await;
    schema::close_quietly(conn).await;
    prepared?;
    // Opened after the schema is in place, so they never see a half-built file.
    let hot = || connect(&file, b.busy_timeout, b.synchronous);
    let writer_conn = hot().map_err(|e| map_rusqlite(e, Operation::Open))?;
    let readers = (0..b.read_connections.max(1))
        .map(|_| hot())
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| map_rusqlite(e, Operation::Open))?;
    let readers = Readers::new(readers);
    let scope: Arc<str> = Arc::from(b.key_prefix.as_str());
    let writer = Writer::new(
        writer_conn,
        scope.clone(),
        b.clock.clone(),
        b.max_batch,
        b.busy_timeout,
    )?;
    let backend = SqliteBackend::new(writer, readers, scope, b.clock.clone(), b.cleanup_batch);
    if let Some(every) = b.cleanup_interval {
        cleanup::start(&backend, every);
    }
    tracing::debug!(path = %path, prefix = %b.key_prefix, "sqlite chat-state opened");
    Ok(Checked::new(backend))
}

/// A hot-path connection to `file`, which exists and has the schema: read-write, never
/// created (a file deleted under us is an error, not a new empty database), no
/// per-connection mutex (each connection is used by one thread at a time, behind our own
/// lock), prepared statements cached.
fn connect(file: &Path, busy_timeout: Duration, sync: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch(sync.pragma())?;
    // The bundled SQLite enforces foreign keys by default; our schema has none, so skip the
    // per-statement lookups (as the sqlx connection at open does).
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    // Every statement of the crate (about 25) stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
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
