//! The dataplane: what the daemon asks of whatever forwards the packets.
//!
//! The daemon computes a [`ServicePlan`] per virtual service (its real
//! servers with weights and MACs) and hands the whole set to the dataplane,
//! which makes the kernel match it. Today the dataplane is XDP
//! ([`xdp::XdpDataplane`]); kernel IPVS comes later behind the same plan.

pub mod xdp;

use std::net::IpAddr;

use director_common::{IPPROTO_TCP, IPPROTO_UDP, ServiceKey};

use crate::{
    config::{Protocol, Scheduler},
    neighbor::Mac,
};

/// One virtual service as the dataplane should forward it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub address: IpAddr,
    /// 0: every port of the VIP.
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    /// Client affinity in seconds (0: off).
    pub persistence_timeout: u32,
    /// Every configured real server, in config order.
    pub backends: Vec<BackendPlan>,
}

impl ServicePlan {
    /// The service map key of this service.
    pub fn key(&self) -> ServiceKey {
        service_key(self.address, self.port, self.protocol)
    }

    /// `address:port/protocol` for logs.
    pub fn name(&self) -> String {
        match self.address {
            IpAddr::V4(a) => format!("{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => format!("[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

/// One configured real server of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendPlan {
    pub address: IpAddr,
    /// 0 drains: no new flows, existing flows continue.
    pub weight: u32,
    /// Unknown MAC: the server gets no traffic at all.
    pub mac: Option<Mac>,
}

/// Per-service or per-real-server traffic counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Service map key for a service.
pub fn service_key(address: IpAddr, port: u16, protocol: Protocol) -> ServiceKey {
    match address {
        IpAddr::V4(a) => ServiceKey::v4(a.octets(), port, protocol.number()),
        IpAddr::V6(a) => ServiceKey::v6(a.octets(), port, protocol.number()),
    }
}

/// `address:port/protocol` of a service key, for logs.
pub fn key_name(key: &ServiceKey) -> String {
    let proto = match key.protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "?",
    };
    let port = key.port();
    if key.flags & director_common::KEY_V6 != 0 {
        format!("[{}]:{port}/{proto}", std::net::Ipv6Addr::from(key.addr))
    } else {
        let a = key.addr;
        format!(
            "{}:{port}/{proto}",
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3])
        )
    }
}
