use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use chat_state_core::dispatch::{DEDUPE_VALUE, DEFAULT_DEDUPE_TTL, DEFAULT_LOCK_TTL, FencedSet};
use chat_state_core::{
    Admission, Admit, Cache as _, Dispatch as _, Error, FencedWrite, Handoff, ListOptions,
    Lists as _, Lock, Locks as _, QueueEntry, Queues as _, StateExt as _, Subscriptions as _,
};
use chat_state_do::protocol::kind_name;
use chat_state_do::routing::hashed_shards;
use chat_state_do::{DurableObjectAdapter, DurableObjectBackend};
use serde::Deserialize;
use serde_json::{Value, json};
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen::prelude::*;
use worker::wasm_bindgen_futures::{JsFuture, future_to_promise};
use worker::{Date, Env, Method, Request, Response, Result, event};

#[cfg(feature = "test-routes")]
mod conformance;

/// The object class as worker-build exports it; `entry.mjs` wraps it for Workers RPC (as a
/// user's Worker does) and also exports it bare, bound as `UNWRAPPED`.
pub use chat_state_do::ChatStateDO;

const BINDING: &str = "CHAT_STATE";

/// How a test wants its adapter configured.
#[derive(Clone, Default, Deserialize)]
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
    /// The namespace binding (default `CHAT_STATE`).
    binding: Option<String>,
    /// A test clock for the adapter and, through it, the objects (never from JSON).
    #[cfg(feature = "test-routes")]
    #[serde(skip)]
    clock: Option<chat_state_core::SharedClock>,
}

fn adapter(env: &Env, c: &Config) -> std::result::Result<DurableObjectAdapter, Error> {
    let binding = c.binding.as_deref().unwrap_or(BINDING);
    let ns = env
        .durable_object(binding)
        .map_err(|e| Error::invalid_input(format!("binding {binding}: {e}")))?;
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
    #[cfg(feature = "test-routes")]
    if let Some(clock) = &c.clock {
        b = b.test_clock(clock.clone());
    }
    b.build()
}

/// One operation of a `/adapter` script, in the shape of the adapter's method; values are
/// UTF-8 text.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Subscribe {
        thread_id: String,
    },
    Unsubscribe {
        thread_id: String,
    },
    IsSubscribed {
        thread_id: String,
    },
    AcquireLock {
        lock_id: String,
        ttl_ms: u64,
    },
    ReleaseLock {
        lock_id: String,
        token: String,
    },
    ExtendLock {
        lock_id: String,
        token: String,
        ttl_ms: u64,
    },
    ForceReleaseLock {
        lock_id: String,
    },
    Get {
        key: String,
    },
    Set {
        key: String,
        value: String,
        ttl_ms: Option<u64>,
    },
    SetIfNotExists {
        key: String,
        value: String,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: String,
    },
    AppendToList {
        key: String,
        value: String,
        max_length: Option<usize>,
        ttl_ms: Option<u64>,
    },
    GetList {
        key: String,
    },
    Enqueue {
        thread_id: String,
        entry: QueueEntry,
        max_size: usize,
    },
    Dequeue {
        thread_id: String,
    },
    QueueDepth {
        thread_id: String,
    },
    /// `admit`; without `dedupe_ttl_ms`/`lock_ttl_ms` the upstream defaults, without `queue`
    /// dropped when busy. Answers [`admission_json`].
    Admit {
        thread_id: String,
        dedupe_key: String,
        dedupe_ttl_ms: Option<u64>,
        lock_ttl_ms: Option<u64>,
        queue: Option<QueuePolicy>,
        /// A key to read when admitted (`Admit::read`).
        read: Option<String>,
    },
    /// `release_or_next` (with `write`: `release_or_next_with`) with a lock as an earlier op
    /// answered it; answers `{"handoff": "next" | "released" | "not_holder", "entry"?,
    /// "lock"}`.
    ReleaseOrNext {
        lock: Lock,
        ttl_ms: u64,
        write: Option<WriteOp>,
    },
    /// `set_fenced`; answers `"stored"` or `"stale"`.
    SetFenced {
        lock: Lock,
        key: String,
        value: String,
        ttl_ms: Option<u64>,
    },
}

