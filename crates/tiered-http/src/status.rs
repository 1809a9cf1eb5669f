//! `Cache-Status` (RFC 9211) and `X-Cache`: telling clients and operators what
//! the cache did with each response.
//!
//! | What happened                         | `X-Cache` | `Cache-Status`                          |
//! |---------------------------------------|-----------|-----------------------------------------|
//! | fresh stored response                  | `HIT`     | `tiered; hit; ttl=N`                    |
//! | stale, served while revalidating       | `STALE`   | `tiered; hit; fwd=stale; detail=stale-while-revalidate` |
//! | stale, served because the origin failed| `STALE`   | `tiered; hit; fwd=stale; fwd-status=502; detail=stale-if-error` |
//! | revalidated (304 from the origin)      | `HIT`     | `tiered; fwd=stale; fwd-status=304; stored` |
//! | not in the cache                       | `MISS`    | `tiered; fwd=uri-miss; fwd-status=200; stored` |
//! | cached for another `Vary` variant      | `MISS`    | `tiered; fwd=vary-miss; …`              |
//! | the request asked to revalidate        | `MISS`    | `tiered; fwd=request; …`                |
//! | not cacheable by method or rule        | `BYPASS`  | `tiered; fwd=method` / `fwd=bypass`     |
//!
//! A response that was not stored says why: `detail=private`, `detail=set-cookie`…
//! An upstream cache's `Cache-Status` is kept; ours is appended after it, as the
//! RFC orders caches from the origin outwards.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Cache` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XCache {
    Hit,
    Miss,
    Stale,
    Bypass,
}

/// One `Cache-Status` member for this cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

pub(crate) static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

impl CacheStatus {
    fn render(&self, name: &str) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(64);
        s.push_str(name);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd);
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(s, "; fwd-status={status}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(s, "; ttl={ttl}");
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            s.push_str("; detail=");
            s.push_str(detail);
        }
        s
    }

    /// Adds our member to `headers` (after any upstream members) and sets
    /// `X-Cache`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, name: &str, x: XCache) {
        // `name` was checked to be a token when the layer was built, and
        // everything else rendered here is ASCII: this cannot fail.
        if let Ok(v) = HeaderValue::from_str(&self.render(name)) {
            headers.append(CACHE_STATUS.clone(), v);
        }
        let x = match x {
            XCache::Hit => "HIT",
            XCache::Miss => "MISS",
            XCache::Stale => "STALE",
            XCache::Bypass => "BYPASS",
        };
        headers.insert(X_CACHE.clone(), HeaderValue::from_static(x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_members_in_rfc_order() {
        let s = CacheStatus {
            fwd: Some("uri-miss"),
            fwd_status: Some(200),
            stored: true,
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert("cache-status", HeaderValue::from_static("upstream; hit"));
        s.apply(&mut h, "tiered", XCache::Miss);
        let all: Vec<_> = h.get_all("cache-status").iter().collect();
        assert_eq!(
            all,
            [
                "upstream; hit",
                "tiered; fwd=uri-miss; fwd-status=200; stored"
            ]
        );
        assert_eq!(h["x-cache"], "MISS");
    }
}
