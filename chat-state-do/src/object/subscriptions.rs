//! `subscribe`, `unsubscribe`, `isSubscribed`: one row per subscribed thread, no expiry.

use chat_state_core::Operation;
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
        let row = self
            .sql
            .one1(Stmt::IS_SUBSCRIBED, thread_id)
            .map_err(|e| throw(backend_err(call.op, "reading subscriptions", e)))?;
        Ok(!row.is_undefined())
    }
}
