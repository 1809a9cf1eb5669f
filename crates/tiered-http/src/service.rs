//! What happens to one request: the read path of the HTTP cache.
//!
//! ```text
//! request ── not GET/HEAD ──────────────► origin (unsafe methods then invalidate)
//!    │  rule bypass / no key / Range ────► origin
//!    ▼
//! lookup (primary key → Vary list → variant key), soft-purge check
//!    ├── fresh ─────────────────────────► serve (304 if the client's validators match)
//!    ├── stale, within stale-while-revalidate ► serve, revalidate once in the background
//!    ├── stale ─► revalidate with our validators (coalesced)
//!    │             ├─ 304 ─► update the stored headers, serve
//!    │             ├─ 200 ─► store, serve
//!    │             └─ error/5xx ─► serve stale if stale-if-error allows, else the error
//!    └── miss ──► fetch (coalesced; waiters share only what was stored)
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{self, Body, BoxError, Read};
use crate::entry::{HttpEntry, Kind, Stored};
use crate::flight::{self, Outcome, Role};
use crate::key;
use crate::layer::{engine_tag, CacheLayer, Counters, PurgeMode, Shared};
use crate::policy::{self, RequestRules, Reuse};
use crate::status::{CacheStatus, XCache};

/// The service [`CacheLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The longest a coalesced waiter waits for its leader before going to the
/// origin itself, and the longest a background revalidation may run.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for CacheService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Default + Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The usual tower dance: the ready service goes with the request, a
        // clone stays for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.handle(inner, req).await })
    }
}

/// Conditional request headers a client may send; stripped before we fetch to
/// fill the cache (a 304 to *their* validators could not be stored), and
/// evaluated by us against what we serve.
const CLIENT_CONDITIONALS: [HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Header fields a 304 must not change in the stored response (RFC 9111
/// §3.2): those describing the stored body, which the 304 does not replace.
fn kept_on_update(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "content-encoding" | "content-range" | "content-md5" | "etag"
    ) || crate::entry::is_hop_by_hop(name)
}

async fn call_origin<S, ReqB, ResB>(
    shared: &Shared,
    mut svc: S,
    req: Request<ReqB>,
) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    let call = async {
        futures_util::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        svc.call(req).await.map_err(Into::into)
    };
    let result = match shared.origin_timeout {
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err("origin timed out".into()),
        },
        None => call.await,
    };
    if result.is_err() {
        Counters::bump(&shared.counters.origin_errors);
    }
    result
}

/// Origin statuses that count as errors for `stale-if-error` (RFC 5861 §4).
fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// How an origin response came about (for storing and `Cache-Status`).
struct Fetched {
    fwd: &'static str,
    /// A 304 updated a stored response.
    revalidated: bool,
    request_time: Duration,
    response_time: Duration,
    ttl_override: Option<Duration>,
    /// The purge tags of the stored response a 304 updated: the 304 rarely
    /// repeats them, and the stored headers lack them unless tags are
    /// exposed, so without these a revalidated entry fell out of reach of
    /// every purge by tag.
    kept_tags: Vec<String>,
}

enum Lookup {
    Found(Arc<Stored>),
    /// Nothing; `vary` says whether another variant of the URL is stored.
    Miss {
        vary: bool,
    },
}

impl Shared {
    async fn handle<S, ReqB, ResB>(
        self: Arc<Self>,
        svc: S,
        mut req: Request<ReqB>,
    ) -> Result<Response<Body>, BoxError>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqB: Default + Send + 'static,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let method = req.method().clone();
        let rule = self
            .rule_for(&key::normalize_percent(req.uri().path()))
            .cloned();
        let key_opts = rule.as_ref().map(|r| r.key.clone()).unwrap_or_default();
        let primary = key::primary(
            req.uri(),
            req.headers(),
            &self.default_scheme,
            self.tenant_header.as_ref(),
            &key_opts,
        )
        .filter(|k| k.len() <= tiered::MAX_KEY_LEN - 40);

