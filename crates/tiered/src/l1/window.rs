//! Sizing the W-TinyLFU window by miniature simulation.
//!
//! The window's best size depends on the workload: a loop or a stable hot set
//! wants it tiny (frequency decides), a recency-skewed workload wants it large.
//! Caffeine moves it by hill climbing — compare this sample's hit rate with the
//! previous one's, step in the direction that helped. That comparison is made
//! between *different* stretches of the workload, so whenever the workload's own
//! hit rate swings more than a window step could change it (on the P3 disk trace
//! it swings between 13% and 78% from one sample to the next) the climber
//! follows noise.
//!
//! Instead, a few *miniature simulations* (Waldspurger et al., "Cache Modeling
//! and Optimization using Miniature Simulations", USENIX ATC 2017) run the same
//! policy with fixed window shares on a spatially sampled subset of keys: a key
//! is simulated if its hash falls in a 1-in-R slice, and each simulated cache is
//! 1/R the size of the real one. Every simulation sees exactly the same requests,
//! so their hit counts are compared on equal terms whatever the workload does.
//! After each epoch the real window takes the share of the best simulation
//! (scores decay by half per epoch, so the choice follows workload changes).
//!
//! Costs: the simulations hold about [`SIM_ENTRIES`] entries each and see 1/R of
//! the requests, with R chosen from the real entry count; small caches (R = 1)
//! simulate every request, large ones almost none. A cache small enough to
//! simulate whole starts its simulations with its first request, so they warm up
//! with it; a larger one starts them once it is first full, when its entry count
//! (and so R) is known. The first epoch after a start is warm-up and decides
//! nothing: cold simulations favour large windows.

use std::collections::HashMap;

use super::policy::{Policy, Token};

/// The window shares tried (0 means the minimum: the newest entry alone).
const SHARES: [f64; 6] = [0.0, 0.01, 0.05, 0.2, 0.5, 0.8];
/// About how many entries each simulated cache holds. The simulations run on
/// the hit path (when the read buffer is replayed), so this is a cost/accuracy
/// trade: at 1,000 a full 100k-entry cache spent ~460 ns per read simulating;
/// at 250 it spends ~80 ns, with hit ratios on the shipped traces within noise
/// of the 1,000 figures.
pub(super) const SIM_ENTRIES: u64 = 250;
/// Epoch length in sampled requests, per simulated entry (and at least
/// `MIN_EPOCH`): enough requests for the caches to turn over several times.
const EPOCH_PER_ENTRY: u64 = 5;
const MIN_EPOCH: u64 = 1000;
/// The relative gain in simulated hits needed to change the window share.
const SWITCH_GAIN: f64 = 0.01;

struct Sim {
    policy: Policy,
    resident: HashMap<u64, Token>,
    hits: u64,
    score: f64,
}

impl Sim {
    fn access(&mut self, hash: u64, weight: u64) {
        if let Some(&t) = self.resident.get(&hash) {
            self.policy.on_hit(t);
            self.hits += 1;
            return;
        }
        if weight > self.policy.capacity() {
            return;
        }
        let t = self.policy.insert(hash, weight);
        self.resident.insert(hash, t);
        while let Some(victim) = self.policy.evict() {
            if let Some(h) = self.policy.hash_of(victim) {
                self.resident.remove(&h);
            }
            self.policy.remove(victim);
        }
    }
}

pub(super) struct WindowSizer {
    capacity: u64,
    sims: Vec<Sim>,
    rate: u64,
    epoch: u64,
    seen: u64,
    /// Epochs completed since the simulations started.
    epochs: u64,
    /// The share in use (an index into `SHARES`).
    current: usize,
}

impl WindowSizer {
    pub(super) fn new(capacity: u64) -> Self {
        WindowSizer {
            capacity,
            sims: Vec::new(),
            rate: 1,
            epoch: MIN_EPOCH,
            seen: 0,
            epochs: 0,
            current: 1, // the policy starts at 1%
        }
    }

