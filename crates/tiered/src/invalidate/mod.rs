//! Invalidation without scans: tags, dependencies and `clear`, all by stamps.
//!
//! # Stamps
//!
//! The cache keeps one counter, the *stamp*. Every invalidation (a tag, a key that
//! others depend on, a `clear`) increments it and records the new value. Every load
//! reads the stamp *before* the loader runs and the resulting entry carries it as
//! its `born` stamp. An entry is valid only if it was born at or after every
//! invalidation that concerns it. So:
//!
//! * invalidating a tag costs the same whatever the number of entries carrying
//!   it (amortized O(1): one record, plus an occasional prune) — the entries are
//!   dropped lazily when read;
//! * a load that was already running when the invalidation happened produces an
//!   entry born *before* it, which is refused at install time and at read time. The
//!   load cannot reinstate the data the invalidation meant to drop (the classic
//!   "invalidate during load" bug).
//!
//! # Dependencies
//!
//! An entry that `depends_on` key K carries the tag `k:K`, plus every dependency
//! tag of K's own entry if K is in the cache when the dependant is stored — so a
//! chain A ← B ← C is cut by invalidating A, with no walk. Removing or setting K
//! invalidates `k:K`. To keep `set` cheap, the stamp is only recorded for keys
//! that some entry has declared as a dependency.
//!
//! # Memory
//!
//! Records are pruned once they are older than the longest entry lifetime the
//! cache has handed out (TTL + jitter + grace): every entry installed before a
//! record has expired by then (dependency records are re-stamped when a dependant
//! is installed, for the same guarantee). A load born before a pruned record is
//! refused at install, so pruning never lets stale data back in. Memory is one
//! record per tag invalidated within that horizon.

pub mod events;
pub(crate) mod glob;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::clock::{duration_nanos, Timestamp};
use crate::entry::Entry;

/// A tag as stored on entries: `t:<tag>` for user tags, `k:<key>` for dependencies,
/// so the two can never collide.
pub(crate) type TagId = Arc<str>;

/// Prune records once there are this many (amortizes the scan). After a prune
/// the threshold becomes twice what survived, so a prune that frees little is
/// not repeated on every invalidation: pruning stays amortized O(1).
const PRUNE_AT: usize = 4096;

/// What a load is born with: the stamp read before its loader ran and the tags its
/// entry will carry. Flights keep it so that a caller can tell whether a running
/// load predates an invalidation that concerns it.
pub(crate) struct Birth {
    pub born: u64,
    pub tags: Box<[TagId]>,
}

pub(crate) fn user_tag(tag: &str) -> TagId {
    Arc::from(format!("t:{tag}"))
}

pub(crate) fn dependency_tag(key: &str) -> TagId {
    Arc::from(format!("k:{key}"))
}

fn is_dependency(tag: &TagId) -> bool {
    tag.starts_with("k:")
}

struct Records {
    /// Tag → (stamp of its latest invalidation, when).
    tags: HashMap<TagId, (u64, Timestamp)>,
    /// Keys some entry depends on → (stamp, time) of the latest declaration.
    depended_on: HashMap<Arc<str>, (u64, Timestamp)>,
    /// Loads born before this stamp are refused: records they would need were pruned.
    floor: u64,
    /// The time counterpart for entries read from L2: tagged entries created
    /// at or before this (the newest pruned record's time) may have needed a
    /// pruned record, so they are refused too.
    pruned_through: Timestamp,
    /// Prune when `tags.len() + depended_on.len()` reaches this.
    prune_at: usize,
}

pub(crate) struct Invalidations {
    stamp: AtomicU64,
    cleared_at: AtomicU64,
    /// When `clear` last ran (nanos; 0: never), for entries read from L2.
    cleared_time: AtomicU64,
    /// The stamp of the most recent tag invalidation; entries born at or after it
    /// skip the tag lookup entirely (the common case).
    latest_tag: AtomicU64,
    /// Any entry ever declared a dependency (fast path for `set`/`remove`).
    has_dependencies: std::sync::atomic::AtomicBool,
    max_lifetime: AtomicU64,
    records: RwLock<Records>,
}

