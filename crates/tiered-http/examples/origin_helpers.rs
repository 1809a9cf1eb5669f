//! An origin service that sends good caching headers, behind a `CacheLayer`.
//!
//! ```text
//! cargo run -p tiered-http --example origin_helpers
//! ```
//!
//! The origin is a plain tower service: `/products` is public for 60 s with a
//! stale-while-revalidate window and tagged `products`; `/account` is private and
//! wrapped in `NoStoreLayer`. `ETagLayer` hashes bodies and answers
//! `If-None-Match` with 304s. The example sends requests through the cache and
//! prints what each one got, then purges the tag.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tiered_http::origin::{CacheControl, CacheControlLayer, ETagLayer, NoStoreLayer};
use tiered_http::{cache_builder, Body, BoxError, CacheLayer, PurgeMode};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let origin_hits = Arc::new(AtomicUsize::new(0));
    let hits = Arc::clone(&origin_hits);

    // The origin: routes by path, each with its own caching policy.
    let products = ServiceBuilder::new()
        .layer(CacheControlLayer::new(
            CacheControl::new()
                .public()
                .max_age(Duration::from_secs(60))
                .stale_while_revalidate(Duration::from_secs(30)),
        ))
        .layer(ETagLayer::strong())
        .service_fn(move |_req: Request<Body>| {
            hits.fetch_add(1, Ordering::Relaxed);
            async {
                let mut res = Response::new(Full::new(Bytes::from_static(
                    br#"[{"id":1,"name":"shoe"}]"#,
                )));
                res.headers_mut()
                    .insert("surrogate-key", "products".parse()?);
                Ok::<_, BoxError>(res)
            }
        });
    let account =
        ServiceBuilder::new()
            .layer(NoStoreLayer::new())
            .service_fn(|_req: Request<Body>| async {
                Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(
                    b"{\"user\":\"ada\"}",
                ))))
            });
    let origin = tower::service_fn(move |req: Request<Body>| {
        let (mut products, mut account) = (products.clone(), account.clone());
        async move {
            let res: Response<Body> = if req.uri().path().starts_with("/account") {
                account
                    .ready()
                    .await?
                    .call(req)
                    .await?
                    .map(tiered_http::boxed_body)
            } else {
                products.ready().await?.call(req).await?
            };
            Ok::<_, BoxError>(res)
        }
    });

    let layer = CacheLayer::builder(cache_builder("origin-helpers").build()?).build()?;
    let cached = ServiceBuilder::new().layer(layer.clone()).service(origin);

    let send = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let svc = cached.clone();
        async move {
            let mut req = Request::get(path).header("host", "shop.example");
            for (k, v) in &headers {
                req = req.header(*k, v.as_str());
            }
            let res = svc.oneshot(req.body(tiered_http::empty_body())?).await?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            println!(
                "GET {path:<10} {:?} -> {} {:<7} etag={:<26} cache-control={:?} body={} bytes",
                headers,
                parts.status.as_u16(),
                parts
                    .headers
                    .get("x-cache")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                parts
                    .headers
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                parts
                    .headers
                    .get("cache-control")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                body.len()
            );
            Ok::<_, BoxError>(parts.headers.get("etag").cloned())
        }
    };

    let etag = send("/products", vec![]).await?; // MISS: fetched and stored
    send("/products", vec![]).await?; // HIT
    let etag = etag
        .ok_or("the ETag layer set no ETag")?
        .to_str()?
        .to_owned();
    send("/products", vec![("if-none-match", etag)]).await?; // 304 from the cache
    send("/account", vec![]).await?; // no-store: never stored
    send("/account", vec![]).await?;
    layer.purge_tag("products", PurgeMode::Hard).await?;
    send("/products", vec![]).await?; // MISS again after the purge
    println!(
        "origin served /products {} times for 4 requests; layer stats: {:?}",
        origin_hits.load(Ordering::Relaxed),
        layer.stats()
    );
    Ok(())
}
