//! Expiry cleanup: one alarm per object, kept at the earliest future expiry. Each run
//! deletes a bounded batch of expired rows per table and re-arms.
//!
//! Operations never wait for the alarm. A write whose expiry is earlier than the alarm calls
//! `setAlarm` synchronously, so the runtime's output gate holds the answer until the alarm is
//! stored, and only the promise's outcome is awaited in the background. The object remembers
//! the alarm it set, so writes that expire later than it (nearly all of them: a bot's locks
//! and state keep the same TTLs) cost nothing.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::{JsFuture, spawn_local};

use super::ChatStateDO;
use super::clock::now_ms;
use super::schema::{meta, set_meta};
use super::sql::{MAX_SAFE_MS, ms};
use crate::js::{self, js_message};

/// When a failed alarm run tries again. Alarms that throw are retried by the runtime only a
/// few times before it gives up, so the handler catches errors and re-arms itself instead.
pub(super) const ALARM_RETRY_MS: u64 = 30_000;

/// Rows of one table the alarm deletes per run, so one run stays well under the runtime's
/// CPU limit however large the backlog; a full batch re-arms the alarm at once.
const ALARM_BATCH: u64 = 500;

const CLEANUP: &[&str] = &[
    "DELETE FROM locks WHERE rowid IN \
     (SELECT rowid FROM locks WHERE expires_at <= ?1 LIMIT ?2)",
    "DELETE FROM cache WHERE rowid IN (SELECT rowid FROM cache \
     WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
    "DELETE FROM queue WHERE rowid IN \
     (SELECT rowid FROM queue WHERE expires_at <= ?1 LIMIT ?2)",
    "DELETE FROM list_items WHERE rowid IN (SELECT i.rowid FROM list_items i \
     JOIN lists l ON l.key = i.key \
     WHERE l.expires_at IS NOT NULL AND l.expires_at <= ?1 LIMIT ?2)",
    "DELETE FROM fences WHERE rowid IN (SELECT rowid FROM fences \
     WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
    // Headers go only once their items are gone, so a partial batch never leaves orphaned
    // items without the expiry that would delete them.
    "DELETE FROM lists WHERE rowid IN (SELECT rowid FROM lists l \
     WHERE expires_at IS NOT NULL AND expires_at <= ?1 \
     AND NOT EXISTS (SELECT 1 FROM list_items i WHERE i.key = l.key) LIMIT ?2)",
];

const NEXT_EXPIRY: &str = "SELECT MIN(e) AS v FROM ( \
     SELECT MIN(expires_at) AS e FROM locks WHERE expires_at > ?1 \
     UNION ALL SELECT MIN(expires_at) FROM cache WHERE expires_at > ?1 \
     UNION ALL SELECT MIN(expires_at) FROM lists WHERE expires_at > ?1 \
     UNION ALL SELECT MIN(expires_at) FROM queue WHERE expires_at > ?1 \
     UNION ALL SELECT MIN(expires_at) FROM fences WHERE expires_at > ?1)";

/// What the object knows about its alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Not read yet (a fresh instance).
    Unknown,
    /// Being read; the earliest expiry written meanwhile.
    Reading(u64),
    /// Set at this time, or not set.
    Set(Option<u64>),
}

/// The alarm's state, shared between the object and the background tasks that finish
/// reading or setting it.
pub(super) struct AlarmCell {
    storage: JsValue,
    known: RefCell<Known>,
}

impl AlarmCell {
    pub(super) fn new(storage: JsValue) -> Self {
        Self {
            storage,
            known: RefCell::new(Known::Unknown),
        }
    }

    /// The object's `DurableObjectStorage`.
    #[cfg(feature = "test-introspection")]
    pub(super) fn storage(&self) -> &JsValue {
        &self.storage
    }

    /// Makes sure the alarm runs no later than `at`.
    pub(super) fn no_later_than(self: &Rc<Self>, at: u64) {
        let current = *self.known.borrow();
        match current {
            Known::Set(Some(set)) if set <= at => {}
            Known::Set(_) => self.set(at),
            Known::Reading(want) => *self.known.borrow_mut() = Known::Reading(want.min(at)),
            Known::Unknown => {
                *self.known.borrow_mut() = Known::Reading(at);
                let cell = Rc::clone(self);
                spawn_local(cell.finish_reading());
            }
        }
    }

