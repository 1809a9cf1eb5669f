//! [`Writer`]: the write paths' facade, and its builder.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::flusher::{Control, FlushConfig, Flusher, Pressed};
use super::queue::Queue;
use super::record::Record;
use super::stats::{now_ms, Counters, WriteStats};
use super::store::{Store, StoreWrite};
use super::stream::{StreamOptions, StreamQueue};
use super::wal::{Wal, WalOptions};
use super::{DeadLetter, ShutdownReport, WriteError, WriteOptions};
use crate::cache::Cache;
use crate::clock::MAX_PEER_AHEAD;
use crate::key::validate_key;
use crate::l2::Codec;
use crate::options::validate_tag;
use crate::Value;

/// How many stripes serialize writes per key (see `Shared::stripes`).
///
/// A write holds its key's stripe until it is durable, so two writes to
/// different keys that share a stripe wait for each other's `fdatasync` or
/// `XADD`. With 256 stripes, 64 concurrent writers to distinct keys had ~8
/// such pairs at any time; with 4,096, under one, and write-behind
/// acknowledged ~20% more (`write-paths`, BENCHMARKS.md). The cost is
/// ~40 bytes a stripe, ~160 KiB a writer.
const STRIPES: usize = 4096;

/// The largest encoded value a write-behind record may carry.
pub const MAX_QUEUED_VALUE_BYTES: usize = 64 << 20;

enum QueueChoice {
    None,
    Wal(WalOptions),
    Stream(Box<StreamOptions>),
}

/// Builds a [`Writer`]; see [`Writer::builder`].
#[must_use]
pub struct WriterBuilder<V> {
    cache: Cache<V>,
    store: Arc<dyn Store<V>>,
    queue: QueueChoice,
    config: FlushConfig,
    max_queued: u64,
    max_queued_bytes: u64,
    enqueue_timeout: Duration,
    codec: Codec,
}

impl<V: Value> WriterBuilder<V> {
    /// Write-behind through a local write-ahead log in `dir` with the default
    /// settings (see [`crate::write::wal`] for what is durable when).
    pub fn wal(self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.wal_options(WalOptions::new(dir))
    }

    /// Write-behind through a local write-ahead log.
    pub fn wal_options(mut self, options: WalOptions) -> Self {
        self.queue = QueueChoice::Wal(options);
        self
    }

    /// Write-behind through a Redis Stream shared by every instance (see
    /// [`crate::write::stream`]).
    pub fn redis_stream(mut self, options: StreamOptions) -> Self {
        self.queue = QueueChoice::Stream(Box::new(options));
        self
    }

