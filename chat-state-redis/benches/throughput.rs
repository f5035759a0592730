//! Throughput of the Redis backend next to its anchors, in one run against one loopback
//! `redis-server` (started here, killed at the end):
//! - **raw**: the raw `redis` crate sending the same commands (same scripts, same keys) over
//!   the same kind of connection (one `ConnectionManager`), i.e. the cost of the adapter itself;
//! - **TS**: npm `@chat-adapter/state-redis` 4.41.1 under Node (`bench/bench.mjs`, pinned with
//!   its `redis` client in `bench/package-lock.json`, installed by `npm ci` on the first run);
//! - **wire**: `redis-benchmark -c 1 -P <conc>` on the same commands: what one connection
//!   carries with 1 (concurrency 1) or 64 (concurrency 64) commands in flight. A cycle of `k`
//!   commands is timed as the sum of `1 / rate` of each command.
//!
//! `cargo bench -p chat-state-redis` (a few minutes). In each of 5 rounds every cell (workload x
//! concurrency 1 and 64) runs the four sides in a rotating order, each on a freshly flushed
//! database; the table gives the median cycles per second of each side and the ratios.
//!
//! Workloads (one cycle each; ids are 10,000 Slack-style thread ids, each task walks its own
//! slice; same formula in `bench.mjs`):
//! - `lock`: acquire_lock + release_lock (30 s TTL);
//! - `cache`: set of the ~225-byte thread state (`test-support/bench/thread-state.json`,
//!   30-day TTL) + get;
//! - `subscriptions`: subscribe + is_subscribed + unsubscribe;
//! - `message`: what the Chat class does per incoming message: dedupe `set_if_not_exists`
//!   (`dedupe:slack:m<n>`, 10 min), acquire_lock, append_to_list of the history entry (max 100,
//!   7 days), release_lock.
//!
//! The TS adapter sends other commands for two of these (acquire is a plain `SET NX PX` with no
//! fence counter; scripts go as `EVAL` of the text each time), which is part of what is
//! compared. The wire and raw sides send what *our* adapter sends.
//!
//! Environment:
//! - `CHAT_STATE_BENCH_ROUNDS` (default 5), `CHAT_STATE_BENCH_SCALE` (default 1.0: multiplies
//!   every iteration count), `CHAT_STATE_BENCH_ONLY=<workload>[,..]` (a subset),
//!   `CHAT_STATE_BENCH_CONC=1,64` (the concurrencies);
//! - `CHAT_STATE_BENCH_RTT_MS=<ms>`: a slow link instead of loopback. redis-server runs in its
//!   own network namespace behind a veth pair, and every side reaches it through a proxy on
//!   127.0.0.1 that delays each direction by half the RTT
//!   (`chat_state_test_support::netns`; this kernel has no `sch_netem`). Needs root, iproute2
//!   and iptables. The proxy's own cost (a thread hop per chunk) is paid by every side alike;
//!   `CHAT_STATE_BENCH_RTT_MS=0` measures it alone;
//! - `CHAT_STATE_BENCH_NODE`: the node binary (default: `<repo>/.tools/.../node` if the repo's
//!   Node 22 is installed, else `node` from `PATH`); `CHAT_STATE_BENCH_SKIP=ts,wire,raw`
//!   leaves sides out;
//! - `CHAT_STATE_CALLGRIND=<workload>` with `CHAT_STATE_CALLGRIND_CYCLES=<n>`,
//!   `CHAT_STATE_CALLGRIND_CONC=<c>` (default 64) and `CHAT_STATE_CALLGRIND_SIDE=ours|raw`: no
//!   table; on a current-thread runtime (so the connection's driver task runs on the measured
//!   thread too) runs a warm-up and then `n` cycles at concurrency `c` inside
//!   `measured_cycles` (see `bench/callgrind.sh`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_state_core::StateAdapter;
use chat_state_redis::RedisBackend;
use chat_state_test_support::RedisServer;
use chat_state_test_support::bench::chat_sdk::{
    DEDUPE_TTL, HISTORY_ENTRY, HISTORY_MAX, HISTORY_TTL, LOCK_TTL, PREFIX, STATE_TTL,
};
use chat_state_test_support::bench::{
    self, CycleError as Error, IDS, NodeBench, RawCycles, RustSide, RustSides, Samples, Settings,
    THREAD_STATE_JSON, Workload, cell, describe_ts, env_or, print_target, profiled_side,
};
use chat_state_test_support::netns::{self, DelayProxy, NetnsRedis};
use redis::Script;
use redis::aio::ConnectionManager;

