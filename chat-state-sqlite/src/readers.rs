//! The read connections.

use chat_state_core::{Error, Operation, Result};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use crate::BACKEND;

/// The read connections: in WAL mode reads run in parallel with the writer and each other.
///
/// A fixed set of connections behind async mutexes rather than an `sqlx` pool: a pool
/// acquire costs about as much as the read itself on a local file (measured: set+get at
/// concurrency 1 ran at half the raw speed through `SqlitePool`).
#[derive(Debug)]
pub(crate) struct Readers {
    conns: Vec<tokio::sync::Mutex<Option<SqliteConnection>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    pub(crate) async fn open(
        options: &SqliteConnectOptions,
        n: u32,
    ) -> std::result::Result<Self, sqlx::Error> {
        let mut conns = Vec::new();
        for _ in 0..n.max(1) {
            conns.push(tokio::sync::Mutex::new(Some(options.connect().await?)));
        }
        Ok(Self {
            conns,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The first free connection, else waits for one (round-robin). Preferring the first
    /// keeps few connections busy at low load: their SQLite threads stay awake and their
    /// page caches warm (measured: round-robin over idle connections halved read speed).
    pub(crate) async fn get(
        &self,
        op: Operation,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, SqliteConnection>> {
        let free = self.conns.iter().find_map(|c| c.try_lock().ok());
        let guard = match free {
            Some(g) => g,
            None => {
                let n = self.conns.len();
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
                self.conns[i].lock().await
            }
        };
        // An empty slot was emptied by close() while this call waited.
        tokio::sync::MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| Error::closed(BACKEND, op))
    }

    pub(crate) async fn close(&self) {
        for slot in &self.conns {
            if let Some(conn) = slot.lock().await.take() {
                let _ = conn.close().await;
            }
        }
    }
}
