//! Throughput of the memory backend next to the TypeScript Chat SDK's in-memory adapter, npm
//! `@chat-adapter/state-memory` (pinned in `bench/package-lock.json`), in one run.
//!
//! `cargo bench -p chat-state-memory` (about a minute). For every workload at concurrency 1
//! and 64 it runs, in each of 5 rounds, the Rust adapter and then (alternating the order
//! every round) `node bench/bench.mjs <workload> <concurrency> <iterations>` on the same
//! 10,000 thread ids and the same ~225-byte thread state
//! (`test-support/bench/thread-state.json`), and prints the median cycles per second of each
//! side and their ratio Rust / TypeScript as a markdown table. The first run installs the
//! Node side with `npm ci` into `bench/node_modules`.
//!
//! The Rust side is what a user holds: `Arc<dyn StateAdapter>` from `MemoryState::default()`,
//! driven by tokio tasks on a multi-thread runtime with 2 workers. Concurrency 64 is 64 tasks
//! (Rust) or 64 async loops on the one event loop (Node). Ids and keys are built before the
//! timed loop on both sides, so the timed loop is adapter calls only.
//!
//! Workloads (one cycle each):
//! - `lock`: acquire_lock + release_lock on a scattered walk over the task's own ids;
//! - `contended-lock`: every task on 8 hot ids, acquire and release when won;
//! - `cache`: set (the 225-byte JSON as bytes / as a string in TS) + get;
//! - `subscriptions`: subscribe + is_subscribed + unsubscribe;
//! - `message` (typed): is_subscribed, acquire_lock, get_json, set_json of a serde struct
//!   (turn + 1), release_lock, on threads set up subscribed and with state, which is what the
//!   Chat SDK does per message with a handler's `thread.setState({ turn })`;
//! - `message-raw`: the same cycle with get/set of the bytes, compared to the same TS cycle
//!   (the TS adapter stores objects by reference and never serialises).
//!
//! Environment:
//! - `CHAT_STATE_BENCH_ROUNDS` (default 5), `CHAT_STATE_BENCH_SCALE` (default 1.0: multiplies
//!   every iteration count), `CHAT_STATE_BENCH_ONLY=<workload>[,..]` (a subset);
//! - `CHAT_STATE_BENCH_NODE`: the node binary (default: `<repo>/.tools/.../node` if the repo's
//!   Node 22 is installed, else `node` from `PATH`);
//! - `CHAT_STATE_CALLGRIND=typed|raw` with `CHAT_STATE_CALLGRIND_CYCLES=<n>`: no Node, no
//!   table; runs setup, 10,000 warm-up cycles and then `n` message cycles at concurrency 1
//!   inside `measured_cycles` (see `bench/callgrind.sh`, which turns two such runs into
//!   instructions per cycle).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_state_core::{StateAdapter, StateExt};
use chat_state_memory::MemoryState;
use chat_state_test_support::bench::{IDS, NodeBench, THREAD_STATE_JSON, env_or, id_index, median};
use serde::{Deserialize, Serialize};

/// Ids the contended-lock workload fights over.
const HOT: usize = 8;
/// The Chat SDK's `DEFAULT_LOCK_TTL_MS` and `THREAD_STATE_TTL_MS`.
const LOCK_TTL: Duration = Duration::from_secs(30);
const STATE_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Warm-up cycles before timing (map growth, caches; JIT on the Node side).
const WARMUP: usize = 20_000;

/// A bot's per-thread state as a user would type it: ~225 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThreadState {
    mode: String,
    turn: u64,
    user_id: String,
    channel: String,
    last_message_id: String,
    topic: String,
    tags: Vec<String>,
    awaiting_reply: bool,
    summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Lock,
    ContendedLock,
    Cache,
    Subscriptions,
    Message,
    MessageRaw,
}

