//! One load per key across every instance: a lease on the key in Redis.
//!
//! In-process single-flight ([`super::flight`]) makes one load per key per
//! *instance*; with 20 instances a cold hot key still costs 20 database
//! queries. With [`Options::distributed`](crate::Options::distributed), the
//! load task of the first instance to miss also takes a **lease** in Redis
//! (`SET NX PX` with a random token):
//!
//! * **The holder** loads, renewing the lease every [`LEASE_TTL`]` / 3` while
//!   the loader runs, and installs the value in L2 only if it still holds the
//!   lease (the *fencing check* on its random 64-bit token: a holder that
//!   stalled past its lease writes nothing). Then it releases the lease with a
//!   compare-and-delete on its token (so an expired holder can never release
//!   someone else's lease) and, if another instance waited, tells the others
//!   through the backplane.
//! * **Waiters** (other instances) do not query the database. They wait for
//!   the value to land in L2, woken by the holder's backplane message, with a
//!   fallback poll every [`POLL`] (100 ms; no tight loop). Each poll also
//!   tries to take the lease, so if the holder died (its lease expired),
//!   exactly one waiter takes over and loads.
//! * **Giving up**: a waiter waits at most the loader's hard timeout plus
//!   [`LEASE_TTL`] (by default 30 s + 2 s). Then it serves a stale value if
//!   one is within its grace window, else loads itself.
//! * **Refresh-ahead** (eager refresh, XFetch) takes the lease too; an
//!   instance that finds it held skips its refresh and keeps serving the
//!   current value, since another instance is refreshing for everyone.
//! * **Redis down**: any error taking the lease degrades to in-process
//!   single-flight. Callers are never blocked on an unreachable lock.
//!
//! The lease applies to single-key loads (`get_or_load`, and background
//! refreshes of one key); a batch loader call (`get_many_or_load`) is
//! coordinated in-process only.
//!
//! # Worst cases
//!
//! * A waiter gives up after the hard timeout + [`LEASE_TTL`]; if it then
//!   takes over a hung holder's key and its own loader hangs too, its callers
//!   wait up to about twice the hard timeout (use a soft timeout with a grace
//!   window to serve stale instead).
//! * When the holder's load finds nothing (and absence is not cached) or
//!   fails, the waiters are woken and the next one loads in turn.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Job;
use crate::backplane::Change;
use crate::cache::Inner;
use crate::clock::Timestamp;
use crate::entry::{Entry, Freshness};
use crate::l2::tier::Tier;
use crate::l2::L2Write;
use crate::options::{Options, DEFAULT_HARD_TIMEOUT};
use crate::Value;

/// How long a lease lasts without renewal: a dead holder's lease is free
/// again after at most this long.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// Waiters' fallback poll interval.
pub const POLL: Duration = Duration::from_millis(100);

