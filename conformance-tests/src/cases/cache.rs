//! Cache: values with optional TTL, and the atomic `set_if_not_exists` (rules 2 and 5).

use std::time::Duration;

use chat_state_core::StateExt;
use chat_state_core::validate::MAX_VALUE_BYTES;
use serde_json::{Value, json};

use super::support::{LONG_TTL, expire, just_before_expiry, short_ttl, still_fresh};
use crate::{CaseResult, Harness, concurrently, ensure, ensure_eq};

/// Section 3: object, string, number, bool, array and null values round-trip as JSON.
pub async fn cache_round_trip_json_types(h: &Harness) -> CaseResult {
    let values = [
        json!({"a": 1, "nested": {"b": [1, 2, {"c": null}]}, "s": "x"}),
        json!("a string with \"quotes\" and ünïcödé 🧵"),
        json!(42),
        json!(-1.5),
        json!(u64::MAX),
        json!(true),
        json!(false),
        json!([1, "two", 3.25, null, {"k": []}]),
        json!(null),
    ];
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        h.adapter.set_json(&key, v, None).await?;
        ensure_eq!(
            h.adapter.get_json::<Value>(&key).await?,
            Some(v.clone()),
            "value {i}"
        );
    }
    Ok(())
}

/// Values are opaque bytes: non-UTF-8 bytes, the empty value and exactly 1 MiB round-trip.
pub async fn cache_round_trip_arbitrary_bytes(h: &Harness) -> CaseResult {
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    let largest: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i % 251) as u8).collect();
    h.adapter.set("binary", &binary, None).await?;
    h.adapter.set("empty", b"", None).await?;
    h.adapter.set("largest", &largest, None).await?;
    ensure_eq!(h.adapter.get("binary").await?, Some(binary), "binary value");
    ensure_eq!(
        h.adapter.get("empty").await?,
        Some(Vec::new()),
        "empty value is not missing"
    );
    let got = h.adapter.get("largest").await?;
    ensure!(
        got.as_deref() == Some(&largest[..]),
        "1 MiB value did not round-trip"
    );
    Ok(())
}

/// Section 3: a missing key is `None`.
pub async fn cache_missing_is_none(h: &Harness) -> CaseResult {
    ensure_eq!(h.adapter.get("missing").await?, None, "missing key");
    Ok(())
}

/// Section 3: set overwrites the previous value.
pub async fn cache_overwrite_replaces_value(h: &Harness) -> CaseResult {
    h.adapter.set("k", b"first", None).await?;
    h.adapter.set("k", b"second, longer", None).await?;
    h.adapter.set("k", b"3", None).await?;
    ensure_eq!(
        h.adapter.get("k").await?,
        Some(b"3".to_vec()),
        "latest value"
    );
    Ok(())
}

/// Section 3: delete removes the key and leaves others.
pub async fn cache_delete_removes_key(h: &Harness) -> CaseResult {
    h.adapter.set("k", b"v", None).await?;
    h.adapter.set("other", b"o", None).await?;
    h.adapter.delete("k").await?;
    ensure_eq!(h.adapter.get("k").await?, None, "deleted key");
    ensure_eq!(
        h.adapter.get("other").await?,
        Some(b"o".to_vec()),
        "other key"
    );
    Ok(())
}

/// Section 3: deleting a missing key is fine (twice, too).
pub async fn cache_delete_missing_is_fine(h: &Harness) -> CaseResult {
    h.adapter.delete("missing").await?;
    h.adapter.delete("missing").await?;
    ensure_eq!(h.adapter.get("missing").await?, None, "still missing");
    Ok(())
}

/// Rules 1 and 2: a value with a TTL is live while `now < expires_at` and gone from then on.
pub async fn cache_ttl_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let start = h.time.now_ms();
    h.adapter.set("k", b"v", Some(ttl)).await?;
    let got = h.adapter.get("k").await?;
    if still_fresh(h, start, ttl) {
        ensure_eq!(got, Some(b"v".to_vec()), "right after set");
    }
    let checked = just_before_expiry(h, ttl).await;
    if checked {
        ensure_eq!(
            h.adapter.get("k").await?,
            Some(b"v".to_vec()),
            "1 ms before expiry"
        );
    }
    expire(h, ttl, checked).await;
    ensure_eq!(h.adapter.get("k").await?, None, "at/after expiry");
    Ok(())
}

/// Rule 2: `None` means no expiry (a year on a manual clock, a short sleep on the wall clock).
pub async fn cache_no_ttl_persists(h: &Harness) -> CaseResult {
    h.adapter.set("k", b"v", None).await?;
    let wait = if h.time.is_manual() {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_millis(700)
    };
    h.time.advance(wait).await;
    ensure_eq!(
        h.adapter.get("k").await?,
        Some(b"v".to_vec()),
        "value without TTL"
    );
    Ok(())
}

/// Rule 2: `set` replaces the TTL too: overwriting with `None` removes an earlier expiry.
pub async fn cache_overwrite_without_ttl_clears_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    h.adapter.set("k", b"old", Some(ttl)).await?;
    h.adapter.set("k", b"new", None).await?;
    expire(h, ttl, false).await;
    ensure_eq!(
        h.adapter.get("k").await?,
        Some(b"new".to_vec()),
        "after the old TTL"
    );
    Ok(())
}