/// The fenced write of `release_or_next_with` in a script.
#[derive(Deserialize)]
struct WriteOp {
    key: String,
    value: String,
    ttl_ms: Option<u64>,
}

/// `WhenBusy::Queue` in a script.
#[derive(Deserialize)]
struct QueuePolicy {
    entry: QueueEntry,
    max_size: usize,
}

/// An [`Admission`] as JSON: `{"admission": "duplicate" | "dropped" | "queued" | "admitted" |
/// "holding_queue", "depth"?, "lock"?, "subscribed"?, "read"?}`.
fn admission_json(a: Admission) -> Value {
    match a {
        Admission::Duplicate => json!({ "admission": "duplicate" }),
        Admission::Dropped => json!({ "admission": "dropped" }),
        Admission::Queued { depth } => json!({ "admission": "queued", "depth": depth }),
        Admission::Admitted {
            lock,
            subscribed,
            read,
        } => json!({
            "admission": "admitted", "lock": lock, "subscribed": subscribed,
            "read": read.map(|v| text(&v)),
        }),
        Admission::HoldingQueue {
            lock,
            subscribed,
            read,
        } => json!({
            "admission": "holding_queue", "lock": lock, "subscribed": subscribed,
            "read": read.map(|v| text(&v)),
        }),
    }
}

#[derive(Deserialize)]
struct Script {
    #[serde(default)]
    config: Config,
    ops: Vec<Value>,
    /// Add each op's round trips to its result (`/adapter` only).
    #[serde(default)]
    count_calls: bool,
}

fn err_json(e: &Error) -> Value {
    json!({ "err": { "kind": kind_name(e.kind()), "message": e.to_string(), "retryable": e.is_retryable() } })
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Runs one operation through the adapter.
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
            Op::AcquireLock { lock_id, ttl_ms } => {
                json!(a.acquire_lock(&lock_id, ms(ttl_ms)).await?)
            }
            Op::ReleaseLock { lock_id, token } => {
                json!(a.release_lock(&lock(lock_id, token)).await?)
            }
            Op::ExtendLock {
                lock_id,
                token,
                ttl_ms,
            } => {
                json!(a.extend_lock(&lock(lock_id, token), ms(ttl_ms)).await?)
            }
            Op::ForceReleaseLock { lock_id } => json!(a.force_release_lock(&lock_id).await?),
            Op::Get { key } => json!(a.get(&key).await?.map(|v| text(&v))),
            Op::Set { key, value, ttl_ms } => {
                json!(a.set(&key, value.as_bytes(), ttl_ms.map(ms)).await?)
            }
            Op::SetIfNotExists { key, value, ttl_ms } => {
                json!(
                    a.set_if_not_exists(&key, value.as_bytes(), ttl_ms.map(ms))
                        .await?
                )
            }
            Op::Delete { key } => json!(a.delete(&key).await?),
            Op::AppendToList {
                key,
                value,
                max_length,
                ttl_ms,
            } => {
                let options = ListOptions::from_parts(max_length, ttl_ms.map(ms));
                json!(a.append_to_list(&key, value.as_bytes(), options).await?)
            }
            Op::GetList { key } => {
                let items: Vec<String> = a.get_list(&key).await?.iter().map(|v| text(v)).collect();
                json!(items)
            }
            Op::Enqueue {
                thread_id,
                entry,
                max_size,
            } => json!(a.enqueue(&thread_id, entry, max_size).await?),
            Op::Dequeue { thread_id } => json!(a.dequeue(&thread_id).await?),
            Op::QueueDepth { thread_id } => json!(a.queue_depth(&thread_id).await?),
            Op::Admit {
                thread_id,
                dedupe_key,
                dedupe_ttl_ms,
                lock_ttl_ms,
                queue,
                read,
            } => {
                let mut m = Admit::new(&thread_id, &dedupe_key);
                if let Some(key) = &read {
                    m = m.read(key);
                }
                if let Some(t) = dedupe_ttl_ms {
                    m = m.dedupe_ttl(ms(t));
                }
                if let Some(t) = lock_ttl_ms {
                    m = m.lock_ttl(ms(t));
                }
                if let Some(q) = queue {
                    m = m.queue_when_busy(q.entry, q.max_size);
                }
                admission_json(a.admit(&m).await?)
            }
            Op::ReleaseOrNext {
                mut lock,
                ttl_ms,
                write,
            } => {
                let handoff = match &write {
                    Some(w) => {
                        let set = FencedSet {
                            key: &w.key,
                            value: w.value.as_bytes(),
                            ttl: w.ttl_ms.map(ms),
                        };
                        a.release_or_next_with(&mut lock, ms(ttl_ms), set).await?
                    }
                    None => a.release_or_next(&mut lock, ms(ttl_ms)).await?,
                };
                match handoff {
                    Handoff::Next(entry) => {
                        json!({ "handoff": "next", "entry": entry, "lock": lock })
                    }
                    Handoff::Released => json!({ "handoff": "released", "lock": lock }),
                    Handoff::NotHolder => json!({ "handoff": "not_holder", "lock": lock }),
                }
            }
            Op::SetFenced {
                lock,
                key,
                value,
                ttl_ms,
            } => json!(
                a.set_fenced(&lock, &key, value.as_bytes(), ttl_ms.map(ms))
                    .await?
            ),
        })
    }
    .await;
    match r {
        Ok(v) => json!({ "ok": v }),
        Err(e) => err_json(&e),
    }
}

