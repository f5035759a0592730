//! `appendToList`, `getList`: a header row per list (its expiry and the next item's sequence
//! number) plus one row per item. The header's expiry gates the items.

use chat_state_core::{Error, ErrorKind, ListOptions, Operation, validate};
use wasm_bindgen::prelude::*;

use super::sql::{Stmt, backend_err, int, ms, optional_ms};
use super::{ChatStateDO, throw};
use crate::BACKEND;

#[wasm_bindgen]
impl ChatStateDO {
    /// `appendToList(version, key, value, maxLength | null, ttlMs | null, now?)`: appends one
    /// item, keeps the newest `maxLength`, and with a TTL sets the whole list's expiry.
    ///
    /// Two statements for most appends (header upsert, item insert), three when the list
    /// is over its length (trim), and one more for a list's first item (clearing anything
    /// left from an expired one).
    #[wasm_bindgen(js_name = appendToList)]
    pub fn rpc_append_to_list(
        &self,
        version: f64,
        key: &JsValue,
        value: &JsValue,
        max_length: Option<f64>,
        ttl_ms: Option<f64>,
        now: Option<f64>,
    ) -> Result<(), JsError> {
        let call = self.begin(Operation::AppendToList, version, now)?;
        let o = call.op;
        let k = call.string("key", key).map_err(throw)?;
        let max_length = max_length
            .map(|n| call.count("max_length", n))
            .transpose()
            .map_err(throw)?;
        let options =
            ListOptions::from_parts(max_length, call.optional_ttl(ttl_ms).map_err(throw)?);
        // The value's size is checked without its bytes; the rest of the rule here.
        validate::append_to_list(BACKEND, &k, &[], &options).map_err(throw)?;
        call.value(value).map_err(throw)?;
        let now = call.now();
        let new_expiry =
            validate::optional_expiry_ms(BACKEND, o, now, options.ttl).map_err(throw)?;
        let err = |e| throw(backend_err(o, "appending to a list", e));
        let header = self
            .sql
            .row3(Stmt::LIST_HEADER, key, &optional_ms(new_expiry), &ms(now))
            .map_err(err)?;
        let header = js_sys::Array::from(&header);
        let Some(seq) = int(&header.get(0)) else {
            return Err(throw(
                Error::new(
                    ErrorKind::Backend,
                    "the list header upsert returned no sequence number",
                )
                .context(BACKEND, o),
            ));
        };
        let expiry = int(&header.get(1));
        if seq == 1 {
            // A new list, or one that expired: no item of an earlier life may stay.
            self.sql.run1(Stmt::LIST_CLEAR, key).map_err(err)?;
        }
        self.sql
            .run3(Stmt::LIST_ITEM, key, &JsValue::from_f64(seq as f64), value)
            .map_err(err)?;
        if let Some(max) = options.max_length.map(|m| m as u64)
            && seq > max
        {
            self.sql
                .run2(Stmt::LIST_TRIM, key, &JsValue::from_f64((seq - max) as f64))
                .map_err(err)?;
        }
        self.arm(expiry);
        Ok(())
    }

    /// `getList(version, key, now?)` → the live list's items (`ArrayBuffer`s), oldest first;
    /// an expired list reads as empty even before the alarm has deleted it.
    #[wasm_bindgen(js_name = getList)]
    pub fn rpc_get_list(
        &self,
        version: f64,
        key: &JsValue,
        now: Option<f64>,
    ) -> Result<js_sys::Array, JsError> {
        let call = self.begin(Operation::GetList, version, now)?;
        let k = call.string("key", key).map_err(throw)?;
        validate::get_list(BACKEND, &k).map_err(throw)?;
        self.sql
            .column2(Stmt::GET_LIST, key, &ms(call.now()))
            .map_err(|e| throw(backend_err(call.op, "reading a list", e)))
    }
}
