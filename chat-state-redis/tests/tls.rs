//! `rediss://`: a real redis-server with TLS on loopback, certificates made by `openssl` for
//! this test (a throwaway CA and a server certificate for 127.0.0.1).

#![cfg(feature = "tls")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chat_state_core::{Cache, Locks, StateAdapter};
use chat_state_redis::RedisBackend;

mod support;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=chat-state test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test]
async fn rediss_with_the_applications_root_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |f: &str| certs.path().join(f).display().to_string();
    let server = support::RedisServer::start_with_args(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");

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
            root_cert: Some(std::fs::read(path("ca.crt")).unwrap()),
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
