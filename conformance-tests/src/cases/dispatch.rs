//! Dispatch: `admit`, `release_or_next` and `set_fenced` (SEMANTICS.md, "Dispatch").

use std::time::Duration;

use chat_state_core::dispatch::DEDUPE_VALUE;
use chat_state_core::{
    Admission, Admit, FencedSet, FencedWrite, Handoff, Lock, Operation, QueueEntry,
};
use serde_json::json;

use super::support::{LONG_LIFETIME, LONG_TTL, expire, rejected, short_ttl};
use crate::{CaseResult, Failure, Harness, concurrently, ensure, ensure_eq};

fn entry(h: &Harness, n: u64) -> QueueEntry {
    QueueEntry::new(json!({"n": n}), h.time.now_ms(), LONG_LIFETIME)
}

fn number(e: &QueueEntry) -> Option<u64> {
    e.message.get("n").and_then(|n| n.as_u64())
}

/// Message `n` of `thread`, queued when the thread is busy.
fn queued<'a>(h: &Harness, thread: &'a str, key: &'a str, n: u64) -> Admit<'a> {
    Admit::new(thread, key)
        .lock_ttl(LONG_TTL)
        .queue_when_busy(entry(h, n), 100)
}

async fn admitted(h: &Harness, message: &Admit<'_>) -> Result<Lock, Failure> {
    match h.adapter.admit(message).await? {
        Admission::Admitted { lock, .. } => Ok(lock),
        other => Err(Failure::new(format!(
            "admit of a new message on a free thread: expected Admitted, got {other:?}"
        ))),
    }
}

async fn hold(h: &Harness, thread: &str) -> Result<Lock, Failure> {
    h.adapter
        .acquire_lock(thread, LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new(format!("lock {thread:?} was not free")))
}

/// A new message on a free thread is admitted: the caller holds the thread's lock (a real
/// lock: another acquire gets `None`), and the dedupe key holds the claim value.
pub async fn dispatch_admit_new_message_takes_lock(h: &Harness) -> CaseResult {
    let lock = admitted(h, &Admit::new("t", "dedupe:m1").lock_ttl(LONG_TTL)).await?;
    ensure_eq!(lock.thread_id.as_str(), "t", "the admitted lock's id");
    ensure!(lock.fence > 0, "fence {} must be positive", lock.fence);
    ensure!(
        lock.expires_at > h.time.now_ms(),
        "expires_at {} is not in the future",
        lock.expires_at
    );
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
        "the thread's lock must be held after admit"
    );
    ensure_eq!(
        h.adapter.get("dedupe:m1").await?,
        Some(DEDUPE_VALUE.to_vec()),
        "the dedupe claim"
    );
    // The admitted lock is an ordinary lock: extend and release work on it.
    ensure!(h.adapter.extend_lock(&lock, LONG_TTL).await?, "extend");
    h.adapter.release_lock(&lock).await?;
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
        "free after release"
    );
    Ok(())
}

/// Admit reports whether the thread is subscribed.
pub async fn dispatch_admit_reports_subscription(h: &Harness) -> CaseResult {
    match h.adapter.admit(&Admit::new("plain", "m1")).await? {
        Admission::Admitted { subscribed, .. } => {
            ensure!(!subscribed, "an unsubscribed thread reported subscribed")
        }
        other => return Err(Failure::new(format!("expected Admitted, got {other:?}"))),
    }
    h.adapter.subscribe("followed").await?;
    match h.adapter.admit(&Admit::new("followed", "m2")).await? {
        Admission::Admitted { subscribed, .. } => {
            ensure!(subscribed, "a subscribed thread reported unsubscribed")
        }
        other => return Err(Failure::new(format!("expected Admitted, got {other:?}"))),
    }
    Ok(())
}

