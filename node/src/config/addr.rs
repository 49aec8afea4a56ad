//! Address forms in config files that the standard library does not parse:
//! backend addresses that may name a host, and VIPs in CIDR form.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `IP:PORT`, `[IPv6]:PORT` or `HOSTNAME:PORT`; host names are resolved when
/// the node starts, so `shoal check` does not depend on DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPort {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {reason} (write HOST:PORT, e.g. \"10.0.1.10:8080\")")]
pub struct AddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for HostPort {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddrError {
            input: s.to_string(),
            reason,
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Ip(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        let port: u16 = port.parse().map_err(|_| err("port is not a number 1-65535"))?;
        if port == 0 {
            return Err(err("port 0 is not allowed"));
        }
        if host.parse::<IpAddr>().is_ok() || host.contains(['[', ']', ':']) {
            return Err(err("malformed IP address (IPv6 needs brackets: [::1]:80)"));
        }
        if !valid_hostname(host) {
            return Err(err("not an IP address or a valid host name"));
        }
        Ok(Self::Name {
            host: host.to_string(),
            port,
        })
    }
}

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // An all-numeric dotted name is a mistyped IP address, not a host.
        && !host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl HostPort {
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(a) => a.port(),
            Self::Name { port, .. } => *port,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// An IP address with a prefix length, e.g. "10.0.0.100/24".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR address {input:?}: {reason} (write e.g. \"10.0.0.100/24\")")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

impl FromStr for IpCidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("missing /PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("bad IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err("prefix length too long for the address family"));
        }
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(err("not a unicast address"));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

macro_rules! serde_via_str {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_via_str!(HostPort);
serde_via_str!(IpCidr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            "10.0.1.10:8080".parse(),
            Ok(HostPort::Ip(SocketAddr::from(([10, 0, 1, 10], 8080))))
        );
        assert!(matches!("[::1]:80".parse::<HostPort>(), Ok(HostPort::Ip(_))));
        assert_eq!(
            "backend1:8080".parse(),
            Ok(HostPort::Name {
                host: "backend1".into(),
                port: 8080
            })
        );
        for bad in [
            "10.0.1.10",
            "10.0.1.999:80",
            "host:0",
            "host:99999",
            ":80",
            "-a:80",
            "::1:80",
            "a b:80",
            "1.2.3:80",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn cidr_forms() {
        let c: Result<IpCidr, _> = "10.0.0.100/24".parse();
        assert_eq!(c.map(|c| c.to_string()), Ok("10.0.0.100/24".to_string()));
        assert!("fd00::10/64".parse::<IpCidr>().is_ok());
        for bad in [
            "10.0.0.100",
            "10.0.0.100/33",
            "0.0.0.0/0",
            "224.0.0.18/32",
            "x/24",
            "fd00::1/129",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad:?} should be rejected");
        }
    }
}
