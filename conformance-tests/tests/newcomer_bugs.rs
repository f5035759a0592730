//! How strong is the suite? Broken backends as a newcomer would write them, one plausible bug
//! each, every one of which the suite must kill, on every clock it can be seen on.
//!
//! `teeth.rs` holds the bugs the cases were written against; these were written against
//! SEMANTICS.md instead, rule by rule, as a backend author gets things wrong: an off-by-one
//! at a boundary on one operation only, a unit miscounted (seconds for milliseconds, chars for
//! bytes, a sub-millisecond TTL truncated to 0), a case forgotten on one operation, a
//! check-then-act race, a per-id counter that restarts, two namespaces sharing a table.
//!
//! Two kinds of subjects:
//!
//! - [`Newbie`], a [`Backend`] over the memory backend's storage behind core's rule layer
//!   [`Checked`], as a new backend is built. Its queues are its own (a `VecDeque` per
//!   thread), so the queue bugs are one `if` each; everything else delegates to
//!   [`MemoryBackend`] except the one bug.
//! - [`Diy`], an adapter that implements the public traits itself over a [`MemoryBackend`]
//!   (as a third party may), with its own input validation, closed flag, tokens and
//!   `expires_at`: the rules `Checked` enforces (2 and 9 input rules, 10 tokens,
//!   12 `expires_at`, 13 close) can only be broken there.
//!
//! Each bug runs the suite through `run_all` on a manual clock and on the wall clock
//! (`Harness::with_real_time`; see below for which cases), one `#[test]` per bug and clock. A bug counts as killed only
//! if a *fixed* case fails: the random model test and the linearizability check are the net
//! under the fixed cases and are reported, but do not count. A few bugs are by nature
//! invisible to a wall clock (they move a boundary by 1 ms, or need time to pass during a
//! call that takes microseconds); [`WALL_INVISIBLE`] lists them with the reason, and for them
//! only the manual clock is asserted. `kill_count` prints the table and asserts it all.
//!
//! The runs are shared: each (bug, clock) runs once per process, eight at a time, whichever
//! test asks first. A full wall-clock `run_all` takes about 20 s (it sleeps its cases one
//! after another), which 41 bugs would turn into a quarter of an hour of sleeping: so a bug's
//! wall-clock run is restricted (`run_all`'s filter) to the areas of the rule it breaks
//! ([`Bug::areas`]), while its manual-clock run and the two controls run the whole suite on
//! both clocks. All of it takes about 40 s.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use chat_state_conformance::{CaseReport, Failure, Harness, Outcome, Report, run_all};
use chat_state_core::validate::{
    self, MAX_COLLECTION_LEN, MAX_KEY_BYTES, MAX_TTL, MAX_VALUE_BYTES,
};
use chat_state_core::{
    Backend, Cache, Checked, Error, ErrorKind, ListOptions, Lists, Lock, LockInspector,
    LockRequest, Locks, ManualClock, Operation, QueueEntry, Queues, Result, SharedClock,
    StateAdapter, Subscriptions, async_trait, new_lock_token, system_clock,
};
use chat_state_memory::MemoryBackend;

const MS: Duration = Duration::from_millis(1);

