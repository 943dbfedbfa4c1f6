//! One BFD session in asynchronous mode (RFC 5880 section 6.8), pure: no
//! I/O and no clock of its own; the caller feeds packets and the time.

use std::time::{Duration, Instant};

use super::packet::{Control, DIAG_ADMIN_DOWN, DIAG_EXPIRED, DIAG_NEIGHBOR_DOWN, DIAG_NONE, State};

/// What the configuration sets (intervals in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Desired Min TX Interval while Up.
    pub min_tx: u32,
    /// Required Min RX Interval.
    pub min_rx: u32,
    /// Desired Min TX Interval while not Up (RFC 5880 6.8.3: at least one
    /// second is what the RFC asks; keepalived's `idle_tx`).
    pub idle_tx: u32,
    pub multiplier: u8,
    /// Wait for the peer to speak first (RFC 5880 6.1).
    pub passive: bool,
}

/// A session's state and the peer's parameters.
#[derive(Debug, Clone)]
pub struct Session {
    params: Params,
    pub state: State,
    pub remote_state: State,
    pub local_disc: u32,
    pub remote_disc: u32,
    pub diag: u8,
    remote_min_rx: u32,
    remote_desired_tx: u32,
    remote_mult: u8,
    /// A Poll Sequence is under way (our timers changed): P is set until
    /// the peer answers with F.
    poll: bool,
    /// The peer polled: the next packet carries F, at once.
    pub send_final: bool,
    last_rx: Option<Instant>,
    pub transitions: u64,
    /// Our Desired Min TX raised while a restart hands the session to the
    /// next process (µs): the peer's detection time grows to its multiple.
    hold: Option<u32>,
    /// Carried on from the previous process and nothing heard since: the
    /// peer is given [`RESUME_GRACE`] (our own start is the gap).
    resumed: bool,
    /// Our Desired Min TX before an increase while Up (µs): the interval we
    /// actually send at until the Poll Sequence announcing the increase
    /// ends (RFC 5880 6.8.3).
    tx_before_increase: Option<u32>,
}

/// How long a session carried on from the previous process waits for the
/// peer's first packet before its detection time applies: the new
/// process's start (seen at 300 ms on a loaded 2-core machine) is not the
/// peer's silence.
pub const RESUME_GRACE: Duration = Duration::from_secs(1);

/// A session handed to the next process at a restart: enough to carry it
/// on Up, with the same discriminators, without the peer noticing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handed {
    pub name: String,
    pub neighbor_ip: std::net::IpAddr,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// The peer's last Required Min RX and Desired Min TX (µs), and its
    /// multiplier.
    pub remote_min_rx: u32,
    pub remote_desired_tx: u32,
    pub remote_multiplier: u8,
    /// Our Desired Min TX the peer was last told (µs): it times the
    /// session out after our multiplier times this.
    pub hold_us: u32,
    /// Our multiplier.
    pub multiplier: u8,
}

impl Handed {
    /// How long the peer waits for the next process's first packet.
    pub fn peer_detect_time(&self) -> Duration {
        Duration::from_micros(u64::from(self.multiplier.max(1)) * u64::from(self.hold_us))
    }
}

impl Session {
    pub fn new(params: Params, local_disc: u32) -> Session {
        Session {
            params,
            state: State::Down,
            remote_state: State::Down,
            local_disc,
            remote_disc: 0,
            diag: DIAG_NONE,
            // Until the peer says otherwise: one packet a second.
            remote_min_rx: 1,
            remote_desired_tx: 0,
            remote_mult: 0,
            poll: false,
            send_final: false,
            last_rx: None,
            transitions: 0,
            hold: None,
            resumed: false,
            tx_before_increase: None,
        }
    }

    /// A session carried on from the previous process: Up, with its
    /// discriminators and the peer's last parameters, as if its last
    /// packet came now. Our first packet polls the peer back from the held
    /// interval to our own.
    pub fn resume(params: Params, h: &Handed, now: Instant) -> Session {
        Session {
            state: State::Up,
            remote_state: State::Up,
            remote_disc: h.remote_discriminator,
            remote_min_rx: h.remote_min_rx,
            remote_desired_tx: h.remote_desired_tx,
            remote_mult: h.remote_multiplier,
            poll: true,
            last_rx: Some(now),
            resumed: true,
            ..Session::new(params, h.local_discriminator)
        }
    }

    /// Raises our Desired Min TX to `interval` (µs) for a restart, with a
    /// Poll Sequence (RFC 5880 6.8.3): the peer's detection time becomes
    /// our multiplier times it while the next process starts.
    pub fn hold(&mut self, interval: u32) {
        let before = self.desired_tx();
        self.hold = Some(interval);
        self.poll = true;
        if self.state == State::Up && self.desired_tx() > before {
            // RFC 5880 6.8.3: "If bfd.DesiredMinTxInterval is increased
            // and bfd.SessionState is Up, the actual transmission interval
            // used MUST NOT change until the Poll Sequence described above
            // has terminated" (the peer must first grow its Detection Time).
            self.tx_before_increase = Some(before);
        }
    }

