//! Flow-table sharing between directors (in the spirit of the IPVS sync
//! daemon, over a small authenticated unicast protocol). Directors compute
//! the same Maglev tables from the same config, so a flow placed by the
//! current table needs no sharing: the peer would place it the same way.
//! Only the exceptions are sent - flows pinned to a real server the table
//! would not pick now (placed before a change, e.g. on a server being
//! drained) - so they survive a failover too.
//!
//! A datagram: `DFS1`, a sequence number and a Unix time in milliseconds
//! (8 bytes each, big endian), an entry count (2), the entries (77 bytes
//! each: the flow key (40), the service key (20), the real server's family
//! (1) and address (16)), then HMAC-SHA256 (32) of all that with the shared
//! key. A receiver drops datagrams with a bad MAC, more than 30 s old or
//! ahead, or malformed, and counts them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use director_common::{FlowKey, ServiceKey};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::{debug, warn};

use crate::dataplane::xdp::PinnedFlow;

const MAGIC: &[u8; 4] = b"DFS1";
const HEADER: usize = 4 + 8 + 8 + 2;
const ENTRY: usize = 40 + 20 + 1 + 16;
const MAC: usize = 32;
/// Entries per datagram (stays under 1,400 bytes).
pub const PER_DATAGRAM: usize = (1400 - HEADER - MAC) / ENTRY;
/// Datagrams older or newer than this are dropped (replays).
const WINDOW: Duration = Duration::from_secs(30);

type HmacSha256 = Hmac<Sha256>;

/// Errors of flow sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("flow sync socket {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    BadMac,
    Stale,
}

fn mac(key: &[u8], data: &[u8]) -> [u8; MAC] {
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => return [0; MAC],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn flow_bytes(f: &FlowKey) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[..16].copy_from_slice(&f.src);
    b[16..32].copy_from_slice(&f.dst);
    b[32..34].copy_from_slice(&f.sport);
    b[34..36].copy_from_slice(&f.dport);
    b[36] = f.protocol;
    b[37] = f.flags;
    b
}

fn flow_from(b: &[u8]) -> FlowKey {
    let mut f = FlowKey::default();
    f.src.copy_from_slice(&b[..16]);
    f.dst.copy_from_slice(&b[16..32]);
    f.sport.copy_from_slice(&b[32..34]);
    f.dport.copy_from_slice(&b[34..36]);
    f.protocol = b[36];
    f.flags = b[37];
    f
}

/// Encodes `flows` (at most [`PER_DATAGRAM`]) as one datagram.
pub fn encode(key: &[u8], seq: u64, time_ms: u64, flows: &[PinnedFlow]) -> Vec<u8> {
    let flows = &flows[..flows.len().min(PER_DATAGRAM)];
    let mut b = Vec::with_capacity(HEADER + flows.len() * ENTRY + MAC);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&time_ms.to_be_bytes());
    b.extend_from_slice(&(flows.len() as u16).to_be_bytes());
    for f in flows {
        b.extend_from_slice(&flow_bytes(&f.flow));
        b.extend_from_slice(&f.service.addr);
        b.extend_from_slice(&f.service.port);
        b.push(f.service.protocol);
        b.push(f.service.flags);
        match f.backend {
            IpAddr::V4(a) => {
                b.push(4);
                let mut o = [0u8; 16];
                o[..4].copy_from_slice(&a.octets());
                b.extend_from_slice(&o);
            }
            IpAddr::V6(a) => {
                b.push(6);
                b.extend_from_slice(&a.octets());
            }
        }
    }
    let m = mac(key, &b);
    b.extend_from_slice(&m);
    b
}

/// Decodes and authenticates a datagram received at `now_ms`.
pub fn decode(key: &[u8], data: &[u8], now_ms: u64) -> Result<Vec<PinnedFlow>, Drop> {
    if data.len() < HEADER + MAC || &data[..4] != MAGIC {
        return Err(Drop::Malformed);
    }
    let (body, tag) = data.split_at(data.len() - MAC);
    let mut m = HmacSha256::new_from_slice(key).map_err(|_| Drop::BadMac)?;
    m.update(body);
    m.verify_slice(tag).map_err(|_| Drop::BadMac)?;
    let time = u64::from_be_bytes(body[12..20].try_into().map_err(|_| Drop::Malformed)?);
    if time.abs_diff(now_ms) > WINDOW.as_millis() as u64 {
        return Err(Drop::Stale);
    }
    let count = usize::from(u16::from_be_bytes([body[20], body[21]]));
    if body.len() != HEADER + count * ENTRY {
        return Err(Drop::Malformed);
    }
    let mut out = Vec::with_capacity(count);
    for e in body[HEADER..].chunks_exact(ENTRY) {
        let flow = flow_from(&e[..40]);
        let mut service = ServiceKey::default();
        service.addr.copy_from_slice(&e[40..56]);
        service.port.copy_from_slice(&e[56..58]);
        service.protocol = e[58];
        service.flags = e[59];
        let backend = match e[60] {
            4 => IpAddr::V4(Ipv4Addr::new(e[61], e[62], e[63], e[64])),
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&e[61..77]);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err(Drop::Malformed),
        };
        out.push(PinnedFlow {
            flow,
            service,
            backend,
        });
    }
    Ok(out)
}