/// A message whose dedupe key is live is a duplicate, and nothing changes: the lock stays
/// free, nothing is queued.
pub async fn dispatch_admit_duplicate_changes_nothing(h: &Harness) -> CaseResult {
    let lock = admitted(h, &Admit::new("t", "m1")).await?;
    h.adapter.release_lock(&lock).await?;
    let again = h.adapter.admit(&queued(h, "t", "m1", 1)).await?;
    ensure_eq!(again, Admission::Duplicate, "a second delivery");
    ensure_eq!(h.adapter.queue_depth("t").await?, 0, "nothing queued");
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
        "a duplicate must not take the lock"
    );
    // A key claimed by a plain set_if_not_exists (a TypeScript bot's dedupe) counts too.
    h.adapter
        .set_if_not_exists("m2", DEDUPE_VALUE, Some(LONG_TTL))
        .await?;
    ensure_eq!(
        h.adapter.admit(&Admit::new("u", "m2")).await?,
        Admission::Duplicate,
        "a key claimed by set_if_not_exists"
    );
    Ok(())
}

/// Busy thread, drop policy: `Dropped`, nothing queued, but the message is marked as seen.
pub async fn dispatch_admit_busy_drops(h: &Harness) -> CaseResult {
    let holder = hold(h, "t").await?;
    let outcome = h.adapter.admit(&Admit::new("t", "m1")).await?;
    ensure_eq!(outcome, Admission::Dropped, "admit on a busy thread");
    ensure_eq!(h.adapter.queue_depth("t").await?, 0, "nothing queued");
    ensure!(
        h.adapter.extend_lock(&holder, LONG_TTL).await?,
        "the holder keeps its lock"
    );
    ensure_eq!(
        h.adapter.admit(&Admit::new("t", "m1")).await?,
        Admission::Duplicate,
        "a dropped message was still seen"
    );
    Ok(())
}

/// Busy thread, queue policy: `Queued` with the live depth, trimmed to `max_size` (oldest
/// dropped), and the holder keeps its lock.
pub async fn dispatch_admit_busy_queues_with_depth(h: &Harness) -> CaseResult {
    let holder = hold(h, "t").await?;
    for n in 1..=3u64 {
        let key = format!("m{n}");
        let outcome = h
            .adapter
            .admit(&Admit::new("t", &key).queue_when_busy(entry(h, n), 2))
            .await?;
        let want = Admission::Queued {
            depth: (n as usize).min(2),
        };
        ensure_eq!(outcome, want, "admit {n} on a busy thread, max_size 2");
    }
    ensure!(
        h.adapter.extend_lock(&holder, LONG_TTL).await?,
        "the holder keeps its lock"
    );
    let mut order = Vec::new();
    while let Some(e) = h.adapter.dequeue("t").await? {
        order.push(number(&e));
    }
    ensure_eq!(order, vec![Some(2), Some(3)], "queue after trimming");
    Ok(())
}

/// Once the dedupe key has expired, the same message id is new again.
pub async fn dispatch_admit_after_dedupe_expiry_is_new(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let first = h
        .adapter
        .admit(&Admit::new("t", "m1").dedupe_ttl(ttl).lock_ttl(ttl))
        .await?;
    ensure!(
        matches!(first, Admission::Admitted { .. }),
        "first admit: {first:?}"
    );
    expire(h, ttl, false).await;
    let again = h
        .adapter
        .admit(&Admit::new("t", "m1").dedupe_ttl(ttl).lock_ttl(ttl))
        .await?;
    ensure!(
        matches!(again, Admission::Admitted { .. }),
        "after the dedupe key and the lock expired, expected Admitted, got {again:?}"
    );
    Ok(())
}

/// Of 16 concurrent admits of one message, exactly one is admitted and the rest are
/// duplicates; nothing is queued.
pub async fn dispatch_admit_concurrent_one_message_once(h: &Harness) -> CaseResult {
    let outcomes = concurrently(16, |i| {
        let a = h.adapter.clone();
        let e = entry(h, i as u64);
        async move {
            a.admit(
                &Admit::new("t", "m")
                    .lock_ttl(LONG_TTL)
                    .queue_when_busy(e, 100),
            )
            .await
        }
    })
    .await?;
    let mut taken = 0;
    for outcome in outcomes {
        match outcome? {
            Admission::Duplicate => {}
            Admission::Admitted { .. } | Admission::Queued { .. } => taken += 1,
            other => return Err(Failure::new(format!("unexpected admission {other:?}"))),
        }
    }
    ensure_eq!(taken, 1, "admits of one message that were not duplicates");
    ensure_eq!(h.adapter.queue_depth("t").await?, 0, "nothing queued");
    Ok(())
}

