//! `Last-Modified` validation: the `If-Modified-Since` check and the layer
//! that answers it with `304 Not Modified`.
//!
//! The handler sets `Last-Modified` (see [`last_modified_value`]);
//! [`LastModifiedLayer`] then compares it with the request's
//! `If-Modified-Since`. A handler that can learn the modification time
//! cheaply, before building the body, can instead call
//! [`not_modified_since`] itself and skip the work.
//!
//! `Last-Modified` is the weaker validator: it has one-second precision, so
//! two changes within a second look like one, and it trusts the server's
//! clock. Prefer an `ETag` where one is available; the two combine safely,
//! since `If-Modified-Since` is ignored whenever `If-None-Match` is present.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{box_body, is_get_or_head, not_modified, BoxError, OriginBody};

/// The last instant an HTTP-date can express: 9999-12-31T23:59:59Z.
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// Whether the request's `If-Modified-Since` says the client's copy is
/// current, so a `GET`/`HEAD` should be answered with `304 Not Modified`
/// (RFC 9110 §13.1.3).
///
/// True only when all of these hold:
///
/// * the request has no `If-None-Match` (which takes precedence,
///   RFC 9110 §13.2.2, even if it does not match);
/// * it has exactly one `If-Modified-Since` line holding a valid HTTP-date
///   (IMF-fixdate, or the obsolete RFC 850 and asctime forms);
/// * that date is not in the future by this server's clock (a date later
///   than now cannot come from this server's `Last-Modified`; RFC 7232
///   called it invalid, and honouring it would hide later changes);
/// * `last_modified`, truncated to whole seconds as HTTP-dates are, is at or
///   before that date.
///
/// Anything else, an invalid date included, means "modified": the header is
/// ignored and the full response is sent.
///
/// The RFC evaluates `If-Modified-Since` only for `GET` and `HEAD`; this
/// function sees only headers, so checking the method is the caller's job
/// ([`LastModifiedLayer`] does it).
pub fn not_modified_since(req_headers: &HeaderMap, last_modified: SystemTime) -> bool {
    not_modified_since_at(req_headers, last_modified, SystemTime::now())
}

fn not_modified_since_at(headers: &HeaderMap, last_modified: SystemTime, now: SystemTime) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return false;
    }
    let mut values = headers.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(since) = value
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        return false;
    };
    if since > now {
        return false;
    }
    truncate_to_secs(last_modified) <= since
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// Formats `time` as a `Last-Modified` value (an IMF-fixdate such as
/// `Sun, 06 Nov 1994 08:49:37 GMT`), truncated to whole seconds. Times
/// before 1970 or after 9999 are clamped to those bounds.
pub fn last_modified_value(time: SystemTime) -> HeaderValue {
    let max = UNIX_EPOCH + Duration::from_secs(MAX_HTTP_DATE_SECS);
    let time = time.clamp(UNIX_EPOCH, max);
    // An IMF-fixdate is ASCII: always a valid header value.
    HeaderValue::try_from(httpdate::fmt_http_date(time))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// A [`Layer`] that answers `If-Modified-Since` with `304 Not Modified`
/// when the response carries a `Last-Modified` that is not newer.
///
/// It acts on `GET` and `HEAD` requests without `If-None-Match`, and on
/// `2xx` responses whose `Last-Modified` is a valid date; the check is
/// [`not_modified_since`]. The `304` keeps `Last-Modified`, `ETag`,
/// `Cache-Control`, `Date`, `Expires`, `Vary`, `Content-Location` and other
/// non-content headers, drops `Content-Length`, `Content-Type` and the other
/// content headers, and has no body. The inner body is dropped unread, so
/// the handler has still built it: to save that work, call
/// [`not_modified_since`] in the handler.
///
/// The service's response body is [`OriginBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LastModifiedLayer {
    _priv: (),
}

impl LastModifiedLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for LastModifiedLayer {
    type Service = LastModifiedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LastModifiedService { inner }
    }
}

