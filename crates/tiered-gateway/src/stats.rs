//! What the gateway counts: requests by cache outcome and status class,
//! latency histograms (hit, miss, origin), and the `/stats` JSON.
//!
//! Every request is recorded twice: in these in-process counters (read by
//! `/stats` and the dashboard, no recorder needed) and through the `metrics`
//! facade (exported at `/metrics` for Prometheus):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tiered_gateway_requests_total` | counter | `cache` = `hit` / `stale` / `miss` / `bypass` / `error`, `status` = `2xx` … `5xx` |
//! | `tiered_gateway_request_duration_seconds` | histogram | `cache` |
//! | `tiered_gateway_origin_duration_seconds` | histogram | — (time to the origin's response headers) |
//! | `tiered_gateway_origin_errors_total` | counter | `kind` = `connect` / `timeout` / `other` |
//! | `tiered_gateway_purges_total` | counter | `kind` = `url` / `key` / `tag` / `prefix` / `flush` |
//! | `tiered_gateway_in_flight_requests` | gauge | — |
//! | `tiered_gateway_redis_keys`, `tiered_gateway_redis_used_memory_bytes`, `tiered_gateway_redis_max_memory_bytes` | gauge | — (the whole Redis server, every master; set when `/stats` or `/metrics` is read, at most every 2 s) |
//!
//! The engine's own series (`tiered_cache_*`, `cache="http"`) come along: L1
//! and L2 hits, evictions, sizes, the breaker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How the cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh from the cache.
    Hit,
    /// Stale from the cache (while revalidating, or the origin failed).
    Stale,
    /// From the origin, for a cacheable request.
    Miss,
    /// Not cacheable: passed through.
    Bypass,
    /// The gateway answered with an error (origin down, bad request).
    Error,
}

impl Outcome {
    /// From the `X-Cache` header the cache layer sets.
    pub fn from_x_cache(value: Option<&http::HeaderValue>) -> Outcome {
        match value.map(http::HeaderValue::as_bytes) {
            Some(b"HIT") => Outcome::Hit,
            Some(b"STALE") => Outcome::Stale,
            Some(b"MISS") => Outcome::Miss,
            _ => Outcome::Bypass,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Error => "error",
        }
    }
}

/// Why the origin could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginError {
    /// No TCP connection.
    Connect,
    /// No response (or no next body chunk) in time.
    Timeout,
    /// Anything else (reset, protocol error).
    Other,
}

impl OriginError {
    fn label(self) -> &'static str {
        match self {
            OriginError::Connect => "connect",
            OriginError::Timeout => "timeout",
            OriginError::Other => "other",
        }
    }
}

/// A latency histogram with lock-free recording.
///
/// Recorded on every request from every worker thread, so it is a fixed
/// array of atomic buckets rather than a locked `hdrhistogram`: log-linear
/// buckets (8 per power of two, so a reported percentile is within 12.5% of
/// the true one) from 1 µs to about 1 hour.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max_us: AtomicU64,
}

