//! The conformance suite and the lock key layout on a real 3-master Redis Cluster on
//! loopback (started by the test with `redis-cli --cluster create`, torn down at the end).

#![cfg(feature = "cluster")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_state_conformance::{Failure, Harness, run_all};
use chat_state_core::{Cache, Locks, StateAdapter};
use chat_state_redis::RedisState;
use redis::AsyncCommands;

mod support;

async fn connect(urls: &[String], prefix: &str) -> chat_state_core::Result<RedisState> {
    RedisState::cluster_builder(urls.iter().cloned())
        .key_prefix(prefix)
        .connect()
        .await
}

fn random_prefix() -> String {
    format!(
        "c{}",
        &chat_state_core::new_lock_token().expect("random")[..12]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_a_three_master_cluster() {
    let cluster = support::RedisCluster::start();
    let urls = Arc::new(cluster.urls());
    let started = Instant::now();
    let report = run_all(
        || {
            let urls = urls.clone();
            async move {
                let prefix = random_prefix();
                let adapter = connect(&urls, &prefix)
                    .await
                    .map_err(|e| Failure::new(format!("connect to the cluster: {e}")))?;
                Ok(
                    Harness::with_real_time(Arc::new(adapter)).with_reopen(move || {
                        let (urls, prefix) = (urls.clone(), prefix.clone());
                        async move {
                            Ok(Arc::new(connect(&urls, &prefix).await?) as Arc<dyn StateAdapter>)
                        }
                    }),
                )
            }
        },
        |_| true,
        || started.elapsed().as_millis() as u64,
    )
    .await;
    let failures: Vec<String> = report
        .cases
        .iter()
        .filter(|c| c.outcome == "failed")
        .map(|c| format!("{}: {}", c.name, c.message))
        .collect();
    eprintln!(
        "cluster conformance: {} passed, {} skipped, {} failed in {:?}",
        report.passed(),
        report.skipped(),
        report.failed(),
        started.elapsed()
    );
    assert!(report.passed() > 0);
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_keys_share_a_slot_built_from_the_id() {
    let cluster = support::RedisCluster::start();
    let urls = cluster.urls();
    let state = connect(&urls, "chat-sdk").await.unwrap();
    // Ids that would cut or empty a naive `{id}` tag, and ids on many slots.
    let ids = [
        "plain",
        "slack:C1:t1",
        "}starts",
        "a{b}c",
        "{",
        "}",
        "{}",
        "x}{y",
    ];
    let mut fences = Vec::new();
    for id in ids {
        let lock = state
            .acquire_lock(id, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("acquire {id:?}: {e}"))
            .unwrap_or_else(|| panic!("{id:?} is free"));
        assert!(
            state
                .extend_lock(&lock, Duration::from_secs(30))
                .await
                .unwrap()
        );
        state.release_lock(&lock).await.unwrap();
        let again = state
            .acquire_lock(id, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert!(again.fence > lock.fence);
        fences.push(again);
    }
    // The documented cluster layout, read back with raw commands.
    let client = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
    let mut raw = client.get_async_connection().await.unwrap();
    let token: String = raw.get("chat-sdk:lock:{slack:C1:t1}").await.unwrap();
    assert_eq!(token, fences[1].token);
    let fence: u64 = raw.get("chat-sdk:fence:{slack:C1:t1}").await.unwrap();
    assert_eq!(fence, fences[1].fence);
    let token: String = raw.get("chat-sdk:lock:{{7d737461727473}").await.unwrap();
    assert_eq!(token, fences[2].token);
    // Single-key data keeps the upstream layout on a cluster too.
    state.set("k", b"\"v\"", None).await.unwrap();
    let v: String = raw.get("chat-sdk:cache:k").await.unwrap();
    assert_eq!(v, "\"v\"");
}
