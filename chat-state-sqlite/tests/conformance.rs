//! The shared conformance suite against real SQLite files, twice: on a manual clock (TTL
//! cases run instantly, with exact boundaries) and on the system clock with the default
//! options (the same cases with real sleeps, background cleanup running). Each case gets a
//! fresh database file in its own temporary directory, and a reopen hook on that file so the
//! durable-reopen case runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::{ManualClock, StateAdapter};
use chat_state_sqlite::{SqliteBackend, SqliteBuilder};

/// A harness on a fresh file in its own temporary directory (kept alive by the harness);
/// `configure` is applied to the builder at the first open and at every reopen.
async fn harness(
    configure: impl Fn(SqliteBuilder) -> SqliteBuilder + Send + Sync + 'static,
    time: impl FnOnce(Arc<dyn StateAdapter>) -> Harness,
) -> Harness {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path: PathBuf = dir.path().join("state.db");
    let configure = Arc::new(configure);
    let state = configure(SqliteBackend::builder(&path))
        .open()
        .await
        .expect("open a fresh database");
    time(Arc::new(state))
        .with_reopen(move || {
            let (path, configure) = (path.clone(), configure.clone());
            async move {
                let state = configure(SqliteBackend::builder(&path)).open().await?;
                Ok(Arc::new(state) as Arc<dyn StateAdapter>)
            }
        })
        .keep_alive(dir)
}

mod manual_clock {
    use super::*;

    async fn factory() -> Harness {
        let clock = ManualClock::starting_now();
        let for_builder = clock.clone();
        harness(
            move |b| b.clock(for_builder.clone()).cleanup_interval(None),
            |adapter| Harness::with_manual_clock(adapter, clock),
        )
        .await
    }

    // The heartbeat runs on the wall clock. The file is durable: reopen runs on both.
    conformance_tests!(factory, skip = [lock_guard_heartbeat_keeps_lock]);
}

mod real_time {
    use super::*;

    async fn factory() -> Harness {
        // Defaults, but with a short cleanup interval so cleanup runs during the cases.
        harness(
            |b| b.cleanup_interval(Some(Duration::from_millis(50))),
            Harness::with_real_time,
        )
        .await
    }

    // Exact expiry boundaries need the manual clock.
    conformance_tests!(
        factory,
        skip = [
            lock_extend_sets_expiry_to_now_plus_ttl,
            queue_entry_expires_at_boundary,
            validation_sub_millisecond_ttl_rounds_up,
        ]
    );
}
