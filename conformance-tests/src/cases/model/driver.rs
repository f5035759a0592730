//! The proptest driver: generates step sequences ([`Reference`]), runs each against the
//! adapter and the [`Model`](super::reference::Model), and reports the shrunk difference.

use std::cell::Cell;
use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chat_state_core::{
    Admission, Admit, ErrorKind, FencedSet, FencedWrite, Handoff, ListOptions, Lock, QueueEntry,
    StateAdapter,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use proptest_state_machine::ReferenceStateMachine;
use serde_json::json;

use crate::{CaseResult, Failure, Harness, TimeControl};

/// Sequences per run.
const CASES: u32 = 64;
/// Shortest generated sequence (shrinking may cut it further).
const MIN_STEPS: usize = 10;
/// Longest sequence.
const MAX_STEPS: usize = 30;
/// Shrinking re-runs sequences; bound it so a failure on a slow backend reports quickly.
const MAX_SHRINK_ITERS: u32 = 1024;
/// The names every namespace uses (the separators are legal and must not confuse
/// backends that build composite keys).
const NAMES: [&str; 3] = ["a", "b:c", "d.e"];
/// A TTL nothing outlives during a run: ten minutes, in milliseconds.
const LONG_MS: u64 = 600_000;

use super::reference::{Invalid, Model, Outcome, Step};

/// The generator: which steps, with which arguments. `MANUAL` selects short TTLs and
/// time-advance steps (manual clock) or long TTLs only (real time).
pub(super) struct Reference<const MANUAL: bool>;

impl<const MANUAL: bool> Reference<MANUAL> {
    /// Lock TTLs: around the advance steps' sizes so boundaries get hit exactly.
    fn lock_ttl() -> BoxedStrategy<u64> {
        if MANUAL {
            select(vec![5u64, 1, 10, 30]).boxed()
        } else {
            select(vec![LONG_MS, 2 * LONG_MS]).boxed()
        }
    }

    /// Cache and list TTLs (`None` = no expiry).
    fn optional_ttl() -> BoxedStrategy<Option<u64>> {
        if MANUAL {
            select(vec![None, Some(5u64), Some(1), Some(10), Some(30)]).boxed()
        } else {
            select(vec![None, Some(LONG_MS), Some(2 * LONG_MS)]).boxed()
        }
    }

    /// Queue entry lifetimes; 0 is an entry dead on arrival (`expires_at == now`).
    fn lifetime() -> BoxedStrategy<u64> {
        if MANUAL {
            select(vec![30u64, 0, 1, 5, 10]).boxed()
        } else {
            select(vec![LONG_MS, 0]).boxed()
        }
    }
}

impl<const MANUAL: bool> ReferenceStateMachine for Reference<MANUAL> {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        // Skewed towards the first name so that steps meet on the same key often (a bug
        // shows only when, say, an append with a TTL hits a list that already exists).
        let name = || prop_oneof![3 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)];
        let mut options: Vec<(u32, BoxedStrategy<Step>)> = vec![
            (3, name().prop_map(Step::Subscribe).boxed()),
            (2, name().prop_map(Step::Unsubscribe).boxed()),
            (3, name().prop_map(Step::IsSubscribed).boxed()),
            (
                8,
                (name(), Self::lock_ttl())
                    .prop_map(|(id, ttl_ms)| Step::Acquire { id, ttl_ms })
                    .boxed(),
            ),
            (2, name().prop_map(Step::ForceRelease).boxed()),
            (3, name().prop_map(Step::ReleaseForged).boxed()),
            (2, name().prop_map(Step::ExtendForged).boxed()),
            (5, name().prop_map(Step::Get).boxed()),
            (
                4,
                (name(), any::<u8>(), Self::optional_ttl())
                    .prop_map(|(key, value, ttl_ms)| Step::Set { key, value, ttl_ms })
                    .boxed(),
            ),
            (
                4,
                (name(), any::<u8>(), Self::optional_ttl())
                    .prop_map(|(key, value, ttl_ms)| Step::SetIfNotExists { key, value, ttl_ms })
                    .boxed(),
            ),
            (2, name().prop_map(Step::Delete).boxed()),
            (
                5,
                (
                    name(),
                    any::<u8>(),
                    select(vec![None, Some(2usize), Some(1), Some(3)]),
                    Self::optional_ttl(),
                )
                    .prop_map(|(key, value, max_length, ttl_ms)| Step::Append {
                        key,
                        value,
                        max_length,
                        ttl_ms,
                    })
                    .boxed(),
            ),
            (4, name().prop_map(Step::GetList).boxed()),
            (
                6,
                (name(), Self::lifetime(), select(vec![2usize, 1, 3, 10]))
                    .prop_map(|(thread, lifetime_ms, max_size)| Step::Enqueue {
                        thread,
                        lifetime_ms,
                        max_size,
                    })
                    .boxed(),
            ),
            (4, name().prop_map(Step::Dequeue).boxed()),
            (3, name().prop_map(Step::QueueDepth).boxed()),
            (
                4,
                prop_oneof![
                    Just(Invalid::GetEmptyKey),
                    Just(Invalid::SubscribeNul),
                    Just(Invalid::SetOversizedKey),
                    name().prop_map(Invalid::AcquireZeroTtl),
                    name().prop_map(Invalid::ExtendZeroTtl),
                    name().prop_map(Invalid::SetZeroTtl),
                    name().prop_map(Invalid::AppendZeroMaxLength),
                    name().prop_map(Invalid::AppendZeroTtl),
                    name().prop_map(Invalid::EnqueueZeroMaxSize),
                ]
                .prop_map(Step::Invalid)
                .boxed(),
            ),
        ];
        options.push((
            6,
            (
                name(),
                name(),
                Self::lock_ttl(),
                Self::lock_ttl(),
                prop_oneof![
                    1 => Just(None),
                    2 => (Self::lifetime(), select(vec![2usize, 1, 10])).prop_map(Some),
                ],
                proptest::option::of(name()),
            )
                .prop_map(
                    |(thread, message, dedupe_ms, lock_ms, queue, read)| Step::Admit {
                        thread,
                        message,
                        dedupe_ms,
                        lock_ms,
                        queue,
                        read,
                    },
                )
                .boxed(),
        ));
        if !state.handles.is_empty() {
            let handles = 0..state.handles.len();
            options.push((
                5,
                (
                    handles.clone(),
                    Self::lock_ttl(),
                    proptest::option::of((name(), any::<u8>(), Self::optional_ttl())),
                )
                    .prop_map(|(handle, ttl_ms, write)| Step::ReleaseOrNext {
                        handle,
                        ttl_ms,
                        write,
                    })
                    .boxed(),
            ));
            options.push((
                4,
                (handles.clone(), name(), any::<u8>(), Self::optional_ttl())
                    .prop_map(|(handle, key, value, ttl_ms)| Step::SetFenced {
                        handle,
                        key,
                        value,
                        ttl_ms,
                    })
                    .boxed(),
            ));
            options.push((
                5,
                handles
                    .clone()
                    .prop_map(|handle| Step::Release { handle })
                    .boxed(),
            ));
            options.push((
                6,
                (handles, Self::lock_ttl())
                    .prop_map(|(handle, ttl_ms)| Step::Extend { handle, ttl_ms })
                    .boxed(),
            ));
        }
        if MANUAL {
            options.push((
                7,
                select(vec![5u64, 1, 4, 10, 30])
                    .prop_map(Step::Advance)
                    .boxed(),
            ));
        }
        Union::new_weighted(options).boxed()
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            // Shrinking removes earlier steps; a handle must still name a granted lock.
            Step::Release { handle }
            | Step::Extend { handle, .. }
            | Step::ReleaseOrNext { handle, .. }
            | Step::SetFenced { handle, .. } => *handle < state.handles.len(),
            Step::Advance(_) => MANUAL,
            _ => true,
        }
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        state.apply(step);
        state
    }
}

