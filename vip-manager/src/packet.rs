//! VRRPv3 advertisements (RFC 5798 §5, RFC 9568): encoding the VRRP
//! message (the kernel adds the IP header) and decoding received ones:
//! whole IPv4 datagrams (raw IPv4 sockets deliver the header), or IPv6
//! payloads with the header's facts from ancillary data.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::limits::IP_PROTOCOL;

const VERSION: u8 = 3;
const TYPE_ADVERTISEMENT: u8 = 1;
/// Version/type, VRID, priority, count, interval, checksum.
const HEADER_LEN: usize = 8;
/// The count field is 8 bits.
const MAX_ADDRESSES: usize = 255;

/// Whether the checksum covers an IPv4 pseudo-header. RFC 5798 says it
/// does; RFC 9568 clarifies that for IPv4 it does not, and deployed routers
/// do either. Both are accepted on receive; this picks what is sent.
/// IPv6 adverts always cover the IPv6 pseudo-header (both RFCs agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// With the pseudo-header (RFC 5798's text; keepalived's default).
    #[default]
    PseudoHeader,
    /// Over the VRRP message alone (RFC 9568 for IPv4).
    VrrpOnly,
}

/// A VRRPv3 advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    /// 0: the master is leaving; 255: the address owner.
    pub priority: u8,
    /// Max advert interval, in centiseconds (12 bits).
    pub interval_centis: u16,
    /// All of the source's family.
    pub addresses: Vec<IpAddr>,
}

/// An advertisement as received, with what its IP header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub advert: Advert,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("datagram too short ({0} bytes)")]
    Truncated(usize),
    #[error("not IPv4")]
    NotIpv4,
    #[error("not VRRP (IP protocol {0})")]
    NotVrrp(u8),
    #[error("TTL {0}, not 255: sent from off-link")]
    Ttl(u8),
    #[error("hop limit {0}, not 255: sent from off-link")]
    HopLimit(u8),
    #[error("VRRP version {0}, not 3")]
    Version(u8),
    #[error("VRRP message type {0}, not an advertisement")]
    Type(u8),
    #[error("length {len} does not match {count} addresses")]
    Length { len: usize, count: u8 },
    #[error("bad checksum")]
    Checksum,
    #[error("advert interval is zero")]
    ZeroInterval,
    #[error("too many addresses ({0})")]
    TooManyAddresses(usize),
    #[error("addresses of both IP families in one advert")]
    MixedFamilies,
    #[error("no destination or hop limit in the IPv6 ancillary data")]
    NoAncillaryData,
}

impl Advert {
    /// The VRRP message (no IP header) from `source` to `destination`.
    pub fn encode(&self, source: IpAddr, destination: IpAddr, checksum: Checksum) -> Result<Vec<u8>, PacketError> {
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(PacketError::TooManyAddresses(self.addresses.len()));
        }
        let v4 = source.is_ipv4();
        if destination.is_ipv4() != v4 || self.addresses.iter().any(|a| a.is_ipv4() != v4) {
            return Err(PacketError::MixedFamilies);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + 16 * self.addresses.len());
        out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(self.addresses.len() as u8);
        out.extend_from_slice(&(self.interval_centis & 0x0fff).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        let sum = match (source, destination, checksum) {
            (IpAddr::V4(s), IpAddr::V4(d), Checksum::PseudoHeader) => checksum_with_pseudo(s, d, &out),
            (IpAddr::V4(_), _, Checksum::VrrpOnly) => internet_checksum(0, &out),
            (IpAddr::V6(s), IpAddr::V6(d), _) => checksum_with_pseudo_v6(s, d, &out),
            _ => return Err(PacketError::MixedFamilies),
        };
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }
}

