//! The test-only operations (feature `test-introspection`): `inspect` (row counts, alarm,
//! name) and `failAlarms` (alarm fault injection). Without the feature both answer
//! `invalid_input`.

use chat_state_core::{Error, Operation};
use wasm_bindgen::prelude::*;

use super::{ChatStateDO, throw};
use crate::BACKEND;

#[wasm_bindgen(wasm_bindgen_futures = worker::wasm_bindgen_futures)]
impl ChatStateDO {
    /// `failAlarms(version, times, retryMs)`: the next `times` alarm runs fail before touching
    /// any table, and failed runs re-arm `retryMs` later instead of the production delay.
    #[wasm_bindgen(js_name = failAlarms)]
    pub fn rpc_fail_alarms(&self, version: f64, times: f64, retry_ms: f64) -> Result<(), JsError> {
        let call = self.begin(Operation::Maintenance, version, None)?;
        if !cfg!(feature = "test-introspection") {
            return Err(throw(
                Error::invalid_input(
                    "the failAlarms operation exists only in objects built with the \
                     chat-state-do feature `test-introspection`",
                )
                .context(BACKEND, call.op),
            ));
        }
        let times = super::clock::whole(call.op, "times", times).map_err(throw)?;
        let retry = super::clock::whole(call.op, "retryMs", retry_ms).map_err(throw)?;
        self.fail_alarms
            .set(u32::try_from(times).unwrap_or(u32::MAX));
        self.alarm_retry_ms.set(retry);
        Ok(())
    }

    /// `inspect(version, now?)` → the [`Inspection`](crate::protocol::Inspection) report as
    /// JSON text.
    #[wasm_bindgen(js_name = inspect)]
    pub async fn rpc_inspect(&self, version: f64, now: Option<f64>) -> Result<String, JsError> {
        let call = self.begin(Operation::Maintenance, version, now)?;
        self.inspect(call.now())
            .await
            .map_err(|e| throw(e.context(BACKEND, call.op)))
    }
}

impl ChatStateDO {
    #[cfg(feature = "test-introspection")]
    async fn inspect(&self, now: u64) -> Result<String, Error> {
        use super::schema::meta;
        use super::sql::{int, ms};
        use crate::js::{get_alarm, js_message};
        use crate::protocol::{Inspection, TableCount};
        use chat_state_core::ErrorKind;
        use worker::wasm_bindgen_futures::JsFuture;

        let err = |e: JsValue| {
            Error::new(
                ErrorKind::Backend,
                format!("inspecting: {}", js_message(&e)),
            )
        };
        // The one operation that reads the alarm from storage rather than from memory, so a
        // test sees what the runtime will run.
        let alarm = JsFuture::from(get_alarm(self.alarm.storage()).map_err(err)?)
            .await
            .map_err(err)?;
        let t = ms(now);
        let count = |stmt: &str| -> Result<TableCount, Error> {
            let row = js_sys::Array::from(&self.sql.row_text1(stmt, &t).map_err(err)?);
            Ok(TableCount {
                live: int(&row.get(0)).unwrap_or(0),
                expired: int(&row.get(1)).unwrap_or(0),
            })
        };
        let live_expired = |table: &str| {
            format!(
                "SELECT COALESCE(SUM(expires_at IS NULL OR expires_at > ?1), 0), \
                 COALESCE(SUM(expires_at IS NOT NULL AND expires_at <= ?1), 0) FROM {table}"
            )
        };
        let name = js_sys::Reflect::get(&self.state, &JsValue::from_str("id"))
            .and_then(|id| js_sys::Reflect::get(&id, &JsValue::from_str("name")))
            .map_err(err)?
            .as_string();
        let report = Inspection {
            name,
            now_ms: now,
            alarm_ms: int(&alarm),
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
            fences: count(&live_expired("fences"))?,
            alarm_runs: meta(&self.sql, "alarm_runs").map_err(err)?,
            alarm_failures: meta(&self.sql, "alarm_failures").map_err(err)?,
        };
        serde_json::to_string(&report).map_err(|e| Error::new(ErrorKind::Backend, e.to_string()))
    }

    #[cfg(not(feature = "test-introspection"))]
    async fn inspect(&self, _now: u64) -> Result<String, Error> {
        Err(Error::invalid_input(
            "the inspect operation exists only in objects built with the chat-state-do feature \
             `test-introspection`",
        ))
    }
}
