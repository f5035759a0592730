//! Throughput of the PostgreSQL backend next to its anchors, in one run against one loopback
//! PostgreSQL (a fresh cluster started here with `chat_state_test_support::postgres`, `fsync`
//! off, removed at the end):
//! - **raw**: a plain `sqlx::PgPool` of the same size running the same SQL text the adapter
//!   sends (`src/sql.rs`, included here), with the same parameters, one call at a time per
//!   task, i.e. the cost of the adapter itself;
//! - **TS**: npm `@chat-adapter/state-pg` 4.41.0 under Node (`bench/bench.mjs`, pinned with
//!   its `pg` client in `bench/package-lock.json`, installed by `npm ci` on the first run), on
//!   a `pg.Pool` of the same size.
//!
//! Every side uses a pool of 10 connections (`CHAT_STATE_BENCH_POOL`): the default of both
//! this crate's builder and `pg.Pool`, which is what state-pg creates from a URL.
//!
//! `cargo bench -p chat-state-postgres --bench throughput` (a few minutes). In each of 5
//! rounds every cell (workload x concurrency 1 and 64) runs the three sides in a rotating
//! order, each on freshly truncated tables; the table gives the median cycles per second of
//! each side and the ratios.
//!
//! Workloads (one cycle each; ids are 10,000 Slack-style thread ids, each task walks its own
//! slice; same formula in `bench.mjs`):
//! - `lock`: acquire_lock + release_lock (30 s TTL);
//! - `cache`: set of the ~225-byte thread state (`test-support/bench/thread-state.json`,
//!   30-day TTL) + get;
//! - `message`: what the Chat class does per incoming message: dedupe `set_if_not_exists`
//!   (`dedupe:slack:m<n>`, 10 min), acquire_lock, append_to_list of the history entry (max 100,
//!   7 days), release_lock.
//!
//! The TS adapter sends other statements for some of these (its acquire bumps no fence, its
//! append is three statements outside a transaction whose trim counts expired rows too, its
//! `pg` client sends every statement unnamed, so the server parses and plans it each time),
//! which is part of what is compared. The raw side sends what *our* adapter sends.
//!
//! Environment:
//! - `CHAT_STATE_BENCH_ROUNDS` (default 5), `CHAT_STATE_BENCH_SCALE` (default 1.0: multiplies
//!   every iteration count), `CHAT_STATE_BENCH_ONLY=<workload>[,..]` (a subset),
//!   `CHAT_STATE_BENCH_CONC=1,64` (the concurrencies), `CHAT_STATE_BENCH_POOL` (default 10:
//!   connections per side);
//! - `CHAT_STATE_BENCH_NODE`: the node binary (default: `<repo>/.tools/.../node` if the repo's
//!   Node 22 is installed, else `node` from `PATH`); `CHAT_STATE_BENCH_SKIP=ts,raw` leaves
//!   sides out;
//! - `CHAT_STATE_CALLGRIND=<workload>` with `CHAT_STATE_CALLGRIND_CYCLES=<n>`,
//!   `CHAT_STATE_CALLGRIND_CONC=<c>` (default 64) and `CHAT_STATE_CALLGRIND_SIDE=ours|raw`: no
//!   table; on a current-thread runtime (so the connections' I/O runs on the measured thread
//!   too) runs a warm-up and then `n` cycles at concurrency `c` inside `measured_cycles` (see
//!   `bench/callgrind.sh`). The server runs outside valgrind.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_state_core::StateAdapter;
use chat_state_postgres::PostgresBackend;
use chat_state_test_support::bench::chat_sdk::{
    DEDUPE_TTL, HISTORY_ENTRY, HISTORY_MAX, HISTORY_TTL, LOCK_TTL, PREFIX, STATE_TTL,
};
use chat_state_test_support::bench::{
    CycleError as Error, Fixture, NodeBench, RawCycles, RustSide, RustSides, Samples, Settings,
    THREAD_STATE_JSON, Workload, cell, describe_ts, env_or, print_target, profiled_side,
};
use chat_state_test_support::postgres::PgServer;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

