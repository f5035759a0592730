//! Safe message dispatch: the three operations ([`Dispatch`]) that let a bot handle a message
//! in one round trip to admit it, hand a thread's queue over without stranding an entry, and
//! keep a paused holder from writing over its successor's state.
//!
//! Every adapter has them. A backend that implements them natively (memory, SQLite, Redis,
//! Postgres, the Durable Object) runs each as one atomic step, in one round trip; any other backend
//! gets the step-by-step versions in this module, built from the primitive operations:
//! correct while every caller runs to completion, but not atomic (SEMANTICS.md, "Dispatch",
//! says what that costs). [`Backend::ATOMIC_DISPATCH`](crate::Backend::ATOMIC_DISPATCH)
//! says which one an adapter runs.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    Cache, Lock, Locks, MaybeSend, Operation, QueueEntry, Queues, Result, Subscriptions, validate,
};

/// The lock TTL a dispatched message is handled under (upstream's 30 s).
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
/// How long a message id is remembered as seen (upstream's 10 minutes).
pub const DEFAULT_DEDUPE_TTL: Duration = Duration::from_secs(10 * 60);
/// Most messages queued behind a busy thread (upstream's 10); the oldest are dropped.
pub const DEFAULT_QUEUE_MAX: usize = 10;
/// How long a queued message stays handleable (upstream's 90 s).
pub const DEFAULT_ENTRY_LIFETIME: Duration = Duration::from_secs(90);
/// The value a dedupe claim stores: JSON `true`, what TypeScript bots store, so bots of both
/// languages sharing a backend dedupe each other's deliveries.
pub const DEDUPE_VALUE: &[u8] = b"true";

/// What [`Dispatch::admit`] does with a new message whose thread is locked by someone else.
#[derive(Debug, Clone, PartialEq)]
pub enum WhenBusy {
    /// Drop it (upstream's default strategy): [`Admission::Dropped`].
    Drop,
    /// Append `entry` to the thread's queue, dropping the oldest entries beyond `max_size`
    /// (1..=[`MAX_COLLECTION_LEN`](crate::validate::MAX_COLLECTION_LEN)):
    /// [`Admission::Queued`]. The holder receives it from [`Dispatch::release_or_next`].
    Queue {
        /// The queued message and its lifetime.
        entry: QueueEntry,
        /// Most live entries the queue keeps.
        max_size: usize,
    },
}

/// One incoming message, as [`Dispatch::admit`] takes it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Admit<'a> {
    /// The thread the message belongs to: its lock id, queue and subscription.
    pub thread_id: &'a str,
    /// The cache key that marks the message as seen (upstream:
    /// `dedupe:<adapter>:<message id>`), claimed with [`DEDUPE_VALUE`].
    pub dedupe_key: &'a str,
    /// How long the message is remembered as seen.
    pub dedupe_ttl: Duration,
    /// The TTL of the thread lock when the message is admitted.
    pub lock_ttl: Duration,
    /// What happens when the thread is locked.
    pub when_busy: WhenBusy,
    /// A cache key to read in the same step when the message is admitted (the thread's
    /// state, which the new holder is about to read anyway): [`Admission::Admitted`]'s
    /// `read`.
    pub read: Option<&'a str>,
}

impl<'a> Admit<'a> {
    /// A message of `thread_id` deduplicated by `dedupe_key`, with the upstream defaults:
    /// lock 30 s, dedupe 10 min, dropped when the thread is busy.
    pub fn new(thread_id: &'a str, dedupe_key: &'a str) -> Self {
        Self {
            thread_id,
            dedupe_key,
            dedupe_ttl: DEFAULT_DEDUPE_TTL,
            lock_ttl: DEFAULT_LOCK_TTL,
            when_busy: WhenBusy::Drop,
            read: None,
        }
    }

    /// Reads cache key `key` in the same step when the message is admitted.
    pub fn read(mut self, key: &'a str) -> Self {
        self.read = Some(key);
        self
    }

    /// Remembers the message as seen for `ttl`.
    pub fn dedupe_ttl(mut self, ttl: Duration) -> Self {
        self.dedupe_ttl = ttl;
        self
    }

    /// Takes the thread's lock for `ttl` when admitted.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Queues `entry` (keeping at most `max_size` live entries) when the thread is busy.
    pub fn queue_when_busy(mut self, entry: QueueEntry, max_size: usize) -> Self {
        self.when_busy = WhenBusy::Queue { entry, max_size };
        self
    }

    /// Drops the message when the thread is busy (the default).
    pub fn drop_when_busy(mut self) -> Self {
        self.when_busy = WhenBusy::Drop;
        self
    }
}

