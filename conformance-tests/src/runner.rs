//! Running cases: one at a time under libtest, or all of them into a [`Report`].

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::{CaseResult, Failure, Harness};

/// The future a case returns.
#[cfg(not(target_arch = "wasm32"))]
pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;
/// The future a case returns.
#[cfg(target_arch = "wasm32")]
pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = CaseResult> + 'a>>;

/// A case, as stored in the registry.
pub type CaseFn = for<'a> fn(&'a Harness) -> CaseFuture<'a>;

/// Every case, by name, in suite order.
pub fn all_cases() -> &'static [(&'static str, CaseFn)] {
    crate::__case_list! { registry }
}

/// Cases that skip on a harness with a manual clock: they need real time to pass (the
/// heartbeat of `with_lock` runs on tokio's timer, which a manual backend clock does not
/// follow).
pub const MANUAL_CLOCK_SKIPS: &[&str] = &["lock_guard_heartbeat_keeps_lock"];

/// Cases that skip on a harness on the wall clock: they check exact expiry boundaries,
/// which only a manual clock can hit.
pub const WALL_CLOCK_SKIPS: &[&str] = &[
    "lock_extend_sets_expiry_to_now_plus_ttl",
    "queue_entry_expires_at_boundary",
    "validation_sub_millisecond_ttl_rounds_up",
];

/// How one case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// A check failed (the message says which).
    Failed,
    /// The case does not apply to this harness (the message says why).
    Skipped,
}

impl Outcome {
    /// `"passed"`, `"failed"` or `"skipped"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one case in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CaseReport {
    /// The case's name (the same as its `#[test]` name).
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed or was skipped; empty when it passed.
    pub message: String,
    /// How long it took, in milliseconds (0 where no clock is available).
    pub millis: u64,
}

/// The outcome of a whole run, for runners without libtest (a wasm Worker, the CLI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// The backend that was tested.
    pub backend: String,
    /// One entry per case, in suite order.
    pub cases: Vec<CaseReport>,
}

impl Report {
    /// Number of cases that passed.
    pub fn passed(&self) -> usize {
        self.count(Outcome::Passed)
    }
    /// Number of cases that failed.
    pub fn failed(&self) -> usize {
        self.count(Outcome::Failed)
    }
    /// Number of cases that did not apply.
    pub fn skipped(&self) -> usize {
        self.count(Outcome::Skipped)
    }
    /// The cases that ended with `outcome`, in suite order.
    pub fn with_outcome(&self, outcome: Outcome) -> impl Iterator<Item = &CaseReport> {
        self.cases.iter().filter(move |c| c.outcome == outcome)
    }
    fn count(&self, outcome: Outcome) -> usize {
        self.with_outcome(outcome).count()
    }
}

/// Runs one case against a fresh harness and classifies the result.
pub async fn run_case(case: CaseFn, harness: &Harness) -> CaseResult {
    case(harness).await
}

/// Runs every case whose name passes `filter`, each against a fresh harness from `factory`,
/// one after another, and reports them all. `elapsed_ms` reads a monotonic-enough clock for
/// the timings (pass `|| 0` if there is none).
pub async fn run_all<F, Fut>(
    mut factory: F,
    filter: impl Fn(&str) -> bool,
    elapsed_ms: impl Fn() -> u64,
) -> Report
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Harness, Failure>>,
{
    let mut report = Report::default();
    for (name, case) in all_cases() {
        if !filter(name) {
            continue;
        }
        let started = elapsed_ms();
        let result = match factory().await {
            Ok(harness) => {
                if report.backend.is_empty() {
                    report.backend = harness.adapter.backend_name().to_string();
                }
                let result = case(&harness).await;
                // Best effort: a case may already have closed it.
                let _ = harness.adapter.close().await;
                result
            }
            Err(e) => Err(Failure::new(format!("factory failed: {e}"))),
        };
        let (outcome, message) = match result {
            Ok(()) => (Outcome::Passed, String::new()),
            Err(f) if f.skipped => (Outcome::Skipped, f.message),
            Err(f) => (Outcome::Failed, f.message),
        };
        report.cases.push(CaseReport {
            name: (*name).to_string(),
            outcome,
            message,
            millis: elapsed_ms().saturating_sub(started),
        });
    }
    report
}

/// How long one case may run before it counts as hung.
#[cfg(not(target_arch = "wasm32"))]
const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What a test declared about a case (see [`conformance_tests!`](crate::conformance_tests)).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The case must run and pass; a skip fails the test.
    Run,
    /// The case was declared as one this harness cannot run: it must skip.
    Skip,
}

/// Runs one case on a fresh multi-threaded runtime and panics with the case's name and the
/// failure if it fails, or if it skips when `expect` says it must run (or runs when it was
/// declared a skip). Used by [`conformance_tests!`](crate::conformance_tests).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_case_blocking<Fut>(
    name: &str,
    factory: impl FnOnce() -> Fut,
    case: CaseFn,
    expect: Expect,
) where
    Fut: Future<Output = Harness>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{name}: cannot build a tokio runtime: {e}"));
    let result = runtime.block_on(async {
        let harness = factory().await;
        let result = tokio::time::timeout(CASE_TIMEOUT, case(&harness))
            .await
            .unwrap_or_else(|_| Err(Failure::new(format!("timed out after {CASE_TIMEOUT:?}"))));
        let _ = harness.adapter.close().await;
        result
    });
    match (result, expect) {
        (Ok(()), Expect::Run) => {}
        (Err(f), Expect::Skip) if f.skipped => eprintln!("{name}: skipped: {}", f.message),
        (Ok(()), Expect::Skip) => panic!(
            "conformance case `{name}` is declared in `skip = [..]` but ran and passed on this \
             harness: remove it from the list"
        ),
        (Err(f), Expect::Run) if f.skipped => panic!(
            "conformance case `{name}` skipped ({}) but the test did not declare it: add it to \
             `conformance_tests!(.., skip = [..])` if this harness really cannot run it",
            f.message
        ),
        (Err(f), _) => panic!("conformance case `{name}` failed: {}", f.message),
    }
}
