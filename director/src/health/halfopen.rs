//! `tcp_check` without a connection (the default, `half_open = true`): a
//! SYN from a raw socket, the server's SYN-ACK (healthy) or RST (refused)
//! caught by another, and the kernel's own RST closing the half-open
//! connection on the server (no socket of ours owns the port, so the
//! kernel resets the SYN-ACK). No socket, connection or TIME_WAIT per
//! probe: the verdict is keepalived's `tcp_check`'s (a connect succeeds
//! exactly when the server's SYN-ACK arrives), at a fraction of its cost.
//!
//! One [`HalfOpen`] per [`super::Checks`]: per family a sending socket
//! (`IPPROTO_RAW`, the IP header ours so the source is `bindto` or the
//! route's), a receiving `IPPROTO_TCP` raw socket whose classic BPF filter
//! only lets through SYN-ACKs and RSTs to our ports, an ICMP (ICMPv6) raw
//! socket filtered to destination unreachables, and a few local ports
//! reserved by bound (never listening) TCP sockets so no connection of
//! this host uses them. Each attempt waits on its own (server, port, our
//! port) with a random sequence number the answer must acknowledge; the
//! SYN is sent again after 1 s, 2 s, 4 s... as the kernel's connect does,
//! until the caller's `connect_timeout`. A destination unreachable quoting
//! the SYN (its sequence number) ends the attempt at once with the error a
//! connect would give (RFC 1122 4.2.3.9 lets TCP treat them as soft; Linux
//! fails a connect in SYN-SENT on them, and keepalived's checks with it).

