//! The XDP program run through BPF_PROG_TEST_RUN on crafted frames: the
//! verdict, the rewritten MACs, and that nothing else in the frame changes.
//! Needs root (it loads a BPF program), not a network namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use director::{
    config::{Protocol, Scheduler},
    dataplane::xdp::XdpDataplane,
    frames::{self, ACK, CLIENT_MAC, DIRECTOR_MAC, FIN, Frag, SYN},
};

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
fn fragments_of_a_datagram_go_to_one_server() {
    let dp = loaded(&web());
    for client in 1..40u8 {
        let src = [10, 2, 0, client];
        let first = frames::ethernet(
            0x0800,
            &frames::ipv4(
                src,
                [10, 0, 0, 100],
                17,
                Frag {
                    more: true,
                    offset: 0,
                },
                &[],
                &frames::udp(999, 53, &[0u8; 64]),
            ),
        );
        let second = frames::ethernet(
            0x0800,
            &frames::ipv4(
                src,
                [10, 0, 0, 100],
                17,
                Frag {
                    more: false,
                    offset: 9,
                },
                &[],
                &[0u8; 40],
            ),
        );
        let (v1, m1) = run(&dp, &first);
        let (v2, m2) = run(&dp, &second);
        assert_eq!((v1, v2), (XDP_TX, XDP_TX));
        assert_eq!(m1, m2, "fragments of one datagram split across servers");
    }
    // IPv6: fragment header, then TCP in the first fragment only.
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip("fd00::2:1"), ip("fd00::100")) else {
        unreachable!()
    };
    let mut p1 = frames::ipv6_fragment(6, 0, true, 7);
    p1.extend_from_slice(&frames::tcp(999, 80, SYN));
    let first = frames::ethernet(0x86dd, &frames::ipv6(s.octets(), d.octets(), 44, &p1));
    let mut p2 = frames::ipv6_fragment(6, 3, false, 7);
    p2.extend_from_slice(&[0u8; 24]);
    let second = frames::ethernet(0x86dd, &frames::ipv6(s.octets(), d.octets(), 44, &p2));
    let (v1, m1) = run(&dp, &first);
    let (v2, m2) = run(&dp, &second);
    assert_eq!((v1, v2), (XDP_TX, XDP_TX));
    assert_eq!(m1, m2);
}

#[test]
fn icmp_errors_follow_the_flow_they_quote() {
    let dp = loaded(&web());
    let client = ip("10.3.0.1");
    for port in 2000..2050u16 {
        let syn = frames::tcp_frame(client, port, ip("10.0.0.100"), 80, SYN);
        let (_, mac) = run(&dp, &syn);
        // The real server's reply VIP:80 -> client:port, quoted by a router.
        let quoted = frames::ipv4(
            [10, 0, 0, 100],
            [10, 3, 0, 1],
            6,
            Frag::default(),
            &[],
            &frames::tcp(80, port, ACK)[..8],
        );
        let err = frames::icmp_error_frame(ip("10.9.9.9"), ip("10.0.0.100"), 3, 4, &quoted);
        assert_eq!(run(&dp, &err), (XDP_TX, mac), "port {port}");
        // Other ICMP errors (port unreachable) are the kernel's.
        let other = frames::icmp_error_frame(ip("10.9.9.9"), ip("10.0.0.100"), 3, 3, &quoted);
        assert_eq!(run(&dp, &other).0, XDP_PASS);
    }
    // ICMPv6 packet too big.
    let client = ip("fd00::3:1");
    let syn = frames::tcp_frame(client, 3000, ip("fd00::100"), 80, SYN);
    let (_, mac) = run(&dp, &syn);
    let (IpAddr::V6(c), IpAddr::V6(v)) = (client, ip("fd00::100")) else {
        unreachable!()
    };
    let quoted = frames::ipv6(v.octets(), c.octets(), 6, &frames::tcp(80, 3000, ACK)[..8]);
    let err = frames::icmp_error_frame(ip("fd00::9"), ip("fd00::100"), 2, 0, &quoted);
    assert_eq!(run(&dp, &err), (XDP_TX, mac));
    // A bogus quoted header: passed.
    let err = frames::icmp_error_frame(ip("fd00::9"), ip("fd00::100"), 2, 0, &[0u8; 12]);
    assert_eq!(run(&dp, &err).0, XDP_PASS);
}

