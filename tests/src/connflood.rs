//! A connection flood for the lab: thousands of TCP connections to one
//! port that send nothing (idle) or one byte of a request head a second
//! (slow, "slowloris"), from several source addresses; each connection the
//! server closes is opened again at the next round. Run it in a host's
//! namespace (it enters the namespace itself).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// What the flood did.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodStats {
    /// Connections opened (connect succeeded).
    pub opened: u64,
    /// Connections the server closed or reset.
    pub closed_by_server: u64,
    /// Connects that failed (refused, timed out).
    pub connect_failed: u64,
    /// The most connections open at once (as the client sees them).
    pub held_max: u64,
    /// Bytes sent by the slow connections.
    pub slow_bytes: u64,
}

/// A running flood; [`ConnFlood::stop`] ends it and closes everything.
pub struct ConnFlood {
    stop: Arc<AtomicBool>,
    held: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<Result<FloodStats>>>>,
}

/// The request head a slow connection sends, a byte at a time.
const SLOW_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: director\r\nUser-Agent: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Conn {
    socket: Option<Socket>,
    source: IpAddr,
    slow: bool,
    sent: usize,
}

fn open(source: IpAddr, target: SocketAddr) -> std::io::Result<Socket> {
    let domain = if target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    s.connect_timeout(&SockAddr::from(target), Duration::from_millis(500))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Whether the server closed (or reset) a connection: a read that returns
/// 0 or an error other than "would block".
fn closed(s: &mut Socket) -> bool {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

impl ConnFlood {
    /// Starts `idle` idle and `slow` slow connections to `target` from the
    /// `sources` in turn, inside namespace `ns` (its `/run/netns` name).
    /// The calling process's descriptor limit must allow them.
    pub fn start(
        ns: &crate::Netns,
        target: SocketAddr,
        sources: Vec<IpAddr>,
        idle: usize,
        slow: usize,
    ) -> ConnFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), held.clone());
        let thread = ns.spawn_thread(move || -> Result<FloodStats> {
            let mut stats = FloodStats::default();
            let mut conns: Vec<Conn> = (0..idle + slow)
                .map(|i| Conn {
                    socket: None,
                    source: sources[i % sources.len().max(1)],
                    slow: i >= idle,
                    sent: 0,
                })
                .collect();
            let mut last_byte = std::time::Instant::now();
            let mut first = true;
            while !flag.load(Ordering::Relaxed) {
                // Once a second: the slow connections' next byte, and the
                // closed connections opened again (a persistent client,
                // not a connection-rate flood).
                let byte_due =
                    std::mem::take(&mut first) || last_byte.elapsed() >= Duration::from_secs(1);
                if byte_due {
                    last_byte = std::time::Instant::now();
                }
                for c in &mut conns {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(s) = c.socket.as_mut() {
                        let mut gone = closed(s);
                        if !gone && c.slow && byte_due {
                            let b = SLOW_HEAD[c.sent % SLOW_HEAD.len()];
                            match s.write(&[b]) {
                                Ok(1) => {
                                    c.sent += 1;
                                    stats.slow_bytes += 1;
                                }
                                Ok(_) => {}
                                Err(e) => gone = e.kind() != std::io::ErrorKind::WouldBlock,
                            }
                        }
                        if gone {
                            c.socket = None;
                            stats.closed_by_server += 1;
                        }
                    } else if byte_due {
                        match open(c.source, target) {
                            Ok(s) => {
                                c.socket = Some(s);
                                c.sent = 0;
                                stats.opened += 1;
                            }
                            Err(_) => stats.connect_failed += 1,
                        }
                    }
                }
                let now = conns.iter().filter(|c| c.socket.is_some()).count() as u64;
                count.store(now, Ordering::Relaxed);
                stats.held_max = stats.held_max.max(now);
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(stats)
        });
        ConnFlood {
            stop,
            held,
            thread: Some(thread),
        }
    }

    /// How many connections the flood holds open now (as it sees them).
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Ends the flood (every connection closed) and says what it did.
    pub fn stop(mut self) -> Result<FloodStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => Ok(r??),
            Some(Err(_)) => anyhow::bail!("the flood thread panicked"),
            None => anyhow::bail!("the flood was already stopped"),
        }
    }
}

impl Drop for ConnFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Raises this process's soft descriptor limit to its hard limit (a flood
/// of thousands of connections needs it); returns the new soft limit.
pub fn raise_own_nofile() -> Result<u64> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}
