//! What the state machine asks for: adverts, addresses, routes,
//! announcements, notifications, the handover to the next process.

use super::*;

impl Runner {
    pub(super) fn bump<T>(&self, f: impl FnOnce(&mut InstanceStatus) -> T) -> T
    where
        T: Default,
    {
        match self.outputs.status.lock() {
            Ok(mut s) => f(&mut s),
            Err(_) => T::default(),
        }
    }

    /// The index routes without `dev` or `via` go out of (the instance's
    /// interface), or their `dev`'s.
    pub(super) fn route_ifindex(&self, r: &routes::VirtualRoute) -> Option<u32> {
        match &r.dev {
            Some(d) => self.net.ifindex_of(d),
            None if r.via.is_none() => Some(self.net.ifindex()),
            None => None,
        }
    }

    /// Adds `virtual_routes` then `virtual_rules` (on becoming master).
    pub(super) async fn add_routes(&mut self) {
        for r in self.parsed.routes.clone() {
            let index = self.route_ifindex(&r);
            if r.dev.is_some() && index.is_none() {
                error!(instance = %self.cfg.name, route = %r.text, "cannot add virtual route: no such interface");
                continue;
            }
            match self.net.add_route(&r, index).await {
                Ok(()) => debug!(instance = %self.cfg.name, route = %r.text, "virtual route added"),
                Err(e) => {
                    error!(instance = %self.cfg.name, route = %r.text, error = %e, "cannot add virtual route")
                }
            }
        }
        for r in self.parsed.rules.clone() {
            match self.net.add_rule(&r).await {
                Ok(()) => debug!(instance = %self.cfg.name, rule = %r.text, "virtual rule added"),
                Err(e) => {
                    error!(instance = %self.cfg.name, rule = %r.text, error = %e, "cannot add virtual rule")
                }
            }
        }
    }

    /// Removes `virtual_rules` then `virtual_routes` (on leaving master, and
    /// at start: a daemon that died may have left them).
    pub(super) async fn remove_routes(&mut self) {
        for r in self.parsed.rules.clone() {
            if let Err(e) = self.net.delete_rule(&r).await {
                warn!(instance = %self.cfg.name, rule = %r.text, error = %e, "cannot remove virtual rule");
            }
        }
        for r in self.parsed.routes.clone() {
            let index = self.route_ifindex(&r);
            if r.dev.is_some() && index.is_none() {
                // Its interface is gone, and the route with it.
                continue;
            }
            if let Err(e) = self.net.delete_route(&r, index).await {
                warn!(instance = %self.cfg.name, route = %r.text, error = %e, "cannot remove virtual route");
            }
        }
    }

    /// Whether the XDP dataplane serves every address of this instance
    /// without it being local: announced before it is added, clients move
    /// a netlink round trip sooner.
    fn served_without_addresses(&self) -> bool {
        let Some(served) = &self.inputs.served else {
            return false;
        };
        let Ok(served) = served.read() else {
            return false;
        };
        !self.parsed.vip_set.is_empty() && self.parsed.vip_set.iter().all(|a| served.contains(a))
    }

    /// The first announcement of our addresses, then its delayed second
    /// burst.
    fn start_announcing(&mut self) {
        self.announce();
        let now = Instant::now();
        self.state.garp_at = Some(now + Duration::from_secs(u64::from(self.cfg.garp_master_delay)));
        self.state.refresh_at = (self.cfg.garp_master_refresh > 0)
            .then(|| now + Duration::from_secs(u64::from(self.cfg.garp_master_refresh)));
    }

    pub(super) async fn perform(&mut self, actions: Vec<Action>) {
        for effect in effects(&actions, self.served_without_addresses()) {
            match effect {
                Effect::SendAdvert(priority) => self.send_advert(priority),
                Effect::OwnVmac(own) => self.own_vmac(own),
                Effect::VmacLink(up) => self.vmac_link(up).await,
                Effect::StartAnnouncing => self.start_announcing(),
                Effect::StopAnnouncing => {
                    self.state.garp_at = None;
                    self.state.refresh_at = None;
                }
                Effect::AddAddresses => {
                    for a in self.parsed.vips.clone() {
                        if let Err(e) = self.net.add_address(a).await {
                            error!(instance = %self.cfg.name, address = %a.address, error = %e, "cannot add virtual address");
                        }
                    }
                }
                Effect::AddRoutes => self.add_routes().await,
                Effect::RemoveRoutes => self.remove_routes().await,
                Effect::RemoveAddresses => {
                    for a in self.parsed.vips.clone() {
                        if let Err(e) = self.net.remove_address(a).await {
                            error!(instance = %self.cfg.name, address = %a.address, error = %e, "cannot remove virtual address");
                        }
                    }
                }
                Effect::Report(action) => self.report(action),
            }
        }
        self.publish();
    }

