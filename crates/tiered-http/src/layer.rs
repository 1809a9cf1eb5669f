//! [`CacheLayer`]: configuration, per-route [`Rule`]s, purges and counters.
//! What happens to a request is in [`crate::service`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tiered::{Cache, Clock, SystemClock};

use crate::entry::{HttpEntry, Kind};
use crate::flight::Flights;
use crate::key::{self, KeyOptions};
use crate::policy::FreshnessConfig;

/// Unkeyed request headers removed before a request that may be stored reaches
/// the origin: each is a known way to make an origin produce a response that
/// depends on something the key does not contain (cache poisoning).
pub const DEFAULT_UNKEYED_HEADERS: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "forwarded",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Soft or hard purge.
///
/// A **hard** purge removes the entries: the next request goes to the origin
/// and waits for it. A **soft** purge marks them stale: the next request
/// revalidates (cheaply, with `If-None-Match` / `If-Modified-Since`), and the
/// entry can still be served under `stale-while-revalidate` and
/// `stale-if-error` — so purging a hot page does not send a stampede at a
/// struggling origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Remove the entries.
    Hard,
    /// Mark the entries stale.
    Soft,
}

/// A purge that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The URL or prefix is not an absolute `http(s)://host/...` URL.
    #[error("not an absolute http(s) URL: {0}")]
    BadUrl(String),
    /// Not a response key (keys start with `r|`, as [`CacheLayer::top_keys`]
    /// and the engine list them).
    #[error("not a response cache key: {0}")]
    BadKey(String),
    /// A soft purge by prefix must end at a path segment (`/`).
    #[error("a soft purge by prefix must end with '/': {0}")]
    SoftPrefix(String),
    /// A tag no response can carry: empty, or holding a space, comma or tab
    /// (the separators of `Surrogate-Key` and `Cache-Tag`).
    #[error("not a tag a response can carry (empty, or with a space, comma or tab): {0:?}")]
    BadTag(String),
    /// The engine refused (bad tag, key too long, L2 unreachable for a pattern).
    #[error(transparent)]
    Cache(#[from] tiered::Error),
}

/// A per-route rule, matched on the path prefix; the first match wins.
///
/// ```
/// use std::time::Duration;
/// use tiered_http::Rule;
///
/// let rules = [
///     Rule::path_prefix("/admin/").bypass(),
///     Rule::path_prefix("/static/").ttl(Duration::from_secs(86400)),
///     Rule::path_prefix("/search").ignore_query_params(["utm_source", "utm_medium"]).sort_query(),
/// ];
/// # let _ = rules;
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) prefix: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) bypass: bool,
    pub(crate) key: KeyOptions,
}

impl Rule {
    /// A rule for paths starting with `prefix`.
    pub fn path_prefix(prefix: impl Into<String>) -> Self {
        Rule {
            prefix: prefix.into(),
            ttl: None,
            bypass: false,
            key: KeyOptions::default(),
        }
    }

    /// Replaces the freshness lifetime of *storable* responses. It never makes
    /// a `private`, `no-store` or `Set-Cookie` response storable: the origin
    /// decides what may be shared, the rule only how long.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Never cache these paths; requests pass straight to the origin.
    pub fn bypass(mut self) -> Self {
        self.bypass = true;
        self
    }

    /// Leaves these query parameters out of the key (tracking parameters).
    pub fn ignore_query_params<I, S>(mut self, params: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.key
            .ignore_params
            .extend(params.into_iter().map(Into::into));
        self
    }

    /// Sorts query parameters in the key (`?b=1&a=2` and `?a=2&b=1` share an entry).
    pub fn sort_query(mut self) -> Self {
        self.key.sort_query = true;
        self
    }
}

/// Counters of what the layer did (since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Served fresh from the cache.
    pub hits: u64,
    /// Served stale (while revalidating, or because the origin failed).
    pub stale: u64,
    /// Sent to the origin for a cacheable request.
    pub misses: u64,
    /// Revalidated with the origin and found unchanged (304).
    pub revalidated: u64,
    /// Not cacheable (method, rule): passed through.
    pub bypass: u64,
    /// Responses stored.
    pub stored: u64,
    /// Requests that waited for another request's origin response.
    pub coalesced: u64,
    /// Origin errors and timeouts.
    pub origin_errors: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub stale: AtomicU64,
    pub misses: AtomicU64,
    pub revalidated: AtomicU64,
    pub bypass: AtomicU64,
    pub stored: AtomicU64,
    pub coalesced: AtomicU64,
    pub origin_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct Shared {
    pub cache: Cache<HttpEntry>,
    pub clock: Arc<dyn Clock>,
    pub name: String,
    pub max_body: usize,
    pub freshness: FreshnessConfig,
    pub tenant_header: Option<HeaderName>,
    pub default_scheme: String,
    pub unkeyed: Vec<HeaderName>,
    pub tag_headers: Vec<HeaderName>,
    pub expose_tags: bool,
    pub rules: Vec<Rule>,
    pub origin_timeout: Option<Duration>,
    pub revalidation_keep: Duration,
    pub max_keep: Duration,
    pub flights: Flights,
    pub counters: Counters,
    /// Soft-purge markers known to be absent, and when that was checked (ms).
    pub absent: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
}

