//! The whole per-message protocol of a bot, on the [`Dispatch`] operations.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::dispatch::{
    Admission, Admit, DEFAULT_DEDUPE_TTL, DEFAULT_ENTRY_LIFETIME, DEFAULT_LOCK_TTL,
    DEFAULT_QUEUE_MAX, Dispatch, FencedSet, FencedWrite, Handoff, WhenBusy,
};
use crate::guard::under_heartbeat;
use crate::{
    BoxError, Error, Lock, Operation, QueueEntry, Result, SharedClock, StateAdapter, system_clock,
};

/// What a [`Dispatcher`] does with a message whose thread is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyStrategy {
    /// Drop it (upstream's default).
    Drop,
    /// Queue it behind the holder, which handles it next.
    Queue {
        /// Most live entries a thread's queue keeps; the oldest are dropped beyond it.
        max_size: usize,
        /// How long a queued message stays handleable.
        entry_lifetime: Duration,
    },
}

impl BusyStrategy {
    /// Queue with the upstream defaults: at most 10 entries, each live for 90 s.
    pub const fn queue() -> Self {
        BusyStrategy::Queue {
            max_size: DEFAULT_QUEUE_MAX,
            entry_lifetime: DEFAULT_ENTRY_LIFETIME,
        }
    }
}

/// What [`Dispatcher::dispatch`] did with one delivery.
#[derive(Debug)]
#[non_exhaustive]
pub enum Dispatched {
    /// Seen before: not handled again.
    Duplicate,
    /// The thread was busy and the strategy is [`BusyStrategy::Drop`].
    Dropped,
    /// The thread was busy; the message waits in its queue (`depth` live entries), and the
    /// holder handles it.
    Queued {
        /// Live entries in the queue after the append.
        depth: usize,
    },
    /// This call held the thread's lock and ran the handler on the message and on every
    /// message queued behind it, then released the lock.
    Handled {
        /// Messages the handler ran on (this one and the queued ones).
        handled: usize,
        /// How many of them were handed over from the thread's queue.
        from_queue: usize,
        /// What the handler returned for the runs that failed (the messages are not retried:
        /// each was dequeued and is not handed out again).
        failures: Vec<BoxError>,
        /// Whether the lock was lost (expired or taken over) while handling: the thread's
        /// remaining queue is left to the new holder, and writes through
        /// [`Turn::set_fenced`] after the loss were refused if the new holder wrote first.
        ownership_lost: bool,
    },
}

/// A thread-state write a turn left for the dispatcher to store with the handoff.
type PendingWrite = Arc<Mutex<Option<(Vec<u8>, Option<Duration>)>>>;

/// One run of the handler: the message's thread, its lock, and the state.
#[derive(Debug)]
pub struct Turn<A: ?Sized> {
    state: Arc<A>,
    lock: Lock,
    subscribed: bool,
    lost: Arc<AtomicBool>,
    lock_ttl: Duration,
    thread_state: Option<Vec<u8>>,
    has_thread_state: bool,
    pending: PendingWrite,
}

impl<A: StateAdapter + ?Sized> Turn<A> {
    /// The thread the message belongs to.
    pub fn thread_id(&self) -> &str {
        &self.lock.thread_id
    }

    /// The state adapter, for reads and for writes that need no fence.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The thread's lock as this turn holds it; its fence orders this turn's writes.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Whether the thread was subscribed when the lock was taken.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed
    }

    /// Whether the heartbeat found the lock gone: another instance may be handling the
    /// thread. Stop before any side effect that must not happen twice.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The lock TTL the dispatcher handles under.
    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// The thread's state (the value at [`Dispatcher::thread_state`]'s key), as read under
    /// this lock: by the admit, in the same round trip, or for a queued message the value the
    /// previous turn left. `None` if the key is missing or no thread-state key is configured.
    pub fn thread_state(&self) -> Option<&[u8]> {
        self.thread_state.as_deref()
    }

    /// Sets the thread's state to `value` (with `ttl`, `None` for no expiry) when the turn
    /// ends: the dispatcher stores it under this turn's fence in the same step as the queue
    /// handoff ([`Dispatch::release_or_next_with`]), so a message costs no round trip for it.
    /// The last call of a turn wins; a turn that loses its lock stores nothing. Fails if no
    /// thread-state key is configured ([`Dispatcher::thread_state`]).
    pub fn set_thread_state(&self, value: impl Into<Vec<u8>>, ttl: Option<Duration>) -> Result<()> {
        if !self.has_thread_state {
            return Err(Error::invalid_input(
                "set_thread_state needs a thread-state key: configure Dispatcher::thread_state",
            )
            .context(self.state.backend_name(), Operation::SetFenced));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending = Some((value.into(), ttl));
        Ok(())
    }

    /// Writes thread state under this turn's fence ([`Dispatch::set_fenced`]): refused with
    /// [`FencedWrite::Stale`] once a later holder of the thread's lock has written the key,
    /// so a turn that was paused past its lock cannot overwrite its successor's state.
    pub async fn set_fenced(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        self.state.set_fenced(&self.lock, key, value, ttl).await
    }
}

