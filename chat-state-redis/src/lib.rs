#![doc = include_str!("../README.md")]

mod conn;
mod error;
mod keys;
mod scripts;

use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use chat_state_core::{
    Cache, Clock, Error, InspectLocks, ListOptions, Lists, Lock, LockInfo, Locks, OpenState,
    Operation, QueueEntry, Queues, Result, StateAdapter, Subscriptions, SystemClock,
    new_lock_token, validate,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Value};

use conn::Conn;
pub use keys::{DEFAULT_PREFIX, MAX_PREFIX_BYTES, validate_prefix};
use scripts::Scripts;

/// The backend name in errors and logs.
pub const BACKEND: &str = "redis";

/// Default time a command may take before it fails with [`ErrorKind::Timeout`](chat_state_core::ErrorKind::Timeout).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to establish the first connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Extra lifetime of a queue key beyond its last entry's `expiresAt`, so a client whose clock
/// runs behind the server's never sees a queue vanish before its entries are due.
const QUEUE_KEY_GRACE_MS: u64 = 60_000;

/// Where a [`RedisBuilder`] gets its connection from.
enum Source {
    Url(String),
    Client(Box<redis::Client>),
    Manager(ConnectionManager),
    #[cfg(feature = "cluster")]
    ClusterUrls(Vec<String>),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Configures and connects a [`RedisState`]. Start from [`RedisState::builder`] (a URL),
/// [`RedisState::builder_with_manager`] (your own connection manager) or, with the `cluster`
/// feature, `RedisState::cluster_builder` / `RedisState::builder_with_cluster`.
pub struct RedisBuilder {
    source: Source,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisBuilder")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBuilder {
    fn new(source: Source) -> Self {
        Self {
            source,
            prefix: DEFAULT_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The key prefix (default `chat-sdk`, upstream's). Bots sharing a prefix share state;
    /// see [`validate_prefix`] for what is accepted.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one call may wait for Redis (including a reconnect in progress) before it
    /// fails with the retryable [`ErrorKind::Timeout`](chat_state_core::ErrorKind::Timeout). Default 5 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long establishing a connection may take. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects, checks the server's eviction policy, and returns the adapter.
    ///
    /// Fails with [`ErrorKind::InvalidInput`](chat_state_core::ErrorKind::InvalidInput) for a bad prefix or URL, and with the retryable
    /// [`ErrorKind::Unavailable`](chat_state_core::ErrorKind::Unavailable) / [`ErrorKind::Timeout`](chat_state_core::ErrorKind::Timeout) if Redis cannot be reached.
    pub async fn connect(self) -> Result<RedisState> {
        validate_prefix(BACKEND, &self.prefix)?;
        let op = Operation::Open;
        for (what, t) in [
            ("command_timeout", self.command_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if t.is_zero() {
                return Err(Error::invalid_input(format!(
                    "{what} is zero: every call would time out; pass a positive duration"
                ))
                .context(BACKEND, op));
            }
        }
        let (conn, cluster) = match self.source {
            Source::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| {
                    Error::invalid_input(format!(
                        "invalid Redis URL (expected redis://[user:password@]host:port/db, \
                         or rediss://... with the `tls` feature): {e}"
                    ))
                    .context(BACKEND, op)
                })?;
                let manager = manager(client, self.connect_timeout, self.command_timeout).await?;
                (Conn::Single(manager), false)
            }
            Source::Client(client) => {
                let manager = manager(*client, self.connect_timeout, self.command_timeout).await?;
                (Conn::Single(manager), false)
            }
            Source::Manager(m) => (Conn::Single(m), false),
            #[cfg(feature = "cluster")]
            Source::ClusterUrls(urls) => {
                let client = redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.command_timeout)
                    .build()
                    .map_err(|e| {
                        Error::invalid_input(format!("invalid Redis Cluster node URLs: {e}"))
                            .context(BACKEND, op)
                    })?;
                let fut = async move { client.get_async_connection().await };
                let conn = match tokio::time::timeout(self.connect_timeout, fut).await {
                    Ok(r) => r.map_err(|e| error::from_redis(op, e))?,
                    Err(_) => return Err(error::timed_out(op, self.connect_timeout)),
                };
                (Conn::Cluster(conn), true)
            }
            #[cfg(feature = "cluster")]
            Source::Cluster(c) => (Conn::Cluster(c), true),
        };
        let state = RedisState {
            conn: RwLock::new(Some(conn)),
            keys: keys::Keys::new(&self.prefix, cluster),
            scripts: Scripts::new(),
            open: OpenState::new(),
            timeout: self.command_timeout,
            prefix: self.prefix,
        };
        state.check_eviction_policy().await;
        state.preload_scripts().await;
        Ok(state)
    }
}

/// A connection manager on `client`, connected within `connect_timeout`.
async fn manager(
    client: redis::Client,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> Result<ConnectionManager> {
    let op = Operation::Open;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(command_timeout))
        // Reconnect attempts back off from 10 ms up to 1 s, so a server that comes back is
        // picked up within about a second.
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_secs(1));
    let fut = ConnectionManager::new_with_config(client, config);
    match tokio::time::timeout(connect_timeout, fut).await {
        Ok(r) => r.map_err(|e| error::from_redis(op, e)),
        Err(_) => Err(error::timed_out(op, connect_timeout)),
    }
}

/// The Redis backend: state shared by every bot instance (Rust or TypeScript) pointed at the
/// same Redis and key prefix.
///
/// Cheap to share (`Arc<RedisState>` or `Arc<dyn StateAdapter>`): all concurrent calls are
/// multiplexed over one connection (one per node on a cluster).
pub struct RedisState {
    conn: RwLock<Option<Conn>>,
    keys: keys::Keys,
    scripts: Scripts,
    open: OpenState,
    timeout: Duration,
    prefix: String,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.timeout)
            .field("closed", &self.open.is_closed())
            .finish_non_exhaustive()
    }
}

