//! The durable queue between an acknowledged write-behind call and the store.
//!
//! Two implementations: [`crate::write::wal`] (a local write-ahead log, the
//! default) and [`crate::write::stream`] (a Redis Stream with a consumer group,
//! for several instances sharing L2). The flusher sees only this trait.

use std::future::Future;
use std::pin::Pin;

use super::record::Record;
use super::WriteError;

/// A queue call's future.
pub(crate) type QueueFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, WriteError>> + Send + 'a>>;

/// A record handed to the flusher, with the id that confirms it.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub id: u64,
    pub record: Record,
}

/// A record in the dead-letter queue.
#[derive(Debug, Clone)]
pub(crate) struct Dead {
    /// Stable across restarts; what `replay` and `drop` take.
    pub id: String,
    pub record: Record,
    pub reason: String,
}

pub(crate) trait Queue: Send + Sync + 'static {
    /// Records acknowledged and not confirmed yet (for a shared queue: as
    /// last seen, plus this instance's appends since). Cheap; no I/O.
    fn depth(&self) -> u64;

    /// What the queued records cost in this process's memory
    /// ([`Record::weight`]): all of them for the write-ahead log, which keeps
    /// them in memory too; nothing for a Redis Stream, which keeps them in
    /// Redis. Cheap; no I/O.
    fn bytes(&self) -> u64;

    /// Appends `record`; resolves once it is durable (see each
    /// implementation's docs for exactly what that means).
    fn append(&self, record: Record) -> QueueFuture<'_, ()>;

    /// Up to `max` records not handed out yet, oldest first; empty if there
    /// are none right now. After a restart, the first records handed out are
    /// those acknowledged and never confirmed.
    fn take(&self, max: usize) -> QueueFuture<'_, Vec<Queued>>;

    /// The store has applied (or superseded) these records: they are never
    /// handed out again, not even after a crash.
    fn confirm(&self, ids: Vec<u64>) -> QueueFuture<'_, ()>;

    /// Moves a record that keeps failing to the dead-letter queue and confirms
    /// `ids` (the record and the older writes it superseded), durably.
    fn bury(&self, ids: Vec<u64>, record: Record, reason: String) -> QueueFuture<'_, ()>;

    /// The dead-letter queue, oldest first.
    fn dead(&self) -> QueueFuture<'_, Vec<Dead>>;

    /// Moves dead letter `id` back into the queue; false if there is none.
    fn revive(&self, id: String) -> QueueFuture<'_, bool>;

    /// Deletes dead letter `id`; false if there is none.
    fn discard(&self, id: String) -> QueueFuture<'_, bool>;
}
