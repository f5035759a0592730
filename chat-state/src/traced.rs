//! A layer that emits a `tracing` span and event per adapter call.

use std::sync::Arc;
use std::time::Instant;

use chat_state_core::{Call, Layer, Layered, MaybeSend, Next, Operation, Result, StateAdapter};
use tracing::Instrument;

/// The tracing [`Layer`]: every call runs inside a `chat_state` span (fields `backend`,
/// `operation`, `id`; for `connect` and `close`, which have no id, the backend name) and
/// ends with one event carrying `duration_us` and `outcome` (`ok`, or the error's kind).
/// Successful calls log at `DEBUG`, failures at `WARN`; errors pass through unchanged.
///
/// Opt in with [`ConnectOptions::trace`](crate::ConnectOptions::trace), [`traced`], or
/// [`Traced::new(Tracing, adapter)`](Traced); it is off by default because it costs time on
/// every call even when nothing records the spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracing;

/// An adapter `A` with a [`Tracing`] layer around each call: `Traced::new(Tracing, inner)`.
/// `A` is any adapter (`Arc<dyn StateAdapter>` by default, a concrete backend, a `&T`).
///
/// ```
/// # #[cfg(feature = "memory")] {
/// use std::sync::Arc;
/// use chat_state::{MemoryState, StateAdapter, Traced, Tracing};
/// let state: Arc<dyn StateAdapter> = Arc::new(Traced::new(Tracing, MemoryState::default()));
/// assert_eq!(state.backend_name(), "memory");
/// # }
/// ```
pub type Traced<A = Arc<dyn StateAdapter>> = Layered<Tracing, A>;

/// Wraps `inner` in [`Tracing`], behind an `Arc<dyn StateAdapter>`.
pub fn traced(inner: Arc<dyn StateAdapter>) -> Arc<dyn StateAdapter> {
    Arc::new(Traced::new(Tracing, inner))
}

#[chat_state_core::async_trait]
impl Layer for Tracing {
    async fn call<T: MaybeSend>(&self, call: Call<'_>, next: Next<'_, T>) -> Result<T> {
        let id = match call.operation {
            Operation::Connect | Operation::Close if call.id.is_empty() => call.backend,
            _ => call.id,
        };
        let span = tracing::debug_span!(
            "chat_state",
            backend = call.backend,
            operation = call.operation.as_str(),
            id,
        );
        let started = Instant::now();
        let result = next.instrument(span.clone()).await;
        let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _entered = span.enter();
        match &result {
            Ok(_) => tracing::debug!(duration_us, outcome = "ok"),
            Err(e) => tracing::warn!(duration_us, outcome = %e.kind(), error = %e),
        }
        result
    }
}