impl RedisState {
    /// Connects to `url` (`redis://[user:password@]host:port/db`, or `rediss://` with the `tls`
    /// feature) with the defaults: prefix `chat-sdk`,
    /// 5 s command and connect timeouts.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// A builder connecting to `url`.
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder::new(Source::Url(url.into()))
    }

    /// A builder over a `redis::Client` the application configured (for example TLS with its
    /// own root certificate through `redis::Client::build_with_tls`); the adapter builds its
    /// connection manager from it.
    pub fn builder_with_client(client: redis::Client) -> RedisBuilder {
        RedisBuilder::new(Source::Client(Box::new(client)))
    }

    /// A builder over the application's own connection manager (its reconnect and timeout
    /// settings apply; the command timeout of the builder is applied on top).
    pub fn builder_with_manager(manager: ConnectionManager) -> RedisBuilder {
        RedisBuilder::new(Source::Manager(manager))
    }

    /// A builder connecting to a Redis Cluster through any of `nodes` (`redis://host:port`).
    #[cfg(feature = "cluster")]
    pub fn cluster_builder<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> RedisBuilder {
        RedisBuilder::new(Source::ClusterUrls(
            nodes.into_iter().map(Into::into).collect(),
        ))
    }

    /// A builder over the application's own cluster connection.
    #[cfg(feature = "cluster")]
    pub fn builder_with_cluster(conn: redis::cluster_async::ClusterConnection) -> RedisBuilder {
        RedisBuilder::new(Source::Cluster(conn))
    }

    /// The key prefix in use.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// Reads `maxmemory-policy` and warns if it can evict held locks. Best effort: managed
    /// Redis services often disable `CONFIG`, which is only logged at debug level.
    async fn check_eviction_policy(&self) {
        let result = self
            .run(Operation::Open, |mut c| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async::<Value>(&mut c)
                    .await
            })
            .await;
        match result {
            Ok(value) => {
                let mut policies = Vec::new();
                collect_strings(&value, &mut policies);
                for policy in policies.iter().filter(|p| *p != "maxmemory-policy") {
                    if policy != "noeviction" {
                        tracing::warn!(
                            backend = BACKEND,
                            policy = %policy,
                            "Redis maxmemory-policy is `{policy}`: under memory pressure Redis \
                             may evict held locks and fence counters; set \
                             `maxmemory-policy noeviction`"
                        );
                    }
                }
            }
            Err(e) => tracing::debug!(backend = BACKEND, error = %e,
                "could not read maxmemory-policy (CONFIG disabled?)"),
        }
    }

    /// Loads every script now (`SCRIPT LOAD`), so the first calls run `EVALSHA` directly
    /// instead of paying a `NOSCRIPT` round trip each. Best effort: a failure here only costs
    /// that round trip later (the `redis` crate loads on `NOSCRIPT`).
    async fn preload_scripts(&self) {
        let s = &self.scripts;
        for script in [
            &s.acquire, &s.release, &s.extend, &s.append, &s.enqueue, &s.dequeue, &s.depth,
        ] {
            let result = self
                .run(Operation::Open, |mut c| async move {
                    script.prepare_invoke().load_async(&mut c).await
                })
                .await;
            if let Err(e) = result {
                tracing::debug!(backend = BACKEND, error = %e, "could not preload a script");
                return;
            }
        }
    }

    fn conn(&self, op: Operation) -> Result<Conn> {
        self.open.check(BACKEND, op)?;
        let guard = self.conn.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| Error::closed(BACKEND, op))
    }

    /// Runs one call on a clone of the multiplexed connection, bounded by the command timeout.
    async fn run<T, F, Fut>(&self, op: Operation, f: F) -> Result<T>
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

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|v| collect_strings(v, out))
        }
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            collect_strings(k, out);
            collect_strings(v, out);
        }),
        _ => {}
    }
}

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Subscriptions for RedisState {
    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let op = Operation::Subscribe;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.open.check(BACKEND, op)?;
        let key = self.keys.subscriptions();
        self.run(op, |mut c| async move {
            redis::cmd("SADD")
                .arg(&key)
                .arg(thread_id)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let op = Operation::Unsubscribe;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.open.check(BACKEND, op)?;
        let key = self.keys.subscriptions();
        self.run(op, |mut c| async move {
            redis::cmd("SREM")
                .arg(&key)
                .arg(thread_id)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let op = Operation::IsSubscribed;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.open.check(BACKEND, op)?;
        let key = self.keys.subscriptions();
        self.run(op, |mut c| async move {
            redis::cmd("SISMEMBER")
                .arg(&key)
                .arg(thread_id)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl InspectLocks for RedisState {
    /// Reads the lock key and its fence counter in one read-only script, in this adapter's
    /// layout (so cluster-tagged locks are found too). `fence` is the last fence issued for
    /// the id: the holder's, unless the lock was taken by a client that does not fence (a
    /// TypeScript bot), in which case it is `None` or older.
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        validate::lock_info(BACKEND, lock_id)?;
        let op = Operation::LockInfo;
        let (lock_key, fence_key) = (self.keys.lock(lock_id), self.keys.fence(lock_id));
        let before = now_ms();
        let row: Option<(String, i64, Option<u64>)> = self
            .run(op, |mut c| async move {
                self.scripts
                    .inspect
                    .key(&lock_key)
                    .key(&fence_key)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(row.map(|(token, pttl_ms, fence)| LockInfo {
            token,
            // PTTL -1 means no expiry: never written so by this backend, shown as "never"
            // rather than invented.
            expires_at: u64::try_from(pttl_ms).map_or(u64::MAX, |ms| before.saturating_add(ms)),
            fence,
        }))
    }
}

impl RedisState {
    /// Deletes every key under this adapter's prefix (`<prefix>:*`: SCAN + DEL in batches,
    /// never `KEYS`, so a large server is not blocked) and returns how many it removed.
    ///
    /// For tearing down test or staging data. Fence counters go too, so fences for this
    /// prefix restart from 1 afterwards: never run it under live bots. Single node only; on
    /// a cluster it is an invalid-input error (SCAN would have to visit every master).
    pub async fn delete_all_keys(&self) -> Result<u64> {
        let op = Operation::Maintenance;
        if self.keys.is_cluster() {
            return Err(Error::invalid_input(
                "delete_all_keys works on a single node only; on a cluster, flush the test \
                 prefix per master",
            )
            .context(BACKEND, op));
        }
        // The prefix is validated to `[A-Za-z0-9._-]`, so it holds no glob metacharacters,
        // and the `:` keeps prefix `a` from matching prefix `ab`'s keys.
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let pattern = pattern.as_str();
            let (next, keys): (u64, Vec<String>) = self
                .run(op, |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let keys = &keys;
                removed += self
                    .run(op, |mut c| async move {
                        redis::cmd("DEL").arg(keys).query_async::<u64>(&mut c).await
                    })
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Locks for RedisState {
    async fn acquire_lock(&self, lock_id: &str, ttl: Duration) -> Result<Option<Lock>> {
        validate::acquire_lock(BACKEND, lock_id, ttl)?;
        let op = Operation::AcquireLock;
        self.open.check(BACKEND, op)?;
        let token = new_lock_token().map_err(|e| e.context(BACKEND, op))?;
        // Contract rule 12: the expiry we report is computed from the clock read before the
        // request, so it can only be earlier than the server's own (PX from arrival).
        let expires_at = validate::expiry_ms(now_ms(), ttl).map_err(|e| e.context(BACKEND, op))?;
        let ttl_ms = validate::duration_ms(ttl);
        let (lock_key, fence_key) = (self.keys.lock(lock_id), self.keys.fence(lock_id));
        let token_ref = token.as_str();
        let fence: u64 = self
            .run(op, |mut c| async move {
                self.scripts
                    .acquire
                    .key(&lock_key)
                    .key(&fence_key)
                    .arg(token_ref)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        // Fences start at 1: 0 is the script's "held by someone else".
        Ok((fence > 0).then(|| Lock {
            thread_id: lock_id.to_owned(),
            token,
            expires_at,
            fence,
        }))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        validate::release_lock(BACKEND, lock)?;
        let op = Operation::ReleaseLock;
        self.open.check(BACKEND, op)?;
        let key = self.keys.lock(&lock.thread_id);
        self.run(op, |mut c| async move {
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

    async fn extend_lock(&self, lock: &Lock, ttl: Duration) -> Result<bool> {
        validate::extend_lock(BACKEND, lock, ttl)?;
        let op = Operation::ExtendLock;
        self.open.check(BACKEND, op)?;
        let key = self.keys.lock(&lock.thread_id);
        // Validated non-zero: `PEXPIRE key 0` would delete the lock and still answer 1.
        let ttl_ms = validate::duration_ms(ttl);
        let extended: i64 = self
            .run(op, |mut c| async move {
                self.scripts
                    .extend
                    .key(&key)
                    .arg(&lock.token)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(extended == 1)
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        validate::force_release_lock(BACKEND, lock_id)?;
        let op = Operation::ForceReleaseLock;
        self.open.check(BACKEND, op)?;
        // Only the lock key: the fence counter stays, so the next holder's fence is greater.
        let key = self.keys.lock(lock_id);
        self.run(op, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
        })
        .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Cache for RedisState {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let op = Operation::Get;
        validate::cache_key(BACKEND, op, key)?;
        self.open.check(BACKEND, op)?;
        let key = self.keys.cache(key);
        self.run(op, |mut c| async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let op = Operation::Set;
        validate::set(BACKEND, op, key, value, ttl)?;
        self.open.check(BACKEND, op)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.cache(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(validate::duration_ms(ttl));
        }
        self.run(
            op,
            |mut c| async move { cmd.query_async::<()>(&mut c).await },
        )
        .await
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let op = Operation::SetIfNotExists;
        validate::set(BACKEND, op, key, value, ttl)?;
        self.open.check(BACKEND, op)?;
        // Redis treats an expired key as absent, so `SET NX` is rule 5 in one command.
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.cache(key)).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(validate::duration_ms(ttl));
        }
        let reply: Option<String> = self
            .run(op, |mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let op = Operation::Delete;
        validate::cache_key(BACKEND, op, key)?;
        self.open.check(BACKEND, op)?;
        let key = self.keys.cache(key);
        self.run(op, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
        })
        .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Lists for RedisState {
    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        validate::append_to_list(BACKEND, key, value, &options)?;
        let op = Operation::AppendToList;
        self.open.check(BACKEND, op)?;
        let key = self.keys.list(key);
        let max_length = options
            .max_length
            .map(|n| n.to_string())
            .unwrap_or_default();
        let ttl_ms = options
            .ttl
            .map(|t| validate::duration_ms(t).to_string())
            .unwrap_or_default();
        self.run(op, |mut c| async move {
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
        let op = Operation::GetList;
        validate::cache_key(BACKEND, op, key)?;
        self.open.check(BACKEND, op)?;
        let key = self.keys.list(key);
        self.run(op, |mut c| async move {
            redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async::<Vec<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Queues for RedisState {
    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        validate::enqueue(BACKEND, thread_id, &entry, max_size)?;
        let op = Operation::Enqueue;
        self.open.check(BACKEND, op)?;
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
        validate::thread_id(BACKEND, op, thread_id)?;
        self.open.check(BACKEND, op)?;
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
            .then(|| serde_json::from_slice::<QueueEntry>(&raw).ok())
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
        let op = Operation::QueueDepth;
        validate::thread_id(BACKEND, op, thread_id)?;
        self.open.check(BACKEND, op)?;
        let key = self.keys.queue(thread_id);
        let depth: u64 = self
            .run(op, |mut c| async move {
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

/// The start of a stored value, for error messages.
fn snippet(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(120)]).into_owned();
    if raw.len() > 120 {
        format!("{text}...")
    } else {
        text
    }
}

#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl StateAdapter for RedisState {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn connect(&self) -> Result<()> {
        let op = Operation::Connect;
        self.open.check(BACKEND, op)?;
        self.run(op, |mut c| async move {
            redis::cmd("PING").query_async::<()>(&mut c).await
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        if self.open.close() {
            // Dropping our handle closes the connection once no call is using a clone of it.
            let mut guard = self.conn.write().unwrap_or_else(|p| p.into_inner());
            guard.take();
        }
        Ok(())
    }
}
