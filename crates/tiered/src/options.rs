//! Per-entry options: how long an entry lives and how it is refreshed.
//!
//! An entry's life has three windows, measured from the moment it is stored:
//!
//! ```text
//!  stored        eager refresh point          fresh_until            stale_until
//!    |──── fresh ──────|──── fresh, refresh ahead ──|──── stale (grace) ────|── gone
//!    0           ttl × eager_refresh               ttl                 ttl + grace
//! ```
//!
//! * **fresh** — served as a hit.
//! * **refresh ahead** — still served as a hit, and the first hit starts *one*
//!   background reload so the entry is replaced before it expires (callers never
//!   wait). [`xfetch`](Options::xfetch) does the same probabilistically: the closer
//!   to expiry and the slower the loader, the likelier a hit refreshes.
//! * **stale** — not a hit. A loading call reloads; if the loader fails or passes
//!   its [`soft_timeout`](Options::soft_timeout), the stale value is served instead
//!   (fail-safe) and the key backs off for [`failsafe_backoff`](Options::failsafe_backoff)
//!   before the loader is tried again.
//!
//! The builder holds the defaults ([`CacheBuilder::default_options`](crate::CacheBuilder::default_options));
//! a call that needs different ones starts from [`Cache::options`](crate::Cache::options)
//! and changes what it needs:
//!
//! ```
//! # use std::time::Duration;
//! # fn demo(cache: &tiered::Cache<String>) {
//! let opts = cache.options().ttl(Duration::from_secs(30)).tag("user:42");
//! # let _ = opts;
//! # }
//! ```

use std::time::Duration;

use crate::error::{Error, Result};
use crate::key::validate_key;

/// The longest TTL (and grace, jitter, negative TTL) accepted: 365 days.
/// Anything longer is almost certainly a unit mistake.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The default loader hard timeout: 30 s.
pub const DEFAULT_HARD_TIMEOUT: Duration = Duration::from_secs(30);
/// The most tags (plus dependencies) one entry may carry.
pub const MAX_TAGS: usize = 64;
/// The longest tag accepted, in bytes.
pub const MAX_TAG_LEN: usize = 256;

/// Lengthen the TTL of keys that are hit often.
///
/// When an entry is reloaded and the entry it replaces was hit at least
/// `min_hits` times while fresh, the new entry gets **twice** the previous entry's
/// TTL, never more than `max_ttl`. A key hit fewer times goes back to the base TTL.
/// So a hot key's TTL grows geometrically — `ttl, 2·ttl, 4·ttl, … ≤ max_ttl` — and
/// falls back at once when it cools down. Use it for data where staleness of hot
/// keys is cheap and their reloads are not; do not use it where the TTL is a
/// correctness bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveTtl {
    /// Hits during the previous entry's fresh window needed to double the TTL (≥ 1).
    pub min_hits: u32,
    /// The upper bound on the TTL (≥ the base TTL, ≤ [`MAX_TTL`]).
    pub max_ttl: Duration,
}

/// Per-entry options. See the [module docs](self) for how the windows fit together.
///
/// Built from the cache's defaults with [`Cache::options`](crate::Cache::options)
/// and changed with the chaining methods; checked when used — an out-of-range value
/// makes the call return [`Error::InvalidOption`] and change nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub(crate) ttl: Duration,
    pub(crate) ttl_jitter: Duration,
    pub(crate) grace: Duration,
    pub(crate) failsafe_backoff: Duration,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) xfetch: Option<f64>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) adaptive_ttl: Option<AdaptiveTtl>,
    pub(crate) tags: Vec<String>,
    pub(crate) depends_on: Vec<String>,
    pub(crate) lease: bool,
}

impl Default for Options {
    /// TTL 60 s; hard timeout 30 s (so a hung loader can never hold a key); no
    /// jitter, grace, eager refresh, XFetch, soft timeout, negative caching or
    /// adaptive TTL; fail-safe back-off 5 s (used once a grace is set).
    fn default() -> Self {
        Options {
            ttl: Duration::from_secs(60),
            ttl_jitter: Duration::ZERO,
            grace: Duration::ZERO,
            failsafe_backoff: Duration::from_secs(5),
            eager_refresh: None,
            xfetch: None,
            soft_timeout: None,
            hard_timeout: Some(DEFAULT_HARD_TIMEOUT),
            negative_ttl: None,
            adaptive_ttl: None,
            tags: Vec::new(),
            depends_on: Vec::new(),
            lease: false,
        }
    }
}

