//! Input rules (contract rules 2 and 9): every backend rejects the same inputs with the same
//! `InvalidInput` error, naming itself and the operation, and stores nothing.

use std::time::Duration;

use chat_state_core::validate::{MAX_KEY_BYTES, MAX_TTL, MAX_VALUE_BYTES};
use chat_state_core::{ListOptions, Lock, Operation, QueueEntry};
use serde_json::json;

use super::support::{LONG_LIFETIME, LONG_TTL, MS, nothing_stored, rejected};
use crate::{CaseResult, Failure, Harness, ensure, ensure_eq};

fn lock_on(id: &str) -> Lock {
    Lock {
        thread_id: id.to_owned(),
        token: "0123456789abcdef0123456789abcdef".to_owned(),
        expires_at: u64::MAX / 4,
        fence: 1,
    }
}

/// Calls every operation that takes an id or key with `key` and checks each is rejected.
async fn every_operation_rejects(h: &Harness, key: &str, what: &str) -> CaseResult {
    let a = &h.adapter;
    let entry = QueueEntry::new(json!({"m": 1}), h.time.now_ms(), LONG_LIFETIME);
    rejected(h, a.subscribe(key).await, Operation::Subscribe, what)?;
    rejected(h, a.unsubscribe(key).await, Operation::Unsubscribe, what)?;
    rejected(h, a.is_subscribed(key).await, Operation::IsSubscribed, what)?;
    rejected(
        h,
        a.acquire_lock(key, LONG_TTL).await,
        Operation::AcquireLock,
        what,
    )?;
    rejected(
        h,
        a.release_lock(&lock_on(key)).await,
        Operation::ReleaseLock,
        what,
    )?;
    rejected(
        h,
        a.extend_lock(&lock_on(key), LONG_TTL).await,
        Operation::ExtendLock,
        what,
    )?;
    rejected(
        h,
        a.force_release_lock(key).await,
        Operation::ForceReleaseLock,
        what,
    )?;
    rejected(h, a.get(key).await, Operation::Get, what)?;
    rejected(h, a.set(key, b"v", None).await, Operation::Set, what)?;
    rejected(
        h,
        a.set_if_not_exists(key, b"v", None).await,
        Operation::SetIfNotExists,
        what,
    )?;
    rejected(h, a.delete(key).await, Operation::Delete, what)?;
    rejected(
        h,
        a.append_to_list(key, b"v", ListOptions::new()).await,
        Operation::AppendToList,
        what,
    )?;
    rejected(h, a.get_list(key).await, Operation::GetList, what)?;
    rejected(h, a.enqueue(key, entry, 10).await, Operation::Enqueue, what)?;
    rejected(h, a.dequeue(key).await, Operation::Dequeue, what)?;
    rejected(h, a.queue_depth(key).await, Operation::QueueDepth, what)?;
    Ok(())
}

/// Rule 9: an empty id or key is rejected by every operation.
pub async fn validation_empty_key_rejected_everywhere(h: &Harness) -> CaseResult {
    every_operation_rejects(h, "", "an empty key").await
}

/// Rule 9: a 1025-byte id or key is rejected by every operation, and nothing is stored
/// under a truncated form of it.
pub async fn validation_oversized_key_rejected_everywhere(h: &Harness) -> CaseResult {
    let key = "k".repeat(MAX_KEY_BYTES + 1);
    every_operation_rejects(h, &key, "a 1025-byte key").await?;
    nothing_stored(h, &key[..MAX_KEY_BYTES]).await
}

/// Rule 9: a key with a NUL byte is rejected by every operation, and nothing is stored under
/// the parts around the NUL.
pub async fn validation_nul_key_rejected_everywhere(h: &Harness) -> CaseResult {
    every_operation_rejects(h, "a\0b", "a key containing NUL").await?;
    every_operation_rejects(h, "\0", "a key that is a single NUL").await?;
    nothing_stored(h, "a").await?;
    nothing_stored(h, "ab").await
}

/// Rule 9, accepting side: a key of exactly 1024 bytes works in every namespace.
pub async fn validation_longest_key_accepted_everywhere(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    // Multi-byte characters: the limit is in bytes, and a 3-byte character must not be split.
    let key = format!("{}{}", "€".repeat(341), "x"); // 341 × 3 + 1 = 1024 bytes
    ensure_eq!(key.len(), MAX_KEY_BYTES, "test key length");
    a.subscribe(&key).await?;
    ensure!(a.is_subscribed(&key).await?, "subscription");
    let lock = a
        .acquire_lock(&key, LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("lock on a 1024-byte id"))?;
    ensure!(a.extend_lock(&lock, LONG_TTL).await?, "extend");
    a.release_lock(&lock).await?;
    a.set(&key, b"v", None).await?;
    ensure_eq!(a.get(&key).await?, Some(b"v".to_vec()), "cache");
    a.append_to_list(&key, b"i", ListOptions::new()).await?;
    ensure_eq!(a.get_list(&key).await?, vec![b"i".to_vec()], "list");
    let entry = QueueEntry::new(json!({"m": 1}), h.time.now_ms(), LONG_LIFETIME);
    ensure_eq!(a.enqueue(&key, entry, 10).await?, 1, "queue depth");
    Ok(())
}

