//! The native dispatch operations (admit, release_or_next, set_fenced, and the combined
//! admit-and-read and release_or_next_with) against real `redis-server`s: every outcome, the key layout a TypeScript bot shares, concurrency, one
//! round trip per operation (counted with `MONITOR`), and the same on a 3-master cluster.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use chat_state_core::dispatch::{DEDUPE_VALUE, is_stale};
use chat_state_core::{
    Admission, Admit, Cache, Clock, Dispatch, ErrorKind, FencedSet, FencedWrite, Handoff, Lock,
    Locks, QueueEntry, Queues, Subscriptions, SystemClock,
};
use chat_state_redis::{RedisBackend, RedisState};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

mod support;

const LONG: Duration = Duration::from_secs(90);

/// An adapter with the default prefix, upstream's `chat-sdk`, so the layout checks read the
/// keys a TypeScript bot reads; and a raw connection for them.
async fn setup(server: &support::RedisServer) -> (RedisState, MultiplexedConnection) {
    let state = RedisBackend::connect(&server.url()).await.expect("connect");
    let raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    (state, raw)
}

fn now() -> u64 {
    SystemClock.now_ms()
}

fn entry(n: u64, lifetime: Duration) -> QueueEntry {
    QueueEntry::new(json!({ "n": n }), now(), lifetime)
}

fn queued(thread: &str, dedupe: &str, entry: QueueEntry, max: usize) -> Admit<'static> {
    // Leaked: test-only, a handful of short strings, so `Admit` can borrow them for 'static.
    let (thread, dedupe) = (
        &*Box::leak(thread.to_owned().into_boxed_str()),
        &*Box::leak(dedupe.to_owned().into_boxed_str()),
    );
    Admit::new(thread, dedupe).queue_when_busy(entry, max)
}

async fn admitted(state: &RedisState, message: &Admit<'_>) -> (Lock, bool) {
    match state.admit(message).await.expect("admit") {
        Admission::Admitted {
            lock, subscribed, ..
        } => (lock, subscribed),
        other => panic!("expected Admitted, got {other:?}"),
    }
}

fn message_n(entry: &QueueEntry) -> u64 {
    entry.message["n"].as_u64().expect("n")
}

#[tokio::test]
async fn admit_every_outcome_and_the_typescript_layout() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    state.subscribe("slack:C1:t1").await.unwrap();

    // New message, free thread: claimed with `true` for the dedupe TTL, lock taken for the
    // lock TTL, subscription read.
    let message = Admit::new("slack:C1:t1", "dedupe:slack:m1")
        .dedupe_ttl(Duration::from_secs(600))
        .lock_ttl(Duration::from_secs(30));
    let (holder, subscribed) = admitted(&state, &message).await;
    assert!(subscribed);
    assert!(holder.fence >= 1);
    let claim: Vec<u8> = raw.get("chat-sdk:cache:dedupe:slack:m1").await.unwrap();
    assert_eq!(claim, DEDUPE_VALUE);
    let pttl: i64 = raw.pttl("chat-sdk:cache:dedupe:slack:m1").await.unwrap();
    assert!((590_000..=600_000).contains(&pttl), "dedupe pttl {pttl}");
    let token: String = raw.get("chat-sdk:lock:slack:C1:t1").await.unwrap();
    assert_eq!(token, holder.token);
    let pttl: i64 = raw.pttl("chat-sdk:lock:slack:C1:t1").await.unwrap();
    assert!((29_000..=30_000).contains(&pttl), "lock pttl {pttl}");
    let fence: u64 = raw.get("chat-sdk:fence:slack:C1:t1").await.unwrap();
    assert_eq!(fence, holder.fence);
    // A TypeScript bot's dedupe `setIfNotExists` and our plain `get` see the claim.
    assert_eq!(
        state.get("dedupe:slack:m1").await.unwrap().as_deref(),
        Some(DEDUPE_VALUE)
    );

    // The same message again: duplicate, and nothing changed (no queue, same lock, same fence).
    let again = queued("slack:C1:t1", "dedupe:slack:m1", entry(1, LONG), 10);
    assert_eq!(state.admit(&again).await.unwrap(), Admission::Duplicate);
    let token: String = raw.get("chat-sdk:lock:slack:C1:t1").await.unwrap();
    assert_eq!(token, holder.token);
    let fence: u64 = raw.get("chat-sdk:fence:slack:C1:t1").await.unwrap();
    assert_eq!(fence, holder.fence);
    assert_eq!(state.queue_depth("slack:C1:t1").await.unwrap(), 0);

    // Busy thread, drop: dropped, but marked as seen.
    let dropped = Admit::new("slack:C1:t1", "dedupe:slack:m2");
    assert_eq!(state.admit(&dropped).await.unwrap(), Admission::Dropped);
    assert!(state.get("dedupe:slack:m2").await.unwrap().is_some());
    assert_eq!(state.admit(&dropped).await.unwrap(), Admission::Duplicate);
    assert_eq!(state.queue_depth("slack:C1:t1").await.unwrap(), 0);

    // Busy thread, queue: the upstream entry JSON under the upstream queue key, depth counted.
    let first = entry(1, LONG);
    let message = queued("slack:C1:t1", "dedupe:slack:m3", first.clone(), 10);
    assert_eq!(
        state.admit(&message).await.unwrap(),
        Admission::Queued { depth: 1 }
    );
    let stored: Vec<String> = raw
        .lrange("chat-sdk:queue:slack:C1:t1", 0, -1)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    let json: Value = serde_json::from_str(&stored[0]).unwrap();
    assert_eq!(
        json,
        json!({"enqueuedAt": first.enqueued_at, "expiresAt": first.expires_at, "message": {"n": 1}})
    );
    let pttl: i64 = raw.pttl("chat-sdk:queue:slack:C1:t1").await.unwrap();
    assert!(
        pttl > 90_000,
        "queue key expires after its last entry: {pttl}"
    );
    // Plain dequeue (ours, and so a TypeScript bot's LPOP) reads it.
    assert_eq!(state.dequeue("slack:C1:t1").await.unwrap(), Some(first));

    // Trimming as enqueue trims: the newest `max` live entries stay, expired ones are dropped
    // and not counted.
    let dead = json!({"enqueuedAt": 1, "expiresAt": 2, "message": "dead"}).to_string();
    let _: () = raw
        .rpush("chat-sdk:queue:slack:C1:t1", &dead)
        .await
        .unwrap();
    for n in 10..13 {
        let message = queued("slack:C1:t1", &format!("dedupe:q{n}"), entry(n, LONG), 2);
        let depth = (n - 9).min(2) as usize;
        assert_eq!(
            state.admit(&message).await.unwrap(),
            Admission::Queued { depth },
            "entry {n}"
        );
    }
    let stored: Vec<String> = raw
        .lrange("chat-sdk:queue:slack:C1:t1", 0, -1)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(!stored.contains(&dead));
    assert_eq!(
        message_n(&state.dequeue("slack:C1:t1").await.unwrap().unwrap()),
        11
    );
    assert_eq!(
        message_n(&state.dequeue("slack:C1:t1").await.unwrap().unwrap()),
        12
    );

    // Unsubscribed thread: admitted, not subscribed.
    let (other, subscribed) = admitted(&state, &Admit::new("slack:C1:t2", "dedupe:slack:m9")).await;
    assert!(!subscribed);

    // A live claim on a free thread: duplicate, and the lock stays free.
    state.force_release_lock("slack:C1:t2").await.unwrap();
    state.set("dedupe:seen", b"true", None).await.unwrap();
    assert_eq!(
        state
            .admit(&Admit::new("slack:C1:t2", "dedupe:seen"))
            .await
            .unwrap(),
        Admission::Duplicate
    );
    let exists: bool = raw.exists("chat-sdk:lock:slack:C1:t2").await.unwrap();
    assert!(!exists, "a duplicate must not take the lock");

    // Fences strictly increase across admit and acquire_lock (one counter).
    let by_acquire = state
        .acquire_lock("slack:C1:t2", LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(by_acquire.fence > other.fence);
    state.release_lock(&by_acquire).await.unwrap();
    let (by_admit, _) = admitted(&state, &Admit::new("slack:C1:t2", "dedupe:slack:m10")).await;
    assert!(by_admit.fence > by_acquire.fence);
}

