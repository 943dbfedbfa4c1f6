//! What every measured path is given: the bench's link, its services and real servers, the frames of new flows.

use std::net::IpAddr;

use director::{
    config::{Protocol, Scheduler},
    dataplane::{BackendPlan, ServicePlan},
    net::frames::{self, DIRECTOR_MAC, SYN},
    net::neighbor::{LinkInfo, Mac},
};

/// The benchmark's interface (MTU 1500).
pub(crate) fn link() -> LinkInfo {
    LinkInfo {
        index: 1,
        mac: Mac(DIRECTOR_MAC),
        mtu: 1500,
    }
}

pub(crate) const XDP_PASS: u32 = 2;
pub(crate) const XDP_TX: u32 = 3;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// Real server `i`'s MAC in the bench's plan.
pub(crate) fn backend_mac(i: usize) -> [u8; 6] {
    [2, 0, 0, 0, 1, i as u8]
}

pub(crate) fn service(vip: &str, servers: &[&str]) -> ServicePlan {
    ServicePlan {
        address: ip(vip),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler: Scheduler::Mh,
        persistence_timeout: 0,
        backends: servers
            .iter()
            .enumerate()
            .map(|(i, a)| BackendPlan {
                address: ip(a),
                weight: 1,
                mac: Some(Mac(backend_mac(i))),
                failed: false,
                pool_weight: 1,
            })
            .collect(),
        members: Vec::new(),
        lb_kind: Default::default(),
        fwmark: None,
    }
}

/// A new client flow per frame to `vip`: the source address and port vary
/// with `round` and `i`.
pub(crate) fn new_flow_to(v6: bool, round: u32, i: u32, vip: &str) -> Vec<u8> {
    let (src, dst) = if v6 {
        (
            IpAddr::from([
                0xfd,
                1,
                0,
                round as u8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ]),
            ip(vip),
        )
    } else {
        (
            IpAddr::from([10, 100 + round as u8, (i >> 8) as u8, i as u8]),
            ip(vip),
        )
    };
    frames::tcp_frame(src, 1024 + (i % 60000) as u16, dst, 80, SYN)
}
