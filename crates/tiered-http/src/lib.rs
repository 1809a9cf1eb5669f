//! `tiered-http`: HTTP caching on the `tiered` engine.
//!
//! Two halves:
//!
//! * [`CacheLayer`] — a `tower::Layer` that acts as an RFC 9111 **shared
//!   cache** in front of any service (hyper, axum, a reverse proxy). Responses
//!   live in a [`tiered::Cache`], so they are shared across instances through
//!   L2, kept coherent by the backplane, and purgeable by URL, tag or prefix
//!   everywhere at once.
//! * [`origin`] — helpers for the service behind it: a [`CacheControl`](origin::CacheControl)
//!   builder, ETag and `Last-Modified` layers answering 304s, and a `no-store`
//!   layer for sensitive routes.
//!
//! # Where things are
//!
//! | Concern | Module |
//! |---|---|
//! | may it be stored, for how long, may it be reused | `policy` |
//! | the read path: hit, stale-while-revalidate, revalidation, miss | `service` |
//! | the cache key, `Vary` variants, poisoning defences | `key` |
//! | coalescing misses | `flight` |
//! | `Cache-Status` / `X-Cache` | `status` |
//! | what is stored | `entry` |
//! | configuration, rules, purges | `layer` |
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tiered_http::{cache_builder, CacheLayer, PurgeMode, Rule};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = cache_builder("http")
//!     .l1_max_bytes(512 << 20)
//!     .redis("redis://127.0.0.1:6379") // shared by every instance
//!     .build()?;
//! let layer = CacheLayer::builder(cache)
//!     .targeted_field("CDN-Cache-Control")
//!     .rule(Rule::path_prefix("/account/").bypass())
//!     .build()?;
//! // let app = tower::ServiceBuilder::new().layer(layer.clone()).service(origin);
//! layer.purge_tag("product-42", PurgeMode::Soft).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! * `private`, `no-store`, `Set-Cookie` (unless configured) and
//!   `Authorization` (unless the response says `public`, `s-maxage` or
//!   `must-revalidate`) responses are never stored, and never shared with
//!   coalesced waiters. Per-route TTLs never override that, so a path like
//!   `/account/settings.css` on a `private` response is not cached
//!   ("cache deception").
//! * Unkeyed headers (`X-Forwarded-Host`, `X-Original-URL`, …, see
//!   [`DEFAULT_UNKEYED_HEADERS`]) are removed from cacheable requests before
//!   they reach the origin, so they cannot change what is stored under a key.
//! * `Vary` variants are keyed by normalized request values; `Vary: *` is
//!   never stored.

mod body;
mod directives;
mod entry;
mod flight;
mod key;
mod layer;
pub mod origin;
mod policy;
mod service;
mod status;

pub use body::{boxed as boxed_body, empty as empty_body, full as full_body, Body, BoxError};
pub use entry::HttpEntry;
pub use layer::{
    cache_builder, CacheLayer, CacheLayerBuilder, ConfigError, HttpStats, PurgeError, PurgeMode,
    Rule, DEFAULT_UNKEYED_HEADERS,
};
pub use service::CacheService;

/// A request path as the cache key sees it: percent-encoding normalized
/// (unreserved characters decoded, hex upper-cased; RFC 3986 §6.2.2).
///
/// Anything that routes requests in front of or behind the layer (a proxy
/// choosing an upstream, say) must route on this form: routing `/%61pi/x` by
/// its raw bytes while the key reads `/api/x` would store one upstream's
/// response under another's URL.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.contains('%') {
        std::borrow::Cow::Owned(key::normalize_percent(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}
