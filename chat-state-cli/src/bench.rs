//! `chat-state bench`: the standard workloads at a chosen concurrency against any URL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_state::{StateAdapter, StateExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::{CliError, percentile};

/// The standard workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// acquire + release on a lock no one else uses.
    LockCycle,
    /// every worker races for one lock: acquire, and release when won.
    ContendedLock,
    /// set then get of a worker's own key.
    CacheSetGet,
    /// subscribe, is_subscribed, unsubscribe.
    Subscriptions,
    /// what the Chat SDK does per message: dedupe, subscription check, lock, thread-state
    /// get + set, release.
    MessageCycle,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 5] = [
        Workload::LockCycle,
        Workload::ContendedLock,
        Workload::CacheSetGet,
        Workload::Subscriptions,
        Workload::MessageCycle,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::LockCycle => "lock-cycle",
            Workload::ContendedLock => "contended-lock",
            Workload::CacheSetGet => "cache-set-get",
            Workload::Subscriptions => "subscriptions",
            Workload::MessageCycle => "message-cycle",
        }
    }
}

/// `chat-state bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Backend URL. Default: an embedded SQLite file in a fresh temporary directory.
    #[arg(long, env = "CHAT_STATE_URL")]
    pub url: Option<String>,
    /// Workloads to run (repeatable); all when omitted.
    #[arg(long = "workload", value_enum)]
    pub workloads: Vec<Workload>,
    /// Concurrent workers (tokio tasks) per workload.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Iterations per workload, split over the workers.
    #[arg(long, default_value_t = 5_000)]
    pub iterations: usize,
    /// Also run every workload against this URL (e.g. `memory://`) in the same run, and
    /// report each throughput as a ratio to it: comparable across machines, unlike raw
    /// numbers.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One workload's result.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BenchResult {
    /// Which workload.
    pub workload: Workload,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Iterations completed.
    pub iterations: u64,
    /// Iterations that got what they asked for (e.g. won the contended lock).
    pub successes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Iterations per second.
    pub per_sec: f64,
    /// Median iteration latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile iteration latency, microseconds.
    pub p99_us: f64,
}

/// Runs one workload and measures it.
pub async fn run_workload(
    state: Arc<dyn StateAdapter>,
    workload: Workload,
    concurrency: usize,
    iterations: usize,
    progress: &ProgressBar,
) -> Result<BenchResult, CliError> {
    let concurrency = concurrency.max(1);
    let ns = format!("bench-{}", super::run_id());
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        // Spread the remainder so exactly `iterations` run in total.
        let mine = iterations / concurrency + usize::from(worker < iterations % concurrency);
        let (state, ns, progress) = (state.clone(), ns.clone(), progress.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(mine);
            let mut successes = 0u64;
            for i in 0..mine {
                let t = Instant::now();
                if one(&*state, workload, &ns, worker, i).await? {
                    successes += 1;
                }
                // Nanoseconds: the memory backend's calls take well under a microsecond.
                latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                progress.inc(1);
            }
            Ok::<_, chat_state::Error>((latencies, successes))
        }));
    }
    let mut latencies = Vec::with_capacity(iterations);
    let mut successes = 0;
    for worker in workers {
        let (l, s) = worker
            .await
            .map_err(|e| format!("a worker panicked: {e}"))??;
        latencies.extend(l);
        successes += s;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(BenchResult {
        workload,
        concurrency,
        iterations: latencies.len() as u64,
        successes,
        seconds,
        per_sec: latencies.len() as f64 / seconds.max(1e-9),
        p50_us: percentile(&latencies, 0.50) as f64 / 1000.0,
        p99_us: percentile(&latencies, 0.99) as f64 / 1000.0,
    })
}