/// One bug per variant. `None` and `DiyNone` are the controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bug {
    // ---- controls ----
    /// The backend wrapper without a bug.
    None,
    /// The hand-written adapter without a bug.
    DiyNone,

    // ---- rule 1: live iff now < expires_at ----
    /// `set_if_not_exists` treats `now == expires_at` as live (`<=` on this one operation).
    SinxLiveAtExpiry,
    /// List expiry is inclusive (`now <= expires_at`), on lists only.
    ListLiveAtExpiry,
    /// `extend_lock` still succeeds at the expiry instant (`now <= expires_at`).
    ExtendAtExpiryInstant,
    /// Queue entries are dead only once `expires_at < now`.
    QueueLiveAtExpiry,

    // ---- rule 2: TTLs ----
    /// Cache TTLs are sent as whole seconds, rounded up to at least 1 s (Redis `EX`).
    CacheTtlWholeSeconds,
    /// `set_if_not_exists` converts its TTL with `as_millis()`: a sub-millisecond TTL
    /// truncates to 0, which the backend stores as "no expiry" (upstream's 0 = forever).
    SinxSubMsTtlForever,
    /// The same truncation on `append_to_list`'s TTL.
    ListSubMsTtlForever,
    /// `set` with `ttl: None` keeps the earlier expiry (like `SET ... KEEPTTL`).
    SetKeepsOldTtl,
    /// `extend_lock` only ever lengthens (`expires_at = max(expires_at, now + ttl)`).
    ExtendNeverShortens,

    // ---- rule 3: extend only for the current holder ----
    /// `extend_lock` checks that the lock is held, not by whom (`WHERE id = ? AND live`).
    ExtendIgnoresToken,

    // ---- rule 4: release and force-release ----
    /// `release_lock` deletes by token alone (`DELETE ... WHERE token = ?`), whatever id the
    /// handle names.
    ReleaseByTokenOnly,
    /// `force_release_lock` of a free lock is an error ("no such lock").
    ForceReleaseMissingErrors,

    // ---- rule 5: set_if_not_exists ----
    /// `set_if_not_exists` drops the TTL (`SETNX` without `PX`).
    SinxIgnoresTtl,
    /// `set_if_not_exists` is `GET`, then `SET`: two round trips, check-then-act.
    RacySetIfNotExists,

    // ---- rule 6: lists ----
    /// An append with a TTL that creates the list forgets the TTL (only refreshes existing).
    ListTtlForgottenOnNewList,
    /// Trims to `max_length` *before* appending, so the list holds `max_length + 1`.
    ListTrimsBeforeAppend,
    /// An append without a TTL clears the list's expiry (an upsert writing `expires_at = NULL`).
    ListAppendWithoutTtlClearsExpiry,

    // ---- rule 7: queues ----
    /// `enqueue` trims to `max_size` before dropping expired entries: dead ones take room.
    EnqueueTrimsBeforeDroppingExpired,
    /// `queue_depth` is the raw length, expired entries included (`COUNT(*)`), while
    /// `dequeue` skips them.
    DepthIsRawLength,
    /// An entry dead on arrival is stored and counted by `enqueue`'s result.
    EnqueueCountsDeadOnArrival,
    /// `dequeue` reads the head, then pops in a second round trip: concurrent dequeuers get
    /// the same entry (and another is lost).
    RacyDequeue,

    // ---- rule 8: namespaces ----
    /// Lists and queues share one table: `get_list` also returns a queue's entries.
    ListsSeeQueues,

    // ---- rule 9: keys are exact, values are bytes ----
    /// Cache keys are case-insensitive (a `utf8mb4_general_ci` column).
    CacheKeysCaseFolded,

    // ---- rule 11: fencing ----
    /// Fences are a per-id counter kept in the lock row, deleted on release.
    FenceResetsAfterRelease,
    /// Fences are a per-id counter that the expiry sweeper deletes with the expired lock.
    FenceRestartsAfterExpiry,
    /// Taking over an *expired* lock reads, then writes (`SELECT` then `UPDATE`): concurrent
    /// acquirers of an expired lock all win. (A free lock is taken atomically.)
    RacyTakeover,

    // ---- rule 14: the raw API returns the bytes ----
    /// The cache column is JSONB: a value that is not JSON is stored as `null`, so the typed
    /// helper hands back a default instead of `CorruptData`.
    CacheJsonbColumn,
    /// `get_list` skips items that do not parse as JSON ("corrupt rows").
    ListSkipsNonJsonItems,

    // ---- the hand-written adapter: rules 2, 9, 10, 12, 13 ----
    /// Key length checked in chars, not bytes.
    DiyKeyLimitInChars,
    /// `MAX_TTL` compared in whole seconds: `MAX_TTL + 1 ms` passes.
    DiyTtlLimitInSeconds,
    /// `MAX_TTL` compared in whole milliseconds (truncating): `MAX_TTL + 1 ns` passes.
    DiyTtlLimitInWholeMs,
    /// The queue message size limit is applied to the JSON of the whole entry.
    DiyQueueSizeOfWholeEntry,
    /// The queue message size limit counts characters of its JSON, not bytes.
    DiyQueueSizeInChars,
    /// `set_if_not_exists` validates with `set`'s rules and names `Set` in its errors.
    DiyErrorNamesWrongOperation,
    /// Tokens from a counter, zero-padded to 32 hex digits: unique but guessable.
    DiyTokenFromCounter,
    /// Tokens of 64 random bits, zero-padded to 32 hex digits.
    DiyToken64Bits,
    /// `expires_at` from a clock read after the backend answered.
    DiyExpiresAtAfterCall,
    /// Lock TTLs converted with `as_millis()` (a 1 µs lock expires at once).
    DiyLockTtlTruncated,
    /// `connect` works after `close`.
    DiyConnectAfterClose,
    /// `enqueue` checks "closed" before validating its input.
    DiyClosedBeforeValidationOnEnqueue,
    /// A second `close` fails.
    DiyCloseTwiceFails,
}

impl Bug {
    /// The cases a wall-clock run of this bug is restricted to (by name prefix).
    fn areas(self) -> &'static [&'static str] {
        use Bug::*;
        match self {
            None | DiyNone => &[""],
            SinxLiveAtExpiry | CacheTtlWholeSeconds | SinxSubMsTtlForever | SetKeepsOldTtl
            | SinxIgnoresTtl | RacySetIfNotExists | CacheKeysCaseFolded => {
                &["cache_", "validation_", "typed_set"]
            }
            ListLiveAtExpiry
            | ListSubMsTtlForever
            | ListTtlForgottenOnNewList
            | ListTrimsBeforeAppend
            | ListAppendWithoutTtlClearsExpiry
            | ListSkipsNonJsonItems => &["list_", "validation_", "typed_"],
            ExtendAtExpiryInstant
            | ExtendNeverShortens
            | ExtendIgnoresToken
            | ReleaseByTokenOnly
            | ForceReleaseMissingErrors
            | FenceResetsAfterRelease
            | FenceRestartsAfterExpiry
            | RacyTakeover => &["lock_", "lifecycle_"],
            QueueLiveAtExpiry
            | EnqueueTrimsBeforeDroppingExpired
            | DepthIsRawLength
            | EnqueueCountsDeadOnArrival
            | RacyDequeue => &["queue_", "typed_queue"],
            ListsSeeQueues => &["namespace_", "list_"],
            CacheJsonbColumn => &["typed_", "cache_"],
            DiyKeyLimitInChars
            | DiyTtlLimitInSeconds
            | DiyTtlLimitInWholeMs
            | DiyQueueSizeOfWholeEntry
            | DiyQueueSizeInChars
            | DiyErrorNamesWrongOperation => &["validation_", "subscription_", "lifecycle_"],
            DiyTokenFromCounter | DiyToken64Bits | DiyExpiresAtAfterCall | DiyLockTtlTruncated => {
                &["lock_", "validation_"]
            }
            DiyConnectAfterClose | DiyClosedBeforeValidationOnEnqueue | DiyCloseTwiceFails => {
                &["lifecycle_"]
            }
        }
    }

    fn is_diy(self) -> bool {
        format!("{self:?}").starts_with("Diy")
    }
}

