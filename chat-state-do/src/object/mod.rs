//! The Durable Object class, [`ChatStateDO`] (wasm32 only).
//!
//! Storage is the object's SQLite database. Every operation runs its SQL statements
//! synchronously with no `await` in between, so the runtime commits them as one atomic unit
//! and no other call of the same object can interleave (the object is single-threaded and
//! only yields at an `await`). Operations never await: the one piece of I/O that is not SQL,
//! moving the cleanup alarm earlier, is started synchronously (so the runtime's output gate
//! holds the answer until it is stored) and finished in the background.
//!
//! Layout: this file holds the class, its constructor and what every call shares (version
//! check, argument decoding, error conversion); each group of operations has its own file
//! ([`subscriptions`], [`locks`], [`cache`], [`lists`], [`queues`], [`dispatch`] (the
//! three dispatch operations, built from the others' helpers), plus the test-only
//! [`introspection`]; [`batch`] runs several in one call), each operation one RPC method that
//! decodes and validates its arguments (calls arrive over the wire, not necessarily from the
//! adapter) and runs its SQL. [`schema`] migrates the tables, [`alarm`] keeps and runs the
//! cleanup alarm, [`clock`] decides a call's time and [`sql`] holds the statements (the
//! JavaScript they run through is in `crate::js`).

mod alarm;
mod batch;
mod cache;
mod clock;
mod dispatch;
mod introspection;
mod lists;
mod locks;
mod queues;
mod schema;
mod sql;
mod subscriptions;

use std::cell::Cell;
use std::rc::Rc;

use chat_state_core::{Error, ErrorKind, Operation, validate};
use wasm_bindgen::prelude::*;
use worker::worker_sys::{DurableObjectState, web_sys};

use crate::BACKEND;
use crate::protocol::{self, PROTOCOL_VERSION};
pub use schema::SCHEMA_VERSION;
use sql::Sql;

/// The chat-state Durable Object, compiled to wasm. The runtime only offers Workers RPC to a
/// class that extends `DurableObject`, which a wasm-bindgen class cannot, so the Worker's
/// entry exports it through the JavaScript class in `js/chat-state-do.mjs`
/// (`export const ChatStateDO = rpcClass(rust.ChatStateDO)`), which forwards
/// [`protocol::METHODS`], `fetch` and `alarm` to it. Declare the class in `wrangler.toml`
/// with a `new_sqlite_classes` migration; see the crate README.
#[wasm_bindgen]
pub struct ChatStateDO {
    /// For introspection (the object's name).
    #[cfg(feature = "test-introspection")]
    state: DurableObjectState,
    sql: Sql,
    /// Why the schema could not be brought to [`SCHEMA_VERSION`]; every call then fails
    /// with this message instead of touching tables of an unknown shape.
    schema_error: Option<String>,
    /// The cleanup alarm as this object knows it (shared with the tasks that finish setting
    /// it).
    alarm: Rc<alarm::AlarmCell>,
    /// Fences this instance may hand out: `next..=limit`, reserved in storage (see locks.rs).
    fences: Cell<(u64, u64)>,
    /// Test-only fault injection (`failAlarms`): runs left to fail, and the retry delay.
    fail_alarms: Cell<u32>,
    alarm_retry_ms: Cell<u64>,
}

#[wasm_bindgen(wasm_bindgen_futures = worker::wasm_bindgen_futures)]
impl ChatStateDO {
    /// Called by the JavaScript class with the object's state; migrates the schema.
    #[wasm_bindgen(constructor)]
    pub fn new(state: DurableObjectState, _env: JsValue) -> ChatStateDO {
        let storage = js_sys::Reflect::get(&state, &JsValue::from_str("storage"))
            .unwrap_or(JsValue::UNDEFINED);
        let db =
            js_sys::Reflect::get(&storage, &JsValue::from_str("sql")).unwrap_or(JsValue::UNDEFINED);
        let sql = Sql::new(db);
        let schema_error = schema::migrate(&storage, &sql).err();
        ChatStateDO {
            #[cfg(feature = "test-introspection")]
            state,
            sql,
            schema_error,
            alarm: Rc::new(alarm::AlarmCell::new(storage)),
            fences: Cell::new((1, 0)),
            fail_alarms: Cell::new(0),
            alarm_retry_ms: Cell::new(alarm::ALARM_RETRY_MS),
        }
    }

    /// The methods the JavaScript class forwards over RPC ([`protocol::METHODS`]).
    #[wasm_bindgen(js_name = rpcMethods)]
    pub fn rpc_methods() -> js_sys::Array {
        protocol::METHODS
            .iter()
            .map(|m| JsValue::from_str(m))
            .collect()
    }

