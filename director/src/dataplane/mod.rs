//! The dataplane: what the daemon asks of whatever forwards the packets.
//!
//! The daemon computes a [`ServicePlan`] per virtual service (its real
//! servers with weights and MACs) and hands the whole set to the dataplane,
//! which makes the kernel match it: XDP ([`xdp::XdpDataplane`]), or the
//! kernel's IPVS where XDP cannot run ([`ipvs::IpvsDataplane`]). VRRP,
//! health checks, status and config never know which one runs.

pub mod bpffs;
pub mod flowsync;
pub mod ipvs;
pub mod maglev;
pub mod xdp;

use std::{net::IpAddr, path::Path};

use tracing::warn;

use director_common::ServiceKey;

use crate::{
    config::{DataplaneKind, Protocol, Scheduler, ServiceAddr},
    net::neighbor::Mac,
};

/// Errors of either dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Xdp(#[from] xdp::XdpError),
    #[error(transparent)]
    Ipvs(#[from] ipvs::IpvsError),
    #[error("no dataplane can run here: XDP: {xdp}; IPVS: {ipvs}")]
    Neither {
        xdp: Box<xdp::XdpError>,
        ipvs: Box<ipvs::IpvsError>,
    },
}

/// The running dataplane.
pub enum Dataplane {
    Xdp(Box<xdp::XdpDataplane>),
    Ipvs(ipvs::IpvsDataplane),
}

impl Dataplane {
    /// Opens the configured dataplane; `auto` tries XDP and falls back to
    /// IPVS with one log line saying why.
    pub fn open(
        kind: DataplaneKind,
        xdp_options: &xdp::XdpOptions,
        state_dir: &Path,
    ) -> Result<Dataplane, DataplaneError> {
        match kind {
            DataplaneKind::Xdp => Ok(Dataplane::Xdp(Box::new(xdp::XdpDataplane::open(
                xdp_options,
            )?))),
            DataplaneKind::Ipvs => Ok(Dataplane::Ipvs(ipvs::IpvsDataplane::open(state_dir)?)),
            DataplaneKind::Auto => match xdp::XdpDataplane::open(xdp_options) {
                Ok(d) => Ok(Dataplane::Xdp(Box::new(d))),
                Err(xdp) => Self::fall_back(xdp, state_dir),
            },
        }
    }

    /// `auto` when XDP cannot run (`xdp` says why): the kernel's IPVS, with
    /// one log line saying why; both reasons when IPVS cannot run either.
    pub fn fall_back(xdp: xdp::XdpError, state_dir: &Path) -> Result<Dataplane, DataplaneError> {
        warn!(error = %xdp, "XDP cannot run here: falling back to the kernel's IPVS");
        match ipvs::IpvsDataplane::open(state_dir) {
            Ok(d) => Ok(Dataplane::Ipvs(d)),
            Err(ipvs) => Err(DataplaneError::Neither {
                xdp: Box::new(xdp),
                ipvs: Box::new(ipvs),
            }),
        }
    }

