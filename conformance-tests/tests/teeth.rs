//! The suite has teeth: deliberately broken backends must each fail at least one case.
//!
//! Every broken backend wraps the real memory backend's storage and delegates everything
//! except one bug, the kind of mistake real backends make (most are bugs upstream adapters
//! shipped). They are [`Backend`]s behind core's rule layer, [`Checked`], exactly as a new
//! backend would be, so the bugs are in storage logic; the rules `Checked` enforces for
//! every backend (input validation, the closed check, token and `expires_at` construction)
//! cannot be broken from a `Backend` at all. The whole suite runs against each through
//! `run_all`, as a third-party runner would. Two controls keep the test honest: the plain
//! memory backend and the wrapper with no bug must pass every case, so a broken backend is
//! caught for its bug and not for a wrapping artefact.
//!
//! The racy backend (check-then-act acquire) is the control of the linearizability case:
//! sequential cases cannot see its race, the recorded concurrent history must.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_state_conformance::{Failure, Harness, Outcome, Report, run_all};
use chat_state_core::{
    AdmitOutcome, AdmitRequest, Backend, Checked, Clock, FencedWrite, Handoff, ListOptions, Lock,
    LockInspector, LockRequest, ManualClock, Operation, QueueEntry, Result, StateAdapter, validate,
};
use chat_state_memory::{MemoryBackend, MemoryState};

/// One bug per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// No bug: the wrapper itself must be faithful.
    None,
    /// `extend_lock` on an expired or released lock re-acquires it and reports success.
    ExtendResurrects,
    /// `extend_lock` reports success but leaves the old expiry.
    ExtendKeepsExpiry,
    /// `extend_lock` always reports success, so a heartbeat never notices a lost lock.
    ExtendAlwaysTrue,
    /// `release_lock` ignores the token (releases whoever holds the lock).
    ReleaseIgnoresToken,
    /// `acquire_lock` takes a held lock anyway: a second holder.
    SecondHolder,
    /// `acquire_lock` treats a lock as expired 1 ms early (`now + 1 >= expires_at`).
    ExpiryOffByOne,
    /// Every lock gets fence 1.
    FenceRepeats,
    /// `acquire_lock` is check-then-act with a gap: concurrent acquirers can both win.
    RacyAcquire,
    /// `set_if_not_exists` counts an expired key as present (the upstream SQL bug).
    ExpiredKeyCountsAsPresent,
    /// `delete` does nothing.
    DeleteIsNoop,
    /// Lists at `max_length` drop the new item (keep the oldest).
    ListKeepsOldest,
    /// Appending with a TTL to an existing list keeps its old expiry.
    ListTtlNotRefreshed,
    /// Queue entries never expire (returned and counted after `expires_at`).
    QueueReturnsExpired,
    /// `queue_depth` is a cached count that ignores expiry.
    DepthCountsExpired,
    /// A full queue drops the new entry instead of the oldest.
    QueueDropsNewest,
    /// Subscriptions are stored as cache keys (namespaces collide).
    SubscriptionsInCache,
    /// Native dispatch: `release_or_next` releases the lock without looking at the queue
    /// (the upstream hole: entries queued behind the holder are stranded).
    ReleaseBeforeCheckingQueue,
    /// Native dispatch: `set_fenced` stores every write, whatever its fence.
    FenceIgnored,
}

/// Bookkeeping some bugs need.
#[derive(Debug, Default)]
struct Side {
    /// Cache keys written and not deleted (for `ExpiredKeyCountsAsPresent`).
    written: HashSet<String>,
    /// Expiry of each lock as last granted or extended (for `ExpiryOffByOne`).
    lock_expiry: HashMap<String, u64>,
    /// The cached depth per queue (for `DepthCountsExpired`).
    depth: HashMap<String, usize>,
    /// The racy backend's own lock table: id -> (token, expires_at).
    racy: HashMap<String, (String, u64)>,
    /// Real expiries of entries `QueueReturnsExpired` stored as immortal, by (thread,
    /// enqueued_at, message), oldest first.
    hidden_expiry: HashMap<(String, u64, String), VecDeque<u64>>,
}

