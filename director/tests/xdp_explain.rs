//! `director explain` against the program's real decisions
//! (BPF_PROG_TEST_RUN, root): before each frame runs, explain predicts the
//! real server it goes to and why; the frame's rewritten MAC must be that
//! server's. New flows (Maglev), the same flows again (the flow table),
//! persistence, a draining server, a closing flow's new SYN, UDP, the
//! sorry server and a port no service answers on.

mod common;

use common::*;
use director::{
    config::ServiceAddr,
    dataplane::xdp::explain::{Explainer, Query, Reason, coarse_now},
};

/// The server whose MAC `mac` is, in `plan`'s first service.
fn server_of(plan: &ServicePlan, mac: [u8; 6]) -> Option<String> {
    plan.backends
        .iter()
        .find(|b| b.mac.map(|m| m.0) == Some(mac))
        .map(|b| b.address.to_string())
}

struct Case<'a> {
    dp: &'a XdpDataplane,
    explainer: Explainer,
}

impl Case<'_> {
    /// Explains the flow, runs `frame`, and checks the prediction against
    /// the verdict; returns the reason.
    fn check(&self, plan: &ServicePlan, q: Query, frame: &[u8], sorry: Option<IpAddr>) -> Reason {
        let e = self.explainer.explain(&q, coarse_now(), sorry);
        let (verdict, mac) = run(self.dp, frame);
        let went = (verdict == XDP_TX).then(|| server_of(plan, mac)).flatten();
        assert_eq!(
            e.real_server, went,
            "explain predicted {:?} ({:?}), the program sent it to {went:?}: {e:#?}",
            e.real_server, e.reason
        );
        e.reason
    }
}

fn query(client: &str, port: u16, svc: &ServicePlan, syn: bool) -> Query {
    Query {
        client: ip(client),
        client_port: Some(port),
        service: ServiceAddr {
            address: svc.address,
            port: svc.port,
            protocol: svc.protocol,
        },
        syn,
    }
}

