//! Gossip authentication. chitchat serialises its messages privately, so
//! the transport here sees envelopes, not bytes: it lets an inner chitchat
//! UDP socket serialise each outgoing message to a loopback "tap", then
//! appends the sender's boot id, a message counter and an HMAC-SHA256 tag
//! (truncated to 16 bytes) over them, the message and the sender's address,
//! and sends it on the real socket. Incoming datagrams are checked (tag,
//! with the address they really came from; counter not seen before) and
//! only then injected into an inner socket to be decoded. A datagram
//! without a valid tag never reaches chitchat, so a node with another key
//! can neither join nor inject state, and a captured datagram cannot be
//! replayed, nor reflected from another address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as ChitchatUdp};
use ring::hmac;
use tokio::net::UdpSocket;

/// Bytes of the HMAC-SHA256 tag kept on the wire.
pub const TAG_LEN: usize = 16;
/// Boot id, counter and tag after the message.
pub const TRAILER_LEN: usize = 8 + 8 + TAG_LEN;
/// Largest UDP payload; chitchat may fill it, and a message that leaves no
/// room for the trailer cannot be sent authenticated.
const MAX_DATAGRAM: usize = 65_507;
/// Shortest key accepted, in bytes.
const MIN_KEY_BYTES: usize = 16;

/// The cluster's shared gossip key, from a file of hex digits.
#[derive(Clone)]
pub struct GossipKey(hmac::Key);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read gossip key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gossip key {} must be at least {MIN_KEY_BYTES} bytes written as hex digits (`shoal certs` writes one)", path.display())]
    Format { path: PathBuf },
}

/// An authenticated datagram's parts.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    pub body: &'a [u8],
    pub boot: u64,
    pub counter: u64,
}

impl GossipKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = decode_hex(text.trim()).filter(|b| b.len() >= MIN_KEY_BYTES);
        match bytes {
            Some(b) => Ok(Self::from_bytes(&b)),
            None => Err(KeyError::Format {
                path: path.to_path_buf(),
            }),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The tag over the sender's address and everything before the tag.
    fn tag(&self, source: SocketAddr, signed: &[u8]) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        match source {
            SocketAddr::V4(a) => {
                ctx.update(&[4]);
                ctx.update(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                ctx.update(&[6]);
                ctx.update(&a.ip().octets());
            }
        }
        ctx.update(&source.port().to_be_bytes());
        ctx.update(signed);
        let full = ctx.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// Appends boot id, counter and tag to `body`, sent from `source`.
    pub fn seal(&self, source: SocketAddr, boot: u64, counter: u64, body: &mut Vec<u8>) {
        body.extend_from_slice(&boot.to_le_bytes());
        body.extend_from_slice(&counter.to_le_bytes());
        let tag = self.tag(source, body);
        body.extend_from_slice(&tag);
    }

    /// The parts of a datagram received from `source`, if its tag is valid.
    pub fn open<'a>(&self, source: SocketAddr, datagram: &'a [u8]) -> Option<Opened<'a>> {
        let tag_at = datagram.len().checked_sub(TAG_LEN)?;
        let body_len = tag_at.checked_sub(16)?;
        let (signed, tag) = datagram.split_at(tag_at);
        let want = self.tag(source, signed);
        // Compare without an early exit.
        let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return None;
        }
        let word = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(signed.get(at..at + 8)?.try_into().ok()?)) };
        Some(Opened {
            body: &signed[..body_len],
            boot: word(body_len)?,
            counter: word(body_len + 8)?,
        })
    }
}

/// Remembers, per sender boot, which counters were seen: the highest, and
/// the 64 below it. Older or repeated counters are replays. Bounded: beyond
/// `cap` senders the least recently heard is forgotten.
pub struct ReplayGuard {
    windows: HashMap<u64, Window>,
    cap: usize,
    clock: u64,
}

struct Window {
    max: u64,
    /// Bit i set: counter `max - i` was seen.
    seen: u64,
    used: u64,
}

impl ReplayGuard {
    pub fn new(cap: usize) -> Self {
        Self {
            windows: HashMap::new(),
            cap: cap.max(1),
            clock: 0,
        }
    }