// The adapter's own statements, so the raw side sends identical SQL.
#[path = "../src/sql.rs"]
#[allow(dead_code, unreachable_pub)] // the benchmark runs only some of them
mod sql;
use sql::Statements;

/// Warm-up cycles before timing (connections, prepared statements; JIT on the Node side).
const WARMUP: usize = 500;
/// Connections per side (both this crate's and `pg.Pool`'s default).
const DEFAULT_POOL: u32 = 10;
/// What the adapter sends to the server as `statement_timeout` (its default, 5 s).
const STATEMENT_TIMEOUT_MS: &str = "5000";
const TABLES: &str = "chat_state_subscriptions, chat_state_locks, chat_state_cache, \
                      chat_state_lists, chat_state_queues, chat_state_lock_fences";

/// The shared workloads this bench runs (no subscriptions: state-pg's are one statement each,
/// like the cache's).
const WORKLOADS: [Workload; 3] = [Workload::Lock, Workload::Cache, Workload::Message];

/// What the Postgres bench adds to the shared workloads.
trait PostgresWorkload {
    /// Timed cycles per run at concurrency 1 and 64 (before `CHAT_STATE_BENCH_SCALE`).
    fn iterations(self, c: usize) -> usize;
}

impl PostgresWorkload for Workload {
    /// Timed cycles per run at concurrency 1 and 64 (before `CHAT_STATE_BENCH_SCALE`): about
    /// a second on the slowest side.
    fn iterations(self, c: usize) -> usize {
        match (self, c > 1) {
            (Workload::Message, false) => 1_000,
            (Workload::Message, true) => 4_000,
            (_, false) => 2_000,
            (_, true) => 8_000,
        }
    }
}

/// The raw side: the adapter's statements on a plain pool, bound as the adapter binds them
/// (`$1` is the test clock, NULL here: the server's time).
struct Raw {
    pool: PgPool,
    sql: Statements,
}

const NO_CLOCK: Option<i64> = None;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).expect("ms")
}

impl Raw {
    async fn lock(&self, id: &str) -> Result<String, Error> {
        let token = chat_state_core::new_lock_token()?;
        let fence: Option<i64> = sqlx::query_scalar(&self.sql.acquire)
            .bind(NO_CLOCK)
            .bind(PREFIX)
            .bind(id)
            .bind(&token)
            .bind(ms(LOCK_TTL))
            .fetch_optional(&self.pool)
            .await?;
        fence.ok_or("lock held")?;
        Ok(token)
    }

