//! Purges (URL, tag, prefix; hard and soft), on one instance and across
//! instances sharing Redis; per-route rules; body limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{harness, response, Origin};
use tiered::ManualClock;
use tiered_http::{cache_builder, CacheLayer, PurgeError, PurgeMode, Rule};
use tiered_testkit::redis::RedisServer;

fn tagged_origin() -> Origin {
    Origin::new(|seen, n| {
        let tags = if seen.uri.contains("shoes") {
            "products shoes"
        } else {
            "products"
        };
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"e\""),
                ("surrogate-key", tags),
                ("cache-tag", "all,v1"),
            ],
            &format!("{} #{n}", seen.uri),
        ))
    })
}

#[tokio::test]
async fn tags_are_stripped_and_purge_by_tag_reaches_every_tagged_entry() {
    let h = harness(tagged_origin(), |b| b);
    let first = h.get("/shoes/1").await;
    assert!(first.header("surrogate-key").is_none() && first.header("cache-tag").is_none());
    h.get("/hats/1").await;
    assert_eq!(h.get("/shoes/1").await.x_cache(), "HIT");
    h.layer.purge_tag("shoes", PurgeMode::Hard).await.unwrap();
    assert_eq!(h.get("/shoes/1").await.x_cache(), "MISS");
    assert_eq!(h.get("/hats/1").await.x_cache(), "HIT");
    h.layer.purge_tag("v1", PurgeMode::Hard).await.unwrap();
    assert_eq!(
        h.get("/hats/1").await.x_cache(),
        "MISS",
        "Cache-Tag tags count too"
    );
    let exposed = harness(tagged_origin(), |b| b.expose_tags(true));
    assert_eq!(
        exposed.get("/x").await.header("surrogate-key").unwrap(),
        "products"
    );
}

#[tokio::test]
async fn purge_by_url_removes_every_variant_and_prefix_purges_a_subtree() {
    let origin = Origin::new(|seen, _| {
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ],
            &seen.uri,
        ))
    });
    let h = harness(origin, |b| b);
    for lang in ["en", "fr"] {
        h.send("GET", "/docs/a?x=1", &[("accept-language", lang)])
            .await;
    }
    h.get("/docs/b").await;
    h.get("/blog/c").await;
    h.layer
        .purge_url("http://EXAMPLE.com:80/docs/a?x=1", PurgeMode::Hard)
        .await
        .unwrap();
    for lang in ["en", "fr"] {
        assert_eq!(
            h.send("GET", "/docs/a?x=1", &[("accept-language", lang)])
                .await
                .x_cache(),
            "MISS"
        );
    }
    assert_eq!(h.get("/docs/b").await.x_cache(), "HIT");
    h.layer
        .purge_prefix("http://example.com/docs/", PurgeMode::Hard)
        .await
        .unwrap();
    assert_eq!(h.get("/docs/b").await.x_cache(), "MISS");
    assert_eq!(h.get("/blog/c").await.x_cache(), "HIT");
    assert!(matches!(
        h.layer.purge_url("/relative", PurgeMode::Hard).await,
        Err(PurgeError::BadUrl(_))
    ));
    assert!(matches!(
        h.layer
            .purge_prefix("http://example.com/do", PurgeMode::Soft)
            .await,
        Err(PurgeError::SoftPrefix(_))
    ));
}

#[tokio::test]
async fn a_question_mark_before_the_path_does_not_break_the_soft_purge_check() {
    // A '?' in the tenant (or in a Host header hyper let through) comes
    // before the path in the cache key; the soft-purge check, which walks
    // the path's prefixes, must still find the path.
    let h = harness(tagged_origin(), |b| b.tenant_header("x-tenant"));
    let tenant = [("x-tenant", "acme?")];
    h.send("GET", "/docs/a", &tenant).await;
    assert_eq!(h.send("GET", "/docs/a", &tenant).await.x_cache(), "HIT");
    h.advance(1);
    h.layer
        .purge_tag("unrelated", PurgeMode::Soft)
        .await
        .unwrap();
    assert_eq!(h.send("GET", "/docs/a", &tenant).await.x_cache(), "HIT");
    // A soft purge of the path's prefix, for that tenant, is found.
    h.advance(1);
    h.layer
        .purge_prefix_for_tenant("acme?", "http://example.com/docs/", PurgeMode::Soft)
        .await
        .unwrap();
    let before = h.origin.count();
    h.send("GET", "/docs/a", &tenant).await;
    assert_eq!(h.origin.count(), before + 1);
}

