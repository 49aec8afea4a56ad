//! Session affinity: the sticky table, each pool's sticky policy, and the
//! table's replication to peers over QUIC.

pub mod replication;
pub mod sticky;
pub mod table;

pub use replication::{Replication, now_unix_ms};
pub use sticky::Sticky;
pub use table::{AffinityTable, Found};
