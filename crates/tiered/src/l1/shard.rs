//! One shard of the L1 tier: a map, the W-TinyLFU [`Policy`] deciding what to
//! evict, and a read buffer.
//!
//! # Why a read buffer
//!
//! An LRU-based policy must reorder its lists on every hit, which needs exclusive
//! access; taking the shard's write lock on every read would serialize readers.
//! Instead a hit records the entry's token in a small lossy buffer (an atomic
//! increment and a store, under the shared lock), and the buffer is replayed into
//! the policy under the write lock — by the reader that fills it (if the lock is
//! free) and before every insert. (Removals need not replay it: a recorded hit on
//! a removed entry is ignored by its generation check.) Under heavy contention a full buffer drops
//! records: the policy then sees a sample of the hits, which is what Caffeine
//! does too and costs little hit ratio.
//!
//! The buffer is striped by thread ([`READ_STRIPES`] stripes, each on its own
//! cache lines), as Caffeine's is: threads reading the same shard then write
//! to different counters and slots instead of passing one cache line back and
//! forth on every hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::entry::Entry;

use super::policy::{Policy, Token};
use super::Inserted;

/// Hits recorded in one stripe before it asks for the buffer to be drained.
const READ_BUFFER: usize = 64;
/// Read-buffer stripes per shard (a power of two).
const READ_STRIPES: usize = 4;
/// Least recent entries examined for expiry on each insert.
const EXPIRY_PROBE: usize = 4;

struct Slot<V> {
    entry: Arc<Entry<V>>,
    token: Token,
}

/// One stripe of the read buffer, aligned so stripes share no cache line.
#[repr(align(128))]
struct ReadBuffer {
    next: AtomicUsize,
    slots: [AtomicU64; READ_BUFFER],
}

/// This thread's read-buffer stripe: threads are numbered as they first read.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) & (READ_STRIPES - 1);
    }
    STRIPE.with(|s| *s)
}

