//! The daemon: one event loop that keeps the dataplane equal to the config
//! and to what the kernel knows about the real servers, and answers the
//! control socket.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, DataplaneKind, VirtualServer},
    control::{self, ControlError, Pending, Request, Response},
    dataplane::{
        BackendPlan, Dataplane, DataplaneError, ServicePlan, bpffs,
        xdp::{PinPaths, XdpError, XdpOptions},
    },
    health::{self, Board},
    neighbor::{Mac, Neighbor, NeighborError, Neighbors},
    status::{RealServerStatus, Status, VirtualServerStatus},
    vrrp::instance::{VmacHook, Vrrp, VrrpError},
};

/// How often unresolved real servers are retried.
const RESOLVE_RETRY: Duration = Duration::from_millis(200);
/// How often the neighbour table is re-read when nothing changes.
const REFRESH: Duration = Duration::from_secs(5);
/// Directory under the state directory where earlier versions pinned the
/// dataplane.
const LEGACY_PIN_DIR: &str = "bpf";

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error(
        "another director already runs with state directory {} (pid {pid}); give each daemon its own state_dir",
        state_dir.display()
    )]
    AlreadyRunning { state_dir: PathBuf, pid: String },
    #[error(transparent)]
    Neighbor(#[from] NeighborError),
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Vrrp(#[from] VrrpError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("{0}")]
    FlowSync(String),
    #[error("BFD: {0}")]
    Bfd(String),
}

/// What we know of one real server's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// Not known yet: asked the kernel, waiting for the answer.
    Pending,
    Resolved(Mac),
    /// The kernel gave up (no ARP/ND reply): not forwarded to.
    Failed,
}

/// Tracks real-server MACs, asking the kernel to resolve what is missing.
/// A direct-routing server's MAC is its own; a tunnel server's is its
/// next hop's (the kernel's route to it, on our interface).
struct Resolver {
    /// Neighbours to resolve: direct-routing servers and next hops.
    servers: BTreeMap<IpAddr, Resolution>,
    /// Tunnel real servers and their next hop (`None`: no route to it out
    /// of our interface).
    tunnels: BTreeMap<IpAddr, Option<IpAddr>>,
    /// Direct-routing real servers (and sorry servers).
    direct: BTreeSet<IpAddr>,
    /// MACs a previous daemon used for tunnel servers (their next hop's),
    /// taken until the kernel answers.
    seeds: HashMap<IpAddr, Mac>,
}

impl Resolver {
    fn new(config: &Config) -> Resolver {
        let mut direct = BTreeSet::new();
        let mut tunnels = BTreeMap::new();
        for vs in &config.virtual_server {
            for rs in &vs.real_server {
                if vs.lb_kind == crate::config::LbKind::Tun {
                    tunnels.insert(rs.address, None);
                } else {
                    direct.insert(rs.address);
                }
            }
            direct.extend(vs.sorry_server);
        }
        let servers = direct.iter().map(|a| (*a, Resolution::Pending)).collect();
        Resolver {
            servers,
            tunnels,
            direct,
            seeds: HashMap::new(),
        }
    }

    /// Looks up the next hop of every tunnel real server again.
    async fn route_tunnels(&mut self, neighbors: &Neighbors) -> Result<(), NeighborError> {
        let index = neighbors.link().index;
        for (addr, via) in self.tunnels.iter_mut() {
            let next = match neighbors.route_to(*addr).await? {
                Some((oif, gateway)) if oif == index => Some(gateway.unwrap_or(*addr)),
                _ => None,
            };
            if next != *via {
                match next {
                    Some(hop) => {
                        info!(real_server = %addr, next_hop = %hop, "tunnel real server routed")
                    }
                    None => warn!(
                        real_server = %addr,
                        "no route to tunnel real server out of our interface: not forwarding to it"
                    ),
                }
                *via = next;
            }
        }
        let wanted: BTreeSet<IpAddr> = self
            .direct
            .iter()
            .copied()
            .chain(self.tunnels.values().flatten().copied())
            .collect();
        self.servers.retain(|a, _| wanted.contains(a));
        for a in wanted {
            self.servers.entry(a).or_insert(Resolution::Pending);
        }
        // A restart keeps forwarding to tunnel servers while the kernel
        // re-resolves their next hop.
        for (addr, via) in &self.tunnels {
            if let (Some(hop), Some(mac)) = (via, self.seeds.remove(addr))
                && let Some(state) = self.servers.get_mut(hop)
                && *state == Resolution::Pending
            {
                *state = Resolution::Resolved(mac);
            }
        }
        Ok(())
    }

    /// Re-reads the routes to tunnel servers and the neighbour table;
    /// returns whether anything is unresolved.
    async fn refresh(&mut self, neighbors: &Neighbors) -> Result<bool, NeighborError> {
        self.route_tunnels(neighbors).await?;
        let table = neighbors.dump().await?;
        let mut unresolved = self.tunnels.values().any(Option::is_none);
        for (addr, state) in self.servers.iter_mut() {
            let next = match table.get(addr) {
                Some(Neighbor::Resolved(mac)) => Resolution::Resolved(*mac),
                Some(Neighbor::Failed) => Resolution::Failed,
                // Missing (never asked, or aged out of the cache) or in
                // progress: keep what we had, and ask (again).
                Some(Neighbor::Incomplete) | None => *state,
            };
            if !matches!(table.get(addr), Some(Neighbor::Resolved(_)))
                && let Err(e) = neighbors.solicit(*addr).await
            {
                warn!(real_server = %addr, error = %e, "cannot ask the kernel to resolve real server");
            }
            if next != *state {
                match (*state, next) {
                    (Resolution::Resolved(old), Resolution::Resolved(mac)) => {
                        info!(real_server = %addr, old = %old, new = %mac, "real server MAC changed")
                    }
                    (_, Resolution::Resolved(mac)) => {
                        info!(real_server = %addr, %mac, "real server MAC resolved")
                    }
                    (_, Resolution::Failed) => {
                        warn!(real_server = %addr, "real server does not answer ARP/ND: not forwarding to it")
                    }
                    (_, Resolution::Pending) => {}
                }
                *state = next;
            }
            if !matches!(state, Resolution::Resolved(_)) {
                unresolved = true;
            }
        }
        Ok(unresolved)
    }

