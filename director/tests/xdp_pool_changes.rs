//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): Changes of the pool under established flows: a server
//! that is out while flows are placed, draining and removal, a failed server
//! (TCP flows kept, UDP flows moved), idle UDP flows expiring.

mod common;

use common::*;

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