/// `release_or_next` hands the queue over oldest first, keeping the lock, and releases it
/// only once the queue is empty (a release that did not look at the queue first would
/// strand the entries).
pub async fn dispatch_release_or_next_fifo_then_release(h: &Harness) -> CaseResult {
    let mut lock = admitted(h, &Admit::new("t", "m0").lock_ttl(LONG_TTL)).await?;
    for n in 1..=3u64 {
        let key = format!("m{n}");
        let outcome = h.adapter.admit(&queued(h, "t", &key, n)).await?;
        ensure_eq!(
            outcome,
            Admission::Queued { depth: n as usize },
            "message {n} queued behind the holder"
        );
    }
    for n in 1..=3u64 {
        match h.adapter.release_or_next(&mut lock, LONG_TTL).await? {
            Handoff::Next(e) => ensure_eq!(number(&e), Some(n), "handoff order"),
            other => {
                return Err(Failure::new(format!(
                    "with {} entries queued expected Next, got {other:?}",
                    4 - n
                )));
            }
        }
        ensure!(
            h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
            "the lock must stay held while entries are handed over"
        );
    }
    ensure_eq!(
        h.adapter.release_or_next(&mut lock, LONG_TTL).await?,
        Handoff::Released,
        "empty queue"
    );
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
        "free after Released"
    );
    ensure_eq!(h.adapter.queue_depth("t").await?, 0, "queue empty");
    Ok(())
}

/// `release_or_next` on an empty queue releases at once.
pub async fn dispatch_release_or_next_empty_queue_releases(h: &Harness) -> CaseResult {
    let mut lock = admitted(h, &Admit::new("t", "m").lock_ttl(LONG_TTL)).await?;
    ensure_eq!(
        h.adapter.release_or_next(&mut lock, LONG_TTL).await?,
        Handoff::Released,
        "release_or_next with nothing queued"
    );
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
        "free after Released"
    );
    Ok(())
}

/// `Next` keeps the lock for the given TTL from now: the lock outlives its first expiry,
/// and the caller's `expires_at` moves with it.
pub async fn dispatch_release_or_next_refreshes_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let mut lock = admitted(h, &Admit::new("t", "m0").lock_ttl(ttl)).await?;
    let first_expiry = lock.expires_at;
    h.adapter.admit(&queued(h, "t", "m1", 1)).await?;
    h.adapter.admit(&queued(h, "t", "m2", 2)).await?;
    h.time.advance(ttl / 2).await;
    let renewed = h.adapter.release_or_next(&mut lock, LONG_TTL).await?;
    ensure!(
        matches!(renewed, Handoff::Next(_)),
        "expected Next, got {renewed:?} (the lock may have expired on a slow machine)"
    );
    ensure!(
        lock.expires_at > first_expiry,
        "expires_at did not move: {} then {}",
        first_expiry,
        lock.expires_at
    );
    expire(h, ttl, false).await;
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
        "the lock must outlive its first TTL after Next"
    );
    ensure!(
        matches!(
            h.adapter.release_or_next(&mut lock, LONG_TTL).await?,
            Handoff::Next(_)
        ),
        "the second entry"
    );
    Ok(())
}

/// Expired entries are never handed over; a queue of only expired entries releases.
pub async fn dispatch_release_or_next_skips_expired_entries(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let mut lock = admitted(h, &Admit::new("t", "m0").lock_ttl(LONG_TTL)).await?;
    let short = QueueEntry::new(json!({"n": 1}), h.time.now_ms(), ttl);
    h.adapter
        .admit(&Admit::new("t", "m1").queue_when_busy(short, 10))
        .await?;
    h.adapter.admit(&queued(h, "t", "m2", 2)).await?;
    let short = QueueEntry::new(json!({"n": 3}), h.time.now_ms(), ttl);
    h.adapter
        .admit(&Admit::new("t", "m3").queue_when_busy(short, 10))
        .await?;
    expire(h, ttl, false).await;
    match h.adapter.release_or_next(&mut lock, LONG_TTL).await? {
        Handoff::Next(e) => ensure_eq!(number(&e), Some(2), "the one live entry"),
        other => return Err(Failure::new(format!("expected Next, got {other:?}"))),
    }
    ensure_eq!(
        h.adapter.release_or_next(&mut lock, LONG_TTL).await?,
        Handoff::Released,
        "only expired entries left"
    );
    Ok(())
}

