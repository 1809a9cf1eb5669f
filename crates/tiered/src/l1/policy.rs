//! W-TinyLFU with an adaptive window: the eviction and admission policy of one
//! L1 shard.
//!
//! # The policy
//!
//! Entries live in one of three LRU lists:
//!
//! * the **window** (starts at 1% of the capacity) takes every new entry, so a
//!   burst of new keys competes only with each other;
//! * the **main** space behind it is a segmented LRU: **probation** (entries
//!   admitted from the window, or demoted) and **protected** (80% of main:
//!   entries hit while on probation).
//!
//! When the window overflows, its least recent entry becomes a *candidate* for
//! main. If main is full, the candidate and main's least recent entry (the
//! *victim*) are compared by their estimated frequency in a **count-min sketch**
//! of recent accesses (TinyLFU): the more popular stays, the other is evicted.
//! The sketch halves all counters every `10 × n` counted accesses, `n` being the
//! entry count it is sized for (the expected entry count when known, else 1,024,
//! then the live entry count as it grows), so popularity ages — as Caffeine's
//! does. Ties go to the victim (see
//! [`Policy::admit`] for why there is no random admission).
//!
//! # Adapting the window
//!
//! A small window favours frequency (loops, scans over a stable hot set); a
//! large one favours recency (bursty, recency-skewed workloads). No fixed split
//! wins both — on the shipped traces the best fixed share ranges from the minimum
//! (loop) to 50% (P3 at 200k entries). The share is chosen by miniature
//! simulations of the same policy with fixed shares; see [`super::window`] for
//! how, and for why not Caffeine's hill climbing.
//!
//! # How it is tested
//!
//! Besides unit tests of its behaviour (loops, scans, window growth), a
//! model-based test drives it and a plain reference — the same rules over
//! `VecDeque`s, searched linearly — with random inserts, hits, weight changes
//! and removals, and requires the same lists in the same order and the same
//! evictions after every step. The concurrent shard around it has a
//! many-thread stress test (`l1/tests.rs`).
//!
//! # Weights
//!
//! Capacities and list sizes are in weight units (bytes in the engine, 1 per
//! entry in the benchmarks); the sketch is sized by entry count and grows with it.

use super::window::WindowSizer;

/// Where a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Window,
    Probation,
    Protected,
}

const NIL: u32 = u32::MAX;

struct Node {
    hash: u64,
    weight: u64,
    prev: u32,
    next: u32,
    queue: Queue,
    /// Bumped when the slot is freed, so stale read-buffer tokens are ignored.
    generation: u32,
    live: bool,
}

/// A doubly linked LRU list threaded through the slab; head is least recent.
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    weight: u64,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        weight: 0,
    };
}

/// A handle on a node: slot index plus generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Token {
    pub index: u32,
    pub generation: u32,
}

impl Token {
    /// A token no node matches (a placeholder in buffers).
    pub(super) const NONE: Token = Token {
        index: u32::MAX,
        generation: 0,
    };

    /// Packs into a non-zero u64 (0 means "empty" in the read buffer).
    pub(super) fn pack(self) -> u64 {
        (u64::from(self.generation) << 32) | (u64::from(self.index) + 1)
    }

    pub(super) fn unpack(v: u64) -> Option<Token> {
        let index = (v & 0xFFFF_FFFF) as u32;
        (index != 0).then(|| Token {
            index: index - 1,
            generation: (v >> 32) as u32,
        })
    }
}

pub(super) struct Policy {
    nodes: Vec<Node>,
    free: Vec<u32>,
    window: List,
    probation: List,
    protected: List,
    capacity: u64,
    window_cap: u64,
    protected_cap: u64,
    sketch: Sketch,
    /// Picks the window share (none: a fixed share, as in the simulations).
    sizer: Option<Box<WindowSizer>>,
}

/// When the entry count is not known (a byte budget), the sketch starts sized for
/// this many entries and grows with the live entries (growth keeps the counts),
/// so its memory follows entries, not bytes — as Caffeine does for weighted
/// caches. When it is known, the sketch is sized for it up front.
const SKETCH_START_ENTRIES: u64 = 1024;
/// Share of capacity the window starts with.
const WINDOW_START_PERCENT: u64 = 1;
/// Share of main held by the protected segment.
const PROTECTED_PERCENT: u64 = 80;

