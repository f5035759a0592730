//! Test Worker for `chat-state-do` (wasm32 only; natively this crate is empty).
//!
//! Routes (all driven by `chat-state-do/tests/workerd.rs` and the benchmark):
//!
//! * `GET /ping` — readiness.
//! * `POST /conformance` `{"prefix": "...", "shards": 0, "filter": ["case", ...],
//!   "manual_clock": false}` — runs `chat_state_conformance::run_all` against fresh objects
//!   (unique names per case) and answers the `chat_state_conformance::Report` as
//!   JSON. With `manual_clock`, each case gets a manual clock that drives both the adapter and
//!   the objects (the test-only `test_clock` option of the adapter).
//! * `POST /adapter` `{"config": {...}, "ops": [request, ...]}` — runs protocol-shaped
//!   operations through a `DurableObjectAdapter` and answers one `{"ok": ..}` or
//!   `{"err": {"kind", "message"}}` per op.
//! * `POST /memory-expiry` `{"ttl_ms": n}` — the memory backend (`MemoryState::default()`,
//!   system clock) inside workerd: a key and a lock with that TTL, a real wait past it, and
//!   what was live before and after, with the Worker's `Date.now()` at each step.
//! * `POST /raw/<object>?path=/v1&now=<ms>` — forwards the body untouched to the object
//!   (bad-input tests); `now`, if given, goes in the test clock header.
//! * `GET /inspect/<object>` — the object's test-only introspection.
//! * `POST /cycle` `{"object": "...", "shards": n, "thread": "..."}` — one message cycle
//!   (benchmark).

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(target_arch = "wasm32")]
pub use wasm::*;
