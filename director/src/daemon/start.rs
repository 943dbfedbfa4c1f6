//! Start-up, in order. Each step says why it comes where it does:
//!
//! 1. [`claim`]: the state directory is ours alone (a lock), descriptors
//!    raised, scripts' identity set, a predecessor's handover read - before
//!    anything slow, because a handed-over master must advertise soon.
//! 2. signals, then our interface (its index and MAC).
//! 3. [`Protocols::early`]: BFD and VRRP first when a predecessor handed a
//!    master (or BFD sessions) over: their first packets must leave before
//!    the backups' timers run out (the pinned dataplane forwards
//!    meanwhile).
//! 4. [`open_dataplane`]: the host's bpffs, the XDP program (adopting a
//!    pinned one), or IPVS.
//! 5. the listeners others reach (metrics, the control socket), each
//!    within its descriptor budget.
//! 6. health checks, compiled once from the config.
//! 7. BFD and VRRP, when not started early: after the dataplane, so that a
//!    master takes the VIP only once its frames are forwarded, and no BFD
//!    session sees the gap of a first XDP attach.
//! 8. [`start_flow_sync`] (it holds back preemption until the peers' flows
//!    are in), [`start_bird`].
//! 9. the [`Daemon`] that owns it all, and its [`Inputs`].

use super::{
    events::{Inputs, Links},
    flows::SyncLoop,
    *,
};

/// Scripts from now on run as the config's `script_user` (validated when
/// it loaded); one line says whom, and warns when they run as root
/// unchecked.
pub(super) fn set_script_identity(config: &Config) {
    let identity = config.script_identity().ok().flatten();
    let scripts = config.has_scripts();
    match &identity {
        Some(i) if !i.is_root() => {
            info!(user = %i.user, uid = i.uid, gid = i.gid, "scripts run as the script user");
        }
        _ if scripts && !config.global.enable_script_security => {
            warn!(
                "scripts run as root and enable_script_security is off: set global.script_user, or global.enable_script_security to refuse scripts other users can change"
            );
        }
        _ => {}
    }
    crate::scripts::set_identity(identity);
}

/// Runs the daemon until SIGINT or SIGTERM. On exit the pinned dataplane
/// keeps forwarding; the next `director run` adopts it.
pub async fn run(config: Config, config_path: PathBuf) -> Result<Stopped, DaemonError> {
    let claim = claim(&config)?;
    let (mut daemon, mut inputs) = start(config, config_path, &claim).await?;
    let stopped = daemon.serve(&mut inputs).await;
    let stopped = daemon.stop(stopped).await;
    drop(claim);
    Ok(stopped)
}

/// Step 1: what must hold before anything else runs.
pub(super) struct Claim {
    /// `<state_dir>/director.lock`, held for the daemon's life.
    _lock: nix::fcntl::Flock<std::fs::File>,
    budget: crate::manage::limits::Budget,
    /// A restarting predecessor's instances and sessions.
    handover: Option<Arc<crate::handover::Handover>>,
}

fn claim(config: &Config) -> Result<Claim, DaemonError> {
    let g = &config.global;
    std::fs::create_dir_all(&g.state_dir).map_err(|source| DaemonError::StateDir {
        path: g.state_dir.clone(),
        source,
    })?;
    let lock = lock_state_dir(&g.state_dir)?;
    STARTED_AT.get_or_init(unix_now);
    // Descriptors: as many as allowed, and a fixed share of them for the
    // listeners others can reach (the rest is the dataplane's control).
    let budget = crate::manage::limits::Budget::of(crate::manage::limits::raise_nofile().soft);
    set_script_identity(config);
    // A restarting predecessor's instances: resumed before anything slow.
    let handover = crate::handover::take(&g.state_dir).map(Arc::new);
    Ok(Claim {
        _lock: lock,
        budget,
        handover,
    })
}

/// What BFD and VRRP are started with, whenever they start (steps 3 or 7).
struct Protocols {
    handover: Option<Arc<crate::handover::Handover>>,
    vmac_hook: LateHook,
    served: crate::vrrp::Served,
    quorum: watch::Receiver<BTreeMap<crate::config::ServiceAddr, bool>>,
    states: Arc<watch::Sender<crate::vrrp::instance::States>>,
    preempt_hold: watch::Receiver<bool>,
}

