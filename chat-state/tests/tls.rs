//! `rediss://` with the `redis-tls` feature: a real redis-server with TLS on loopback,
//! certificates made by `openssl` for this test (a throwaway CA and a server certificate for
//! 127.0.0.1).
//!
//! The URL carries no certificate, so a private CA is trusted the way an operator would:
//! `SSL_CERT_FILE`. Setting an environment variable in a running test is unsound, so the
//! successful connection runs in a child process of this test binary (the ignored test
//! `child_connects_over_tls`) started with `SSL_CERT_FILE` set.

#![cfg(feature = "redis-tls")]

use std::process::Command;

use chat_state::{Cache, ErrorKind, StateAdapter, connect};
use chat_state_test_support::{TlsRedisServer, free_port};

/// Set in the child process: the URL to connect to.
const CHILD_URL: &str = "CHAT_STATE_TLS_TEST_URL";

/// The server's URL, with the key prefix these tests use.
fn url(server: &TlsRedisServer) -> String {
    format!("{}?prefix=tls", server.url())
}

#[test]
fn rediss_is_compiled_in() {
    assert!(chat_state::compiled_schemes().contains(&"rediss://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_nothing_listening_is_a_typed_error() {
    let err = connect(&format!("rediss://127.0.0.1:{}", free_port()))
        .await
        .err()
        .expect("nothing listens there");
    assert_eq!(err.backend(), "redis", "reached the redis client: {err}");
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_a_certificate_the_roots_do_not_trust() {
    let server = TlsRedisServer::start();
    // The system roots do not know the test CA: the TLS handshake fails, a typed error.
    let err = connect(&url(&server))
        .await
        .err()
        .expect("an unknown CA is refused");
    assert_eq!(err.backend(), "redis", "{err}");
    assert_ne!(
        err.kind(),
        ErrorKind::InvalidInput,
        "the URL is valid: {err}"
    );
}

#[test]
fn rediss_connects_with_a_trusted_ca() {
    let server = TlsRedisServer::start();
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_connects_over_tls",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_URL, url(&server))
        .env("SSL_CERT_FILE", server.ca_cert())
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("connected over TLS"), "{stdout}");
}

/// Run by `rediss_connects_with_a_trusted_ca` in a child process; does nothing on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by rediss_connects_with_a_trusted_ca, with SSL_CERT_FILE set"]
async fn child_connects_over_tls() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let state = connect(&url).await.expect("TLS connect");
    state.set("k", b"\"v\"", None).await.expect("set");
    assert_eq!(
        state.get("k").await.expect("get").as_deref(),
        Some(&b"\"v\""[..])
    );
    state.close().await.expect("close");
    println!("connected over TLS");
}
