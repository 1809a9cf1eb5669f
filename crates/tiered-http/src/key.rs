//! The cache key: what makes two requests "the same" to this cache.
//!
//! A key is built from exactly these parts and nothing else:
//!
//! ```text
//! r|<tenant>|<scheme>://<host><path>?<query>
//! ```
//!
//! * **scheme** and **host** lower-cased, the default port dropped. The host comes
//!   from the request URI (HTTP/2, absolute-form) or the `Host` header — never
//!   from `X-Forwarded-Host` or `Forwarded`: those are *unkeyed*, and the layer
//!   removes them from requests it may store the response to (see
//!   [`CacheLayerBuilder::unkeyed_headers`](crate::CacheLayerBuilder::unkeyed_headers)),
//!   so they cannot change what is stored under a key.
//! * **path** with percent-encoding normalized (hex digits upper-cased,
//!   unreserved characters decoded, RFC 3986 §6.2.2). Dot segments are *not*
//!   resolved: the origin receives the path as sent, so the key must too, or
//!   `/a/../b` could be stored under `/b`.
//! * **query** as sent, minus the parameters a rule says to ignore (e.g.
//!   `utm_source`), optionally sorted.
//! * **tenant**: the value of a configured header (e.g. `X-Tenant`), so two
//!   tenants never share an entry.
//!
//! The method is not part of the key: only `GET` responses are stored, and
//! `HEAD` is answered from them.
//!
//! Responses that `Vary` are stored under a *variant key*: the primary key plus
//! a hash of the request's values for the listed fields (normalized:
//! `Accept-Encoding` as a sorted set of codings, other fields with whitespace
//! trimmed). The primary key then holds the list of fields.

use http::{HeaderMap, HeaderName, Uri};
use sha2::{Digest, Sha256};

/// How a route builds keys (from its [`Rule`](crate::Rule)).
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyOptions {
    /// Query parameters left out of the key.
    pub ignore_params: Vec<String>,
    /// Sort the remaining query parameters.
    pub sort_query: bool,
}

/// The prefix of every response key.
pub(crate) const RESPONSE: &str = "r|";

/// Builds the key for a request, or `None` if it has no usable host.
pub(crate) fn primary(
    uri: &Uri,
    headers: &HeaderMap,
    default_scheme: &str,
    tenant_header: Option<&HeaderName>,
    opts: &KeyOptions,
) -> Option<String> {
    // Several values, or a value that is not text, could be read differently
    // by the origin than by us: no key (the request bypasses the cache).
    let tenant = match tenant_header {
        Some(name) => single(headers, name)?.unwrap_or(""),
        None => "",
    };
    let host = single(headers, &http::header::HOST)?;
    let scheme = uri
        .scheme_str()
        .unwrap_or(default_scheme)
        .to_ascii_lowercase();
    let authority = match (uri.authority(), host) {
        // An absolute URI and a Host that disagree: the origin may use either.
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => return None,
        (Some(a), _) => a.as_str().to_owned(),
        (None, h) => h?.to_owned(),
    };
    let host = normalize_host(&authority, &scheme)?;
    let path = normalize_percent(if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    });
    let query = uri.query().map(|q| normalize_query(q, opts));
    Some(compose(
        tenant,
        &format!("{scheme}://{host}{path}"),
        query.as_deref(),
    ))
}

/// The key for an absolute URL given to a purge: same normalization.
pub(crate) fn for_url(url: &str, tenant: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = normalize_host(uri.authority()?.as_str(), &scheme)?;
    let path = normalize_percent(if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    });
    let query = uri
        .query()
        .map(|q| normalize_query(q, &KeyOptions::default()));
    Some(compose(
        tenant,
        &format!("{scheme}://{host}{path}"),
        query.as_deref(),
    ))
}

/// The key prefix for a URL prefix (`https://host/path-prefix`), for purges by
/// prefix: the scheme and host normalized, the rest as given.
pub(crate) fn prefix_for(url_prefix: &str, tenant: &str) -> Option<String> {
    let (scheme, rest) = url_prefix.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let scheme = scheme.to_ascii_lowercase();
    let host = normalize_host(authority, &scheme)?;
    Some(format!(
        "{RESPONSE}{}|{scheme}://{host}{}",
        escape(tenant),
        normalize_percent(path)
    ))
}

fn compose(tenant: &str, url: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{RESPONSE}{}|{url}?{q}", escape(tenant)),
        None => format!("{RESPONSE}{}|{url}", escape(tenant)),
    }
}