#[tokio::test]
async fn admit_claim_expires_with_its_ttl() {
    let server = support::RedisServer::start();
    let (state, _raw) = setup(&server).await;
    let message = Admit::new("t", "dedupe:m").dedupe_ttl(Duration::from_millis(300));
    let (lock, _) = admitted(&state, &message).await;
    state.release_lock(&lock).await.unwrap();
    assert_eq!(state.admit(&message).await.unwrap(), Admission::Duplicate);
    tokio::time::sleep(Duration::from_millis(450)).await;
    admitted(&state, &message).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_admits_of_one_message_admit_or_queue_it_once() {
    let server = support::RedisServer::start();
    let (state, _raw) = setup(&server).await;
    let state = Arc::new(state);
    let run = |dedupe: &'static str| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let state = state.clone();
                tokio::spawn(async move {
                    let message = queued("t", dedupe, entry(i, LONG), 10);
                    state.admit(&message).await.unwrap()
                })
            })
            .collect();
        futures::future::join_all(handles)
    };

    // Free thread: one admitted, fifteen duplicates.
    let outcomes: Vec<Admission> = run("dedupe:one")
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<&Admission> = outcomes
        .iter()
        .filter(|o| **o != Admission::Duplicate)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(matches!(winners[0], Admission::Admitted { .. }));
    assert_eq!(state.queue_depth("t").await.unwrap(), 0);

    // Busy thread: one queued, fifteen duplicates, one entry in the queue.
    let outcomes: Vec<Admission> = run("dedupe:two")
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<&Admission> = outcomes
        .iter()
        .filter(|o| **o != Admission::Duplicate)
        .collect();
    assert_eq!(winners, [&Admission::Queued { depth: 1 }], "{outcomes:?}");
    assert_eq!(state.queue_depth("t").await.unwrap(), 1);
}

/// Holds `thread` by admitting a first message, then queues `entries` behind it.
async fn hold_with_queue(state: &RedisState, thread: &str, entries: &[QueueEntry]) -> Lock {
    let (lock, _) = admitted(state, &Admit::new(thread, &format!("dedupe:{thread}:0"))).await;
    for (i, e) in entries.iter().enumerate() {
        let message = queued(thread, &format!("dedupe:{thread}:{}", i + 1), e.clone(), 10);
        assert!(matches!(
            state.admit(&message).await.unwrap(),
            Admission::Queued { .. }
        ));
    }
    lock
}

