//! Locks: token-owned, expiring, fenced (contract rules 1, 3, 4, 10, 11, 12).

use std::collections::HashSet;
use std::task::Poll;
use std::time::Duration;

use chat_state_core::{Lock, Operation};

use super::support::{LONG_TTL, MS, expire, just_before_expiry, rejected, short_ttl, still_fresh};
use crate::{CaseResult, Failure, Harness, concurrently, ensure, ensure_eq};

async fn take(h: &Harness, id: &str, ttl: Duration) -> Result<Lock, Failure> {
    h.adapter
        .acquire_lock(id, ttl)
        .await?
        .ok_or_else(|| Failure::new(format!("lock {id:?} should be free but acquire gave None")))
}

async fn is_held(h: &Harness, id: &str) -> Result<bool, Failure> {
    // Probing by acquiring: if the probe wins, give the lock back so the case can go on.
    match h.adapter.acquire_lock(id, LONG_TTL).await? {
        Some(probe) => {
            h.adapter.release_lock(&probe).await?;
            Ok(false)
        }
        None => Ok(true),
    }
}

fn forged(id: &str, token: &str) -> Lock {
    Lock {
        thread_id: id.to_owned(),
        token: token.to_owned(),
        expires_at: u64::MAX / 4,
        fence: 0,
    }
}

/// Section 3: acquire returns the lock id, a 128-bit token and a future expiry.
pub async fn lock_acquire_returns_id_token_and_expiry(h: &Harness) -> CaseResult {
    let now = h.time.now_ms();
    let lock = take(h, "slack:C1:1.2", LONG_TTL).await?;
    ensure_eq!(lock.thread_id.as_str(), "slack:C1:1.2", "lock id");
    // 128 random bits are at least 22 characters in any text encoding (base64); hex is 32.
    ensure!(
        lock.token.len() >= 22,
        "token {:?} is too short to hold 128 random bits",
        lock.token
    );
    ensure!(
        lock.expires_at > now,
        "expires_at {} is not after now {now}",
        lock.expires_at
    );
    Ok(())
}

/// Rule 12: `expires_at` is now + TTL from a clock read before the call: exactly with a
/// manual clock, within `[before + ttl, after + ttl]` on the wall clock.
pub async fn lock_expires_at_is_now_plus_ttl(h: &Harness) -> CaseResult {
    let ttl = Duration::from_secs(30);
    let before = h.time.now_ms();
    let lock = take(h, "t", ttl).await?;
    let after = h.time.now_ms();
    if h.time.is_manual() {
        ensure_eq!(
            lock.expires_at,
            before + 30_000,
            "expires_at on a manual clock"
        );
    } else {
        ensure!(
            before + 30_000 <= lock.expires_at && lock.expires_at <= after + 30_000,
            "expires_at {} outside [{}, {}]",
            lock.expires_at,
            before + 30_000,
            after + 30_000
        );
    }
    Ok(())
}

/// Section 3: a second acquire of a held lock gets `None`.
pub async fn lock_second_acquire_gets_none(h: &Harness) -> CaseResult {
    take(h, "t", LONG_TTL).await?;
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
        "second acquire of a held lock succeeded"
    );
    Ok(())
}

/// Rule 4: a release with the wrong token is a no-op; the holder keeps the lock.
pub async fn lock_wrong_token_release_keeps_lock(h: &Harness) -> CaseResult {
    let lock = take(h, "t", LONG_TTL).await?;
    h.adapter
        .release_lock(&forged("t", "00000000000000000000000000000000"))
        .await?;
    ensure!(
        is_held(h, "t").await?,
        "a wrong-token release freed the lock"
    );
    ensure!(
        h.adapter.extend_lock(&lock, LONG_TTL).await?,
        "the holder lost its lock to a wrong-token release"
    );
    Ok(())
}

/// Section 3: release, then acquire again with a new token.
pub async fn lock_release_then_reacquire(h: &Harness) -> CaseResult {
    let first = take(h, "t", LONG_TTL).await?;
    h.adapter.release_lock(&first).await?;
    let second = take(h, "t", LONG_TTL).await?;
    ensure!(first.token != second.token, "re-acquire reused the token");
    Ok(())
}

