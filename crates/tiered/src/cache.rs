//! [`Cache`]: the public facade.
//!
//! Reading order for a newcomer: [`Cache::get_or_load`] → `lookup` (what L1 says
//! about a key) → [`crate::load::flight`] (joining or starting a load) →
//! [`crate::load`] (the load task) → [`crate::load::failsafe`] (stale fallback).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backplane::subscriber::Link;
use crate::backplane::Change;
use crate::builder::CacheBuilder;
use crate::clock::{Clock, Timestamp};
use crate::entry::{Entry, Freshness};
use crate::error::{BoxError, Error, Result};
use crate::filter::BloomFilter;
use crate::invalidate::events::Template;
use crate::invalidate::{self, Birth, Invalidations, TagId};
use crate::key::validate_key;
use crate::l1::L1;
use crate::l2::tier::Tier;
use crate::load::flight::{Flights, Joined, Ticket};
use crate::load::{Job, LoadTask, Loaded, LoaderCall};
use crate::options::{validate_tag, Options};
use crate::stats::{Recorder, Stats};
use crate::topk::{HotKey, TopKeys};
use crate::write::WriteStats;
use crate::Value;

/// Weighs a value for the L1 byte budget.
pub(crate) type Weigher<V> = Arc<dyn Fn(&str, &V) -> u64 + Send + Sync>;

/// A typed, multi-tier cache. Cheap to clone: clones share the same cache.
///
/// Build one with [`Cache::builder`]. Values are stored decoded behind an `Arc`:
/// reads return `Arc<V>`, and an L1 hit never deserializes or copies.
///
/// # Concurrency
///
/// Every method takes `&self` and may be called from many tasks at once. Loads
/// are single-flight per key: concurrent callers of a missing key share one loader
/// call. (The one exception: a load fenced by an invalidation may still be
/// finishing while the load that replaces it runs; only the replacement stores.)
///
/// # Cancellation
///
/// Dropping a loading call's future stops that caller waiting; the load itself
/// goes on (other callers may be waiting on it) and stores its result.
pub struct Cache<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// The shared state behind a [`Cache`].
pub(crate) struct Inner<V> {
    pub namespace: Arc<str>,
    pub clock: Arc<dyn Clock>,
    pub l1: L1<V>,
    pub defaults: Arc<Options>,
    pub weigher: Weigher<V>,
    pub filter: Option<Arc<BloomFilter>>,
    pub invalidations: Invalidations,
    pub flights: Flights<V>,
    pub recorder: Recorder,
    pub top: TopKeys,
    /// The distributed tier, if configured.
    pub l2: Option<Arc<Tier>>,
    /// `false`: nothing is kept in process memory (every read goes to L2).
    pub l1_enabled: bool,
    /// The link to the other instances, if any.
    pub backplane: Option<Arc<Link>>,
    /// Event rules: event name → key and pattern templates.
    pub events: parking_lot::RwLock<HashMap<String, Vec<Template>>>,
    /// The counters of the [`Writer`](crate::write::Writer) attached, if any.
    pub write_stats: parking_lot::RwLock<Option<Arc<dyn Fn() -> WriteStats + Send + Sync>>>,
}

/// A stale entry a waiting caller may fall back on.
type Stale<V> = Option<Arc<Entry<V>>>;

/// What L1 says about a key.
enum Lookup<V> {
    /// Fresh: serve this value (`None`: a cached "absent"); the entry's own
    /// hit count is already recorded.
    Hit(Option<Arc<V>>),
    /// Fresh but due for a background refresh: serve, and refresh.
    RefreshAhead(Arc<Entry<V>>),
    /// Past fresh, within grace: a fallback for a load, or served as is while the
    /// key backs off after a failure.
    Stale(Arc<Entry<V>>),
    /// Nothing usable.
    Miss,
}

/// Progress of [`Cache::warm`], reported after each key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys finished so far.
    pub done: usize,
    /// Keys in total.
    pub total: usize,
    /// Keys that went through a load without error: loaded (present or absent),
    /// answered "absent" by the existence filter, or served stale because the
    /// load failed within the grace window.
    pub loaded: usize,
    /// Keys already fresh in the cache (not loaded again).
    pub skipped: usize,
    /// Keys whose load failed.
    pub failed: usize,
}

/// The result of [`Cache::warm`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WarmReport {
    /// The final counts.
    pub progress: WarmProgress,
    /// The keys that failed, with their errors.
    pub errors: Vec<(String, Error)>,
}

impl<V: Value> Cache<V> {
    /// Starts building a cache whose keys live in `namespace`.
    ///
    /// ```
    /// let cache = tiered::Cache::<String>::builder("users").build().unwrap();
    /// # drop(cache);
    /// ```
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder<V> {
        CacheBuilder::new(namespace.into())
    }

    pub(crate) fn from_arc(inner: Arc<Inner<V>>) -> Self {
        Cache { inner }
    }

    pub(crate) fn from_inner(inner: Inner<V>) -> Self {
        Cache {
            inner: Arc::new(inner),
        }
    }

    /// The cache's namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// A copy of the default options, to change for one call.
    pub fn options(&self) -> Options {
        Options::clone(&self.inner.defaults)
    }

    /// The fresh value at `key`, if any. Never loads; a stale value is not returned.
    /// `Ok(None)` also for a cached "absent".
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub async fn get(&self, key: &str) -> Result<Option<Arc<V>>> {
        validate_key(key)?;
        let inner = &self.inner;
        inner.connect();
        inner.top.record(key);
        match inner.lookup(key, inner.clock.now()) {
            Lookup::Hit(value) => Ok(inner.served(value)),
            Lookup::RefreshAhead(entry) => Ok(inner.hit(&entry)),
            Lookup::Stale(_) | Lookup::Miss => {
                inner.recorder.miss();
                Ok(inner.get_from_l2(key).await)
            }
        }
    }