/// Flows placed while a real server is out of its pool (failed checks) are
/// shared by flow sync before the server is back: exactly the flows the
/// recovered pool's table would move, which a peer that sees the recovery
/// first (or alone, this director dead) would otherwise send elsewhere.
#[test]
fn flows_placed_while_a_server_is_out_are_shared_before_it_returns() {
    let mut plan = web();
    plan[0].backends[1].weight = 0;
    plan[0].backends[1].failed = true;
    let mut dp = loaded(&plan);
    let out = mac_of(2).0;
    for p in 0..300u16 {
        let f = frames::tcp_frame(ip("10.6.0.1"), 30000 + p, ip("10.0.0.100"), 80, SYN);
        assert_ne!(run(&dp, &f).1, out, "a new flow went to a failed server");
    }
    // The flows flow sync shares now, by client port, sorted.
    let shared_now = |dp: &director::dataplane::xdp::XdpDataplane| {
        let mut ports: Vec<_> = dp
            .exception_flows(1 << 16)
            .expect("scan")
            .iter()
            .map(|f| f.flow.sport)
            .collect();
        ports.sort();
        ports
    };
    let shared = shared_now(&dp);
    // The server is back: the flows its return would move are exceptions
    // now, by the current table; they must be those shared before.
    plan[0].backends[1].weight = 1;
    plan[0].backends[1].failed = false;
    dp.apply(&plan, 300, link()).expect("apply");
    let moved = shared_now(&dp);
    assert!(
        moved.len() > 50,
        "the return moved only {} of 300 flows",
        moved.len()
    );
    assert_eq!(shared, moved, "flows shared before the return");
}

#[test]
fn draining_keeps_flows_and_removal_rehashes_them() {
    let mut plan = web();
    let mut dp = loaded(&plan);
    let flows: Vec<Vec<u8>> = (0..300u16)
        .map(|p| frames::tcp_frame(ip("10.4.0.1"), 10000 + p, ip("10.0.0.100"), 80, SYN))
        .collect();
    let before: Vec<[u8; 6]> = flows.iter().map(|f| run(&dp, f).1).collect();
    let drained = mac_of(2).0;
    assert!(before.contains(&drained));

    // Weight 0: existing flows stay, new flows avoid the server.
    plan[0].backends[1].weight = 0;
    dp.apply(&plan, 300, link()).expect("apply");
    let acks: Vec<Vec<u8>> = (0..300u16)
        .map(|p| frames::tcp_frame(ip("10.4.0.1"), 10000 + p, ip("10.0.0.100"), 80, ACK))
        .collect();
    let after: Vec<[u8; 6]> = acks.iter().map(|f| run(&dp, f).1).collect();
    assert!(before == after, "draining moved established flows");
    for p in 0..300u16 {
        let f = frames::tcp_frame(ip("10.5.0.1"), 20000 + p, ip("10.0.0.100"), 80, SYN);
        assert_ne!(
            run(&dp, &f).1,
            drained,
            "a new flow went to a draining server"
        );
    }
    // A new connection reusing the 5-tuple of a draining flow (a SYN) is
    // placed again; the old flow's other packets are not affected before it.
    let reused: Vec<usize> = (0..flows.len()).filter(|i| before[*i] == drained).collect();
    assert!(!reused.is_empty());
    for i in &reused {
        let port = 10000 + *i as u16;
        let ack = frames::tcp_frame(ip("10.4.0.1"), port, ip("10.0.0.100"), 80, ACK);
        assert_eq!(
            run(&dp, &ack).1,
            drained,
            "an established flow left a draining server"
        );
        assert_ne!(
            run(&dp, &flows[*i]).1,
            drained,
            "a reused port reopened a draining server"
        );
    }

    // Removal: its flows are placed again; the others do not move.
    plan[0].backends.remove(1);
    dp.apply(&plan, 300, link()).expect("apply");
    for (i, (f, old)) in acks.iter().zip(&before).enumerate() {
        if reused.contains(&i) {
            continue; // already moved by the SYN above
        }
        let (v, now) = run(&dp, f);
        assert_eq!(v, XDP_TX);
        assert_ne!(now, drained, "a flow still goes to a removed server");
        if *old != drained {
            assert_eq!(now, *old, "a flow of a surviving server moved");
        }
    }
}

