//! The dispatch bench every backend runs (`cargo bench -p <backend> --bench dispatch`): a
//! message handled by the [`Dispatcher`] next to the same work done with the primitive calls
//! the way the Chat SDK does it, at concurrency 1 and 64, in one run.
//!
//! One message, both ways (the handler reads the thread state and writes it back):
//! - **primitives** (upstream's flow): `set_if_not_exists` of the dedupe key,
//!   `is_subscribed`, then [`with_lock`] (acquire, heartbeat, release) around the handler's
//!   `get` + `set` and a `dequeue` that finds the queue empty: 7 calls;
//! - **dispatch**: [`Dispatcher::dispatch`] with the queue strategy and a thread-state key:
//!   `admit` reads the state in the same step ([`Turn::thread_state`]), and the handler's
//!   write ([`Turn::set_thread_state`]) is stored, fenced, with `release_or_next_with`: 2
//!   calls.
//!
//! Uncontended: each task works on its own threads. Rounds interleave the two sides and the
//! concurrencies (the order alternates per round); the table gives medians. Round trips per
//! message are counted in a separate, untimed pass through a counting [`Layer`] (a call is
//! one round trip on a remote backend: Redis, Postgres, a Durable Object).
//!
//! Environment: `CHAT_STATE_BENCH_ROUNDS` (default 5), `CHAT_STATE_BENCH_SCALE` (default 1.0,
//! multiplies the message counts), `CHAT_STATE_BENCH_CONC` (default `1,64`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[cfg(doc)]
use chat_state_core::Turn;
use chat_state_core::{
    BusyStrategy, Call, Dispatched, Dispatcher, Layer, Layered, LockRun, MaybeSend, Next, Result,
    StateAdapter, with_lock,
};

use crate::bench::{env_or, median};

const LOCK_TTL: Duration = Duration::from_secs(30);
const DEDUPE_TTL: Duration = Duration::from_secs(600);
const STATE_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Threads per task: enough that a thread's rows are not always hot in a cache.
const THREADS_PER_TASK: usize = 64;
const STATE: &[u8] = br#"{"turns":17,"last":"m-1700000000.000100","summary":"the user asked about the weekly report and the bot answered with the link to the dashboard","participants":["U1","U2","U3"],"mode":"default"}"#;

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct DispatchRow {
    /// Tasks sending messages at once.
    pub concurrency: usize,
    /// Median messages per second with the primitive calls.
    pub primitives_per_sec: f64,
    /// Median messages per second through the dispatcher.
    pub dispatch_per_sec: f64,
    /// Calls (round trips) per message with the primitives.
    pub primitives_calls: f64,
    /// Calls (round trips) per message through the dispatcher.
    pub dispatch_calls: f64,
}

impl DispatchRow {
    /// Dispatch messages/s over primitives messages/s.
    pub fn ratio(&self) -> f64 {
        self.dispatch_per_sec / self.primitives_per_sec
    }
}

#[derive(Debug, Default)]
struct CountCalls(AtomicU64);

