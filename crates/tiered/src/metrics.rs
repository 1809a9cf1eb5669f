//! Metric names, in one place.
//!
//! The cache reports through the [`metrics`](https://docs.rs/metrics) facade; the
//! library never installs a recorder or exporter — the application does (e.g.
//! `metrics-exporter-prometheus`). Every series carries a `cache` label with the
//! cache's namespace.
//!
//! Handles are registered when the cache is built, so **install the recorder
//! before building caches**; a cache built earlier reports to the recorder that was
//! installed at its build time (none: a no-op). This keeps the hit path free of
//! registry lookups.
//!
//! Outcomes overlap the way [`Stats`](crate::Stats) does: every request is one
//! `hit` or one `miss`; `negative` counts the hits that were a cached "absent",
//! `stale` and `filtered` count misses that were answered anyway.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tiered_cache_requests_total` | counter | `tier` = `l1`, `outcome` = `hit` / `miss` / `stale` / `negative` / `filtered`; `tier` = `l2`, `outcome` = `hit` / `miss` |
//! | `tiered_cache_loads_total` | counter | `outcome` = `ok` / `error` / `coalesced` / `refresh` / `fenced` |
//! | `tiered_cache_evictions_total` | counter | `tier` |
//! | `tiered_cache_load_duration_seconds` | histogram | — |
//! | `tiered_cache_entries` | gauge | `tier` (updated by `stats()`) |
//! | `tiered_cache_bytes` | gauge | `tier` (updated by `stats()`) |
//! | `tiered_cache_l2_errors_total` | counter | — (failed or timed-out L2 calls) |
//! | `tiered_cache_l2_bad_data_total` | counter | — (unreadable L2 values, deleted) |
//! | `tiered_cache_l2_breaker_state` | gauge | 0 closed, 1 half-open, 2 open (updated by `stats()`) |
//! | `tiered_cache_l2_pending` | gauge | writes/removals waiting for L2 (updated by `stats()`) |
//! | `tiered_write_operations_total` | counter | `path` = `through` / `behind`, `outcome` = `ok` / `error` / `full` |
//! | `tiered_write_queue_depth` | gauge | — (write-behind records not yet in the store) |
//! | `tiered_write_queue_bytes` | gauge | — (what they cost in this process's memory) |
//! | `tiered_write_oldest_age_seconds` | gauge | — (age of the oldest of them) |
//! | `tiered_write_flushed_total` | counter | — (records the flusher applied) |
//! | `tiered_write_retries_total` | counter | — (failed store calls retried) |
//! | `tiered_write_dead_letters_total` | counter | — (records moved to the dead-letter queue) |
//! | `tiered_write_flush_duration_seconds` | histogram | — (one store call of the flusher) |

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// Requests by tier and outcome.
pub const REQUESTS: &str = "tiered_cache_requests_total";
/// Loader calls by outcome.
pub const LOADS: &str = "tiered_cache_loads_total";
/// Evictions by tier.
pub const EVICTIONS: &str = "tiered_cache_evictions_total";
/// Loader latency in seconds.
pub const LOAD_DURATION: &str = "tiered_cache_load_duration_seconds";
/// Entries held, by tier.
pub const ENTRIES: &str = "tiered_cache_entries";
/// Bytes charged to the budget, by tier.
pub const BYTES: &str = "tiered_cache_bytes";

/// Failed or timed-out L2 calls.
pub const L2_ERRORS: &str = "tiered_cache_l2_errors_total";
/// Unreadable L2 values.
pub const L2_BAD_DATA: &str = "tiered_cache_l2_bad_data_total";
/// The L2 circuit breaker's state.
pub const L2_BREAKER: &str = "tiered_cache_l2_breaker_state";
/// Writes and removals waiting for L2.
pub const L2_PENDING: &str = "tiered_cache_l2_pending";

/// Registered handles for one cache's L2 tier.
pub(crate) struct L2Handles {
    pub hit: Counter,
    pub miss: Counter,
    pub errors: Counter,
    pub bad_data: Counter,
    pub breaker: Gauge,
    pub pending: Gauge,
}

impl L2Handles {
    pub(crate) fn register(namespace: &str) -> Self {
        let ns = namespace.to_owned();
        L2Handles {
            hit: counter!(REQUESTS, "cache" => ns.clone(), "tier" => "l2", "outcome" => "hit"),
            miss: counter!(REQUESTS, "cache" => ns.clone(), "tier" => "l2", "outcome" => "miss"),
            errors: counter!(L2_ERRORS, "cache" => ns.clone()),
            bad_data: counter!(L2_BAD_DATA, "cache" => ns.clone()),
            breaker: gauge!(L2_BREAKER, "cache" => ns.clone()),
            pending: gauge!(L2_PENDING, "cache" => ns),
        }
    }
}