    async fn unlock(&self, id: &str, token: &str) -> Result<(), Error> {
        sqlx::query(self.sql.release)
            .bind(PREFIX)
            .bind(id)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn append(&self, key: &str, value: &str) -> Result<(), Error> {
        sqlx::query(self.sql.list_append)
            .bind(NO_CLOCK)
            .bind(PREFIX)
            .bind(key)
            .bind(value)
            .bind(None::<&[u8]>)
            .bind(Some(ms(HISTORY_TTL)))
            .bind(Some(HISTORY_MAX as i64))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The same cycle's statements on the raw pool.
impl RawCycles for Raw {
    type Fixture = Fixture;

    async fn cycle(
        &self,
        fx: &Fixture,
        wl: Workload,
        k: usize,
        seq: &AtomicU64,
    ) -> Result<(), Error> {
        let raw = self;
        match wl {
            Workload::Subscriptions => return Err("not a workload of this bench".into()),
            Workload::Lock => {
                let token = raw.lock(&fx.ids[k]).await?;
                raw.unlock(&fx.ids[k], &token).await?;
            }
            Workload::Cache => {
                let key = &fx.state_keys[k];
                let text = THREAD_STATE_JSON.trim();
                sqlx::query(&raw.sql.set)
                    .bind(NO_CLOCK)
                    .bind(PREFIX)
                    .bind(key)
                    .bind(text)
                    .bind(None::<&[u8]>)
                    .bind(Some(ms(STATE_TTL)))
                    .execute(&raw.pool)
                    .await?;
                let row: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(&raw.sql.get)
                    .bind(NO_CLOCK)
                    .bind(PREFIX)
                    .bind(key)
                    .fetch_optional(&raw.pool)
                    .await?;
                row.ok_or("cache miss")?;
            }
            Workload::Message => {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let done = sqlx::query(&raw.sql.set_if_not_exists)
                    .bind(NO_CLOCK)
                    .bind(PREFIX)
                    .bind(format!("dedupe:slack:m{n}"))
                    .bind("true")
                    .bind(None::<&[u8]>)
                    .bind(Some(ms(DEDUPE_TTL)))
                    .execute(&raw.pool)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err("duplicate".into());
                }
                let id = &fx.ids[k];
                let token = raw.lock(id).await?;
                let entry = std::str::from_utf8(HISTORY_ENTRY)?;
                raw.append(&fx.history_keys[k], entry).await?;
                raw.unlock(id, &token).await?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Raw,
    Ts,
}

struct Bench {
    rt: tokio::runtime::Runtime,
    sides: RustSides<Raw>,
    url: String,
    pool_size: u32,
    node: Option<NodeBench>,
}

impl Bench {
    /// Empty tables for the next run: every side starts from the same state.
    fn truncate(&self) {
        self.rt.block_on(async {
            sqlx::query(&format!("TRUNCATE {TABLES}"))
                .execute(&self.sides.raw.pool)
                .await
                .expect("TRUNCATE")
        });
    }

    /// Cycles per second of one side on freshly truncated tables.
    fn sample(&self, side: Side, wl: Workload, c: usize, iters: usize) -> f64 {
        self.truncate();
        match side {
            Side::Ours => self
                .sides
                .per_second(&self.rt, RustSide::Ours, (wl, c), iters, WARMUP),
            Side::Raw => self
                .sides
                .per_second(&self.rt, RustSide::Raw, (wl, c), iters, WARMUP),
            Side::Ts => run_node(
                self.node.as_ref().expect("node"),
                &self.url,
                wl,
                c,
                iters,
                self.pool_size,
            )["perSec"]
                .as_f64()
                .expect("perSec"),
        }
    }
}

/// Runs one TypeScript run of `wl` against `url` (the side's `bench.mjs`).
fn run_node(
    node: &NodeBench,
    url: &str,
    wl: Workload,
    c: usize,
    iters: usize,
    pool: u32,
) -> serde_json::Value {
    let args = [
        "bench.mjs".to_owned(),
        url.to_owned(),
        wl.name().to_owned(),
        c.to_string(),
        iters.to_string(),
        pool.to_string(),
    ];
    node.json(&args)
}

fn workload(name: &str) -> Workload {
    Workload::named(name, &WORKLOADS)
}

/// Connects both Rust sides to `url` with `pool` connections each (the adapter creates the
/// schema).
async fn connect(url: &str, pool: u32) -> (Arc<dyn StateAdapter>, Arc<Raw>) {
    let state: Arc<dyn StateAdapter> = Arc::new(
        PostgresBackend::builder(url)
            .key_prefix(PREFIX)
            .max_connections(pool)
            .connect()
            .await
            .expect("connect"),
    );
    // The options the adapter gives its own pool (`test_before_acquire(false)` included: the
    // default pings every connection before handing it out, a round trip per statement).
    let options = PgConnectOptions::from_str(url)
        .expect("url")
        .options([("statement_timeout", STATEMENT_TIMEOUT_MS)]);
    let raw = Arc::new(Raw {
        pool: PgPoolOptions::new()
            .max_connections(pool)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .expect("raw connect"),
        sql: Statements::new(),
    });
    (state, raw)
}

/// The profile run: warm-up outside, `n` cycles inside [`measured_cycles`].
fn callgrind(wl: &str) {
    let wl = workload(wl);
    let n: usize = env_or("CHAT_STATE_CALLGRIND_CYCLES", 4_000);
    let c: usize = env_or("CHAT_STATE_CALLGRIND_CONC", 64);
    let pool: u32 = env_or("CHAT_STATE_BENCH_POOL", DEFAULT_POOL);
    let side = profiled_side();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = PgServer::start();
    let (ours, raw) = rt.block_on(connect(&server.url(), pool));
    let sides = RustSides::new(ours, raw, Fixture::new());
    sides.profile(&rt, side, (wl, c), WARMUP, n);
    println!("{side:?} {} c={c}: {n} cycles done", wl.name());
    drop(server);
}

fn main() {
    if let Ok(wl) = std::env::var("CHAT_STATE_CALLGRIND") {
        callgrind(&wl);
        return;
    }
    let settings = Settings::from_env(&WORKLOADS);
    let pool_size: u32 = env_or("CHAT_STATE_BENCH_POOL", DEFAULT_POOL).max(1);
    let mut sides = vec![Side::Ours];
    for (side, name) in [(Side::Raw, "raw"), (Side::Ts, "ts")] {
        if settings.runs(name) {
            sides.push(side);
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = PgServer::start();
    let url = server.url();
    let (state, raw) = rt.block_on(connect(&url, pool_size));
    let node = sides.contains(&Side::Ts).then(|| {
        NodeBench::prepare(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("bench"),
            "@chat-adapter/state-pg",
        )
    });
    let bench = Bench {
        rt,
        sides: RustSides::new(state, raw, Fixture::new()),
        url,
        pool_size,
        node,
    };
    let ts = bench
        .node
        .as_ref()
        .map(|n| describe_ts(&run_node(n, &bench.url, Workload::Lock, 1, 200, pool_size)));
    let server_version: String = bench.rt.block_on(async {
        sqlx::query_scalar("SHOW server_version")
            .fetch_one(&bench.sides.raw.pool)
            .await
            .expect("server_version")
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (rounds, scale) = (settings.rounds, settings.scale);
    eprintln!(
        "PostgreSQL {server_version} on 127.0.0.1:{} (fsync off), {cores} cores, {rounds} rounds, \
         scale {scale}, pool {pool_size} per side{}",
        server.port,
        ts.as_ref().map_or(String::new(), |t| format!(", TS = {t}"))
    );

    let started = Instant::now();
    let samples =
        Samples::interleaved(&settings, sides, Workload::iterations, |side, wl, c, it| {
            bench.sample(side, wl, c, it)
        });

    println!();
    println!(
        "chat-state-postgres, PostgreSQL {server_version} on loopback (fsync off), {cores} cores, \
         pool of {pool_size} per side, median of {rounds} interleaved rounds, cycles per second \
         (run took {:.0} s){}",
        started.elapsed().as_secs_f64(),
        ts.as_ref().map_or(String::new(), |t| format!("; TS = {t}")),
    );
    println!();
    println!("| workload | conc | ours | raw sqlx | TS | ours/TS | ours/raw |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for (n, &(wl, c)) in settings.cells.iter().enumerate() {
        let o = samples.median(n, Side::Ours).expect("ours");
        let (r, t) = (samples.median(n, Side::Raw), samples.median(n, Side::Ts));
        let num = |x: f64| format!("{x:.0}");
        let ratio = |x: f64| format!("{:.2}x", o / x);
        println!(
            "| {} | {c} | {o:.0} | {} | {} | {} | {} |",
            wl.label(),
            cell(r, num),
            cell(t, num),
            cell(t, ratio),
            cell(r, ratio),
        );
        results.push(((wl, c), t.map(|t| o / t), r.map(|r| o / r)));
    }
    println!();
    for ((wl, c), vs_ts, vs_raw) in results {
        if wl != Workload::Message {
            continue;
        }
        if let (Some(r), 64) = (vs_ts, c) {
            print_target(wl.label(), c, 2.0, "TypeScript", r);
        }
        if let Some(r) = vs_raw {
            print_target(wl.label(), c, 0.9, "raw sqlx", r);
        }
    }
    bench.rt.block_on(bench.sides.ours.close()).expect("close");
    drop(server);
}
