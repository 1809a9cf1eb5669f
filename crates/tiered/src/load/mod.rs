//! Loading: one loader call per key at a time, run as its own task.
//!
//! * [`flight`] — the single-flight registry (who is loading what).
//! * [`failsafe`] — how a caller waits: soft timeout and stale fallback.
//! * this module — the load task itself: call the loader (with its hard timeout,
//!   catching panics), measure it, build entries and install them unless fenced.
//!
//! # Why a task
//!
//! A load runs as a spawned tokio task, not inside the caller's future, so that:
//! a caller that is cancelled (its request dropped) does not cancel the load other
//! callers are waiting on; a soft timeout can hand a caller the stale value while
//! the load finishes in the background; and a background refresh has somewhere to
//! run. The price is that loaders must be `Send + 'static` (clone what they need,
//! e.g. an `Arc` of the database pool, into the closure).

pub mod failsafe;
pub mod flight;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::cache::Inner;
use crate::clock::Timestamp;
use crate::entry::Entry;
use crate::error::{BoxError, Error};
use crate::options::Options;
use crate::Value;

use flight::{Flight, Outcome};

/// The values a load produced, by key; a requested key that is missing is "absent".
pub(crate) type Loaded<V> = HashMap<String, V>;
/// A loader, type-erased: called once, inside the load task.
pub(crate) type LoaderCall<V> =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<Loaded<V>, BoxError>> + Send>> + Send>;

/// One key a load task is responsible for.
pub(crate) struct Job<V> {
    pub key: Arc<str>,
    pub flight: Arc<Flight<V>>,
    /// The entry this load replaces, if it may be served instead on failure (stale
    /// within grace) or is being refreshed ahead of expiry.
    pub previous: Option<Arc<Entry<V>>>,
}

/// Unregisters the flights of a load task that dies before publishing (so its
/// waiters see `LoadAborted` and the next caller loads again).
struct AbortGuard<'a, V> {
    inner: &'a Inner<V>,
    jobs: &'a [Job<V>],
    armed: bool,
}

impl<V> Drop for AbortGuard<'_, V> {
    fn drop(&mut self) {
        if self.armed {
            let mut registry = self.inner.flights.lock();
            for job in self.jobs {
                registry.finish(&job.key, &job.flight);
            }
        }
    }
}

impl<V: Value> Inner<V> {
    /// Runs one loader call for `jobs` and publishes each key's outcome.
    pub(crate) async fn run_load(
        self: Arc<Self>,
        jobs: Vec<Job<V>>,
        opts: Arc<Options>,
        born: u64,
        refresh: bool,
        call: LoaderCall<V>,
    ) {
        let mut guard = AbortGuard {
            inner: &self,
            jobs: &jobs,
            armed: true,
        };
        self.recorder.load_started(refresh);
        let started = self.clock.now();
        let wall = Instant::now();
        let result = call_loader(call, opts.hard_timeout).await;
        let now = self.clock.now();
        let duration = now.saturating_since(started);
        self.recorder.load_finished(wall.elapsed(), result.is_ok());

        match result {
            Ok(mut loaded) => {
                for job in &jobs {
                    let value = loaded.remove(&*job.key).map(Arc::new);
                    let entry =
                        self.build_entry(&job.key, value.clone(), &opts, born, now, duration);
                    self.complete(job, Ok(value), entry, now);
                }
            }
            Err(error) => {
                tracing::debug!(cache = %self.namespace, %error, "load failed");
                let until = now.saturating_add(opts.failsafe_backoff);
                for job in &jobs {
                    // Whoever serves the previous value meanwhile (stale fallback or
                    // a fresh entry whose refresh failed), the loader is left alone
                    // for the back-off period.
                    if let Some(previous) = &job.previous {
                        previous.back_off_until(until);
                    }
                    self.complete(job, Err(error.clone()), None, now);
                }
            }
        }
        guard.armed = false;
    }

    /// Installs `entry` (unless the key was invalidated during the load), ends the
    /// flight and tells its waiters.
    fn complete(&self, job: &Job<V>, outcome: Outcome<V>, entry: Option<Entry<V>>, now: Timestamp) {
        {
            let mut registry = self.flights.lock();
            if let Some(entry) = entry {
                if job.flight.is_fenced() || !self.invalidations.may_install(&entry) {
                    self.recorder.fenced();
                } else {
                    self.store(Arc::clone(&job.key), entry, now);
                }
            }
            registry.finish(&job.key, &job.flight);
        }
        job.flight.publish(outcome);
    }

    /// The entry for a loaded value, or `None` for an "absent" that is not cached.
    pub(crate) fn build_entry(
        &self,
        key: &str,
        value: Option<Arc<V>>,
        opts: &Options,
        born: u64,
        now: Timestamp,
        load_duration: Duration,
    ) -> Option<Entry<V>> {
        let (ttl, grace, weight) = match &value {
            Some(v) => (
                self.adaptive_ttl(key, opts),
                opts.grace,
                (self.weigher)(key, v),
            ),
            // A cached "absent" has no grace: there is nothing to fall back to.
            None => (opts.negative_ttl?, Duration::ZERO, NEGATIVE_WEIGHT),
        };
        let lifetime = ttl + jitter(opts.ttl_jitter);
        self.invalidations.note_lifetime(lifetime + grace);
        let fresh_until = now.saturating_add(lifetime);
        let refresh_at = match opts.eager_refresh {
            Some(f) => now.saturating_add(lifetime.mul_f64(f)),
            None => Timestamp::MAX,
        };
        Some(Entry {
            value,
            born,
            refresh_at,
            fresh_until,
            stale_until: fresh_until.saturating_add(grace),
            ttl,
            load_duration,
            xfetch_beta: opts.xfetch,
            tags: self.entry_tags(opts),
            weight: weight.saturating_add(key.len() as u64),
            adaptive: opts.adaptive_ttl,
            hits: Default::default(),
            retry_after: Default::default(),
            validated_through: Default::default(),
        })
    }

    /// Adaptive TTL: double the previous entry's TTL if it was hit enough.
    fn adaptive_ttl(&self, key: &str, opts: &Options) -> Duration {
        let Some(rule) = opts.adaptive_ttl else {
            return opts.ttl;
        };
        match self.l1.peek(key) {
            Some(prev)
                if prev.hits.load(std::sync::atomic::Ordering::Relaxed)
                    >= u64::from(rule.min_hits) =>
            {
                prev.ttl.saturating_mul(2).clamp(opts.ttl, rule.max_ttl)
            }
            _ => opts.ttl,
        }
    }
}

/// Nominal weight of a cached "absent" (the key length is added on top).
const NEGATIVE_WEIGHT: u64 = 16;

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        max.mul_f64(fastrand::f64())
    }
}

/// Calls the loader, enforcing the hard timeout and turning a panic into an error.
async fn call_loader<V>(
    call: LoaderCall<V>,
    hard_timeout: Option<Duration>,
) -> Result<Loaded<V>, Error> {
    // The call itself is inside the guarded future: a loader that panics before
    // returning its future is caught too.
    let guarded = AssertUnwindSafe(async move { call().await }).catch_unwind();
    let result = match hard_timeout {
        Some(limit) => match tokio::time::timeout(limit, guarded).await {
            Ok(r) => r,
            // Dropping the loader future here is what cancels it.
            Err(_) => return Err(Error::Timeout(limit)),
        },
        None => guarded.await,
    };
    match result {
        Ok(Ok(loaded)) => Ok(loaded),
        Ok(Err(e)) => Err(Error::from_loader(e)),
        Err(_panic) => Err(Error::LoaderPanicked),
    }
}
