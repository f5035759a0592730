//! Connection setup: [`RedisBuilder`] and the constructors on [`RedisBackend`].

use std::time::Duration;

use chat_state_core::{Error, Operation, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::conn::{Conn, Slot, TcpOptions};
use crate::{
    BACKEND, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PREFIX, DEFAULT_TCP_KEEPALIVE, DEFAULT_TCP_USER_TIMEOUT, RedisBackend, RedisState,
    error, validate_prefix,
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
    connect_attempt_timeout: Duration,
    connections: usize,
    tcp: TcpOptions,
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
            .field("connect_attempt_timeout", &self.connect_attempt_timeout)
            .field("connections", &self.connections)
            .field("tcp", &self.tcp)
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
            connect_attempt_timeout: DEFAULT_CONNECT_ATTEMPT_TIMEOUT,
            connections: 1,
            tcp: TcpOptions {
                nodelay: true,
                keepalive: Some(DEFAULT_TCP_KEEPALIVE),
                user_timeout: Some(DEFAULT_TCP_USER_TIMEOUT),
            },
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

    /// How long one attempt to open a connection (TCP, TLS, `HELLO`/`AUTH`) may take before a
    /// new attempt starts, within [`connect_timeout`](Self::connect_timeout) at connect and
    /// indefinitely when reconnecting. Default 500 ms: short, because an attempt whose first
    /// packet was lost waits for the kernel's SYN retransmission (1 s, then 3 s, 7 s...)
    /// while a new attempt is answered at once, so after a partition heals the next attempt
    /// gets through within about this time. Raise it if your link needs longer to set up a
    /// connection (a TLS handshake over a long-haul link).
    pub fn connect_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.connect_attempt_timeout = timeout;
        self
    }

    /// `TCP_NODELAY` on the connections the adapter opens (default `true`). Nagle's
    /// algorithm holds a small command back until the previous one is acknowledged, which
    /// on a link with a few milliseconds of latency halves the throughput of concurrent calls.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp.nodelay = nodelay;
        self
    }

    /// TCP keepalive on the connections the adapter opens: probes after this long without
    /// traffic, then every third of it, three times (default 10 s; `None` turns it off). It
    /// finds a dead link while the adapter is idle; a busy adapter notices through its
    /// command timeout first.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp.keepalive = idle;
        self
    }

    /// `TCP_USER_TIMEOUT` on the connections the adapter opens (Linux): how long sent data
    /// may stay unacknowledged before the kernel drops the connection (default 10 s; `None`
    /// leaves the kernel's default, about 15 minutes of retransmissions).
    pub fn tcp_user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.tcp.user_timeout = timeout;
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
            ("command_timeout", Some(self.command_timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
            (
                "connect_attempt_timeout",
                Some(self.connect_attempt_timeout),
            ),
            ("tcp_keepalive", self.tcp.keepalive),
            ("tcp_user_timeout", self.tcp.user_timeout),
        ]
        .into_iter()
        .filter_map(|(what, t)| Some((what, t?)))
        {
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
        let (conns, cluster) = match &self.source {
            Source::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| {
                    Error::invalid_input(format!(
                        "invalid Redis URL (expected redis://[user:password@]host:port/db, \
                         or rediss://... with the `tls` feature): {e}"
                    ))
                    .context(BACKEND, op)
                })?;
                (self.managers(client).await?, false)
            }
            Source::Client(client) => (self.managers((**client).clone()).await?, false),
            Source::Manager(m) => (vec![Slot::fixed(Conn::Single(m.clone()))], false),
            #[cfg(feature = "cluster")]
            Source::ClusterUrls(urls) => {
                let attempt = self.connect_attempt_timeout.min(self.connect_timeout);
                let client =
                    redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(attempt)
                        // No response timeout, as for a single node: the adapter's command
                        // timeout must be the timer that fires, because only it replaces a
                        // connection that went silent. With both at one second the client's
                        // own timer won half the races, and its reconnect took longer than
                        // the replacement does.
                        .tcp_settings(self.tcp.settings())
                        .build()
                        .map_err(|e| {
                            Error::invalid_input(format!("invalid Redis Cluster node URLs: {e}"))
                                .context(BACKEND, op)
                        })?;
                let conn = cluster_connection(&client, self.connect_timeout, attempt).await?;
                (vec![Slot::cluster(conn, client, attempt)], true)
            }
            #[cfg(feature = "cluster")]
            Source::Cluster(c) => (vec![Slot::fixed(Conn::Cluster(c.clone()))], true),
        };
        let backend = RedisBackend::new(conns, self.prefix, cluster, self.command_timeout);
        backend.check_eviction_policy().await;
        backend.preload_scripts().await;
        Ok(RedisState::new(backend))
    }
}

/// A connection to the cluster, retrying attempts of at most `attempt` each within
/// `connect_timeout` (as a single node's connection manager does).
#[cfg(feature = "cluster")]
async fn cluster_connection(
    client: &redis::cluster::ClusterClient,
    connect_timeout: Duration,
    attempt: Duration,
) -> Result<redis::cluster_async::ClusterConnection> {
    let op = Operation::Open;
    let deadline = tokio::time::Instant::now() + connect_timeout;
    loop {
        let started = tokio::time::Instant::now();
        let last = match tokio::time::timeout(attempt, client.get_async_connection()).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => error::from_redis(op, e),
            Err(_) => error::timed_out(op, attempt),
        };
        let next = (started + attempt).max(tokio::time::Instant::now() + RETRY_PAUSE);
        if next >= deadline {
            return Err(last);
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Pause between two failed connection attempts to a cluster.
#[cfg(feature = "cluster")]
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Commands one connection queues for its socket before a caller waits.
const PIPELINE_BUFFER: usize = 1024;

impl RedisBuilder {
    /// The connection managers on `client` (with this builder's TCP settings), each connected
    /// within the connect timeout, in slots that can replace them.
    async fn managers(&self, client: redis::Client) -> Result<Vec<Slot>> {
        let op = Operation::Open;
        let info = client
            .get_connection_info()
            .clone()
            .set_tcp_settings(self.tcp.settings());
        let client = redis::Client::open(info).map_err(|e| error::from_redis(op, e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_attempt_timeout.min(self.connect_timeout)))
            // The adapter bounds every call by its command timeout; a response timeout here
            // too would arm a second timer per command.
            .set_response_timeout(None)
            // Room for every call of a busy bot to queue for the socket without waiting for a
            // slot (the default, 50, parks callers and wakes them again at 64 in flight).
            .set_pipeline_buffer_size(PIPELINE_BUFFER)
            // Attempts follow each other within 10-100 ms: with the short attempt timeout, a
            // server or link that comes back is used within about half a second.
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let mut slots = Vec::with_capacity(self.connections);
        for _ in 0..self.connections {
            let fut = ConnectionManager::new_with_config(client.clone(), config.clone());
            let manager = match tokio::time::timeout(self.connect_timeout, fut).await {
                Ok(r) => r.map_err(|e| error::from_redis(op, e))?,
                Err(_) => return Err(error::timed_out(op, self.connect_timeout)),
            };
            slots.push(Slot::replaceable(manager, client.clone(), config.clone()));
        }
        Ok(slots)
    }
}
