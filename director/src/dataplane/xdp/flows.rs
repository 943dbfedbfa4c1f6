//! The flow table seen from the daemon: snapshots for flow sync's
//! exception scan, and flows imported from peers.

use super::*;

impl XdpDataplane {
    /// A snapshot to find flow-table exceptions with on another thread
    /// (see [`Scan`]).
    pub fn exception_scan(&self) -> Result<Scan, XdpError> {
        let by_id: HashMap<u32, (ServiceKey, IpAddr, u32)> = self
            .slots
            .iter()
            .map(|((k, a), s)| (s.id, (*k, *a, s.written.generation)))
            .collect();
        let services = self
            .services
            .iter()
            .map(|(k, i)| {
                (
                    *k,
                    exceptions::ServiceView {
                        flags: i.value.flags,
                        base: i.value.table,
                        table: i.table.clone(),
                    },
                )
            })
            .collect();
        use aya::maps::IterableMap as _;
        let flows = self.maps.flows.map();
        let maglev = self.maps.maglev.map();
        Ok(Scan {
            version: self.version,
            flows: BpfHashMap::try_from(aya::maps::Map::LruHashMap(exceptions::dup(flows)?))?,
            maglev: Array::try_from(aya::maps::Map::Array(exceptions::dup(maglev)?))?,
            by_id,
            services,
        })
    }

    /// The version of the tables (see [`Scan`]): a scan taken at an older
    /// one must walk the whole flow table again.
    pub fn tables_version(&self) -> u64 {
        self.version
    }

    /// Flows pinned to a real server the service's table would not pick
    /// now (placed before the tables changed, e.g. to a draining server):
    /// the ones a peer director could not recompute (flow sync). At most
    /// `limit`. (Walks the flow table on the caller's thread; the daemon
    /// uses [`XdpDataplane::exception_scan`].)
    pub fn exception_flows(&self, limit: usize) -> Result<Vec<PinnedFlow>, XdpError> {
        Ok(self.exception_scan()?.full(limit))
    }

    /// Adds flows a peer pinned, translated to our real-server ids, unless
    /// we already have an entry for the flow. Returns how many were added.
    pub fn import_flows(&mut self, flows: &[PinnedFlow]) -> Result<usize, XdpError> {
        // The program's clock (bpf_ktime_get_coarse_ns), for UDP idle times.
        let now = {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime fills the timespec we pass.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let values: Vec<(FlowKey, FlowValue)> = flows
            .iter()
            .filter_map(|f| {
                let slot = self.slots.get(&(f.service, f.backend))?;
                let installed = self.services.get(&f.service)?;
                Some((
                    f.flow,
                    FlowValue::new(slot.id, slot.written.generation, installed.id, now),
                ))
            })
            .collect();
        let map = &mut self.maps.flows;
        let mut added = 0;
        for (k, v) in values {
            // BPF_NOEXIST: never overrides what this director decided.
            if map.insert(k, v, 1).is_ok() {
                added += 1;
            }
        }
        Ok(added)
    }
}
