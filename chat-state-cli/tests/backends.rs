//! The CLI on the real durable backends: the simulation at 16 instances (zero double-handled,
//! zero lost), the conformance command, inspect and force-release, library calls and binary.
//!
//! SQLite tests use a file in a fresh temporary directory. Redis tests start their own
//! `redis-server` (from `PATH`, or `REDIS_SERVER`) on a free 127.0.0.1 port with a temporary
//! directory, killed by pid when the test ends (`chat-state-test-support`).

#![allow(unused_imports, dead_code)] // which helpers are used depends on the backend features

use std::time::Duration;

use chat_state_cli::simulate::simulate;

mod common;
use chat_state::{StateAdapter, StateExt, connect};
use common::{assert_clean, sim_args};

async fn assert_conformance_passes(url: &str) {
    let report = chat_state_cli::conformance::run(url, None, false).await;
    print!("{}", chat_state_cli::conformance::render_table(&report));
    assert!(report.passed() > 50, "the suite ran");
    assert_eq!(report.failed(), 0);
}

/// `chat-state inspect` shows the holder a bot took on `url`, and `chat-state force-release`
/// frees it so the old holder can no longer extend. `fence_shown`: whether the backend can
/// tell the holder's fence.
async fn assert_inspect_then_force_release(url: &str, backend: &str, fence_shown: bool) {
    let state = connect(url).await.expect("connects");
    state.subscribe("slack:C1:t1").await.expect("subscribe");
    state.set_json("slack:C1:t1", &7, None).await.expect("set");
    let lock = state
        .acquire_lock("slack:C1:t1", Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("free");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-state"))
        .args(["inspect", "--url", url, "slack:C1:t1", "--json"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(view["backend"], backend);
    assert_eq!(view["subscribed"], true);
    assert_eq!(view["cache"], 7);
    assert_eq!(
        view["lock"]["holder"]["token"],
        lock.token.as_str(),
        "{view}"
    );
    let fence = &view["lock"]["holder"]["fence"];
    if fence_shown {
        assert_eq!(*fence, lock.fence, "{view}");
    } else {
        assert!(fence.is_null(), "{view}");
    }
    let expires = view["lock"]["holder"]["expiresAt"].as_u64().unwrap_or(0);
    assert!(
        expires.abs_diff(lock.expires_at) < 5_000,
        "{expires} vs {}",
        lock.expires_at
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-state"))
        .args(["force-release", "--url", url, "slack:C1:t1"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !state
            .extend_lock(&lock, Duration::from_secs(60))
            .await
            .expect("extend"),
        "the old holder lost the lock"
    );
    state.close().await.expect("close");
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    fn url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("state.db").display())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn simulate_sqlite_file_16_instances() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = connect(&url(&dir)).await.expect("sqlite connects");
        assert_eq!(state.backend_name(), "sqlite");
        let report = simulate(state.clone(), &sim_args()).await.expect("runs");
        state.close().await.expect("close");
        assert_clean(&report);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inspect_shows_the_lock_holder_and_force_release_frees_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("{}?prefix=bot1", url(&dir));
        let state = connect(&url).await.expect("connects");
        state.subscribe("slack:C1:t1").await.expect("subscribe");
        state
            .enqueue_json(
                "slack:C1:t1",
                &"m",
                1,
                Duration::from_secs(3_600_000_000),
                10,
            )
            .await
            .expect("enqueue");
        let lock = state
            .acquire_lock("slack:C1:t1", Duration::from_secs(60))
            .await
            .expect("acquire")
            .expect("free");
        let view = chat_state_cli::inspect::snapshot(&*state, &url, "slack:C1:t1")
            .await
            .expect("snapshot");
        assert_eq!(view["subscribed"], true);
        assert_eq!(view["queueDepth"], 1);
        assert_eq!(view["lock"]["held"], true, "{view}");
        assert_eq!(view["lock"]["holder"]["token"], lock.token.as_str());
        assert_eq!(view["lock"]["holder"]["fence"], lock.fence);
        // Another prefix on the same file holds nothing.
        let other = format!("{}?prefix=bot2", super::sqlite::url(&dir));
        let reader = chat_state::lock_inspector(&other).await.expect("reader");
        assert_eq!(reader.lock_info("slack:C1:t1").await.expect("read"), None);

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-state"))
            .args(["force-release", "--url", &url, "slack:C1:t1"])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&lock.token), "{text}");
        let reader = chat_state::lock_inspector(&url).await.expect("reader");
        assert_eq!(reader.lock_info("slack:C1:t1").await.expect("read"), None);
        assert!(
            !state
                .extend_lock(&lock, Duration::from_secs(60))
                .await
                .expect("extend"),
            "the old holder lost it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_command_passes_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_conformance_passes(&url(&dir)).await;
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use std::process::Command;

    use chat_state_test_support::{RedisCluster, RedisServer, redis_cli};

    #[cfg(feature = "redis-cluster")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn simulate_redis_cluster_16_instances() {
        let cluster = RedisCluster::start();
        let url = format!("redis+cluster://{}?prefix=sim", cluster.addrs().join(","));
        let state = connect(&url).await.expect("cluster connects");
        let report = simulate(state.clone(), &sim_args()).await.expect("runs");
        state.close().await.expect("close");
        assert_clean(&report);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn simulate_redis_16_instances() {
        let server = RedisServer::start();
        let state = connect(&format!("{}?prefix=sim", server.url()))
            .await
            .expect("redis connects");
        assert_eq!(state.backend_name(), "redis");
        let report = simulate(state.clone(), &sim_args()).await.expect("runs");
        state.close().await.expect("close");
        assert_clean(&report);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_command_passes_on_redis() {
        let server = RedisServer::start();
        assert_conformance_passes(&server.url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inspect_binary_shows_the_redis_lock_holder() {
        let server = RedisServer::start();
        assert_inspect_then_force_release(&format!("{}?prefix=bot1", server.url()), "redis", true)
            .await;
        // A different prefix sees no holder.
        let reader = chat_state::lock_inspector(&format!("{}?prefix=bot2", server.url()))
            .await
            .expect("reader");
        assert_eq!(reader.lock_info("slack:C1:t1").await.expect("read"), None);
    }

    #[test]
    fn conformance_binary_passes_and_leaves_no_keys_behind() {
        let server = RedisServer::start();
        let out = Command::new(env!("CARGO_BIN_EXE_chat-state"))
            .args(["conformance", "--url", &server.url(), "--filter", "lock"])
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{out:?}");
        assert!(text.contains("backend: redis"), "{text}");
        assert!(text.contains(" 0 failed"), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("removed "), "{err}");
        let size = redis_cli(server.port(), &["dbsize"]);
        assert_eq!(size.trim(), "0", "{size:?}");
    }
}

/// `rediss://` end to end through the binary: a TLS redis-server with a throwaway CA made by
/// `openssl`, trusted through `SSL_CERT_FILE` as an operator would.
#[cfg(feature = "redis-tls")]
mod tls {
    use std::process::Command;

    use chat_state_test_support::TlsRedisServer;

    #[test]
    fn conformance_over_rediss_with_the_operators_ca() {
        let server = TlsRedisServer::start();
        let url = server.url();
        let ca = server.ca_cert().display().to_string();
        let run = |ca: Option<&str>| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_chat-state"));
            command.args(["conformance", "--url", &url, "--filter", "cache_"]);
            command.env_remove("CHAT_STATE_URL");
            match ca {
                Some(file) => command.env("SSL_CERT_FILE", file),
                None => command.env_remove("SSL_CERT_FILE"),
            };
            command.output().expect("runs")
        };

        let trusted = run(Some(&ca));
        let text = String::from_utf8_lossy(&trusted.stdout);
        assert!(trusted.status.success(), "{text}\n{trusted:?}");
        assert!(text.contains("backend: redis"), "{text}");
        assert!(text.contains(" 0 failed"), "{text}");

        // Without the CA the handshake fails: an error (exit 2) naming the URL, no panic.
        let untrusted = run(None);
        assert_eq!(untrusted.status.code(), Some(2), "{untrusted:?}");
        let err = String::from_utf8_lossy(&untrusted.stderr);
        assert!(err.contains(&format!("cannot connect to {url}")), "{err}");
    }
}

/// Postgres end to end: a real PostgreSQL the test support starts (`initdb` into a temporary
/// directory, a free loopback port), one fresh database per test.
#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use std::process::Command;

    use chat_state_test_support::postgres::{shared, unique_prefix};

    /// A fresh database on the shared server; its URL.
    fn fresh_database() -> (String, String) {
        let server = shared();
        let name = format!("cli_{}", unique_prefix().to_lowercase());
        server.psql("postgres", &format!("CREATE DATABASE {name}"));
        (server.url_for(&name), name)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn simulate_postgres_16_instances() {
        let (url, _) = fresh_database();
        let state = connect(&format!("{url}?prefix=sim"))
            .await
            .expect("postgres connects");
        assert_eq!(state.backend_name(), "postgres");
        let report = simulate(state.clone(), &sim_args()).await.expect("runs");
        state.close().await.expect("close");
        assert_clean(&report);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_command_passes_on_postgres() {
        let (url, _) = fresh_database();
        assert_conformance_passes(&url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inspect_binary_shows_the_postgres_lock_holder_and_force_release_frees_it() {
        let (base, _) = fresh_database();
        assert_inspect_then_force_release(&format!("{base}?prefix=bot1"), "postgres", false).await;
    }

    #[test]
    fn conformance_binary_passes_and_leaves_no_rows_behind() {
        let (url, database) = fresh_database();
        let out = Command::new(env!("CARGO_BIN_EXE_chat-state"))
            .args(["conformance", "--url", &url, "--filter", "lock"])
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{out:?}");
        assert!(text.contains("backend: postgres"), "{text}");
        assert!(text.contains(" 0 failed"), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("removed "), "{err}");
        let rows = shared().psql(
            &database,
            "SELECT (SELECT count(*) FROM chat_state_locks) \
                  + (SELECT count(*) FROM chat_state_lock_fences) \
                  + (SELECT count(*) FROM chat_state_fences) \
                  + (SELECT count(*) FROM chat_state_cache) \
                  + (SELECT count(*) FROM chat_state_subscriptions) \
                  + (SELECT count(*) FROM chat_state_lists) \
                  + (SELECT count(*) FROM chat_state_queues)",
        );
        assert_eq!(rows, "0", "rows left behind");
    }

    #[test]
    fn bench_binary_runs_on_postgres() {
        let (url, _) = fresh_database();
        let out = Command::new(env!("CARGO_BIN_EXE_chat-state"))
            .args([
                "bench",
                "--url",
                &format!("{url}?prefix=bench"),
                "--workload",
                "message-cycle",
                "--iterations",
                "200",
                "--json",
            ])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("postgres"), "{text}");
    }
}
