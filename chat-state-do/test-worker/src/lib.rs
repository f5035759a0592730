//! Test Worker for `chat-state-do` (wasm32 only; natively this crate is empty).
//!
//! Routes (driven by `chat-state-do/tests/workerd.rs` and the benchmark). Values in the JSON
//! of these routes are UTF-8 text.
//!
//! * `GET /ping` — readiness.
//! * `POST /cycle` `{"config": {...}, "thread": "..."}` — one message cycle (benchmark).
//! * `POST /cycles` `{"config": {...}, "cycles": n, "concurrency": c, "threads": t}` — `n`
//!   message cycles inside this one request, `c` at a time, over `t` threads; answers the
//!   elapsed milliseconds (benchmark).
//! * `POST /adapter` `{"config": {...}, "ops": [op, ...]}` — runs operations through a
//!   `DurableObjectAdapter` and answers one `{"ok": ..}` or `{"err": {"kind", "message"}}` per
//!   op (see `Op` for their JSON).
//! * `POST /kept-adapter` `{"ops": [...]}` — the same on an adapter this isolate keeps from one
//!   request to the next (default object `kept`), as a Worker that caches it globally would.
//! * `POST /rpc/<object>` `{"method": "...", "args": [...], "binding": "CHAT_STATE"}` — one raw
//!   RPC call on the object's stub, past the adapter (bad-input and version tests). In
//!   `args`, `{"$bytes": "text"}` is a `Uint8Array` of that text and `{"$undefined": true}`
//!   is `undefined`; an `ArrayBuffer` in the answer comes back as `{"$bytes": "text"}`.
//!   Answers `{"ok": result}` or `{"err": {"message", "name", "retryable", "overloaded"}}`.
//! * `POST /fetch/<object>?path=/v1` — forwards the body to the object's `fetch`, as a Worker
//!   from before Workers RPC would; answers `{"status", "body"}`.
//!
//! With the default feature `test-routes` only (the benchmark builds without it):
//!
//! * `GET /cases` — the conformance cases compiled for wasm32.
//! * `POST /conformance` `{"prefix": "...", "shards": 0, "filter": ["case", ...],
//!   "manual_clock": false}` — runs `chat_state_conformance::run_all` against fresh objects
//!   (unique names per case) and answers the `chat_state_conformance::Report` as
//!   JSON. With `manual_clock`, each case gets a manual clock that drives both the adapter and
//!   the objects (the test-only `test_clock` option of the adapter).
//! * `POST /memory-expiry` `{"ttl_ms": n}` — the memory backend (`MemoryState::default()`,
//!   system clock) inside workerd: a key and a lock with that TTL, a real wait past it, and
//!   what was live before and after, with the Worker's `Date.now()` at each step.
//! * `GET /inspect/<object>` — the object's test-only introspection.

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(target_arch = "wasm32")]
pub use wasm::*;
