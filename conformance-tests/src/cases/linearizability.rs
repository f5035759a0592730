//! Linearizability of locks under real concurrency.
//!
//! Several clients hammer a few lock ids at once with random acquire / release / extend /
//! force-release calls. Every call is recorded with a monotonic timestamp when it was
//! invoked and when it returned, and the history of each lock id is checked with the
//! Wing-Gong-Lowe checker of `todc-utils` against the sequential specification of a
//! token lock with fencing ([`TokenLockSpec`]): some order of the calls, consistent with
//! real time (a call that returned before another was invoked comes first), must explain
//! every result.
//!
//! This catches what single-threaded cases cannot: check-then-act races in acquire (two
//! holders at once), a release or extend that acts on a lock it just lost, fences issued out
//! of order. Histories are checked per lock id, which is sound because linearizability is
//! local (a history is linearizable iff each object's sub-history is).
//!
//! TTLs are ten minutes, so nothing expires during the run and the specification does not
//! need time. Expiry is covered by the TTL cases and the model-based case.

use crate::{CaseResult, Harness};

/// Records a concurrent history of lock operations and checks it is linearizable.
///
/// Several clients run random acquire / release / extend / force-release calls on a few lock
/// ids at once; the recorded history of each id must be explainable by some sequential order
/// of the calls that respects real time, where the lock is held by at most one token,
/// acquire succeeds iff the lock is free, release and extend act only for the holder's token,
/// force-release frees it, and every granted fence is greater than the previous one. Also
/// checks that no two acquisitions got the same token (rule 10).
#[cfg(not(target_arch = "wasm32"))]
pub async fn locks_linearizable(h: &Harness) -> CaseResult {
    native::run(h).await
}

