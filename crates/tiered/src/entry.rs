//! A cached entry: the value (or a cached "absent") plus the metadata that decides
//! when it is fresh, when it should be refreshed, and how long it may be served
//! stale.
//!
//! The L2 tier stores the same metadata in a versioned envelope (see
//! [`crate::l2::envelope`]); in L1 the value stays decoded behind an `Arc`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::invalidate::TagId;
use crate::l2::envelope::Meta;
use crate::options::AdaptiveTtl;

/// How an entry reads at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Fresh, before the refresh-ahead point.
    Fresh,
    /// Fresh, past the refresh-ahead point: serve and refresh in the background.
    RefreshAhead,
    /// Past fresh, within grace: serve only as a fail-safe fallback.
    Stale,
    /// Past grace: as good as absent.
    Gone,
}

pub(crate) struct Entry<V> {
    /// `None` is a cached "absent" (negative caching).
    pub value: Option<Arc<V>>,
    /// The invalidation stamp read when the load that produced this entry began;
    /// see [`crate::invalidate`] for how it fences out invalidated data.
    pub born: u64,
    /// Orders writes of one key across tiers and instances (see
    /// [`crate::l2::envelope`]); 0 in a cache without L2.
    pub version: u64,
    /// When the value was loaded or set (for L2 readers: older than an
    /// invalidation means invalid).
    pub created: Timestamp,
    pub refresh_at: Timestamp,
    pub fresh_until: Timestamp,
    pub stale_until: Timestamp,
    /// The TTL this entry was given (before jitter), for adaptive TTL.
    pub ttl: Duration,
    /// How long the load that produced it took (the XFetch delta).
    pub load_duration: Duration,
    pub xfetch_beta: Option<f64>,
    /// User tags and dependency tags (including transitive dependencies).
    pub tags: Box<[TagId]>,
    /// Bytes charged to the L1 budget (value weight plus key length).
    pub weight: u64,
    /// The adaptive-TTL rule the entry was stored with; hits are only counted
    /// when it is set (a shared counter is a contended write on hot keys).
    pub adaptive: Option<AdaptiveTtl>,
    /// Hits while fresh, for adaptive TTL.
    pub hits: AtomicU64,
    /// Don't start another load for this key before this time (nanos): set after
    /// a failed load (fail-safe back-off) or a failed background refresh.
    pub retry_after: AtomicU64,
    /// The highest tag-invalidation stamp this entry was checked against and found
    /// valid; saves re-checking its tags on every hit.
    pub validated_through: AtomicU64,
    /// Set when the entry is removed or replaced by `remove`/`set` (or by a load
    /// that found the key absent): a caller holding it as a fail-safe fallback
    /// must not serve it. Eviction does not revoke: an evicted value within its
    /// grace window is still a fine fallback.
    pub revoked: AtomicBool,
}

impl<V> Entry<V> {
    /// An entry that never expires and carries no tags (for [`crate::l1::L1Cache`]).
    pub(crate) fn forever(value: Arc<V>, weight: u64) -> Self {
        Entry {
            value: Some(value),
            born: 0,
            version: 0,
            created: Timestamp::ZERO,
            refresh_at: Timestamp::MAX,
            fresh_until: Timestamp::MAX,
            stale_until: Timestamp::MAX,
            ttl: Duration::ZERO,
            load_duration: Duration::ZERO,
            xfetch_beta: None,
            tags: Box::new([]),
            weight,
            adaptive: None,
            hits: AtomicU64::new(0),
            retry_after: AtomicU64::new(0),
            validated_through: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    /// A copy that is stale from `now` on (value, tags and grace end kept):
    /// soft invalidation.
    pub(crate) fn stale_from(&self, now: Timestamp, born: u64) -> Self {
        Entry {
            value: self.value.clone(),
            born,
            version: self.version,
            created: self.created,
            refresh_at: Timestamp::MAX,
            fresh_until: now.min(self.fresh_until),
            stale_until: self.stale_until,
            ttl: self.ttl,
            load_duration: self.load_duration,
            xfetch_beta: self.xfetch_beta,
            tags: self.tags.clone(),
            weight: self.weight,
            adaptive: self.adaptive,
            hits: AtomicU64::new(0),
            retry_after: AtomicU64::new(0),
            validated_through: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    /// The metadata the L2 envelope carries.
    pub(crate) fn meta(&self) -> Meta {
        Meta {
            version: self.version,
            created: self.created,
            refresh_at: self.refresh_at,
            fresh_until: self.fresh_until,
            stale_until: self.stale_until,
            ttl: self.ttl,
            load_duration: self.load_duration,
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    pub(crate) fn freshness(&self, now: Timestamp) -> Freshness {
        if now >= self.stale_until {
            Freshness::Gone
        } else if now >= self.fresh_until {
            Freshness::Stale
        } else if now >= self.refresh_at || self.xfetch_due(now) {
            Freshness::RefreshAhead
        } else {
            Freshness::Fresh
        }
    }

    /// Whether an entry read from L2 may be served as fresh: fresh at `now`,
    /// and for a background refresh not yet due for refresh itself (else the
    /// refresh would just reinstall what it is meant to replace).
    pub(crate) fn serves_from_l2(&self, now: Timestamp, refresh: bool) -> bool {
        match self.freshness(now) {
            Freshness::Fresh => true,
            Freshness::RefreshAhead => !refresh,
            Freshness::Stale | Freshness::Gone => false,
        }
    }

    /// Past its end of life (grace included): may be reclaimed.
    pub(crate) fn is_gone(&self, now: Timestamp) -> bool {
        now >= self.stale_until
    }

    /// XFetch: refresh early with probability growing as expiry nears, scaled by
    /// how long the load took. `now − Δ·β·ln(U) ≥ expiry` ⇔ `Δ·β·(−ln U) ≥ remaining`.
    fn xfetch_due(&self, now: Timestamp) -> bool {
        let Some(beta) = self.xfetch_beta else {
            return false;
        };
        let delta = self.load_duration.as_secs_f64();
        if delta <= 0.0 {
            return false;
        }
        let remaining = self.fresh_until.saturating_since(now).as_secs_f64();
        // U in (0, 1]: 1 − [0, 1).
        let u = 1.0 - fastrand::f64();
        delta * beta * -u.ln() >= remaining
    }

    pub(crate) fn backing_off(&self, now: Timestamp) -> bool {
        now.as_nanos() < self.retry_after.load(Ordering::Relaxed)
    }

    pub(crate) fn back_off_until(&self, until: Timestamp) {
        self.retry_after
            .fetch_max(until.as_nanos(), Ordering::Relaxed);
    }

    /// Marks the entry as removed or replaced (see `revoked`).
    pub(crate) fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    pub(crate) fn record_hit(&self) {
        if self.adaptive.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}
