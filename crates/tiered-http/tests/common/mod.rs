//! A scripted origin for the layer tests: each request is answered by a
//! closure and recorded, so tests can assert what reached the origin.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use tiered::ManualClock;
use tiered_http::{cache_builder, Body, BoxError, CacheLayer, CacheLayerBuilder, CacheService};
use tower::{Service, ServiceExt};

/// What the origin saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: String,
    pub headers: HeaderMap,
}

type Responder = dyn Fn(&Seen, usize) -> Result<Response<Full<Bytes>>, BoxError> + Send + Sync;

#[derive(Clone)]
pub struct Origin {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    respond: Arc<Responder>,
    pub delay: Duration,
    /// Delay only requests from this one on (1-based; 0: all).
    pub slow_from: usize,
}

impl Origin {
    /// An origin answering request n (1-based) with `respond(seen, n)`.
    pub fn new(
        respond: impl Fn(&Seen, usize) -> Result<Response<Full<Bytes>>, BoxError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Origin {
            seen: Arc::default(),
            respond: Arc::new(respond),
            delay: Duration::ZERO,
            slow_from: 0,
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().last().cloned().unwrap()
    }
}

/// A response with `headers` and `body`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_owned())));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        res.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    res
}

impl Service<Request<Body>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let seen = Seen {
            method: req.method().clone(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
        };
        let n = {
            let mut all = self.seen.lock();
            all.push(seen.clone());
            all.len()
        };
        let result = (self.respond)(&seen, n);
        let delay = if n >= self.slow_from {
            self.delay
        } else {
            Duration::ZERO
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            result
        })
    }
}

/// A layer over `origin` with a manual clock; `configure` adjusts the builder.
pub struct Harness {
    pub clock: ManualClock,
    pub layer: CacheLayer,
    pub svc: CacheService<Origin>,
    pub origin: Origin,
}

pub fn harness(
    origin: Origin,
    configure: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder,
) -> Harness {
    let clock = ManualClock::new();
    let cache = cache_builder("http-test")
        .clock(clock.clone())
        .build()
        .unwrap();
    let layer = configure(CacheLayer::builder(cache).clock(clock.clone()))
        .build()
        .unwrap();
    let svc = tower::Layer::layer(&layer, origin.clone());
    Harness {
        clock,
        layer,
        svc,
        origin,
    }
}

/// A finished response: status, headers, body.
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn x_cache(&self) -> String {
        self.header("x-cache").unwrap_or_default()
    }
}

impl Harness {
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "example.com");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(tiered_http::empty_body()).unwrap();
        let res = self.svc.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn get(&self, path: &str) -> Got {
        self.send("GET", path, &[]).await
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

/// Polls `check` until it holds (10 s of wall time at most).
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
