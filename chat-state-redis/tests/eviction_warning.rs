//! The warning at connect when the server's eviction policy could evict lock keys.
//!
//! Alone in its test binary: the log is captured by one global subscriber, and callsite
//! interest is cached process-wide, so another test reaching the same callsites before that
//! subscriber is installed could leave the warning disabled.

use chat_state_redis::RedisBackend;
use tracing_test::traced_test;

mod support;

#[tokio::test(flavor = "current_thread")]
#[traced_test]
async fn warns_when_the_eviction_policy_can_evict_locks() {
    let safe = support::RedisServer::start();
    RedisBackend::connect(&safe.url()).await.unwrap();
    assert!(
        !logs_contain("maxmemory-policy"),
        "no warning with noeviction"
    );

    let risky = support::RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lru"]);
    RedisBackend::connect(&risky.url()).await.unwrap();
    assert!(logs_contain("WARN"), "no warning with allkeys-lru");
    assert!(logs_contain("allkeys-lru"), "the warning names the policy");
}
