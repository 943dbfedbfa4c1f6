//! The XDP dataplane: loads `director-ebpf`, attaches it to the interface,
//! and keeps its maps equal to the daemon's plan.
//!
//! - **Atomic table swaps:** each service owns two banks of the Maglev
//!   array; a new table is written into the idle bank, then the service
//!   entry is switched to it with one map update.
//! - **Restart without loss:** with a pin directory (on a bpffs), the maps
//!   and the XDP link are pinned there. The daemon exiting leaves the
//!   program forwarding; the next daemon loads its program with the same
//!   maps, swaps it into the pinned link atomically, reads back which ids
//!   it had given to which service and real server, and reconciles.
//! - **Real-server slots** carry a generation, bumped when a slot changes
//!   owner, so flows of a removed server are re-hashed, never inherited.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues,
        lpm_trie::Key as LpmKey,
    },
    programs::{
        TestRun, TestRunOptions, Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId, XdpMode as AyaXdpMode},
    },
    util::nr_cpus,
};
use aya_log::EbpfLogger;
use director_common::{
    BACKEND_DRAINING, BACKEND_FAILED, BACKEND_TUNNEL, BACKEND_USABLE, Backend, Counters,
    KEY_FRAGMENT, MAGLEV_ELEMS_PER_TABLE, MAGLEV_LANES, MAGLEV_TABLE_SIZE, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_MAGLEV, MAP_MEMBERS, MAP_SERVICE_STATS, MAP_SERVICES, MAP_SETTINGS,
    MAP_VIP_FILTER, MAX_REAL_SERVERS, MAX_SERVICES, MEMBER_PREFIX_BASE, MemberKey, NO_BACKEND,
    PINNED_MAPS, PROG_DIRECTOR, SVC_PERSISTENT, SVC_SOURCE_HASH, ServiceKey, ServiceValue,
    Settings, VIP_FILTER_WORDS, maglev_base,
};
use director_common::{FLOW_WAYS, FlowEntry, FlowKey, FlowValue, MAP_FLOW_TAGS, MAP_FLOWS};

/// Outer source of IPv4 tunnels: 172.16.0.0/16, the last two bytes from
/// the flow's hash (as Katran does), so a real server's NIC spreads
/// tunnelled flows across its queues. Real servers must accept it
/// (`rp_filter` 0 or 2 on the interface it arrives on).
pub const TUNNEL_SOURCE_V4: [u8; 4] = [172, 16, 0, 0];
/// Outer source of IPv6 tunnels: fd00:7475:6e6c::/96 (a ULA: "tunl"),
/// the last 32 bits from the flow's hash.
pub const TUNNEL_SOURCE_V6: [u8; 16] = [
    0xfd, 0x00, 0x74, 0x75, 0x6e, 0x6c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

mod apply;
mod exceptions;
pub mod explain;
mod flows;
mod flowtable;
mod link;
mod load;
mod maps;

pub use self::load::{flow_entries, flush};
pub use exceptions::Scan;
pub use flowtable::FlowTable;

// The parts see each other through this module.
use self::{load::*, maps::*};
use super::{ServicePlan, Traffic};
use crate::{
    config::{Scheduler, XdpMode},
    dataplane::maglev,
};

/// The XDP program, built by build.rs and embedded in the binary.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director"));

/// The pinned link, in the pin directory.
const LINK_PIN: &str = "link";
/// In the state directory (bpffs holds only BPF objects): the interface
/// and mode of the pinned link, `interface mode`.
const LINK_INFO: &str = "xdp-link";

/// Where a daemon pins its dataplane.
#[derive(Debug, Clone)]
pub struct PinPaths {
    /// The pin directory, on a bpffs.
    pub dir: PathBuf,
    /// The daemon's state directory (for the link's attach mode).
    pub state_dir: PathBuf,
}

impl PinPaths {
    fn link(&self) -> PathBuf {
        self.dir.join(LINK_PIN)
    }

    fn link_info(&self) -> PathBuf {
        self.state_dir.join(LINK_INFO)
    }
}

/// Errors from loading, attaching or programming the XDP dataplane.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("the XDP program is missing from this binary (built with AYA_BUILD_SKIP)")]
    NotBuilt,
    /// No bpffs to pin the dataplane on (checked before anything loads).
    #[error(transparent)]
    Bpffs(#[from] crate::dataplane::bpffs::BpffsError),
    #[error(
        "cannot load the XDP program: {0} (if pinned maps from an incompatible version exist, remove them with `director run --flush`)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("XDP program error: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP map error: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("{0} is missing from the XDP program")]
    Missing(&'static str),
    #[error("cannot attach XDP to {interface} in {mode} mode: {source}")]
    Attach {
        interface: String,
        mode: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("pinned XDP link: {0}")]
    Link(String),
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("out of {0} slots")]
    Capacity(&'static str),
    #[error("cannot read per-CPU counters: {0}")]
    Cpus(String),
}

/// The mode the program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    fn parse(s: &str) -> Option<AttachMode> {
        match s.trim() {
            "native" => Some(AttachMode::Native),
            "generic" => Some(AttachMode::Generic),
            _ => None,
        }
    }
}