    /// A Poll Sequence waits for the peer's Final.
    pub fn polling(&self) -> bool {
        self.poll
    }

    /// What the next process needs to carry the session on.
    pub fn handed(&self, name: &str, neighbor_ip: std::net::IpAddr) -> Handed {
        Handed {
            name: name.to_string(),
            neighbor_ip,
            local_discriminator: self.local_disc,
            remote_discriminator: self.remote_disc,
            remote_min_rx: self.remote_min_rx,
            remote_desired_tx: self.remote_desired_tx,
            remote_multiplier: self.remote_mult,
            hold_us: self.desired_tx(),
            multiplier: self.params.multiplier,
        }
    }

    /// Our Desired Min TX Interval now: `min_tx` while Up, else `idle_tx`.
    fn desired_tx(&self) -> u32 {
        let own = if self.state == State::Up {
            self.params.min_tx
        } else {
            self.params.idle_tx.max(self.params.min_tx)
        };
        self.hold.map_or(own, |h| h.max(own))
    }

    fn set_state(&mut self, state: State, diag: u8) {
        if state == self.state {
            return;
        }
        let old_tx = self.desired_tx();
        self.state = state;
        self.diag = diag;
        self.transitions += 1;
        if state == State::Down {
            self.remote_disc = 0;
        }
        if state != State::Up {
            // 6.8.3's rule on increases is for a session that is Up.
            self.tx_before_increase = None;
        }
        if self.desired_tx() != old_tx {
            // RFC 5880 6.8.3: a changed interval starts a Poll Sequence.
            self.poll = true;
        }
    }

    /// A packet for this session (RFC 5880 6.8.6, after the checks of
    /// [`Control::parse`] and the lookup). Returns whether the state
    /// changed.
    pub fn receive(&mut self, c: &Control, now: Instant) -> bool {
        let before = self.state;
        self.remote_disc = c.my_disc;
        self.remote_state = c.state;
        self.remote_desired_tx = c.desired_min_tx;
        self.remote_min_rx = c.required_min_rx;
        self.remote_mult = c.detect_mult;
        self.last_rx = Some(now);
        self.resumed = false;
        if c.final_ {
            // The Poll Sequence ends: an increased interval now applies.
            self.poll = false;
            self.tx_before_increase = None;
        }
        if c.poll {
            self.send_final = true;
        }
        if self.state == State::AdminDown {
            return false;
        }
        if c.state == State::AdminDown {
            self.set_state(State::Down, DIAG_NEIGHBOR_DOWN);
        } else {
            match (self.state, c.state) {
                (State::Down, State::Down) => self.set_state(State::Init, DIAG_NONE),
                (State::Down, State::Init) => self.set_state(State::Up, DIAG_NONE),
                (State::Init, State::Init | State::Up) => self.set_state(State::Up, DIAG_NONE),
                (State::Up, State::Down) => self.set_state(State::Down, DIAG_NEIGHBOR_DOWN),
                _ => {}
            }
        }
        self.state != before
    }

    /// The Detection Time: the peer's multiplier times the larger of our
    /// Required Min RX and its Desired Min TX (RFC 5880 6.8.4).
    pub fn detect_time(&self) -> Duration {
        let interval = self.params.min_rx.max(self.remote_desired_tx);
        Duration::from_micros(u64::from(self.remote_mult.max(1)) * u64::from(interval))
    }

    /// When the session expires without a packet (Init and Up only).
    pub fn expires_at(&self) -> Option<Instant> {
        match (self.state, self.last_rx) {
            (State::Init | State::Up, Some(t)) if self.resumed => {
                Some(t + self.detect_time().max(RESUME_GRACE))
            }
            (State::Init | State::Up, Some(t)) => Some(t + self.detect_time()),
            _ => None,
        }
    }

