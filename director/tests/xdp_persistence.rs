//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): Persistence and source hashing: any-port services,
//! `sh`, `persistence_timeout`; a draining server never gets a new connection
//! by persistence; affinities confirmed by a second packet.

mod common;

use common::*;

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