/// A `tower::Layer` that puts an RFC 9111 shared cache, stored in a
/// [`tiered::Cache`], in front of a service. Cheap to clone; clones share the
/// cache, the counters and the purge API.
///
/// ```
/// use std::time::Duration;
/// use tiered_http::{cache_builder, CacheLayer, Rule};
///
/// let cache = cache_builder("http").l1_max_bytes(256 << 20).build()?;
/// let layer = CacheLayer::builder(cache)
///     .rule(Rule::path_prefix("/admin/").bypass())
///     .max_body_bytes(4 << 20)
///     .build()?;
/// // tower::ServiceBuilder::new().layer(layer).service(my_service)
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// A [`tiered::CacheBuilder`] for HTTP entries with the right weigher (body
/// plus headers, without serializing the entry to weigh it).
pub fn cache_builder(namespace: impl Into<String>) -> tiered::CacheBuilder<HttpEntry> {
    Cache::builder(namespace).weigher(HttpEntry::weigh)
}

/// Builds a [`CacheLayer`]; see each method for its default.
pub struct CacheLayerBuilder {
    cache: Cache<HttpEntry>,
    clock: Arc<dyn Clock>,
    name: String,
    max_body: usize,
    freshness: FreshnessConfig,
    targeted: Vec<String>,
    tenant_header: Option<String>,
    default_scheme: String,
    unkeyed: Vec<String>,
    tag_headers: Vec<String>,
    expose_tags: bool,
    rules: Vec<Rule>,
    origin_timeout: Option<Duration>,
    revalidation_keep: Duration,
    max_keep: Duration,
}

/// A configuration the builder refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid cache layer configuration: {0}")]
pub struct ConfigError(String);

impl CacheLayer {
    /// Starts a builder storing into `cache`. Configure L1 size, Redis and the
    /// backplane on the cache; everything HTTP on the builder.
    pub fn builder(cache: Cache<HttpEntry>) -> CacheLayerBuilder {
        CacheLayerBuilder {
            cache,
            clock: Arc::new(SystemClock),
            name: "tiered".into(),
            max_body: 8 << 20,
            freshness: FreshnessConfig {
                heuristic: None,
                heuristic_max: Duration::from_secs(86400),
                targeted: Vec::new(),
                device: String::new(),
                store_set_cookie: false,
                default_stale_if_error: Duration::ZERO,
            },
            targeted: Vec::new(),
            tenant_header: None,
            default_scheme: "http".into(),
            unkeyed: DEFAULT_UNKEYED_HEADERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            tag_headers: vec!["surrogate-key".into(), "cache-tag".into()],
            expose_tags: false,
            rules: Vec::new(),
            origin_timeout: None,
            revalidation_keep: Duration::from_secs(3600),
            max_keep: Duration::from_secs(7 * 86400),
        }
    }

    /// The engine cache the layer stores into.
    pub fn cache(&self) -> &Cache<HttpEntry> {
        &self.shared.cache
    }

