//! `tiered warm`: fetch a list of URLs through the gateway so they are cached
//! before real traffic arrives (after a deploy, a flush, a cold start).
//!
//! Each line of the input is a path (`/api/products/1`, sent to the gateway
//! as is) or an absolute URL (`http://api.example.com/products/1`, sent to
//! the gateway with that `Host`, so it lands under the key real clients of
//! that host use). Blank lines and lines starting with `#` are skipped.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use tiered_http::BoxError;
use tokio::io::AsyncReadExt;

/// `tiered warm` options.
#[derive(Debug, Clone, clap::Args)]
pub struct WarmArgs {
    /// File with one URL or path per line; `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    /// The gateway to warm.
    #[arg(long, env = "TIERED_GATEWAY", default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

/// What happened to one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Result1 {
    /// Fetched from the origin and stored.
    Stored,
    /// Already in the cache.
    Cached,
    /// Fetched but not stored (not cacheable, or too large).
    NotStored,
    /// Error status or no answer.
    Failed,
}

/// The gateway request for one input line.
fn request_for(gateway: &Uri, line: &str) -> Result<Request<Empty<Bytes>>, String> {
    let authority = gateway
        .authority()
        .ok_or_else(|| format!("--gateway {gateway} has no host"))?;
    let (host, path) = if line.starts_with('/') {
        (authority.as_str().to_owned(), line.to_owned())
    } else {
        let uri: Uri = line.parse().map_err(|e| format!("{line}: {e}"))?;
        let host = uri
            .authority()
            .ok_or_else(|| format!("{line}: not a path or an absolute URL"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        (host.as_str().to_owned(), path.to_owned())
    };
    Request::get(format!("http://{authority}{path}"))
        .header(header::HOST, host)
        .body(Empty::new())
        .map_err(|e| format!("{line}: {e}"))
}

fn classify(res: &http::Response<hyper::body::Incoming>) -> Result1 {
    if !res.status().is_success() {
        return Result1::Failed;
    }
    let status = res
        .headers()
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if status.contains("stored") {
        Result1::Stored
    } else if res.headers().get("x-cache").is_some_and(|v| v == "HIT") {
        Result1::Cached
    } else {
        Result1::NotStored
    }
}

/// Runs `tiered warm`.
///
/// # Errors
///
/// Unreadable input or a bad `--gateway`; per-URL failures are counted, and
/// make the command fail at the end.
pub async fn run(args: WarmArgs) -> Result<(), BoxError> {
    let gateway: Uri = args
        .gateway
        .parse()
        .map_err(|e| format!("--gateway {}: {e}", args.gateway))?;
    let mut text = String::new();
    match args.file.as_deref() {
        None => {
            tokio::io::stdin().read_to_string(&mut text).await?;
        }
        Some(p) if p.as_os_str() == "-" => {
            tokio::io::stdin().read_to_string(&mut text).await?;
        }
        Some(p) => {
            text = tokio::fs::read_to_string(p)
                .await
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut requests = Vec::with_capacity(lines.len());
    for line in &lines {
        requests.push(request_for(&gateway, line)?);
    }

    let bar = ProgressBar::new(requests.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let client = Arc::new(client);
    let results: Vec<Result1> = futures_util::stream::iter(requests)
        .map(|req| {
            let client = Arc::clone(&client);
            let bar = bar.clone();
            async move {
                let outcome = match client.request(req).await {
                    Ok(res) => {
                        let outcome = classify(&res);
                        match res.into_body().collect().await {
                            Ok(_) => outcome,
                            Err(_) => Result1::Failed,
                        }
                    }
                    Err(_) => Result1::Failed,
                };
                bar.inc(1);
                outcome
            }
        })
        .buffer_unordered(usize::from(args.concurrency))
        .collect()
        .await;
    bar.finish_and_clear();
    let count = |r: Result1| results.iter().filter(|x| **x == r).count();
    let failed = count(Result1::Failed);
    println!(
        "warmed {} URLs: {} stored, {} already cached, {} not cacheable, {} failed",
        results.len(),
        count(Result1::Stored),
        count(Result1::Cached),
        count(Result1::NotStored),
        failed
    );
    if failed > 0 {
        return Err(format!("{failed} URLs failed").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_gateway_requests() -> Result<(), String> {
        let gw: Uri = "http://127.0.0.1:8080".parse().map_err(|_| "uri")?;
        let r = request_for(&gw, "/a?b=1")?;
        assert_eq!(r.uri(), "http://127.0.0.1:8080/a?b=1");
        assert_eq!(r.headers()[header::HOST], "127.0.0.1:8080");
        let r = request_for(&gw, "http://api.test/x")?;
        assert_eq!(r.uri(), "http://127.0.0.1:8080/x");
        assert_eq!(r.headers()[header::HOST], "api.test");
        assert!(request_for(&gw, "not a url").is_err());
        Ok(())
    }
}