/// A server failing its checks (not removed from the config): its
/// established TCP flows stay, a SYN (new or on a reused port) goes
/// elsewhere, its UDP flows are placed again; back healthy, it is
/// reached again by the flows that stayed.
#[test]
fn a_failed_server_keeps_tcp_flows_and_loses_udp_flows() {
    let mut plan = web();
    let dp_plan = plan.clone();
    let mut dp = loaded(&dp_plan);
    let vip = ip("10.0.0.100");
    let failed = mac_of(2).0;
    let tcp: Vec<[u8; 6]> = (0..300u16)
        .map(|p| {
            run(
                &dp,
                &frames::tcp_frame(ip("10.4.0.1"), 10000 + p, vip, 80, SYN),
            )
            .1
        })
        .collect();
    let udp: Vec<[u8; 6]> = (0..300u16)
        .map(|p| run(&dp, &frames::udp_frame(ip("10.4.0.1"), 10000 + p, vip, 53)).1)
        .collect();
    assert!(tcp.contains(&failed) && udp.contains(&failed));

    for s in &mut plan[..2] {
        s.backends[1].weight = 0;
        s.backends[1].failed = true;
    }
    dp.apply(&plan, 300, link()).expect("apply");
    for p in 0..300u16 {
        let ack = frames::tcp_frame(ip("10.4.0.1"), 10000 + p, vip, 80, ACK);
        assert_eq!(
            run(&dp, &ack).1,
            tcp[p as usize],
            "an established TCP flow left its (failed) server"
        );
        let now = run(&dp, &frames::udp_frame(ip("10.4.0.1"), 10000 + p, vip, 53)).1;
        assert_ne!(now, failed, "a UDP flow stayed on a failed server");
        if udp[p as usize] != failed {
            assert_eq!(now, udp[p as usize], "a UDP flow of a healthy server moved");
        }
        let syn = frames::tcp_frame(ip("10.5.0.1"), 20000 + p, vip, 80, SYN);
        assert_ne!(
            run(&dp, &syn).1,
            failed,
            "a new flow went to a failed server"
        );
    }
    let reused = (0..300u16)
        .find(|p| tcp[*p as usize] == failed)
        .expect("one");
    let syn = frames::tcp_frame(ip("10.4.0.1"), 10000 + reused, vip, 80, SYN);
    assert_ne!(
        run(&dp, &syn).1,
        failed,
        "a reused port reopened a failed server"
    );

    // Healthy again: the flows that stayed still reach it.
    dp.apply(&dp_plan, 300, link()).expect("apply");
    for p in (0..300u16).filter(|p| *p != reused && tcp[*p as usize] == failed) {
        let ack = frames::tcp_frame(ip("10.4.0.1"), 10000 + p, vip, 80, ACK);
        assert_eq!(run(&dp, &ack).1, failed);
    }
}

