//! What the layer keeps in the engine: responses, `Vary` lists and soft-purge
//! markers, all as one value type so they share one [`tiered::Cache`] — and
//! with it L1, L2, the backplane and tag invalidation.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::policy::{Freshness, Plan};

/// A value stored by [`CacheLayer`](crate::CacheLayer). Opaque: build the
/// engine cache as `Cache::<HttpEntry>::builder(..)` (or with
/// [`cache_builder`](crate::cache_builder), which also sets the weigher).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpEntry(pub(crate) Kind);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A stored response, shared: a hit hands out the `Arc`, not a copy.
    Response(Arc<Stored>),
    /// The response at this URL varies on these (lower-case) fields; the
    /// variants live under variant keys.
    Vary(Vec<String>),
    /// A soft purge happened at this time (ms since the epoch).
    Marker(u64),
}

impl HttpEntry {
    /// The L1 weight of an entry: body plus headers plus a fixed overhead. Much
    /// cheaper than the engine's default (serializing the value to weigh it).
    pub fn weigh(key: &str, entry: &HttpEntry) -> u64 {
        let size = match &entry.0 {
            Kind::Response(s) => {
                s.body.len()
                    + s.headers
                        .iter()
                        // The line itself, plus its share of the header map
                        // built on the first hit (bucket, index, name and
                        // value handles: ~100 bytes on 64-bit).
                        .map(|(k, v)| k.len() + v.len() + 16 + 100)
                        .sum::<usize>()
                    + s.tags.iter().map(|t| t.len() + 24).sum::<usize>()
                    + 128
            }
            Kind::Vary(names) => names.iter().map(|n| n.len() + 24).sum::<usize>() + 32,
            Kind::Marker(_) => 16,
        };
        (size + key.len()) as u64
    }
}

/// A stored response and the freshness facts decided when it was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub status: u16,
    /// Header lines in order (names lower-case), minus hop-by-hop fields and
    /// the fields the origin asked not to store.
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    /// When the request that fetched it left (ms since the epoch, the
    /// cache's clock): a soft purge after this covers the response.
    pub request_time: u64,
    /// When the response arrived here (ms since the epoch, the cache's clock).
    pub response_time: u64,
    /// `corrected_initial_age` (ms).
    pub initial_age: u64,
    pub lifetime: u64,
    pub swr: u64,
    pub sie: u64,
    pub must_revalidate: bool,
    pub no_cache: bool,
    /// Tags from `Surrogate-Key` / `Cache-Tag`.
    pub tags: Vec<String>,
    /// The fields the response varies on (lower-case, sorted).
    pub vary: Vec<String>,
    /// `headers` as a map, built on first use: every hit starts from a clone
    /// of it (reference counts, no parsing or hashing) instead of rebuilding
    /// it from the lines. Not serialized; `headers` is never changed after
    /// construction, so it cannot go out of date.
    #[serde(skip)]
    pub(crate) map: OnceLock<HeaderMap>,
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Stored {
    pub(crate) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        plan: &Plan,
        response_time: Duration,
        drop_fields: &[HeaderName],
    ) -> Stored {
        let headers = headers
            .iter()
            .filter(|(name, _)| {
                !is_hop_by_hop(name) && !plan.strip.contains(name) && !drop_fields.contains(name)
            })
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
            })
            .collect();
        Stored {
            status: status.as_u16(),
            headers,
            body,
            request_time: millis(response_time.saturating_sub(plan.delay)),
            response_time: millis(response_time),
            initial_age: millis(plan.initial_age),
            lifetime: millis(plan.lifetime),
            swr: millis(plan.swr),
            sie: millis(plan.sie),
            must_revalidate: plan.must_revalidate,
            no_cache: plan.no_cache,
            tags: Vec::new(),
            vary: Vec::new(),
            map: OnceLock::new(),
        }
    }

    /// The stored headers as a map (invalid lines, which cannot come from
    /// `new` but could from a corrupted L2 value, are skipped).
    pub(crate) fn header_map(&self) -> HeaderMap {
        self.map
            .get_or_init(|| {
                let mut map = HeaderMap::with_capacity(self.headers.len());
                for (name, value) in &self.headers {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_maybe_shared(value.clone()),
                    ) {
                        map.append(n, v);
                    }
                }
                map
            })
            .clone()
    }

    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK)
    }

    /// Current age at `now` (ms since the epoch).
    pub(crate) fn age(&self, now: u64) -> Duration {
        Duration::from_millis(
            self.initial_age
                .saturating_add(now.saturating_sub(self.response_time)),
        )
    }

    pub(crate) fn freshness(&self, now: u64, purged: bool) -> Freshness {
        Freshness {
            lifetime: Duration::from_millis(self.lifetime),
            age: self.age(now),
            swr: Duration::from_millis(self.swr),
            must_revalidate: self.must_revalidate,
            no_cache: self.no_cache,
            purged,
        }
    }

    /// Whether it may be served stale on an origin error at `now`.
    pub(crate) fn serves_on_error(&self, now: u64) -> bool {
        let f = self.freshness(now, false);
        !self.must_revalidate && !self.no_cache && f.staleness() <= Duration::from_millis(self.sie)
    }

    /// The first value of a stored header.
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// How long the engine should keep it: fresh time plus the longest stale
    /// window, and some time to revalidate with validators.
    pub(crate) fn keep_for(&self, revalidation_keep: Duration, cap: Duration) -> Duration {
        let fresh_left = Duration::from_millis(self.lifetime.saturating_sub(self.initial_age));
        let stale = Duration::from_millis(self.swr.max(self.sie));
        let revalidate = if self.header("etag").is_some() || self.header("last-modified").is_some()
        {
            revalidation_keep
        } else {
            Duration::ZERO
        };
        (fresh_left + stale.max(revalidate))
            .min(cap)
            .max(Duration::from_secs(1))
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never stored or forwarded from cache.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authentication-info"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}
