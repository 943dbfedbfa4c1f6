//! The kernel IPVS dataplane, for where XDP cannot run: the same service
//! plans, programmed over generic netlink in direct-routing mode. Changes
//! are applied as a diff against what the kernel has; the daemon owns only
//! the services it created (listed in `<state_dir>/ipvs-services.json`)
//! and leaves every other IPVS service alone. Stopping the daemon leaves its
//! services forwarding (like the pinned XDP dataplane); `director flush`
//! removes them.

pub mod netlink;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::netlink::*;
use super::{ServicePlan, Traffic};
use crate::config::{LbKind, Scheduler};

/// The file listing the services this daemon created.
pub const OWNED_FILE: &str = "ipvs-services.json";

/// Errors of the IPVS dataplane.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "{0}: IPVS cannot serve every port without persistence; use the xdp dataplane or set persistence_timeout"
    )]
    AnyPort(String),
    #[error("cannot record the owned IPVS services in {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A service's identity in IPVS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceId {
    pub address: IpAddr,
    pub port: u16,
    /// IP protocol number.
    pub protocol: u16,
    /// A firewall-mark service's mark (then address and port are
    /// unspecified and the protocol is TCP, as the kernel keeps it).
    #[serde(default)]
    pub fwmark: u32,
}

impl ServiceId {
    fn of(plan: &ServicePlan) -> ServiceId {
        match plan.fwmark {
            Some(mark) => ServiceId {
                address: plan.address,
                port: 0,
                protocol: 6,
                fwmark: mark,
            },
            None => ServiceId {
                address: plan.address,
                port: plan.port,
                protocol: u16::from(plan.protocol.number()),
                fwmark: 0,
            },
        }
    }

    /// Every IPVS service a plan needs: one, or one per address and port
    /// of a group's members (IPVS has no port ranges).
    fn all(plan: &ServicePlan) -> Vec<ServiceId> {
        if plan.members.is_empty() {
            return vec![ServiceId::of(plan)];
        }
        let protocol = u16::from(plan.protocol.number());
        plan.members
            .iter()
            .flat_map(|m| {
                m.addresses().into_iter().flat_map(move |address| {
                    (m.ports.0..=m.ports.1).map(move |port| ServiceId {
                        address,
                        port,
                        protocol,
                        fwmark: 0,
                    })
                })
            })
            .collect()
    }

    fn af(&self) -> u16 {
        if self.address.is_ipv4() { 2 } else { 10 }
    }

    /// The attributes naming the service.
    fn attrs(&self) -> Vec<Attr> {
        if self.fwmark != 0 {
            return vec![
                Attr::u16(SVC_ATTR_AF, self.af()),
                Attr::u32(SVC_ATTR_FWMARK, self.fwmark),
            ];
        }
        vec![
            Attr::u16(SVC_ATTR_AF, self.af()),
            Attr::u16(SVC_ATTR_PROTOCOL, self.protocol),
            Attr::addr(SVC_ATTR_ADDR, self.address),
            Attr::port(SVC_ATTR_PORT, self.port),
        ]
    }

    fn name(&self) -> String {
        if self.fwmark != 0 {
            let family = if self.address.is_ipv4() {
                ""
            } else {
                " (IPv6)"
            };
            return format!("fwmark {}{family}", self.fwmark);
        }
        let proto = match self.protocol {
            6 => "tcp",
            17 => "udp",
            _ => "?",
        };
        match self.address {
            IpAddr::V4(a) => format!("{a}:{}/{proto}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}/{proto}", self.port),
        }
    }
}

/// The IPVS forwarding method of an `lb_kind`.
fn forwarding(kind: LbKind) -> u32 {
    match kind {
        LbKind::Dr => FWD_DROUTE,
        LbKind::Tun => FWD_TUNNEL,
    }
}

/// IPVS scheduler names.
pub fn scheduler_name(s: Scheduler) -> &'static str {
    s.as_str()
}

