//! The tables and their versioned migration, plus the `meta` key-value table.

use worker::{Result as WorkerResult, SqlStorage};

use super::sql::int;

/// The schema version this code writes. Bump it and add a step in `migrate` for every
/// change; objects keep their data across deployments, so steps are never edited.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE subscriptions (thread_id TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE locks (lock_id TEXT PRIMARY KEY, token TEXT NOT NULL, \
     expires_at INTEGER NOT NULL, fence INTEGER NOT NULL)",
    "CREATE INDEX locks_expiry ON locks (expires_at)",
    "CREATE TABLE cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER)",
    "CREATE INDEX cache_expiry ON cache (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE TABLE lists (key TEXT PRIMARY KEY, expires_at INTEGER)",
    "CREATE INDEX lists_expiry ON lists (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE TABLE list_items (key TEXT NOT NULL, seq INTEGER NOT NULL, value BLOB NOT NULL, \
     PRIMARY KEY (key, seq))",
    "CREATE TABLE queue (thread_id TEXT NOT NULL, seq INTEGER NOT NULL, \
     expires_at INTEGER NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (thread_id, seq))",
    "CREATE INDEX queue_expiry ON queue (expires_at)",
];

/// Brings the schema to [`SCHEMA_VERSION`]. Runs in the constructor, before any request.
pub(super) fn migrate(sql: &SqlStorage) -> Result<(), String> {
    let fail = |what: &str, e: worker::Error| format!("schema migration failed ({what}): {e}");
    sql.exec(
        "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
        None,
    )
    .map_err(|e| fail("meta table", e))?;
    let version = meta(sql, "schema_version").map_err(|e| fail("reading the version", e))?;
    if version > SCHEMA_VERSION as u64 {
        return Err(format!(
            "this object's storage has schema version {version}, newer than the {SCHEMA_VERSION} \
             this chat-state-do understands; deploy the newer chat-state-do (downgrades are not \
             supported)"
        ));
    }
    if version < 1 {
        for stmt in SCHEMA_V1 {
            sql.exec(stmt, None).map_err(|e| fail(stmt, e))?;
        }
        set_meta(sql, "schema_version", 1).map_err(|e| fail("writing the version", e))?;
    }
    Ok(())
}

/// A counter in the `meta` table (0 if never written).
pub(super) fn meta(sql: &SqlStorage, k: &str) -> WorkerResult<u64> {
    let mut rows = sql
        .exec("SELECT v FROM meta WHERE k = ?", vec![k.into()])?
        .raw();
    Ok(match rows.next().transpose()? {
        Some(row) => int(row.first()).max(0) as u64,
        None => 0,
    })
}

pub(super) fn set_meta(sql: &SqlStorage, k: &str, v: i64) -> WorkerResult<()> {
    sql.exec(
        "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        vec![k.into(), v.into()],
    )?;
    Ok(())
}