        if method != Method::GET && method != Method::HEAD {
            let invalidates = !matches!(method, Method::OPTIONS | Method::TRACE | Method::CONNECT);
            let uri = req.uri().clone();
            let req_headers = req.headers().clone();
            let res = call_origin(&self, svc, req).await?;
            if invalidates && (res.status().is_success() || res.status().is_redirection()) {
                self.invalidate_after_unsafe(primary.as_deref(), &uri, &req_headers, res.headers())
                    .await;
            }
            return Ok(self.pass(res, "method", XCache::Bypass));
        }
        let Some(primary) = primary else {
            return self.bypass(svc, req, "no-key").await;
        };
        if key::is_ambiguous_path(req.uri().path()) {
            return self.bypass(svc, req, "path").await;
        }
        // A GET body is not in the key, so it must not shape what is stored.
        let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            return self.bypass(svc, req, "body").await;
        }
        if key_opts.sort_query || !key_opts.ignore_params.is_empty() {
            // The origin gets the query the key describes (no ignored params).
            if let Some(pq) = req.uri().path_and_query() {
                let query = pq.query().map(|q| key::normalize_query(q, &key_opts));
                let rebuilt = match query {
                    Some(q) if !q.is_empty() => format!("{}?{q}", pq.path()),
                    _ => pq.path().to_owned(),
                };
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = rebuilt.parse().ok();
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        if rule.as_ref().is_some_and(|r| r.bypass) {
            return self.bypass(svc, req, "bypass").await;
        }
        // We store whole responses only: a range is served from a fresh stored
        // response, and otherwise goes to the origin as is.
        let range = req.headers().contains_key(header::RANGE);
        for name in &self.unkeyed {
            req.headers_mut().remove(name);
        }
        if self
            .freshness
            .targeted
            .iter()
            .any(|t| t == "surrogate-control")
        {
            if let Ok(v) = HeaderValue::from_str(&format!("{}=\"Surrogate/1.0\"", self.name)) {
                req.headers_mut()
                    .append(HeaderName::from_static("surrogate-capability"), v);
            }
        }

        let rules = RequestRules::from_headers(req.headers());
        let found = self.lookup(&primary, req.headers()).await;
        let vary_miss = match found {
            Lookup::Found(stored) => {
                let now = self.now_ms();
                let purged = self
                    .soft_purged(&primary, &stored.tags, stored.request_time)
                    .await;
                match stored.freshness(now, purged).reuse(&rules) {
                    Reuse::Fresh => {
                        Counters::bump(&self.counters.hits);
                        let ttl = stored.lifetime as i64 / 1000 - stored.age(now).as_secs() as i64;
                        let status = CacheStatus {
                            hit: true,
                            ttl: Some(ttl),
                            ..Default::default()
                        };
                        return Ok(self.serve(&req, &stored, now, &status, XCache::Hit));
                    }
                    Reuse::StaleWhileRevalidate => {
                        Counters::bump(&self.counters.stale);
                        self.revalidate_in_background(svc, &req, &primary, Arc::clone(&stored));
                        let status = CacheStatus {
                            hit: true,
                            fwd: Some("stale"),
                            detail: Some("stale-while-revalidate"),
                            ..Default::default()
                        };
                        return Ok(self.serve(&req, &stored, now, &status, XCache::Stale));
                    }
                    Reuse::Revalidate => {
                        if rules.only_if_cached {
                            return Ok(gateway_timeout(&self.name));
                        }
                        if range {
                            return self.bypass(svc, req, "range").await;
                        }
                        let fwd = if rules.no_cache
                            || rules.max_age.is_some()
                            || rules.min_fresh.is_some()
                        {
                            "request"
                        } else {
                            "stale"
                        };
                        return self
                            .fetch(
                                svc,
                                req,
                                primary,
                                Some(stored),
                                fwd,
                                rule.and_then(|r| r.ttl),
                            )
                            .await;
                    }
                }
            }
            Lookup::Miss { vary } => vary,
        };
        if rules.only_if_cached {
            return Ok(gateway_timeout(&self.name));
        }
        if range {
            return self.bypass(svc, req, "range").await;
        }
        let fwd = if vary_miss { "vary-miss" } else { "uri-miss" };
        self.fetch(svc, req, primary, None, fwd, rule.and_then(|r| r.ttl))
            .await
    }

    /// The stored response for a request: the primary key, or the variant its
    /// `Vary` list points to.
    async fn lookup(&self, primary: &str, headers: &HeaderMap) -> Lookup {
        let Ok(Some(entry)) = self.cache.get(primary).await else {
            return Lookup::Miss { vary: false };
        };
        match &entry.0 {
            Kind::Response(s) if s.vary.is_empty() => Lookup::Found(Arc::clone(s)),
            Kind::Vary(names) => {
                let names: Vec<HeaderName> = names
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .collect();
                let variant = key::variant(primary, &names, headers);
                match self.cache.get(&variant).await {
                    Ok(Some(v)) => match &v.0 {
                        Kind::Response(s) => Lookup::Found(Arc::clone(s)),
                        _ => Lookup::Miss { vary: true },
                    },
                    _ => Lookup::Miss { vary: true },
                }
            }
            _ => Lookup::Miss { vary: false },
        }
    }

    /// Goes to the origin for a cacheable request — to fill a miss, or to
    /// revalidate `stale` — coalesced with concurrent requests for the key.
    async fn fetch<S, ReqB, ResB>(
        self: &Arc<Self>,
        svc: S,
        req: Request<ReqB>,
        primary: String,
        stale: Option<Arc<Stored>>,
        fwd: &'static str,
        ttl_override: Option<Duration>,
    ) -> Result<Response<Body>, BoxError>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqB: Default + Send + 'static,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let leader = match self.flights.join(&primary) {
            Role::Leader(leader) => leader,
            Role::Waiter(rx) => {
                Counters::bump(&self.counters.coalesced);
                let waited = tokio::time::timeout(WAIT_LIMIT, flight::wait(rx)).await;
                if let Ok(Outcome::Stored(stored, stored_key)) = waited {
                    // Shared only as a hit would be: the right variant, and
                    // usable without revalidation for this request. A
                    // response stored to be revalidated on every use
                    // (`no-cache`, or no lifetime, as a cookie-dependent page
                    // with only an ETag gets) must go to the origin with this
                    // request's own headers, or one user's page reaches
                    // another.
                    let now = self.now_ms();
                    let rules = RequestRules::from_headers(req.headers());
                    let purged = self
                        .soft_purged(&primary, &stored.tags, stored.request_time)
                        .await;
                    if stored_key == variant_key(&primary, &stored, req.headers())
                        && matches!(stored.freshness(now, purged).reuse(&rules), Reuse::Fresh)
                    {
                        let status = CacheStatus {
                            fwd: Some(fwd),
                            collapsed: true,
                            ..Default::default()
                        };
                        return Ok(self.serve(&req, &stored, now, &status, XCache::Miss));
                    }
                }
                // Nothing shareable: our own request, not stored by us.
                return self.bypass(svc, req, "not-shared").await;
            }
        };
        Counters::bump(&self.counters.misses);
        let (parts, req_body) = req.into_parts();
        let client = Request::from_parts(parts.clone(), ());
        let mut origin_req = Request::from_parts(parts, req_body);
        for name in &CLIENT_CONDITIONALS {
            origin_req.headers_mut().remove(name);
        }
        // A HEAD miss fetches the GET so the cache fills (HEAD is served from it).
        *origin_req.method_mut() = Method::GET;
        if let Some(stale) = &stale {
            add_validators(origin_req.headers_mut(), stale);
        }
        let request_time = self.clock_duration();
        let result = call_origin(self, svc, origin_req).await;
        let response_time = self.clock_duration();
        let now = self.now_ms();

        let res = match result {
            Ok(res) if !is_error_status(res.status()) => res,
            failed => {
                if let Some(stale) = stale.filter(|s| s.serves_on_error(now)) {
                    Counters::bump(&self.counters.stale);
                    let status = CacheStatus {
                        hit: true,
                        fwd: Some("stale"),
                        fwd_status: failed.as_ref().ok().map(|r| r.status().as_u16()),
                        detail: Some("stale-if-error"),
                        ..Default::default()
                    };
                    return Ok(self.serve(&client, &stale, now, &status, XCache::Stale));
                }
                let res = failed?;
                let how = Fetched {
                    fwd,
                    revalidated: false,
                    request_time,
                    response_time,
                    ttl_override,
                    kept_tags: Vec::new(),
                };
                return self.store_or_pass(res, &client, primary, leader, how).await;
            }
        };

        if res.status() == StatusCode::NOT_MODIFIED {
            if let Some(stale) = &stale {
                Counters::bump(&self.counters.revalidated);
                let merged = merge_304(
                    stale,
                    res.headers(),
                    self.freshness.store_set_cookie,
                    response_time,
                );
                let status = StatusCode::from_u16(stale.status).unwrap_or(StatusCode::OK);
                let response = Response::from_parts(
                    {
                        let (mut p, ()) = Response::new(()).into_parts();
                        p.status = status;
                        p.headers = merged;
                        p
                    },
                    body::full(stale.body.clone()),
                );
                let how = Fetched {
                    fwd: "stale",
                    revalidated: true,
                    request_time,
                    response_time,
                    ttl_override,
                    kept_tags: stale.tags.clone(),
                };
                return self
                    .store_or_pass(response, &client, primary, leader, how)
                    .await;
            }
        }
        let how = Fetched {
            fwd,
            revalidated: false,
            request_time,
            response_time,
            ttl_override,
            kept_tags: Vec::new(),
        };
        self.store_or_pass(res, &client, primary, leader, how).await
    }

    /// Stores an origin response if it may be, and answers the client.
    async fn store_or_pass<ResB>(
        self: &Arc<Self>,
        res: Response<ResB>,
        client: &Request<()>,
        primary: String,
        leader: crate::flight::Leader<'_>,
        how: Fetched,
    ) -> Result<Response<Body>, BoxError>
    where
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let Fetched {
            fwd,
            revalidated,
            request_time,
            response_time,
            ttl_override,
            kept_tags,
        } = how;
        let (parts, res_body) = res.into_parts();
        let fwd_status = if revalidated {
            304
        } else {
            parts.status.as_u16()
        };
        let planned = policy::plan(
            &Method::GET,
            client.headers(),
            parts.status,
            &parts.headers,
            request_time,
            response_time,
            &self.freshness,
        );
        let mut plan = match planned {
            Ok(plan) => plan,
            Err(reason) => {
                drop(leader);
                if parts.status.is_success() && refusal_is_the_origins(reason, client.headers()) {
                    // The origin now says this URL must not be stored: the
                    // copy we hold must not outlive that. A refusal caused by
                    // the request (its no-store, credentials) purges nothing,
                    // or any client could empty the cache at will.
                    let _ = self.purge_primary(&primary, PurgeMode::Hard).await;
                }
                let status = CacheStatus {
                    fwd: Some(fwd),
                    fwd_status: Some(parts.status.as_u16()),
                    detail: Some(reason.as_str()),
                    ..Default::default()
                };
                return Ok(self.finish_pass(
                    Response::from_parts(parts, body::boxed(res_body)),
                    client,
                    &status,
                    XCache::Miss,
                ));
            }
        };
        if let Some(ttl) = ttl_override {
            plan.lifetime = ttl;
        }
        let bytes = match body::read_up_to(res_body, self.max_body).await? {
            Read::Whole(bytes) => bytes,
            Read::TooLarge(rest) => {
                drop(leader);
                let status = CacheStatus {
                    fwd: Some(fwd),
                    fwd_status: Some(parts.status.as_u16()),
                    detail: Some("too-large"),
                    ..Default::default()
                };
                return Ok(self.finish_pass(
                    Response::from_parts(parts, rest),
                    client,
                    &status,
                    XCache::Miss,
                ));
            }
        };
        let mut tags = self.tags_of(&parts.headers);
        for tag in kept_tags {
            if tags.len() < tiered::MAX_TAGS - 1 && !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        let vary: Vec<HeaderName> = key::vary_names(&parts.headers);
        let drop_fields: Vec<HeaderName> = if self.expose_tags {
            Vec::new()
        } else {
            self.tag_headers.clone()
        };
        let stored = Arc::new(Stored {
            tags,
            vary: vary.iter().map(|n| n.as_str().to_owned()).collect(),
            ..Stored::new(
                parts.status,
                &parts.headers,
                bytes,
                &plan,
                response_time,
                &drop_fields,
            )
        });
        let stored_ok = self.store(&primary, &vary, client.headers(), &stored).await;
        let now = self.now_ms();
        if stored_ok {
            Counters::bump(&self.counters.stored);
            let key = variant_key(&primary, &stored, client.headers());
            leader.finish(Outcome::Stored(Arc::clone(&stored), key));
        } else {
            drop(leader);
        }
        let status = CacheStatus {
            fwd: Some(fwd),
            fwd_status: Some(fwd_status),
            stored: stored_ok,
            ..Default::default()
        };
        Ok(self.serve(client, &stored, now, &status, XCache::Miss))
    }

    /// Writes a response (and its `Vary` list) to the engine.
    async fn store(
        &self,
        primary: &str,
        vary: &[HeaderName],
        req_headers: &HeaderMap,
        stored: &Arc<Stored>,
    ) -> bool {
        let keep = stored.keep_for(self.revalidation_keep, self.max_keep);
        let mut tags: Vec<String> = vec![key::url_tag(primary)];
        tags.extend(stored.tags.iter().map(|t| engine_tag(t)));
        let opts = self
            .cache
            .options()
            .ttl(keep)
            .grace(Duration::ZERO)
            .tags(tags);
        let entry = HttpEntry(Kind::Response(Arc::clone(stored)));
        if vary.is_empty() {
            return self.cache.set_with(primary, entry, &opts).await.is_ok();
        }
        let variant = key::variant(primary, vary, req_headers);
        let names = vary.iter().map(|n| n.as_str().to_owned()).collect();
        // The Vary list outlives any one variant: it must reach all of them.
        let marker_opts = self
            .cache
            .options()
            .ttl(self.max_keep)
            .grace(Duration::ZERO)
            .tag(key::url_tag(primary));
        self.cache.set_with(&variant, entry, &opts).await.is_ok()
            && self
                .cache
                .set_with(primary, HttpEntry(Kind::Vary(names)), &marker_opts)
                .await
                .is_ok()
    }

    /// Tags from the configured headers: `Surrogate-Key` is space-separated,
    /// `Cache-Tag` comma-separated; we accept both separators in both. Tags the
    /// engine would refuse (too long, too many) are dropped.
    fn tags_of(&self, headers: &HeaderMap) -> Vec<String> {
        let mut tags: Vec<String> = Vec::new();
        for name in &self.tag_headers {
            for value in headers.get_all(name) {
                let Ok(v) = value.to_str() else { continue };
                for tag in v.split([' ', ',', '\t']).filter(|t| !t.is_empty()) {
                    if tag.len() + 2 <= tiered::MAX_TAG_LEN && !tags.iter().any(|t| t == tag) {
                        tags.push(tag.to_owned());
                    }
                }
            }
        }
        tags.truncate(tiered::MAX_TAGS - 1);
        tags
    }

    /// Starts one background revalidation for `primary` unless one is running.
    fn revalidate_in_background<S, ReqB, ResB>(
        self: &Arc<Self>,
        svc: S,
        req: &Request<ReqB>,
        primary: &str,
        stale: Arc<Stored>,
    ) where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqB: Default + Send + 'static,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        if self.flights.running(primary) {
            return;
        }
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(req.uri().clone())
            .version(req.version());
        if let Some(h) = builder.headers_mut() {
            *h = background_headers(req.headers(), &stale);
        }
        let Ok(background) = builder.body(ReqB::default()) else {
            return;
        };
        let shared = Arc::clone(self);
        let primary = primary.to_owned();
        tokio::spawn(async move {
            let refresh = async {
                if let Ok(res) = shared
                    .fetch(svc, background, primary, Some(stale), "stale", None)
                    .await
                {
                    // Drain the body so a streamed response completes.
                    let _ = http_body_util::BodyExt::collect(res.into_body()).await;
                }
            };
            // Nobody waits on a background refresh: bound it so a hung origin
            // cannot hold the key's flight (and its waiters) forever.
            let _ = tokio::time::timeout(WAIT_LIMIT, refresh).await;
        });
    }

    /// Invalidates what an unsafe request changed (RFC 9111 §4.4): the target
    /// URI, and `Location` / `Content-Location` when on the same host.
    async fn invalidate_after_unsafe(
        &self,
        primary: Option<&str>,
        uri: &Uri,
        req_headers: &HeaderMap,
        headers: &HeaderMap,
    ) {
        if let Some(primary) = primary {
            let _ = self.purge_primary(primary, PurgeMode::Hard).await;
        }
        let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
            req_headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        let Some(authority) = authority else { return };
        let scheme = uri.scheme_str().unwrap_or(&self.default_scheme).to_owned();
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let absolute = if target.starts_with('/') {
                format!("{scheme}://{authority}{target}")
            } else {
                target.to_owned()
            };
            let Ok(parsed) = absolute.parse::<Uri>() else {
                continue;
            };
            let same_host = parsed
                .authority()
                .is_some_and(|a| a.as_str().eq_ignore_ascii_case(&authority));
            if !same_host {
                continue;
            }
            // Absolute: the key's host comes from `parsed`; the tenant from the request.
            let tenant = self.tenant_header.as_ref();
            if let Some(k) = key::primary(
                &parsed,
                req_headers,
                &self.default_scheme,
                tenant,
                &Default::default(),
            ) {
                let _ = self.purge_primary(&k, PurgeMode::Hard).await;
            }
        }
    }

    async fn bypass<S, ReqB, ResB>(
        &self,
        svc: S,
        req: Request<ReqB>,
        why: &'static str,
    ) -> Result<Response<Body>, BoxError>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let res = call_origin(self, svc, req).await?;
        Ok(self.pass(res, why, XCache::Bypass))
    }

    fn pass<ResB>(&self, res: Response<ResB>, why: &'static str, x: XCache) -> Response<Body>
    where
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        Counters::bump(&self.counters.bypass);
        let (mut parts, b) = res.into_parts();
        let fwd = if why == "method" { "method" } else { "bypass" };
        let status = CacheStatus {
            fwd: Some(fwd),
            fwd_status: Some(parts.status.as_u16()),
            detail: (fwd == "bypass").then_some(why),
            ..Default::default()
        };
        self.strip_tags(&mut parts.headers);
        status.apply(&mut parts.headers, &self.name, x);
        Response::from_parts(parts, body::boxed(b))
    }

    fn finish_pass(
        &self,
        res: Response<Body>,
        client: &Request<()>,
        status: &CacheStatus,
        x: XCache,
    ) -> Response<Body> {
        let (mut parts, b) = res.into_parts();
        self.strip_tags(&mut parts.headers);
        status.apply(&mut parts.headers, &self.name, x);
        let b = if client.method() == Method::HEAD {
            body::empty()
        } else {
            b
        };
        Response::from_parts(parts, b)
    }

    fn strip_tags(&self, headers: &mut HeaderMap) {
        if !self.expose_tags {
            for name in &self.tag_headers {
                headers.remove(name);
            }
        }
    }

    /// Answers `req` from a stored response: `Age`, HEAD, and 304 when the
    /// client's validators match.
    fn serve(
        &self,
        req: &Request<impl Sized>,
        stored: &Stored,
        now: u64,
        status: &CacheStatus,
        x: XCache,
    ) -> Response<Body> {
        let mut headers = stored.header_map();
        let age = policy::age_seconds(stored.age(now));
        headers.insert(header::AGE, HeaderValue::from(age));
        let not_modified = stored.status == 200 && client_validators_match(req.headers(), &headers);
        let (code, body) = if not_modified {
            for name in [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
            ] {
                headers.remove(name);
            }
            (StatusCode::NOT_MODIFIED, body::empty())
        } else if let Some(range) = requested_range(req, stored, &headers) {
            match range {
                Some((start, end)) => {
                    let total = stored.body.len();
                    let content_range = format!("bytes {start}-{end}/{total}");
                    if let Ok(v) = HeaderValue::from_str(&content_range) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
                    (
                        StatusCode::PARTIAL_CONTENT,
                        body::full(stored.body.slice(start..=end)),
                    )
                }
                None => {
                    let content_range = format!("bytes */{}", stored.body.len());
                    if let Ok(v) = HeaderValue::from_str(&content_range) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    (StatusCode::RANGE_NOT_SATISFIABLE, body::empty())
                }
            }
        } else {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
            let b = if req.method() == Method::HEAD {
                body::empty()
            } else {
                body::full(stored.body.clone())
            };
            (stored.status(), b)
        };
        status.apply(&mut headers, &self.name, x);
        let mut res = Response::new(body);
        *res.status_mut() = code;
        *res.headers_mut() = headers;
        res
    }

    fn clock_duration(&self) -> Duration {
        Duration::from_nanos(self.clock.now().as_nanos())
    }
}