/// Bugs a wall clock cannot see, with the reason; for these only the manual clock is
/// asserted (the wall-clock result is still reported).
const WALL_INVISIBLE: &[(Bug, &str)] = &[
    (
        Bug::SinxLiveAtExpiry,
        "live for exactly one more millisecond: only a clock that stops at expires_at sees it",
    ),
    (
        Bug::ListLiveAtExpiry,
        "live for exactly one more millisecond: only a clock that stops at expires_at sees it",
    ),
    (
        Bug::ExtendAtExpiryInstant,
        "wrong at exactly one instant (now == expires_at), which a sleeping case cannot hit",
    ),
    (
        Bug::QueueLiveAtExpiry,
        "live for exactly one more millisecond (an entry dead on arrival shows it only when the \
         case and the backend read the same millisecond)",
    ),
    (
        Bug::DiyExpiresAtAfterCall,
        "the call takes microseconds, so a clock read after it differs from one read before \
         by less than the 1 ms resolution unless time is moved during the call",
    ),
];

/// Cases that are the net under the fixed cases (random or recorded histories): reported,
/// but a bug only counts as killed by a fixed case.
const NETS: &[&str] = &["model_based_operations", "locks_linearizable"];

// ------------------------------------------------------------------------------------------
// The backend wrapper
// ------------------------------------------------------------------------------------------

/// Bookkeeping the bugs need, and the wrapper's own queues.
#[derive(Debug, Default)]
struct Side {
    /// Cache expiry as last written, per key (`None` = no expiry).
    cache_expiry: HashMap<String, Option<u64>>,
    /// Lock id -> (token, expires_at) as last granted or extended.
    locks: HashMap<String, (String, u64)>,
    /// Token -> lock id.
    tokens: HashMap<String, String>,
    /// Per-id fence counters (the fence bugs).
    fences: HashMap<String, u64>,
    /// The queues: per thread, oldest first.
    queues: HashMap<String, VecDeque<QueueEntry>>,
}

/// The memory backend's storage (its own queues) with one bug.
#[derive(Debug)]
struct Newbie {
    inner: MemoryBackend,
    clock: SharedClock,
    bug: Bug,
    side: Mutex<Side>,
}

impl Newbie {
    fn new(bug: Bug, clock: SharedClock) -> Self {
        Self {
            inner: MemoryBackend::with_shared_clock(clock.clone()),
            clock,
            bug,
            side: Mutex::default(),
        }
    }

    fn side(&self) -> MutexGuard<'_, Side> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A second round trip to the store (the gap of the check-then-act bugs).
    async fn round_trip() {
        tokio::time::sleep(MS).await;
    }

    fn dead(&self, e: &QueueEntry, now: u64) -> bool {
        if self.bug == Bug::QueueLiveAtExpiry {
            e.expires_at < now
        } else {
            e.expires_at <= now
        }
    }

    fn cache_key(&self, key: &str) -> String {
        if self.bug == Bug::CacheKeysCaseFolded {
            key.to_lowercase()
        } else {
            key.to_owned()
        }
    }

    fn cache_ttl(&self, ttl: Option<Duration>) -> Option<Duration> {
        if self.bug == Bug::CacheTtlWholeSeconds {
            ttl.map(|t| Duration::from_secs(t.as_secs().max(1)))
        } else {
            ttl
        }
    }

    fn record_cache(&self, key: &str, now: u64, ttl: Option<Duration>) -> Result<()> {
        let at = validate::optional_expiry_ms(self.name(), Operation::Set, now, ttl)?;
        self.side().cache_expiry.insert(key.to_owned(), at);
        Ok(())
    }

    fn record_lock(&self, request: &LockRequest<'_>) {
        let mut side = self.side();
        side.locks.insert(
            request.lock_id.to_owned(),
            (request.token.to_owned(), request.expires_at),
        );
        side.tokens
            .insert(request.token.to_owned(), request.lock_id.to_owned());
    }
}

