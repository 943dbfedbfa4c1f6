//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): Forwarding by MAC rewrite: a TCP flow sticks to its
//! real server, other traffic passes untouched, UDP and IPv6 services,
//! truncated frames and IPv4 options, counters, unresolved servers, weights,
//! and `[[virtual_server_group]]` members, ranges and precedence.

mod common;

use common::*;

#[test]
fn tcp_to_a_vip_is_forwarded_and_flows_stick() {
    let dp = loaded(&web());
    let mut seen = BTreeSet::new();
    for port in 1000..1300u16 {
        let f = frames::tcp_frame(ip("10.1.0.1"), port, ip("10.0.0.100"), 80, SYN);
        let (v, mac) = run(&dp, &f);
        assert_eq!(v, XDP_TX);
        seen.insert(mac);
        // Later packets of the same flow go to the same server.
        let f = frames::tcp_frame(ip("10.1.0.1"), port, ip("10.0.0.100"), 80, ACK);
        assert_eq!(run(&dp, &f), (XDP_TX, mac));
    }
    let expected: BTreeSet<[u8; 6]> = (1..=3).map(|i| mac_of(i).0).collect();
    assert_eq!(seen, expected, "all three servers get flows");
}

#[test]
fn other_traffic_passes_untouched() {
    let dp = loaded(&web());
    for f in [
        // Not a VIP.
        frames::tcp_frame(ip("10.1.0.1"), 1000, ip("10.0.0.10"), 80, SYN),
        // A VIP, but a port without a service.
        frames::tcp_frame(ip("10.1.0.1"), 1000, ip("10.0.0.100"), 22, SYN),
        // A VIP and port, but the other protocol.
        frames::udp_frame(ip("10.1.0.1"), 1000, ip("10.0.0.100"), 80),
        // ICMP echo to the VIP.
        frames::l4_frame(
            ip("10.1.0.1"),
            ip("10.0.0.100"),
            1,
            &[8, 0, 0, 0, 0, 1, 0, 1],
        ),
        // ARP.
        frames::ethernet(0x0806, &[0u8; 28]),
        // A VLAN-tagged frame (not handled: the kernel's).
        frames::ethernet(0x8100, &[0, 5, 0x08, 0x00, 0x45, 0, 0, 40]),
        // IPv6 to a non-VIP.
        frames::tcp_frame(ip("fd00::1"), 1000, ip("fd00::10"), 80, SYN),
        // To a VIP, but flooded to us: addressed to another MAC.
        {
            let mut f = frames::tcp_frame(ip("10.1.0.1"), 1000, ip("10.0.0.100"), 80, SYN);
            f[5] ^= 0xff;
            f
        },
    ] {
        assert_eq!(run(&dp, &f).0, XDP_PASS, "{f:02x?}");
    }
}

#[test]
fn udp_and_ipv6_services() {
    let dp = loaded(&web());
    let f = frames::udp_frame(ip("10.1.0.1"), 5353, ip("10.0.0.100"), 53);
    let (v, mac) = run(&dp, &f);
    assert_eq!(v, XDP_TX);
    assert!(mac == mac_of(1).0 || mac == mac_of(2).0);
    let f = frames::tcp_frame(ip("fd00::1:1"), 40000, ip("fd00::100"), 80, SYN);
    assert_eq!(run(&dp, &f).0, XDP_TX);
}

#[test]
fn truncated_frames_never_abort_or_read_past_the_end() {
    let dp = loaded(&web());
    for full in [
        frames::tcp_frame(ip("10.1.0.1"), 1000, ip("10.0.0.100"), 80, SYN),
        frames::tcp_frame(ip("fd00::1"), 1000, ip("fd00::100"), 80, SYN),
    ] {
        // Without the destination port nothing can be matched.
        let ports_end = if full[12] == 0x08 {
            14 + 20 + 4
        } else {
            14 + 40 + 4
        };
        // BPF_PROG_TEST_RUN needs at least an Ethernet header.
        for len in 14..full.len() {
            let (v, _) = run(&dp, &full[..len]);
            if len < ports_end {
                assert_eq!(v, XDP_PASS, "len {len}");
            }
        }
    }
}

