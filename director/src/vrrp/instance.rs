//! The VRRP runtime: every instance's event loop on one dedicated thread
//! (real-time priority when allowed, so a busy machine does not delay
//! adverts), with tracking (interfaces, scripts) and notify scripts.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    time::{Instant, sleep_until},
};
use tracing::{debug, error, info, warn};

use super::{
    fsm::{Action, Event, Machine, Params, State},
    net::{self, NetError, Received, VrrpSocket},
    notify::Notifier,
    packet::{AUTH_PASS, Advert, MULTICAST_V4, MULTICAST_V6, Reject, TTL, auth_data},
    routes, track,
};
use crate::{
    config::{
        Config, InitialState, TrackFile, TrackProcess, Tracked, VrrpInstance, VrrpScript,
        VrrpSyncGroup,
    },
    neighbor::{NeighborError, Neighbors},
};

/// Errors starting VRRP.
#[derive(Debug, thiserror::Error)]
pub enum VrrpError {
    #[error("vrrp_instance {name}: {source}")]
    Net { name: String, source: NetError },
    #[error("vrrp_instance {name}: {source}")]
    Link { name: String, source: NeighborError },
    #[error("vrrp_instance {0}: no address to send adverts from (set unicast_src_ip)")]
    NoSource(String),
    #[error("cannot start the VRRP thread: {0}")]
    Thread(std::io::Error),
    #[error("the VRRP thread stopped while starting")]
    Gone,
    #[error("{0} need a restart of the daemon")]
    NeedsRestart(&'static str),
}

/// One instance in the status document (a contract: extend, never rename).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    /// `master`, `backup`, `fault` or `init`.
    pub state: String,
    /// Configured priority.
    pub priority: u8,
    /// Priority after tracking, as advertised.
    pub effective_priority: u8,
    pub virtual_router_id: u8,
    /// The current master as far as we know; ours when master.
    pub master_address: Option<String>,
    pub transitions: u64,
    pub version: u8,
    pub advert_int: f64,
    pub interface: String,
    pub virtual_ipaddress: Vec<String>,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Dropped packets by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Times another master was heard while we were master.
    #[serde(default)]
    pub split_brains: u64,
    /// Whether any other router's advert was ever heard (a firewall that
    /// drops VRRP shows up here before the first failover does).
    #[serde(default)]
    pub peer_seen: bool,
}

enum Command {
    Shutdown(oneshot::Sender<()>),
    /// The process restarts: keep what is held, say what state we were in.
    HandOver(oneshot::Sender<Option<crate::handover::Instance>>),
    /// A reload changed only what the running instance can take in place.
    Update(Box<VrrpInstance>),
}

/// Asks the VRRP thread to start one instance.
struct StartCmd {
    inst: VrrpInstance,
    iface: String,
    status: Arc<Mutex<InstanceStatus>>,
    commands: mpsc::Receiver<Command>,
    ready: std::sync::mpsc::Sender<Result<(), VrrpError>>,
    /// The state the previous process handed over (`master`, `backup`).
    resume: Option<String>,
}

/// One running instance, as the daemon sees it.
struct Handle {
    config: VrrpInstance,
    status: Arc<Mutex<InstanceStatus>>,
    commands: mpsc::Sender<Command>,
}

/// Drop reasons are logged at most this often (each), with their count.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether each virtual server has quorum, as the daemon last computed it
/// (`track_virtual_server`): instances re-evaluate their priority as soon
/// as it changes.
pub type QuorumBoard = watch::Receiver<BTreeMap<crate::config::ServiceAddr, bool>>;

/// One instance's state as VRRP publishes it to the rest of the daemon
/// (which VIPs this director holds as master, for BGP): typed, not the
/// status document's strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub state: State,
    pub addresses: Vec<IpAddr>,
}

/// Every instance's published state, by name.
pub type States = BTreeMap<String, Published>;

/// The running VRRP instances.
pub struct Vrrp {
    instances: Vec<Handle>,
    start_tx: Option<mpsc::UnboundedSender<StartCmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
    interface: String,
    tracks: TrackConfig,
    groups: Vec<VrrpSyncGroup>,
    /// What the instances take from the rest of the daemon.
    inputs: Inputs,
}

/// What instances track by name (`[[vrrp_script]]`, `[[track_file]]`,
/// `[[track_process]]`): watched once for all instances, from the VRRP
/// thread's start (changes need a restart).
#[derive(Debug, Clone, PartialEq)]
struct TrackConfig {
    scripts: Vec<VrrpScript>,
    files: Vec<TrackFile>,
    processes: Vec<TrackProcess>,
    /// `[[bfd_instance]]` names and weights (the sessions themselves run
    /// outside VRRP; a change of them needs a restart).
    bfd_weights: Vec<(String, i32)>,
}

impl TrackConfig {
    fn of(config: &Config) -> TrackConfig {
        TrackConfig {
            scripts: config.vrrp_script.clone(),
            files: config.track_file.clone(),
            processes: config.track_process.clone(),
            bfd_weights: config
                .bfd_instance
                .iter()
                .map(|b| (b.name.clone(), b.weight))
                .collect(),
        }
    }
}

/// The shared verdicts of everything instances track by name, with each
/// item's own weight.
#[derive(Clone, Default)]
struct Trackers {
    /// `[[vrrp_script]]` verdicts (`None` until the first).
    scripts: BTreeMap<String, (i32, watch::Receiver<Option<bool>>)>,
    /// `[[track_process]]` verdicts (`None` until the first).
    processes: BTreeMap<String, (i32, watch::Receiver<Option<bool>>)>,
    /// `[[track_file]]` values.
    files: BTreeMap<String, (i32, watch::Receiver<i64>)>,
    /// `[[bfd_instance]]` verdicts (`None` until the first).
    bfd: BTreeMap<String, (i32, watch::Receiver<Option<bool>>)>,
}

impl Trackers {
    /// What `cfg` tracks, each with the instance's weight (`{ name,
    /// weight }`) or the item's own: scripts and processes, then files.
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        cfg: &VrrpInstance,
    ) -> (
        Vec<(i32, watch::Receiver<Option<bool>>)>,
        Vec<(i32, watch::Receiver<i64>)>,
    ) {
        fn pick<T: Clone>(list: &[Tracked], from: &BTreeMap<String, (i32, T)>) -> Vec<(i32, T)> {
            list.iter()
                .filter_map(|t| {
                    from.get(t.name())
                        .map(|(w, rx)| (t.weight().unwrap_or(*w), rx.clone()))
                })
                .collect()
        }
        let mut checks = pick(&cfg.track_script, &self.scripts);
        checks.extend(pick(&cfg.track_process, &self.processes));
        checks.extend(pick(&cfg.track_bfd, &self.bfd));
        (checks, pick(&cfg.track_file, &self.files))
    }
}

fn new_status(inst: &VrrpInstance, iface: &str) -> Arc<Mutex<InstanceStatus>> {
    Arc::new(Mutex::new(InstanceStatus {
        name: inst.name.clone(),
        state: State::Init.as_str().to_string(),
        priority: inst.priority,
        effective_priority: inst.priority,
        virtual_router_id: inst.virtual_router_id,
        master_address: None,
        transitions: 0,
        version: inst.version.number(),
        advert_int: inst.advert_int,
        interface: iface.to_string(),
        virtual_ipaddress: inst.address_texts(),
        adverts_sent: 0,
        adverts_received: 0,
        rejected: BTreeMap::new(),
        split_brains: 0,
        peer_seen: false,
    }))
}

/// Told when a virtual MAC (`use_vmac`) becomes ours (`true`: we are
/// master) or stops being ours: the XDP dataplane accepts frames addressed
/// to it only meanwhile, so a backup never forwards what a switch floods.
pub type VmacHook = Arc<dyn Fn([u8; 6], bool) + Send + Sync>;

