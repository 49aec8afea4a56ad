//! The vip-manager's I/O: the interface's facts, the raw VRRP socket, the
//! virtual address through netlink and gratuitous ARP. Everything here
//! needs CAP_NET_RAW or CAP_NET_ADMIN.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn6, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::limits::{IP_PROTOCOL, MULTICAST_V4, MULTICAST_V6};
use crate::packet::{self, PacketError, Received};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error("interface {0:?} has no IPv4 address to send VRRP adverts from")]
    NoIpv4(String),
    #[error("interface {0:?} has no IPv6 link-local address to send VRRP adverts from")]
    NoLinkLocal(String),
    #[error(
        "{what}: permission denied: the vip-manager needs CAP_NET_RAW and CAP_NET_ADMIN (run as root, or `setcap cap_net_raw,cap_net_admin+ep shoal`)"
    )]
    Permission { what: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {message}")]
    Netlink { what: String, message: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            NetError::Permission { what }
        } else {
            NetError::Io { what, source }
        }
    }
}

/// What the vip-manager needs to know of an interface, read fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub index: u32,
    pub mac: [u8; 6],
    /// The first IPv4 address that is not the VIP: IPv4 adverts' source.
    pub primary_v4: Option<Ipv4Addr>,
    /// The link-local address: IPv6 adverts' source (RFC 5798 §5.1.2.1).
    pub link_local_v6: Option<Ipv6Addr>,
    /// Up with carrier.
    pub running: bool,
}

impl InterfaceInfo {
    /// The address adverts for a VIP of `vip`'s family are sent from.
    pub fn advert_source(&self, name: &str, vip: IpAddr) -> Result<IpAddr, NetError> {
        match vip {
            IpAddr::V4(_) => self
                .primary_v4
                .map(IpAddr::V4)
                .ok_or_else(|| NetError::NoIpv4(name.to_string())),
            IpAddr::V6(_) => self
                .link_local_v6
                .map(IpAddr::V6)
                .ok_or_else(|| NetError::NoLinkLocal(name.to_string())),
        }
    }
}

pub fn interface(name: &str, vip: IpAddr) -> Result<InterfaceInfo, NetError> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| NetError::NoInterface(name.to_string()))?;
    let primary_v4 = iface.ips.iter().find_map(|n| match n.ip() {
        IpAddr::V4(a) if IpAddr::V4(a) != vip => Some(a),
        _ => None,
    });
    let link_local_v6 = iface.ips.iter().find_map(|n| match n.ip() {
        IpAddr::V6(a) if a.is_unicast_link_local() => Some(a),
        _ => None,
    });
    Ok(InterfaceInfo {
        index: iface.index,
        mac: iface.mac.map(|m| m.octets()).unwrap_or_default(),
        primary_v4,
        link_local_v6,
        running: iface.is_up() && iface.is_running(),
    })
}

/// A raw IP socket for protocol 112 on one interface, in the VRRP group.
/// Not bound to the source address: on a raw socket that would filter
/// received packets by destination and drop the group's.
pub enum VrrpSocket {
    /// Driven through tokio's `UdpSocket`, whose `send_to`/`recv` are plain
    /// datagram syscalls that work on raw sockets too. IPv4 raw sockets
    /// deliver the IP header, so that is all receiving needs.
    V4(UdpSocket),
    /// IPv6 raw sockets deliver no header: the hop limit and destination
    /// come as ancillary data (recvmsg), and the source is pinned with
    /// IPV6_PKTINFO on send so the checksum's pseudo-header is right.
    /// Also held as a `UdpSocket`, only for its readiness (`async_io`).
    V6 {
        socket: UdpSocket,
        index: u32,
        source: Ipv6Addr,
    },
}

impl VrrpSocket {
    /// Sending from `source`, the interface's address of the VIP's family.
    pub fn open(interface: &str, index: u32, source: IpAddr) -> Result<Self, NetError> {
        match source {
            IpAddr::V4(source) => Self::open_v4(interface, index, source),
            IpAddr::V6(source) => Self::open_v6(interface, index, source),
        }
    }

