//! Queues: per-thread FIFO with size cap and per-entry expiry (rule 7).

use std::collections::HashSet;
use std::time::Duration;

use chat_state_core::QueueEntry;
use serde_json::json;

use super::support::{LONG_LIFETIME, MS, expire, just_before_expiry, short_ttl};
use crate::{CaseResult, Failure, Harness, concurrently, ensure, ensure_eq};

fn entry(h: &Harness, n: u64) -> QueueEntry {
    QueueEntry::new(json!({"n": n}), h.time.now_ms(), LONG_LIFETIME)
}

fn number(e: &QueueEntry) -> Option<u64> {
    e.message.get("n").and_then(|n| n.as_u64())
}

async fn drain(h: &Harness, thread: &str) -> Result<Vec<u64>, Failure> {
    let mut out = Vec::new();
    while let Some(e) = h.adapter.dequeue(thread).await? {
        out.push(number(&e).ok_or_else(|| Failure::new(format!("unexpected entry {e:?}")))?);
        if out.len() > 10_000 {
            return Err(Failure::new("dequeue never returned None"));
        }
    }
    Ok(out)
}

/// Section 3 and rule 7: enqueue returns the depth after the append.
pub async fn queue_enqueue_returns_depth(h: &Harness) -> CaseResult {
    for n in 1..=5 {
        let depth = h.adapter.enqueue("t", entry(h, n), 10).await?;
        ensure_eq!(depth, n as usize, "depth after enqueue {n}");
    }
    ensure_eq!(h.adapter.queue_depth("t").await?, 5, "queue_depth");
    Ok(())
}

/// Section 3 and rule 7: dequeue returns entries oldest first.
pub async fn queue_fifo_order(h: &Harness) -> CaseResult {
    for n in 1..=5 {
        h.adapter.enqueue("t", entry(h, n), 10).await?;
    }
    ensure_eq!(drain(h, "t").await?, vec![1, 2, 3, 4, 5], "dequeue order");
    Ok(())
}

/// Section 3: dequeue of a missing or drained queue gives `None`.
pub async fn queue_dequeue_empty_and_missing_gives_none(h: &Harness) -> CaseResult {
    ensure_eq!(h.adapter.dequeue("missing").await?, None, "missing queue");
    h.adapter.enqueue("t", entry(h, 1), 10).await?;
    ensure!(h.adapter.dequeue("t").await?.is_some(), "the one entry");
    ensure_eq!(h.adapter.dequeue("t").await?, None, "drained queue");
    ensure_eq!(h.adapter.dequeue("t").await?, None, "drained queue, again");
    Ok(())
}

/// Section 3: the depth of a missing queue is 0.
pub async fn queue_depth_zero_when_missing(h: &Harness) -> CaseResult {
    ensure_eq!(
        h.adapter.queue_depth("missing").await?,
        0,
        "depth of a missing queue"
    );
    Ok(())
}

/// `queue_depth` follows enqueues and dequeues, and does not consume.
pub async fn queue_depth_tracks_dequeues(h: &Harness) -> CaseResult {
    for n in 1..=3 {
        h.adapter.enqueue("t", entry(h, n), 10).await?;
    }
    ensure_eq!(h.adapter.queue_depth("t").await?, 3, "depth");
    ensure_eq!(h.adapter.queue_depth("t").await?, 3, "depth read twice");
    h.adapter.dequeue("t").await?;
    ensure_eq!(
        h.adapter.queue_depth("t").await?,
        2,
        "depth after one dequeue"
    );
    drain(h, "t").await?;
    ensure_eq!(h.adapter.queue_depth("t").await?, 0, "depth after draining");
    Ok(())
}

/// Rule 7: enqueue beyond `max_size` drops the oldest and returns the capped depth.
pub async fn queue_trim_keeps_newest(h: &Harness) -> CaseResult {
    for n in 1..=12 {
        let depth = h.adapter.enqueue("t", entry(h, n), 10).await?;
        ensure_eq!(depth, (n as usize).min(10), "depth after enqueue {n}");
    }
    ensure_eq!(
        drain(h, "t").await?,
        (3..=12).collect::<Vec<_>>(),
        "the newest 10"
    );
    Ok(())
}

/// Section 3: `max_size` 1 keeps only the latest entry.
pub async fn queue_max_size_one_keeps_latest(h: &Harness) -> CaseResult {
    for n in 1..=3 {
        ensure_eq!(
            h.adapter.enqueue("t", entry(h, n), 1).await?,
            1,
            "depth with max_size 1"
        );
    }
    ensure_eq!(drain(h, "t").await?, vec![3], "the latest entry");
    Ok(())
}

