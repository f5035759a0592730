//! The reference model: the contract, operation by operation, as a few lines each, and the
//! steps it is driven with.

/// One call of the sequence. Indexes name entries of [`NAMES`]; `handle` is the n-th lock
/// granted in this sequence.
#[derive(Clone, Debug)]
pub(super) enum Step {
    Subscribe(usize),
    Unsubscribe(usize),
    IsSubscribed(usize),
    Acquire {
        id: usize,
        ttl_ms: u64,
    },
    Release {
        handle: usize,
    },
    Extend {
        handle: usize,
        ttl_ms: u64,
    },
    /// Release with a token the backend never issued.
    ReleaseForged(usize),
    /// Extend with a token the backend never issued.
    ExtendForged(usize),
    ForceRelease(usize),
    Get(usize),
    Set {
        key: usize,
        value: u8,
        ttl_ms: Option<u64>,
    },
    SetIfNotExists {
        key: usize,
        value: u8,
        ttl_ms: Option<u64>,
    },
    Delete(usize),
    Append {
        key: usize,
        value: u8,
        max_length: Option<usize>,
        ttl_ms: Option<u64>,
    },
    GetList(usize),
    Enqueue {
        thread: usize,
        lifetime_ms: u64,
        max_size: usize,
    },
    Dequeue(usize),
    QueueDepth(usize),
    /// `admit` of message `message` (its dedupe key is `dedupe:<name>`) on `thread`, queued
    /// with `lifetime_ms` and `max_size` when busy, or dropped (`queue: None`).
    Admit {
        thread: usize,
        message: usize,
        dedupe_ms: u64,
        lock_ms: u64,
        queue: Option<(u64, usize)>,
        /// A cache key read with the admission.
        read: Option<usize>,
    },
    /// `release_or_next`, or with `write` (key, value, TTL) `release_or_next_with`.
    ReleaseOrNext {
        handle: usize,
        ttl_ms: u64,
        write: Option<(usize, u8, Option<u64>)>,
    },
    SetFenced {
        handle: usize,
        key: usize,
        value: u8,
        ttl_ms: Option<u64>,
    },
    /// Let this much time pass (manual clock only).
    Advance(u64),
    Invalid(Invalid),
}

/// Calls the contract forbids; each must fail with `InvalidInput` and change nothing.
#[derive(Clone, Copy, Debug)]
pub(super) enum Invalid {
    GetEmptyKey,
    SubscribeNul,
    AcquireZeroTtl(usize),
    ExtendZeroTtl(usize),
    SetZeroTtl(usize),
    SetOversizedKey,
    AppendZeroMaxLength(usize),
    AppendZeroTtl(usize),
    EnqueueZeroMaxSize(usize),
}

/// What a call returned, in model terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Done,
    Bool(bool),
    /// `acquire_lock` granted (`true`) or refused the lock.
    Acquired(bool),
    Value(Option<u8>),
    List(Vec<u8>),
    Depth(usize),
    /// The dequeued entry's number (the n-th enqueued in this sequence).
    Entry(Option<usize>),
    Duplicate,
    Dropped,
    Queued(usize),
    /// Admitted: a new lock handle was granted; whether the thread is subscribed, and the
    /// read key's value.
    Admitted(bool, Option<u8>),
    /// `release_or_next` handed over this entry.
    Next(usize),
    Released,
    NotHolder,
    /// `set_fenced` stored (`true`) or refused as stale.
    Fenced(bool),
    InvalidInput,
}

/// The reference model: the contract, operation by operation, on relative time.
#[derive(Clone, Debug, Default)]
pub(super) struct Model {
    /// Milliseconds since the sequence started.
    pub(super) now: u64,
    subscribed: [bool; 3],
    /// Per lock id: the holding handle and its expiry.
    locks: [Option<(usize, u64)>; 3],
    /// Lock id of every granted handle, in grant order.
    pub(super) handles: Vec<usize>,
    /// Per key: value and expiry.
    cache: [Option<(u8, Option<u64>)>; 3],
    /// Per key: items and expiry.
    lists: [(Vec<u8>, Option<u64>); 3],
    /// Per thread: (entry number, expiry), oldest first.
    pub(super) queues: [Vec<(usize, u64)>; 3],
    /// Entries enqueued so far (the next entry's number).
    entries: usize,
    /// Per message: the dedupe claim's expiry.
    claims: [Option<u64>; 3],
    /// Per cache key: the fence record (lock id, the writing handle, expiry). Within one lock
    /// id, later handles carry higher fences, so handles compare as fences do.
    fences: [Option<(usize, usize, Option<u64>)>; 3],
}

