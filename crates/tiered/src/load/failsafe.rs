//! Fail-safe: where a stale entry gets served.
//!
//! A caller waiting on a load holds the stale entry it found (if any, and only if
//! still within its grace window). It serves that stale value instead of the
//! load's outcome when:
//!
//! * the load has not finished after the soft timeout (the load continues in the
//!   background and stores its result when it arrives);
//! * the load failed, panicked or hit its hard timeout. The error is not cached;
//!   the stale entry is marked to back off (by the load task, see [`crate::load`]) so the
//!   loader is not called again for `failsafe_backoff`.
//!
//! The other place stale values are served is the lookup itself: a stale entry
//! that is backing off is returned without starting a load (see `Cache::lookup`).

use std::sync::Arc;

use futures_util::future::{select, Either};
use tokio::time::Instant;

use crate::cache::Inner;
use crate::entry::Entry;
use crate::error::Result;
use crate::Value;

use super::flight::Ticket;
use super::sleep_until;

impl<V: Value> Inner<V> {
    /// Waits for a load's outcome, falling back to `stale` as described above.
    /// `soft_deadline` is when the soft timeout ends (one deadline for a whole
    /// batch, so N stale keys cannot wait N soft timeouts).
    pub(crate) async fn await_load(
        &self,
        ticket: Ticket<V>,
        stale: Option<Arc<Entry<V>>>,
        soft_deadline: Option<Instant>,
    ) -> Result<Option<Arc<V>>> {
        let mut outcome = std::pin::pin!(ticket.outcome());
        // Without timers (a runtime built without them) there is no soft timeout:
        // wait for the load, which its hard timeout reports.
        let sleep = match (&stale, soft_deadline) {
            (Some(_), Some(deadline)) => sleep_until(deadline),
            _ => None,
        };
        let outcome = match sleep {
            Some(sleep) => match select(outcome.as_mut(), std::pin::pin!(sleep)).await {
                Either::Left((outcome, _)) => outcome,
                Either::Right(_) => match self.serve_stale(stale.as_deref()) {
                    Some(value) => return Ok(value),
                    // The stale value expired or was revoked while we waited.
                    None => outcome.await,
                },
            },
            None => outcome.await,
        };
        match outcome {
            Ok(value) => Ok(value),
            Err(error) => match self.serve_stale(stale.as_deref()) {
                Some(value) => Ok(value),
                None => Err(error),
            },
        }
    }

    /// The stale value, if it may still be served (counted as a stale hit): within
    /// its grace window, not invalidated, and not removed or replaced since the
    /// caller found it — a removal during the load must not be undone here.
    pub(crate) fn serve_stale(&self, stale: Option<&Entry<V>>) -> Option<Option<Arc<V>>> {
        let stale = stale?;
        if stale.is_gone(self.clock.now())
            || stale.is_revoked()
            || !self.invalidations.is_valid(stale)
        {
            return None;
        }
        self.recorder.stale();
        Some(stale.value.clone())
    }
}
