//! The TOML schema of a node's config file. Every table rejects unknown keys;
//! defaults live here so `docs/configuration.md` can be checked against one
//! place.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_proto::NodeId;

use super::addr::{HostPort, IpCidr};
use super::duration::Dur;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    #[serde(default, rename = "vip")]
    pub vips: Vec<VipConfig>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    #[serde(default = "default_admin_addr")]
    pub admin_addr: SocketAddr,
    /// How long SIGTERM waits for in-flight requests and connections.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Data-plane worker threads; default: one per CPU.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How the data plane waits for its sockets (TCP and plain-text HTTP
    /// listeners; TLS ones stay on epoll): epoll, or io_uring rings where
    /// the kernel allows them.
    #[serde(default)]
    pub io: IoMode,
    /// File holding a bearer token that admin writes must present.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
}

/// The data plane's I/O interface (`[node] io`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// Readiness through epoll, on tokio.
    Epoll,
    /// TCP and plain-text HTTP listeners on io_uring (one ring per
    /// worker, deferred task work), falling back to epoll where rings are
    /// refused. The default: about a quarter less CPU per request.
    #[default]
    IoUring,
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

fn default_shutdown_timeout() -> Dur {
    Dur::from_secs(10)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub gossip_addr: SocketAddr,
    pub replication_addr: SocketAddr,
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    #[serde(default)]
    pub tls: Option<ClusterTls>,
    #[serde(default)]
    pub gossip_key_file: Option<PathBuf>,
    /// Time between gossip rounds; failure detection scales with it.
    #[serde(default = "default_gossip_interval")]
    pub gossip_interval: Dur,
}

