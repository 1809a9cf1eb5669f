//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop fields are the
//! connection's, not the message's, so they are stripped in both directions;
//! `Via` records the hop; `X-Forwarded-*` tell the origin who asked.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1,
/// plus the non-standard `Keep-Alive` and `Proxy-Connection`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop fields, including every field the `Connection` header
/// names — except `Host` and `Content-Length`, which describe the message,
/// not the connection. hyper fills both in again from the request line and
/// the body it framed, so removing them would only hide them from the cache
/// layer: `Connection: content-length` on a GET with a body made it look
/// bodiless and cacheable while the origin still got the body, and
/// `Connection: host` let the origin see another host than the key.
/// `Transfer-Encoding` is left to hyper, which owns message framing (it never
/// forwards the field itself; it re-frames the body).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names (compares,
    // no hashing) spares the removals below on every request and response.
    let any = headers
        .keys()
        .any(|name| *name == header::TRANSFER_ENCODING || HOP_BY_HOP.iter().any(|hop| hop == name));
    if !any {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Appends this hop to `Via` (`1.1 tiered`, or `2 tiered` for HTTP/2).
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    static V1: HeaderValue = HeaderValue::from_static("1.1 tiered");
    static V2: HeaderValue = HeaderValue::from_static("2 tiered");
    static V10: HeaderValue = HeaderValue::from_static("1.0 tiered");
    let value = match version {
        http::Version::HTTP_2 => &V2,
        http::Version::HTTP_10 => &V10,
        _ => &V1,
    };
    headers.append(header::VIA, value.clone());
}

/// The client's address, carried from the listener to the upstream call in
/// the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Sets `X-Forwarded-For` (appending the client to a chain the client
/// sent), `X-Forwarded-Proto` and `X-Forwarded-Host`.
///
/// The cache layer removes client-sent `X-Forwarded-Host`, `-Proto` and the
/// like from cacheable requests (unkeyed inputs a client could poison a
/// shared entry with), so for those the values set here are the only ones.
/// `X-Forwarded-For` is kept, with this hop's client appended, as a proxy in
/// a chain should: only its last entry is this gateway's word; the ones
/// before it are whatever the client (or a proxy in front) sent.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: Option<ClientAddr>,
    host: Option<HeaderValue>,
) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    if let Some(ClientAddr(ip)) = client {
        // Every line of the chain, in order (a proxy in front may have added
        // its own line after the client's): one of them dropped would lose
        // the hop that proxy vouches for.
        let mut chain: Vec<&str> = headers
            .get_all(&XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let ip = ip.to_string();
        chain.push(&ip);
        let chain = chain.join(", ");
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(XFF.clone(), v);
        }
    }
    headers.insert(XFP.clone(), HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(XFH.clone(), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CACHE_CONTROL));
    }

    #[test]
    fn host_and_content_length_are_kept_even_when_connection_names_them() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("content-length, Host, x-hop"),
        );
        h.insert(header::HOST, HeaderValue::from_static("api.test"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::HOST], "api.test");
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        assert!(!h.contains_key("x-hop"));
        assert!(!h.contains_key(header::CONNECTION));
    }

    #[test]
    fn every_forwarded_for_line_is_kept_in_order() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.2, 10.0.0.3"),
        );
        add_forwarded(&mut h, Some(ClientAddr([127, 0, 0, 1].into())), None);
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn forwarded_chain_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            Some(ClientAddr([127, 0, 0, 1].into())),
            Some(HeaderValue::from_static("api.test")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "api.test");
        assert_eq!(h["x-forwarded-proto"], "http");
        add_via(&mut h, http::Version::HTTP_11);
        add_via(&mut h, http::Version::HTTP_2);
        let via: Vec<_> = h.get_all(header::VIA).iter().collect();
        assert_eq!(via, ["1.1 tiered", "2 tiered"]);
    }
}
