//! Group commit: concurrent writes share transactions, each keeps its own result, and one
//! failing write does not fail the others of its batch.

use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Cache, ErrorKind, Locks, ManualClock};
use sqlx::{Connection, SqliteConnection};

mod common;
use common::TempState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_transactions_and_keep_their_own_results() {
    let clock = ManualClock::starting_now();
    let t = Arc::new(TempState::manual(&clock).await);
    let before = t.state.backend().write_stats();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                let s = &t.state;
                s.set(&format!("k{i}"), format!("{i}").as_bytes(), None)
                    .await
                    .unwrap();
                // Half the tasks contend for one lock: exactly one of them wins.
                let id = if i % 2 == 0 {
                    "shared".to_owned()
                } else {
                    format!("own-{i}")
                };
                s.acquire_lock(&id, Duration::from_secs(30)).await.unwrap()
            })
        })
        .collect();
    let mut shared_winners = 0;
    let mut fences = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let lock = task.await.unwrap();
        if i % 2 == 0 {
            shared_winners += usize::from(lock.is_some());
        } else {
            assert!(lock.is_some(), "task {i} lost a lock nobody else wanted");
        }
        fences.extend(lock.map(|l| l.fence));
    }
    assert_eq!(shared_winners, 1);
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), 33, "fences must be unique");
    for i in 0..64 {
        let v = t.state.get(&format!("k{i}")).await.unwrap();
        assert_eq!(v, Some(format!("{i}").into_bytes()));
    }
    let after = t.state.backend().write_stats();
    let writes = after.writes - before.writes;
    let batches = after.batches - before.batches;
    assert_eq!(writes, 128);
    assert!(
        batches < writes,
        "128 concurrent writes ran in {batches} separate transactions: no grouping"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_does_not_fail_its_batch() {
    let clock = ManualClock::starting_now();
    let t = Arc::new(TempState::manual(&clock).await);
    // Make one key fail inside SQLite, as a constraint or disk error would.
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", t.path.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON chat_state_cache
         WHEN NEW.cache_key = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned key'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    for round in 0..5 {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move {
                    let key = if i == 16 {
                        "poison".to_owned()
                    } else {
                        format!("r{round}-k{i}")
                    };
                    t.state.set(&key, b"v", None).await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            if i == 16 {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
                assert!(err.to_string().contains("poisoned key"), "{err}");
            } else {
                result.unwrap_or_else(|e| panic!("write {i} failed with its batch: {e}"));
            }
        }
        for i in (0..32).filter(|&i| i != 16) {
            assert!(
                t.state
                    .get(&format!("r{round}-k{i}"))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    }
    assert_eq!(t.state.get("poison").await.unwrap(), None);
}

/// Holds the file's write lock from another connection for `hold`, as another process
/// would.
async fn hold_write_lock(path: &std::path::Path, hold: Duration) -> tokio::task::JoinHandle<()> {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    })
}

// One runtime thread: a write waiting for another process's lock must not block it.
#[tokio::test(flavor = "current_thread")]
async fn a_write_waits_for_a_busy_file_without_blocking_the_runtime() {
    let t = Arc::new(TempState::new(|b| b.cleanup_interval(None)).await);
    let holder = hold_write_lock(&t.path, Duration::from_millis(300)).await;
    let writer = {
        let t = t.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            t.state.set("k", b"v", None).await.unwrap();
            started.elapsed()
        })
    };
    // Meanwhile the runtime keeps running other tasks, and reads do not wait either.
    let ticking = std::time::Instant::now();
    let ticks = tokio::spawn(async {
        let mut n = 0;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            n += 1;
        }
        n
    });
    assert_eq!(ticks.await.unwrap(), 10);
    let ticked = ticking.elapsed();
    assert!(
        ticked < Duration::from_millis(250),
        "the runtime was blocked: {ticked:?}"
    );
    assert_eq!(t.state.get("other").await.unwrap(), None);
    let waited = writer.await.unwrap();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    holder.await.unwrap();
    assert_eq!(t.state.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    // Batches that queued behind the busy write still commit.
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move { t.state.set(&format!("after-{i}"), b"v", None).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_busy_past_busy_timeout_is_unavailable_and_the_writer_recovers() {
    let t = Arc::new(
        TempState::new(|b| {
            b.cleanup_interval(None)
                .busy_timeout(Duration::from_millis(50))
        })
        .await,
    );
    let holder = hold_write_lock(&t.path, Duration::from_millis(500)).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move { t.state.set(&format!("k{i}"), b"v", None).await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("busy_timeout"), "{err}");
    }
    holder.await.unwrap();
    t.state.set("k", b"v", None).await.unwrap();
    assert!(
        t.state
            .acquire_lock("l", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_stop_waiting_never_stall_the_writer() {
    let t = Arc::new(TempState::new(|b| b.cleanup_interval(None)).await);
    for round in 0..20 {
        // Many writes at once, most of them abandoned at once: some while queued, some
        // just as the lead is handed to them.
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move {
                    let key = format!("r{round}-k{i}");
                    let write = t.state.set(&key, b"v", None);
                    let _ = tokio::time::timeout(Duration::from_micros(50 * (i % 4)), write).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // The writer still answers.
        tokio::time::timeout(
            Duration::from_secs(10),
            t.state.set(&format!("r{round}-done"), b"v", None),
        )
        .await
        .expect("the writer stalled")
        .unwrap();
    }
}