/// Tenants may contain `|`; escape it so `a|b` + `c` never equals `a` + `b|c`.
fn escape(tenant: &str) -> String {
    tenant.replace('\\', "\\\\").replace('|', "\\|")
}

fn normalize_host(authority: &str, scheme: &str) -> Option<String> {
    // A '/', '?' or '#' cannot be part of a host (RFC 3986 §3.2.2) and would
    // read as the start of the path, query or fragment in the key. Userinfo
    // ('@') has no place in an http(s) authority (RFC 9110 §4.2.4) and is
    // not dropped but refused: `Host: evil.test\@example.com` would
    // otherwise be keyed as `example.com` while the origin sees the whole
    // value, and a page that echoes its Host into links (browsers read
    // `evil.test` as the host, stopping at the '\') would be stored for
    // every visitor. So is '\', for the same reason.
    if authority.is_empty()
        || authority
            .bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b' ' | b'/' | b'?' | b'#' | b'@' | b'\\'))
    {
        return None;
    }
    let lower = authority.to_ascii_lowercase();
    let default_port = match scheme {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    Some(match default_port {
        Some(port) if lower.ends_with(port) => lower[..lower.len() - port.len()].to_owned(),
        _ => lower,
    })
}

/// Percent-encoding normalization (RFC 3986 §6.2.2.1-2): upper-case hex, decode
/// unreserved characters. Malformed escapes are kept as they are.
pub(crate) fn normalize_percent(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let byte = (h * 16 + l) as u8;
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    out.push(byte as char);
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // Not an escape: copy the character (the input is a valid &str).
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The only value of `name`: `Some(None)` if absent, `None` if repeated or
/// not visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Option<&'a str>> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Some(None),
        (Some(v), None) => v.to_str().ok().map(Some),
        _ => None,
    }
}

/// Whether a path could mean something else after normalization (dot
/// segments, encoded slashes or dots, empty segments): such requests bypass the
/// cache, so a rule or a key can never be fooled by `/static/../account`.
pub(crate) fn is_ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f")
        || lower.contains("%2e")
        || lower.contains("%5c")
        || lower.contains('\\')
        || lower.contains("//")
        || lower.split('/').any(|seg| seg == "." || seg == "..")
}

/// The query as the origin should receive it for this route: the parameters
/// the key ignores removed, sorted if the key sorts — so what is stored under a
/// key is exactly what the key says.
pub(crate) fn normalize_query(query: &str, opts: &KeyOptions) -> String {
    if opts.ignore_params.is_empty() && !opts.sort_query {
        return normalize_percent(query);
    }
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            !opts.ignore_params.iter().any(|i| i == name)
        })
        .map(normalize_percent)
        .collect();
    if opts.sort_query {
        // By name only, stably: `a=2&a=1` keeps its order (it may matter).
        params.sort_by(|a, b| a.split('=').next().cmp(&b.split('=').next()));
    }
    params.join("&")
}

/// The normalized value of one selecting header for a variant.
fn vary_value(headers: &HeaderMap, name: &HeaderName) -> String {
    let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    if values.is_empty() {
        return "\u{0}absent".to_owned();
    }
    // Values that are not text are keyed byte for byte (hex), so two
    // different ones can never share a variant.
    if values.iter().any(|v| std::str::from_utf8(v).is_err()) {
        return values.iter().map(|v| format!("{}|", hex(v))).collect();
    }
    let joined: String = values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    if name == http::header::ACCEPT_ENCODING {
        // A set of codings: order, case, spaces and q=1 do not matter; q=0
        // means "not acceptable", so it is left out.
        let mut codings: Vec<String> = joined
            .split(',')
            .filter_map(|c| {
                let mut parts = c.split(';');
                let coding = parts.next()?.trim().to_ascii_lowercase();
                let rejected = parts.any(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                });
                (!coding.is_empty() && !rejected).then_some(coding)
            })
            .collect();
        codings.sort();
        codings.dedup();
        return codings.join(",");
    }
    joined
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

