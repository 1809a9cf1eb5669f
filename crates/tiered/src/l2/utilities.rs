//! Redis utilities services need beside plain caching, as [`Cache`] methods:
//! counters for rate limits, reading and extending lifetimes (sliding
//! expiration for sessions), versioned compare-and-set for read-modify-write,
//! and [`Cache::inspect`] for debugging.
//!
//! They need L2 and talk to it directly (through the breaker and timeout, but
//! with no fallback): when L2 is not configured or unreachable they return
//! [`Error::L2`] instead of guessing.

use std::sync::Arc;
use std::time::Duration;

use super::L2Error;
use crate::backplane::Change;
use crate::cache::Cache;
use crate::clock::Timestamp;
use crate::entry::{Entry, Freshness};
use crate::error::{Error, Result};
use crate::key::validate_key;
use crate::options::MAX_TTL;
use crate::Value;

/// How many times [`Cache::update`] retries after losing a race.
const UPDATE_ATTEMPTS: usize = 32;

/// What [`Cache::inspect`] found for a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inspection {
    /// L1 holds an entry (fresh or not).
    pub in_l1: bool,
    /// L2 holds a readable entry.
    pub in_l2: bool,
    /// The entry is a cached "absent".
    pub absent: bool,
    /// Remaining fresh lifetime (from L2 if there, else L1); zero if past it.
    pub fresh_for: Option<Duration>,
    /// Remaining lifetime including grace (Redis's own TTL for an L2 entry).
    pub expires_in: Option<Duration>,
    /// The L2 value's size in bytes (the whole envelope).
    pub l2_bytes: Option<usize>,
    /// The entry's version.
    pub version: Option<u64>,
    /// Tags and dependencies (`t:tag`, `k:key`).
    pub tags: Vec<String>,
}

impl<V: Value> Cache<V> {
    fn l2(&self) -> Result<&Arc<super::tier::Tier>> {
        self.inner
            .l2
            .as_ref()
            .ok_or(Error::L2(L2Error::NotConfigured))
    }

    /// How full the Redis behind L2 is: keys and memory of the whole server
    /// (every master of a Cluster). For dashboards; two small commands per
    /// node, so poll it every few seconds, not per request.
    ///
    /// # Errors
    ///
    /// [`Error::L2`] when L2 is missing or unreachable.
    pub async fn l2_server_usage(&self) -> Result<super::ServerUsage> {
        let l2 = self.l2()?;
        Ok(l2.observe(l2.backend().server_usage()).await?)
    }

