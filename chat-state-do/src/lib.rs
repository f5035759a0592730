#![doc = include_str!("../README.md")]

pub mod protocol;
pub mod routing;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(target_arch = "wasm32")]
mod object;
#[cfg(target_arch = "wasm32")]
mod transport;

#[cfg(target_arch = "wasm32")]
pub use adapter::{
    DEFAULT_OBJECT_NAME, DurableObjectAdapter, DurableObjectAdapterBuilder, DurableObjectBackend,
};
#[cfg(target_arch = "wasm32")]
pub use object::{ChatStateDO, SCHEMA_VERSION};

/// The backend name in errors and logs.
pub const BACKEND: &str = "durable-object";
