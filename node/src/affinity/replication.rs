//! Sticky-table replication over QUIC with mutual TLS from the cluster CA.
//!
//! Each node dials every peer it learns from gossip and pushes to it:
//! first a full snapshot of its table, then its local writes as they
//! happen, batched. The peer applies (newest version wins) and acknowledges
//! each batch, which gives the sender its lag. A peer that falls behind
//! the bounded update queue gets a fresh full snapshot instead of stalling
//! anything; nothing here ever blocks the data plane.
//!
//! Identity: a dialer checks that the peer's certificate names the node id
//! it dials; an acceptor checks that the dialer's certificate names the
//! node id its Hello claims. Both certificates must come from the cluster CA.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shoal_proto::replication::{self as proto, Entry, Frame};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::table::AffinityTable;
use crate::cluster::Cluster;
use crate::config::ClusterTls;
use crate::dataplane::stats::Histogram;
use crate::tls;

/// Entries per frame: large enough to amortise, far below the frame limit.
const BATCH: usize = 1000;
/// How long a sender gathers writes into one batch.
const LINGER: Duration = Duration::from_millis(5);
/// How often the set of peers is compared with gossip.
const PEER_SCAN: Duration = Duration::from_millis(200);

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters, for status and metrics.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub entries_sent: AtomicU64,
    pub entries_received: AtomicU64,
    /// Frames or connections refused (bad frame, wrong identity).
    pub rejected: AtomicU64,
    pub resyncs: AtomicU64,
    /// From a live write on a peer to its application here (clock of the
    /// write's version to now; snapshot entries are not counted).
    pub delay: Histogram,
}

/// What this node knows of its push to one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerLink {
    pub connected: bool,
    /// Age of the oldest batch the peer has not acknowledged.
    pub lag: Duration,
    pub last_full_sync: Option<Instant>,
    pub last_error: Option<String>,
}

pub struct Replication {
    endpoint: quinn::Endpoint,
    cluster_name: String,
    node: String,
    table: Arc<AffinityTable>,
    links: Mutex<HashMap<String, PeerLink>>,
    /// Peers whose full snapshot this node has received since it started.
    synced_from: Mutex<HashSet<String>>,
    pub stats: ReplicationStats,
    cancel: CancellationToken,
}

fn quic_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // quinn's defaults (30 s idle, no keep-alive) notice a dead peer late.
    t.max_idle_timeout(Some(
        Duration::from_secs(5)
            .try_into()
            .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(5000))),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    Arc::new(t)
}