impl Backend for Newbie {
    fn name(&self) -> &'static str {
        "newbie"
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        self.inner.subscribe(thread_id).await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        self.inner.unsubscribe(thread_id).await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        self.inner.is_subscribed(thread_id).await
    }

    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let id = request.lock_id;
        let now = self.now_ms();
        let previous_expired = self.side().locks.get(id).is_some_and(|(_, at)| now >= *at);
        if self.bug == Bug::RacyTakeover && previous_expired {
            // The bug: "is the holder expired?" and "take it" are two round trips.
            Self::round_trip().await;
            self.inner.force_release_lock(id).await?;
        }
        let Some(fence) = self.inner.acquire_lock(request).await? else {
            return Ok(None);
        };
        self.record_lock(request);
        Ok(Some(match self.bug {
            Bug::FenceResetsAfterRelease | Bug::FenceRestartsAfterExpiry => {
                let mut side = self.side();
                if self.bug == Bug::FenceRestartsAfterExpiry && previous_expired {
                    side.fences.remove(id);
                }
                let counter = side.fences.entry(id.to_owned()).or_insert(0);
                *counter += 1;
                *counter
            }
            _ => fence,
        }))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        if self.bug == Bug::ReleaseByTokenOnly {
            let owner = self.side().tokens.get(&lock.token).cloned();
            if let Some(id) = owner {
                let by_token = Lock {
                    thread_id: id,
                    ..lock.clone()
                };
                self.inner.release_lock(&by_token).await?;
            }
            return Ok(());
        }
        let holds = self
            .inner
            .lock_info(&lock.thread_id)
            .await?
            .is_some_and(|info| info.token == lock.token);
        self.inner.release_lock(lock).await?;
        if holds && self.bug == Bug::FenceResetsAfterRelease {
            self.side().fences.remove(&lock.thread_id);
        }
        Ok(())
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        let id = request.lock_id;
        let now = self.now_ms();
        if self.bug == Bug::ExtendNeverShortens
            && let Some(info) = self.inner.lock_info(id).await?
            && info.token == request.token
            && info.expires_at > request.expires_at
        {
            return Ok(true);
        }
        if self.inner.extend_lock(request).await? {
            self.record_lock(request);
            return Ok(true);
        }
        match self.bug {
            Bug::ExtendAtExpiryInstant => {
                let at_instant = self
                    .side()
                    .locks
                    .get(id)
                    .is_some_and(|(token, at)| token == request.token && *at == now);
                if at_instant && self.inner.acquire_lock(request).await?.is_some() {
                    self.record_lock(request);
                    return Ok(true);
                }
                Ok(false)
            }
            Bug::ExtendIgnoresToken => match self.inner.lock_info(id).await? {
                Some(info) => {
                    let holder = LockRequest::new(
                        self.name(),
                        Operation::ExtendLock,
                        id,
                        &info.token,
                        request.ttl,
                        request.now_ms,
                    )?;
                    self.inner.extend_lock(&holder).await
                }
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        if self.bug == Bug::ForceReleaseMissingErrors
            && self.inner.lock_info(lock_id).await?.is_none()
        {
            return Err(Error::new(
                ErrorKind::Backend,
                format!("no lock is held on {lock_id:?}"),
            ));
        }
        self.inner.force_release_lock(lock_id).await?;
        if self.bug == Bug::FenceResetsAfterRelease {
            self.side().fences.remove(lock_id);
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(&self.cache_key(key)).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let key = self.cache_key(key);
        let now = self.now_ms();
        let mut ttl = self.cache_ttl(ttl);
        if self.bug == Bug::SetKeepsOldTtl && ttl.is_none() {
            let old = self.side().cache_expiry.get(&key).copied().flatten();
            ttl = old
                .filter(|at| *at > now)
                .map(|at| Duration::from_millis(at - now));
        }
        let value: &[u8] = if self.bug == Bug::CacheJsonbColumn
            && serde_json::from_slice::<serde_json::Value>(value).is_err()
        {
            b"null"
        } else {
            value
        };
        self.inner.set(&key, value, ttl).await?;
        self.record_cache(&key, now, ttl)
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let key = self.cache_key(key);
        let now = self.now_ms();
        let mut ttl = self.cache_ttl(ttl);
        match self.bug {
            Bug::SinxIgnoresTtl => ttl = None,
            Bug::SinxSubMsTtlForever => ttl = ttl.filter(|t| t.as_millis() > 0),
            Bug::SinxLiveAtExpiry if self.side().cache_expiry.get(&key) == Some(&Some(now)) => {
                return Ok(false);
            }
            Bug::RacySetIfNotExists => {
                if self.inner.get(&key).await?.is_some() {
                    return Ok(false);
                }
                Self::round_trip().await;
                self.inner.set(&key, value, ttl).await?;
                self.record_cache(&key, now, ttl)?;
                return Ok(true);
            }
            _ => {}
        }
        let stored = self.inner.set_if_not_exists(&key, value, ttl).await?;
        if stored {
            self.record_cache(&key, now, ttl)?;
        }
        Ok(stored)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = self.cache_key(key);
        self.inner.delete(&key).await?;
        self.side().cache_expiry.remove(&key);
        Ok(())
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let mut options = options;
        let new_list = self.bug == Bug::ListTtlForgottenOnNewList
            && self.inner.get_list(key).await?.is_empty();
        match self.bug {
            Bug::ListLiveAtExpiry => options.ttl = options.ttl.map(|t| t + MS),
            Bug::ListSubMsTtlForever => options.ttl = options.ttl.filter(|t| t.as_millis() > 0),
            Bug::ListTtlForgottenOnNewList if new_list => options.ttl = None,
            Bug::ListTrimsBeforeAppend => options.max_length = options.max_length.map(|m| m + 1),
            Bug::ListAppendWithoutTtlClearsExpiry => options.ttl = options.ttl.or(Some(MAX_TTL)),
            _ => {}
        }
        self.inner.append_to_list(key, value, options).await
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let mut items = self.inner.get_list(key).await?;
        match self.bug {
            Bug::ListSkipsNonJsonItems => {
                items.retain(|i| serde_json::from_slice::<serde_json::Value>(i).is_ok());
            }
            Bug::ListsSeeQueues => {
                let now = self.now_ms();
                let side = self.side();
                if let Some(q) = side.queues.get(key) {
                    for e in q.iter().filter(|e| !self.dead(e, now)) {
                        items.push(serde_json::to_vec(e).unwrap_or_default());
                    }
                }
            }
            _ => {}
        }
        Ok(items)
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let now = self.now_ms();
        let bug = self.bug;
        let mut side = self.side();
        let q = side.queues.entry(thread_id.to_owned()).or_default();
        if bug != Bug::EnqueueTrimsBeforeDroppingExpired {
            q.retain(|e| !self.dead(e, now));
        }
        if bug == Bug::EnqueueCountsDeadOnArrival || !self.dead(&entry, now) {
            q.push_back(entry);
        }
        while q.len() > max_size {
            q.pop_front();
        }
        if bug == Bug::EnqueueTrimsBeforeDroppingExpired {
            q.retain(|e| !self.dead(e, now));
        }
        Ok(if bug == Bug::EnqueueCountsDeadOnArrival {
            q.len()
        } else {
            q.iter().filter(|e| !self.dead(e, now)).count()
        })
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        if self.bug == Bug::RacyDequeue {
            let head = {
                let now = self.now_ms();
                let mut side = self.side();
                let Some(q) = side.queues.get_mut(thread_id) else {
                    return Ok(None);
                };
                q.retain(|e| !self.dead(e, now));
                q.front().cloned()
            };
            if head.is_some() {
                // The bug: read the head, then pop it in a second round trip.
                Self::round_trip().await;
                if let Some(q) = self.side().queues.get_mut(thread_id) {
                    q.pop_front();
                }
            }
            return Ok(head);
        }
        let now = self.now_ms();
        let mut side = self.side();
        let Some(q) = side.queues.get_mut(thread_id) else {
            return Ok(None);
        };
        while let Some(e) = q.pop_front() {
            if !self.dead(&e, now) {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let now = self.now_ms();
        let side = self.side();
        let Some(q) = side.queues.get(thread_id) else {
            return Ok(0);
        };
        Ok(if self.bug == Bug::DepthIsRawLength {
            q.len()
        } else {
            q.iter().filter(|e| !self.dead(e, now)).count()
        })
    }
}

// ------------------------------------------------------------------------------------------
// The hand-written adapter
// ------------------------------------------------------------------------------------------

const DIY: &str = "diy";

/// An adapter that implements the public traits itself, over a [`MemoryBackend`] used as
/// raw storage: its own validation, closed flag, tokens and `expires_at`, one bug at most.
/// Every call makes one "round trip" (a yield), as a client of a remote store does.
#[derive(Debug)]
struct Diy {
    store: MemoryBackend,
    clock: SharedClock,
    bug: Bug,
    closed: AtomicBool,
    counter: AtomicU64,
}

fn invalid(op: Operation, message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message).context(DIY, op)
}

impl Diy {
    fn new(bug: Bug, clock: SharedClock) -> Self {
        Self {
            store: MemoryBackend::with_shared_clock(clock.clone()),
            clock,
            bug,
            closed: AtomicBool::new(false),
            counter: AtomicU64::new(0),
        }
    }

    fn key(&self, op: Operation, what: &str, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(invalid(op, format!("{what} is empty")));
        }
        let len = if self.bug == Bug::DiyKeyLimitInChars {
            key.chars().count()
        } else {
            key.len()
        };
        if len > MAX_KEY_BYTES {
            return Err(invalid(op, format!("{what} is too long ({len})")));
        }
        if key.contains('\0') {
            return Err(invalid(op, format!("{what} contains NUL")));
        }
        Ok(())
    }

    fn value(&self, op: Operation, value: &[u8]) -> Result<()> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(invalid(op, format!("value is {} bytes", value.len())));
        }
        Ok(())
    }

    fn ttl(&self, op: Operation, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(invalid(op, "TTL is zero".into()));
        }
        let over = match self.bug {
            Bug::DiyTtlLimitInSeconds => ttl.as_secs() > MAX_TTL.as_secs(),
            Bug::DiyTtlLimitInWholeMs => ttl.as_millis() > MAX_TTL.as_millis(),
            _ => ttl > MAX_TTL,
        };
        if over {
            return Err(invalid(op, format!("TTL {ttl:?} is above the maximum")));
        }
        Ok(())
    }

    fn optional_ttl(&self, op: Operation, ttl: Option<Duration>) -> Result<()> {
        ttl.map_or(Ok(()), |t| self.ttl(op, t))
    }

    fn length(&self, op: Operation, what: &str, n: usize) -> Result<()> {
        if n == 0 || n > MAX_COLLECTION_LEN {
            return Err(invalid(op, format!("{what} is {n}")));
        }
        Ok(())
    }

    fn value_write(
        &self,
        op: Operation,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.key(op, "key", key)?;
        self.value(op, value)?;
        self.optional_ttl(op, ttl)
    }

    fn entry(&self, op: Operation, entry: &QueueEntry) -> Result<()> {
        if entry.expires_at > i64::MAX as u64 || entry.enqueued_at > i64::MAX as u64 {
            return Err(invalid(op, "timestamps out of range".into()));
        }
        let message = serde_json::to_string(&entry.message).unwrap_or_default();
        let size = match self.bug {
            Bug::DiyQueueSizeOfWholeEntry => serde_json::to_vec(entry).unwrap_or_default().len(),
            Bug::DiyQueueSizeInChars => message.chars().count(),
            _ => message.len(),
        };
        if size > MAX_VALUE_BYTES {
            return Err(invalid(op, format!("message is {size} bytes")));
        }
        Ok(())
    }

    fn open(&self, op: Operation) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::closed(DIY, op))
        } else {
            Ok(())
        }
    }

    /// The request to the store and its answer.
    async fn round_trip(&self) {
        tokio::task::yield_now().await;
    }

    fn token(&self) -> Result<String> {
        match self.bug {
            Bug::DiyTokenFromCounter => Ok(format!(
                "{:032x}",
                self.counter.fetch_add(1, Ordering::SeqCst) + 1
            )),
            Bug::DiyToken64Bits => Ok(format!("{:0>32}", &new_lock_token()?[..16])),
            _ => new_lock_token(),
        }
    }

    fn lock_ttl(&self, ttl: Duration) -> Duration {
        if self.bug == Bug::DiyLockTtlTruncated {
            Duration::from_millis(ttl.as_millis() as u64)
        } else {
            ttl
        }
    }
}