/// Where the program is attached and how it outlives the daemon.
enum Attachment {
    /// Attached through a link pinned in bpffs: survives the daemon.
    Pinned(PinPaths),
    /// Attached through a link owned by this process (no pin directory).
    Owned(XdpLinkId),
    /// Loaded for BPF_PROG_TEST_RUN only.
    None,
}

/// What is installed for one service.
#[derive(Debug, Clone)]
struct Installed {
    id: u32,
    bank: u32,
    value: ServiceValue,
    /// The active table, when this process wrote it.
    table: Option<std::sync::Arc<Vec<u16>>>,
    /// The table of the whole pool (every server at its `pool_weight`),
    /// when it differs from the active one (a server failed its checks).
    pool: Option<std::sync::Arc<Vec<u16>>>,
}

/// A real server's slot in the backend array.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    written: Backend,
}

/// Keeps the program's log ring buffer alive (it must outlive the load).
enum Logger {
    /// A task forwards records to our log.
    Task(tokio::task::JoinHandle<()>),
    /// Held but not read (test runs).
    Held(#[allow(dead_code)] Box<EbpfLogger<&'static dyn log::Log>>),
}

/// The loaded XDP program and the daemon's view of its maps.
pub struct XdpDataplane {
    logger: Option<Logger>,
    ebpf: Ebpf,
    /// The program's maps, typed, taken out of the object once at open.
    maps: Maps,
    /// The flow table, mapped (shared with flow sync's scans).
    flows: std::sync::Arc<FlowTable>,
    attachment: Attachment,
    interface: String,
    /// The interface index the program is attached to.
    ifindex: Option<u32>,
    /// The attach mode asked for (re-attaching uses it again).
    requested: XdpMode,
    mode: AttachMode,
    services: HashMap<ServiceKey, Installed>,
    fragments: BTreeMap<ServiceKey, ServiceValue>,
    /// The group-member trie as written: (prefix length, key) -> value.
    members: BTreeMap<(u32, MemberKey), ServiceValue>,
    slots: HashMap<(ServiceKey, IpAddr), Slot>,
    generations: Vec<u32>,
    settings: Option<Settings>,
    /// New flows recorded per second per CPU at most (0: no limit).
    new_flow_limit: u32,
    /// What each bank of the service index holds, as this process wrote
    /// it (`None`: not known, written whole next time).
    index_banks: [Option<Vec<director_common::IndexEntry>>; 2],
    /// The service index did not fit (said once).
    index_overflow_said: bool,
    /// The VIP filter as written to the map.
    filter: Vec<u64>,
    /// Bumped whenever a table, a real-server slot or a service entry is
    /// written: new flow-table exceptions can only appear then.
    version: u64,
    /// Where the addresses of the services applied are published (VRRP
    /// announces those before adding them: see [`super::Served`]).
    pub(super) served: Option<super::Served>,
}

/// A flow and the real server it is pinned to, in terms both directors
/// share (service key and real-server address, not local ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedFlow {
    pub flow: FlowKey,
    pub service: ServiceKey,
    pub backend: IpAddr,
}

/// How to open the dataplane.
#[derive(Debug, Clone)]
pub struct XdpOptions {
    pub interface: String,
    pub mode: XdpMode,
    /// Where to pin maps and the link; `None` ties the dataplane's life to
    /// this process.
    pub pins: Option<PinPaths>,
    /// Entries of the flow table.
    pub flow_table_size: u32,
}

/// Kernel memory of a flow table of `flows` flows: an array of 64-byte
/// entries (whole buckets) and its tag array (tag words and occupancy
/// bits: 8-byte elements), each page-rounded after a page of the array's
/// header (what `bpftool map show` reports as memlock).
pub fn flow_table_bytes(flows: u32) -> u64 {
    const PAGE: u64 = 4096;
    let entries = flow_entries(flows);
    let array = |bytes: u64| PAGE + bytes.div_ceil(PAGE) * PAGE;
    array(u64::from(entries) * std::mem::size_of::<FlowEntry>() as u64)
        + array(
            u64::from(director_common::flow_tag_array_elements(
                entries / FLOW_WAYS,
            )) * 8,
        )
}