impl Policy {
    /// An adaptive policy: the window starts at 1% and follows the miniature
    /// simulations (see [`super::window`]). `entries`: how many entries it will
    /// hold, if known.
    pub(super) fn new(capacity: u64, entries: Option<u64>) -> Self {
        let share = WINDOW_START_PERCENT as f64 / 100.0;
        let mut p = Self::fixed_for(capacity, share, entries.unwrap_or(SKETCH_START_ENTRIES));
        p.sizer = Some(Box::new(WindowSizer::new(capacity)));
        p
    }

    /// A policy whose window keeps `share` of the capacity (at least one entry),
    /// with a sketch sized for `entries` entries to start with.
    pub(super) fn fixed_for(capacity: u64, share: f64, entries: u64) -> Self {
        let window_cap = ((capacity as f64 * share) as u64).max(1).min(capacity);
        let mut p = Policy {
            nodes: Vec::new(),
            free: Vec::new(),
            window: List::EMPTY,
            probation: List::EMPTY,
            protected: List::EMPTY,
            capacity,
            window_cap,
            protected_cap: 0,
            sketch: Sketch::new(entries as usize),
            sizer: None,
        };
        p.protected_cap = p.main_cap() / 100 * PROTECTED_PERCENT;
        p
    }

    fn main_cap(&self) -> u64 {
        self.capacity - self.window_cap
    }

    pub(super) fn weight(&self) -> u64 {
        self.window.weight + self.probation.weight + self.protected.weight
    }