/// What VRRP takes from the rest of the daemon.
#[derive(Clone, Default)]
pub struct Inputs {
    /// Told when a virtual MAC becomes ours or stops being ours.
    pub vmac_hook: Option<VmacHook>,
    /// BFD sessions' verdicts by name (`track_bfd`, `master_bfd`).
    pub bfd: BTreeMap<String, watch::Receiver<Option<bool>>>,
    /// What the previous process handed over (used by the first start
    /// only).
    pub handover: Option<Arc<crate::handover::Handover>>,
    /// Where instances publish their state (the daemon keeps the
    /// receiver across reloads).
    pub states: Option<Arc<watch::Sender<States>>>,
    /// Which virtual servers have quorum (`track_virtual_server`).
    pub quorum: Option<QuorumBoard>,
}

impl Vrrp {
    /// Starts every `[[vrrp_instance]]` on a dedicated thread. Returns once
    /// each instance has its socket (or the first error).
    pub fn start(config: &Config) -> Result<Vrrp, VrrpError> {
        Self::start_with(config, Inputs::default())
    }

    /// [`Vrrp::start`] with what the instances take from the rest of the
    /// daemon (the virtual-MAC hook, BFD verdicts).
    pub fn start_with(config: &Config, inputs: Inputs) -> Result<Vrrp, VrrpError> {
        let mut inputs = inputs;
        // Without the daemon (tests, tools): channels of our own.
        let states = inputs
            .states
            .get_or_insert_with(|| Arc::new(watch::channel(States::new()).0))
            .clone();
        let quorum = inputs
            .quorum
            .get_or_insert_with(|| watch::channel(BTreeMap::new()).1)
            .clone();
        let mut vrrp = Vrrp {
            inputs: inputs.clone(),
            instances: Vec::new(),
            start_tx: None,
            thread: None,
            interface: config.global.interface.clone(),
            tracks: TrackConfig::of(config),
            groups: config.vrrp_sync_group.clone(),
        };
        if config.vrrp_instance.is_empty() {
            return Ok(vrrp);
        }
        let (start_tx, start_rx) = mpsc::unbounded_channel::<StartCmd>();
        let tracks = TrackConfig::of(config);
        let groups = config.vrrp_sync_group.clone();
        let thread = std::thread::Builder::new()
            .name("vrrp".into())
            .spawn(move || {
                raise_priority();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(run_all(tracks, groups, quorum, states, inputs, start_rx))
                    }
                    Err(e) => error!(error = %e, "cannot start the VRRP runtime"),
                }
            })
            .map_err(VrrpError::Thread)?;
        vrrp.start_tx = Some(start_tx);
        vrrp.thread = Some(thread);
        for inst in &config.vrrp_instance {
            vrrp.start_instance(inst.clone())?;
        }
        // A handover is for the first start only, never a reload's.
        vrrp.inputs.handover = None;
        Ok(vrrp)
    }

    fn start_instance(&mut self, inst: VrrpInstance) -> Result<(), VrrpError> {
        let iface = inst
            .interface
            .clone()
            .unwrap_or_else(|| self.interface.clone());
        let status = new_status(&inst, &iface);
        let resume = self
            .inputs
            .handover
            .as_ref()
            .and_then(|h| h.resume(&inst, &iface));
        let (tx, rx) = mpsc::channel(8);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let start_tx = self.start_tx.as_ref().ok_or(VrrpError::Gone)?;
        start_tx
            .send(StartCmd {
                inst: inst.clone(),
                iface,
                status: status.clone(),
                commands: rx,
                ready: ready_tx,
                resume,
            })
            .map_err(|_| VrrpError::Gone)?;
        ready_rx.recv().map_err(|_| VrrpError::Gone)??;
        self.instances.push(Handle {
            config: inst,
            status,
            commands: tx,
        });
        Ok(())
    }

    /// Whether `config` can be applied without a restart (checked before
    /// anything of a reload changes).
    pub fn check_reconfigure(&self, config: &Config) -> Result<(), VrrpError> {
        if TrackConfig::of(config) != self.tracks || config.vrrp_sync_group != self.groups {
            return Err(VrrpError::NeedsRestart(
                "vrrp_script, track_file, track_process and vrrp_sync_group changes",
            ));
        }
        if config.global.interface != self.interface {
            return Err(VrrpError::NeedsRestart("global.interface"));
        }
        Ok(())
    }

    /// Applies a new configuration: unchanged instances keep running (no
    /// flap, no priority-0 advert); removed or changed ones stop gracefully;
    /// new or changed ones start. Script and sync-group changes need a
    /// restart (the error says so and nothing changes).
    pub async fn reconfigure(&mut self, config: &Config) -> Result<(), VrrpError> {
        self.check_reconfigure(config)?;
        if self.start_tx.is_none() && !config.vrrp_instance.is_empty() {
            // No VRRP thread yet: start one as `start` would.
            let started = Vrrp::start_with(config, self.inputs.clone())?;
            let old = std::mem::replace(self, started);
            old.stop().await;
            return Ok(());
        }
        // Unchanged instances keep running; those whose changes they can
        // take in place are updated (no priority-0 advert, no VIP move).
        for h in &mut self.instances {
            if let Some(new) = config
                .vrrp_instance
                .iter()
                .find(|i| i.name == h.config.name && **i != h.config && soft_change(&h.config, i))
                && h.commands
                    .send(Command::Update(Box::new(new.clone())))
                    .await
                    .is_ok()
            {
                h.config = new.clone();
            }
        }
        let keep: Vec<bool> = self
            .instances
            .iter()
            .map(|h| config.vrrp_instance.contains(&h.config))
            .collect();
        let mut kept = Vec::new();
        for (h, keep) in std::mem::take(&mut self.instances).into_iter().zip(keep) {
            if keep {
                kept.push(h);
            } else {
                info!(instance = %h.config.name, "VRRP instance removed or changed by reload");
                shutdown(&h).await;
                self.unpublish(&h.config.name);
            }
        }
        self.instances = kept;
        for inst in &config.vrrp_instance {
            if !self.instances.iter().any(|h| &h.config == inst) {
                self.start_instance(inst.clone())?;
            }
        }
        // Keep the config's order.
        self.instances.sort_by_key(|h| {
            config
                .vrrp_instance
                .iter()
                .position(|i| i.name == h.config.name)
        });
        Ok(())
    }

    /// Every instance's status.
    pub fn statuses(&self) -> Vec<InstanceStatus> {
        self.instances
            .iter()
            .filter_map(|h| h.status.lock().ok().map(|s| s.clone()))
            .collect()
    }

    /// Stop for a restart (see [`crate::handover`]): masters send one last
    /// ordinary advert and keep their addresses; nothing is notified.
    /// Returns the instances to resume.
    pub async fn hand_over(mut self) -> Vec<crate::handover::Instance> {
        let mut out = Vec::new();
        for h in std::mem::take(&mut self.instances) {
            let (tx, rx) = oneshot::channel();
            if h.commands.send(Command::HandOver(tx)).await.is_ok()
                && let Ok(Ok(Some(i))) = tokio::time::timeout(Duration::from_secs(5), rx).await
            {
                out.push(i);
            }
        }
        self.start_tx = None;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        out
    }

    /// Takes a stopped instance's published state away.
    fn unpublish(&self, name: &str) {
        if let Some(tx) = &self.inputs.states {
            tx.send_if_modified(|m| m.remove(name).is_some());
        }
    }

    /// Graceful stop: masters send priority 0 and release their addresses.
    pub async fn stop(mut self) {
        for h in std::mem::take(&mut self.instances) {
            shutdown(&h).await;
            self.unpublish(&h.config.name);
        }
        self.start_tx = None;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

async fn shutdown(h: &Handle) {
    let (tx, rx) = oneshot::channel();
    if h.commands.send(Command::Shutdown(tx)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
    }
}

/// Whether `new` differs from `old` only in what a running instance takes
/// in place: notify scripts, tracking (scripts, interfaces, virtual
/// servers), the priority (except to or from 255, the owner), preemption
/// settings are not among them (the state machine holds them), nor is
/// anything of the protocol (VRID, version, interval, addresses, peers,
/// authentication, interfaces, heartbeat paths, gateways).
fn soft_change(old: &VrrpInstance, new: &VrrpInstance) -> bool {
    if (old.priority == 255) != (new.priority == 255) {
        return false;
    }
    let mut probe = new.clone();
    probe.priority = old.priority;
    probe.state = old.state;
    probe.track_interface = old.track_interface.clone();
    probe.dont_track_primary = old.dont_track_primary;
    probe.track_script = old.track_script.clone();
    probe.track_file = old.track_file.clone();
    probe.track_process = old.track_process.clone();
    probe.virtual_routes = old.virtual_routes.clone();
    probe.virtual_rules = old.virtual_rules.clone();
    probe.track_virtual_server = old.track_virtual_server.clone();
    probe.notify_master = old.notify_master.clone();
    probe.notify_backup = old.notify_backup.clone();
    probe.notify_fault = old.notify_fault.clone();
    probe.notify_stop = old.notify_stop.clone();
    probe.notify = old.notify.clone();
    probe.garp_master_delay = old.garp_master_delay;
    probe.garp_master_repeat = old.garp_master_repeat;
    probe.garp_master_refresh = old.garp_master_refresh;
    probe.standalone = old.standalone;
    probe == *old
}

/// SCHED_FIFO for the VRRP thread when permitted (keepalived does the same
/// with `vrrp_rt_priority`): adverts leave on time on a busy machine.
pub(crate) fn raise_priority() {
    // Lock the process's memory too (keepalived does the same): a page
    // fault on this thread would wait for the address-space lock, which a
    // normal-priority thread may hold while the machine is busy.
    // SAFETY: plain syscall; failure only costs determinism.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        debug!(error = %std::io::Error::last_os_error(), "memory not locked");
    }
    let param = libc::sched_param { sched_priority: 10 };
    // SCHED_RESET_ON_FORK: scripts we start run with normal scheduling.
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: plain syscall on the current thread.
    let r = unsafe { libc::pthread_setschedparam(libc::pthread_self(), policy, &param) };
    if r != 0 {
        debug!(errno = r, "VRRP thread keeps normal scheduling");
    }
}