#[test]
fn explain_predicts_every_decision_of_the_program() {
    let servers = [("10.0.0.20", 1), ("10.0.0.21", 2), ("10.0.0.22", 1)];
    let mut plan = vec![
        service("10.0.0.100", 80, Protocol::Tcp, &servers),
        service("10.0.0.101", 443, Protocol::Tcp, &servers),
        service("10.0.0.100", 53, Protocol::Udp, &servers),
    ];
    plan[1].persistence_timeout = 60;
    let mut dp = loaded(&plan);
    let mut reasons = BTreeMap::<String, usize>::new();
    let mut tally = |r: Reason| *reasons.entry(format!("{r:?}")).or_default() += 1;
    {
        let case = Case {
            dp: &dp,
            explainer: Explainer::of(&dp).expect("explainer"),
        };
        // 200 new TCP flows: Maglev; their next packets: the flow table.
        for i in 0..200u16 {
            let client = format!("10.9.{}.{}", i / 200, i % 200 + 1);
            let tcp = |flags| frames::tcp_frame(ip(&client), 2000 + i, ip("10.0.0.100"), 80, flags);
            let r = case.check(
                &plan[0],
                query(&client, 2000 + i, &plan[0], true),
                &tcp(SYN),
                None,
            );
            assert_eq!(r, Reason::Maglev);
            tally(r);
            let r = case.check(
                &plan[0],
                query(&client, 2000 + i, &plan[0], false),
                &tcp(ACK),
                None,
            );
            assert_eq!(r, Reason::FlowTable);
            tally(r);
        }
        // Persistence: a client's first connection (pending affinity),
        // its second packet confirms it; new ports follow it.
        for c in 1..=20u8 {
            let client = format!("10.8.0.{c}");
            let tcp =
                |port, flags| frames::tcp_frame(ip(&client), port, ip("10.0.0.101"), 443, flags);
            let first = case.check(
                &plan[1],
                query(&client, 1000, &plan[1], true),
                &tcp(1000, SYN),
                None,
            );
            assert_eq!(first, Reason::Maglev);
            case.check(
                &plan[1],
                query(&client, 1000, &plan[1], false),
                &tcp(1000, ACK),
                None,
            );
            for port in 1001..1004 {
                let r = case.check(
                    &plan[1],
                    query(&client, port, &plan[1], true),
                    &tcp(port, SYN),
                    None,
                );
                assert_eq!(r, Reason::Persistence, "client {client} port {port}");
                tally(r);
            }
        }
        // UDP flows.
        for i in 1..=50u8 {
            let client = format!("10.7.0.{i}");
            let udp = frames::udp_frame(ip(&client), 5000, ip("10.0.0.100"), 53);
            let first = case.check(&plan[2], query(&client, 5000, &plan[2], false), &udp, None);
            let again = case.check(&plan[2], query(&client, 5000, &plan[2], false), &udp, None);
            assert_eq!((first, again), (Reason::Maglev, Reason::FlowTable));
        }
        // A port no service answers on: the kernel.
        let none = Query {
            service: ServiceAddr {
                address: ip("10.0.0.100"),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            ..query("10.9.0.1", 2000, &plan[0], true)
        };
        let f = frames::tcp_frame(ip("10.9.0.1"), 2000, ip("10.0.0.100"), 8080, SYN);
        assert_eq!(case.check(&plan[0], none, &f, None), Reason::NoService);
    }

    // 10.0.0.21 drains: its established flows stay (flow table), a new
    // SYN on one of their 5-tuples is placed elsewhere, persistence moves.
    plan[0].backends[1].weight = 0;
    plan[1].backends[1].weight = 0;
    dp.apply(&plan, 300, link()).expect("apply");
    let case = Case {
        dp: &dp,
        explainer: Explainer::of(&dp).expect("explainer"),
    };
    let mut stayed = 0;
    for i in 0..200u16 {
        let client = format!("10.9.{}.{}", i / 200, i % 200 + 1);
        let q = query(&client, 2000 + i, &plan[0], false);
        let e = case.explainer.explain(&q, coarse_now(), None);
        if e.real_server.as_deref() != Some("10.0.0.21") {
            continue;
        }
        stayed += 1;
        let ack = frames::tcp_frame(ip(&client), 2000 + i, ip("10.0.0.100"), 80, ACK);
        assert_eq!(case.check(&plan[0], q, &ack, None), Reason::FlowTable);
        let syn = frames::tcp_frame(ip(&client), 2000 + i, ip("10.0.0.100"), 80, SYN);
        let e = case.explainer.explain(
            &query(&client, 2000 + i, &plan[0], true),
            coarse_now(),
            None,
        );
        assert_eq!(
            e.flow_table.as_ref().map(|f| f.honoured),
            Some(false),
            "{e:#?}"
        );
        assert_eq!(
            case.check(
                &plan[0],
                query(&client, 2000 + i, &plan[0], true),
                &syn,
                None
            ),
            Reason::Maglev
        );
        tally(Reason::Maglev);
    }
    assert!(stayed > 0, "no flow was on the drained server");
    for c in 1..=20u8 {
        let client = format!("10.8.0.{c}");
        let syn = frames::tcp_frame(ip(&client), 1100, ip("10.0.0.101"), 443, SYN);
        case.check(&plan[1], query(&client, 1100, &plan[1], true), &syn, None);
    }
    let e = case
        .explainer
        .explain(&query("10.9.0.9", 9, &plan[0], true), coarse_now(), None);
    let states: Vec<(&str, &str)> = e
        .maglev
        .as_ref()
        .expect("placement")
        .pool
        .iter()
        .map(|p| (p.address.as_str(), p.state))
        .collect();
    assert_eq!(
        states,
        [
            ("10.0.0.20", "in_table"),
            ("10.0.0.21", "draining"),
            ("10.0.0.22", "in_table")
        ]
    );
    drop(case);

    // Quorum lost: the sorry server has the whole table.
    let sorry = ip("10.0.0.30");
    let mut lost = service("10.0.0.100", 80, Protocol::Tcp, &[("10.0.0.30", 1)]);
    lost.backends[0].mac = Some(mac_of(9));
    let plan = vec![lost];
    dp.apply(&plan, 300, link()).expect("apply");
    let case = Case {
        dp: &dp,
        explainer: Explainer::of(&dp).expect("explainer"),
    };
    for i in 0..20u16 {
        let client = format!("10.6.0.{}", i + 1);
        let syn = frames::tcp_frame(ip(&client), 3000, ip("10.0.0.100"), 80, SYN);
        let r = case.check(
            &plan[0],
            query(&client, 3000, &plan[0], true),
            &syn,
            Some(sorry),
        );
        assert_eq!(r, Reason::SorryServer);
    }
    assert!(
        reasons["Maglev"] >= 200 && reasons["FlowTable"] >= 200,
        "{reasons:?}"
    );
}
