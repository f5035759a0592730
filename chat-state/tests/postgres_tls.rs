//! `postgres://` with `sslmode=` and the `postgres-tls` feature: a real PostgreSQL with
//! `ssl=on` on loopback, its certificate (for 127.0.0.1) signed by a CA `openssl` made for
//! this test. Whether a connection really is encrypted is read from the server's
//! `pg_stat_ssl`, matched by the `application_name` the URL sets.

#![cfg(feature = "postgres-tls")]

use chat_state::{ErrorKind, StateAdapter, connect};
use chat_state_test_support::postgres::{PASSWORD, PgServer};

/// The URL of `server` with `params`, naming the connection `app`.
fn url(server: &PgServer, app: &str, params: &str) -> String {
    format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres?application_name={app}&{params}",
        server.port
    )
}

/// How many of the server's connections named `app` use TLS, and how many do not.
fn encrypted_and_plain(server: &PgServer, app: &str) -> (u32, u32) {
    let count = |ssl: bool| -> u32 {
        server
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE application_name = '{app}' AND ssl = {ssl}"
                ),
            )
            .parse()
            .expect("a count")
    };
    (count(true), count(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_does_what_libpq_says() {
    let server = PgServer::start_tls();
    let ca = server.ca_cert();
    for (app, params, encrypted) in [
        (
            "verifyfull",
            format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            true,
        ),
        ("require", "sslmode=require".to_string(), true),
        ("prefer", String::new(), true),
        ("disable", "sslmode=disable".to_string(), false),
    ] {
        let state = connect(&url(&server, app, &params))
            .await
            .unwrap_or_else(|e| panic!("{app}: {e}"));
        state.set("k", b"1", None).await.expect("set");
        // The pool may hold several connections; every one must be as the mode says.
        let (tls, plain) = encrypted_and_plain(&server, app);
        if encrypted {
            assert!(
                tls > 0 && plain == 0,
                "{app}: {tls} encrypted, {plain} plain"
            );
        } else {
            assert!(
                tls == 0 && plain > 0,
                "{app}: {tls} encrypted, {plain} plain"
            );
        }
        state.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_the_roots_do_not_trust() {
    let server = PgServer::start_tls();
    // The system roots do not know the test CA: the handshake fails, a typed error.
    let err = connect(&url(&server, "untrusted", "sslmode=verify-full"))
        .await
        .err()
        .expect("an unknown CA is refused");
    assert_eq!(err.backend(), "postgres", "{err}");
    assert_ne!(
        err.kind(),
        ErrorKind::InvalidInput,
        "the URL is valid: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_is_refused() {
    let server = PgServer::start();
    let err = connect(&url(&server, "notls", "sslmode=require"))
        .await
        .err()
        .expect("the server offers no TLS");
    assert_eq!(err.backend(), "postgres", "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
}
