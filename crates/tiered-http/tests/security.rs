//! Poisoning, leaks and deception attempts: each must fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{harness, response, Origin};
use tiered_http::Rule;

#[tokio::test]
async fn unkeyed_forwarding_headers_never_reach_the_origin() {
    // An origin that builds links from X-Forwarded-Host, as many frameworks do.
    let origin = Origin::new(|seen, _| {
        let host = seen
            .headers
            .get("x-forwarded-host")
            .map_or("example.com", |v| v.to_str().unwrap())
            .to_owned();
        Ok(response(
            200,
            &[("cache-control", "max-age=600")],
            &format!("<script src=//{host}/app.js>"),
        ))
    });
    let h = harness(origin, |b| b);
    let attack = h
        .send(
            "GET",
            "/home",
            &[
                ("x-forwarded-host", "evil.test"),
                ("x-original-url", "/admin"),
            ],
        )
        .await;
    assert!(!String::from_utf8_lossy(&attack.body).contains("evil"));
    assert!(!h.origin.last().headers.contains_key("x-forwarded-host"));
    assert!(!h.origin.last().headers.contains_key("x-original-url"));
    let victim = h.get("/home").await;
    assert_eq!(victim.x_cache(), "HIT");
    assert!(!String::from_utf8_lossy(&victim.body).contains("evil"));
}

#[tokio::test]
async fn method_override_headers_cannot_store_a_post_under_a_get_key() {
    let origin = Origin::new(|seen, _| {
        let body = if seen.headers.contains_key("x-http-method-override") {
            "deleted!"
        } else {
            "page"
        };
        Ok(response(200, &[("cache-control", "max-age=600")], body))
    });
    let h = harness(origin, |b| b);
    h.send("GET", "/thing", &[("x-http-method-override", "DELETE")])
        .await;
    assert_eq!(&h.get("/thing").await.body[..], b"page");
}

#[tokio::test]
async fn vary_on_a_header_keeps_an_attackers_variant_to_the_attacker() {
    let origin = Origin::new(|seen, _| {
        let theme = seen
            .headers
            .get("x-theme")
            .map_or("default", |v| v.to_str().unwrap())
            .to_owned();
        Ok(response(
            200,
            &[("cache-control", "max-age=600"), ("vary", "X-Theme")],
            &theme,
        ))
    });
    let h = harness(origin, |b| b);
    h.send("GET", "/", &[("x-theme", "<script>alert(1)</script>")])
        .await;
    let victim = h.get("/").await;
    assert_eq!(&victim.body[..], b"default");
    // Case and spacing tricks in Vary itself do not merge variants.
    let origin = Origin::new(|seen, _| {
        let v = seen
            .headers
            .get("x-a")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Ok(response(
            200,
            &[("cache-control", "max-age=600"), ("vary", " x-A ,X-a")],
            &v,
        ))
    });
    let h = harness(origin, |b| b);
    h.send("GET", "/", &[("x-a", "evil")]).await;
    assert_eq!(&h.get("/").await.body[..], b"none");
}

#[tokio::test]
async fn authorized_responses_are_not_shared_unless_the_origin_says_so() {
    let origin = Origin::new(|seen, _| {
        let user = seen
            .headers
            .get("authorization")
            .map_or("anonymous", |v| v.to_str().unwrap())
            .to_owned();
        Ok(response(200, &[("cache-control", "max-age=600")], &user))
    });
    let h = harness(origin, |b| b);
    h.send("GET", "/me", &[("authorization", "Bearer alice")])
        .await;
    let anonymous = h.get("/me").await;
    assert_eq!(&anonymous.body[..], b"anonymous");
    // With `public`, sharing is the origin's explicit choice (RFC 9111 §3.5).
    let origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[("cache-control", "public, max-age=600")],
            "shared",
        ))
    });
    let h = harness(origin, |b| b);
    h.send("GET", "/doc", &[("authorization", "Bearer alice")])
        .await;
    assert_eq!(h.get("/doc").await.x_cache(), "HIT");
}

#[tokio::test]
async fn set_cookie_responses_are_not_stored_unless_configured() {
    let origin = Origin::new(|_, n| {
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("set-cookie", &*format!("session=user{n}")),
            ],
            "x",
        ))
    });
    let h = harness(origin.clone(), |b| b);
    h.get("/c").await;
    let second = h.get("/c").await;
    assert_eq!(
        second.header("set-cookie").unwrap(),
        "session=user2",
        "nobody gets another's cookie"
    );
    let h = harness(
        Origin::new(|_, _| {
            Ok(response(
                200,
                &[("cache-control", "max-age=600"), ("set-cookie", "lang=en")],
                "x",
            ))
        }),
        |b| b.store_set_cookie(true),
    );
    h.get("/c").await;
    assert_eq!(h.get("/c").await.x_cache(), "HIT");
}