fn ctx<T>(op: Operation, r: Result<T>) -> Result<T> {
    r.map_err(|e| e.or_context(DIY, op))
}

#[async_trait]
impl Subscriptions for Diy {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let op = Operation::Subscribe;
        self.key(op, "thread id", thread_id)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.subscribe(thread_id).await)
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let op = Operation::Unsubscribe;
        self.key(op, "thread id", thread_id)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.unsubscribe(thread_id).await)
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let op = Operation::IsSubscribed;
        self.key(op, "thread id", thread_id)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.is_subscribed(thread_id).await)
    }
}

#[async_trait]
impl Locks for Diy {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        let op = Operation::AcquireLock;
        self.key(op, "lock id", lock_id)?;
        self.ttl(op, ttl)?;
        self.open(op)?;
        let token = ctx(op, self.token())?;
        let ttl = self.lock_ttl(ttl);
        let before = self.clock.now_ms();
        let request = LockRequest::new(DIY, op, lock_id, &token, ttl, before)?;
        self.round_trip().await;
        let fence = ctx(op, self.store.acquire_lock(&request).await)?;
        let expires_at = if self.bug == Bug::DiyExpiresAtAfterCall {
            validate::expiry_ms(DIY, op, self.clock.now_ms(), ttl)?
        } else {
            request.expires_at
        };
        Ok(fence.map(|fence| Lock {
            thread_id: lock_id.to_owned(),
            token,
            expires_at,
            fence,
        }))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let op = Operation::ReleaseLock;
        self.key(op, "lock id", &lock.thread_id)?;
        self.key(op, "lock token", &lock.token)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.release_lock(lock).await)
    }

    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        let op = Operation::ExtendLock;
        self.key(op, "lock id", &lock.thread_id)?;
        self.key(op, "lock token", &lock.token)?;
        self.ttl(op, ttl)?;
        self.open(op)?;
        let ttl = self.lock_ttl(ttl);
        let now = self.clock.now_ms();
        let request = LockRequest::new(DIY, op, &lock.thread_id, &lock.token, ttl, now)?;
        self.round_trip().await;
        ctx(op, self.store.extend_lock(&request).await)
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        let op = Operation::ForceReleaseLock;
        self.key(op, "lock id", lock_id)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.force_release_lock(lock_id).await)
    }
}

