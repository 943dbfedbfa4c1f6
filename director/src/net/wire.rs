//! Wire helpers both VRRP and the health checks use: the Internet
//! checksum with its pseudo-headers, and packet-socket addresses.

use std::{io, net::IpAddr};

use socket2::SockAddr;

use crate::net::neighbor::Mac;

/// The Internet checksum (RFC 1071) of `parts` concatenated.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for b in part.iter() {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, *b])),
                None => odd = Some(*b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 or IPv6 pseudo-header of an upper-layer checksum.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, protocol]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            p.extend_from_slice(&v6(src));
            p.extend_from_slice(&v6(dst));
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, protocol]);
        }
    }
    p
}

/// A packet-socket address: `ifindex`, EtherType `proto` (network order),
/// destination `mac`.
pub fn link_addr(ifindex: u32, proto: u16, mac: Mac) -> io::Result<SockAddr> {
    // SAFETY: a zeroed sockaddr_ll, then filled in; its size is passed on.
    unsafe {
        let (_, addr) = SockAddr::try_init(|storage, len| {
            let ll = storage as *mut libc::sockaddr_ll;
            (*ll).sll_family = libc::AF_PACKET as u16;
            (*ll).sll_protocol = proto;
            (*ll).sll_ifindex = ifindex as i32;
            (*ll).sll_halen = 6;
            (&mut (*ll).sll_addr)[..6].copy_from_slice(&mac.0);
            *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })?;
        Ok(addr)
    }
}