/// The `Vary` field names of a response, lower-cased, sorted, deduplicated.
pub(crate) fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// The variant key for a request, given the fields the response varies on.
pub(crate) fn variant(primary: &str, names: &[HeaderName], headers: &HeaderMap) -> String {
    let mut hasher = Sha256::new();
    for name in names {
        hasher.update(name.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(vary_value(headers, name).as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    format!("{primary}|v:{}", hex(&digest[..16]))
}

/// The primary key a response key belongs to (itself, or the key a `Vary`
/// variant was derived from), or `None` if `key` is not a response key.
pub(crate) fn primary_of(key: &str) -> Option<&str> {
    if !key.starts_with(RESPONSE) {
        return None;
    }
    match key.rsplit_once("|v:") {
        Some((primary, digest))
            if digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some(primary)
        }
        _ => Some(key),
    }
}

/// A short, collision-safe tag naming one URL's entries (variants included),
/// so a purge by URL reaches them all through the engine.
pub(crate) fn url_tag(primary: &str) -> String {
    let digest = Sha256::digest(primary.as_bytes());
    format!("u:{}", hex(&digest[..16]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Escapes a literal for the engine's glob patterns (`*`, `?`, `[`, `\`).
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn primary_of_strips_a_variant_suffix_only() {
        let primary = "r||http://a.test/x?q=1";
        let variant = format!("{primary}|v:{}", "ab".repeat(16));
        assert_eq!(primary_of(&variant), Some(primary));
        assert_eq!(primary_of(primary), Some(primary));
        // Looks like a variant but the digest is not one: the key itself.
        assert_eq!(
            primary_of("r||http://a.test/|v:zz"),
            Some("r||http://a.test/|v:zz")
        );
        assert_eq!(primary_of("m|t|x"), None);
    }

    fn key(uri: &str, host: Option<&str>) -> Option<String> {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert("host", HeaderValue::from_str(host).unwrap());
        }
        primary(
            &uri.parse().unwrap(),
            &h,
            "http",
            None,
            &KeyOptions::default(),
        )
    }

    #[test]
    fn normalizes_scheme_host_port_and_escapes() {
        assert_eq!(
            key("/a%7eb%2f?x=%7e", Some("EXAMPLE.com:80")).unwrap(),
            "r||http://example.com/a~b%2F?x=~"
        );
        assert_eq!(
            key("https://Ex.COM:443/p", None).unwrap(),
            "r||https://ex.com/p"
        );
        assert_eq!(
            key("/a/../b", Some("h")).unwrap(),
            "r||http://h/a/../b",
            "dot segments kept"
        );
        assert!(key("/p", None).is_none(), "no host, no key");
        // Userinfo (and a backslash, where browsers end a host) is refused, not
        // dropped: the origin would see a Host the key does not.
        for bad in [
            "a?b",
            "a#b",
            "a/b",
            "a b",
            "user@h",
            "evil.test\\@h",
            "evil\\h",
        ] {
            assert!(key("/p", Some(bad)).is_none(), "{bad}: not a host");
        }
        assert_eq!(key("/%zz%4", Some("h")).unwrap(), "r||http://h/%zz%4");
    }

    #[test]
    fn ignored_and_sorted_params() {
        let opts = KeyOptions {
            ignore_params: vec!["utm_source".into()],
            sort_query: true,
        };
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("h"));
        let k = primary(
            &"/p?b=2&utm_source=x&a=1".parse().unwrap(),
            &h,
            "http",
            None,
            &opts,
        )
        .unwrap();
        assert_eq!(k, "r||http://h/p?a=1&b=2");
    }

    #[test]
    fn tenants_are_separated_and_escaped() {
        let name = HeaderName::from_static("x-tenant");
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("h"));
        h.insert("x-tenant", HeaderValue::from_static("a|b"));
        let k = primary(
            &"/p".parse().unwrap(),
            &h,
            "http",
            Some(&name),
            &KeyOptions::default(),
        )
        .unwrap();
        assert_eq!(k, "r|a\\|b|http://h/p");
        assert_eq!(for_url("http://H:80/p", "a|b").unwrap(), k);
        assert_eq!(prefix_for("HTTP://h/p", "").unwrap(), "r||http://h/p");
    }

    #[test]
    fn accept_encoding_variants_normalize() {
        let names = vec![HeaderName::from_static("accept-encoding")];
        let mut a = HeaderMap::new();
        a.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
        let mut b = HeaderMap::new();
        b.insert(
            "accept-encoding",
            HeaderValue::from_static("BR,gzip;q=1, deflate;q=0"),
        );
        let mut c = HeaderMap::new();
        c.insert("accept-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(variant("k", &names, &a), variant("k", &names, &b));
        assert_ne!(variant("k", &names, &a), variant("k", &names, &c));
        assert_ne!(
            variant("k", &names, &HeaderMap::new()),
            variant("k", &names, &c)
        );
    }

    #[test]
    fn glob_escape_escapes_metacharacters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
