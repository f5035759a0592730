//! The capability traits and [`StateAdapter`], which combines them.
//!
//! # `Send` futures on native targets, `?Send` on wasm32
//!
//! The traits are declared with `async_trait`, whose futures are `Send` on native targets
//! (so `Arc<dyn StateAdapter>` can be used from any tokio task) and `?Send` on `wasm32`,
//! where the Durable Object backend awaits JS promises that cannot cross threads (and there
//! are no threads). A backend implements [`Backend`](crate::Backend), not these traits: its
//! methods are plain `async fn`s, no attribute needed, and their futures are `Send` on native
//! targets and need not be on `wasm32` (see [`Backend`](crate::Backend) for a complete
//! example):
//!
//! ```
//! # use chat_state_core::{Backend, Result};
//! # struct MyBackend;
//! impl Backend for MyBackend {
//!     fn name(&self) -> &'static str { "my-backend" }
//!     async fn subscribe(&self, thread_id: &str) -> Result<()> {
//!         // ... the backend's own I/O; `thread_id` is already validated ...
//! #       Ok(())
//!     }
//!     // unsubscribe, is_subscribed, ...
//! #   async fn unsubscribe(&self, _: &str) -> Result<()> { Ok(()) }
//! #   async fn is_subscribed(&self, _: &str) -> Result<bool> { Ok(false) }
//! #   async fn acquire_lock(&self, _: &chat_state_core::LockRequest<'_>) -> Result<Option<u64>> { Ok(None) }
//! #   async fn release_lock(&self, _: &chat_state_core::Lock) -> Result<()> { Ok(()) }
//! #   async fn extend_lock(&self, _: &chat_state_core::LockRequest<'_>) -> Result<bool> { Ok(false) }
//! #   async fn force_release_lock(&self, _: &str) -> Result<()> { Ok(()) }
//! #   async fn get(&self, _: &str) -> Result<Option<Vec<u8>>> { Ok(None) }
//! #   async fn set(&self, _: &str, _: &[u8], _: Option<std::time::Duration>) -> Result<()> { Ok(()) }
//! #   async fn set_if_not_exists(&self, _: &str, _: &[u8], _: Option<std::time::Duration>) -> Result<bool> { Ok(false) }
//! #   async fn delete(&self, _: &str) -> Result<()> { Ok(()) }
//! #   async fn append_to_list(&self, _: &str, _: &[u8], _: chat_state_core::ListOptions) -> Result<()> { Ok(()) }
//! #   async fn get_list(&self, _: &str) -> Result<Vec<Vec<u8>>> { Ok(vec![]) }
//! #   async fn enqueue(&self, _: &str, _: chat_state_core::QueueEntry, _: usize) -> Result<usize> { Ok(1) }
//! #   async fn dequeue(&self, _: &str) -> Result<Option<chat_state_core::QueueEntry>> { Ok(None) }
//! #   async fn queue_depth(&self, _: &str) -> Result<usize> { Ok(0) }
//! }
//! ```
//!
//! On native targets every adapter is also `Send + Sync` (see [`MaybeSendSync`]).

use std::time::Duration;

use async_trait::async_trait;

use crate::{ListOptions, Lock, QueueEntry, Result};

/// `Send + Sync` on native targets, nothing on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}

/// `Send + Sync` on native targets, nothing on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSendSync for T {}

/// Which threads the bot follows.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Subscriptions: MaybeSendSync {
    /// Marks the thread as subscribed. Idempotent.
    async fn subscribe(&self, thread_id: &str) -> Result<()>;
    /// Removes the subscription. Unsubscribing a thread that is not subscribed is fine.
    async fn unsubscribe(&self, thread_id: &str) -> Result<()>;
    /// Whether the thread is subscribed.
    async fn is_subscribed(&self, thread_id: &str) -> Result<bool>;
}

