//! Rule 8: cache, lists, queues, subscriptions and locks are separate namespaces.

use chat_state_core::{ListOptions, QueueEntry};
use serde_json::json;

use super::support::{LONG_LIFETIME, LONG_TTL, expire, short_ttl};
use crate::{CaseResult, Failure, Harness, ensure, ensure_eq};

fn entry(h: &Harness) -> QueueEntry {
    QueueEntry::new(json!({"m": "queued"}), h.time.now_ms(), LONG_LIFETIME)
}

/// Writes the same key into all five namespaces.
async fn fill(h: &Harness, key: &str) -> CaseResult {
    let a = &h.adapter;
    a.subscribe(key).await?;
    a.acquire_lock(key, LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new(format!("lock {key:?} was not free")))?;
    a.set(key, b"cached", None).await?;
    a.append_to_list(key, b"listed", ListOptions::new()).await?;
    a.enqueue(key, entry(h), 10).await?;
    Ok(())
}

/// The same key used in every namespace: each keeps its own value.
pub async fn namespace_same_key_in_all_five(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    fill(h, "k").await?;
    ensure!(a.is_subscribed("k").await?, "subscription");
    ensure!(a.acquire_lock("k", LONG_TTL).await?.is_none(), "lock");
    ensure_eq!(a.get("k").await?, Some(b"cached".to_vec()), "cache value");
    ensure_eq!(a.get_list("k").await?, vec![b"listed".to_vec()], "list");
    ensure_eq!(a.queue_depth("k").await?, 1, "queue depth");
    Ok(())
}

/// A value in one namespace does not make the key present in another: a cached key does not
/// block a lock or a subscription, a lock does not block `set_if_not_exists`.
pub async fn namespace_presence_does_not_leak(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.set("c", b"v", None).await?;
    ensure!(
        !a.is_subscribed("c").await?,
        "a cache key counts as a subscription"
    );
    ensure_eq!(
        a.get_list("c").await?.len(),
        0,
        "a cache key shows up as a list"
    );
    ensure_eq!(
        a.queue_depth("c").await?,
        0,
        "a cache key shows up as a queue"
    );
    ensure!(
        a.acquire_lock("c", LONG_TTL).await?.is_some(),
        "a cache key blocks the lock of the same name"
    );
    a.acquire_lock("l", LONG_TTL).await?;
    ensure!(
        a.set_if_not_exists("l", b"v", None).await?,
        "a held lock blocks set_if_not_exists on the same name"
    );
    a.subscribe("s").await?;
    ensure_eq!(
        a.get("s").await?,
        None,
        "a subscription shows up as a cache value"
    );
    a.enqueue("q", entry(h), 10).await?;
    ensure_eq!(
        a.get_list("q").await?.len(),
        0,
        "a queue shows up as a list"
    );
    a.append_to_list("li", b"x", ListOptions::new()).await?;
    ensure_eq!(a.dequeue("li").await?, None, "a list shows up as a queue");
    ensure_eq!(a.get("li").await?, None, "a list shows up as a cache value");
    Ok(())
}

/// Removing from one namespace leaves the others: delete, force-release, unsubscribe and
/// draining the queue each touch only their own.
pub async fn namespace_removals_touch_one_namespace(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    fill(h, "k").await?;
    a.delete("k").await?;
    ensure!(
        a.is_subscribed("k").await?,
        "delete removed the subscription"
    );
    ensure!(
        a.acquire_lock("k", LONG_TTL).await?.is_none(),
        "delete released the lock"
    );
    ensure_eq!(a.get_list("k").await?.len(), 1, "delete removed the list");
    ensure_eq!(a.queue_depth("k").await?, 1, "delete removed the queue");
    a.force_release_lock("k").await?;
    a.unsubscribe("k").await?;
    ensure_eq!(
        a.get_list("k").await?.len(),
        1,
        "force-release/unsubscribe removed the list"
    );
    ensure_eq!(
        a.queue_depth("k").await?,
        1,
        "force-release/unsubscribe removed the queue"
    );
    ensure!(a.dequeue("k").await?.is_some(), "queue entry");
    ensure_eq!(a.get_list("k").await?.len(), 1, "dequeue touched the list");
    Ok(())
}