    /// Every `fetch` is a caller from before Workers RPC (protocol version 1): answer with
    /// that version's error body, which its adapter reports as "redeploy both".
    pub fn fetch(&self, request: web_sys::Request) -> Result<web_sys::Response, JsValue> {
        let path = worker::Request::from(request).path();
        let (status, body) = protocol::legacy_fetch_answer(&path);
        let response = worker::Response::from_bytes(body.into_bytes())
            .map_err(JsValue::from)?
            .with_status(status);
        Ok(response.into())
    }

    /// The alarm handler: deletes a batch of expired rows per table and re-arms the alarm at
    /// the next expiry (a failed run re-arms itself later instead of throwing).
    pub async fn alarm(&self) -> Result<JsValue, JsValue> {
        self.run_alarm().await;
        Ok(JsValue::UNDEFINED)
    }
}

/// What every call checked before its operation runs: the protocol version, that the schema
/// is usable, and the call's time.
pub(super) struct Call {
    op: Operation,
    test_now: Option<u64>,
}

impl Call {
    /// The call's time: the test clock's, if it passed one, else `Date.now()`.
    pub(super) fn now(&self) -> u64 {
        self.test_now.unwrap_or_else(clock::now_ms)
    }

    /// A string argument (`what` names it in errors); the caller applies the rules.
    pub(super) fn string(&self, what: &str, v: &JsValue) -> Result<String, Error> {
        v.as_string().ok_or_else(|| {
            Error::invalid_input(format!("{what} must be a string, got {}", type_of(v)))
                .context(BACKEND, self.op)
        })
    }

    /// A string argument with the contract's key rules.
    pub(super) fn key(&self, what: &str, v: &JsValue) -> Result<String, Error> {
        let s = self.string(what, v)?;
        validate::key(BACKEND, self.op, what, &s)?;
        Ok(s)
    }

    /// A value argument (`Uint8Array` or `ArrayBuffer`): checks its size without copying it
    /// into wasm memory, since the object only hands it on to SQL.
    pub(super) fn value(&self, v: &JsValue) -> Result<(), Error> {
        let len = if let Some(a) = v.dyn_ref::<js_sys::Uint8Array>() {
            a.byte_length()
        } else if let Some(b) = v.dyn_ref::<js_sys::ArrayBuffer>() {
            b.byte_length()
        } else {
            return Err(Error::invalid_input(format!(
                "the value must be a Uint8Array or an ArrayBuffer, got {}",
                type_of(v)
            ))
            .context(BACKEND, self.op));
        } as usize;
        // The rule of `validate::value`, which needs the bytes themselves.
        if len > validate::MAX_VALUE_BYTES {
            return Err(Error::invalid_input(format!(
                "value is {len} bytes; the limit is {}",
                validate::MAX_VALUE_BYTES
            ))
            .context(BACKEND, self.op));
        }
        Ok(())
    }

    /// A TTL in milliseconds, checked against the contract's TTL rules.
    pub(super) fn ttl(&self, v: f64) -> Result<std::time::Duration, Error> {
        let ms = clock::whole(self.op, "the TTL in milliseconds", v)?;
        let ttl = std::time::Duration::from_millis(ms);
        validate::ttl(BACKEND, self.op, ttl)?;
        Ok(ttl)
    }

    /// An optional TTL (`null` or `undefined` = none).
    pub(super) fn optional_ttl(
        &self,
        v: Option<f64>,
    ) -> Result<Option<std::time::Duration>, Error> {
        v.map(|v| self.ttl(v)).transpose()
    }

    /// A count (`max_length`, `max_size`) from 1 up.
    pub(super) fn count(&self, what: &str, v: f64) -> Result<usize, Error> {
        let n = clock::whole(self.op, what, v)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// `typeof v`, for error messages.
fn type_of(v: &JsValue) -> String {
    if v.is_null() {
        "null".into()
    } else {
        v.js_typeof().as_string().unwrap_or_default()
    }
}

/// The `Error` an operation throws: its message carries the kind (see the protocol docs).
pub(super) fn throw(e: Error) -> JsError {
    JsError::new(&protocol::encode_error(&e))
}

impl ChatStateDO {
    /// Checks what every call shares; `version` and `now` are the call's first and last
    /// arguments.
    pub(super) fn begin(
        &self,
        op: Operation,
        version: f64,
        now: Option<f64>,
    ) -> Result<Call, JsError> {
        if version != f64::from(PROTOCOL_VERSION) {
            return Err(JsError::new(&protocol::version_mismatch(Some(version))));
        }
        if let Some(e) = &self.schema_error {
            return Err(throw(
                Error::new(ErrorKind::Backend, e.clone()).context(BACKEND, op),
            ));
        }
        let test_now = clock::test_time(op, now).map_err(throw)?;
        Ok(Call { op, test_now })
    }
}
