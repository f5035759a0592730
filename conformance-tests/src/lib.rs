#![doc = include_str!("../README.md")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Clock, ManualClock, MaybeSendSync, StateAdapter};

pub mod cases;
mod check;
mod runner;

pub use check::{CaseResult, Failure};
#[cfg(not(target_arch = "wasm32"))]
pub use runner::run_case_blocking;
pub use runner::{CaseFn, CaseFuture, CaseReport, Report, all_cases, run_all, run_case};

/// How a case lets backend time pass.
///
/// Backends with an injectable clock use [`ManualTime`], so TTL cases run instantly and can
/// never be flaky; others use [`RealTime`] (native) or their own implementation (wasm).
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait TimeControl: MaybeSendSync {
    /// Lets at least `by` of backend time pass.
    async fn advance(&self, by: Duration);
    /// The backend's current time in Unix milliseconds (used to build queue entries).
    fn now_ms(&self) -> u64;
    /// Whether time only moves through [`TimeControl::advance`]. Cases use this to pick
    /// margins: exact boundaries with a manual clock, generous ones with real time.
    fn is_manual(&self) -> bool;
}

/// Real time: `advance` sleeps (plus a margin for the backend's clock granularity).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTime;

#[cfg(not(target_arch = "wasm32"))]
#[async_trait::async_trait]
impl TimeControl for RealTime {
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
    fn now_ms(&self) -> u64 {
        chat_state_core::SystemClock.now_ms()
    }
    fn is_manual(&self) -> bool {
        false
    }
}

/// Manual time: `advance` moves a [`ManualClock`] that the backend under test reads.
#[derive(Debug, Clone)]
pub struct ManualTime(pub ManualClock);

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl TimeControl for ManualTime {
    async fn advance(&self, by: Duration) {
        self.0.advance(by);
    }
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
    fn is_manual(&self) -> bool {
        true
    }
}

/// The future a [`Reopen`] hook returns: a new adapter on the same durable storage.
#[cfg(not(target_arch = "wasm32"))]
pub type ReopenFuture =
    Pin<Box<dyn Future<Output = chat_state_core::Result<Arc<dyn StateAdapter>>> + Send>>;
/// The future a [`Reopen`] hook returns: a new adapter on the same durable storage.
#[cfg(target_arch = "wasm32")]
pub type ReopenFuture =
    Pin<Box<dyn Future<Output = chat_state_core::Result<Arc<dyn StateAdapter>>>>>;

/// Builds a new, connected adapter on the same durable storage as [`Harness::adapter`]
/// (same file, same Redis prefix, same Durable Object), as a restarted process would.
#[cfg(not(target_arch = "wasm32"))]
pub type Reopen = Arc<dyn Fn() -> ReopenFuture + Send + Sync>;
/// Builds a new, connected adapter on the same durable storage as [`Harness::adapter`]
/// (same file, same Redis prefix, same Durable Object), as a restarted process would.
#[cfg(target_arch = "wasm32")]
pub type Reopen = Arc<dyn Fn() -> ReopenFuture>;

/// What a factory hands each case: a fresh adapter with state no other case can see, and the
/// way to let its time pass.
#[derive(Clone)]
pub struct Harness {
    /// The adapter under test, already connected.
    pub adapter: Arc<dyn StateAdapter>,
    /// How to let time pass for this adapter.
    pub time: Arc<dyn TimeControl>,
    /// For durable backends: how to open the same storage again after `adapter` was closed.
    /// `None` (the default) makes `lifecycle_reopen_keeps_data` report itself skipped.
    pub reopen: Option<Reopen>,
    /// Dropped with the harness, after the adapter: whatever the storage needs to outlive the
    /// case (a temporary directory, a server process guard). See [`Harness::keep_alive`].
    guards: Vec<Guard>,
}

/// Something a [`Harness`] owns only so that it lives as long as the case.
#[cfg(not(target_arch = "wasm32"))]
type Guard = Arc<dyn std::any::Any + Send + Sync>;
/// Something a [`Harness`] owns only so that it lives as long as the case.
#[cfg(target_arch = "wasm32")]
type Guard = Arc<dyn std::any::Any>;

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("backend", &self.adapter.backend_name())
            .field("manual_time", &self.time.is_manual())
            .field("reopen", &self.reopen.is_some())
            .finish()
    }
}

impl Harness {
    /// A harness with an explicit time control.
    pub fn new(adapter: Arc<dyn StateAdapter>, time: Arc<dyn TimeControl>) -> Self {
        Self {
            adapter,
            time,
            reopen: None,
            guards: Vec::new(),
        }
    }

