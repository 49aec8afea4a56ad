//! The proxying data plane: listeners, the L4 (TCP) and L7 (HTTP) proxies.

mod body;
pub mod bridge;
pub mod copy;
pub mod h1;
pub mod headers;
pub mod http;
pub mod idle;
mod lazy_timer;
pub mod listener;
pub mod ratelimit;
pub mod route;

pub mod stats;
pub mod tcp;
pub mod uring;
pub mod workers;

pub use body::ResponseBody;
pub use stats::ListenerStats;