    /// Whether a fresh value (not a cached "absent") is at `key`. Does not count as
    /// a request.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn contains(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let inner = &self.inner;
        let now = inner.clock.now();
        Ok(inner.l1.peek(key).is_some_and(|e| {
            e.value.is_some()
                && inner.invalidations.is_valid(&e)
                && matches!(e.freshness(now), Freshness::Fresh | Freshness::RefreshAhead)
        }))
    }

    /// Cache-aside / read-through with the default options: the value at `key`,
    /// loading it with `loader` on a miss. See [`get_or_load_with`](Self::get_or_load_with).
    ///
    /// # Errors
    ///
    /// See [`get_or_load_with`](Self::get_or_load_with).
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, loader: F) -> Result<Option<Arc<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let opts = OptionsRef::Shared(&self.inner.defaults);
        self.inner.get_or_load(key, opts, loader).await
    }

    /// The value at `key`, loading it with `loader` on a miss, with `opts`.
    ///
    /// The loader returns `Ok(Some(v))` for a value, `Ok(None)` for "no such
    /// thing" (cached for `negative_ttl` if set) or an error. Concurrent calls for
    /// the same key share one loader call. A fresh hit past the eager-refresh point
    /// (or chosen by XFetch) returns at once and refreshes in the background with
    /// this call's loader. If the load fails and a stale value is within its grace
    /// window, the stale value is returned instead of the error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] / [`Error::InvalidOption`] before anything happens;
    /// [`Error::Loader`], [`Error::LoaderPanicked`], [`Error::Timeout`] when the
    /// load failed and there was no stale value; [`Error::NoRuntime`] outside tokio.
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: &str,
        opts: &Options,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        opts.validate()?;
        self.inner
            .get_or_load(key, OptionsRef::Borrowed(opts), loader)
            .await
    }

    /// Batch read-through with the default options. See
    /// [`get_many_or_load_with`](Self::get_many_or_load_with).
    ///
    /// # Errors
    ///
    /// See [`get_many_or_load_with`](Self::get_many_or_load_with).
    pub async fn get_many_or_load<K, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<HashMap<String, Arc<V>>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let opts = Arc::clone(&self.inner.defaults);
        self.get_many_or_load_with(keys, &opts, loader).await
    }

    /// The values at `keys`, loading every key that missed with **one** loader
    /// call. The loader gets the missed keys — plus any hit keys past their
    /// refresh-ahead point, refreshed in the same call — and returns the values it
    /// found; a requested key it leaves out is "absent". Keys already being loaded
    /// by other calls are waited on, not loaded again. The soft timeout is one
    /// deadline for the whole call. The result holds the keys that have a value.
    ///
    /// # Errors
    ///
    /// As [`get_or_load_with`](Self::get_or_load_with); a load error is returned
    /// only if some key has no stale value to fall back on.
    pub async fn get_many_or_load_with<K, F, Fut, E>(
        &self,
        keys: &[K],
        opts: &Options,
        loader: F,
    ) -> Result<HashMap<String, Arc<V>>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        opts.validate()?;
        if keys.len() > MAX_BATCH_KEYS {
            return Err(Error::option(
                "keys",
                format!("at most {MAX_BATCH_KEYS} keys per call, got {}", keys.len()),
            ));
        }
        for key in keys {
            validate_key(key.as_ref())?;
            check_not_self_dependent(key.as_ref(), opts)?;
        }
        self.inner
            .get_many_or_load(keys, Arc::new(opts.clone()), loader)
            .await
    }

    /// Stores `value` at `key` with the default options. See [`set_with`](Self::set_with).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub async fn set(&self, key: &str, value: V) -> Result<()> {
        let opts = Arc::clone(&self.inner.defaults);
        self.set_with(key, value, &opts).await
    }

    /// Stores `value` at `key`: in L2 first (if configured), then in L1. A load
    /// of `key` already running will not overwrite it in either tier; entries
    /// that depend on `key` are invalidated; the key is added to the existence
    /// filter, if any. Of two `set`s racing on different instances, the newer
    /// (by version: the instance's clock, see [`crate::backplane`]) wins in
    /// every tier.
    ///
    /// If L2 cannot be reached, the call still succeeds: L1 has the value and
    /// the L2 write is kept and replayed when L2 is back (see [`crate::l2`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] / [`Error::InvalidOption`]; nothing is changed.
    pub async fn set_with(&self, key: &str, value: V, opts: &Options) -> Result<()> {
        validate_key(key)?;
        opts.validate()?;
        check_not_self_dependent(key, opts)?;
        let inner = &self.inner;
        inner
            .set_versioned(key, Arc::new(value), opts, inner.next_version())
            .await;
        Ok(())
    }

    /// Removes `key` from every tier (L2 first, then L1). A load of `key`
    /// already running will not store its result; entries that depend on `key`
    /// are invalidated. Returns whether an entry was removed from a tier.
    ///
    /// If L2 cannot be reached, the call still succeeds: the removal is kept
    /// (in memory, bounded — see [`crate::l2::pending`]) and replayed when L2 is
    /// back; meanwhile this instance does not read the key back from L2.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub async fn remove(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let inner = &self.inner;
        let removed = inner.remove_from_l1(key);
        let Some(l2) = inner.l2.clone() else {
            return Ok(removed);
        };
        // Fenced before the `DEL` (above) and after it (below): a load that
        // wrote the old value to L2 after the `DEL` sees the first fence and
        // retracts its write; a load that read the old value before the `DEL`
        // landed sees the second and stays out of L1. One task, so a caller
        // that stops waiting cannot leave this half done.
        inner.connect();
        let (inner, key) = (Arc::clone(inner), key.to_owned());
        let in_l2 = finish_in_task(async move {
            let in_l2 = l2.bury(&[&key]).await;
            inner.remove_from_l1(&key);
            let now = inner.clock.now();
            let keys = vec![key];
            inner.dependencies_changed(&keys, now).await;
            inner.announce(Change::Removed(keys), now);
            in_l2
        })
        .await;
        Ok(removed || in_l2.unwrap_or(false))
    }

    /// Removes all of `keys` from every tier, as [`remove`](Self::remove) does
    /// for one, with one L2 round trip and one backplane message.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for any key, or [`Error::InvalidOption`] for more
    /// than [`MAX_BATCH_KEYS`] keys; nothing is removed then.
    pub async fn remove_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<()> {
        if keys.len() > MAX_BATCH_KEYS {
            return Err(Error::option(
                "keys",
                format!("at most {MAX_BATCH_KEYS} keys per call, got {}", keys.len()),
            ));
        }
        for key in keys {
            validate_key(key.as_ref())?;
        }
        let mut keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_owned()).collect();
        keys.sort_unstable();
        keys.dedup();
        let inner = &self.inner;
        for key in &keys {
            inner.remove_from_l1(key);
        }
        let Some(l2) = inner.l2.clone() else {
            return Ok(());
        };
        inner.connect();
        let inner = Arc::clone(inner);
        // As in `remove`: fenced before and after the L2 delete, in one task.
        finish_in_task(async move {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            l2.bury(&refs).await;
            for key in &keys {
                inner.remove_from_l1(key);
            }
            let now = inner.clock.now();
            inner.dependencies_changed(&keys, now).await;
            inner.announce(Change::Removed(keys), now);
        })
        .await;
        Ok(())
    }

    /// Removes every key matching the glob `pattern` (Redis `MATCH` syntax:
    /// `*`, `?`, `[a-z]`, `\\x`; e.g. `user:42:*`) from every tier and every
    /// instance. L2 is walked with `SCAN` (never `KEYS`), on every master of a
    /// Cluster; this costs time in proportion to the namespace's size, so
    /// prefer tags for groups you invalidate often. Returns how many keys L2
    /// held.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for an empty or too long pattern;
    /// [`Error::L2`] if L2 could not be walked (this instance's L1, and the
    /// other instances' through the backplane, are still invalidated).
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        if pattern.is_empty() || pattern.len() > crate::MAX_KEY_LEN {
            return Err(Error::option("pattern", "must be 1 to MAX_KEY_LEN bytes"));
        }
        let inner = &self.inner;
        inner.connect();
        inner.remove_matching_from_l1(pattern);
        let Some(l2) = inner.l2.clone() else {
            return Ok(0);
        };
        let (inner, pattern) = (Arc::clone(inner), pattern.to_owned());
        let result = finish_in_task(async move {
            let removed = l2.remove_matching(&pattern).await;
            // Again after the walk: loads that read a key before it was deleted.
            inner.remove_matching_from_l1(&pattern);
            let now = inner.clock.now();
            inner.announce(Change::Pattern(pattern), now);
            removed
        })
        .await;
        match result {
            Some(removed) => Ok(removed?),
            None => Err(Error::LoadAborted),
        }
    }

    /// Declares that event `name` invalidates `templates`: keys with `{field}`
    /// placeholders, or glob patterns (see [`crate::invalidate::events`]).
    /// Adds to the rules already declared for `name`.
    ///
    /// ```
    /// # let cache = tiered::Cache::<String>::builder("posts").build().unwrap();
    /// cache.on_event("post.created", &["user:{author_id}:posts", "feed:*"])?;
    /// # Ok::<(), tiered::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a malformed template; nothing is declared.
    pub fn on_event(&self, name: &str, templates: &[&str]) -> Result<()> {
        let parsed = templates
            .iter()
            .map(|t| Template::parse(t))
            .collect::<Result<Vec<_>>>()?;
        self.inner
            .events
            .write()
            .entry(name.to_owned())
            .or_default()
            .extend(parsed);
        Ok(())
    }

    /// Fires event `name` with `fields`: removes the keys and patterns its
    /// rules name, filled in, from every tier and instance. Returns how many
    /// keys and patterns that was (0 for an event with no rules).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] if a rule needs a field that is not given, or
    /// [`Error::InvalidKey`] if a filled-in key is invalid — checked before
    /// anything is removed; [`Error::L2`] as for
    /// [`invalidate_pattern`](Self::invalidate_pattern).
    pub async fn emit(&self, name: &str, fields: &[(&str, &str)]) -> Result<usize> {
        let (mut keys, mut patterns) = (Vec::new(), Vec::new());
        if let Some(rules) = self.inner.events.read().get(name) {
            for rule in rules {
                let filled = rule.fill(fields)?;
                validate_key(&filled)?;
                if rule.pattern {
                    patterns.push(filled);
                } else {
                    keys.push(filled);
                }
            }
        }
        let n = keys.len() + patterns.len();
        if !keys.is_empty() {
            self.remove_many(&keys).await?;
        }
        for pattern in patterns {
            self.invalidate_pattern(&pattern).await?;
        }
        Ok(n)
    }

    /// Waits up to `limit` until every invalidation this instance announced has
    /// been published to the other instances; returns whether it was. Call it
    /// before a short-lived process (a job, a CLI) exits: `remove`, `set` and
    /// the others return once *this* instance and L2 are up to date, and
    /// publish to the others in the background.
    pub async fn sync_backplane(&self, limit: Duration) -> bool {
        let Some(link) = &self.inner.backplane else {
            return true;
        };
        self.inner.connect();
        let deadline = Instant::now() + limit;
        loop {
            if link.drained() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            match crate::load::sleep_until(Instant::now() + Duration::from_millis(2)) {
                Some(sleep) => sleep.await,
                None => return link.drained(),
            }
        }
    }

    /// Removes `key` at time `at` (by the cache's clock), on every instance.
    /// The schedule is kept in Redis: it survives restarts, and exactly one
    /// instance carries it out, within about a second of `at`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`]; [`Error::L2`] without a backplane (it needs
    /// Redis) or if Redis cannot be reached (nothing is scheduled then).
    pub async fn remove_at(&self, key: &str, at: Timestamp) -> Result<()> {
        validate_key(key)?;
        self.schedule(&format!("k:{key}"), at).await
    }

    /// Invalidates `tag` at time `at`; see [`remove_at`](Self::remove_at).
    ///
    /// # Errors
    ///
    /// As [`remove_at`](Self::remove_at), with [`Error::InvalidOption`] for a
    /// bad tag.
    pub async fn invalidate_tag_at(&self, tag: &str, at: Timestamp) -> Result<()> {
        validate_tag(tag)?;
        self.schedule(&format!("t:{tag}"), at).await
    }

    async fn schedule(&self, target: &str, at: Timestamp) -> Result<()> {
        let inner = &self.inner;
        let (Some(link), Some(l2)) = (&inner.backplane, &inner.l2) else {
            return Err(Error::L2(crate::l2::L2Error::NotConfigured));
        };
        inner.connect();
        Ok(l2.direct(link.schedule(target, at)).await?)
    }

    /// Drops every entry carrying `tag`, in amortized O(1): the entries are discarded when
    /// next read, and loads already running for tagged keys will not store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for an empty or too long tag.
    pub fn invalidate_tag(&self, tag: &str) -> Result<()> {
        validate_tag(tag)?;
        let inner = &self.inner;
        inner.connect();
        let tags: [TagId; 1] = [invalidate::user_tag(tag)];
        let now = inner.clock.now();
        inner.invalidations.invalidate(&tags, now);
        inner.announce(Change::Tags(vec![tags[0].to_string()]), now);
        Ok(())
    }

    /// Removes every entry. Loads already running will not store their results.
    pub fn clear(&self) {
        let inner = &self.inner;
        inner.connect();
        let now = inner.clock.now();
        inner.clear_local(now);
        inner.announce(Change::Cleared, now);
    }

    /// Empties this process's L1 only: L2 and other instances keep their
    /// entries, and later reads refill L1 from L2. Loads already running will
    /// not install their results. For freeing memory, or forcing reads through
    /// L2 (an operator's "flush L1").
    pub fn clear_l1(&self) {
        self.inner.reset_l1();
    }

    /// A snapshot of the counters (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        let l1 = &self.inner.l1;
        let l2 = self.inner.l2.as_ref().map(|l2| l2.stats());
        let backplane = self.inner.backplane.as_ref().map(|b| b.stats());
        let write = self.inner.write_stats.read().as_ref().map(|f| f());
        let mut stats = self
            .inner
            .recorder
            .snapshot(l1.len(), l1.weighted_size(), l2, backplane);
        stats.write = write;
        stats
    }

    /// The `n` most requested keys (estimated; see
    /// [`CacheBuilder::top_keys`]).
    pub fn top_keys(&self, n: usize) -> Vec<HotKey> {
        self.inner.top.top(n)
    }

    /// Loads in flight right now (for diagnostics and tests).
    pub fn loads_in_flight(&self) -> usize {
        self.inner.flights.in_flight()
    }

    /// The heaviest entry L1 can hold (a share of the budget; see [`crate::l1`]).
    pub fn max_entry_weight(&self) -> u64 {
        self.inner.l1.max_entry_weight()
    }

    /// Loads `keys` into the cache, at most `concurrency` at a time, calling
    /// `progress` after each key. Keys already fresh are skipped. Each key goes
    /// through [`get_or_load`](Self::get_or_load) (single-flight, fail-safe).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] if `concurrency` is 0. Per-key failures do not
    /// stop the warm-up; they are in the report.
    pub async fn warm<I, F, Fut, E>(
        &self,
        keys: I,
        concurrency: usize,
        loader: F,
        mut progress: impl FnMut(WarmProgress),
    ) -> Result<WarmReport>
    where
        I: IntoIterator<Item = String>,
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        use futures_util::stream::{self, StreamExt};

        if concurrency == 0 {
            return Err(Error::option("concurrency", "must be at least 1"));
        }
        let keys: Vec<String> = keys.into_iter().collect();
        let loader = Arc::new(loader);
        let mut report = WarmReport {
            progress: WarmProgress {
                total: keys.len(),
                ..WarmProgress::default()
            },
            errors: Vec::new(),
        };
        let mut results = stream::iter(keys)
            .map(|key| {
                let loader = Arc::clone(&loader);
                async move {
                    if matches!(self.contains(&key), Ok(true)) {
                        return (key, Ok(false));
                    }
                    let k = key.clone();
                    let loaded = self.get_or_load(&key, move || loader(k)).await;
                    (key, loaded.map(|_| true))
                }
            })
            .buffer_unordered(concurrency);
        while let Some((key, result)) = results.next().await {
            let p = &mut report.progress;
            p.done += 1;
            match result {
                Ok(true) => p.loaded += 1,
                Ok(false) => p.skipped += 1,
                Err(e) => {
                    p.failed += 1;
                    report.errors.push((key, e));
                }
            }
            progress(report.progress);
        }
        Ok(report)
    }
}

