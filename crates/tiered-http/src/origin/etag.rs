//! Entity tags: computing them from the body, matching `If-None-Match`, and
//! the layer that does both.
//!
//! [`etag_for`] hashes bytes into an `ETag` value, [`if_none_match_matches`]
//! evaluates a request's `If-None-Match` against one, and [`ETagLayer`] puts
//! them together around a service: it tags `200` responses to `GET`/`HEAD`
//! with a hash of their body (buffered up to a limit) and answers requests
//! whose `If-None-Match` matches with `304 Not Modified`. See the
//! [module docs](super) for strong versus weak tags and the buffering
//! trade-off.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use super::{box_body, is_get_or_head, not_modified, BoxError, OriginBody};

/// How many bytes of the SHA-256 digest go into a tag: 128 bits, written as
/// 22 base64url characters.
const TAG_BYTES: usize = 16;

/// The `ETag` value for a body: the first 16 bytes of its SHA-256, in
/// unpadded base64url, quoted: `"q1MKE-RZFJgrefm34_uVAw"`, or with `weak`,
/// `W/"q1MKE-RZFJgrefm34_uVAw"`.
///
/// The same bytes give the same tag on every machine and every run. It also
/// serves for tags built from something other than the body, a version
/// number or an `updated_at`, when hashing the body is too expensive:
/// `etag_for(format!("{id}:{version}").as_bytes(), true)`.
pub fn etag_for(bytes: &[u8], weak: bool) -> HeaderValue {
    format_etag(&Sha256::digest(bytes), weak)
}

fn format_etag(digest: &[u8], weak: bool) -> HeaderValue {
    let tag = URL_SAFE_NO_PAD.encode(&digest[..TAG_BYTES.min(digest.len())]);
    let value = if weak {
        format!("W/\"{tag}\"")
    } else {
        format!("\"{tag}\"")
    };
    // base64url characters inside quotes: always a valid header value.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// Whether the request headers' `If-None-Match` matches `etag`, the current
/// representation's tag, so that a `GET`/`HEAD` should be answered with
/// `304 Not Modified` (RFC 9110 §13.1.2).
///
/// Matching uses the *weak* comparison that RFC 9110 prescribes for
/// `If-None-Match`: `W/"x"` matches `"x"` and the other way round. A field
/// value of `*` matches any tag. Several `If-None-Match` lines are read as
/// one list, and empty list elements are allowed.
///
/// Returns `false` when there is no `If-None-Match`, and whenever anything
/// is malformed, in the request's field (an unquoted tag, a lowercase `w/`,
/// `*` inside a list, a stray character) or in `etag` itself: a `200`
/// sent by mistake costs bandwidth, a `304` sent by mistake leaves a client
/// with the wrong content.
///
/// Only meaningful for `GET` and `HEAD`; for other methods a failed
/// `If-None-Match` calls for `412 Precondition Failed` before acting, which
/// is the handler's business.
pub fn if_none_match_matches(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(current) = parse_single(etag.as_bytes()) else {
        return false;
    };
    let mut any_field = false;
    let mut matched = false;
    for value in headers.get_all(header::IF_NONE_MATCH) {
        any_field = true;
        let bytes = trim_ows(value.as_bytes());
        if bytes == b"*" {
            matched = true;
            continue;
        }
        match parse_list(bytes) {
            Some(tags) => matched |= tags.iter().any(|t| t.opaque == current.opaque),
            None => return false,
        }
    }
    any_field && matched
}

/// One entity-tag: `weak` for a `W/` prefix, `opaque` the quoted string
/// including its quotes.
#[derive(Debug, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a [u8],
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// `etagc = %x21 / %x23-7E / obs-text`
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

/// Parses one entity-tag at the start of `s`, returning it and the rest.
fn parse_tag(s: &[u8]) -> Option<(EntityTag<'_>, &[u8])> {
    let (weak, s) = match s.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let inner = s.strip_prefix(b"\"")?;
    let len = inner.iter().position(|&b| !is_etagc(b))?;
    if inner[len] != b'"' {
        return None;
    }
    let (opaque, rest) = s.split_at(len + 2);
    Some((EntityTag { weak, opaque }, rest))
}

/// Parses a whole `ETag` field value: exactly one entity-tag.
fn parse_single(s: &[u8]) -> Option<EntityTag<'_>> {
    match parse_tag(trim_ows(s))? {
        (tag, []) => Some(tag),
        _ => None,
    }
}