#[test]
fn any_port_source_hash_and_persistence() {
    let servers = [("10.0.0.20", 1), ("10.0.0.21", 1), ("10.0.0.22", 1)];
    let any = service("10.0.0.200", 0, Protocol::Tcp, &servers);
    let mut sh = service("10.0.0.201", 443, Protocol::Tcp, &servers);
    sh.scheduler = Scheduler::Sh;
    let mut sticky = service("10.0.0.202", 443, Protocol::Tcp, &servers);
    sticky.persistence_timeout = 60;
    let dp = loaded(&[any, sh, sticky]);
    for dport in [1u16, 80, 8443, 65535] {
        let f = frames::tcp_frame(ip("10.6.0.1"), 1000, ip("10.0.0.200"), dport, SYN);
        assert_eq!(run(&dp, &f).0, XDP_TX, "any-port service, port {dport}");
    }
    for vip in ["10.0.0.201", "10.0.0.202"] {
        for client in 1..20u8 {
            let macs: BTreeSet<[u8; 6]> = (0..20u16)
                .map(|p| {
                    let src = IpAddr::from([10, 7, 0, client]);
                    run(&dp, &frames::tcp_frame(src, 3000 + p, ip(vip), 443, SYN)).1
                })
                .collect();
            assert_eq!(macs.len(), 1, "{vip}: one client spread over {macs:?}");
        }
    }
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

/// UDP flows expire after `udp_timeout` of silence: a flow on a server that
/// was drained since keeps it while it talks, and is placed again (away
/// from the drained server) once it was idle longer than the timeout. Its
/// re-placement counts as a new flow.
#[test]
fn idle_udp_flows_expire_after_udp_timeout() {
    let mut plan = web();
    let mut dp = XdpDataplane::load_for_test().expect("load the XDP program (as root)");
    dp.apply(&plan, 1, link()).expect("apply");
    let datagram = |p: u16| frames::udp_frame(ip("10.6.0.1"), 30000 + p, ip("10.0.0.100"), 53);
    // Flows on both servers of the UDP service.
    let first: Vec<[u8; 6]> = (0..64).map(|p| run(&dp, &datagram(p)).1).collect();
    let drained = mac_of(1).0;
    let on_drained: Vec<u16> = (0..64).filter(|p| first[*p as usize] == drained).collect();
    assert!(!on_drained.is_empty());
    plan[1].backends[0].weight = 0;
    dp.apply(&plan, 1, link()).expect("apply");
    // Within the timeout they stay.
    std::thread::sleep(std::time::Duration::from_millis(400));
    for p in &on_drained {
        assert_eq!(run(&dp, &datagram(*p)).1, drained, "a live UDP flow moved");
    }
    let before = dp.service_traffic(&plan[1]).expect("counters").new_flows;
    // Idle for longer than udp_timeout (1 s): placed again.
    std::thread::sleep(std::time::Duration::from_millis(1600));
    for p in &on_drained {
        assert_ne!(
            run(&dp, &datagram(*p)).1,
            drained,
            "an idle UDP flow did not expire"
        );
    }
    let after = dp.service_traffic(&plan[1]).expect("counters").new_flows;
    assert_eq!(
        after - before,
        on_drained.len() as u64,
        "re-placements are new flows"
    );
}

/// With persistence, a drained server (weight 0: `real-server drain`, or a
/// failed server with `inhibit_on_failure`) gets no new connection from a
/// client it served: the client's affinity moves; its established flows
/// stay where they are.
#[test]
fn persistence_never_sends_new_connections_to_a_draining_server() {
    let servers = [("10.0.0.20", 1), ("10.0.0.21", 1), ("10.0.0.22", 1)];
    let mut plan = vec![service("10.0.0.202", 443, Protocol::Tcp, &servers)];
    plan[0].persistence_timeout = 60;
    let mut dp = loaded(&plan);
    let syn = |client: u8, port: u16| {
        frames::tcp_frame(
            IpAddr::from([10, 8, 0, client]),
            port,
            ip("10.0.0.202"),
            443,
            SYN,
        )
    };
    let ack = |client: u8, port: u16| {
        frames::tcp_frame(
            IpAddr::from([10, 8, 0, client]),
            port,
            ip("10.0.0.202"),
            443,
            ACK,
        )
    };
    // Every client's first connection; their servers.
    let first: Vec<[u8; 6]> = (1..=30u8).map(|c| run(&dp, &syn(c, 1000)).1).collect();
    let drained = mac_of(1).0;
    let on_it: Vec<u8> = (1..=30u8)
        .filter(|c| first[*c as usize - 1] == drained)
        .collect();
    assert!(!on_it.is_empty());
    plan[0].backends[0].weight = 0;
    dp.apply(&plan, 300, link()).expect("apply");
    for c in &on_it {
        // Its open connection stays...
        assert_eq!(
            run(&dp, &ack(*c, 1000)).1,
            drained,
            "an established flow moved"
        );
        // ...but 20 new ones all avoid the draining server, and stick
        // together elsewhere.
        let next: BTreeSet<[u8; 6]> = (0..20u16).map(|p| run(&dp, &syn(*c, 2000 + p)).1).collect();
        assert!(
            !next.contains(&drained),
            "client {c}: a new connection went to the draining server"
        );
        assert_eq!(next.len(), 1, "client {c}: persistence lost: {next:?}");
    }
    // Clients of other servers keep theirs.
    for c in (1..=30u8).filter(|c| !on_it.contains(c)) {
        assert_eq!(run(&dp, &syn(c, 3000)).1, first[c as usize - 1]);
    }
}

/// A UDP datagram split in two IPv4 fragments with IP ID `id`: the first
/// carries the UDP header (ports), the second only data.
fn fragmented(src: [u8; 4], vip: [u8; 4], sport: u16, id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first = frames::ethernet(
        0x0800,
        &frames::ipv4(
            src,
            vip,
            17,
            Frag {
                more: true,
                offset: 0,
            },
            &[],
            &frames::udp(sport, 53, &[0u8; 64]),
        ),
    );
    let mut second = frames::ethernet(
        0x0800,
        &frames::ipv4(
            src,
            vip,
            17,
            Frag {
                more: false,
                offset: 9,
            },
            &[],
            &[0u8; 40],
        ),
    );
    for f in [&mut first, &mut second] {
        f[18..20].copy_from_slice(&id.to_be_bytes());
    }
    (first, second)
}

/// Fragments go where the rest of their flow goes: with `mh` the first
/// fragment (it has the ports) is placed like the flow and the others of
/// the datagram (same IP ID) follow it; with `sh` every fragment follows
/// the client; with persistence, the client's affinity.
#[test]
fn fragments_follow_the_placement_of_their_flow() {
    let servers = [("10.0.0.20", 1), ("10.0.0.21", 1), ("10.0.0.22", 1)];
    let mh = service("10.0.0.100", 53, Protocol::Udp, &servers);
    let mut sh = service("10.0.0.201", 53, Protocol::Udp, &servers);
    sh.scheduler = Scheduler::Sh;
    let mut sticky = service("10.0.0.202", 53, Protocol::Udp, &servers);
    sticky.persistence_timeout = 60;
    let dp = loaded(&[mh, sh, sticky]);
    for (vip, what) in [
        ([10, 0, 0, 100], "mh"),
        ([10, 0, 0, 201], "sh"),
        ([10, 0, 0, 202], "persistence"),
    ] {
        for client in 1..40u8 {
            let src = [10, 3, 0, client];
            // An unfragmented datagram of the flow (sport 999).
            let whole = frames::udp_frame(IpAddr::from(src), 999, IpAddr::from(vip), 53);
            let (v, server) = run(&dp, &whole);
            assert_eq!(v, XDP_TX);
            // A fragmented one: the same flow for mh, any flow of the
            // client for sh and persistence (another source port).
            let sport = if what == "mh" {
                999
            } else {
                2000 + u16::from(client)
            };
            let (first, second) = fragmented(src, vip, sport, 0x4000 + u16::from(client));
            let (v1, m1) = run(&dp, &first);
            let (v2, m2) = run(&dp, &second);
            assert_eq!((v1, v2), (XDP_TX, XDP_TX));
            assert_eq!(
                m1, server,
                "{what}: client {client}'s first fragment went elsewhere"
            );
            assert_eq!(
                m2, server,
                "{what}: client {client}'s second fragment went elsewhere"
            );
        }
    }
}

/// An IPv6 fragment after the first carries no headers, only data, even
/// when the fragment header names an extension header next: it is not
/// parsed as one (whatever its bytes say), and not forwarded as TCP/UDP.
#[test]
fn later_ipv6_fragments_are_not_parsed_as_headers() {
    let dp = loaded(&web());
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip("fd00::2:9"), ip("fd00::100")) else {
        unreachable!()
    };
    // Fragment header: next = destination options (60), offset 3.
    let mut p = frames::ipv6_fragment(60, 3, false, 9);
    // Data that would read as "next header TCP, length 0" (the VIP serves
    // TCP).
    p.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(&[0u8; 32]);
    let f = frames::ethernet(0x86dd, &frames::ipv6(s.octets(), d.octets(), 44, &p));
    assert_eq!(run(&dp, &f).0, XDP_PASS);
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

/// The one's complement checksum of `data` (0 when it verifies).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn tunnel_service(vip: &str, servers: &[(&str, u32)]) -> director::dataplane::ServicePlan {
    let mut s = service(vip, 80, Protocol::Tcp, servers);
    s.lb_kind = director::config::LbKind::Tun;
    s
}

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