impl Protocols {
    fn start(&self, config: &Config) -> Result<(crate::bfd::Bfd, Vrrp), DaemonError> {
        let (handed, age) = self
            .handover
            .as_ref()
            .map_or((&[][..], Duration::ZERO), |h| (&h.bfd[..], h.age()));
        let bfd = crate::bfd::Bfd::start(&config.bfd_instance, handed, age)
            .map_err(|e| DaemonError::Bfd(e.to_string()))?;
        let vrrp = Vrrp::start_with(
            config,
            crate::vrrp::instance::Inputs {
                vmac_hook: Some(self.vmac_hook.hook()),
                bfd: bfd.verdicts(),
                handover: self.handover.clone(),
                states: Some(self.states.clone()),
                quorum: Some(self.quorum.clone()),
                served: Some(self.served.clone()),
                preempt_hold: Some(self.preempt_hold.clone()),
            },
        )?;
        Ok((bfd, vrrp))
    }

    /// Step 3: started now when a predecessor handed over a master or a
    /// BFD session.
    fn early(&self, config: &Config) -> Result<Option<(crate::bfd::Bfd, Vrrp)>, DaemonError> {
        match &self.handover {
            Some(h) if h.instances.iter().any(|i| i.state == "master") || !h.bfd.is_empty() => {
                self.start(config).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// Steps 2 to 9.
async fn start(
    config: Config,
    config_path: PathBuf,
    claim: &Claim,
) -> Result<(Daemon, Inputs), DaemonError> {
    let g = config.global.clone();
    let sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let neighbors = Neighbors::open(&g.interface).await?;
    let link = neighbors.link();
    info!(
        router_id = %g.router_id,
        interface = %g.interface,
        mac = %link.mac,
        virtual_servers = config.virtual_server.len(),
        "director starting"
    );

    let (quorum_tx, quorum_rx) = watch::channel(BTreeMap::new());
    let (states_tx, vrrp_states) = watch::channel(crate::vrrp::instance::States::new());
    // Flow sync holds back preemption until every peer's flows are in (or
    // `preempt_hold` passed): set before any instance starts.
    let hold_for = g
        .flow_sync
        .as_ref()
        .map_or(Duration::ZERO, |f| Duration::from_secs_f64(f.preempt_hold));
    let (hold_tx, hold_rx) = watch::channel(!hold_for.is_zero());
    let protocols = Protocols {
        handover: claim.handover.clone(),
        vmac_hook: LateHook::default(),
        served: crate::vrrp::Served::default(),
        quorum: quorum_rx,
        states: Arc::new(states_tx),
        preempt_hold: hold_rx,
    };
    let early = protocols.early(&config)?;

    let (mut dataplane, pins) = open_dataplane(&g)?;

    let (control_tx, control_rx) = mpsc::channel::<Pending>(64);
    let mut listeners = Vec::new();
    if let Some(addr) = g.metrics_address {
        listeners
            .push(crate::manage::metrics::serve(addr, control_tx.clone(), claim.budget).await?);
    }
    listeners.push(control::serve(
        &g.state_dir,
        g.control_group.as_deref(),
        control_tx,
        claim.budget.control,
    )?);

    let neighbour_events = Box::pin(neighbors.events()?);
    let link_events = Box::pin(neighbors.link_events()?);
    let shared_link = Arc::new(Mutex::new(link));
    let (health_tx, health_rx) = mpsc::channel::<health::Change>(1024);
    let mut checks = health::Checks::new(health_tx);
    let macs = Arc::new(Mutex::new(HashMap::new()));
    checks.set_path_env(health::PathEnv {
        link: shared_link.clone(),
        macs: macs.clone(),
    });
    // The config's probes, compiled once: the checks run them, the plan
    // and the status read their verdicts.
    let probes = health::Probes::of(&config);
    checks.update(&probes.distinct());
    let board = checks.board();

    protocols.vmac_hook.set(dataplane.vmac_hook());
    dataplane.publish_served(protocols.served.clone());
    let (bfd, vrrp) = match early {
        Some(both) => both,
        None => protocols.start(&config)?,
    };

    // The flow-table scans report to the loop on this channel.
    let (scans_tx, scans) = mpsc::unbounded_channel();
    let (sync, from_peers, sync_tick) =
        match start_flow_sync(&g, &config_path, dataplane.is_xdp()).await? {
            Some((sync, rx, tick)) => (
                Some(SyncLoop::new(sync, hold_tx, hold_for, scans_tx)),
                Some(rx),
                Some(tick),
            ),
            None => {
                hold_tx.send_replace(false);
                (None, None, None)
            }
        };
    let bird = start_bird(&g);
    let bgp_tick = bird
        .as_ref()
        .map(|_| tokio::time::interval(Duration::from_millis(250)));

    let mut resolver = MacResolver::new(&config);
    resolver.seed(dataplane.known_macs());
    let inputs = Inputs {
        sigint,
        sigterm,
        sighup,
        control: control_rx,
        neighbours: neighbour_events,
        links: link_events,
        vrrp: vrrp_states.clone(),
        health: health_rx,
        bgp_tick,
        sync_tick,
        from_peers,
        scans,
    };
    let daemon = Daemon {
        resolver,
        board,
        checks: Some(checks),
        config_path,
        memory: BTreeMap::new(),
        next_step: None,
        dataplane,
        applied: None,
        vrrp: Some(vrrp),
        bfd: Some(bfd),
        link,
        links: Links::new(neighbors, shared_link),
        drained: BTreeMap::new(),
        macs,
        bird,
        eligible: BTreeMap::new(),
        draining: false,
        probes,
        pins,
        dataplane_error: None,
        sync,
        imported: 0,
        quorum_tx,
        vrrp_states,
        listeners,
        config,
    };
    Ok((daemon, inputs))
}

/// Step 4: the dataplane, and where it is pinned (XDP only).
fn open_dataplane(
    g: &crate::config::Global,
) -> Result<(Dataplane, Option<bpffs::PinDir>), DaemonError> {
    // `auto` without a bpffs (no right to mount one): XDP cannot run, and
    // IPVS is the fallback as for any other reason.
    let (prepared, no_bpffs) = match g.dataplane {
        DataplaneKind::Ipvs => (None, None),
        DataplaneKind::Xdp => (Some(bpffs::prepare_for_run(&g.pin_dir())?), None),
        DataplaneKind::Auto => match bpffs::prepare_for_run(&g.pin_dir()) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
    };
    let pins = match prepared {
        None => None,
        Some(pins) => {
            bpffs::report(&pins);
            let legacy = legacy_pin_dir(&g.state_dir);
            if bpffs::on_bpffs(&legacy) && legacy.join("link").exists() {
                warn!(path = %legacy.display(), "removing the dataplane pinned by an earlier version (one gap in forwarding)");
                crate::dataplane::xdp::flush(&legacy, &g.state_dir)?;
            }
            Some(pins)
        }
    };
    let mut dataplane = match no_bpffs {
        Some(e) => Dataplane::fall_back(e.into(), &g.state_dir)?,
        None => Dataplane::open(
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
        )?,
    };
    info!(dataplane = dataplane.name(), xdp_mode = ?dataplane.xdp_mode(), "dataplane ready");
    if dataplane.is_xdp() {
        info!(
            flows = g.flow_table_size,
            memory_mib = crate::dataplane::xdp::flow_table_bytes(g.flow_table_size) / (1 << 20),
            "flow table"
        );
    }
    dataplane.set_new_flow_limit(g.new_flow_limit);
    let pins = if dataplane.is_xdp() { pins } else { None };
    Ok((dataplane, pins))
}

/// Step 8: flow-table sharing with peer directors (XDP only), its receiver
/// and its round timer.
async fn start_flow_sync(
    g: &crate::config::Global,
    config_path: &Path,
    xdp: bool,
) -> Result<
    Option<(
        crate::dataplane::flowsync::FlowSync,
        mpsc::Receiver<crate::dataplane::flowsync::Received>,
        tokio::time::Interval,
    )>,
    DaemonError,
> {
    let Some(fs) = &g.flow_sync else {
        return Ok(None);
    };
    if !xdp {
        warn!("flow_sync needs the XDP dataplane: off (IPVS has its own sync daemon)");
        return Ok(None);
    }
    let (sync, rx) =
        crate::dataplane::flowsync::FlowSync::start(fs.listen, fs.peers.clone(), fs.key.clone())
            .await
            .map_err(|e| DaemonError::FlowSync(e.to_string()))?;
    info!(listen = %fs.listen, peers = fs.peers.len(), "flow sync on");
    // The shared key authenticates flows: others must not read it.
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(config_path)
            && meta.permissions().mode() & 0o004 != 0
        {
            warn!(
                file = %config_path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the config holds flow_sync.key and anyone may read it: chmod 640 it (as the package installs it)"
            );
        }
    }
    let tick = tokio::time::interval(Duration::from_secs_f64(fs.interval));
    Ok(Some((sync, rx, tick)))
}

/// Step 8: BGP announcements through BIRD.
fn start_bird(g: &crate::config::Global) -> Option<crate::bgp::BirdTask> {
    match &g.bgp {
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
    }
}
