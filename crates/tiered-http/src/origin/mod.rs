//! Origin-side caching helpers: the headers and conditional responses a
//! service should produce so that browsers, CDNs and the shared cache in this
//! crate can cache it well.
//!
//! Everything here speaks plain [`http`] types, so it works with axum, hyper,
//! or any [`tower_service::Service`] over `http::Request` / `http::Response`.
//! The helpers come in two shapes: small functions a handler can call itself,
//! and tower layers that wrap a whole service or router.
//!
//! # What each helper does
//!
//! | helper | what it does | use it when |
//! | --- | --- | --- |
//! | [`CacheControl`] | builds a `Cache-Control` value (`public, max-age=60, ...`) | always: explicit freshness beats heuristics |
//! | [`CacheControlLayer`] | sets that value on responses (if absent, or overriding) | a route group shares one policy |
//! | [`ETagLayer`] | hashes the body into an `ETag`, answers `If-None-Match` with `304` | bodies are small or medium and cheap to produce, and you have no version number to hand |
//! | [`etag_for`], [`if_none_match_matches`] | the same as plain functions | the handler knows a version / already has the bytes and wants to skip work on a match |
//! | [`LastModifiedLayer`] | answers `If-Modified-Since` with `304` when the response carries `Last-Modified` | the data has a modification time (files, rows with `updated_at`) |
//! | [`not_modified_since`] | the RFC 9110 §13.1.3 check as a function | the handler wants to skip loading the body |
//! | [`NoStoreLayer`] | forces `Cache-Control: no-store` | sensitive routes: account pages, tokens, anything per-user and secret |
//!
//! # Validators: ETag or Last-Modified
//!
//! A *validator* lets a cache that holds a stale copy ask "has it changed?"
//! and get an empty `304 Not Modified` instead of the whole body again.
//! `ETag` is the better validator: it is exact, while `Last-Modified` has
//! one-second precision and depends on clocks. When a request carries both
//! `If-None-Match` and `If-Modified-Since`, RFC 9110 §13.2.2 says the former
//! wins and the latter is ignored; the helpers here follow that, so stacking
//! [`ETagLayer`] and [`LastModifiedLayer`] is safe.
//!
//! ## Strong or weak ETag
//!
//! A *strong* ETag (`"abc"`) promises the bytes are identical; a *weak* one
//! (`W/"abc"`) only promises the content is equivalent. `If-None-Match` uses
//! weak comparison, so either kind earns `304`s. Strong ones are also usable
//! for `Range` / `If-Range` requests. Because [`ETagLayer`] hashes exactly
//! the bytes it sees, a strong ETag is correct as long as nothing *outside*
//! the layer changes the bytes afterwards. If a compression layer or proxy
//! sits between this layer and the client, either put the ETag layer outside
//! it (so it hashes the compressed bytes, and send `Vary: Accept-Encoding`),
//! or use [`ETagLayer::weak`].
//!
//! ## Why a hash of the body
//!
//! Hashing the body needs no code in handlers, gives the same tag on every
//! replica (unlike tags built from inode numbers or timestamps), and changes
//! exactly when the bytes change. The cost: the handler still runs and builds
//! the body on every request; a `304` saves bandwidth and the client's work,
//! not the server's. To save the server's work too, compute a tag from a
//! version number in the handler ([`etag_for`] over a version string), check
//! it with [`if_none_match_matches`] before loading anything, and set the
//! `ETag` header yourself: the layer honours an `ETag` already present
//! without buffering.
//!
//! ## The ETag layer buffers, up to a limit
//!
//! To hash a body the layer must read all of it before sending the headers.
//! It does so only for `200` responses to `GET`/`HEAD` without an `ETag`,
//! and never holds more than [`ETagLayer::max_body_bytes`] (8 MiB by
//! default, plus at most one frame of overshoot): a response whose
//! `Content-Length` is over the limit is passed through untouched without
//! being read, and a streaming body of unknown length that turns out to be
//! over the limit is passed through as the prefix already read followed by
//! the rest, unchanged and without an `ETag`. Long-lived streams (server-sent
//! events, downloads) therefore keep working, but their first
//! `max_body_bytes` are delayed until read; exclude such routes from the
//! layer or lower the limit.
//!
//! # Ordering
//!
//! Layers apply to the response on the way out, innermost first. A typical
//! stack, outermost first: `ETagLayer` → `LastModifiedLayer` →
//! `CacheControlLayer` → handler. A `304` keeps `Cache-Control`, `ETag`,
//! `Last-Modified`, `Expires`, `Vary`, `Date`, `Content-Location` and every
//! other non-content header, so the order of the header-setting layers
//! relative to the validators does not matter for correctness.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tiered_http::origin::{CacheControl, CacheControlLayer, ETagLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//! use http::{Request, Response};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = CacheControl::new()
//!     .public()
//!     .max_age(Duration::from_secs(60))
//!     .stale_while_revalidate(Duration::from_secs(30));
//! assert_eq!(policy.to_string(), "public, max-age=60, stale-while-revalidate=30");
//!
//! let svc = ServiceBuilder::new()
//!     .layer(ETagLayer::strong())
//!     .layer(CacheControlLayer::new(policy))
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
//!             bytes::Bytes::from_static(b"hello"),
//!         )))
//!     });
//!
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert!(res.headers().contains_key(http::header::ETAG));
//! assert_eq!(res.headers()[http::header::CACHE_CONTROL], "public, max-age=60, stale-while-revalidate=30");
//! # }
//! ```