#[tokio::test]
async fn release_or_next_hands_over_in_order_skipping_expired_entries() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let short = Duration::from_millis(300);
    let entries = [
        entry(1, LONG),
        entry(2, short),
        entry(3, LONG),
        entry(4, short),
        entry(5, LONG),
    ];
    let mut lock = hold_with_queue(&state, "t", &entries).await;
    // Entries written by a TypeScript bot (plain enqueue) are handed over the same way.
    state.enqueue("t", entry(6, LONG), 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;

    let before = lock.expires_at;
    let mut seen = Vec::new();
    loop {
        match state
            .release_or_next(&mut lock, Duration::from_secs(20))
            .await
            .unwrap()
        {
            Handoff::Next(e) => {
                // The lock now expires 20 s from the call (it was taken for 30 s).
                let pttl: i64 = raw.pttl("chat-sdk:lock:t").await.unwrap();
                assert!((19_000..=20_000).contains(&pttl), "lock pttl {pttl}");
                seen.push(message_n(&e));
            }
            Handoff::Released => break,
            Handoff::NotHolder => panic!("the holder lost the lock"),
        }
    }
    assert_eq!(seen, [1, 3, 5, 6]);
    assert!(lock.expires_at < before, "expires_at follows the 20 s TTL");
    // Released: the lock is gone (another caller takes it), the expired entries with the queue.
    let exists: bool = raw.exists("chat-sdk:lock:t").await.unwrap();
    assert!(!exists);
    let len: usize = raw.llen("chat-sdk:queue:t").await.unwrap();
    assert_eq!(len, 0);
    assert!(state.acquire_lock("t", LONG).await.unwrap().is_some());
}

#[tokio::test]
async fn release_or_next_by_a_stale_holder_changes_nothing() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let mut old = hold_with_queue(&state, "t", &[entry(1, LONG), entry(2, LONG)]).await;
    let before: Vec<String> = raw.lrange("chat-sdk:queue:t", 0, -1).await.unwrap();

    // Taken over: the old holder's token is no longer the lock's.
    state.force_release_lock("t").await.unwrap();
    let new = state.acquire_lock("t", LONG).await.unwrap().unwrap();
    let expires_at = old.expires_at;
    assert_eq!(
        state.release_or_next(&mut old, LONG).await.unwrap(),
        Handoff::NotHolder
    );
    assert_eq!(old.expires_at, expires_at);
    let after: Vec<String> = raw.lrange("chat-sdk:queue:t", 0, -1).await.unwrap();
    assert_eq!(after, before, "the queue was touched");
    let token: String = raw.get("chat-sdk:lock:t").await.unwrap();
    assert_eq!(token, new.token, "the new holder's lock was touched");

    // Expired with nobody holding: NotHolder, queue untouched, lock not re-created.
    state.release_lock(&new).await.unwrap();
    assert_eq!(
        state.release_or_next(&mut old, LONG).await.unwrap(),
        Handoff::NotHolder
    );
    let after: Vec<String> = raw.lrange("chat-sdk:queue:t", 0, -1).await.unwrap();
    assert_eq!(after, before);
    let exists: bool = raw.exists("chat-sdk:lock:t").await.unwrap();
    assert!(!exists);

    // A holder whose lock ran out of TTL is not the holder either.
    let mut short = state
        .acquire_lock("t", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        state.release_or_next(&mut short, LONG).await.unwrap(),
        Handoff::NotHolder
    );
    assert_eq!(state.queue_depth("t").await.unwrap(), 2);
}

#[tokio::test]
async fn release_or_next_reports_a_corrupt_entry_and_keeps_the_lock() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let mut lock = hold_with_queue(&state, "t", &[]).await;
    let _: () = raw.rpush("chat-sdk:queue:t", "not json").await.unwrap();
    state.enqueue("t", entry(7, LONG), 10).await.unwrap();

    let err = state.release_or_next(&mut lock, LONG).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
    assert!(err.to_string().contains("not json"), "{err}");
    // Removed, so it cannot block the queue; the lock is still ours, and the drain goes on.
    let token: String = raw.get("chat-sdk:lock:t").await.unwrap();
    assert_eq!(token, lock.token);
    match state.release_or_next(&mut lock, LONG).await.unwrap() {
        Handoff::Next(e) => assert_eq!(message_n(&e), 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        state.release_or_next(&mut lock, LONG).await.unwrap(),
        Handoff::Released
    );
}

fn lock_of(thread: &str, fence: u64) -> Lock {
    // set_fenced compares fences only; it does not check that the writer holds the lock.
    Lock {
        thread_id: thread.into(),
        token: "0123456789abcdef0123456789abcdef".into(),
        expires_at: now() + 60_000,
        fence,
    }
}

#[tokio::test]
async fn set_fenced_refuses_stale_writers_only() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let old = state.acquire_lock("t", LONG).await.unwrap().unwrap();
    assert_eq!(
        state.set_fenced(&old, "k", b"\"old\"", None).await.unwrap(),
        FencedWrite::Stored
    );
    // Written as `set` writes it (a TypeScript bot reads it) and the record beside it.
    let value: String = raw.get("chat-sdk:cache:k").await.unwrap();
    assert_eq!(value, "\"old\"");
    let record: String = raw.get("chat-sdk:fenced:k").await.unwrap();
    assert_eq!(record, format!("{}:t", old.fence));

    state.force_release_lock("t").await.unwrap();
    let new = state.acquire_lock("t", LONG).await.unwrap().unwrap();
    assert!(new.fence > old.fence);
    assert_eq!(
        state.set_fenced(&new, "k", b"\"new\"", None).await.unwrap(),
        FencedWrite::Stored
    );
    // The paused old holder: refused, nothing changed.
    assert_eq!(
        state
            .set_fenced(&old, "k", b"\"stale\"", None)
            .await
            .unwrap(),
        FencedWrite::Stale
    );
    assert_eq!(
        state.get("k").await.unwrap().as_deref(),
        Some(&b"\"new\""[..])
    );
    let record: String = raw.get("chat-sdk:fenced:k").await.unwrap();
    assert_eq!(record, format!("{}:t", new.fence));
    // The same fence again: stored.
    assert_eq!(
        state
            .set_fenced(&new, "k", b"\"new2\"", None)
            .await
            .unwrap(),
        FencedWrite::Stored
    );
    // Plain set and delete leave the record: the stale writer is still refused after them.
    state.set("k", b"\"plain\"", None).await.unwrap();
    state.delete("k").await.unwrap();
    let record: String = raw.get("chat-sdk:fenced:k").await.unwrap();
    assert_eq!(record, format!("{}:t", new.fence));
    assert_eq!(
        state
            .set_fenced(&old, "k", b"\"stale\"", None)
            .await
            .unwrap(),
        FencedWrite::Stale
    );
    assert_eq!(state.get("k").await.unwrap(), None);
    // Another lock id's fences are not comparable: a lower fence of another lock is stored,
    // and then the old holder of `t` is no longer refused either.
    let other = lock_of("other", 1);
    assert_eq!(
        state
            .set_fenced(&other, "k", b"\"other\"", None)
            .await
            .unwrap(),
        FencedWrite::Stored
    );
    assert_eq!(
        state
            .set_fenced(&old, "k", b"\"old again\"", None)
            .await
            .unwrap(),
        FencedWrite::Stored
    );
}

