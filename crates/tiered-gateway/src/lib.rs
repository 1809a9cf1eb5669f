//! `tiered`, the gateway: a caching reverse proxy built on
//! [`tiered_http::CacheLayer`] and the `tiered` engine.
//!
//! Put it in front of an HTTP API written in anything; it caches what the
//! API's `Cache-Control` allows (RFC 9111), in memory and optionally in Redis
//! shared by every instance, coalesces concurrent misses, serves stale
//! content when the origin fails (if allowed), and purges by URL, tag or
//! prefix on every instance at once.
//!
//! # Where things are
//!
//! | Concern | Module |
//! |---|---|
//! | flags, `TIERED_*` variables, the TOML file | [`config`] |
//! | the client listener, graceful shutdown, what runs before the cache | [`server`] |
//! | hop-by-hop fields, `Via`, `X-Forwarded-*` | [`headers`] |
//! | rejecting `Content-Length` + `Transfer-Encoding` (smuggling) | [`framing`] |
//! | routing to origins, the pooled client, timeouts | [`upstream`] |
//! | counters, latency histograms, metric names | [`stats`] |
//! | the admin API and the dashboard | [`admin`] |
//! | `tiered demo` (sample origin + burst) | [`demo`] |
//! | `tiered warm` | [`warm`] |
//! | log output | [`logging`] |
//!
//! The cache policy itself (what is stored, for how long, stale serving,
//! revalidation, coalescing, purges) lives in `tiered-http`.

pub mod admin;
pub mod config;
pub mod demo;
pub mod framing;
pub mod headers;
pub mod logging;
pub mod server;
pub mod stats;
pub mod upstream;
pub mod warm;
