//! Flow-table sharing between directors (in the spirit of the IPVS sync
//! daemon, over a small authenticated unicast protocol). Directors compute
//! the same Maglev tables from the same config, so a flow placed by the
//! current table needs no sharing: the peer would place it the same way.
//! Only the exceptions are sent - flows pinned to a real server the table
//! would not pick now (placed before a change, e.g. on a server being
//! drained) - so they survive a failover too.
//!
//! A datagram: `DFS2`, the sender's and the receiver's addresses (16 bytes
//! each, IPv4 mapped), a sequence number and a Unix time in milliseconds
//! (8 bytes each, big endian), an entry count (2), the entries (77 bytes
//! each: the flow key (40), the service key (20), the real server's family
//! (1) and address (16)), then HMAC-SHA256 (32) of all that with the shared
//! key. A receiver drops datagrams with a bad MAC, malformed ones, ones more
//! than 30 s old or ahead, ones not from the address they name as sender or
//! not for one of its own addresses (a datagram from A to B cannot be
//! replayed to C), and replays (each sender's sequence numbers only grow:
//! they start at the sender's start time in microseconds; a window of 64
//! tolerates reordering).
//!
//! Only news is sent each round (everything every 20th), so a director
//! that (re)starts asks for the rest: until a peer answers, each round
//! sends it a hello (a datagram without entries); a peer that hears one
//! sends that director every exception it has in its next round, then
//! the round's end (a datagram whose one entry is the zero flow, protocol
//! 0: no flow, and a receiver of an older version finds no service for
//! it). The daemon holds back VRRP preemption until every peer's round
//! ended, or `flow_sync.preempt_hold` passed: a restarted director takes
//! the VIP only once it knows the flows placed while it was away.

mod wire;

pub use self::wire::{Envelope, PER_DATAGRAM, decode, encode};

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use director_common::{FlowKey, ServiceKey};
use hmac::Hmac;
use sha2::Sha256;
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::{debug, warn};

use crate::dataplane::xdp::PinnedFlow;

/// Datagrams older or newer than this are dropped (replays).
const WINDOW: Duration = Duration::from_secs(30);

type HmacSha256 = Hmac<Sha256>;

/// Errors of flow sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("flow sync socket {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drop {
    Malformed,
    BadMac,
    Stale,
    /// Not sent by the address it names, or not for us.
    Misdirected,
    /// A sequence number seen already (or too old for the window).
    Replay,
    /// From an address that is not a configured peer.
    NotPeer,
}

/// What the receiving task passes on, in the order it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A peer's flows, to import.
    Flows(Vec<PinnedFlow>),
    /// A peer sent everything it had (the answer to our hello): the
    /// flows of that round came before.
    Everything(IpAddr),
}

