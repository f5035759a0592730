//! The schema: the five tables of `@chat-adapter/state-pg` 4.41.0, verbatim, plus what this
//! crate adds where TypeScript bots ignore it (a `raw` column for values that are not text,
//! a per-lock fence table, a version table, and, since version 2, the fence records of
//! fenced writes and the dispatch functions), created and migrated in one transaction.

use chat_state_core::{Error, Operation};
use sqlx::PgPool;

use crate::error::{OpenFailure, map};

/// The newest schema version this crate knows.
pub(crate) const LATEST_VERSION: i32 = 2;

/// `@chat-adapter/state-pg` 4.41.0's `postgresSchemaStatements`, unchanged.
pub(crate) const STATE_PG_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS chat_state_subscriptions (
    key_prefix text NOT NULL,
    thread_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_prefix, thread_id)
  )",
    "CREATE TABLE IF NOT EXISTS chat_state_locks (
    key_prefix text NOT NULL,
    thread_id text NOT NULL,
    token text NOT NULL,
    expires_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_prefix, thread_id)
  )",
    "CREATE TABLE IF NOT EXISTS chat_state_cache (
    key_prefix text NOT NULL,
    cache_key text NOT NULL,
    value text NOT NULL,
    expires_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_prefix, cache_key)
  )",
    "CREATE INDEX IF NOT EXISTS chat_state_locks_expires_idx
    ON chat_state_locks (expires_at)",
    "CREATE INDEX IF NOT EXISTS chat_state_cache_expires_idx
    ON chat_state_cache (expires_at)",
    "CREATE TABLE IF NOT EXISTS chat_state_lists (
    key_prefix text NOT NULL,
    list_key text NOT NULL,
    seq bigserial NOT NULL,
    value text NOT NULL,
    expires_at timestamptz,
    PRIMARY KEY (key_prefix, list_key, seq)
  )",
    "CREATE INDEX IF NOT EXISTS chat_state_lists_expires_idx
    ON chat_state_lists (expires_at)",
    "CREATE TABLE IF NOT EXISTS chat_state_queues (
    key_prefix text NOT NULL,
    thread_id text NOT NULL,
    seq bigserial NOT NULL,
    value text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key_prefix, thread_id, seq)
  )",
    "CREATE INDEX IF NOT EXISTS chat_state_queues_expires_idx
    ON chat_state_queues (expires_at)",
];

/// Version 1's additions, invisible to state-pg's statements (which name their columns).
pub(crate) const V1_DDL: &[&str] = &[
    // Values that are not NUL-free UTF-8 (text cannot hold them): `value` is then '' (which
    // no TypeScript bot writes: it stores JSON) and the bytes are here. A TypeScript write
    // replaces `value` with JSON, which then wins over a stale `raw`.
    "ALTER TABLE chat_state_cache ADD COLUMN IF NOT EXISTS raw bytea",
    "ALTER TABLE chat_state_lists ADD COLUMN IF NOT EXISTS raw bytea",
    // The last fence issued per lock id; never deleted, so fences grow across release,
    // expiry, force-release and restarts.
    "CREATE TABLE IF NOT EXISTS chat_state_lock_fences (
    key_prefix text NOT NULL,
    thread_id text NOT NULL,
    fence bigint NOT NULL,
    PRIMARY KEY (key_prefix, thread_id)
  )",
];

/// Version 2's additions: native dispatch (`crate::backend::dispatch`). TypeScript bots
/// never read or write any of it.
pub(crate) const V2_DDL: &[&str] = crate::backend::dispatch::DDL;

/// The version table (one row).
const VERSION_DDL: &str = "CREATE TABLE IF NOT EXISTS chat_state_schema_version (
    id smallint PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
  )";

