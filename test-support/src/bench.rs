//! What the benchmarks share: the Node.js side that runs the TypeScript adapters, the
//! concurrent cycle driver and the id walk of the throughput benches, medians, and settings
//! from the environment.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::node_binary;

/// The TypeScript side of a benchmark: Node running a script in a directory that pins the npm
/// adapter in a `package-lock.json`.
#[derive(Debug)]
pub struct NodeBench {
    bin: PathBuf,
    dir: PathBuf,
}

impl NodeBench {
    /// Node for `dir`: `$CHAT_STATE_BENCH_NODE` if set, else [`node_binary`]. Installs the
    /// directory's packages with `npm ci` (under that Node) unless `node_modules/<package>` is
    /// there already.
    pub fn prepare(dir: &Path, package: &str) -> Self {
        let bin = std::env::var_os("CHAT_STATE_BENCH_NODE")
            .map(PathBuf::from)
            .unwrap_or_else(node_binary);
        let installed = dir.join("node_modules").join(package).join("package.json");
        if !installed.is_file() {
            eprintln!(
                "installing the TypeScript side: npm ci in {}",
                dir.display()
            );
            let mut npm = Command::new("npm");
            npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(dir);
            // npm runs under the chosen node when that is a path.
            if let Some(parent) = bin.parent().filter(|p| !p.as_os_str().is_empty()) {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut paths = vec![parent.to_path_buf()];
                paths.extend(std::env::split_paths(&path));
                npm.env("PATH", std::env::join_paths(paths).expect("PATH"));
            }
            let status = npm.status().expect("run npm (is it on PATH?)");
            assert!(status.success(), "npm ci failed: {status}");
        }
        Self {
            bin,
            dir: dir.to_path_buf(),
        }
    }

    /// The node binary used.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `node <args>` in the directory and parses the last line it printed as JSON (the
    /// bench scripts print one JSON line); panics with node's stderr if it fails, or with the
    /// line if it does not parse as a `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self, args: &[String]) -> T {
        let out = Command::new(&self.bin)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        assert!(
            out.status.success(),
            "node {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("node {args:?} printed {line:?}, not its JSON line: {e}"))
    }
}

/// The median of `xs` (the mean of the middle two for an even count; NaN if empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The environment variable `name` parsed as `T`, or `default` if unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// How many thread ids the throughput benches walk (10,000 Slack-style ids; the TypeScript
/// sides' `bench.mjs` use the same number).
pub const IDS: usize = 10_000;

/// Task `w` of `c`, iteration `i`: a scattered walk over the task's own slice of the [`IDS`]
/// ids (7919 is prime, so the walk visits every id of the slice). Same formula in the
/// `bench.mjs` scripts.
pub fn id_index(w: usize, c: usize, i: usize) -> usize {
    let per = IDS / c;
    w + c * ((i * 7919) % per)
}

