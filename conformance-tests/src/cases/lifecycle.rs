//! Lifecycle: connect, close, and (for durable backends) reopen.

use chat_state_core::{Admit, ErrorKind, FencedSet, ListOptions, Lock, Operation, QueueEntry};
use serde_json::json;

use super::support::{LONG_LIFETIME, LONG_TTL, check_error, rejected};
use crate::{CaseResult, Failure, Harness, ensure, ensure_eq};

/// Rule 13: after `close`, every operation (and `connect`) fails with `ErrorKind::Closed`,
/// attributed to the backend and the operation.
pub async fn lifecycle_every_operation_fails_after_close(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    // Something held and stored first, so "closed" cannot be confused with "missing".
    let lock = a
        .acquire_lock("t", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("fresh lock was not acquired"))?;
    a.set("k", b"v", None).await?;
    a.close().await?;

    let closed = ErrorKind::Closed;
    let entry = QueueEntry::new(json!({"m": 1}), h.time.now_ms(), LONG_LIFETIME);
    check_error(
        h,
        a.connect().await,
        closed,
        Operation::Connect,
        "a closed adapter",
    )?;
    check_error(
        h,
        a.subscribe("t").await,
        closed,
        Operation::Subscribe,
        "closed",
    )?;
    check_error(
        h,
        a.unsubscribe("t").await,
        closed,
        Operation::Unsubscribe,
        "closed",
    )?;
    check_error(
        h,
        a.is_subscribed("t").await,
        closed,
        Operation::IsSubscribed,
        "closed",
    )?;
    check_error(
        h,
        a.acquire_lock("t2", LONG_TTL).await,
        closed,
        Operation::AcquireLock,
        "closed",
    )?;
    check_error(
        h,
        a.release_lock(&lock).await,
        closed,
        Operation::ReleaseLock,
        "closed",
    )?;
    check_error(
        h,
        a.extend_lock(&lock, LONG_TTL).await,
        closed,
        Operation::ExtendLock,
        "closed",
    )?;
    check_error(
        h,
        a.force_release_lock("t").await,
        closed,
        Operation::ForceReleaseLock,
        "closed",
    )?;
    check_error(h, a.get("k").await, closed, Operation::Get, "closed")?;
    check_error(
        h,
        a.set("k", b"v", None).await,
        closed,
        Operation::Set,
        "closed",
    )?;
    check_error(
        h,
        a.set_if_not_exists("k2", b"v", None).await,
        closed,
        Operation::SetIfNotExists,
        "closed",
    )?;
    check_error(h, a.delete("k").await, closed, Operation::Delete, "closed")?;
    check_error(
        h,
        a.append_to_list("l", b"v", ListOptions::new()).await,
        closed,
        Operation::AppendToList,
        "closed",
    )?;
    check_error(
        h,
        a.get_list("l").await,
        closed,
        Operation::GetList,
        "closed",
    )?;
    check_error(
        h,
        a.enqueue("q", entry, 10).await,
        closed,
        Operation::Enqueue,
        "closed",
    )?;
    check_error(
        h,
        a.dequeue("q").await,
        closed,
        Operation::Dequeue,
        "closed",
    )?;
    check_error(
        h,
        a.queue_depth("q").await,
        closed,
        Operation::QueueDepth,
        "closed",
    )?;
    check_error(
        h,
        a.admit(&Admit::new("t3", "m")).await,
        closed,
        Operation::Admit,
        "closed",
    )?;
    check_error(
        h,
        a.release_or_next(&mut lock.clone(), LONG_TTL).await,
        closed,
        Operation::ReleaseOrNext,
        "closed",
    )?;
    check_error(
        h,
        a.set_fenced(&lock, "k", b"v", None).await,
        closed,
        Operation::SetFenced,
        "closed",
    )?;
    check_error(
        h,
        a.release_or_next_with(
            &mut lock.clone(),
            LONG_TTL,
            FencedSet {
                key: "k",
                value: b"v",
                ttl: None,
            },
        )
        .await,
        closed,
        Operation::ReleaseOrNext,
        "closed",
    )?;
    Ok(())
}