    /// The most keys in one store call (default 500). The flusher holds at
    /// most four times this many keys; when it does, it sends at once
    /// instead of waiting out the [`flush_interval`](Self::flush_interval).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n.max(1);
        self
    }

    /// How long a key's writes are held, coalescing, before they go to the
    /// store (default 50 ms); see [`flusher`](crate::write::flusher).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config.flush_interval = interval;
        self
    }

    /// Refusals of one record by the store before it is dead-lettered
    /// (default 5).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n.max(1);
        self
    }

    /// Retry delays grow from `min` to `max` (defaults 100 ms, 30 s).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max.max(min);
        self
    }

    /// How long one store call may take before it counts as unavailable
    /// (default 30 s).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config.store_timeout = timeout;
        self
    }

    /// The queue's bound (default 100,000 records). A write-behind call that
    /// finds it full waits for room up to the
    /// [`enqueue_timeout`](Self::enqueue_timeout), then fails with
    /// [`WriteError::QueueFull`].
    pub fn max_queued(mut self, n: u64) -> Self {
        self.max_queued = n.max(1);
        self
    }

    /// The queue's bound in bytes of this process's memory (default 256 MiB):
    /// the write-ahead log keeps every queued record in memory as well as on
    /// disk, so a record count alone would not bound it when values are
    /// large. A call is let in while the queue is under the bound, so
    /// concurrent calls can pass it by a record each (at most
    /// [`MAX_QUEUED_VALUE_BYTES`]), as they can pass
    /// [`max_queued`](Self::max_queued). A backlog recovered at start is
    /// loaded whatever its size; the bound then holds new calls back until
    /// it drains. Counts nothing for a Redis Stream, whose records live in
    /// Redis (bound that with Redis's `maxmemory`).
    pub fn max_queued_bytes(mut self, bytes: u64) -> Self {
        self.max_queued_bytes = bytes.max(1);
        self
    }

    /// How long a write-behind call waits for room in a full queue (default
    /// 5 s; zero fails at once).
    pub fn enqueue_timeout(mut self, timeout: Duration) -> Self {
        self.enqueue_timeout = timeout;
        self
    }

    /// How queued values are encoded (default [`Codec::MessagePack`]: named
    /// fields, so a record written before a field was added still decodes).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Opens the queue (replaying what a crash left in it) and starts the
    /// flusher. Call inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`WriteError::Queue`] if the queue cannot be opened.
    pub async fn start(self) -> Result<Writer<V>, WriteError> {
        let counters = Arc::new(Counters::new(self.cache.namespace()));
        let (queue, floor): (Option<Arc<dyn Queue>>, u64) = match self.queue {
            QueueChoice::None => (None, 0),
            QueueChoice::Wal(options) => {
                // Recovery reads every segment: on the blocking pool, not on
                // the async worker that called.
                let recovered = Wal::blocking(move || Wal::open(&options)).await?;
                counters
                    .recovered
                    .store(recovered.pending as u64, Ordering::Relaxed);
                counters.corrupt.store(recovered.corrupt, Ordering::Relaxed);
                (Some(Arc::new(recovered.wal)), recovered.max_version)
            }
            QueueChoice::Stream(options) => {
                let stream = StreamQueue::open(*options, self.cache.namespace()).await?;
                let floor = stream.max_version();
                (Some(Arc::new(stream)), floor)
            }
        };
        let floor = version_floor(floor, self.cache.inner.clock.now());
        let control = Arc::new(Control::default());
        let flusher = match &queue {
            Some(queue) => {
                let dead = queue.dead().await.map_or(0, |d| d.len() as u64);
                counters.dead_letters.store(dead, Ordering::Relaxed);
                let flusher = Flusher {
                    cache: self.cache.clone(),
                    queue: Arc::clone(queue),
                    store: Arc::clone(&self.store),
                    counters: Arc::clone(&counters),
                    control: Arc::clone(&control),
                    config: self.config,
                };
                Some(tokio::spawn(flusher.run()))
            }
            None => None,
        };
        let stats = {
            let (counters, queue) = (Arc::clone(&counters), queue.clone());
            Arc::new(move || {
                let (depth, bytes) = load(queue.as_deref());
                counters.snapshot(depth, bytes)
            })
        };
        self.cache.inner.attach_write_stats(stats);
        Ok(Writer {
            shared: Arc::new(Shared {
                cache: self.cache,
                store: self.store,
                queue,
                control,
                counters,
                flusher: parking_lot::Mutex::new(flusher),
                closing: AtomicBool::new(false),
                last_version: AtomicU64::new(floor),
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                max_queued: self.max_queued,
                max_queued_bytes: self.max_queued_bytes,
                enqueue_timeout: self.enqueue_timeout,
                codec: self.codec,
            }),
        })
    }
}

struct Shared<V> {
    cache: Cache<V>,
    store: Arc<dyn Store<V>>,
    queue: Option<Arc<dyn Queue>>,
    control: Arc<Control>,
    counters: Arc<Counters>,
    flusher: parking_lot::Mutex<Option<JoinHandle<()>>>,
    closing: AtomicBool,
    last_version: AtomicU64,
    /// Writes to one key are serialized (a key always maps to the same
    /// stripe), so versions, queue order and cache order agree for a key:
    /// two racing writes can never land in the store one way round and in
    /// the cache the other.
    stripes: Box<[tokio::sync::Mutex<()>]>,
    max_queued: u64,
    max_queued_bytes: u64,
    enqueue_timeout: Duration,
    codec: Codec,
}