    /// Logs, counters and notifications of a transition or a split brain.
    fn report(&mut self, action: Action) {
        match action {
            Action::SplitBrain { other, yielded } => {
                let count = self.bump(|s| {
                    s.split_brains += 1;
                    s.split_brains
                });
                // One line per SPLIT_NOTE_EVERY, with the count so far:
                // a lasting split brain (or a host flooding adverts)
                // brings one report per advert interval.
                if self
                    .state
                    .split_logged
                    .is_none_or(|t| t.elapsed() >= SPLIT_NOTE_EVERY)
                {
                    self.state.split_logged = Some(std::time::Instant::now());
                    warn!(
                        instance = %self.cfg.name,
                        vrid = self.cfg.virtual_router_id,
                        other = %other,
                        our_priority = self.machine.priority(),
                        outcome = if yielded { "we yield" } else { "we stay master" },
                        split_brains = count,
                        "VRRP split brain: another master for our virtual router (logged at most every 10 s)"
                    );
                }
                // Its own notification (never notify_stop), at most
                // once per SPLIT_NOTE_EVERY: a lasting split brain
                // brings one advert per interval.
                if self
                    .state
                    .split_noted
                    .is_none_or(|t| t.elapsed() >= SPLIT_NOTE_EVERY)
                {
                    self.state.split_noted = Some(std::time::Instant::now());
                    self.notify("SPLIT_BRAIN");
                }
            }
            Action::Transition {
                from: State::Init,
                to,
            } if self.state.resumed => {
                info!(
                    instance = %self.cfg.name,
                    vrid = self.cfg.virtual_router_id,
                    state = to.as_str(),
                    priority = self.machine.priority(),
                    "VRRP state taken over from the previous process (no change, no notification)"
                );
            }
            Action::Transition { from, to } => {
                let silence_ms = self
                    .state
                    .last_advert
                    .map(|t| t.elapsed().as_secs_f64() * 1000.0);
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
                if !self.state.following
                    && let Some(g) = &self.state.group
                {
                    // Fault spreads to the group, and so does leaving it.
                    if to == State::Fault || from == State::Fault {
                        let _ = g.tx.send((self.cfg.name.clone(), to));
                    }
                    let first = g
                        .notified
                        .lock()
                        .map(|mut last| last.replace(to) != Some(to))
                        .unwrap_or(true);
                    if let Some(n) = name.filter(|_| first) {
                        self.notify_group(&g.config, n);
                    }
                }
            }
            _ => {}
        }
    }

    /// Publishes the instance's state (status, the daemon's watch).
    fn publish(&mut self) {
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
            addresses: self.parsed.vip_set.clone(),
        };
        let name = &self.cfg.name;
        self.outputs.states.send_if_modified(|m| {
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
    pub(super) fn hand_over(&mut self) -> Option<crate::handover::Instance> {
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
            interface: self.net.iface().to_string(),
            state: state.as_str().to_string(),
            virtual_ipaddress: self.cfg.address_texts(),
            advert_int: self.cfg.advert_int,
        })
    }

    pub(super) fn send_advert(&mut self, priority: u8) {
        let advert = Advert {
            version: self.cfg.version,
            vrid: self.cfg.virtual_router_id,
            priority,
            interval_cs: self.cfg.advert_interval_cs(),
            addresses: self.parsed.vips.iter().map(|a| a.address).collect(),
            auth: self
                .cfg
                .authentication
                .as_ref()
                .map(|a| (AUTH_PASS, auth_data(&a.auth_pass))),
        };
        // The instance's socket to its peers (none: the group), then the
        // same advert on every heartbeat path to its own.
        let paths = std::iter::once((None, &self.cfg.unicast_peer)).chain(
            self.parsed
                .path_peers
                .iter()
                .enumerate()
                .map(|(i, p)| (Some(i), p)),
        );
        let mut sent = 0;
        for (path, peers) in paths {
            let Some(src) = path.map_or(Some(self.net.source()), |i| self.net.path_source(i))
            else {
                continue;
            };
            let group: IpAddr = if src.is_ipv6() {
                MULTICAST_V6.into()
            } else {
                MULTICAST_V4.into()
            };
            let targets = if peers.is_empty() {
                std::slice::from_ref(&group)
            } else {
                peers.as_slice()
            };
            for dst in targets {
                match self.net.send(path, *dst, &advert.encode(src, *dst)) {
                    Ok(()) if path.is_none() => sent += 1,
                    Ok(()) => {}
                    Err(e) => {
                        warn!(instance = %self.cfg.name, heartbeat_path = ?path, error = %e, "VRRP advert not sent")
                    }
                }
            }
        }
        self.bump(|s| s.adverts_sent += sent);
    }

    /// One burst of `garp_master_repeat` gratuitous ARPs / unsolicited NAs.
    pub(super) fn announce(&self) {
        let addrs = &self.parsed.vips;
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
            if let Err(e) = self.net.garps(&v4) {
                warn!(instance = %self.cfg.name, error = %e, "gratuitous ARP failed");
            }
            if let Err(e) = self.net.nas(&v6) {
                warn!(instance = %self.cfg.name, error = %e, "neighbour advertisement failed");
            }
        }
    }

    /// The delayed second burst (once, `garp_master_delay` after becoming
    /// master) and the refreshes (every `garp_master_refresh` from becoming
    /// master): whichever is due; one announcement when both are.
    pub(super) fn garp_burst(&mut self) {
        if self.machine.state() != State::Master {
            self.state.garp_at = None;
            self.state.refresh_at = None;
            return;
        }
        let now = Instant::now();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        let (delayed, refresh) = (due(self.state.garp_at), due(self.state.refresh_at));
        if !(delayed || refresh) {
            return;
        }
        self.announce();
        if delayed {
            self.state.garp_at = None;
        }
        if refresh {
            self.state.refresh_at =
                Some(now + Duration::from_secs(u64::from(self.cfg.garp_master_refresh)));
        }
    }

    /// Queues the notify scripts for `state` (run in order, off this loop).
    pub(super) fn notify(&self, state: &str) {
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
        self.outputs.notifier.send(&subject, jobs);
    }
}

impl Runner {
    /// The group's notify scripts, run by the member that moved first.
    pub(super) fn notify_group(&self, g: &VrrpSyncGroup, state: &str) {
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
        self.outputs
            .notifier
            .send(&format!("group {}", g.name), jobs);
    }
}

/// The instance's `virtual_routes` and `virtual_rules`, parsed (the
/// configuration check parsed them already: an error here cannot happen,
/// and would only skip the entry).
pub(super) fn parse_routes(
    cfg: &VrrpInstance,
) -> (Vec<routes::VirtualRoute>, Vec<routes::VirtualRule>) {
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