/// `total` cycles split over `c` tasks; `f(k)` runs one cycle on id index `k` (from
/// [`id_index`]). Panics if a cycle fails: a benchmark of failing calls measures nothing.
pub async fn run_cycles<F, Fut, E>(c: usize, total: usize, f: Arc<F>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug + 'static,
{
    let tasks: Vec<_> = (0..c)
        .map(|w| {
            let mine = total / c + usize::from(w < total % c);
            let f = f.clone();
            tokio::spawn(async move {
                for i in 0..mine {
                    f(id_index(w, c, i)).await.expect("cycle failed");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("benchmark task");
    }
}

/// The environment variable `name` as a comma-separated list (items trimmed), if set.
pub fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').map(|w| w.trim().to_owned()).collect())
}

/// The ~225-byte per-thread state every throughput bench stores (`test-support/bench/
/// thread-state.json`, read by the `bench.mjs` scripts too, so both sides store the same bytes).
pub const THREAD_STATE_JSON: &str = include_str!("../bench/thread-state.json");

/// The Chat SDK's key prefix, lock and thread-state TTLs, dedupe TTL and message history
/// settings, as the remote benches' cycles use them (the `bench.mjs` scripts use the same).
pub mod chat_sdk {
    use std::time::Duration;

    /// The key prefix TypeScript bots use by default.
    pub const PREFIX: &str = "chat-sdk";
    /// `DEFAULT_LOCK_TTL_MS`.
    pub const LOCK_TTL: Duration = Duration::from_secs(30);
    /// `THREAD_STATE_TTL_MS`.
    pub const STATE_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
    /// How long a message's dedupe key lives.
    pub const DEDUPE_TTL: Duration = Duration::from_secs(600);
    /// How long the message history lives.
    pub const HISTORY_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
    /// How many messages the history keeps.
    pub const HISTORY_MAX: usize = 100;
    /// One history entry.
    pub const HISTORY_ENTRY: &[u8] = br#"{"id":"m","text":"hello"}"#;
}

/// One cycle of a remote backend's throughput bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// acquire_lock + release_lock.
    Lock,
    /// set of the thread state + get.
    Cache,
    /// subscribe + is_subscribed + unsubscribe.
    Subscriptions,
    /// What the Chat class does per incoming message: dedupe `set_if_not_exists`,
    /// acquire_lock, append_to_list of the history entry, release_lock.
    Message,
}

impl Workload {
    /// Every workload, in table order.
    pub const ALL: [Workload; 4] = [
        Workload::Lock,
        Workload::Cache,
        Workload::Subscriptions,
        Workload::Message,
    ];

    /// The name `CHAT_STATE_BENCH_ONLY` and the `bench.mjs` scripts use.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Lock => "lock",
            Workload::Cache => "cache",
            Workload::Subscriptions => "subscriptions",
            Workload::Message => "message",
        }
    }

    /// The row label of the results table.
    pub fn label(self) -> &'static str {
        match self {
            Workload::Lock => "lock cycle",
            Workload::Cache => "cache set+get",
            Workload::Subscriptions => "subscriptions",
            Workload::Message => "message cycle",
        }
    }

    /// The workload of `offered` called `name`; panics naming the offered ones otherwise.
    pub fn named(name: &str, offered: &[Workload]) -> Workload {
        offered
            .iter()
            .copied()
            .find(|w| w.name() == name)
            .unwrap_or_else(|| {
                let names: Vec<_> = offered.iter().map(|w| w.name()).collect();
                panic!("unknown workload {name:?}; this bench runs {names:?}")
            })
    }
}

/// What a bench cycle fails with.
pub type CycleError = Box<dyn std::error::Error + Send + Sync>;

/// Ids, keys and values of the throughput benches, built once and shared by every task (the
/// timed loop is calls only).
#[derive(Debug)]
pub struct Fixture {
    /// [`IDS`] Slack-style thread ids.
    pub ids: Vec<String>,
    /// `thread-state:<id>` for each id.
    pub state_keys: Vec<String>,
    /// `msg-history:<id>` for each id.
    pub history_keys: Vec<String>,
    /// [`THREAD_STATE_JSON`], trimmed: what a TypeScript bot stores
    /// (`JSON.stringify(JSON.parse(text))` is the text again).
    pub state_bytes: Vec<u8>,
    /// The history's trim and TTL.
    pub history: chat_state_core::ListOptions,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// The fixture every bench and `bench.mjs` use.
    pub fn new() -> Self {
        let ids: Vec<String> = (0..IDS)
            .map(|i| format!("slack:C{i:07}:1700000000.{i:06}"))
            .collect();
        let json = THREAD_STATE_JSON.trim();
        serde_json::from_str::<serde_json::Value>(json).expect("thread-state.json is JSON");
        Self {
            state_keys: ids.iter().map(|id| format!("thread-state:{id}")).collect(),
            history_keys: ids.iter().map(|id| format!("msg-history:{id}")).collect(),
            ids,
            state_bytes: json.as_bytes().to_vec(),
            history: chat_state_core::ListOptions::new()
                .max_length(chat_sdk::HISTORY_MAX)
                .ttl(chat_sdk::HISTORY_TTL),
        }
    }
}