struct Identity {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load_identity(files: &ClusterTls) -> Result<Identity> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca).with_context(|| format!("reading {}", files.ca.display()))? {
        roots
            .add(ca.with_context(|| format!("reading {}", files.ca.display()))?)
            .with_context(|| format!("the CA certificate in {}", files.ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| format!("reading {}", files.key.display()))?;
    Ok(Identity {
        roots: Arc::new(roots),
        chain,
        key,
    })
}

fn endpoint(bind: SocketAddr, id: Identity) -> Result<quinn::Endpoint> {
    let provider = tls::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&id.roots), Arc::clone(&provider))
        .build()
        .context("building the client certificate verifier")?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .context("this node's replication certificate")?;
    server.alpn_protocols = vec![proto::ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    server.transport_config(quic_transport());

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(Arc::clone(&id.roots))
        .with_client_auth_cert(id.chain, id.key)
        .context("this node's replication certificate")?;
    client.alpn_protocols = vec![proto::ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client.transport_config(quic_transport());

    let mut ep =
        quinn::Endpoint::server(server, bind).with_context(|| format!("binding the replication address {bind}/UDP"))?;
    ep.set_default_client_config(client);
    Ok(ep)
}

impl Replication {
    pub fn start(
        bind: SocketAddr,
        files: &ClusterTls,
        cluster: Arc<Cluster>,
        node: &str,
        table: Arc<AffinityTable>,
        parent: &CancellationToken,
    ) -> Result<Arc<Self>> {
        let r = Self::listen(bind, files, &cluster.name, node, table, parent)?;
        tokio::spawn(Arc::clone(&r).manage_peers(cluster));
        Ok(r)
    }

    /// Applies what peers push; dials none until `manage_peers` runs.
    fn listen(
        bind: SocketAddr,
        files: &ClusterTls,
        cluster_name: &str,
        node: &str,
        table: Arc<AffinityTable>,
        parent: &CancellationToken,
    ) -> Result<Arc<Self>> {
        let endpoint = endpoint(bind, load_identity(files)?)?;
        let r = Arc::new(Self {
            endpoint,
            cluster_name: cluster_name.to_string(),
            node: node.to_string(),
            table,
            links: Mutex::new(HashMap::new()),
            synced_from: Mutex::new(HashSet::new()),
            stats: ReplicationStats::default(),
            cancel: parent.child_token(),
        });
        tokio::spawn(Arc::clone(&r).accept_loop());
        tracing::info!(%bind, "sticky-table replication listening (QUIC, mutual TLS)");
        Ok(r)
    }

    pub fn links(&self) -> HashMap<String, PeerLink> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `peer` has sent this node a whole snapshot of its table.
    pub fn has_synced_from(&self, peer: &str) -> bool {
        self.synced_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }

    fn link(&self, peer: &str, f: impl FnOnce(&mut PeerLink)) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        f(links.entry(peer.to_string()).or_default());
    }

    pub fn stop(&self) {
        self.cancel.cancel();
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Keeps one pushing task per peer that gossip knows and that has not
    /// left. Peers gossip calls dead are kept: under a CPU stall gossip can
    /// call a live peer dead for a moment, and an open QUIC connection
    /// (which has its own 5 s idle timeout) should then carry on rather
    /// than start over with a full snapshot; a really dead peer costs a
    /// failed dial every 2 s until gossip forgets it.
    async fn manage_peers(self: Arc<Self>, cluster: Arc<Cluster>) {
        // By peer id: (its replication address and generation, the task).
        let mut running: HashMap<String, ((SocketAddr, u64), CancellationToken)> = HashMap::new();
        let mut tick = tokio::time::interval(PEER_SCAN);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let view = cluster.view();
            let mut wanted = HashMap::new();
            for p in view.peers.iter().filter(|p| !p.left) {
                if let Some(addr) = p.replication_addr.as_deref().and_then(|a| a.parse::<SocketAddr>().ok()) {
                    wanted.insert(p.id.clone(), (addr, p.generation));
                }
            }
            // A restarted peer (new generation) gets a new connection and a
            // full snapshot at once, not after the old one times out.
            running.retain(|id, (target, token)| {
                let keep = wanted.get(id) == Some(target);
                if !keep {
                    token.cancel();
                    self.link(id, |l| l.connected = false);
                }
                keep
            });
            for (id, target) in wanted {
                if running.contains_key(&id) {
                    continue;
                }
                let token = self.cancel.child_token();
                tokio::spawn(Arc::clone(&self).push_to(id.clone(), target.0, token.clone()));
                running.insert(id, (target, token));
            }
        }
    }

    /// Pushes to one peer until cancelled, reconnecting with backoff.
    async fn push_to(self: Arc<Self>, peer: String, addr: SocketAddr, cancel: CancellationToken) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(100);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let began = Instant::now();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.push_session(&peer, addr) => r,
            };
            self.link(&peer, |l| {
                l.connected = false;
                l.last_error = result.as_ref().err().map(|e| format!("{e:#}"));
            });
            if let Err(e) = result {
                tracing::debug!(%peer, error = %format!("{e:#}"), "replication to peer interrupted; reconnecting");
            }
            // A session that ran a while was healthy: retry quickly.
            if began.elapsed() > Duration::from_secs(10) {
                backoff = FIRST_BACKOFF;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection's life: hello, full sync, then live batches.
    async fn push_session(&self, peer: &str, addr: SocketAddr) -> Result<()> {
        let conn = self
            .endpoint
            .connect(addr, peer)
            .context("starting the QUIC handshake")?
            .await
            .with_context(|| format!("connecting to {peer} at {addr}"))?;
        let (mut send, recv) = conn.open_bi().await.context("opening the replication stream")?;
        write_frame(
            &mut send,
            &Frame::Hello {
                protocol: shoal_proto::PROTOCOL_VERSION,
                cluster: self.cluster_name.clone(),
                node: self.node.clone(),
            },
        )
        .await?;
        let inflight: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
        let acks = tokio::spawn(read_acks(recv, Arc::clone(&inflight)));
        // An idle stream would not notice the peer going away: watch the
        // connection too.
        let result = tokio::select! {
            r = self.push_stream(peer, &mut send, &inflight) => r,
            e = conn.closed() => Err(anyhow!("connection to {peer} closed: {e}")),
        };
        acks.abort();
        conn.close(0u32.into(), b"done");
        result
    }

    async fn push_stream(
        &self,
        peer: &str,
        send: &mut quinn::SendStream,
        inflight: &Mutex<VecDeque<(u64, Instant)>>,
    ) -> Result<()> {
        let mut seq = 0u64;
        // Subscribing before the snapshot leaves no gap; a write seen in
        // both is harmless (the same version applies once).
        let mut updates = self.table.subscribe();
        self.full_sync(peer, send, &mut seq, inflight).await?;
        let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
        loop {
            // The first write of a batch may wait; the rest linger briefly.
            let first = updates.recv().await;
            let deadline = tokio::time::Instant::now() + LINGER;
            let mut lagged = false;
            match first {
                Ok(e) => batch.push(e),
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => bail!("the table stopped"),
            }
            while !lagged && batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, updates.recv()).await {
                    Ok(Ok(e)) => batch.push(e),
                    Ok(Err(RecvError::Lagged(_))) => lagged = true,
                    Ok(Err(RecvError::Closed)) => bail!("the table stopped"),
                    Err(_) => break,
                }
            }
            if lagged {
                // The peer fell behind the bounded queue: start over with
                // a snapshot rather than hold writers back.
                batch.clear();
                updates = updates.resubscribe();
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "replication fell behind; sending a full resync");
                self.full_sync(peer, send, &mut seq, inflight).await?;
                continue;
            }
            seq += 1;
            self.send_batch(send, seq, std::mem::take(&mut batch), inflight).await?;
            self.link(peer, |l| l.lag = oldest_unacked(inflight));
        }
    }

    async fn full_sync(
        &self,
        peer: &str,
        send: &mut quinn::SendStream,
        seq: &mut u64,
        inflight: &Mutex<VecDeque<(u64, Instant)>>,
    ) -> Result<()> {
        *seq += 1;
        write_frame(send, &Frame::SyncBegin { seq: *seq }).await?;
        let mut count = 0u64;
        for chunk in self.table.snapshot(BATCH, now_unix_ms()) {
            count += chunk.len() as u64;
            *seq += 1;
            self.send_batch(send, *seq, chunk, inflight).await?;
        }
        *seq += 1;
        write_frame(
            send,
            &Frame::SyncEnd {
                seq: *seq,
                entries: count,
            },
        )
        .await?;
        self.link(peer, |l| {
            l.connected = true;
            l.last_full_sync = Some(Instant::now());
            l.last_error = None;
        });
        tracing::info!(%peer, entries = count, "full sync sent");
        Ok(())
    }

    async fn send_batch(
        &self,
        send: &mut quinn::SendStream,
        seq: u64,
        entries: Vec<Entry>,
        inflight: &Mutex<VecDeque<(u64, Instant)>>,
    ) -> Result<()> {
        let n = entries.len() as u64;
        inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((seq, Instant::now()));
        write_frame(send, &Frame::Batch { seq, entries }).await?;
        self.stats.entries_sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                () = self.cancel.cancelled() => return,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = me.receive(incoming).await {
                    me.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %format!("{e:#}"), "replication connection refused or failed");
                }
            });
        }
    }

    /// Applies what one dialing peer pushes.
    async fn receive(&self, incoming: quinn::Incoming) -> Result<()> {
        let conn = incoming.await.context("QUIC handshake")?;
        let remote = conn.remote_address();
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
            .await
            .context("no replication stream opened")??;
        let hello = read_frame(&mut recv).await?;
        let Frame::Hello {
            protocol,
            cluster,
            node,
        } = hello
        else {
            bail!("{remote}: the first frame is not a hello");
        };
        if protocol != shoal_proto::PROTOCOL_VERSION {
            bail!(
                "{remote} ({node}): protocol {protocol}, this node speaks {}",
                shoal_proto::PROTOCOL_VERSION
            );
        }
        if cluster != self.cluster_name {
            bail!(
                "{remote} ({node}): cluster {cluster:?}, this node is in {:?}",
                self.cluster_name
            );
        }
        // The TLS client certificate (already checked against the CA) must
        // name the node the hello claims.
        let certs = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| anyhow!("{remote}: no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| anyhow!("{remote}: empty certificate chain"))?;
        let name =
            ServerName::try_from(node.clone()).map_err(|_| anyhow!("{remote}: node id {node:?} is not a name"))?;
        webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| anyhow!("{remote}: bad certificate: {e:?}"))?
            .verify_is_valid_for_subject_name(&name)
            .map_err(|_| anyhow!("{remote}: certificate does not belong to node {node:?}"))?;
        tracing::info!(peer = %node, %remote, "replication peer connected");
        let mut syncing = false;
        loop {
            let frame = match read_frame(&mut recv).await {
                Ok(f) => f,
                Err(e) if is_closed(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            match frame {
                Frame::Batch { seq, entries } => {
                    let now = now_unix_ms();
                    self.stats
                        .entries_received
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    for e in &entries {
                        self.table.apply(e, now);
                        if !syncing {
                            let written = shoal_proto::hlc::physical_ms(e.version.hlc);
                            self.stats
                                .delay
                                .observe(Duration::from_millis(now.saturating_sub(written)));
                        }
                    }
                    write_frame(&mut send, &Frame::Ack { seq }).await?;
                }
                Frame::SyncBegin { .. } => syncing = true,
                Frame::SyncEnd { seq, entries } => {
                    syncing = false;
                    tracing::info!(peer = %node, entries, "full sync received");
                    self.synced_from
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(node.clone());
                    write_frame(&mut send, &Frame::Ack { seq }).await?;
                }
                Frame::Hello { .. } | Frame::Ack { .. } => bail!("{node}: unexpected frame"),
            }
        }
    }
}

/// Age of the oldest unacknowledged batch.
fn oldest_unacked(inflight: &Mutex<VecDeque<(u64, Instant)>>) -> Duration {
    inflight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .front()
        .map_or(Duration::ZERO, |(_, at)| at.elapsed())
}

/// Acks drop everything up to their sequence number from `inflight`.
async fn read_acks(mut recv: quinn::RecvStream, inflight: Arc<Mutex<VecDeque<(u64, Instant)>>>) {
    while let Ok(Frame::Ack { seq }) = read_frame(&mut recv).await {
        let mut q = inflight.lock().unwrap_or_else(|e| e.into_inner());
        while q.front().is_some_and(|(s, _)| *s <= seq) {
            q.pop_front();
        }
    }
}

async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<()> {
    let bytes = proto::encode(frame)?;
    send.write_all(&bytes).await.context("writing a replication frame")?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Frame> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(ReadError)?;
    let len = proto::frame_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(ReadError)?;
    Ok(proto::decode(&body)?)
}

#[derive(Debug, thiserror::Error)]
#[error("reading a replication frame: {0}")]
struct ReadError(quinn::ReadExactError);

fn is_closed(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ReadError>().is_some_and(|ReadError(inner)| {
        matches!(inner, quinn::ReadExactError::FinishedEarly(0))
            || matches!(
                inner,
                quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(_))
            )
    })
}