impl Options {
    /// How long an entry is fresh. Must be in `(0, MAX_TTL]`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A random extra lifetime in `[0, jitter]` added to each entry's TTL, so keys
    /// loaded together do not all expire (and reload) together.
    pub fn ttl_jitter(mut self, jitter: Duration) -> Self {
        self.ttl_jitter = jitter;
        self
    }

    /// How long after expiry a stale value is kept to be served if reloading fails
    /// (fail-safe). Zero disables fail-safe.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// After a failed load that served a stale value (or a failed background
    /// refresh), how long the key serves that value without calling the loader
    /// again. Must be non-zero. A key with nothing to serve instead does not back
    /// off: each call (still one at a time, single-flight) tries the loader, so an
    /// error is never cached.
    pub fn failsafe_backoff(mut self, backoff: Duration) -> Self {
        self.failsafe_backoff = backoff;
        self
    }

    /// Start one background refresh on the first hit after this fraction of the TTL
    /// has passed (e.g. `0.8`). Must be in `(0, 1)`.
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.eager_refresh = Some(fraction);
        self
    }

    /// One load per key across *all* instances (with L2 on Redis): the first
    /// instance to miss takes a lease on the key in Redis and loads; the others
    /// wait for its value instead of querying the database too. Eager and
    /// XFetch refreshes take the lease as well, so one instance refreshes a hot
    /// key for everyone. See [`crate::load::lease`] for timeouts and failure
    /// handling. Without L2 this changes nothing.
    pub fn distributed(mut self, enabled: bool) -> Self {
        self.lease = enabled;
        self
    }

    /// Probabilistic early refresh (XFetch, Vattani et al. 2015): a hit refreshes in
    /// the background when `now − Δ·β·ln(U) ≥ expiry`, with `U` uniform in `(0,1]`,
    /// `Δ` the measured duration of the load that produced the entry and `β` this
    /// value (1.0 is the paper's choice; larger refreshes earlier). Must be finite
    /// and `> 0`.
    pub fn xfetch(mut self, beta: f64) -> Self {
        self.xfetch = Some(beta);
        self
    }

    /// If the loader has not finished after this long *and* a stale value exists,
    /// serve the stale value; the load goes on in the background and its result is
    /// stored when it arrives.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Abandon the loader after this long: the load fails with [`Error::Timeout`]
    /// (or serves stale, if any), and the key is free for the next caller. Default
    /// [`DEFAULT_HARD_TIMEOUT`]; at most [`MAX_TTL`]. Must be longer than the soft
    /// timeout.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Cache "absent" (a loader returning `Ok(None)`) for this long, so a missing
    /// row does not reach the database on every request. Unset: absence is not
    /// cached.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Lengthen the TTL of frequently hit keys; see [`AdaptiveTtl`].
    pub fn adaptive_ttl(mut self, adaptive: AdaptiveTtl) -> Self {
        self.adaptive_ttl = Some(adaptive);
        self
    }

    /// Adds a tag. [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) drops
    /// every entry carrying it, in amortized O(1).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Replaces the tags.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Declares that the entry is derived from the entry at `key`: removing or
    /// replacing `key` drops this entry too. The cascade is transitive through
    /// entries present in L1 when this one is stored (if `key`'s entry itself
    /// depends on `parent`, removing `parent` drops this entry as well); declare
    /// every ancestor explicitly when that cannot be relied on.
    pub fn depends_on(mut self, key: impl Into<String>) -> Self {
        self.depends_on.push(key.into());
        self
    }

    /// Checks every option; the cache calls this before using them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the first option out of range.
    pub fn validate(&self) -> Result<()> {
        check_duration("ttl", self.ttl, false)?;
        check_duration("ttl_jitter", self.ttl_jitter, true)?;
        check_duration("grace", self.grace, true)?;
        check_duration("failsafe_backoff", self.failsafe_backoff, false)?;
        if let Some(ttl) = self.negative_ttl {
            check_duration("negative_ttl", ttl, false)?;
        }
        if let Some(f) = self.eager_refresh {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::option(
                    "eager_refresh",
                    format!("must be a fraction in (0, 1), got {f}"),
                ));
            }
        }
        if let Some(beta) = self.xfetch {
            if !(beta.is_finite() && beta > 0.0) {
                return Err(Error::option(
                    "xfetch",
                    format!("beta must be finite and > 0, got {beta}"),
                ));
            }
        }
        if let Some(t) = self.soft_timeout {
            check_duration("soft_timeout", t, false)?;
        }
        if let Some(t) = self.hard_timeout {
            check_duration("hard_timeout", t, false)?;
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout) {
            if soft >= hard {
                return Err(Error::option(
                    "soft_timeout",
                    format!("must be shorter than hard_timeout ({soft:?} >= {hard:?})"),
                ));
            }
        }
        if let Some(a) = self.adaptive_ttl {
            if a.min_hits == 0 {
                return Err(Error::option("adaptive_ttl", "min_hits must be >= 1"));
            }
            check_duration("adaptive_ttl", a.max_ttl, false)?;
            if a.max_ttl < self.ttl {
                return Err(Error::option(
                    "adaptive_ttl",
                    format!("max_ttl {:?} is below the ttl {:?}", a.max_ttl, self.ttl),
                ));
            }
        }
        if self.tags.len() + self.depends_on.len() > MAX_TAGS {
            return Err(Error::option(
                "tags",
                format!("at most {MAX_TAGS} tags and dependencies per entry"),
            ));
        }
        for tag in &self.tags {
            validate_tag(tag)?;
        }
        for key in &self.depends_on {
            validate_key(key).map_err(|e| Error::option("depends_on", e.to_string()))?;
        }
        Ok(())
    }
}

