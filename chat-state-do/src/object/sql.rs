//! The statements every operation runs, and the helpers that run them.
//!
//! Each statement's text becomes a JavaScript string once per object, and the runtime
//! caches the prepared statement under that text, so a statement is neither re-encoded nor
//! re-parsed per call. A statement that answers one column names it `v`, which is what the
//! one-value helpers read.

use chat_state_core::{Error, ErrorKind, Operation};
use wasm_bindgen::JsValue;

use crate::BACKEND;
use crate::js;

/// Largest integer JS numbers (and so the SQL bindings) represent exactly. Expiry columns are
/// clamped to it: "2^53 ms after 1970" is as good as never, and comparisons stay exact.
pub(super) const MAX_SAFE_MS: u64 = (1 << 53) - 1;

macro_rules! statements {
    ($($name:ident = $text:expr;)*) => {
        /// A statement the operations run; its text is in [`TEXTS`].
        #[derive(Debug, Clone, Copy)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub(super) enum Stmt { $($name),* }

        const TEXTS: &[&str] = &[$($text),*];
    };
}

statements! {
    SUBSCRIBE = "INSERT OR IGNORE INTO subscriptions (thread_id) VALUES (?1)";
    UNSUBSCRIBE = "DELETE FROM subscriptions WHERE thread_id = ?1";
    IS_SUBSCRIBED = "SELECT 1 AS v FROM subscriptions WHERE thread_id = ?1";
    // Takes a free or expired lock in one statement: the update only happens where the held
    // row has expired, and RETURNING tells whether a row was written.
    ACQUIRE = "INSERT INTO locks (lock_id, token, expires_at, fence) VALUES (?1, ?2, ?3, ?4) \
               ON CONFLICT (lock_id) DO UPDATE SET token = excluded.token, \
               expires_at = excluded.expires_at, fence = excluded.fence \
               WHERE locks.expires_at <= ?5 RETURNING fence AS v";
    // Reserves a block of fences above every fence issued before (see locks.rs).
    RESERVE_FENCES = "INSERT INTO meta (k, v) VALUES ('fence', ?1) \
                      ON CONFLICT (k) DO UPDATE SET v = v + ?1 RETURNING v";
    RELEASE = "DELETE FROM locks WHERE lock_id = ?1 AND token = ?2";
    EXTEND = "UPDATE locks SET expires_at = ?1 \
              WHERE lock_id = ?2 AND token = ?3 AND expires_at > ?4 RETURNING 1 AS v";
    FORCE_RELEASE = "DELETE FROM locks WHERE lock_id = ?1";
    GET = "SELECT value AS v FROM cache WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";
    SET = "INSERT INTO cache (key, value, expires_at) VALUES (?1, ?2, ?3) \
           ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";
    // Stores only over a missing or expired row (contract rule 5); RETURNING says whether.
    SET_IF_NOT_EXISTS = "INSERT INTO cache (key, value, expires_at) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         expires_at = excluded.expires_at \
                         WHERE cache.expires_at IS NOT NULL AND cache.expires_at <= ?4 RETURNING 1 AS v";
    DELETE = "DELETE FROM cache WHERE key = ?1";
    // The header carries the list's expiry and the next item's sequence number. An expired
    // list restarts at 1 without expiry (unless this append sets one); SET expressions read
    // the row as it was before the update.
    LIST_HEADER = "INSERT INTO lists (key, expires_at, next_seq) VALUES (?1, ?2, 1) \
                   ON CONFLICT (key) DO UPDATE SET \
                   next_seq = CASE WHEN lists.expires_at <= ?3 THEN 1 ELSE lists.next_seq + 1 END, \
                   expires_at = CASE WHEN ?2 IS NOT NULL THEN ?2 \
                   WHEN lists.expires_at <= ?3 THEN NULL ELSE lists.expires_at END \
                   RETURNING next_seq, expires_at";
    LIST_CLEAR = "DELETE FROM list_items WHERE key = ?1";
    LIST_ITEM = "INSERT INTO list_items (key, seq, value) VALUES (?1, ?2, ?3)";
    LIST_TRIM = "DELETE FROM list_items WHERE key = ?1 AND seq <= ?2";
    GET_LIST = "SELECT i.value AS v FROM list_items i JOIN lists l ON l.key = i.key \
                WHERE i.key = ?1 AND (l.expires_at IS NULL OR l.expires_at > ?2) ORDER BY i.seq";
    ENQUEUE = "INSERT INTO queue (thread_id, seq, expires_at, entry) VALUES (?1, \
               (SELECT COALESCE(MAX(seq), 0) + 1 FROM queue WHERE thread_id = ?1), ?2, ?3)";
    // Drops the thread's dead entries and the live ones beyond the newest `max_size`.
    QUEUE_PRUNE = "DELETE FROM queue WHERE thread_id = ?1 AND (expires_at <= ?2 OR seq <= \
                   (SELECT seq FROM queue WHERE thread_id = ?1 AND expires_at > ?2 \
                   ORDER BY seq DESC LIMIT 1 OFFSET ?3))";
    QUEUE_DEPTH = "SELECT COUNT(*) AS v FROM queue WHERE thread_id = ?1 AND expires_at > ?2";
    // Removes the oldest live entry and the dead ones queued before it.
    DEQUEUE = "DELETE FROM queue WHERE thread_id = ?1 AND seq <= \
               (SELECT seq FROM queue WHERE thread_id = ?1 AND expires_at > ?2 \
               ORDER BY seq LIMIT 1) RETURNING entry, expires_at";
    // Releases the lock of a live holder whose queue has no live entry: the whole of an
    // uncontended `releaseOrNext` in one statement (see dispatch.rs).
    RELEASE_IF_DRAINED = "DELETE FROM locks WHERE lock_id = ?1 AND token = ?2 AND expires_at > ?3 \
                          AND NOT EXISTS (SELECT 1 FROM queue WHERE thread_id = ?1 \
                          AND expires_at > ?3) RETURNING 1 AS v";
    // The live fence record of a key (schema v3; see dispatch.rs).
    FENCE_READ = "SELECT lock_id, fence FROM fences \
                  WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";
    FENCE_WRITE = "INSERT INTO fences (key, lock_id, fence, expires_at) VALUES (?1, ?2, ?3, ?4) \
                   ON CONFLICT (key) DO UPDATE SET lock_id = excluded.lock_id, \
                   fence = excluded.fence, expires_at = excluded.expires_at";
}

