//! The hottest keys, by request count, in bounded memory.
//!
//! Space-Saving (Metwally et al., 2005) keeps `k` counters. A tracked key's counter
//! is incremented; an untracked key takes over the smallest counter and inherits
//! its count (+1), remembering that inheritance as its possible overcount. Any key
//! requested more than `N / k` times out of `N` is guaranteed to be tracked, and a
//! reported count overestimates the truth by at most the inherited error.
//!
//! To keep the hit path cheap the sketch is fed a *sample*: every
//! `sample_every`-th request per thread, and only when the sketch's lock is free
//! (a request that finds it busy is not counted). Counts are scaled back up by the
//! sampling rate, so they are estimates; the ranking of truly hot keys is what it
//! is for.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// One row of [`Cache::top_keys`](crate::Cache::top_keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    /// The key.
    pub key: String,
    /// Estimated requests (scaled by the sampling rate).
    pub count: u64,
    /// How much of `count` may be overcount (Space-Saving's error bound).
    pub error: u64,
}

struct Counter {
    key: Arc<str>,
    count: u64,
    error: u64,
}

#[derive(Default)]
struct Sketch {
    index: HashMap<Arc<str>, usize>,
    counters: Vec<Counter>,
}

pub(crate) struct TopKeys {
    capacity: usize,
    sample_every: u32,
    sketch: Mutex<Sketch>,
}

thread_local! {
    static TICK: Cell<u32> = const { Cell::new(0) };
}

impl TopKeys {
    /// `capacity` counters (0 disables tracking), fed one request in `sample_every`.
    pub(crate) fn new(capacity: usize, sample_every: u32) -> Self {
        TopKeys {
            capacity,
            sample_every: sample_every.max(1),
            sketch: Mutex::new(Sketch::default()),
        }
    }

    pub(crate) fn record(&self, key: &str) {
        if self.capacity == 0 {
            return;
        }
        if self.sample_every > 1 {
            let take = TICK.with(|t| {
                let n = t.get().wrapping_add(1);
                t.set(n);
                n % self.sample_every == 0
            });
            if !take {
                return;
            }
        }
        let Some(mut sketch) = self.sketch.try_lock() else {
            return;
        };
        sketch.offer(key, self.capacity);
    }

    /// The tracked keys, hottest first.
    pub(crate) fn top(&self, n: usize) -> Vec<HotKey> {
        let scale = u64::from(self.sample_every);
        let sketch = self.sketch.lock();
        let mut rows: Vec<HotKey> = sketch
            .counters
            .iter()
            .map(|c| HotKey {
                key: c.key.to_string(),
                count: c.count * scale,
                error: c.error * scale,
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        rows.truncate(n);
        rows
    }
}

impl Sketch {
    fn offer(&mut self, key: &str, capacity: usize) {
        if let Some(&i) = self.index.get(key) {
            self.counters[i].count += 1;
            return;
        }
        let key: Arc<str> = Arc::from(key);
        if self.counters.len() < capacity {
            self.index.insert(Arc::clone(&key), self.counters.len());
            self.counters.push(Counter {
                key,
                count: 1,
                error: 0,
            });
            return;
        }
        // Take over the smallest counter. O(k), fine for the small k this is for
        // and only on a sampled request for an untracked key.
        let Some((i, min)) = self
            .counters
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.count)
            .map(|(i, c)| (i, c.count))
        else {
            return;
        };
        let old = std::mem::replace(
            &mut self.counters[i],
            Counter {
                key: Arc::clone(&key),
                count: min + 1,
                error: min,
            },
        );
        self.index.remove(&old.key);
        self.index.insert(key, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_survive_a_long_tail() {
        let top = TopKeys::new(8, 1);
        for i in 0..2000 {
            top.record("hot");
            if i % 2 == 0 {
                top.record("warm");
            }
            top.record(&format!("cold-{i}"));
        }
        let rows = top.top(2);
        assert_eq!(rows[0].key, "hot");
        assert!(rows[0].count >= 2000 && rows[0].count - rows[0].error <= 2000);
        assert_eq!(rows[1].key, "warm");
        assert!(rows[1].count >= 1000);
    }

    #[test]
    fn disabled_tracks_nothing() {
        let top = TopKeys::new(0, 1);
        top.record("a");
        assert!(top.top(10).is_empty());
    }
}
