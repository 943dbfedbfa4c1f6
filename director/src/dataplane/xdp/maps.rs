//! The program's maps as the daemon holds them: typed, taken out of the
//! loaded object once.

use super::*;

/// The program's maps the daemon reads and writes, typed and taken out of
/// the loaded object once, at open: a writer cannot name a map that is not
/// there, and none is looked up by name again.
pub(super) struct Maps {
    pub(super) settings: Array<MapData, Settings>,
    pub(super) services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    pub(super) service_index: Array<MapData, director_common::IndexEntry>,
    pub(super) backends: Array<MapData, Backend>,
    pub(super) maglev: Array<MapData, [u16; 4]>,
    pub(super) members: LpmTrie<MapData, MemberKey, ServiceValue>,
    pub(super) vip_filter: Array<MapData, u64>,
    /// Taken by [`Maps::flows_maps`] into the [`FlowTable`]: the entries
    /// and the tag words.
    flows: Option<FlowMaps>,
    pub(super) service_stats: PerCpuArray<MapData, Counters>,
    pub(super) backend_stats: PerCpuArray<MapData, Counters>,
    pub(super) unrecorded: PerCpuArray<MapData, u64>,
}

/// The flow table's entries and tag words.
pub(super) type FlowMaps = (Array<MapData, FlowEntry>, Array<MapData, u64>);

/// Which per-CPU counters.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stats {
    Service,
    Backend,
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Maps, XdpError> {
        fn one<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
        where
            T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
        {
            let map = ebpf.take_map(name).ok_or(XdpError::Missing(name))?;
            Ok(T::try_from(map)?)
        }
        Ok(Maps {
            settings: one(ebpf, MAP_SETTINGS)?,
            services: one(ebpf, MAP_SERVICES)?,
            service_index: one(ebpf, director_common::MAP_SERVICE_INDEX)?,
            backends: one(ebpf, MAP_BACKENDS)?,
            maglev: one(ebpf, MAP_MAGLEV)?,
            members: one(ebpf, MAP_MEMBERS)?,
            vip_filter: one(ebpf, MAP_VIP_FILTER)?,
            flows: Some((
                one(ebpf, MAP_FLOWS)?,
                one(ebpf, director_common::MAP_FLOW_TAGS)?,
            )),
            service_stats: one(ebpf, MAP_SERVICE_STATS)?,
            backend_stats: one(ebpf, MAP_BACKEND_STATS)?,
            unrecorded: one(ebpf, director_common::MAP_UNRECORDED)?,
        })
    }

    /// The flow table's maps, for [`FlowTable::map`] (once).
    pub(super) fn flows_maps(&mut self) -> Result<FlowMaps, XdpError> {
        self.flows.take().ok_or(XdpError::Missing(MAP_FLOWS))
    }

    /// The flow table's hash seed, written into the settings before the
    /// program sees a frame: the pinned one when the table was adopted
    /// as it was (its entries sit where that seed put them), else a new
    /// random one. `carried` (an older pinned format's settings) is
    /// written with it.
    pub(super) fn flow_seed(
        &mut self,
        adopted: bool,
        carried: Option<Settings>,
    ) -> Result<u32, XdpError> {
        let mut settings = carried
            .or_else(|| self.settings.get(&0, 0).ok())
            .unwrap_or_default();
        if adopted && settings.flow_seed != 0 {
            return Ok(settings.flow_seed);
        }
        settings.flow_seed = loop {
            let seed: u32 = rand::random();
            if seed != 0 {
                break seed;
            }
        };
        self.settings.set(0, settings, 0)?;
        Ok(settings.flow_seed)
    }

    pub(super) fn stats(&self, which: Stats) -> &PerCpuArray<MapData, Counters> {
        match which {
            Stats::Service => &self.service_stats,
            Stats::Backend => &self.backend_stats,
        }
    }

    pub(super) fn stats_mut(&mut self, which: Stats) -> &mut PerCpuArray<MapData, Counters> {
        match which {
            Stats::Service => &mut self.service_stats,
            Stats::Backend => &mut self.backend_stats,
        }
    }
}