/// What the kernel has for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelService {
    pub(crate) scheduler: String,
    pub(crate) flags: u32,
    pub(crate) timeout: u32,
}

/// The IPVS dataplane.
pub struct IpvsDataplane {
    /// Behind a lock so status reads (`&self`) can ask the kernel too.
    client: std::sync::Mutex<Client>,
    owned_path: PathBuf,
    owned: BTreeSet<ServiceId>,
    udp_timeout: Option<u32>,
}

/// Loads a kernel module if it is not there (modprobe; failures are left
/// to the operation that needs the module, which names what is missing).
fn modprobe(module: &str) {
    if Path::new("/sys/module").join(module).exists() {
        return;
    }
    match std::process::Command::new("modprobe").arg(module).output() {
        Ok(o) if o.status.success() => info!(module, "kernel module loaded"),
        Ok(o) => {
            warn!(module, error = %String::from_utf8_lossy(&o.stderr).trim(), "cannot load kernel module")
        }
        Err(e) => warn!(module, error = %e, "cannot run modprobe"),
    }
}

fn read_owned(path: &Path) -> BTreeSet<ServiceId> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl IpvsDataplane {
    /// Connects to the kernel's IPVS (loading `ip_vs` when missing).
    pub fn open(state_dir: &Path) -> Result<IpvsDataplane, IpvsError> {
        modprobe("ip_vs");
        let client = Client::open()?;
        // A persistent client's template must not keep sending new
        // connections to a server at weight 0 (drained, or failed with
        // inhibit_on_failure): the XDP dataplane never does, and IPVS only
        // with this (per network namespace) setting.
        let quiescent = Path::new("/proc/sys/net/ipv4/vs/expire_quiescent_template");
        match std::fs::write(quiescent, "1") {
            Ok(()) => {}
            Err(e) => {
                warn!(error = %e, path = %quiescent.display(), "cannot expire persistence templates of drained servers")
            }
        }
        let owned_path = state_dir.join(OWNED_FILE);
        let owned = read_owned(&owned_path);
        if !owned.is_empty() {
            info!(
                services = owned.len(),
                "adopting the IPVS services a previous run created"
            );
        }
        Ok(IpvsDataplane {
            client: std::sync::Mutex::new(client),
            owned_path,
            owned,
            udp_timeout: None,
        })
    }

    /// One request to the kernel.
    fn request(
        &self,
        cmd: u8,
        attrs: Vec<Attr>,
        dump: bool,
        what: &str,
    ) -> Result<Vec<Vec<Attr>>, IpvsError> {
        let mut client = self
            .client
            .lock()
            .map_err(|_| NetlinkError::Decode("the netlink client lock is poisoned".into()))?;
        Ok(client.request(cmd, attrs, dump, what)?)
    }

    fn services(&self) -> Result<BTreeMap<ServiceId, KernelService>, IpvsError> {
        let replies = self.request(CMD_GET_SERVICE, Vec::new(), true, "listing services")?;
        Ok(replies.iter().filter_map(|r| read_service(r)).collect())
    }

    /// The destinations of a service: address -> (weight, forwarding, attrs).
    fn dests(&self, id: &ServiceId) -> Result<BTreeMap<IpAddr, Vec<Attr>>, IpvsError> {
        let replies = self.request(
            CMD_GET_DEST,
            vec![Attr::Nested(CMD_ATTR_SERVICE, id.attrs())],
            true,
            &format!("listing the real servers of {}", id.name()),
        )?;
        let v6 = id.address.is_ipv6();
        Ok(replies.iter().filter_map(|r| read_dest(r, v6)).collect())
    }

    /// The service flags for a plan: persistence, and for `mh` the port
    /// in the hash (director's `mh` places flows; `sh` places clients).
    fn flags(plan: &ServicePlan) -> u32 {
        let persistent = if plan.persistence_timeout > 0 {
            SVC_F_PERSISTENT
        } else {
            0
        };
        let port = if plan.scheduler == Scheduler::Mh {
            SVC_F_SCHED_PORT
        } else {
            0
        };
        persistent | port
    }

    fn service_attrs(id: &ServiceId, plan: &ServicePlan) -> Vec<Attr> {
        let flags = Self::flags(plan);
        let timeout = plan.persistence_timeout;
        let netmask = if id.address.is_ipv4() { u32::MAX } else { 128 };
        let mut a = id.attrs();
        a.extend([
            Attr::string(SVC_ATTR_SCHED_NAME, scheduler_name(plan.scheduler)),
            Attr::Raw(
                SVC_ATTR_FLAGS,
                [flags.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat(),
            ),
            Attr::u32(SVC_ATTR_TIMEOUT, timeout),
            Attr::u32(SVC_ATTR_NETMASK, netmask),
        ]);
        a
    }

    fn dest_attrs(id: &ServiceId, address: IpAddr, weight: u32, kind: LbKind) -> Vec<Attr> {
        vec![
            Attr::addr(DEST_ATTR_ADDR, address),
            Attr::port(DEST_ATTR_PORT, id.port),
            Attr::u32(DEST_ATTR_FWD_METHOD, forwarding(kind)),
            Attr::u32(DEST_ATTR_WEIGHT, weight),
            Attr::u32(DEST_ATTR_U_THRESH, 0),
            Attr::u32(DEST_ATTR_L_THRESH, 0),
            Attr::u16(DEST_ATTR_ADDR_FAMILY, id.af()),
        ]
    }

    /// Makes the kernel's IPVS table match `plans` (only for services this
    /// daemon owns), changing only what differs.
    pub fn apply(&mut self, plans: &[ServicePlan], udp_timeout: u32) -> Result<(), IpvsError> {
        for p in plans {
            if p.port == 0 && p.persistence_timeout == 0 && p.fwmark.is_none() {
                return Err(IpvsError::AnyPort(p.name()));
            }
        }
        if self.udp_timeout != Some(udp_timeout) {
            self.request(
                CMD_SET_CONFIG,
                vec![Attr::u32(CMD_ATTR_TIMEOUT_UDP, udp_timeout)],
                false,
                "setting the UDP timeout",
            )?;
            self.udp_timeout = Some(udp_timeout);
        }
        let kernel = self.services()?;
        let wanted: BTreeSet<ServiceId> = plans.iter().flat_map(ServiceId::all).collect();
        // Ours first, so a crash between two steps still knows them.
        let mut owned: BTreeSet<ServiceId> = self.owned.union(&wanted).copied().collect();
        self.save_owned(&owned)?;
        for (plan, id) in plans
            .iter()
            .flat_map(|p| ServiceId::all(p).into_iter().map(move |id| (p, id)))
        {
            let attrs = Self::service_attrs(&id, plan);
            let want = KernelService {
                scheduler: scheduler_name(plan.scheduler).to_string(),
                flags: Self::flags(plan),
                timeout: plan.persistence_timeout,
            };
            match kernel.get(&id) {
                None => {
                    modprobe(&format!("ip_vs_{}", want.scheduler));
                    self.request(
                        CMD_NEW_SERVICE,
                        vec![Attr::Nested(CMD_ATTR_SERVICE, attrs)],
                        false,
                        &format!("adding {}", id.name()),
                    )?;
                    info!(service = %id.name(), scheduler = %want.scheduler, "IPVS service added");
                }
                Some(k)
                    if k.scheduler != want.scheduler
                        || k.flags & (SVC_F_PERSISTENT | SVC_F_SCHED_PORT) != want.flags
                        || (want.flags & SVC_F_PERSISTENT != 0 && k.timeout != want.timeout) =>
                {
                    modprobe(&format!("ip_vs_{}", want.scheduler));
                    self.request(
                        CMD_SET_SERVICE,
                        vec![Attr::Nested(CMD_ATTR_SERVICE, attrs)],
                        false,
                        &format!("updating {}", id.name()),
                    )?;
                    info!(service = %id.name(), scheduler = %want.scheduler, "IPVS service updated");
                }
                Some(_) => {}
            }
            let have = self.dests(&id)?;
            let svc = Attr::Nested(CMD_ATTR_SERVICE, id.attrs());
            // A failed server leaves IPVS, as with keepalived (IPVS keeps
            // its connections' entries; they resume if it comes back).
            let wanted = || plan.backends.iter().filter(|b| !b.failed);
            for b in wanted() {
                let dest = Attr::Nested(
                    CMD_ATTR_DEST,
                    Self::dest_attrs(&id, b.address, b.weight, plan.lb_kind),
                );
                let cmd = match have.get(&b.address) {
                    None => CMD_NEW_DEST,
                    Some(d)
                        if get_u32(d, DEST_ATTR_WEIGHT) != Some(b.weight)
                            || get_u32(d, DEST_ATTR_FWD_METHOD).map(|f| f & 7)
                                != Some(forwarding(plan.lb_kind)) =>
                    {
                        CMD_SET_DEST
                    }
                    Some(_) => continue,
                };
                self.request(
                    cmd,
                    vec![svc.clone(), dest],
                    false,
                    &format!("real server {} of {}", b.address, id.name()),
                )?;
            }
            for address in have.keys() {
                if !wanted().any(|b| b.address == *address) {
                    let dest = Attr::Nested(
                        CMD_ATTR_DEST,
                        vec![
                            Attr::addr(DEST_ATTR_ADDR, *address),
                            Attr::port(DEST_ATTR_PORT, id.port),
                            Attr::u16(DEST_ATTR_ADDR_FAMILY, id.af()),
                        ],
                    );
                    self.request(
                        CMD_DEL_DEST,
                        vec![svc.clone(), dest],
                        false,
                        &format!("removing real server {address} of {}", id.name()),
                    )?;
                }
            }
        }
        // Services we created that left the config.
        for id in self.owned.difference(&wanted).copied().collect::<Vec<_>>() {
            if kernel.contains_key(&id) {
                self.request(
                    CMD_DEL_SERVICE,
                    vec![Attr::Nested(CMD_ATTR_SERVICE, id.attrs())],
                    false,
                    &format!("removing {}", id.name()),
                )?;
                info!(service = %id.name(), "IPVS service removed");
            }
            owned.remove(&id);
        }
        self.save_owned(&owned)?;
        self.owned = owned;
        Ok(())
    }

    fn save_owned(&self, owned: &BTreeSet<ServiceId>) -> Result<(), IpvsError> {
        let text = serde_json::to_vec(owned).unwrap_or_default();
        let tmp = self.owned_path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.owned_path))
            .map_err(|source| IpvsError::State {
                path: self.owned_path.clone(),
                source,
            })
    }

    /// Traffic of a service from IPVS's own statistics (packets and bytes
    /// in, connections).
    pub fn service_traffic(&self, plan: &ServicePlan) -> Result<Traffic, IpvsError> {
        let mut sum = Traffic::default();
        for id in ServiceId::all(plan) {
            let replies = self.request(
                CMD_GET_SERVICE,
                vec![Attr::Nested(CMD_ATTR_SERVICE, id.attrs())],
                false,
                &format!("reading {}", id.name()),
            )?;
            let t = replies
                .iter()
                .find_map(|r| {
                    nest(r, CMD_ATTR_SERVICE).map(|s| traffic(s, SVC_ATTR_STATS64, SVC_ATTR_STATS))
                })
                .unwrap_or_default();
            sum.add(&t);
        }
        Ok(sum)
    }

    /// Traffic of every real server of a service (one dump).
    pub fn backends_traffic(
        &self,
        plan: &ServicePlan,
    ) -> Result<std::collections::HashMap<IpAddr, Traffic>, IpvsError> {
        let mut sums = std::collections::HashMap::<IpAddr, Traffic>::new();
        for id in ServiceId::all(plan) {
            for (a, d) in self.dests(&id)? {
                sums.entry(a)
                    .or_default()
                    .add(&traffic(&d, DEST_ATTR_STATS64, DEST_ATTR_STATS));
            }
        }
        Ok(sums)
    }
}