/// Rule 1: a lock is held while `now < expires_at` and free from `expires_at` on; after
/// expiry another caller acquires it with a different token.
pub async fn lock_expiry_then_reacquire_with_new_token(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let first = take(h, "t", ttl).await?;
    let checked = just_before_expiry(h, ttl).await;
    if checked {
        ensure!(
            h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
            "lock free 1 ms before its expiry"
        );
    }
    expire(h, ttl, checked).await;
    let second = h
        .adapter
        .acquire_lock("t", LONG_TTL)
        .await?
        .ok_or_else(|| Failure::new("lock still held at/after its expiry (rule 1 is strict)"))?;
    ensure!(first.token != second.token, "takeover reused the token");
    Ok(())
}

/// Rule 4: a stale holder's release after a takeover leaves the new holder's lock.
pub async fn lock_stale_release_after_takeover_keeps_new_lock(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let stale = take(h, "t", ttl).await?;
    expire(h, ttl, false).await;
    let current = take(h, "t", LONG_TTL).await?;
    h.adapter.release_lock(&stale).await?;
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
        "the stale holder's release freed the new holder's lock"
    );
    ensure!(
        h.adapter.extend_lock(&current, LONG_TTL).await?,
        "the new holder lost its lock"
    );
    Ok(())
}

/// Section 3 and rule 3: extend keeps the lock past its first TTL.
pub async fn lock_extend_keeps_lock_past_first_ttl(h: &Harness) -> CaseResult {
    if h.time.is_manual() {
        let ttl = Duration::from_secs(30);
        let lock = take(h, "t", ttl).await?;
        h.time.advance(Duration::from_secs(20)).await;
        ensure!(
            h.adapter.extend_lock(&lock, ttl).await?,
            "extend of a live lock"
        );
        h.time.advance(Duration::from_secs(20)).await; // 40 s after acquire, 20 s after extend
        ensure!(
            h.adapter.acquire_lock("t", ttl).await?.is_none(),
            "lock free after its first TTL despite the extend"
        );
        ensure!(h.adapter.extend_lock(&lock, ttl).await?, "second extend");
    } else {
        // A stalled machine can let a short TTL run out before the extend arrives; that says
        // nothing about the backend, so try again with a fresh lock and twice the TTL rather
        // than pass or skip. Only a backend that refuses a fresh lock's extend fails.
        let mut ttl = Duration::from_millis(600);
        let mut attempt = 0;
        let (lock, ttl) = loop {
            attempt += 1;
            let id = format!("t{attempt}");
            let start = h.time.now_ms();
            let lock = take(h, &id, ttl).await?;
            if h.adapter.extend_lock(&lock, LONG_TTL).await? {
                break (lock, ttl);
            }
            if still_fresh(h, start, ttl) {
                return Err(Failure::new("extend of a live lock returned false"));
            }
            if attempt == 4 {
                return Err(Failure::new(format!(
                    "extend never arrived within half the TTL in 4 attempts (last TTL {ttl:?}): \
                     the backend answers too slowly to hold a lock"
                )));
            }
            ttl *= 2;
        };
        expire(h, ttl, false).await; // the first TTL is over now
        ensure!(
            h.adapter
                .acquire_lock(&lock.thread_id, LONG_TTL)
                .await?
                .is_none(),
            "lock free after its first TTL despite the extend"
        );
        ensure!(
            h.adapter.extend_lock(&lock, LONG_TTL).await?,
            "second extend"
        );
    }
    Ok(())
}

/// Trait docs for `extend_lock`: the new expiry is now + TTL, even when that is sooner
/// than the current expiry (manual clock only: it needs exact boundaries).
pub async fn lock_extend_sets_expiry_to_now_plus_ttl(h: &Harness) -> CaseResult {
    if !h.time.is_manual() {
        return Err(Failure::skip("exact expiry boundaries need a manual clock"));
    }
    let lock = take(h, "t", Duration::from_secs(10)).await?;
    h.time.advance(Duration::from_secs(4)).await;
    ensure!(
        h.adapter.extend_lock(&lock, Duration::from_secs(2)).await?,
        "extend of a live lock"
    );
    // Expiry is now acquire + 6 s, sooner than the original acquire + 10 s.
    h.time.advance(Duration::from_secs(2) - MS).await;
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
        "lock free 1 ms before the extended expiry"
    );
    h.time.advance(MS).await;
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
        "lock still held at now + TTL of the extend (a shorter extend must shorten it)"
    );
    Ok(())
}