async fn run_ops(a: &DurableObjectAdapter, ops: Vec<Value>) -> Vec<Value> {
    run_counted_ops(a, ops, false).await
}

/// [`run_ops`]; with `count`, each result also has `"calls"`: the round trips to objects the
/// operation made.
async fn run_counted_ops(a: &DurableObjectAdapter, ops: Vec<Value>, count: bool) -> Vec<Value> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let before = a.backend().round_trips();
        let mut v = run_op(a, op).await;
        if count {
            v["calls"] = json!(a.backend().round_trips() - before);
        }
        out.push(v);
    }
    out
}

async fn script(env: &Env, s: Script) -> Result<Response> {
    match adapter(env, &s.config) {
        Ok(a) => Response::from_json(&run_counted_ops(&a, s.ops, s.count_calls).await),
        Err(e) => Response::from_json(&json!([err_json(&e)])),
    }
}

/// A script's operations all at once on one adapter (so its calls are batched); the results
/// in the order of the operations.
async fn concurrent_script(env: &Env, s: Script) -> Result<Response> {
    let a = match adapter(env, &s.config) {
        Ok(a) => Rc::new(a),
        Err(e) => return Response::from_json(&json!([err_json(&e)])),
    };
    let slots: Rc<RefCell<Vec<Value>>> = Rc::new(RefCell::new(vec![Value::Null; s.ops.len()]));
    let tasks = js_sys::Array::new();
    for (i, op) in s.ops.into_iter().enumerate() {
        let (a, slots) = (a.clone(), slots.clone());
        tasks.push(&future_to_promise(async move {
            let v = run_op(&a, op).await;
            slots.borrow_mut()[i] = v;
            Ok(JsValue::UNDEFINED)
        }));
    }
    JsFuture::from(js_sys::Promise::all(&tasks)).await?;
    let out = slots.borrow().clone();
    Response::from_json(&out)
}

thread_local! {
    /// The adapter `/kept-adapter` keeps across requests.
    static KEPT: RefCell<Option<Rc<DurableObjectAdapter>>> = const { RefCell::new(None) };
}

