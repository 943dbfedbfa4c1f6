//! The direct-routing path check (`dr_check`): probe a real server the way
//! clients reach it. A TCP SYN to VIP:port is put in a frame addressed to
//! the real server's MAC (exactly what the dataplane does to a client's
//! SYN); a real server that lost the VIP on `lo`, or does not serve the
//! port on it, fails although a check of its own address would pass. For
//! IPv4, an ARP question for the VIP is sent to the real server's MAC too:
//! a real server that answers it (no `arp_ignore`) would steal the VIP
//! from the director, and fails.
//!
//! The answer is caught with a packet socket and a classic BPF filter that
//! only lets through the SYN-ACK/RST from VIP:port to our probe's port and
//! ARP replies about the VIP; the half-open connection on the real server is
//! reset by a RST of ours. Everything here blocks: the caller runs it on a
//! blocking thread (closing a packet socket waits for an RCU grace period).

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use rand::Rng as _;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use super::{CheckSpec, Outcome, PathEnv};
use crate::{
    net::frames,
    net::neighbor::Mac,
    net::wire::{checksum, link_addr, pseudo_header},
};

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TCP: u8 = director_common::IPPROTO_TCP;
const RST: u8 = director_common::TCP_RST;
const SYN_ACK: u8 = director_common::TCP_SYN | director_common::TCP_ACK;
/// How long to wait for an ARP reply once the TCP answer is in (the ARP
/// question went first, so its answer is normally already queued).
const ARP_GRACE: Duration = Duration::from_millis(20);

/// What to probe.
#[derive(Debug, Clone)]
pub struct PathProbe {
    pub ifindex: u32,
    pub our_mac: Mac,
    pub rs_mac: Mac,
    pub rs: IpAddr,
    /// Source address (`bindto`, or what the kernel would pick).
    pub src: Option<IpAddr>,
    pub vip: IpAddr,
    pub port: u16,
    pub arp: bool,
    /// A tunnel real server (`lb_kind = "tun"`): the SYN goes inside an
    /// outer header to `rs` (IP-in-IP or IPv6-in-IPv6), to `rs_mac`, its
    /// next hop's MAC, as the dataplane sends clients' packets.
    pub tunnel: bool,
    pub timeout: Duration,
}

/// How the real server answered a SYN through the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A SYN-ACK: it holds the VIP and serves the port.
    Accepted,
    /// A RST: it holds the VIP but nothing listens on the port there.
    Refused,
    /// Nothing within the timeout.
    Silent,
}

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathReport {
    pub answer: Answer,
    /// The real server answered ARP for the VIP (IPv4 DR, `arp`).
    pub arp_answered: bool,
}

/// Runs one probe: Ok when the real server answered through the VIP (and
/// did not answer ARP for it).
pub fn probe(p: &PathProbe) -> Result<(), String> {
    let report = probe_report(p)?;
    if report.arp_answered {
        return Err(format!(
            "answers ARP for the VIP {} (set arp_ignore=1 and arp_announce=2 on the real server)",
            p.vip
        ));
    }
    match report.answer {
        Answer::Accepted => Ok(()),
        Answer::Refused => Err(format!(
            "connection refused through the VIP {} port {}",
            p.vip, p.port
        )),
        Answer::Silent => Err(format!(
            "no answer through the VIP {} port {} (does the real server hold the VIP on lo?)",
            p.vip, p.port
        )),
    }
}

