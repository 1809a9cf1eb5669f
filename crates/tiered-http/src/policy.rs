//! RFC 9111 as decisions: may this response be stored, for how long is it fresh,
//! how old is it now, and may this request be answered with it.
//!
//! We implement the rules here rather than wrap the `http-cache-semantics`
//! crate, because a shared cache in front of many users needs what it lacks:
//! `stale-while-revalidate` / `stale-if-error` (RFC 5861), targeted fields such
//! as `CDN-Cache-Control` (RFC 9213), qualified `private` / `no-cache`, and a
//! stored form that does not keep the first requester's `Authorization` or
//! `Cookie` headers (that crate serializes the whole request, and would put
//! them in Redis).
//!
//! # Freshness, in the order RFC 9111 §4.2.1 gives it
//!
//! 1. `s-maxage` (we are a shared cache), then `max-age`: an invalid value
//!    means "already stale";
//! 2. `Expires` minus `Date` (an invalid `Expires`, such as `0`, is in the past);
//! 3. otherwise a heuristic — **off by default**: a response with no explicit
//!    lifetime is stored only if it has a validator, and then always revalidated.
//!    When enabled, it is a fraction of the time since `Last-Modified`, capped.
//!
//! When a targeted field is configured and present (`CDN-Cache-Control`,
//! RFC 9213), its directives replace `Cache-Control`'s *and* `Expires` for this
//! cache; the response still carries both to the client.
//!
//! # Age (§4.2.3)
//!
//! `corrected_initial_age = max(response_time − Date, Age + response_delay)`,
//! and the current age adds the time the response has been resident here.
//! The initial age is computed once, when the response is stored, and travels
//! with it through L2 so every instance reports the same age.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, StatusCode};

use crate::directives::{parse_delta_seconds, Directives, MAX_DELTA};

/// Statuses a cache may store with a heuristic lifetime (RFC 9110 §15.1),
/// minus 206: we do not store partial content.
const HEURISTICALLY_CACHEABLE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Statuses we understand well enough to store with explicit freshness: the
/// heuristically cacheable ones plus redirects and common errors. Partial
/// content and 304 are never stored; an unknown status (say 599) is not
/// either — `must-understand` relies on that (RFC 9111 §5.2.2.3).
pub(crate) fn understood(status: StatusCode) -> bool {
    let code = status.as_u16();
    HEURISTICALLY_CACHEABLE.contains(&code)
        || matches!(
            code,
            302 | 303 | 307 | 400 | 403 | 406 | 451 | 500 | 502 | 503 | 504
        )
}

/// The freshness settings a [`CacheLayer`](crate::CacheLayer) applies.
#[derive(Debug, Clone)]
pub(crate) struct FreshnessConfig {
    /// Fraction of `Date − Last-Modified` used as a heuristic lifetime; `None`: off.
    pub heuristic: Option<f64>,
    /// The cap on a heuristic lifetime.
    pub heuristic_max: Duration,
    /// Targeted fields, most specific first (e.g. `cdn-cache-control`).
    pub targeted: Vec<HeaderName>,
    /// Our device name for directives targeted with `;name`.
    pub device: String,
    /// Store responses carrying `Set-Cookie` (the cookie is stored too).
    pub store_set_cookie: bool,
    /// Serve stale on origin errors for this long even without `stale-if-error`.
    pub default_stale_if_error: Duration,
}

/// Why a response is not stored (shown in `Cache-Status` as `detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoLifetime,
}

impl NotStored {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NoLifetime => "no-lifetime",
        }
    }
}

/// How a storable response is to be kept and reused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// Age when it arrived (corrected, §4.2.3).
    pub initial_age: Duration,
    /// `stale-while-revalidate` window past the lifetime.
    pub swr: Duration,
    /// `stale-if-error` window past the lifetime.
    pub sie: Duration,
    /// Never serve stale (must-revalidate, proxy-revalidate, s-maxage).
    pub must_revalidate: bool,
    /// Always revalidate before reuse (unqualified `no-cache`).
    pub no_cache: bool,
    /// Header fields that must not be stored (qualified `private` / `no-cache`,
    /// fields listed in `Connection`).
    pub strip: Vec<HeaderName>,
    /// Whether the response has a validator (`ETag` or `Last-Modified`).
    pub has_validator: bool,
    /// How long the origin took (response time − request time).
    pub delay: Duration,
}

