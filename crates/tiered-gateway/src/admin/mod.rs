//! The admin listener: purges, flushes, `/stats`, `/metrics` and the
//! dashboard.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /` | no | the dashboard (one embedded HTML file; it asks for the token) |
//! | `GET /healthz`, `GET /readyz` | no | liveness, readiness |
//! | `GET /stats` | yes | JSON: requests, latency, origin, tiers, top keys |
//! | `GET /metrics` | yes | Prometheus text format |
//! | `POST /purge` | yes | one of `url`, `key`, `tag`, `prefix`, with `mode` = `hard` (default) or `soft` |
//! | `POST /flush` | yes | `tier` = `l1` (this instance's memory) or `all` (every tier, every instance) |
//!
//! Parameters come as a JSON body or a query string
//! (`POST /purge?tag=product-42&mode=soft`). Authentication is
//! `Authorization: Bearer TOKEN`, compared in constant time; with no token
//! configured the configuration only allows a loopback listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tiered_http::PurgeMode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tower::ServiceExt;

use crate::server::{self, Gateway};

const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves the admin API until `shutdown` fires, then gives open requests
/// the shutdown grace period.
///
/// It runs on the same hyper connection settings as the client listener
/// (rather than `axum::serve`) for their header-read timeout and header
/// limits: an HTTP/1 client that opens a connection and trickles its
/// headers is cut off after 30 s instead of holding a connection forever.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let grace = gateway.config.shutdown_grace;
    let app = router(gateway);
    let builder = server::http_builder();
    let graceful = GracefulShutdown::new();
    server::accept_until(listener, &mut shutdown, |stream, peer| {
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "admin connection ended with an error");
            }
        });
    })
    .await;
    if !server::finish(graceful, grace).await {
        tracing::warn!("admin connections still open after the grace period; closing them");
    }
}

/// The admin routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/purge", post(purge))
        .route("/flush", post(flush))
        .with_state(gateway)
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn fail(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

/// `Ok` if the request may use the admin API.
///
/// With a token: `Authorization: Bearer TOKEN`. The comparison is of SHA-256
/// digests in constant time, so neither the token's bytes nor its length
/// leak through timing. A browser cannot send `Authorization` cross-site
/// without a CORS preflight (which this API never grants), so a token also
/// stops cross-site requests.
///
/// Without a token (loopback only), any web page the operator visits could
/// still POST to `127.0.0.1`: so a `Host` that is not a loopback name is
/// refused (DNS rebinding), and a POST must be `Content-Type:
/// application/json`, which a page cannot send cross-site without a
/// preflight.
#[allow(clippy::result_large_err)]
fn authorize(gateway: &Gateway, method: &Method, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &gateway.config.admin_token else {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let loopback = name.eq_ignore_ascii_case("localhost")
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(fail(
                StatusCode::FORBIDDEN,
                "without an admin token the admin API answers loopback hosts only",
            ));
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if *method == Method::POST && !json {
            return Err(fail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "without an admin token, POST a JSON body with Content-Type: application/json",
            ));
        }
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (given, want) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    if bool::from(given.as_slice().ct_eq(want.as_slice())) {
        Ok(())
    } else {
        let mut res = fail(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"tiered admin\""),
        );
        Err(res)
    }
}

async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        Html(DASHBOARD),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[derive(Serialize)]
struct TierL1 {
    hits: u64,
    misses: u64,
    entries: u64,
    bytes: u64,
    max_bytes: u64,
    evictions: u64,
}

#[derive(Serialize)]
struct TierL2 {
    hits: u64,
    misses: u64,
    errors: u64,
    bad_data: u64,
    writes: u64,
    pending: u64,
    breaker: &'static str,
    /// The Redis server behind L2 (all of it, not only this cache's keys);
    /// `null` while it cannot be asked.
    server: Option<RedisServer>,
}

#[derive(Serialize)]
struct RedisServer {
    keys: u64,
    used_memory: u64,
    /// 0: no `maxmemory` limit.
    max_memory: u64,
    nodes: u32,
}

