//! BGP announcements through BIRD: which VIPs, when.

use super::*;

impl Daemon {
    /// Makes BIRD announce the VIPs that should be: virtual servers with
    /// quorum (and, in `both` mode, whose VRRP instance is master here),
    /// each after `announce_delay`; nothing while draining, nor while flow
    /// sync still awaits the peers' flows after a start.
    pub(super) fn announce(&mut self) {
        let Some(b) = self.config.global.bgp.clone() else {
            return;
        };
        if self.bird.is_none() {
            return;
        }
        let masters: Vec<IpAddr> = self
            .vrrp_states
            .borrow()
            .values()
            .filter(|p| p.state == crate::vrrp::fsm::State::Master)
            .flat_map(|p| p.addresses.iter().copied())
            .collect();
        let now = std::time::Instant::now();
        let mut eligible = BTreeMap::new();
        // A starting director announces nothing before its peers' flows
        // are in (or `preempt_hold` passed), as it does not preempt: the
        // router would send it connections it cannot place yet.
        let awaiting_flows = self.sync.as_ref().is_some_and(|s| s.holding());
        if !self.draining && !awaiting_flows {
            for vs in &self.config.virtual_server {
                let up = self.quorum_up(vs);
                let vrrp_ok =
                    b.mode != crate::config::BgpMode::Both || masters.contains(&vs.address());
                if up && vrrp_ok {
                    let since = self.eligible.get(&vs.address()).copied().unwrap_or(now);
                    eligible.insert(vs.address(), since);
                }
            }
        }
        self.eligible = eligible;
        let delay = Duration::from_secs_f64(b.announce_delay);
        let wanted: std::collections::BTreeSet<IpAddr> = self
            .eligible
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= delay)
            .map(|(a, _)| *a)
            .collect();
        if let Some(bird) = self.bird.as_ref() {
            bird.set(&wanted);
        }
    }

    /// Withdraws every route for good (nothing is announced again) and
    /// waits for BIRD to confirm; returns how long the routers should then
    /// be given to move traffic away (`bgp.withdraw_wait`). A drain and a
    /// stop for good both end this way.
    pub(super) async fn withdraw_all(&mut self) -> Duration {
        self.draining = true;
        self.announce();
        self.withdrawn().await;
        let wait = self
            .config
            .global
            .bgp
            .as_ref()
            .map_or(0.0, |b| b.withdraw_wait);
        Duration::from_secs_f64(wait)
    }

    /// Waits until BIRD has withdrawn every route (bounded: a hung BIRD
    /// must not keep a drain or a shutdown waiting).
    pub(super) async fn withdrawn(&self) {
        if let Some(bird) = self.bird.as_ref()
            && !bird.settled(Duration::from_secs(12)).await
        {
            warn!("BIRD did not confirm the withdrawal in time");
        }
    }
}
