//! The crate's JavaScript, in one module (wasm-bindgen names every inline snippet of a crate
//! alike, so there is one): what the object and the adapter call instead of going through
//! `worker`'s bindings.
//!
//! The object's SQL helpers run a statement and pick out what the operation needs in one
//! crossing each: going through `worker::SqlStorage` costs a bindings array, the query
//! decoded from UTF-8 again, and one crossing per cursor step, row and column. They take the
//! query as a JavaScript string built once per object and the bindings as plain arguments,
//! and they hand back values (an `ArrayBuffer` stays an `ArrayBuffer`) without copying them
//! into wasm memory. The adapter's helpers make RPC calls whose outcome settles through one
//! long-lived callback (see `transport`).

use js_sys::Array;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
// ---- The object: SQL and the alarm ----
// One-column statements name their column `v`; toArray() costs less than a raw() iterator.
export function sqlRun(sql, q, ...a) { sql.exec(q, ...a); }
export function sqlWritten(sql, q, ...a) { return sql.exec(q, ...a).rowsWritten; }
export function sqlOne(sql, q, ...a) {
  const rows = sql.exec(q, ...a).toArray();
  return rows.length === 0 ? undefined : rows[0].v;
}
export function sqlRow(sql, q, ...a) { return sql.exec(q, ...a).raw().toArray()[0]; }
export function sqlRows(sql, q, ...a) { return sql.exec(q, ...a).raw().toArray(); }
export function sqlColumn(sql, q, ...a) { return sql.exec(q, ...a).toArray().map((row) => row.v); }
export function setAlarm(storage, ms) { return storage.setAlarm(ms); }
export function getAlarm(storage) { return storage.getAlarm(); }
export function inTransaction(storage, body) {
  try {
    storage.transactionSync(() => {
      const failure = body();
      if (failure !== undefined) throw new Error(failure);
    });
    return undefined;
  } catch (e) {
    return String(e?.message ?? e);
  }
}
// ---- The adapter: calls on stubs and sessions ----
// A target holds a stub (`s`) or, while a session is being opened, the promise of one (`p`).
export function stubTarget(stub) { return { s: stub, session: false }; }
export function openSession(target) {
  const p = target.s.session();
  const session = { p, s: undefined, session: true };
  p.then((s) => { session.s = s; }, () => {});
  return session;
}
export function dispose(target) {
  if (!target.session) return;
  try { (target.s ?? target.p)?.[Symbol.dispose]?.(); } catch {}
}
export function call(target, method, id, settle, ...args) {
  (target.s ?? target.p)[method](...args).then((v) => settle(id, true, v), (e) => settle(id, false, e));
}
export function callArgs(target, method, id, settle, args) {
  (target.s ?? target.p)[method](...args).then((v) => settle(id, true, v), (e) => settle(id, false, e));
}
export function batch(target, version, calls, id, settle) {
  (target.s ?? target.p).batch(version, calls).then((v) => settle(id, true, v), (e) => settle(id, false, e));
}
export function flag(e, name) { return e != null && typeof e === "object" && e[name] === true; }
"#)]
extern "C" {
    #[wasm_bindgen(catch, js_name = sqlWritten)]
    pub(crate) fn written0(sql: &JsValue, q: &JsValue) -> Result<f64, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlWritten)]
    pub(crate) fn written2(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<f64, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlRun)]
    pub(crate) fn run1(sql: &JsValue, q: &JsValue, a: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = sqlRun)]
    pub(crate) fn run2(sql: &JsValue, q: &JsValue, a: &JsValue, b: &JsValue)
    -> Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = sqlRun)]
    pub(crate) fn run3(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
    ) -> Result<(), JsValue>;

    #[wasm_bindgen(catch, js_name = sqlRun)]
    pub(crate) fn run4(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
    ) -> Result<(), JsValue>;

    #[wasm_bindgen(catch, js_name = sqlOne)]
    pub(crate) fn one1(sql: &JsValue, q: &JsValue, a: &JsValue) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlOne)]
    pub(crate) fn one2(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlOne)]
    pub(crate) fn one3(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
    ) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlOne)]
    pub(crate) fn one4(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
    ) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlOne)]
    pub(crate) fn one5(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
        e: &JsValue,
    ) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch, js_name = sqlRow)]
    pub(crate) fn row1(sql: &JsValue, q: &JsValue, a: &JsValue) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlRow)]
    pub(crate) fn row2(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = sqlRow)]
    pub(crate) fn row3(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
    ) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch, js_name = sqlRows)]
    pub(crate) fn rows2(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<js_sys::Array, JsValue>;

    #[wasm_bindgen(catch, js_name = sqlColumn)]
    pub(crate) fn column2(
        sql: &JsValue,
        q: &JsValue,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<js_sys::Array, JsValue>;

    /// `storage.setAlarm(ms)`; the promise settles when the alarm is stored.
    #[wasm_bindgen(catch, js_name = setAlarm)]
    pub(crate) fn set_alarm(storage: &JsValue, ms: f64) -> Result<js_sys::Promise, JsValue>;
    /// `storage.getAlarm()`: resolves to the alarm's Unix ms, or `null`.
    #[wasm_bindgen(catch, js_name = getAlarm)]
    pub(crate) fn get_alarm(storage: &JsValue) -> Result<js_sys::Promise, JsValue>;
    /// Runs `body` in `storage.transactionSync`: a body that answers a message (instead of
    /// `undefined`) rolls everything back, and that message is the result.
    #[wasm_bindgen(js_name = inTransaction)]
    pub(crate) fn in_transaction(storage: &JsValue, body: &mut dyn FnMut() -> JsValue) -> JsValue;
    /// A target for a plain stub.
    #[wasm_bindgen(js_name = stubTarget)]
    pub(crate) fn stub_target(stub: &JsValue) -> JsValue;
    /// `stub.session()`, pipelined: the target is usable at once.
    #[wasm_bindgen(catch, js_name = openSession)]
    pub(crate) fn open_session(target: &JsValue) -> std::result::Result<JsValue, JsValue>;
    /// Releases a session the runtime would otherwise keep until the request ends.
    pub(crate) fn dispose(target: &JsValue);
    /// `target[method](...args)`; the outcome goes to `settle(id, ok, value)`.
    #[wasm_bindgen(catch, js_name = call)]
    pub(crate) fn call1(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        a: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = call)]
    pub(crate) fn call2(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        a: &JsValue,
        b: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = call)]
    pub(crate) fn call3(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = call)]
    pub(crate) fn call4(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = call)]
    pub(crate) fn call5(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
        e: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = call)]
    pub(crate) fn call6(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
        e: &JsValue,
        f: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = call)]
    pub(crate) fn call7(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        a: &JsValue,
        b: &JsValue,
        c: &JsValue,
        d: &JsValue,
        e: &JsValue,
        f: &JsValue,
        g: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    /// `target[method](...args)` for calls with more arguments than [`call7`] takes (the
    /// dispatch operations); one array instead of a binding per arity.
    #[wasm_bindgen(catch, js_name = callArgs)]
    pub(crate) fn call_args(
        t: &JsValue,
        m: &JsValue,
        id: u32,
        settle: &JsValue,
        args: &Array,
    ) -> std::result::Result<(), JsValue>;
    /// `target.batch(version, calls)`; the outcome goes to `settle(id, ok, value)`.
    #[wasm_bindgen(catch, js_name = batch)]
    pub(crate) fn send_batch(
        t: &JsValue,
        version: u32,
        calls: &Array,
        id: u32,
        settle: &JsValue,
    ) -> std::result::Result<(), JsValue>;
    /// Whether the thrown value has `name` set to `true` (`retryable`, `overloaded`).
    pub(crate) fn flag(e: &JsValue, name: &str) -> bool;
}

/// The message of a thrown JS value, without the stack trace `Debug` would add.
pub(crate) fn js_message(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(err) => String::from(err.message()),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}