/// Every (table, column) the backend's statements use.
const REQUIRED: &[(&str, &[&str])] = &[
    ("chat_state_subscriptions", &["key_prefix", "thread_id"]),
    (
        "chat_state_locks",
        &[
            "key_prefix",
            "thread_id",
            "token",
            "expires_at",
            "updated_at",
        ],
    ),
    (
        "chat_state_cache",
        &[
            "key_prefix",
            "cache_key",
            "value",
            "raw",
            "expires_at",
            "updated_at",
        ],
    ),
    (
        "chat_state_lists",
        &[
            "key_prefix",
            "list_key",
            "seq",
            "value",
            "raw",
            "expires_at",
        ],
    ),
    (
        "chat_state_queues",
        &["key_prefix", "thread_id", "seq", "value", "expires_at"],
    ),
    (
        "chat_state_lock_fences",
        &["key_prefix", "thread_id", "fence"],
    ),
    (
        "chat_state_fences",
        &["key_prefix", "cache_key", "lock_id", "fence", "expires_at"],
    ),
    ("chat_state_schema_version", &["id", "version"]),
];

/// The table privileges the adapter's statements need, per table: a least-privilege role
/// must hold these (PL/pgSQL functions run with the caller's rights, so they need them too;
/// `SELECT … FOR UPDATE` needs `UPDATE`).
const PRIVILEGES: &[(&str, &[&str])] = &[
    ("chat_state_subscriptions", &["SELECT", "INSERT", "DELETE"]),
    (
        "chat_state_locks",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "chat_state_cache",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "chat_state_lists",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "chat_state_queues",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    ("chat_state_lock_fences", &["SELECT", "INSERT", "UPDATE"]),
    (
        "chat_state_fences",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    ("chat_state_schema_version", &["SELECT"]),
];

/// Tables whose `seq` column draws from a sequence, which inserting needs `USAGE` of.
const SEQUENCED: &[&str] = &["chat_state_lists", "chat_state_queues"];

/// How [`PostgresBuilder::connect`](crate::PostgresBuilder::connect) treats the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SchemaMode {
    /// Create what is missing and migrate older versions (the default). Safe to run from
    /// many processes at once (serialized by an advisory lock).
    #[default]
    Create,
    /// Change nothing; fail with [`OpenFailure::SchemaMissing`] naming exactly what is
    /// missing. For deployments whose runtime role may not run DDL.
    VerifyOnly,
}

/// The full DDL of the current version, for applying by hand.
pub(crate) fn schema_sql() -> String {
    let mut sql = String::new();
    for s in all_ddl() {
        sql.push_str(s);
        sql.push_str(";\n");
    }
    sql.push_str(&format!(
        "INSERT INTO chat_state_schema_version (id, version) VALUES (1, {LATEST_VERSION})\n  \
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version;\n"
    ));
    sql
}

/// Every statement of the current version, in order; each is idempotent (`IF NOT EXISTS`,
/// `CREATE OR REPLACE`), so a migration from any earlier version runs all of them.
fn all_ddl() -> impl Iterator<Item = &'static &'static str> {
    STATE_PG_DDL
        .iter()
        .chain(V1_DDL)
        .chain(V2_DDL)
        .chain(crate::sql::DDL)
        .chain([&VERSION_DDL])
}

const OP: Operation = Operation::Open;

async fn stored_version(conn: &mut sqlx::PgConnection) -> Result<Option<i32>, Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('chat_state_schema_version') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map(OP, e))?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT version FROM chat_state_schema_version WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| map(OP, e))
}

