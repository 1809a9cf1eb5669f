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
use std::time::Duration;

use crate::cache::Inner;
use crate::entry::Entry;
use crate::error::Result;
use crate::Value;

use super::flight::Ticket;

impl<V: Value> Inner<V> {
    /// Waits for a load's outcome, falling back to `stale` as described above.
    pub(crate) async fn await_load(
        &self,
        key: &str,
        ticket: Ticket<V>,
        stale: Option<Arc<Entry<V>>>,
        soft_timeout: Option<Duration>,
    ) -> Result<Option<Arc<V>>> {
        let mut outcome = std::pin::pin!(ticket.outcome());
        let outcome = match (&stale, soft_timeout) {
            (Some(_), Some(soft)) => match tokio::time::timeout(soft, &mut outcome).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => match self.serve_stale(key, stale.as_ref()) {
                    Some(value) => return Ok(value),
                    // The grace window closed while we waited: keep waiting.
                    None => outcome.await,
                },
            },
            _ => outcome.await,
        };
        match outcome {
            Ok(value) => Ok(value),
            Err(error) => match self.serve_stale(key, stale.as_ref()) {
                Some(value) => Ok(value),
                None => Err(error),
            },
        }
    }

    /// The stale value, if it may still be served (counted as a stale hit): within
    /// its grace window, not invalidated, and not removed or replaced in L1 since
    /// the caller found it — a removal during the load must not be undone here.
    pub(crate) fn serve_stale(
        &self,
        key: &str,
        stale: Option<&Arc<Entry<V>>>,
    ) -> Option<Option<Arc<V>>> {
        let stale = stale?;
        if stale.is_gone(self.clock.now())
            || !self.invalidations.is_valid(stale)
            || !self
                .l1
                .peek(key)
                .is_some_and(|current| Arc::ptr_eq(&current, stale))
        {
            return None;
        }
        self.recorder.stale();
        Some(stale.value.clone())
    }
}