    /// Counters since start.
    pub fn stats(&self) -> HttpStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HttpStats {
            hits: get(&c.hits),
            stale: get(&c.stale),
            misses: get(&c.misses),
            revalidated: get(&c.revalidated),
            bypass: get(&c.bypass),
            stored: get(&c.stored),
            coalesced: get(&c.coalesced),
            origin_errors: get(&c.origin_errors),
        }
    }

    /// Purges one URL (every `Vary` variant of it) on every instance.
    ///
    /// # Errors
    ///
    /// [`PurgeError::BadUrl`] for anything but an absolute http(s) URL.
    pub async fn purge_url(&self, url: &str, mode: PurgeMode) -> Result<(), PurgeError> {
        self.purge_url_for_tenant("", url, mode).await
    }

    /// [`purge_url`](Self::purge_url) for one tenant (the value of the
    /// configured tenant header).
    ///
    /// # Errors
    ///
    /// As [`purge_url`](Self::purge_url).
    pub async fn purge_url_for_tenant(
        &self,
        tenant: &str,
        url: &str,
        mode: PurgeMode,
    ) -> Result<(), PurgeError> {
        let primary =
            key::for_url(url, tenant).ok_or_else(|| PurgeError::BadUrl(url.to_owned()))?;
        self.shared.purge_primary(&primary, mode).await
    }

    /// Purges one cache key, as the engine stores it (`r|tenant|url`, the form
    /// [`top_keys`](Self::top_keys) lists), with every `Vary` variant of its URL.
    ///
    /// # Errors
    ///
    /// [`PurgeError::BadKey`] for anything but a response key.
    pub async fn purge_key(&self, key: &str, mode: PurgeMode) -> Result<(), PurgeError> {
        let primary = key::primary_of(key).ok_or_else(|| PurgeError::BadKey(key.to_owned()))?;
        self.shared.purge_primary(primary, mode).await
    }

    /// The `n` most requested response keys (estimated, see
    /// [`tiered::Cache::top_keys`]), without the layer's internal keys.
    pub fn top_keys(&self, n: usize) -> Vec<tiered::HotKey> {
        let mut keys = self.shared.cache.top_keys(n + 8);
        keys.retain(|k| k.key.starts_with(key::RESPONSE));
        keys.truncate(n);
        keys
    }

    /// Purges every response tagged `tag` (by the origin's `Surrogate-Key` or
    /// `Cache-Tag`), on every instance, in O(1).
    ///
    /// # Errors
    ///
    /// [`PurgeError::BadTag`] for a tag no response can carry (empty, or
    /// holding a separator), [`PurgeError::Cache`] for a too long one.
    pub async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<(), PurgeError> {
        // Tags are read from headers split at these: a purge of one holding
        // a separator would succeed and never match anything.
        if tag.is_empty() || tag.contains([' ', ',', '\t']) {
            return Err(PurgeError::BadTag(tag.to_owned()));
        }
        let tag = engine_tag(tag);
        match mode {
            PurgeMode::Hard => self.shared.cache.invalidate_tag(&tag)?,
            PurgeMode::Soft => self.shared.mark(&format!("m|t|{tag}")).await?,
        }
        Ok(())
    }

    /// Purges every URL starting with `url_prefix` (`https://host/path-prefix`).
    /// A hard purge walks L2 with `SCAN` (cost grows with the cache); a soft
    /// purge is O(1) but must end at a segment boundary (`/`).
    ///
    /// # Errors
    ///
    /// [`PurgeError::BadUrl`], [`PurgeError::SoftPrefix`], or
    /// [`PurgeError::Cache`] if L2 could not be walked.
    pub async fn purge_prefix(&self, url_prefix: &str, mode: PurgeMode) -> Result<(), PurgeError> {
        self.purge_prefix_for_tenant("", url_prefix, mode).await
    }

    /// [`purge_prefix`](Self::purge_prefix) for one tenant.
    ///
    /// # Errors
    ///
    /// As [`purge_prefix`](Self::purge_prefix).
    pub async fn purge_prefix_for_tenant(
        &self,
        tenant: &str,
        url_prefix: &str,
        mode: PurgeMode,
    ) -> Result<(), PurgeError> {
        let prefix = key::prefix_for(url_prefix, tenant)
            .ok_or_else(|| PurgeError::BadUrl(url_prefix.to_owned()))?;
        match mode {
            PurgeMode::Hard => {
                self.shared
                    .cache
                    .invalidate_pattern(&format!("{}*", key::glob_escape(&prefix)))
                    .await?;
            }
            PurgeMode::Soft => {
                if !prefix.ends_with('/') {
                    return Err(PurgeError::SoftPrefix(url_prefix.to_owned()));
                }
                self.shared.mark(&format!("m|p|{prefix}")).await?;
            }
        }
        Ok(())
    }

    /// Removes everything this layer stored, on every instance.
    pub fn purge_all(&self) {
        self.shared.cache.clear();
    }
}