/// Runs the model test against the harness's adapter.
pub(super) async fn run(h: &Harness) -> CaseResult {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        Failure::new("the model-based case must run inside a tokio runtime (it blocks on the adapter from a blocking thread)")
    })?;
    let h = h.clone();
    // proptest drives cases synchronously; run it on a blocking thread that blocks on
    // each async call, so the runtime's workers stay free for the adapter's own tasks.
    tokio::task::spawn_blocking(move || {
        if h.time.is_manual() {
            run_model::<true>(&h, &runtime)
        } else {
            run_model::<false>(&h, &runtime)
        }
    })
    .await
    .map_err(|e| Failure::new(format!("the model-based test thread panicked: {e}")))?
}

fn run_model<const MANUAL: bool>(h: &Harness, runtime: &tokio::runtime::Handle) -> CaseResult {
    let defaults = Config::default();
    let config = Config {
        // `PROPTEST_CASES` (proptest's own variable) deepens a run, e.g. nightly.
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            defaults.cases
        } else {
            CASES
        },
        // Never write regression files into the user's source tree.
        failure_persistence: None,
        fork: false,
        timeout: 0,
        max_shrink_iters: MAX_SHRINK_ITERS,
        verbose: 0,
        ..defaults
    };
    let mut runner = TestRunner::new(config);
    // Distinct per run too, in case a backend's "fresh" state is shared across runs.
    let run_id = RandomState::new().hash_one("model") % 1_000_000;
    let sequence = Cell::new(0u64);
    let strategy = Reference::<MANUAL>::sequential_strategy(MIN_STEPS..=MAX_STEPS);
    let result = runner.run(&strategy, |(initial, steps, seen)| {
        let n = sequence.get();
        sequence.set(n + 1);
        let prefix = format!("model:{run_id}:{n}:");
        runtime
            .block_on(execute(h, prefix, initial, &steps, seen.as_deref()))
            .map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, (_, steps, _))) => {
            let mut listing = String::new();
            for (i, step) in steps.iter().enumerate() {
                listing.push_str(&format!("  {:>2}. {}\n", i + 1, Shown(step)));
            }
            Err(Failure::new(format!(
                "the adapter diverged from the reference model ({} clock): {reason}\n\
                 minimal failing sequence, on fresh keys ({} steps):\n{listing}",
                if MANUAL { "manual" } else { "real-time" },
                steps.len()
            )))
        }
        Err(TestError::Abort(reason)) => Err(Failure::new(format!(
            "the model-based test gave up: {reason}"
        ))),
    }
}

