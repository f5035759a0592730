//! Faults against real `redis-server` processes: `kill -9` and restart with AOF, an outage
//! (server gone, then back on the same port), and a pause (`kill -STOP`) longer than a lock's
//! TTL. The adapter under test is never rebuilt: it must recover by itself.

use std::time::{Duration, Instant};

use chat_state_core::{
    Cache, Clock, ErrorKind, ListOptions, Lists, Locks, QueueEntry, Queues, Result, StateAdapter,
    Subscriptions, SystemClock,
};
use chat_state_redis::{RedisBackend, RedisState};
use serde_json::json;

mod support;

/// How long the adapter may take to recover once the server is back.
const RECOVERY: Duration = Duration::from_secs(15);

/// Slack allowed on top of the command timeout before a failing call counts as hung. It only
/// has to tell "bounded" from "hung", so it is generous: CI machines are shared and a loaded
/// 2-core machine can stall a task for a second or more.
const SLACK: Duration = Duration::from_secs(5);

async fn adapter(server: &support::RedisServer, timeout: Duration) -> RedisState {
    RedisBackend::builder(server.url())
        .key_prefix("faults")
        .command_timeout(timeout)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_with_aof_keeps_acknowledged_writes_and_locks() {
    let mut server = support::RedisServer::start_with_aof();
    let state = adapter(&server, Duration::from_secs(2)).await;

    // Acknowledged writes of every kind.
    for i in 0..200u32 {
        state
            .set(&format!("k{i}"), format!("{i}").as_bytes(), None)
            .await
            .unwrap();
    }
    state.subscribe("t1").await.unwrap();
    state
        .append_to_list("l", b"\"a\"", ListOptions::new().max_length(10))
        .await
        .unwrap();
    let now = SystemClock.now_ms();
    let entry = QueueEntry {
        enqueued_at: now,
        expires_at: now + 600_000,
        message: json!({"id": 1}),
    };
    state.enqueue("q", entry.clone(), 10).await.unwrap();
    let lock = state
        .acquire_lock("t1", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();

    server.kill();
    server.restart();

    // The same adapter: the first calls may fail (retryably) while it reconnects.
    let first = support::until_ok("get after restart", RECOVERY, || state.get("k0")).await;
    assert_eq!(first.as_deref(), Some(&b"0"[..]));
    for i in 0..200u32 {
        let v = state.get(&format!("k{i}")).await.unwrap();
        assert_eq!(
            v,
            Some(format!("{i}").into_bytes()),
            "acknowledged write k{i} lost"
        );
    }
    assert!(state.is_subscribed("t1").await.unwrap());
    assert_eq!(state.get_list("l").await.unwrap(), vec![b"\"a\"".to_vec()]);
    assert_eq!(state.dequeue("q").await.unwrap(), Some(entry));

    // The lock is still held, by the same token; the scripts were reloaded (NOSCRIPT).
    assert!(
        state
            .acquire_lock("t1", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        state
            .extend_lock(&lock, Duration::from_secs(60))
            .await
            .unwrap()
    );
    state.release_lock(&lock).await.unwrap();
    // The fence counter survived too: the next holder's fence is greater.
    let next = state
        .acquire_lock("t1", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.fence > lock.fence,
        "fence went from {} to {}",
        lock.fence,
        next.fence
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_gives_retryable_errors_within_the_timeout_then_recovers() {
    let mut server = support::RedisServer::start();
    let timeout = Duration::from_millis(500);
    let state = adapter(&server, timeout).await;
    state.set("before", b"1", None).await.unwrap();

    // Server gone: connection refused.
    server.kill();
    for round in 0..3 {
        let started = Instant::now();
        let results: Vec<Result<()>> = vec![
            state.set("k", b"v", None).await,
            state.get("k").await.map(drop),
            state
                .acquire_lock("l", Duration::from_secs(5))
                .await
                .map(drop),
            state
                .enqueue(
                    "q",
                    QueueEntry::new(json!(1), SystemClock.now_ms(), Duration::from_secs(60)),
                    5,
                )
                .await
                .map(drop),
            state.queue_depth("q").await.map(drop),
            state.is_subscribed("t").await.map(drop),
            state.connect().await,
        ];
        for r in results {
            let e = r.expect_err("no server, yet the call succeeded");
            assert!(
                matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                "round {round}: {e}"
            );
            assert!(e.is_retryable());
            assert_eq!(e.backend(), "redis");
            assert!(e.operation().is_some());
        }
        assert!(
            started.elapsed() < 7 * (timeout + SLACK),
            "7 calls took {:?}",
            started.elapsed()
        );
    }

    // Back on the same port (no AOF: the data is gone, the adapter works again).
    server.restart();
    support::until_ok("set after the outage", RECOVERY, || {
        state.set("after", b"2", None)
    })
    .await;
    assert_eq!(
        state.get("after").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert!(
        state
            .acquire_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gives_timeouts_not_hangs() {
    let server = support::RedisServer::start();
    let timeout = Duration::from_millis(300);
    let state = adapter(&server, timeout).await;
    state.set("k", b"v", None).await.unwrap();

    server.pause();
    let started = Instant::now();
    let err = state.get("k").await.unwrap_err();
    let elapsed = started.elapsed();
    server.resume();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
    assert!(elapsed >= timeout, "failed before the timeout: {elapsed:?}");
    assert!(elapsed < timeout + SLACK, "took {elapsed:?}");
    assert_eq!(
        support::until_ok("get after resume", RECOVERY, || state.get("k"))
            .await
            .as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_longer_than_the_ttl_loses_the_lock_and_fences_grow() {
    let server = support::RedisServer::start();
    let holder = adapter(&server, Duration::from_millis(300)).await;
    let other = adapter(&server, Duration::from_secs(2)).await;
    let ttl = Duration::from_millis(400);
    let lock = holder.acquire_lock("t", ttl).await.unwrap().unwrap();

    server.pause();
    // The heartbeat cannot get through: a retryable timeout (the command stays queued in the
    // socket and runs after the resume, when the lock has expired: it must not resurrect it).
    let err = holder
        .extend_lock(&lock, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    tokio::time::sleep(ttl * 2).await;
    server.resume();

    let extended = support::until_ok("extend after resume", RECOVERY, || {
        holder.extend_lock(&lock, Duration::from_secs(10))
    })
    .await;
    assert!(
        !extended,
        "the paused holder's extend succeeded after its TTL passed"
    );
    let taken = other
        .acquire_lock("t", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("lock is free");
    assert!(
        taken.fence > lock.fence,
        "new fence {} <= old {}",
        taken.fence,
        lock.fence
    );
    // The stale holder can neither extend nor release the new holder's lock.
    assert!(
        !holder
            .extend_lock(&lock, Duration::from_secs(10))
            .await
            .unwrap()
    );
    holder.release_lock(&lock).await.unwrap();
    assert!(
        other
            .extend_lock(&taken, Duration::from_secs(10))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_write() {
    let mut server = support::RedisServer::start_with_aof();
    let state = std::sync::Arc::new(adapter(&server, Duration::from_millis(500)).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four writers; each records the keys whose write was acknowledged.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (state, stop) = (state.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w{w}:{i}");
                    if state.set(&key, key.as_bytes(), None).await.is_ok() {
                        acked.push(key);
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "only {} writes before the kill",
        acked.len()
    );

    server.restart();
    support::until_ok("get after restart", RECOVERY, || state.get("w0:0")).await;
    let mut lost = Vec::new();
    for key in &acked {
        if state.get(key).await.unwrap().as_deref() != Some(key.as_bytes()) {
            lost.push(key.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}
