//! One instance's runner: its sockets, state machine and event loop.

use super::*;

/// One instance's runner, in holo's shape: its config, its state machine,
/// and its fields grouped by what they are for.
pub(super) struct Runner {
    pub(super) cfg: VrrpInstance,
    /// The parsed parts of `cfg`.
    pub(super) parsed: Parsed,
    pub(super) machine: Machine,
    /// What the runner remembers beside the state machine.
    pub(super) state: RunState,
    /// Where the instance meets the network: its interface, sockets and netlink.
    pub(super) net: Box<dyn Host>,
    /// What it reads: tracked verdicts, quorum, BFD, the daemon's holds.
    pub(super) inputs: Watched,
    /// Where it reports: status, published states, notifications, the dataplane's virtual-MAC hook.
    pub(super) outputs: Reports,
}

/// What the config says, parsed once (not per packet).
pub(super) struct Parsed {
    /// The parsed `virtual_ipaddress` list (parsed once, not per packet).
    pub(super) vips: Vec<crate::config::VirtualAddress>,
    /// Their addresses, sorted: what a valid advert must carry.
    pub(super) vip_set: Vec<IpAddr>,
    /// `virtual_routes` and `virtual_rules`, parsed (held while master).
    pub(super) routes: Vec<routes::VirtualRoute>,
    pub(super) rules: Vec<routes::VirtualRule>,
    /// Each heartbeat path's unicast peers (none: multicast), in the
    /// host's path order.
    pub(super) path_peers: Vec<Vec<IpAddr>>,
}

/// What the runner remembers beside the state machine.
pub(super) struct RunState {
    /// Performing a `Follow`: transitions are not re-broadcast as our own.
    pub(super) following: bool,
    /// Whether the own interface is up and running (tracked unless
    /// `dont_track_primary`), and since when it is (`None`: down).
    pub(super) primary_up: bool,
    pub(super) primary_up_since: Option<std::time::Instant>,
    /// When a split brain was last notified and logged (each at most once
    /// per SPLIT_NOTE_EVERY).
    pub(super) split_noted: Option<std::time::Instant>,
    pub(super) split_logged: Option<std::time::Instant>,
    /// The delayed second burst after becoming master (`garp_master_delay`).
    pub(super) garp_at: Option<Instant>,
    /// The next refresh while master (`garp_master_refresh`): counted from
    /// becoming master, whatever the delay (keepalived's refresh timer
    /// too).
    pub(super) refresh_at: Option<Instant>,
    /// When the last valid advert from another router arrived.
    pub(super) last_advert: Option<std::time::Instant>,
    /// When each drop reason was last logged (one line per reason per
    /// DROP_LOG_EVERY, however many packets a flood brings).
    pub(super) drop_logged: BTreeMap<Reject, std::time::Instant>,
    /// Taking over from the previous process: the first transition is
    /// the state it had, not a change (no notification).
    pub(super) resumed: bool,
    pub(super) group: Option<SyncGroup>,
    /// (fault, effective priority) as last fed to the state machine.
    pub(super) tracked: (bool, u8),
}

/// What it reads: tracked verdicts, quorum, BFD, the daemon's holds.
pub(super) struct Watched {
    /// `track_gateway` verdicts (`None` until the first).
    pub(super) gateways: Vec<watch::Receiver<Option<bool>>>,
    /// This instance's tracked scripts and processes with its weights.
    pub(super) checks: Vec<(i32, watch::Receiver<Option<bool>>)>,
    /// This instance's tracked files with its weights.
    pub(super) files: Vec<(i32, watch::Receiver<i64>)>,
    /// Every tracked item's verdict, for a reload that changes what the
    /// instance tracks.
    pub(super) trackers: Trackers,
    pub(super) quorum: QuorumBoard,
    /// `master_bfd`: the BFD session to the master.
    pub(super) master_bfd: Option<watch::Receiver<Option<bool>>>,
    /// Preemption held back by the daemon (see [`Inputs::preempt_hold`]).
    pub(super) preempt_hold: Option<watch::Receiver<bool>>,
    /// What the XDP dataplane serves without the address (see
    /// [`crate::vrrp::Served`]).
    pub(super) served: Option<crate::vrrp::Served>,
}

/// Where it reports: status, published states, notifications, the dataplane's virtual-MAC hook.
pub(super) struct Reports {
    pub(super) status: Arc<Mutex<InstanceStatus>>,
    /// Where this instance's state is published.
    pub(super) states: Arc<watch::Sender<States>>,
    pub(super) notifier: Notifier,
    pub(super) vmac_hook: Option<VmacHook>,
}