/// One cycle of `wl` on id index `k` through the adapter, as a user holds it
/// (`&dyn StateAdapter`); `seq` numbers the message cycles' dedupe keys.
pub async fn ours_cycle(
    s: &dyn chat_state_core::StateAdapter,
    fx: &Fixture,
    wl: Workload,
    k: usize,
    seq: &std::sync::atomic::AtomicU64,
) -> Result<(), CycleError> {
    use chat_sdk::{DEDUPE_TTL, HISTORY_ENTRY, LOCK_TTL, STATE_TTL};
    match wl {
        Workload::Lock => {
            let lock = s
                .acquire_lock(&fx.ids[k], LOCK_TTL)
                .await?
                .ok_or("lock held")?;
            s.release_lock(&lock).await?;
        }
        Workload::Cache => {
            let key = &fx.state_keys[k];
            s.set(key, &fx.state_bytes, Some(STATE_TTL)).await?;
            s.get(key).await?.ok_or("cache miss")?;
        }
        Workload::Subscriptions => {
            let id = &fx.ids[k];
            s.subscribe(id).await?;
            if !s.is_subscribed(id).await? {
                return Err("not subscribed".into());
            }
            s.unsubscribe(id).await?;
        }
        Workload::Message => {
            let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let fresh = s
                .set_if_not_exists(&format!("dedupe:slack:m{n}"), b"true", Some(DEDUPE_TTL))
                .await?;
            if !fresh {
                return Err("duplicate".into());
            }
            let lock = s
                .acquire_lock(&fx.ids[k], LOCK_TTL)
                .await?
                .ok_or("lock held")?;
            s.append_to_list(&fx.history_keys[k], HISTORY_ENTRY, fx.history)
                .await?;
            s.release_lock(&lock).await?;
        }
    }
    Ok(())
}

/// What a remote backend's throughput bench reads from the environment:
/// `CHAT_STATE_BENCH_ROUNDS` (default 5), `CHAT_STATE_BENCH_SCALE` (default 1.0, multiplies
/// every iteration count), `CHAT_STATE_BENCH_ONLY=<workload>[,..]`,
/// `CHAT_STATE_BENCH_CONC=1,64` and `CHAT_STATE_BENCH_SKIP=<side>[,..]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interleaved rounds; each cell's result is the median over them.
    pub rounds: usize,
    /// Multiplies every iteration count.
    pub scale: f64,
    /// The (workload, concurrency) cells, in table order.
    pub cells: Vec<(Workload, usize)>,
    skip: Vec<String>,
}

