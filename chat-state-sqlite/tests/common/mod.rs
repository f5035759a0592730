//! Shared test helpers: an adapter on a fresh database file in its own temporary directory,
//! which lives exactly as long as the adapter.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_state_core::{
    Cache, ListOptions, Lists, Lock, Locks, ManualClock, QueueEntry, Queues, Result, StateAdapter,
    Subscriptions,
};
use chat_state_sqlite::{SqliteBuilder, SqliteState};
use tempfile::TempDir;

/// A [`SqliteState`] together with the temporary directory holding its file: the directory
/// is removed when the last handle is dropped, after the adapter.
pub struct TempState {
    pub state: SqliteState,
    pub path: PathBuf,
    // Declared after `state` so the adapter drops (and closes its connections) first.
    _dir: TempDir,
}

impl TempState {
    /// A fresh file, opened with `configure` applied to the default builder.
    pub async fn new(configure: impl FnOnce(SqliteBuilder) -> SqliteBuilder) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("state.db");
        let state = configure(SqliteState::builder(&path))
            .open()
            .await
            .expect("open a fresh database");
        Self {
            state,
            path,
            _dir: dir,
        }
    }

    /// A fresh file on a manual clock, background cleanup off (tests call it explicitly).
    pub async fn manual(clock: &ManualClock) -> Self {
        let clock = clock.clone();
        Self::new(move |b| b.clock(clock).cleanup_interval(None)).await
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

#[chat_state_core::async_trait]
impl Subscriptions for TempState {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        self.state.subscribe(thread_id).await
    }
    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        self.state.unsubscribe(thread_id).await
    }
    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        self.state.is_subscribed(thread_id).await
    }
}

#[chat_state_core::async_trait]
impl Locks for TempState {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        self.state.acquire_lock(lock_id, ttl).await
    }
    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        self.state.release_lock(lock).await
    }
    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        self.state.extend_lock(lock, ttl).await
    }
    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        self.state.force_release_lock(lock_id).await
    }
}

#[chat_state_core::async_trait]
impl Cache for TempState {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.state.get(key).await
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.state.set(key, value, ttl).await
    }
    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.state.set_if_not_exists(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.state.delete(key).await
    }
}

#[chat_state_core::async_trait]
impl Lists for TempState {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        self.state.append_to_list(key, value, options).await
    }
    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.state.get_list(key).await
    }
}

#[chat_state_core::async_trait]
impl Queues for TempState {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        self.state.enqueue(thread_id, entry, max_size).await
    }
    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        self.state.dequeue(thread_id).await
    }
    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        self.state.queue_depth(thread_id).await
    }
}

#[chat_state_core::async_trait]
impl StateAdapter for TempState {
    fn backend_name(&self) -> &'static str {
        self.state.backend_name()
    }
    async fn connect(&self) -> Result<()> {
        self.state.connect().await
    }
    async fn close(&self) -> Result<()> {
        self.state.close().await
    }
}

/// A SHA-256-free fingerprint of a file's bytes (length plus FNV-1a), enough to show a file
/// was not modified.
pub fn fingerprint(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).expect("read file");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in &bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (bytes.len() as u64, h)
}
