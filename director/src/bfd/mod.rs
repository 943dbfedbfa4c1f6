//! BFD (RFC 5880 asynchronous mode, RFC 5881 single hop, IPv4 and IPv6):
//! `[[bfd_instance]]` sessions, run on a thread of their own with
//! real-time priority (10 ms timers), published to VRRP (`track_bfd`,
//! `master_bfd`) through watch channels and to the status.
//!
//! Received packets: UDP port 3784, TTL/hop limit at least the session's
//! `ttl` (255 for single hop), version 1, no authentication (none is
//! configured), no multipoint, non-zero discriminators; matched by our
//! discriminator, or by the source address while the peer does not know
//! it yet. Every drop is counted by reason. Sent from a port in
//! 49152-65535 with the session's TTL.

pub mod packet;
pub mod session;

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{config::BfdInstance, net::socket::setsockopt_int};
use packet::{Control, Drop, State};
pub use session::Handed;
use session::{Params, Session};

/// The peer's detection time while a restart hands our sessions over: our
/// Desired Min TX is raised so that our multiplier times it is this long.
const HOLD_DETECT: Duration = Duration::from_secs(6);

/// How long a stopping process waits for its peers to confirm the held
/// interval (their Final) before it goes.
const HOLD_CONFIRM: Duration = Duration::from_millis(50);

/// What the BFD thread is told when the daemon stops.
enum Stop {
    /// Administratively down: the peers learn it at once.
    Tell,
    /// A restart: sessions that are Up are held and handed over.
    HandOver(tokio::sync::oneshot::Sender<Vec<Handed>>),
}

/// The BFD control port (RFC 5881 section 4).
pub const PORT: u16 = 3784;

/// Errors starting BFD.
#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BfdError {
    let what = what.into();
    move |source| BfdError::Io { what, source }
}

/// One session in the status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BfdStatus {
    pub name: String,
    pub neighbor_ip: String,
    /// `up`, `down`, `init` or `admin_down`.
    pub state: String,
    pub remote_state: String,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// The last diagnostic we set (RFC 5880: 0 none, 1 detection time
    /// expired, 3 neighbour signalled down, 7 administratively down).
    pub diagnostic: u8,
    /// Detection time now, milliseconds.
    pub detect_time_ms: f64,
    pub transitions: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Received packets dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// The running sessions.