// The adapter's own script texts, so the raw and wire sides send identical commands.
#[path = "../src/scripts.rs"]
#[allow(dead_code, unreachable_pub)] // the benchmark runs only some of them
mod scripts;
use scripts::{ACQUIRE, APPEND, RELEASE};

/// `<PREFIX>:subscriptions`, for the raw side.
const SUBSCRIPTIONS: &str = "chat-sdk:subscriptions";
/// Warm-up cycles before timing (connection, scripts loaded; JIT on the Node side).
const WARMUP: usize = 2_000;

/// What the Redis bench adds to the shared workloads.
trait RedisWorkload {
    /// Timed cycles per run at concurrency 1 and 64 (before `CHAT_STATE_BENCH_SCALE`).
    fn iterations(self, c: usize) -> usize;
    /// The commands one cycle sends, as `redis-benchmark` arguments.
    fn wire_commands(self, sha: &Shas, token: &str) -> Vec<(u64, Vec<String>)>;
}

impl RedisWorkload for Workload {
    /// Timed cycles per run at concurrency 1 and 64 (before `CHAT_STATE_BENCH_SCALE`): a few
    /// tenths of a second on the slowest side. Every side, the wire included, runs the same
    /// count, so each leaves the same number of new keys (dedupe keys, fence counters) behind;
    /// at 64 in flight that is enough for `redis-benchmark`, several times faster than any
    /// side, to run for tens of milliseconds rather than be decided by its start.
    fn iterations(self, c: usize) -> usize {
        match (self, c > 1) {
            (Workload::Message, false) => 2_000,
            (Workload::Message, true) => 32_000,
            (_, false) => 4_000,
            (_, true) => 64_000,
        }
    }

    /// The commands one cycle sends, as `redis-benchmark` arguments; `__rand_int__` is
    /// replaced by a random number below the `-r` given with it.
    fn wire_commands(self, sha: &Shas, token: &str) -> Vec<(u64, Vec<String>)> {
        let p = PREFIX;
        let lock = format!("{p}:lock:__rand_int__");
        let fence = format!("{p}:fence:__rand_int__");
        let acquire = [
            "EVALSHA",
            &sha.acquire,
            "2",
            &lock,
            &fence,
            token,
            &LOCK_TTL.as_millis().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let release = ["EVALSHA", &sha.release, "1", &lock, token]
            .map(str::to_owned)
            .to_vec();
        let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ids = IDS as u64;
        // Acquires (and dedupe keys) go to fresh keys from a huge range, so they succeed as in
        // a cycle; the release then mostly finds no lock (GET, compare, no DEL).
        let fresh = 1_000_000_000;
        match self {
            Workload::Lock => vec![(fresh, acquire), (fresh, release)],
            Workload::Cache => {
                let key = format!("{p}:cache:thread-state:__rand_int__");
                let ttl = STATE_TTL.as_millis().to_string();
                vec![
                    (ids, v(&["SET", &key, THREAD_STATE_JSON.trim(), "PX", &ttl])),
                    (ids, v(&["GET", &key])),
                ]
            }
            Workload::Subscriptions => {
                let set = format!("{p}:subscriptions");
                vec![
                    (ids, v(&["SADD", &set, "__rand_int__"])),
                    (ids, v(&["SISMEMBER", &set, "__rand_int__"])),
                    (ids, v(&["SREM", &set, "__rand_int__"])),
                ]
            }
            Workload::Message => {
                let dedupe = format!("{p}:cache:dedupe:slack:m__rand_int__");
                let list = format!("{p}:list:msg-history:__rand_int__");
                let entry = std::str::from_utf8(HISTORY_ENTRY).expect("utf-8");
                let (max, ttl) = (HISTORY_MAX.to_string(), HISTORY_TTL.as_millis().to_string());
                let dttl = DEDUPE_TTL.as_millis().to_string();
                vec![
                    (fresh, v(&["SET", &dedupe, "true", "NX", "PX", &dttl])),
                    (fresh, acquire),
                    (
                        ids,
                        v(&["EVALSHA", &sha.append, "1", &list, entry, &max, &ttl]),
                    ),
                    (fresh, release),
                ]
            }
        }
    }
}

/// The shared fixture, plus its keys with the prefix and namespace for the raw side.
struct Fixture {
    shared: bench::Fixture,
    raw_lock: Vec<String>,
    raw_fence: Vec<String>,
    raw_state: Vec<String>,
    raw_history: Vec<String>,
}

impl Fixture {
    fn new() -> Self {
        let shared = bench::Fixture::new();
        let prefixed = |namespace: &str, keys: &[String]| -> Vec<String> {
            keys.iter()
                .map(|k| format!("{PREFIX}:{namespace}:{k}"))
                .collect()
        };
        Self {
            raw_lock: prefixed("lock", &shared.ids),
            raw_fence: prefixed("fence", &shared.ids),
            raw_state: prefixed("cache", &shared.state_keys),
            raw_history: prefixed("list", &shared.history_keys),
            shared,
        }
    }
}

impl AsRef<bench::Fixture> for Fixture {
    fn as_ref(&self) -> &bench::Fixture {
        &self.shared
    }
}

impl std::ops::Deref for Fixture {
    type Target = bench::Fixture;