/// What every instance of the VRRP thread shares.
pub(super) struct Shared {
    pub(super) trackers: Trackers,
    pub(super) notifier: Notifier,
    pub(super) quorum: QuorumBoard,
    pub(super) states: Arc<watch::Sender<States>>,
    pub(super) vmac_hook: Option<VmacHook>,
    pub(super) served: Option<crate::vrrp::Served>,
    pub(super) preempt_hold: Option<watch::Receiver<bool>>,
}

impl Runner {
    pub(super) async fn open(
        cfg: VrrpInstance,
        iface: String,
        status: Arc<Mutex<InstanceStatus>>,
        shared: &Shared,
        group: Option<SyncGroup>,
        resume: Option<String>,
    ) -> Result<Runner, VrrpError> {
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
                    crate::net::neighbor::Mac(cfg.vmac()),
                    v6,
                )
                .await
                .map_err(|source| VrrpError::Net {
                    name: name.clone(),
                    source,
                })?;
                info!(instance = %name, interface = %vname, vmac = %crate::net::neighbor::Mac(cfg.vmac()), "virtual MAC interface ready");
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
        if on_vmac && cfg.unicast_peer.is_empty() {
            let changed = net::quiet_link_local_igmp().map_err(|source| VrrpError::Net {
                name: name.clone(),
                source,
            })?;
            if changed {
                info!(
                    instance = %name,
                    sysctl = "net.ipv4.igmp_link_local_mcast_reports",
                    value = 0,
                    "IGMP reports for 224.0.0.x turned off: a backup's report for the VRRP group would carry the virtual MAC"
                );
            }
        }
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
                _link: hb_link,
            });
        }
        let announcer = match &vmac {
            Some((vname, index)) => {
                net::Announcer::open(vname, *index, crate::net::neighbor::Mac(cfg.vmac()), v6)
            }
            None => net::Announcer::open(&iface, link.index, link.mac, v6),
        }
        .map_err(|source| VrrpError::Net {
            name: name.clone(),
            source,
        })?;
        info!(
            instance = %cfg.name,
            vrid = cfg.virtual_router_id,
            interface = %iface,
            source = %src,
            version = cfg.version.number(),
            mode = if cfg.unicast_peer.is_empty() { "multicast" } else { "unicast" },
            "VRRP instance starting"
        );
        let host = Net {
            iface,
            ifindex: link.index,
            handle,
            links,
            socket,
            announcer,
            vmac,
            vmac_follows_state: v6,
            paths,
        };
        Ok(Runner::on(
            cfg,
            Box::new(host),
            status,
            shared,
            group,
            resume,
        ))
    }

    /// An instance on `host`, its adverts from `host.source()`.
    pub(super) fn on(
        cfg: VrrpInstance,
        host: Box<dyn Host>,
        status: Arc<Mutex<InstanceStatus>>,
        shared: &Shared,
        group: Option<SyncGroup>,
        resume: Option<String>,
    ) -> Runner {
        let src = host.source();
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
        let (checks, files) = shared.trackers.resolve(&cfg);
        let (vroutes, vrules) = parse_routes(&cfg);
        let gateways = cfg
            .track_gateway
            .iter()
            .map(|g| start_gateway(&cfg.name, g.clone()))
            .collect();
        let vips = cfg.addresses();
        let mut vip_set: Vec<IpAddr> = vips.iter().map(|a| a.address).collect();
        vip_set.sort();
        Runner {
            parsed: Parsed {
                vips,
                vip_set,
                routes: vroutes,
                rules: vrules,
                path_peers: cfg
                    .heartbeat
                    .iter()
                    .map(|h| h.unicast_peer.clone())
                    .collect(),
            },
            state: RunState {
                following: false,
                primary_up: true,
                primary_up_since: std::time::Instant::now().checked_sub(PRIMARY_SETTLE),
                split_noted: None,
                split_logged: None,
                garp_at: None,
                refresh_at: None,
                last_advert: None,
                drop_logged: BTreeMap::new(),
                resumed: resume.is_some(),
                group,
                tracked: (false, cfg.priority),
            },
            net: host,
            inputs: Watched {
                gateways,
                checks,
                files,
                trackers: shared.trackers.clone(),
                quorum: shared.quorum.clone(),
                master_bfd: cfg
                    .master_bfd
                    .as_ref()
                    .and_then(|n| shared.trackers.bfd.get(n))
                    .map(|(_, rx)| rx.clone()),
                preempt_hold: shared.preempt_hold.clone(),
                served: shared.served.clone(),
            },
            outputs: Reports {
                status,
                states: shared.states.clone(),
                notifier: shared.notifier.clone(),
                vmac_hook: shared.vmac_hook.clone(),
            },
            machine,
            cfg,
        }
    }

    /// Tells the dataplane whether our virtual MAC is ours now.
    /// An IPv6 virtual-MAC interface is up only while master (see
    /// [`net::create_vmac`]).
    pub(super) async fn vmac_link(&self, up: bool) {
        if let Err(e) = self.net.vmac_link(up).await {
            warn!(instance = %self.cfg.name, up, error = %e, "cannot set the virtual MAC interface's state");
        }
    }

    pub(super) fn own_vmac(&self, ours: bool) {
        if self.cfg.vmac_name().is_some()
            && let Some(hook) = &self.outputs.vmac_hook
        {
            hook(self.cfg.vmac(), ours);
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.start().await;
        let mut tracking = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        let mut master_bfd = self.inputs.master_bfd.clone();
        let mut quorum = self.inputs.quorum.clone();
        // The protocol's deadlines on a timerfd: tokio's wheel would wake
        // up to a millisecond late.
        let timer = match crate::vrrp::timer::PreciseTimer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(instance = %self.cfg.name, error = %e, "no timerfd: VRRP timers wake up to a millisecond late");
                None
            }
        };
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let deadline = self
                .machine
                .deadline()
                .map(Instant::from_std)
                .unwrap_or(far);
            // A backup wakes TAKEOVER_SPIN before its master-down deadline
            // and waits the rest out on the CPU: a takeover does not pay the
            // scheduler's wake-up latency (tens to hundreds of microseconds
            // on a VM). Only when the master has fallen silent for three
            // intervals; never in the steady state.
            let early = self.machine.state() == State::Backup;
            let wake = if early {
                deadline.checked_sub(TAKEOVER_SPIN).unwrap_or(deadline)
            } else {
                deadline
            };
            let garp = match (self.state.garp_at, self.state.refresh_at) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(far),
            };
            let peer = async {
                match self.state.group.as_mut() {
                    Some(g) => g.rx.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            // Biased, and the protocol's timer before the sockets: a flood
            // of packets (junk or valid) never keeps an advert from leaving
            // on time or a deadline from being handled.
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Update(new)) => self.update(*new).await,
                    Some(Command::HandOver(done)) => {
                        let _ = done.send(self.hand_over());
                        return;
                    }
                    Some(Command::Shutdown(done)) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.stop().await;
                        return;
                    }
                },
                _ = precise_sleep_until(timer.as_ref(), wake) => {
                    if early {
                        self.wait_out(deadline.into_std()).await;
                    }
                    // Adverts that arrived while we were busy count first:
                    // a loaded machine must not declare a live master dead.
                    // Bounded (a flood keeps the socket full): the timer is
                    // handled after at most DRAIN_BUDGET packets or time.
                    self.drain_before_timer().await;
                    self.on_timer(std::time::Instant::now()).await;
                }
                (path, r) = self.net.recv() => match r {
                    Ok(p) => self.received(path, p).await,
                    Err(e) => {
                        warn!(instance = %self.cfg.name, heartbeat_path = ?path, error = %e, "VRRP receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = sleep_until(garp) => self.garp_burst(),
                _ = bfd_changed(&mut master_bfd) => {
                    let down = master_bfd.as_ref().is_some_and(|rx| *rx.borrow() == Some(false));
                    self.on_master_bfd(down, std::time::Instant::now()).await;
                }
                Some((member, state)) = peer => {
                    self.on_group(&member, state, std::time::Instant::now()).await;
                }
                _ = tracking.tick() => {
                    ticks += 1;
                    self.on_tick(ticks, std::time::Instant::now()).await;
                }
                Ok(()) = quorum.changed() => {
                    // A tracked virtual server's quorum: at once, not at
                    // the next tick.
                    self.retrack(std::time::Instant::now()).await;
                }
            }
        }
    }
}

