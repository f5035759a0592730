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

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use chat_state_test_support::free_port;
    use chat_state_test_support::postgres::{PgServer, shared, unique_prefix};

    /// A fresh database on the shared server, so a test that counts tables sees only its own.
    fn fresh_database(server: &PgServer) -> String {
        let name = format!("facade_{}", unique_prefix().to_lowercase());
        server.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixes_isolate_on_one_server() {
        let server = shared();
        let database = fresh_database(server);
        assert_prefix_isolation(&server.url_for(&database)).await;
        // `postgresql://` is the same backend, and sees the same rows.
        let url = server
            .url_for(&database)
            .replacen("postgres://", "postgresql://", 1);
        let state = connect(&format!("{url}?prefix=facade-a"))
            .await
            .expect("postgresql:// connects");
        assert_eq!(state.backend_name(), "postgres");
        assert!(state.is_subscribed("t1").await.expect("read"));
        state.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn percent_encoded_password_reaches_the_server_decoded() {
        let server = shared();
        let database = fresh_database(server);
        let role = format!("bot_{}", unique_prefix().to_lowercase());
        server.psql(
            "postgres",
            &format!(
                "CREATE ROLE {role} LOGIN PASSWORD 'p@ss:w/rd'; \
                 GRANT ALL ON DATABASE {database} TO {role}; \
                 ALTER DATABASE {database} OWNER TO {role}"
            ),
        );
        let port = server.port;
        let url =
            format!("postgres://{role}:p%40ss%3Aw%2Frd@127.0.0.1:{port}/{database}?prefix=pw");
        let state = connect(&url)
            .await
            .expect("the decoded password is accepted");
        state.subscribe("t").await.expect("subscribe");
        assert!(state.is_subscribed("t").await.expect("read"));
        state.close().await.expect("close");
        let err = connect(&format!(
            "postgres://{role}:wrong@127.0.0.1:{port}/{database}"
        ))
        .await
        .err()
        .expect("a wrong password is refused");
        assert_eq!(err.backend(), "postgres", "{err}");
        assert_ne!(
            err.kind(),
            ErrorKind::InvalidInput,
            "the URL is valid: {err}"
        );
        assert!(
            err.to_string().contains("check the user and password"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_database_is_a_typed_error_naming_it() {
        let server = shared();
        let err = connect(&server.url_for("no_such_database"))
            .await
            .err()
            .expect("no such database");
        assert_eq!(err.backend(), "postgres", "{err}");
        let text = err.to_string();
        assert!(text.contains("no_such_database"), "{err}");
        assert!(text.contains("create the database"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_inspector_reads_the_holder_per_prefix_and_creates_nothing() {
        let server = shared();
        let database = fresh_database(server);
        let base = server.url_for(&database);
        // Verify-only: an empty database is refused, and still has no tables afterwards.
        let err = chat_state::lock_inspector(&format!("{base}?prefix=bot1"))
            .await
            .err()
            .expect("an empty database has nothing to inspect");
        assert!(err.to_string().contains("chat_state_locks"), "{err}");
        let tables = "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'chat_state%'";
        assert_eq!(server.psql(&database, tables), "0");

        let url = format!("{base}?prefix=bot1");
        let state = connect(&url).await.expect("connects");
        let before = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("ms fit");
        let lock = state
            .acquire_lock("slack:C1:t1", Duration::from_secs(60))
            .await
            .expect("acquire")
            .expect("free");
        let reader = chat_state::lock_inspector(&url).await.expect("reader");
        let info = reader
            .lock_info("slack:C1:t1")
            .await
            .expect("read")
            .expect("held");
        assert_eq!(info.token, lock.token);
        assert!(
            info.expires_at >= before + 59_000 && info.expires_at <= before + 61_000,
            "expires {} ms after the acquire began",
            info.expires_at.saturating_sub(before)
        );
        let other = chat_state::lock_inspector(&format!("{base}?prefix=bot2"))
            .await
            .expect("reader");
        assert_eq!(other.lock_info("slack:C1:t1").await.expect("read"), None);
        state.release_lock(&lock).await.expect("release");
        assert_eq!(reader.lock_info("slack:C1:t1").await.expect("read"), None);
        state.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_server_is_a_typed_error_within_connect_timeout() {
        let port = free_port();
        let started = std::time::Instant::now();
        let err = connect(&format!(
            "postgres://u:p@127.0.0.1:{port}/d?connect_timeout=2"
        ))
        .await
        .err()
        .expect("nothing listens there");
        assert!(
            matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
