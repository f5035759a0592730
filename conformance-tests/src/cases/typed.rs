//! Rule 14 and the typed JSON helpers (`StateExt`): round-trips, and malformed stored data
//! is a typed `CorruptData` error, never a panic nor a silently different value.

use std::time::Duration;

use chat_state_core::{ErrorKind, ListOptions, Operation, QueueEntry, StateExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::support::{LONG_LIFETIME, check_error, check_error_details};
use crate::{CaseResult, Failure, Harness, ensure, ensure_eq};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThreadState {
    turn_count: u32,
    topic: Option<String>,
    tags: Vec<String>,
}

fn sample() -> ThreadState {
    ThreadState {
        turn_count: 3,
        topic: Some("billing ✓".into()),
        tags: vec!["a".into(), "b".into()],
    }
}

/// `set_json` / `get_json` round-trip a struct, stored as the JSON other clients read.
pub async fn typed_cache_round_trip(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.set_json("thread-state:t", &sample(), None).await?;
    ensure_eq!(
        a.get_json::<ThreadState>("thread-state:t").await?,
        Some(sample()),
        "typed value"
    );
    ensure_eq!(
        a.get_json::<ThreadState>("missing").await?,
        None,
        "missing typed value"
    );
    // The stored bytes are plain camelCase JSON (what a TypeScript bot sharing the store reads).
    let raw = a.get("thread-state:t").await?.unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| crate::Failure::new(format!("stored bytes are not JSON: {e}")))?;
    ensure_eq!(parsed["turnCount"].clone(), json!(3), "stored JSON field");
    Ok(())
}

/// `set_json_if_not_exists` is the dedupe call bots make: first wins, second sees it.
pub async fn typed_set_if_not_exists_round_trip(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let key = "dedupe:slack:m1";
    let ttl = Some(Duration::from_secs(600));
    ensure!(a.set_json_if_not_exists(key, &true, ttl).await?, "first");
    ensure!(!a.set_json_if_not_exists(key, &false, ttl).await?, "second");
    ensure_eq!(a.get_json::<bool>(key).await?, Some(true), "stored value");
    Ok(())
}

/// `append_json` / `get_list_json` round-trip structs in order.
pub async fn typed_list_round_trip(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let mut second = sample();
    second.turn_count = 4;
    second.topic = None;
    a.append_json(
        "msg-history:t",
        &sample(),
        ListOptions::new().max_length(100),
    )
    .await?;
    a.append_json("msg-history:t", &second, ListOptions::new().max_length(100))
        .await?;
    ensure_eq!(
        a.get_list_json::<ThreadState>("msg-history:t").await?,
        vec![sample(), second],
        "typed list"
    );
    Ok(())
}

/// `enqueue_json` / `dequeue_json` round-trip the message and report the entry's timestamps.
pub async fn typed_queue_round_trip(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let now = h.time.now_ms();
    ensure_eq!(
        a.enqueue_json("t", &sample(), now, Duration::from_secs(90), 10)
            .await?,
        1,
        "depth"
    );
    match a.dequeue_json::<ThreadState>("t").await? {
        Some((message, entry)) => {
            ensure_eq!(message, sample(), "message");
            ensure_eq!(entry.enqueued_at, now, "enqueued_at");
            ensure_eq!(entry.expires_at, now + 90_000, "expires_at");
        }
        None => return Err(crate::Failure::new("the typed entry was not dequeued")),
    }
    Ok(())
}

/// Rule 14: bytes that are not JSON give `CorruptData` from `get_json`; the raw bytes stay
/// readable.
pub async fn typed_non_json_cache_value_is_corrupt_data(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.set("k", b"\xff\xfenot json {", None).await?;
    check_error(
        h,
        a.get_json::<ThreadState>("k").await,
        ErrorKind::CorruptData,
        Operation::Get,
        "a non-JSON stored value",
    )?;
    check_error(
        h,
        a.get_json::<serde_json::Value>("k").await,
        ErrorKind::CorruptData,
        Operation::Get,
        "a non-JSON stored value read as any JSON",
    )?;
    ensure_eq!(
        a.get("k").await?,
        Some(b"\xff\xfenot json {".to_vec()),
        "raw bytes"
    );
    Ok(())
}

