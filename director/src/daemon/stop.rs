//! The stop: for good (flows sent to the peers once more, routes withdrawn
//! and waited for, masters releasing the VIP with priority 0, BFD peers told
//! we went down), or handing over to the next process (a restart: BFD
//! sessions and VRRP instances recorded in the handover file, nothing
//! released). Then the listeners close and the dataplane is released
//! (it stays pinned, forwarding).

use super::*;

impl Daemon {
    /// Stops as `stopped` says; returns how it stopped.
    pub(super) async fn stop(mut self, stopped: Stopped) -> Stopped {
        // A restart hands over only if the next process can start: a config
        // that no longer loads would leave the VIP held by no daemon.
        let stopped = match stopped {
            Stopped::Restart | Stopped::Reexec => match Config::load(&self.config_path) {
                Ok(_) => stopped,
                Err(e) => {
                    warn!(error = %e, "the config file no longer loads, so the next process cannot start: stopping for good (the VIP moves to a backup)");
                    Stopped::Stop
                }
            },
            Stopped::Stop => Stopped::Stop,
        };
        let handing_over = stopped != Stopped::Stop;
        // (A restart keeps the pinned flow table: nothing moves.)
        if !handing_over {
            self.send_every_exception().await;
        }
        // BGP: withdraw, and give the routers time to move traffic away (not
        // for a restart: the next process announces the same).
        if self.bird.is_some() && !self.draining && !handing_over {
            let wait = self.withdraw_all().await;
            tokio::time::sleep(wait).await;
        }
        // For a restart, the next process is handed what we hold: BFD
        // sessions first (their peers are told to wait longer), then VRRP
        // (one last ordinary advert). Otherwise masters hand over (priority
        // 0) and BFD peers learn we went administratively down.
        if handing_over {
            let bfd = match self.bfd.take() {
                Some(bfd) => bfd.hand_over().await,
                None => Vec::new(),
            };
            let instances = match self.vrrp.take() {
                Some(vrrp) => vrrp.hand_over().await,
                None => Vec::new(),
            };
            let h = crate::handover::Handover::new(instances, bfd);
            if let Err(e) = crate::handover::write(&self.config.global.state_dir, &h) {
                error!(error = %e, "cannot write the handover file: the next process starts afresh");
            }
        } else {
            if let Some(vrrp) = self.vrrp.take() {
                vrrp.stop().await;
            }
            if let Some(bfd) = self.bfd.take() {
                bfd.stop().await;
            }
        }
        for listener in &self.listeners {
            listener.abort();
        }
        drop(self.checks.take());
        let _ = std::fs::remove_file(self.config.global.state_dir.join(control::SOCKET));
        if let Some(plan) = &self.applied {
            for s in plan {
                if let Ok(t) = self.dataplane.service_traffic(s) {
                    info!(
                        service = %s.name(),
                        packets = t.packets,
                        bytes = t.bytes,
                        new_flows = t.new_flows,
                        "forwarded in total"
                    );
                }
            }
        }
        self.dataplane.release();
        match stopped {
            Stopped::Stop => info!("director stopped"),
            _ => info!("director stopped, handed over to the next process"),
        }
        stopped
    }
}
