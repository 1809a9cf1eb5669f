//! The [`Store`] trait: the system of record behind the cache.
//!
//! Every write the cache sends to a store carries a **version** (a number that
//! only grows for one key, see [`crate::write`]). A store must apply a write
//! only if it is newer than what it holds for that key — for SQL, an upsert
//! with `ON CONFLICT … DO UPDATE … WHERE stored.version < excluded.version` —
//! and must keep the version of a deleted key (a tombstone row, or a
//! `deleted` flag) so that an older write replayed after the delete cannot
//! bring the key back. That is what makes a replay after a crash safe: applying
//! a batch twice, or an old batch after a new one, never moves a key backwards.
//!
//! `tiered-postgres` implements it for PostgreSQL; implement it yourself for
//! any other database.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::BoxError;

/// One write sent to a [`Store`]: the latest value of `key` (or its deletion)
/// at `version`.
#[derive(Debug)]
pub struct StoreWrite<V> {
    /// The cache key.
    pub key: String,
    /// Only grows for one key; a store keeps the highest it has applied.
    pub version: u64,
    /// The new value; `None` deletes the key.
    pub value: Option<Arc<V>>,
}

impl<V> Clone for StoreWrite<V> {
    fn clone(&self) -> Self {
        StoreWrite {
            key: self.key.clone(),
            version: self.version,
            value: self.value.clone(),
        }
    }
}

/// Why a store write failed, which decides what the cache does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store could not be reached or is overloaded (connection refused,
    /// timeout, server shutting down). Write-behind retries with backoff for
    /// as long as it takes; nothing is dead-lettered for this.
    Unavailable,
    /// The store refused the data itself (a constraint or type violation).
    /// Write-behind isolates the refused record, retries it a few times and
    /// then moves it to the dead-letter queue, without holding up other keys.
    Rejected,
}

/// A failed [`Store::apply`].
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Arc<dyn std::error::Error + Send + Sync + 'static>,
}

impl StoreError {
    /// The store could not be reached; see [`StoreErrorKind::Unavailable`].
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::new(StoreErrorKind::Unavailable, source)
    }

    /// The store refused the data; see [`StoreErrorKind::Rejected`].
    pub fn rejected(source: impl Into<BoxError>) -> Self {
        Self::new(StoreErrorKind::Rejected, source)
    }

    /// An error of `kind` caused by `source`.
    pub fn new(kind: StoreErrorKind, source: impl Into<BoxError>) -> Self {
        StoreError {
            kind,
            source: Arc::from(source.into()),
        }
    }

    /// Which kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            StoreErrorKind::Unavailable => "store unavailable",
            StoreErrorKind::Rejected => "store rejected the write",
        };
        write!(f, "{kind}: {}", self.source)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// What [`Store::apply`] returns.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// The system of record: applies batches of versioned writes.
///
/// # Contract
///
/// * **Atomic per batch**: either every write of `batch` is applied (or
///   skipped as not newer) or none is, and an error is returned. Write-behind
///   relies on this to know what to confirm; when a batch is
///   [`Rejected`](StoreErrorKind::Rejected) it retries the writes one by one
///   to find the culprit.
/// * **Version-guarded and idempotent**: a write whose version is not newer
///   than the one stored for its key changes nothing and is *not* an error. A
///   delete keeps the key's version (see the module docs).
/// * A batch never holds two writes for one key.
pub trait Store<V>: Send + Sync + 'static {
    /// Applies `batch` (see the trait docs).
    fn apply<'a>(&'a self, batch: &'a [StoreWrite<V>]) -> StoreFuture<'a>;
}

impl<V, S: Store<V> + ?Sized> Store<V> for Arc<S> {
    fn apply<'a>(&'a self, batch: &'a [StoreWrite<V>]) -> StoreFuture<'a> {
        (**self).apply(batch)
    }
}