/// How long a Redis size reading is reused: every `/stats` or `/metrics`
/// poll would otherwise cost two commands per master.
const SERVER_USAGE_EVERY: Duration = Duration::from_secs(2);

/// The Redis server's size, asked at most every [`SERVER_USAGE_EVERY`]
/// (through the L2 breaker and timeout: an unreachable Redis costs nothing
/// and gives `None`). Also sets the `tiered_gateway_redis_*` gauges.
async fn server_usage(gw: &Gateway) -> Option<RedisServer> {
    gw.config.redis.as_ref()?;
    let cached = *gw.l2_usage.lock();
    let usage = match cached {
        Some((at, usage)) if at.elapsed() < SERVER_USAGE_EVERY => usage,
        _ => {
            let usage = gw.layer.cache().l2_server_usage().await.ok();
            *gw.l2_usage.lock() = Some((Instant::now(), usage));
            if let Some(u) = usage {
                metrics::gauge!("tiered_gateway_redis_keys").set(u.keys as f64);
                metrics::gauge!("tiered_gateway_redis_used_memory_bytes").set(u.used_memory as f64);
                metrics::gauge!("tiered_gateway_redis_max_memory_bytes").set(u.max_memory as f64);
            }
            usage
        }
    }?;
    Some(RedisServer {
        keys: usage.keys,
        used_memory: usage.used_memory,
        max_memory: usage.max_memory,
        nodes: usage.nodes,
    })
}

#[derive(Serialize)]
struct Tiers {
    l1: TierL1,
    l2: Option<TierL2>,
}

#[derive(Serialize)]
struct CacheCounters {
    stored: u64,
    revalidated: u64,
    coalesced: u64,
}

#[derive(Serialize)]
struct TopKey {
    key: String,
    count: u64,
}

#[derive(Serialize)]
struct StatsBody {
    version: &'static str,
    #[serde(flatten)]
    gateway: crate::stats::Snapshot,
    cache: CacheCounters,
    tiers: Tiers,
    top_keys: Vec<TopKey>,
}

fn stats_body(gw: &Gateway, server: Option<RedisServer>) -> StatsBody {
    let engine = gw.layer.cache().stats();
    let http = gw.layer.stats();
    StatsBody {
        version: env!("CARGO_PKG_VERSION"),
        gateway: gw.stats.snapshot(),
        cache: CacheCounters {
            stored: http.stored,
            revalidated: http.revalidated,
            coalesced: http.coalesced,
        },
        tiers: Tiers {
            l1: TierL1 {
                hits: engine.l1.hits,
                misses: engine.l1.misses,
                entries: engine.l1.entries,
                bytes: engine.l1.weighted_bytes,
                max_bytes: gw.config.l1_bytes,
                evictions: engine.l1.evictions,
            },
            l2: engine.l2.map(|l2| TierL2 {
                hits: l2.hits,
                misses: l2.misses,
                errors: l2.errors,
                bad_data: l2.bad_data,
                writes: l2.writes,
                pending: l2.pending,
                breaker: match l2.breaker {
                    tiered::l2::BreakerState::Closed => "closed",
                    tiered::l2::BreakerState::HalfOpen => "half-open",
                    tiered::l2::BreakerState::Open => "open",
                    _ => "unknown",
                },
                server,
            }),
        },
        top_keys: gw
            .layer
            .top_keys(20)
            .into_iter()
            .map(|k| TopKey {
                key: k.key,
                count: k.count,
            })
            .collect(),
    }
}

async fn stats(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(res) = authorize(&gw, &Method::GET, &headers) {
        return res;
    }
    let server = server_usage(&gw).await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(stats_body(&gw, server)),
    )
        .into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(res) = authorize(&gw, &Method::GET, &headers) {
        return res;
    }
    // Refreshes the engine's gauges (entries, bytes, breaker) and the
    // Redis size gauges first.
    let _ = gw.layer.cache().stats();
    let _ = server_usage(&gw).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.prometheus.render(),
    )
        .into_response()
}

/// What to purge: exactly one of the four, plus a mode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    key: Option<String>,
    tag: Option<String>,
    prefix: Option<String>,
    mode: Option<String>,
}

