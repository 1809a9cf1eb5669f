//! Writes and removals that could not reach L2, kept for replay.
//!
//! When Redis is down (or the breaker is open) a `set` or `remove` still
//! succeeds for the caller — L1 has the change — and the L2 side of it is kept
//! here, **one operation per key** (the latest wins: a removal after a write
//! replaces it), until a call to Redis succeeds again. Then everything is
//! replayed: removals as `DEL`, writes as version-guarded writes that never
//! overwrite a newer value another instance stored meanwhile, and only while
//! their grace window lasts (an expired write is replayed as a removal, since
//! what Redis holds for that key is older still).
//!
//! # The bound
//!
//! At most `max_pending` keys are kept. When the bound is reached, the kept
//! *writes* are turned into removals (their value bytes are freed; a removal is
//! always safe — at worst a miss), and the new key's operation is dropped: it
//! is counted (`Stats::l2.pending_dropped`) and logged as an error, since that
//! key may serve an older value from L2 until it expires.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::L2Write;
use crate::clock::Timestamp;

/// One key's latest unsent operation.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Store this envelope, if nothing newer is there; expires at `stale_until`.
    Write {
        value: Vec<u8>,
        version: u64,
        stale_until: Timestamp,
    },
    /// Delete the key.
    Remove,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Keys kept or being replayed, for a lock-free "nothing pending" check
    /// on every read.
    held: std::sync::atomic::AtomicUsize,
    ops: Mutex<HashMap<String, Op>>,
    /// Keys taken by a replay that has not finished: still held for reads
    /// (L2 may not have their new state yet).
    replaying: Mutex<std::collections::HashSet<String>>,
}

/// What to replay, drained from [`Pending`].
pub(crate) struct Batch {
    pub writes: Vec<L2Write>,
    pub removes: Vec<String>,
}

impl Pending {
    pub(crate) fn len(&self) -> usize {
        self.ops.lock().len()
    }

    /// Nothing kept and nothing being replayed.
    pub(crate) fn is_idle(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Refreshes `held` after a change (called with the `ops` lock held, so
    /// changes are counted in order).
    fn count(&self, ops: &HashMap<String, Op>) {
        let n = ops.len() + self.replaying.lock().len();
        self.held.store(n, std::sync::atomic::Ordering::Release);
    }

    /// Keeps `op` for `key`, replacing whatever was kept for it. Returns `false`
    /// if it had to be dropped (the bound; see the module docs).
    pub(crate) fn keep(&self, key: String, op: Op, max: usize) -> bool {
        let mut ops = self.ops.lock();
        if ops.len() >= max && !ops.contains_key(&key) {
            // Full: free the value bytes held (a write degrades to a removal,
            // which is safe: a miss instead of a value) and drop this op.
            for kept in ops.values_mut() {
                *kept = Op::Remove;
            }
            return false;
        }
        // A kept write is never replaced by an older one (a slow load's
        // result failing after a newer `set` failed); a removal always wins.
        if let (Some(Op::Write { version: kept, .. }), Op::Write { version, .. }) =
            (ops.get(&key), &op)
        {
            if kept > version {
                return true;
            }
        }
        ops.insert(key, op);
        self.count(&ops);
        true
    }

    /// Whether something is kept for `key`.
    pub(crate) fn holds(&self, key: &str) -> bool {
        self.ops.lock().contains_key(key) || self.replaying.lock().contains(key)
    }

    /// A replay of `batch` finished (or was put back): its keys are no longer
    /// held on its account.
    pub(crate) fn replayed(&self, batch: &Batch) {
        let ops = self.ops.lock();
        {
            let mut replaying = self.replaying.lock();
            for w in &batch.writes {
                replaying.remove(&w.key);
            }
            for key in &batch.removes {
                replaying.remove(key);
            }
        }
        self.count(&ops);
    }

    /// The key was written or removed successfully since: forget what was kept.
    pub(crate) fn forget(&self, key: &str) {
        if self.is_idle() {
            return;
        }
        let mut ops = self.ops.lock();
        if ops.remove(key).is_some() {
            self.count(&ops);
        }
    }

    /// Takes up to `n` operations for replay; writes past their grace window at
    /// `now` become removals.
    pub(crate) fn drain(&self, n: usize, now: Timestamp) -> Batch {
        let mut ops = self.ops.lock();
        let keys: Vec<String> = ops.keys().take(n).cloned().collect();
        self.replaying.lock().extend(keys.iter().cloned());
        let mut batch = Batch {
            writes: Vec::new(),
            removes: Vec::new(),
        };
        for key in keys {
            match ops.remove(&key) {
                Some(Op::Write {
                    value,
                    version,
                    stale_until,
                }) if stale_until > now => batch.writes.push(L2Write {
                    ttl: stale_until
                        .saturating_since(now)
                        .max(std::time::Duration::from_millis(1)),
                    key,
                    value,
                    version,
                }),
                Some(_) => batch.removes.push(key),
                None => {}
            }
        }
        self.count(&ops);
        batch
    }

    /// Puts back what a failed replay took, unless the key got a newer op since.
    pub(crate) fn restore(&self, batch: &Batch, now: Timestamp) {
        let mut ops = self.ops.lock();
        for w in &batch.writes {
            ops.entry(w.key.clone()).or_insert(Op::Write {
                value: w.value.clone(),
                version: w.version,
                stale_until: now.saturating_add(w.ttl),
            });
        }
        for key in &batch.removes {
            ops.entry(key.clone()).or_insert(Op::Remove);
        }
        self.count(&ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(v: u64) -> Op {
        Op::Write {
            value: vec![1],
            version: v,
            stale_until: Timestamp::from_nanos(1_000),
        }
    }

    #[test]
    fn latest_op_per_key_and_removals_win_the_bound() {
        let p = Pending::default();
        assert!(p.keep("a".into(), write(1), 2));
        assert!(p.keep("a".into(), Op::Remove, 2));
        assert!(p.keep("b".into(), write(2), 2));
        assert_eq!(p.len(), 2);
        // Full of removals now: "c" cannot be kept.
        assert!(!p.keep("c".into(), write(3), 2));
        let batch = p.drain(10, Timestamp::from_nanos(0));
        let mut removes = batch.removes.clone();
        removes.sort();
        assert_eq!(removes, ["a", "b"]);
        assert!(batch.writes.is_empty());
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn expired_writes_replay_as_removals() {
        let p = Pending::default();
        p.keep("a".into(), write(1), 10);
        p.keep("b".into(), write(1), 10);
        let batch = p.drain(1, Timestamp::from_nanos(0));
        assert_eq!(batch.writes.len(), 1);
        let batch = p.drain(10, Timestamp::from_nanos(5_000));
        assert_eq!(batch.removes.len(), 1);
    }
}
