//! What the dataplane should hold: each service's real servers with
//! their weights and MACs, and quorum; a pure function of the config, the
//! health board and the resolved MACs (unit-tested), and the step that
//! applies it.

use super::*;

/// Health of one real server of a service, as its checks judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Health {
    /// Every check passes (true with no checks).
    pub(super) healthy: bool,
    /// Not judged yet: a check has no verdict and `alpha` starts servers
    /// down (not a failure: it never makes a service fail open).
    pub(super) unjudged: bool,
    /// The weight a `misc_dynamic` check asked for.
    pub(super) weight: Option<u32>,
}

pub(super) fn server_health(
    board: &Board,
    vs: &VirtualServer,
    keys: &[health::ProbeKey],
) -> Health {
    let mut h = Health {
        healthy: true,
        unjudged: false,
        weight: None,
    };
    let Ok(b) = board.lock() else {
        return h;
    };
    for key in keys {
        if let Some(p) = b.get(key) {
            h.healthy &= p.healthy;
            h.weight = h.weight.or(p.weight);
        } else if vs.alpha {
            h.healthy = false;
            h.unjudged = true;
        }
    }
    h
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

/// Slow start counts weights in tenths: a server that comes back gets a
/// tenth of its weight, two tenths after a ninth of `slow_start`, ...
/// nine tenths for the last ninth, and its whole weight once `slow_start`
/// has passed.
const RAMP_STEPS: u32 = 10;

/// What the daemon remembers of one service between plans.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ServiceMemory {
    /// Whether it has quorum (hysteresis and the quorum scripts go on
    /// from it).
    pub(super) quorum: bool,
    /// Why it fails open (none while it does not).
    pub(super) failing_open: Option<String>,
    /// Its real servers, by address.
    pub(super) servers: BTreeMap<IpAddr, ServerMemory>,
}

/// What the daemon remembers of one real server between plans.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct ServerMemory {
    /// Receiving new flows (healthy, or its service failing open; weight
    /// above 0).
    pub(super) serving: bool,
    /// When its slow start began (none when it is not ramping).
    pub(super) ramp_since: Option<std::time::Instant>,
    /// The weight new flows see now: its weight, or the ramp's share of
    /// it (0 when it gets no new flows).
    pub(super) effective_weight: f64,
}

/// Each service's memory, by what the service is (so a reload keeps the
/// state of the services it does not remove, wherever they move in the
/// list).
pub(super) type Memory = BTreeMap<crate::config::ServiceIdentity, ServiceMemory>;

/// One plan and what changed with it.
#[derive(Debug, Default)]
pub(super) struct Planned {
    pub(super) plans: Vec<ServicePlan>,
    /// Services (by position) whose quorum changed, for the quorum_up /
    /// quorum_down scripts.
    pub(super) quorum_changes: Vec<(usize, bool)>,
    /// Services (by position) that began (with why) or ended failing open.
    pub(super) fail_open_changes: Vec<(usize, Option<String>)>,
    /// When a slow start takes its next step (the plan is due again).
    pub(super) next_step: Option<std::time::Instant>,
}

/// Why `vs` fails open, if it does: more than `fail_open` percent of its
/// pool's weight fails its checks (servers not judged yet do not count).
fn fails_open(vs: &VirtualServer, verdicts: &[(u32, Health)]) -> Option<String> {
    let limit = u64::from(vs.fail_open?);
    let total: u64 = verdicts.iter().map(|(w, _)| u64::from(*w)).sum();
    let failing: Vec<&(u32, Health)> = verdicts
        .iter()
        .filter(|(w, h)| *w > 0 && !h.healthy && !h.unjudged)
        .collect();
    let failed: u64 = failing.iter().map(|(w, _)| u64::from(*w)).sum();
    (total > 0 && failed * 100 > limit * total).then(|| {
        format!(
            "{} of {} real servers fail their checks (weight {failed} of {total}, more than fail_open = {limit}%)",
            failing.len(),
            verdicts.len()
        )
    })
}

