use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use chat_state_conformance::{Failure, Harness, ManualTime, TimeControl, run_all};
use chat_state_core::{
    Cache as _, Clock, Error, ListOptions, Lists as _, Lock, Locks as _, ManualClock, Queues as _,
    SharedClock, StateAdapter, StateExt as _, Subscriptions as _,
};
use chat_state_do::protocol::{Request as Op, WireError, b64};
use chat_state_do::routing::hashed_shards;
use chat_state_do::{DurableObjectAdapter, DurableObjectBackend};
use chat_state_memory::{MemoryBackend, MemoryState};
use serde::Deserialize;
use serde_json::{Value, json};
use worker::{Date, Delay, Env, Method, Request, RequestInit, Response, Result, event};

/// The object class, re-exported so the runtime finds it (as a user's Worker would).
pub use chat_state_do::ChatStateDO;

const BINDING: &str = "CHAT_STATE";

/// Real time inside the Worker: `advance` waits on a timer, `now_ms` is `Date.now()`.
struct WorkerTime;

#[chat_state_core::async_trait(?Send)]
impl TimeControl for WorkerTime {
    async fn advance(&self, by: Duration) {
        // A few ms on top: the object reads its own Date.now(), which only moves at I/O
        // boundaries, and expiry is strict (`now < expires_at`).
        Delay::from(by + Duration::from_millis(3)).await;
    }
    fn now_ms(&self) -> u64 {
        Date::now().as_millis()
    }
    fn is_manual(&self) -> bool {
        false
    }
}

/// How a test wants its adapter configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Config {
    /// Default object name.
    object: String,
    /// Number of hashed shards (`<object>-shard-<n>`) for thread-scoped operations; 0 = none.
    shards: u32,
    /// Use the ready-made key router.
    route_thread_keys: bool,
    location_hint: Option<String>,
    jurisdiction: Option<String>,
    /// A test clock for the adapter and, through it, the objects (never from JSON).
    #[serde(skip)]
    clock: Option<SharedClock>,
}

fn adapter(env: &Env, c: &Config) -> std::result::Result<DurableObjectAdapter, Error> {
    let ns = env
        .durable_object(BINDING)
        .map_err(|e| Error::invalid_input(format!("binding {BINDING}: {e}")))?;
    let mut b = DurableObjectBackend::builder(ns).object_name(c.object.clone());
    if c.shards > 0 {
        let shard = hashed_shards(&format!("{}-shard", c.object), c.shards);
        b = b.shard_key(move |id| shard(id));
    }
    if c.route_thread_keys {
        b = b.route_thread_keys();
    }
    if let Some(h) = &c.location_hint {
        b = b.location_hint(h.clone());
    }
    if let Some(j) = &c.jurisdiction {
        b = b.jurisdiction(j.clone());
    }
    if let Some(clock) = &c.clock {
        b = b.test_clock(clock.clone());
    }
    b.build()
}

#[derive(Debug, Deserialize)]
struct ConformanceRun {
    prefix: String,
    #[serde(default)]
    shards: u32,
    #[serde(default)]
    filter: Option<Vec<String>>,
    /// Drive the adapter and the objects with one manual clock per case (test-only protocol
    /// header), so the exact-boundary cases run instead of skipping.
    #[serde(default)]
    manual_clock: bool,
}

/// How far ahead of the wall clock a manual clock starts: every expiry it produces (and so
/// every alarm the objects arm) lies a day in the future, so no alarm cleanup, which runs on
/// the object's own `Date.now()`, fires during the run and deletes rows that are live in
/// manual time.
const MANUAL_CLOCK_LEAD_MS: u64 = 86_400_000;