impl Workload {
    const ALL: [Workload; 6] = [
        Workload::Lock,
        Workload::ContendedLock,
        Workload::Cache,
        Workload::Subscriptions,
        Workload::Message,
        Workload::MessageRaw,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Lock => "lock",
            Workload::ContendedLock => "contended-lock",
            Workload::Cache => "cache",
            Workload::Subscriptions => "subscriptions",
            Workload::Message => "message",
            Workload::MessageRaw => "message-raw",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::Lock => "lock cycle (acquire+release)",
            Workload::ContendedLock => "contended lock (8 ids)",
            Workload::Cache => "cache set+get",
            Workload::Subscriptions => "subscriptions (sub+is+unsub)",
            Workload::Message => "message cycle, typed (get_json/set_json)",
            Workload::MessageRaw => "message cycle, raw bytes (get/set)",
        }
    }

    /// The workload `bench.mjs` runs for the comparison.
    fn ts_name(self) -> &'static str {
        match self {
            Workload::MessageRaw => "message",
            other => other.name(),
        }
    }

    /// Adapter calls per cycle.
    fn calls(self) -> usize {
        match self {
            Workload::Lock | Workload::ContendedLock | Workload::Cache => 2,
            Workload::Subscriptions => 3,
            Workload::Message | Workload::MessageRaw => 5,
        }
    }

    /// Timed cycles per run (before `CHAT_STATE_BENCH_SCALE`): a few tenths of a second on
    /// either side.
    fn iterations(self) -> usize {
        match self {
            Workload::Lock | Workload::ContendedLock | Workload::Cache => 600_000,
            Workload::Subscriptions => 900_000,
            Workload::Message | Workload::MessageRaw => 200_000,
        }
    }
}

/// Ids, keys and value, built once, shared by every task.
struct Fixture {
    ids: Vec<String>,
    state_keys: Vec<String>,
    state_bytes: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let ids: Vec<String> = (0..IDS)
            .map(|i| format!("slack:C{i:07}:1700000000.{i:06}"))
            .collect();
        let state_keys = ids.iter().map(|id| format!("thread-state:{id}")).collect();
        let json = THREAD_STATE_JSON.trim();
        let state: ThreadState = serde_json::from_str(json).expect("thread-state.json");
        // The typed value is exactly the bytes the raw cycle and the TS side store.
        assert_eq!(serde_json::to_string(&state).expect("encode"), json);
        Self {
            ids,
            state_keys,
            state_bytes: json.as_bytes().to_vec(),
        }
    }
}

/// Prepares a fresh adapter for `workload`: a bot's threads, subscribed and with state.
async fn setup(s: &dyn StateAdapter, fx: &Fixture, workload: Workload) {
    if matches!(workload, Workload::Message | Workload::MessageRaw) {
        for k in 0..IDS {
            s.subscribe(&fx.ids[k]).await.expect("subscribe");
            s.set(&fx.state_keys[k], &fx.state_bytes, Some(STATE_TTL))
                .await
                .expect("set");
        }
    }
}

/// One cycle; returns whether it got what it asked for (only the contended lock may not).
async fn cycle(
    s: &dyn StateAdapter,
    fx: &Fixture,
    wl: Workload,
    w: usize,
    c: usize,
    i: usize,
) -> bool {
    match wl {
        Workload::Lock => {
            let id = &fx.ids[id_index(w, c, i)];
            let lock = s.acquire_lock(id, LOCK_TTL).await.unwrap().expect("free");
            s.release_lock(&lock).await.unwrap();
            true
        }
        Workload::ContendedLock => {
            let id = &fx.ids[(w + i) % HOT];
            match s.acquire_lock(id, LOCK_TTL).await.unwrap() {
                Some(lock) => {
                    s.release_lock(&lock).await.unwrap();
                    true
                }
                None => false,
            }
        }
        Workload::Cache => {
            let key = &fx.state_keys[id_index(w, c, i)];
            s.set(key, &fx.state_bytes, Some(STATE_TTL)).await.unwrap();
            assert!(s.get(key).await.unwrap().is_some());
            true
        }
        Workload::Subscriptions => {
            let id = &fx.ids[id_index(w, c, i)];
            s.subscribe(id).await.unwrap();
            assert!(s.is_subscribed(id).await.unwrap());
            s.unsubscribe(id).await.unwrap();
            true
        }
        Workload::Message => {
            let k = id_index(w, c, i);
            let (id, key) = (&fx.ids[k], &fx.state_keys[k]);
            assert!(s.is_subscribed(id).await.unwrap());
            let lock = s.acquire_lock(id, LOCK_TTL).await.unwrap().expect("free");
            let mut state: ThreadState = s.get_json(key).await.unwrap().expect("state");
            state.turn += 1;
            s.set_json(key, &state, Some(STATE_TTL)).await.unwrap();
            s.release_lock(&lock).await.unwrap();
            true
        }
        Workload::MessageRaw => {
            let k = id_index(w, c, i);
            let (id, key) = (&fx.ids[k], &fx.state_keys[k]);
            assert!(s.is_subscribed(id).await.unwrap());
            let lock = s.acquire_lock(id, LOCK_TTL).await.unwrap().expect("free");
            let bytes = s.get(key).await.unwrap().expect("state");
            s.set(key, &bytes, Some(STATE_TTL)).await.unwrap();
            s.release_lock(&lock).await.unwrap();
            true
        }
    }
}