    /// Whether (boot, counter) is new; records it if so.
    pub fn accept(&mut self, boot: u64, counter: u64) -> bool {
        self.clock += 1;
        let clock = self.clock;
        if let Some(w) = self.windows.get_mut(&boot) {
            w.used = clock;
            if counter > w.max {
                let shift = counter - w.max;
                w.seen = if shift >= 64 { 1 } else { (w.seen << shift) | 1 };
                w.max = counter;
                return true;
            }
            let age = w.max - counter;
            if age >= 64 || w.seen & (1 << age) != 0 {
                return false;
            }
            w.seen |= 1 << age;
            return true;
        }
        if self.windows.len() >= self.cap
            && let Some(oldest) = self.windows.iter().min_by_key(|(_, w)| w.used).map(|(b, _)| *b)
        {
            self.windows.remove(&oldest);
        }
        self.windows.insert(
            boot,
            Window {
                max: counter,
                seen: 1,
                used: clock,
            },
        );
        true
    }
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Counters of the gossip transport, for metrics.
#[derive(Debug, Default)]
pub struct GossipStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Datagrams dropped for a missing or wrong tag.
    pub rejected: AtomicU64,
}

pub struct AuthTransport {
    pub key: GossipKey,
    pub stats: Arc<GossipStats>,
}

#[async_trait]
impl Transport for AuthTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let real = Arc::new(
            UdpSocket::bind(listen_addr)
                .await
                .with_context(|| format!("cannot bind the gossip address {listen_addr}/UDP"))?,
        );
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let serializer = ChitchatUdp::open(loopback).await?;
        let serializer_addr = serializer.local_addr()?;
        let tap = UdpSocket::bind(loopback)
            .await
            .context("binding the gossip tap socket")?;
        let tap_addr = tap.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let receiver = Receiver::open(Arc::clone(&real), self.key.clone(), Arc::clone(&self.stats), tx).await?;
        let recv_task = tokio::spawn(receiver.run());
        Ok(Box::new(AuthSocket {
            boot: fastrand::u64(..),
            counter: 0,
            source: real.local_addr().context("gossip socket address")?,
            key: self.key.clone(),
            stats: Arc::clone(&self.stats),
            real,
            serializer,
            serializer_addr,
            tap,
            tap_addr,
            buf: vec![0u8; MAX_DATAGRAM],
            received: rx,
            recv_task,
        }))
    }
}

/// The sending half and the hand-over point of received messages. chitchat
/// may cancel `recv` at any await; receiving therefore runs in its own task
/// (which nothing cancels mid-message) and hands decoded messages over a
/// channel, so a cancelled `recv` loses nothing and mixes nothing up.
struct AuthSocket {
    /// Identifies this run of the node in every datagram it sends.
    boot: u64,
    counter: u64,
    /// The address datagrams leave from, covered by their tags.
    source: SocketAddr,
    key: GossipKey,
    stats: Arc<GossipStats>,
    real: Arc<UdpSocket>,
    /// chitchat's own socket, used only to serialise through loopback.
    serializer: ChitchatUdp,
    serializer_addr: SocketAddr,
    tap: UdpSocket,
    tap_addr: SocketAddr,
    buf: Vec<u8>,
    received: tokio::sync::mpsc::Receiver<RecvOutcome>,
    recv_task: tokio::task::JoinHandle<()>,
}

impl Drop for AuthSocket {
    fn drop(&mut self) {
        self.recv_task.abort();
    }
}

/// How long a loopback hop may take before the datagram is given up.
const LOOPBACK_WAIT: Duration = Duration::from_millis(200);

impl AuthSocket {
    /// The serialised message from the tap.
    async fn read_serialized(&mut self) -> anyhow::Result<usize> {
        loop {
            let (n, from) = tokio::time::timeout(LOOPBACK_WAIT, self.tap.recv_from(&mut self.buf))
                .await
                .context("gossip serialisation did not come back through loopback")??;
            // Anything else on loopback is not ours to forward.
            if from == self.serializer_addr {
                return Ok(n);
            }
        }
    }

    async fn rebuild(&mut self) -> anyhow::Result<()> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        self.serializer = ChitchatUdp::open(loopback).await?;
        self.serializer_addr = self.serializer.local_addr()?;
        self.tap = UdpSocket::bind(loopback)
            .await
            .context("binding the gossip tap socket")?;
        self.tap_addr = self.tap.local_addr()?;
        Ok(())
    }
}

