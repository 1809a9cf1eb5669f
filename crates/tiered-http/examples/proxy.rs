//! A minimal caching reverse proxy: hyper server → `CacheLayer` → hyper client.
//!
//! ```text
//! cargo run -p tiered-http --example proxy -- --listen 127.0.0.1:8001 --origin http://127.0.0.1:8000
//! ```
//!
//! Options: `--redis URL` (share the cache through Redis), `--targeted FIELD`
//! (e.g. `CDN-Cache-Control`), `--heuristic` (10% heuristic freshness). It is
//! also the server the conformance suite (`scripts/conformance.sh`) tests. For a
//! production proxy (timeouts, limits, admin API, metrics) use the `tiered`
//! gateway binary.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tiered_http::{cache_builder, Body, BoxError, CacheLayer};
use tower::{Service, ServiceBuilder, ServiceExt};

struct Args {
    listen: SocketAddr,
    origin: Uri,
    redis: Option<String>,
    targeted: Vec<String>,
    heuristic: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = "127.0.0.1:8001".to_owned();
    let mut origin = "http://127.0.0.1:8000".to_owned();
    let (mut redis, mut targeted, mut heuristic) = (None, Vec::new(), false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--origin" => origin = value()?,
            "--redis" => redis = Some(value()?),
            "--targeted" => targeted.push(value()?),
            "--heuristic" => heuristic = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen
            .parse()
            .map_err(|e| format!("--listen {listen}: {e}"))?,
        origin: origin
            .parse()
            .map_err(|e| format!("--origin {origin}: {e}"))?,
        redis,
        targeted,
        heuristic,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let mut cache = cache_builder("http-proxy").l1_max_bytes(256 << 20);
    if let Some(url) = &args.redis {
        cache = cache.redis(url.clone());
    }
    let mut layer = CacheLayer::builder(cache.build()?);
    for field in &args.targeted {
        layer = layer.targeted_field(field);
    }
    if args.heuristic {
        layer = layer.heuristic_freshness(0.1, Duration::from_secs(86400));
    }
    let layer = layer.build()?;

    // The origin side: rewrite the URI to the origin, keep the Host header.
    // Idle upstream connections are dropped before the origin drops them:
    // Node's default keep-alive timeout is 5 s, and a request sent on a
    // connection the origin is closing at that moment fails (a 502 here).
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build_http();
    let origin = args.origin.clone();
    let upstream = tower::service_fn(move |mut req: Request<Body>| {
        let client = client.clone();
        let origin = origin.clone();
        async move {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri = format!(
                "{}://{}{}",
                origin.scheme_str().unwrap_or("http"),
                origin.authority().map_or("", |a| a.as_str()),
                path
            );
            *req.uri_mut() = uri.parse()?;
            let res = client.request(req).await?;
            Ok::<Response<Incoming>, BoxError>(res)
        }
    });
    let service = ServiceBuilder::new().layer(layer).service(upstream);

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "proxy listening on http://{} → {}",
        args.listen, args.origin
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut service = service.clone();
                async move {
                    let req = req.map(tiered_http::boxed_body);
                    let res = match service.ready().await {
                        Ok(ready) => ready.call(req).await,
                        Err(e) => Err(e),
                    };
                    Ok::<_, std::convert::Infallible>(res.unwrap_or_else(|e| {
                        eprintln!("origin error: {e}");
                        let mut res = Response::new(tiered_http::empty_body());
                        *res.status_mut() = http::StatusCode::BAD_GATEWAY;
                        res
                    }))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper_service)
                .await;
        });
    }
}
