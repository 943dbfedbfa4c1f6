//! Real servers' MACs: from the kernel's neighbour table (a tunnel
//! server's is its next hop's), asking for what is missing.

use super::*;

/// What we know of one real server's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolution {
    /// Not known yet: asked the kernel, waiting for the answer.
    Pending,
    Resolved(Mac),
    /// The kernel gave up (no ARP/ND reply): not forwarded to.
    Failed,
}

/// Tracks real-server MACs, asking the kernel to resolve what is missing.
/// A direct-routing server's MAC is its own; a tunnel server's is its
/// next hop's (the kernel's route to it, on our interface).
pub(super) struct MacResolver {
    /// Neighbours to resolve: direct-routing servers and next hops.
    pub(super) servers: BTreeMap<IpAddr, Resolution>,
    /// Tunnel real servers and their next hop (`None`: no route to it out
    /// of our interface).
    pub(super) tunnels: BTreeMap<IpAddr, Option<IpAddr>>,
    /// Direct-routing real servers (and sorry servers).
    pub(super) direct: BTreeSet<IpAddr>,
    /// MACs a previous daemon used for tunnel servers (their next hop's),
    /// taken until the kernel answers.
    pub(super) seeds: HashMap<IpAddr, Mac>,
}

impl MacResolver {
    pub(super) fn new(config: &Config) -> MacResolver {
        let mut direct = BTreeSet::new();
        let mut tunnels = BTreeMap::new();
        for vs in &config.virtual_server {
            for rs in &vs.real_server {
                if vs.lb_kind == crate::config::LbKind::Tun {
                    tunnels.insert(rs.address, None);
                } else {
                    direct.insert(rs.address);
                }
            }
            direct.extend(vs.sorry_server);
        }
        let servers = direct.iter().map(|a| (*a, Resolution::Pending)).collect();
        MacResolver {
            servers,
            tunnels,
            direct,
            seeds: HashMap::new(),
        }
    }

    /// Looks up the next hop of every tunnel real server again.
    pub(super) async fn route_tunnels(
        &mut self,
        neighbors: &Neighbors,
    ) -> Result<(), NeighborError> {
        let index = neighbors.link().index;
        for (addr, via) in self.tunnels.iter_mut() {
            let next = match neighbors.route_to(*addr).await? {
                Some((oif, gateway)) if oif == index => Some(gateway.unwrap_or(*addr)),
                _ => None,
            };
            if next != *via {
                match next {
                    Some(hop) => {
                        info!(real_server = %addr, next_hop = %hop, "tunnel real server routed")
                    }
                    None => warn!(
                        real_server = %addr,
                        "no route to tunnel real server out of our interface: not forwarding to it"
                    ),
                }
                *via = next;
            }
        }
        let wanted: BTreeSet<IpAddr> = self
            .direct
            .iter()
            .copied()
            .chain(self.tunnels.values().flatten().copied())
            .collect();
        self.servers.retain(|a, _| wanted.contains(a));
        for a in wanted {
            self.servers.entry(a).or_insert(Resolution::Pending);
        }
        // A restart keeps forwarding to tunnel servers while the kernel
        // re-resolves their next hop.
        for (addr, via) in &self.tunnels {
            if let (Some(hop), Some(mac)) = (via, self.seeds.remove(addr))
                && let Some(state) = self.servers.get_mut(hop)
                && *state == Resolution::Pending
            {
                *state = Resolution::Resolved(mac);
            }
        }
        Ok(())
    }

    /// Re-reads the routes to tunnel servers and the neighbour table;
    /// returns whether anything is unresolved.
    pub(super) async fn refresh(&mut self, neighbors: &Neighbors) -> Result<bool, NeighborError> {
        self.route_tunnels(neighbors).await?;
        let table = neighbors.dump().await?;
        let mut unresolved = self.tunnels.values().any(Option::is_none);
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
                match (*state, next) {
                    (Resolution::Resolved(old), Resolution::Resolved(mac)) => {
                        info!(real_server = %addr, old = %old, new = %mac, "real server MAC changed")
                    }
                    (_, Resolution::Resolved(mac)) => {
                        info!(real_server = %addr, %mac, "real server MAC resolved")
                    }
                    (_, Resolution::Failed) => {
                        warn!(real_server = %addr, "real server does not answer ARP/ND: not forwarding to it")
                    }
                    (_, Resolution::Pending) => {}
                }
                *state = next;
            }
            if !matches!(state, Resolution::Resolved(_)) {
                unresolved = true;
            }
        }
        Ok(unresolved)
    }

    /// Starts from the MACs a previous daemon used, so a restart does not
    /// take servers out while the kernel re-resolves them.
    pub(super) fn seed(&mut self, known: Vec<(IpAddr, Mac)>) {
        for (addr, mac) in known {
            if let Some(state) = self.servers.get_mut(&addr)
                && *state == Resolution::Pending
            {
                *state = Resolution::Resolved(mac);
            }
            if self.tunnels.contains_key(&addr) {
                self.seeds.insert(addr, mac);
            }
        }
    }

    /// Every resolved MAC: of each neighbour, and of each tunnel real
    /// server (its next hop's, where `dr_check` sends its probe).
    pub(super) fn resolved(&self) -> HashMap<IpAddr, Mac> {
        let mut out: HashMap<IpAddr, Mac> = self
            .servers
            .iter()
            .filter_map(|(a, r)| match r {
                Resolution::Resolved(m) => Some((*a, *m)),
                _ => None,
            })
            .collect();
        for addr in self.tunnels.keys() {
            if let Some(mac) = self.mac(addr, true) {
                out.entry(*addr).or_insert(mac);
            }
        }
        out
    }

    /// The MAC frames for real server `addr` go to: its own (direct
    /// routing), or its next hop's (`tunnel`).
    pub(super) fn mac(&self, addr: &IpAddr, tunnel: bool) -> Option<Mac> {
        let hop = if tunnel {
            (*self.tunnels.get(addr)?)?
        } else {
            *addr
        };
        match self.servers.get(&hop) {
            Some(Resolution::Resolved(mac)) => Some(*mac),
            _ => None,
        }
    }
}