/// Live iff `now < expires_at` (rule 1, and the same boundary for cache and lists).
fn live(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_none_or(|at| now < at)
}

impl Model {
    /// Rule 7's append: dead entries take no slot; one dead on arrival is not stored.
    fn enqueue(&mut self, thread: usize, lifetime_ms: u64, max_size: usize) -> usize {
        let number = self.number();
        self.push(thread, number, lifetime_ms, max_size)
    }

    /// The next entry's number: the driver numbers every entry it builds, queued or not.
    fn number(&mut self) -> usize {
        self.entries += 1;
        self.entries - 1
    }

    fn push(&mut self, thread: usize, number: usize, lifetime_ms: u64, max_size: usize) -> usize {
        let now = self.now;
        let queue = &mut self.queues[thread];
        queue.retain(|(_, at)| now < *at);
        let expires_at = now + lifetime_ms;
        if now < expires_at {
            queue.push((number, expires_at));
        }
        let excess = queue.len().saturating_sub(max_size);
        queue.drain(..excess);
        queue.len()
    }

    /// The oldest live entry of the thread's queue, removed.
    fn dequeue(&mut self, thread: usize) -> Option<usize> {
        let now = self.now;
        let queue = &mut self.queues[thread];
        queue.retain(|(_, at)| now < *at);
        (!queue.is_empty()).then(|| queue.remove(0).0)
    }

    /// Grants lock `id` for `ttl_ms` if it is free (a new handle); whether it did.
    fn acquire(&mut self, id: usize, ttl_ms: u64) -> bool {
        match self.locks[id] {
            Some((_, at)) if self.now < at => false,
            _ => {
                self.locks[id] = Some((self.handles.len(), self.now + ttl_ms));
                self.handles.push(id);
                true
            }
        }
    }

    /// Whether `handle` holds its lock now.
    fn holds(&self, handle: usize) -> bool {
        matches!(self.locks[self.handles[handle]], Some((h, at)) if h == handle && self.now < at)
    }

    /// `set_fenced` by `handle`: whether it was stored.
    fn fenced(&mut self, handle: usize, key: usize, value: u8, ttl_ms: Option<u64>) -> bool {
        let now = self.now;
        let id = self.handles[handle];
        let stale = matches!(
            self.fences[key],
            Some((record_id, writer, at)) if live(at, now) && record_id == id && writer > handle
        );
        if stale {
            return false;
        }
        let at = ttl_ms.map(|t| now + t);
        self.cache[key] = Some((value, at));
        self.fences[key] = Some((id, handle, at));
        true
    }

