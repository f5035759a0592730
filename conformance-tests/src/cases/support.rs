//! Helpers shared by the cases: TTL choices that hold on a loaded machine, expiry steps that
//! use exact boundaries on a manual clock, and checks for invalid-input errors.

use std::fmt::Debug;
use std::time::Duration;

use chat_state_core::{Error, ErrorKind, Operation, Result};

use crate::{CaseResult, Failure, Harness};

/// A TTL that never runs out during a case, used wherever a case needs something to stay
/// live on the wall clock (contract cases only assert "still live" with TTLs this long).
pub(crate) const LONG_TTL: Duration = Duration::from_secs(60);

/// Lifetime of queue entries that must stay live for the whole case.
pub(crate) const LONG_LIFETIME: Duration = Duration::from_secs(600);

/// One millisecond: the resolution of every stored timestamp.
pub(crate) const MS: Duration = Duration::from_millis(1);

/// A TTL for cases that watch something expire. With a manual clock any value works (time
/// moves exactly); on the wall clock it is short enough to keep the case under a second of
/// sleeping, and [`expire`] waits twice as long so a loaded machine cannot make it flaky.
pub(crate) fn short_ttl(h: &Harness) -> Duration {
    if h.time.is_manual() {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(300)
    }
}

/// Manual clock: moves time to 1 ms before `ttl` has passed since the write, and returns
/// `true` so the caller checks the item is still live at the last possible instant.
/// Wall clock: does nothing and returns `false` (a short TTL may already have run out on a
/// loaded machine, so "still live" is never asserted for it).
pub(crate) async fn just_before_expiry(h: &Harness, ttl: Duration) -> bool {
    if h.time.is_manual() {
        h.time.advance(ttl - MS).await;
        true
    } else {
        false
    }
}

/// Moves time until `ttl` has certainly passed since the write: on a manual clock exactly to
/// the expiry instant (1 ms more if [`just_before_expiry`] already ran, so `now ==
/// expires_at`, which rule 1 counts as expired), on the wall clock by sleeping 2 × `ttl` plus
/// a margin.
pub(crate) async fn expire(h: &Harness, ttl: Duration, after_just_before: bool) {
    if h.time.is_manual() {
        h.time
            .advance(if after_just_before { MS } else { ttl })
            .await;
    } else {
        h.time.advance(ttl * 2 + Duration::from_millis(100)).await;
    }
}

/// Whether a "still live" check right after a write with `ttl` is safe: always with a manual
/// clock; on the wall clock only if less than half the TTL has passed since `start_ms`.
pub(crate) fn still_fresh(h: &Harness, start_ms: u64, ttl: Duration) -> bool {
    h.time.is_manual() || h.time.now_ms().saturating_sub(start_ms) < (ttl.as_millis() as u64) / 2
}

/// Checks that `result` is an [`ErrorKind::InvalidInput`] error attributed to this backend
/// and `op` (contract rule 9: the same error on every backend).
pub(crate) fn rejected<T: Debug>(
    h: &Harness,
    result: Result<T>,
    op: Operation,
    what: &str,
) -> CaseResult {
    check_error(h, result, ErrorKind::InvalidInput, op, what)
}

/// Checks that `result` is an error of `kind` that names this backend and `op`.
pub(crate) fn check_error<T: Debug>(
    h: &Harness,
    result: Result<T>,
    kind: ErrorKind,
    op: Operation,
    what: &str,
) -> CaseResult {
    match result {
        Ok(v) => Err(Failure::new(format!(
            "{op} with {what}: expected a {kind:?} error, got Ok({v:?})"
        ))),
        Err(e) => check_error_details(h, &e, kind, op, what),
    }
}

/// [`check_error`] for an error the case still needs afterwards.
pub(crate) fn check_error_details(
    h: &Harness,
    e: &Error,
    kind: ErrorKind,
    op: Operation,
    what: &str,
) -> CaseResult {
    if e.kind() != kind {
        return Err(Failure::new(format!(
            "{op} with {what}: expected a {kind:?} error, got {:?}: {e}",
            e.kind()
        )));
    }
    if e.operation() != Some(op) {
        return Err(Failure::new(format!(
            "{op} with {what}: the error names operation {:?}, not {op}: {e}",
            e.operation()
        )));
    }
    if e.backend() != h.adapter.backend_name() {
        return Err(Failure::new(format!(
            "{op} with {what}: the error names backend {:?}, not {:?}: {e}",
            e.backend(),
            h.adapter.backend_name()
        )));
    }
    if e.message().is_empty() {
        return Err(Failure::new(format!(
            "{op} with {what}: the error does not say what was wrong: {e}"
        )));
    }
    Ok(())
}

/// Checks that nothing is stored under `key` in any namespace: no cache value, an empty list,
/// an empty queue, no subscription, and a free lock (taken and released again).
pub(crate) async fn nothing_stored(h: &Harness, key: &str) -> CaseResult {
    let a = &h.adapter;
    if let Some(v) = a.get(key).await? {
        return Err(Failure::new(format!(
            "cache key {key:?} holds {} bytes after a rejected call",
            v.len()
        )));
    }
    let list = a.get_list(key).await?;
    if !list.is_empty() {
        return Err(Failure::new(format!(
            "list {key:?} holds {} items after a rejected call",
            list.len()
        )));
    }
    let depth = a.queue_depth(key).await?;
    if depth != 0 {
        return Err(Failure::new(format!(
            "queue {key:?} has depth {depth} after a rejected call"
        )));
    }
    if a.is_subscribed(key).await? {
        return Err(Failure::new(format!(
            "thread {key:?} is subscribed after a rejected call"
        )));
    }
    match a.acquire_lock(key, LONG_TTL).await? {
        Some(lock) => a.release_lock(&lock).await?,
        None => {
            return Err(Failure::new(format!(
                "lock {key:?} is held after a rejected call"
            )));
        }
    }
    Ok(())
}
