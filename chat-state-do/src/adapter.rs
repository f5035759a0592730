//! The adapter (wasm32 only): [`DurableObjectBackend`], the storage logic that calls
//! [`ChatStateDO`](crate::ChatStateDO) objects over Workers RPC from inside a Worker
//! ([`protocol`](crate::protocol)), and [`DurableObjectAdapter`], that backend behind core's
//! rule layer.

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chat_state_core::dispatch::{DEDUPE_VALUE, FencedSet};
use chat_state_core::{
    AdmitOutcome, AdmitRequest, Backend, Checked, Error, ErrorKind, FencedWrite, Handoff,
    ListOptions, Lock, LockRequest, Operation, QueueEntry, Result, WhenBusy, validate,
};
use js_sys::Uint8Array;
use wasm_bindgen::{JsCast, JsValue};
use worker::send::SendWrapper;
use worker::{Env, ObjectNamespace};

use crate::BACKEND;
use crate::js::js_message;
use crate::protocol::{
    ADMIT_ADMITTED, ADMIT_DROPPED, ADMIT_DUPLICATE, ADMIT_QUEUED, HANDOFF_NEXT, HANDOFF_NOT_HOLDER,
    HANDOFF_RELEASED,
};
use crate::routing::{KeyRouteFn, Router, ShardFn, thread_of_key};
use crate::transport::{Call, Transport};
#[cfg(feature = "test-introspection")]
use chat_state_core::SharedClock;

/// The default object name when none is configured (the same as the TypeScript package).
pub const DEFAULT_OBJECT_NAME: &str = "default";

/// A [`StateAdapter`](chat_state_core::StateAdapter) backed by
/// [`ChatStateDO`](crate::ChatStateDO) objects: [`DurableObjectBackend`] behind core's rule
/// layer, which validates inputs, checks the adapter is open, draws lock tokens and computes
/// `Lock::expires_at` before any call leaves the Worker.
///
/// Build it per request (it is cheap: no I/O until the first operation) with
/// [`DurableObjectBackend::builder`] or [`DurableObjectBackend::from_env`].
/// [`DurableObjectBackend::router`] is reached through `adapter.backend().router()`.
pub type DurableObjectAdapter = Checked<DurableObjectBackend>;

/// The storage logic of [`DurableObjectAdapter`]: each operation is one RPC call to the
/// object that owns its thread or key.
///
/// The adapter keeps a stub per object, opens a session with an object it calls often, and
/// sends the operations its tasks issue to one object at the same moment as one batch (see
/// the crate docs, "Transport"). A stub whose call failed in the runtime is dropped and the
/// next call gets a fresh one, as Cloudflare advises for stubs that may be broken. Inputs
/// arrive validated (the rule layer checks them; the object checks them again, since calls
/// can reach it without this adapter).
pub struct DurableObjectBackend {
    router: Router,
    /// Wrapped like the worker crate's own handles: wasm32 Workers are single-threaded, and
    /// the adapter stays `Send + Sync` for code that shares it as `Arc<dyn StateAdapter>`.
    transport: SendWrapper<Rc<Transport>>,
    /// Test-only: the clock for rule 12 and for the objects (passed with every call).
    #[cfg(feature = "test-introspection")]
    test_clock: Option<SharedClock>,
}

impl fmt::Debug for DurableObjectBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableObjectBackend")
            .field("router", &self.router)
            .field("location_hint", &self.transport.location_hint())
            .field("objects", &self.transport.objects())
            .finish_non_exhaustive()
    }
}

/// Configures a [`DurableObjectAdapter`]; see [`DurableObjectBackend::builder`].
#[derive(Debug)]
pub struct DurableObjectAdapterBuilder {
    namespace: ObjectNamespace,
    router: Router,
    location_hint: Option<String>,
    jurisdiction: Option<String>,
    #[cfg(feature = "test-introspection")]
    test_clock: Option<SharedClock>,
}

impl DurableObjectAdapterBuilder {
    /// A builder over the namespace binding (`env.durable_object("CHAT_STATE")?`); the same
    /// as [`DurableObjectBackend::builder`].
    pub fn new(namespace: ObjectNamespace) -> Self {
        Self {
            namespace,
            router: Router::new(DEFAULT_OBJECT_NAME),
            location_hint: None,
            jurisdiction: None,
            #[cfg(feature = "test-introspection")]
            test_clock: None,
        }
    }

