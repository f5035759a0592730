//! The versioned schema: migrations applied at open, or verified without running DDL.
//!
//! The version lives in `chat_state_meta` (row `schema_version`) rather than in
//! `PRAGMA user_version`, because the file may be shared with the application, whose own
//! migrations may use `user_version`. Every object is named `chat_state_*` for the same reason.

use sqlx::{Connection, SqliteConnection};

use crate::error::{OpenFailure, is_read_only};

/// One schema version: the statements that bring version `n - 1` to `n`.
struct Migration {
    version: i64,
    statements: &'static [&'static str],
}

/// Every migration, oldest first. Append new versions; never edit a shipped one, since files
/// in the field were created by it.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &[
            "CREATE TABLE IF NOT EXISTS chat_state_meta (
            name TEXT PRIMARY KEY NOT NULL,
            value INTEGER NOT NULL
        ) WITHOUT ROWID",
            // The fence floor: the highest fence ever issued in this file. Lock rows are deleted on
            // release and expiry, so the floor is what keeps fences increasing afterwards.
            "INSERT OR IGNORE INTO chat_state_meta (name, value) VALUES ('fence', 0)",
            "CREATE TABLE IF NOT EXISTS chat_state_subscriptions (
            scope TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            PRIMARY KEY (scope, thread_id)
        ) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS chat_state_locks (
            scope TEXT NOT NULL,
            lock_id TEXT NOT NULL,
            token TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            fence INTEGER NOT NULL,
            PRIMARY KEY (scope, lock_id)
        ) WITHOUT ROWID",
            "CREATE INDEX IF NOT EXISTS chat_state_locks_expiry ON chat_state_locks (expires_at)",
            // Raising the floor in a trigger keeps acquire a single INSERT ... RETURNING statement.
            "CREATE TRIGGER IF NOT EXISTS chat_state_locks_fence_insert
            AFTER INSERT ON chat_state_locks
        BEGIN
            UPDATE chat_state_meta SET value = NEW.fence
            WHERE name = 'fence' AND value < NEW.fence;
        END",
            "CREATE TRIGGER IF NOT EXISTS chat_state_locks_fence_update
            AFTER UPDATE OF fence ON chat_state_locks
        BEGIN
            UPDATE chat_state_meta SET value = NEW.fence
            WHERE name = 'fence' AND value < NEW.fence;
        END",
            // A rowid table: values go up to 1 MiB, which WITHOUT ROWID tables store poorly.
            "CREATE TABLE IF NOT EXISTS chat_state_cache (
            scope TEXT NOT NULL,
            cache_key TEXT NOT NULL,
            value BLOB NOT NULL,
            expires_at INTEGER,
            PRIMARY KEY (scope, cache_key)
        )",
            "CREATE INDEX IF NOT EXISTS chat_state_cache_expiry
            ON chat_state_cache (expires_at) WHERE expires_at IS NOT NULL",
            "CREATE TABLE IF NOT EXISTS chat_state_lists (
            scope TEXT NOT NULL,
            list_key TEXT NOT NULL,
            expires_at INTEGER,
            PRIMARY KEY (scope, list_key)
        ) WITHOUT ROWID",
            "CREATE INDEX IF NOT EXISTS chat_state_lists_expiry
            ON chat_state_lists (expires_at) WHERE expires_at IS NOT NULL",
            "CREATE TABLE IF NOT EXISTS chat_state_list_items (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            list_key TEXT NOT NULL,
            value BLOB NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS chat_state_list_items_key
            ON chat_state_list_items (scope, list_key, id)",
            "CREATE TABLE IF NOT EXISTS chat_state_queue (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            enqueued_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            message TEXT NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS chat_state_queue_thread
            ON chat_state_queue (scope, thread_id, id)",
            "CREATE INDEX IF NOT EXISTS chat_state_queue_expiry ON chat_state_queue (expires_at)",
        ],
    },
    Migration {
        // Fence records of `set_fenced`: beside the cache rows rather than in them, so plain
        // `set` (and anything else that writes the cache table) neither reads nor clears them.
        version: 2,
        statements: &[
            "CREATE TABLE IF NOT EXISTS chat_state_fences (
            scope TEXT NOT NULL,
            cache_key TEXT NOT NULL,
            lock_id TEXT NOT NULL,
            fence INTEGER NOT NULL,
            expires_at INTEGER,
            PRIMARY KEY (scope, cache_key)
        ) WITHOUT ROWID",
            "CREATE INDEX IF NOT EXISTS chat_state_fences_expiry
            ON chat_state_fences (expires_at) WHERE expires_at IS NOT NULL",
        ],
    },
];

/// The newest schema version this crate knows.
pub(crate) const LATEST_VERSION: i64 = 2;

