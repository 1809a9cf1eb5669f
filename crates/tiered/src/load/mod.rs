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
pub mod lease;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;

use crate::cache::Inner;
use crate::clock::Timestamp;
use crate::entry::{Entry, Freshness};
use crate::error::{BoxError, Error};
use crate::invalidate::TagId;
use crate::l2::L2Write;
use crate::options::{Options, MAX_TTL};
use crate::Value;

use flight::{Flight, Outcome};

/// The values a load produced, by key; a requested key that is missing is "absent".
pub(crate) type Loaded<V> = HashMap<String, V>;
/// A loader, type-erased: called once, inside the load task, with the keys the
/// task is loading.
pub(crate) type LoaderCall<V> = Box<
    dyn FnOnce(Vec<String>) -> Pin<Box<dyn Future<Output = Result<Loaded<V>, BoxError>> + Send>>
        + Send,
>;

/// What a load produced for one job: its index, the value, and the entry to
/// install (`None`: an "absent" that is not cached).
type Produced<V> = (usize, Option<Arc<V>>, Option<Entry<V>>);

/// One key a load task is responsible for.
pub(crate) struct Job<V> {
    pub key: Arc<str>,
    pub flight: Arc<Flight<V>>,
    /// The entry this load replaces, if it may be served instead on failure (stale
    /// within grace) or is being refreshed ahead of expiry.
    pub previous: Option<Arc<Entry<V>>>,
}

/// A load task's state, owned by the spawned future from the moment it is
/// created. If the task is dropped before publishing — runtime shutdown, even
/// before its first poll — `Drop` unregisters its flights, so their waiters see
/// `LoadAborted` and the next caller loads again.
pub(crate) struct LoadTask<V> {
    pub inner: Arc<Inner<V>>,
    pub jobs: Vec<Job<V>>,
    pub opts: Arc<Options>,
    pub born: u64,
    pub refresh: bool,
    published: bool,
}

impl<V> Drop for LoadTask<V> {
    fn drop(&mut self) {
        if !self.published {
            for job in &self.jobs {
                self.inner
                    .flights
                    .lock(&job.key)
                    .finish(&job.key, &job.flight);
            }
        }
    }
}

impl<V: Value> LoadTask<V> {
    pub(crate) fn new(
        inner: Arc<Inner<V>>,
        jobs: Vec<Job<V>>,
        opts: Arc<Options>,
        born: u64,
        refresh: bool,
    ) -> Self {
        LoadTask {
            inner,
            jobs,
            opts,
            born,
            refresh,
            published: false,
        }
    }

