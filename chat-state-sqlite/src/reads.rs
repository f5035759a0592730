//! The SQL of every read. Reads run on the writer's connection when it is idle, else on a
//! [read connection](crate::readers), in parallel with the writer (WAL); they never write,
//! and decide liveness with `now` read just before.

use rusqlite::{Connection, OptionalExtension, params};

type SqlResult<T> = rusqlite::Result<T>;

pub(crate) fn is_subscribed(conn: &Connection, scope: &str, thread_id: &str) -> SqlResult<bool> {
    let found: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 FROM chat_state_subscriptions WHERE scope = ?1 AND thread_id = ?2",
        )?
        .query_row(params![scope, thread_id], |r| r.get(0))
        .optional()?;
    Ok(found.is_some())
}

/// The live holder of a lock: `(token, expires_at, fence)`.
pub(crate) fn lock_info(
    conn: &Connection,
    scope: &str,
    lock_id: &str,
    now: i64,
) -> SqlResult<Option<(String, i64, i64)>> {
    conn.prepare_cached(
        "SELECT token, expires_at, fence FROM chat_state_locks \
         WHERE scope = ?1 AND lock_id = ?2 AND expires_at > ?3",
    )?
    .query_row(params![scope, lock_id, now], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()
}

pub(crate) fn get(
    conn: &Connection,
    scope: &str,
    key: &str,
    now: i64,
) -> SqlResult<Option<Vec<u8>>> {
    conn.prepare_cached(
        "SELECT value FROM chat_state_cache WHERE scope = ?1 AND cache_key = ?2
         AND (expires_at IS NULL OR expires_at > ?3)",
    )?
    .query_row(params![scope, key, now], |r| r.get(0))
    .optional()
}

pub(crate) fn get_list(
    conn: &Connection,
    scope: &str,
    key: &str,
    now: i64,
) -> SqlResult<Vec<Vec<u8>>> {
    // One statement, so one snapshot: the header's expiry and the items agree.
    conn.prepare_cached(
        "SELECT i.value FROM chat_state_lists l
         JOIN chat_state_list_items i ON i.scope = l.scope AND i.list_key = l.list_key
         WHERE l.scope = ?1 AND l.list_key = ?2
           AND (l.expires_at IS NULL OR l.expires_at > ?3)
         ORDER BY i.id",
    )?
    .query_map(params![scope, key, now], |r| r.get(0))?
    .collect()
}

pub(crate) fn queue_depth(
    conn: &Connection,
    scope: &str,
    thread_id: &str,
    now: i64,
) -> SqlResult<i64> {
    conn.prepare_cached(
        "SELECT count(*) FROM chat_state_queue
         WHERE scope = ?1 AND thread_id = ?2 AND expires_at > ?3",
    )?
    .query_row(params![scope, thread_id, now], |r| r.get(0))
}

/// Proves the file is still readable (the schema was applied at open).
pub(crate) fn ping(conn: &Connection) -> SqlResult<()> {
    conn.prepare_cached("SELECT 1 FROM chat_state_meta LIMIT 1")?
        .query_row(params![], |_| Ok(()))
        .optional()?;
    Ok(())
}
