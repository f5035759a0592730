//! What a backend implements ([`Backend`]) and the one layer that turns it into a
//! [`StateAdapter`] with every rule enforced ([`Checked`]).
//!
//! A backend is storage logic only. [`Checked`] runs, for every call and in this order:
//! the input rules of [`validate`](crate::validate) (contract rules 2 and 9, before any I/O),
//! the closed check (rule 13), the backend, and error context (backend name and operation on
//! every error the backend returns without them). For `acquire_lock` it also draws the token
//! (rule 10), reads the backend's clock *before* the request and computes `expires_at` from
//! it (rule 12), and builds the [`Lock`]. A backend cannot skip any of it: the public traits
//! are implemented by [`Checked`], not by the backend.
//!
//! ```
//! use std::time::Duration;
//! use chat_state_core::{Backend, Checked, Cache, ErrorKind};
//! # use chat_state_core::{LockRequest, ListOptions, QueueEntry, Result, Lock};
//!
//! #[derive(Debug, Default)]
//! struct NullBackend;
//!
//! impl Backend for NullBackend {
//!     fn name(&self) -> &'static str { "null" }
//!     async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>> { Ok(None) }
//!     // ... the other storage methods ...
//! #   async fn subscribe(&self, _: &str) -> Result<()> { Ok(()) }
//! #   async fn unsubscribe(&self, _: &str) -> Result<()> { Ok(()) }
//! #   async fn is_subscribed(&self, _: &str) -> Result<bool> { Ok(false) }
//! #   async fn acquire_lock(&self, _: &LockRequest<'_>) -> Result<Option<u64>> { Ok(None) }
//! #   async fn release_lock(&self, _: &Lock) -> Result<()> { Ok(()) }
//! #   async fn extend_lock(&self, _: &LockRequest<'_>) -> Result<bool> { Ok(false) }
//! #   async fn force_release_lock(&self, _: &str) -> Result<()> { Ok(()) }
//! #   async fn set(&self, _: &str, _: &[u8], _: Option<Duration>) -> Result<()> { Ok(()) }
//! #   async fn set_if_not_exists(&self, _: &str, _: &[u8], _: Option<Duration>) -> Result<bool> { Ok(false) }
//! #   async fn delete(&self, _: &str) -> Result<()> { Ok(()) }
//! #   async fn append_to_list(&self, _: &str, _: &[u8], _: ListOptions) -> Result<()> { Ok(()) }
//! #   async fn get_list(&self, _: &str) -> Result<Vec<Vec<u8>>> { Ok(vec![]) }
//! #   async fn enqueue(&self, _: &str, _: QueueEntry, _: usize) -> Result<usize> { Ok(1) }
//! #   async fn dequeue(&self, _: &str) -> Result<Option<QueueEntry>> { Ok(None) }
//! #   async fn queue_depth(&self, _: &str) -> Result<usize> { Ok(0) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let state = Checked::new(NullBackend);
//! // The backend never sees the empty key: the layer rejects it, naming backend and operation.
//! let err = state.get("").await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidInput);
//! assert_eq!(err.to_string(), "null: get failed: invalid input: key is empty");
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::dispatch::{
    self, Admission, Admit, Dispatch, FencedSet, FencedWrite, Handoff, WhenBusy,
};
use crate::{
    Cache, Error, ErrorKind, InspectLocks, ListOptions, Lists, Lock, LockInfo, Locks, MaybeSend,
    MaybeSendSync, OpenState, Operation, QueueEntry, Queues, Result, StateAdapter, Subscriptions,
    SystemClock, new_lock_token, validate,
};

/// A lock acquisition or extension as [`Checked`] hands it to a [`Backend`], inputs already
/// validated.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LockRequest<'a> {
    /// The lock id.
    pub lock_id: &'a str,
    /// For an acquisition, the fresh token to store (128 random bits, hex); for an
    /// extension, the caller's token, which must be the current holder's.
    pub token: &'a str,
    /// The requested TTL (non-zero, at most [`MAX_TTL`](crate::validate::MAX_TTL)).
    pub ttl: Duration,
    /// [`Backend::now_ms`] as read just before this call.
    pub now_ms: u64,
    /// `now_ms + ttl`, checked to fit the `i64` millisecond range: the expiry the caller is
    /// told (rule 12). A backend that keeps time itself on the same clock stores it; one that
    /// keeps time elsewhere (Redis `PX`) uses `ttl`.
    pub expires_at: u64,
}

