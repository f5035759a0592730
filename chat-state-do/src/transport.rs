//! How the adapter's calls reach the objects (wasm32 only).
//!
//! Each call is one RPC method call, `method(version, ...arguments)` as
//! [`protocol`](crate::protocol) spells it. A call's own work in the object takes a few
//! microseconds; what it costs is the runtime's per-call machinery on both sides, so this
//! module spends as little as it can around each call:
//!
//! * **Stubs are kept** per object name (making one hashes the name and opens a new
//!   subrequest per call).
//! * **Sessions**: once an adapter has made [`SESSION_AFTER`] calls to an object, it asks the
//!   object for a session (an RPC target of this caller) and sends later calls on it. A call
//!   on a session skips the runtime's per-request setup on both sides. The request for the
//!   session is pipelined with the call that needs it, so it costs no round trip; a short
//!   Worker request (a few calls per object) never opens one, since opening costs about as
//!   much as a call.
//! * **Batching** (flat combining): calls that tasks of this adapter issue to one object
//!   while another call of the adapter is in flight wait a moment, and the first of them
//!   (the leader) sends them all as one `batch`. Concurrent operations inside a Worker then
//!   cost one round trip and one commit per burst instead of one per operation. A call with
//!   nothing else in flight goes at once, on its own.
//! * **No allocation per await on the JavaScript side**: a call's promise settles into a slot
//!   through one long-lived callback, instead of two closures (each registered with a
//!   finalizer) per call.
//!
//! A stub or session whose call failed in the runtime is dropped, and the next call makes a
//! fresh one, as Cloudflare advises for stubs that may be broken. A call the runtime refused
//! before sending it (a broken stub, or one that belongs to an earlier request of this
//! isolate: an adapter kept across requests) is sent once more on a fresh stub.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use chat_state_core::{Error, ErrorKind, Result};
use js_sys::Array;
use wasm_bindgen::prelude::*;
use worker::ObjectNamespace;

use crate::js::{
    call_args, call1, call2, call3, call4, call5, call6, call7, dispose, flag, js_message,
    open_session, send_batch, stub_target,
};
use crate::protocol::{
    PROTOCOL_VERSION, RuntimeError, classify_runtime_error, decode_error, refused_as_other_request,
};

/// Calls to one object after which the adapter opens a session with it.
pub(crate) const SESSION_AFTER: u32 = 8;

/// Most calls in one `batch`; a longer queue goes as several batches at once.
const MAX_BATCH: usize = 64;

/// Most value bytes in one `batch`, well under the runtime's RPC message limit.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Most objects whose stubs an adapter keeps; a Worker request talks to a handful, but an
/// adapter kept for long must not grow without bound.
const MAX_OBJECTS: usize = 256;

/// Most arguments of any method, after the version (`admit`'s nine).
const MAX_ARGS: usize = 9;

// ---- Settling calls without a closure per call -------------------------------------------

/// One outstanding RPC: its outcome once settled, and the task waiting for it.
#[derive(Default)]
struct Rpc {
    outcome: Option<std::result::Result<JsValue, JsValue>>,
    waker: Option<Waker>,
    /// The waiting future was dropped; the slot is freed when the call settles.
    orphaned: bool,
}

#[derive(Default)]
struct Rpcs {
    slots: Vec<Rpc>,
    free: Vec<u32>,
}

thread_local! {
    static RPCS: RefCell<Rpcs> = RefCell::new(Rpcs::default());
    /// [`PROTOCOL_VERSION`] and the method names as JavaScript values, made once per isolate
    /// rather than once per call.
    static VERSION: JsValue = JsValue::from(PROTOCOL_VERSION);
    static NAMES: RefCell<Vec<(&'static str, JsValue)>> = const { RefCell::new(Vec::new()) };
    /// The one callback every call settles through: `settle(id, ok, value)`.
    static SETTLE: Closure<dyn FnMut(u32, bool, JsValue)> = Closure::new(settle);
}

/// `method` as a JavaScript string.
fn interned(method: &'static str) -> JsValue {
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some((_, v)) = names.iter().find(|(m, _)| *m == method) {
            return v.clone();
        }
        let v = JsValue::from_str(method);
        names.push((method, v.clone()));
        v
    })
}

fn settle(id: u32, ok: bool, value: JsValue) {
    let waker = RPCS.with(|rpcs| {
        let mut rpcs = rpcs.borrow_mut();
        let slot = rpcs.slots.get_mut(id as usize)?;
        if slot.orphaned {
            *slot = Rpc::default();
            rpcs.free.push(id);
            return None;
        }
        slot.outcome = Some(if ok { Ok(value) } else { Err(value) });
        slot.waker.take()
    });
    if let Some(w) = waker {
        w.wake();
    }
}