#[async_trait]
impl Cache for Diy {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let op = Operation::Get;
        self.key(op, "key", key)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.get(key).await)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let op = Operation::Set;
        self.value_write(op, key, value, ttl)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.set(key, value, ttl).await)
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let op = Operation::SetIfNotExists;
        let rules_of = if self.bug == Bug::DiyErrorNamesWrongOperation {
            Operation::Set
        } else {
            op
        };
        self.value_write(rules_of, key, value, ttl)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.set_if_not_exists(key, value, ttl).await)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let op = Operation::Delete;
        self.key(op, "key", key)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.delete(key).await)
    }
}

#[async_trait]
impl Lists for Diy {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let op = Operation::AppendToList;
        self.key(op, "key", key)?;
        self.value(op, value)?;
        if let Some(n) = options.max_length {
            self.length(op, "max_length", n)?;
        }
        self.optional_ttl(op, options.ttl)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.append_to_list(key, value, options).await)
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let op = Operation::GetList;
        self.key(op, "key", key)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.get_list(key).await)
    }
}

#[async_trait]
impl Queues for Diy {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let op = Operation::Enqueue;
        if self.bug == Bug::DiyClosedBeforeValidationOnEnqueue {
            self.open(op)?;
        }
        self.key(op, "thread id", thread_id)?;
        self.length(op, "max_size", max_size)?;
        self.entry(op, &entry)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.enqueue(thread_id, entry, max_size).await)
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let op = Operation::Dequeue;
        self.key(op, "thread id", thread_id)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.dequeue(thread_id).await)
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let op = Operation::QueueDepth;
        self.key(op, "thread id", thread_id)?;
        self.open(op)?;
        self.round_trip().await;
        ctx(op, self.store.queue_depth(thread_id).await)
    }
}

/// The step-by-step dispatch operations, built on the methods above.
#[async_trait]
impl chat_state_core::Dispatch for Diy {
    async fn admit(
        &self,
        message: &chat_state_core::Admit<'_>,
    ) -> Result<chat_state_core::Admission> {
        chat_state_core::dispatch::admit_in_steps(self, DIY, message).await
    }

    async fn release_or_next(
        &self,
        lock: &mut Lock,
        ttl: Duration,
    ) -> Result<chat_state_core::Handoff> {
        let now_ms = || self.clock.now_ms();
        chat_state_core::dispatch::release_or_next_in_steps(self, DIY, lock, ttl, now_ms).await
    }

    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<chat_state_core::FencedWrite> {
        chat_state_core::dispatch::set_fenced_in_steps(self, DIY, lock, key, value, ttl).await
    }

    async fn release_or_next_with(
        &self,
        lock: &mut Lock,
        ttl: Duration,
        write: chat_state_core::FencedSet<'_>,
    ) -> Result<chat_state_core::Handoff> {
        let now_ms = || self.clock.now_ms();
        chat_state_core::dispatch::release_or_next_with_in_steps(
            self, DIY, lock, ttl, write, now_ms,
        )
        .await
    }
}

