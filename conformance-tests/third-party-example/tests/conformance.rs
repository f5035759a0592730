//! The whole chat-state conformance suite against a `Counting` layer around the memory
//! backend: a factory and one macro.

use std::sync::Arc;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::{Layered, ManualClock};
use chat_state_memory::{MemoryBackend, MemoryState};
use third_party_example::{Counting, CountingState};

/// A fresh, isolated adapter per case. The wrapped store reads an injected clock, so the
/// suite moves time instead of sleeping (use `Harness::with_real_time` for a backend whose
/// clock cannot be injected).
///
/// Two cases cannot run on this harness and are declared as such: the memory store is not
/// durable (no reopen hook), and the lock heartbeat needs real time.
async fn factory() -> Harness {
    let clock = ManualClock::starting_now();
    let inner = Arc::new(MemoryState::new(MemoryBackend::with_clock(clock.clone())));
    let state: CountingState = Layered::new(Counting::default(), inner);
    Harness::with_manual_clock(Arc::new(state), clock)
}

conformance_tests!(
    factory,
    skip = [lock_guard_heartbeat_keeps_lock, lifecycle_reopen_keeps_data]
);

/// The runner for environments without libtest (a wasm Worker, a CLI): every case into one
/// serializable report. Here a few cases, with the counting layer checked along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_runner_runs_the_lock_cases() {
    let report = chat_state_conformance::run_all(
        || async { Ok(factory().await) },
        |name| name.starts_with("lock_fence_"),
        || 0,
    )
    .await;
    let fence_cases = chat_state_conformance::all_cases()
        .iter()
        .filter(|(name, _)| name.starts_with("lock_fence_"))
        .count();
    assert!(fence_cases >= 3, "the suite lost its fence cases");
    assert_eq!(report.cases.len(), fence_cases, "{report:#?}");
    assert_eq!(report.failed(), 0, "{report:#?}");
    assert_eq!(report.backend, "memory");
    let json = serde_json::to_string(&report).expect("a report serializes");
    assert!(json.contains("lock_fence_increases_across_release"));
}

#[tokio::test]
async fn counts_calls_per_operation() {
    use chat_state_core::{Cache, Locks, Operation};
    // Any adapter type works as the inner one, here the concrete `MemoryState`.
    let state = Layered::new(Counting::default(), MemoryState::default());
    state.set("k", b"v", None).await.unwrap();
    state.get("k").await.unwrap();
    state.get("").await.unwrap_err(); // rejected calls count too
    let ttl = std::time::Duration::from_secs(30);
    state.acquire_lock("t", ttl).await.unwrap();
    let counts = state.layer();
    assert_eq!(counts.calls(Operation::Set), 1);
    assert_eq!(counts.calls(Operation::Get), 2);
    assert_eq!(counts.calls(Operation::AcquireLock), 1);
    assert_eq!(counts.calls(Operation::Delete), 0);
}
