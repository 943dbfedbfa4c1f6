//! Adverts received: checked (every drop counted by reason) and fed to
//! the state machine.

use super::*;

impl Runner {
    /// An advert from the instance's own socket (`path` None) or a
    /// heartbeat path.
    pub(super) async fn received(&mut self, path: Option<usize>, p: Received) {
        match self.check(path, &p) {
            Ok(advert) => {
                self.state.last_advert = Some(p.arrived);
                self.bump(|s| {
                    s.adverts_received += 1;
                    s.peer_seen = true;
                });
                let hold = self
                    .inputs
                    .preempt_hold
                    .as_ref()
                    .is_some_and(|h| *h.borrow());
                self.machine.hold_preemption(hold);
                let actions = self.machine.step(
                    Event::Advert {
                        src: p.src,
                        priority: advert.priority,
                        interval_cs: advert.interval_cs,
                    },
                    p.arrived,
                );
                self.perform(actions).await;
            }
            Err(reason) => {
                let count = self.bump(|s| {
                    let n = s.rejected.entry(reason.label().to_string()).or_insert(0);
                    *n += 1;
                    *n
                });
                // Another virtual router on the link is normal: counted,
                // never logged. Others: one line per reason per interval.
                let now = std::time::Instant::now();
                let due = self
                    .state
                    .drop_logged
                    .get(&reason)
                    .is_none_or(|t| now.duration_since(*t) >= DROP_LOG_EVERY);
                if reason != Reject::Vrid && due {
                    self.state.drop_logged.insert(reason, now);
                    warn!(instance = %self.cfg.name, from = %p.src, %reason, count, "VRRP packet dropped (logged at most every 10 s per reason)");
                }
            }
        }
    }

    /// RFC 5798 7.1 / RFC 3768 7.1 receive checks ([`packet::accept`]).
    pub(super) fn check(&self, path: Option<usize>, p: &Received) -> Result<Advert, Reject> {
        let main = self.net.source();
        let (own, peers) = match path
            .and_then(|i| Some((self.net.path_source(i)?, self.parsed.path_peers.get(i)?)))
        {
            Some((on_path, peers)) => ([on_path, main], peers),
            None => ([main; 2], &self.cfg.unicast_peer),
        };
        let expect = packet::Expect {
            own: &own,
            vrid: self.cfg.virtual_router_id,
            version: self.cfg.version,
            interval_cs: self.cfg.advert_interval_cs(),
            password: self
                .cfg
                .authentication
                .as_ref()
                .map(|a| auth_data(&a.auth_pass)),
            peers,
            addresses: &self.parsed.vip_set,
        };
        packet::accept(&expect, &p.payload, p.src, p.dst, p.ttl)
    }
}