/// The SYN-flood guard: past `new_flow_limit` new flows in a second on
/// this CPU, new flows are still forwarded - to the server the Maglev
/// table gives, as a recorded flow would be - but not recorded, and
/// counted; flows recorded before keep their server when the pool changes.
#[test]
fn past_the_new_flow_limit_flows_are_forwarded_but_not_recorded() {
    let mut plan = web();
    let mut dp = XdpDataplane::load_for_test().expect("load the XDP program (as root)");
    dp.set_new_flow_limit(50);
    dp.apply(&plan, 300, link()).expect("apply");
    let syn = |p: u16| frames::tcp_frame(ip("10.7.0.1"), 30000 + p, ip("10.0.0.100"), 80, SYN);
    let ack = |p: u16| frames::tcp_frame(ip("10.7.0.1"), 30000 + p, ip("10.0.0.100"), 80, ACK);
    // One burst, well within a second: 50 recorded, 150 not.
    let placed: Vec<[u8; 6]> = (0..200u16)
        .map(|p| {
            let (v, mac) = run(&dp, &syn(p));
            assert_eq!(v, XDP_TX, "a flow past the limit was not forwarded");
            mac
        })
        .collect();
    assert_eq!(dp.unrecorded_flows().expect("counter"), 150);
    // Unrecorded flows still stick while the pool stands (Maglev).
    for p in 0..200u16 {
        assert_eq!(run(&dp, &ack(p)).1, placed[p as usize]);
    }
    // A server added: the recorded flows keep their server; of the
    // unrecorded ones, some are placed again by the new table.
    add_fourth_server(&mut plan);
    dp.apply(&plan, 300, link()).expect("apply");
    let moved = (0..200u16)
        .filter(|p| run(&dp, &ack(*p)).1 != placed[*p as usize])
        .collect::<Vec<_>>();
    assert!(
        moved.iter().all(|p| *p >= 50),
        "recorded flows moved: {moved:?}"
    );
    assert!(
        !moved.is_empty(),
        "no unrecorded flow moved: the table did not change?"
    );
}

/// Flows imported into a table half full (as flow sync imports them), after
/// new connections the program recorded, are recorded and all found, by user space and by the program: every way
/// taken is one the tags mark, and the program forwards each to the
/// imported server without placing it again.
#[test]
fn imported_flows_are_recorded_and_found() {
    use director::dataplane::xdp::PinnedFlow;
    use director_common::FlowKey;
    let plan = web();
    let mut dp = XdpDataplane::load_for_test_sized(3 * 4096).expect("load (as root)");
    dp.apply(&plan, 300, link()).expect("apply");
    let service = plan[0].key();
    let key = |i: u32| {
        let mut k = FlowKey::default();
        k.src[..4].copy_from_slice(&[11, 0, (i >> 8) as u8, i as u8]);
        k.dst[..4].copy_from_slice(&[10, 0, 0, 100]);
        k.sport = 40000u16.to_be_bytes();
        k.dport = 80u16.to_be_bytes();
        k.protocol = 6;
        k
    };
    let flows: Vec<PinnedFlow> = (0..4096)
        .map(|i| PinnedFlow {
            flow: key(i),
            service,
            backend: plan[0].backends[(i % 3) as usize].address,
        })
        .collect();
    // New connections recorded by the program first (SYNs): the table
    // holds both kinds.
    for i in 0..2048u32 {
        let f = frames::tcp_frame(
            IpAddr::from([12, 0, (i >> 8) as u8, i as u8]),
            1000,
            ip("10.0.0.100"),
            80,
            SYN,
        );
        assert_eq!(run(&dp, &f).0, XDP_TX);
    }
    let added = dp.import_flows(&flows).expect("import");
    let table = dp.flow_table();
    let found = (0..4096).filter(|i| table.get(&key(*i)).is_some()).count();
    assert_eq!(found, added, "imported flows not found");
    assert!(added >= 4000, "only {added} of 4096 recorded at half full");
    for i in (0..4096)
        .filter(|i| table.get(&key(*i)).is_some())
        .take(300)
    {
        let f = frames::tcp_frame(
            IpAddr::from([11, 0, (i >> 8) as u8, i as u8]),
            40000,
            ip("10.0.0.100"),
            80,
            ACK,
        );
        assert_eq!(
            run(&dp, &f),
            (XDP_TX, mac_of((i % 3 + 1) as u8).0),
            "flow {i}"
        );
    }
}