impl Invalidations {
    pub(crate) fn new() -> Self {
        Invalidations {
            stamp: AtomicU64::new(1),
            cleared_at: AtomicU64::new(0),
            cleared_time: AtomicU64::new(0),
            latest_tag: AtomicU64::new(0),
            has_dependencies: std::sync::atomic::AtomicBool::new(false),
            max_lifetime: AtomicU64::new(0),
            records: RwLock::new(Records {
                tags: HashMap::new(),
                depended_on: HashMap::new(),
                floor: 0,
                pruned_through: Timestamp::ZERO,
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// The stamp a load starting now is born with.
    pub(crate) fn current(&self) -> u64 {
        self.stamp.load(Ordering::SeqCst)
    }

    fn next(&self) -> u64 {
        self.stamp.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Remembers the longest lifetime handed out, for pruning.
    pub(crate) fn note_lifetime(&self, lifetime: Duration) {
        self.max_lifetime
            .fetch_max(duration_nanos(lifetime), Ordering::Relaxed);
    }

    /// Everything stored in L1 before now is invalid (entries read from L2
    /// later are not affected).
    pub(crate) fn bump(&self) {
        let s = self.next();
        self.cleared_at.fetch_max(s, Ordering::SeqCst);
    }

    /// Everything stored before now is invalid.
    pub(crate) fn clear(&self, now: Timestamp) {
        self.cleared_time
            .fetch_max(now.as_nanos(), Ordering::SeqCst);
        let s = self.next();
        self.cleared_at.fetch_max(s, Ordering::SeqCst);
    }

    /// Whether data *created* at `created` (by any instance, read back from
    /// L2, so it has no stamp of ours) and carrying `tags` was invalidated here
    /// since: by `clear` or by a tag or dependency invalidation at or after
    /// `created`. Ties count as invalidated: with a coarse or manual clock, an
    /// invalidation and a write in the same tick are ordered the safe way.
    pub(crate) fn outdated_at(&self, created: Timestamp, tags: &[TagId]) -> bool {
        let cleared = self.cleared_time.load(Ordering::SeqCst);
        if cleared != 0 && created.as_nanos() <= cleared {
            return true;
        }
        if tags.is_empty() || self.latest_tag.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let records = self.records.read();
        created <= records.pruned_through
            || tags
                .iter()
                .any(|tag| records.tags.get(tag).is_some_and(|&(_, at)| created <= at))
    }

    /// Invalidates every entry carrying any of `tags`.
    pub(crate) fn invalidate(&self, tags: &[TagId], now: Timestamp) {
        self.invalidate_at(tags, now, now);
    }

    /// Invalidates every entry carrying any of `tags`, as of `at` (another
    /// instance's invalidation: entries here are judged by stamp, entries read
    /// from L2 by creation time against `at`).
    pub(crate) fn invalidate_at(&self, tags: &[TagId], at: Timestamp, now: Timestamp) {
        if tags.is_empty() {
            return;
        }
        let mut records = self.records.write();
        let s = self.next();
        for tag in tags {
            let at = match records.tags.get(tag) {
                Some(&(_, known)) => known.max(at),
                None => at,
            };
            records.tags.insert(Arc::clone(tag), (s, at));
        }
        self.latest_tag.fetch_max(s, Ordering::SeqCst);
        self.maybe_prune(&mut records, now);
    }

    /// `key` was removed or replaced: invalidate what depends on it, if anything may.
    pub(crate) fn key_changed(&self, key: &str, now: Timestamp) {
        if !self.has_dependencies.load(Ordering::SeqCst) {
            return;
        }
        if !self.records.read().depended_on.contains_key(key) {
            return;
        }
        self.invalidate(&[dependency_tag(key)], now);
    }

    /// Declares that a load is about to produce an entry depending on `keys`.
    /// Called *before* the loader runs, so a removal of a dependency during the
    /// load is recorded and fences the load out.
    pub(crate) fn declare_dependencies(&self, keys: &[String], now: Timestamp) {
        if keys.is_empty() {
            return;
        }
        self.has_dependencies.store(true, Ordering::SeqCst);
        let mut records = self.records.write();
        let stamp = self.current();
        for key in keys {
            records
                .depended_on
                .insert(Arc::from(key.as_str()), (stamp, now));
        }
        self.maybe_prune(&mut records, now);
    }

    /// The dependency tags an entry inherits from `parent`'s entry.
    pub(crate) fn inherited<V>(parent: &Entry<V>) -> impl Iterator<Item = &TagId> {
        parent.tags.iter().filter(|t| is_dependency(t))
    }

    /// Whether `entry` is still valid: born after the last `clear` and after the
    /// last invalidation of each of its tags.
    pub(crate) fn is_valid<V>(&self, entry: &Entry<V>) -> bool {
        if self.unchanged_for(entry) {
            return true; // nothing new since the last check (the common case)
        }
        let latest = self.latest_tag.load(Ordering::SeqCst);
        if self.outdated(entry.born, &entry.tags) {
            return false;
        }
        entry.validated_through.fetch_max(latest, Ordering::Relaxed);
        true
    }

    /// True if nothing was invalidated since `entry` was last found valid (and
    /// it was born after the last clear): [`is_valid`](Self::is_valid)'s
    /// fast path, atomics only, so it may run under an L1 shard's lock.
    pub(crate) fn unchanged_for<V>(&self, entry: &Entry<V>) -> bool {
        entry.validated_through.load(Ordering::Relaxed) >= self.latest_tag.load(Ordering::SeqCst)
            && entry.born >= self.cleared_at.load(Ordering::SeqCst)
    }

    /// Whether data born at `born` and carrying `tags` has been invalidated since.
    pub(crate) fn outdated(&self, born: u64, tags: &[TagId]) -> bool {
        if born < self.cleared_at.load(Ordering::SeqCst) {
            return true;
        }
        if tags.is_empty() || born >= self.latest_tag.load(Ordering::SeqCst) {
            return false;
        }
        let records = self.records.read();
        tags.iter().any(|tag| {
            records
                .tags
                .get(tag)
                .is_some_and(|&(stamp, _)| born < stamp)
        })
    }

    /// Whether a freshly loaded `entry` may be installed: valid, and not older
    /// than the pruned records.
    pub(crate) fn may_install<V>(&self, entry: &Entry<V>) -> bool {
        // Read the floor in its own statement: the guard must be released before
        // `is_valid` locks again (a recursive read can deadlock behind a writer).
        let floor = self.records.read().floor;
        entry.born >= floor && self.is_valid(entry)
    }

    fn maybe_prune(&self, records: &mut Records, now: Timestamp) {
        if records.tags.len() + records.depended_on.len() < records.prune_at {
            return;
        }
        let horizon = Duration::from_nanos(self.max_lifetime.load(Ordering::Relaxed));
        let mut floor = records.floor;
        let mut pruned_through = records.pruned_through;
        let mut keep = |&mut (stamp, at): &mut (u64, Timestamp)| {
            let keep = now.saturating_since(at) <= horizon;
            if !keep {
                floor = floor.max(stamp);
                pruned_through = pruned_through.max(at);
            }
            keep
        };
        records.tags.retain(|_, record| keep(record));
        records.depended_on.retain(|_, record| keep(record));
        records.floor = floor;
        records.pruned_through = pruned_through;
        let survivors = records.tags.len() + records.depended_on.len();
        records.prune_at = PRUNE_AT.max(2 * survivors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_from_l2_are_refused_when_their_records_were_pruned() {
        let inv = Invalidations::new();
        let t = |s: u64| Timestamp::from_nanos(s * 1_000_000_000);
        // A short lifetime horizon, then enough tag invalidations to prune.
        inv.note_lifetime(Duration::from_secs(1));
        let tag: TagId = Arc::from("t:old");
        inv.invalidate(&[Arc::clone(&tag)], t(10));
        // An entry created before that invalidation is outdated, as expected.
        assert!(inv.outdated_at(t(5), &[Arc::clone(&tag)]));
        for i in 0..PRUNE_AT {
            let other: TagId = Arc::from(format!("t:{i}"));
            inv.invalidate(&[other], t(100));
        }
        // "t:old" was pruned (older than the horizon)...
        assert!(!inv.records.read().tags.contains_key(&tag));
        // ...yet an L2 entry created before it is still refused, by time.
        assert!(inv.outdated_at(t(5), &[Arc::clone(&tag)]));
        // Untagged entries and newer ones are not affected.
        assert!(!inv.outdated_at(t(5), &[]));
        assert!(!inv.outdated_at(t(200), &[tag]));
    }
}