#[derive(Serialize)]
struct PurgeDone {
    purged: &'static str,
    value: String,
    mode: &'static str,
}

/// Parameters from a JSON body or from the query string, not both (one would
/// silently override the other: `?mode=soft` with a JSON body was a hard
/// purge).
fn params<T: Default + for<'de> Deserialize<'de>>(uri: &Uri, body: &[u8]) -> Result<T, String> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        if uri.query().is_some_and(|q| !q.is_empty()) {
            return Err("give the parameters as a JSON body or as a query string, not both".into());
        }
        return serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"));
    }
    if uri.query().is_none() {
        return Ok(T::default());
    }
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| format!("bad query string: {e}"))
}

/// The most a POST's parameters may weigh.
const MAX_BODY: usize = 64 << 10;
/// How long a POST's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The parameters of an authorized POST, or the response refusing it. The
/// body is read only once the caller is authorized, bounded in size and time:
/// read first, any caller could make the server hold megabytes per request,
/// trickled in for as long as it liked.
#[allow(clippy::result_large_err)]
async fn authorized_params<T: Default + for<'de> Deserialize<'de>>(
    gw: &Gateway,
    headers: &HeaderMap,
    uri: &Uri,
    body: axum::body::Body,
) -> Result<T, Response> {
    authorize(gw, &Method::POST, headers)?;
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return Err(fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body must be at most {MAX_BODY} bytes"),
            ))
        }
        Err(_) => {
            return Err(fail(
                StatusCode::REQUEST_TIMEOUT,
                "the body came too slowly",
            ))
        }
    };
    params(uri, &body).map_err(|e| fail(StatusCode::BAD_REQUEST, e))
}

async fn purge(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    uri: Uri,
    body: axum::body::Body,
) -> Response {
    let req: PurgeRequest = match authorized_params(&gw, &headers, &uri, body).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    let mode = match req.mode.as_deref() {
        None | Some("hard") => PurgeMode::Hard,
        Some("soft") => PurgeMode::Soft,
        Some(other) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("mode must be hard or soft, not {other:?}"),
            )
        }
    };
    let mut given: Vec<(&'static str, String)> = [
        ("url", req.url),
        ("key", req.key),
        ("tag", req.tag),
        ("prefix", req.prefix),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let (kind, value) = match (given.pop(), given.is_empty()) {
        (Some(one), true) => one,
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                "give exactly one of url, key, tag, prefix",
            )
        }
    };
    let layer = &gw.layer;
    let result = match kind {
        "url" => layer.purge_url(&value, mode).await,
        "key" => layer.purge_key(&value, mode).await,
        "tag" => layer.purge_tag(&value, mode).await,
        _ => layer.purge_prefix(&value, mode).await,
    };
    match result {
        Ok(()) => {
            metrics::counter!("tiered_gateway_purges_total", "kind" => kind).increment(1);
            tracing::info!(kind, value = %value, ?mode, "purged");
            Json(PurgeDone {
                purged: kind,
                value,
                mode: if mode == PurgeMode::Soft {
                    "soft"
                } else {
                    "hard"
                },
            })
            .into_response()
        }
        // The request was fine; the cache could not carry it out (L2
        // unreachable, say), perhaps after a part was done: worth a retry.
        Err(e @ tiered_http::PurgeError::Cache(tiered::Error::L2(_))) => {
            fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlushRequest {
    tier: Option<String>,
}

async fn flush(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    uri: Uri,
    body: axum::body::Body,
) -> Response {
    let req: FlushRequest = match authorized_params(&gw, &headers, &uri, body).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    let tier = match req.tier.as_deref() {
        Some("l1") => {
            gw.layer.cache().clear_l1();
            "l1"
        }
        Some("all") => {
            gw.layer.purge_all();
            "all"
        }
        _ => return fail(StatusCode::BAD_REQUEST, "tier must be l1 or all"),
    };
    metrics::counter!("tiered_gateway_purges_total", "kind" => "flush").increment(1);
    tracing::info!(tier, "flushed");
    Json(serde_json::json!({ "flushed": tier })).into_response()
}
