//! The SQLite backend next to libsqlite3 itself.
//!
//! `cargo bench -p chat-state-sqlite` (about two and a half minutes with the defaults). For
//! each cell (`synchronous` NORMAL and FULL × a file on disk and on tmpfs × workload ×
//! concurrency 1 and 64) it measures:
//!
//! - **backend**: `SqliteState` (core's rule layer, group-commit writer, read connections),
//!   with `concurrency` tokio tasks on a 2-worker runtime, each looping over the workload on
//!   its own ids;
//! - **baseline**: libsqlite3 through `rusqlite` with cached prepared statements, on ONE
//!   connection, one operation at a time (autocommit), in a plain loop on one thread: the
//!   same statements, the same values (a fresh 128-bit lock token per acquire, the clock read
//!   for every expiry), WAL, the same `synchronous`. Its rate does not depend on concurrency
//!   (it does one statement at a time whatever the load); at concurrency 64 it cycles over 64
//!   ids, so it touches the same rows as the backend.
//!
//! Cells run in interleaved rounds (every cell once per round, backend and baseline back to
//! back, in alternating order), so background load hits both sides alike; the table shows
//! the median over rounds of each side's rate, the median of the per-round ratios
//! (backend / baseline: above 1, the backend is faster), and the backend's median latency per
//! cycle.
//!
//! Workloads (one cycle each):
//! - lock cycle: `acquire_lock` + `release_lock`;
//! - cache set+get: `set` + `get`;
//! - message cycle: `is_subscribed`, `acquire_lock`, `get`, `set`, `release_lock` (what a bot
//!   does per incoming message).
//!
//! Environment:
//! - `CHAT_STATE_BENCH_SECS`: seconds per side, cell and round (default 0.5);
//! - `CHAT_STATE_BENCH_ROUNDS`: rounds (default 5);
//! - `CHAT_STATE_BENCH_ONLY`: comma-separated words a cell must all match, among `normal`,
//!   `full`, `disk`, `tmpfs`, `lock`, `cache`, `message`, `c1`, `c64` (e.g. `normal,c64`);
//! - `CHAT_STATE_BENCH_DISK_DIR`: directory for the on-disk files (default: cargo's
//!   target tmp dir; /tmp may be a tmpfs); tmpfs files go to `/dev/shm`.
//!
//! For callgrind (see `bench/callgrind.sh`): `CHAT_STATE_CALLGRIND=<side>:<workload>:<conc>`
//! with `<side>` `backend` or `baseline`, and `CHAT_STATE_CALLGRIND_CYCLES=<n>` runs exactly
//! `n` cycles on a tmpfs file with `synchronous = NORMAL` and exits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_state_core::{Cache, Clock, Locks, Subscriptions, SystemClock, new_lock_token};
use chat_state_sqlite::{SqliteBackend, SqliteState, Synchronous};
use rusqlite::{Connection, OptionalExtension, params};

const TTL: Duration = Duration::from_secs(30);
const VALUE: &[u8] = b"{\"turn\":1}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    fn word(self) -> &'static str {
        match self {
            Workload::LockCycle => "lock",
            Workload::CacheSetGet => "cache",
            Workload::MessageCycle => "message",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Workload::LockCycle,
            Workload::CacheSetGet,
            Workload::MessageCycle,
        ]
        .into_iter()
        .find(|w| w.word() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Medium {
    Disk,
    Tmpfs,
}

impl Medium {
    fn name(self) -> &'static str {
        match self {
            Medium::Disk => "disk",
            Medium::Tmpfs => "tmpfs",
        }
    }
}

// ---------------------------------------------------------------------------------------
// The backend

