//! `batch`: several calls in one round trip. The adapter sends the operations its tasks issue
//! to one object at the same moment as one `batch`, so concurrency inside a Worker costs one
//! RPC (and one commit) per burst instead of one per operation.

use chat_state_core::{Error, Operation};
use js_sys::Array;
use wasm_bindgen::prelude::*;

use super::{ChatStateDO, throw};
use crate::BACKEND;
use crate::protocol::{PROTOCOL_VERSION, encode_error, version_mismatch};

#[wasm_bindgen]
impl ChatStateDO {
    /// `batch(version, calls)` with each call `[method, ...arguments]` as the method itself
    /// takes them → `[results, failures]`: `results[i]` is call `i`'s result, and `failures`
    /// lists `[i, message]` for each call that threw (its message as that method throws it).
    /// The calls run in order, one after the other, with no await between them.
    #[wasm_bindgen(js_name = batch)]
    pub fn rpc_batch(&self, version: f64, calls: &JsValue) -> Result<Array, JsError> {
        if version != f64::from(PROTOCOL_VERSION) {
            return Err(JsError::new(&version_mismatch(Some(version))));
        }
        let calls = calls.dyn_ref::<Array>().ok_or_else(|| {
            throw(
                Error::invalid_input(
                    "batch expects an array of calls, each [method, ...arguments]",
                )
                .context(BACKEND, Operation::Maintenance),
            )
        })?;
        let results = Array::new_with_length(calls.length());
        let failures = Array::new();
        for (i, call) in calls.iter().enumerate() {
            match self.dispatch(&call) {
                Ok(v) => results.set(i as u32, v),
                Err(message) => {
                    failures.push(&Array::of2(
                        &JsValue::from(i as u32),
                        &JsValue::from_str(&message),
                    ));
                }
            }
        }
        Ok(Array::of2(&results, &failures))
    }
}

/// A numeric argument as the methods take it (`NaN` for anything else, which they reject).
fn num(v: JsValue) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// An optional numeric argument: `null` and `undefined` are absent.
fn opt(v: JsValue) -> Option<f64> {
    if v.is_null() || v.is_undefined() {
        None
    } else {
        Some(num(v))
    }
}

impl ChatStateDO {
    /// Runs one call of a batch; a failure is the message the method would have thrown.
    fn dispatch(&self, call: &JsValue) -> Result<JsValue, String> {
        let Some(call) = call.dyn_ref::<Array>() else {
            return Err(bad_call(
                "a batch call must be an array [method, ...arguments]",
            ));
        };
        let a = |i: u32| call.get(i);
        let v = num(a(1));
        let method = a(0).as_string().unwrap_or_default();
        let message = |e: JsError| {
            JsValue::from(e)
                .dyn_into::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .unwrap_or_default()
        };
        let done = |r: Result<(), JsError>| r.map(|()| JsValue::UNDEFINED);
        match method.as_str() {
            "subscribe" => done(self.rpc_subscribe(v, &a(2), opt(a(3)))),
            "unsubscribe" => done(self.rpc_unsubscribe(v, &a(2), opt(a(3)))),
            "isSubscribed" => self.rpc_is_subscribed(v, &a(2), opt(a(3))).map(JsValue::from),
            "acquireLock" => self.rpc_acquire_lock(v, &a(2), num(a(3)), &a(4), opt(a(5))),
            "releaseLock" => done(self.rpc_release_lock(v, &a(2), &a(3), opt(a(4)))),
            "extendLock" => self
                .rpc_extend_lock(v, &a(2), &a(3), num(a(4)), opt(a(5)))
                .map(JsValue::from),
            "forceReleaseLock" => done(self.rpc_force_release_lock(v, &a(2), opt(a(3)))),
            "get" => self.rpc_get(v, &a(2), opt(a(3))),
            "set" => done(self.rpc_set(v, &a(2), &a(3), opt(a(4)), opt(a(5)))),
            "setIfNotExists" => self
                .rpc_set_if_not_exists(v, &a(2), &a(3), opt(a(4)), opt(a(5)))
                .map(JsValue::from),
            "delete" => done(self.rpc_delete(v, &a(2), opt(a(3)))),
            "appendToList" => done(self.rpc_append_to_list(v, &a(2), &a(3), opt(a(4)), opt(a(5)), opt(a(6)))),
            "getList" => self.rpc_get_list(v, &a(2), opt(a(3))).map(JsValue::from),
            "enqueue" => self.rpc_enqueue(v, &a(2), &a(3), num(a(4)), opt(a(5))).map(JsValue::from),
            "dequeue" => self.rpc_dequeue(v, &a(2), opt(a(3))),
            "queueDepth" => self.rpc_queue_depth(v, &a(2), opt(a(3))).map(JsValue::from),
            "admit" => self.rpc_admit(
                v, &a(2), &a(3), opt(a(4)), num(a(5)), &a(6), &a(7), opt(a(8)), &a(9), opt(a(10)),
            ),
            "releaseOrNext" => self.rpc_release_or_next(
                v, &a(2), &a(3), num(a(4)), &a(5), &a(6), opt(a(7)), opt(a(8)), opt(a(9)),
            ),
            "setFenced" => self.rpc_set_fenced(
                v, &a(2), &a(3), opt(a(4)), &a(5), &a(6), num(a(7)), opt(a(8)),
            ),
            other => return Err(bad_call(&format!(
                "{other:?} cannot be batched; batch takes the operations of chat_state_do::protocol \
                 (not inspect, failAlarms or batch)"
            ))),
        }
        .map_err(message)
    }
}

fn bad_call(what: &str) -> String {
    encode_error(&Error::invalid_input(what).context(BACKEND, Operation::Maintenance))
}