/// What [`Dispatch::admit`] did with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// The message was seen before (its dedupe key is live): nothing changed.
    Duplicate,
    /// New, but the thread is locked and the policy is [`WhenBusy::Drop`]. The message is
    /// marked as seen.
    Dropped,
    /// New, the thread is locked, and the message waits in its queue, which now holds
    /// `depth` live entries. The holder hands it on with [`Dispatch::release_or_next`].
    Queued {
        /// Live entries in the queue after the append.
        depth: usize,
    },
    /// New, and the caller now holds the thread's lock: handle the message, then call
    /// [`Dispatch::release_or_next`] until it answers [`Handoff::Released`].
    Admitted {
        /// The thread's lock, held by the caller.
        lock: Lock,
        /// Whether the thread was subscribed when the message was admitted.
        subscribed: bool,
        /// The value of [`Admit::read`]'s key, read under the new lock (`None` if it is
        /// missing or no key was given).
        read: Option<Vec<u8>>,
    },
    /// New; the message went into the queue, and the lock came free before the step-by-step
    /// admit finished, so the caller now holds it: do not handle the message directly (it is
    /// in the queue), call [`Dispatch::release_or_next`] until it answers
    /// [`Handoff::Released`]. Only the step-by-step default answers this (a native admit
    /// never finds the lock busy and free in one step).
    HoldingQueue {
        /// The thread's lock, held by the caller.
        lock: Lock,
        /// Whether the thread was subscribed when the lock was taken.
        subscribed: bool,
        /// The value of [`Admit::read`]'s key, read under the new lock.
        read: Option<Vec<u8>>,
    },
}

/// A fenced cache write handed to [`Dispatch::release_or_next_with`]: the holder's last
/// write of a turn, stored in the same step as the handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FencedSet<'a> {
    /// The cache key.
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// The value's TTL (`None`: no expiry), also the fence record's.
    pub ttl: Option<Duration>,
}

/// What [`Dispatch::release_or_next`] did.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a `Next` entry is removed from the queue: handle it, then call release_or_next again"]
pub enum Handoff {
    /// The oldest live entry of the thread's queue, removed from it; the caller still holds
    /// the lock, its expiry moved to now + TTL (and the caller's `Lock::expires_at` with it).
    Next(QueueEntry),
    /// The queue was empty and the lock is released.
    Released,
    /// The caller's lock is no longer the current holder (expired, force-released, taken
    /// over): nothing changed.
    NotHolder,
}

/// What [`Dispatch::set_fenced`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[must_use = "a `Stale` write was not stored: the writer has lost its lock"]
pub enum FencedWrite {
    /// The value is stored, with the writer's lock id and fence.
    Stored,
    /// A write with a higher fence under the same lock id was stored before: nothing changed.
    Stale,
}

/// The three dispatch operations, part of every [`StateAdapter`](crate::StateAdapter).
///
/// Adapters built on a [`Backend`](crate::Backend) get them from
/// [`Checked`](crate::Checked): the backend's native versions when it has them, the
/// step-by-step ones otherwise. An adapter that implements the public traits itself can
/// implement these by calling [`admit_in_steps`], [`release_or_next_in_steps`] and
/// [`set_fenced_in_steps`].
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Dispatch: Subscriptions + Locks + Cache + Queues {
    /// Whether the three operations run as one atomic step each (a native implementation),
    /// or as the step-by-step versions of this module. The conformance suite's atomicity
    /// case runs only when this is `true`; a backend whose dispatch is step-by-step declares
    /// that case skipped, so its users see that it is not atomic.
    fn atomic_dispatch(&self) -> bool {
        false
    }

    /// In one step: claims `message.dedupe_key` ([`Admission::Duplicate`] if it is live);
    /// then takes the thread's lock ([`Admission::Admitted`], with whether the thread is
    /// subscribed), or, if the lock is held, queues or drops the message by
    /// `message.when_busy`.
    async fn admit(&self, message: &Admit<'_>) -> Result<Admission>;

    /// For the current holder, in one step: removes and returns the oldest live entry of the
    /// thread's queue and keeps the lock for `ttl` more ([`Handoff::Next`]), or, if the
    /// queue is empty, releases the lock ([`Handoff::Released`]). A holder that no longer
    /// holds the lock gets [`Handoff::NotHolder`] and changes nothing.
    ///
    /// `lock` is updated in place: its `expires_at` after `Next`; the step-by-step version
    /// may also re-take the lock (new token and fence) when an entry arrived as it released.
    async fn release_or_next(&self, lock: &mut Lock, ttl: Duration) -> Result<Handoff>;

    /// [`set_fenced`](Dispatch::set_fenced) of `write` under `lock`, then
    /// [`release_or_next`](Dispatch::release_or_next), in one step: a turn's last state
    /// write and the queue handoff in one round trip. A write that `set_fenced` refuses
    /// changes nothing and answers [`Handoff::NotHolder`] (a later holder of the lock wrote
    /// the key, so this caller holds it no more).
    async fn release_or_next_with(
        &self,
        lock: &mut Lock,
        ttl: Duration,
        write: FencedSet<'_>,
    ) -> Result<Handoff>;

    /// Stores `value` under `key` (as [`Cache::set`] would, read back with [`Cache::get`])
    /// unless a write with a higher fence under `lock`'s id was stored for `key` before
    /// ([`FencedWrite::Stale`]). The key's fence record keeps the writer's lock id and fence
    /// for `ttl` (forever with `None`); plain `set` and `delete` do not touch it, and a fenced
    /// write to a key last written under another lock id is stored (fences of different
    /// locks are not comparable).
    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite>;
}

/// Where the step-by-step [`Dispatch::set_fenced`] keeps a key's fence record: a cache key of
/// its own, `chat-state:fence:<key>`.
pub const FENCE_RECORD_PREFIX: &str = "chat-state:fence:";

/// The fence record the step-by-step [`Dispatch::set_fenced`] stores (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FenceRecord {
    lock_id: String,
    fence: u64,
}