/// The headers of a background revalidation: the triggering client's, minus
/// its credentials (unless the stored response varies on them), its own
/// conditionals and ranges, and anything describing a request body.
fn background_headers(client: &HeaderMap, stale: &Stored) -> HeaderMap {
    let mut headers = client.clone();
    let request_only = [
        header::RANGE,
        header::IF_RANGE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ];
    for name in request_only.iter().chain(CLIENT_CONDITIONALS.iter()) {
        headers.remove(name);
    }
    for name in [header::AUTHORIZATION, header::COOKIE] {
        if !stale.vary.iter().any(|v| v == name.as_str()) {
            headers.remove(name);
        }
    }
    headers
}

/// Whether a refusal to store comes from the response alone, for a request
/// that carried no credentials and did not itself ask not to store.
fn refusal_is_the_origins(reason: policy::NotStored, req: &HeaderMap) -> bool {
    use policy::NotStored;
    let credentials = req.contains_key(header::AUTHORIZATION) || req.contains_key(header::COOKIE);
    let request_no_store = policy::RequestRules::from_headers(req).no_store;
    matches!(
        reason,
        NotStored::NoStore | NotStored::Private | NotStored::VaryStar
    ) && !credentials
        && !request_no_store
}

/// The key a response is stored under for a request with `headers`: the
/// primary key, or the variant of it for the response's `Vary` fields.
fn variant_key(primary: &str, stored: &Stored, headers: &HeaderMap) -> String {
    if stored.vary.is_empty() {
        return primary.to_owned();
    }
    let names: Vec<HeaderName> = stored
        .vary
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    key::variant(primary, &names, headers)
}

