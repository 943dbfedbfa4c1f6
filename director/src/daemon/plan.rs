//! What the dataplane should hold: each service's real servers with
//! their weights and MACs, and quorum; a pure function of the config, the
//! health board and the resolved MACs (unit-tested), and the step that
//! applies it.

use super::*;

/// Health of one real server of a service: healthy, and a weight a
/// `misc_dynamic` check asked for.
pub(super) fn server_health(
    board: &Board,
    vs: &VirtualServer,
    keys: &[health::ProbeKey],
) -> (bool, Option<u32>) {
    let Ok(b) = board.lock() else {
        return (true, None);
    };
    let mut healthy = true;
    let mut weight = None;
    for key in keys {
        if let Some(p) = b.get(key) {
            healthy &= p.healthy;
            weight = weight.or(p.weight);
        } else {
            healthy &= !vs.alpha;
        }
    }
    (healthy, weight)
}

/// Quorum bookkeeping of one service (keepalived's quorum and hysteresis).
pub(super) fn quorum_next(vs: &VirtualServer, up: Option<bool>, healthy_weight: u64) -> bool {
    let q = u64::from(vs.quorum);
    let h = u64::from(vs.hysteresis);
    match up {
        None => healthy_weight >= q,
        Some(true) => healthy_weight + h >= q,
        Some(false) => healthy_weight >= q + h,
    }
}

/// Each service's quorum, by what the service is (so a reload keeps the
/// state of the services it does not remove, wherever they move in the
/// list).
pub(super) type QuorumState = BTreeMap<crate::config::ServiceIdentity, bool>;

/// The dataplane plan for `config` given MACs, health and quorum. Updates
/// `quorum` with each service's state (and forgets services `config` no
/// longer has); returns the services (by position in `config`) whose
/// quorum changed (for the quorum_up / quorum_down scripts).
pub(super) fn plan(
    config: &Config,
    probes: &health::Probes,
    resolver: &MacResolver,
    board: &Board,
    quorum: &mut QuorumState,
) -> (Vec<ServicePlan>, Vec<(usize, bool)>) {
    let mut judged = QuorumState::new();
    let mut changed = Vec::new();
    let plans = config
        .virtual_server
        .iter()
        .enumerate()
        .map(|(i, vs)| {
            let id = vs.identity();
            let mut healthy_weight = 0u64;
            let mut backends: Vec<BackendPlan> = vs
                .real_server
                .iter()
                .map(|rs| {
                    let k = probes.of_server(id, rs.address);
                    let (healthy, dynamic) = server_health(board, vs, k);
                    let weight = dynamic.unwrap_or(rs.weight);
                    if healthy {
                        healthy_weight += u64::from(weight);
                    }
                    let pool_weight = weight;
                    let weight = if healthy { weight } else { 0 };
                    BackendPlan {
                        address: rs.address,
                        weight,
                        pool_weight,
                        mac: resolver.mac(&rs.address, vs.lb_kind == crate::config::LbKind::Tun),
                        // Failed with inhibit_on_failure: only drains
                        // (stays in IPVS at weight 0).
                        failed: !healthy && !rs.inhibit_on_failure,
                    }
                })
                .collect();
            let before = quorum.get(&id).copied();
            let up = quorum_next(vs, before, healthy_weight);
            judged.insert(id, up);
            if before.is_some() && before != Some(up) {
                changed.push((i, up));
            }
            if !up && let Some(sorry) = vs.sorry_server {
                backends = vec![BackendPlan {
                    address: sorry,
                    weight: 1,
                    mac: resolver.mac(&sorry, false),
                    failed: false,
                    pool_weight: 1,
                }];
            }
            ServicePlan {
                address: vs.address(),
                port: vs.port(),
                protocol: vs.protocol,
                scheduler: vs.scheduler,
                persistence_timeout: vs.persistence_timeout,
                backends,
                members: if vs.group.is_some() {
                    vs.members.clone()
                } else {
                    Vec::new()
                },
                lb_kind: vs.lb_kind,
                fwmark: vs.fwmark,
            }
        })
        .collect();
    // Only `config`'s services: a removed one's state goes with it.
    *quorum = judged;
    (plans, changed)
}