async fn run_all(
    tracks: TrackConfig,
    groups: Vec<VrrpSyncGroup>,
    quorum: QuorumBoard,
    states: Arc<watch::Sender<States>>,
    inputs: Inputs,
    mut starts: mpsc::UnboundedReceiver<StartCmd>,
) {
    track::init_files(&tracks.files);
    let trackers = Trackers {
        scripts: start_scripts(&tracks.scripts),
        processes: track::start_processes(&tracks.processes),
        files: track::start_files(&tracks.files),
        bfd: tracks
            .bfd_weights
            .iter()
            .filter_map(|(name, w)| {
                inputs
                    .bfd
                    .get(name)
                    .map(|rx| (name.clone(), (*w, rx.clone())))
            })
            .collect(),
    };
    let shared = Shared {
        trackers,
        notifier: Notifier::start(),
        quorum,
        states,
        vmac_hook: inputs.vmac_hook,
    };
    type GroupShared = (
        VrrpSyncGroup,
        broadcast::Sender<(String, State)>,
        Arc<Mutex<BTreeMap<String, u8>>>,
    );
    let groups: Vec<GroupShared> = groups
        .into_iter()
        .map(|g| (g, broadcast::channel(64).0, Arc::default()))
        .collect();
    let mut tasks = Vec::new();
    while let Some(cmd) = starts.recv().await {
        let group = groups
            .iter()
            .find(|(g, _, _)| g.group.contains(&cmd.inst.name))
            .map(|(g, tx, priorities)| SyncGroup {
                config: g.clone(),
                rx: tx.subscribe(),
                tx: tx.clone(),
                priorities: priorities.clone(),
            });
        match Runner::open(cmd.inst, cmd.iface, cmd.status, &shared, group, cmd.resume).await {
            Ok(runner) => {
                tasks.push(tokio::spawn(runner.run(cmd.commands)));
                let _ = cmd.ready.send(Ok(()));
            }
            Err(e) => {
                let _ = cmd.ready.send(Err(e));
            }
        }
    }
    // The daemon dropped its end: wait for the instances it shut down.
    for t in tasks {
        let _ = t.await;
    }
}

/// This instance's `vrrp_sync_group`, if any. Members advertise the
/// lowest effective priority of the group (a tracked check failing on one
/// member lowers them all, so peers take them over together), and Fault
/// spreads to every member.
struct SyncGroup {
    config: VrrpSyncGroup,
    tx: broadcast::Sender<(String, State)>,
    rx: broadcast::Receiver<(String, State)>,
    priorities: Arc<Mutex<BTreeMap<String, u8>>>,
}

/// One instance with its socket and machine.
/// One extra heartbeat path: its socket and peers (none: multicast).
struct HbPath {
    socket: VrrpSocket,
    peers: Vec<IpAddr>,
    _link: Neighbors,
}

/// The next advert from any extra path (never, without any).
/// At most one split-brain notification per instance this often.
const SPLIT_NOTE_EVERY: Duration = Duration::from_secs(10);

/// How long the own interface must be back up before an instance leaves
/// Fault (a switch port forwards only after its own link handling).
const PRIMARY_SETTLE: Duration = Duration::from_secs(1);

