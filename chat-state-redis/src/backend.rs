//! [`RedisBackend`]: the storage logic behind [`RedisState`](crate::RedisState), one Redis
//! command or script per operation. Inputs arrive validated and the adapter open: core's
//! [`Checked`](chat_state_core::Checked) layer checks both before calling in.

use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use chat_state_core::{
    Backend, Clock, Error, ListOptions, Lock, LockRequest, Operation, QueueEntry, Result,
    SystemClock, validate,
};
use redis::RedisResult;

use crate::conn::Conn;
use crate::scripts::Scripts;
use crate::{BACKEND, error, keys};

/// Extra lifetime of a queue key beyond its last entry's `expiresAt`, so a client whose clock
/// runs behind the server's never sees a queue vanish before its entries are due.
const QUEUE_KEY_GRACE_MS: u64 = 60_000;

/// The Redis backend's storage: state shared by every bot instance (Rust or TypeScript)
/// pointed at the same Redis and key prefix.
///
/// Used as [`RedisState`](crate::RedisState) (this behind core's rule layer); create one
/// with [`RedisBackend::connect`] or [`RedisBackend::builder`]. Cheap to share
/// (`Arc<RedisState>` or `Arc<dyn StateAdapter>`): all concurrent calls are multiplexed over
/// one connection (one per node on a cluster).
pub struct RedisBackend {
    /// `None` once closed.
    conn: RwLock<Option<Conn>>,
    pub(crate) keys: keys::Keys,
    pub(crate) scripts: Scripts,
    timeout: Duration,
    pub(crate) prefix: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let closed = self
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.timeout)
            .field("closed", &closed)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend on an established connection.
    pub(crate) fn new(conn: Conn, prefix: String, cluster: bool, timeout: Duration) -> Self {
        Self {
            conn: RwLock::new(Some(conn)),
            keys: keys::Keys::new(&prefix, cluster),
            scripts: Scripts::new(),
            timeout,
            prefix,
        }
    }

    /// The key prefix in use.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// A clone of the multiplexed connection; a closed-error once [`Backend::close`] ran
    /// (which also covers the backend-specific methods, which the rule layer does not see).
    fn conn(&self, op: Operation) -> Result<Conn> {
        let guard = self.conn.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| Error::closed(BACKEND, op))
    }

    /// Runs one call on a clone of the multiplexed connection, bounded by the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, op: Operation, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.conn(op)?;
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(error::from_redis(op, e)),
            Err(_) => Err(error::timed_out(op, self.timeout)),
        }
    }
}

