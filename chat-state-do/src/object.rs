//! The Durable Object class, [`ChatStateDO`] (wasm32 only).
//!
//! Storage is the object's SQLite database. Every operation runs its SQL statements
//! synchronously with no `await` in between, so the runtime commits them as one atomic unit
//! and no other request of the same object can interleave (the object is single-threaded and
//! only yields at an `await`). The only `await` an operation may reach comes afterwards:
//! moving the alarm earlier.

use std::cell::Cell;
use std::time::Duration;

use chat_state_core::{Error, ErrorKind, Operation, QueueEntry, new_lock_token, validate};
use worker::{
    Date, DurableObject, Env, Method, Request, Response, Result as WorkerResult, ScheduledTime,
    SqlStorage, SqlStorageValue, State, durable_object,
};

use crate::BACKEND;
use crate::protocol::{
    Acquired, PROTOCOL_PATH, Request as Op, TEST_NOW_HEADER, WireError, b64, decode_request,
};

/// The schema version this code writes. Bump it and add a step in [`migrate`] for every
/// change; objects keep their data across deployments, so steps are never edited.
pub const SCHEMA_VERSION: i64 = 1;

/// Rows of one table the alarm deletes per run, so one run stays well under the runtime's
/// CPU limit however large the backlog; a full batch re-arms the alarm at once.
const ALARM_BATCH: i64 = 500;

/// When a failed alarm run tries again. Alarms that throw are retried by the runtime only a
/// few times before it gives up, so the handler catches errors and re-arms itself instead.
const ALARM_RETRY: Duration = Duration::from_secs(30);

/// Largest request body: a 1 MiB value in base64 (4/3) plus generous room for the rest.
const MAX_BODY_BYTES: usize = 1_500_000;

/// Largest integer JS numbers (and so the SQL bindings) represent exactly. Expiry columns are
/// clamped to it: "2^53 ms after 1970" is as good as never, and comparisons stay exact.
const MAX_SAFE_MS: u64 = (1 << 53) - 1;

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

/// The chat-state Durable Object. Re-export it from your Worker
/// (`pub use chat_state_do::ChatStateDO;`) and declare it in `wrangler.toml` with a
/// `new_sqlite_classes` migration; see the crate README.
#[durable_object]
pub struct ChatStateDO {
    state: State,
    sql: SqlStorage,
    /// Why the schema could not be brought to [`SCHEMA_VERSION`]; every request then fails
    /// with this message instead of touching tables of an unknown shape.
    schema_error: Option<String>,
    /// The alarm time as last read or written (`None` = not known yet), so writes do not
    /// read the alarm on every request.
    alarm_ms: Cell<Option<Option<u64>>>,
    /// Test-only fault injection ([`Op::FailAlarms`]): runs left to fail, and the retry delay.
    fail_alarms: Cell<u32>,
    alarm_retry_ms: Cell<u64>,
}

impl DurableObject for ChatStateDO {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        let schema_error = migrate(&sql).err();
        Self {
            state,
            sql,
            schema_error,
            alarm_ms: Cell::new(None),
            fail_alarms: Cell::new(0),
            alarm_retry_ms: Cell::new(ALARM_RETRY.as_millis() as u64),
        }
    }

    async fn fetch(&self, mut req: Request) -> WorkerResult<Response> {
        let path = req.path();
        if path != PROTOCOL_PATH {
            return error_response(&WireError::protocol_mismatch(&path));
        }
        if req.method() != Method::Post {
            let e = Error::invalid_input("chat-state requests must use POST");
            return error_response(&WireError::from_error(&e));
        }
        let now = match request_time(&req) {
            Ok(now) => now,
            Err(e) => return error_response(&WireError::from_error(&e)),
        };
        let body = req.bytes().await?;
        let result = if body.len() > MAX_BODY_BYTES {
            Err(Error::invalid_input(format!(
                "request body is {} bytes; the limit is {MAX_BODY_BYTES}",
                body.len()
            )))
        } else {
            match decode_request(&body) {
                Ok(op) => self.handle(op, now).await,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(json) => Response::from_bytes(json),
            Err(e) => error_response(&WireError::from_error(&e)),
        }
    }

    async fn alarm(&self) -> WorkerResult<Response> {
        self.alarm_ms.set(Some(None)); // the alarm that woke us is consumed
        match self.clean_expired() {
            Ok(next) => {
                if let Some(at) = next {
                    self.arm_at(at).await?;
                }
                Response::ok("cleaned")
            }
            Err(e) => {
                worker::console_error!("chat-state-do: alarm cleanup failed, retrying later: {e}");
                // Best effort: if even this write fails, the re-arm below still happens.
                let _ = meta(&self.sql, "alarm_failures")
                    .and_then(|n| set_meta(&self.sql, "alarm_failures", n as i64 + 1));
                let retry = now_ms() + self.alarm_retry_ms.get();
                self.arm_at(retry).await?;
                Response::ok("cleanup failed; re-armed")
            }
        }
    }
}

