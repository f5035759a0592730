//! Reading who holds a lock: an optional capability, outside the core traits.
//!
//! The contract's `Locks` trait has no "read lock" operation on purpose (a bot must never
//! decide on a lock it does not hold), but an operator looking at a stuck thread needs to
//! see the holder, its expiry and fence. Backends that can answer without side effects
//! implement [`InspectLocks`]; [`lock_inspector`] finds the one for a URL.

use std::sync::Arc;

use chat_state_core::{Error, ErrorKind, Operation, Result};
use serde_json::json;

/// What a backend holds for one lock id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The holder's token (as returned to it by `acquire_lock`).
    pub token: String,
    /// Unix milliseconds at which the lock expires on the backend.
    pub expires_at: u64,
    /// The fencing number of the current holder, when the backend can tell it.
    pub fence: Option<u64>,
}

impl LockInfo {
    /// As JSON, in the wire's camelCase.
    pub fn to_json(&self) -> serde_json::Value {
        json!({ "token": self.token, "expiresAt": self.expires_at, "fence": self.fence })
    }
}

/// Reads lock state without changing it. Implemented for the backends that can.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait InspectLocks: chat_state_core::MaybeSendSync {
    /// The live holder of `lock_id`, or `None` if it is free (or its holder expired).
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>>;
}

/// The lock inspector for `url`, or an [`ErrorKind::InvalidInput`] error saying why the
/// backend cannot show lock holders.
///
/// Supported: `sqlite://` (reads the lock row; never creates or migrates the file) and
/// single-node `redis://` (reads the lock and fence keys in one `MULTI`). `memory://` never
/// can, since every connection is a fresh private store; `redis+cluster://` is not
/// supported yet.
pub async fn lock_inspector(url: &str) -> Result<Arc<dyn InspectLocks>> {
    use crate::connect::Target;
    let target = Target::parse(url)?;
    #[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
    if let Target::Sqlite { path, prefix } = &target {
        return Ok(Arc::new(
            crate::backends::SqliteLockReader::open(path, prefix.as_deref()).await?,
        ));
    }
    #[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
    if let Target::Redis {
        nodes,
        cluster: false,
        prefix,
    } = &target
        && let [url] = nodes.as_slice()
    {
        return Ok(Arc::new(
            crate::backends::RedisLockReader::open(url, prefix.as_deref()).await?,
        ));
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