#[tokio::test]
async fn a_soft_purge_revalidates_instead_of_dropping() {
    let origin = Origin::new(|seen, n| {
        if seen.headers.contains_key("if-none-match") {
            return Ok(response(304, &[("cache-control", "max-age=600")], ""));
        }
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"e\""),
                ("surrogate-key", "t1"),
            ],
            &format!("v{n}"),
        ))
    });
    let h = harness(origin, |b| b);
    h.get("/a/1").await;
    h.get("/a/2").await;
    h.advance(1);
    h.layer.purge_tag("t1", PurgeMode::Soft).await.unwrap();
    // (A revalidation sent within the purge's millisecond counts as sent
    // before it, and would be revalidated once more.)
    h.advance(1);
    let revalidated = h.get("/a/1").await;
    assert!(
        h.origin.last().headers.contains_key("if-none-match"),
        "a conditional request, not a refetch"
    );
    assert_eq!(
        &revalidated.body[..],
        b"v1",
        "the stored body survives a 304"
    );
    h.advance(1);
    assert_eq!(
        h.get("/a/1").await.x_cache(),
        "HIT",
        "fresh again after revalidating"
    );
    // It kept its tags (the 304 did not repeat them): a purge by tag still
    // reaches it.
    h.layer.purge_tag("t1", PurgeMode::Hard).await.unwrap();
    assert_eq!(h.get("/a/1").await.x_cache(), "MISS");
    // URL and prefix soft purges work the same way.
    h.layer
        .purge_url("http://example.com/a/2", PurgeMode::Soft)
        .await
        .unwrap();
    let before = h.origin.count();
    h.get("/a/2").await;
    assert_eq!(h.origin.count(), before + 1);
    h.advance(1);
    h.layer
        .purge_prefix("http://example.com/a/", PurgeMode::Soft)
        .await
        .unwrap();
    let before = h.origin.count();
    h.get("/a/1").await;
    assert_eq!(h.origin.count(), before + 1);
}

