//! Wrapping an adapter without rewriting its two dozen methods: [`Layer`] and [`Layered`], and the
//! traits implemented for `Arc<T>`, `Box<T>` and `&T`.
//!
//! A layer sees every call as a [`Call`] (backend, operation, id) plus the wrapped call
//! itself, and decides what happens around it: time it, count it, trace it, or answer with
//! an injected fault instead of calling through. [`Layered`] is the one place that forwards
//! each method through a layer.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use chat_state_core::{Call, Layer, Layered, Next, Result, MaybeSend, StateAdapter, Cache};
//! # use chat_state_core::{Backend, Checked};
//!
//! #[derive(Debug, Default)]
//! struct CountCalls(AtomicU64);
//!
//! #[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
//! #[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
//! impl Layer for CountCalls {
//!     async fn call<T: MaybeSend>(&self, _call: Call<'_>, next: Next<'_, T>) -> Result<T> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         next.await
//!     }
//! }
//!
//! # fn adapter() -> std::sync::Arc<dyn StateAdapter> { unimplemented!() }
//! # async fn demo(inner: std::sync::Arc<dyn StateAdapter>) -> Result<()> {
//! let counted = Layered::new(CountCalls::default(), inner);
//! counted.get("key").await?;
//! assert_eq!(counted.layer().0.load(Ordering::Relaxed), 1);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::dispatch::{Admission, Admit, Dispatch, FencedSet, FencedWrite, Handoff};
use crate::{
    Cache, InspectLocks, ListOptions, Lists, Lock, LockInfo, Locks, MaybeSendSync, Operation,
    QueueEntry, Queues, Result, StateAdapter, Subscriptions,
};

/// `Send` on native targets, nothing on `wasm32` (values a layer's future holds).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets, nothing on `wasm32` (values a layer's future holds).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// The wrapped call a [`Layer`] runs (or does not run).
#[cfg(not(target_arch = "wasm32"))]
pub type Next<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;
/// The wrapped call a [`Layer`] runs (or does not run).
#[cfg(target_arch = "wasm32")]
pub type Next<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// What a [`Layer`] is told about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Call<'a> {
    /// The wrapped adapter's [`StateAdapter::backend_name`].
    pub backend: &'static str,
    /// The method called.
    pub operation: Operation,
    /// The thread id, lock id or key the call is about (`""` for connect and close).
    pub id: &'a str,
}

impl<'a> Call<'a> {
    /// A call of `operation` on `id` against `backend`.
    pub fn new(backend: &'static str, operation: Operation, id: &'a str) -> Self {
        Self {
            backend,
            operation,
            id,
        }
    }
}

/// Behaviour around every call of a wrapped adapter; see [`Layered`].
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Layer: MaybeSendSync {
    /// Runs around one call. `next` is the wrapped adapter's call; await it to pass the call
    /// through, or return without awaiting it to answer in its place (it then never runs).
    async fn call<T: MaybeSend>(&self, call: Call<'_>, next: Next<'_, T>) -> Result<T>;
}

/// An adapter `A` with a [`Layer`] `L` around each of its calls.
#[derive(Debug, Clone, Default)]
pub struct Layered<L, A> {
    layer: L,
    inner: A,
}

