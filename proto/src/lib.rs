//! Wire types shared by every Shoal crate. Pure data and codecs: no I/O.
//!
//! Later issues add the sticky-table replication protocol and the gossip key
//! layout here; for now the crate holds the identity rules that config
//! validation, gossip and certificates must agree on.

pub mod hlc;
pub mod node_id;
pub mod replication;

pub use node_id::{NodeId, NodeIdError};

/// Version of Shoal's cluster wire protocols; peers refuse a different major.
pub const PROTOCOL_VERSION: u16 = 1;
