//! Native dispatch (`admit`, `release_or_next`, `release_or_next_with`, `set_fenced`): each
//! is one call of a PL/pgSQL function of the schema (version 2), so one statement, one
//! round trip and one transaction, as a Lua script is on Redis.
//!
//! Why functions rather than one statement of data-modifying CTEs: every CTE of a statement
//! reads the snapshot taken when the statement began. An admit that waits on the thread's
//! lock row while the holder releases it would then take the lock but read the thread state
//! (and the queue) as they were *before* the holder's last write; a release that waits on a
//! busy admit would miss the entry that admit queued and strand it. Inside a (volatile)
//! function each statement takes a fresh snapshot, after the row locks of the statements
//! before it were granted, so the steps see each other's effects and those of every
//! transaction they waited for — what SQLite's single writer transaction and Redis's
//! scripts give the other backends.
//!
//! The serialization points, all row locks held to commit:
//! - `admit` takes the thread's lock row with `INSERT ... ON CONFLICT DO UPDATE ... WHERE
//!   expired`, which locks the row even when the lock is busy; a busy admit queues while it
//!   still holds it (and under the queue's advisory lock, as `enqueue` does).
//! - `release_or_next` starts with the extend, an `UPDATE` of the same row: it runs either
//!   before a concurrent admit's attempt (which then waits, and finds the lock released or
//!   extended) or after the admit committed its queue entry (which the dequeue then sees).
//! - `set_fenced` writes the key's fence record first, with `ON CONFLICT DO UPDATE ... WHERE
//!   not stale`: concurrent fenced writes of one key queue on the record row, and each
//!   compares against the record the one before it left.

use std::sync::Arc;

use chat_state_core::dispatch::DEDUPE_VALUE;
use chat_state_core::{
    AdmitOutcome, AdmitRequest, Error, FencedSet, FencedWrite, Handoff, Lock, LockRequest,
    Operation, QueueEntry, WhenBusy,
};

use super::{Inner, clamp_i64, decode, encode, ms, orphan, stored_entry};
use crate::BACKEND;
use crate::error::corrupt;

/// The functions of [`DDL`], which verify-only mode requires.
pub(crate) const FUNCTIONS: &[&str] = &[
    "chat_state_set_fenced",
    "chat_state_release_or_next",
    "chat_state_admit",
];

/// Schema version 2: the fence records of `set_fenced` and the dispatch functions. Each
/// statement is idempotent, so the migration may run it again.
///
/// Every function takes `p_now`, the test clock's milliseconds or NULL for the server's
/// `statement_timestamp()` (the same "now" as every other statement of the backend, and
/// the same for all steps of one call).
pub(crate) const DDL: &[&str] = &[
    // Beside the cache rows rather than in them: plain `set` and `delete` (and TypeScript
    // bots, which know nothing of fences) neither read nor clear a key's record. `fence` is
    // numeric so every u64 compares exactly.
    "CREATE TABLE IF NOT EXISTS chat_state_fences (
    key_prefix text NOT NULL,
    cache_key text NOT NULL,
    lock_id text NOT NULL,
    fence numeric NOT NULL,
    expires_at timestamptz,
    PRIMARY KEY (key_prefix, cache_key)
  )",
    "CREATE INDEX IF NOT EXISTS chat_state_fences_expires_idx
    ON chat_state_fences (expires_at)",
    // true: stored (value as `set` stores it, and the record); false: refused as stale.
    "CREATE OR REPLACE FUNCTION chat_state_set_fenced(
    p_now bigint, p_prefix text, p_key text, p_value text, p_raw bytea, p_ttl bigint,
    p_lock_id text, p_fence numeric)
  RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
  v_now timestamptz := COALESCE('epoch'::timestamptz + p_now * interval '1 millisecond',
                                statement_timestamp());
  v_expires timestamptz := v_now + p_ttl * interval '1 millisecond';
BEGIN
  -- A live record of the same lock id with a higher fence refuses the write (core's
  -- dispatch::is_stale); an expired record counts as none.
  INSERT INTO chat_state_fences AS f (key_prefix, cache_key, lock_id, fence, expires_at)
  VALUES (p_prefix, p_key, p_lock_id, p_fence, v_expires)
  ON CONFLICT (key_prefix, cache_key) DO UPDATE
    SET lock_id = EXCLUDED.lock_id, fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at
    WHERE (f.expires_at IS NOT NULL AND f.expires_at <= v_now)
       OR f.lock_id <> EXCLUDED.lock_id OR f.fence <= EXCLUDED.fence;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO chat_state_cache AS c (key_prefix, cache_key, value, raw, expires_at, updated_at)
  VALUES (p_prefix, p_key, p_value, p_raw, v_expires, v_now)
  ON CONFLICT (key_prefix, cache_key) DO UPDATE
    SET value = EXCLUDED.value, raw = EXCLUDED.raw,
        expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at;
  RETURN true;