/// Rule 9: a lock handle with an empty, oversized or NUL token is invalid input, and the
/// real holder keeps its lock.
pub async fn validation_lock_token_rules(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let lock = a
        .acquire_lock("t", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("fresh lock was not acquired"))?;
    for (token, what) in [
        (String::new(), "an empty token"),
        ("f".repeat(MAX_KEY_BYTES + 1), "a 1025-byte token"),
        ("ab\0cd".to_owned(), "a token containing NUL"),
    ] {
        let bad = Lock {
            token,
            ..lock.clone()
        };
        rejected(h, a.release_lock(&bad).await, Operation::ReleaseLock, what)?;
        rejected(
            h,
            a.extend_lock(&bad, LONG_TTL).await,
            Operation::ExtendLock,
            what,
        )?;
    }
    ensure!(
        a.acquire_lock("t", LONG_TTL).await?.is_none(),
        "lock still held"
    );
    ensure!(
        a.extend_lock(&lock, LONG_TTL).await?,
        "holder can still extend"
    );
    Ok(())
}

/// Rule 9: values over 1 MiB are rejected by set, set_if_not_exists, append and enqueue, and
/// nothing is stored.
pub async fn validation_oversized_value_rejected(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let big = vec![b'x'; MAX_VALUE_BYTES + 1];
    let what = "a value of 1 MiB + 1 byte";
    rejected(h, a.set("k", &big, None).await, Operation::Set, what)?;
    rejected(
        h,
        a.set_if_not_exists("k", &big, None).await,
        Operation::SetIfNotExists,
        what,
    )?;
    rejected(
        h,
        a.append_to_list("k", &big, ListOptions::new()).await,
        Operation::AppendToList,
        what,
    )?;
    // A JSON string of 1 MiB - 1 characters serializes to 1 MiB + 1 bytes with its quotes.
    let message = json!("y".repeat(MAX_VALUE_BYTES - 1));
    let entry = QueueEntry::new(message, h.time.now_ms(), LONG_LIFETIME);
    rejected(
        h,
        a.enqueue("k", entry, 10).await,
        Operation::Enqueue,
        "a 1 MiB + 1 byte message",
    )?;
    nothing_stored(h, "k").await
}

/// Rule 9, accepting side: values of exactly 1 MiB are accepted everywhere.
pub async fn validation_largest_value_accepted(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let largest = vec![b'z'; MAX_VALUE_BYTES];
    ensure!(
        a.set_if_not_exists("k", &largest, None).await?,
        "set_if_not_exists of 1 MiB"
    );
    a.append_to_list("l", &largest, ListOptions::new()).await?;
    ensure_eq!(
        a.get_list("l").await?.first().map(Vec::len),
        Some(MAX_VALUE_BYTES),
        "list item"
    );
    let message = json!("y".repeat(MAX_VALUE_BYTES - 2)); // exactly 1 MiB as JSON
    let entry = QueueEntry::new(message, h.time.now_ms(), LONG_LIFETIME);
    ensure_eq!(
        a.enqueue("q", entry.clone(), 10).await?,
        1,
        "enqueue of a 1 MiB message"
    );
    ensure_eq!(a.dequeue("q").await?, Some(entry), "the 1 MiB message");
    Ok(())
}

/// Rule 2: a zero TTL is invalid input for locks, cache and lists, and stores nothing.
pub async fn validation_zero_ttl_rejected(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let z = Duration::ZERO;
    let what = "a zero TTL";
    rejected(
        h,
        a.acquire_lock("k", z).await,
        Operation::AcquireLock,
        what,
    )?;
    rejected(
        h,
        a.extend_lock(&lock_on("k"), z).await,
        Operation::ExtendLock,
        what,
    )?;
    rejected(h, a.set("k", b"v", Some(z)).await, Operation::Set, what)?;
    rejected(
        h,
        a.set_if_not_exists("k", b"v", Some(z)).await,
        Operation::SetIfNotExists,
        what,
    )?;
    rejected(
        h,
        a.append_to_list("k", b"v", ListOptions::new().ttl(z)).await,
        Operation::AppendToList,
        what,
    )?;
    nothing_stored(h, "k").await
}