#[async_trait]
impl Socket for AuthSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.real.local_addr().context("gossip socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        self.serializer.send(self.tap_addr, envelope).await?;
        let n = match self.read_serialized().await {
            Ok(n) => n,
            Err(e) => {
                // A late datagram would pair every later message with the
                // wrong destination: start over with fresh sockets.
                self.rebuild().await?;
                return Err(e);
            }
        };
        if n + TRAILER_LEN > MAX_DATAGRAM {
            tracing::warn!(bytes = n, "gossip message too large to authenticate; dropped");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let mut datagram = self.buf[..n].to_vec();
        self.counter += 1;
        self.key.seal(self.source, self.boot, self.counter, &mut datagram);
        let sent = match self.real.send_to(&datagram, to).await {
            Ok(sent) => sent,
            // A peer that is down refuses; that is gossip's normal weather.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => 0,
            Err(e) => return Err(e).context("sending gossip"),
        };
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(SendOutcome { num_bytes_sent: sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.received.recv().await.context("the gossip receiver stopped")
    }
}

/// Checks tags and decodes: one datagram at a time, in its own task.
struct Receiver {
    key: GossipKey,
    replays: ReplayGuard,
    /// When rejections were last logged, and how many since.
    rejected_log: (Option<std::time::Instant>, u64),
    stats: Arc<GossipStats>,
    real: Arc<UdpSocket>,
    decoder: ChitchatUdp,
    decoder_addr: SocketAddr,
    injector: UdpSocket,
    injector_addr: SocketAddr,
    out: tokio::sync::mpsc::Sender<RecvOutcome>,
}

impl Receiver {
    async fn open(
        real: Arc<UdpSocket>,
        key: GossipKey,
        stats: Arc<GossipStats>,
        out: tokio::sync::mpsc::Sender<RecvOutcome>,
    ) -> anyhow::Result<Self> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let decoder = ChitchatUdp::open(loopback).await?;
        let decoder_addr = decoder.local_addr()?;
        let injector = UdpSocket::bind(loopback).await.context("binding the gossip injector")?;
        let injector_addr = injector.local_addr()?;
        Ok(Self {
            key,
            replays: ReplayGuard::new(4096),
            rejected_log: (None, 0),
            stats,
            real,
            decoder,
            decoder_addr,
            injector,
            injector_addr,
            out,
        })
    }

    async fn rebuild(&mut self) -> anyhow::Result<()> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        self.decoder = ChitchatUdp::open(loopback).await?;
        self.decoder_addr = self.decoder.local_addr()?;
        self.injector = UdpSocket::bind(loopback).await.context("binding the gossip injector")?;
        self.injector_addr = self.injector.local_addr()?;
        Ok(())
    }

    /// Counts a dropped datagram; logs at most every ten seconds, so a
    /// flood cannot flood the log.
    fn rejected(&mut self, from: SocketAddr, bytes: usize, why: &str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        self.rejected_log.1 += 1;
        let due = self
            .rejected_log
            .0
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(%from, bytes, dropped = self.rejected_log.1, "gossip datagram {why}: dropped");
            self.rejected_log = (Some(std::time::Instant::now()), 0);
        }
    }

    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = match self.real.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; others
                    // are worth a line but must not end gossip.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(error = %e, "gossip receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            };
            let Some(opened) = self.key.open(from, &buf[..n]) else {
                self.rejected(from, n, "without a valid tag");
                continue;
            };
            if !self.replays.accept(opened.boot, opened.counter) {
                self.rejected(from, n, "replayed");
                continue;
            }
            if self.injector.send_to(opened.body, self.decoder_addr).await.is_err() {
                continue;
            }
            // The decoder skips payloads it cannot parse; the timeout keeps
            // such a datagram from stalling the next ones.
            let envelope = loop {
                match tokio::time::timeout(LOOPBACK_WAIT, self.decoder.recv()).await {
                    Ok(Ok(o)) if o.from_addr == self.injector_addr => break Some(o.envelope),
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) | Err(_) => break None,
                }
            };
            let Some(envelope) = envelope else {
                // A late decode would pair every later message with the
                // wrong sender: start over with fresh sockets.
                if let Err(e) = self.rebuild().await {
                    tracing::error!(error = %e, "cannot rebuild the gossip decoder; gossip receive stops");
                    return;
                }
                continue;
            };
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let outcome = RecvOutcome {
                from_addr: from,
                envelope,
                num_bytes_received: n,
            };
            // A full queue means chitchat is behind: drop, gossip repeats.
            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = self.out.try_send(outcome) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn sealed_datagrams_open_only_with_the_same_key_and_source() {
        let k1 = GossipKey::from_bytes(&[7u8; 32]);
        let k2 = GossipKey::from_bytes(&[8u8; 32]);
        let mut d = b"chitchat bytes".to_vec();
        k1.seal(addr(7946), 42, 9, &mut d);
        assert_eq!(d.len(), 14 + TRAILER_LEN);
        let opened = k1.open(addr(7946), &d);
        assert_eq!(
            opened,
            Some(Opened {
                body: b"chitchat bytes",
                boot: 42,
                counter: 9
            })
        );
        assert_eq!(k2.open(addr(7946), &d), None, "another key");
        assert_eq!(k1.open(addr(7947), &d), None, "replayed from another address");
        let mut tampered = d.clone();
        tampered[0] ^= 1;
        assert_eq!(k1.open(addr(7946), &tampered), None);
        let mut counter_bumped = d.clone();
        counter_bumped[14 + 8] ^= 1;
        assert_eq!(k1.open(addr(7946), &counter_bumped), None);
        assert_eq!(k1.open(addr(7946), &d[..20]), None, "shorter than a trailer");
        assert_eq!(k1.open(addr(7946), &[]), None);
    }

    #[test]
    fn replays_and_old_counters_are_refused() {
        let mut g = ReplayGuard::new(2);
        assert!(g.accept(1, 10));
        assert!(!g.accept(1, 10), "an exact replay");
        assert!(g.accept(1, 8), "a little late is fine once");
        assert!(!g.accept(1, 8));
        assert!(g.accept(1, 100));
        assert!(!g.accept(1, 30), "older than the 64-message window");
        assert!(g.accept(1, 40));
        assert!(g.accept(2, 1));
        // A third sender evicts the least recently heard (boot 1).
        assert!(g.accept(3, 1));
        assert!(g.accept(1, 100), "forgotten, so accepted again (bounded memory)");
    }

    #[test]
    fn keys_are_hex_of_sixteen_bytes_or_more() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
            p
        };
        assert!(GossipKey::load(&write("ok", &format!("{}\n", "ab".repeat(32)))).is_ok());
        assert!(matches!(
            GossipKey::load(&write("short", "abcd")),
            Err(KeyError::Format { .. })
        ));
        assert!(matches!(
            GossipKey::load(&write("nothex", &"zz".repeat(32))),
            Err(KeyError::Format { .. })
        ));
        assert!(matches!(
            GossipKey::load(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0"), None);
    }

    #[tokio::test]
    async fn authenticated_sockets_talk_and_others_are_ignored() -> anyhow::Result<()> {
        use chitchat::{ChitchatMessage, ProtocolVersion};
        let key = GossipKey::from_bytes(&[1u8; 32]);
        let t = AuthTransport {
            key: key.clone(),
            stats: Arc::default(),
        };
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut a = t.open(any).await?;
        let b_stats = Arc::new(GossipStats::default());
        let mut b = AuthTransport {
            key,
            stats: Arc::clone(&b_stats),
        }
        .open(any)
        .await?;
        let b_addr = b.local_addr()?;
        // A stranger with another key, then raw garbage, then the real one.
        let mut stranger = AuthTransport {
            key: GossipKey::from_bytes(&[2u8; 32]),
            stats: Arc::default(),
        }
        .open(any)
        .await?;
        let envelope = || ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::BadCluster,
        };
        stranger.send(b_addr, envelope()).await?;
        UdpSocket::bind(any).await?.send_to(b"garbage", b_addr).await?;
        a.send(b_addr, envelope()).await?;
        let got = tokio::time::timeout(Duration::from_secs(5), b.recv()).await??;
        assert_eq!(got.envelope, envelope());
        assert_eq!(got.from_addr, a.local_addr()?);
        assert_eq!(b_stats.rejected.load(Ordering::Relaxed), 2);
        assert_eq!(b_stats.received.load(Ordering::Relaxed), 1);
        // Messages keep flowing, each once.
        a.send(b_addr, envelope()).await?;
        let again = tokio::time::timeout(Duration::from_secs(5), b.recv()).await??;
        assert_eq!(again.from_addr, a.local_addr()?);
        assert_eq!(b_stats.received.load(Ordering::Relaxed), 2);
        Ok(())
    }
}
