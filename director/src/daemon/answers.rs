//! The status document and the answers of the control socket.

use super::*;

impl Daemon {
    pub(super) fn status(&self) -> Status {
        let g = &self.config.global;
        let plans = self.applied.clone().unwrap_or_default();
        let virtual_servers = self
            .config
            .virtual_server
            .iter()
            .zip(plans.iter())
            .map(|(vs, plan)| {
                let id = vs.identity();
                let memory = self.memory.get(&id);
                let t = self.dataplane.service_traffic(plan).unwrap_or_default();
                let addresses: Vec<IpAddr> = vs.real_server.iter().map(|r| r.address).collect();
                let per_server = self.dataplane.backends_traffic(plan, &addresses);
                VirtualServerStatus {
                    address: vs.address().to_string(),
                    port: vs.port(),
                    protocol: vs.protocol.to_string(),
                    scheduler: vs.scheduler.as_str().to_string(),
                    persistence_timeout: vs.persistence_timeout,
                    lb_kind: vs.lb_kind.as_str().to_string(),
                    fwmark: vs.fwmark,
                    group: vs.group.clone(),
                    members: if vs.group.is_some() {
                        vs.members.iter().map(ToString::to_string).collect()
                    } else {
                        Vec::new()
                    },
                    quorum_up: self.quorum_up(vs),
                    failing_open: memory.is_some_and(|m| m.failing_open.is_some()),
                    fail_open_reason: memory.and_then(|m| m.failing_open.clone()),
                    packets: t.packets,
                    bytes: t.bytes,
                    new_flows: t.new_flows,
                    real_servers: vs
                        .real_server
                        .iter()
                        .enumerate()
                        .map(|(j, rs)| {
                            let keys = self.probes.of_server(id, rs.address);
                            let t = per_server.get(j).copied().unwrap_or_default();
                            let healthy = server_health(&self.board, vs, keys).healthy;
                            let server = memory.and_then(|m| m.servers.get(&rs.address));
                            let ramp = vs.slow_start_of(rs);
                            let (last_check, last_error, check_latency) = self.last_check(keys);
                            RealServerStatus {
                                healthy,
                                last_check,
                                last_error,
                                check_latency,
                                address: rs.address.to_string(),
                                port: rs.port.unwrap_or(vs.port()),
                                weight: rs.weight,
                                effective_weight: server.map_or(0.0, |m| m.effective_weight),
                                slow_start_remaining: server
                                    .and_then(|m| m.ramp_since)
                                    .map(|t| ramp.saturating_sub(t.elapsed()).as_secs_f64()),
                                mac: self
                                    .resolver
                                    .mac(&rs.address, vs.lb_kind == crate::config::LbKind::Tun)
                                    .map(|m| m.to_string()),
                                packets: t.packets,
                                bytes: t.bytes,
                                new_flows: t.new_flows,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Status {
            router_id: g.router_id.clone(),
            pid: std::process::id(),
            started_at: *STARTED_AT.get_or_init(unix_now),
            dataplane: self.dataplane.name().to_string(),
            xdp_mode: self.dataplane.xdp_mode().map(str::to_string),
            interface: g.interface.clone(),
            // IPVS services are kernel state: they outlive the daemon.
            dataplane_survives_restart: self.pins.as_ref().is_none_or(|p| p.survives),
            flow_table_size: self
                .dataplane
                .is_xdp()
                .then_some(self.config.global.flow_table_size),
            flow_table_memory_bytes: self.dataplane.is_xdp().then(|| {
                crate::dataplane::xdp::flow_table_bytes(self.config.global.flow_table_size)
            }),
            new_flow_limit: self
                .dataplane
                .is_xdp()
                .then_some(self.config.global.new_flow_limit),
            flows_unrecorded: self.dataplane.unrecorded_flows(),
            pin_dir: self.pins.as_ref().map(|p| p.path.display().to_string()),
            dataplane_error: self.dataplane_error.clone(),
            flow_sync: self.sync.as_ref().map(|s| {
                use std::sync::atomic::Ordering::Relaxed;
                let (st, peering) = (&s.sync.stats, &s.sync.peering);
                crate::manage::status::FlowSyncStatus {
                    // Restart-only: the running config's peers are the
                    // ones flow sync started with.
                    peers: self
                        .config
                        .global
                        .flow_sync
                        .as_ref()
                        .map_or(0, |f| f.peers.len()),
                    flows_sent: st.sent.load(Relaxed),
                    flows_received: st.received.load(Relaxed),
                    flows_imported: self.imported,
                    awaiting_peers: peering.awaited().iter().map(|a| a.to_string()).collect(),
                    dropped: st
                        .dropped
                        .lock()
                        .map(|d| d.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                        .unwrap_or_default(),
                }
            }),
            bgp: self.bird.as_ref().map(|b| {
                let (announced, error) = b.state();
                crate::manage::status::BgpStatus {
                    announced: announced.iter().map(IpAddr::to_string).collect(),
                    error,
                }
            }),
            virtual_servers,
            vrrp: self.vrrp.as_ref().map(Vrrp::statuses).unwrap_or_default(),
            bfd: self
                .bfd
                .as_ref()
                .map(crate::bfd::Bfd::statuses)
                .unwrap_or_default(),
        }
    }

    /// The most recent check of a real server and its error, if any.
    pub(super) fn last_check(
        &self,
        keys: &[health::ProbeKey],
    ) -> (Option<f64>, Option<String>, Option<f64>) {
        let Ok(b) = self.board.lock() else {
            return (None, None, None);
        };
        let mut last = None::<f64>;
        let mut error = None;
        let mut latency = None::<f64>;
        for key in keys {
            if let Some(p) = b.get(key) {
                if let Some(t) = p.last_check {
                    last = Some(last.map_or(t, |l| l.max(t)));
                }
                if p.last_error.is_some() {
                    error = p.last_error.clone();
                }
                if let Some(t) = p.latency {
                    latency = Some(latency.map_or(t, |l| l.max(t)));
                }
            }
        }
        (last, error, latency)
    }

    /// The status as the dataplane forwards: the health verdicts are
    /// frozen for the moment, the dataplane brought up to them, and the
    /// status built from the same verdicts. (Read live, a verdict a probe
    /// had just written showed a real server down while new connections
    /// still went to it, until the loop's next update.)
    fn consistent_status(&mut self) -> Status {
        let frozen = self.board.lock().map(|b| b.clone()).unwrap_or_default();
        let live = std::mem::replace(&mut self.board, Arc::new(Mutex::new(frozen)));
        if let Err(e) = self.sync() {
            // Reported (once) by the loop's own update, which retries.
            tracing::debug!(error = %e, "dataplane update before a status");
        }
        let status = self.status();
        self.board = live;
        status
    }

    pub(super) fn answer(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.consistent_status())),
            Request::Reload | Request::RealServer(_) | Request::Drain | Request::Restart => {
                Response::Error {
                    error: "handled by the event loop".into(),
                }
            }
        }
    }
}