/// The acceptor against hand-made peers: every certificate below comes
/// from the cluster CA, so what is tested is what an insider (or a stolen
/// node certificate) can and cannot do.
#[cfg(test)]
mod tests {
    use shoal_proto::NodeId;
    use shoal_proto::replication::Version;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    struct Lab {
        dir: tempfile::TempDir,
        table: Arc<AffinityTable>,
        acceptor: Arc<Replication>,
        _cancel: CancellationToken,
    }

    fn files(dir: &std::path::Path, id: &str) -> ClusterTls {
        ClusterTls {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{id}.pem")),
            key: dir.join(format!("{id}.key")),
        }
    }

    /// lb1 accepting; certificates for lb1 and lb2.
    fn lab() -> Result<Lab> {
        let dir = tempfile::tempdir()?;
        let ids = ["lb1", "lb2"]
            .map(NodeId::new)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        crate::certs::generate(dir.path(), &ids)?;
        let table = Arc::new(AffinityTable::new("lb1", 1000));
        let cancel = CancellationToken::new();
        let acceptor = Replication::listen(
            "127.0.0.1:0".parse()?,
            &files(dir.path(), "lb1"),
            "edge",
            "lb1",
            Arc::clone(&table),
            &cancel,
        )?;
        Ok(Lab {
            dir,
            table,
            acceptor,
            _cancel: cancel,
        })
    }