/// Statistics from a service or destination: 64-bit if present.
/// A service of a GET_SERVICE reply (`None` for fwmark services, which are
/// never ours, and for replies missing what identifies a service).
pub(crate) fn read_service(reply: &[Attr]) -> Option<(ServiceId, KernelService)> {
    let s = nest(reply, CMD_ATTR_SERVICE)?;
    let v6 = get_u16(s, SVC_ATTR_AF) == Some(10);
    let id = match get_u32(s, SVC_ATTR_FWMARK).filter(|m| *m != 0) {
        // A firewall-mark service: the kernel sends no address or port.
        Some(fwmark) => ServiceId {
            address: if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            },
            port: 0,
            protocol: 6,
            fwmark,
        },
        None => ServiceId {
            address: get_addr(s, SVC_ATTR_ADDR, v6)?,
            port: get_port(s, SVC_ATTR_PORT)?,
            protocol: get_u16(s, SVC_ATTR_PROTOCOL)?,
            fwmark: 0,
        },
    };
    let flags = raw(s, SVC_ATTR_FLAGS)
        .and_then(|b| b.get(..4))
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    Some((
        id,
        KernelService {
            scheduler: get_string(s, SVC_ATTR_SCHED_NAME).unwrap_or_default(),
            flags,
            timeout: get_u32(s, SVC_ATTR_TIMEOUT).unwrap_or(0),
        },
    ))
}

