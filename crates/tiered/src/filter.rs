//! An existence filter: answer "absent" for keys that certainly do not exist,
//! without calling the loader.
//!
//! A Bloom filter never says "absent" for a key that was inserted (no false
//! negatives) and says "maybe present" for a key that was not with a probability
//! set at construction (false positives just fall through to the loader). The
//! caller fills it with the keys that exist — e.g. every primary key at start-up,
//! and each new one as it is created; the cache also adds every key it is told
//! about through `set`.
//!
//! Written by hand rather than taken from a crate because it is filled *while* it
//! is read from many tasks: bits live in atomics, so `insert` takes `&self` and
//! never blocks a lookup. Bloom filters cannot forget: a deleted row keeps its
//! bits, which only costs a loader call.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A concurrent Bloom filter over string keys.
///
/// ```
/// use tiered::BloomFilter;
///
/// let filter = BloomFilter::new(1_000, 0.01).unwrap();
/// filter.insert("user:1");
/// assert!(filter.might_contain("user:1"));
/// ```
#[derive(Debug)]
pub struct BloomFilter {
    bits: Box<[AtomicU64]>,
    nbits: u64,
    hashes: u32,
    state: foldhash::quality::FixedState,
}

impl BloomFilter {
    /// A filter sized for `expected_items` keys with false-positive rate `fp_rate`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `expected_items` is 0 or above 2³², or `fp_rate`
    /// is not in `(0, 1)`.
    pub fn new(expected_items: u64, fp_rate: f64) -> Result<Self> {
        if expected_items == 0 || expected_items > 1 << 32 {
            return Err(Error::InvalidConfig(format!(
                "bloom filter: expected_items must be in 1..=2^32, got {expected_items}"
            )));
        }
        if !(fp_rate > 0.0 && fp_rate < 1.0) {
            return Err(Error::InvalidConfig(format!(
                "bloom filter: fp_rate must be in (0, 1), got {fp_rate}"
            )));
        }
        // Optimal m = -n ln p / (ln 2)^2, k = m/n ln 2.
        let ln2 = std::f64::consts::LN_2;
        let n = expected_items as f64;
        let m = (-(n * fp_rate.ln()) / (ln2 * ln2)).ceil().max(64.0);
        let k = ((m / n) * ln2).round().clamp(1.0, 30.0) as u32;
        let words = (m as u64).div_ceil(64);
        Ok(BloomFilter {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            nbits: words * 64,
            hashes: k,
            state: foldhash::quality::FixedState::with_seed(0x7469_6572_6564),
        })
    }

    /// Double hashing (Kirsch–Mitzenmacher): bit i = h1 + i·h2.
    fn positions(&self, key: &str) -> impl Iterator<Item = u64> + '_ {
        let h = self.state.hash_one(key);
        let h1 = h;
        let h2 = h.rotate_left(32) | 1;
        (0..u64::from(self.hashes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.nbits)
    }

    /// Records that `key` exists.
    pub fn insert(&self, key: &str) {
        for bit in self.positions(key) {
            self.bits[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// False only if `key` was certainly never inserted.
    pub fn might_contain(&self, key: &str) -> bool {
        self.positions(key).all(|bit| {
            self.bits[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_bounded_false_positives() {
        let f = BloomFilter::new(10_000, 0.01).expect("valid");
        for i in 0..10_000 {
            f.insert(&format!("present:{i}"));
        }
        for i in 0..10_000 {
            assert!(f.might_contain(&format!("present:{i}")));
        }
        let fps = (0..10_000)
            .filter(|i| f.might_contain(&format!("absent:{i}")))
            .count();
        // 1% target; allow 3x for randomness of the hash over this key set.
        assert!(fps < 300, "false positives: {fps}");
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(BloomFilter::new(0, 0.01).is_err());
        assert!(BloomFilter::new(10, 0.0).is_err());
        assert!(BloomFilter::new(10, f64::NAN).is_err());
        assert!(BloomFilter::new(10, 1.0).is_err());
    }
}