#[tokio::test]
async fn set_fenced_follows_is_stale_over_the_whole_fence_range() {
    let server = support::RedisServer::start();
    let (state, _raw) = setup(&server).await;
    // Around 2^53, where Lua's doubles would round, and the ends of the u64 range.
    let fences = [
        0,
        1,
        9,
        10,
        11,
        1 << 53,
        (1 << 53) + 1,
        u64::MAX - 1,
        u64::MAX,
    ];
    let ids = ["t", "u"];
    let mut case = 0;
    for first_id in ids {
        for &first in &fences {
            for &second in &fences {
                case += 1;
                let key = format!("k{case}");
                let (a, b) = (lock_of(first_id, first), lock_of("t", second));
                assert_eq!(
                    state.set_fenced(&a, &key, b"1", None).await.unwrap(),
                    FencedWrite::Stored
                );
                let expected = if is_stale(Some((first_id, first)), &b) {
                    FencedWrite::Stale
                } else {
                    FencedWrite::Stored
                };
                assert_eq!(
                    state.set_fenced(&b, &key, b"2", None).await.unwrap(),
                    expected,
                    "record ({first_id}, {first}), writer (t, {second})"
                );
            }
        }
    }
}

#[tokio::test]
async fn set_fenced_record_lives_as_long_as_the_value() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let (old, new) = (lock_of("t", 1), lock_of("t", 2));
    assert_eq!(
        state
            .set_fenced(&new, "k", b"1", Some(Duration::from_millis(400)))
            .await
            .unwrap(),
        FencedWrite::Stored
    );
    for key in ["chat-sdk:cache:k", "chat-sdk:fenced:k"] {
        let pttl: i64 = raw.pttl(key).await.unwrap();
        assert!((1..=400).contains(&pttl), "{key}: {pttl}");
    }
    assert_eq!(
        state.set_fenced(&old, "k", b"0", None).await.unwrap(),
        FencedWrite::Stale
    );
    tokio::time::sleep(Duration::from_millis(550)).await;
    // The record is gone with the value: nothing is left to refuse a write.
    assert_eq!(state.get("k").await.unwrap(), None);
    assert_eq!(
        state.set_fenced(&old, "k", b"0", None).await.unwrap(),
        FencedWrite::Stored
    );
    // Without a TTL both persist, also over a record that had one.
    for ttl in [Some(Duration::from_secs(60)), None] {
        assert_eq!(
            state.set_fenced(&new, "k", b"1", ttl).await.unwrap(),
            FencedWrite::Stored
        );
    }
    for key in ["chat-sdk:cache:k", "chat-sdk:fenced:k"] {
        let pttl: i64 = raw.pttl(key).await.unwrap();
        assert_eq!(pttl, -1, "{key}");
    }
}

#[tokio::test]
async fn set_fenced_reports_a_foreign_record_as_corrupt() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let lock = lock_of("t", 5);
    let _: () = raw.set("chat-sdk:cache:k", "\"v\"").await.unwrap();
    for (record, what) in [
        ("garbage", "not a record"),
        (":t", "no fence"),
        ("x:t", "bad fence"),
    ] {
        let _: () = raw.set("chat-sdk:fenced:k", record).await.unwrap();
        let err = state.set_fenced(&lock, "k", b"1", None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptData, "{what}: {err}");
        let value: String = raw.get("chat-sdk:cache:k").await.unwrap();
        assert_eq!(value, "\"v\"", "{what}: nothing written");
    }
    let _: () = raw.del("chat-sdk:fenced:k").await.unwrap();
    let _: () = raw.hset("chat-sdk:fenced:k", "f", "v").await.unwrap();
    let err = state.set_fenced(&lock, "k", b"1", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
}

/// Admits `message` (which has a read key) and returns its lock and the value read.
async fn admitted_reading(state: &RedisState, message: &Admit<'_>) -> (Lock, Option<Vec<u8>>) {
    match state.admit(message).await.expect("admit") {
        Admission::Admitted { lock, read, .. } => (lock, read),
        other => panic!("expected Admitted, got {other:?}"),
    }
}