/// Rules 1 and 3: extend succeeds 1 ms before expiry and fails at the expiry instant.
pub async fn lock_extend_fails_at_expiry_instant(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let early = take(h, "early", ttl).await?;
    let late = take(h, "late", ttl).await?;
    let checked = just_before_expiry(h, ttl).await;
    if checked {
        ensure!(
            h.adapter.extend_lock(&early, LONG_TTL).await?,
            "extend 1 ms before expiry returned false"
        );
    }
    expire(h, ttl, checked).await;
    ensure!(
        !h.adapter.extend_lock(&late, LONG_TTL).await?,
        "extend at/after the expiry instant returned true"
    );
    Ok(())
}

/// Rule 3: extending an expired lock returns false and does not bring it back.
pub async fn lock_extend_never_resurrects_expired(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let lock = take(h, "t", ttl).await?;
    expire(h, ttl, false).await;
    ensure!(
        !h.adapter.extend_lock(&lock, LONG_TTL).await?,
        "extend of an expired lock returned true"
    );
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
        "extend resurrected the expired lock"
    );
    Ok(())
}

/// Rule 3: extend with the wrong token returns false and leaves the holder's lock alone.
pub async fn lock_extend_false_with_wrong_token(h: &Harness) -> CaseResult {
    let lock = take(h, "t", LONG_TTL).await?;
    ensure!(
        !h.adapter
            .extend_lock(&forged("t", "ffffffffffffffffffffffffffffffff"), LONG_TTL)
            .await?,
        "extend with a wrong token returned true"
    );
    ensure!(
        h.adapter.extend_lock(&lock, LONG_TTL).await?,
        "the holder can still extend"
    );
    Ok(())
}

/// Rule 3: extend after release returns false and does not re-create the lock.
pub async fn lock_extend_false_after_release(h: &Harness) -> CaseResult {
    let lock = take(h, "t", LONG_TTL).await?;
    h.adapter.release_lock(&lock).await?;
    ensure!(
        !h.adapter.extend_lock(&lock, LONG_TTL).await?,
        "extend of a released lock returned true"
    );
    ensure!(!is_held(h, "t").await?, "extend re-created a released lock");
    Ok(())
}

/// Rule 3: extend after force-release returns false and does not re-create the lock.
pub async fn lock_extend_false_after_force_release(h: &Harness) -> CaseResult {
    let lock = take(h, "t", LONG_TTL).await?;
    h.adapter.force_release_lock("t").await?;
    ensure!(
        !h.adapter.extend_lock(&lock, LONG_TTL).await?,
        "extend of a force-released lock returned true"
    );
    ensure!(
        !is_held(h, "t").await?,
        "extend re-created a force-released lock"
    );
    Ok(())
}

/// Rule 3: a stale holder cannot extend after a takeover, and the new lock is untouched.
pub async fn lock_extend_false_for_stale_holder_after_takeover(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let stale = take(h, "t", ttl).await?;
    expire(h, ttl, false).await;
    let current = take(h, "t", LONG_TTL).await?;
    ensure!(
        !h.adapter.extend_lock(&stale, LONG_TTL).await?,
        "the stale holder extended the new holder's lock"
    );
    ensure!(
        h.adapter.extend_lock(&current, LONG_TTL).await?,
        "the new holder lost its lock"
    );
    Ok(())
}

/// Rule 2 (and the upstream `PEXPIRE key 0` bug): extend with a zero TTL is invalid input
/// and leaves the lock held.
pub async fn lock_extend_zero_ttl_is_invalid_and_keeps_lock(h: &Harness) -> CaseResult {
    let lock = take(h, "t", LONG_TTL).await?;
    rejected(
        h,
        h.adapter.extend_lock(&lock, Duration::ZERO).await,
        Operation::ExtendLock,
        "a zero TTL",
    )?;
    ensure!(
        is_held(h, "t").await?,
        "a zero-TTL extend released the lock"
    );
    ensure!(
        h.adapter.extend_lock(&lock, LONG_TTL).await?,
        "the holder lost its lock"
    );
    Ok(())
}

/// Rule 4: force-release frees a lock whatever its token.
pub async fn lock_force_release_ignores_token(h: &Harness) -> CaseResult {
    let first = take(h, "t", LONG_TTL).await?;
    h.adapter.force_release_lock("t").await?;
    let second = take(h, "t", LONG_TTL).await?;
    ensure!(
        first.token != second.token,
        "new acquisition reused the token"
    );
    Ok(())
}

