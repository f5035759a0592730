//! Bad input at connect, schema checks, the sweep, and a server that goes away (stopped,
//! SIGSTOPped, killed with SIGKILL) under a live adapter.

use std::time::{Duration, Instant};

use chat_state_core::{Cache, ErrorKind, ManualClock};
use chat_state_postgres::{OpenFailure, PostgresBackend, SchemaMode};
use sqlx::postgres::PgPoolOptions;

use chat_state_test_support::postgres as support;

fn open_failure(e: &chat_state_core::Error) -> Option<&OpenFailure> {
    std::error::Error::source(e)?.downcast_ref::<OpenFailure>()
}

/// A fresh, empty database on the shared server; returns its URL.
async fn fresh_database() -> String {
    let server = support::shared();
    let name = format!("db_{}", support::unique_prefix().to_lowercase());
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server.url())
        .await
        .expect("connect as superuser");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create database");
    pool.close().await;
    server.url_for(&name)
}

#[tokio::test]
async fn invalid_url_is_invalid_input() {
    let err = PostgresBackend::builder("postgres://[::1")
        .connect()
        .await
        .expect_err("invalid URL");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(matches!(
        open_failure(&err),
        Some(OpenFailure::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn wrong_password_is_a_backend_error_and_fast() {
    let server = support::shared();
    let url = format!(
        "postgres://postgres:wrong@127.0.0.1:{}/postgres",
        server.port
    );
    let started = Instant::now();
    let err = PostgresBackend::builder(url)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("wrong password");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!err.message().contains("wrong"), "no password in: {err}");
    assert!(
        matches!(err.kind(), ErrorKind::Backend | ErrorKind::Timeout),
        "{err}"
    );
}

#[tokio::test]
async fn missing_database_fails() {
    let server = support::shared();
    let err = PostgresBackend::builder(server.url_for("no_such_database"))
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("missing database");
    assert!(
        matches!(err.kind(), ErrorKind::Backend | ErrorKind::Timeout),
        "{err}"
    );
}

#[tokio::test]
async fn verify_only_on_an_empty_database_names_every_table() {
    let url = fresh_database().await;
    let err = PostgresBackend::builder(&url)
        .schema_mode(SchemaMode::VerifyOnly)
        .connect()
        .await
        .expect_err("empty database");
    let Some(OpenFailure::SchemaMissing { missing }) = open_failure(&err) else {
        panic!("not SchemaMissing: {err}");
    };
    for table in [
        "chat_state_subscriptions",
        "chat_state_locks",
        "chat_state_cache",
        "chat_state_lists",
        "chat_state_queues",
        "chat_state_lock_fences",
        "chat_state_fences",
        "chat_state_schema_version",
        "chat_state_admit()",
    ] {
        assert!(missing.iter().any(|m| m == table), "{table} in {missing:?}");
    }
    // Nothing was created: verify-only still fails, then create works, then verify passes.
    assert!(
        PostgresBackend::builder(&url)
            .schema_mode(SchemaMode::VerifyOnly)
            .connect()
            .await
            .is_err()
    );
    PostgresBackend::builder(&url)
        .connect()
        .await
        .expect("create");
    PostgresBackend::builder(&url)
        .schema_mode(SchemaMode::VerifyOnly)
        .connect()
        .await
        .expect("verify after create");
}

/// A least-privilege role in verify-only mode: every privilege it lacks is named, nothing is
/// written; once granted exactly what the error listed, every kind of operation works (so the
/// list is also enough).
#[tokio::test]
async fn verify_only_names_each_missing_privilege_and_the_grants_suffice() {
    let server = support::shared();
    let url = fresh_database().await;
    let database = url.rsplit('/').next().expect("database name").to_owned();
    let owner = PostgresBackend::builder(&url)
        .connect()
        .await
        .expect("create");
    chat_state_core::StateAdapter::close(&owner).await.unwrap();
    let role = format!("r_{}", support::unique_prefix().to_lowercase());
    server.psql(
        &database,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'pw'; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; \
             GRANT INSERT, UPDATE ON chat_state_locks, chat_state_lock_fences TO {role}; \
             REVOKE EXECUTE ON FUNCTION chat_state_admit FROM PUBLIC"
        ),
    );
    let role_url = format!("postgres://{role}:pw@127.0.0.1:{}/{database}", server.port);
    let verify = || {
        PostgresBackend::builder(&role_url)
            .schema_mode(SchemaMode::VerifyOnly)
            .sweep_interval(None)
            .connect()
    };
    let err = verify().await.expect_err("privileges are missing");
    let Some(OpenFailure::SchemaMissing { missing }) = open_failure(&err) else {
        panic!("not SchemaMissing: {err}");
    };
    let listed: Vec<&str> = missing.iter().map(String::as_str).collect();
    for expected in [
        "privilege INSERT on chat_state_subscriptions",
        "privilege DELETE on chat_state_subscriptions",
        "privilege DELETE on chat_state_locks",
        "privilege INSERT on chat_state_cache",
        "privilege UPDATE on chat_state_queues",
        "privilege DELETE on chat_state_fences",
        "privilege USAGE on sequence public.chat_state_lists_seq_seq",
        "privilege USAGE on sequence public.chat_state_queues_seq_seq",
        "privilege EXECUTE on chat_state_admit()",
    ] {
        assert!(listed.contains(&expected), "{expected} not in {listed:?}");
    }
    for granted in [
        "privilege SELECT on chat_state_cache",
        "privilege INSERT on chat_state_locks",
        "privilege UPDATE on chat_state_lock_fences",
    ] {
        assert!(
            !listed.contains(&granted),
            "{granted} is granted: {listed:?}"
        );
    }
    assert!(
        err.to_string().contains("GRANT the privileges listed"),
        "{err}"
    );
    let rows = "SELECT count(*) FROM chat_state_locks";
    assert_eq!(server.psql(&database, rows), "0", "nothing written");

    // Grant exactly what was listed; then every operation, dispatch included, must work.
    let mut grants = Vec::new();
    for item in missing {
        let Some(rest) = item.strip_prefix("privilege ") else {
            panic!("only privileges are missing: {item}");
        };
        let (privilege, object) = rest.split_once(" on ").expect("`P on X`");
        let object = match object.strip_suffix("()") {
            Some(function) => format!("FUNCTION {function}"),
            None => object.to_owned(),
        };
        grants.push(format!("GRANT {privilege} ON {object} TO {role}"));
    }
    server.psql(&database, &grants.join("; "));
    let state = verify().await.expect("every privilege is granted");
    exercise_every_table(&state).await;
    chat_state_core::StateAdapter::close(&state).await.unwrap();
}

/// One call of each kind that touches the tables (the dispatch ones through their functions).
async fn exercise_every_table(state: &chat_state_postgres::PostgresState) {
    use chat_state_core::{Admission, Admit, Dispatch, Lists, Locks, Queues, Subscriptions};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let ttl = Some(Duration::from_secs(60));
    state.subscribe("t").await.expect("subscribe");
    assert!(state.is_subscribed("t").await.expect("is_subscribed"));
    state.unsubscribe("t").await.expect("unsubscribe");
    state.set("k", b"1", ttl).await.expect("set");
    assert!(
        !state
            .set_if_not_exists("k", b"2", ttl)
            .await
            .expect("set_if_not_exists")
    );
    state.delete("k").await.expect("delete");
    state
        .append_to_list(
            "l",
            b"1",
            chat_state_core::ListOptions::new()
                .max_length(5)
                .ttl(Duration::from_secs(60)),
        )
        .await
        .expect("append");
    assert_eq!(state.get_list("l").await.expect("get_list").len(), 1);
    let lock = state
        .acquire_lock("t", Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("free");
    assert!(
        state
            .extend_lock(&lock, Duration::from_secs(60))
            .await
            .expect("extend")
    );
    let entry = chat_state_core::QueueEntry::new(
        serde_json::json!({"id": "m"}),
        u64::try_from(now).expect("ms fit"),
        Duration::from_secs(3600),
    );
    state.enqueue("t", entry, 10).await.expect("enqueue");
    assert_eq!(state.queue_depth("t").await.expect("depth"), 1);
    assert!(state.dequeue("t").await.expect("dequeue").is_some());
    assert!(matches!(
        state
            .set_fenced(&lock, "s", b"1", ttl)
            .await
            .expect("set_fenced"),
        chat_state_core::FencedWrite::Stored
    ));
    let mut lock = lock;
    let handoff = state
        .release_or_next(&mut lock, Duration::from_secs(60))
        .await
        .expect("release_or_next");
    assert!(
        matches!(handoff, chat_state_core::Handoff::Released),
        "{handoff:?}"
    );
    let admitted = state.admit(&Admit::new("t", "m1")).await.expect("admit");
    let Admission::Admitted { lock, .. } = admitted else {
        panic!("not admitted: {admitted:?}");
    };
    state.release_lock(&lock).await.expect("release");
    state.force_release_lock("t").await.expect("force_release");
    state.backend().sweep_expired().await.expect("sweep");
}

#[tokio::test]
async fn wrong_table_shape_is_refused() {
    let url = fresh_database().await;
    let pool = PgPoolOptions::new().connect(&url).await.expect("connect");
    sqlx::query(
        "CREATE TABLE chat_state_cache (key_prefix text, cache_key text, value text,
         PRIMARY KEY (key_prefix, cache_key))",
    )
    .execute(&pool)
    .await
    .expect("create a wrong table");
    let err = PostgresBackend::builder(&url)
        .connect()
        .await
        .expect_err("wrong shape");
    let Some(OpenFailure::SchemaMissing { missing }) = open_failure(&err) else {
        panic!("not SchemaMissing: {err}");
    };
    assert!(
        missing.iter().any(|m| m == "chat_state_cache.expires_at"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let url = fresh_database().await;
    PostgresBackend::builder(&url)
        .connect()
        .await
        .expect("create");
    let pool = PgPoolOptions::new().connect(&url).await.expect("connect");
    sqlx::query("UPDATE chat_state_schema_version SET version = 99")
        .execute(&pool)
        .await
        .expect("bump version");
    let err = PostgresBackend::builder(&url)
        .connect()
        .await
        .expect_err("newer schema");
    assert!(
        matches!(
            open_failure(&err),
            Some(OpenFailure::SchemaTooNew { found: 99, .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn sweep_deletes_expired_rows_only_for_its_prefix() {
    let server = support::shared();
    let clock = ManualClock::starting_now();
    let prefix = support::unique_prefix();
    let state = PostgresBackend::builder(server.url())
        .key_prefix(&prefix)
        .clock(clock.clone())
        .sweep_interval(None)
        .connect()
        .await
        .expect("connect");
    for i in 0..30 {
        state
            .set(&format!("k{i}"), b"1", Some(Duration::from_secs(1)))
            .await
            .expect("set");
    }
    state.set("forever", b"1", None).await.expect("set");
    assert_eq!(state.backend().sweep_expired().await.expect("sweep"), 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(state.backend().sweep_expired().await.expect("sweep"), 30);
    assert_eq!(
        state.get("forever").await.expect("get"),
        Some(b"1".to_vec())
    );
}

#[tokio::test]
async fn a_stopped_server_gives_retryable_errors_and_the_adapter_recovers() {
    let server = support::PgServer::start();
    let state = PostgresBackend::builder(server.url())
        .connect_timeout(Duration::from_secs(2))
        .statement_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect");
    state.set("k", b"v", None).await.expect("set");
    server.stop();
    let started = Instant::now();
    let err = state.get("k").await.expect_err("server down");
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    server.pg_ctl_start();
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok(v) = state.get("k").await {
            assert_eq!(v, Some(b"v".to_vec()));
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "adapter did not recover after the restart");
}

#[tokio::test]
async fn a_sigstopped_server_gives_timeouts_not_hangs() {
    let server = support::PgServer::start();
    let state = PostgresBackend::builder(server.url())
        .connect_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    state.set("k", b"v", None).await.expect("set");
    let pids = server.process_ids();
    support::signal(&pids, "-STOP");
    let started = Instant::now();
    let result = state.get("k").await;
    let elapsed = started.elapsed();
    support::signal(&pids, "-CONT");
    let err = result.expect_err("stopped server");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let mut recovered = false;
    for _ in 0..50 {
        if state.get("k").await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "adapter did not recover after SIGCONT");
}

#[tokio::test]
async fn kill_9_mid_stream_loses_no_acknowledged_write() {
    let server = support::PgServer::start();
    let state = PostgresBackend::builder(server.url())
        .connect_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    let mut acknowledged = Vec::new();
    let mut killed = false;
    for i in 0..400 {
        if i == 200 {
            support::signal(&server.process_ids(), "-KILL");
            killed = true;
        }
        if state.set(&format!("k{i}"), b"v", None).await.is_ok() {
            acknowledged.push(i);
        }
        if killed && acknowledged.last() != Some(&i) && i > 210 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pg_ctl_start();
    let mut ok = false;
    for _ in 0..100 {
        if state.get("k0").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no recovery after restart");
    assert!(acknowledged.len() >= 200);
    for i in acknowledged {
        assert_eq!(
            state.get(&format!("k{i}")).await.expect("get"),
            Some(b"v".to_vec()),
            "acknowledged write k{i} lost"
        );
    }
}
