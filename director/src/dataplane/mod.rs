//! The dataplane: what the daemon asks of whatever forwards the packets.
//!
//! The daemon computes a [`ServicePlan`] per virtual service (which real
//! servers may take traffic, with their MACs) and hands the whole set to the
//! dataplane, which makes the kernel match it. Today the only dataplane is
//! XDP ([`xdp::XdpDataplane`]); kernel IPVS comes later behind the same plan.

pub mod xdp;

use std::net::{IpAddr, Ipv4Addr};

use crate::{config::Protocol, neighbor::Mac};

/// One virtual service as the dataplane should forward it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// Real servers that may receive new traffic, in config order. Servers
    /// with weight 0 or an unresolved MAC are left out.
    pub backends: Vec<BackendPlan>,
}

/// One real server that may receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendPlan {
    pub address: IpAddr,
    pub mac: Mac,
}

/// Per-service and per-real-server traffic counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}