/// Registered handles for one cache.
pub(crate) struct Handles {
    pub l1_hit: Counter,
    pub l1_miss: Counter,
    pub stale: Counter,
    pub negative: Counter,
    pub filtered: Counter,
    pub load_ok: Counter,
    pub load_error: Counter,
    pub coalesced: Counter,
    pub refresh: Counter,
    pub fenced: Counter,
    pub l1_evictions: Counter,
    pub load_duration: Histogram,
    pub l1_entries: Gauge,
    pub l1_bytes: Gauge,
}

impl Handles {
    pub(crate) fn register(namespace: &str) -> Self {
        let ns = namespace.to_owned();
        let req = |outcome: &'static str| counter!(REQUESTS, "cache" => ns.clone(), "tier" => "l1", "outcome" => outcome);
        let load =
            |outcome: &'static str| counter!(LOADS, "cache" => ns.clone(), "outcome" => outcome);
        Handles {
            l1_hit: req("hit"),
            l1_miss: req("miss"),
            stale: req("stale"),
            negative: req("negative"),
            filtered: req("filtered"),
            load_ok: load("ok"),
            load_error: load("error"),
            coalesced: load("coalesced"),
            refresh: load("refresh"),
            fenced: load("fenced"),
            l1_evictions: counter!(EVICTIONS, "cache" => ns.clone(), "tier" => "l1"),
            load_duration: histogram!(LOAD_DURATION, "cache" => ns.clone()),
            l1_entries: gauge!(ENTRIES, "cache" => ns.clone(), "tier" => "l1"),
            l1_bytes: gauge!(BYTES, "cache" => ns, "tier" => "l1"),
        }
    }
}

/// Write-behind records acknowledged and not yet in the store.
pub const WRITE_QUEUE_DEPTH: &str = "tiered_write_queue_depth";
/// What those records cost in this process's memory.
pub const WRITE_QUEUE_BYTES: &str = "tiered_write_queue_bytes";
/// Age of the oldest record not yet in the store.
pub const WRITE_OLDEST_AGE: &str = "tiered_write_oldest_age_seconds";
/// Write operations by path and outcome.
pub const WRITES: &str = "tiered_write_operations_total";
/// Records the flusher applied to the store.
pub const WRITE_FLUSHED: &str = "tiered_write_flushed_total";
/// Store calls the flusher retried.
pub const WRITE_RETRIES: &str = "tiered_write_retries_total";
/// Records moved to the dead-letter queue.
pub const WRITE_DEAD_LETTERS: &str = "tiered_write_dead_letters_total";
/// Latency of the flusher's store calls, in seconds.
pub const WRITE_FLUSH_DURATION: &str = "tiered_write_flush_duration_seconds";

/// Registered handles for one cache's write paths.
pub(crate) struct WriteHandles {
    pub through_ok: Counter,
    pub through_error: Counter,
    pub behind_ok: Counter,
    pub behind_full: Counter,
    pub depth: Gauge,
    pub queue_bytes: Gauge,
    pub oldest_age: Gauge,
    pub flushed: Counter,
    pub retries: Counter,
    pub dead_letters: Counter,
    pub flush_duration: Histogram,
}

impl WriteHandles {
    pub(crate) fn register(namespace: &str) -> Self {
        let ns = namespace.to_owned();
        let op = |path: &'static str, outcome: &'static str| counter!(WRITES, "cache" => ns.clone(), "path" => path, "outcome" => outcome);
        WriteHandles {
            through_ok: op("through", "ok"),
            through_error: op("through", "error"),
            behind_ok: op("behind", "ok"),
            behind_full: op("behind", "full"),
            depth: gauge!(WRITE_QUEUE_DEPTH, "cache" => ns.clone()),
            queue_bytes: gauge!(WRITE_QUEUE_BYTES, "cache" => ns.clone()),
            oldest_age: gauge!(WRITE_OLDEST_AGE, "cache" => ns.clone()),
            flushed: counter!(WRITE_FLUSHED, "cache" => ns.clone()),
            retries: counter!(WRITE_RETRIES, "cache" => ns.clone()),
            dead_letters: counter!(WRITE_DEAD_LETTERS, "cache" => ns.clone()),
            flush_duration: histogram!(WRITE_FLUSH_DURATION, "cache" => ns),
        }
    }
}
