//! [`RedisBackend`]: the storage logic behind [`RedisState`](crate::RedisState), one Redis
//! command or script per operation. Inputs arrive validated and the adapter open: core's
//! [`Checked`](chat_state_core::Checked) layer checks both before calling in.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chat_state_core::{
    Backend, Clock, Error, ErrorKind, ListOptions, Lock, LockRequest, Operation, QueueEntry,
    Result, SystemClock, validate,
};
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult, ServerErrorKind};

use crate::conn::{Conn, Slot};
use crate::keys::Key;
use crate::scripts::{LuaScript, Scripts};
use crate::{BACKEND, error, keys};

/// Extra lifetime of a queue key beyond its last entry's `expiresAt`, so a client whose clock
/// runs behind the server's never sees a queue vanish before its entries are due.
const QUEUE_KEY_GRACE_MS: u64 = 60_000;

/// Bytes of a decimal `u64`, the most a numeric argument takes.
const NUMBER_BYTES: usize = 20;

/// The Redis backend's storage: state shared by every bot instance (Rust or TypeScript)
/// pointed at the same Redis and key prefix.
///
/// Used as [`RedisState`](crate::RedisState) (this behind core's rule layer); create one
/// with [`RedisBackend::connect`] or [`RedisBackend::builder`]. Cheap to share
/// (`Arc<RedisState>` or `Arc<dyn StateAdapter>`): all concurrent calls are multiplexed over
/// one connection (one per node on a cluster), or over the few that
/// [`RedisBuilder::connections`](crate::RedisBuilder::connections) asks for.
pub struct RedisBackend {
    /// The multiplexed connections; `None` once closed.
    conns: RwLock<Option<Arc<[Slot]>>>,
    /// How many connections `conns` holds, to route a key without taking the lock first.
    conn_count: usize,
    pub(crate) keys: keys::Keys,
    pub(crate) scripts: Scripts,
    timeout: Duration,
    pub(crate) prefix: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let closed = self
            .conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("connections", &self.conn_count)
            .field("command_timeout", &self.timeout)
            .field("closed", &closed)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend on established connections (at least one).
    pub(crate) fn new(conns: Vec<Slot>, prefix: String, cluster: bool, timeout: Duration) -> Self {
        Self {
            conn_count: conns.len(),
            conns: RwLock::new(Some(conns.into())),
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

    /// The connections; a closed-error once [`Backend::close`] ran (which also covers the
    /// backend-specific methods, which the rule layer does not see).
    fn slots(&self, op: Operation) -> Result<Arc<[Slot]>> {
        let guard = self.conns.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| Error::closed(BACKEND, op))
    }

    /// Runs `f` on a clone of connection `index`, bounded by the command timeout, which is
    /// the only timer a call arms (the connections the builder opens have no response timeout
    /// of their own). A call that times out has the connection replaced: see [`Slot`].
    async fn call<T, F, Fut>(&self, op: Operation, index: usize, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (conn, generation) = {
            let guard = self.conns.read().unwrap_or_else(|p| p.into_inner());
            let slot = guard
                .as_ref()
                .and_then(|slots| slots.get(index))
                .ok_or_else(|| Error::closed(BACKEND, op))?;
            slot.get()
        };
        bounded(op, self.timeout, f(conn), || {
            if let Ok(slots) = self.slots(op) {
                slots[index].replace(generation);
            }
        })
        .await
    }

    /// Runs one call on the first connection: for the operator tools, where the route does
    /// not matter.
    pub(crate) async fn run<T, F, Fut>(&self, op: Operation, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.call(op, 0, f).await
    }

    /// Sends `cmd`, whose first key is `key`, on that key's connection.
    async fn query<T: FromRedisValue>(&self, op: Operation, key: Key<'_>, cmd: &Cmd) -> Result<T> {
        self.call(op, key.route(self.conn_count), |mut conn| async move {
            cmd.query_async(&mut conn).await
        })
        .await
    }

    /// Sends `cmd` (built by [`LuaScript::command`]) on `key`'s connection; see [`eval_on`].
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        op: Operation,
        key: Key<'_>,
        script: &LuaScript,
        cmd: &Cmd,
    ) -> Result<T> {
        self.call(op, key.route(self.conn_count), |mut conn| async move {
            eval_on(&mut conn, script, cmd).await
        })
        .await
    }

    /// How many times a connection of this adapter was replaced because a call on it timed
    /// out; for monitoring and tests.
    pub fn connection_replacements(&self) -> u64 {
        self.slots(Operation::Maintenance)
            .map(|slots| slots.iter().map(Slot::replacements).sum())
            .unwrap_or(0)
    }