/// Rule 2: overwriting a persistent value with a TTL makes it expire.
pub async fn cache_overwrite_with_ttl_sets_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    h.adapter.set("k", b"old", None).await?;
    h.adapter.set("k", b"new", Some(ttl)).await?;
    expire(h, ttl, false).await;
    ensure_eq!(h.adapter.get("k").await?, None, "after the new TTL");
    Ok(())
}

/// Rule 5: `set_if_not_exists` on a missing key stores and returns true.
pub async fn cache_set_if_not_exists_missing_stores(h: &Harness) -> CaseResult {
    ensure!(
        h.adapter.set_if_not_exists("k", b"v", None).await?,
        "returned false for a missing key"
    );
    ensure_eq!(
        h.adapter.get("k").await?,
        Some(b"v".to_vec()),
        "stored value"
    );
    Ok(())
}

/// Rule 5: `set_if_not_exists` on a live key returns false and keeps value and TTL.
pub async fn cache_set_if_not_exists_live_keeps_value(h: &Harness) -> CaseResult {
    h.adapter.set("k", b"first", Some(LONG_TTL)).await?;
    ensure!(
        !h.adapter.set_if_not_exists("k", b"second", None).await?,
        "returned true for a live key"
    );
    ensure_eq!(
        h.adapter.get("k").await?,
        Some(b"first".to_vec()),
        "value kept"
    );
    h.adapter.set("p", b"persistent", None).await?;
    ensure!(
        !h.adapter
            .set_if_not_exists("p", b"second", Some(LONG_TTL))
            .await?,
        "returned true for a persistent key"
    );
    ensure_eq!(
        h.adapter.get("p").await?,
        Some(b"persistent".to_vec()),
        "value kept"
    );
    Ok(())
}

/// Rule 5 (and the upstream SQL bug): an expired key counts as absent.
pub async fn cache_set_if_not_exists_expired_stores(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    h.adapter.set("k", b"old", Some(ttl)).await?;
    expire(h, ttl, false).await;
    ensure!(
        h.adapter
            .set_if_not_exists("k", b"new", Some(LONG_TTL))
            .await?,
        "an expired key counted as present"
    );
    ensure_eq!(
        h.adapter.get("k").await?,
        Some(b"new".to_vec()),
        "new value"
    );
    Ok(())
}

/// Rule 5: the winner's TTL applies from the moment it stored (dedupe keys expire).
pub async fn cache_set_if_not_exists_applies_ttl(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    ensure!(
        h.adapter.set_if_not_exists("k", b"v", Some(ttl)).await?,
        "returned false for a missing key"
    );
    let checked = just_before_expiry(h, ttl).await;
    if checked {
        ensure!(
            !h.adapter.set_if_not_exists("k", b"w", Some(ttl)).await?,
            "key absent 1 ms before its expiry"
        );
    }
    expire(h, ttl, checked).await;
    ensure_eq!(h.adapter.get("k").await?, None, "value after its TTL");
    ensure!(
        h.adapter.set_if_not_exists("k", b"again", None).await?,
        "key still present after its TTL"
    );
    Ok(())
}

/// `set_if_not_exists` after `delete` stores again.
pub async fn cache_set_if_not_exists_after_delete_stores(h: &Harness) -> CaseResult {
    ensure!(h.adapter.set_if_not_exists("k", b"1", None).await?, "first");
    h.adapter.delete("k").await?;
    ensure!(
        h.adapter.set_if_not_exists("k", b"2", None).await?,
        "a deleted key counted as present"
    );
    ensure_eq!(h.adapter.get("k").await?, Some(b"2".to_vec()), "value");
    Ok(())
}

/// Rule 5: 16 concurrent `set_if_not_exists` on one key, exactly one winner, and the stored
/// value is the winner's (five rounds).
pub async fn cache_set_if_not_exists_concurrent_one_winner(h: &Harness) -> CaseResult {
    for round in 0..5 {
        let key = format!("dedupe:slack:{round}");
        let results = concurrently(16, |i| {
            let a = h.adapter.clone();
            let key = key.clone();
            async move {
                a.set_if_not_exists(&key, format!("caller-{i}").as_bytes(), Some(LONG_TTL))
                    .await
            }
        })
        .await?;
        let mut winners = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            if r? {
                winners.push(i);
            }
        }
        ensure_eq!(winners.len(), 1, "winners in round {round}");
        let expected = format!("caller-{}", winners[0]).into_bytes();
        ensure_eq!(
            h.adapter.get(&key).await?,
            Some(expected),
            "stored value is the winner's"
        );
    }
    Ok(())
}

/// Keys are exact: prefixes, case and separators make different keys.
pub async fn cache_keys_are_exact(h: &Harness) -> CaseResult {
    let keys = [
        "thread-state:a",
        "thread-state:a:b",
        "thread-state",
        "Thread-State:a",
        "thread-state:a ",
    ];
    for (i, k) in keys.iter().enumerate() {
        h.adapter.set(k, i.to_string().as_bytes(), None).await?;
    }
    for (i, k) in keys.iter().enumerate() {
        ensure_eq!(
            h.adapter.get(k).await?,
            Some(i.to_string().into_bytes()),
            "value of {k:?}"
        );
    }
    Ok(())
}

/// Deleting an expired key is fine, and the key stays absent.
pub async fn cache_delete_expired_is_fine(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    h.adapter.set("k", b"v", Some(ttl)).await?;
    expire(h, ttl, false).await;
    h.adapter.delete("k").await?;
    ensure_eq!(h.adapter.get("k").await?, None, "deleted expired key");
    Ok(())
}