impl Settings {
    /// The settings, for a bench that runs `offered` by default; panics on a workload not
    /// offered or a concurrency that is not a positive number.
    pub fn from_env(offered: &[Workload]) -> Self {
        let workloads: Vec<Workload> = match env_list("CHAT_STATE_BENCH_ONLY") {
            Some(names) => names.iter().map(|n| Workload::named(n, offered)).collect(),
            None => offered.to_vec(),
        };
        let concs: Vec<usize> = env_list("CHAT_STATE_BENCH_CONC")
            .map(|v| {
                v.iter()
                    .map(|c| match c.parse() {
                        Ok(c) if c > 0 => c,
                        _ => panic!("CHAT_STATE_BENCH_CONC: {c:?} is not a positive number"),
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 64]);
        Self {
            rounds: env_or("CHAT_STATE_BENCH_ROUNDS", 5).max(1),
            scale: env_or("CHAT_STATE_BENCH_SCALE", 1.0),
            cells: workloads
                .iter()
                .flat_map(|&w| concs.iter().map(move |&c| (w, c)))
                .collect(),
            skip: env_list("CHAT_STATE_BENCH_SKIP").unwrap_or_default(),
        }
    }

    /// Whether the side called `name` runs (it is not in `CHAT_STATE_BENCH_SKIP`).
    pub fn runs(&self, name: &str) -> bool {
        !self.skip.iter().any(|s| s == name)
    }

    /// `base` iterations scaled, and at least 200 (fewer measure the start more than the run).
    pub fn iterations(&self, base: usize) -> usize {
        ((base as f64 * self.scale) as usize).max(200)
    }
}

/// Cycles per second of every side in every cell, one sample per round.
#[derive(Debug)]
pub struct Samples<S> {
    sides: Vec<S>,
    /// `samples[cell][side]`, one value per round.
    samples: Vec<Vec<Vec<f64>>>,
}

impl<S: Copy + PartialEq + std::fmt::Debug> Samples<S> {
    /// Runs `settings.rounds` rounds of every cell; in each, `sample(side, workload,
    /// concurrency, iterations)` for every side, in an order that rotates every round and cell
    /// so drift in background load favours no side. `iterations(workload, concurrency)` is the
    /// unscaled count. Prints each round's line on stderr.
    pub fn interleaved(
        settings: &Settings,
        sides: Vec<S>,
        iterations: impl Fn(Workload, usize) -> usize,
        mut sample: impl FnMut(S, Workload, usize, usize) -> f64,
    ) -> Self {
        let rounds = settings.rounds;
        let mut samples = vec![vec![Vec::new(); sides.len()]; settings.cells.len()];
        for round in 0..rounds {
            for (n, &(wl, c)) in settings.cells.iter().enumerate() {
                let it = settings.iterations(iterations(wl, c));
                let mut line = format!("round {}/{rounds} {:<13} c={c:<3}", round + 1, wl.name());
                for j in 0..sides.len() {
                    let s = (j + round + n) % sides.len();
                    samples[n][s].push(sample(sides[s], wl, c, it));
                }
                for (s, side) in sides.iter().enumerate() {
                    line += &format!("  {side:?} {:>9.0}/s", samples[n][s][round]);
                }
                eprintln!("{line}");
            }
        }
        Self { sides, samples }
    }

    /// The median of `side` in cell `cell` (an index of [`Settings::cells`]); `None` if the
    /// side did not run.
    pub fn median(&self, cell: usize, side: S) -> Option<f64> {
        let s = self.sides.iter().position(|x| *x == side)?;
        Some(median(&self.samples[cell][s]))
    }
}

/// A table cell: `x` formatted by `f`, or `-` for a side that did not run.
pub fn cell(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "-".to_owned(), f)
}

/// Prints whether `ratio` meets `target`:
/// `target <label> at concurrency <c>: >= <target>x <anchor>: <ratio>x, met|MISSED`.
pub fn print_target(label: &str, c: usize, target: f64, anchor: &str, ratio: f64) {
    let verdict = if ratio >= target { "met" } else { "MISSED" };
    println!("target {label} at concurrency {c}: >= {target:.2}x {anchor}: {ratio:.2}x, {verdict}");
}

/// The TypeScript side as `bench.mjs` describes itself (`{adapter, client, node}`):
/// `` `adapter` + `client` on node <version> ``.
pub fn describe_ts(info: &serde_json::Value) -> String {
    let field = |k: &str| info[k].as_str().unwrap_or("?").to_owned();
    format!(
        "`{}` + `{}` on node {}",
        field("adapter"),
        field("client"),
        field("node")
    )
}

impl AsRef<Fixture> for Fixture {
    fn as_ref(&self) -> &Fixture {
        self
    }
}

/// The raw side of a remote bench: the adapter's own commands or statements on the plain
/// client, i.e. what the adapter itself costs is the difference.
pub trait RawCycles: Send + Sync + 'static {
    /// What the cycles read: [`Fixture`], or a bench's extension of it (its raw keys).
    type Fixture: AsRef<Fixture> + Send + Sync + 'static;

    /// One cycle of `wl` on id index `k`; `seq` numbers the message cycles' dedupe keys.
    fn cycle(
        &self,
        fx: &Self::Fixture,
        wl: Workload,
        k: usize,
        seq: &std::sync::atomic::AtomicU64,
    ) -> impl Future<Output = Result<(), CycleError>> + Send;
}