#[tokio::test]
async fn cache_deception_on_a_private_response_with_a_static_looking_path_fails() {
    let origin = Origin::new(|seen, _| {
        let user = seen
            .headers
            .get("cookie")
            .map_or("nobody", |v| v.to_str().unwrap())
            .to_owned();
        Ok(response(
            200,
            &[
                ("cache-control", "private, max-age=600"),
                ("content-type", "text/html"),
            ],
            &format!("settings of {user}"),
        ))
    });
    // Even a rule forcing a long TTL on "static" paths does not make it shareable.
    let h = harness(origin, |b| {
        b.rule(Rule::path_prefix("/account/").ttl(Duration::from_secs(86400)))
    });
    h.send("GET", "/account/settings.css", &[("cookie", "victim")])
        .await;
    let attacker = h.get("/account/settings.css").await;
    assert_eq!(&attacker.body[..], b"settings of nobody");
}

/// Four users ask for a cookie-dependent page at once. A response that is
/// `private`, or stored to be revalidated on every use (`no-cache`, or no
/// lifetime at all: a page with only an ETag), is never handed to coalesced
/// waiters: each goes to the origin with its own cookie.
#[tokio::test]
async fn coalesced_waiters_never_receive_a_private_response_or_one_that_needs_revalidation() {
    for headers in [
        &[("cache-control", "private")][..],
        &[("cache-control", "no-cache"), ("etag", "\"x\"")][..],
        &[("etag", "\"x\"")][..],
    ] {
        let mut origin = Origin::new(move |seen, _| {
            let user = seen
                .headers
                .get("cookie")
                .map_or("nobody", |v| v.to_str().unwrap())
                .to_owned();
            Ok(response(200, headers, &user))
        });
        origin.delay = Duration::from_millis(50);
        let h = harness(origin, |b| b);
        let users = ["a", "b", "c", "d"];
        let results = futures_util::future::join_all(users.iter().map(|u| {
            let cookie = format!("user={u}");
            let h = &h;
            async move { h.send("GET", "/inbox", &[("cookie", &cookie)]).await }
        }))
        .await;
        for (user, got) in users.iter().zip(&results) {
            assert_eq!(
                String::from_utf8_lossy(&got.body),
                format!("user={user}"),
                "{headers:?}"
            );
        }
        assert_eq!(
            h.origin.count(),
            4,
            "{headers:?}: each waiter went to the origin itself"
        );
    }
}

#[tokio::test]
async fn coalesced_waiters_share_a_public_response() {
    let mut origin =
        Origin::new(|_, _| Ok(response(200, &[("cache-control", "max-age=60")], "shared")));
    origin.delay = Duration::from_millis(50);
    let h = harness(origin, |b| b);
    let results = futures_util::future::join_all((0..8).map(|_| h.get("/hot"))).await;
    assert!(results.iter().all(|r| &r.body[..] == b"shared"));
    assert_eq!(h.origin.count(), 1, "one origin request for eight clients");
    assert_eq!(h.layer.stats().coalesced, 7);
}

#[tokio::test]
async fn tenants_never_share_entries() {
    let origin = Origin::new(|seen, _| {
        let t = seen
            .headers
            .get("x-tenant")
            .map_or("-", |v| v.to_str().unwrap())
            .to_owned();
        Ok(response(200, &[("cache-control", "max-age=60")], &t))
    });
    let h = harness(origin, |b| b.tenant_header("x-tenant"));
    h.send("GET", "/t", &[("x-tenant", "acme")]).await;
    let other = h.send("GET", "/t", &[("x-tenant", "globex")]).await;
    assert_eq!(&other.body[..], b"globex");
    let pipe = h.send("GET", "/t", &[("x-tenant", "acme|")]).await;
    assert_eq!(&pipe.body[..], b"acme|");
}

