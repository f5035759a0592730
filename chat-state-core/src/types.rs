//! Values that cross the adapter boundary, in the upstream camelCase wire shape.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A held lock, returned by [`Locks::acquire_lock`](crate::Locks::acquire_lock).
///
/// Serializes as the upstream `{threadId, token, expiresAt}` plus our `fence`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lock {
    /// The lock id (usually a thread id, but any valid key: channel ids, `chat:callback:<token>`).
    pub thread_id: String,
    /// Proof of ownership: 128 random bits, hex encoded, unique per acquisition.
    pub token: String,
    /// Unix time in milliseconds until which the caller may assume it holds the lock.
    /// Computed from the clock read *before* the request was sent, so it never exceeds the
    /// backend's own expiry.
    pub expires_at: u64,
    /// Fencing number: strictly greater than every fence issued before for this lock id, so a
    /// protected resource can reject writes from a holder whose lock has since been taken over.
    #[serde(default)]
    pub fence: u64,
}

impl Lock {
    /// Whether the lock is still held at `now_ms` by the caller's own reckoning
    /// (`now < expires_at`, contract rule 1).
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at
    }
}

/// One entry of a per-thread queue.
///
/// Serializes as the upstream `{enqueuedAt, expiresAt, message}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueEntry {
    /// Unix time in milliseconds when the entry was enqueued.
    pub enqueued_at: u64,
    /// Unix time in milliseconds from which the entry is dead: never dequeued nor counted
    /// once `expires_at <= now`.
    pub expires_at: u64,
    /// The queued message: opaque JSON (upstream: the serialized chat message).
    pub message: serde_json::Value,
}

impl QueueEntry {
    /// An entry enqueued at `now_ms` that lives for `lifetime`. Saturates instead of wrapping.
    pub fn new(message: serde_json::Value, now_ms: u64, lifetime: Duration) -> Self {
        Self {
            enqueued_at: now_ms,
            expires_at: now_ms.saturating_add(crate::validate::duration_ms(lifetime)),
            message,
        }
    }

    /// Whether the entry is dead at `now_ms` (contract rule 7: `expires_at <= now`).
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_at <= now_ms
    }

    /// The entry as stored by every backend that keeps it as text: the upstream JSON
    /// `{"enqueuedAt":…,"expiresAt":…,"message":…}`, which TypeScript bots read too.
    ///
    /// An invalid-input error only if `message` cannot be written as JSON (a `Value` built by
    /// serde_json always can); backends add their name and the operation with
    /// [`Error::context`](crate::Error::context).
    pub fn to_json(&self) -> crate::Result<String> {
        serde_json::to_string(self).map_err(|e| {
            crate::Error::invalid_input(format!("queue entry is not serializable as JSON: {e}"))
        })
    }
}

/// Options for [`Lists::append_to_list`](crate::Lists::append_to_list).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListOptions {
    /// Keep only the newest `max_length` items. `Some(0)` is invalid input.
    pub max_length: Option<usize>,
    /// Set the whole list's expiry to now + TTL. `None` leaves the current expiry (or none)
    /// unchanged; `Some(Duration::ZERO)` is invalid input.
    pub ttl: Option<Duration>,
}

impl ListOptions {
    /// No trimming, no expiry change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Options from optional parts, as a wire format or a config carries them.
    pub fn from_parts(max_length: Option<usize>, ttl: Option<Duration>) -> Self {
        Self { max_length, ttl }
    }

    /// Keep only the newest `max_length` items.
    pub fn max_length(mut self, max_length: usize) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Set the list's expiry to now + `ttl` on append.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}