/// Rule 4: force-release of a lock nobody holds is a no-op and touches no other lock.
pub async fn lock_force_release_missing_is_noop(h: &Harness) -> CaseResult {
    let other = take(h, "other", LONG_TTL).await?;
    h.adapter.force_release_lock("missing").await?;
    h.adapter.force_release_lock("missing").await?;
    ensure!(
        h.adapter.extend_lock(&other, LONG_TTL).await?,
        "another lock was affected"
    );
    take(h, "missing", LONG_TTL).await?;
    Ok(())
}

/// Rule 4: releasing twice, or releasing a lock that was never taken, is a no-op.
pub async fn lock_release_is_idempotent(h: &Harness) -> CaseResult {
    let lock = take(h, "t", LONG_TTL).await?;
    h.adapter.release_lock(&lock).await?;
    h.adapter.release_lock(&lock).await?;
    h.adapter
        .release_lock(&forged("never-taken", "0123456789abcdef0123456789abcdef"))
        .await?;
    take(h, "t", LONG_TTL).await?;
    take(h, "never-taken", LONG_TTL).await?;
    Ok(())
}

/// The holder can release after extending, and the lock is free afterwards.
pub async fn lock_release_after_extend_frees(h: &Harness) -> CaseResult {
    let lock = take(h, "t", LONG_TTL).await?;
    ensure!(h.adapter.extend_lock(&lock, LONG_TTL).await?, "extend");
    h.adapter.release_lock(&lock).await?;
    take(h, "t", LONG_TTL).await?;
    Ok(())
}

/// Section 3: locks on different ids are independent.
pub async fn lock_different_ids_independent(h: &Harness) -> CaseResult {
    let a = take(h, "a", LONG_TTL).await?;
    let b = take(h, "b", LONG_TTL).await?;
    h.adapter.release_lock(&a).await?;
    ensure!(
        h.adapter.acquire_lock("b", LONG_TTL).await?.is_none(),
        "releasing a freed b"
    );
    h.adapter.force_release_lock("a").await?;
    ensure!(
        h.adapter.extend_lock(&b, LONG_TTL).await?,
        "b after force-release of a"
    );
    Ok(())
}

/// A token only counts for the id it was issued for: another lock's token cannot release or
/// extend it.
pub async fn lock_token_bound_to_its_id(h: &Harness) -> CaseResult {
    let a = take(h, "a", LONG_TTL).await?;
    take(h, "b", LONG_TTL).await?;
    let cross = forged("b", &a.token);
    h.adapter.release_lock(&cross).await?;
    ensure!(is_held(h, "b").await?, "a's token released lock b");
    ensure!(
        !h.adapter.extend_lock(&cross, LONG_TTL).await?,
        "a's token extended lock b"
    );
    ensure!(is_held(h, "a").await?, "lock a was affected");
    Ok(())
}

/// Upstream lock ids are not only thread ids (`chat:callback:<token>`, channel ids): ids that
/// share a prefix are different locks.
pub async fn lock_ids_with_separators(h: &Harness) -> CaseResult {
    take(h, "chat:callback:abc", LONG_TTL).await?;
    take(h, "chat:callback:abcd", LONG_TTL).await?;
    take(h, "chat:callback", LONG_TTL).await?;
    take(h, "slack:C123", LONG_TTL).await?;
    take(h, "slack:C123:1700000000.000100", LONG_TTL).await?;
    ensure!(
        h.adapter
            .acquire_lock("chat:callback:abc", LONG_TTL)
            .await?
            .is_none(),
        "chat:callback:abc is held"
    );
    Ok(())
}

/// Rule 10: every acquisition gets a fresh token (20 acquisitions of one id, and across ids).
pub async fn lock_tokens_unique_per_acquisition(h: &Harness) -> CaseResult {
    let mut seen = HashSet::new();
    for i in 0..20 {
        let lock = take(h, "t", LONG_TTL).await?;
        ensure!(
            seen.insert(lock.token.clone()),
            "token repeated at round {i}"
        );
        h.adapter.release_lock(&lock).await?;
        let other = take(h, &format!("other-{i}"), LONG_TTL).await?;
        ensure!(seen.insert(other.token), "token repeated across ids");
    }
    Ok(())
}

/// Rule 11: the fence strictly increases across releases.
pub async fn lock_fence_increases_across_release(h: &Harness) -> CaseResult {
    let mut last: Option<u64> = None;
    for i in 0..5 {
        let lock = take(h, "t", LONG_TTL).await?;
        if let Some(prev) = last {
            ensure!(
                lock.fence > prev,
                "fence {} after {prev} (round {i})",
                lock.fence
            );
        }
        last = Some(lock.fence);
        h.adapter.release_lock(&lock).await?;
    }
    Ok(())
}

