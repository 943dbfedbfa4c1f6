//! The daemon: one event loop that keeps the dataplane equal to the config
//! and to what the kernel knows about the real servers, and answers the
//! control socket. Read it top to bottom: `start` (the start-up steps, in
//! order, with their reasons), `events` (what wakes the loop, and
//! [`Daemon::handle`]), `stop`; beside them what the handlers do: `plan`
//! (config + health + MACs -> what the dataplane should hold, a pure
//! function), `edits` (reload, runtime changes, interface changes),
//! `answers` (status, control answers), `announce` (BGP), `flows` (flow
//! sync's rounds), `macs` (real servers' MACs), `hook`.
//!
//! Tasks and channels (the loop owns the [`Daemon`]; `-->` is a channel
//! into it, `<--` one it publishes on):
//!
//! ```text
//!   signals (INT, TERM, HUP) ----------------------------+
//!   control socket task -------- (Request, reply) -------+
//!   metrics HTTP task ---------- (Request, reply) -------+
//!   rtnetlink neighbour / link events -------------------+
//!   one task per distinct probe -- health::Change -------+--> event loop
//!   flow sync receiver task ------ Received -------------+    (Daemon)
//!   flow-table scan (blocking) --- ScanDone -------------+     |  |  |
//!   VRRP thread (one loop per instance) -- States -------+     |  |  |
//!                                                              |  |  |
//!   VRRP thread <-- quorum per service (watch) ----------------+  |  |
//!   VRRP thread <-- preemption held (watch), the dataplane's      |  |
//!                   Served / VmacHook handles --------------------+  |
//!   BIRD task <-- VIPs to announce; the dataplane (maps / IPVS) <----+
//! ```
//!
//! The health board (`health::Board`) is shared memory, not a channel:
//! probes write their verdicts, the loop reads them when it plans.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, DataplaneKind, VirtualServer},
    dataplane::{
        BackendPlan, Dataplane, DataplaneError, ServicePlan, bpffs,
        xdp::{PinPaths, XdpError, XdpOptions},
    },
    health::{self, Board},
    manage::control::{self, ControlError, Pending, Request, Response},
    manage::status::{RealServerStatus, Status, VirtualServerStatus},
    net::neighbor::{Mac, Neighbor, NeighborError, Neighbors},
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
    Metrics(#[from] crate::manage::metrics::MetricsError),
    #[error("{0}")]
    FlowSync(String),
    #[error("BFD: {0}")]
    Bfd(String),
}

mod announce;
mod answers;
mod edits;
mod events;
mod flows;
mod hook;
mod macs;
mod plan;
mod start;
mod stop;

pub use self::start::run;
use self::{
    hook::LateHook,
    macs::MacResolver,
    plan::{plan, server_health},
};

/// The pin directory of the layout before pins moved to the host's bpffs:
/// `<state_dir>/bpf`. Flushed when found.
pub(super) fn legacy_pin_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(LEGACY_PIN_DIR)
}

/// One daemon per state directory (its control socket, its pins): an
/// exclusive lock on `<state_dir>/director.lock`, held for the daemon's
/// life, holding its pid.
pub(super) fn lock_state_dir(
    state_dir: &Path,
) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
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
    resolver: MacResolver,
    board: Board,
    checks: Option<health::Checks>,
    /// What each service's plans remember: quorum, failing open, slow
    /// starts.
    memory: plan::Memory,
    /// When a slow start takes its next step (the plan is due again).
    next_step: Option<std::time::Instant>,
    dataplane: Dataplane,
    applied: Option<Vec<ServicePlan>>,
    vrrp: Option<Vrrp>,
    /// BFD sessions.
    bfd: Option<crate::bfd::Bfd>,
    /// Our interface (its MAC and MTU go to the dataplane).
    link: crate::net::neighbor::LinkInfo,
    /// Our interface and the neighbour table as the loop follows them.
    links: events::Links,
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
    /// The probes of `config`'s real servers, compiled once per load.
    probes: health::Probes,
    /// Where the XDP dataplane is pinned (none for IPVS).
    pins: Option<bpffs::PinDir>,
    /// The last update the dataplane refused, until one succeeds.
    dataplane_error: Option<String>,
    /// Flows imported from peers.
    imported: u64,
    /// Flow sync: its rounds, counters and peering (none without it).
    sync: Option<flows::SyncLoop>,
    /// The control socket's and the metrics server's tasks.
    listeners: Vec<tokio::task::JoinHandle<()>>,
    /// Which virtual servers have quorum, for VRRP.
    quorum_tx: watch::Sender<BTreeMap<crate::config::ServiceAddr, bool>>,
    /// The VRRP instances' states, as they publish them.
    vrrp_states: watch::Receiver<crate::vrrp::instance::States>,
}

/// The next tick of an optional timer (never, without one).
pub(super) async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// When this process's daemon started (Unix seconds).
static STARTED_AT: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

pub(super) fn unix_now() -> f64 {
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