/// One iteration; returns whether it "succeeded" (meaningful for the contended lock).
async fn one(
    state: &dyn StateAdapter,
    workload: Workload,
    ns: &str,
    worker: usize,
    i: usize,
) -> chat_state::Result<bool> {
    let ttl = Duration::from_secs(30);
    match workload {
        Workload::LockCycle => {
            let id = format!("{ns}:lock:{worker}");
            let lock = state.acquire_lock(&id, ttl).await?;
            if let Some(lock) = &lock {
                state.release_lock(lock).await?;
            }
            Ok(lock.is_some())
        }
        Workload::ContendedLock => {
            let lock = state.acquire_lock(&format!("{ns}:hot"), ttl).await?;
            if let Some(lock) = &lock {
                state.release_lock(lock).await?;
            }
            Ok(lock.is_some())
        }
        Workload::CacheSetGet => {
            let key = format!("{ns}:cache:{worker}:{}", i % 64);
            state
                .set_json(&key, &serde_json::json!({ "i": i }), Some(ttl))
                .await?;
            Ok(state.get(&key).await?.is_some())
        }
        Workload::Subscriptions => {
            let id = format!("{ns}:thread:{worker}");
            state.subscribe(&id).await?;
            let subscribed = state.is_subscribed(&id).await?;
            state.unsubscribe(&id).await?;
            Ok(subscribed)
        }
        Workload::MessageCycle => {
            let thread = format!("{ns}:thread:{worker}");
            let fresh = state
                .set_json_if_not_exists(
                    &format!("dedupe:{ns}:{worker}:{i}"),
                    &true,
                    Some(Duration::from_secs(600)),
                )
                .await?;
            state.is_subscribed(&thread).await?;
            let Some(lock) = state.acquire_lock(&thread, ttl).await? else {
                return Ok(false);
            };
            let key = format!("thread-state:{thread}");
            let turns = state
                .get_json::<serde_json::Value>(&key)
                .await?
                .and_then(|v| v["turns"].as_u64())
                .unwrap_or(0);
            state
                .set_json(&key, &serde_json::json!({ "turns": turns + 1 }), Some(ttl))
                .await?;
            state.release_lock(&lock).await?;
            Ok(fresh)
        }
    }
}

/// Renders results as an aligned table; with baseline results (same workloads, same order),
/// adds each throughput's ratio to the baseline's.
pub fn render_table(
    backend: &str,
    results: &[BenchResult],
    baseline: Option<(&str, &[BenchResult])>,
) -> String {
    let mut out = match baseline {
        Some((name, _)) => format!("backend: {backend} (baseline: {name})\n"),
        None => format!("backend: {backend}\n"),
    };
    out.push_str(&format!(
        "{:<16} {:>6} {:>9} {:>9} {:>11} {:>9} {:>9}",
        "workload", "conc", "iters", "ok", "iters/s", "p50 us", "p99 us"
    ));
    if baseline.is_some() {
        out.push_str(&format!(" {:>10}", "x baseline"));
    }
    out.push('\n');
    for (i, r) in results.iter().enumerate() {
        out.push_str(&format!(
            "{:<16} {:>6} {:>9} {:>9} {:>11.0} {:>9.1} {:>9.1}",
            r.workload.name(),
            r.concurrency,
            r.iterations,
            r.successes,
            r.per_sec,
            r.p50_us,
            r.p99_us
        ));
        if let Some(base) = baseline.and_then(|(_, b)| b.get(i)) {
            out.push_str(&format!(" {:>10.3}", r.per_sec / base.per_sec.max(1e-9)));
        }
        out.push('\n');
    }
    out
}

async fn run_all(
    state: &Arc<dyn StateAdapter>,
    workload: Workload,
    args: &BenchArgs,
) -> Result<BenchResult, CliError> {
    // Only long runs get a bar, and only on a terminal (indicatif hides it otherwise).
    let progress = if args.iterations >= 1_000 && !args.json {
        let bar = ProgressBar::with_draw_target(
            Some(args.iterations as u64),
            ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {per_sec}")
                .map_err(|e| format!("progress template: {e}"))?
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} {}", state.backend_name(), workload.name()));
        bar
    } else {
        ProgressBar::hidden()
    };
    let result = run_workload(
        state.clone(),
        workload,
        args.concurrency,
        args.iterations,
        &progress,
    )
    .await;
    progress.finish_and_clear();
    result
}

pub(crate) async fn command(args: BenchArgs, trace: bool) -> Result<bool, CliError> {
    let (url, _dir) = match &args.url {
        Some(url) => (url.clone(), None),
        None => super::default_url()?,
    };
    let state = super::open(&url, trace).await?;
    let baseline = match &args.baseline {
        Some(url) => Some(super::open(url, trace).await?),
        None => None,
    };
    let workloads = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    let mut results = Vec::new();
    let mut base_results = Vec::new();
    for workload in workloads {
        results.push(run_all(&state, workload, &args).await?);
        if let Some(baseline) = &baseline {
            base_results.push(run_all(baseline, workload, &args).await?);
        }
    }
    let _ = state.close().await;
    if let Some(baseline) = &baseline {
        let _ = baseline.close().await;
    }
    let base = baseline
        .as_ref()
        .map(|b| (b.backend_name(), base_results.as_slice()));
    if args.json {
        let mut json = serde_json::json!({
            "backend": state.backend_name(),
            "results": results,
        });
        if let Some((name, base)) = base {
            json["baseline"] = serde_json::json!({ "backend": name, "results": base });
            json["ratios"] = results
                .iter()
                .zip(base)
                .map(|(r, b)| {
                    serde_json::json!({
                        "workload": r.workload,
                        "perSecVsBaseline": r.per_sec / b.per_sec.max(1e-9),
                    })
                })
                .collect();
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", render_table(state.backend_name(), &results, base));
    }
    Ok(true)
}