    /// Asks L2 for the task's keys, runs one loader call for the keys L2 could
    /// not answer, writes their results to L2 then L1, and publishes each key's
    /// outcome.
    pub(crate) async fn run(mut self, call: LoaderCall<V>) {
        let inner = Arc::clone(&self.inner);
        let opts = Arc::clone(&self.opts);
        // A load's version is taken when it starts: a `set` made while the
        // loader ran has a newer one, so this load can never overwrite it in L2.
        let version = inner.next_version();
        let mut jobs: Vec<usize> = (0..self.jobs.len()).collect();
        // Stale entries found in L2 (past fresh, within grace) for keys this
        // instance has nothing for: the fail-safe fallback if the loader fails.
        let mut fallbacks: Vec<Option<Entry<V>>> = self.jobs.iter().map(|_| None).collect();
        let l2 = match &inner.l2 {
            Some(l2) if inner.l2_judgeable().await => Some(l2),
            Some(l2) => {
                l2.miss(self.jobs.len());
                None
            }
            None => None,
        };
        if let Some(l2) = l2 {
            let keys: Vec<&str> = self.jobs.iter().map(|j| &*j.key).collect();
            let found = l2.fetch::<V>(&keys).await;
            let now = inner.clock.now();
            jobs.clear();
            for (i, decoded) in found.into_iter().enumerate() {
                let job = &self.jobs[i];
                let entry =
                    decoded.and_then(|d| inner.entry_from_l2(&job.key, d, &opts, self.born, now));
                match entry {
                    Some(entry) if entry.serves_from_l2(now, self.refresh) => {
                        l2.hit();
                        let value = entry.value.clone();
                        inner.complete(job, Ok(value), Some(entry), now);
                    }
                    other => {
                        l2.miss(1);
                        if job.previous.is_none() {
                            fallbacks[i] = other.filter(|e| e.freshness(now) == Freshness::Stale);
                        }
                        jobs.push(i);
                    }
                }
            }
            if jobs.is_empty() {
                self.published = true;
                return;
            }
        }

        // One load per key across instances, if asked for (single-key loads).
        let mut holder = None;
        // Only tasks of one key: a refresh flag (which says "keep serving the
        // current value if someone else refreshes") then concerns that key.
        let single = self.jobs.len() == 1;
        if let (true, true, Some(l2), &[i]) = (opts.lease, single, l2, &jobs[..]) {
            let job = &self.jobs[i];
            match inner
                .coordinate(l2, job, &mut fallbacks[i], &opts, self.born, self.refresh)
                .await
            {
                lease::Coordinated::Load(h) => holder = h,
                lease::Coordinated::Done => {
                    self.published = true;
                    return;
                }
            }
        }

        inner.recorder.load_started(self.refresh);
        let started = inner.clock.now();
        let wall = Instant::now();
        let keys = jobs.iter().map(|&i| self.jobs[i].key.to_string()).collect();
        let result = call_loader(call, keys, opts.hard_timeout).await;
        let now = inner.clock.now();
        let duration = now.saturating_since(started);
        inner.recorder.load_finished(wall.elapsed(), result.is_ok());

        match result {
            Ok(mut loaded) => {
                // Re-declare dependencies at install time: their records must
                // outlive the entries, whose lives start now, not at load start.
                inner
                    .invalidations
                    .declare_dependencies(&opts.depends_on, now);
                let entries: Vec<Produced<V>> = jobs
                    .iter()
                    .map(|&i| {
                        let key = &self.jobs[i].key;
                        let value = loaded.remove(&**key).map(Arc::new);
                        let entry = inner
                            .build_entry(key, value.clone(), &opts, self.born, now, duration)
                            // Created when the loader started reading: an
                            // invalidation made while it ran is newer.
                            .map(|e| Entry {
                                version,
                                created: started,
                                ..e
                            });
                        (i, value, entry)
                    })
                    .collect();
                let written = self.write_l2(&entries, holder.as_ref()).await;
                for (i, value, entry) in entries {
                    inner.complete(&self.jobs[i], Ok(value), entry, now);
                }
                self.retract_fenced(written, version).await;
                if let Some(holder) = holder.take() {
                    if holder.release().await {
                        inner.announce_filled(&self.jobs[0].key, now);
                    }
                }
            }
            Err(error) => {
                tracing::debug!(cache = %inner.namespace, %error, "load failed");
                if let Some(holder) = holder.take() {
                    // Let another instance try (and wake its waiters to do so).
                    if holder.release().await {
                        inner.announce_filled(&self.jobs[0].key, now);
                    }
                }
                let until = now.saturating_add(opts.failsafe_backoff);
                for &i in &jobs {
                    let job = &self.jobs[i];
                    // Whoever serves the previous value meanwhile (stale fallback or
                    // a fresh entry whose refresh failed), the loader is left alone
                    // for the back-off period.
                    if let Some(previous) = &job.previous {
                        previous.back_off_until(until);
                    }
                    match fallbacks[i].take() {
                        // Fail-safe across instances: another instance's value,
                        // stale but within its grace window, instead of the
                        // error; installed here and backed off like our own.
                        Some(stale) => {
                            stale.back_off_until(until);
                            inner.recorder.stale();
                            let value = stale.value.clone();
                            inner.complete(job, Ok(value), Some(stale), now);
                        }
                        None => inner.complete(job, Err(error.clone()), None, now),
                    }
                }
            }
        }
        self.published = true;
    }

    /// Writes the loaded entries that may still be installed to L2 (before L1,
    /// so another instance missing L1 finds them). A key found absent with no
    /// cached "absent" is deleted from L2 if it had an older value there.
    /// Returns the jobs whose entries were written, with their entries' tags.
    /// With a lease `holder`, the write is made only while the lease holds.
    async fn write_l2(
        &self,
        entries: &[Produced<V>],
        holder: Option<&lease::Holder>,
    ) -> Vec<(usize, Box<[TagId]>)> {
        let Some(l2) = &self.inner.l2 else {
            return Vec::new();
        };
        let mut writes = Vec::new();
        let mut written = Vec::new();
        let mut absent = Vec::new();
        for (i, value, entry) in entries {
            let job = &self.jobs[*i];
            match entry {
                Some(entry)
                    if !job.flight.is_fenced() && self.inner.invalidations.may_install(entry) =>
                {
                    if let Some(w) = l2.encode(&job.key, &entry.meta(), value.as_deref()) {
                        writes.push(w);
                        written.push((*i, entry.tags.clone()));
                    }
                }
                Some(_) => {}
                None if !job.flight.is_fenced() => absent.push(&*job.key),
                None => {}
            }
        }
        // (A lease holder leaves L2 alone here: if it stalled past its lease,
        // a plain delete could remove a newer holder's value.)
        if !absent.is_empty() && holder.is_none() {
            l2.remove(&absent).await;
        }
        if !writes.is_empty() {
            self.inner.mark_dependencies(&self.opts.depends_on).await;
        }
        match (holder, <[L2Write; 1]>::try_from(writes)) {
            (Some(holder), Ok([write])) => {
                if !holder.install(write).await {
                    // The lease was lost (we stalled past it): a newer holder
                    // owns the key now; write nothing.
                    written.clear();
                }
            }
            (_, Ok(one)) => {
                l2.write(one.into()).await;
            }
            (_, Err(writes)) => {
                l2.write(writes).await;
            }
        }
        written
    }

