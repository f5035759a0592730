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

/// Reads a lock row of the SQLite schema (`chat_state_locks`, keyed by the key prefix and
/// lock id) over its own read-only connection, after checking the file's schema version is
/// the one this build of `chat-state-sqlite` writes. Never creates, migrates or writes.
#[cfg(feature = "sqlite")]
pub(crate) struct SqliteLockReader {
    pool: sqlx::SqlitePool,
    prefix: String,
}

#[cfg(feature = "sqlite")]
fn sqlite_read_error(what: &str, e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Backend, format!("{what}: {e}"))
        .context("sqlite", Operation::Get)
        .with_source(e)
}

#[cfg(feature = "sqlite")]
impl SqliteLockReader {
    pub(crate) async fn open(path: &str, prefix: Option<&str>) -> Result<Self> {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| sqlite_read_error(&format!("cannot open {path} read-only"), e))?;
        let version: Option<(i64,)> =
            sqlx::query_as("SELECT value FROM chat_state_meta WHERE name = 'schema_version'")
                .fetch_optional(&pool)
                .await
                .map_err(|e| {
                    sqlite_read_error(&format!("{path} has no chat-state schema to read"), e)
                })?;
        let expected = chat_state_sqlite::SCHEMA_VERSION;
        if version.map(|(v,)| v) != Some(expected) {
            return Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "{path} has chat-state schema version {version:?}; this build reads \
                     version {expected}"
                ),
            )
            .context("sqlite", Operation::Get));
        }
        Ok(Self {
            pool,
            prefix: prefix.unwrap_or("").to_string(),
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
        .bind(&self.prefix)
        .bind(lock_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| sqlite_read_error("cannot read the lock row", e))?;
        Ok(row.map(|(token, expires_at, fence)| LockInfo {
            token,
            expires_at: u64::try_from(expires_at).unwrap_or(0),
            fence: u64::try_from(fence).ok(),
        }))
    }
}

/// `redis://...?prefix=P` (single node) or `redis+cluster://h1,h2?prefix=P`.
#[cfg(feature = "redis")]
pub(crate) async fn open_redis(
    nodes: &[String],
    cluster: bool,
    prefix: Option<&str>,
) -> Result<Arc<dyn StateAdapter>> {
    let mut builder = if cluster {
        #[cfg(feature = "redis-cluster")]
        {
            chat_state_redis::RedisState::cluster_builder(nodes.iter().cloned())
        }
        #[cfg(not(feature = "redis-cluster"))]
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "redis+cluster:// needs the `redis-cluster` cargo feature of chat-state",
            )
            .context("chat-state", Operation::Open));
        }
    } else {
        let [url] = nodes else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a redis:// URL names one server; use redis+cluster:// for several nodes",
            )
            .context("chat-state", Operation::Open));
        };
        chat_state_redis::RedisState::builder(url.clone())
    };
    if let Some(prefix) = prefix {
        builder = builder.key_prefix(prefix);
    }
    Ok(Arc::new(builder.connect().await?))
}

/// Reads a lock of the Redis layout (single node: `<p>:lock:<id>` holds the token with a
/// `PX` expiry, `<p>:fence:<id>` the last fence issued) in one `MULTI` snapshot. Read-only.
#[cfg(feature = "redis")]
pub(crate) struct RedisLockReader {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

#[cfg(feature = "redis")]
impl RedisLockReader {
    pub(crate) async fn open(url: &str, prefix: Option<&str>) -> Result<Self> {
        let prefix = prefix
            .unwrap_or(chat_state_redis::DEFAULT_PREFIX)
            .to_string();
        chat_state_redis::validate_prefix("redis", &prefix)?;
        let unavailable = |e: redis::RedisError| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot connect to Redis to read the lock: {e}"),
            )
            .context("redis", Operation::Open)
            .with_source(e)
        };
        let client = redis::Client::open(url).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("bad Redis URL: {e}"))
                .context("redis", Operation::Open)
                .with_source(e)
        })?;
        let conn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| {
            Error::new(ErrorKind::Timeout, "Redis did not answer within 5 s")
                .context("redis", Operation::Open)
        })?
        .map_err(unavailable)?;
        Ok(Self { conn, prefix })
    }
}

#[cfg(feature = "redis")]
#[async_trait::async_trait]
impl InspectLocks for RedisLockReader {
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        chat_state_core::validate::key("redis", Operation::Get, "lock id", lock_id)?;
        let lock_key = format!("{}:lock:{lock_id}", self.prefix);
        let fence_key = format!("{}:fence:{lock_id}", self.prefix);
        let mut conn = self.conn.clone();
        let before = SystemClock.now_ms();
        let (token, pttl, fence): (Option<String>, i64, Option<u64>) = redis::pipe()
            .atomic()
            .get(&lock_key)
            .pttl(&lock_key)
            .get(&fence_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Backend, format!("cannot read {lock_key}: {e}"))
                    .context("redis", Operation::Get)
                    .with_source(e)
            })?;
        // PTTL is -2 when the key is gone and -1 when it has no expiry (never written so by
        // this backend, but shown as such rather than invented).
        Ok(token.map(|token| LockInfo {
            token,
            expires_at: match u64::try_from(pttl) {
                Ok(ms) => before.saturating_add(ms),
                Err(_) => u64::MAX,
            },
            fence,
        }))
    }
}

/// Deletes every key of a single-node Redis whose name starts with `prefix` (SCAN + DEL in
/// batches, never `KEYS`, so a large server is not blocked). Returns how many were removed.
/// Used by `chat-state conformance` to leave no test keys (the fence counters, which never
/// expire by design, would otherwise stay forever) in the operator's deployment.
#[cfg(all(feature = "redis", feature = "cli"))]
pub(crate) async fn redis_delete_prefixed(url: &str, prefix: &str) -> Result<u64> {
    let fail = |e: redis::RedisError| {
        Error::new(ErrorKind::Backend, format!("cannot remove test keys: {e}"))
            .context("redis", Operation::Maintenance)
            .with_source(e)
    };
    let client = redis::Client::open(url).map_err(fail)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut removed = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(fail)?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(fail)?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