impl<V: Value> Inner<V> {
    /// What L1 says about `key` at `now`. Drops entries that were invalidated.
    fn lookup(&self, key: &str, now: Timestamp) -> Lookup<V> {
        // The common case — valid and fresh — is decided under the shard's
        // read lock from the entry's atomics and timestamps, and hands out
        // only the value; anything else takes the entry out to look closer.
        let found = self.l1.get_with(key, |entry| {
            if self.invalidations.unchanged_for(entry) && entry.freshness(now) == Freshness::Fresh {
                entry.record_hit();
                Ok(entry.value.clone())
            } else {
                Err(Arc::clone(entry))
            }
        });
        let entry = match found {
            None => return Lookup::Miss,
            Some(Ok(value)) => return Lookup::Hit(value),
            Some(Err(entry)) => entry,
        };
        if !self.invalidations.is_valid(&entry) {
            self.l1.remove_entry(key, &entry);
            return Lookup::Miss;
        }
        match entry.freshness(now) {
            Freshness::Fresh => {
                entry.record_hit();
                Lookup::Hit(entry.value.clone())
            }
            Freshness::RefreshAhead => Lookup::RefreshAhead(entry),
            Freshness::Stale => Lookup::Stale(entry),
            Freshness::Gone => Lookup::Miss,
        }
    }

