//! The daemon: one event loop that keeps the dataplane equal to the config
//! and to what the kernel knows about the real servers.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    dataplane::{
        BackendPlan, ServicePlan,
        xdp::{XdpDataplane, XdpError},
    },
    neighbor::{Mac, Neighbor, NeighborError, Neighbors},
};

/// How often unresolved real servers are retried.
const RESOLVE_RETRY: Duration = Duration::from_millis(200);
/// How often the neighbour table is re-read once everything is resolved.
const REFRESH: Duration = Duration::from_secs(1);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Neighbor(#[from] NeighborError),
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// What we know of one real server's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// Not known yet: asked the kernel, waiting for the answer.
    Pending,
    Resolved(Mac),
    /// The kernel gave up (no ARP/ND reply): not forwarded to.
    Failed,
}

/// Tracks real-server MACs, asking the kernel to resolve what is missing.
struct Resolver {
    servers: BTreeMap<IpAddr, Resolution>,
}

impl Resolver {
    fn new(config: &Config) -> Resolver {
        let servers = config
            .virtual_server
            .iter()
            .flat_map(|vs| {
                vs.real_server
                    .iter()
                    .map(|rs| (rs.address, Resolution::Pending))
            })
            .collect();
        Resolver { servers }
    }

    /// Re-reads the neighbour table; returns whether anything is unresolved.
    async fn refresh(&mut self, neighbors: &Neighbors) -> Result<bool, NeighborError> {
        let table = neighbors.dump().await?;
        let mut unresolved = false;
        for (addr, state) in self.servers.iter_mut() {
            let next = match table.get(addr) {
                Some(Neighbor::Resolved(mac)) => Resolution::Resolved(*mac),
                Some(Neighbor::Failed) => Resolution::Failed,
                // Missing (never asked, or aged out of the cache) or in
                // progress: keep what we had, and ask (again).
                Some(Neighbor::Incomplete) | None => *state,
            };
            if !matches!(table.get(addr), Some(Neighbor::Resolved(_)))
                && let Err(e) = neighbors.solicit(*addr).await
            {
                warn!(real_server = %addr, error = %e, "cannot ask the kernel to resolve real server");
            }
            if next != *state {
                match next {
                    Resolution::Resolved(mac) => {
                        info!(real_server = %addr, %mac, "real server MAC resolved")
                    }
                    Resolution::Failed => {
                        warn!(real_server = %addr, "real server does not answer ARP/ND: not forwarding to it")
                    }
                    Resolution::Pending => {}
                }
                *state = next;
            }
            if !matches!(state, Resolution::Resolved(_)) {
                unresolved = true;
            }
        }
        Ok(unresolved)
    }

    fn mac(&self, addr: &IpAddr) -> Option<Mac> {
        match self.servers.get(addr) {
            Some(Resolution::Resolved(mac)) => Some(*mac),
            _ => None,
        }
    }
}

/// The dataplane plan for `config` given the MACs known so far: servers
/// with weight 0 or no MAC take no traffic.
fn plan(config: &Config, resolver: &Resolver) -> Vec<ServicePlan> {
    config
        .virtual_server
        .iter()
        .filter_map(|vs| {
            let IpAddr::V4(address) = vs.address else {
                return None; // rejected by validation
            };
            let backends = vs
                .real_server
                .iter()
                .filter(|rs| rs.weight > 0)
                .filter_map(|rs| {
                    resolver.mac(&rs.address).map(|mac| BackendPlan {
                        address: rs.address,
                        mac,
                    })
                })
                .collect();
            Some(ServicePlan {
                address,
                port: vs.port,
                protocol: vs.protocol,
                backends,
            })
        })
        .collect()
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let g = &config.global;
    std::fs::create_dir_all(&g.state_dir).map_err(|source| DaemonError::StateDir {
        path: g.state_dir.display().to_string(),
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;

    let neighbors = Neighbors::open(&g.interface).await?;
    let link = neighbors.link();
    info!(
        router_id = %g.router_id,
        interface = %g.interface,
        mac = %link.mac,
        virtual_servers = config.virtual_server.len(),
        "director starting"
    );
    let mut dataplane = XdpDataplane::attach(&g.interface, g.xdp_mode)?;

    let mut resolver = Resolver::new(&config);
    let mut applied: Option<Vec<ServicePlan>> = None;
    let mut forwarding: HashMap<(IpAddr, u16), usize> = HashMap::new();
    let result = loop {
        let delay = match resolver.refresh(&neighbors).await {
            Ok(true) => RESOLVE_RETRY,
            Ok(false) => REFRESH,
            Err(e) => {
                error!(error = %e, "cannot read the neighbour table");
                REFRESH
            }
        };
        let next = plan(&config, &resolver);
        if applied.as_ref() != Some(&next) {
            if let Err(e) = dataplane.apply(&next) {
                break Err(e.into());
            }
            for s in &next {
                let n = s.backends.len();
                if forwarding.insert((s.address.into(), s.port), n) != Some(n) {
                    info!(
                        service = %format!("{}:{}/{}", s.address, s.port, s.protocol),
                        real_servers = n,
                        "forwarding"
                    );
                }
            }
            applied = Some(next);
        }
        tokio::select! {
            _ = sigint.recv() => { info!(signal = "SIGINT", "stopping"); break Ok(()); }
            _ = sigterm.recv() => { info!(signal = "SIGTERM", "stopping"); break Ok(()); }
            _ = tokio::time::sleep(delay) => {}
        }
    };
    if let Some(plan) = &applied {
        for s in plan {
            if let Ok(t) = dataplane.service_traffic(s) {
                info!(
                    service = %format!("{}:{}/{}", s.address, s.port, s.protocol),
                    packets = t.packets,
                    bytes = t.bytes,
                    "forwarded in total"
                );
            }
        }
    }
    dataplane.detach();
    info!("director stopped");
    result
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn plan_leaves_out_unresolved_and_zero_weight_servers() {
        let config = Config::parse(
            Path::new("t.toml"),
            r#"
[global]
interface = "eth0"
[[virtual_server]]
address = "10.0.0.100"
port = 80
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
        let mut resolver = Resolver::new(&config);
        let mac = Mac([2, 0, 0, 0, 0, 11]);
        let a11: IpAddr = "10.0.0.11".parse().expect("ip");
        let a13: IpAddr = "10.0.0.13".parse().expect("ip");
        resolver.servers.insert(a11, Resolution::Resolved(mac));
        resolver.servers.insert(a13, Resolution::Resolved(mac));
        let p = plan(&config, &resolver);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].port, 80);
        assert_eq!(
            p[0].backends,
            vec![BackendPlan { address: a11, mac }],
            "10.0.0.12 is unresolved and 10.0.0.13 has weight 0"
        );
    }
}
