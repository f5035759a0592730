#![doc = include_str!("../README.md")]

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chat_state_core::dispatch::{self, DEDUPE_VALUE, FencedSet, FencedWrite, Handoff, WhenBusy};
use chat_state_core::{
    AdmitOutcome, AdmitRequest, Backend, Checked, Clock, ListOptions, Lock, LockInfo,
    LockInspector, LockRequest, Operation, QueueEntry, Result, SharedClock, system_clock, validate,
};
use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;
use indexmap::IndexMap;

const BACKEND: &str = "memory";

/// Shards cut contention between unrelated keys; a power of two keeps the index a mask.
const SHARDS: usize = 32;

/// How many expiring rows a write (an operation that may add a row) visits on the side,
/// removing the dead ones. The sweep goes round a shard of `n` rows every
/// `n / CLEANUP_PER_OP` writes to it, so a dead row is gone at most that many writes after it
/// died; each write adds at most one row, so rows cannot pile up faster than the sweep goes
/// round them. Reads leave the sweep alone: they add nothing.
const CLEANUP_PER_OP: usize = 4;

/// foldhash, seeded per map from the OS-seeded CSPRNG: ids and keys come from outside, and
/// a fixed or guessable seed would let a sender pick colliding ids (HashDoS). SipHash, the
/// standard library's default, cost a fifth of every operation.
type Hasher = SeedableRandomState;
type Map<V> = IndexMap<String, V, Hasher>;

fn random_hasher() -> Hasher {
    match chat_state_core::random_u64() {
        Ok(seed) => SeedableRandomState::with_seed(seed, SharedSeed::global_random()),
        // Without OS randomness no unguessable seed is to be had; foldhash's own
        // per-instance seed is the next best thing, and the store still works.
        Err(_) => SeedableRandomState::random(),
    }
}

/// The in-process backend as a [`StateAdapter`](chat_state_core::StateAdapter): the
/// [`MemoryBackend`] behind core's rule layer. `MemoryState::default()` is an empty store on
/// the system clock; `MemoryState::new(MemoryBackend::with_clock(clock))` reads another clock.
pub type MemoryState = Checked<MemoryBackend>;

/// The in-process backend's storage.
///
/// Every operation locks exactly one shard (chosen by the key's hash), does its work without
/// awaiting, and unlocks, so no lock is ever held across an `.await` and unrelated keys do
/// not contend. Expiry is checked on every read; besides, each operation that reads the clock
/// visits a few expiring rows of its shard (a sweep that goes round the shard) and removes the
/// dead ones, so memory does not grow with dead entries and no write pays for an expiry index
/// ([`MemoryBackend::purge_expired`] removes all dead rows at once).
#[derive(Debug)]
pub struct MemoryBackend {
    shards: Box<[Mutex<Shard>]>,
    /// Picks the shard; seeded apart from the maps', so a shard's keys still spread over its
    /// maps' buckets.
    shard_hasher: Hasher,
    clock: SharedClock,
}

/// A stored row that can die of old age.
trait Expiring {
    /// Whether the row is dead at `now` and may be removed unseen.
    fn is_dead(&self, now: u64) -> bool;
}

/// A lock holder's token, inline when it is the 32 characters the rule layer draws for every
/// acquisition, so taking a lock allocates nothing for it; any other length is kept on the heap.
#[derive(Debug)]
enum StoredToken {
    Inline([u8; 32]),
    Heap(Box<str>),
}

impl StoredToken {
    fn new(token: &str) -> Self {
        match <[u8; 32]>::try_from(token.as_bytes()) {
            Ok(bytes) => StoredToken::Inline(bytes),
            Err(_) => StoredToken::Heap(token.into()),
        }
    }

    fn is(&self, token: &str) -> bool {
        match self {
            StoredToken::Inline(bytes) => bytes == token.as_bytes(),
            StoredToken::Heap(stored) => **stored == *token,
        }
    }

