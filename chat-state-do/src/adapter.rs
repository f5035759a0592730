//! The adapter (wasm32 only): [`DurableObjectBackend`], the storage logic that sends
//! [`protocol`](crate::protocol) requests to [`ChatStateDO`](crate::ChatStateDO) objects from
//! inside a Worker, and [`DurableObjectAdapter`], that backend behind core's rule layer.

use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{
    Backend, Checked, Error, ErrorKind, ListOptions, Lock, LockRequest, Operation, QueueEntry,
    Result, validate,
};
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};
use worker::{Env, Method, ObjectNamespace, RequestInit};

use crate::BACKEND;
use crate::protocol::{Acquired, KIND_PROTOCOL_MISMATCH, REQUEST_URL, Request, WireError, b64};
use crate::routing::{KeyRouteFn, Router, ShardFn, thread_of_key};
#[cfg(feature = "test-introspection")]
use chat_state_core::SharedClock;

/// The default object name when none is configured (the same as the TypeScript package).
pub const DEFAULT_OBJECT_NAME: &str = "default";

/// A [`StateAdapter`](chat_state_core::StateAdapter) backed by
/// [`ChatStateDO`](crate::ChatStateDO) objects: [`DurableObjectBackend`] behind core's rule
/// layer, which validates inputs, checks the adapter is open, draws lock tokens and computes
/// `Lock::expires_at` before any request leaves the Worker.
///
/// Build it per request (it is cheap: no I/O until the first operation) with
/// [`DurableObjectBackend::builder`] or [`DurableObjectBackend::from_env`].
/// [`DurableObjectBackend::router`] is reached through `adapter.backend().router()`.
pub type DurableObjectAdapter = Checked<DurableObjectBackend>;

/// The storage logic of [`DurableObjectAdapter`]: each operation is one request to the object
/// that owns its thread or key.
///
/// Every call gets a fresh stub, so a broken stub after an object reset never poisons later
/// calls. Inputs arrive validated (the rule layer checks them; the object checks them again,
/// since requests can reach it without this adapter).
#[derive(Debug)]
pub struct DurableObjectBackend {
    namespace: ObjectNamespace,
    router: Router,
    location_hint: Option<String>,
    /// Test-only: the clock for rule 12 and for the objects (sent with every request).
    #[cfg(feature = "test-introspection")]
    test_clock: Option<SharedClock>,
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
    /// request carries the clock's time in the header
    /// [`TEST_NOW_HEADER`](crate::protocol::TEST_NOW_HEADER), which objects built with the
    /// same feature use as their time for that request. Objects built without the feature
    /// reject such requests.
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
            namespace,
            router: self.router,
            location_hint: self.location_hint,
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

/// The message of a thrown JS value, without the stack trace `Debug` would add.
fn js_message(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(err) => String::from(err.message()),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
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

    /// Sends one request to the object named `object` and decodes its result. Errors carry
    /// no context; the rule layer attaches backend and operation.
    async fn call<T: DeserializeOwned>(&self, object: &str, request: &Request) -> Result<T> {
        let unavailable = |what: &str, e: worker::Error| {
            Error::new(
                ErrorKind::Unavailable,
                format!("{what} Durable Object {object:?} failed: {e}; retry later"),
            )
        };
        let body = serde_json::to_string(request)
            .map_err(|e| Error::invalid_input(format!("cannot encode the request: {e}")))?;
        let stub = match &self.location_hint {
            Some(hint) => self.namespace.get_by_name_with_location_hint(object, hint),
            None => self.namespace.get_by_name(object),
        }
        .map_err(|e| unavailable("getting a stub for", e))?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(JsValue::from_str(&body)));
        #[cfg(feature = "test-introspection")]
        if let Some(clock) = &self.test_clock {
            let headers = worker::Headers::new();
            headers
                .set(
                    crate::protocol::TEST_NOW_HEADER,
                    &clock.now_ms().to_string(),
                )
                .map_err(|e| unavailable("building a request for", e))?;
            init.with_headers(headers);
        }
        let req = worker::Request::new_with_init(REQUEST_URL, &init)
            .map_err(|e| unavailable("building a request for", e))?;
        let mut resp = stub
            .fetch_with_request(req)
            .await
            .map_err(|e| unavailable("calling", e))?;
        let status = resp.status_code();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| unavailable("reading the answer of", e))?;
        if status == 200 {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Backend,
                    format!(
                        "Durable Object {object:?} answered with an unexpected result ({e}); \
                         is the binding's class chat_state_do::ChatStateDO of the same version?"
                    ),
                )
            });
        }
        Err(match serde_json::from_slice::<WireError>(&bytes) {
            Ok(w) if w.kind == KIND_PROTOCOL_MISMATCH => Error::new(ErrorKind::Backend, w.message),
            Ok(w) => Error::new(w.error_kind(), w.message),
            Err(_) => Error::new(
                if status >= 500 {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Backend
                },
                format!(
                    "Durable Object {object:?} answered status {status} with a body that is not \
                     a chat-state error ({:?}); check that the binding's class is \
                     chat_state_do::ChatStateDO",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            ),
        })
    }

    /// A thread-scoped request (subscriptions, locks, queues): to the thread's object.
    async fn thread_call<T: DeserializeOwned>(
        &self,
        thread_id: &str,
        request: Request,
    ) -> Result<T> {
        let object = self.router.object_for_thread(thread_id);
        self.call(&object, &request).await
    }

    /// A cache or list request: to the object the key routes to.
    async fn key_call<T: DeserializeOwned>(&self, key: &str, request: Request) -> Result<T> {
        let object = self.router.object_for_key(key);
        self.call(&object, &request).await
    }
}