impl<'a> LockRequest<'a> {
    /// A request for `lock_id` with `token` and `ttl`, read at `now_ms`: what [`Checked`]
    /// hands a backend. `expires_at` is computed here; a TTL that overflows the time range
    /// is an invalid-input error naming `backend` and `op`. For wrappers over a [`Backend`]
    /// that pass on a changed request.
    pub fn new(
        backend: &'static str,
        op: Operation,
        lock_id: &'a str,
        token: &'a str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Self> {
        Ok(Self {
            lock_id,
            token,
            ttl,
            now_ms,
            expires_at: validate::expiry_ms(backend, op, now_ms, ttl)?,
        })
    }
}

/// An [`Admit`] as [`Checked`] hands it to a [`Backend`] with native dispatch, inputs
/// already validated.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AdmitRequest<'a> {
    /// The cache key to claim with [`dispatch::DEDUPE_VALUE`] for `dedupe_ttl`.
    pub dedupe_key: &'a str,
    /// How long the claim lives.
    pub dedupe_ttl: Duration,
    /// The thread's lock to take if the claim is new: `lock.lock_id` is the thread id (also
    /// its queue and subscription), with a fresh token, as for
    /// [`Backend::acquire_lock`].
    pub lock: LockRequest<'a>,
    /// What to do when the lock is held.
    pub when_busy: &'a WhenBusy,
}

/// What a [`Backend`]'s native admit did; [`Checked`] turns it into an [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// The claim was live: nothing changed.
    Duplicate,
    /// Claimed; the lock is held and the policy is drop.
    Dropped,
    /// Claimed; the lock is held and the entry was queued: `depth` live entries now.
    Queued {
        /// Live entries after the append.
        depth: usize,
    },
    /// Claimed and the lock taken with this fence (rules of [`Backend::acquire_lock`]).
    Admitted {
        /// The new holder's fence.
        fence: u64,
        /// Whether the thread is subscribed.
        subscribed: bool,
    },
}

fn not_native(backend: &'static str, op: Operation) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "{op} was called on a backend without native dispatch; a backend that implements \
             {op} must also set `ATOMIC_DISPATCH = true`"
        ),
    )
    .context(backend, op)
}

/// The storage logic of a backend: the 18 operations of the contract plus lifecycle, with
/// inputs already validated and the adapter known to be open.
///
/// Implement this, not the public traits: wrap the backend in [`Checked`] and it is a
/// [`StateAdapter`] that keeps every input, lifecycle and lock-construction rule exactly as
/// every other backend does. What is left to the backend is the behaviour SEMANTICS.md
/// describes for each operation (expiry, atomicity, FIFO, fencing), which the conformance
/// suite checks.
///
/// Errors may be returned without context; [`Checked`] attaches the backend's
/// [`name`](Backend::name) and the operation.
///
/// The methods are written as plain `async fn` in an implementation (no `async_trait`): the
/// trait declares them as returning `impl Future + Send` on native targets (no `Send` on
/// `wasm32`), so [`Checked`] awaits them without boxing a future per call.
pub trait Backend: MaybeSendSync {
    /// Short backend name used in errors and logs (`"memory"`, `"sqlite"`, ...).
    fn name(&self) -> &'static str;

    /// The clock that decides `Lock::expires_at`, in Unix milliseconds: read before each
    /// `acquire_lock`/`extend_lock` request. Backends that keep expiry themselves return
    /// their own (injectable) clock; the default is the system clock.
    fn now_ms(&self) -> u64 {
        crate::Clock::now_ms(&SystemClock)
    }

    /// Makes sure the backend is reachable and ready. Called by [`StateAdapter::connect`]
    /// while the adapter is open; idempotent.
    fn connect(&self) -> impl Future<Output = Result<()>> + MaybeSend {
        async { Ok(()) }
    }

    /// Releases resources. Called at most once, by the first [`StateAdapter::close`].
    fn close(&self) -> impl Future<Output = Result<()>> + MaybeSend {
        async { Ok(()) }
    }