/// Runs one probe and says what it saw (`Err`: the probe itself could not
/// run here).
pub fn probe_report(p: &PathProbe) -> Result<PathReport, String> {
    let src = match p.src {
        Some(s) => s,
        None => source_for(p.rs).map_err(|e| format!("no source address towards {}: {e}", p.rs))?,
    };
    if src.is_ipv4() != p.vip.is_ipv4() {
        return Err(format!("source {src} and VIP {} differ in family", p.vip));
    }
    let mut rng = rand::rng();
    let sport: u16 = rng.random_range(32768..61000);
    let seq: u32 = rng.random();
    let check_arp = p.arp && p.vip.is_ipv4() && !p.tunnel;
    let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
        .map_err(|e| format!("packet socket: {e}"))?;
    // The filter goes on before the socket is bound, so nothing unfiltered
    // is ever queued.
    socket
        .attach_filter(&filter(src, p.vip, p.port, sport, check_arp))
        .map_err(|e| format!("socket filter: {e}"))?;
    let all = (libc::ETH_P_ALL as u16).to_be();
    socket
        .bind(&link_addr(p.ifindex, all, Mac::default()).map_err(|e| e.to_string())?)
        .map_err(|e| format!("bind packet socket: {e}"))?;
    let to = |proto: u16| link_addr(p.ifindex, proto.to_be(), p.rs_mac).map_err(|e| e.to_string());
    if check_arp && let (IpAddr::V4(s), IpAddr::V4(v)) = (src, p.vip) {
        socket
            .send_to(
                &arp_request(p.our_mac, s.octets(), p.rs_mac, v.octets()),
                &to(ETH_ARP)?,
            )
            .map_err(|e| format!("send ARP: {e}"))?;
    }
    let ethertype = if p.vip.is_ipv4() { ETH_IPV4 } else { ETH_IPV6 };
    let syn = tcp_frame(p, src, sport, seq, 0, frames::SYN);
    socket
        .send_to(&syn, &to(ethertype)?)
        .map_err(|e| format!("send SYN: {e}"))?;

    let started = Instant::now();
    let mut deadline = started + p.timeout;
    let mut answer: Option<Answer> = None;
    let mut arp_answered = false;
    let mut buf = [MaybeUninit::<u8>::uninit(); 256];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        socket
            .set_read_timeout(Some(deadline - now))
            .map_err(|e| e.to_string())?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("receive: {e}")),
        };
        // SAFETY: recv initialised the first n bytes.
        let frame: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        match classify(&frame, p.vip) {
            Seen::ArpReply(mac) if mac == p.rs_mac => {
                arp_answered = true;
                if answer.is_some() {
                    break;
                }
            }
            Seen::ArpReply(_) | Seen::Other => {}
            Seen::Tcp { flags, ack } if answer.is_none() => {
                if flags & RST != 0 {
                    answer = Some(Answer::Refused);
                } else if flags & SYN_ACK == SYN_ACK {
                    // Reset the half-open connection on the real server.
                    let rst = tcp_frame(p, src, sport, ack, 0, RST);
                    let _ = socket.send_to(&rst, &to(ethertype)?);
                    answer = Some(Answer::Accepted);
                }
                if !check_arp || arp_answered {
                    break;
                }
                deadline = deadline.min(Instant::now() + ARP_GRACE);
            }
            Seen::Tcp { .. } => {}
        }
    }
    Ok(PathReport {
        answer: answer.unwrap_or(Answer::Silent),
        arp_answered,
    })
}

/// The address the kernel would use to reach `dst`.
pub(super) fn source_for(dst: IpAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if dst.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(SocketAddr::new(dst, 9))?;
    Ok(s.local_addr()?.ip())
}

/// An Ethernet frame carrying a TCP segment (checksums filled in) from
/// `src:sport` to VIP:port, to the real server's MAC.
fn tcp_frame(p: &PathProbe, src: IpAddr, sport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut t = frames::tcp(sport, p.port, flags);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    let sum = checksum(&[&pseudo_header(src, p.vip, TCP, t.len()), &t]);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    let ethertype = if p.vip.is_ipv4() { ETH_IPV4 } else { ETH_IPV6 };
    let ip = ip_packet(src, p.vip, TCP, &t);
    let ip = if p.tunnel {
        encapsulate(src, p.rs, &ip)
    } else {
        ip
    };
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&p.rs_mac.0);
    f.extend_from_slice(&p.our_mac.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// `inner` inside an outer header from `src` to `rs`: IPv4 in IPv4
/// (protocol 4) or IPv6 in IPv6 (next header 41).
fn encapsulate(src: IpAddr, rs: IpAddr, inner: &[u8]) -> Vec<u8> {
    let protocol = if rs.is_ipv4() { 4 } else { 41 };
    ip_packet(src, rs, protocol, inner)
}

/// An IP packet from `src` to `dst` around `payload` (IPv4: don't
/// fragment, header checksum filled in).
pub(super) fn ip_packet(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = frames::ipv4(
                s.octets(),
                d.octets(),
                protocol,
                frames::Frag::default(),
                &[],
                payload,
            );
            h[6] = 0x40; // don't fragment
            let sum = checksum(&[&h[..20]]);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => frames::ipv6(s.octets(), d.octets(), protocol, payload),
        // Families were checked by the caller.
        _ => payload.to_vec(),
    }
}