#[async_trait]
impl StateAdapter for Diy {
    fn backend_name(&self) -> &'static str {
        DIY
    }

    async fn connect(&self) -> Result<()> {
        if self.bug != Bug::DiyConnectAfterClose {
            self.open(Operation::Connect)?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            if self.bug == Bug::DiyCloseTwiceFails {
                return Err(Error::closed(DIY, Operation::Close));
            }
            return Ok(());
        }
        ctx(Operation::Close, self.store.close().await)
    }
}

// ------------------------------------------------------------------------------------------
// Running the suite
// ------------------------------------------------------------------------------------------

fn adapter(bug: Bug, clock: SharedClock) -> Arc<dyn StateAdapter> {
    if bug.is_diy() {
        Arc::new(Diy::new(bug, clock))
    } else {
        Arc::new(Checked::new(Newbie::new(bug, clock)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Clock {
    Manual,
    Wall,
}

fn run_suite(bug: Bug, clock: Clock) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let start = Instant::now();
    let areas = if clock == Clock::Wall {
        bug.areas()
    } else {
        &[""]
    };
    runtime.block_on(run_all(
        || {
            let harness = match clock {
                Clock::Manual => {
                    let manual = ManualClock::starting_now();
                    let a = adapter(bug, Arc::new(manual.clone()));
                    Harness::with_manual_clock(a, manual)
                }
                Clock::Wall => Harness::with_real_time(adapter(bug, system_clock())),
            };
            async move { Ok::<_, Failure>(harness) }
        },
        |name| areas.iter().any(|a| name.starts_with(a)),
        || start.elapsed().as_millis() as u64,
    ))
}

/// Each (bug, clock) runs once per process; concurrent askers wait for the same run.
fn report(bug: Bug, clock: Clock) -> Arc<Report> {
    type Runs = Mutex<HashMap<(Bug, Clock), Arc<OnceLock<Arc<Report>>>>>;
    static RUNS: OnceLock<Runs> = OnceLock::new();
    let cell = RUNS
        .get_or_init(Runs::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((bug, clock))
        .or_default()
        .clone();
    cell.get_or_init(|| Arc::new(run_suite(bug, clock))).clone()
}

fn fixed_failures(report: &Report) -> Vec<&CaseReport> {
    report
        .with_outcome(Outcome::Failed)
        .filter(|c| !NETS.contains(&c.name.as_str()))
        .collect()
}

fn net_failures(report: &Report) -> Vec<&CaseReport> {
    report
        .with_outcome(Outcome::Failed)
        .filter(|c| NETS.contains(&c.name.as_str()))
        .collect()
}

fn wall_invisible(bug: Bug) -> Option<&'static str> {
    WALL_INVISIBLE
        .iter()
        .find(|(b, _)| *b == bug)
        .map(|(_, why)| *why)
}

fn must_be_caught(bug: Bug, clock: Clock) -> bool {
    clock == Clock::Manual || wall_invisible(bug).is_none()
}

fn describe(report: &Report) -> String {
    report
        .with_outcome(Outcome::Failed)
        .map(|c| {
            let first = c.message.lines().next().unwrap_or_default();
            format!("  - {}: {first}", c.name)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_killed(bug: Bug, clock: Clock) {
    let report = report(bug, clock);
    let fixed = fixed_failures(&report);
    eprintln!(
        "{bug:?} on the {clock:?} clock: {} fixed and {} net cases of {} failed\n{}",
        fixed.len(),
        net_failures(&report).len(),
        report.cases.len(),
        describe(&report)
    );
    if !must_be_caught(bug, clock) {
        eprintln!(
            "(not asserted: invisible to a wall clock: {})",
            wall_invisible(bug).unwrap_or_default()
        );
        return;
    }
    assert!(
        !fixed.is_empty(),
        "{bug:?} passed every fixed case on the {clock:?} clock ({} cases run{}): the suite has a gap",
        report.cases.len(),
        if net_failures(&report).is_empty() {
            String::new()
        } else {
            "; only the random model or the linearizability check caught it".to_owned()
        }
    );
}

fn assert_passes(bug: Bug, clock: Clock) {
    let report = report(bug, clock);
    let failures = describe(&report);
    assert!(
        report.failed() == 0,
        "the control {bug:?} must pass every case on the {clock:?} clock, but failed:\n{failures}"
    );
    assert!(report.passed() > 100, "{bug:?}: too few cases ran");
}

#[test]
fn control_wrapper_passes_every_case_on_the_manual_clock() {
    assert_passes(Bug::None, Clock::Manual);
}

#[test]
fn control_wrapper_passes_every_case_on_the_wall_clock() {
    assert_passes(Bug::None, Clock::Wall);
}

#[test]
fn control_adapter_passes_every_case_on_the_manual_clock() {
    assert_passes(Bug::DiyNone, Clock::Manual);
}

#[test]
fn control_adapter_passes_every_case_on_the_wall_clock() {
    assert_passes(Bug::DiyNone, Clock::Wall);
}

/// Every bug once on each clock, a few at a time (wall-clock runs mostly sleep), so the
/// per-bug tests and `kill_count` find their runs done or under way.
fn run_everything() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let jobs: Mutex<Vec<(Bug, Clock)>> = Mutex::new(
            ALL.iter()
                .flat_map(|&bug| [(bug, Clock::Wall), (bug, Clock::Manual)])
                .collect(),
        );
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    loop {
                        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).pop();
                        let Some((bug, clock)) = job else { break };
                        report(bug, clock);
                    }
                });
            }
        });
    });
}

