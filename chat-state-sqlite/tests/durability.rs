//! Reopening, bad input at open, and expired-row cleanup, all on real SQLite files.

use std::error::Error as _;
use std::time::Duration;

use chat_state_core::{
    Cache, Clock, Dispatch, ErrorKind, ListOptions, Lists, Locks, ManualClock, QueueEntry, Queues,
    StateAdapter, Subscriptions,
};
use chat_state_sqlite::{OpenFailure, SchemaMode, SqliteBackend};
use sqlx::{Connection, SqliteConnection};

mod common;
use common::{TempState, fingerprint};

fn open_failure(err: &chat_state_core::Error) -> &OpenFailure {
    err.source()
        .and_then(|s| s.downcast_ref::<OpenFailure>())
        .unwrap_or_else(|| panic!("no OpenFailure behind {err}"))
}

async fn raw(path: &std::path::Path) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("raw connection")
}

async fn count(conn: &mut SqliteConnection, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&mut *conn)
        .await
        .expect("count rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_close_and_reopen() {
    let clock = ManualClock::starting_now();
    let t = TempState::manual(&clock).await;
    let s = &t.state;
    let hour = Duration::from_secs(3600);
    s.subscribe("thread-1").await.unwrap();
    s.set("cache-1", b"v1", Some(hour)).await.unwrap();
    s.set("cache-2", b"forever", None).await.unwrap();
    s.append_to_list("list-1", b"a", ListOptions::new().ttl(hour))
        .await
        .unwrap();
    s.append_to_list("list-1", b"b", ListOptions::new())
        .await
        .unwrap();
    let entry = QueueEntry::new(serde_json::json!({"text": "hi"}), clock.now_ms(), hour);
    s.enqueue("thread-1", entry.clone(), 10).await.unwrap();
    let held = s.acquire_lock("held", hour).await.unwrap().expect("free");
    let released = s
        .acquire_lock("released", hour)
        .await
        .unwrap()
        .expect("free");
    s.release_lock(&released).await.unwrap();
    s.close().await.unwrap();

    let s = SqliteBackend::builder(&t.path)
        .clock(clock.clone())
        .cleanup_interval(None)
        .open()
        .await
        .expect("reopen");
    assert!(s.is_subscribed("thread-1").await.unwrap());
    assert_eq!(s.get("cache-1").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(
        s.get("cache-2").await.unwrap().as_deref(),
        Some(&b"forever"[..])
    );
    assert_eq!(
        s.get_list("list-1").await.unwrap(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(s.queue_depth("thread-1").await.unwrap(), 1);
    // The live lock is still held, by the same token.
    assert!(s.acquire_lock("held", hour).await.unwrap().is_none());
    assert!(s.extend_lock(&held, hour).await.unwrap());
    // Fences keep increasing across the restart, on a released id and on a new one.
    let again = s
        .acquire_lock("released", hour)
        .await
        .unwrap()
        .expect("free");
    assert!(again.fence > released.fence && again.fence > held.fence);
    let fresh = s.acquire_lock("new-id", hour).await.unwrap().expect("free");
    assert!(fresh.fence > again.fence);
    assert_eq!(s.dequeue("thread-1").await.unwrap(), Some(entry));
    // TTLs keep running on the clock, not on the process.
    clock.advance(hour);
    assert_eq!(s.get("cache-1").await.unwrap(), None);
    assert!(s.acquire_lock("held", hour).await.unwrap().is_some());
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_across_expiry_force_release_and_cleanup() {
    let clock = ManualClock::starting_now();
    let t = TempState::manual(&clock).await;
    let s = &t.state;
    let ttl = Duration::from_millis(100);
    let mut last = 0;
    for round in 0..6 {
        let lock = s.acquire_lock("id", ttl).await.unwrap().expect("free");
        assert!(lock.fence > last, "round {round}: {} <= {last}", lock.fence);
        last = lock.fence;
        match round % 3 {
            0 => s.release_lock(&lock).await.unwrap(),
            1 => s.force_release_lock("id").await.unwrap(),
            _ => {
                clock.advance(ttl);
                // Cleanup deletes the expired row; the fence floor stays.
                assert_eq!(s.backend().cleanup_expired().await.unwrap().locks, 1);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteBackend::open(dir.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(matches!(
        open_failure(&err),
        OpenFailure::IsDirectory { .. }
    ));
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_sqlite_file_is_a_typed_error_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db.db");
    let junk: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &junk).unwrap();
    for mode in [SchemaMode::Create, SchemaMode::VerifyOnly] {
        let err = SqliteBackend::builder(&path)
            .schema_mode(mode)
            .open()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
        assert!(matches!(
            open_failure(&err),
            OpenFailure::NotADatabase { .. }
        ));
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), junk);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_a_typed_error_and_nothing_changes() {
    let t = TempState::new(|b| b.cleanup_interval(None)).await;
    t.state.set("k", b"v", None).await.unwrap();
    t.state.close().await.unwrap();
    let mut conn = raw(&t.path).await;
    sqlx::query("UPDATE chat_state_meta SET value = 99 WHERE name = 'schema_version'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let before = fingerprint(&t.path);
    for mode in [SchemaMode::Create, SchemaMode::VerifyOnly] {
        let err = SqliteBackend::builder(&t.path)
            .schema_mode(mode)
            .open()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
        assert_eq!(
            open_failure(&err),
            &OpenFailure::SchemaTooNew {
                found: 99,
                supported: chat_state_sqlite::SCHEMA_VERSION
            }
        );
        assert!(err.to_string().contains("version 99"), "{err}");
        assert!(fingerprint(&t.path) == before, "the file changed");
    }
    let mut conn = raw(&t.path).await;
    let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM chat_state_cache")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_only_names_what_is_missing_and_runs_no_ddl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    // The application's own database, without our schema.
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE app_users (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let before = fingerprint(&path);
    let err = SqliteBackend::builder(&path)
        .schema_mode(SchemaMode::VerifyOnly)
        .open()
        .await
        .unwrap_err();
    let OpenFailure::SchemaMissing { missing } = open_failure(&err) else {
        panic!("wrong failure: {err}");
    };
    assert!(
        missing.contains(&"table chat_state_locks".to_owned()),
        "{missing:?}"
    );
    assert!(err.to_string().contains("table chat_state_cache"), "{err}");
    assert!(fingerprint(&path) == before, "verify-only changed the file");

    // Applying the published DDL satisfies verify-only mode.
    let mut conn = raw(&path).await;
    sqlx::raw_sql(&SqliteBackend::schema_sql())
        .execute(&mut conn)
        .await
        .unwrap();
    // ... unless something is dropped, which the error then names.
    sqlx::query("DROP INDEX chat_state_queue_expiry")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = SqliteBackend::builder(&path)
        .schema_mode(SchemaMode::VerifyOnly)
        .open()
        .await
        .unwrap_err();
    assert_eq!(
        open_failure(&err),
        &OpenFailure::SchemaMissing {
            missing: vec!["index chat_state_queue_expiry".to_owned()]
        }
    );
    sqlx::query("CREATE INDEX chat_state_queue_expiry ON chat_state_queue (expires_at)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let s = SqliteBackend::builder(&path)
        .schema_mode(SchemaMode::VerifyOnly)
        .open()
        .await
        .expect("verify-only accepts the published schema");
    assert!(
        s.acquire_lock("x", Duration::from_secs(1))
            .await
            .unwrap()
            .is_some()
    );
    s.close().await.unwrap();
}

/// Env var that turns this test binary into the read-only child (see below).
const READ_ONLY_CHILD: &str = "CHAT_STATE_SQLITE_READ_ONLY_DB";

/// Opens `path`, expecting the typed read-only failure.
async fn expect_read_only(path: &std::path::Path) {
    let err = SqliteBackend::open(path).await.unwrap_err();
    assert!(
        matches!(open_failure(&err), OpenFailure::ReadOnly { .. }),
        "expected ReadOnly, got {err}"
    );
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("cannot be written"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_file_is_a_typed_error_and_left_untouched() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Ok(path) = std::env::var(READ_ONLY_CHILD) {
        // Child: running as an unprivileged user, for whom the permissions apply.
        expect_read_only(std::path::Path::new(&path)).await;
        return;
    }
    let t = TempState::new(|b| b.cleanup_interval(None)).await;
    t.state.set("k", b"v", None).await.unwrap();
    t.state.close().await.unwrap();
    std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = fingerprint(&t.path);
    // Root ignores file permissions, so as root re-run this test as `nobody`.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    if euid != 0 {
        expect_read_only(&t.path).await;
    } else {
        use std::os::unix::process::CommandExt;
        // `nobody` must reach the file; the directory stays writable so that only the file's
        // own permission is what stops SQLite.
        std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
        // ... and must be able to run the binary, whose build directory may be private to
        // root (a clone under /root): run a world-readable copy from the temporary directory.
        let exe = t.dir().join("test-binary-copy");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run_as_nobody = |exe: &std::path::Path| {
            std::process::Command::new(exe)
                .args([
                    "a_read_only_file_is_a_typed_error_and_left_untouched",
                    "--exact",
                    "--nocapture",
                ])
                .env(READ_ONLY_CHILD, &t.path)
                .uid(65534)
                .gid(65534)
                .output()
        };
        // A noexec /tmp refuses the copy; the original may still be reachable.
        let out = run_as_nobody(&exe)
            .or_else(|_| run_as_nobody(&std::env::current_exe().unwrap()))
            .expect("re-run the test binary as nobody");
        assert!(
            out.status.success(),
            "child failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child ran no test: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(fingerprint(&t.path) == before, "the read-only file changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_only_expired_rows_in_bounded_batches() {
    let clock = ManualClock::starting_now();
    let t = TempState::new({
        let clock = clock.clone();
        move |b| b.clock(clock).cleanup_interval(None).cleanup_batch(3)
    })
    .await;
    let s = &t.state;
    let short = Duration::from_secs(10);
    let long = Duration::from_secs(1000);
    for i in 0..7 {
        s.acquire_lock(&format!("dead-lock-{i}"), short)
            .await
            .unwrap();
        s.set(&format!("dead-{i}"), b"x", Some(short))
            .await
            .unwrap();
        let entry = QueueEntry::new(serde_json::json!(i), clock.now_ms(), short);
        s.enqueue("q", entry, 100).await.unwrap();
    }
    for i in 0..5 {
        s.append_to_list(
            "dead-list",
            format!("{i}").as_bytes(),
            ListOptions::new().ttl(short),
        )
        .await
        .unwrap();
    }
    let live_lock = s.acquire_lock("live-lock", long).await.unwrap().unwrap();
    s.set("live", b"y", Some(long)).await.unwrap();
    s.set("forever", b"z", None).await.unwrap();
    s.append_to_list("live-list", b"l", ListOptions::new().ttl(long))
        .await
        .unwrap();
    s.append_to_list("forever-list", b"f", ListOptions::new())
        .await
        .unwrap();
    let live_entry = QueueEntry::new(serde_json::json!("live"), clock.now_ms(), long);
    s.enqueue("q", live_entry.clone(), 100).await.unwrap();
    s.subscribe("t").await.unwrap();

    // Nothing has expired yet: cleanup removes nothing.
    assert_eq!(s.backend().cleanup_expired().await.unwrap().total(), 0);
    // Exactly at the boundary, the short rows are dead (rule 1: live iff now < expires_at).
    clock.advance(short);
    let report = s.backend().cleanup_expired().await.unwrap();
    assert_eq!(report.locks, 7);
    assert_eq!(report.cache, 7);
    assert_eq!(report.queue_entries, 7);
    assert_eq!(report.lists, 1);
    assert_eq!(report.list_items, 5);

    let mut conn = raw(&t.path).await;
    assert_eq!(count(&mut conn, "chat_state_locks").await, 1);
    assert_eq!(count(&mut conn, "chat_state_cache").await, 2);
    assert_eq!(count(&mut conn, "chat_state_lists").await, 2);
    assert_eq!(count(&mut conn, "chat_state_list_items").await, 2);
    assert_eq!(count(&mut conn, "chat_state_queue").await, 1);
    assert_eq!(count(&mut conn, "chat_state_subscriptions").await, 1);
    conn.close().await.unwrap();
    assert!(s.extend_lock(&live_lock, long).await.unwrap());
    assert_eq!(s.get("live").await.unwrap().as_deref(), Some(&b"y"[..]));
    assert_eq!(s.get("forever").await.unwrap().as_deref(), Some(&b"z"[..]));
    assert_eq!(s.get_list("live-list").await.unwrap(), vec![b"l".to_vec()]);
    assert_eq!(
        s.get_list("forever-list").await.unwrap(),
        vec![b"f".to_vec()]
    );
    assert_eq!(s.dequeue("q").await.unwrap(), Some(live_entry));
    assert!(s.is_subscribed("t").await.unwrap());
    // A dead list's key restarts empty.
    assert!(s.get_list("dead-list").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_cleanup_runs_and_stops_on_close() {
    let clock = ManualClock::starting_now();
    let t = TempState::new({
        let clock = clock.clone();
        move |b| {
            b.clock(clock)
                .cleanup_interval(Some(Duration::from_millis(20)))
        }
    })
    .await;
    t.state
        .set("dead", b"x", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    t.state.set("live", b"y", None).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let mut conn = raw(&t.path).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&mut conn, "chat_state_cache").await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "background cleanup never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        t.state.get("live").await.unwrap().as_deref(),
        Some(&b"y"[..])
    );
    t.state.close().await.unwrap();
    // After close nothing more is deleted, even expired rows.
    sqlx::query("INSERT INTO chat_state_cache (scope, cache_key, value, expires_at) VALUES ('', 'late', x'00', 1)")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&mut conn, "chat_state_cache").await, 2);
    let err = t.state.backend().cleanup_expired().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_pool_can_be_used_and_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    let s = SqliteBackend::builder_with_pool(pool.clone())
        .key_prefix("bot-a")
        .cleanup_interval(None)
        .open()
        .await
        .expect("open on the application's pool");
    let lock = s.acquire_lock("t", Duration::from_secs(30)).await.unwrap();
    assert!(lock.is_some());
    s.set("k", b"v", None).await.unwrap();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    s.close().await.unwrap();
    // The pool is the application's: still open, and it sees the data under the prefix.
    let scope: String = sqlx::query_scalar("SELECT scope FROM chat_state_cache")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(scope, "bot-a");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_isolate_bots_sharing_one_file() {
    let t = TempState::new(|b| b.key_prefix("bot-a").cleanup_interval(None)).await;
    let b = SqliteBackend::builder(&t.path)
        .key_prefix("bot-b")
        .cleanup_interval(None)
        .open()
        .await
        .unwrap();
    let a = &t.state;
    let ttl = Duration::from_secs(30);
    a.set("k", b"from-a", None).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);
    assert!(b.set_if_not_exists("k", b"from-b", None).await.unwrap());
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"from-a"[..]));
    let la = a
        .acquire_lock("thread", ttl)
        .await
        .unwrap()
        .expect("free in a");
    let lb = b
        .acquire_lock("thread", ttl)
        .await
        .unwrap()
        .expect("free in b");
    // One fence floor per file: fences stay unique across prefixes too.
    assert_ne!(la.fence, lb.fence);
    a.subscribe("t").await.unwrap();
    assert!(!b.is_subscribed("t").await.unwrap());
    b.close().await.unwrap();

    let err = SqliteBackend::builder(&t.path)
        .key_prefix("bad\0prefix")
        .open()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("key prefix"), "{err}");
}

#[tokio::test]
async fn lock_info_reads_the_live_holder_from_another_verify_only_handle() {
    use chat_state_core::InspectLocks;
    let clock = ManualClock::starting_now();
    let t = TempState::new(|b| {
        b.key_prefix("bot")
            .clock(clock.clone())
            .cleanup_interval(None)
    })
    .await;
    let lock = t
        .state
        .acquire_lock("thread", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    // An operator's handle: verify-only, so inspecting never migrates the deployment's file.
    let inspector = SqliteBackend::builder(&t.path)
        .key_prefix("bot")
        .clock(clock.clone())
        .schema_mode(SchemaMode::VerifyOnly)
        .cleanup_interval(None)
        .open()
        .await
        .unwrap();
    let info = inspector.lock_info("thread").await.unwrap().expect("held");
    assert_eq!(info.token, lock.token);
    assert_eq!(info.expires_at, lock.expires_at);
    assert_eq!(info.fence, Some(lock.fence));
    assert_eq!(inspector.lock_info("other").await.unwrap(), None);
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        inspector.lock_info("thread").await.unwrap(),
        None,
        "expired is free"
    );
    let err = inspector.lock_info("").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_pool_is_refused() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let err = SqliteBackend::builder_with_pool(pool.clone())
        .open()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("in-memory"), "{err}");
    pool.close().await;
}

/// A file written by the previous version (schema 1: no fence records) is migrated in place
/// on open: its data stays, and fenced writes work on it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_file_is_migrated_and_keeps_its_data() {
    let t = TempState::new(|b| b.cleanup_interval(None)).await;
    t.state.set("k", b"v", None).await.unwrap();
    let lock = t
        .state
        .acquire_lock("t", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    t.state.close().await.unwrap();
    // Back to what schema 1 had.
    let mut conn = raw(&t.path).await;
    for statement in [
        "DROP TABLE chat_state_fences",
        "UPDATE chat_state_meta SET value = 1 WHERE name = 'schema_version'",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    let state = SqliteBackend::open(&t.path).await.unwrap();
    assert_eq!(state.get("k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(
        state.set_fenced(&lock, "state", b"s", None).await.unwrap(),
        chat_state_core::FencedWrite::Stored
    );
    state.close().await.unwrap();
    let mut conn = raw(&t.path).await;
    let version: i64 =
        sqlx::query_scalar("SELECT value FROM chat_state_meta WHERE name = 'schema_version'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(version, chat_state_sqlite::SCHEMA_VERSION);
}