async fn backend_cycle(s: &SqliteState, workload: Workload, id: &str) {
    match workload {
        Workload::LockCycle => {
            let lock = s.acquire_lock(id, TTL).await.unwrap().expect("free");
            s.release_lock(&lock).await.unwrap();
        }
        Workload::CacheSetGet => {
            s.set(id, VALUE, Some(TTL)).await.unwrap();
            assert!(s.get(id).await.unwrap().is_some());
        }
        Workload::MessageCycle => {
            let _ = s.is_subscribed(id).await.unwrap();
            let lock = s.acquire_lock(id, TTL).await.unwrap().expect("free");
            let _ = s.get(id).await.unwrap();
            s.set(id, VALUE, Some(TTL)).await.unwrap();
            s.release_lock(&lock).await.unwrap();
        }
    }
}

/// `concurrency` tasks loop for `secs`: cycles per second and the median cycle latency.
async fn run_backend(
    s: Arc<SqliteState>,
    workload: Workload,
    concurrency: usize,
    secs: f64,
) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let id = format!("thread-{w}");
                let mut latencies = Vec::new();
                loop {
                    let t = Instant::now();
                    if t >= deadline {
                        return latencies;
                    }
                    backend_cycle(&s, workload, &id).await;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("benchmark task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = all.len() as f64 / elapsed;
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (rate, at(0.5), at(0.99))
}

async fn open_backend(path: &Path, sync: Synchronous) -> Arc<SqliteState> {
    let state = SqliteBackend::builder(path)
        .synchronous(sync)
        .cleanup_interval(None)
        .open()
        .await
        .expect("open backend");
    // Warm up: statement caches, connections, pages.
    for w in 0..64 {
        backend_cycle(&state, Workload::MessageCycle, &format!("thread-{w}")).await;
        backend_cycle(&state, Workload::CacheSetGet, &format!("thread-{w}")).await;
    }
    Arc::new(state)
}

// ---------------------------------------------------------------------------------------
// The baseline: libsqlite3 with cached prepared statements, one connection, autocommit

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

struct Baseline {
    conn: Connection,
}

impl Baseline {
    fn acquire(&self, id: &str) -> String {
        let token = new_lock_token().unwrap();
        let now = now_ms();
        let fence: Option<i64> = self
            .conn
            .prepare_cached(ACQUIRE)
            .unwrap()
            .query_row(
                params!["", id, token, now + TTL.as_millis() as i64, now],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert!(fence.is_some());
        token
    }

    fn release(&self, id: &str, token: &str) {
        self.conn
            .prepare_cached(RELEASE)
            .unwrap()
            .execute(params!["", id, token])
            .unwrap();
    }

    fn set(&self, id: &str) {
        self.conn
            .prepare_cached(SET)
            .unwrap()
            .execute(params!["", id, VALUE, now_ms() + TTL.as_millis() as i64])
            .unwrap();
    }

    fn get(&self, id: &str) -> Option<Vec<u8>> {
        self.conn
            .prepare_cached(GET)
            .unwrap()
            .query_row(params!["", id, now_ms()], |r| r.get(0))
            .optional()
            .unwrap()
    }

    fn is_subscribed(&self, id: &str) -> bool {
        self.conn
            .prepare_cached(IS_SUBSCRIBED)
            .unwrap()
            .query_row(params!["", id], |_| Ok(()))
            .optional()
            .unwrap()
            .is_some()
    }

    fn cycle(&self, workload: Workload, id: &str) {
        match workload {
            Workload::LockCycle => {
                let token = self.acquire(id);
                self.release(id, &token);
            }
            Workload::CacheSetGet => {
                self.set(id);
                assert!(self.get(id).is_some());
            }
            Workload::MessageCycle => {
                let _ = self.is_subscribed(id);
                let token = self.acquire(id);
                let _ = self.get(id);
                self.set(id);
                self.release(id, &token);
            }
        }
    }

    /// One operation at a time for `secs`, cycling over `concurrency` ids: cycles per second.
    fn run(&self, workload: Workload, ids: &[String], secs: f64) -> f64 {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let mut n = 0usize;
        while Instant::now() < deadline {
            self.cycle(workload, &ids[n % ids.len()]);
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    }
}

async fn open_baseline(path: &Path, sync: Synchronous) -> Baseline {
    // The schema comes from the backend itself, so both sides run on identical tables.
    let state = SqliteBackend::builder(path)
        .cleanup_interval(None)
        .open()
        .await
        .expect("create schema");
    chat_state_core::StateAdapter::close(&state).await.unwrap();
    let conn = Connection::open(path).expect("open baseline connection");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    let sync = match sync {
        Synchronous::Off => "OFF",
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync).unwrap();
    conn.set_prepared_statement_cache_capacity(32);
    let b = Baseline { conn };
    for w in 0..64 {
        b.cycle(Workload::MessageCycle, &format!("thread-{w}"));
        b.cycle(Workload::CacheSetGet, &format!("thread-{w}"));
    }
    b
}

// ---------------------------------------------------------------------------------------
// Cells, rounds, table

struct Cell {
    sync: Synchronous,
    medium: Medium,
    workload: Workload,
    concurrency: usize,
    backend: Arc<SqliteState>,
    baseline: Baseline,
    ids: Vec<String>,
    backend_rates: Vec<f64>,
    baseline_rates: Vec<f64>,
    ratios: Vec<f64>,
    latencies: Vec<Duration>,
    tails: Vec<Duration>,
}

impl Cell {
    /// The target for this cell: the ratio the backend must reach.
    fn target(&self) -> f64 {
        match (self.concurrency, self.medium) {
            (1, _) => 0.7,
            (_, Medium::Disk) => 2.0,
            (_, Medium::Tmpfs) => 1.5,
        }
    }
}

/// The words `CHAT_STATE_BENCH_ONLY` matches a cell by.
fn cell_words(
    sync: Synchronous,
    medium: Medium,
    workload: Workload,
    concurrency: usize,
) -> [&'static str; 4] {
    [
        if sync == Synchronous::Full {
            "full"
        } else {
            "normal"
        },
        medium.name(),
        workload.word(),
        if concurrency == 1 { "c1" } else { "c64" },
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn median_duration(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    if v.is_empty() {
        Duration::ZERO
    } else {
        v[v.len() / 2]
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn disk_dir() -> PathBuf {
    std::env::var_os("CHAT_STATE_BENCH_DISK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    if let Ok(spec) = std::env::var("CHAT_STATE_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    let secs: f64 = env_or("CHAT_STATE_BENCH_SECS", 0.5);
    let rounds: usize = env_or("CHAT_STATE_BENCH_ROUNDS", 5).max(1);
    let only: Vec<String> = std::env::var("CHAT_STATE_BENCH_ONLY")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let disk = tempfile::tempdir_in(disk_dir()).expect("temp dir on disk");
    let shm = Path::new("/dev/shm");
    let tmpfs = shm
        .is_dir()
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten();
    if tmpfs.is_none() {
        eprintln!("no /dev/shm: skipping the tmpfs cells");
    }
    let rt = runtime();
    let mut cells = Vec::new();
    rt.block_on(async {
        let mut n = 0;
        for sync in [Synchronous::Normal, Synchronous::Full] {
            for medium in [Medium::Disk, Medium::Tmpfs] {
                let dir = match medium {
                    Medium::Disk => disk.path(),
                    Medium::Tmpfs => match &tmpfs {
                        Some(d) => d.path(),
                        None => continue,
                    },
                };
                for workload in [
                    Workload::LockCycle,
                    Workload::CacheSetGet,
                    Workload::MessageCycle,
                ] {
                    for concurrency in [1, 64] {
                        n += 1;
                        let words = cell_words(sync, medium, workload, concurrency);
                        if !only.iter().all(|w| words.contains(&w.as_str())) {
                            continue;
                        }
                        let cell = Cell {
                            sync,
                            medium,
                            workload,
                            concurrency,
                            backend: open_backend(&dir.join(format!("backend-{n}.db")), sync).await,
                            baseline: open_baseline(&dir.join(format!("baseline-{n}.db")), sync)
                                .await,
                            ids: (0..concurrency).map(|w| format!("thread-{w}")).collect(),
                            backend_rates: Vec::new(),
                            baseline_rates: Vec::new(),
                            ratios: Vec::new(),
                            latencies: Vec::new(),
                            tails: Vec::new(),
                        };
                        cells.push(cell);
                    }
                }
            }
        }
    });
    println!(
        "chat-state-sqlite vs libsqlite3 (rusqlite, prepared statements, one connection, one \
         operation at a time); cycles/s, median of {rounds} interleaved rounds of {secs} s, {} \
         cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for round in 0..rounds {
        for cell in &mut cells {
            let backend = || {
                rt.block_on(run_backend(
                    cell.backend.clone(),
                    cell.workload,
                    cell.concurrency,
                    secs,
                ))
            };
            let baseline = || cell.baseline.run(cell.workload, &cell.ids, secs);
            // Alternate which side goes first, so neither always runs on a warmer machine.
            let ((b, latency, tail), r) = if round % 2 == 0 {
                let b = backend();
                (b, baseline())
            } else {
                let r = baseline();
                (backend(), r)
            };
            cell.backend_rates.push(b);
            cell.baseline_rates.push(r);
            cell.ratios.push(b / r);
            cell.latencies.push(latency);
            cell.tails.push(tail);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!(
        "{:<7} {:<6} {:<14} {:>4} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7}",
        "sync",
        "file",
        "workload",
        "conc",
        "backend",
        "libsqlite",
        "ratio",
        "p50 lat",
        "p99 lat",
        "target"
    );
    for cell in &mut cells {
        let ratio = median(&mut cell.ratios);
        let target = cell.target();
        println!(
            "{:<7} {:<6} {:<14} {:>4} {:>10.0} {:>10.0} {:>6.2}x {:>7.0}us {:>7.0}us {:>5} {}",
            format!("{:?}", cell.sync),
            cell.medium.name(),
            cell.workload.name(),
            cell.concurrency,
            median(&mut cell.backend_rates),
            median(&mut cell.baseline_rates),
            ratio,
            median_duration(&mut cell.latencies).as_secs_f64() * 1e6,
            median_duration(&mut cell.tails).as_secs_f64() * 1e6,
            format!("{target}x"),
            if ratio >= target { "met" } else { "MISSED" },
        );
    }
}

/// Exactly `CHAT_STATE_CALLGRIND_CYCLES` cycles of one side and workload, for instruction
/// counts: run it at two cycle counts and subtract, so setup cancels out.
fn callgrind(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let (side, workload, concurrency) = match parts[..] {
        [side, w, c] => (
            side,
            Workload::parse(w).expect("workload: lock, cache or message"),
            c.parse::<usize>().expect("concurrency"),
        ),
        _ => panic!("CHAT_STATE_CALLGRIND=<backend|baseline>:<lock|cache|message>:<conc>"),
    };
    let cycles: usize = env_or("CHAT_STATE_CALLGRIND_CYCLES", 10_000);
    let dir = tempfile::tempdir_in(env_or(
        "CHAT_STATE_CALLGRIND_DIR",
        PathBuf::from("/dev/shm"),
    ))
    .expect("temp dir");
    let path = dir.path().join("callgrind.db");
    let rt = runtime();
    match side {
        "backend" => rt.block_on(async {
            let s = open_backend(&path, Synchronous::Normal).await;
            let per_task = cycles / concurrency.max(1);
            let tasks: Vec<_> = (0..concurrency)
                .map(|w| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let id = format!("thread-{w}");
                        for _ in 0..per_task {
                            backend_cycle(&s, workload, &id).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let stats = s.backend().write_stats();
            eprintln!(
                "{} writes in {} batches ({:.1} per batch)",
                stats.writes,
                stats.batches,
                stats.writes as f64 / stats.batches.max(1) as f64
            );
        }),
        "baseline" => {
            let b = rt.block_on(open_baseline(&path, Synchronous::Normal));
            let ids: Vec<String> = (0..concurrency).map(|w| format!("thread-{w}")).collect();
            for n in 0..cycles {
                b.cycle(workload, &ids[n % ids.len()]);
            }
        }
        other => panic!("unknown side {other}"),
    }
}