/// A script on an adapter built by an earlier request of this isolate: its cached stubs
/// belong to that request, and the adapter must still work.
async fn kept_script(env: &Env, s: Script) -> Result<Response> {
    let kept = KEPT.with(|k| k.borrow().clone());
    let a = match kept {
        Some(a) => a,
        None => {
            let config = Config {
                object: "kept".into(),
                ..Config::default()
            };
            match adapter(env, &config) {
                Ok(a) => {
                    let a = Rc::new(a);
                    KEPT.with(|k| *k.borrow_mut() = Some(a.clone()));
                    a
                }
                Err(e) => return Response::from_json(&json!([err_json(&e)])),
            }
        }
    };
    Response::from_json(&run_ops(&a, s.ops).await)
}

#[wasm_bindgen(inline_js = r#"
function toJs(args) {
  return JSON.parse(args, (_, v) => {
    if (v && typeof v === "object" && typeof v.$bytes === "string") return new TextEncoder().encode(v.$bytes);
    if (v && typeof v === "object" && v.$undefined === true) return undefined;
    return v;
  });
}
function toJson(v) {
  return JSON.stringify(v === undefined ? null : v, (_, x) =>
    x instanceof ArrayBuffer ? { $bytes: new TextDecoder().decode(x) } :
    ArrayBuffer.isView(x) ? { $bytes: new TextDecoder().decode(x) } : x);
}
export async function rpcCall(ns, object, method, args, session) {
  try {
    const stub = ns.getByName(object);
    let result;
    if (session) {
      const target = await stub.session();
      try {
        result = await target[method](...toJs(args));
      } finally {
        target[Symbol.dispose]();
      }
    } else {
      result = await stub[method](...toJs(args));
    }
    return `{"ok":${toJson(result)}}`;
  } catch (e) {
    return JSON.stringify({ err: { message: String(e?.message ?? e), name: e?.name,
      retryable: e?.retryable ?? null, overloaded: e?.overloaded ?? null } });
  }
}
"#)]
extern "C" {
    /// `ns.getByName(object)[method](...args)` (on a session of the object if `session`);
    /// answers the JSON the `/rpc` route documents.
    #[wasm_bindgen(js_name = rpcCall)]
    fn rpc_call(
        ns: &JsValue,
        object: &str,
        method: &str,
        args: &str,
        session: bool,
    ) -> js_sys::Promise;
}

use worker::js_sys;

#[derive(Deserialize)]
struct RawCall {
    method: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    binding: Option<String>,
    /// Make the call on a session the object hands out (`session()`), not on its stub.
    #[serde(default)]
    session: bool,
}

/// One raw RPC call, past the adapter.
async fn rpc(env: &Env, object: &str, call: RawCall) -> Result<Response> {
    let ns = env.durable_object(call.binding.as_deref().unwrap_or(BINDING))?;
    let args = serde_json::to_string(&call.args)?;
    let answer = JsFuture::from(rpc_call(
        ns.as_ref(),
        object,
        &call.method,
        &args,
        call.session,
    ))
    .await?;
    let answer = answer.as_string().unwrap_or_default();
    Response::from_bytes(answer.into_bytes())
}

/// What a Worker from before Workers RPC sends: a POST to the object's `fetch`.
async fn legacy_fetch(env: &Env, object: &str, path: &str, body: Vec<u8>) -> Result<Response> {
    let stub = env.durable_object(BINDING)?.get_by_name(object)?;
    let mut init = worker::RequestInit::new();
    let array = js_sys::Uint8Array::from(body.as_slice());
    init.with_method(Method::Post).with_body(Some(array.into()));
    let url = format!("https://chat-state.internal{path}");
    let mut resp = stub
        .fetch_with_request(Request::new_with_init(&url, &init)?)
        .await?;
    let status = resp.status_code();
    let text = resp.text().await?;
    Response::from_json(&json!({ "status": status, "body": text }))
}

#[derive(Deserialize)]
struct Cycle {
    config: Config,
    thread: String,
}

