//! The origin side: routing a request to its upstream and calling it through
//! a pooled hyper client, with connect and read timeouts.
//!
//! This is the innermost `tower::Service` of the stack (the cache layer wraps
//! it), so everything here runs only on a miss, a revalidation or a
//! pass-through — never on a hit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use http::{header, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tiered_http::{Body, BoxError};

use crate::config::{Config, Route, UPLOAD_GRACE};
use crate::headers::{add_forwarded, add_via, strip_hop_by_hop, ClientAddr};
use crate::stats::{GatewayStats, OriginError};

/// Why an upstream call failed; the listener maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No route matches the request (404).
    #[error("no route for this host and path")]
    NoRoute,
    /// The origin did not answer (or send the next body chunk) in time (504).
    #[error("the origin did not answer within {0:?}")]
    Timeout(Duration),
    /// The client stopped sending its request body for the read timeout
    /// (408; not the origin's fault).
    #[error("the client sent no request body for {0:?}")]
    ClientTimeout(Duration),
    /// The client sent its request body slower than the minimum rate, in
    /// bytes per second (408).
    #[error("the client sent its request body slower than {0} bytes/s")]
    ClientTooSlow(u64),
    /// The origin could not be reached (502).
    #[error("cannot connect to the origin: {0}")]
    Connect(#[source] BoxError),
    /// The origin broke the exchange (502).
    #[error("origin error: {0}")]
    Other(#[source] BoxError),
}

/// Calls the origin a request is routed to. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<HttpConnector, Body>,
    routes: Vec<Route>,
    read_timeout: Duration,
    min_upload_rate: u64,
    stats: Arc<GatewayStats>,
}

impl Upstream {
    /// A client pool for `config`'s routes.
    pub fn new(config: &Config, stats: Arc<GatewayStats>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Upstream {
            inner: Arc::new(Inner {
                client,
                routes: config.routes.clone(),
                read_timeout: config.read_timeout,
                min_upload_rate: config.min_upload_rate,
                stats,
            }),
        }
    }

    /// The route for a request: host routes first, then the longest prefix
    /// (the config keeps them in that order).
    pub fn route_for<B>(&self, req: &Request<B>) -> Option<&Route> {
        route_for(&self.inner.routes, req)
    }
}

/// See [`Upstream::route_for`].
pub fn route_for<'r, B>(routes: &'r [Route], req: &Request<B>) -> Option<&'r Route> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    // Route on the path the cache key uses, so `/%61pi/x` cannot reach one
    // upstream and be stored under another's `/api/x`.
    let path = tiered_http::normalize_path(req.uri().path());
    routes.iter().find(|r| {
        path.starts_with(&r.prefix)
            && r.host
                .as_deref()
                .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
    })
}

impl tower::Service<Request<Body>> for Upstream {
    type Response = Response<IdleTimeout<Incoming>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let origin = route_for(&inner.routes, &req)
                .ok_or(UpstreamError::NoRoute)?
                .origin
                .clone();
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri: Uri = format!(
                "http://{}{path}",
                origin.authority().map_or("", |a| a.as_str())
            )
            .parse()
            .map_err(|e| UpstreamError::Other(Box::new(e)))?;
            let client = req.extensions().get::<ClientAddr>().copied();
            let host = req.headers().get(header::HOST).cloned();
            let version = req.version();
            *req.uri_mut() = uri;
            *req.version_mut() = http::Version::HTTP_11;
            let headers = req.headers_mut();
            strip_hop_by_hop(headers);
            add_forwarded(headers, client, host);
            add_via(headers, version);