/// A connection opening whose first bucket holds a flow (one the program
/// recorded, or one the daemon imported) never takes that flow's way: the
/// bucket's occupancy bit sends it to the tag words, which find it a free
/// way. A tag array rebuilt from the entries (one re-created beside an
/// adopted table) says the same. A mid-stream packet of a flow the table
/// does not hold is recorded in the free way its lookup ended at.
#[test]
fn a_new_connection_never_takes_a_flows_way() {
    use director::dataplane::xdp::PinnedFlow;
    use director_common::{FLOW_WAYS, FlowKey, flow_buckets, flow_table_hash};
    let plan = web();
    let mut dp = XdpDataplane::load_for_test_sized(4096).expect("load (as root)");
    dp.apply(&plan, 300, link()).expect("apply");
    let (seed, buckets) = {
        let table = dp.flow_table();
        (table.seed(), table.entries() / FLOW_WAYS)
    };
    let key = |src: [u8; 4], sport: u16| {
        let mut k = FlowKey::default();
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&[10, 0, 0, 100]);
        k.sport = sport.to_be_bytes();
        k.dport = 80u16.to_be_bytes();
        k.protocol = 6;
        k
    };
    let first_bucket = |k: &FlowKey| flow_buckets(flow_table_hash(k, seed), buckets).0;
    // A client (port 1000) whose flow's first bucket is `b`, from `*next` on.
    let colliding = |b: u32, next: &mut u32| loop {
        *next += 1;
        let src = [12, (*next >> 16) as u8, (*next >> 8) as u8, *next as u8];
        if first_bucket(&key(src, 1000)) == b {
            return src;
        }
    };
    let syn = |src: [u8; 4]| frames::tcp_frame(IpAddr::from(src), 1000, ip("10.0.0.100"), 80, SYN);
    let ack = |src: [u8; 4], sport: u16| {
        frames::tcp_frame(IpAddr::from(src), sport, ip("10.0.0.100"), 80, ACK)
    };
    let service = plan[0].key();
    // 64 imported flows, each alone in its first bucket, on server i % 3.
    let mut used = BTreeSet::new();
    let imported: Vec<[u8; 4]> = (0..4096u32)
        .map(|i| [11, 0, (i >> 8) as u8, i as u8])
        .filter(|src| used.insert(first_bucket(&key(*src, 40000))))
        .take(64)
        .collect();
    let flows: Vec<PinnedFlow> = imported
        .iter()
        .enumerate()
        .map(|(i, src)| PinnedFlow {
            flow: key(*src, 40000),
            service,
            backend: plan[0].backends[i % 3].address,
        })
        .collect();
    assert_eq!(dp.import_flows(&flows).expect("import"), 64);
    // 64 connections the program records, each alone in its first bucket
    // too (and not in an imported flow's).
    let mut next = 0;
    let mut recorded = Vec::new();
    while recorded.len() < 64 {
        next += 1;
        let src = [13, 0, (next >> 8) as u8, next as u8];
        if used.insert(first_bucket(&key(src, 1000))) {
            assert_eq!(run(&dp, &syn(src)).0, XDP_TX);
            recorded.push((src, run(&dp, &ack(src, 1000)).1));
        }
    }
    let check = |dp: &XdpDataplane, round: &str| {
        let table = dp.flow_table();
        assert_eq!(table.tag_mismatches(), 0, "{round}: tags disagree");
        for (i, src) in imported.iter().enumerate() {
            assert!(
                table.get(&key(*src, 40000)).is_some(),
                "{round}: imported flow {i} lost"
            );
            assert_eq!(
                run(dp, &ack(*src, 40000)),
                (XDP_TX, mac_of((i % 3 + 1) as u8).0),
                "{round}: imported flow {i} moved"
            );
        }
        for (src, mac) in &recorded {
            assert!(
                table.get(&key(*src, 1000)).is_some(),
                "{round}: recorded flow {src:?} lost"
            );
            assert_eq!(
                run(dp, &ack(*src, 1000)).1,
                *mac,
                "{round}: recorded flow {src:?} moved"
            );
        }
    };
    // A packet (`frame` of a client) from a new client into each of those
    // buckets, every one forwarded and recorded; returns the clients.
    let taken: Vec<u32> = used.iter().copied().collect();
    let mut next = 0;
    let mut into_taken = |dp: &XdpDataplane, frame: &dyn Fn([u8; 4]) -> Vec<u8>, what: &str| {
        let clients: Vec<[u8; 4]> = taken.iter().map(|b| colliding(*b, &mut next)).collect();
        for src in &clients {
            assert_eq!(run(dp, &frame(*src)).0, XDP_TX);
        }
        let table = dp.flow_table();
        for src in &clients {
            assert!(
                table.get(&key(*src, 1000)).is_some(),
                "{what} {src:?} not recorded"
            );
        }
    };
    // New connections.
    into_taken(&dp, &syn, "opening");
    check(&dp, "after openings");
    // The tag array re-created and rebuilt from the entries: consistent,
    // and openings into the same buckets still take free ways.
    let table = dp.flow_table();
    table.clear_tags();
    assert!(
        table.tag_mismatches() > 0,
        "cleared tags agree with a table holding flows?"
    );
    table.rebuild_tags();
    into_taken(&dp, &syn, "opening after a rebuild");
    check(&dp, "after a rebuild");
    // Mid-stream packets of connections the table never saw (opened
    // through another director): recorded in the free way their lookup
    // ended at, over no flow.
    into_taken(&dp, &|src| ack(src, 1000), "pickup");
    check(&dp, "after mid-stream pickups");
}

