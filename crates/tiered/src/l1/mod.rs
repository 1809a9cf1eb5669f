//! The in-process tier: a byte-bounded, sharded map of decoded entries.
//!
//! # What it holds
//!
//! Entries hold the *decoded* value behind an `Arc`, so a hit is a hash lookup and
//! an `Arc` clone — no deserialization, no copy of the value.
//!
//! # The budget
//!
//! The tier is bounded in bytes, not entries: each entry is charged its weight (the
//! value's encoded size, or what the caller's weigher says) plus its key's length.
//! The budget is split evenly over the shards and **no shard ever holds more than
//! its share**, so the whole tier never exceeds the budget: an insert and the
//! evictions that make room for it happen under the shard's lock, so no reader
//! ever sees the shard over budget. Consequences worth knowing:
//!
//! * a value heavier than one shard's share (`budget / shards`) is not cached in L1
//!   at all (it is still returned to the caller);
//! * small budgets use fewer shards (each shard gets at least
//!   [`MIN_SHARD_BUDGET`] bytes) so that the share stays useful.
//!
//! Bookkeeping (the map slot, the queue node, the `Arc`s) is not charged to the
//! budget; it is a fixed overhead per entry on top.
//!
//! # Eviction: W-TinyLFU with an adaptive window
//!
//! Each shard runs W-TinyLFU (Einziger, Friedman & Manes, 2017): new entries
//! enter a small LRU *window*; what overflows it must win an admission contest
//! against the least recent entry of the *main* space (a segmented LRU), judged
//! by a compact frequency sketch of recent accesses. The window's size adapts to
//! the workload by miniature simulations of fixed shares. See the comments in
//! `l1/policy.rs` for the details and the measured effect of each choice, and
//! `BENCHMARKS.md` for hit ratios on real traces next to moka and quick_cache.
//!
//! A hit does not touch the policy directly: it records itself in the shard's
//! read buffer under the shared lock, and the buffer is replayed under the
//! policy's own lock (see `l1/shard.rs`), so readers never serialize on each
//! other nor wait for another reader's replay (only a writer waits for it, and
//! readers queued behind that writer). Entries
//! past their end of life are reclaimed when the cold ends of the lists are
//! examined on each insert — no background thread.

mod policy;
mod shard;
mod window;

use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::clock::Timestamp;
use crate::entry::Entry;

use shard::Shard;

/// The most memory an entry costs beyond its weight (the budget counts the
/// weight: value size plus key length): the `Arc`ed entry with its metadata, the
/// map slot, the policy node and frequency-sketch share, and allocator slack.
/// Checked by a test that fills a cache with 1,000,000 values of random sizes
/// (`tests/memory.rs`; about 465 bytes measured there, the largest part being
/// the entry's own metadata). Tags and dependencies add their own lengths on top.
pub const ENTRY_OVERHEAD: u64 = 512;

/// The smallest share of the budget a shard is given.
pub const MIN_SHARD_BUDGET: u64 = 1 << 20;

/// Keeps each shard's lock on its own cache line, so two cores hitting different
/// shards do not bounce one line between them.
#[repr(align(128))]
struct Padded<T>(T);

/// The L1 tier.
pub(crate) struct L1<V> {
    shards: Box<[Padded<RwLock<Shard<V>>>]>,
    hasher: foldhash::fast::RandomState,
    shard_budget: u64,
}

/// What an insert did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inserted {
    /// The entry is held after the insert (false: heavier than a shard's
    /// share, or evicted at once in a rare corner — see `Shard::insert`).
    pub stored: bool,
    /// Entries evicted to make room (expired ones not counted).
    pub evicted: u64,
}

impl<V> L1<V> {
    /// A tier holding at most `budget` bytes.
    pub(crate) fn new(budget: u64) -> Self {
        Self::with_entries(budget, None)
    }

