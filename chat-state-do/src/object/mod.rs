//! The Durable Object class, [`ChatStateDO`] (wasm32 only).
//!
//! Storage is the object's SQLite database. Every operation runs its SQL statements
//! synchronously with no `await` in between, so the runtime commits them as one atomic unit
//! and no other request of the same object can interleave (the object is single-threaded and
//! only yields at an `await`). The only `await` an operation may reach comes afterwards:
//! moving the alarm earlier.
//!
//! Layout: this file holds the class and the request path (decode, dispatch, answer); each
//! group of operations has its own file ([`subscriptions`], [`locks`], [`cache`], [`lists`],
//! [`queues`], plus the test-only [`introspection`]), each operation one function that
//! validates its input (requests arrive over the wire, not necessarily from the adapter) and
//! runs its SQL. [`schema`] migrates the tables, [`alarm`] cleans up expired rows, [`clock`]
//! decides a request's time and [`sql`] holds the shared helpers.

mod alarm;
mod cache;
mod clock;
mod introspection;
mod lists;
mod locks;
mod queues;
mod schema;
mod sql;
mod subscriptions;

use std::cell::Cell;
use std::time::Duration;

use chat_state_core::{Error, ErrorKind};
use worker::{
    DurableObject, Env, Method, Request, Response, Result as WorkerResult, SqlStorage, State,
    durable_object,
};

use crate::protocol::{PROTOCOL_PATH, Request as Op, WireError, decode_request};
pub use schema::SCHEMA_VERSION;
use sql::Reply;

/// When a failed alarm run tries again. Alarms that throw are retried by the runtime only a
/// few times before it gives up, so the handler catches errors and re-arms itself instead.
const ALARM_RETRY: Duration = Duration::from_secs(30);

/// Largest request body: a 1 MiB value in base64 (4/3) plus generous room for the rest.
const MAX_BODY_BYTES: usize = 1_500_000;

/// The chat-state Durable Object. Re-export it from your Worker
/// (`pub use chat_state_do::ChatStateDO;`) and declare it in `wrangler.toml` with a
/// `new_sqlite_classes` migration; see the crate README.
#[durable_object]
pub struct ChatStateDO {
    state: State,
    sql: SqlStorage,
    /// Why the schema could not be brought to [`SCHEMA_VERSION`]; every request then fails
    /// with this message instead of touching tables of an unknown shape.
    schema_error: Option<String>,
    /// The alarm time as last read or written (`None` = not known yet), so writes do not
    /// read the alarm on every request.
    alarm_ms: Cell<Option<Option<u64>>>,
    /// Test-only fault injection ([`Op::FailAlarms`]): runs left to fail, and the retry delay.
    fail_alarms: Cell<u32>,
    alarm_retry_ms: Cell<u64>,
}

impl DurableObject for ChatStateDO {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        let schema_error = schema::migrate(&sql).err();
        Self {
            state,
            sql,
            schema_error,
            alarm_ms: Cell::new(None),
            fail_alarms: Cell::new(0),
            alarm_retry_ms: Cell::new(ALARM_RETRY.as_millis() as u64),
        }
    }

    async fn fetch(&self, mut req: Request) -> WorkerResult<Response> {
        let path = req.path();
        if path != PROTOCOL_PATH {
            return error_response(&WireError::protocol_mismatch(&path));
        }
        if req.method() != Method::Post {
            let e = Error::invalid_input("chat-state requests must use POST");
            return error_response(&WireError::from_error(&e));
        }
        let now = match clock::request_time(&req) {
            Ok(now) => now,
            Err(e) => return error_response(&WireError::from_error(&e)),
        };
        let body = req.bytes().await?;
        let result = if body.len() > MAX_BODY_BYTES {
            Err(Error::invalid_input(format!(
                "request body is {} bytes; the limit is {MAX_BODY_BYTES}",
                body.len()
            )))
        } else {
            match decode_request(&body) {
                Ok(op) => self.handle(op, now).await,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(json) => Response::from_bytes(json),
            Err(e) => error_response(&WireError::from_error(&e)),
        }
    }

    async fn alarm(&self) -> WorkerResult<Response> {
        self.run_alarm().await
    }
}

fn error_response(e: &WireError) -> WorkerResult<Response> {
    let body = serde_json::to_vec(e).map_err(|e| worker::Error::RustError(e.to_string()))?;
    Ok(Response::from_bytes(body)?.with_status(e.status()))
}

impl ChatStateDO {
    /// Runs one decoded request at time `now`, then moves the alarm if it stored something
    /// that expires.
    async fn handle(&self, op: Op, now: u64) -> Result<Vec<u8>, Error> {
        if let Some(e) = &self.schema_error {
            return Err(Error::new(ErrorKind::Backend, e.clone()));
        }
        if op == Op::Inspect {
            // The one operation that reads the alarm from storage rather than the cache.
            let alarm = self.state.storage().get_alarm().await.ok().flatten();
            return self.inspect(now, alarm.map(|v| v.max(0) as u64));
        }
        let reply = self.apply(op, now)?;
        if let Some(at) = reply.arm {
            self.arm_no_later_than(at).await;
        }
        Ok(reply.body)
    }

    /// Runs one operation synchronously (each validates its own input).
    fn apply(&self, op: Op, now: u64) -> Result<Reply, Error> {
        match op {
            Op::Subscribe { thread_id } => self.subscribe(&thread_id),
            Op::Unsubscribe { thread_id } => self.unsubscribe(&thread_id),
            Op::IsSubscribed { thread_id } => self.is_subscribed(&thread_id),
            Op::AcquireLock {
                lock_id,
                ttl_ms,
                token,
            } => self.acquire_lock(&lock_id, ttl_ms, token, now),
            Op::ReleaseLock { lock_id, token } => self.release_lock(lock_id, token),
            Op::ExtendLock {
                lock_id,
                token,
                ttl_ms,
            } => self.extend_lock(lock_id, token, ttl_ms, now),
            Op::ForceReleaseLock { lock_id } => self.force_release_lock(&lock_id),
            Op::Get { key } => self.get(&key, now),
            Op::Set { key, value, ttl_ms } => self.set(key, value, ttl_ms, now),
            Op::SetIfNotExists { key, value, ttl_ms } => {
                self.set_if_not_exists(key, value, ttl_ms, now)
            }
            Op::Delete { key } => self.delete(&key),
            Op::AppendToList {
                key,
                value,
                max_length,
                ttl_ms,
            } => self.append_to_list(key, value, max_length, ttl_ms, now),
            Op::GetList { key } => self.get_list(&key, now),
            Op::Enqueue {
                thread_id,
                entry,
                max_size,
            } => self.enqueue(&thread_id, &entry, max_size, now),
            Op::Dequeue { thread_id } => self.dequeue(&thread_id, now),
            Op::QueueDepth { thread_id } => self.queue_depth(&thread_id, now),
            Op::Inspect => Ok(Reply::raw(
                self.inspect(now, self.alarm_ms.get().flatten())?,
            )),
            Op::FailAlarms { times, retry_ms } => self.fail_alarms(times, retry_ms),
        }
    }
}
