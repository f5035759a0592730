//! `enqueue`, `dequeue`, `queueDepth`: one row per entry, FIFO by a per-thread sequence,
//! each entry expiring on its own. Entries travel and are stored as JSON text.

use chat_state_core::{Error, Operation, QueueEntry, validate};
use wasm_bindgen::prelude::*;

use super::sql::{Stmt, backend_err, int, ms};
use super::{ChatStateDO, throw};
use crate::BACKEND;

#[wasm_bindgen]
impl ChatStateDO {
    /// `enqueue(version, threadId, entryJson, maxSize, now?)` → the live depth after the
    /// append, dropping dead entries and the oldest live ones beyond `maxSize`.
    #[wasm_bindgen(js_name = enqueue)]
    pub fn rpc_enqueue(
        &self,
        version: f64,
        thread_id: &JsValue,
        entry: &JsValue,
        max_size: f64,
        now: Option<f64>,
    ) -> Result<f64, JsError> {
        let call = self.begin(Operation::Enqueue, version, now)?;
        let o = call.op;
        let thread = call.string("thread id", thread_id).map_err(throw)?;
        let max_size = call.count("max_size", max_size).map_err(throw)?;
        let text = call.string("queue entry", entry).map_err(throw)?;
        // Lone surrogates (from a JavaScript writer) decode as U+FFFD.
        let entry: QueueEntry =
            chat_state_core::json::from_json_slice(text.as_bytes()).map_err(|e| {
                throw(
                    Error::invalid_input(format!(
                        "the queue entry is not a JSON {{enqueuedAt, expiresAt, message}} \
                         object: {e}"
                    ))
                    .context(BACKEND, o),
                )
            })?;
        validate::enqueue(BACKEND, &thread, &entry, max_size).map_err(throw)?;
        // Stored in the one shape this code writes, whatever spelling the caller used.
        let stored = serde_json::to_string(&entry).map_err(|e| {
            throw(Error::invalid_input(format!("queue entry: {e}")).context(BACKEND, o))
        })?;
        let now = call.now();
        let err = |e| throw(backend_err(o, "enqueueing", e));
        let t = ms(now);
        self.sql
            .run3(
                Stmt::ENQUEUE,
                thread_id,
                &ms(entry.expires_at),
                &JsValue::from_str(&stored),
            )
            .map_err(err)?;
        self.sql
            .run3(
                Stmt::QUEUE_PRUNE,
                thread_id,
                &t,
                &JsValue::from_f64(max_size as f64),
            )
            .map_err(err)?;
        let depth = self
            .sql
            .one2(Stmt::QUEUE_DEPTH, thread_id, &t)
            .map_err(err)?;
        if entry.expires_at > now {
            self.arm(Some(entry.expires_at));
        }
        Ok(int(&depth).unwrap_or(0) as f64)
    }

    /// `dequeue(version, threadId, now?)` → the oldest live entry's JSON text, or `null`;
    /// dead entries queued before it go with it.
    #[wasm_bindgen(js_name = dequeue)]
    pub fn rpc_dequeue(
        &self,
        version: f64,
        thread_id: &JsValue,
        now: Option<f64>,
    ) -> Result<JsValue, JsError> {
        let call = self.begin(Operation::Dequeue, version, now)?;
        let thread = call.string("thread id", thread_id).map_err(throw)?;
        validate::dequeue(BACKEND, &thread).map_err(throw)?;
        let now = call.now();
        let rows = self
            .sql
            .rows2(Stmt::DEQUEUE, thread_id, &ms(now))
            .map_err(|e| throw(backend_err(call.op, "dequeueing", e)))?;
        // Only the one live row among those deleted is the answer.
        for row in rows.iter() {
            let row = js_sys::Array::from(&row);
            if int(&row.get(1)).is_some_and(|at| at > now) {
                return Ok(row.get(0));
            }
        }
        Ok(JsValue::NULL)
    }

    /// `queueDepth(version, threadId, now?)` → the number of live entries.
    #[wasm_bindgen(js_name = queueDepth)]
    pub fn rpc_queue_depth(
        &self,
        version: f64,
        thread_id: &JsValue,
        now: Option<f64>,
    ) -> Result<f64, JsError> {
        let call = self.begin(Operation::QueueDepth, version, now)?;
        let thread = call.string("thread id", thread_id).map_err(throw)?;
        validate::queue_depth(BACKEND, &thread).map_err(throw)?;
        let depth = self
            .sql
            .one2(Stmt::QUEUE_DEPTH, thread_id, &ms(call.now()))
            .map_err(|e| throw(backend_err(call.op, "counting a queue", e)))?;
        Ok(int(&depth).unwrap_or(0) as f64)
    }
}
