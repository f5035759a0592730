//! A message through the dispatcher next to the same work with the primitive calls, against
//! a loopback PostgreSQL started here (see `chat_state_test_support::dispatch_bench`). Each
//! call is at least one round trip, so the call count is what a network link multiplies.

use std::sync::Arc;

use chat_state_postgres::PostgresBackend;
use chat_state_test_support::dispatch_bench;
use chat_state_test_support::postgres::PgServer;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = PgServer::start();
    runtime.block_on(async {
        let state = PostgresBackend::builder(server.url())
            .connect()
            .await
            .expect("connect to postgres");
        dispatch_bench::run("postgres (loopback)", Arc::new(state), 2_000).await;
    });
    drop(server);
}
