//! Operator tools: reading a lock holder (`InspectLocks`) and deleting a prefix's keys.

use std::time::Duration;

use chat_state_core::{Cache, Clock, ErrorKind, InspectLocks, Locks, SystemClock};
use chat_state_redis::{RedisBackend, RedisState};
use redis::AsyncCommands;

mod support;

async fn adapter(server: &support::RedisServer, prefix: &str) -> RedisState {
    RedisBackend::builder(server.url())
        .key_prefix(prefix)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn lock_info_shows_holder_expiry_and_fence() {
    let server = support::RedisServer::start();
    let state = adapter(&server, "ops").await;
    assert_eq!(state.lock_info("t1").await.unwrap(), None);
    let before = SystemClock.now_ms();
    let lock = state
        .acquire_lock("t1", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    let info = state.lock_info("t1").await.unwrap().expect("held");
    assert_eq!(info.token, lock.token);
    assert_eq!(info.fence, Some(lock.fence));
    assert!(
        info.expires_at > before && info.expires_at <= SystemClock.now_ms() + 30_000,
        "expiry {} not within the TTL from {before}",
        info.expires_at
    );
    state.release_lock(&lock).await.unwrap();
    assert_eq!(
        state.lock_info("t1").await.unwrap(),
        None,
        "released is free"
    );

    // A lock a TypeScript bot took (plain SET PX, no fence counter) shows without a fence.
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = raw
        .pset_ex("ops:lock:ts-thread", "ts-token", 30_000)
        .await
        .unwrap();
    let info = state
        .lock_info("ts-thread")
        .await
        .unwrap()
        .expect("held by TS");
    assert_eq!((info.token.as_str(), info.fence), ("ts-token", None));

    let err = state.lock_info("").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn delete_all_keys_stays_inside_its_prefix() {
    let server = support::RedisServer::start();
    let a = adapter(&server, "x-1").await;
    // `x-10` starts with `x-1`: the `:` boundary must keep it out of the pattern.
    let b = adapter(&server, "x-10").await;
    for s in [&a, &b] {
        s.set("k", b"1", None).await.unwrap();
        s.acquire_lock("t", Duration::from_secs(30)).await.unwrap();
    }
    // cache key, lock key, fence counter
    assert_eq!(a.backend().delete_all_keys().await.unwrap(), 3);
    assert_eq!(a.get("k").await.unwrap(), None);
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(
        b.lock_info("t").await.unwrap().is_some(),
        "other prefix untouched"
    );
}
