//! A Shoal node: config, balancing, the proxying data plane, health checks,
//! the admin API and the CLI. The binary `shoal` is a thin wrapper.

pub mod admin;
pub mod affinity;
pub mod balance;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod demo;
pub mod health;
pub mod pool;
pub mod probe;
pub mod server;
pub mod tls;
pub mod vip;
