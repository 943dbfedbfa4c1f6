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
                        pool: i.pool.clone(),
                    },
                )
            })
            .collect();
        use aya::maps::IterableMap as _;
        let maglev = self.maps.maglev.map();
        Ok(Scan {
            version: self.version,
            flows: self.flows.clone(),
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
        Ok(flows
            .iter()
            .filter(|f| {
                let (Some(slot), Some(installed)) = (
                    self.slots.get(&(f.service, f.backend)),
                    self.services.get(&f.service),
                ) else {
                    return false;
                };
                // Never overrides what this director decided.
                self.flows.insert_new(
                    &f.flow,
                    slot.id as u16,
                    installed.id as u16,
                    slot.written.generation,
                    now,
                    true,
                )
            })
            .count())
    }

    /// Records the flows of a pinned table re-created at another size or
    /// format (their ids are the adopted maps').
    pub(super) fn carry(&self, flows: &[CarriedFlow]) {
        let added = flows
            .iter()
            .filter(|f| {
                self.flows.insert_new(
                    &f.key,
                    f.backend as u16,
                    f.service as u16,
                    f.generation,
                    f.atime,
                    false,
                )
            })
            .count();
        if !flows.is_empty() {
            info!(
                flows = flows.len(),
                recorded = added,
                "flows of the previous flow table carried over"
            );
        }
    }

    /// The flow table, mapped.
    pub fn flow_table(&self) -> &FlowTable {
        &self.flows
    }
}
