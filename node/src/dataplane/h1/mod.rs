//! Shoal's own HTTP/1.1 path for plain-text listeners: the request head
//! is parsed in the connection's buffer, rewritten into the backend's
//! request without a header map, and sent on a kept-alive backend
//! connection owned by the client connection's task; the response head is
//! rewritten the same way and the body copied as it arrives. Requests it
//! does not take (upgrades, `Expect`, chunked or large request bodies,
//! HTTP/1.0, malformed heads) hand the connection to hyper before any
//! side effect, with the bytes read so far.

mod backend_conns;
pub mod chunked;
mod conn;
pub mod head;
mod io;
mod names;

pub use backend_conns::BackendConns;
pub(crate) use backend_conns::IdleSet;
pub use conn::{Ending, Settings, serve};
pub use io::{HttpRelay, make_room};