/// Parses `#entity-tag`: a comma-separated list, empty elements allowed.
fn parse_list(mut s: &[u8]) -> Option<Vec<EntityTag<'_>>> {
    let mut tags = Vec::new();
    loop {
        // Skip OWS and empty elements.
        while let [b, rest @ ..] = s {
            if !(is_ows(*b) || *b == b',') {
                break;
            }
            s = rest;
        }
        if s.is_empty() {
            return Some(tags);
        }
        let (tag, rest) = parse_tag(s)?;
        tags.push(tag);
        s = trim_ows(rest);
        match s {
            [] => return Some(tags),
            [b',', rest @ ..] => s = rest,
            _ => return None,
        }
    }
}

/// A [`Layer`] that gives `200` responses to `GET`/`HEAD` an `ETag` computed
/// from their body and answers a matching `If-None-Match` with
/// `304 Not Modified`.
///
/// For each response to a `GET` or `HEAD` with a `2xx` status:
///
/// * If the response already has an `ETag`, the layer only evaluates
///   `If-None-Match` against it; the body is not read.
/// * Otherwise, if the status is `200` and the body fits the limit
///   ([`max_body_bytes`](Self::max_body_bytes), 8 MiB by default), the body
///   is read into memory and hashed ([`etag_for`]), and the response gets
///   the `ETag`. A `Content-Length` or size hint over the limit skips this
///   without reading; a body of unknown length that grows past the limit is
///   sent on as read so far plus the rest, unchanged and untagged.
/// * A matching `If-None-Match` ([`if_none_match_matches`]) turns the
///   response into a `304` with no body, keeping `ETag`, `Cache-Control`,
///   `Date`, `Expires`, `Vary`, `Last-Modified`, `Content-Location` and other
///   non-content headers and dropping `Content-Length`, `Content-Type` and
///   the other content headers.
///
/// Other methods and statuses pass through untouched; the inner service has
/// already acted on them, so no precondition can stop it any more.
///
/// A `HEAD` response carries the `GET` body's tag only if the inner service
/// returns that body for `HEAD` too (hyper discards it on the wire). An
/// empty `HEAD` body is tagged only under an explicit `Content-Length: 0`;
/// otherwise the tag of an empty body would contradict the `GET` one, so it
/// is left untagged.
///
/// The service's response body is [`OriginBody`]; its future is boxed and
/// needs the inner future to be `Send`.
#[derive(Debug, Clone, Copy)]
pub struct ETagLayer {
    weak: bool,
    max_body_bytes: usize,
}

impl ETagLayer {
    /// The default limit on buffered body bytes: 8 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

    /// Strong tags (`"..."`): the body is byte-for-byte the same. The right
    /// choice when nothing outside this layer rewrites the body.
    pub fn strong() -> Self {
        Self {
            weak: false,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Weak tags (`W/"..."`): only semantic equivalence is promised. Use
    /// when a layer or proxy outside this one may transform the body (for
    /// example compress it).
    pub fn weak() -> Self {
        Self {
            weak: true,
            ..Self::strong()
        }
    }

    /// The most body bytes the layer buffers to compute a tag. Bodies past
    /// it pass through untagged. At most one frame beyond the limit is ever
    /// held, since a frame is read whole.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }
}

impl Default for ETagLayer {
    /// [`ETagLayer::strong`].
    fn default() -> Self {
        Self::strong()
    }
}

impl<S> Layer<S> for ETagLayer {
    type Service = ETagService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ETagService {
            inner,
            config: *self,
        }
    }
}

/// The [`Service`] made by [`ETagLayer`].
#[derive(Debug, Clone)]
pub struct ETagService<S> {
    inner: S,
    config: ETagLayer,
}

impl<S> ETagService<S> {
    /// Wraps `inner` with the behaviour of `layer`.
    pub fn new(inner: S, layer: ETagLayer) -> Self {
        layer.layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ETagService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<OriginBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = req.method().clone();
        // Only the If-None-Match lines are kept for after the response.
        let mut conditions = HeaderMap::new();
        if is_get_or_head(&method) {
            for value in req.headers().get_all(header::IF_NONE_MATCH) {
                conditions.append(header::IF_NONE_MATCH, value.clone());
            }
        }
        let config = self.config;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(tag_response(res, &method, &conditions, config).await)
        })
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn tag_response<B>(
    res: Response<B>,
    method: &Method,
    conditions: &HeaderMap,
    config: ETagLayer,
) -> Response<OriginBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if !is_get_or_head(method) || !res.status().is_success() {
        return res.map(box_body);
    }
    if let Some(etag) = res.headers().get(header::ETAG) {
        if if_none_match_matches(conditions, etag) {
            return not_modified(res.into_parts().0);
        }
        return res.map(box_body);
    }
    let limit = u64::try_from(config.max_body_bytes).unwrap_or(u64::MAX);
    let declared = content_length(res.headers());
    if res.status() != StatusCode::OK
        || declared.is_some_and(|n| n > limit)
        || res.body().size_hint().lower() > limit
    {
        return res.map(box_body);
    }