/// The dataplane plan for `config` given MACs, health and what `memory`
/// holds of each service (quorum, failing open, slow starts) at `now`.
/// Updates `memory` (and forgets services `config` no longer has).
pub(super) fn plan(
    config: &Config,
    probes: &health::Probes,
    resolver: &MacResolver,
    board: &Board,
    memory: &mut Memory,
    now: std::time::Instant,
) -> Planned {
    let mut next = Memory::new();
    let mut out = Planned::default();
    for (i, vs) in config.virtual_server.iter().enumerate() {
        let id = vs.identity();
        let before = memory.get(&id);
        let verdicts: Vec<(u32, Health)> = vs
            .real_server
            .iter()
            .map(|rs| {
                let h = server_health(board, vs, probes.of_server(id, rs.address));
                (h.weight.unwrap_or(rs.weight), h)
            })
            .collect();
        let failing_open = fails_open(vs, &verdicts);
        let was_open = before.is_some_and(|m| m.failing_open.is_some());
        if was_open != failing_open.is_some() {
            out.fail_open_changes.push((i, failing_open.clone()));
        }
        // Who serves, and who ramps (and to which step).
        let mut servers = BTreeMap::new();
        let mut steps = Vec::with_capacity(vs.real_server.len());
        let mut healthy_weight = 0u64;
        for (rs, (weight, h)) in vs.real_server.iter().zip(&verdicts) {
            let healthy = h.healthy || failing_open.is_some();
            let serving = healthy && *weight > 0;
            if healthy {
                healthy_weight += u64::from(*weight);
            }
            let ramp = vs.slow_start_of(rs);
            let since = match before.map(|m| m.servers.get(&rs.address)) {
                _ if ramp.is_zero() || !serving => None,
                // Serving already: its ramp goes on, or is over.
                Some(Some(p)) if p.serving => p
                    .ramp_since
                    .filter(|t| now.saturating_duration_since(*t) < ramp),
                // Back (its checks pass again, or it was enabled), or added
                // to a service this daemon already forwards.
                Some(_) => Some(now),
                // The daemon's first plan: every server at once.
                None => None,
            };
            let step = since.map(|t| {
                let elapsed = now.saturating_duration_since(t);
                let intervals = RAMP_STEPS - 1;
                let k =
                    ((elapsed.as_secs_f64() / ramp.as_secs_f64()) * f64::from(intervals)) as u32;
                let k = k.min(intervals - 1);
                let due = t + ramp.mul_f64(f64::from(k + 1) / f64::from(intervals));
                out.next_step = Some(out.next_step.map_or(due, |n| n.min(due)));
                k + 1
            });
            steps.push((healthy, serving, step));
            servers.insert(
                rs.address,
                ServerMemory {
                    serving,
                    ramp_since: since,
                    effective_weight: 0.0,
                },
            );
        }
        // While a server ramps, weights count in tenths (Maglev's shares
        // are relative: the table of the others is the same).
        let scale = if steps.iter().any(|(_, _, s)| s.is_some()) {
            RAMP_STEPS
        } else {
            1
        };
        let mut backends: Vec<BackendPlan> = vs
            .real_server
            .iter()
            .zip(&verdicts)
            .zip(&steps)
            .map(|((rs, (weight, _)), (healthy, serving, step))| {
                let pool_weight = weight.saturating_mul(scale);
                let planned = match (serving, step) {
                    (false, _) => 0,
                    (true, Some(k)) => weight.saturating_mul(*k),
                    (true, None) => pool_weight,
                };
                if let Some(m) = servers.get_mut(&rs.address) {
                    m.effective_weight = f64::from(planned) / f64::from(scale);
                }
                BackendPlan {
                    address: rs.address,
                    weight: planned,
                    pool_weight,
                    mac: resolver.mac(&rs.address, vs.lb_kind == crate::config::LbKind::Tun),
                    // Failed with inhibit_on_failure: only drains (stays
                    // in IPVS at weight 0).
                    failed: !healthy && !rs.inhibit_on_failure,
                }
            })
            .collect();
        let was = before.map(|m| m.quorum);
        let up = quorum_next(vs, was, healthy_weight);
        if was.is_some() && was != Some(up) {
            out.quorum_changes.push((i, up));
        }
        if !up && let Some(sorry) = vs.sorry_server {
            // The sorry server has every new flow: no real server any.
            for m in servers.values_mut() {
                m.effective_weight = 0.0;
            }
            backends = vec![BackendPlan {
                address: sorry,
                weight: 1,
                mac: resolver.mac(&sorry, false),
                failed: false,
                pool_weight: 1,
            }];
        }
        out.plans.push(ServicePlan {
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
        });
        next.insert(
            id,
            ServiceMemory {
                quorum: up,
                failing_open,
                servers,
            },
        );
    }
    // Only `config`'s services: a removed one's state goes with it.
    *memory = next;
    out
}

impl Daemon {
    /// Whether `vs` has quorum (yes until it has been judged).
    pub(super) fn quorum_up(&self, vs: &crate::config::VirtualServer) -> bool {
        self.memory.get(&vs.identity()).is_none_or(|m| m.quorum)
    }

    /// Re-plans and applies when anything changed.
    pub(super) fn sync(&mut self) -> Result<(), DataplaneError> {
        let planned = plan(
            &self.config,
            &self.probes,
            &self.resolver,
            &self.board,
            &mut self.memory,
            std::time::Instant::now(),
        );
        self.next_step = planned.next_step;
        self.planned_changes(planned.quorum_changes, planned.fail_open_changes);
        self.install(planned.plans)
    }