#[tokio::test]
async fn soft_purged_entries_with_swr_are_served_while_revalidating() {
    let origin = Origin::new(|_, n| {
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=600, stale-while-revalidate=600"),
                ("surrogate-key", "t"),
            ],
            &format!("v{n}"),
        ))
    });
    let h = harness(origin, |b| b);
    h.get("/s").await;
    h.advance(1);
    h.layer.purge_tag("t", PurgeMode::Soft).await.unwrap();
    let stale = h.get("/s").await;
    assert_eq!(
        (stale.x_cache().as_str(), &stale.body[..]),
        ("STALE", &b"v1"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_another_instance_through_redis() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let instance = |origin: Origin| {
        let cache = cache_builder("http-shared")
            .clock(clock.clone())
            .redis(redis.url())
            // A first call (which connects) on a loaded machine must not
            // time out and turn into a miss.
            .l2_timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap();
        let layer = CacheLayer::builder(cache)
            .clock(clock.clone())
            .build()
            .unwrap();
        let svc = tower::Layer::layer(&layer, origin.clone());
        common::Harness {
            clock: clock.clone(),
            layer,
            svc,
            origin,
        }
    };
    let (a, b) = (instance(tagged_origin()), instance(tagged_origin()));
    a.get("/shoes/9").await;
    let from_l2 = b.get("/shoes/9").await;
    assert_eq!(from_l2.x_cache(), "HIT", "b reads a's response from L2");
    assert_eq!(b.origin.count(), 0);
    a.layer.purge_tag("shoes", PurgeMode::Hard).await.unwrap();
    common::until("b sees the purge", || async {
        b.get("/shoes/9").await.x_cache() == "MISS"
    })
    .await;
    // Soft purge on b; a revalidates.
    b.get("/hats/9").await;
    assert_eq!(a.get("/hats/9").await.x_cache(), "HIT");
    clock.advance(Duration::from_secs(1));
    b.layer
        .purge_tag("products", PurgeMode::Soft)
        .await
        .unwrap();
    let before = a.origin.count();
    common::until("a revalidates", || async {
        a.get("/hats/9").await;
        a.origin.count() > before
    })
    .await;
    assert!(a.origin.last().headers.contains_key("if-none-match"));
}

#[tokio::test]
async fn rules_bypass_override_ttls_and_ignore_tracking_params() {
    let origin =
        Origin::new(|seen, _| Ok(response(200, &[("cache-control", "max-age=10")], &seen.uri)));
    let h = harness(origin, |b| {
        b.rule(Rule::path_prefix("/admin/").bypass())
            .rule(Rule::path_prefix("/static/").ttl(Duration::from_secs(3600)))
            .rule(
                Rule::path_prefix("/search")
                    .ignore_query_params(["utm_source"])
                    .sort_query(),
            )
    });
    h.get("/admin/x").await;
    let admin = h.get("/admin/x").await;
    assert_eq!(admin.x_cache(), "BYPASS");
    assert!(admin.header("cache-status").unwrap().contains("fwd=bypass"));
    h.get("/static/app.js").await;
    h.advance(100);
    assert_eq!(
        h.get("/static/app.js").await.x_cache(),
        "HIT",
        "the rule's TTL"
    );
    h.get("/search?q=a&b=2&utm_source=mail").await;
    assert_eq!(h.get("/search?b=2&q=a").await.x_cache(), "HIT");
    assert_eq!(h.get("/search?q=b").await.x_cache(), "MISS");
}

#[tokio::test]
async fn large_and_streamed_bodies_pass_through_unstored() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let big = "x".repeat(10_000);
    let origin =
        Origin::new(move |_, _| Ok(response(200, &[("cache-control", "max-age=60")], &big)));
    let h = harness(origin, |b| b.max_body_bytes(1000));
    let got = h.get("/big").await;
    assert_eq!(got.body.len(), 10_000);
    assert!(got
        .header("cache-status")
        .unwrap()
        .contains("detail=too-large"));
    assert_eq!(h.get("/big").await.x_cache(), "MISS");

    // A streamed body of unknown length, larger than the limit, arrives intact.
    let cache = cache_builder("stream").build().unwrap();
    let layer = CacheLayer::builder(cache)
        .max_body_bytes(1000)
        .build()
        .unwrap();
    let chunks: Vec<Bytes> = (0..100)
        .map(|i| Bytes::from(format!("{i:04}|").repeat(10)))
        .collect();
    let streaming = tower::service_fn(move |_req: http::Request<tiered_http::Body>| {
        let frames: Vec<Result<_, std::convert::Infallible>> = chunks
            .iter()
            .cloned()
            .map(|c| Ok(http_body::Frame::data(c)))
            .collect();
        async move {
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            let mut res = http::Response::new(body);
            res.headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            Ok::<_, tiered_http::BoxError>(res)
        }
    });
    let svc = tower::Layer::layer(&layer, streaming);
    let req = http::Request::get("/s")
        .header("host", "h")
        .body(tiered_http::empty_body())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let expected: String = (0..100).map(|i| format!("{i:04}|").repeat(10)).collect();
    assert_eq!(body, expected.as_bytes());
}

#[tokio::test]
async fn cdn_cache_control_is_honoured_when_targeted() {
    let origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", "max-age=600"),
            ],
            "x",
        ))
    });
    let h = harness(origin.clone(), |b| b.targeted_field("CDN-Cache-Control"));
    h.get("/c").await;
    h.advance(60);
    assert_eq!(h.get("/c").await.x_cache(), "HIT");
    let untargeted = harness(origin, |b| b);
    untargeted.get("/c").await;
    untargeted.advance(60);
    assert_eq!(untargeted.get("/c").await.x_cache(), "MISS");
}
