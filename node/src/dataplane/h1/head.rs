//! Message heads on Shoal's own HTTP/1.1 path: which requests it takes
//! (everything else is handed to hyper before any side effect), the
//! request head as the backend gets it and the response head as the
//! client gets it, written straight from the parsed bytes. Pure.

use std::mem::MaybeUninit;
use std::net::IpAddr;

use httparse::Header;

use super::super::headers::{is_idempotent, write_local_text};
use super::super::route::strip_port;
use super::names::Name;

/// Most headers in a head; more goes to hyper (which answers 431).
pub const MAX_HEADERS: usize = 100;

/// Room for a head's headers. Left uninitialised: httparse writes the
/// ones it finds, and writing all of them first (3.2 KB) cost more than
/// the rest of taking a request apart.
pub type HeaderSlots<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Largest request body this path reads whole before choosing a backend
/// (so a retry can resend it); a larger one goes to hyper, which streams.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// What parsing the bytes so far gave.
#[derive(Debug)]
pub enum Parsed<T> {
    /// The head is not complete yet.
    Partial,
    /// Not for this path: hyper takes the connection from here (it also
    /// answers malformed requests).
    Unsupported(&'static str),
    Complete(T),
}

/// A request head this path can forward.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    /// Bytes of the head, CRLFCRLF included.
    pub len: usize,
    pub method: &'b str,
    /// Origin form: path and query.
    pub target: &'b str,
    /// Host without port.
    pub host: &'b str,
    pub headers: &'h [Header<'b>],
    pub body_len: u64,
    /// The client asked to close after this request.
    pub close: bool,
    /// Headers not forwarded as they are: hop-by-hop ones (with those
    /// the Connection header names) and those the proxy sets itself.
    dropped: HeaderSet,
    /// The X-Forwarded-For headers, extended rather than dropped.
    forwarded_for: HeaderSet,
}

/// Some headers of a head, by index: every head has at most
/// `MAX_HEADERS`, so a bit each. Parsing a head classifies each header
/// once; writing it out reads the bits.
#[derive(Debug, Clone, Copy, Default)]
struct HeaderSet(u128);

const _: () = assert!(MAX_HEADERS <= 128);

impl HeaderSet {
    fn insert(&mut self, index: usize) {
        self.0 |= 1 << index;
    }

    fn contains(self, index: usize) -> bool {
        (self.0 >> index) & 1 == 1
    }
}

impl RequestHead<'_, '_> {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// May be sent twice (RFC 9110 §9.2.2).
    pub fn idempotent(&self) -> bool {
        is_idempotent(self.method)
    }
}

/// Whether a connection whose first bytes are `first` is worth moving to
/// a ring thread: its first request, if complete, is one this path takes
/// and does not ask to close. A request that asks to close (or goes to
/// hyper) is served where it is: moving a connection costs more than the
/// ring saves on one request.
pub fn worth_keeping(first: &[u8]) -> bool {
    let mut slots = header_slots();
    match parse_request(first, &mut slots) {
        Parsed::Complete(head) => !head.close,
        // A head longer than the first read: keep-alive is HTTP/1.1's default.
        Parsed::Partial => true,
        Parsed::Unsupported(_) => false,
    }
}

