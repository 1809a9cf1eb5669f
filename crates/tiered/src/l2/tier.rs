//! What the cache wraps around an [`L2`]: keys, envelopes, timeouts, the
//! breaker, replay of writes kept during an outage, bad-data handling and
//! statistics. Nothing in here returns an L2 error to a reading caller: a
//! failure is a miss.
//!
//! Reads from many tasks at once are merged into one `MGET`: see
//! [`batch`](super::batch).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use parking_lot::Mutex;

use super::batch::{Batcher, RawValues, MAX_BATCH_KEYS};
use super::breaker::{Breaker, BreakerState, Transition};
use super::envelope::{self, Decoded, Format, Meta};
use super::layout::Layout;
use super::pending::{Op, Pending};
use super::{L2Config, L2Error, L2Write, L2};
use crate::clock::{Clock, MAX_PEER_AHEAD};
use crate::metrics::L2Handles;
use crate::stats::Counter;

/// How many keys whose bad data is logged one by one; past that, bad data is
/// only counted (a flood of garbage must not become a flood of logs).
const MAX_LOGGED_BAD_KEYS: usize = 1024;
/// How long a removal's tombstone stays in L2: longer than any load that
/// started before the removal can still be running (the default hard timeout
/// is 30 s; a longer one leaves a window past this).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Replay batch size.
const REPLAY_BATCH: usize = 256;

/// See `Tier::replayed`: (removed cache keys, written cache keys and versions).
pub(crate) type ReplayHook = Arc<dyn Fn(Vec<String>, Vec<(String, u64)>) + Send + Sync>;

/// Counters behind `Stats::l2`.
#[derive(Default)]
struct Counters {
    hits: Counter,
    misses: Counter,
    errors: Counter,
    bad_data: Counter,
    writes: Counter,
    pending_dropped: Counter,
    replayed: Counter,
}

/// A snapshot of the L2 tier's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct L2Stats {
    /// Lookups L2 answered with a usable entry.
    pub hits: u64,
    /// Lookups L2 could not answer (absent, expired, invalidated, bad data, or
    /// L2 unreachable).
    pub misses: u64,
    /// Calls that failed or timed out (the breaker counts these).
    pub errors: u64,
    /// Values found unreadable, deleted and counted as misses.
    pub bad_data: u64,
    /// Entries written.
    pub writes: u64,
    /// Writes and removals waiting for L2 to come back.
    pub pending: u64,
    /// Writes and removals dropped because the pending bound was reached.
    pub pending_dropped: u64,
    /// Pending writes and removals replayed after L2 came back.
    pub replayed: u64,
    /// The circuit breaker.
    pub breaker: BreakerState,
}

pub(crate) struct Tier {
    backend: Arc<dyn L2>,
    pub layout: Layout,
    format: Format,
    timeout: Duration,
    max_pending: usize,
    breaker: Breaker,
    pending: Pending,
    replaying: AtomicBool,
    clock: Arc<dyn Clock>,
    namespace: Arc<str>,
    last_version: AtomicU64,
    logged_bad: Mutex<HashSet<String>>,
    /// Told what a replay wrote and removed, so the backplane can tell the
    /// other instances again: their first notice came while L2 still held the
    /// old state.
    replayed: Mutex<Option<ReplayHook>>,
    /// Merges concurrent reads into one `MGET`.
    reads: Batcher,
    counters: Counters,
    metrics: L2Handles,
}

