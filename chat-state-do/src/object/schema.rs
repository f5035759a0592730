//! The tables and their versioned migration, plus the `meta` key-value table.

use wasm_bindgen::JsValue;

use super::sql::{Sql, int};
use crate::js::js_message;

/// The schema version this code writes. Bump it and add a step in `migrate` for every
/// change; objects keep their data across deployments, so steps are never edited.
pub const SCHEMA_VERSION: u64 = 3;

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

/// Version 2: the list header keeps the next item's sequence number, so an append needs no
/// `MAX(seq)` lookup and learns from the header upsert alone whether the list restarted.
const SCHEMA_V2: &[&str] = &[
    "ALTER TABLE lists ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 0",
    "UPDATE lists SET next_seq = \
     COALESCE((SELECT MAX(seq) FROM list_items i WHERE i.key = lists.key), 0)",
];

/// Version 3: one fence record per key written with `setFenced` (the writer's lock id and
/// fence, expiring with the value), kept apart from the cache row so plain `set` and
/// `delete` leave it alone and no value column changes shape.
const SCHEMA_V3: &[&str] = &[
    "CREATE TABLE fences (key TEXT PRIMARY KEY, lock_id TEXT NOT NULL, \
     fence INTEGER NOT NULL, expires_at INTEGER)",
    "CREATE INDEX fences_expiry ON fences (expires_at) WHERE expires_at IS NOT NULL",
];

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction, so a failed step leaves the
/// storage as it was (a half-applied step would fail again on every start). Runs in the
/// constructor, before any request.
pub(super) fn migrate(storage: &JsValue, sql: &Sql) -> Result<(), String> {
    let mut outcome = Ok(());
    let failure = crate::js::in_transaction(storage, &mut || match steps(sql) {
        Ok(()) => JsValue::UNDEFINED,
        Err(e) => {
            let message = JsValue::from_str(&e);
            outcome = Err(e);
            message
        }
    });
    outcome.map_err(|e| format!("{e} (is the class declared with new_sqlite_classes?)"))?;
    match failure.as_string() {
        Some(message) => Err(format!(
            "schema migration failed: {message} (is the class declared with new_sqlite_classes \
             in its wrangler.toml migration?)"
        )),
        None => Ok(()),
    }
}

fn steps(sql: &Sql) -> Result<(), String> {
    let fail =
        |what: &str, e: JsValue| format!("schema migration failed ({what}): {}", js_message(&e));
    sql.run_text("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        .map_err(|e| fail("meta table", e))?;
    let version = meta(sql, "schema_version").map_err(|e| fail("reading the version", e))?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "this object's storage has schema version {version}, newer than the {SCHEMA_VERSION} \
             this chat-state-do understands; deploy the newer chat-state-do (downgrades are not \
             supported)"
        ));
    }
    for (target, steps) in [(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3)] {
        if version < target {
            for stmt in steps {
                sql.run_text(stmt).map_err(|e| fail(stmt, e))?;
            }
            set_meta(sql, "schema_version", target).map_err(|e| fail("writing the version", e))?;
        }
    }
    Ok(())
}

/// A counter in the `meta` table (0 if never written).
pub(super) fn meta(sql: &Sql, k: &str) -> Result<u64, JsValue> {
    let v = sql.one_text1("SELECT v FROM meta WHERE k = ?1", &JsValue::from_str(k))?;
    Ok(int(&v).unwrap_or(0))
}

pub(super) fn set_meta(sql: &Sql, k: &str, v: u64) -> Result<(), JsValue> {
    sql.run_text2(
        "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        &JsValue::from_str(k),
        &JsValue::from_f64(v as f64),
    )?;
    Ok(())
}