    fn to_owned_string(&self) -> String {
        match self {
            // Always UTF-8: the bytes came from a `&str`.
            StoredToken::Inline(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            StoredToken::Heap(stored) => stored.to_string(),
        }
    }
}

#[derive(Debug)]
struct LockRow {
    token: StoredToken,
    expires_at: u64,
    fence: u64,
}

impl Expiring for LockRow {
    fn is_dead(&self, now: u64) -> bool {
        now >= self.expires_at
    }
}

#[derive(Debug)]
struct CacheRow {
    value: Vec<u8>,
    expires_at: Option<u64>,
}

impl Expiring for CacheRow {
    fn is_dead(&self, now: u64) -> bool {
        !is_live(self.expires_at, now)
    }
}

#[derive(Debug, Default)]
struct ListRow {
    items: VecDeque<Vec<u8>>,
    expires_at: Option<u64>,
}

impl Expiring for ListRow {
    fn is_dead(&self, now: u64) -> bool {
        !is_live(self.expires_at, now)
    }
}

/// A key's fence record ([`Backend::set_fenced`]): the lock id and fence of the last fenced
/// write, living as long as that write's TTL.
#[derive(Debug)]
struct FenceRow {
    lock_id: String,
    fence: u64,
    expires_at: Option<u64>,
}

impl Expiring for FenceRow {
    fn is_dead(&self, now: u64) -> bool {
        !is_live(self.expires_at, now)
    }
}

#[derive(Debug, Default)]
struct QueueRow {
    entries: VecDeque<QueueEntry>,
    /// At least the latest `expires_at` of the entries: once it has passed, every entry has.
    /// Only raised, never lowered when entries leave, so it may be late, never early.
    dead_from: u64,
}

impl QueueRow {
    fn drop_expired(&mut self, now: u64) {
        self.entries.retain(|e| !e.is_expired_at(now));
    }
}

impl Expiring for QueueRow {
    fn is_dead(&self, now: u64) -> bool {
        self.entries.is_empty() || now >= self.dead_from
    }
}

/// The expiring maps of a shard, in the order the sweep visits them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Namespace {
    #[default]
    Lock,
    Cache,
    List,
    Queue,
    Fence,
}

impl Namespace {
    fn next(self) -> Self {
        match self {
            Namespace::Lock => Namespace::Cache,
            Namespace::Cache => Namespace::List,
            Namespace::List => Namespace::Queue,
            Namespace::Queue => Namespace::Fence,
            Namespace::Fence => Namespace::Lock,
        }
    }
}

/// Where the shard's sweep stands: the next row to visit.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    namespace: Namespace,
    index: usize,
}

#[derive(Debug)]
struct Shard {
    subscriptions: HashSet<String, Hasher>,
    locks: Map<LockRow>,
    cache: Map<CacheRow>,
    lists: Map<ListRow>,
    queues: Map<QueueRow>,
    fences: Map<FenceRow>,
    cursor: Cursor,
    /// The last fence issued for any lock of this shard. A lock id always maps to the same
    /// shard, so strictly increasing per shard is strictly increasing per id; one counter per
    /// shard, under the shard's mutex, is shared by no other core (a process-wide atomic
    /// bounced between cores on every acquisition), and no per-id state outlives the lock.
    last_fence: u64,
}

/// What visiting the row under the cursor found.
enum Visit {
    /// The row was dead and is gone; the map's last row moved into its place.
    Removed,
    Kept,
    /// The cursor is past the map's last row.
    End,
}

fn visit<V: Expiring>(map: &mut Map<V>, index: usize, now: u64) -> Visit {
    match map.get_index(index) {
        None => Visit::End,
        Some((_, row)) if row.is_dead(now) => {
            map.swap_remove_index(index);
            Visit::Removed
        }
        Some(_) => Visit::Kept,
    }
}

impl Shard {
    fn new() -> Self {
        Self {
            subscriptions: HashSet::with_hasher(random_hasher()),
            locks: Map::with_hasher(random_hasher()),
            cache: Map::with_hasher(random_hasher()),
            lists: Map::with_hasher(random_hasher()),
            queues: Map::with_hasher(random_hasher()),
            fences: Map::with_hasher(random_hasher()),
            cursor: Cursor::default(),
            last_fence: 0,
        }
    }

    fn expiring_rows(&self) -> usize {
        self.locks.len()
            + self.cache.len()
            + self.lists.len()
            + self.queues.len()
            + self.fences.len()
    }