    /// A job whose entry went to L2 but was fenced (invalidated) by the time it
    /// would install: take the L2 copy back, unless something newer replaced it.
    async fn retract_fenced(&self, written: Vec<(usize, Box<[TagId]>)>, version: u64) {
        let Some(l2) = &self.inner.l2 else {
            return;
        };
        for (i, tags) in written {
            let job = &self.jobs[i];
            if job.flight.is_fenced() || self.inner.invalidations.outdated(self.born, &tags) {
                l2.retract(&job.key, version).await;
            }
        }
    }
}

impl<V: Value> Inner<V> {
    /// Installs `entry` (unless the key was invalidated during the load), ends the
    /// flight and tells its waiters.
    fn complete(&self, job: &Job<V>, outcome: Outcome<V>, entry: Option<Entry<V>>, now: Timestamp) {
        {
            let mut registry = self.flights.lock(&job.key);
            let fenced = job.flight.is_fenced();
            match entry {
                Some(entry) if fenced || !self.invalidations.may_install(&entry) => {
                    self.recorder.fenced()
                }
                Some(entry) => self.store(Arc::clone(&job.key), entry, now),
                // The key turned out absent and absence is not cached: whatever
                // L1 still holds for it is outdated — drop it, so it is neither
                // served fresh nor used as a fail-safe fallback.
                None if !fenced && matches!(outcome, Ok(None)) => {
                    if let Some(old) = self.l1.remove(&job.key) {
                        old.revoke();
                    }
                }
                None => {}
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
            version: 0,
            created: now,
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
            revoked: Default::default(),
        })
    }

    /// An L1 entry for an envelope read from L2, unless it was invalidated
    /// here since it was created or is past its grace window. Whether it may be
    /// served fresh is [`Entry::serves_from_l2`].
    pub(crate) fn entry_from_l2(
        &self,
        key: &str,
        decoded: crate::l2::envelope::Decoded<V>,
        opts: &Options,
        born: u64,
        now: Timestamp,
    ) -> Option<Entry<V>> {
        let meta = decoded.meta;
        // Times come from Redis: a lifetime no cache hands out is refused
        // rather than trusted (it would also stop invalidation records from
        // ever being pruned).
        if meta.stale_until.saturating_since(now) > MAX_TTL.saturating_mul(2) {
            return None;
        }
        let tags: Box<[TagId]> = meta.tags.iter().map(|t| TagId::from(t.as_str())).collect();
        if self.invalidations.outdated_at(meta.created, &tags) {
            return None;
        }
        // The entry depends on these keys: removing one here must invalidate
        // it, as if it had been loaded here.
        let depends_on: Vec<String> = tags
            .iter()
            .filter_map(|t| t.strip_prefix("k:"))
            .map(str::to_owned)
            .collect();
        self.invalidations.declare_dependencies(&depends_on, now);
        let value = decoded.value.map(Arc::new);
        let weight = match &value {
            // Weighing can cost a full traversal of the value; only L1 needs it.
            Some(v) if self.l1_enabled => (self.weigher)(key, v),
            Some(_) => 0,
            None => NEGATIVE_WEIGHT,
        };
        let entry = Entry {
            value,
            born,
            version: meta.version,
            created: meta.created,
            refresh_at: meta.refresh_at,
            fresh_until: meta.fresh_until,
            stale_until: meta.stale_until,
            ttl: meta.ttl,
            load_duration: meta.load_duration,
            xfetch_beta: opts.xfetch,
            tags,
            weight: weight.saturating_add(key.len() as u64),
            adaptive: opts.adaptive_ttl,
            hits: Default::default(),
            retry_after: Default::default(),
            validated_through: Default::default(),
            revoked: Default::default(),
        };
        if entry.is_gone(now) {
            return None;
        }
        self.invalidations
            .note_lifetime(entry.stale_until.saturating_since(now));
        Some(entry)
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

/// A tokio sleep until `deadline`, or `None` when the runtime has timers disabled
/// (tokio panics on creating a timer then; the cache reports it instead of
/// dying).
pub(crate) fn sleep_until(deadline: tokio::time::Instant) -> Option<tokio::time::Sleep> {
    std::panic::catch_unwind(|| tokio::time::sleep_until(deadline)).ok()
}

/// Calls the loader, enforcing the hard timeout and turning a panic into an error.
async fn call_loader<V>(
    call: LoaderCall<V>,
    keys: Vec<String>,
    hard_timeout: Option<Duration>,
) -> Result<Loaded<V>, Error> {
    // The call itself is inside the guarded future: a loader that panics before
    // returning its future is caught too.
    let guarded = AssertUnwindSafe(async move { call(keys).await }).catch_unwind();
    let result = match hard_timeout {
        Some(limit) => {
            let Some(sleep) = sleep_until(tokio::time::Instant::now() + limit) else {
                return Err(Error::TimersDisabled);
            };
            match futures_util::future::select(std::pin::pin!(guarded), std::pin::pin!(sleep)).await
            {
                Either::Left((result, _)) => result,
                // Dropping the loader future here is what cancels it.
                Either::Right(_) => return Err(Error::Timeout(limit)),
            }
        }
        None => guarded.await,
    };
    match result {
        Ok(Ok(loaded)) => Ok(loaded),
        Ok(Err(e)) => Err(Error::from_loader(e)),
        Err(_panic) => Err(Error::LoaderPanicked),
    }
}