    /// Starts from the MACs a previous daemon used, so a restart does not
    /// take servers out while the kernel re-resolves them.
    fn seed(&mut self, known: Vec<(IpAddr, Mac)>) {
        for (addr, mac) in known {
            if let Some(state) = self.servers.get_mut(&addr)
                && *state == Resolution::Pending
            {
                *state = Resolution::Resolved(mac);
            }
            if self.tunnels.contains_key(&addr) {
                self.seeds.insert(addr, mac);
            }
        }
    }

    /// Every resolved MAC: of each neighbour, and of each tunnel real
    /// server (its next hop's, where `dr_check` sends its probe).
    fn resolved(&self) -> HashMap<IpAddr, Mac> {
        let mut out: HashMap<IpAddr, Mac> = self
            .servers
            .iter()
            .filter_map(|(a, r)| match r {
                Resolution::Resolved(m) => Some((*a, *m)),
                _ => None,
            })
            .collect();
        for addr in self.tunnels.keys() {
            if let Some(mac) = self.mac(addr, true) {
                out.entry(*addr).or_insert(mac);
            }
        }
        out
    }

    /// The MAC frames for real server `addr` go to: its own (direct
    /// routing), or its next hop's (`tunnel`).
    fn mac(&self, addr: &IpAddr, tunnel: bool) -> Option<Mac> {
        let hop = if tunnel {
            (*self.tunnels.get(addr)?)?
        } else {
            *addr
        };
        match self.servers.get(&hop) {
            Some(Resolution::Resolved(mac)) => Some(*mac),
            _ => None,
        }
    }
}

/// Health of one real server of a service: healthy, and a weight a
/// `misc_dynamic` check asked for.
fn server_health(board: &Board, vs: &VirtualServer, keys: &[String]) -> (bool, Option<u32>) {
    let Ok(b) = board.lock() else {
        return (true, None);
    };
    let mut healthy = true;
    let mut weight = None;
    for key in keys {
        if let Some(p) = b.get(key) {
            healthy &= p.healthy;
            weight = weight.or(p.weight);
        } else {
            healthy &= !vs.alpha;
        }
    }
    (healthy, weight)
}

/// Quorum bookkeeping of one service (keepalived's quorum and hysteresis).
fn quorum_next(vs: &VirtualServer, up: Option<bool>, healthy_weight: u64) -> bool {
    let q = u64::from(vs.quorum);
    let h = u64::from(vs.hysteresis);
    match up {
        None => healthy_weight >= q,
        Some(true) => healthy_weight + h >= q,
        Some(false) => healthy_weight >= q + h,
    }
}

/// The dataplane plan for `config` given MACs, health and quorum. Updates
/// `quorum` with each service's state; returns the services whose quorum
/// changed (for the quorum_up / quorum_down scripts).
fn plan(
    config: &Config,
    keys: &health::ProbeKeys,
    resolver: &Resolver,
    board: &Board,
    quorum: &mut BTreeMap<usize, bool>,
) -> (Vec<ServicePlan>, Vec<(usize, bool)>) {
    let mut changed = Vec::new();
    let plans = config
        .virtual_server
        .iter()
        .enumerate()
        .map(|(i, vs)| {
            let mut healthy_weight = 0u64;
            let mut backends: Vec<BackendPlan> = vs
                .real_server
                .iter()
                .enumerate()
                .filter_map(|(j, rs)| {
                    let none = Vec::new();
                    let k = keys.get(i).and_then(|v| v.get(j)).unwrap_or(&none);
                    let (healthy, dynamic) = server_health(board, vs, k);
                    let weight = dynamic.unwrap_or(rs.weight);
                    if healthy {
                        healthy_weight += u64::from(weight);
                    }
                    let weight = match (healthy, rs.inhibit_on_failure) {
                        (true, _) => weight,
                        // Failed but inhibited: drains instead of leaving.
                        (false, true) => 0,
                        (false, false) => return None,
                    };
                    Some(BackendPlan {
                        address: rs.address,
                        weight,
                        mac: resolver.mac(&rs.address, vs.lb_kind == crate::config::LbKind::Tun),
                    })
                })
                .collect();
            let before = quorum.get(&i).copied();
            let up = quorum_next(vs, before, healthy_weight);
            quorum.insert(i, up);
            if before.is_some() && before != Some(up) {
                changed.push((i, up));
            }
            if !up && let Some(sorry) = vs.sorry_server {
                backends = vec![BackendPlan {
                    address: sorry,
                    weight: 1,
                    mac: resolver.mac(&sorry, false),
                }];
            }
            ServicePlan {
                address: vs.address(),
                port: vs.port(),
                protocol: vs.protocol,
                scheduler: vs.scheduler,
                persistence_timeout: vs.persistence_timeout,
                backends,
                members: if vs.group.is_some() {
                    vs.members.clone()
                } else {
                    Vec::new()
                },
                lb_kind: vs.lb_kind,
                fwmark: vs.fwmark,
            }
        })
        .collect();
    (plans, changed)
}

/// The pin directory of the layout before pins moved to the host's bpffs:
/// `<state_dir>/bpf`. Flushed when found.
fn legacy_pin_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(LEGACY_PIN_DIR)
}

/// One daemon per state directory (its control socket, its pins): an
/// exclusive lock on `<state_dir>/director.lock`, held for the daemon's
/// life, holding its pid.
fn lock_state_dir(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = state_dir.join("director.lock");
    let io = |source| DaemonError::StateDir {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(io)?;
            lock.rewind().map_err(io)?;
            write!(lock, "{}", std::process::id()).map_err(io)?;
            Ok(lock)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(DaemonError::AlreadyRunning {
                state_dir: state_dir.to_path_buf(),
                pid: pid.trim().to_string(),
            })
        }
        Err((_, e)) => Err(io(e.into())),
    }
}

/// Removes the pinned dataplane in `pin_dir` (detaching the program) and the
/// IPVS services the daemon of `state_dir` created. Works from a private
/// mount namespace too (the host's bpffs is brought into view as the daemon
/// does).
pub fn flush(state_dir: &Path, pin_dir: &Path) -> Result<Vec<String>, DaemonError> {
    let mut removed = Vec::new();
    if let Some(pins) = bpffs::prepare(pin_dir, bpffs::Purpose::Find)? {
        removed.extend(crate::dataplane::xdp::flush(&pins.path, state_dir)?);
        if pins.path.exists() {
            removed.push(pins.path.display().to_string());
        }
        bpffs::remove_dir(&pins.path);
    }
    let legacy = legacy_pin_dir(state_dir);
    if bpffs::on_bpffs(&legacy) && legacy.exists() {
        removed.extend(crate::dataplane::xdp::flush(&legacy, state_dir)?);
    }
    // The IPVS services this state directory's daemon created.
    removed.extend(
        crate::dataplane::ipvs::flush(state_dir).map_err(crate::dataplane::DataplaneError::from)?,
    );
    Ok(removed)
}

