//! Core's rule layer, layers and pointer impls, exercised on the memory backend: an adapter
//! behind `Arc`, `Box` or `&` is an adapter, a `Layered` wrapper sees every call once, and the
//! rule layer answers bad input and closed adapters before the backend is reached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_state_core::{
    Cache, Call, ErrorKind, Layer, Layered, Locks, MaybeSend, Next, Operation, Result,
    StateAdapter, StateExt, Subscriptions, async_trait,
};
use chat_state_memory::MemoryState;

/// Any adapter, taken by value: compiles only if the pointer types implement the trait.
async fn round_trip<A: StateAdapter>(adapter: A, key: &str) -> Result<Option<String>> {
    adapter.set_json(key, &"v", None).await?;
    adapter.get_json(key).await
}

#[tokio::test]
async fn pointers_to_adapters_are_adapters() {
    let shared: Arc<dyn StateAdapter> = Arc::new(MemoryState::default());
    assert_eq!(
        round_trip(shared.clone(), "a").await.unwrap().as_deref(),
        Some("v")
    );
    let boxed: Box<dyn StateAdapter> = Box::new(MemoryState::default());
    assert_eq!(round_trip(boxed, "b").await.unwrap().as_deref(), Some("v"));
    let owned = MemoryState::default();
    assert_eq!(round_trip(&owned, "c").await.unwrap().as_deref(), Some("v"));
    assert_eq!(shared.backend_name(), "memory");
}

/// Records every call it sees, and answers `get` of `"injected"` itself.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<(Operation, String)>>,
    passed_through: AtomicU64,
}

#[async_trait]
impl Layer for Recorder {
    async fn call<T: MaybeSend>(&self, call: Call<'_>, next: Next<'_, T>) -> Result<T> {
        self.calls
            .lock()
            .unwrap()
            .push((call.operation, call.id.to_owned()));
        assert_eq!(call.backend, "memory");
        if call.id == "injected" {
            return Err(
                chat_state_core::Error::new(ErrorKind::Unavailable, "injected fault")
                    .context(call.backend, call.operation),
            );
        }
        self.passed_through.fetch_add(1, Ordering::Relaxed);
        next.await
    }
}

#[tokio::test]
async fn a_layer_sees_every_call_once_and_can_answer_in_place() {
    let inner: Arc<dyn StateAdapter> = Arc::new(MemoryState::default());
    let layered = Layered::new(Recorder::default(), inner.clone());
    layered.subscribe("t").await.unwrap();
    let lock = layered
        .acquire_lock("t", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("free lock");
    layered.release_lock(&lock).await.unwrap();
    let err = layered.get("injected").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    layered.close().await.unwrap();
    let calls = layered.layer().calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            (Operation::Subscribe, "t".to_owned()),
            (Operation::AcquireLock, "t".to_owned()),
            (Operation::ReleaseLock, "t".to_owned()),
            (Operation::Get, "injected".to_owned()),
            (Operation::Close, String::new()),
        ]
    );
    assert_eq!(layered.layer().passed_through.load(Ordering::Relaxed), 4);
    // The close went through to the backend behind the layer.
    let err = inner.is_subscribed("t").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[tokio::test]
async fn the_rule_layer_names_backend_and_operation_on_every_rejection() {
    let state = MemoryState::default();
    let err = state
        .acquire_lock("", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.backend(), err.operation()),
        (
            ErrorKind::InvalidInput,
            "memory",
            Some(Operation::AcquireLock)
        )
    );
    let err = state
        .extend_lock(
            &chat_state_core::Lock {
                thread_id: "t".into(),
                token: "x".into(),
                expires_at: 0,
                fence: 0,
            },
            chat_state_core::validate::MAX_TTL + Duration::from_millis(1),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.operation()),
        (ErrorKind::InvalidInput, Some(Operation::ExtendLock))
    );
    state.close().await.unwrap();
    state.close().await.unwrap();
    assert!(state.is_closed());
    // Bad input is still reported as such after close (rule 9 before rule 13).
    let err = state.get("").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = state.get("k").await.unwrap_err();
    assert_eq!(
        (err.kind(), err.operation()),
        (ErrorKind::Closed, Some(Operation::Get))
    );
}
