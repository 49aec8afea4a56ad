//! The node's listeners across reloads. A reload is planned first (every
//! fallible step: building sites, loading certificates, binding new
//! addresses) and then committed in one infallible step, so an invalid or
//! unbindable config changes nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::generation::{http_site, tcp_site};
use crate::affinity::AffinityTable;
use crate::config::{Config, ListenerConfig, ListenerTls, Protocol};
use crate::dataplane::ListenerStats;
use crate::dataplane::http::{HttpProxy, HttpSite, Upstream};
use crate::dataplane::listener::{self, ConnLimit, HttpServing, Stop};
use crate::dataplane::ratelimit::RateLimiter;
use crate::dataplane::tcp::{TcpProxy, TcpSite};
use crate::dataplane::uring;
use crate::dataplane::workers::Workers;
use crate::tls::{self, CertStore};

/// What an accept loop serves; a change restarts the loop (connections it
/// accepted carry on with the settings they started with).
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Http {
        tls: Option<ListenerTls>,
        idle: Duration,
        header_timeout: Duration,
        max_header_bytes: usize,
        max_connections: u32,
    },
    Tcp {
        max_connections: u32,
    },
}

impl Kind {
    fn of(l: &ListenerConfig) -> Self {
        match l.protocol {
            Protocol::Http => Self::Http {
                tls: l.tls.clone(),
                idle: l.idle_timeout().get(),
                header_timeout: l.header_timeout().get(),
                // Validated to at most 16 MiB.
                max_header_bytes: usize::try_from(l.max_header_bytes()).unwrap_or(usize::MAX),
                max_connections: l.max_connections(),
            },
            Protocol::Tcp => Self::Tcp {
                max_connections: l.max_connections(),
            },
        }
    }

    fn max_connections(&self) -> u32 {
        match self {
            Self::Http { max_connections, .. } | Self::Tcp { max_connections } => *max_connections,
        }
    }
}

enum Proxy {
    Http(Arc<HttpProxy>),
    Tcp(Arc<TcpProxy>),
}

enum Site {
    Http(HttpSite),
    Tcp(TcpSite),
}

/// A listener's sockets, one per data-plane worker, held as the runtime
/// that accepts on them needs them.
#[derive(Clone)]
enum Sockets {
    /// Registered with the epoll workers' runtimes.
    Epoll(Vec<Arc<TcpListener>>),
    /// Plain, for the ring threads (each accepts on a descriptor of its own).
    Uring(Vec<Arc<std::net::TcpListener>>),
}

impl Sockets {
    fn bind(addr: SocketAddr, rings: bool, workers: &Workers) -> std::io::Result<Self> {
        if rings {
            let sockets = listener::bind_std_each(addr, workers.count())?;
            Ok(Self::Uring(sockets.into_iter().map(Arc::new).collect()))
        } else {
            listener::bind_each(addr, &workers.handles()).map(Self::Epoll)
        }
    }

    /// These sockets, for the other kind of runtime if need be (a reload
    /// that moves a listener between HTTP and TCP): new descriptors of the
    /// same sockets, so the port stays open throughout.
    fn for_runtime(&self, rings: bool, workers: &Workers) -> std::io::Result<Self> {
        match (self, rings) {
            (Self::Epoll(_), false) | (Self::Uring(_), true) => Ok(self.clone()),
            (Self::Epoll(sockets), true) => sockets
                .iter()
                .map(|s| {
                    use std::os::fd::AsFd;
                    let fd = s.as_fd().try_clone_to_owned()?;
                    Ok(Arc::new(std::net::TcpListener::from(fd)))
                })
                .collect::<std::io::Result<_>>()
                .map(Self::Uring),
            (Self::Uring(sockets), false) => {
                let copies = sockets.iter().map(|s| s.try_clone()).collect::<std::io::Result<_>>()?;
                listener::register_each(copies, &workers.handles()).map(Self::Epoll)
            }
        }
    }
}

struct Slot {
    name: String,
    bind: SocketAddr,
    kind: Kind,
    sockets: Sockets,
    cancel: CancellationToken,
    proxy: Proxy,
    certs: Option<Arc<CertStore>>,
    stats: Arc<ListenerStats>,
}

impl Slot {
    fn rate_limiter(&self) -> Option<Arc<RateLimiter>> {
        match &self.proxy {
            Proxy::Http(p) => p.site.load().rate_limit.clone(),
            Proxy::Tcp(p) => p.site.load().rate_limit.clone(),
        }
    }
}

