//! A fine-grained gap detector: UDP echo servers on the real servers (DR:
//! bound to the VIP, so replies come from it) and a client that sends a
//! numbered datagram every millisecond through the VIP and counts the
//! echoes. A restart or reload "without a gap" must lose none: a TCP
//! request would hide a one-second outage behind its SYN retransmission.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{Lab, Netns};

/// Echo servers running on threads inside the real servers' namespaces;
/// stopped when dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Result<()>>>>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Lab {
    /// Starts a UDP echo on `vip:port` in every real server.
    pub fn start_udp_echo(&self, vip: std::net::IpAddr, port: u16) -> Result<Echo> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for rs in &self.real_servers {
            let stop = stop.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(rs.ns.spawn_thread(move || -> Result<()> {
                let socket = UdpSocket::bind(SocketAddr::new(vip, port));
                let socket = match socket {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
                Ok(())
            }));
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .context("UDP echo did not start")?
                .map_err(|e| anyhow::anyhow!("UDP echo on {}: {e}", rs.name))?;
        }
        Ok(Echo { stop, threads })
    }
}

/// What a probe saw.
#[derive(Debug, Clone, Default)]
pub struct UdpTally {
    pub sent: u64,
    pub echoed: u64,
    /// The longest run of consecutive datagrams without an echo, in
    /// datagrams (about milliseconds).
    pub longest_gap: u64,
}

impl UdpTally {
    pub fn lost(&self) -> u64 {
        self.sent - self.echoed
    }
}

/// Sends a numbered datagram to `addr` every `every` from `ns` while `f`
/// runs (and 200 ms before and after); returns `f`'s result and the tally.
pub fn probe_during<T>(
    ns: &Netns,
    addr: SocketAddr,
    every: Duration,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, UdpTally)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let prober = ns.spawn_thread(move || -> Result<UdpTally> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(1)))?;
        let receiver = socket.try_clone()?;
        let done = Arc::new(AtomicBool::new(false));
        let done_rx = done.clone();
        let echoes = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut buf = [0u8; 16];
            let mut quiet_since = None::<Instant>;
            loop {
                match receiver.recv(&mut buf) {
                    Ok(8) => {
                        seen.insert(u64::from_be_bytes(buf[..8].try_into().unwrap_or_default()));
                        quiet_since = None;
                    }
                    _ => {
                        if done_rx.load(Ordering::Relaxed) {
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_millis(300) {
                                return seen;
                            }
                        }
                    }
                }
            }
        });
        let mut seq = 0u64;
        let mut next = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            // An error (no route for a moment) is a lost datagram.
            let _ = socket.send(&seq.to_be_bytes());
            seq += 1;
            next += every;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        done.store(true, Ordering::Relaxed);
        let seen = echoes
            .join()
            .map_err(|_| anyhow::anyhow!("echo receiver panicked"))?;
        let mut longest = 0u64;
        let mut run = 0u64;
        for s in 0..seq {
            if seen.contains(&s) {
                run = 0;
            } else {
                run += 1;
                longest = longest.max(run);
            }
        }
        Ok(UdpTally {
            sent: seq,
            echoed: seen.range(..seq).count() as u64,
            longest_gap: longest,
        })
    });
    std::thread::sleep(Duration::from_millis(200));
    let result = f();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let tally = prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))???;
    Ok((result?, tally))
}