    /// Logs the services that began or ended failing open.
    fn fail_open_changed(&self, changes: Vec<(usize, Option<String>)>) {
        for (i, why) in changes {
            let service = self.config.virtual_server[i].id();
            match why {
                Some(why) => {
                    warn!(%service, %why, "failing open: every real server keeps receiving new flows")
                }
                None => {
                    info!(%service, "no longer failing open: failed real servers leave the pool")
                }
            }
        }
    }

    /// What a plan changed: quorum (its scripts, VRRP's tracking) and
    /// failing open (its log lines).
    pub(super) fn planned_changes(
        &mut self,
        quorum: Vec<(usize, bool)>,
        fail_open: Vec<(usize, Option<String>)>,
    ) {
        self.fail_open_changed(fail_open);
        self.quorum_changed(quorum);
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
        let p = plan(
            &config,
            &probes,
            &resolver,
            &board,
            &mut BTreeMap::new(),
            std::time::Instant::now(),
        )
        .plans;
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].port, 80);
        assert_eq!(p[0].persistence_timeout, 30);
        assert_eq!(p[0].scheduler, crate::config::Scheduler::Sh);
        assert_eq!(p[0].backends.len(), 3);
        assert_eq!(p[0].backends[0].mac, Some(mac));
        assert_eq!(p[0].backends[1].mac, None, "10.0.0.12 is unresolved");
        assert_eq!(p[0].backends[2].weight, 0);
    }

    const POOL: &str = r#"
[global]
interface = "eth0"
[[virtual_server]]
address = "10.0.0.100"
port = 80
fail_open = 50
slow_start = 10
  [[virtual_server.real_server]]
  address = "10.0.0.11"
  tcp_check = {}
  [[virtual_server.real_server]]
  address = "10.0.0.12"
  tcp_check = {}
  [[virtual_server.real_server]]
  address = "10.0.0.13"
  tcp_check = {}
