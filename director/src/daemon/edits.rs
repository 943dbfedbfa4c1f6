//! Changes at runtime: our interface re-created or changed, a reload, a
//! real server changed over the control socket; all or nothing.

use super::*;

impl Daemon {
    /// A link changed somewhere: when it is our interface (re-created,
    /// renamed in place of the old one, its MAC changed), the dataplane,
    /// the neighbour lookups and the DR-path checks follow it.
    pub(super) async fn follow_link(&mut self) {
        let interface = self.config.global.interface.clone();
        let super::events::Links {
            neighbors,
            shared,
            gone,
            ..
        } = &mut self.links;
        let old = neighbors.link();
        match neighbors.lookup(&interface).await {
            Ok(Some(now)) => {
                if *gone {
                    info!(%interface, ifindex = now.index, "interface is back");
                    *gone = false;
                }
                if now == old {
                    return;
                }
                info!(
                    %interface,
                    old_ifindex = old.index,
                    ifindex = now.index,
                    old_mac = %old.mac,
                    mac = %now.mac,
                    "interface changed: following it"
                );
                neighbors.set_link(now);
                if let Ok(mut l) = shared.lock() {
                    *l = now;
                }
                // The program checks frames are addressed to our MAC; the
                // next apply writes the new one.
                self.link = now;
                self.applied = None;
                if let Err(e) = self.dataplane.follow_interface() {
                    error!(%interface, error = %e, "cannot re-attach the dataplane to the interface");
                }
            }
            Ok(None) => {
                if !*gone {
                    warn!(%interface, "interface is gone; the dataplane follows it when it is back");
                    *gone = true;
                }
            }
            Err(e) => warn!(%interface, error = %e, "cannot look the interface up"),
        }
    }

