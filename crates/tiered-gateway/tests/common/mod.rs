//! End-to-end harness: the real `tiered` binary as a child process, an
//! in-process test origin, and a small HTTP client.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tiered_http::Body;

pub const TOKEN: &str = "test-admin-token";

/// A port that was free a moment ago and that no other test in this process
/// was given.
pub use tiered_testkit::free_port;

/// What the origin received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
}

type Handler = dyn Fn(&Seen) -> Response<Body> + Send + Sync;

/// An origin answering with a closure and recording what it received.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    pub async fn start(handler: impl Fn(&Seen) -> Response<Body> + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, record) = (Arc::clone(&handler), Arc::clone(&record));
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (handler, record) = (Arc::clone(&handler), Arc::clone(&record));
                            async move {
                                let seen = Seen {
                                    method: req.method().clone(),
                                    uri: req.uri().to_string(),
                                    headers: req.headers().clone(),
                                };
                                // Drain the request body (uploads).
                                let _ = req.into_body().collect().await;
                                record.lock().push(seen.clone());
                                let delay = seen
                                    .headers
                                    .get("x-test-delay-ms")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(0);
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                Ok::<_, std::convert::Infallible>(handler(&seen))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn count_path(&self, path: &str) -> usize {
        self.seen.lock().iter().filter(|s| s.uri == path).count()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().last().cloned().unwrap()
    }
}

/// A response with these headers and body.
pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(tiered_http::full_body(body.into()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        res.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    res
}

/// The `tiered` binary, running.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    log: std::path::PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tiered")
}

impl Gateway {
    /// `tiered serve` in front of `origin` with the test token and `extra` flags.
    pub async fn start(origin: &str, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("tiered-e2e-{}.log", fastrand::u64(..)));
        let (child, addr, admin) = spawn_ready(Some(&log), |addr, admin| {
            let mut args = vec![
                "serve".to_owned(),
                "--listen".into(),
                addr.to_string(),
                "--admin-listen".into(),
                admin.to_string(),
                "--admin-token".into(),
                TOKEN.into(),
                "--l1-bytes".into(),
                "64MiB".into(),
            ];
            if !origin.is_empty() {
                args.push("--origin".into());
                args.push(origin.into());
            }
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            let mut cmd = Command::new(bin());
            cmd.args(&args)
                .env_remove("TIERED_CONFIG")
                .env("TIERED_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            cmd
        })
        .await;
        Gateway {
            child,
            addr,
            admin,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        get(&self.url(path), headers).await.unwrap()
    }

    /// POST to the admin API with the token.
    pub async fn admin_post(&self, path: &str, json: &str) -> Resp {
        send(
            Method::POST,
            &format!("http://{}{path}", self.admin),
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("content-type", "application/json"),
            ],
            Bytes::from(json.to_owned()),
        )
        .await
        .unwrap()
    }

    pub async fn stats(&self) -> serde_json::Value {
        let res = get(
            &format!("http://{}/stats", self.admin),
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
        serde_json::from_slice(res.body()).unwrap()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Spawns the gateway that `command` builds for a listen and an admin
/// address, and waits until the admin listener answers `/readyz` with 200.
///
/// The addresses come from `free_port`, and a port free a moment ago can be
/// taken before the gateway binds it (another process's outgoing connection
/// may be given it as its ephemeral port). The gateway then exits at once,
/// so an early exit is retried on new ports; a gateway that stays up but is
/// not ready in 20 s fails the test, with `log` if there is one.
pub async fn spawn_ready(
    log: Option<&std::path::Path>,
    mut command: impl FnMut(SocketAddr, SocketAddr) -> Command,
) -> (Child, SocketAddr, SocketAddr) {
    let log_text = || {
        log.and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    };
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = command(addr, admin).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                break; // exited: most likely a port was taken; try new ones
            }
            if let Ok(res) = get(&format!("http://{admin}/readyz"), &[]).await {
                if res.status() == 200 {
                    return (child, addr, admin);
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gateway did not become ready: {}", log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!(
        "gateway exited before becoming ready, five times: {}",
        log_text()
    );
}

/// Kills (and reaps) a child process when dropped, so a failed assertion
/// does not leave it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

pub type Resp = Response<Bytes>;

/// One request on a fresh client; the whole body is read.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// The `X-Cache` value of a response.
pub fn x_cache(res: &Resp) -> String {
    res.headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Polls `check` until true (10 s at most).
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A counter shared with an origin closure.
pub fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub fn bump(c: &AtomicUsize) -> usize {
    c.fetch_add(1, Ordering::SeqCst) + 1
}

/// A config file with `text` in a fresh directory (removed on drop).
pub struct ConfigFile {
    dir: std::path::PathBuf,
    pub path: String,
}

impl ConfigFile {
    pub fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tiered-e2e-cfg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiered.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        ConfigFile { dir, path }
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
