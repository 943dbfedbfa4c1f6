//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): Fragments: every fragment of a datagram to one server,
//! later fragments following their flow, IPv6 later fragments never parsed as
//! headers.

mod common;

use common::*;

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