    /// A tier holding at most `budget` weight, and about `entries` entries when
    /// full, if known (it sizes the eviction policy's frequency sketch up front;
    /// otherwise the sketch grows with the entries).
    pub(crate) fn with_entries(budget: u64, entries: Option<u64>) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let wanted = (parallelism * 4).next_power_of_two() as u64;
        let affordable = (budget / MIN_SHARD_BUDGET).max(1);
        // Largest power of two not above either bound.
        let mut shards = 1u64;
        while shards * 2 <= wanted.min(affordable) {
            shards *= 2;
        }
        let shard_budget = budget / shards;
        L1 {
            shards: (0..shards)
                .map(|_| {
                    Padded(RwLock::new(Shard::new(
                        shard_budget,
                        entries.map(|e| (e / shards).max(1)),
                    )))
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            shard_budget,
        }
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard<V>> {
        // Bits 32 and up pick the shard. The shard's table uses the same hash:
        // its low bits for the bucket, its top 7 bits as a tag. Picking the
        // shard from the top bits would give every key of a shard the same
        // tag bits and slow its lookups.
        let idx = (hash >> 32) as usize & (self.shards.len() - 1);
        &self.shards[idx].0
    }

    /// `read(entry)` for the entry at `key`, counting the access for
    /// eviction. `read` runs under the shard's read lock: a hit that needs
    /// only the value need not clone the entry's `Arc` (on a hot key, a
    /// counter every core increments and decrements). Keep it short, and
    /// take no lock in it.
    pub(crate) fn get_with<R>(
        &self,
        key: &str,
        read: impl FnOnce(&Arc<Entry<V>>) -> R,
    ) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        self.shard(hash).read().get_with(hash, key, read)
    }

    /// The entry at `key` without counting an access (for `contains`-like peeks).
    pub(crate) fn peek(&self, key: &str) -> Option<Arc<Entry<V>>> {
        let hash = self.hasher.hash_one(key);
        self.shard(hash).read().peek(hash, key)
    }

    /// Stores `entry` at `key`, evicting first if the shard needs room.
    pub(crate) fn insert(&self, key: Arc<str>, entry: Arc<Entry<V>>, now: Timestamp) -> Inserted {
        let hash = self.hasher.hash_one(&*key);
        let weight = entry.weight;
        self.shard(hash)
            .write()
            .insert(key, hash, entry, weight, now)
    }

    /// Removes `key`, returning what was there.
    pub(crate) fn remove(&self, key: &str) -> Option<Arc<Entry<V>>> {
        let hash = self.hasher.hash_one(key);
        self.shard(hash).write().remove(hash, key)
    }

    /// Removes `key` only if it still holds exactly `entry`.
    pub(crate) fn remove_entry(&self, key: &str, entry: &Arc<Entry<V>>) -> bool {
        let hash = self.hasher.hash_one(key);
        self.shard(hash).write().remove_if_same(hash, key, entry)
    }

    /// The keys held that satisfy `pred` (one shard read-locked at a time).
    pub(crate) fn keys_matching(&self, pred: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.0.read();
            out.extend(shard.keys().filter(|k| pred(k)).cloned());
        }
        out
    }

    /// Removes everything.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            shard.0.write().clear();
        }
    }

    /// Number of entries held.
    pub(crate) fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.0.read().len() as u64).sum()
    }

    /// Bytes charged against the budget.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.shards.iter().map(|s| s.0.read().bytes()).sum()
    }

    /// The heaviest entry the tier can hold.
    pub(crate) fn max_entry_weight(&self) -> u64 {
        self.shard_budget
    }
}

/// The L1 tier on its own, without the engine around it: a concurrent map bounded
/// by total weight, using the same shards and eviction policy as a [`Cache`]'s
/// L1, with entries that never expire.
///
/// It exists so the tier can be measured against other in-process caches (see
/// `bench/`): hit ratio on real traces and raw throughput. Applications want
/// [`Cache`], which adds expiry, loading, invalidation and stats.
///
/// [`Cache`]: crate::Cache
///
/// ```
/// use tiered::l1::L1Cache;
///
/// let cache = L1Cache::new(2);
/// cache.insert("a", 1u32, 1);
/// cache.insert("b", 2u32, 1);
/// assert_eq!(cache.get("a").as_deref(), Some(&1));
/// ```
pub struct L1Cache<V> {
    tier: L1<V>,
}

impl<V> L1Cache<V> {
    /// A cache holding entries of total weight at most `max_weight` (> 0).
    pub fn new(max_weight: u64) -> Self {
        L1Cache {
            tier: L1::new(max_weight.max(1)),
        }
    }

    /// As [`new`](Self::new), for a cache that will hold about `entries` entries
    /// (e.g. `max_weight` itself when every entry weighs 1): the eviction policy
    /// sizes its frequency sketch for them up front instead of growing it.
    pub fn with_expected_entries(max_weight: u64, entries: u64) -> Self {
        L1Cache {
            tier: L1::with_entries(max_weight.max(1), Some(entries.max(1))),
        }
    }

    /// The value at `key`, counting the access for eviction.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.tier.get_with(key, |e| e.value.clone()).flatten()
    }

    /// Stores `value` with `weight` (the key is not charged here; a weight of 0
    /// counts as 1), evicting as needed. Returns whether the value is held
    /// afterwards: false if it is heavier than a shard can hold (and, rarely,
    /// when a replaced value grew and was itself the entry evicted).
    pub fn insert(&self, key: &str, value: V, weight: u64) -> bool {
        let entry = Entry::forever(Arc::new(value), weight);
        self.tier
            .insert(Arc::from(key), Arc::new(entry), Timestamp::ZERO)
            .stored
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.tier.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total weight held.
    pub fn weighted_size(&self) -> u64 {
        self.tier.weighted_size()
    }
}

#[cfg(test)]
mod tests;