fn error_response(e: &WireError) -> WorkerResult<Response> {
    let body = serde_json::to_vec(e).map_err(|e| worker::Error::RustError(e.to_string()))?;
    Ok(Response::from_bytes(body)?.with_status(e.status()))
}

fn now_ms() -> u64 {
    Date::now().as_millis()
}

/// The time a request runs at: `Date.now()`, unless it carries a test clock's time in
/// [`TEST_NOW_HEADER`] (see the protocol docs).
fn request_time(req: &Request) -> Result<u64, Error> {
    let header = req.headers().get(TEST_NOW_HEADER).map_err(|e| {
        Error::invalid_input(format!("cannot read the header {TEST_NOW_HEADER}: {e}"))
    })?;
    match header {
        None => Ok(now_ms()),
        Some(v) => test_time(&v),
    }
}

/// With the test feature: the header's time is the request's time.
#[cfg(feature = "test-introspection")]
fn test_time(v: &str) -> Result<u64, Error> {
    v.trim()
        .parse::<u64>()
        .map(|t| t.min(MAX_SAFE_MS))
        .map_err(|_| {
            Error::invalid_input(format!(
                "header {TEST_NOW_HEADER}: {v:?} is not a Unix time in milliseconds"
            ))
        })
}

/// Without the test feature nobody may set the object's clock.
#[cfg(not(feature = "test-introspection"))]
fn test_time(_v: &str) -> Result<u64, Error> {
    Err(Error::invalid_input(format!(
        "the header {TEST_NOW_HEADER} sets the object's clock, which only objects built with \
         the chat-state-do feature `test-introspection` allow"
    )))
}

/// Milliseconds as an SQL integer, clamped to what JS numbers hold exactly.
fn ms(v: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(v.min(MAX_SAFE_MS) as i64)
}

fn backend_err(op: Operation, what: &str, e: worker::Error) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("Durable Object SQL failed while {what}: {e}"),
    )
    .context(BACKEND, op)
}

