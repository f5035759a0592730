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

/// The outcome of one case in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseReport {
    /// The case's name (the same as its `#[test]` name).
    pub name: String,
    /// `"passed"`, `"failed"` or `"skipped"`.
    pub outcome: String,
    /// Why it failed or was skipped; empty when it passed.
    pub message: String,
    /// How long it took, in milliseconds (0 where no clock is available).
    pub millis: u64,
}

/// The outcome of a whole run, for runners without libtest (a wasm Worker, the CLI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The backend that was tested.
    pub backend: String,
    /// One entry per case, in suite order.
    pub cases: Vec<CaseReport>,
}

impl Report {
    /// Number of cases that passed.
    pub fn passed(&self) -> usize {
        self.count("passed")
    }
    /// Number of cases that failed.
    pub fn failed(&self) -> usize {
        self.count("failed")
    }
    /// Number of cases that did not apply.
    pub fn skipped(&self) -> usize {
        self.count("skipped")
    }
    fn count(&self, outcome: &str) -> usize {
        self.cases.iter().filter(|c| c.outcome == outcome).count()
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
            Ok(()) => ("passed", String::new()),
            Err(f) if f.skipped => ("skipped", f.message),
            Err(f) => ("failed", f.message),
        };
        report.cases.push(CaseReport {
            name: (*name).to_string(),
            outcome: outcome.to_string(),
            message,
            millis: elapsed_ms().saturating_sub(started),
        });
    }
    report
}

/// How long one case may run before it counts as hung.
#[cfg(not(target_arch = "wasm32"))]
const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs one case on a fresh multi-threaded runtime and panics with the case's name and the
/// failure if it fails. Used by [`conformance_tests!`](crate::conformance_tests).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_case_blocking<Fut>(name: &str, factory: impl FnOnce() -> Fut, case: CaseFn)
where
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
    match result {
        Ok(()) => {}
        Err(f) if f.skipped => eprintln!("{name}: skipped: {}", f.message),
        Err(f) => panic!("conformance case `{name}` failed: {}", f.message),
    }
}