#[tokio::test]
async fn admit_and_read_returns_the_value_only_when_admitted() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    state.subscribe("t").await.unwrap();
    state
        .set("thread-state:t", b"{\"turns\":1}", Some(LONG))
        .await
        .unwrap();

    // Admitted: the value, and everything a plain admit does.
    let message = Admit::new("t", "dedupe:1").read("thread-state:t");
    match state.admit(&message).await.unwrap() {
        Admission::Admitted {
            lock,
            subscribed,
            read,
        } => {
            assert!(subscribed);
            assert_eq!(read.as_deref(), Some(&b"{\"turns\":1}"[..]));
            let token: String = raw.get("chat-sdk:lock:t").await.unwrap();
            assert_eq!(token, lock.token);
        }
        other => panic!("expected Admitted, got {other:?}"),
    }
    // Duplicate, dropped, queued: no value (the variants carry none), the usual effects.
    assert_eq!(state.admit(&message).await.unwrap(), Admission::Duplicate);
    let dropped = Admit::new("t", "dedupe:2").read("thread-state:t");
    assert_eq!(state.admit(&dropped).await.unwrap(), Admission::Dropped);
    let queue = queued("t", "dedupe:3", entry(1, LONG), 10).read("thread-state:t");
    assert_eq!(
        state.admit(&queue).await.unwrap(),
        Admission::Queued { depth: 1 }
    );
    assert_eq!(state.queue_depth("t").await.unwrap(), 1);

    // A missing key reads as nothing; the dedupe key itself reads as the claim just stored.
    let (_, read) = admitted_reading(&state, &Admit::new("u", "dedupe:4").read("missing")).await;
    assert_eq!(read, None);
    let (_, read) = admitted_reading(&state, &Admit::new("v", "dedupe:5").read("dedupe:5")).await;
    assert_eq!(read.as_deref(), Some(DEDUPE_VALUE));
    // A fenced write is read back as written.
    let (lock, _) = admitted(&state, &Admit::new("w", "dedupe:6")).await;
    assert_eq!(
        state
            .set_fenced(&lock, "thread-state:w", b"\"fenced\"", None)
            .await
            .unwrap(),
        FencedWrite::Stored
    );
    state.release_lock(&lock).await.unwrap();
    let (_, read) =
        admitted_reading(&state, &Admit::new("w", "dedupe:7").read("thread-state:w")).await;
    assert_eq!(read.as_deref(), Some(&b"\"fenced\""[..]));

    // A read key of another Redis type: CorruptData, as `get` reports it, and nothing changed
    // (no claim, no lock), so the caller is not left holding a lock it was never given.
    let _: () = raw.hset("chat-sdk:cache:hash", "f", "v").await.unwrap();
    let message = Admit::new("x", "dedupe:8").read("hash");
    let err = state.admit(&message).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
    assert_eq!(state.get("dedupe:8").await.unwrap(), None);
    let exists: bool = raw.exists("chat-sdk:lock:x").await.unwrap();
    assert!(!exists, "a failed admit must not take the lock");
}

/// The thread-state write of a turn, for `release_or_next_with`.
fn write<'a>(key: &'a str, value: &'a [u8], ttl: Option<Duration>) -> FencedSet<'a> {
    FencedSet { key, value, ttl }
}

#[tokio::test]
async fn release_or_next_with_stores_the_write_then_hands_over() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let mut lock = hold_with_queue(&state, "t", &[entry(1, LONG)]).await;

    // The write is stored as set_fenced stores it (value, record, TTL), then the next entry.
    let handoff = state
        .release_or_next_with(
            &mut lock,
            Duration::from_secs(20),
            write("thread-state:t", b"\"one\"", Some(LONG)),
        )
        .await
        .unwrap();
    match handoff {
        Handoff::Next(e) => assert_eq!(message_n(&e), 1),
        other => panic!("expected Next, got {other:?}"),
    }
    let value: String = raw.get("chat-sdk:cache:thread-state:t").await.unwrap();
    assert_eq!(value, "\"one\"");
    let record: String = raw.get("chat-sdk:fenced:thread-state:t").await.unwrap();
    assert_eq!(record, format!("{}:t", lock.fence));
    for key in [
        "chat-sdk:cache:thread-state:t",
        "chat-sdk:fenced:thread-state:t",
    ] {
        let pttl: i64 = raw.pttl(key).await.unwrap();
        assert!((89_000..=90_000).contains(&pttl), "{key}: {pttl}");
    }
    let pttl: i64 = raw.pttl("chat-sdk:lock:t").await.unwrap();
    assert!((19_000..=20_000).contains(&pttl), "lock pttl {pttl}");

    // Empty queue: stored (no TTL now), then released.
    assert_eq!(
        state
            .release_or_next_with(&mut lock, LONG, write("thread-state:t", b"\"two\"", None))
            .await
            .unwrap(),
        Handoff::Released
    );
    assert_eq!(
        state.get("thread-state:t").await.unwrap().as_deref(),
        Some(&b"\"two\""[..])
    );
    let pttl: i64 = raw.pttl("chat-sdk:fenced:thread-state:t").await.unwrap();
    assert_eq!(pttl, -1);
    let exists: bool = raw.exists("chat-sdk:lock:t").await.unwrap();
    assert!(!exists);

    // set_fenced's rules come first and alone decide the write: a holder that lost its lock
    // but whose key nobody wrote since is stored, then told it is not the holder.
    assert_eq!(
        state
            .release_or_next_with(&mut lock, LONG, write("thread-state:t", b"\"late\"", None))
            .await
            .unwrap(),
        Handoff::NotHolder
    );
    assert_eq!(
        state.get("thread-state:t").await.unwrap().as_deref(),
        Some(&b"\"late\""[..])
    );
}