/// "Who has `vip`? Tell `src`", unicast to the real server.
fn arp_request(our_mac: Mac, src: [u8; 4], rs_mac: Mac, vip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&rs_mac.0);
    f.extend_from_slice(&our_mac.0);
    f.extend_from_slice(&ETH_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&our_mac.0);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&vip);
    f
}

/// What a frame that passed the filter is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    ArpReply(Mac),
    Tcp { flags: u8, ack: u32 },
    Other,
}

/// Reads a frame the filter let through (it is still checked: bounds come
/// from the frame, not from the filter).
pub(crate) fn classify(f: &[u8], vip: IpAddr) -> Seen {
    let ethertype = f.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let tcp_at = match ethertype {
        Some(ETH_ARP) => {
            return match (f.get(20..22), f.get(22..28), f.get(28..32), vip) {
                (Some([0, 2]), Some(mac), Some(ip), IpAddr::V4(v)) if ip == v.octets() => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(mac);
                    Seen::ArpReply(Mac(m))
                }
                _ => Seen::Other,
            };
        }
        Some(ETH_IPV4) => match f.get(14) {
            Some(v) => 14 + usize::from(v & 0x0f) * 4,
            None => return Seen::Other,
        },
        Some(ETH_IPV6) => 54,
        _ => return Seen::Other,
    };
    match (f.get(tcp_at + 8..tcp_at + 12), f.get(tcp_at + 13)) {
        (Some(a), Some(flags)) => Seen::Tcp {
            flags: *flags,
            ack: u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
        },
        _ => Seen::Other,
    }
}

/// A tiny classic-BPF assembler: every test either falls through or drops
/// the frame; the last test of a branch may accept it.
enum Op {
    /// A load (code, k).
    Load(u16, u32),
    /// `A == k` or drop.
    Must(u32),
    /// `A == k`: accept, else drop.
    MustAccept(u32),
    /// `A == k`: fall through, else skip `n` instructions.
    Unless(u32, u8),
}

use crate::net::cbpf::{JEQ_K, LD_B_ABS, LD_H_ABS, LD_H_IND, LD_W_ABS, LDX_B_MSH, RET_K};

fn assemble(ops: &[Op]) -> Vec<SockFilter> {
    let accept = ops.len();
    let drop = accept + 1;
    let mut out: Vec<SockFilter> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let to = |target: usize| (target - i - 1) as u8;
            match *op {
                Op::Load(code, k) => SockFilter::new(code, 0, 0, k),
                Op::Must(k) => SockFilter::new(JEQ_K, 0, to(drop), k),
                Op::MustAccept(k) => SockFilter::new(JEQ_K, to(accept), to(drop), k),
                Op::Unless(k, n) => SockFilter::new(JEQ_K, 0, n, k),
            }
        })
        .collect();
    out.push(SockFilter::new(RET_K, 0, 0, 0x40000));
    out.push(SockFilter::new(RET_K, 0, 0, 0));
    out
}