/// A destination of a GET_DEST reply: its address and attributes (the
/// family defaults to the service's, `v6`).
pub(crate) fn read_dest(reply: &[Attr], v6: bool) -> Option<(IpAddr, Vec<Attr>)> {
    let d = nest(reply, CMD_ATTR_DEST)?.to_vec();
    let v6 = get_u16(&d, DEST_ATTR_ADDR_FAMILY).map_or(v6, |f| f == 10);
    Some((get_addr(&d, DEST_ATTR_ADDR, v6)?, d))
}

pub(crate) fn traffic(attrs: &[Attr], stats64: u16, stats32: u16) -> Traffic {
    if let Some(s) = nest(attrs, stats64) {
        return Traffic {
            packets: get_u64(s, STATS_ATTR_INPKTS).unwrap_or(0),
            bytes: get_u64(s, STATS_ATTR_INBYTES).unwrap_or(0),
            new_flows: get_u64(s, STATS_ATTR_CONNS).unwrap_or(0),
        };
    }
    let Some(s) = nest(attrs, stats32) else {
        return Traffic::default();
    };
    Traffic {
        packets: get_u32(s, STATS_ATTR_INPKTS).map_or(0, u64::from),
        bytes: get_u64(s, STATS_ATTR_INBYTES).unwrap_or(0),
        new_flows: get_u32(s, STATS_ATTR_CONNS).map_or(0, u64::from),
    }
}