/// What the runner does with each input, the run loop's arms one by one
/// (the replay tests call them in its place, with the time they choose).
impl Runner {
    /// The first step: not master, addresses left by a daemon that died
    /// go.
    pub(super) async fn start(&mut self) {
        let actions = self.machine.step(Event::Startup, std::time::Instant::now());
        if !actions.contains(&Action::AddAddresses) {
            self.perform(vec![Action::RemoveAddresses]).await;
        }
        self.perform(actions).await;
        self.state.resumed = false;
    }

    /// The instance stops for good: what it holds goes, the virtual-MAC
    /// interface with it, and notify_stop runs.
    pub(super) async fn stop(&mut self) {
        let actions = self
            .machine
            .step(Event::Shutdown, std::time::Instant::now());
        self.perform(actions).await;
        if let Err(e) = self.net.remove_vmac().await {
            warn!(instance = %self.cfg.name, error = %e, "cannot remove the virtual MAC interface");
        }
        self.notify("STOP");
    }

    /// The protocol's timer fired at `now` (adverts queued before it were
    /// read first).
    pub(super) async fn on_timer(&mut self, now: std::time::Instant) {
        if self.machine.state() == State::Backup
            && let Some(due) = self.machine.deadline()
            && due <= now
        {
            // Woken far later than due: we were starved, and so may the
            // master have been. The silence we measured is not evidence;
            // wait one more interval.
            let late = now.saturating_duration_since(due);
            if late > self.machine.master_adver_interval() {
                warn!(
                    instance = %self.cfg.name,
                    late_ms = late.as_secs_f64() * 1000.0,
                    "VRRP timer fired late: this machine is overloaded; giving the master one more interval"
                );
                let a = self.machine.step(Event::Starved, now);
                self.perform(a).await;
                return;
            }
        }
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

    /// `master_bfd` changed: a backup whose session to the master went
    /// down takes over without waiting for the master-down interval.
    pub(super) async fn on_master_bfd(&mut self, down: bool, now: std::time::Instant) {
        if down && self.machine.state() == State::Backup {
            info!(
                instance = %self.cfg.name,
                session = ?self.cfg.master_bfd,
                "BFD session to the master is down: taking over without waiting for the master-down interval"
            );
            let a = self.machine.step(Event::MasterDown, now);
            self.perform(a).await;
        }
    }

    /// Another member of the sync group moved to `state`: follow it.
    pub(super) async fn on_group(&mut self, member: &str, state: State, now: std::time::Instant) {
        if member != self.cfg.name && state != self.machine.state() {
            let a = self.machine.step(Event::Follow(state), now);
            self.state.following = true;
            self.perform(a).await;
            self.state.following = false;
        }
    }

    /// The tracking tick (every 100 ms, `ticks` so far): the interface
    /// followed, tracking re-evaluated.
    pub(super) async fn on_tick(&mut self, ticks: u64, now: std::time::Instant) {
        self.follow_interface(now).await;
        // Every 30 s: a router that never heard a peer says so.
        if ticks % 300 == 1 && !self.cfg.standalone && self.state.last_advert.is_none() && ticks > 1
        {
            warn!(
                instance = %self.cfg.name,
                vrid = self.cfg.virtual_router_id,
                state = self.machine.state().as_str(),
                "VRRP peer never seen: no other router's advert has arrived since start; if this router has peers, their adverts are being dropped (firewall?) or misconfigured (set standalone = true if it is alone)"
            );
        }
        self.retrack(now).await;
    }
}

/// How long before a backup's master-down deadline it wakes up to wait
/// the rest out on the CPU (see `Runner::wait_out`).
const TAKEOVER_SPIN: Duration = Duration::from_micros(300);

/// What the timer's drain of queued packets may take at most: this many
/// packets, or this long, whichever comes first.
const DRAIN_PACKETS: usize = 512;
const DRAIN_TIME: Duration = Duration::from_millis(2);

impl Runner {
    /// Reads the packets queued on the instance's sockets before a timer
    /// is handled, within [`DRAIN_PACKETS`] and [`DRAIN_TIME`].
    async fn drain_before_timer(&mut self) {
        let started = std::time::Instant::now();
        let mut read = 0;
        let within = |read: usize| read < DRAIN_PACKETS && started.elapsed() < DRAIN_TIME;
        let paths = std::iter::once(None).chain((0..self.net.paths()).map(Some));
        for path in paths {
            while within(read)
                && let Ok(Some(p)) = self.net.try_recv(path)
            {
                self.received(path, p).await;
                read += 1;
            }
        }
    }

    /// Waits on the CPU until `deadline`, reading adverts as they come:
    /// returns once it has passed, or after the first packet (a valid
    /// advert moves the deadline; the loop then sleeps again).
    async fn wait_out(&mut self, deadline: std::time::Instant) {
        while std::time::Instant::now() < deadline {
            if let Ok(Some(p)) = self.net.try_recv(None) {
                self.received(None, p).await;
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// Sleeps until `deadline` on the precise timer, or on tokio's when there
/// is none (or it failed).
async fn precise_sleep_until(timer: Option<&crate::vrrp::timer::PreciseTimer>, deadline: Instant) {
    if let Some(t) = timer
        && t.sleep_until(deadline.into_std()).await.is_ok()
    {
        return;
    }
    sleep_until(deadline).await
}