/// The byte range a GET asks of a stored 200 (RFC 9110 §14.2): `None` when
/// the whole response is to be sent (no Range, several ranges, a Range we do
/// not parse, an `If-Range` that does not match); `Some(None)` when the range
/// cannot be satisfied; `Some(Some((first, last)))` otherwise (inclusive).
fn requested_range(
    req: &Request<impl Sized>,
    stored: &Stored,
    headers: &HeaderMap,
) -> Option<Option<(usize, usize)>> {
    if req.method() != Method::GET || stored.status != 200 {
        return None;
    }
    let spec = req.headers().get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(if_range) = req.headers().get(header::IF_RANGE) {
        // Only a strong ETag or the exact Last-Modified date validates.
        let matches = headers
            .get(header::ETAG)
            .is_some_and(|e| e == if_range && !e.as_bytes().starts_with(b"W/"))
            || headers
                .get(header::LAST_MODIFIED)
                .is_some_and(|lm| lm == if_range);
        if !matches {
            return None;
        }
    }
    let ranges = spec.strip_prefix("bytes=")?;
    if ranges.contains(',') {
        return None;
    }
    let (first, last) = ranges.split_once('-')?;
    let len = stored.body.len();
    let parse = |s: &str| s.trim().parse::<usize>().ok();
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let n = parse(last)?;
            if n == 0 || len == 0 {
                return Some(None);
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, true) => (parse(first)?, len.saturating_sub(1)),
        (false, false) => {
            let (a, b) = (parse(first)?, parse(last)?);
            if b < a {
                return None;
            }
            (a, b.min(len.saturating_sub(1)))
        }
        (true, true) => return None,
    };
    if start >= len {
        return Some(None);
    }
    Some(Some((start, end)))
}

