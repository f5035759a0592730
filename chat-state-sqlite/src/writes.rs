//! The SQL of every write, one [`Write`] type per operation, each with its own output type.
//! The [writer](crate::writer) decides when and in which transaction they run.
//!
//! Every timestamp a write stores was computed by the caller from the clock read before
//! sending (contract rule 12); `now` is the writer's reading, used only to decide what has
//! expired.

use chat_state_core::Operation;
use rusqlite::{Connection, Params, Row, params};

use crate::writer::Write;

type SqlResult<T> = rusqlite::Result<T>;

/// Runs a write with a `RETURNING` clause of at most one row, to completion, and answers
/// that row.
///
/// Why not `query_row`: it steps once and then resets the statement, ignoring what the reset
/// reports. Alone (autocommit), a `RETURNING` statement commits only when it finishes, so a
/// failed commit (disk full, I/O error) would be lost and the caller told the write was
/// stored. Stepping until SQLite says done surfaces it.
fn returning<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    row: impl FnOnce(&Row<'_>) -> SqlResult<T>,
) -> SqlResult<Option<T>> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let first = match rows.next()? {
        Some(r) => Some(row(r)?),
        None => return Ok(None),
    };
    while rows.next()?.is_some() {}
    Ok(first)
}

/// [`Subscriptions::subscribe`](chat_state_core::Subscriptions::subscribe).
pub(crate) struct Subscribe {
    pub(crate) thread_id: String,
}

impl Write for Subscribe {
    type Output = ();
    const OPERATION: Operation = Operation::Subscribe;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, _now: i64) -> SqlResult<()> {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO chat_state_subscriptions (scope, thread_id) VALUES (?1, ?2)",
        )?
        .execute(params![scope, &self.thread_id])?;
        Ok(())
    }
}

/// [`Subscriptions::unsubscribe`](chat_state_core::Subscriptions::unsubscribe).
pub(crate) struct Unsubscribe {
    pub(crate) thread_id: String,
}

impl Write for Unsubscribe {
    type Output = ();
    const OPERATION: Operation = Operation::Unsubscribe;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, _now: i64) -> SqlResult<()> {
        conn.prepare_cached(
            "DELETE FROM chat_state_subscriptions WHERE scope = ?1 AND thread_id = ?2",
        )?
        .execute(params![scope, &self.thread_id])?;
        Ok(())
    }
}

/// [`Locks::acquire_lock`](chat_state_core::Locks::acquire_lock): answers the stored fence,
/// or `None` if the lock is held.
pub(crate) struct Acquire {
    pub(crate) lock_id: String,
    pub(crate) token: String,
    pub(crate) expires_at: i64,
}

impl Write for Acquire {
    type Output = Option<i64>;
    const OPERATION: Operation = Operation::AcquireLock;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<Option<i64>> {
        // One statement: insert, or take over a row whose lock has expired (rule 1:
        // held iff now < expires_at). The fence is one above the file's floor, which the
        // trigger then raises: strictly increasing across release, expiry and restarts.
        returning(
            conn,
            "INSERT INTO chat_state_locks (scope, lock_id, token, expires_at, fence)
             VALUES (?1, ?2, ?3, ?4,
                     (SELECT value + 1 FROM chat_state_meta WHERE name = 'fence'))
             ON CONFLICT (scope, lock_id) DO UPDATE SET
                 token = excluded.token,
                 expires_at = excluded.expires_at,
                 fence = excluded.fence
             WHERE chat_state_locks.expires_at <= ?5
             RETURNING fence",
            params![scope, &self.lock_id, &self.token, self.expires_at, now],
            |r| r.get(0),
        )
    }
}

/// [`Locks::release_lock`](chat_state_core::Locks::release_lock).
pub(crate) struct Release {
    pub(crate) lock_id: String,
    pub(crate) token: String,
}

impl Write for Release {
    type Output = ();
    const OPERATION: Operation = Operation::ReleaseLock;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, _now: i64) -> SqlResult<()> {
        conn.prepare_cached(
            "DELETE FROM chat_state_locks WHERE scope = ?1 AND lock_id = ?2 AND token = ?3",
        )?
        .execute(params![scope, &self.lock_id, &self.token])?;
        Ok(())
    }
}