    /// After an acquire whose outcome is unknown (it timed out, or the connection broke after
    /// it was sent), releases the lock it may have taken, in the background: Redis may have
    /// run it and only the reply was lost, and then nobody would hold the lock until its TTL
    /// ran out. The token is the one the acquire sent, so the release is a no-op if the lock
    /// was never taken, expired, or belongs to someone else.
    fn release_orphan(&self, index: usize, lock_id: &str, token: &str, ttl: Duration) {
        let Ok(slots) = self.slots(Operation::AcquireLock) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = self.keys.lock(lock_id);
        let script = self.scripts.release.clone();
        let mut cmd = script.command(1, 2, key.len() + token.len());
        cmd.arg(key).arg(token);
        let timeout = self.timeout;
        let gives_up = Instant::now() + ttl;
        let lock_id = lock_id.to_owned();
        runtime.spawn(async move {
            // The connection that carried the acquire was replaced when it timed out, and its
            // last user is gone within one command timeout; then the socket is reset with its
            // unsent bytes (linger 0), so the acquire cannot reach Redis after this release.
            tokio::time::sleep(timeout + ORPHAN_GRACE).await;
            while Instant::now() < gives_up {
                let (mut conn, generation) = slots[index].get();
                let release = async { eval_on::<i64>(&mut conn, &script, &cmd).await };
                let replace = || {
                    slots[index].replace(generation);
                };
                match bounded(Operation::ReleaseLock, timeout, release, replace).await {
                    Ok(released) => {
                        if released == 1 {
                            tracing::info!(backend = BACKEND, lock_id = %lock_id,
                                "released a lock whose acquire timed out (Redis had taken it)");
                        }
                        return;
                    }
                    Err(_) => tokio::time::sleep(ORPHAN_RETRY).await,
                }
            }
        });
    }

    /// Loads every script now, so the first calls run `EVALSHA` directly instead of paying
    /// a `NOSCRIPT` round trip each. Best effort: a failure here only costs that round trip
    /// later.
    pub(crate) async fn preload_scripts(&self) {
        for script in self.scripts.all() {
            let result = self
                .run(Operation::Open, |mut c| async move {
                    load(&mut c, script).await
                })
                .await;
            if let Err(e) = result {
                tracing::debug!(backend = BACKEND, error = %e, "could not preload a script");
                return;
            }
        }
    }
}

/// How long after the acquire's timeout its cleanup starts, beyond one command timeout.
const ORPHAN_GRACE: Duration = Duration::from_millis(100);
/// Pause between the cleanup's attempts while Redis cannot be reached.
const ORPHAN_RETRY: Duration = Duration::from_millis(100);

/// Awaits `call` for at most `timeout`; on timeout, runs `on_timeout` (which replaces the
/// connection) before returning the timeout error.
async fn bounded<T>(
    op: Operation,
    timeout: Duration,
    call: impl Future<Output = RedisResult<T>>,
    on_timeout: impl FnOnce(),
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error::from_redis(op, e)),
        Err(_) => {
            on_timeout();
            Err(error::timed_out(op, timeout))
        }
    }
}

/// Sends `cmd` (built by [`LuaScript::command`]); if the server does not know the script
/// (restarted, failed over, flushed), loads it and sends `cmd` once more.
async fn eval_on<T: FromRedisValue>(
    conn: &mut Conn,
    script: &LuaScript,
    cmd: &Cmd,
) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            load(conn, script).await?;
            cmd.query_async(conn).await
        }
        reply => reply,
    }
}

/// `SCRIPT LOAD` of `script` (idempotent; every connection of the adapter shares the server's
/// script cache, and a cluster client sends it to every node).
async fn load(conn: &mut impl ConnectionLike, script: &LuaScript) -> RedisResult<()> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(&script.code)
        .query_async(conn)
        .await
}

