//! The facade on the real durable backends: connect-by-URL, prefix isolation, the
//! conformance command, and the simulation at 16 instances (zero double-handled, zero lost).
//!
//! SQLite tests use a file in a fresh temporary directory. Redis tests start their own
//! `redis-server` (from `PATH`, or `REDIS_SERVER`) on a free 127.0.0.1 port with a temporary
//! directory, and kill it by pid when the test ends.

#![allow(unused_imports, dead_code)] // which helpers are used depends on the backend features

use std::time::Duration;

use chat_state::cli::simulate::simulate;

mod common;
use chat_state::{ConnectOptions, ErrorKind, StateAdapter, StateExt, connect, connect_with};
use common::{assert_clean, sim_args};

/// Two prefixes on one store never see each other's keys, and the same prefix does (the
/// data is shared, as a second bot process would see it).
async fn assert_prefix_isolation(url: &str) {
    let a = connect_with(url, &ConnectOptions::new().prefix("facade-a"))
        .await
        .expect("a connects");
    let b = connect_with(url, &ConnectOptions::new().prefix("facade-b"))
        .await
        .expect("b connects");
    let a2 = connect_with(url, &ConnectOptions::new().prefix("facade-a"))
        .await
        .expect("a2 connects");
    a.subscribe("t1").await.expect("subscribe");
    a.set_json("k", &1, None).await.expect("set");
    assert!(!b.is_subscribed("t1").await.expect("read b"));
    assert_eq!(b.get_json::<i32>("k").await.expect("get b"), None);
    assert!(a2.is_subscribed("t1").await.expect("read a2"));
    assert_eq!(a2.get_json::<i32>("k").await.expect("get a2"), Some(1));
    let lock = a
        .acquire_lock("t1", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("free");
    assert!(
        a2.acquire_lock("t1", Duration::from_secs(30))
            .await
            .expect("acquire a2")
            .is_none(),
        "same prefix, same lock"
    );
    assert!(
        b.acquire_lock("t1", Duration::from_secs(30))
            .await
            .expect("acquire b")
            .is_some(),
        "other prefix, other lock"
    );
    a.release_lock(&lock).await.expect("release");
    for s in [a, b, a2] {
        s.close().await.expect("close");
    }
}

async fn assert_conformance_passes(url: &str) {
    let report = chat_state::cli::conformance::run(url, None, false).await;
    print!("{}", chat_state::cli::conformance::render_table(&report));
    assert!(report.passed() > 50, "the suite ran");
    assert_eq!(report.failed(), 0);
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
    async fn prefixes_isolate_on_one_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_prefix_isolation(&url(&dir)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn absolute_and_relative_urls_and_no_in_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let abs = format!("sqlite://{}", dir.path().join("abs.db").display());
        assert!(abs.starts_with("sqlite:///"), "{abs}");
        let state = connect(&abs).await.expect("absolute path");
        state.subscribe("t").await.expect("subscribe");
        state.close().await.expect("close");
        assert!(dir.path().join("abs.db").exists());
        // The same file through `sqlite:PATH` sees the same data.
        let again = connect(&format!("sqlite:{}", dir.path().join("abs.db").display()))
            .await
            .expect("sqlite:PATH");
        assert!(again.is_subscribed("t").await.expect("read"));
        let err = connect("sqlite::memory:").await.err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("memory://"), "{err}");
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
        let view = chat_state::cli::inspect::snapshot(&*state, &url, "slack:C1:t1")
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
    async fn inspect_never_creates_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.db");
        let result = chat_state::lock_inspector(&format!("sqlite://{}", missing.display())).await;
        assert!(result.is_err());
        assert!(
            !missing.exists() || std::fs::metadata(&missing).map(|m| m.len()).unwrap_or(0) == 0
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
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};

    /// A redis-server of our own, on a free port, killed (by its pid) on drop.
    struct RedisServer {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl RedisServer {
        fn start() -> Self {
            Self::start_with(&[])
        }

        fn start_with(extra: &[&str]) -> Self {
            let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let dir = tempfile::tempdir().expect("temp dir");
            // Ask the OS for a free port, then hand it to redis-server. Another process could
            // take it in between; the readiness wait below would then fail loudly.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--maxmemory-policy", "noeviction"])
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {binary} (install redis-server): {e}"));
            let server = Self {
                child,
                port,
                _dir: dir,
            };
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            panic!("redis-server did not listen on 127.0.0.1:{port} within 5 s");
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Three cluster-enabled masters on loopback, slots assigned with
    /// `redis-cli --cluster create`; every node is killed by pid on drop.
    #[cfg(feature = "redis-cluster")]
    struct RedisCluster {
        nodes: Vec<RedisServer>,
    }

    #[cfg(feature = "redis-cluster")]
    impl RedisCluster {
        fn start() -> Self {
            let nodes: Vec<RedisServer> = (0..3)
                .map(|_| {
                    RedisServer::start_with(&[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "5000",
                    ])
                })
                .collect();
            let addrs: Vec<String> = nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port))
                .collect();
            let out = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
                .expect("run redis-cli (package redis-tools)");
            assert!(out.status.success(), "redis-cli --cluster create: {out:?}");
            let started = std::time::Instant::now();
            for node in &nodes {
                loop {
                    let info = Command::new("redis-cli")
                        .args(["-p", &node.port.to_string(), "cluster", "info"])
                        .output()
                        .expect("redis-cli");
                    if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "cluster never ok"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Self { nodes }
        }

        fn url(&self) -> String {
            let hosts: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port))
                .collect();
            format!("redis+cluster://{}", hosts.join(","))
        }
    }

    #[cfg(feature = "redis-cluster")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn simulate_redis_cluster_16_instances() {
        let cluster = RedisCluster::start();
        let state = connect(&format!("{}?prefix=sim", cluster.url()))
            .await
            .expect("cluster connects");
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
    async fn prefixes_isolate_on_one_server() {
        let server = RedisServer::start();
        assert_prefix_isolation(&server.url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_command_passes_on_redis() {
        let server = RedisServer::start();
        assert_conformance_passes(&server.url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inspect_binary_shows_the_redis_lock_holder() {
        let server = RedisServer::start();
        let url = format!("{}?prefix=bot1", server.url());
        let state = connect(&url).await.expect("connects");
        state.subscribe("slack:C1:t1").await.expect("subscribe");
        let lock = state
            .acquire_lock("slack:C1:t1", Duration::from_secs(60))
            .await
            .expect("acquire")
            .expect("free");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-state"))
            .args(["inspect", "--url", &url, "slack:C1:t1", "--json"])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{out:?}");
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(view["backend"], "redis");
        assert_eq!(view["subscribed"], true);
        assert_eq!(
            view["lock"]["holder"]["token"],
            lock.token.as_str(),
            "{view}"
        );
        assert_eq!(view["lock"]["holder"]["fence"], lock.fence);
        let expires = view["lock"]["holder"]["expiresAt"].as_u64().unwrap_or(0);
        assert!(
            expires.abs_diff(lock.expires_at) < 5_000,
            "{expires} vs {}",
            lock.expires_at
        );
        // A different prefix sees a free lock.
        let reader = chat_state::lock_inspector(&format!("{}?prefix=bot2", server.url()))
            .await
            .expect("reader");
        assert_eq!(reader.lock_info("slack:C1:t1").await.expect("read"), None);
        // force-release frees it; the old holder can no longer extend.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-state"))
            .args(["force-release", "--url", &url, "slack:C1:t1"])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{out:?}");
        assert!(
            !state
                .extend_lock(&lock, Duration::from_secs(60))
                .await
                .expect("extend")
        );
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
        let size = Command::new("redis-cli")
            .args(["-p", &server.port.to_string(), "dbsize"])
            .output()
            .expect("redis-cli");
        assert_eq!(
            String::from_utf8_lossy(&size.stdout).trim(),
            "0",
            "{size:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn unreachable_server_is_a_typed_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let err = connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .err()
            .expect("nothing listens there");
        assert!(
            matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
            "{err}"
        );
    }
}