/// [`Locks::extend_lock`](chat_state_core::Locks::extend_lock): answers whether the caller
/// still held the lock.
pub(crate) struct Extend {
    pub(crate) lock_id: String,
    pub(crate) token: String,
    pub(crate) expires_at: i64,
}

impl Write for Extend {
    type Output = bool;
    const OPERATION: Operation = Operation::ExtendLock;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<bool> {
        // Only the current, unexpired holder: never resurrects (rule 3).
        let done = conn
            .prepare_cached(
                "UPDATE chat_state_locks SET expires_at = ?4
             WHERE scope = ?1 AND lock_id = ?2 AND token = ?3 AND expires_at > ?5",
            )?
            .execute(params![
                scope,
                &self.lock_id,
                &self.token,
                self.expires_at,
                now
            ])?;
        Ok(done == 1)
    }
}

/// [`Locks::force_release_lock`](chat_state_core::Locks::force_release_lock).
pub(crate) struct ForceRelease {
    pub(crate) lock_id: String,
}

impl Write for ForceRelease {
    type Output = ();
    const OPERATION: Operation = Operation::ForceReleaseLock;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, _now: i64) -> SqlResult<()> {
        conn.prepare_cached("DELETE FROM chat_state_locks WHERE scope = ?1 AND lock_id = ?2")?
            .execute(params![scope, &self.lock_id])?;
        Ok(())
    }
}

/// [`Cache::set`](chat_state_core::Cache::set).
pub(crate) struct Set {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) expires_at: Option<i64>,
}

impl Write for Set {
    type Output = ();
    const OPERATION: Operation = Operation::Set;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, _now: i64) -> SqlResult<()> {
        conn.prepare_cached(
            "INSERT INTO chat_state_cache (scope, cache_key, value, expires_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (scope, cache_key) DO UPDATE SET
                 value = excluded.value, expires_at = excluded.expires_at",
        )?
        .execute(params![
            scope,
            &self.key,
            self.value.as_slice(),
            self.expires_at
        ])?;
        Ok(())
    }
}

/// [`Cache::set_if_not_exists`](chat_state_core::Cache::set_if_not_exists): answers whether
/// the value was stored.
pub(crate) struct SetIfNotExists {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) expires_at: Option<i64>,
}

impl Write for SetIfNotExists {
    type Output = bool;
    const OPERATION: Operation = Operation::SetIfNotExists;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<bool> {
        // An expired row counts as absent (rule 5), so it is overwritten in place.
        let stored: Option<i64> = returning(
            conn,
            "INSERT INTO chat_state_cache (scope, cache_key, value, expires_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (scope, cache_key) DO UPDATE SET
                 value = excluded.value, expires_at = excluded.expires_at
             WHERE chat_state_cache.expires_at IS NOT NULL
               AND chat_state_cache.expires_at <= ?5
             RETURNING 1",
            params![
                scope,
                &self.key,
                self.value.as_slice(),
                self.expires_at,
                now
            ],
            |r| r.get(0),
        )?;
        Ok(stored.is_some())
    }
}

/// [`Cache::delete`](chat_state_core::Cache::delete).
pub(crate) struct Delete {
    pub(crate) key: String,
}

impl Write for Delete {
    type Output = ();
    const OPERATION: Operation = Operation::Delete;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, _now: i64) -> SqlResult<()> {
        conn.prepare_cached("DELETE FROM chat_state_cache WHERE scope = ?1 AND cache_key = ?2")?
            .execute(params![scope, &self.key])?;
        Ok(())
    }
}

/// [`Lists::append_to_list`](chat_state_core::Lists::append_to_list).
pub(crate) struct Append {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) max_length: Option<i64>,
}

