//! The connections of one adapter: one connection type over a single node or a cluster, and
//! the slots that hold them, which replace a connection that stopped answering.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A cheaply cloneable, multiplexed connection: every clone shares one socket (per node).
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single node, through the connection manager (reconnects in the background).
    Single(ConnectionManager),
    /// A cluster, through the async cluster client (follows MOVED/ASK, refreshes slots).
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// TCP settings of every connection the adapter opens itself.
#[derive(Clone, Debug)]
pub(crate) struct TcpOptions {
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) user_timeout: Option<Duration>,
}

impl TcpOptions {
    pub(crate) fn settings(&self) -> TcpSettings {
        let mut settings = TcpSettings::default()
            .set_nodelay(self.nodelay)
            // Closing a connection the adapter gave up on resets it instead of leaving its
            // unsent commands to the kernel: a command that timed out must not reach Redis
            // later, after the adapter has cleaned up after it (see `Slot::replace`).
            .set_linger_time(Duration::ZERO);
        if let Some(idle) = self.keepalive {
            // Probes after `idle` of silence, then every third of it, three times: a dead
            // idle link is noticed within about twice `idle`.
            let interval = (idle / 3).max(Duration::from_secs(1));
            settings = settings.set_keepalive(
                TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(interval)
                    .with_retries(3),
            );
        }
        if let Some(timeout) = self.user_timeout {
            settings = settings.set_user_timeout(timeout);
        }
        settings
    }
}

/// How a slot opens a replacement connection.
struct Opener {
    client: redis::Client,
    config: ConnectionManagerConfig,
}

/// One of the adapter's connections, with the means to replace it.
///
/// A connection whose peer went silent (a partition, a half-open link) keeps every command
/// waiting on the kernel's retransmission backoff, which grows to minutes, while a fresh
/// connection would answer at once; the connection manager only reconnects after an error,
/// which a silent link never gives. So when a call times out the slot swaps in a new
/// manager, which connects on first use; calls already waiting on the old one finish (or time
/// out) on it, and the old socket is reset once the last of them is gone.
pub(crate) struct Slot {
    /// The connection and its generation, bumped by every replacement.
    current: RwLock<(Conn, u64)>,
    /// `None` for a connection the application handed in: the adapter cannot rebuild it.
    opener: Option<Opener>,
    replacements: AtomicU64,
}

impl Slot {
    /// A slot over a connection the adapter cannot rebuild (the application's own manager, a
    /// cluster connection).
    pub(crate) fn fixed(conn: Conn) -> Self {
        Self {
            current: RwLock::new((conn, 0)),
            opener: None,
            replacements: AtomicU64::new(0),
        }
    }

    /// A slot over `manager`, replaced when needed by a new manager on `client` with `config`.
    pub(crate) fn replaceable(
        manager: ConnectionManager,
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Self {
        Self {
            current: RwLock::new((Conn::Single(manager), 0)),
            opener: Some(Opener { client, config }),
            replacements: AtomicU64::new(0),
        }
    }

    /// A clone of the connection, and its generation (for [`Slot::replace`]).
    pub(crate) fn get(&self) -> (Conn, u64) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.0.clone(), guard.1)
    }

    /// Replaces the connection if it is still generation `seen` (so the many calls that time
    /// out together on a dead connection replace it once). Returns whether it did.
    pub(crate) fn replace(&self, seen: u64) -> bool {
        let Some(opener) = &self.opener else {
            return false;
        };
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if guard.1 != seen {
            return false;
        }
        match ConnectionManager::new_lazy_with_config(opener.client.clone(), opener.config.clone())
        {
            Ok(manager) => {
                *guard = (Conn::Single(manager), seen + 1);
                drop(guard);
                self.replacements.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    backend = crate::BACKEND,
                    "a Redis connection stopped answering within the command timeout; \
                     replaced it with a new one"
                );
                true
            }
            Err(e) => {
                // Only a configuration the first connection already passed can fail here.
                tracing::warn!(backend = crate::BACKEND, error = %e,
                    "could not replace a Redis connection that stopped answering");
                false
            }
        }
    }

    /// How many times the connection was replaced.
    pub(crate) fn replacements(&self) -> u64 {
        self.replacements.load(Ordering::Relaxed)
    }
}
