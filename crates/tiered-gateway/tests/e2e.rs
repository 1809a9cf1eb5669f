//! The real `tiered` binary in front of a test origin: caching, purges,
//! conditionals, streaming, proxy headers, limits, shutdown, Redis.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the gateway answered on a raw connection: its first read (the
/// status line and headers), waiting up to 10 s.
async fn read_head(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// An origin with a cacheable, tagged, ETagged resource whose body counts
/// the origin's fetches, answering `If-None-Match` with 304.
async fn counting_origin() -> (Origin, Arc<AtomicUsize>) {
    let n = counter();
    let fetches = Arc::clone(&n);
    let origin = Origin::start(move |seen| {
        let etag = "\"v1\"";
        if seen.headers.get("if-none-match").is_some_and(|v| v == etag) {
            return respond(304, &[("etag", etag), ("cache-control", "max-age=60")], "");
        }
        match seen.uri.as_str() {
            "/uncached" => respond(200, &[("cache-control", "no-store")], "live"),
            _ => {
                let k = bump(&fetches);
                respond(
                    200,
                    &[
                        ("cache-control", "public, max-age=60"),
                        ("etag", etag),
                        ("surrogate-key", "products product-1"),
                    ],
                    format!("body {k}"),
                )
            }
        }
    })
    .await;
    (origin, n)
}

#[tokio::test(flavor = "multi_thread")]
async fn hits_misses_purges_and_conditionals() {
    let (origin, fetches) = counting_origin().await;
    let gw = Gateway::start(&origin.url(), &[]).await;

    let first = gw.get("/products/1", &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(first.body().as_ref(), b"body 1");
    let second = gw.get("/products/1", &[]).await;
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body().as_ref(), b"body 1");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert!(second
        .headers()
        .get_all("via")
        .iter()
        .any(|v| v.to_str().unwrap_or("").contains("tiered")));

    // A conditional request is answered from the cache.
    let cond = gw.get("/products/1", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status(), 304);
    assert_eq!(origin.count(), 1);

    // Uncacheable responses pass through every time.
    for _ in 0..2 {
        let res = gw.get("/uncached", &[]).await;
        assert_eq!(res.body().as_ref(), b"live");
    }
    assert_eq!(origin.count_path("/uncached"), 2);

    // Hard purge by tag: the next request goes to the origin.
    let purged = gw.admin_post("/purge", r#"{"tag":"product-1"}"#).await;
    assert_eq!(purged.status(), 200, "{:?}", purged.body());
    let after = gw.get("/products/1", &[]).await;
    assert_eq!(x_cache(&after), "MISS");
    assert_eq!(after.body().as_ref(), b"body 2");

    // Soft purge by URL: kept, but revalidated (conditionally) before reuse.
    let url = gw.url("/products/1");
    let purged = gw
        .admin_post("/purge", &format!(r#"{{"url":"{url}","mode":"soft"}}"#))
        .await;
    assert_eq!(purged.status(), 200, "{:?}", purged.body());
    let before = origin.count();
    let revalidated = gw.get("/products/1", &[]).await;
    assert_eq!(revalidated.status(), 200);
    assert_eq!(
        revalidated.body().as_ref(),
        b"body 2",
        "304 merged with the kept body"
    );
    assert_eq!(origin.count(), before + 1);
    assert!(origin.last().headers.contains_key("if-none-match"));

    // Hard purge by key, as /stats lists it.
    let stats = gw.stats().await;
    let key = stats["top_keys"][0]["key"].as_str().unwrap().to_owned();
    assert!(key.contains("/products/1"), "{stats}");
    let purged = gw
        .admin_post("/purge", &serde_json::json!({ "key": key }).to_string())
        .await;
    assert_eq!(purged.status(), 200);
    assert_eq!(x_cache(&gw.get("/products/1", &[]).await), "MISS");

    // Flush L1: the next request misses (no L2 here).
    assert_eq!(
        gw.admin_post("/flush", r#"{"tier":"l1"}"#).await.status(),
        200
    );
    assert_eq!(x_cache(&gw.get("/products/1", &[]).await), "MISS");

    // Bad admin input is refused and changes nothing (each names the cached
    // entry, so a purge that went ahead anyway would show as a miss).
    for bad in [
        format!(r#"{{"tag":"product-1","url":"{url}"}}"#),
        r#"{"url":"/products/1"}"#.to_owned(),
        r#"{"tag":"product-1","mode":"medium"}"#.to_owned(),
        format!(r#"{{"prefix":"{url}","mode":"soft"}}"#),
        r#"{"tag":"product-1","colour":"red"}"#.to_owned(),
        r#"{"key":"/products/1"}"#.to_owned(),
        "{".to_owned(),
    ] {
        let res = gw.admin_post("/purge", &bad).await;
        assert_eq!(res.status(), 400, "{bad}");
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert!(body["error"].is_string());
    }
    assert_eq!(x_cache(&gw.get("/products/1", &[]).await), "HIT");

    // The numbers add up.
    let stats = gw.stats().await;
    let r = &stats["requests"];
    let total = r["total"].as_u64().unwrap();
    let parts: u64 = ["hit", "stale", "miss", "bypass", "error"]
        .iter()
        .map(|k| r[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, parts, "{stats}");
    assert!(r["hit"].as_u64().unwrap() >= 3, "{stats}");
    // A GET the origin answers with no-store is a miss (the request was
    // cacheable; the response was not), not a bypass.
    assert!(r["miss"].as_u64().unwrap() >= 6, "{stats}");
    assert!(
        stats["tiers"]["l1"]["entries"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(stats["tiers"]["l2"].is_null());
    assert!(
        stats["origin"]["requests"].as_u64().unwrap() >= 5,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_requires_the_token() {
    let (origin, _) = counting_origin().await;
    let gw = Gateway::start(&origin.url(), &[]).await;
    let admin = |p: &str| format!("http://{}{p}", gw.admin);
    for path in ["/stats", "/metrics"] {
        assert_eq!(get(&admin(path), &[]).await.unwrap().status(), 401);
        let wrong = get(&admin(path), &[("authorization", "Bearer nope")])
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
    }
    let purge = send(Method::POST, &admin("/purge?tag=x"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(purge.status(), 401);
    // Health and the dashboard page itself need no token.
    assert_eq!(get(&admin("/healthz"), &[]).await.unwrap().status(), 200);
    let page = get(&admin("/"), &[]).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(String::from_utf8_lossy(page.body()).contains("purge-form"));

    gw.get("/products/1", &[]).await;
    let metrics = get(
        &admin("/metrics"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await
    .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = String::from_utf8_lossy(metrics.body());
    assert!(
        text.contains("tiered_gateway_requests_total{cache=\"miss\",status=\"2xx\"} 1"),
        "{text}"
    );
    assert!(text.contains("tiered_cache_requests_total"), "{text}");
    // Query-string form of the purge API.
    let q = send(
        Method::POST,
        &admin("/purge?tag=products&mode=soft"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(q.status(), 200, "{:?}", q.body());
}

/// The admin API refuses before it reads: a caller without the token gets
/// its 401 at once, not after the server has buffered the body it announced.
/// Bad purges are refused with a reason and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_refuses_before_reading_and_names_what_is_wrong() {
    let (origin, _) = counting_origin().await;
    let gw = Gateway::start(&origin.url(), &[]).await;
    let mut s = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    s.write_all(b"POST /purge HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");

    let too_big = format!("{{\"tag\":\"{}\"}}", "x".repeat(100_000));
    assert_eq!(gw.admin_post("/purge", &too_big).await.status(), 413);
    let both = gw.admin_post("/purge?mode=soft", r#"{"tag":"t"}"#).await;
    assert_eq!(both.status(), 400, "{:?}", both.body());
    for tag in ["", "a b", "a,b"] {
        let res = gw
            .admin_post("/purge", &format!("{{\"tag\":\"{tag}\"}}"))
            .await;
        assert_eq!(res.status(), 400, "{tag:?}: {:?}", res.body());
        assert!(
            String::from_utf8_lossy(res.body()).contains("not a tag"),
            "{:?}",
            res.body()
        );
    }
    assert_eq!(
        gw.admin_post("/purge", r#"{"tag":"t"}"#).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_headers_limits_and_framing() {
    let origin = Origin::start(|_| respond(200, &[("cache-control", "no-store")], "ok")).await;
    let gw = Gateway::start(&origin.url(), &[]).await;

    let res = gw
        .get(
            "/h",
            &[
                ("connection", "x-drop"),
                ("x-drop", "1"),
                ("x-keep", "1"),
                ("te", "trailers"),
            ],
        )
        .await;
    assert_eq!(res.status(), 200);
    let seen = origin.last();
    assert!(!seen.headers.contains_key("x-drop"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("te"));
    assert!(seen.headers.contains_key("x-keep"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        gw.addr.to_string().as_str()
    );
    assert!(seen.headers["via"].to_str().unwrap().contains("1.1 tiered"));

    // Health endpoints on the client listener too.
    assert_eq!(gw.get("/healthz", &[]).await.status(), 200);
    assert_eq!(gw.get("/readyz", &[]).await.status(), 200);

    let raw = |request: &'static str| {
        let addr = gw.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            read_head(&mut s).await
        }
    };
    let before = origin.count();
    let smuggle = raw("POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
    assert!(smuggle.starts_with("HTTP/1.1 400"), "{smuggle}");
    let big = raw("POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n").await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert_eq!(
        origin.count(),
        before,
        "rejected requests never reach the origin"
    );

    // HTTP/2 (cleartext, prior knowledge) works too.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let res = client.get(gw.url("/h2").parse().unwrap()).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().as_ref(),
        b"ok"
    );
    assert_eq!(origin.last().headers["host"], gw.addr.to_string().as_str());
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_100_mb_without_buffering_it() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 100;
    let origin = Origin::start(|seen| {
        let chunks = futures_util::stream::iter((0..CHUNKS).map(|i| {
            Ok::<_, tiered_http::BoxError>(http_body::Frame::data(Bytes::from(vec![
                i as u8;
                CHUNK
            ])))
        }));
        let body = tiered_http::boxed_body(http_body_util::StreamBody::new(chunks));
        // One response forbids storing; the other is cacheable but larger
        // than the cache's body limit (read up to the limit, then streamed).
        let cc = if seen.uri == "/big-no-store" {
            "no-store"
        } else {
            "public, max-age=60"
        };
        let mut res = http::Response::new(body);
        res.headers_mut()
            .insert("cache-control", cc.parse().unwrap());
        res
    })
    .await;
    let gw = Gateway::start(&origin.url(), &[]).await;
    let base = rss_kib(gw.pid(), "VmRSS:");
    for path in ["/big-no-store", "/big-cacheable"] {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let res = client.get(gw.url(path).parse().unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let (mut total, mut chunks) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
                chunks += 1;
            }
        }
        assert_eq!(total, CHUNK * CHUNKS, "{path}");
        assert!(chunks > 10, "{path}: arrived in pieces, not as one buffer");
    }
    // Peak memory grew by far less than one body (the cache limit is 8 MiB).
    let peak = rss_kib(gw.pid(), "VmHWM:");
    assert!(
        peak < base + 40 * 1024,
        "peak RSS {peak} KiB vs {base} KiB at start: the body was buffered"
    );
    assert_eq!(
        x_cache(&gw.get("/big-cacheable", &[]).await),
        "MISS",
        "too large to store"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish() {
    let origin =
        Origin::start(|_| respond(200, &[("cache-control", "no-store")], "slow but done")).await;
    let mut gw = Gateway::start(&origin.url(), &[]).await;
    let url = gw.url("/slow");
    let request = tokio::spawn(async move { get(&url, &[("x-test-delay-ms", "1500")]).await });
    until("the request reaching the origin", || {
        let n = origin.count();
        async move { n == 1 }
    })
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.terminate();
        (status, gw)
    })
    .await
    .unwrap();
    let res = request.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.body().as_ref(), b"slow but done");
    assert!(
        status.0.success(),
        "{:?}: {}",
        status.0,
        status.1.log_text()
    );
    assert!(status.1.log_text().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_delay_turns_readyz_503_while_still_serving() {
    let origin = Origin::start(|_| respond(200, &[("cache-control", "no-store")], "served")).await;
    let cfg = ConfigFile::new("[proxy]\ndrain_delay = \"6s\"\n");
    let mut gw = Gateway::start(&origin.url(), &["--config", &cfg.path]).await;
    signal(gw.pid(), "TERM");
    let readyz = format!("http://{}/readyz", gw.admin);
    until("/readyz to say 503", || {
        let readyz = readyz.clone();
        async move { get(&readyz, &[]).await.is_ok_and(|r| r.status() == 503) }
    })
    .await;
    // Out of rotation, but still serving: both listeners accept.
    assert!(gw.try_wait().is_none(), "exited during the drain delay");
    let res = gw.get("/during-drain", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.body().as_ref(), b"served");
    let listener_readyz = gw.get("/readyz", &[]).await;
    assert_eq!(listener_readyz.status(), 503);
    let status = tokio::task::spawn_blocking(move || (gw.terminate(), gw))
        .await
        .unwrap();
    assert!(
        status.0.success(),
        "{:?}: {}",
        status.0,
        status.1.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_timeout_starts_after_the_upload() {
    let origin = Origin::start(|_| respond(200, &[("cache-control", "no-store")], "got it")).await;
    let cfg = ConfigFile::new("[proxy]\nread_timeout = \"1s\"\n");
    let gw = Gateway::start(&origin.url(), &["--config", &cfg.path]).await;
    // An upload taking 2.5 s (a chunk every 500 ms) is longer than the read
    // timeout but never idle for it: the origin answers, no 504.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..5 {
        s.write_all(b"400\r\n").await.unwrap();
        s.write_all(&[b'u'; 0x400]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // An upload that stops for the read timeout is the client's fault: 408,
    // not counted as an origin error.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let stats = gw.stats().await;
    assert_eq!(stats["origin"]["errors"].as_u64(), Some(0), "{stats}");
    // Once the upload is over, a silent origin gets the read timeout: 504.
    let slow = send(
        Method::POST,
        &gw.url("/up"),
        &[("x-test-delay-ms", "3000")],
        Bytes::from_static(b"small"),
    )
    .await
    .unwrap();
    assert_eq!(slow.status(), 504);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_origin_that_stops_reading_an_upload_is_a_504_not_the_clients_408() {
    // An origin that reads the request head, then neither reads the body nor
    // answers, holding the connection open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let cfg = ConfigFile::new("[proxy]\nread_timeout = \"1s\"\nmax_request_body = \"1GiB\"\n");
    let gw = Gateway::start(&format!("http://{origin_addr}"), &["--config", &cfg.path]).await;
    // A client that uploads as fast as the path takes it: far more than the
    // sockets on the way buffer, so the gateway ends up waiting on the
    // origin to read, not on the client.
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let client = tokio::spawn(async move {
        let len = 512u64 << 20;
        let head = format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'u'; 1 << 20];
        for _ in 0..(len >> 20) {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let head = read_head(&mut rd).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let stats = gw.stats().await;
    assert_eq!(stats["origin"]["errors"].as_u64(), Some(1), "{stats}");
    client.abort();
}

/// Sends a chunked upload of `chunk`-byte chunks, one every `every`, for
/// `chunks` chunks (or until the gateway stops reading), and returns the
/// response head.
async fn trickle(
    addr: std::net::SocketAddr,
    chunk: usize,
    every: Duration,
    chunks: usize,
) -> String {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        wr.write_all(head).await?;
        for _ in 0..chunks {
            let mut piece = format!("{chunk:x}\r\n").into_bytes();
            piece.extend(std::iter::repeat_n(b'u', chunk));
            piece.extend_from_slice(b"\r\n");
            wr.write_all(&piece).await?;
            tokio::time::sleep(every).await;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
            .await
            .expect("no response within 30 s")
            .unwrap();
        assert!(n > 0, "closed without a response");
        head.extend_from_slice(&buf[..n]);
    }
    writer.abort();
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_below_the_minimum_rate_is_a_408() {
    let origin = Origin::start(|_| respond(200, &[("cache-control", "no-store")], "got it")).await;
    let cfg = ConfigFile::new("[proxy]\nmin_upload_rate = \"1KiB\"\n");
    let gw = Gateway::start(&origin.url(), &["--config", &cfg.path]).await;
    // 400 B/s for up to 50 s, never idle for the read timeout (30 s): cut
    // once the average falls under 1 KiB/s after the 5 s grace, at ~5 s.
    let slow = async {
        let started = Instant::now();
        let head = trickle(gw.addr, 100, Duration::from_millis(250), 200).await;
        (head, started.elapsed())
    };
    // 2 KiB/s for 9 s, past the grace: kept, and answered.
    let steady = trickle(gw.addr, 1024, Duration::from_millis(500), 18);
    let ((slow, slow_took), steady) = tokio::join!(slow, steady);
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    assert!(
        slow_took >= Duration::from_secs(5),
        "cut within the grace period"
    );
    assert!(steady.starts_with("HTTP/1.1 200"), "{steady}");
    let stats = gw.stats().await;
    assert_eq!(stats["origin"]["errors"].as_u64(), Some(0), "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upload_is_cut_even_after_the_origin_has_answered() {
    // An origin that answers at once, before the body, with a response it
    // streams (a chunk a second, so the response is never idle) and never
    // ends, and reads what comes of the upload until the gateway closes
    // the connection: how long that takes is what is measured.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = rd.read(&mut buf).await.unwrap_or(0);
            assert!(n > 0, "closed before the request head");
            seen.extend_from_slice(&buf[..n]);
        }
        let streaming = tokio::spawn(async move {
            let head =
                b"HTTP/1.1 200 OK\r\ncache-control: no-store\r\ntransfer-encoding: chunked\r\n\r\n";
            let mut out = head.to_vec();
            while wr.write_all(&out).await.is_ok() {
                out = b"5\r\nhello\r\n".to_vec();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        streaming.abort();
        let _ = closed_tx.send(Instant::now());
    });
    let cfg = ConfigFile::new("[proxy]\nmin_upload_rate = \"1KiB\"\n");
    let gw = Gateway::start(&format!("http://{origin_addr}"), &["--config", &cfg.path]).await;
    // 400 B/s for up to 50 s, never idle for the read timeout.
    let started = Instant::now();
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let client = tokio::spawn(async move {
        let head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        wr.write_all(head).await?;
        for _ in 0..200 {
            let mut piece = b"64\r\n".to_vec();
            piece.extend(std::iter::repeat_n(b'u', 100));
            piece.extend_from_slice(b"\r\n");
            wr.write_all(&piece).await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(5).any(|w| w == b"hello") {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("the response began")
            .unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // Cut once the average falls under 1 KiB/s after the 5 s grace (at
    // ~5 s: 400 B/s never earns more), not when the client is done (50 s).
    // Timed from before the client connected: the gateway's wait on it
    // cannot have begun earlier.
    let held = tokio::time::timeout(Duration::from_secs(25), closed_rx)
        .await
        .expect("the gateway still holds the origin connection after 25 s")
        .unwrap()
        .duration_since(started);
    assert!(
        held >= Duration::from_secs(5),
        "cut within the grace period: {held:?}"
    );
    // The client's connection ends too.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(end.is_ok(), "the client connection was left open");
    client.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_down_is_a_502_and_stale_if_error_serves_kept_copies() {
    let calls = counter();
    let origin = Origin::start(move |_| {
        // First answer cacheable for 1 s; every later one an error.
        if bump(&calls) == 1 {
            respond(
                200,
                &[("cache-control", "max-age=1, stale-if-error=600")],
                "kept",
            )
        } else {
            respond(500, &[], "broken")
        }
    })
    .await;
    // Nothing listens on the second route's port.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = ConfigFile::new(&format!(
            "[[route]]\nprefix = \"/\"\norigin = \"{}\"\n[[route]]\nprefix = \"/dead/\"\norigin = \"{dead}\"\n",
            origin.url()
        ));
    let gw = Gateway::start("", &["--config", &cfg.path]).await;
    let res = gw.get("/dead/x", &[]).await;
    assert_eq!(res.status(), 502);
    assert_eq!(gw.get("/kept", &[]).await.body().as_ref(), b"kept");
    // Once stale, the origin's 500 is replaced by the kept copy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = gw.get("/kept", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.body().as_ref(), b"kept");
    assert_eq!(x_cache(&res), "STALE");
    assert_eq!(origin.count(), 2, "the origin was asked and failed");
    let stats = gw.stats().await;
    assert_eq!(stats["origin"]["errors"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["requests"]["error"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["requests"]["stale"].as_u64(), Some(1), "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_redis_and_purge_by_tag() {
    let redis = tiered_testkit::redis::RedisServer::start();
    two_instances_share(&redis.url(), 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_a_redis_cluster_and_purge_by_tag() {
    let cluster = tiered_testkit::redis::RedisCluster::start();
    let seeds: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    two_instances_share(&format!("redis+cluster://{}", seeds.join(",")), 3).await;
}

async fn two_instances_share(redis: &str, masters: u64) {
    let (origin, fetches) = counting_origin().await;
    let a = Gateway::start(&origin.url(), &["--redis", redis]).await;
    let b = Gateway::start(&origin.url(), &["--redis", redis]).await;
    // Both instances must use the same Host for the same key.
    let host = [("host", "api.test")];

    assert_eq!(a.get("/products/1", &host).await.body().as_ref(), b"body 1");
    let from_b = b.get("/products/1", &host).await;
    assert_eq!(
        from_b.body().as_ref(),
        b"body 1",
        "B reads A's response from Redis"
    );
    assert_eq!(x_cache(&from_b), "HIT");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let stats = b.stats().await;
    assert_eq!(stats["tiers"]["l2"]["breaker"], "closed", "{stats}");
    assert!(
        stats["tiers"]["l2"]["hits"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    // The Redis server's size: every master, holding at least the entry.
    let server = &stats["tiers"]["l2"]["server"];
    assert_eq!(server["nodes"].as_u64(), Some(masters), "{stats}");
    assert!(server["keys"].as_u64().unwrap() >= 1, "{stats}");
    assert!(server["used_memory"].as_u64().unwrap() > 0, "{stats}");
    let metrics = send(
        Method::GET,
        &format!("http://{}/metrics", b.admin),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(metrics.body());
    assert!(
        text.contains("tiered_gateway_redis_used_memory_bytes"),
        "{text}"
    );

    assert_eq!(
        a.admin_post("/purge", r#"{"tag":"products"}"#)
            .await
            .status(),
        200
    );
    // B sees the purge (backplane) and refetches.
    until("B to see A's purge", || {
        let b = &b;
        async move { b.get("/products/1", &host).await.body().as_ref() != b"body 1" }
    })
    .await;
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert_eq!(a.get("/products/1", &host).await.body().as_ref(), b"body 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_under_load_every_request_still_succeeds() {
    let mut redis = tiered_testkit::redis::RedisServer::start();
    let origin = Origin::start(|seen| {
        respond(
            200,
            &[("cache-control", "public, max-age=1")],
            format!("page {}", seen.uri),
        )
    })
    .await;
    let gw = Arc::new(Gateway::start(&origin.url(), &["--redis", &redis.url()]).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (gw, stop) = (Arc::clone(&gw), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let path = format!("/item/{}", i % 40);
                match get(&gw.url(&path), &[]).await {
                    Ok(res) if res.status().is_success() => ok += 1,
                    Ok(res) => failed.push(format!("{path}: {}", res.status())),
                    Err(e) => failed.push(format!("{path}: {e}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failures, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests in {:?}", killed_at.elapsed());
    let stats = gw.stats().await;
    assert!(
        stats["tiers"]["l2"]["errors"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_fetches_urls_through_the_gateway() {
    let (origin, fetches) = counting_origin().await;
    let gw = Gateway::start(&origin.url(), &[]).await;
    let dir = std::env::temp_dir().join(format!("tiered-warm-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("urls.txt");
    std::fs::write(
        &list,
        "# warm these\n/products/1\n/products/2\n\nhttp://api.test/products/3\n/uncached\n",
    )
    .unwrap();
    let run = |list: std::path::PathBuf, gateway: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin())
                .args(["warm", "--gateway", &gateway, "--concurrency", "2"])
                .arg(list)
                .output()
                .unwrap()
        })
    };
    let out = run(list.clone(), gw.url("")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("warmed 4 URLs: 3 stored, 0 already cached, 1 not cacheable, 0 failed"),
        "{stdout}"
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 3);
    // Warmed under the key real clients use: these are hits.
    assert_eq!(x_cache(&gw.get("/products/1", &[]).await), "HIT");
    assert_eq!(
        x_cache(&gw.get("/products/3", &[("host", "api.test")]).await),
        "HIT"
    );
    let again = run(list, gw.url("")).await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("3 already cached"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn percent_encoded_paths_route_like_the_cache_key_reads_them() {
    let a = Origin::start(|_| respond(200, &[("cache-control", "max-age=60")], "from A")).await;
    let b = Origin::start(|_| respond(200, &[("cache-control", "max-age=60")], "from B")).await;
    let cfg = ConfigFile::new(&format!(
            "[[route]]\nprefix = \"/\"\norigin = \"{}\"\n[[route]]\nprefix = \"/api/\"\norigin = \"{}\"\n",
            a.url(),
            b.url()
        ));
    let gw = Gateway::start("", &["--config", &cfg.path]).await;
    // `/%61pi/x` is `/api/x`: it must go to B, never store A's answer there.
    assert_eq!(gw.get("/%61pi/x", &[]).await.body().as_ref(), b"from B");
    assert_eq!(gw.get("/api/x", &[]).await.body().as_ref(), b"from B");
    assert_eq!(gw.get("/other", &[]).await.body().as_ref(), b"from A");
    assert_eq!(a.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_streamed_uploads_are_413() {
    let origin = Origin::start(|_| respond(200, &[("cache-control", "no-store")], "ok")).await;
    let cfg = ConfigFile::new("[proxy]\nmax_request_body = \"64KiB\"\n");
    let gw = Gateway::start(&origin.url(), &["--config", &cfg.path]).await;
    // Chunked (no Content-Length to check up front): 256 KiB in 4 KiB chunks.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("1000\r\n{}\r\n", "a".repeat(4096));
    for _ in 0..64 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let stats = gw.stats().await;
    assert_eq!(
        stats["origin"]["errors"].as_u64(),
        Some(0),
        "not the origin's fault: {stats}"
    );
    // A body within the limit streams through.
    let ok = send(
        Method::POST,
        &gw.url("/up"),
        &[],
        Bytes::from(vec![b'a'; 32 << 10]),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_admin_api_refuses_cross_site_shapes() {
    let origin = Origin::start(|_| respond(200, &[("cache-control", "max-age=60")], "x")).await;
    // No --admin-token: the harness passes one, so start by hand.
    let (child, _, admin) = spawn_ready(None, |addr, admin| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--origin",
            &origin.url(),
        ])
        .env_remove("TIERED_ADMIN_TOKEN")
        .stderr(std::process::Stdio::null());
        cmd
    })
    .await;
    let _child = KillOnDrop(child);
    let purge = format!("http://{admin}/purge?tag=x");
    // A form-style POST (what a cross-site page can send without a preflight).
    let res = send(
        Method::POST,
        &purge,
        &[("content-type", "text/plain")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 415);
    // A rebinding attacker's name for 127.0.0.1.
    let res = get(
        &format!("http://{admin}/stats"),
        &[("host", "evil.example:9090")],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    // The real thing works.
    let res = send(
        Method::POST,
        &format!("http://{admin}/purge"),
        &[("content-type", "application/json")],
        Bytes::from_static(br#"{"tag":"x"}"#),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        get(&format!("http://{admin}/stats"), &[])
            .await
            .unwrap()
            .status(),
        200
    );
}

/// An origin that answers the first request on each connection, with
/// keep-alive, and closes a connection when a later request arrives on it —
/// the keep-alive race, where a pooled connection dies as a request goes out
/// on it — but never twice in a row: after a dropped request the next one is
/// answered, so one retry always succeeds. Counts the request heads it read
/// by method, and the requests it dropped.
async fn closing_origin() -> (String, Arc<[AtomicUsize; 3]>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // [GET heads read, POST heads read, requests dropped]
    let seen: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let counts = Arc::clone(&seen);
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (seen, armed) = (Arc::clone(&seen), Arc::clone(&armed));
            tokio::spawn(async move {
                for n in 0.. {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let method = usize::from(head.starts_with(b"POST"));
                    seen[method].fetch_add(1, Ordering::SeqCst);
                    if n > 0 && armed.swap(false, Ordering::SeqCst) {
                        seen[2].fetch_add(1, Ordering::SeqCst);
                        return; // closes the connection, no response
                    }
                    armed.store(true, Ordering::SeqCst);
                    let res = b"HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-length: 2\r\n\r\nok";
                    if conn.write_all(res).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, counts)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotent_request_on_a_connection_the_origin_closed_is_sent_again() {
    let (origin, seen) = closing_origin().await;
    let gw = Gateway::start(&origin, &[]).await;
    // Every GET succeeds, though some go out on a connection the origin
    // then drops (a few requests make sure one does: the first answer's
    // connection is back in the pool by then).
    for i in 0..20 {
        let res = gw.get(&format!("/get/{i}"), &[]).await;
        assert_eq!(res.status(), 200, "{}", gw.log_text());
        assert_eq!(res.body().as_ref(), b"ok");
        if seen[2].load(Ordering::SeqCst) >= 2 {
            break;
        }
    }
    assert!(
        seen[2].load(Ordering::SeqCst) >= 2,
        "no GET met a closing connection"
    );
    let stats = gw.stats().await;
    assert_eq!(stats["origin"]["errors"].as_u64(), Some(0), "{stats}");

    // A POST is never sent twice: one on a dropped connection is a 502.
    let mut failed = 0;
    for i in 0..20 {
        let url = gw.url(&format!("/post/{i}"));
        let res = send(Method::POST, &url, &[], Bytes::new()).await.unwrap();
        assert!(
            matches!(res.status().as_u16(), 200 | 502),
            "{}",
            res.status()
        );
        failed += usize::from(res.status() == 502);
        assert_eq!(
            seen[1].load(Ordering::SeqCst),
            i + 1,
            "a POST was sent again"
        );
        if failed > 0 {
            break;
        }
    }
    assert_eq!(failed, 1, "no POST met a closing connection");
}
