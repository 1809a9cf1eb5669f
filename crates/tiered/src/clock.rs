//! Time, injected.
//!
//! Every time-dependent decision the cache makes — is this entry fresh, is it past
//! its eager-refresh point, is its grace window over, is a failing key still
//! backing off, how long did the loader take (the XFetch delta) — reads the time
//! from a [`Clock`]. Production uses [`SystemClock`]; tests use [`ManualClock`] and
//! move time forward by hand, so expiry and refresh are tested without sleeping.
//!
//! Loader *timeouts* are the one exception: they are enforced with tokio's timer,
//! because they must interrupt a future that is still running. Tests drive them
//! with tokio's paused time (`#[tokio::test(start_paused = true)]`), which also
//! never sleeps for real.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far ahead of this instance's clock a time or version written by another
/// instance (through Redis or the backplane) may be. Clocks of healthy hosts
/// agree to well within it; anything further ahead comes from a broken clock
/// or damaged data, and trusting it would let one record outdate, outlive or
/// out-version everything else.
pub(crate) const MAX_PEER_AHEAD: Duration = Duration::from_secs(60);

/// A point in time: nanoseconds since the Unix epoch.
///
/// Wall-clock based (not `std::time::Instant`) because entries will travel between
/// processes through the L2 tier and their expiry must mean the same thing there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The far future; used for "never".
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `nanos` nanoseconds after the Unix epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_nanos(d)))
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A source of time for the cache.
///
/// Implementations must be cheap: the clock is read on every cache hit.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // A clock set before 1970 reads as the epoch rather than panicking.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(duration_nanos(since))
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tiered::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now().saturating_since(t0), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock starting at an arbitrary fixed point (2024-01-01T00:00:00Z),
    /// so tests are reproducible.
    pub fn new() -> Self {
        Self::starting_at(Timestamp(1_704_067_200 * 1_000_000_000))
    }

    /// A manual clock starting at `t`.
    pub fn starting_at(t: Timestamp) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(t.0)),
        }
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(duration_nanos(d), Ordering::SeqCst);
    }

    /// Sets the time to `t` (which may move it backwards, to test clock skew).
    pub fn set(&self, t: Timestamp) {
        self.nanos.store(t.0, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.nanos.load(Ordering::SeqCst))
    }
}
