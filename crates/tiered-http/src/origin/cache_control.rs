//! The `Cache-Control` builder and the layer that applies it.
//!
//! [`CacheControl`] builds a response `Cache-Control` value from typed
//! directives; [`CacheControlLayer`] sets it on every response of a service,
//! either only where the handler did not set one ([`CacheControlLayer::new`],
//! [`CacheControlLayer::if_not_present`]) or replacing whatever the handler
//! set ([`CacheControlLayer::overriding`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// Who may store the response: `public` or `private`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visibility {
    Public,
    Private,
}

/// A builder for a response `Cache-Control` header (RFC 9111 §5.2.2, plus
/// `immutable` from RFC 8246 and `stale-while-revalidate` /
/// `stale-if-error` from RFC 5861).
///
/// ```
/// use std::time::Duration;
/// use tiered_http::origin::CacheControl;
///
/// let cc = CacheControl::new()
///     .public()
///     .max_age(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(30));
/// assert_eq!(cc.to_string(), "public, max-age=60, stale-while-revalidate=30");
/// ```
///
/// # Output
///
/// Directives are written in a fixed order, whatever the order of the calls:
/// `public`/`private`, `no-cache`, `no-store`, `max-age`, `s-maxage`,
/// `must-revalidate`, `proxy-revalidate`, `no-transform`, `immutable`,
/// `stale-while-revalidate`, `stale-if-error`. Durations are written in whole
/// seconds, rounded down (so anything under a second becomes `0`).
///
/// # Conflicting choices
///
/// The builder does not second-guess combinations; it resolves only the
/// ones that cannot both be written:
///
/// * [`public`](Self::public) and [`private`](Self::private) exclude each
///   other: the last call wins.
/// * Calling a duration setter twice keeps the last value.
///
/// Everything else is emitted as asked, and the recipients resolve it:
/// [`no_store`](Self::no_store) drops nothing, but caches then store nothing,
/// so `max-age` and friends become moot; `s-maxage` next to `private` is
/// ignored by shared caches, which may not store the response at all;
/// `immutable` without a `max-age` has no effect.
///
/// An empty builder writes an empty value; [`CacheControlLayer`] sets no
/// header for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    visibility: Option<Visibility>,
    no_cache: bool,
    no_store: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    must_revalidate: bool,
    proxy_revalidate: bool,
    no_transform: bool,
    immutable: bool,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

impl CacheControl {
    /// An empty policy, with no directives.
    pub fn new() -> Self {
        Self::default()
    }

    /// `public`: any cache, shared ones included, may store the response,
    /// even one to a request with `Authorization`. Replaces an earlier
    /// [`private`](Self::private).
    pub fn public(mut self) -> Self {
        self.visibility = Some(Visibility::Public);
        self
    }

    /// `private`: only the user's own (browser) cache may store the response;
    /// shared caches, including this crate's, must not. Replaces an earlier
    /// [`public`](Self::public).
    pub fn private(mut self) -> Self {
        self.visibility = Some(Visibility::Private);
        self
    }

    /// `max-age=N`: the response is fresh for `age` after it was generated.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age.as_secs());
        self
    }

    /// `s-maxage=N`: like `max-age`, but for shared caches only (CDNs, this
    /// crate's cache), where it takes precedence over `max-age`.
    pub fn s_maxage(mut self, age: Duration) -> Self {
        self.s_maxage = Some(age.as_secs());
        self
    }

    /// `stale-while-revalidate=N` (RFC 5861): for `window` after it goes
    /// stale, a cache may keep serving the response while it revalidates in
    /// the background.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window.as_secs());
        self
    }

    /// `stale-if-error=N` (RFC 5861): for `window` after it goes stale, a
    /// cache may serve the response when the origin fails (5xx or
    /// unreachable).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window.as_secs());
        self
    }

    /// `immutable` (RFC 8246): while fresh, the response will not change, so
    /// clients should not revalidate it even on reload. Use for
    /// content-addressed assets (`app.3f9a1c.js`) with a long `max-age`.
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// `no-cache`: caches may store the response but must revalidate it with
    /// the origin before every use. Pair with an `ETag` or `Last-Modified`
    /// so revalidation is a cheap `304`.
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// `no-store`: no cache may store any part of the response. Other
    /// directives are still written but become moot. For a whole route, see
    /// [`NoStoreLayer`](super::NoStoreLayer).
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// `must-revalidate`: once stale, the response must not be served
    /// without successful revalidation (no serving stale on disconnection).
    pub fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self
    }

    /// `proxy-revalidate`: as [`must_revalidate`](Self::must_revalidate), for
    /// shared caches only.
    pub fn proxy_revalidate(mut self) -> Self {
        self.proxy_revalidate = true;
        self
    }

    /// `no-transform`: intermediaries must not transform the content (for
    /// example recompress images).
    pub fn no_transform(mut self) -> Self {
        self.no_transform = true;
        self
    }

    /// Whether no directive has been set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The policy as a header value, the same text as [`Display`](fmt::Display).
    pub fn to_header_value(&self) -> HeaderValue {
        // Only ASCII tokens, digits, ',' and ' ': always a valid header value.
        HeaderValue::try_from(self.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl fmt::Display for CacheControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut put = |f: &mut fmt::Formatter<'_>, directive: fmt::Arguments<'_>| {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            f.write_fmt(directive)
        };
        match self.visibility {
            Some(Visibility::Public) => put(f, format_args!("public"))?,
            Some(Visibility::Private) => put(f, format_args!("private"))?,
            None => {}
        }
        if self.no_cache {
            put(f, format_args!("no-cache"))?;
        }
        if self.no_store {
            put(f, format_args!("no-store"))?;
        }
        if let Some(secs) = self.max_age {
            put(f, format_args!("max-age={secs}"))?;
        }
        if let Some(secs) = self.s_maxage {
            put(f, format_args!("s-maxage={secs}"))?;
        }
        if self.must_revalidate {
            put(f, format_args!("must-revalidate"))?;
        }
        if self.proxy_revalidate {
            put(f, format_args!("proxy-revalidate"))?;
        }
        if self.no_transform {
            put(f, format_args!("no-transform"))?;
        }
        if self.immutable {
            put(f, format_args!("immutable"))?;
        }
        if let Some(secs) = self.stale_while_revalidate {
            put(f, format_args!("stale-while-revalidate={secs}"))?;
        }
        if let Some(secs) = self.stale_if_error {
            put(f, format_args!("stale-if-error={secs}"))?;
        }
        Ok(())
    }
}