use std::{
    collections::HashMap,
    io,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng as _;
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::oneshot,
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::net::{
    frames,
    wire::{checksum, pseudo_header},
};

const TCP: u8 = director_common::IPPROTO_TCP;
const SYN: u8 = director_common::TCP_SYN;
const ACK: u8 = director_common::TCP_ACK;
const RST: u8 = director_common::TCP_RST;
/// Local ports reserved per family: attempts to one server:port at the same
/// time each take another.
const PORTS: usize = 8;
/// How long the route's source address towards a server is reused (a
/// failed attempt looks it up again at once).
const SOURCE_TTL: Duration = Duration::from_secs(60);
/// First retransmission of the SYN (the kernel's initial RTO), doubled
/// after each.
const FIRST_RESEND: Duration = Duration::from_secs(1);

/// An attempt's key: the server, its port, our port.
type Key = (IpAddr, u16, u16);

/// What the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Refused,
    /// An ICMP destination unreachable quoting our SYN: what a connect
    /// would fail with at once (the errno's text), and who sent it.
    Unreachable(&'static str, IpAddr),
}

struct Waiter {
    seq: u32,
    tx: oneshot::Sender<Answer>,
}

/// One address family's sockets and attempts.
struct Family {
    send: AsyncFd<Socket>,
    ports: Vec<u16>,
    /// The bound TCP sockets that keep `ports` ours.
    _reserved: Vec<Socket>,
    pending: Mutex<HashMap<Key, Waiter>>,
    /// The route's source towards each server, and when it was looked up.
    sources: Mutex<HashMap<IpAddr, (IpAddr, Instant)>>,
}

/// The half-open prober of a [`super::Checks`].
pub struct HalfOpen {
    v4: Option<Arc<Family>>,
    v6: Option<Arc<Family>>,
    tasks: Vec<JoinHandle<()>>,
}

impl HalfOpen {
    /// Opens the sockets and starts the receivers (in the current tokio
    /// runtime). A family whose raw sockets cannot be had here (no
    /// `CAP_NET_RAW`, no IPv6) falls back to full connects, said once.
    pub fn new() -> HalfOpen {
        let mut tasks = Vec::new();
        let mut open = |v6: bool| match Family::open(v6) {
            Ok((family, receive, icmp)) => {
                let family = Arc::new(family);
                tasks.push(tokio::spawn(receive_loop(
                    family.clone(),
                    receive,
                    v6,
                    false,
                )));
                match icmp {
                    Ok(icmp) => {
                        tasks.push(tokio::spawn(receive_loop(family.clone(), icmp, v6, true)))
                    }
                    Err(e) => {
                        warn!(family = if v6 { "ipv6" } else { "ipv4" }, error = %e, "tcp_check cannot read ICMP errors: an unreachable server fails at its connect_timeout")
                    }
                }
                Some(family)
            }
            Err(e) => {
                warn!(family = if v6 { "ipv6" } else { "ipv4" }, error = %e, "tcp_check cannot probe half-open here: it opens a full connection instead");
                None
            }
        };
        let (v4, v6) = (open(false), open(true));
        if v4.is_some() || v6.is_some() {
            info!(
                ipv4 = v4.is_some(),
                ipv6 = v6.is_some(),
                "tcp_check probes half-open (SYN, SYN-ACK, RST; no connection)"
            );
        }
        HalfOpen { v4, v6, tasks }
    }

    /// Whether a target of this family can be probed half-open.
    pub fn serves(&self, target: SocketAddr) -> bool {
        self.family(target).is_some()
    }

    fn family(&self, target: SocketAddr) -> Option<&Arc<Family>> {
        if target.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    /// One attempt: `Ok` on a SYN-ACK, `Err` (the reason) on a RST, an
    /// error sending or no answer within `timeout`.
    /// `None`: this target cannot be probed half-open now (no raw socket
    /// for its family, or every port of ours already waits on it): the
    /// caller connects instead.
    pub async fn check(
        &self,
        target: SocketAddr,
        bindto: Option<IpAddr>,
        timeout: Duration,
    ) -> Option<Result<(), String>> {
        let family = self.family(target)?;
        let seq: u32 = rand::rng().random();
        let (guard, mut rx) = family.wait(target, seq)?;
        let src = match bindto {
            Some(b) => b,
            None => match family.source(target.ip()) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            },
        };
        if src.is_ipv4() != target.is_ipv4() {
            return Some(Err(format!("bindto {src} and {target} differ in family")));
        }
        let syn = syn_packet(src, guard.key.2, target, seq);
        // One timer per wait: until the next resend, or the attempt's end.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut resend = FIRST_RESEND;
        loop {
            if let Err(e) = family.send_to(&syn, target, deadline).await {
                family.forget_source(target.ip());
                return Some(Err(format!("connect {target}: {e}")));
            }
            let until = deadline.min(tokio::time::Instant::now() + resend);
            match tokio::time::timeout_at(until, &mut rx).await {
                Ok(Ok(Answer::Accepted)) => return Some(Ok(())),
                Ok(Ok(Answer::Refused)) => {
                    return Some(Err(format!("connect {target}: Connection refused")));
                }
                Ok(Ok(Answer::Unreachable(what, from))) => {
                    return Some(Err(format!("connect {target}: {what} (ICMP from {from})")));
                }
                Ok(Err(_)) => return Some(Err("the half-open prober stopped".into())),
                Err(_) => {
                    // No answer yet: the route may have changed too.
                    family.forget_source(target.ip());
                    if until >= deadline {
                        return Some(Err(format!("timed out after {timeout:?}")));
                    }
                    resend *= 2;
                }
            }
        }
    }
}

impl Default for HalfOpen {
    fn default() -> HalfOpen {
        HalfOpen::new()
    }
}

impl Drop for HalfOpen {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Removes its attempt from the pending ones however the attempt ends
/// (answered, failed, or cut by the caller's timeout).
struct Pending<'a> {
    family: &'a Family,
    key: Key,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.family.pending.lock() {
            p.remove(&self.key);
        }
    }
}

