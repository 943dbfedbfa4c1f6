//! The flow-sync datagram, byte by byte: a header (magic, the sender's and receiver's addresses, a sequence number, a time stamp, a count), the flows, and an HMAC-SHA256 over all of it with the shared key; `decode` checks each in that order and says why it drops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use director_common::{FlowKey, ServiceKey};
use hmac::{KeyInit as _, Mac as _};

use crate::dataplane::xdp::PinnedFlow;

use super::*;

pub(super) const MAGIC: &[u8; 4] = b"DFS2";
pub(super) const HEADER: usize = 4 + 16 + 16 + 8 + 8 + 2;
/// Offsets in the header.
pub(super) const AT_FROM: usize = 4;
pub(super) const AT_TO: usize = 20;
pub(super) const AT_SEQ: usize = 36;
pub(super) const AT_TIME: usize = 44;
pub(super) const AT_COUNT: usize = 52;
pub(super) const ENTRY: usize = 40 + 20 + 1 + 16;
pub(super) const MAC: usize = 32;
/// Entries per datagram (stays under 1,400 bytes).
pub const PER_DATAGRAM: usize = (1400 - HEADER - MAC) / ENTRY;
/// An address as 16 bytes (IPv4 mapped).
pub(super) fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(super) fn addr_from(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub(super) fn mac(key: &[u8], data: &[u8]) -> [u8; MAC] {
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => return [0; MAC],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

pub(super) fn flow_bytes(f: &FlowKey) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[..16].copy_from_slice(&f.src);
    b[16..32].copy_from_slice(&f.dst);
    b[32..34].copy_from_slice(&f.sport);
    b[34..36].copy_from_slice(&f.dport);
    b[36] = f.protocol;
    b[37] = f.flags;
    b
}

pub(super) fn flow_from(b: &[u8]) -> FlowKey {
    let mut f = FlowKey::default();
    f.src.copy_from_slice(&b[..16]);
    f.dst.copy_from_slice(&b[16..32]);
    f.sport.copy_from_slice(&b[32..34]);
    f.dport.copy_from_slice(&b[34..36]);
    f.protocol = b[36];
    f.flags = b[37];
    f
}

/// Encodes `flows` (at most [`PER_DATAGRAM`]) as one datagram from `from`
/// to `to`.
pub fn encode(
    key: &[u8],
    from: IpAddr,
    to: IpAddr,
    seq: u64,
    time_ms: u64,
    flows: &[PinnedFlow],
) -> Vec<u8> {
    let flows = &flows[..flows.len().min(PER_DATAGRAM)];
    let mut b = Vec::with_capacity(HEADER + flows.len() * ENTRY + MAC);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&addr_bytes(from));
    b.extend_from_slice(&addr_bytes(to));
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

/// What an authenticated datagram says besides its flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub from: IpAddr,
    pub to: IpAddr,
    pub seq: u64,
}

/// Decodes and authenticates a datagram received at `now_ms` (the
/// envelope's checks against the socket are the receiver's).
pub fn decode(key: &[u8], data: &[u8], now_ms: u64) -> Result<(Envelope, Vec<PinnedFlow>), Drop> {
    if data.len() < HEADER + MAC || &data[..4] != MAGIC {
        return Err(Drop::Malformed);
    }
    let (body, tag) = data.split_at(data.len() - MAC);
    let mut m = HmacSha256::new_from_slice(key).map_err(|_| Drop::BadMac)?;
    m.update(body);
    m.verify_slice(tag).map_err(|_| Drop::BadMac)?;
    let word = |at: usize| -> Result<u64, Drop> {
        Ok(u64::from_be_bytes(
            body[at..at + 8].try_into().map_err(|_| Drop::Malformed)?,
        ))
    };
    let envelope = Envelope {
        from: addr_from(&body[AT_FROM..]),
        to: addr_from(&body[AT_TO..]),
        seq: word(AT_SEQ)?,
    };
    let time = word(AT_TIME)?;
    if time.abs_diff(now_ms) > WINDOW.as_millis() as u64 {
        return Err(Drop::Stale);
    }
    let count = usize::from(u16::from_be_bytes([body[AT_COUNT], body[AT_COUNT + 1]]));
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
    Ok((envelope, out))
}