/// One incoming-message cycle as the Chat SDK runs it, restricted to the operations the
/// TypeScript baseline also has (it has no set_if_not_exists, lists or queues): subscription
/// check, lock, thread state read + write, release. Five object round trips.
async fn cycle(a: &DurableObjectAdapter, thread: &str) -> std::result::Result<Value, Error> {
    let subscribed = a.is_subscribed(thread).await?;
    let Some(lock) = a.acquire_lock(thread, Duration::from_secs(30)).await? else {
        return Ok(json!({ "locked": false }));
    };
    let key = format!("thread-state:{thread}");
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

#[derive(Deserialize)]
struct Cycles {
    config: Config,
    cycles: u32,
    concurrency: u32,
    threads: u32,
    #[serde(default)]
    prefix: String,
}

/// `cycles` message cycles in this one request on one adapter, `concurrency` at a time, each
/// on thread `<prefix>thread-<i % threads>`; no two in flight share a thread.
async fn cycles(env: &Env, c: Cycles) -> std::result::Result<Value, Error> {
    let a = Rc::new(adapter(env, &c.config)?);
    let next = Rc::new(Cell::new(0u32));
    let started = Date::now().as_millis();
    let workers = js_sys::Array::new();
    for _ in 0..c.concurrency.max(1) {
        let (a, next, prefix) = (a.clone(), next.clone(), c.prefix.clone());
        let (total, threads) = (c.cycles, c.threads.max(1));
        workers.push(&future_to_promise(async move {
            while next.get() < total {
                let i = next.get();
                next.set(i + 1);
                let thread = format!("{prefix}thread-{}", i % threads);
                match cycle(&a, &thread).await {
                    Ok(v) if v["locked"] == json!(true) => {}
                    Ok(v) => return Err(JsValue::from_str(&format!("cycle on {thread}: {v}"))),
                    Err(e) => return Err(JsValue::from_str(&e.to_string())),
                }
            }
            Ok(JsValue::UNDEFINED)
        }));
    }
    JsFuture::from(js_sys::Promise::all(&workers))
        .await
        .map_err(|e| Error::invalid_input(e.as_string().unwrap_or_default()))?;
    Ok(json!({ "cycles": c.cycles, "ms": Date::now().as_millis() - started }))
}

#[derive(Deserialize)]
struct DispatchCycles {
    config: Config,
    cycles: u32,
    concurrency: u32,
    threads: u32,
    /// `"dispatch"`, `"fused"` (the read in the admit, the write in the handoff) or
    /// `"primitives"`.
    mode: String,
    #[serde(default)]
    prefix: String,
}

/// One new message handled with the dispatch operations: admit, the handler's read and
/// fenced write of the thread state, release_or_next (which finds the queue empty). Four
/// round trips, two of them the handler's.
async fn message_via_dispatch(
    a: &DurableObjectAdapter,
    thread: &str,
    dedupe_key: &str,
) -> std::result::Result<(), String> {
    let fail = |e: Error| e.to_string();
    let Admission::Admitted { mut lock, .. } = a
        .admit(&Admit::new(thread, dedupe_key))
        .await
        .map_err(fail)?
    else {
        return Err(format!("{dedupe_key} on {thread} was not admitted"));
    };
    let key = format!("thread-state:{thread}");
    let n = thread_count(a.get_json(&key).await.map_err(fail)?);
    let state = serde_json::to_vec(&json!({ "n": n + 1 })).map_err(|e| e.to_string())?;
    let ttl = Some(Duration::from_secs(86_400));
    if a.set_fenced(&lock, &key, &state, ttl).await.map_err(fail)? != FencedWrite::Stored {
        return Err(format!("the fenced write on {thread} was stale"));
    }
    match a
        .release_or_next(&mut lock, DEFAULT_LOCK_TTL)
        .await
        .map_err(fail)?
    {
        Handoff::Released => Ok(()),
        other => Err(format!("release_or_next on {thread}: {other:?}")),
    }
}

/// [`message_via_dispatch`] with the handler's read folded into the admit (`Admit::read`)
/// and its fenced write into the handoff (`release_or_next_with`): two round trips.
async fn message_via_fused_dispatch(
    a: &DurableObjectAdapter,
    thread: &str,
    dedupe_key: &str,
) -> std::result::Result<(), String> {
    let fail = |e: Error| e.to_string();
    let key = format!("thread-state:{thread}");
    let Admission::Admitted { mut lock, read, .. } = a
        .admit(&Admit::new(thread, dedupe_key).read(&key))
        .await
        .map_err(fail)?
    else {
        return Err(format!("{dedupe_key} on {thread} was not admitted"));
    };
    let state: Option<Value> = match read {
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| e.to_string())?),
        None => None,
    };
    let n = thread_count(state);
    let state = serde_json::to_vec(&json!({ "n": n + 1 })).map_err(|e| e.to_string())?;
    let write = FencedSet {
        key: &key,
        value: &state,
        ttl: Some(Duration::from_secs(86_400)),
    };
    match a
        .release_or_next_with(&mut lock, DEFAULT_LOCK_TTL, write)
        .await
        .map_err(fail)?
    {
        Handoff::Released => Ok(()),
        other => Err(format!("release_or_next_with on {thread}: {other:?}")),
    }
}