fn default_gossip_interval() -> Dur {
    Dur::from_millis(100)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: IpCidr,
    pub interface: String,
    pub vrid: u16,
    #[serde(default = "default_priority")]
    pub priority: u16,
    #[serde(default = "default_advert_interval")]
    pub advert_interval: Dur,
    #[serde(default = "default_true")]
    pub preempt: bool,
    #[serde(default)]
    pub preempt_delay: Dur,
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// Gratuitous ARPs sent on becoming master.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u32,
    /// Re-announce the VIP this often while master; absent = never.
    #[serde(default)]
    pub garp_refresh: Option<Dur>,
    /// Subtracted from the priority while none of the VIP's listeners'
    /// pools has a healthy backend.
    #[serde(default = "default_health_penalty")]
    pub health_penalty: u16,
    /// Longest a backup holds off taking over while gossip shows the
    /// master alive; "0s" disables the guard.
    #[serde(default = "default_split_brain_hold")]
    pub split_brain_hold: Dur,
    /// Checksum form of sent adverts (both are accepted).
    #[serde(default)]
    pub checksum: VrrpChecksum,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VrrpChecksum {
    /// Over an IPv4 pseudo-header and the message (RFC 5798, keepalived).
    #[default]
    PseudoHeader,
    /// Over the message only (RFC 9568 for IPv4).
    VrrpOnly,
}

fn default_health_penalty() -> u16 {
    50
}
fn default_split_brain_hold() -> Dur {
    Dur::from_secs(2)
}

fn default_priority() -> u16 {
    100
}
fn default_advert_interval() -> Dur {
    Dur::from_millis(100)
}
fn default_true() -> bool {
    true
}
fn default_garp_repeat() -> u32 {
    5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub pool: String,
    /// HTTP: how long an idle keep-alive client connection is kept
    /// (default 60s). TCP: how long a connection may pass no byte in either
    /// direction (default 5m).
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// HTTP: how long a client may take to send a request's line and
    /// headers, from their first byte (default 10s).
    #[serde(default)]
    pub header_timeout: Option<Dur>,
    /// TLS termination (HTTP listeners).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Per-client-address request (HTTP) or connection (TCP) rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// HTTP routing rules, tried in order; the first match picks the pool,
    /// else `pool` serves.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// HTTP: the most a request line and headers may take (default 64 KiB);
    /// beyond it the client gets 431.
    #[serde(default)]
    pub max_header_bytes: Option<u64>,
    /// HTTP: the largest request body accepted (default 100 MiB); beyond it
    /// the client gets 413.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Most client connections open at once (default 20 000); beyond it
    /// new clients wait briefly in the accept queue, then are refused.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

/// Bounds of `max_header_bytes`: hyper refuses read buffers under 8 KiB.
pub const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<u64> = 8192..=16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained rate allowed per client address.
    pub requests_per_second: f64,
    /// Requests a client may send at once after being idle.
    pub burst: u32,
    /// Client addresses tracked at once; beyond it new addresses share one
    /// bucket, so memory stays bounded whatever the traffic.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

fn default_max_clients() -> usize {
    100_000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Host header (port ignored, case-insensitive); "*.example.com"
    /// matches any subdomain.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub header: Option<HeaderMatch>,
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

impl ListenerConfig {
    pub fn max_header_bytes(&self) -> u64 {
        self.max_header_bytes.unwrap_or(64 * 1024)
    }

    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes.unwrap_or(100 * 1024 * 1024)
    }

    pub fn max_connections(&self) -> u32 {
        self.max_connections.unwrap_or(20_000)
    }

    pub fn header_timeout(&self) -> Dur {
        self.header_timeout.unwrap_or(Dur::from_secs(10))
    }

    pub fn idle_timeout(&self) -> Dur {
        self.idle_timeout.unwrap_or(match self.protocol {
            Protocol::Http => Dur::from_secs(60),
            Protocol::Tcp => Dur::from_secs(300),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    LeastResponseTime,
    P2c,
    Random,
    IpHash,
    ConsistentHash,
    Maglev,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Self::RoundRobin,
        Self::WeightedRoundRobin,
        Self::LeastConn,
        Self::LeastResponseTime,
        Self::P2c,
        Self::Random,
        Self::IpHash,
        Self::ConsistentHash,
        Self::Maglev,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastConn => "least_conn",
            Self::LeastResponseTime => "least_response_time",
            Self::P2c => "p2c",
            Self::Random => "random",
            Self::IpHash => "ip_hash",
            Self::ConsistentHash => "consistent_hash",
            Self::Maglev => "maglev",
        }
    }

    /// Whether the algorithm picks by a hash of a request key.
    pub fn uses_hash_key(self) -> bool {
        matches!(self, Self::IpHash | Self::ConsistentHash | Self::Maglev)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the hash-based algorithms hash.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    #[default]
    ClientIp,
    Path,
    Header(String),
    Cookie(String),
}

impl HashKey {
    /// Whether the key can be computed for a plain TCP connection.
    pub fn works_for_tcp(&self) -> bool {
        matches!(self, Self::ClientIp)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hash_key {0:?}: expected \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"")]
pub struct HashKeyError(String);

impl FromStr for HashKey {
    type Err = HashKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || HashKeyError(s.to_string());
        match s {
            "client_ip" => Ok(Self::ClientIp),
            "path" => Ok(Self::Path),
            _ => match s.split_once(':') {
                Some(("header", name)) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Ok(Self::Header(name.to_ascii_lowercase()))
                }
                Some(("cookie", name)) if valid_cookie_name(name) => Ok(Self::Cookie(name.to_string())),
                _ => Err(err()),
            },
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("client_ip"),
            Self::Path => f.write_str("path"),
            Self::Header(h) => write!(f, "header:{h}"),
            Self::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HashKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// RFC 6265 cookie-name: an HTTP token.
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// Key hashed by ip_hash, consistent_hash and maglev.
    #[serde(default)]
    pub hash_key: HashKey,
    /// Attempts on other backends after a connection to one failed.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// HTTP: longest wait for a backend's response headers.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Dur,
    /// HTTP: how long an idle pooled connection to a backend is kept. Keep
    /// it below the backends' own keep-alive timeout (5s in Apache and
    /// Node.js), or a request may race the backend closing the connection.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    #[serde(default)]
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    #[serde(default)]
    pub outlier: Option<OutlierConfig>,
    /// Caps the extra load retries may add.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// Circuit breaker: most connections (TCP) or in-flight requests (HTTP)
    /// per backend; absent = unlimited.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests or connections that may wait for a backend at its
    /// `max_connections`, at most `connect_timeout` each; beyond them new
    /// ones fail fast.
    #[serde(default)]
    pub max_pending: u32,
    /// A backend that comes back (health, ejection, admin state) ramps its
    /// weight up linearly over this time.
    #[serde(default)]
    pub slow_start: Option<Dur>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries in flight may be at most this share of requests in flight...
    #[serde(default = "default_budget_percent")]
    pub percent: u32,
    /// ...or this many, whichever is more (so a quiet pool can retry).
    #[serde(default = "default_budget_min")]
    pub min_retries: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_retries: default_budget_min(),
        }
    }
}

fn default_budget_percent() -> u32 {
    20
}
fn default_budget_min() -> u32 {
    3
}

fn default_algorithm() -> Algorithm {
    Algorithm::RoundRobin
}
fn default_retries() -> u32 {
    2
}
fn default_connect_timeout() -> Dur {
    Dur::from_secs(3)
}
fn default_response_timeout() -> Dur {
    Dur::from_secs(60)
}
fn default_keepalive_timeout() -> Dur {
    Dur::from_secs(4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub kind: HealthKind,
    /// HTTP checks: the path requested; 2xx and 3xx count as healthy.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// HTTP checks: the Host header sent (default: the backend's address).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Consecutive passes that bring an unhealthy backend back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take a healthy backend out.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_health_path() -> String {
    "/".to_string()
}
fn default_health_interval() -> Dur {
    Dur::from_secs(2)
}
fn default_health_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StickyMode {
    InsertCookie,
    LearnCookie,
    Header,
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    pub mode: StickyMode,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default = "default_sticky_ttl")]
    pub ttl: Dur,
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
}

fn default_sticky_ttl() -> Dur {
    Dur::from_secs(30 * 60)
}
fn default_max_entries() -> u64 {
    1_000_000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_base_ejection")]
    pub base_ejection: Dur,
    /// Longest ejection, however often a backend was ejected.
    #[serde(default = "default_max_ejection")]
    pub max_ejection: Dur,
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_max_ejection() -> Dur {
    Dur::from_secs(300)
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Dur {
    Dur::from_secs(30)
}
fn default_max_ejection_percent() -> u32 {
    50
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub address: HostPort,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Used only when no primary backend of the pool is usable.
    #[serde(default)]
    pub backup: bool,
}

fn default_weight() -> u32 {
    1
}

/// Largest backend weight; keeps weighted tables small and sums in range.
pub const MAX_WEIGHT: u32 = 1000;