/// The directives that govern this cache for a response: the first targeted
/// field present, else `Cache-Control`. The flag says whether a targeted field
/// was used (then `Expires` is ignored).
fn governing(headers: &HeaderMap, cfg: &FreshnessConfig) -> (Directives, bool) {
    for name in &cfg.targeted {
        if headers.contains_key(name) {
            let d = Directives::parse_all(headers.get_all(name)).for_target(&cfg.device);
            if !d.is_empty() {
                return (d, true);
            }
        }
    }
    (
        Directives::parse_all(headers.get_all(http::header::CACHE_CONTROL)),
        false,
    )
}

/// Decides whether the response to `method` with `req_headers` may be stored,
/// and how. `request_time` / `response_time` are when the request left and the
/// response arrived (seconds since the epoch, fractional).
pub(crate) fn plan(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    res_headers: &HeaderMap,
    request_time: Duration,
    response_time: Duration,
    cfg: &FreshnessConfig,
) -> Result<Plan, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    let req_cc = Directives::parse_all(req_headers.get_all(http::header::CACHE_CONTROL));
    if req_cc.has("no-store") {
        return Err(NotStored::NoStore);
    }
    let (cc, targeted) = governing(res_headers, cfg);
    let is_understood = understood(status);
    // must-understand: store only if we understand the status; then no-store
    // is to be ignored (RFC 9111 §5.2.2.3).
    if cc.has("must-understand") {
        if !is_understood {
            return Err(NotStored::Status);
        }
    } else if cc.has("no-store") {
        return Err(NotStored::NoStore);
    }
    if !is_understood {
        return Err(NotStored::Status);
    }
    let mut strip: Vec<HeaderName> = Vec::new();
    if let Some(private) = cc.get("private") {
        match private.value.as_deref() {
            // Qualified: only the listed fields are private (§5.2.2.7).
            Some(v) if !v.trim().is_empty() => add_names(&mut strip, &cc.field_names("private")),
            _ => return Err(NotStored::Private),
        }
    }
    if req_headers.contains_key(http::header::AUTHORIZATION)
        && !(cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate"))
    {
        return Err(NotStored::Authorization);
    }
    if res_headers.contains_key(http::header::SET_COOKIE) && !cfg.store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    let vary_star = res_headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "*");
    // `*`, or a field name we cannot parse (we could not key on it): never stored.
    let vary_unusable = res_headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .any(|f| HeaderName::from_bytes(f.as_bytes()).is_err())
        })
    });
    if vary_star || vary_unusable {
        return Err(NotStored::VaryStar);
    }

    let date = http_date(res_headers, http::header::DATE);
    let lifetime = explicit_lifetime(&cc, targeted, res_headers, date, response_time)
        .or_else(|| heuristic_lifetime(&cc, status, res_headers, date, response_time, cfg));
    let has_validator = res_headers.contains_key(http::header::ETAG)
        || res_headers.contains_key(http::header::LAST_MODIFIED);
    let no_cache = cc
        .get("no-cache")
        .is_some_and(|d| d.value.as_deref().is_none_or(|v| v.trim().is_empty()));
    if !no_cache {
        // Qualified no-cache: the listed fields may not be reused without
        // revalidation; we simply never store them.
        add_names(&mut strip, &cc.field_names("no-cache"));
    }
    let swr = window(&cc, "stale-while-revalidate");
    let sie = window(&cc, "stale-if-error").max(cfg.default_stale_if_error);
    let must_revalidate =
        cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("s-maxage");
    let lifetime = lifetime.unwrap_or(Duration::ZERO);
    // Without a lifetime or a validator, a stored copy could only ever be
    // refetched in full: not worth storing (and "default caching" is off).
    let has_explicit = cc.has("max-age")
        || cc.has("s-maxage")
        || (!targeted && res_headers.contains_key(http::header::EXPIRES));
    if lifetime.is_zero() && !has_validator && !has_explicit && swr.is_zero() {
        return Err(NotStored::NoLifetime);
    }
    // Fields named in Connection are hop-by-hop (§3.1).
    for value in res_headers.get_all(http::header::CONNECTION) {
        if let Ok(v) = value.to_str() {
            let names: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect();
            add_names(&mut strip, &names);
        }
    }

    // Age (§4.2.3).
    let age_value = age_header(res_headers);
    let apparent = date.map_or(Duration::ZERO, |d| response_time.saturating_sub(d));
    let delay = response_time.saturating_sub(request_time);
    let initial_age = apparent.max(age_value.saturating_add(delay));

    Ok(Plan {
        lifetime,
        initial_age,
        swr,
        sie,
        must_revalidate,
        no_cache,
        strip,
        has_validator,
        delay,
    })
}

