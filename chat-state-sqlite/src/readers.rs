//! The read connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use chat_state_core::{Error, Operation, Result};
use rusqlite::Connection;

use crate::BACKEND;
use crate::error::map_rusqlite;

/// The read connections: in WAL mode reads run in parallel with the writer (never waiting
/// for it) and with each other.
///
/// A read runs on the calling thread, on the first free connection: no channel hop, no
/// task switch. At most as many reads run at once as threads poll the adapter, so a few
/// connections suffice; each sits behind a plain mutex, held only for the read itself.
#[derive(Debug)]
pub(crate) struct Readers {
    conns: Vec<Mutex<Option<Connection>>>,
    next: AtomicUsize,
}

impl Readers {
    pub(crate) fn new(conns: Vec<Connection>) -> Self {
        Self {
            conns: conns.into_iter().map(|c| Mutex::new(Some(c))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs `read` on a read connection. The first free one, else waits for one
    /// (round-robin). Preferring the first keeps few connections busy at low load, so their
    /// page caches stay warm.
    pub(crate) fn read<T>(
        &self,
        op: Operation,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let guard = self.conns.iter().find_map(|c| match c.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        });
        let guard: MutexGuard<'_, Option<Connection>> = match guard {
            Some(g) => g,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
                match self.conns.get(i) {
                    Some(c) => c.lock().unwrap_or_else(|p| p.into_inner()),
                    None => return Err(Error::closed(BACKEND, op)),
                }
            }
        };
        // An empty slot was emptied by close().
        let conn = guard.as_ref().ok_or_else(|| Error::closed(BACKEND, op))?;
        read(conn).map_err(|e| map_rusqlite(e, op))
    }

    pub(crate) fn close(&self) {
        for slot in &self.conns {
            let conn = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(conn) = conn {
                drop(conn.close());
            }
        }
    }
}