    /// Visits up to `budget` expiring rows from the cursor on, removing the dead ones.
    /// Returns how many it removed.
    fn sweep(&mut self, now: u64, budget: usize) -> usize {
        // Never more visits than rows, so a small shard is not gone round twice.
        let mut visits = budget.min(self.expiring_rows());
        let mut removed = 0;
        while visits > 0 {
            let Cursor { namespace, index } = self.cursor;
            let found = match namespace {
                Namespace::Lock => visit(&mut self.locks, index, now),
                Namespace::Cache => visit(&mut self.cache, index, now),
                Namespace::List => visit(&mut self.lists, index, now),
                Namespace::Queue => visit(&mut self.queues, index, now),
                Namespace::Fence => visit(&mut self.fences, index, now),
            };
            match found {
                // The row that moved into the slot is visited next.
                Visit::Removed => removed += 1,
                Visit::Kept => self.cursor.index += 1,
                Visit::End => {
                    self.cursor = Cursor {
                        namespace: namespace.next(),
                        index: 0,
                    };
                    continue;
                }
            }
            visits -= 1;
        }
        removed
    }

    /// Removes every dead row. Returns how many it removed.
    fn purge(&mut self, now: u64) -> usize {
        let before = self.expiring_rows();
        self.locks.retain(|_, row| !row.is_dead(now));
        self.cache.retain(|_, row| !row.is_dead(now));
        self.lists.retain(|_, row| !row.is_dead(now));
        self.queues.retain(|_, row| !row.is_dead(now));
        self.fences.retain(|_, row| !row.is_dead(now));
        self.cursor = Cursor::default();
        before - self.expiring_rows()
    }

    /// Takes `request.lock_id` for `request.token` if it is free or expired at `now`, with the
    /// next fence; `None` if it is held.
    fn acquire(&mut self, request: &LockRequest<'_>, now: u64) -> Option<u64> {
        let lock_id = request.lock_id;
        let Shard {
            locks, last_fence, ..
        } = self;
        match locks.get_mut(lock_id) {
            Some(row) if now < row.expires_at => None,
            Some(row) => {
                *last_fence += 1;
                row.token = StoredToken::new(request.token);
                row.expires_at = request.expires_at;
                row.fence = *last_fence;
                Some(*last_fence)
            }
            None => {
                *last_fence += 1;
                let row = LockRow {
                    token: StoredToken::new(request.token),
                    expires_at: request.expires_at,
                    fence: *last_fence,
                };
                locks.insert(lock_id.to_owned(), row);
                Some(*last_fence)
            }
        }
    }

    /// The live holder row of `lock_id` if `token` holds it at `now`.
    fn held_by(&mut self, lock_id: &str, token: &str, now: u64) -> Option<&mut LockRow> {
        self.locks
            .get_mut(lock_id)
            .filter(|row| row.token.is(token) && now < row.expires_at)
    }

    /// Stores the cache row if the key is missing or expired at `now`; whether it stored.
    fn claim(&mut self, key: &str, value: &[u8], expires_at: Option<u64>, now: u64) -> bool {
        if let Some(row) = self.cache.get(key)
            && is_live(row.expires_at, now)
        {
            return false;
        }
        self.put_cache(key, value, expires_at);
        true
    }

    /// Runs `f` on the thread's queue with the entries expired at `now` already dropped, and
    /// drops the queue once it is empty.
    fn with_queue<T>(
        &mut self,
        thread_id: &str,
        now: u64,
        f: impl FnOnce(&mut QueueRow) -> T,
    ) -> T {
        let Some(row) = self.queues.get_mut(thread_id) else {
            let mut row = QueueRow::default();
            let out = f(&mut row);
            if !row.entries.is_empty() {
                self.queues.insert(thread_id.to_owned(), row);
            }
            return out;
        };
        row.drop_expired(now);
        let out = f(row);
        if row.entries.is_empty() {
            self.queues.swap_remove(thread_id);
        }
        out
    }

    /// Appends `entry` to the thread's queue, trims it to `max_size`, and returns its live
    /// depth (rule 7: an entry dead on arrival is accepted but never counted).
    fn enqueue(&mut self, thread_id: &str, entry: QueueEntry, max_size: usize, now: u64) -> usize {
        self.with_queue(thread_id, now, |row| {
            if !entry.is_expired_at(now) {
                row.dead_from = row.dead_from.max(entry.expires_at);
                row.entries.push_back(entry);
            }
            while row.entries.len() > max_size {
                row.entries.pop_front();
            }
            row.entries.len()
        })
    }

