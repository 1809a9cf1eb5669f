//! One shard of the L1 tier: a map plus the S3-FIFO queues that decide eviction.
//!
//! Queues hold `(key, id)` pairs and are cleaned lazily: removing a key only
//! removes it from the map, and a queue node whose id no longer matches the map is
//! skipped when it reaches the head. When dead nodes outnumber live ones the
//! queues are compacted, so memory stays proportional to what the shard holds.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::entry::Entry;

use super::Inserted;

/// A hit counter saturates here: three hits buy three laps in the main queue.
const MAX_FREQ: u8 = 3;
/// The small queue's share of the shard budget, in percent.
const SMALL_PERCENT: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Slot<V> {
    entry: Arc<Entry<V>>,
    weight: u64,
    freq: AtomicU8,
    id: u64,
    queue: Queue,
}

struct Node {
    key: Arc<str>,
    hash: u64,
    id: u64,
}

/// Hashes of recently evicted keys, in FIFO order, bounded. Each membership has a
/// generation so that a stale `order` node (left behind by `take`) falling off the
/// end cannot cancel a newer membership of the same hash.
#[derive(Default)]
struct Ghost {
    order: VecDeque<(u64, u64)>,
    members: HashMap<u64, u64, foldhash::fast::RandomState>,
    generation: u64,
}

impl Ghost {
    fn insert(&mut self, hash: u64, capacity: usize) {
        self.generation += 1;
        self.members.insert(hash, self.generation);
        self.order.push_back((hash, self.generation));
        while self.order.len() > capacity.max(1) {
            if let Some((old, generation)) = self.order.pop_front() {
                if self.members.get(&old) == Some(&generation) {
                    self.members.remove(&old);
                }
            }
        }
    }

    /// Removes `hash` if present; true if it was.
    fn take(&mut self, hash: u64) -> bool {
        self.members.remove(&hash).is_some()
    }

    fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

pub(super) struct Shard<V> {
    map: HashMap<Arc<str>, Slot<V>, foldhash::fast::RandomState>,
    small: VecDeque<Node>,
    main: VecDeque<Node>,
    ghost: Ghost,
    budget: u64,
    /// The small queue's share of `budget`.
    small_budget: u64,
    bytes: u64,
    small_bytes: u64,
    next_id: u64,
}

impl<V> Shard<V> {
    pub(super) fn new(budget: u64) -> Self {
        Shard {
            map: HashMap::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: Ghost::default(),
            budget,
            small_budget: budget / 100 * SMALL_PERCENT,
            bytes: 0,
            small_bytes: 0,
            next_id: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn get(&self, key: &str) -> Option<Arc<Entry<V>>> {
        let slot = self.map.get(key)?;
        // Relaxed: the counter is a hint for eviction, not a synchronization point.
        let f = slot.freq.load(Ordering::Relaxed);
        if f < MAX_FREQ {
            slot.freq.store(f + 1, Ordering::Relaxed);
        }
        Some(Arc::clone(&slot.entry))
    }

    pub(super) fn peek(&self, key: &str) -> Option<Arc<Entry<V>>> {
        self.map.get(key).map(|slot| Arc::clone(&slot.entry))
    }

    pub(super) fn insert(
        &mut self,
        key: Arc<str>,
        hash: u64,
        entry: Arc<Entry<V>>,
        weight: u64,
        now: Timestamp,
    ) -> Inserted {
        let mut out = Inserted::default();
        // A replacement keeps the standing the key earned: if it had been promoted
        // (or hit), the new value goes straight to main.
        let earned_main = self
            .map
            .get(&*key)
            .is_some_and(|s| s.queue == Queue::Main || s.freq.load(Ordering::Relaxed) > 0);
        self.remove(&key);
        if weight > self.budget {
            return out; // too heavy to ever fit
        }
        while self.bytes + weight > self.budget {
            if !self.evict_one(now, &mut out) {
                break;
            }
        }
        let queue = if earned_main || self.ghost.take(hash) {
            Queue::Main
        } else {
            Queue::Small
        };
        let id = self.next_id;
        self.next_id += 1;
        let node = Node {
            key: Arc::clone(&key),
            hash,
            id,
        };
        match queue {
            Queue::Small => self.small.push_back(node),
            Queue::Main => self.main.push_back(node),
        }
        self.bytes += weight;
        if queue == Queue::Small {
            self.small_bytes += weight;
        }
        let freq = AtomicU8::new(0);
        self.map.insert(
            key,
            Slot {
                entry,
                weight,
                freq,
                id,
                queue,
            },
        );
        out.stored = true;
        self.maybe_compact();
        out
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Arc<Entry<V>>> {
        let slot = self.map.remove(key)?;
        self.sub_queue(slot.queue, slot.weight);
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
        self.small.clear();
        self.main.clear();
        self.ghost.clear();
        self.bytes = 0;
        self.small_bytes = 0;
    }

    fn sub_queue(&mut self, queue: Queue, weight: u64) {
        self.bytes -= weight;
        if queue == Queue::Small {
            self.small_bytes -= weight;
        }
    }

    /// Evicts (or promotes) one node. Returns false when nothing is left to evict.
    fn evict_one(&mut self, now: Timestamp, out: &mut Inserted) -> bool {
        let small_over = self.small_bytes >= self.small_budget;
        if (small_over || self.main.is_empty()) && self.evict_small(now, out) {
            return true;
        }
        self.evict_main(now, out) || self.evict_small(now, out)
    }

    /// Pops the small queue's head: promote it to main if it was hit, else evict it
    /// into the ghost list. Returns false if the small queue holds no live node.
    fn evict_small(&mut self, now: Timestamp, out: &mut Inserted) -> bool {
        while let Some(node) = self.small.pop_front() {
            let Some(slot) = self.map.get_mut(&*node.key) else {
                continue;
            };
            if slot.id != node.id || slot.queue != Queue::Small {
                continue;
            }
            let expired = slot.entry.is_gone(now);
            if !expired && slot.freq.load(Ordering::Relaxed) > 0 {
                slot.freq.store(0, Ordering::Relaxed);
                slot.queue = Queue::Main;
                self.small_bytes -= slot.weight;
                self.main.push_back(node);
                continue;
            }
            self.remove(&node.key);
            if !expired {
                out.evicted += 1;
                let capacity = self.map.len();
                self.ghost.insert(node.hash, capacity);
            }
            return true;
        }
        false
    }

    /// Pops main's head: a hit buys it another lap, otherwise it is evicted.
    fn evict_main(&mut self, now: Timestamp, out: &mut Inserted) -> bool {
        while let Some(node) = self.main.pop_front() {
            let Some(slot) = self.map.get(&*node.key) else {
                continue;
            };
            if slot.id != node.id || slot.queue != Queue::Main {
                continue;
            }
            let expired = slot.entry.is_gone(now);
            let f = slot.freq.load(Ordering::Relaxed);
            if !expired && f > 0 {
                slot.freq.store(f - 1, Ordering::Relaxed);
                self.main.push_back(node);
                continue;
            }
            self.remove(&node.key);
            if !expired {
                out.evicted += 1;
            }
            return true;
        }
        false
    }

    /// Rebuilds the queues without dead nodes once they are mostly dead.
    fn maybe_compact(&mut self) {
        let nodes = self.small.len() + self.main.len();
        if nodes <= 2 * self.map.len() + 64 {
            return;
        }
        let map = &self.map;
        let live = |n: &Node, q: Queue| {
            map.get(&*n.key)
                .is_some_and(|s| s.id == n.id && s.queue == q)
        };
        self.small.retain(|n| live(n, Queue::Small));
        self.main.retain(|n| live(n, Queue::Main));
    }

    /// Nodes in the queues, live or dead.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.small.len() + self.main.len()
    }

    /// Byte counters match the map; every live entry has exactly one live node.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        let bytes: u64 = self.map.values().map(|s| s.weight).sum();
        let small: u64 = self
            .map
            .values()
            .filter(|s| s.queue == Queue::Small)
            .map(|s| s.weight)
            .sum();
        assert_eq!(self.bytes, bytes, "bytes");
        assert_eq!(self.small_bytes, small, "small bytes");
        for (key, slot) in &self.map {
            let queue = match slot.queue {
                Queue::Small => &self.small,
                Queue::Main => &self.main,
            };
            let live = queue
                .iter()
                .filter(|n| &n.key == key && n.id == slot.id)
                .count();
            assert_eq!(live, 1, "key {key} has {live} live nodes");
        }
    }
}