impl Write for Append {
    type Output = ();
    const OPERATION: Operation = Operation::AppendToList;
    const SINGLE_STATEMENT: bool = false;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<()> {
        let key = &self.key;
        // Items without a live list header belong to an expired list (or to one whose
        // header cleanup already removed): an expired list restarts empty (rule 6).
        conn.prepare_cached(
            "DELETE FROM chat_state_list_items WHERE scope = ?1 AND list_key = ?2
             AND NOT EXISTS (SELECT 1 FROM chat_state_lists
                             WHERE scope = ?1 AND list_key = ?2
                               AND (expires_at IS NULL OR expires_at > ?3))",
        )?
        .execute(params![scope, key, now])?;
        // With a TTL the whole list's expiry becomes now + TTL; without one it stays,
        // unless the old list had expired (then the restarted list has none).
        conn.prepare_cached(
            "INSERT INTO chat_state_lists (scope, list_key, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (scope, list_key) DO UPDATE SET expires_at =
                 CASE WHEN excluded.expires_at IS NOT NULL
                           OR chat_state_lists.expires_at <= ?4
                      THEN excluded.expires_at
                      ELSE chat_state_lists.expires_at END",
        )?
        .execute(params![scope, key, self.expires_at, now])?;
        conn.prepare_cached(
            "INSERT INTO chat_state_list_items (scope, list_key, value) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![scope, key, self.value.as_slice()])?;
        if let Some(max) = self.max_length {
            // Keep the newest `max`: drop everything older than the max-th newest item.
            conn.prepare_cached(
                "DELETE FROM chat_state_list_items WHERE scope = ?1 AND list_key = ?2
                 AND id < (SELECT id FROM chat_state_list_items
                           WHERE scope = ?1 AND list_key = ?2
                           ORDER BY id DESC LIMIT 1 OFFSET ?3 - 1)",
            )?
            .execute(params![scope, key, max])?;
        }
        Ok(())
    }
}

/// [`Queues::enqueue`](chat_state_core::Queues::enqueue): answers the queue depth after
/// the write.
pub(crate) struct Enqueue {
    pub(crate) thread_id: String,
    pub(crate) enqueued_at: i64,
    pub(crate) expires_at: i64,
    /// The message as JSON text.
    pub(crate) message: String,
    pub(crate) max_size: i64,
}

impl Write for Enqueue {
    type Output = i64;
    const OPERATION: Operation = Operation::Enqueue;
    const SINGLE_STATEMENT: bool = false;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<i64> {
        let thread_id = &self.thread_id;
        // Expired entries first, so they neither count nor take a slot (rule 7).
        conn.prepare_cached(
            "DELETE FROM chat_state_queue
             WHERE scope = ?1 AND thread_id = ?2 AND expires_at <= ?3",
        )?
        .execute(params![scope, thread_id, now])?;
        // An entry dead on arrival is accepted but, by rule 7, neither stored nor counted
        // (so it does not push a live entry out either).
        if self.expires_at > now {
            conn.prepare_cached(
                "INSERT INTO chat_state_queue
                     (scope, thread_id, enqueued_at, expires_at, message)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                scope,
                thread_id,
                self.enqueued_at,
                self.expires_at,
                &self.message
            ])?;
        }
        conn.prepare_cached(
            "DELETE FROM chat_state_queue WHERE scope = ?1 AND thread_id = ?2
             AND id < (SELECT id FROM chat_state_queue
                       WHERE scope = ?1 AND thread_id = ?2
                       ORDER BY id DESC LIMIT 1 OFFSET ?3 - 1)",
        )?
        .execute(params![scope, thread_id, self.max_size])?;
        conn.prepare_cached(
            "SELECT count(*) FROM chat_state_queue
             WHERE scope = ?1 AND thread_id = ?2 AND expires_at > ?3",
        )?
        .query_row(params![scope, thread_id, now], |r| r.get(0))
    }
}

/// A dequeued row: `(enqueued_at, expires_at, message JSON)`, decoded by the caller.
pub(crate) type QueueRow = (i64, i64, String);

/// [`Queues::dequeue`](chat_state_core::Queues::dequeue): answers the oldest live entry.
pub(crate) struct Dequeue {
    pub(crate) thread_id: String,
}

