//! Opening the durable backends named by a URL.

#[allow(unused_imports)] // which ones are used depends on the backend features
use std::sync::Arc;

#[allow(unused_imports)]
use chat_state_core::{Error, ErrorKind, Operation, Result, StateAdapter};

/// `sqlite://PATH?prefix=P`: the file is created (with its schema) if missing.
#[cfg(feature = "sqlite")]
pub(crate) async fn open_sqlite(path: &str, prefix: Option<&str>) -> Result<Arc<dyn StateAdapter>> {
    let mut builder = chat_state_sqlite::SqliteBackend::builder(path);
    if let Some(prefix) = prefix {
        builder = builder.key_prefix(prefix);
    }
    Ok(Arc::new(builder.open().await?))
}

/// `redis://...?prefix=P` (single node) or `redis+cluster://h1,h2?prefix=P`.
#[cfg(feature = "redis")]
pub(crate) async fn open_redis(
    nodes: &[String],
    cluster: bool,
    prefix: Option<&str>,
) -> Result<Arc<dyn StateAdapter>> {
    Ok(Arc::new(redis_state(nodes, cluster, prefix).await?))
}

/// The concrete Redis adapter for `open_redis`, also used for lock inspection.
#[cfg(feature = "redis")]
pub(crate) async fn redis_state(
    nodes: &[String],
    cluster: bool,
    prefix: Option<&str>,
) -> Result<chat_state_redis::RedisState> {
    let mut builder = if cluster {
        #[cfg(feature = "redis-cluster")]
        {
            chat_state_redis::RedisBackend::cluster_builder(nodes.iter().cloned())
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
        chat_state_redis::RedisBackend::builder(url.clone())
    };
    if let Some(prefix) = prefix {
        builder = builder.key_prefix(prefix);
    }
    builder.connect().await
}

/// `postgres://...?prefix=P&connect_timeout=S`.
#[cfg(feature = "postgres")]
pub(crate) async fn open_postgres(
    url: &str,
    prefix: Option<&str>,
    connect_timeout: Option<std::time::Duration>,
) -> Result<Arc<dyn StateAdapter>> {
    Ok(Arc::new(
        postgres_builder(url, prefix, connect_timeout)
            .connect()
            .await?,
    ))
}

/// The Postgres builder for a parsed `postgres://` URL, also used for lock inspection.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_builder(
    url: &str,
    prefix: Option<&str>,
    connect_timeout: Option<std::time::Duration>,
) -> chat_state_postgres::PostgresBuilder {
    let mut builder = chat_state_postgres::PostgresBackend::builder(url);
    if let Some(prefix) = prefix {
        builder = builder.key_prefix(prefix);
    }
    if let Some(timeout) = connect_timeout {
        builder = builder.connect_timeout(timeout);
    }
    builder
}
