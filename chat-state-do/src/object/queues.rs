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
        let entry =
            parse_entry(o, &call.string("queue entry", entry).map_err(throw)?).map_err(throw)?;
        validate::enqueue(BACKEND, &thread, &entry, max_size).map_err(throw)?;
        let depth = self
            .append(o, thread_id, &entry, max_size, call.now())
            .map_err(throw)?;
        Ok(depth as f64)
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
        self.take_next(call.op, thread_id, call.now())
            .map_err(throw)
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

/// A queue entry as a call brings it (JSON text), checked to be one.
pub(super) fn parse_entry(o: Operation, text: &str) -> Result<QueueEntry, Error> {
    // Lone surrogates (from a JavaScript writer) decode as U+FFFD.
    chat_state_core::json::from_json_slice(text.as_bytes()).map_err(|e| {
        Error::invalid_input(format!(
            "the queue entry is not a JSON {{enqueuedAt, expiresAt, message}} object: {e}"
        ))
        .context(BACKEND, o)
    })
}

impl ChatStateDO {
    /// Appends `entry` (already validated) to `thread_id`'s queue, drops dead entries and the
    /// oldest live ones beyond `max_size`, and answers the live depth at `now` (`enqueue`,
    /// and a queued message of `admit`).
    pub(super) fn append(
        &self,
        o: Operation,
        thread_id: &JsValue,
        entry: &QueueEntry,
        max_size: usize,
        now: u64,
    ) -> Result<u64, Error> {
        // Stored in the one shape this code writes, whatever spelling the caller used.
        let stored = entry.to_json().map_err(|e| e.context(BACKEND, o))?;
        let err = |e| backend_err(o, "enqueueing", e);
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
        Ok(int(&depth).unwrap_or(0))
    }

    /// Removes and answers the oldest entry of `thread_id`'s queue live at `now` (its JSON
    /// text, or `null`), and the dead entries queued before it (`dequeue`, and the handoff of
    /// `releaseOrNext`).
    pub(super) fn take_next(
        &self,
        o: Operation,
        thread_id: &JsValue,
        now: u64,
    ) -> Result<JsValue, Error> {
        let rows = self
            .sql
            .rows2(Stmt::DEQUEUE, thread_id, &ms(now))
            .map_err(|e| backend_err(o, "dequeueing", e))?;
        // Only the one live row among those deleted is the answer.
        for row in rows.iter() {
            let row = js_sys::Array::from(&row);
            if int(&row.get(1)).is_some_and(|at| at > now) {
                return Ok(row.get(0));
            }
        }
        Ok(JsValue::NULL)
    }
}
