//! One virtual router as a task: the state machine driven by the VRRP
//! socket, its timers and the interface's link state, with its actions
//! carried out (adverts, the address, gratuitous ARP).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::net::{self, Addresses, NetError, VrrpSocket};
use crate::packet::{Advert, Checksum};
use crate::state::{Action, Machine, Settings, State};

/// One `[[vip]]`.
#[derive(Debug, Clone)]
pub struct VipSpec {
    pub address: IpAddr,
    pub prefix: u8,
    pub interface: String,
    pub vrid: u8,
    pub priority: u8,
    pub settings: Settings,
    /// Send adverts to these instead of the multicast group (the VIP's
    /// family).
    pub unicast_peers: Vec<IpAddr>,
    pub garp_repeat: u32,
    pub garp_refresh: Option<Duration>,
    pub checksum: Checksum,
}

/// What the node supplies: the effective priority (health penalty), the
/// split-brain guard's view of the master from gossip, and whether it is
/// ready to take the VIP from a live master.
pub trait Hooks: Send + Sync + 'static {
    /// The priority to advertise now, given the configured one.
    fn priority(&self, configured: u8) -> u8;
    /// Whether gossip shows this VIP's master alive and fresh right now.
    fn master_alive_in_gossip(&self) -> bool;
    /// Whether this node may preempt a live lower-priority master now
    /// (polled with the priority); see `Machine::hold_preemption`.
    fn may_preempt(&self) -> bool {
        true
    }
}

/// A snapshot for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipStatus {
    pub state: State,
    pub priority: u8,
    /// The current master's address (ours while master).
    pub master_ip: Option<IpAddr>,
    pub transitions: u64,
    pub since_change: Option<Duration>,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Datagrams dropped (bad TTL, checksum, version, length).
    pub adverts_rejected: u64,
    pub guard_holds: u64,
    /// The node holds off preempting a lower-priority master (it is not
    /// ready to serve as it does: see `Hooks::may_preempt`).
    pub preemption_held: bool,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    status: VipStatus,
    changed_at: Option<Instant>,
}

pub struct Router {
    shared: Arc<Mutex<Shared>>,
    stop: Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>,
}

impl Router {
    /// Opens the socket and netlink (failing at once without the
    /// capabilities), clears a VIP left by a previous run, and starts.
    pub async fn start(spec: VipSpec, hooks: Arc<dyn Hooks>) -> Result<Self, NetError> {
        let info = net::interface(&spec.interface, spec.address)?;
        // An interface without carrier has no IPv6 link-local address yet:
        // start in fault and pick the address up when the link comes.
        let source = match info.advert_source(&spec.interface, spec.address) {
            Err(NetError::NoLinkLocal(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            other => other?,
        };
        let socket = VrrpSocket::open(&spec.interface, info.index, source)?;
        let addresses = Addresses::open()?;
        // A crash may have left the address here: a backup must not hold it.
        addresses.remove(info.index, spec.address, spec.prefix).await?;
        let priority = hooks.priority(spec.priority);
        let held = !hooks.may_preempt();
        let shared = Arc::new(Mutex::new(Shared {
            status: VipStatus {
                state: State::Init,
                priority,
                master_ip: None,
                transitions: 0,
                since_change: None,
                adverts_sent: 0,
                adverts_received: 0,
                adverts_rejected: 0,
                guard_holds: 0,
                preemption_held: held,
                last_error: None,
            },
            changed_at: None,
        }));
        let (stop_tx, stop_rx) = oneshot::channel();
        let link_up = usable(&info, spec.address);
        let mut machine = Machine::new(spec.settings.clone(), source, priority);
        machine.hold_preemption(held);
        let task = Task {
            machine,
            spec,
            hooks,
            socket,
            addresses,
            index: info.index,
            shared: Arc::clone(&shared),
            origin: Instant::now(),
            last_announce: None,
            send_error_logged: None,
            reopen_error_logged: None,
        };
        tokio::spawn(task.run(link_up, stop_rx));
        Ok(Self {
            shared,
            stop: Mutex::new(Some(stop_tx)),
        })
    }

    pub fn status(&self) -> VipStatus {
        let s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut status = s.status.clone();
        status.since_change = s.changed_at.map(|t| t.elapsed());
        status
    }

    /// Leaves: a master sends priority 0 and removes the address. Returns
    /// once done.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(stop) = stop {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
            }
        }
    }
}

struct Task {
    spec: VipSpec,
    hooks: Arc<dyn Hooks>,
    machine: Machine,
    socket: VrrpSocket,
    addresses: Addresses,
    index: u32,
    shared: Arc<Mutex<Shared>>,
    origin: Instant,
    last_announce: Option<Instant>,
    send_error_logged: Option<Instant>,
    reopen_error_logged: Option<Instant>,
}

