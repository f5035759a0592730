//! Lists: newest `max_length` items, whole-list TTL (rule 6).

use std::collections::HashSet;
use std::time::Duration;

use chat_state_core::{ListOptions, StateExt};
use serde_json::{Value, json};

use super::support::{LONG_TTL, MS, expire, just_before_expiry, short_ttl, still_fresh};
use crate::{CaseResult, Failure, Harness, concurrently, ensure, ensure_eq};

fn items(xs: &[&str]) -> Vec<Vec<u8>> {
    xs.iter().map(|x| x.as_bytes().to_vec()).collect()
}

async fn append_all(h: &Harness, key: &str, xs: &[&str], options: ListOptions) -> CaseResult {
    for x in xs {
        h.adapter.append_to_list(key, x.as_bytes(), options).await?;
    }
    Ok(())
}

/// Section 3: items come back in insertion order, duplicates kept.
pub async fn list_insertion_order(h: &Harness) -> CaseResult {
    append_all(h, "l", &["a", "b", "c", "b", "a"], ListOptions::new()).await?;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        items(&["a", "b", "c", "b", "a"]),
        "list"
    );
    Ok(())
}

/// Section 3: a missing list is empty.
pub async fn list_missing_is_empty(h: &Harness) -> CaseResult {
    ensure_eq!(
        h.adapter.get_list("missing").await?,
        Vec::<Vec<u8>>::new(),
        "missing list"
    );
    Ok(())
}

/// Rule 6: trimming keeps the newest `max_length` items.
pub async fn list_trim_keeps_newest(h: &Harness) -> CaseResult {
    let opts = ListOptions::new().max_length(3);
    append_all(h, "l", &["1", "2", "3", "4", "5"], opts).await?;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        items(&["3", "4", "5"]),
        "trimmed list"
    );
    Ok(())
}

/// Rule 6: `max_length` 1 keeps only the latest item.
pub async fn list_max_length_one_keeps_latest(h: &Harness) -> CaseResult {
    append_all(h, "l", &["1", "2", "3"], ListOptions::new().max_length(1)).await?;
    ensure_eq!(h.adapter.get_list("l").await?, items(&["3"]), "list");
    Ok(())
}

/// Rule 6: `max_length` applies on each append: a later, smaller limit trims what an earlier
/// append kept; appends without a limit never trim.
pub async fn list_max_length_applies_per_append(h: &Harness) -> CaseResult {
    let many: Vec<String> = (0..150).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    append_all(h, "l", &many, ListOptions::new()).await?;
    ensure_eq!(
        h.adapter.get_list("l").await?.len(),
        150,
        "untrimmed length"
    );
    h.adapter
        .append_to_list("l", b"last", ListOptions::new().max_length(2))
        .await?;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        items(&["149", "last"]),
        "trimmed to 2"
    );
    Ok(())
}

/// Rules 1 and 6: a list with a TTL is gone from its expiry on.
pub async fn list_ttl_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let start = h.time.now_ms();
    append_all(h, "l", &["a", "b"], ListOptions::new().ttl(ttl)).await?;
    let got = h.adapter.get_list("l").await?;
    if still_fresh(h, start, ttl) {
        ensure_eq!(got, items(&["a", "b"]), "right after append");
    }
    let checked = just_before_expiry(h, ttl).await;
    if checked {
        ensure_eq!(
            h.adapter.get_list("l").await?.len(),
            2,
            "1 ms before expiry"
        );
    }
    expire(h, ttl, checked).await;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        Vec::<Vec<u8>>::new(),
        "after expiry"
    );
    Ok(())
}

/// Rule 6: an append with a TTL moves the whole list's expiry to now + TTL (refresh).
pub async fn list_ttl_refreshed_on_append(h: &Harness) -> CaseResult {
    if h.time.is_manual() {
        let ttl = Duration::from_secs(10);
        h.adapter
            .append_to_list("l", b"a", ListOptions::new().ttl(ttl))
            .await?;
        h.time.advance(Duration::from_secs(6)).await;
        h.adapter
            .append_to_list("l", b"b", ListOptions::new().ttl(ttl))
            .await?;
        h.time.advance(Duration::from_secs(10) - MS).await; // 16 s after the first append
        ensure_eq!(
            h.adapter.get_list("l").await?,
            items(&["a", "b"]),
            "before new expiry"
        );
        h.time.advance(MS).await;
        ensure_eq!(h.adapter.get_list("l").await?.len(), 0, "at the new expiry");
    } else {
        let ttl = Duration::from_millis(300);
        h.adapter
            .append_to_list("l", b"a", ListOptions::new().ttl(ttl))
            .await?;
        // The refresh uses a long TTL so that "still there" can be asserted after sleeping.
        let start = h.time.now_ms();
        h.adapter
            .append_to_list("l", b"b", ListOptions::new().ttl(LONG_TTL))
            .await?;
        let fresh = still_fresh(h, start, ttl);
        expire(h, ttl, false).await;
        let got = h.adapter.get_list("l").await?;
        if fresh {
            ensure_eq!(got, items(&["a", "b"]), "after the first TTL");
        } else {
            // The first TTL may have run out before the refresh: then the list restarted.
            ensure!(
                got == items(&["a", "b"]) || got == items(&["b"]),
                "after the first TTL: {got:?}"
            );
        }
    }
    Ok(())
}

