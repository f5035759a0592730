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
    assert!(!state.is_closed());
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

/// Storage that keeps `Backend`'s default clock (the system clock), as a backend whose time
/// lives elsewhere does (Redis): the rule layer must compute `expires_at` from it.
#[derive(Debug, Default)]
struct DefaultClock(chat_state_memory::MemoryBackend);

impl chat_state_core::Backend for DefaultClock {
    fn name(&self) -> &'static str {
        "default-clock"
    }
    async fn subscribe(&self, id: &str) -> Result<()> {
        self.0.subscribe(id).await
    }
    async fn unsubscribe(&self, id: &str) -> Result<()> {
        self.0.unsubscribe(id).await
    }
    async fn is_subscribed(&self, id: &str) -> Result<bool> {
        self.0.is_subscribed(id).await
    }
    async fn acquire_lock(
        &self,
        request: &chat_state_core::LockRequest<'_>,
    ) -> Result<Option<u64>> {
        self.0.acquire_lock(request).await
    }
    async fn release_lock(&self, lock: &chat_state_core::Lock) -> Result<()> {
        self.0.release_lock(lock).await
    }
    async fn extend_lock(&self, request: &chat_state_core::LockRequest<'_>) -> Result<bool> {
        self.0.extend_lock(request).await
    }
    async fn force_release_lock(&self, id: &str) -> Result<()> {
        self.0.force_release_lock(id).await
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.get(key).await
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.0.set(key, value, ttl).await
    }
    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.0.set_if_not_exists(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key).await
    }
    async fn append_to_list(
        &self,
        key: &str,
        value: &[u8],
        options: chat_state_core::ListOptions,
    ) -> Result<()> {
        self.0.append_to_list(key, value, options).await
    }
    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        self.0.get_list(key).await
    }
    async fn enqueue(
        &self,
        id: &str,
        entry: chat_state_core::QueueEntry,
        max: usize,
    ) -> Result<usize> {
        self.0.enqueue(id, entry, max).await
    }
    async fn dequeue(&self, id: &str) -> Result<Option<chat_state_core::QueueEntry>> {
        self.0.dequeue(id).await
    }
    async fn queue_depth(&self, id: &str) -> Result<usize> {
        self.0.queue_depth(id).await
    }
}

#[tokio::test]
async fn the_default_backend_clock_is_the_system_clock() {
    use chat_state_core::{Checked, Clock, SystemClock};
    let state = Checked::new(DefaultClock::default());
    let ttl = Duration::from_secs(30);
    let before = SystemClock.now_ms();
    let lock = state.acquire_lock("t", ttl).await.unwrap().expect("free");
    let after = SystemClock.now_ms();
    assert!(
        (before + 30_000..=after + 30_000).contains(&lock.expires_at),
        "expires_at {} is not the system clock + TTL ({before}..={after} + 30 s)",
        lock.expires_at
    );
}

/// The caller's own reckoning of rule 1 (`Lock::is_live_at`) agrees with the backend's, on a
/// clock that also steps backwards (`ManualClock::set`).
#[tokio::test]
async fn a_lock_is_live_until_its_expiry_by_the_callers_reckoning_too() {
    use chat_state_core::{Clock, ManualClock};
    let clock = ManualClock::new(10_000);
    let state = MemoryState::new(chat_state_memory::MemoryBackend::with_clock(clock.clone()));
    let lock = state
        .acquire_lock("t", Duration::from_millis(500))
        .await
        .unwrap()
        .expect("free");
    assert_eq!(lock.expires_at, 10_500);
    assert!(lock.is_live_at(10_499));
    assert!(!lock.is_live_at(10_500));
    assert!(!lock.is_live_at(10_501));
    clock.set(10_500);
    assert_eq!(clock.now_ms(), 10_500);
    assert!(
        state
            .acquire_lock("t", Duration::from_secs(1))
            .await
            .unwrap()
            .is_some()
    );
    clock.set(9_000);
    assert_eq!(clock.now_ms(), 9_000, "set moves the clock backwards too");
}
