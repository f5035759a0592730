#![doc = include_str!("../README.md")]

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chat_state_core::{
    Backend, Checked, Clock, ListOptions, Lock, LockInfo, LockInspector, LockRequest, Operation,
    QueueEntry, Result, SharedClock, system_clock, validate,
};

const BACKEND: &str = "memory";

/// Shards cut contention between unrelated keys; a power of two keeps the index a mask.
const SHARDS: usize = 32;

/// How many expired entries an operation removes from its shard on the side. Small enough
/// that no call pays for a large backlog, large enough that cleanup outpaces expiry under any
/// load that keeps touching the shard.
const CLEANUP_PER_OP: usize = 8;

/// The in-process backend as a [`StateAdapter`](chat_state_core::StateAdapter): the
/// [`MemoryBackend`] behind core's rule layer. `MemoryState::default()` is an empty store on
/// the system clock; `MemoryState::new(MemoryBackend::with_clock(clock))` reads another clock.
pub type MemoryState = Checked<MemoryBackend>;

/// The in-process backend's storage.
///
/// Every operation locks exactly one shard (chosen by the key's hash), does its work without
/// awaiting, and unlocks, so no lock is ever held across an `.await` and unrelated keys do
/// not contend. Expiry is checked on every read; besides, each operation removes up to a few
/// expired entries of its shard, so memory does not grow with dead entries
/// ([`MemoryBackend::purge_expired`] removes all of them at once).
#[derive(Debug)]
pub struct MemoryBackend {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: SharedClock,
    /// One counter for every lock id: strictly increasing per id follows from strictly
    /// increasing overall, and no per-id state has to outlive the lock.
    fence: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Namespace {
    Lock,
    Cache,
    List,
    Queue,
}

#[derive(Debug)]
struct LockRow {
    token: String,
    expires_at: u64,
    fence: u64,
}

#[derive(Debug)]
struct CacheRow {
    value: Vec<u8>,
    expires_at: Option<u64>,
}

#[derive(Debug, Default)]
struct ListRow {
    items: VecDeque<Vec<u8>>,
    expires_at: Option<u64>,
}

#[derive(Debug, Default)]
struct QueueRow {
    entries: VecDeque<QueueEntry>,
}

impl QueueRow {
    fn drop_expired(&mut self, now: u64) {
        self.entries.retain(|e| !e.is_expired_at(now));
    }

    /// When the last entry dies, after which the whole queue can go.
    fn last_expiry(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.expires_at).max()
    }
}

#[derive(Debug, Default)]
struct Shard {
    subscriptions: HashSet<String>,
    locks: HashMap<String, LockRow>,
    cache: HashMap<String, CacheRow>,
    lists: HashMap<String, ListRow>,
    queues: HashMap<String, QueueRow>,
    /// Exactly one entry per expiring row: `(expires_at, namespace, key)`.
    expiries: BTreeSet<(u64, Namespace, String)>,
}

