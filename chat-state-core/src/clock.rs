//! Wall-clock time, injectable so tests can move time instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A source of Unix time in milliseconds.
///
/// Backends that keep expiry themselves (memory, SQLite, the Durable Object) read time only
/// through this trait, so tests can drive it with a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[cfg(not(target_arch = "wasm32"))]
    fn now_ms(&self) -> u64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // A clock set before 1970 is a broken machine; treat it as the epoch rather than panic.
            .unwrap_or_default();
        // Not `as_millis`: its u128 arithmetic costs more than the clock read on every call.
        since_epoch
            .as_secs()
            .saturating_mul(1_000)
            .saturating_add(u64::from(since_epoch.subsec_millis()))
    }

    #[cfg(target_arch = "wasm32")]
    fn now_ms(&self) -> u64 {
        // std::time::SystemTime panics on wasm32-unknown-unknown: JavaScript's `Date.now()`
        // is the wall clock there (in a Worker it is the request's time, frozen while the
        // isolate computes, which is exactly when expiry may not move anyway).
        let now = js_sys::Date::now();
        if now.is_finite() && now > 0.0 {
            now as u64
        } else {
            0
        }
    }
}

/// A shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The default clock: [`SystemClock`] behind an `Arc`.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use chat_state_core::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_millis(250));
/// assert_eq!(clock.now_ms(), 1_250);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    /// A clock starting at the current system time, so stored timestamps look realistic.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_ms())
    }

    /// Moves time forward by `by` (rounded up to whole milliseconds).
    pub fn advance(&self, by: Duration) {
        self.now_ms
            .fetch_add(crate::validate::duration_ms(by), Ordering::SeqCst);
    }

    /// Sets the time, forwards or backwards (backwards models a clock step).
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