    /// Applies `step` and returns what the adapter must return.
    pub(super) fn apply(&mut self, step: &Step) -> Outcome {
        let now = self.now;
        match *step {
            Step::Subscribe(i) => {
                self.subscribed[i] = true;
                Outcome::Done
            }
            Step::Unsubscribe(i) => {
                self.subscribed[i] = false;
                Outcome::Done
            }
            Step::IsSubscribed(i) => Outcome::Bool(self.subscribed[i]),
            Step::Acquire { id, ttl_ms } => Outcome::Acquired(self.acquire(id, ttl_ms)),
            Step::Release { handle } => {
                let id = self.handles[handle];
                if matches!(self.locks[id], Some((h, _)) if h == handle) {
                    self.locks[id] = None;
                }
                Outcome::Done
            }
            Step::Extend { handle, ttl_ms } => {
                let id = self.handles[handle];
                match self.locks[id] {
                    Some((h, at)) if h == handle && now < at => {
                        self.locks[id] = Some((h, now + ttl_ms));
                        Outcome::Bool(true)
                    }
                    _ => Outcome::Bool(false),
                }
            }
            Step::ReleaseForged(_) => Outcome::Done,
            Step::ExtendForged(_) => Outcome::Bool(false),
            Step::ForceRelease(id) => {
                self.locks[id] = None;
                Outcome::Done
            }
            Step::Get(k) => Outcome::Value(
                self.cache[k]
                    .filter(|(_, at)| live(*at, now))
                    .map(|(v, _)| v),
            ),
            Step::Set { key, value, ttl_ms } => {
                self.cache[key] = Some((value, ttl_ms.map(|t| now + t)));
                Outcome::Done
            }
            Step::SetIfNotExists { key, value, ttl_ms } => match self.cache[key] {
                Some((_, at)) if live(at, now) => Outcome::Bool(false),
                _ => {
                    self.cache[key] = Some((value, ttl_ms.map(|t| now + t)));
                    Outcome::Bool(true)
                }
            },
            Step::Delete(k) => {
                self.cache[k] = None;
                Outcome::Done
            }
            Step::Append {
                key,
                value,
                max_length,
                ttl_ms,
            } => {
                let (items, expires_at) = &mut self.lists[key];
                if !live(*expires_at, now) {
                    // An expired list restarts empty, with no expiry unless this sets one.
                    items.clear();
                    *expires_at = None;
                }
                items.push(value);
                if let Some(max) = max_length {
                    let excess = items.len().saturating_sub(max);
                    items.drain(..excess);
                }
                if let Some(t) = ttl_ms {
                    *expires_at = Some(now + t);
                }
                Outcome::Done
            }
            Step::GetList(k) => {
                let (items, at) = &self.lists[k];
                Outcome::List(if live(*at, now) {
                    items.clone()
                } else {
                    Vec::new()
                })
            }
            Step::Enqueue {
                thread,
                lifetime_ms,
                max_size,
            } => Outcome::Depth(self.enqueue(thread, lifetime_ms, max_size)),
            Step::Dequeue(t) => Outcome::Entry(self.dequeue(t)),
            Step::Admit {
                thread,
                message,
                dedupe_ms,
                lock_ms,
                queue,
                read,
            } => {
                let number = queue.map(|_| self.number());
                if self.claims[message].is_some_and(|at| now < at) {
                    return Outcome::Duplicate;
                }
                self.claims[message] = Some(now + dedupe_ms);
                if self.acquire(thread, lock_ms) {
                    let value = read.and_then(|k| {
                        self.cache[k]
                            .filter(|(_, at)| live(*at, now))
                            .map(|(v, _)| v)
                    });
                    return Outcome::Admitted(self.subscribed[thread], value);
                }
                match (queue, number) {
                    (Some((lifetime_ms, max_size)), Some(number)) => {
                        Outcome::Queued(self.push(thread, number, lifetime_ms, max_size))
                    }
                    _ => Outcome::Dropped,
                }
            }
            Step::ReleaseOrNext {
                handle,
                ttl_ms,
                write,
            } => {
                // The write comes first, under set_fenced's rule, holder or not.
                if let Some((key, value, ttl)) = write
                    && !self.fenced(handle, key, value, ttl)
                {
                    return Outcome::NotHolder;
                }
                if !self.holds(handle) {
                    return Outcome::NotHolder;
                }
                let id = self.handles[handle];
                match self.dequeue(id) {
                    Some(number) => {
                        self.locks[id] = Some((handle, now + ttl_ms));
                        Outcome::Next(number)
                    }
                    None => {
                        self.locks[id] = None;
                        Outcome::Released
                    }
                }
            }
            Step::SetFenced {
                handle,
                key,
                value,
                ttl_ms,
            } => Outcome::Fenced(self.fenced(handle, key, value, ttl_ms)),
            Step::QueueDepth(t) => {
                Outcome::Depth(self.queues[t].iter().filter(|(_, at)| now < *at).count())
            }
            Step::Advance(ms) => {
                self.now += ms;
                Outcome::Done
            }
            Step::Invalid(_) => Outcome::InvalidInput,
        }
    }
}