impl Task {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn status(&self, f: impl FnOnce(&mut VipStatus)) {
        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s.status);
    }

    async fn run(mut self, link_up: bool, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let vip = self.spec.address;
        let mut actions = self.machine.startup(self.now());
        if !link_up {
            actions.extend(self.machine.set_link(self.now(), false));
        }
        self.perform(actions).await;
        // Link and priority are polled; 100 ms (or the advert interval if
        // shorter) bounds how late a dead link is noticed.
        let poll_every = self.spec.settings.advert_interval.min(Duration::from_millis(100));
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = self.spec.garp_refresh.map(|every| {
            let mut i = tokio::time::interval_at(Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut buf = vec![0u8; 4096];
        let mut rejected_logged: Option<Instant> = None;
        let mut recv_error_logged: Option<Instant> = None;
        loop {
            let deadline = self.machine.next_deadline().map(|d| self.origin + d);
            tokio::select! {
                done = &mut stop => {
                    let actions = self.machine.shutdown();
                    self.perform(actions).await;
                    tracing::info!(%vip, "VIP released for shutdown");
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                r = self.socket.recv(&mut buf) => {
                    let decoded = match r {
                        Ok(d) => d,
                        Err(e) => {
                            if recv_error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                recv_error_logged = Some(Instant::now());
                                tracing::warn!(%vip, error = %e, "VRRP receive failed (logged at most every 10 s)");
                            }
                            tokio::time::sleep(poll_every).await;
                            continue;
                        }
                    };
                    match decoded {
                        Ok(r) if r.advert.vrid == self.spec.vrid && r.source != self.machine.local_ip() => {
                            self.status(|s| s.adverts_received += 1);
                            let interval = Duration::from_millis(u64::from(r.advert.interval_centis) * 10);
                            let actions = self.machine.on_advert(self.now(), r.source, r.advert.priority, interval);
                            self.perform(actions).await;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.status(|s| s.adverts_rejected += 1);
                            if rejected_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                rejected_logged = Some(Instant::now());
                                tracing::warn!(%vip, error = %e, "VRRP datagram dropped (logged at most every 10 s)");
                            }
                        }
                    }
                }
                () = sleep_until(deadline) => {
                    let hooks = Arc::clone(&self.hooks);
                    let actions = self.machine.on_timer(self.now(), &|| hooks.master_alive_in_gossip());
                    self.perform(actions).await;
                }
                _ = poll.tick() => {
                    let now = self.now();
                    let mut actions = Vec::new();
                    match net::interface(&self.spec.interface, vip) {
                        Ok(info) => {
                            let up = usable(&info, vip) && self.follow_interface(&info);
                            actions.extend(self.machine.set_link(now, up));
                        }
                        Err(e) => {
                            tracing::debug!(%vip, error = %e, "interface lookup failed");
                            actions.extend(self.machine.set_link(now, false));
                        }
                    }
                    let priority = self.hooks.priority(self.spec.priority);
                    actions.extend(self.machine.set_priority(now, priority));
                    let held = !self.hooks.may_preempt();
                    if held != self.machine.preemption_held() {
                        self.machine.hold_preemption(held);
                        self.status(|s| s.preemption_held = held);
                    }
                    self.perform(actions).await;
                }
                _ = tick_opt(refresh.as_mut()) => {
                    if self.machine.state() == State::Master {
                        self.announce();
                    }
                }
            }
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        let vip = self.spec.address;
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send_advert(priority).await,
                Action::AddVip => {
                    if let Err(e) = self.addresses.add(self.index, vip, self.spec.prefix).await {
                        tracing::error!(%vip, error = %e, "could not add the VIP");
                        self.status(|s| s.last_error = Some(e.to_string()));
                    }
                    self.announce();
                }
                Action::RemoveVip => {
                    if let Err(e) = self.addresses.remove(self.index, vip, self.spec.prefix).await {
                        tracing::error!(%vip, error = %e, "could not remove the VIP");
                        self.status(|s| s.last_error = Some(e.to_string()));
                    }
                }
                Action::SplitHealed => {
                    tracing::info!(%vip, "the other master backed off: announcing the VIP again");
                    self.announce();
                }
                Action::Announce => {
                    // Answering a lower router's every advert with a burst
                    // would flood the segment during a lasting split.
                    if self.last_announce.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        self.announce();
                    }
                }
                Action::Transition { from, to, reason } => {
                    let level_warn = to == State::Fault || from == State::Master;
                    if level_warn {
                        tracing::warn!(%vip, vrid = self.spec.vrid, from = from.as_str(), to = to.as_str(), reason = reason.as_str(), "VRRP state change");
                    } else {
                        tracing::info!(%vip, vrid = self.spec.vrid, from = from.as_str(), to = to.as_str(), reason = reason.as_str(), "VRRP state change");
                    }
                    let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                    s.status.transitions += 1;
                    s.changed_at = Some(Instant::now());
                }
                Action::GuardHolding => {
                    tracing::warn!(
                        %vip,
                        hold = ?self.spec.settings.split_brain_hold,
                        "no VRRP advert from the master, but gossip shows it alive: holding off the takeover (split-brain guard)"
                    );
                    self.status(|s| s.guard_holds += 1);
                }
            }
        }
        let (state, priority, master) = (self.machine.state(), self.machine.priority(), self.machine.master());
        self.status(|s| {
            s.state = state;
            s.priority = priority;
            s.master_ip = master;
        });
    }

    /// Keeps the socket on the interface as it is now: it may have been
    /// re-created under the same name (a new index: a container's network
    /// reconnected, a VLAN rebuilt), which leaves the old socket bound to
    /// nothing, or have got its advert source only after start (an IPv6
    /// link-local address). Reopens the socket when either changed; false
    /// while there is no usable source or socket.
    fn follow_interface(&mut self, info: &net::InterfaceInfo) -> bool {
        let Ok(source) = info.advert_source(&self.spec.interface, self.spec.address) else {
            return false;
        };
        if info.index == self.index && source == self.machine.local_ip() {
            return true;
        }
        match VrrpSocket::open(&self.spec.interface, info.index, source) {
            Ok(socket) => {
                tracing::info!(vip = %self.spec.address, index = info.index, %source, "VRRP socket reopened: the interface or its address changed");
                self.socket = socket;
                self.index = info.index;
                self.machine.set_local_ip(source);
                true
            }
            Err(e) => {
                if self
                    .reopen_error_logged
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                {
                    self.reopen_error_logged = Some(Instant::now());
                    tracing::warn!(vip = %self.spec.address, error = %e, "cannot reopen the VRRP socket (logged at most every 10 s)");
                }
                self.status(|s| s.last_error = Some(e.to_string()));
                false
            }
        }
    }

    async fn send_advert(&mut self, priority: u8) {
        let advert = Advert {
            vrid: self.spec.vrid,
            priority,
            interval_centis: (self.spec.settings.advert_interval.as_millis() / 10).clamp(1, 0x0fff) as u16,
            addresses: vec![self.spec.address],
        };
        let targets: Vec<IpAddr> = if !self.spec.unicast_peers.is_empty() {
            self.spec.unicast_peers.clone()
        } else if self.spec.address.is_ipv4() {
            vec![crate::limits::MULTICAST_V4.into()]
        } else {
            vec![crate::limits::MULTICAST_V6.into()]
        };
        for to in targets {
            let msg = match advert.encode(self.machine.local_ip(), to, self.spec.checksum) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "VRRP advert not encodable");
                    return;
                }
            };
            match self.socket.send(&msg, to).await {
                Ok(()) => self.status(|s| s.adverts_sent += 1),
                Err(e) => {
                    // A master that cannot advertise lets backups take
                    // over too: say so, at most every 10 s.
                    if self
                        .send_error_logged
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        self.send_error_logged = Some(Instant::now());
                        tracing::warn!(vip = %self.spec.address, %to, error = %e, "VRRP advert not sent (logged at most every 10 s)");
                    }
                    self.status(|s| s.last_error = Some(format!("sending a VRRP advert to {to}: {e}")));
                }
            }
        }
    }

    /// Gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6)
    /// burst, off the async threads (pnet is blocking).
    fn announce(&mut self) {
        self.last_announce = Some(Instant::now());
        let (iface, ip, rounds) = (
            self.spec.interface.clone(),
            self.spec.address,
            self.spec.garp_repeat.max(1),
        );
        tokio::task::spawn_blocking(move || {
            if let Err(e) = net::announce(&iface, ip, rounds, Duration::from_millis(20)) {
                tracing::warn!(vip = %ip, error = %e, "announcing the VIP (gratuitous ARP or neighbour advertisement) failed");
            }
        });
    }
}

/// Whether the interface can carry this VIP's adverts: up with carrier,
/// and for IPv6 with a link-local address to send them from.
fn usable(info: &net::InterfaceInfo, vip: IpAddr) -> bool {
    info.running && (vip.is_ipv4() || info.link_local_v6.is_some())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(i: Option<&mut tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
