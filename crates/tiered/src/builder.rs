//! [`CacheBuilder`]: configuration, checked once at [`build`](CacheBuilder::build).

use std::sync::Arc;

use crate::backplane::subscriber::Link;
use crate::backplane::{Backplane, Change};
use crate::cache::{Cache, Inner, Weigher};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::filter::BloomFilter;
use crate::invalidate::Invalidations;
use crate::key::validate_namespace;
use crate::l1::L1;
use crate::l2::tier::Tier;
use crate::l2::{Codec, Compression, Encryption, L2Config, RedisL2, RedisL2Builder, L2};
use crate::load::flight::Flights;
use crate::options::Options;
use crate::stats::Recorder;
use crate::topk::TopKeys;
use crate::Value;

/// The default L1 budget: 64 MiB.
pub const DEFAULT_L1_BYTES: u64 = 64 << 20;
/// The largest L1 budget accepted (2^62 bytes), which keeps the tier's byte
/// arithmetic far from overflow whatever a weigher returns.
pub const MAX_L1_BYTES: u64 = 1 << 62;

/// Builds a [`Cache`]. Start with [`Cache::builder`].
///
/// ```
/// use std::time::Duration;
/// use tiered::Cache;
///
/// let cache: Cache<String> = Cache::builder("profiles")
///     .l1_max_bytes(16 << 20)
///     .ttl(Duration::from_secs(300))
///     .grace(Duration::from_secs(3600))
///     .eager_refresh(0.8)
///     .build()?;
/// # Ok::<(), tiered::Error>(())
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct CacheBuilder<V> {
    namespace: String,
    clock: Arc<dyn Clock>,
    l1_max_bytes: u64,
    weigher: Option<Weigher<V>>,
    defaults: Options,
    filter: Option<Arc<BloomFilter>>,
    top_keys: usize,
    top_keys_sample: u32,
    l2: Option<L2Source>,
    l2_config: L2Config,
    l1_enabled: bool,
    backplane: bool,
    transport: Option<Arc<dyn Backplane>>,
}

/// Where the L2 tier comes from.
enum L2Source {
    Backend(Arc<dyn L2>),
    Redis(RedisL2Builder),
}

impl<V: Value> CacheBuilder<V> {
    pub(crate) fn new(namespace: String) -> Self {
        CacheBuilder {
            namespace,
            clock: Arc::new(SystemClock),
            l1_max_bytes: DEFAULT_L1_BYTES,
            weigher: None,
            defaults: Options::default(),
            filter: None,
            top_keys: 32,
            top_keys_sample: 64,
            l2: None,
            l2_config: L2Config::default(),
            l1_enabled: true,
            backplane: true,
            transport: None,
        }
    }

