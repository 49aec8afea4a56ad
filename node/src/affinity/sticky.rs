//! Per-pool session affinity: which part of a request (or connection) is
//! the sticky key, and the stateless cookie of `insert_cookie`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderName;
use smallvec::SmallVec;

use crate::config::{StickyConfig, StickyMode};
use crate::dataplane::headers::HeaderSource;
use crate::dataplane::http::cookie_value;

/// A request's sticky key, held until its answer. Inline up to 64 bytes
/// (addresses, the usual session ids): a sticky pool looks one up for
/// every request, and a copy on the heap was an allocation per request.
pub type StickyKey = SmallVec<[u8; 64]>;

pub struct Sticky {
    pub mode: StickyMode,
    /// The cookie (insert_cookie, learn_cookie) or header (header) name.
    cookie: Option<String>,
    header: Option<HeaderName>,
    pub ttl: Duration,
    /// insert_cookie: cookie value → backend name, for every backend.
    tokens: HashMap<String, Arc<str>>,
}

/// insert_cookie's value for a backend: opaque (a hash of pool and backend
/// names, never an address), the same on every node, so any node decodes
/// any node's cookie with no state at all.
pub fn token(pool: &str, backend: &str) -> String {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(format!("{pool}/{backend}").as_bytes(), 0x5348_4f41_4c53_5449);
    format!("{h:016x}")
}

impl Sticky {
    pub fn new(cfg: &StickyConfig, pool: &str, backends: &[Arc<str>]) -> Self {
        Self {
            mode: cfg.mode,
            cookie: cfg.cookie.clone(),
            header: cfg
                .header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            ttl: cfg.ttl.get(),
            tokens: backends.iter().map(|b| (token(pool, b), Arc::clone(b))).collect(),
        }
    }

    /// Whether bindings live in the (replicated) table.
    pub fn uses_table(&self) -> bool {
        self.mode != StickyMode::InsertCookie
    }

    /// The request's sticky key: the cookie's or header's value, or the
    /// client address. `None` when the request carries none.
    pub fn request_key(&self, headers: &(impl HeaderSource + ?Sized), client: IpAddr) -> Option<StickyKey> {
        match self.mode {
            StickyMode::InsertCookie | StickyMode::LearnCookie => cookie_value(headers, self.cookie.as_deref()?)
                .filter(|v| !v.is_empty())
                .map(StickyKey::from_slice),
            StickyMode::Header => headers.first(self.header.as_ref()?.as_str()).map(StickyKey::from_slice),
            StickyMode::SourceIp => Some(ip_key(client)),
        }
    }

    /// insert_cookie: the backend a cookie value names.
    pub fn backend_for_token(&self, value: &[u8]) -> Option<&Arc<str>> {
        self.tokens.get(std::str::from_utf8(value).ok()?)
    }

    /// insert_cookie: the Set-Cookie header pinning a client to `backend`.
    pub fn set_cookie(&self, pool: &str, backend: &str) -> Option<HeaderValue> {
        let name = self.cookie.as_deref()?;
        let value = format!(
            "{name}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
            token(pool, backend),
            self.ttl.as_secs().max(1)
        );
        HeaderValue::from_str(&value).ok()
    }

    /// learn_cookie: what the backend's response says about the session
    /// cookie: `Some(Some(value))` it set one, `Some(None)` it expired it.
    pub fn learned<'a>(&self, response: &'a (impl HeaderSource + ?Sized)) -> Option<Option<&'a [u8]>> {
        let name = self.cookie.as_deref()?;
        response
            .values(http::header::SET_COOKIE.as_str())
            .find_map(|v| parse_set_cookie(v, name))
    }
}

/// A client address as a key; IPv4-mapped IPv6 counts as IPv4.
pub fn ip_key(ip: IpAddr) -> StickyKey {
    match ip.to_canonical() {
        IpAddr::V4(v4) => StickyKey::from_slice(&v4.octets()),
        IpAddr::V6(v6) => StickyKey::from_slice(&v6.octets()),
    }
}

