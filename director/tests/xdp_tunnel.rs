//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): Tunnel real servers: IP-in-IP and IPv6-in-IPv6
//! encapsulation (headers and checksums), and ICMP "fragmentation needed" /
//! "packet too big" for packets the tunnel makes too big.

mod common;

use common::*;

/// A tunnel service wraps the client's packet, untouched, in an outer
/// IPv4 header (IP-in-IP) to the real server, from 172.16.0.0/16 varying
/// with the flow, sent to the next hop's MAC.
#[test]
fn tunnel_services_encapsulate_ipip_and_ip6ip6() {
    let dp = loaded(&[
        tunnel_service("10.0.0.100", &[("192.168.50.20", 1)]),
        tunnel_service("fd00::100", &[("fd00:50::20", 1)]),
    ]);
    let mut sources = std::collections::BTreeSet::new();
    for port in 0..64u16 {
        let frame = frames::tcp_frame(ip("10.4.0.1"), 40000 + port, ip("10.0.0.100"), 80, SYN);
        let (verdict, out, _) = dp.test_run(&frame, 1).expect("test run");
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out.len(), frame.len() + 20, "one outer IPv4 header");
        assert_eq!(&out[..6], &mac_of(1).0, "to the next hop");
        assert_eq!(&out[6..12], &DIRECTOR_MAC, "from us");
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        let outer = &out[14..34];
        assert_eq!(outer[0], 0x45);
        assert_eq!(
            u16::from_be_bytes([outer[2], outer[3]]) as usize,
            frame.len() - 14 + 20
        );
        assert_eq!(outer[6] & 0x40, 0x40, "don't fragment");
        assert_eq!(outer[9], 4, "IP-in-IP");
        assert_eq!(&outer[12..14], &[172, 16]);
        assert_eq!(&outer[16..20], &[192, 168, 50, 20]);
        assert_eq!(checksum(outer), 0, "outer header checksum");
        assert_eq!(&out[34..], &frame[14..], "the inner packet untouched");
        sources.insert([outer[14], outer[15]]);
    }
    assert!(
        sources.len() > 32,
        "outer sources vary by flow: {sources:?}"
    );

    let frame = frames::tcp_frame(ip("fd00:1::1"), 40000, ip("fd00::100"), 80, SYN);
    let (verdict, out, _) = dp.test_run(&frame, 1).expect("test run");
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), frame.len() + 40, "one outer IPv6 header");
    assert_eq!(&out[..6], &mac_of(1).0);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let outer = &out[14..54];
    assert_eq!(outer[0] >> 4, 6);
    assert_eq!(
        u16::from_be_bytes([outer[4], outer[5]]) as usize,
        frame.len() - 14
    );
    assert_eq!(outer[6], 41, "IPv6 in IPv6");
    assert_eq!(&outer[8..14], &[0xfd, 0x00, 0x74, 0x75, 0x6e, 0x6c]);
    assert_eq!(
        &outer[24..40],
        &ip("fd00:50::20")
            .to_string()
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets()
    );
    assert_eq!(&out[54..], &frame[14..]);
}

/// A packet that would not fit the interface's MTU once wrapped: the
/// client gets an ICMP "fragmentation needed" / ICMPv6 "packet too big"
/// from the VIP with the MTU left inside the tunnel; without DF (IPv4) it
/// is dropped (XDP cannot fragment).
#[test]
fn oversized_tunnel_packets_get_icmp_too_big() {
    let dp = loaded(&[
        tunnel_service("10.0.0.100", &[("192.168.50.20", 1)]),
        tunnel_service("fd00::100", &[("fd00:50::20", 1)]),
    ]);
    // 1500 bytes of IP: 20 more do not fit a 1500 MTU.
    let payload = vec![0x5au8; 1500 - 20 - 20];
    let mut segment = frames::tcp(40000, 80, ACK);
    segment.extend_from_slice(&payload);
    let mut frame = frames::l4_frame(ip("10.4.0.1"), ip("10.0.0.100"), 6, &segment);
    let (verdict, _, _) = dp.test_run(&frame, 1).expect("test run");
    assert_eq!(verdict, 1, "no DF: dropped");
    frame[14 + 6] |= 0x40; // DF
    let (verdict, out, _) = dp.test_run(&frame, 1).expect("test run");
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        out.len(),
        14 + 20 + 8 + 64,
        "Ethernet, IPv4, ICMP, 64 quoted bytes"
    );
    assert_eq!(&out[..6], &CLIENT_MAC, "back to the client");
    assert_eq!(&out[6..12], &DIRECTOR_MAC);
    let h = &out[14..34];
    assert_eq!(h[9], 1, "ICMP");
    assert_eq!(&h[12..16], &[10, 0, 0, 100], "from the VIP");
    assert_eq!(&h[16..20], &[10, 4, 0, 1], "to the client");
    assert_eq!(checksum(h), 0, "IPv4 header checksum");
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1480,
        "the MTU inside the tunnel"
    );
    assert_eq!(checksum(icmp), 0, "ICMP checksum");
    assert_eq!(
        &icmp[8..],
        &frame[14..14 + 64],
        "quotes the client's packet"
    );

    let payload = vec![0x5au8; 1500 - 40 - 20];
    let mut segment = frames::tcp(40000, 80, ACK);
    segment.extend_from_slice(&payload);
    let frame = frames::l4_frame(ip("fd00:1::1"), ip("fd00::100"), 6, &segment);
    let (verdict, out, _) = dp.test_run(&frame, 1).expect("test run");
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), 14 + 40 + 8 + 256);
    assert_eq!(&out[..6], &CLIENT_MAC);
    let h = &out[14..54];
    assert_eq!(h[6], 58, "ICMPv6");
    assert_eq!(&h[8..24], &frame[14 + 24..14 + 40], "from the VIP");
    assert_eq!(&h[24..40], &frame[14 + 8..14 + 24], "to the client");
    let icmp = &out[54..];
    assert_eq!(icmp[0], 2, "packet too big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1460
    );
    // The checksum covers the pseudo-header.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&h[8..40]);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(icmp);
    assert_eq!(checksum(&pseudo), 0, "ICMPv6 checksum");
    assert_eq!(&icmp[8..], &frame[14..14 + 256]);

    // A packet that fits is wrapped.
    let frame = frames::tcp_frame(ip("10.4.0.1"), 40001, ip("10.0.0.100"), 80, SYN);
    assert_eq!(dp.test_run(&frame, 1).expect("test run").0, XDP_TX);
}