/// One listener's part of a reload.
enum Step {
    /// Same address and kind: swap the site (and certificate) in place.
    Update {
        slot: usize,
        site: Site,
        cert: Option<CertifiedKey>,
    },
    /// New, or changed kind: a new accept loop, on the old socket when the
    /// address is unchanged.
    Start {
        name: String,
        bind: SocketAddr,
        kind: Kind,
        sockets: Sockets,
        /// For io_uring sockets: each ring thread's own descriptor of its
        /// worker's socket (the accept loop owns and closes it).
        ring_fds: Vec<std::net::TcpListener>,
        site: Site,
        certs: Option<Arc<CertStore>>,
        stats: Arc<ListenerStats>,
    },
}

pub struct Plan {
    steps: Vec<Step>,
}

/// What a reload did to the listeners.
#[derive(Debug, Default)]
pub struct Changes {
    pub updated: Vec<String>,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

#[derive(Default)]
pub struct Listeners {
    slots: Vec<Slot>,
}

impl Listeners {
    /// Prepares `config`'s listeners against the running ones.
    pub fn plan(
        &self,
        config: &Config,
        upstreams: &[Arc<Upstream>],
        affinity: &Arc<AffinityTable>,
        workers: &Workers,
    ) -> Result<Plan> {
        let mut steps = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let kind = Kind::of(l);
            let same = self
                .slots
                .iter()
                .position(|s| s.name == l.name && s.bind == l.bind && s.kind == kind);
            let previous_limiter = self
                .slots
                .iter()
                .find(|s| s.name == l.name)
                .and_then(Slot::rate_limiter);
            let site = match l.protocol {
                Protocol::Http => Site::Http(http_site(l, upstreams, previous_limiter.as_ref(), affinity)?),
                Protocol::Tcp => Site::Tcp(tcp_site(l, upstreams, previous_limiter.as_ref(), affinity)?),
            };
            if let Some(slot) = same {
                let cert = match &l.tls {
                    Some(t) => Some(
                        tls::load_certified_key(&t.cert, &t.key).with_context(|| format!("listener {:?}", l.name))?,
                    ),
                    None => None,
                };
                steps.push(Step::Update { slot, site, cert });
                continue;
            }
            let rings = matches!(kind, Kind::Tcp { .. }) && workers.rings().is_some();
            let sockets = match self.slots.iter().find(|s| s.bind == l.bind) {
                Some(s) => s.sockets.for_runtime(rings, workers),
                None => Sockets::bind(l.bind, rings, workers),
            }
            .with_context(|| format!("listener {:?}: cannot listen on {}", l.name, l.bind))?;
            // Taken now, so that running out of descriptors fails the
            // reload instead of leaving a worker's socket unserved.
            let ring_fds = match &sockets {
                Sockets::Uring(s) => s
                    .iter()
                    .map(|s| s.try_clone())
                    .collect::<std::io::Result<_>>()
                    .with_context(|| format!("listener {:?}: cannot accept on {}", l.name, l.bind))?,
                Sockets::Epoll(_) => Vec::new(),
            };
            let certs = match &l.tls {
                Some(t) => Some(Arc::new(
                    CertStore::load(&t.cert, &t.key).with_context(|| format!("listener {:?}", l.name))?,
                )),
                None => None,
            };
            let stats = self
                .slots
                .iter()
                .find(|s| s.name == l.name)
                .map_or_else(|| Arc::new(ListenerStats::default()), |s| Arc::clone(&s.stats));
            steps.push(Step::Start {
                name: l.name.clone(),
                bind: l.bind,
                kind,
                sockets,
                ring_fds,
                site,
                certs,
                stats,
            });
        }
        Ok(Plan { steps })
    }

    /// Applies a plan: cannot fail. Loops of listeners that are gone or
    /// restarted stop accepting; their open connections carry on.
    pub fn commit(
        &mut self,
        plan: Plan,
        root: &CancellationToken,
        tracker: &TaskTracker,
        workers: &Workers,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut kept = vec![false; self.slots.len()];
        let mut next = Vec::with_capacity(plan.steps.len());
        let mut started = Vec::new();
        for step in plan.steps {
            match step {
                Step::Update { slot, site, cert } => {
                    kept[slot] = true;
                    let s = &self.slots[slot];
                    match (&s.proxy, site) {
                        (Proxy::Http(p), Site::Http(site)) => p.site.store(Arc::new(site)),
                        (Proxy::Tcp(p), Site::Tcp(site)) => p.site.store(Arc::new(site)),
                        // The plan matched kinds; a mismatch cannot happen.
                        _ => {}
                    }
                    if let (Some(store), Some(cert)) = (&s.certs, cert) {
                        store.replace(cert);
                    }
                    changes.updated.push(s.name.clone());
                }
                Step::Start {
                    name,
                    bind,
                    kind,
                    sockets,
                    ring_fds,
                    site,
                    certs,
                    stats,
                } => started.push((name, bind, kind, sockets, ring_fds, site, certs, stats)),
            }
        }
        // Stop what is not kept before starting replacements, so one socket
        // never has two loops for long.
        let old = std::mem::take(&mut self.slots);
        for (i, slot) in old.into_iter().enumerate() {
            if kept[i] {
                next.push(slot);
            } else {
                slot.cancel.cancel();
                changes.stopped.push(slot.name);
            }
        }
        for (name, bind, kind, sockets, ring_fds, site, certs, stats) in started {
            // The loop stops with its own token; its connections only at
            // shutdown.
            let stop = Stop {
                accepting: root.child_token(),
                connections: root.clone(),
            };
            let cancel = stop.accepting.clone();
            let proxy = spawn_loops(
                &kind,
                &sockets,
                ring_fds,
                site,
                certs.as_ref(),
                &stats,
                stop,
                tracker,
                workers,
            );
            tracing::info!(listener = %name, %bind, kind = ?kind, "listening");
            changes.started.push(name.clone());
            next.push(Slot {
                name,
                bind,
                kind,
                sockets,
                cancel,
                proxy,
                certs,
                stats,
            });
        }
        self.slots = next;
        changes
    }

