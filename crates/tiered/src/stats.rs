//! Counters behind [`Cache::stats`](crate::Cache::stats).
//!
//! The same events also go out through the `metrics` facade (see
//! [`crate::metrics`]); these counters exist so a program can read its cache's
//! numbers without installing a metrics recorder, and so tests can assert them.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::backplane::subscriber::BackplaneStats;
pub use crate::l2::tier::L2Stats;
use crate::metrics::Handles;

const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter split over cache lines: concurrent increments from different threads
/// usually land on different lines instead of all contending on one.
#[derive(Default)]
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe_index() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = fastrand::usize(..STRIPES);
            s.set(i);
        }
        i
    })
}

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe_index()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn incr(&self) {
        self.add(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Records every cache event twice: in the counters behind `stats()` and through
/// the `metrics` facade.
pub(crate) struct Recorder {
    l1_hits: Counter,
    l1_misses: Counter,
    l1_evictions: Counter,
    stale_hits: Counter,
    negative_hits: Counter,
    filtered: Counter,
    loads: Counter,
    load_errors: Counter,
    coalesced: Counter,
    refreshes: Counter,
    fenced: Counter,
    metrics: Handles,
}

impl Recorder {
    pub(crate) fn new(namespace: &str) -> Self {
        Recorder {
            l1_hits: Counter::default(),
            l1_misses: Counter::default(),
            l1_evictions: Counter::default(),
            stale_hits: Counter::default(),
            negative_hits: Counter::default(),
            filtered: Counter::default(),
            loads: Counter::default(),
            load_errors: Counter::default(),
            coalesced: Counter::default(),
            refreshes: Counter::default(),
            fenced: Counter::default(),
            metrics: Handles::register(namespace),
        }
    }

    pub(crate) fn hit(&self, negative: bool) {
        self.l1_hits.incr();
        self.metrics.l1_hit.increment(1);
        if negative {
            self.negative_hits.incr();
            self.metrics.negative.increment(1);
        }
    }

    pub(crate) fn miss(&self) {
        self.l1_misses.incr();
        self.metrics.l1_miss.increment(1);
    }

    pub(crate) fn stale(&self) {
        self.stale_hits.incr();
        self.metrics.stale.increment(1);
    }

    pub(crate) fn filtered(&self) {
        self.filtered.incr();
        self.metrics.filtered.increment(1);
    }

    pub(crate) fn coalesced(&self) {
        self.coalesced.incr();
        self.metrics.coalesced.increment(1);
    }

    pub(crate) fn fenced(&self) {
        self.fenced.incr();
        self.metrics.fenced.increment(1);
    }

    pub(crate) fn evicted(&self, n: u64) {
        if n > 0 {
            self.l1_evictions.add(n);
            self.metrics.l1_evictions.increment(n);
        }
    }

    pub(crate) fn load_started(&self, refresh: bool) {
        self.loads.incr();
        if refresh {
            self.refreshes.incr();
            self.metrics.refresh.increment(1);
        }
    }

    pub(crate) fn load_finished(&self, took: Duration, ok: bool) {
        self.metrics.load_duration.record(took.as_secs_f64());
        if ok {
            self.metrics.load_ok.increment(1);
        } else {
            self.load_errors.incr();
            self.metrics.load_error.increment(1);
        }
    }

    pub(crate) fn snapshot(
        &self,
        l1_entries: u64,
        l1_bytes: u64,
        l2: Option<L2Stats>,
        backplane: Option<BackplaneStats>,
    ) -> Stats {
        self.metrics.l1_entries.set(l1_entries as f64);
        self.metrics.l1_bytes.set(l1_bytes as f64);
        Stats {
            l1: TierStats {
                hits: self.l1_hits.get(),
                misses: self.l1_misses.get(),
                evictions: self.l1_evictions.get(),
                entries: l1_entries,
                weighted_bytes: l1_bytes,
            },
            l2,
            backplane,
            write: None,
            stale_hits: self.stale_hits.get(),
            negative_hits: self.negative_hits.get(),
            filtered: self.filtered.get(),
            loads: self.loads.get(),
            load_errors: self.load_errors.get(),
            coalesced: self.coalesced.get(),
            refreshes: self.refreshes.get(),
            fenced: self.fenced.get(),
        }
    }
}

/// Counters of one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Lookups answered by this tier with a fresh entry.
    pub hits: u64,
    /// Lookups this tier could not answer with a fresh entry.
    pub misses: u64,
    /// Entries evicted to make room (expiry is not eviction).
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes charged to the budget now.
    pub weighted_bytes: u64,
}

impl TierStats {
    /// `hits / (hits + misses)`, or 0 with no lookups.
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }
}

/// A snapshot of a cache's counters since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The in-process tier.
    pub l1: TierStats,
    /// The distributed tier, if the cache has one.
    pub l2: Option<L2Stats>,
    /// The backplane, if the cache has one.
    pub backplane: Option<BackplaneStats>,
    /// The write paths, if a [`Writer`](crate::write::Writer) is attached.
    pub write: Option<crate::write::WriteStats>,
    /// Calls answered with a stale value (fail-safe or soft timeout).
    pub stale_hits: u64,
    /// Hits on a cached "absent" (negative caching); also counted in `l1.hits`.
    pub negative_hits: u64,
    /// Calls answered "absent" by the existence filter without loading.
    pub filtered: u64,
    /// Loader calls started (a batch loader call counts once).
    pub loads: u64,
    /// Loader calls that failed, panicked or timed out.
    pub load_errors: u64,
    /// Calls that waited on a load another call had started (single-flight).
    pub coalesced: u64,
    /// Background refreshes started (eager refresh, XFetch).
    pub refreshes: u64,
    /// Loaded values not stored because the key was invalidated during the load.
    pub fenced: u64,
}

impl Stats {
    /// Requests answered from the cache (L1, L2, or stale) over all requests.
    pub fn hit_ratio(&self) -> f64 {
        let l2_hits = self.l2.map_or(0, |l2| l2.hits);
        let served = self.l1.hits + l2_hits + self.stale_hits;
        ratio(served, self.l1.hits + self.l1.misses)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