pub fn parse_request<'h, 'b>(buf: &'b [u8], slots: &'h mut HeaderSlots<'b>) -> Parsed<RequestHead<'h, 'b>> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unsupported("malformed or too many headers"),
    };
    // httparse fills all three on a complete parse.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Unsupported("incomplete request line");
    };
    if version != 1 {
        return Parsed::Unsupported("HTTP/1.0");
    }
    if !target.starts_with('/') {
        return Parsed::Unsupported("request target not in origin form");
    }
    if method == "CONNECT" {
        return Parsed::Unsupported("CONNECT");
    }
    let headers: &'h [Header<'b>] = req.headers;
    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    let mut named = ConnectionNamed::default();
    let mut dropped = HeaderSet::default();
    let mut forwarded_for = HeaderSet::default();
    for (i, h) in headers.iter().enumerate() {
        let name = Name::of(h.name.as_bytes());
        if name.is_hop_by_hop() || name.is_replaced_on_requests() {
            dropped.insert(i);
        }
        match name {
            Name::Host if host.is_some() => return Parsed::Unsupported("several Host headers"),
            Name::Host => host = Some(h.value),
            Name::ContentLength if body_len.is_some() => {
                return Parsed::Unsupported("several Content-Length headers");
            }
            Name::ContentLength => match content_length(h.value) {
                Some(n) => body_len = Some(n),
                None => return Parsed::Unsupported("malformed Content-Length"),
            },
            Name::TransferEncoding => return Parsed::Unsupported("transfer-encoded request body"),
            Name::Upgrade => return Parsed::Unsupported("upgrade"),
            Name::Expect => return Parsed::Unsupported("Expect"),
            Name::Connection => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::Unsupported("upgrade");
                    }
                    if !named.push(token) {
                        return Parsed::Unsupported("long Connection header");
                    }
                }
            }
            Name::XForwardedFor => forwarded_for.insert(i),
            _ => {}
        }
    }
    named.mark(headers, &mut dropped);
    let Some(host) = host.and_then(|h| std::str::from_utf8(h.trim_ascii()).ok()) else {
        return Parsed::Unsupported("no Host header");
    };
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BUFFERED_BODY {
        return Parsed::Unsupported("large request body");
    }
    Parsed::Complete(RequestHead {
        len,
        method,
        target,
        host: strip_port(host),
        headers,
        body_len,
        close,
        dropped,
        forwarded_for,
    })
}

/// Writes the request as the backend gets it into `out`: the client's
/// headers less hop-by-hop ones, then X-Forwarded-For (the client
/// appended), X-Real-IP, X-Forwarded-Proto and X-Request-Id.
pub fn write_backend_request(
    head: &RequestHead<'_, '_>,
    client: &ClientAddr,
    proto: &str,
    request_id: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = false;
    for (i, h) in head.headers.iter().enumerate() {
        if head.forwarded_for.contains(i) {
            // Several headers are one list: joined, byte for byte.
            out.extend_from_slice(if forwarded_for { b", " } else { b"x-forwarded-for: " });
            out.extend_from_slice(h.value.trim_ascii());
            forwarded_for = true;
        }
    }
    if forwarded_for {
        out.extend_from_slice(b", ");
    } else {
        out.extend_from_slice(b"x-forwarded-for: ");
    }
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(b"\r\nx-real-ip: ");
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(proto.as_bytes());
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n");
    push_headers(out, head.headers, head.dropped);
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes; the client's connection closes too.
    UntilClose,
}

#[derive(Debug)]
pub struct ResponseHead<'h, 'b> {
    pub len: usize,
    pub code: u16,
    pub reason: &'b str,
    pub headers: &'h [Header<'b>],
    pub framing: Framing,
    /// The backend connection may carry another request.
    pub reusable: bool,
    /// Headers not forwarded: hop-by-hop ones (with those the Connection
    /// header names), X-Request-Id (the proxy sets its own) and, with a
    /// chunked body, Content-Length.
    dropped: HeaderSet,
}

