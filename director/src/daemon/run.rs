//! The daemon's life: start (a restarted master's VRRP first), the event
//! loop, and the stop (for good, or handing over to the next process).

use super::*;

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
    let g = config.global.clone();
    std::fs::create_dir_all(&g.state_dir).map_err(|source| DaemonError::StateDir {
        path: g.state_dir.clone(),
        source,
    })?;
    let _instance = lock_state_dir(&g.state_dir)?;
    STARTED_AT.get_or_init(unix_now);
    // Descriptors: as many as allowed, and a fixed share of them for the
    // listeners others can reach (the rest is the dataplane's control).
    let budget = crate::manage::limits::Budget::of(crate::manage::limits::raise_nofile().soft);
    set_script_identity(&config);
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
    // master-down timers run out (the pinned dataplane forwards meanwhile,
    // and its link is swapped without a gap). Otherwise both start after
    // the dataplane: a master takes the VIP only once its frames are
    // forwarded, and no BFD session sees the gap a first XDP attach makes.
    let start_bfd = || {
        let (handed, age) = handover
            .as_ref()
            .map_or((&[][..], Duration::ZERO), |h| (&h.bfd[..], h.age()));
        crate::bfd::Bfd::start(&config.bfd_instance, handed, age)
            .map_err(|e| DaemonError::Bfd(e.to_string()))
    };
    let vmac_hook = LateHook::default();
    let served = crate::dataplane::Served::default();
    let (quorum_tx, quorum_rx) = watch::channel(BTreeMap::new());
    let (states_tx, vrrp_states) = watch::channel(crate::vrrp::instance::States::new());
    let states_tx = Arc::new(states_tx);
    let mut vrrp_changes = vrrp_states.clone();
    // Flow sync holds back preemption until every peer's flows are in (or
    // `preempt_hold` passed): set before any instance starts.
    let hold_for = g
        .flow_sync
        .as_ref()
        .map_or(Duration::ZERO, |f| Duration::from_secs_f64(f.preempt_hold));
    let (hold_tx, hold_rx) = watch::channel(!hold_for.is_zero());
    let start_vrrp = |bfd: &crate::bfd::Bfd| {
        Vrrp::start_with(
            &config,
            crate::vrrp::instance::Inputs {
                vmac_hook: Some(vmac_hook.hook()),
                bfd: bfd.verdicts(),
                handover: handover.clone(),
                states: Some(states_tx.clone()),
                quorum: Some(quorum_rx.clone()),
                served: Some(served.clone()),
                preempt_hold: Some(hold_rx.clone()),
            },
        )
    };
    let early = match &handover {
        Some(h) if h.instances.iter().any(|i| i.state == "master") || !h.bfd.is_empty() => {
            let bfd = start_bfd()?;
            let vrrp = start_vrrp(&bfd)?;
            Some((bfd, vrrp))
        }
        _ => None,
    };
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
    let dataplane_is_xdp = dataplane.is_xdp();
    let (control_tx, mut control_rx) = mpsc::channel::<Pending>(64);
    let metrics = match g.metrics_address {
        Some(addr) => Some(crate::manage::metrics::serve(addr, control_tx.clone(), budget).await?),
        None => None,
    };
    let control = control::serve(
        &g.state_dir,
        g.control_group.as_deref(),
        control_tx,
        budget.control,
    )?;
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
    // The config's probes, compiled once: the checks run them, the plan
    // and the status read their verdicts.
    let probes = health::Probes::of(&config);
    checks.update(&probes.distinct());
    let board = checks.board();
    vmac_hook.set(dataplane.vmac_hook());
    dataplane.publish_served(served.clone());
    let (bfd, vrrp) = match early {
        Some(both) => both,
        None => {
            let bfd = start_bfd()?;
            let vrrp = start_vrrp(&bfd)?;
            (bfd, vrrp)
        }
    };
    // Flow-table sharing with peer directors.
    let (flow_sync, mut sync_rx, mut sync_tick) = match &g.flow_sync {
        Some(fs) if dataplane.is_xdp() => {
            let (sync, rx) = crate::dataplane::flowsync::FlowSync::start(
                fs.listen,
                fs.peers.clone(),
                fs.key.clone(),
            )
            .await
            .map_err(|e| DaemonError::FlowSync(e.to_string()))?;
            info!(listen = %fs.listen, peers = fs.peers.len(), "flow sync on");
            // The shared key authenticates flows: others must not read it.
            {
                use std::os::unix::fs::PermissionsExt as _;
                if let Ok(meta) = std::fs::metadata(&config_path)
                    && meta.permissions().mode() & 0o004 != 0
                {
                    warn!(
                        file = %config_path.display(),
                        mode = format!("{:o}", meta.permissions().mode() & 0o777),
                        "the config holds flow_sync.key and anyone may read it: chmod 640 it (as the package installs it)"
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
    if flow_sync.is_none() {
        hold_tx.send_replace(false);
    }
    let sync_started = std::time::Instant::now();

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
    let mut resolver = MacResolver::new(&config);
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
        probes,
        pins: if dataplane_is_xdp { pins } else { None },
        dataplane_error: None,
        sync_stats: flow_sync
            .as_ref()
            .map(|s: &crate::dataplane::flowsync::FlowSync| {
                (
                    g.flow_sync.as_ref().map_or(0, |f| f.peers.len()),
                    s.stats.clone(),
                    s.peering.clone(),
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
    // Flows taken from peers: one log line per 10 s at most (a reload on
    // the peer sends a burst of datagrams).
    let (mut imported_unlogged, mut import_logged) = (0u64, None::<std::time::Instant>);
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
                if *hold_tx.borrow()
                    && sync_started.elapsed() >= hold_for
                    && let Some(s) = &flow_sync
                {
                    warn!(
                        peers = ?s.peering.awaited(),
                        waited_s = hold_for.as_secs_f64(),
                        "flow sync: these peers sent not all their flows in time: preemption no longer held (flows placed while this director was away may move)"
                    );
                    s.peering.give_up();
                    hold_tx.send_replace(false);
                }
                // The flow table is read on a blocking thread: a full walk
                // after the tables changed or while a real server is out of
                // a pool (its new flows are exceptions), else the exceptions
                // known are looked up again.
                if flow_sync.is_some()
                    && scan_task.is_none()
                    && let Some(scan) = daemon.dataplane.exception_scan()
                {
                    let full = Some(scan.version()) != scanned || scan.degraded();
                    let known = exceptions.clone();
                    let sender = flow_sync.as_ref().map(|s| s.sender.clone());
                    scan_task = Some(tokio::task::spawn_blocking(move || {
                        let flows = if full { scan.full(1 << 16) } else { scan.again(&known) };
                        if let Some(Ok(mut sender)) = sender.as_ref().map(|s| s.lock()) {
                            sender.send(&flows);
                        }
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
                    exceptions = flows;
                }
            }
            Some(received) = async { match sync_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                let flows = match received {
                    crate::dataplane::flowsync::Received::Flows(flows) => flows,
                    crate::dataplane::flowsync::Received::Everything(peer) => {
                        let all_in = flow_sync.as_ref().is_none_or(|s| s.peering.answered(peer));
                        info!(%peer, "flow sync: the peer's flows are all in");
                        if all_in && *hold_tx.borrow() {
                            info!(waited_ms = sync_started.elapsed().as_millis() as u64, "flow sync: every peer's flows are in: preemption no longer held");
                            hold_tx.send_replace(false);
                        }
                        continue;
                    }
                };
                let added = daemon.dataplane.import_flows(&flows);
                daemon.imported += added as u64;
                imported_unlogged += added as u64;
                if imported_unlogged > 0
                    && import_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    info!(flows = imported_unlogged, "flows taken from a peer director (since the last such line)");
                    imported_unlogged = 0;
                    import_logged = Some(std::time::Instant::now());
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
    // A director that stops for good sends its peers every exception once
    // more before its instances hand over (priority 0): a datagram lost
    // since the flow became an exception is not waited for until the next
    // full round. (A restart keeps the pinned flow table: nothing moves.)
    if !handing_over
        && let Some(s) = &flow_sync
        && let Some(scan) = daemon.dataplane.exception_scan()
    {
        if let Some(task) = scan_task.take() {
            let _ = task.await;
        }
        let sender = s.sender.clone();
        let last = tokio::task::spawn_blocking(move || {
            let flows = scan.full(1 << 16);
            if let Ok(mut sender) = sender.lock() {
                sender.send_everything(&flows);
            }
            flows.len()
        });
        match tokio::time::timeout(Duration::from_secs(2), last).await {
            Ok(Ok(n)) => info!(
                flows = n,
                "flow sync: every exception sent to the peers before stopping"
            ),
            _ => warn!("flow sync: the last round before stopping did not finish in 2 s"),
        }
    }
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
    // For a restart, the next process is handed what we hold: BFD
    // sessions first (their peers are told to wait longer), then VRRP
    // (one last ordinary advert). Otherwise masters hand over (priority
    // 0) and BFD peers learn we went administratively down.
    if handing_over {
        let bfd = match daemon.bfd.take() {
            Some(bfd) => bfd.hand_over().await,
            None => Vec::new(),
        };
        let instances = match daemon.vrrp.take() {
            Some(vrrp) => vrrp.hand_over().await,
            None => Vec::new(),
        };
        let h = crate::handover::Handover::new(instances, bfd);
        if let Err(e) = crate::handover::write(&daemon.config.global.state_dir, &h) {
            error!(error = %e, "cannot write the handover file: the next process starts afresh");
        }
    } else {
        if let Some(vrrp) = daemon.vrrp.take() {
            vrrp.stop().await;
        }
        if let Some(bfd) = daemon.bfd.take() {
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
