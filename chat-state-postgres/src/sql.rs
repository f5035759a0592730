//! The SQL text of every operation, in one place so that the benchmark's raw-sqlx side
//! (`benches/throughput.rs`, which includes this file) sends exactly what the adapter sends.
//! Self-contained on purpose: nothing here may refer to the rest of the crate.

/// "Now" in every statement: the test clock's milliseconds when one is set (`$1`), else the
/// server's `statement_timestamp()`, so every client on the database agrees on expiry.
const NOW: &str =
    "COALESCE('epoch'::timestamptz + $1::bigint * interval '1 millisecond', statement_timestamp())";

pub(crate) fn sql(template: &str) -> String {
    template.replace("{now}", NOW)
}

/// The functions of [`DDL`], which verify-only mode requires.
pub(crate) const FUNCTIONS: &[&str] = &["chat_state_list_append", "chat_state_enqueue"];

/// Schema version 2's functions for lists and queues (idempotent, so a migration may run
/// them again): [`LIST_APPEND_FN`], [`ENQUEUE_FN`].
pub(crate) const DDL: &[&str] = &[LIST_APPEND_FN, ENQUEUE_FN];

/// `append_to_list` in one round trip. A function rather than one statement of
/// data-modifying CTEs because every CTE of a statement reads the snapshot taken when the
/// statement began: the trim and the refresh would not see the entries of an append that
/// committed while this one waited for the list's advisory lock, so two concurrent appends
/// could leave `max + 1` entries (and one of them with the older expiry). In a (volatile)
/// function each statement takes a fresh snapshot, after the lock was granted: the same
/// steps as a transaction of five statements, without four of its round trips.
///
/// "Now" is read after the lock (`clock_timestamp()`, or the test clock `p_now`), so an
/// append that waited is not timed before the one it waited for.
pub(crate) const LIST_APPEND_FN: &str = "CREATE OR REPLACE FUNCTION chat_state_list_append(
    p_now bigint, p_prefix text, p_key text, p_value text, p_raw bytea, p_ttl bigint,
    p_max bigint)
  RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  v_now timestamptz;
  v_expires timestamptz;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(
    'chat_state_lists' || chr(31) || p_prefix || chr(31) || p_key, 0));
  v_now := COALESCE('epoch'::timestamptz + p_now * interval '1 millisecond', clock_timestamp());
  v_expires := v_now + p_ttl * interval '1 millisecond';
  -- An expired list restarts empty (and without expiry unless this append sets one).
  DELETE FROM chat_state_lists
  WHERE key_prefix = p_prefix AND list_key = p_key AND expires_at <= v_now;
  INSERT INTO chat_state_lists (key_prefix, list_key, value, raw, expires_at)
  VALUES (p_prefix, p_key, p_value, p_raw, COALESCE(v_expires,
    (SELECT max(expires_at) FROM chat_state_lists
     WHERE key_prefix = p_prefix AND list_key = p_key AND expires_at > v_now)));
  -- Only live entries count towards the limit.
  IF p_max IS NOT NULL THEN
    DELETE FROM chat_state_lists
    WHERE key_prefix = p_prefix AND list_key = p_key AND seq IN (
      SELECT seq FROM chat_state_lists WHERE key_prefix = p_prefix AND list_key = p_key
        AND (expires_at IS NULL OR expires_at > v_now)
      ORDER BY seq DESC OFFSET p_max);
  END IF;
  -- The whole list takes the new expiry; rows that have it already (the new one) are not
  -- rewritten.
  IF v_expires IS NOT NULL THEN
    UPDATE chat_state_lists SET expires_at = v_expires
    WHERE key_prefix = p_prefix AND list_key = p_key
      AND expires_at IS DISTINCT FROM v_expires;
  END IF;
END
$fn$";

/// `enqueue` in one round trip, for the reason given at [`LIST_APPEND_FN`]; returns the
/// live depth after the append. Dead entries go first, so they take no room. Native
/// dispatch's admit queues under the same advisory lock.
pub(crate) const ENQUEUE_FN: &str = "CREATE OR REPLACE FUNCTION chat_state_enqueue(
    p_now bigint, p_prefix text, p_thread text, p_value text, p_expires bigint, p_max bigint)
  RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
  v_now timestamptz;
  v_depth bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(
    'chat_state_queues' || chr(31) || p_prefix || chr(31) || p_thread, 0));
  v_now := COALESCE('epoch'::timestamptz + p_now * interval '1 millisecond', clock_timestamp());
  DELETE FROM chat_state_queues
  WHERE key_prefix = p_prefix AND thread_id = p_thread AND expires_at <= v_now;
  INSERT INTO chat_state_queues (key_prefix, thread_id, value, expires_at)
  VALUES (p_prefix, p_thread, p_value, 'epoch'::timestamptz + p_expires * interval '1 millisecond');
  DELETE FROM chat_state_queues
  WHERE key_prefix = p_prefix AND thread_id = p_thread AND seq IN (
    SELECT seq FROM chat_state_queues
    WHERE key_prefix = p_prefix AND thread_id = p_thread AND expires_at > v_now
    ORDER BY seq DESC OFFSET p_max);
  SELECT count(*) INTO v_depth FROM chat_state_queues
  WHERE key_prefix = p_prefix AND thread_id = p_thread AND expires_at > v_now;
  RETURN v_depth;