    /// Re-reads the config file and applies the difference. On any error
    /// nothing changes and the error (FILE:LINE:COL: ...) is returned.
    pub(super) async fn reload(&mut self) -> Result<(), String> {
        let new = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let (old_g, new_g) = (&self.config.global, &new.global);
        for (key, changed) in [
            ("global.interface", old_g.interface != new_g.interface),
            ("global.state_dir", old_g.state_dir != new_g.state_dir),
            ("global.pin_dir", old_g.pin_dir() != new_g.pin_dir()),
            ("global.xdp_mode", old_g.xdp_mode != new_g.xdp_mode),
            ("global.dataplane", old_g.dataplane != new_g.dataplane),
            (
                "global.metrics_address",
                old_g.metrics_address != new_g.metrics_address,
            ),
            (
                "global.control_group",
                old_g.control_group != new_g.control_group,
            ),
            ("global.flow_sync", old_g.flow_sync != new_g.flow_sync),
            (
                "global.flow_table_size",
                old_g.flow_table_size != new_g.flow_table_size,
            ),
            ("bfd_instance", self.config.bfd_instance != new.bfd_instance),
        ] {
            if changed {
                return Err(format!(
                    "{}: changing {key} needs a restart of the daemon",
                    self.config_path.display()
                ));
            }
        }
        // Everything VRRP would need from this host, checked before
        // anything (the dataplane included) changes.
        if let Some(vrrp) = self.vrrp.as_ref() {
            vrrp.preflight(&new).await.map_err(|e| match &e {
                VrrpError::Refused { instance, key, .. } => {
                    match new.vrrp_instance.iter().position(|i| &i.name == instance) {
                        Some(index) => {
                            crate::config::vrrp_instance_error(&self.config_path, index, key, &e)
                                .to_string()
                        }
                        None => e.to_string(),
                    }
                }
                _ => e.to_string(),
            })?;
        }
        // The dataplane first (all or nothing, rolled back on a refusal),
        // then VRRP; a VRRP failure rolls the dataplane back too.
        let previous = self.adopt(new)?;
        if let Some(vrrp) = self.vrrp.as_mut()
            && let Err(e) = vrrp.reconfigure(&self.config).await
        {
            self.restore(previous);
            return Err(e.to_string());
        }
        info!(
            virtual_servers = self.config.virtual_server.len(),
            vrrp_instances = self.config.vrrp_instance.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// `director real-server ...`: changes the running config (not the
    /// file); a later reload reads the file again.
    pub(super) fn change_real_server(
        &mut self,
        c: &crate::manage::control::RealServerChange,
    ) -> Result<(), String> {
        use crate::manage::control::RealServerAction as Action;
        let mut new = self.config.clone();
        let protocol = c.protocol;
        let index = new
            .find_service(c.vip, c.port, protocol)
            .ok_or_else(|| format!("no virtual server {}:{}/{}", c.vip, c.port, c.protocol))?;
        let vs = &mut new.virtual_server[index];
        let key = (vs.id(), c.address);
        let pos = vs.real_server.iter().position(|r| r.address == c.address);
        match (c.action, pos) {
            (Action::Add, Some(_)) => {
                return Err(format!("{} is already a real server", c.address));
            }
            (Action::Add, None) => vs.real_server.push(crate::config::RealServer::new(
                c.address,
                c.weight.unwrap_or(1),
            )),
            (_, None) => {
                return Err(format!(
                    "{} is not a real server of that service",
                    c.address
                ));
            }
            (Action::Remove, Some(i)) => {
                vs.real_server.remove(i);
            }
            (Action::Weight, Some(i)) => {
                vs.real_server[i].weight = c.weight.ok_or("weight needs --weight N")?;
            }
            (Action::Drain, Some(i)) => {
                let w = vs.real_server[i].weight;
                if w > 0 {
                    self.drained.insert(key, w);
                }
                vs.real_server[i].weight = 0;
            }
            (Action::Enable, Some(i)) => {
                vs.real_server[i].weight = self.drained.remove(&key).unwrap_or(1);
            }
        }
        new.check()?;
        // Persisting: the edited file is prepared and validated before
        // anything changes; it is written once the change is live.
        let persisted = if c.persist {
            let target = crate::manage::writeback::Target {
                vip: c.vip,
                port: c.port,
                protocol,
                address: c.address,
                index,
            };
            let after = new.virtual_server[index]
                .real_server
                .iter()
                .find(|r| r.address == c.address);
            Some(
                crate::manage::writeback::prepare(&self.config_path, target, after)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        self.adopt(new)?;
        if let Some(text) = persisted {
            crate::manage::writeback::write_atomic(&self.config_path, &text)
                .map_err(|e| format!("applied, but not persisted: {e}"))?;
            info!(file = %self.config_path.display(), "real server change written to the config file");
        }
        info!(
            action = c.action.as_str(),
            virtual_server = %format!("{}:{}/{}", c.vip, c.port, c.protocol),
            real_server = %c.address,
            "real server changed at runtime"
        );
        Ok(())
    }

    /// Makes `new` the running configuration (already validated), all or
    /// nothing: its plan is applied to the dataplane first; if the kernel
    /// refuses it, the previous plan is applied again and nothing else
    /// changed. Returns what [`Daemon::restore`] needs to undo it.
    pub(super) fn adopt(&mut self, new: Config) -> Result<Previous, String> {
        // Real servers: keep what is known of those that stay.
        let mut resolver = MacResolver::new(&new);
        for (addr, state) in resolver.servers.iter_mut() {
            if let Some(old) = self.resolver.servers.get(addr) {
                *state = *old;
            }
        }
        // The new config's probes, compiled once for the plan and the checks.
        let probes = health::Probes::of(&new);
        // Quorum, failing open and slow starts are by service identity:
        // the services that stay keep theirs (hysteresis and scripts go on
        // from it, a ramp goes on; a server the reload adds ramps).
        let mut memory = self.memory.clone();
        let planned = plan(
            &new,
            &probes,
            &resolver,
            &self.board,
            &mut memory,
            std::time::Instant::now(),
        );
        let next = planned.plans;
        self.dataplane.set_new_flow_limit(new.global.new_flow_limit);
        if let Err(e) = self
            .dataplane
            .apply(&next, new.global.udp_timeout, self.link)
        {
            if let Some(old) = &self.applied
                && let Err(again) =
                    self.dataplane
                        .apply(old, self.config.global.udp_timeout, self.link)
            {
                error!(error = %again, "could not restore the previous dataplane state");
            }
            self.dataplane
                .set_new_flow_limit(self.config.global.new_flow_limit);
            return Err(format!("the dataplane refused it: {e}"));
        }
        if new.global.script_user != self.config.global.script_user {
            super::start::set_script_identity(&new);
        }
        let previous = Previous {
            config: std::mem::replace(&mut self.config, new),
            resolver: std::mem::replace(&mut self.resolver, resolver),
            probes: std::mem::replace(&mut self.probes, probes),
            applied: self.applied.replace(next),
            memory: std::mem::replace(&mut self.memory, memory),
            next_step: std::mem::replace(&mut self.next_step, planned.next_step),
        };
        if let Some(checks) = self.checks.as_mut() {
            checks.update(&self.probes.distinct());
        }
        // Quorum scripts and VRRP tracking for the new services, from the
        // one plan the dataplane has (removed services' state went with
        // it, the others' stays).
        self.planned_changes(planned.quorum_changes, planned.fail_open_changes);
        Ok(previous)
    }

    /// Undoes an [`Daemon::adopt`] (a later step of the reload failed).
    pub(super) fn restore(&mut self, previous: Previous) {
        if previous.config.global.script_user != self.config.global.script_user {
            super::start::set_script_identity(&previous.config);
        }
        self.config = previous.config;
        self.resolver = previous.resolver;
        self.probes = previous.probes;
        if let Some(checks) = self.checks.as_mut() {
            checks.update(&self.probes.distinct());
        }
        self.memory = previous.memory;
        self.next_step = previous.next_step;
        self.applied = None;
        self.dataplane
            .set_new_flow_limit(self.config.global.new_flow_limit);
        if let Some(old) = &previous.applied
            && let Err(e) = self
                .dataplane
                .apply(old, self.config.global.udp_timeout, self.link)
        {
            error!(error = %e, "could not restore the previous dataplane state");
        } else {
            self.applied = previous.applied;
        }
    }
}

/// What a reload replaced, to put it back.
pub(super) struct Previous {
    config: Config,
    resolver: MacResolver,
    probes: health::Probes,
    applied: Option<Vec<ServicePlan>>,
    memory: super::plan::Memory,
    next_step: Option<std::time::Instant>,
}