/// Section 3: queues are isolated per thread.
pub async fn queue_isolation_per_thread(h: &Harness) -> CaseResult {
    h.adapter.enqueue("slack:C1:1.1", entry(h, 1), 10).await?;
    h.adapter.enqueue("slack:C1:1.2", entry(h, 2), 10).await?;
    h.adapter.enqueue("slack:C1:1.2", entry(h, 3), 10).await?;
    ensure_eq!(h.adapter.queue_depth("slack:C1").await?, 0, "prefix thread");
    ensure_eq!(drain(h, "slack:C1:1.1").await?, vec![1], "thread 1.1");
    ensure_eq!(drain(h, "slack:C1:1.2").await?, vec![2, 3], "thread 1.2");
    Ok(())
}

/// Rules 1 and 7: an entry is live while `now < expires_at`; from then on it is neither
/// counted nor dequeued, while a live entry behind it still is.
pub async fn queue_expired_entries_skipped_and_not_counted(h: &Harness) -> CaseResult {
    let life = short_ttl(h);
    let now = h.time.now_ms();
    h.adapter
        .enqueue("t", QueueEntry::new(json!({"n": 1}), now, life), 10)
        .await?;
    h.adapter.enqueue("t", entry(h, 2), 10).await?;
    let checked = just_before_expiry(h, life).await;
    if checked {
        ensure_eq!(
            h.adapter.queue_depth("t").await?,
            2,
            "depth 1 ms before expiry"
        );
    }
    expire(h, life, checked).await;
    ensure_eq!(
        h.adapter.queue_depth("t").await?,
        1,
        "expired entry counted"
    );
    ensure_eq!(drain(h, "t").await?, vec![2], "dequeued entries");
    Ok(())
}

/// Rule 7: enqueue's returned depth does not count expired entries.
pub async fn queue_enqueue_depth_ignores_expired(h: &Harness) -> CaseResult {
    let life = short_ttl(h);
    for n in 1..=3 {
        let e = QueueEntry::new(json!({"n": n}), h.time.now_ms(), life);
        h.adapter.enqueue("t", e, 10).await?;
    }
    expire(h, life, false).await;
    ensure_eq!(
        h.adapter.enqueue("t", entry(h, 4), 10).await?,
        1,
        "depth returned after three entries expired"
    );
    Ok(())
}

/// Rule 7: expired entries do not take room: with `max_size` 2, an expired entry must not
/// push out a live one.
pub async fn queue_expired_entries_do_not_count_toward_max_size(h: &Harness) -> CaseResult {
    let life = short_ttl(h);
    let now = h.time.now_ms();
    h.adapter
        .enqueue("t", QueueEntry::new(json!({"n": 1}), now, life), 2)
        .await?;
    h.adapter.enqueue("t", entry(h, 2), 2).await?;
    expire(h, life, false).await;
    ensure_eq!(h.adapter.enqueue("t", entry(h, 3), 2).await?, 2, "depth");
    ensure_eq!(drain(h, "t").await?, vec![2, 3], "live entries kept");
    Ok(())
}

/// Rule 7: an entry with `expires_at <= now` is dead on arrival: not counted, never returned.
pub async fn queue_entry_dead_on_arrival_not_counted(h: &Harness) -> CaseResult {
    let now = h.time.now_ms();
    let dead = QueueEntry {
        enqueued_at: now.saturating_sub(90_000),
        expires_at: now,
        message: json!({"n": 1}),
    };
    ensure_eq!(
        h.adapter.enqueue("t", dead, 10).await?,
        0,
        "depth after a dead entry"
    );
    ensure_eq!(h.adapter.queue_depth("t").await?, 0, "queue_depth");
    ensure_eq!(h.adapter.dequeue("t").await?, None, "dequeue");
    Ok(())
}

/// Rule 7: the expiry instant itself is dead (`expires_at <= now`), exact on a manual clock.
pub async fn queue_entry_expires_at_boundary(h: &Harness) -> CaseResult {
    if !h.time.is_manual() {
        return Err(Failure::skip("exact expiry boundaries need a manual clock"));
    }
    let now = h.time.now_ms();
    let e = QueueEntry::new(json!({"n": 1}), now, Duration::from_secs(5));
    h.adapter.enqueue("t", e.clone(), 10).await?;
    h.adapter.enqueue("u", e, 10).await?;
    h.time.advance(Duration::from_secs(5) - MS).await;
    ensure!(
        h.adapter.dequeue("t").await?.is_some(),
        "entry 1 ms before its expiry"
    );
    h.time.advance(MS).await;
    ensure_eq!(
        h.adapter.dequeue("u").await?,
        None,
        "entry at its expiry instant"
    );
    Ok(())
}