/// The object's SQL handle and its statements as JavaScript strings.
pub(super) struct Sql {
    db: JsValue,
    texts: Vec<JsValue>,
}

impl Sql {
    pub(super) fn new(db: JsValue) -> Self {
        Self {
            db,
            texts: TEXTS.iter().map(|t| JsValue::from_str(t)).collect(),
        }
    }

    fn text(&self, s: Stmt) -> &JsValue {
        &self.texts[s as usize]
    }

    // One method per number of bound values, so every call site is checked at compile time
    // and no bindings array is built.

    /// Runs a statement that answers no rows, binding one value.
    pub(super) fn run1(&self, s: Stmt, a: &JsValue) -> Result<(), JsValue> {
        js::run1(&self.db, self.text(s), a)
    }

    /// [`Sql::run1`] with two values.
    pub(super) fn run2(&self, s: Stmt, a: &JsValue, b: &JsValue) -> Result<(), JsValue> {
        js::run2(&self.db, self.text(s), a, b)
    }

    /// [`Sql::run1`] with three values.
    pub(super) fn run3(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
    ) -> Result<(), JsValue> {
        js::run3(&self.db, self.text(s), a, b, c)
    }

    /// [`Sql::run1`] with four values.
    pub(super) fn run4(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
    ) -> Result<(), JsValue> {
        js::run4(&self.db, self.text(s), a, b, c, d)
    }

    /// Runs a statement binding one value; returns the column `v` of its first row
    /// (`undefined` if there is none).
    pub(super) fn one1(&self, s: Stmt, a: &JsValue) -> Result<JsValue, JsValue> {
        js::one1(&self.db, self.text(s), a)
    }