/// A slot for one RPC; the future answers its outcome.
struct RpcFuture {
    id: u32,
    done: bool,
}

impl RpcFuture {
    fn new() -> Self {
        let id = RPCS.with(|rpcs| {
            let mut rpcs = rpcs.borrow_mut();
            match rpcs.free.pop() {
                Some(id) => id,
                None => {
                    rpcs.slots.push(Rpc::default());
                    (rpcs.slots.len() - 1) as u32
                }
            }
        });
        Self { id, done: false }
    }

    /// Starts the RPC `start(id, settle)`; a synchronous throw means nothing was sent.
    fn start(
        mut self,
        start: impl FnOnce(u32, &JsValue) -> std::result::Result<(), JsValue>,
    ) -> std::result::Result<Self, JsValue> {
        match SETTLE.with(|settle| start(self.id, settle.as_ref())) {
            Ok(()) => Ok(self),
            Err(e) => {
                // Never sent, so never settled: free the slot now.
                let id = self.id;
                RPCS.with(|rpcs| {
                    let mut rpcs = rpcs.borrow_mut();
                    if let Some(slot) = rpcs.slots.get_mut(id as usize) {
                        *slot = Rpc::default();
                        rpcs.free.push(id);
                    }
                });
                self.done = true;
                Err(e)
            }
        }
    }
}