    fn list(&mut self, q: Queue) -> &mut List {
        match q {
            Queue::Window => &mut self.window,
            Queue::Probation => &mut self.probation,
            Queue::Protected => &mut self.protected,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, q, w) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, n.queue, n.weight)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        let list = self.list(q);
        if list.head == i {
            list.head = next;
        }
        if list.tail == i {
            list.tail = prev;
        }
        list.weight -= w;
    }

    fn push_tail(&mut self, i: u32, q: Queue) {
        let w = self.nodes[i as usize].weight;
        let tail = self.list(q).tail;
        {
            let n = &mut self.nodes[i as usize];
            n.queue = q;
            n.prev = tail;
            n.next = NIL;
        }
        if tail != NIL {
            self.nodes[tail as usize].next = i;
        }
        let list = self.list(q);
        if list.head == NIL {
            list.head = i;
        }
        list.tail = i;
        list.weight += w;
    }

    pub(super) fn valid(&self, t: Token) -> bool {
        self.nodes
            .get(t.index as usize)
            .is_some_and(|n| n.live && n.generation == t.generation)
    }

    /// Keeps protected within its share by demoting its least recent entries to
    /// probation (the most recent one always stays).
    fn demote_overflow(&mut self) {
        while self.protected.weight > self.protected_cap
            && self.protected.head != self.protected.tail
        {
            let d = self.protected.head;
            self.unlink(d);
            self.push_tail(d, Queue::Probation);
        }
    }

    /// Records a batch of hits (from the read buffer).
    ///
    /// Each hit's list moves depend on the node and sketch block before them,
    /// so replayed one by one the hits take their cache misses one at a time
    /// (at 100k entries, ~100 ns each). A first pass of independent reads —
    /// each hit's node, its list neighbours and its sketch block — lets the CPU
    /// overlap those misses; the second pass then works on warm lines.
    pub(super) fn on_hits(&mut self, tokens: &[Token]) {
        let mut touched = 0u64;
        for t in tokens {
            if let Some(n) = self.nodes.get(t.index as usize) {
                touched = touched.wrapping_add(self.sketch.touch(n.hash));
                for i in [n.prev, n.next] {
                    if let Some(neighbour) = self.nodes.get(i as usize) {
                        touched = touched.wrapping_add(neighbour.hash);
                    }
                }
            }
        }
        std::hint::black_box(touched);
        for &t in tokens {
            self.on_hit(t);
        }
    }

    /// Records a hit on `t` (ignored if the node is gone).
    pub(super) fn on_hit(&mut self, t: Token) {
        if !self.valid(t) {
            return;
        }
        let i = t.index;
        let (hash, weight) = (self.nodes[i as usize].hash, self.nodes[i as usize].weight);
        self.sketch.increment(hash);
        self.adapt(hash, weight);
        match self.nodes[i as usize].queue {
            Queue::Window => {
                self.unlink(i);
                self.push_tail(i, Queue::Window);
            }
            Queue::Probation => {
                self.unlink(i);
                self.push_tail(i, Queue::Protected);
                self.demote_overflow();
            }
            Queue::Protected => {
                self.unlink(i);
                self.push_tail(i, Queue::Protected);
            }
        }
    }

    /// Adds a new entry; returns its token. The caller then calls
    /// [`evict`](Self::evict) until the policy is within capacity.
    pub(super) fn insert(&mut self, hash: u64, weight: u64) -> Token {
        self.sketch.increment(hash);
        self.adapt(hash, weight);
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node {
                    hash: 0,
                    weight: 0,
                    prev: NIL,
                    next: NIL,
                    queue: Queue::Window,
                    generation: 0,
                    live: false,
                });
                (self.nodes.len() - 1) as u32
            }
        };
        let n = &mut self.nodes[index as usize];
        n.hash = hash;
        // A weight of 0 is charged as 1: an entry that weighs nothing could
        // never be evicted by a weight bound, and still costs memory.
        n.weight = weight.max(1);
        n.live = true;
        let generation = n.generation;
        self.push_tail(index, Queue::Window);
        let live = self.nodes.len() - self.free.len();
        self.sketch.ensure_capacity(live);
        Token { index, generation }
    }

    /// Changes a live entry's weight in place (its value was replaced).
    pub(super) fn update_weight(&mut self, t: Token, weight: u64) {
        if !self.valid(t) {
            return;
        }
        let q = self.nodes[t.index as usize].queue;
        let weight = weight.max(1);
        let old = std::mem::replace(&mut self.nodes[t.index as usize].weight, weight);
        let list = self.list(q);
        list.weight = list.weight - old + weight;
        self.demote_overflow();
    }

    /// Removes an entry.
    pub(super) fn remove(&mut self, t: Token) {
        if !self.valid(t) {
            return;
        }
        self.unlink(t.index);
        let n = &mut self.nodes[t.index as usize];
        n.live = false;
        n.generation = n.generation.wrapping_add(1);
        self.free.push(t.index);
    }

    /// The token of the entry to evict next, or `None` when within capacity.
    /// The caller removes it (from its map and with [`remove`](Self::remove)).
    pub(super) fn evict(&mut self) -> Option<Token> {
        // Window overflow feeds main; main overflow is settled by TinyLFU. The
        // newest entry always stays in the window, even if it alone exceeds the
        // window's share: a value just stored is not refused on arrival (with
        // unit weights this never triggers — the window holds at least one).
        while self.window.weight > self.window_cap && self.window.head != self.window.tail {
            let c = self.window.head;
            self.unlink(c);
            self.push_tail(c, Queue::Probation);
        }
        if self.weight() <= self.capacity {
            return None;
        }
        // The most recent probation entry is the newest candidate; the least
        // recent other main entry is the victim.
        let candidate = self.probation.tail;
        let victim = if self.probation.head != candidate {
            self.probation.head
        } else {
            self.protected.head
        };
        let loser = match (candidate, victim) {
            (NIL, NIL) => self.window.head,
            (c, NIL) => c,
            (NIL, v) => v,
            (c, v) => {
                if self.admit(c, v) {
                    v
                } else {
                    c
                }
            }
        };
        (loser != NIL).then(|| self.token(loser))
    }

    fn token(&self, i: u32) -> Token {
        Token {
            index: i,
            generation: self.nodes[i as usize].generation,
        }
    }

    /// TinyLFU admission: does `candidate` deserve `victim`'s place? Ties go to
    /// the victim.
    ///
    /// Caffeine also admits a warm candidate on a tie with probability 1/128, to
    /// defeat an attacker who crafts keys colliding with a victim's counters. That
    /// attack needs predictable hashes; every L1 here hashes keys with its own
    /// random seed, so the defence is not needed — and on loop-like workloads the
    /// random admissions churn the stable set (measured: −4 points on the LIRS
    /// loop trace at 750 entries).
    fn admit(&self, candidate: u32, victim: u32) -> bool {
        let cf = self.sketch.frequency(self.nodes[candidate as usize].hash);
        let vf = self.sketch.frequency(self.nodes[victim as usize].hash);
        cf > vf
    }

    /// Feeds the window sizer one request and applies its decision, if any.
    fn adapt(&mut self, hash: u64, weight: u64) {
        let live = self.nodes.len() - self.free.len();
        let total = self.weight();
        let Some(share) = self
            .sizer
            .as_mut()
            .and_then(|s| s.access(hash, weight, live, total))
        else {
            return;
        };
        self.window_cap = ((self.capacity as f64 * share) as u64)
            .max(1)
            .min(self.capacity);
        self.protected_cap = self.main_cap() / 100 * PROTECTED_PERCENT;
        self.demote_overflow();
    }

    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The hash of a live entry.
    pub(super) fn hash_of(&self, t: Token) -> Option<u64> {
        self.valid(t).then(|| self.nodes[t.index as usize].hash)
    }

    /// The least recent entries of each list (up to `n` each), where expired
    /// entries are most likely to sit.
    pub(super) fn coldest(&self, n: usize) -> Vec<Token> {
        let mut out = Vec::with_capacity(3 * n);
        for head in [self.window.head, self.probation.head, self.protected.head] {
            let mut i = head;
            for _ in 0..n {
                if i == NIL {
                    break;
                }
                out.push(self.token(i));
                i = self.nodes[i as usize].next;
            }
        }
        out
    }

    /// Live entries, for consistency checks.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Slots in the slab (live or free), for tests of memory reuse.
    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.nodes.len()
    }

    pub(super) fn clear(&mut self) {
        let entries = Some(self.sketch.entries as u64);
        let adaptive = self.sizer.is_some();
        *self = if adaptive {
            Policy::new(self.capacity, entries)
        } else {
            let share = self.window_cap as f64 / self.capacity as f64;
            Policy::fixed_for(self.capacity, share, self.sketch.entries as u64)
        };
    }

    #[cfg(test)]
    pub(super) fn window_cap(&self) -> u64 {
        self.window_cap
    }

    /// Each list's (hash, weight) pairs, least recent first.
    #[cfg(test)]
    fn lists(&self) -> [Vec<(u64, u64)>; 3] {
        [self.window, self.probation, self.protected].map(|list| {
            let mut out = Vec::new();
            let mut i = list.head;
            while i != NIL {
                let n = &self.nodes[i as usize];
                out.push((n.hash, n.weight));
                i = n.next;
            }
            out
        })
    }

    /// Lists are consistent: links, weights, and every live node in exactly one.
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut seen = 0;
        for q in [Queue::Window, Queue::Probation, Queue::Protected] {
            let list = match q {
                Queue::Window => self.window,
                Queue::Probation => self.probation,
                Queue::Protected => self.protected,
            };
            let (mut i, mut prev, mut w) = (list.head, NIL, 0);
            while i != NIL {
                let n = &self.nodes[i as usize];
                assert!(n.live && n.queue == q && n.prev == prev);
                w += n.weight;
                seen += 1;
                prev = i;
                i = n.next;
            }
            assert_eq!(prev, list.tail);
            assert_eq!(w, list.weight);
        }
        assert_eq!(seen, self.nodes.len() - self.free.len());
    }
}

