//! `ping_check` (and VRRP's `track_gateway`): one ICMP echo, matched by
//! its identifier and sequence number.

use std::{
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// One ICMP echo to `address`; whether the matching reply came within
/// `wait` (blocking: run it off the VRRP loop).
pub fn ping(address: IpAddr, seq: u16, wait: Duration) -> bool {
    let v6 = address.is_ipv6();
    let socket = match Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::RAW,
        Some(if v6 {
            Protocol::ICMPV6
        } else {
            Protocol::ICMPV4
        }),
    ) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let id = (std::process::id() & 0xffff) as u16;
    let mut echo = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    echo.extend_from_slice(&id.to_be_bytes());
    echo.extend_from_slice(&seq.to_be_bytes());
    echo.extend_from_slice(b"director-gateway");
    if !v6 {
        // ICMPv6 checksums are filled in by the kernel; ICMPv4 ones are ours.
        let sum = crate::net::wire::checksum(&[&echo]);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    if socket
        .send_to(&echo, &SockAddr::from(SocketAddr::new(address, 0)))
        .is_err()
    {
        return false;
    }
    let deadline = std::time::Instant::now() + wait;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let now = std::time::Instant::now();
        if now >= deadline || socket.set_read_timeout(Some(deadline - now)).is_err() {
            return false;
        }
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            return false;
        };
        // SAFETY: recv_from initialised the first n bytes.
        let b: Vec<u8> = buf[..n]
            .iter()
            .map(|x| unsafe { x.assume_init() })
            .collect();
        // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
        let icmp = if v6 {
            &b[..]
        } else {
            let ihl = usize::from(b.first().map_or(0, |v| v & 0x0f)) * 4;
            match b.get(ihl..) {
                Some(icmp) => icmp,
                None => continue,
            }
        };
        let reply = if v6 { 129 } else { 0 };
        if from.as_socket().map(|a| a.ip()) == Some(address)
            && icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return true;
        }
    }
}
