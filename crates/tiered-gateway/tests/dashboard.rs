//! The dashboard in a real headless Chromium (driven over WebDriver through
//! chromedriver): the page loads, its numbers match `/stats`, and a purge
//! from its form takes effect.
//!
//! The WebDriver calls are a few JSON requests, written here rather than
//! pulling in a WebDriver crate (and its TLS stack) for one test.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
}

fn find_program(names: &[&str]) -> String {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let path = format!("{dir}/{name}");
            if std::path::Path::new(&path).exists() {
                return path;
            }
        }
    }
    panic!(
        "this test needs {names:?}: install Debian's chromium and chromium-driver (scripts/test.sh does)"
    );
}

async fn wd(method: Method, url: &str, body: Value) -> Value {
    let body = if method == Method::GET || method == Method::DELETE {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let res = send(method, url, &[("content-type", "application/json")], body)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(res.body()).unwrap_or(Value::Null);
    assert!(res.status().is_success(), "webdriver {url}: {v}");
    v["value"].clone()
}

impl Driver {
    async fn start() -> Driver {
        let driver = find_program(&["chromedriver"]);
        let browser = find_program(&["chromium", "chromium-browser"]);
        // A port free a moment ago can be taken before chromedriver binds it
        // (it then exits at once): an early exit is retried on a new port.
        let (child, base) = 'spawn: {
            for _ in 0..5 {
                let port = free_port();
                let mut child = Command::new(&driver)
                    .arg(format!("--port={port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let base = format!("http://127.0.0.1:{port}");
                let deadline = Instant::now() + Duration::from_secs(20);
                while get(&format!("{base}/status"), &[]).await.is_err() {
                    if child.try_wait().unwrap().is_some() {
                        break;
                    }
                    assert!(Instant::now() < deadline, "chromedriver did not start");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if child.try_wait().unwrap().is_none() {
                    break 'spawn (child, base);
                }
            }
            panic!("chromedriver exited before answering, five times");
        };
        let profile = std::env::temp_dir().join(format!("tiered-chromium-{}", fastrand::u64(..)));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = wd(Method::POST, &format!("{base}/session"), caps).await;
        let session = v["sessionId"].as_str().unwrap().to_owned();
        Driver {
            child,
            base,
            session,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    async fn goto(&self, url: &str) {
        wd(Method::POST, &self.url("/url"), json!({ "url": url })).await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        wd(
            Method::POST,
            &self.url("/execute/sync"),
            json!({ "script": script, "args": args }),
        )
        .await
    }

    async fn text(&self, id: &str) -> String {
        let v = self
            .script(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent.trim() : null;",
                json!([id]),
            )
            .await;
        v.as_str().unwrap_or("").to_owned()
    }

    async fn element(&self, css: &str) -> String {
        let v = wd(
            Method::POST,
            &self.url("/element"),
            json!({ "using": "css selector", "value": css }),
        )
        .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {v}"))
            .to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        wd(
            Method::POST,
            &self.url(&format!("/element/{e}/clear")),
            json!({}),
        )
        .await;
        wd(
            Method::POST,
            &self.url(&format!("/element/{e}/value")),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        wd(
            Method::POST,
            &self.url(&format!("/element/{e}/click")),
            json!({}),
        )
        .await;
    }

    /// Waits until element `id` shows `want`.
    async fn until_text(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.text(id).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} shows {got:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_shows_stats_and_purges_from_its_form() {
    let fetches = counter();
    let counted = fetches.clone();
    let origin = Origin::start(move |seen| {
        if seen.uri.starts_with("/products/") {
            bump(&counted);
        }
        respond(
            200,
            &[
                ("cache-control", "public, max-age=300"),
                ("surrogate-key", "products"),
            ],
            format!("page {}", seen.uri),
        )
    })
    .await;
    let gw = Gateway::start(&origin.url(), &[]).await;
    for i in 0..30 {
        let res = gw.get(&format!("/products/{}", i % 4), &[]).await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4);

    let driver = Driver::start().await;
    // The token travels in the fragment (never sent to the server); the
    // page keeps it and removes it from the address bar.
    driver
        .goto(&format!("http://{}/#token={TOKEN}", gw.admin))
        .await;
    driver.until_text("conn-status", "live").await;

    let stats = gw.stats().await;
    let r = &stats["requests"];
    let l1 = &stats["tiers"]["l1"];
    let expect = [
        ("requests-total", r["total"].to_string()),
        ("hits", r["hit"].to_string()),
        ("misses", r["miss"].to_string()),
        ("stale", r["stale"].to_string()),
        (
            "hit-ratio",
            format!("{:.1}%", r["hit_ratio"].as_f64().unwrap() * 100.0),
        ),
        ("l1-entries", l1["entries"].to_string()),
        ("l1-bytes", l1["bytes"].to_string()),
        ("origin-errors", stats["origin"]["errors"].to_string()),
        ("l2-state", "off".to_owned()),
    ];
    assert_eq!(r["total"], 30, "{stats}");
    for (id, want) in &expect {
        driver.until_text(id, want).await;
    }
    let rows = driver
        .script(
            "return document.querySelectorAll('#top-keys tr').length",
            json!([]),
        )
        .await;
    assert_eq!(
        rows.as_u64(),
        Some(stats["top_keys"].as_array().unwrap().len() as u64)
    );
    let page_url = driver.script("return location.href", json!([])).await;
    assert!(!page_url.as_str().unwrap().contains("token"), "{page_url}");

    // Purge the tag from the form.
    driver
        .script(
            "document.getElementById('purge-kind').value = 'tag'; document.getElementById('purge-mode').value = 'hard';",
            json!([]),
        )
        .await;
    driver.type_into("#purge-value", "products").await;
    driver.click("#purge-submit").await;
    driver
        .until_text("purge-result", "purged tag products")
        .await;
    let ok = driver
        .script(
            "return document.getElementById('purge-result').dataset.ok",
            json!([]),
        )
        .await;
    assert_eq!(ok, "true");
    let res = gw.get("/products/1", &[]).await;
    assert_eq!(x_cache(&res), "MISS", "the purge from the form took effect");
    assert_eq!(fetches.load(Ordering::SeqCst), 5);

    // A bad purge shows the API's error.
    driver
        .script(
            "document.getElementById('purge-kind').value = 'url';",
            json!([]),
        )
        .await;
    driver.type_into("#purge-value", "not a url").await;
    driver.click("#purge-submit").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = driver
            .script(
                "return document.getElementById('purge-result').dataset.ok",
                json!([]),
            )
            .await;
        if ok == "false" {
            break;
        }
        assert!(Instant::now() < deadline, "no error shown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(driver
        .text("purge-result")
        .await
        .contains("not an absolute"));
    let _ = wd(Method::DELETE, &driver.url(""), Value::Null).await;
}