/// Everything the event loop owns.
struct Daemon {
    config: Config,
    /// Where the config came from (reloads read it again).
    config_path: PathBuf,
    resolver: Resolver,
    board: Board,
    checks: Option<health::Checks>,
    quorum: BTreeMap<usize, bool>,
    dataplane: Dataplane,
    applied: Option<Vec<ServicePlan>>,
    vrrp: Option<Vrrp>,
    /// BFD sessions.
    bfd: Option<crate::bfd::Bfd>,
    /// Our interface (its MAC and MTU go to the dataplane).
    link: crate::neighbor::LinkInfo,
    /// Weights of drained real servers, for `enable`.
    drained: BTreeMap<(crate::config::ServiceAddr, IpAddr), u32>,
    /// Resolved real-server MACs, shared with `dr_check` probes.
    macs: Arc<Mutex<HashMap<IpAddr, Mac>>>,
    /// BGP announcements through BIRD (`[global.bgp]`).
    bird: Option<crate::bgp::BirdTask>,
    /// Since when each VIP has been eligible for announcement.
    eligible: BTreeMap<IpAddr, std::time::Instant>,
    /// `director drain` or shutdown: announce nothing.
    draining: bool,
    /// Probe keys per real server of `config`.
    keys: health::ProbeKeys,
    /// Where the XDP dataplane is pinned (none for IPVS).
    pins: Option<bpffs::PinDir>,
    /// The last update the dataplane refused, until one succeeds.
    dataplane_error: Option<String>,
    /// Flow sync's counters, and the flows imported from peers.
    sync_stats: Option<(usize, Arc<crate::flowsync::SyncStats>)>,
    imported: u64,
    /// Which virtual servers have quorum, for VRRP.
    quorum_tx: watch::Sender<BTreeMap<crate::config::ServiceAddr, bool>>,
    /// The VRRP instances' states, as they publish them.
    vrrp_states: watch::Receiver<crate::vrrp::instance::States>,
}

impl Daemon {
    /// Re-plans and applies when anything changed.
    fn sync(&mut self) -> Result<(), DataplaneError> {
        let (next, quorum_changes) = plan(
            &self.config,
            &self.keys,
            &self.resolver,
            &self.board,
            &mut self.quorum,
        );
        for (i, up) in quorum_changes {
            let vs = &self.config.virtual_server[i];
            let name = vs.id();
            if up {
                info!(service = %name, "quorum gained");
            } else {
                warn!(service = %name, sorry_server = ?vs.sorry_server, "quorum lost");
            }
            let script = if up { &vs.quorum_up } else { &vs.quorum_down };
            if let Some(argv) = script.as_deref().and_then(shlex::split) {
                // Off the loop; cut at 60 s with everything it started.
                tokio::spawn(async move {
                    use crate::script::{Ended, Leftovers, run};
                    let program = argv.first().cloned().unwrap_or_default();
                    match run(&argv, Duration::from_secs(60), 0, Leftovers::Keep).await {
                        Ok(r) if r.ended == Ended::Exited(0) => {}
                        Ok(r) => warn!(script = %program, ended = ?r.ended, "quorum script failed"),
                        Err(e) => warn!(script = %program, error = %e, "cannot run quorum script"),
                    }
                });
            }
        }
        // VRRP's `track_virtual_server` sees quorum changes at once.
        let quorum: BTreeMap<crate::config::ServiceAddr, bool> = self
            .config
            .virtual_server
            .iter()
            .enumerate()
            .map(|(i, vs)| (vs.id(), self.quorum.get(&i).copied().unwrap_or(true)))
            .collect();
        self.quorum_tx.send_if_modified(|q| {
            let changed = *q != quorum;
            *q = quorum;
            changed
        });
        if self.applied.as_ref() == Some(&next) {
            return Ok(());
        }
        self.dataplane
            .apply(&next, self.config.global.udp_timeout, self.link)?;
        for s in &next {
            let ready = s
                .backends
                .iter()
                .filter(|b| b.mac.is_some() && b.weight > 0)
                .count();
            let before = self.applied.as_ref().and_then(|a| {
                a.iter().find(|p| p.key() == s.key()).map(|p| {
                    p.backends
                        .iter()
                        .filter(|b| b.mac.is_some() && b.weight > 0)
                        .count()
                })
            });
            if before != Some(ready) {
                info!(service = %s.name(), real_servers = ready, "forwarding");
            }
        }
        self.applied = Some(next);
        Ok(())
    }