    /// The default object's name (default [`DEFAULT_OBJECT_NAME`]). Cache and list keys go
    /// there unless a key router says otherwise; with no shard function, everything does.
    pub fn object_name(mut self, name: impl Into<String>) -> Self {
        self.router = self.router.with_default_object(name);
        self
    }

    /// Sends thread-scoped operations (subscriptions, locks, queues) to the object named
    /// `shard(thread_id)`; see [`routing::hashed_shards`](crate::routing::hashed_shards).
    pub fn shard_key(mut self, shard: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.router = self.router.with_shard_key(Arc::new(shard) as ShardFn);
        self
    }

    /// Sends cache and list keys that `route` maps to a thread id to that thread's shard.
    pub fn key_route(
        mut self,
        route: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.router = self.router.with_key_route(Arc::new(route) as KeyRouteFn);
        self
    }

    /// The ready-made key router: `thread-state:<id>`, `msg-history:<id>`,
    /// `active-turn:<id>` and `abort-turn:<id>` follow thread `<id>`
    /// ([`thread_of_key`]).
    pub fn route_thread_keys(self) -> Self {
        self.key_route(thread_of_key)
    }

    /// Asks the runtime to create new objects near this location (`"weur"`, `"enam"`, ...).
    pub fn location_hint(mut self, hint: impl Into<String>) -> Self {
        self.location_hint = Some(hint.into());
        self
    }

    /// Keeps the objects (and their data) inside a jurisdiction (`"eu"`, `"fedramp"`).
    pub fn jurisdiction(mut self, jurisdiction: impl Into<String>) -> Self {
        self.jurisdiction = Some(jurisdiction.into());
        self
    }

    /// Test-only (feature `test-introspection`): read time from `clock` instead of
    /// `Date.now()`, both here (the `expires_at` of acquired locks) and in the objects: every
    /// call passes the clock's time as its last argument, which objects built with the same
    /// feature use as their time for that call. Objects built without the feature reject
    /// such calls.
    #[cfg(feature = "test-introspection")]
    pub fn test_clock(mut self, clock: SharedClock) -> Self {
        self.test_clock = Some(clock);
        self
    }

    /// The adapter, open. Fails with [`ErrorKind::InvalidInput`] if the default object name
    /// is not a valid key, or if the runtime rejects the jurisdiction.
    pub fn build(self) -> Result<DurableObjectAdapter> {
        validate::key(
            BACKEND,
            Operation::Open,
            "object name",
            self.router.default_object(),
        )?;
        let namespace = match &self.jurisdiction {
            Some(j) => jurisdiction_namespace(&self.namespace, j)?,
            None => self.namespace,
        };
        Ok(Checked::new(DurableObjectBackend {
            transport: SendWrapper::new(Transport::new(namespace, self.location_hint)),
            router: self.router,
            #[cfg(feature = "test-introspection")]
            test_clock: self.test_clock,
        }))
    }
}

/// `namespace.jurisdiction(j)`: the worker crate has no binding for it, so call the JS method.
fn jurisdiction_namespace(namespace: &ObjectNamespace, j: &str) -> Result<ObjectNamespace> {
    let fail = |what: String| {
        Error::invalid_input(format!(
            "cannot restrict the namespace to jurisdiction {j:?}: {what}"
        ))
        .context(BACKEND, Operation::Open)
    };
    let ns: &JsValue = namespace.as_ref();
    let method = js_sys::Reflect::get(ns, &JsValue::from_str("jurisdiction"))
        .map_err(|e| fail(js_message(&e)))?
        .dyn_into::<js_sys::Function>()
        .map_err(|_| fail("this runtime's namespace has no jurisdiction() method".into()))?;
    let sub = method
        .call1(ns, &JsValue::from_str(j))
        .map_err(|e| fail(js_message(&e)))?;
    Ok(ObjectNamespace::unchecked_from_js(sub))
}