impl Write for Dequeue {
    type Output = Option<QueueRow>;
    const OPERATION: Operation = Operation::Dequeue;
    const SINGLE_STATEMENT: bool = true;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<Option<QueueRow>> {
        // Select and delete in one statement: two dequeuers (even in two processes)
        // can never both get the entry.
        returning(
            conn,
            "DELETE FROM chat_state_queue WHERE id =
                 (SELECT id FROM chat_state_queue
                  WHERE scope = ?1 AND thread_id = ?2 AND expires_at > ?3
                  ORDER BY id LIMIT 1)
             RETURNING enqueued_at, expires_at, message",
            params![scope, &self.thread_id, now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }
}

/// What [`Admit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admitted {
    Duplicate,
    Dropped,
    Queued(i64),
    Locked {
        fence: i64,
        subscribed: bool,
        read: Option<Vec<u8>>,
    },
}

/// [`Dispatch::admit`](chat_state_core::Dispatch::admit) in one transaction: the claim, then
/// the lock, then (when it is held) the enqueue, each exactly as its own operation runs it.
pub(crate) struct Admit {
    pub(crate) claim: SetIfNotExists,
    pub(crate) lock: Acquire,
    /// `None`: drop the message when the thread is busy.
    pub(crate) queue: Option<Enqueue>,
    /// A cache key to read when admitted.
    pub(crate) read: Option<String>,
}

impl Write for Admit {
    type Output = Admitted;
    const OPERATION: Operation = Operation::Admit;
    const SINGLE_STATEMENT: bool = false;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<Admitted> {
        if !self.claim.execute(conn, scope, now)? {
            return Ok(Admitted::Duplicate);
        }
        if let Some(fence) = self.lock.execute(conn, scope, now)? {
            let subscribed = crate::reads::is_subscribed(conn, scope, &self.lock.lock_id)?;
            let read = match &self.read {
                Some(key) => crate::reads::get(conn, scope, key, now)?,
                None => None,
            };
            return Ok(Admitted::Locked {
                fence,
                subscribed,
                read,
            });
        }
        match &self.queue {
            Some(enqueue) => Ok(Admitted::Queued(enqueue.execute(conn, scope, now)?)),
            None => Ok(Admitted::Dropped),
        }
    }
}

/// What [`ReleaseOrNext`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handed {
    Next(QueueRow),
    Released,
    NotHolder,
}

/// [`Dispatch::release_or_next`](chat_state_core::Dispatch::release_or_next) in one
/// transaction: the extend proves the caller holds the lock (and already moves its expiry
/// for the `Next` case), then the dequeue, then, with nothing dequeued, the release.
pub(crate) struct ReleaseOrNext {
    pub(crate) extend: Extend,
    /// A fenced write stored first ([`Dispatch::release_or_next_with`]); a refused one
    /// answers `NotHolder` and nothing else happens.
    ///
    /// [`Dispatch::release_or_next_with`]: chat_state_core::Dispatch::release_or_next_with
    pub(crate) write: Option<SetFenced>,
}

impl Write for ReleaseOrNext {
    type Output = Handed;
    const OPERATION: Operation = Operation::ReleaseOrNext;
    const SINGLE_STATEMENT: bool = false;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<Handed> {
        if let Some(write) = &self.write
            && !write.execute(conn, scope, now)?
        {
            return Ok(Handed::NotHolder);
        }
        if !self.extend.execute(conn, scope, now)? {
            return Ok(Handed::NotHolder);
        }
        let lock_id = &self.extend.lock_id;
        let dequeue = Dequeue {
            thread_id: lock_id.clone(),
        };
        if let Some(row) = dequeue.execute(conn, scope, now)? {
            return Ok(Handed::Next(row));
        }
        Release {
            lock_id: lock_id.clone(),
            token: self.extend.token.clone(),
        }
        .execute(conn, scope, now)?;
        Ok(Handed::Released)
    }
}

/// [`Dispatch::set_fenced`](chat_state_core::Dispatch::set_fenced) in one transaction: the
/// key's live fence record decides; a stored write is the plain [`Set`] plus the record.
pub(crate) struct SetFenced {
    pub(crate) set: Set,
    pub(crate) lock: chat_state_core::Lock,
}

impl Write for SetFenced {
    type Output = bool;
    const OPERATION: Operation = Operation::SetFenced;
    const SINGLE_STATEMENT: bool = false;

