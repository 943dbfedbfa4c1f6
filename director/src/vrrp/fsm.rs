//! The VRRP state machine (RFC 5798 section 6.4, RFC 3768 section 6.4), pure:
//! no I/O, no clock of its own. The caller feeds [`Event`]s with the current
//! time and performs the returned [`Action`]s; [`Machine::deadline`] says
//! when to call back with [`Event::Timer`].

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

/// Protocol states (RFC 5798 6.4), plus Fault (keepalived's: a tracked
/// interface or script failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Init,
    Backup,
    Master,
    Fault,
}

impl State {
    /// Lower-case name, as in the status document.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Startup,
    Shutdown,
    /// A valid advertisement for our virtual router.
    Advert {
        src: IpAddr,
        priority: u8,
        interval_cs: u16,
    },
    /// The deadline passed.
    Timer,
    /// Tracking failed / recovered.
    Fault(bool),
    /// The effective priority changed (tracking weights).
    Priority(u8),
    /// A `vrrp_sync_group` peer entered this state: follow it.
    Follow(State),
    /// BFD says the master is gone (`master_bfd`): a backup takes over at
    /// once instead of waiting for the master-down interval.
    MasterDown,
    /// Our own timer fired late (this machine was starved of CPU): a backup
    /// cannot trust the silence it measured, so it waits one more
    /// Master_Adver_Interval before declaring the master dead.
    Starved,
}

/// Outputs, performed by the caller in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority.
    SendAdvert(u8),
    /// Add the virtual addresses to the interface.
    AddAddresses,
    /// Announce them (gratuitous ARP / unsolicited NA).
    Announce,
    RemoveAddresses,
    /// Entered a new state (notify scripts, logs, counters).
    Transition {
        from: State,
        to: State,
    },
    /// As master for longer than a Master_Down_Interval we heard another,
    /// lower-priority master for our virtual router: it cannot have heard
    /// us, so adverts were lost between us (a split brain). We stay
    /// (RFC 5798 6.4.3); `yielded` is kept for the log's wording and is
    /// false. (A higher-priority master is a preemption or the other side
    /// of a healing split, indistinguishable here: we just yield; two
    /// routers that both just became master are an election race.)
    SplitBrain {
        other: IpAddr,
        yielded: bool,
    },
}

/// Fixed parameters of an instance.
#[derive(Debug, Clone)]
pub struct Params {
    /// 2 or 3.
    pub version: crate::config::Version,
    /// Configured priority (255: address owner).
    pub priority: u8,
    /// Advertisement interval, centiseconds (v2: a multiple of 100).
    pub advert_interval_cs: u16,
    pub preempt: bool,
    /// Higher-priority backups wait this long after startup to preempt.
    pub preempt_delay: Duration,
    /// keepalived's `state MASTER`: start as master without waiting.
    pub start_as_master: bool,
    /// Our primary address on the interface (equal-priority tie-break).
    pub primary: IpAddr,
}

/// One instance's protocol state.
#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    state: State,
    priority: u8,
    master_adver_interval_cs: u16,
    deadline: Option<Instant>,
    started: Option<Instant>,
    master: Option<IpAddr>,
    /// When we last became master.
    master_since: Option<Instant>,
    /// When, as master, we last answered another router's advert (a
    /// lower-priority master's, a priority 0): at most once per advert
    /// interval, however many such adverts arrive.
    answered: Option<Instant>,
    /// When that answer last announced our addresses: at most once per
    /// [`ANNOUNCE_GAP`].
    announced: Option<Instant>,
    transitions: u64,
    /// Preemption held back from outside (a starting director waiting for
    /// its flow-sync peers' flows): a lower-priority master is followed.
    preempt_hold: bool,
}

/// The least time between two re-announcements of our addresses made in
/// answer to another master's adverts (each is `garp_master_repeat`
/// gratuitous ARPs per address).
pub const ANNOUNCE_GAP: Duration = Duration::from_secs(1);

fn cs(n: u64) -> Duration {
    Duration::from_millis(n * 10)
}