/// Rule 7: entries round-trip exactly (timestamps and arbitrary JSON messages).
pub async fn queue_entries_round_trip_exactly(h: &Harness) -> CaseResult {
    let now = h.time.now_ms();
    let entries = [
        QueueEntry {
            enqueued_at: now - 1,
            expires_at: now + 90_000,
            message: json!({
                "id": "m1",
                "text": "héllo \"world\" \u{1F9F5}\n\t\\",
                "author": {"id": "U1", "isBot": false, "roles": []},
                "attachments": [{"size": 12345, "ratio": 0.5}],
                "big": u64::MAX,
                "negative": i64::MIN,
                "nothing": null,
            }),
        },
        QueueEntry {
            enqueued_at: now,
            expires_at: now + 1_000_000_000,
            message: json!({}),
        },
        QueueEntry {
            enqueued_at: 0,
            expires_at: now + 5_000,
            message: json!([1, "two", {"three": 3.25}]),
        },
    ];
    for e in &entries {
        h.adapter.enqueue("t", e.clone(), 10).await?;
    }
    for (i, e) in entries.iter().enumerate() {
        ensure_eq!(h.adapter.dequeue("t").await?, Some(e.clone()), "entry {i}");
    }
    Ok(())
}

/// Rule 7: concurrent dequeuers never receive the same entry, and together receive all.
pub async fn queue_concurrent_dequeuers_no_duplicates(h: &Harness) -> CaseResult {
    let total = 120u64;
    for n in 0..total {
        h.adapter.enqueue("t", entry(h, n), 1000).await?;
    }
    let results = concurrently(8, |_| {
        let a = h.adapter.clone();
        async move {
            let mut got = Vec::new();
            while let Some(e) = a.dequeue("t").await? {
                got.push(e.message.get("n").and_then(|n| n.as_u64()));
            }
            Ok::<_, chat_state_core::Error>(got)
        }
    })
    .await?;
    let mut seen = HashSet::new();
    for r in results {
        for n in r? {
            let n = n.ok_or_else(|| Failure::new("dequeued an entry that was never enqueued"))?;
            ensure!(seen.insert(n), "entry {n} was delivered twice");
        }
    }
    ensure_eq!(seen.len(), total as usize, "entries delivered");
    Ok(())
}

/// Concurrent enqueuers lose nothing; each enqueuer's entries stay in its order.
pub async fn queue_concurrent_enqueuers_all_kept(h: &Harness) -> CaseResult {
    let results = concurrently(8, |i| {
        let a = h.adapter.clone();
        let now = h.time.now_ms();
        async move {
            for j in 0..5u64 {
                let e = QueueEntry::new(json!({"n": i as u64 * 100 + j}), now, LONG_LIFETIME);
                a.enqueue("t", e, 1000).await?;
            }
            Ok::<(), chat_state_core::Error>(())
        }
    })
    .await?;
    for r in results {
        r?;
    }
    ensure_eq!(
        h.adapter.queue_depth("t").await?,
        40,
        "depth after 8 × 5 enqueues"
    );
    let got = drain(h, "t").await?;
    for i in 0..8u64 {
        let mine: Vec<u64> = got.iter().copied().filter(|n| n / 100 == i).collect();
        let expected: Vec<u64> = (0..5).map(|j| i * 100 + j).collect();
        ensure_eq!(mine, expected, "enqueuer {i}'s entries");
    }
    Ok(())
}

/// Rule 7: a dead entry takes no room wherever it sits: with `max_size` 2, an entry that
/// expired *behind* a live one must not push that older live entry out.
pub async fn queue_expired_entry_among_live_ones_takes_no_room(h: &Harness) -> CaseResult {
    let life = short_ttl(h);
    h.adapter.enqueue("t", entry(h, 1), 2).await?;
    let short = QueueEntry::new(json!({"n": 2}), h.time.now_ms(), life);
    h.adapter.enqueue("t", short, 2).await?;
    expire(h, life, false).await;
    ensure_eq!(h.adapter.enqueue("t", entry(h, 3), 2).await?, 2, "depth");
    ensure_eq!(
        drain(h, "t").await?,
        vec![1, 3],
        "live entries kept (the expired one took room)"
    );
    Ok(())
}
