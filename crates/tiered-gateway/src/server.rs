//! `tiered serve`: the client listener, what every request goes through
//! before the cache, and graceful shutdown.
//!
//! A request's path: hyper (HTTP/1.1 or HTTP/2, keep-alive) → [`handle`]
//! (health checks, strict framing, size limit, hop-by-hop fields, route) →
//! the cache layer (`tiered_http::CacheLayer`: hit, stale, revalidate, miss) →
//! [`Upstream`] (the pooled client to the origin). Routes marked `bypass` skip
//! the cache layer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tiered_http::{Body, BoxError, CacheLayer, CacheService, Rule};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{Layer, ServiceExt};

use crate::config::{Config, RedisTarget};
use crate::framing::Watched;
use crate::headers::{strip_hop_by_hop, ClientAddr};
use crate::stats::{GatewayStats, Outcome};
use crate::upstream::{is_body_too_large, Upstream, UpstreamError};

/// Everything a running gateway shares between its listeners.
pub struct Gateway {
    /// The checked configuration.
    pub config: Config,
    /// The HTTP cache (purges, stats).
    pub layer: CacheLayer,
    /// Request counters and latencies.
    pub stats: Arc<GatewayStats>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// False until listening, and again once shutdown began.
    pub ready: AtomicBool,
    /// The last reading of the Redis server's size, and when it was taken.
    pub(crate) l2_usage: parking_lot::Mutex<Option<(Instant, Option<tiered::l2::ServerUsage>)>>,
    upstream: Upstream,
    service: CacheService<Upstream>,
}

/// Installs the Prometheus recorder. Must run before the cache is built (the
/// engine registers its metric handles at build time).
fn install_metrics() -> Result<PrometheusHandle, BoxError> {
    // Request latencies: 100 µs to 30 s.
    const BUCKETS: [f64; 16] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        10.0, 30.0,
    ];
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Without an exporter task, histograms are drained here.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

impl Gateway {
    /// Builds the cache and the service stack (binds nothing).
    ///
    /// # Errors
    ///
    /// If the metrics recorder or the cache cannot be built.
    pub fn build(config: Config) -> Result<Arc<Gateway>, BoxError> {
        let prometheus = install_metrics()?;
        let stats = Arc::new(GatewayStats::default());
        // Top keys: every request is counted (the sketch is skipped when its
        // lock is busy, so this never blocks the hit path); a sampled sketch
        // shows nothing for the first requests, which is what an operator
        // watching a fresh gateway looks at.
        let mut cache = tiered_http::cache_builder("http")
            .l1_max_bytes(config.l1_bytes)
            .top_keys(64, 1);
        cache = match &config.redis {
            None => cache,
            Some(RedisTarget::Standalone(url)) => cache.redis(url.clone()),
            Some(RedisTarget::Cluster(seeds)) => cache.redis_cluster(seeds.clone()),
        };
        let mut layer = CacheLayer::builder(cache.build()?)
            .max_body_bytes(usize::try_from(config.max_cached_body).unwrap_or(usize::MAX))
            .default_stale_if_error(config.stale_if_error);
        for field in &config.targeted_fields {
            layer = layer.targeted_field(field);
        }
        if let Some(fraction) = config.heuristic {
            layer = layer.heuristic_freshness(fraction, Duration::from_secs(86400));
        }
        if let Some(name) = &config.tenant_header {
            layer = layer.tenant_header(name);
        }
        // One cache rule per route, in the routes' order (most specific
        // first), so a route without a ttl is not caught by a shorter
        // route's rule. The layer's rules match the path only, which is why
        // the config refuses ttl / ignore_query on host routes.
        for route in config.routes.iter().filter(|r| r.host.is_none()) {
            let mut rule = Rule::path_prefix(route.prefix.clone());
            if let Some(ttl) = route.ttl {
                rule = rule.ttl(ttl);
            }
            if !route.ignore_query.is_empty() {
                rule = rule.ignore_query_params(route.ignore_query.iter().cloned());
            }
            layer = layer.rule(rule);
        }
        let layer = layer.build()?;
        let upstream = Upstream::new(&config, Arc::clone(&stats));
        let service = layer.layer(upstream.clone());
        Ok(Arc::new(Gateway {
            config,
            layer,
            stats,
            prometheus,
            ready: AtomicBool::new(false),
            l2_usage: parking_lot::Mutex::new(None),
            upstream,
            service,
        }))
    }

    /// Whether `/readyz` says ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(tiered_http::full_body(bytes::Bytes::from_static(
        body.as_bytes(),
    )));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// `/healthz` (the process answers) and `/readyz` (it takes traffic: false
