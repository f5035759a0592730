//! Wire compatibility with the TypeScript Chat SDK's Redis adapter: keys written with raw
//! commands exactly as upstream writes them are read through our adapter, and the reverse.

use std::time::Duration;

use chat_state_core::{
    Cache, Clock, ErrorKind, ListOptions, Lists, Lock, Locks, QueueEntry, Queues, StateExt,
    Subscriptions, SystemClock,
};
use chat_state_redis::{RedisBackend, RedisState};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

mod support;

const PREFIX: &str = "chat-sdk";

/// Upstream's release script, run verbatim by the "TypeScript" side.
const TS_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
/// Upstream's extend script.
const TS_EXTEND: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

async fn setup(server: &support::RedisServer) -> (RedisState, MultiplexedConnection) {
    // The default prefix is upstream's default, so nothing is configured on either side.
    let adapter = RedisBackend::connect(&server.url()).await.expect("connect");
    assert_eq!(adapter.backend().key_prefix(), PREFIX);
    let raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    (adapter, raw)
}

#[tokio::test]
async fn typescript_writes_are_read_by_rust() {
    let server = support::RedisServer::start();
    let (state, mut ts) = setup(&server).await;

    // subscribe: SADD <p>:subscriptions <threadId>
    let _: () = ts
        .sadd("chat-sdk:subscriptions", "slack:C1:t1")
        .await
        .unwrap();
    assert!(state.is_subscribed("slack:C1:t1").await.unwrap());
    assert!(!state.is_subscribed("slack:C1:t2").await.unwrap());

    // acquireLock: SET <p>:lock:<id> <token> NX PX <ttl>
    let ts_token = "ts-token-0123456789abcdef";
    let ok: Option<String> = redis::cmd("SET")
        .arg("chat-sdk:lock:slack:C1:t1")
        .arg(ts_token)
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut ts)
        .await
        .unwrap();
    assert_eq!(ok.as_deref(), Some("OK"));
    assert!(
        state
            .acquire_lock("slack:C1:t1", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    // Rust can heartbeat and release a lock the TypeScript side took (the token is the value).
    let ts_lock = Lock {
        thread_id: "slack:C1:t1".into(),
        token: ts_token.into(),
        expires_at: SystemClock.now_ms() + 30_000,
        fence: 0,
    };
    assert!(
        state
            .extend_lock(&ts_lock, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let pttl: i64 = ts.pttl("chat-sdk:lock:slack:C1:t1").await.unwrap();
    assert!(pttl > 30_000, "extend set PX 60000, pttl is {pttl}");
    state.release_lock(&ts_lock).await.unwrap();
    let exists: bool = ts.exists("chat-sdk:lock:slack:C1:t1").await.unwrap();
    assert!(!exists);

    // cache: SET <p>:cache:<key> JSON.stringify(value) [PX ttl]
    let _: () = ts
        .set(
            "chat-sdk:cache:thread-state:t1",
            r#"{"mode":"agent","turns":3}"#,
        )
        .await
        .unwrap();
    let value: Value = state.get_json("thread-state:t1").await.unwrap().unwrap();
    assert_eq!(value, json!({"mode": "agent", "turns": 3}));
    // setIfNotExists from TS (dedupe) makes ours fail, and vice versa.
    let _: () = redis::cmd("SET")
        .arg("chat-sdk:cache:dedupe:slack:m1")
        .arg("true")
        .arg("NX")
        .arg("PX")
        .arg(600_000)
        .query_async(&mut ts)
        .await
        .unwrap();
    assert!(
        !state
            .set_json_if_not_exists("dedupe:slack:m1", &true, Some(Duration::from_secs(600)))
            .await
            .unwrap()
    );

    // lists: RPUSH <p>:list:<key> JSON; LTRIM; PEXPIRE
    for i in 0..3 {
        let _: () = ts
            .rpush("chat-sdk:list:msg-history:t1", json!({"n": i}).to_string())
            .await
            .unwrap();
    }
    let items: Vec<Value> = state.get_list_json("msg-history:t1").await.unwrap();
    assert_eq!(
        items,
        vec![json!({"n": 0}), json!({"n": 1}), json!({"n": 2})]
    );

    // queues: RPUSH <p>:queue:<id> JSON.stringify({message, enqueuedAt, expiresAt})
    // (upstream's field order differs from ours: JSON objects are unordered).
    let now = SystemClock.now_ms();
    let message =
        json!({"id": "m1", "text": "hi", "author": {"userId": "U1"}, "big": 9007199254740993u64});
    let ts_entry = json!({"message": message, "enqueuedAt": now, "expiresAt": now + 90_000});
    let _: () = ts
        .rpush("chat-sdk:queue:slack:C1:t1", ts_entry.to_string())
        .await
        .unwrap();
    let expired =
        json!({"message": {"id": "old"}, "enqueuedAt": now - 100_000, "expiresAt": now - 10_000});
    let _: () = ts
        .lpush("chat-sdk:queue:slack:C1:t1", expired.to_string())
        .await
        .unwrap();
    assert_eq!(
        state.queue_depth("slack:C1:t1").await.unwrap(),
        1,
        "the expired entry is not counted"
    );
    let entry = state
        .dequeue("slack:C1:t1")
        .await
        .unwrap()
        .expect("the live entry");
    assert_eq!(
        entry.message, message,
        "the message round-trips exactly, big integers included"
    );
    assert_eq!(entry.enqueued_at, now);
    assert_eq!(entry.expires_at, now + 90_000);
    assert!(state.dequeue("slack:C1:t1").await.unwrap().is_none());
}

#[tokio::test]
async fn rust_writes_are_read_by_typescript() {
    let server = support::RedisServer::start();
    let (state, mut ts) = setup(&server).await;

    state.subscribe("teams:c:t").await.unwrap();
    let member: bool = ts
        .sismember("chat-sdk:subscriptions", "teams:c:t")
        .await
        .unwrap();
    assert!(member);

    let lock = state
        .acquire_lock("teams:c:t", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let stored: String = ts.get("chat-sdk:lock:teams:c:t").await.unwrap();
    assert_eq!(stored, lock.token, "the lock value is the token");
    let pttl: i64 = ts.pttl("chat-sdk:lock:teams:c:t").await.unwrap();
    assert!(pttl > 0 && pttl <= 30_000, "expires with PX: pttl {pttl}");
    // The TS side sees it held, can extend and release it with its own scripts.
    let taken: Option<String> = redis::cmd("SET")
        .arg("chat-sdk:lock:teams:c:t")
        .arg("other")
        .arg("NX")
        .arg("PX")
        .arg(1000)
        .query_async(&mut ts)
        .await
        .unwrap();
    assert!(taken.is_none());
    let extended: i64 = redis::Script::new(TS_EXTEND)
        .key("chat-sdk:lock:teams:c:t")
        .arg(&lock.token)
        .arg(45_000)
        .invoke_async(&mut ts)
        .await
        .unwrap();
    assert_eq!(extended, 1);
    let released: i64 = redis::Script::new(TS_RELEASE)
        .key("chat-sdk:lock:teams:c:t")
        .arg(&lock.token)
        .invoke_async(&mut ts)
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert!(
        !state
            .extend_lock(&lock, Duration::from_secs(1))
            .await
            .unwrap()
    );
    // Our fence counter lives beside, in its own namespace, and never expires.
    let fence: u64 = ts.get("chat-sdk:fence:teams:c:t").await.unwrap();
    assert_eq!(fence, lock.fence);
    let fence_ttl: i64 = ts.pttl("chat-sdk:fence:teams:c:t").await.unwrap();
    assert_eq!(fence_ttl, -1);

    state
        .set_json(
            "channel-state:c",
            &json!({"topic": "x"}),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let raw: String = ts.get("chat-sdk:cache:channel-state:c").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&raw).unwrap(),
        json!({"topic": "x"})
    );
    let pttl: i64 = ts.pttl("chat-sdk:cache:channel-state:c").await.unwrap();
    assert!(pttl > 0 && pttl <= 60_000);

    for i in 0..4 {
        state
            .append_json(
                "transcripts:user:u",
                &json!({"i": i}),
                ListOptions::new()
                    .max_length(3)
                    .ttl(Duration::from_secs(60)),
            )
            .await
            .unwrap();
    }
    let raw: Vec<String> = ts
        .lrange("chat-sdk:list:transcripts:user:u", 0, -1)
        .await
        .unwrap();
    let parsed: Vec<Value> = raw
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(
        parsed,
        vec![json!({"i": 1}), json!({"i": 2}), json!({"i": 3})]
    );

    let now = SystemClock.now_ms();
    let entry = QueueEntry {
        enqueued_at: now,
        expires_at: now + 90_000,
        message: json!({"id": "m2", "text": "yo"}),
    };
    assert_eq!(state.enqueue("teams:c:t", entry, 10).await.unwrap(), 1);
    let raw: Vec<String> = ts.lrange("chat-sdk:queue:teams:c:t", 0, -1).await.unwrap();
    assert_eq!(raw.len(), 1);
    let parsed: Value = serde_json::from_str(&raw[0]).unwrap();
    assert_eq!(
        parsed,
        json!({"enqueuedAt": now, "expiresAt": now + 90_000, "message": {"id": "m2", "text": "yo"}})
    );
    // TS dequeue is LPOP + JSON.parse.
    let popped: Option<String> = ts.lpop("chat-sdk:queue:teams:c:t", None).await.unwrap();
    assert!(popped.is_some());
    assert_eq!(state.queue_depth("teams:c:t").await.unwrap(), 0);
}

#[tokio::test]
async fn foreign_data_gives_typed_errors() {
    let server = support::RedisServer::start();
    let (state, mut ts) = setup(&server).await;

    // Another application wrote a string where we keep a list: WRONGTYPE -> CorruptData.
    let _: () = ts.set("chat-sdk:list:x", "not a list").await.unwrap();
    let err = state.get_list("x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
    assert_eq!(err.backend(), "redis");
    assert!(!err.is_retryable());
    let err = state
        .append_to_list("x", b"1", ListOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
    let _: () = ts.rpush("chat-sdk:cache:y", "a list").await.unwrap();
    assert_eq!(
        state.get("y").await.unwrap_err().kind(),
        ErrorKind::CorruptData
    );

    // Corrupt JSON in the cache: the typed helper says so.
    let _: () = ts.set("chat-sdk:cache:z", "{not json").await.unwrap();
    let err = state.get_json::<Value>("z").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");

    // A queue entry that is not the upstream shape: reported, not returned, not a hang; the
    // live entry behind it is still delivered.
    let _: () = ts.rpush("chat-sdk:queue:q", "garbage").await.unwrap();
    let now = SystemClock.now_ms();
    let good = QueueEntry {
        enqueued_at: now,
        expires_at: now + 60_000,
        message: json!({"ok": true}),
    };
    state.enqueue("q", good.clone(), 10).await.unwrap();
    let err = state.dequeue("q").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptData, "{err}");
    assert!(err.to_string().contains("garbage"), "{err}");
    assert_eq!(state.dequeue("q").await.unwrap(), Some(good));

    // A lock key of the wrong type: release reports it.
    let _: () = ts.rpush("chat-sdk:lock:l", "x").await.unwrap();
    let lock = Lock {
        thread_id: "l".into(),
        token: "t".into(),
        expires_at: 0,
        fence: 0,
    };
    assert_eq!(
        state.release_lock(&lock).await.unwrap_err().kind(),
        ErrorKind::CorruptData
    );
}

/// JavaScript strings are UTF-16: a message cut inside an emoji and written by the TypeScript
/// adapter (`JSON.stringify`) holds a lone surrogate escape, which is not Unicode. It must
/// still be read, never lost: the lone surrogate decodes as U+FFFD.
#[tokio::test]
async fn typescript_lone_surrogates_are_read_not_lost() {
    let server = support::RedisServer::start();
    let (state, mut ts) = setup(&server).await;
    let now = SystemClock.now_ms();
    let expires = now + 90_000;
    // The bytes exactly as upstream writes them: JSON.stringify under Node, one per line.
    let script = format!(
        r#"const text = "cut 🤖".slice(0, 5);
        const entry = {{ message: {{ id: "m1", text }}, enqueuedAt: {now}, expiresAt: {expires} }};
        const dead = {{ message: {{ id: "m0", text }}, enqueuedAt: {now} - 20000, expiresAt: {now} - 10000 }};
        process.stdout.write([entry, {{ text }}, dead].map((v) => JSON.stringify(v)).join("\n"));"#
    );
    let written = support::run_node(&script);
    let lines: Vec<&str> = written.split('\n').collect();
    let [entry_json, value_json, dead_json] = lines[..] else {
        panic!("three lines expected: {written}");
    };
    assert!(
        [entry_json, value_json, dead_json]
            .iter()
            .all(|line| line.contains(r"\ud83e")),
        "node should write a lone surrogate escape: {written}"
    );
    let cut = json!({"text": "cut \u{fffd}"});

    // The expired one in front: the queue scripts must still see its expiry (cjson refuses
    // lone surrogates), so it is neither counted nor returned.
    let _: () = ts
        .rpush("chat-sdk:queue:slack:C9:t1", dead_json)
        .await
        .unwrap();
    let _: () = ts
        .rpush("chat-sdk:queue:slack:C9:t1", entry_json)
        .await
        .unwrap();
    assert_eq!(state.queue_depth("slack:C9:t1").await.unwrap(), 1);
    let entry = state
        .dequeue("slack:C9:t1")
        .await
        .unwrap()
        .expect("the entry");
    assert_eq!(entry.message, json!({"id": "m1", "text": "cut \u{fffd}"}));
    assert_eq!((entry.enqueued_at, entry.expires_at), (now, expires));

    for _ in 0..2 {
        let _: () = ts
            .rpush("chat-sdk:list:history:t9", value_json)
            .await
            .unwrap();
    }
    let items: Vec<Value> = state.get_list_json("history:t9").await.unwrap();
    assert_eq!(items, vec![cut.clone(), cut.clone()]);

    let _: () = ts.set("chat-sdk:cache:state:t9", value_json).await.unwrap();
    let value: Value = state
        .get_json("state:t9")
        .await
        .unwrap()
        .expect("the value");
    assert_eq!(value, cut);
}
