//! `subscribe`, `unsubscribe`, `isSubscribed`: one row per subscribed thread, no expiry.

use chat_state_core::{Error, Operation};
use wasm_bindgen::prelude::*;

use super::sql::{Stmt, backend_err};
use super::{ChatStateDO, throw};

#[wasm_bindgen]
impl ChatStateDO {
    /// `subscribe(version, threadId, now?)`.
    #[wasm_bindgen(js_name = subscribe)]
    pub fn rpc_subscribe(
        &self,
        version: f64,
        thread_id: &JsValue,
        now: Option<f64>,
    ) -> Result<(), JsError> {
        let call = self.begin(Operation::Subscribe, version, now)?;
        call.key("thread id", thread_id).map_err(throw)?;
        self.sql
            .run1(Stmt::SUBSCRIBE, thread_id)
            .map_err(|e| throw(backend_err(call.op, "subscribing", e)))?;
        Ok(())
    }

    /// `unsubscribe(version, threadId, now?)`.
    #[wasm_bindgen(js_name = unsubscribe)]
    pub fn rpc_unsubscribe(
        &self,
        version: f64,
        thread_id: &JsValue,
        now: Option<f64>,
    ) -> Result<(), JsError> {
        let call = self.begin(Operation::Unsubscribe, version, now)?;
        call.key("thread id", thread_id).map_err(throw)?;
        self.sql
            .run1(Stmt::UNSUBSCRIBE, thread_id)
            .map_err(|e| throw(backend_err(call.op, "unsubscribing", e)))?;
        Ok(())
    }

    /// `isSubscribed(version, threadId, now?)` → boolean.
    #[wasm_bindgen(js_name = isSubscribed)]
    pub fn rpc_is_subscribed(
        &self,
        version: f64,
        thread_id: &JsValue,
        now: Option<f64>,
    ) -> Result<bool, JsError> {
        let call = self.begin(Operation::IsSubscribed, version, now)?;
        call.key("thread id", thread_id).map_err(throw)?;
        self.subscribed(call.op, thread_id).map_err(throw)
    }
}

impl ChatStateDO {
    /// Whether `thread_id` is subscribed (`isSubscribed`, and an admitted message's answer).
    pub(super) fn subscribed(&self, o: Operation, thread_id: &JsValue) -> Result<bool, Error> {
        let row = self
            .sql
            .one1(Stmt::IS_SUBSCRIBED, thread_id)
            .map_err(|e| backend_err(o, "reading subscriptions", e))?;
        Ok(!row.is_undefined())
    }
}
