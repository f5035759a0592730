//! `chat-state simulate`: a fleet of bot instances sharing one backend, handling a stream of
//! chat messages exactly the way the Chat SDK's `Chat` class uses its state adapter.
//!
//! Per delivery, an instance runs the library's [`Dispatcher`] with the Chat SDK's defaults:
//! 1. `admit`: in one call, dedupes it (`dedupe:<adapter>:<id>`, 10 min), takes the thread's
//!    lock for 30 s and reads its subscription, or, when the thread is busy, queues the
//!    message (max size 10, 90 s lifetime);
//! 2. the handler, under the lock with its heartbeat: an unsubscribed thread is a new
//!    mention, which subscribes it; then a thread-state read and a fenced write, and a
//!    history append;
//! 3. `release_or_next` until the lock is released: each queued message is handed over and
//!    handled, and the release happens in the same step that finds the queue empty, so no
//!    message queued behind the holder is stranded (the upstream gap, closed).
//!
//! The platform side delivers some messages twice at once (duplicate webhooks) and some again
//! later (retries after a missed acknowledgement); dedupe must suppress all of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_state::{BusyStrategy, Dispatched, Dispatcher, ListOptions, StateAdapter, StateExt, Turn};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::{CliError, percentile};

const DEDUPE_TTL: Duration = Duration::from_secs(10 * 60);
const LOCK_TTL: Duration = Duration::from_secs(30);
const QUEUE_MAX: usize = 10;
const QUEUE_LIFETIME: Duration = Duration::from_secs(90);
const THREAD_STATE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const HISTORY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// `chat-state simulate` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Backend URL (`memory://`, `sqlite://FILE`, `redis://HOST:PORT`, `postgres://...`).
    /// Default: an embedded SQLite file in a fresh temporary directory.
    #[arg(long, env = "CHAT_STATE_URL")]
    pub url: Option<String>,
    /// Bot instances (tokio tasks) sharing the backend.
    #[arg(long, default_value_t = 16)]
    pub instances: usize,
    /// Distinct messages sent by users.
    #[arg(long, default_value_t = 2_000)]
    pub messages: usize,
    /// Chat threads the messages are spread over (fewer threads, more lock conflicts).
    #[arg(long, default_value_t = 64)]
    pub threads: usize,
    /// Fraction of messages the platform delivers twice at once.
    #[arg(long, default_value_t = 0.2)]
    pub duplicates: f64,
    /// Fraction of messages the platform delivers again later (a retry).
    #[arg(long, default_value_t = 0.1)]
    pub retries: f64,
    /// Simulated handler work per message, in milliseconds.
    #[arg(long, default_value_t = 1)]
    pub handler_ms: u64,
    /// Random seed (same seed, same delivery stream).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Default for SimulateArgs {
    fn default() -> Self {
        Self {
            url: None,
            instances: 16,
            messages: 2_000,
            threads: 64,
            duplicates: 0.2,
            retries: 0.1,
            handler_ms: 1,
            seed: 7,
            json: false,
        }
    }
}

/// The outcome of a simulation run.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct SimReport {
    /// Backend name.
    pub backend: String,
    /// Bot instances.
    pub instances: usize,
    /// Chat threads.
    pub threads: usize,
    /// Distinct messages.
    pub messages: usize,
    /// Deliveries, including duplicates and retries.
    pub deliveries: u64,
    /// Messages handled exactly once.
    pub handled_once: usize,
    /// Deliveries dropped by dedupe.
    pub duplicates_suppressed: u64,
    /// Messages that arrived while their thread was locked and were queued.
    pub conflicts_queued: u64,
    /// Queued messages dropped by the queue's max size (the Chat SDK's policy; allowed).
    pub conflicts_dropped: u64,
    /// Messages the holder of a lock drained from the queue.
    pub drained: u64,
    /// Threads first seen unsubscribed (new mentions, which subscribe them).
    pub new_mentions: u64,
    /// Messages handled more than once. Must be 0.
    pub handled_twice: usize,
    /// Messages neither handled nor dropped by policy. Must be 0.
    pub lost: usize,
    /// Thread-state increments that were overwritten by a concurrent handler (a lock that
    /// did not exclude). Must be 0.
    pub lost_updates: u64,
    /// Heartbeats that reported the lock lost while a handler ran.
    pub ownership_lost: u64,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Messages handled per second.
    pub messages_per_sec: f64,
    /// Latency from an instance receiving a message to its handling, median, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile latency, ms.
    pub latency_p99_ms: f64,
    /// Worst latency, ms.
    pub latency_max_ms: f64,
}