fn words(a: IpAddr) -> Vec<u32> {
    match a {
        IpAddr::V4(a) => vec![u32::from(a)],
        IpAddr::V6(a) => a
            .octets()
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// Accepts TCP from VIP:port to `src`:`sport` (and, with `arp`, ARP
/// replies whose sender is the VIP); drops everything else.
fn filter(src: IpAddr, vip: IpAddr, port: u16, sport: u16, arp: bool) -> Vec<SockFilter> {
    let mut ops = vec![Op::Load(LD_H_ABS, 12)];
    if vip.is_ipv4() {
        if arp {
            // Not ARP: skip the 4 instructions of the ARP branch.
            ops.push(Op::Unless(u32::from(ETH_ARP), 4));
            ops.push(Op::Load(LD_H_ABS, 20)); // opcode
            ops.push(Op::Must(2));
            ops.push(Op::Load(LD_W_ABS, 28)); // sender protocol address
            ops.push(Op::MustAccept(words(vip)[0]));
        }
        ops.push(Op::Must(u32::from(ETH_IPV4)));
        ops.push(Op::Load(LD_B_ABS, 23));
        ops.push(Op::Must(u32::from(TCP)));
        ops.push(Op::Load(LD_W_ABS, 26));
        ops.push(Op::Must(words(vip)[0]));
        ops.push(Op::Load(LD_W_ABS, 30));
        ops.push(Op::Must(words(src)[0]));
        ops.push(Op::Load(LDX_B_MSH, 14)); // X = IPv4 header length
        ops.push(Op::Load(LD_H_IND, 14));
        ops.push(Op::Must(u32::from(port)));
        ops.push(Op::Load(LD_H_IND, 16));
        ops.push(Op::MustAccept(u32::from(sport)));
    } else {
        // IPv6 without extension headers (a SYN-ACK carries none).
        ops.push(Op::Must(u32::from(ETH_IPV6)));
        ops.push(Op::Load(LD_B_ABS, 20));
        ops.push(Op::Must(u32::from(TCP)));
        for (i, w) in words(vip).into_iter().enumerate() {
            ops.push(Op::Load(LD_W_ABS, 22 + 4 * i as u32));
            ops.push(Op::Must(w));
        }
        for (i, w) in words(src).into_iter().enumerate() {
            ops.push(Op::Load(LD_W_ABS, 38 + 4 * i as u32));
            ops.push(Op::Must(w));
        }
        ops.push(Op::Load(LD_H_ABS, 54));
        ops.push(Op::Must(u32::from(port)));
        ops.push(Op::Load(LD_H_ABS, 56));
        ops.push(Op::MustAccept(u32::from(sport)));
    }
    assemble(&ops)
}

/// One `dr_check` attempt: the probe runs on a blocking thread.
pub(super) async fn dr_path(
    spec: &CheckSpec,
    env: Option<&PathEnv>,
    vip: IpAddr,
    arp: bool,
    tunnel: bool,
) -> Outcome {
    let Some(env) = env else {
        return Outcome::fail("dr_check needs the daemon's interface");
    };
    let rs = spec.target.ip();
    let Some(rs_mac) = env.macs.lock().ok().and_then(|m| m.get(&rs).copied()) else {
        return Outcome::fail(format!("MAC of {rs} not resolved"));
    };
    let Some(link) = env.link.lock().ok().map(|l| *l) else {
        return Outcome::fail("dr_check: interface state unavailable");
    };
    let p = PathProbe {
        ifindex: link.index,
        our_mac: link.mac,
        rs_mac,
        rs,
        src: spec.bindto,
        vip,
        port: spec.target.port(),
        arp,
        tunnel,
        // Well inside the caller's cut (a loaded machine schedules the
        // blocking thread late), so the probe's own verdict is reported.
        timeout: spec.timeout.mul_f64(0.8),
    };
    match tokio::task::spawn_blocking(move || probe(&p)).await {
        Ok(Ok(())) => Outcome::ok(),
        Ok(Err(e)) => Outcome::fail(e),
        Err(e) => Outcome::fail(format!("probe task: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_probe(vip: IpAddr) -> PathProbe {
        PathProbe {
            ifindex: 1,
            our_mac: Mac([2, 0, 0, 0, 0, 1]),
            rs_mac: Mac([2, 0, 0, 0, 0, 2]),
            rs: "10.0.0.2".parse().expect("ip"),
            src: None,
            vip,
            port: 80,
            arp: true,
            tunnel: false,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn frames_carry_valid_checksums() {
        let p = lab_probe("10.0.0.100".parse().expect("ip"));
        let src: IpAddr = "10.0.0.1".parse().expect("ip");
        let f = tcp_frame(&p, src, 40000, 7, 0, frames::SYN);
        assert_eq!(&f[..6], &p.rs_mac.0);
        assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header checksum");
        assert_eq!(
            checksum(&[&pseudo_header(src, p.vip, TCP, f.len() - 34), &f[34..]]),
            0,
            "TCP checksum"
        );
        let v6 = PathProbe {
            vip: "fd00::100".parse().expect("ip"),
            ..p.clone()
        };
        let src6: IpAddr = "fd00::1".parse().expect("ip");
        let f = tcp_frame(&v6, src6, 40000, 7, 0, frames::SYN);
        assert_eq!(
            checksum(&[&pseudo_header(src6, v6.vip, TCP, f.len() - 54), &f[54..]]),
            0
        );
        // Through a tunnel: the same segment inside an outer header to the
        // real server.
        let t = PathProbe {
            tunnel: true,
            rs: "192.168.50.20".parse().expect("ip"),
            ..p.clone()
        };
        let f = tcp_frame(&t, src, 40000, 7, 0, frames::SYN);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14 + 9], 4, "IP-in-IP");
        assert_eq!(&f[14 + 16..14 + 20], &[192, 168, 50, 20]);
        assert_eq!(checksum(&[&f[14..34]]), 0, "outer header checksum");
        assert_eq!(&f[34 + 16..34 + 20], &[10, 0, 0, 100], "inner: to the VIP");
        let t6 = PathProbe {
            tunnel: true,
            rs: "fd00:50::20".parse().expect("ip"),
            ..v6.clone()
        };
        let f = tcp_frame(&t6, src6, 40000, 7, 0, frames::SYN);
        assert_eq!(f[14 + 6], 41, "IPv6 in IPv6");
        assert_eq!(f.len(), 14 + 40 + 40 + 20);
        let a = arp_request(p.our_mac, [10, 0, 0, 1], p.rs_mac, [10, 0, 0, 100]);
        assert_eq!(a.len(), 42);
        assert_eq!(&a[38..42], &[10, 0, 0, 100]);
    }

    #[test]
    fn classifies_answers_and_ignores_garbage() {
        let vip: IpAddr = "10.0.0.100".parse().expect("ip");
        let mut reply = arp_request(
            Mac([2, 0, 0, 0, 0, 2]),
            [10, 0, 0, 100],
            Mac([0; 6]),
            [1; 4],
        );
        reply[21] = 2;
        assert_eq!(
            classify(&reply, vip),
            Seen::ArpReply(Mac([2, 0, 0, 0, 0, 2]))
        );
        let p = lab_probe(vip);
        let f = tcp_frame(&p, "10.0.0.1".parse().expect("ip"), 1, 2, 99, 0x12);
        assert_eq!(
            classify(&f, vip),
            Seen::Tcp {
                flags: 0x12,
                ack: 99
            }
        );
        for n in 0..f.len() {
            let _ = classify(&f[..n], vip);
        }
        assert_eq!(classify(&[], vip), Seen::Other);
    }

    #[test]
    fn filter_jumps_stay_inside_the_program() {
        for (src, vip) in [("10.0.0.1", "10.0.0.100"), ("fd00::1", "fd00::100")] {
            let f = filter(
                src.parse().expect("ip"),
                vip.parse().expect("ip"),
                80,
                40000,
                true,
            );
            // The kernel refuses a program with a jump out of it.
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("socket");
            s.attach_filter(&f).expect("the kernel accepts the filter");
        }
    }
}