/// Rule 13: closing twice is fine, and the adapter stays closed.
pub async fn lifecycle_close_twice_is_fine(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.close().await?;
    a.close().await?;
    crate::ensure_err_kind!(a.get("k").await, ErrorKind::Closed, "get after two closes");
    Ok(())
}

/// `connect` on a connected adapter is idempotent and keeps the data.
pub async fn lifecycle_connect_is_idempotent(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.set("k", b"v", None).await?;
    a.connect().await?;
    a.connect().await?;
    ensure_eq!(
        a.get("k").await?,
        Some(b"v".to_vec()),
        "value after connect"
    );
    Ok(())
}

/// Rule 9 before rule 13: input is validated before anything else, so a closed adapter still
/// reports an invalid key as `InvalidInput` (the error a caller must fix first), on every
/// operation, and so for the other inputs (TTL, `max_length`, `max_size`).
pub async fn lifecycle_invalid_input_reported_before_closed(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.close().await?;
    super::validation::every_operation_rejects(h, "", "an empty key after close").await?;
    rejected(
        h,
        a.acquire_lock("t", std::time::Duration::ZERO).await,
        Operation::AcquireLock,
        "a zero TTL after close",
    )?;
    rejected(
        h,
        a.set("k", b"v", Some(std::time::Duration::ZERO)).await,
        Operation::Set,
        "a zero TTL after close",
    )?;
    rejected(
        h,
        a.append_to_list("l", b"v", ListOptions::new().max_length(0))
            .await,
        Operation::AppendToList,
        "max_length 0 after close",
    )?;
    let entry = QueueEntry::new(json!({"m": 1}), h.time.now_ms(), LONG_LIFETIME);
    rejected(
        h,
        a.enqueue("q", entry, 0).await,
        Operation::Enqueue,
        "max_size 0 after close",
    )?;
    Ok(())
}

/// Section 3 (lifecycle): a durable backend reopened on the same storage keeps every kind of
/// data, and fences keep increasing across the restart (rule 11). Skipped when the harness
/// has no reopen hook (non-durable backends).
pub async fn lifecycle_reopen_keeps_data(h: &Harness) -> CaseResult {
    let Some(reopen) = h.reopen.clone() else {
        return Err(Failure::skip(
            "the harness has no reopen hook (not a durable backend)",
        ));
    };
    let a = &h.adapter;
    let lock = a
        .acquire_lock("held", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("fresh lock was not acquired"))?;
    let released = a
        .acquire_lock("released", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("fresh lock was not acquired"))?;
    a.release_lock(&released).await?;
    a.subscribe("thread").await?;
    a.set("key", b"value", None).await?;
    a.append_to_list("list", b"one", ListOptions::new()).await?;
    a.append_to_list("list", b"two", ListOptions::new()).await?;
    let entry = QueueEntry::new(json!({"text": "queued"}), h.time.now_ms(), LONG_LIFETIME);
    a.enqueue("queue", entry.clone(), 10).await?;
    a.close().await?;

    let b = reopen().await?;
    let result = check_reopened(&*b, &lock, &released, &entry).await;
    let _ = b.close().await;
    result
}

async fn check_reopened(
    b: &dyn chat_state_core::StateAdapter,
    lock: &Lock,
    released: &Lock,
    entry: &QueueEntry,
) -> CaseResult {
    ensure!(
        b.is_subscribed("thread").await?,
        "subscription lost on reopen"
    );
    ensure_eq!(
        b.get("key").await?,
        Some(b"value".to_vec()),
        "cache value after reopen"
    );
    ensure_eq!(
        b.get_list("list").await?,
        vec![b"one".to_vec(), b"two".to_vec()],
        "list after reopen"
    );
    ensure_eq!(
        b.dequeue("queue").await?,
        Some(entry.clone()),
        "queue entry after reopen"
    );
    ensure!(
        b.acquire_lock("held", LONG_TTL).await?.is_none(),
        "a held lock was lost on reopen"
    );
    ensure!(
        b.extend_lock(lock, LONG_TTL).await?,
        "the holder could not extend its lock after reopen"
    );
    let again = b
        .acquire_lock("released", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("a released lock could not be taken after reopen"))?;
    ensure!(
        again.fence > released.fence,
        "fence went from {} to {} across a restart",
        released.fence,
        again.fence
    );
    Ok(())
}