async fn conformance(env: &Env, run: ConformanceRun) -> Result<Response> {
    let counter = Cell::new(0u32);
    let started = Date::now().as_millis();
    let report = run_all(
        || {
            counter.set(counter.get() + 1);
            let manual = run
                .manual_clock
                .then(|| ManualClock::new(Date::now().as_millis() + MANUAL_CLOCK_LEAD_MS));
            // A fresh object (and fresh shards) per case: isolation without cleanup.
            let config = Config {
                object: format!("{}-case{}", run.prefix, counter.get()),
                shards: run.shards,
                route_thread_keys: run.shards > 0,
                clock: manual.clone().map(|c| Arc::new(c) as SharedClock),
                ..Config::default()
            };
            let time: Arc<dyn TimeControl> = match manual {
                Some(clock) => Arc::new(ManualTime(clock)),
                None => Arc::new(WorkerTime),
            };
            let built = adapter(env, &config);
            let env = env.clone();
            async move {
                let a = built.map_err(|e| Failure::new(format!("adapter: {e}")))?;
                a.connect()
                    .await
                    .map_err(|e| Failure::new(format!("connect: {e}")))?;
                let a: Arc<dyn StateAdapter> = Arc::new(a);
                // Reopen = a new adapter on the same objects; the data lives in them.
                let reopen = move || {
                    let built = adapter(&env, &config);
                    async move {
                        let a = built?;
                        a.connect().await?;
                        Ok(Arc::new(a) as Arc<dyn StateAdapter>)
                    }
                };
                Ok(Harness::new(a, time).with_reopen(reopen))
            }
        },
        |name| {
            run.filter
                .as_ref()
                .is_none_or(|f| f.iter().any(|n| n == name))
        },
        || Date::now().as_millis().saturating_sub(started),
    )
    .await;
    Response::from_json(&report)
}

#[derive(Debug, Deserialize)]
struct Script {
    config: Config,
    ops: Vec<Value>,
}

fn err_json(e: &Error) -> Value {
    let w = WireError::from_error(e);
    json!({ "err": { "kind": w.kind, "message": e.to_string() } })
}

/// Runs one protocol-shaped operation through the adapter.
async fn run_op(a: &DurableObjectAdapter, raw: Value) -> Value {
    let op: Op = match serde_json::from_value(raw) {
        Ok(op) => op,
        Err(e) => return json!({ "err": { "kind": "script", "message": e.to_string() } }),
    };
    let lock = |lock_id: String, token: String| Lock {
        thread_id: lock_id,
        token,
        expires_at: 0,
        fence: 0,
    };
    let ms = Duration::from_millis;
    let r: std::result::Result<Value, Error> = async {
        Ok(match op {
            Op::Subscribe { thread_id } => json!(a.subscribe(&thread_id).await?),
            Op::Unsubscribe { thread_id } => json!(a.unsubscribe(&thread_id).await?),
            Op::IsSubscribed { thread_id } => json!(a.is_subscribed(&thread_id).await?),
            Op::AcquireLock {
                lock_id, ttl_ms, ..
            } => {
                json!(a.acquire_lock(&lock_id, ms(ttl_ms)).await?)
            }
            Op::ReleaseLock { lock_id, token } => {
                json!(a.release_lock(&lock(lock_id, token)).await?)
            }
            Op::ExtendLock {
                lock_id,
                token,
                ttl_ms,
            } => json!(a.extend_lock(&lock(lock_id, token), ms(ttl_ms)).await?),
            Op::ForceReleaseLock { lock_id } => json!(a.force_release_lock(&lock_id).await?),
            Op::Get { key } => json!(a.get(&key).await?.map(|v| b64::encode(&v))),
            Op::Set { key, value, ttl_ms } => json!(a.set(&key, &value, ttl_ms.map(ms)).await?),
            Op::SetIfNotExists { key, value, ttl_ms } => {
                json!(a.set_if_not_exists(&key, &value, ttl_ms.map(ms)).await?)
            }
            Op::Delete { key } => json!(a.delete(&key).await?),
            Op::AppendToList {
                key,
                value,
                max_length,
                ttl_ms,
            } => {
                let options =
                    ListOptions::from_parts(max_length.map(|n| n as usize), ttl_ms.map(ms));
                json!(a.append_to_list(&key, &value, options).await?)
            }
            Op::GetList { key } => {
                let items: Vec<String> = a
                    .get_list(&key)
                    .await?
                    .iter()
                    .map(|v| b64::encode(v))
                    .collect();
                json!(items)
            }
            Op::Enqueue {
                thread_id,
                entry,
                max_size,
            } => json!(a.enqueue(&thread_id, entry, max_size as usize).await?),
            Op::Dequeue { thread_id } => json!(a.dequeue(&thread_id).await?),
            Op::QueueDepth { thread_id } => json!(a.queue_depth(&thread_id).await?),
            Op::Inspect | Op::FailAlarms { .. } => json!(null),
        })
    }
    .await;
    match r {
        Ok(v) => json!({ "ok": v }),
        Err(e) => err_json(&e),
    }
}

