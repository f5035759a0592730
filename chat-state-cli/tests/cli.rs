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
    // Backends with one fault each, where the dispatcher meets it: in the admit.

    use std::sync::Arc;
    use std::time::Duration;

    use chat_state::core::{AdmitOutcome, AdmitRequest, Backend, Checked, LockRequest};
    use chat_state::{ListOptions, Lock, MemoryBackend, QueueEntry, Result};

    use super::{sim_args, simulate};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Fault {
        /// The dedupe claim is forgotten before each admit: a message is new every time.
        DedupeAlwaysWins,
        /// The thread's lock is freed before each admit: two instances hold it at once.
        LockNeverExcludes,
        /// A queued entry is dropped right after it was queued.
        QueueForgets,
    }

    /// The memory backend with one fault, its dispatch native.
    struct Faulty {
        fault: Fault,
        inner: MemoryBackend,
    }

    impl Backend for Faulty {
        fn name(&self) -> &'static str {
            "faulty"
        }
        fn now_ms(&self) -> u64 {
            self.inner.now_ms()
        }
        async fn subscribe(&self, thread_id: &str) -> Result<()> {
            self.inner.subscribe(thread_id).await
        }
        async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
            self.inner.unsubscribe(thread_id).await
        }
        async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
            self.inner.is_subscribed(thread_id).await
        }
        async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
            self.inner.acquire_lock(request).await
        }
        async fn release_lock(&self, lock: &Lock) -> Result<()> {
            self.inner.release_lock(lock).await
        }
        async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
            self.inner.extend_lock(request).await
        }
        async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
            self.inner.force_release_lock(lock_id).await
        }
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            self.inner.get(key).await
        }
        async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
            self.inner.set(key, value, ttl).await
        }
        async fn set_if_not_exists(
            &self,
            key: &str,
            value: &[u8],
            ttl: Option<Duration>,
        ) -> Result<bool> {
            self.inner.set_if_not_exists(key, value, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key).await
        }
        async fn append_to_list(
            &self,
            key: &str,
            value: &[u8],
            options: ListOptions,
        ) -> Result<()> {
            self.inner.append_to_list(key, value, options).await
        }
        async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
            self.inner.get_list(key).await
        }
        async fn enqueue(
            &self,
            thread_id: &str,
            entry: QueueEntry,
            max_size: usize,
        ) -> Result<usize> {
            self.inner.enqueue(thread_id, entry, max_size).await
        }
        async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
            self.inner.dequeue(thread_id).await
        }
        async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
            self.inner.queue_depth(thread_id).await
        }

        const ATOMIC_DISPATCH: bool = true;

        async fn admit(&self, request: &AdmitRequest<'_>) -> Result<AdmitOutcome> {
            let thread = request.lock.lock_id;
            match self.fault {
                Fault::DedupeAlwaysWins => self.inner.delete(request.dedupe_key).await?,
                Fault::LockNeverExcludes => self.inner.force_release_lock(thread).await?,
                Fault::QueueForgets => {}
            }
            let outcome = self.inner.admit(request).await?;
            if self.fault == Fault::QueueForgets && matches!(outcome, AdmitOutcome::Queued { .. }) {
                self.inner.dequeue(thread).await?;
            }
            Ok(outcome)
        }
        async fn release_or_next(&self, request: &LockRequest<'_>) -> Result<chat_state::Handoff> {
            self.inner.release_or_next(request).await
        }
        async fn set_fenced(
            &self,
            lock: &Lock,
            key: &str,
            value: &[u8],
            ttl: Option<Duration>,
        ) -> Result<chat_state::FencedWrite> {
            self.inner.set_fenced(lock, key, value, ttl).await
        }
    }

    async fn run(fault: Fault) -> chat_state_cli::simulate::SimReport {
        let state = Arc::new(Checked::new(Faulty {
            fault,
            inner: MemoryBackend::new(),
        }));
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