    /// [`Subscriptions::subscribe`].
    fn subscribe(&self, thread_id: &str) -> impl Future<Output = Result<()>> + MaybeSend;
    /// [`Subscriptions::unsubscribe`].
    fn unsubscribe(&self, thread_id: &str) -> impl Future<Output = Result<()>> + MaybeSend;
    /// [`Subscriptions::is_subscribed`].
    fn is_subscribed(&self, thread_id: &str) -> impl Future<Output = Result<bool>> + MaybeSend;

    /// Stores `request.token` as the holder of `request.lock_id` if the lock is free or its
    /// holder expired, with a fence strictly greater than every fence issued before for that
    /// id. Returns the fence, or `None` if the lock is held.
    fn acquire_lock(
        &self,
        request: &LockRequest<'_>,
    ) -> impl Future<Output = Result<Option<u64>>> + MaybeSend;
    /// [`Locks::release_lock`]: a no-op unless `lock.token` holds the lock.
    fn release_lock(&self, lock: &Lock) -> impl Future<Output = Result<()>> + MaybeSend;
    /// Moves the expiry of `request.lock_id` to now + `request.ttl` if `request.token` is
    /// the current, unexpired holder; `false` otherwise.
    fn extend_lock(
        &self,
        request: &LockRequest<'_>,
    ) -> impl Future<Output = Result<bool>> + MaybeSend;
    /// [`Locks::force_release_lock`].
    fn force_release_lock(&self, lock_id: &str) -> impl Future<Output = Result<()>> + MaybeSend;

    /// [`Cache::get`].
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + MaybeSend;
    /// [`Cache::set`].
    fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + MaybeSend;
    /// [`Cache::set_if_not_exists`].
    fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool>> + MaybeSend;
    /// [`Cache::delete`].
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + MaybeSend;

    /// [`Lists::append_to_list`].
    fn append_to_list(
        &self,
        key: &str,
        value: &[u8],
        options: ListOptions,
    ) -> impl Future<Output = Result<()>> + MaybeSend;
    /// [`Lists::get_list`].
    fn get_list(&self, key: &str) -> impl Future<Output = Result<Vec<Vec<u8>>>> + MaybeSend;

    /// [`Queues::enqueue`].
    fn enqueue(
        &self,
        thread_id: &str,
        entry: QueueEntry,
        max_size: usize,
    ) -> impl Future<Output = Result<usize>> + MaybeSend;
    /// [`Queues::dequeue`].
    fn dequeue(
        &self,
        thread_id: &str,
    ) -> impl Future<Output = Result<Option<QueueEntry>>> + MaybeSend;
    /// [`Queues::queue_depth`].
    fn queue_depth(&self, thread_id: &str) -> impl Future<Output = Result<usize>> + MaybeSend;

    /// Whether this backend implements [`admit`](Backend::admit),
    /// [`release_or_next`](Backend::release_or_next) and [`set_fenced`](Backend::set_fenced),
    /// each as one atomic step (a backend that cannot in some configuration says so in its
    /// documentation and SEMANTICS.md: Redis Cluster's admit is two steps). When `false` (the
    /// default) [`Checked`] runs the step-by-step versions of [`dispatch`] over the other
    /// operations and never calls those three.
    const ATOMIC_DISPATCH: bool = false;

    /// [`Dispatch::admit`] in one atomic step: claim `request.dedupe_key` if it is not live;
    /// if claimed, take the lock as [`acquire_lock`](Backend::acquire_lock) would (and read
    /// the subscription), or, if it is held, queue (as [`enqueue`](Backend::enqueue)) or
    /// drop by `request.when_busy`.
    fn admit(
        &self,
        request: &AdmitRequest<'_>,
    ) -> impl Future<Output = Result<AdmitOutcome>> + MaybeSend {
        let _ = request;
        async { Err(not_native(self.name(), Operation::Admit)) }
    }

