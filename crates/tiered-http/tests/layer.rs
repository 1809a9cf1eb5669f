//! The cache layer against a scripted origin, with a manual clock.
#![allow(clippy::unwrap_used)]

mod common;

use common::{harness, response, Origin};

#[tokio::test]
async fn surrogate_control_targeted_at_us_overrides_no_store() {
    let origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=10000;tiered"),
            ],
            "x",
        ))
    });
    let h = harness(origin, |b| b.targeted_field("Surrogate-Control"));
    let first = h.get("/a").await;
    assert_eq!(first.x_cache(), "MISS", "{:?}", first.headers);
    let second = h.get("/a").await;
    assert_eq!(second.x_cache(), "HIT", "{:?}", second.headers);
    assert_eq!(h.origin.count(), 1);
}

const DATE_LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

#[tokio::test]
async fn fresh_hits_age_and_report_status() {
    let origin = Origin::new(|_, n| {
        Ok(response(
            200,
            &[("cache-control", "max-age=60")],
            &format!("v{n}"),
        ))
    });
    let h = harness(origin, |b| b);
    let miss = h.get("/a").await;
    assert_eq!(
        (miss.x_cache().as_str(), &miss.body[..]),
        ("MISS", &b"v1"[..])
    );
    assert_eq!(
        miss.header("cache-status").unwrap(),
        "tiered; fwd=uri-miss; fwd-status=200; stored"
    );
    h.advance(10);
    let hit = h.get("/a").await;
    assert_eq!((hit.x_cache().as_str(), &hit.body[..]), ("HIT", &b"v1"[..]));
    assert_eq!(hit.header("age").unwrap(), "10");
    assert_eq!(hit.header("cache-status").unwrap(), "tiered; hit; ttl=50");
    h.advance(51);
    let again = h.get("/a").await;
    assert_eq!(
        (again.x_cache().as_str(), &again.body[..]),
        ("MISS", &b"v2"[..])
    );
    assert_eq!(h.origin.count(), 2);
    assert_eq!(h.layer.stats().hits, 1);
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_a_304_updates_them() {
    let origin = Origin::new(|seen, n| {
        if n == 1 {
            return Ok(response(
                200,
                &[
                    ("cache-control", "max-age=5"),
                    ("etag", "\"e1\""),
                    ("x-v", "1"),
                ],
                "body",
            ));
        }
        assert_eq!(seen.headers["if-none-match"], "\"e1\"");
        Ok(response(
            304,
            &[
                ("cache-control", "max-age=100"),
                ("x-v", "2"),
                ("etag", "\"other\""),
            ],
            "",
        ))
    });
    let h = harness(origin, |b| b);
    h.get("/r").await;
    h.advance(6);
    let revalidated = h.get("/r").await;
    assert_eq!(&revalidated.body[..], b"body");
    assert_eq!(
        revalidated.header("x-v").unwrap(),
        "2",
        "headers from the 304"
    );
    assert_eq!(
        revalidated.header("etag").unwrap(),
        "\"e1\"",
        "the stored ETag describes the stored body"
    );
    assert!(revalidated
        .header("cache-status")
        .unwrap()
        .contains("fwd-status=304"));
    h.advance(50);
    let hit = h.get("/r").await;
    assert_eq!(hit.x_cache(), "HIT", "fresh for the 304's max-age");
    assert_eq!(h.origin.count(), 2);
    assert_eq!(h.layer.stats().revalidated, 1);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let origin = Origin::new(|_, n| {
        Ok(response(
            200,
            &[("cache-control", "max-age=1, stale-while-revalidate=60")],
            &format!("v{n}"),
        ))
    });
    let h = harness(origin, |b| b);
    h.get("/s").await;
    h.advance(5);
    let stale = h.get("/s").await;
    assert_eq!(
        (stale.x_cache().as_str(), &stale.body[..]),
        ("STALE", &b"v1"[..])
    );
    // The background revalidation runs on the runtime; wait for it.
    for _ in 0..200 {
        if h.origin.count() == 2 && h.get("/s").await.body == "v2" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let fresh = h.get("/s").await;
    assert_eq!(
        (fresh.x_cache().as_str(), &fresh.body[..]),
        ("HIT", &b"v2"[..])
    );
    assert_eq!(h.origin.count(), 2, "exactly one background revalidation");
}

#[tokio::test]
async fn stale_if_error_serves_stale_within_its_window_only() {
    let origin = Origin::new(|_, n| match n {
        1 => Ok(response(
            200,
            &[("cache-control", "max-age=1, stale-if-error=30")],
            "good",
        )),
        2 | 3 => Ok(response(503, &[], "down")),
        _ => Err("connection refused".into()),
    });
    let h = harness(origin, |b| b);
    h.get("/e").await;
    h.advance(10);
    let stale = h.get("/e").await;
    assert_eq!(
        (stale.status, stale.x_cache().as_str(), &stale.body[..]),
        (200, "STALE", &b"good"[..])
    );
    assert!(stale
        .header("cache-status")
        .unwrap()
        .contains("detail=stale-if-error"));
    h.advance(30);
    let error = h.get("/e").await;
    assert_eq!(error.status, 503, "past the window the error goes through");
    assert_eq!(h.layer.stats().stale, 1);
}

#[tokio::test]
async fn must_revalidate_forbids_serving_stale_on_error() {
    let origin = Origin::new(|_, n| match n {
        1 => Ok(response(
            200,
            &[(
                "cache-control",
                "max-age=1, must-revalidate, stale-if-error=60",
            )],
            "good",
        )),
        _ => Ok(response(502, &[], "bad gateway")),
    });
    let h = harness(origin, |b| {
        b.default_stale_if_error(std::time::Duration::from_secs(60))
    });
    h.get("/m").await;
    h.advance(5);
    assert_eq!(h.get("/m").await.status, 502);
}

#[tokio::test]
async fn client_conditionals_are_answered_from_the_cache() {
    let origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "W/\"v1\""),
                ("last-modified", DATE_LM),
            ],
            "body",
        ))
    });
    let h = harness(origin, |b| b);
    h.get("/c").await;
    let inm = h.send("GET", "/c", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((inm.status, inm.body.len()), (304, 0));
    assert_eq!(inm.header("etag").unwrap(), "W/\"v1\"");
    let ims = h.send("GET", "/c", &[("if-modified-since", DATE_LM)]).await;
    assert_eq!(ims.status, 304);
    let other = h.send("GET", "/c", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((other.status, &other.body[..]), (200, &b"body"[..]));
    assert_eq!(h.origin.count(), 1);
    // On a miss the client's own validators are not sent: the cache needs the body.
    h.send("GET", "/c2", &[("if-none-match", "\"v1\"")]).await;
    assert!(!h.origin.last().headers.contains_key("if-none-match"));
}

#[tokio::test]
async fn vary_variants_are_separate_and_accept_encoding_is_normalized() {
    let origin = Origin::new(|seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language, Accept-Encoding"),
            ],
            &lang,
        ))
    });
    let h = harness(origin, |b| b);
    let en = h
        .send(
            "GET",
            "/v",
            &[("accept-language", "en"), ("accept-encoding", "gzip, br")],
        )
        .await;
    let fr = h
        .send(
            "GET",
            "/v",
            &[("accept-language", "fr"), ("accept-encoding", "gzip, br")],
        )
        .await;
    assert_eq!((&en.body[..], &fr.body[..]), (&b"en"[..], &b"fr"[..]));
    let en_again = h
        .send(
            "GET",
            "/v",
            &[("accept-language", "en"), ("accept-encoding", "br,GZIP")],
        )
        .await;
    assert_eq!(
        (en_again.x_cache().as_str(), &en_again.body[..]),
        ("HIT", &b"en"[..])
    );
    let bare = h.get("/v").await;
    assert_eq!(
        (bare.x_cache().as_str(), &bare.body[..]),
        ("MISS", &b"none"[..])
    );
    assert!(bare
        .header("cache-status")
        .unwrap()
        .contains("fwd=vary-miss"));
    assert_eq!(h.origin.count(), 3);
}