    let (mut parts, body) = res.into_parts();
    let (frames, read, outcome) = buffer(box_body(body), config.max_body_bytes).await;
    let digest = match outcome {
        Buffered::Complete(digest) => digest,
        Buffered::OverLimit(rest) => {
            return Response::from_parts(parts, Replay::new(frames, read, None, Some(rest)).boxed())
        }
        Buffered::Failed(error) => {
            return Response::from_parts(
                parts,
                Replay::new(frames, read, Some(error), None).boxed(),
            )
        }
    };
    if method == Method::HEAD && read == 0 && declared != Some(0) {
        // Most likely a stripped HEAD body: the tag of "" would be wrong.
        return Response::from_parts(parts, Replay::new(frames, 0, None, None).boxed());
    }
    let etag = format_etag(&digest, config.weak);
    let matched = if_none_match_matches(conditions, &etag);
    parts.headers.insert(header::ETAG, etag);
    if matched {
        return not_modified(parts);
    }
    Response::from_parts(parts, Replay::new(frames, read, None, None).boxed())
}

/// How reading the body for the hash ended.
enum Buffered {
    /// The whole body was read; the SHA-256 of its data.
    Complete(Vec<u8>),
    /// The limit was passed; the unread remainder of the body.
    OverLimit(OriginBody),
    /// The body failed.
    Failed(BoxError),
}

/// Reads `body` frame by frame, hashing data as it comes, until it ends,
/// fails, or more than `limit` data bytes have been read. Returns the frames
/// read and their data length.
async fn buffer(mut body: OriginBody, limit: usize) -> (VecDeque<Frame<Bytes>>, u64, Buffered) {
    let mut frames = VecDeque::new();
    let mut hasher = Sha256::new();
    let mut read: usize = 0;
    let outcome = loop {
        match body.frame().await {
            None => break Buffered::Complete(hasher.finalize().to_vec()),
            Some(Err(error)) => break Buffered::Failed(error),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.len());
                    hasher.update(data);
                }
                frames.push_back(frame);
                if read > limit {
                    break Buffered::OverLimit(body);
                }
            }
        }
    };
    (frames, u64::try_from(read).unwrap_or(u64::MAX), outcome)
}

/// A body that yields frames already read, then an error already received
/// or the rest of the original body.
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes left in `frames`.
    buffered: u64,
    error: Option<BoxError>,
    rest: Option<OriginBody>,
}

impl Replay {
    fn new(
        frames: VecDeque<Frame<Bytes>>,
        buffered: u64,
        error: Option<BoxError>,
        rest: Option<OriginBody>,
    ) -> Self {
        Self {
            frames,
            buffered,
            error,
            rest,
        }
    }