/// A count-min sketch of 4-bit counters, 4 rows, halved every `10 × entries`
/// increments so old popularity fades.
///
/// All four counters of a key lie in one 64-byte block, as in Caffeine's
/// sketch since 3.x: a key is first hashed to a block, then each row picks one
/// of its own two words in the block and one of that word's 16 counters. An
/// access then costs one cache miss instead of four — the sketch is the
/// largest structure the read-buffer replay touches at random (measured: 9% of
/// the Zipf read benchmark's time with one word per row anywhere in the table).
struct Sketch {
    /// The entry count it is sized for.
    entries: usize,
    table: Vec<Block>,
    /// Blocks − 1 (the block count is a power of two).
    mask: usize,
    additions: usize,
    sample: usize,
}

/// The most entries a sketch is sized for (128 MiB of counters): beyond it,
/// counters are shared by more keys, which is better than an allocation an
/// absurd expected entry count could make fail.
const MAX_SKETCH_ENTRIES: usize = 1 << 24;

/// Eight words of 16 four-bit counters, on one cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; 8]);

impl Sketch {
    /// Sized as Caffeine does: a power-of-two number of words ≥ `entries`
    /// (16 counters per word, 8 words per block), halved every `10 × entries`
    /// increments.
    fn new(entries: usize) -> Self {
        let entries = entries.clamp(16, MAX_SKETCH_ENTRIES);
        let blocks = Self::blocks_for(entries);
        Sketch {
            entries,
            table: vec![Block::default(); blocks],
            mask: blocks - 1,
            additions: 0,
            sample: 10 * entries,
        }
    }