/// Rule 6: an append with a TTL sets the expiry even when that is sooner than before.
pub async fn list_ttl_append_can_shorten_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    h.adapter
        .append_to_list("l", b"a", ListOptions::new().ttl(LONG_TTL))
        .await?;
    h.adapter
        .append_to_list("l", b"b", ListOptions::new().ttl(ttl))
        .await?;
    expire(h, ttl, false).await;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        Vec::<Vec<u8>>::new(),
        "list after the shorter TTL (it must replace the longer one)"
    );
    Ok(())
}

/// Rule 6: an append without a TTL leaves the existing expiry unchanged.
pub async fn list_append_without_ttl_keeps_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    h.adapter
        .append_to_list("l", b"a", ListOptions::new().ttl(ttl))
        .await?;
    h.adapter
        .append_to_list("l", b"b", ListOptions::new())
        .await?;
    h.adapter
        .append_to_list("l", b"c", ListOptions::new().max_length(5))
        .await?;
    expire(h, ttl, false).await;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        Vec::<Vec<u8>>::new(),
        "appends without TTL must not remove or extend the expiry"
    );
    Ok(())
}

/// Rule 2: a list appended without any TTL never expires.
pub async fn list_no_ttl_persists(h: &Harness) -> CaseResult {
    append_all(h, "l", &["a", "b"], ListOptions::new().max_length(200)).await?;
    let wait = if h.time.is_manual() {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_millis(700)
    };
    h.time.advance(wait).await;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        items(&["a", "b"]),
        "list without TTL"
    );
    Ok(())
}

/// Rule 6: an expired list restarts empty, and (appended without a TTL) has no expiry left.
pub async fn list_restarts_empty_after_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    append_all(h, "l", &["old1", "old2"], ListOptions::new().ttl(ttl)).await?;
    expire(h, ttl, false).await;
    h.adapter
        .append_to_list("l", b"new", ListOptions::new())
        .await?;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        items(&["new"]),
        "restarted list"
    );
    expire(h, ttl, false).await;
    ensure_eq!(
        h.adapter.get_list("l").await?,
        items(&["new"]),
        "the restarted list inherited the dead list's expiry"
    );
    Ok(())
}

/// Section 3: mixed JSON types round-trip through the typed helpers.
pub async fn list_mixed_json_types(h: &Harness) -> CaseResult {
    let values = vec![
        json!({"role": "user", "text": "hi"}),
        json!("text"),
        json!(7),
        json!(2.5),
        json!(true),
        json!(null),
        json!([1, [2, [3]]]),
    ];
    for v in &values {
        h.adapter.append_json("l", v, ListOptions::new()).await?;
    }
    ensure_eq!(
        h.adapter.get_list_json::<Value>("l").await?,
        values,
        "typed list"
    );
    Ok(())
}

/// Items are opaque bytes: binary, empty and large items round-trip.
pub async fn list_items_round_trip_bytes(h: &Harness) -> CaseResult {
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let large = vec![b'x'; 256 * 1024];
    for item in [&binary[..], b"", &large[..]] {
        h.adapter
            .append_to_list("l", item, ListOptions::new())
            .await?;
    }
    let got = h.adapter.get_list("l").await?;
    ensure!(
        got == vec![binary, Vec::new(), large],
        "items did not round-trip ({} items)",
        got.len()
    );
    Ok(())
}

/// Section 3: lists are isolated by key (prefixes and case included).
pub async fn list_isolation_by_key(h: &Harness) -> CaseResult {
    h.adapter
        .append_to_list("msg-history:a", b"1", ListOptions::new())
        .await?;
    h.adapter
        .append_to_list("msg-history:a:b", b"2", ListOptions::new())
        .await?;
    h.adapter
        .append_to_list("msg-history:A", b"3", ListOptions::new())
        .await?;
    ensure_eq!(
        h.adapter.get_list("msg-history:a").await?,
        items(&["1"]),
        "a"
    );
    ensure_eq!(
        h.adapter.get_list("msg-history:a:b").await?,
        items(&["2"]),
        "a:b"
    );
    ensure_eq!(
        h.adapter.get_list("msg-history:A").await?,
        items(&["3"]),
        "A"
    );
    ensure_eq!(h.adapter.get_list("msg-history").await?.len(), 0, "prefix");
    Ok(())
}

/// Concurrent appends to one list lose nothing and duplicate nothing.
pub async fn list_concurrent_appends_all_kept(h: &Harness) -> CaseResult {
    let results = concurrently(16, |i| {
        let a = h.adapter.clone();
        async move {
            for j in 0..5 {
                a.append_to_list("l", format!("{i}-{j}").as_bytes(), ListOptions::new())
                    .await?;
            }
            Ok::<(), chat_state_core::Error>(())
        }
    })
    .await?;
    for r in results {
        r?;
    }
    let got = h.adapter.get_list("l").await?;
    ensure_eq!(got.len(), 80, "items after 16 × 5 appends");
    let distinct: HashSet<_> = got.iter().collect();
    ensure_eq!(distinct.len(), 80, "distinct items");
    // Each appender's own items keep their order.
    for i in 0..16 {
        let mine: Vec<String> = got
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .filter(|s| s.split('-').next() == Some(&i.to_string()))
            .collect();
        let expected: Vec<String> = (0..5).map(|j| format!("{i}-{j}")).collect();
        if mine != expected {
            return Err(Failure::new(format!(
                "appender {i}'s items out of order: {mine:?}"
            )));
        }
    }
    Ok(())
}