#[test]
fn ipv4_options_are_handled() {
    let dp = loaded(&web());
    let tcp = frames::tcp(1234, 80, SYN);
    let opts = [0x94, 0x04, 0, 0]; // router alert
    let f = frames::ethernet(
        0x0800,
        &frames::ipv4(
            [10, 1, 0, 1],
            [10, 0, 0, 100],
            6,
            Frag::default(),
            &opts,
            &tcp,
        ),
    );
    assert_eq!(run(&dp, &f).0, XDP_TX);
    // A header length below 20 bytes is malformed: the kernel's.
    let mut bad = f.clone();
    bad[14] = 0x44;
    assert_eq!(run(&dp, &bad).0, XDP_PASS);
}

#[test]
fn counters_count_packets_bytes_and_new_flows() {
    let plan = web();
    let dp = loaded(&plan);
    let mut per_mac: BTreeMap<[u8; 6], u64> = BTreeMap::new();
    let mut bytes = 0u64;
    for p in 0..50u16 {
        for flags in [SYN, ACK, ACK] {
            let f = frames::tcp_frame(ip("10.8.0.1"), 5000 + p, ip("10.0.0.100"), 80, flags);
            bytes += f.len() as u64;
            *per_mac.entry(run(&dp, &f).1).or_default() += 1;
        }
    }
    let t = dp.service_traffic(&plan[0]).expect("counters");
    assert_eq!(t.packets, 150);
    assert_eq!(t.bytes, bytes);
    assert_eq!(t.new_flows, 50);
    for (i, b) in plan[0].backends.iter().enumerate() {
        let t = dp.backend_traffic(&plan[0], b.address).expect("counters");
        let want = per_mac.get(&mac_of(i as u8 + 1).0).copied().unwrap_or(0);
        assert_eq!(t.packets, want, "{}", b.address);
        assert_eq!(t.new_flows * 3, want);
    }
}

#[test]
fn unresolved_servers_get_nothing() {
    let mut plan = web();
    plan[0].backends[0].mac = None;
    plan[0].backends[2].mac = None;
    let dp = loaded(&plan);
    for p in 0..100u16 {
        let f = frames::tcp_frame(ip("10.9.0.1"), p + 1, ip("10.0.0.100"), 80, SYN);
        assert_eq!(run(&dp, &f), (XDP_TX, mac_of(2).0));
    }
    let mut none = web();
    for b in &mut none[0].backends {
        b.mac = None;
    }
    let dp = loaded(&none);
    let f = frames::tcp_frame(ip("10.9.0.1"), 1, ip("10.0.0.100"), 80, SYN);
    assert_eq!(run(&dp, &f).0, XDP_PASS, "no usable server: the kernel's");
}

/// The in-kernel placement honours weights: 1:2:3 over 6,000 new flows
/// (distinct clients and ports) gives shares of 1/6, 2/6, 3/6 within 2.5
/// points each; IPv6 likewise.
#[test]
fn weights_shape_the_shares_of_new_flows() {
    let servers = [("10.0.0.20", 1), ("10.0.0.21", 2), ("10.0.0.22", 3)];
    let servers6 = [("fd00::20", 1), ("fd00::21", 2), ("fd00::22", 3)];
    let dp = loaded(&[
        service("10.0.0.100", 80, Protocol::Tcp, &servers),
        service("fd00::100", 80, Protocol::Tcp, &servers6),
    ]);
    const N: u32 = 6000;
    for v6 in [false, true] {
        let mut count: BTreeMap<[u8; 6], u32> = BTreeMap::new();
        for i in 0..N {
            let (src, vip) = if v6 {
                (
                    IpAddr::from([
                        0xfd,
                        9,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        (i >> 8) as u8,
                        i as u8,
                    ]),
                    ip("fd00::100"),
                )
            } else {
                (
                    IpAddr::from([10, 9, (i >> 8) as u8, i as u8]),
                    ip("10.0.0.100"),
                )
            };
            let f = frames::tcp_frame(src, 1024 + (i % 50_000) as u16, vip, 80, SYN);
            let (v, mac) = run(&dp, &f);
            assert_eq!(v, XDP_TX);
            *count.entry(mac).or_default() += 1;
        }
        for (i, weight) in [1u32, 2, 3].iter().enumerate() {
            let got =
                f64::from(count.get(&mac_of(i as u8 + 1).0).copied().unwrap_or(0)) / f64::from(N);
            let want = f64::from(*weight) / 6.0;
            assert!(
                (got - want).abs() < 0.025,
                "IPv6 {v6}: server {} (weight {weight}) got {:.1}% of new flows, want {:.1}%",
                i + 1,
                got * 100.0,
                want * 100.0
            );
        }
    }
}