const SUB: u32 = 8;
const POWERS: u32 = 32;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..(SUB * POWERS)).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < u64::from(SUB) {
            return us as usize;
        }
        let power = 63 - us.leading_zeros(); // >= 3
        let sub = (us >> (power - 3)) & u64::from(SUB - 1);
        (((power - 2) * SUB) as u64 + sub).min(u64::from(SUB * POWERS - 1)) as usize
    }

    /// The upper bound (µs) of bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        let sub_n = u64::from(SUB);
        if i < sub_n {
            return i + 1;
        }
        let power = i / sub_n + 2;
        let sub = i % sub_n;
        (sub_n + sub + 1) << (power - 3)
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Count, p50, p90, p99 and max in milliseconds.
    pub fn summary(&self) -> Percentiles {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max_us = self.max_us.load(Ordering::Relaxed);
        let at = |q: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::upper(i).min(max_us.max(1)) as f64 / 1000.0;
                }
            }
            max_us as f64 / 1000.0
        };
        Percentiles {
            count: total,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: max_us as f64 / 1000.0,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// The gateway's counters.
///
/// Build it after the metrics recorder is installed: the `metrics` handles are
/// registered once, here, so the request path does no registry lookups.
pub struct GatewayStats {
    started: Instant,
    outcomes: [AtomicU64; 5],
    statuses: [AtomicU64; 4],
    hit_latency: Histogram,
    miss_latency: Histogram,
    origin_latency: Histogram,
    origin_requests: AtomicU64,
    origin_errors: AtomicU64,
    origin_timeouts: AtomicU64,
    in_flight: AtomicU64,
    handles: Handles,
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Hit,
    Outcome::Stale,
    Outcome::Miss,
    Outcome::Bypass,
    Outcome::Error,
];
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

struct Handles {
    requests: Vec<[metrics::Counter; 4]>,
    durations: Vec<metrics::Histogram>,
    origin_duration: metrics::Histogram,
    in_flight: metrics::Gauge,
}

impl Handles {
    fn register() -> Self {
        Handles {
            requests: OUTCOMES
                .iter()
                .map(|o| {
                    CLASSES.map(|c| {
                        metrics::counter!("tiered_gateway_requests_total", "cache" => o.label(), "status" => c)
                    })
                })
                .collect(),
            durations: OUTCOMES
                .iter()
                .map(|o| {
                    metrics::histogram!("tiered_gateway_request_duration_seconds", "cache" => o.label())
                })
                .collect(),
            origin_duration: metrics::histogram!("tiered_gateway_origin_duration_seconds"),
            in_flight: metrics::gauge!("tiered_gateway_in_flight_requests"),
        }
    }
}

impl Default for GatewayStats {
    fn default() -> Self {
        GatewayStats {
            started: Instant::now(),
            outcomes: Default::default(),
            statuses: Default::default(),
            hit_latency: Histogram::default(),
            miss_latency: Histogram::default(),
            origin_latency: Histogram::default(),
            origin_requests: AtomicU64::new(0),
            origin_errors: AtomicU64::new(0),
            origin_timeouts: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            handles: Handles::register(),
        }
    }
}

impl GatewayStats {
    /// A request began.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.handles.in_flight.increment(1.0);
    }

    /// A request was answered.
    pub fn finish(&self, outcome: Outcome, status: u16, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.handles.in_flight.decrement(1.0);
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.statuses[class].fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Hit | Outcome::Stale => self.hit_latency.record(took),
            Outcome::Miss => self.miss_latency.record(took),
            Outcome::Bypass | Outcome::Error => {}
        }
        self.handles.requests[outcome as usize][class].increment(1);
        self.handles.durations[outcome as usize].record(took.as_secs_f64());
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The origin answered with headers after `took`.
    pub fn origin_ok(&self, took: Duration) {
        self.origin_requests.fetch_add(1, Ordering::Relaxed);
        self.origin_latency.record(took);
        self.handles.origin_duration.record(took.as_secs_f64());
    }

    /// The origin could not be used.
    pub fn origin_failed(&self, kind: OriginError) {
        self.origin_requests.fetch_add(1, Ordering::Relaxed);
        self.origin_errors.fetch_add(1, Ordering::Relaxed);
        if kind == OriginError::Timeout {
            self.origin_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!("tiered_gateway_origin_errors_total", "kind" => kind.label())
            .increment(1);
    }

    /// The gateway part of `/stats`.
    pub fn snapshot(&self) -> Snapshot {
        let o = |i: Outcome| self.outcomes[i as usize].load(Ordering::Relaxed);
        let s = |i: usize| self.statuses[i].load(Ordering::Relaxed);
        let (hit, stale, miss) = (o(Outcome::Hit), o(Outcome::Stale), o(Outcome::Miss));
        let (bypass, error) = (o(Outcome::Bypass), o(Outcome::Error));
        let cacheable = hit + stale + miss;
        Snapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            requests: Requests {
                total: hit + stale + miss + bypass + error,
                hit,
                stale,
                miss,
                bypass,
                error,
                hit_ratio: if cacheable == 0 {
                    0.0
                } else {
                    (hit + stale) as f64 / cacheable as f64
                },
            },
            status: Statuses {
                c2xx: s(0),
                c3xx: s(1),
                c4xx: s(2),
                c5xx: s(3),
            },
            latency_ms: Latency {
                hit: self.hit_latency.summary(),
                miss: self.miss_latency.summary(),
            },
            origin: Origin {
                requests: self.origin_requests.load(Ordering::Relaxed),
                errors: self.origin_errors.load(Ordering::Relaxed),
                timeouts: self.origin_timeouts.load(Ordering::Relaxed),
                latency_ms: self.origin_latency.summary(),
            },
        }
    }
}

/// Requests by outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    /// All requests answered.
    pub total: u64,
    /// Fresh hits.
    pub hit: u64,
    /// Stale hits.
    pub stale: u64,
    /// Cacheable requests sent to the origin.
    pub miss: u64,
    /// Not cacheable.
    pub bypass: u64,
    /// Answered with a gateway error.
    pub error: u64,
    /// `(hit + stale) / (hit + stale + miss)`.
    pub hit_ratio: f64,
}

/// Responses by status class.
#[derive(Debug, Clone, Serialize)]
pub struct Statuses {
    /// 2xx.
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

/// Client-seen latency of hits and misses.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Hits (fresh and stale).
    pub hit: Percentiles,
    /// Misses.
    pub miss: Percentiles,
}

/// The origin as the gateway saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    /// Requests sent (including revalidations).
    pub requests: u64,
    /// Connection failures, timeouts and resets.
    pub errors: u64,
    /// Of `errors`, the timeouts.
    pub timeouts: u64,
    /// Time to response headers.
    pub latency_ms: Percentiles,
}

/// The gateway's half of `/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Requests by outcome.
    pub requests: Requests,
    /// Responses by status class.
    pub status: Statuses,
    /// Hit and miss latency.
    pub latency_ms: Latency,
    /// The origin.
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_cover_their_values() {
        for us in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            12_345,
            1_000_000,
            3_600_000_000,
        ] {
            let i = Histogram::index(us);
            assert!(
                Histogram::upper(i) > us,
                "{us} in bucket {i} ≤ {}",
                Histogram::upper(i)
            );
            if i > 0 {
                assert!(Histogram::upper(i - 1) <= us.max(1), "{us}");
            }
            // Within 12.5% (plus one for the smallest buckets).
            assert!(
                Histogram::upper(i) as f64 <= us as f64 * 1.125 + 1.0,
                "{us}"
            );
        }
    }

    #[test]
    fn percentiles_are_close() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50 - 50.0).abs() / 50.0 < 0.13, "{s:?}");
        assert!((s.p99 - 99.0).abs() / 99.0 < 0.13, "{s:?}");
        assert!((s.max - 100.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn hit_ratio_counts_cacheable_requests_only() {
        let s = GatewayStats::default();
        for (o, status) in [
            (Outcome::Hit, 200),
            (Outcome::Hit, 200),
            (Outcome::Miss, 200),
            (Outcome::Bypass, 200),
            (Outcome::Error, 502),
        ] {
            s.begin();
            s.finish(o, status, Duration::from_millis(1));
        }
        let snap = s.snapshot();
        assert_eq!(snap.requests.total, 5);
        assert!((snap.requests.hit_ratio - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(snap.status.c5xx, 1);
    }
}