    /// Feeds one request of the real cache (`live` entries weighing `total`).
    /// At the end of an epoch, returns the window share to use.
    pub(super) fn access(
        &mut self,
        hash: u64,
        weight: u64,
        live: usize,
        total: u64,
    ) -> Option<f64> {
        if self.sims.is_empty() {
            if self.capacity <= SIM_ENTRIES {
                self.start(self.capacity); // simulated whole: start now
            } else if total >= self.capacity / 10 * 9 {
                self.start(live as u64); // first full: the entry count is known
            } else {
                return None;
            }
        }
        // A slice of the hash space independent of the bits shards and
        // sketches use.
        if !(hash.rotate_left(23).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
            .is_multiple_of(self.rate)
        {
            return None;
        }
        for sim in &mut self.sims {
            sim.access(hash, weight);
        }
        self.seen += 1;
        if self.seen < self.epoch {
            return None;
        }
        self.seen = 0;
        for sim in &mut self.sims {
            sim.score = sim.score / 2.0 + sim.hits as f64;
            sim.hits = 0;
        }
        self.epochs += 1;
        if self.epochs < 2 {
            return None; // warm-up
        }
        let scores: Vec<f64> = self.sims.iter().map(|s| s.score).collect();
        self.current = choose(&scores, self.current);
        Some(SHARES[self.current])
    }

    fn start(&mut self, live: u64) {
        self.rate = (live / SIM_ENTRIES).max(1);
        let mini = (self.capacity / self.rate).max(1);
        let entries = (live / self.rate).max(1);
        self.epoch = (EPOCH_PER_ENTRY * entries).max(MIN_EPOCH);
        self.sims = SHARES
            .iter()
            .map(|&share| Sim {
                // Sized by the entries it will hold, not its weight capacity.
                policy: Policy::fixed_for(mini, share, entries),
                resident: HashMap::new(),
                hits: 0,
                score: 0.0,
            })
            .collect();
    }
}

/// The share to use next, given each simulation's score and the share in
/// use. The best score wins; a tie goes to the smaller window (listed first).
/// Switching moves real entries between window and main and costs hits, so
/// the share only changes for a clear gain (more than [`SWITCH_GAIN`]).
fn choose(scores: &[f64], current: usize) -> usize {
    let mut best = 0;
    for i in 1..scores.len() {
        if scores[i] > scores[best] {
            best = i;
        }
    }
    if scores[best] > scores[current] * (1.0 + SWITCH_GAIN) {
        best
    } else {
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_changes_only_for_a_clear_gain_and_ties_go_to_the_smaller_window() {
        // Within the hysteresis: the share in use stays.
        assert_eq!(choose(&[100.0, 100.5, 90.0], 0), 0);
        assert_eq!(choose(&[100.0, 100.0, 100.9], 1), 1);
        // A clear gain moves it, to the best.
        assert_eq!(choose(&[100.0, 102.0, 103.0], 0), 2);
        // Equal best scores: the smaller window.
        assert_eq!(choose(&[90.0, 120.0, 120.0, 80.0], 3), 1);
    }

    #[test]
    fn a_small_cache_simulates_at_once_and_its_first_epoch_decides_nothing() {
        let mut sizer = WindowSizer::new(100);
        assert_eq!(sizer.access(1, 1, 0, 0), None);
        assert_eq!(
            sizer.sims.len(),
            SHARES.len(),
            "started on the first request"
        );
        assert_eq!(sizer.rate, 1, "a cache this small is simulated whole");
        // Every request is sampled: the first epoch ends after MIN_EPOCH of
        // them and is warm-up; the second decides.
        let mut decided = Vec::new();
        for i in 2..=2 * MIN_EPOCH {
            if let Some(share) = sizer.access(i % 300, 1, 100, 100) {
                decided.push((i, share));
            }
        }
        assert_eq!(decided.len(), 1, "{decided:?}");
        assert_eq!(decided[0].0, 2 * MIN_EPOCH);
        assert!(SHARES.contains(&decided[0].1));
    }

    #[test]
    fn a_large_cache_starts_simulating_when_nine_tenths_full_and_samples() {
        let mut sizer = WindowSizer::new(100_000);
        for i in 0..1_000 {
            assert_eq!(sizer.access(i, 1, 50_000, 50_000), None);
        }
        assert!(sizer.sims.is_empty(), "not before the cache is nearly full");
        sizer.access(1, 1, 90_000, 90_000);
        assert_eq!(sizer.sims.len(), SHARES.len());
        assert_eq!(sizer.rate, 90_000 / SIM_ENTRIES);
        // About 1 in `rate` of the keys is simulated.
        let before = sizer.seen;
        let n = 360_000u64;
        for i in 0..n {
            let hash = i.wrapping_mul(0x2545_F491_4F6C_DD1D);
            sizer.access(hash, 1, 90_000, 90_000);
        }
        let sampled = sizer.seen - before + sizer.epochs * sizer.epoch;
        let expected = n / sizer.rate;
        assert!(
            sampled > expected / 2 && sampled < expected * 2,
            "{sampled} sampled, about {expected} expected"
        );
    }
}
