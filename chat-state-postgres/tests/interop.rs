//! Interop with the real npm `@chat-adapter/state-pg` 4.41.0 (pinned by
//! `tests/interop/package-lock.json`, installed with `npm ci` when `node_modules` is missing)
//! on one database and key prefix: each side reads what the other wrote and is excluded by
//! the other's locks.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chat_state_core::{
    Admission, Admit, Cache, Dispatch, FencedSet, Handoff, Lists, Locks, QueueEntry, Queues,
    StateExt, Subscriptions,
};
use chat_state_postgres::PostgresBackend;
use serde_json::{Value, json};

use chat_state_test_support::postgres as support;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn node() -> PathBuf {
    chat_state_test_support::node_binary()
}

fn ensure_installed() {
    let dir = interop_dir();
    if dir.join("node_modules/@chat-adapter/state-pg").exists() {
        return;
    }
    let node = node();
    let npm = node.parent().map(|p| p.join("npm")).filter(|p| p.exists());
    let mut c = match npm {
        Some(npm) => Command::new(npm),
        None => Command::new("npm"),
    };
    let path = format!(
        "{}:{}",
        node.parent().unwrap_or(&dir).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = c
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .env("PATH", path)
        .status()
        .expect("run npm ci");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

fn ts(url: &str, prefix: &str, phase: &str) -> Value {
    let out = Command::new(node())
        .arg(interop_dir().join("state.mjs"))
        .args([url, prefix, phase])
        .current_dir(interop_dir())
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node {phase} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("node printed JSON")
}

#[tokio::test]
async fn rust_and_state_pg_share_one_database() {
    ensure_installed();
    let server = support::shared();
    let url = server.url();
    let prefix = support::unique_prefix();
    // Rust creates the schema first (its additions included); state-pg's own CREATE IF NOT
    // EXISTS statements then run against it unchanged.
    let state = PostgresBackend::builder(&url)
        .key_prefix(&prefix)
        .connect()
        .await
        .expect("connect");

    let written = ts(&url, &prefix, "write");
    assert_eq!(written["dedupe"], json!(true));
    assert_eq!(written["depth"], json!(1));

    // Rust's native dispatch on what TypeScript wrote: TypeScript's dedupe key makes the
    // message a duplicate, TypeScript's lock keeps the thread busy.
    assert!(state.atomic_dispatch());
    assert_eq!(
        state
            .admit(&Admit::new("ts-lock", "ts-dedupe"))
            .await
            .unwrap(),
        Admission::Duplicate
    );
    assert_eq!(
        state
            .admit(&Admit::new("ts-lock", "rs-dedupe-2"))
            .await
            .unwrap(),
        Admission::Dropped,
        "TypeScript's lock excludes Rust's admit"
    );

    // What TypeScript wrote, read by Rust.
    assert!(state.is_subscribed("ts-sub").await.unwrap());
    assert!(
        state
            .acquire_lock("ts-lock", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "TypeScript's lock excludes Rust"
    );
    let cache: Value = state.get_json("ts-cache").await.unwrap().expect("ts-cache");
    assert_eq!(cache, json!({"a": 1, "s": "h\u{e9}"}));
    assert!(
        !state
            .set_if_not_exists("ts-dedupe", b"true", Some(Duration::from_secs(60)))
            .await
            .unwrap(),
        "TypeScript's dedupe key is live for Rust"
    );
    let list: Vec<Value> = state.get_list_json("ts-list").await.unwrap();
    assert_eq!(list, vec![json!(2), json!(3)]);
    let entry = state.dequeue("ts-queue").await.unwrap().expect("ts entry");
    let expected: QueueEntry = serde_json::from_value(written["entry"].clone()).unwrap();
    assert_eq!(entry, expected);

    // What Rust writes, read by TypeScript.
    state.subscribe("rs-sub").await.unwrap();
    let lock = state
        .acquire_lock("rs-lock", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("rs-lock");
    state
        .set_json("rs-cache", &json!({"b": [1, 2]}), None)
        .await
        .unwrap();
    assert!(
        state
            .set_if_not_exists("rs-dedupe", b"true", Some(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    for v in ["x", "y"] {
        state
            .append_to_list(
                "rs-list",
                json!(v).to_string().as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let now = chat_state_core::Clock::now_ms(&chat_state_core::SystemClock);
    let rs_entry = QueueEntry::new(json!({"text": "from rust"}), now, Duration::from_secs(60));
    assert_eq!(
        state
            .enqueue("rs-queue", rs_entry.clone(), 10)
            .await
            .unwrap(),
        1
    );

    let Admission::Admitted {
        lock: mut admitted, ..
    } = state
        .admit(&Admit::new("rs-thread", "rs-admitted"))
        .await
        .unwrap()
    else {
        panic!("rs-thread is free");
    };
    let write = FencedSet {
        key: "rs-fenced",
        value: br#"{"turns":1}"#,
        ttl: None,
    };
    assert_eq!(
        state
            .release_or_next_with(&mut admitted, Duration::from_secs(30), write)
            .await
            .unwrap(),
        Handoff::Released
    );

    let checked = ts(&url, &prefix, "check");
    assert_eq!(checked["subscribed"], json!(true));
    assert_eq!(
        checked["lock"],
        Value::Null,
        "Rust's lock excludes TypeScript"
    );
    assert_eq!(checked["cache"], json!({"b": [1, 2]}));
    assert_eq!(
        checked["dedupe"],
        json!(false),
        "Rust's dedupe key is live for TypeScript"
    );
    assert_eq!(checked["list"], json!(["x", "y"]));
    assert_eq!(checked["depth"], json!(1));
    assert_eq!(checked["entry"], serde_json::to_value(&rs_entry).unwrap());
    assert_eq!(
        checked["admitDedupe"],
        json!(false),
        "Rust's admit claim is live for TypeScript"
    );
    assert_eq!(checked["fenced"], json!({"turns": 1}));

    // TypeScript force-released its lock: Rust can take it now, with a real fence.
    let taken = state
        .acquire_lock("ts-lock", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("ts-lock free after TypeScript released it");
    assert!(taken.fence > 0);
    state.release_lock(&lock).await.unwrap();
}