mod cache_control;
mod etag;
mod last_modified;
mod no_store;

pub use cache_control::{CacheControl, CacheControlLayer, SetCacheControl, SetHeaderFuture};
pub use etag::{etag_for, if_none_match_matches, ETagLayer, ETagService};
pub use last_modified::{
    last_modified_value, not_modified_since, LastModifiedLayer, LastModifiedService,
};
pub use no_store::{NoStoreLayer, NoStoreService};

use http::{header, HeaderMap, Method, Response, StatusCode};

pub(crate) use crate::body::boxed as box_body;
pub use crate::body::BoxError;

/// The response body of the layers that may replace the inner body
/// ([`ETagLayer`], [`LastModifiedLayer`]): the inner body boxed, or an empty
/// body for a `304 Not Modified`. The same type as [`crate::Body`].
pub type OriginBody = crate::Body;

/// Whether conditional `GET` semantics (a `304` answer) apply to `method`.
pub(crate) fn is_get_or_head(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Headers that describe the content of the (now absent) body. They are
/// removed from a `304`: RFC 9110 §15.4.5 asks a sender not to generate
/// representation metadata beyond the validators and caching fields, and a
/// `Content-Length` on a `304` would describe a body that is not there.
const CONTENT_HEADERS: [header::HeaderName; 7] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
    header::TRAILER,
];

/// Turns the head of a would-be `2xx` response into a `304 Not Modified`
/// with an empty body.
///
/// Kept: `Cache-Control`, `Content-Location`, `Date`, `ETag`, `Expires`,
/// `Vary`, `Last-Modified` (RFC 9110 §15.4.5) and every other header that is
/// not content metadata (`Set-Cookie`, CORS headers, custom headers), since
/// those describe the response rather than the body and a cache merges them
/// into its stored copy. Dropped: [`CONTENT_HEADERS`].
pub(crate) fn not_modified(mut parts: http::response::Parts) -> Response<OriginBody> {
    parts.status = StatusCode::NOT_MODIFIED;
    strip_content_headers(&mut parts.headers);
    Response::from_parts(parts, crate::body::empty())
}

fn strip_content_headers(headers: &mut HeaderMap) {
    for name in CONTENT_HEADERS {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_modified_keeps_validators_and_drops_content_headers() {
        let res = Response::builder()
            .status(200)
            .header(header::ETAG, "\"a\"")
            .header(header::CACHE_CONTROL, "max-age=1")
            .header(header::CONTENT_LOCATION, "/x")
            .header(header::DATE, "Sun, 06 Nov 1994 08:49:37 GMT")
            .header(header::EXPIRES, "Sun, 06 Nov 1994 08:49:37 GMT")
            .header(header::VARY, "accept")
            .header(header::LAST_MODIFIED, "Sun, 06 Nov 1994 08:49:37 GMT")
            .header(header::SET_COOKIE, "a=b")
            .header(header::CONTENT_LENGTH, "5")
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(())
            .unwrap();
        let (parts, ()) = res.into_parts();
        let res = not_modified(parts);
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        for kept in [
            header::ETAG,
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
            header::SET_COOKIE,
        ] {
            assert!(res.headers().contains_key(&kept), "{kept} dropped");
        }
        for dropped in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
        ] {
            assert!(!res.headers().contains_key(&dropped), "{dropped} kept");
        }
        assert!(http_body::Body::is_end_stream(res.body()));
    }

    #[test]
    fn get_or_head() {
        assert!(is_get_or_head(&Method::GET));
        assert!(is_get_or_head(&Method::HEAD));
        assert!(!is_get_or_head(&Method::POST));
    }
}