    /// [`Backend::release_or_next`] on this (the lock's) shard at `now`.
    fn release_or_next(&mut self, request: &LockRequest<'_>, now: u64) -> Handoff {
        let lock_id = request.lock_id;
        if self.held_by(lock_id, request.token, now).is_none() {
            return Handoff::NotHolder;
        }
        match self.with_queue(lock_id, now, |row| row.entries.pop_front()) {
            Some(entry) => {
                if let Some(row) = self.held_by(lock_id, request.token, now) {
                    row.expires_at = request.expires_at;
                }
                Handoff::Next(entry)
            }
            None => {
                self.locks.swap_remove(lock_id);
                Handoff::Released
            }
        }
    }

    /// [`Backend::set_fenced`] on this (the key's) shard at `now`.
    fn set_fenced(
        &mut self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        expires_at: Option<u64>,
        now: u64,
    ) -> FencedWrite {
        let record = self
            .fences
            .get(key)
            .filter(|row| is_live(row.expires_at, now))
            .map(|row| (row.lock_id.as_str(), row.fence));
        if dispatch::is_stale(record, lock) {
            return FencedWrite::Stale;
        }
        self.put_cache(key, value, expires_at);
        let row = FenceRow {
            lock_id: lock.thread_id.clone(),
            fence: lock.fence,
            expires_at,
        };
        self.fences.insert(key.to_owned(), row);
        FencedWrite::Stored
    }

    /// Stores a cache row, replacing value and expiry; reuses the row's buffer when it fits.
    fn put_cache(&mut self, key: &str, value: &[u8], expires_at: Option<u64>) {
        match self.cache.get_mut(key) {
            Some(row) => {
                copy_into(&mut row.value, value);
                row.expires_at = expires_at;
            }
            None => {
                self.cache.insert(
                    key.to_owned(),
                    CacheRow {
                        value: value.to_vec(),
                        expires_at,
                    },
                );
            }
        }
    }
}

/// Overwrites `buffer` with `value` without allocating when its capacity fits, unless that
/// would keep much more memory than the value needs.
fn copy_into(buffer: &mut Vec<u8>, value: &[u8]) {
    if buffer.capacity() > 2 * value.len() + 64 {
        *buffer = value.to_vec();
    } else {
        buffer.clear();
        buffer.extend_from_slice(value);
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
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            shard_hasher: random_hasher(),
            clock,
        }
    }

    /// Removes every expired entry now, and returns how many it removed.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now_ms();
        self.shards
            .iter()
            .map(|shard| lock_shard(shard).purge(now))
            .sum()
    }

    /// Number of stored rows of every kind, expired or not yet cleaned (for tests and
    /// monitoring memory use).
    pub fn stored_rows(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let s = lock_shard(shard);
                s.subscriptions.len() + s.expiring_rows()
            })
            .sum()
    }

    fn shard_index(&self, key: &str) -> usize {
        (self.shard_hasher.hash_one(key) as usize) & (SHARDS - 1)
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        lock_shard(&self.shards[self.shard_index(key)])
    }

    /// Runs `f` on the key's shard, for operations whose outcome does not depend on time.
    fn with_shard<T>(&self, key: &str, f: impl FnOnce(&mut Shard) -> T) -> Result<T> {
        Ok(f(&mut self.shard(key)))
    }

    /// Runs `f` on the key's shard at `now`; a write (which may add a row) first sweeps a
    /// few rows of that shard.
    fn with_shard_at<T>(
        &self,
        key: &str,
        now: u64,
        access: Access,
        f: impl FnOnce(&mut Shard, u64) -> Result<T>,
    ) -> Result<T> {
        let mut shard = self.shard(key);
        if access == Access::Write {
            shard.sweep(now, CLEANUP_PER_OP);
        }
        f(&mut shard, now)
    }

    /// [`Self::with_shard_at`] the current time.
    fn with_shard_now<T>(
        &self,
        key: &str,
        access: Access,
        f: impl FnOnce(&mut Shard, u64) -> Result<T>,
    ) -> Result<T> {
        self.with_shard_at(key, self.clock.now_ms(), access, f)
    }
}