    pub fn stats(&self) -> HashMap<String, Arc<ListenerStats>> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), Arc::clone(&s.stats)))
            .collect()
    }
}

/// Starts one accept loop per worker, each on its own socket.
#[allow(clippy::too_many_arguments)]
fn spawn_loops(
    kind: &Kind,
    sockets: &Sockets,
    ring_fds: Vec<std::net::TcpListener>,
    site: Site,
    certs: Option<&Arc<CertStore>>,
    stats: &Arc<ListenerStats>,
    stop: Stop,
    tracker: &TaskTracker,
    workers: &Workers,
) -> Proxy {
    let limit = ConnLimit::new(kind.max_connections(), Arc::clone(stats));
    match site {
        Site::Http(site) => {
            let idle_timeout = site.client_idle;
            let proxy = Arc::new(HttpProxy {
                site: ArcSwap::from_pointee(site),
                stats: Arc::clone(stats),
            });
            // The TLS config cannot fail to build for a certificate that
            // loaded; if it ever does, serve nothing rather than plain text.
            let tls = match (kind, certs) {
                (Kind::Http { tls: Some(_), .. }, Some(store)) => match tls::server_config(Arc::clone(store)) {
                    Ok(cfg) => Some(TlsAcceptor::from(cfg)),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS setup failed; listener not started");
                        return Proxy::Http(proxy);
                    }
                },
                _ => None,
            };
            let (max_header_bytes, header_timeout) = match kind {
                Kind::Http {
                    max_header_bytes,
                    header_timeout,
                    ..
                } => (*max_header_bytes, *header_timeout),
                Kind::Tcp { .. } => (0, Duration::ZERO),
            };
            let serving = HttpServing {
                idle_timeout,
                header_timeout,
                max_header_bytes,
                tls,
            };

            // The plan binds HTTP listeners for epoll, always.
            let Sockets::Epoll(sockets) = sockets else {
                tracing::error!("HTTP listener planned on io_uring sockets; listener not started");
                return Proxy::Http(proxy);
            };
            workers.spawn_each(|i| {
                tracker.track_future(listener::serve_http(
                    Arc::clone(&sockets[i % sockets.len()]),
                    Arc::clone(&proxy),
                    serving.clone(),
                    limit.clone(),
                    tracker.clone(),
                    stop.clone(),
                    workers.rings().and_then(|r| r.ring(i)),
                ))
            });
            Proxy::Http(proxy)
        }
        Site::Tcp(site) => {
            let proxy = Arc::new(TcpProxy {
                site: ArcSwap::from_pointee(site),
                stats: Arc::clone(stats),
            });
            match (sockets, workers.rings()) {
                (Sockets::Epoll(sockets), _) => workers.spawn_each(|i| {
                    tracker.track_future(listener::serve_tcp(
                        Arc::clone(&sockets[i % sockets.len()]),
                        Arc::clone(&proxy),
                        limit.clone(),
                        tracker.clone(),
                        stop.clone(),
                    ))
                }),
                (Sockets::Uring(_), Some(rings)) => {
                    // One descriptor per ring thread, as many as workers.
                    let mut fds = ring_fds.into_iter();
                    rings.spawn_each(|_| {
                        let fd = fds.next();
                        let (proxy, limit, tracker, stop) =
                            (Arc::clone(&proxy), limit.clone(), tracker.clone(), stop.clone());
                        move || {
                            tracker.clone().track_future(async move {
                                if let Some(fd) = fd {
                                    uring::serve_tcp(fd, proxy, limit, tracker, stop).await;
                                }
                            })
                        }
                    });
                }
                // The plan binds for rings only when there are rings.
                (Sockets::Uring(_), None) => {
                    tracing::error!("TCP listener planned on io_uring without rings; listener not started");
                }
            }
            Proxy::Tcp(proxy)
        }
    }
}
