//! The facade on the real durable backends: connect-by-URL (percent-decoded paths and
//! passwords, IPv6 hosts, `rediss://`), prefix isolation, lock inspection, typed errors.
//!
//! SQLite tests use a file in a fresh temporary directory. Redis tests start their own
//! `redis-server` (from `PATH`, or `REDIS_SERVER`) on a free 127.0.0.1 port with a temporary
//! directory, killed by pid when the test ends.

#![allow(unused_imports, dead_code)] // which helpers are used depends on the backend features

use std::time::Duration;

use chat_state::{ConnectOptions, ErrorKind, StateAdapter, StateExt, connect, connect_with};

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

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    fn url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("state.db").display())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixes_isolate_on_one_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_prefix_isolation(&url(&dir)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn percent_encoded_path_is_the_decoded_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spaced = dir.path().join("my dir");
        std::fs::create_dir(&spaced).expect("mkdir");
        let encoded = format!(
            "sqlite://{}/my%20dir/state.db?prefix=my%20bot",
            dir.path().display()
        );
        let state = connect(&encoded).await.expect("connects");
        state.subscribe("t").await.expect("subscribe");
        state.close().await.expect("close");
        assert!(spaced.join("state.db").exists(), "the decoded path is used");
        assert!(!dir.path().join("my%20dir").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_inspector_shows_the_holder_per_prefix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("{}?prefix=bot1", url(&dir));
        let state = connect(&url).await.expect("connects");
        let lock = state
            .acquire_lock("slack:C1:t1", Duration::from_secs(60))
            .await
            .expect("acquire")
            .expect("free");
        let reader = chat_state::lock_inspector(&url).await.expect("reader");
        let info = reader.lock_info("slack:C1:t1").await.expect("read");
        assert_eq!(info.map(|i| i.token), Some(lock.token.clone()));
        let other = format!("{}?prefix=bot2", super::sqlite::url(&dir));
        let reader = chat_state::lock_inspector(&other).await.expect("reader");
        assert_eq!(reader.lock_info("slack:C1:t1").await.expect("read"), None);
        state.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inspect_never_creates_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.db");
        let result = chat_state::lock_inspector(&format!("sqlite://{}", missing.display())).await;
        assert!(result.is_err());
        assert!(
            !missing.exists() || std::fs::metadata(&missing).map(|m| m.len()).unwrap_or(0) == 0
        );
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use chat_state_test_support::{RedisServer, free_port};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixes_isolate_on_one_server() {
        let server = RedisServer::start();
        assert_prefix_isolation(&server.url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn percent_encoded_password_reaches_the_server_decoded() {
        let server = RedisServer::start_with_args(&["--requirepass", "p@ss:w/rd"]);
        let port = server.port();
        let url = format!("redis://:p%40ss%3Aw%2Frd@127.0.0.1:{port}?prefix=pw");
        let state = connect(&url)
            .await
            .expect("the decoded password is accepted");
        state.subscribe("t").await.expect("subscribe");
        assert!(state.is_subscribed("t").await.expect("read"));
        state.close().await.expect("close");
        let err = connect(&format!("redis://:wrong@127.0.0.1:{port}"))
            .await
            .err()
            .expect("a wrong password is refused");
        assert_eq!(err.backend(), "redis", "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ipv6_host() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: no IPv6 loopback on this machine");
            return;
        }
        let server = RedisServer::start_with_args(&["--bind", "127.0.0.1", "::1"]);
        let url = format!("redis://[::1]:{}?prefix=v6", server.port());
        let state = connect(&url).await.expect("connects over IPv6");
        state.set("k", b"1", None).await.expect("set");
        state.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_inspector_reads_the_redis_holder() {
        let server = RedisServer::start();
        let url = format!("{}?prefix=bot1", server.url());
        let state = connect(&url).await.expect("connects");
        let lock = state
            .acquire_lock("slack:C1:t1", Duration::from_secs(60))
            .await
            .expect("acquire")
            .expect("free");
        let reader = chat_state::lock_inspector(&url).await.expect("reader");
        let info = reader.lock_info("slack:C1:t1").await.expect("read");
        assert_eq!(info.map(|i| i.fence), Some(Some(lock.fence)));
        let reader = chat_state::lock_inspector(&format!("{}?prefix=bot2", server.url()))
            .await
            .expect("reader");
        assert_eq!(reader.lock_info("slack:C1:t1").await.expect("read"), None);
        state.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_server_is_a_typed_error() {
        let port = free_port();
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