    /// [`Sql::one1`] with two values.
    pub(super) fn one2(&self, s: Stmt, a: &JsValue, b: &JsValue) -> Result<JsValue, JsValue> {
        js::one2(&self.db, self.text(s), a, b)
    }

    /// [`Sql::one1`] with three values.
    pub(super) fn one3(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
    ) -> Result<JsValue, JsValue> {
        js::one3(&self.db, self.text(s), a, b, c)
    }

    /// [`Sql::one1`] with four values.
    pub(super) fn one4(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
    ) -> Result<JsValue, JsValue> {
        js::one4(&self.db, self.text(s), a, b, c, d)
    }

    /// [`Sql::one1`] with five values.
    pub(super) fn one5(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
        e: &JsValue,
    ) -> Result<JsValue, JsValue> {
        js::one5(&self.db, self.text(s), a, b, c, d, e)
    }

    /// Runs a statement binding two values; returns its first row as an array (`undefined`
    /// if there is none).
    pub(super) fn row2(&self, s: Stmt, a: &JsValue, b: &JsValue) -> Result<JsValue, JsValue> {
        js::row2(&self.db, self.text(s), a, b)
    }

    /// Runs a statement binding three values; returns its first row as an array.
    pub(super) fn row3(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
    ) -> Result<JsValue, JsValue> {
        js::row3(&self.db, self.text(s), a, b, c)
    }

    /// Runs a statement binding two values; returns every row as an array.
    pub(super) fn rows2(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<js_sys::Array, JsValue> {
        js::rows2(&self.db, self.text(s), a, b)
    }

    /// Runs a statement binding two values; returns the column `v` of every row.
    pub(super) fn column2(
        &self,
        s: Stmt,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<js_sys::Array, JsValue> {
        js::column2(&self.db, self.text(s), a, b)
    }

    /// Runs ad-hoc text (migrations, the alarm's cleanup, introspection) binding nothing;
    /// returns the rows written.
    pub(super) fn run_text(&self, text: &str) -> Result<u64, JsValue> {
        js::written0(&self.db, &JsValue::from_str(text)).map(written)
    }

    /// Runs ad-hoc text binding two values; returns the rows written.
    pub(super) fn run_text2(&self, text: &str, a: &JsValue, b: &JsValue) -> Result<u64, JsValue> {
        js::written2(&self.db, &JsValue::from_str(text), a, b).map(written)
    }

    /// Runs ad-hoc text binding one value; returns the column `v` of the first row.
    pub(super) fn one_text1(&self, text: &str, a: &JsValue) -> Result<JsValue, JsValue> {
        js::one1(&self.db, &JsValue::from_str(text), a)
    }

    /// Runs ad-hoc text binding one value; returns its first row as an array.
    #[cfg(feature = "test-introspection")]
    pub(super) fn row_text1(&self, text: &str, a: &JsValue) -> Result<JsValue, JsValue> {
        js::row1(&self.db, &JsValue::from_str(text), a)
    }
}

fn written(n: f64) -> u64 {
    n.max(0.0) as u64
}

/// Milliseconds as an SQL number, clamped to what JS numbers hold exactly.
pub(super) fn ms(v: u64) -> JsValue {
    JsValue::from_f64(v.min(MAX_SAFE_MS) as f64)
}

/// An optional expiry as an SQL value (`NULL` = never).
pub(super) fn optional_ms(v: Option<u64>) -> JsValue {
    v.map(ms).unwrap_or(JsValue::NULL)
}

/// A non-negative integer column (`NULL`, no row or anything else reads as `None`).
pub(super) fn int(v: &JsValue) -> Option<u64> {
    v.as_f64().filter(|n| *n >= 0.0).map(|n| n as u64)
}

pub(super) fn backend_err(op: Operation, what: &str, e: JsValue) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "Durable Object SQL failed while {what}: {}",
            js::js_message(&e)
        ),
    )
    .context(BACKEND, op)
}
