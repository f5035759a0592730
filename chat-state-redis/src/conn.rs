//! The connections of one adapter: one connection type over a single node or a cluster, and
//! the slots that hold them, which replace a connection that stopped answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
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
enum Opener {
    /// A new connection manager, which connects on first use.
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    /// A new cluster connection, which has to be built (slots fetched) before it replaces the
    /// old one: a background task tries every `attempt` until one is built.
    #[cfg(feature = "cluster")]
    Cluster {
        client: redis::cluster::ClusterClient,
        attempt: Duration,
        /// Whether that task is running, so many timeouts start one.
        rebuilding: Arc<std::sync::atomic::AtomicBool>,
    },
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
    /// The connection and its generation, bumped by every replacement. Shared with the task
    /// that rebuilds a cluster connection.
    current: Arc<RwLock<(Conn, u64)>>,
    /// `None` for a connection the application handed in: the adapter cannot rebuild it.
    opener: Option<Opener>,
    replacements: Arc<AtomicU64>,
}

impl Slot {
    /// A slot over a connection the adapter cannot rebuild (the application's own manager, a
    /// cluster connection).
    pub(crate) fn fixed(conn: Conn) -> Self {
        Self {
            current: Arc::new(RwLock::new((conn, 0))),
            opener: None,
            replacements: Arc::default(),
        }
    }

    /// A slot over `manager`, replaced when needed by a new manager on `client` with `config`.
    pub(crate) fn replaceable(
        manager: ConnectionManager,
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Self {
        Self {
            current: Arc::new(RwLock::new((Conn::Single(manager), 0))),
            opener: Some(Opener::Single { client, config }),
            replacements: Arc::default(),
        }
    }

    /// A slot over a cluster connection built from `client`, rebuilt from it (one attempt at
    /// most every `attempt`) after a timeout.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(
        conn: redis::cluster_async::ClusterConnection,
        client: redis::cluster::ClusterClient,
        attempt: Duration,
    ) -> Self {
        Self {
            current: Arc::new(RwLock::new((Conn::Cluster(conn), 0))),
            opener: Some(Opener::Cluster {
                client,
                attempt,
                rebuilding: Arc::default(),
            }),
            replacements: Arc::default(),
        }
    }

    /// A clone of the connection, and its generation (for [`Slot::replace`]).
    pub(crate) fn get(&self) -> (Conn, u64) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.0.clone(), guard.1)
    }

    /// Replaces the connection if it is still generation `seen` (so the many calls that time
    /// out together on a dead connection replace it once). A cluster connection is replaced
    /// once a new one is built, in the background.
    pub(crate) fn replace(&self, seen: u64) {
        match &self.opener {
            None => {}
            Some(Opener::Single { client, config }) => {
                let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
                if guard.1 != seen {
                    return;
                }
                match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
                    Ok(manager) => {
                        *guard = (Conn::Single(manager), seen + 1);
                        drop(guard);
                        replaced(&self.replacements);
                    }
                    // Only a configuration the first connection already passed can fail here.
                    Err(e) => tracing::warn!(backend = crate::BACKEND, error = %e,
                        "could not replace a Redis connection that stopped answering"),
                }
            }
            #[cfg(feature = "cluster")]
            Some(Opener::Cluster {
                client,
                attempt,
                rebuilding,
            }) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                if rebuilding.swap(true, Ordering::AcqRel) {
                    return;
                }
                let (client, attempt, rebuilding) = (client.clone(), *attempt, rebuilding.clone());
                let current = Arc::downgrade(&self.current);
                let replacements = self.replacements.clone();
                runtime.spawn(async move {
                    // Until a new connection is built, or the adapter is gone, or someone
                    // else replaced it: the old connection serves meanwhile.
                    while let Some(slot) = current.upgrade() {
                        if slot.read().unwrap_or_else(|p| p.into_inner()).1 != seen {
                            break;
                        }
                        drop(slot);
                        let started = tokio::time::Instant::now();
                        let built =
                            tokio::time::timeout(attempt, client.get_async_connection()).await;
                        if let Ok(Ok(conn)) = built {
                            if let Some(slot) = current.upgrade() {
                                let mut guard = slot.write().unwrap_or_else(|p| p.into_inner());
                                if guard.1 == seen {
                                    *guard = (Conn::Cluster(conn), seen + 1);
                                    drop(guard);
                                    replaced(&replacements);
                                }
                            }
                            break;
                        }
                        tokio::time::sleep_until(started + attempt).await;
                    }
                    rebuilding.store(false, Ordering::Release);
                });
            }
        }
    }

    /// How many times the connection was replaced.
    pub(crate) fn replacements(&self) -> u64 {
        self.replacements.load(Ordering::Relaxed)
    }
}

/// Counts and logs one replacement.
fn replaced(count: &AtomicU64) {
    count.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        backend = crate::BACKEND,
        "a Redis connection stopped answering within the command timeout; replaced it"
    );
}