/// The same message with the primitive operations, as a bot does without dispatch: claim,
/// subscription, lock, the handler's read and write, look at the queue, release. Seven
/// round trips.
async fn message_via_primitives(
    a: &DurableObjectAdapter,
    thread: &str,
    dedupe_key: &str,
) -> std::result::Result<(), String> {
    let fail = |e: Error| e.to_string();
    let claimed = a
        .set_if_not_exists(dedupe_key, DEDUPE_VALUE, Some(DEFAULT_DEDUPE_TTL))
        .await
        .map_err(fail)?;
    if !claimed {
        return Err(format!("{dedupe_key} was a duplicate"));
    }
    a.is_subscribed(thread).await.map_err(fail)?;
    let Some(lock) = a
        .acquire_lock(thread, DEFAULT_LOCK_TTL)
        .await
        .map_err(fail)?
    else {
        return Err(format!("{thread} was locked"));
    };
    let key = format!("thread-state:{thread}");
    let n = thread_count(a.get_json(&key).await.map_err(fail)?);
    let ttl = Some(Duration::from_secs(86_400));
    a.set_json(&key, &json!({ "n": n + 1 }), ttl)
        .await
        .map_err(fail)?;
    if a.dequeue(thread).await.map_err(fail)?.is_some() {
        return Err(format!("{thread} had a queued message"));
    }
    a.release_lock(&lock).await.map_err(fail)
}

