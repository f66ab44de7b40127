//! The HTTP side's header policy, written once and used by both paths: hyper's (`HeaderMap`) and the
//! fast path (`h1/`, headers as bytes). `tests/http.rs` runs one table of conformance cases against
//! both (`sidecar.http.fast_path` on and off).
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1) never cross: the standard ones and those `Connection` names;
//!   an upgrade keeps `Upgrade` and `Connection: upgrade`.
//! - `traceparent` and `X-Forwarded-For` are the proxy's to set: the client's are replaced (the trace is
//!   continued from a valid `traceparent`; `X-Forwarded-For` gets the client's address appended).
//! - `tracestate` is kept when the client's trace is continued, dropped when a new one starts.
//! - `TE: trailers` is the one `TE` value kept (HTTP/2 allows only it, and gRPC requires it).
//! - `X-Forwarded-Proto: http` is added when absent (as Envoy and nginx do).
//! - `Transfer-Encoding` is the framing's business: each path re-frames the body it relays.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};

/// The standard hop-by-hop headers.
pub const HOP_BY_HOP: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "trailer", "upgrade"];

/// Request headers the proxy sets itself.
pub const SET_BY_PROXY: [&str; 2] = ["traceparent", "x-forwarded-for"];

/// The `X-Forwarded-Proto` added when the client sent none.
pub const FORWARDED_PROTO: &str = "http";

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The tokens of a `Connection` header value (`close`, `upgrade`, names of hop-by-hop headers).
pub fn connection_tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Whether a client's request header reaches the application as it came. `named`: the names its
/// `Connection` headers list; `continued`: whether the client's trace is continued.
pub fn request_keeps(name: &str, value: &[u8], named: &[&str], continued: bool) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    !(is_hop_by_hop(name)
        || is("transfer-encoding")
        || SET_BY_PROXY.iter().any(|n| is(n))
        || named.iter().any(|n| is(n))
        || (!continued && is("tracestate"))
        || (is("te") && value != b"trailers"))
}

/// Whether an application's response header reaches the client as it came.
pub fn response_keeps(name: &str, named: &[&str]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    !(is_hop_by_hop(name) || is("te") || named.iter().any(|n| is(n)))
}

/// `X-Forwarded-For` with the client's address appended to what it sent.
pub fn forwarded_for(prior: Option<&str>, peer_ip: &str) -> String {
    match prior {
        Some(p) => format!("{p}, {peer_ip}"),
        None => peer_ip.to_string(),
    }
}

/// The names a `HeaderMap`'s `Connection` headers list (lowercase).
fn named_in_connection(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(connection_tokens)
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Drops the headers [`keep`] refuses (every value of each).
fn retain(headers: &mut HeaderMap, keep: impl Fn(&HeaderName, &HeaderValue) -> bool) {
    let dropped: Vec<HeaderName> = headers.iter().filter(|(n, v)| !keep(n, v)).map(|(n, _)| n.clone()).collect();
    for n in dropped {
        headers.remove(n);
    }
}

/// hyper's path: the request's headers as the application (or, outbound, the called service) gets them,
/// with `traceparent` (`context`) set, and the forwarding headers when it is forwarded `from` a client
/// (inbound; the outbound proxy leaves the application's own as they are). An upgrade keeps `Upgrade`
/// and `Connection: upgrade`.
pub fn request_to_application(headers: &mut HeaderMap, continued: bool, upgrade: bool, context: &str, from: Option<SocketAddr>) {
    let named = named_in_connection(headers);
    let named: Vec<&str> = named.iter().map(String::as_str).filter(|n| !(upgrade && *n == "upgrade")).collect();
    let prior_xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(String::from);
    retain(headers, |n, v| {
        (upgrade && n == UPGRADE)
            || (from.is_none() && n == "x-forwarded-for")
            || request_keeps(n.as_str(), v.as_bytes(), &named, continued)
    });
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Ok(v) = HeaderValue::from_str(context) {
        headers.insert(HeaderName::from_static("traceparent"), v);
    }
    let Some(peer) = from else { return };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for(prior_xff.as_deref(), &peer.ip().to_string())) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers
        .entry(HeaderName::from_static("x-forwarded-proto"))
        .or_insert(HeaderValue::from_static(FORWARDED_PROTO));
}

/// hyper's path: the response's headers as the client gets them (hyper frames the body itself, so
/// `Transfer-Encoding` goes too). A `101 Switching Protocols` keeps its `Upgrade` and `Connection`.
pub fn response_to_client(headers: &mut HeaderMap) {
    let named = named_in_connection(headers);
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    retain(headers, |n, _| {
        response_keeps(n.as_str(), &named) && n != http::header::TRANSFER_ENCODING
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("tracestate", HeaderValue::from_static("a=b"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        request_to_application(
            &mut h,
            false,
            false,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            Some("10.0.0.1:5".parse().unwrap()),
        );
        for gone in ["connection", "x-secret", "keep-alive", "te", "tracestate"] {
            assert!(!h.contains_key(gone), "{gone} kept: {h:?}");
        }
        assert_eq!(h.get("x-kept").unwrap(), "yes");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert!(h.get("traceparent").unwrap().to_str().unwrap().starts_with("00-0af7"));
    }

    #[test]
    fn an_upgrade_keeps_its_headers_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("trailers"));
        request_to_application(&mut h, true, true, "x", Some("[::1]:5".parse().unwrap()));
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn forwarded_for_appends() {
        assert_eq!(forwarded_for(Some("1.2.3.4"), "10.0.0.1"), "1.2.3.4, 10.0.0.1");
        assert_eq!(forwarded_for(None, "::1"), "::1");
    }
}