/// Runs a bot's per-message protocol on any [`StateAdapter`]: dedupe and admit in one call,
/// the handler under the thread's lock with the heartbeat, then the thread's queue handed
/// over with [`Dispatch::release_or_next`] until the lock is released, so no message queued
/// behind the holder is stranded.
///
/// Defaults are upstream's: lock 30 s, dedupe 10 min, busy threads drop the message
/// ([`BusyStrategy::queue`]: at most 10 entries, 90 s each).
///
/// ```
/// use std::sync::Arc;
/// use chat_state_core::{BusyStrategy, Dispatched, Dispatcher};
/// # async fn demo(state: Arc<dyn chat_state_core::StateAdapter>) -> chat_state_core::Result<()> {
/// let bot = Dispatcher::new(state, "slack", |turn, message| async move {
///     let reply = format!("you said {}", message["text"]);
///     // Thread state is written under the lock's fence: a paused turn cannot clobber it.
///     turn.set_fenced(&format!("thread-state:{}", turn.thread_id()), reply.as_bytes(), None)
///         .await?;
///     Ok(())
/// })
/// .busy(BusyStrategy::queue());
///
/// let message = serde_json::json!({"text": "hi"});
/// match bot.dispatch("slack:C1:1700000000.000100", "m-1", message).await? {
///     Dispatched::Handled { failures, .. } => assert!(failures.is_empty()),
///     other => println!("not handled here: {other:?}"),
/// }
/// # Ok(()) }
/// ```
pub struct Dispatcher<A: ?Sized, H> {
    state: Arc<A>,
    platform: String,
    handler: H,
    thread_state: Option<ThreadStateKey>,
    lock_ttl: Duration,
    dedupe_ttl: Duration,
    busy: BusyStrategy,
    clock: SharedClock,
}

/// Names a thread's state key from its thread id.
type ThreadStateKey = Box<dyn Fn(&str) -> String + Send + Sync>;

impl<A: ?Sized, H> std::fmt::Debug for Dispatcher<A, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("platform", &self.platform)
            .field("lock_ttl", &self.lock_ttl)
            .field("dedupe_ttl", &self.dedupe_ttl)
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