/// Brings the schema to [`SCHEMA_VERSION`]. Runs in the constructor, before any request.
fn migrate(sql: &SqlStorage) -> Result<(), String> {
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

fn meta(sql: &SqlStorage, k: &str) -> WorkerResult<u64> {
    let mut rows = sql
        .exec("SELECT v FROM meta WHERE k = ?", vec![k.into()])?
        .raw();
    Ok(match rows.next().transpose()? {
        Some(row) => int(row.first()).max(0) as u64,
        None => 0,
    })
}

fn set_meta(sql: &SqlStorage, k: &str, v: i64) -> WorkerResult<()> {
    sql.exec(
        "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        vec![k.into(), v.into()],
    )?;
    Ok(())
}

fn int(v: Option<&SqlStorageValue>) -> i64 {
    match v {
        Some(SqlStorageValue::Integer(i)) => *i,
        Some(SqlStorageValue::Float(f)) => *f as i64,
        Some(SqlStorageValue::Boolean(b)) => i64::from(*b),
        _ => 0,
    }
}

fn blob(v: Option<&SqlStorageValue>, op: Operation) -> Result<Vec<u8>, Error> {
    match v {
        Some(SqlStorageValue::Blob(b)) => Ok(b.clone()),
        // Written by something other than this code (e.g. a manual SQL fix-up).
        Some(SqlStorageValue::String(s)) => Ok(s.clone().into_bytes()),
        other => Err(Error::corrupt(format!(
            "stored value has an unexpected SQL type ({other:?}); expected a BLOB"
        ))
        .context(BACKEND, op)),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::new(ErrorKind::Backend, e.to_string()))
}

impl ChatStateDO {
    async fn handle(&self, op: Op, now: u64) -> Result<Vec<u8>, Error> {
        if let Some(e) = &self.schema_error {
            return Err(Error::new(ErrorKind::Backend, e.clone()));
        }
        if op == Op::Inspect {
            let alarm = self.state.storage().get_alarm().await.ok().flatten();
            return self.inspect(now, alarm.map(|v| v.max(0) as u64));
        }
        let (reply, arm) = self.apply(op, now)?;
        if let Some(at) = arm {
            self.arm_no_later_than(at).await;
        }
        Ok(reply)
    }

    /// Validates and runs one operation synchronously. Returns the reply and, when the
    /// operation stored something that expires, that expiry (so the alarm can be moved).
    fn apply(&self, op: Op, now: u64) -> Result<(Vec<u8>, Option<u64>), Error> {
        let sql = &self.sql;
        let none = || to_json(&());
        Ok(match op {
            Op::Subscribe { thread_id } => {
                let o = Operation::Subscribe;
                validate::thread_id(BACKEND, o, &thread_id)?;
                sql.exec(
                    "INSERT OR IGNORE INTO subscriptions (thread_id) VALUES (?)",
                    vec![thread_id.into()],
                )
                .map_err(|e| backend_err(o, "subscribing", e))?;
                (none()?, None)
            }
            Op::Unsubscribe { thread_id } => {
                let o = Operation::Unsubscribe;
                validate::thread_id(BACKEND, o, &thread_id)?;
                sql.exec(
                    "DELETE FROM subscriptions WHERE thread_id = ?",
                    vec![thread_id.into()],
                )
                .map_err(|e| backend_err(o, "unsubscribing", e))?;
                (none()?, None)
            }
            Op::IsSubscribed { thread_id } => {
                let o = Operation::IsSubscribed;
                validate::thread_id(BACKEND, o, &thread_id)?;
                let found = sql
                    .exec(
                        "SELECT 1 FROM subscriptions WHERE thread_id = ?",
                        vec![thread_id.into()],
                    )
                    .map_err(|e| backend_err(o, "reading subscriptions", e))?
                    .raw()
                    .next()
                    .is_some();
                (to_json(&found)?, None)
            }
            Op::AcquireLock { lock_id, ttl_ms } => {
                let o = Operation::AcquireLock;
                let ttl = Duration::from_millis(ttl_ms);
                validate::acquire_lock(BACKEND, &lock_id, ttl)?;
                let expires = validate::expiry_ms(now, ttl).map_err(|e| e.context(BACKEND, o))?;
                let err = |e| backend_err(o, "acquiring a lock", e);
                let held = sql
                    .exec(
                        "SELECT 1 FROM locks WHERE lock_id = ? AND expires_at > ?",
                        vec![lock_id.as_str().into(), ms(now)],
                    )
                    .map_err(err)?
                    .raw()
                    .next()
                    .is_some();
                if held {
                    (to_json(&())?, None)
                } else {
                    // One counter for the whole object: strictly increasing overall implies
                    // strictly increasing per lock id, and nothing per id must outlive the
                    // lock (lock ids like `chat:callback:<token>` are used once).
                    let mut rows = sql
                        .exec(
                            "INSERT INTO meta (k, v) VALUES ('fence', 1) \
                             ON CONFLICT (k) DO UPDATE SET v = v + 1 RETURNING v",
                            None,
                        )
                        .map_err(err)?
                        .raw();
                    let fence = match rows.next().transpose().map_err(err)? {
                        Some(row) => int(row.first()) as u64,
                        None => {
                            return Err(Error::new(
                                ErrorKind::Backend,
                                "the fence counter update returned no row",
                            )
                            .context(BACKEND, o));
                        }
                    };
                    let token = new_lock_token().map_err(|e| e.context(BACKEND, o))?;
                    sql.exec(
                        "INSERT OR REPLACE INTO locks (lock_id, token, expires_at, fence) \
                         VALUES (?, ?, ?, ?)",
                        vec![
                            lock_id.into(),
                            token.as_str().into(),
                            ms(expires),
                            SqlStorageValue::Integer(fence as i64),
                        ],
                    )
                    .map_err(err)?;
                    (to_json(&Acquired { token, fence })?, Some(expires))
                }
            }
            Op::ReleaseLock { lock_id, token } => {
                let o = Operation::ReleaseLock;
                validate::key(BACKEND, o, "lock id", &lock_id)?;
                validate::key(BACKEND, o, "lock token", &token)?;
                sql.exec(
                    "DELETE FROM locks WHERE lock_id = ? AND token = ?",
                    vec![lock_id.into(), token.into()],
                )
                .map_err(|e| backend_err(o, "releasing a lock", e))?;
                (none()?, None)
            }
            Op::ExtendLock {
                lock_id,
                token,
                ttl_ms,
            } => {
                let o = Operation::ExtendLock;
                let ttl = Duration::from_millis(ttl_ms);
                validate::key(BACKEND, o, "lock id", &lock_id)?;
                validate::key(BACKEND, o, "lock token", &token)?;
                validate::ttl(BACKEND, o, ttl)?;
                let expires = validate::expiry_ms(now, ttl).map_err(|e| e.context(BACKEND, o))?;
                let extended = sql
                    .exec(
                        "UPDATE locks SET expires_at = ? \
                         WHERE lock_id = ? AND token = ? AND expires_at > ? RETURNING 1",
                        vec![ms(expires), lock_id.into(), token.into(), ms(now)],
                    )
                    .map_err(|e| backend_err(o, "extending a lock", e))?
                    .raw()
                    .next()
                    .is_some();
                (to_json(&extended)?, extended.then_some(expires))
            }
            Op::ForceReleaseLock { lock_id } => {
                let o = Operation::ForceReleaseLock;
                validate::force_release_lock(BACKEND, &lock_id)?;
                sql.exec("DELETE FROM locks WHERE lock_id = ?", vec![lock_id.into()])
                    .map_err(|e| backend_err(o, "force-releasing a lock", e))?;
                (none()?, None)
            }
            Op::Get { key } => {
                let o = Operation::Get;
                validate::cache_key(BACKEND, o, &key)?;
                let err = |e| backend_err(o, "reading the cache", e);
                let mut rows = sql
                    .exec(
                        "SELECT value FROM cache WHERE key = ? \
                         AND (expires_at IS NULL OR expires_at > ?)",
                        vec![key.into(), ms(now)],
                    )
                    .map_err(err)?
                    .raw();
                match rows.next().transpose().map_err(err)? {
                    Some(row) => (to_json(&b64::encode(&blob(row.first(), o)?))?, None),
                    None => (to_json(&())?, None),
                }
            }
            Op::Set { key, value, ttl_ms } => {
                let o = Operation::Set;
                let ttl = ttl_ms.map(Duration::from_millis);
                validate::set(BACKEND, o, &key, &value, ttl)?;
                let expires = self.optional_expiry(o, now, ttl)?;
                self.cache_put(o, key, value, expires)?;
                (none()?, expires)
            }
            Op::SetIfNotExists { key, value, ttl_ms } => {
                let o = Operation::SetIfNotExists;
                let ttl = ttl_ms.map(Duration::from_millis);
                validate::set(BACKEND, o, &key, &value, ttl)?;
                let expires = self.optional_expiry(o, now, ttl)?;
                // An expired row counts as absent (contract rule 5); single-threaded object,
                // no await between read and write, so exactly one concurrent caller wins.
                let live = sql
                    .exec(
                        "SELECT 1 FROM cache WHERE key = ? \
                         AND (expires_at IS NULL OR expires_at > ?)",
                        vec![key.as_str().into(), ms(now)],
                    )
                    .map_err(|e| backend_err(o, "reading the cache", e))?
                    .raw()
                    .next()
                    .is_some();
                if live {
                    (to_json(&false)?, None)
                } else {
                    self.cache_put(o, key, value, expires)?;
                    (to_json(&true)?, expires)
                }
            }
            Op::Delete { key } => {
                let o = Operation::Delete;
                validate::cache_key(BACKEND, o, &key)?;
                sql.exec("DELETE FROM cache WHERE key = ?", vec![key.into()])
                    .map_err(|e| backend_err(o, "deleting from the cache", e))?;
                (none()?, None)
            }
            Op::AppendToList {
                key,
                value,
                max_length,
                ttl_ms,
            } => {
                let o = Operation::AppendToList;
                let options = chat_state_core::ListOptions {
                    max_length: max_length.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                    ttl: ttl_ms.map(Duration::from_millis),
                };
                validate::append_to_list(BACKEND, &key, &value, &options)?;
                let expires = self.optional_expiry(o, now, options.ttl)?;
                let arm = self.list_append(key, value, options.max_length, expires, now)?;
                (none()?, arm)
            }
            Op::GetList { key } => {
                let o = Operation::GetList;
                validate::cache_key(BACKEND, o, &key)?;
                let err = |e| backend_err(o, "reading a list", e);
                // The header's expiry gates the items: an expired list reads as empty even
                // before the alarm has deleted it.
                let rows = sql
                    .exec(
                        "SELECT i.value FROM list_items i JOIN lists l ON l.key = i.key \
                         WHERE i.key = ? AND (l.expires_at IS NULL OR l.expires_at > ?) \
                         ORDER BY i.seq",
                        vec![key.into(), ms(now)],
                    )
                    .map_err(err)?
                    .raw();
                let mut items = Vec::new();
                for row in rows {
                    let row = row.map_err(err)?;
                    items.push(b64::encode(&blob(row.first(), o)?));
                }
                (to_json(&items)?, None)
            }
            Op::Enqueue {
                thread_id,
                entry,
                max_size,
            } => {
                let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);
                validate::enqueue(BACKEND, &thread_id, &entry, max_size)?;
                let depth = self.enqueue(&thread_id, &entry, max_size, now)?;
                (to_json(&depth)?, Some(entry.expires_at))
            }
            Op::Dequeue { thread_id } => {
                let o = Operation::Dequeue;
                validate::thread_id(BACKEND, o, &thread_id)?;
                (to_json(&self.dequeue(&thread_id, now)?)?, None)
            }
            Op::QueueDepth { thread_id } => {
                let o = Operation::QueueDepth;
                validate::thread_id(BACKEND, o, &thread_id)?;
                (to_json(&self.depth(o, &thread_id, now)?)?, None)
            }
            Op::Inspect => (self.inspect(now, self.alarm_ms.get().flatten())?, None),
            Op::FailAlarms { times, retry_ms } => {
                if !cfg!(feature = "test-introspection") {
                    return Err(Error::invalid_input(
                        "the fail_alarms operation exists only in objects built with the \
                         chat-state-do feature `test-introspection`",
                    ));
                }
                self.fail_alarms.set(times);
                self.alarm_retry_ms.set(retry_ms);
                (none()?, None)
            }
        })
    }

    fn optional_expiry(
        &self,
        o: Operation,
        now: u64,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, Error> {
        ttl.map(|t| validate::expiry_ms(now, t).map_err(|e| e.context(BACKEND, o)))
            .transpose()
    }

    fn cache_put(
        &self,
        o: Operation,
        key: String,
        value: Vec<u8>,
        expires: Option<u64>,
    ) -> Result<(), Error> {
        self.sql
            .exec(
                "INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?, ?, ?)",
                vec![
                    key.into(),
                    SqlStorageValue::Blob(value),
                    expires.map(ms).unwrap_or(SqlStorageValue::Null),
                ],
            )
            .map_err(|e| backend_err(o, "writing the cache", e))?;
        Ok(())
    }

    /// Appends one item; returns the list's expiry if it has one (for the alarm).
    fn list_append(
        &self,
        key: String,
        value: Vec<u8>,
        max_length: Option<usize>,
        new_expiry: Option<u64>,
        now: u64,
    ) -> Result<Option<u64>, Error> {
        let o = Operation::AppendToList;
        let err = |e| backend_err(o, "appending to a list", e);
        let sql = &self.sql;
        let mut rows = sql
            .exec(
                "SELECT expires_at FROM lists WHERE key = ?",
                vec![key.as_str().into()],
            )
            .map_err(err)?
            .raw();
        let current: Option<u64> = rows
            .next()
            .transpose()
            .map_err(err)?
            .and_then(|row| match row.first() {
                Some(SqlStorageValue::Null) | None => None,
                v => Some(int(v).max(0) as u64),
            });
        let mut expiry = current;
        if expiry.is_some_and(|at| at <= now) {
            // An expired list restarts empty (contract rule 6), with no expiry unless this
            // append sets one.
            sql.exec(
                "DELETE FROM list_items WHERE key = ?",
                vec![key.as_str().into()],
            )
            .map_err(err)?;
            expiry = None;
        }
        if new_expiry.is_some() {
            expiry = new_expiry;
        }
        sql.exec(
            "INSERT INTO lists (key, expires_at) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
            vec![
                key.as_str().into(),
                expiry.map(ms).unwrap_or(SqlStorageValue::Null),
            ],
        )
        .map_err(err)?;
        sql.exec(
            "INSERT INTO list_items (key, seq, value) VALUES (?1, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM list_items WHERE key = ?1), ?2)",
            vec![key.as_str().into(), SqlStorageValue::Blob(value)],
        )
        .map_err(err)?;
        if let Some(max) = max_length {
            sql.exec(
                "DELETE FROM list_items WHERE key = ?1 AND seq <= \
                 (SELECT seq FROM list_items WHERE key = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                vec![key.as_str().into(), SqlStorageValue::Integer(max as i64)],
            )
            .map_err(err)?;
        }
        Ok(expiry)
    }

    fn enqueue(
        &self,
        thread_id: &str,
        entry: &QueueEntry,
        max_size: usize,
        now: u64,
    ) -> Result<usize, Error> {
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
        self.depth(o, thread_id, now)
    }

    fn dequeue(&self, thread_id: &str, now: u64) -> Result<Option<QueueEntry>, Error> {
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
                serde_json::from_str(text).map(Some).map_err(|e| {
                    Error::corrupt(format!(
                    "a stored queue entry is not valid JSON ({e}); it was removed from the queue"
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

    /// Moves the alarm to `at` if it is not already set at or before it.
    async fn arm_no_later_than(&self, at: u64) {
        let current = match self.alarm_ms.get() {
            Some(known) => known,
            None => match self.state.storage().get_alarm().await {
                Ok(v) => {
                    let v = v.map(|ms| ms.max(0) as u64);
                    self.alarm_ms.set(Some(v));
                    v
                }
                // Reading the alarm failed: arm anyway; an early alarm only costs a run.
                Err(_) => None,
            },
        };
        if current.is_none_or(|c| c > at) {
            // A failure here loses no data: the rows are stored and expire on read; the next
            // write or alarm run arms the alarm again.
            if let Err(e) = self.arm_at(at).await {
                worker::console_error!("chat-state-do: could not set the cleanup alarm: {e}");
            }
        }
    }

    async fn arm_at(&self, at: u64) -> WorkerResult<()> {
        let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(at.min(MAX_SAFE_MS) as f64));
        self.state
            .storage()
            .set_alarm(ScheduledTime::new(date))
            .await?;
        self.alarm_ms.set(Some(Some(at)));
        Ok(())
    }

    /// Deletes up to [`ALARM_BATCH`] expired rows per table and returns when to run next:
    /// now if a batch was full, else the earliest future expiry, else never.
    fn clean_expired(&self) -> WorkerResult<Option<u64>> {
        if self.fail_alarms.get() > 0 {
            self.fail_alarms.set(self.fail_alarms.get() - 1);
            return Err(worker::Error::RustError("injected alarm failure".into()));
        }
        let sql = &self.sql;
        let now = now_ms();
        let t = || vec![ms(now), SqlStorageValue::Integer(ALARM_BATCH)];
        let mut full = false;
        for stmt in [
            "DELETE FROM locks WHERE rowid IN \
             (SELECT rowid FROM locks WHERE expires_at <= ? LIMIT ?)",
            "DELETE FROM cache WHERE rowid IN (SELECT rowid FROM cache \
             WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
            "DELETE FROM queue WHERE rowid IN \
             (SELECT rowid FROM queue WHERE expires_at <= ? LIMIT ?)",
            "DELETE FROM list_items WHERE rowid IN (SELECT i.rowid FROM list_items i \
             JOIN lists l ON l.key = i.key \
             WHERE l.expires_at IS NOT NULL AND l.expires_at <= ? LIMIT ?)",
            // Headers go only once their items are gone, so a partial batch never leaves
            // orphaned items without the expiry that would delete them.
            "DELETE FROM lists WHERE rowid IN (SELECT rowid FROM lists l \
             WHERE expires_at IS NOT NULL AND expires_at <= ? \
             AND NOT EXISTS (SELECT 1 FROM list_items i WHERE i.key = l.key) LIMIT ?)",
        ] {
            let cursor = sql.exec(stmt, t())?;
            full |= cursor.rows_written() as i64 >= ALARM_BATCH;
        }
        let runs = meta(sql, "alarm_runs")?;
        set_meta(sql, "alarm_runs", runs as i64 + 1)?;
        if full {
            return Ok(Some(now));
        }
        let mut rows = sql
            .exec(
                "SELECT MIN(e) FROM ( \
                 SELECT MIN(expires_at) AS e FROM locks WHERE expires_at > ?1 \
                 UNION ALL SELECT MIN(expires_at) FROM cache WHERE expires_at > ?1 \
                 UNION ALL SELECT MIN(expires_at) FROM lists WHERE expires_at > ?1 \
                 UNION ALL SELECT MIN(expires_at) FROM queue WHERE expires_at > ?1)",
                vec![ms(now)],
            )?
            .raw();
        Ok(
            match rows.next().transpose()?.as_ref().and_then(|r| r.first()) {
                Some(SqlStorageValue::Null) | None => None,
                v => Some(int(v).max(0) as u64),
            },
        )
    }

    #[cfg(feature = "test-introspection")]
    fn inspect(&self, now: u64, alarm_ms: Option<u64>) -> Result<Vec<u8>, Error> {
        use crate::protocol::{Inspection, TableCount};
        let o = Operation::Maintenance;
        let err = |e| backend_err(o, "inspecting", e);
        let count = |stmt: &str| -> Result<TableCount, Error> {
            let mut rows = self.sql.exec(stmt, vec![ms(now)]).map_err(err)?.raw();
            let row = rows.next().transpose().map_err(err)?.unwrap_or_default();
            Ok(TableCount {
                live: int(row.first()).max(0) as u64,
                expired: int(row.get(1)).max(0) as u64,
            })
        };
        let live_expired = |table: &str| {
            format!(
                "SELECT COALESCE(SUM(expires_at IS NULL OR expires_at > ?1), 0), \
                 COALESCE(SUM(expires_at IS NOT NULL AND expires_at <= ?1), 0) FROM {table}"
            )
        };
        let report = Inspection {
            name: self.state.id().name(),
            now_ms: now,
            alarm_ms,
            schema_version: meta(&self.sql, "schema_version").map_err(err)?,
            subscriptions: count("SELECT COUNT(*), 0 * ?1 FROM subscriptions")?,
            locks: count(&live_expired("locks"))?,
            cache: count(&live_expired("cache"))?,
            lists: count(&live_expired("lists"))?,
            list_items: count(
                "SELECT COALESCE(SUM(l.expires_at IS NULL OR l.expires_at > ?1), 0), \
                 COALESCE(SUM(l.expires_at IS NOT NULL AND l.expires_at <= ?1), 0) \
                 FROM list_items i LEFT JOIN lists l ON l.key = i.key",
            )?,
            queue: count(&live_expired("queue"))?,
            alarm_runs: meta(&self.sql, "alarm_runs").map_err(err)?,
            alarm_failures: meta(&self.sql, "alarm_failures").map_err(err)?,
        };
        to_json(&report)
    }

    #[cfg(not(feature = "test-introspection"))]
    fn inspect(&self, _now: u64, _alarm_ms: Option<u64>) -> Result<Vec<u8>, Error> {
        Err(Error::invalid_input(
            "the inspect operation exists only in objects built with the chat-state-do feature \
             `test-introspection`",
        ))
    }
}