impl<L, A> Layered<L, A> {
    /// Wraps `inner` in `layer`.
    pub fn new(layer: L, inner: A) -> Self {
        Self { layer, inner }
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<L: Layer, A: StateAdapter> Layered<L, A> {
    async fn through<'a, T: MaybeSend>(
        &'a self,
        operation: Operation,
        id: &'a str,
        next: Next<'a, T>,
    ) -> Result<T> {
        let call = Call::new(self.inner.backend_name(), operation, id);
        self.layer.call(call, next).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter> Subscriptions for Layered<L, A> {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let next = self.inner.subscribe(thread_id);
        self.through(Operation::Subscribe, thread_id, next).await
    }
    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let next = self.inner.unsubscribe(thread_id);
        self.through(Operation::Unsubscribe, thread_id, next).await
    }
    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let next = self.inner.is_subscribed(thread_id);
        self.through(Operation::IsSubscribed, thread_id, next).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter> Locks for Layered<L, A> {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        let next = self.inner.acquire_lock(lock_id, ttl);
        self.through(Operation::AcquireLock, lock_id, next).await
    }
    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let next = self.inner.release_lock(lock);
        self.through(Operation::ReleaseLock, &lock.thread_id, next)
            .await
    }
    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        let next = self.inner.extend_lock(lock, ttl);
        self.through(Operation::ExtendLock, &lock.thread_id, next)
            .await
    }
    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        let next = self.inner.force_release_lock(lock_id);
        self.through(Operation::ForceReleaseLock, lock_id, next)
            .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter> Cache for Layered<L, A> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let next = self.inner.get(key);
        self.through(Operation::Get, key, next).await
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let next = self.inner.set(key, value, ttl);
        self.through(Operation::Set, key, next).await
    }
    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let next = self.inner.set_if_not_exists(key, value, ttl);
        self.through(Operation::SetIfNotExists, key, next).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        let next = self.inner.delete(key);
        self.through(Operation::Delete, key, next).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter> Lists for Layered<L, A> {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let next = self.inner.append_to_list(key, value, options);
        self.through(Operation::AppendToList, key, next).await
    }
    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let next = self.inner.get_list(key);
        self.through(Operation::GetList, key, next).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter> Queues for Layered<L, A> {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let next = self.inner.enqueue(thread_id, entry, max_size);
        self.through(Operation::Enqueue, thread_id, next).await
    }
    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let next = self.inner.dequeue(thread_id);
        self.through(Operation::Dequeue, thread_id, next).await
    }
    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let next = self.inner.queue_depth(thread_id);
        self.through(Operation::QueueDepth, thread_id, next).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter> Dispatch for Layered<L, A> {
    fn atomic_dispatch(&self) -> bool {
        self.inner.atomic_dispatch()
    }
    async fn admit(&self, message: &Admit<'_>) -> Result<Admission> {
        let next = self.inner.admit(message);
        self.through(Operation::Admit, message.thread_id, next)
            .await
    }
    async fn release_or_next(&self, lock: &mut Lock, ttl: Duration) -> Result<Handoff> {
        // The id is copied out because the wrapped call borrows `lock` mutably.
        let id = lock.thread_id.clone();
        let next = self.inner.release_or_next(lock, ttl);
        self.through(Operation::ReleaseOrNext, &id, next).await
    }
    async fn release_or_next_with(
        &self,
        lock: &mut Lock,
        ttl: Duration,
        write: FencedSet<'_>,
    ) -> Result<Handoff> {
        let id = lock.thread_id.clone();
        let next = self.inner.release_or_next_with(lock, ttl, write);
        self.through(Operation::ReleaseOrNext, &id, next).await
    }
    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let next = self.inner.set_fenced(lock, key, value, ttl);
        self.through(Operation::SetFenced, key, next).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter> StateAdapter for Layered<L, A> {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    async fn connect(&self) -> Result<()> {
        let next = self.inner.connect();
        self.through(Operation::Connect, "", next).await
    }
    async fn close(&self) -> Result<()> {
        let next = self.inner.close();
        self.through(Operation::Close, "", next).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<L: Layer, A: StateAdapter + InspectLocks> InspectLocks for Layered<L, A> {
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        let next = self.inner.lock_info(lock_id);
        self.through(Operation::LockInfo, lock_id, next).await
    }
}

/// Implements every public trait for a pointer type by calling through to what it points at,
/// so `Arc<dyn StateAdapter>`, `Box<MemoryState>` or `&SqliteState` can be passed wherever
/// an adapter is expected (a [`Layered`] inner adapter, a generic function).
macro_rules! forward_through_pointer {
    ($($pointer:ident)::+ < $t:ident >) => {
        forward_through_pointer!(@impls [$($pointer)::+ <$t>] $t);
    };
    (& $t:ident) => {
        forward_through_pointer!(@impls [&$t] $t);
    };
    (@impls [$($ty:tt)+] $t:ident) => {
        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: Subscriptions + ?Sized> Subscriptions for $($ty)+ {
            async fn subscribe(&self, thread_id: &str) -> Result<()> {
                (**self).subscribe(thread_id).await
            }
            async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
                (**self).unsubscribe(thread_id).await
            }
            async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
                (**self).is_subscribed(thread_id).await
            }
        }

        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: Locks + ?Sized> Locks for $($ty)+ {
            async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
                (**self).acquire_lock(lock_id, ttl).await
            }
            async fn release_lock(&self, lock: &Lock) -> Result<()> {
                (**self).release_lock(lock).await
            }
            async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
                (**self).extend_lock(lock, ttl).await
            }
            async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
                (**self).force_release_lock(lock_id).await
            }
        }

        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: Cache + ?Sized> Cache for $($ty)+ {
            async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
                (**self).get(key).await
            }
            async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
                (**self).set(key, value, ttl).await
            }
            async fn set_if_not_exists(
                &self,
                key: &str,
                value: &[u8],
                ttl: Option<Duration>,
            ) -> Result<bool> {
                (**self).set_if_not_exists(key, value, ttl).await
            }
            async fn delete(&self, key: &str) -> Result<()> {
                (**self).delete(key).await
            }
        }

        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: Lists + ?Sized> Lists for $($ty)+ {
            async fn append_to_list(
                &self,
                key: &str,
                value: &[u8],
                options: ListOptions,
            ) -> Result<()> {
                (**self).append_to_list(key, value, options).await
            }
            async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
                (**self).get_list(key).await
            }
        }

        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: Queues + ?Sized> Queues for $($ty)+ {
            async fn enqueue(
                &self,
                thread_id: &str,
                entry: QueueEntry,
                max_size: usize,
            ) -> Result<usize> {
                (**self).enqueue(thread_id, entry, max_size).await
            }
            async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
                (**self).dequeue(thread_id).await
            }
            async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
                (**self).queue_depth(thread_id).await
            }
        }

        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: Dispatch + ?Sized> Dispatch for $($ty)+ {
            fn atomic_dispatch(&self) -> bool {
                (**self).atomic_dispatch()
            }
            async fn admit(&self, message: &Admit<'_>) -> Result<Admission> {
                (**self).admit(message).await
            }
            async fn release_or_next(&self, lock: &mut Lock, ttl: Duration) -> Result<Handoff> {
                (**self).release_or_next(lock, ttl).await
            }
            async fn release_or_next_with(
                &self,
                lock: &mut Lock,
                ttl: Duration,
                write: FencedSet<'_>,
            ) -> Result<Handoff> {
                (**self).release_or_next_with(lock, ttl, write).await
            }
            async fn set_fenced(
                &self,
                lock: &Lock,
                key: &str,
                value: &[u8],
                ttl: Option<Duration>,
            ) -> Result<FencedWrite> {
                (**self).set_fenced(lock, key, value, ttl).await
            }
        }

        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: StateAdapter + ?Sized> StateAdapter for $($ty)+ {
            fn backend_name(&self) -> &'static str {
                (**self).backend_name()
            }
            async fn connect(&self) -> Result<()> {
                (**self).connect().await
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
        }

        #[cfg_attr(not(target_arch = "wasm32"), async_trait)]
        #[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
        impl<$t: InspectLocks + ?Sized> InspectLocks for $($ty)+ {
            async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
                (**self).lock_info(lock_id).await
            }
        }
    };
}

forward_through_pointer!(Arc<T>);
forward_through_pointer!(Box<T>);
forward_through_pointer!(&T);
