//! Helpers shared by the BPF_PROG_TEST_RUN tests of the XDP program.

#![allow(dead_code)]

// What the test files of the program use, imported once here (each file
// uses a part of it, as of the helpers below).
#[allow(unused_imports)]
pub use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

#[allow(unused_imports)]
pub use director::{
    config::{Protocol, Scheduler},
    dataplane::{BackendPlan, ServicePlan, xdp::XdpDataplane},
    net::frames::{self, ACK, CLIENT_MAC, DIRECTOR_MAC, FIN, Frag, SYN},
    net::neighbor::{LinkInfo, Mac},
};

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

pub fn mac_of(i: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 1, i])
}

pub fn service(vip: &str, port: u16, protocol: Protocol, servers: &[(&str, u32)]) -> ServicePlan {
    ServicePlan {
        address: ip(vip),
        port,
        protocol,
        scheduler: Scheduler::Mh,
        persistence_timeout: 0,
        backends: servers
            .iter()
            .enumerate()
            .map(|(i, (a, w))| BackendPlan {
                address: ip(a),
                weight: *w,
                mac: Some(mac_of(i as u8 + 1)),
                failed: false,
                pool_weight: *w,
            })
            .collect(),
        members: Vec::new(),
        lb_kind: Default::default(),
        fwmark: None,
    }
}

/// The interface the tests' director has (MTU 1500).
pub fn link() -> LinkInfo {
    LinkInfo {
        index: 1,
        mac: Mac(DIRECTOR_MAC),
        mtu: 1500,
    }
}

pub fn loaded(plan: &[ServicePlan]) -> XdpDataplane {
    let mut dp = XdpDataplane::load_for_test().expect("load the XDP program (as root)");
    dp.apply(plan, 300, link()).expect("apply");
    dp
}

/// Runs a frame; checks that a TX only rewrote the MACs; returns the verdict
/// and the destination MAC.
pub fn run(dp: &XdpDataplane, frame: &[u8]) -> (u32, [u8; 6]) {
    let (verdict, out, _) = dp.test_run(frame, 1).expect("test run");
    assert_ne!(verdict, 0, "XDP_ABORTED");
    assert_eq!(out.len(), frame.len(), "frame length changed");
    if verdict == XDP_TX {
        assert_eq!(
            &out[6..12],
            &DIRECTOR_MAC,
            "source MAC must be the director's"
        );
        assert_eq!(
            &out[12..],
            &frame[12..],
            "a rewrite may only change the MACs"
        );
    } else {
        assert_eq!(out, frame, "a passed frame must be untouched");
    }
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&out[..6]);
    (verdict, dst)
}

pub fn web() -> Vec<ServicePlan> {
    vec![
        service(
            "10.0.0.100",
            80,
            Protocol::Tcp,
            &[("10.0.0.20", 1), ("10.0.0.21", 1), ("10.0.0.22", 1)],
        ),
        service(
            "10.0.0.100",
            53,
            Protocol::Udp,
            &[("10.0.0.20", 1), ("10.0.0.21", 1)],
        ),
        service(
            "fd00::100",
            80,
            Protocol::Tcp,
            &[("fd00::20", 1), ("fd00::21", 1), ("fd00::22", 1)],
        ),
    ]
}

/// A UDP datagram split in two IPv4 fragments with IP ID `id`: the first
/// carries the UDP header (ports), the second only data.
pub fn fragmented(src: [u8; 4], vip: [u8; 4], sport: u16, id: u16) -> (Vec<u8>, Vec<u8>) {
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

/// The one's complement checksum of `data` (0 when it verifies).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn tunnel_service(vip: &str, servers: &[(&str, u32)]) -> director::dataplane::ServicePlan {
    let mut s = service(vip, 80, Protocol::Tcp, servers);
    s.lb_kind = director::config::LbKind::Tun;
    s
}

/// A fourth real server (10.0.0.23) in `web()`'s first service.
pub fn add_fourth_server(plan: &mut [director::dataplane::ServicePlan]) {
    plan[0].backends.push(director::dataplane::BackendPlan {
        address: ip("10.0.0.23"),
        weight: 1,
        mac: Some(mac_of(4)),
        failed: false,
        pool_weight: 1,
    });
}