/// Token-owned, expiring locks with fencing numbers.
///
/// A lock is held iff `now < expires_at` on the backend's clock. Only the holder of the
/// current token can release or extend it; [`Locks::force_release_lock`] ignores tokens.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Locks: MaybeSendSync {
    /// Takes the lock for `ttl` if nobody holds it (or the holder's lock has expired).
    /// Returns `None` if it is held. `ttl` must be non-zero.
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>>;
    /// Releases the lock if `lock.token` still owns it; a stale token is a no-op.
    async fn release_lock(&self, lock: &Lock) -> Result<()>;
    /// Moves the expiry to now + `ttl` if `lock` is the current, unexpired holder. Returns
    /// `false` otherwise (never creates or resurrects a lock).
    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool>;
    /// Releases whatever lock is held on `lock_id`, regardless of token. No-op if none.
    async fn force_release_lock(&self, lock_id: &str) -> Result<()>;
}

/// A key/value cache with optional per-key TTL. Values are opaque bytes (the typed helpers in
/// [`StateExt`](crate::StateExt) store JSON).
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Cache: MaybeSendSync {
    /// The value, or `None` if missing or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores the value. `ttl: None` means no expiry; `Some(ZERO)` is invalid input.
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()>;
    /// Stores the value only if the key is missing or expired. Returns whether it stored.
    /// Among concurrent callers on one key, exactly one wins.
    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool>;
    /// Removes the key. Deleting a missing key is fine.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// Append-only lists that keep their newest items.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Lists: MaybeSendSync {
    /// Appends `value`; trims to the newest `options.max_length`; with `options.ttl`, sets the
    /// whole list's expiry to now + TTL (without, leaves it unchanged). An expired list
    /// restarts empty.
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()>;
    /// All items in insertion order; empty if missing or expired.
    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>>;
}

/// Per-thread FIFO queues of messages that arrived while the thread was locked.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Queues: MaybeSendSync {
    /// Appends `entry`, drops the oldest beyond `max_size` (>= 1), and returns the number of
    /// live entries after the append.
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize>;
    /// Removes and returns the oldest live entry. Expired entries are discarded, never
    /// returned. Concurrent callers never receive the same entry.
    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>>;
    /// Number of live entries.
    async fn queue_depth(&self, thread_id: &str) -> Result<usize>;
}

/// Everything a bot needs: the five capabilities, the dispatch operations
/// ([`Dispatch`](crate::Dispatch)) and lifecycle.
///
/// Use it as `Arc<dyn StateAdapter>`; every backend implements it through
/// [`Checked`](crate::Checked). It is also implemented for `Arc<T>`, `Box<T>` and `&T` of
/// any adapter, so those can be passed wherever an adapter is expected.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait StateAdapter: Subscriptions + Locks + Cache + Lists + Queues + crate::Dispatch {
    /// Short backend name used in errors and logs (`"memory"`, `"sqlite"`, ...).
    fn backend_name(&self) -> &'static str;
    /// Makes sure the backend is reachable and ready (schema applied, connection up).
    /// Idempotent. Fails with [`ErrorKind::Closed`](crate::ErrorKind::Closed) after close.
    async fn connect(&self) -> Result<()>;
    /// Releases resources. Afterwards every operation fails with
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed). Closing twice is fine.
    async fn close(&self) -> Result<()>;
}

/// The current holder of a lock, as read by [`InspectLocks::lock_info`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's token (as returned to it by `acquire_lock`).
    pub token: String,
    /// Unix milliseconds at which the lock expires on the backend.
    pub expires_at: u64,
    /// The holder's fencing number, when the backend can tell it (a lock written by a client
    /// without fencing, such as a TypeScript bot sharing a Redis, has none).
    pub fence: Option<u64>,
}

impl LockInfo {
    /// The holder with `token`, expiring at `expires_at` (Unix ms), with its fence if known.
    pub fn new(token: impl Into<String>, expires_at: u64, fence: Option<u64>) -> Self {
        Self {
            token: token.into(),
            expires_at,
            fence,
        }
    }
}

/// Optional capability: read who holds a lock, without changing anything.
///
/// Not part of [`StateAdapter`] on purpose: a bot must never act on a lock it does not hold
/// (the answer may be stale by the time it arrives). This is for operators looking at a stuck
/// thread. Implemented by the memory, SQLite and Redis backends.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait InspectLocks: MaybeSendSync {
    /// The live holder of `lock_id`, or `None` if it is free (or its holder expired).
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>>;
}