pub struct Bfd {
    /// Per session: `Some(true)` while Up, `Some(false)` once it was Up
    /// and went down, or came up never (`None` until the first verdict).
    states: BTreeMap<String, watch::Receiver<Option<bool>>>,
    status: Arc<Mutex<Vec<BfdStatus>>>,
    stop: Option<mpsc::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bfd {
    /// Starts `sessions` (none: nothing runs). A session the previous
    /// process handed over `age` ago (same name and neighbour, its peer
    /// still waiting) is carried on Up with its discriminators.
    pub fn start(
        sessions: &[BfdInstance],
        handed: &[Handed],
        age: Duration,
    ) -> Result<Bfd, BfdError> {
        let status = Arc::new(Mutex::new(Vec::new()));
        if sessions.is_empty() {
            return Ok(Bfd {
                states: BTreeMap::new(),
                status,
                stop: None,
                thread: None,
            });
        }
        let mut rng = rand::rng();
        let mut runs = Vec::new();
        let mut states = BTreeMap::new();
        for cfg in sessions {
            let (tx, rx) = watch::channel(None);
            states.insert(cfg.name.clone(), rx);
            let mut local_disc: u32 = rng.random_range(1..u32::MAX);
            while runs
                .iter()
                .any(|r: &Run| r.session.local_disc == local_disc)
            {
                local_disc = rng.random_range(1..u32::MAX);
            }
            let socket = sender(cfg)?;
            let resumed = handed
                .iter()
                .find(|h| h.name == cfg.name && h.neighbor_ip == cfg.neighbor_ip)
                .filter(|h| {
                    // Margin for our own start before the first packet.
                    let fresh = age + Duration::from_millis(100) < h.peer_detect_time();
                    if !fresh {
                        warn!(session = %cfg.name, age_ms = age.as_millis() as u64, "BFD session handed over too long ago: starting afresh");
                    }
                    fresh
                });
            let session = match resumed {
                Some(h) => {
                    info!(
                        session = %cfg.name,
                        neighbor = %cfg.neighbor_ip,
                        local_discriminator = h.local_discriminator,
                        "BFD session taken over from the previous process"
                    );
                    let _ = tx.send(Some(true));
                    Session::resume(params(cfg), h, Instant::now())
                }
                None => Session::new(params(cfg), local_disc),
            };
            runs.push(Run {
                session,
                cfg: cfg.clone(),
                socket,
                verdict: tx,
                next_tx: Instant::now(),
                last_tx: None,
                notifier: None,
                sent: 0,
                received: 0,
                dropped: BTreeMap::new(),
            });
        }
        let v4 = sessions.iter().any(|s| s.neighbor_ip.is_ipv4());
        let v6 = sessions.iter().any(|s| s.neighbor_ip.is_ipv6());
        let rx4 = if v4 { Some(receiver(false)?) } else { None };
        let rx6 = if v6 { Some(receiver(true)?) } else { None };
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("bfd".into())
            .spawn(move || {
                crate::net::socket::raise_priority();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(runs, rx4, rx6, shared, stop_rx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the BFD runtime"),
                }
            })
            .map_err(io_err("the BFD thread"))?;
        Ok(Bfd {
            states,
            status,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Each session's verdict, by name.
    pub fn verdicts(&self) -> BTreeMap<String, watch::Receiver<Option<bool>>> {
        self.states.clone()
    }

    /// The sessions, for the status document.
    pub fn statuses(&self) -> Vec<BfdStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops: every session tells its peer it goes administratively down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(Stop::Tell).await;
        }
        self.join().await;
    }

    /// Stops for a restart: each session that is Up raises its Desired Min
    /// TX with a Poll Sequence, so that its peer waits [`HOLD_DETECT`]
    /// before declaring it down, and is returned for the next process,
    /// which carries it on (the peer sees no state change).
    pub async fn hand_over(mut self) -> Vec<Handed> {
        let Some(tx) = self.stop.take() else {
            return Vec::new();
        };
        let (reply, handed) = tokio::sync::oneshot::channel();
        let _ = tx.send(Stop::HandOver(reply)).await;
        self.join().await;
        handed.await.unwrap_or_default()
    }

    async fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn params(cfg: &BfdInstance) -> Params {
    Params {
        min_tx: cfg.min_tx.saturating_mul(1000),
        min_rx: cfg.min_rx.saturating_mul(1000),
        idle_tx: cfg.idle_tx.saturating_mul(1000),
        multiplier: cfg.multiplier,
        passive: cfg.passive,
    }
}

/// One session with its socket and counters.
struct Run {
    session: Session,
    cfg: BfdInstance,
    socket: std::net::UdpSocket,
    verdict: watch::Sender<Option<bool>>,
    next_tx: Instant,
    /// When our last packet left (periodic or Final).
    last_tx: Option<Instant>,
    /// Runs `notify` (one waiting notification per session: a flapping
    /// or spoofed session cannot start processes without bound).
    notifier: Option<crate::scripts::notify::Notifier>,
    sent: u64,
    received: u64,
    dropped: BTreeMap<Drop, u64>,
}

impl Run {
    fn send(&mut self) {
        let p = self.session.packet().encode();
        match self
            .socket
            .send_to(&p, SocketAddr::new(self.cfg.neighbor_ip, PORT))
        {
            Ok(_) => {
                self.sent += 1;
                self.last_tx = Some(Instant::now());
            }
            Err(e) => {
                tracing::debug!(session = %self.cfg.name, error = %e, "BFD send failed")
            }
        }
    }

    /// Schedules the next packet (jittered).
    fn schedule(&mut self, now: Instant) {
        self.next_tx = match self.session.tx_interval() {
            Some(i) => now + self.session.jittered(i, rand::rng().random::<f64>()),
            None => now + Duration::from_secs(3600),
        };
    }

    /// After a packet from the peer: a transmit interval that became
    /// shorter (the peer lowered its Required Min RX, or our own Desired
    /// Min TX fell) applies at once. RFC 5880 6.8.3: the local system
    /// "cannot wait longer than the new interval between the previous
    /// packet transmission and the next one", and sends "as soon as
    /// practicable" if that is already past. (An interval that grew takes
    /// effect at the next scheduling: 6.8.3 lets the actual interval grow
    /// only after the Poll Sequence that announced it, which our packets
    /// sent meanwhile carry.)
    fn honor_shorter_interval(&mut self, now: Instant) {
        if let (Some(interval), Some(last)) = (self.session.tx_interval(), self.last_tx) {
            let latest = last + self.session.jittered(interval, rand::rng().random::<f64>());
            self.next_tx = sooner(self.next_tx, latest, now);
        }
    }

    /// Logs and publishes a state change.
    fn changed(&mut self) {
        let s = &self.session;
        info!(
            session = %self.cfg.name,
            neighbor = %self.cfg.neighbor_ip,
            state = s.state.as_str(),
            remote_state = s.remote_state.as_str(),
            diagnostic = s.diag,
            detect_time_ms = s.detect_time().as_secs_f64() * 1000.0,
            "BFD session state change"
        );
        let up = s.state == State::Up;
        let previous = *self.verdict.borrow();
        // Down before it was ever up is no verdict yet (the peer may start
        // later): only Up, and leaving Up, are.
        let next = match (previous, up) {
            (_, true) => Some(true),
            (Some(_), false) => Some(false),
            (None, false) => None,
        };
        if next != previous {
            self.verdict.send_replace(next);
            self.notify(next == Some(true));
        }
    }

    /// Queues the session's `notify` command (`BFD NAME UP|DOWN`) off the
    /// timers, as VRRP's are: one at a time, cut at 30 s, and at most one
    /// waiting per session (a newer state replaces it).
    fn notify(&self, up: bool) {
        let Some(mut argv) = self.cfg.notify.as_deref().and_then(shlex::split) else {
            return;
        };
        argv.extend([
            "BFD".to_string(),
            self.cfg.name.clone(),
            if up { "UP" } else { "DOWN" }.to_string(),
        ]);
        if let Some(n) = &self.notifier {
            n.send(&format!("bfd {}", self.cfg.name), vec![argv]);
        }
    }

    fn status(&self) -> BfdStatus {
        let s = &self.session;
        BfdStatus {
            name: self.cfg.name.clone(),
            neighbor_ip: self.cfg.neighbor_ip.to_string(),
            state: s.state.as_str().to_string(),
            remote_state: s.remote_state.as_str().to_string(),
            local_discriminator: s.local_disc,
            remote_discriminator: s.remote_disc,
            diagnostic: s.diag,
            detect_time_ms: s.detect_time().as_secs_f64() * 1000.0,
            transitions: s.transitions,
            packets_sent: self.sent,
            packets_received: self.received,
            dropped: self
                .dropped
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect(),
        }
    }
}

/// The sending socket of a session: from `source_ip` (or any), a port in
/// 49152-65535 (RFC 5881 section 4), the session's TTL.
fn sender(cfg: &BfdInstance) -> Result<std::net::UdpSocket, BfdError> {
    let v6 = cfg.neighbor_ip.is_ipv6();
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let src = cfg.source_ip.unwrap_or(any);
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let mut rng = rand::rng();
    let mut last = None;
    for _ in 0..64 {
        let s =
            Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(io_err("BFD socket"))?;
        if v6 {
            s.set_unicast_hops_v6(u32::from(cfg.ttl))
                .map_err(io_err("hop limit"))?;
        } else {
            s.set_ttl_v4(u32::from(cfg.ttl)).map_err(io_err("TTL"))?;
        }
        let port: u16 = rng.random_range(49152..=65535);
        match s.bind(&SockAddr::from(SocketAddr::new(src, port))) {
            Ok(()) => {
                s.set_nonblocking(true).map_err(io_err("non-blocking"))?;
                return Ok(s.into());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(io_err(format!("binding a BFD source port on {src}"))(
        last.unwrap_or_else(|| io::Error::other("no port")),
    ))
}

/// The receiving socket of a family: port 3784, TTL / hop limit reported.
fn receiver(v6: bool) -> Result<AsyncFd<Socket>, BfdError> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(io_err("BFD socket"))?;
    s.set_reuse_address(true).map_err(io_err("SO_REUSEADDR"))?;
    let any: IpAddr = if v6 {
        s.set_only_v6(true).map_err(io_err("IPV6_V6ONLY"))?;
        setsockopt_int(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVHOPLIMIT,
            1,
        )
        .map_err(io_err("IPV6_RECVHOPLIMIT"))?;
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL, 1)
            .map_err(io_err("IP_RECVTTL"))?;
        Ipv4Addr::UNSPECIFIED.into()
    };
    s.bind(&SockAddr::from(SocketAddr::new(any, PORT)))
        .map_err(io_err(format!("binding UDP port {PORT}")))?;
    s.set_nonblocking(true).map_err(io_err("non-blocking"))?;
    // SAFETY: the socket is owned by the AsyncFd and closed only with it.
    unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
        .map_err(|e| io_err("registering the socket")(e.into()))
}

/// One datagram: (payload, source, TTL or hop limit).
fn recv_ttl(fd: RawFd) -> io::Result<(Vec<u8>, IpAddr, u8)> {
    let m = crate::net::socket::recv(fd, 512)?;
    let src = m
        .src
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no source"))?;
    Ok((m.payload, src, m.ttl))
}

/// Reads one datagram when `fd` is readable (never when it is `None`).
async fn readable(fd: &Option<AsyncFd<Socket>>) -> io::Result<(Vec<u8>, IpAddr, u8)> {
    let Some(fd) = fd else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| recv_ttl(inner.get_ref().as_raw_fd())) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// An IPv4-mapped source (the IPv6 socket's) is the IPv4 session's.
fn unmapped(src: IpAddr) -> IpAddr {
    match src {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(src, IpAddr::V4),
        v4 => v4,
    }
}

/// A received datagram: checked, matched to a session, applied. Returns
/// whether a session's state changed.
fn deliver(runs: &mut [Run], bytes: &[u8], src: IpAddr, ttl: u8, now: Instant) -> bool {
    let c = match Control::parse(bytes) {
        Ok(c) => c,
        Err(reason) => {
            // Counted on the session of that source, if any.
            if let Some(r) = runs.iter_mut().find(|r| r.cfg.neighbor_ip == src) {
                *r.dropped.entry(reason).or_default() += 1;
            }
            return false;
        }
    };
    let found = if c.your_disc != 0 {
        runs.iter_mut()
            .position(|r| r.session.local_disc == c.your_disc)
    } else {
        runs.iter_mut().position(|r| r.cfg.neighbor_ip == src)
    };
    let Some(i) = found else {
        if let Some(r) = runs.iter_mut().find(|r| r.cfg.neighbor_ip == src) {
            *r.dropped.entry(Drop::NoSession).or_default() += 1;
        }
        return false;
    };
    let r = &mut runs[i];
    if r.cfg.neighbor_ip != src {
        *r.dropped.entry(Drop::NoSession).or_default() += 1;
        return false;
    }
    if ttl < r.cfg.ttl {
        *r.dropped.entry(Drop::Ttl).or_default() += 1;
        return false;
    }
    if c.your_disc == 0 && !matches!(r.session.state, State::Down | State::AdminDown) {
        *r.dropped.entry(Drop::YourDiscriminator).or_default() += 1;
        return false;
    }
    r.received += 1;
    let was_silent = r.session.tx_interval().is_none();
    if r.session.receive(&c, now) {
        r.changed();
        // A state change is told at once (no waiting for the timer).
        r.send();
        r.schedule(now);
        return true;
    }
    if r.session.send_final {
        // A Poll is answered at once (RFC 5880 6.5, 6.8.7: "without respect
        // to the transmission timer").
        r.send();
    }
    if was_silent {
        r.schedule(now);
    } else {
        r.honor_shorter_interval(now);
    }
    false
}

/// The next periodic transmission when a shorter interval says it is due
/// by `latest`: the earlier of the two, and never in the past (RFC 5880
/// 6.8.3: "as soon as practicable").
fn sooner(scheduled: Instant, latest: Instant, now: Instant) -> Instant {
    scheduled.min(latest).max(now)
}

async fn run(
    mut runs: Vec<Run>,
    rx4: Option<AsyncFd<Socket>>,
    rx6: Option<AsyncFd<Socket>>,
    status: Arc<Mutex<Vec<BfdStatus>>>,
    mut stop: mpsc::Receiver<Stop>,
) {
    let notifier = crate::scripts::notify::Notifier::start();
    for r in &mut runs {
        r.notifier = Some(notifier.clone());
        info!(
            session = %r.cfg.name,
            neighbor = %r.cfg.neighbor_ip,
            min_tx_ms = r.cfg.min_tx,
            min_rx_ms = r.cfg.min_rx,
            multiplier = r.cfg.multiplier,
            passive = r.cfg.passive,
            "BFD session starting"
        );
        r.schedule(Instant::now());
        if !r.cfg.passive {
            r.next_tx = Instant::now();
        }
    }
    let publish = |runs: &[Run]| {
        if let Ok(mut s) = status.lock() {
            *s = runs.iter().map(Run::status).collect();
        }
    };
    publish(&runs);
    let mut published = Instant::now();
    loop {
        let now = Instant::now();
        let mut changed = false;
        // Timers: expiries, then packets due.
        for r in &mut runs {
            if r.session.expire(now) {
                warn!(
                    session = %r.cfg.name,
                    neighbor = %r.cfg.neighbor_ip,
                    detect_time_ms = r.session.detect_time().as_secs_f64() * 1000.0,
                    packets_received = r.received,
                    "BFD detection time expired: neighbour down"
                );
                r.changed();
                r.schedule(now);
                changed = true;
            }
            if now >= r.next_tx {
                r.send();
                r.schedule(now);
            }
        }
        // The status follows state changes at once, counters every 200 ms.
        if changed || now.duration_since(published) >= Duration::from_millis(200) {
            publish(&runs);
            published = now;
        }
        let next = runs
            .iter()
            .flat_map(|r| [Some(r.next_tx), r.session.expires_at()])
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_millis(200));
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            r = readable(&rx4) => if let Ok((b, src, ttl)) = r
                && deliver(&mut runs, &b, src, ttl, Instant::now())
            {
                publish(&runs);
                published = Instant::now();
            },
            r = readable(&rx6) => if let Ok((b, src, ttl)) = r
                && deliver(&mut runs, &b, unmapped(src), ttl, Instant::now())
            {
                publish(&runs);
                published = Instant::now();
            },
            order = stop.recv() => {
                if let Some(Stop::HandOver(reply)) = order {
                    let handed = hold(&mut runs, &rx4, &rx6).await;
                    publish(&runs);
                    let _ = reply.send(handed);
                    return;
                }
                for r in &mut runs {
                    r.session.admin_down();
                    r.changed();
                    for _ in 0..3 {
                        r.send();
                    }
                }
                publish(&runs);
                return;
            }
        }
    }
}

/// A restart: every session that is Up holds (its Desired Min TX raised so
/// that the peer waits [`HOLD_DETECT`]) and polls the peer, which answers
/// with a Final; packets are resent every 10 ms until every peer has
/// answered or [`HOLD_CONFIRM`] passed. Returns what the next process
/// needs.
async fn hold(
    runs: &mut [Run],
    rx4: &Option<AsyncFd<Socket>>,
    rx6: &Option<AsyncFd<Socket>>,
) -> Vec<Handed> {
    let deadline = Instant::now() + HOLD_CONFIRM;
    let up = |r: &Run| r.session.state == State::Up;
    for r in runs.iter_mut().filter(|r| up(r)) {
        let mult = u32::from(r.cfg.multiplier.max(1));
        let interval = u32::try_from(HOLD_DETECT.as_micros()).unwrap_or(u32::MAX) / mult;
        r.session.hold(interval);
        r.send();
    }
    let mut resend = Instant::now() + Duration::from_millis(10);
    while runs.iter().any(|r| up(r) && r.session.polling()) {
        let now = Instant::now();
        if now >= deadline {
            for r in runs.iter().filter(|r| up(r) && r.session.polling()) {
                warn!(session = %r.cfg.name, neighbor = %r.cfg.neighbor_ip, "BFD peer did not confirm the held interval (it may time the session out during the restart)");
            }
            break;
        }
        if now >= resend {
            for r in runs.iter_mut().filter(|r| up(r) && r.session.polling()) {
                r.send();
            }
            resend = now + Duration::from_millis(10);
        }
        let wake = tokio::time::Instant::from_std(resend.min(deadline));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = readable(rx4) => if let Ok((b, src, ttl)) = r {
                deliver(runs, &b, src, ttl, Instant::now());
            },
            r = readable(rx6) => if let Ok((b, src, ttl)) = r {
                deliver(runs, &b, unmapped(src), ttl, Instant::now());
            },
        }
    }
    let handed: Vec<Handed> = runs
        .iter()
        .filter(|r| up(r))
        .map(|r| r.session.handed(&r.cfg.name, r.cfg.neighbor_ip))
        .collect();
    for h in &handed {
        info!(session = %h.name, neighbor = %h.neighbor_ip, peer_detect_ms = h.peer_detect_time().as_millis() as u64, "BFD session held for the next process");
    }
    handed
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u32 = 1000;

    fn run() -> Run {
        let cfg = BfdInstance {
            name: "peer".into(),
            neighbor_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            source_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            min_rx: 10,
            min_tx: 10,
            idle_tx: 1000,
            multiplier: 3,
            passive: false,
            ttl: 255,
            weight: 0,
            notify: None,
        };
        Run {
            session: Session::new(params(&cfg), 7),
            socket: sender(&cfg).expect("a socket on loopback"),
            cfg,
            verdict: watch::channel(None).0,
            next_tx: Instant::now(),
            last_tx: None,
            notifier: None,
            sent: 0,
            received: 0,
            dropped: BTreeMap::new(),
        }
    }

    /// A spoofer cycling a session Up and Down as fast as it can: its
    /// notify script runs for the first change and the latest at most (it
    /// spawned a process per change, without bound).
    #[tokio::test]
    async fn a_flapping_session_notifies_its_first_and_latest_state_only() {
        let dir = std::env::temp_dir().join(format!("director-bfd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test setup");
        let log = dir.join("log");
        let mut r = run();
        r.cfg.notify = Some(format!(
            "/bin/sh -c 'echo $2 >> {}; sleep 0.3'",
            log.display()
        ));
        r.notifier = Some(crate::scripts::notify::Notifier::start());
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..50 {
            let t = Instant::now();
            deliver(
                std::slice::from_mut(&mut r),
                &from_peer(State::Init, false, 10 * MS, 10 * MS),
                lo,
                255,
                t,
            );
            deliver(
                std::slice::from_mut(&mut r),
                &from_peer(State::Down, false, 10 * MS, 10 * MS),
                lo,
                255,
                t,
            );
        }
        assert!(r.session.transitions >= 100, "{}", r.session.transitions);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        // (The burst came faster than the first run could start: the
        // latest state alone may be all that ran.)
        assert!(
            (1..=2).contains(&lines.len()) && lines.last().map(String::as_str) == Some("DOWN"),
            "100 changes notified as {lines:?}: the first and the latest at most"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn from_peer(state: State, poll: bool, desired_tx: u32, required_rx: u32) -> [u8; 24] {
        Control {
            diag: 0,
            state,
            poll,
            final_: false,
            demand: false,
            detect_mult: 3,
            my_disc: 99,
            your_disc: 7,
            desired_min_tx: desired_tx,
            required_min_rx: required_rx,
            required_min_echo_rx: 0,
        }
        .encode()
    }

    /// FRR's bfdd brings a session up this way: its packets while not Up
    /// ask for one packet a second (Required Min RX 1 s), then, Up, it
    /// polls with its fast Required Min RX. We answer the Poll at once and
    /// our next periodic packet follows within the new interval, not a
    /// second later (the flap FRR showed at every bring-up).
    #[test]
    fn a_peer_lowering_its_required_min_rx_is_honoured_at_once() {
        let mut r = run();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t = Instant::now();
        let init = from_peer(State::Init, false, 1000 * MS, 1000 * MS);
        assert!(deliver(std::slice::from_mut(&mut r), &init, lo, 255, t));
        assert_eq!(r.session.state, State::Up);
        // Up, but the peer still asks for a packet a second.
        assert!(
            r.next_tx >= t + Duration::from_millis(700),
            "{:?}",
            r.next_tx - t
        );
        let sent = r.sent;
        let poll = from_peer(State::Up, true, 10 * MS, 10 * MS);
        let now = Instant::now();
        assert!(!deliver(std::slice::from_mut(&mut r), &poll, lo, 255, now));
        assert_eq!(r.sent, sent + 1, "the Final went at once");
        let due = r.next_tx.saturating_duration_since(now);
        assert!(due <= Duration::from_millis(10), "next packet in {due:?}");
        assert_eq!(r.session.tx_interval(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn a_shorter_interval_never_schedules_into_the_past() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let past = now.checked_sub(Duration::from_millis(5)).unwrap_or(now);
        assert_eq!(sooner(later, past, now), now);
        assert_eq!(
            sooner(later, now + Duration::from_millis(8), now),
            now + Duration::from_millis(8)
        );
        assert_eq!(
            sooner(now + Duration::from_millis(3), later, now),
            now + Duration::from_millis(3)
        );
    }
}