impl DurableObjectBackend {
    /// A builder over the namespace binding (`env.durable_object("CHAT_STATE")?`).
    pub fn builder(namespace: ObjectNamespace) -> DurableObjectAdapterBuilder {
        DurableObjectAdapterBuilder::new(namespace)
    }

    /// An adapter with defaults over the binding named `binding` in `env`.
    pub fn from_env(env: &Env, binding: &str) -> Result<DurableObjectAdapter> {
        let namespace = env.durable_object(binding).map_err(|e| {
            Error::invalid_input(format!(
                "no Durable Object namespace bound as {binding:?} ({e}); add it to \
                 wrangler.toml under [[durable_objects.bindings]]"
            ))
            .context(BACKEND, Operation::Open)
        })?;
        Self::builder(namespace).build()
    }

    /// The routing rules in use.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Round trips to objects this adapter has made so far: one per call sent alone, one per
    /// batch of concurrent calls, and one more for a call sent again on a fresh stub. A
    /// diagnostic (the tests and the benchmark count calls per operation with it).
    pub fn round_trips(&self) -> u64 {
        self.transport.round_trips()
    }

    /// The test clock's time to pass with a call, if there is one.
    fn test_now(&self) -> Option<f64> {
        #[cfg(feature = "test-introspection")]
        if let Some(clock) = &self.test_clock {
            return Some(clock.now_ms() as f64);
        }
        None
    }

    /// A thread-scoped call (subscriptions, locks, queues): to the thread's object.
    async fn thread_call(&self, thread_id: &str, call: Call) -> Result<JsValue> {
        let object = self.router.object_for_thread(thread_id);
        self.transport.call(&object, call).await
    }

    /// `admit` on the thread's object, claiming the dedupe key in the same call when it
    /// routes there too (else first, on its own object: see `Backend::admit`), and reading
    /// `read` (which the caller checked routes to the thread's object) when admitted.
    async fn admit_call(
        &self,
        request: &AdmitRequest<'_>,
        read: Option<&str>,
    ) -> Result<(AdmitOutcome, Option<Vec<u8>>)> {
        let thread = request.lock.lock_id;
        let (entry, max_size, bytes) = match request.when_busy {
            WhenBusy::Drop => (JsValue::NULL, JsValue::NULL, 0),
            WhenBusy::Queue { entry, max_size } => {
                let text = entry.to_json()?;
                let len = text.len();
                (str_js(&text), JsValue::from_f64(*max_size as f64), len)
            }
        };
        let object = self.router.object_for_thread(thread);
        let together = self.router.object_for_key(request.dedupe_key) == object;
        let (key, key_ttl) = if together {
            (str_js(request.dedupe_key), ttl_js(request.dedupe_ttl))
        } else {
            let ttl = Some(request.dedupe_ttl);
            if !Backend::set_if_not_exists(self, request.dedupe_key, DEDUPE_VALUE, ttl).await? {
                return Ok((AdmitOutcome::Duplicate, None));
            }
            (JsValue::NULL, JsValue::NULL)
        };
        let args = vec![
            str_js(thread),
            key,
            key_ttl,
            ttl_js(request.lock.ttl),
            str_js(request.lock.token),
            entry,
            max_size,
            read.map_or(JsValue::NULL, str_js),
        ];
        let call = Call::new("admit", args, self.test_now()).carrying(bytes);
        self.transport
            .call(&object, call)
            .await
            .and_then(admit_outcome)
    }

    /// A cache or list call: to the object the key routes to.
    async fn key_call(&self, key: &str, call: Call) -> Result<JsValue> {
        let object = self.router.object_for_key(key);
        self.transport.call(&object, call).await
    }
}

fn str_js(s: &str) -> JsValue {
    JsValue::from_str(s)
}

fn ttl_js(t: Duration) -> JsValue {
    JsValue::from_f64(validate::duration_ms(t) as f64)
}

fn optional_ttl_js(t: Option<Duration>) -> JsValue {
    t.map_or(JsValue::NULL, ttl_js)
}

/// A copy of the value the runtime may serialize whenever it likes; a view into wasm memory
/// would carry the whole memory and could change under it.
fn bytes_js(value: &[u8]) -> JsValue {
    Uint8Array::new_from_slice(value).into()
}