/// Rule 11: the fence strictly increases across expiry.
pub async fn lock_fence_increases_across_expiry(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let first = take(h, "t", ttl).await?;
    expire(h, ttl, false).await;
    let second = take(h, "t", ttl).await?;
    ensure!(
        second.fence > first.fence,
        "fence {} after {}",
        second.fence,
        first.fence
    );
    Ok(())
}

/// Rule 11: the fence strictly increases across force-release.
pub async fn lock_fence_increases_across_force_release(h: &Harness) -> CaseResult {
    let first = take(h, "t", LONG_TTL).await?;
    h.adapter.force_release_lock("t").await?;
    let second = take(h, "t", LONG_TTL).await?;
    h.adapter.force_release_lock("t").await?;
    let third = take(h, "t", LONG_TTL).await?;
    ensure!(
        first.fence < second.fence && second.fence < third.fence,
        "fences {}, {}, {} are not strictly increasing",
        first.fence,
        second.fence,
        third.fence
    );
    Ok(())
}

/// Rule 11: no acquisition is ever given fence 0, the value a `Lock` carries when it was
/// written by a client without fencing (a TypeScript bot's lock deserializes with fence 0), so
/// a fenced resource can tell "no fence" from a real one. Checked on the first lock of fresh
/// ids and after release, expiry and force-release.
pub async fn lock_fence_is_never_zero(h: &Harness) -> CaseResult {
    let ttl = super::support::short_ttl(h);
    let mut fences = Vec::new();
    for id in ["first", "b:c", "d.e"] {
        fences.push((id, take(h, id, ttl).await?.fence));
    }
    let released = take(h, "released", LONG_TTL).await?;
    h.adapter.release_lock(&released).await?;
    fences.push(("released", released.fence));
    fences.push(("after release", take(h, "released", LONG_TTL).await?.fence));
    h.adapter.force_release_lock("released").await?;
    fences.push((
        "after force-release",
        take(h, "released", LONG_TTL).await?.fence,
    ));
    super::support::expire(h, ttl, false).await;
    fences.push(("after expiry", take(h, "first", LONG_TTL).await?.fence));
    for (what, fence) in fences {
        ensure!(fence >= 1, "lock {what:?} was given fence {fence}");
    }
    Ok(())
}

/// Section 3 and rule 5's lock twin: 16 concurrent acquirers of one id, exactly one winner
/// (five rounds on fresh ids, to give a race a chance to show).
pub async fn lock_concurrent_acquirers_one_winner(h: &Harness) -> CaseResult {
    for round in 0..5 {
        let id = format!("contended-{round}");
        let results = concurrently(16, |_| {
            let a = h.adapter.clone();
            let id = id.clone();
            async move { a.acquire_lock(&id, LONG_TTL).await }
        })
        .await?;
        let mut winners = 0;
        for r in results {
            if r?.is_some() {
                winners += 1;
            }
        }
        ensure_eq!(winners, 1, "winners among 16 acquirers in round {round}");
    }
    Ok(())
}

/// Rules 1 and 11 under contention: once a lock expires, 16 concurrent acquirers still
/// produce exactly one winner, with a fence above the expired holder's (several rounds on
/// fresh ids, fewer on the wall clock where each round sleeps).
pub async fn lock_concurrent_acquire_after_expiry_one_winner(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let rounds = if h.time.is_manual() { 5 } else { 2 };
    for round in 0..rounds {
        let id = format!("expiring-{round}");
        let first = take(h, &id, ttl).await?;
        expire(h, ttl, false).await;
        let results = concurrently(16, |_| {
            let a = h.adapter.clone();
            let id = id.clone();
            async move { a.acquire_lock(&id, LONG_TTL).await }
        })
        .await?;
        let mut winners = Vec::new();
        for r in results {
            if let Some(lock) = r? {
                winners.push(lock);
            }
        }
        ensure_eq!(
            winners.len(),
            1,
            "winners among 16 acquirers of an expired lock in round {round}"
        );
        ensure!(
            winners[0].fence > first.fence,
            "fence {} after expired holder's {}",
            winners[0].fence,
            first.fence
        );
    }
    Ok(())
}

