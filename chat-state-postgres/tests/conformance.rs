//! The shared conformance suite against a real PostgreSQL (one server per test binary, a
//! fresh key prefix per case), twice: on a manual clock that the statements use instead of
//! the server's (exact boundaries, sweep off) and on the server's clock (sweep every 50 ms).

use std::sync::Arc;
use std::time::Duration;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::{ManualClock, StateAdapter};
use chat_state_postgres::{PostgresBackend, PostgresBuilder};

use chat_state_test_support::postgres as support;

/// A harness on a fresh key prefix of the shared server; `configure` is applied to the
/// builder at the first connect and at every reopen.
async fn harness(
    configure: impl Fn(PostgresBuilder) -> PostgresBuilder + Send + Sync + 'static,
    time: impl FnOnce(Arc<dyn StateAdapter>) -> Harness,
) -> Harness {
    let (url, prefix) = (support::shared().url(), support::unique_prefix());
    let open = Arc::new(move || {
        configure(
            PostgresBackend::builder(&url)
                .key_prefix(&prefix)
                .max_connections(4),
        )
        .connect()
    });
    let state = open().await.expect("connect to the test PostgreSQL");
    time(Arc::new(state)).with_reopen(move || {
        let open = open.clone();
        async move { Ok(Arc::new(open().await?) as Arc<dyn StateAdapter>) }
    })
}

mod manual_clock {
    use super::*;

    async fn factory() -> Harness {
        let clock = ManualClock::starting_now();
        let for_builder = clock.clone();
        harness(
            move |b| b.clock(for_builder.clone()).sweep_interval(None),
            |adapter| Harness::with_manual_clock(adapter, clock),
        )
        .await
    }

    conformance_tests!(factory, skip = [lock_guard_heartbeat_keeps_lock]);
}

mod real_time {
    use super::*;

    async fn factory() -> Harness {
        harness(
            |b| b.sweep_interval(Some(Duration::from_millis(50))),
            Harness::with_real_time,
        )
        .await
    }

    conformance_tests!(
        factory,
        skip = [
            lock_extend_sets_expiry_to_now_plus_ttl,
            queue_entry_expires_at_boundary,
            validation_sub_millisecond_ttl_rounds_up,
        ]
    );
}