/// For a Set-Cookie line of cookie `name`: `Some(Some(value))`, or
/// `Some(None)` when it deletes the cookie (Max-Age ≤ 0 or an empty value).
fn parse_set_cookie<'a>(line: &'a [u8], name: &str) -> Option<Option<&'a [u8]>> {
    let mut parts = line.split(|&b| b == b';');
    let first = parts.next()?.trim_ascii();
    let eq = first.iter().position(|&b| b == b'=')?;
    if first[..eq].trim_ascii() != name.as_bytes() {
        return None;
    }
    let value = first[eq + 1..].trim_ascii();
    let deleted = value.is_empty()
        || parts.any(|attr| {
            let attr = attr.trim_ascii();
            let lower = attr.to_ascii_lowercase();
            lower
                .strip_prefix(b"max-age=")
                .is_some_and(|v| v.starts_with(b"-") || v == b"0")
        });
    Some(if deleted { None } else { Some(value) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use http::HeaderMap;

    fn sticky(mode: StickyMode, cookie: Option<&str>, header: Option<&str>) -> Sticky {
        let cfg = StickyConfig {
            mode,
            cookie: cookie.map(str::to_string),
            header: header.map(str::to_string),
            ttl: Dur::from_secs(1800),
            max_entries: 100,
        };
        Sticky::new(&cfg, "web", &[Arc::from("web-1"), Arc::from("web-2")])
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.append(k, v);
            }
        }
        h
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    #[test]
    fn keys_per_mode() {
        let h = headers(&[("cookie", "a=1; sid=abc"), ("x-tenant", "t9")]);
        assert_eq!(
            sticky(StickyMode::LearnCookie, Some("sid"), None)
                .request_key(&h, IP)
                .as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            sticky(StickyMode::LearnCookie, Some("nope"), None)
                .request_key(&h, IP)
                .as_deref(),
            None
        );
        assert_eq!(
            sticky(StickyMode::Header, None, Some("X-Tenant"))
                .request_key(&h, IP)
                .as_deref(),
            Some(&b"t9"[..])
        );
        assert_eq!(
            sticky(StickyMode::SourceIp, None, None).request_key(&h, IP).as_deref(),
            Some(&[10, 0, 0, 7][..])
        );
        // Longer than the inline part: the whole key all the same.
        let long = "s".repeat(200);
        let h = headers(&[("x-tenant", long.as_str())]);
        assert_eq!(
            sticky(StickyMode::Header, None, Some("X-Tenant"))
                .request_key(&h, IP)
                .as_deref(),
            Some(long.as_bytes())
        );
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap_or(IP);
        assert_eq!(&ip_key(mapped)[..], [10, 0, 0, 7]);
    }

    #[test]
    fn inserted_cookies_name_backends_opaquely_and_decode_anywhere() {
        let s = sticky(StickyMode::InsertCookie, Some("lb"), None);
        let set = s
            .set_cookie("web", "web-2")
            .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
        let set = set.unwrap_or_default();
        assert!(
            set.starts_with("lb=") && set.contains("Max-Age=1800") && !set.contains("web-2"),
            "{set}"
        );
        let value = set.trim_start_matches("lb=").split(';').next().unwrap_or_default();
        // Another node builds its own Sticky from the same config.
        let other = sticky(StickyMode::InsertCookie, Some("lb"), None);
        assert_eq!(other.backend_for_token(value.as_bytes()).map(|b| &**b), Some("web-2"));
        assert_eq!(other.backend_for_token(b"0123456789abcdef"), None);
        assert_eq!(other.backend_for_token(b"\xff\xfe"), None);
    }

    #[test]
    fn learned_cookies_and_deletions() {
        let s = sticky(StickyMode::LearnCookie, Some("sid"), None);
        let set = headers(&[
            ("set-cookie", "theme=dark"),
            ("set-cookie", "sid=s-42; Path=/; HttpOnly"),
        ]);
        assert_eq!(s.learned(&set), Some(Some(&b"s-42"[..])));
        assert_eq!(s.learned(&headers(&[("set-cookie", "sid=; Max-Age=0")])), Some(None));
        assert_eq!(s.learned(&headers(&[("set-cookie", "sid=x; max-age=-1")])), Some(None));
        assert_eq!(s.learned(&headers(&[("set-cookie", "sidx=1")])), None);
        assert_eq!(s.learned(&headers(&[])), None);
    }
}