/// A holder whose lock was taken over (after force-release or expiry) gets `NotHolder`:
/// the queue and the new holder's lock are untouched.
pub async fn dispatch_release_or_next_stale_holder_changes_nothing(h: &Harness) -> CaseResult {
    let mut stale = admitted(h, &Admit::new("t", "m0").lock_ttl(LONG_TTL)).await?;
    h.adapter.force_release_lock("t").await?;
    let current = admitted(h, &Admit::new("t", "m1").lock_ttl(LONG_TTL)).await?;
    h.adapter.admit(&queued(h, "t", "m2", 2)).await?;
    ensure_eq!(
        h.adapter.release_or_next(&mut stale, LONG_TTL).await?,
        Handoff::NotHolder,
        "a force-released holder"
    );
    ensure_eq!(h.adapter.queue_depth("t").await?, 1, "queue untouched");
    ensure!(
        h.adapter.extend_lock(&current, LONG_TTL).await?,
        "the current holder keeps its lock"
    );

    // An expired holder, with the lock free: still not the holder, queue untouched.
    let ttl = short_ttl(h);
    let mut expired = admitted(h, &Admit::new("u", "m3").lock_ttl(ttl)).await?;
    h.adapter.enqueue("u", entry(h, 4), 10).await.map(|_| ())?;
    expire(h, ttl, false).await;
    ensure_eq!(
        h.adapter.release_or_next(&mut expired, LONG_TTL).await?,
        Handoff::NotHolder,
        "an expired holder"
    );
    ensure_eq!(h.adapter.queue_depth("u").await?, 1, "queue untouched");
    Ok(())
}

/// Fenced writes: stored for the current and later holders, refused for an earlier one
/// (the value stays the later holder's), stored again for the same fence, and stored for a
/// key last written under another lock id.
pub async fn dispatch_set_fenced_refuses_lower_fence(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let first = hold(h, "t").await?;
    ensure_eq!(
        a.set_fenced(&first, "state", b"first", None).await?,
        FencedWrite::Stored,
        "first holder"
    );
    ensure_eq!(a.get("state").await?, Some(b"first".to_vec()), "read back");
    a.force_release_lock("t").await?;
    let second = hold(h, "t").await?;
    ensure!(second.fence > first.fence, "fences increase");
    ensure_eq!(
        a.set_fenced(&second, "state", b"second", None).await?,
        FencedWrite::Stored,
        "second holder"
    );
    ensure_eq!(
        a.set_fenced(&first, "state", b"stale", None).await?,
        FencedWrite::Stale,
        "the earlier holder, after the later one wrote"
    );
    ensure_eq!(
        a.get("state").await?,
        Some(b"second".to_vec()),
        "a stale write changes nothing"
    );
    ensure_eq!(
        a.set_fenced(&second, "state", b"again", None).await?,
        FencedWrite::Stored,
        "the same fence twice"
    );
    // Plain writes do not touch the fence record: the stale holder stays refused.
    a.set("state", b"plain", None).await?;
    ensure_eq!(
        a.set_fenced(&first, "state", b"stale", None).await?,
        FencedWrite::Stale,
        "the earlier holder after a plain set"
    );
    a.delete("state").await?;
    ensure_eq!(
        a.set_fenced(&first, "state", b"stale", None).await?,
        FencedWrite::Stale,
        "the earlier holder after a plain delete"
    );
    ensure_eq!(a.get("state").await?, None, "still deleted");
    // Fences of different lock ids are not comparable: the write is stored.
    let other = hold(h, "other-thread").await?;
    ensure_eq!(
        a.set_fenced(&other, "state", b"other", None).await?,
        FencedWrite::Stored,
        "a fenced write under another lock id"
    );
    ensure_eq!(a.get("state").await?, Some(b"other".to_vec()), "read back");
    Ok(())
}