    /// Keeps `guard` alive until the harness (and every clone of it) is dropped, after the
    /// case has run and closed the adapter: for a temporary directory holding the database
    /// file, a server process that stops on drop, and the like. Saves wrapping the adapter
    /// in a type whose only job is to own them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn keep_alive(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guards.push(Arc::new(guard));
        self
    }

    /// Keeps `guard` alive until the harness (and every clone of it) is dropped.
    #[cfg(target_arch = "wasm32")]
    pub fn keep_alive(mut self, guard: impl std::any::Any) -> Self {
        self.guards.push(Arc::new(guard));
        self
    }

    /// Adds the reopen hook of a durable backend: `reopen()` must return a new, connected
    /// adapter on the same storage as `adapter`. The suite calls it after closing `adapter`
    /// and checks that subscriptions, held locks, fences, cache, lists and queues survived.
    ///
    /// ```
    /// # use std::{path::Path, sync::Arc};
    /// # use chat_state_conformance::Harness;
    /// # use chat_state_core::StateAdapter;
    /// # // Stands in for a durable backend's constructor.
    /// # async fn open(_: &Path) -> chat_state_core::Result<chat_state_memory::MemoryState> {
    /// #     Ok(chat_state_memory::MemoryState::new())
    /// # }
    /// # async fn factory(temp_dir: &Path) -> chat_state_core::Result<Harness> {
    /// let path = temp_dir.join("state.db");
    /// let harness = Harness::with_real_time(Arc::new(open(&path).await?))
    ///     .with_reopen(move || {
    ///         let path = path.clone();
    ///         async move { Ok(Arc::new(open(&path).await?) as Arc<dyn StateAdapter>) }
    ///     });
    /// # Ok(harness) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_reopen<F, Fut>(mut self, reopen: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = chat_state_core::Result<Arc<dyn StateAdapter>>> + Send + 'static,
    {
        self.reopen = Some(Arc::new(move || Box::pin(reopen()) as ReopenFuture));
        self
    }

    /// Adds the reopen hook of a durable backend: `reopen()` must return a new, connected
    /// adapter on the same storage as `adapter`. The suite calls it after closing `adapter`
    /// and checks that subscriptions, held locks, fences, cache, lists and queues survived.
    #[cfg(target_arch = "wasm32")]
    pub fn with_reopen<F, Fut>(mut self, reopen: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = chat_state_core::Result<Arc<dyn StateAdapter>>> + 'static,
    {
        self.reopen = Some(Arc::new(move || Box::pin(reopen()) as ReopenFuture));
        self
    }

    /// A harness for a backend whose clock is `clock` (advanced instead of sleeping).
    pub fn with_manual_clock(adapter: Arc<dyn StateAdapter>, clock: ManualClock) -> Self {
        Self::new(adapter, Arc::new(ManualTime(clock)))
    }

    /// A harness for a backend on the wall clock (TTL cases sleep).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_real_time(adapter: Arc<dyn StateAdapter>) -> Self {
        Self::new(adapter, Arc::new(RealTime))
    }
}

/// Runs `n` copies of a task concurrently and collects their outputs in order.
///
/// On native targets each task is a tokio task on the multi-threaded runtime the runner
/// provides, released together through a start gate, so contenders really run in parallel;
/// on wasm they interleave on one thread.
#[cfg(not(target_arch = "wasm32"))]
pub async fn concurrently<T, F, Fut>(n: usize, task: F) -> Result<Vec<T>, Failure>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    // A start gate: every task is spawned and waiting before any of them proceeds, so the
    // contenders really overlap instead of the first finishing before the last is spawned.
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let gate = gate.clone();
            let fut = task(i);
            tokio::spawn(async move {
                gate.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        out.push(
            handle
                .await
                .map_err(|e| Failure::new(format!("task panicked: {e}")))?,
        );
    }
    Ok(out)
}

/// Runs `n` copies of a task concurrently and collects their outputs in order.
#[cfg(target_arch = "wasm32")]
pub async fn concurrently<T, F, Fut>(n: usize, task: F) -> Result<Vec<T>, Failure>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    Ok(futures::future::join_all((0..n).map(task)).await)
}

/// Emits one `#[test]` per conformance case, each calling `$factory().await` for a fresh
/// [`Harness`]. The factory is a path to an `async fn() -> Harness`.
///
/// ```
/// use std::sync::Arc;
/// # use chat_state_memory::MemoryState as MyBackend;
///
/// async fn factory() -> chat_state_conformance::Harness {
///     // A fresh, isolated adapter per case: unique key prefix, temp file, ...
///     chat_state_conformance::Harness::with_real_time(Arc::new(MyBackend::new()))
/// }
/// chat_state_conformance::conformance_tests!(factory);
/// # // `#[test]` functions are compiled out of doctests; this checks the factory's type.
/// # fn main() { let _ = chat_state_conformance::run_all(|| async { Ok(factory().await) }, |_| false, || 0); }
/// ```
///
/// Failures name the case (the test's name) and say what was expected.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::__case_list! { tests $factory }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __emit_cases {
    // Native-only cases (they need threads or tokio) are listed after `native:`; they are
    // compiled out on wasm32 instead of being reported as passing there.
    ((tests $factory:path) [$($case:ident)*] native: [$($native:ident)*]) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case_blocking(stringify!($case), || $factory(), |h| {
                    ::std::boxed::Box::pin($crate::cases::$case(h))
                });
            }
        )*
        $(
            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn $native() {
                $crate::run_case_blocking(stringify!($native), || $factory(), |h| {
                    ::std::boxed::Box::pin($crate::cases::$native(h))
                });
            }
        )*
    };
    ((registry) [$($case:ident)*] native: [$($native:ident)*]) => {{
        #[cfg(not(target_arch = "wasm32"))]
        const CASES: &[(&str, $crate::CaseFn)] = &[$(
            $crate::__emit_cases!(@entry $case),
        )* $(
            $crate::__emit_cases!(@entry $native),
        )*];
        #[cfg(target_arch = "wasm32")]
        const CASES: &[(&str, $crate::CaseFn)] = &[$(
            $crate::__emit_cases!(@entry $case),
        )*];
        CASES
    }};
    (@entry $case:ident) => {
        (stringify!($case), {
            fn wrap(h: &$crate::Harness) -> $crate::CaseFuture<'_> {
                ::std::boxed::Box::pin($crate::cases::$case(h))
            }
            wrap as $crate::CaseFn
        })
    };
}