/// Rule 14: JSON that a JavaScript client wrote for a string cut inside an emoji holds a lone
/// surrogate escape (`"\ud83e"`): not Unicode, yet it must be read, not lost. The typed
/// helpers decode each lone surrogate as U+FFFD; the raw bytes stay as written.
pub async fn typed_lone_surrogates_decode_as_replacement_characters(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let written = br#"{"text":"cut \ud83e","pair":"\ud83e\udd16","escaped":"\\ud83e"}"#;
    let expected = json!({"text": "cut \u{fffd}", "pair": "🤖", "escaped": "\\ud83e"});
    a.set("k", written, None).await?;
    ensure_eq!(
        a.get_json::<serde_json::Value>("k").await?,
        Some(expected.clone()),
        "cache value"
    );
    ensure_eq!(a.get("k").await?, Some(written.to_vec()), "raw bytes");
    a.append_to_list("l", written, ListOptions::new()).await?;
    a.append_to_list("l", br#""\udc16""#, ListOptions::new())
        .await?;
    ensure_eq!(
        a.get_list_json::<serde_json::Value>("l").await?,
        vec![expected, json!("\u{fffd}")],
        "list items"
    );
    Ok(())
}

/// Rule 14: valid JSON of the wrong shape gives `CorruptData`, not a default value.
pub async fn typed_wrong_shape_is_corrupt_data(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.set_json("k", &json!({"turnCount": "three"}), None)
        .await?;
    check_error(
        h,
        a.get_json::<ThreadState>("k").await,
        ErrorKind::CorruptData,
        Operation::Get,
        "a wrongly typed field",
    )?;
    a.set_json("n", &json!(-1), None).await?;
    check_error(
        h,
        a.get_json::<u32>("n").await,
        ErrorKind::CorruptData,
        Operation::Get,
        "a negative number read as u32",
    )?;
    Ok(())
}

/// Rule 14: one malformed list item makes `get_list_json` fail with `CorruptData`.
pub async fn typed_corrupt_list_item_is_corrupt_data(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.append_json("l", &sample(), ListOptions::new()).await?;
    a.append_to_list("l", b"{\"truncated\":", ListOptions::new())
        .await?;
    check_error(
        h,
        a.get_list_json::<ThreadState>("l").await,
        ErrorKind::CorruptData,
        Operation::GetList,
        "a list with a truncated JSON item",
    )?;
    ensure_eq!(a.get_list("l").await?.len(), 2, "raw items still readable");
    Ok(())
}

/// Rule 14: a queued message of the wrong shape gives `CorruptData` from `dequeue_json`, and
/// the error hands back the entry it removed, unchanged, so nothing is lost.
pub async fn typed_queue_message_wrong_shape_is_corrupt_data(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let entry = QueueEntry::new(json!({"unexpected": true}), h.time.now_ms(), LONG_LIFETIME);
    a.enqueue("t", entry.clone(), 10).await?;
    let err = match a.dequeue_json::<ThreadState>("t").await {
        Err(err) => err,
        Ok(other) => {
            return Err(Failure::new(format!(
                "dequeue with a queued message of another shape: expected a CorruptData error, \
                 got Ok({other:?})"
            )));
        }
    };
    check_error_details(
        h,
        &err,
        ErrorKind::CorruptData,
        Operation::Dequeue,
        "a queued message of another shape",
    )?;
    match err.into_undecoded_entry() {
        Ok(back) => ensure_eq!(back, entry, "the entry handed back is the one enqueued"),
        Err(err) => {
            return Err(Failure::new(format!(
                "the CorruptData error does not hand back the removed entry: {err}"
            )));
        }
    }
    ensure_eq!(
        a.queue_depth("t").await?,
        0,
        "the entry was removed from the queue"
    );
    Ok(())
}
