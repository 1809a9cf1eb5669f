//! `tiered demo`: a sample API, the gateway in front of it, a burst of
//! traffic and a summary — the quickest way to see what the gateway does.
//!
//! The sample origin is a small product API with realistic latency (25–45 ms
//! per product, 80 ms for the list) and the caching headers a well-behaved
//! API sends: `Cache-Control` with `stale-while-revalidate`, `ETag` (answering
//! `If-None-Match` with 304), and `Surrogate-Key` tags for purges. `PUT
//! /api/products/{id}?price=N` changes data (the gateway drops its copy of
//! that URL, RFC 9111 §4.4); `/api/time` is `no-store`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tiered_http::BoxError;
use tokio::net::TcpListener;

use crate::config::{Config, Overrides};
use crate::server::{serve_on, shutdown_signal, Gateway};

/// `tiered demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Gateway address for clients.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin API and dashboard address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Sample origin address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub origin_listen: SocketAddr,
    /// Requests in the burst.
    #[arg(long, default_value_t = 1500)]
    pub requests: usize,
    /// Concurrent clients in the burst.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Share the cache through this Redis (optional).
    #[arg(long)]
    pub redis: Option<String>,
    /// Exit after the summary instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

const PRODUCTS: u64 = 50;

struct Origin {
    prices: Mutex<Vec<(u64, u64)>>, // (price in cents, version)
    requests: AtomicU64,
}

fn json(status: StatusCode, body: String, headers: &[(&str, String)]) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
    res
}

fn product_json(id: u64, price: u64) -> String {
    format!(
        r#"{{"id":{id},"name":"Product {id}","price":{}.{:02},"description":"{}"}}"#,
        price / 100,
        price % 100,
        "A fine product. ".repeat(8)
    )
}

async fn origin(state: Arc<Origin>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let id = path
        .strip_prefix("/api/products/")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|id| (1..=PRODUCTS).contains(id));
    match (req.method().clone(), path.as_str(), id) {
        (Method::GET, "/api/products", _) => {
            tokio::time::sleep(Duration::from_millis(80)).await;
            let prices = state.prices.lock().clone();
            let items: Vec<String> = prices
                .iter()
                .enumerate()
                .map(|(i, (p, _))| product_json(i as u64 + 1, *p))
                .collect();
            json(
                StatusCode::OK,
                format!("[{}]", items.join(",")),
                &[
                    (
                        "cache-control",
                        "public, max-age=10, stale-while-revalidate=30".into(),
                    ),
                    ("surrogate-key", "products".into()),
                ],
            )
        }
        (Method::GET, _, Some(id)) => {
            tokio::time::sleep(Duration::from_millis(25 + fastrand::u64(0..20))).await;
            let (price, version) = state.prices.lock()[(id - 1) as usize];
            let etag = format!("\"{id}-{version}\"");
            let headers = [
                (
                    "cache-control",
                    "public, max-age=30, stale-while-revalidate=60, stale-if-error=300".into(),
                ),
                ("surrogate-key", format!("products product-{id}")),
                ("etag", etag.clone()),
            ];
            if req
                .headers()
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == etag.as_bytes())
            {
                let mut res = json(StatusCode::NOT_MODIFIED, String::new(), &headers);
                res.headers_mut().remove(header::CONTENT_TYPE);
                return res;
            }
            json(StatusCode::OK, product_json(id, price), &headers)
        }
        (Method::PUT | Method::POST, _, Some(id)) => {
            let price = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("price=")))
                .and_then(|p| p.parse::<u64>().ok());
            let Some(price) = price else {
                return json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"give ?price=CENTS"}"#.into(),
                    &[("cache-control", "no-store".into())],
                );
            };
            let mut prices = state.prices.lock();
            let slot = &mut prices[(id - 1) as usize];
            *slot = (price, slot.1 + 1);
            json(
                StatusCode::OK,
                product_json(id, price),
                &[("cache-control", "no-store".into())],
            )
        }
        (Method::GET, "/api/time", _) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            json(
                StatusCode::OK,
                format!(r#"{{"now_ms":{now}}}"#),
                &[("cache-control", "no-store".into())],
            )
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not found"}"#.into(),
            &[("cache-control", "max-age=5".into())],
        ),
    }
}

