//! A message through the dispatcher next to the same work with the primitive calls, against
//! a loopback `redis-server` started here (see `chat_state_test_support::dispatch_bench`).
//! Each call is one round trip, so the round-trip count is what a network link multiplies;
//! `CHAT_STATE_BENCH_RTT_MS=<ms>` runs it through the slow-link proxy of the throughput bench.

use std::sync::Arc;
use std::time::Duration;

use chat_state_redis::RedisBackend;
use chat_state_test_support::RedisServer;
use chat_state_test_support::bench::env_or;
use chat_state_test_support::dispatch_bench;
use chat_state_test_support::netns::{DelayProxy, NetnsRedis};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rtt_ms: Option<u64> = std::env::var("CHAT_STATE_BENCH_RTT_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    // Kept alive for the run: the server, and on a slow link its namespace and the proxy.
    let (url, _server, _slow) = match rtt_ms {
        None => {
            let server = RedisServer::start();
            (server.url(), Some(server), None)
        }
        Some(rtt) => {
            let ns = NetnsRedis::start();
            let proxy = DelayProxy::start(ns.addr(), Duration::from_millis(rtt) / 2);
            (
                format!("redis://127.0.0.1:{}", proxy.port()),
                None,
                Some((ns, proxy)),
            )
        }
    };
    let messages: usize = env_or("CHAT_STATE_BENCH_MESSAGES", 5_000);
    runtime.block_on(async {
        let state = RedisBackend::connect(&url).await.expect("connect to redis");
        let label = match rtt_ms {
            None => "redis (loopback)".to_owned(),
            Some(rtt) => format!("redis ({rtt} ms round trip)"),
        };
        dispatch_bench::run(&label, Arc::new(state), messages).await;
    });
}