#[tokio::test]
async fn hostile_header_values_get_answers_not_panics() {
    let origin = Origin::new(|_, n| {
        let weird: &[(&str, &str)] = match n % 5 {
            0 => &[
                (
                    "cache-control",
                    "max-age=99999999999999999999999999, s-maxage=-1",
                ),
                ("age", "18446744073709551616"),
            ],
            1 => &[
                ("cache-control", "max-age=\"\\"),
                ("expires", "0 garbage"),
                ("vary", ",,,"),
            ],
            2 => &[
                (
                    "cache-control",
                    "stale-while-revalidate=4294967296000, max-age=1",
                ),
                ("date", "Mon, 99 Foo 1800 99:99:99 GMT"),
            ],
            3 => &[
                ("surrogate-key", &*"t".repeat(5000)),
                ("cache-tag", ",,, ,"),
                ("cache-control", "max-age=5"),
            ],
            _ => &[
                ("cache-control", "max-age=5"),
                ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("etag", "\""),
            ],
        };
        Ok(response(200, weird, "x"))
    });
    let h = harness(origin, |b| b);
    for i in 0..10 {
        let got = h
            .send(
                "GET",
                &format!("/w/%zz%{i}?a=%ff"),
                &[
                    ("range", "bytes=99999999999999999999-"),
                    ("if-none-match", "W/\"\", *, \""),
                    ("if-modified-since", "yesterday"),
                    (
                        "cache-control",
                        "max-age=-5, max-stale=abc, min-fresh=99999999999999999999",
                    ),
                ],
            )
            .await;
        assert!(
            got.status == 200 || got.status == 304 || got.status == 206 || got.status == 416,
            "{}",
            got.status
        );
    }
}

#[tokio::test]
async fn a_clients_no_store_or_credentials_cannot_purge_the_shared_copy() {
    let origin = Origin::new(|seen, n| {
        let cc = if seen.headers.contains_key("authorization") {
            "private"
        } else {
            "max-age=600"
        };
        Ok(response(200, &[("cache-control", cc)], &format!("v{n}")))
    });
    let h = harness(origin, |b| b);
    h.get("/p").await;
    h.send("GET", "/p", &[("cache-control", "no-cache, no-store")])
        .await;
    h.send(
        "GET",
        "/p",
        &[("cache-control", "no-cache"), ("authorization", "Bearer x")],
    )
    .await;
    let got = h.get("/p").await;
    assert_eq!((got.x_cache().as_str(), &got.body[..]), ("HIT", &b"v1"[..]));
}

#[tokio::test]
async fn ignored_query_parameters_never_reach_the_origin() {
    // An origin reflecting a tracking parameter into the page (XSS via an unkeyed parameter).
    let origin = Origin::new(|seen, _| {
        Ok(response(
            200,
            &[("cache-control", "max-age=600")],
            &seen.uri,
        ))
    });
    let h = harness(origin, |b| {
        b.rule(Rule::path_prefix("/").ignore_query_params(["utm_source"]))
    });
    h.get("/page?id=1&utm_source=%3Cscript%3E").await;
    assert_eq!(h.origin.last().uri, "/page?id=1");
    let victim = h.get("/page?id=1").await;
    assert_eq!(
        (victim.x_cache().as_str(), &victim.body[..]),
        ("HIT", &b"/page?id=1"[..])
    );
}

#[tokio::test]
async fn ambiguous_requests_bypass_the_cache() {
    let origin = Origin::new(|seen, n| {
        Ok(response(
            200,
            &[("cache-control", "max-age=600"), ("etag", "\"e\"")],
            &format!("{} {n}", seen.uri),
        ))
    });
    let h = harness(origin, |b| {
        b.rule(Rule::path_prefix("/static/").ttl(Duration::from_secs(86400)))
    });
    for path in [
        "/static/../account",
        "/static/%2e%2e/account",
        "//static/x",
        "/static/a%2Fb",
    ] {
        h.get(path).await;
        assert_eq!(h.get(path).await.x_cache(), "BYPASS", "{path}");
    }
    // An absolute URI whose authority disagrees with Host; a GET with a body.
    assert_eq!(
        h.send("GET", "http://victim.test/x", &[]).await.x_cache(),
        "BYPASS"
    );
    assert_eq!(
        h.send("GET", "/x", &[("content-length", "5")])
            .await
            .x_cache(),
        "BYPASS"
    );
}

#[tokio::test]
async fn a_304s_set_cookie_is_not_stored() {
    let origin = Origin::new(|seen, n| {
        if seen.headers.contains_key("if-none-match") {
            return Ok(response(
                304,
                &[
                    ("cache-control", "max-age=600"),
                    ("set-cookie", &*format!("session=user{n}")),
                ],
                "",
            ));
        }
        Ok(response(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"e\"")],
            "page",
        ))
    });
    let h = harness(origin, |b| b);
    h.get("/s").await;
    h.advance(5);
    h.get("/s").await;
    let next = h.get("/s").await;
    assert_eq!(next.x_cache(), "HIT");
    assert!(
        next.header("set-cookie").is_none(),
        "one user's cookie is not replayed to the next"
    );
}