fn add_names(into: &mut Vec<HeaderName>, names: &[String]) {
    for name in names {
        if let Ok(h) = HeaderName::from_bytes(name.as_bytes()) {
            if !into.contains(&h) {
                into.push(h);
            }
        }
    }
}

fn window(cc: &Directives, name: &str) -> Duration {
    cc.seconds(name)
        .flatten()
        .map_or(Duration::ZERO, Duration::from_secs)
}

fn explicit_lifetime(
    cc: &Directives,
    targeted: bool,
    res: &HeaderMap,
    date: Option<Duration>,
    response_time: Duration,
) -> Option<Duration> {
    if let Some(v) = cc.seconds("s-maxage") {
        return Some(Duration::from_secs(v.unwrap_or(0)));
    }
    if let Some(v) = cc.seconds("max-age") {
        return Some(Duration::from_secs(v.unwrap_or(0)));
    }
    if targeted {
        return None;
    }
    let expires = res.get(http::header::EXPIRES)?;
    // An invalid Expires (e.g. "0") means "already expired" (§5.3).
    let Some(expires) = expires.to_str().ok().and_then(parse_http_date) else {
        return Some(Duration::ZERO);
    };
    Some(expires.saturating_sub(date.unwrap_or(response_time)))
}

fn heuristic_lifetime(
    cc: &Directives,
    status: StatusCode,
    res: &HeaderMap,
    date: Option<Duration>,
    response_time: Duration,
    cfg: &FreshnessConfig,
) -> Option<Duration> {
    let fraction = cfg.heuristic?;
    if !(HEURISTICALLY_CACHEABLE.contains(&status.as_u16()) || cc.has("public")) {
        return None;
    }
    let last_modified = http_date(res, http::header::LAST_MODIFIED)?;
    let since = date.unwrap_or(response_time).saturating_sub(last_modified);
    Some(since.mul_f64(fraction).min(cfg.heuristic_max))
}

/// The `Age` header as a duration. `Age` is a single delta-seconds (§5.1);
/// anything else — several lines, a list, a sign, a fraction, parameters — is
/// invalid, and we take the safe reading of an invalid age: as old as an age
/// can be, so the response is stale and revalidated before it is reused.
pub(crate) fn age_header(headers: &HeaderMap) -> Duration {
    let mut lines = headers.get_all(http::header::AGE).iter();
    let (Some(first), None) = (lines.next(), lines.next()) else {
        return if headers.contains_key(http::header::AGE) {
            Duration::from_secs(MAX_DELTA)
        } else {
            Duration::ZERO
        };
    };
    first
        .to_str()
        .ok()
        .and_then(parse_delta_seconds)
        .map_or(Duration::from_secs(MAX_DELTA), Duration::from_secs)
}

/// A date header as time since the epoch (all three HTTP-date formats).
pub(crate) fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<Duration> {
    headers.get(name)?.to_str().ok().and_then(parse_http_date)
}

fn parse_http_date(text: &str) -> Option<Duration> {
    let t = httpdate::parse_http_date(text.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok()
}

/// What a request asks of a stored response (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestRules {
    /// `no-cache` (or `Pragma: no-cache` without Cache-Control): revalidate.
    pub no_cache: bool,
    pub max_age: Option<Duration>,
    pub min_fresh: Option<Duration>,
    /// `max-stale`: `Some(None)` accepts any staleness.
    pub max_stale: Option<Option<Duration>>,
    pub only_if_cached: bool,
    /// `no-store`: this exchange must not be stored.
    pub no_store: bool,
}

impl RequestRules {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let cc = Directives::parse_all(headers.get_all(http::header::CACHE_CONTROL));
        let pragma_no_cache = !headers.contains_key(http::header::CACHE_CONTROL)
            && headers
                .get_all(http::header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                });
        let secs = |name: &str| {
            cc.seconds(name)
                .map(|v| Duration::from_secs(v.unwrap_or(0)))
        };
        RequestRules {
            no_cache: cc.has("no-cache") || pragma_no_cache,
            max_age: secs("max-age"),
            min_fresh: secs("min-fresh"),
            max_stale: cc.seconds("max-stale").map(|v| v.map(Duration::from_secs)),
            only_if_cached: cc.has("only-if-cached"),
            no_store: cc.has("no-store"),
        }
    }
}

