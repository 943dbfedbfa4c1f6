//! A hostile VRRP sender for the lab: raw IPv4 packets with any TTL,
//! header and payload, to 224.0.0.18 on an interface (run it inside a
//! host's namespace, e.g. through `Node::run`).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// VRRP's multicast group.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// Sends hand-made IPv4 packets carrying VRRP (IP_HDRINCL).
pub struct Injector {
    socket: Socket,
    to: SockAddr,
}

impl Injector {
    pub fn open(interface: &str) -> Result<Injector> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))
            .context("raw socket (needs root)")?;
        socket.set_header_included_v4(true)?;
        socket.bind_device(Some(interface.as_bytes()))?;
        socket.set_multicast_if_v4(&Ipv4Addr::UNSPECIFIED).ok();
        Ok(Injector {
            socket,
            to: SockAddr::from(SocketAddrV4::new(GROUP, 0)),
        })
    }

    /// Sends `vrrp` from `src` with `ttl` (the kernel fills in the IP
    /// checksum and id).
    pub fn send(&self, src: Ipv4Addr, ttl: u8, vrrp: &[u8]) -> Result<()> {
        self.send_to(src, GROUP, ttl, vrrp)
    }

    /// [`Injector::send`] to `dst` (a host's unicast address, say).
    pub fn send_to(&self, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, vrrp: &[u8]) -> Result<()> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + vrrp.len()) as u16).to_be_bytes());
        p[8] = ttl;
        p[9] = 112;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p.extend_from_slice(vrrp);
        let to = if dst == GROUP {
            self.to.clone()
        } else {
            SockAddr::from(SocketAddrV4::new(dst, 0))
        };
        self.socket.send_to(&p, &to)?;
        Ok(())
    }
}

/// The Internet checksum (RFC 1071); written here independently of the
/// daemon's, so the test does not trust the code it tests.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A VRRPv2 advert (RFC 3768 5.1; valid unless the caller spoils it).
pub fn advert_v2(
    vrid: u8,
    priority: u8,
    interval_s: u8,
    vip: Ipv4Addr,
    password: Option<&str>,
) -> Vec<u8> {
    let mut b = vec![
        0x21,
        vrid,
        priority,
        1,
        u8::from(password.is_some()),
        interval_s,
        0,
        0,
    ];
    b.extend_from_slice(&vip.octets());
    let mut auth = [0u8; 8];
    for (o, c) in auth.iter_mut().zip(password.unwrap_or("").bytes()) {
        *o = c;
    }
    b.extend_from_slice(&auth);
    let sum = checksum(&b);
    b[6..8].copy_from_slice(&sum.to_be_bytes());
    b
}

/// One hostile packet of each kind a director must drop, with the reject
/// reason it must be counted under: (reason, ttl, payload).
pub fn hostile_set(vrid: u8, vip: Ipv4Addr, password: &str) -> Vec<(&'static str, u8, Vec<u8>)> {
    let good = advert_v2(vrid, 254, 1, vip, Some(password));
    let mut bad_sum = good.clone();
    bad_sum[6] ^= 0xff;
    let mut version = advert_v2(vrid, 254, 1, vip, Some(password));
    version[0] = 0x41;
    let mut zero_interval = advert_v2(vrid, 254, 1, vip, Some(password));
    zero_interval[5] = 0;
    // Fix the checksum so only the interval is wrong.
    zero_interval[6..8].copy_from_slice(&[0, 0]);
    let sum = checksum(&zero_interval);
    zero_interval[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut long_count = good.clone();
    long_count[3] = 9;
    vec![
        // A higher priority from a sender without the password.
        ("auth", 255, advert_v2(vrid, 254, 1, vip, Some("wrong"))),
        ("checksum", 255, bad_sum),
        // The right password, but from off the link (TTL below 255).
        ("ttl", 64, good.clone()),
        ("version", 255, version),
        (
            "vrid",
            255,
            advert_v2(vrid.wrapping_add(1), 254, 1, vip, Some(password)),
        ),
        ("short", 255, good[..6].to_vec()),
        ("length", 255, long_count),
        ("interval", 255, zero_interval),
    ]
}