    impl Lab {
        /// A stream to lb1 from a peer holding `cert_of`'s certificate, its
        /// hello claiming to be `claims`.
        async fn dial(&self, cert_of: &str, claims: &str) -> Result<(quinn::SendStream, quinn::RecvStream)> {
            let ep = endpoint("127.0.0.1:0".parse()?, load_identity(&files(self.dir.path(), cert_of))?)?;
            let conn = ep.connect(self.acceptor.endpoint.local_addr()?, "lb1")?.await?;
            let (mut send, recv) = conn.open_bi().await?;
            let hello = Frame::Hello {
                protocol: shoal_proto::PROTOCOL_VERSION,
                cluster: "edge".into(),
                node: claims.into(),
            };
            write_frame(&mut send, &hello).await?;
            Ok((send, recv))
        }

        async fn rejected(&self, n: u64) -> Result<()> {
            let deadline = Instant::now() + WAIT;
            while self.acceptor.stats.rejected.load(Ordering::Relaxed) < n {
                anyhow::ensure!(Instant::now() < deadline, "fewer than {n} connections rejected");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        }
    }

    fn batch(seq: u64, key: &[u8], backend: &str, hlc_ms: u64) -> Frame {
        Frame::Batch {
            seq,
            entries: vec![Entry {
                pool: "web".into(),
                key: key.to_vec(),
                backend: Some(backend.into()),
                expires_unix_ms: now_unix_ms() + 60_000,
                version: Version {
                    hlc: hlc_ms << 16,
                    node: 2,
                },
            }],
        }
    }

