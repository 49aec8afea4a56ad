//! The vip-manager: VRRPv3 (RFC 5798 / RFC 9568) elections for virtual IPs.
//!
//! Pure parts: the protocol limits (`limits`), the advert codec
//! (`packet`) and the state machine (`state`). I/O: the raw VRRP socket,
//! the VIP address through netlink and gratuitous ARP (`net`), and the task
//! that runs one virtual router (`router`).

pub mod limits;
pub mod net;
pub mod packet;
pub mod router;
pub mod state;

pub use limits::{AdvertInterval, LimitError, Priority};