    fn status(&self) -> Status {
        let g = &self.config.global;
        let plans = self.applied.clone().unwrap_or_default();
        let virtual_servers = self
            .config
            .virtual_server
            .iter()
            .zip(plans.iter())
            .enumerate()
            .map(|(i, (vs, plan))| {
                let t = self.dataplane.service_traffic(plan).unwrap_or_default();
                let addresses: Vec<IpAddr> = vs.real_server.iter().map(|r| r.address).collect();
                let per_server = self.dataplane.backends_traffic(plan, &addresses);
                VirtualServerStatus {
                    address: vs.address().to_string(),
                    port: vs.port(),
                    protocol: vs.protocol.to_string(),
                    scheduler: vs.scheduler.as_str().to_string(),
                    persistence_timeout: vs.persistence_timeout,
                    lb_kind: vs.lb_kind.as_str().to_string(),
                    fwmark: vs.fwmark,
                    group: vs.group.clone(),
                    members: if vs.group.is_some() {
                        vs.members.iter().map(ToString::to_string).collect()
                    } else {
                        Vec::new()
                    },
                    quorum_up: self.quorum.get(&i).copied().unwrap_or(true),
                    packets: t.packets,
                    bytes: t.bytes,
                    new_flows: t.new_flows,
                    real_servers: vs
                        .real_server
                        .iter()
                        .enumerate()
                        .map(|(j, rs)| {
                            let none = Vec::new();
                            let keys = self.keys.get(i).and_then(|v| v.get(j)).unwrap_or(&none);
                            let t = per_server.get(j).copied().unwrap_or_default();
                            let (healthy, _) = server_health(&self.board, vs, keys);
                            let (last_check, last_error, check_latency) = self.last_check(keys);
                            RealServerStatus {
                                healthy,
                                last_check,
                                last_error,
                                check_latency,
                                address: rs.address.to_string(),
                                port: rs.port.unwrap_or(vs.port()),
                                weight: rs.weight,
                                mac: self
                                    .resolver
                                    .mac(&rs.address, vs.lb_kind == crate::config::LbKind::Tun)
                                    .map(|m| m.to_string()),
                                packets: t.packets,
                                bytes: t.bytes,
                                new_flows: t.new_flows,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Status {
            router_id: g.router_id.clone(),
            pid: std::process::id(),
            started_at: *STARTED_AT.get_or_init(unix_now),
            dataplane: self.dataplane.name().to_string(),
            xdp_mode: self.dataplane.xdp_mode().map(str::to_string),
            interface: g.interface.clone(),
            // IPVS services are kernel state: they outlive the daemon.
            dataplane_survives_restart: self.pins.as_ref().is_none_or(|p| p.survives),
            flow_table_size: (self.dataplane.name() == "xdp")
                .then_some(self.config.global.flow_table_size),
            flow_table_memory_bytes: (self.dataplane.name() == "xdp").then(|| {
                crate::dataplane::xdp::flow_table_bytes(self.config.global.flow_table_size)
            }),
            pin_dir: self.pins.as_ref().map(|p| p.path.display().to_string()),
            dataplane_error: self.dataplane_error.clone(),
            flow_sync: self.sync_stats.as_ref().map(|(peers, st)| {
                use std::sync::atomic::Ordering::Relaxed;
                crate::status::FlowSyncStatus {
                    peers: *peers,
                    flows_sent: st.sent.load(Relaxed),
                    flows_received: st.received.load(Relaxed),
                    flows_imported: self.imported,
                    dropped: st
                        .dropped
                        .lock()
                        .map(|d| d.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                        .unwrap_or_default(),
                }
            }),
            bgp: self.bird.as_ref().map(|b| {
                let (announced, error) = b.state();
                crate::status::BgpStatus {
                    announced: announced.iter().map(IpAddr::to_string).collect(),
                    error,
                }
            }),
            virtual_servers,
            vrrp: self.vrrp.as_ref().map(Vrrp::statuses).unwrap_or_default(),
            bfd: self
                .bfd
                .as_ref()
                .map(crate::bfd::Bfd::statuses)
                .unwrap_or_default(),
        }
    }

    /// The most recent check of a real server and its error, if any.
    fn last_check(&self, keys: &[String]) -> (Option<f64>, Option<String>, Option<f64>) {
        let Ok(b) = self.board.lock() else {
            return (None, None, None);
        };
        let mut last = None::<f64>;
        let mut error = None;
        let mut latency = None::<f64>;
        for key in keys {
            if let Some(p) = b.get(key) {
                if let Some(t) = p.last_check {
                    last = Some(last.map_or(t, |l| l.max(t)));
                }
                if p.last_error.is_some() {
                    error = p.last_error.clone();
                }
                if let Some(t) = p.latency {
                    latency = Some(latency.map_or(t, |l| l.max(t)));
                }
            }
        }
        (last, error, latency)
    }

    fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Reload | Request::RealServer(_) | Request::Drain | Request::Restart => {
                Response::Error {
                    error: "handled by the event loop".into(),
                }
            }
        }
    }

    /// Makes BIRD announce the VIPs that should be: virtual servers with
    /// quorum (and, in `both` mode, whose VRRP instance is master here),
    /// each after `announce_delay`; nothing while draining.
    fn announce(&mut self) {
        let Some(b) = self.config.global.bgp.clone() else {
            return;
        };
        if self.bird.is_none() {
            return;
        }
        let masters: Vec<IpAddr> = self
            .vrrp_states
            .borrow()
            .values()
            .filter(|p| p.state == crate::vrrp::fsm::State::Master)
            .flat_map(|p| p.addresses.iter().copied())
            .collect();
        let now = std::time::Instant::now();
        let mut eligible = BTreeMap::new();
        if !self.draining {
            for (i, vs) in self.config.virtual_server.iter().enumerate() {
                let up = self.quorum.get(&i).copied().unwrap_or(true);
                let vrrp_ok =
                    b.mode != crate::config::BgpMode::Both || masters.contains(&vs.address());
                if up && vrrp_ok {
                    let since = self.eligible.get(&vs.address()).copied().unwrap_or(now);
                    eligible.insert(vs.address(), since);
                }
            }
        }
        self.eligible = eligible;
        let delay = Duration::from_secs_f64(b.announce_delay);
        let wanted: std::collections::BTreeSet<IpAddr> = self
            .eligible
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= delay)
            .map(|(a, _)| *a)
            .collect();
        if let Some(bird) = self.bird.as_ref() {
            bird.set(&wanted);
        }
    }

    /// Waits until BIRD has withdrawn every route (bounded: a hung BIRD
    /// must not keep a drain or a shutdown waiting).
    async fn withdrawn(&self) {
        if let Some(bird) = self.bird.as_ref()
            && !bird.settled(Duration::from_secs(12)).await
        {
            warn!("BIRD did not confirm the withdrawal in time");
        }
    }

    /// A link changed somewhere: when it is our interface (re-created,
    /// renamed in place of the old one, its MAC changed), the dataplane,
    /// the neighbour lookups and the DR-path checks follow it.
    async fn follow_link(
        &mut self,
        neighbors: &mut Neighbors,
        shared: &Arc<Mutex<crate::neighbor::LinkInfo>>,
        gone: &mut bool,
    ) {
        let interface = self.config.global.interface.clone();
        let old = neighbors.link();
        match neighbors.lookup(&interface).await {
            Ok(Some(now)) => {
                if *gone {
                    info!(%interface, ifindex = now.index, "interface is back");
                    *gone = false;
                }
                if now == old {
                    return;
                }
                info!(
                    %interface,
                    old_ifindex = old.index,
                    ifindex = now.index,
                    old_mac = %old.mac,
                    mac = %now.mac,
                    "interface changed: following it"
                );
                neighbors.set_link(now);
                if let Ok(mut l) = shared.lock() {
                    *l = now;
                }
                // The program checks frames are addressed to our MAC; the
                // next apply writes the new one.
                self.link = now;
                self.applied = None;
                if let Err(e) = self.dataplane.follow_interface() {
                    error!(%interface, error = %e, "cannot re-attach the dataplane to the interface");
                }
            }
            Ok(None) => {
                if !*gone {
                    warn!(%interface, "interface is gone; the dataplane follows it when it is back");
                    *gone = true;
                }
            }
            Err(e) => warn!(%interface, error = %e, "cannot look the interface up"),
        }
    }

    /// Re-reads the config file and applies the difference. On any error
    /// nothing changes and the error (FILE:LINE:COL: ...) is returned.
    async fn reload(&mut self) -> Result<(), String> {
        let new = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let (old_g, new_g) = (&self.config.global, &new.global);
        for (key, changed) in [
            ("global.interface", old_g.interface != new_g.interface),
            ("global.state_dir", old_g.state_dir != new_g.state_dir),
            ("global.pin_dir", old_g.pin_dir() != new_g.pin_dir()),
            ("global.xdp_mode", old_g.xdp_mode != new_g.xdp_mode),
            ("global.dataplane", old_g.dataplane != new_g.dataplane),
            (
                "global.metrics_address",
                old_g.metrics_address != new_g.metrics_address,
            ),
            (
                "global.control_group",
                old_g.control_group != new_g.control_group,
            ),
            ("global.flow_sync", old_g.flow_sync != new_g.flow_sync),
            (
                "global.flow_table_size",
                old_g.flow_table_size != new_g.flow_table_size,
            ),
            ("bfd_instance", self.config.bfd_instance != new.bfd_instance),
        ] {
            if changed {
                return Err(format!(
                    "{}: changing {key} needs a restart of the daemon",
                    self.config_path.display()
                ));
            }
        }
        if let Some(vrrp) = self.vrrp.as_ref() {
            vrrp.check_reconfigure(&new).map_err(|e| e.to_string())?;
        }
        // The dataplane first (all or nothing, rolled back on a refusal),
        // then VRRP; a VRRP failure rolls the dataplane back too.
        let previous = self.adopt(new)?;
        if let Some(vrrp) = self.vrrp.as_mut()
            && let Err(e) = vrrp.reconfigure(&self.config).await
        {
            self.restore(previous);
            return Err(e.to_string());
        }
        info!(
            virtual_servers = self.config.virtual_server.len(),
            vrrp_instances = self.config.vrrp_instance.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// `director real-server ...`: changes the running config (not the
    /// file); a later reload reads the file again.
    fn change_real_server(&mut self, c: &crate::control::RealServerChange) -> Result<(), String> {
        use crate::control::RealServerAction as Action;
        let mut new = self.config.clone();
        let protocol = c.protocol;
        let index = new
            .find_service(c.vip, c.port, protocol)
            .ok_or_else(|| format!("no virtual server {}:{}/{}", c.vip, c.port, c.protocol))?;
        let vs = &mut new.virtual_server[index];
        let key = (vs.id(), c.address);
        let pos = vs.real_server.iter().position(|r| r.address == c.address);
        match (c.action, pos) {
            (Action::Add, Some(_)) => {
                return Err(format!("{} is already a real server", c.address));
            }
            (Action::Add, None) => vs.real_server.push(crate::config::RealServer::new(
                c.address,
                c.weight.unwrap_or(1),
            )),
            (_, None) => {
                return Err(format!(
                    "{} is not a real server of that service",
                    c.address
                ));
            }
            (Action::Remove, Some(i)) => {
                vs.real_server.remove(i);
            }
            (Action::Weight, Some(i)) => {
                vs.real_server[i].weight = c.weight.ok_or("weight needs --weight N")?;
            }
            (Action::Drain, Some(i)) => {
                let w = vs.real_server[i].weight;
                if w > 0 {
                    self.drained.insert(key, w);
                }
                vs.real_server[i].weight = 0;
            }
            (Action::Enable, Some(i)) => {
                vs.real_server[i].weight = self.drained.remove(&key).unwrap_or(1);
            }
        }
        new.check()?;
        // Persisting: the edited file is prepared and validated before
        // anything changes; it is written once the change is live.
        let persisted = if c.persist {
            let target = crate::persist::Target {
                vip: c.vip,
                port: c.port,
                protocol,
                address: c.address,
                index,
            };
            let after = new.virtual_server[index]
                .real_server
                .iter()
                .find(|r| r.address == c.address);
            Some(
                crate::persist::prepare(&self.config_path, target, after)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        self.adopt(new)?;
        if let Some(text) = persisted {
            crate::persist::write_atomic(&self.config_path, &text)
                .map_err(|e| format!("applied, but not persisted: {e}"))?;
            info!(file = %self.config_path.display(), "real server change written to the config file");
        }
        info!(
            action = c.action.as_str(),
            virtual_server = %format!("{}:{}/{}", c.vip, c.port, c.protocol),
            real_server = %c.address,
            "real server changed at runtime"
        );
        Ok(())
    }

    /// Makes `new` the running configuration (already validated), all or
    /// nothing: its plan is applied to the dataplane first; if the kernel
    /// refuses it, the previous plan is applied again and nothing else
    /// changed. Returns what [`Daemon::restore`] needs to undo it.
    fn adopt(&mut self, new: Config) -> Result<Previous, String> {
        // Real servers: keep what is known of those that stay.
        let mut resolver = Resolver::new(&new);
        for (addr, state) in resolver.servers.iter_mut() {
            if let Some(old) = self.resolver.servers.get(addr) {
                *state = *old;
            }
        }
        let keys = health::probe_keys(&new);
        // Quorum state is by service position: start it afresh.
        let mut quorum = BTreeMap::new();
        let (next, _) = plan(&new, &keys, &resolver, &self.board, &mut quorum);
        if let Err(e) = self
            .dataplane
            .apply(&next, new.global.udp_timeout, self.link)
        {
            if let Some(old) = &self.applied
                && let Err(again) =
                    self.dataplane
                        .apply(old, self.config.global.udp_timeout, self.link)
            {
                error!(error = %again, "could not restore the previous dataplane state");
            }
            return Err(format!("the dataplane refused it: {e}"));
        }
        let previous = Previous {
            config: std::mem::replace(&mut self.config, new),
            resolver: std::mem::replace(&mut self.resolver, resolver),
            keys: std::mem::replace(&mut self.keys, keys),
            applied: self.applied.replace(next),
        };
        if let Some(checks) = self.checks.as_mut() {
            checks.update(health::all_specs(&self.config));
        }
        self.quorum.clear();
        // Quorum bookkeeping, scripts and VRRP tracking for the new
        // services (the dataplane has the plan already).
        if let Err(e) = self.sync() {
            warn!(error = %e, "dataplane update after the reload");
        }
        Ok(previous)
    }

    /// Undoes an [`Daemon::adopt`] (a later step of the reload failed).
    fn restore(&mut self, previous: Previous) {
        self.config = previous.config;
        self.resolver = previous.resolver;
        self.keys = previous.keys;
        if let Some(checks) = self.checks.as_mut() {
            checks.update(health::all_specs(&self.config));
        }
        self.quorum.clear();
        self.applied = None;
        if let Some(old) = &previous.applied
            && let Err(e) = self
                .dataplane
                .apply(old, self.config.global.udp_timeout, self.link)
        {
            error!(error = %e, "could not restore the previous dataplane state");
        } else {
            self.applied = previous.applied;
        }
    }
}

/// What a reload replaced, to put it back.
struct Previous {
    config: Config,
    resolver: Resolver,
    keys: health::ProbeKeys,
    applied: Option<Vec<ServicePlan>>,
}

/// The next tick of an optional timer (never, without one).
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// When this process's daemon started (Unix seconds).
static STARTED_AT: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// For good: masters released the VIP with a priority-0 advert.
    Stop,
    /// A restart by the service manager: state handed over to the next
    /// process, which the manager starts.
    Restart,
    /// `director restart`: state handed over; the caller executes the
    /// binary again in this process.
    Reexec,
}

/// The virtual-MAC hook given to VRRP, which may start before the
/// dataplane is open (a restart resumes masters first): what VRRP says
/// meanwhile is replayed when the dataplane's own hook arrives.
#[derive(Clone, Default)]
struct LateHook(Arc<Mutex<LateHookState>>);

/// The dataplane's hook once there, and what was said before.
type LateHookState = (Option<VmacHook>, BTreeMap<[u8; 6], bool>);

impl LateHook {
    fn hook(&self) -> VmacHook {
        let me = self.clone();
        Arc::new(move |mac, ours| {
            if let Ok(mut g) = me.0.lock() {
                match &g.0 {
                    Some(h) => h(mac, ours),
                    None => {
                        g.1.insert(mac, ours);
                    }
                }
            }
        })
    }

    fn set(&self, real: Option<VmacHook>) {
        if let Ok(mut g) = self.0.lock() {
            let pending = std::mem::take(&mut g.1);
            if let Some(h) = &real {
                for (mac, ours) in pending {
                    h(mac, ours);
                }
            }
            g.0 = real;
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM. On exit the pinned dataplane
/// keeps forwarding; the next `director run` adopts it.
pub async fn run(config: Config, config_path: PathBuf) -> Result<Stopped, DaemonError> {
    let g = config.global.clone();
    std::fs::create_dir_all(&g.state_dir).map_err(|source| DaemonError::StateDir {
        path: g.state_dir.clone(),
        source,
    })?;
    let _instance = lock_state_dir(&g.state_dir)?;
    STARTED_AT.get_or_init(unix_now);
    // A restarting predecessor's instances: resumed before anything slow.
    let handover = crate::handover::take(&g.state_dir).map(Arc::new);
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;

    let mut neighbors = Neighbors::open(&g.interface).await?;
    let link = neighbors.link();
    info!(
        router_id = %g.router_id,
        interface = %g.interface,
        mac = %link.mac,
        virtual_servers = config.virtual_server.len(),
        "director starting"
    );
    // BFD and VRRP come up before the dataplane when the previous process
    // handed over a master: its first advert must leave before the backups'
    // master-down timers run out (the pinned dataplane forwards meanwhile).
    // Otherwise VRRP starts after the dataplane: a master takes the VIP
    // only once its frames are forwarded.
    let bfd = crate::bfd::Bfd::start(&config.bfd_instance)
        .map_err(|e| DaemonError::Bfd(e.to_string()))?;
    let vmac_hook = LateHook::default();
    let (quorum_tx, quorum_rx) = watch::channel(BTreeMap::new());
    let (states_tx, vrrp_states) = watch::channel(crate::vrrp::instance::States::new());
    let states_tx = Arc::new(states_tx);
    let mut vrrp_changes = vrrp_states.clone();
    let start_vrrp = || {
        Vrrp::start_with(
            &config,
            crate::vrrp::instance::Inputs {
                vmac_hook: Some(vmac_hook.hook()),
                bfd: bfd.verdicts(),
                handover: handover.clone(),
                states: Some(states_tx.clone()),
                quorum: Some(quorum_rx.clone()),
            },
        )
    };
    let early_vrrp = match &handover {
        Some(h) if h.instances.iter().any(|i| i.state == "master") => Some(start_vrrp()?),
        _ => None,
    };
    let pins = match g.dataplane {
        DataplaneKind::Ipvs => None,
        DataplaneKind::Xdp | DataplaneKind::Auto => {
            let pins = bpffs::prepare_for_run(&g.pin_dir())?;
            bpffs::report(&pins);
            let legacy = legacy_pin_dir(&g.state_dir);
            if bpffs::on_bpffs(&legacy) && legacy.join("link").exists() {
                warn!(path = %legacy.display(), "removing the dataplane pinned by an earlier version (one gap in forwarding)");
                crate::dataplane::xdp::flush(&legacy, &g.state_dir)?;
            }
            Some(pins)
        }
    };
    let mut dataplane = Dataplane::open(
        g.dataplane,
        &XdpOptions {
            interface: g.interface.clone(),
            mode: g.xdp_mode,
            pins: pins.as_ref().map(|p| PinPaths {
                dir: p.path.clone(),
                state_dir: g.state_dir.clone(),
            }),
            flow_table_size: g.flow_table_size,
        },
        &g.state_dir,
    )?;
    info!(dataplane = dataplane.name(), xdp_mode = ?dataplane.xdp_mode(), "dataplane ready");
    if dataplane.name() == "xdp" {
        info!(
            flows = g.flow_table_size,
            memory_mib = crate::dataplane::xdp::flow_table_bytes(g.flow_table_size) / (1 << 20),
            "flow table"
        );
    }
    let dataplane_is_xdp = dataplane.name() == "xdp";
    let (control_tx, mut control_rx) = mpsc::channel::<Pending>(64);
    let metrics = match g.metrics_address {
        Some(addr) => Some(crate::metrics::serve(addr, control_tx.clone()).await?),
        None => None,
    };
    let control = control::serve(&g.state_dir, g.control_group.as_deref(), control_tx)?;
    let mut neigh_events = neighbors.events()?;
    let mut link_events = neighbors.link_events()?;
    let shared_link = Arc::new(Mutex::new(link));
    let (health_tx, mut health_rx) = mpsc::channel::<health::Change>(1024);
    let mut checks = health::Checks::new(health_tx);
    let macs = Arc::new(Mutex::new(HashMap::new()));
    checks.set_path_env(health::PathEnv {
        link: shared_link.clone(),
        macs: macs.clone(),
    });
    checks.update(health::all_specs(&config));
    let board = checks.board();
    vmac_hook.set(dataplane.vmac_hook());
    let vrrp = match early_vrrp {
        Some(v) => v,
        None => start_vrrp()?,
    };
    // Flow-table sharing with peer directors.
    let (mut flow_sync, mut sync_rx, mut sync_tick) = match &g.flow_sync {
        Some(fs) if dataplane.name() == "xdp" => {
            let (sync, rx) =
                crate::flowsync::FlowSync::start(fs.listen, fs.peers.clone(), fs.key.clone())
                    .await
                    .map_err(|e| DaemonError::FlowSync(e.to_string()))?;
            info!(listen = %fs.listen, peers = fs.peers.len(), "flow sync on");
            // The shared key authenticates flows: others must not read it.
            {
                use std::os::unix::fs::PermissionsExt as _;
                if let Ok(meta) = std::fs::metadata(&config_path)
                    && meta.permissions().mode() & 0o044 != 0
                {
                    warn!(
                        file = %config_path.display(),
                        mode = format!("{:o}", meta.permissions().mode() & 0o777),
                        "the config holds flow_sync.key and others may read it: chmod 600 it"
                    );
                }
            }
            (
                Some(sync),
                Some(rx),
                Some(tokio::time::interval(Duration::from_secs_f64(fs.interval))),
            )
        }
        Some(_) => {
            warn!("flow_sync needs the XDP dataplane: off (IPVS has its own sync daemon)");
            (None, None, None)
        }
        None => (None, None, None),
    };

    let bird = match &g.bgp {
        Some(b) if b.mode != crate::config::BgpMode::Vrrp => {
            let file = |f: &Option<PathBuf>, name: &str| {
                f.clone().unwrap_or_else(|| g.state_dir.join(name))
            };
            info!(socket = %b.bird_socket.display(), mode = ?b.mode, "BGP announcements through BIRD");
            Some(crate::bgp::BirdTask::start(crate::bgp::Bird::new(
                b.bird_socket.clone(),
                file(&b.announce_file_v4, "bird-vips4.conf"),
                file(&b.announce_file_v6, "bird-vips6.conf"),
            )))
        }
        _ => None,
    };
    let mut bgp_tick = bird
        .as_ref()
        .map(|_| tokio::time::interval(Duration::from_millis(250)));
    let keys = health::probe_keys(&config);
    let mut resolver = Resolver::new(&config);
    resolver.seed(dataplane.known_macs());
    let mut daemon = Daemon {
        resolver,
        board,
        checks: Some(checks),
        config_path,
        quorum: BTreeMap::new(),
        config,
        dataplane,
        applied: None,
        vrrp: Some(vrrp),
        bfd: Some(bfd),
        link,
        drained: BTreeMap::new(),
        macs,
        bird,
        eligible: BTreeMap::new(),
        draining: false,
        keys,
        pins: if dataplane_is_xdp { pins } else { None },
        dataplane_error: None,
        sync_stats: flow_sync.as_ref().map(|s: &crate::flowsync::FlowSync| {
            (
                g.flow_sync.as_ref().map_or(0, |f| f.peers.len()),
                s.stats.clone(),
            )
        }),
        imported: 0,
        quorum_tx,
        vrrp_states,
    };
    let mut interface_gone = false;
    // Flow sync: the scan under way, the table version last scanned, the
    // exceptions it found.
    let mut scan_task: Option<
        tokio::task::JoinHandle<(u64, Vec<crate::dataplane::xdp::PinnedFlow>)>,
    > = None;
    let mut scanned: Option<u64> = None;
    let mut exceptions: Vec<crate::dataplane::xdp::PinnedFlow> = Vec::new();
    // The neighbour table is read on its own timer (sooner while a real
    // server is unresolved), when the kernel reports a neighbour or link
    // change, and after a request or reload that may add servers; not on
    // every wake of the loop (health changes, VRRP changes, flow sync).
    let mut next_refresh = tokio::time::Instant::now();
    let mut refresh_now = true;
    let result = loop {
        if refresh_now || tokio::time::Instant::now() >= next_refresh {
            let delay = match daemon.resolver.refresh(&neighbors).await {
                Ok(true) => RESOLVE_RETRY,
                Ok(false) => REFRESH,
                Err(e) => {
                    error!(error = %e, "cannot read the neighbour table");
                    REFRESH
                }
            };
            next_refresh = tokio::time::Instant::now() + delay;
            refresh_now = false;
            let resolved = daemon.resolver.resolved();
            if let Ok(mut m) = daemon.macs.lock()
                && *m != resolved
            {
                *m = resolved;
            }
        }
        // A refused update never stops the daemon: the last good state
        // keeps forwarding, the error is reported (once) and retried.
        match daemon.sync() {
            Ok(()) => {
                if daemon.dataplane_error.take().is_some() {
                    info!("the dataplane accepts updates again");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if daemon.dataplane_error.as_deref() != Some(text.as_str()) {
                    error!(error = %text, "the dataplane refused an update: the last good state keeps forwarding (retrying)");
                    daemon.dataplane_error = Some(text);
                }
            }
        }
        daemon.announce();
        tokio::select! {
            _ = sigint.recv() => { info!(signal = "SIGINT", "stopping"); break Ok(Stopped::Stop); }
            _ = sigterm.recv() => {
                // `systemctl restart` (or an upgrade's): hand over instead
                // of moving the VIP away and back.
                if crate::handover::systemd_restart_pending().await {
                    info!(signal = "SIGTERM", "restarting (systemd restart job): handing over");
                    break Ok(Stopped::Restart);
                }
                info!(signal = "SIGTERM", "stopping");
                break Ok(Stopped::Stop);
            }
            _ = sighup.recv() => {
                refresh_now = true;
                info!(signal = "SIGHUP", "reloading the configuration");
                if let Err(e) = daemon.reload().await {
                    error!("reload refused, nothing changed: {e}");
                }
            }
            Some((request, reply)) = control_rx.recv() => {
                refresh_now = true;
                let answer = match request {
                    Request::RealServer(change) => match daemon.change_real_server(&change) {
                        Ok(()) => Response::Ok { ok: true },
                        Err(e) => Response::Error { error: e },
                    },
                    Request::Drain => {
                        daemon.draining = true;
                        daemon.announce();
                        daemon.withdrawn().await;
                        let wait = daemon.config.global.bgp.as_ref().map_or(0.0, |b| b.withdraw_wait);
                        info!(withdraw_wait = wait, "draining: routes withdrawn, stopping after the wait");
                        let _ = reply.send(Response::Ok { ok: true });
                        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                        break Ok(Stopped::Stop);
                    }
                    Request::Restart => {
                        // The next process must be able to start.
                        if let Err(e) = Config::load(&daemon.config_path) {
                            error!("restart refused, nothing changed: {e}");
                            let _ = reply.send(Response::Error {
                                error: format!("restart refused (the running daemon goes on): {e}"),
                            });
                            continue;
                        }
                        info!("restarting in place (director restart): handing over");
                        let _ = reply.send(Response::Ok { ok: true });
                        break Ok(Stopped::Reexec);
                    }
                    Request::Reload => match daemon.reload().await {
                        Ok(()) => Response::Ok { ok: true },
                        Err(e) => {
                            error!("reload refused, nothing changed: {e}");
                            Response::Error { error: e }
                        }
                    },
                    other => daemon.answer(other),
                };
                let _ = reply.send(answer);
            }
            Some(()) = neigh_events.next() => refresh_now = true,
            // A VRRP instance changed state: BGP announcements follow.
            Ok(()) = vrrp_changes.changed() => {}
            Some(()) = link_events.next() => {
                refresh_now = true;
                daemon.follow_link(&mut neighbors, &shared_link, &mut interface_gone).await;
            }
            _ = tick(&mut bgp_tick) => {}
            _ = tick(&mut sync_tick) => {
                // The flow table is read on a blocking thread: a full walk
                // only after the tables changed, else the exceptions known
                // are looked up again.
                if flow_sync.is_some()
                    && scan_task.is_none()
                    && let Some(scan) = daemon.dataplane.exception_scan()
                {
                    let full = Some(scan.version()) != scanned;
                    let known = exceptions.clone();
                    scan_task = Some(tokio::task::spawn_blocking(move || {
                        let flows = if full { scan.full(1 << 16) } else { scan.again(&known) };
                        (scan.version(), flows)
                    }));
                }
            }
            Some(done) = async {
                match scan_task.as_mut() {
                    Some(task) => Some(task.await),
                    None => std::future::pending().await,
                }
            } => {
                scan_task = None;
                if let Ok((version, flows)) = done {
                    scanned = Some(version);
                    if let Some(sync) = flow_sync.as_mut() {
                        sync.send(&flows).await;
                    }
                    exceptions = flows;
                }
            }
            Some(flows) = async { match sync_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                let added = daemon.dataplane.import_flows(&flows);
                daemon.imported += added as u64;
                if added > 0 {
                    info!(flows = added, "flows taken from a peer director");
                }
            }
            Some(_) = health_rx.recv() => {
                // Coalesce a burst of changes into one re-plan.
                while health_rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep_until(next_refresh) => {}
        }
    };
    // A restart hands over only if the next process can start: a config
    // that no longer loads would leave the VIP held by no daemon.
    let result = match result {
        Ok(Stopped::Restart | Stopped::Reexec) => match Config::load(&daemon.config_path) {
            Ok(_) => result,
            Err(e) => {
                warn!(error = %e, "the config file no longer loads, so the next process cannot start: stopping for good (the VIP moves to a backup)");
                Ok(Stopped::Stop)
            }
        },
        other => other,
    };
    let handing_over = matches!(result, Ok(Stopped::Restart | Stopped::Reexec));
    // BGP: withdraw, and give the routers time to move traffic away (not
    // for a restart: the next process announces the same).
    if daemon.bird.is_some() && !daemon.draining && !handing_over {
        daemon.draining = true;
        daemon.announce();
        daemon.withdrawn().await;
        let wait = daemon
            .config
            .global
            .bgp
            .as_ref()
            .map_or(0.0, |b| b.withdraw_wait);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    // Masters hand over first (priority 0), then the control plane goes.
    // For a restart, the next process is handed what we hold.
    if let Some(vrrp) = daemon.vrrp.take() {
        if handing_over {
            let instances = vrrp.hand_over().await;
            let h = crate::handover::Handover::new(instances);
            if let Err(e) = crate::handover::write(&daemon.config.global.state_dir, &h) {
                error!(error = %e, "cannot write the handover file: the next process starts afresh");
            }
        } else {
            vrrp.stop().await;
        }
    }
    // BFD peers learn we went administratively down (unless we come back).
    if let Some(bfd) = daemon.bfd.take() {
        if handing_over {
            bfd.abandon().await;
        } else {
            bfd.stop().await;
        }
    }
    control.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    drop(daemon.checks.take());
    let _ = std::fs::remove_file(daemon.config.global.state_dir.join(control::SOCKET));
    if let Some(plan) = &daemon.applied {
        for s in plan {
            if let Ok(t) = daemon.dataplane.service_traffic(s) {
                info!(
                    service = %s.name(),
                    packets = t.packets,
                    bytes = t.bytes,
                    new_flows = t.new_flows,
                    "forwarded in total"
                );
            }
        }
    }
    daemon.dataplane.release();
    match result {
        Ok(Stopped::Stop) | Err(_) => info!("director stopped"),
        Ok(_) => info!("director stopped, handed over to the next process"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_carries_weights_and_known_macs() {
        let config = Config::parse(
            Path::new("t.toml"),
            r#"
[global]
interface = "eth0"
[[virtual_server]]
address = "10.0.0.100"
port = 80
scheduler = "sh"
persistence_timeout = 30
  [[virtual_server.real_server]]
  address = "10.0.0.11"
  [[virtual_server.real_server]]
  address = "10.0.0.12"
  [[virtual_server.real_server]]
  address = "10.0.0.13"
  weight = 0
"#,
        )
        .expect("valid");
        let mut resolver = Resolver::new(&config);
        let mac = Mac([2, 0, 0, 0, 0, 11]);
        let a11: IpAddr = "10.0.0.11".parse().expect("ip");
        resolver.servers.insert(a11, Resolution::Resolved(mac));
        let board = Board::default();
        let keys = health::probe_keys(&config);
        let (p, _) = plan(&config, &keys, &resolver, &board, &mut BTreeMap::new());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].port, 80);
        assert_eq!(p[0].persistence_timeout, 30);
        assert_eq!(p[0].scheduler, crate::config::Scheduler::Sh);
        assert_eq!(p[0].backends.len(), 3);
        assert_eq!(p[0].backends[0].mac, Some(mac));
        assert_eq!(p[0].backends[1].mac, None, "10.0.0.12 is unresolved");
        assert_eq!(p[0].backends[2].weight, 0);
    }
}