    /// The clock (default: [`SystemClock`]); tests pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The L1 byte budget (default [`DEFAULT_L1_BYTES`]). Must be in
    /// `1..=MAX_L1_BYTES`.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = bytes;
        self
    }

    /// How to weigh a value for the budget (default: its encoded size in the
    /// compact binary format, `postcard`). The key's length is always added.
    pub fn weigher(mut self, weigher: impl Fn(&str, &V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// Replaces all default options at once.
    pub fn default_options(mut self, options: Options) -> Self {
        self.defaults = options;
        self
    }

    /// Default TTL. See [`Options::ttl`].
    pub fn ttl(mut self, ttl: std::time::Duration) -> Self {
        self.defaults = self.defaults.ttl(ttl);
        self
    }

    /// Default TTL jitter. See [`Options::ttl_jitter`].
    pub fn ttl_jitter(mut self, jitter: std::time::Duration) -> Self {
        self.defaults = self.defaults.ttl_jitter(jitter);
        self
    }

    /// Default grace (fail-safe window). See [`Options::grace`].
    pub fn grace(mut self, grace: std::time::Duration) -> Self {
        self.defaults = self.defaults.grace(grace);
        self
    }

    /// Default fail-safe back-off. See [`Options::failsafe_backoff`].
    pub fn failsafe_backoff(mut self, backoff: std::time::Duration) -> Self {
        self.defaults = self.defaults.failsafe_backoff(backoff);
        self
    }

    /// Default eager refresh point. See [`Options::eager_refresh`].
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.defaults = self.defaults.eager_refresh(fraction);
        self
    }

    /// Default distributed stampede protection. See [`Options::distributed`].
    pub fn distributed(mut self, enabled: bool) -> Self {
        self.defaults = self.defaults.distributed(enabled);
        self
    }

    /// Default XFetch β. See [`Options::xfetch`].
    pub fn xfetch(mut self, beta: f64) -> Self {
        self.defaults = self.defaults.xfetch(beta);
        self
    }

    /// Default loader soft timeout. See [`Options::soft_timeout`].
    pub fn soft_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.defaults = self.defaults.soft_timeout(timeout);
        self
    }

    /// Default loader hard timeout. See [`Options::hard_timeout`].
    pub fn hard_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.defaults = self.defaults.hard_timeout(timeout);
        self
    }

    /// Default negative-caching TTL. See [`Options::negative_ttl`].
    pub fn negative_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.defaults = self.defaults.negative_ttl(ttl);
        self
    }

    /// Default adaptive TTL. See [`Options::adaptive_ttl`].
    pub fn adaptive_ttl(mut self, adaptive: crate::AdaptiveTtl) -> Self {
        self.defaults = self.defaults.adaptive_ttl(adaptive);
        self
    }

    /// An existence filter the caller fills with the keys that exist; a miss on
    /// a key it has never seen returns "absent" without calling the loader.
    pub fn existence_filter(mut self, filter: Arc<BloomFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Track the `capacity` hottest keys (default 32; 0 disables), feeding the
    /// sketch one request in `sample_every` per thread (default 64, which keeps
    /// the sketch's cost on a hit to about a nanosecond). See
    /// [`Cache::top_keys`].
    pub fn top_keys(mut self, capacity: usize, sample_every: u32) -> Self {
        self.top_keys = capacity;
        self.top_keys_sample = sample_every;
        self
    }

    /// Adds an L2 tier on the Redis at `url`
    /// (`redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS).
    /// The URL is checked at [`build`](Self::build); the connection is made on
    /// first use.
    pub fn redis(self, url: impl Into<String>) -> Self {
        self.redis_with(RedisL2::builder(url))
    }

    /// Adds an L2 tier on the Redis Cluster reachable through any of `seeds`.
    pub fn redis_cluster<I, S>(self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redis_with(RedisL2::cluster(seeds))
    }

    /// Adds an L2 tier on Redis configured in full (e.g. a private CA for TLS).
    pub fn redis_with(mut self, redis: RedisL2Builder) -> Self {
        self.l2 = Some(L2Source::Redis(redis));
        self
    }

    /// Adds an L2 tier on any [`L2`] implementation.
    pub fn l2(mut self, backend: impl L2) -> Self {
        self.l2 = Some(L2Source::Backend(Arc::new(backend)));
        self
    }

    /// How the cache uses L2: timeouts, breaker, codec, compression,
    /// encryption, key prefix and tenant, all at once (see [`L2Config`]; the
    /// methods below set one field each).
    pub fn l2_config(mut self, config: L2Config) -> Self {
        self.l2_config = config;
        self
    }

    /// Timeout of each L2 call (default 250 ms).
    pub fn l2_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.l2_config.timeout = timeout;
        self
    }

    /// Open the L2 breaker after `failures` consecutive failures, for
    /// `cooldown` (defaults 5 and 500 ms: a probe every half second costs one call, and bounds how long after Redis returns the cache takes to use it and replay what it kept).
    pub fn l2_breaker(mut self, failures: u32, cooldown: std::time::Duration) -> Self {
        self.l2_config.breaker_failures = failures;
        self.l2_config.breaker_cooldown = cooldown;
        self
    }

    /// The L2 value codec (default [`Codec::Postcard`]).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.l2_config.codec = codec;
        self
    }

    /// L2 value compression (default LZ4 above 1 KiB).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.l2_config.compression = compression;
        self
    }

    /// Encrypt L2 values (AES-256-GCM). Values found in L2 unencrypted are then
    /// refused as bad data.
    pub fn encryption(mut self, encryption: Encryption) -> Self {
        self.l2_config.encryption = Some(encryption);
        self
    }

    /// The L2 key prefix (default `tiered`; see [`crate::l2::layout`]).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.l2_config.prefix = prefix.into();
        self
    }

    /// Keep this cache's L2 keys in `tenant`'s own space (see
    /// [`crate::l2::layout`]): caches of different tenants never see each
    /// other's entries.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.l2_config.tenant = Some(tenant.into());
        self
    }

    /// Keep every instance's L1 coherent through a backplane on the same Redis
    /// (default `true` with [`redis`](Self::redis); see [`crate::backplane`]).
    /// Turn it off only for a single instance, or for data where each
    /// instance's L1 may lag other instances' writes by up to its TTL.
    pub fn backplane(mut self, enabled: bool) -> Self {
        self.backplane = enabled;
        self
    }

    /// Carry backplane messages over `transport` instead of the L2's Redis
    /// (e.g. a wrapper that injects faults, in tests). Needs an L2.
    pub fn backplane_transport(mut self, transport: impl Backplane) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// `false` keeps nothing in process memory: every read goes to L2 (for
    /// data that must never be served from a local copy, and for measuring L2).
    pub fn l1_enabled(mut self, enabled: bool) -> Self {
        self.l1_enabled = enabled;
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty or too long namespace, a zero byte
    /// budget, a zero top-keys sampling rate; [`Error::InvalidOption`] for default
    /// options out of range.
    pub fn build(mut self) -> Result<Cache<V>> {
        validate_namespace(&self.namespace)?;
        if self.l1_max_bytes == 0 || self.l1_max_bytes > MAX_L1_BYTES {
            return Err(Error::InvalidConfig(format!(
                "l1_max_bytes must be in 1..={MAX_L1_BYTES}, got {}",
                self.l1_max_bytes
            )));
        }
        if self.top_keys_sample == 0 {
            return Err(Error::InvalidConfig(
                "top_keys sample_every must be >= 1".into(),
            ));
        }
        self.defaults.validate()?;
        for (what, value) in [
            ("key prefix", Some(&self.l2_config.prefix)),
            ("tenant", self.l2_config.tenant.as_ref()),
        ] {
            if let Some(value) = value {
                validate_namespace(value).map_err(|_| {
                    Error::InvalidConfig(format!(
                        "the {what} must be 1 to {} bytes without control characters",
                        crate::MAX_NAMESPACE_LEN
                    ))
                })?;
            }
        }
        if self.l2_config.timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "the L2 timeout must be above zero".into(),
            ));
        }
        if !self.l1_enabled && self.l2.is_none() {
            return Err(Error::InvalidConfig(
                "L1 is disabled and there is no L2: nothing would be cached".into(),
            ));
        }
        let namespace: Arc<str> = Arc::from(self.namespace);
        let mut transport: Option<Arc<dyn Backplane>> = self.transport.take();
        if transport.is_some() && self.l2.is_none() {
            return Err(Error::InvalidConfig(
                "a backplane transport needs an L2 tier".into(),
            ));
        }
        let l2 = match self.l2 {
            None => None,
            Some(source) => {
                let backend: Arc<dyn L2> = match source {
                    L2Source::Backend(b) => b,
                    L2Source::Redis(r) => {
                        let redis = Arc::new(r.build()?);
                        if self.backplane && transport.is_none() {
                            transport = Some(Arc::clone(&redis) as Arc<dyn Backplane>);
                        }
                        redis
                    }
                };
                Some(Arc::new(Tier::new(
                    backend,
                    self.l2_config,
                    Arc::clone(&namespace),
                    Arc::clone(&self.clock),
                )))
            }
        };
        let backplane = match (transport, &l2) {
            (Some(transport), Some(tier)) => Some(Arc::new(Link::new(
                transport,
                tier.layout.backplane(),
                tier.layout.records(),
                tier.layout.schedule(),
                tier.layout.depended(),
            ))),
            _ => None,
        };
        let weigher = self.weigher.unwrap_or_else(|| Arc::new(encoded_size::<V>));
        if let (Some(link), Some(tier)) = (&backplane, &l2) {
            let link = Arc::clone(link);
            let clock = Arc::clone(&self.clock);
            tier.on_replayed(Arc::new(move |removed, written| {
                let now = clock.now();
                if !removed.is_empty() {
                    link.announce(Change::Removed(removed), now);
                }
                for (key, version) in written {
                    link.announce(Change::Written { key, version }, now);
                }
            }));
        }
        let cache = Cache::from_inner(Inner {
            recorder: Recorder::new(&namespace),
            namespace,
            clock: self.clock,
            l1: L1::new(self.l1_max_bytes),
            defaults: Arc::new(self.defaults),
            weigher,
            filter: self.filter,
            invalidations: Invalidations::new(),
            flights: Flights::new(),
            top: TopKeys::new(self.top_keys, self.top_keys_sample),
            l2,
            l1_enabled: self.l1_enabled,
            backplane,
            events: Default::default(),
            write_stats: Default::default(),
        });
        cache.inner.connect();
        Ok(cache)
    }
}

/// The default weigher: the value's size in the compact binary encoding. A value
/// that cannot be encoded (a serializer error) weighs its in-memory size.
fn encoded_size<V: Value>(_key: &str, value: &V) -> u64 {
    match postcard::experimental::serialized_size(value) {
        Ok(n) => n as u64,
        Err(_) => std::mem::size_of::<V>() as u64,
    }
}