END
$fn$",
    // o_status: 'stale' (the fenced write, when p_key is given, was refused: nothing else
    // happened), 'notholder', 'next' (o_entry: the removed entry's JSON) or 'released'.
    "CREATE OR REPLACE FUNCTION chat_state_release_or_next(
    p_now bigint, p_prefix text, p_thread text, p_token text, p_ttl bigint,
    p_key text, p_value text, p_raw bytea, p_value_ttl bigint, p_fence numeric,
    OUT o_status text, OUT o_entry text)
  LANGUAGE plpgsql AS $fn$
DECLARE
  v_now timestamptz := COALESCE('epoch'::timestamptz + p_now * interval '1 millisecond',
                                statement_timestamp());
BEGIN
  IF p_key IS NOT NULL AND NOT chat_state_set_fenced(
       p_now, p_prefix, p_key, p_value, p_raw, p_value_ttl, p_thread, p_fence) THEN
    o_status := 'stale';
    RETURN;
  END IF;
  -- Proves the caller is the live holder and locks the row until commit (see the module
  -- documentation); the new expiry stands if an entry is handed out.
  UPDATE chat_state_locks
  SET expires_at = v_now + p_ttl * interval '1 millisecond', updated_at = v_now
  WHERE key_prefix = p_prefix AND thread_id = p_thread AND token = p_token
    AND expires_at > v_now;
  IF NOT FOUND THEN
    o_status := 'notholder';
    RETURN;
  END IF;
  -- No SKIP LOCKED: an entry a concurrent dequeue holds is waited for, not skipped, so a
  -- dequeue that fails cannot make this release with the entry still queued.
  DELETE FROM chat_state_queues
  WHERE key_prefix = p_prefix AND thread_id = p_thread AND seq = (
    SELECT seq FROM chat_state_queues
    WHERE key_prefix = p_prefix AND thread_id = p_thread AND expires_at > v_now
    ORDER BY seq ASC LIMIT 1
    FOR UPDATE)
  RETURNING value INTO o_entry;
  IF FOUND THEN
    o_status := 'next';
    RETURN;
  END IF;
  DELETE FROM chat_state_locks
  WHERE key_prefix = p_prefix AND thread_id = p_thread AND token = p_token;
  o_status := 'released';
END
$fn$",
    // o_status: 'duplicate', 'dropped', 'queued' (o_depth) or 'admitted' (o_fence,
    // o_subscribed, and o_value/o_raw of p_read when given). Each step is the statement
    // of the operation it stands for (set_if_not_exists, acquire_lock, is_subscribed, get)
    // or its function (chat_state_enqueue), so both paths keep the same rules.
    "CREATE OR REPLACE FUNCTION chat_state_admit(
    p_now bigint, p_prefix text, p_thread text, p_token text, p_lock_ttl bigint,
    p_dedupe_key text, p_dedupe_value text, p_dedupe_ttl bigint,
    p_entry text, p_entry_expires bigint, p_max_size bigint, p_read text,
    OUT o_status text, OUT o_fence bigint, OUT o_subscribed boolean, OUT o_depth bigint,
    OUT o_value text, OUT o_raw bytea)
  LANGUAGE plpgsql AS $fn$
DECLARE
  v_now timestamptz := COALESCE('epoch'::timestamptz + p_now * interval '1 millisecond',
                                statement_timestamp());
