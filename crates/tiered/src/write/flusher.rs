//! The flusher: drains the write-behind queue into the store.
//!
//! One task per [`Writer`](super::Writer). It holds the records it has taken
//! from the queue **one per key**: a newer write to a key replaces the one
//! held (*coalescing*; the older record is confirmed with it), so the store
//! sees each key's latest value once, and a key's writes can never reach the
//! store out of order — there is only ever one in the flusher's hands.
//!
//! # When a batch goes
//!
//! A key's writes are held for [`flush_interval`](super::WriterBuilder::flush_interval)
//! from when its first record was taken from the queue, and every later
//! write to it in that window replaces the one held. When the oldest held
//! key's window is over, a batch goes: the oldest held keys, at most
//! [`batch_size`](super::WriterBuilder::batch_size) per store call (keys
//! that fit in the call go with it even if their own window is not over).
//! So a key written a thousand times in a window costs the store one row,
//! which is what lets write-behind absorb a burst on hot keys (as
//! Hazelcast's `write-delay-seconds` does).
//!
//! Batches go at once, without waiting out any window, when the flusher
//! holds its fill of keys (four batches' worth: many distinct keys), when a
//! write is waiting for room in a full queue (so back-pressure never waits
//! on a window), and when draining ([`Writer::flush`](super::Writer::flush),
//! shutdown).
//!
//! The trade: the store lags the cache by up to `flush_interval` even under
//! load (plus any time a record spent queued behind others). An earlier
//! version sent a batch as soon as `batch_size` keys were held; on a burst
//! over a thousand hot keys that wrote each key's every few writes to
//! PostgreSQL, and on a machine the database shares, its CPU came out of
//! the acknowledgements (BENCHMARKS.md, write paths). Keep `flush_interval`
//! well below the stream queue's
//! [`claim_idle`](super::StreamOptions::claim_idle): a record held longer is
//! claimed by another instance too (harmless, the store's version guard
//! keeps the newest, but the coalescing is lost).
//!
//! Failures, by [`StoreErrorKind`]:
//!
//! * **Unavailable** — the whole store is out. Every held record waits an
//!   exponentially growing delay (with jitter, capped), and the batch is tried
//!   again; records are never dead-lettered for this, however long it lasts.
//!   The queue grows meanwhile, up to its bound (back-pressure, see
//!   [`Writer::set_behind`](super::Writer::set_behind)).
//! * **Rejected** — something in the batch is refused. The batch is retried
//!   one write at a time, so the good ones land at once; a refused record
//!   backs off on its own and, after
//!   [`max_attempts`](super::WriterBuilder::max_attempts), moves to the
//!   dead-letter queue. Other keys are never held up by it.
//!
//! After a record lands, what depends on its key and the tags it names are
//! invalidated (see [`crate::write`]).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::queue::{Queue, Queued};
use super::record::Record;
use super::stats::Counters;
use super::store::{Store, StoreError, StoreErrorKind, StoreWrite};
use crate::cache::Cache;
use crate::Value;

/// The shortest time between two looks at the held records while nothing is
/// due (bounds the flusher's CPU when writes arrive faster than this).
const SCAN_SPACING: Duration = Duration::from_millis(1);

/// How far "never" is for a timer (tokio's `Instant` cannot add
/// `Duration::MAX`).
const FAR: Duration = Duration::from_secs(86_400 * 365);

/// The most `take`s from the queue per look at the held records.
const TAKES_PER_LOOK: usize = 16;

/// The flusher's settings.
#[derive(Debug, Clone)]
pub(crate) struct FlushConfig {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub store_timeout: Duration,
}

/// Shared between the flusher and the [`Writer`](super::Writer).
#[derive(Default)]
pub(crate) struct Control {
    /// Something was appended (or revived): look at the queue now.
    pub wake: Notify,
    /// The queue shrank: waiting appends may go.
    pub space: Notify,
    /// Flush everything due now, without waiting out any window.
    pub draining: AtomicBool,
    /// Stop after the current batch.
    pub stop: AtomicBool,
    /// Writes waiting for room in a full queue: while there are any, what
    /// is held goes at once instead of waiting out its window (see
    /// [`Pressed`]).
    pub pressed: AtomicUsize,
}