/// The engine tag for an origin tag (`t:` keeps them apart from URL tags).
pub(crate) fn engine_tag(tag: &str) -> String {
    format!("t:{tag}")
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now().as_nanos() / 1_000_000
    }

    pub(crate) fn rule_for(&self, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| path.starts_with(&r.prefix))
    }

    /// Hard or soft purge of one primary key and all its variants.
    pub(crate) async fn purge_primary(
        &self,
        primary: &str,
        mode: PurgeMode,
    ) -> Result<(), PurgeError> {
        let tag = key::url_tag(primary);
        match mode {
            PurgeMode::Hard => {
                self.cache.invalidate_tag(&tag)?;
                self.cache.remove(primary).await?;
            }
            PurgeMode::Soft => self.mark(&format!("m|u|{tag}")).await?,
        }
        Ok(())
    }

    /// Records a soft-purge marker (and the "any marker" sentinel that lets
    /// hits skip the marker checks when nothing was soft-purged recently).
    async fn mark(&self, marker: &str) -> Result<(), tiered::Error> {
        let now = self.now_ms();
        {
            let mut absent = self.absent.lock();
            absent.remove(marker);
            absent.remove("m|any");
        }
        let opts = self
            .cache
            .options()
            .ttl(self.max_keep)
            .grace(Duration::ZERO);
        self.cache
            .set_with(marker, HttpEntry(Kind::Marker(now)), &opts)
            .await?;
        self.cache
            .set_with("m|any", HttpEntry(Kind::Marker(now)), &opts)
            .await
    }

    /// The time of a marker, 0 if none. Markers are read with a plain `get`
    /// (L1, then L2) and never written on a read: a failed L2 read must not
    /// store an "absent" that would overwrite a real marker. Absence is
    /// remembered here for [`ABSENT_FOR`], so a hit costs no Redis call; a
    /// marker set on another instance is seen within that time.
    async fn marker(&self, marker: &str) -> u64 {
        let now = self.now_ms();
        if let Some(&checked) = self.absent.lock().get(marker) {
            if now.saturating_sub(checked) < ABSENT_FOR_MS {
                return 0;
            }
        }
        match self.cache.get(marker).await.ok().flatten().as_deref() {
            Some(HttpEntry(Kind::Marker(at))) => *at,
            _ => {
                let mut absent = self.absent.lock();
                if absent.len() >= MAX_ABSENT {
                    absent.clear(); // bounded: forgetting only costs a lookup
                }
                absent.insert(marker.to_owned(), now);
                0
            }
        }
    }

    /// Whether a stored response was soft-purged after it was requested
    /// (`requested_at`, so a purge during the fetch counts).
    pub(crate) async fn soft_purged(
        &self,
        primary: &str,
        tags: &[String],
        requested_at: u64,
    ) -> bool {
        if self.marker("m|any").await < requested_at {
            return false;
        }
        if self.marker(&format!("m|u|{}", key::url_tag(primary))).await >= requested_at {
            return true;
        }
        for tag in tags {
            if self.marker(&format!("m|t|{}", engine_tag(tag))).await >= requested_at {
                return true;
            }
        }
        // Prefix markers end at a '/': check the path's segment boundaries
        // (at most MAX_PREFIX_DEPTH of them, so a hostile URL cannot multiply
        // the lookups).
        let path_start = primary.find("://").map_or(0, |i| i + 3);
        let path_start = primary[path_start..]
            .find('/')
            .map_or(primary.len(), |i| path_start + i);
        // The query's '?' is the first one after the path starts: a tenant
        // (or a hostile Host) before it may hold a '?' of its own.
        let path_end = primary[path_start..]
            .find('?')
            .map_or(primary.len(), |i| path_start + i);
        for (i, _) in primary[path_start..path_end]
            .match_indices('/')
            .take(MAX_PREFIX_DEPTH)
        {
            let prefix = &primary[..=path_start + i];
            if self.marker(&format!("m|p|{prefix}")).await >= requested_at {
                return true;
            }
        }
        false
    }
}

/// How long an absent soft-purge marker is remembered locally.
const ABSENT_FOR_MS: u64 = 1000;
/// The most absent markers remembered.
const MAX_ABSENT: usize = 100_000;
/// The deepest path prefix a soft purge by prefix can reach.
const MAX_PREFIX_DEPTH: usize = 16;

impl CacheLayerBuilder {
    /// The clock (default: the system clock). Give the engine cache the same
    /// one; tests use a [`tiered::ManualClock`] to move time without sleeping.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// This cache's name in `Cache-Status` (default `tiered`). Must be a token.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The largest body stored (default 8 MiB). Larger and unknown-length
    /// bodies over the limit pass through streamed, never buffered whole.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Enables heuristic freshness (off by default): responses without an
    /// explicit lifetime but with `Last-Modified` are fresh for `fraction` of
    /// their age at the time they were served (RFC 9111 §4.2.2 suggests 0.1),
    /// at most `max`.
    pub fn heuristic_freshness(mut self, fraction: f64, max: Duration) -> Self {
        self.freshness.heuristic = Some(fraction);
        self.freshness.heuristic_max = max;
        self
    }