/// A result of a shape this protocol never answers: the class is not this version's.
fn unexpected(what: &str, v: &JsValue) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "the Durable Object answered {v:?} where {what} was expected; is the binding's class \
             chat_state_do::ChatStateDO of the same version as this Worker?"
        ),
    )
}

fn boolean(v: JsValue) -> Result<bool> {
    v.as_bool().ok_or_else(|| unexpected("a boolean", &v))
}

fn count(v: JsValue) -> Result<usize> {
    match v.as_f64() {
        Some(n) if n >= 0.0 && n.fract() == 0.0 => Ok(n as usize),
        _ => Err(unexpected("a count", &v)),
    }
}

/// Stored bytes as the object answers them: an `ArrayBuffer` (SQL's BLOB), or text written
/// into the table by something other than chat-state.
fn bytes(v: &JsValue) -> Result<Vec<u8>> {
    if let Some(buffer) = v.dyn_ref::<js_sys::ArrayBuffer>() {
        return Ok(Uint8Array::new(buffer).to_vec());
    }
    if let Some(view) = v.dyn_ref::<Uint8Array>() {
        return Ok(view.to_vec());
    }
    if let Some(text) = v.as_string() {
        return Ok(text.into_bytes());
    }
    Err(Error::corrupt(format!(
        "a stored value has an unexpected type ({v:?}); expected bytes"
    )))
}

fn nothing(_: JsValue) -> Result<()> {
    Ok(())
}

/// A fence as the object answers it: a whole number from 1.
fn fence(v: &JsValue) -> Result<u64> {
    match v.as_f64() {
        Some(fence) if fence >= 1.0 && fence.fract() == 0.0 => Ok(fence as u64),
        _ => Err(unexpected("a fence", v)),
    }
}

/// A queue entry the object removed from a queue, as its stored JSON text.
fn removed_entry(v: &JsValue) -> Result<QueueEntry> {
    let text = v.as_string().ok_or_else(|| {
        Error::corrupt(format!(
            "a stored queue entry is not text ({v:?}); it was removed from the queue"
        ))
    })?;
    // Lone surrogates (from a TypeScript writer) decode as U+FFFD.
    chat_state_core::json::from_json_slice(text.as_bytes()).map_err(|e| {
        Error::corrupt(format!(
            "a stored queue entry is not valid JSON ({e}); it was removed from the queue"
        ))
    })
}

/// A dispatch answer (`[tag, ...]`): the tag and the array.
fn tagged(v: JsValue, what: &str) -> Result<(String, js_sys::Array)> {
    let a = v
        .dyn_into::<js_sys::Array>()
        .map_err(|v| unexpected(what, &v))?;
    match a.get(0).as_string() {
        Some(tag) => Ok((tag, a)),
        None => Err(unexpected(what, &a)),
    }
}

/// An `admit` answer, with the read value of an admitted message.
fn admit_outcome(v: JsValue) -> Result<(AdmitOutcome, Option<Vec<u8>>)> {
    let (tag, a) = tagged(v, "an admit answer")?;
    Ok(match tag.as_str() {
        ADMIT_DUPLICATE => (AdmitOutcome::Duplicate, None),
        ADMIT_DROPPED => (AdmitOutcome::Dropped, None),
        ADMIT_QUEUED => (
            AdmitOutcome::Queued {
                depth: count(a.get(1))?,
            },
            None,
        ),
        ADMIT_ADMITTED => {
            let admitted = AdmitOutcome::Admitted {
                fence: fence(&a.get(1))?,
                subscribed: boolean(a.get(2))?,
            };
            let value = a.get(3);
            let read = if value.is_null() || value.is_undefined() {
                None
            } else {
                Some(bytes(&value)?)
            };
            (admitted, read)
        }
        _ => return Err(unexpected("an admit answer", &a)),
    })
}

fn handoff(v: JsValue) -> Result<Handoff> {
    let (tag, a) = tagged(v, "a releaseOrNext answer")?;
    Ok(match tag.as_str() {
        HANDOFF_NEXT => Handoff::Next(removed_entry(&a.get(1))?),
        HANDOFF_RELEASED => Handoff::Released,
        HANDOFF_NOT_HOLDER => Handoff::NotHolder,
        _ => return Err(unexpected("a releaseOrNext answer", &a)),
    })
}