async fn script(env: &Env, s: Script) -> Result<Response> {
    let a = match adapter(env, &s.config) {
        Ok(a) => a,
        Err(e) => return Response::from_json(&json!([err_json(&e)])),
    };
    let mut out = Vec::with_capacity(s.ops.len());
    for op in s.ops {
        out.push(run_op(&a, op).await);
    }
    Response::from_json(&out)
}

/// Sends `body` untouched to `object` at `path` (with `now` in the test clock header, if
/// given), and answers the object's status and body.
async fn raw(
    env: &Env,
    object: &str,
    path: &str,
    now: Option<&str>,
    body: Vec<u8>,
) -> Result<Response> {
    let stub = env.durable_object(BINDING)?.get_by_name(object)?;
    let mut init = RequestInit::new();
    let array = worker::js_sys::Uint8Array::from(body.as_slice());
    init.with_method(Method::Post).with_body(Some(array.into()));
    if let Some(now) = now {
        let headers = worker::Headers::new();
        headers.set(chat_state_do::protocol::TEST_NOW_HEADER, now)?;
        init.with_headers(headers);
    }
    let url = format!("https://chat-state.internal{path}");
    let mut resp = stub
        .fetch_with_request(Request::new_with_init(&url, &init)?)
        .await?;
    let status = resp.status_code();
    let text = resp.text().await?;
    Response::from_json(&json!({ "status": status, "body": text }))
}

#[derive(Debug, Deserialize)]
struct Cycle {
    config: Config,
    thread: String,
}

