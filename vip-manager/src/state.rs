//! The VRRPv3 state machine of one virtual router (RFC 5798 §6.4 as
//! clarified by RFC 9568), pure: time is passed in as a `Duration` since
//! any fixed origin, and effects come back as `Action`s for the caller to
//! perform (send, add or remove the address, announce it).

use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Init,
    Backup,
    Master,
    /// The interface is down: no adverts, no address.
    Fault,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub advert_interval: Duration,
    pub preempt: bool,
    /// How long a lower-priority master is tolerated before preempting it.
    pub preempt_delay: Duration,
    /// Longest a backup holds off taking over while gossip shows the
    /// master alive (split-brain guard); zero disables the guard.
    pub split_brain_hold: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SendAdvert {
        priority: u8,
    },
    /// Add the virtual address and announce it (gratuitous ARP).
    AddVip,
    RemoveVip,
    /// Announce the address again (we are master and another router
    /// thinks it is too).
    Announce,
    /// That other router fell silent (it heard us and backed off): announce
    /// at once, after its own announcements, so clients come back here.
    SplitHealed,
    Transition {
        from: State,
        to: State,
        reason: Reason,
    },
    /// The master-down timer expired but gossip shows the master alive:
    /// taking over is held off (once per hold).
    GuardHolding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Startup,
    MasterDown,
    /// A higher priority (or equal priority, higher address) router.
    Preempted,
    LinkDown,
    LinkUp,
    Shutdown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::MasterDown => "no advert from a master within the master-down interval",
            Reason::Preempted => "a router with higher priority is master",
            Reason::LinkDown => "interface down",
            Reason::LinkUp => "interface up",
            Reason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Machine {
    settings: Settings,
    local_ip: IpAddr,
    state: State,
    /// Effective priority (configured, less any health penalty), 1–254.
    priority: u8,
    /// Master_Adver_Interval: the current master's advertised interval.
    master_adver: Duration,
    master_down_at: Option<Duration>,
    advert_at: Option<Duration>,
    /// The master last heard from (None while we are master, or unknown).
    master: Option<IpAddr>,
    /// preempt_delay: since when a lower-priority master has been heard.
    lower_since: Option<Duration>,
    /// Split-brain guard: hold off taking over until then.
    guard_until: Option<Duration>,
    /// The master said it is leaving (priority 0): no guard needed.
    master_resigned: bool,
    /// The priority of the master whose adverts we discard to preempt it:
    /// its adverts do arrive, so the master-down expiry is a preemption,
    /// not a split, and the guard stays out.
    preempting: Option<u8>,
    /// As master: another router claimed the VIP until about then.
    contested_until: Option<Duration>,
    /// Preemption is held off (see `hold_preemption`).
    preempt_held: bool,
}

impl Machine {
    pub fn new(settings: Settings, local_ip: IpAddr, priority: u8) -> Self {
        Self {
            master_adver: settings.advert_interval,
            settings,
            local_ip,
            state: State::Init,
            priority: priority.clamp(1, 254),
            master_down_at: None,
            advert_at: None,
            master: None,
            lower_since: None,
            guard_until: None,
            master_resigned: false,
            preempting: None,
            contested_until: None,
            preempt_held: false,
        }
    }

    /// Holds preemption off, or lifts the hold. While held, a live
    /// lower-priority master is tolerated as if `preempt` were off; a
    /// master that falls silent is still taken over. (A node that has just
    /// started holds until its sticky table has caught up, so it takes the
    /// VIP back only once it routes sessions as the current master does.)
    pub fn hold_preemption(&mut self, hold: bool) {
        if hold && !self.preempt_held {
            // preempt_delay counts from when the hold lifts.
            self.lower_since = None;
        }
        self.preempt_held = hold;
    }

    pub fn preemption_held(&self) -> bool {
        self.preempt_held
    }

    /// Our address in adverts and ties (an IPv6 link-local address can
    /// appear only once the link is up).
    pub fn set_local_ip(&mut self, ip: IpAddr) {
        self.local_ip = ip;
    }

    /// The address adverts are sent from (the VRRP "primary address").
    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The current master's address: ours while master.
    pub fn master(&self) -> Option<IpAddr> {
        match self.state {
            State::Master => Some(self.local_ip),
            State::Backup => self.master,
            State::Init | State::Fault => None,
        }
    }

