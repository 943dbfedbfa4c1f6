//! The event loop: what wakes the daemon ([`Event`], read from its
//! [`Inputs`]) and what it does about each ([`Daemon::handle`]). Before
//! each wait the daemon brings itself in step: the neighbour table when it
//! is due, the dataplane with the plan, the BGP announcements.

use futures::stream::BoxStream;

use super::{flows::ScanDone, *};

/// Everything the loop waits on.
pub(super) struct Inputs {
    pub(super) sigint: tokio::signal::unix::Signal,
    pub(super) sigterm: tokio::signal::unix::Signal,
    pub(super) sighup: tokio::signal::unix::Signal,
    /// Requests of the control socket and of the metrics server.
    pub(super) control: mpsc::Receiver<Pending>,
    /// The kernel's neighbour table changed.
    pub(super) neighbours: BoxStream<'static, ()>,
    /// A link changed (ours may have been re-created or renamed).
    pub(super) links: BoxStream<'static, ()>,
    /// The VRRP instances' states.
    pub(super) vrrp: watch::Receiver<crate::vrrp::instance::States>,
    /// A probe's verdict changed.
    pub(super) health: mpsc::Receiver<health::Change>,
    pub(super) bgp_tick: Option<tokio::time::Interval>,
    /// Flow sync's rounds, what peers send, the scans of the flow table.
    pub(super) sync_tick: Option<tokio::time::Interval>,
    pub(super) from_peers: Option<mpsc::Receiver<crate::dataplane::flowsync::Received>>,
    pub(super) scans: mpsc::UnboundedReceiver<ScanDone>,
}

/// What woke the loop.
pub(super) enum Event {
    /// SIGINT: stop for good.
    Interrupt,
    /// SIGTERM: stop for good, or hand over when it is systemd's restart.
    Terminate,
    /// SIGHUP: reload the config file.
    Hangup,
    /// A request of the control socket (or of the metrics server).
    Control(Pending),
    NeighbourChanged,
    LinkChanged,
    /// A VRRP instance changed state: BGP announcements follow.
    VrrpChanged,
    /// Probes' verdicts changed (a burst counts once).
    HealthChanged,
    /// BGP's timer: announcements wait for `announce_delay`.
    BgpTick,
    /// A flow sync round is due.
    SyncTick,
    /// A scan of the flow table finished.
    Scanned(ScanDone),
    /// A peer director sent flows, or said it sent them all.
    FromPeer(crate::dataplane::flowsync::Received),
    /// The neighbour table is due to be read again.
    RefreshDue,
    /// A slow start's next step is due: the plan changes with it.
    StepDue,
}

