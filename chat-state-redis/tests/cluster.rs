//! The conformance suite and the lock key layout on a real 3-master Redis Cluster on
//! loopback (started by the test with `redis-cli --cluster create`, torn down at the end).

#![cfg(feature = "cluster")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_state_conformance::{Failure, Harness, Outcome, run_all};
use chat_state_core::{Cache, Locks, StateAdapter};
use chat_state_redis::{RedisBackend, RedisState};
use redis::AsyncCommands;

mod support;

/// How long a failover may take to heal.
const RECOVERY: Duration = Duration::from_secs(30);

async fn connect(urls: &[String], prefix: &str) -> chat_state_core::Result<RedisState> {
    RedisBackend::cluster_builder(urls.iter().cloned())
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
        .filter(|c| c.outcome == Outcome::Failed)
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

/// One line of `CLUSTER NODES`: port, node id, master id (`-` for masters), slot ranges.
type Node = (u16, String, String, Vec<(u16, u16)>);

/// Every node of the cluster, as `port` sees it.
fn topology(port: u16) -> Vec<Node> {
    support::redis_cli(port, &["cluster", "nodes"])
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let node_port = f
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let ranges = f
                .iter()
                .skip(8)
                .filter_map(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some((node_port, f[0].to_owned(), f.get(3)?.to_string(), ranges))
        })
        .collect()
}

fn repl_offset(port: u16, field: &str) -> Option<u64> {
    support::redis_cli(port, &["info", "replication"])
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_of_the_lock_master_the_adapter_recovers_and_reloads_scripts() {
    let mut cluster = support::RedisCluster::start_with_replicas();
    let state = RedisBackend::cluster_builder(cluster.urls())
        .command_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let lock = state
        .acquire_lock("t", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();

    // The master serving the lock's slot, and its replica.
    let any = cluster.nodes[0].port();
    let slot: u16 = support::redis_cli(any, &["cluster", "keyslot", "chat-sdk:lock:{t}"])
        .trim()
        .parse()
        .unwrap();
    let nodes = topology(any);
    let master_port = nodes
        .iter()
        .find(|(_, _, _, ranges)| ranges.iter().any(|&(a, b)| a <= slot && slot <= b))
        .map(|(p, _, _, _)| *p)
        .expect("a master serves the slot");
    // From each replica's own replication info (gossip may not have told node 0 yet).
    let replica_port = cluster
        .nodes
        .iter()
        .map(|n| n.port())
        .find(|&p| {
            support::redis_cli(p, &["info", "replication"])
                .lines()
                .any(|l| l.trim_end() == format!("master_port:{master_port}"))
        })
        .expect("the master has a replica");
    // Replication is asynchronous: wait until the replica has everything the master has
    // (otherwise the failover loses the lock, which is the documented cluster caveat).
    let started = Instant::now();
    loop {
        let master = repl_offset(master_port, "master_repl_offset:");
        let replica = repl_offset(replica_port, "slave_repl_offset:");
        if master.is_some() && master == replica {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica never caught up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let index = cluster
        .nodes
        .iter()
        .position(|n| n.port() == master_port)
        .unwrap();
    cluster.nodes[index].kill();

    // Retryable errors while the replica is promoted, then the same adapter works again. The
    // lock was replicated: still held, by the same token.
    let again = support::until_ok("acquire after failover", RECOVERY, || {
        state.acquire_lock("t", Duration::from_secs(60))
    })
    .await;
    assert!(
        again.is_none(),
        "the replicated lock was lost in the failover"
    );
    // The promoted replica has an empty script cache: NOSCRIPT, reloaded transparently.
    assert!(
        support::until_ok("extend after failover", RECOVERY, || state
            .extend_lock(&lock, Duration::from_secs(60)))
        .await
    );
    state.release_lock(&lock).await.unwrap();
    let next = state
        .acquire_lock("t", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.fence > lock.fence,
        "fence {} after {}",
        next.fence,
        lock.fence
    );
}