#[async_trait::async_trait]
impl Layer for CountCalls {
    async fn call<T: MaybeSend>(&self, _call: Call<'_>, next: Next<'_, T>) -> Result<T> {
        self.0.fetch_add(1, Ordering::Relaxed);
        next.await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Primitives,
    Dispatch,
}

/// Runs the bench on `state` (a fresh, connected adapter whose keys nobody else uses) and
/// prints the table under `label`. Returns the rows.
pub async fn run(
    label: &str,
    state: Arc<dyn StateAdapter>,
    messages_at_1: usize,
) -> Vec<DispatchRow> {
    let rounds: usize = env_or("CHAT_STATE_BENCH_ROUNDS", 5);
    let scale: f64 = env_or("CHAT_STATE_BENCH_SCALE", 1.0);
    let concurrencies: Vec<usize> = std::env::var("CHAT_STATE_BENCH_CONC")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 64]);
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let counter = AtomicU64::new(0);
    let fresh = || {
        format!(
            "{run_id}-{}",
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    };

    // Untimed: calls per message on each side.
    let counted = Arc::new(Layered::new(CountCalls::default(), state.clone()));
    let mut calls = [0.0; 2];
    for (slot, side) in [(0, Side::Primitives), (1, Side::Dispatch)] {
        let before = counted.layer().0.load(Ordering::Relaxed);
        let n = 50;
        one_task(counted.clone(), side, &fresh(), n).await;
        calls[slot] = (counted.layer().0.load(Ordering::Relaxed) - before) as f64 / n as f64;
    }

    let mut samples: Vec<[Vec<f64>; 2]> = concurrencies.iter().map(|_| [vec![], vec![]]).collect();
    // Warm-up: connections, statements, scripts.
    for side in [Side::Primitives, Side::Dispatch] {
        timed(state.clone(), side, &fresh(), 1, 200).await;
    }
    for round in 0..rounds {
        for (ci, &c) in concurrencies.iter().enumerate() {
            let per_task = ((messages_at_1 as f64 * scale) as usize / c.max(1)).max(20)
                * if c > 1 { 4 } else { 1 };
            let order = if round % 2 == 0 {
                [Side::Primitives, Side::Dispatch]
            } else {
                [Side::Dispatch, Side::Primitives]
            };
            for side in order {
                let rate = timed(state.clone(), side, &fresh(), c, per_task).await;
                samples[ci][side as usize].push(rate);
            }
        }
    }
    let rows: Vec<DispatchRow> = concurrencies
        .iter()
        .zip(&samples)
        .map(|(&concurrency, [p, d])| DispatchRow {
            concurrency,
            primitives_per_sec: median(p),
            dispatch_per_sec: median(d),
            primitives_calls: calls[0],
            dispatch_calls: calls[1],
        })
        .collect();
    println!(
        "\n{label}: message handled through the dispatcher vs the primitive calls ({rounds} rounds, medians)"
    );
    println!(
        "| concurrency | primitives msg/s | dispatch msg/s | dispatch / primitives | round trips per message (primitives -> dispatch) |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | **{:.2}x** | {:.0} -> {:.0} |",
            r.concurrency,
            r.primitives_per_sec,
            r.dispatch_per_sec,
            r.ratio(),
            r.primitives_calls,
            r.dispatch_calls
        );
    }
    rows
}

/// Messages per second of `c` tasks handling `per_task` messages each.
async fn timed(
    state: Arc<dyn StateAdapter>,
    side: Side,
    run: &str,
    c: usize,
    per_task: usize,
) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..c)
        .map(|t| {
            let state = state.clone();
            let run = format!("{run}-t{t}");
            tokio::spawn(async move { one_task(state, side, &run, per_task).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("a bench task panicked");
    }
    (c * per_task) as f64 / start.elapsed().as_secs_f64()
}

/// One task's messages, on its own threads.
async fn one_task<A: StateAdapter + ?Sized + 'static>(
    state: Arc<A>,
    side: Side,
    run: &str,
    n: usize,
) {
    let bot = Dispatcher::new(state.clone(), "bench", |turn, _message| async move {
        // The state was read by the admit; the write goes out with the handoff.
        let _previous = turn.thread_state();
        turn.set_thread_state(STATE, Some(STATE_TTL))?;
        Ok(())
    })
    .thread_state(|thread| format!("thread-state:{thread}"))
    .lock_ttl(LOCK_TTL)
    .dedupe_ttl(DEDUPE_TTL)
    .busy(BusyStrategy::queue());
    for i in 0..n {
        let thread = format!("bench:{run}:T{}", i % THREADS_PER_TASK);
        let message_id = format!("{run}-m{i}");
        // Both sides receive the message as a bot does (the primitives side only holds it).
        let message = serde_json::json!({"id": message_id, "text": "hello"});
        match side {
            Side::Dispatch => match bot.dispatch(&thread, &message_id, message).await {
                Ok(Dispatched::Handled { failures, .. }) if failures.is_empty() => {}
                other => panic!("dispatch of an uncontended message: {other:?}"),
            },
            Side::Primitives => {
                primitives(&*state, &thread, &message_id)
                    .await
                    .expect("the primitive calls failed");
                drop(message);
            }
        }
    }
}

/// What the Chat SDK does per message with the primitive calls.
async fn primitives<A: StateAdapter + ?Sized>(
    state: &A,
    thread: &str,
    message_id: &str,
) -> Result<()> {
    let dedupe = format!("dedupe:bench:{message_id}");
    if !state
        .set_if_not_exists(&dedupe, b"true", Some(DEDUPE_TTL))
        .await?
    {
        return Ok(());
    }
    let _subscribed = state.is_subscribed(thread).await?;
    let key = format!("thread-state:{thread}");
    let run = with_lock(state, thread, LOCK_TTL, |_watch| async {
        state.get(&key).await?;
        state.set(&key, STATE, Some(STATE_TTL)).await?;
        while state.dequeue(thread).await?.is_some() {}
        Ok::<_, chat_state_core::Error>(())
    })
    .await?;
    match run {
        LockRun::Ran { value, .. } => value,
        LockRun::Busy => panic!("an uncontended thread was busy"),
    }
}