/// Counts a write waiting for room in [`Control::pressed`] while it lives
/// (a cancelled wait is uncounted too).
pub(crate) struct Pressed<'a>(&'a Control);

impl<'a> Pressed<'a> {
    pub fn new(control: &'a Control) -> Self {
        control.pressed.fetch_add(1, Ordering::SeqCst);
        control.wake.notify_one();
        Pressed(control)
    }
}

impl Drop for Pressed<'_> {
    fn drop(&mut self) {
        self.0.pressed.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Held {
    /// The record and every older record of its key it superseded.
    ids: Vec<u64>,
    record: Record,
    attempts: u32,
    next_try: Instant,
    taken_at: Instant,
}

pub(crate) struct Flusher<V> {
    pub cache: Cache<V>,
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store<V>>,
    pub counters: Arc<Counters>,
    pub control: Arc<Control>,
    pub config: FlushConfig,
}

impl<V: Value> Flusher<V> {
    pub async fn run(self) {
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut outage = 0u32;
        // While the store is out, nothing is sent before this (new writes
        // must not bypass the backoff).
        let mut outage_until = Instant::now();
        let cap = self.config.batch_size.saturating_mul(4).max(1);
        loop {
            if self.control.stop.load(Ordering::SeqCst) {
                return;
            }
            // Take what the queue has, up to the fill of keys: a record
            // left in the queue would miss its key's batch (and the
            // coalescing). Taken records of held keys add no key, so this
            // goes on while the queue answers in full — a bounded number
            // of times, so a queue refilled as fast as it is read cannot
            // keep the batches from going.
            let mut read_failed = false;
            for _ in 0..TAKES_PER_LOOK {
                if held.len() >= cap {
                    break;
                }
                let want = cap - held.len();
                match self.queue.take(want).await {
                    Ok(taken) => {
                        let all = taken.len() >= want;
                        self.hold(&mut held, taken);
                        if !all {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "write-behind: cannot read the queue");
                        read_failed = true;
                        break;
                    }
                }
            }
            // What is already held can still go to the store; with nothing
            // held after a failed read, wait before reading again.
            if read_failed && held.is_empty() {
                self.pause(backoff(&self.config, 1)).await;
                continue;
            }
            self.counters.oldest_at_ms.store(
                held.values().map(|h| h.record.at_ms).min().unwrap_or(0),
                Ordering::Relaxed,
            );
            let now = Instant::now();
            if now < outage_until {
                tokio::select! {
                    () = self.control.wake.notified() => {}
                    () = tokio::time::sleep_until(outage_until) => {}
                }
                continue;
            }
            let mut due: Vec<(&String, &Held)> =
                held.iter().filter(|(_, h)| h.next_try <= now).collect();
            let draining = self.control.draining.load(Ordering::SeqCst);
            let waited_out = due
                .iter()
                .any(|(_, h)| now.duration_since(h.taken_at) >= self.config.flush_interval);
            let full = held.len() >= cap || self.control.pressed.load(Ordering::SeqCst) > 0;
            if due.is_empty() || !(draining || waited_out || full) {
                // Sleep until a batch could be due: the earliest retry, the
                // oldest record's window end (a full flusher waits for no
                // window), or a wake-up. A window too long to add up is
                // "when full" only.
                let window = self.config.flush_interval;
                let far = now.checked_add(window).unwrap_or(now + FAR);
                let next = held
                    .values()
                    .map(|h| match h.taken_at.checked_add(window) {
                        _ if full => h.next_try,
                        Some(end) => h.next_try.max(end),
                        None => far,
                    })
                    .min()
                    .unwrap_or(far);
                tokio::select! {
                    () = self.control.wake.notified() => {
                        // Every acknowledged write wakes the flusher, but one
                        // look at what is held (a pass over all of it) per
                        // SCAN_SPACING is enough: under load the writes of
                        // that span are taken together.
                        if !draining {
                            tokio::time::sleep(SCAN_SPACING).await;
                        }
                    }
                    () = tokio::time::sleep_until(next.max(now + SCAN_SPACING)) => {}
                }
                continue;
            }
            // Oldest first, so a steady stream of new keys cannot starve one.
            due.sort_by_key(|(_, h)| h.ids.first().copied());
            let keys: Vec<String> = due
                .into_iter()
                .take(self.config.batch_size)
                .map(|(k, _)| k.clone())
                .collect();
            match self.flush(&mut held, &keys).await {
                Ok(()) => outage = 0,
                Err(e) => {
                    outage += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    self.counters.metrics.retries.increment(1);
                    if outage == 1 || outage.is_multiple_of(20) {
                        tracing::warn!(error = %e, attempt = outage, "write-behind: store unavailable; retrying with backoff");
                    }
                    outage_until = Instant::now() + backoff(&self.config, outage);
                }
            }
        }
    }

    fn hold(&self, held: &mut HashMap<String, Held>, taken: Vec<Queued>) {
        let now = Instant::now();
        for Queued { id, record } in taken {
            match held.get_mut(&record.key) {
                Some(h) => {
                    self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    h.ids.push(id);
                    // Whichever record wins, the tags every one of them
                    // names are invalidated when it lands.
                    let mut tags = std::mem::take(&mut h.record.invalidate);
                    tags.extend(record.invalidate.iter().cloned());
                    tags.sort_unstable();
                    tags.dedup();
                    // Versions, not arrival, decide (several instances may
                    // feed one shared queue).
                    if record.version >= h.record.version {
                        h.record = record;
                        // A fresh write gets fresh chances.
                        h.attempts = 0;
                        h.next_try = h.next_try.min(now);
                    }
                    h.record.invalidate = tags;
                }
                None => {
                    held.insert(
                        record.key.clone(),
                        Held {
                            ids: vec![id],
                            record,
                            attempts: 0,
                            next_try: now,
                            taken_at: now,
                        },
                    );
                }
            }
        }
    }

    /// Sends `keys` to the store. `Err` only when the store is unavailable.
    async fn flush(
        &self,
        held: &mut HashMap<String, Held>,
        keys: &[String],
    ) -> Result<(), StoreError> {
        let mut writes = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(h) = held.get(key) else { continue };
            match decode::<V>(&h.record) {
                Ok(write) => writes.push(write),
                // Nothing will ever read it: straight to the dead letters.
                Err(reason) => {
                    self.bury(held, key, format!("cannot decode the value: {reason}"))
                        .await
                }
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        match self.apply(&writes).await {
            Ok(()) => {
                self.land(held, &writes).await;
                Ok(())
            }
            Err(e) if e.kind() == StoreErrorKind::Rejected && writes.len() > 1 => {
                // Find the culprit(s): one write at a time.
                for write in writes {
                    match self.apply(std::slice::from_ref(&write)).await {
                        Ok(()) => self.land(held, std::slice::from_ref(&write)).await,
                        Err(e) if e.kind() == StoreErrorKind::Rejected => {
                            self.refused(held, &write.key, &e).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Err(e) if e.kind() == StoreErrorKind::Rejected => {
                self.refused(held, &writes[0].key, &e).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn apply(&self, writes: &[StoreWrite<V>]) -> Result<(), StoreError> {
        let started = Instant::now();
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        // A panicking store is a refused batch, not a dead flusher: the batch
        // is retried write by write, and the write that panics ends in the
        // dead-letter queue like any other refused one.
        // (Both where `apply` builds its future and where the future runs.)
        let call = async {
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.store.apply(writes))) {
                Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
                Err(panic) => Err(panic),
            }
        };
        let result = match tokio::time::timeout(self.config.store_timeout, call).await {
            Err(_) => Err(StoreError::unavailable(format!(
                "no answer within {:?}",
                self.config.store_timeout
            ))),
            Ok(Err(panic)) => Err(StoreError::rejected(format!(
                "the store panicked: {}",
                panic_message(panic.as_ref())
            ))),
            Ok(Ok(result)) => result,
        };
        self.counters.flush_took(started.elapsed());
        result
    }

    /// `writes` are in the store: confirm them and invalidate what depended on them.
    async fn land(&self, held: &mut HashMap<String, Held>, writes: &[StoreWrite<V>]) {
        let mut ids = Vec::new();
        let mut tags = Vec::new();
        for write in writes {
            if let Some(h) = held.remove(&write.key) {
                ids.extend(h.ids);
                tags.extend(h.record.invalidate);
            }
        }
        let n = writes.len() as u64;
        self.counters.flushed.fetch_add(n, Ordering::Relaxed);
        self.counters.metrics.flushed.increment(n);
        // Invalidate before confirming: whoever waits for the queue to drain
        // (`Writer::flush`) must find the dependants already invalidated.
        let keys: Vec<String> = writes.iter().map(|w| w.key.clone()).collect();
        tags.sort_unstable();
        tags.dedup();
        self.cache.inner.landed(&keys, &tags).await;
        if let Err(e) = self.queue.confirm(ids).await {
            // Applied but not confirmed: replayed after a restart, which
            // the store's version guard makes harmless.
            tracing::warn!(error = %e, "write-behind: cannot confirm flushed records");
        }
        self.control.space.notify_waiters();
    }

    async fn refused(&self, held: &mut HashMap<String, Held>, key: &str, error: &StoreError) {
        let Some(h) = held.get_mut(key) else { return };
        h.attempts += 1;
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.counters.metrics.retries.increment(1);
        if h.attempts >= self.config.max_attempts {
            tracing::error!(key, error = %error, attempts = h.attempts, "write-behind: record refused by the store; moved to the dead-letter queue");
            self.bury(held, key, error.to_string()).await;
        } else {
            h.next_try = Instant::now() + backoff(&self.config, h.attempts);
        }
    }

    async fn bury(&self, held: &mut HashMap<String, Held>, key: &str, reason: String) {
        let Some(h) = held.get(key) else { return };
        // The store never accepted it: stop serving it (the next read loads
        // what the store has). Before the queue confirms it, so whoever waits
        // for the queue to drain finds it gone from the cache.
        let _ = self.cache.remove(key).await;
        match self
            .queue
            .bury(h.ids.clone(), h.record.clone(), reason)
            .await
        {
            Ok(()) => {
                held.remove(key);
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
                self.counters.metrics.dead_letters.increment(1);
                self.control.space.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "write-behind: cannot move a record to the dead-letter queue; retrying");
                if let Some(h) = held.get_mut(key) {
                    h.next_try = Instant::now() + self.config.backoff_max;
                }
            }
        }
    }

    async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = self.control.wake.notified() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn decode<V: Value>(record: &Record) -> Result<StoreWrite<V>, String> {
    let value = match &record.value {
        Some(bytes) => Some(Arc::new(record.codec.decode::<V>(bytes)?)),
        None => None,
    };
    Ok(StoreWrite {
        key: record.key.clone(),
        version: record.version,
        value,
    })
}

/// Exponential backoff with jitter: `min · 2^(attempt-1)`, capped at `max`,
/// then a random point in its upper half (so instances that failed together
/// do not retry together).
fn backoff(config: &FlushConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(config.backoff_max);
    capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let config = FlushConfig {
            batch_size: 1,
            flush_interval: Duration::ZERO,
            max_attempts: 1,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            store_timeout: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = backoff(&config, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&config, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&config, 60);
            assert!(late >= Duration::from_millis(2500) && late <= Duration::from_secs(5));
        }
    }
}