    /// Counts a fresh hit and returns its value.
    fn hit(&self, entry: &Entry<V>) -> Option<Arc<V>> {
        entry.record_hit();
        self.served(entry.value.clone())
    }

    /// Counts a fresh hit whose entry already counted it ([`Lookup::Hit`]).
    fn served(&self, value: Option<Arc<V>>) -> Option<Arc<V>> {
        self.recorder.hit(value.is_none());
        value
    }

    /// Stores an entry in L1 and counts the evictions it caused. An entry
    /// older (by version) than the one L1 holds is not stored: a read of L2
    /// that raced a newer write must not replace it.
    pub(crate) fn store(&self, key: Arc<str>, entry: Entry<V>, now: Timestamp) {
        if !self.l1_enabled {
            return;
        }
        if entry.version != 0
            && self
                .l1
                .peek(&key)
                .is_some_and(|held| held.version > entry.version && !held.is_revoked())
        {
            return;
        }
        let inserted = self.l1.insert(key, Arc::new(entry), now);
        self.recorder.evicted(inserted.evicted);
    }

    /// The tags an entry stored with `opts` carries: its own tags, a tag per
    /// dependency, and the dependency tags of its dependencies' entries.
    pub(crate) fn entry_tags(&self, opts: &Options) -> Box<[TagId]> {
        let mut tags: Vec<TagId> = opts.tags.iter().map(|t| invalidate::user_tag(t)).collect();
        for dep in &opts.depends_on {
            tags.push(invalidate::dependency_tag(dep));
            if let Some(parent) = self.l1.peek(dep) {
                tags.extend(Invalidations::inherited(&parent).cloned());
            }
        }
        tags.sort_unstable();
        tags.dedup();
        tags.into_boxed_slice()
    }

