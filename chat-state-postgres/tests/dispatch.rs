//! What the shared suite cannot see of the native dispatch and of the lock statements: the
//! migration of a version-1 database, the round trips each operation costs on the wire, and
//! the release of a lock taken by an acquire (or admit) whose caller had timed out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_state_core::{
    Admission, Admit, Dispatch, ErrorKind, FencedSet, FencedWrite, Handoff, Locks, QueueEntry,
};
use chat_state_postgres::{OpenFailure, PostgresBackend, PostgresState, SchemaMode};
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use chat_state_test_support::postgres as support;

const LONG: Duration = Duration::from_secs(60);

fn open_failure(e: &chat_state_core::Error) -> Option<&OpenFailure> {
    std::error::Error::source(e)?.downcast_ref::<OpenFailure>()
}

/// A fresh, empty database on the shared server; returns its URL.
async fn fresh_database() -> String {
    let server = support::shared();
    let name = format!("db_{}", support::unique_prefix().to_lowercase());
    let mut conn = PgConnection::connect(&server.url())
        .await
        .expect("connect as superuser");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    server.url_for(&name)
}

/// A database exactly as chat-state-postgres's schema version 1 left it, with a lock
/// acquired (fence 1) and released, and a cache value: version 2 minus what it added.
async fn version_1_database() -> String {
    let url = fresh_database().await;
    let state = PostgresBackend::builder(&url)
        .connect()
        .await
        .expect("create");
    let lock = state.acquire_lock("t", LONG).await.unwrap().expect("free");
    assert_eq!(lock.fence, 1);
    state.release_lock(&lock).await.unwrap();
    chat_state_core::Cache::set(&state, "k", b"v1", None)
        .await
        .unwrap();
    chat_state_core::StateAdapter::close(&state).await.unwrap();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    for statement in [
        "DROP FUNCTION chat_state_admit",
        "DROP FUNCTION chat_state_release_or_next",
        "DROP FUNCTION chat_state_set_fenced",
        "DROP FUNCTION chat_state_list_append",
        "DROP FUNCTION chat_state_enqueue",
        "DROP TABLE chat_state_fences",
        "UPDATE chat_state_schema_version SET version = 1",
    ] {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect(statement);
    }
    url
}

#[tokio::test]
async fn a_version_1_database_is_verified_as_incomplete_then_migrated() {
    let url = version_1_database().await;
    let err = PostgresBackend::builder(&url)
        .schema_mode(SchemaMode::VerifyOnly)
        .connect()
        .await
        .expect_err("version 1 lacks the dispatch schema");
    let Some(OpenFailure::SchemaMissing { missing }) = open_failure(&err) else {
        panic!("not SchemaMissing: {err}");
    };
    for what in [
        "chat_state_fences",
        "chat_state_set_fenced()",
        "chat_state_release_or_next()",
        "chat_state_admit()",
    ] {
        assert!(missing.iter().any(|m| m == what), "{what} in {missing:?}");
    }
    assert!(
        !missing.iter().any(|m| m.starts_with("chat_state_cache")),
        "{missing:?}"
    );

    // Verify-only changed nothing; version 1 with the tables back is still short of the
    // version row.
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let version: i32 = sqlx::query_scalar("SELECT version FROM chat_state_schema_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 1);

    let state = PostgresBackend::builder(&url)
        .connect()
        .await
        .expect("migrate from version 1");
    let version: i32 = sqlx::query_scalar("SELECT version FROM chat_state_schema_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 2);
    // Version 1's data is kept, and its fences go on increasing.
    assert_eq!(
        chat_state_core::Cache::get(&state, "k").await.unwrap(),
        Some(b"v1".to_vec())
    );
    let Admission::Admitted { mut lock, .. } = state
        .admit(&Admit::new("t", "dedupe:1").lock_ttl(LONG))
        .await
        .unwrap()
    else {
        panic!("not admitted");
    };
    assert_eq!(lock.fence, 2);
    assert!(state.atomic_dispatch());
    let write = FencedSet {
        key: "k",
        value: b"v2",
        ttl: None,
    };
    assert_eq!(
        state
            .release_or_next_with(&mut lock, LONG, write)
            .await
            .unwrap(),
        Handoff::Released
    );
    assert_eq!(
        chat_state_core::Cache::get(&state, "k").await.unwrap(),
        Some(b"v2".to_vec())
    );
    PostgresBackend::builder(&url)
        .schema_mode(SchemaMode::VerifyOnly)
        .connect()
        .await
        .expect("verify after the migration");
}

/// Messages the client sends, counted by what the client then waits for.
#[derive(Debug, Default)]
struct Wire {
    /// Syncs closing a batch with an Execute, plus simple Queries: statements, each one
    /// round trip the caller waits for.
    statements: AtomicU64,
    /// Every Sync and simple Query: all round trips, including sqlx's pings of a
    /// connection when the pool hands it out and takes it back.
    all: AtomicU64,
}

impl Wire {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.statements.load(Ordering::SeqCst),
            self.all.load(Ordering::SeqCst),
        )
    }
}

