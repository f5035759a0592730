//! A message through the dispatcher next to the same work with the primitive calls, on a
//! SQLite file in a temporary directory (see `chat_state_test_support::dispatch_bench`).

use std::sync::Arc;

use chat_state_sqlite::SqliteBackend;
use chat_state_test_support::dispatch_bench;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = SqliteBackend::open(dir.path().join("bench.db"))
            .await
            .expect("open the bench file");
        dispatch_bench::run("sqlite", Arc::new(state), 10_000).await;
    });
}
