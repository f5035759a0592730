#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_state_core::{
    Cache, ListOptions, Lists, Lock, Locks, Operation, QueueEntry, Queues, Result, StateAdapter,
    Subscriptions,
};

/// Counts calls per operation and delegates them to another adapter.
///
/// It adds no semantics of its own, so it passes the conformance suite exactly when the
/// adapter it wraps does; errors keep the wrapped backend's name (the suite checks that an
/// error names the adapter's [`StateAdapter::backend_name`], which this one forwards).
pub struct CountingState {
    inner: Arc<dyn StateAdapter>,
    calls: Mutex<HashMap<Operation, u64>>,
}

impl std::fmt::Debug for CountingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingState")
            .field("inner", &self.inner.backend_name())
            .field("calls", &*self.lock_calls())
            .finish()
    }
}

impl CountingState {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn StateAdapter>) -> Self {
        Self {
            inner,
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// How many times `op` was called (successful or not).
    pub fn calls(&self, op: Operation) -> u64 {
        self.lock_calls().get(&op).copied().unwrap_or(0)
    }

    fn count(&self, op: Operation) {
        *self.lock_calls().entry(op).or_insert(0) += 1;
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<Operation, u64>> {
        // A panic while holding this lock cannot leave the map inconsistent (one increment).
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// The same pair of attributes every backend uses: `Send` futures natively, `?Send` on wasm32.
#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Subscriptions for CountingState {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        self.count(Operation::Subscribe);
        self.inner.subscribe(thread_id).await
    }
    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        self.count(Operation::Unsubscribe);
        self.inner.unsubscribe(thread_id).await
    }
    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        self.count(Operation::IsSubscribed);
        self.inner.is_subscribed(thread_id).await
    }
}

// The same pair of attributes every backend uses: `Send` futures natively, `?Send` on wasm32.
#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Locks for CountingState {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        self.count(Operation::AcquireLock);
        self.inner.acquire_lock(lock_id, ttl).await
    }
    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        self.count(Operation::ReleaseLock);
        self.inner.release_lock(lock).await
    }
    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        self.count(Operation::ExtendLock);
        self.inner.extend_lock(lock, ttl).await
    }
    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        self.count(Operation::ForceReleaseLock);
        self.inner.force_release_lock(lock_id).await
    }
}

// The same pair of attributes every backend uses: `Send` futures natively, `?Send` on wasm32.
#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Cache for CountingState {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.count(Operation::Get);
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.count(Operation::Set);
        self.inner.set(key, value, ttl).await
    }
    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.count(Operation::SetIfNotExists);
        self.inner.set_if_not_exists(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.count(Operation::Delete);
        self.inner.delete(key).await
    }
}

// The same pair of attributes every backend uses: `Send` futures natively, `?Send` on wasm32.
#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Lists for CountingState {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        self.count(Operation::AppendToList);
        self.inner.append_to_list(key, value, options).await
    }
    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.count(Operation::GetList);
        self.inner.get_list(key).await
    }
}

// The same pair of attributes every backend uses: `Send` futures natively, `?Send` on wasm32.
#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Queues for CountingState {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        self.count(Operation::Enqueue);
        self.inner.enqueue(thread_id, entry, max_size).await
    }
    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        self.count(Operation::Dequeue);
        self.inner.dequeue(thread_id).await
    }
    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        self.count(Operation::QueueDepth);
        self.inner.queue_depth(thread_id).await
    }
}

// The same pair of attributes every backend uses: `Send` futures natively, `?Send` on wasm32.
#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl StateAdapter for CountingState {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    async fn connect(&self) -> Result<()> {
        self.count(Operation::Connect);
        self.inner.connect().await
    }
    async fn close(&self) -> Result<()> {
        self.count(Operation::Close);
        self.inner.close().await
    }
}