    fn boxed(self) -> OriginBody {
        BodyExt::boxed_unsync(self)
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.frames.pop_front() {
            if let Some(data) = frame.data_ref() {
                let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                this.buffered = this.buffered.saturating_sub(len);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.rest {
            None => SizeHint::with_exact(self.buffered),
            Some(rest) => {
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(self.buffered));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(self.buffered));
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::{self, StreamExt as _};
    use http_body_util::{Full, StreamBody};
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{service_fn, ServiceExt};

    fn inm(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::IF_NONE_MATCH, HeaderValue::from_static(v));
        }
        h
    }

    fn matches(values: &[&'static str], etag: &'static str) -> bool {
        if_none_match_matches(&inm(values), &HeaderValue::from_static(etag))
    }

    #[test]
    fn etag_format() {
        // SHA-256("") = e3b0c442 98fc1c14 9afbf4c8 996fb924 27ae41e4 ...
        assert_eq!(etag_for(b"", false), "\"47DEQpj8HBSa-_TImW-5JA\"");
        assert_eq!(etag_for(b"", true), "W/\"47DEQpj8HBSa-_TImW-5JA\"");
        assert_eq!(etag_for(b"hello", false), etag_for(b"hello", false));
        assert_ne!(etag_for(b"hello", false), etag_for(b"hellp", false));
        assert_eq!(etag_for(b"x", false).len(), 24);
    }

    #[test]
    fn strong_and_weak_compare_weakly() {
        assert!(matches(&["\"a\""], "\"a\""));
        assert!(matches(&["W/\"a\""], "\"a\""));
        assert!(matches(&["\"a\""], "W/\"a\""));
        assert!(matches(&["W/\"a\""], "W/\"a\""));
        assert!(!matches(&["\"a\""], "\"b\""));
        assert!(!matches(&["\"a\""], "\"A\""));
    }

    #[test]
    fn lists_and_multiple_lines() {
        assert!(matches(&["\"x\", \"a\""], "\"a\""));
        assert!(matches(&["\"x\",W/\"a\""], "\"a\""));
        assert!(matches(&[" , \"x\" ,, \t\"a\" , "], "\"a\""));
        assert!(matches(&["\"x\"", "\"a\""], "\"a\""));
        assert!(!matches(&["\"x\", \"y\""], "\"a\""));
        // Empty field: an empty list, matches nothing.
        assert!(!matches(&[""], "\"a\""));
        // Commas and obs-text are allowed inside the quotes, except DQUOTE.
        assert!(matches(&["\"a,b\""], "\"a,b\""));
        assert!(!matches(&[], "\"a\""));
    }

    #[test]
    fn star_matches_anything_but_only_alone() {
        assert!(matches(&["*"], "\"a\""));
        assert!(matches(&[" * "], "W/\"zz\""));
        assert!(matches(&["\"x\"", "*"], "\"a\""));
        assert!(!matches(&["*, \"a\""], "\"a\""));
        assert!(!matches(&["**"], "\"a\""));
    }

    #[test]
    fn garbage_never_matches() {
        for bad in [
            "a",                     // unquoted
            "\"a",                   // unterminated
            "w/\"a\"",               // lowercase weak prefix
            "W/ \"a\"",              // space after W/
            "\"a\" \"b\"",           // missing comma
            "\"a\"x",                // trailing junk
            "\"a b\"",               // space inside
            "\"a\", garbage, \"b\"", // one bad element spoils the list
        ] {
            assert!(!matches(&[bad], "\"a\""), "{bad:?} matched");
            assert!(!matches(&[bad], "\"a b\""), "{bad:?} matched");
        }
        // A malformed line spoils the others too.
        assert!(!matches(&["\"a\"", "junk"], "\"a\""));
        // A malformed current tag matches nothing.
        assert!(!matches(&["*"], "a"));
        assert!(!matches(&["\"a\""], "\"a\"x"));
        assert!(matches(&["\"a\""], " \"a\" "));
        assert!(!matches(&["\"a\""], ""));
    }

    #[test]
    fn parse_tag_details() {
        assert_eq!(
            parse_single(b"W/\"x\""),
            Some(EntityTag {
                weak: true,
                opaque: b"\"x\""
            })
        );
        assert_eq!(
            parse_single(b" \"\" "),
            Some(EntityTag {
                weak: false,
                opaque: b"\"\""
            })
        );
        assert_eq!(parse_single(b"\"\x7f\""), None);
        assert!(parse_single(b"\"\x80\xff\"").is_some());
    }

    const BODY: &[u8] = b"hello, world";

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

    fn full(bytes: &'static [u8]) -> TestBody {
        box_body(Full::new(Bytes::from_static(bytes)))
    }

    /// An origin answering every request with `make()`.
    fn origin<F>(
        make: F,
    ) -> impl Service<Request<()>, Response = Response<TestBody>, Error = Infallible, Future: Send> + Clone
    where
        F: Fn() -> Response<TestBody> + Clone + Send + 'static,
    {
        service_fn(move |_req: Request<()>| {
            let make = make.clone();
            async move { Ok::<_, Infallible>(make()) }
        })
    }

    fn hello() -> Response<TestBody> {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_LENGTH, BODY.len())
            .header(header::CACHE_CONTROL, "max-age=60")
            .header(header::VARY, "accept-encoding")
            .body(full(BODY))
            .unwrap()
    }

    fn get(inm: Option<&'static str>) -> Request<()> {
        request(Method::GET, inm)
    }

    fn request(method: Method, inm: Option<&'static str>) -> Request<()> {
        let mut req = Request::builder().method(method);
        if let Some(v) = inm {
            req = req.header(header::IF_NONE_MATCH, v);
        }
        req.body(()).unwrap()
    }

    async fn bytes_of(res: Response<OriginBody>) -> Bytes {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    fn etag_str(res: &Response<OriginBody>) -> Option<&str> {
        res.headers().get(header::ETAG).map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn tags_200_and_answers_matching_if_none_match_with_304() {
        let svc = ETagLayer::strong().layer(origin(hello));
        let res = svc.clone().oneshot(get(None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let tag = etag_for(BODY, false);
        assert_eq!(res.headers()[header::ETAG], tag);
        assert_eq!(res.body().size_hint().exact(), Some(BODY.len() as u64));
        assert_eq!(bytes_of(res).await, BODY);

        let tag: &'static str = tag.to_str().unwrap().to_owned().leak();
        let res = svc.clone().oneshot(get(Some(tag))).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(etag_str(&res), Some(tag));
        assert_eq!(res.headers()[header::CACHE_CONTROL], "max-age=60");
        assert_eq!(res.headers()[header::VARY], "accept-encoding");
        assert!(!res.headers().contains_key(header::CONTENT_LENGTH));
        assert!(!res.headers().contains_key(header::CONTENT_TYPE));
        assert!(res.body().is_end_stream());
        assert!(bytes_of(res).await.is_empty());

        let res = svc.clone().oneshot(get(Some("\"other\""))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(bytes_of(res).await, BODY);

        let res = svc.oneshot(get(Some("*"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn weak_layer_matches_strong_if_none_match() {
        let svc = ETagLayer::weak().layer(origin(hello));
        let res = svc.clone().oneshot(get(None)).await.unwrap();
        let weak = etag_for(BODY, true);
        assert_eq!(res.headers()[header::ETAG], weak);
        let strong: &'static str = etag_for(BODY, false).to_str().unwrap().to_owned().leak();
        let res = svc.oneshot(get(Some(strong))).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()[header::ETAG], weak);
    }

    #[tokio::test]
    async fn head_is_tagged_like_get_and_gets_304() {
        let svc = ETagLayer::strong().layer(origin(hello));
        let tag: &'static str = etag_for(BODY, false).to_str().unwrap().to_owned().leak();
        let res = svc
            .clone()
            .oneshot(request(Method::HEAD, None))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(etag_str(&res), Some(tag));
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "12");
        let res = svc.oneshot(request(Method::HEAD, Some(tag))).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(etag_str(&res), Some(tag));
    }

    #[tokio::test]
    async fn stripped_head_body_is_not_tagged() {
        let stripped = || {
            Response::builder()
                .header(header::CONTENT_LENGTH, "12")
                .body(full(b""))
                .unwrap()
        };
        let svc = ETagLayer::strong().layer(origin(stripped));
        let res = svc.oneshot(request(Method::HEAD, Some("*"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(etag_str(&res), None);
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "12");

        let empty = || {
            Response::builder()
                .header(header::CONTENT_LENGTH, "0")
                .body(full(b""))
                .unwrap()
        };
        let svc = ETagLayer::strong().layer(origin(empty));
        let res = svc.oneshot(request(Method::HEAD, None)).await.unwrap();
        assert_eq!(res.headers()[header::ETAG], etag_for(b"", false));
    }

    #[tokio::test]
    async fn large_body_with_content_length_passes_through_untagged() {
        static BIG: [u8; 5000] = [7; 5000];
        let big = || {
            Response::builder()
                .header(header::CONTENT_LENGTH, BIG.len())
                .body(full(&BIG))
                .unwrap()
        };
        let svc = ETagLayer::strong().max_body_bytes(4096).layer(origin(big));
        let res = svc.oneshot(get(Some("*"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(etag_str(&res), None);
        assert_eq!(bytes_of(res).await, &BIG[..]);
    }

    /// A body of unknown length: `chunks` chunks of `size` bytes `b'a' + i`,
    /// counting how many were pulled.
    fn stream_body(chunks: usize, size: usize, pulled: Arc<AtomicUsize>) -> TestBody {
        let s = stream::iter(0..chunks).map(move |i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size])))
        });
        box_body(StreamBody::new(s))
    }

    fn expected_stream(chunks: usize, size: usize) -> Vec<u8> {
        (0..chunks)
            .flat_map(|i| vec![b'a' + (i % 26) as u8; size])
            .collect()
    }

    #[tokio::test]
    async fn unknown_length_stream_over_limit_passes_through_intact() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let svc = ETagLayer::strong()
            .max_body_bytes(4096)
            .layer(origin(move || {
                Response::new(stream_body(100, 1000, p.clone()))
            }));
        let res = svc.oneshot(get(Some("*"))).await.unwrap();
        // 5 chunks (5000 bytes) read to learn it is over 4096, no more.
        assert_eq!(pulled.load(Ordering::SeqCst), 5);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(etag_str(&res), None);
        assert!(!res.body().is_end_stream());
        assert!(res.body().size_hint().lower() >= 5000);
        assert_eq!(bytes_of(res).await, expected_stream(100, 1000));
        assert_eq!(pulled.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn unknown_length_stream_under_limit_is_tagged() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let svc = ETagLayer::strong()
            .max_body_bytes(4096)
            .layer(origin(move || {
                Response::new(stream_body(4, 1000, p.clone()))
            }));
        let res = svc.oneshot(get(None)).await.unwrap();
        let expected = expected_stream(4, 1000);
        assert_eq!(res.headers()[header::ETAG], etag_for(&expected, false));
        assert_eq!(bytes_of(res).await, expected);
    }

    #[tokio::test]
    async fn body_exactly_at_limit_is_tagged() {
        let svc = ETagLayer::strong()
            .max_body_bytes(BODY.len())
            .layer(origin(hello));
        let res = svc.oneshot(get(None)).await.unwrap();
        assert!(res.headers().contains_key(header::ETAG));
    }

    #[tokio::test]
    async fn trailers_survive_buffering() {
        let with_trailers = || {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data"))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::new(box_body(StreamBody::new(stream::iter(frames))))
        };
        let svc = ETagLayer::strong().layer(origin(with_trailers));
        let res = svc.oneshot(get(None)).await.unwrap();
        assert_eq!(res.headers()[header::ETAG], etag_for(b"data", false));
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "data");
    }

    #[tokio::test]
    async fn body_error_while_buffering_is_passed_on() {
        let failing = || {
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"part"))),
                Err(BoxError::from("boom")),
            ];
            Response::new(box_body(StreamBody::new(stream::iter(frames))))
        };
        let svc = ETagLayer::strong().layer(origin(failing));
        let res = svc.oneshot(get(None)).await.unwrap();
        assert_eq!(etag_str(&res), None);
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn existing_etag_is_honoured_without_reading_the_body() {
        // A body that never yields: reading it would hang the test.
        let endless = || {
            let body = StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
            Response::builder()
                .header(header::ETAG, "W/\"v1\"")
                .body(box_body(body))
                .unwrap()
        };
        let svc = ETagLayer::strong().layer(origin(endless));
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            svc.clone().oneshot(get(Some("\"v1\""))),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()[header::ETAG], "W/\"v1\"");
        let res = tokio::time::timeout(Duration::from_secs(5), svc.oneshot(get(Some("\"v2\""))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::ETAG], "W/\"v1\"");
    }

    #[tokio::test]
    async fn other_methods_and_statuses_are_untouched() {
        let svc = ETagLayer::strong().layer(origin(hello));
        let res = svc.oneshot(request(Method::POST, Some("*"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(etag_str(&res), None);
        assert_eq!(bytes_of(res).await, BODY);

        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::CREATED,
            StatusCode::PARTIAL_CONTENT,
        ] {
            let make = move || {
                let mut res = hello();
                *res.status_mut() = status;
                res
            };
            let svc = ETagLayer::strong().layer(origin(make));
            let res = svc.oneshot(get(Some("*"))).await.unwrap();
            assert_eq!(res.status(), status);
            assert_eq!(etag_str(&res), None);
        }
    }

    #[test]
    fn service_is_clone() {
        fn assert_clone<T: Clone>(_: &T) {}
        assert_clone(&ETagLayer::weak().layer(origin(hello)));
        assert_eq!(ETagLayer::default().max_body_bytes, 8 * 1024 * 1024);
    }
}