    /// The acceptor's answer to what was sent: its next frame, or the
    /// error that ended the stream.
    async fn answer(recv: &mut quinn::RecvStream) -> Result<Frame> {
        tokio::time::timeout(WAIT, read_frame(recv))
            .await
            .context("no answer and no close")?
    }

    #[tokio::test]
    async fn a_peer_whose_certificate_names_another_node_is_refused() -> Result<()> {
        let lab = lab()?;
        // lb2's valid certificate, claiming to be lb3.
        let (mut send, mut recv) = lab.dial("lb2", "lb3").await?;
        write_frame(&mut send, &batch(1, b"k", "web-9", now_unix_ms())).await?;
        let refused = answer(&mut recv).await;
        assert!(refused.is_err(), "answered {refused:?}");
        lab.rejected(1).await?;
        assert!(lab.table.is_empty(), "an entry from the impostor was applied");
        // The same certificate under its own name is served.
        let (mut send, mut recv) = lab.dial("lb2", "lb2").await?;
        write_frame(&mut send, &batch(1, b"k", "web-1", now_unix_ms())).await?;
        assert_eq!(answer(&mut recv).await?, Frame::Ack { seq: 1 });
        assert_eq!(lab.table.lookup("web", b"k", now_unix_ms()).as_deref(), Some("web-1"));

        // The other direction: a dialer expecting lb2 at lb1's address
        // (say, gossip lied about it) refuses lb1's certificate.
        let ep = endpoint("127.0.0.1:0".parse()?, load_identity(&files(lab.dir.path(), "lb2"))?)?;
        let wrong = ep.connect(lab.acceptor.endpoint.local_addr()?, "lb2")?.await;
        assert!(wrong.is_err(), "a certificate for lb1 passed as lb2");
        Ok(())
    }