            // An origin may close an idle pooled connection just as a
            // request goes out on it (its keep-alive timeout racing ours):
            // the request then fails with no response. A request that is
            // idempotent and has no body can be sent again (RFC 9110
            // §9.2.2), on another connection, as nginx does by default.
            let again = replayable(&req);
            let started = Instant::now();
            let mut res = exchange(&inner, req).await?;
            if let (Err(e), Some(req)) = (&res, again) {
                if closed_under_us(e) {
                    tracing::debug!(error = %e, "no response from the origin; sending again");
                    res = exchange(&inner, req).await?;
                }
            }
            let res = match res {
                // The client's body went over the limit while we sent
                // it: not the origin's fault (the listener answers 413).
                Err(e) if is_body_too_large(&e) => {
                    return Err(UpstreamError::Other(Box::new(e)).into());
                }
                Err(e) if e.is_connect() => {
                    inner.stats.origin_failed(OriginError::Connect);
                    return Err(UpstreamError::Connect(Box::new(e)).into());
                }
                Err(e) => {
                    inner.stats.origin_failed(OriginError::Other);
                    return Err(UpstreamError::Other(Box::new(e)).into());
                }
                Ok(res) => res,
            };
            inner.stats.origin_ok(started.elapsed());
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            add_via(&mut parts.headers, parts.version);
            Ok(Response::from_parts(
                parts,
                IdleTimeout::new(body, inner.read_timeout),
            ))
        })
    }
}

/// Sends `req` and waits for the response head under the read timeout.
/// While the gateway waits on the client for the request body, the timeout
/// is the client's (and so is the minimum upload rate): a 408. Otherwise it
/// is the origin's, and runs from the last chunk of the body sent (a long
/// upload is not the origin being slow; an origin that stops reading it is):
/// a 504. See [`Progress::deadline`]. The outer error is a timeout; the inner
/// one is the client's.
async fn exchange(
    inner: &Inner,
    mut req: Request<Body>,
) -> Result<Result<Response<Incoming>, hyper_util::client::legacy::Error>, UpstreamError> {
    let progress = Arc::new(Progress::new(req.body().is_end_stream()));
    if !req.body().is_end_stream() {
        let (parts, body) = req.into_parts();
        let body = Tracked {
            body,
            progress: Arc::clone(&progress),
            sleep: None,
            idle: inner.read_timeout,
            min_rate: inner.min_upload_rate,
        };
        req = Request::from_parts(parts, tiered_http::boxed_body(body));
    }
    let response = inner.client.request(req);
    tokio::pin!(response);
    loop {
        let (deadline, blame) = progress.deadline(inner.read_timeout, inner.min_upload_rate);
        let now = tokio::time::Instant::now();
        if deadline <= now {
            if let Some(error) = blame.client_error(inner.read_timeout, inner.min_upload_rate) {
                return Err(error);
            }
            inner.stats.origin_failed(OriginError::Timeout);
            return Err(UpstreamError::Timeout(inner.read_timeout));
        }
        // While the upload runs, look again at least every `RECHECK`: the
        // rate deadline exists only while the client is being waited on,
        // which changes without waking this loop.
        let wake = if progress.is_done() {
            deadline
        } else {
            deadline.min(after(now, RECHECK))
        };
        if let Ok(res) = tokio::time::timeout_at(wake, &mut response).await {
            progress.answered.store(true, Ordering::Relaxed);
            return Ok(res);
        }
    }
}

/// How often a running upload's deadlines are looked at again.
const RECHECK: Duration = Duration::from_millis(250);

