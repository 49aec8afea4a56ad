//! Header rewriting for proxied HTTP: hop-by-hop removal, forwarding
//! headers and request ids. Pure functions over a `HeaderMap`, and the
//! lookups routing and affinity share between a `HeaderMap` (hyper's
//! path) and the raw headers of Shoal's own HTTP/1.1 path.

use std::cell::Cell;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Headers that describe one hop's connection (RFC 9110 §7.6.1) and must not
/// be forwarded (lower case, as `HeaderMap` and the own path both match).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// The body of a response the proxy makes itself: status and why.
pub fn write_local_text(status: http::StatusCode, why: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(why.as_bytes());
    out.push(b'\n');
}

/// Retry-After seconds for a client told to wait `wait` (at least 1).
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// Read access to a request's or response's headers, whichever form they
/// are in. `name` is lower case.
pub trait HeaderSource {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    fn first<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

impl HeaderSource for HeaderMap {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }
}

impl HeaderSource for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Only allocate when a Connection header names extra headers.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets the forwarding headers on a request going to a backend:
/// X-Forwarded-For gets the client appended, X-Real-IP and
/// X-Forwarded-Proto are replaced, X-Request-Id is set to `request_id`.
pub fn set_forwarding(headers: &mut HeaderMap, client: IpAddr, proto: &'static str, request_id: &HeaderValue) {
    let client = client.to_canonical();
    let mut ip_buf = [0u8; 48];
    let ip = format_ip(client, &mut ip_buf);
    let xff = match headers.get_all(&X_FORWARDED_FOR).iter().next() {
        None => HeaderValue::from_str(ip).ok(),
        Some(_) => {
            // Join every existing value (several headers are one list),
            // byte for byte: an odd entry is the next hop's to judge.
            let mut joined = Vec::with_capacity(64);
            for v in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(v.as_bytes().trim_ascii());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    if let Ok(real) = HeaderValue::from_str(ip) {
        headers.insert(X_REAL_IP.clone(), real);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

fn format_ip(ip: IpAddr, buf: &mut [u8; 48]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // An IP address is at most 45 characters; the buffer always fits it.
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// Longest client-supplied request id kept as is.
const MAX_REQUEST_ID: usize = 128;

/// A request's id, held inline: taking it costs no allocation.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl RequestId {
    /// Printable ASCII, 1 to 128 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn to_header_value(&self) -> HeaderValue {
        // Only printable ASCII gets in: always a valid header value.
        HeaderValue::from_bytes(self.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// The request's id: the client's `X-Request-Id` when it is sane (so a
/// request can be traced through several proxies), else a fresh one.
pub fn request_id(headers: &(impl HeaderSource + ?Sized)) -> RequestId {
    match headers.first(X_REQUEST_ID.as_str()) {
        Some(v) if !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(|b| b.is_ascii_graphic()) => {
            let mut id = RequestId {
                bytes: [0; MAX_REQUEST_ID],
                // At most 128: fits.
                len: v.len() as u8,
            };
            id.bytes[..v.len()].copy_from_slice(v);
            id
        }
        _ => new_request_id(),
    }
}

/// A thread's request ids: a random prefix, as hex once for all its ids,
/// and a counter. Unique without shared state.
struct IdState {
    prefix: [u8; 16],
    next: Cell<u64>,
}

thread_local! {
    static ID_STATE: IdState = {
        let mut prefix = [0; 16];
        hex_u64(fastrand::u64(..), &mut prefix);
        IdState { prefix, next: Cell::new(0) }
    };
}

/// A fresh 32-hex-digit request id.
pub fn new_request_id() -> RequestId {
    let mut id = RequestId {
        bytes: [0; MAX_REQUEST_ID],
        len: 32,
    };
    ID_STATE.with(|s| {
        let n = s.next.get();
        s.next.set(n.wrapping_add(1));
        id.bytes[..16].copy_from_slice(&s.prefix);
        hex_u64(n, &mut id.bytes[16..32]);
    });
    id
}

fn hex_u64(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::ACCEPT),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        m
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("host", "example.com"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-length", "host"]);
    }

    #[test]
    fn forwarding_headers_append_and_replace() {
        let id = HeaderValue::from_static("abc");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        set_forwarding(
            &mut h,
            "10.0.0.5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            "http",
            &id,
        );
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
            Some("1.1.1.1, 2.2.2.2, 10.0.0.5")
        );
        assert_eq!(h.get(&X_REAL_IP).and_then(|v| v.to_str().ok()), Some("10.0.0.5"));
        assert_eq!(h.get(&X_FORWARDED_PROTO).and_then(|v| v.to_str().ok()), Some("http"));
        assert_eq!(h.get(&X_REQUEST_ID), Some(&id));

        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap_or(HeaderValue::from_static("x")),
        );
        set_forwarding(
            &mut h,
            "10.0.0.5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            "http",
            &id,
        );
        assert_eq!(
            h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"caf\xc3\xa9, 10.0.0.5"[..])
        );

        let mut h = HeaderMap::new();
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        set_forwarding(&mut h, mapped, "https", &id);
        assert_eq!(h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()), Some("10.0.0.7"));
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_unique_when_new() {
        let h = map(&[("x-request-id", "trace-123")]);
        assert_eq!(request_id(&h).as_bytes(), b"trace-123");
        let long = "a".repeat(200);
        let h = map(&[("x-request-id", long.as_str())]);
        assert_eq!(request_id(&h).as_bytes().len(), 32);
        let ids: std::collections::HashSet<Vec<u8>> = (0..1000).map(|_| new_request_id().as_bytes().to_vec()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|v| v.len() == 32 && v.iter().all(u8::is_ascii_hexdigit)));
    }
}
