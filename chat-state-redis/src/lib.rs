#![doc = include_str!("../README.md")]

//! # Module layout
//! - `builder`: [`RedisBuilder`] and the constructors on [`RedisBackend`] (connection setup,
//!   eviction-policy check and script preload at connect);
//! - `backend`: [`RedisBackend`] and its [`Backend`](chat_state_core::Backend) impl, the
//!   storage logic behind [`RedisState`];
//! - `admin`: operator tools ([`RedisBackend::delete_all_keys`], the
//!   [`LockInspector`](chat_state_core::LockInspector) impl behind
//!   [`InspectLocks`](chat_state_core::InspectLocks), the eviction-policy check);
//! - `keys`, `scripts`, `conn`, `error`: key layout, Lua scripts, the connection type and the
//!   error mapping.

mod admin;
mod backend;
mod builder;
mod conn;
mod error;
mod keys;
mod scripts;

use std::time::Duration;

pub use backend::RedisBackend;
pub use builder::{MAX_CONNECTIONS, RedisBuilder};
pub use keys::{DEFAULT_PREFIX, MAX_PREFIX_BYTES, validate_prefix};

/// The backend name in errors and logs.
pub const BACKEND: &str = "redis";

/// Default time a command may take before it fails with [`ErrorKind::Timeout`](chat_state_core::ErrorKind::Timeout).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to establish the first connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time one connection attempt may take before the next starts
/// ([`RedisBuilder::connect_attempt_timeout`]).
pub const DEFAULT_CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default idle time before TCP keepalive probes ([`RedisBuilder::tcp_keepalive`]).
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(10);
/// Default `TCP_USER_TIMEOUT` ([`RedisBuilder::tcp_user_timeout`]).
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis backend as a [`StateAdapter`](chat_state_core::StateAdapter): a
/// [`RedisBackend`] behind core's rule layer, which validates inputs, checks that the
/// adapter is open, draws lock tokens and builds locks before any command is sent.
///
/// Create one with [`RedisBackend::connect`] or a [`RedisBuilder`] from
/// [`RedisBackend::builder`] and friends. Backend-specific methods
/// ([`key_prefix`](RedisBackend::key_prefix), [`delete_all_keys`](RedisBackend::delete_all_keys))
/// are reached through [`Checked::backend`](chat_state_core::Checked::backend).
pub type RedisState = chat_state_core::Checked<RedisBackend>;