    fn blocks_for(entries: usize) -> usize {
        (entries.next_power_of_two() / 8).max(1)
    }

    /// Grows the table when the cache holds more entries than it was sized for
    /// (a too-small sketch makes every key look popular). Each old block is
    /// copied to every new block that the same hashes map to (the block is
    /// chosen by the hash's low bits, the counters within it by other bits), so
    /// estimates survive the growth (at worst over-counted) instead of being
    /// forgotten.
    fn ensure_capacity(&mut self, entries: usize) {
        let entries = entries.min(MAX_SKETCH_ENTRIES);
        if entries <= self.table.len() * 8 {
            return;
        }
        let blocks = Self::blocks_for(entries);
        let old = std::mem::take(&mut self.table);
        self.table = (0..blocks).map(|i| old[i & self.mask]).collect();
        self.mask = blocks - 1;
        self.sample = 10 * entries;
        self.entries = entries;
    }

    /// The key's block, and per row the word in it and the counter's shift.
    fn counters(&self, hash: u64) -> (usize, [(usize, u32); 4]) {
        let h = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = h ^ (h >> 29);
        let block = (h as usize) & self.mask;
        // Bits for the counters, independent of the block bits.
        let c = (h >> 32).wrapping_mul(0xc3a5_c85c_97cb_3127);
        let c = c ^ (c >> 31);
        let slots = std::array::from_fn(|row| {
            let b = (c >> (row * 8)) as usize;
            (2 * row + (b & 1), (((b >> 1) & 15) * 4) as u32)
        });
        (block, slots)
    }

    fn increment(&mut self, hash: u64) {
        let (block, slots) = self.counters(hash);
        let words = &mut self.table[block].0;
        let mut added = false;
        for (word, shift) in slots {
            if (words[word] >> shift) & 0xF < 15 {
                words[word] += 1 << shift;
                added = true;
            }
        }
        if added {
            self.additions += 1;
            if self.additions >= self.sample {
                self.halve();
            }
        }
    }

    /// Reads the key's block (to bring it into the cache ahead of use).
    fn touch(&self, hash: u64) -> u64 {
        self.table[self.counters(hash).0].0[0]
    }

    fn frequency(&self, hash: u64) -> u64 {
        let (block, slots) = self.counters(hash);
        let words = &self.table[block].0;
        slots
            .iter()
            .map(|&(word, shift)| (words[word] >> shift) & 0xF)
            .min()
            .unwrap_or(0)
    }

