//! Expiry cleanup: one alarm per object, kept at the earliest future expiry. Each run
//! deletes a bounded batch of expired rows per table and re-arms.

use worker::{Response, Result as WorkerResult, ScheduledTime, SqlStorageValue};

use super::ChatStateDO;
use super::clock::now_ms;
use super::schema::{meta, set_meta};
use super::sql::{MAX_SAFE_MS, ms, optional_int};

/// Rows of one table the alarm deletes per run, so one run stays well under the runtime's
/// CPU limit however large the backlog; a full batch re-arms the alarm at once.
const ALARM_BATCH: i64 = 500;

impl ChatStateDO {
    /// The alarm handler: cleans up, then re-arms at the next expiry. A failed run re-arms
    /// itself later instead of throwing (the runtime stops retrying throwing alarms).
    pub(super) async fn run_alarm(&self) -> WorkerResult<Response> {
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

    /// Moves the alarm to `at` if it is not already set at or before it.
    pub(super) async fn arm_no_later_than(&self, at: u64) {
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
        Ok(rows
            .next()
            .transpose()?
            .as_ref()
            .and_then(|r| optional_int(r.first())))
    }
}
