//! VRRPv3 protocol limits (RFC 5798 §5.2) as validated types.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// IP protocol number of VRRP.
pub const IP_PROTOCOL: u8 = 112;
/// IPv4 multicast group VRRP adverts are sent to.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// ff02::12, the IPv6 VRRP group.
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// VRRPv3 carries the advert interval in 12 bits of centiseconds.
pub const MAX_ADVERT_CENTIS: u16 = 0x0fff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("advert interval must be between 10ms and 40.95s, got {0:?}")]
    AdvertOutOfRange(Duration),
    #[error("advert interval must be a whole number of centiseconds (10ms steps), got {0:?}")]
    AdvertNotCentis(Duration),
    #[error("priority must be between 1 and 254 (0 and 255 are reserved), got {0}")]
    Priority(u16),
    #[error("vrid must be between 1 and 255, got {0}")]
    Vrid(u16),
}

/// An advert interval that fits the VRRPv3 wire field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertInterval {
    centis: u16,
}

impl AdvertInterval {
    pub fn from_duration(d: Duration) -> Result<Self, LimitError> {
        let millis = d.as_millis();
        if !d.subsec_nanos().is_multiple_of(10_000_000) {
            return Err(LimitError::AdvertNotCentis(d));
        }
        let centis = millis / 10;
        if centis == 0 || centis > u128::from(MAX_ADVERT_CENTIS) {
            return Err(LimitError::AdvertOutOfRange(d));
        }
        Ok(Self { centis: centis as u16 })
    }

    pub fn centis(self) -> u16 {
        self.centis
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(u64::from(self.centis) * 10)
    }
}

/// A configurable router priority: 1–254. 255 means "address owner" and 0
/// means "master is shutting down"; neither may be configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority(u8);

impl Priority {
    pub fn new(p: u16) -> Result<Self, LimitError> {
        match u8::try_from(p) {
            Ok(v @ 1..=254) => Ok(Self(v)),
            _ => Err(LimitError::Priority(p)),
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// Validates a virtual router id (1–255).
pub fn validate_vrid(vrid: u16) -> Result<u8, LimitError> {
    match u8::try_from(vrid) {
        Ok(v @ 1..=255) => Ok(v),
        _ => Err(LimitError::Vrid(vrid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advert_interval_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(AdvertInterval::from_duration(ms(100)).map(|a| a.centis()), Ok(10));
        assert_eq!(AdvertInterval::from_duration(ms(10)).map(|a| a.centis()), Ok(1));
        assert_eq!(AdvertInterval::from_duration(ms(40_950)).map(|a| a.centis()), Ok(4095));
        assert!(matches!(
            AdvertInterval::from_duration(ms(0)),
            Err(LimitError::AdvertOutOfRange(_))
        ));
        assert!(matches!(
            AdvertInterval::from_duration(ms(40_960)),
            Err(LimitError::AdvertOutOfRange(_))
        ));
        assert!(matches!(
            AdvertInterval::from_duration(ms(15)),
            Err(LimitError::AdvertNotCentis(_))
        ));
        assert_eq!(
            AdvertInterval::from_duration(ms(250)).map(|a| a.as_duration()),
            Ok(ms(250))
        );
    }

    #[test]
    fn priority_and_vrid_bounds() {
        assert!(Priority::new(0).is_err());
        assert!(Priority::new(255).is_err());
        assert_eq!(Priority::new(150).map(Priority::get), Ok(150));
        assert_eq!(validate_vrid(0), Err(LimitError::Vrid(0)));
        assert_eq!(validate_vrid(256), Err(LimitError::Vrid(256)));
        assert_eq!(validate_vrid(51), Ok(51));
    }
}
