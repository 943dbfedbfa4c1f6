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
    packet::{self, AUTH_PASS, Advert, MULTICAST_V4, MULTICAST_V6, Reject, auth_data},
    routes, trackers,
};
use crate::{
    config::{
        Config, InitialState, TrackFile, TrackProcess, Tracked, VrrpInstance, VrrpScript,
        VrrpSyncGroup,
    },
    net::neighbor::{NeighborError, Neighbors},
    scripts::notify::Notifier,
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
    /// A reload's instance cannot start on this host (checked before any
    /// instance is touched); `key` is the instance's key at fault.
    #[error("{source}")]
    Refused {
        instance: String,
        key: &'static str,
        source: Box<VrrpError>,
    },
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

mod actions;
mod effects;
mod host;
mod preflight;
mod priority;
mod receive;
#[cfg(test)]
mod replay;
mod runner;
mod thread;

pub(crate) use crate::net::socket::raise_priority;
// The parts see each other through this module.
use self::{actions::*, effects::*, host::*, priority::*, runner::*, thread::*};

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

pub use crate::vrrp::VmacHook;

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
    /// The addresses the XDP dataplane serves without them being local
    /// (announced before they are added).
    pub served: Option<crate::vrrp::Served>,
    /// True while preemption is held back (flow sync waits for its peers'
    /// flows).
    pub preempt_hold: Option<watch::Receiver<bool>>,
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

    /// The instances of `config` a reconfigure would start (new, or
    /// changed beyond what a running instance takes in place).
    fn to_start<'c>(&self, config: &'c Config) -> Vec<&'c VrrpInstance> {
        config
            .vrrp_instance
            .iter()
            .filter(|inst| {
                !self.instances.iter().any(|h| {
                    h.config == **inst
                        || (h.config.name == inst.name && soft_change(&h.config, inst))
                })
            })
            .collect()
    }

    /// Checks, before anything changes, that every instance a
    /// reconfigure to `config` would start can start on this host (its
    /// interfaces exist, its source addresses are ours). A refusal names
    /// the instance and what is missing; nothing running is touched.
    pub async fn preflight(&self, config: &Config) -> Result<(), VrrpError> {
        self.check_reconfigure(config)?;
        for inst in self.to_start(config) {
            let iface = inst
                .interface
                .clone()
                .unwrap_or_else(|| config.global.interface.clone());
            preflight::preflight(inst, &iface).await?;
        }
        Ok(())
    }

    /// Applies a new configuration: unchanged instances keep running (no
    /// flap, no priority-0 advert); removed or changed ones stop gracefully;
    /// new or changed ones start. Script and sync-group changes need a
    /// restart (the error says so and nothing changes). What cannot start
    /// here is refused before any instance is touched
    /// ([`Vrrp::preflight`]); should a start fail all the same, the
    /// instances it replaced are started again as they were.
    pub async fn reconfigure(&mut self, config: &Config) -> Result<(), VrrpError> {
        self.preflight(config).await?;
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
        let mut stopped = Vec::new();
        for (h, keep) in std::mem::take(&mut self.instances).into_iter().zip(keep) {
            if keep {
                kept.push(h);
            } else {
                info!(instance = %h.config.name, "VRRP instance removed or changed by reload");
                shutdown(&h).await;
                self.unpublish(&h.config.name);
                stopped.push(h.config);
            }
        }
        self.instances = kept;
        let mut started = Vec::new();
        for inst in &config.vrrp_instance {
            if !self.instances.iter().any(|h| &h.config == inst) {
                if let Err(e) = self.start_instance(inst.clone()) {
                    // Back to what ran: the ones started here stop, the
                    // ones they replaced start again.
                    error!(instance = %inst.name, error = %e, "VRRP instance could not start: putting back the instances the reload replaced");
                    for name in started {
                        if let Some(i) = self.instances.iter().position(|h| h.config.name == name) {
                            let h = self.instances.remove(i);
                            shutdown(&h).await;
                            self.unpublish(&h.config.name);
                        }
                    }
                    for old in stopped {
                        if let Err(again) = self.start_instance(old.clone()) {
                            error!(instance = %old.name, error = %again, "could not start the previous VRRP instance again");
                        }
                    }
                    return Err(e);
                }
                started.push(inst.name.clone());
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