impl<V> Drop for Shared<V> {
    fn drop(&mut self) {
        // The last handle is gone: stop the flusher (what it has not written
        // stays in the queue for the next start).
        self.control.stop.store(true, Ordering::SeqCst);
        self.control.wake.notify_one();
    }
}

/// The write paths of a [`Cache`]: write-through and write-behind to a
/// [`Store`]. Cheap to clone; clones share the queue and the flusher. See
/// [`crate::write`] for the policies and guarantees.
pub struct Writer<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for Writer<V> {
    fn clone(&self) -> Self {
        Writer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<V> std::fmt::Debug for Writer<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("cache", &self.shared.cache.inner.namespace)
            .field("write_behind", &self.shared.queue.is_some())
            .finish()
    }
}

impl<V: Value> Writer<V> {
    /// A writer for `cache` over `store`. Without
    /// [`wal`](WriterBuilder::wal) or [`redis_stream`](WriterBuilder::redis_stream)
    /// it is write-through only.
    pub fn builder(cache: Cache<V>, store: impl Store<V>) -> WriterBuilder<V> {
        WriterBuilder {
            cache,
            store: Arc::new(store),
            queue: QueueChoice::None,
            config: FlushConfig {
                batch_size: 500,
                flush_interval: Duration::from_millis(50),
                max_attempts: 5,
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(30),
                store_timeout: Duration::from_secs(30),
            },
            max_queued: 100_000,
            max_queued_bytes: 256 << 20,
            enqueue_timeout: Duration::from_secs(5),
            codec: Codec::MessagePack,
        }
    }

    /// The cache this writer keeps in step with the store.
    pub fn cache(&self) -> &Cache<V> {
        &self.shared.cache
    }

    /// Write-through: stores `value` at `key` in the store, then in every cache
    /// tier (and tells the other instances). See [`set_through_with`](Self::set_through_with).
    ///
    /// # Errors
    ///
    /// As [`set_through_with`](Self::set_through_with).
    pub async fn set_through(&self, key: &str, value: V) -> Result<(), WriteError> {
        self.set_through_with(key, value, &WriteOptions::default())
            .await
    }

    /// Write-through with options: the store first; only when it succeeds are
    /// L2 and L1 updated, the other instances told, and what depends on `key`
    /// (and the tags in `options.invalidate`) invalidated.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] when the store write fails: no cache tier was
    /// changed. [`WriteError::Cache`] for an invalid key or option (nothing
    /// was written anywhere).
    pub async fn set_through_with(
        &self,
        key: &str,
        value: V,
        options: &WriteOptions,
    ) -> Result<(), WriteError> {
        self.through(key, Some(value), options).await
    }

    /// Write-through removal: deletes `key` in the store (keeping its
    /// version, see [`crate::write::store`]), then from every cache tier.
    ///
    /// # Errors
    ///
    /// As [`set_through_with`](Self::set_through_with).
    pub async fn remove_through(&self, key: &str) -> Result<(), WriteError> {
        self.through(key, None, &WriteOptions::default()).await
    }

    async fn through(
        &self,
        key: &str,
        value: Option<V>,
        options: &WriteOptions,
    ) -> Result<(), WriteError> {
        let shared = &self.shared;
        options.validate(key)?;
        let _turn = shared.stripe(key).lock().await;
        let version = shared.next_version();
        let value = value.map(Arc::new);
        let write = StoreWrite {
            key: key.to_owned(),
            version,
            value: value.clone(),
        };
        if let Err(e) = shared.store.apply(std::slice::from_ref(&write)).await {
            shared
                .counters
                .through_errors
                .fetch_add(1, Ordering::Relaxed);
            shared.counters.metrics.through_error.increment(1);
            return Err(WriteError::Store(e));
        }
        shared.counters.through_ok.fetch_add(1, Ordering::Relaxed);
        shared.counters.metrics.through_ok.increment(1);
        shared.cache_write(key, value, version, options).await;
        // The store has it: invalidate what was derived from the old value.
        shared
            .cache
            .inner
            .landed(&[key.to_owned()], &options.invalidate)
            .await;
        Ok(())
    }