/// Forwards the client's bytes to the server, parsing the frontend protocol (startup
/// message, then typed messages) to count round trips.
async fn client_to_server(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    wire: Arc<Wire>,
) {
    let mut buffer = Vec::new();
    let mut started = false;
    let mut executed = false;
    let mut chunk = [0u8; 8192];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        loop {
            let header = if started { 5 } else { 4 };
            if buffer.len() < header {
                break;
            }
            let at = header - 4;
            let len =
                u32::from_be_bytes([buffer[at], buffer[at + 1], buffer[at + 2], buffer[at + 3]])
                    as usize;
            if buffer.len() < at + len {
                break;
            }
            if started {
                match buffer[0] {
                    b'E' => executed = true,
                    b'S' => {
                        wire.all.fetch_add(1, Ordering::SeqCst);
                        if std::mem::take(&mut executed) {
                            wire.statements.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    b'Q' => {
                        wire.all.fetch_add(1, Ordering::SeqCst);
                        wire.statements.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            buffer.drain(..at + len);
            started = true;
        }
    }
}

/// A counting proxy in front of the shared server; returns its URL (TLS off, so the
/// protocol is readable).
async fn counting_proxy(wire: Arc<Wire>) -> String {
    let server = support::shared();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let upstream = server.port;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let (client_read, mut client_write) = client.into_split();
            let (mut server_read, server_write) = server.into_split();
            tokio::spawn(client_to_server(client_read, server_write, wire.clone()));
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    format!(
        "postgres://postgres:{}@127.0.0.1:{port}/postgres?sslmode=disable",
        support::PASSWORD
    )
}

/// Each dispatch operation is one statement, one round trip; printed beside the primitive
/// calls (`--nocapture`) with the pool's pings.
#[tokio::test]
async fn each_dispatch_operation_is_one_round_trip() {
    let wire = Arc::new(Wire::default());
    let url = counting_proxy(wire.clone()).await;
    let state = PostgresBackend::builder(url)
        .key_prefix(support::unique_prefix())
        .max_connections(1)
        .sweep_interval(None)
        .connect()
        .await
        .expect("connect through the proxy");
    let now = chat_state_core::Clock::now_ms(&chat_state_core::SystemClock);
    let entry = QueueEntry::new(json!({"n": 1}), now, LONG);
    // Each call twice: the first prepares its statement on the connection.
    let mut costs = Vec::new();
    for round in 0..2 {
        macro_rules! measure {
            ($name:expr, $call:expr) => {{
                // The pool's ping of the returned connection runs after a call: let it land.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let before = wire.snapshot();
                let out = $call;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let after = wire.snapshot();
                if round == 1 {
                    costs.push(($name, after.0 - before.0, after.1 - before.1));
                }
                out
            }};
        }
        let thread = format!("t{round}");
        let (key, busy_key) = (format!("dedupe:{round}"), format!("dedupe:busy:{round}"));
        let admit = Admit::new(&thread, &key).lock_ttl(LONG).read("state");
        let admitted = measure!("admit_and_read", state.admit(&admit).await.unwrap());
        let Admission::Admitted { mut lock, .. } = admitted else {
            panic!("not admitted: {admitted:?}");
        };
        let busy = Admit::new(&thread, &busy_key)
            .lock_ttl(LONG)
            .queue_when_busy(entry.clone(), 10);
        let queued = measure!("admit (busy, queued)", state.admit(&busy).await.unwrap());
        assert_eq!(queued, Admission::Queued { depth: 1 });
        let stored = measure!(
            "set_fenced",
            state.set_fenced(&lock, "state", b"1", None).await.unwrap()
        );
        assert_eq!(stored, FencedWrite::Stored);
        let next = measure!(
            "release_or_next (next)",
            state.release_or_next(&mut lock, LONG).await.unwrap()
        );
        assert!(matches!(next, Handoff::Next(_)), "{next:?}");
        let write = FencedSet {
            key: "state",
            value: b"2",
            ttl: None,
        };
        let released = measure!(
            "release_or_next_with (released)",
            state
                .release_or_next_with(&mut lock, LONG, write)
                .await
                .unwrap()
        );
        assert_eq!(released, Handoff::Released);
        let lock = measure!(
            "acquire_lock",
            state.acquire_lock(&thread, LONG).await.unwrap()
        )
        .expect("free");
        measure!("release_lock", state.release_lock(&lock).await.unwrap());
    }
    for (name, statements, all) in &costs {
        println!(
            "{name}: {statements} statement round trip(s), {all} in all with the pool's pings"
        );
    }
    for (name, statements, _) in &costs {
        assert_eq!(*statements, 1, "{name}: {costs:?}");
    }
}

/// A pool of our own: no server-side `statement_timeout`, so a statement the client gave up
/// on keeps running on the server; no ping before handing out a connection, so the
/// statement is sent at once even to a stopped server.
async fn own_pool_state(url: &str, prefix: &str, timeout: Duration) -> PostgresState {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect_lazy(url)
        .expect("pool");
    PostgresBackend::with_pool(pool)
        .key_prefix(prefix)
        .statement_timeout(timeout)
        .sweep_interval(None)
        .connect()
        .await
        .expect("connect")
}

/// Holds the row of `thread`'s last fence (in an open transaction) until dropped or
/// committed: an acquisition of that lock then blocks on the server after it was sent.
async fn block_fence_row(url: &str, prefix: &str, thread: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let rows = sqlx::query(
        "SELECT 1 FROM chat_state_lock_fences WHERE key_prefix = $1 AND thread_id = $2 FOR UPDATE",
    )
    .bind(prefix)
    .bind(thread)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "the fence row exists");
    conn
}

/// Polls until `thread`'s lock can be taken; returns it and how long that took.
async fn wait_until_free(
    state: &PostgresState,
    thread: &str,
    within: Duration,
) -> (chat_state_core::Lock, Duration) {
    let started = Instant::now();
    loop {
        if let Some(lock) = state.acquire_lock(thread, LONG).await.unwrap() {
            return (lock, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "the lock was still held {within:?} later (its TTL is {LONG:?})"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A state whose calls time out after 300 ms, with lock `t` taken once and released (so
/// its fence row exists; the lock returned is that first one), and a connection holding
/// the fence row: the next acquisition of `t` is sent and then blocks on the server.
async fn blocked_acquisition() -> (PostgresState, chat_state_core::Lock, PgConnection) {
    let url = support::shared().url();
    let prefix = support::unique_prefix();
    let state = own_pool_state(&url, &prefix, Duration::from_millis(300)).await;
    let first = state.acquire_lock("t", LONG).await.unwrap().expect("free");
    state.release_lock(&first).await.unwrap();
    let blocker = block_fence_row(&url, &prefix, "t").await;
    (state, first, blocker)
}

/// After the caller timed out: lets the blocked statement run (after a pause, so it is
/// still blocked once its caller gave up), waits until `t` is free again, and checks that
/// the statement did take the lock (the next fence is `first`'s plus 2) before the adapter
/// released it. Returns how long the lock took to come free.
async fn unblock_and_expect_released(
    state: &PostgresState,
    first: &chat_state_core::Lock,
    mut blocker: PgConnection,
) -> Duration {
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    let (lock, waited) = wait_until_free(state, "t", Duration::from_secs(10)).await;
    assert_eq!(
        lock.fence,
        first.fence + 2,
        "fences: {first:?} then {lock:?}"
    );
    waited
}

/// The caller of an acquire times out while the statement waits on the server; the
/// statement then takes the lock for a token only the adapter knows, and the adapter
/// releases it, long before the TTL.
#[tokio::test]
async fn a_timed_out_acquire_releases_the_lock_it_took_later() {
    let (state, first, blocker) = blocked_acquisition().await;
    let err = state
        .acquire_lock("t", LONG)
        .await
        .expect_err("blocked on the server");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let waited = unblock_and_expect_released(&state, &first, blocker).await;
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

/// The same for an admit, which takes the thread's lock too: the message stays claimed
/// (a redelivery is a duplicate, SEMANTICS.md), the lock comes free.
#[tokio::test]
async fn a_timed_out_admit_releases_the_lock_it_took_later() {
    let (state, first, blocker) = blocked_acquisition().await;
    let message = Admit::new("t", "dedupe:m").lock_ttl(LONG);
    let err = state
        .admit(&message)
        .await
        .expect_err("blocked on the server");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    unblock_and_expect_released(&state, &first, blocker).await;
    assert_eq!(state.admit(&message).await.unwrap(), Admission::Duplicate);
}

/// A timed-out acquire that did not get the lock (another caller holds it) leaves that
/// holder's lock alone: the cleanup releases only the token it sent.
#[tokio::test]
async fn the_cleanup_leaves_another_holders_lock_alone() {
    let url = support::shared().url();
    let prefix = support::unique_prefix();
    let state = own_pool_state(&url, &prefix, Duration::from_millis(300)).await;
    let first = state.acquire_lock("t", LONG).await.unwrap().expect("free");
    state.release_lock(&first).await.unwrap();
    let holder = state.acquire_lock("t", LONG).await.unwrap().expect("free");

    // Block on the lock row itself, so the acquire waits without taking anything.
    let mut blocker = PgConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query(
        "SELECT 1 FROM chat_state_locks WHERE key_prefix = $1 AND thread_id = 't' FOR UPDATE",
    )
    .bind(&prefix)
    .fetch_one(&mut blocker)
    .await
    .unwrap();
    let err = state.acquire_lock("t", LONG).await.expect_err("blocked");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    // Past the cleanup's start (one statement timeout and its grace).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        state.extend_lock(&holder, LONG).await.unwrap(),
        "the holder lost its lock"
    );
}

/// The server is stopped (SIGSTOP) with the acquire in its socket buffer: the caller times
/// out, the server runs the acquire when it resumes, and the adapter releases the lock.
#[tokio::test]
async fn an_acquire_sent_to_a_stopped_server_releases_its_lock_after_the_server_resumes() {
    let server = support::PgServer::start();
    let url = server.url();
    let prefix = support::unique_prefix();
    let state = own_pool_state(&url, &prefix, Duration::from_millis(500)).await;
    let first = state.acquire_lock("t", LONG).await.unwrap().expect("free");
    state.release_lock(&first).await.unwrap();

    let pids = server.process_ids();
    support::signal(&pids, "-STOP");
    let result = state.acquire_lock("t", LONG).await;
    support::signal(&pids, "-CONT");
    let err = result.expect_err("stopped server");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");

    let other = own_pool_state(&url, &prefix, Duration::from_secs(5)).await;
    let (lock, _) = wait_until_free(&other, "t", Duration::from_secs(15)).await;
    assert_eq!(
        lock.fence,
        first.fence + 2,
        "fences: {first:?} then {lock:?}"
    );
}

/// Why dispatch runs as functions, not one statement: an admit that waits for the holder's
/// handoff (here both wait behind a third transaction holding the lock row) must read the
/// state the holder wrote in that handoff, which a statement whose snapshot predates the
/// holder's commit would miss.
#[tokio::test]
async fn an_admit_waiting_on_the_handoff_reads_the_holders_last_write() {
    let url = support::shared().url();
    let prefix = support::unique_prefix();
    let state = Arc::new(own_pool_state(&url, &prefix, Duration::from_secs(10)).await);
    let Admission::Admitted { mut lock, .. } = state
        .admit(&Admit::new("t", "dedupe:1").lock_ttl(LONG))
        .await
        .unwrap()
    else {
        panic!("not admitted");
    };
    assert_eq!(
        state.set_fenced(&lock, "state", b"1", None).await.unwrap(),
        FencedWrite::Stored
    );

    let mut blocker = PgConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query(
        "SELECT 1 FROM chat_state_locks WHERE key_prefix = $1 AND thread_id = 't' FOR UPDATE",
    )
    .bind(&prefix)
    .fetch_one(&mut blocker)
    .await
    .unwrap();
    let holder = tokio::spawn({
        let state = state.clone();
        async move {
            let write = FencedSet {
                key: "state",
                value: b"2",
                ttl: None,
            };
            state.release_or_next_with(&mut lock, LONG, write).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = tokio::spawn({
        let state = state.clone();
        async move {
            state
                .admit(&Admit::new("t", "dedupe:2").lock_ttl(LONG).read("state"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();

    assert_eq!(holder.await.unwrap().unwrap(), Handoff::Released);
    let Admission::Admitted { read, .. } = next.await.unwrap().unwrap() else {
        panic!("the next message was not admitted");
    };
    assert_eq!(read, Some(b"2".to_vec()), "the admit read a stale state");
}

/// Expired fence records go with the sweep, like every other expired row.
#[tokio::test]
async fn the_sweep_deletes_expired_fence_records() {
    let clock = chat_state_core::ManualClock::starting_now();
    let state = PostgresBackend::builder(support::shared().url())
        .key_prefix(support::unique_prefix())
        .clock(clock.clone())
        .sweep_interval(None)
        .connect()
        .await
        .expect("connect");
    let lock = state.acquire_lock("t", LONG).await.unwrap().expect("free");
    let ttl = Some(Duration::from_secs(1));
    assert_eq!(
        state.set_fenced(&lock, "k", b"v", ttl).await.unwrap(),
        FencedWrite::Stored
    );
    clock.advance(Duration::from_secs(2));
    // The lock lives on (60 s); the value and its record are gone.
    assert_eq!(state.backend().sweep_expired().await.unwrap(), 2);
    let mut conn = PgConnection::connect(&support::shared().url())
        .await
        .expect("connect");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chat_state_fences WHERE key_prefix = $1")
            .bind(state.backend().key_prefix())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(left, 0);
}
