//! The filled flow table: flows imported as flow sync imports them, established lookups spread over them, and the table's kernel memory.

use std::net::IpAddr;

use anyhow::Result;
use director::{
    dataplane::{
        ServicePlan,
        xdp::{PinnedFlow, XdpDataplane},
    },
    net::frames::{self, ACK},
};
use director_common::FlowKey;

use super::*;

/// Client `i` of the filled flow table: 11.x.y.z:40000 -> 10.0.0.100:80
/// (2^24 distinct flows).
pub(crate) fn filled_client(i: u32) -> IpAddr {
    IpAddr::from([11, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// The key of filled flow `i` (client `i`:40000 -> 10.0.0.100:80).
pub(crate) fn filled_key(i: u32) -> FlowKey {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[11, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[10, 0, 0, 100]);
    FlowKey {
        src,
        dst,
        sport: 40000u16.to_be_bytes(),
        dport: 80u16.to_be_bytes(),
        protocol: director_common::IPPROTO_TCP,
        ..FlowKey::default()
    }
}

/// Fills the flow table with the established flows `from..to` of `svc`
/// (their real servers in turn), as flow sync imports them (a flow is
/// recorded in a free way of one of its two buckets, never over another).
/// Returns the ones recorded (the others found both buckets full).
pub(crate) fn fill(
    dp: &mut XdpDataplane,
    svc: &ServicePlan,
    (from, to): (u32, u32),
) -> Result<Vec<u32>> {
    let service = svc.key();
    const CHUNK: u32 = 65_536;
    let mut recorded = Vec::new();
    let mut start = from;
    while start < to {
        let end = to.min(start + CHUNK);
        let flows: Vec<PinnedFlow> = (start..end)
            .map(|i| PinnedFlow {
                flow: filled_key(i),
                service,
                backend: svc.backends[(i % 3) as usize].address,
            })
            .collect();
        dp.import_flows(&flows)?;
        let table = dp.flow_table();
        recorded.extend((start..end).filter(|i| table.get(&filled_key(*i)).is_some()));
        start = end;
    }
    Ok(recorded)
}

/// `n` ACKs of flows drawn at random from `flows` (the filled flows that
/// were recorded): lookups spread over the whole table (cache misses), not
/// one hot flow.
pub(crate) fn spread(n: u32, flows: &[u32], seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = flows[(x % flows.len() as u64) as usize];
            frames::tcp_frame(filled_client(i), 40000, ip("10.0.0.100"), 80, ACK)
        })
        .collect()
}

/// Kernel memory of this process's flow table of `entries` entries: the
/// `memlock` its fdinfo reports for the entry array and for its tag words.
pub(crate) fn flow_table_memlock(entries: u32) -> Option<u64> {
    let memlock = |max_entries: u32| {
        let dir = std::fs::read_dir("/proc/self/fdinfo").ok()?;
        dir.flatten().find_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            // BPF_MAP_TYPE_ARRAY is 2.
            (field("map_type:")? == "2" && field("max_entries:")? == max_entries.to_string())
                .then(|| field("memlock:")?.parse::<u64>().ok())
                .flatten()
        })
    };
    Some(
        memlock(entries)?
            + memlock(director_common::flow_tag_array_elements(
                entries / director_common::FLOW_WAYS,
            ))?,
    )
}
