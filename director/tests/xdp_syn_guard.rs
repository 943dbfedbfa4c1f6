//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): The SYN-flood guard: past `new_flow_limit` new flows
//! are forwarded but not recorded, and neither are their persistence entries
//! or fragments.

mod common;

use common::*;

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
