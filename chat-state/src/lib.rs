#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Combinations that cannot work are refused here, with the way out, instead of failing deep
// inside a dependency (sqlx, tokio's net driver) with an error that names none of our features.
#[cfg(all(target_arch = "wasm32", feature = "sqlite"))]
compile_error!(
    "chat-state: feature `sqlite` needs a native target (SQLite files and sqlx do not run on \
     wasm32). For a Worker, build with `--no-default-features --features durable-object` \
     (optionally plus `memory`)."
);
#[cfg(all(target_arch = "wasm32", feature = "redis"))]
compile_error!(
    "chat-state: feature `redis` / `redis-cluster` / `redis-tls` needs a native target (the \
     redis client opens TCP sockets, which wasm32 Workers cannot). On Workers use \
     `durable-object`."
);
#[cfg(all(target_arch = "wasm32", feature = "postgres"))]
compile_error!(
    "chat-state: feature `postgres` / `postgres-tls` needs a native target (sqlx opens TCP \
     sockets, which wasm32 Workers cannot). On Workers use `durable-object`."
);

/// The core traits, types, errors and helpers, re-exported so one dependency is enough.
pub use chat_state_core as core;
pub use chat_state_core::{
    Admission, Admit, Cache, Call, Clock, Dispatch, Error, ErrorKind, FencedWrite, Handoff, Layer,
    Layered, ListOptions, Lists, Lock, Locks, ManualClock, MaybeSend, Next, Operation, QueueEntry,
    Queues, Result, SharedClock, StateAdapter, StateExt, Subscriptions, SystemClock, WhenBusy,
    dispatch, new_lock_token, system_clock, validate,
};
#[cfg(not(target_arch = "wasm32"))]
pub use chat_state_core::{
    BusyStrategy, Dispatched, Dispatcher, LockRun, LockWatch, Turn, with_lock,
};

/// The in-process backend (feature `memory`).
#[cfg(feature = "memory")]
pub use chat_state_memory as memory;
#[cfg(feature = "memory")]
pub use chat_state_memory::{MemoryBackend, MemoryState};

/// The SQLite backend (feature `sqlite`).
#[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
pub use chat_state_sqlite as sqlite;
#[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
pub use chat_state_sqlite::{SqliteBackend, SqliteState};

/// The Redis backend (feature `redis`; Redis Cluster with `redis-cluster`).
#[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
pub use chat_state_redis as redis;
#[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
pub use chat_state_redis::{RedisBackend, RedisState};

/// The PostgreSQL backend (feature `postgres`; TLS with `postgres-tls`).
#[cfg(all(feature = "postgres", not(target_arch = "wasm32")))]
pub use chat_state_postgres as postgres;
#[cfg(all(feature = "postgres", not(target_arch = "wasm32")))]
pub use chat_state_postgres::{PostgresBackend, PostgresState};

/// The Cloudflare Durable Object backend (feature `durable-object`).
#[cfg(feature = "durable-object")]
pub use chat_state_do as durable_object;

#[cfg(not(target_arch = "wasm32"))]
mod backends;
mod connect;
pub use connect::{ConnectOptions, Target, compiled_schemes, connect, connect_with};

mod inspect;
pub use inspect::{InspectLocks, LockInfo, lock_inspector};

#[cfg(not(target_arch = "wasm32"))]
mod traced;
#[cfg(not(target_arch = "wasm32"))]
pub use traced::{Traced, Tracing, traced};