/// The adapter side of one sequence.
struct Driver<'a> {
    adapter: &'a dyn StateAdapter,
    time: &'a dyn TimeControl,
    manual: bool,
    prefix: String,
    /// Granted locks, in the model's handle order.
    locks: Vec<Lock>,
    last_fence: [Option<u64>; 3],
    tokens: HashSet<String>,
    /// Every entry enqueued, by number, to check exact round trips.
    sent: Vec<QueueEntry>,
}

/// Runs one sequence on fresh keys, comparing every result with the model, then compares
/// everything observable without side effects.
async fn execute(
    h: &Harness,
    prefix: String,
    mut model: Model,
    steps: &[Step],
    seen: Option<&AtomicUsize>,
) -> Result<(), String> {
    let mut driver = Driver {
        adapter: h.adapter.as_ref(),
        time: h.time.as_ref(),
        manual: h.time.is_manual(),
        prefix,
        locks: Vec::new(),
        last_fence: [None; 3],
        tokens: HashSet::new(),
        sent: Vec::new(),
    };
    for (i, step) in steps.iter().enumerate() {
        // Tells the shrinker how far the sequence got (steps after a failure are dropped).
        if let Some(seen) = seen {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let expected = model.apply(step);
        let got = driver
            .step(step)
            .await
            .map_err(|e| format!("step {} `{}`: {e}", i + 1, Shown(step)))?;
        if got != expected {
            return Err(format!(
                "step {} `{}`: expected {expected:?}, got {got:?}",
                i + 1,
                Shown(step)
            ));
        }
    }
    driver
        .sweep(&model)
        .await
        .map_err(|e| format!("after the last step: {e}"))
}

impl Driver<'_> {
    fn key(&self, i: usize) -> String {
        format!("{}{}", self.prefix, NAMES[i])
    }

    fn value(v: u8) -> Vec<u8> {
        format!("{{\"v\":{v}}}").into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<u8, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("value is not UTF-8: {e}"))?;
        text.strip_prefix("{\"v\":")
            .and_then(|rest| rest.strip_suffix('}'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("value {text:?} is not one this test stored"))
    }

    fn forged(&self, id: usize) -> Lock {
        Lock {
            thread_id: self.key(id),
            token: "00000000000000000000000000000000".into(),
            expires_at: self.time.now_ms().saturating_add(LONG_MS),
            fence: 0,
        }
    }

    /// Runs one step on the adapter and reports it in model terms. Checks that need the
    /// adapter's own values (fences, tokens, expiries, entries) are made here.
    async fn step(&mut self, step: &Step) -> Result<Outcome, String> {
        let a = self.adapter;
        let err = |e: chat_state_core::Error| format!("unexpected error: {e}");
        Ok(match *step {
            Step::Subscribe(i) => {
                a.subscribe(&self.key(i)).await.map_err(err)?;
                Outcome::Done
            }
            Step::Unsubscribe(i) => {
                a.unsubscribe(&self.key(i)).await.map_err(err)?;
                Outcome::Done
            }
            Step::IsSubscribed(i) => {
                Outcome::Bool(a.is_subscribed(&self.key(i)).await.map_err(err)?)
            }
            Step::Acquire { id, ttl_ms } => {
                let key = self.key(id);
                let before = self.time.now_ms();
                let got = a
                    .acquire_lock(&key, Duration::from_millis(ttl_ms))
                    .await
                    .map_err(err)?;
                let after = self.time.now_ms();
                match got {
                    None => Outcome::Acquired(false),
                    Some(lock) => {
                        self.check_grant(id, &key, &lock, before, after, ttl_ms)?;
                        self.locks.push(lock);
                        Outcome::Acquired(true)
                    }
                }
            }
            Step::Release { handle } => {
                let lock = self.handle(handle)?;
                a.release_lock(&lock).await.map_err(err)?;
                Outcome::Done
            }
            Step::Extend { handle, ttl_ms } => {
                let lock = self.handle(handle)?;
                Outcome::Bool(
                    a.extend_lock(&lock, Duration::from_millis(ttl_ms))
                        .await
                        .map_err(err)?,
                )
            }
            Step::ReleaseForged(id) => {
                a.release_lock(&self.forged(id)).await.map_err(err)?;
                Outcome::Done
            }
            Step::ExtendForged(id) => Outcome::Bool(
                a.extend_lock(&self.forged(id), Duration::from_millis(LONG_MS))
                    .await
                    .map_err(err)?,
            ),
            Step::ForceRelease(id) => {
                a.force_release_lock(&self.key(id)).await.map_err(err)?;
                Outcome::Done
            }
            Step::Get(k) => Outcome::Value(match a.get(&self.key(k)).await.map_err(err)? {
                Some(bytes) => Some(Self::decode(&bytes)?),
                None => None,
            }),
            Step::Set { key, value, ttl_ms } => {
                a.set(
                    &self.key(key),
                    &Self::value(value),
                    ttl_ms.map(Duration::from_millis),
                )
                .await
                .map_err(err)?;
                Outcome::Done
            }
            Step::SetIfNotExists { key, value, ttl_ms } => Outcome::Bool(
                a.set_if_not_exists(
                    &self.key(key),
                    &Self::value(value),
                    ttl_ms.map(Duration::from_millis),
                )
                .await
                .map_err(err)?,
            ),
            Step::Delete(k) => {
                a.delete(&self.key(k)).await.map_err(err)?;
                Outcome::Done
            }
            Step::Append {
                key,
                value,
                max_length,
                ttl_ms,
            } => {
                let options =
                    ListOptions::from_parts(max_length, ttl_ms.map(Duration::from_millis));
                a.append_to_list(&self.key(key), &Self::value(value), options)
                    .await
                    .map_err(err)?;
                Outcome::Done
            }
            Step::GetList(k) => {
                let items = a.get_list(&self.key(k)).await.map_err(err)?;
                Outcome::List(
                    items
                        .iter()
                        .map(|item| Self::decode(item))
                        .collect::<Result<_, _>>()?,
                )
            }
            Step::Enqueue {
                thread,
                lifetime_ms,
                max_size,
            } => {
                let entry = self.new_entry(lifetime_ms);
                Outcome::Depth(
                    a.enqueue(&self.key(thread), entry, max_size)
                        .await
                        .map_err(err)?,
                )
            }
            Step::Dequeue(t) => match a.dequeue(&self.key(t)).await.map_err(err)? {
                None => Outcome::Entry(None),
                Some(entry) => Outcome::Entry(Some(self.sent_entry(&entry)?)),
            },
            Step::QueueDepth(t) => Outcome::Depth(a.queue_depth(&self.key(t)).await.map_err(err)?),
            Step::Admit {
                thread,
                message,
                dedupe_ms,
                lock_ms,
                queue,
                read,
            } => {
                self.admit(thread, message, dedupe_ms, lock_ms, queue, read)
                    .await?
            }
            Step::ReleaseOrNext {
                handle,
                ttl_ms,
                write,
            } => {
                let mut lock = self.handle(handle)?;
                let before = self.time.now_ms();
                let ttl = Duration::from_millis(ttl_ms);
                let got = match write {
                    None => a.release_or_next(&mut lock, ttl).await,
                    Some((key, value, write_ttl)) => {
                        let key = self.key(key);
                        let value = Self::value(value);
                        let write = FencedSet {
                            key: &key,
                            value: &value,
                            ttl: write_ttl.map(Duration::from_millis),
                        };
                        a.release_or_next_with(&mut lock, ttl, write).await
                    }
                }
                .map_err(err)?;
                match got {
                    Handoff::Next(entry) => {
                        let number = self.sent_entry(&entry)?;
                        if lock.expires_at < before + ttl_ms {
                            return Err(format!(
                                "after Next the lock's expires_at {} is before clock + TTL {} (rule 12)",
                                lock.expires_at,
                                before + ttl_ms
                            ));
                        }
                        self.locks[handle] = lock;
                        Outcome::Next(number)
                    }
                    Handoff::Released => Outcome::Released,
                    Handoff::NotHolder => Outcome::NotHolder,
                }
            }
            Step::SetFenced {
                handle,
                key,
                value,
                ttl_ms,
            } => {
                let lock = self.handle(handle)?;
                let written = a
                    .set_fenced(
                        &lock,
                        &self.key(key),
                        &Self::value(value),
                        ttl_ms.map(Duration::from_millis),
                    )
                    .await
                    .map_err(err)?;
                Outcome::Fenced(written == FencedWrite::Stored)
            }
            Step::Advance(ms) => {
                self.time.advance(Duration::from_millis(ms)).await;
                Outcome::Done
            }
            Step::Invalid(call) => self.invalid(call).await?,
        })
    }

    async fn admit(
        &mut self,
        thread: usize,
        message: usize,
        dedupe_ms: u64,
        lock_ms: u64,
        queue: Option<(u64, usize)>,
        read: Option<usize>,
    ) -> Result<Outcome, String> {
        let key = self.key(thread);
        let dedupe_key = format!("{}dedupe:{}", self.prefix, NAMES[message]);
        let read_key = read.map(|k| self.key(k));
        let mut admit = Admit::new(&key, &dedupe_key)
            .dedupe_ttl(Duration::from_millis(dedupe_ms))
            .lock_ttl(Duration::from_millis(lock_ms));
        if let Some(read_key) = &read_key {
            admit = admit.read(read_key);
        }
        if let Some((lifetime_ms, max_size)) = queue {
            let entry = self.new_entry(lifetime_ms);
            admit = admit.queue_when_busy(entry, max_size);
        }
        let before = self.time.now_ms();
        let got = self
            .adapter
            .admit(&admit)
            .await
            .map_err(|e| format!("unexpected error: {e}"))?;
        let after = self.time.now_ms();
        Ok(match got {
            Admission::Duplicate => Outcome::Duplicate,
            Admission::Dropped => Outcome::Dropped,
            Admission::Queued { depth } => Outcome::Queued(depth),
            Admission::Admitted {
                lock,
                subscribed,
                read,
            } => {
                self.check_grant(thread, &key, &lock, before, after, lock_ms)?;
                self.locks.push(lock);
                let read = read.map(|bytes| Self::decode(&bytes)).transpose()?;
                Outcome::Admitted(subscribed, read)
            }
            Admission::HoldingQueue { .. } => {
                return Err(
                    "HoldingQueue in a sequential run: the lock was busy and free in one admit"
                        .into(),
                );
            }
        })
    }

    /// A new queue entry, numbered in enqueue order and remembered for the round trip.
    fn new_entry(&mut self, lifetime_ms: u64) -> QueueEntry {
        let number = self.sent.len();
        let entry = QueueEntry::new(
            json!({ "n": number, "text": format!("message {number}") }),
            self.time.now_ms(),
            Duration::from_millis(lifetime_ms),
        );
        self.sent.push(entry.clone());
        entry
    }

    /// The number of an entry handed back, checking it round-tripped exactly.
    fn sent_entry(&self, entry: &QueueEntry) -> Result<usize, String> {
        let number = entry.message["n"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n < self.sent.len())
            .ok_or_else(|| format!("dequeued an entry this test never enqueued: {entry:?}"))?;
        if *entry != self.sent[number] {
            return Err(format!(
                "entry {number} did not round-trip exactly: enqueued {:?}, dequeued {entry:?}",
                self.sent[number]
            ));
        }
        Ok(number)
    }

    fn handle(&self, handle: usize) -> Result<Lock, String> {
        self.locks
            .get(handle)
            .cloned()
            .ok_or_else(|| format!("lock handle {handle} was never granted"))
    }

    /// A granted lock names the id, carries a fresh token, a fence above every earlier
    /// one for this id (rule 11), and an expiry of clock + TTL read before the call
    /// (rule 12).
    fn check_grant(
        &mut self,
        id: usize,
        key: &str,
        lock: &Lock,
        before: u64,
        after: u64,
        ttl_ms: u64,
    ) -> Result<(), String> {
        if lock.thread_id != key {
            return Err(format!(
                "granted lock names `{}`, not `{key}`",
                lock.thread_id
            ));
        }
        if !self.tokens.insert(lock.token.clone()) {
            return Err(format!("token {:?} was issued twice (rule 10)", lock.token));
        }
        if let Some(last) = self.last_fence[id]
            && lock.fence <= last
        {
            return Err(format!(
                "fence {} is not above the previous fence {last} for this id (rule 11)",
                lock.fence
            ));
        }
        self.last_fence[id] = Some(lock.fence);
        let (low, high) = (before + ttl_ms, after + ttl_ms);
        let ok = if self.manual {
            lock.expires_at == low
        } else {
            (low..=high).contains(&lock.expires_at)
        };
        if !ok {
            return Err(format!(
                "expires_at {} is not clock + TTL ({low}..={high}; rule 12)",
                lock.expires_at
            ));
        }
        Ok(())
    }

    async fn invalid(&self, call: Invalid) -> Result<Outcome, String> {
        let a = self.adapter;
        let zero = Duration::ZERO;
        let v = Self::value(1);
        let result: chat_state_core::Result<()> = match call {
            Invalid::GetEmptyKey => a.get("").await.map(drop),
            Invalid::SubscribeNul => a.subscribe(&format!("{}nul\0", self.prefix)).await,
            Invalid::AcquireZeroTtl(i) => a.acquire_lock(&self.key(i), zero).await.map(drop),
            Invalid::ExtendZeroTtl(i) => {
                // With the current holder's lock if there is one: a zero TTL must never
                // reach the backend (upstream's `PEXPIRE key 0` deletes the lock).
                let lock = self
                    .locks
                    .iter()
                    .rev()
                    .find(|l| l.thread_id == self.key(i))
                    .cloned()
                    .unwrap_or_else(|| self.forged(i));
                a.extend_lock(&lock, zero).await.map(drop)
            }
            Invalid::SetZeroTtl(i) => a.set(&self.key(i), &v, Some(zero)).await,
            Invalid::SetOversizedKey => a.set(&"k".repeat(1025), &v, None).await,
            Invalid::AppendZeroMaxLength(i) => {
                a.append_to_list(&self.key(i), &v, ListOptions::new().max_length(0))
                    .await
            }
            Invalid::AppendZeroTtl(i) => {
                let options = ListOptions::from_parts(None, Some(zero));
                a.append_to_list(&self.key(i), &v, options).await
            }
            Invalid::EnqueueZeroMaxSize(i) => {
                let entry = QueueEntry::new(json!({}), self.time.now_ms(), Duration::from_secs(60));
                a.enqueue(&self.key(i), entry, 0).await.map(drop)
            }
        };
        match result {
            Ok(()) => Err("an invalid input was accepted; expected an InvalidInput error".into()),
            Err(e) if e.kind() == ErrorKind::InvalidInput => Ok(Outcome::InvalidInput),
            Err(e) => Err(format!("expected an InvalidInput error, got {e}")),
        }
    }

    /// At the end, everything observable must match the model: the read-only calls,
    /// then, since the keys are never used again, who holds each lock (by trying to
    /// acquire it) and every queue's remaining entries in order (by draining it).
    async fn sweep(&mut self, model: &Model) -> Result<(), String> {
        let mut model = model.clone();
        for i in 0..NAMES.len() {
            let mut steps = vec![
                Step::IsSubscribed(i),
                Step::Get(i),
                Step::GetList(i),
                Step::QueueDepth(i),
                Step::Acquire {
                    id: i,
                    ttl_ms: LONG_MS,
                },
            ];
            // One dequeue per live entry, plus one that must find the queue empty.
            let live = model.queues[i]
                .iter()
                .filter(|(_, at)| model.now < *at)
                .count();
            steps.extend(std::iter::repeat_n(Step::Dequeue(i), live + 1));
            for step in steps {
                let expected = model.apply(&step);
                let got = self.step(&step).await?;
                if got != expected {
                    return Err(format!(
                        "`{}`: expected {expected:?}, got {got:?}",
                        Shown(&step)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A step as the call it makes, for failure messages.
struct Shown<'a>(&'a Step);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |i: usize| NAMES[i];
        let ttl = |t: Option<u64>| match t {
            Some(ms) => format!("Some({ms} ms)"),
            None => "None".into(),
        };
        match *self.0 {
            Step::Subscribe(i) => write!(f, "subscribe({:?})", n(i)),
            Step::Unsubscribe(i) => write!(f, "unsubscribe({:?})", n(i)),
            Step::IsSubscribed(i) => write!(f, "is_subscribed({:?})", n(i)),
            Step::Acquire { id, ttl_ms } => write!(f, "acquire_lock({:?}, {ttl_ms} ms)", n(id)),
            Step::Release { handle } => write!(f, "release_lock(lock #{handle})"),
            Step::Extend { handle, ttl_ms } => {
                write!(f, "extend_lock(lock #{handle}, {ttl_ms} ms)")
            }
            Step::ReleaseForged(i) => write!(f, "release_lock(forged token on {:?})", n(i)),
            Step::ExtendForged(i) => write!(f, "extend_lock(forged token on {:?})", n(i)),
            Step::ForceRelease(i) => write!(f, "force_release_lock({:?})", n(i)),
            Step::Get(k) => write!(f, "get({:?})", n(k)),
            Step::Set { key, value, ttl_ms } => {
                write!(f, "set({:?}, v{value}, ttl {})", n(key), ttl(ttl_ms))
            }
            Step::SetIfNotExists { key, value, ttl_ms } => write!(
                f,
                "set_if_not_exists({:?}, v{value}, ttl {})",
                n(key),
                ttl(ttl_ms)
            ),
            Step::Delete(k) => write!(f, "delete({:?})", n(k)),
            Step::Append {
                key,
                value,
                max_length,
                ttl_ms,
            } => write!(
                f,
                "append_to_list({:?}, v{value}, max_length {max_length:?}, ttl {})",
                n(key),
                ttl(ttl_ms)
            ),
            Step::GetList(k) => write!(f, "get_list({:?})", n(k)),
            Step::Enqueue {
                thread,
                lifetime_ms,
                max_size,
            } => write!(
                f,
                "enqueue({:?}, entry living {lifetime_ms} ms, max_size {max_size})",
                n(thread)
            ),
            Step::Dequeue(t) => write!(f, "dequeue({:?})", n(t)),
            Step::QueueDepth(t) => write!(f, "queue_depth({:?})", n(t)),
            Step::Admit {
                thread,
                message,
                dedupe_ms,
                lock_ms,
                queue,
                read,
            } => write!(
                f,
                "admit({:?}, dedupe:{:?} for {dedupe_ms} ms, lock {lock_ms} ms, when busy {}, read {:?})",
                n(thread),
                n(message),
                match queue {
                    Some((lifetime, max)) => format!("queue entry living {lifetime} ms, max {max}"),
                    None => "drop".into(),
                },
                read.map(n)
            ),
            Step::ReleaseOrNext {
                handle,
                ttl_ms,
                write,
            } => match write {
                None => write!(f, "release_or_next(lock #{handle}, {ttl_ms} ms)"),
                Some((key, value, t)) => write!(
                    f,
                    "release_or_next_with(lock #{handle}, {ttl_ms} ms, set_fenced({:?}, v{value}, ttl {}))",
                    n(key),
                    ttl(t)
                ),
            },
            Step::SetFenced {
                handle,
                key,
                value,
                ttl_ms,
            } => write!(
                f,
                "set_fenced(lock #{handle}, {:?}, v{value}, ttl {})",
                n(key),
                ttl(ttl_ms)
            ),
            Step::Advance(ms) => write!(f, "<advance the clock {ms} ms>"),
            Step::Invalid(call) => {
                write!(f, "invalid call {call:?} (must fail, change nothing)")
            }
        }
    }
}
