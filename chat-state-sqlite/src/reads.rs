//! The SQL of every read. Reads run on a [read connection](crate::readers), in parallel with
//! the writer (WAL), never write, and decide liveness with `now` read just before.

use sqlx::SqliteConnection;

type SqlResult<T> = std::result::Result<T, sqlx::Error>;

pub(crate) async fn is_subscribed(
    conn: &mut SqliteConnection,
    scope: &str,
    thread_id: &str,
) -> SqlResult<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM chat_state_subscriptions WHERE scope = ?1 AND thread_id = ?2",
    )
    .bind(scope)
    .bind(thread_id)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// The live holder of a lock: `(token, expires_at, fence)`.
pub(crate) async fn lock_info(
    conn: &mut SqliteConnection,
    scope: &str,
    lock_id: &str,
    now: i64,
) -> SqlResult<Option<(String, i64, i64)>> {
    sqlx::query_as(
        "SELECT token, expires_at, fence FROM chat_state_locks \
         WHERE scope = ?1 AND lock_id = ?2 AND expires_at > ?3",
    )
    .bind(scope)
    .bind(lock_id)
    .bind(now)
    .fetch_optional(conn)
    .await
}

pub(crate) async fn get(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    now: i64,
) -> SqlResult<Option<Vec<u8>>> {
    sqlx::query_scalar(
        "SELECT value FROM chat_state_cache WHERE scope = ?1 AND cache_key = ?2
         AND (expires_at IS NULL OR expires_at > ?3)",
    )
    .bind(scope)
    .bind(key)
    .bind(now)
    .fetch_optional(conn)
    .await
}

pub(crate) async fn get_list(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    now: i64,
) -> SqlResult<Vec<Vec<u8>>> {
    // One statement, so one snapshot: the header's expiry and the items agree.
    sqlx::query_scalar(
        "SELECT i.value FROM chat_state_lists l
         JOIN chat_state_list_items i ON i.scope = l.scope AND i.list_key = l.list_key
         WHERE l.scope = ?1 AND l.list_key = ?2
           AND (l.expires_at IS NULL OR l.expires_at > ?3)
         ORDER BY i.id",
    )
    .bind(scope)
    .bind(key)
    .bind(now)
    .fetch_all(conn)
    .await
}

pub(crate) async fn queue_depth(
    conn: &mut SqliteConnection,
    scope: &str,
    thread_id: &str,
    now: i64,
) -> SqlResult<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM chat_state_queue
         WHERE scope = ?1 AND thread_id = ?2 AND expires_at > ?3",
    )
    .bind(scope)
    .bind(thread_id)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Proves the file is still readable (the schema was applied at open).
pub(crate) async fn ping(conn: &mut SqliteConnection) -> SqlResult<()> {
    sqlx::query("SELECT 1 FROM chat_state_meta LIMIT 1")
        .execute(conn)
        .await?;
    Ok(())
}