    /// Write-behind: makes `value` visible in the cache and acknowledges once
    /// the write is durable in the queue; the flusher writes it to the store
    /// later. See [`set_behind_with`](Self::set_behind_with).
    ///
    /// # Errors
    ///
    /// As [`set_behind_with`](Self::set_behind_with).
    pub async fn set_behind(&self, key: &str, value: V) -> Result<(), WriteError> {
        self.set_behind_with(key, value, &WriteOptions::default())
            .await
    }

    /// Write-behind with options. When this returns `Ok`, the write is durable
    /// in the queue (exactly how durable: [`crate::write::wal`],
    /// [`crate::write::stream`]) and every cache tier holds `value`; when the
    /// flusher has written it to the store, what depends on `key` and the
    /// tags in `options.invalidate` are invalidated.
    ///
    /// # Errors
    ///
    /// * [`WriteError::QueueFull`]: the queue held
    ///   [`max_queued`](WriterBuilder::max_queued) records for the whole
    ///   [`enqueue_timeout`](WriterBuilder::enqueue_timeout).
    /// * [`WriteError::Queue`]: the queue could not make the write durable.
    /// * [`WriteError::NoQueue`], [`WriteError::ShuttingDown`],
    ///   [`WriteError::Encode`], [`WriteError::Cache`].
    ///
    /// On any error nothing was changed: not the queue, not the cache.
    pub async fn set_behind_with(
        &self,
        key: &str,
        value: V,
        options: &WriteOptions,
    ) -> Result<(), WriteError> {
        self.behind(key, Some(value), options).await
    }

    /// Write-behind removal: removes `key` from every cache tier and queues
    /// its deletion in the store.
    ///
    /// # Errors
    ///
    /// As [`set_behind_with`](Self::set_behind_with).
    pub async fn remove_behind(&self, key: &str) -> Result<(), WriteError> {
        self.behind(key, None, &WriteOptions::default()).await
    }

    async fn behind(
        &self,
        key: &str,
        value: Option<V>,
        options: &WriteOptions,
    ) -> Result<(), WriteError> {
        let shared = &self.shared;
        let queue = shared.queue.as_ref().ok_or(WriteError::NoQueue)?;
        if shared.closing.load(Ordering::SeqCst) {
            return Err(WriteError::ShuttingDown);
        }
        options.validate(key)?;
        let encoded = match &value {
            Some(v) => {
                let bytes = shared.codec.encode(v).map_err(WriteError::Encode)?;
                if bytes.len() > MAX_QUEUED_VALUE_BYTES {
                    return Err(WriteError::Encode(format!(
                        "the encoded value is {} bytes; at most {MAX_QUEUED_VALUE_BYTES} can be queued",
                        bytes.len()
                    )));
                }
                Some(bytes)
            }
            None => None,
        };
        shared.room(queue.as_ref()).await?;
        let _turn = shared.stripe(key).lock().await;
        let version = shared.next_version();
        queue
            .append(Record {
                at_ms: now_ms(),
                version,
                codec: shared.codec,
                key: key.to_owned(),
                value: encoded,
                invalidate: options.invalidate.clone(),
            })
            .await?;
        shared.control.wake.notify_one();
        shared.counters.acknowledged.fetch_add(1, Ordering::Relaxed);
        shared.counters.metrics.behind_ok.increment(1);
        shared
            .cache_write(key, value.map(Arc::new), version, options)
            .await;
        Ok(())
    }

    /// Waits until every acknowledged write-behind record is in the store (or
    /// dead-lettered), flushing without waiting out the flush window. Returns
    /// false if `limit` passed first.
    pub async fn flush(&self, limit: Duration) -> bool {
        let shared = &self.shared;
        let Some(queue) = &shared.queue else {
            return true;
        };
        shared.control.draining.store(true, Ordering::SeqCst);
        shared.control.wake.notify_one();
        let drained = wait_until(limit, || queue.depth() == 0, &shared.control).await;
        if !shared.closing.load(Ordering::SeqCst) {
            shared.control.draining.store(false, Ordering::SeqCst);
        }
        drained
    }