/// A backend response head; `Err` says why it cannot be forwarded.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
    request_is_head: bool,
) -> Result<Option<ResponseHead<'h, 'b>>, &'static str> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err("incomplete status line");
    };
    // httparse takes any three digits; "099" would go out as "99".
    if code < 100 {
        return Err("status code below 100");
    }
    let headers: &'h [Header<'b>] = resp.headers;
    let mut reusable = version == 1;
    let mut length = None;
    let mut chunked = None;
    let mut named = ConnectionNamed::default();
    let mut dropped = HeaderSet::default();
    let mut content_lengths = HeaderSet::default();
    for (i, h) in headers.iter().enumerate() {
        let name = Name::of(h.name.as_bytes());
        if name.is_hop_by_hop() || name == Name::XRequestId {
            dropped.insert(i);
        }
        match name {
            Name::ContentLength => {
                let n = content_length(h.value).ok_or("malformed Content-Length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length headers");
                }
                length = Some(n);
                content_lengths.insert(i);
            }
            Name::TransferEncoding => {
                // The final coding decides; a later header extends the list.
                chunked = tokens(h.value).last().map(|t| t.eq_ignore_ascii_case(b"chunked"));
            }
            Name::Connection => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        reusable = false;
                    }
                    // A response with more than eight has the first
                    // eight honoured.
                    named.push(token);
                }
            }
            _ => {}
        }
    }
    named.mark(headers, &mut dropped);
    let framing = if request_is_head || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    if framing == Framing::Chunked {
        // A Content-Length would contradict the chunks.
        dropped.0 |= content_lengths.0;
    }
    Ok(Some(ResponseHead {
        len,
        code,
        reason: resp.reason.unwrap_or(""),
        headers,
        framing,
        reusable,
        dropped,
    }))
}