/// The suite's strength, measured: every bug, whether a fixed case killed it on each clock,
/// and the first fixed case that did.
#[test]
fn kill_count() {
    let started = Instant::now();
    run_everything();
    let mut rows = Vec::new();
    let mut missed = Vec::new();
    let mut killed = 0;
    let mut must = 0;
    for &bug in ALL {
        let mut cells = Vec::new();
        let mut first = String::new();
        for clock in [Clock::Manual, Clock::Wall] {
            let report = report(bug, clock);
            let fixed = fixed_failures(&report);
            let caught = !fixed.is_empty();
            let required = must_be_caught(bug, clock);
            must += usize::from(required);
            killed += usize::from(required && caught);
            if required && !caught {
                missed.push(format!("{bug:?} on the {clock:?} clock"));
            }
            if first.is_empty()
                && let Some(c) = fixed.first()
            {
                first = c.name.clone();
            }
            let nets = if net_failures(&report).is_empty() {
                ""
            } else {
                " +net"
            };
            cells.push(match (caught, required) {
                (true, _) => format!("yes{nets}"),
                (false, true) => format!("NO{nets}"),
                (false, false) => format!("n/a{nets}"),
            });
        }
        rows.push(format!(
            "| {:<36} | {:<10} | {:<10} | {first}",
            format!("{bug:?}"),
            cells[0],
            cells[1]
        ));
    }
    eprintln!(
        "\n| {:<36} | {:<10} | {:<10} | first fixed case that caught it\n{}\n\
         killed {killed} of {must} required (bug, clock) pairs; {} bugs in {:?} \
         (n/a = invisible to a wall clock, see WALL_INVISIBLE; +net = the model or \
         linearizability check failed too)",
        "bug",
        "manual",
        "wall",
        rows.join("\n"),
        ALL.len(),
        started.elapsed()
    );
    assert!(
        missed.is_empty(),
        "the suite missed {} of {must}: {missed:?}",
        missed.len()
    );
}

macro_rules! newcomer_bugs {
    ($($test:ident => $bug:ident,)*) => {
        /// Every broken subject (not the controls).
        const ALL: &[Bug] = &[$(Bug::$bug,)*];

        mod manual_clock {
            use super::*;
            $(
                #[test]
                fn $test() {
                    run_everything();
                    assert_killed(Bug::$bug, Clock::Manual);
                }
            )*
        }

        mod wall_clock {
            use super::*;
            $(
                #[test]
                fn $test() {
                    run_everything();
                    assert_killed(Bug::$bug, Clock::Wall);
                }
            )*
        }
    };
}

newcomer_bugs! {
    sinx_live_at_expiry => SinxLiveAtExpiry,
    list_live_at_expiry => ListLiveAtExpiry,
    extend_at_expiry_instant => ExtendAtExpiryInstant,
    queue_live_at_expiry => QueueLiveAtExpiry,
    cache_ttl_whole_seconds => CacheTtlWholeSeconds,
    sinx_sub_ms_ttl_forever => SinxSubMsTtlForever,
    list_sub_ms_ttl_forever => ListSubMsTtlForever,
    set_keeps_old_ttl => SetKeepsOldTtl,
    extend_never_shortens => ExtendNeverShortens,
    extend_ignores_token => ExtendIgnoresToken,
    release_by_token_only => ReleaseByTokenOnly,
    force_release_missing_errors => ForceReleaseMissingErrors,
    sinx_ignores_ttl => SinxIgnoresTtl,
    racy_set_if_not_exists => RacySetIfNotExists,
    list_ttl_forgotten_on_new_list => ListTtlForgottenOnNewList,
    list_trims_before_append => ListTrimsBeforeAppend,
    list_append_without_ttl_clears_expiry => ListAppendWithoutTtlClearsExpiry,
    enqueue_trims_before_dropping_expired => EnqueueTrimsBeforeDroppingExpired,
    depth_is_raw_length => DepthIsRawLength,
    enqueue_counts_dead_on_arrival => EnqueueCountsDeadOnArrival,
    racy_dequeue => RacyDequeue,
    lists_see_queues => ListsSeeQueues,
    cache_keys_case_folded => CacheKeysCaseFolded,
    fence_resets_after_release => FenceResetsAfterRelease,
    fence_restarts_after_expiry => FenceRestartsAfterExpiry,
    racy_takeover => RacyTakeover,
    cache_jsonb_column => CacheJsonbColumn,
    list_skips_non_json_items => ListSkipsNonJsonItems,
    diy_key_limit_in_chars => DiyKeyLimitInChars,
    diy_ttl_limit_in_seconds => DiyTtlLimitInSeconds,
    diy_ttl_limit_in_whole_ms => DiyTtlLimitInWholeMs,
    diy_queue_size_of_whole_entry => DiyQueueSizeOfWholeEntry,
    diy_queue_size_in_chars => DiyQueueSizeInChars,
    diy_error_names_wrong_operation => DiyErrorNamesWrongOperation,
    diy_token_from_counter => DiyTokenFromCounter,
    diy_token_64_bits => DiyToken64Bits,
    diy_expires_at_after_call => DiyExpiresAtAfterCall,
    diy_lock_ttl_truncated => DiyLockTtlTruncated,
    diy_connect_after_close => DiyConnectAfterClose,
    diy_closed_before_validation_on_enqueue => DiyClosedBeforeValidationOnEnqueue,
    diy_close_twice_fails => DiyCloseTwiceFails,
}
