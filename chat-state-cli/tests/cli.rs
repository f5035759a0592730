//! The CLI's commands as library calls, against real backends: the simulation must report
//! zero double-handled and zero lost messages at 16 instances on every backend.

use chat_state_cli::simulate::{SimulateArgs, simulate};

mod common;
use chat_state::connect;
use common::{assert_clean, sim_args};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulate_memory_16_instances() {
    let state = connect("memory://").await.expect("memory connects");
    let report = simulate(state, &sim_args()).await.expect("simulation runs");
    assert_eq!(report.backend, "memory");
    assert_clean(&report);
    assert!(
        report.conflicts_queued > 0,
        "16 instances on 24 threads conflict"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulate_reports_redeliveries_only_when_there_are_some() {
    let state = connect("memory://").await.expect("memory connects");
    let args = SimulateArgs {
        duplicates: 0.0,
        retries: 0.0,
        messages: 200,
        ..sim_args()
    };
    let report = simulate(state, &args).await.expect("simulation runs");
    assert_eq!(report.deliveries, 200);
    assert_eq!(report.duplicates_suppressed, 0);
    assert_eq!(report.handled_once, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulate_rejects_bad_arguments() {
    let state = connect("memory://").await.expect("memory connects");
    let bad = SimulateArgs {
        duplicates: 1.5,
        ..sim_args()
    };
    let err = simulate(state, &bad).await.err().map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("--duplicates"));
}

/// The simulation's checks have teeth: adapters with a deliberately broken guarantee make it
/// report exactly the failure the guarantee prevents.
mod broken_backends {
    use std::sync::Arc;

    use chat_state::{
        Cache, Call, Layer, Layered, Locks, MaybeSend, MemoryState, Next, Operation, Queues,
        Result, StateAdapter,
    };

    use super::{sim_args, simulate};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Fault {
        /// `set_if_not_exists` always wins (non-atomic dedupe): the key is deleted first.
        DedupeAlwaysWins,
        /// `acquire_lock` takes the lock from whoever holds it (a lock that does not
        /// exclude): the lock is force-released first.
        LockNeverExcludes,
        /// `enqueue` loses an entry: one is dequeued and dropped right after.
        QueueForgets,
    }

    /// A layer that breaks one guarantee of the store it wraps. A layer cannot forge a
    /// call's result, so it breaks the guarantee the way a buggy backend would: by a
    /// side effect on the same store (`store`, the adapter it wraps) around the real call.
    struct Faulty {
        fault: Fault,
        store: Arc<dyn StateAdapter>,
    }

    #[chat_state::core::async_trait]
    impl Layer for Faulty {
        async fn call<T: MaybeSend>(&self, call: Call<'_>, next: Next<'_, T>) -> Result<T> {
            match (self.fault, call.operation) {
                (Fault::DedupeAlwaysWins, Operation::SetIfNotExists) => {
                    self.store.delete(call.id).await?;
                    next.await
                }
                (Fault::LockNeverExcludes, Operation::AcquireLock) => {
                    self.store.force_release_lock(call.id).await?;
                    next.await
                }
                (Fault::QueueForgets, Operation::Enqueue) => {
                    let depth = next.await?;
                    self.store.dequeue(call.id).await?;
                    Ok(depth)
                }
                _ => next.await,
            }
        }
    }

    async fn run(fault: Fault) -> chat_state_cli::simulate::SimReport {
        let store: Arc<dyn StateAdapter> = Arc::new(MemoryState::default());
        let state = Arc::new(Layered::new(
            Faulty {
                fault,
                store: store.clone(),
            },
            store,
        ));
        simulate(state, &sim_args()).await.expect("simulation runs")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn non_atomic_dedupe_shows_as_handled_twice() {
        let report = run(Fault::DedupeAlwaysWins).await;
        assert!(report.handled_twice > 0, "{}", report.render());
        assert!(!report.is_clean());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_lock_that_does_not_exclude_shows_as_lost_updates() {
        let report = run(Fault::LockNeverExcludes).await;
        assert!(report.lost_updates > 0, "{}", report.render());
        assert!(!report.is_clean());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_queue_that_forgets_shows_as_lost_messages() {
        let report = run(Fault::QueueForgets).await;
        assert!(report.lost > 0, "{}", report.render());
        assert!(!report.is_clean());
    }
}
