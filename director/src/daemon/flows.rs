//! Flow sync's side of the loop: each round scans the flow table on a
//! blocking thread and sends the exceptions to the peers; what peers send is
//! imported; preemption is held back until every peer's flows are in (or
//! `preempt_hold` passed); a director stopping for good sends everything
//! once more.

use super::*;
use crate::dataplane::{
    flowsync::{FlowSync, Received},
    xdp::PinnedFlow,
};

/// A finished scan: the table version it read, the exceptions it found.
pub(super) type ScanDone = (u64, Vec<PinnedFlow>);

/// Flow sync as the loop runs it.
pub(super) struct SyncLoop {
    pub(super) sync: FlowSync,
    /// Whether VRRP preemption is held back, and for how long at most.
    hold: watch::Sender<bool>,
    hold_for: Duration,
    started: std::time::Instant,
    /// The scan under way (its result comes as an event, through `scans`).
    scan: Option<tokio::task::JoinHandle<()>>,
    scans: mpsc::UnboundedSender<ScanDone>,
    /// The table version last scanned, and the exceptions it held.
    scanned: Option<u64>,
    exceptions: Vec<PinnedFlow>,
    /// Flows taken from peers: one log line per 10 s at most (a reload on
    /// the peer sends a burst of datagrams).
    imported_unlogged: u64,
    import_logged: Option<std::time::Instant>,
}

impl SyncLoop {
    pub(super) fn new(
        sync: FlowSync,
        hold: watch::Sender<bool>,
        hold_for: Duration,
        scans: mpsc::UnboundedSender<ScanDone>,
    ) -> SyncLoop {
        SyncLoop {
            scans,
            sync,
            hold,
            hold_for,
            started: std::time::Instant::now(),
            scan: None,
            scanned: None,
            exceptions: Vec::new(),
            imported_unlogged: 0,
            import_logged: None,
        }
    }
}

impl SyncLoop {
    /// Preemption (and BGP announcement) is held: the peers' flows are
    /// not all in and `preempt_hold` has not passed.
    pub(super) fn holding(&self) -> bool {
        *self.hold.borrow()
    }
}

impl Daemon {
    /// A round: give up holding preemption when `preempt_hold` passed, and
    /// scan the flow table on a blocking thread - a full walk after the
    /// tables changed or while a real server is out of a pool (its new
    /// flows are exceptions), else the exceptions known are looked up
    /// again - sending what it finds.
    pub(super) fn sync_round(&mut self) {
        let Some(s) = self.sync.as_mut() else {
            return;
        };
        if *s.hold.borrow() && s.started.elapsed() >= s.hold_for {
            warn!(
                peers = ?s.sync.peering.awaited(),
                waited_s = s.hold_for.as_secs_f64(),
                "flow sync: these peers sent not all their flows in time: preemption no longer held (flows placed while this director was away may move)"
            );
            s.sync.peering.give_up();
            s.hold.send_replace(false);
        }
        if s.scan.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Some(scan) = self.dataplane.exception_scan() else {
            return;
        };
        let full = Some(scan.version()) != s.scanned || scan.degraded();
        let known = s.exceptions.clone();
        let sender = s.sync.sender.clone();
        let done = s.scans.clone();
        s.scan = Some(tokio::task::spawn_blocking(move || {
            let flows = if full {
                scan.full(1 << 16)
            } else {
                scan.again(&known)
            };
            if let Ok(mut sender) = sender.lock() {
                sender.send(&flows);
            }
            let _ = done.send((scan.version(), flows));
        }));
    }

    pub(super) fn scanned(&mut self, (version, flows): ScanDone) {
        if let Some(s) = self.sync.as_mut() {
            s.scanned = Some(version);
            s.exceptions = flows;
        }
    }

    /// A peer's flows are imported; its "that was everything" may end the
    /// hold on preemption.
    pub(super) fn peer_sent(&mut self, received: Received) {
        let flows = match received {
            Received::Flows(flows) => flows,
            Received::Everything(peer) => {
                if let Some(s) = &self.sync {
                    let all_in = s.sync.peering.answered(peer);
                    info!(%peer, "flow sync: the peer's flows are all in");
                    if all_in && *s.hold.borrow() {
                        info!(
                            waited_ms = s.started.elapsed().as_millis() as u64,
                            "flow sync: every peer's flows are in: preemption no longer held"
                        );
                        s.hold.send_replace(false);
                    }
                }
                return;
            }
        };
        let added = self.dataplane.import_flows(&flows) as u64;
        self.imported += added;
        if let Some(s) = self.sync.as_mut() {
            s.imported_unlogged += added;
            if s.imported_unlogged > 0
                && s.import_logged
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                info!(
                    flows = s.imported_unlogged,
                    "flows taken from a peer director (since the last such line)"
                );
                s.imported_unlogged = 0;
                s.import_logged = Some(std::time::Instant::now());
            }
        }
    }

    /// A director that stops for good sends its peers every exception once
    /// more before its instances hand over (priority 0): a datagram lost
    /// since the flow became an exception is not waited for until the next
    /// full round.
    pub(super) async fn send_every_exception(&mut self) {
        let Some(s) = self.sync.as_mut() else {
            return;
        };
        let Some(scan) = self.dataplane.exception_scan() else {
            return;
        };
        if let Some(task) = s.scan.take() {
            let _ = task.await;
        }
        let sender = s.sync.sender.clone();
        let last = tokio::task::spawn_blocking(move || {
            let flows = scan.full(1 << 16);
            if let Ok(mut sender) = sender.lock() {
                sender.send_everything(&flows);
            }
            flows.len()
        });
        match tokio::time::timeout(Duration::from_secs(2), last).await {
            Ok(Ok(n)) => info!(
                flows = n,
                "flow sync: every exception sent to the peers before stopping"
            ),
            _ => warn!("flow sync: the last round before stopping did not finish in 2 s"),
        }
    }
}