END
$fn$";

/// The SQL of every operation, with [`NOW`] substituted once.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) acquire: String,
    pub(crate) release: &'static str,
    pub(crate) extend: String,
    pub(crate) get: String,
    pub(crate) set: String,
    pub(crate) set_if_not_exists: String,
    /// One call of [`LIST_APPEND_FN`]: one round trip, one transaction.
    pub(crate) list_append: &'static str,
    pub(crate) get_list: String,
    /// One call of [`ENQUEUE_FN`]: one round trip, one transaction.
    pub(crate) enqueue: &'static str,
    pub(crate) dequeue: String,
    pub(crate) depth: String,
    pub(crate) sweep: Vec<String>,
}

impl Statements {
    pub(crate) fn new() -> Self {
        Self {
            acquire: sql("WITH acquired AS (
                INSERT INTO chat_state_locks AS l (key_prefix, thread_id, token, expires_at, updated_at)
                VALUES ($2, $3, $4, {now} + $5::bigint * interval '1 millisecond', {now})
                ON CONFLICT (key_prefix, thread_id) DO UPDATE
                  SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at,
                      updated_at = EXCLUDED.updated_at
                  WHERE l.expires_at <= {now}
                RETURNING 1
              )
              INSERT INTO chat_state_lock_fences AS f (key_prefix, thread_id, fence)
              SELECT $2, $3, 1 FROM acquired
              ON CONFLICT (key_prefix, thread_id) DO UPDATE SET fence = f.fence + 1
              RETURNING fence"),
            release: "DELETE FROM chat_state_locks
              WHERE key_prefix = $1 AND thread_id = $2 AND token = $3",
            extend: sql("UPDATE chat_state_locks
              SET expires_at = {now} + $5::bigint * interval '1 millisecond', updated_at = {now}
              WHERE key_prefix = $2 AND thread_id = $3 AND token = $4 AND expires_at > {now}"),
            get: sql("SELECT value, raw FROM chat_state_cache
              WHERE key_prefix = $2 AND cache_key = $3
                AND (expires_at IS NULL OR expires_at > {now})"),
            set: sql("INSERT INTO chat_state_cache AS c
                (key_prefix, cache_key, value, raw, expires_at, updated_at)
              VALUES ($2, $3, $4, $5, {now} + $6::bigint * interval '1 millisecond', {now})
              ON CONFLICT (key_prefix, cache_key) DO UPDATE
                SET value = EXCLUDED.value, raw = EXCLUDED.raw,
                    expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at"),
            set_if_not_exists: sql("INSERT INTO chat_state_cache AS c
                (key_prefix, cache_key, value, raw, expires_at, updated_at)
              VALUES ($2, $3, $4, $5, {now} + $6::bigint * interval '1 millisecond', {now})
              ON CONFLICT (key_prefix, cache_key) DO UPDATE
                SET value = EXCLUDED.value, raw = EXCLUDED.raw,
                    expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at
                WHERE c.expires_at IS NOT NULL AND c.expires_at <= {now}
              RETURNING 1"),
            list_append: "SELECT chat_state_list_append($1, $2, $3, $4, $5, $6, $7)",
            get_list: sql("SELECT value, raw FROM chat_state_lists
              WHERE key_prefix = $2 AND list_key = $3
                AND (expires_at IS NULL OR expires_at > {now})
              ORDER BY seq ASC"),
            enqueue: "SELECT chat_state_enqueue($1, $2, $3, $4, $5, $6)",
            dequeue: sql("DELETE FROM chat_state_queues
              WHERE key_prefix = $2 AND thread_id = $3 AND seq = (
                SELECT seq FROM chat_state_queues
                WHERE key_prefix = $2 AND thread_id = $3 AND expires_at > {now}
                ORDER BY seq ASC LIMIT 1
                FOR UPDATE SKIP LOCKED)
              RETURNING value"),
            depth: sql("SELECT count(*) FROM chat_state_queues
              WHERE key_prefix = $2 AND thread_id = $3 AND expires_at > {now}"),
            sweep: [
                "chat_state_locks",
                "chat_state_cache",
                "chat_state_lists",
                "chat_state_queues",
                "chat_state_fences",
            ]
            .iter()
            .map(|table| {
                sql(&format!(
                    "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                       SELECT ctid FROM {table}
                       WHERE key_prefix = $2 AND expires_at <= {{now}} LIMIT $3))"
                ))
            })
            .collect(),
        }
    }
}