    /// The L1 side of a write: fences running loads of `key` (they will not
    /// store), revokes the old entry (no fail-safe fallback to it), stores the
    /// new one, invalidates dependants and feeds the existence filter.
    pub(crate) fn replace(&self, key: &str, entry: Option<Entry<V>>, now: Timestamp) {
        {
            let mut registry = self.flights.lock(key);
            registry.fence(key);
            if let Some(old) = self.l1.peek(key) {
                old.revoke();
            }
            if let Some(entry) = entry {
                self.store(Arc::from(key), entry, now);
            }
        }
        self.invalidations.key_changed(key, now);
        if let Some(filter) = &self.filter {
            filter.insert(key);
        }
    }

    /// Whether entries read from L2 can be judged now (see
    /// [`Link::wait_ready`]); waits up to the L2 timeout at startup.
    pub(crate) async fn l2_judgeable(&self) -> bool {
        match (&self.backplane, &self.l2) {
            (Some(link), Some(l2)) => link.wait_ready(l2.timeout()).await,
            _ => true,
        }
    }

    /// Fences loads of, and removes from L1, every key matching `pattern`.
    pub(crate) fn remove_matching_from_l1(&self, pattern: &str) {
        let hit = |key: &str| crate::invalidate::glob::matches(pattern, key);
        self.flights.fence_matching(hit);
        for key in self.l1.keys_matching(hit) {
            self.remove_from_l1(&key);
        }
    }

    /// `expire` without L2: replaces the L1 entry with a copy that is stale
    /// from now (same value and grace end).
    pub(crate) fn expire_in_l1(&self, key: &str) -> bool {
        let now = self.clock.now();
        let mut registry = self.flights.lock(key);
        registry.fence(key);
        let Some(held) = self.l1.peek(key) else {
            return false;
        };
        if !matches!(
            held.freshness(now),
            Freshness::Fresh | Freshness::RefreshAhead
        ) {
            return false;
        }
        let stale = held.stale_from(now, self.invalidations.current());
        held.revoke();
        self.store(Arc::from(key), stale, now);
        true
    }

    /// With a backplane: records that the entry being written depends on
    /// `keys` (so their removal anywhere invalidates it everywhere).
    pub(crate) async fn mark_dependencies(&self, keys: &[String]) {
        if let (Some(link), false) = (&self.backplane, keys.is_empty()) {
            link.mark_depended(keys).await;
        }
    }

    /// With a backplane: `keys` were removed or written; those some entry
    /// depends on are invalidated as dependency tags everywhere (recorded in
    /// Redis for L2 readers, sent to every instance).
    pub(crate) async fn dependencies_changed(&self, keys: &[String], now: Timestamp) {
        let Some(link) = &self.backplane else {
            return;
        };
        let depended = link.depended_on(keys).await;
        if depended.is_empty() {
            return;
        }
        let tags: Vec<TagId> = depended
            .iter()
            .map(|k| invalidate::dependency_tag(k))
            .collect();
        self.invalidations.invalidate(&tags, now);
        self.announce(
            Change::Tags(tags.iter().map(|t| t.to_string()).collect()),
            now,
        );
    }