impl Future for RpcFuture {
    type Output = std::result::Result<JsValue, JsValue>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        let ready = RPCS.with(|rpcs| {
            let mut rpcs = rpcs.borrow_mut();
            let Some(slot) = rpcs.slots.get_mut(id as usize) else {
                return Some(Err(JsValue::from_str(
                    "chat-state-do lost track of a call in flight (a bug); retry",
                )));
            };
            match slot.outcome.take() {
                Some(outcome) => {
                    *slot = Rpc::default();
                    rpcs.free.push(id);
                    Some(outcome)
                }
                None => {
                    slot.waker = Some(cx.waker().clone());
                    None
                }
            }
        });
        match ready {
            Some(outcome) => {
                self.done = true;
                Poll::Ready(outcome)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for RpcFuture {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let id = self.id;
        RPCS.with(|rpcs| {
            let mut rpcs = rpcs.borrow_mut();
            let Some(slot) = rpcs.slots.get_mut(id as usize) else {
                return;
            };
            if slot.outcome.is_some() {
                *slot = Rpc::default();
                rpcs.free.push(id);
            } else {
                // Still in flight: whoever settles it frees the slot.
                slot.orphaned = true;
                slot.waker = None;
            }
        });
    }
}

// ---- Calls and batching ---------------------------------------------------------------------

/// One operation as it goes on the wire: `method(version, ...args[, now])`.
pub(crate) struct Call {
    method: &'static str,
    args: Vec<JsValue>,
    /// Value bytes it carries (for the batch size limit).
    bytes: usize,
}

impl Call {
    /// `method(version, ...args)`, plus the test clock's time if there is one.
    pub(crate) fn new(method: &'static str, args: Vec<JsValue>, now: Option<f64>) -> Self {
        let mut all = Vec::with_capacity(args.len() + 2);
        all.push(VERSION.with(JsValue::clone));
        all.extend(args);
        if let Some(now) = now {
            all.push(JsValue::from_f64(now));
        }
        debug_assert!(all.len() <= MAX_ARGS + 2, "{method} has too many arguments");
        Self {
            method,
            args: all,
            bytes: 0,
        }
    }

    /// The same call, noting the bytes of the value it carries.
    pub(crate) fn carrying(mut self, bytes: usize) -> Self {
        self.bytes = bytes;
        self
    }

    /// `[method, ...args]`, as `batch` takes it.
    fn to_array(&self) -> Array {
        let a = Array::new_with_length(self.args.len() as u32 + 1);
        a.set(0, interned(self.method));
        for (i, arg) in self.args.iter().enumerate() {
            a.set(i as u32 + 1, arg.clone());
        }
        a
    }

    /// Sends the call alone on `target`.
    fn send(&self, target: &JsValue) -> std::result::Result<RpcFuture, JsValue> {
        let (t, m) = (target, &interned(self.method));
        RpcFuture::new().start(|id, s| match self.args.as_slice() {
            [a] => call1(t, m, id, s, a),
            [a, b] => call2(t, m, id, s, a, b),
            [a, b, c] => call3(t, m, id, s, a, b, c),
            [a, b, c, d] => call4(t, m, id, s, a, b, c, d),
            [a, b, c, d, e] => call5(t, m, id, s, a, b, c, d, e),
            [a, b, c, d, e, f] => call6(t, m, id, s, a, b, c, d, e, f),
            [a, b, c, d, e, f, g] => call7(t, m, id, s, a, b, c, d, e, f, g),
            // Only the dispatch operations take more; an array costs less than their calls.
            all if all.len() <= MAX_ARGS + 2 => {
                call_args(t, m, id, s, &all.iter().collect::<Array>())
            }
            _ => Err(JsValue::from_str(&format!(
                "chat-state-do sent {} with {} arguments; the adapter never does (a bug)",
                self.method,
                self.args.len()
            ))),
        })
    }
}

/// How a call ended, before it is typed: the object's answer, or a failure that can be
/// handed to every call of a batch.
#[derive(Clone)]
enum Outcome {
    Answer(JsValue),
    Failed(ErrorKind, String),
}

impl Outcome {
    fn failed(e: Error) -> Self {
        Outcome::Failed(e.kind(), e.message().to_owned())
    }

    fn into_result(self) -> Result<JsValue> {
        match self {
            Outcome::Answer(v) => Ok(v),
            Outcome::Failed(kind, message) => Err(Error::new(kind, message)),
        }
    }
}

/// Where a waiting call's outcome lands; the leader fills it and wakes the waiter.
#[derive(Default)]
struct Slot {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    /// The leader is gone without filling the slot.
    abandoned: bool,
}

/// The leader's handle on a waiting call's slot. Dropped unfilled (the leader's future was
/// dropped), it wakes the waiter with an error instead of leaving it hanging.
struct Reply(Rc<RefCell<Slot>>);

impl Reply {
    fn fill(self, outcome: Outcome) {
        let waker = {
            let mut slot = self.0.borrow_mut();
            slot.outcome = Some(outcome);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.borrow_mut();
            if slot.outcome.is_some() {
                return;
            }
            slot.abandoned = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

struct Waiting {
    call: Call,
    reply: Reply,
}

/// Waits for a [`Slot`] to be filled.
struct Wait(Rc<RefCell<Slot>>);

impl Future for Wait {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut slot = self.0.borrow_mut();
        if let Some(outcome) = slot.outcome.take() {
            return Poll::Ready(outcome);
        }
        if slot.abandoned {
            return Poll::Ready(Outcome::Failed(
                ErrorKind::Unavailable,
                "the call was queued behind one that was cancelled before it was sent; retry"
                    .into(),
            ));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Returns to the executor once, so the tasks it has already woken run (and queue their
/// calls) before the leader collects the queue.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What the adapter keeps per object.
#[derive(Default)]
struct Object {
    /// The plain stub's target; `None` until the first send, and again after the runtime
    /// failed a call on it.
    stub: Option<JsValue>,
    /// The session's target, once opened.
    session: Option<JsValue>,
    /// Calls sent so far (counts toward [`SESSION_AFTER`]).
    calls: u32,
    /// Calls waiting for the leader, who is collecting while this is `Some`.
    queue: Option<Vec<Waiting>>,
}

impl Object {
    /// Drops the stub and the session, keeping any queued calls: the next send makes fresh
    /// ones.
    fn forget(&mut self) {
        self.stub = None;
        if let Some(session) = self.session.take() {
            dispose(&session);
        }
        self.calls = 0;
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        self.forget();
    }
}

/// Counts a call in flight for as long as it lives.
struct InFlight<'a>(&'a Cell<u32>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The calls' shared state: one per adapter, kept by the calls in flight too.
pub(crate) struct Transport {
    namespace: ObjectNamespace,
    location_hint: Option<String>,
    /// Per object name. A Worker request talks to a handful of objects (a default one and a
    /// few shards), where a scan beats hashing the name.
    objects: RefCell<Vec<(String, Object)>>,
    /// Calls of this adapter not finished yet, over all objects.
    in_flight: Cell<u32>,
    /// RPC exchanges started (a batch is one), for [`Transport::round_trips`].
    round_trips: Cell<u64>,
}

/// A failed exchange: the thrown value, and whether it was thrown before anything was sent.
type Failed = (bool, JsValue);

impl Transport {
    pub(crate) fn new(namespace: ObjectNamespace, location_hint: Option<String>) -> Rc<Self> {
        Rc::new(Self {
            namespace,
            location_hint,
            objects: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            round_trips: Cell::new(0),
        })
    }

    /// The location hint new stubs get (for `Debug`).
    pub(crate) fn location_hint(&self) -> Option<&str> {
        self.location_hint.as_deref()
    }

    /// RPC exchanges with objects this transport has started: one per call sent alone, one
    /// per batch, and one more for a call sent again on a fresh stub.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.get()
    }

    /// How many objects have a stub kept (for `Debug`).
    pub(crate) fn objects(&self) -> usize {
        self.objects.borrow().len()
    }

    /// Runs `f` on the entry of `object`, making one if there is none.
    fn with_object<R>(&self, object: &str, f: impl FnOnce(&mut Object) -> R) -> R {
        let mut objects = self.objects.borrow_mut();
        let i = match objects.iter().position(|(name, _)| name == object) {
            Some(i) => i,
            None => {
                if objects.len() >= MAX_OBJECTS {
                    // Only idle objects go; queued calls keep theirs.
                    objects.retain(|(_, o)| o.queue.is_some());
                }
                objects.push((object.to_owned(), Object::default()));
                objects.len() - 1
            }
        };
        f(&mut objects[i].1)
    }

    /// Sends `call` to `object` and answers its result. Errors carry no context; the rule
    /// layer attaches backend and operation.
    pub(crate) async fn call(self: &Rc<Self>, object: &str, call: Call) -> Result<JsValue> {
        self.in_flight.set(self.in_flight.get() + 1);
        let _in_flight = InFlight(&self.in_flight);
        // Others may be about to call too, and then a batch pays off; alone, the call goes
        // at once with nothing around it.
        let others = self.in_flight.get() > 1;
        let mut call = Some(call);
        let joined = self.with_object(object, |entry| match &mut entry.queue {
            Some(queue) => {
                let slot = Rc::new(RefCell::new(Slot::default()));
                let call = call.take()?;
                queue.push(Waiting {
                    call,
                    reply: Reply(slot.clone()),
                });
                Some(slot)
            }
            None => {
                if others {
                    entry.queue = Some(Vec::new());
                }
                None
            }
        });
        if let Some(slot) = joined {
            return Wait(slot).await.into_result();
        }
        let Some(call) = call else {
            return Err(Error::new(
                ErrorKind::Backend,
                "chat-state-do lost a call (a bug)",
            ));
        };
        let queued = if others {
            // Let the tasks the executor has already woken run (and queue their calls) first.
            YieldNow(false).await;
            self.with_object(object, |entry| entry.queue.take())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if queued.is_empty() {
            let calls = std::slice::from_ref(&call);
            let started = self.start(object, calls);
            return self
                .finish(object, calls, started)
                .await
                .map_err(|(_, e)| self.failure(object, &e));
        }
        let own = Rc::new(RefCell::new(Slot::default()));
        let mut all = Vec::with_capacity(queued.len() + 1);
        all.push(Waiting {
            call,
            reply: Reply(own.clone()),
        });
        all.extend(queued);
        self.lead(object, all).await;
        Wait(own).await.into_result()
    }

    /// A fresh stub's target for `object`.
    fn fresh_stub(&self, object: &str) -> std::result::Result<JsValue, JsValue> {
        let stub = match &self.location_hint {
            Some(hint) => self.namespace.get_by_name_with_location_hint(object, hint),
            None => self.namespace.get_by_name(object),
        }
        .map_err(|e| JsValue::from_str(&format!("getting a stub failed: {e}")))?;
        Ok(stub_target(&stub.into_rpc::<JsValue>()))
    }

    /// As the leader: sends `queue`, in batches of at most [`MAX_BATCH`] calls and
    /// [`MAX_BATCH_BYTES`], all at once, and hands out the outcomes.
    async fn lead(self: &Rc<Self>, object: &str, queue: Vec<Waiting>) {
        let mut chunks: Vec<Vec<Waiting>> = Vec::new();
        let mut bytes = 0;
        for waiting in queue {
            let full = chunks.last().is_none_or(|c: &Vec<Waiting>| {
                c.len() >= MAX_BATCH || bytes + waiting.call.bytes > MAX_BATCH_BYTES
            });
            if full {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += waiting.call.bytes;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(waiting);
            }
        }
        // Every chunk goes out before the first answer is awaited.
        let mut sent = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let (calls, replies): (Vec<Call>, Vec<Reply>) =
                chunk.into_iter().map(|w| (w.call, w.reply)).unzip();
            sent.push((self.start(object, &calls), calls, replies));
        }
        for (started, calls, replies) in sent {
            let answer = self.finish(object, &calls, started).await;
            self.deliver(object, &calls, replies, answer);
        }
    }

    /// Waits for a started exchange; one the runtime refused before anything was sent goes
    /// once more, on a fresh stub.
    async fn finish(
        &self,
        object: &str,
        calls: &[Call],
        started: std::result::Result<RpcFuture, JsValue>,
    ) -> std::result::Result<JsValue, Failed> {
        let answer = match started {
            Ok(rpc) => rpc.await.map_err(|e| (false, e)),
            Err(e) => Err((true, e)),
        };
        match answer {
            Err((thrown, e)) if thrown || refused_as_other_request(&js_message(&e)) => {
                self.with_object(object, Object::forget);
                match self.start(object, calls) {
                    Ok(rpc) => rpc.await.map_err(|e| (false, e)),
                    Err(e) => Err((true, e)),
                }
            }
            other => other,
        }
    }

    /// Starts the RPC for `calls` on the object's session, or its stub while it has none.
    fn start(&self, object: &str, calls: &[Call]) -> std::result::Result<RpcFuture, JsValue> {
        let target = self.with_object(object, |entry| {
            let stub = match &entry.stub {
                Some(stub) => stub.clone(),
                None => {
                    let stub = self.fresh_stub(object)?;
                    entry.stub = Some(stub.clone());
                    stub
                }
            };
            entry.calls = entry.calls.saturating_add(calls.len() as u32);
            if entry.session.is_none() && entry.calls > SESSION_AFTER {
                // Pipelined: the calls below go to the session the runtime is still opening.
                // A class without sessions is not this version's; its calls fail loudly.
                entry.session = open_session(&stub).ok();
            }
            Ok::<_, JsValue>(entry.session.clone().unwrap_or(stub))
        })?;
        let started = match calls {
            [call] => call.send(&target),
            _ => {
                let batch: Array = calls.iter().map(|c| JsValue::from(c.to_array())).collect();
                RpcFuture::new()
                    .start(|id, settle| send_batch(&target, PROTOCOL_VERSION, &batch, id, settle))
            }
        };
        if started.is_ok() {
            self.round_trips.set(self.round_trips.get() + 1);
        }
        started
    }

    /// The error of a call that threw; a failure of the runtime (not of the operation)
    /// drops the object's stub, which may be broken.
    fn failure(&self, object: &str, e: &JsValue) -> Error {
        let message = js_message(e);
        let error = classify_runtime_error(
            object,
            RuntimeError {
                message: &message,
                retryable: flag(e, "retryable"),
                overloaded: flag(e, "overloaded"),
            },
        );
        if decode_error(&message).is_none() {
            self.with_object(object, Object::forget);
        }
        error
    }

    /// Hands each call of a batch its outcome.
    fn deliver(
        &self,
        object: &str,
        calls: &[Call],
        replies: Vec<Reply>,
        answer: std::result::Result<JsValue, Failed>,
    ) {
        let v = match answer {
            Err((_, e)) => {
                let outcome = Outcome::failed(self.failure(object, &e));
                for reply in replies {
                    reply.fill(outcome.clone());
                }
                return;
            }
            Ok(v) => v,
        };
        if calls.len() == 1 {
            if let Some(reply) = replies.into_iter().next() {
                reply.fill(Outcome::Answer(v));
            }
            return;
        }
        let both = Array::from(&v);
        let (results, failures) = (Array::from(&both.get(0)), Array::from(&both.get(1)));
        let mut outcomes: Vec<Outcome> = (0..calls.len() as u32)
            .map(|i| Outcome::Answer(results.get(i)))
            .collect();
        for failed in failures.iter() {
            let failed = Array::from(&failed);
            let i = failed.get(0).as_f64().unwrap_or(-1.0);
            if let Some(slot) = outcomes.get_mut(i as usize).filter(|_| i >= 0.0) {
                *slot = Outcome::failed(self.failure(object, &failed.get(1)));
            }
        }
        if results.length() as usize != calls.len() {
            let e = Error::new(
                ErrorKind::Backend,
                format!(
                    "Durable Object {object:?} answered a batch of {} calls with {} results; is \
                     its class chat_state_do::ChatStateDO of the same version as this Worker?",
                    calls.len(),
                    results.length()
                ),
            );
            outcomes = vec![Outcome::failed(e); calls.len()];
        }
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            reply.fill(outcome);
        }
    }
}