/// A lease this instance holds. Renewed in the background until dropped.
pub(crate) struct Holder {
    l2: Arc<Tier>,
    lock: String,
    waiting: String,
    token: u64,
    renewer: JoinHandle<()>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Holder {
    /// Stores `write` if the lease is still ours. `false` if it was lost (or
    /// L2 failed): nothing was written.
    pub(crate) async fn install(&self, write: L2Write) -> bool {
        let l2 = &self.l2;
        matches!(
            l2.direct(l2.backend().set_if_leased(write, &self.lock, self.token))
                .await,
            Ok(Some(_))
        )
    }

    /// Releases the lease (compare-and-delete on the token). Returns whether
    /// another instance waited for it (then the value is announced).
    pub(crate) async fn release(self) -> bool {
        let l2 = &self.l2;
        matches!(
            l2.direct(
                l2.backend()
                    .lease_release(&self.lock, &self.waiting, self.token)
            )
            .await,
            Ok(Some(true))
        )
    }
}

/// What taking the lease gave.
enum Taken {
    Held(Holder),
    Busy,
    /// Redis unreachable (or a key whose braces rule out a lease): load
    /// in-process.
    Unavailable,
}

async fn take(l2: &Arc<Tier>, key: &str) -> Taken {
    let Some((lock, waiting)) = l2.layout.lease(key) else {
        return Taken::Unavailable;
    };
    // The fencing token: random, so no two leases of a key ever share one
    // (a counter could restart if its key were lost).
    let token = fastrand::u64(1..);
    match l2
        .direct(
            l2.backend()
                .lease_acquire(&lock, &waiting, token, LEASE_TTL),
        )
        .await
    {
        Ok(true) => {
            let renewer = tokio::spawn(renew(Arc::clone(l2), lock.clone(), token));
            Taken::Held(Holder {
                l2: Arc::clone(l2),
                lock,
                waiting,
                token,
                renewer,
            })
        }
        Ok(false) => Taken::Busy,
        Err(_) => Taken::Unavailable,
    }
}

/// Renews the lease every third of its lifetime until the holder drops it.
/// Stops when Redis says the lease is gone; a failed *call* is retried (a slow
/// or briefly unreachable Redis must not cost the lease while it still runs).
async fn renew(l2: Arc<Tier>, lock: String, token: u64) {
    loop {
        let Some(sleep) = crate::load::sleep_until(tokio::time::Instant::now() + LEASE_TTL / 3)
        else {
            return;
        };
        sleep.await;
        let renewed = l2
            .direct(l2.backend().lease_renew(&lock, token, LEASE_TTL))
            .await;
        if let Ok(false) = renewed {
            return; // lost: the fencing check refuses our write
        }
    }
}

/// What the load task should do after coordinating with other instances.
pub(crate) enum Coordinated {
    /// Call the loader, holding this lease (`None`: in-process only).
    Load(Option<Holder>),
    /// The job was answered (another instance's value, or a stale one).
    Done,
}

impl<V: Value> Inner<V> {
    /// Coordinates `job`'s load with the other instances (see the module docs).
    pub(crate) async fn coordinate(
        &self,
        l2: &Arc<Tier>,
        job: &Job<V>,
        fallback: &mut Option<Entry<V>>,
        opts: &Options,
        born: u64,
        refresh: bool,
    ) -> Coordinated {
        let key = &*job.key;
        match take(l2, key).await {
            Taken::Held(holder) => {
                // Double-checked: the previous holder may have stored the value
                // and released the lease between our L2 read and now.
                if self.answer_from_l2(l2, job, opts, born, refresh).await {
                    holder.release().await;
                    return Coordinated::Done;
                }
                return Coordinated::Load(Some(holder));
            }
            Taken::Unavailable => return Coordinated::Load(None),
            Taken::Busy if refresh => {
                // Another instance refreshes this key for everyone: keep
                // serving what we have (and do not ask again on every hit).
                let now = self.clock.now();
                if let Some(previous) = &job.previous {
                    previous.back_off_until(now.saturating_add(LEASE_TTL));
                }
                let value = job.previous.as_ref().and_then(|p| p.value.clone());
                self.complete(job, Ok(value), None, now);
                return Coordinated::Done;
            }
            Taken::Busy => {}
        }
        let wake = self.backplane.as_ref().map(|link| link.waiter(key));
        let limit = opts.hard_timeout.unwrap_or(DEFAULT_HARD_TIMEOUT) + LEASE_TTL;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if job.flight.is_fenced() {
                // Invalidated here meanwhile: whatever we would load or take
                // is not stored; stop holding others up.
                return Coordinated::Load(None);
            }
            let notified = wake.as_ref().map(|w| w.notified());
            if self.answer_from_l2(l2, job, opts, born, refresh).await {
                return Coordinated::Done;
            }
            // The holder gone? Then exactly one waiter gets the lease.
            match take(l2, key).await {
                Taken::Held(holder) => {
                    if self.answer_from_l2(l2, job, opts, born, refresh).await {
                        holder.release().await;
                        return Coordinated::Done;
                    }
                    return Coordinated::Load(Some(holder));
                }
                Taken::Unavailable => return Coordinated::Load(None),
                Taken::Busy => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let Some(sleep) = crate::load::sleep_until((now + POLL).min(deadline)) else {
                break;
            };
            match notified {
                Some(notified) => {
                    futures_util::future::select(std::pin::pin!(notified), std::pin::pin!(sleep))
                        .await;
                }
                None => sleep.await,
            }
        }
        // Waited long enough: a stale value within grace, else load ourselves.
        let now = self.clock.now();
        if job.flight.is_fenced() {
            return Coordinated::Load(None);
        }
        let usable = |e: &Entry<V>| {
            e.freshness(now) == Freshness::Stale
                && !e.is_revoked()
                && self.invalidations.is_valid(e)
        };
        let stale = match job.previous.clone().filter(|p| usable(p)) {
            Some(p) => Some((p.value.clone(), None)),
            None => fallback
                .take()
                .filter(|e| usable(e))
                .map(|e| (e.value.clone(), Some(e))),
        };
        if let Some((value, entry)) = stale {
            self.recorder.stale();
            if let Some(e) = &entry {
                e.back_off_until(now.saturating_add(opts.failsafe_backoff));
            }
            self.complete(job, Ok(value), entry, now);
            return Coordinated::Done;
        }
        Coordinated::Load(None)
    }

    /// If L2 now holds a usable value for `job`, completes the job with it.
    async fn answer_from_l2(
        &self,
        l2: &Arc<Tier>,
        job: &Job<V>,
        opts: &Options,
        born: u64,
        refresh: bool,
    ) -> bool {
        let key = &*job.key;
        let Some(decoded) = l2.fetch::<V>(&[key]).await.pop().flatten() else {
            return false;
        };
        let now = self.clock.now();
        match self.entry_from_l2(key, decoded, opts, born, now) {
            Some(entry) if entry.serves_from_l2(now, refresh) => {
                l2.hit();
                let value = entry.value.clone();
                self.complete(job, Ok(value), Some(entry), now);
                true
            }
            _ => false,
        }
    }

    /// Tells the other instances that `key` has a value in L2 (wakes waiters).
    pub(crate) fn announce_filled(&self, key: &str, now: Timestamp) {
        self.announce(Change::Filled(key.to_owned()), now);
    }
}
