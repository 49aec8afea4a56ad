//! The header names the own HTTP/1.1 path treats specially, told apart
//! with one comparison: every header of every request and response is
//! classified, and comparing each name with a dozen known ones in turn,
//! three times per head, cost about 400 instructions per request.

/// What a header name is to this path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    /// Another hop-by-hop header: Keep-Alive, Proxy-Connection,
    /// Proxy-Authenticate, Proxy-Authorization, TE, Trailer.
    OtherHopByHop,
    XForwardedFor,
    XRealIp,
    XForwardedProto,
    XRequestId,
    Other,
}

impl Name {
    /// Case-insensitive, as header names are. The length picks the one or
    /// two candidates worth comparing.
    pub fn of(name: &[u8]) -> Self {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            2 if is("te") => Self::OtherHopByHop,
            4 if is("host") => Self::Host,
            6 if is("expect") => Self::Expect,
            7 if is("upgrade") => Self::Upgrade,
            7 if is("trailer") => Self::OtherHopByHop,
            9 if is("x-real-ip") => Self::XRealIp,
            10 if is("connection") => Self::Connection,
            10 if is("keep-alive") => Self::OtherHopByHop,
            12 if is("x-request-id") => Self::XRequestId,
            14 if is("content-length") => Self::ContentLength,
            15 if is("x-forwarded-for") => Self::XForwardedFor,
            16 if is("proxy-connection") => Self::OtherHopByHop,
            17 if is("transfer-encoding") => Self::TransferEncoding,
            17 if is("x-forwarded-proto") => Self::XForwardedProto,
            18 if is("proxy-authenticate") => Self::OtherHopByHop,
            19 if is("proxy-authorization") => Self::OtherHopByHop,
            _ => Self::Other,
        }
    }

    /// Meant for one connection only (RFC 9110 §7.6.1): never forwarded.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Self::Connection | Self::TransferEncoding | Self::Upgrade | Self::OtherHopByHop
        )
    }

    /// Set by the proxy on every forwarded request, whatever the client
    /// sent (X-Forwarded-For is extended instead).
    pub fn is_replaced_on_requests(self) -> bool {
        matches!(
            self,
            Self::XForwardedFor | Self::XRealIp | Self::XForwardedProto | Self::XRequestId
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::headers::HOP_BY_HOP;

    #[test]
    fn every_hop_by_hop_name_and_only_those_is_hop_by_hop_in_any_case() {
        for name in HOP_BY_HOP {
            assert!(Name::of(name.as_bytes()).is_hop_by_hop(), "{name}");
            assert!(Name::of(name.to_ascii_uppercase().as_bytes()).is_hop_by_hop(), "{name}");
        }
        for name in [
            "host",
            "content-type",
            "x-request-id",
            "x-forwarded-for",
            "tf",
            "keep-alivf",
            "trailers",
            "",
        ] {
            assert!(!Name::of(name.as_bytes()).is_hop_by_hop(), "{name}");
        }
    }

    #[test]
    fn names_are_told_apart_whatever_their_case() {
        let cases = [
            ("Host", Name::Host),
            ("CONTENT-LENGTH", Name::ContentLength),
            ("Transfer-Encoding", Name::TransferEncoding),
            ("connection", Name::Connection),
            ("Upgrade", Name::Upgrade),
            ("Expect", Name::Expect),
            ("X-Forwarded-For", Name::XForwardedFor),
            ("X-Real-IP", Name::XRealIp),
            ("X-Forwarded-Proto", Name::XForwardedProto),
            ("X-Request-ID", Name::XRequestId),
            // Same length as a known name, different letters.
            ("x-forwarded-fox", Name::Other),
            ("content-lengtx", Name::Other),
            ("hosts", Name::Other),
            ("accept", Name::Other),
        ];
        for (name, want) in cases {
            assert_eq!(Name::of(name.as_bytes()), want, "{name}");
        }
        let replaced = ["x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-request-id"];
        for name in replaced {
            assert!(Name::of(name.as_bytes()).is_replaced_on_requests(), "{name}");
        }
        assert!(!Name::of(b"host").is_replaced_on_requests());
    }
}