impl Backend for DurableObjectBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// `Date.now()` (the system clock on wasm32), or the test clock if one is set.
    fn now_ms(&self) -> u64 {
        #[cfg(feature = "test-introspection")]
        if let Some(clock) = &self.test_clock {
            return clock.now_ms();
        }
        chat_state_core::Clock::now_ms(&chat_state_core::SystemClock)
    }

    // `connect` and `close` keep the defaults: objects are created on first use, and the
    // adapter holds nothing that needs releasing.

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let call = Call::new("subscribe", vec![str_js(thread_id)], self.test_now());
        self.thread_call(thread_id, call).await.and_then(nothing)
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let call = Call::new("unsubscribe", vec![str_js(thread_id)], self.test_now());
        self.thread_call(thread_id, call).await.and_then(nothing)
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let call = Call::new("isSubscribed", vec![str_js(thread_id)], self.test_now());
        self.thread_call(thread_id, call).await.and_then(boolean)
    }

    /// The object stores the layer's token and keeps its own expiry, counted from the
    /// call's arrival: later than `request.expires_at`, which the layer read before sending
    /// (contract rule 12).
    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let args = vec![
            str_js(request.lock_id),
            ttl_js(request.ttl),
            str_js(request.token),
        ];
        let call = Call::new("acquireLock", args, self.test_now());
        let v = self.thread_call(request.lock_id, call).await?;
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        fence(&v).map(Some)
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let args = vec![str_js(&lock.thread_id), str_js(&lock.token)];
        let call = Call::new("releaseLock", args, self.test_now());
        self.thread_call(&lock.thread_id, call)
            .await
            .and_then(nothing)
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        let args = vec![
            str_js(request.lock_id),
            str_js(request.token),
            ttl_js(request.ttl),
        ];
        let call = Call::new("extendLock", args, self.test_now());
        self.thread_call(request.lock_id, call)
            .await
            .and_then(boolean)
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        let call = Call::new("forceReleaseLock", vec![str_js(lock_id)], self.test_now());
        self.thread_call(lock_id, call).await.and_then(nothing)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let call = Call::new("get", vec![str_js(key)], self.test_now());
        let v = self.key_call(key, call).await?;
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        bytes(&v).map(Some)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let args = vec![str_js(key), bytes_js(value), optional_ttl_js(ttl)];
        let call = Call::new("set", args, self.test_now()).carrying(value.len());
        self.key_call(key, call).await.and_then(nothing)
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let args = vec![str_js(key), bytes_js(value), optional_ttl_js(ttl)];
        let call = Call::new("setIfNotExists", args, self.test_now()).carrying(value.len());
        self.key_call(key, call).await.and_then(boolean)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let call = Call::new("delete", vec![str_js(key)], self.test_now());
        self.key_call(key, call).await.and_then(nothing)
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let max = options
            .max_length
            .map_or(JsValue::NULL, |n| JsValue::from_f64(n as f64));
        let args = vec![
            str_js(key),
            bytes_js(value),
            max,
            optional_ttl_js(options.ttl),
        ];
        let call = Call::new("appendToList", args, self.test_now()).carrying(value.len());
        self.key_call(key, call).await.and_then(nothing)
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let call = Call::new("getList", vec![str_js(key)], self.test_now());
        let v = self.key_call(key, call).await?;
        let items = v
            .dyn_into::<js_sys::Array>()
            .map_err(|v| unexpected("an array", &v))?;
        items.iter().map(|item| bytes(&item)).collect()
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let text = entry.to_json()?;
        let args = vec![
            str_js(thread_id),
            str_js(&text),
            JsValue::from_f64(max_size as f64),
        ];
        let call = Call::new("enqueue", args, self.test_now()).carrying(text.len());
        self.thread_call(thread_id, call).await.and_then(count)
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let call = Call::new("dequeue", vec![str_js(thread_id)], self.test_now());
        let v = self.thread_call(thread_id, call).await?;
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        removed_entry(&v).map(Some)
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let call = Call::new("queueDepth", vec![str_js(thread_id)], self.test_now());
        self.thread_call(thread_id, call).await.and_then(count)
    }

    const ATOMIC_DISPATCH: bool = true;

    /// One `admit` call when the dedupe key and the thread route to the same object (always
    /// with the default routing): claim, lock and queue in one atomic step of that object.
    ///
    /// When they route to different objects (shards without a key router for the dedupe
    /// key), no single object can do both, and it takes two calls: `setIfNotExists` on the
    /// key's object, then `admit` without a key (lock, subscription, queue) on the thread's.
    /// That form is **not atomic across the two objects**: a Worker that stops between them
    /// (or a failed second call) leaves the message claimed but neither handled nor queued,
    /// and its redelivery is a duplicate, so the message is lost. Claiming first is the
    /// safer order of the two: locking first could leave a queued entry whose claim failed,
    /// and handle the message twice.
    async fn admit(&self, request: &AdmitRequest<'_>) -> Result<AdmitOutcome> {
        self.admit_call(request, None)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// `admit` with the read of `read` in the same call when the key routes to the thread's
    /// object (always with the default routing; with shards, through a key router such as
    /// `route_thread_keys`); otherwise the admit, then a `get` on the key's object.
    async fn admit_and_read(
        &self,
        request: &AdmitRequest<'_>,
        read: &str,
    ) -> Result<(AdmitOutcome, Option<Vec<u8>>)> {
        let thread = self.router.object_for_thread(request.lock.lock_id);
        if self.router.object_for_key(read) == thread {
            return self.admit_call(request, Some(read)).await;
        }
        let (outcome, _) = self.admit_call(request, None).await?;
        let value = match outcome {
            AdmitOutcome::Admitted { .. } => Backend::get(self, read).await?,
            _ => None,
        };
        Ok((outcome, value))
    }

    /// One `releaseOrNext` call to the thread's object. As with `extend_lock`, the object
    /// moves the expiry to its own now + TTL, no earlier than `request.expires_at`.
    async fn release_or_next(&self, request: &LockRequest<'_>) -> Result<Handoff> {
        // The write's four slots are sent empty: a test clock's time goes after them.
        let none = JsValue::NULL;
        let args = vec![
            str_js(request.lock_id),
            str_js(request.token),
            ttl_js(request.ttl),
            none.clone(),
            none.clone(),
            none.clone(),
            none,
        ];
        let call = Call::new("releaseOrNext", args, self.test_now());
        self.thread_call(request.lock_id, call)
            .await
            .and_then(handoff)
    }

    /// One `releaseOrNext` call carrying the fenced write when the write's key routes to the
    /// thread's object (always with the default routing; with shards, the thread's state
    /// through `route_thread_keys`); otherwise `set_fenced` on the key's object, then
    /// `release_or_next`, two calls as core's default makes them.
    async fn release_or_next_with(
        &self,
        request: &LockRequest<'_>,
        lock: &Lock,
        write: &FencedSet<'_>,
    ) -> Result<Handoff> {
        let object = self.router.object_for_thread(request.lock_id);
        if self.router.object_for_key(write.key) != object {
            let written =
                Backend::set_fenced(self, lock, write.key, write.value, write.ttl).await?;
            if written == FencedWrite::Stale {
                return Ok(Handoff::NotHolder);
            }
            return Backend::release_or_next(self, request).await;
        }
        let args = vec![
            str_js(request.lock_id),
            str_js(request.token),
            ttl_js(request.ttl),
            str_js(write.key),
            bytes_js(write.value),
            optional_ttl_js(write.ttl),
            JsValue::from_f64(lock.fence as f64),
        ];
        let call = Call::new("releaseOrNext", args, self.test_now()).carrying(write.value.len());
        self.transport.call(&object, call).await.and_then(handoff)
    }

    /// One `setFenced` call to the key's object, which keeps the key's fence record.
    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let args = vec![
            str_js(key),
            bytes_js(value),
            optional_ttl_js(ttl),
            str_js(&lock.thread_id),
            str_js(&lock.token),
            JsValue::from_f64(lock.fence as f64),
        ];
        let call = Call::new("setFenced", args, self.test_now()).carrying(value.len());
        let stored = self.key_call(key, call).await.and_then(boolean)?;
        Ok(if stored {
            FencedWrite::Stored
        } else {
            FencedWrite::Stale
        })
    }
}