impl Machine {
    pub fn new(params: Params) -> Machine {
        Machine {
            priority: params.priority,
            master_adver_interval_cs: params.advert_interval_cs,
            params,
            state: State::Init,
            deadline: None,
            started: None,
            master: None,
            master_since: None,
            answered: None,
            announced: None,
            transitions: 0,
            preempt_hold: false,
        }
    }

    /// Holds back preemption (or lets it go): while held, a backup follows
    /// a lower-priority master as if it did not preempt; once let go, that
    /// master's next advert is discarded and the backup takes over.
    pub fn hold_preemption(&mut self, hold: bool) {
        self.preempt_hold = hold;
    }

    /// Whether an advert that wants an answer from a master may have one
    /// now (none in the last advert interval): a flood of accepted adverts
    /// (a host that knows the password) costs at most one advert per
    /// interval, not one per packet.
    fn may_answer(&mut self, now: Instant) -> bool {
        if self
            .answered
            .is_some_and(|t| now.saturating_duration_since(t) < self.advert_interval())
        {
            return false;
        }
        self.answered = Some(now);
        true
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The priority we advertise (tracking applied; 255 for owners).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// When to deliver [`Event::Timer`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The current master's address as far as we know (ours when master).
    pub fn master(&self) -> Option<IpAddr> {
        match self.state {
            State::Master => Some(self.params.primary),
            _ => self.master,
        }
    }

    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Master_Adver_Interval: ours as master, the master's (v3) as backup.
    pub fn master_adver_interval(&self) -> Duration {
        cs(u64::from(self.master_adver_interval_cs))
    }

    /// Skew_Time (RFC 5798 6.1; RFC 3768 6.1 is the same in seconds).
    pub fn skew(&self) -> Duration {
        let p = u64::from(self.priority);
        if self.params.version == crate::config::Version::V2 {
            Duration::from_micros((256 - p) * 1_000_000 / 256)
        } else {
            Duration::from_micros(
                (256 - p) * u64::from(self.master_adver_interval_cs) * 10_000 / 256,
            )
        }
    }

    /// Master_Down_Interval = 3 x Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        3 * self.master_adver_interval() + self.skew()
    }

    fn advert_interval(&self) -> Duration {
        cs(u64::from(self.params.advert_interval_cs))
    }

    fn go(&mut self, to: State, actions: &mut Vec<Action>) {
        let from = self.state;
        if from != to {
            self.state = to;
            self.transitions += 1;
            actions.push(Action::Transition { from, to });
        }
    }

    fn become_master(&mut self, now: Instant, actions: &mut Vec<Action>) {
        // RFC 5798 6.4.1 / 6.4.2: send an advert, announce, arm the timer.
        actions.push(Action::SendAdvert(self.priority));
        actions.push(Action::AddAddresses);
        actions.push(Action::Announce);
        self.master_adver_interval_cs = self.params.advert_interval_cs;
        self.deadline = Some(now + self.advert_interval());
        self.master_since = Some(now);
        self.go(State::Master, actions);
    }

    fn become_backup(&mut self, now: Instant, actions: &mut Vec<Action>) {
        // RFC 5798 6.4.1: Master_Adver_Interval starts as ours; arm
        // Master_Down_Timer.
        if self.state == State::Master {
            actions.push(Action::RemoveAddresses);
        }
        self.deadline = Some(now + self.master_down_interval());
        self.go(State::Backup, actions);
    }

    /// Feeds one event; returns what to do.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match (self.state, event) {
            // 6.4.1 Initialize.
            (State::Init, Event::Startup) => {
                self.started = Some(now);
                self.master_adver_interval_cs = self.params.advert_interval_cs;
                if self.priority == 255 || self.params.start_as_master {
                    self.become_master(now, &mut actions);
                } else {
                    self.become_backup(now, &mut actions);
                }
            }
            (_, Event::Startup) => {}

            // Shutdown: a master says goodbye with priority 0 (6.4.3) so a
            // backup takes over after only its skew time.
            (State::Master, Event::Shutdown) => {
                actions.push(Action::SendAdvert(0));
                actions.push(Action::RemoveAddresses);
                self.deadline = None;
                self.go(State::Init, &mut actions);
            }
            (_, Event::Shutdown) => {
                self.deadline = None;
                self.go(State::Init, &mut actions);
            }