BEGIN
  INSERT INTO chat_state_cache AS c (key_prefix, cache_key, value, raw, expires_at, updated_at)
  VALUES (p_prefix, p_dedupe_key, p_dedupe_value, NULL,
          v_now + p_dedupe_ttl * interval '1 millisecond', v_now)
  ON CONFLICT (key_prefix, cache_key) DO UPDATE
    SET value = EXCLUDED.value, raw = EXCLUDED.raw,
        expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at
    WHERE c.expires_at IS NOT NULL AND c.expires_at <= v_now;
  IF NOT FOUND THEN
    o_status := 'duplicate';
    RETURN;
  END IF;
  -- Locks the row even when the lock is busy: held to commit, so a holder's
  -- release_or_next waits for the queueing below.
  INSERT INTO chat_state_locks AS l (key_prefix, thread_id, token, expires_at, updated_at)
  VALUES (p_prefix, p_thread, p_token, v_now + p_lock_ttl * interval '1 millisecond', v_now)
  ON CONFLICT (key_prefix, thread_id) DO UPDATE
    SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at,
        updated_at = EXCLUDED.updated_at
    WHERE l.expires_at <= v_now;
  IF FOUND THEN
    INSERT INTO chat_state_lock_fences AS f (key_prefix, thread_id, fence)
    VALUES (p_prefix, p_thread, 1)
    ON CONFLICT (key_prefix, thread_id) DO UPDATE SET fence = f.fence + 1
    RETURNING f.fence INTO o_fence;
    o_subscribed := EXISTS (SELECT 1 FROM chat_state_subscriptions
                            WHERE key_prefix = p_prefix AND thread_id = p_thread);
    IF p_read IS NOT NULL THEN
      SELECT c.value, c.raw INTO o_value, o_raw FROM chat_state_cache c
      WHERE c.key_prefix = p_prefix AND c.cache_key = p_read
        AND (c.expires_at IS NULL OR c.expires_at > v_now);
    END IF;
    o_status := 'admitted';
    RETURN;
  END IF;
  IF p_entry IS NULL THEN
    o_status := 'dropped';
    RETURN;
  END IF;
  -- Enqueue's own function (its advisory lock, expired entries out, the append, the trim
  -- to the newest p_max_size live ones), so a busy admit queues by the same rules.
  o_depth := chat_state_enqueue(p_now, p_prefix, p_thread, p_entry, p_entry_expires,
                                p_max_size);
  o_status := 'queued';
END
$fn$",
];

const ADMIT: &str = "SELECT o_status, o_fence, o_subscribed, o_depth, o_value, o_raw
  FROM chat_state_admit($1::bigint, $2::text, $3::text, $4::text, $5::bigint, $6::text,
                        $7::text, $8::bigint, $9::text, $10::bigint, $11::bigint, $12::text)";

const RELEASE_OR_NEXT: &str = "SELECT o_status, o_entry
  FROM chat_state_release_or_next($1::bigint, $2::text, $3::text, $4::text, $5::bigint,
                                  $6::text, $7::text, $8::bytea, $9::bigint, $10::numeric)";

const SET_FENCED: &str = "SELECT chat_state_set_fenced($1::bigint, $2::text, $3::text, \
                          $4::text, $5::bytea, $6::bigint, $7::text, $8::numeric)";

/// `chat_state_admit`'s row: status, fence, subscribed, depth, read value and raw bytes.
type AdmitRow = (
    String,
    Option<i64>,
    Option<bool>,
    Option<i64>,
    Option<String>,
    Option<Vec<u8>>,
);

fn unexpected(op: Operation, status: &str) -> Error {
    Error::new(
        chat_state_core::ErrorKind::Backend,
        format!("PostgreSQL: unexpected dispatch status {status:?}"),
    )
    .context(BACKEND, op)
}