impl<A, H, Fut> Dispatcher<A, H>
where
    A: StateAdapter + ?Sized,
    H: Fn(Turn<A>, serde_json::Value) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send,
{
    /// A dispatcher for messages of `platform` (the Chat SDK adapter name: dedupe keys are
    /// `dedupe:<platform>:<message id>`, as TypeScript bots write them), running `handler`
    /// on each message it admits.
    pub fn new(state: Arc<A>, platform: impl Into<String>, handler: H) -> Self {
        Self {
            state,
            platform: platform.into(),
            handler,
            thread_state: None,
            lock_ttl: DEFAULT_LOCK_TTL,
            dedupe_ttl: DEFAULT_DEDUPE_TTL,
            busy: BusyStrategy::Drop,
            clock: system_clock(),
        }
    }

    /// Handles each thread under a lock of `ttl` (extended every `ttl / 3` while the handler
    /// runs).
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Remembers each message id as seen for `ttl`.
    pub fn dedupe_ttl(mut self, ttl: Duration) -> Self {
        self.dedupe_ttl = ttl;
        self
    }

    /// The cache key of each thread's state (`key(thread_id)`): read by the admit in the
    /// same round trip ([`Turn::thread_state`]) and written with the handoff
    /// ([`Turn::set_thread_state`]), so a message's state costs no round trip of its own.
    pub fn thread_state(mut self, key: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.thread_state = Some(Box::new(key));
        self
    }

    /// What to do with a message whose thread is busy.
    pub fn busy(mut self, strategy: BusyStrategy) -> Self {
        self.busy = strategy;
        self
    }

    /// The clock queue entries are stamped with: the backend's (a manual clock in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The state adapter.
    pub fn state(&self) -> &Arc<A> {
        &self.state
    }

    /// Handles one delivery of message `message_id` in `thread_id`: at most once per message
    /// id while its dedupe key lives, never while another instance handles the thread.
    ///
    /// An error means the delivery's fate is not known (the admit failed, or handing the
    /// queue over failed past the lock's lifetime); messages already queued are handed on by
    /// the thread's next holder.
    pub async fn dispatch(
        &self,
        thread_id: &str,
        message_id: &str,
        message: serde_json::Value,
    ) -> Result<Dispatched> {
        let dedupe_key = format!("dedupe:{}:{message_id}", self.platform);
        let state_key = self.thread_state.as_ref().map(|key| key(thread_id));
        let admit = Admit::new(thread_id, &dedupe_key)
            .lock_ttl(self.lock_ttl)
            .dedupe_ttl(self.dedupe_ttl);
        let admit = match &state_key {
            Some(key) => admit.read(key),
            None => admit,
        };
        // The message goes into the queue entry only with the queue strategy; it is taken
        // back out if the message is admitted, so it is never cloned.
        let (mut admit, kept) = match self.busy {
            BusyStrategy::Drop => (admit, Some(message)),
            BusyStrategy::Queue {
                max_size,
                entry_lifetime,
            } => (
                admit.queue_when_busy(
                    QueueEntry::new(message, self.clock.now_ms(), entry_lifetime),
                    max_size,
                ),
                None,
            ),
        };
        let (lock, subscribed, read, first) = match self.state.admit(&admit).await? {
            Admission::Duplicate => return Ok(Dispatched::Duplicate),
            Admission::Dropped => return Ok(Dispatched::Dropped),
            Admission::Queued { depth } => return Ok(Dispatched::Queued { depth }),
            Admission::Admitted {
                lock,
                subscribed,
                read,
            } => {
                let message = kept.or_else(|| {
                    match std::mem::replace(&mut admit.when_busy, WhenBusy::Drop) {
                        WhenBusy::Queue { entry, .. } => Some(entry.message),
                        WhenBusy::Drop => None,
                    }
                });
                (lock, subscribed, read, message)
            }
            // The message is in the queue: it comes back from release_or_next.
            Admission::HoldingQueue {
                lock,
                subscribed,
                read,
            } => (lock, subscribed, read, None),
        };
        let held = Held {
            lock,
            subscribed,
            state_key,
            thread_state: read,
        };
        self.hold(held, first).await
    }

    /// Runs the handler on `first` (if any) and on every entry the queue hands over, until
    /// the lock is released or lost.
    async fn hold(&self, held: Held, mut next: Option<serde_json::Value>) -> Result<Dispatched> {
        let Held {
            mut lock,
            subscribed,
            state_key,
            mut thread_state,
        } = held;
        let mut handled = 0;
        let mut from_queue = 0;
        let mut failures = Vec::new();
        let pending: PendingWrite = Arc::default();
        loop {
            if let Some(message) = next.take() {
                let lost = Arc::new(AtomicBool::new(false));
                let turn = Turn {
                    state: self.state.clone(),
                    lock: lock.clone(),
                    subscribed,
                    lost: lost.clone(),
                    lock_ttl: self.lock_ttl,
                    thread_state: thread_state.clone(),
                    has_thread_state: state_key.is_some(),
                    pending: pending.clone(),
                };
                let work = (self.handler)(turn, message);
                let outcome =
                    under_heartbeat(&*self.state, &lock, self.lock_ttl, &lost, work).await;
                handled += 1;
                if let Err(e) = outcome {
                    failures.push(e);
                }
                if lost.load(Ordering::SeqCst) {
                    // Not the holder any more: the queue is the new holder's to hand out.
                    return Ok(Dispatched::Handled {
                        handled,
                        from_queue,
                        failures,
                        ownership_lost: true,
                    });
                }
            }
            let write = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
            let handoff = match (write, &state_key) {
                (Some((value, ttl)), Some(key)) => {
                    let write = FencedSet {
                        key,
                        value: &value,
                        ttl,
                    };
                    let handoff = self.release_or_next(&mut lock, Some(write)).await?;
                    // What the next turn would read: this turn's write, stored with the
                    // handoff under the lock the next turn runs under.
                    thread_state = Some(value);
                    handoff
                }
                _ => self.release_or_next(&mut lock, None).await?,
            };
            match handoff {
                Handoff::Next(entry) => {
                    from_queue += 1;
                    next = Some(entry.message);
                }
                Handoff::Released => {
                    return Ok(Dispatched::Handled {
                        handled,
                        from_queue,
                        failures,
                        ownership_lost: false,
                    });
                }
                Handoff::NotHolder => {
                    return Ok(Dispatched::Handled {
                        handled,
                        from_queue,
                        failures,
                        ownership_lost: true,
                    });
                }
            }
        }
    }

    /// [`Dispatch::release_or_next`], retried on transient errors while the lock lives: a
    /// retry after a lost answer finds either the next entry or, if the lost answer was a
    /// release, `NotHolder`, so nothing is handed out twice.
    async fn release_or_next(
        &self,
        lock: &mut Lock,
        write: Option<FencedSet<'_>>,
    ) -> Result<Handoff> {
        let mut pause = Duration::from_millis(10);
        loop {
            let outcome = match write {
                Some(write) => {
                    self.state
                        .release_or_next_with(lock, self.lock_ttl, write)
                        .await
                }
                None => self.state.release_or_next(lock, self.lock_ttl).await,
            };
            match outcome {
                Err(e)
                    if e.is_retryable()
                        && self.clock.now_ms() + 2 * ms(pause) < lock.expires_at =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }
}

/// The lock a dispatch holds, and what it knows of the thread.
struct Held {
    lock: Lock,
    subscribed: bool,
    state_key: Option<String>,
    thread_state: Option<Vec<u8>>,
}

fn ms(d: Duration) -> u64 {
    crate::validate::duration_ms(d)
}
