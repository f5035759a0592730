//! Operator tools: reading a lock's holder without side effects, and tearing down a prefix.

use chat_state_core::{Error, LockInfo, LockInspector, Operation};

use super::PostgresBackend;
use crate::error::corrupt;
use crate::sql::sql;

/// Every table holding rows of a prefix, the fences included.
const PREFIX_TABLES: &[&str] = &[
    "chat_state_subscriptions",
    "chat_state_locks",
    "chat_state_lock_fences",
    "chat_state_fences",
    "chat_state_cache",
    "chat_state_lists",
    "chat_state_queues",
];

impl LockInspector for PostgresBackend {
    /// Reads the lock row (one `SELECT`, no write). `fence` is `None`: the fence table holds
    /// the last fence a Rust bot took, but a TypeScript bot's acquisition takes the row
    /// without one, so the table cannot say whether its fence belongs to this holder.
    /// `expires_at` is the server's expiry moved into this machine's clock (minus the
    /// measured offset), so it compares with local time.
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>, Error> {
        let op = Operation::LockInfo;
        let inner = &self.inner;
        let row: Option<(String, i64)> = inner
            .run(
                op,
                inner
                    .rows_at_key(
                        &sql(
                            "SELECT token, (extract(epoch FROM expires_at) * 1000)::bigint
                             FROM chat_state_locks
                             WHERE key_prefix = $2 AND thread_id = $3 AND expires_at > {now}",
                        ),
                        lock_id,
                    )
                    .fetch_optional(&inner.pool),
            )
            .await?;
        let Some((token, server_ms)) = row else {
            return Ok(None);
        };
        let local_ms = server_ms.saturating_sub(self.server_clock_offset_ms());
        let expires_at = u64::try_from(local_ms)
            .map_err(|_| corrupt(op, format!("lock {lock_id:?} expires at {server_ms} ms")))?;
        Ok(Some(LockInfo::new(token, expires_at, None)))
    }
}

impl PostgresBackend {
    /// Deletes every row under this backend's key prefix, in every table (fences included),
    /// in one transaction, and returns how many it removed.
    ///
    /// For tearing down test or staging data: fences for this prefix restart from 1
    /// afterwards, so never run it under live bots. Rows of other prefixes are untouched.
    pub async fn delete_all_keys(&self) -> Result<u64, Error> {
        let op = Operation::Delete;
        let inner = &self.inner;
        inner
            .run(op, async {
                let mut tx = inner.pool.begin().await?;
                let mut removed = 0;
                for table in PREFIX_TABLES {
                    removed += sqlx::query(&format!("DELETE FROM {table} WHERE key_prefix = $1"))
                        .bind(&inner.prefix)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(removed)
            })
            .await
    }
}