#[tokio::test]
async fn vary_star_and_no_store_and_private_are_never_stored() {
    for cc in [
        ("vary", "*"),
        ("cache-control", "no-store"),
        ("cache-control", "private, max-age=60"),
    ] {
        let origin = Origin::new(move |_, _| {
            let mut headers = vec![cc];
            if cc.0 == "vary" {
                headers.push(("cache-control", "max-age=60"));
            }
            Ok(response(200, &headers, "x"))
        });
        let h = harness(origin, |b| b);
        h.get("/p").await;
        assert_eq!(h.get("/p").await.x_cache(), "MISS", "{cc:?}");
        assert_eq!(h.origin.count(), 2);
    }
}

#[tokio::test]
async fn head_is_served_from_the_get_entry_and_a_head_miss_fills_it() {
    let origin = Origin::new(|_, _| Ok(response(200, &[("cache-control", "max-age=60")], "hello")));
    let h = harness(origin, |b| b);
    let head = h.send("HEAD", "/h", &[]).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(h.origin.last().method, "GET", "the miss fetched the GET");
    assert_eq!(head.header("content-length").unwrap(), "5");
    let get = h.get("/h").await;
    assert_eq!(
        (get.x_cache().as_str(), &get.body[..]),
        ("HIT", &b"hello"[..])
    );
    assert_eq!(h.send("HEAD", "/h", &[]).await.x_cache(), "HIT");
    assert_eq!(h.origin.count(), 1);
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target_and_same_host_locations() {
    let origin = Origin::new(|seen, _| {
        if seen.method == "POST" {
            return Ok(response(
                201,
                &[
                    ("location", "/items/2"),
                    ("content-location", "http://elsewhere.test/items/3"),
                ],
                "",
            ));
        }
        Ok(response(
            200,
            &[("cache-control", "max-age=600")],
            &seen.uri,
        ))
    });
    let h = harness(origin, |b| b);
    for path in ["/items", "/items/2", "/items/3"] {
        h.get(path).await;
        assert_eq!(h.get(path).await.x_cache(), "HIT");
    }
    let post = h.send("POST", "/items", &[]).await;
    assert_eq!(post.x_cache(), "BYPASS");
    assert_eq!(h.get("/items").await.x_cache(), "MISS");
    assert_eq!(
        h.get("/items/2").await.x_cache(),
        "MISS",
        "Location on the same host"
    );
    assert_eq!(
        h.get("/items/3").await.x_cache(),
        "HIT",
        "another host's URI is left alone"
    );
    // A failed unsafe request invalidates nothing.
    let origin = Origin::new(|seen, _| {
        Ok(if seen.method == "DELETE" {
            response(500, &[], "")
        } else {
            response(200, &[("cache-control", "max-age=600")], "x")
        })
    });
    let h = harness(origin, |b| b);
    h.get("/d").await;
    h.send("DELETE", "/d", &[]).await;
    assert_eq!(h.get("/d").await.x_cache(), "HIT");
}

#[tokio::test]
async fn only_if_cached_answers_504_on_a_miss() {
    let origin = Origin::new(|_, _| Ok(response(200, &[("cache-control", "max-age=60")], "x")));
    let h = harness(origin, |b| b);
    let got = h
        .send("GET", "/o", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(got.status, 504);
    assert_eq!(h.origin.count(), 0);
    h.get("/o").await;
    assert_eq!(
        h.send("GET", "/o", &[("cache-control", "only-if-cached")])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn ranges_are_served_from_a_fresh_stored_response() {
    let origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"r\"")],
            "0123456789",
        ))
    });
    let h = harness(origin, |b| b);
    h.get("/range").await;
    let part = h.send("GET", "/range", &[("range", "bytes=2-4")]).await;
    assert_eq!((part.status, &part.body[..]), (206, &b"234"[..]));
    assert_eq!(part.header("content-range").unwrap(), "bytes 2-4/10");
    let suffix = h.send("GET", "/range", &[("range", "bytes=-3")]).await;
    assert_eq!(&suffix.body[..], b"789");
    assert_eq!(
        h.send("GET", "/range", &[("range", "bytes=20-")])
            .await
            .status,
        416
    );
    let stale_validator = h
        .send(
            "GET",
            "/range",
            &[("range", "bytes=0-1"), ("if-range", "\"old\"")],
        )
        .await;
    assert_eq!(
        (stale_validator.status, stale_validator.body.len()),
        (200, 10)
    );
    assert_eq!(
        h.send("GET", "/range", &[("range", "bytes=0-1,4-5")])
            .await
            .status,
        200
    );
    assert_eq!(h.origin.count(), 1);
}