impl From<CacheControl> for HeaderValue {
    fn from(cc: CacheControl) -> Self {
        cc.to_header_value()
    }
}

impl From<&CacheControl> for HeaderValue {
    fn from(cc: &CacheControl) -> Self {
        cc.to_header_value()
    }
}

/// A [`Layer`] that sets a `Cache-Control` header on every response, built
/// from a [`CacheControl`].
///
/// It applies to every response, whatever its status: a long `max-age` on
/// a service that can fail would also make its errors cacheable, so handlers
/// that fail should set their own `Cache-Control` (with
/// [`if_not_present`](Self::if_not_present) it is kept), or the policy
/// should be short. An empty [`CacheControl`] sets nothing.
#[derive(Debug, Clone)]
pub struct CacheControlLayer {
    value: Option<HeaderValue>,
    overriding: bool,
}

impl CacheControlLayer {
    /// Sets `cc` on responses that have no `Cache-Control` yet; the same as
    /// [`if_not_present`](Self::if_not_present).
    pub fn new(cc: CacheControl) -> Self {
        Self::if_not_present(cc)
    }

    /// Sets `cc` on responses that have no `Cache-Control` yet, so a handler
    /// can still choose its own policy. The usual choice for a default.
    pub fn if_not_present(cc: CacheControl) -> Self {
        Self {
            value: header_value(&cc),
            overriding: false,
        }
    }

    /// Sets `cc` on every response, replacing any `Cache-Control` the
    /// handler set. For policies that must hold whatever the handlers do.
    pub fn overriding(cc: CacheControl) -> Self {
        Self {
            value: header_value(&cc),
            overriding: true,
        }
    }
}

fn header_value(cc: &CacheControl) -> Option<HeaderValue> {
    (!cc.is_empty()).then(|| cc.to_header_value())
}

impl<S> Layer<S> for CacheControlLayer {
    type Service = SetCacheControl<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetCacheControl {
            inner,
            value: self.value.clone(),
            overriding: self.overriding,
        }
    }
}

/// The [`Service`] made by [`CacheControlLayer`]: sets `Cache-Control` on
/// the inner service's responses. The response body type is unchanged.
#[derive(Debug, Clone)]
pub struct SetCacheControl<S> {
    inner: S,
    value: Option<HeaderValue>,
    overriding: bool,
}

impl SetCacheControl<()> {
    /// A layer that sets `cc` on responses without `Cache-Control`; the same
    /// as [`CacheControlLayer::new`].
    pub fn layer(cc: CacheControl) -> CacheControlLayer {
        CacheControlLayer::new(cc)
    }
}

impl<S> SetCacheControl<S> {
    /// Wraps `inner`, setting `cc` on responses without `Cache-Control`.
    pub fn if_not_present(inner: S, cc: CacheControl) -> Self {
        CacheControlLayer::if_not_present(cc).layer(inner)
    }

    /// Wraps `inner`, setting `cc` on every response.
    pub fn overriding(inner: S, cc: CacheControl) -> Self {
        CacheControlLayer::overriding(cc).layer(inner)
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for SetCacheControl<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = SetHeaderFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        SetHeaderFuture {
            inner: self.inner.call(req),
            value: self.value.clone(),
            overriding: self.overriding,
        }
    }
}

pin_project! {
    /// The response future of [`SetCacheControl`] and
    /// [`NoStoreService`](super::NoStoreService).
    pub struct SetHeaderFuture<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
        overriding: bool,
    }
}

