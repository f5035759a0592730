//! Throughput of the SQLite backend next to raw SQLite doing the same statements.
//!
//! `cargo bench -p chat-state-sqlite` (about 40 s). For each workload, at concurrency 1 and
//! 64, it runs the backend (`SqliteState`: group-commit writer plus read pool) and the
//! baseline: the same SQL statements through raw sqlx on ONE connection, WAL, autocommit
//! (concurrent tasks share it behind a mutex), with the same `synchronous` setting. It prints
//! cycles per second for both and the ratio backend / baseline (above 1: the backend is
//! faster). Both sides run against files in a fresh temporary directory, in alternating
//! slices so that background load affects them alike.
//!
//! Workloads (one cycle each, every task on its own ids):
//! - lock cycle: acquire_lock + release_lock;
//! - cache set+get: set + get;
//! - message cycle: is_subscribed, acquire_lock, get, set, release_lock (what a bot does per
//!   incoming message).
//!
//! `CHAT_STATE_BENCH_SECS` sets the measuring time per cell (default 1.5).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_state_core::{Cache, Clock, Locks, Subscriptions, SystemClock, new_lock_token};
use chat_state_sqlite::{SqliteBackend, SqliteState, Synchronous};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection};
use tokio::sync::Mutex;

const TTL: Duration = Duration::from_secs(30);
/// Alternating measuring slices per side and cell.
const SLICES: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Workload {
    LockCycle,
    CacheSetGet,
    MessageCycle,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::LockCycle => "lock cycle",
            Workload::CacheSetGet => "cache set+get",
            Workload::MessageCycle => "message cycle",
        }
    }
}

type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Something that can run one cycle of a workload for worker `w`.
trait Target: Send + Sync + 'static {
    fn cycle(&self, workload: Workload, w: usize) -> BoxFut<'_>;
}

struct Backend(SqliteState);

impl Target for Backend {
    fn cycle(&self, workload: Workload, w: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let s = &self.0;
            let id = format!("thread-{w}");
            match workload {
                Workload::LockCycle => {
                    let lock = s.acquire_lock(&id, TTL).await.unwrap().expect("free");
                    s.release_lock(&lock).await.unwrap();
                }
                Workload::CacheSetGet => {
                    s.set(&id, b"{\"turn\":1}", Some(TTL)).await.unwrap();
                    assert!(s.get(&id).await.unwrap().is_some());
                }
                Workload::MessageCycle => {
                    let _ = s.is_subscribed(&id).await.unwrap();
                    let lock = s.acquire_lock(&id, TTL).await.unwrap().expect("free");
                    let _ = s.get(&id).await.unwrap();
                    s.set(&id, b"{\"turn\":1}", Some(TTL)).await.unwrap();
                    s.release_lock(&lock).await.unwrap();
                }
            }
        })
    }
}

/// Raw SQLite: the backend's statements, one connection, autocommit.
struct Raw {
    conn: Mutex<SqliteConnection>,
}

const ACQUIRE: &str = "INSERT INTO chat_state_locks (scope, lock_id, token, expires_at, fence)
     VALUES (?1, ?2, ?3, ?4, (SELECT value + 1 FROM chat_state_meta WHERE name = 'fence'))
     ON CONFLICT (scope, lock_id) DO UPDATE SET
         token = excluded.token, expires_at = excluded.expires_at, fence = excluded.fence
     WHERE chat_state_locks.expires_at <= ?5
     RETURNING fence";
const RELEASE: &str =
    "DELETE FROM chat_state_locks WHERE scope = ?1 AND lock_id = ?2 AND token = ?3";
const SET: &str = "INSERT INTO chat_state_cache (scope, cache_key, value, expires_at)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (scope, cache_key) DO UPDATE SET
         value = excluded.value, expires_at = excluded.expires_at";
const GET: &str = "SELECT value FROM chat_state_cache WHERE scope = ?1 AND cache_key = ?2
     AND (expires_at IS NULL OR expires_at > ?3)";
const IS_SUBSCRIBED: &str =
    "SELECT 1 FROM chat_state_subscriptions WHERE scope = ?1 AND thread_id = ?2";

fn now_ms() -> i64 {
    // The column type; the wall clock is far inside i64 milliseconds.
    SystemClock.now_ms() as i64
}

impl Raw {
    async fn acquire(&self, id: &str) -> String {
        let token = new_lock_token().unwrap();
        let now = now_ms();
        let fence: Option<i64> = sqlx::query_scalar(ACQUIRE)
            .bind("")
            .bind(id)
            .bind(&token)
            .bind(now + TTL.as_millis() as i64)
            .bind(now)
            .fetch_optional(&mut *self.conn.lock().await)
            .await
            .unwrap();
        assert!(fence.is_some());
        token
    }