    /// Adds a targeted cache-control field (RFC 9213), e.g. `CDN-Cache-Control`
    /// or `Surrogate-Control`; when present in a response it replaces
    /// `Cache-Control` and `Expires` for this cache. The first configured
    /// field present wins. Directives targeted at another device
    /// (`max-age=60;other`) are ignored; with `Surrogate-Control`, requests
    /// announce `Surrogate-Capability: <name>="Surrogate/1.0"` so the origin
    /// can target this cache by its [`name`](Self::name).
    pub fn targeted_field(mut self, name: &str) -> Self {
        self.targeted.push(name.to_owned());
        self
    }

    /// Stores responses carrying `Set-Cookie` (default: never). Only for
    /// origins whose cookies are not per-user: the stored cookie is sent to
    /// everyone.
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.freshness.store_set_cookie = store;
        self
    }

    /// Serves a stale response for up to `window` past its lifetime when the
    /// origin fails, even without `stale-if-error` (default: 0, only when the
    /// origin says so). `must-revalidate` still forbids it.
    pub fn default_stale_if_error(mut self, window: Duration) -> Self {
        self.freshness.default_stale_if_error = window;
        self
    }

    /// Keys entries by this request header too (e.g. `X-Tenant`).
    pub fn tenant_header(mut self, name: &str) -> Self {
        self.tenant_header = Some(name.to_owned());
        self
    }

    /// The scheme of requests whose URI has none (default `http`; `https`
    /// behind a TLS terminator).
    pub fn default_scheme(mut self, scheme: &str) -> Self {
        self.default_scheme = scheme.to_ascii_lowercase();
        self
    }

    /// Replaces the unkeyed headers removed from cacheable requests (default
    /// [`DEFAULT_UNKEYED_HEADERS`]).
    pub fn unkeyed_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.unkeyed = names.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps `Surrogate-Key` / `Cache-Tag` on responses sent to clients
    /// (default: stripped; they are for this cache).
    pub fn expose_tags(mut self, expose: bool) -> Self {
        self.expose_tags = expose;
        self
    }

    /// Adds a per-route rule (first match wins).
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// A deadline for origin responses (headers); past it the request counts
    /// as an origin error (and `stale-if-error` applies). Default: none.
    pub fn origin_timeout(mut self, timeout: Duration) -> Self {
        self.origin_timeout = Some(timeout);
        self
    }

    /// How long a stale response with a validator is kept for revalidation
    /// (default 1 hour).
    pub fn revalidation_keep(mut self, keep: Duration) -> Self {
        self.revalidation_keep = keep;
        self
    }

    /// The longest any entry is kept (default 7 days).
    pub fn max_keep(mut self, keep: Duration) -> Self {
        self.max_keep = keep;
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid header name, a name that is not a token,
    /// a heuristic fraction outside 0..=1, or a zero body limit.
    pub fn build(mut self) -> Result<CacheLayer, ConfigError> {
        let header = |s: &str| {
            HeaderName::from_bytes(s.as_bytes())
                .map_err(|_| ConfigError(format!("invalid header name {s:?}")))
        };
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError(format!(
                "cache name {:?} is not a token",
                self.name
            )));
        }
        if let Some(f) = self.freshness.heuristic {
            if !(0.0..=1.0).contains(&f) {
                return Err(ConfigError(format!(
                    "heuristic fraction {f} is not within 0..=1"
                )));
            }
        }
        if self.max_body == 0 {
            return Err(ConfigError("max_body_bytes is 0".into()));
        }
        if !matches!(self.default_scheme.as_str(), "http" | "https") {
            return Err(ConfigError(format!(
                "default scheme {:?}",
                self.default_scheme
            )));
        }
        let max_keep = self.max_keep.min(tiered::MAX_TTL);
        self.freshness.targeted = self
            .targeted
            .iter()
            .map(|s| header(s))
            .collect::<Result<_, _>>()?;
        self.freshness.device = self.name.clone();
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                cache: self.cache,
                clock: self.clock,
                name: self.name,
                max_body: self.max_body,
                freshness: self.freshness,
                tenant_header: self.tenant_header.as_deref().map(header).transpose()?,
                default_scheme: self.default_scheme,
                unkeyed: self
                    .unkeyed
                    .iter()
                    .map(|s| header(s))
                    .collect::<Result<_, _>>()?,
                tag_headers: self
                    .tag_headers
                    .iter()
                    .map(|s| header(s))
                    .collect::<Result<_, _>>()?,
                expose_tags: self.expose_tags,
                rules: self.rules,
                origin_timeout: self.origin_timeout,
                revalidation_keep: self.revalidation_keep.min(max_keep),
                max_keep,
                flights: Flights::default(),
                counters: Counters::default(),
                absent: Default::default(),
            }),
        })
    }
}