    fn deref(&self) -> &bench::Fixture {
        &self.shared
    }
}

struct Raw {
    conn: ConnectionManager,
    acquire: Script,
    release: Script,
    append: Script,
}

impl Raw {
    async fn lock(
        &self,
        c: &mut ConnectionManager,
        fx: &Fixture,
        k: usize,
    ) -> Result<String, Error> {
        let token = chat_state_core::new_lock_token()?;
        let fence: u64 = self
            .acquire
            .key(&fx.raw_lock[k])
            .key(&fx.raw_fence[k])
            .arg(&token)
            .arg(LOCK_TTL.as_millis() as u64)
            .invoke_async(c)
            .await?;
        if fence == 0 {
            return Err("lock held".into());
        }
        Ok(token)
    }

    async fn unlock(
        &self,
        c: &mut ConnectionManager,
        fx: &Fixture,
        k: usize,
        token: &str,
    ) -> Result<(), Error> {
        let _: i64 = self
            .release
            .key(&fx.raw_lock[k])
            .arg(token)
            .invoke_async(c)
            .await?;
        Ok(())
    }
}

/// The same cycle's commands on the raw `redis` crate.
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
        let mut c = raw.conn.clone();
        match wl {
            Workload::Lock => {
                let token = raw.lock(&mut c, fx, k).await?;
                raw.unlock(&mut c, fx, k, &token).await?;
            }
            Workload::Cache => {
                let key = &fx.raw_state[k];
                redis::cmd("SET")
                    .arg(key)
                    .arg(&fx.state_bytes)
                    .arg("PX")
                    .arg(STATE_TTL.as_millis() as u64)
                    .query_async::<()>(&mut c)
                    .await?;
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut c).await?;
                v.ok_or("cache miss")?;
            }
            Workload::Subscriptions => {
                let set = SUBSCRIPTIONS;
                let id = &fx.ids[k];
                redis::cmd("SADD")
                    .arg(set)
                    .arg(id)
                    .query_async::<()>(&mut c)
                    .await?;
                let is: bool = redis::cmd("SISMEMBER")
                    .arg(set)
                    .arg(id)
                    .query_async(&mut c)
                    .await?;
                if !is {
                    return Err("not subscribed".into());
                }
                redis::cmd("SREM")
                    .arg(set)
                    .arg(id)
                    .query_async::<()>(&mut c)
                    .await?;
            }
            Workload::Message => {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let fresh: Option<String> = redis::cmd("SET")
                    .arg(format!("{PREFIX}:cache:dedupe:slack:m{n}"))
                    .arg("true")
                    .arg("NX")
                    .arg("PX")
                    .arg(DEDUPE_TTL.as_millis() as u64)
                    .query_async(&mut c)
                    .await?;
                fresh.ok_or("duplicate")?;
                let token = raw.lock(&mut c, fx, k).await?;
                let _: i64 = raw
                    .append
                    .key(&fx.raw_history[k])
                    .arg(HISTORY_ENTRY)
                    .arg(HISTORY_MAX)
                    .arg(HISTORY_TTL.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await?;
                raw.unlock(&mut c, fx, k, &token).await?;
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
    Wire,
}

struct Bench {
    rt: tokio::runtime::Runtime,
    sides: RustSides<Raw>,
    url: String,
    port: u16,
    node: Option<NodeBench>,
    shas: Shas,
}

struct Shas {
    acquire: String,
    release: String,
    append: String,
}

impl Bench {
    fn flush(&self) {
        let mut c = self.sides.raw.conn.clone();
        self.rt.block_on(async {
            redis::cmd("FLUSHALL")
                .query_async::<()>(&mut c)
                .await
                .expect("FLUSHALL")
        });
    }

    /// Cycles per second of one side on a freshly flushed database.
    fn sample(&self, side: Side, wl: Workload, c: usize, iters: usize) -> f64 {
        self.flush();
        match side {
            Side::Ours => self
                .sides
                .per_second(&self.rt, RustSide::Ours, (wl, c), iters, WARMUP),
            Side::Raw => self
                .sides
                .per_second(&self.rt, RustSide::Raw, (wl, c), iters, WARMUP),
            Side::Ts => {
                run_node(self.node.as_ref().expect("node"), &self.url, wl, c, iters)["perSec"]
                    .as_f64()
                    .expect("perSec")
            }
            Side::Wire => {
                let token = chat_state_core::new_lock_token().expect("token");
                // Seconds per cycle: one command of each kind, each at its pipelined rate.
                let secs: f64 = wl
                    .wire_commands(&self.shas, &token)
                    .iter()
                    .map(|(range, args)| 1.0 / redis_benchmark(self.port, c, iters, *range, args))
                    .sum();
                1.0 / secs
            }
        }
    }
}

/// `redis-benchmark`'s requests per second for one command on one connection with
/// `in_flight` commands pipelined.
fn redis_benchmark(port: u16, in_flight: usize, n: usize, range: u64, args: &[String]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "1"])
        .args(["-P", &in_flight.to_string(), "-n", &n.to_string()])
        .args(["-r", &range.to_string(), "--csv"])
        .args(args)
        .output()
        .expect("run redis-benchmark (ships with redis-server)");
    assert!(out.status.success(), "redis-benchmark failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // `"test","rps",<6 latencies>` then `"<command>","<rps>",...`; the command may itself
    // hold quotes and commas, so count from the end.
    let row = text.lines().last().unwrap_or_default();
    let fields: Vec<&str> = row.split(',').collect();
    fields
        .len()
        .checked_sub(7)
        .and_then(|i| fields[i].trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("redis-benchmark printed {text:?}"))
}

/// Runs one TypeScript run of `wl` against `url` (the side's `bench.mjs`).
fn run_node(
    node: &NodeBench,
    url: &str,
    wl: Workload,
    c: usize,
    iters: usize,
) -> serde_json::Value {
    let args = [
        "bench.mjs".to_owned(),
        url.to_owned(),
        wl.name().to_owned(),
        c.to_string(),
        iters.to_string(),
    ];
    node.json(&args)
}

fn workload(name: &str) -> Workload {
    Workload::named(name, &Workload::ALL)
}

/// Where the bench's redis-server runs: on loopback, or behind a slow link.
enum Server {
    Loopback(RedisServer),
    /// The proxy is what every side connects to; the namespace holds the server.
    SlowLink(NetnsRedis, DelayProxy, u64),
}

impl Server {
    fn start() -> Self {
        let Ok(rtt) = std::env::var("CHAT_STATE_BENCH_RTT_MS") else {
            return Server::Loopback(RedisServer::start());
        };
        let rtt: u64 = rtt
            .parse()
            .expect("CHAT_STATE_BENCH_RTT_MS is a whole number of ms");
        if let Err(why) = netns::available() {
            panic!("CHAT_STATE_BENCH_RTT_MS needs network namespaces: {why}");
        }
        let net = NetnsRedis::start();
        let proxy = DelayProxy::start(net.addr(), Duration::from_micros(rtt * 500));
        Server::SlowLink(net, proxy, rtt)
    }

