//! The write paths: write-through and write-behind to a [`Store`].
//!
//! A [`Writer`] ties a [`Cache`](crate::Cache) to the system of record:
//!
//! ```no_run
//! # async fn demo(cache: tiered::Cache<String>, store: impl tiered::Store<String>) -> Result<(), tiered::write::WriteError> {
//! use tiered::write::Writer;
//! let writer = Writer::builder(cache, store)
//!     .wal("/var/lib/my-service/write-behind")
//!     .start()
//!     .await?;
//! writer.set_through("user:1", "Ada".to_string()).await?; // the database first
//! writer.set_behind("user:2", "Grace".to_string()).await?; // the log first, the database later
//! writer.shutdown(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
//!
//! # Write-through
//!
//! [`Writer::set_through`] writes the store first. Only when the store has
//! accepted the write are L2 and L1 updated and the other instances told; a
//! failed store write returns its error and leaves every cache tier as it was.
//! The price is the store's latency on every write.
//!
//! # Write-behind
//!
//! [`Writer::set_behind`] appends the write to a durable queue, updates the
//! cache tiers and returns: the caller waits for the queue, not the database.
//! A flusher ([`flusher`]) drains the queue into the store in batches,
//! coalescing several writes to one key into the latest, retrying failures
//! with backoff and moving records the store keeps refusing to a dead-letter
//! queue ([`Writer::dead_letters`], [`Writer::replay_dead_letter`],
//! [`Writer::drop_dead_letter`]). [`Writer::shutdown`] drains with a
//! deadline; a start after a crash replays every record that was
//! acknowledged and not yet confirmed by the store.
//!
//! The queue is one of:
//!
//! * [`wal`] — a local write-ahead log (the default choice for one
//!   instance): segment files, a CRC per record, `fdatasync` batched across
//!   concurrent writes before the acknowledgement ([`Fsync::Batched`], the
//!   default) or on a timer after it ([`Fsync::Periodic`]). What exactly is
//!   durable when the call returns is in its docs.
//! * [`stream`] — a Redis Stream with a consumer group, when several
//!   instances share L2: any instance's flusher can drain any instance's
//!   writes, and a crashed instance's records are claimed by the others. Its
//!   durability is Redis's own (AOF; see its docs).
//!
//! The queue is bounded in records ([`WriterBuilder::max_queued`]) and in
//! bytes of memory ([`WriterBuilder::max_queued_bytes`]): when the store is
//! down long enough to fill it, write-behind calls wait for room and then
//! fail with [`WriteError::QueueFull`] instead of eating memory or disk
//! without limit. (A queue that fills while the store is up — a burst
//! within one flush window — makes the flusher send at once; see
//! [`flusher`].)
//!
//! # Order and versions
//!
//! Every write gets a version: the cache clock in nanoseconds, bumped past
//! the last one used (and, after a restart, past every version in the
//! recovered queue). Writes to one key from one writer are serialized, so
//! versions, queue order and cache order agree. The store applies a write
//! only if it is newer than what it holds ([`store`]), so a replay never moves
//! a key backwards and, across instances, the newest write (by clock) wins.
//!
//! # Invalidating dependants
//!
//! When a write reaches the store — at once for write-through, when the
//! flusher lands it for write-behind — entries that
//! [depend on](crate::Options::depends_on) the written key are invalidated,
//! and so are the tags listed in [`WriteOptions::invalidate`], in every
//! instance (through the backplane, if any). For write-behind this matters:
//! an entry derived from the database (a list, a count) and loaded between
//! the `set_behind` and the flush would otherwise keep the old data.
//!
//! # Limits
//!
//! * Between `set_behind` and the flush the store holds the old value. The
//!   cache holds the new one — as long as it keeps the entry: give write-behind
//!   entries a time-to-live well above the flush delay, or a read that misses
//!   the cache loads the old value from the store.
//! * Versions come from clocks: across instances, "newest" is by wall clock.
//!   Within one writer they only grow: past the last one issued, and after a
//!   restart past the highest the queue has seen (the write-ahead log keeps a
//!   high-water mark in its checkpoint; a Redis Stream only knows its newest
//!   queued record, so a drained stream plus a clock stepped back can issue
//!   versions below what the store holds, and the store keeps its value).
//!   Write-through versions never reach the queue: after a restart with the
//!   clock stepped back past them, a write to a key last written through can
//!   be refused by the store's version guard the same way. A recovered
//!   version more than a minute ahead of the clock (a broken clock, a damaged
//!   record) is not continued from — it would make every later write's
//!   version absurd, past 2^63 refused by a SQL store — so only the key that
//!   carried it is affected.
//! * The write-ahead log keeps records not yet flushed in memory as well as
//!   on disk; [`WriterBuilder::max_queued_bytes`] bounds that memory (an
//!   estimate per record: its bytes plus a fixed allowance).
//! * A write-through whose store call timed out or lost its connection may
//!   still have been applied by the store; the cache keeps the old value, and
//!   the error says "unavailable", not "not applied".
//! * A record the store refuses for good is dead-lettered and its key removed
//!   from the cache; older writes it had superseded are dead with it (the
//!   store keeps what it had before them).
//! * A panic in [`Store::apply`] counts as a refusal: the batch is retried
//!   write by write and the write that panics is dead-lettered after
//!   `max_attempts`. A panic anywhere else in the flusher (decoding a value,
//!   a queue implementation) stops it; writes are still acknowledged (and
//!   stay durable) until the queue is full.

