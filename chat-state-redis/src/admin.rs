//! Operator tools, beside the contract operations: reading a lock's holder
//! ([`LockInspector`], behind [`InspectLocks`](chat_state_core::InspectLocks) on
//! [`RedisState`](crate::RedisState)), deleting a prefix's keys, and the eviction-policy
//! check run at connect.

use chat_state_core::{Error, LockInfo, LockInspector, Operation, Result};
use redis::Value;

use crate::backend::now_ms;
use crate::{BACKEND, RedisBackend};

impl LockInspector for RedisBackend {
    /// Reads the lock key and its fence counter in one read-only script, in this adapter's
    /// layout (so cluster-tagged locks are found too). `fence` is the last fence issued for
    /// the id: the holder's, unless the lock was taken by a client that does not fence (a
    /// TypeScript bot), in which case it is `None` or older.
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        let (lock, fence) = (self.keys.lock(lock_id), self.keys.fence(lock_id));
        let before = now_ms();
        let script = &self.scripts.inspect;
        let mut cmd = script.command(2, 2, lock.len() + fence.len());
        cmd.arg(lock).arg(fence);
        let row: Option<(String, i64, Option<u64>)> =
            self.eval(Operation::LockInfo, lock, script, &cmd).await?;
        Ok(row.map(|(token, pttl_ms, fence)| {
            // PTTL -1 means no expiry: never written so by this backend, shown as "never"
            // rather than invented.
            let expires_at =
                u64::try_from(pttl_ms).map_or(u64::MAX, |ms| before.saturating_add(ms));
            LockInfo::new(token, expires_at, fence)
        }))
    }
}

impl RedisBackend {
    /// Deletes every key under this adapter's prefix (`<prefix>:*`: SCAN + DEL in batches,
    /// never `KEYS`, so a large server is not blocked) and returns how many it removed.
    ///
    /// For tearing down test or staging data. Fence counters go too, so fences for this
    /// prefix restart from 1 afterwards: never run it under live bots. Single node only; on
    /// a cluster it is an invalid-input error (SCAN would have to visit every master).
    /// After [`close`](chat_state_core::StateAdapter::close) it fails with
    /// [`ErrorKind::Closed`](chat_state_core::ErrorKind::Closed).
    pub async fn delete_all_keys(&self) -> Result<u64> {
        let op = Operation::Maintenance;
        if self.keys.is_cluster() {
            return Err(Error::invalid_input(
                "delete_all_keys works on a single node only; on a cluster, flush the test \
                 prefix per master",
            )
            .context(BACKEND, op));
        }
        // The prefix is validated to `[A-Za-z0-9._-]`, so it holds no glob metacharacters,
        // and the `:` keeps prefix `a` from matching prefix `ab`'s keys.
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let pattern = pattern.as_str();
            let (next, keys): (u64, Vec<String>) = self
                .run(op, |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let keys = &keys;
                removed += self
                    .run(op, |mut c| async move {
                        redis::cmd("DEL").arg(keys).query_async::<u64>(&mut c).await
                    })
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Reads `maxmemory-policy` and warns if it can evict held locks. Best effort: managed
    /// Redis services often disable `CONFIG`, which is only logged at debug level.
    pub(crate) async fn check_eviction_policy(&self) {
        let result = self
            .run(Operation::Open, |mut c| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async::<Value>(&mut c)
                    .await
            })
            .await;
        match result {
            Ok(value) => {
                let mut policies = Vec::new();
                collect_strings(&value, &mut policies);
                for policy in policies.iter().filter(|p| *p != "maxmemory-policy") {
                    if policy != "noeviction" {
                        tracing::warn!(
                            backend = BACKEND,
                            policy = %policy,
                            "Redis maxmemory-policy is `{policy}`: under memory pressure Redis \
                             may evict held locks and fence counters; set \
                             `maxmemory-policy noeviction`"
                        );
                    }
                }
            }
            Err(e) => tracing::debug!(backend = BACKEND, error = %e,
                "could not read maxmemory-policy (CONFIG disabled?)"),
        }
    }
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|v| collect_strings(v, out))
        }
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            collect_strings(k, out);
            collect_strings(v, out);
        }),
        _ => {}
    }
}