    /// Starts the backplane link, if any and not yet started.
    pub(crate) fn connect(self: &Arc<Self>) {
        if let Some(link) = &self.backplane {
            link.start(self);
        }
    }

    /// Tells the other instances about `change`, if there is a backplane.
    pub(crate) fn announce(&self, change: Change, now: Timestamp) {
        if let Some(link) = &self.backplane {
            link.announce(change, now);
        }
    }

    /// Everything stored before `at` is invalid here (a `clear`, local or
    /// another instance's).
    pub(crate) fn clear_local(&self, at: Timestamp) {
        // Order matters: once the stamp has moved, no load born before it can
        // install (`may_install`), so fencing and emptying L1 need no global lock.
        self.invalidations.clear(at);
        self.flights.fence_all();
        self.l1.clear();
    }

    /// Empties L1 and fences running loads, without judging L2 (after a
    /// backplane gap: what L1 held may have missed invalidations).
    pub(crate) fn reset_l1(&self) {
        self.invalidations.bump();
        self.flights.fence_all();
        self.l1.clear();
    }

    /// `set_with` after validation, at a given version (the write paths
    /// pass the store's, so every tier orders writes the way the store does).
    pub(crate) async fn set_versioned(
        self: &Arc<Self>,
        key: &str,
        value: Arc<V>,
        opts: &Options,
        version: u64,
    ) {
        let inner = self;
        let now = inner.clock.now();
        let birth = inner.begin_load(opts, now);
        let entry = inner
            .build_entry(
                key,
                Some(Arc::clone(&value)),
                opts,
                birth.born,
                now,
                Duration::ZERO,
            )
            .map(|e| Entry { version, ..e });
        let Some(l2) = inner.l2.clone() else {
            inner.replace(key, entry, now);
            return;
        };
        // L2 first: a load that reads L2 before this write lands started
        // before the fence in `replace`, which keeps it out of L1. The two
        // steps run as one task, so a caller that stops waiting (a dropped
        // request) cannot leave them half done.
        let write = entry
            .as_ref()
            .and_then(|e| l2.encode(key, &e.meta(), Some(&*value)));
        inner.connect();
        let version = entry.as_ref().map_or(0, |e| e.version);
        let (inner, key) = (Arc::clone(inner), key.to_owned());
        let depends_on = opts.depends_on.clone();
        finish_in_task(async move {
            inner.mark_dependencies(&depends_on).await;
            let refused = match write {
                // Version-guarded: of two racing `set`s, the newer one (by
                // version) is what every tier ends up holding.
                Some(write) => l2.write(vec![write]).await == [true],
                // Cannot be encoded for L2: at least do not leave the old
                // value there.
                None => {
                    l2.remove(&[&key]).await;
                    false
                }
            };
            // Refused: L2 holds a newer write. Do not keep ours here either;
            // the next read takes L2's.
            inner.replace(&key, if refused { None } else { entry }, now);
            inner
                .dependencies_changed(std::slice::from_ref(&key), now)
                .await;
            inner.announce(Change::Written { key, version }, now);
        })
        .await;
    }

    /// A write reached the store: what depends on `keys`, and `tags`, are
    /// invalidated here and (through the backplane) everywhere.
    pub(crate) async fn landed(&self, keys: &[String], tags: &[String]) {
        let now = self.clock.now();
        for key in keys {
            self.invalidations.key_changed(key, now);
        }
        self.dependencies_changed(keys, now).await;
        if !tags.is_empty() {
            let ids: Vec<TagId> = tags.iter().map(|t| invalidate::user_tag(t)).collect();
            self.invalidations.invalidate(&ids, now);
            self.announce(
                Change::Tags(ids.iter().map(|t| t.to_string()).collect()),
                now,
            );
        }
    }

    /// Makes a writer's counters part of `stats()`.
    pub(crate) fn attach_write_stats(&self, stats: Arc<dyn Fn() -> WriteStats + Send + Sync>) {
        *self.write_stats.write() = Some(stats);
    }

    /// Another instance wrote `key` at `version`: drop any other copy here.
    /// (Any *other* version, not only older ones: two racing `set`s are
    /// ordered in L2 by arrival, not by version, so only L2 knows which won —
    /// the next read asks it.) Dependants are invalidated either way.
    pub(crate) fn drop_older(&self, key: &str, version: u64) {
        {
            let mut registry = self.flights.lock(key);
            registry.fence(key);
            if let Some(held) = self.l1.peek(key) {
                if held.version != version {
                    held.revoke();
                    self.l1.remove_entry(key, &held);
                }
            }
        }
        self.invalidations.key_changed(key, self.clock.now());
    }

    /// Fences loads of `key`, drops and revokes its L1 entry, invalidates its
    /// dependants. Returns whether L1 held an entry.
    pub(crate) fn remove_from_l1(&self, key: &str) -> bool {
        let removed = {
            let mut registry = self.flights.lock(key);
            registry.fence(key);
            self.l1.remove(key).inspect(|old| old.revoke()).is_some()
        };
        self.invalidations.key_changed(key, self.clock.now());
        removed
    }

    /// A version for a write starting now (0 without L2, where nothing reads it).
    pub(crate) fn next_version(&self) -> u64 {
        self.l2.as_ref().map_or(0, |l2| l2.next_version())
    }

    /// `get` after an L1 miss: the fresh L2 entry, if any, installed in L1
    /// unless a `set`/`remove` of the key (or of a key sharing its flight
    /// shard) happened while L2 was read.
    async fn get_from_l2(&self, key: &str) -> Option<Arc<V>> {
        let l2 = self.l2.as_ref()?;
        if !self.l2_judgeable().await {
            l2.miss(1);
            return None;
        }
        let fences = self.flights.lock(key).fences();
        let born = self.invalidations.current();
        let decoded = l2.fetch::<V>(&[key]).await.pop().flatten();
        let now = self.clock.now();
        let entry = decoded.and_then(|d| self.entry_from_l2(key, d, &self.defaults, born, now));
        let entry = entry.filter(|e| e.serves_from_l2(now, false));
        let Some(entry) = entry else {
            l2.miss(1);
            return None;
        };
        l2.hit();
        let value = entry.value.clone();
        let registry = self.flights.lock(key);
        if registry.fences() == fences && self.invalidations.may_install(&entry) {
            self.store(Arc::from(key), entry, now);
        }
        drop(registry);
        value
    }

