//! `enqueue`, `dequeue`, `queue_depth`: one row per entry, FIFO by a per-thread sequence,
//! each entry expiring on its own.

use chat_state_core::{Error, Operation, QueueEntry, validate};
use worker::SqlStorageValue;

use super::ChatStateDO;
use super::sql::{Reply, backend_err, int, ms};
use crate::BACKEND;

impl ChatStateDO {
    /// Appends the entry (dropping the oldest beyond `max_size`); answers the live depth.
    pub(super) fn enqueue(
        &self,
        thread_id: &str,
        entry: &QueueEntry,
        max_size: u64,
        now: u64,
    ) -> Result<Reply, Error> {
        let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);
        validate::enqueue(BACKEND, thread_id, entry, max_size)?;
        let o = Operation::Enqueue;
        let err = |e| backend_err(o, "enqueueing", e);
        let sql = &self.sql;
        let text = serde_json::to_string(entry)
            .map_err(|e| Error::invalid_input(format!("queue entry: {e}")).context(BACKEND, o))?;
        sql.exec(
            "DELETE FROM queue WHERE thread_id = ? AND expires_at <= ?",
            vec![thread_id.into(), ms(now)],
        )
        .map_err(err)?;
        sql.exec(
            "INSERT INTO queue (thread_id, seq, expires_at, entry) VALUES (?1, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM queue WHERE thread_id = ?1), ?2, ?3)",
            vec![thread_id.into(), ms(entry.expires_at), text.into()],
        )
        .map_err(err)?;
        sql.exec(
            "DELETE FROM queue WHERE thread_id = ?1 AND seq <= \
             (SELECT seq FROM queue WHERE thread_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            vec![thread_id.into(), SqlStorageValue::Integer(max_size as i64)],
        )
        .map_err(err)?;
        let depth = self.depth(o, thread_id, now)?;
        Ok(Reply::json(&depth)?.arming(Some(entry.expires_at)))
    }

    /// Removes and answers the oldest live entry, or `null`.
    pub(super) fn dequeue(&self, thread_id: &str, now: u64) -> Result<Reply, Error> {
        validate::dequeue(BACKEND, thread_id)?;
        Reply::json(&self.pop_oldest(thread_id, now)?)
    }

    /// Answers the number of live entries.
    pub(super) fn queue_depth(&self, thread_id: &str, now: u64) -> Result<Reply, Error> {
        validate::queue_depth(BACKEND, thread_id)?;
        Reply::json(&self.depth(Operation::QueueDepth, thread_id, now)?)
    }

    fn pop_oldest(&self, thread_id: &str, now: u64) -> Result<Option<QueueEntry>, Error> {
        let o = Operation::Dequeue;
        let err = |e| backend_err(o, "dequeueing", e);
        let sql = &self.sql;
        let mut rows = sql
            .exec(
                "DELETE FROM queue WHERE rowid = (SELECT rowid FROM queue \
                 WHERE thread_id = ? AND expires_at > ? ORDER BY seq LIMIT 1) RETURNING entry",
                vec![thread_id.into(), ms(now)],
            )
            .map_err(err)?
            .raw();
        let row = rows.next().transpose().map_err(err)?;
        drop(rows);
        // Expired entries ahead of it are dead weight; drop them while we are here.
        sql.exec(
            "DELETE FROM queue WHERE thread_id = ? AND expires_at <= ?",
            vec![thread_id.into(), ms(now)],
        )
        .map_err(err)?;
        let Some(row) = row else { return Ok(None) };
        match row.first() {
            Some(SqlStorageValue::String(text)) => {
                // Lone surrogates (from a TypeScript writer) decode as U+FFFD.
                chat_state_core::json::from_json_slice(text.as_bytes())
                    .map(Some)
                    .map_err(|e| {
                        Error::corrupt(format!(
                            "a stored queue entry is not valid JSON ({e}); it was removed from the \
                         queue"
                        ))
                        .context(BACKEND, o)
                    })
            }
            other => Err(Error::corrupt(format!(
                "a stored queue entry has an unexpected SQL type ({other:?}); it was removed"
            ))
            .context(BACKEND, o)),
        }
    }

    fn depth(&self, o: Operation, thread_id: &str, now: u64) -> Result<usize, Error> {
        let err = |e| backend_err(o, "counting a queue", e);
        let mut rows = self
            .sql
            .exec(
                "SELECT COUNT(*) FROM queue WHERE thread_id = ? AND expires_at > ?",
                vec![thread_id.into(), ms(now)],
            )
            .map_err(err)?
            .raw();
        let n = match rows.next().transpose().map_err(err)? {
            Some(row) => int(row.first()),
            None => 0,
        };
        Ok(n.max(0) as usize)
    }
}