/// while starting and draining).
pub fn health(gateway: &Gateway, path: &str) -> Option<Response<Body>> {
    match path {
        "/healthz" => Some(text(StatusCode::OK, "ok\n")),
        "/readyz" if gateway.is_ready() => Some(text(StatusCode::OK, "ready\n")),
        "/readyz" => Some(text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")),
        _ => None,
    }
}

/// One client request, start to response headers.
///
///
/// `smuggled` is the connection's flag from [`crate::framing`]: the request
/// carried both `Content-Length` and `Transfer-Encoding`.
pub fn handle(
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    smuggled: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async move {
        if gateway.config.health_on_listener && matches!(*req.method(), Method::GET | Method::HEAD)
        {
            if let Some(res) = health(&gateway, req.uri().path()) {
                return res;
            }
        }
        // Counted as finished even if the client goes away mid-request
        // (the future is dropped): the in-flight gauge must not drift.
        let guard = InFlight::new(Arc::clone(&gateway));
        let (outcome, res) = if smuggled.load(Ordering::Acquire) {
            let mut res = text(
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding\n",
            );
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            (Outcome::Error, res)
        } else {
            forward(Arc::clone(&gateway), peer, req).await
        };
        guard.finish(outcome, res.status().as_u16());
        res
    })
}

/// One request in flight; recorded as an error if dropped unfinished.
struct InFlight {
    gateway: Option<Arc<Gateway>>,
    started: Instant,
}

impl InFlight {
    fn new(gateway: Arc<Gateway>) -> Self {
        gateway.stats.begin();
        InFlight {
            gateway: Some(gateway),
            started: Instant::now(),
        }
    }

    fn finish(mut self, outcome: Outcome, status: u16) {
        if let Some(gw) = self.gateway.take() {
            gw.stats.finish(outcome, status, self.started.elapsed());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(gw) = self.gateway.take() {
            // 499: the client closed the request (nginx's convention).
            gw.stats.finish(Outcome::Error, 499, self.started.elapsed());
        }
    }
}

async fn forward(
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> (Outcome, Response<Body>) {
    let limit = gateway.config.max_request_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return (
            Outcome::Error,
            text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        );
    }
    let (mut parts, body) = req.into_parts();
    // HTTP/2 carries the host in `:authority`; the cache key and the origin
    // want a Host field.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions.insert(ClientAddr(peer.ip()));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = tiered_http::boxed_body(http_body_util::Limited::new(body, limit));
    let req = Request::from_parts(parts, body);

    let Some(route) = gateway.upstream.route_for(&req) else {
        return (Outcome::Error, text(StatusCode::NOT_FOUND, "no route\n"));
    };
    let result = if route.bypass {
        call_upstream(gateway.upstream.clone(), req)
            .await
            .map(|res| (Outcome::Bypass, res))
    } else {
        call_cache(gateway.service.clone(), req).await.map(|res| {
            let outcome = Outcome::from_x_cache(res.headers().get("x-cache"));
            (outcome, res)
        })
    };
    match result {
        Ok(pair) => pair,
        Err(e) => (Outcome::Error, error_response(&e)),
    }
}

// The two calls below are plain functions returning boxed futures so the
// compiler sees concrete (`'static`) body types; awaiting the services
// directly inside `forward_inner` hits a rustc limitation with higher-ranked
// lifetimes ("implementation of `Service` is not general enough").
fn call_cache(
    service: CacheService<Upstream>,
    req: Request<Body>,
) -> BoxFuture<'static, Result<Response<Body>, BoxError>> {
    Box::pin(service.oneshot(req))
}

fn call_upstream(
    mut upstream: Upstream,
    req: Request<Body>,
) -> BoxFuture<'static, Result<Response<Body>, BoxError>> {
    // Always ready (see `Upstream::poll_ready`).
    let response = tower::Service::call(&mut upstream, req);
    Box::pin(async move { Ok(response.await?.map(tiered_http::boxed_body)) })
}