pub mod flusher;
mod queue;
mod record;
pub mod stats;
pub mod store;
pub mod stream;
pub mod wal;
mod writer;

use std::time::Duration;

pub use stats::WriteStats;
pub use store::{Store, StoreError, StoreErrorKind, StoreFuture, StoreWrite};
pub use stream::StreamOptions;
pub use wal::{Fsync, WalOptions};
pub use writer::{Writer, WriterBuilder, MAX_QUEUED_VALUE_BYTES};

use crate::Options;

/// Options of one write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The cache entry's options (TTL, tags, dependencies...); `None`: the
    /// cache's defaults.
    pub entry: Option<Options>,
    /// Tags invalidated when the write reaches the store.
    pub invalidate: Vec<String>,
}

impl WriteOptions {
    /// The cache's default entry options, nothing else invalidated.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `options` for the cache entry.
    #[must_use]
    pub fn entry(mut self, options: Options) -> Self {
        self.entry = Some(options);
        self
    }

    /// Also invalidates `tag` when the write reaches the store.
    #[must_use]
    pub fn invalidate_tag(mut self, tag: impl Into<String>) -> Self {
        self.invalidate.push(tag.into());
        self
    }
}

/// A record the store kept refusing, kept for inspection.
#[derive(Debug, Clone)]
pub struct DeadLetter<V> {
    /// What [`Writer::replay_dead_letter`] and [`Writer::drop_dead_letter`] take.
    pub id: String,
    /// The key written.
    pub key: String,
    /// The write's version.
    pub version: u64,
    /// The value (`None` for a deletion, or if it no longer decodes).
    pub value: Option<V>,
    /// The store's last error.
    pub reason: String,
}

/// What [`Writer::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every acknowledged write reached the store (or the dead letters).
    pub drained: bool,
    /// Records left in the queue for the next start.
    pub left: u64,
}

/// Why a write failed. In every case nothing was changed by the call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Write-through: the store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Write-behind: the queue stayed full for the whole enqueue timeout.
    #[error("write-behind queue full ({depth} records, {bytes} bytes in memory) after waiting {waited:?}")]
    QueueFull {
        /// Records in the queue.
        depth: u64,
        /// Their weight in this process's memory (see
        /// [`WriterBuilder::max_queued_bytes`]).
        bytes: u64,
        /// How long the call waited for room.
        waited: Duration,
    },
    /// The queue could not make the write durable (disk or Redis error).
    #[error("write-behind queue: {0}")]
    Queue(String),
    /// The value could not be encoded.
    #[error("cannot encode the value: {0}")]
    Encode(String),
    /// An invalid key or option.
    #[error(transparent)]
    Cache(#[from] crate::Error),
    /// Write-behind on a writer built without a queue.
    #[error("no write-behind queue configured (WriterBuilder::wal or ::redis_stream)")]
    NoQueue,
    /// Write-behind after [`Writer::shutdown`] began.
    #[error("the writer is shutting down")]
    ShuttingDown,
}