impl Family {
    /// The sending socket, the port reservations, the receiving socket and
    /// the ICMP one.
    #[allow(clippy::type_complexity)]
    fn open(v6: bool) -> io::Result<(Family, AsyncFd<Socket>, io::Result<AsyncFd<Socket>>)> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        // IPPROTO_RAW: the IP header is ours (IP_HDRINCL; IPV6_HDRINCL is
        // implied for IPv6 since Linux 4.5).
        let send = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
        send.set_nonblocking(true)?;
        let mut reserved = Vec::with_capacity(PORTS);
        let mut ports = Vec::with_capacity(PORTS);
        for _ in 0..PORTS {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            if v6 {
                s.set_only_v6(true)?;
            }
            let any: IpAddr = if v6 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            };
            s.bind(&SocketAddr::new(any, 0).into())?;
            let port = s
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("reserved socket has no port"))?;
            ports.push(port);
            reserved.push(s);
        }
        let receive = Socket::new(domain, Type::RAW, Some(Protocol::TCP))?;
        // The filter goes on first, so nothing unfiltered is ever queued.
        receive.attach_filter(&filter(&ports, v6))?;
        receive.set_nonblocking(true)?;
        // Answers to thousands of probes a second arrive in bursts: room for
        // them (SO_RCVBUFFORCE passes rmem_max with CAP_NET_ADMIN).
        let fd = receive.as_raw_fd();
        if crate::net::socket::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20)
            .is_err()
        {
            let _ = receive.set_recv_buffer_size(4 << 20);
        }
        // SAFETY (both registrations): the sockets are owned by the AsyncFd
        // and closed only when it is dropped.
        let send = unsafe { AsyncFd::register_with_interest(send, Interest::WRITABLE)? };
        let receive = unsafe { AsyncFd::register_with_interest(receive, Interest::READABLE)? };
        let icmp = (|| -> io::Result<AsyncFd<Socket>> {
            let (domain, protocol) = if v6 {
                (Domain::IPV6, Protocol::ICMPV6)
            } else {
                (Domain::IPV4, Protocol::ICMPV4)
            };
            let icmp = Socket::new(domain, Type::RAW, Some(protocol))?;
            icmp.attach_filter(&unreachable_filter(v6))?;
            icmp.set_nonblocking(true)?;
            // SAFETY: as above.
            Ok(unsafe { AsyncFd::register_with_interest(icmp, Interest::READABLE)? })
        })();
        Ok((
            Family {
                send,
                ports,
                _reserved: reserved,
                pending: Mutex::new(HashMap::new()),
                sources: Mutex::new(HashMap::new()),
            },
            receive,
            icmp,
        ))
    }

    /// The source address the kernel's route towards `dst` picks (looked up
    /// again after [`SOURCE_TTL`] or a failed attempt).
    fn source(&self, dst: IpAddr) -> Result<IpAddr, String> {
        let now = Instant::now();
        if let Ok(s) = self.sources.lock()
            && let Some((src, at)) = s.get(&dst)
            && now.duration_since(*at) < SOURCE_TTL
        {
            return Ok(*src);
        }
        let src =
            super::drpath::source_for(dst).map_err(|e| format!("connect {dst}: no route: {e}"))?;
        if let Ok(mut s) = self.sources.lock() {
            s.insert(dst, (src, now));
        }
        Ok(src)
    }

    fn forget_source(&self, dst: IpAddr) {
        if let Ok(mut s) = self.sources.lock() {
            s.remove(&dst);
        }
    }

    /// Registers an attempt on one of our ports not already waiting on this
    /// server:port (`None` when every one is).
    fn wait(
        &self,
        target: SocketAddr,
        seq: u32,
    ) -> Option<(Pending<'_>, oneshot::Receiver<Answer>)> {
        let (tx, rx) = oneshot::channel();
        let first = rand::rng().random_range(0..self.ports.len());
        let mut pending = self.pending.lock().ok()?;
        let free = (0..self.ports.len())
            .map(|i| {
                (
                    target.ip(),
                    target.port(),
                    self.ports[(first + i) % self.ports.len()],
                )
            })
            .find(|key| !pending.contains_key(key))?;
        pending.insert(free, Waiter { seq, tx });
        Some((
            Pending {
                family: self,
                key: free,
            },
            rx,
        ))
    }

    /// Sends one packet (waits while the socket's buffer is full, until
    /// `deadline`).
    async fn send_to(
        &self,
        packet: &[u8],
        target: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> io::Result<()> {
        // Raw sockets take the protocol, not a port, in the address: 0.
        let to: SockAddr = SocketAddr::new(target.ip(), 0).into();
        loop {
            match self.send.get_ref().send_to(packet, &to) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let wait = tokio::time::timeout_at(deadline, self.send.writable());
                    match wait.await {
                        Ok(ready) => ready?.clear_ready(),
                        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands a segment the filter let through to the attempt it answers.
    fn deliver(&self, from: IpAddr, tcp: &[u8]) {
        let Some(seen) = parse_answer(tcp) else {
            return;
        };
        self.settle((from, seen.sport, seen.dport), |seq| {
            // Only an answer to our SYN: it acknowledges our sequence number.
            if seen.ack != seq.wrapping_add(1) || seen.flags & ACK == 0 {
                None
            } else if seen.flags & RST != 0 {
                Some(Answer::Refused)
            } else if seen.flags & SYN != 0 {
                Some(Answer::Accepted)
            } else {
                None
            }
        });
    }

    /// Hands an ICMP destination unreachable quoting one of our SYNs to its
    /// attempt.
    fn deliver_unreachable(&self, u: Unreachable) {
        self.settle((u.server, u.dport, u.sport), |seq| {
            // Only for the SYN we sent: the quote carries its sequence number.
            (seq == u.seq).then_some(Answer::Unreachable(u.what, u.from))
        });
    }

    /// Ends the attempt waiting on `key` with what `answer` makes of it
    /// (given the attempt's sequence number; `None`: not an answer to it,
    /// the attempt waits on).
    fn settle(&self, key: Key, answer: impl FnOnce(u32) -> Option<Answer>) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let Some(a) = pending.get(&key).and_then(|w| answer(w.seq)) else {
            return;
        };
        if let Some(w) = pending.remove(&key) {
            let _ = w.tx.send(a);
        }
    }
}

/// An ICMP destination unreachable about a TCP segment of ours.
#[derive(Debug, PartialEq, Eq)]
struct Unreachable {
    /// Who sent the error (the server, a router, this host).
    from: IpAddr,
    /// The quoted segment's destination, ports and sequence number.
    server: IpAddr,
    dport: u16,
    sport: u16,
    seq: u32,
    /// What a connect fails with for it (strerror of the kernel's errno).
    what: &'static str,
}

/// Reads an ICMP (IPv4: from the IP header on) or ICMPv6 (from its header
/// on; the sender in `from`) destination unreachable that quotes a TCP
/// segment. Bounds from the datagram, not from the filter.
fn parse_unreachable(data: &[u8], from: Option<IpAddr>, v6: bool) -> Option<Unreachable> {
    let (from, icmp) = split_received(data, from, v6)?;
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    let quoted = icmp.get(8..)?;
    let (server, tcp) = if v6 {
        // The quoted IPv6 header, TCP right after it (a SYN of ours carries
        // no extension header).
        if kind != 1 || *quoted.get(6)? != TCP {
            return None;
        }
        let d: [u8; 16] = quoted.get(24..40)?.try_into().ok()?;
        (IpAddr::from(d), quoted.get(40..)?)
    } else {
        if kind != 3 || *quoted.get(9)? != TCP {
            return None;
        }
        let ihl = usize::from(quoted.first()? & 0x0f) * 4;
        let d = quoted.get(16..20)?;
        (IpAddr::from([d[0], d[1], d[2], d[3]]), quoted.get(ihl..)?)
    };
    let t = tcp.get(..8)?;
    // As the kernel's errno for a connect in SYN_SENT (icmp_err_convert,
    // icmpv6_err_convert).
    let what = match (v6, code) {
        (false, 0) | (true, 0) => "Network is unreachable",
        (false, 2) => "Protocol not available",
        (false, 3) | (true, 4) => "Connection refused",
        (true, 1) => "Permission denied",
        _ => "No route to host",
    };
    Some(Unreachable {
        from,
        server,
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        what,
    })
}

/// Keeps, from the ICMP socket, destination unreachables only (type 3 for
/// IPv4, whose data starts at the IP header; type 1 for ICMPv6, whose data
/// starts at its header).
fn unreachable_filter(v6: bool) -> Vec<SockFilter> {
    use crate::net::cbpf::{JEQ_K, LD_B_ABS, LD_B_IND, LDX_B_MSH, RET_K};
    let mut f = Vec::with_capacity(4);
    if v6 {
        f.push(SockFilter::new(LD_B_ABS, 0, 0, 0));
        f.push(SockFilter::new(JEQ_K, 0, 1, 1));
    } else {
        f.push(SockFilter::new(LDX_B_MSH, 0, 0, 0));
        f.push(SockFilter::new(LD_B_IND, 0, 0, 0));
        f.push(SockFilter::new(JEQ_K, 0, 1, 3));
    }
    f.push(SockFilter::new(RET_K, 0, 0, 256));
    f.push(SockFilter::new(RET_K, 0, 0, 0));
    f
}

/// What a SYN-ACK or RST to one of our ports says.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    sport: u16,
    dport: u16,
    ack: u32,
    flags: u8,
}

/// Reads a TCP header (bounds from the segment, not from the filter).
fn parse_answer(tcp: &[u8]) -> Option<Seen> {
    let h = tcp.get(..14)?;
    Some(Seen {
        sport: u16::from_be_bytes([h[0], h[1]]),
        dport: u16::from_be_bytes([h[2], h[3]]),
        ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        flags: h[13],
    })
}

/// The sender and payload (the TCP header, or the ICMP message) of a
/// datagram from one of our raw sockets: for IPv4 it starts with the IP
/// header, for IPv6 with the payload (the sender is in the socket address).
fn split_received(buf: &[u8], from: Option<IpAddr>, v6: bool) -> Option<(IpAddr, &[u8])> {
    if v6 {
        return Some((from?, buf));
    }
    let ihl = usize::from(buf.first()? & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let src = buf.get(12..16)?;
    let src = IpAddr::from([src[0], src[1], src[2], src[3]]);
    Some((src, buf.get(ihl..)?))
}

/// Reads the TCP answers (or, `icmp`, the ICMP errors) of one family.
async fn receive_loop(family: Arc<Family>, socket: AsyncFd<Socket>, v6: bool, icmp: bool) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 256];
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        loop {
            match ready.get_inner().recv_from(&mut buf) {
                Ok((n, addr)) => {
                    // SAFETY: recv_from initialised the first n bytes.
                    let data: &[u8] =
                        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                    let from = addr.as_socket().map(|a| a.ip());
                    if icmp {
                        if let Some(u) = parse_unreachable(data, from, v6) {
                            family.deliver_unreachable(u);
                        }
                    } else if let Some((src, tcp)) = split_received(data, from, v6) {
                        family.deliver(src, tcp);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ENOBUFS and the like: what was lost times out.
                Err(_) => {
                    ready.clear_ready();
                    break;
                }
            }
        }
    }
}

/// A SYN from `src:sport` to `target` with sequence number `seq`, an MSS
/// option as any stack's, in an IP header of ours (checksums filled in).
fn syn_packet(src: IpAddr, sport: u16, target: SocketAddr, seq: u32) -> Vec<u8> {
    let mut t = frames::tcp(sport, target.port(), SYN);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 6 << 4; // 24 bytes: the MSS option follows
    let mss: u16 = if target.is_ipv4() { 1460 } else { 1440 };
    t.extend_from_slice(&[2, 4]);
    t.extend_from_slice(&mss.to_be_bytes());
    let sum = checksum(&[&pseudo_header(src, target.ip(), TCP, t.len()), &t]);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    super::drpath::ip_packet(src, target.ip(), TCP, &t)
}

/// Accepts, from the receiving socket, TCP segments to one of `ports` that
/// are a RST or a SYN-ACK; drops everything else. An IPv4 raw socket's
/// data starts at the IP header, an IPv6 one's at the TCP header.
fn filter(ports: &[u16], v6: bool) -> Vec<SockFilter> {
    use crate::net::cbpf::{AND_K, JEQ_K, JSET_K, LD_B_IND, LD_H_IND, LDX_B_MSH, LDX_IMM, RET_K};
    let n = ports.len();
    let mut f = Vec::with_capacity(n + 8);
    // X = where the TCP header starts.
    f.push(if v6 {
        SockFilter::new(LDX_IMM, 0, 0, 0)
    } else {
        SockFilter::new(LDX_B_MSH, 0, 0, 0)
    });
    f.push(SockFilter::new(LD_H_IND, 0, 0, 2)); // destination port
    // Port i: on a match, jump to the flags (n - i - 1 ahead); else the next
    // port, the last one to the drop (n - i - 1 + 5 ahead).
    for (i, p) in ports.iter().enumerate() {
        let to_flags = (n - i - 1) as u8;
        let on_miss = if i + 1 == n { to_flags + 5 } else { 0 };
        f.push(SockFilter::new(JEQ_K, to_flags, on_miss, u32::from(*p)));
    }
    f.push(SockFilter::new(LD_B_IND, 0, 0, 13)); // flags
    f.push(SockFilter::new(JSET_K, 2, 0, u32::from(RST))); // RST: accept
    f.push(SockFilter::new(AND_K, 0, 0, u32::from(SYN | ACK)));
    f.push(SockFilter::new(JEQ_K, 0, 1, u32::from(SYN | ACK)));
    f.push(SockFilter::new(RET_K, 0, 0, 256)); // accept (headers only)
    f.push(SockFilter::new(RET_K, 0, 0, 0)); // drop
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF program over `data` (the few instructions the
    /// filter uses), as the kernel would: the bytes it keeps, 0 to drop.
    fn run(prog: &[SockFilter], data: &[u8]) -> u32 {
        // SockFilter's fields are private: read them back through its
        // `sock_filter` layout (code u16, jt u8, jf u8, k u32).
        let ins: Vec<(u16, u8, u8, u32)> = prog
            .iter()
            .map(|i| {
                // SAFETY: SockFilter is repr(transparent) over sock_filter.
                let raw: libc::sock_filter = unsafe { std::mem::transmute_copy(i) };
                (raw.code, raw.jt, raw.jf, raw.k)
            })
            .collect();
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |o: usize| data.get(o).copied().map(u32::from);
        loop {
            let (code, jt, jf, k) = ins[pc];
            pc += 1;
            match code {
                0x01 => x = k,
                0xb1 => match byte(k as usize) {
                    Some(b) => x = (b & 0x0f) * 4,
                    None => return 0,
                },
                0x48 => match (byte((x + k) as usize), byte((x + k + 1) as usize)) {
                    (Some(h), Some(l)) => a = (h << 8) | l,
                    _ => return 0,
                },
                0x30 => match byte(k as usize) {
                    Some(b) => a = b,
                    None => return 0,
                },
                0x50 => match byte((x + k) as usize) {
                    Some(b) => a = b,
                    None => return 0,
                },
                0x54 => a &= k,
                0x15 => pc += usize::from(if a == k { jt } else { jf }),
                0x45 => pc += usize::from(if a & k != 0 { jt } else { jf }),
                0x06 => return k,
                other => panic!("instruction {other:#x} not modelled"),
            }
        }
    }

    fn segment(v6: bool, dport: u16, flags: u8) -> Vec<u8> {
        let t = frames::tcp(80, dport, flags);
        if v6 {
            t
        } else {
            frames::ipv4(
                [10, 0, 0, 2],
                [10, 0, 0, 1],
                TCP,
                frames::Frag::default(),
                &[1, 1, 1, 1],
                &t,
            )
        }
    }

    #[test]
    fn the_filter_keeps_only_syn_acks_and_resets_to_our_ports() {
        let ports = [40001, 40002, 40003];
        for v6 in [false, true] {
            let prog = filter(&ports, v6);
            for p in ports {
                assert_eq!(
                    run(&prog, &segment(v6, p, SYN | ACK)),
                    256,
                    "v6 {v6} port {p}"
                );
                assert_eq!(run(&prog, &segment(v6, p, RST | ACK)), 256);
                assert_eq!(run(&prog, &segment(v6, p, RST)), 256);
                assert_eq!(run(&prog, &segment(v6, p, ACK)), 0, "a plain ACK");
                assert_eq!(run(&prog, &segment(v6, p, SYN)), 0, "a SYN");
                assert_eq!(run(&prog, &segment(v6, p, frames::FIN | ACK)), 0);
            }
            assert_eq!(
                run(&prog, &segment(v6, 40004, SYN | ACK)),
                0,
                "another port"
            );
            assert_eq!(run(&prog, &segment(v6, 80, RST)), 0, "another port");
            assert_eq!(run(&prog, &[0x45, 0, 0]), 0, "truncated");
        }
    }

    #[test]
    fn icmp_unreachables_quoting_our_syn_are_read() {
        let target: SocketAddr = "10.0.0.9:8080".parse().expect("addr");
        let src: IpAddr = "10.0.0.1".parse().expect("addr");
        let syn = syn_packet(src, 40001, target, 77);
        let icmp4 = |kind: u8, code: u8| {
            let mut m = vec![kind, code, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&syn[..28]);
            frames::ipv4(
                [10, 0, 0, 254],
                [10, 0, 0, 1],
                1,
                frames::Frag::default(),
                &[],
                &m,
            )
        };
        let u = parse_unreachable(&icmp4(3, 3), None, false).expect("port unreachable");
        assert_eq!(
            u,
            Unreachable {
                from: IpAddr::from([10, 0, 0, 254]),
                server: target.ip(),
                dport: 8080,
                sport: 40001,
                seq: 77,
                what: "Connection refused",
            }
        );
        assert_eq!(
            parse_unreachable(&icmp4(3, 1), None, false).map(|u| u.what),
            Some("No route to host")
        );
        assert_eq!(
            parse_unreachable(&icmp4(0, 0), None, false),
            None,
            "an echo reply"
        );
        assert_eq!(
            parse_unreachable(&icmp4(3, 3)[..40], None, false),
            None,
            "quote cut short"
        );
        let prog = unreachable_filter(false);
        assert_eq!(run(&prog, &icmp4(3, 3)), 256);
        assert_eq!(run(&prog, &icmp4(11, 0)), 0, "time exceeded");
        // ICMPv6: from its header on, the sender beside it.
        let target6: SocketAddr = "[fd00::9]:443".parse().expect("addr");
        let src6: IpAddr = "fd00::1".parse().expect("addr");
        let syn6 = syn_packet(src6, 40002, target6, 78);
        let mut m6 = vec![1, 4, 0, 0, 0, 0, 0, 0];
        m6.extend_from_slice(&syn6[..48]);
        let from6: IpAddr = "fd00::fe".parse().expect("addr");
        let u6 = parse_unreachable(&m6, Some(from6), true).expect("v6");
        assert_eq!(
            (u6.server, u6.dport, u6.sport, u6.seq, u6.what),
            (target6.ip(), 443, 40002, 78, "Connection refused")
        );
        let prog6 = unreachable_filter(true);
        assert_eq!(run(&prog6, &m6), 256);
        m6[0] = 129; // echo reply
        assert_eq!(run(&prog6, &m6), 0);
        assert_eq!(parse_unreachable(&m6, Some(from6), true), None);
    }

    #[test]
    fn the_syn_carries_valid_checksums_and_our_numbers() {
        let target: SocketAddr = "10.0.0.9:8080".parse().expect("addr");
        let src: IpAddr = "10.0.0.1".parse().expect("addr");
        let p = syn_packet(src, 40001, target, 0xdead_beef);
        assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header checksum");
        let t = &p[20..];
        assert_eq!(
            checksum(&[&pseudo_header(src, target.ip(), TCP, t.len()), t]),
            0
        );
        assert_eq!(
            parse_answer(t),
            Some(Seen {
                sport: 40001,
                dport: 8080,
                ack: 0,
                flags: SYN
            })
        );
        assert_eq!(&t[4..8], &0xdead_beefu32.to_be_bytes());
        let target6: SocketAddr = "[fd00::9]:443".parse().expect("addr");
        let src6: IpAddr = "fd00::1".parse().expect("addr");
        let p = syn_packet(src6, 40001, target6, 7);
        let t = &p[40..];
        assert_eq!(
            checksum(&[&pseudo_header(src6, target6.ip(), TCP, t.len()), t]),
            0
        );
        assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, t.len());
    }

    #[test]
    fn received_data_is_read_within_its_bounds() {
        let v4 = segment(false, 40001, SYN | ACK);
        let (src, tcp) = split_received(&v4, None, false).expect("v4");
        assert_eq!(src, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(parse_answer(tcp).map(|s| s.dport), Some(40001));
        assert!(
            split_received(&[0x41, 0, 0], None, false).is_none(),
            "IHL under 20"
        );
        assert!(
            split_received(&v4[..30], None, false).is_some_and(|(_, t)| parse_answer(t).is_none())
        );
        assert!(split_received(&[], None, true).is_none(), "no sender");
    }

    /// The real thing against this host's TCP stack: a listening port is
    /// healthy, a closed one refused, and many attempts at once each get
    /// their own answer. Needs CAP_NET_RAW: skipped without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probes_a_real_stack_half_open() {
        let prober = HalfOpen::new();
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let open = SocketAddr::new(
            IpAddr::from([127, 0, 0, 1]),
            listener.local_addr().expect("addr").port(),
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        if !prober.serves(open) {
            eprintln!("skipped: no raw sockets here (needs CAP_NET_RAW)");
            return;
        }
        let cut = Duration::from_secs(3);
        let check = |t| tokio::time::timeout(cut, prober.check(t, None, cut));
        assert_eq!(check(open).await, Ok(Some(Ok(()))));
        let refused = check(closed).await.expect("answered");
        assert!(
            refused
                .as_ref()
                .is_some_and(|r| r.as_ref().is_err_and(|e| e.contains("refused"))),
            "{refused:?}"
        );
        // The server's accept queue never sees a half-open probe.
        listener.set_nonblocking(true).expect("nonblocking");
        assert!(listener.accept().is_err(), "a probe completed a connection");
        // As many attempts on one server at once as we have ports: each
        // gets its own answer.
        let many: Vec<_> = (0..PORTS).map(|_| check(open)).collect();
        for r in futures::future::join_all(many).await {
            assert_eq!(r, Ok(Some(Ok(()))));
        }
        // With every port of ours waiting on it, a server's next attempt
        // is handed back (the caller connects).
        let family = prober.v4.as_ref().expect("ipv4");
        let held: Vec<_> = (0..PORTS).map(|i| family.wait(open, i as u32)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(family.wait(open, 99).is_none());
        assert_eq!(prober.check(open, None, cut).await, None);
        drop(held);
        assert_eq!(check(open).await, Ok(Some(Ok(()))));
        // Many servers at once (every loopback address is this host).
        let servers: Vec<SocketAddr> = (0..200u8)
            .map(|i| SocketAddr::new(IpAddr::from([127, 0, 1, i]), open.port()))
            .collect();
        let all = futures::future::join_all(servers.iter().map(|s| check(*s))).await;
        assert!(all.iter().all(|r| *r == Ok(Some(Ok(())))), "{all:?}");
        let ipv6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(l6) = ipv6
            && prober.serves(l6.local_addr().expect("addr"))
        {
            assert_eq!(
                check(l6.local_addr().expect("addr")).await,
                Ok(Some(Ok(())))
            );
            drop(l6);
        }
    }
}