/// Rule 2 on either clock: `extend_lock` sets the expiry to now + TTL even when that is sooner
/// than the current expiry (exact on a manual clock; after a sleep on the wall clock).
pub async fn lock_extend_to_shorter_ttl_frees_sooner(h: &Harness) -> CaseResult {
    let ttl = short_ttl(h);
    let lock = take(h, "t", LONG_TTL).await?;
    ensure!(
        h.adapter.extend_lock(&lock, ttl).await?,
        "extend of a live lock"
    );
    let checked = just_before_expiry(h, ttl).await;
    if checked {
        ensure!(
            h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
            "lock free 1 ms before the expiry the extend set"
        );
    }
    expire(h, ttl, checked).await;
    ensure!(
        h.adapter.acquire_lock("t", LONG_TTL).await?.is_some(),
        "lock still held after the shorter TTL of its extend (an extend must be able to shorten)"
    );
    Ok(())
}

/// Rule 10, statistically: tokens are unguessable. Whatever their encoding, two tokens of
/// independent random bits agree in few positions (for 128 bits in hex, at half of them with
/// probability below 10^-10); tokens from a counter or a clock, or fewer random bits padded
/// to length, agree in half of them or more. 32 tokens, on one id and across ids.
pub async fn lock_tokens_look_random(h: &Harness) -> CaseResult {
    let mut tokens = Vec::new();
    for i in 0..16 {
        let lock = take(h, "t", LONG_TTL).await?;
        h.adapter.release_lock(&lock).await?;
        tokens.push(lock.token);
        tokens.push(take(h, &format!("other-{i}"), LONG_TTL).await?.token);
    }
    let alphabet: HashSet<char> = tokens.iter().flat_map(|t| t.chars()).collect();
    let k = alphabet.len().max(1);
    for pair in tokens.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let len = a.chars().count().min(b.chars().count());
        let agree = a.chars().zip(b.chars()).filter(|(x, y)| x == y).count();
        // Chance agreement is 1/k per position for an alphabet of k characters; tolerate
        // up to half the positions (twice chance for alphabets too small for that to mean
        // anything).
        ensure!(
            agree * 2 < len || agree * k < 2 * len,
            "tokens {a:?} and {b:?} agree in {agree} of {len} positions: they are not \
             independent random bits (a counter, a clock, or fewer random bits padded?)"
        );
    }
    Ok(())
}

/// Rule 12: the caller never believes it holds a lock longer than the backend does. With a
/// manual clock, time moves while the acquire is in flight (when the adapter awaits at all,
/// as every remote backend does), and 1 ms before the `expires_at` the caller was given the
/// lock must still be held: an `expires_at` read after the call shows. On the wall clock, the
/// lock is still held a third of the way into its TTL by the caller's reckoning (retried with
/// a longer TTL if the machine stalls past half of it).
pub async fn lock_expires_at_never_after_backend_expiry(h: &Harness) -> CaseResult {
    if h.time.is_manual() {
        let mut call = h.adapter.acquire_lock("t", Duration::from_secs(10));
        let lock = match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
            Poll::Ready(result) => result?,
            Poll::Pending => {
                h.time.advance(Duration::from_millis(5)).await;
                call.await?
            }
        }
        .ok_or_else(|| Failure::new("lock \"t\" should be free but acquire gave None"))?;
        let now = h.time.now_ms();
        ensure!(
            lock.expires_at > now,
            "expires_at {} is not after now {now}",
            lock.expires_at
        );
        h.time
            .advance(Duration::from_millis(lock.expires_at - now - 1))
            .await;
        ensure!(
            h.adapter.acquire_lock("t", LONG_TTL).await?.is_none(),
            "lock free 1 ms before the expires_at ({}) its holder was given: the caller \
             believes it holds the lock longer than the backend does",
            lock.expires_at
        );
        return Ok(());
    }
    let mut ttl = Duration::from_millis(1200);
    for attempt in 1..=4 {
        let id = format!("t{attempt}");
        let lock = take(h, &id, ttl).await?;
        h.time.advance(ttl / 3).await;
        let sent = h.time.now_ms();
        let probe = h.adapter.acquire_lock(&id, LONG_TTL).await?;
        if sent + (ttl.as_millis() as u64) / 2 <= lock.expires_at {
            ensure!(
                probe.is_none(),
                "lock free with {} ms left before the expires_at its holder was given",
                lock.expires_at - sent
            );
            return Ok(());
        }
        ttl *= 2;
    }
    Err(Failure::new(
        "the probe never ran within the first half of the TTL in 4 attempts (last TTL \
         9.6 s): the backend answers too slowly to hold a lock",
    ))
}