    fn halve(&mut self) {
        for w in self.table.iter_mut().flat_map(|b| b.0.iter_mut()) {
            *w = (*w >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A policy driven like a cache of unit weights: returns hits.
    fn replay(p: &mut Policy, keys: impl IntoIterator<Item = u64>) -> usize {
        let mut tokens = std::collections::HashMap::<u64, Token>::new();
        let mut hits = 0;
        for k in keys {
            let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if let Some(&t) = tokens.get(&k) {
                p.on_hit(t);
                hits += 1;
                continue;
            }
            let t = p.insert(h, 1);
            tokens.insert(k, t);
            while let Some(victim) = p.evict() {
                p.remove(victim);
                tokens.retain(|_, t| *t != victim);
            }
            assert!(p.weight() <= p.capacity);
        }
        p.check();
        hits
    }

    #[test]
    fn a_loop_larger_than_the_cache_keeps_a_stable_part() {
        // LRU gets 0% on a loop of 1.5x its size; TinyLFU keeps a fixed subset.
        let mut p = Policy::new(100, Some(100));
        let keys = (0..50).flat_map(|_| 0..150u64);
        let hits = replay(&mut p, keys);
        assert!(hits > 50 * 60, "only {hits} hits");
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let mut p = Policy::new(100, Some(100));
        // A hot set of 50 keys, then a scan of 2000 new keys interleaved with
        // the hot set: the hot keys must keep hitting.
        let hot = (0..30).flat_map(|_| 0..50u64);
        let scan = (1000..3000u64).flat_map(|k| [k, k % 50]);
        let hits = replay(&mut p, hot.chain(scan));
        assert!(hits > 30 * 50 - 50 + 1900, "only {hits} hits");
    }

    #[test]
    fn the_window_grows_for_recency_heavy_workloads() {
        let mut p = Policy::new(1000, Some(1000));
        let start = p.window_cap();
        // Each key is reused a few times shortly after first use, then never:
        // pure recency, where a large window wins.
        let keys = (0..200_000u64).map(|i| (i / 4) + (i % 4) * 3);
        replay(&mut p, keys);
        assert!(
            p.window_cap() > start,
            "window stayed at {}",
            p.window_cap()
        );
    }

    #[test]
    fn the_window_stays_small_for_a_loop() {
        let mut p = Policy::new(500, Some(500));
        let keys = (0..200).flat_map(|_| 0..800u64);
        let hits = replay(&mut p, keys);
        assert!(p.window_cap() <= 5, "window grew to {}", p.window_cap());
        // Near the 500/800 optimum for a loop larger than the cache.
        assert!(hits as f64 > 0.58 * 160_000.0, "{hits} hits");
    }

    #[test]
    fn a_fixed_policy_keeps_its_share() {
        let mut p = Policy::fixed_for(1000, 0.2, 1000);
        replay(&mut p, (0..50_000u64).map(|i| i % 3000));
        assert_eq!(p.window_cap(), 200);
    }

    /// The reference for the model-based test: the same W-TinyLFU rules as
    /// [`Policy`] (fixed window share), written as plainly as possible —
    /// lists are `VecDeque`s searched linearly, entries named by the caller's
    /// ids. Only the frequency sketch is shared (it has its own tests).
    struct Reference {
        lists: [VecDeque<(u64, u64, u64)>; 3], // (id, hash, weight); least recent first
        capacity: u64,
        window_cap: u64,
        protected_cap: u64,
        sketch: Sketch,
    }

    const WINDOW: usize = 0;
    const PROBATION: usize = 1;
    const PROTECTED: usize = 2;

    impl Reference {
        fn new(capacity: u64, share: f64, entries: u64) -> Self {
            let window_cap = ((capacity as f64 * share) as u64).max(1).min(capacity);
            Reference {
                lists: Default::default(),
                capacity,
                window_cap,
                protected_cap: (capacity - window_cap) / 100 * PROTECTED_PERCENT,
                sketch: Sketch::new(entries as usize),
            }
        }

        fn weight(&self, list: usize) -> u64 {
            self.lists[list].iter().map(|e| e.2).sum()
        }

        fn find(&self, id: u64) -> Option<(usize, usize)> {
            (0..3).find_map(|l| Some((l, self.lists[l].iter().position(|e| e.0 == id)?)))
        }

        fn take(&mut self, id: u64) -> Option<(usize, (u64, u64, u64))> {
            let (l, at) = self.find(id)?;
            Some((l, self.lists[l].remove(at)?))
        }

        fn demote(&mut self) {
            while self.weight(PROTECTED) > self.protected_cap && self.lists[PROTECTED].len() > 1 {
                let e = self.lists[PROTECTED].pop_front().unwrap();
                self.lists[PROBATION].push_back(e);
            }
        }

        fn insert(&mut self, id: u64, hash: u64, weight: u64) {
            self.sketch.increment(hash);
            self.lists[WINDOW].push_back((id, hash, weight.max(1)));
            let live = self.lists.iter().map(VecDeque::len).sum();
            self.sketch.ensure_capacity(live);
        }

        fn hit(&mut self, id: u64) {
            let Some((l, e)) = self.take(id) else { return };
            self.sketch.increment(e.1);
            let to = if l == WINDOW { WINDOW } else { PROTECTED };
            self.lists[to].push_back(e);
            self.demote();
        }

        fn update_weight(&mut self, id: u64, weight: u64) {
            if let Some((l, at)) = self.find(id) {
                self.lists[l][at].2 = weight.max(1);
                self.demote();
            }
        }

        fn remove(&mut self, id: u64) {
            self.take(id);
        }

        /// The id to evict next, as `Policy::evict` decides it.
        fn evict(&mut self) -> Option<u64> {
            while self.weight(WINDOW) > self.window_cap && self.lists[WINDOW].len() > 1 {
                let e = self.lists[WINDOW].pop_front().unwrap();
                self.lists[PROBATION].push_back(e);
            }
            let total: u64 = (0..3).map(|l| self.weight(l)).sum();
            if total <= self.capacity {
                return None;
            }
            let candidate = self.lists[PROBATION].back().copied();
            let victim = if self.lists[PROBATION].len() > 1 {
                self.lists[PROBATION].front().copied()
            } else {
                self.lists[PROTECTED].front().copied()
            };
            Some(match (candidate, victim) {
                (None, None) => self.lists[WINDOW].front()?.0,
                (Some(c), None) => c.0,
                (None, Some(v)) => v.0,
                (Some(c), Some(v)) => {
                    if self.sketch.frequency(c.1) > self.sketch.frequency(v.1) {
                        v.0
                    } else {
                        c.0
                    }
                }
            })
        }

        fn lists(&self) -> [Vec<(u64, u64)>; 3] {
            self.lists
                .clone()
                .map(|l| l.into_iter().map(|(_, h, w)| (h, w)).collect())
        }
    }

    #[test]
    fn the_policy_matches_a_plain_reference_under_random_operations() {
        // Model-based: random inserts, hits, weight changes and removals on
        // the slab-and-links policy and on the reference; after every step
        // both hold the same entries in the same lists in the same order, and
        // evict the same entry.
        for seed in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let capacity = rng.u64(1..60);
            let share = [0.0, 0.01, 0.2, 0.5, 0.8][rng.usize(0..5)];
            let entries = rng.u64(1..40);
            let mut policy = Policy::fixed_for(capacity, share, entries);
            let mut reference = Reference::new(capacity, share, entries);
            let mut live: Vec<(u64, Token)> = Vec::new(); // (id, token)
            for id in 0..400u64 {
                // Few distinct hashes, so sketch estimates collide and tie.
                let hash = rng.u64(0..50).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                match rng.u8(0..10) {
                    0..=3 => {
                        let weight = rng.u64(0..6);
                        live.push((id, policy.insert(hash, weight)));
                        reference.insert(id, hash, weight);
                    }
                    4..=6 if !live.is_empty() => {
                        let (id, t) = live[rng.usize(0..live.len())];
                        policy.on_hit(t);
                        reference.hit(id);
                    }
                    7 if !live.is_empty() => {
                        let (id, t) = live[rng.usize(0..live.len())];
                        let weight = rng.u64(0..6);
                        policy.update_weight(t, weight);
                        reference.update_weight(id, weight);
                    }
                    8 if !live.is_empty() => {
                        let (id, t) = live.swap_remove(rng.usize(0..live.len()));
                        policy.remove(t);
                        reference.remove(id);
                    }
                    _ => {}
                }
                loop {
                    let evicted = policy.evict();
                    let expected = reference.evict();
                    let got = evicted.map(|t| {
                        let at = live.iter().position(|e| e.1 == t).expect("a live token");
                        live.swap_remove(at).0
                    });
                    assert_eq!(got, expected, "seed {seed}, step {id}: evicted");
                    let Some(t) = evicted else { break };
                    policy.remove(t);
                    reference.remove(got.unwrap());
                }
                assert_eq!(policy.lists(), reference.lists(), "seed {seed}, step {id}");
                assert!(policy.weight() <= capacity);
                policy.check();
            }
        }
    }

    #[test]
    fn tokens_pack_and_unpack() {
        let t = Token {
            index: 7,
            generation: 3,
        };
        assert_eq!(Token::unpack(t.pack()), Some(t));
        assert_eq!(Token::unpack(0), None);
    }

    #[test]
    fn sketch_never_underestimates_and_keeps_estimates_through_growth() {
        // Count-min: an estimate is at least the true count (up to the 4-bit
        // cap) while no halving has run; growing the table keeps estimates.
        let mut rng = fastrand::Rng::with_seed(11);
        let mut s = Sketch::new(1000); // halves after 10,000 additions
        let mut truth = std::collections::HashMap::new();
        for _ in 0..5000 {
            let key = rng.u64(0..300).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            s.increment(key);
            *truth.entry(key).or_insert(0u64) += 1;
        }
        for (&key, &count) in &truth {
            assert!(
                s.frequency(key) >= count.min(15),
                "{key}: {} < {count}",
                s.frequency(key)
            );
        }
        let before: Vec<(u64, u64)> = truth.keys().map(|&k| (k, s.frequency(k))).collect();
        s.ensure_capacity(50_000);
        for (key, estimate) in before {
            assert!(s.frequency(key) >= estimate, "growth lost counts of {key}");
        }
    }

    #[test]
    fn sketch_counts_and_ages() {
        let mut s = Sketch::new(64);
        for _ in 0..10 {
            s.increment(42);
        }
        assert!(s.frequency(42) >= 10);
        assert!(s.frequency(43) <= 2);
        s.halve();
        assert!((4..=7).contains(&s.frequency(42)));
    }
}
