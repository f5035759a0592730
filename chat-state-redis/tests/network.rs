//! The Redis backend over a real network link with real TCP faults: redis-server in its own
//! network namespace behind a veth pair, faults made with iptables on the server's side
//! (`chat_state_test_support::netns`). Needs root, iproute2 and iptables; skips loudly
//! without them, and fails instead when `CHAT_STATE_REQUIRE_SERVICES=1` (as CI sets).
//!
//! Every scenario runs message cycles from several workers across the fault and asserts: each
//! call returns within the command timeout (plus scheduling slack), every error is retryable,
//! the first call after the heal succeeds within 1 s of it, and every acknowledged write is
//! in Redis afterwards.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_state_core::{Cache, ErrorKind, ListOptions, Lists, Locks, Result};
use chat_state_redis::{RedisBackend, RedisState};
use chat_state_test_support::netns::{self, NetnsRedis};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Allowed beyond the command timeout for a call to return: the runtime's scheduling on a
/// loaded two-core machine, not the adapter.
const SLACK: Duration = Duration::from_millis(500);
/// The bound: the first call after the heal succeeds within this.
const RECOVERY: Duration = Duration::from_secs(1);
const WORKERS: usize = 8;

async fn adapter(url: &str) -> RedisState {
    RedisBackend::builder(url)
        .command_timeout(COMMAND_TIMEOUT)
        .connect()
        .await
        .expect("connect over the veth link")
}

/// What one worker saw.
#[derive(Default)]
struct Log {
    /// When each call started, how long it took, and its error kind if it failed.
    calls: Vec<(Instant, Duration, Option<ErrorKind>)>,
    /// History entries whose append was acknowledged.
    acknowledged: Vec<String>,
}

impl Log {
    async fn record<T>(&mut self, call: impl std::future::Future<Output = Result<T>>) -> Option<T> {
        let started = Instant::now();
        let result = call.await;
        let kind = result.as_ref().err().map(|e| {
            assert!(
                e.is_retryable(),
                "a fault gave a non-retryable error: {e} ({e:?})"
            );
            e.kind()
        });
        self.calls.push((started, started.elapsed(), kind));
        result.ok()
    }
}

/// Message cycles (dedupe, acquire, append to the thread's history, release) until `stop`.
async fn worker(state: Arc<RedisState>, w: usize, stop: Arc<AtomicBool>) -> Log {
    let mut log = Log::default();
    let thread = format!("thread-{w}");
    let history = format!("history-{w}");
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let entry = format!("w{w}-{seq}");
        let dedupe = format!("dedupe:{entry}");
        let ttl = Some(Duration::from_secs(600));
        if log
            .record(state.set_if_not_exists(&dedupe, b"1", ttl))
            .await
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Some(Some(lock)) = log
            .record(state.acquire_lock(&thread, Duration::from_secs(5)))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let append = state.append_to_list(&history, entry.as_bytes(), ListOptions::new());
        if log.record(append).await.is_some() {
            log.acknowledged.push(entry);
        }
        log.record(state.release_lock(&lock)).await;
    }
    log
}

/// A server behind a fresh link, or `None` (after a loud message) where namespaces cannot be
/// made and `CHAT_STATE_REQUIRE_SERVICES` is not set.
fn network() -> Option<NetnsRedis> {
    netns::require().then(NetnsRedis::start)
}

/// On a fresh link: runs the workers, applies `fault` for `duration`, heals with `heal`, runs
/// on for a while, and checks the scenario's assertions. Returns the adapter for further
/// checks (`None` when skipped).
async fn scenario(
    fault: impl FnOnce(&NetnsRedis),
    duration: Duration,
    heal: impl FnOnce(&NetnsRedis),
) -> Option<Arc<RedisState>> {
    let net = network()?;
    let state = Arc::new(adapter(&net.url()).await);
    Some(scenario_on(&net, state, fault, duration, heal).await)
}