/// One incoming-message cycle as the Chat SDK runs it, restricted to the operations the
/// TypeScript baseline also has (it has no set_if_not_exists, lists or queues): subscription
/// check, lock, thread state read + write, release. Five object round trips.
async fn cycle(env: &Env, c: Cycle) -> std::result::Result<Value, Error> {
    let a = adapter(env, &c.config)?;
    let subscribed = a.is_subscribed(&c.thread).await?;
    let Some(lock) = a.acquire_lock(&c.thread, Duration::from_secs(30)).await? else {
        return Ok(json!({ "locked": false }));
    };
    let key = format!("thread-state:{}", c.thread);
    let state: Option<Value> = a.get_json(&key).await?;
    let n = state
        .as_ref()
        .and_then(|s| s.get("n"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    a.set_json(
        &key,
        &json!({ "n": n + 1 }),
        Some(Duration::from_secs(86_400)),
    )
    .await?;
    a.release_lock(&lock).await?;
    Ok(json!({ "locked": true, "subscribed": subscribed, "n": n + 1 }))
}

#[derive(Debug, Deserialize)]
struct MemoryExpiry {
    ttl_ms: u64,
    /// Run on [`ZeroClock`] instead of the system clock (the test's proof that its checks
    /// catch a clock stuck at 0).
    #[serde(default)]
    zero_clock: bool,
}

/// What `SystemClock` returned on wasm32 before it read `Date.now()`.
#[derive(Debug)]
struct ZeroClock;

impl Clock for ZeroClock {
    fn now_ms(&self) -> u64 {
        0
    }
}

/// The memory backend on the system clock (or, with `zero_clock`, on a clock stuck at 0),
/// inside workerd: stores a key and takes a lock
/// with `ttl_ms`, checks both are live, waits real time past the TTL, and checks that the
/// key expired and the lock can be taken again. Answers what it saw, with the Worker's
/// `Date.now()` at each step, for `tests/workerd.rs` to judge.
///
/// On wasm32 `SystemClock` reads `Date.now()`; if it read 0 (as it once did), the lock's
/// `expiresAt` would be `ttl_ms` (1970) and time would never pass for the backend, so the
/// key would stay live and the lock held: every check of the test fails.
async fn memory_expiry(run: MemoryExpiry) -> std::result::Result<Value, Error> {
    let state = if run.zero_clock {
        MemoryState::new(MemoryBackend::with_clock(ZeroClock))
    } else {
        MemoryState::default()
    };
    let ttl = Duration::from_millis(run.ttl_ms);
    // Date.now() (nearly) stands still while the isolate computes: this is, within a
    // millisecond or so, the time of every call below until the wait.
    let started_ms = Date::now().as_millis();
    state.set("k", b"v", Some(ttl)).await?;
    let first = state.acquire_lock("l", ttl).await?;
    let live_before = state.get("k").await?.is_some();
    let held_before = state.acquire_lock("l", ttl).await?.is_none();
    // A timer is I/O, after which Date.now() has moved on by (at least) the wait.
    Delay::from(ttl + Duration::from_millis(20)).await;
    let waited_ms = Date::now().as_millis();
    let value_after = state.get("k").await?.map(|v| b64::encode(&v));
    let second = state.acquire_lock("l", ttl).await?;
    Ok(json!({
        "started_ms": started_ms,
        "first_lock": first,
        "live_before": live_before,
        "held_before": held_before,
        "waited_ms": waited_ms,
        "value_after": value_after,
        "second_lock": second,
    }))
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: worker::Context) -> Result<Response> {
    let path = req.path();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    match (req.method(), parts.as_slice()) {
        (Method::Get, ["ping"]) => Response::ok("ok"),
        (Method::Get, ["cases"]) => {
            let names: Vec<&str> = chat_state_conformance::all_cases()
                .iter()
                .map(|(name, _)| *name)
                .collect();
            Response::from_json(&names)
        }
        (Method::Post, ["conformance"]) => {
            let run: ConformanceRun = req.json().await?;
            conformance(&env, run).await
        }
        (Method::Post, ["adapter"]) => {
            let s: Script = req.json().await?;
            script(&env, s).await
        }
        (Method::Post, ["cycle"]) => {
            let c: Cycle = req.json().await?;
            match cycle(&env, c).await {
                Ok(v) => Response::from_json(&v),
                Err(e) => Ok(Response::from_json(&err_json(&e))?.with_status(500)),
            }
        }
        (Method::Post, ["memory-expiry"]) => {
            let run: MemoryExpiry = req.json().await?;
            match memory_expiry(run).await {
                Ok(v) => Response::from_json(&v),
                Err(e) => Ok(Response::from_json(&err_json(&e))?.with_status(500)),
            }
        }
        (Method::Post, ["raw", object]) => {
            let url = req.url()?;
            let query = |name: &str| {
                url.query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            };
            let target = query("path").unwrap_or_else(|| "/v1".to_string());
            let now = query("now");
            let object = object.to_string();
            let body = req.bytes().await?;
            raw(&env, &object, &target, now.as_deref(), body).await
        }
        (Method::Get, ["inspect", object]) => {
            raw(&env, object, "/v1", None, br#"{"op":"inspect"}"#.to_vec()).await
        }
        _ => Response::error("no such route", 404),
    }
}