/// The fenced value expires with its TTL like any cache value, and so does its fence record:
/// afterwards an earlier holder's write is stored.
pub async fn dispatch_set_fenced_record_expires_with_ttl(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let ttl = short_ttl(h);
    let first = hold(h, "t").await?;
    a.force_release_lock("t").await?;
    let second = hold(h, "t").await?;
    ensure_eq!(
        a.set_fenced(&second, "state", b"second", Some(ttl)).await?,
        FencedWrite::Stored,
        "second holder"
    );
    expire(h, ttl, false).await;
    ensure_eq!(a.get("state").await?, None, "the value expired");
    ensure_eq!(
        a.set_fenced(&first, "state", b"first", None).await?,
        FencedWrite::Stored,
        "after the record expired"
    );
    ensure_eq!(a.get("state").await?, Some(b"first".to_vec()), "read back");
    Ok(())
}

/// The hole fencing closes: a holder paused past its lock's TTL wakes after a new holder has
/// written the thread state. Its fenced write is refused, and its queue handoff answers
/// `NotHolder`; an unfenced write (the control) would have overwritten the new state.
pub async fn dispatch_paused_holder_fenced_write_refused(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let ttl = short_ttl(h);
    let mut paused = admitted(h, &Admit::new("t", "m1").lock_ttl(ttl)).await?;
    // The pause: the lock runs out while the holder is stopped.
    expire(h, ttl, false).await;
    let current = admitted(h, &Admit::new("t", "m2").lock_ttl(LONG_TTL)).await?;
    ensure!(
        current.fence > paused.fence,
        "the new holder's fence is higher"
    );
    ensure_eq!(
        a.set_fenced(&current, "thread-state", b"new", None).await?,
        FencedWrite::Stored,
        "the new holder"
    );
    ensure_eq!(
        a.set_fenced(&paused, "thread-state", b"old", None).await?,
        FencedWrite::Stale,
        "the paused holder, woken up"
    );
    ensure_eq!(
        a.get("thread-state").await?,
        Some(b"new".to_vec()),
        "the new holder's state survives"
    );
    ensure_eq!(
        a.release_or_next(&mut paused, LONG_TTL).await?,
        Handoff::NotHolder,
        "the paused holder's handoff"
    );
    // The control: without the fence the paused holder's write wins.
    a.set("thread-state", b"old", None).await?;
    ensure_eq!(
        a.get("thread-state").await?,
        Some(b"old".to_vec()),
        "an unfenced write overwrites"
    );
    Ok(())
}

/// `Admit::read` hands back the key's value with the admission (read under the new lock);
/// a missing key reads `None`.
pub async fn dispatch_admit_reads_key_when_admitted(h: &Harness) -> CaseResult {
    h.adapter.set("state:t", b"turn 7", None).await?;
    match h
        .adapter
        .admit(&Admit::new("t", "m1").read("state:t"))
        .await?
    {
        Admission::Admitted { read, .. } => {
            ensure_eq!(
                read,
                Some(b"turn 7".to_vec()),
                "the value read with the admit"
            )
        }
        other => return Err(Failure::new(format!("expected Admitted, got {other:?}"))),
    }
    match h
        .adapter
        .admit(&Admit::new("u", "m2").read("state:u"))
        .await?
    {
        Admission::Admitted { read, .. } => ensure_eq!(read, None, "a missing key"),
        other => return Err(Failure::new(format!("expected Admitted, got {other:?}"))),
    }
    Ok(())
}

