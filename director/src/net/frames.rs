//! Building Ethernet frames: `dr_check`'s probes, and the XDP program's tests and benchmarks
//! (BPF_PROG_TEST_RUN). Checksums are left zero: XDP does not check them.

use std::net::IpAddr;

/// MAC of the test client.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC of the director (the frame's destination).
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

/// TCP flags byte: SYN.
pub const SYN: u8 = director_common::TCP_SYN;
/// TCP flags byte: ACK.
pub const ACK: u8 = director_common::TCP_ACK;
/// TCP flags byte: FIN.
pub const FIN: u8 = director_common::TCP_FIN;

/// A TCP header (20 bytes) with `flags`.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    h
}

/// A UDP header with `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// IPv4 fragment fields: more-fragments flag and offset in 8-byte units.
#[derive(Debug, Clone, Copy, Default)]
pub struct Frag {
    pub more: bool,
    pub offset: u16,
}

/// An IPv4 packet (header with `options`, padded to 4 bytes) around `payload`.
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    frag: Frag,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let opt_len = options.len().div_ceil(4) * 4;
    let ihl = 20 + opt_len;
    let mut h = vec![0u8; ihl];
    h[0] = 0x40 | (ihl / 4) as u8;
    h[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    let frags = (u16::from(frag.more) << 13) | (frag.offset & 0x1fff);
    h[6..8].copy_from_slice(&frags.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h[20..20 + options.len()].copy_from_slice(options);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 packet around `payload` (`next` is the first next-header).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 fragment extension header.
pub fn ipv6_fragment(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next;
    h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h
}

/// An Ethernet frame from the client to the director.
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&DIRECTOR_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A TCP segment from `src:sport` to `dst:dport` in a frame (v4 or v6).
pub fn tcp_frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Vec<u8> {
    l4_frame(src, dst, 6, &tcp(sport, dport, flags))
}

/// A UDP datagram from `src:sport` to `dst:dport` in a frame.
pub fn udp_frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    l4_frame(src, dst, 17, &udp(sport, dport, b"hello"))
}

/// `payload` of IP protocol `protocol` in a frame.
pub fn l4_frame(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet(
            0x0800,
            &ipv4(
                s.octets(),
                d.octets(),
                protocol,
                Frag::default(),
                &[],
                payload,
            ),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ethernet(0x86dd, &ipv6(s.octets(), d.octets(), protocol, payload))
        }
        _ => panic!("mixed address families"),
    }
}

/// An ICMP error (`kind`, `code`) from `from` to `to`, quoting `quoted` (an
/// IP packet as the real server sent it).
pub fn icmp_error_frame(from: IpAddr, to: IpAddr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(quoted);
    let protocol = if from.is_ipv4() { 1 } else { 58 };
    l4_frame(from, to, protocol, &icmp)
}