/// How a stored response may answer a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Fresh (or stale and acceptable to the client): serve it.
    Fresh,
    /// Stale but within `stale-while-revalidate`: serve it and revalidate in
    /// the background.
    StaleWhileRevalidate,
    /// Must be revalidated (or refetched) first.
    Revalidate,
}

/// The freshness facts of one stored response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Freshness {
    pub lifetime: Duration,
    pub age: Duration,
    pub swr: Duration,
    pub must_revalidate: bool,
    pub no_cache: bool,
    /// Marked stale by a soft purge.
    pub purged: bool,
}

impl Freshness {
    pub(crate) fn is_fresh(&self) -> bool {
        !self.purged && self.age < self.lifetime
    }

    pub(crate) fn staleness(&self) -> Duration {
        if self.purged {
            return self.age.saturating_sub(self.lifetime.min(self.age));
        }
        self.age.saturating_sub(self.lifetime)
    }

    /// Decides reuse for a request with `rules` (RFC 9111 §4.2.4, §5.2.1).
    pub(crate) fn reuse(&self, rules: &RequestRules) -> Reuse {
        if self.no_cache || rules.no_cache {
            return Reuse::Revalidate;
        }
        if rules.max_age.is_some_and(|m| self.age > m) {
            return Reuse::Revalidate;
        }
        if let Some(min_fresh) = rules.min_fresh {
            if self.lifetime.saturating_sub(self.age) < min_fresh || !self.is_fresh() {
                return Reuse::Revalidate;
            }
        }
        if self.is_fresh() {
            return Reuse::Fresh;
        }
        if self.must_revalidate {
            return Reuse::Revalidate;
        }
        if let Some(max_stale) = rules.max_stale {
            if max_stale.is_none_or(|m| self.staleness() <= m) {
                return Reuse::Fresh;
            }
        }
        if self.staleness() < self.swr {
            return Reuse::StaleWhileRevalidate;
        }
        Reuse::Revalidate
    }
}

