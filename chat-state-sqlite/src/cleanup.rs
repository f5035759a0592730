//! Expired-row cleanup: repeated bounded passes (each one [`Cleanup`] write), on demand and
//! from the background task. Expired rows are never returned either way; cleanup only keeps
//! the file from growing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chat_state_core::{ErrorKind, Operation, Result};

use crate::writes::{Cleanup, CleanupReport};
use crate::{BACKEND, Inner, SqliteBackend, to_i64};

/// Starts the background task that runs [`expired`] every `every`. It holds only a `Weak`,
/// and stops when the backend is closed or dropped.
pub(crate) fn start(backend: &SqliteBackend, every: Duration) {
    let task = tokio::spawn(run(Arc::downgrade(&backend.inner), every));
    if let Ok(mut slot) = backend.inner.cleanup_task.lock() {
        *slot = Some(task);
    }
}

/// Runs cleanup passes of at most `cleanup_batch` rows per table until one removes fewer
/// than that from every table.
pub(crate) async fn expired(inner: &Inner) -> Result<CleanupReport> {
    inner.open.check(BACKEND, Operation::Maintenance)?;
    let limit = inner.cleanup_batch as u64;
    let mut total = CleanupReport::default();
    loop {
        let pass = inner
            .writer
            .write(Cleanup {
                limit: to_i64(limit),
            })
            .await?;
        total.add(&pass);
        let full = [
            pass.locks,
            pass.cache,
            pass.lists,
            pass.list_items,
            pass.queue_entries,
            pass.fences,
        ]
        .iter()
        .any(|&n| n >= limit);
        if !full {
            return Ok(total);
        }
    }
}

async fn run(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so opening does not start with a cleanup.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.open.is_closed() {
            return;
        }
        match expired(&inner).await {
            Ok(report) if report.total() > 0 => {
                tracing::debug!(?report, "removed expired chat-state rows");
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Closed => return,
            // Busy or I/O trouble: the next tick tries again; expired rows are never read.
            Err(e) => tracing::warn!(error = %e, "expired-row cleanup failed"),
        }
    }
}