/// Keys that look like another namespace's storage key (the upstream Redis layout is
/// `<prefix>:cache:<key>`, `<prefix>:lock:<id>`, ...) still do not collide.
pub async fn namespace_keys_resembling_storage_layout(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    a.set("lock:x", b"cache value", None).await?;
    a.set("list:x", b"cache value", None).await?;
    a.set("queue:x", b"cache value", None).await?;
    a.set("subscriptions", b"cache value", None).await?;
    ensure!(a.acquire_lock("x", LONG_TTL).await?.is_some(), "lock x");
    ensure_eq!(a.get_list("x").await?.len(), 0, "list x");
    ensure_eq!(a.queue_depth("x").await?, 0, "queue x");
    ensure!(!a.is_subscribed("x").await?, "subscription x");
    a.append_to_list("cache:y", b"item", ListOptions::new())
        .await?;
    a.enqueue("list:y", entry(h), 10).await?;
    a.acquire_lock("cache:z", LONG_TTL).await?;
    ensure_eq!(a.get("y").await?, None, "cache y");
    ensure_eq!(a.get_list("y").await?.len(), 0, "list y");
    ensure!(
        a.set_if_not_exists("z", b"v", None).await?,
        "cache z blocked by lock cache:z"
    );
    ensure_eq!(
        a.get("lock:x").await?,
        Some(b"cache value".to_vec()),
        "cache lock:x"
    );
    Ok(())
}

/// Expiry in one namespace does not expire the same key in another.
pub async fn namespace_expiry_is_per_namespace(h: &Harness) -> CaseResult {
    let a = &h.adapter;
    let ttl = super::support::short_ttl(h);
    a.set("k", b"short", Some(ttl)).await?;
    a.append_to_list("k", b"long", ListOptions::new().ttl(LONG_TTL))
        .await?;
    a.acquire_lock("k", LONG_TTL).await?;
    super::support::expire(h, ttl, false).await;
    ensure_eq!(a.get("k").await?, None, "cache value expired");
    ensure_eq!(
        a.get_list("k").await?.len(),
        1,
        "list expired with the cache value"
    );
    ensure!(
        a.acquire_lock("k", LONG_TTL).await?.is_none(),
        "lock expired with the cache value"
    );
    Ok(())
}

/// Rule 1 under load: expiry holds on every operation however much other state expired
/// before it. A backend that hides expired rows by sweeping them (a background pass, a few
/// rows cleaned per call) instead of checking expiry when it reads passes every small case
/// and fails here: a few hundred expired rows per namespace sit in front of the subject's.
/// On a manual clock the subjects are checked at their exact expiry instant.
pub async fn namespace_expiry_holds_under_expired_backlog(h: &Harness) -> CaseResult {
    const BACKLOG: usize = 300;
    let a = &h.adapter;
    let backlog_ttl = short_ttl(h);
    let subject_ttl = backlog_ttl * 2;
    for i in 0..BACKLOG {
        let key = format!("backlog-{i}");
        a.set(&key, b"old", Some(backlog_ttl)).await?;
        a.append_to_list(&key, b"old", ListOptions::new().ttl(backlog_ttl))
            .await?;
        a.acquire_lock(&key, backlog_ttl).await?;
        let entry = QueueEntry::new(json!(i), h.time.now_ms(), backlog_ttl);
        a.enqueue(&key, entry, 10).await?;
    }
    let lock = a
        .acquire_lock("subject", subject_ttl)
        .await?
        .ok_or_else(|| Failure::new("the subject lock was not free"))?;
    a.set("subject", b"v", Some(subject_ttl)).await?;
    a.set("subject-once", b"v", Some(subject_ttl)).await?;
    a.append_to_list("subject", b"v", ListOptions::new().ttl(subject_ttl))
        .await?;
    let entry = QueueEntry::new(json!("subject"), h.time.now_ms(), subject_ttl);
    a.enqueue("subject", entry, 10).await?;
    expire(h, subject_ttl, false).await;
    ensure!(
        !a.extend_lock(&lock, LONG_TTL).await?,
        "an expired lock was extended"
    );
    ensure!(
        a.acquire_lock("subject", LONG_TTL).await?.is_some(),
        "an expired lock is still held"
    );
    ensure_eq!(a.get("subject").await?, None, "an expired cache value");
    ensure!(
        a.set_if_not_exists("subject-once", b"w", None).await?,
        "an expired key still counts as present for set_if_not_exists"
    );
    ensure_eq!(a.get_list("subject").await?.len(), 0, "an expired list");
    ensure_eq!(
        a.queue_depth("subject").await?,
        0,
        "an expired entry counted"
    );
    ensure_eq!(
        a.dequeue("subject").await?,
        None,
        "an expired entry dequeued"
    );
    Ok(())
}