    fn open_v4(interface: &str, index: u32, source: Ipv4Addr) -> Result<Self, NetError> {
        let what = format!("VRRP socket on {interface}");
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(IP_PROTOCOL))))
            .map_err(io_err(what.clone()))?;
        s.bind_device(Some(interface.as_bytes()))
            .map_err(io_err(what.clone()))?;

        s.join_multicast_v4_n(&MULTICAST_V4, &socket2::InterfaceIndexOrAddress::Index(index))
            .map_err(io_err(what.clone()))?;
        s.set_multicast_if_v4(&source).map_err(io_err(what.clone()))?;
        s.set_multicast_ttl_v4(255).map_err(io_err(what.clone()))?;
        s.set_ttl_v4(255).map_err(io_err(what.clone()))?;
        s.set_multicast_loop_v4(false).map_err(io_err(what.clone()))?;
        s.set_multicast_all_v4(false).map_err(io_err(what.clone()))?;
        s.set_nonblocking(true).map_err(io_err(what.clone()))?;
        let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s)).map_err(io_err(what))?;
        Ok(Self::V4(socket))
    }

    fn open_v6(interface: &str, index: u32, source: Ipv6Addr) -> Result<Self, NetError> {
        let what = format!("VRRP socket (IPv6) on {interface}");
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(i32::from(IP_PROTOCOL))))
            .map_err(io_err(what.clone()))?;
        s.bind_device(Some(interface.as_bytes()))
            .map_err(io_err(what.clone()))?;
        s.join_multicast_v6(&MULTICAST_V6, index)
            .map_err(io_err(what.clone()))?;
        s.set_multicast_if_v6(index).map_err(io_err(what.clone()))?;
        s.set_multicast_hops_v6(255).map_err(io_err(what.clone()))?;
        s.set_unicast_hops_v6(255).map_err(io_err(what.clone()))?;
        s.set_multicast_loop_v6(false).map_err(io_err(what.clone()))?;
        s.set_recv_hoplimit_v6(true).map_err(io_err(what.clone()))?;
        nix::sys::socket::setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true)
            .map_err(|e| io_err(what.clone())(e.into()))?;
        s.set_nonblocking(true).map_err(io_err(what.clone()))?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(s)).map_err(io_err(what))?;
        Ok(Self::V6 { socket, index, source })
    }

    pub async fn send(&self, msg: &[u8], to: IpAddr) -> io::Result<()> {
        match (self, to) {
            (Self::V4(s), IpAddr::V4(_)) => s.send_to(msg, SocketAddr::from((to, 0))).await.map(drop),
            (Self::V6 { socket, index, source }, IpAddr::V6(to)) => {
                let dest = SockaddrIn6::from(SocketAddrV6::new(to, 0, 0, *index));
                let info = nix::libc::in6_pktinfo {
                    ipi6_addr: nix::libc::in6_addr {
                        s6_addr: source.octets(),
                    },
                    ipi6_ifindex: *index,
                };
                let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
                socket
                    .async_io(Interest::WRITABLE, || {
                        nix::sys::socket::sendmsg(
                            socket.as_raw_fd(),
                            &[IoSlice::new(msg)],
                            &cmsg,
                            MsgFlags::empty(),
                            Some(&dest),
                        )
                        .map(drop)
                        .map_err(io::Error::from)
                    })
                    .await
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "peer address of the other IP family",
            )),
        }
    }

    /// The next VRRP datagram, decoded: `Err` for I/O, `Ok(Err)` for a
    /// datagram that is not a valid advert.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Result<Received, PacketError>> {
        match self {
            Self::V4(s) => {
                let n = s.recv(buf).await?;
                Ok(packet::decode_ipv4(&buf[..n]))
            }
            Self::V6 { socket, .. } => {
                let (n, source, facts) = socket.async_io(Interest::READABLE, || recv_v6(socket, buf)).await?;
                Ok(match facts {
                    Some((destination, hop_limit)) => packet::decode_ipv6(&buf[..n], source, destination, hop_limit),
                    // The kernel always adds both once asked; without them
                    // the checksum and hop limit cannot be checked.
                    None => Err(PacketError::NoAncillaryData),
                })
            }
        }
    }
}

type V6Datagram = (usize, Ipv6Addr, Option<(Ipv6Addr, u8)>);

/// One recvmsg: length, source, and (destination, hop limit) if the
/// ancillary data held both.
fn recv_v6(s: &UdpSocket, buf: &mut [u8]) -> io::Result<V6Datagram> {
    let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::c_int);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = nix::sys::socket::recvmsg::<SockaddrIn6>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let source = msg.address.map_or(Ipv6Addr::UNSPECIFIED, |a| a.ip());
    let (mut destination, mut hop_limit) = (None, None);
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv6PacketInfo(info) => destination = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
            ControlMessageOwned::Ipv6HopLimit(h) => hop_limit = u8::try_from(h).ok(),
            _ => {}
        }
    }
    Ok((msg.bytes, source, destination.zip(hop_limit)))
}

/// Adds and removes the virtual address (rtnetlink).
pub struct Addresses {
    handle: rtnetlink::Handle,
}

const EEXIST: i32 = 17;

