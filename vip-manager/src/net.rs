//! The vip-manager's I/O: the interface's facts, the raw VRRP socket, the
//! virtual address through netlink and gratuitous ARP. Everything here
//! needs CAP_NET_RAW or CAP_NET_ADMIN.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use futures_util::TryStreamExt;
use socket2::{Domain, Protocol, Socket, Type};

use crate::limits::{IP_PROTOCOL, MULTICAST_V4};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error("interface {0:?} has no IPv4 address to send VRRP adverts from")]
    NoIpv4(String),
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
    /// The first IPv4 address that is not the VIP: adverts' source.
    pub primary_v4: Option<Ipv4Addr>,
    /// Up with carrier.
    pub running: bool,
}

pub fn interface(name: &str, vip: Ipv4Addr) -> Result<InterfaceInfo, NetError> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| NetError::NoInterface(name.to_string()))?;
    let primary_v4 = iface.ips.iter().find_map(|n| match n.ip() {
        IpAddr::V4(a) if a != vip => Some(a),
        _ => None,
    });
    Ok(InterfaceInfo {
        index: iface.index,
        mac: iface.mac.map(|m| m.octets()).unwrap_or_default(),
        primary_v4,
        running: iface.is_up() && iface.is_running(),
    })
}

/// A raw IP socket for protocol 112 on one interface. Driven through
/// tokio's `UdpSocket`, whose `send_to`/`recv` are plain datagram syscalls
/// that work on any datagram-like socket, raw ones included.
pub struct VrrpSocket {
    socket: tokio::net::UdpSocket,
}

impl VrrpSocket {
    /// Bound to `interface`, sending from its address `source` (as the
    /// checksum's pseudo-header says), in the VRRP group. Not bound to
    /// `source`: on a raw socket that would filter received packets by
    /// destination and drop the group's.
    pub fn open(interface: &str, index: u32, source: Ipv4Addr) -> Result<Self, NetError> {
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
        Ok(Self { socket })
    }

    pub async fn send(&self, msg: &[u8], to: Ipv4Addr) -> io::Result<()> {
        self.socket.send_to(msg, SocketAddr::from((to, 0))).await.map(drop)
    }

    /// The next datagram, IPv4 header included, into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf).await
    }
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

    pub async fn add(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        match self.handle.address().add(index, IpAddr::V4(ip), prefix).execute().await {
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
    pub async fn remove(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let what = || format!("removing {ip}/{prefix}");
        let found: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(ip))
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

/// Sends `rounds` pairs (request and reply) of gratuitous ARPs for `ip`,
/// `gap` apart. Blocking: run it off the async threads.
pub fn send_garp(interface: &str, ip: Ipv4Addr, rounds: u32, gap: std::time::Duration) -> Result<(), NetError> {
    let what = format!("gratuitous ARP on {interface}");
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
    for round in 0..rounds {
        if round > 0 {
            std::thread::sleep(gap);
        }
        for reply in [false, true] {
            if let Some(r) = tx.send_to(&garp_frame(mac, ip, reply), None) {
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
}