/// Whether a fenced write by `lock` must be refused, given the key's live fence record
/// (`lock id`, `fence`), if any: the one rule every backend applies.
pub fn is_stale(record: Option<(&str, u64)>, lock: &Lock) -> bool {
    matches!(record, Some((lock_id, fence)) if lock_id == lock.thread_id && fence > lock.fence)
}

/// [`Dispatch::admit`] built from the primitive operations: claim, try the lock, queue or
/// drop. Not atomic: a caller that stops between the claim and the enqueue loses the
/// message. When the lock is busy and the message is queued, it tries the lock once more, so
/// a holder that released in between cannot leave the entry stranded
/// ([`Admission::HoldingQueue`]).
///
/// `backend` names the adapter in errors: every error is reported as the admit's (the
/// message says which step failed), and input is checked before any step runs.
pub async fn admit_in_steps<A>(
    adapter: &A,
    backend: &'static str,
    message: &Admit<'_>,
) -> Result<Admission>
where
    A: Subscriptions + Locks + Cache + Queues + ?Sized,
{
    validate::admit(backend, message)?;
    admit_steps(adapter, message)
        .await
        .map_err(|e| e.reported_as(backend, Operation::Admit))
}

async fn admit_steps<A>(adapter: &A, message: &Admit<'_>) -> Result<Admission>
where
    A: Subscriptions + Locks + Cache + Queues + ?Sized,
{
    let claimed = adapter
        .set_if_not_exists(message.dedupe_key, DEDUPE_VALUE, Some(message.dedupe_ttl))
        .await?;
    if !claimed {
        return Ok(Admission::Duplicate);
    }
    if let Some(lock) = adapter
        .acquire_lock(message.thread_id, message.lock_ttl)
        .await?
    {
        let subscribed = adapter.is_subscribed(message.thread_id).await?;
        let read = read_under_lock(adapter, message).await?;
        return Ok(Admission::Admitted {
            lock,
            subscribed,
            read,
        });
    }
    let WhenBusy::Queue { entry, max_size } = &message.when_busy else {
        return Ok(Admission::Dropped);
    };
    let depth = adapter
        .enqueue(message.thread_id, entry.clone(), *max_size)
        .await?;
    // The holder may have found the queue empty and released between our try and the
    // enqueue; then nobody would hand the entry on. Whoever takes the lock now drains it.
    match adapter
        .acquire_lock(message.thread_id, message.lock_ttl)
        .await?
    {
        Some(lock) => {
            let subscribed = adapter.is_subscribed(message.thread_id).await?;
            let read = read_under_lock(adapter, message).await?;
            Ok(Admission::HoldingQueue {
                lock,
                subscribed,
                read,
            })
        }
        None => Ok(Admission::Queued { depth }),
    }
}

async fn read_under_lock<A>(adapter: &A, message: &Admit<'_>) -> Result<Option<Vec<u8>>>
where
    A: Cache + ?Sized,
{
    match message.read {
        Some(key) => adapter.get(key).await,
        None => Ok(None),
    }
}

/// [`Dispatch::release_or_next_with`] built from the primitive operations: the steps of
/// [`set_fenced_in_steps`], then those of [`release_or_next_in_steps`].
pub async fn release_or_next_with_in_steps<A>(
    adapter: &A,
    backend: &'static str,
    lock: &mut Lock,
    ttl: Duration,
    write: FencedSet<'_>,
    now_ms: impl Fn() -> u64 + MaybeSend,
) -> Result<Handoff>
where
    A: Cache + Locks + Queues + ?Sized,
{
    let written = set_fenced_in_steps(adapter, backend, lock, write.key, write.value, write.ttl)
        .await
        .map_err(|e| e.reported_as(backend, Operation::ReleaseOrNext))?;
    if written == FencedWrite::Stale {
        return Ok(Handoff::NotHolder);
    }
    release_or_next_in_steps(adapter, backend, lock, ttl, now_ms).await
}

/// [`Dispatch::release_or_next`] built from the primitive operations: extend (proving the
/// caller holds the lock), dequeue, and on an empty queue release, then look again: an entry
/// queued by a caller whose lock try failed just before the release is taken over by
/// re-acquiring. Not atomic: a holder that stops between dequeue and handling loses that
/// entry, as with the primitives.
///
/// `now_ms` is the adapter's clock: read before each extend, it gives the caller's new
/// `expires_at` (rule 12). Errors are reported as in [`admit_in_steps`].
pub async fn release_or_next_in_steps<A>(
    adapter: &A,
    backend: &'static str,
    lock: &mut Lock,
    ttl: Duration,
    now_ms: impl Fn() -> u64 + MaybeSend,
) -> Result<Handoff>
where
    A: Locks + Queues + ?Sized,
{
    validate::release_or_next(backend, lock, ttl)?;
    release_or_next_steps(adapter, lock, ttl, now_ms)
        .await
        .map_err(|e| e.reported_as(backend, Operation::ReleaseOrNext))
}

async fn release_or_next_steps<A>(
    adapter: &A,
    lock: &mut Lock,
    ttl: Duration,
    now_ms: impl Fn() -> u64,
) -> Result<Handoff>
where
    A: Locks + Queues + ?Sized,
{
    loop {
        let now = now_ms();
        if !adapter.extend_lock(lock, ttl).await? {
            return Ok(Handoff::NotHolder);
        }
        lock.expires_at = now.saturating_add(validate::duration_ms(ttl));
        if let Some(entry) = adapter.dequeue(&lock.thread_id).await? {
            return Ok(Handoff::Next(entry));
        }
        adapter.release_lock(lock).await?;
        if adapter.queue_depth(&lock.thread_id).await? == 0 {
            return Ok(Handoff::Released);
        }
        match adapter.acquire_lock(&lock.thread_id, ttl).await? {
            Some(again) => *lock = again,
            // Someone else took it, and with it the queue.
            None => return Ok(Handoff::Released),
        }
    }
}

/// [`Dispatch::set_fenced`] built from the primitive operations: read the key's fence record
/// ([`FENCE_RECORD_PREFIX`]), compare, write the value, write the record. Not atomic: a
/// stale writer whose read came before a newer holder's write can still overwrite it.
/// Errors are reported as in [`admit_in_steps`].
pub async fn set_fenced_in_steps<A>(
    adapter: &A,
    backend: &'static str,
    lock: &Lock,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<FencedWrite>
where
    A: Cache + ?Sized,
{
    validate::set_fenced(backend, lock, key, value, ttl)?;
    set_fenced_steps(adapter, lock, key, value, ttl)
        .await
        .map_err(|e| e.reported_as(backend, Operation::SetFenced))
}

async fn set_fenced_steps<A>(
    adapter: &A,
    lock: &Lock,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<FencedWrite>
where
    A: Cache + ?Sized,
{
    let record_key = format!("{FENCE_RECORD_PREFIX}{key}");
    let record = match adapter.get(&record_key).await? {
        // A record that does not parse was not written by this function: nothing to honour.
        Some(bytes) => serde_json::from_slice::<FenceRecord>(&bytes).ok(),
        None => None,
    };
    if is_stale(record.as_ref().map(|r| (r.lock_id.as_str(), r.fence)), lock) {
        return Ok(FencedWrite::Stale);
    }
    adapter.set(key, value, ttl).await?;
    let record = FenceRecord {
        lock_id: lock.thread_id.clone(),
        fence: lock.fence,
    };
    // Serializing a struct of a string and a number cannot fail.
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    adapter.set(&record_key, &bytes, ttl).await?;
    Ok(FencedWrite::Stored)
}