            // Tracking.
            (State::Fault, Event::Fault(false)) => {
                if self.priority == 255 {
                    self.become_master(now, &mut actions);
                } else {
                    self.master_adver_interval_cs = self.params.advert_interval_cs;
                    self.become_backup(now, &mut actions);
                }
            }
            (State::Init | State::Fault, Event::Fault(_)) => {}
            (_, Event::Fault(false)) => {}
            (state, Event::Fault(true)) => {
                if state == State::Master {
                    actions.push(Action::SendAdvert(0));
                    actions.push(Action::RemoveAddresses);
                }
                self.deadline = None;
                self.go(State::Fault, &mut actions);
            }
            // Sync groups (keepalived): members move together.
            (from, Event::Follow(to)) if from != to => match to {
                State::Master if from != State::Init => {
                    self.master = None;
                    self.become_master(now, &mut actions);
                }
                State::Backup if from != State::Init => {
                    self.master_adver_interval_cs = self.params.advert_interval_cs;
                    self.become_backup(now, &mut actions);
                }
                State::Fault if from != State::Init => {
                    if from == State::Master {
                        actions.push(Action::SendAdvert(0));
                        actions.push(Action::RemoveAddresses);
                    }
                    self.deadline = None;
                    self.go(State::Fault, &mut actions);
                }
                _ => {}
            },
            (_, Event::Follow(_)) => {}
            (State::Backup, Event::Starved) => {
                self.deadline = Some(now + self.master_adver_interval());
            }
            (_, Event::Starved) => {}
            // Only a backup has a master to lose.
            (State::Init | State::Master | State::Fault, Event::MasterDown) => {}
            (_, Event::Priority(p)) => {
                // An owner stays an owner.
                if self.params.priority != 255 {
                    self.priority = p.clamp(1, 254);
                }
            }

            // 6.4.2 Backup.
            (State::Backup, Event::MasterDown) => {
                self.master = None;
                self.become_master(now, &mut actions);
            }
            (State::Backup, Event::Timer) => {
                if self.deadline.is_some_and(|d| now >= d) {
                    self.master = None;
                    self.become_master(now, &mut actions);
                }
            }
            (
                State::Backup,
                Event::Advert {
                    src,
                    priority,
                    interval_cs,
                },
            ) => {
                let preempt_held = self.preempt_hold
                    || self
                        .started
                        .is_some_and(|s| now < s + self.params.preempt_delay);
                if priority == 0 {
                    // The master is leaving: take over after the skew time.
                    self.deadline = Some(now + self.skew());
                } else if !self.params.preempt || priority >= self.priority || preempt_held {
                    if self.params.version == crate::config::Version::V3 {
                        self.master_adver_interval_cs = interval_cs;
                    }
                    self.master = Some(src);
                    self.deadline = Some(now + self.master_down_interval());
                }
                // Else: a lower priority and we preempt: discard; our timer
                // runs out and we take over.
            }