    async fn release(&self, id: &str, token: &str) {
        sqlx::query(RELEASE)
            .bind("")
            .bind(id)
            .bind(token)
            .execute(&mut *self.conn.lock().await)
            .await
            .unwrap();
    }

    async fn set(&self, id: &str) {
        sqlx::query(SET)
            .bind("")
            .bind(id)
            .bind(&b"{\"turn\":1}"[..])
            .bind(now_ms() + TTL.as_millis() as i64)
            .execute(&mut *self.conn.lock().await)
            .await
            .unwrap();
    }

    async fn get(&self, id: &str) -> Option<Vec<u8>> {
        sqlx::query_scalar(GET)
            .bind("")
            .bind(id)
            .bind(now_ms())
            .fetch_optional(&mut *self.conn.lock().await)
            .await
            .unwrap()
    }

    async fn is_subscribed(&self, id: &str) -> bool {
        let found: Option<i64> = sqlx::query_scalar(IS_SUBSCRIBED)
            .bind("")
            .bind(id)
            .fetch_optional(&mut *self.conn.lock().await)
            .await
            .unwrap();
        found.is_some()
    }
}

impl Target for Raw {
    fn cycle(&self, workload: Workload, w: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let id = format!("thread-{w}");
            match workload {
                Workload::LockCycle => {
                    let token = self.acquire(&id).await;
                    self.release(&id, &token).await;
                }
                Workload::CacheSetGet => {
                    self.set(&id).await;
                    assert!(self.get(&id).await.is_some());
                }
                Workload::MessageCycle => {
                    let _ = self.is_subscribed(&id).await;
                    let token = self.acquire(&id).await;
                    let _ = self.get(&id).await;
                    self.set(&id).await;
                    self.release(&id, &token).await;
                }
            }
        })
    }
}

/// Cycles completed and seconds taken with `concurrency` tasks looping for `secs`.
async fn measure(
    target: Arc<dyn Target>,
    workload: Workload,
    concurrency: usize,
    secs: f64,
) -> (u64, f64) {
    // Warm up: statement caches, pool connections, pages.
    for w in 0..concurrency.min(8) {
        target.cycle(workload, w).await;
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let target = target.clone();
            let done = done.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    target.cycle(workload, w).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("benchmark task");
    }
    (done.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

async fn open_backend(path: &Path, sync: Synchronous) -> Arc<dyn Target> {
    let state = SqliteBackend::builder(path)
        .synchronous(sync)
        .cleanup_interval(None)
        .open()
        .await
        .expect("open backend");
    Arc::new(Backend(state))
}

async fn open_raw(path: &Path, sync: Synchronous) -> Arc<dyn Target> {
    // The schema comes from the backend itself, so both sides run on identical tables.
    let state = SqliteBackend::builder(path)
        .cleanup_interval(None)
        .open()
        .await
        .expect("create schema");
    chat_state_core::StateAdapter::close(&state).await.unwrap();
    let conn = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match sync {
            Synchronous::Off => SqliteSynchronous::Off,
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Full => SqliteSynchronous::Full,
        })
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("open raw connection");
    Arc::new(Raw {
        conn: Mutex::new(conn),
    })
}

fn main() {
    let secs: f64 = std::env::var("CHAT_STATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        println!(
            "chat-state-sqlite throughput, cycles/s ({secs} s per cell, {} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:<10} {:<14} {:>5} {:>12} {:>12} {:>7}",
            "sync", "workload", "conc", "backend", "raw sqlite", "ratio"
        );
        let mut n = 0;
        for sync in [Synchronous::Normal, Synchronous::Full] {
            for workload in [
                Workload::LockCycle,
                Workload::CacheSetGet,
                Workload::MessageCycle,
            ] {
                for concurrency in [1, 64] {
                    n += 1;
                    let backend =
                        open_backend(&dir.path().join(format!("backend-{n}.db")), sync).await;
                    let raw = open_raw(&dir.path().join(format!("raw-{n}.db")), sync).await;
                    // Alternate short slices, so load from other processes on the machine
                    // (and disk state) hits both sides alike.
                    let (mut bc, mut bt, mut rc, mut rt) = (0, 0.0, 0, 0.0);
                    for _ in 0..SLICES {
                        let (c, t) =
                            measure(backend.clone(), workload, concurrency, secs / SLICES as f64)
                                .await;
                        (bc, bt) = (bc + c, bt + t);
                        let (c, t) =
                            measure(raw.clone(), workload, concurrency, secs / SLICES as f64).await;
                        (rc, rt) = (rc + c, rt + t);
                    }
                    let (b, r) = (bc as f64 / bt, rc as f64 / rt);
                    println!(
                        "{:<10} {:<14} {:>5} {:>12.0} {:>12.0} {:>6.2}x",
                        format!("{sync:?}"),
                        workload.name(),
                        concurrency,
                        b,
                        r,
                        b / r
                    );
                }
            }
        }
    });
}
