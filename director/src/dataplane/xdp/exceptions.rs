//! Finding the flow-table exceptions flow sync shares, off the daemon's
//! loop and in proportion to what changed.
//!
//! An exception is a flow pinned to a real server the service's current
//! Maglev table would not pick (it was placed before a table changed), or
//! the table of its whole pool would not (placed while a server failed its
//! checks: a peer that sees it recover first, or alone, would move it). New
//! flows are placed by the current table, so new exceptions appear only
//! when a table changes: the whole flow table is walked once after each
//! change (in a blocking thread, on a snapshot of the tables and a handle
//! of its own on the maps); between changes, only the exceptions already
//! found are looked up again (still there? still elsewhere?).

use std::{collections::HashMap, net::IpAddr, os::fd::AsFd as _, sync::Arc};

use aya::maps::{Array, MapData};
use director_common::{
    FlowEntry, FlowKey, MAGLEV_LANES, MAGLEV_TABLE_SIZE, SVC_SOURCE_HASH, ServiceKey, flow_hash,
    source_hash,
};

use super::{FlowTable, PinnedFlow, XdpError};

/// What a service's placement is, as of the snapshot.
#[derive(Clone)]
pub(super) struct ServiceView {
    pub flags: u32,
    /// First element of its active table in the MAGLEV array.
    pub base: u32,
    /// The table, when this process wrote it (else read from the map).
    pub table: Option<Arc<Vec<u16>>>,
    /// The whole pool's table while a server is out of it (see
    /// `BackendPlan::pool_weight`).
    pub pool: Option<Arc<Vec<u16>>>,
}

/// A snapshot to find exceptions with, owning its map handles (so it can
/// run on another thread while the daemon goes on).
pub struct Scan {
    pub(super) version: u64,
    pub(super) flows: Arc<FlowTable>,
    pub(super) maglev: Array<MapData, [u16; 4]>,
    /// Real-server id -> (service, address, generation).
    pub(super) by_id: HashMap<u32, (ServiceKey, IpAddr, u32)>,
    pub(super) services: HashMap<ServiceKey, ServiceView>,
}

/// A second handle on a map (a duplicate of its fd).
pub(super) fn dup(map: &MapData) -> Result<MapData, XdpError> {
    let fd = map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| XdpError::Link(format!("duplicating a map fd: {e}")))?;
    Ok(MapData::from_fd(fd)?)
}

impl Scan {
    /// The table version the snapshot was taken at.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether `key` -> `value` is an exception; the flow to share if so.
    fn exception(&self, key: FlowKey, value: FlowEntry) -> Option<PinnedFlow> {
        // A closing connection: nothing for a peer to carry on (and its
        // entry must not outlive it there).
        if value.closed != 0 {
            return None;
        }
        let (service, backend, generation) = self.by_id.get(&u32::from(value.backend))?;
        // A flow of a slot reused since: it will be re-hashed anyway.
        if *generation != value.generation {
            return None;
        }
        let view = self.services.get(service)?;
        let hash = if view.flags & SVC_SOURCE_HASH != 0 {
            source_hash(&key.src)
        } else {
            flow_hash(&key)
        };
        let slot = hash % MAGLEV_TABLE_SIZE;
        let chosen = match &view.table {
            Some(t) => t.get(slot as usize).copied().map(u32::from),
            None => self
                .maglev
                .get(&(view.base + slot / MAGLEV_LANES), 0)
                .ok()
                .map(|e| u32::from(e[(slot % MAGLEV_LANES) as usize])),
        };
        // Also a flow the recovered pool would move (placed while a server
        // was out): a peer may see the server recover before this director
        // does, or without it (this one dead).
        let moves = |t: &Option<Arc<Vec<u16>>>| {
            t.as_ref()
                .and_then(|t| t.get(slot as usize))
                .is_some_and(|id| u32::from(*id) != u32::from(value.backend))
        };
        (chosen != Some(u32::from(value.backend)) || moves(&view.pool)).then_some(PinnedFlow {
            flow: key,
            service: *service,
            backend: *backend,
        })
    }

    /// Whether a service's pool has a server out of its table: its new flows
    /// may be exceptions (see [`ServiceView::pool`]), so every scan walks
    /// the whole flow table until the server is back.
    pub fn degraded(&self) -> bool {
        self.services.values().any(|v| v.pool.is_some())
    }

    /// Walks the whole flow table (after a table change): at most `limit`.
    pub fn full(&self, limit: usize) -> Vec<PinnedFlow> {
        let mut out = Vec::new();
        for entry in self.flows.iter() {
            if let Some(f) = self.exception(entry.key, entry) {
                out.push(f);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out
    }

    /// Looks the exceptions found before up again (no table changed since):
    /// those still in the flow table and still exceptions.
    pub fn again(&self, known: &[PinnedFlow]) -> Vec<PinnedFlow> {
        known
            .iter()
            .filter_map(|f| {
                let value = self.flows.get(&f.flow)?;
                self.exception(f.flow, value)
            })
            .collect()
    }
}