    /// Stops taking write-behind calls (they fail with
    /// [`WriteError::ShuttingDown`]), drains the queue into the store until it
    /// is empty or `deadline` passes, and stops the flusher. What is left
    /// stays in the queue and is replayed by the next start.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::SeqCst);
        let drained = self.flush(deadline).await;
        shared.control.stop.store(true, Ordering::SeqCst);
        shared.control.wake.notify_one();
        let flusher = shared.flusher.lock().take();
        if let Some(mut flusher) = flusher {
            // A store call in progress may take up to the store timeout:
            // give it a moment, then abandon it (its records stay queued).
            if tokio::time::timeout(Duration::from_secs(1), &mut flusher)
                .await
                .is_err()
            {
                flusher.abort();
            }
        }
        ShutdownReport {
            drained,
            left: shared.queue.as_ref().map_or(0, |q| q.depth()),
        }
    }

    /// The dead-letter queue, oldest first.
    ///
    /// # Errors
    ///
    /// [`WriteError::Queue`] if it cannot be read; [`WriteError::NoQueue`].
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter<V>>, WriteError> {
        let queue = self.shared.queue.as_ref().ok_or(WriteError::NoQueue)?;
        Ok(queue
            .dead()
            .await?
            .into_iter()
            .map(|dead| DeadLetter {
                value: dead
                    .record
                    .value
                    .as_ref()
                    .and_then(|b| dead.record.codec.decode::<V>(b).ok()),
                id: dead.id,
                key: dead.record.key,
                version: dead.record.version,
                reason: dead.reason,
            })
            .collect())
    }

    /// Puts dead letter `id` back into the queue, with its original version:
    /// it lands unless the key was written since (the newer write wins).
    /// Returns false if there is no such dead letter.
    ///
    /// # Errors
    ///
    /// [`WriteError::Queue`]; [`WriteError::NoQueue`].
    pub async fn replay_dead_letter(&self, id: &str) -> Result<bool, WriteError> {
        let shared = &self.shared;
        let queue = shared.queue.as_ref().ok_or(WriteError::NoQueue)?;
        let revived = queue.revive(id.to_owned()).await?;
        if revived {
            shared.forget_dead_letter();
            shared.control.wake.notify_one();
        }
        Ok(revived)
    }

    /// Deletes dead letter `id` for good. Returns false if there is none.
    ///
    /// # Errors
    ///
    /// [`WriteError::Queue`]; [`WriteError::NoQueue`].
    pub async fn drop_dead_letter(&self, id: &str) -> Result<bool, WriteError> {
        let shared = &self.shared;
        let queue = shared.queue.as_ref().ok_or(WriteError::NoQueue)?;
        let dropped = queue.discard(id.to_owned()).await?;
        if dropped {
            shared.forget_dead_letter();
        }
        Ok(dropped)
    }

    /// A snapshot of the write paths' counters (also in
    /// [`Cache::stats`](crate::Cache::stats) as `write`).
    pub fn stats(&self) -> WriteStats {
        let shared = &self.shared;
        let (depth, bytes) = load(shared.queue.as_deref());
        shared.counters.snapshot(depth, bytes)
    }
}

/// The version new writes continue from, given the highest one `recovered`
/// from the queue.
///
/// Versions are the clock in nanoseconds, so one recovered from a healthy
/// instance is at most clock skew ahead, and new writes continue past it to
/// stay newer than what is queued. One far ahead can only come from a broken
/// clock or a damaged record, and continuing from it would poison every later
/// write: past 2^63 a SQL store refuses the version (every write-behind
/// record dead-lettered, every write-through failing), at `u64::MAX` L2
/// refuses every write after the first, and short of that this instance's
/// writes would win over other instances' newer ones for as long as the gap
/// lasts. Such a version is ignored: new writes go by the clock. The record
/// that carried it still flushes as it is; only its own key is affected.
fn version_floor(recovered: u64, now: crate::Timestamp) -> u64 {
    let bound = now.saturating_add(MAX_PEER_AHEAD).as_nanos();
    if recovered <= bound {
        return recovered;
    }
    tracing::warn!(
        recovered,
        now = now.as_nanos(),
        "write-behind: a queued record's version is far ahead of this clock; new writes go by the clock"
    );
    0
}