    /// Skew_Time: lower priorities wait longer.
    pub fn skew(&self) -> Duration {
        self.master_adver * (256 - u32::from(self.priority)) / 256
    }

    /// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver * 3 + self.skew()
    }

    /// When `on_timer` next has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        [self.master_down_at, self.advert_at, self.contested_until]
            .into_iter()
            .flatten()
            .min()
    }

    fn go(&mut self, to: State, reason: Reason, actions: &mut Vec<Action>) {
        if self.state != to {
            actions.push(Action::Transition {
                from: self.state,
                to,
                reason,
            });
            self.state = to;
        }
    }

    fn become_backup(&mut self, now: Duration, reason: Reason, actions: &mut Vec<Action>) {
        if self.state == State::Master {
            actions.push(Action::RemoveVip);
        }
        self.advert_at = None;
        self.guard_until = None;
        self.contested_until = None;
        self.preempting = None;
        self.master_down_at = Some(now + self.master_down_interval());
        self.go(State::Backup, reason, actions);
    }

    fn become_master(&mut self, now: Duration, reason: Reason, actions: &mut Vec<Action>) {
        actions.push(Action::SendAdvert {
            priority: self.priority,
        });
        actions.push(Action::AddVip);
        self.advert_at = Some(now + self.settings.advert_interval);
        self.master_down_at = None;
        self.master = None;
        self.guard_until = None;
        self.lower_since = None;
        self.master_resigned = false;
        self.preempting = None;
        self.go(State::Master, reason, actions);
    }

    /// Init (or Fault) → Backup. The priority-255 address owner case does
    /// not arise: priorities are 1–254.
    pub fn startup(&mut self, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(self.state, State::Init | State::Fault) {
            self.master_adver = self.settings.advert_interval;
            let reason = if self.state == State::Init {
                Reason::Startup
            } else {
                Reason::LinkUp
            };
            self.become_backup(now, reason, &mut actions);
        }
        actions
    }

    /// An advertisement for our VRID from `from` (already validated).
    pub fn on_advert(&mut self, now: Duration, from: IpAddr, priority: u8, interval: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.state {
            State::Init | State::Fault => {}
            State::Backup => {
                if priority == 0 {
                    // The master is leaving: take over after Skew_Time.
                    self.master_down_at = Some(now + self.skew());
                    self.master = None;
                    self.master_resigned = true;
                    return actions;
                }
                let lower = priority < self.priority;
                let preempt = self.settings.preempt && !self.preempt_held;
                let tolerated = match (preempt, lower) {
                    (false, _) | (true, false) => true,
                    (true, true) => {
                        let since = *self.lower_since.get_or_insert(now);
                        now < since + self.settings.preempt_delay
                    }
                };
                if !lower {
                    self.lower_since = None;
                }
                if tolerated {
                    self.master_adver = interval;
                    self.master_down_at = Some(now + self.master_down_interval());
                    self.master = Some(from);
                    self.guard_until = None;
                    self.master_resigned = false;
                    self.preempting = None;
                } else if self.master.is_none() || self.master == Some(from) {
                    // Our master's advert is discarded and the master-down
                    // timer runs out: we preempt. (Another router's lower
                    // adverts say nothing of whether our master's arrive.)
                    self.preempting = Some(priority);
                }
            }
            State::Master => {
                if priority == 0 {
                    actions.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.advert_at = Some(now + self.settings.advert_interval);
                } else if priority > self.priority || (priority == self.priority && from > self.local_ip) {
                    self.master_adver = interval;
                    self.master = Some(from);
                    self.become_backup(now, Reason::Preempted, &mut actions);
                } else {
                    // A lower router thinks it is master (it started, or
                    // a split healed): answer at once and re-announce the
                    // address so traffic comes back here.
                    actions.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    actions.push(Action::Announce);
                    self.advert_at = Some(now + self.settings.advert_interval);
                    self.contested_until = Some(now + interval * 3);
                }
            }
        }
        actions
    }

    /// Runs the timers due at `now`. `master_alive` says whether gossip
    /// shows the current master alive and fresh; it is asked only when the
    /// master-down timer expires.
    pub fn on_timer(&mut self, now: Duration, master_alive: &dyn Fn() -> bool) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.state {
            State::Master => {
                if self.contested_until.is_some_and(|t| t <= now) {
                    self.contested_until = None;
                    actions.push(Action::SplitHealed);
                }
                if self.advert_at.is_some_and(|t| t <= now) {
                    actions.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.advert_at = Some(now + self.settings.advert_interval);
                }
            }
            State::Backup => {
                if self.master_down_at.is_some_and(|t| t <= now) {
                    let hold = self.settings.split_brain_hold;
                    let preempting = self.preempting.is_some_and(|theirs| theirs < self.priority);
                    if !hold.is_zero() && !self.master_resigned && !preempting && master_alive() {
                        let until = match self.guard_until {
                            Some(u) => u,
                            None => {
                                actions.push(Action::GuardHolding);
                                *self.guard_until.insert(now + hold)
                            }
                        };
                        if now < until {
                            // Look again one advert interval later: a
                            // master that is really gone stops looking
                            // alive within the gossip failure detector.
                            self.master_down_at = Some((now + self.settings.advert_interval).min(until));
                            return actions;
                        }
                    }
                    self.become_master(now, Reason::MasterDown, &mut actions);
                }
            }
            State::Init | State::Fault => {}
        }
        actions
    }

    /// A new effective priority (health penalty applied or lifted).
    pub fn set_priority(&mut self, now: Duration, priority: u8) -> Vec<Action> {
        let priority = priority.clamp(1, 254);
        let mut actions = Vec::new();
        if priority == self.priority {
            return actions;
        }
        self.priority = priority;
        // Whether we out-rank the master changed: the next advert decides.
        self.preempting = None;
        if self.state == State::Master {
            // Tell backups now, so a higher one can preempt without
            // waiting for the next advert.
            actions.push(Action::SendAdvert { priority });
            self.advert_at = Some(now + self.settings.advert_interval);
        }
        actions
    }

    /// The interface lost its link (or came back).
    pub fn set_link(&mut self, now: Duration, up: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        match (up, self.state) {
            (false, State::Backup | State::Master) => {
                if self.state == State::Master {
                    actions.push(Action::RemoveVip);
                }
                self.advert_at = None;
                self.master_down_at = None;
                self.master = None;
                self.guard_until = None;
                self.contested_until = None;
                self.go(State::Fault, Reason::LinkDown, &mut actions);
            }
            (true, State::Fault) => actions = self.startup(now),
            _ => {}
        }
        actions
    }

    /// Leaving: a master sends priority 0 so backups take over after their
    /// skew time instead of the master-down interval.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state == State::Master {
            actions.push(Action::SendAdvert { priority: 0 });
            actions.push(Action::RemoveVip);
        }
        self.advert_at = None;
        self.master_down_at = None;
        self.contested_until = None;
        self.go(State::Init, Reason::Shutdown, &mut actions);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11));
    const OTHER_HIGH_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 12));
    const OTHER_LOW_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10));
    const ADV: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings() -> Settings {
        Settings {
            advert_interval: ADV,
            preempt: true,
            preempt_delay: Duration::ZERO,
            split_brain_hold: Duration::ZERO,
        }
    }

    fn machine(priority: u8) -> Machine {
        Machine::new(settings(), ME, priority)
    }

    const NO_GOSSIP: &dyn Fn() -> bool = &|| false;

    fn transitions(actions: &[Action]) -> Vec<State> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Transition { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    /// Runs the timers every millisecond from `from` to `to` (inclusive),
    /// returning the first time something happened and what.
    fn run(m: &mut Machine, from: u64, to: u64, gossip: &dyn Fn() -> bool) -> Option<(u64, Vec<Action>)> {
        (from..=to).find_map(|t| {
            let a = m.on_timer(ms(t), gossip);
            (!a.is_empty()).then_some((t, a))
        })
    }

    #[test]
    fn timers_follow_rfc_5798() {
        let m = machine(100);
        // Skew = (256 - 100) * 100 ms / 256 = 60.9375 ms.
        assert_eq!(m.skew(), Duration::from_micros(60_937) + Duration::from_nanos(500));
        assert_eq!(m.master_down_interval(), ms(300) + m.skew());
        assert!(machine(254).skew() < machine(1).skew());
    }

    #[test]
    fn a_lone_router_becomes_master_after_the_master_down_interval() {
        let mut m = machine(100);
        let a = m.startup(ms(0));
        assert_eq!(transitions(&a), vec![State::Backup]);
        assert!(!a.contains(&Action::AddVip));
        // Master_Down_Interval is 360.9 ms: nothing at 360, master at 361.
        assert_eq!(run(&mut m, 0, 360, NO_GOSSIP), None);
        let a = m.on_timer(ms(361), NO_GOSSIP);
        assert_eq!(transitions(&a), vec![State::Master]);
        assert!(a.contains(&Action::AddVip));
        assert!(a.contains(&Action::SendAdvert { priority: 100 }));
        assert_eq!(m.master(), Some(ME));
        // Then one advert per interval.
        assert_eq!(
            run(&mut m, 362, 500, NO_GOSSIP),
            Some((461, vec![Action::SendAdvert { priority: 100 }]))
        );
        assert_eq!(run(&mut m, 462, 600, NO_GOSSIP).map(|r| r.0), Some(561));
    }

    #[test]
    fn a_backup_hearing_a_higher_master_stays_backup() {
        let mut m = machine(100);
        m.startup(ms(0));
        for t in (0..10_000).step_by(100) {
            assert!(m.on_advert(ms(t), OTHER_HIGH_IP, 150, ADV).is_empty());
            assert_eq!(run(&mut m, t, t + 99, NO_GOSSIP), None);
        }
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.master(), Some(OTHER_HIGH_IP));
        // The master falls silent at 9 900: takeover 3 × 100 + skew later.
        assert_eq!(run(&mut m, 10_000, 20_000, NO_GOSSIP).map(|r| r.0), Some(9_900 + 361));
    }

    #[test]
    fn a_backup_adopts_the_masters_interval() {
        let mut m = machine(100);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_HIGH_IP, 150, ms(1000));
        // 3 × 1 s + (156/256) s.
        assert_eq!(m.master_down_interval(), ms(3000) + Duration::from_micros(609_375));
        assert_eq!(run(&mut m, 1, 3_609, NO_GOSSIP), None);
        assert_eq!(run(&mut m, 3_610, 3_610, NO_GOSSIP).map(|r| r.0), Some(3_610));
    }

    #[test]
    fn priority_zero_hands_over_after_skew_time() {
        let mut m = machine(100);
        m.startup(ms(0));
        m.on_advert(ms(50), OTHER_HIGH_IP, 150, ADV);
        m.on_advert(ms(100), OTHER_HIGH_IP, 0, ADV);
        // Skew 60.9 ms: master at 161, not at 160.
        assert_eq!(run(&mut m, 100, 160, NO_GOSSIP), None);
        assert_eq!(transitions(&m.on_timer(ms(161), NO_GOSSIP)), vec![State::Master]);
    }

    #[test]
    fn a_master_yields_to_higher_priority_and_to_a_higher_address_on_ties() {
        for (from, priority, yields) in [
            (OTHER_LOW_IP, 150, true),
            (OTHER_HIGH_IP, 100, true),
            (OTHER_LOW_IP, 100, false),
            (OTHER_HIGH_IP, 99, false),
        ] {
            let mut m = machine(100);
            m.startup(ms(0));
            m.on_timer(ms(400), NO_GOSSIP);
            assert_eq!(m.state(), State::Master);
            let a = m.on_advert(ms(450), from, priority, ADV);
            if yields {
                assert_eq!(transitions(&a), vec![State::Backup], "{from} {priority}");
                assert!(a.contains(&Action::RemoveVip));
                assert_eq!(m.master(), Some(from));
                // No more adverts from us.
                assert_eq!(run(&mut m, 451, 700, NO_GOSSIP), None);
            } else {
                // It answers at once and re-announces the address.
                assert_eq!(
                    a,
                    vec![Action::SendAdvert { priority: 100 }, Action::Announce],
                    "{from} {priority}"
                );
                assert_eq!(m.state(), State::Master);
                assert_eq!(run(&mut m, 451, 600, NO_GOSSIP).map(|r| r.0), Some(550));
                // The other falls silent: three of its intervals after its
                // last advert, the split is over and we re-announce.
                let healed = (551..=800).find(|&t| m.on_timer(ms(t), NO_GOSSIP).contains(&Action::SplitHealed));
                assert_eq!(healed, Some(750), "{from} {priority}");
            }
        }
    }

    #[test]
    fn a_master_answers_priority_zero_at_once() {
        let mut m = machine(100);
        m.startup(ms(0));
        m.on_timer(ms(400), NO_GOSSIP);
        let a = m.on_advert(ms(420), OTHER_HIGH_IP, 0, ADV);
        assert_eq!(a, vec![Action::SendAdvert { priority: 100 }]);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn preemption_follows_preempt_and_preempt_delay() {
        // Preempt: a higher router hearing a lower master takes over once
        // its master-down timer runs out (it discards the adverts).
        let mut m = machine(150);
        m.startup(ms(0));
        let mut took_over = None;
        for t in (0..2_000).step_by(100) {
            m.on_advert(ms(t), OTHER_LOW_IP, 100, ADV);
            if let Some((at, _)) = run(&mut m, t, t + 99, NO_GOSSIP) {
                took_over = Some(at);
                break;
            }
        }
        // 3 × 100 + (106/256) × 100 = 341.4 ms after startup.
        assert_eq!(took_over, Some(342));

        // No preempt: it stays backup as long as the lower master lives.
        let mut m = Machine::new(
            Settings {
                preempt: false,
                ..settings()
            },
            ME,
            150,
        );
        m.startup(ms(0));
        for t in (0..5_000).step_by(100) {
            m.on_advert(ms(t), OTHER_LOW_IP, 100, ADV);
            assert_eq!(run(&mut m, t, t + 99, NO_GOSSIP), None);
        }
        assert_eq!(m.state(), State::Backup);

        // preempt_delay 1 s: tolerated for 1 s after the first lower
        // advert, then discarded, so master 1 s + 341.4 ms after it.
        let mut m = Machine::new(
            Settings {
                preempt_delay: ms(1000),
                ..settings()
            },
            ME,
            150,
        );
        m.startup(ms(0));
        let mut took_over = None;
        for t in (0..5_000).step_by(100) {
            m.on_advert(ms(t), OTHER_LOW_IP, 100, ADV);
            if let Some((at, _)) = run(&mut m, t, t + 99, NO_GOSSIP) {
                took_over = Some(at);
                break;
            }
        }
        // The last tolerated advert is at 900 ms: 900 + 341.4.
        assert_eq!(took_over, Some(1_242));
    }

    /// Lower master advertising every 100 ms from `from` to `to`; the first
    /// time this machine took over.
    fn hear_lower_master(m: &mut Machine, from: u64, to: u64) -> Option<u64> {
        (from..to).step_by(100).find_map(|t| {
            m.on_advert(ms(t), OTHER_LOW_IP, 100, ADV);
            run(m, t, t + 99, NO_GOSSIP).map(|(at, _)| at)
        })
    }

    #[test]
    fn a_held_preemption_waits_for_the_hold_to_lift_but_a_silent_master_is_taken_over() {
        let mut m = Machine::new(
            Settings {
                preempt_delay: ms(500),
                ..settings()
            },
            ME,
            150,
        );
        m.hold_preemption(true);
        m.startup(ms(0));
        // Held: the lower master is tolerated for as long as the hold lasts
        // (without it, master at 841).
        assert_eq!(hear_lower_master(&mut m, 0, 3_000), None);
        assert_eq!(m.master(), Some(OTHER_LOW_IP));
        assert!(m.preemption_held());
        // Lifted at 3 000: preempt_delay counts from there, not from the
        // first lower advert (0), so the last tolerated advert is at 3 400.
        m.hold_preemption(false);
        assert_eq!(hear_lower_master(&mut m, 3_000, 6_000), Some(3_400 + 342));
        assert_eq!(m.state(), State::Master);

        // Held, but the master falls silent after its advert at 900:
        // taken over one master-down interval later, as always.
        let mut m = machine(150);
        m.hold_preemption(true);
        m.startup(ms(0));
        assert_eq!(hear_lower_master(&mut m, 0, 1_000), None);
        assert_eq!(run(&mut m, 1_000, 5_000, NO_GOSSIP).map(|r| r.0), Some(900 + 342));
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn health_penalty_hands_the_vip_to_a_healthier_backup() {
        let mut master = machine(150);
        master.startup(ms(0));
        master.on_timer(ms(400), NO_GOSSIP);
        assert_eq!(master.state(), State::Master);
        let a = master.set_priority(ms(410), 100);
        assert_eq!(a, vec![Action::SendAdvert { priority: 100 }]);
        assert!(master.set_priority(ms(411), 100).is_empty());
        // A backup at 120 now discards the adverts and preempts.
        let mut backup = Machine::new(settings(), OTHER_HIGH_IP, 120);
        backup.startup(ms(0));
        backup.on_advert(ms(300), ME, 150, ADV);
        backup.on_advert(ms(410), ME, 100, ADV);
        backup.on_advert(ms(510), ME, 100, ADV);
        // Lower adverts are discarded: master-down runs from the last
        // higher one, 300 + 300 + (136/256) × 100 = 653.1 ms.
        assert_eq!(run(&mut backup, 411, 2000, NO_GOSSIP).map(|r| r.0), Some(654));
        // The old master hears the new one and yields.
        let a = master.on_advert(ms(654), OTHER_HIGH_IP, 120, ADV);
        assert!(a.contains(&Action::RemoveVip));
    }

    #[test]
    fn link_down_is_fault_and_link_up_starts_over() {
        let mut m = machine(100);
        m.startup(ms(0));
        m.on_timer(ms(400), NO_GOSSIP);
        let a = m.set_link(ms(500), false);
        assert!(a.contains(&Action::RemoveVip));
        assert_eq!(transitions(&a), vec![State::Fault]);
        assert_eq!(m.next_deadline(), None);
        assert!(m.on_advert(ms(510), OTHER_HIGH_IP, 200, ADV).is_empty());
        assert_eq!(run(&mut m, 500, 5000, NO_GOSSIP), None);
        assert!(m.set_link(ms(5000), false).is_empty());
        let a = m.set_link(ms(5001), true);
        assert_eq!(transitions(&a), vec![State::Backup]);
        assert_eq!(run(&mut m, 5001, 6000, NO_GOSSIP).map(|r| r.0), Some(5001 + 361));
        // A backup losing its link has no address to remove.
        let mut b = machine(100);
        b.startup(ms(0));
        assert!(!b.set_link(ms(10), false).contains(&Action::RemoveVip));
    }

    #[test]
    fn shutdown_sends_priority_zero_from_a_master_only() {
        let mut m = machine(100);
        m.startup(ms(0));
        m.on_timer(ms(400), NO_GOSSIP);
        let a = m.shutdown();
        assert_eq!(a[..2], [Action::SendAdvert { priority: 0 }, Action::RemoveVip]);
        assert_eq!(m.state(), State::Init);
        assert_eq!(m.next_deadline(), None);
        let mut b = machine(100);
        b.startup(ms(0));
        assert!(!b.shutdown().iter().any(|a| matches!(a, Action::SendAdvert { .. })));
    }

    #[test]
    fn split_brain_guard_holds_while_gossip_sees_the_master_and_never_longer() {
        let guarded = Settings {
            split_brain_hold: ms(2000),
            ..settings()
        };
        // VRRP path broken, master alive in gossip: held for 2 s, then
        // taken over anyway (bounded).
        let mut m = Machine::new(guarded.clone(), ME, 100);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_HIGH_IP, 150, ADV);
        let alive: &dyn Fn() -> bool = &|| true;
        let (t, a) = run(&mut m, 0, 5000, alive).unwrap_or_default();
        assert_eq!((t, a), (361, vec![Action::GuardHolding]));
        assert_eq!(m.state(), State::Backup);
        let (t, a) = (362..=5000)
            .find_map(|t| {
                let a = m.on_timer(ms(t), alive);
                transitions(&a).contains(&State::Master).then_some((t, a))
            })
            .unwrap_or_default();
        assert_eq!(t, 2361);
        assert!(!a.contains(&Action::GuardHolding));

        // Master really gone (gossip says so): no delay at all.
        let mut m = Machine::new(guarded.clone(), ME, 100);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_HIGH_IP, 150, ADV);
        assert_eq!(run(&mut m, 0, 5000, NO_GOSSIP).map(|r| r.0), Some(361));

        // Gossip still fresh at expiry, then the master is declared gone:
        // takeover at the next check, one advert interval later.
        let mut m = Machine::new(guarded.clone(), ME, 100);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_HIGH_IP, 150, ADV);
        assert_eq!(run(&mut m, 0, 361, alive).map(|r| r.0), Some(361));
        assert_eq!(run(&mut m, 362, 5000, NO_GOSSIP).map(|r| r.0), Some(461));

        // A master that resigned (priority 0) is not guarded, even while
        // gossip still lists it: takeover after the skew time.
        let mut m = Machine::new(guarded.clone(), ME, 100);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_HIGH_IP, 150, ADV);
        m.on_advert(ms(50), OTHER_HIGH_IP, 0, ADV);
        let first = run(&mut m, 50, 5000, alive);
        assert_eq!(first.as_ref().map(|r| r.0), Some(111));
        assert!(first.is_some_and(|r| transitions(&r.1) == [State::Master]));

        // Preempting a lower master whose adverts still arrive (its
        // health penalty, say) is no split: gossip showing it alive must
        // not delay the takeover past the master-down interval.
        let mut m = Machine::new(guarded.clone(), ME, 150);
        m.startup(ms(0));
        let mut took_over = None;
        for t in (0..3_000).step_by(100) {
            m.on_advert(ms(t), OTHER_LOW_IP, 100, ADV);
            if let Some((at, a)) = run(&mut m, t, t + 99, alive) {
                assert!(!a.contains(&Action::GuardHolding), "guard held a preemption at {at}");
                took_over = Some(at);
                break;
            }
        }
        assert_eq!(took_over, Some(342));

        // Three routers: our master H (200) falls silent to us while
        // gossip shows it alive; a lower L (100), cut off from H, acts as
        // master and its adverts reach us (150). L's adverts say nothing
        // of H: the guard still holds for H.
        let mut m = Machine::new(guarded.clone(), ME, 150);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_HIGH_IP, 200, ADV);
        let mut first = None;
        for t in (100..1_000).step_by(100) {
            m.on_advert(ms(t), OTHER_LOW_IP, 100, ADV);
            if let Some(r) = run(&mut m, t, t + 99, alive) {
                first = Some(r);
                break;
            }
        }
        assert_eq!(first, Some((342, vec![Action::GuardHolding])));

        // A stale preemption: we discarded a lower master's advert, then a
        // health penalty put us below it; when it falls silent with
        // gossip showing it alive, the guard holds.
        let mut m = Machine::new(guarded.clone(), ME, 150);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_LOW_IP, 100, ADV);
        m.on_advert(ms(100), OTHER_LOW_IP, 100, ADV);
        m.set_priority(ms(150), 50);
        assert_eq!(
            run(&mut m, 150, 5000, alive).map(|r| r.1),
            Some(vec![Action::GuardHolding])
        );

        // Adverts coming back end the hold.
        let mut m = Machine::new(guarded, ME, 100);
        m.startup(ms(0));
        m.on_advert(ms(0), OTHER_HIGH_IP, 150, ADV);
        run(&mut m, 0, 361, alive);
        m.on_advert(ms(400), OTHER_HIGH_IP, 150, ADV);
        assert_eq!(run(&mut m, 401, 760, alive), None);
        assert_eq!(
            run(&mut m, 761, 761, alive).map(|r| r.1),
            Some(vec![Action::GuardHolding])
        );
    }

    /// Two routers on a perfect link, any priorities, any start times,
    /// either preempt setting: after they settle exactly one is master,
    /// and with preemption it is the higher priority.
    #[test]
    fn two_routers_always_settle_on_one_master() {
        let ips = [OTHER_LOW_IP, OTHER_HIGH_IP];
        let mut cases = 0;
        for p0 in [1u8, 50, 100, 200, 254] {
            for p1 in [1u8, 50, 100, 200, 254] {
                for start1 in [0u64, 5, 150, 900] {
                    for preempt in [true, false] {
                        cases += 1;
                        let s = Settings { preempt, ..settings() };
                        let mut m = [Machine::new(s.clone(), ips[0], p0), Machine::new(s, ips[1], p1)];
                        let starts = [0, start1];
                        for t in 0..4000u64 {
                            for i in 0..2 {
                                let mut out = Vec::new();
                                if t == starts[i] {
                                    out.extend(m[i].startup(ms(t)));
                                }
                                out.extend(m[i].on_timer(ms(t), NO_GOSSIP));
                                for a in out {
                                    if let Action::SendAdvert { priority } = a {
                                        m[1 - i].on_advert(ms(t), ips[i], priority, ADV);
                                    }
                                }
                            }
                        }
                        let masters: Vec<usize> = (0..2).filter(|&i| m[i].state() == State::Master).collect();
                        assert_eq!(masters.len(), 1, "p={p0},{p1} start1={start1} preempt={preempt}");
                        // Equal priorities: whichever became master first
                        // stays (a backup does not preempt an equal).
                        if preempt && p0 != p1 {
                            let want = if p0 > p1 { 0 } else { 1 };
                            assert_eq!(masters, vec![want], "p={p0},{p1} start1={start1}");
                        }
                        let backup = 1 - masters[0];
                        assert_eq!(m[backup].master(), Some(ips[masters[0]]));
                    }
                }
            }
        }
        assert_eq!(cases, 200);
    }
}
