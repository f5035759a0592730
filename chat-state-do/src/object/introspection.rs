//! The test-only operations (feature `test-introspection`): `inspect` (row counts, alarm,
//! name) and `fail_alarms` (alarm fault injection). Without the feature both answer
//! `invalid_input`.

use chat_state_core::Error;

use super::ChatStateDO;
use super::sql::Reply;

impl ChatStateDO {
    /// Makes the next `times` alarm runs fail, re-arming `retry_ms` later.
    pub(super) fn fail_alarms(&self, times: u32, retry_ms: u64) -> Result<Reply, Error> {
        if !cfg!(feature = "test-introspection") {
            return Err(Error::invalid_input(
                "the fail_alarms operation exists only in objects built with the chat-state-do \
                 feature `test-introspection`",
            ));
        }
        self.fail_alarms.set(times);
        self.alarm_retry_ms.set(retry_ms);
        Reply::null()
    }

    /// The [`Inspection`](crate::protocol::Inspection) report as JSON.
    #[cfg(feature = "test-introspection")]
    pub(super) fn inspect(&self, now: u64, alarm_ms: Option<u64>) -> Result<Vec<u8>, Error> {
        use super::schema::meta;
        use super::sql::{backend_err, int, ms, to_json};
        use crate::protocol::{Inspection, TableCount};
        use chat_state_core::Operation;

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
    pub(super) fn inspect(&self, _now: u64, _alarm_ms: Option<u64>) -> Result<Vec<u8>, Error> {
        Err(Error::invalid_input(
            "the inspect operation exists only in objects built with the chat-state-do feature \
             `test-introspection`",
        ))
    }
}