    /// [`admit`](Backend::admit), and when it answers `Admitted`, the value of cache key
    /// `read` (validated), under the new lock. The default reads it with
    /// [`get`](Backend::get) after the admit: a second round trip, which a remote backend
    /// saves by doing both in one step.
    fn admit_and_read(
        &self,
        request: &AdmitRequest<'_>,
        read: &str,
    ) -> impl Future<Output = Result<(AdmitOutcome, Option<Vec<u8>>)>> + MaybeSend {
        async move {
            let outcome = self.admit(request).await?;
            let value = match outcome {
                AdmitOutcome::Admitted { .. } => self.get(read).await?,
                _ => None,
            };
            Ok((outcome, value))
        }
    }

    /// [`Dispatch::release_or_next_with`]: [`set_fenced`](Backend::set_fenced) of `write`
    /// under `lock`, then (unless the write was refused: [`Handoff::NotHolder`])
    /// [`release_or_next`](Backend::release_or_next) of `request` (the same lock). The
    /// default runs them one after the other, two round trips; a backend that does both in
    /// one step overrides it.
    fn release_or_next_with(
        &self,
        request: &LockRequest<'_>,
        lock: &Lock,
        write: &FencedSet<'_>,
    ) -> impl Future<Output = Result<Handoff>> + MaybeSend {
        async move {
            let written = self
                .set_fenced(lock, write.key, write.value, write.ttl)
                .await?;
            if written == FencedWrite::Stale {
                return Ok(Handoff::NotHolder);
            }
            self.release_or_next(request).await
        }
    }

    /// [`Dispatch::release_or_next`] in one atomic step, for `request.token` on
    /// `request.lock_id`: if it is the current, unexpired holder, either remove and return
    /// the oldest live queue entry and move the lock's expiry to `request.expires_at`
    /// (or now + `request.ttl`), or, if the queue has no live entry, delete the lock.
    fn release_or_next(
        &self,
        request: &LockRequest<'_>,
    ) -> impl Future<Output = Result<Handoff>> + MaybeSend {
        let _ = request;
        async { Err(not_native(self.name(), Operation::ReleaseOrNext)) }
    }

    /// [`Dispatch::set_fenced`] in one atomic step: refuse if [`dispatch::is_stale`] holds
    /// for the key's live fence record; otherwise store the value as
    /// [`set`](Backend::set) would and the record (`lock.thread_id`, `lock.fence`) with the
    /// same TTL.
    fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<FencedWrite>> + MaybeSend {
        let _ = (lock, key, value, ttl);
        async { Err(not_native(self.name(), Operation::SetFenced)) }
    }
}

/// Optional backend capability behind [`InspectLocks`]: read a lock's live holder without
/// changing anything. `Checked<B>` implements [`InspectLocks`] when `B` implements this.
pub trait LockInspector: Backend {
    /// [`InspectLocks::lock_info`], the lock id already validated.
    fn lock_info(
        &self,
        lock_id: &str,
    ) -> impl Future<Output = Result<Option<LockInfo>>> + MaybeSend;
}

/// A [`Backend`] behind the rule layer: the only way a backend becomes a [`StateAdapter`].
///
/// Backend-specific methods (statistics, maintenance) are reached through
/// [`Checked::backend`]. `Checked` deliberately does not dereference to `B`: the backend's
/// storage methods share the contract's names, and a call that resolved to them would skip
/// every rule.
#[derive(Debug, Default)]
pub struct Checked<B> {
    backend: B,
    open: OpenState,
}

impl<B: Backend> Checked<B> {
    /// Puts `backend` behind the rule layer, open.
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            open: OpenState::new(),
        }
    }

    /// The backend behind the layer.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether [`StateAdapter::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.open.is_closed()
    }

    /// The steps every operation shares: `rules` (input validation), the closed check, the
    /// backend's call, and context on its errors.
    async fn run<T>(
        &self,
        op: Operation,
        rules: Result<()>,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        rules?;
        self.open.check(self.backend.name(), op)?;
        call.await.map_err(|e| self.context(e, op))
    }

    fn context(&self, e: Error, op: Operation) -> Error {
        e.or_context(self.backend.name(), op)
    }

    fn lock_request<'a>(
        &self,
        op: Operation,
        lock_id: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> Result<LockRequest<'a>> {
        // Read before the request is sent (rule 12): the caller never believes it holds the
        // lock longer than the backend does.
        let now_ms = self.backend.now_ms();
        LockRequest::new(self.backend.name(), op, lock_id, token, ttl, now_ms)
    }
}

