//! The `with_lock` guard (native only: it needs tokio's timer for the heartbeat) run against
//! the backend: work runs under the lock, a heartbeat extends it at ttl/3, it is always
//! released, and lost ownership is reported.

use std::time::Duration;

use chat_state_core::{LockRun, with_lock};

use super::support::LONG_TTL;
use crate::{CaseResult, Failure, Harness, ensure, ensure_eq};

/// The guard runs the work, returns its value, and releases the lock afterwards.
pub async fn lock_guard_runs_work_and_releases(h: &Harness) -> CaseResult {
    let a = h.adapter.clone();
    let run = with_lock(&*h.adapter, "t", LONG_TTL, |watch| async move {
        // While the work runs, the lock is held.
        let held = a.acquire_lock("t", LONG_TTL).await.map(|l| l.is_none());
        (held, watch.lock().clone())
    })
    .await?;
    match run {
        LockRun::Busy => Err(Failure::new("a free lock was reported busy")),
        LockRun::Ran {
            value: (held, seen),
            lock,
            ownership_lost,
        } => {
            ensure!(held?, "the lock was not held while the work ran");
            ensure_eq!(seen, lock.clone(), "the watch shows the acquired lock");
            ensure!(!ownership_lost, "ownership reported lost without cause");
            ensure!(
                h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
                "the lock was not released after the work"
            );
            Ok(())
        }
    }
}

/// The guard reports `Busy` on a held lock and does not run the work.
pub async fn lock_guard_busy_when_held(h: &Harness) -> CaseResult {
    let holder = h
        .adapter
        .acquire_lock("t", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("fresh lock was not acquired"))?;
    let run = with_lock(&*h.adapter, "t", LONG_TTL, |_| async { "ran" }).await?;
    ensure!(
        matches!(run, LockRun::Busy),
        "work ran on a held lock: {run:?}"
    );
    ensure!(
        h.adapter.extend_lock(&holder, LONG_TTL).await?,
        "the holder lost its lock to a busy guard"
    );
    Ok(())
}

/// The heartbeat keeps the lock past its TTL while the work runs; if it ever could not, the
/// guard must say so (wall clock only: the heartbeat runs on tokio's timer, which a manual
/// backend clock does not follow).
pub async fn lock_guard_heartbeat_keeps_lock(h: &Harness) -> CaseResult {
    if h.time.is_manual() {
        return Err(Failure::skip(
            "the heartbeat runs on the wall clock; this needs a backend on the wall clock",
        ));
    }
    let ttl = Duration::from_millis(900);
    let a = h.adapter.clone();
    let run = with_lock(&*h.adapter, "t", ttl, |watch| async move {
        tokio::time::sleep(ttl * 2).await;
        let taken = a.acquire_lock("t", LONG_TTL).await.map(|l| l.is_some());
        (taken, watch.is_lost())
    })
    .await?;
    match run {
        LockRun::Busy => Err(Failure::new("a free lock was reported busy")),
        LockRun::Ran {
            value: (taken, lost_in_work),
            ownership_lost,
            ..
        } => {
            let taken = taken?;
            ensure!(
                !taken || lost_in_work || ownership_lost,
                "another caller took the lock after 2 × TTL while the guard ran and the guard \
                 did not report lost ownership (the heartbeat did not extend it)"
            );
            Ok(())
        }
    }
}

/// When another caller takes over, the heartbeat's extend fails, the watch turns lost, the
/// result says `ownership_lost`, and the final release leaves the new holder's lock.
pub async fn lock_guard_reports_lost_ownership(h: &Harness) -> CaseResult {
    let ttl = Duration::from_millis(300);
    let a = h.adapter.clone();
    let run = with_lock(&*h.adapter, "t", ttl, |watch| async move {
        a.force_release_lock("t").await?;
        let thief = a
            .acquire_lock("t", LONG_TTL)
            .await?
            .ok_or_else(|| Failure::new("the takeover did not get the lock"))?;
        // The heartbeat runs every ttl/3 = 100 ms; give it plenty of time on a loaded machine.
        for _ in 0..150 {
            if watch.is_lost() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, Failure>((thief, watch.is_lost()))
    })
    .await?;
    match run {
        LockRun::Busy => Err(Failure::new("a free lock was reported busy")),
        LockRun::Ran {
            value,
            ownership_lost,
            ..
        } => {
            let (thief, seen_lost) = value?;
            ensure!(seen_lost, "the watch never reported the takeover");
            ensure!(ownership_lost, "the result did not report lost ownership");
            ensure!(
                h.adapter.extend_lock(&thief, LONG_TTL).await?,
                "the guard's release freed the new holder's lock"
            );
            Ok(())
        }
    }
}
