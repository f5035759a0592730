//! Several OS processes on one SQLite file: lock contention (zero overlapping holders,
//! strictly increasing fences) and SIGKILL of a writer mid-run (no reported commit lost,
//! `PRAGMA integrity_check` ok).
//!
//! The children are this test binary, re-executed with an environment variable naming their
//! role, running the same test function (which then plays the child's part).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Cache, Locks, StateAdapter};
use chat_state_sqlite::SqliteBackend;
use sqlx::{Connection, SqliteConnection};

const ROLE: &str = "CHAT_STATE_SQLITE_CHILD_ROLE";
const DB: &str = "CHAT_STATE_SQLITE_CHILD_DB";
const ARG: &str = "CHAT_STATE_SQLITE_CHILD_ARG";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn spawn_child(test: &str, role: &str, db: &Path, arg: &str, stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DB, db)
        .env(ARG, arg)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process")
}

fn child_role() -> Option<(String, PathBuf, String)> {
    let role = std::env::var(ROLE).ok()?;
    let db = PathBuf::from(std::env::var(DB).ok()?);
    let arg = std::env::var(ARG).unwrap_or_default();
    Some((role, db, arg))
}

async fn create_db(path: &Path) {
    let s = SqliteBackend::open(path).await.expect("create database");
    s.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------
// Lock contention

const CONTENDERS: usize = 4;
const ACQUISITIONS_EACH: usize = 25;

/// Child: takes the shared lock `ACQUISITIONS_EACH` times. While holding it, it logs
/// `enter`/`exit` lines to a shared append-only file around a read-modify-write of a counter;
/// overlapping holders would interleave those lines or lose counter increments.
async fn contend(db: &Path, log: &Path) {
    let s = SqliteBackend::builder(db)
        .busy_timeout(Duration::from_secs(30))
        .open()
        .await
        .expect("child opens the database");
    let pid = std::process::id();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .expect("open the shared log");
    let mut done = 0;
    let mut last_fence = 0;
    while done < ACQUISITIONS_EACH {
        let Some(lock) = s
            .acquire_lock("shared", Duration::from_secs(60))
            .await
            .expect("acquire")
        else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        assert!(
            lock.fence > last_fence,
            "fence went backwards in one process"
        );
        last_fence = lock.fence;
        // One write per line: O_APPEND makes each line land whole, in real-time order.
        log.write_all(format!("enter {pid} {}\n", lock.fence).as_bytes())
            .expect("log");
        let n: u64 = s
            .get("counter")
            .await
            .expect("get")
            .map(|v| String::from_utf8_lossy(&v).parse().expect("counter"))
            .unwrap_or(0);
        tokio::task::yield_now().await;
        s.set("counter", (n + 1).to_string().as_bytes(), None)
            .await
            .expect("set");
        log.write_all(format!("exit {pid} {}\n", lock.fence).as_bytes())
            .expect("log");
        s.release_lock(&lock).await.expect("release");
        done += 1;
    }
    s.close().await.expect("close");
}

#[test]
fn processes_contending_for_one_lock_never_overlap() {
    const TEST: &str = "processes_contending_for_one_lock_never_overlap";
    if let Some((role, db, arg)) = child_role() {
        assert_eq!(role, "contender");
        runtime().block_on(contend(&db, Path::new(&arg)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let log = dir.path().join("holders.log");
    std::fs::write(&log, b"").unwrap();
    runtime().block_on(create_db(&db));
    let children: Vec<Child> = (0..CONTENDERS)
        .map(|_| spawn_child(TEST, "contender", &db, log.to_str().unwrap(), Stdio::null()))
        .collect();
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a contender failed: {status}");
    }

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 2 * CONTENDERS * ACQUISITIONS_EACH, "{text}");
    let mut last_fence = 0u64;
    let mut pids = HashSet::new();
    for (i, pair) in lines.chunks(2).enumerate() {
        let (enter, exit) = (&pair[0], &pair[1]);
        assert_eq!(
            enter[0],
            "enter",
            "line {}: two holders overlapped:\n{text}",
            2 * i
        );
        assert_eq!(
            exit[0],
            "exit",
            "line {}: two holders overlapped:\n{text}",
            2 * i + 1
        );
        assert_eq!(enter[1..], exit[1..], "holder {i} exited as someone else");
        let fence: u64 = enter[2].parse().unwrap();
        assert!(fence > last_fence, "fence {fence} after {last_fence}");
        last_fence = fence;
        pids.insert(enter[1]);
    }
    assert_eq!(pids.len(), CONTENDERS, "not every process got the lock");
    runtime().block_on(async {
        let s = SqliteBackend::open(&db).await.unwrap();
        let counter = s.get("counter").await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&counter),
            (CONTENDERS * ACQUISITIONS_EACH).to_string(),
            "lost updates: holders overlapped"
        );
        s.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// SIGKILL mid-run

const WRITER_TASKS: usize = 8;

/// Child: `WRITER_TASKS` concurrent tasks (so group commits batch several writes) set keys
/// in a loop, printing `committed <round> <task> <i>` after each write returned. Never stops
/// by itself.
async fn write_forever(db: &Path, round: &str) {
    let s = Arc::new(
        SqliteBackend::open(db)
            .await
            .expect("child opens the database"),
    );
    let tasks: Vec<_> = (0..WRITER_TASKS)
        .map(|task| {
            let s = s.clone();
            let round = round.to_owned();
            tokio::spawn(async move {
                for i in 0u64.. {
                    let key = format!("r{round}:t{task}:{i}");
                    s.set(&key, i.to_string().as_bytes(), None)
                        .await
                        .expect("set");
                    if i % 10 == 0 {
                        let lock = s
                            .acquire_lock(&format!("lock-{task}"), Duration::from_secs(5))
                            .await
                            .expect("acquire");
                        if let Some(lock) = lock {
                            s.release_lock(&lock).await.expect("release");
                        }
                    }
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "committed {round} {task} {i}").expect("stdout");
                    out.flush().expect("flush");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
}

#[test]
fn sigkill_mid_run_loses_no_reported_write() {
    const TEST: &str = "sigkill_mid_run_loses_no_reported_write";
    if let Some((role, db, arg)) = child_role() {
        assert_eq!(role, "writer");
        runtime().block_on(write_forever(&db, &arg));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    runtime().block_on(create_db(&db));
    // (round, task) -> every i the child reported committed.
    let mut reported: HashMap<(u32, usize), Vec<u64>> = HashMap::new();
    for round in 0..4u32 {
        let mut child = spawn_child(TEST, "writer", &db, &round.to_string(), Stdio::piped());
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Kill after a different number of commits each round, so the kill lands at
        // different points of the write loop.
        let kill_after = 300 + 170 * round as usize;
        let mut seen = 0;
        let mut killed = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("committed ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split(' ').collect();
            let task: usize = parts[1].parse().unwrap();
            let i: u64 = parts[2].parse().unwrap();
            reported.entry((round, task)).or_default().push(i);
            seen += 1;
            if seen == kill_after && !killed {
                // SIGKILL: no destructor, no rollback, no checkpoint.
                child.kill().unwrap();
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "the writer stopped on its own: {status}");
        assert!(!status.success(), "the writer was not killed: {status}");
    }

    runtime().block_on(async {
        let mut conn = SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        conn.close().await.unwrap();

        let s = SqliteBackend::open(&db)
            .await
            .expect("reopen after the crashes");
        let mut checked = 0;
        for ((round, task), is) in &reported {
            for i in is {
                let key = format!("r{round}:t{task}:{i}");
                let value = s.get(&key).await.unwrap();
                assert_eq!(
                    value.as_deref(),
                    Some(i.to_string().as_bytes()),
                    "write {key} was reported committed but is missing"
                );
                checked += 1;
            }
        }
        assert!(checked >= 4 * 300, "too few reported writes: {checked}");
        // The file is still fully usable, locks included.
        let lock = s
            .acquire_lock("after-crash", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(lock.is_some());
        s.close().await.unwrap();
    });
}
