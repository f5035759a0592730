//! A decorator that emits a `tracing` span and event per adapter call.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_state_core::{
    Cache, ListOptions, Lists, Lock, Locks, Operation, QueueEntry, Queues, Result, StateAdapter,
    Subscriptions,
};
use tracing::Instrument;

/// Wraps any adapter so every call runs inside a `chat_state` span (fields `backend`,
/// `operation`, `id`) and ends with one event carrying `duration_us` and `outcome`
/// (`ok`, or the error's kind). Successful calls log at `DEBUG`, failures at `WARN`.
///
/// Opt in with [`ConnectOptions::trace`](crate::ConnectOptions::trace) or [`traced`]; it is
/// off by default because it costs time on every call even when nothing records the spans.
///
/// ```
/// # #[cfg(feature = "memory")] {
/// use std::sync::Arc;
/// use chat_state::{StateAdapter, Traced, MemoryState};
/// let state: Arc<dyn StateAdapter> = Arc::new(Traced::new(Arc::new(MemoryState::new())));
/// assert_eq!(state.backend_name(), "memory");
/// # }
/// ```
#[derive(Clone)]
pub struct Traced {
    inner: Arc<dyn StateAdapter>,
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced")
            .field("backend", &self.inner.backend_name())
            .finish()
    }
}

/// [`Traced::new`] behind an `Arc<dyn StateAdapter>`.
pub fn traced(inner: Arc<dyn StateAdapter>) -> Arc<dyn StateAdapter> {
    Arc::new(Traced::new(inner))
}

impl Traced {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn StateAdapter>) -> Self {
        Self { inner }
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &Arc<dyn StateAdapter> {
        &self.inner
    }

    async fn call<T>(
        &self,
        operation: Operation,
        id: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let span = tracing::debug_span!(
            "chat_state",
            backend = self.inner.backend_name(),
            operation = operation.as_str(),
            id,
        );
        let started = Instant::now();
        let result = fut.instrument(span.clone()).await;
        let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _entered = span.enter();
        match &result {
            Ok(_) => tracing::debug!(duration_us, outcome = "ok"),
            Err(e) => tracing::warn!(duration_us, outcome = %e.kind(), error = %e),
        }
        result
    }
}

#[async_trait::async_trait]
impl Subscriptions for Traced {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        self.call(
            Operation::Subscribe,
            thread_id,
            self.inner.subscribe(thread_id),
        )
        .await
    }
    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        self.call(
            Operation::Unsubscribe,
            thread_id,
            self.inner.unsubscribe(thread_id),
        )
        .await
    }
    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        self.call(
            Operation::IsSubscribed,
            thread_id,
            self.inner.is_subscribed(thread_id),
        )
        .await
    }
}

#[async_trait::async_trait]
impl Locks for Traced {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        self.call(
            Operation::AcquireLock,
            lock_id,
            self.inner.acquire_lock(lock_id, ttl),
        )
        .await
    }
    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        self.call(
            Operation::ReleaseLock,
            &lock.thread_id,
            self.inner.release_lock(lock),
        )
        .await
    }
    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        self.call(
            Operation::ExtendLock,
            &lock.thread_id,
            self.inner.extend_lock(lock, ttl),
        )
        .await
    }
    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        self.call(
            Operation::ForceReleaseLock,
            lock_id,
            self.inner.force_release_lock(lock_id),
        )
        .await
    }
}

#[async_trait::async_trait]
impl Cache for Traced {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.call(Operation::Get, key, self.inner.get(key)).await
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.call(Operation::Set, key, self.inner.set(key, value, ttl))
            .await
    }
    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.call(
            Operation::SetIfNotExists,
            key,
            self.inner.set_if_not_exists(key, value, ttl),
        )
        .await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.call(Operation::Delete, key, self.inner.delete(key))
            .await
    }
}

#[async_trait::async_trait]
impl Lists for Traced {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        self.call(
            Operation::AppendToList,
            key,
            self.inner.append_to_list(key, value, options),
        )
        .await
    }
    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.call(Operation::GetList, key, self.inner.get_list(key))
            .await
    }
}

#[async_trait::async_trait]
impl Queues for Traced {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        self.call(
            Operation::Enqueue,
            thread_id,
            self.inner.enqueue(thread_id, entry, max_size),
        )
        .await
    }
    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        self.call(Operation::Dequeue, thread_id, self.inner.dequeue(thread_id))
            .await
    }
    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        self.call(
            Operation::QueueDepth,
            thread_id,
            self.inner.queue_depth(thread_id),
        )
        .await
    }
}

#[async_trait::async_trait]
impl StateAdapter for Traced {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    async fn connect(&self) -> Result<()> {
        let name = self.inner.backend_name();
        self.call(Operation::Connect, name, self.inner.connect())
            .await
    }
    async fn close(&self) -> Result<()> {
        let name = self.inner.backend_name();
        self.call(Operation::Close, name, self.inner.close()).await
    }
}