/// Every object the latest schema has, as `(type, name)` in `sqlite_master`.
const REQUIRED_OBJECTS: &[(&str, &str)] = &[
    ("table", "chat_state_meta"),
    ("table", "chat_state_subscriptions"),
    ("table", "chat_state_locks"),
    ("index", "chat_state_locks_expiry"),
    ("trigger", "chat_state_locks_fence_insert"),
    ("trigger", "chat_state_locks_fence_update"),
    ("table", "chat_state_cache"),
    ("index", "chat_state_cache_expiry"),
    ("table", "chat_state_lists"),
    ("index", "chat_state_lists_expiry"),
    ("table", "chat_state_list_items"),
    ("index", "chat_state_list_items_key"),
    ("table", "chat_state_queue"),
    ("index", "chat_state_queue_thread"),
    ("index", "chat_state_queue_expiry"),
    ("table", "chat_state_fences"),
    ("index", "chat_state_fences_expiry"),
];

/// The full DDL of the latest schema, for deployments that apply it with their own tooling
/// and then open with verify-only mode.
pub(crate) fn schema_sql() -> String {
    let mut out = String::new();
    for m in MIGRATIONS {
        for s in m.statements {
            out.push_str(s);
            out.push_str(";\n");
        }
    }
    out.push_str(&format!(
        "INSERT OR REPLACE INTO chat_state_meta (name, value) VALUES ('schema_version', {LATEST_VERSION});\n"
    ));
    out
}

/// Why opening failed: a recognised problem, or a plain SQLite error.
#[derive(Debug)]
pub(crate) enum SchemaError {
    Open(OpenFailure),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for SchemaError {
    fn from(e: sqlx::Error) -> Self {
        SchemaError::Sql(e)
    }
}

/// The stored schema version, `0` if the file has no chat-state schema yet.
pub(crate) async fn stored_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let has_meta: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'chat_state_meta'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if has_meta == 0 {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT value FROM chat_state_meta WHERE name = 'schema_version'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(version.unwrap_or(0))
}

fn check_not_newer(version: i64) -> Result<(), SchemaError> {
    if version > LATEST_VERSION {
        return Err(SchemaError::Open(OpenFailure::SchemaTooNew {
            found: version,
            supported: LATEST_VERSION,
        }));
    }
    Ok(())
}

/// Brings the schema to [`LATEST_VERSION`] inside one `BEGIN IMMEDIATE` transaction, so two
/// processes opening a fresh file at once cannot both migrate, and a failure leaves the file
/// as it was.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<(), SchemaError> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = migrate_in_transaction(conn).await;
    match result {
        Ok(()) => {
            if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e.into());
            }
            Ok(())
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

async fn migrate_in_transaction(conn: &mut SqliteConnection) -> Result<(), SchemaError> {
    // Re-read under the write lock: another process may have migrated since we looked.
    let version = stored_version(conn).await?;
    check_not_newer(version)?;
    if version == LATEST_VERSION {
        // Nothing to create, but prove we can write, so a read-only file fails at open with
        // a clear error instead of on the first write. The update changes no value.
        sqlx::query("UPDATE chat_state_meta SET value = value WHERE name = 'schema_version'")
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > version) {
        for statement in m.statements {
            sqlx::query(statement).execute(&mut *conn).await?;
        }
        sqlx::query(
            "INSERT INTO chat_state_meta (name, value) VALUES ('schema_version', ?1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(m.version)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Checks that the latest schema is present without changing anything; the error names
/// every missing object.
pub(crate) async fn verify(conn: &mut SqliteConnection) -> Result<(), SchemaError> {
    let version = stored_version(conn).await?;
    check_not_newer(version)?;
    let present: Vec<(String, String)> = sqlx::query_as(
        "SELECT type, name FROM sqlite_master WHERE name LIKE 'chat\\_state\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut missing: Vec<String> = REQUIRED_OBJECTS
        .iter()
        .filter(|(kind, name)| !present.iter().any(|(k, n)| k == kind && n == name))
        .map(|(kind, name)| format!("{kind} {name}"))
        .collect();
    if version < LATEST_VERSION {
        missing.push(format!(
            "schema version {LATEST_VERSION} (the file has {})",
            if version == 0 {
                "none".to_owned()
            } else {
                version.to_string()
            }
        ));
    }
    if !missing.is_empty() {
        return Err(SchemaError::Open(OpenFailure::SchemaMissing { missing }));
    }
    Ok(())
}

/// Whether a write attempt failed because the file is read-only.
pub(crate) fn read_only(e: &SchemaError) -> bool {
    matches!(e, SchemaError::Sql(s) if is_read_only(s))
}

/// Closes a connection, ignoring errors: used on paths that are already failing.
pub(crate) async fn close_quietly(conn: SqliteConnection) {
    let _ = conn.close().await;
}