/// What of [`REQUIRED`] is missing in the connection's search path, and which of the
/// privileges of [`PRIVILEGES`] (and on the sequences and functions) the role lacks.
async fn missing(conn: &mut sqlx::PgConnection) -> Result<Vec<String>, Error> {
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED {
        let present: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(*table)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map(OP, e))?;
        if present.is_empty() {
            missing.push((*table).to_owned());
            continue;
        }
        for column in *columns {
            if !present.iter().any(|p| p == column) {
                missing.push(format!("{table}.{column}"));
            }
        }
    }
    for (table, privileges) in PRIVILEGES {
        if missing.iter().any(|m| m == table) {
            continue;
        }
        let lacking: Vec<String> = sqlx::query_scalar(
            "SELECT p FROM unnest($2::text[]) AS p
             WHERE NOT pg_catalog.has_table_privilege(to_regclass($1), p)",
        )
        .bind(*table)
        .bind(*privileges)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map(OP, e))?;
        missing.extend(lacking.iter().map(|p| format!("privilege {p} on {table}")));
    }
    for table in SEQUENCED {
        if missing.iter().any(|m| m == table) {
            continue;
        }
        let sequence: Option<(String, bool)> = sqlx::query_as(
            "SELECT s::text, pg_catalog.has_sequence_privilege(s, 'USAGE')
             FROM pg_catalog.pg_get_serial_sequence($1, 'seq') AS s WHERE s IS NOT NULL",
        )
        .bind(*table)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| map(OP, e))?;
        if let Some((sequence, false)) = sequence {
            missing.push(format!("privilege USAGE on sequence {sequence}"));
        }
    }
    let functions = crate::backend::dispatch::FUNCTIONS
        .iter()
        .chain(crate::sql::FUNCTIONS);
    for function in functions {
        // `None`: no such function; `Some(false)`: present but not executable by this role.
        let executable: Option<bool> = sqlx::query_scalar(
            "SELECT bool_or(pg_catalog.has_function_privilege(oid, 'EXECUTE'))
             FROM pg_catalog.pg_proc
             WHERE proname = $1 AND pg_catalog.pg_function_is_visible(oid)",
        )
        .bind(*function)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map(OP, e))?;
        match executable {
            None => missing.push(format!("{function}()")),
            Some(false) => missing.push(format!("privilege EXECUTE on {function}()")),
            Some(true) => {}
        }
    }
    Ok(missing)
}

/// Creates/migrates (or only verifies) the schema.
pub(crate) async fn prepare(pool: &PgPool, mode: SchemaMode) -> Result<(), Error> {
    let mut conn = pool.acquire().await.map_err(|e| map(OP, e))?;
    let version = stored_version(&mut conn).await?;
    if let Some(found) = version.filter(|v| *v > LATEST_VERSION) {
        return Err(OpenFailure::SchemaTooNew {
            found,
            supported: LATEST_VERSION,
        }
        .into_error());
    }
    if mode == SchemaMode::Create && version != Some(LATEST_VERSION) {
        let mut tx = pool.begin().await.map_err(|e| map(OP, e))?;
        // Serialize concurrent migrations (also against each other's CREATE IF NOT EXISTS,
        // which is not safe to race in PostgreSQL).
        sqlx::query("SELECT pg_advisory_xact_lock(7468657374617465)")
            .execute(&mut *tx)
            .await
            .map_err(|e| map(OP, e))?;
        let version = stored_version(&mut tx).await?;
        if let Some(found) = version.filter(|v| *v > LATEST_VERSION) {
            return Err(OpenFailure::SchemaTooNew {
                found,
                supported: LATEST_VERSION,
            }
            .into_error());
        }
        if version != Some(LATEST_VERSION) {
            // An existing table of the wrong shape is refused before any DDL runs (whole
            // tables and this crate's added columns are what the migration creates).
            let wrong: Vec<String> = missing(&mut tx)
                .await?
                .into_iter()
                .filter(|m| m.contains('.') && !m.ends_with(".raw"))
                .collect();
            if !wrong.is_empty() {
                return Err(OpenFailure::SchemaMissing { missing: wrong }.into_error());
            }
            for s in all_ddl() {
                sqlx::query(s)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map(OP, e))?;
            }
            sqlx::query(
                "INSERT INTO chat_state_schema_version (id, version) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
            )
            .bind(LATEST_VERSION)
            .execute(&mut *tx)
            .await
            .map_err(|e| map(OP, e))?;
        }
        tx.commit().await.map_err(|e| map(OP, e))?;
    }
    let mut missing = missing(&mut conn).await?;
    if missing.is_empty() {
        let version = stored_version(&mut conn).await?;
        if version != Some(LATEST_VERSION) {
            missing.push(format!("schema version {LATEST_VERSION}"));
        }
    }
    if !missing.is_empty() {
        return Err(OpenFailure::SchemaMissing { missing }.into_error());
    }
    Ok(())
}
