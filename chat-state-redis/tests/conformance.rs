//! The shared conformance suite against a real `redis-server`: every case gets its own
//! server process (on a free loopback port, killed when the case ends) and a random key
//! prefix. Expiry runs on the server's clock, so TTL cases use real time.

use std::sync::Arc;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::StateAdapter;
use chat_state_redis::RedisBackend;

mod support;

/// A harness whose adapters (the first and the reopened one) open `connections` connections.
async fn factory_with(connections: usize) -> Harness {
    let server = Arc::new(support::RedisServer::start());
    let prefix = format!("t{}", fastrand_suffix());
    let url = server.url();
    let adapter = RedisBackend::builder(&url)
        .key_prefix(&prefix)
        .connections(connections)
        .connect()
        .await
        .expect("connect to the test redis-server");
    // The reopen hook owns the server, so it lives exactly as long as the harness.
    Harness::with_real_time(Arc::new(adapter)).with_reopen(move || {
        let (server, prefix) = (server.clone(), prefix.clone());
        async move {
            let adapter = RedisBackend::builder(server.url())
                .key_prefix(prefix)
                .connections(connections)
                .connect()
                .await?;
            Ok(Arc::new(adapter) as Arc<dyn StateAdapter>)
        }
    })
}

fn fastrand_suffix() -> String {
    chat_state_core::new_lock_token().expect("random prefix")[..12].to_owned()
}

/// The suite on adapters with `$connections` connections. Real time: the cases that need exact
/// expiry boundaries (a manual clock) cannot run here. Reopen does apply (a new adapter on the
/// same server and prefix).
macro_rules! redis_suite {
    ($connections:expr) => {
        use super::{Harness, conformance_tests, factory_with};

        async fn factory() -> Harness {
            factory_with($connections).await
        }

        conformance_tests!(
            factory,
            skip = [
                lock_extend_sets_expiry_to_now_plus_ttl,
                queue_entry_expires_at_boundary,
                validation_sub_millisecond_ttl_rounds_up,
            ]
        );
    };
}

mod one_connection {
    redis_suite!(1);
}

/// The whole suite again with commands spread over three connections by key: the rules hold
/// whichever connection a key's commands take.
mod three_connections {
    redis_suite!(3);
}