    /// What a load (or `set`) starting now is born with. Dependencies are
    /// declared first, so that removing one while the loader runs fences the load;
    /// the hard timeout counts as a lifetime, so no invalidation record a running
    /// load needs is pruned before the load ends.
    pub(crate) fn begin_load(&self, opts: &Options, now: Timestamp) -> Arc<Birth> {
        self.invalidations
            .declare_dependencies(&opts.depends_on, now);
        if let Some(limit) = opts.hard_timeout {
            self.invalidations.note_lifetime(limit);
        }
        Arc::new(Birth {
            born: self.invalidations.current(),
            tags: self.entry_tags(opts),
        })
    }

    /// Whether a running load born as `birth` predates an invalidation of its data.
    fn outdated(&self, birth: &Birth) -> bool {
        self.invalidations.outdated(birth.born, &birth.tags)
    }

    async fn get_or_load<F, Fut, E>(
        self: &Arc<Self>,
        key: &str,
        opts: OptionsRef<'_>,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        validate_key(key)?;
        check_not_self_dependent(key, &opts)?;
        self.connect();
        self.top.record(key);
        let now = self.clock.now();
        let stale = match self.lookup(key, now) {
            Lookup::Hit(value) => return Ok(self.served(value)),
            Lookup::RefreshAhead(entry) => {
                let value = self.hit(&entry);
                if !entry.backing_off(now) {
                    // No runtime: serve the hit, skip the refresh.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let key: Arc<str> = Arc::from(key);
                        let call = single_call(&key, loader);
                        self.refresh_in_background(
                            &runtime,
                            vec![(key, entry)],
                            opts.to_arc(),
                            call,
                        );
                    }
                }
                return Ok(value);
            }
            Lookup::Stale(entry) if entry.backing_off(now) => {
                self.recorder.miss();
                self.recorder.stale();
                return Ok(entry.value.clone());
            }
            Lookup::Stale(entry) => Some(entry),
            Lookup::Miss => None,
        };
        self.recorder.miss();
        if stale.is_none() && self.filtered_out(key) {
            return Ok(None);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let soft_deadline = opts.soft_timeout.map(|d| Instant::now() + d);
        let key: Arc<str> = Arc::from(key);
        let birth = self.begin_load(&opts, now);
        let joined =
            self.flights
                .lock(&key)
                .join(&key, &birth, |b| self.outdated(b), || self.recheck(&key));
        let ticket = match joined {
            Joined::Found(value) => return Ok(value),
            Joined::Wait(ticket) => {
                self.recorder.coalesced();
                ticket
            }
            Joined::Lead(flight, ticket) => {
                let job = Job {
                    key: Arc::clone(&key),
                    flight,
                    previous: stale.clone(),
                };
                let call = single_call(&key, loader);
                self.spawn_load(&runtime, vec![job], opts.to_arc(), birth.born, false, call);
                ticket
            }
        };
        self.await_load(ticket, stale, soft_deadline).await
    }