/// The sync endpoint: a socket, the peers, the key.
pub struct FlowSync {
    socket: std::sync::Arc<UdpSocket>,
    peers: Vec<SocketAddr>,
    key: Vec<u8>,
    seq: u64,
    /// What was last sent, to send only news (and everything now and then).
    sent: std::collections::HashSet<(FlowKey, IpAddr)>,
    rounds: u64,
}

impl FlowSync {
    /// Binds `listen`; decoded flows from peers arrive on the returned
    /// channel (datagrams from other addresses are ignored).
    pub async fn start(
        listen: SocketAddr,
        peers: Vec<SocketAddr>,
        key: String,
    ) -> Result<(FlowSync, mpsc::Receiver<Vec<PinnedFlow>>), SyncError> {
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|source| SyncError::Socket {
                addr: listen,
                source,
            })?;
        let socket = std::sync::Arc::new(socket);
        let (tx, rx) = mpsc::channel(64);
        let rx_socket = socket.clone();
        let key_bytes = key.into_bytes();
        let rx_key = key_bytes.clone();
        let allowed: Vec<IpAddr> = peers.iter().map(|p| p.ip()).collect();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, from)) = rx_socket.recv_from(&mut buf).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if !allowed.contains(&from.ip()) {
                    debug!(%from, "flow sync datagram from a non-peer dropped");
                    continue;
                }
                match decode(&rx_key, &buf[..n], now_ms()) {
                    Ok(flows) => {
                        if tx.send(flows).await.is_err() {
                            return;
                        }
                    }
                    Err(reason) => warn!(%from, ?reason, "flow sync datagram dropped"),
                }
            }
        });
        Ok((
            FlowSync {
                socket,
                peers,
                key: key_bytes,
                seq: 0,
                sent: Default::default(),
                rounds: 0,
            },
            rx,
        ))
    }

    /// Sends the exceptions that are new since the last round (all of them
    /// every 20th round, so a restarted peer catches up).
    pub async fn send(&mut self, flows: &[PinnedFlow]) {
        self.rounds += 1;
        let full = self.rounds % 20 == 1;
        let now: std::collections::HashSet<(FlowKey, IpAddr)> =
            flows.iter().map(|f| (f.flow, f.backend)).collect();
        let news: Vec<PinnedFlow> = flows
            .iter()
            .filter(|f| full || !self.sent.contains(&(f.flow, f.backend)))
            .copied()
            .collect();
        self.sent = now;
        for chunk in news.chunks(PER_DATAGRAM) {
            self.seq += 1;
            let d = encode(&self.key, self.seq, now_ms(), chunk);
            for p in &self.peers {
                if let Err(e) = self.socket.send_to(&d, p).await {
                    debug!(peer = %p, error = %e, "flow sync send failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u8) -> PinnedFlow {
        PinnedFlow {
            flow: FlowKey {
                src: [10, 1, 0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                dst: [10, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sport: [0x30, i],
                dport: [0, 80],
                protocol: 6,
                flags: 0,
                _pad: [0; 2],
            },
            service: ServiceKey::v4([10, 0, 0, 100], 80, 6),
            backend: if i.is_multiple_of(2) {
                "10.0.0.20".parse().expect("ip")
            } else {
                "fd00::20".parse().expect("ip")
            },
        }
    }

    #[test]
    fn round_trip_authentication_and_replays() {
        let flows: Vec<PinnedFlow> = (0..5).map(sample).collect();
        let d = encode(b"secret", 7, 1_000_000, &flows);
        assert!(d.len() <= 1400);
        assert_eq!(decode(b"secret", &d, 1_000_500), Ok(flows.clone()));
        // Wrong key, tampering, truncation, replay outside the window.
        assert_eq!(decode(b"other", &d, 1_000_500), Err(Drop::BadMac));
        let mut t = d.clone();
        t[30] ^= 1;
        assert_eq!(decode(b"secret", &t, 1_000_500), Err(Drop::BadMac));
        for n in 0..d.len() {
            assert!(decode(b"secret", &d[..n], 1_000_500).is_err());
        }
        assert_eq!(decode(b"secret", &d, 1_000_000 + 31_000), Err(Drop::Stale));
        // A full datagram.
        let many: Vec<PinnedFlow> = (0..100).map(sample).collect();
        let d = encode(b"k", 1, 5, &many);
        assert!(d.len() <= 1400);
        assert_eq!(decode(b"k", &d, 5).map(|f| f.len()), Ok(PER_DATAGRAM));
    }
}