    fn execute(&self, conn: &Connection, scope: &str, now: i64) -> SqlResult<bool> {
        use rusqlite::OptionalExtension;
        let record: Option<(String, i64)> = conn
            .prepare_cached(
                "SELECT lock_id, fence FROM chat_state_fences
                 WHERE scope = ?1 AND cache_key = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
            )?
            .query_row(params![scope, &self.set.key, now], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        // A negative stored fence cannot come from this code; treating it as no fence would
        // let any write through, so it counts as the highest.
        let record = record
            .as_ref()
            .map(|(id, fence)| (id.as_str(), u64::try_from(*fence).unwrap_or(u64::MAX)));
        if chat_state_core::dispatch::is_stale(record, &self.lock) {
            return Ok(false);
        }
        self.set.execute(conn, scope, now)?;
        conn.prepare_cached(
            "INSERT INTO chat_state_fences (scope, cache_key, lock_id, fence, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (scope, cache_key) DO UPDATE SET
                 lock_id = excluded.lock_id, fence = excluded.fence,
                 expires_at = excluded.expires_at",
        )?
        .execute(params![
            scope,
            &self.set.key,
            &self.lock.thread_id,
            crate::to_i64(self.lock.fence),
            self.set.expires_at
        ])?;
        Ok(true)
    }
}

/// Rows removed by one cleanup pass, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupReport {
    /// Expired locks.
    pub locks: u64,
    /// Expired cache entries.
    pub cache: u64,
    /// Expired lists (each with all its items).
    pub lists: u64,
    /// Items of expired lists (and items left without a live list).
    pub list_items: u64,
    /// Expired queue entries.
    pub queue_entries: u64,
    /// Expired fence records of `set_fenced`.
    pub fences: u64,
}

impl CleanupReport {
    /// Total rows removed.
    pub fn total(&self) -> u64 {
        self.locks + self.cache + self.lists + self.list_items + self.queue_entries + self.fences
    }

    pub(crate) fn add(&mut self, other: &CleanupReport) {
        self.locks += other.locks;
        self.cache += other.cache;
        self.lists += other.lists;
        self.list_items += other.list_items;
        self.queue_entries += other.queue_entries;
        self.fences += other.fences;
    }
}

/// One cleanup pass: deletes up to `limit` expired rows of each table, across every key
/// prefix in the file. Every condition is `expires_at <= now`, the exact complement of
/// "live" (rule 1), so a live row is never touched.
pub(crate) struct Cleanup {
    pub(crate) limit: i64,
}

impl Write for Cleanup {
    type Output = CleanupReport;
    const OPERATION: Operation = Operation::Maintenance;
    const SINGLE_STATEMENT: bool = false;

    fn execute(&self, conn: &Connection, _scope: &str, now: i64) -> SqlResult<CleanupReport> {
        let limit = self.limit;
        let locks = conn
            .prepare_cached(
                "DELETE FROM chat_state_locks WHERE (scope, lock_id) IN
                 (SELECT scope, lock_id FROM chat_state_locks WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, limit])? as u64;
        let cache = conn
            .prepare_cached(
                "DELETE FROM chat_state_cache WHERE rowid IN
                 (SELECT rowid FROM chat_state_cache WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, limit])? as u64;
        // Items first (bounded too), then headers: a header goes only once its items are
        // gone, and items without a live header are never read (see Append and get_list).
        let list_items = conn
            .prepare_cached(
                "DELETE FROM chat_state_list_items WHERE id IN
                 (SELECT i.id FROM chat_state_lists l
                  JOIN chat_state_list_items i ON i.scope = l.scope AND i.list_key = l.list_key
                  WHERE l.expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, limit])? as u64;
        let lists = conn
            .prepare_cached(
                "DELETE FROM chat_state_lists WHERE (scope, list_key) IN
                 (SELECT l.scope, l.list_key FROM chat_state_lists l
                  WHERE l.expires_at <= ?1
                    AND NOT EXISTS (SELECT 1 FROM chat_state_list_items i
                                    WHERE i.scope = l.scope AND i.list_key = l.list_key)
                  LIMIT ?2)",
            )?
            .execute(params![now, limit])? as u64;
        let queue_entries = conn
            .prepare_cached(
                "DELETE FROM chat_state_queue WHERE id IN
                 (SELECT id FROM chat_state_queue WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, limit])? as u64;
        let fences = conn
            .prepare_cached(
                "DELETE FROM chat_state_fences WHERE (scope, cache_key) IN
                 (SELECT scope, cache_key FROM chat_state_fences WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, limit])? as u64;
        Ok(CleanupReport {
            locks,
            cache,
            lists,
            list_items,
            queue_entries,
            fences,
        })
    }
}