fn add_validators(headers: &mut HeaderMap, stale: &Stored) {
    if let Some(etag) = stale
        .header("etag")
        .and_then(|v| HeaderValue::from_bytes(v).ok())
    {
        headers.insert(header::IF_NONE_MATCH, etag);
    }
    if let Some(lm) = stale
        .header("last-modified")
        .and_then(|v| HeaderValue::from_bytes(v).ok())
    {
        headers.insert(header::IF_MODIFIED_SINCE, lm);
    }
}

/// The stored headers updated with a 304's (RFC 9111 §4.3.4).
fn merge_304(
    stale: &Stored,
    fresh: &HeaderMap,
    store_set_cookie: bool,
    now: Duration,
) -> HeaderMap {
    let mut merged = stale.header_map();
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in fresh {
        // A 304's cookie is for the client that triggered it, never for the
        // stored copy (unless cookies are stored at all).
        if kept_on_update(name) || (name == header::SET_COOKIE && !store_set_cookie) {
            continue;
        }
        if !replaced.contains(&name) {
            merged.remove(name);
            replaced.push(name);
        }
        merged.append(name.clone(), value.clone());
    }
    // The stored Age and Date are superseded by the new response's timing.
    if !fresh.contains_key(header::AGE) {
        merged.remove(header::AGE);
    }
    if !fresh.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + now);
        if let Ok(v) = HeaderValue::from_str(&date) {
            merged.insert(header::DATE, v);
        }
    }
    merged
}