    #[tokio::test]
    async fn oversized_truncated_and_garbage_frames_close_only_their_connection() -> Result<()> {
        let lab = lab()?;
        let bad: [&[u8]; 4] = [
            // A 4 GiB frame announced: refused before any allocation.
            &u32::MAX.to_le_bytes(),
            // Just over the limit.
            &(proto::MAX_FRAME as u32 + 1).to_le_bytes(),
            // 100 bytes announced, 3 sent, then the stream ends.
            &[100, 0, 0, 0, 1, 2, 3],
            // A well-framed body that is not a frame.
            &[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        ];
        for (i, bytes) in bad.into_iter().enumerate() {
            let (mut send, mut recv) = lab.dial("lb2", "lb2").await?;
            send.write_all(bytes).await?;
            send.finish()?;
            let closed = answer(&mut recv).await;
            assert!(closed.is_err(), "{bytes:?} answered {closed:?}");
            lab.rejected(i as u64 + 1).await?;
        }
        assert!(lab.table.is_empty());
        // The peer's next, well-formed connection is served.
        let (mut send, mut recv) = lab.dial("lb2", "lb2").await?;
        write_frame(&mut send, &batch(7, b"k", "web-1", now_unix_ms())).await?;
        assert_eq!(answer(&mut recv).await?, Frame::Ack { seq: 7 });
        assert_eq!(lab.table.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn replayed_and_stale_batches_change_nothing() -> Result<()> {
        let lab = lab()?;
        let (mut send, mut recv) = lab.dial("lb2", "lb2").await?;
        let now = now_unix_ms();
        let newer = batch(1, b"k", "web-2", now);
        for frame in [&newer, &newer, &batch(2, b"k", "web-1", now - 1000)] {
            write_frame(&mut send, frame).await?;
            assert!(matches!(answer(&mut recv).await?, Frame::Ack { .. }));
        }
        assert_eq!(lab.table.lookup("web", b"k", now_unix_ms()).as_deref(), Some("web-2"));
        assert_eq!(lab.table.stats.applied.load(Ordering::Relaxed), 1);
        assert_eq!(lab.table.stats.ignored.load(Ordering::Relaxed), 2);
        // From a broken clock an hour ahead: acknowledged, not applied.
        write_frame(&mut send, &batch(3, b"k", "web-3", now + 3_600_000)).await?;
        assert_eq!(answer(&mut recv).await?, Frame::Ack { seq: 3 });
        assert_eq!(lab.table.lookup("web", b"k", now_unix_ms()).as_deref(), Some("web-2"));
        Ok(())
    }
}
