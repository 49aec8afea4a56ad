//! The vip-manager: VRRPv3 (RFC 5798 / RFC 9568) elections for virtual IPs.
//!
//! This crate is filled in by the vip-manager issue (state machine, packet
//! codec, netlink and gratuitous ARP). It already owns the protocol limits so
//! that the node's config validation and the future state machine agree on
//! them.

pub mod limits;

pub use limits::{AdvertInterval, LimitError, Priority};