/// The client's clock, in Unix milliseconds: what queue expiry is compared with.
pub(crate) fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// The start of a stored value, for error messages.
fn snippet(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(120)]).into_owned();
    if raw.len() > 120 {
        format!("{text}...")
    } else {
        text
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn connect(&self) -> Result<()> {
        self.run(Operation::Connect, |mut c| async move {
            redis::cmd("PING").query_async::<()>(&mut c).await
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        // Dropping our handle closes the connection once no call is using a clone of it.
        let mut guard = self.conn.write().unwrap_or_else(|p| p.into_inner());
        guard.take();
        Ok(())
    }

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let key = self.keys.subscriptions();
        self.run(Operation::Subscribe, |mut c| async move {
            redis::cmd("SADD")
                .arg(&key)
                .arg(thread_id)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let key = self.keys.subscriptions();
        self.run(Operation::Unsubscribe, |mut c| async move {
            redis::cmd("SREM")
                .arg(&key)
                .arg(thread_id)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let key = self.keys.subscriptions();
        self.run(Operation::IsSubscribed, |mut c| async move {
            redis::cmd("SISMEMBER")
                .arg(&key)
                .arg(thread_id)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }

    /// The fenced acquire script: `SET lock token NX PX ttl`, then `INCR fence`. The layer
    /// computed the reported expiry from the clock read before this request, so it can only
    /// be earlier than the server's own (`PX` from arrival): contract rule 12.
    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let ttl_ms = validate::duration_ms(request.ttl);
        let (lock_key, fence_key) = (
            self.keys.lock(request.lock_id),
            self.keys.fence(request.lock_id),
        );
        let token = request.token;
        let fence: u64 = self
            .run(Operation::AcquireLock, |mut c| async move {
                self.scripts
                    .acquire
                    .key(&lock_key)
                    .key(&fence_key)
                    .arg(token)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        // Fences start at 1: 0 is the script's "held by someone else".
        Ok((fence > 0).then_some(fence))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let key = self.keys.lock(&lock.thread_id);
        self.run(Operation::ReleaseLock, |mut c| async move {
            self.scripts
                .release
                .key(&key)
                .arg(&lock.token)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(drop)
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        let key = self.keys.lock(request.lock_id);
        // Validated non-zero: `PEXPIRE key 0` would delete the lock and still answer 1.
        let ttl_ms = validate::duration_ms(request.ttl);
        let token = request.token;
        let extended: i64 = self
            .run(Operation::ExtendLock, |mut c| async move {
                self.scripts
                    .extend
                    .key(&key)
                    .arg(token)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(extended == 1)
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        // Only the lock key: the fence counter stays, so the next holder's fence is greater.
        let key = self.keys.lock(lock_id);
        self.run(Operation::ForceReleaseLock, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.keys.cache(key);
        self.run(Operation::Get, |mut c| async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.cache(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(validate::duration_ms(ttl));
        }
        self.run(Operation::Set, |mut c| async move {
            cmd.query_async::<()>(&mut c).await
        })
        .await
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        // Redis treats an expired key as absent, so `SET NX` is rule 5 in one command.
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.cache(key)).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(validate::duration_ms(ttl));
        }
        let reply: Option<String> = self
            .run(Operation::SetIfNotExists, |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = self.keys.cache(key);
        self.run(Operation::Delete, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
        })
        .await
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let key = self.keys.list(key);
        let max_length = options
            .max_length
            .map(|n| n.to_string())
            .unwrap_or_default();
        let ttl_ms = options
            .ttl
            .map(|t| validate::duration_ms(t).to_string())
            .unwrap_or_default();
        self.run(Operation::AppendToList, |mut c| async move {
            self.scripts
                .append
                .key(&key)
                .arg(value)
                .arg(&max_length)
                .arg(&ttl_ms)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(drop)
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let key = self.keys.list(key);
        self.run(Operation::GetList, |mut c| async move {
            redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async::<Vec<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let op = Operation::Enqueue;
        // The upstream JSON shape `{enqueuedAt, expiresAt, message}`.
        let json = serde_json::to_vec(&entry).map_err(|e| {
            Error::invalid_input(format!("queue entry is not serializable: {e}"))
                .context(BACKEND, op)
        })?;
        let key = self.keys.queue(thread_id);
        let depth: u64 = self
            .run(op, |mut c| async move {
                self.scripts
                    .enqueue
                    .key(&key)
                    .arg(&json)
                    .arg(max_size)
                    .arg(now_ms())
                    .arg(QUEUE_KEY_GRACE_MS)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(usize::try_from(depth).unwrap_or(usize::MAX))
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let op = Operation::Dequeue;
        let key = self.keys.queue(thread_id);
        let reply: Option<(String, Vec<u8>)> = self
            .run(op, |mut c| async move {
                self.scripts
                    .dequeue
                    .key(&key)
                    .arg(now_ms())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let Some((status, raw)) = reply else {
            return Ok(None);
        };
        let parsed = (status == "ok")
            // A TypeScript bot's entry may hold lone surrogates (`JSON.stringify` of a string
            // cut inside an emoji); they decode as U+FFFD rather than lose the entry.
            .then(|| chat_state_core::json::from_json_slice::<QueueEntry>(&raw).ok())
            .flatten();
        parsed.map(Some).ok_or_else(|| {
            // The script already removed it: report it rather than block the queue forever.
            Error::corrupt(format!(
                "queue `{thread_id}` held an entry that is not a {{enqueuedAt, expiresAt, \
                 message}} JSON object (removed from the queue): {}",
                snippet(&raw)
            ))
            .context(BACKEND, op)
        })
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let key = self.keys.queue(thread_id);
        let depth: u64 = self
            .run(Operation::QueueDepth, |mut c| async move {
                self.scripts
                    .depth
                    .key(&key)
                    .arg(now_ms())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(usize::try_from(depth).unwrap_or(usize::MAX))
    }
}