impl Addresses {
    pub fn open() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io_err("netlink socket"))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// IPv6 addresses skip duplicate address detection (as keepalived
    /// does): the VIP must work at once. (A router killed with SIGKILL may
    /// still hold it; our neighbour advertisements win the clients.)
    pub async fn add(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetError> {
        let mut request = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            request.message_mut().header.flags |= rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == EEXIST => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.to_io().kind() == io::ErrorKind::PermissionDenied => {
                Err(NetError::Permission {
                    what: format!("adding {ip}/{prefix}"),
                })
            }
            Err(e) => Err(NetError::Netlink {
                what: format!("adding {ip}/{prefix}"),
                message: e.to_string(),
            }),
        }
    }

    /// Removes the address if present.
    pub async fn remove(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetError> {
        let what = || format!("removing {ip}/{prefix}");
        let found: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(ip)
            .set_prefix_length_filter(prefix)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::Netlink {
                what: what(),
                message: e.to_string(),
            })?;
        for msg in found {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| NetError::Netlink {
                    what: what(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// A gratuitous ARP frame: broadcast, sender and target IP both the VIP.
/// `reply`: the ARP reply form (some switches and hosts only learn from
/// one of the two).
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6-byte MAC, 4-byte IP, opcode.
    f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, if reply { 2 } else { 1 }]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target MAC: zero for a request, broadcast for a reply.
    if reply {
        f[32..38].copy_from_slice(&[0xff; 6]);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) for `ip` from
/// `mac`: to all nodes, hop limit 255, Override set so neighbours replace
/// the cached link-layer address, with the target link-layer option.
pub fn unsolicited_na_frame(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 86] {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    const ICMPV6: u8 = 58;
    let mut f = [0u8; 86];
    // Ethernet: the all-nodes group's multicast MAC.
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    // IPv6: version 6, payload 32 bytes, ICMPv6, hop limit 255.
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = ICMPV6;
    f[21] = 255;
    f[22..38].copy_from_slice(&ip.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    // ICMPv6 neighbour advertisement: type 136, flags O, target, option 2.
    let icmp = &mut f[54..86];
    icmp[0] = 136;
    icmp[4] = 0x20;
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = 2;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac);
    let sum = packet::ipv6_checksum(ip, ALL_NODES, ICMPV6, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The frames announcing `ip` at `mac`: gratuitous ARP in request and
/// reply form for IPv4, an unsolicited neighbour advertisement for IPv6.
fn announcement_frames(mac: [u8; 6], ip: IpAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(ip) => vec![garp_frame(mac, ip, false).to_vec(), garp_frame(mac, ip, true).to_vec()],
        IpAddr::V6(ip) => vec![unsolicited_na_frame(mac, ip).to_vec()],
    }
}

/// Sends `rounds` announcements of `ip` (see `announcement_frames`), `gap`
/// apart. Blocking: run it off the async threads.
pub fn announce(interface: &str, ip: IpAddr, rounds: u32, gap: std::time::Duration) -> Result<(), NetError> {
    let what = format!("announcing {ip} on {interface}");
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)
        .ok_or_else(|| NetError::NoInterface(interface.to_string()))?;
    let mac = iface.mac.map(|m| m.octets()).unwrap_or_default();
    let config = pnet_datalink::Config {
        promiscuous: false,
        ..Default::default()
    };
    let mut tx = match pnet_datalink::channel(&iface, config).map_err(io_err(what.clone()))? {
        pnet_datalink::Channel::Ethernet(tx, _rx) => tx,
        _ => {
            return Err(NetError::Io {
                what,
                source: io::Error::other("not an Ethernet channel"),
            });
        }
    };
    let frames = announcement_frames(mac, ip);
    for round in 0..rounds {
        if round > 0 {
            std::thread::sleep(gap);
        }
        for frame in &frames {
            if let Some(r) = tx.send_to(frame, None) {
                r.map_err(io_err(what.clone()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frames_are_rfc_5227_announcements() {
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let ip = Ipv4Addr::new(10, 0, 0, 100);
        let req = garp_frame(mac, ip, false);
        assert_eq!(&req[0..6], &[0xff; 6]);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(&req[20..22], &[0, 1]);
        assert_eq!(&req[22..28], &mac);
        assert_eq!(&req[28..32], &ip.octets());
        assert_eq!(&req[32..38], &[0; 6]);
        assert_eq!(&req[38..42], &ip.octets());
        let rep = garp_frame(mac, ip, true);
        assert_eq!(&rep[20..22], &[0, 2]);
        assert_eq!(&rep[32..38], &[0xff; 6]);
    }

    /// Checked field by field against RFC 4861 §4.4; the checksum is the
    /// one computed independently (Python, RFC 1071 over the pseudo-header)
    /// for this frame: 0x588d.
    #[test]
    fn unsolicited_na_overrides_the_neighbours_cache() {
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let ip = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
        let f = unsolicited_na_frame(mac, ip);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!((f[14] >> 4, f[20], f[21]), (6, 58, 255));
        assert_eq!(&f[18..20], &[0, 32]);
        assert_eq!(&f[22..38], &ip.octets());
        assert_eq!(&f[38..54], &Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets());
        assert_eq!((f[54], f[55]), (136, 0));
        assert_eq!(f[58], 0x20, "Override only: not a router, not solicited");
        assert_eq!(&f[62..78], &ip.octets());
        assert_eq!(&f[78..80], &[2, 1]);
        assert_eq!(&f[80..86], &mac);
        assert_eq!(&f[56..58], &[0x58, 0x8d]);
    }
}
