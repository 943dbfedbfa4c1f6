//! The VRRP thread: real-time priority, the runtime that starts each
//! instance's runner, sync groups and heartbeat paths.

use super::*;

pub(super) async fn run_all(
    tracks: TrackConfig,
    groups: Vec<VrrpSyncGroup>,
    quorum: QuorumBoard,
    states: Arc<watch::Sender<States>>,
    inputs: Inputs,
    mut starts: mpsc::UnboundedReceiver<StartCmd>,
) {
    trackers::init_files(&tracks.files);
    let trackers = Trackers {
        scripts: start_scripts(&tracks.scripts),
        processes: trackers::start_processes(&tracks.processes),
        files: trackers::start_files(&tracks.files),
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
        served: inputs.served,
        preempt_hold: inputs.preempt_hold,
    };
    type GroupShared = (
        VrrpSyncGroup,
        broadcast::Sender<(String, State)>,
        Arc<Mutex<BTreeMap<String, u8>>>,
        Arc<Mutex<Option<State>>>,
    );
    let groups: Vec<GroupShared> = groups
        .into_iter()
        .map(|g| (g, broadcast::channel(64).0, Arc::default(), Arc::default()))
        .collect();
    let mut tasks = Vec::new();
    while let Some(cmd) = starts.recv().await {
        let group = groups
            .iter()
            .find(|(g, ..)| g.group.contains(&cmd.inst.name))
            .map(|(g, tx, priorities, notified)| SyncGroup {
                config: g.clone(),
                rx: tx.subscribe(),
                tx: tx.clone(),
                priorities: priorities.clone(),
                notified: notified.clone(),
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
    // Their last notifications (notify_stop) run before the thread's
    // runtime, and the notifier with it, goes.
    shared
        .notifier
        .settle(crate::scripts::notify::SCRIPT_TIMEOUT)
        .await;
}

/// This instance's `vrrp_sync_group`, if any. Members advertise the
/// lowest effective priority of the group (a tracked check failing on one
/// member lowers them all, so peers take them over together), and Fault
/// spreads to every member.
pub(super) struct SyncGroup {
    pub(super) config: VrrpSyncGroup,
    pub(super) tx: broadcast::Sender<(String, State)>,
    pub(super) rx: broadcast::Receiver<(String, State)>,
    pub(super) priorities: Arc<Mutex<BTreeMap<String, u8>>>,
    /// The state the group's notify scripts last ran for: the member that
    /// moves first runs them, the members that follow into the same state
    /// do not run them again.
    pub(super) notified: Arc<Mutex<Option<State>>>,
}

/// At most one split-brain notification per instance this often.
pub(super) const SPLIT_NOTE_EVERY: Duration = Duration::from_secs(10);

/// How long the own interface must be back up before an instance leaves
/// Fault (a switch port forwards only after its own link handling).
pub(super) const PRIMARY_SETTLE: Duration = Duration::from_secs(1);

/// Opens the instance's socket. An IPv6 source address still in duplicate
/// address detection (an interface just brought up: its link-local address
/// is tentative for about a second) cannot be bound yet: wait for it, up to
/// DAD_WAIT, as a daemon started at boot must.
pub(super) async fn open_when_usable(
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
pub(super) async fn bfd_changed(rx: &mut Option<watch::Receiver<Option<bool>>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
