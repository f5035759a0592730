//! Connection setup: [`RedisBuilder`] and the constructors on [`RedisBackend`].

use std::time::Duration;

use chat_state_core::{Error, Operation, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::conn::Conn;
use crate::{
    BACKEND, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREFIX, RedisBackend,
    RedisState, error, validate_prefix,
};

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

/// Configures and connects a [`RedisState`]. Start from [`RedisBackend::builder`] (a URL),
/// [`RedisBackend::builder_with_client`] (your own `redis::Client`),
/// [`RedisBackend::builder_with_manager`] (your own connection manager) or, with the
/// `cluster` feature, `RedisBackend::cluster_builder` / `RedisBackend::builder_with_cluster`.
pub struct RedisBuilder {
    source: Source,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    connections: usize,
}

/// Most connections [`RedisBuilder::connections`] accepts: past a few, more sockets only add
/// driver tasks competing for the same cores.
pub const MAX_CONNECTIONS: usize = 16;

impl std::fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisBuilder")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to `url` (`redis://[user:password@]host:port/db`, or `rediss://` with the `tls`
    /// feature) with the defaults: prefix `chat-sdk`,
    /// 5 s command and connect timeouts.
    pub async fn connect(url: &str) -> Result<RedisState> {
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
}

impl RedisBuilder {
    fn new(source: Source) -> Self {
        Self {
            source,
            prefix: DEFAULT_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connections: 1,
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

    /// How many multiplexed connections to a single node the adapter opens (default 1, at
    /// most [`MAX_CONNECTIONS`]). Every command on one key always goes over the same
    /// connection (chosen by a hash of the key), so commands on a key keep their order; with
    /// more than one, replies for different keys are read by several driver tasks at once,
    /// which lets a multi-threaded runtime spread the client's work over its cores.
    ///
    /// Applies to URLs and [`RedisBackend::builder_with_client`]; an application's own
    /// connection manager or cluster connection is used as the one connection.
    pub fn connections(mut self, count: usize) -> Self {
        self.connections = count;
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
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(Error::invalid_input(format!(
                "connections is {}; pass 1 to {MAX_CONNECTIONS}",
                self.connections
            ))
            .context(BACKEND, op));
        }
        let (conns, cluster) = match self.source {
            Source::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| {
                    Error::invalid_input(format!(
                        "invalid Redis URL (expected redis://[user:password@]host:port/db, \
                         or rediss://... with the `tls` feature): {e}"
                    ))
                    .context(BACKEND, op)
                })?;
                (
                    managers(client, self.connect_timeout, self.connections).await?,
                    false,
                )
            }
            Source::Client(client) => (
                managers(*client, self.connect_timeout, self.connections).await?,
                false,
            ),
            Source::Manager(m) => (vec![Conn::Single(m)], false),
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
                (vec![Conn::Cluster(conn)], true)
            }
            #[cfg(feature = "cluster")]
            Source::Cluster(c) => (vec![Conn::Cluster(c)], true),
        };
        let backend = RedisBackend::new(conns, self.prefix, cluster, self.command_timeout);
        backend.check_eviction_policy().await;
        backend.preload_scripts().await;
        Ok(RedisState::new(backend))
    }
}

/// Commands one connection queues for its socket before a caller waits.
const PIPELINE_BUFFER: usize = 1024;

/// `count` connection managers on `client`, each connected within `connect_timeout`.
async fn managers(
    client: redis::Client,
    connect_timeout: Duration,
    count: usize,
) -> Result<Vec<Conn>> {
    let op = Operation::Open;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        // The adapter bounds every call by its command timeout; a response timeout here too
        // would arm a second timer per command.
        .set_response_timeout(None)
        // Room for every call of a busy bot to queue for the socket without waiting for a
        // slot (the default, 50, parks callers and wakes them again at 64 in flight).
        .set_pipeline_buffer_size(PIPELINE_BUFFER)
        // Reconnect attempts back off from 10 ms up to 1 s, so a server that comes back is
        // picked up within about a second.
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_secs(1));
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let fut = ConnectionManager::new_with_config(client.clone(), config.clone());
        let manager = match tokio::time::timeout(connect_timeout, fut).await {
            Ok(r) => r.map_err(|e| error::from_redis(op, e))?,
            Err(_) => return Err(error::timed_out(op, connect_timeout)),
        };
        conns.push(Conn::Single(manager));
    }
    Ok(conns)
}
