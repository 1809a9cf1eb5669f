//! Counters of the write paths, read through [`Cache::stats`](crate::Cache::stats)
//! (`Stats::write`) or [`Writer::stats`](super::Writer::stats).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::metrics::WriteHandles;

/// A snapshot of the write paths' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Write-behind records acknowledged and neither in the store nor
    /// dead-lettered yet.
    pub queue_depth: u64,
    /// What they cost in this process's memory (the write-ahead log keeps
    /// them in memory; a Redis Stream does not: 0).
    pub queue_bytes: u64,
    /// How long the oldest of them has waited (zero when the queue is empty).
    pub oldest_age: Duration,
    /// Write-behind calls acknowledged.
    pub acknowledged: u64,
    /// Write-behind calls refused because the queue was full.
    pub refused_full: u64,
    /// Write-through calls that succeeded.
    pub through_ok: u64,
    /// Write-through calls whose store write failed (nothing was changed).
    pub through_errors: u64,
    /// Records the flusher applied to the store.
    pub flushed: u64,
    /// Records dropped in favour of a newer write to the same key.
    pub coalesced: u64,
    /// Store calls made by the flusher.
    pub batches: u64,
    /// Failed store calls the flusher retried.
    pub retries: u64,
    /// Records moved to the dead-letter queue since start.
    pub dead_lettered: u64,
    /// Records in the dead-letter queue now (as far as this instance knows).
    pub dead_letters: u64,
    /// Records replayed from the queue at start (acknowledged before a
    /// restart, not yet confirmed).
    pub recovered: u64,
    /// Write-ahead-log frames found corrupt at start and skipped.
    pub corrupt: u64,
    /// Median latency of the flusher's recent store calls.
    pub flush_p50: Duration,
    /// 99th percentile of the same.
    pub flush_p99: Duration,
}

/// How many recent flush latencies the percentiles are computed over.
const LATENCY_WINDOW: usize = 1024;

pub(crate) struct Counters {
    /// Wall-clock ms of the oldest record the flusher holds (0: none).
    pub oldest_at_ms: AtomicU64,
    pub acknowledged: AtomicU64,
    pub refused_full: AtomicU64,
    pub through_ok: AtomicU64,
    pub through_errors: AtomicU64,
    pub flushed: AtomicU64,
    pub coalesced: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dead_letters: AtomicU64,
    pub recovered: AtomicU64,
    pub corrupt: AtomicU64,
    latencies: Mutex<(Vec<Duration>, usize)>,
    pub metrics: WriteHandles,
}

impl Counters {
    pub fn new(namespace: &str) -> Self {
        Counters {
            oldest_at_ms: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            through_ok: AtomicU64::new(0),
            through_errors: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            latencies: Mutex::new((Vec::with_capacity(LATENCY_WINDOW), 0)),
            metrics: WriteHandles::register(namespace),
        }
    }

    pub fn flush_took(&self, took: Duration) {
        self.metrics.flush_duration.record(took.as_secs_f64());
        let mut window = self.latencies.lock();
        let (samples, next) = &mut *window;
        if samples.len() < LATENCY_WINDOW {
            samples.push(took);
        } else {
            samples[*next] = took;
        }
        *next = (*next + 1) % LATENCY_WINDOW;
    }

    /// The counters, with the queue's current `depth` and `bytes`.
    pub fn snapshot(&self, depth: u64, bytes: u64) -> WriteStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let oldest = get(&self.oldest_at_ms);
        let oldest_age = if depth == 0 || oldest == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(now_ms().saturating_sub(oldest))
        };
        self.metrics.depth.set(depth as f64);
        self.metrics.queue_bytes.set(bytes as f64);
        self.metrics.oldest_age.set(oldest_age.as_secs_f64());
        let (flush_p50, flush_p99) = {
            let mut samples = self.latencies.lock().0.clone();
            samples.sort_unstable();
            let at = |q: f64| {
                samples
                    .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                    .copied()
                    .unwrap_or_default()
            };
            (at(0.5), at(0.99))
        };
        WriteStats {
            queue_depth: depth,
            queue_bytes: bytes,
            oldest_age,
            acknowledged: get(&self.acknowledged),
            refused_full: get(&self.refused_full),
            through_ok: get(&self.through_ok),
            through_errors: get(&self.through_errors),
            flushed: get(&self.flushed),
            coalesced: get(&self.coalesced),
            batches: get(&self.batches),
            retries: get(&self.retries),
            dead_lettered: get(&self.dead_lettered),
            dead_letters: get(&self.dead_letters),
            recovered: get(&self.recovered),
            corrupt: get(&self.corrupt),
            flush_p50,
            flush_p99,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