/// The memory backend's storage with one bug. With `NATIVE`, the dispatch operations are
/// the memory backend's native ones (bugs of the dispatch kind apply to them); without, core
/// runs the step-by-step versions over this backend's (possibly broken) primitives.
#[derive(Debug)]
struct Broken<const NATIVE: bool = false> {
    inner: MemoryBackend,
    clock: ManualClock,
    bug: Bug,
    side: Mutex<Side>,
    racy_fence: AtomicU64,
}

impl<const NATIVE: bool> Broken<NATIVE> {
    fn new(bug: Bug, clock: ManualClock) -> Checked<Self> {
        Checked::new(Self {
            inner: MemoryBackend::with_clock(clock.clone()),
            clock,
            bug,
            side: Mutex::default(),
            racy_fence: AtomicU64::new(0),
        })
    }

    fn side(&self) -> MutexGuard<'_, Side> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn racy_acquire(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let now = self.clock.now_ms();
        let free = self
            .side()
            .racy
            .get(request.lock_id)
            .is_none_or(|(_, at)| now >= *at);
        if !free {
            return Ok(None);
        }
        // The bug: the check above and the write below are separate steps.
        tokio::task::yield_now().await;
        let fence = self.racy_fence.fetch_add(1, Ordering::SeqCst) + 1;
        self.side().racy.insert(
            request.lock_id.to_owned(),
            (request.token.to_owned(), request.expires_at),
        );
        Ok(Some(fence))
    }

    fn racy_release(&self, lock: &Lock) {
        let mut side = self.side();
        if side
            .racy
            .get(&lock.thread_id)
            .is_some_and(|(t, _)| *t == lock.token)
        {
            side.racy.remove(&lock.thread_id);
        }
    }

    fn racy_extend(&self, request: &LockRequest<'_>) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut side = self.side();
        match side.racy.get_mut(request.lock_id) {
            Some((token, at)) if *token == request.token && now < *at => {
                *at = validate::expiry_ms(self.name(), Operation::ExtendLock, now, request.ttl)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl<const NATIVE: bool> Backend for Broken<NATIVE> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        if self.bug == Bug::SubscriptionsInCache {
            return self.inner.set(thread_id, b"subscribed", None).await;
        }
        self.inner.subscribe(thread_id).await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        if self.bug == Bug::SubscriptionsInCache {
            return self.inner.delete(thread_id).await;
        }
        self.inner.unsubscribe(thread_id).await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        if self.bug == Bug::SubscriptionsInCache {
            return Ok(self.inner.get(thread_id).await?.is_some());
        }
        self.inner.is_subscribed(thread_id).await
    }

    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        if self.bug == Bug::RacyAcquire {
            return self.racy_acquire(request).await;
        }
        let lock_id = request.lock_id;
        let mut got = self.inner.acquire_lock(request).await?;
        if got.is_none() {
            let steal = match self.bug {
                Bug::SecondHolder => true,
                Bug::ExpiryOffByOne => self
                    .side()
                    .lock_expiry
                    .get(lock_id)
                    .is_some_and(|at| self.clock.now_ms() + 1 >= *at),
                _ => false,
            };
            if steal {
                self.inner.force_release_lock(lock_id).await?;
                got = self.inner.acquire_lock(request).await?;
            }
        }
        if got.is_some() {
            self.side()
                .lock_expiry
                .insert(lock_id.to_owned(), request.expires_at);
        }
        Ok(got.map(|fence| {
            if self.bug == Bug::FenceRepeats {
                1
            } else {
                fence
            }
        }))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        match self.bug {
            Bug::RacyAcquire => {
                self.racy_release(lock);
                Ok(())
            }
            Bug::ReleaseIgnoresToken => self.inner.force_release_lock(&lock.thread_id).await,
            _ => self.inner.release_lock(lock).await,
        }
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        match self.bug {
            Bug::RacyAcquire => self.racy_extend(request),
            Bug::ExtendAlwaysTrue => {
                self.inner.extend_lock(request).await?;
                Ok(true)
            }
            Bug::ExtendResurrects => {
                if self.inner.extend_lock(request).await? {
                    return Ok(true);
                }
                Ok(self.inner.acquire_lock(request).await?.is_some())
            }
            Bug::ExtendKeepsExpiry => {
                let now = self.clock.now_ms();
                let Some(current) = self.inner.lock_info(request.lock_id).await? else {
                    return Ok(false);
                };
                let remaining = current.expires_at.saturating_sub(now).max(1);
                let same_expiry = LockRequest::new(
                    self.name(),
                    Operation::ExtendLock,
                    request.lock_id,
                    request.token,
                    Duration::from_millis(remaining),
                    now,
                )?;
                self.inner.extend_lock(&same_expiry).await
            }
            _ => {
                let ok = self.inner.extend_lock(request).await?;
                if ok {
                    self.side()
                        .lock_expiry
                        .insert(request.lock_id.to_owned(), request.expires_at);
                }
                Ok(ok)
            }
        }
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        if self.bug == Bug::RacyAcquire {
            self.side().racy.remove(lock_id);
            return Ok(());
        }
        self.inner.force_release_lock(lock_id).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, value, ttl).await?;
        self.side().written.insert(key.to_owned());
        Ok(())
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        if self.bug == Bug::ExpiredKeyCountsAsPresent
            && self.side().written.contains(key)
            && self.inner.get(key).await?.is_none()
        {
            // The row is still there, expired, and the broken check ignores expiry.
            return Ok(false);
        }
        let stored = self.inner.set_if_not_exists(key, value, ttl).await?;
        if stored {
            self.side().written.insert(key.to_owned());
        }
        Ok(stored)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if self.bug == Bug::DeleteIsNoop {
            return Ok(());
        }
        self.inner.delete(key).await?;
        self.side().written.remove(key);
        Ok(())
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let mut options = options;
        if matches!(self.bug, Bug::ListKeepsOldest | Bug::ListTtlNotRefreshed) {
            let len = self.inner.get_list(key).await?.len();
            if self.bug == Bug::ListKeepsOldest && options.max_length.is_some_and(|max| len >= max)
            {
                return Ok(());
            }
            if self.bug == Bug::ListTtlNotRefreshed && len > 0 {
                options.ttl = None;
            }
        }
        self.inner.append_to_list(key, value, options).await
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.inner.get_list(key).await
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        match self.bug {
            Bug::QueueReturnsExpired => {
                let real_expiry = entry.expires_at;
                let key = entry_key(thread_id, &entry);
                let immortal = QueueEntry {
                    expires_at: i64::MAX as u64,
                    ..entry
                };
                let depth = self.inner.enqueue(thread_id, immortal, max_size).await?;
                self.side()
                    .hidden_expiry
                    .entry(key)
                    .or_default()
                    .push_back(real_expiry);
                Ok(depth)
            }
            Bug::QueueDropsNewest => {
                let depth = self.inner.queue_depth(thread_id).await?;
                if depth >= max_size {
                    return Ok(depth);
                }
                self.inner.enqueue(thread_id, entry, max_size).await
            }
            Bug::DepthCountsExpired => {
                let depth = self.inner.enqueue(thread_id, entry, max_size).await?;
                self.side().depth.insert(thread_id.to_owned(), depth);
                Ok(depth)
            }
            _ => self.inner.enqueue(thread_id, entry, max_size).await,
        }
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let got = self.inner.dequeue(thread_id).await?;
        match self.bug {
            Bug::QueueReturnsExpired => Ok(got.map(|mut entry| {
                let key = entry_key(thread_id, &entry);
                if let Some(real) = self
                    .side()
                    .hidden_expiry
                    .get_mut(&key)
                    .and_then(VecDeque::pop_front)
                {
                    entry.expires_at = real;
                }
                entry
            })),
            Bug::DepthCountsExpired => {
                let mut side = self.side();
                let depth = side.depth.entry(thread_id.to_owned()).or_default();
                *depth = if got.is_some() {
                    depth.saturating_sub(1)
                } else {
                    0
                };
                Ok(got)
            }
            _ => Ok(got),
        }
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let live = self.inner.queue_depth(thread_id).await?;
        if self.bug == Bug::DepthCountsExpired {
            return Ok(self.side().depth.get(thread_id).copied().unwrap_or(live));
        }
        Ok(live)
    }

    const ATOMIC_DISPATCH: bool = NATIVE;

    async fn admit(&self, request: &AdmitRequest<'_>) -> Result<AdmitOutcome> {
        self.inner.admit(request).await
    }

    async fn release_or_next(&self, request: &LockRequest<'_>) -> Result<Handoff> {
        if self.bug == Bug::ReleaseBeforeCheckingQueue {
            if !self.inner.extend_lock(request).await? {
                return Ok(Handoff::NotHolder);
            }
            let lock = Lock {
                thread_id: request.lock_id.to_owned(),
                token: request.token.to_owned(),
                expires_at: request.expires_at,
                fence: 0,
            };
            self.inner.release_lock(&lock).await?;
            return Ok(Handoff::Released);
        }
        self.inner.release_or_next(request).await
    }

    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        if self.bug == Bug::FenceIgnored {
            self.inner.set(key, value, ttl).await?;
            return Ok(FencedWrite::Stored);
        }
        self.inner.set_fenced(lock, key, value, ttl).await
    }
}