#[tokio::test]
async fn heuristic_freshness_is_off_by_default_and_configurable() {
    let origin = || {
        Origin::new(|seen, _| {
            if seen.headers.contains_key("if-modified-since") {
                return Ok(response(304, &[], ""));
            }
            // Last modified 10 days before the (manual) clock's start, 2024-01-01.
            Ok(response(
                200,
                &[
                    ("last-modified", "Fri, 22 Dec 2023 00:00:00 GMT"),
                    ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ],
                "doc",
            ))
        })
    };
    let off = harness(origin(), |b| b);
    off.get("/h").await;
    off.get("/h").await;
    assert_eq!(
        off.origin.count(),
        2,
        "no heuristic: kept for revalidation only"
    );
    assert!(off.origin.last().headers.contains_key("if-modified-since"));
    let on = harness(origin(), |b| {
        b.heuristic_freshness(0.1, std::time::Duration::from_secs(86400 * 7))
    });
    on.get("/h").await;
    on.advance(86400 - 60);
    assert_eq!(
        on.get("/h").await.x_cache(),
        "HIT",
        "fresh for 10% of 10 days"
    );
    on.advance(120);
    on.get("/h").await;
    assert_eq!(on.origin.count(), 2);
}

#[tokio::test]
async fn an_origin_timeout_counts_as_an_error_for_stale_if_error() {
    let mut origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[("cache-control", "max-age=1, stale-if-error=60")],
            "v",
        ))
    });
    // The first request is answered at once, later ones too late.
    origin.delay = std::time::Duration::from_millis(500);
    origin.slow_from = 2;
    let h = harness(origin, |b| {
        b.origin_timeout(std::time::Duration::from_millis(50))
    });
    h.get("/t").await;
    h.advance(5);
    let stale = h.get("/t").await;
    assert_eq!((stale.status, stale.x_cache().as_str()), (200, "STALE"));
    assert!(stale
        .header("cache-status")
        .unwrap()
        .contains("detail=stale-if-error"));
    assert_eq!(h.layer.stats().origin_errors, 1);
}