    /// Adds `by` to the counter `key` and returns the new value. A counter
    /// created by this call expires after `ttl`; later calls do not extend it —
    /// a fixed-window rate limit: `if cache.incr(&ip, 1, minute).await? > 100 { reject }`.
    ///
    /// Counters live beside the cache's entries in their own key space (see
    /// [`super::layout`]); they are not values of the cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::InvalidOption`] for a zero or huge TTL,
    /// [`Error::L2`] when L2 is missing or unreachable (the count is unknown).
    pub async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        validate_key(key)?;
        check_ttl(ttl)?;
        let l2 = self.l2()?;
        let redis_key = l2.layout.counter(key);
        Ok(l2.direct(l2.backend().incr(&redis_key, by, ttl)).await?)
    }

    /// The value at `key` and its version, read from L2 (the shared copy, not
    /// L1's): the starting point of [`compare_and_set`](Self::compare_and_set).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::L2`].
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Arc<V>, u64)>> {
        validate_key(key)?;
        let l2 = self.l2()?;
        let redis_key = l2.layout.entry(key);
        let keys = [redis_key];
        let raw = l2.direct(l2.backend().get_many(&keys)).await?;
        let Some(bytes) = raw.into_iter().next().flatten() else {
            return Ok(None);
        };
        let Some(decoded) = l2.decode::<V>(key, &bytes) else {
            return Ok(None);
        };
        let now = self.inner.clock.now();
        if now >= decoded.meta.fresh_until {
            return Ok(None);
        }
        Ok(decoded.value.map(|v| (Arc::new(v), decoded.meta.version)))
    }

    /// Stores `value` at `key` only if L2 still holds version `expected`
    /// (`None`: only if L2 holds nothing at that key).
    /// Returns `false`, changing nothing, if another write got there first.
    /// On success L1 is updated too and loads of `key` in flight are fenced.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::L2`] (when L2 cannot be reached the
    /// outcome is unknown, so it is an error, never a silent success).
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<u64>,
        value: V,
    ) -> Result<bool> {
        self.cas(key, expected, Arc::new(value)).await
    }

    async fn cas(&self, key: &str, expected: Option<u64>, value: Arc<V>) -> Result<bool> {
        validate_key(key)?;
        let l2 = self.l2()?;
        let inner = &self.inner;
        let opts = Arc::clone(&inner.defaults);
        let now = inner.clock.now();
        let birth = inner.begin_load(&opts, now);
        let version = expected
            .map_or(0, |e| e.saturating_add(1))
            .max(l2.next_version());
        let Some(entry) = inner
            .build_entry(
                key,
                Some(Arc::clone(&value)),
                &opts,
                birth.born,
                now,
                Duration::ZERO,
            )
            .map(|e| Entry { version, ..e })
        else {
            return Ok(false);
        };
        let Some(write) = l2.encode(key, &entry.meta(), Some(&*value)) else {
            return Err(Error::option("value", "cannot be encoded for L2"));
        };
        let stored = l2
            .direct(l2.backend().compare_and_set(write, expected))
            .await?;
        if stored {
            inner.replace(key, Some(entry), now);
            inner.announce(
                Change::Written {
                    key: key.to_owned(),
                    version,
                },
                now,
            );
        }
        Ok(stored)
    }

    /// Read-modify-write through L2: applies `f` to the current value (`None`
    /// if there is none) and stores the result with
    /// [`compare_and_set`](Self::compare_and_set), retrying from a fresh read
    /// when another writer won the race. `f` returning `None` leaves the key
    /// as it is. Returns what was stored.
    ///
    /// # Errors
    ///
    /// [`Error::L2`] as for `compare_and_set`; [`Error::InvalidOption`]
    /// (`update`) after 32 lost races in a row (each followed by a short
    /// random back-off).
    pub async fn update(
        &self,
        key: &str,
        mut f: impl FnMut(Option<&V>) -> Option<V>,
    ) -> Result<Option<Arc<V>>> {
        for attempt in 0..UPDATE_ATTEMPTS {
            let current = self.get_versioned(key).await?;
            let Some(new) = f(current.as_ref().map(|(v, _)| &**v)) else {
                return Ok(current.map(|(v, _)| v));
            };
            // Only an existing fresh value gives a version to compare with;
            // an expired one is replaced as if absent, so compare against
            // whatever Redis still holds for it.
            let expected = match &current {
                Some((_, version)) => Some(*version),
                None => self.l2_version(key).await?,
            };
            let new = Arc::new(new);
            if self.cas(key, expected, Arc::clone(&new)).await? {
                return Ok(Some(new));
            }
            // Lost the race: back off a random moment, so contenders that
            // retry in lockstep do not keep colliding.
            let pause = Duration::from_micros(fastrand::u64(50..=500 * (attempt as u64 + 1)));
            match crate::load::sleep_until(tokio::time::Instant::now() + pause) {
                Some(sleep) => sleep.await,
                None => tokio::task::yield_now().await,
            }
        }
        Err(Error::option(
            "update",
            format!("lost {UPDATE_ATTEMPTS} races in a row for {key:?}"),
        ))
    }

    /// The version of whatever L2 holds at `key`, readable or not.
    async fn l2_version(&self, key: &str) -> Result<Option<u64>> {
        let l2 = self.l2()?;
        let keys = [l2.layout.entry(key)];
        let raw = l2.direct(l2.backend().get_many(&keys)).await?;
        Ok(raw
            .into_iter()
            .next()
            .flatten()
            .and_then(|b| super::envelope::version_of(&b)))
    }

    /// Extends the entry at `key`: fresh for `ttl` from now, keeping its grace
    /// period, in L2 and in L1. Returns `false` if there is no fresh entry.
    /// This is sliding expiration; see also [`get_sliding`](Self::get_sliding).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::InvalidOption`] for a zero or huge TTL,
    /// [`Error::L2`].
    pub async fn touch(&self, key: &str, ttl: Duration) -> Result<bool> {
        validate_key(key)?;
        check_ttl(ttl)?;
        self.rewrite(key, |meta, now| {
            if now >= meta.fresh_until {
                return false;
            }
            let grace = meta.stale_until.saturating_since(meta.fresh_until);
            meta.fresh_until = now.saturating_add(ttl);
            meta.stale_until = meta.fresh_until.saturating_add(grace);
            meta.refresh_at = Timestamp::MAX;
            meta.ttl = ttl;
            true
        })
        .await
    }

    /// Soft invalidation: marks the entry at `key` stale instead of removing
    /// it, in every tier and on every instance. The next read loads it again,
    /// but if the loader fails the old value is still served within its grace
    /// window (fail-safe). Returns `false` if there was no fresh entry.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`]; [`Error::L2`] when L2 is configured but
    /// unreachable (a remove, unlike this, is kept and replayed).
    pub async fn expire(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        if self.inner.l2.is_none() {
            return Ok(self.inner.expire_in_l1(key));
        }
        self.rewrite(key, |meta, now| {
            if now >= meta.fresh_until {
                return false;
            }
            meta.fresh_until = now;
            meta.refresh_at = Timestamp::MAX;
            true
        })
        .await
    }

    /// Rewrites the L2 envelope at `key` with `edit` (which may refuse), as a
    /// compare-and-set on its version, then installs the result in L1 and tells
    /// the other instances. Retries when another writer got there first.
    async fn rewrite(
        &self,
        key: &str,
        edit: impl Fn(&mut super::envelope::Meta, Timestamp) -> bool,
    ) -> Result<bool> {
        let l2 = self.l2()?;
        let inner = &self.inner;
        let keys = [l2.layout.entry(key)];
        for _ in 0..UPDATE_ATTEMPTS {
            let raw = l2.direct(l2.backend().get_many(&keys)).await?;
            let Some(bytes) = raw.into_iter().next().flatten() else {
                return Ok(false);
            };
            let Some(decoded) = l2.decode::<V>(key, &bytes) else {
                return Ok(false);
            };
            let now = inner.clock.now();
            let mut meta = decoded.meta;
            let old_version = meta.version;
            if !edit(&mut meta, now) {
                return Ok(false);
            }
            meta.version = old_version.saturating_add(1).max(l2.next_version());
            let Some(write) = l2.encode(key, &meta, decoded.value.as_ref()) else {
                return Ok(false);
            };
            let stored = l2
                .direct(l2.backend().compare_and_set(write, Some(old_version)))
                .await?;
            if stored {
                let opts = Arc::clone(&inner.defaults);
                let born = inner.begin_load(&opts, now).born;
                let version = meta.version;
                let d = super::envelope::Decoded {
                    meta,
                    value: decoded.value,
                };
                let entry = inner.entry_from_l2(key, d, &opts, born, now);
                inner.replace(key, entry, now);
                let key = key.to_owned();
                inner.announce(Change::Written { key, version }, now);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The fresh value at `key`, extending its life to `ttl` from now on a hit:
    /// sliding expiration, as sessions want (idle for `ttl` and it is gone).
    ///
    /// # Errors
    ///
    /// As [`touch`](Self::touch).
    pub async fn get_sliding(&self, key: &str, ttl: Duration) -> Result<Option<Arc<V>>> {
        let value = self.get(key).await?;
        if value.is_some() && !self.touch(key, ttl).await? {
            // Gone from L2 between the read and the touch: report what L2 says.
            return Ok(None);
        }
        Ok(value)
    }

    /// What each tier holds for `key`: presence, remaining lifetimes, size in
    /// L2, version and tags. For debugging; does not count as a request.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`]; [`Error::L2`] if L2 is configured but unreachable.
    pub async fn inspect(&self, key: &str) -> Result<Inspection> {
        validate_key(key)?;
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut out = Inspection::default();
        if let Some(entry) = inner.l1.peek(key) {
            out.in_l1 = true;
            out.absent = entry.value.is_none();
            out.fresh_for = Some(entry.fresh_until.saturating_since(now));
            out.expires_in = Some(entry.stale_until.saturating_since(now));
            out.version = Some(entry.version);
            out.tags = entry.tags.iter().map(|t| t.to_string()).collect();
            if entry.freshness(now) == Freshness::Gone {
                out.fresh_for = Some(Duration::ZERO);
            }
        }
        if let Some(l2) = &inner.l2 {
            let keys = [l2.layout.entry(key)];
            let raw = l2.direct(l2.backend().get_many(&keys)).await?;
            // A removal's tombstone is not an entry.
            let raw = raw.into_iter().next().flatten();
            if let Some(bytes) = raw.filter(|b| !super::envelope::is_tombstone(b)) {
                out.l2_bytes = Some(bytes.len());
                if let Some(d) = l2.decode::<V>(key, &bytes) {
                    out.in_l2 = true;
                    out.absent = d.value.is_none();
                    out.fresh_for = Some(d.meta.fresh_until.saturating_since(now));
                    out.version = Some(d.meta.version);
                    out.tags = d.meta.tags;
                    out.expires_in = l2.direct(l2.backend().ttl(&keys[0])).await?;
                }
            }
        }
        Ok(out)
    }
}

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::option("ttl", format!("must be in (0, {MAX_TTL:?}]")));
    }
    Ok(())
}