impl<F> SetHeaderFuture<F> {
    /// A future that sets `Cache-Control: value` on `inner`'s response.
    pub(crate) fn new(inner: F, value: HeaderValue, overriding: bool) -> Self {
        Self {
            inner,
            value: Some(value),
            overriding,
        }
    }
}

impl<F, B, E> Future for SetHeaderFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            other => return other,
        };
        if let Some(value) = this.value.take() {
            let headers = res.headers_mut();
            if *this.overriding || !headers.contains_key(header::CACHE_CONTROL) {
                headers.insert(header::CACHE_CONTROL, value);
            }
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn formats_in_fixed_order() {
        let cc = CacheControl::new()
            .stale_while_revalidate(Duration::from_secs(30))
            .max_age(MIN)
            .public();
        assert_eq!(
            cc.to_string(),
            "public, max-age=60, stale-while-revalidate=30"
        );
        assert_eq!(
            cc.to_header_value(),
            "public, max-age=60, stale-while-revalidate=30"
        );
    }

    #[test]
    fn every_directive() {
        let cc = CacheControl::new()
            .private()
            .no_cache()
            .no_store()
            .max_age(MIN)
            .s_maxage(Duration::from_secs(120))
            .must_revalidate()
            .proxy_revalidate()
            .no_transform()
            .immutable()
            .stale_while_revalidate(Duration::from_secs(5))
            .stale_if_error(Duration::from_secs(86_400));
        assert_eq!(
            cc.to_string(),
            "private, no-cache, no-store, max-age=60, s-maxage=120, must-revalidate, \
             proxy-revalidate, no-transform, immutable, stale-while-revalidate=5, \
             stale-if-error=86400"
        );
    }

    #[test]
    fn last_visibility_and_duration_win() {
        let cc = CacheControl::new().public().private();
        assert_eq!(cc.to_string(), "private");
        let cc = CacheControl::new().private().public();
        assert_eq!(cc.to_string(), "public");
        let cc = CacheControl::new()
            .max_age(MIN)
            .max_age(Duration::from_secs(5));
        assert_eq!(cc.to_string(), "max-age=5");
    }

    #[test]
    fn no_store_drops_nothing() {
        let cc = CacheControl::new().public().max_age(MIN).no_store();
        assert_eq!(cc.to_string(), "public, no-store, max-age=60");
    }

    #[test]
    fn sub_second_rounds_down_and_empty_is_empty() {
        let cc = CacheControl::new().max_age(Duration::from_millis(1999));
        assert_eq!(cc.to_string(), "max-age=1");
        let cc = CacheControl::new().max_age(Duration::from_millis(10));
        assert_eq!(cc.to_string(), "max-age=0");
        assert!(CacheControl::new().is_empty());
        assert_eq!(CacheControl::new().to_string(), "");
        assert!(!CacheControl::new().immutable().is_empty());
        let hv: HeaderValue = CacheControl::new().no_cache().into();
        assert_eq!(hv, "no-cache");
    }

    fn handler(
        preset: Option<&'static str>,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
        service_fn(move |_req: Request<()>| async move {
            let mut res = Response::new(String::from("body"));
            if let Some(v) = preset {
                res.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
            }
            Ok::<_, Infallible>(res)
        })
    }

    async fn cc_of<S>(svc: S) -> Option<String>
    where
        S: Service<Request<()>, Response = Response<String>, Error = Infallible>,
    {
        let res = svc.oneshot(Request::new(())).await.unwrap();
        res.headers()
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn layer_sets_if_not_present() {
        let policy = CacheControl::new().public().max_age(MIN);
        let layer = SetCacheControl::layer(policy.clone());
        assert_eq!(
            cc_of(layer.layer(handler(None))).await.as_deref(),
            Some("public, max-age=60")
        );
        assert_eq!(
            cc_of(layer.layer(handler(Some("no-cache"))))
                .await
                .as_deref(),
            Some("no-cache")
        );
        let svc = SetCacheControl::if_not_present(handler(None), policy);
        assert_eq!(cc_of(svc).await.as_deref(), Some("public, max-age=60"));
    }

    #[tokio::test]
    async fn layer_overriding_replaces() {
        let policy = CacheControl::new().private();
        let svc = CacheControlLayer::overriding(policy.clone()).layer(handler(Some("public")));
        assert_eq!(cc_of(svc).await.as_deref(), Some("private"));
        let svc = SetCacheControl::overriding(handler(None), policy);
        assert_eq!(cc_of(svc.clone()).await.as_deref(), Some("private"));
        assert_eq!(cc_of(svc.into_inner()).await, None);
    }

    #[tokio::test]
    async fn empty_policy_sets_nothing() {
        let svc = CacheControlLayer::overriding(CacheControl::new()).layer(handler(Some("x")));
        assert_eq!(cc_of(svc).await.as_deref(), Some("x"));
        let svc = CacheControlLayer::new(CacheControl::new()).layer(handler(None));
        assert_eq!(cc_of(svc).await, None);
    }
}
