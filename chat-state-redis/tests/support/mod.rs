//! Real `redis-server` processes come from the shared `chat-state-test-support` crate
//! (each on a free loopback port with its own temporary directory, stopped by pid when the
//! guard is dropped, even when the test fails); this adds what only these tests need.

#![allow(dead_code, unused_imports, unreachable_pub)] // each test binary uses a different subset

use std::time::{Duration, Instant};

pub use chat_state_test_support::{RedisCluster, RedisServer, ping, redis_cli, run_node};

/// Retries `f` until it succeeds, for at most `within`: every failure on the way must be
/// retryable (a fault must never surface as a permanent error).
pub async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = chat_state_core::Result<T>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "{what}: non-retryable error while recovering: {e}"
                );
                assert!(started.elapsed() < within, "{what}: never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