impl Tier {
    pub(crate) fn new(
        backend: Arc<dyn L2>,
        config: L2Config,
        namespace: Arc<str>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Tier {
            backend,
            layout: Layout::new(&config.prefix, config.tenant.as_deref(), &namespace),
            format: Format {
                codec: config.codec,
                compression: config.compression,
                encryption: config.encryption,
                max_value_bytes: config.max_value_bytes,
            },
            timeout: config.timeout,
            max_pending: config.max_pending,
            breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
            pending: Pending::default(),
            replaying: AtomicBool::new(false),
            metrics: L2Handles::register(&namespace),
            clock,
            namespace,
            last_version: AtomicU64::new(0),
            logged_bad: Mutex::new(HashSet::new()),
            reads: Batcher::default(),
            replayed: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    pub(crate) fn on_replayed(&self, hook: ReplayHook) {
        *self.replayed.lock() = Some(hook);
    }

    /// If writes or removals are waiting for L2, try a call (which replays
    /// them on success). The backplane's subscriber calls this each time it
    /// has just reached Redis, so an idle instance replays too.
    ///
    /// The ping goes out even while the breaker is open: the subscriber's own
    /// call just proved Redis reachable, and waiting out the cooldown would
    /// leave other instances reading the values this one removed during the
    /// outage for that long (the first call after a restart often fails on a
    /// connection that has not reconnected yet, which is what opens it). It
    /// costs at most one ping per subscriber round, and only while something
    /// is pending. A failed ping restarts the cooldown, like a failed probe.
    pub(crate) async fn nudge(self: &Arc<Self>) {
        if self.pending.len() > 0 {
            let _ = self.attempt(self.backend.ping()).await;
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn stats(&self) -> L2Stats {
        let breaker = self.breaker.state();
        let pending = self.pending.len() as u64;
        self.metrics.breaker.set(breaker.as_gauge());
        self.metrics.pending.set(pending as f64);
        let c = &self.counters;
        L2Stats {
            hits: c.hits.get(),
            misses: c.misses.get(),
            errors: c.errors.get(),
            bad_data: c.bad_data.get(),
            writes: c.writes.get(),
            pending,
            pending_dropped: c.pending_dropped.get(),
            replayed: c.replayed.get(),
            breaker,
        }
    }

    /// A version for a write starting now: the clock's nanoseconds, kept
    /// strictly increasing within the process. Across processes, versions
    /// order writes as well as the clocks agree.
    pub(crate) fn next_version(&self) -> u64 {
        let now = self.clock.now().as_nanos();
        let mut last = self.last_version.load(Ordering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self.last_version.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Runs one backend call through the breaker and the timeout.
    async fn call<T>(
        self: &Arc<Self>,
        f: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        if !self.breaker.allow(self.clock.now()) {
            return Err(L2Error::BreakerOpen);
        }
        self.attempt(f).await
    }

    /// Runs one backend call under the timeout, whatever the breaker's state,
    /// and reports the outcome to it.
    async fn attempt<T>(
        self: &Arc<Self>,
        f: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        let result = match crate::load::sleep_until(tokio::time::Instant::now() + self.timeout) {
            Some(sleep) => {
                match futures_util::future::select(std::pin::pin!(f), std::pin::pin!(sleep)).await {
                    Either::Left((result, _)) => result,
                    Either::Right(_) => Err(L2Error::Timeout(self.timeout)),
                }
            }
            // Timers disabled: the backend's own timeouts are all there is.
            None => f.await,
        };
        match &result {
            Ok(_) => {
                if self.breaker.success() == Transition::Closed {
                    tracing::info!(cache = %self.namespace, "L2 is reachable again; breaker closed");
                }
                if self.pending.len() > 0 {
                    self.start_replay();
                }
            }
            // The server answered (with an error): it is up.
            Err(L2Error::Command(_)) => {
                self.breaker.success();
            }
            Err(error) => {
                self.counters.errors.incr();
                self.metrics.errors.increment(1);
                if self.breaker.failure(self.clock.now()) == Transition::Opened {
                    tracing::warn!(cache = %self.namespace, %error, "L2 failing; breaker open");
                } else {
                    tracing::debug!(cache = %self.namespace, %error, "L2 call failed");
                }
            }
        }
        result
    }

    /// The entries at `keys` (in order); `None` for a miss of any kind.
    pub(crate) async fn fetch<V: crate::Value>(
        self: &Arc<Self>,
        keys: &[&str],
    ) -> Vec<Option<Decoded<V>>> {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.layout.entry(k)).collect();
        // Keys held for replay when the read goes out: a replay finishing
        // while it is on the wire must not let an old value through.
        let held_before: Vec<bool> = if self.pending.is_idle() {
            Vec::new()
        } else {
            redis_keys.iter().map(|k| self.pending.holds(k)).collect()
        };
        let raw = if redis_keys.len() <= MAX_BATCH_KEYS {
            self.read(redis_keys.clone()).await
        } else {
            let reads = redis_keys
                .chunks(MAX_BATCH_KEYS)
                .map(|chunk| self.read(chunk.to_vec()));
            futures_util::future::try_join_all(reads)
                .await
                .map(|parts| parts.into_iter().flatten().collect())
        };
        let Ok(raw) = raw else {
            return keys.iter().map(|_| None).collect();
        };
        if raw.len() != keys.len() {
            // A broken backend; never guess which value is whose.
            return keys.iter().map(|_| None).collect();
        }
        // A key with a write or removal still waiting for replay: what Redis
        // holds for it is older than what this instance did. A miss.
        let pending = !self.pending.is_idle();
        let mut bad = Vec::new();
        let out = raw
            .into_iter()
            .zip(redis_keys)
            .enumerate()
            .map(|(i, (bytes, redis_key))| {
                let bytes = bytes?;
                if held_before.get(i) == Some(&true) || (pending && self.pending.holds(&redis_key))
                {
                    return None;
                }
                match self.decode_at(&bytes, &redis_key) {
                    Ok(decoded) => Some(decoded),
                    Err(reason) => {
                        self.bad_data(&redis_key, &reason);
                        bad.push(redis_key);
                        None
                    }
                }
            })
            .collect();
        if !bad.is_empty() {
            // Best effort: if this fails, the next reader deletes it.
            let _ = self.call(self.backend.delete(&bad)).await;
        }
        out
    }

    /// Reads `keys`, merged with concurrent reads (see [`Batcher`]). A
    /// queued read is sent only within the L2 timeout of its call, and each
    /// call is bounded by the timeout, so a read takes at most about two
    /// timeouts.
    async fn read(self: &Arc<Self>, keys: Vec<String>) -> RawValues {
        self.reads
            .read(keys, self.timeout, |keys| async move {
                self.call(self.backend.get_many(&keys)).await
            })
            .await
    }

    fn bad_data(&self, redis_key: &str, reason: &str) {
        self.counters.bad_data.incr();
        self.metrics.bad_data.increment(1);
        let mut logged = self.logged_bad.lock();
        if logged.len() < MAX_LOGGED_BAD_KEYS && logged.insert(redis_key.to_owned()) {
            tracing::warn!(cache = %self.namespace, key = %redis_key, %reason,
                "unreadable value in L2: deleted, treated as a miss");
        }
    }

    pub(crate) fn hit(&self) {
        self.counters.hits.incr();
        self.metrics.hit.increment(1);
    }

    pub(crate) fn miss(&self, n: usize) {
        self.counters.misses.add(n as u64);
        self.metrics.miss.increment(n as u64);
    }

    /// Encodes an entry; `None` (logged) if the value cannot be serialized.
    pub(crate) fn encode<V: crate::Value>(
        &self,
        key: &str,
        meta: &Meta,
        value: Option<&V>,
    ) -> Option<L2Write> {
        let redis_key = self.layout.entry(key);
        match envelope::encode(meta, value, &self.format, &redis_key) {
            Ok(bytes) => Some(L2Write {
                key: redis_key,
                value: bytes,
                ttl: meta
                    .stale_until
                    .saturating_since(self.clock.now())
                    .max(Duration::from_millis(1)),
                version: meta.version,
            }),
            Err(error) => {
                tracing::warn!(cache = %self.namespace, %key, %error, "value not written to L2: cannot encode");
                None
            }
        }
    }

    /// Stores `writes`, each only over an older version (so a slow load, a
    /// replay, or the older of two racing `set`s never replaces a newer value). Writes that cannot reach L2 are kept
    /// for replay.
    ///
    /// Returns, per write, whether L2 refused it as older than what it holds
    /// (`false` also when it was kept for replay).
    pub(crate) async fn write(self: &Arc<Self>, writes: Vec<L2Write>) -> Vec<bool> {
        if writes.is_empty() {
            return Vec::new();
        }
        let keep: Vec<(String, Op)> = writes
            .iter()
            .map(|w| {
                let op = Op::Write {
                    value: w.value.clone(),
                    version: w.version,
                    stale_until: self.clock.now().saturating_add(w.ttl),
                };
                (w.key.clone(), op)
            })
            .collect();
        let stored = self.call(self.backend.set_if_newer(writes)).await;
        match stored {
            Ok(stored) => {
                let mut refused = Vec::with_capacity(stored.len());
                for ((key, _), stored) in keep.iter().zip(stored) {
                    // A write refused as older must not cancel a kept one.
                    if stored {
                        self.counters.writes.incr();
                        self.pending.forget(key);
                    }
                    refused.push(!stored);
                }
                refused
            }
            Err(_) => {
                let n = keep.len();
                for (key, op) in keep {
                    self.keep(key, op);
                }
                vec![false; n]
            }
        }
    }

    /// Deletes the entries at `keys`; returns whether any existed. Removals
    /// that cannot reach L2 are kept for replay (and report `false`).
    pub(crate) async fn remove(self: &Arc<Self>, keys: &[&str]) -> bool {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.layout.entry(k)).collect();
        match self.call(self.backend.delete(&redis_keys)).await {
            Ok(n) => {
                for key in &redis_keys {
                    self.pending.forget(key);
                }
                n > 0
            }
            Err(_) => {
                for key in redis_keys {
                    self.keep(key, Op::Remove);
                }
                false
            }
        }
    }

    /// Removes the entries at `keys` by writing a short-lived *tombstone* over
    /// each: an absent entry with no lifetime (a miss for every reader) and a
    /// fresh version. A load that started before this removal writes with an
    /// older version and is refused (every L2 write is version-guarded) — on this
    /// instance or any other — so it cannot put the removed value back. The
    /// tombstone outlives any such load: it expires after [`TOMBSTONE_TTL`].
    /// Returns whether any key held a live entry. Removals that cannot reach L2
    /// are kept for replay (as plain deletes) and report `false`.
    pub(crate) async fn bury(self: &Arc<Self>, keys: &[&str]) -> bool {
        let now = self.clock.now();
        let writes: Vec<L2Write> = keys
            .iter()
            .filter_map(|key| {
                let meta = Meta {
                    version: self.next_version(),
                    created: now,
                    refresh_at: crate::clock::Timestamp::MAX,
                    fresh_until: now,
                    stale_until: now,
                    ttl: Duration::ZERO,
                    load_duration: Duration::ZERO,
                    tags: Vec::new(),
                };
                let mut write = self.encode::<()>(key, &meta, None)?;
                write.ttl = TOMBSTONE_TTL;
                Some(write)
            })
            .collect();
        let redis_keys: Vec<String> = writes.iter().map(|w| w.key.clone()).collect();
        match self.call(self.backend.swap(writes)).await {
            Ok(old) => {
                for key in &redis_keys {
                    self.pending.forget(key);
                }
                old.iter()
                    .flatten()
                    .any(|bytes| !envelope::is_tombstone(bytes))
            }
            Err(_) => {
                for key in redis_keys {
                    self.keep(key, Op::Remove);
                }
                false
            }
        }
    }

    /// Deletes every entry whose key matches `pattern` (a glob on the cache key),
    /// walking L2 with `SCAN`. Bounded by a generous timeout of its own: a big
    /// namespace takes a while, and the breaker is not involved.
    pub(crate) async fn remove_matching(&self, pattern: &str) -> Result<u64, L2Error> {
        let redis_pattern = self.layout.entry(pattern);
        let walk = self.backend.delete_matching(&redis_pattern);
        within(Duration::from_secs(60), walk).await
    }

    /// Runs a call about L2 itself (its size, for dashboards) with the L2
    /// timeout but outside the breaker's accounting: a dashboard polling a
    /// struggling Redis must not be what opens the breaker. An open breaker
    /// still short-cuts it.
    pub(crate) async fn observe<T>(
        &self,
        f: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        if self.breaker.state() == BreakerState::Open {
            return Err(L2Error::BreakerOpen);
        }
        within(self.timeout, f).await
    }

    /// Deletes `key` if it still holds `version` (undoing a write that lost a
    /// race with an invalidation).
    pub(crate) async fn retract(self: &Arc<Self>, key: &str, version: u64) {
        let redis_key = self.layout.entry(key);
        if self
            .call(self.backend.delete_version(&redis_key, version))
            .await
            .is_err()
        {
            self.keep(redis_key, Op::Remove);
        }
    }

    /// Runs a utility call (no fallback: its caller gets the error).
    pub(crate) async fn direct<T>(
        self: &Arc<Self>,
        f: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        self.call(f).await
    }

    pub(crate) fn backend(&self) -> &dyn L2 {
        &*self.backend
    }

    fn keep(&self, key: String, op: Op) {
        if !self.pending.keep(key, op, self.max_pending) {
            self.counters.pending_dropped.incr();
            tracing::error!(cache = %self.namespace,
                "L2 pending-write bound reached: a write or removal was dropped; \
                 that key may serve an older L2 value until it expires");
        }
    }

    /// Replays pending operations in the background, one replay at a time.
    fn start_replay(self: &Arc<Self>) {
        if self.replaying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.replaying.store(false, Ordering::Release);
            return;
        };
        /// Clears the flag even if the task is dropped mid-replay (runtime
        /// shutdown), so a later success can start another replay.
        struct Done(Arc<Tier>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.replaying.store(false, Ordering::Release);
            }
        }
        let done = Done(Arc::clone(self));
        runtime.spawn(async move {
            done.0.replay().await;
            drop(done);
        });
    }

    async fn replay(self: &Arc<Self>) {
        loop {
            let batch = self.pending.drain(REPLAY_BATCH, self.clock.now());
            let n = (batch.writes.len() + batch.removes.len()) as u64;
            if n == 0 {
                return;
            }
            let mut result = Ok(());
            if !batch.removes.is_empty() {
                result = self
                    .call(self.backend.delete(&batch.removes))
                    .await
                    .map(|_| ());
            }
            if result.is_ok() && !batch.writes.is_empty() {
                let writes = batch.writes.clone();
                result = self
                    .call(self.backend.set_if_newer(writes))
                    .await
                    .map(|_| ());
            }
            let written = result;
            match written {
                Ok(()) => {
                    self.pending.replayed(&batch);
                    self.counters.replayed.add(n);
                    let hook = self.replayed.lock().clone();
                    if let Some(hook) = hook {
                        let prefix = self.layout.entry("");
                        let key = |k: &str| k.strip_prefix(&prefix).map(str::to_owned);
                        let removed = batch.removes.iter().filter_map(|k| key(k)).collect();
                        let written = batch
                            .writes
                            .iter()
                            .filter_map(|w| Some((key(&w.key)?, w.version)))
                            .collect();
                        hook(removed, written);
                    }
                    tracing::debug!(cache = %self.namespace, n, "replayed pending L2 operations");
                }
                Err(_) => {
                    // Still down: keep them (a newer op for a key wins) and
                    // wait for the next successful call to try again.
                    self.pending.restore(&batch, self.clock.now());
                    self.pending.replayed(&batch);
                    return;
                }
            }
        }
    }

    /// Decodes an envelope read from `redis_key`, refusing one created or
    /// versioned further ahead of this clock than [`MAX_PEER_AHEAD`]. Versions
    /// are clock readings too, so such an entry comes from a broken clock or
    /// damaged bytes, and trusted it would stay: a version near `u64::MAX`
    /// makes every later write of the key lose the version check, and a
    /// `created` in the future escapes every invalidation made before it.
    /// Refused, it is bad data (deleted, a miss) like any other.
    fn decode_at<V: crate::Value>(
        &self,
        bytes: &[u8],
        redis_key: &str,
    ) -> Result<Decoded<V>, String> {
        let decoded = envelope::decode::<V>(bytes, &self.format, redis_key)?;
        let limit = self.clock.now().saturating_add(MAX_PEER_AHEAD);
        if decoded.meta.version > limit.as_nanos() {
            return Err(format!(
                "version {} is ahead of the clock",
                decoded.meta.version
            ));
        }
        if decoded.meta.created > limit {
            return Err("created ahead of the clock".into());
        }
        Ok(decoded)
    }

    /// Decodes the entry at `key` directly (for the utilities).
    pub(crate) fn decode<V: crate::Value>(&self, key: &str, bytes: &[u8]) -> Option<Decoded<V>> {
        let redis_key = self.layout.entry(key);
        match self.decode_at(bytes, &redis_key) {
            Ok(d) => Some(d),
            Err(reason) => {
                self.bad_data(&redis_key, &reason);
                None
            }
        }
    }
}

/// `f`, or [`L2Error::Timeout`] after `limit` (no limit when timers are
/// disabled).
async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, L2Error>>,
) -> Result<T, L2Error> {
    match crate::load::sleep_until(tokio::time::Instant::now() + limit) {
        Some(sleep) => {
            match futures_util::future::select(std::pin::pin!(f), std::pin::pin!(sleep)).await {
                Either::Left((result, _)) => result,
                Either::Right(_) => Err(L2Error::Timeout(limit)),
            }
        }
        None => f.await,
    }
}
