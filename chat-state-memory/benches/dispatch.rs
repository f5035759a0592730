//! A message through the dispatcher next to the same work with the primitive calls, on the
//! memory backend (see `chat_state_test_support::dispatch_bench`).

use std::sync::Arc;

use chat_state_memory::MemoryState;
use chat_state_test_support::dispatch_bench;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        dispatch_bench::run("memory", Arc::new(MemoryState::default()), 50_000).await;
    });
}
