//! Opening the durable backends named by a URL, and their lock readers for `inspect`.

#[allow(unused_imports)] // which ones are used depends on the backend features
use std::sync::Arc;

#[allow(unused_imports)]
use chat_state_core::{Clock, Error, ErrorKind, Operation, Result, StateAdapter, SystemClock};

#[allow(unused_imports)]
use crate::{InspectLocks, LockInfo};

/// `sqlite://PATH?prefix=P`: the file is created (with its schema) if missing.
#[cfg(feature = "sqlite")]
pub(crate) async fn open_sqlite(path: &str, prefix: Option<&str>) -> Result<Arc<dyn StateAdapter>> {
    let mut builder = chat_state_sqlite::SqliteState::builder(path);
    if let Some(prefix) = prefix {
        builder = builder.key_prefix(prefix);
    }
    Ok(Arc::new(builder.open().await?))
}

/// Reads a lock row of the SQLite schema (version 1: `chat_state_locks`, keyed by the key
/// prefix and lock id) through the backend's read pool. Read-only, and opened with
/// [`SchemaMode::VerifyOnly`](chat_state_sqlite::SchemaMode::VerifyOnly), so inspecting
/// never creates or migrates a file.
#[cfg(feature = "sqlite")]
pub(crate) struct SqliteLockReader {
    state: chat_state_sqlite::SqliteState,
}

#[cfg(feature = "sqlite")]
impl SqliteLockReader {
    pub(crate) async fn open(path: &str, prefix: Option<&str>) -> Result<Self> {
        let mut builder = chat_state_sqlite::SqliteState::builder(path)
            .schema_mode(chat_state_sqlite::SchemaMode::VerifyOnly)
            .cleanup_interval(None);
        if let Some(prefix) = prefix {
            builder = builder.key_prefix(prefix);
        }
        Ok(Self {
            state: builder.open().await?,
        })
    }
}

#[cfg(feature = "sqlite")]
#[async_trait::async_trait]
impl InspectLocks for SqliteLockReader {
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        chat_state_core::validate::key("sqlite", Operation::Get, "lock id", lock_id)?;
        let now = i64::try_from(SystemClock.now_ms()).unwrap_or(i64::MAX);
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT token, expires_at, fence FROM chat_state_locks \
             WHERE scope = ? AND lock_id = ? AND expires_at > ?",
        )
        .bind(self.state.key_prefix())
        .bind(lock_id)
        .bind(now)
        .fetch_optional(self.state.pool())
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!(
                    "cannot read the lock row (schema version {} expected): {e}",
                    chat_state_sqlite::SCHEMA_VERSION
                ),
            )
            .context("sqlite", Operation::Get)
            .with_source(e)
        })?;
        Ok(row.map(|(token, expires_at, fence)| LockInfo {
            token,
            expires_at: u64::try_from(expires_at).unwrap_or(0),
            fence: u64::try_from(fence).ok(),
        }))
    }
}
