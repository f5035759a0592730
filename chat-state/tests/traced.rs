//! The tracing decorator: one span per call with backend/operation/id, one event with the
//! duration and outcome; errors pass through unchanged.

use std::sync::Arc;
use std::time::Duration;

use chat_state::{
    ConnectOptions, ErrorKind, MemoryState, StateAdapter, Subscriptions, Traced, Tracing,
    connect_with,
};
use tracing_test::traced_test;

// Every test here is `#[traced_test]`, even those that read no log: its first statement
// installs the one global subscriber, and callsite interest is cached process-wide, so a test
// that reached the adapter's callsites before that install could leave them disabled for the
// tests that read the log.

#[tokio::test(flavor = "current_thread")]
#[traced_test]
async fn spans_carry_backend_operation_duration_and_outcome() {
    let state = connect_with("memory://", &ConnectOptions::new().trace(true))
        .await
        .expect("connects");
    let lock = state
        .acquire_lock("t1", Duration::from_secs(5))
        .await
        .expect("acquire")
        .expect("free");
    state.release_lock(&lock).await.expect("release");
    let err = state.get("").await.expect_err("empty key is invalid");
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "errors pass through unchanged"
    );

    logs_assert(|lines| {
        let find = |operation: &str| {
            lines
                .iter()
                .find(|l| l.contains(&format!("operation=\"{operation}\"")))
                .ok_or_else(|| format!("no {operation} event in\n{}", lines.join("\n")))
        };
        let acquire = find("acquire_lock")?;
        for part in [
            "backend=\"memory\"",
            "id=\"t1\"",
            "duration_us=",
            "outcome=\"ok\"",
        ] {
            if !acquire.contains(part) {
                return Err(format!("{part} missing: {acquire}"));
            }
        }
        let failed = find("get")?;
        for part in ["WARN", "outcome=invalid input"] {
            if !failed.contains(part) {
                return Err(format!("{part} missing: {failed}"));
            }
        }
        Ok(())
    });
}

#[tokio::test(flavor = "current_thread")]
#[traced_test]
async fn tracing_is_off_by_default() {
    let state = chat_state::connect("memory://").await.expect("connects");
    state.subscribe("t1").await.expect("subscribe");
    assert!(state.is_subscribed("t1").await.expect("read"));
    logs_assert(|lines| match lines {
        [] => Ok(()),
        logged => Err(format!("logged with tracing off:\n{}", logged.join("\n"))),
    });
}

#[tokio::test(flavor = "current_thread")]
#[traced_test]
async fn traced_wraps_any_adapter_and_keeps_its_behaviour() {
    let inner: Arc<dyn StateAdapter> = Arc::new(MemoryState::default());
    let traced = Traced::new(Tracing, inner.clone());
    traced.subscribe("t").await.expect("subscribe");
    assert!(
        inner.is_subscribed("t").await.expect("read"),
        "calls reach the inner adapter"
    );
    traced.close().await.expect("close");
    let err = inner.is_subscribed("t").await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "current_thread")]
#[traced_test]
async fn every_memory_url_is_a_fresh_store() {
    let a = chat_state::connect("memory://").await.expect("a");
    let b = chat_state::connect("memory://").await.expect("b");
    a.subscribe("t").await.expect("subscribe");
    assert!(!b.is_subscribed("t").await.expect("read"));
}