impl<V: Value> Shared<V> {
    fn stripe(&self, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher as _;
        let hash = foldhash::fast::FixedState::with_seed(0x7e11ed).hash_one(key);
        &self.stripes[(hash % self.stripes.len() as u64) as usize]
    }

    /// A version newer than any this writer (or the queue it recovered) has
    /// used: the clock in nanoseconds, bumped past the last one.
    fn next_version(&self) -> u64 {
        let now = self.cache.inner.clock.now().as_nanos().max(1);
        let mut last = self.last_version.load(Ordering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self.last_version.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Waits for room in the queue (back-pressure).
    async fn room(&self, queue: &dyn Queue) -> Result<(), WriteError> {
        let (max, max_bytes) = (self.max_queued, self.max_queued_bytes);
        let has_room = || queue.depth() < max && queue.bytes() < max_bytes;
        if has_room() {
            return Ok(());
        }
        // The flusher stops waiting out its windows while this waits.
        let pressed = Pressed::new(&self.control);
        if wait_until(self.enqueue_timeout, has_room, &self.control).await {
            return Ok(());
        }
        drop(pressed);
        self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
        self.counters.metrics.behind_full.increment(1);
        Err(WriteError::QueueFull {
            depth: queue.depth(),
            bytes: queue.bytes(),
            waited: self.enqueue_timeout,
        })
    }

    async fn cache_write(
        &self,
        key: &str,
        value: Option<Arc<V>>,
        version: u64,
        options: &WriteOptions,
    ) {
        let inner = &self.cache.inner;
        let opts = options
            .entry
            .as_ref()
            .unwrap_or_else(|| inner.defaults.as_ref());
        match value {
            Some(value) => inner.set_versioned(key, value, opts, version).await,
            None => {
                // Validated by `WriteOptions::validate`; cannot fail.
                let _ = self.cache.remove(key).await;
            }
        }
    }

    fn forget_dead_letter(&self) {
        let _ =
            self.counters
                .dead_letters
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// The queue's depth and bytes (zero without one).
fn load(queue: Option<&dyn Queue>) -> (u64, u64) {
    queue.map_or((0, 0), |q| (q.depth(), q.bytes()))
}

/// Polls `done` until it holds or `limit` passes, waking on queue progress.
async fn wait_until(limit: Duration, done: impl Fn() -> bool, control: &Control) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        // `space` is signalled after each flush; the short sleep covers a
        // signal sent between the check and the wait.
        tokio::select! {
            () = control.space.notified() => {}
            () = tokio::time::sleep((deadline - now).min(Duration::from_millis(10))) => {}
        }
    }
}

impl WriteOptions {
    fn validate(&self, key: &str) -> Result<(), WriteError> {
        validate_key(key)?;
        if let Some(entry) = &self.entry {
            entry.validate()?;
        }
        for tag in &self.invalidate {
            validate_tag(tag)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    #[test]
    fn a_recovered_version_within_clock_skew_is_continued_from_and_one_far_ahead_is_not() {
        let now = Timestamp::from_nanos(1_704_067_200 * 1_000_000_000);
        let skewed = now.saturating_add(Duration::from_secs(5)).as_nanos();
        assert_eq!(version_floor(skewed, now), skewed);
        assert_eq!(version_floor(now.as_nanos() - 1, now), now.as_nanos() - 1);
        let year_2300 = 10_500_000_000 * 1_000_000_000;
        assert_eq!(version_floor(year_2300, now), 0);
        assert_eq!(version_floor(u64::MAX, now), 0);
    }
}