/// A connection the client closes (FIN or RST) keeps its server while its
/// packets come (the close, a half-closed stream); once idle for 2 s, or
/// at once for a SYN, its 5-tuple is a new connection and goes where a
/// director without the entry would place it (a connection opened
/// through another director must not follow the closed one). An open
/// flow's entry never ages.
#[test]
fn a_closed_connections_entry_gives_way_to_a_new_one() {
    use std::time::Duration;
    let mut plan = web();
    let mut dp = loaded(&plan);
    let vip = ip("10.0.0.100");
    let frame = |p: u16, flags: u8| frames::tcp_frame(ip("10.4.0.1"), 10000 + p, vip, 80, flags);
    let first: Vec<[u8; 6]> = (0..300u16).map(|p| run(&dp, &frame(p, SYN)).1).collect();
    // A server added: recorded flows stay; a director without them (fresh)
    // places some on the new server.
    add_fourth_server(&mut plan);
    dp.apply(&plan, 300, link()).expect("apply");
    let fresh = loaded(&plan);
    let elsewhere = |p: u16| run(&fresh, &frame(p, SYN)).1;
    let moved: Vec<u16> = (0..300u16)
        .filter(|p| elsewhere(*p) != first[*p as usize])
        .collect();
    assert!(moved.len() >= 8, "{} flows would move", moved.len());
    let was = |p: u16| first[p as usize];
    let (closing, open) = moved.split_at(moved.len() / 2);
    for &p in closing {
        assert_eq!(run(&dp, &frame(p, FIN | ACK)).1, was(p), "the FIN moved");
        assert_eq!(run(&dp, &frame(p, ACK)).1, was(p), "the last ACK moved");
    }
    std::thread::sleep(Duration::from_millis(1200));
    // A half-closed stream: its ACKs keep the entry.
    assert_eq!(run(&dp, &frame(closing[0], ACK)).1, was(closing[0]));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        run(&dp, &frame(closing[0], ACK)).1,
        was(closing[0]),
        "a half-closed stream lost its server"
    );
    for &p in &closing[1..] {
        assert_eq!(
            run(&dp, &frame(p, ACK)).1,
            elsewhere(p),
            "a new connection followed a closed one's entry"
        );
    }
    for &p in &open[1..] {
        assert_eq!(run(&dp, &frame(p, ACK)).1, was(p), "an open flow aged");
    }
    // A retransmitted SYN keeps its server; a SYN after a FIN is a new
    // connection, placed at once.
    assert_eq!(run(&dp, &frame(open[1], SYN)).1, was(open[1]));
    assert_eq!(run(&dp, &frame(open[0], FIN | ACK)).1, was(open[0]));
    assert_eq!(run(&dp, &frame(open[0], SYN)).1, elsewhere(open[0]));
}

/// A fourth real server (10.0.0.23) in `web()`'s first service.
fn add_fourth_server(plan: &mut [director::dataplane::ServicePlan]) {
    plan[0].backends.push(director::dataplane::BackendPlan {
        address: ip("10.0.0.23"),
        weight: 1,
        mac: Some(mac_of(4)),
        failed: false,
        pool_weight: 1,
    });
}