#[tokio::test]
async fn release_or_next_with_a_stale_write_changes_nothing() {
    let server = support::RedisServer::start();
    let (state, mut raw) = setup(&server).await;
    let mut old = hold_with_queue(&state, "t", &[entry(1, LONG), entry(2, LONG)]).await;
    // A paused holder: its lock is taken over, and the new holder writes the state.
    state.force_release_lock("t").await.unwrap();
    let new = state.acquire_lock("t", LONG).await.unwrap().unwrap();
    assert_eq!(
        state
            .set_fenced(&new, "thread-state:t", b"\"new\"", None)
            .await
            .unwrap(),
        FencedWrite::Stored
    );
    let queue_before: Vec<String> = raw.lrange("chat-sdk:queue:t", 0, -1).await.unwrap();
    let expires_at = old.expires_at;

    assert_eq!(
        state
            .release_or_next_with(&mut old, LONG, write("thread-state:t", b"\"old\"", None))
            .await
            .unwrap(),
        Handoff::NotHolder
    );
    assert_eq!(old.expires_at, expires_at);
    assert_eq!(
        state.get("thread-state:t").await.unwrap().as_deref(),
        Some(&b"\"new\""[..]),
        "the stale write was stored"
    );
    let record: String = raw.get("chat-sdk:fenced:thread-state:t").await.unwrap();
    assert_eq!(record, format!("{}:t", new.fence));
    let queue_after: Vec<String> = raw.lrange("chat-sdk:queue:t", 0, -1).await.unwrap();
    assert_eq!(queue_after, queue_before, "the queue was touched");
    let token: String = raw.get("chat-sdk:lock:t").await.unwrap();
    assert_eq!(token, new.token, "the new holder's lock was touched");

    // A foreign fence record: CorruptData, nothing written, the holder's lock and queue kept.
    let mut holder = new;
    let _: () = raw
        .set("chat-sdk:fenced:thread-state:t", "garbage")
        .await
        .unwrap();
    let err = state
        .release_or_next_with(&mut holder, LONG, write("thread-state:t", b"\"x\"", None))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
    assert!(err.to_string().contains("garbage"), "{err}");
    assert_eq!(
        state.get("thread-state:t").await.unwrap().as_deref(),
        Some(&b"\"new\""[..])
    );
    let queue_after: Vec<String> = raw.lrange("chat-sdk:queue:t", 0, -1).await.unwrap();
    assert_eq!(queue_after, queue_before);
    let token: String = raw.get("chat-sdk:lock:t").await.unwrap();
    assert_eq!(token, holder.token);
}

/// `redis-cli MONITOR` on one server: the commands clients send, without the ones scripts run.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    raw: MultiplexedConnection,
    marks: u32,
}