/// Writes the response head as the client gets it: the backend's headers
/// less hop-by-hop ones (a chunked body stays chunked), X-Request-Id, an
/// optional Set-Cookie (sticky sessions) and `Connection: close` when the
/// client connection ends after it.
pub fn write_client_response(
    head: &ResponseHead<'_, '_>,
    request_id: &[u8],
    set_cookie: Option<&[u8]>,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(head.code));
    out.push(b' ');
    let reason = match head.reason {
        "" => http::StatusCode::from_u16(head.code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
        r => r,
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    push_headers(out, head.headers, head.dropped);
    if head.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    push_header(out, b"x-request-id", request_id);
    if let Some(cookie) = set_cookie {
        push_header(out, b"set-cookie", cookie);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response the proxy makes itself: plain text saying why.
pub fn write_local_response(
    status: http::StatusCode,
    why: &str,
    request_id: &[u8],
    extra: Option<(&[u8], &[u8])>,
    close: bool,
    out: &mut Vec<u8>,
) {
    let mut body = Vec::with_capacity(64 + why.len());
    write_local_text(status, why, &mut body);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    push_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    push_header(out, b"x-request-id", request_id);
    if let Some((name, value)) = extra {
        push_header(out, name, value);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

/// Every header but the `dropped` ones, in order.
fn push_headers(out: &mut Vec<u8>, headers: &[Header<'_>], dropped: HeaderSet) {
    for (i, h) in headers.iter().enumerate() {
        if !dropped.contains(i) {
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// A client's address as text (an IPv4-mapped IPv6 address as IPv4),
/// formatted once per connection: every request carries it twice.
#[derive(Clone, Copy)]
pub struct ClientAddr {
    text: [u8; 45],
    len: usize,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        use std::io::Write;
        let mut text = [0; 45];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        // The longest IPv6 text is 45 bytes (ending in a dotted quad),
        // and a canonical address never ends so: it fits.
        let _ = write!(cursor, "{}", ip.to_canonical());
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        Self { text, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.text.get(..self.len).unwrap_or_default()
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones
/// skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Most Connection tokens a request on this path may have; a longer list
/// (never seen in practice) goes to hyper.
const MAX_CONNECTION_TOKENS: usize = 8;

/// Header names a Connection header lists (they are hop-by-hop too): a
/// fixed array, no allocation. Requests with more tokens go to hyper.
#[derive(Default)]
struct ConnectionNamed<'b> {
    names: [&'b [u8]; MAX_CONNECTION_TOKENS],
    len: usize,
}

impl<'b> ConnectionNamed<'b> {
    /// Adds `name`; false, and nothing added, when the list is full.
    /// Names dropped anyway (Keep-Alive, say) and `close` take no room.
    fn push(&mut self, name: &'b [u8]) -> bool {
        if Name::of(name).is_hop_by_hop() || name.eq_ignore_ascii_case(b"close") {
            return true;
        }
        let Some(slot) = self.names.get_mut(self.len) else {
            return false;
        };
        *slot = name;
        self.len += 1;
        true
    }

    /// Puts the headers named here into `dropped`.
    fn mark(&self, headers: &[Header<'_>], dropped: &mut HeaderSet) {
        if self.len == 0 {
            return;
        }
        for (i, h) in headers.iter().enumerate() {
            if self.names[..self.len]
                .iter()
                .any(|t| h.name.as_bytes().eq_ignore_ascii_case(t))
            {
                dropped.insert(i);
            }
        }
    }
}

/// A Content-Length value: digits only (RFC 9110 §8.6); a list of equal
/// values counts as one.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        // 19 digits always fit in a u64.
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_that_will_carry_more_requests_move_to_a_ring() {
        assert!(worth_keeping(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!worth_keeping(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        ));
        assert!(
            worth_keeping(b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: "),
            "a head not read whole yet"
        );
        assert!(
            !worth_keeping(b"\x16\x03\x01\x02\x00"),
            "not HTTP: hyper answers it here"
        );
        assert!(
            !worth_keeping(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"),
            "HTTP/1.0 goes to hyper"
        );
    }

    fn request(raw: &[u8]) -> Result<(usize, String, String, u64, bool), &'static str> {
        let mut slots = header_slots();
        match parse_request(raw, &mut slots) {
            Parsed::Complete(h) => Ok((h.len, h.target.to_string(), h.host.to_string(), h.body_len, h.close)),
            Parsed::Partial => Err("partial"),
            Parsed::Unsupported(why) => Err(why),
        }
    }

    #[test]
    fn client_addresses_are_written_in_full_and_mapped_ones_as_ipv4() {
        let text = |ip: &str| -> String {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            String::from_utf8_lossy(ClientAddr::new(ip).as_bytes()).into_owned()
        };
        assert_eq!(text("255.255.255.255"), "255.255.255.255");
        assert_eq!(
            text("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        );
        assert_eq!(text("::ffff:192.0.2.10"), "192.0.2.10");
        assert_eq!(text("2001:db8::1"), "2001:db8::1");
    }

    fn rewritten(raw: &[u8]) -> String {
        let mut slots = header_slots();
        let Parsed::Complete(h) = parse_request(raw, &mut slots) else {
            panic!("not a complete request: {raw:?}");
        };
        let mut out = Vec::new();
        write_backend_request(
            &h,
            &ClientAddr::new(IpAddr::from([10, 0, 0, 5])),
            "http",
            b"id-1",
            &mut out,
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn takes_plain_requests_and_hands_the_rest_to_hyper() {
        let get = b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\nNEXT";
        assert_eq!(request(get), Ok((47, "/a?b=1".into(), "Example.com".into(), 0, false)));
        let post = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        assert_eq!(request(post), Ok((67, "/x".into(), "h".into(), 5, true)));
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost: h\r\n"), Err("partial"));
        for (raw, why) in [
            (&b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"[..], "HTTP/1.0"),
            (b"GET / HTTP/1.1\r\n\r\n", "no Host header"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "several Host headers"),
            (
                b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
                "request target not in origin form",
            ),
            (
                b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
                "request target not in origin form",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                "transfer-encoded request body",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                "upgrade",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\r\n",
                "upgrade",
            ),
            (
                b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                "Expect",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "several Content-Length headers",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
                "malformed Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 999999\r\n\r\n",
                "large request body",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: a, b, c, d, e, f, g, h, i\r\n\r\n",
                "long Connection header",
            ),
            (b"GARBAGE\r\n\r\n", "malformed or too many headers"),
        ] {
            assert_eq!(request(raw).err(), Some(why), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn the_backend_gets_forwarding_headers_and_no_hop_by_hop_ones() {
        let out = rewritten(
            b"GET /p HTTP/1.1\r\nHost: h\r\nX-Early: 0\r\nConnection: keep-alive, X-Drop,x-early\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n\
              X-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2 \r\nX-Real-IP: 6.6.6.6\r\nX-Request-Id: old\r\n\
              Proxy-Authorization: Basic x\r\nTE: trailers\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            out,
            "GET /p HTTP/1.1\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.5\r\n\
             x-real-ip: 10.0.0.5\r\nx-forwarded-proto: http\r\nx-request-id: id-1\r\n\
             Host: h\r\nAccept: */*\r\n\r\n"
        );
        let out = rewritten(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi");
        assert!(
            out.starts_with("POST /p HTTP/1.1\r\nx-forwarded-for: 10.0.0.5\r\n"),
            "{out}"
        );
        assert!(out.ends_with("Host: h\r\nContent-Length: 2\r\n\r\n"), "{out}");
    }

    fn response(raw: &[u8], is_head: bool) -> Result<Option<(u16, Framing, bool, String)>, &'static str> {
        let mut slots = header_slots();
        Ok(parse_response(raw, &mut slots, is_head)?.map(|h| {
            let mut out = Vec::new();
            write_client_response(&h, b"rid", Some(b"s=1"), h.framing == Framing::UntilClose, &mut out);
            (
                h.code,
                h.framing,
                h.reusable,
                String::from_utf8_lossy(&out).into_owned(),
            )
        }))
    }

    #[test]
    fn response_framing_and_reuse() {
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false);
        assert!(matches!(r, Ok(Some((200, Framing::Length(3), true, _)))), "{r:?}");
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert!(matches!(r, Ok(Some((200, Framing::Empty, true, _)))), "HEAD: {r:?}");
        let r = response(b"HTTP/1.1 304 Not Modified\r\n\r\n", false);
        assert!(matches!(r, Ok(Some((304, Framing::Empty, true, _)))), "{r:?}");
        let r = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert!(matches!(r, Ok(Some((200, Framing::Chunked, true, _)))), "{r:?}");
        let r = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert!(matches!(r, Ok(Some((200, Framing::UntilClose, false, _)))), "{r:?}");
        let r = response(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert!(matches!(r, Ok(Some((200, Framing::UntilClose, false, _)))), "{r:?}");
        let r = response(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(matches!(r, Ok(Some((200, Framing::Length(0), false, _)))), "{r:?}");
        let r = response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(
            matches!(r, Ok(Some((200, Framing::Length(0), false, _)))),
            "HTTP/1.0: {r:?}"
        );
        assert!(matches!(response(b"HTTP/1.1 200 OK\r\nContent", false), Ok(None)));
        assert_eq!(
            response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .err(),
            Some("conflicting Content-Length headers")
        );
        assert_eq!(
            response(b"HTTP/1.1 2000 OK\r\n\r\n", false).err(),
            Some("malformed response head")
        );
    }

    #[test]
    fn the_client_gets_the_response_without_hop_by_hop_headers() {
        let Ok(Some((_, _, _, out))) = response(
            b"HTTP/1.1 200 \r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n\
              Transfer-Encoding: chunked\r\nContent-Length: 9\r\nX-Request-Id: backend\r\nServer: b\r\n\r\n",
            false,
        ) else {
            panic!("a complete response");
        };
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: b\r\ntransfer-encoding: chunked\r\nx-request-id: rid\r\nset-cookie: s=1\r\n\r\n"
        );
        let Ok(Some((_, _, _, out))) = response(b"HTTP/1.1 200 OK\r\n\r\n", false) else {
            panic!("a complete response");
        };
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
    }

    #[test]
    fn local_responses_say_why_with_the_right_length() {
        let mut out = Vec::new();
        write_local_response(
            http::StatusCode::TOO_MANY_REQUESTS,
            "slow down",
            b"rid",
            Some((b"retry-after", b"2")),
            true,
            &mut out,
        );
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert_eq!(body, "429 Too Many Requests: slow down\n");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{head}");
        for line in ["x-request-id: rid", "retry-after: 2", "connection: close"] {
            assert!(head.contains(line), "{head}");
        }
    }
}