impl Daemon {
    /// Whether `vs` has quorum (yes until it has been judged).
    pub(super) fn quorum_up(&self, vs: &crate::config::VirtualServer) -> bool {
        self.quorum.get(&vs.identity()).copied().unwrap_or(true)
    }

    /// Re-plans and applies when anything changed.
    pub(super) fn sync(&mut self) -> Result<(), DataplaneError> {
        let (next, quorum_changes) = plan(
            &self.config,
            &self.probes,
            &self.resolver,
            &self.board,
            &mut self.quorum,
        );
        self.quorum_changed(quorum_changes);
        self.install(next)
    }

    /// Runs the quorum scripts of the services (by position in the
    /// running config) whose quorum changed, and tells VRRP every
    /// service's quorum.
    pub(super) fn quorum_changed(&mut self, quorum_changes: Vec<(usize, bool)>) {
        for (i, up) in quorum_changes {
            let vs = &self.config.virtual_server[i];
            let name = vs.id();
            if up {
                info!(service = %name, "quorum gained");
            } else {
                warn!(service = %name, sorry_server = ?vs.sorry_server, "quorum lost");
            }
            let script = if up { &vs.quorum_up } else { &vs.quorum_down };
            if let Some(argv) = script.as_deref().and_then(shlex::split) {
                // Off the loop; cut at 60 s with everything it started.
                crate::scripts::spawn_logged(argv, Duration::from_secs(60), "quorum");
            }
        }
        // VRRP's `track_virtual_server` sees quorum changes at once.
        let quorum: BTreeMap<crate::config::ServiceAddr, bool> = self
            .config
            .virtual_server
            .iter()
            .map(|vs| (vs.id(), self.quorum_up(vs)))
            .collect();
        self.quorum_tx.send_if_modified(|q| {
            let changed = *q != quorum;
            *q = quorum;
            changed
        });
    }

    /// Applies `next` to the dataplane unless it is what is applied.
    fn install(&mut self, next: Vec<ServicePlan>) -> Result<(), DataplaneError> {
        if self.applied.as_ref() == Some(&next) {
            return Ok(());
        }
        self.dataplane
            .apply(&next, self.config.global.udp_timeout, self.link)?;
        for s in &next {
            let ready = s
                .backends
                .iter()
                .filter(|b| b.mac.is_some() && b.weight > 0)
                .count();
            let before = self.applied.as_ref().and_then(|a| {
                a.iter().find(|p| p.key() == s.key()).map(|p| {
                    p.backends
                        .iter()
                        .filter(|b| b.mac.is_some() && b.weight > 0)
                        .count()
                })
            });
            if before != Some(ready) {
                info!(service = %s.name(), real_servers = ready, "forwarding");
            }
        }
        self.applied = Some(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::macs::Resolution;

    #[test]
    fn plan_carries_weights_and_known_macs() {
        let config = Config::parse(
            Path::new("t.toml"),
            r#"
[global]
interface = "eth0"
[[virtual_server]]
address = "10.0.0.100"
port = 80
scheduler = "sh"
persistence_timeout = 30
  [[virtual_server.real_server]]
  address = "10.0.0.11"
  [[virtual_server.real_server]]
  address = "10.0.0.12"
  [[virtual_server.real_server]]
  address = "10.0.0.13"
  weight = 0
"#,
        )
        .expect("valid");
        let mut resolver = MacResolver::new(&config);
        let mac = Mac([2, 0, 0, 0, 0, 11]);
        let a11: IpAddr = "10.0.0.11".parse().expect("ip");
        resolver.servers.insert(a11, Resolution::Resolved(mac));
        let board = Board::default();
        let probes = health::Probes::of(&config);
        let (p, _) = plan(&config, &probes, &resolver, &board, &mut BTreeMap::new());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].port, 80);
        assert_eq!(p[0].persistence_timeout, 30);
        assert_eq!(p[0].scheduler, crate::config::Scheduler::Sh);
        assert_eq!(p[0].backends.len(), 3);
        assert_eq!(p[0].backends[0].mac, Some(mac));
        assert_eq!(p[0].backends[1].mac, None, "10.0.0.12 is unresolved");
        assert_eq!(p[0].backends[2].weight, 0);
    }
}