/// Checks a tag: non-empty, at most [`MAX_TAG_LEN`] bytes.
pub(crate) fn validate_tag(tag: &str) -> Result<()> {
    if tag.is_empty() {
        return Err(Error::option("tags", "a tag must not be empty"));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(Error::option(
            "tags",
            format!("a tag is at most {MAX_TAG_LEN} bytes, got {}", tag.len()),
        ));
    }
    Ok(())
}

fn check_duration(option: &'static str, d: Duration, zero_ok: bool) -> Result<()> {
    if d.is_zero() && !zero_ok {
        return Err(Error::option(option, "must be greater than zero"));
    }
    if d > MAX_TTL {
        return Err(Error::option(
            option,
            format!("{d:?} exceeds the maximum of {MAX_TTL:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Options::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn rejects_out_of_range_values() {
        let bad = [
            Options::default().ttl(Duration::ZERO),
            Options::default().ttl(MAX_TTL + Duration::from_secs(1)),
            Options::default().eager_refresh(f64::NAN),
            Options::default().eager_refresh(-0.5),
            Options::default().eager_refresh(1.0),
            Options::default().xfetch(0.0),
            Options::default().xfetch(f64::INFINITY),
            Options::default().negative_ttl(Duration::ZERO),
            Options::default().failsafe_backoff(Duration::ZERO),
            Options::default()
                .soft_timeout(Duration::from_secs(2))
                .hard_timeout(Duration::from_secs(1)),
            Options::default().adaptive_ttl(AdaptiveTtl {
                min_hits: 0,
                max_ttl: Duration::from_secs(600),
            }),
            Options::default().adaptive_ttl(AdaptiveTtl {
                min_hits: 1,
                max_ttl: Duration::from_secs(1),
            }),
            Options::default().tag(""),
            Options::default().tag("x".repeat(MAX_TAG_LEN + 1)),
            Options::default().tags((0..=MAX_TAGS).map(|i| i.to_string())),
            Options::default().depends_on(""),
        ];
        for opts in bad {
            let err = opts.validate().expect_err("must be refused");
            assert!(err.is_invalid_input(), "{err}");
        }
    }
}