            // 6.4.3 Master.
            (State::Master, Event::Timer) => {
                if let Some(d) = self.deadline.filter(|d| now >= *d) {
                    actions.push(Action::SendAdvert(self.priority));
                    // Keep the cadence: the next advert is due one interval
                    // after this one was due, so timer lateness does not
                    // stretch every interval (unless we fell a whole
                    // interval behind).
                    let next = d + self.advert_interval();
                    self.deadline = Some(if next > now {
                        next
                    } else {
                        now + self.advert_interval()
                    });
                }
            }
            (
                State::Master,
                Event::Advert {
                    src,
                    priority,
                    interval_cs,
                },
            ) => {
                if priority == 0 {
                    // RFC 5798 6.4.3: send an advert at once (bounded: at
                    // most one answer per interval).
                    if self.may_answer(now) {
                        actions.push(Action::SendAdvert(self.priority));
                        self.deadline = Some(now + self.advert_interval());
                    }
                } else if priority > self.priority
                    || (priority == self.priority && src > self.params.primary)
                {
                    if self.params.version == crate::config::Version::V3 {
                        self.master_adver_interval_cs = interval_cs;
                    }
                    self.master = Some(src);
                    self.become_backup(now, &mut actions);
                } else if self.may_answer(now) {
                    // A lower-priority master: the RFC discards it. We also
                    // assert ourselves at once (it yields on this advert, not
                    // an interval later) and re-announce our addresses, so
                    // clients that followed the other master come back; at
                    // most once per advert interval (the advert) and per
                    // ANNOUNCE_GAP (the announcement), whatever the rate of
                    // such adverts: the rest are discarded as the RFC says.
                    let settled = self.master_since.is_some_and(|t| {
                        now.saturating_duration_since(t) > self.master_down_interval()
                    });
                    if settled {
                        actions.push(Action::SplitBrain {
                            other: src,
                            yielded: false,
                        });
                    }
                    actions.push(Action::SendAdvert(self.priority));
                    if self
                        .announced
                        .is_none_or(|t| now.saturating_duration_since(t) >= ANNOUNCE_GAP)
                    {
                        actions.push(Action::Announce);
                        self.announced = Some(now);
                    }
                    self.deadline = Some(now + self.advert_interval());
                }
            }

            (State::Init | State::Fault, Event::Advert { .. } | Event::Timer) => {}
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn params(version: u8, priority: u8, interval_cs: u16) -> Params {
        let version = crate::config::Version::try_from(version).expect("2 or 3");
        Params {
            version,
            priority,
            advert_interval_cs: interval_cs,
            preempt: true,
            preempt_delay: Duration::ZERO,
            start_as_master: false,
            primary: ip("10.0.0.10"),
        }
    }

    fn transitions(actions: &[Action]) -> Vec<(State, State)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Transition { from, to } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    fn advert(src: &str, priority: u8, interval_cs: u16) -> Event {
        Event::Advert {
            src: ip(src),
            priority,
            interval_cs,
        }
    }

    #[test]
    fn timers_follow_rfc5798_section_6_1() {
        // v3, priority 100, 1 s: skew = (256-100)*100/256 cs = 60.9375 cs.
        let m = Machine::new(params(3, 100, 100));
        assert_eq!(m.skew(), Duration::from_micros(609_375));
        assert_eq!(
            m.master_down_interval(),
            Duration::from_secs(3) + Duration::from_micros(609_375)
        );
        // v2 (RFC 3768 6.1): skew = (256-100)/256 s.
        let m = Machine::new(params(2, 100, 100));
        assert_eq!(m.skew(), Duration::from_micros(609_375));
        // v3 at 10 ms: skew scales with the interval.
        let m = Machine::new(params(3, 200, 1));
        assert_eq!(m.skew(), Duration::from_micros(2_187));
        assert_eq!(m.master_down_interval(), Duration::from_micros(32_187));
    }

    #[test]
    fn owner_starts_as_master_others_as_backup() {
        // RFC 5798 6.4.1: priority 255 goes straight to Master.
        let t0 = Instant::now();
        let mut owner = Machine::new(params(3, 255, 100));
        let a = owner.step(Event::Startup, t0);
        assert_eq!(
            a,
            vec![
                Action::SendAdvert(255),
                Action::AddAddresses,
                Action::Announce,
                Action::Transition {
                    from: State::Init,
                    to: State::Master
                }
            ]
        );
        assert_eq!(owner.deadline(), Some(t0 + Duration::from_secs(1)));
        let mut b = Machine::new(params(3, 100, 100));
        let a = b.step(Event::Startup, t0);
        assert_eq!(transitions(&a), vec![(State::Init, State::Backup)]);
        assert_eq!(b.deadline(), Some(t0 + b.master_down_interval()));
    }

    #[test]
    fn bfd_master_down_takes_over_at_once_only_from_backup() {
        let t0 = Instant::now();
        let mut b = Machine::new(params(3, 100, 100));
        b.step(Event::Startup, t0);
        let t1 = t0 + Duration::from_millis(500);
        b.step(advert("10.0.0.11", 150, 100), t1);
        // Long before the master-down interval: BFD says the master died.
        let a = b.step(Event::MasterDown, t1 + Duration::from_millis(30));
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
        assert!(a.contains(&Action::AddAddresses));
        // A master (or an instance in Fault) ignores it.
        assert!(
            b.step(Event::MasterDown, t1 + Duration::from_millis(40))
                .is_empty()
        );
    }