/// The two sides of a remote bench that run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RustSide {
    /// The adapter, as a user holds it.
    Ours,
    /// The same commands on the plain client ([`RawCycles`]).
    Raw,
}

/// The adapter and the raw side of a bench, on one fixture.
pub struct RustSides<R: RawCycles> {
    /// The adapter.
    pub ours: Arc<dyn chat_state_core::StateAdapter>,
    /// The raw side.
    pub raw: Arc<R>,
    /// The ids, keys and values both use.
    pub fx: Arc<R::Fixture>,
    /// Numbers the message cycles' dedupe keys: restarted by each measurement (which runs
    /// on an emptied store), shared by its warm-up and timed cycles so none is a duplicate.
    seq: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: RawCycles> RustSides<R> {
    /// Both sides on `fx`.
    pub fn new(ours: Arc<dyn chat_state_core::StateAdapter>, raw: Arc<R>, fx: R::Fixture) -> Self {
        Self {
            ours,
            raw,
            fx: Arc::new(fx),
            seq: Arc::default(),
        }
    }

    /// `total` cycles of `wl` on `side` at concurrency `c` (see [`run_cycles`]), numbered on
    /// from the last.
    async fn run(&self, side: RustSide, wl: Workload, c: usize, total: usize) {
        let seq = self.seq.clone();
        let fx = self.fx.clone();
        match side {
            RustSide::Ours => {
                let ours = self.ours.clone();
                let f = Arc::new(move |k| {
                    let (ours, fx, seq) = (ours.clone(), fx.clone(), seq.clone());
                    async move { ours_cycle(&*ours, (*fx).as_ref(), wl, k, &seq).await }
                });
                run_cycles(c, total, f).await;
            }
            RustSide::Raw => {
                let raw = self.raw.clone();
                let f = Arc::new(move |k| {
                    let (raw, fx, seq) = (raw.clone(), fx.clone(), seq.clone());
                    async move { raw.cycle(&fx, wl, k, &seq).await }
                });
                run_cycles(c, total, f).await;
            }
        }
    }

    /// Cycles per second of `side`: `warmup` cycles (at most `iters`) untimed, then `iters`
    /// timed.
    pub fn per_second(
        &self,
        rt: &tokio::runtime::Runtime,
        side: RustSide,
        (wl, c): (Workload, usize),
        iters: usize,
        warmup: usize,
    ) -> f64 {
        self.seq.store(0, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            self.run(side, wl, c, warmup.min(iters)).await;
            let start = std::time::Instant::now();
            self.run(side, wl, c, iters).await;
            iters as f64 / start.elapsed().as_secs_f64()
        })
    }

    /// The profile run `callgrind-lib.sh` measures: `warmup` cycles, then `n` inside
    /// [`measured_cycles`] (on the runtime the caller built: current-thread, so the client's
    /// I/O runs on the measured thread too).
    pub fn profile(
        &self,
        rt: &tokio::runtime::Runtime,
        side: RustSide,
        (wl, c): (Workload, usize),
        warmup: usize,
        n: usize,
    ) {
        self.seq.store(0, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(self.run(side, wl, c, warmup));
        measured_cycles(rt, self.run(side, wl, c, n));
    }
}

/// The cycles a profile collects (`--toggle-collect=*measured_cycles*`): kept out of line so
/// its symbol exists.
#[inline(never)]
pub fn measured_cycles(rt: &tokio::runtime::Runtime, f: impl Future<Output = ()>) {
    rt.block_on(f);
}

/// The side a profile run measures: `CHAT_STATE_CALLGRIND_SIDE=ours|raw` (default ours).
pub fn profiled_side() -> RustSide {
    match std::env::var("CHAT_STATE_CALLGRIND_SIDE").as_deref() {
        Ok("raw") => RustSide::Raw,
        Ok("ours") | Err(_) => RustSide::Ours,
        Ok(other) => panic!("CHAT_STATE_CALLGRIND_SIDE={other:?}: expected ours or raw"),
    }
}
