//! The routes only the tests use: the conformance suite and the memory backend in workerd.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use chat_state_conformance::{Failure, Harness, ManualTime, TimeControl, run_all};
use chat_state_core::{
    Cache as _, Clock, Error, Locks as _, ManualClock, SharedClock, StateAdapter,
};
use chat_state_memory::{MemoryBackend, MemoryState};
use serde::Deserialize;
use serde_json::{Value, json};
use worker::{Date, Delay, Env, Response, Result};

use super::{Config, adapter, err_json, text};

/// Real time inside the Worker: `advance` waits on a timer, `now_ms` is `Date.now()`.
struct WorkerTime;

#[chat_state_core::async_trait(?Send)]
impl TimeControl for WorkerTime {
    async fn advance(&self, by: Duration) {
        // A few ms on top: the object reads its own Date.now(), which only moves at I/O
        // boundaries, and expiry is strict (`now < expires_at`).
        Delay::from(by + Duration::from_millis(3)).await;
    }
    fn now_ms(&self) -> u64 {
        Date::now().as_millis()
    }
    fn is_manual(&self) -> bool {
        false
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ConformanceRun {
    prefix: String,
    #[serde(default)]
    shards: u32,
    #[serde(default)]
    filter: Option<Vec<String>>,
    /// Drive the adapter and the objects with one manual clock per case (the test clock
    /// argument), so the exact-boundary cases run instead of skipping.
    #[serde(default)]
    manual_clock: bool,
}

/// How far ahead of the wall clock a manual clock starts: every expiry it produces (and so
/// every alarm the objects arm) lies a day in the future, so no alarm cleanup, which runs on
/// the object's own `Date.now()`, fires during the run and deletes rows that are live in
/// manual time.
const MANUAL_CLOCK_LEAD_MS: u64 = 86_400_000;

pub(super) fn cases() -> Result<Response> {
    let names: Vec<&str> = chat_state_conformance::all_cases()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    Response::from_json(&names)
}

pub(super) async fn run(env: &Env, run: ConformanceRun) -> Result<Response> {
    let counter = Cell::new(0u32);
    let started = Date::now().as_millis();
    let report = run_all(
        || {
            counter.set(counter.get() + 1);
            let manual = run
                .manual_clock
                .then(|| ManualClock::new(Date::now().as_millis() + MANUAL_CLOCK_LEAD_MS));
            // A fresh object (and fresh shards) per case: isolation without cleanup.
            let config = Config {
                object: format!("{}-case{}", run.prefix, counter.get()),
                shards: run.shards,
                route_thread_keys: run.shards > 0,
                clock: manual.clone().map(|c| Arc::new(c) as SharedClock),
                ..Config::default()
            };
            let time: Arc<dyn TimeControl> = match manual {
                Some(clock) => Arc::new(ManualTime(clock)),
                None => Arc::new(WorkerTime),
            };
            let built = adapter(env, &config);
            let env = env.clone();
            async move {
                let a = built.map_err(|e| Failure::new(format!("adapter: {e}")))?;
                a.connect()
                    .await
                    .map_err(|e| Failure::new(format!("connect: {e}")))?;
                let a: Arc<dyn StateAdapter> = Arc::new(a);
                // Reopen = a new adapter on the same objects; the data lives in them.
                let reopen = move || {
                    let built = adapter(&env, &config);
                    async move {
                        let a = built?;
                        a.connect().await?;
                        Ok(Arc::new(a) as Arc<dyn StateAdapter>)
                    }
                };
                Ok(Harness::new(a, time).with_reopen(reopen))
            }
        },
        |name| {
            run.filter
                .as_ref()
                .is_none_or(|f| f.iter().any(|n| n == name))
        },
        || Date::now().as_millis().saturating_sub(started),
    )
    .await;
    Response::from_json(&report)
}

#[derive(Debug, Deserialize)]
pub(super) struct MemoryExpiry {
    ttl_ms: u64,
    /// Run on [`ZeroClock`] instead of the system clock (the test's proof that its checks
    /// catch a clock stuck at 0).
    #[serde(default)]
    zero_clock: bool,
}

/// What `SystemClock` returned on wasm32 before it read `Date.now()`.
#[derive(Debug)]
struct ZeroClock;

impl Clock for ZeroClock {
    fn now_ms(&self) -> u64 {
        0
    }
}

/// The memory backend on the system clock (or, with `zero_clock`, on a clock stuck at 0),
/// inside workerd: stores a key and takes a lock with `ttl_ms`, checks both are live, waits
/// real time past the TTL, and checks that the key expired and the lock can be taken again.
/// Answers what it saw, with the Worker's `Date.now()` at each step, for `tests/workerd.rs`
/// to judge.
///
/// On wasm32 `SystemClock` reads `Date.now()`; if it read 0 (as it once did), the lock's
/// `expiresAt` would be `ttl_ms` (1970) and time would never pass for the backend, so the
/// key would stay live and the lock held: every check of the test fails.
pub(super) async fn memory_expiry(run: MemoryExpiry) -> Result<Response> {
    match memory_expiry_steps(run).await {
        Ok(v) => Response::from_json(&v),
        Err(e) => Ok(Response::from_json(&err_json(&e))?.with_status(500)),
    }
}

async fn memory_expiry_steps(run: MemoryExpiry) -> std::result::Result<Value, Error> {
    let state = if run.zero_clock {
        MemoryState::new(MemoryBackend::with_clock(ZeroClock))
    } else {
        MemoryState::default()
    };
    let ttl = Duration::from_millis(run.ttl_ms);
    // Date.now() (nearly) stands still while the isolate computes: this is, within a
    // millisecond or so, the time of every call below until the wait.
    let started_ms = Date::now().as_millis();
    state.set("k", b"v", Some(ttl)).await?;
    let first = state.acquire_lock("l", ttl).await?;
    let live_before = state.get("k").await?.is_some();
    let held_before = state.acquire_lock("l", ttl).await?.is_none();
    // A timer is I/O, after which Date.now() has moved on by (at least) the wait.
    Delay::from(ttl + Duration::from_millis(20)).await;
    let waited_ms = Date::now().as_millis();
    let value_after = state.get("k").await?.map(|v| text(&v));
    let second = state.acquire_lock("l", ttl).await?;
    Ok(json!({
        "started_ms": started_ms,
        "first_lock": first,
        "live_before": live_before,
        "held_before": held_before,
        "waited_ms": waited_ms,
        "value_after": value_after,
        "second_lock": second,
    }))
}