/// Rule 2: a TTL above `MAX_TTL` (including `Duration::MAX`, whose expiry would overflow) is
/// invalid input, never a wrap, and stores nothing.
pub async fn validation_ttl_above_max_rejected(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    for (ttl, what) in [
        (MAX_TTL + MS, "MAX_TTL + 1 ms"),
        (Duration::MAX, "Duration::MAX"),
        (Duration::from_millis(u64::MAX), "u64::MAX ms"),
    ] {
        rejected(
            h,
            a.acquire_lock("k", ttl).await,
            Operation::AcquireLock,
            what,
        )?;
        rejected(
            h,
            a.extend_lock(&lock_on("k"), ttl).await,
            Operation::ExtendLock,
            what,
        )?;
        rejected(h, a.set("k", b"v", Some(ttl)).await, Operation::Set, what)?;
        rejected(
            h,
            a.set_if_not_exists("k", b"v", Some(ttl)).await,
            Operation::SetIfNotExists,
            what,
        )?;
        rejected(
            h,
            a.append_to_list("k", b"v", ListOptions::new().ttl(ttl))
                .await,
            Operation::AppendToList,
            what,
        )?;
    }
    nothing_stored(h, "k").await
}

/// Rule 2, accepting side: `MAX_TTL` itself is valid and does not wrap into the past.
pub async fn validation_max_ttl_accepted(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let now = h.time.now_ms();
    let lock = a
        .acquire_lock("t", MAX_TTL)
        .await?
        .ok_or_else(|| Failure::new("lock with MAX_TTL"))?;
    ensure!(
        lock.expires_at > now,
        "expires_at {} wrapped",
        lock.expires_at
    );
    a.set("k", b"v", Some(MAX_TTL)).await?;
    a.append_to_list("l", b"v", ListOptions::new().ttl(MAX_TTL))
        .await?;
    h.time.advance(Duration::from_millis(5)).await;
    ensure_eq!(a.get("k").await?, Some(b"v".to_vec()), "value with MAX_TTL");
    ensure_eq!(a.get_list("l").await?.len(), 1, "list with MAX_TTL");
    ensure!(
        a.acquire_lock("t", LONG_TTL).await?.is_none(),
        "lock with MAX_TTL"
    );
    Ok(())
}

/// Rule 2: a sub-millisecond TTL is valid and rounds up to 1 ms, never down to 0 (exact on
/// a manual clock).
pub async fn validation_sub_millisecond_ttl_rounds_up(h: &Harness) -> CaseResult {
    if !h.time.is_manual() {
        return Err(Failure::skip("exact expiry boundaries need a manual clock"));
    }
    let a = &h.adapter;
    let tiny = Duration::from_micros(1);
    let now = h.time.now_ms();
    a.set("k", b"v", Some(tiny)).await?;
    let lock = a
        .acquire_lock("t", tiny)
        .await?
        .ok_or_else(|| Failure::new("lock with a 1 µs TTL"))?;
    ensure_eq!(lock.expires_at, now + 1, "expires_at of a 1 µs lock");
    ensure_eq!(
        a.get("k").await?,
        Some(b"v".to_vec()),
        "1 µs value at the same instant"
    );
    h.time.advance(MS).await;
    ensure_eq!(a.get("k").await?, None, "1 µs value 1 ms later");
    Ok(())
}

/// Rule 6: `max_length` 0 is invalid input and leaves the list as it was.
pub async fn validation_max_length_zero_rejected(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.append_to_list("l", b"kept", ListOptions::new()).await?;
    rejected(
        h,
        a.append_to_list("l", b"v", ListOptions::new().max_length(0))
            .await,
        Operation::AppendToList,
        "max_length 0",
    )?;
    rejected(
        h,
        a.append_to_list("fresh", b"v", ListOptions::new().max_length(0))
            .await,
        Operation::AppendToList,
        "max_length 0",
    )?;
    ensure_eq!(
        a.get_list("l").await?,
        vec![b"kept".to_vec()],
        "list untouched"
    );
    nothing_stored(h, "fresh").await
}

/// Rule 7: `max_size` 0 is invalid input and leaves the queue as it was.
pub async fn validation_max_size_zero_rejected(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let e = QueueEntry::new(json!({"m": 1}), h.time.now_ms(), LONG_LIFETIME);
    a.enqueue("q", e.clone(), 10).await?;
    rejected(
        h,
        a.enqueue("q", e.clone(), 0).await,
        Operation::Enqueue,
        "max_size 0",
    )?;
    rejected(
        h,
        a.enqueue("fresh", e, 0).await,
        Operation::Enqueue,
        "max_size 0",
    )?;
    ensure_eq!(a.queue_depth("q").await?, 1, "queue untouched");
    nothing_stored(h, "fresh").await
}

/// Rule 2: queue timestamps beyond the i64 millisecond range are invalid input.
pub async fn validation_queue_timestamps_out_of_range_rejected(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let now = h.time.now_ms();
    let far = QueueEntry {
        enqueued_at: now,
        expires_at: u64::MAX,
        message: json!({"m": 1}),
    };
    rejected(
        h,
        a.enqueue("q", far, 10).await,
        Operation::Enqueue,
        "expires_at u64::MAX",
    )?;
    let odd = QueueEntry {
        enqueued_at: i64::MAX as u64 + 1,
        expires_at: now + 60_000,
        message: json!({"m": 1}),
    };
    rejected(
        h,
        a.enqueue("q", odd, 10).await,
        Operation::Enqueue,
        "enqueued_at > i64::MAX",
    )?;
    nothing_stored(h, "q").await
}