/// The one entry of a round's end: the zero flow.
fn round_end() -> PinnedFlow {
    PinnedFlow {
        flow: FlowKey::default(),
        service: ServiceKey::default(),
        backend: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// What an accepted datagram is: a hello (no entries), for the sender,
/// or what the daemon is passed (a round's end: the zero flow alone).
#[derive(Debug, PartialEq, Eq)]
enum Datagram {
    Hello,
    Pass(Received),
}

fn classify(flows: Vec<PinnedFlow>, from: IpAddr) -> Datagram {
    match flows.as_slice() {
        [] => Datagram::Hello,
        [f] if f.flow.protocol == 0 => Datagram::Pass(Received::Everything(from)),
        _ => Datagram::Pass(Received::Flows(flows)),
    }
}

/// Which peers asked for everything, and whose everything we wait for
/// (shared by the receiving task, the sender and the daemon).
#[derive(Debug, Default)]
pub struct Peering {
    /// Peers that said hello: they get every exception next round.
    wants_all: std::sync::Mutex<std::collections::HashSet<IpAddr>>,
    /// Peers we said hello to and that have not sent everything yet.
    awaited: std::sync::Mutex<std::collections::HashSet<IpAddr>>,
}

impl Peering {
    /// A peer's everything arrived: no more hellos to it. Returns whether
    /// no peer is awaited any more.
    pub fn answered(&self, peer: IpAddr) -> bool {
        match self.awaited.lock() {
            Ok(mut a) => {
                a.remove(&peer.to_canonical());
                a.is_empty()
            }
            Err(_) => true,
        }
    }

    /// The peers still awaited.
    pub fn awaited(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .awaited
            .lock()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Stops waiting (and saying hello) to anyone.
    pub fn give_up(&self) {
        if let Ok(mut a) = self.awaited.lock() {
            a.clear();
        }
    }
}

/// A sender's recent sequence numbers: the highest, and which of the 64
/// below it were seen.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    top: u64,
    seen: u64,
}

impl Window {
    /// Accepts `seq` once; refuses repeats and ones older than the window.
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The receiver's checks of a datagram's envelope: from where the socket
/// says, for one of our addresses, and not seen before.
struct Gate {
    windows: std::collections::HashMap<IpAddr, Window>,
    ours: Vec<IpAddr>,
    /// The configured peers' addresses.
    peers: Vec<IpAddr>,
}

impl Gate {
    /// A datagram from `from` (as the socket reports it: an IPv4 peer
    /// reaches a dual-stack `[::]` socket as `::ffff:a.b.c.d`, which is
    /// the same peer): checked and decoded.
    fn receive(
        &mut self,
        key: &[u8],
        bytes: &[u8],
        from: IpAddr,
        now_ms: u64,
    ) -> Result<Vec<PinnedFlow>, Drop> {
        let from = from.to_canonical();
        if !self.peers.contains(&from) {
            return Err(Drop::NotPeer);
        }
        let (envelope, flows) = decode(key, bytes, now_ms)?;
        self.check(&envelope, from)?;
        Ok(flows)
    }

    fn check(&mut self, envelope: &Envelope, from: IpAddr) -> Result<(), Drop> {
        if envelope.from != from || !self.ours.contains(&envelope.to) {
            return Err(Drop::Misdirected);
        }
        if !self.windows.entry(from).or_default().accept(envelope.seq) {
            return Err(Drop::Replay);
        }
        Ok(())
    }
}

/// This host's addresses (the receiver of a datagram must be one): the
/// listening address, or every interface's when listening on all.
fn local_addresses(listen: IpAddr) -> Vec<IpAddr> {
    if !listen.is_unspecified() {
        return vec![listen];
    }
    nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.filter_map(|i| i.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What flow sync did, for status and metrics.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Flows sent (per peer).
    pub sent: std::sync::atomic::AtomicU64,
    /// Flows received in accepted datagrams.
    pub received: std::sync::atomic::AtomicU64,
    /// Datagrams dropped, by reason.
    pub dropped: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Drop {
    /// Every reason, so that metrics export each (at 0 until it happens).
    pub const ALL: [Drop; 6] = [
        Drop::Malformed,
        Drop::BadMac,
        Drop::Stale,
        Drop::Misdirected,
        Drop::Replay,
        Drop::NotPeer,
    ];

    /// The reason's name in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::BadMac => "bad_mac",
            Drop::Stale => "stale",
            Drop::Misdirected => "misdirected",
            Drop::Replay => "replay",
            Drop::NotPeer => "not_peer",
        }
    }
}

/// The sync endpoint: the receiving task runs on its own; sending is done
/// by [`Sender`], off the daemon's loop.
pub struct FlowSync {
    /// Counters shared with the receiving task.
    pub stats: std::sync::Arc<SyncStats>,
    /// Sends flows to the peers (a blocking thread takes it with the scan
    /// of the flow table: building and authenticating a full table's
    /// datagrams is milliseconds of work the loop must not do).
    pub sender: std::sync::Arc<std::sync::Mutex<Sender>>,
    /// Hellos and answers (see the module's documentation).
    pub peering: std::sync::Arc<Peering>,
}

/// The sending half: the peers, the key, what was sent.
pub struct Sender {
    stats: std::sync::Arc<SyncStats>,
    /// The listening socket's descriptor, shared (datagrams leave from the
    /// listening port); non-blocking, so a full send buffer is waited for.
    socket: std::net::UdpSocket,
    peers: Vec<SocketAddr>,
    key: Vec<u8>,
    /// Our source address in datagrams (the listening address, or the one
    /// routing picks towards each peer).
    listen: IpAddr,
    seq: u64,
    /// What was last sent, to send only news (and everything now and then).
    sent: std::collections::HashSet<(FlowKey, IpAddr)>,
    rounds: u64,
    peering: std::sync::Arc<Peering>,
}

/// Drop reasons are logged at most this often (each), with their count.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

impl FlowSync {
    /// Binds `listen`; decoded flows from peers arrive on the returned
    /// channel (datagrams from other addresses are ignored).
    pub async fn start(
        listen: SocketAddr,
        peers: Vec<SocketAddr>,
        key: String,
    ) -> Result<(FlowSync, mpsc::Receiver<Received>), SyncError> {
        let socket = bind(listen).map_err(|source| SyncError::Socket {
            addr: listen,
            source,
        })?;
        let socket = std::sync::Arc::new(socket);
        let (tx, rx) = mpsc::channel(64);
        let rx_socket = socket.clone();
        let key_bytes = key.into_bytes();
        let rx_key = key_bytes.clone();
        let mut gate = Gate {
            windows: Default::default(),
            ours: local_addresses(listen.ip()),
            peers: peers.iter().map(|p| p.ip().to_canonical()).collect(),
        };
        let stats = std::sync::Arc::new(SyncStats::default());
        let rx_stats = stats.clone();
        let peering = std::sync::Arc::new(Peering::default());
        if let Ok(mut a) = peering.awaited.lock() {
            a.extend(peers.iter().map(|p| p.ip().to_canonical()));
        }
        let rx_peering = peering.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut logged: std::collections::BTreeMap<Drop, (std::time::Instant, u64)> =
                Default::default();
            loop {
                let Ok((n, from)) = rx_socket.recv_from(&mut buf).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let verdict = gate.receive(&rx_key, &buf[..n], from.ip(), now_ms());
                match verdict {
                    Ok(flows) => {
                        let peer = from.ip().to_canonical();
                        let received = match classify(flows, peer) {
                            Datagram::Pass(r) => r,
                            // Everything goes to it next round.
                            Datagram::Hello => {
                                debug!(%peer, "flow sync hello: the peer gets every exception next round");
                                if let Ok(mut w) = rx_peering.wants_all.lock() {
                                    w.insert(peer);
                                }
                                continue;
                            }
                        };
                        if let Received::Flows(f) = &received {
                            rx_stats
                                .received
                                .fetch_add(f.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        if tx.send(received).await.is_err() {
                            return;
                        }
                    }
                    Err(reason) => {
                        if let Ok(mut d) = rx_stats.dropped.lock() {
                            *d.entry(reason.as_str()).or_default() += 1;
                        }
                        // One line per reason per DROP_LOG_EVERY, with the
                        // count since the last.
                        let entry = logged
                            .entry(reason)
                            .or_insert((std::time::Instant::now() - DROP_LOG_EVERY, 0));
                        entry.1 += 1;
                        if entry.0.elapsed() >= DROP_LOG_EVERY {
                            warn!(%from, ?reason, dropped = entry.1, "flow sync datagrams dropped");
                            *entry = (std::time::Instant::now(), 0);
                        }
                    }
                }
            }
        });
        let socket = std::os::fd::AsFd::as_fd(&*socket)
            .try_clone_to_owned()
            .map(std::net::UdpSocket::from)
            .map_err(|source| SyncError::Socket {
                addr: listen,
                source,
            })?;
        let sender = Sender {
            stats: stats.clone(),
            socket,
            peers,
            key: key_bytes,
            listen: listen.ip(),
            // Grows across restarts: a restarted sender is not taken
            // for a replay.
            seq: now_ms().saturating_mul(1000),
            sent: Default::default(),
            rounds: 0,
            peering: peering.clone(),
        };
        Ok((
            FlowSync {
                stats,
                sender: std::sync::Arc::new(std::sync::Mutex::new(sender)),
                peering,
            },
            rx,
        ))
    }
}

/// The sync socket on `listen`. `[::]` takes IPv4 peers too, whatever
/// the host's `net.ipv6.bindv6only` (IPV6_V6ONLY off).
fn bind(listen: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if listen.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if listen.is_ipv6() && listen.ip().is_unspecified() {
        s.set_only_v6(false)?;
    }
    s.bind(&listen.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

impl Sender {
    /// Sends the exceptions that are new since the last round (all of them
    /// every 20th round), every one of them (then the round's end) to a
    /// peer that said hello, and a hello to each peer whose everything we
    /// still wait for.
    pub fn send(&mut self, flows: &[PinnedFlow]) {
        self.rounds += 1;
        let full = self.rounds % 20 == 1;
        let now: std::collections::HashSet<(FlowKey, IpAddr)> =
            flows.iter().map(|f| (f.flow, f.backend)).collect();
        let news: Vec<PinnedFlow> = flows
            .iter()
            .filter(|f| full || !self.sent.contains(&(f.flow, f.backend)))
            .copied()
            .collect();
        self.sent = now;
        let wants_all = self
            .peering
            .wants_all
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        let awaited = self
            .peering
            .awaited
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        for p in self.peers.clone() {
            let ip = p.ip().to_canonical();
            let all = wants_all.contains(&ip);
            let list = if all { flows } else { &news[..] };
            if list.is_empty() && !all && !awaited.contains(&ip) {
                continue;
            }
            let from = if self.listen.is_unspecified() {
                source_towards(p.ip()).unwrap_or(self.listen)
            } else {
                self.listen
            };
            if awaited.contains(&ip) {
                self.datagram(from, p, &[]);
            }
            for chunk in list.chunks(PER_DATAGRAM) {
                if self.datagram(from, p, chunk) {
                    self.stats
                        .sent
                        .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if all {
                self.datagram(from, p, &[round_end()]);
            }
        }
    }

    /// Sends every one of `flows` to every peer (then the round's end): a
    /// director about to stop.
    pub fn send_everything(&mut self, flows: &[PinnedFlow]) {
        if let Ok(mut w) = self.peering.wants_all.lock() {
            w.extend(self.peers.iter().map(|p| p.ip().to_canonical()));
        }
        self.send(flows);
    }

    /// One datagram of `flows` to `to`: whether it left.
    fn datagram(&mut self, from: IpAddr, to: SocketAddr, flows: &[PinnedFlow]) -> bool {
        self.seq += 1;
        let d = encode(&self.key, from, to.ip(), self.seq, now_ms(), flows);
        match send_waiting(&self.socket, &d, to) {
            Ok(()) => true,
            Err(e) => {
                debug!(peer = %to, error = %e, "flow sync send failed");
                false
            }
        }
    }
}

/// Sends on a non-blocking socket, waiting (up to a second) while its send
/// buffer is full.
fn send_waiting(socket: &std::net::UdpSocket, d: &[u8], to: SocketAddr) -> std::io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        match socket.send_to(d, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(
                    std::os::fd::AsFd::as_fd(socket),
                    PollFlags::POLLOUT,
                )];
                if poll(&mut fds, PollTimeout::from(1000u16)).map_err(std::io::Error::from)? == 0 {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The source address routing picks towards `peer` (a connected UDP
/// socket's local address; nothing is sent).
fn source_towards(peer: IpAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv6() {
        "[::]:0".parse().ok()?
    } else {
        "0.0.0.0:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(SocketAddr::new(peer, 9)).ok()?;
    Some(s.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::{wire::*, *};

    fn sample(i: u8) -> PinnedFlow {
        PinnedFlow {
            flow: FlowKey {
                src: [10, 1, 0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                dst: [10, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sport: [0x30, i],
                dport: [0, 80],
                protocol: 6,
                flags: 0,
                _pad: [0; 2],
            },
            service: ServiceKey::v4([10, 0, 0, 100], 80, 6),
            backend: if i.is_multiple_of(2) {
                "10.0.0.20".parse().expect("ip")
            } else {
                "fd00::20".parse().expect("ip")
            },
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn round_trip_authentication_and_replays() {
        let (a, b) = (ip("10.0.0.10"), ip("10.0.0.11"));
        let flows: Vec<PinnedFlow> = (0..5).map(sample).collect();
        let d = encode(b"secret", a, b, 7, 1_000_000, &flows);
        assert!(d.len() <= 1400);
        let (env, got) = decode(b"secret", &d, 1_000_500).expect("decodes");
        assert_eq!(got, flows);
        assert_eq!(
            env,
            Envelope {
                from: a,
                to: b,
                seq: 7
            }
        );
        // Wrong key, tampering, truncation, replay outside the window.
        assert_eq!(decode(b"other", &d, 1_000_500), Err(Drop::BadMac));
        let mut t = d.clone();
        t[60] ^= 1;
        assert_eq!(decode(b"secret", &t, 1_000_500), Err(Drop::BadMac));
        // The addresses are under the MAC too.
        let mut t = d.clone();
        t[AT_TO + 15] ^= 1;
        assert_eq!(decode(b"secret", &t, 1_000_500), Err(Drop::BadMac));
        for n in 0..d.len() {
            assert!(decode(b"secret", &d[..n], 1_000_500).is_err());
        }
        assert_eq!(decode(b"secret", &d, 1_000_000 + 31_000), Err(Drop::Stale));
        // A full datagram.
        let many: Vec<PinnedFlow> = (0..100).map(sample).collect();
        let d = encode(b"k", a, b, 1, 5, &many);
        assert!(d.len() <= 1400);
        assert_eq!(decode(b"k", &d, 5).map(|f| f.1.len()), Ok(PER_DATAGRAM));
        // IPv6 addresses.
        let d = encode(b"k", ip("fd00::10"), ip("fd00::11"), 1, 5, &flows);
        assert_eq!(decode(b"k", &d, 5).map(|f| f.0.to), Ok(ip("fd00::11")));
    }

    #[test]
    fn the_receiver_refuses_replays_and_datagrams_for_others() {
        let (a, b, c) = (ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12"));
        let mut gate = Gate {
            windows: Default::default(),
            ours: vec![b],
            peers: vec![a, c],
        };
        let env = |from, to, seq| Envelope { from, to, seq };
        assert_eq!(gate.check(&env(a, b, 100), a), Ok(()));
        assert_eq!(gate.check(&env(a, b, 100), a), Err(Drop::Replay));
        // Reordered within the window: fine, once.
        assert_eq!(gate.check(&env(a, b, 102), a), Ok(()));
        assert_eq!(gate.check(&env(a, b, 101), a), Ok(()));
        assert_eq!(gate.check(&env(a, b, 101), a), Err(Drop::Replay));
        // Too old for the window.
        assert_eq!(gate.check(&env(a, b, 500), a), Ok(()));
        assert_eq!(gate.check(&env(a, b, 400), a), Err(Drop::Replay));
        // A datagram A sent to C, replayed to B; or one claiming another
        // sender than the socket saw.
        assert_eq!(gate.check(&env(a, c, 600), a), Err(Drop::Misdirected));
        assert_eq!(gate.check(&env(c, b, 700), a), Err(Drop::Misdirected));
        // Each sender has its own window.
        assert_eq!(gate.check(&env(c, b, 1), c), Ok(()));
    }

    /// A director that (re)starts says hello each round until answered;
    /// the peer that heard it sends every exception (not only news) and
    /// then the round's end, which the receiver tells apart from flows.
    #[test]
    fn a_hello_is_answered_with_everything_then_the_rounds_end() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let peer = rx.local_addr().expect("addr");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.set_nonblocking(true).expect("nonblocking");
        let peering = std::sync::Arc::new(Peering::default());
        let mut sender = Sender {
            stats: Default::default(),
            socket: tx,
            peers: vec![peer],
            key: b"key".to_vec(),
            listen: ip("127.0.0.1"),
            seq: 1,
            sent: Default::default(),
            rounds: 0,
            peering: peering.clone(),
        };
        let next = || -> Vec<PinnedFlow> {
            let mut buf = [0u8; 2048];
            let n = rx.recv(&mut buf).expect("a datagram");
            decode(b"key", &buf[..n], now_ms()).expect("decodes").1
        };
        let flows: Vec<PinnedFlow> = (0..3).map(sample).collect();
        // Awaited: a hello first, then the news.
        peering.awaited.lock().expect("lock").insert(peer.ip());
        sender.send(&flows);
        assert_eq!(next(), vec![]);
        assert_eq!(next(), flows);
        // Answered: no more hellos; nothing new, nothing sent.
        assert!(peering.answered(peer.ip()));
        sender.send(&flows);
        sender.send(&flows[..2]);
        // The peer said hello: everything, then the round's end.
        peering.wants_all.lock().expect("lock").insert(peer.ip());
        sender.send(&flows);
        assert_eq!(next(), flows, "everything, though nothing is new");
        let end = next();
        assert_eq!(
            classify(end, peer.ip()),
            Datagram::Pass(Received::Everything(peer.ip()))
        );
        assert_eq!(classify(vec![], peer.ip()), Datagram::Hello);
        assert_eq!(
            classify(flows.clone(), peer.ip()),
            Datagram::Pass(Received::Flows(flows))
        );
        rx.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 2048];
        assert!(rx.recv(&mut buf).is_err(), "nothing more was sent");
    }

    /// A dual-stack `[::]` socket reports an IPv4 peer as
    /// `::ffff:a.b.c.d`: the same peer, its datagrams taken (they were all
    /// dropped, uncounted); strangers are counted.
    #[test]
    fn an_ipv4_peer_on_a_dual_stack_socket_is_that_peer() {
        let (a, b) = (ip("10.0.0.10"), ip("10.0.0.11"));
        let mut gate = Gate {
            windows: Default::default(),
            ours: vec![b],
            peers: vec![a],
        };
        let flows: Vec<PinnedFlow> = (0..3).map(sample).collect();
        let d = encode(b"key", a, b, 9, 5, &flows);
        let mapped = ip("::ffff:10.0.0.10");
        assert_eq!(gate.receive(b"key", &d, mapped, 5).map(|f| f.len()), Ok(3));
        let stranger = ip("::ffff:10.0.0.99");
        assert_eq!(gate.receive(b"key", &d, stranger, 5), Err(Drop::NotPeer));
    }
}