/// Removes the IPVS services a daemon with `state_dir` created. Returns
/// what was removed (nothing when it never ran with IPVS).
pub fn flush(state_dir: &Path) -> Result<Vec<String>, IpvsError> {
    let path = state_dir.join(OWNED_FILE);
    let owned = read_owned(&path);
    if owned.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(Vec::new());
    }
    let mut client = Client::open()?;
    let mut removed = Vec::new();
    for id in owned {
        match client.request(
            CMD_DEL_SERVICE,
            vec![Attr::Nested(CMD_ATTR_SERVICE, id.attrs())],
            false,
            &format!("removing {}", id.name()),
        ) {
            Ok(_) => removed.push(format!("IPVS service {}", id.name())),
            // Already gone.
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Protocol,
        dataplane::{BackendPlan, ServicePlan},
    };

    fn plan(address: &str, persistence: u32) -> ServicePlan {
        ServicePlan {
            address: address.parse().expect("ip"),
            port: 443,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Wlc,
            persistence_timeout: persistence,
            backends: vec![BackendPlan {
                address: "10.0.0.20".parse().expect("ip"),
                weight: 0,
                mac: None,
                failed: false,
                pool_weight: 0,
            }],
            members: Vec::new(),
            lb_kind: crate::config::LbKind::Dr,
            fwmark: None,
        }
    }

    /// Encodes a message the way `Client::request` does and parses it back
    /// with the family's nesting rules.
    fn wire(attrs: Vec<Attr>) -> Vec<Attr> {
        let msg = netlink::IpvsMessage { cmd: 0, attrs };
        let mut b = vec![0u8; netlink_packet_core::Emitable::buffer_len(&msg)];
        netlink_packet_core::Emitable::emit(&msg, &mut b);
        parse_attrs(&b, Level::Command).expect("parse")
    }

    /// Every message the dataplane sends, checked against ip_vs.h's
    /// attributes: service identity, scheduler, persistence flags and
    /// timeout, netmask; DR destinations with weight and thresholds; the UDP
    /// timeout of SET_CONFIG.
    #[test]
    fn every_message_carries_the_ip_vs_h_attributes() {
        // NEW_SERVICE / SET_SERVICE (persistent, IPv6).
        let p = plan("fd00::100", 300);
        let id = ServiceId::of(&p);
        let got = wire(vec![Attr::Nested(
            CMD_ATTR_SERVICE,
            IpvsDataplane::service_attrs(&id, &p),
        )]);
        let s = nest(&got, CMD_ATTR_SERVICE).expect("service");
        assert_eq!(get_u16(s, SVC_ATTR_AF), Some(10));
        assert_eq!(get_u16(s, SVC_ATTR_PROTOCOL), Some(6));
        assert_eq!(get_port(s, SVC_ATTR_PORT), Some(443));
        assert_eq!(get_addr(s, SVC_ATTR_ADDR, true), Some(p.address));
        assert_eq!(get_string(s, SVC_ATTR_SCHED_NAME).as_deref(), Some("wlc"));
        let flags = raw(s, SVC_ATTR_FLAGS).expect("flags");
        assert_eq!(flags.len(), 8, "struct ip_vs_flags {{ flags, mask }}");
        assert_eq!(&flags[..4], &SVC_F_PERSISTENT.to_ne_bytes());
        assert_eq!(get_u32(s, SVC_ATTR_TIMEOUT), Some(300));
        assert_eq!(get_u32(s, SVC_ATTR_NETMASK), Some(128));
        // Not persistent, IPv4: flags 0, timeout 0, netmask all ones.
        let p4 = plan("10.0.0.100", 0);
        let id4 = ServiceId::of(&p4);
        let got = wire(vec![Attr::Nested(
            CMD_ATTR_SERVICE,
            IpvsDataplane::service_attrs(&id4, &p4),
        )]);
        let s = nest(&got, CMD_ATTR_SERVICE).expect("service");
        assert_eq!(&raw(s, SVC_ATTR_FLAGS).expect("flags")[..4], &[0; 4]);
        assert_eq!(get_u32(s, SVC_ATTR_NETMASK), Some(u32::MAX));
        // mh hashes the whole flow, as the XDP dataplane: the port flag.
        let mut pm = plan("10.0.0.100", 0);
        pm.scheduler = Scheduler::Mh;
        let got = wire(vec![Attr::Nested(
            CMD_ATTR_SERVICE,
            IpvsDataplane::service_attrs(&ServiceId::of(&pm), &pm),
        )]);
        let s = nest(&got, CMD_ATTR_SERVICE).expect("service");
        assert_eq!(
            &raw(s, SVC_ATTR_FLAGS).expect("flags")[..4],
            &SVC_F_SCHED_PORT.to_ne_bytes()
        );
        // DEL_SERVICE / GET_DEST: identity only.
        let got = wire(vec![Attr::Nested(CMD_ATTR_SERVICE, id4.attrs())]);
        let s = nest(&got, CMD_ATTR_SERVICE).expect("service");
        assert_eq!(s.len(), 4);
        assert_eq!(get_u16(s, SVC_ATTR_AF), Some(2));
        // NEW_DEST / SET_DEST: DR, weight (0 drains), no thresholds.
        let d = IpvsDataplane::dest_attrs(&id4, "10.0.0.20".parse().expect("ip"), 0, LbKind::Dr);
        let got = wire(vec![
            Attr::Nested(CMD_ATTR_SERVICE, id4.attrs()),
            Attr::Nested(CMD_ATTR_DEST, d),
        ]);
        let d = nest(&got, CMD_ATTR_DEST).expect("dest");
        assert_eq!(get_u32(d, DEST_ATTR_FWD_METHOD), Some(FWD_DROUTE));
        assert_eq!(get_u32(d, DEST_ATTR_WEIGHT), Some(0));
        assert_eq!(get_u32(d, DEST_ATTR_U_THRESH), Some(0));
        assert_eq!(get_u32(d, DEST_ATTR_L_THRESH), Some(0));
        assert_eq!(get_port(d, DEST_ATTR_PORT), Some(443));
        assert_eq!(get_u16(d, DEST_ATTR_ADDR_FAMILY), Some(2));
        // SET_CONFIG: the UDP timeout.
        let got = wire(vec![Attr::u32(CMD_ATTR_TIMEOUT_UDP, 300)]);
        assert_eq!(get_u32(&got, CMD_ATTR_TIMEOUT_UDP), Some(300));
        // Statistics of a reply, 64-bit preferred over 32-bit.
        let st = vec![Attr::Nested(
            SVC_ATTR_STATS,
            vec![
                Attr::u32(STATS_ATTR_CONNS, 3),
                Attr::u32(STATS_ATTR_INPKTS, 21),
                Attr::Raw(STATS_ATTR_INBYTES, 1170u64.to_ne_bytes().to_vec()),
            ],
        )];
        let t = traffic(&st, SVC_ATTR_STATS64, SVC_ATTR_STATS);
        assert_eq!((t.packets, t.bytes, t.new_flows), (21, 1170, 3));
    }

    #[test]
    fn command_and_attribute_numbers_follow_ip_vs_h() {
        // enum { IPVS_CMD_UNSPEC = 0, NEW_SERVICE, SET_SERVICE, DEL_SERVICE,
        // GET_SERVICE, NEW_DEST, SET_DEST, DEL_DEST, GET_DEST, NEW_DAEMON,
        // DEL_DAEMON, GET_DAEMON, SET_CONFIG, GET_CONFIG, SET_INFO,
        // GET_INFO, ZERO, FLUSH }
        assert_eq!(
            [
                CMD_NEW_SERVICE,
                CMD_SET_SERVICE,
                CMD_DEL_SERVICE,
                CMD_GET_SERVICE
            ],
            [1, 2, 3, 4]
        );
        assert_eq!(
            [CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST],
            [5, 6, 7, 8]
        );
        assert_eq!(CMD_SET_CONFIG, 12);
        // IPVS_CMD_ATTR_{SERVICE=1, DEST, DAEMON, TIMEOUT_TCP, TIMEOUT_TCP_FIN, TIMEOUT_UDP}
        assert_eq!(
            [CMD_ATTR_SERVICE, CMD_ATTR_DEST, CMD_ATTR_TIMEOUT_UDP],
            [1, 2, 6]
        );
        assert_eq!(FWD_DROUTE, 3);
    }
}
