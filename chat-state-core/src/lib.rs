#![doc = include_str!("../README.md")]

mod adapter;
mod backend;
mod clock;
pub mod dispatch;
#[cfg(not(target_arch = "wasm32"))]
mod dispatcher;
mod error;
mod ext;
#[cfg(not(target_arch = "wasm32"))]
mod guard;
pub mod json;
mod layer;
mod lifecycle;
mod token;
mod types;
pub mod validate;

pub use adapter::{
    Cache, InspectLocks, Lists, LockInfo, Locks, MaybeSendSync, Queues, StateAdapter, Subscriptions,
};
/// Re-exported so backends implement the traits with the same macro version.
pub use async_trait::async_trait;
pub use backend::{AdmitOutcome, AdmitRequest, Backend, Checked, LockInspector, LockRequest};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};
pub use dispatch::{Admission, Admit, Dispatch, FencedSet, FencedWrite, Handoff, WhenBusy};
#[cfg(not(target_arch = "wasm32"))]
pub use dispatcher::{BusyStrategy, Dispatched, Dispatcher, Turn};
pub use error::{BoxError, Error, ErrorKind, Operation, Result};
pub use ext::{StateExt, UndecodedEntry};
#[cfg(not(target_arch = "wasm32"))]
pub use guard::{LockRun, LockWatch, with_lock};
pub use layer::{Call, Layer, Layered, MaybeSend, Next};
pub use lifecycle::OpenState;
pub use token::{new_lock_token, random_u64};
pub use types::{ListOptions, Lock, QueueEntry};