/// `release_or_next_with` stores the holder's write and hands over in one step; a stale
/// holder's write is refused, answers `NotHolder`, and leaves the queue alone.
pub async fn dispatch_release_or_next_with_writes_then_hands_over(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let write = |value: &'static [u8]| FencedSet {
        key: "state:t",
        value,
        ttl: None,
    };
    let mut lock = admitted(h, &Admit::new("t", "m0").lock_ttl(LONG_TTL)).await?;
    a.admit(&queued(h, "t", "m1", 1)).await?;
    match a
        .release_or_next_with(&mut lock, LONG_TTL, write(b"one"))
        .await?
    {
        Handoff::Next(e) => ensure_eq!(number(&e), Some(1), "the queued entry"),
        other => return Err(Failure::new(format!("expected Next, got {other:?}"))),
    }
    ensure_eq!(a.get("state:t").await?, Some(b"one".to_vec()), "the write");
    ensure_eq!(
        a.release_or_next_with(&mut lock, LONG_TTL, write(b"two"))
            .await?,
        Handoff::Released,
        "empty queue"
    );
    ensure_eq!(
        a.get("state:t").await?,
        Some(b"two".to_vec()),
        "the last write"
    );
    ensure!(
        a.acquire_lock("t", LONG_TTL).await?.is_some(),
        "free after Released"
    );
    a.force_release_lock("t").await?;

    // A stale holder: the lock was taken over and the new holder wrote the key.
    let mut stale = admitted(h, &Admit::new("t", "m2").lock_ttl(LONG_TTL)).await?;
    a.force_release_lock("t").await?;
    let current = admitted(h, &Admit::new("t", "m3").lock_ttl(LONG_TTL)).await?;
    ensure_eq!(
        a.set_fenced(&current, "state:t", b"current", None).await?,
        FencedWrite::Stored,
        "the current holder's write"
    );
    a.admit(&queued(h, "t", "m4", 4)).await?;
    ensure_eq!(
        a.release_or_next_with(&mut stale, LONG_TTL, write(b"stale"))
            .await?,
        Handoff::NotHolder,
        "a stale holder"
    );
    ensure_eq!(
        a.get("state:t").await?,
        Some(b"current".to_vec()),
        "the stale write changed nothing"
    );
    ensure_eq!(a.queue_depth("t").await?, 1, "queue untouched");
    Ok(())
}

/// The dispatch operations keep the input rules, and name themselves in the error.
pub async fn dispatch_invalid_input_rejected(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    rejected(
        h,
        a.admit(&Admit::new("", "m")).await,
        Operation::Admit,
        "empty thread id",
    )?;
    rejected(
        h,
        a.admit(&Admit::new("t", "")).await,
        Operation::Admit,
        "empty dedupe key",
    )?;
    rejected(
        h,
        a.admit(&Admit::new("t", "m").lock_ttl(Duration::ZERO))
            .await,
        Operation::Admit,
        "zero lock TTL",
    )?;
    rejected(
        h,
        a.admit(&Admit::new("t", "m").dedupe_ttl(Duration::ZERO))
            .await,
        Operation::Admit,
        "zero dedupe TTL",
    )?;
    rejected(
        h,
        a.admit(&Admit::new("t", "m").queue_when_busy(entry(h, 1), 0))
            .await,
        Operation::Admit,
        "max_size 0",
    )?;
    // Nothing was claimed by the rejected calls.
    ensure!(
        matches!(
            a.admit(&Admit::new("t", "m")).await?,
            Admission::Admitted { .. }
        ),
        "a rejected admit must not claim the message"
    );
    let mut lock = hold(h, "v").await?;
    rejected(
        h,
        a.release_or_next(&mut lock, Duration::ZERO).await,
        Operation::ReleaseOrNext,
        "zero TTL",
    )?;
    rejected(
        h,
        a.set_fenced(&lock, "", b"v", None).await,
        Operation::SetFenced,
        "empty key",
    )?;
    let limit = chat_state_core::validate::MAX_KEY_BYTES
        - chat_state_core::dispatch::FENCE_RECORD_PREFIX.len();
    ensure_eq!(
        a.set_fenced(&lock, &"k".repeat(limit), b"v", None).await?,
        FencedWrite::Stored,
        "the longest fenced key"
    );
    let long_key = "k".repeat(limit + 1);
    rejected(
        h,
        a.set_fenced(&lock, &long_key, b"v", None).await,
        Operation::SetFenced,
        "a key too long for a fence record",
    )?;
    rejected(
        h,
        a.set_fenced(&lock, "k", b"v", Some(Duration::ZERO)).await,
        Operation::SetFenced,
        "zero TTL",
    )?;
    rejected(
        h,
        a.release_or_next_with(
            &mut lock.clone(),
            LONG_TTL,
            FencedSet {
                key: "",
                value: b"v",
                ttl: None,
            },
        )
        .await,
        Operation::ReleaseOrNext,
        "release_or_next_with an empty key",
    )?;
    rejected(
        h,
        a.admit(&Admit::new("t", "m9").read("")).await,
        Operation::Admit,
        "an empty read key",
    )?;
    Ok(())
}