/// The SYN-flood guard protects what else a new flow records: past
/// `new_flow_limit`, a spoofed flood at a persistent service (more sources
/// than the persistence table holds) adds no persistence entry, so every
/// real client keeps its server; a flood of spoofed first fragments adds no
/// fragment entry, so a real datagram's later fragment still follows its
/// first.
#[test]
fn past_the_new_flow_limit_persistence_and_fragments_are_not_recorded() {
    let servers = [("10.0.0.20", 1), ("10.0.0.21", 1), ("10.0.0.22", 1)];
    let mut sticky = service("10.0.0.202", 443, Protocol::Tcp, &servers);
    sticky.persistence_timeout = 600;
    let udp = service("10.0.0.100", 53, Protocol::Udp, &servers);
    let mut dp = XdpDataplane::load_for_test().expect("load the XDP program (as root)");
    dp.set_new_flow_limit(50);
    dp.apply(&[sticky, udp], 300, link()).expect("apply");
    let syn = |src: [u8; 4], port: u16| {
        frames::tcp_frame(IpAddr::from(src), port, ip("10.0.0.202"), 443, SYN)
    };
    // 30 real clients, each placed (and its affinity recorded) once.
    let first: Vec<[u8; 6]> = (1..=30u8)
        .map(|c| run(&dp, &syn([10, 8, 0, c], 1000)).1)
        .collect();
    // A real datagram's first fragment.
    let (frag1, frag2) = fragmented([10, 3, 0, 1], [10, 0, 0, 100], 999, 0x4001);
    let (_, frag_server) = run(&dp, &frag1);
    // The floods: more spoofed sources than the persistence table holds,
    // more spoofed first fragments than the fragment table holds.
    let sources = director_common::MAX_PERSIST + 4_000;
    for i in 0..sources {
        let b = i.to_be_bytes();
        assert_eq!(run(&dp, &syn([100, b[1], b[2], b[3]], 5555)).0, XDP_TX);
    }
    for i in 0..director_common::MAX_FRAGS + 2_000 {
        let b = i.to_be_bytes();
        let (f, _) = fragmented([100, b[1], b[2], b[3]], [10, 0, 0, 100], 777, 7);
        assert_eq!(run(&dp, &f).0, XDP_TX);
    }
    assert!(dp.unrecorded_flows().expect("counter") > u64::from(sources) - 1_000);
    // Every real client's new connections still go to its server.
    for c in 1..=30u8 {
        for port in [2000, 2001, 2002] {
            assert_eq!(
                run(&dp, &syn([10, 8, 0, c], port)).1,
                first[c as usize - 1],
                "client {c} lost its affinity to the flood"
            );
        }
    }
    assert_eq!(
        run(&dp, &frag2).1,
        frag_server,
        "the datagram's second fragment lost its first to the flood"
    );
}

/// A client's affinity is confirmed by its connection's second packet
/// (the handshake's ACK): a spoofed SYN never sends one, so even with no
/// SYN-flood guard at all (`new_flow_limit = 0`) a flood of more spoofed
/// sources than the persistence table holds evicts no client's affinity.
/// A client's parallel first connections (SYNs before any ACK) go to one
/// server through the pending affinity; a UDP client's second datagram
/// confirms its own.
#[test]
fn affinities_are_confirmed_by_a_second_packet_and_survive_an_unguarded_flood() {
    let servers = [("10.0.0.20", 1), ("10.0.0.21", 1), ("10.0.0.22", 1)];
    let mut sticky = service("10.0.0.202", 443, Protocol::Tcp, &servers);
    sticky.persistence_timeout = 600;
    let mut dp = XdpDataplane::load_for_test().expect("load the XDP program (as root)");
    dp.set_new_flow_limit(0);
    dp.apply(&[sticky], 300, link()).expect("apply");
    let tcp = |src: [u8; 4], port: u16, flags: u8| {
        frames::tcp_frame(IpAddr::from(src), port, ip("10.0.0.202"), 443, flags)
    };
    // A client's parallel first connections share its pending affinity.
    for c in 101..=110u8 {
        let src = [10, 8, 0, c];
        let opened: BTreeSet<[u8; 6]> = (0..6u16)
            .map(|p| run(&dp, &tcp(src, 1000 + p, SYN)).1)
            .collect();
        assert_eq!(
            opened.len(),
            1,
            "client {c}'s parallel openings went apart: {opened:?}"
        );
    }
    // 30 clients, one connection each: SYN, then the handshake's ACK
    // (nothing else ever looks their affinity up: the LRU table would
    // evict it first).
    let mut first = Vec::new();
    for c in 1..=30u8 {
        let src = [10, 8, 0, c];
        let server = run(&dp, &tcp(src, 1000, SYN)).1;
        assert_eq!(run(&dp, &tcp(src, 1000, ACK)).1, server);
        first.push(server);
    }
    for i in 0..director_common::MAX_PERSIST + 40_000 {
        let b = i.to_be_bytes();
        assert_eq!(run(&dp, &tcp([100, b[1], b[2], b[3]], 5555, SYN)).0, XDP_TX);
    }
    for c in 1..=30u8 {
        for port in [2000, 2001, 2002] {
            assert_eq!(
                run(&dp, &tcp([10, 8, 0, c], port, SYN)).1,
                first[c as usize - 1],
                "client {c} lost its confirmed affinity to an unguarded flood"
            );
        }
    }
}