/// Decodes a whole IPv4 datagram holding a VRRPv3 advertisement, refusing
/// anything RFC 5798 §7.1 says to drop (TTL, version, type, length,
/// checksum). The VRID is the caller's to check.
pub fn decode_ipv4(datagram: &[u8]) -> Result<Received, PacketError> {
    if datagram.len() < 20 {
        return Err(PacketError::Truncated(datagram.len()));
    }
    if datagram[0] >> 4 != 4 {
        return Err(PacketError::NotIpv4);
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    if ihl < 20 || datagram.len() < ihl + HEADER_LEN {
        return Err(PacketError::Truncated(datagram.len()));
    }
    // Trust the IP total length over the buffer (padding), within bounds.
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let end = if total >= ihl + HEADER_LEN && total <= datagram.len() {
        total
    } else {
        datagram.len()
    };
    let ttl = datagram[8];
    let protocol = datagram[9];
    if protocol != IP_PROTOCOL {
        return Err(PacketError::NotVrrp(protocol));
    }
    if ttl != 255 {
        return Err(PacketError::Ttl(ttl));
    }
    let source = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let destination = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    let msg = &datagram[ihl..end];
    let advert = decode_message(msg, 4, |msg| {
        internet_checksum(0, msg) == 0 || checksum_with_pseudo(source, destination, msg) == 0
    })?;
    Ok(Received {
        source: source.into(),
        destination: destination.into(),
        advert,
    })
}

/// Decodes the VRRP message of an IPv6 datagram (raw IPv6 sockets deliver
/// no header: its source, destination and hop limit come from ancillary
/// data), refusing what RFC 5798 §7.1 says to drop.
pub fn decode_ipv6(
    msg: &[u8],
    source: Ipv6Addr,
    destination: Ipv6Addr,
    hop_limit: u8,
) -> Result<Received, PacketError> {
    if hop_limit != 255 {
        return Err(PacketError::HopLimit(hop_limit));
    }
    let advert = decode_message(msg, 16, |msg| checksum_with_pseudo_v6(source, destination, msg) == 0)?;
    Ok(Received {
        source: source.into(),
        destination: destination.into(),
        advert,
    })
}

/// The VRRP message itself; addresses are `address_len` bytes each.
fn decode_message(msg: &[u8], address_len: usize, checksum_ok: impl Fn(&[u8]) -> bool) -> Result<Advert, PacketError> {
    if msg.len() < HEADER_LEN {
        return Err(PacketError::Truncated(msg.len()));
    }
    let version = msg[0] >> 4;
    if version != VERSION {
        return Err(PacketError::Version(version));
    }
    let kind = msg[0] & 0x0f;
    if kind != TYPE_ADVERTISEMENT {
        return Err(PacketError::Type(kind));
    }
    let count = msg[3];
    if msg.len() != HEADER_LEN + address_len * usize::from(count) {
        return Err(PacketError::Length { len: msg.len(), count });
    }
    if !checksum_ok(msg) {
        return Err(PacketError::Checksum);
    }
    let interval_centis = u16::from_be_bytes([msg[4], msg[5]]) & 0x0fff;
    if interval_centis == 0 {
        return Err(PacketError::ZeroInterval);
    }
    let addresses = msg[HEADER_LEN..]
        .chunks_exact(address_len)
        .filter_map(|c| match c.len() {
            4 => <[u8; 4]>::try_from(c).ok().map(IpAddr::from),
            _ => <[u8; 16]>::try_from(c).ok().map(IpAddr::from),
        })
        .collect();
    Ok(Advert {
        vrid: msg[1],
        priority: msg[2],
        interval_centis,
        addresses,
    })
}

/// The checksum over the pseudo-header (source, destination, zero,
/// protocol, VRRP length) and `msg`. Over a message whose checksum field
/// is filled in, a correct one yields 0.
fn checksum_with_pseudo(source: Ipv4Addr, destination: Ipv4Addr, msg: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&source.octets());
    pseudo[4..8].copy_from_slice(&destination.octets());
    pseudo[9] = IP_PROTOCOL;
    pseudo[10..12].copy_from_slice(&(msg.len() as u16).to_be_bytes());
    internet_checksum(sum_words(0, &pseudo), msg)
}