fn ttl_ms(t: Duration) -> u64 {
    validate::duration_ms(t)
}

fn decode_b64(s: &str) -> Result<Vec<u8>> {
    b64::decode(s).map_err(Error::corrupt)
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
        let r = Request::Subscribe {
            thread_id: thread_id.into(),
        };
        self.thread_call(thread_id, r).await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let r = Request::Unsubscribe {
            thread_id: thread_id.into(),
        };
        self.thread_call(thread_id, r).await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let r = Request::IsSubscribed {
            thread_id: thread_id.into(),
        };
        self.thread_call(thread_id, r).await
    }

    /// The object stores the layer's token and keeps its own expiry, counted from the
    /// request's arrival: later than `request.expires_at`, which the layer read before
    /// sending (contract rule 12).
    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let r = Request::AcquireLock {
            lock_id: request.lock_id.into(),
            ttl_ms: ttl_ms(request.ttl),
            token: Some(request.token.into()),
        };
        let acquired: Option<Acquired> = self.thread_call(request.lock_id, r).await?;
        match acquired {
            None => Ok(None),
            Some(a) if a.token == request.token => Ok(Some(a.fence)),
            // An object from before tokens were sent draws its own and ignores ours.
            Some(_) => Err(Error::new(
                ErrorKind::Backend,
                "the Durable Object stored a lock token other than the one sent; it runs an \
                 older chat-state-do than this Worker: deploy the Worker and the Durable Object \
                 class from the same chat-state-do version",
            )),
        }
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let r = Request::ReleaseLock {
            lock_id: lock.thread_id.clone(),
            token: lock.token.clone(),
        };
        self.thread_call(&lock.thread_id, r).await
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        let r = Request::ExtendLock {
            lock_id: request.lock_id.into(),
            token: request.token.into(),
            ttl_ms: ttl_ms(request.ttl),
        };
        self.thread_call(request.lock_id, r).await
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        let r = Request::ForceReleaseLock {
            lock_id: lock_id.into(),
        };
        self.thread_call(lock_id, r).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = Request::Get { key: key.into() };
        let v: Option<String> = self.key_call(key, r).await?;
        v.map(|s| decode_b64(&s)).transpose()
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let r = Request::Set {
            key: key.into(),
            value: value.to_vec(),
            ttl_ms: ttl.map(ttl_ms),
        };
        self.key_call(key, r).await
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let r = Request::SetIfNotExists {
            key: key.into(),
            value: value.to_vec(),
            ttl_ms: ttl.map(ttl_ms),
        };
        self.key_call(key, r).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let r = Request::Delete { key: key.into() };
        self.key_call(key, r).await
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let r = Request::AppendToList {
            key: key.into(),
            value: value.to_vec(),
            max_length: options.max_length.map(|n| n as u64),
            ttl_ms: options.ttl.map(ttl_ms),
        };
        self.key_call(key, r).await
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let r = Request::GetList { key: key.into() };
        let items: Vec<String> = self.key_call(key, r).await?;
        items.iter().map(|s| decode_b64(s)).collect()
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let r = Request::Enqueue {
            thread_id: thread_id.into(),
            entry,
            max_size: max_size as u64,
        };
        self.thread_call(thread_id, r).await
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let r = Request::Dequeue {
            thread_id: thread_id.into(),
        };
        self.thread_call(thread_id, r).await
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let r = Request::QueueDepth {
            thread_id: thread_id.into(),
        };
        self.thread_call(thread_id, r).await
    }
}
