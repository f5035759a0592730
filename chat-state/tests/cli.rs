//! The CLI's commands as library calls, against real backends: the simulation must report
//! zero double-handled and zero lost messages at 16 instances on every backend.

use chat_state::cli::simulate::{SimulateArgs, simulate};

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
    use std::time::Duration;

    use chat_state::{
        Cache, ListOptions, Lists, Lock, Locks, MemoryState, QueueEntry, Queues, Result,
        StateAdapter, Subscriptions, new_lock_token,
    };

    use super::{sim_args, simulate};

    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        /// `set_if_not_exists` always reports a win (non-atomic dedupe).
        DedupeAlwaysWins,
        /// Every `acquire_lock` succeeds (a lock that does not exclude).
        LockNeverExcludes,
        /// `enqueue` accepts entries and forgets them.
        QueueForgets,
    }

    struct Faulty {
        inner: MemoryState,
        fault: Fault,
    }

    #[async_trait::async_trait]
    impl Subscriptions for Faulty {
        async fn subscribe(&self, t: &str) -> Result<()> {
            self.inner.subscribe(t).await
        }
        async fn unsubscribe(&self, t: &str) -> Result<()> {
            self.inner.unsubscribe(t).await
        }
        async fn is_subscribed(&self, t: &str) -> Result<bool> {
            self.inner.is_subscribed(t).await
        }
    }

    #[async_trait::async_trait]
    impl Locks for Faulty {
        async fn acquire_lock(&self, id: &str, ttl: Duration) -> Result<Option<Lock>> {
            if self.fault == Fault::LockNeverExcludes {
                return Ok(Some(Lock {
                    thread_id: id.to_string(),
                    token: new_lock_token()?,
                    expires_at: u64::MAX,
                    fence: 1,
                }));
            }
            self.inner.acquire_lock(id, ttl).await
        }
        async fn release_lock(&self, lock: &Lock) -> Result<()> {
            self.inner.release_lock(lock).await
        }
        async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
            if self.fault == Fault::LockNeverExcludes {
                return Ok(true);
            }
            self.inner.extend_lock(lock, ttl).await
        }
        async fn force_release_lock(&self, id: &str) -> Result<()> {
            self.inner.force_release_lock(id).await
        }
    }

    #[async_trait::async_trait]
    impl Cache for Faulty {
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
            if self.fault == Fault::DedupeAlwaysWins {
                self.inner.set(key, value, ttl).await?;
                return Ok(true);
            }
            self.inner.set_if_not_exists(key, value, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key).await
        }
    }

    #[async_trait::async_trait]
    impl Lists for Faulty {
        async fn append_to_list(&self, key: &str, value: &[u8], o: ListOptions) -> Result<()> {
            self.inner.append_to_list(key, value, o).await
        }
        async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
            self.inner.get_list(key).await
        }
    }

    #[async_trait::async_trait]
    impl Queues for Faulty {
        async fn enqueue(&self, t: &str, entry: QueueEntry, max: usize) -> Result<usize> {
            if self.fault == Fault::QueueForgets {
                return Ok(1);
            }
            self.inner.enqueue(t, entry, max).await
        }
        async fn dequeue(&self, t: &str) -> Result<Option<QueueEntry>> {
            self.inner.dequeue(t).await
        }
        async fn queue_depth(&self, t: &str) -> Result<usize> {
            self.inner.queue_depth(t).await
        }
    }

    #[async_trait::async_trait]
    impl StateAdapter for Faulty {
        fn backend_name(&self) -> &'static str {
            "faulty"
        }
        async fn connect(&self) -> Result<()> {
            self.inner.connect().await
        }
        async fn close(&self) -> Result<()> {
            self.inner.close().await
        }
    }

    async fn run(fault: Fault) -> chat_state::cli::simulate::SimReport {
        let state = Arc::new(Faulty {
            inner: MemoryState::new(),
            fault,
        });
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
