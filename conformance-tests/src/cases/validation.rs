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
pub(crate) async fn every_operation_rejects(h: &Harness, key: &str, what: &str) -> CaseResult {
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

/// Rule 9: the key limit counts bytes, not characters: 342 three-byte characters (1026
/// bytes, 342 characters) are rejected by every operation, and nothing is stored under the
/// 1023-byte key of 341 of them.
pub async fn validation_oversized_multibyte_key_rejected_everywhere(h: &Harness) -> CaseResult {
    let key = "€".repeat(342);
    ensure!(key.len() > MAX_KEY_BYTES, "test key length");
    every_operation_rejects(h, &key, "a 1026-byte key of 342 characters").await?;
    // 1024 characters of which one is two bytes: 1025 bytes.
    let key = format!("é{}", "k".repeat(MAX_KEY_BYTES - 1));
    ensure_eq!(key.len(), MAX_KEY_BYTES + 1, "test key length");
    every_operation_rejects(h, &key, "a 1025-byte key of 1024 characters").await?;
    nothing_stored(h, &"€".repeat(341)).await
}

/// Rule 9: a key with a NUL byte is rejected by every operation, and nothing is stored under
/// the parts around the NUL.
pub async fn validation_nul_key_rejected_everywhere(h: &Harness) -> CaseResult {
    every_operation_rejects(h, "a\0b", "a key containing NUL").await?;
    every_operation_rejects(h, "\0", "a key that is a single NUL").await?;
    every_operation_rejects(h, "a\0\0b", "a key with two NULs").await?;
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
        ("ab\0\0cd".to_owned(), "a token containing two NULs"),
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
    // The limit is in bytes of the JSON: 512 Ki two-byte characters are 1 MiB + 2 bytes with
    // the quotes, but only 512 Ki + 2 characters.
    let message = json!("é".repeat(MAX_VALUE_BYTES / 2));
    let entry = QueueEntry::new(message, h.time.now_ms(), LONG_LIFETIME);
    rejected(
        h,
        a.enqueue("k", entry, 10).await,
        Operation::Enqueue,
        "a message of 1 MiB + 2 bytes in half as many characters",
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
    // Past the edge in every unit the limit could be compared in: a second, a millisecond,
    // a microsecond and a nanosecond over.
    for (ttl, what) in [
        (MAX_TTL + Duration::from_secs(1), "MAX_TTL + 1 s"),
        (MAX_TTL + MS, "MAX_TTL + 1 ms"),
        (MAX_TTL + Duration::from_micros(1), "MAX_TTL + 1 µs"),
        (MAX_TTL + Duration::from_nanos(1), "MAX_TTL + 1 ns"),
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

/// Rule 2 on every operation that takes a TTL, on either clock: a 1 µs TTL is valid and
/// means 1 ms, never 0 and never "no expiry". On a manual clock exactly (live at the write's
/// instant, dead 1 ms later); on the wall clock everything is gone after a sleep, and the
/// lock's `expires_at` is at least 1 ms after the clock read before the call (sampled until
/// one call starts and ends within one millisecond, where a truncated TTL shows).
pub async fn validation_sub_millisecond_ttl_expires_on_every_operation(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let tiny = Duration::from_micros(1);
    let before = h.time.now_ms();
    a.set("set", b"v", Some(tiny)).await?;
    ensure!(
        a.set_if_not_exists("sinx", b"v", Some(tiny)).await?,
        "set_if_not_exists of a missing key"
    );
    a.append_to_list("list", b"v", ListOptions::new().ttl(tiny))
        .await?;
    let lock = a
        .acquire_lock("acquired", tiny)
        .await?
        .ok_or_else(|| Failure::new("lock with a 1 µs TTL"))?;
    let after = h.time.now_ms();
    ensure!(
        before < lock.expires_at && lock.expires_at <= after + 1,
        "expires_at {} of a 1 µs lock outside [{}, {}]",
        lock.expires_at,
        before + 1,
        after + 1
    );
    let extended = a
        .acquire_lock("extended", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("fresh lock was not acquired"))?;
    ensure!(
        a.extend_lock(&extended, tiny).await?,
        "extend of a live lock with a 1 µs TTL"
    );
    if h.time.is_manual() {
        ensure_eq!(
            a.get("set").await?,
            Some(b"v".to_vec()),
            "set, same instant"
        );
        ensure_eq!(
            a.get("sinx").await?,
            Some(b"v".to_vec()),
            "set_if_not_exists, same instant"
        );
        ensure_eq!(a.get_list("list").await?.len(), 1, "list, same instant");
        ensure!(
            a.acquire_lock("acquired", LONG_TTL).await?.is_none(),
            "a 1 µs lock free at the instant it was taken"
        );
        ensure!(
            a.acquire_lock("extended", LONG_TTL).await?.is_none(),
            "a lock extended by 1 µs free at the instant of the extend"
        );
        h.time.advance(MS).await;
    } else {
        h.time.advance(Duration::from_millis(150)).await;
        // A call that starts and ends in one millisecond shows a TTL truncated to 0 ms.
        for i in 0..20 {
            let before = h.time.now_ms();
            let sample = a
                .acquire_lock(&format!("sample-{i}"), tiny)
                .await?
                .ok_or_else(|| Failure::new("lock with a 1 µs TTL"))?;
            ensure!(
                sample.expires_at > before,
                "a 1 µs lock expires at {}, not after the clock read before the call ({before}): \
                 the TTL was truncated to 0 ms",
                sample.expires_at
            );
        }
    }
    ensure_eq!(a.get("set").await?, None, "set with a 1 µs TTL, 1 ms later");
    ensure_eq!(
        a.get("sinx").await?,
        None,
        "set_if_not_exists with a 1 µs TTL, 1 ms later"
    );
    ensure!(
        a.set_if_not_exists("sinx", b"again", None).await?,
        "set_if_not_exists with a 1 µs TTL still present 1 ms later"
    );
    ensure_eq!(
        a.get_list("list").await?,
        Vec::<Vec<u8>>::new(),
        "list appended with a 1 µs TTL, 1 ms later"
    );
    ensure!(
        a.acquire_lock("acquired", LONG_TTL).await?.is_some(),
        "a lock taken with a 1 µs TTL still held 1 ms later"
    );
    ensure!(
        a.acquire_lock("extended", LONG_TTL).await?.is_some(),
        "a lock extended by 1 µs still held 1 ms later (the extend must shorten it)"
    );
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

/// Rules 2 and 9 in the contract's own numbers rather than through `validate::` constants,
/// so a limit that drifts (a constant edited, a unit miscounted) fails here: keys 1024
/// bytes, values 1 MiB (1,048,576 bytes), TTLs 100 years of 365 days, `max_length` and
/// `max_size` 1,000,000. Each is accepted at its edge and refused one unit past it.
pub async fn validation_limits_are_the_contract_numbers(h: &Harness) -> CaseResult {
    const KEY_BYTES: usize = 1024;
    const VALUE_BYTES: usize = 1_048_576;
    const TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    const LEN: usize = 1_000_000;
    let a = &h.adapter;
    let entry = || QueueEntry::new(json!("m"), h.time.now_ms(), LONG_LIFETIME);

    a.set(&"k".repeat(KEY_BYTES), b"v", None).await?;
    let long_key = "k".repeat(KEY_BYTES + 1);
    let set = a.set(&long_key, b"v", None).await;
    rejected(h, set, Operation::Set, "a 1025-byte key")?;

    a.set("value", &vec![b'v'; VALUE_BYTES], None).await?;
    let set = a.set("value", &vec![b'v'; VALUE_BYTES + 1], None).await;
    rejected(h, set, Operation::Set, "a value of 1 MiB + 1 byte")?;

    a.set("ttl", b"v", Some(TTL)).await?;
    let set = a.set("ttl", b"v", Some(TTL + MS)).await;
    rejected(h, set, Operation::Set, "a TTL of 100 years + 1 ms")?;
    ensure!(
        a.acquire_lock("ttl", TTL).await?.is_some(),
        "a lock TTL of exactly 100 years was refused"
    );
    let acquire = a.acquire_lock("ttl-2", TTL + MS).await;
    rejected(
        h,
        acquire,
        Operation::AcquireLock,
        "a TTL of 100 years + 1 ms",
    )?;

    let at_edge = ListOptions::new().max_length(LEN);
    a.append_to_list("list", b"v", at_edge).await?;
    let past = ListOptions::new().max_length(LEN + 1);
    let append = a.append_to_list("list", b"v", past).await;
    rejected(h, append, Operation::AppendToList, "max_length 1,000,001")?;

    ensure_eq!(
        a.enqueue("queue", entry(), LEN).await?,
        1,
        "enqueue at max_size 1,000,000"
    );
    let enqueue = a.enqueue("queue", entry(), LEN + 1).await;
    rejected(h, enqueue, Operation::Enqueue, "max_size 1,000,001")?;
    ensure_eq!(
        a.queue_depth("queue").await?,
        1,
        "the refused enqueue stored nothing"
    );

    // Queue timestamps: i64::MAX milliseconds is the last valid instant (rule 2).
    let last = QueueEntry {
        enqueued_at: i64::MAX as u64,
        expires_at: i64::MAX as u64,
        message: json!("last"),
    };
    let depth = a.enqueue("timestamps", last.clone(), 10).await?;
    ensure_eq!(depth, 1, "enqueue of an entry stamped i64::MAX ms");
    for (what, past) in [
        (
            "expires_at i64::MAX + 1",
            QueueEntry {
                expires_at: i64::MAX as u64 + 1,
                ..last.clone()
            },
        ),
        (
            "enqueued_at i64::MAX + 1",
            QueueEntry {
                enqueued_at: i64::MAX as u64 + 1,
                ..last.clone()
            },
        ),
    ] {
        let enqueue = a.enqueue("timestamps", past, 10).await;
        rejected(h, enqueue, Operation::Enqueue, what)?;
    }
    let depth = a.queue_depth("timestamps").await?;
    ensure_eq!(depth, 1, "the refused entries stored nothing");
    Ok(())
}