/// Whether an operation may add a row, and so pays for sweeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
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
    /// [`Shard::with_queue`] on the thread's shard, now.
    fn with_queue<T>(
        &self,
        thread_id: &str,
        access: Access,
        f: impl FnOnce(&mut QueueRow) -> T,
    ) -> Result<T> {
        self.with_shard_now(thread_id, access, |s, now| {
            Ok(s.with_queue(thread_id, now, f))
        })
    }

    /// Locks the shards of `first` and `second` (once if they share one), in index order so
    /// two callers locking the same pair cannot deadlock, and runs `f` on them.
    fn with_two_shards<T>(
        &self,
        first: &str,
        second: &str,
        f: impl FnOnce(&mut Shard, Option<&mut Shard>) -> T,
    ) -> T {
        let (a, b) = (self.shard_index(first), self.shard_index(second));
        if a == b {
            return f(&mut lock_shard(&self.shards[a]), None);
        }
        let (low, high) = (a.min(b), a.max(b));
        let mut low = lock_shard(&self.shards[low]);
        let mut high = lock_shard(&self.shards[high]);
        if a < b {
            f(&mut low, Some(&mut high))
        } else {
            f(&mut high, Some(&mut low))
        }
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn close(&self) -> Result<()> {
        for shard in self.shards.iter() {
            let mut s = lock_shard(shard);
            // Fences keep rising, even for a caller that uses the backend after close.
            let last_fence = s.last_fence;
            *s = Shard::new();
            s.last_fence = last_fence;
        }
        Ok(())
    }

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        self.with_shard(thread_id, |s| {
            if !s.subscriptions.contains(thread_id) {
                s.subscriptions.insert(thread_id.to_owned());
            }
        })
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        self.with_shard(thread_id, |s| {
            s.subscriptions.remove(thread_id);
        })
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        self.with_shard(thread_id, |s| s.subscriptions.contains(thread_id))
    }

    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let lock_id = request.lock_id;
        // The time the layer read just before, on this same clock: a holder that expired
        // since is seen as holding, never the other way round, and the expiry is exactly
        // the one the caller is told.
        self.with_shard_at(lock_id, request.now_ms, Access::Write, |s, now| {
            Ok(s.acquire(request, now))
        })
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        self.with_shard(&lock.thread_id, |s| {
            if s.locks
                .get(&lock.thread_id)
                .is_some_and(|row| row.token.is(&lock.token))
            {
                s.locks.swap_remove(&lock.thread_id);
            }
        })
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        let lock_id = request.lock_id;
        self.with_shard_at(lock_id, request.now_ms, Access::Read, |s, now| {
            let Some(row) = s.held_by(lock_id, request.token, now) else {
                return Ok(false);
            };
            row.expires_at = request.expires_at;
            Ok(true)
        })
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        self.with_shard(lock_id, |s| {
            s.locks.swap_remove(lock_id);
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_shard_now(key, Access::Read, |s, now| {
            Ok(s.cache
                .get(key)
                .filter(|row| is_live(row.expires_at, now))
                .map(|row| row.value.clone()))
        })
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.with_shard_now(key, Access::Write, |s, now| {
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
        self.with_shard_now(key, Access::Write, |s, now| {
            let expires_at = expiry(Operation::SetIfNotExists, now, ttl)?;
            Ok(s.claim(key, value, expires_at, now))
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.with_shard(key, |s| {
            s.cache.swap_remove(key);
        })
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        self.with_shard_now(key, Access::Write, |s, now| {
            let new_expiry = expiry(Operation::AppendToList, now, options.ttl)?;
            let row = match s.lists.get_mut(key) {
                Some(row) => row,
                None => s.lists.entry(key.to_owned()).or_default(),
            };
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
            Ok(())
        })
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.with_shard_now(key, Access::Read, |s, now| {
            Ok(s.lists
                .get(key)
                .filter(|row| is_live(row.expires_at, now))
                .map(|row| row.items.iter().cloned().collect())
                .unwrap_or_default())
        })
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        self.with_shard_now(thread_id, Access::Write, |s, now| {
            Ok(s.enqueue(thread_id, entry, max_size, now))
        })
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        self.with_queue(thread_id, Access::Read, |row| row.entries.pop_front())
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        self.with_queue(thread_id, Access::Read, |row| row.entries.len())
    }

    const ATOMIC_DISPATCH: bool = true;

    async fn admit(&self, request: &AdmitRequest<'_>) -> Result<AdmitOutcome> {
        let lock = &request.lock;
        let thread_id = lock.lock_id;
        // The lock's clock reading, as for acquire_lock: one instant for the whole step.
        let now = lock.now_ms;
        let claim_expiry = Some(validate::expiry_ms(
            BACKEND,
            Operation::Admit,
            now,
            request.dedupe_ttl,
        )?);
        self.with_two_shards(request.dedupe_key, thread_id, |claims, threads| {
            claims.sweep(now, CLEANUP_PER_OP);
            if !claims.claim(request.dedupe_key, DEDUPE_VALUE, claim_expiry, now) {
                return Ok(AdmitOutcome::Duplicate);
            }
            let threads = match threads {
                Some(threads) => {
                    threads.sweep(now, CLEANUP_PER_OP);
                    threads
                }
                None => claims,
            };
            if let Some(fence) = threads.acquire(lock, now) {
                let subscribed = threads.subscriptions.contains(thread_id);
                return Ok(AdmitOutcome::Admitted { fence, subscribed });
            }
            Ok(match request.when_busy {
                WhenBusy::Drop => AdmitOutcome::Dropped,
                WhenBusy::Queue { entry, max_size } => AdmitOutcome::Queued {
                    depth: threads.enqueue(thread_id, entry.clone(), *max_size, now),
                },
            })
        })
    }

    async fn release_or_next(&self, request: &LockRequest<'_>) -> Result<Handoff> {
        self.with_shard_at(request.lock_id, request.now_ms, Access::Read, |s, now| {
            Ok(s.release_or_next(request, now))
        })
    }

    async fn release_or_next_with(
        &self,
        request: &LockRequest<'_>,
        lock: &Lock,
        write: &FencedSet<'_>,
    ) -> Result<Handoff> {
        let now = request.now_ms;
        let expires_at = expiry(Operation::ReleaseOrNext, now, write.ttl)?;
        self.with_two_shards(write.key, request.lock_id, |keys, threads| {
            keys.sweep(now, CLEANUP_PER_OP);
            let written = keys.set_fenced(lock, write.key, write.value, expires_at, now);
            if written == FencedWrite::Stale {
                return Ok(Handoff::NotHolder);
            }
            let threads = threads.unwrap_or(keys);
            Ok(threads.release_or_next(request, now))
        })
    }

    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        self.with_shard_now(key, Access::Write, |s, now| {
            let expires_at = expiry(Operation::SetFenced, now, ttl)?;
            Ok(s.set_fenced(lock, key, value, expires_at, now))
        })
    }
}

impl LockInspector for MemoryBackend {
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        self.with_shard_now(lock_id, Access::Read, |s, now| {
            Ok(s.locks
                .get(lock_id)
                .filter(|row| now < row.expires_at)
                .map(|row| {
                    LockInfo::new(row.token.to_owned_string(), row.expires_at, Some(row.fence))
                }))
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
        // Reads leave them be...
        state.get("a read").await.unwrap();
        assert_eq!(state.backend().stored_rows(), 2_000);
        // ...one write cleans exactly its budget from its shard (2,000 rows over 32 shards
        // leave every shard more expired rows than that), never the whole backlog...
        state.delete("a write").await.unwrap();
        state.set("a write", b"v", None).await.unwrap();
        assert_eq!(state.backend().stored_rows(), 2_000 - CLEANUP_PER_OP + 1);
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
        assert_eq!(state.backend().stored_rows(), 401);
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
    async fn tokens_of_any_length_are_kept_and_compared_exactly() {
        // Through the rule layer every token is 32 characters (kept inline); a caller of the
        // raw backend may store others, kept on the heap.
        let backend = MemoryBackend::with_clock(ManualClock::new(1_000));
        let ttl = Duration::from_secs(1);
        let hex = "0123456789abcdef0123456789abcdef";
        for token in [hex, "short", "a-token-longer-than-thirty-two-characters"] {
            let request =
                LockRequest::new(BACKEND, Operation::AcquireLock, "t", token, ttl, 1_000).unwrap();
            assert!(backend.acquire_lock(&request).await.unwrap().is_some());
            let info = backend.lock_info("t").await.unwrap().unwrap();
            assert_eq!(info.token, token);
            let other = Lock {
                thread_id: "t".into(),
                token: format!("{token}x"),
                expires_at: 2_000,
                fence: 0,
            };
            backend.release_lock(&other).await.unwrap();
            assert!(
                backend.lock_info("t").await.unwrap().is_some(),
                "{token}: wrong token released"
            );
            let extend = LockRequest::new(
                BACKEND,
                Operation::ExtendLock,
                "t",
                &other.token,
                ttl,
                1_000,
            )
            .unwrap();
            assert!(!backend.extend_lock(&extend).await.unwrap());
            let extend =
                LockRequest::new(BACKEND, Operation::ExtendLock, "t", token, ttl, 1_000).unwrap();
            assert!(backend.extend_lock(&extend).await.unwrap());
            let mine = Lock {
                token: token.into(),
                ..other
            };
            backend.release_lock(&mine).await.unwrap();
            assert_eq!(
                backend.lock_info("t").await.unwrap(),
                None,
                "{token}: not released"
            );
        }
    }

    /// A shard with every kind of expiring row, half of them dying at 2,000 ms.
    fn mixed_shard(rows_per_kind: usize) -> Shard {
        let mut s = Shard::new();
        for i in 0..rows_per_kind {
            let key = format!("k{i}");
            let dies = (i % 2 == 0).then_some(2_000);
            s.locks.insert(
                key.clone(),
                LockRow {
                    token: StoredToken::new("t"),
                    expires_at: dies.unwrap_or(u64::MAX),
                    fence: 1,
                },
            );
            s.put_cache(&key, b"v", dies);
            s.lists.insert(
                key.clone(),
                ListRow {
                    items: VecDeque::from([b"v".to_vec()]),
                    expires_at: dies,
                },
            );
            let entry = QueueEntry::new(serde_json::json!(i), 0, Duration::from_millis(2_000));
            s.queues.insert(
                key,
                QueueRow {
                    dead_from: if dies.is_some() { 2_000 } else { u64::MAX },
                    entries: VecDeque::from([entry]),
                },
            );
        }
        s
    }

    #[test]
    fn the_sweep_goes_round_every_map_of_the_shard() {
        let mut s = mixed_shard(50);
        assert_eq!(s.sweep(1_999, 400), 0, "nothing is dead yet");
        // 200 rows, 100 dead: each call visits 8, so 25 calls visit every row once, whatever
        // the removals move around.
        let removed: usize = (0..25).map(|_| s.sweep(2_000, 8)).sum();
        assert_eq!(removed, 100);
        assert_eq!(s.expiring_rows(), 100);
        for (key, row) in &s.cache {
            assert!(row.expires_at.is_none(), "{key} should have been swept");
        }
        assert!(s.locks.values().all(|r| r.expires_at == u64::MAX));
        assert!(s.lists.values().all(|r| r.expires_at.is_none()));
        assert!(s.queues.values().all(|r| r.dead_from == u64::MAX));
        assert_eq!(s.sweep(10_000, 400), 0, "the live rows never die");
    }

    #[test]
    fn one_sweep_visits_no_more_than_its_budget_nor_a_row_twice() {
        let mut s = mixed_shard(50);
        // Three visits: k0 (dead, removed; k49 moves into its slot), k49 (live), k1 (live).
        assert_eq!(s.sweep(2_000, 3), 1);
        assert_eq!(s.expiring_rows(), 199);
        assert_eq!(s.sweep(2_000, 1), 1, "the fourth visit is k2, dead");
        let mut small = mixed_shard(1);
        assert_eq!(small.sweep(2_000, 400), 4, "4 rows: one visit each");
        assert_eq!(small.sweep(2_000, 400), 0);
        assert_eq!(small.purge(2_000), 0);
        let mut purged = mixed_shard(50);
        assert_eq!(purged.purge(1_999), 0);
        assert_eq!(purged.purge(2_000), 100);
    }

    #[test]
    fn overwriting_a_value_reuses_its_buffer_unless_it_would_waste_memory() {
        let mut buffer = vec![0u8; 300];
        let before = buffer.as_ptr();
        copy_into(&mut buffer, &[1; 200]);
        assert_eq!(
            (buffer.as_ptr(), buffer.as_slice()),
            (before, &[1u8; 200][..])
        );
        // The boundary: a buffer of exactly twice the value plus 64 bytes is still reused.
        let mut edge: Vec<u8> = Vec::with_capacity(2 * 100 + 64);
        let edge_at = edge.as_ptr();
        copy_into(&mut edge, &[3; 100]);
        assert_eq!(edge.as_ptr(), edge_at);
        copy_into(&mut buffer, &[2; 10]);
        assert_eq!(buffer, vec![2; 10]);
        assert!(
            buffer.capacity() < 300,
            "a small value does not keep a big buffer"
        );
    }
}