    /// The Detection Time passed without a packet: Down (diag 1). Returns
    /// whether the state changed.
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.expires_at().is_some_and(|t| now >= t) {
            self.set_state(State::Down, DIAG_EXPIRED);
            return true;
        }
        false
    }

    /// The interval between our packets before jitter (RFC 5880 6.8.7):
    /// the larger of our Desired Min TX and the peer's Required Min RX;
    /// `None` when we must not send (passive and never heard, or the peer
    /// asks for no packets).
    ///
    /// While a Poll Sequence runs (RFC 5880 6.8.3), on our side: an
    /// increase of our Desired Min TX while Up is not used until the
    /// peer's Final (the value before it is); a decrease is used at once.
    /// On the peer's side: a lower Required Min RX it announces (in a Poll,
    /// as FRR's bfdd does when the session comes Up) is honoured at once,
    /// "the local system cannot wait longer than the new interval between
    /// the previous packet transmission and the next one" (the caller
    /// re-schedules after each packet it receives).
    pub fn tx_interval(&self) -> Option<Duration> {
        if self.params.passive && self.remote_disc == 0 {
            return None;
        }
        if self.remote_min_rx == 0 && self.last_rx.is_some() {
            return None;
        }
        let own = match self.tx_before_increase {
            Some(before) => before.min(self.desired_tx()),
            None => self.desired_tx(),
        };
        Some(Duration::from_micros(u64::from(
            own.max(self.remote_min_rx),
        )))
    }

    /// The jitter range of RFC 5880 6.8.7: 75-100% of the interval (75-90%
    /// with a multiplier of 1), as a factor from `random` in [0, 1).
    pub fn jittered(&self, interval: Duration, random: f64) -> Duration {
        let top = if self.params.multiplier == 1 {
            0.90
        } else {
            1.0
        };
        interval.mul_f64(0.75 + (top - 0.75) * random.clamp(0.0, 1.0))
    }

    /// Our next packet (clears a pending Final).
    pub fn packet(&mut self) -> Control {
        let final_ = std::mem::take(&mut self.send_final);
        Control {
            diag: self.diag,
            state: self.state,
            // P and F are never set together (RFC 5880 6.5).
            poll: self.poll && !final_,
            final_,
            demand: false,
            detect_mult: self.params.multiplier,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: self.desired_tx(),
            required_min_rx: self.params.min_rx,
            required_min_echo_rx: 0,
        }
    }

    /// Administratively down (the daemon stops): the peer learns it from
    /// our next packets (diag 7) instead of waiting for its timeout.
    pub fn admin_down(&mut self) {
        self.set_state(State::AdminDown, DIAG_ADMIN_DOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u32 = 1000;

    fn params() -> Params {
        Params {
            min_tx: 10 * MS,
            min_rx: 10 * MS,
            idle_tx: 1000 * MS,
            multiplier: 3,
            passive: false,
        }
    }

    /// Delivers `from`'s next packet to `to`.
    fn deliver(from: &mut Session, to: &mut Session, now: Instant) -> bool {
        let p = from.packet();
        let c = Control::parse(&p.encode()).expect("a packet of ours parses");
        to.receive(&c, now)
    }

    #[test]
    fn three_way_handshake_then_fast_timers_then_expiry() {
        let t = Instant::now();
        let mut a = Session::new(params(), 1);
        let mut b = Session::new(params(), 2);
        assert_eq!(
            a.tx_interval(),
            Some(Duration::from_secs(1)),
            "idle while down"
        );
        // a: Down -> b sees Down: Init.
        assert!(deliver(&mut a, &mut b, t));
        assert_eq!(b.state, State::Init);
        // b (Init) -> a (Down): Up.
        assert!(deliver(&mut b, &mut a, t));
        assert_eq!(a.state, State::Up);
        // a (Up) -> b (Init): Up.
        assert!(deliver(&mut a, &mut b, t));
        assert_eq!(b.state, State::Up);
        // Up: a Poll Sequence for the faster interval; answered with F.
        let p = a.packet();
        assert!(p.poll && p.desired_min_tx == 10 * MS);
        b.receive(&p, t);
        assert!(b.send_final);
        let f = b.packet();
        assert!(f.final_ && !f.poll);
        a.receive(&f, t);
        assert!(!a.packet().poll, "poll ends with the final");
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(10)));
        // Detection: 3 x 10 ms after the last packet.
        assert_eq!(a.detect_time(), Duration::from_millis(30));
        assert!(!a.expire(t + Duration::from_millis(29)));
        assert!(a.expire(t + Duration::from_millis(30)));
        assert_eq!(
            (a.state, a.diag, a.remote_disc),
            (State::Down, DIAG_EXPIRED, 0)
        );
        assert_eq!(a.tx_interval(), Some(Duration::from_secs(1)), "idle again");
    }

    #[test]
    fn the_peer_going_down_or_admin_down_brings_us_down() {
        let t = Instant::now();
        let mut a = Session::new(params(), 1);
        let mut b = Session::new(params(), 2);
        deliver(&mut a, &mut b, t);
        deliver(&mut b, &mut a, t);
        deliver(&mut a, &mut b, t);
        assert_eq!((a.state, b.state), (State::Up, State::Up));
        b.admin_down();
        assert!(deliver(&mut b, &mut a, t));
        assert_eq!((a.state, a.diag), (State::Down, DIAG_NEIGHBOR_DOWN));
        // A peer that restarted (Down) while we are Up: Down, then up again.
        let mut a = Session::new(params(), 1);
        let mut b = Session::new(params(), 2);
        deliver(&mut a, &mut b, t);
        deliver(&mut b, &mut a, t);
        deliver(&mut a, &mut b, t);
        let mut b2 = Session::new(params(), 3);
        assert!(deliver(&mut b2, &mut a, t));
        assert_eq!(a.state, State::Down);
    }

    #[test]
    fn passive_waits_and_jitter_stays_in_range() {
        let t = Instant::now();
        let mut p = Session::new(
            Params {
                passive: true,
                ..params()
            },
            1,
        );
        assert_eq!(p.tx_interval(), None);
        let mut a = Session::new(params(), 2);
        deliver(&mut a, &mut p, t);
        assert!(p.tx_interval().is_some());
        let i = Duration::from_millis(100);
        assert_eq!(a.jittered(i, 0.0), Duration::from_millis(75));
        assert_eq!(a.jittered(i, 0.999_999).as_millis(), 99);
        let one = Session::new(
            Params {
                multiplier: 1,
                ..params()
            },
            3,
        );
        assert!(one.jittered(i, 1.0) <= Duration::from_millis(90));
    }

    /// RFC 5880 6.8.3: an increase of our interval while Up waits for the
    /// peer's Final; the peer's lower Required Min RX applies at once.
    #[test]
    fn an_increase_waits_for_the_final_a_decrease_does_not() {
        let t = Instant::now();
        let (mut a, mut b) = (Session::new(params(), 1), Session::new(params(), 2));
        for _ in 0..3 {
            deliver(&mut a, &mut b, t);
            deliver(&mut b, &mut a, t);
        }
        assert_eq!((a.state, b.state), (State::Up, State::Up));
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(10)));
        // (Any Final still owed goes first.)
        deliver(&mut a, &mut b, t);
        assert!(!a.send_final && !a.polling());
        a.hold(2_000_000);
        // Announced (P, 2 s) but not used until the Final.
        let p = a.packet();
        assert!(p.poll && p.desired_min_tx == 2_000_000);
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(10)));
        b.receive(&p, t);
        let f = b.packet();
        assert!(f.final_);
        a.receive(&f, t);
        assert_eq!(a.tx_interval(), Some(Duration::from_secs(2)));
        // The peer lowering its Required Min RX: used at once.
        let mut slow = b.packet();
        slow.required_min_rx = 1_000_000;
        let mut c = Session::new(params(), 3);
        c.receive(
            &Control {
                state: State::Init,
                ..slow
            },
            t,
        );
        assert_eq!(c.state, State::Up);
        assert_eq!(c.tx_interval(), Some(Duration::from_secs(1)));
        let fast = Control {
            state: State::Up,
            poll: true,
            required_min_rx: 10_000,
            ..slow
        };
        c.receive(&fast, t);
        assert_eq!(c.tx_interval(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn a_held_session_is_resumed_by_the_next_process_without_the_peer_going_down() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Session::new(params(), 1), Session::new(params(), 2));
        let mut now = t0;
        for _ in 0..4 {
            deliver(&mut a, &mut b, now);
            deliver(&mut b, &mut a, now);
            now += Duration::from_millis(10);
        }
        assert_eq!((a.state, b.state), (State::Up, State::Up));
        let fast = b.detect_time();
        // The restarting side holds: the peer's detection time grows at
        // the first packet, and the Final ends the Poll Sequence.
        a.hold(2_000_000);
        assert!(a.polling());
        deliver(&mut a, &mut b, now);
        assert_eq!(b.detect_time(), Duration::from_secs(6));
        deliver(&mut b, &mut a, now);
        assert!(!a.polling());
        let handed = a.handed("peer", "10.0.0.1".parse().expect("address"));
        assert_eq!(handed.peer_detect_time(), Duration::from_secs(6));
        // A second later (the restart), far past the fast detection time
        // but inside the held one: the peer is still Up.
        now += Duration::from_secs(1);
        assert!(!b.expire(now) && b.state == State::Up);
        let mut c = Session::resume(params(), &handed, now);
        assert_eq!((c.state, c.local_disc, c.remote_disc), (State::Up, 1, 2));
        // Our own start is no silence of the peer's: a grace first.
        assert!(!c.expire(now + Duration::from_millis(500)));
        assert_eq!(c.expires_at(), Some(now + RESUME_GRACE));
        let first = c.packet();
        assert!(first.poll && first.desired_min_tx == params().min_tx);
        let transitions = b.transitions;
        assert!(!b.receive(&first, now));
        assert_eq!(b.detect_time(), fast);
        assert_eq!(b.transitions, transitions);
        deliver(&mut b, &mut c, now);
        assert!(!c.polling() && c.state == State::Up);
    }
}