impl<B: Backend> From<B> for Checked<B> {
    fn from(backend: B) -> Self {
        Self::new(backend)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: Backend> Subscriptions for Checked<B> {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let rules = validate::subscribe(self.backend.name(), thread_id);
        self.run(
            Operation::Subscribe,
            rules,
            self.backend.subscribe(thread_id),
        )
        .await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let rules = validate::unsubscribe(self.backend.name(), thread_id);
        self.run(
            Operation::Unsubscribe,
            rules,
            self.backend.unsubscribe(thread_id),
        )
        .await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let rules = validate::is_subscribed(self.backend.name(), thread_id);
        self.run(
            Operation::IsSubscribed,
            rules,
            self.backend.is_subscribed(thread_id),
        )
        .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: Backend> Locks for Checked<B> {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        let op = Operation::AcquireLock;
        let name = self.backend.name();
        validate::acquire_lock(name, lock_id, ttl)?;
        self.open.check(name, op)?;
        let token = new_lock_token().map_err(|e| self.context(e, op))?;
        let request = self.lock_request(op, lock_id, &token, ttl)?;
        let expires_at = request.expires_at;
        let fence = self
            .backend
            .acquire_lock(&request)
            .await
            .map_err(|e| self.context(e, op))?;
        Ok(fence.map(|fence| Lock {
            thread_id: lock_id.to_owned(),
            token,
            expires_at,
            fence,
        }))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let rules = validate::release_lock(self.backend.name(), lock);
        self.run(
            Operation::ReleaseLock,
            rules,
            self.backend.release_lock(lock),
        )
        .await
    }

    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        let op = Operation::ExtendLock;
        let name = self.backend.name();
        validate::extend_lock(name, lock, ttl)?;
        self.open.check(name, op)?;
        let request = self.lock_request(op, &lock.thread_id, &lock.token, ttl)?;
        self.backend
            .extend_lock(&request)
            .await
            .map_err(|e| self.context(e, op))
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        let rules = validate::force_release_lock(self.backend.name(), lock_id);
        self.run(
            Operation::ForceReleaseLock,
            rules,
            self.backend.force_release_lock(lock_id),
        )
        .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: Backend> Cache for Checked<B> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let rules = validate::get(self.backend.name(), key);
        self.run(Operation::Get, rules, self.backend.get(key)).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let rules = validate::set(self.backend.name(), key, value, ttl);
        self.run(Operation::Set, rules, self.backend.set(key, value, ttl))
            .await
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let rules = validate::set_if_not_exists(self.backend.name(), key, value, ttl);
        self.run(
            Operation::SetIfNotExists,
            rules,
            self.backend.set_if_not_exists(key, value, ttl),
        )
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let rules = validate::delete(self.backend.name(), key);
        self.run(Operation::Delete, rules, self.backend.delete(key))
            .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: Backend> Lists for Checked<B> {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let rules = validate::append_to_list(self.backend.name(), key, value, &options);
        self.run(
            Operation::AppendToList,
            rules,
            self.backend.append_to_list(key, value, options),
        )
        .await
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let rules = validate::get_list(self.backend.name(), key);
        self.run(Operation::GetList, rules, self.backend.get_list(key))
            .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: Backend> Queues for Checked<B> {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let rules = validate::enqueue(self.backend.name(), thread_id, &entry, max_size);
        self.run(
            Operation::Enqueue,
            rules,
            self.backend.enqueue(thread_id, entry, max_size),
        )
        .await
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let rules = validate::dequeue(self.backend.name(), thread_id);
        self.run(Operation::Dequeue, rules, self.backend.dequeue(thread_id))
            .await
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let rules = validate::queue_depth(self.backend.name(), thread_id);
        self.run(
            Operation::QueueDepth,
            rules,
            self.backend.queue_depth(thread_id),
        )
        .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: Backend> Dispatch for Checked<B> {
    fn atomic_dispatch(&self) -> bool {
        B::ATOMIC_DISPATCH
    }

    async fn admit(&self, message: &Admit<'_>) -> Result<Admission> {
        let op = Operation::Admit;
        let name = self.backend.name();
        validate::admit(name, message)?;
        self.open.check(name, op)?;
        if !B::ATOMIC_DISPATCH {
            return dispatch::admit_in_steps(self, name, message).await;
        }
        let token = new_lock_token().map_err(|e| self.context(e, op))?;
        let lock = self.lock_request(op, message.thread_id, &token, message.lock_ttl)?;
        let expires_at = lock.expires_at;
        let request = AdmitRequest {
            dedupe_key: message.dedupe_key,
            dedupe_ttl: message.dedupe_ttl,
            lock,
            when_busy: &message.when_busy,
        };
        let (outcome, read) = match message.read {
            Some(key) => self.backend.admit_and_read(&request, key).await,
            None => self.backend.admit(&request).await.map(|o| (o, None)),
        }
        .map_err(|e| self.context(e, op))?;
        Ok(match outcome {
            AdmitOutcome::Duplicate => Admission::Duplicate,
            AdmitOutcome::Dropped => Admission::Dropped,
            AdmitOutcome::Queued { depth } => Admission::Queued { depth },
            AdmitOutcome::Admitted { fence, subscribed } => Admission::Admitted {
                lock: Lock {
                    thread_id: message.thread_id.to_owned(),
                    token,
                    expires_at,
                    fence,
                },
                subscribed,
                read,
            },
        })
    }

    async fn release_or_next(&self, lock: &mut Lock, ttl: Duration) -> Result<Handoff> {
        let op = Operation::ReleaseOrNext;
        let name = self.backend.name();
        validate::release_or_next(name, lock, ttl)?;
        self.open.check(name, op)?;
        if !B::ATOMIC_DISPATCH {
            let now_ms = || self.backend.now_ms();
            return dispatch::release_or_next_in_steps(self, name, lock, ttl, now_ms).await;
        }
        let request = self.lock_request(op, &lock.thread_id, &lock.token, ttl)?;
        let expires_at = request.expires_at;
        let handoff = self
            .backend
            .release_or_next(&request)
            .await
            .map_err(|e| self.context(e, op))?;
        if matches!(handoff, Handoff::Next(_)) {
            lock.expires_at = expires_at;
        }
        Ok(handoff)
    }

    async fn release_or_next_with(
        &self,
        lock: &mut Lock,
        ttl: Duration,
        write: FencedSet<'_>,
    ) -> Result<Handoff> {
        let op = Operation::ReleaseOrNext;
        let name = self.backend.name();
        validate::release_or_next_with(name, lock, ttl, &write)?;
        self.open.check(name, op)?;
        if !B::ATOMIC_DISPATCH {
            let now_ms = || self.backend.now_ms();
            return dispatch::release_or_next_with_in_steps(self, name, lock, ttl, write, now_ms)
                .await;
        }
        let request = self.lock_request(op, &lock.thread_id, &lock.token, ttl)?;
        let expires_at = request.expires_at;
        let handoff = self
            .backend
            .release_or_next_with(&request, lock, &write)
            .await
            .map_err(|e| self.context(e, op))?;
        if matches!(handoff, Handoff::Next(_)) {
            lock.expires_at = expires_at;
        }
        Ok(handoff)
    }

    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let op = Operation::SetFenced;
        let name = self.backend.name();
        validate::set_fenced(name, lock, key, value, ttl)?;
        self.open.check(name, op)?;
        if !B::ATOMIC_DISPATCH {
            return dispatch::set_fenced_in_steps(self, name, lock, key, value, ttl).await;
        }
        self.backend
            .set_fenced(lock, key, value, ttl)
            .await
            .map_err(|e| self.context(e, op))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: Backend> StateAdapter for Checked<B> {
    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    async fn connect(&self) -> Result<()> {
        self.run(Operation::Connect, Ok(()), self.backend.connect())
            .await
    }

    async fn close(&self) -> Result<()> {
        if !self.open.close() {
            return Ok(());
        }
        self.backend
            .close()
            .await
            .map_err(|e| self.context(e, Operation::Close))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<B: LockInspector> InspectLocks for Checked<B> {
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        let rules = validate::lock_info(self.backend.name(), lock_id);
        self.run(Operation::LockInfo, rules, self.backend.lock_info(lock_id))
            .await
    }
}
