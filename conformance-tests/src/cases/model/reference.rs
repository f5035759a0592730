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
}

/// Live iff `now < expires_at` (rule 1, and the same boundary for cache and lists).
fn live(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_none_or(|at| now < at)
}

impl Model {
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
            Step::Acquire { id, ttl_ms } => match self.locks[id] {
                Some((_, at)) if now < at => Outcome::Acquired(false),
                _ => {
                    self.locks[id] = Some((self.handles.len(), now + ttl_ms));
                    self.handles.push(id);
                    Outcome::Acquired(true)
                }
            },
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
            } => {
                let number = self.entries;
                self.entries += 1;
                let queue = &mut self.queues[thread];
                // Dead entries are gone: they take no slot and are never counted; an
                // entry dead on arrival is accepted but never stored.
                queue.retain(|(_, at)| now < *at);
                let expires_at = now + lifetime_ms;
                if now < expires_at {
                    queue.push((number, expires_at));
                }
                let excess = queue.len().saturating_sub(max_size);
                queue.drain(..excess);
                Outcome::Depth(queue.len())
            }
            Step::Dequeue(t) => {
                let queue = &mut self.queues[t];
                queue.retain(|(_, at)| now < *at);
                Outcome::Entry(if queue.is_empty() {
                    None
                } else {
                    Some(queue.remove(0).0)
                })
            }
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
