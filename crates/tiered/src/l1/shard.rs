//! One shard of the L1 tier: a map, the W-TinyLFU [`Policy`] deciding what to
//! evict, and a read buffer.
//!
//! # Why a read buffer
//!
//! An LRU-based policy must reorder its lists on every hit, which needs exclusive
//! access; taking the shard's write lock on every read would serialize readers.
//! Instead a hit records the entry's token in a small lossy buffer (an atomic
//! increment and a store, under the shared lock), and the buffer is replayed into
//! the policy — by the reader that fills it and before every insert. (Removals
//! need not replay it: a recorded hit on a removed entry is ignored by its
//! generation check.) Under heavy contention a full buffer drops records: the
//! policy then sees a sample of the hits, which is what Caffeine does too and
//! costs little hit ratio.
//!
//! # Why the policy has its own lock
//!
//! The map is behind the shard's `RwLock`; the policy is behind a `Mutex` of its
//! own inside it. A reader that fills the buffer replays it holding only the
//! *shared* map lock and the policy's mutex (and skips the replay if another
//! thread holds the mutex), so the other readers of the shard keep reading while
//! a replay runs. When the replay needed the map's write lock, every reader of
//! the shard waited for it — parked in the kernel, measured as ~12% of the
//! read benchmark's time in futex waits and wake-ups. Writers hold the map's
//! write lock and so reach the policy without locking (`Mutex::get_mut`).
//!
//! The buffer is striped by thread ([`READ_STRIPES`] stripes, each on its own
//! cache lines), as Caffeine's is: threads reading the same shard then write
//! to different counters and slots instead of passing one cache line back and
//! forth on every hit.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::Mutex;

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
    key: Arc<str>,
    /// The key's first bytes, so that a lookup of a short key compares it
    /// without reading the heap. A hit must compare the whole key, and reading
    /// `key`'s bytes was a cache miss of its own on every hit (14% of the Zipf
    /// read benchmark's time); keys of up to [`INLINE_KEY`] bytes (`user:42`,
    /// most ids with a prefix) are now compared within the slot. The slot is
    /// then 64 bytes.
    prefix: [u8; INLINE_KEY],
    /// The key's hash (the tier's hasher), kept so the table can grow without
    /// hashing keys again, and checked before the key is compared.
    hash: u64,
    entry: Arc<Entry<V>>,
    token: Token,
}

/// Key bytes kept inline in a slot.
const INLINE_KEY: usize = 24;

impl<V> Slot<V> {
    fn prefix_of(key: &str) -> [u8; INLINE_KEY] {
        let mut prefix = [0; INLINE_KEY];
        let n = key.len().min(INLINE_KEY);
        prefix[..n].copy_from_slice(&key.as_bytes()[..n]);
        prefix
    }

    /// Is this the slot of `key` (whose hash is `hash`)?
    fn is(&self, hash: u64, key: &str) -> bool {
        let n = key.len();
        // The length sits in the `Arc<str>` fat pointer, in the slot itself.
        if self.hash != hash || self.key.len() != n {
            return false;
        }
        if n <= INLINE_KEY {
            self.prefix[..n] == key.as_bytes()[..]
        } else {
            *self.key == *key
        }
    }
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

    /// Records a hit; true when the buffer is full and should be drained
    /// (asked once per `READ_BUFFER` records, so a buffer whose drain was
    /// skipped asks again later rather than on every read).
    fn record(&self, t: Token) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i < READ_BUFFER {
            self.slots[i].store(t.pack(), Ordering::Relaxed);
        }
        (i + 1).is_multiple_of(READ_BUFFER)
    }

    /// Takes the recorded tokens. Readers may record concurrently: one that
    /// took an index before the reset and stores after the slot was taken leaves
    /// its token for the next drain (or a later reader overwrites it). Tokens are
    /// self-checking (generation), so a late or lost record only costs accuracy.
    fn drain(&self, mut f: impl FnMut(Token)) {
        let n = self.next.load(Ordering::Relaxed).min(READ_BUFFER);
        for slot in &self.slots[..n] {
            if let Some(t) = Token::unpack(slot.swap(0, Ordering::Relaxed)) {
                f(t);
            }
        }
        self.next.store(0, Ordering::Relaxed);
    }
}

/// One shard. Every method takes the key's hash from the caller (the tier
/// hashes each key once, for the shard choice and the table alike: a
/// `hashbrown::HashTable` rather than a `HashMap`, which would hash it again).
pub(super) struct Shard<V> {
    map: HashTable<Slot<V>>,
    /// Locked by readers replaying the read buffer; writers (holding the
    /// shard's write lock) use it through `get_mut`.
    policy: Mutex<Policy>,
    budget: u64,
    reads: Box<[ReadBuffer; READ_STRIPES]>,
}