/// Serves the sample API on `listener` forever.
async fn serve_origin(listener: TcpListener, state: Arc<Origin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(origin(state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A request path of the burst: mostly products (skewed towards a few
/// popular ones, as real traffic is), some lists, some uncacheable.
fn burst_path() -> String {
    let r = fastrand::f64();
    if r < 0.08 {
        "/api/products".into()
    } else if r < 0.15 {
        "/api/time".into()
    } else {
        let id = (fastrand::f64().powi(3) * PRODUCTS as f64) as u64 + 1;
        format!("/api/products/{}", id.min(PRODUCTS))
    }
}

/// Sends `n` requests to `base`, `concurrency` at a time; returns sorted
/// latencies (whole response, body included) and the number of failures.
async fn burst(base: &str, n: usize, concurrency: usize) -> (Vec<Duration>, usize) {
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, base) = (client.clone(), Arc::clone(&next), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut times, mut failed) = (Vec::new(), 0usize);
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let uri = format!("{base}{}", burst_path());
                let started = Instant::now();
                let ok = match uri.parse::<http::Uri>() {
                    Ok(uri) => match client.get(uri).await {
                        Ok(res) => {
                            let ok = res.status().is_success();
                            ok && res.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                times.push(started.elapsed());
                if !ok {
                    failed += 1;
                }
            }
            (times, failed)
        }));
    }
    let (mut all, mut failed) = (Vec::with_capacity(n), 0);
    for t in tasks {
        if let Ok((times, f)) = t.await {
            all.extend(times);
            failed += f;
        }
    }
    all.sort();
    (all, failed)
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs the demo.
///
/// # Errors
///
/// A port that cannot be bound, or a gateway that cannot be built.
pub async fn run(args: DemoArgs) -> Result<(), BoxError> {
    crate::logging::init(crate::config::LogFormat::Pretty, "warn");
    let origin_listener = TcpListener::bind(args.origin_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (origin): {e}", args.origin_listen))?;
    let listener = TcpListener::bind(args.listen).await.map_err(|e| {
        format!(
            "cannot listen on {}: {e} (try --listen 127.0.0.1:0)",
            args.listen
        )
    })?;
    let admin = TcpListener::bind(args.admin_listen).await.map_err(|e| {
        format!(
            "cannot listen on {} (admin): {e} (try --admin-listen 127.0.0.1:0)",
            args.admin_listen
        )
    })?;
    let origin_addr = origin_listener.local_addr()?;
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let state = Arc::new(Origin {
        prices: Mutex::new((1..=PRODUCTS).map(|id| (id * 199 + 99, 1)).collect()),
        requests: AtomicU64::new(0),
    });
    tokio::spawn(serve_origin(origin_listener, Arc::clone(&state)));

    let config = Config::load(&Overrides {
        origin: Some(format!("http://{origin_addr}")),
        listen: Some(addr),
        admin_listen: Some(admin_addr),
        redis: args.redis.clone(),
        l1_bytes: Some(64 << 20),
        ..Default::default()
    })?;
    let gateway = Gateway::build(config)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(serve_on(Arc::clone(&gateway), listener, admin, rx));

    println!("tiered demo");
    println!("  sample API (origin)  http://{origin_addr}");
    println!("  gateway              http://{addr}");
    println!("  dashboard            http://{admin_addr}/");
    println!();
    println!(
        "burst: {} requests, {} concurrent, through the gateway…",
        args.requests, args.concurrency
    );
    let before = state.requests.load(Ordering::Relaxed);
    let (through, failed) = burst(&format!("http://{addr}"), args.requests, args.concurrency).await;
    let origin_calls = state.requests.load(Ordering::Relaxed) - before;
    let direct_n = (args.requests / 5).max(50);
    println!("        {direct_n} requests straight to the origin, for comparison…");
    let (direct, _) = burst(&format!("http://{origin_addr}"), direct_n, args.concurrency).await;

    let stats = gateway.stats.snapshot();
    let saved = (args.requests as u64).saturating_sub(origin_calls);
    println!();
    println!("                       p50          p99");
    println!(
        "  through tiered   {:>8.2} ms  {:>8.2} ms",
        pct(&through, 0.5),
        pct(&through, 0.99)
    );
    println!(
        "  direct to origin {:>8.2} ms  {:>8.2} ms",
        pct(&direct, 0.5),
        pct(&direct, 0.99)
    );
    println!();
    println!(
        "  hit ratio {:.1}% of cacheable requests ({} hits, {} stale, {} misses, {} uncacheable)",
        stats.requests.hit_ratio * 100.0,
        stats.requests.hit,
        stats.requests.stale,
        stats.requests.miss,
        stats.requests.bypass
    );
    println!(
        "  origin requests saved: {saved} of {} ({:.1}%); failed requests: {failed}",
        args.requests,
        saved as f64 * 100.0 / args.requests.max(1) as f64
    );
    println!();
    println!("try:");
    println!("  curl -i http://{addr}/api/products/7");
    println!("  curl -X PUT 'http://{addr}/api/products/7?price=1299'   # changes data; the gateway drops its copy");
    println!(
        "  curl -X POST http://{admin_addr}/purge -H 'content-type: application/json' -d '{{\"tag\":\"products\",\"mode\":\"soft\"}}'"
    );
    println!("  curl http://{admin_addr}/stats");
    println!("  open http://{admin_addr}/ for the live dashboard");

    if args.no_wait {
        let _ = tx.send(true);
    } else {
        println!("serving until Ctrl-C");
        shutdown_signal().await;
        let _ = tx.send(true);
    }
    let _ = serving.await;
    if failed > 0 {
        return Err(format!("{failed} requests of the burst failed").into());
    }
    Ok(())
}
