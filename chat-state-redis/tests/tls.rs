//! `rediss://`: a real redis-server with TLS on loopback, certificates made by `openssl` for
//! this test (a throwaway CA and a server certificate for 127.0.0.1).

#![cfg(feature = "tls")]

use std::time::Duration;

use chat_state_core::{Cache, Locks, StateAdapter};
use chat_state_redis::RedisBackend;
use chat_state_test_support::TlsRedisServer;

#[tokio::test]
async fn rediss_with_the_applications_root_certificate() {
    let server = TlsRedisServer::start();
    let url = server.url();

    // The system roots do not know our CA: a typed error, not a panic.
    let err = RedisBackend::builder(&url)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.backend(), "redis", "{err}");

    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(server.ca_cert()).unwrap()),
        },
    )
    .unwrap();
    let state = RedisBackend::builder_with_client(client)
        .connect()
        .await
        .expect("TLS connect");
    state.set("k", b"\"v\"", None).await.unwrap();
    assert_eq!(
        state.get("k").await.unwrap().as_deref(),
        Some(&b"\"v\""[..])
    );
    let lock = state
        .acquire_lock("t", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        state
            .extend_lock(&lock, Duration::from_secs(5))
            .await
            .unwrap()
    );
    state.close().await.unwrap();
    drop(server);
}
