//! [`RedisBackend`]: the storage logic behind [`RedisState`](crate::RedisState), one Redis
//! command or script per operation (on a cluster, admit takes two and the dispatch
//! operations that combine two steps one per step: see [`Backend::admit`]). Inputs arrive
//! validated and the adapter open: core's [`Checked`](chat_state_core::Checked) layer checks
//! both before calling in.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chat_state_core::dispatch::{DEDUPE_VALUE, FencedSet, FencedWrite, Handoff, WhenBusy};
use chat_state_core::{
    AdmitOutcome, AdmitRequest, Backend, Clock, Error, ErrorKind, ListOptions, Lock, LockRequest,
    Operation, QueueEntry, Result, SystemClock, validate,
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

    /// [`eval`](Self::eval) of a script that may take lock `request.lock_id` (key `lock`) for
    /// `request.token`: when the outcome is unknown (timed out, or broken after sending), Redis
    /// may hold the lock for a token nobody will ever release, so the release runs in the
    /// background ([`release_orphan`](Self::release_orphan)).
    async fn eval_taking_lock<T: FromRedisValue>(
        &self,
        op: Operation,
        request: &LockRequest<'_>,
        lock: Key<'_>,
        script: &LuaScript,
        cmd: &Cmd,
    ) -> Result<T> {
        let reply = self.eval(op, lock, script, cmd).await;
        if let Err(e) = &reply
            && matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
        {
            let index = lock.route(self.conn_count);
            self.release_orphan(index, request.lock_id, request.token, request.ttl);
        }
        reply
    }

    /// `SET key value NX [PX ttl]`: whether the key was absent (or expired) and is now set.
    /// Redis treats an expired key as absent, so this is rule 5 in one command.
    async fn claim(
        &self,
        op: Operation,
        key: Key<'_>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let mut cmd = command("SET", 5, key.len() + value.len() + 4 + NUMBER_BYTES);
        cmd.arg(key).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(validate::duration_ms(ttl));
        }
        // `OK` when set, nil when the key exists: read as "was there a reply".
        let reply: redis::Value = self.query(op, key, &cmd).await?;
        Ok(reply != redis::Value::Nil)
    }

    /// Admit on a cluster, where the dedupe key (upstream's layout, its own slot) cannot share
    /// a script with the thread's keys: the claim first, then the thread's part
    /// (`take_or_queue`, one script on the thread-tagged lock, fence and queue keys) with the
    /// subscription read sent beside it. Two round trips, and not one atomic step: a caller
    /// that stops between them leaves the message claimed but neither handled nor queued (a
    /// redelivery is a duplicate), as with the step-by-step admit.
    async fn admit_on_cluster(
        &self,
        request: &AdmitRequest<'_>,
        entry: Option<(&[u8], usize)>,
    ) -> Result<AdmitOutcome> {
        let op = Operation::Admit;
        let dedupe = self.keys.cache(request.dedupe_key);
        if !self
            .claim(op, dedupe, DEDUPE_VALUE, Some(request.dedupe_ttl))
            .await?
        {
            return Ok(AdmitOutcome::Duplicate);
        }
        let thread = &request.lock;
        let script = &self.scripts.admit_thread;
        let (lock, fence, queue) = self.thread_keys(thread.lock_id);
        let entry_len = entry.map_or(0, |(json, _)| json.len());
        let mut cmd = script.command(
            3,
            6,
            lock.len()
                + fence.len()
                + queue.len()
                + thread.token.len()
                + entry_len
                + 4 * NUMBER_BYTES,
        );
        cmd.arg(lock).arg(fence).arg(queue);
        thread_args(&mut cmd, thread, entry);
        let subscriptions = self.keys.subscriptions();
        let mut sub = command("SISMEMBER", 2, subscriptions.len() + thread.lock_id.len());
        sub.arg(subscriptions).arg(thread.lock_id);
        // Sent together: the read costs no round trip of its own, and is wasted only when
        // the lock turns out to be held.
        let (reply, subscribed) = futures::future::join(
            self.eval_taking_lock::<(String, u64, u64)>(op, thread, lock, script, &cmd),
            self.query::<bool>(op, subscriptions, &sub),
        )
        .await;
        let outcome = admit_outcome(reply?)?;
        let AdmitOutcome::Admitted { fence, .. } = outcome else {
            return Ok(outcome);
        };
        match subscribed {
            Ok(subscribed) => Ok(AdmitOutcome::Admitted { fence, subscribed }),
            Err(e) => {
                self.give_back(op, thread).await;
                Err(e)
            }
        }
    }

    /// After an admit on a cluster took the lock but a later step of it failed: the caller
    /// gets an error, so it will never release the lock it now holds; give it back (best
    /// effort; otherwise it expires with its TTL).
    async fn give_back(&self, op: Operation, thread: &LockRequest<'_>) {
        let lock = self.keys.lock(thread.lock_id);
        let script = &self.scripts.release;
        let mut release = script.command(1, 2, lock.len() + thread.token.len());
        release.arg(lock).arg(thread.token);
        if let Err(e) = self.eval::<i64>(op, lock, script, &release).await {
            tracing::debug!(backend = BACKEND, error = %e,
                "could not release the lock of an admit whose last step failed");
        }
    }

    /// The single-node admit script's command: `script` is `admit`, or `admit_and_read` with
    /// `read` (the cache key to read) as its sixth key. The arguments are the same for both.
    fn admit_command(
        &self,
        script: &LuaScript,
        request: &AdmitRequest<'_>,
        entry: Option<(&[u8], usize)>,
        read: Option<Key<'_>>,
    ) -> Cmd {
        let thread = &request.lock;
        let (lock, fence, queue) = self.thread_keys(thread.lock_id);
        let (dedupe, subscriptions) = (
            self.keys.cache(request.dedupe_key),
            self.keys.subscriptions(),
        );
        let entry_len = entry.map_or(0, |(json, _)| json.len());
        let mut cmd = script.command(
            5 + usize::from(read.is_some()),
            9,
            lock.len()
                + fence.len()
                + queue.len()
                + dedupe.len()
                + subscriptions.len()
                + read.map_or(0, |key| key.len())
                + thread.token.len()
                + entry_len
                + DEDUPE_VALUE.len()
                + thread.lock_id.len()
                + 5 * NUMBER_BYTES,
        );
        cmd.arg(lock)
            .arg(fence)
            .arg(queue)
            .arg(dedupe)
            .arg(subscriptions);
        if let Some(read) = read {
            cmd.arg(read);
        }
        thread_args(&mut cmd, thread, entry);
        cmd.arg(DEDUPE_VALUE)
            .arg(validate::duration_ms(request.dedupe_ttl))
            .arg(thread.lock_id);
        cmd
    }

    /// `GET` of cache key `key`, its errors reported as `op`'s.
    async fn get_as(&self, op: Operation, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.keys.cache(key);
        let mut cmd = command("GET", 1, key.len());
        cmd.arg(key);
        self.query(op, key, &cmd).await
    }

    /// The `SET_FENCED` script (see [`Backend::set_fenced`]), its errors reported as `op`'s.
    async fn fenced_write(
        &self,
        op: Operation,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let (cache, record) = (self.keys.cache(key), self.keys.fenced(key));
        let script = &self.scripts.set_fenced;
        let mut cmd = script.command(
            2,
            4,
            cache.len() + record.len() + value.len() + lock.thread_id.len() + 2 * NUMBER_BYTES,
        );
        cmd.arg(cache).arg(record).arg(value);
        fenced_args(&mut cmd, lock, ttl);
        let (status, raw): (String, Vec<u8>) = self.eval(op, cache, script, &cmd).await?;
        match status.as_str() {
            "stored" => Ok(FencedWrite::Stored),
            "stale" => Ok(FencedWrite::Stale),
            "corrupt" => Err(corrupt_record(op, record, key, &raw)),
            other => Err(unexpected_reply(op, other)),
        }
    }

    /// The `RELEASE_OR_NEXT` script (see [`Backend::release_or_next`]).
    async fn handoff(&self, op: Operation, request: &LockRequest<'_>) -> Result<Handoff> {
        let (lock, queue) = (
            self.keys.lock(request.lock_id),
            self.keys.queue(request.lock_id),
        );
        let script = &self.scripts.release_or_next;
        let mut cmd = script.command(
            2,
            3,
            lock.len() + queue.len() + request.token.len() + 2 * NUMBER_BYTES,
        );
        cmd.arg(lock).arg(queue);
        handoff_args(&mut cmd, request);
        let (status, raw): (String, Vec<u8>) = self.eval(op, lock, script, &cmd).await?;
        handoff_reply(op, request.lock_id, &status, &raw)
    }

    /// The keys of a thread that admit and release_or_next touch, tagged alike on a cluster.
    fn thread_keys<'a>(&'a self, thread_id: &'a str) -> (Key<'a>, Key<'a>, Key<'a>) {
        (
            self.keys.lock(thread_id),
            self.keys.fence(thread_id),
            self.keys.queue(thread_id),
        )
    }

    /// How many times a connection of this adapter was replaced because a call on it timed
    /// out; for monitoring and tests.
    pub fn connection_replacements(&self) -> u64 {
        self.slots(Operation::Maintenance)
            .map(|slots| slots.iter().map(Slot::replacements).sum())
            .unwrap_or(0)
    }

    /// After an acquire (or admit) whose outcome is unknown (it timed out, or the connection
    /// broke after it was sent), releases the lock it may have taken, in the background: Redis may have
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