impl ReadBuffer {
    fn new() -> Self {
        ReadBuffer {
            next: AtomicUsize::new(0),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Records a hit; true when the buffer is full and should be drained.
    fn record(&self, t: Token) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i < READ_BUFFER {
            self.slots[i].store(t.pack(), Ordering::Relaxed);
        }
        i + 1 >= READ_BUFFER
    }

    /// Takes every recorded token (exclusive access: no reader is running).
    fn drain(&mut self, mut f: impl FnMut(Token)) {
        let n = (*self.next.get_mut()).min(READ_BUFFER);
        for slot in &mut self.slots[..n] {
            if let Some(t) = Token::unpack(std::mem::take(slot.get_mut())) {
                f(t);
            }
        }
        *self.next.get_mut() = 0;
    }
}

pub(super) struct Shard<V> {
    map: HashMap<Arc<str>, Slot<V>, foldhash::fast::RandomState>,
    /// Token index → key, to find an evicted entry's key.
    keys: Vec<Option<Arc<str>>>,
    policy: Policy,
    budget: u64,
    reads: Box<[ReadBuffer; READ_STRIPES]>,
}

impl<V> Shard<V> {
    pub(super) fn new(budget: u64, entries: Option<u64>) -> Self {
        Shard {
            map: HashMap::default(),
            keys: Vec::new(),
            policy: Policy::new(budget, entries),
            budget,
            reads: Box::new(std::array::from_fn(|_| ReadBuffer::new())),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn bytes(&self) -> u64 {
        self.policy.weight()
    }

    /// `read` of the entry at `key`, recording the hit; the flag asks the
    /// caller to drain the read buffer (see [`drain_reads`](Self::drain_reads)).
    pub(super) fn get_with<R>(
        &self,
        key: &str,
        read: impl FnOnce(&Arc<Entry<V>>) -> R,
    ) -> Option<(R, bool)> {
        let slot = self.map.get(key)?;
        let full = self.reads[stripe()].record(slot.token);
        Some((read(&slot.entry), full))
    }

    #[cfg(test)]
    pub(super) fn get(&self, key: &str) -> Option<(Arc<Entry<V>>, bool)> {
        self.get_with(key, Arc::clone)
    }

    pub(super) fn peek(&self, key: &str) -> Option<Arc<Entry<V>>> {
        self.map.get(key).map(|slot| Arc::clone(&slot.entry))
    }

    /// Replays recorded hits into the policy.
    pub(super) fn drain_reads(&mut self) {
        let policy = &mut self.policy;
        for stripe in self.reads.iter_mut() {
            stripe.drain(|t| policy.on_hit(t));
        }
    }

    pub(super) fn insert(
        &mut self,
        key: Arc<str>,
        hash: u64,
        entry: Arc<Entry<V>>,
        weight: u64,
        now: Timestamp,
    ) -> Inserted {
        self.drain_reads();
        let mut out = Inserted::default();
        if weight > self.budget {
            self.remove(&key); // too heavy to ever fit; the old value is outdated
            return out;
        }
        if let Some(slot) = self.map.get_mut(&*key) {
            // A replacement keeps the key's place and counts as an access, which
            // moves it to the recent end of its list: a hot key written often
            // (write-through) stays where its popularity put it. (In one corner —
            // a protected key growing heavier while probation is nearly empty —
            // the key itself can be the entry evicted to make room; `stored` is
            // then false.)
            slot.entry = entry;
            let token = slot.token;
            self.policy.update_weight(token, weight);
            self.policy.on_hit(token);
        } else {
            let token = self.policy.insert(hash, weight);
            let i = token.index as usize;
            if self.keys.len() <= i {
                self.keys.resize(i + 1, None);
            }
            self.keys[i] = Some(Arc::clone(&key));
            self.map.insert(Arc::clone(&key), Slot { entry, token });
        }
        // Reclaim expired entries at the cold ends first: no background thread.
        for t in self.policy.coldest(EXPIRY_PROBE) {
            let expired = self
                .key_of(t)
                .and_then(|k| self.map.get(k))
                .is_some_and(|s| s.entry.is_gone(now));
            if expired {
                self.evict_token(t);
            }
        }
        while let Some(victim) = self.policy.evict() {
            self.evict_token(victim);
            out.evicted += 1;
        }
        out.stored = self.map.contains_key(&*key);
        out
    }

    /// The keys held, for a scan (pattern invalidation).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys.iter().flatten()
    }

    fn key_of(&self, t: Token) -> Option<&Arc<str>> {
        self.keys.get(t.index as usize)?.as_ref()
    }

    fn evict_token(&mut self, t: Token) {
        if !self.policy.valid(t) {
            return;
        }
        if let Some(key) = self.keys.get_mut(t.index as usize).and_then(Option::take) {
            self.map.remove(&key);
        }
        self.policy.remove(t);
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Arc<Entry<V>>> {
        let slot = self.map.remove(key)?;
        if let Some(k) = self.keys.get_mut(slot.token.index as usize) {
            *k = None;
        }
        self.policy.remove(slot.token);
        Some(slot.entry)
    }

    pub(super) fn remove_if_same(&mut self, key: &str, entry: &Arc<Entry<V>>) -> bool {
        match self.map.get(key) {
            Some(slot) if Arc::ptr_eq(&slot.entry, entry) => self.remove(key).is_some(),
            _ => false,
        }
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.keys.clear();
        self.policy.clear();
        for stripe in self.reads.iter_mut() {
            stripe.drain(|_| {});
        }
    }

    /// Slab slots in the policy, live or free.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.policy.slots()
    }

    /// The map and the policy agree, and the budget holds.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        self.policy.check();
        assert!(
            self.bytes() <= self.budget,
            "{} > {}",
            self.bytes(),
            self.budget
        );
        for (key, slot) in &self.map {
            assert_eq!(self.key_of(slot.token), Some(key), "key table out of sync");
        }
        let live = self.keys.iter().filter(|k| k.is_some()).count();
        assert_eq!(live, self.map.len());
    }
}
