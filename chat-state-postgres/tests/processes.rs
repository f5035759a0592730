//! Several OS processes on one database and key prefix keep mutual exclusion and
//! increasing fences: each process (this test binary run again, in worker mode) takes the
//! same lock over and over, and records every critical section it ran under it; no two
//! sections may overlap in time, and fences must strictly increase in the order the
//! sections ran. A shared counter, read and written back non-atomically inside each
//! section, must also end at the number of sections (an overlap loses an increment).
//!
//! The check is shown to catch a broken acquire: workers that take the lock by
//! force-releasing it first must fail it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_state_core::{Cache, Locks};
use chat_state_postgres::PostgresBackend;

use chat_state_test_support::postgres as support;

const LOCK: &str = "shared-lock";
const COUNTER: &str = "shared-counter";
const WORKERS: usize = 4;
const ROUNDS: usize = 25;

/// One critical section, as a worker recorded it: the fence it ran under, and the wall
/// clock (nanoseconds, the same clock for every process on the machine) just after its
/// acquire returned and just before its release was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Section {
    fence: u64,
    start: u128,
    end: u128,
    worker: usize,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// No two sections overlap, and fences strictly increase in the order sections started.
fn check(mut sections: Vec<Section>) -> Result<(), String> {
    sections.sort_by_key(|s| s.start);
    for pair in sections.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.start <= a.end {
            return Err(format!("critical sections overlap: {a:?} and {b:?}"));
        }
        if b.fence <= a.fence {
            return Err(format!(
                "fences do not increase in acquisition order: {a:?} then {b:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn the_check_rejects_overlaps_and_fences_out_of_order() {
    let s = |fence, start, end| Section {
        fence,
        start,
        end,
        worker: 0,
    };
    assert!(check(vec![s(1, 0, 10), s(2, 11, 20), s(3, 21, 30)]).is_ok());
    assert!(
        check(vec![s(2, 11, 20), s(1, 0, 10)]).is_ok(),
        "order of records"
    );
    assert!(check(vec![s(1, 0, 10), s(2, 10, 20)]).is_err(), "touching");
    assert!(check(vec![s(1, 0, 10), s(2, 5, 20)]).is_err(), "overlap");
    assert!(
        check(vec![s(2, 0, 10), s(1, 11, 20)]).is_err(),
        "fence down"
    );
    assert!(
        check(vec![s(2, 0, 10), s(2, 11, 20)]).is_err(),
        "fence repeated"
    );
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Worker mode: run only when the parent test starts this binary with the environment
/// below (ignored otherwise, so a normal run skips it).
#[tokio::test(flavor = "current_thread")]
#[ignore = "a worker process of multi_process_exclusion: started by it"]
async fn exclusion_worker() {
    let (Some(url), Some(prefix), Some(out), Some(id), Some(mode), Some(start_at)) = (
        env("CHAT_STATE_PG_WORKER_URL"),
        env("CHAT_STATE_PG_WORKER_PREFIX"),
        env("CHAT_STATE_PG_WORKER_OUT"),
        env("CHAT_STATE_PG_WORKER_ID"),
        env("CHAT_STATE_PG_WORKER_MODE"),
        env("CHAT_STATE_PG_WORKER_START_AT"),
    ) else {
        return;
    };
    let state = PostgresBackend::builder(url)
        .key_prefix(prefix)
        .max_connections(2)
        .sweep_interval(None)
        .connect()
        .await
        .expect("worker connect");
    // Every worker starts its loop at the same instant, whatever its startup took, so the
    // processes contend instead of running one after the other.
    let start_at: u128 = start_at.parse().expect("start time");
    let wait = start_at.saturating_sub(now_ns());
    tokio::time::sleep(Duration::from_nanos(u64::try_from(wait).unwrap_or(0))).await;
    let mut lines = String::new();
    for _ in 0..ROUNDS {
        let lock = loop {
            if mode == "steal" {
                // The broken acquire: takes the lock whoever holds it.
                state.force_release_lock(LOCK).await.expect("force release");
            }
            if let Some(lock) = state
                .acquire_lock(LOCK, Duration::from_secs(30))
                .await
                .expect("acquire")
            {
                break lock;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let start = now_ns();
        let count: u64 = match state.get(COUNTER).await.expect("get") {
            Some(bytes) => String::from_utf8_lossy(&bytes).parse().expect("counter"),
            None => 0,
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        state
            .set(COUNTER, (count + 1).to_string().as_bytes(), None)
            .await
            .expect("set");
        let end = now_ns();
        state.release_lock(&lock).await.expect("release");
        lines.push_str(&format!("{id} {} {start} {end}\n", lock.fence));
    }
    std::fs::write(out, lines).expect("write the record");
}

/// Runs `WORKERS` worker processes in `mode` on a fresh prefix; returns their sections and
/// the shared counter's final value.
async fn run_workers(mode: &str, dir: &Path) -> (Vec<Section>, u64) {
    let url = support::shared().url();
    let prefix = support::unique_prefix();
    // The schema first, so the workers start on it at once.
    let state = PostgresBackend::builder(&url)
        .key_prefix(&prefix)
        .sweep_interval(None)
        .connect()
        .await
        .expect("connect");
    let exe = std::env::current_exe().expect("test binary");
    let start_at = (now_ns() + Duration::from_secs(2).as_nanos()).to_string();
    let children: Vec<_> = (0..WORKERS)
        .map(|id| {
            let out = dir.join(format!("{mode}-{id}.txt"));
            let child = Command::new(&exe)
                .args([
                    "exclusion_worker",
                    "--exact",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env("CHAT_STATE_PG_WORKER_URL", &url)
                .env("CHAT_STATE_PG_WORKER_PREFIX", &prefix)
                .env("CHAT_STATE_PG_WORKER_OUT", &out)
                .env("CHAT_STATE_PG_WORKER_ID", id.to_string())
                .env("CHAT_STATE_PG_WORKER_MODE", mode)
                .env("CHAT_STATE_PG_WORKER_START_AT", &start_at)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a worker");
            (child, out)
        })
        .collect();
    let mut sections = Vec::new();
    for (child, out) in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("wait for a worker");
        assert!(
            output.status.success(),
            "a worker failed: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let text = std::fs::read_to_string(&out).expect("the worker's record");
        for line in text.lines() {
            let n: Vec<u128> = line
                .split_whitespace()
                .map(|f| f.parse().expect("a number"))
                .collect();
            let [worker, fence, start, end] = n[..] else {
                panic!("bad record line {line:?}");
            };
            sections.push(Section {
                fence: u64::try_from(fence).expect("fence"),
                start,
                end,
                worker: usize::try_from(worker).expect("worker"),
            });
        }
    }
    let counter = state
        .get(COUNTER)
        .await
        .expect("get")
        .map(|b| String::from_utf8_lossy(&b).parse().expect("counter"))
        .unwrap_or(0);
    (sections, counter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_exclusion() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (sections, counter) = run_workers("acquire", dir.path()).await;
    assert_eq!(sections.len(), WORKERS * ROUNDS, "every section recorded");
    for id in 0..WORKERS {
        assert!(
            sections.iter().any(|s| s.worker == id),
            "worker {id} ran no section"
        );
    }
    let mut by_start = sections.clone();
    by_start.sort_by_key(|s| s.start);
    let handovers = by_start
        .windows(2)
        .filter(|p| p[0].worker != p[1].worker)
        .count();
    assert!(
        handovers >= WORKERS,
        "the workers hardly contended ({handovers} handovers between processes)"
    );
    if let Err(violation) = check(sections) {
        panic!("{violation}");
    }
    assert_eq!(
        counter,
        u64::try_from(WORKERS * ROUNDS).unwrap(),
        "lost increments"
    );
}

/// The check has teeth: workers whose acquire takes the lock from its holder are caught.
/// Overlaps are then all but certain; three clean runs in a row would fail this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_check_catches_a_broken_acquire() {
    let dir = tempfile::tempdir().expect("temp dir");
    for attempt in 0..3 {
        let (sections, counter) = run_workers("steal", dir.path()).await;
        let total = u64::try_from(sections.len()).unwrap();
        if check(sections).is_err() {
            return;
        }
        eprintln!("attempt {attempt}: no overlap seen (counter {counter} of {total})");
    }
    panic!("three runs of a broken acquire passed the exclusion check");
}