/// A command with its buffers sized for `args` arguments of `bytes` bytes in all (name
/// included), so appending them does not reallocate.
fn command(name: &'static str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(1 + args, name.len() + bytes);
    cmd.arg(name);
    cmd
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
        // Dropping our handles closes the connections once no call is using a clone.
        let mut guard = self.conns.write().unwrap_or_else(|p| p.into_inner());
        guard.take();
        Ok(())
    }

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        let key = self.keys.subscriptions();
        let mut cmd = command("SADD", 2, key.len() + thread_id.len());
        cmd.arg(key).arg(thread_id);
        self.query(Operation::Subscribe, key, &cmd).await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        let key = self.keys.subscriptions();
        let mut cmd = command("SREM", 2, key.len() + thread_id.len());
        cmd.arg(key).arg(thread_id);
        self.query(Operation::Unsubscribe, key, &cmd).await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let key = self.keys.subscriptions();
        let mut cmd = command("SISMEMBER", 2, key.len() + thread_id.len());
        cmd.arg(key).arg(thread_id);
        self.query(Operation::IsSubscribed, key, &cmd).await
    }

    /// The fenced acquire script: `SET lock token NX PX ttl`, then `INCR fence`. The layer
    /// computed the reported expiry from the clock read before this request, so it can only
    /// be earlier than the server's own (`PX` from arrival): contract rule 12.
    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let ttl_ms = validate::duration_ms(request.ttl);
        let (lock, fence) = (
            self.keys.lock(request.lock_id),
            self.keys.fence(request.lock_id),
        );
        let script = &self.scripts.acquire;
        let mut cmd = script.command(
            2,
            4,
            lock.len() + fence.len() + request.token.len() + NUMBER_BYTES,
        );
        cmd.arg(lock).arg(fence).arg(request.token).arg(ttl_ms);
        let fence: u64 = match self.eval(Operation::AcquireLock, lock, script, &cmd).await {
            Ok(fence) => fence,
            Err(e) => {
                // Timed out or broken after sending: Redis may hold the lock for our token.
                if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable) {
                    let index = lock.route(self.conn_count);
                    self.release_orphan(index, request.lock_id, request.token, request.ttl);
                }
                return Err(e);
            }
        };
        // Fences start at 1: 0 is the script's "held by someone else".
        Ok((fence > 0).then_some(fence))
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        let key = self.keys.lock(&lock.thread_id);
        let script = &self.scripts.release;
        let mut cmd = script.command(1, 2, key.len() + lock.token.len());
        cmd.arg(key).arg(&lock.token);
        self.eval::<i64>(Operation::ReleaseLock, key, script, &cmd)
            .await
            .map(drop)
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        let key = self.keys.lock(request.lock_id);
        // Validated non-zero: `PEXPIRE key 0` would delete the lock and still answer 1.
        let ttl_ms = validate::duration_ms(request.ttl);
        let script = &self.scripts.extend;
        let mut cmd = script.command(1, 3, key.len() + request.token.len() + NUMBER_BYTES);
        cmd.arg(key).arg(request.token).arg(ttl_ms);
        let extended: i64 = self.eval(Operation::ExtendLock, key, script, &cmd).await?;
        Ok(extended == 1)
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        // Only the lock key: the fence counter stays, so the next holder's fence is greater.
        let key = self.keys.lock(lock_id);
        let mut cmd = command("DEL", 1, key.len());
        cmd.arg(key);
        self.query(Operation::ForceReleaseLock, key, &cmd).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.keys.cache(key);
        let mut cmd = command("GET", 1, key.len());
        cmd.arg(key);
        self.query(Operation::Get, key, &cmd).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let key = self.keys.cache(key);
        let mut cmd = command("SET", 4, key.len() + value.len() + 2 + NUMBER_BYTES);
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(validate::duration_ms(ttl));
        }
        self.query(Operation::Set, key, &cmd).await
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        // Redis treats an expired key as absent, so `SET NX` is rule 5 in one command.
        let key = self.keys.cache(key);
        let mut cmd = command("SET", 5, key.len() + value.len() + 4 + NUMBER_BYTES);
        cmd.arg(key).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(validate::duration_ms(ttl));
        }
        // `OK` when set, nil when the key exists: read as "was there a reply".
        let reply: redis::Value = self.query(Operation::SetIfNotExists, key, &cmd).await?;
        Ok(reply != redis::Value::Nil)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = self.keys.cache(key);
        let mut cmd = command("DEL", 1, key.len());
        cmd.arg(key);
        self.query(Operation::Delete, key, &cmd).await
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let key = self.keys.list(key);
        let script = &self.scripts.append;
        let mut cmd = script.command(1, 4, key.len() + value.len() + 2 * NUMBER_BYTES);
        cmd.arg(key).arg(value);
        // The script reads an empty argument as "no limit" / "no expiry".
        match options.max_length {
            Some(n) => cmd.arg(n),
            None => cmd.arg(""),
        };
        match options.ttl {
            Some(t) => cmd.arg(validate::duration_ms(t)),
            None => cmd.arg(""),
        };
        self.eval::<i64>(Operation::AppendToList, key, script, &cmd)
            .await
            .map(drop)
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let key = self.keys.list(key);
        let mut cmd = command("LRANGE", 3, key.len() + 3);
        cmd.arg(key).arg(0).arg(-1);
        self.query(Operation::GetList, key, &cmd).await
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let op = Operation::Enqueue;
        // The upstream JSON shape `{enqueuedAt, expiresAt, message}`.
        let json = serde_json::to_vec(&entry).map_err(|e| {
            Error::invalid_input(format!("queue entry is not serializable: {e}"))
                .context(BACKEND, op)
        })?;
        let key = self.keys.queue(thread_id);
        let script = &self.scripts.enqueue;
        let mut cmd = script.command(1, 5, key.len() + json.len() + 3 * NUMBER_BYTES);
        cmd.arg(key)
            .arg(&json)
            .arg(max_size)
            .arg(now_ms())
            .arg(QUEUE_KEY_GRACE_MS);
        let depth: u64 = self.eval(op, key, script, &cmd).await?;
        Ok(usize::try_from(depth).unwrap_or(usize::MAX))
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let op = Operation::Dequeue;
        let key = self.keys.queue(thread_id);
        let script = &self.scripts.dequeue;
        let mut cmd = script.command(1, 2, key.len() + NUMBER_BYTES);
        cmd.arg(key).arg(now_ms());
        let reply: Option<(String, Vec<u8>)> = self.eval(op, key, script, &cmd).await?;
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
        let script = &self.scripts.depth;
        let mut cmd = script.command(1, 2, key.len() + NUMBER_BYTES);
        cmd.arg(key).arg(now_ms());
        let depth: u64 = self.eval(Operation::QueueDepth, key, script, &cmd).await?;
        Ok(usize::try_from(depth).unwrap_or(usize::MAX))
    }
}