/// [`scenario`] on a given link and adapter.
async fn scenario_on(
    net: &NetnsRedis,
    state: Arc<RedisState>,
    fault: impl FnOnce(&NetnsRedis),
    duration: Duration,
    heal: impl FnOnce(&NetnsRedis),
) -> Arc<RedisState> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(state.clone(), w, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fault(net);
    tokio::time::sleep(duration).await;
    heal(net);
    let healed = Instant::now();
    tokio::time::sleep(RECOVERY + Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in workers {
        logs.push(w.await.expect("worker"));
    }

    let calls: Vec<_> = logs.iter().flat_map(|l| l.calls.iter()).collect();
    let slowest = calls.iter().map(|c| c.1).max().unwrap_or_default();
    assert!(
        slowest <= COMMAND_TIMEOUT + SLACK,
        "a call took {slowest:?}, the command timeout is {COMMAND_TIMEOUT:?}"
    );
    let first_success = calls
        .iter()
        .filter(|(started, took, kind)| kind.is_none() && *started + *took >= healed)
        .map(|(started, took, _)| (*started + *took).duration_since(healed))
        .min()
        .expect("no call succeeded after the heal");
    println!(
        "{} calls, {} failed, first success {first_success:?} after the heal, {} connection \
         replacements",
        calls.len(),
        calls.iter().filter(|c| c.2.is_some()).count(),
        state.backend().connection_replacements()
    );
    assert!(
        first_success <= RECOVERY,
        "first success {first_success:?} after the heal (at most {RECOVERY:?})"
    );

    // No acknowledged write lost.
    for (w, log) in logs.iter().enumerate() {
        let stored = state
            .get_list(&format!("history-{w}"))
            .await
            .expect("read history");
        let stored: HashSet<String> = stored
            .into_iter()
            .map(|v| String::from_utf8(v).expect("utf-8"))
            .collect();
        for entry in &log.acknowledged {
            assert!(
                stored.contains(entry),
                "acknowledged {entry} is not in Redis"
            );
        }
        assert!(
            !log.acknowledged.is_empty(),
            "worker {w} never got an append through"
        );
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_partition() {
    scenario(
        NetnsRedis::partition,
        Duration::from_secs(3),
        NetnsRedis::heal,
    )
    .await;
}

/// Long enough that the kernel's retransmission backoff on the old socket is many seconds:
/// recovery must come from a new connection, not from the old one's next retransmission. With
/// keepalive and `TCP_USER_TIMEOUT` off, so that the kernel does not end the dead connection
/// either and only the adapter's replacement can recover in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_partition() {
    let Some(net) = network() else { return };
    let state = RedisBackend::builder(net.url())
        .command_timeout(COMMAND_TIMEOUT)
        .tcp_keepalive(None)
        .tcp_user_timeout(None)
        .connect()
        .await
        .expect("connect over the veth link");
    let state = scenario_on(
        &net,
        Arc::new(state),
        NetnsRedis::partition,
        Duration::from_secs(20),
        NetnsRedis::heal,
    )
    .await;
    assert!(state.backend().connection_replacements() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_requests_dropped() {
    scenario(
        NetnsRedis::drop_requests,
        Duration::from_secs(3),
        NetnsRedis::heal,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_replies_dropped() {
    scenario(
        NetnsRedis::drop_replies,
        Duration::from_secs(3),
        NetnsRedis::heal,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss() {
    scenario(|n| n.loss(5), Duration::from_secs(5), NetnsRedis::heal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down() {
    scenario(
        |n| n.set_link(false),
        Duration::from_secs(3),
        |n| n.set_link(true),
    )
    .await;
}

/// An acquire whose reply is lost ran on the server: the lock is held for a token nobody
/// knows. The adapter releases it once the link works again, long before its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_acquire_releases_its_orphaned_lock() {
    let Some(net) = network() else { return };
    let state = adapter(&net.url()).await;
    let ttl = Duration::from_secs(60);
    net.drop_replies();
    let err = state.acquire_lock("orphan", ttl).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // Redis ran it: the lock is held, by the token of the call that timed out.
    assert_eq!(net.cli(&["EXISTS", "chat-sdk:lock:orphan"]), "1");
    net.heal();
    let healed = Instant::now();
    while net.cli(&["EXISTS", "chat-sdk:lock:orphan"]) != "0" {
        assert!(
            healed.elapsed() < COMMAND_TIMEOUT + Duration::from_secs(3),
            "the orphaned lock is still held {:?} after the heal (TTL {ttl:?})",
            healed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the thread is free for the next message.
    let lock = state.acquire_lock("orphan", ttl).await.unwrap();
    assert!(lock.is_some(), "the thread stayed busy after the cleanup");
}

/// The cleanup never frees a lock that someone else took meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_leaves_another_holders_lock_alone() {
    let Some(net) = network() else { return };
    let state = adapter(&net.url()).await;
    let other = adapter(&net.unaffected_url()).await;
    net.drop_requests();
    // Never reaches Redis: the cleanup's release finds the other holder's token.
    let err = state
        .acquire_lock("shared", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let held = other
        .acquire_lock("shared", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("free");
    net.heal();
    tokio::time::sleep(COMMAND_TIMEOUT + Duration::from_secs(2)).await;
    assert!(
        other
            .extend_lock(&held, Duration::from_secs(60))
            .await
            .unwrap(),
        "the cleanup released another holder's lock"
    );
}

/// A holder cut off past its TTL loses the lock: its extend fails, and the next holder (on a
/// link that works) gets a greater fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_loses_its_lock_to_a_greater_fence() {
    let Some(net) = network() else { return };
    let cut_off = adapter(&net.url()).await;
    let other = adapter(&net.unaffected_url()).await;
    let ttl = Duration::from_secs(2);
    let first = cut_off.acquire_lock("t", ttl).await.unwrap().expect("free");
    net.partition();
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let second = other
        .acquire_lock("t", ttl * 10)
        .await
        .unwrap()
        .expect("expired");
    assert!(
        second.fence > first.fence,
        "{} <= {}",
        second.fence,
        first.fence
    );
    let err = cut_off.extend_lock(&first, ttl).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    net.heal();
    let healed = Instant::now();
    loop {
        match cut_off.extend_lock(&first, ttl).await {
            Ok(extended) => {
                assert!(!extended, "the cut-off holder extended a lock it lost");
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(healed.elapsed() < RECOVERY + SLACK, "no recovery: {e}");
            }
        }
    }
    assert!(other.extend_lock(&second, ttl).await.unwrap());
}

/// A cluster behind the link: its client's connections are rebuilt after a timeout too.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_partition() {
    if !netns::require() {
        return;
    }
    let net = NetnsRedis::start_cluster();
    let state = RedisBackend::cluster_builder(net.cluster_urls())
        .command_timeout(COMMAND_TIMEOUT)
        .connect()
        .await
        .expect("connect to the cluster over the veth link");
    let state = scenario_on(
        &net,
        Arc::new(state),
        NetnsRedis::partition,
        Duration::from_secs(10),
        NetnsRedis::heal,
    )
    .await;
    assert!(state.backend().connection_replacements() > 0);
}
