//! Subscriptions: which threads the bot follows.

use chat_state_core::validate::MAX_KEY_BYTES;

use crate::{CaseResult, Harness, ensure, ensure_eq};

/// false -> subscribe -> true -> unsubscribe -> false.
pub async fn subscription_round_trip(h: &Harness) -> CaseResult {
    let s = &h.adapter;
    ensure_eq!(s.is_subscribed("t1").await?, false, "fresh thread");
    s.subscribe("t1").await?;
    ensure_eq!(s.is_subscribed("t1").await?, true, "after subscribe");
    s.unsubscribe("t1").await?;
    ensure_eq!(s.is_subscribed("t1").await?, false, "after unsubscribe");
    Ok(())
}

/// Subscribing twice is the same as once; one unsubscribe removes it.
pub async fn subscription_subscribe_is_idempotent(h: &Harness) -> CaseResult {
    let s = &h.adapter;
    s.subscribe("t1").await?;
    s.subscribe("t1").await?;
    ensure!(
        s.is_subscribed("t1").await?,
        "subscribed after two subscribes"
    );
    s.unsubscribe("t1").await?;
    ensure!(!s.is_subscribed("t1").await?, "one unsubscribe removes it");
    Ok(())
}

/// Unsubscribing a thread that was never subscribed succeeds and changes nothing.
pub async fn subscription_unsubscribe_missing_is_fine(h: &Harness) -> CaseResult {
    let s = &h.adapter;
    s.subscribe("other").await?;
    s.unsubscribe("never-subscribed").await?;
    s.unsubscribe("never-subscribed").await?;
    ensure!(
        !s.is_subscribed("never-subscribed").await?,
        "still not subscribed"
    );
    ensure!(s.is_subscribed("other").await?, "other thread untouched");
    Ok(())
}

/// Ids with `:` and `.` (platform-style thread ids) are distinct and round-trip.
pub async fn subscription_ids_with_separators(h: &Harness) -> CaseResult {
    let s = &h.adapter;
    let a = "slack:C123:1700000000.000100";
    let b = "slack:C123:1700000000.000200";
    s.subscribe(a).await?;
    ensure!(s.is_subscribed(a).await?, "{a} subscribed");
    ensure!(!s.is_subscribed(b).await?, "{b} is a different thread");
    ensure!(
        !s.is_subscribed("slack:C123").await?,
        "a prefix is a different thread"
    );
    ensure!(
        !s.is_subscribed("slack:c123:1700000000.000100").await?,
        "ids are case-sensitive"
    );
    Ok(())
}

/// Unsubscribing one thread leaves the others subscribed.
pub async fn subscription_threads_are_independent(h: &Harness) -> CaseResult {
    let s = &h.adapter;
    for t in ["a", "b", "c"] {
        s.subscribe(t).await?;
    }
    s.unsubscribe("b").await?;
    ensure!(s.is_subscribed("a").await?, "a still subscribed");
    ensure!(!s.is_subscribed("b").await?, "b unsubscribed");
    ensure!(s.is_subscribed("c").await?, "c still subscribed");
    Ok(())
}

/// Rule 9, accepting side: a 1024-byte id and a non-ASCII id are valid and distinct.
pub async fn subscription_longest_and_unicode_ids_accepted(h: &Harness) -> CaseResult {
    let s = &h.adapter;
    // 1024 bytes made of 2-byte characters: the limit counts bytes, not characters.
    let longest = "é".repeat(MAX_KEY_BYTES / 2);
    let unicode = "discord:频道:🧵";
    s.subscribe(&longest).await?;
    s.subscribe(unicode).await?;
    ensure!(s.is_subscribed(&longest).await?, "1024-byte id subscribed");
    ensure!(s.is_subscribed(unicode).await?, "unicode id subscribed");
    ensure!(
        !s.is_subscribed(&"é".repeat(MAX_KEY_BYTES / 2 - 1)).await?,
        "a shorter id is a different thread"
    );
    Ok(())
}