    fn port(&self) -> u16 {
        match self {
            Server::Loopback(s) => s.port(),
            Server::SlowLink(_, proxy, _) => proxy.port(),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    fn link(&self) -> String {
        match self {
            Server::Loopback(_) => "loopback".to_owned(),
            Server::SlowLink(_, _, rtt) => format!("a veth link + {rtt} ms RTT delay proxy"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Server::Loopback(s) => format!("127.0.0.1:{}", s.port()),
            Server::SlowLink(net, _, rtt) => format!(
                "{} in a network namespace, reached through a {rtt} ms RTT delay proxy",
                net.addr()
            ),
        }
    }
}

/// Connects both Rust sides to `url`.
async fn connect(url: &str) -> (Arc<dyn StateAdapter>, Arc<Raw>) {
    let state: Arc<dyn StateAdapter> = Arc::new(
        RedisBackend::builder(url)
            .key_prefix(PREFIX)
            .connections(env_or("CHAT_STATE_BENCH_CONNECTIONS", 1))
            .connect()
            .await
            .expect("connect"),
    );
    let client = redis::Client::open(url).expect("url");
    let raw = Arc::new(Raw {
        conn: ConnectionManager::new(client).await.expect("raw connect"),
        acquire: Script::new(ACQUIRE),
        release: Script::new(RELEASE),
        append: Script::new(APPEND),
    });
    (state, raw)
}

/// The profile run: warm-up outside, `n` cycles inside [`measured_cycles`].
fn callgrind(wl: &str) {
    let wl = workload(wl);
    let n: usize = env_or("CHAT_STATE_CALLGRIND_CYCLES", 20_000);
    let c: usize = env_or("CHAT_STATE_CALLGRIND_CONC", 64);
    let side = profiled_side();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let (ours, raw) = rt.block_on(connect(&server.url()));
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
    let settings = Settings::from_env(&Workload::ALL);
    let mut sides = vec![Side::Ours];
    for (side, name) in [(Side::Raw, "raw"), (Side::Ts, "ts"), (Side::Wire, "wire")] {
        if settings.runs(name) {
            sides.push(side);
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = Server::start();
    let (state, raw) = rt.block_on(connect(&server.url()));
    let node = sides.contains(&Side::Ts).then(|| {
        NodeBench::prepare(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("bench"),
            "@chat-adapter/state-redis",
        )
    });
    let bench = Bench {
        rt,
        sides: RustSides::new(state, raw, Fixture::new()),
        url: server.url(),
        port: server.port(),
        node,
        shas: Shas {
            acquire: Script::new(ACQUIRE).get_hash().to_owned(),
            release: Script::new(RELEASE).get_hash().to_owned(),
            append: Script::new(APPEND).get_hash().to_owned(),
        },
    };
    // The scripts must be loaded for redis-benchmark's EVALSHA (FLUSHALL keeps them).
    bench.rt.block_on(async {
        let mut c = bench.sides.raw.conn.clone();
        for s in [ACQUIRE, RELEASE, APPEND] {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(s)
                .query_async::<String>(&mut c)
                .await
                .expect("SCRIPT LOAD");
        }
    });
    let ts = bench
        .node
        .as_ref()
        .map(|n| describe_ts(&run_node(n, &bench.url, Workload::Lock, 1, 200)));
    let server_version = bench.rt.block_on(async {
        let mut c = bench.sides.raw.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_owned()
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (rounds, scale) = (settings.rounds, settings.scale);
    eprintln!(
        "redis-server {server_version} on {} (no persistence), {cores} cores, {rounds} rounds, \
         scale {scale}{}",
        server.describe(),
        ts.as_ref().map_or(String::new(), |t| format!(", TS = {t}")),
    );

    let started = Instant::now();
    let samples =
        Samples::interleaved(&settings, sides, Workload::iterations, |side, wl, c, it| {
            bench.sample(side, wl, c, it)
        });

    println!();
    println!(
        "chat-state-redis, redis-server {server_version} on {}, {cores} cores, median of {rounds} \
         interleaved rounds, cycles per second (run took {:.0} s){}",
        server.link(),
        started.elapsed().as_secs_f64(),
        ts.as_ref().map_or(String::new(), |t| format!("; TS = {t}")),
    );
    println!();
    println!(
        "| workload | conc | ours | raw `redis` crate | TS | wire (1 conn, <conc> in flight) | ours/TS | ours/wire | ours/raw |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for (n, &(wl, c)) in settings.cells.iter().enumerate() {
        let o = samples.median(n, Side::Ours).expect("ours");
        let median = |side| samples.median(n, side);
        let (r, t, w) = (median(Side::Raw), median(Side::Ts), median(Side::Wire));
        let num = |x: f64| format!("{x:.0}");
        let ratio = |x: f64| format!("{:.2}x", o / x);
        println!(
            "| {} | {c} | {o:.0} | {} | {} | {} | {} | {} | {} |",
            wl.label(),
            cell(r, num),
            cell(t, num),
            cell(w, num),
            cell(t, ratio),
            cell(w, ratio),
            cell(r, ratio),
        );
        results.push(((wl, c), t.map(|t| o / t), w.map(|w| o / w)));
    }
    println!();
    let find = |wl: Workload, c: usize| results.iter().find(|(at, _, _)| *at == (wl, c));
    for wl in [Workload::Message, Workload::Lock, Workload::Cache] {
        if let Some((_, vs_ts, vs_wire)) = find(wl, 64) {
            if let Some(r) = vs_ts {
                print_target(wl.label(), 64, 1.5, "TypeScript", *r);
            }
            if let Some(r) = vs_wire {
                print_target(wl.label(), 64, 0.7, "the wire", *r);
            }
        }
    }
    for wl in Workload::ALL {
        if let Some((_, _, Some(r))) = find(wl, 1) {
            print_target(wl.label(), 1, 0.95, "the wire", *r);
        }
    }
    bench.rt.block_on(bench.sides.ours.close()).expect("close");
    drop(server);
}