/// RFC 9110 §13.1.2 and §13.2.2: `If-None-Match` (weak comparison) decides
/// when present; otherwise `If-Modified-Since` against `Last-Modified`.
fn client_validators_match(req: &HeaderMap, res: &HeaderMap) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH) {
        return match res.get(header::ETAG) {
            Some(etag) => crate::origin::if_none_match_matches(req, etag),
            // `*` matches any current representation, tagged or not.
            None => inm.as_bytes().trim_ascii() == b"*",
        };
    }
    let (Some(ims), Some(lm)) = (
        policy::http_date(req, header::IF_MODIFIED_SINCE),
        policy::http_date(res, header::LAST_MODIFIED),
    ) else {
        return false;
    };
    lm <= ims
}

fn gateway_timeout(name: &str) -> Response<Body> {
    let mut res = Response::new(body::empty());
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    let status = CacheStatus {
        detail: Some("only-if-cached"),
        ..Default::default()
    };
    status.apply(res.headers_mut(), name, XCache::Miss);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn client_validators() {
        let res = h(&[
            ("etag", "\"a\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(client_validators_match(
            &h(&[("if-none-match", "W/\"a\"")]),
            &res
        ));
        assert!(client_validators_match(
            &h(&[("if-none-match", "\"b\", \"a\"")]),
            &res
        ));
        assert!(!client_validators_match(
            &h(&[("if-none-match", "\"b\"")]),
            &res
        ));
        assert!(client_validators_match(
            &h(&[("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]),
            &res
        ));
        assert!(!client_validators_match(
            &h(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]),
            &res
        ));
        // If-None-Match takes precedence over If-Modified-Since.
        assert!(!client_validators_match(
            &h(&[
                ("if-none-match", "\"b\""),
                ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")
            ]),
            &res
        ));
        assert!(!client_validators_match(
            &h(&[("if-modified-since", "garbage")]),
            &res
        ));
    }
}