impl Shard {
    fn set_expiry(&mut self, ns: Namespace, key: &str, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.expiries.remove(&(at, ns, key.to_owned()));
        }
        if let Some(at) = new {
            self.expiries.insert((at, ns, key.to_owned()));
        }
    }

    /// Stores a cache row, replacing value and expiry, and keeps the expiry index in step.
    fn put_cache(&mut self, key: &str, value: &[u8], expires_at: Option<u64>) {
        let old = self
            .cache
            .insert(
                key.to_owned(),
                CacheRow {
                    value: value.to_vec(),
                    expires_at,
                },
            )
            .and_then(|row| row.expires_at);
        self.set_expiry(Namespace::Cache, key, old, expires_at);
    }

    /// Removes up to `limit` rows whose expiry has passed. Returns how many it removed.
    fn remove_expired(&mut self, now: u64, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            let Some(first) = self.expiries.first() else {
                break;
            };
            if first.0 > now {
                break;
            }
            let Some((_, ns, key)) = self.expiries.pop_first() else {
                break;
            };
            match ns {
                Namespace::Lock => {
                    self.locks.remove(&key);
                }
                Namespace::Cache => {
                    self.cache.remove(&key);
                }
                Namespace::List => {
                    self.lists.remove(&key);
                }
                Namespace::Queue => {
                    self.queues.remove(&key);
                }
            }
            removed += 1;
        }
        removed
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_shared_clock(system_clock())
    }

    /// An empty store reading time from `clock` (for example a
    /// [`ManualClock`](chat_state_core::ManualClock) in tests).
    pub fn with_clock(clock: impl Clock) -> Self {
        Self::with_shared_clock(std::sync::Arc::new(clock))
    }

    /// An empty store reading time from a shared clock.
    pub fn with_shared_clock(clock: SharedClock) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            clock,
            fence: AtomicU64::new(0),
        }
    }

    /// Removes every expired entry now, and returns how many it removed.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now_ms();
        self.shards
            .iter()
            .map(|shard| lock_shard(shard).remove_expired(now, usize::MAX))
            .sum()
    }

    /// Number of stored rows of every kind, expired or not yet cleaned (for tests and
    /// monitoring memory use).
    pub fn stored_rows(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let s = lock_shard(shard);
                s.subscriptions.len()
                    + s.locks.len()
                    + s.cache.len()
                    + s.lists.len()
                    + s.queues.len()
            })
            .sum()
    }

    /// Runs `f` on the key's shard with the current time, after removing a few expired
    /// entries of that shard.
    fn with_shard<T>(&self, key: &str, f: impl FnOnce(&mut Shard, u64) -> Result<T>) -> Result<T> {
        let index = (self.hasher.hash_one(key) as usize) & (SHARDS - 1);
        let mut shard = lock_shard(&self.shards[index]);
        let now = self.clock.now_ms();
        shard.remove_expired(now, CLEANUP_PER_OP);
        f(&mut shard, now)
    }
}

