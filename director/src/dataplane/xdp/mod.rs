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
    BACKEND_DRAINING, BACKEND_TUNNEL, BACKEND_USABLE, Backend, Counters, KEY_FRAGMENT,
    MAGLEV_ELEMS_PER_TABLE, MAGLEV_LANES, MAGLEV_TABLE_SIZE, MAP_BACKEND_STATS, MAP_BACKENDS,
    MAP_MAGLEV, MAP_MEMBERS, MAP_SERVICE_STATS, MAP_SERVICES, MAP_SETTINGS, MAP_VIP_FILTER,
    MAX_REAL_SERVERS, MAX_SERVICES, MEMBER_PREFIX_BASE, MemberKey, NO_BACKEND, PINNED_MAPS,
    PROG_DIRECTOR, SVC_PERSISTENT, SVC_SOURCE_HASH, ServiceKey, ServiceValue, Settings,
    VIP_FILTER_WORDS, maglev_base,
};
use director_common::{FlowKey, FlowValue, MAP_FLOWS};

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

mod exceptions;
mod link;

pub use exceptions::Scan;

use super::{ServicePlan, Traffic};
use crate::{
    config::{Scheduler, XdpMode},
    maglev,
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
    /// The VIP filter as written to the map.
    filter: Vec<u64>,
    /// Bumped whenever a table, a real-server slot or a service entry is
    /// written: new flow-table exceptions can only appear then.
    version: u64,
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

/// Kernel memory of a flow table of `entries` (preallocated LRU hash:
/// per element the kernel's element header, key and value, 8-byte
/// rounded; an estimate of what `bpftool map show` reports as memlock).
pub fn flow_table_bytes(entries: u32) -> u64 {
    // (Measured: a million-entry table is 128,778,112 bytes of memlock on
    // Linux 6.18, 128.8 bytes per entry.)
    const ELEMENT_HEADER: u64 = 64;
    let round = |n: usize| (n as u64).div_ceil(8) * 8;
    u64::from(entries)
        * (ELEMENT_HEADER
            + round(std::mem::size_of::<FlowKey>())
            + round(std::mem::size_of::<FlowValue>()))
}

impl XdpDataplane {
    /// Loads the program (adopting pinned maps when they exist) and attaches
    /// it, or swaps it into an existing pinned link without a gap. Must be
    /// called inside a tokio runtime (the program's logs are read by a task).
    pub fn open(opts: &XdpOptions) -> Result<XdpDataplane, XdpError> {
        let mut ebpf = load(
            opts.pins.as_ref().map(|p| p.dir.as_path()),
            opts.flow_table_size,
        )?;
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

        let (attachment, mode) = match &opts.pins {
            Some(pins) => attach_pinned(program, pins, &interface, opts.mode)?,
            None => {
                let (id, mode) = attach_new(program, &interface, opts.mode)?;
                (Attachment::Owned(id), mode)
            }
        };
        let mut dp = XdpDataplane::new(ebpf, logger, attachment, interface, opts.mode, mode);
        dp.adopt()?;
        Ok(dp)
    }

    /// The hook VRRP calls when a virtual MAC becomes ours (inserted in
    /// the program's set) or stops being ours (removed). The set is taken
    /// out of the object and shared with the hook (the program keeps its
    /// own reference); `None` when it was taken already.
    pub fn vmac_hook(&mut self) -> Option<crate::vrrp::instance::VmacHook> {
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
                tracing::error!(vmac = %crate::neighbor::Mac(mac), error = %e, "cannot update the dataplane's virtual MACs");
            }
        }))
    }

    /// Loads the program without attaching it, for BPF_PROG_TEST_RUN.
    pub fn load_for_test() -> Result<XdpDataplane, XdpError> {
        let mut ebpf = load(None, director_common::MAX_FLOWS)?;
        // Keep the log ring buffer alive (it must outlive the program load);
        // records are not read.
        let logger = EbpfLogger::init(&mut ebpf).ok();
        let program = xdp_program(&mut ebpf)?;
        program.load()?;
        Ok(XdpDataplane::new(
            ebpf,
            logger.map(|l| Logger::Held(Box::new(l))),
            Attachment::None,
            String::new(),
            XdpMode::Auto,
            AttachMode::Native,
        ))
    }

    /// A loaded program with nothing installed yet.
    fn new(
        ebpf: Ebpf,
        logger: Option<Logger>,
        attachment: Attachment,
        interface: String,
        requested: XdpMode,
        mode: AttachMode,
    ) -> XdpDataplane {
        XdpDataplane {
            logger,
            ebpf,
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
            settings: None,
            filter: vec![0; VIP_FILTER_WORDS as usize],
            version: 0,
        }
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

    /// Makes the maps match `plan`. `mac` is our interface's address.
    pub fn apply(
        &mut self,
        plan: &[ServicePlan],
        udp_timeout_s: u32,
        link: crate::neighbor::LinkInfo,
    ) -> Result<(), XdpError> {
        let settings = Settings {
            udp_timeout_ns: u64::from(udp_timeout_s) * 1_000_000_000,
            mac: link.mac.0,
            mtu: link.mtu.min(u32::from(u16::MAX)) as u16,
            tunnel_src4: TUNNEL_SOURCE_V4,
            _pad: [0; 4],
            tunnel_src6: TUNNEL_SOURCE_V6,
        };
        if self.settings != Some(settings) {
            let mut array: Array<&mut MapData, Settings> =
                Array::try_from(self.map_mut(MAP_SETTINGS)?)?;
            array.set(0, settings, 0)?;
            self.settings = Some(settings);
        }
        let wanted: BTreeMap<ServiceKey, &ServicePlan> =
            plan.iter().map(|s| (s.key(), s)).collect();
        // The VIP filter lets through old and new VIPs while they change,
        // then exactly the new ones.
        let member_addrs: Vec<ServiceKey> = plan
            .iter()
            .flat_map(|s| {
                s.members.iter().flat_map(|m| m.addresses()).map(|a| {
                    crate::config::ServiceAddr {
                        address: a,
                        port: 0,
                        protocol: s.protocol,
                    }
                    .key()
                })
            })
            .collect();
        let new_filter = vip_filter(wanted.keys().chain(&member_addrs));
        let union: Vec<u64> = self
            .filter
            .iter()
            .zip(&new_filter)
            .map(|(a, b)| a | b)
            .collect();
        self.write_filter(union)?;

        // Services that left: stop matching them, then free their slots.
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in &gone {
            self.services_map()?.remove(key)?;
            self.services.remove(key);
            info!(
                service = %crate::config::ServiceAddr::from_key(key).map_or_else(|| "?".into(), |s| s.to_string()),
                "virtual service removed from the dataplane"
            );
        }

        let mut retired = Vec::new();
        for (key, service) in &wanted {
            // Service id, zeroed counters for a new one.
            let id = match self.services.get(key) {
                Some(i) => i.id,
                None => {
                    let id = self.free_service_id()?;
                    self.zero_counters(MAP_SERVICE_STATS, id)?;
                    id
                }
            };
            // Real-server slots: write new and changed ones first, so the
            // table never points at a slot not yet written.
            let mut entries = Vec::new();
            for b in &service.backends {
                let slot = self.slot(*key, id, b.address)?;
                let usable = b.mac.is_some();
                let mut next = slot.written;
                next.mac = b.mac.map(|m| m.0).unwrap_or([0; 6]);
                next.flags = match (usable, b.weight) {
                    (false, _) => 0,
                    (true, 0) => BACKEND_USABLE | BACKEND_DRAINING,
                    (true, _) => BACKEND_USABLE,
                } | match service.lb_kind {
                    crate::config::LbKind::Tun => BACKEND_TUNNEL,
                    crate::config::LbKind::Dr => 0,
                };
                if next != slot.written {
                    self.write_backend(slot.id, &next)?;
                    if let Some(s) = self.slots.get_mut(&(*key, b.address)) {
                        s.written = next;
                    }
                }
                if usable {
                    entries.push(maglev::Entry {
                        address: b.address,
                        weight: b.weight,
                        id: slot.id as u16,
                    });
                }
            }
            let table = maglev::build(&entries, MAGLEV_TABLE_SIZE);
            let flags = match service.scheduler {
                Scheduler::Sh => SVC_SOURCE_HASH,
                // The others are refused by the config check (IPVS only).
                Scheduler::Mh | Scheduler::Rr | Scheduler::Wrr | Scheduler::Lc | Scheduler::Wlc => {
                    0
                }
            } | if service.persistence_timeout > 0 {
                SVC_PERSISTENT
            } else {
                0
            };
            let installed = self.services.get(key).cloned();
            let same_table = installed
                .as_ref()
                .and_then(|i| i.table.as_ref())
                .is_some_and(|t| **t == table);
            let bank = match &installed {
                Some(i) if same_table => i.bank,
                Some(i) => 1 - i.bank,
                None => 0,
            };
            if !same_table {
                self.write_table(maglev_base(id, bank), &table)?;
            }
            let value = ServiceValue {
                id,
                table: maglev_base(id, bank),
                flags,
                persistence_timeout: service.persistence_timeout,
            };
            if installed.as_ref().map(|i| i.value) != Some(value) {
                self.services_map()?.insert(key, value, 0)?;
                let live: Vec<String> = entries
                    .iter()
                    .filter(|e| e.weight > 0)
                    .map(|e| e.address.to_string())
                    .collect();
                info!(
                    service = %service.name(),
                    scheduler = service.scheduler.as_str(),
                    real_servers = ?live,
                    "virtual service programmed"
                );
            }
            self.services.insert(
                *key,
                Installed {
                    id,
                    bank,
                    value,
                    table: Some(std::sync::Arc::new(table)),
                },
            );
            // Slots of real servers no longer in this service.
            for (k, addr) in self.slots.keys() {
                if k == key && !service.backends.iter().any(|b| b.address == *addr) {
                    retired.push((*k, *addr));
                }
            }
        }
        for key in &gone {
            retired.extend(self.slots.keys().filter(|(k, _)| k == key).copied());
        }
        // Only now that no table points at them: retire removed servers.
        // Their flows find the slot unusable and are placed again.
        for k in retired {
            if let Some(slot) = self.slots.remove(&k) {
                let cleared = Backend {
                    generation: slot.written.generation,
                    ..Backend::default()
                };
                self.write_backend(slot.id, &cleared)?;
            }
        }
        self.sync_fragments()?;
        self.sync_members(plan)?;
        self.write_filter(new_filter)?;
        Ok(())
    }

    /// Writes the group-member trie for `plan`: each member's ports as
    /// aligned blocks, and a fragment entry per member address (fragments
    /// after the first carry no port), each with its service's value.
    /// New and changed entries first, then stale ones go.
    fn sync_members(&mut self, plan: &[ServicePlan]) -> Result<(), XdpError> {
        let mut wanted: BTreeMap<(u32, MemberKey), ServiceValue> = BTreeMap::new();
        for s in plan.iter().filter(|s| !s.members.is_empty()) {
            let Some(value) = self.services.get(&s.key()).map(|i| i.value) else {
                continue;
            };
            let protocol = s.protocol.number();
            for m in &s.members {
                let mut blocks = [(0u16, 0u8); 32];
                let n = director_common::port_blocks(m.ports.0, m.ports.1, &mut blocks);
                for a in m.addresses() {
                    let base = crate::config::ServiceAddr {
                        address: a,
                        port: 0,
                        protocol: s.protocol,
                    }
                    .key();
                    for (start, bits) in &blocks[..n] {
                        let key = MemberKey {
                            protocol,
                            flags: base.flags,
                            addr: base.addr,
                            port: start.to_be_bytes(),
                        };
                        wanted.insert((MEMBER_PREFIX_BASE + u32::from(*bits), key), value);
                    }
                    let frag = MemberKey {
                        protocol,
                        flags: base.flags | KEY_FRAGMENT,
                        addr: base.addr,
                        port: [0, 0],
                    };
                    wanted.entry((MEMBER_PREFIX_BASE, frag)).or_insert(value);
                }
            }
        }
        if wanted == self.members {
            return Ok(());
        }
        self.version += 1;
        let old = std::mem::take(&mut self.members);
        let mut trie: LpmTrie<&mut MapData, MemberKey, ServiceValue> =
            LpmTrie::try_from(self.map_mut(MAP_MEMBERS)?)?;
        for (k, v) in &wanted {
            if old.get(k) != Some(v)
                && let Err(e) = trie.insert(&LpmKey::new(k.0, k.1), v, 0)
            {
                // Remember every key as possibly written, none as right:
                // the next apply writes them all again and removes what
                // is not wanted then.
                let unknown = ServiceValue {
                    id: u32::MAX,
                    ..ServiceValue::default()
                };
                self.members = old
                    .into_keys()
                    .chain(wanted.into_keys())
                    .map(|k| (k, unknown))
                    .collect();
                return Err(e.into());
            }
        }
        for k in old.keys() {
            if !wanted.contains_key(k) {
                // An entry already gone is fine.
                let _ = trie.remove(&LpmKey::new(k.0, k.1));
            }
        }
        self.members = wanted;
        Ok(())
    }

    fn write_filter(&mut self, words: Vec<u64>) -> Result<(), XdpError> {
        let changed: Vec<(u32, u64)> = (0u32..)
            .zip(words.iter().zip(&self.filter))
            .filter(|(_, (new, old))| new != old)
            .map(|(i, (new, _))| (i, *new))
            .collect();
        if !changed.is_empty() {
            let mut array: Array<&mut MapData, u64> =
                Array::try_from(self.map_mut(MAP_VIP_FILTER)?)?;
            for (i, word) in changed {
                array.set(i, word, 0)?;
            }
        }
        self.filter = words;
        Ok(())
    }

    /// MACs of the real servers found in adopted (pinned) maps: the last
    /// ones a previous daemon used.
    pub fn known_macs(&self) -> Vec<(IpAddr, crate::neighbor::Mac)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.written.flags & BACKEND_USABLE != 0)
            .map(|((_, addr), s)| (*addr, crate::neighbor::Mac(s.written.mac)))
            .collect()
    }

    /// Counters of a service, summed over CPUs.
    pub fn service_traffic(&self, service: &ServicePlan) -> Result<Traffic, XdpError> {
        match self.services.get(&service.key()) {
            Some(i) => self.read_counters(MAP_SERVICE_STATS, i.id),
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
            Some(slot) => self.read_counters(MAP_BACKEND_STATS, slot.id),
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
        self.filter = {
            let array: Array<&MapData, u64> = Array::try_from(self.map(MAP_VIP_FILTER)?)?;
            (0..VIP_FILTER_WORDS)
                .map(|i| array.get(&i, 0))
                .collect::<Result<_, _>>()?
        };
        let services: Vec<(ServiceKey, ServiceValue)> = {
            let map: BpfHashMap<&MapData, ServiceKey, ServiceValue> =
                BpfHashMap::try_from(self.map(MAP_SERVICES)?)?;
            map.iter().filter_map(Result::ok).collect()
        };
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
                },
            );
        }
        self.members = {
            let trie: LpmTrie<&MapData, MemberKey, ServiceValue> =
                LpmTrie::try_from(self.map(MAP_MEMBERS)?)?;
            trie.iter()
                .filter_map(Result::ok)
                .map(|(k, v)| ((k.prefix_len(), k.data()), v))
                .collect()
        };
        let all: Vec<Backend> = {
            let backends: Array<&MapData, Backend> = Array::try_from(self.map(MAP_BACKENDS)?)?;
            (0..MAX_REAL_SERVERS)
                .map(|id| backends.get(&id, 0))
                .collect::<Result<_, _>>()?
        };
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

    /// The slot of a service's real server, allocated on first use.
    fn slot(
        &mut self,
        key: ServiceKey,
        service_id: u32,
        address: IpAddr,
    ) -> Result<Slot, XdpError> {
        if let Some(slot) = self.slots.get(&(key, address)) {
            return Ok(*slot);
        }
        let used: std::collections::HashSet<u32> = self.slots.values().map(|s| s.id).collect();
        let id = (0..MAX_REAL_SERVERS)
            .find(|id| !used.contains(id))
            .ok_or(XdpError::Capacity("real server"))?;
        let generation = self.generations[id as usize].wrapping_add(1);
        self.generations[id as usize] = generation;
        let (family, addr) = match address {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (4, b)
            }
            IpAddr::V6(a) => (6, a.octets()),
        };
        let written = Backend {
            mac: [0; 6],
            flags: 0,
            family,
            generation,
            service: service_id,
            addr,
            _pad: [0; 4],
        };
        self.zero_counters(MAP_BACKEND_STATS, id)?;
        self.write_backend(id, &written)?;
        let slot = Slot { id, written };
        self.slots.insert((key, address), slot);
        Ok(slot)
    }

    /// Fragments of a VIP and protocol follow its any-port service, or else
    /// its lowest port's: one entry per (VIP, protocol).
    fn sync_fragments(&mut self) -> Result<(), XdpError> {
        let mut wanted: BTreeMap<ServiceKey, ServiceValue> = BTreeMap::new();
        let mut keys: Vec<&ServiceKey> = self.services.keys().collect();
        keys.sort_by_key(|k| (k.addr, k.protocol, k.flags, k.port()));
        for key in keys {
            let frag = ServiceKey {
                port: [0, 0],
                flags: key.flags | KEY_FRAGMENT,
                ..*key
            };
            wanted.entry(frag).or_insert(self.services[key].value);
        }
        let stale: Vec<ServiceKey> = self
            .fragments
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.services_map()?.remove(&k)?;
            self.fragments.remove(&k);
        }
        for (k, v) in wanted {
            if self.fragments.get(&k) != Some(&v) {
                self.services_map()?.insert(k, v, 0)?;
                self.fragments.insert(k, v);
            }
        }
        Ok(())
    }

    fn write_table(&mut self, base: u32, table: &[u16]) -> Result<(), XdpError> {
        self.version += 1;
        let mut array: Array<&mut MapData, [u16; 4]> = Array::try_from(self.map_mut(MAP_MAGLEV)?)?;
        for (i, chunk) in table.chunks(MAGLEV_LANES as usize).enumerate() {
            let mut elem = [NO_BACKEND; 4];
            elem[..chunk.len()].copy_from_slice(chunk);
            array.set(base + i as u32, elem, 0)?;
        }
        Ok(())
    }

    fn write_backend(&mut self, id: u32, b: &Backend) -> Result<(), XdpError> {
        self.version += 1;
        let mut array: Array<&mut MapData, Backend> = Array::try_from(self.map_mut(MAP_BACKENDS)?)?;
        array.set(id, b, 0)?;
        Ok(())
    }

    fn services_map(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, ServiceKey, ServiceValue>, XdpError> {
        self.version += 1;
        Ok(BpfHashMap::try_from(self.map_mut(MAP_SERVICES)?)?)
    }

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
        let MapOrNot::Data(flows) = MapOrNot::of(self.map(MAP_FLOWS)?) else {
            return Err(XdpError::Missing(MAP_FLOWS));
        };
        let MapOrNot::Data(maglev) = MapOrNot::of(self.map(MAP_MAGLEV)?) else {
            return Err(XdpError::Missing(MAP_MAGLEV));
        };
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
                    FlowValue {
                        backend: slot.id,
                        generation: slot.written.generation,
                        service: installed.id,
                        _pad: 0,
                        atime: now,
                    },
                ))
            })
            .collect();
        let mut map: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
            BpfHashMap::try_from(self.map_mut(MAP_FLOWS)?)?;
        let mut added = 0;
        for (k, v) in values {
            // BPF_NOEXIST: never overrides what this director decided.
            if map.insert(k, v, 1).is_ok() {
                added += 1;
            }
        }
        Ok(added)
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, XdpError> {
        self.ebpf.map(name).ok_or(XdpError::Missing(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, XdpError> {
        self.ebpf.map_mut(name).ok_or(XdpError::Missing(name))
    }

    fn free_service_id(&self) -> Result<u32, XdpError> {
        let used: std::collections::HashSet<u32> = self.services.values().map(|i| i.id).collect();
        (0..MAX_SERVICES)
            .find(|id| !used.contains(id))
            .ok_or(XdpError::Capacity("service"))
    }

    fn zero_counters(&mut self, map: &'static str, index: u32) -> Result<(), XdpError> {
        let cpus = nr_cpus().map_err(|(_, e)| XdpError::Cpus(e.to_string()))?;
        let mut array: PerCpuArray<&mut MapData, Counters> =
            PerCpuArray::try_from(self.map_mut(map)?)?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
            .map_err(|e| XdpError::Cpus(e.to_string()))?;
        array.set(index, zeros, 0)?;
        Ok(())
    }

    fn read_counters(&self, map: &'static str, index: u32) -> Result<Traffic, XdpError> {
        let array: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(self.map(map)?)?;
        let values = array.get(&index, 0)?;
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

/// The map data behind an aya map of the kinds the dataplane uses.
enum MapOrNot<'a> {
    Data(&'a MapData),
    Other,
}

impl<'a> MapOrNot<'a> {
    fn of(map: &'a aya::maps::Map) -> MapOrNot<'a> {
        use aya::maps::Map;
        match map {
            Map::HashMap(d) | Map::LruHashMap(d) | Map::Array(d) => MapOrNot::Data(d),
            _ => MapOrNot::Other,
        }
    }
}

/// The VIP filter bitmap for a set of services.
fn vip_filter<'a>(keys: impl Iterator<Item = &'a ServiceKey>) -> Vec<u64> {
    use director_common::vip_bucket;
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for key in keys {
        let bucket = vip_bucket(&key.addr);
        words[(bucket / 64) as usize] |= 1 << (bucket % 64);
    }
    words
}

fn load(pin_dir: Option<&Path>, flows: u32) -> Result<Ebpf, XdpError> {
    if PROGRAM.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_FLOWS, flows);
    if let Some(dir) = pin_dir {
        // A pinned flow table of another size is re-created at the size
        // asked for (a pinned map is reused as it is otherwise).
        let pinned = dir.join(MAP_FLOWS);
        if let Ok(info) = aya::maps::MapInfo::from_pin(&pinned)
            && info.max_entries() != flows
        {
            warn!(
                old = info.max_entries(),
                new = flows,
                "flow table resized: its flows are placed again (by Maglev: on the same real servers unless the pool changed)"
            );
            let _ = std::fs::remove_file(&pinned);
        }
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok(loader.load(PROGRAM)?)
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    Ok(ebpf
        .program_mut(PROG_DIRECTOR)
        .ok_or(XdpError::Missing(PROG_DIRECTOR))?
        .try_into()?)
}

/// Attaches with a new link, native first when `mode` allows.
fn attach_new(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> Result<(XdpLinkId, AttachMode), XdpError> {
    let attach = |program: &mut Xdp, mode: AttachMode| {
        let flags = match mode {
            AttachMode::Native => AyaXdpMode::Driver,
            AttachMode::Generic => AyaXdpMode::Skb,
        };
        program
            .attach(interface, flags)
            .map_err(|source| XdpError::Attach {
                interface: interface.to_string(),
                mode: mode.as_str(),
                source,
            })
    };
    let result = match mode {
        XdpMode::Native => (attach(program, AttachMode::Native)?, AttachMode::Native),
        XdpMode::Generic => (attach(program, AttachMode::Generic)?, AttachMode::Generic),
        XdpMode::Auto => match attach(program, AttachMode::Native) {
            Ok(link) => (link, AttachMode::Native),
            Err(e) => {
                warn!(error = %e, "native XDP unavailable, using generic (skb) mode: expect lower throughput");
                (attach(program, AttachMode::Generic)?, AttachMode::Generic)
            }
        },
    };
    info!(interface, mode = result.1.as_str(), "XDP program attached");
    Ok(result)
}

/// Attaches through a link pinned in `pins`: replaces the program in an
/// existing link to the same interface (no gap in forwarding), or attaches
/// and pins a new link. A pinned link whose interface is gone (deleted,
/// re-created under the same name: the kernel refuses to update such a
/// link) or is another one is unpinned first.
fn attach_pinned(
    program: &mut Xdp,
    pins: &PinPaths,
    interface: &str,
    mode: XdpMode,
) -> Result<(Attachment, AttachMode), XdpError> {
    let link_path = pins.link();
    let info = std::fs::read_to_string(pins.link_info()).unwrap_or_default();
    let mut info = info.split_whitespace();
    let pinned_mode = info.nth(1).and_then(AttachMode::parse);
    if link_path.exists() {
        let wanted = ifindex(interface);
        match link::pinned(&link_path) {
            Ok(l) if l.ifindex == 0 => warn!(
                interface,
                "the pinned XDP link's interface is gone (deleted or re-created); attaching anew"
            ),
            // Indexes repeat across network namespaces: the link is ours
            // only if the interface of that index here runs its program.
            Ok(l) if link::attached_program(l.ifindex).ok().flatten() != Some(l.program_id) => {
                return Err(XdpError::Link(format!(
                    "{} holds an XDP link to an interface of another network namespace (its ifindex {} here does not run its program): another director uses this pin directory; give each daemon its own state_dir or pin_dir",
                    link_path.display(),
                    l.ifindex
                )));
            }
            Ok(l) if Some(l.ifindex) == wanted => {
                let pinned = PinnedLink::from_pin(&link_path)
                    .map_err(|e| XdpError::Link(format!("{}: {e}", link_path.display())))?;
                let fd_link: FdLink = pinned.into();
                let link = XdpLink::try_from(fd_link)
                    .map_err(|e| XdpError::Link(format!("not an XDP link: {e}")))?;
                program.attach_to_link(link)?;
                let mode = pinned_mode.unwrap_or(AttachMode::Native);
                info!(
                    interface,
                    mode = mode.as_str(),
                    "XDP program replaced in the pinned link, without a gap"
                );
                return Ok((Attachment::Pinned(pins.clone()), mode));
            }
            Ok(l) => warn!(
                interface,
                pinned_ifindex = l.ifindex,
                ifindex = ?wanted,
                "the pinned XDP link is on another interface; moving it"
            ),
            Err(e) => warn!(interface, error = %e, "unreadable pinned XDP link; attaching anew"),
        }
        std::fs::remove_file(&link_path).map_err(|source| XdpError::PinDir {
            path: link_path.clone(),
            source,
        })?;
    }
    pin_new_link(program, pins, interface, mode)
}

/// Attaches with a new link and pins it.
fn pin_new_link(
    program: &mut Xdp,
    pins: &PinPaths,
    interface: &str,
    mode: XdpMode,
) -> Result<(Attachment, AttachMode), XdpError> {
    let link_path = pins.link();
    let (id, mode) = attach_new(program, interface, mode)?;
    let link = program.take_link(id)?;
    let fd_link = FdLink::try_from(link).map_err(|e| XdpError::Link(e.to_string()))?;
    fd_link
        .pin(&link_path)
        .map_err(|e| XdpError::Link(format!("pinning at {}: {e}", link_path.display())))?;
    let info = pins.link_info();
    std::fs::write(&info, format!("{interface} {}\n", mode.as_str()))
        .map_err(|source| XdpError::PinDir { path: info, source })?;
    Ok((Attachment::Pinned(pins.clone()), mode))
}

/// The interface's index, if it exists.
fn ifindex(interface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(interface).ok()
}

/// Removes the pinned dataplane in `dir`: unpinning the link detaches the
/// program; unpinning the maps frees them. Returns what was removed.
pub fn flush(dir: &Path, state_dir: &Path) -> Result<Vec<String>, XdpError> {
    let mut removed = Vec::new();
    let pins = PinPaths {
        dir: dir.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
    };
    let mut paths = vec![pins.link(), pins.link_info()];
    paths.extend(PINNED_MAPS.iter().map(|name| dir.join(name)));
    for path in paths {
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| XdpError::PinDir {
                path: path.clone(),
                source,
            })?;
            removed.push(path.display().to_string());
        }
    }
    Ok(removed)
}

/// Forwards the XDP program's log records to our log, as they arrive.
fn spawn_logger(logger: EbpfLogger<&'static dyn log::Log>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer's fd and never closes or
        // replaces it while the AsyncFd owns the logger.
        let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "cannot poll the XDP log buffer");
                return;
            }
        };
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    warn!(error = %e, "XDP log buffer closed");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    })
}