fn thread_count(state: Option<Value>) -> u64 {
    state
        .as_ref()
        .and_then(|s| s.get("n"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// `cycles` new messages in this one request on one adapter, `concurrency` at a time, each
/// on thread `<prefix>thread-<i % threads>` with a dedupe key of its own; answers the
/// elapsed milliseconds and the round trips the adapter made.
async fn dispatch_cycles(env: &Env, c: DispatchCycles) -> std::result::Result<Value, Error> {
    let a = Rc::new(adapter(env, &c.config)?);
    let mode = match c.mode.as_str() {
        "dispatch" => 0,
        "fused" => 1,
        "primitives" => 2,
        other => return Err(Error::invalid_input(format!("no mode {other:?}"))),
    };
    // Dedupe keys never repeat across requests, so no message of a later round is a duplicate.
    let run = format!(
        "{}-{:x}",
        Date::now().as_millis(),
        (js_sys::Math::random() * 1e15) as u64
    );
    let next = Rc::new(Cell::new(0u32));
    let started = Date::now().as_millis();
    let before = a.backend().round_trips();
    let workers = js_sys::Array::new();
    for _ in 0..c.concurrency.max(1) {
        let (a, next, prefix, run) = (a.clone(), next.clone(), c.prefix.clone(), run.clone());
        let (total, threads) = (c.cycles, c.threads.max(1));
        workers.push(&future_to_promise(async move {
            while next.get() < total {
                let i = next.get();
                next.set(i + 1);
                let thread = format!("{prefix}thread-{}", i % threads);
                let key = format!("dedupe:bench:{run}:{i}");
                let done = match mode {
                    0 => message_via_dispatch(&a, &thread, &key).await,
                    1 => message_via_fused_dispatch(&a, &thread, &key).await,
                    _ => message_via_primitives(&a, &thread, &key).await,
                };
                done.map_err(|e| JsValue::from_str(&e))?;
            }
            Ok(JsValue::UNDEFINED)
        }));
    }
    JsFuture::from(js_sys::Promise::all(&workers))
        .await
        .map_err(|e| Error::invalid_input(e.as_string().unwrap_or_default()))?;
    Ok(json!({
        "cycles": c.cycles,
        "ms": Date::now().as_millis() - started,
        "round_trips": a.backend().round_trips() - before,
    }))
}

fn query(req: &Request, name: &str) -> Option<String> {
    req.url()
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: worker::Context) -> Result<Response> {
    let path = req.path();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    match (req.method(), parts.as_slice()) {
        (Method::Get, ["ping"]) => Response::ok("ok"),
        (Method::Post, ["adapter"]) => {
            let s: Script = req.json().await?;
            script(&env, s).await
        }
        (Method::Post, ["concurrent"]) => {
            let s: Script = req.json().await?;
            concurrent_script(&env, s).await
        }
        (Method::Post, ["kept-adapter"]) => {
            let s: Script = req.json().await?;
            kept_script(&env, s).await
        }
        (Method::Post, ["cycle"]) => {
            let c: Cycle = req.json().await?;
            let result = match adapter(&env, &c.config) {
                Ok(a) => cycle(&a, &c.thread).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => Response::from_json(&v),
                Err(e) => Ok(Response::from_json(&err_json(&e))?.with_status(500)),
            }
        }
        (Method::Post, ["cycles"]) => {
            let c: Cycles = req.json().await?;
            match cycles(&env, c).await {
                Ok(v) => Response::from_json(&v),
                Err(e) => Ok(Response::from_json(&err_json(&e))?.with_status(500)),
            }
        }
        (Method::Post, ["dispatch-cycles"]) => {
            let c: DispatchCycles = req.json().await?;
            match dispatch_cycles(&env, c).await {
                Ok(v) => Response::from_json(&v),
                Err(e) => Ok(Response::from_json(&err_json(&e))?.with_status(500)),
            }
        }
        (Method::Post, ["rpc", object]) => {
            let object = object.to_string();
            let call: RawCall = req.json().await?;
            rpc(&env, &object, call).await
        }
        (Method::Post, ["fetch", object]) => {
            let object = object.to_string();
            let target = query(&req, "path").unwrap_or_else(|| "/v1".to_string());
            let body = req.bytes().await?;
            legacy_fetch(&env, &object, &target, body).await
        }
        #[cfg(feature = "test-routes")]
        (Method::Get, ["cases"]) => conformance::cases(),
        #[cfg(feature = "test-routes")]
        (Method::Post, ["conformance"]) => {
            let run = req.json().await?;
            conformance::run(&env, run).await
        }
        #[cfg(feature = "test-routes")]
        (Method::Post, ["memory-expiry"]) => {
            let run = req.json().await?;
            conformance::memory_expiry(run).await
        }
        #[cfg(feature = "test-routes")]
        (Method::Get, ["inspect", object]) => {
            let version = json!(chat_state_do::protocol::PROTOCOL_VERSION);
            let call = RawCall {
                method: "inspect".into(),
                args: vec![version],
                binding: None,
                session: false,
            };
            let object = object.to_string();
            rpc(&env, &object, call).await
        }
        _ => Response::error("no such route", 404),
    }
}
