//! The circuit breaker in front of L2.
//!
//! ```text
//!            N consecutive failures              cooldown over
//!  Closed ───────────────────────────▶ Open ─────────────────▶ HalfOpen
//!    ▲                                   ▲                         │
//!    │            probe succeeds         │     probe fails         │
//!    └───────────────────────────────────┴─────────────────────────┘
//! ```
//!
//! While open, the cache does not call L2 at all: a Redis that is down costs the
//! callers nothing (not even a timeout each). Half-open lets exactly one call
//! through as a probe; if that call never reports (its caller was cancelled),
//! another probe is allowed after one more cooldown.
//!
//! Time comes from the cache's [`Clock`](crate::Clock), so tests drive the
//! cooldown without sleeping.

use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::Timestamp;

/// The breaker's state, as reported in [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// L2 is called normally.
    #[default]
    Closed,
    /// L2 is not called until the cooldown is over.
    Open,
    /// One probe call is in flight.
    HalfOpen,
}

impl BreakerState {
    /// A number for gauges: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
struct State {
    state: BreakerState,
    failures: u32,
    /// Open: when the cooldown ends. Half-open: when the probe is given up on.
    until: Timestamp,
}

/// What a caller learns when it reports an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    /// The breaker just opened.
    Opened,
    /// The breaker just closed after being open: time to replay pending writes.
    Closed,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State {
                state: BreakerState::Closed,
                failures: 0,
                until: Timestamp::ZERO,
            }),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state.lock().state
    }

    /// Whether a call may go to L2 now.
    pub(crate) fn allow(&self, now: Timestamp) -> bool {
        let mut s = self.state.lock();
        match s.state {
            BreakerState::Closed => true,
            BreakerState::Open | BreakerState::HalfOpen if now >= s.until => {
                s.state = BreakerState::HalfOpen;
                s.until = now.saturating_add(self.cooldown);
                true
            }
            BreakerState::Open | BreakerState::HalfOpen => false,
        }
    }

    pub(crate) fn success(&self) -> Transition {
        let mut s = self.state.lock();
        s.failures = 0;
        let was = s.state;
        s.state = BreakerState::Closed;
        if was == BreakerState::Closed {
            Transition::None
        } else {
            Transition::Closed
        }
    }

    pub(crate) fn failure(&self, now: Timestamp) -> Transition {
        let mut s = self.state.lock();
        s.failures = s.failures.saturating_add(1);
        let open = match s.state {
            BreakerState::Closed => s.failures >= self.threshold,
            BreakerState::HalfOpen | BreakerState::Open => true,
        };
        if !open {
            return Transition::None;
        }
        let was = s.state;
        s.state = BreakerState::Open;
        s.until = now.saturating_add(self.cooldown);
        if was == BreakerState::Closed {
            Transition::Opened
        } else {
            Transition::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_secs(2));
        let t = |s: u64| Timestamp::from_nanos(s * 1_000_000_000);
        assert!(b.allow(t(0)));
        assert_eq!(b.failure(t(0)), Transition::None);
        assert_eq!(b.failure(t(0)), Transition::None);
        assert_eq!(b.failure(t(0)), Transition::Opened);
        assert!(!b.allow(t(1)));
        // Cooldown over: exactly one probe.
        assert!(b.allow(t(2)));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(t(2)));
        // The probe fails: open again.
        b.failure(t(2));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t(3)));
        assert!(b.allow(t(4)));
        assert_eq!(b.success(), Transition::Closed);
        assert!(b.allow(t(4)));
        // A success resets the failure count.
        b.failure(t(4));
        b.failure(t(4));
        b.success();
        b.failure(t(4));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_lost_probe_is_retried_after_a_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let t = |s: u64| Timestamp::from_nanos(s * 1_000_000_000);
        b.failure(t(0));
        assert!(b.allow(t(1))); // probe, never reported
        assert!(!b.allow(t(1)));
        assert!(b.allow(t(2)));
    }
}