impl XdpDataplane {
    /// Loads the program (adopting pinned maps when they exist) and attaches
    /// it, or swaps it into an existing pinned link without a gap. Must be
    /// called inside a tokio runtime (the program's logs are read by a task).
    pub fn open(opts: &XdpOptions) -> Result<XdpDataplane, XdpError> {
        let loaded = load(
            opts.pins.as_ref().map(|p| p.dir.as_path()),
            opts.flow_table_size,
        )?;
        let mut ebpf = loaded.ebpf;
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(Logger::Task(spawn_logger(logger))),
            Err(e) => {
                warn!(error = %e, "XDP program logs unavailable");
                None
            }
        };
        let interface = opts.interface.clone();
        let program = xdp_program(&mut ebpf)?;
        program.load()?;
        // Before the program sees a frame: the flow table's seed, and the
        // settings of an older pinned format carried over.
        let mut maps = Maps::take(&mut ebpf)?;
        let seed = maps.flow_seed(loaded.flows_adopted, loaded.carried_settings)?;
        let program = xdp_program(&mut ebpf)?;

        let (attachment, mode) = match &opts.pins {
            Some(pins) => attach_pinned(program, pins, &interface, opts.mode)?,
            None => {
                let (id, mode) = attach_new(program, &interface, opts.mode)?;
                (Attachment::Owned(id), mode)
            }
        };
        let (flows, tags) = maps.flows_maps()?;
        let table = FlowTable::map(flows, tags, loaded.flow_entries, seed)?;
        if loaded.flows_adopted && !loaded.tags_adopted {
            table.rebuild_tags();
        }
        let mut dp = XdpDataplane::new(
            ebpf, maps, table, logger, attachment, interface, opts.mode, mode,
        );
        dp.adopt()?;
        dp.carry(&loaded.carried);
        Ok(dp)
    }

    /// The hook VRRP calls when a virtual MAC becomes ours (inserted in
    /// the program's set) or stops being ours (removed). The set is taken
    /// out of the object and shared with the hook (the program keeps its
    /// own reference); `None` when it was taken already.
    pub fn vmac_hook(&mut self) -> Option<super::VmacHook> {
        let map = self.ebpf.take_map(director_common::MAP_VMACS)?;
        let set: aya::maps::HashMap<aya::maps::MapData, [u8; 8], u8> =
            aya::maps::HashMap::try_from(map).ok()?;
        let set = std::sync::Mutex::new(set);
        // A restarted daemon starts with no instance master.
        if let Ok(mut s) = set.lock() {
            let keys: Vec<[u8; 8]> = s.keys().flatten().collect();
            for k in keys {
                let _ = s.remove(&k);
            }
        }
        Some(std::sync::Arc::new(move |mac: [u8; 6], ours: bool| {
            let key = [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0];
            let Ok(mut s) = set.lock() else {
                return;
            };
            let result = if ours {
                s.insert(key, 1, 0)
            } else if s.get(&key, 0).is_ok() {
                s.remove(&key)
            } else {
                // Not ours already (an instance starting as backup says so).
                Ok(())
            };
            if let Err(e) = result {
                tracing::error!(vmac = %crate::net::neighbor::Mac(mac), error = %e, "cannot update the dataplane's virtual MACs");
            }
        }))
    }

    /// Loads the program without attaching it, for BPF_PROG_TEST_RUN.
    pub fn load_for_test() -> Result<XdpDataplane, XdpError> {
        Self::load_for_test_sized(director_common::MAX_FLOWS)
    }

    /// [`Self::load_for_test`] with a flow table of `flows` entries.
    pub fn load_for_test_sized(flows: u32) -> Result<XdpDataplane, XdpError> {
        let loaded = load(None, flows)?;
        let mut ebpf = loaded.ebpf;
        // Keep the log ring buffer alive (it must outlive the program load);
        // records are not read.
        let logger = EbpfLogger::init(&mut ebpf).ok();
        let program = xdp_program(&mut ebpf)?;
        program.load()?;
        let mut maps = Maps::take(&mut ebpf)?;
        let seed = maps.flow_seed(false, None)?;
        let (flows, tags) = maps.flows_maps()?;
        let table = FlowTable::map(flows, tags, loaded.flow_entries, seed)?;
        Ok(XdpDataplane::new(
            ebpf,
            maps,
            table,
            logger.map(|l| Logger::Held(Box::new(l))),
            Attachment::None,
            String::new(),
            XdpMode::Auto,
            AttachMode::Native,
        ))
    }

    /// A loaded program with nothing installed yet.
    #[expect(clippy::too_many_arguments, reason = "the parts open() assembled")]
    fn new(
        ebpf: Ebpf,
        maps: Maps,
        flows: FlowTable,
        logger: Option<Logger>,
        attachment: Attachment,
        interface: String,
        requested: XdpMode,
        mode: AttachMode,
    ) -> XdpDataplane {
        let settings = maps.settings.get(&0, 0).ok();
        XdpDataplane {
            logger,
            ebpf,
            flows: std::sync::Arc::new(flows),
            maps,
            attachment,
            ifindex: ifindex(&interface),
            interface,
            requested,
            mode,
            services: HashMap::new(),
            fragments: BTreeMap::new(),
            members: BTreeMap::new(),
            slots: HashMap::new(),
            generations: vec![0; MAX_REAL_SERVERS as usize],
            settings,
            new_flow_limit: 0,
            index_banks: [None, None],
            index_overflow_said: false,
            served: None,
            filter: vec![0; VIP_FILTER_WORDS as usize],
            version: 0,
        }
    }

    /// At most `n` new flows per second per CPU are recorded in the flow
    /// table (0: no limit); written with the next [`XdpDataplane::apply`].
    pub fn set_new_flow_limit(&mut self, n: u32) {
        self.new_flow_limit = n;
    }

    /// New flows forwarded but not recorded (past the limit), summed over
    /// CPUs.
    pub fn unrecorded_flows(&self) -> Result<u64, XdpError> {
        Ok(self
            .maps
            .unrecorded
            .get(&0, 0)?
            .iter()
            .fold(0u64, |a, v| a.wrapping_add(*v)))
    }

    /// The mode the program runs in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN); returns the
    /// verdict and the frame as the program left it.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, u64), XdpError> {
        let program: &Xdp = self
            .ebpf
            .program(PROG_DIRECTOR)
            .ok_or(XdpError::Missing(PROG_DIRECTOR))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration.as_nanos() as u64))
    }

    /// Direct access to the program, for benchmarks.
    pub fn program(&self) -> Result<&Xdp, XdpError> {
        Ok(self
            .ebpf
            .program(PROG_DIRECTOR)
            .ok_or(XdpError::Missing(PROG_DIRECTOR))?
            .try_into()?)
    }

    /// MACs of the real servers found in adopted (pinned) maps: the last
    /// ones a previous daemon used.
    pub fn known_macs(&self) -> Vec<(IpAddr, crate::net::neighbor::Mac)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.written.flags & BACKEND_USABLE != 0)
            .map(|((_, addr), s)| (*addr, crate::net::neighbor::Mac(s.written.mac)))
            .collect()
    }

    /// Counters of a service, summed over CPUs.
    pub fn service_traffic(&self, service: &ServicePlan) -> Result<Traffic, XdpError> {
        match self.services.get(&service.key()) {
            Some(i) => self.read_counters(Stats::Service, i.id),
            None => Ok(Traffic::default()),
        }
    }

    /// Counters of one real server of a service, summed over CPUs.
    pub fn backend_traffic(
        &self,
        service: &ServicePlan,
        address: IpAddr,
    ) -> Result<Traffic, XdpError> {
        match self.slots.get(&(service.key(), address)) {
            Some(slot) => self.read_counters(Stats::Backend, slot.id),
            None => Ok(Traffic::default()),
        }
    }

    /// Re-attaches the program when the interface of its name is another
    /// one than it runs on (deleted and re-created, or renamed in its
    /// place): returns whether it did. Nothing happens while no interface
    /// has the name (the program stays where it was).
    pub fn follow_interface(&mut self) -> Result<bool, XdpError> {
        let Some(now) = ifindex(&self.interface) else {
            return Ok(false);
        };
        if self.ifindex == Some(now) {
            return Ok(false);
        }
        let (attachment, mode) = match std::mem::replace(&mut self.attachment, Attachment::None) {
            Attachment::Pinned(pins) => {
                // Unpinning the old link detaches it (from the old device,
                // if it still exists).
                let _ = std::fs::remove_file(pins.link());
                let program = xdp_program(&mut self.ebpf)?;
                pin_new_link(program, &pins, &self.interface, self.requested)?
            }
            Attachment::Owned(link) => {
                self.detach_owned(link);
                let program = xdp_program(&mut self.ebpf)?;
                let (id, mode) = attach_new(program, &self.interface, self.requested)?;
                (Attachment::Owned(id), mode)
            }
            Attachment::None => return Ok(false),
        };
        info!(
            interface = %self.interface,
            old_ifindex = ?self.ifindex,
            ifindex = now,
            mode = mode.as_str(),
            "XDP program re-attached: the interface was re-created"
        );
        self.attachment = attachment;
        self.mode = mode;
        self.ifindex = Some(now);
        Ok(true)
    }

    /// Leaves the dataplane running for the next daemon when it is pinned;
    /// detaches it otherwise. Called on every daemon exit.
    pub fn release(mut self) {
        match std::mem::replace(&mut self.attachment, Attachment::None) {
            Attachment::Pinned(_) => info!(
                interface = %self.interface,
                "daemon exiting; the pinned XDP dataplane keeps forwarding"
            ),
            Attachment::Owned(link) => self.detach_owned(link),
            Attachment::None => {}
        }
    }

    fn detach_owned(&mut self, link: XdpLinkId) {
        let result = xdp_program(&mut self.ebpf).and_then(|p| Ok(p.detach(link)?));
        match result {
            Ok(()) => info!(interface = %self.interface, "XDP program detached"),
            Err(e) => warn!(interface = %self.interface, error = %e, "detaching XDP failed"),
        }
    }

    /// Reads back what a previous daemon installed in pinned maps.
    fn adopt(&mut self) -> Result<(), XdpError> {
        self.filter = (0..VIP_FILTER_WORDS)
            .map(|i| self.maps.vip_filter.get(&i, 0))
            .collect::<Result<_, _>>()?;
        let services: Vec<(ServiceKey, ServiceValue)> =
            self.maps.services.iter().filter_map(Result::ok).collect();
        let mut by_id = HashMap::new();
        for (key, value) in services {
            if key.flags & KEY_FRAGMENT != 0 {
                self.fragments.insert(key, value);
                continue;
            }
            let bank = (value.table / MAGLEV_ELEMS_PER_TABLE) % 2;
            by_id.insert(value.id, key);
            self.services.insert(
                key,
                Installed {
                    id: value.id,
                    bank,
                    value,
                    table: None,
                    pool: None,
                },
            );
        }
        self.members = self
            .maps
            .members
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k.prefix_len(), k.data()), v))
            .collect();
        let all: Vec<Backend> = (0..MAX_REAL_SERVERS)
            .map(|id| self.maps.backends.get(&id, 0))
            .collect::<Result<_, _>>()?;
        let mut adopted = Vec::new();
        for (id, b) in (0u32..).zip(all) {
            self.generations[id as usize] = b.generation;
            if b.family == 0 {
                continue;
            }
            let Some(key) = by_id.get(&b.service) else {
                continue;
            };
            let addr = match b.family {
                4 => IpAddr::V4(Ipv4Addr::new(b.addr[0], b.addr[1], b.addr[2], b.addr[3])),
                _ => IpAddr::V6(Ipv6Addr::from(b.addr)),
            };
            adopted.push(((*key, addr), Slot { id, written: b }));
        }
        if !self.services.is_empty() {
            info!(
                services = self.services.len(),
                real_servers = adopted.len(),
                "adopted the running dataplane"
            );
        }
        self.slots.extend(adopted);
        Ok(())
    }

    fn free_service_id(&self) -> Result<u32, XdpError> {
        let used: std::collections::HashSet<u32> = self.services.values().map(|i| i.id).collect();
        (0..MAX_SERVICES)
            .find(|id| !used.contains(id))
            .ok_or(XdpError::Capacity("service"))
    }

    fn zero_counters(&mut self, which: Stats, index: u32) -> Result<(), XdpError> {
        let cpus = nr_cpus().map_err(|(_, e)| XdpError::Cpus(e.to_string()))?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
            .map_err(|e| XdpError::Cpus(e.to_string()))?;
        self.maps.stats_mut(which).set(index, zeros, 0)?;
        Ok(())
    }

    fn read_counters(&self, which: Stats, index: u32) -> Result<Traffic, XdpError> {
        let values = self.maps.stats(which).get(&index, 0)?;
        Ok(values.iter().fold(Traffic::default(), |t, c| Traffic {
            packets: t.packets + c.packets,
            bytes: t.bytes + c.bytes,
            new_flows: t.new_flows + c.new_flows,
        }))
    }
}

impl Drop for XdpDataplane {
    fn drop(&mut self) {
        if let Attachment::Owned(link) = std::mem::replace(&mut self.attachment, Attachment::None) {
            self.detach_owned(link);
        }
        if let Some(Logger::Task(task)) = self.logger.take() {
            task.abort();
        }
    }
}