impl Inputs {
    /// The next event; `refresh_at` is when the neighbour table is due,
    /// `step_at` when a slow start steps.
    pub(super) async fn next(
        &mut self,
        refresh_at: tokio::time::Instant,
        step_at: Option<std::time::Instant>,
    ) -> Event {
        use futures::StreamExt as _;
        tokio::select! {
            _ = self.sigint.recv() => Event::Interrupt,
            _ = self.sigterm.recv() => Event::Terminate,
            _ = self.sighup.recv() => Event::Hangup,
            Some(pending) = self.control.recv() => Event::Control(pending),
            Some(()) = self.neighbours.next() => Event::NeighbourChanged,
            Ok(()) = self.vrrp.changed() => Event::VrrpChanged,
            Some(()) = self.links.next() => Event::LinkChanged,
            _ = tick(&mut self.bgp_tick) => Event::BgpTick,
            _ = tick(&mut self.sync_tick) => Event::SyncTick,
            Some(done) = self.scans.recv() => Event::Scanned(done),
            Some(received) = async {
                match self.from_peers.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => Event::FromPeer(received),
            Some(_) = self.health.recv() => {
                // Coalesce a burst of changes into one re-plan.
                while self.health.try_recv().is_ok() {}
                Event::HealthChanged
            }
            _ = tokio::time::sleep_until(refresh_at) => Event::RefreshDue,
            _ = async {
                match step_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => Event::StepDue,
        }
    }
}

/// Our interface and the kernel's neighbour table, as the loop follows
/// them.
pub(super) struct Links {
    pub(super) neighbors: Neighbors,
    /// Our interface, shared with `dr_check` probes.
    pub(super) shared: Arc<Mutex<crate::net::neighbor::LinkInfo>>,
    /// Our interface is gone (the dataplane follows it when it is back).
    pub(super) gone: bool,
    /// When the neighbour table is read next: on its own timer (sooner
    /// while a real server is unresolved), when the kernel reports a
    /// change, and after a request or reload that may add servers; not on
    /// every wake of the loop (health, VRRP, flow sync).
    pub(super) next_refresh: tokio::time::Instant,
    pub(super) refresh_now: bool,
}

impl Links {
    pub(super) fn new(
        neighbors: Neighbors,
        shared: Arc<Mutex<crate::net::neighbor::LinkInfo>>,
    ) -> Links {
        Links {
            neighbors,
            shared,
            gone: false,
            next_refresh: tokio::time::Instant::now(),
            refresh_now: true,
        }
    }
}

impl Daemon {
    /// Serves events until one stops the daemon.
    pub(super) async fn serve(&mut self, inputs: &mut Inputs) -> Stopped {
        loop {
            self.in_step().await;
            let event = inputs.next(self.links.next_refresh, self.next_step).await;
            if let Some(stopped) = self.handle(event).await {
                return stopped;
            }
        }
    }

    /// Brings the daemon in step before it waits: the neighbour table when
    /// due, the dataplane with the plan (a refused update never stops the
    /// daemon: the last good state keeps forwarding, the error is reported
    /// once and retried), the BGP announcements.
    async fn in_step(&mut self) {
        if self.links.refresh_now || tokio::time::Instant::now() >= self.links.next_refresh {
            let delay = match self.resolver.refresh(&self.links.neighbors).await {
                Ok(true) => RESOLVE_RETRY,
                Ok(false) => REFRESH,
                Err(e) => {
                    error!(error = %e, "cannot read the neighbour table");
                    REFRESH
                }
            };
            self.links.next_refresh = tokio::time::Instant::now() + delay;
            self.links.refresh_now = false;
            let resolved = self.resolver.resolved();
            if let Ok(mut m) = self.macs.lock()
                && *m != resolved
            {
                *m = resolved;
            }
        }
        match self.sync() {
            Ok(()) => {
                if self.dataplane_error.take().is_some() {
                    info!("the dataplane accepts updates again");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if self.dataplane_error.as_deref() != Some(text.as_str()) {
                    error!(error = %text, "the dataplane refused an update: the last good state keeps forwarding (retrying)");
                    self.dataplane_error = Some(text);
                }
            }
        }
        self.announce();
    }

    /// Handles one event; `Some` when it stops the daemon.
    pub(super) async fn handle(&mut self, event: Event) -> Option<Stopped> {
        match event {
            Event::Interrupt => {
                info!(signal = "SIGINT", "stopping");
                return Some(Stopped::Stop);
            }
            Event::Terminate => {
                // `systemctl restart` (or an upgrade's): hand over instead
                // of moving the VIP away and back.
                if crate::handover::systemd_restart_pending().await {
                    info!(
                        signal = "SIGTERM",
                        "restarting (systemd restart job): handing over"
                    );
                    return Some(Stopped::Restart);
                }
                info!(signal = "SIGTERM", "stopping");
                return Some(Stopped::Stop);
            }
            Event::Hangup => {
                self.links.refresh_now = true;
                info!(signal = "SIGHUP", "reloading the configuration");
                if let Err(e) = self.reload().await {
                    error!("reload refused, nothing changed: {e}");
                }
            }
            Event::Control((request, reply)) => {
                self.links.refresh_now = true;
                return self.control(request, reply).await;
            }
            Event::NeighbourChanged => self.links.refresh_now = true,
            Event::LinkChanged => {
                self.links.refresh_now = true;
                self.follow_link().await;
            }
            Event::VrrpChanged
            | Event::HealthChanged
            | Event::BgpTick
            | Event::RefreshDue
            | Event::StepDue => {}
            Event::SyncTick => self.sync_round(),
            Event::Scanned(done) => self.scanned(done),
            Event::FromPeer(received) => self.peer_sent(received),
        }
        None
    }

    /// A control request: answered here, or (drain, restart) the stop.
    async fn control(
        &mut self,
        request: Request,
        reply: tokio::sync::oneshot::Sender<Response>,
    ) -> Option<Stopped> {
        let answer = match request {
            Request::RealServer(change) => match self.change_real_server(&change) {
                Ok(()) => Response::Ok { ok: true },
                Err(e) => Response::Error { error: e },
            },
            Request::Drain => {
                let wait = self.withdraw_all().await;
                info!(
                    withdraw_wait = wait.as_secs_f64(),
                    "draining: routes withdrawn, stopping after the wait"
                );
                let _ = reply.send(Response::Ok { ok: true });
                tokio::time::sleep(wait).await;
                return Some(Stopped::Stop);
            }
            Request::Restart => {
                // The next process must be able to start.
                if let Err(e) = Config::load(&self.config_path) {
                    error!("restart refused, nothing changed: {e}");
                    let _ = reply.send(Response::Error {
                        error: format!("restart refused (the running daemon goes on): {e}"),
                    });
                    return None;
                }
                info!("restarting in place (director restart): handing over");
                let _ = reply.send(Response::Ok { ok: true });
                return Some(Stopped::Reexec);
            }
            Request::Reload => match self.reload().await {
                Ok(()) => Response::Ok { ok: true },
                Err(e) => {
                    error!("reload refused, nothing changed: {e}");
                    Response::Error { error: e }
                }
            },
            other => self.answer(other),
        };
        let _ = reply.send(answer);
        None
    }
}