/// A group's members: a port range, an address range with a port, an
/// address on every port, and IPv6; a plain service on a port inside a
/// range takes precedence; other ports pass. Fragments of a member address
/// are forwarded too.
#[test]
fn group_members_ranges_and_precedence() {
    use director::config::GroupMember;
    let member = |s: &str| GroupMember::parse(s).expect("member");
    let mut group = service(
        "10.0.0.100",
        8000,
        Protocol::Tcp,
        &[("10.0.0.20", 1), ("10.0.0.21", 1)],
    );
    group.members = vec![
        member("10.0.0.100 8000-8010"),
        member("10.0.0.101-103 443"),
        member("10.0.0.104"),
    ];
    let mut group6 = service("fd00::100", 8000, Protocol::Tcp, &[("fd00::20", 1)]);
    group6.members = vec![member("fd00::100-102 8000-8001")];
    // A plain service inside the range, with its own server.
    let mut plain = service("10.0.0.100", 8005, Protocol::Tcp, &[("10.0.0.22", 1)]);
    plain.backends[0].mac = Some(mac_of(9));
    let mut udp = service("10.0.0.110", 53, Protocol::Udp, &[("10.0.0.20", 1)]);
    udp.members = vec![member("10.0.0.110-111 53")];
    let dp = loaded(&[group, group6, plain, udp]);
    let group_macs = [mac_of(1).0, mac_of(2).0];
    let tx = |vip: &str, port: u16| {
        let src = if vip.contains(':') {
            "fd00::1:1"
        } else {
            "10.1.0.1"
        };
        run(
            &dp,
            &frames::tcp_frame(ip(src), 40000 + port % 1000, ip(vip), port, SYN),
        )
    };
    for port in [8000, 8001, 8004, 8006, 8007, 8008, 8009, 8010] {
        let (v, mac) = tx("10.0.0.100", port);
        assert_eq!(v, XDP_TX, "port {port}");
        assert!(group_macs.contains(&mac), "port {port}");
    }
    assert_eq!(
        tx("10.0.0.100", 8005),
        (XDP_TX, mac_of(9).0),
        "the plain service wins"
    );
    for vip in ["10.0.0.101", "10.0.0.102", "10.0.0.103"] {
        let (v, mac) = tx(vip, 443);
        assert_eq!(v, XDP_TX, "{vip}");
        assert!(group_macs.contains(&mac));
    }
    for port in [1, 22, 443, 9999, 65535] {
        assert_eq!(
            tx("10.0.0.104", port).0,
            XDP_TX,
            "every port of 10.0.0.104: {port}"
        );
    }
    for (vip, port) in [
        ("10.0.0.100", 7999),
        ("10.0.0.100", 8011),
        ("10.0.0.100", 443),
        ("10.0.0.101", 444),
        ("10.0.0.105", 443),
        ("10.0.0.99", 443),
    ] {
        assert_eq!(tx(vip, port).0, XDP_PASS, "{vip}:{port}");
    }
    for vip in ["fd00::100", "fd00::101", "fd00::102"] {
        assert_eq!(tx(vip, 8001), (XDP_TX, mac_of(1).0), "{vip}");
        assert_eq!(tx(vip, 8002).0, XDP_PASS, "{vip}:8002");
    }
    assert_eq!(tx("fd00::103", 8000).0, XDP_PASS);
    // A later fragment to a member address (its first was not seen).
    let (_, later) = fragmented([10, 1, 0, 9], [10, 0, 0, 111], 5000, 77);
    assert_eq!(run(&dp, &later).0, XDP_TX, "a fragment to a member address");
}