    async fn get_many_or_load<K, F, Fut, E>(
        self: &Arc<Self>,
        keys: &[K],
        opts: Arc<Options>,
        loader: F,
    ) -> Result<HashMap<String, Arc<V>>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        self.connect();
        let now = self.clock.now();
        let mut seen = HashSet::with_capacity(keys.len());
        let mut found = HashMap::new();
        let mut missing: Vec<(Arc<str>, Stale<V>)> = Vec::new();
        // Served already, but due for a background refresh.
        let mut refresh: Vec<(Arc<str>, Arc<Entry<V>>)> = Vec::new();
        for key in keys {
            let key = key.as_ref();
            if !seen.insert(key) {
                continue; // duplicates are answered once
            }
            self.top.record(key);
            match self.lookup(key, now) {
                Lookup::Hit(value) => {
                    if let Some(value) = self.served(value) {
                        found.insert(key.to_owned(), value);
                    }
                }
                Lookup::RefreshAhead(entry) => {
                    if let Some(value) = self.hit(&entry) {
                        found.insert(key.to_owned(), value);
                    }
                    if !entry.backing_off(now) {
                        refresh.push((Arc::from(key), entry));
                    }
                }
                Lookup::Stale(entry) if entry.backing_off(now) => {
                    self.recorder.miss();
                    self.recorder.stale();
                    if let Some(value) = entry.value.clone() {
                        found.insert(key.to_owned(), value);
                    }
                }
                Lookup::Stale(entry) => {
                    self.recorder.miss();
                    missing.push((Arc::from(key), Some(entry)));
                }
                Lookup::Miss => {
                    self.recorder.miss();
                    if !self.filtered_out(key) {
                        missing.push((Arc::from(key), None));
                    }
                }
            }
        }
        // Join running flights and lead the rest.
        let soft_deadline = opts.soft_timeout.map(|d| Instant::now() + d);
        let birth = self.begin_load(&opts, now);
        let mut waits: Vec<(Ticket<V>, Stale<V>, Arc<str>)> = Vec::new();
        let mut jobs = Vec::new();
        for (key, stale) in missing {
            let joined = self.flights.lock(&key).join(
                &key,
                &birth,
                |b| self.outdated(b),
                || self.recheck(&key),
            );
            match joined {
                Joined::Found(Some(value)) => {
                    found.insert(key.to_string(), value);
                }
                Joined::Found(None) => {}
                Joined::Wait(ticket) => {
                    self.recorder.coalesced();
                    waits.push((ticket, stale, key));
                }
                Joined::Lead(flight, ticket) => {
                    jobs.push(Job {
                        key: Arc::clone(&key),
                        flight,
                        previous: stale.clone(),
                    });
                    waits.push((ticket, stale, key));
                }
            }
        }
        // Keys due for refresh ride along in the same loader call (nobody waits
        // on them); with nothing else to load, they are refreshed on their own.
        let call = batch_call(loader);
        if jobs.is_empty() {
            self.refresh_in_background(&runtime, refresh, Arc::clone(&opts), call);
        } else {
            let refreshing = self.refresh_jobs(refresh, &birth);
            let refresh = !refreshing.is_empty();
            jobs.extend(refreshing);
            self.spawn_load(&runtime, jobs, Arc::clone(&opts), birth.born, refresh, call);
        }
        for (ticket, stale, key) in waits {
            if let Some(value) = self.await_load(ticket, stale, soft_deadline).await? {
                found.insert(key.to_string(), value);
            }
        }
        Ok(found)
    }

    /// Under the flight lock, after finding no flight: did a load just finish?
    /// `Some` carries the value to return (`Some(None)`: a cached "absent").
    fn recheck(&self, key: &str) -> Option<Option<Arc<V>>> {
        match self.lookup(key, self.clock.now()) {
            Lookup::Hit(value) => Some(value),
            Lookup::RefreshAhead(entry) => Some(entry.value.clone()),
            _ => None,
        }
    }

    /// The existence filter says `key` certainly does not exist.
    fn filtered_out(&self, key: &str) -> bool {
        match &self.filter {
            Some(filter) if !filter.might_contain(key) => {
                self.recorder.filtered();
                true
            }
            _ => false,
        }
    }

    /// Starts one background refresh of `keys` (those not already loading) with
    /// one loader call.
    fn refresh_in_background(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        keys: Vec<(Arc<str>, Arc<Entry<V>>)>,
        opts: Arc<Options>,
        call: LoaderCall<V>,
    ) {
        if keys.is_empty() {
            return;
        }
        let birth = self.begin_load(&opts, self.clock.now());
        let jobs = self.refresh_jobs(keys, &birth);
        if !jobs.is_empty() {
            self.spawn_load(runtime, jobs, opts, birth.born, true, call);
        }
    }

    /// Registers refresh flights for the keys not already loading.
    fn refresh_jobs(
        &self,
        keys: Vec<(Arc<str>, Arc<Entry<V>>)>,
        birth: &Arc<Birth>,
    ) -> Vec<Job<V>> {
        keys.into_iter()
            .filter_map(|(key, entry)| {
                let flight = self.flights.lock(&key).start_if_idle(&key, birth)?;
                Some(Job {
                    key,
                    flight,
                    previous: Some(entry),
                })
            })
            .collect()
    }

    fn spawn_load(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        jobs: Vec<Job<V>>,
        opts: Arc<Options>,
        born: u64,
        refresh: bool,
        call: LoaderCall<V>,
    ) {
        // The task owns its flights from here on: dropped unpolled, it still
        // unregisters them.
        let task = LoadTask::new(Arc::clone(self), jobs, opts, born, refresh);
        runtime.spawn(task.run(call));
    }
}

/// Runs `work` as its own task and waits for it, so it completes even if the
/// caller's future is dropped; without a runtime, runs it inline. `None` if the
/// task panicked or its runtime shut down.
async fn finish_in_task<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.spawn(work).await.ok(),
        Err(_) => Some(work.await),
    }
}

/// The most keys one `get_many_or_load` call accepts.
pub const MAX_BATCH_KEYS: usize = 65_536;

/// An entry cannot depend on itself: storing it would invalidate it at once.
fn check_not_self_dependent(key: &str, opts: &Options) -> Result<()> {
    if opts.depends_on.iter().any(|d| d == key) {
        return Err(Error::option(
            "depends_on",
            format!("the entry at {key:?} cannot depend on itself"),
        ));
    }
    Ok(())
}

/// Options for one call: the cache's shared defaults, or the caller's. Only
/// turned into an `Arc` when a load needs to own them, so a hit allocates nothing.
#[derive(Clone, Copy)]
enum OptionsRef<'a> {
    Shared(&'a Arc<Options>),
    Borrowed(&'a Options),
}

impl OptionsRef<'_> {
    fn to_arc(self) -> Arc<Options> {
        match self {
            OptionsRef::Shared(shared) => Arc::clone(shared),
            OptionsRef::Borrowed(opts) => Arc::new(opts.clone()),
        }
    }
}

impl std::ops::Deref for OptionsRef<'_> {
    type Target = Options;

    fn deref(&self) -> &Options {
        match self {
            OptionsRef::Shared(shared) => shared,
            OptionsRef::Borrowed(opts) => opts,
        }
    }
}

/// Adapts a single-key loader to the batch shape the load task runs.
fn single_call<V, F, Fut, E>(key: &Arc<str>, loader: F) -> LoaderCall<V>
where
    V: Value,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let key = key.to_string();
    Box::new(move |_keys| {
        let fut = loader();
        Box::pin(async move {
            let value = fut.await.map_err(Into::into)?;
            let mut loaded = Loaded::new();
            if let Some(value) = value {
                loaded.insert(key, value);
            }
            Ok(loaded)
        })
    })
}

/// Wraps a batch loader; it is called with the keys the task is loading.
fn batch_call<V, F, Fut, E>(loader: F) -> LoaderCall<V>
where
    V: Value,
    F: FnOnce(Vec<String>) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    Box::new(move |keys| {
        let fut = loader(keys);
        Box::pin(async move { fut.await.map_err(Into::into) })
    })
}
