//! Running work under a lock with a heartbeat, the way the Chat SDK handles a thread.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;

use crate::{Lock, Locks, Result};

/// Tells work running under [`with_lock`] whether it still owns the lock.
///
/// Check it before each side effect that must not happen twice (for example before draining
/// the next queued message); once it reports lost, another worker may hold the lock.
#[derive(Debug, Clone)]
pub struct LockWatch {
    lost: Arc<AtomicBool>,
    lock: Lock,
}

impl LockWatch {
    /// Whether a heartbeat found the lock gone (expired, force-released, or taken over).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The lock as acquired (its fence is what to hand to a fenced resource).
    pub fn lock(&self) -> &Lock {
        &self.lock
    }
}

/// What [`with_lock`] did.
#[derive(Debug)]
pub enum LockRun<T> {
    /// Someone else holds the lock; the work was not started.
    Busy,
    /// The work ran to completion.
    Ran {
        /// What the work returned.
        value: T,
        /// The lock the work ran under.
        lock: Lock,
        /// `true` if a heartbeat found the lock gone while the work ran: its effects may
        /// have overlapped with another holder's.
        ownership_lost: bool,
    },
}

/// Acquires `lock_id` for `ttl`, runs the future `work` builds, extends the lock every
/// `ttl / 3` while it runs (the upstream heartbeat), and always releases it afterwards.
///
/// If an extend reports the lock lost, the heartbeat stops, [`LockWatch::is_lost`] turns
/// true, and the result says `ownership_lost: true`; the work is not cancelled, so it can
/// finish its current step and stop on its own. A heartbeat that fails with a transient
/// error keeps trying until the lock would have expired.
///
/// ```
/// # use chat_state_core::{with_lock, LockRun, Locks};
/// # async fn demo(locks: &dyn Locks) -> chat_state_core::Result<()> {
/// match with_lock(locks, "thread-1", std::time::Duration::from_secs(30), |watch| async move {
///     // handle the message; stop early if watch.is_lost()
///     42
/// })
/// .await?
/// {
///     LockRun::Busy => { /* drop, or enqueue the message */ }
///     LockRun::Ran { value, ownership_lost, .. } => assert!(value == 42 || ownership_lost),
/// }
/// # Ok(()) }
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub async fn with_lock<L, F, Fut, T>(
    locks: &L,
    lock_id: &str,
    ttl: Duration,
    work: F,
) -> Result<LockRun<T>>
where
    L: Locks + ?Sized,
    F: FnOnce(LockWatch) -> Fut,
    Fut: Future<Output = T>,
{
    let Some(lock) = locks.acquire_lock(lock_id, ttl).await? else {
        return Ok(LockRun::Busy);
    };
    let lost = Arc::new(AtomicBool::new(false));
    let watch = LockWatch {
        lost: lost.clone(),
        lock: lock.clone(),
    };
    let value = under_heartbeat(locks, &lock, ttl, &lost, work(watch)).await;
    let ownership_lost = lost.load(Ordering::SeqCst);
    // Release even if ownership was lost: with a stale token this is a no-op by contract.
    locks.release_lock(&lock).await?;
    Ok(LockRun::Ran {
        value,
        lock,
        ownership_lost,
    })
}

/// Runs `work` while extending `lock` every `ttl / 3` (the upstream heartbeat), and returns
/// what `work` returned. If an extend reports the lock lost, or a transient failure lasts
/// until the lock would have run out, the heartbeat stops and `lost` turns true; the work is
/// not cancelled, so it can finish its current step and stop on its own. The one heartbeat of
/// [`with_lock`] and the [`Dispatcher`](crate::Dispatcher).
pub(crate) async fn under_heartbeat<L, T>(
    locks: &L,
    lock: &Lock,
    ttl: Duration,
    lost: &AtomicBool,
    work: impl Future<Output = T>,
) -> T
where
    L: Locks + ?Sized,
{
    let heartbeat = async {
        let period = (ttl / 3).max(Duration::from_millis(1));
        let mut deadline = tokio::time::Instant::now() + ttl;
        loop {
            tokio::time::sleep(period).await;
            match locks.extend_lock(lock, ttl).await {
                Ok(true) => deadline = tokio::time::Instant::now() + ttl,
                Ok(false) => break,
                // A blip is survivable as long as the lock has not run out meanwhile.
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + period < deadline => {}
                Err(_) => break,
            }
        }
        lost.store(true, Ordering::SeqCst);
    };
    let work = work.fuse();
    let heartbeat = heartbeat.fuse();
    futures::pin_mut!(work, heartbeat);
    loop {
        futures::select_biased! {
            value = work => break value,
            () = heartbeat => {}
        }
    }
}