fn checksum_with_pseudo_v6(source: Ipv6Addr, destination: Ipv6Addr, msg: &[u8]) -> u16 {
    ipv6_checksum(source, destination, IP_PROTOCOL, msg)
}

/// An upper-layer checksum over the IPv6 pseudo-header (RFC 8200 §8.1:
/// source, destination, 32-bit length, three zero bytes, next header).
pub(crate) fn ipv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, next_header: u8, msg: &[u8]) -> u16 {
    let mut pseudo = [0u8; 40];
    pseudo[0..16].copy_from_slice(&source.octets());
    pseudo[16..32].copy_from_slice(&destination.octets());
    pseudo[32..36].copy_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo[39] = next_header;
    internet_checksum(sum_words(0, &pseudo), msg)
}

fn sum_words(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// RFC 1071: one's complement of the one's complement sum, starting from
/// a partial sum `acc`.
fn internet_checksum(acc: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(sum_words(acc, data));
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MULTICAST_V4, MULTICAST_V6};

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

    fn advert() -> Advert {
        Advert {
            vrid: 51,
            priority: 150,
            interval_centis: 10,
            addresses: vec![Ipv4Addr::new(10, 0, 0, 100).into()],
        }
    }

    fn advert6() -> Advert {
        Advert {
            vrid: 51,
            priority: 100,
            interval_centis: 100,
            addresses: vec![Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100).into()],
        }
    }

    /// An IPv4 header as the kernel would put before `msg`.
    fn datagram(msg: &[u8], ttl: u8) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, IP_PROTOCOL, 0, 0];
        ip[2..4].copy_from_slice(&((20 + msg.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&SRC.octets());
        ip.extend_from_slice(&MULTICAST_V4.octets());
        ip.extend_from_slice(msg);
        ip
    }

    #[test]
    fn round_trips_with_either_checksum() -> Result<(), PacketError> {
        for mode in [Checksum::PseudoHeader, Checksum::VrrpOnly] {
            let msg = advert().encode(SRC.into(), MULTICAST_V4.into(), mode)?;
            assert_eq!(msg.len(), 12);
            let r = decode_ipv4(&datagram(&msg, 255))?;
            assert_eq!(r.advert, advert());
            assert_eq!((r.source, r.destination), (SRC.into(), MULTICAST_V4.into()));
        }
        Ok(())
    }

    /// vrid 51, priority 100, 1 s, fd00::100 from fe80::1 to ff02::12:
    /// checksum 0x6e47, computed independently (RFC 1071 over the RFC 8200
    /// pseudo-header, a few lines of Python). The checksum mode is
    /// irrelevant for IPv6: the pseudo-header is always covered.
    #[test]
    fn ipv6_adverts_carry_the_pseudo_header_checksum() -> Result<(), PacketError> {
        for mode in [Checksum::PseudoHeader, Checksum::VrrpOnly] {
            let msg = advert6().encode(SRC6.into(), MULTICAST_V6.into(), mode)?;
            assert_eq!(msg.len(), 8 + 16);
            assert_eq!(&msg[..8], &[0x31, 51, 100, 1, 0x00, 0x64, 0x6e, 0x47]);
            let r = decode_ipv6(&msg, SRC6, MULTICAST_V6, 255)?;
            assert_eq!(r.advert, advert6());
            assert_eq!(r.source, IpAddr::V6(SRC6));
        }
        let msg = advert6().encode(SRC6.into(), MULTICAST_V6.into(), Checksum::PseudoHeader)?;
        assert_eq!(
            decode_ipv6(&msg, SRC6, MULTICAST_V6, 64),
            Err(PacketError::HopLimit(64))
        );
        // Another source or destination than the checksum covered.
        let other = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
        assert_eq!(decode_ipv6(&msg, other, MULTICAST_V6, 255), Err(PacketError::Checksum));
        assert_eq!(decode_ipv6(&msg, SRC6, other, 255), Err(PacketError::Checksum));
        // An IPv4-sized address list is a length error for IPv6.
        let v4 = advert().encode(SRC.into(), MULTICAST_V4.into(), Checksum::VrrpOnly)?;
        assert!(matches!(
            decode_ipv6(&v4, SRC6, MULTICAST_V6, 255),
            Err(PacketError::Length { .. })
        ));
        for n in 0..msg.len() {
            assert!(
                decode_ipv6(&msg[..n], SRC6, MULTICAST_V6, 255).is_err(),
                "accepted {n} bytes"
            );
        }
        // Families must not mix.
        assert_eq!(
            advert6().encode(SRC.into(), MULTICAST_V4.into(), Checksum::PseudoHeader),
            Err(PacketError::MixedFamilies)
        );
        Ok(())
    }

    /// Fixed vectors (vrid 51, priority 100, 1 s, 192.168.1.100 from
    /// 192.168.1.10), checksums computed independently of this code from
    /// RFC 1071 (a few lines of Python): 0x0619 with the pseudo-header,
    /// 0xa85a without.
    #[test]
    fn matches_independently_computed_checksums() -> Result<(), PacketError> {
        let source = Ipv4Addr::new(192, 168, 1, 10);
        let want = Advert {
            vrid: 51,
            priority: 100,
            interval_centis: 100,
            addresses: vec![Ipv4Addr::new(192, 168, 1, 100).into()],
        };
        let with = want.encode(source.into(), MULTICAST_V4.into(), Checksum::PseudoHeader)?;
        assert_eq!(&with[..8], &[0x31, 51, 100, 1, 0x00, 0x64, 0x06, 0x19]);
        let without = want.encode(source.into(), MULTICAST_V4.into(), Checksum::VrrpOnly)?;
        assert_eq!(&without[..8], &[0x31, 51, 100, 1, 0x00, 0x64, 0xa8, 0x5a]);
        for msg in [with, without] {
            let mut ip = datagram(&msg, 255);
            ip[12..16].copy_from_slice(&source.octets());
            assert_eq!(decode_ipv4(&ip)?.advert, want);
        }
        Ok(())
    }

    #[test]
    fn refuses_what_rfc_5798_drops() -> Result<(), PacketError> {
        let msg = advert().encode(SRC.into(), MULTICAST_V4.into(), Checksum::PseudoHeader)?;
        assert_eq!(decode_ipv4(&datagram(&msg, 64)), Err(PacketError::Ttl(64)));
        let mut bad = msg.clone();
        bad[0] = 0x21;
        assert!(matches!(
            decode_ipv4(&datagram(&bad, 255)),
            Err(PacketError::Version(2))
        ));
        let mut bad = msg.clone();
        bad[2] ^= 1;
        assert_eq!(decode_ipv4(&datagram(&bad, 255)), Err(PacketError::Checksum));
        let mut bad = msg.clone();
        bad[3] = 2;
        assert!(matches!(
            decode_ipv4(&datagram(&bad, 255)),
            Err(PacketError::Length { .. })
        ));
        let mut bad = msg.clone();
        bad[0] = 0x32;
        assert!(matches!(decode_ipv4(&datagram(&bad, 255)), Err(PacketError::Type(2))));
        let mut udp = datagram(&msg, 255);
        udp[9] = 17;
        assert_eq!(decode_ipv4(&udp), Err(PacketError::NotVrrp(17)));
        for n in 0..datagram(&msg, 255).len() {
            assert!(decode_ipv4(&datagram(&msg, 255)[..n]).is_err(), "accepted {n} bytes");
        }
        Ok(())
    }

    /// Random datagrams, raw or behind a valid IPv4 header: never a panic,
    /// and (with overwhelming odds, fixed here by the seed) never accepted.
    #[test]
    fn random_bytes_are_refused_without_panicking() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            assert!(decode_ipv4(&bytes).is_err(), "accepted {bytes:?}");
            let ip = datagram(&bytes, 255);
            assert!(decode_ipv4(&ip).is_err(), "accepted {ip:?}");
            assert!(
                decode_ipv6(&bytes, SRC6, MULTICAST_V6, 255).is_err(),
                "accepted {bytes:?} as IPv6"
            );
        }
    }
}