fn error_response(e: &BoxError) -> Response<Body> {
    if is_body_too_large(e.as_ref()) {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    match e.downcast_ref::<UpstreamError>() {
        Some(UpstreamError::NoRoute) => text(StatusCode::NOT_FOUND, "no route\n"),
        Some(UpstreamError::Timeout(_)) => {
            tracing::warn!(error = %e, "origin timeout");
            text(StatusCode::GATEWAY_TIMEOUT, "origin timeout\n")
        }
        Some(UpstreamError::ClientTimeout(_)) => {
            text(StatusCode::REQUEST_TIMEOUT, "request body timeout\n")
        }
        Some(UpstreamError::ClientTooSlow(_)) => {
            text(StatusCode::REQUEST_TIMEOUT, "request body too slow\n")
        }
        _ => {
            tracing::warn!(error = %e, "origin error");
            text(StatusCode::BAD_GATEWAY, "origin unavailable\n")
        }
    }
}

/// The HTTP/1.1 + HTTP/2 connection settings (both listeners).
pub(crate) fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client gets 30 s to send its headers (slowloris), and 64 KiB
        // for them. The header count stays at hyper's default (100): setting
        // any `max_headers` makes hyper allocate and fill its parse arrays
        // on the heap for every request, instead of on the stack.
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 << 10)
        .max_concurrent_streams(256);
    builder
}

/// Accepts clients until `shutdown` fires, then waits up to the grace period
/// for in-flight requests.
pub async fn run_listener(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = http_builder();
    let graceful = GracefulShutdown::new();
    accept_until(listener, &mut shutdown, |stream, peer| {
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gateway);
        let smuggled = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(Watched::new(stream, Arc::clone(&smuggled)));
        let service = hyper::service::service_fn(move |req| {
            let response = handle(Arc::clone(&gw), peer, Arc::clone(&smuggled), req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let conn = graceful.watch(builder.serve_connection(io, service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    })
    .await;
    gateway.ready.store(false, Ordering::Relaxed);
    let grace = gateway.config.shutdown_grace;
    tracing::info!(?grace, "shutting down: finishing in-flight requests");
    if !finish(graceful, grace).await {
        tracing::warn!(
            in_flight = gateway.stats.in_flight(),
            "shutdown grace period over; closing the remaining connections"
        );
    }
}

/// Hands each accepted connection to `serve` until `shutdown` fires; then
/// drops the listener (new connections are refused).
pub(crate) async fn accept_until(
    listener: TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Waits up to `grace` for the watched connections to finish; false if some
/// were still open (their tasks end with the runtime, when `serve` returns).
pub(crate) async fn finish(graceful: GracefulShutdown, grace: Duration) -> bool {
    tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok()
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Binds both listeners (failing before serving anything if either cannot
/// be bound), then serves until SIGTERM / Ctrl-C.
///
/// # Errors
///
/// A listener that cannot be bound, or a cache that cannot be built.
pub async fn serve(config: Config) -> Result<(), BoxError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", config.admin_listen))?;
    let gateway = Gateway::build(config)?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    serve_on(gateway, listener, admin, rx).await;
    Ok(())
}

/// Serves on bound listeners until `shutdown` fires (also used by `demo`).
///
/// Shutdown has two stages. First `/readyz` turns 503 while both listeners
/// keep serving, for `drain_delay`: a load balancer polling it takes the
/// instance out of rotation before any connection is refused. Then the
/// listeners stop accepting and in-flight requests get `shutdown_grace`.
pub async fn serve_on(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    let admin_addr = admin.local_addr().ok();
    // Ready before the drain task exists: a shutdown that already fired
    // must find it set, and clear it.
    gateway.ready.store(true, Ordering::Relaxed);
    let (stop_tx, stop) = watch::channel(false);
    let draining = Arc::clone(&gateway);
    tokio::spawn(async move {
        // An error means the sender is gone: shut down as well.
        let _ = shutdown.wait_for(|&stop| stop).await;
        draining.ready.store(false, Ordering::Relaxed);
        let delay = draining.config.drain_delay;
        if !delay.is_zero() {
            tracing::info!(?delay, "shutting down: /readyz says 503, still serving");
            tokio::time::sleep(delay).await;
        }
        let _ = stop_tx.send(true);
    });
    let shutdown = stop;
    let admin_task = tokio::spawn(crate::admin::serve(
        Arc::clone(&gateway),
        admin,
        shutdown.clone(),
    ));
    tracing::info!(
        listen = ?addr,
        admin = ?admin_addr,
        routes = gateway.config.routes.len(),
        redis = gateway.config.redis.is_some(),
        "tiered is serving"
    );
    run_listener(Arc::clone(&gateway), listener, shutdown).await;
    // The admin listener drains concurrently, bounded by the same grace.
    let _ = admin_task.await;
}

/// Reads a whole (small) body, for tests and the admin API.
pub async fn collect(body: Incoming, limit: usize) -> Result<bytes::Bytes, BoxError> {
    let limited = http_body_util::Limited::new(body, limit);
    Ok(limited.collect().await?.to_bytes())
}
