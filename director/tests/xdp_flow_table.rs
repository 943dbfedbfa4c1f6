//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): The flow table: imported (synced) flows, a new
//! connection never taking a live flow's way, a closed connection's entry
//! giving way.

mod common;

use common::*;

/// The flow of a TCP client `src`:`sport` to the VIP's port 80.
fn vip_key(src: [u8; 4], sport: u16) -> director_common::FlowKey {
    let mut k = director_common::FlowKey::default();
    k.src[..4].copy_from_slice(&src);
    k.dst[..4].copy_from_slice(&[10, 0, 0, 100]);
    k.sport = sport.to_be_bytes();
    k.dport = 80u16.to_be_bytes();
    k.protocol = 6;
    k
}

/// Flows imported into a table half full (as flow sync imports them), after
/// new connections the program recorded, are recorded and all found, by user space and by the program: every way
/// taken is one the tags mark, and the program forwards each to the
/// imported server without placing it again.
#[test]
fn imported_flows_are_recorded_and_found() {
    use director::dataplane::xdp::PinnedFlow;
    let plan = web();
    let mut dp = XdpDataplane::load_for_test_sized(3 * 4096).expect("load (as root)");
    dp.apply(&plan, 300, link()).expect("apply");
    let service = plan[0].key();
    let key = |i: u32| vip_key([11, 0, (i >> 8) as u8, i as u8], 40000);
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
    let key = vip_key;
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

/// A peer's later word on a flow replaces its earlier one (the peer
/// placed the flow again: a SYN retransmitted after its first server
/// failed), and the program forwards to the new server; a flow this
/// director's program placed is never replaced by a peer's; an import
/// that says the same again is not counted again.
#[test]
fn a_peers_later_word_replaces_its_earlier_one_never_an_own_flow() {
    use director::dataplane::xdp::PinnedFlow;
    let plan = web();
    let mut dp = XdpDataplane::load_for_test_sized(4096).expect("load (as root)");
    dp.apply(&plan, 300, link()).expect("apply");
    let service = plan[0].key();
    let key = vip_key;
    let pinned = |src: [u8; 4], sport: u16, server: usize| PinnedFlow {
        flow: key(src, sport),
        service,
        backend: plan[0].backends[server].address,
    };
    let ack = |src: [u8; 4], sport: u16| {
        frames::tcp_frame(IpAddr::from(src), sport, ip("10.0.0.100"), 80, ACK)
    };
    // A peer's flow on server 3, then on server 2.
    let peer = [11, 0, 0, 1];
    assert_eq!(
        dp.import_flows(&[pinned(peer, 40000, 2)]).expect("import"),
        1
    );
    assert_eq!(run(&dp, &ack(peer, 40000)), (XDP_TX, mac_of(3).0));
    assert_eq!(
        dp.import_flows(&[pinned(peer, 40000, 2)]).expect("import"),
        0,
        "the same again"
    );
    assert_eq!(
        dp.import_flows(&[pinned(peer, 40000, 1)]).expect("import"),
        1
    );
    assert_eq!(
        run(&dp, &ack(peer, 40000)),
        (XDP_TX, mac_of(2).0),
        "the peer's later word is followed"
    );
    // A flow the program placed: a peer's word on it changes nothing.
    let own = [13, 0, 0, 1];
    let syn = frames::tcp_frame(IpAddr::from(own), 1000, ip("10.0.0.100"), 80, SYN);
    let (verdict, placed_on) = run(&dp, &syn);
    assert_eq!(verdict, XDP_TX);
    let other = (1..=3u8)
        .find(|n| mac_of(*n).0 != placed_on)
        .expect("another server");
    assert_eq!(
        dp.import_flows(&[pinned(own, 1000, usize::from(other - 1))])
            .expect("import"),
        0
    );
    assert_eq!(run(&dp, &ack(own, 1000)), (XDP_TX, placed_on));
}