/// Caps a duration at 2^31 seconds for the `Age` header (§5.1).
pub(crate) fn age_seconds(age: Duration) -> u64 {
    age.as_secs().min(MAX_DELTA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cfg() -> FreshnessConfig {
        FreshnessConfig {
            heuristic: None,
            heuristic_max: Duration::from_secs(86400),
            targeted: vec![HeaderName::from_static("cdn-cache-control")],
            device: "tiered".into(),
            store_set_cookie: false,
            default_stale_if_error: Duration::ZERO,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const T: Duration = Duration::from_secs(1_700_000_000);

    fn plan_for(req: &[(&str, &str)], res: &[(&str, &str)]) -> Result<Plan, NotStored> {
        plan(
            &Method::GET,
            &headers(req),
            StatusCode::OK,
            &headers(res),
            T,
            T,
            &cfg(),
        )
    }

    #[test]
    fn lifetime_order_s_maxage_max_age_expires() {
        let p = plan_for(&[], &[("cache-control", "max-age=10, s-maxage=20")]).unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(20));
        assert!(p.must_revalidate, "s-maxage implies proxy-revalidate");
        let p = plan_for(
            &[],
            &[
                ("cache-control", "max-age=10"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ],
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(10));
        let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + T);
        let expires = httpdate::fmt_http_date(std::time::UNIX_EPOCH + T + Duration::from_secs(30));
        let p = plan_for(&[], &[("date", &date), ("expires", &expires)]).unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(30));
        let p = plan_for(&[], &[("expires", "0")]).unwrap();
        assert_eq!(p.lifetime, Duration::ZERO);
        let p = plan_for(&[], &[("cache-control", "max-age=abc")]).unwrap();
        assert_eq!(p.lifetime, Duration::ZERO);
    }

    #[test]
    fn targeted_field_wins_and_ignores_expires() {
        let p = plan_for(
            &[],
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=99"),
            ],
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(99));
        assert_eq!(
            plan_for(
                &[],
                &[
                    ("cache-control", "max-age=60"),
                    ("cdn-cache-control", "no-store")
                ]
            ),
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn targeted_directives_for_this_device() {
        let mut c = cfg();
        c.targeted = vec![HeaderName::from_static("surrogate-control")];
        let res = headers(&[
            ("cache-control", "no-store"),
            ("surrogate-control", "max-age=10000;tiered"),
        ]);
        let p = plan(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &res,
            T,
            T,
            &c,
        )
        .unwrap();
        assert_eq!(p.lifetime, Duration::from_secs(10000));
        let res = headers(&[("surrogate-control", "max-age=10000;other")]);
        assert_eq!(
            plan(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &res,
                T,
                T,
                &c
            ),
            Err(NotStored::NoLifetime)
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            plan_for(&[], &[("cache-control", "private, max-age=60")]),
            Err(NotStored::Private)
        );
        assert_eq!(
            plan_for(&[], &[("cache-control", "no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            plan_for(
                &[("cache-control", "no-store")],
                &[("cache-control", "max-age=9")]
            ),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            plan_for(
                &[("authorization", "Bearer x")],
                &[("cache-control", "max-age=60")]
            ),
            Err(NotStored::Authorization)
        );
        assert!(plan_for(
            &[("authorization", "Bearer x")],
            &[("cache-control", "public, max-age=60")]
        )
        .is_ok());
        assert_eq!(
            plan_for(
                &[],
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            plan_for(&[], &[("cache-control", "max-age=60"), ("vary", "a, *")]),
            Err(NotStored::VaryStar)
        );
        assert_eq!(plan_for(&[], &[]), Err(NotStored::NoLifetime));
        assert!(
            plan_for(&[], &[("etag", "\"x\"")]).is_ok(),
            "a validator is worth keeping"
        );
    }

    #[test]
    fn qualified_private_strips_fields() {
        let p = plan_for(
            &[],
            &[
                ("cache-control", "private=\"x-user\", max-age=60"),
                ("x-user", "ada"),
            ],
        )
        .unwrap();
        assert_eq!(p.strip, vec![HeaderName::from_static("x-user")]);
    }

    #[test]
    fn age_uses_date_and_age_header() {
        let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + T - Duration::from_secs(5));
        let p = plan(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(&[
                ("cache-control", "max-age=60"),
                ("date", &date),
                ("age", "3"),
            ]),
            T - Duration::from_secs(1),
            T,
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            p.initial_age,
            Duration::from_secs(5),
            "apparent age 5 > 3 + 1"
        );
        let invalid = Duration::from_secs(MAX_DELTA);
        assert_eq!(age_header(&headers(&[("age", "-3")])), invalid);
        assert_eq!(age_header(&headers(&[("age", "7, 9")])), invalid);
        assert_eq!(age_header(&headers(&[("age", "1"), ("age", "1")])), invalid);
        assert_eq!(
            age_header(&headers(&[("age", "12")])),
            Duration::from_secs(12)
        );
        assert_eq!(age_header(&headers(&[])), Duration::ZERO);
    }

    #[test]
    fn reuse_rules() {
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            age: Duration::from_secs(70),
            swr: Duration::from_secs(30),
            must_revalidate: false,
            no_cache: false,
            purged: false,
        };
        let none = RequestRules::default();
        assert_eq!(f.reuse(&none), Reuse::StaleWhileRevalidate);
        let any_stale = RequestRules {
            max_stale: Some(None),
            ..Default::default()
        };
        assert_eq!(f.reuse(&any_stale), Reuse::Fresh);
        let mr = Freshness {
            must_revalidate: true,
            ..f
        };
        assert_eq!(mr.reuse(&any_stale), Reuse::Revalidate);
        let fresh = Freshness {
            age: Duration::from_secs(10),
            ..f
        };
        assert_eq!(fresh.reuse(&none), Reuse::Fresh);
        let max_age = RequestRules {
            max_age: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert_eq!(fresh.reuse(&max_age), Reuse::Revalidate);
        let purged = Freshness {
            purged: true,
            ..fresh
        };
        assert_eq!(purged.reuse(&none), Reuse::StaleWhileRevalidate);
        let pragma = RequestRules::from_headers(&headers(&[("pragma", "no-cache")]));
        assert!(pragma.no_cache);
        let both = RequestRules::from_headers(&headers(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-stale"),
        ]));
        assert!(!both.no_cache);
    }
}