    /// Reads the stored alarm once, then sets it if a write wants it earlier.
    async fn finish_reading(self: Rc<Self>) {
        let stored = match js::get_alarm(&self.storage) {
            Ok(promise) => JsFuture::from(promise).await,
            Err(e) => Err(e),
        };
        let Known::Reading(want) = *self.known.borrow() else {
            // The alarm ran meanwhile and decided for itself.
            return;
        };
        match stored {
            Ok(v) => {
                let stored = v.as_f64().map(|t| t.max(0.0) as u64);
                if stored.is_some_and(|s| s <= want) {
                    *self.known.borrow_mut() = Known::Set(stored);
                } else {
                    self.set(want);
                }
            }
            // Could not read it: set it anyway; an early alarm only costs a run.
            Err(_) => self.set(want),
        }
    }

    /// Sets the alarm to `at` now and checks the outcome in the background.
    fn set(self: &Rc<Self>, at: u64) {
        *self.known.borrow_mut() = Known::Set(Some(at));
        let cell = Rc::clone(self);
        match js::set_alarm(&self.storage, at.min(MAX_SAFE_MS) as f64) {
            Ok(promise) => spawn_local(async move {
                if let Err(e) = JsFuture::from(promise).await {
                    cell.set_failed(&e);
                }
            }),
            Err(e) => self.set_failed(&e),
        }
    }

    /// A failed `setAlarm` loses no data (rows expire on read); forgetting the alarm makes
    /// the next write with an expiry set it again.
    fn set_failed(&self, e: &JsValue) {
        worker::console_error!(
            "chat-state-do: could not set the cleanup alarm: {}",
            js_message(e)
        );
        *self.known.borrow_mut() = Known::Unknown;
    }

    /// Sets the alarm to `at` and waits until it is stored (the alarm handler's re-arm).
    async fn set_and_wait(&self, at: u64) -> Result<(), JsValue> {
        *self.known.borrow_mut() = Known::Set(Some(at));
        JsFuture::from(js::set_alarm(&self.storage, at.min(MAX_SAFE_MS) as f64)?).await?;
        Ok(())
    }
}

impl ChatStateDO {
    /// The alarm handler: cleans up, then re-arms at the next expiry. A failed run re-arms
    /// itself later instead of throwing (the runtime stops retrying throwing alarms).
    pub(super) async fn run_alarm(&self) {
        // The alarm that woke us is consumed.
        *self.alarm.known.borrow_mut() = Known::Set(None);
        let rearm = match self.clean_expired() {
            Ok(next) => next,
            Err(e) => {
                worker::console_error!("chat-state-do: alarm cleanup failed, retrying later: {e}");
                // Best effort: if even this write fails, the re-arm below still happens.
                let _ = meta(&self.sql, "alarm_failures")
                    .and_then(|n| set_meta(&self.sql, "alarm_failures", n + 1));
                Some(now_ms() + self.alarm_retry_ms.get())
            }
        };
        // A write during this run may have armed an earlier alarm already.
        let known = *self.alarm.known.borrow();
        if let Some(at) = rearm
            && !matches!(known, Known::Set(Some(set)) if set <= at)
            && let Err(e) = self.alarm.set_and_wait(at).await
        {
            worker::console_error!(
                "chat-state-do: could not re-arm the cleanup alarm: {}",
                js_message(&e)
            );
            *self.alarm.known.borrow_mut() = Known::Unknown;
        }
    }

    /// Deletes up to [`ALARM_BATCH`] expired rows per table and returns when to run next:
    /// now if a batch was full, else the earliest future expiry, else never.
    fn clean_expired(&self) -> Result<Option<u64>, String> {
        if self.fail_alarms.get() > 0 {
            self.fail_alarms.set(self.fail_alarms.get() - 1);
            return Err("injected alarm failure".into());
        }
        let sql = &self.sql;
        let err = |e: JsValue| js_message(&e);
        let now = now_ms();
        let (t, batch) = (ms(now), JsValue::from_f64(ALARM_BATCH as f64));
        let mut full = false;
        for stmt in CLEANUP {
            full |= sql.run_text2(stmt, &t, &batch).map_err(err)? >= ALARM_BATCH;
        }
        let runs = meta(sql, "alarm_runs").map_err(err)?;
        set_meta(sql, "alarm_runs", runs + 1).map_err(err)?;
        if full {
            return Ok(Some(now));
        }
        let next = sql.one_text1(NEXT_EXPIRY, &t).map_err(err)?;
        Ok(next.as_f64().map(|t| t.max(0.0) as u64))
    }

    /// Moves the alarm no later than `at` (the expiry a write just stored).
    pub(super) fn arm(&self, at: Option<u64>) {
        if let Some(at) = at {
            self.alarm.no_later_than(at);
        }
    }
}