/// `admit` (and `admit_and_read` with `read`): one call of `chat_state_admit`, run so that
/// a lock it took for a caller who never learns of it is released (`orphan`).
pub(super) async fn admit(
    inner: &Arc<Inner>,
    request: &AdmitRequest<'_>,
    read: Option<&str>,
) -> Result<(AdmitOutcome, Option<Vec<u8>>), Error> {
    let op = Operation::Admit;
    let (entry, entry_expires, max_size) = match request.when_busy {
        WhenBusy::Drop => (None, None, None),
        WhenBusy::Queue { entry, max_size } => {
            let (json, expires) = stored_entry(op, entry)?;
            (Some(json), Some(expires), Some(clamp_i64(*max_size)))
        }
    };
    let lock = &request.lock;
    let dedupe_value = std::str::from_utf8(DEDUPE_VALUE).unwrap_or("true");
    let query = sqlx::query_as::<_, AdmitRow>(ADMIT)
        .bind(inner.now())
        .bind(inner.prefix.clone())
        .bind(lock.lock_id.to_owned())
        .bind(lock.token.to_owned())
        .bind(ms(lock.ttl))
        .bind(request.dedupe_key.to_owned())
        .bind(dedupe_value)
        .bind(ms(request.dedupe_ttl))
        .bind(entry)
        .bind(entry_expires)
        .bind(max_size)
        .bind(read.map(str::to_owned));
    let row = orphan::taking_lock(
        inner,
        op,
        orphan::Taken::new(lock),
        move |mut conn| async move {
            let result = query.fetch_one(&mut *conn).await;
            (conn, result)
        },
        |row: &AdmitRow| row.0 == "admitted",
    )
    .await?;
    let (status, fence, subscribed, depth, value, raw) = row;
    Ok(match status.as_str() {
        "duplicate" => (AdmitOutcome::Duplicate, None),
        "dropped" => (AdmitOutcome::Dropped, None),
        "queued" => (
            AdmitOutcome::Queued {
                depth: depth.and_then(|d| usize::try_from(d).ok()).unwrap_or(0),
            },
            None,
        ),
        "admitted" => {
            let fence = fence
                .and_then(|f| u64::try_from(f).ok())
                .filter(|f| *f > 0)
                .ok_or_else(|| {
                    corrupt(
                        op,
                        format!(
                            "lock `{}` was taken with fence {fence:?}, not a positive number",
                            lock.lock_id
                        ),
                    )
                })?;
            let read = value.map(|value| decode(value, raw));
            (
                AdmitOutcome::Admitted {
                    fence,
                    subscribed: subscribed.unwrap_or(false),
                },
                read,
            )
        }
        other => return Err(unexpected(op, other)),
    })
}

/// `release_or_next`, with `write` stored first in the same call for `release_or_next_with`.
pub(super) async fn release_or_next(
    inner: &Inner,
    request: &LockRequest<'_>,
    write: Option<(&Lock, &FencedSet<'_>)>,
) -> Result<Handoff, Error> {
    let op = Operation::ReleaseOrNext;
    let (key, text, raw, value_ttl, fence) = match write {
        Some((lock, write)) => {
            let (text, raw) = encode(write.value);
            (
                Some(write.key),
                Some(text),
                raw,
                write.ttl.map(ms),
                Some(lock.fence.to_string()),
            )
        }
        None => (None, None, None, None, None),
    };
    let (status, entry): (String, Option<String>) = inner
        .run(
            op,
            inner
                .rows_at_key(RELEASE_OR_NEXT, request.lock_id)
                .bind(request.token)
                .bind(ms(request.ttl))
                .bind(key)
                .bind(text)
                .bind(raw)
                .bind(value_ttl)
                .bind(fence)
                .fetch_one(&inner.pool),
        )
        .await?;
    match (status.as_str(), entry) {
        ("stale" | "notholder", _) => Ok(Handoff::NotHolder),
        ("released", _) => Ok(Handoff::Released),
        ("next", Some(entry)) => decode_entry(op, request.lock_id, &entry).map(Handoff::Next),
        (other, _) => Err(unexpected(op, other)),
    }
}

/// A dequeued or handed-out entry; one that does not decode is an error (it is already
/// removed from the queue, and on a handoff the lock kept, so the next call goes on with
/// the queue).
pub(super) fn decode_entry(
    op: Operation,
    thread_id: &str,
    entry: &str,
) -> Result<QueueEntry, Error> {
    chat_state_core::json::from_json_slice::<QueueEntry>(entry.as_bytes()).map_err(|e| {
        let snippet: String = entry.chars().take(80).collect();
        corrupt(
            op,
            format!(
                "queue `{thread_id}` held an entry that is not a {{enqueuedAt, expiresAt, \
                 message}} JSON object (removed from the queue): {e}: {snippet}"
            ),
        )
    })
}

/// `set_fenced`: one call of `chat_state_set_fenced`.
pub(super) async fn set_fenced(
    inner: &Inner,
    lock: &Lock,
    key: &str,
    value: &[u8],
    ttl: Option<std::time::Duration>,
) -> Result<FencedWrite, Error> {
    let (text, raw) = encode(value);
    let stored: bool = inner
        .run(
            Operation::SetFenced,
            inner
                .scalar_at_key(SET_FENCED, key)
                .bind(text)
                .bind(raw)
                .bind(ttl.map(ms))
                .bind(&lock.thread_id)
                .bind(lock.fence.to_string())
                .fetch_one(&inner.pool),
        )
        .await?;
    Ok(if stored {
        FencedWrite::Stored
    } else {
        FencedWrite::Stale
    })
}
