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
pub use runner::{
    CaseFn, CaseFuture, CaseReport, MANUAL_CLOCK_SKIPS, Outcome, Report, WALL_CLOCK_SKIPS,
    all_cases, run_all, run_case,
};
#[cfg(not(target_arch = "wasm32"))]
pub use runner::{Expect, run_case_blocking};

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
    /// #     Ok(chat_state_memory::MemoryState::default())
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
/// A case that cannot run on a harness (exact expiry boundaries need a manual clock, the
/// heartbeat needs the wall clock, reopen needs a durable backend) must be declared in
/// `skip = [...]`: it is then reported as *ignored* by the test runner, and run with
/// `cargo test -- --ignored` it must still skip. Any case that skips without being declared
/// fails, and so does a declared case that does not skip, so the list can neither hide a
/// regression nor go stale. [`MANUAL_CLOCK_SKIPS`] and [`WALL_CLOCK_SKIPS`] list what each
/// kind of clock skips.
///
/// ```
/// use std::sync::Arc;
/// use chat_state_conformance::{Harness, conformance_tests};
/// use chat_state_core::ManualClock;
/// use chat_state_memory::{MemoryBackend, MemoryState};
///
/// // Fresh, isolated state per case: a new store here; a unique key prefix or temp file for
/// // a backend with shared storage.
/// async fn on_manual_clock() -> Harness {
///     let clock = ManualClock::starting_now();
///     let state = MemoryState::new(MemoryBackend::with_clock(clock.clone()));
///     Harness::with_manual_clock(Arc::new(state), clock)
/// }
///
/// async fn on_wall_clock() -> Harness {
///     Harness::with_real_time(Arc::new(MemoryState::default()))
/// }
///
/// // The memory backend is not durable: reopen does not apply to it.
/// mod manual_clock {
///     chat_state_conformance::conformance_tests!(super::on_manual_clock, skip = [
///         lock_guard_heartbeat_keeps_lock,
///         lifecycle_reopen_keeps_data,
///     ]);
/// }
///
/// mod wall_clock {
///     chat_state_conformance::conformance_tests!(super::on_wall_clock, skip = [
///         lock_extend_sets_expiry_to_now_plus_ttl,
///         queue_entry_expires_at_boundary,
///         validation_sub_millisecond_ttl_rounds_up,
///         lifecycle_reopen_keeps_data,
///     ]);
/// }
/// ```
///
/// Failures name the case (the test's name) and say what was expected.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!($factory, skip = []);
    };
    ($factory:path, skip = [$($skip:ident),* $(,)?]) => {
        $crate::__declare_skips! { ($) [$($skip)*] }
        $crate::__case_list! { tests $factory }
    };
}

/// Defines, in the caller's module, the macro that emits one case's `#[test]`: ignored and
/// expected to skip for the declared cases, expected to run for every other one. (A macro
/// written by a macro is how `macro_rules` tells whether a case is in the list.)
#[doc(hidden)]
#[macro_export]
macro_rules! __declare_skips {
    (($d:tt) [$($skip:ident)*]) => {
        macro_rules! __chat_state_conformance_case {
            $(
                ([$d($d attr:meta)*] $d factory:path, $skip) => {
                    $d(#[$d attr])*
                    #[test]
                    #[ignore = "declared in conformance_tests!(.., skip = [..]): this harness cannot run it"]
                    fn $skip() {
                        $crate::run_case_blocking(
                            stringify!($skip),
                            || $d factory(),
                            |h| ::std::boxed::Box::pin($crate::cases::$skip(h)),
                            $crate::Expect::Skip,
                        );
                    }
                };
            )*
            ([$d($d attr:meta)*] $d factory:path, $d case:ident) => {
                $d(#[$d attr])*
                #[test]
                fn $d case() {
                    $crate::run_case_blocking(
                        stringify!($d case),
                        || $d factory(),
                        |h| ::std::boxed::Box::pin($crate::cases::$d case(h)),
                        $crate::Expect::Run,
                    );
                }
            };
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __emit_cases {
    // Native-only cases (they need threads or tokio) are listed after `native:`; they are
    // compiled out on wasm32 instead of being reported as passing there.
    ((tests $factory:path) [$($case:ident)*] native: [$($native:ident)*]) => {
        $( __chat_state_conformance_case! { [] $factory, $case } )*
        $( __chat_state_conformance_case! { [cfg(not(target_arch = "wasm32"))] $factory, $native } )*
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