/// Only an atomic `set_fenced` passes this: rounds of a later and an earlier holder writing
/// one key at the same instant must always end with the later holder's value (a
/// read-compare-write in steps lets the earlier holder's write land after the check).
/// Skipped, and so declared by the harness, for an adapter on the step-by-step dispatch.
pub async fn dispatch_set_fenced_is_atomic(h: &Harness) -> CaseResult {
    if !h.adapter.atomic_dispatch() {
        return Err(Failure::skip(
            "the adapter runs the step-by-step dispatch (not atomic): \
             `atomic_dispatch()` is false",
        ));
    }
    for round in 0..20 {
        let key = format!("state-{round}");
        let early = hold(h, "t").await?;
        h.adapter.force_release_lock("t").await?;
        let late = hold(h, "t").await?;
        h.adapter.force_release_lock("t").await?;
        let outcomes = concurrently(2, |i| {
            let a = h.adapter.clone();
            let (lock, value) = if i == 0 {
                (late.clone(), b"late".to_vec())
            } else {
                (early.clone(), b"early".to_vec())
            };
            let key = key.clone();
            async move { a.set_fenced(&lock, &key, &value, None).await }
        })
        .await?;
        for outcome in outcomes {
            // Either may be refused (the later holder's write came first); the end state is
            // what is checked.
            let _ = outcome?;
        }
        ensure_eq!(
            h.adapter.get(&key).await?,
            Some(b"late".to_vec()),
            "round {round}: the key after concurrent fenced writes"
        );
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use chat_state_core::{BusyStrategy, Dispatched, Dispatcher, QueueEntry, StateAdapter};
    use serde_json::json;

    use super::LONG_TTL;
    use crate::{CaseResult, Failure, Harness, ensure, ensure_eq};

    /// A randomized concurrent schedule: 6 dispatchers, 120 messages over 3 threads, a third
    /// of them delivered twice (at once or later), handlers that take random time and write
    /// thread state fenced. Every message must be handled exactly once, no entry may be left
    /// in any queue, and every lock must end free.
    pub async fn dispatch_randomized_schedule_handles_every_message_once(
        h: &Harness,
    ) -> CaseResult {
        const DISPATCHERS: usize = 6;
        const MESSAGES: usize = 120;
        const THREADS: usize = 3;
        let handled: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let stale_writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut seed = chat_state_core::random_u64()
            .map_err(|e| Failure::new(format!("no randomness: {e}")))?
            | 1;
        let mut next = move || {
            // xorshift64: enough to vary the schedule; the seed is reported on failure.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let seed_shown = next();
        // Deliveries: (dispatcher, thread, message id, pause before), each message once or
        // twice.
        let mut deliveries: Vec<Vec<(usize, String, u64)>> = vec![Vec::new(); DISPATCHERS];
        for m in 0..MESSAGES {
            let thread = format!("thread-{}", next() as usize % THREADS);
            let copies = if next() % 3 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                let d = next() as usize % DISPATCHERS;
                deliveries[d].push((m, thread.clone(), next() % 3));
            }
        }
        let tasks: Vec<_> = deliveries
            .into_iter()
            .enumerate()
            .map(|(d, list)| {
                let state: Arc<dyn StateAdapter> = h.adapter.clone();
                let handled = handled.clone();
                let stale_writes = stale_writes.clone();
                let handler_seed = seed_shown.wrapping_add(d as u64);
                tokio::spawn(async move {
                    let bot = Dispatcher::new(state, "test", move |turn, message| {
                        let handled = handled.clone();
                        let stale_writes = stale_writes.clone();
                        async move {
                            let id = message["id"].as_str().unwrap_or("?").to_owned();
                            *handled
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(id.clone())
                                .or_default() += 1;
                            let pause = (handler_seed ^ id.len() as u64) % 3;
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            let key = format!("state:{}", turn.thread_id());
                            if turn.set_fenced(&key, id.as_bytes(), None).await?
                                == chat_state_core::FencedWrite::Stale
                            {
                                stale_writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Ok(())
                        }
                    })
                    .lock_ttl(LONG_TTL)
                    .busy(BusyStrategy::Queue {
                        max_size: MESSAGES,
                        entry_lifetime: Duration::from_secs(600),
                    });
                    let mut failures = Vec::new();
                    for (m, thread, pause) in list {
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        let id = format!("m{m}");
                        match bot.dispatch(&thread, &id, json!({"id": id})).await {
                            Ok(Dispatched::Handled { failures: f, .. }) if !f.is_empty() => {
                                failures.push(format!("handler failed: {f:?}"));
                            }
                            Ok(_) => {}
                            Err(e) => failures.push(format!("dispatch of {id} failed: {e}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        for task in tasks {
            let failures = task
                .await
                .map_err(|e| Failure::new(format!("dispatcher panicked: {e}")))?;
            ensure!(failures.is_empty(), "seed {seed_shown:#x}: {failures:?}");
        }
        let handled = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for m in 0..MESSAGES {
            let id = format!("m{m}");
            ensure_eq!(
                handled.get(&id).copied().unwrap_or(0),
                1,
                "seed {seed_shown:#x}: times message {id} was handled"
            );
        }
        for t in 0..THREADS {
            let thread = format!("thread-{t}");
            ensure_eq!(
                h.adapter.queue_depth(&thread).await?,
                0,
                "seed {seed_shown:#x}: entries left in {thread}'s queue"
            );
            ensure!(
                h.adapter.acquire_lock(&thread, LONG_TTL).await?.is_some(),
                "seed {seed_shown:#x}: {thread}'s lock left held"
            );
        }
        ensure_eq!(
            stale_writes.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "fenced writes refused although no lock was lost"
        );
        Ok(())
    }

    /// A dispatcher whose handler loses the lock (taken over mid-turn) stops: the turn sees
    /// `is_lost`, its thread-state write is not stored, the message queued behind it is left
    /// for the new holder (not handed out), and the outcome says `ownership_lost`.
    pub async fn dispatch_dispatcher_stops_when_the_lock_is_lost(h: &Harness) -> CaseResult {
        let state: Arc<dyn StateAdapter> = h.adapter.clone();
        let lock_ttl = Duration::from_millis(300);
        let saw_lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = saw_lost.clone();
        let bot = Dispatcher::new(state.clone(), "test", move |turn, message| {
            let seen = seen.clone();
            async move {
                if message["id"] == "first" {
                    // Another instance force-releases the lock and takes the thread over.
                    turn.state().force_release_lock(turn.thread_id()).await?;
                    let other = turn
                        .state()
                        .acquire_lock(turn.thread_id(), LONG_TTL)
                        .await?;
                    let other = other.ok_or("the forced-free lock was not free")?;
                    let _ = other;
                    // Longer than a heartbeat period: the extend finds the lock gone.
                    for _ in 0..50 {
                        if turn.is_lost() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    seen.store(turn.is_lost(), std::sync::atomic::Ordering::SeqCst);
                    turn.set_thread_state(b"from the lost turn".to_vec(), None)?;
                }
                Ok(())
            }
        })
        .thread_state(|thread| format!("state:{thread}"))
        .lock_ttl(lock_ttl)
        .busy(BusyStrategy::queue());
        let queued = QueueEntry::new(json!({"id": "second"}), h.time.now_ms(), LONG_TTL);
        let outcome = {
            let dispatch = bot.dispatch("t", "m1", json!({"id": "first"}));
            // While the first turn runs, a second message is queued behind it.
            let enqueue = async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                state.enqueue("t", queued, 10).await
            };
            let (outcome, depth) = futures::join!(dispatch, enqueue);
            ensure_eq!(depth?, 1, "the queued message");
            outcome?
        };
        match outcome {
            Dispatched::Handled {
                handled,
                from_queue,
                ownership_lost,
                failures,
            } => {
                ensure!(failures.is_empty(), "handler failures: {failures:?}");
                ensure!(ownership_lost, "the outcome must say the lock was lost");
                ensure_eq!(handled, 1, "turns run");
                ensure_eq!(from_queue, 0, "entries handed out after the loss");
            }
            other => return Err(Failure::new(format!("expected Handled, got {other:?}"))),
        }
        ensure!(
            saw_lost.load(std::sync::atomic::Ordering::SeqCst),
            "the turn never saw is_lost"
        );
        ensure_eq!(
            h.adapter.get("state:t").await?,
            None,
            "the lost turn's write"
        );
        ensure_eq!(
            h.adapter.queue_depth("t").await?,
            1,
            "the queued message, left for the new holder"
        );
        Ok(())
    }
}