/// A poisoned shard only means another thread panicked mid-operation; every operation leaves
/// the shard consistent before any call that could panic, so the data is still valid.
fn lock_shard(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rule 1 for rows whose expiry is optional: live while `now < expires_at`, forever without one.
fn is_live(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_none_or(|at| now < at)
}

fn expiry(op: Operation, now: u64, ttl: Option<Duration>) -> Result<Option<u64>> {
    validate::optional_expiry_ms(BACKEND, op, now, ttl)
}

impl MemoryBackend {
    /// Runs `f` on the thread's queue with expired entries already dropped, then keeps the
    /// expiry index in step (and drops the queue once it is empty).
    fn with_queue<T>(&self, thread_id: &str, f: impl FnOnce(&mut QueueRow, u64) -> T) -> Result<T> {
        self.with_shard(thread_id, |s, now| {
            let Some(mut row) = s.queues.remove(thread_id) else {
                let mut empty = QueueRow::default();
                let out = f(&mut empty, now);
                if !empty.entries.is_empty() {
                    let at = empty.last_expiry();
                    s.set_expiry(Namespace::Queue, thread_id, None, at);
                    s.queues.insert(thread_id.to_owned(), empty);
                }
                return Ok(out);
            };
            let old = row.last_expiry();
            row.drop_expired(now);
            let out = f(&mut row, now);
            let new = row.last_expiry();
            s.set_expiry(Namespace::Queue, thread_id, old, new);
            if !row.entries.is_empty() {
                s.queues.insert(thread_id.to_owned(), row);
            }
            Ok(out)
        })
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn close(&self) -> Result<()> {
        for shard in self.shards.iter() {
            *lock_shard(shard) = Shard::default();
        }
        Ok(())
    }

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        self.with_shard(thread_id, |s, _| {
            s.subscriptions.insert(thread_id.to_owned());
            Ok(())
        })
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        self.with_shard(thread_id, |s, _| {
            s.subscriptions.remove(thread_id);
            Ok(())
        })
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        self.with_shard(thread_id, |s, _| Ok(s.subscriptions.contains(thread_id)))
    }

    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let lock_id = request.lock_id;
        self.with_shard(lock_id, |s, now| {
            let old_expiry = match s.locks.get(lock_id) {
                Some(row) if now < row.expires_at => return Ok(None),
                Some(row) => Some(row.expires_at),
                None => None,
            };
            // The same clock the layer read just before: its expiry is exactly ours.
            let expires_at = request.expires_at;
            let fence = self.fence.fetch_add(1, Ordering::SeqCst) + 1;
            s.locks.insert(
                lock_id.to_owned(),
                LockRow {
                    token: request.token.to_owned(),
                    expires_at,
                    fence,
                },
            );
            s.set_expiry(Namespace::Lock, lock_id, old_expiry, Some(expires_at));
            Ok(Some(fence))
        })
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        self.with_shard(&lock.thread_id, |s, _| {
            if s.locks
                .get(&lock.thread_id)
                .is_some_and(|row| row.token == lock.token)
                && let Some(row) = s.locks.remove(&lock.thread_id)
            {
                s.set_expiry(Namespace::Lock, &lock.thread_id, Some(row.expires_at), None);
            }
            Ok(())
        })
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        let lock_id = request.lock_id;
        self.with_shard(lock_id, |s, now| {
            let Some(row) = s.locks.get_mut(lock_id) else {
                return Ok(false);
            };
            if row.token != request.token || now >= row.expires_at {
                return Ok(false);
            }
            let old = row.expires_at;
            let new = validate::expiry_ms(BACKEND, Operation::ExtendLock, now, request.ttl)?;
            row.expires_at = new;
            s.set_expiry(Namespace::Lock, lock_id, Some(old), Some(new));
            Ok(true)
        })
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        self.with_shard(lock_id, |s, _| {
            if let Some(row) = s.locks.remove(lock_id) {
                s.set_expiry(Namespace::Lock, lock_id, Some(row.expires_at), None);
            }
            Ok(())
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_shard(key, |s, now| {
            Ok(s.cache
                .get(key)
                .filter(|row| is_live(row.expires_at, now))
                .map(|row| row.value.clone()))
        })
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.with_shard(key, |s, now| {
            s.put_cache(key, value, expiry(Operation::Set, now, ttl)?);
            Ok(())
        })
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.with_shard(key, |s, now| {
            if let Some(row) = s.cache.get(key)
                && is_live(row.expires_at, now)
            {
                return Ok(false);
            }
            s.put_cache(key, value, expiry(Operation::SetIfNotExists, now, ttl)?);
            Ok(true)
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.with_shard(key, |s, _| {
            if let Some(row) = s.cache.remove(key) {
                s.set_expiry(Namespace::Cache, key, row.expires_at, None);
            }
            Ok(())
        })
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        self.with_shard(key, |s, now| {
            let new_expiry = expiry(Operation::AppendToList, now, options.ttl)?;
            let row = s.lists.entry(key.to_owned()).or_default();
            let old_expiry = row.expires_at;
            if !is_live(row.expires_at, now) {
                // An expired list restarts empty, with no expiry unless this append sets one.
                *row = ListRow::default();
            }
            row.items.push_back(value.to_vec());
            if let Some(max) = options.max_length {
                while row.items.len() > max {
                    row.items.pop_front();
                }
            }
            if new_expiry.is_some() {
                row.expires_at = new_expiry;
            }
            let current = row.expires_at;
            s.set_expiry(Namespace::List, key, old_expiry, current);
            Ok(())
        })
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.with_shard(key, |s, now| {
            Ok(s.lists
                .get(key)
                .filter(|row| is_live(row.expires_at, now))
                .map(|row| row.items.iter().cloned().collect())
                .unwrap_or_default())
        })
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        self.with_queue(thread_id, |row, now| {
            // An entry already dead on arrival is accepted but, by rule 7, never counted.
            if !entry.is_expired_at(now) {
                row.entries.push_back(entry);
            }
            while row.entries.len() > max_size {
                row.entries.pop_front();
            }
            row.entries.len()
        })
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        self.with_queue(thread_id, |row, _| row.entries.pop_front())
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        self.with_queue(thread_id, |row, _| row.entries.len())
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl LockInspector for MemoryBackend {
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        self.with_shard(lock_id, |s, now| {
            Ok(s.locks
                .get(lock_id)
                .filter(|row| now < row.expires_at)
                .map(|row| LockInfo::new(row.token.clone(), row.expires_at, Some(row.fence))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_state_core::{Cache, InspectLocks, Lists, Locks, ManualClock, Queues, StateAdapter};

    fn state_on(clock: &ManualClock) -> MemoryState {
        Checked::new(MemoryBackend::with_clock(clock.clone()))
    }

    #[tokio::test]
    async fn expired_rows_are_cleaned_without_being_read() {
        let clock = ManualClock::new(1_000);
        let state = state_on(&clock);
        for i in 0..500 {
            let key = format!("k{i}");
            state
                .set(&key, b"v", Some(Duration::from_millis(10)))
                .await
                .unwrap();
            state
                .append_to_list(
                    &key,
                    b"v",
                    ListOptions::new().ttl(Duration::from_millis(10)),
                )
                .await
                .unwrap();
            state
                .acquire_lock(&key, Duration::from_millis(10))
                .await
                .unwrap();
            let entry = QueueEntry::new(serde_json::json!({}), 1_000, Duration::from_millis(10));
            state.enqueue(&key, entry, 10).await.unwrap();
        }
        assert_eq!(state.backend().stored_rows(), 2_000);
        clock.advance(Duration::from_millis(10));
        // One call cleans exactly its budget from its shard (2,000 rows over 32 shards leave
        // every shard more expired rows than that), never the whole backlog...
        state.get("one call").await.unwrap();
        assert_eq!(state.backend().stored_rows(), 2_000 - CLEANUP_PER_OP);
        // ...so unrelated traffic cleans a bounded amount per call...
        for i in 0..400 {
            state.set(&format!("live{i}"), b"v", None).await.unwrap();
        }
        let after_traffic = state.backend().stored_rows();
        assert!(
            after_traffic < 2_000,
            "traffic should have cleaned some rows: {after_traffic}"
        );
        // ...and a purge removes the rest, leaving exactly the live rows.
        state.backend().purge_expired();
        assert_eq!(state.backend().stored_rows(), 400);
        // Close frees what is left rather than waiting for the drop.
        state.close().await.unwrap();
        assert_eq!(state.backend().stored_rows(), 0);
    }

    #[tokio::test]
    async fn lock_info_shows_the_live_holder_only() {
        let clock = ManualClock::new(1_000);
        let state = state_on(&clock);
        assert_eq!(state.lock_info("t").await.unwrap(), None);
        // Expired rows in every shard ahead of the lock's: the per-call cleanup cannot hide
        // the expired holder, lock_info itself must check the expiry.
        for i in 0..2_000 {
            let key = format!("k{i}");
            state
                .set(&key, b"v", Some(Duration::from_millis(10)))
                .await
                .unwrap();
        }
        let lock = state
            .acquire_lock("t", Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        let info = state.lock_info("t").await.unwrap().unwrap();
        assert_eq!(
            (info.token.as_str(), info.expires_at, info.fence),
            (lock.token.as_str(), 1_050, Some(lock.fence))
        );
        clock.advance(Duration::from_millis(50));
        assert_eq!(
            state.lock_info("t").await.unwrap(),
            None,
            "expired holder is not shown"
        );
        assert_eq!(
            state.lock_info("").await.unwrap_err().kind(),
            chat_state_core::ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn overwriting_a_key_keeps_one_index_entry() {
        let clock = ManualClock::new(0);
        let state = state_on(&clock);
        for ttl in 1..=100 {
            state
                .set("k", b"v", Some(Duration::from_secs(ttl)))
                .await
                .unwrap();
        }
        let indexed: usize = state
            .backend()
            .shards
            .iter()
            .map(|s| lock_shard(s).expiries.len())
            .sum();
        assert_eq!(indexed, 1);
        state.set("k", b"v", None).await.unwrap();
        let indexed: usize = state
            .backend()
            .shards
            .iter()
            .map(|s| lock_shard(s).expiries.len())
            .sum();
        assert_eq!(indexed, 0);
    }
}