"#;

    /// Plans `config` with the servers of `failed` failing their checks.
    struct Bench {
        config: Config,
        probes: health::Probes,
        resolver: MacResolver,
        board: Board,
        memory: Memory,
    }

    impl Bench {
        fn new(text: &str) -> Bench {
            let config = Config::parse(Path::new("t.toml"), text).expect("valid");
            Bench {
                probes: health::Probes::of(&config),
                resolver: MacResolver::new(&config),
                board: Board::default(),
                memory: Memory::new(),
                config,
            }
        }

        /// Sets every probe of the real server ending in `last` to `healthy`.
        fn set(&self, last: u8, healthy: bool) {
            let vs = &self.config.virtual_server[0];
            let addr = IpAddr::from([10, 0, 0, last]);
            let mut b = self.board.lock().expect("board");
            for k in self.probes.of_server(vs.identity(), addr) {
                b.insert(k.clone(), health::ProbeState::new(healthy));
            }
        }

        fn plan(&mut self, now: std::time::Instant) -> Planned {
            plan(
                &self.config,
                &self.probes,
                &self.resolver,
                &self.board,
                &mut self.memory,
                now,
            )
        }

        /// The planned weights (and whether each is failed) of service 0.
        fn weights(&mut self, now: std::time::Instant) -> Vec<(u32, bool)> {
            self.plan(now).plans[0]
                .backends
                .iter()
                .map(|b| (b.weight, b.failed))
                .collect()
        }
    }

    #[test]
    fn a_pool_fails_open_past_its_share_and_closes_when_enough_pass() {
        // (With slow_start, a failed server that fail-open brings back
        // ramps as any server that comes back.)
        let mut b = Bench::new(&POOL.replace("slow_start = 10\n", ""));
        let t = std::time::Instant::now();
        assert_eq!(b.weights(t), [(1, false); 3]);
        // One of three (33%): the failed one leaves.
        b.set(11, false);
        let p = b.plan(t);
        assert!(p.fail_open_changes.is_empty());
        let w: Vec<u32> = p.plans[0].backends.iter().map(|x| x.weight).collect();
        assert_eq!(w, [0, 1, 1]);
        // Two of three (67% > 50%): every server keeps new flows, quorum
        // holds, the change is reported once.
        b.set(12, false);
        let p = b.plan(t);
        assert_eq!(p.fail_open_changes.len(), 1);
        let why = p.fail_open_changes[0].1.as_deref().expect("failing open");
        assert!(why.contains("2 of 3") && why.contains("50%"), "{why}");
        assert!(p.quorum_changes.is_empty());
        assert!(
            p.plans[0]
                .backends
                .iter()
                .all(|x| x.weight > 0 && !x.failed)
        );
        assert!(b.plan(t).fail_open_changes.is_empty(), "reported once");
        b.set(13, false);
        assert_eq!(b.weights(t), [(1, false); 3], "all failed: still open");
        // Two pass again: one of three fails, it leaves, the end reported.
        b.set(11, true);
        b.set(12, true);
        let p = b.plan(t);
        assert_eq!(p.fail_open_changes, [(0, None)]);
        let w: Vec<(u32, bool)> = p.plans[0]
            .backends
            .iter()
            .map(|x| (x.weight, x.failed))
            .collect();
        assert_eq!(w, [(1, false), (1, false), (0, true)]);
    }

    #[test]
    fn without_fail_open_a_failed_pool_empties_and_unjudged_servers_never_open_it() {
        let mut b = Bench::new(&POOL.replace("fail_open = 50\n", ""));
        let t = std::time::Instant::now();
        for last in [11, 12, 13] {
            b.set(last, false);
        }
        assert_eq!(b.weights(t), [(0, true); 3]);
        // alpha: not yet judged is down, but not failing.
        let mut b = Bench::new(&POOL.replace("fail_open = 50", "fail_open = 50\nalpha = true"));
        let p = b.plan(t);
        assert!(p.fail_open_changes.is_empty());
        assert!(p.plans[0].backends.iter().all(|x| x.weight == 0));
    }

    #[test]
    fn with_the_sorry_server_in_no_real_server_has_a_weight() {
        let text = POOL.replace(
            "fail_open = 50\n",
            "quorum = 2\nsorry_server = \"10.0.0.30\"\n",
        );
        let mut b = Bench::new(&text);
        let t = std::time::Instant::now();
        b.plan(t);
        b.set(11, false);
        b.set(12, false);
        let p = b.plan(t);
        assert_eq!(p.plans[0].backends[0].address, IpAddr::from([10, 0, 0, 30]));
        let weights: Vec<f64> = b
            .memory
            .values()
            .next()
            .expect("service")
            .servers
            .values()
            .map(|m| m.effective_weight)
            .collect();
        assert_eq!(weights, [0.0; 3]);
    }

    #[test]
    fn a_server_that_comes_back_ramps_in_tenths_over_slow_start() {
        let mut b = Bench::new(POOL);
        let t = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let ms = std::time::Duration::from_millis;
        // The daemon's first plan: no ramp.
        assert_eq!(b.weights(t), [(1, false); 3]);
        assert!(b.plan(t).next_step.is_none());
        b.set(12, false);
        assert_eq!(b.weights(t + s(1))[1], (0, true));
        // Back: a tenth of its weight (the others count in tenths too).
        b.set(12, true);
        let back = t + s(2);
        let p = b.plan(back);
        let w: Vec<u32> = p.plans[0].backends.iter().map(|x| x.weight).collect();
        assert_eq!(w, [10, 1, 10]);
        assert_eq!(p.plans[0].backends[1].pool_weight, 10);
        assert_eq!(p.next_step, Some(back + s(10).mul_f64(1.0 / 9.0)));
        assert_eq!(
            b.memory
                .values()
                .next()
                .map(|m| m.servers[&IpAddr::from([10, 0, 0, 12])].effective_weight),
            Some(0.1)
        );
        // Each ninth of slow_start, a tenth more.
        let p = b.plan(back + ms(1500));
        assert_eq!(p.plans[0].backends[1].weight, 2);
        assert_eq!(p.next_step, Some(back + s(10).mul_f64(2.0 / 9.0)));
        assert_eq!(b.plan(back + ms(9500)).plans[0].backends[1].weight, 9);
        // Done: whole weights again, nothing due.
        let p = b.plan(back + s(10));
        let w: Vec<u32> = p.plans[0].backends.iter().map(|x| x.weight).collect();
        assert_eq!(w, [1, 1, 1]);
        assert!(p.next_step.is_none());
        // Failing again mid-ramp restarts the ramp when it is back.
        b.set(12, false);
        b.plan(back + s(11));
        b.set(12, true);
        assert_eq!(b.plan(back + s(12)).plans[0].backends[1].weight, 1);
    }

    #[test]
    fn a_server_a_reload_adds_ramps_and_the_others_keep_their_state() {
        let mut b = Bench::new(POOL);
        let t = std::time::Instant::now();
        b.plan(t);
        let more = POOL.to_string()
            + "  [[virtual_server.real_server]]\n  address = \"10.0.0.14\"\n  weight = 2\n";
        let mut after = Bench::new(&more);
        after.memory = b.memory.clone();
        let p = after.plan(t + std::time::Duration::from_secs(1));
        let w: Vec<u32> = p.plans[0].backends.iter().map(|x| x.weight).collect();
        assert_eq!(w, [10, 10, 10, 2]);
    }
}