impl Monitor {
    async fn start(server: &support::RedisServer) -> Self {
        let mut child = Command::new("redis-cli")
            .args(["-p", &server.port().to_string(), "monitor"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-cli monitor");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let raw = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        // redis-cli prints `OK` once the server has turned MONITOR on.
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .expect("MONITOR answered");
            if line == "OK" {
                break;
            }
        }
        Self {
            child,
            lines,
            raw,
            marks: 0,
        }
    }

    /// Sends a mark and returns every client command seen before it (script-run ones and
    /// earlier marks excluded), by command name.
    async fn mark(&mut self) -> Vec<String> {
        self.marks += 1;
        let mark = format!("mark-{}", self.marks);
        let mut seen = Vec::new();
        let _: String = redis::cmd("ECHO")
            .arg(&mark)
            .query_async(&mut self.raw)
            .await
            .unwrap();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the mark shows in MONITOR");
            if line.contains(&format!("\"{mark}\"")) {
                return seen;
            }
            if line.contains("[0 lua]") || line.contains("\"ECHO\" \"mark-") {
                continue;
            }
            let command = line.split('"').nth(1).unwrap_or_default().to_uppercase();
            seen.push(command);
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn each_dispatch_operation_is_one_round_trip() {
    let server = support::RedisServer::start();
    let (state, _raw) = setup(&server).await;
    state.subscribe("t").await.unwrap();
    let mut monitor = Monitor::start(&server).await;
    let one = |what: &str, seen: Vec<String>| {
        assert_eq!(seen, ["EVALSHA"], "{what}");
    };

    let (mut lock, _) = admitted(&state, &Admit::new("t", "d1")).await;
    one("admit: admitted", monitor.mark().await);
    assert_eq!(
        state.admit(&Admit::new("t", "d1")).await.unwrap(),
        Admission::Duplicate
    );
    one("admit: duplicate", monitor.mark().await);
    assert_eq!(
        state.admit(&Admit::new("t", "d2")).await.unwrap(),
        Admission::Dropped
    );
    one("admit: dropped", monitor.mark().await);
    let message = queued("t", "d3", entry(1, LONG), 10);
    assert!(matches!(
        state.admit(&message).await.unwrap(),
        Admission::Queued { .. }
    ));
    one("admit: queued", monitor.mark().await);
    assert!(matches!(
        state.release_or_next(&mut lock, LONG).await.unwrap(),
        Handoff::Next(_)
    ));
    one("release_or_next: next", monitor.mark().await);
    assert_eq!(
        state.release_or_next(&mut lock, LONG).await.unwrap(),
        Handoff::Released
    );
    one("release_or_next: released", monitor.mark().await);
    assert_eq!(
        state.release_or_next(&mut lock, LONG).await.unwrap(),
        Handoff::NotHolder
    );
    one("release_or_next: not holder", monitor.mark().await);
    assert_eq!(
        state
            .set_fenced(&lock_of("t", 2), "k", b"1", None)
            .await
            .unwrap(),
        FencedWrite::Stored
    );
    one("set_fenced: stored", monitor.mark().await);
    assert_eq!(
        state
            .set_fenced(&lock_of("t", 1), "k", b"1", Some(LONG))
            .await
            .unwrap(),
        FencedWrite::Stale
    );
    one("set_fenced: stale", monitor.mark().await);

    // The combined operations: one script each, whatever the outcome.
    state.set("s", b"1", None).await.unwrap();
    monitor.mark().await;
    let (mut lock, read) = admitted_reading(&state, &Admit::new("t", "d4").read("s")).await;
    assert_eq!(read.as_deref(), Some(&b"1"[..]));
    one("admit_and_read: admitted", monitor.mark().await);
    assert_eq!(
        state.admit(&Admit::new("t", "d4").read("s")).await.unwrap(),
        Admission::Duplicate
    );
    one("admit_and_read: duplicate", monitor.mark().await);
    assert_eq!(
        state.admit(&Admit::new("t", "d5").read("s")).await.unwrap(),
        Admission::Dropped
    );
    one("admit_and_read: dropped", monitor.mark().await);
    let message = queued("t", "d6", entry(2, LONG), 10).read("s");
    assert!(matches!(
        state.admit(&message).await.unwrap(),
        Admission::Queued { .. }
    ));
    one("admit_and_read: queued", monitor.mark().await);
    assert!(matches!(
        state
            .release_or_next_with(&mut lock, LONG, write("s", b"2", None))
            .await
            .unwrap(),
        Handoff::Next(_)
    ));
    one("release_or_next_with: next", monitor.mark().await);
    assert_eq!(
        state
            .release_or_next_with(&mut lock, LONG, write("s", b"3", Some(LONG)))
            .await
            .unwrap(),
        Handoff::Released
    );
    one("release_or_next_with: released", monitor.mark().await);
    let mut stale = Lock {
        fence: lock.fence - 1,
        ..lock.clone()
    };
    assert_eq!(
        state
            .release_or_next_with(&mut stale, LONG, write("s", b"4", None))
            .await
            .unwrap(),
        Handoff::NotHolder
    );
    one("release_or_next_with: stale", monitor.mark().await);
    // The check itself sees a plain command, so a silent pass is not possible.
    state.get("k").await.unwrap();
    assert_eq!(monitor.mark().await, ["GET"]);
}

/// The same operations on a 3-master cluster: admit is two steps there (claim, then the
/// thread's script with the subscription read beside it), admit with a read three when
/// admitted (then the `GET`), release_or_next_with two (set_fenced's script, then
/// release_or_next's), the others one script each.
#[cfg(feature = "cluster")]
mod cluster {
    use super::*;

    async fn connect(
        cluster: &support::RedisCluster,
    ) -> (RedisState, redis::cluster_async::ClusterConnection) {
        let state = RedisBackend::cluster_builder(cluster.urls())
            .connect()
            .await
            .expect("connect to the cluster");
        let raw = redis::cluster::ClusterClient::new(cluster.urls())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap();
        (state, raw)
    }

    fn keyslot(cluster: &support::RedisCluster, key: &str) -> u16 {
        support::redis_cli(cluster.nodes[0].port(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("slot")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn dispatch_on_a_cluster() {
        let cluster = support::RedisCluster::start();
        let (state, mut raw) = connect(&cluster).await;
        // Ids and keys that would cut a naive hash tag, and many slots.
        for (i, thread) in ["t", "slack:C1:t1", "}x", "a{b}c"].into_iter().enumerate() {
            state.subscribe(thread).await.unwrap();
            let dedupe = format!("dedupe:{i}");
            let (mut lock, subscribed) = admitted(&state, &Admit::new(thread, &dedupe)).await;
            assert!(subscribed, "{thread}");
            let claim: Vec<u8> = raw.get(format!("chat-sdk:cache:{dedupe}")).await.unwrap();
            assert_eq!(claim, DEDUPE_VALUE);
            assert_eq!(
                state.admit(&Admit::new(thread, &dedupe)).await.unwrap(),
                Admission::Duplicate
            );
            assert_eq!(
                state
                    .admit(&Admit::new(thread, &format!("{dedupe}:drop")))
                    .await
                    .unwrap(),
                Admission::Dropped
            );
            let short = Duration::from_millis(300);
            for (n, lifetime) in [(1, LONG), (2, short), (3, LONG)] {
                let message = queued(thread, &format!("{dedupe}:{n}"), entry(n, lifetime), 10);
                assert_eq!(
                    state.admit(&message).await.unwrap(),
                    Admission::Queued { depth: n as usize },
                    "{thread}"
                );
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
            // A stale token: nothing changes.
            let mut stale = Lock {
                token: "ffffffffffffffffffffffffffffffff".into(),
                ..lock.clone()
            };
            assert_eq!(
                state.release_or_next(&mut stale, LONG).await.unwrap(),
                Handoff::NotHolder
            );
            assert_eq!(state.queue_depth(thread).await.unwrap(), 2);
            let mut seen = Vec::new();
            while let Handoff::Next(e) = state.release_or_next(&mut lock, LONG).await.unwrap() {
                seen.push(message_n(&e));
            }
            assert_eq!(seen, [1, 3], "{thread}");
            let (next, _) = admitted(&state, &Admit::new(thread, &format!("{dedupe}:again"))).await;
            assert!(next.fence > lock.fence);
        }
        // The documented cluster layout: queue tagged like the lock.
        let (lock, _) = admitted(&state, &Admit::new("q", "dedupe:q0")).await;
        let message = queued("q", "dedupe:q1", entry(1, LONG), 10);
        state.admit(&message).await.unwrap();
        let len: usize = raw.llen("chat-sdk:queue:{q}").await.unwrap();
        assert_eq!(len, 1);
        assert_eq!(
            keyslot(&cluster, "chat-sdk:queue:{q}"),
            keyslot(&cluster, "chat-sdk:lock:{q}")
        );
        state.release_lock(&lock).await.unwrap();

        // Sixteen concurrent admits of one message: one admitted.
        let state = Arc::new(state);
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let state = state.clone();
                tokio::spawn(
                    async move { state.admit(&Admit::new("c", "dedupe:c")).await.unwrap() },
                )
            })
            .collect();
        let outcomes: Vec<Admission> = futures::future::join_all(handles)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let admitted_count = outcomes
            .iter()
            .filter(|o| matches!(o, Admission::Admitted { .. }))
            .count();
        let duplicates = outcomes
            .iter()
            .filter(|o| **o == Admission::Duplicate)
            .count();
        assert_eq!((admitted_count, duplicates), (1, 15), "{outcomes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_fenced_on_a_cluster_keeps_the_record_in_the_cache_key_slot() {
        let cluster = support::RedisCluster::start();
        let (state, mut raw) = connect(&cluster).await;
        let keys = ["k", "thread-state:slack:C1:t1", "x{y}z", "{}", "a}b{"];
        for key in keys {
            let (old, new) = (lock_of("t", 1), lock_of("t", 2));
            assert_eq!(
                state
                    .set_fenced(&new, key, b"\"new\"", Some(Duration::from_millis(400)))
                    .await
                    .unwrap(),
                FencedWrite::Stored,
                "{key}"
            );
            assert_eq!(
                state.set_fenced(&old, key, b"\"old\"", None).await.unwrap(),
                FencedWrite::Stale
            );
            assert_eq!(
                state
                    .set_fenced(&new, key, b"\"again\"", None)
                    .await
                    .unwrap(),
                FencedWrite::Stored
            );
            assert_eq!(
                state
                    .set_fenced(&lock_of("u", 0), key, b"\"other\"", None)
                    .await
                    .unwrap(),
                FencedWrite::Stored
            );
            // The cache key keeps the upstream layout.
            let value: String = raw.get(format!("chat-sdk:cache:{key}")).await.unwrap();
            assert_eq!(value, "\"other\"");
        }
        // Every record sits in its cache key's slot, by the servers' own reckoning.
        let mut records = Vec::new();
        for node in &cluster.nodes {
            let found =
                support::redis_cli(node.port(), &["--scan", "--pattern", "chat-sdk:fenced:*"]);
            records.extend(found.lines().map(str::to_owned));
        }
        assert_eq!(records.len(), keys.len(), "{records:?}");
        for record in &records {
            let key = record.split_once("}:").expect("tagged record").1;
            assert_eq!(
                keyslot(&cluster, record),
                keyslot(&cluster, &format!("chat-sdk:cache:{key}")),
                "{record}"
            );
        }
        // The TTL applies on a cluster too.
        assert_eq!(
            state
                .set_fenced(
                    &lock_of("t", 9),
                    "ttl",
                    b"1",
                    Some(Duration::from_millis(300))
                )
                .await
                .unwrap(),
            FencedWrite::Stored
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            state
                .set_fenced(&lock_of("t", 1), "ttl", b"1", None)
                .await
                .unwrap(),
            FencedWrite::Stored
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admit_and_read_and_release_or_next_with_on_a_cluster() {
        let cluster = support::RedisCluster::start();
        let (state, mut raw) = connect(&cluster).await;
        // Thread ids and state keys spread over the slots (and nodes), and ones that would
        // cut a naive hash tag.
        for (i, thread) in ["t", "slack:C1:t1", "}x", "a{b}c"].into_iter().enumerate() {
            let key = format!("thread-state:{thread}");
            state.set(&key, b"\"start\"", None).await.unwrap();
            let dedupe = format!("dedupe:{i}");
            let (mut lock, read) =
                admitted_reading(&state, &Admit::new(thread, &dedupe).read(&key)).await;
            assert_eq!(read.as_deref(), Some(&b"\"start\""[..]), "{thread}");
            assert_eq!(
                state
                    .admit(&Admit::new(thread, &dedupe).read(&key))
                    .await
                    .unwrap(),
                Admission::Duplicate
            );
            let drop = format!("{dedupe}:drop");
            assert_eq!(
                state
                    .admit(&Admit::new(thread, &drop).read(&key))
                    .await
                    .unwrap(),
                Admission::Dropped
            );
            let message = queued(thread, &format!("{dedupe}:q"), entry(1, LONG), 10).read(&key);
            assert_eq!(
                state.admit(&message).await.unwrap(),
                Admission::Queued { depth: 1 }
            );

            // A stale write: NotHolder, the queue and the value untouched.
            let mut stale = Lock {
                fence: 0,
                ..lock.clone()
            };
            assert_eq!(
                state
                    .set_fenced(&lock, &key, b"\"holder\"", None)
                    .await
                    .unwrap(),
                FencedWrite::Stored
            );
            assert_eq!(
                state
                    .release_or_next_with(&mut stale, LONG, write(&key, b"\"stale\"", None))
                    .await
                    .unwrap(),
                Handoff::NotHolder
            );
            assert_eq!(state.queue_depth(thread).await.unwrap(), 1);
            let value: String = raw.get(format!("chat-sdk:cache:{key}")).await.unwrap();
            assert_eq!(value, "\"holder\"", "{thread}");

            // The holder: stored, then the entry; stored, then released.
            match state
                .release_or_next_with(&mut lock, LONG, write(&key, b"\"one\"", None))
                .await
                .unwrap()
            {
                Handoff::Next(e) => assert_eq!(message_n(&e), 1),
                other => panic!("expected Next, got {other:?}"),
            }
            let value: String = raw.get(format!("chat-sdk:cache:{key}")).await.unwrap();
            assert_eq!(value, "\"one\"");
            assert_eq!(
                state
                    .release_or_next_with(&mut lock, LONG, write(&key, b"\"two\"", Some(LONG)))
                    .await
                    .unwrap(),
                Handoff::Released
            );
            // The next admit reads the last write, under a greater fence.
            let (next, read) = admitted_reading(
                &state,
                &Admit::new(thread, &format!("{dedupe}:again")).read(&key),
            )
            .await;
            assert_eq!(read.as_deref(), Some(&b"\"two\""[..]));
            assert!(next.fence > lock.fence);
            state.release_lock(&next).await.unwrap();
        }
    }
}
