//! Gossip authentication. chitchat serialises its messages privately, so
//! the transport here sees envelopes, not bytes: it lets an inner chitchat
//! UDP socket serialise each outgoing message to a loopback "tap", appends
//! an HMAC-SHA256 tag (truncated to 16 bytes) and sends it on the real
//! socket; incoming datagrams are checked and only then injected into the
//! inner socket to be decoded. A datagram without a valid tag never reaches
//! chitchat, so a node with another key can neither join nor inject state.

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
/// Largest UDP payload; chitchat may fill it, and a message that leaves no
/// room for the tag cannot be sent authenticated.
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

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let full = hmac::sign(&self.0, body);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// Appends the tag to `body`.
    pub fn seal(&self, body: &mut Vec<u8>) {
        let tag = self.tag(body);
        body.extend_from_slice(&tag);
    }

    /// The body of a sealed datagram, if its tag is valid.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let split = datagram.len().checked_sub(TAG_LEN)?;
        let (body, tag) = datagram.split_at(split);
        // ring compares in constant time; verify the truncated tag by
        // recomputing it and comparing without an early exit.
        let want = self.tag(body);
        let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(body)
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
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let receiver = Receiver::open(Arc::clone(&real), self.key.clone(), Arc::clone(&self.stats), tx).await?;
        let recv_task = tokio::spawn(receiver.run());
        Ok(Box::new(AuthSocket {
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

#[async_trait]
impl Socket for AuthSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.real.local_addr().context("gossip socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        // A send cancelled earlier may have left its bytes in the tap.
        while self.tap.try_recv_from(&mut self.buf).is_ok() {}
        self.serializer.send(self.tap_addr, envelope).await?;
        let n = loop {
            let (n, from) = tokio::time::timeout(LOOPBACK_WAIT, self.tap.recv_from(&mut self.buf))
                .await
                .context("gossip serialisation did not come back through loopback")??;
            // Anything else on loopback is not ours to forward.
            if from == self.serializer_addr {
                break n;
            }
        };
        if n + TAG_LEN > MAX_DATAGRAM {
            tracing::warn!(bytes = n, "gossip message too large to authenticate; dropped");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let mut datagram = self.buf[..n].to_vec();
        self.key.seal(&mut datagram);
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
            stats,
            real,
            decoder,
            decoder_addr,
            injector,
            injector_addr,
            out,
        })
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
            let Some(body) = self.key.open(&buf[..n]) else {
                let total = self.stats.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                // The first few, then every thousandth: a flood must not
                // flood the log too.
                if total <= 5 || total.is_multiple_of(1000) {
                    tracing::warn!(%from, bytes = n, total, "gossip datagram without a valid tag dropped");
                }
                continue;
            };
            if self.injector.send_to(body, self.decoder_addr).await.is_err() {
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
            let Some(envelope) = envelope else { continue };
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

    #[test]
    fn sealed_datagrams_open_only_with_the_same_key() {
        let k1 = GossipKey::from_bytes(&[7u8; 32]);
        let k2 = GossipKey::from_bytes(&[8u8; 32]);
        let mut d = b"chitchat bytes".to_vec();
        k1.seal(&mut d);
        assert_eq!(d.len(), 14 + TAG_LEN);
        assert_eq!(k1.open(&d), Some(&b"chitchat bytes"[..]));
        assert_eq!(k2.open(&d), None);
        let mut tampered = d.clone();
        tampered[0] ^= 1;
        assert_eq!(k1.open(&tampered), None);
        assert_eq!(k1.open(&d[..5]), None, "shorter than a tag");
        assert_eq!(k1.open(&[]), None);
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
        Ok(())
    }
}