/// `total` cycles split over `c` tasks; returns the successes.
async fn run(
    state: &Arc<dyn StateAdapter>,
    fx: &Arc<Fixture>,
    wl: Workload,
    c: usize,
    total: usize,
) -> usize {
    let tasks: Vec<_> = (0..c)
        .map(|w| {
            let mine = total / c + usize::from(w < total % c);
            let (state, fx) = (state.clone(), fx.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                for i in 0..mine {
                    ok += usize::from(cycle(&*state, &fx, wl, w, c, i).await);
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("benchmark task");
    }
    ok
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    per_sec: f64,
    /// Share of cycles that got what they asked for.
    success: f64,
}

/// One Rust run: a fresh adapter, setup, warm-up, timed cycles.
fn run_rust(
    rt: &tokio::runtime::Runtime,
    fx: &Arc<Fixture>,
    wl: Workload,
    c: usize,
    iters: usize,
) -> Sample {
    rt.block_on(async {
        let state: Arc<dyn StateAdapter> = Arc::new(MemoryState::default());
        setup(&*state, fx, wl).await;
        run(&state, fx, wl, c, WARMUP.min(iters)).await;
        let start = Instant::now();
        let ok = run(&state, fx, wl, c, iters).await;
        let secs = start.elapsed().as_secs_f64();
        state.close().await.expect("close");
        Sample {
            per_sec: iters as f64 / secs,
            success: ok as f64 / iters as f64,
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeResult {
    iterations: f64,
    successes: f64,
    per_sec: f64,
    node: String,
    adapter: String,
}

/// Runs one TypeScript run of `wl` (the side's `bench.mjs`).
fn run_node(node: &NodeBench, wl: Workload, c: usize, iters: usize) -> (Sample, NodeResult) {
    let args = [
        "bench.mjs".to_owned(),
        wl.ts_name().to_owned(),
        c.to_string(),
        iters.to_string(),
    ];
    let r: NodeResult = node.json(&args);
    let sample = Sample {
        per_sec: r.per_sec,
        success: r.successes / r.iterations,
    };
    (sample, r)
}

/// Setup and warm-up outside [`measured_cycles`], so that `--toggle-collect` sees only the
/// cycles.
fn callgrind(rt: &tokio::runtime::Runtime, mode: &str) {
    let wl = match mode {
        "typed" => Workload::Message,
        "raw" => Workload::MessageRaw,
        other => panic!("CHAT_STATE_CALLGRIND={other}: expected typed or raw"),
    };
    let cycles: usize = env_or("CHAT_STATE_CALLGRIND_CYCLES", 100_000);
    let fx = Arc::new(Fixture::new());
    let state: Arc<dyn StateAdapter> = Arc::new(MemoryState::default());
    rt.block_on(async {
        setup(&*state, &fx, wl).await;
        for i in 0..10_000 {
            cycle(&*state, &fx, wl, 0, 1, i).await;
        }
    });
    let ok = measured_cycles(rt, &state, &fx, wl, cycles);
    assert_eq!(ok, cycles);
    println!("{mode} message cycle: {cycles} cycles done");
}

/// `n` cycles of `wl` at concurrency 1: the function `bench/callgrind.sh` collects. The loop
/// runs on this thread (`block_on`), not in a spawned task on a worker, because callgrind
/// toggles collection per thread; the memory backend's futures never suspend, so a cycle
/// costs the same instructions either way.
#[inline(never)]
fn measured_cycles(
    rt: &tokio::runtime::Runtime,
    state: &Arc<dyn StateAdapter>,
    fx: &Fixture,
    wl: Workload,
    n: usize,
) -> usize {
    rt.block_on(async {
        let mut ok = 0;
        for i in 0..n {
            ok += usize::from(cycle(&**state, fx, wl, 0, 1, i).await);
        }
        ok
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(mode) = std::env::var("CHAT_STATE_CALLGRIND") {
        callgrind(&rt, &mode);
        return;
    }

    let rounds: usize = env_or("CHAT_STATE_BENCH_ROUNDS", 5).max(1);
    let scale: f64 = env_or("CHAT_STATE_BENCH_SCALE", 1.0);
    let only: Option<Vec<String>> = std::env::var("CHAT_STATE_BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(|w| w.trim().to_owned()).collect());
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == w.name()))
        })
        .collect();
    let cells: Vec<(Workload, usize)> = workloads.iter().flat_map(|&w| [(w, 1), (w, 64)]).collect();
    let iters = |w: Workload| ((w.iterations() as f64 * scale) as usize).max(1_000);

    let fx = Arc::new(Fixture::new());
    let node = NodeBench::prepare(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("bench"),
        "@chat-adapter/state-memory",
    );
    let (_, info) = run_node(&node, Workload::Lock, 1, 1_000);
    eprintln!(
        "chat-state-memory vs {} on node {} ({} cores, {rounds} rounds, scale {scale})",
        info.adapter,
        info.node,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    // rust[cell][round], ts[cell][round]; the TS message run serves both message rows.
    let mut rust = vec![Vec::new(); cells.len()];
    let mut ts: Vec<Vec<Sample>> = vec![Vec::new(); cells.len()];
    let started = Instant::now();
    for round in 0..rounds {
        let mut ts_message: Vec<(usize, Sample)> = Vec::new();
        for (n, &(wl, c)) in cells.iter().enumerate() {
            let it = iters(wl);
            let shared = ts_message.iter().find(|(cc, _)| *cc == c).map(|(_, s)| *s);
            let node_run = || match shared {
                Some(s) if wl.ts_name() == "message" => s,
                _ => run_node(&node, wl, c, it).0,
            };
            // Alternate which side goes first, so drift in background load favours neither.
            let (r, t) = if round % 2 == 0 {
                let r = run_rust(&rt, &fx, wl, c, it);
                (r, node_run())
            } else {
                let t = node_run();
                (run_rust(&rt, &fx, wl, c, it), t)
            };
            if wl.ts_name() == "message" && shared.is_none() {
                ts_message.push((c, t));
            }
            eprintln!(
                "round {}/{rounds} {:<15} c={c:<3} rust {:>10.0}/s  ts {:>10.0}/s  {:>5.2}x",
                round + 1,
                wl.name(),
                r.per_sec,
                t.per_sec,
                r.per_sec / t.per_sec
            );
            rust[n].push(r);
            ts[n].push(t);
        }
    }

    println!();
    println!(
        "chat-state-memory vs `{}` (node {}), {} cores, median of {rounds} interleaved rounds, \
         cycles per second (run took {:.0} s)",
        info.adapter,
        info.node,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| workload | calls/cycle | conc | Rust cycles/s | TS cycles/s | Rust/TS | per-round Rust/TS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let mut ratios = Vec::new();
    for (n, &(wl, c)) in cells.iter().enumerate() {
        let r = median(&rust[n].iter().map(|s| s.per_sec).collect::<Vec<_>>());
        let t = median(&ts[n].iter().map(|s| s.per_sec).collect::<Vec<_>>());
        let per_round: Vec<f64> = rust[n]
            .iter()
            .zip(&ts[n])
            .map(|(r, t)| r.per_sec / t.per_sec)
            .collect();
        let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_round.iter().copied().fold(0.0, f64::max);
        let mut label = wl.label().to_owned();
        if wl == Workload::ContendedLock && c > 1 {
            label = format!(
                "{label}, won: Rust {:.0}% / TS {:.0}%",
                100.0 * median(&rust[n].iter().map(|s| s.success).collect::<Vec<_>>()),
                100.0 * median(&ts[n].iter().map(|s| s.success).collect::<Vec<_>>())
            );
        }
        println!(
            "| {label} | {} | {c} | {r:.0} | {t:.0} | {:.2}x | {lo:.2}–{hi:.2} |",
            wl.calls(),
            r / t
        );
        ratios.push(((wl, c), r / t));
    }
    println!();
    let ratio = |wl: Workload, c: usize| {
        ratios
            .iter()
            .find(|(cell, _)| *cell == (wl, c))
            .map(|(_, r)| *r)
    };
    for (wl, c, target) in [
        (Workload::Message, 1, 3.0),
        (Workload::Message, 64, 5.0),
        (Workload::Cache, 1, 3.0),
    ] {
        if let Some(r) = ratio(wl, c) {
            println!(
                "target {} at concurrency {c}: >= {target:.0}x TypeScript: {:.2}x, {}",
                wl.label(),
                r,
                if r >= target { "met" } else { "MISSED" }
            );
        }
    }
}