/// Records a concurrent history of lock operations and checks it is linearizable.
///
/// Skipped on wasm32: the checker and the monotonic clock it needs are native only.
#[cfg(target_arch = "wasm32")]
pub async fn locks_linearizable(_h: &Harness) -> CaseResult {
    Err(crate::Failure::skip(
        "the linearizability check needs std::time::Instant and runs natively only",
    ))
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::collections::HashMap;
    use std::collections::hash_map::RandomState;
    use std::fmt::Write as _;
    use std::hash::BuildHasher;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use chat_state_core::{Lock, StateAdapter};
    use todc_utils::linearizability::WGLChecker;
    use todc_utils::linearizability::history::{Action, History};
    use todc_utils::specifications::Specification;

    use crate::{CaseResult, Failure, Harness};

    /// Concurrent clients. Enough to produce real overlaps on a 2-core machine, few enough
    /// that the checker's search stays small (its cost grows with concurrency, not length).
    const CLIENTS: usize = 8;
    /// Calls per client.
    const OPS_PER_CLIENT: usize = 400;
    /// Lock ids the clients share: few, so every id sees contention.
    const LOCK_IDS: usize = 2;
    /// Long enough that no lock expires during the run, even on a slow remote backend.
    const TTL: Duration = Duration::from_secs(600);
    /// Longest rendering of a failing history in the failure message.
    const SHOWN_OPS: usize = 80;

    /// One call with its result, as the checker sees it. Tokens are numbered in the order the
    /// run first saw them, so the specification's state stays small and hashable.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum LockOp {
        /// `acquire_lock` returned `None`, or `Some` with this token number and fence.
        Acquire(Option<(u32, u64)>),
        /// `release_lock` with this token number.
        Release(u32),
        /// `extend_lock` with this token number, and what it returned.
        Extend(u32, bool),
        /// `force_release_lock`.
        ForceRelease,
    }

    /// The sequential specification of one token lock with fencing, without expiry.
    pub(super) struct TokenLockSpec;

    /// Who holds the lock, and the last fence granted.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub(super) struct LockState {
        holder: Option<u32>,
        last_fence: Option<u64>,
    }

    impl Specification for TokenLockSpec {
        type State = LockState;
        type Operation = LockOp;

        fn init() -> LockState {
            LockState {
                holder: None,
                last_fence: None,
            }
        }

        fn apply(op: &LockOp, state: &LockState) -> (bool, LockState) {
            match op {
                // A refused acquire is only explained by a current holder.
                LockOp::Acquire(None) => (state.holder.is_some(), state.clone()),
                // A granted acquire needs a free lock and a fence above every earlier one.
                LockOp::Acquire(Some((token, fence))) => {
                    let fence_ok = state.last_fence.is_none_or(|last| *fence > last);
                    if state.holder.is_none() && fence_ok {
                        let next = LockState {
                            holder: Some(*token),
                            last_fence: Some(*fence),
                        };
                        (true, next)
                    } else {
                        (false, state.clone())
                    }
                }
                // Release never fails; it frees the lock only for the holder's token.
                LockOp::Release(token) => {
                    let mut next = state.clone();
                    if state.holder == Some(*token) {
                        next.holder = None;
                    }
                    (true, next)
                }
                // Extend must answer whether the token holds the lock; without expiry it does
                // not change who holds it.
                LockOp::Extend(token, ok) => (*ok == (state.holder == Some(*token)), state.clone()),
                LockOp::ForceRelease => {
                    let mut next = state.clone();
                    next.holder = None;
                    (true, next)
                }
            }
        }
    }

    /// What a client did, before tokens are numbered.
    #[derive(Debug)]
    enum RawOp {
        Acquire(Option<(String, u64)>),
        Release(String),
        Extend(String, bool),
        ForceRelease,
    }

    /// One recorded call.
    #[derive(Debug)]
    struct Record {
        client: usize,
        lock_index: usize,
        op: RawOp,
        invoked: Instant,
        returned: Instant,
    }

    /// A small, fast generator; seeded from `RandomState` so every run explores a different
    /// interleaving without a dependency on `rand`.
    struct SplitMix(u64);

    impl SplitMix {
        fn seeded(salt: usize) -> Self {
            Self(RandomState::new().hash_one(salt))
        }

        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    pub(super) async fn run(h: &Harness) -> CaseResult {
        let ids: Arc<Vec<String>> = Arc::new(
            (0..LOCK_IDS)
                .map(|i| format!("linearizable:lock:{i}"))
                .collect(),
        );
        let origin = Instant::now();
        let adapter = h.adapter.clone();
        let per_client = crate::concurrently(CLIENTS, move |client| {
            client_run(client, adapter.clone(), ids.clone())
        })
        .await?;
        let mut records = Vec::with_capacity(CLIENTS * OPS_PER_CLIENT);
        for outcome in per_client {
            records.extend(outcome?);
        }
        check_records(&records, origin)
    }

    /// One client's random walk. Returns its records, or the first error (an errored call
    /// has no well-defined place in a history, and no backend should fail here).
    async fn client_run(
        client: usize,
        adapter: Arc<dyn StateAdapter>,
        ids: Arc<Vec<String>>,
    ) -> Result<Vec<Record>, Failure> {
        let mut rng = SplitMix::seeded(client);
        // Every lock this client was granted, per id, newest last; older ones are stale.
        let mut mine: Vec<Vec<Lock>> = vec![Vec::new(); ids.len()];
        let mut records = Vec::with_capacity(OPS_PER_CLIENT);
        for _ in 0..OPS_PER_CLIENT {
            let lock_index = rng.below(ids.len());
            let id = &ids[lock_index];
            let roll = rng.below(100);
            // Mostly the newest own token (the normal holder), sometimes a stale one.
            let handle = match mine[lock_index].len() {
                0 => None,
                n if rng.below(5) == 0 => Some(mine[lock_index][rng.below(n)].clone()),
                n => Some(mine[lock_index][n - 1].clone()),
            };
            let invoked = Instant::now();
            let op = match (roll, handle) {
                (0..5, _) => {
                    adapter.force_release_lock(id).await.map_err(|e| {
                        Failure::new(format!("force_release_lock({id}) failed: {e}"))
                    })?;
                    RawOp::ForceRelease
                }
                (5..35, Some(lock)) => {
                    adapter
                        .release_lock(&lock)
                        .await
                        .map_err(|e| Failure::new(format!("release_lock({id}) failed: {e}")))?;
                    RawOp::Release(lock.token)
                }
                (35..60, Some(lock)) => {
                    let ok = adapter
                        .extend_lock(&lock, TTL)
                        .await
                        .map_err(|e| Failure::new(format!("extend_lock({id}) failed: {e}")))?;
                    RawOp::Extend(lock.token, ok)
                }
                _ => {
                    let got = adapter
                        .acquire_lock(id, TTL)
                        .await
                        .map_err(|e| Failure::new(format!("acquire_lock({id}) failed: {e}")))?;
                    if let Some(lock) = &got {
                        if lock.thread_id != *id {
                            return Err(Failure::new(format!(
                                "acquire_lock({id}) returned a lock for `{}`",
                                lock.thread_id
                            )));
                        }
                        mine[lock_index].push(lock.clone());
                    }
                    RawOp::Acquire(got.map(|l| (l.token, l.fence)))
                }
            };
            let returned = Instant::now();
            records.push(Record {
                client,
                lock_index,
                op,
                invoked,
                returned,
            });
            // Give other clients a chance to interleave even on a backend that never yields.
            tokio::task::yield_now().await;
        }
        Ok(records)
    }

    /// Numbers the tokens, checks they are unique, then checks each lock id's history.
    fn check_records(records: &[Record], origin: Instant) -> CaseResult {
        let mut numbers: HashMap<&str, u32> = HashMap::new();
        for r in records {
            if let RawOp::Acquire(Some((token, _))) = &r.op {
                let next = u32::try_from(numbers.len()).unwrap_or(u32::MAX);
                if numbers.insert(token.as_str(), next).is_some() {
                    return Err(Failure::new(format!(
                        "two acquisitions returned the same token {token:?}; tokens must be \
                         unique per acquisition (rule 10)"
                    )));
                }
            }
        }
        // A token the run never saw granted cannot occur (clients only use their own), but
        // give it a number of its own rather than panic.
        let number = |token: &str| numbers.get(token).copied().unwrap_or(u32::MAX);
        for lock_index in 0..LOCK_IDS {
            let ops: Vec<(&Record, LockOp)> = records
                .iter()
                .filter(|r| r.lock_index == lock_index)
                .map(|r| {
                    let op = match &r.op {
                        RawOp::Acquire(got) => {
                            LockOp::Acquire(got.as_ref().map(|(t, f)| (number(t), *f)))
                        }
                        RawOp::Release(t) => LockOp::Release(number(t)),
                        RawOp::Extend(t, ok) => LockOp::Extend(number(t), *ok),
                        RawOp::ForceRelease => LockOp::ForceRelease,
                    };
                    (r, op)
                })
                .collect();
            if ops.is_empty() {
                continue;
            }
            let timed: Vec<TimedOp> = ops
                .iter()
                .map(|(r, op)| TimedOp {
                    process: r.client,
                    op: op.clone(),
                    invoked: r.invoked,
                    returned: r.returned,
                })
                .collect();
            if !is_linearizable(&timed) {
                return Err(Failure::new(format!(
                    "the history of lock `linearizable:lock:{lock_index}` ({} calls by {CLIENTS} \
                     concurrent clients) is not linearizable: no order of the calls consistent \
                     with real time explains every result (at most one holder; acquire succeeds \
                     iff free, with a fence above every earlier one; release and extend act only \
                     for the holder's token). Look for a check-then-act race in acquire, or a \
                     release/extend that does not compare the token atomically.\n{}",
                    timed.len(),
                    render(&timed, origin)
                )));
            }
        }
        Ok(())
    }

    /// One call of one process with its real-time interval.
    #[derive(Debug, Clone)]
    pub(super) struct TimedOp {
        pub(super) process: usize,
        pub(super) op: LockOp,
        pub(super) invoked: Instant,
        pub(super) returned: Instant,
    }

    /// Builds the invoke/return history and runs the WGL checker on it. Each process must
    /// have at most one call in flight at a time (true of the clients above).
    pub(super) fn is_linearizable(ops: &[TimedOp]) -> bool {
        if ops.is_empty() {
            return true;
        }
        // (time, 0 = invoke / 1 = return, index): at equal instants invocations sort first,
        // which treats the two calls as concurrent — the permissive reading, so a coarse
        // clock can never produce a false alarm.
        let mut events: Vec<(Instant, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoked, 0, i));
            events.push((op.returned, 1, i));
        }
        events.sort();
        let actions = events
            .into_iter()
            .map(|(_, kind, i)| {
                let op = &ops[i];
                let action = if kind == 0 {
                    Action::Call(op.op.clone())
                } else {
                    Action::Response(op.op.clone())
                };
                (op.process, action)
            })
            .collect();
        WGLChecker::<TokenLockSpec>::is_linearizable(History::from_actions(actions))
    }

    /// The calls in invocation order, one per line, for the failure message.
    fn render(ops: &[TimedOp], origin: Instant) -> String {
        let mut sorted: Vec<&TimedOp> = ops.iter().collect();
        sorted.sort_by_key(|op| op.invoked);
        let mut out = String::from("calls in invocation order (times in µs since the start):\n");
        for op in sorted.iter().take(SHOWN_OPS) {
            let from = op.invoked.duration_since(origin).as_micros();
            let to = op.returned.duration_since(origin).as_micros();
            let what = match &op.op {
                LockOp::Acquire(None) => "acquire -> None".to_string(),
                LockOp::Acquire(Some((t, f))) => format!("acquire -> token#{t} fence {f}"),
                LockOp::Release(t) => format!("release token#{t}"),
                LockOp::Extend(t, ok) => format!("extend token#{t} -> {ok}"),
                LockOp::ForceRelease => "force_release".to_string(),
            };
            let _ = writeln!(out, "  client {} [{from}..{to}] {what}", op.process);
        }
        if sorted.len() > SHOWN_OPS {
            let _ = writeln!(out, "  ... and {} more", sorted.len() - SHOWN_OPS);
        }
        out
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::time::{Duration, Instant};

    use super::native::{LockOp, TimedOp, is_linearizable};

    /// Builds ops from (process, op, invoked µs, returned µs).
    fn ops(spec: &[(usize, LockOp, u64, u64)]) -> Vec<TimedOp> {
        let origin = Instant::now();
        spec.iter()
            .map(|(process, op, from, to)| TimedOp {
                process: *process,
                op: op.clone(),
                invoked: origin + Duration::from_micros(*from),
                returned: origin + Duration::from_micros(*to),
            })
            .collect()
    }

    #[test]
    fn accepts_a_sequential_handover() {
        let h = ops(&[
            (0, LockOp::Acquire(Some((0, 1))), 0, 1),
            (1, LockOp::Acquire(None), 2, 3),
            (0, LockOp::Extend(0, true), 4, 5),
            (0, LockOp::Release(0), 6, 7),
            (1, LockOp::Acquire(Some((1, 2))), 8, 9),
            (0, LockOp::Extend(0, false), 10, 11),
            (0, LockOp::Release(0), 12, 13),
            (1, LockOp::Extend(1, true), 14, 15),
        ]);
        assert!(is_linearizable(&h));
    }

    #[test]
    fn accepts_overlapping_calls_in_either_order() {
        // Process 1's acquire overlaps the release, so it may take effect after it.
        let h = ops(&[
            (0, LockOp::Acquire(Some((0, 1))), 0, 1),
            (0, LockOp::Release(0), 2, 6),
            (1, LockOp::Acquire(Some((1, 2))), 3, 5),
        ]);
        assert!(is_linearizable(&h));
    }

    #[test]
    fn rejects_two_holders() {
        // Both acquires overlap, nothing frees the lock in between: one of them lied.
        let h = ops(&[
            (0, LockOp::Acquire(Some((0, 1))), 0, 4),
            (1, LockOp::Acquire(Some((1, 2))), 1, 5),
        ]);
        assert!(!is_linearizable(&h));
    }

    #[test]
    fn rejects_a_release_that_ignores_the_token() {
        let h = ops(&[
            (0, LockOp::Acquire(Some((0, 1))), 0, 1),
            (1, LockOp::Release(7), 2, 3),
            (1, LockOp::Acquire(Some((1, 2))), 4, 5),
        ]);
        assert!(!is_linearizable(&h));
    }

    #[test]
    fn rejects_fences_out_of_real_time_order() {
        let h = ops(&[
            (0, LockOp::Acquire(Some((0, 5))), 0, 1),
            (0, LockOp::Release(0), 2, 3),
            (1, LockOp::Acquire(Some((1, 4))), 4, 5),
        ]);
        assert!(!is_linearizable(&h));
    }

    #[test]
    fn rejects_an_extend_by_a_stale_holder() {
        let h = ops(&[
            (0, LockOp::Acquire(Some((0, 1))), 0, 1),
            (1, LockOp::ForceRelease, 2, 3),
            (0, LockOp::Extend(0, true), 4, 5),
        ]);
        assert!(!is_linearizable(&h));
    }
}