impl SimReport {
    /// Whether nothing was handled twice, lost, or overwritten.
    pub fn is_clean(&self) -> bool {
        self.handled_twice == 0 && self.lost == 0 && self.lost_updates == 0
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let verdict = if self.is_clean() {
            "OK: every message handled exactly once or dropped by queue policy"
        } else {
            "FAILED: messages handled twice, lost, or thread state overwritten"
        };
        format!(
            "backend                {}\n\
             instances              {}\n\
             threads                {}\n\
             messages               {} ({} deliveries incl. duplicates and retries)\n\
             handled exactly once   {}\n\
             duplicates suppressed  {}\n\
             conflicts queued       {} (drained by the lock holder: {})\n\
             conflicts dropped      {} (queue full, max {QUEUE_MAX})\n\
             new mentions           {}\n\
             handled twice          {}\n\
             lost                   {}\n\
             lost state updates     {}\n\
             lock ownership lost    {}\n\
             throughput             {:.0} deliveries/s, {:.0} messages/s ({:.2} s)\n\
             latency                p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             {verdict}",
            self.backend,
            self.instances,
            self.threads,
            self.messages,
            self.deliveries,
            self.handled_once,
            self.duplicates_suppressed,
            self.conflicts_queued,
            self.drained,
            self.conflicts_dropped,
            self.new_mentions,
            self.handled_twice,
            self.lost,
            self.lost_updates,
            self.ownership_lost,
            self.deliveries_per_sec,
            self.messages_per_sec,
            self.seconds,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms,
        )
    }
}

/// One webhook delivery.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    message: u64,
    thread: usize,
}

/// Counters and records shared by the instances of one run.
#[derive(Default)]
struct Shared {
    handled: Mutex<HashMap<u64, u32>>,
    latencies_us: Mutex<Vec<u64>>,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    queued: AtomicU64,
    enqueues_at_full: AtomicU64,
    dequeued: AtomicU64,
    new_mentions: AtomicU64,
    ownership_lost: AtomicU64,
    handler_calls: AtomicU64,
}

struct Run {
    state: Arc<dyn StateAdapter>,
    shared: Shared,
    ns: String,
    started: Instant,
    handler: Duration,
}

