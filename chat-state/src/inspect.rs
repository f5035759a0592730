//! Reading who holds a lock, for operators: finds the backend's own
//! [`InspectLocks`] implementation for a URL.
//!
//! The contract's `Locks` trait has no "read lock" operation on purpose (a bot must never
//! decide on a lock it does not hold); the optional [`InspectLocks`] capability in core is
//! implemented by the backends that can answer without side effects.

use std::sync::Arc;

use chat_state_core::{Error, ErrorKind, Operation, Result};
pub use chat_state_core::{InspectLocks, LockInfo};

/// The lock inspector for `url`, or an [`ErrorKind::InvalidInput`] error saying why the
/// backend cannot show lock holders.
///
/// Supported: `sqlite://` (opened verify-only with cleanup off, so inspecting never creates,
/// migrates or writes the file), `redis://` / `redis+cluster://`, and `postgres://` (opened
/// verify-only with the sweep off, so inspecting never creates tables or deletes rows; the
/// fence is not shown, see `chat_state_postgres`'s `lock_info`). `memory://` never can,
/// since every connection is a fresh private store.
pub async fn lock_inspector(url: &str) -> Result<Arc<dyn InspectLocks>> {
    use crate::connect::Target;
    let target = Target::parse(url)?;
    #[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
    if let Target::Sqlite { path, prefix } = &target {
        let mut builder = chat_state_sqlite::SqliteBackend::builder(path)
            .schema_mode(chat_state_sqlite::SchemaMode::VerifyOnly)
            .cleanup_interval(None);
        if let Some(prefix) = prefix {
            builder = builder.key_prefix(prefix);
        }
        return Ok(Arc::new(builder.open().await?));
    }
    #[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
    if let Target::Redis {
        nodes,
        cluster,
        prefix,
    } = &target
    {
        let state = crate::backends::redis_state(nodes, *cluster, prefix.as_deref()).await?;
        return Ok(Arc::new(state));
    }
    #[cfg(all(feature = "postgres", not(target_arch = "wasm32")))]
    if let Target::Postgres {
        url,
        prefix,
        connect_timeout,
        ..
    } = &target
    {
        let state = crate::backends::postgres_builder(url, prefix.as_deref(), *connect_timeout)
            .schema_mode(chat_state_postgres::SchemaMode::VerifyOnly)
            .sweep_interval(None)
            .connect()
            .await?;
        return Ok(Arc::new(state));
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "{} cannot show lock holders: {}",
            target.scheme(),
            if target.is_shared() {
                "this build has no side-effect-free lock read for it"
            } else {
                "this URL opens a fresh private store, which holds no locks"
            }
        ),
    )
    .context("chat-state", Operation::Open))
}