/// The [`Service`] made by [`LastModifiedLayer`].
#[derive(Debug, Clone)]
pub struct LastModifiedService<S> {
    inner: S,
}

impl<S> LastModifiedService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for LastModifiedService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<OriginBody>;
    type Error = S::Error;
    type Future = LastModifiedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let headers = req.headers();
        let conditions = (is_get_or_head(req.method())
            && !headers.contains_key(header::IF_NONE_MATCH)
            && headers.contains_key(header::IF_MODIFIED_SINCE))
        .then(|| {
            let mut conditions = HeaderMap::new();
            for value in headers.get_all(header::IF_MODIFIED_SINCE) {
                conditions.append(header::IF_MODIFIED_SINCE, value.clone());
            }
            conditions
        });
        LastModifiedFuture {
            inner: self.inner.call(req),
            conditions,
        }
    }
}

pin_project! {
    /// The response future of [`LastModifiedService`].
    pub struct LastModifiedFuture<F> {
        #[pin]
        inner: F,
        // The request's If-Modified-Since lines, when it is to be evaluated.
        conditions: Option<HeaderMap>,
    }
}

impl<F, B, E> Future for LastModifiedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<OriginBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let Some(conditions) = this.conditions.take() else {
            return Poll::Ready(Ok(res.map(box_body)));
        };
        let last_modified = res
            .headers()
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok());
        match last_modified {
            Some(lm) if res.status().is_success() && not_modified_since(&conditions, lm) => {
                Poll::Ready(Ok(not_modified(res.into_parts().0)))
            }
            _ => Poll::Ready(Ok(res.map(box_body))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, StatusCode};
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    /// 1994-11-06T08:49:37Z
    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn lm() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn ims(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn formats_and_clamps() {
        assert_eq!(last_modified_value(lm()), LM);
        assert_eq!(last_modified_value(lm() + Duration::from_millis(900)), LM);
        assert_eq!(
            last_modified_value(UNIX_EPOCH - Duration::from_secs(1)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            last_modified_value(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    #[test]
    fn same_or_older_is_not_modified() {
        assert!(not_modified_since(&ims(LM), lm()));
        assert!(not_modified_since(
            &ims(LM),
            lm() - Duration::from_secs(3600)
        ));
        // Sub-second precision on the server side is ignored.
        assert!(not_modified_since(
            &ims(LM),
            lm() + Duration::from_millis(999)
        ));
        assert!(!not_modified_since(&ims(LM), lm() + Duration::from_secs(1)));
    }

    #[test]
    fn obsolete_date_forms_are_accepted() {
        assert!(not_modified_since(
            &ims("Sunday, 06-Nov-94 08:49:37 GMT"),
            lm()
        ));
        assert!(not_modified_since(&ims("Sun Nov  6 08:49:37 1994"), lm()));
    }

    #[test]
    fn invalid_date_is_ignored() {
        for bad in [
            "",
            "yesterday",
            "06 Nov 1994",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "0",
        ] {
            assert!(!not_modified_since(&ims(bad), lm()), "{bad:?}");
        }
        let mut h = ims(LM);
        h.append(header::IF_MODIFIED_SINCE, HeaderValue::from_static(LM));
        assert!(!not_modified_since(&h, lm()), "two lines: ignored");
        assert!(!not_modified_since(&HeaderMap::new(), lm()));
        let h = {
            let mut h = HeaderMap::new();
            h.insert(
                header::IF_MODIFIED_SINCE,
                HeaderValue::from_bytes(b"Sun, 06 Nov 1994 08:49:37 GMT\xff").unwrap(),
            );
            h
        };
        assert!(!not_modified_since(&h, lm()));
    }

    #[test]
    fn future_date_is_ignored() {
        let now = lm() + Duration::from_secs(10);
        let future =
            HeaderValue::try_from(httpdate::fmt_http_date(now + Duration::from_secs(60))).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::IF_MODIFIED_SINCE, future);
        assert!(!not_modified_since_at(&h, lm(), now));
        assert!(not_modified_since_at(&ims(LM), lm(), now));
        // And with the real clock: a date in the year 9000.
        assert!(!not_modified_since(
            &ims("Mon, 01 Jan 9000 00:00:00 GMT"),
            lm()
        ));
    }

    #[test]
    fn if_none_match_takes_precedence() {
        let mut h = ims(LM);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"nope\""));
        assert!(!not_modified_since(&h, lm()));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("garbage"));
        assert!(!not_modified_since(&h, lm()));
    }

    fn origin(
        status: StatusCode,
        last_modified: Option<&'static str>,
    ) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
    {
        service_fn(move |_req: Request<()>| async move {
            let mut res = Response::builder()
                .status(status)
                .header(header::CONTENT_LENGTH, "5")
                .header(header::CONTENT_TYPE, "text/plain")
                .header(header::CACHE_CONTROL, "no-cache");
            if let Some(lm) = last_modified {
                res = res.header(header::LAST_MODIFIED, lm);
            }
            Ok::<_, Infallible>(res.body(Full::new(Bytes::from_static(b"hello"))).unwrap())
        })
    }

    fn request(method: Method, headers: &[(header::HeaderName, &'static str)]) -> Request<()> {
        let mut req = Request::builder().method(method);
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        req.body(()).unwrap()
    }

    #[tokio::test]
    async fn layer_turns_200_into_304() {
        let svc = LastModifiedLayer::new().layer(origin(StatusCode::OK, Some(LM)));
        for method in [Method::GET, Method::HEAD] {
            let req = request(method, &[(header::IF_MODIFIED_SINCE, LM)]);
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
            assert_eq!(res.headers()[header::LAST_MODIFIED], LM);
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache");
            assert!(!res.headers().contains_key(header::CONTENT_LENGTH));
            assert!(!res.headers().contains_key(header::CONTENT_TYPE));
            assert!(res
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty());
        }
    }

    #[tokio::test]
    async fn layer_passes_through_otherwise() {
        let older = "Sat, 05 Nov 1994 08:49:37 GMT";
        let cases: Vec<(Request<()>, StatusCode, Option<&'static str>)> = vec![
            // Modified since.
            (
                request(Method::GET, &[(header::IF_MODIFIED_SINCE, older)]),
                StatusCode::OK,
                Some(LM),
            ),
            // If-None-Match present.
            (
                request(
                    Method::GET,
                    &[
                        (header::IF_MODIFIED_SINCE, LM),
                        (header::IF_NONE_MATCH, "\"x\""),
                    ],
                ),
                StatusCode::OK,
                Some(LM),
            ),
            // Not GET/HEAD.
            (
                request(Method::POST, &[(header::IF_MODIFIED_SINCE, LM)]),
                StatusCode::OK,
                Some(LM),
            ),
            // Not 2xx.
            (
                request(Method::GET, &[(header::IF_MODIFIED_SINCE, LM)]),
                StatusCode::NOT_FOUND,
                Some(LM),
            ),
            // No or invalid Last-Modified.
            (
                request(Method::GET, &[(header::IF_MODIFIED_SINCE, LM)]),
                StatusCode::OK,
                None,
            ),
            (
                request(Method::GET, &[(header::IF_MODIFIED_SINCE, LM)]),
                StatusCode::OK,
                Some("soon"),
            ),
            // Invalid If-Modified-Since.
            (
                request(Method::GET, &[(header::IF_MODIFIED_SINCE, "soon")]),
                StatusCode::OK,
                Some(LM),
            ),
            // No condition at all.
            (request(Method::GET, &[]), StatusCode::OK, Some(LM)),
        ];
        for (i, (req, status, lm)) in cases.into_iter().enumerate() {
            let svc = LastModifiedService::new(origin(status, lm));
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), status, "case {i}");
            assert_eq!(res.headers()[header::CONTENT_LENGTH], "5", "case {i}");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello", "case {i}");
        }
    }
}
