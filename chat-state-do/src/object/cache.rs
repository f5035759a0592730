//! `get`, `set`, `setIfNotExists`, `delete`: one row per key, with an optional expiry.
//!
//! Values stay JavaScript bytes throughout: the `Uint8Array` a call brings is bound to SQL as
//! it is, and `get` answers the `ArrayBuffer` SQL returns, so a value never passes through
//! wasm memory inside the object.

use chat_state_core::{Error, Operation, validate};
use wasm_bindgen::prelude::*;

use super::sql::{Stmt, backend_err, ms, optional_ms};
use super::{ChatStateDO, throw};
use crate::BACKEND;

#[wasm_bindgen]
impl ChatStateDO {
    /// `get(version, key, now?)` → the live value (`ArrayBuffer`), or `null`.
    #[wasm_bindgen(js_name = get)]
    pub fn rpc_get(
        &self,
        version: f64,
        key: &JsValue,
        now: Option<f64>,
    ) -> Result<JsValue, JsError> {
        let call = self.begin(Operation::Get, version, now)?;
        let k = call.string("key", key).map_err(throw)?;
        validate::get(BACKEND, &k).map_err(throw)?;
        self.read(call.op, key, call.now()).map_err(throw)
    }

    /// `set(version, key, value, ttlMs | null, now?)`: replaces value and expiry.
    #[wasm_bindgen(js_name = set)]
    pub fn rpc_set(
        &self,
        version: f64,
        key: &JsValue,
        value: &JsValue,
        ttl_ms: Option<f64>,
        now: Option<f64>,
    ) -> Result<(), JsError> {
        let call = self.begin(Operation::Set, version, now)?;
        let k = call.string("key", key).map_err(throw)?;
        let ttl = call.optional_ttl(ttl_ms).map_err(throw)?;
        // The value's size is checked without its bytes; the rest of the rule here.
        validate::set(BACKEND, &k, &[], ttl).map_err(throw)?;
        call.value(value).map_err(throw)?;
        let expires =
            validate::optional_expiry_ms(BACKEND, call.op, call.now(), ttl).map_err(throw)?;
        self.store(call.op, key, value, expires).map_err(throw)
    }

    /// `setIfNotExists(version, key, value, ttlMs | null, now?)` → whether it stored the
    /// value (only over a missing or expired key).
    #[wasm_bindgen(js_name = setIfNotExists)]
    pub fn rpc_set_if_not_exists(
        &self,
        version: f64,
        key: &JsValue,
        value: &JsValue,
        ttl_ms: Option<f64>,
        now: Option<f64>,
    ) -> Result<bool, JsError> {
        let call = self.begin(Operation::SetIfNotExists, version, now)?;
        let k = call.string("key", key).map_err(throw)?;
        let ttl = call.optional_ttl(ttl_ms).map_err(throw)?;
        validate::set_if_not_exists(BACKEND, &k, &[], ttl).map_err(throw)?;
        call.value(value).map_err(throw)?;
        let now = call.now();
        let expires = validate::optional_expiry_ms(BACKEND, call.op, now, ttl).map_err(throw)?;
        self.claim(call.op, key, value, now, expires).map_err(throw)
    }

    /// `delete(version, key, now?)`.
    #[wasm_bindgen(js_name = delete)]
    pub fn rpc_delete(&self, version: f64, key: &JsValue, now: Option<f64>) -> Result<(), JsError> {
        let call = self.begin(Operation::Delete, version, now)?;
        let k = call.string("key", key).map_err(throw)?;
        validate::delete(BACKEND, &k).map_err(throw)?;
        self.sql
            .run1(Stmt::DELETE, key)
            .map_err(|e| throw(backend_err(call.op, "deleting from the cache", e)))?;
        Ok(())
    }
}

impl ChatStateDO {
    /// `key`'s value live at `now` (an `ArrayBuffer`), or `null` (`get`, and the read of an
    /// admitted message).
    pub(super) fn read(&self, o: Operation, key: &JsValue, now: u64) -> Result<JsValue, Error> {
        let value = self
            .sql
            .one2(Stmt::GET, key, &ms(now))
            .map_err(|e| backend_err(o, "reading the cache", e))?;
        Ok(if value.is_undefined() {
            JsValue::NULL
        } else {
            value
        })
    }

    /// Replaces `key`'s value and expiry (`set`, and the value write of `setFenced`).
    pub(super) fn store(
        &self,
        o: Operation,
        key: &JsValue,
        value: &JsValue,
        expires: Option<u64>,
    ) -> Result<(), Error> {
        self.sql
            .run3(Stmt::SET, key, value, &optional_ms(expires))
            .map_err(|e| backend_err(o, "writing the cache", e))?;
        self.arm(expires);
        Ok(())
    }

    /// Stores `value` under `key` only if the key is missing or expired at `now`; whether it
    /// did (`setIfNotExists`, and the dedupe claim of `admit`).
    pub(super) fn claim(
        &self,
        o: Operation,
        key: &JsValue,
        value: &JsValue,
        now: u64,
        expires: Option<u64>,
    ) -> Result<bool, Error> {
        let row = self
            .sql
            .one4(
                Stmt::SET_IF_NOT_EXISTS,
                key,
                value,
                &optional_ms(expires),
                &ms(now),
            )
            .map_err(|e| backend_err(o, "writing the cache", e))?;
        let stored = !row.is_undefined();
        if stored {
            self.arm(expires);
        }
        Ok(stored)
    }
}