impl Run {
    fn thread_id(&self, thread: usize) -> String {
        format!("{}:C{}:T{thread}", self.ns, thread % 4)
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// One bot instance: takes deliveries until the platform has no more, each through the
    /// library's dispatcher (dedupe and admit in one call, the handler under the lock, the
    /// queue handed over until the lock is released).
    async fn instance(
        self: Arc<Self>,
        deliveries: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
    ) -> Result<(), CliError> {
        let run = self.clone();
        let bot = Dispatcher::new(self.state.clone(), self.ns.clone(), move |turn, message| {
            let run = run.clone();
            async move { run.handle(turn, message).await }
        })
        .thread_state(|thread| format!("thread-state:{thread}"))
        .lock_ttl(LOCK_TTL)
        .dedupe_ttl(DEDUPE_TTL)
        .busy(BusyStrategy::Queue {
            max_size: QUEUE_MAX,
            entry_lifetime: QUEUE_LIFETIME,
        });
        loop {
            let next = deliveries.lock().await.recv().await;
            let Some(delivery) = next else {
                return Ok(());
            };
            self.on_delivery(&bot, delivery).await?;
        }
    }

    async fn on_delivery<H, Fut>(
        &self,
        bot: &Dispatcher<dyn StateAdapter, H>,
        delivery: Delivery,
    ) -> Result<(), CliError>
    where
        H: Fn(Turn<dyn StateAdapter>, serde_json::Value) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<(), CliError>> + Send,
    {
        let received_us = self.micros();
        self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
        let thread = self.thread_id(delivery.thread);
        let message = json!({ "id": delivery.message, "receivedUs": received_us });
        let id = delivery.message.to_string();
        match bot.dispatch(&thread, &id, message).await? {
            Dispatched::Duplicate => {
                self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Dispatched::Queued { depth } => {
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
                if depth >= QUEUE_MAX {
                    // This append may have pushed the oldest entry out (Chat SDK policy).
                    self.shared.enqueues_at_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            Dispatched::Handled {
                from_queue,
                failures,
                ownership_lost,
                ..
            } => {
                self.shared
                    .dequeued
                    .fetch_add(from_queue as u64, Ordering::Relaxed);
                if ownership_lost {
                    self.shared.ownership_lost.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(failure) = failures.into_iter().next() {
                    return Err(failure);
                }
            }
            Dispatched::Dropped => return Err("dropped although the strategy is queue".into()),
            other => return Err(format!("unexpected dispatch outcome {other:?}").into()),
        }
        Ok(())
    }

    /// The bot's handler, run under the thread's lock.
    async fn handle(
        &self,
        turn: Turn<dyn StateAdapter>,
        message: serde_json::Value,
    ) -> Result<(), CliError> {
        let thread = turn.thread_id();
        let id = message["id"]
            .as_u64()
            .ok_or_else(|| format!("queued message without an id: {message}"))?;
        let received_us = message["receivedUs"].as_u64().unwrap_or_default();
        // The subscription as read by the admit; a queued message after the first may find
        // the thread subscribed since, so only a "no" is checked again.
        if !turn.is_subscribed() && !self.state.is_subscribed(thread).await? {
            // A mention in a thread the bot does not follow yet: follow it from now on.
            self.state.subscribe(thread).await?;
            self.shared.new_mentions.fetch_add(1, Ordering::Relaxed);
        }
        // The thread state came with the admit (or from the previous turn of this holder).
        let turns = match turn.thread_state() {
            Some(bytes) => serde_json::from_slice::<serde_json::Value>(bytes)?["turns"]
                .as_u64()
                .unwrap_or(0),
            None => 0,
        };
        if !self.handler.is_zero() {
            tokio::time::sleep(self.handler).await;
        }
        // Stored fenced with the handoff: a handler paused past its lock cannot overwrite
        // its successor's state (a refused write shows up as a lost update in the audit).
        let state = serde_json::to_vec(&json!({ "turns": turns + 1, "last": id }))?;
        turn.set_thread_state(state, Some(THREAD_STATE_TTL))?;
        self.state
            .append_json(
                &format!("msg-history:{thread}"),
                &id,
                ListOptions::new().max_length(100).ttl(HISTORY_TTL),
            )
            .await?;
        self.shared.handler_calls.fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .handled
            .lock()
            .map_err(|_| "handled map poisoned")?
            .entry(id)
            .or_default() += 1;
        let latency = self.micros().saturating_sub(received_us);
        self.shared
            .latencies_us
            .lock()
            .map_err(|_| "latency list poisoned")?
            .push(latency);
        Ok(())
    }
}

/// Runs the simulation against `state` and returns its report. The keys it writes are
/// namespaced by a fresh run id, so runs sharing a file or server never interfere.
pub async fn simulate(
    state: Arc<dyn StateAdapter>,
    args: &SimulateArgs,
) -> Result<SimReport, CliError> {
    if args.instances == 0 || args.threads == 0 {
        return Err("--instances and --threads must be at least 1".into());
    }
    for (name, rate) in [
        ("--duplicates", args.duplicates),
        ("--retries", args.retries),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{name} must be between 0 and 1, got {rate}").into());
        }
    }
    let run = Arc::new(Run {
        state: state.clone(),
        shared: Shared::default(),
        ns: format!("sim-{}", super::run_id()),
        started: Instant::now(),
        handler: Duration::from_millis(args.handler_ms),
    });
    // Half the threads start subscribed (the bot already follows them).
    for thread in (0..args.threads).step_by(2) {
        state.subscribe(&run.thread_id(thread)).await?;
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let mut retries = Vec::new();
    for message in 0..args.messages as u64 {
        let delivery = Delivery {
            message,
            thread: rng.usize(..args.threads),
        };
        // A closed channel means every instance failed; their errors are reported below.
        let _ = tx.send(delivery);
        if rng.f64() < args.duplicates {
            let _ = tx.send(delivery);
        }
        if rng.f64() < args.retries {
            let (tx, delay) = (tx.clone(), Duration::from_millis(rng.u64(1..50)));
            retries.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(delivery);
            }));
        }
    }
    // The channel closes once the originals are taken and every retry has been sent.
    drop(tx);

    let mut instances = Vec::new();
    for _ in 0..args.instances {
        instances.push(tokio::spawn(run.clone().instance(rx.clone())));
    }
    let mut first_error = None;
    for instance in instances {
        let outcome = match instance.await {
            Ok(result) => result,
            Err(e) => Err(format!("an instance panicked: {e}").into()),
        };
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    for retry in retries {
        retry.abort();
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let seconds = run.started.elapsed().as_secs_f64();

    // Audit: what is left in the queues, and whether every thread's turn counter equals the
    // number of messages handled in it (a lock that let two handlers in loses increments).
    let mut left_in_queues = 0u64;
    let mut turns_total = 0u64;
    for thread in 0..args.threads {
        let id = run.thread_id(thread);
        left_in_queues += state.queue_depth(&id).await? as u64;
        turns_total += state
            .get_json::<serde_json::Value>(&format!("thread-state:{id}"))
            .await?
            .and_then(|v| v["turns"].as_u64())
            .unwrap_or(0);
    }
    let shared = &run.shared;
    let handled = shared.handled.lock().map_err(|_| "poisoned")?.clone();
    let mut latencies = shared.latencies_us.lock().map_err(|_| "poisoned")?.clone();
    latencies.sort_unstable();
    let queued = shared.queued.load(Ordering::Relaxed);
    let dequeued = shared.dequeued.load(Ordering::Relaxed);
    // Entries that left the queues without being dequeued were trimmed by max size; each
    // append at full depth can trim at most one, so more than that is a backend losing data.
    let vanished = queued.saturating_sub(dequeued + left_in_queues);
    let dropped = vanished.min(shared.enqueues_at_full.load(Ordering::Relaxed));
    let handled_unique = handled.len();
    let lost = args
        .messages
        .saturating_sub(handled_unique)
        .saturating_sub(dropped as usize);
    let handler_calls = shared.handler_calls.load(Ordering::Relaxed);
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(SimReport {
        backend: state.backend_name().to_string(),
        instances: args.instances,
        threads: args.threads,
        messages: args.messages,
        deliveries,
        handled_once: handled.values().filter(|&&n| n == 1).count(),
        duplicates_suppressed: shared.duplicates.load(Ordering::Relaxed),
        conflicts_queued: queued,
        conflicts_dropped: dropped,
        drained: dequeued,
        new_mentions: shared.new_mentions.load(Ordering::Relaxed),
        handled_twice: handled.values().filter(|&&n| n > 1).count(),
        lost,
        lost_updates: handler_calls.saturating_sub(turns_total),
        ownership_lost: shared.ownership_lost.load(Ordering::Relaxed),
        seconds,
        deliveries_per_sec: deliveries as f64 / seconds.max(1e-9),
        messages_per_sec: handled_unique as f64 / seconds.max(1e-9),
        latency_p50_ms: ms(percentile(&latencies, 0.50)),
        latency_p99_ms: ms(percentile(&latencies, 0.99)),
        latency_max_ms: ms(latencies.last().copied().unwrap_or(0)),
    })
}

pub(crate) async fn command(args: SimulateArgs, trace: bool) -> Result<bool, CliError> {
    let (url, _dir) = match &args.url {
        Some(url) => (url.clone(), None),
        None => super::default_url()?,
    };
    let state = super::open(&url, trace).await?;
    if !args.json {
        println!(
            "simulating {} instances x {} messages over {} threads on {url}",
            args.instances, args.messages, args.threads
        );
    }
    let report = simulate(state.clone(), &args).await;
    let _ = state.close().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.render());
    }
    Ok(report.is_clean())
}