impl<V> Shard<V> {
    pub(super) fn new(budget: u64, entries: Option<u64>) -> Self {
        Shard {
            map: HashTable::new(),
            policy: Mutex::new(Policy::new(budget, entries)),
            budget,
            reads: Box::new(std::array::from_fn(|_| ReadBuffer::new())),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn bytes(&self) -> u64 {
        self.policy.lock().weight()
    }

    /// `read` of the entry at `key`, recording the hit (and replaying the read
    /// buffer if this hit filled it and no other thread is replaying).
    pub(super) fn get_with<R>(
        &self,
        hash: u64,
        key: &str,
        read: impl FnOnce(&Arc<Entry<V>>) -> R,
    ) -> Option<R> {
        let slot = self.map.find(hash, |s| s.is(hash, key))?;
        let out = read(&slot.entry);
        if self.reads[stripe()].record(slot.token) {
            if let Some(mut policy) = self.policy.try_lock() {
                Self::replay(&self.reads, &mut policy);
            }
        }
        Some(out)
    }

    #[cfg(test)]
    pub(super) fn get(&self, hash: u64, key: &str) -> Option<Arc<Entry<V>>> {
        self.get_with(hash, key, Arc::clone)
    }

    pub(super) fn peek(&self, hash: u64, key: &str) -> Option<Arc<Entry<V>>> {
        let slot = self.map.find(hash, |s| s.is(hash, key))?;
        Some(Arc::clone(&slot.entry))
    }

    /// Replays recorded hits into the policy.
    fn replay(reads: &[ReadBuffer; READ_STRIPES], policy: &mut Policy) {
        for stripe in reads {
            let mut batch = [Token::NONE; READ_BUFFER];
            let mut n = 0;
            stripe.drain(|t| {
                batch[n] = t;
                n += 1;
            });
            policy.on_hits(&batch[..n]);
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
        let policy = self.policy.get_mut();
        Self::replay(&self.reads, policy);
        let mut out = Inserted::default();
        if weight > self.budget {
            self.remove(hash, &key); // too heavy to ever fit; the old value is outdated
            return out;
        }
        if let Some(slot) = self.map.find_mut(hash, |s| s.is(hash, &key)) {
            // A replacement keeps the key's place and counts as an access, which
            // moves it to the recent end of its list: a hot key written often
            // (write-through) stays where its popularity put it. (In one corner —
            // a protected key growing heavier while probation is nearly empty —
            // the key itself can be the entry evicted to make room; `stored` is
            // then false.)
            slot.entry = entry;
            let token = slot.token;
            policy.update_weight(token, weight);
            policy.on_hit(token);
        } else {
            let token = policy.insert(hash, weight);
            let slot = Slot {
                prefix: Slot::<V>::prefix_of(&key),
                key: Arc::clone(&key),
                hash,
                entry,
                token,
            };
            self.map.insert_unique(hash, slot, |s| s.hash);
        }
        // Reclaim expired entries at the cold ends first: no background thread.
        for t in policy.coldest(EXPIRY_PROBE) {
            let expired = self.slot_of(t).is_some_and(|s| s.entry.is_gone(now));
            if expired {
                self.evict_token(t);
            }
        }
        while let Some(victim) = self.policy.get_mut().evict() {
            self.evict_token(victim);
            out.evicted += 1;
        }
        out.stored = self.map.find(hash, |s| s.is(hash, &key)).is_some();
        out
    }

    /// The keys held, for a scan (pattern invalidation).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.map.iter().map(|s| &s.key)
    }

    /// The slot of a policy token (found by the hash the policy keeps).
    fn slot_of(&mut self, t: Token) -> Option<&Slot<V>> {
        let hash = self.policy.get_mut().hash_of(t)?;
        self.map.find(hash, |s| s.token == t)
    }

    fn evict_token(&mut self, t: Token) {
        let policy = self.policy.get_mut();
        let Some(hash) = policy.hash_of(t) else {
            return; // already gone
        };
        if let Ok(slot) = self.map.find_entry(hash, |s| s.token == t) {
            slot.remove();
        }
        policy.remove(t);
    }

    pub(super) fn remove(&mut self, hash: u64, key: &str) -> Option<Arc<Entry<V>>> {
        let (slot, _) = self
            .map
            .find_entry(hash, |s| s.is(hash, key))
            .ok()?
            .remove();
        self.policy.get_mut().remove(slot.token);
        Some(slot.entry)
    }

    pub(super) fn remove_if_same(&mut self, hash: u64, key: &str, entry: &Arc<Entry<V>>) -> bool {
        match self.map.find(hash, |s| s.is(hash, key)) {
            Some(slot) if Arc::ptr_eq(&slot.entry, entry) => self.remove(hash, key).is_some(),
            _ => false,
        }
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.policy.get_mut().clear();
        // Every slot, not just the recorded ones: the new policy's generations
        // start again, so a leftover token could match a new entry.
        for stripe in self.reads.iter_mut() {
            for slot in &mut stripe.slots {
                *slot.get_mut() = 0;
            }
            *stripe.next.get_mut() = 0;
        }
    }

    /// Slab slots in the policy, live or free.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.policy.lock().slots()
    }

    /// The map and the policy agree, and the budget holds.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        self.policy.lock().check();
        assert!(
            self.bytes() <= self.budget,
            "{} > {}",
            self.bytes(),
            self.budget
        );
        let policy = self.policy.lock();
        for slot in &self.map {
            assert_eq!(
                policy.hash_of(slot.token),
                Some(slot.hash),
                "policy out of sync"
            );
        }
        assert_eq!(policy.len(), self.map.len());
    }
}