/// How `QueueReturnsExpired` finds an entry's real expiry again.
fn entry_key(thread_id: &str, entry: &QueueEntry) -> (String, u64, String) {
    (
        thread_id.to_owned(),
        entry.enqueued_at,
        entry.message.to_string(),
    )
}

/// Runs the whole suite against a fresh adapter per case, on a manual clock.
fn run_suite(make: impl Fn(ManualClock) -> Arc<dyn StateAdapter>) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let start = Instant::now();
    runtime.block_on(run_all(
        || {
            let clock = ManualClock::starting_now();
            let adapter = make(clock.clone());
            async move { Ok::<_, Failure>(Harness::with_manual_clock(adapter, clock)) }
        },
        |_| true,
        || start.elapsed().as_millis() as u64,
    ))
}

fn failed(report: &Report) -> Vec<(&str, &str)> {
    report
        .with_outcome(Outcome::Failed)
        .map(|c| (c.name.as_str(), c.message.as_str()))
        .collect()
}

fn assert_all_pass(report: &Report, what: &str) {
    let failures = failed(report);
    assert!(
        failures.is_empty(),
        "{what} must pass every case, but failed {}:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(name, message)| format!("- {name}: {message}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(report.passed() > 0, "{what}: no case ran");
}

/// Runs the suite against the bug and asserts at least one case fails; prints which.
fn assert_caught(bug: Bug) -> Vec<String> {
    let native = matches!(bug, Bug::ReleaseBeforeCheckingQueue | Bug::FenceIgnored);
    let report = if native {
        run_suite(|clock| Arc::new(Broken::<true>::new(bug, clock)))
    } else {
        run_suite(|clock| Arc::new(Broken::<false>::new(bug, clock)))
    };
    let failures = failed(&report);
    eprintln!(
        "{bug:?}: caught by {} of {} cases",
        failures.len(),
        report.cases.len()
    );
    for (name, message) in &failures {
        let first = message.lines().next().unwrap_or_default();
        eprintln!("  - {name}: {first}");
    }
    assert!(
        !failures.is_empty(),
        "the broken adapter {bug:?} passed all {} cases: the suite has a gap",
        report.cases.len()
    );
    failures.iter().map(|(name, _)| name.to_string()).collect()
}

#[test]
fn memory_backend_passes_every_case() {
    let started = Instant::now();
    let report = run_suite(|clock| Arc::new(MemoryState::new(MemoryBackend::with_clock(clock))));
    // Informational (shown with --nocapture): where the suite's time goes.
    let mut slowest: Vec<_> = report.cases.iter().collect();
    slowest.sort_by_key(|c| std::cmp::Reverse(c.millis));
    eprintln!(
        "memory: {} cases in {:?}; slowest: {}",
        report.cases.len(),
        started.elapsed(),
        slowest
            .iter()
            .take(3)
            .map(|c| format!("{} {} ms", c.name, c.millis))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_all_pass(&report, "the memory backend");
}

#[test]
fn faithful_wrapper_passes_every_case() {
    let report = run_suite(|clock| Arc::new(Broken::<false>::new(Bug::None, clock)));
    assert_all_pass(&report, "the wrapper without a bug");
    // Without a bug, the wrapper's native dispatch is the memory backend's own: it must also
    // pass, including the atomicity case the step-by-step run skips.
    let report = run_suite(|clock| Arc::new(Broken::<true>::new(Bug::None, clock)));
    assert_all_pass(&report, "the wrapper without a bug, native dispatch");
    assert!(
        report
            .with_outcome(Outcome::Passed)
            .any(|c| c.name == "dispatch_set_fenced_is_atomic"),
        "the atomicity case did not run on native dispatch"
    );
}

/// The lock guard's heartbeat relies on `extend_lock` returning `false` once the lock is
/// gone; the guard case must notice an adapter that never does.
#[test]
fn extend_always_true_is_caught_by_the_lock_guard_case() {
    let caught_by = assert_caught(Bug::ExtendAlwaysTrue);
    assert!(
        caught_by
            .iter()
            .any(|name| name == "lock_guard_reports_lost_ownership"),
        "lock_guard_reports_lost_ownership missed a heartbeat that never fails (caught only by {caught_by:?})"
    );
}

/// The control of the linearizability case: the racy lock must be caught by it specifically
/// (its sequential behaviour is correct, so only a concurrent history shows the race).
#[test]
fn racy_acquire_is_rejected_by_the_linearizability_check() {
    let caught_by = assert_caught(Bug::RacyAcquire);
    assert!(
        caught_by.iter().any(|name| name == "locks_linearizable"),
        "locks_linearizable accepted the history of a check-then-act lock (caught only by {caught_by:?})"
    );
}

macro_rules! caught {
    ($($test:ident => $bug:ident,)*) => {
        $(
            #[test]
            fn $test() {
                assert_caught(Bug::$bug);
            }
        )*
    };
}

caught! {
    extend_resurrecting_an_expired_lock_is_caught => ExtendResurrects,
    extend_keeping_the_old_expiry_is_caught => ExtendKeepsExpiry,
    release_ignoring_the_token_is_caught => ReleaseIgnoresToken,
    acquire_letting_a_second_holder_in_is_caught => SecondHolder,
    lock_expiring_one_ms_early_is_caught => ExpiryOffByOne,
    repeated_fences_are_caught => FenceRepeats,
    expired_key_counting_as_present_is_caught => ExpiredKeyCountsAsPresent,
    delete_as_noop_is_caught => DeleteIsNoop,
    list_keeping_the_oldest_is_caught => ListKeepsOldest,
    list_ttl_not_refreshed_is_caught => ListTtlNotRefreshed,
    queue_returning_expired_entries_is_caught => QueueReturnsExpired,
    queue_depth_counting_expired_is_caught => DepthCountsExpired,
    full_queue_dropping_the_newest_is_caught => QueueDropsNewest,
    subscriptions_colliding_with_cache_keys_are_caught => SubscriptionsInCache,
    release_before_checking_the_queue_is_caught => ReleaseBeforeCheckingQueue,
    fenced_write_ignoring_the_fence_is_caught => FenceIgnored,
}