    #[test]
    fn backup_takes_over_when_the_master_goes_silent() {
        // RFC 5798 6.4.2: Master_Down_Timer fires -> Master.
        let t0 = Instant::now();
        let mut b = Machine::new(params(3, 100, 100));
        b.step(Event::Startup, t0);
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.step(advert("10.0.0.11", 150, 100), t1).is_empty());
        assert_eq!(b.master(), Some(ip("10.0.0.11")));
        // Too early: nothing.
        let early = t1 + b.master_down_interval() - Duration::from_millis(1);
        assert!(b.step(Event::Timer, early).is_empty());
        let t2 = t1 + b.master_down_interval();
        let a = b.step(Event::Timer, t2);
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
        assert!(a.contains(&Action::SendAdvert(100)));
        assert!(a.contains(&Action::AddAddresses));
        assert!(a.contains(&Action::Announce));
    }

    #[test]
    fn backup_uses_the_interval_the_master_advertises_v3() {
        // RFC 5798 6.4.2: Master_Adver_Interval := Adver Interval received.
        let t0 = Instant::now();
        let mut b = Machine::new(params(3, 100, 100));
        b.step(Event::Startup, t0);
        b.step(advert("10.0.0.11", 150, 10), t0);
        assert_eq!(b.master_adver_interval(), Duration::from_millis(100));
        assert_eq!(b.deadline(), Some(t0 + b.master_down_interval()));
        assert!(b.master_down_interval() < Duration::from_millis(400));
        // v2 keeps its own interval.
        let mut b = Machine::new(params(2, 100, 100));
        b.step(Event::Startup, t0);
        b.step(advert("10.0.0.11", 150, 300), t0);
        assert_eq!(b.master_adver_interval(), Duration::from_secs(1));
    }

    #[test]
    fn priority_zero_means_take_over_after_skew() {
        // RFC 5798 6.4.2: priority 0 -> Master_Down_Timer := Skew_Time.
        let t0 = Instant::now();
        let mut b = Machine::new(params(3, 100, 100));
        b.step(Event::Startup, t0);
        b.step(advert("10.0.0.11", 0, 100), t0);
        assert_eq!(b.deadline(), Some(t0 + b.skew()));
        let a = b.step(Event::Timer, t0 + b.skew());
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
    }

    #[test]
    fn master_yields_to_higher_priority_and_to_higher_address_on_a_tie() {
        // RFC 5798 6.4.3.
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 100, 100));
        m.step(Event::Startup, t0);
        m.step(Event::Timer, t0 + m.master_down_interval());
        assert_eq!(m.state(), State::Master);
        let t1 = t0 + Duration::from_secs(10);
        // Lower priority: we stay; the split brain is reported and we assert
        // ourselves at once.
        let a = m.step(advert("10.0.0.11", 50, 100), t1);
        assert_eq!(
            a,
            vec![
                Action::SplitBrain {
                    other: ip("10.0.0.11"),
                    yielded: false
                },
                Action::SendAdvert(100),
                Action::Announce
            ]
        );
        // Equal priority from a lower address: we stay too.
        let a = m.step(advert("10.0.0.9", 100, 100), t1);
        assert!(transitions(&a).is_empty());
        assert_eq!(m.state(), State::Master);
        // Equal priority from a higher address: yield.
        let a = m.step(advert("10.0.0.11", 100, 100), t1);
        assert_eq!(transitions(&a), vec![(State::Master, State::Backup)]);
        assert!(a.contains(&Action::RemoveAddresses));
        // A preemption (or the other side of a healing split): no report.
        assert!(!a.iter().any(|x| matches!(x, Action::SplitBrain { .. })));
        assert_eq!(m.master(), Some(ip("10.0.0.11")));
    }

    /// A flood of accepted adverts (a host that knows the PASS password,
    /// sent in clear) at a settled master: one answer per advert interval,
    /// one announcement per ANNOUNCE_GAP, one split-brain report per
    /// answer; the rest discarded.
    #[test]
    fn a_flood_of_lower_priority_adverts_is_answered_once_per_interval() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 150, 10));
        m.step(Event::Startup, t0);
        let t1 = t0 + m.master_down_interval();
        m.step(Event::Timer, t1);
        let start = t1 + Duration::from_secs(5);
        let (mut adverts, mut announces, mut reports) = (0, 0, 0);
        // 10,000 adverts a second for 2 s, alternating priority 50 and 0.
        for i in 0..20_000u64 {
            let now = start + Duration::from_micros(i * 100);
            let p = if i % 2 == 0 { 50 } else { 0 };
            for a in m.step(advert("10.0.0.66", p, 10), now) {
                match a {
                    Action::SendAdvert(_) => adverts += 1,
                    Action::Announce => announces += 1,
                    Action::SplitBrain { .. } => reports += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(m.state(), State::Master);
        // 2 s at a 100 ms interval: 20 answers (and no more).
        assert!((19..=21).contains(&adverts), "{adverts} adverts");
        assert!((2..=3).contains(&announces), "{announces} announcements");
        assert!(reports <= adverts, "{reports} reports");
    }

    #[test]
    fn an_election_race_is_not_a_split_brain() {
        // Both routers start together and both become master; the lower
        // one's advert arrives right after: we assert ourselves, but no
        // adverts were lost, so nothing is reported.
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 150, 10));
        m.step(Event::Startup, t0);
        let t1 = t0 + m.master_down_interval();
        m.step(Event::Timer, t1);
        assert_eq!(m.state(), State::Master);
        let a = m.step(advert("10.0.0.11", 100, 10), t1 + Duration::from_millis(20));
        assert_eq!(a, vec![Action::SendAdvert(150), Action::Announce]);
        // Much later, a lower-priority master is a split brain.
        let a = m.step(advert("10.0.0.11", 100, 10), t1 + Duration::from_secs(2));
        assert_eq!(
            a[0],
            Action::SplitBrain {
                other: ip("10.0.0.11"),
                yielded: false
            }
        );
    }

    #[test]
    fn master_answers_priority_zero_and_sends_on_its_timer() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 255, 100));
        m.step(Event::Startup, t0);
        // Fired 3 ms late: the next advert stays on the 1 s cadence.
        let a = m.step(Event::Timer, t0 + Duration::from_millis(1003));
        assert_eq!(a, vec![Action::SendAdvert(255)]);
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(2)));
        let a = m.step(
            advert("10.0.0.11", 0, 100),
            t0 + Duration::from_millis(1500),
        );
        assert_eq!(a, vec![Action::SendAdvert(255)]);
    }

    #[test]
    fn preemption_on_off_and_delay() {
        let t0 = Instant::now();
        // Preempt (default): a higher-priority backup ignores a lower master
        // and takes over when its timer runs out.
        let mut b = Machine::new(params(3, 200, 100));
        b.step(Event::Startup, t0);
        let d = b.deadline();
        assert!(
            b.step(
                advert("10.0.0.11", 100, 100),
                t0 + Duration::from_millis(10)
            )
            .is_empty()
        );
        assert_eq!(b.deadline(), d, "a lower master must not reset the timer");
        // nopreempt: the lower master is accepted.
        let mut p = params(3, 200, 100);
        p.preempt = false;
        let mut b = Machine::new(p);
        b.step(Event::Startup, t0);
        let t1 = t0 + Duration::from_millis(10);
        b.step(advert("10.0.0.11", 100, 100), t1);
        assert_eq!(b.deadline(), Some(t1 + b.master_down_interval()));
        // preempt_delay: accepted during the delay, preempts after it.
        let mut p = params(3, 200, 100);
        p.preempt_delay = Duration::from_secs(10);
        let mut b = Machine::new(p);
        b.step(Event::Startup, t0);
        b.step(advert("10.0.0.11", 100, 100), t1);
        assert_eq!(b.deadline(), Some(t1 + b.master_down_interval()));
        let late = t0 + Duration::from_secs(11);
        let d = b.deadline();
        b.step(advert("10.0.0.11", 100, 100), late);
        assert_eq!(b.deadline(), d);
        // A hold from outside (flow sync waiting for its peers): accepted
        // while held, preempts once let go.
        let mut b = Machine::new(params(3, 200, 100));
        b.step(Event::Startup, t0);
        b.hold_preemption(true);
        b.step(advert("10.0.0.11", 100, 100), t1);
        assert_eq!(b.deadline(), Some(t1 + b.master_down_interval()));
        let t2 = t1 + Duration::from_millis(100);
        b.step(advert("10.0.0.11", 100, 100), t2);
        assert_eq!(b.deadline(), Some(t2 + b.master_down_interval()));
        b.hold_preemption(false);
        let d = b.deadline();
        b.step(
            advert("10.0.0.11", 100, 100),
            t2 + Duration::from_millis(100),
        );
        assert_eq!(
            b.deadline(),
            d,
            "once let go, the lower master is discarded"
        );
    }

    #[test]
    fn graceful_shutdown_sends_priority_zero() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 255, 100));
        m.step(Event::Startup, t0);
        let a = m.step(Event::Shutdown, t0);
        assert_eq!(
            a,
            vec![
                Action::SendAdvert(0),
                Action::RemoveAddresses,
                Action::Transition {
                    from: State::Master,
                    to: State::Init
                }
            ]
        );
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn fault_gives_up_and_recovers_as_backup() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 150, 100));
        m.step(Event::Startup, t0);
        m.step(Event::Timer, t0 + m.master_down_interval());
        let a = m.step(Event::Fault(true), t0 + Duration::from_secs(5));
        assert!(a.contains(&Action::SendAdvert(0)));
        assert!(a.contains(&Action::RemoveAddresses));
        assert_eq!(m.state(), State::Fault);
        assert_eq!(m.deadline(), None);
        assert!(m.step(advert("10.0.0.11", 100, 100), t0).is_empty());
        let a = m.step(Event::Fault(false), t0 + Duration::from_secs(6));
        assert_eq!(transitions(&a), vec![(State::Fault, State::Backup)]);
        assert_eq!(m.transitions(), 4);
    }

    #[test]
    fn tracked_priority_changes_are_clamped_and_owners_keep_255() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 100, 100));
        m.step(Event::Priority(0), t0);
        assert_eq!(m.priority(), 1);
        m.step(Event::Priority(300u16 as u8), t0);
        let mut o = Machine::new(params(3, 255, 100));
        o.step(Event::Priority(50), t0);
        assert_eq!(o.priority(), 255);
    }

    #[test]
    fn sync_group_members_follow() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(3, 100, 100));
        m.step(Event::Startup, t0);
        let a = m.step(Event::Follow(State::Master), t0);
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
        assert!(a.contains(&Action::AddAddresses));
        let a = m.step(Event::Follow(State::Fault), t0);
        assert!(a.contains(&Action::RemoveAddresses));
        assert_eq!(m.state(), State::Fault);
        assert!(m.step(Event::Follow(State::Fault), t0).is_empty());
        let a = m.step(Event::Follow(State::Backup), t0);
        assert_eq!(transitions(&a), vec![(State::Fault, State::Backup)]);
        // Not started: nothing to follow.
        let mut idle = Machine::new(params(3, 100, 100));
        assert!(idle.step(Event::Follow(State::Master), t0).is_empty());
    }

    #[test]
    fn a_starved_backup_waits_one_more_interval() {
        let t0 = Instant::now();
        let mut b = Machine::new(params(3, 100, 1));
        b.step(Event::Startup, t0);
        let late = t0 + Duration::from_millis(200);
        assert!(b.step(Event::Starved, late).is_empty());
        assert_eq!(b.deadline(), Some(late + Duration::from_millis(10)));
        assert_eq!(b.state(), State::Backup);
    }

    #[test]
    fn start_as_master_state() {
        let mut p = params(2, 100, 100);
        p.start_as_master = true;
        let mut m = Machine::new(p);
        m.step(Event::Startup, Instant::now());
        assert_eq!(m.state(), State::Master);
    }
}