    /// `xdp` or `ipvs` (the status document's `dataplane`).
    pub fn name(&self) -> &'static str {
        match self {
            Dataplane::Xdp(_) => "xdp",
            Dataplane::Ipvs(_) => "ipvs",
        }
    }

    /// Whether the XDP program forwards (not IPVS): what has a flow table,
    /// the SYN-flood guard and flow sync.
    pub fn is_xdp(&self) -> bool {
        matches!(self, Dataplane::Xdp(_))
    }

    /// The XDP attach mode, when XDP runs.
    pub fn xdp_mode(&self) -> Option<&'static str> {
        match self {
            Dataplane::Xdp(d) => Some(d.mode().as_str()),
            Dataplane::Ipvs(_) => None,
        }
    }

    /// Follows the configured interface when it was re-created (XDP
    /// re-attaches; IPVS does not depend on it). Returns whether anything
    /// changed.
    pub fn follow_interface(&mut self) -> Result<bool, DataplaneError> {
        match self {
            Dataplane::Xdp(d) => Ok(d.follow_interface()?),
            Dataplane::Ipvs(_) => Ok(false),
        }
    }

    /// The SYN-flood guard (`global.new_flow_limit`; XDP only).
    pub fn set_new_flow_limit(&mut self, n: u32) {
        if let Dataplane::Xdp(d) = self {
            d.set_new_flow_limit(n);
        }
    }

    /// New flows forwarded but not recorded past the limit (XDP only).
    pub fn unrecorded_flows(&self) -> Option<u64> {
        match self {
            Dataplane::Xdp(d) => d.unrecorded_flows().ok(),
            Dataplane::Ipvs(_) => None,
        }
    }

    pub fn apply(
        &mut self,
        plans: &[ServicePlan],
        udp_timeout: u32,
        link: crate::net::neighbor::LinkInfo,
    ) -> Result<(), DataplaneError> {
        match self {
            Dataplane::Xdp(d) => {
                d.apply(plans, udp_timeout, link)?;
                if let Some(served) = &d.served
                    && let Ok(mut s) = served.write()
                {
                    *s = plans.iter().map(|p| p.address).collect();
                }
                Ok(())
            }
            Dataplane::Ipvs(d) => Ok(d.apply(plans, udp_timeout)?),
        }
    }

    /// Publishes, from now on, the addresses whose services XDP forwards
    /// (IPVS publishes none: it needs the address local first).
    pub fn publish_served(&mut self, to: Served) {
        if let Dataplane::Xdp(d) = self {
            d.served = Some(to);
        }
    }

    pub fn service_traffic(&self, plan: &ServicePlan) -> Result<Traffic, DataplaneError> {
        match self {
            Dataplane::Xdp(d) => Ok(d.service_traffic(plan)?),
            Dataplane::Ipvs(d) => Ok(d.service_traffic(plan)?),
        }
    }

    /// Traffic of each of `addresses` (real servers of `plan`'s service;
    /// zero for one the dataplane does not know). One kernel read per
    /// service where the dataplane allows it (IPVS lists all destinations
    /// at once).
    pub fn backends_traffic(&self, plan: &ServicePlan, addresses: &[IpAddr]) -> Vec<Traffic> {
        match self {
            Dataplane::Xdp(d) => addresses
                .iter()
                .map(|a| d.backend_traffic(plan, *a).unwrap_or_default())
                .collect(),
            Dataplane::Ipvs(d) => {
                let all = d.backends_traffic(plan).unwrap_or_default();
                addresses
                    .iter()
                    .map(|a| all.get(a).copied().unwrap_or_default())
                    .collect()
            }
        }
    }

    /// Flow-table exceptions to share with peers (XDP only).
    pub fn exception_flows(&self, limit: usize) -> Vec<xdp::PinnedFlow> {
        match self {
            Dataplane::Xdp(d) => d.exception_flows(limit).unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the flow table");
                Vec::new()
            }),
            Dataplane::Ipvs(_) => Vec::new(),
        }
    }

    /// A snapshot to find flow-table exceptions with off the loop (XDP
    /// only).
    pub fn exception_scan(&self) -> Option<xdp::Scan> {
        match self {
            Dataplane::Xdp(d) => d
                .exception_scan()
                .inspect_err(|e| warn!(error = %e, "cannot read the flow table"))
                .ok(),
            Dataplane::Ipvs(_) => None,
        }
    }

    /// Takes flows a peer shared (XDP only); returns how many were new.
    pub fn import_flows(&mut self, flows: &[xdp::PinnedFlow]) -> usize {
        match self {
            Dataplane::Xdp(d) => d.import_flows(flows).unwrap_or_else(|e| {
                warn!(error = %e, "cannot write the flow table");
                0
            }),
            Dataplane::Ipvs(_) => 0,
        }
    }

    /// What VRRP calls when a virtual MAC (`use_vmac`) becomes ours or
    /// stops being ours: the XDP program then accepts frames addressed to
    /// it. (IPVS needs nothing: the macvlan holding the VIP delivers them.)
    pub fn vmac_hook(&mut self) -> Option<VmacHook> {
        match self {
            Dataplane::Xdp(d) => d.vmac_hook(),
            Dataplane::Ipvs(_) => None,
        }
    }

    /// MACs a previous run forwarded to (XDP's pinned maps).
    pub fn known_macs(&self) -> Vec<(IpAddr, Mac)> {
        match self {
            Dataplane::Xdp(d) => d.known_macs(),
            Dataplane::Ipvs(_) => Vec::new(),
        }
    }

    /// Lets go without tearing down: the kernel keeps forwarding.
    pub fn release(self) {
        match self {
            Dataplane::Xdp(d) => (*d).release(),
            Dataplane::Ipvs(_) => {}
        }
    }
}

// What VRRP needs of a dataplane, defined by VRRP and implemented here.
pub use crate::vrrp::{Served, VmacHook};

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
    /// A group's members (`[[virtual_server_group]]`): every address and
    /// port range it answers on, one pool for all. Empty: `address:port`
    /// only.
    pub members: Vec<crate::config::GroupMember>,
    /// Direct routing or IP-in-IP tunnelling (`lb_kind`).
    pub lb_kind: crate::config::LbKind,
    /// An IPVS firewall-mark service (`address` is then unspecified).
    pub fwmark: Option<u32>,
}

impl ServicePlan {
    /// Which service this is.
    pub fn id(&self) -> ServiceAddr {
        ServiceAddr {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// The service map key of this service.
    pub fn key(&self) -> ServiceKey {
        self.id().key()
    }

    /// `address:port/protocol` for logs.
    pub fn name(&self) -> String {
        self.id().to_string()
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
    /// Failed its checks (weight 0): no new flows. The XDP dataplane keeps
    /// its established TCP flows on it (as IPVS keeps a removed server's
    /// connections); IPVS removes it, as keepalived does.
    pub failed: bool,
    /// Its weight once its checks pass again (configured or dynamic; the
    /// `weight` of a healthy server): flow sync shares a flow the table of
    /// the recovered pool would move, before the recovery, which a peer
    /// may see first.
    pub pool_weight: u32,
}

/// Per-service or per-real-server traffic counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl Traffic {
    /// Adds `other` (wrapping, as kernel counters do).
    pub fn add(&mut self, other: &Traffic) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}
