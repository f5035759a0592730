//! Configuration: URLs with password and database, the user's own connection manager, key
//! prefixes (validated, isolating), and connect failures.

use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Cache, ErrorKind, Locks, Operation, StateAdapter};
use chat_state_redis::RedisBackend;
use redis::AsyncCommands;

mod support;

#[tokio::test]
async fn url_with_password_and_database() {
    let server = support::RedisServer::start_with_args(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let state = RedisBackend::connect(&url)
        .await
        .expect("connect with password and db");
    state.set("k", b"\"v\"", None).await.unwrap();

    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: String = raw.get("chat-sdk:cache:k").await.unwrap();
    assert_eq!(v, "\"v\"", "written to db 3");
    let db0 = format!("redis://:s3cret@127.0.0.1:{}/0", server.port());
    let mut raw0 = redis::Client::open(db0.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let missing: Option<String> = raw0.get("chat-sdk:cache:k").await.unwrap();
    assert_eq!(missing, None, "not in db 0");

    let wrong = format!("redis://:nope@127.0.0.1:{}/0", server.port());
    let err = RedisBackend::connect(&wrong).await.unwrap_err();
    assert_eq!(err.backend(), "redis");
    assert_eq!(err.operation(), Some(Operation::Open));
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
}

#[tokio::test]
async fn the_applications_own_connection_manager() {
    let server = support::RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let state = RedisBackend::builder_with_manager(manager.clone())
        .key_prefix("mine")
        .connect()
        .await
        .unwrap();
    let lock = state
        .acquire_lock("t", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let mut raw = manager;
    let token: String = raw.get("mine:lock:t").await.unwrap();
    assert_eq!(token, lock.token);
}

#[tokio::test]
async fn prefixes_isolate_bots_and_instances_share_one() {
    let server = support::RedisServer::start();
    let connect = |prefix: &'static str| {
        let url = server.url();
        async move {
            RedisBackend::builder(url)
                .key_prefix(prefix)
                .connect()
                .await
                .unwrap()
        }
    };
    let (a1, a2, b) = (
        connect("bot-a").await,
        connect("bot-a").await,
        connect("bot-b").await,
    );
    // Two instances of one bot share locks; another bot does not see them.
    let lock = a1
        .acquire_lock("t", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        a2.acquire_lock("t", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.acquire_lock("t", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
    a2.force_release_lock("t").await.unwrap();
    let next = a2
        .acquire_lock("t", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.fence > lock.fence,
        "fences are shared by the instances"
    );
    assert!(a1.set_if_not_exists("dedupe", b"1", None).await.unwrap());
    assert!(!a2.set_if_not_exists("dedupe", b"1", None).await.unwrap());
    assert!(b.set_if_not_exists("dedupe", b"1", None).await.unwrap());

    for bad in ["", "a:lock", "a{b}", "with space", &"x".repeat(65)] {
        let err = RedisBackend::builder(server.url())
            .key_prefix(bad)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "prefix {bad:?}");
        assert_eq!(err.operation(), Some(Operation::Open));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_one_lock_winner() {
    let server = support::RedisServer::start();
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(Arc::new(
            RedisBackend::connect(&server.url()).await.unwrap(),
        ));
    }
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = instances[i % 4].clone();
            tokio::spawn(async move { s.acquire_lock("contended", Duration::from_secs(10)).await })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_typed_errors() {
    let err = RedisBackend::connect("http://example").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    // A port nobody listens on: refused, retryable, within the connect timeout.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = std::time::Instant::now();
    let err = RedisBackend::builder(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8), // hang detector, not a speed check
        "took {:?}",
        started.elapsed()
    );

    let err = RedisBackend::builder("redis://127.0.0.1:1")
        .command_timeout(Duration::ZERO)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    for count in [0, chat_state_redis::MAX_CONNECTIONS + 1] {
        let err = RedisBackend::builder("redis://127.0.0.1:1")
            .connections(count)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{count}: {err}");
        assert!(err.to_string().contains("connections is"), "{err}");
    }

    // Use after close, with one connection and with several.
    for connections in [1, 3] {
        let server = support::RedisServer::start();
        let state = RedisBackend::builder(server.url())
            .connections(connections)
            .connect()
            .await
            .unwrap();
        state.close().await.unwrap();
        state.close().await.unwrap();
        assert_eq!(state.get("k").await.unwrap_err().kind(), ErrorKind::Closed);
        for id in ["a", "b", "c", "d"] {
            assert_eq!(
                state
                    .acquire_lock(id, Duration::from_secs(1))
                    .await
                    .unwrap_err()
                    .kind(),
                ErrorKind::Closed
            );
        }
    }
}

#[tokio::test]
async fn scripts_are_preloaded_and_reloaded_after_a_flush() {
    let server = support::RedisServer::start();
    let state = RedisBackend::connect(&server.url()).await.unwrap();
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Preloaded at connect: the server already knows a script by its SHA.
    let sha = redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
    .get_hash()
    .to_owned();
    let known: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(known, vec![true], "the release script was not preloaded");

    // As after a restart or a failover: the script cache is empty (NOSCRIPT), and every
    // scripted operation still works.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    let lock = state
        .acquire_lock("t", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        state
            .extend_lock(&lock, Duration::from_secs(5))
            .await
            .unwrap()
    );
    state.release_lock(&lock).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    state
        .append_to_list("l", b"1", chat_state_core::ListOptions::new())
        .await
        .unwrap();
    let entry =
        chat_state_core::QueueEntry::new(serde_json::json!(1), 1, Duration::from_secs(1 << 40));
    use chat_state_core::{Lists, Queues};
    assert_eq!(state.enqueue("q", entry, 3).await.unwrap(), 1);
    assert_eq!(state.queue_depth("q").await.unwrap(), 1);
    assert!(state.dequeue("q").await.unwrap().is_some());
    assert_eq!(state.get_list("l").await.unwrap(), vec![b"1".to_vec()]);
}

#[tokio::test]
async fn commands_spread_over_the_connections_asked_for() {
    let server = support::RedisServer::start();
    let state = RedisBackend::builder(server.url())
        .connections(3)
        .connect()
        .await
        .unwrap();
    for i in 0..64 {
        assert_eq!(state.get(&format!("k{i}")).await.unwrap(), None);
    }
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut raw)
        .await
        .unwrap();
    // `cmd=` is each client's last command: all three of ours last sent a GET.
    let getters = clients.lines().filter(|l| l.contains(" cmd=get ")).count();
    assert_eq!(getters, 3, "{clients}");
}