/// Opens the instance's socket. An IPv6 source address still in duplicate
/// address detection (an interface just brought up: its link-local address
/// is tentative for about a second) cannot be bound yet: wait for it, up to
/// DAD_WAIT, as a daemon started at boot must.
async fn open_when_usable(
    name: &str,
    iface: &str,
    ifindex: u32,
    src: IpAddr,
    multicast: bool,
    on_vmac: bool,
) -> Result<VrrpSocket, NetError> {
    const DAD_WAIT: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let mut said = false;
    loop {
        let opened = if on_vmac {
            VrrpSocket::open_on_device(iface, ifindex, src, multicast)
        } else {
            VrrpSocket::open(iface, ifindex, src, multicast)
        };
        match opened {
            Err(NetError::Io { source, .. })
                if src.is_ipv6()
                    && source.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    && started.elapsed() < DAD_WAIT =>
            {
                if !said {
                    info!(instance = %name, source = %src, "waiting for the source address to finish duplicate address detection");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// A BFD verdict changed (never, without a session or once its sender
/// is gone).
async fn bfd_changed(rx: &mut Option<watch::Receiver<Option<bool>>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn recv_paths(paths: &[HbPath]) -> (usize, Result<Received, NetError>) {
    if paths.is_empty() {
        return std::future::pending().await;
    }
    let futures = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Box::pin(async move { (i, p.socket.recv().await) }));
    futures::future::select_all(futures).await.0
}

struct Runner {
    /// Extra heartbeat paths (`heartbeat`).
    paths: Vec<HbPath>,
    /// `track_gateway` verdicts (`None` until the first).
    gateways: Vec<watch::Receiver<Option<bool>>>,
    /// The parsed `virtual_ipaddress` list (parsed once, not per packet).
    vips: Vec<crate::config::VirtualAddress>,
    /// Their addresses, sorted: what a valid advert must carry.
    vip_set: Vec<IpAddr>,
    group: Option<SyncGroup>,
    /// Performing a `Follow`: transitions are not re-broadcast as our own.
    following: bool,
    cfg: VrrpInstance,
    /// The instance's interface, followed when it is re-created or its MAC
    /// changes.
    iface: String,
    ifindex: u32,
    /// Whether the own interface is up and running (tracked unless
    /// `dont_track_primary`), and since when it is (`None`: down).
    primary_up: bool,
    primary_up_since: Option<std::time::Instant>,
    handle: rtnetlink::Handle,
    links: Neighbors,
    socket: VrrpSocket,
    announcer: net::Announcer,
    machine: Machine,
    status: Arc<Mutex<InstanceStatus>>,
    /// This instance's tracked scripts and processes with its weights.
    checks: Vec<(i32, watch::Receiver<Option<bool>>)>,
    /// This instance's tracked files with its weights.
    files: Vec<(i32, watch::Receiver<i64>)>,
    /// Every tracked item's verdict, for a reload that changes what the
    /// instance tracks.
    trackers: Trackers,
    /// `virtual_routes` and `virtual_rules`, parsed (held while master).
    routes: Vec<routes::VirtualRoute>,
    rules: Vec<routes::VirtualRule>,
    quorum: QuorumBoard,
    /// Where this instance's state is published.
    states: Arc<watch::Sender<States>>,
    notifier: Notifier,
    /// When a split brain was last notified (at most once per SPLIT_NOTE_EVERY).
    split_noted: Option<std::time::Instant>,
    garp_at: Option<Instant>,
    garp_bursts_left: u32,
    /// When the last valid advert from another router arrived.
    last_advert: Option<std::time::Instant>,
    /// When each drop reason was last logged (one line per reason per
    /// DROP_LOG_EVERY, however many packets a flood brings).
    drop_logged: BTreeMap<Reject, std::time::Instant>,
    /// The virtual-MAC interface (`use_vmac`): name and index.
    vmac: Option<(String, u32)>,
    vmac_hook: Option<VmacHook>,
    /// `master_bfd`: the BFD session to the master.
    master_bfd: Option<watch::Receiver<Option<bool>>>,
    /// Taking over from the previous process: the first transition is
    /// the state it had, not a change (no notification).
    resumed: bool,
}

/// What every instance of the VRRP thread shares.
struct Shared {
    trackers: Trackers,
    notifier: Notifier,
    quorum: QuorumBoard,
    states: Arc<watch::Sender<States>>,
    vmac_hook: Option<VmacHook>,
}

impl Runner {
    async fn open(
        cfg: VrrpInstance,
        iface: String,
        status: Arc<Mutex<InstanceStatus>>,
        shared: &Shared,
        group: Option<SyncGroup>,
        resume: Option<String>,
    ) -> Result<Runner, VrrpError> {
        let trackers = &shared.trackers;
        let notifier = shared.notifier.clone();
        let quorum = shared.quorum.clone();
        let states = shared.states.clone();
        let vmac_hook = shared.vmac_hook.clone();
        let name = cfg.name.clone();
        let links = Neighbors::open(&iface)
            .await
            .map_err(|source| VrrpError::Link {
                name: name.clone(),
                source,
            })?;
        let link = links.link();
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| VrrpError::Net {
            name: name.clone(),
            source: NetError::Io {
                what: "netlink".into(),
                source: e,
            },
        })?;
        tokio::spawn(connection);
        let v6 = cfg.is_ipv6();
        let src = match cfg.unicast_src_ip {
            Some(a) => a,
            None => net::primary_address(&handle, link.index, v6)
                .await
                .map_err(|source| VrrpError::Net {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| VrrpError::NoSource(name.clone()))?,
        };
        // The virtual-MAC interface (`use_vmac`): the addresses go there,
        // announcements and (unless vmac_xmit_base) adverts leave from it.
        let vmac = match cfg.vmac_name() {
            Some(vname) => {
                let index = net::create_vmac(
                    &handle,
                    &vname,
                    link.index,
                    crate::neighbor::Mac(cfg.vmac()),
                    v6,
                )
                .await
                .map_err(|source| VrrpError::Net {
                    name: name.clone(),
                    source,
                })?;
                info!(instance = %name, interface = %vname, vmac = %crate::neighbor::Mac(cfg.vmac()), "virtual MAC interface ready");
                Some((vname, index))
            }
            None => None,
        };
        // Adverts from the virtual MAC are also received there: a frame
        // whose source MAC is a local macvlan's is handed to that macvlan
        // only, never to the base interface. IPv6 adverts leave from the
        // base interface's link-local address (the virtual-MAC interface
        // has none: one would be shared by every director).
        let (sock_iface, sock_index, on_vmac) = match &vmac {
            Some((n, i)) if cfg.adverts_from_vmac() => (n.as_str(), *i, true),
            _ => (iface.as_str(), link.index, false),
        };
        let socket = open_when_usable(
            &name,
            sock_iface,
            sock_index,
            src,
            cfg.unicast_peer.is_empty(),
            on_vmac,
        )
        .await
        .map_err(|source| VrrpError::Net {
            name: name.clone(),
            source,
        })?;
        let mut paths = Vec::new();
        for h in &cfg.heartbeat {
            let net_err = |source| VrrpError::Net {
                name: name.clone(),
                source,
            };
            let hb_link =
                Neighbors::open(&h.interface)
                    .await
                    .map_err(|source| VrrpError::Link {
                        name: name.clone(),
                        source,
                    })?;
            let index = hb_link.link().index;
            let src = match h.unicast_src_ip {
                Some(a) => a,
                None => net::primary_address(&handle, index, v6)
                    .await
                    .map_err(net_err)?
                    .ok_or_else(|| {
                        VrrpError::NoSource(format!("{name} (heartbeat {})", h.interface))
                    })?,
            };
            let socket = open_when_usable(
                &name,
                &h.interface,
                index,
                src,
                h.unicast_peer.is_empty(),
                false,
            )
            .await
            .map_err(|source| VrrpError::Net {
                name: name.clone(),
                source,
            })?;
            info!(instance = %name, interface = %h.interface, source = %src, "VRRP heartbeat path");
            paths.push(HbPath {
                socket,
                peers: h.unicast_peer.clone(),
                _link: hb_link,
            });
        }
        let gateways = cfg
            .track_gateway
            .iter()
            .map(|g| start_gateway(&name, g.clone()))
            .collect();
        let announcer = match &vmac {
            Some((vname, index)) => {
                net::Announcer::open(vname, *index, crate::neighbor::Mac(cfg.vmac()), v6)
            }
            None => net::Announcer::open(&iface, link.index, link.mac, v6),
        }
        .map_err(|source| VrrpError::Net {
            name: name.clone(),
            source,
        })?;
        let machine = Machine::new(Params {
            version: cfg.version,
            priority: cfg.priority,
            advert_interval_cs: cfg.advert_interval_cs(),
            preempt: !cfg.nopreempt,
            preempt_delay: Duration::from_secs_f64(cfg.preempt_delay),
            start_as_master: cfg.state == InitialState::Master
                || resume.as_deref() == Some("master"),
            primary: src,
        });
        let (checks, files) = trackers.resolve(&cfg);
        let (vroutes, vrules) = parse_routes(&cfg);
        info!(
            instance = %cfg.name,
            vrid = cfg.virtual_router_id,
            interface = %iface,
            source = %src,
            version = cfg.version.number(),
            mode = if cfg.unicast_peer.is_empty() { "multicast" } else { "unicast" },
            "VRRP instance starting"
        );
        let vips = cfg.addresses();
        let mut vip_set: Vec<IpAddr> = vips.iter().map(|a| a.address).collect();
        vip_set.sort();
        Ok(Runner {
            paths,
            gateways,
            vips,
            vip_set,
            group,
            following: false,
            iface,
            ifindex: link.index,
            primary_up: true,
            primary_up_since: std::time::Instant::now().checked_sub(PRIMARY_SETTLE),
            handle,
            links,
            socket,
            announcer,
            machine,
            status,
            checks,
            files,
            trackers: trackers.clone(),
            routes: vroutes,
            rules: vrules,
            quorum,
            states,
            notifier,
            split_noted: None,
            garp_at: None,
            garp_bursts_left: 0,
            last_advert: None,
            drop_logged: BTreeMap::new(),
            vmac,
            vmac_hook,
            master_bfd: cfg
                .master_bfd
                .as_ref()
                .and_then(|n| shared.trackers.bfd.get(n))
                .map(|(_, rx)| rx.clone()),
            resumed: resume.is_some(),
            cfg,
        })
    }

    /// Where the virtual addresses go: the virtual-MAC interface, or ours.
    fn address_ifindex(&self) -> u32 {
        self.vmac.as_ref().map_or(self.ifindex, |(_, i)| *i)
    }

    /// Tells the dataplane whether our virtual MAC is ours now.
    fn own_vmac(&self, ours: bool) {
        if self.vmac.is_some()
            && let Some(hook) = &self.vmac_hook
        {
            hook(self.cfg.vmac(), ours);
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let actions = self.machine.step(Event::Startup, std::time::Instant::now());
        if !actions.contains(&Action::AddAddresses) {
            // Not master: addresses left by a daemon that died must go.
            self.perform(vec![Action::RemoveAddresses]).await;
        }
        self.perform(actions).await;
        self.resumed = false;
        let mut tracking = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        let mut tracked = (false, self.cfg.priority);
        let mut master_bfd = self.master_bfd.clone();
        let mut quorum = self.quorum.clone();
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let deadline = self
                .machine
                .deadline()
                .map(Instant::from_std)
                .unwrap_or(far);
            let garp = self.garp_at.unwrap_or(far);
            let peer = async {
                match self.group.as_mut() {
                    Some(g) => g.rx.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                cmd = commands.recv() => {
                    let done = match cmd {
                        Some(Command::Update(new)) => {
                            self.update(*new).await;
                            continue;
                        }
                        Some(Command::Shutdown(done)) => Some(done),
                        Some(Command::HandOver(done)) => {
                            let _ = done.send(self.hand_over());
                            return;
                        }
                        None => None,
                    };
                    let actions = self.machine.step(Event::Shutdown, std::time::Instant::now());
                    self.perform(actions).await;
                    // The virtual-MAC interface goes with the instance.
                    if let Some((vname, _)) = &self.vmac
                        && let Err(e) = net::delete_vmac(&self.handle, vname).await
                    {
                        warn!(instance = %self.cfg.name, interface = %vname, error = %e, "cannot remove the virtual MAC interface");
                    }
                    self.notify("STOP");
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                r = self.socket.recv() => match r {
                    Ok(p) => self.received(None, p).await,
                    Err(e) => {
                        warn!(instance = %self.cfg.name, error = %e, "VRRP receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                (i, r) = recv_paths(&self.paths) => match r {
                    Ok(p) => self.received(Some(i), p).await,
                    Err(e) => {
                        warn!(instance = %self.cfg.name, error = %e, "VRRP receive failed on a heartbeat path");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = sleep_until(deadline) => {
                    // Adverts that arrived while we were busy count first:
                    // a loaded machine must not declare a live master dead.
                    while let Ok(Some(p)) = self.socket.try_recv() {
                        self.received(None, p).await;
                    }
                    for i in 0..self.paths.len() {
                        while let Ok(Some(p)) = self.paths[i].socket.try_recv() {
                            self.received(Some(i), p).await;
                        }
                    }
                    if self.machine.state() == State::Backup
                        && let Some(due) = self.machine.deadline()
                        && due <= std::time::Instant::now()
                    {
                        // Woken far later than due: we were starved, and so
                        // may the master have been. The silence we measured
                        // is not evidence; wait one more interval.
                        let late = std::time::Instant::now().saturating_duration_since(due);
                        if self.machine.deadline() == Some(due)
                            && late > self.machine.master_adver_interval()
                        {
                            warn!(
                                instance = %self.cfg.name,
                                late_ms = late.as_secs_f64() * 1000.0,
                                "VRRP timer fired late: this machine is overloaded; giving the master one more interval"
                            );
                            let a = self.machine.step(Event::Starved, std::time::Instant::now());
                            self.perform(a).await;
                            continue;
                        }
                    }
                    let now = std::time::Instant::now();
                    if self.machine.state() == State::Master
                        && let Some(due) = self.machine.deadline()
                        && now.saturating_duration_since(due) > self.machine.master_adver_interval()
                    {
                        warn!(
                            instance = %self.cfg.name,
                            late_ms = now.saturating_duration_since(due).as_secs_f64() * 1000.0,
                            "VRRP advert sent late: this machine is overloaded"
                        );
                    }
                    let actions = self.machine.step(Event::Timer, now);
                    self.perform(actions).await;
                }
                _ = sleep_until(garp) => self.garp_burst(),
                _ = bfd_changed(&mut master_bfd) => {
                    let down = master_bfd.as_ref().is_some_and(|rx| *rx.borrow() == Some(false));
                    if down && self.machine.state() == State::Backup {
                        info!(
                            instance = %self.cfg.name,
                            session = ?self.cfg.master_bfd,
                            "BFD session to the master is down: taking over without waiting for the master-down interval"
                        );
                        let a = self.machine.step(Event::MasterDown, std::time::Instant::now());
                        self.perform(a).await;
                    }
                }
                Some((member, state)) = peer => {
                    if member != self.cfg.name && state != self.machine.state() {
                        let a = self.machine.step(Event::Follow(state), std::time::Instant::now());
                        self.following = true;
                        self.perform(a).await;
                        self.following = false;
                    }
                }
                _ = tracking.tick() => {
                    ticks += 1;
                    self.follow_interface().await;
                    // Every 30 s: a router that never heard a peer says so.
                    if ticks % 300 == 1 && !self.cfg.standalone && self.last_advert.is_none() && ticks > 1 {
                        warn!(
                            instance = %self.cfg.name,
                            vrid = self.cfg.virtual_router_id,
                            state = self.machine.state().as_str(),
                            "VRRP peer never seen: no other router's advert has arrived since start; if this router has peers, their adverts are being dropped (firewall?) or misconfigured (set standalone = true if it is alone)"
                        );
                    }
                    self.retrack(&mut tracked).await;
                }
                Ok(()) = quorum.changed() => {
                    // A tracked virtual server's quorum: at once, not at
                    // the next tick.
                    self.retrack(&mut tracked).await;
                }
            }
        }
    }

    /// Re-evaluates tracking (fault, effective priority) and feeds what
    /// changed since `tracked` to the state machine.
    async fn retrack(&mut self, tracked: &mut (bool, u8)) {
        let now = self.tracking();
        if now == *tracked {
            return;
        }
        let t = std::time::Instant::now();
        if now.1 != tracked.1 {
            info!(instance = %self.cfg.name, old = tracked.1, new = now.1, "effective priority changed");
            let a = self.machine.step(Event::Priority(now.1), t);
            self.perform(a).await;
        }
        if now.0 != tracked.0 {
            let a = self.machine.step(Event::Fault(now.0), t);
            self.perform(a).await;
        }
        *tracked = now;
    }

    /// Takes a reload's changes that need no restart of the instance
    /// (see [`soft_change`]): notify scripts, tracking, priority, gratuitous
    /// ARP settings. The state, the VIPs and the adverts go on untouched.
    async fn update(&mut self, new: VrrpInstance) {
        (self.checks, self.files) = self.trackers.resolve(&new);
        let (routes, rules) = parse_routes(&new);
        if (&routes, &rules) != (&self.routes, &self.rules) {
            if self.machine.state() == State::Master {
                // Those that went, then those that came (the same kept).
                let old = std::mem::take(&mut self.routes);
                let old_rules = std::mem::take(&mut self.rules);
                self.routes = old
                    .iter()
                    .filter(|r| !routes.contains(r))
                    .cloned()
                    .collect();
                self.rules = old_rules
                    .iter()
                    .filter(|r| !rules.contains(r))
                    .cloned()
                    .collect();
                self.remove_routes().await;
                self.routes = routes
                    .iter()
                    .filter(|r| !old.contains(r))
                    .cloned()
                    .collect();
                self.rules = rules
                    .iter()
                    .filter(|r| !old_rules.contains(r))
                    .cloned()
                    .collect();
                self.add_routes().await;
            }
            self.routes = routes;
            self.rules = rules;
        }
        info!(instance = %new.name, "VRRP instance updated in place by the reload");
        let priority = new.priority;
        self.cfg = new;
        self.bump(|s| s.priority = priority);
    }

    /// Follows the instance's interface when it was re-created (new index:
    /// the sockets are opened again, a master puts its addresses back) or
    /// its MAC changed (announcements carry the new one, and a master
    /// announces it at once). Retried every tick until it succeeds.
    async fn follow_interface(&mut self) {
        let old = self.links.link();
        let now = match self.links.lookup_state(&self.iface).await {
            Ok(Some((now, up))) => {
                if up && !self.primary_up {
                    self.primary_up_since = Some(std::time::Instant::now());
                }
                self.primary_up = up;
                if now == old {
                    return;
                }
                now
            }
            Ok(None) => {
                // Deleted: down until it is back.
                self.primary_up = false;
                return;
            }
            Err(_) => return,
        };
        let name = self.cfg.name.clone();
        if now.index != old.index {
            // A virtual-MAC interface went with the old one.
            if let Some((vname, _)) = self.vmac.clone() {
                let mac = crate::neighbor::Mac(self.cfg.vmac());
                match net::create_vmac(&self.handle, &vname, now.index, mac, self.cfg.is_ipv6())
                    .await
                {
                    Ok(i) => self.vmac = Some((vname, i)),
                    Err(e) => {
                        debug!(instance = %name, error = %e, "virtual MAC interface not re-created yet");
                        return;
                    }
                }
            }
            let socket = match &self.vmac {
                Some((n, i)) if self.cfg.adverts_from_vmac() => VrrpSocket::open_on_device(
                    n,
                    *i,
                    self.socket.source(),
                    self.cfg.unicast_peer.is_empty(),
                ),
                _ => VrrpSocket::open(
                    &self.iface,
                    now.index,
                    self.socket.source(),
                    self.cfg.unicast_peer.is_empty(),
                ),
            };
            match socket {
                Ok(s) => self.socket = s,
                Err(e) => {
                    // For example our address is not on the new interface
                    // yet: the next tick tries again.
                    debug!(instance = %name, error = %e, "VRRP socket not reopened yet");
                    return;
                }
            }
        }
        let announcer = match &self.vmac {
            Some((vname, index)) => net::Announcer::open(
                vname,
                *index,
                crate::neighbor::Mac(self.cfg.vmac()),
                self.cfg.is_ipv6(),
            ),
            None => net::Announcer::open(&self.iface, now.index, now.mac, self.cfg.is_ipv6()),
        };
        match announcer {
            Ok(a) => self.announcer = a,
            Err(e) => {
                debug!(instance = %name, error = %e, "announcer not reopened yet");
                return;
            }
        }
        info!(
            instance = %name,
            interface = %self.iface,
            old_ifindex = old.index,
            ifindex = now.index,
            old_mac = %old.mac,
            mac = %now.mac,
            "VRRP interface changed: following it"
        );
        self.links.set_link(now);
        self.ifindex = now.index;
        if self.machine.state() == State::Master {
            // The addresses went with the old device; clients learn the
            // new MAC.
            self.perform(vec![Action::AddAddresses, Action::Announce])
                .await;
        }
    }

    /// (fault, effective priority) from tracked interfaces and scripts.
    fn tracking(&self) -> (bool, u8) {
        // The own interface (keepalived's default; `dont_track_primary`
        // opts out): a VRRP router whose link is down cannot be master.
        // A link that just came back is given PRIMARY_SETTLE before the
        // instance leaves Fault: the switch may forward nothing yet, and a
        // backup that heard no master meanwhile would claim the VIP (a
        // split brain).
        let settled = self
            .primary_up_since
            .is_some_and(|t| t.elapsed() >= PRIMARY_SETTLE);
        let mut fault = !(self.cfg.dont_track_primary || self.primary_up && settled);
        let mut priority = i32::from(self.cfg.priority);
        for i in &self.cfg.track_interface {
            let state = std::fs::read_to_string(format!("/sys/class/net/{}/operstate", i.name()))
                .unwrap_or_default();
            let up = matches!(state.trim(), "up" | "unknown");
            match i.weight() {
                // No weight (or 0): a tracked interface down means Fault.
                None | Some(0) => fault |= !up,
                Some(w) if w < 0 && !up => priority += w,
                Some(w) if w > 0 && up => priority += w,
                Some(_) => {}
            }
        }
        for (weight, rx) in &self.files {
            let value = *rx.borrow();
            if *weight == 0 {
                fault |= value != 0;
            } else {
                let delta = value.saturating_mul(i64::from(*weight));
                // keepalived: an adjustment of -254 or less means Fault.
                if delta <= -254 {
                    fault = true;
                }
                priority = priority.saturating_add(delta.clamp(-1000, 1000) as i32);
            }
        }
        // An unreachable gateway forces Fault.
        if self.gateways.iter().any(|g| *g.borrow() == Some(false)) {
            fault = true;
        }
        let services: Vec<(Option<bool>, i32)> = {
            let q = self.quorum.borrow();
            self.cfg
                .track_virtual_server
                .iter()
                .map(|t| (q.get(&t.id()).copied(), t.weight))
                .collect()
        };
        let checks = self.checks.iter().map(|(w, rx)| (*rx.borrow(), *w));
        for (up, weight) in checks.chain(services) {
            match (up, weight) {
                (Some(false), 0) => fault = true,
                (Some(false), w) if w < 0 => priority += w,
                (Some(true), w) if w > 0 => priority += w,
                _ => {}
            }
        }
        let own = priority.clamp(1, 254) as u8;
        let effective = match &self.group {
            Some(g) => match g.priorities.lock() {
                Ok(mut p) => {
                    p.insert(self.cfg.name.clone(), own);
                    p.values().copied().min().unwrap_or(own)
                }
                Err(_) => own,
            },
            None => own,
        };
        (fault, effective)
    }

    /// An advert from the instance's own socket (`path` None) or a
    /// heartbeat path.
    async fn received(&mut self, path: Option<usize>, p: Received) {
        match self.check(path, &p) {
            Ok(advert) => {
                self.last_advert = Some(std::time::Instant::now());
                self.bump(|s| {
                    s.adverts_received += 1;
                    s.peer_seen = true;
                });
                let actions = self.machine.step(
                    Event::Advert {
                        src: p.src,
                        priority: advert.priority,
                        interval_cs: advert.interval_cs,
                    },
                    std::time::Instant::now(),
                );
                self.perform(actions).await;
            }
            Err(reason) => {
                let count = self.bump(|s| {
                    let n = s.rejected.entry(reason.label().to_string()).or_insert(0);
                    *n += 1;
                    *n
                });
                // Another virtual router on the link is normal: counted,
                // never logged. Others: one line per reason per interval.
                let now = std::time::Instant::now();
                let due = self
                    .drop_logged
                    .get(&reason)
                    .is_none_or(|t| now.duration_since(*t) >= DROP_LOG_EVERY);
                if reason != Reject::Vrid && due {
                    self.drop_logged.insert(reason, now);
                    warn!(instance = %self.cfg.name, from = %p.src, %reason, count, "VRRP packet dropped (logged at most every 10 s per reason)");
                }
            }
        }
    }

    /// RFC 5798 7.1 / RFC 3768 7.1 receive checks.
    fn check(&self, path: Option<usize>, p: &Received) -> Result<Advert, Reject> {
        let (own, peers) = match path.and_then(|i| self.paths.get(i)) {
            Some(h) => (h.socket.source(), &h.peers),
            None => (self.socket.source(), &self.cfg.unicast_peer),
        };
        if p.src == own || p.src == self.socket.source() {
            return Err(Reject::Own);
        }
        let v6 = p.src.is_ipv6();
        let advert = Advert::decode(&p.payload, v6, p.src, p.dst)?;
        if advert.vrid != self.cfg.virtual_router_id {
            return Err(Reject::Vrid);
        }
        if p.ttl != TTL {
            return Err(Reject::Ttl);
        }
        if advert.version != self.cfg.version {
            return Err(Reject::Version);
        }
        if !peers.is_empty() && !peers.contains(&p.src) {
            return Err(Reject::Source);
        }
        if advert.version == crate::config::Version::V2 {
            if advert.interval_cs != self.cfg.advert_interval_cs() {
                return Err(Reject::Interval);
            }
            let (auth_type, data) = advert.auth.unwrap_or((0, [0; 8]));
            match &self.cfg.authentication {
                Some(a) if auth_type != AUTH_PASS || data != auth_data(&a.auth_pass) => {
                    return Err(Reject::Auth);
                }
                Some(_) => {}
                None if auth_type != 0 => return Err(Reject::Auth),
                None => {}
            }
        }
        let mut theirs = advert.addresses.clone();
        theirs.sort();
        if advert.priority != 255 && advert.priority != 0 && self.vip_set != theirs {
            return Err(Reject::Addresses);
        }
        Ok(advert)
    }

    fn bump<T>(&self, f: impl FnOnce(&mut InstanceStatus) -> T) -> T
    where
        T: Default,
    {
        match self.status.lock() {
            Ok(mut s) => f(&mut s),
            Err(_) => T::default(),
        }
    }

    /// The index routes without `dev` or `via` go out of (the instance's
    /// interface), or their `dev`'s.
    fn route_ifindex(&self, r: &routes::VirtualRoute) -> Option<u32> {
        match &r.dev {
            Some(d) => std::fs::read_to_string(format!("/sys/class/net/{d}/ifindex"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            None if r.via.is_none() => Some(self.ifindex),
            None => None,
        }
    }

    /// Adds `virtual_routes` then `virtual_rules` (on becoming master).
    async fn add_routes(&mut self) {
        for r in self.routes.clone() {
            let index = self.route_ifindex(&r);
            if r.dev.is_some() && index.is_none() {
                error!(instance = %self.cfg.name, route = %r.text, "cannot add virtual route: no such interface");
                continue;
            }
            match routes::add_route(&self.handle, &r, index).await {
                Ok(()) => debug!(instance = %self.cfg.name, route = %r.text, "virtual route added"),
                Err(e) => {
                    error!(instance = %self.cfg.name, route = %r.text, error = %e, "cannot add virtual route")
                }
            }
        }
        for r in self.rules.clone() {
            match routes::add_rule(&self.handle, &r).await {
                Ok(()) => debug!(instance = %self.cfg.name, rule = %r.text, "virtual rule added"),
                Err(e) => {
                    error!(instance = %self.cfg.name, rule = %r.text, error = %e, "cannot add virtual rule")
                }
            }
        }
    }

    /// Removes `virtual_rules` then `virtual_routes` (on leaving master, and
    /// at start: a daemon that died may have left them).
    async fn remove_routes(&mut self) {
        for r in self.rules.clone() {
            if let Err(e) = routes::delete_rule(&self.handle, &r).await {
                warn!(instance = %self.cfg.name, rule = %r.text, error = %e, "cannot remove virtual rule");
            }
        }
        for r in self.routes.clone() {
            let index = self.route_ifindex(&r);
            if r.dev.is_some() && index.is_none() {
                // Its interface is gone, and the route with it.
                continue;
            }
            if let Err(e) = routes::delete_route(&self.handle, &r, index).await {
                warn!(instance = %self.cfg.name, route = %r.text, error = %e, "cannot remove virtual route");
            }
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::SendAdvert(priority) => self.send_advert(priority),
                Action::AddAddresses => {
                    // Frames to the virtual MAC are ours before anyone is
                    // told the addresses moved.
                    self.own_vmac(true);
                    let index = self.address_ifindex();
                    for a in self.vips.clone() {
                        if let Err(e) = net::add_address(&self.handle, index, a).await {
                            error!(instance = %self.cfg.name, address = %a.address, error = %e, "cannot add virtual address");
                        }
                    }
                    self.add_routes().await;
                }
                Action::Announce => {
                    self.garp_bursts_left = 1;
                    self.announce();
                    self.garp_at = Some(
                        Instant::now() + Duration::from_secs(u64::from(self.cfg.garp_master_delay)),
                    );
                }
                Action::RemoveAddresses => {
                    self.garp_at = None;
                    self.remove_routes().await;
                    self.own_vmac(false);
                    let index = self.address_ifindex();
                    for a in self.vips.clone() {
                        if let Err(e) = net::remove_address(&self.handle, index, a).await {
                            error!(instance = %self.cfg.name, address = %a.address, error = %e, "cannot remove virtual address");
                        }
                    }
                }
                Action::SplitBrain { other, yielded } => {
                    warn!(
                        instance = %self.cfg.name,
                        vrid = self.cfg.virtual_router_id,
                        other = %other,
                        our_priority = self.machine.priority(),
                        outcome = if yielded { "we yield" } else { "we stay master" },
                        "VRRP split brain: another master for our virtual router"
                    );
                    self.bump(|s| s.split_brains += 1);
                    // Its own notification (never notify_stop), at most
                    // once per SPLIT_NOTE_EVERY: a lasting split brain
                    // brings one advert per interval.
                    if self
                        .split_noted
                        .is_none_or(|t| t.elapsed() >= SPLIT_NOTE_EVERY)
                    {
                        self.split_noted = Some(std::time::Instant::now());
                        self.notify("SPLIT_BRAIN");
                    }
                }
                Action::Transition {
                    from: State::Init,
                    to,
                } if self.resumed => {
                    info!(
                        instance = %self.cfg.name,
                        vrid = self.cfg.virtual_router_id,
                        state = to.as_str(),
                        priority = self.machine.priority(),
                        "VRRP state taken over from the previous process (no change, no notification)"
                    );
                }
                Action::Transition { from, to } => {
                    let silence_ms = self.last_advert.map(|t| t.elapsed().as_secs_f64() * 1000.0);
                    info!(
                        instance = %self.cfg.name,
                        vrid = self.cfg.virtual_router_id,
                        old = from.as_str(),
                        new = to.as_str(),
                        priority = self.machine.priority(),
                        master = ?self.machine.master(),
                        since_last_advert_ms = ?silence_ms,
                        "VRRP state change"
                    );
                    let name = match to {
                        State::Master => Some("MASTER"),
                        State::Backup => Some("BACKUP"),
                        State::Fault => Some("FAULT"),
                        State::Init => None,
                    };
                    if let Some(n) = name {
                        self.notify(n);
                    }
                    if !self.following
                        && let Some(g) = &self.group
                    {
                        // Fault spreads to the group, and so does leaving it.
                        if to == State::Fault || from == State::Fault {
                            let _ = g.tx.send((self.cfg.name.clone(), to));
                        }
                        if let Some(n) = name {
                            self.notify_group(&g.config, n);
                        }
                    }
                }
            }
        }
        let (state, prio, master, transitions) = (
            self.machine.state(),
            self.machine.priority(),
            self.machine.master(),
            self.machine.transitions(),
        );
        self.bump(|s| {
            s.state = state.as_str().to_string();
            s.effective_priority = prio;
            s.master_address = master.map(|m| m.to_string());
            s.transitions = transitions;
        });
        let published = Published {
            state,
            addresses: self.vip_set.clone(),
        };
        let name = &self.cfg.name;
        self.states.send_if_modified(|m| {
            if m.get(name) == Some(&published) {
                return false;
            }
            m.insert(name.clone(), published);
            true
        });
    }

    /// The process restarts: a master sends one last ordinary advert (the
    /// backups' master-down timers start afresh) and keeps its addresses,
    /// routes and virtual MAC; a backup keeps nothing to keep. Nothing is
    /// notified. Fault and Init are not handed over (the next process
    /// starts them afresh).
    fn hand_over(&mut self) -> Option<crate::handover::Instance> {
        let state = self.machine.state();
        if !matches!(state, State::Master | State::Backup) {
            return None;
        }
        if state == State::Master {
            self.send_advert(self.machine.priority());
        }
        info!(instance = %self.cfg.name, state = state.as_str(), "VRRP instance handed over to the next process");
        Some(crate::handover::Instance {
            name: self.cfg.name.clone(),
            virtual_router_id: self.cfg.virtual_router_id,
            interface: self.iface.clone(),
            state: state.as_str().to_string(),
            virtual_ipaddress: self.cfg.address_texts(),
            advert_int: self.cfg.advert_int,
        })
    }

    fn send_advert(&mut self, priority: u8) {
        let advert = Advert {
            version: self.cfg.version,
            vrid: self.cfg.virtual_router_id,
            priority,
            interval_cs: self.cfg.advert_interval_cs(),
            addresses: self.vips.iter().map(|a| a.address).collect(),
            auth: self
                .cfg
                .authentication
                .as_ref()
                .map(|a| (AUTH_PASS, auth_data(&a.auth_pass))),
        };
        let src = self.socket.source();
        let targets: Vec<IpAddr> = if self.cfg.unicast_peer.is_empty() {
            vec![if src.is_ipv6() {
                MULTICAST_V6.into()
            } else {
                MULTICAST_V4.into()
            }]
        } else {
            self.cfg.unicast_peer.clone()
        };
        for dst in targets {
            match self.socket.send(dst, &advert.encode(src, dst)) {
                Ok(()) => {
                    self.bump(|s| s.adverts_sent += 1);
                }
                Err(e) => warn!(instance = %self.cfg.name, error = %e, "VRRP advert not sent"),
            }
        }
        // The same advert on every heartbeat path.
        for h in &self.paths {
            let src = h.socket.source();
            let group: IpAddr = if src.is_ipv6() {
                MULTICAST_V6.into()
            } else {
                MULTICAST_V4.into()
            };
            let targets = if h.peers.is_empty() {
                vec![group]
            } else {
                h.peers.clone()
            };
            for dst in targets {
                if let Err(e) = h.socket.send(dst, &advert.encode(src, dst)) {
                    warn!(instance = %self.cfg.name, error = %e, "VRRP advert not sent on a heartbeat path");
                }
            }
        }
    }

    /// One burst of `garp_master_repeat` gratuitous ARPs / unsolicited NAs.
    fn announce(&self) {
        let addrs = &self.vips;
        let v4: Vec<_> = addrs
            .iter()
            .filter_map(|a| match a.address {
                IpAddr::V4(v) => Some(v),
                _ => None,
            })
            .collect();
        let v6: Vec<_> = addrs
            .iter()
            .filter_map(|a| match a.address {
                IpAddr::V6(v) => Some(v),
                _ => None,
            })
            .collect();
        for _ in 0..self.cfg.garp_master_repeat.max(1) {
            if let Err(e) = self.announcer.garps(&v4) {
                warn!(instance = %self.cfg.name, error = %e, "gratuitous ARP failed");
            }
            if let Err(e) = self.announcer.nas(&v6) {
                warn!(instance = %self.cfg.name, error = %e, "neighbour advertisement failed");
            }
        }
    }

    /// The delayed second burst, then refreshes every garp_master_refresh.
    fn garp_burst(&mut self) {
        if self.machine.state() != State::Master {
            self.garp_at = None;
            return;
        }
        self.announce();
        if self.garp_bursts_left > 0 {
            self.garp_bursts_left -= 1;
        }
        self.garp_at = (self.cfg.garp_master_refresh > 0)
            .then(|| Instant::now() + Duration::from_secs(u64::from(self.cfg.garp_master_refresh)));
    }

    /// Queues the notify scripts for `state` (run in order, off this loop).
    fn notify(&self, state: &str) {
        let none = None;
        let specific = match state {
            "MASTER" => &self.cfg.notify_master,
            "BACKUP" => &self.cfg.notify_backup,
            "FAULT" => &self.cfg.notify_fault,
            "STOP" => &self.cfg.notify_stop,
            // SPLIT_BRAIN: only the generic `notify` hears of it.
            _ => &none,
        };
        let mut jobs = Vec::new();
        if let Some(cmd) = specific.as_deref().and_then(shlex::split) {
            jobs.push(cmd);
        }
        if let Some(mut cmd) = self.cfg.notify.as_deref().and_then(shlex::split) {
            cmd.extend([
                "INSTANCE".to_string(),
                self.cfg.name.clone(),
                state.to_string(),
                self.machine.priority().to_string(),
            ]);
            jobs.push(cmd);
        }
        // Split-brain reports queue apart: they never replace (nor are
        // replaced by) a state change.
        let subject = if state == "SPLIT_BRAIN" {
            format!("{}/split", self.cfg.name)
        } else {
            self.cfg.name.clone()
        };
        self.notifier.send(&subject, jobs);
    }
}

impl Runner {
    /// The group's notify scripts, run by the member that moved first.
    fn notify_group(&self, g: &VrrpSyncGroup, state: &str) {
        let specific = match state {
            "MASTER" => &g.notify_master,
            "BACKUP" => &g.notify_backup,
            "FAULT" => &g.notify_fault,
            _ => &None,
        };
        let mut jobs = Vec::new();
        if let Some(cmd) = specific.as_deref().and_then(shlex::split) {
            jobs.push(cmd);
        }
        if let Some(mut cmd) = g.notify.as_deref().and_then(shlex::split) {
            cmd.extend(["GROUP".to_string(), g.name.clone(), state.to_string()]);
            jobs.push(cmd);
        }
        self.notifier.send(&format!("group {}", g.name), jobs);
    }
}

/// Pings a tracked gateway every `interval`; its verdict (`None` until the
/// first) follows `fall` / `rise` rounds in a row.
fn start_gateway(instance: &str, g: crate::config::TrackGateway) -> watch::Receiver<Option<bool>> {
    let (tx, rx) = watch::channel(None);
    let instance = instance.to_string();
    tokio::spawn(async move {
        let interval = Duration::from_secs_f64(g.interval);
        let mut ticker = tokio::time::interval(interval);
        let mut verdict: Option<crate::health::Verdict> = None;
        let mut seq = 0u16;
        loop {
            ticker.tick().await;
            seq = seq.wrapping_add(1);
            let address = g.address;
            let wait = interval.min(Duration::from_secs(1));
            let ok = tokio::task::spawn_blocking(move || net::ping(address, seq, wait))
                .await
                .unwrap_or(false);
            let v = verdict.get_or_insert_with(|| crate::health::Verdict::new(ok));
            let changed = v.record(ok, g.rise, g.fall);
            let now = Some(v.healthy);
            if changed || *tx.borrow() != now {
                if v.healthy {
                    info!(instance = %instance, gateway = %g.address, "tracked gateway reachable");
                } else {
                    warn!(instance = %instance, gateway = %g.address, "tracked gateway unreachable: Fault");
                }
                let _ = tx.send(now);
            }
        }
    });
    rx
}

/// The instance's `virtual_routes` and `virtual_rules`, parsed (the
/// configuration check parsed them already: an error here cannot happen,
/// and would only skip the entry).
fn parse_routes(cfg: &VrrpInstance) -> (Vec<routes::VirtualRoute>, Vec<routes::VirtualRule>) {
    let v6 = cfg.is_ipv6();
    (
        cfg.virtual_routes
            .iter()
            .filter_map(|r| routes::parse_route(r, v6).ok())
            .collect(),
        cfg.virtual_rules
            .iter()
            .filter_map(|r| routes::parse_rule(r, v6).ok())
            .collect(),
    )
}

/// One task per `[[vrrp_script]]`; results (`None` until the first verdict)
/// are shared with every instance tracking it.
fn start_scripts(scripts: &[VrrpScript]) -> BTreeMap<String, (i32, watch::Receiver<Option<bool>>)> {
    let mut out = BTreeMap::new();
    for s in scripts {
        let (tx, rx) = watch::channel(None);
        out.insert(s.name.clone(), (s.weight, rx));
        let s = s.clone();
        tokio::spawn(async move {
            let Some(argv) = shlex::split(&s.script) else {
                error!(script = %s.name, "cannot parse the script command line");
                return;
            };
            let interval = Duration::from_secs_f64(s.interval);
            let timeout = Duration::from_secs_f64(s.timeout.unwrap_or(s.interval));
            let (mut ok_run, mut bad_run) = (0u32, 0u32);
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let ok = run_check(&argv, timeout).await;
                if ok {
                    ok_run += 1;
                    bad_run = 0;
                } else {
                    bad_run += 1;
                    ok_run = 0;
                }
                let current = *tx.borrow();
                let next = match current {
                    Some(true) if bad_run >= s.fall => Some(false),
                    Some(false) if ok_run >= s.rise => Some(true),
                    None if ok_run >= s.rise => Some(true),
                    None if bad_run >= s.fall => Some(false),
                    c => c,
                };
                if next != current {
                    info!(script = %s.name, healthy = ?next, "tracked script changed");
                    let _ = tx.send(next);
                }
            }
        });
    }
    out
}

async fn run_check(argv: &[String], timeout: Duration) -> bool {
    use crate::script::{Ended, Leftovers, run};
    matches!(
        run(argv, timeout, 0, Leftovers::Kill).await,
        Ok(crate::script::Run {
            ended: Ended::Exited(0),
            ..
        })
    )
}