/// Whether an exchange failed because the connection was closed under it
/// (the origin's end of the keep-alive race): the response ended before its
/// head, or the connection was reset. Not a timeout, a refused connection or
/// a response hyper could not parse: sending those again only doubles the
/// load on an origin that is already failing.
fn closed_under_us(e: &hyper_util::client::legacy::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            if matches!(io.kind(), BrokenPipe | ConnectionAborted | ConnectionReset) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A copy of `req` to send again if its exchange fails before any response:
/// only for an idempotent method (RFC 9110 §9.2.2) and an empty body (a
/// streamed body is gone once sent).
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    let idempotent = matches!(
        *req.method(),
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    );
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(tiered_http::empty_body());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether `e` (or what it wraps) is a request body over the size limit.
pub fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `t + d`, or a time decades away if that overflows (a configured timeout
/// of `u64::MAX` seconds means "never", not a panic).
fn after(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(30 * 365 * 86400))
}

/// When a request last made progress towards the origin, how much of its
/// body went, and how long the client kept the gateway waiting for it.
struct Progress {
    start: tokio::time::Instant,
    /// Nanoseconds after `start` of the last request body chunk sent.
    last: AtomicU64,
    /// Request body bytes sent so far.
    sent: AtomicU64,
    /// Nanoseconds spent waiting on the client for body chunks, in waits
    /// that have ended.
    waited: AtomicU64,
    /// Nanoseconds after `start` when the current wait on the client began;
    /// `NOT_WAITING` when the gateway is not waiting on it (it is sending to
    /// the origin, connecting, or waiting for the origin to read).
    waiting_since: AtomicU64,
    /// The whole request body has been sent.
    done: AtomicBool,
    /// The origin's response head has come (see [`Tracked`]).
    answered: AtomicBool,
}

const NOT_WAITING: u64 = u64::MAX;

impl Progress {
    fn new(done: bool) -> Self {
        Progress {
            start: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            waiting_since: AtomicU64::new(NOT_WAITING),
            done: AtomicBool::new(done),
            answered: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(NOT_WAITING - 1)
    }

    /// The client has no chunk ready: a wait on it begins (if none is on).
    fn waiting(&self) {
        let _ = self.waiting_since.compare_exchange(
            NOT_WAITING,
            self.now(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A chunk of `bytes` (or the end, or an error) came: any wait is over.
    fn touch(&self, bytes: usize, done: bool) {
        let now = self.now();
        let since = self.waiting_since.swap(NOT_WAITING, Ordering::Relaxed);
        if since != NOT_WAITING {
            self.waited
                .fetch_add(now.saturating_sub(since), Ordering::Relaxed);
        }
        self.last.fetch_max(now, Ordering::Relaxed);
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
        if done {
            self.done.store(true, Ordering::Relaxed);
        }
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// When the exchange times out if nothing more happens, and whose fault
    /// that would be.
    ///
    /// While the gateway waits on the client for a body chunk, the client
    /// has the read timeout from when that wait began, and must keep up
    /// `min_rate` (bytes per second, 0 for none): the rate counts only time
    /// spent waiting on the client (as Kestrel's `MinRequestBodyDataRate`
    /// does), and the bytes it sent must cover `min_rate` × that time once
    /// the time exceeds [`UPLOAD_GRACE`]. Otherwise the gateway is waiting on
    /// the origin — to read the body, or to answer once it has all of it —
    /// and the origin has the read timeout from the last chunk sent. Time
    /// the gateway spends connecting, or waiting for the origin to read, is
    /// not the client's.
    fn deadline(&self, idle: Duration, min_rate: u64) -> (tokio::time::Instant, Blame) {
        let since = self.waiting_since.load(Ordering::Relaxed);
        if since == NOT_WAITING || self.is_done() {
            return (after(self.last(), idle), Blame::Origin);
        }
        let since = self.start + Duration::from_nanos(since);
        let idle = after(since, idle);
        if min_rate == 0 {
            return (idle, Blame::ClientIdle);
        }
        let sent = self.sent.load(Ordering::Relaxed) as f64;
        let earned = Duration::try_from_secs_f64(sent / min_rate as f64).unwrap_or(Duration::MAX);
        let allowed = earned.max(UPLOAD_GRACE);
        let left =
            allowed.saturating_sub(Duration::from_nanos(self.waited.load(Ordering::Relaxed)));
        let rate = after(since, left);
        if rate < idle {
            (rate, Blame::ClientTooSlow)
        } else {
            (idle, Blame::ClientIdle)
        }
    }
}

/// Whose wait a [`Progress::deadline`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// The origin: not reading the body, or not answering after it.
    Origin,
    /// The client sent no body chunk for the read timeout.
    ClientIdle,
    /// The client's upload fell under the minimum rate.
    ClientTooSlow,
}

impl Blame {
    /// The client's error, if the client is to blame.
    fn client_error(self, idle: Duration, min_rate: u64) -> Option<UpstreamError> {
        match self {
            Blame::Origin => None,
            Blame::ClientIdle => Some(UpstreamError::ClientTimeout(idle)),
            Blame::ClientTooSlow => Some(UpstreamError::ClientTooSlow(min_rate)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that records each chunk (and its end) in `progress`.
    ///
    /// Once the origin has answered (`progress.answered`), it also enforces
    /// the read timeout and the minimum upload rate itself: an origin may
    /// answer before it has read the whole body, and then nothing else
    /// watches the upload, which goes on under the response while the client
    /// holds the origin connection. Before that, [`exchange`] watches it
    /// (and answers 408). `sleep` is armed at the deadline while the client
    /// is being waited on.
    struct Tracked<B> {
        #[pin]
        body: B,
        progress: Arc<Progress>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        idle: Duration,
        min_rate: u64,
    }
}

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            this.progress.waiting();
            // The deadline stands while this wait lasts (only a chunk moves
            // it). When it passes before the origin has answered, the
            // exchange fails the request; look again a little later.
            loop {
                let now = tokio::time::Instant::now();
                let (deadline, blame) = this.progress.deadline(*this.idle, *this.min_rate);
                let cut = blame.client_error(*this.idle, *this.min_rate);
                let wake = if deadline > now {
                    deadline
                } else if let (Some(error), true) =
                    (cut, this.progress.answered.load(Ordering::Relaxed))
                {
                    tracing::debug!(%error, "request body cut after the response began");
                    return Poll::Ready(Some(Err(error.into())));
                } else {
                    after(now, RECHECK)
                };
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
                if sleep.deadline() != wake {
                    sleep.as_mut().reset(wake);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        };
        let done = !matches!(frame, Some(Ok(_))) || this.body.is_end_stream();
        let bytes = match &frame {
            Some(Ok(frame)) => frame.data_ref().map_or(0, Buf::remaining),
            _ => 0,
        };
        this.progress.touch(bytes, done);
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that fails if the origin sends nothing for `idle`
    /// (the read timeout applied between chunks, so a stalled origin cannot
    /// hold a client connection forever, while a long healthy download can
    /// take as long as it needs).
    pub struct IdleTimeout<B> {
        #[pin]
        body: B,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Duration,
    }
}

impl<B> IdleTimeout<B> {
    fn new(body: B, idle: Duration) -> Self {
        IdleTimeout {
            body,
            sleep: tokio::time::sleep(idle),
            idle,
        }
    }
}

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep
                    .reset(after(tokio::time::Instant::now(), *this.idle));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(UpstreamError::Timeout(*this.idle).into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn the_upload_deadline_is_the_earlier_of_idle_and_minimum_rate() {
        let p = Progress::new(false);
        let start = p.start;
        // Not waiting on the client (say, connecting): the origin's read
        // timeout.
        assert_eq!(p.deadline(IDLE, 1000), (start + IDLE, Blame::Origin));
        // Waiting from the start with nothing sent: the grace is all it has.
        p.waiting();
        assert_eq!(
            p.deadline(IDLE, 1000),
            (start + UPLOAD_GRACE, Blame::ClientTooSlow)
        );
        // No minimum rate: only the idle timeout.
        assert_eq!(p.deadline(IDLE, 0), (start + IDLE, Blame::ClientIdle));
        // 2 s of waiting, then 10,000 bytes: at 1,000 B/s they cover 10 s of
        // waiting on the client. Until the next wait on it, the origin has
        // the read timeout from that chunk.
        tokio::time::advance(Duration::from_secs(2)).await;
        p.touch(10_000, false);
        assert_eq!(
            p.deadline(IDLE, 1000),
            (start + Duration::from_secs(2) + IDLE, Blame::Origin)
        );
        // The origin reads nothing for 40 s, past its read timeout...
        tokio::time::advance(Duration::from_secs(40)).await;
        let (deadline, blame) = p.deadline(IDLE, 1000);
        assert!(deadline <= tokio::time::Instant::now());
        assert_eq!(blame, Blame::Origin);
        // ...then reads again: the client's time starts with the wait on
        // it, so neither its idle time nor its rate counts those 40 s
        // (8 s of its 10 s still left).
        p.waiting();
        let at = start + Duration::from_secs(42);
        assert_eq!(
            p.deadline(IDLE, 1000),
            (at + Duration::from_secs(8), Blame::ClientTooSlow)
        );
        // Far ahead of the rate: the idle timeout, from the wait's start.
        p.touch(1_000_000, false);
        p.waiting();
        assert_eq!(p.deadline(IDLE, 1000), (at + IDLE, Blame::ClientIdle));
        // Once the body is sent, the client is no longer waited on.
        let done = Progress::new(false);
        done.waiting();
        done.touch(1, true);
        done.waiting();
        assert_eq!(done.deadline(IDLE, 1_000_000).1, Blame::Origin);
        // An absurd rate is no panic: the grace, less what was waited.
        assert_eq!(
            p.deadline(IDLE, u64::MAX),
            (at + Duration::from_secs(3), Blame::ClientTooSlow)
        );
    }
}
