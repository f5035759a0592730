//! Statements that may take a lock (`acquire_lock`, `admit`) run so that a lock nobody will
//! release is released anyway (SEMANTICS.md, "Calls whose outcome is unknown").
//!
//! A caller that times out gives up on the reply, not on the statement: the server may still
//! run it (it was blocked on a row, or the server was stopped with the request in its socket
//! buffer) and take the lock for a token nobody knows, for its whole TTL. So the statement
//! runs in a task of its own that keeps its connection and waits for the outcome after the
//! caller has gone:
//!
//! - the lock was taken and the caller had gone: release it at once, on the same connection,
//!   which orders the release after the acquisition;
//! - the outcome stays unknown (the connection broke, or the server cancelled the statement):
//!   release by token in the background, once the server's own statement timeout would have
//!   ended the statement, retrying while the server cannot be reached, until the TTL is over;
//! - the statement never left (the caller gave up while waiting for a connection): nothing.
//!
//! The release is compare-and-delete on the token the statement sent, a no-op unless that
//! token holds the lock, so it never touches another holder's lock. A caller that is
//! cancelled (its future dropped) is covered the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_state_core::{Error, ErrorKind, LockRequest, Operation};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::oneshot;

use super::{Inner, ms};
use crate::BACKEND;
use crate::error::{kind_of, map, timed_out};

/// How long after the end of the server's statement timeout the background release starts.
const GRACE: Duration = Duration::from_millis(100);
/// Pause between release attempts while the server cannot be reached.
const RETRY: Duration = Duration::from_millis(100);

/// The lock a statement may take: its id, the token it sends, and its TTL.
#[derive(Debug, Clone)]
pub(super) struct Taken {
    lock_id: String,
    token: String,
    ttl: Duration,
}

impl Taken {
    pub(super) fn new(request: &LockRequest<'_>) -> Self {
        Self {
            lock_id: request.lock_id.to_owned(),
            token: request.token.to_owned(),
            ttl: request.ttl,
        }
    }
}

/// Whether an error leaves open whether the statement ran.
fn unknown(e: &sqlx::Error) -> bool {
    matches!(kind_of(e), ErrorKind::Timeout | ErrorKind::Unavailable)
}

/// `acquire_lock`'s statement: the new fence, or `None` when the lock is held.
pub(super) async fn acquire(
    inner: &Arc<Inner>,
    request: &LockRequest<'_>,
) -> Result<Option<i64>, Error> {
    let statement_inner = Arc::clone(inner);
    let (now, lock_id, token, ttl) = (
        inner.now(),
        request.lock_id.to_owned(),
        request.token.to_owned(),
        ms(request.ttl),
    );
    taking_lock(
        inner,
        Operation::AcquireLock,
        Taken::new(request),
        move |mut conn| async move {
            let inner = statement_inner;
            let result = sqlx::query_scalar(&inner.sql.acquire)
                .bind(now)
                .bind(&inner.prefix)
                .bind(lock_id)
                .bind(token)
                .bind(ttl)
                .fetch_optional(&mut *conn)
                .await;
            (conn, result)
        },
        Option::is_some,
    )
    .await
}

/// Runs `call` (a statement that takes `lock` when `took` says so of its result) on a
/// connection of its own task, within the statement timeout; see the module documentation
/// for what happens when the caller does not get the outcome.
pub(super) async fn taking_lock<T, F, Fut>(
    inner: &Arc<Inner>,
    op: Operation,
    lock: Taken,
    call: F,
    took: fn(&T) -> bool,
) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(PoolConnection<Postgres>) -> Fut + Send + 'static,
    Fut: Future<Output = (PoolConnection<Postgres>, Result<T, sqlx::Error>)> + Send + 'static,
{
    let (tx, mut rx) = oneshot::channel::<Result<T, sqlx::Error>>();
    let task_inner = Arc::clone(inner);
    tokio::spawn(async move {
        let inner = task_inner;
        let conn = match inner.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        if tx.is_closed() {
            // The caller gave up before the statement was sent: nothing was taken.
            return;
        }
        let (conn, result) = call(conn).await;
        let taken = matches!(&result, Ok(v) if took(v));
        let unsure = matches!(&result, Err(e) if unknown(e));
        let delivered = tx.send(result).is_ok();
        if taken && !delivered {
            release_now(&inner, conn, &lock).await;
        } else if unsure {
            drop(conn);
            release_later(&inner, &lock).await;
        }
    });
    let timeout = inner.statement_timeout;
    match tokio::time::timeout(timeout, &mut rx).await {
        Ok(Ok(result)) => result.map_err(|e| map(op, e)),
        Ok(Err(_)) => Err(Error::new(
            ErrorKind::Backend,
            "the task running the statement ended without an answer",
        )
        .context(BACKEND, op)),
        Err(_) => {
            // Closed first, so the task either sees the caller gone (and cleans up) or its
            // answer, sent just before, is read here: never both lost.
            rx.close();
            match rx.try_recv() {
                Ok(result) => result.map_err(|e| map(op, e)),
                Err(_) => Err(timed_out(op, timeout)),
            }
        }
    }
}

/// The release statement on `conn`, within the statement timeout: `Ok(true)` if it freed
/// the lock.
async fn release_on(
    inner: &Inner,
    conn: &mut PoolConnection<Postgres>,
    lock: &Taken,
) -> Result<bool, ()> {
    let release = sqlx::query(inner.sql.release)
        .bind(&inner.prefix)
        .bind(&lock.lock_id)
        .bind(&lock.token)
        .execute(&mut **conn);
    match tokio::time::timeout(inner.statement_timeout, release).await {
        Ok(Ok(done)) => Ok(done.rows_affected() > 0),
        _ => Err(()),
    }
}

fn report(lock: &Taken, released: bool) {
    if released {
        tracing::info!(backend = BACKEND, lock_id = %lock.lock_id,
            "released a lock whose acquire had timed out (PostgreSQL had taken it)");
    }
}

/// The statement took the lock after its caller had gone: release it on the connection
/// that took it, falling back to the background retries if that fails.
async fn release_now(inner: &Inner, mut conn: PoolConnection<Postgres>, lock: &Taken) {
    match release_on(inner, &mut conn, lock).await {
        Ok(released) => report(lock, released),
        Err(()) => {
            drop(conn);
            retry_release(inner, lock, Instant::now() + lock.ttl).await;
        }
    }
}

/// The statement's outcome is unknown: wait until the server's statement timeout would
/// have ended it (URL connections send it; with a pool of one's own it is the pool's
/// business), then release by token.
async fn release_later(inner: &Inner, lock: &Taken) {
    let gives_up = Instant::now() + lock.ttl;
    tokio::time::sleep(inner.statement_timeout + GRACE).await;
    retry_release(inner, lock, gives_up).await;
}

async fn retry_release(inner: &Inner, lock: &Taken, gives_up: Instant) {
    while Instant::now() < gives_up && !inner.pool.is_closed() {
        let attempt = tokio::time::timeout(inner.statement_timeout, inner.pool.acquire()).await;
        if let Ok(Ok(mut conn)) = attempt
            && let Ok(released) = release_on(inner, &mut conn, lock).await
        {
            report(lock, released);
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
