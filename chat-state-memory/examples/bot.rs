//! A fleet of bot instances sharing one memory backend, handling a stream of chat messages the
//! way the Chat SDK does: dedupe each delivery, take the thread's lock (with a heartbeat),
//! queue messages that arrive while the thread is busy, and drain the queue before releasing.
//! Prints how many messages were handled, deduplicated and queued, and fails if any message
//! was handled twice or lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_state_core::{Clock, LockRun, StateAdapter, StateExt, SystemClock, with_lock};
use chat_state_memory::MemoryState;

const INSTANCES: usize = 8;
const THREADS: usize = 20;
const MESSAGES: usize = 2_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let state: Arc<dyn StateAdapter> = Arc::new(MemoryState::default());
    let handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let (tx, rx) = async_channel();
    // Every message is delivered once, and one in five a second time (platform retries).
    for id in 0..MESSAGES as u64 {
        tx.lock().map_err(|_| "poisoned")?.push(id);
        if id % 5 == 0 {
            tx.lock().map_err(|_| "poisoned")?.push(id);
        }
    }
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..INSTANCES {
        let (state, handled, rx) = (state.clone(), handled.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut duplicates = 0u64;
            let mut queued = 0u64;
            loop {
                let next = rx.lock().map_err(|_| "poisoned")?.pop();
                let Some(id) = next else { break };
                let key = format!("dedupe:demo:{id}");
                if !state
                    .set_json_if_not_exists(&key, &true, Some(Duration::from_secs(600)))
                    .await?
                {
                    duplicates += 1;
                    continue;
                }
                let thread = format!("demo:C1:{}", id as usize % THREADS);
                let now = SystemClock.now_ms();
                // Queue first, then try to become the drainer: a message that arrives while
                // another instance holds the lock is drained by that instance.
                state
                    .enqueue_json(&thread, &id, now, Duration::from_secs(90), 1_000)
                    .await?;
                // Drain until the queue is empty *after* our release: a message enqueued
                // between our last empty dequeue and the release would otherwise be stranded.
                loop {
                    let run = with_lock(&*state, &thread, Duration::from_secs(30), |watch| {
                        let (state, handled, thread) =
                            (state.clone(), handled.clone(), thread.clone());
                        async move {
                            while !watch.is_lost() {
                                let Some((msg, _)) = state.dequeue_json::<u64>(&thread).await?
                                else {
                                    break;
                                };
                                *handled
                                    .lock()
                                    .map_err(|_| "poisoned")?
                                    .entry(msg)
                                    .or_default() += 1;
                            }
                            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                        }
                    })
                    .await?;
                    match run {
                        LockRun::Busy => {
                            queued += 1;
                            break;
                        }
                        LockRun::Ran { value, .. } => value?,
                    }
                    if state.queue_depth(&thread).await? == 0 {
                        break;
                    }
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((duplicates, queued))
        }));
    }
    let (mut duplicates, mut queued) = (0, 0);
    for task in tasks {
        let (d, q) = task.await??;
        duplicates += d;
        queued += q;
    }
    let handled = handled.lock().map_err(|_| "poisoned")?;
    let twice = handled.values().filter(|&&n| n > 1).count();
    let lost = MESSAGES - handled.len();
    let elapsed = started.elapsed();
    println!("instances            {INSTANCES}");
    println!(
        "messages             {MESSAGES} (+{} redeliveries)",
        MESSAGES.div_ceil(5)
    );
    println!(
        "handled exactly once {}",
        handled.values().filter(|&&n| n == 1).count()
    );
    println!("duplicates dropped   {duplicates}");
    println!("queued while busy    {queued}");
    println!("handled twice        {twice}");
    println!("lost                 {lost}");
    println!(
        "throughput           {:.0} deliveries/s",
        (MESSAGES + MESSAGES.div_ceil(5)) as f64 / elapsed.as_secs_f64()
    );
    if twice > 0 || lost > 0 {
        return Err("a message was handled twice or lost".into());
    }
    Ok(())
}

/// A shared work list standing in for the platform's webhook deliveries.
type Deliveries = Arc<Mutex<Vec<u64>>>;

fn async_channel() -> (Deliveries, Deliveries) {
    let list = Deliveries::default();
    (list.clone(), list)
}