/// Awaits `call` for at most `timeout`; on a timeout (this one's, or one the client itself
/// reports), runs `on_timeout` (which replaces the connection) before returning the error.
async fn bounded<T>(
    op: Operation,
    timeout: Duration,
    call: impl Future<Output = RedisResult<T>>,
    on_timeout: impl FnOnce(),
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        // A timer inside the client (an application's own connection may arm one) is the
        // same news as ours: this connection stopped answering.
        Ok(Err(e)) if e.is_timeout() => {
            on_timeout();
            Err(error::from_redis(op, e))
        }
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

/// A queue entry's upstream JSON (`{enqueuedAt, expiresAt, message}`), as the scripts take it.
fn entry_json(op: Operation, entry: &QueueEntry) -> Result<Vec<u8>> {
    Ok(entry
        .to_json()
        .map_err(|e| e.context(BACKEND, op))?
        .into_bytes())
}

/// A live-entry count from a script.
fn depth(live: u64) -> usize {
    usize::try_from(live).unwrap_or(usize::MAX)
}

/// An entry a queue script popped (`status` `ok`, or `corrupt` for one whose `expiresAt` it
/// could not read), decoded; a corrupt one is a [`ErrorKind::CorruptData`] error naming the
/// queue.
fn popped_entry(op: Operation, thread_id: &str, status: &str, raw: &[u8]) -> Result<QueueEntry> {
    let parsed = (status == "ok")
        // A TypeScript bot's entry may hold lone surrogates (`JSON.stringify` of a string
        // cut inside an emoji); they decode as U+FFFD rather than lose the entry.
        .then(|| chat_state_core::json::from_json_slice::<QueueEntry>(raw).ok())
        .flatten();
    parsed.ok_or_else(|| {
        // The script already removed it: report it rather than block the queue forever.
        Error::corrupt(format!(
            "queue `{thread_id}` held an entry that is not a {{enqueuedAt, expiresAt, \
             message}} JSON object (removed from the queue): {}",
            snippet(raw)
        ))
        .context(BACKEND, op)
    })
}

/// A reply of ours that no script of this version writes: a bug, or a script of that SHA
/// that is not ours.
fn unexpected_reply(op: Operation, status: &str) -> Error {
    Error::corrupt(format!(
        "Redis answered `{status}`, which no script of this adapter returns"
    ))
    .context(BACKEND, op)
}

/// The admit scripts' `{status, n, subscribed}` reply.
fn admit_outcome((status, n, subscribed): (String, u64, u64)) -> Result<AdmitOutcome> {
    Ok(match status.as_str() {
        "duplicate" => AdmitOutcome::Duplicate,
        "dropped" => AdmitOutcome::Dropped,
        "queued" => AdmitOutcome::Queued { depth: depth(n) },
        "admitted" => AdmitOutcome::Admitted {
            fence: n,
            subscribed: subscribed == 1,
        },
        other => return Err(unexpected_reply(Operation::Admit, other)),
    })
}

/// Appends `take_or_queue`'s arguments (scripts.rs): token, lock TTL, the entry's JSON and
/// max size (or '' and 0 to drop when busy), now by the client's clock (what queue expiry is
/// compared with, as in `enqueue`) and the queue key's grace.
fn thread_args(cmd: &mut Cmd, lock: &LockRequest<'_>, entry: Option<(&[u8], usize)>) {
    cmd.arg(lock.token).arg(validate::duration_ms(lock.ttl));
    match entry {
        Some((json, max_size)) => cmd.arg(json).arg(max_size),
        None => cmd.arg("").arg(0),
    };
    cmd.arg(now_ms()).arg(QUEUE_KEY_GRACE_MS);
}

/// The admit's queue entry, as `take_or_queue` takes it: its JSON and the queue's max size,
/// or `None` to drop when busy.
fn busy_entry(op: Operation, when_busy: &WhenBusy) -> Result<Option<(Vec<u8>, usize)>> {
    Ok(match when_busy {
        WhenBusy::Drop => None,
        WhenBusy::Queue { entry, max_size } => Some((entry_json(op, entry)?, *max_size)),
    })
}

/// Appends `release_or_next_fn`'s token, TTL and now (scripts.rs). The TTL is validated
/// non-zero: `PEXPIRE key 0` would delete the lock.
fn handoff_args(cmd: &mut Cmd, request: &LockRequest<'_>) {
    cmd.arg(request.token)
        .arg(validate::duration_ms(request.ttl))
        .arg(now_ms());
}

/// Appends `set_fenced_fn`'s TTL, lock id and fence (scripts.rs), after the value. The
/// script reads an empty TTL as "no expiry", as `set` without `PX`.
fn fenced_args(cmd: &mut Cmd, lock: &Lock, ttl: Option<Duration>) {
    match ttl {
        Some(ttl) => cmd.arg(validate::duration_ms(ttl)),
        None => cmd.arg(""),
    };
    cmd.arg(&lock.thread_id).arg(lock.fence);
}

/// `release_or_next_fn`'s `{status, raw}` reply.
fn handoff_reply(op: Operation, thread_id: &str, status: &str, raw: &[u8]) -> Result<Handoff> {
    match status {
        "notholder" => Ok(Handoff::NotHolder),
        "released" => Ok(Handoff::Released),
        "ok" | "corrupt" => popped_entry(op, thread_id, status, raw).map(Handoff::Next),
        other => Err(unexpected_reply(op, other)),
    }
}

/// A fence record (`record`, of cache key `key`) that is not `<fence>:<lock id>`.
fn corrupt_record(op: Operation, record: Key<'_>, key: &str, raw: &[u8]) -> Error {
    Error::corrupt(format!(
        "the fence record `{record}` of key `{key}` is not `<fence>:<lock id>`: {}; \
         another application writes under this prefix; fenced writes of this key are \
         refused until the record is deleted",
        snippet(raw)
    ))
    .context(BACKEND, op)
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
        let fence: u64 = self
            .eval_taking_lock(Operation::AcquireLock, request, lock, script, &cmd)
            .await?;
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
        self.get_as(Operation::Get, key).await
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
        self.claim(Operation::SetIfNotExists, self.keys.cache(key), value, ttl)
            .await
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
        let json = entry_json(op, &entry)?;
        let key = self.keys.queue(thread_id);
        let script = &self.scripts.enqueue;
        let mut cmd = script.command(1, 5, key.len() + json.len() + 3 * NUMBER_BYTES);
        cmd.arg(key)
            .arg(&json)
            .arg(max_size)
            .arg(now_ms())
            .arg(QUEUE_KEY_GRACE_MS);
        self.eval(op, key, script, &cmd).await.map(depth)
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
        popped_entry(op, thread_id, &status, &raw).map(Some)
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let key = self.keys.queue(thread_id);
        let script = &self.scripts.depth;
        let mut cmd = script.command(1, 2, key.len() + NUMBER_BYTES);
        cmd.arg(key).arg(now_ms());
        self.eval(Operation::QueueDepth, key, script, &cmd)
            .await
            .map(depth)
    }

    /// Each dispatch operation is one script, one round trip, on a single node. On a cluster,
    /// where the dedupe, cache and thread keys sit in different slots, admit takes two (see
    /// [`admit`](Backend::admit)), admit with a read three when admitted, and
    /// `release_or_next_with` two; `release_or_next` and `set_fenced` stay one.
    const ATOMIC_DISPATCH: bool = true;

    /// Single node: one script (`ADMIT` in scripts.rs) over the lock, fence counter, queue,
    /// dedupe key and subscriptions: the claim (`SET NX PX`, as `set_if_not_exists`), then the
    /// acquire script's logic, then `enqueue`'s or nothing, and `SISMEMBER` when admitted.
    ///
    /// Cluster: the dedupe key has its own slot, so admit is two steps (claim, then the
    /// thread's part with the subscription read beside it); a caller that stops between them
    /// loses the message, claimed but neither handled nor queued.
    ///
    /// A timed-out admit may have taken the lock: as for `acquire_lock`, its token is
    /// released in the background (a no-op if it did not).
    async fn admit(&self, request: &AdmitRequest<'_>) -> Result<AdmitOutcome> {
        let op = Operation::Admit;
        let json = busy_entry(op, request.when_busy)?;
        let entry = json.as_ref().map(|(json, max)| (json.as_slice(), *max));
        if self.keys.is_cluster() {
            return self.admit_on_cluster(request, entry).await;
        }
        let script = &self.scripts.admit;
        let cmd = self.admit_command(script, request, entry, None);
        let lock = self.keys.lock(request.lock.lock_id);
        let reply = self
            .eval_taking_lock(op, &request.lock, lock, script, &cmd)
            .await?;
        admit_outcome(reply)
    }

    /// Single node: one script (`ADMIT_AND_READ`): the admit script's logic, and when
    /// admitted the `GET` of `read`'s cache key (read before anything is written, so a key of
    /// another type fails it with nothing changed), one round trip.
    ///
    /// Cluster: the read key has its own slot, so it is a `GET` after the two steps of the
    /// admit, sent only when admitted (the read must come after the lock is taken, so it
    /// cannot go beside the admit): three round trips when admitted, as many as the admit
    /// otherwise. If that read fails, the lock just taken is given back and the error
    /// returned, as when the subscription read fails.
    ///
    /// Timeouts and broken connections are handled as for [`admit`](Backend::admit).
    async fn admit_and_read(
        &self,
        request: &AdmitRequest<'_>,
        read: &str,
    ) -> Result<(AdmitOutcome, Option<Vec<u8>>)> {
        let op = Operation::Admit;
        let json = busy_entry(op, request.when_busy)?;
        let entry = json.as_ref().map(|(json, max)| (json.as_slice(), *max));
        if self.keys.is_cluster() {
            let outcome = self.admit_on_cluster(request, entry).await?;
            if !matches!(outcome, AdmitOutcome::Admitted { .. }) {
                return Ok((outcome, None));
            }
            return match self.get_as(op, read).await {
                Ok(value) => Ok((outcome, value)),
                Err(e) => {
                    self.give_back(op, &request.lock).await;
                    Err(e)
                }
            };
        }
        let script = &self.scripts.admit_and_read;
        let cmd = self.admit_command(script, request, entry, Some(self.keys.cache(read)));
        let lock = self.keys.lock(request.lock.lock_id);
        let (status, n, subscribed, value): (String, u64, u64, Option<Vec<u8>>) = self
            .eval_taking_lock(op, &request.lock, lock, script, &cmd)
            .await?;
        Ok((admit_outcome((status, n, subscribed))?, value))
    }

    /// One script (`RELEASE_OR_NEXT`) over the lock and the queue (one slot on a cluster):
    /// compare the token; pop the oldest live entry as `dequeue` does and extend the lock, or
    /// delete the lock. A corrupt entry is popped and reported as `dequeue` reports it, the
    /// lock kept (extended), so the holder's next call goes on with the queue.
    async fn release_or_next(&self, request: &LockRequest<'_>) -> Result<Handoff> {
        self.handoff(Operation::ReleaseOrNext, request).await
    }

    /// Single node: one script (`RELEASE_OR_NEXT_WITH`) over the lock, the queue, the cache
    /// key and its fence record: `set_fenced`'s logic, then, unless the write was refused
    /// (`NotHolder`, nothing else touched) or the record is foreign (`CorruptData`, nothing
    /// written), `release_or_next`'s. One round trip.
    ///
    /// Cluster: the cache key and the thread's keys are in different slots, so it is the two
    /// scripts one after the other: `SET_FENCED` on the cache key's slot, then, if stored,
    /// `RELEASE_OR_NEXT` on the thread's. Two round trips; they cannot be sent together, as
    /// the handoff must not run when the write is refused, nor before it is stored (the next
    /// holder would read the old state). A caller that stops between the two leaves its state
    /// written and the lock held until it expires, as after a `set_fenced` of its own.
    async fn release_or_next_with(
        &self,
        request: &LockRequest<'_>,
        lock: &Lock,
        write: &FencedSet<'_>,
    ) -> Result<Handoff> {
        let op = Operation::ReleaseOrNext;
        if self.keys.is_cluster() {
            let written = self
                .fenced_write(op, lock, write.key, write.value, write.ttl)
                .await?;
            if written == FencedWrite::Stale {
                return Ok(Handoff::NotHolder);
            }
            return self.handoff(op, request).await;
        }
        let (thread, queue) = (
            self.keys.lock(request.lock_id),
            self.keys.queue(request.lock_id),
        );
        let (cache, record) = (self.keys.cache(write.key), self.keys.fenced(write.key));
        let script = &self.scripts.release_or_next_with;
        let mut cmd = script.command(
            4,
            7,
            thread.len()
                + queue.len()
                + cache.len()
                + record.len()
                + request.token.len()
                + write.value.len()
                + lock.thread_id.len()
                + 4 * NUMBER_BYTES,
        );
        cmd.arg(thread).arg(queue).arg(cache).arg(record);
        handoff_args(&mut cmd, request);
        cmd.arg(write.value);
        fenced_args(&mut cmd, lock, write.ttl);
        let (status, raw): (String, Vec<u8>) = self.eval(op, thread, script, &cmd).await?;
        if status == "fencecorrupt" {
            return Err(corrupt_record(op, record, write.key, &raw));
        }
        handoff_reply(op, request.lock_id, &status, &raw)
    }

    /// One script (`SET_FENCED`) over the cache key and its fence record (`<p>:fenced:<key>`;
    /// on a cluster tagged into the cache key's slot): the rule of `dispatch::is_stale`
    /// against the record, then `SET` of both, with `PX` or without. A record that does not
    /// parse is a corrupt-data error and nothing is written: which fence it held is unknown.
    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        self.fenced_write(Operation::SetFenced, lock, key, value, ttl)
            .await
    }
}
