//! Shared test helpers: an adapter on a fresh database file in its own temporary directory,
//! which lives exactly as long as the adapter.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use chat_state_core::ManualClock;
use chat_state_sqlite::{SqliteBackend, SqliteBuilder, SqliteState};
use tempfile::TempDir;

/// A [`SqliteState`] together with the temporary directory holding its file: the directory
/// is removed when the last handle is dropped, after the adapter.
pub struct TempState {
    pub state: SqliteState,
    pub path: PathBuf,
    // Declared after `state` so the adapter drops (and closes its connections) first.
    _dir: TempDir,
}

impl TempState {
    /// A fresh file, opened with `configure` applied to the default builder.
    pub async fn new(configure: impl FnOnce(SqliteBuilder) -> SqliteBuilder) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("state.db");
        let state = configure(SqliteBackend::builder(&path))
            .open()
            .await
            .expect("open a fresh database");
        Self {
            state,
            path,
            _dir: dir,
        }
    }

    /// A fresh file on a manual clock, background cleanup off (tests call it explicitly).
    pub async fn manual(clock: &ManualClock) -> Self {
        let clock = clock.clone();
        Self::new(move |b| b.clock(clock).cleanup_interval(None)).await
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// A file's exact bytes, to show it was not modified (the test databases are small).
pub fn fingerprint(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}
