//! What instances track (scripts, files, processes, gateways, BFD,
//! virtual servers' quorum, interfaces) and how it moves their priority.

use super::*;

/// What instances track by name (`[[vrrp_script]]`, `[[track_file]]`,
/// `[[track_process]]`): watched once for all instances, from the VRRP
/// thread's start (changes need a restart).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TrackConfig {
    pub(super) scripts: Vec<VrrpScript>,
    pub(super) files: Vec<TrackFile>,
    pub(super) processes: Vec<TrackProcess>,
    /// `[[bfd_instance]]` names and weights (the sessions themselves run
    /// outside VRRP; a change of them needs a restart).
    pub(super) bfd_weights: Vec<(String, i32)>,
}

impl TrackConfig {
    pub(super) fn of(config: &Config) -> TrackConfig {
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
pub(super) struct Trackers {
    /// `[[vrrp_script]]` verdicts (`None` until the first).
    pub(super) scripts: BTreeMap<String, (i32, watch::Receiver<Option<bool>>)>,
    /// `[[track_process]]` verdicts (`None` until the first).
    pub(super) processes: BTreeMap<String, (i32, watch::Receiver<Option<bool>>)>,
    /// `[[track_file]]` values.
    pub(super) files: BTreeMap<String, (i32, watch::Receiver<i64>)>,
    /// `[[bfd_instance]]` verdicts (`None` until the first).
    pub(super) bfd: BTreeMap<String, (i32, watch::Receiver<Option<bool>>)>,
}

impl Trackers {
    /// What `cfg` tracks, each with the instance's weight (`{ name,
    /// weight }`) or the item's own: scripts and processes, then files.
    #[allow(clippy::type_complexity)]
    pub(super) fn resolve(
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

impl Runner {
    /// Re-evaluates tracking (fault, effective priority) and feeds what
    /// changed since `tracked` to the state machine.
    pub(super) async fn retrack(&mut self, t: std::time::Instant) {
        let now = self.tracking();
        let tracked = self.state.tracked;
        if now == tracked {
            return;
        }
        if now.1 != tracked.1 {
            info!(instance = %self.cfg.name, old = tracked.1, new = now.1, "effective priority changed");
            let a = self.machine.step(Event::Priority(now.1), t);
            self.perform(a).await;
        }
        if now.0 != tracked.0 {
            let a = self.machine.step(Event::Fault(now.0), t);
            self.perform(a).await;
        }
        self.state.tracked = now;
    }

    /// Takes a reload's changes that need no restart of the instance
    /// (see [`soft_change`]): notify scripts, tracking, priority, gratuitous
    /// ARP settings. The state, the VIPs and the adverts go on untouched.
    pub(super) async fn update(&mut self, new: VrrpInstance) {
        (self.inputs.checks, self.inputs.files) = self.inputs.trackers.resolve(&new);
        let (routes, rules) = parse_routes(&new);
        if (&routes, &rules) != (&self.parsed.routes, &self.parsed.rules) {
            if self.machine.state() == State::Master {
                // Those that went, then those that came (the same kept).
                let old = std::mem::take(&mut self.parsed.routes);
                let old_rules = std::mem::take(&mut self.parsed.rules);
                self.parsed.routes = old
                    .iter()
                    .filter(|r| !routes.contains(r))
                    .cloned()
                    .collect();
                self.parsed.rules = old_rules
                    .iter()
                    .filter(|r| !rules.contains(r))
                    .cloned()
                    .collect();
                self.remove_routes().await;
                self.parsed.routes = routes
                    .iter()
                    .filter(|r| !old.contains(r))
                    .cloned()
                    .collect();
                self.parsed.rules = rules
                    .iter()
                    .filter(|r| !old_rules.contains(r))
                    .cloned()
                    .collect();
                self.add_routes().await;
            }
            self.parsed.routes = routes;
            self.parsed.rules = rules;
        }
        info!(instance = %new.name, "VRRP instance updated in place by the reload");
        if new.garp_master_refresh != self.cfg.garp_master_refresh
            && self.machine.state() == State::Master
        {
            // A master refreshes at the new interval from now (none: no
            // more refreshes).
            self.state.refresh_at = (new.garp_master_refresh > 0)
                .then(|| Instant::now() + Duration::from_secs(u64::from(new.garp_master_refresh)));
        }
        let priority = new.priority;
        self.cfg = new;
        self.bump(|s| s.priority = priority);
    }

    /// Follows the instance's interface when it was re-created (new index:
    /// the sockets are opened again, a master puts its addresses back) or
    /// its MAC changed (announcements carry the new one, and a master
    /// announces it at once). Retried every tick until it succeeds.
    pub(super) async fn follow_interface(&mut self, now: std::time::Instant) {
        match self.net.follow(&self.cfg).await {
            Followed::Present { up, moved } => {
                if up && !self.state.primary_up {
                    self.state.primary_up_since = Some(now);
                }
                self.state.primary_up = up;
                if moved && self.machine.state() == State::Master {
                    // The addresses went with the old device; clients learn
                    // the new MAC.
                    self.perform(vec![Action::AddAddresses, Action::Announce])
                        .await;
                }
            }
            Followed::Gone => self.state.primary_up = false,
            Followed::Unknown => {}
        }
    }

    /// (fault, effective priority) from tracked interfaces and scripts.
    pub(super) fn tracking(&self) -> (bool, u8) {
        // The own interface (keepalived's default; `dont_track_primary`
        // opts out): a VRRP router whose link is down cannot be master.
        // A link that just came back is given PRIMARY_SETTLE before the
        // instance leaves Fault: the switch may forward nothing yet, and a
        // backup that heard no master meanwhile would claim the VIP (a
        // split brain).
        let settled = self
            .state
            .primary_up_since
            .is_some_and(|t| t.elapsed() >= PRIMARY_SETTLE);
        let mut fault = !(self.cfg.dont_track_primary || self.state.primary_up && settled);
        let mut priority = i32::from(self.cfg.priority);
        for i in &self.cfg.track_interface {
            let state = self.net.operstate(i.name());
            let up = matches!(state.trim(), "up" | "unknown");
            match i.weight() {
                // No weight (or 0): a tracked interface down means Fault.
                None | Some(0) => fault |= !up,
                Some(w) if w < 0 && !up => priority += w,
                Some(w) if w > 0 && up => priority += w,
                Some(_) => {}
            }
        }
        for (weight, rx) in &self.inputs.files {
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
        if self
            .inputs
            .gateways
            .iter()
            .any(|g| *g.borrow() == Some(false))
        {
            fault = true;
        }
        let services: Vec<(Option<bool>, i32)> = {
            let q = self.inputs.quorum.borrow();
            self.cfg
                .track_virtual_server
                .iter()
                .map(|t| (q.get(&t.id()).copied(), t.weight))
                .collect()
        };
        let checks = self.inputs.checks.iter().map(|(w, rx)| (*rx.borrow(), *w));
        for (up, weight) in checks.chain(services) {
            match (up, weight) {
                (Some(false), 0) => fault = true,
                (Some(false), w) if w < 0 => priority += w,
                (Some(true), w) if w > 0 => priority += w,
                _ => {}
            }
        }
        let own = priority.clamp(1, 254) as u8;
        let effective = match &self.state.group {
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
}

/// Pings a tracked gateway every `interval`; its verdict (`None` until the
/// first) follows `fall` / `rise` rounds in a row.
pub(super) fn start_gateway(
    instance: &str,
    g: crate::config::TrackGateway,
) -> watch::Receiver<Option<bool>> {
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
            let ok =
                tokio::task::spawn_blocking(move || crate::health::ping::ping(address, seq, wait))
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

/// One task per `[[vrrp_script]]`; results (`None` until the first verdict)
/// are shared with every instance tracking it.
pub(super) fn start_scripts(
    scripts: &[VrrpScript],
) -> BTreeMap<String, (i32, watch::Receiver<Option<bool>>)> {
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

pub(super) async fn run_check(argv: &[String], timeout: Duration) -> bool {
    use crate::scripts::{Ended, Leftovers, run};
    matches!(
        run(argv, timeout, 0, Leftovers::Kill).await,
        Ok(crate::scripts::Run {
            ended: Ended::Exited(0),
            ..
        })
    )
}
