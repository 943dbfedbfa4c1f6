//! The XDP dataplane: loads `director-ebpf`, attaches it to the interface,
//! and keeps its maps equal to the daemon's plan.
//!
//! Updates never show a packet a half-written service: each service owns two
//! banks of backend slots; a new backend list is written into the idle bank
//! and the service entry (bank start, count) is then replaced in one map
//! update, which the kernel makes atomic for readers.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, xdp::XdpLinkId, xdp::XdpMode as AyaXdpMode},
    util::nr_cpus,
};
use aya_log::EbpfLogger;
use director_common::{
    Backend, Counters, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_SERVICE_STATS, MAP_SERVICES,
    MAX_REAL_SERVERS, MAX_SERVICES, PROG_DIRECTOR, ServiceKey, ServiceValue, bank_start,
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use super::{BackendPlan, ServicePlan, Traffic};
use crate::config::XdpMode;

/// The XDP program, built by build.rs and embedded in the binary.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director"));

/// Errors from loading, attaching or programming the XDP dataplane.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("the XDP program is missing from this binary (built with AYA_BUILD_SKIP)")]
    NotBuilt,
    #[error("cannot load the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program error: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP map error: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("map {0} is missing from the XDP program")]
    MissingMap(&'static str),
    #[error("cannot attach XDP to {interface} in {mode} mode: {source}")]
    Attach {
        interface: String,
        mode: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("out of {0} slots")]
    Capacity(&'static str),
    #[error("cannot read per-CPU counters: {0}")]
    Cpus(String),
}

/// The mode the program ended up attached in.
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
}

/// What is installed for one service.
#[derive(Debug)]
struct Installed {
    id: u32,
    bank: u32,
    backends: Vec<BackendPlan>,
}

/// The loaded, attached XDP program and the daemon's view of its maps.
pub struct XdpDataplane {
    // Field order matters on drop: the logger task goes first.
    logger: Option<tokio::task::JoinHandle<()>>,
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    interface: String,
    mode: AttachMode,
    services: HashMap<ServiceKey, Installed>,
    backend_ids: HashMap<(ServiceKey, IpAddr), u32>,
}

impl XdpDataplane {
    /// Loads the program and attaches it to `interface`. Must be called
    /// inside a tokio runtime (the program's log records are read by a task).
    pub fn attach(interface: &str, mode: XdpMode) -> Result<XdpDataplane, XdpError> {
        if PROGRAM.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        let mut ebpf = EbpfLoader::new().load(PROGRAM)?;
        // The logger owns the log ring buffer: keep it alive for as long as
        // the program is loaded.
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(spawn_logger(logger)),
            Err(e) => {
                warn!(error = %e, "XDP program logs unavailable");
                None
            }
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROG_DIRECTOR)
            .ok_or(XdpError::MissingMap(PROG_DIRECTOR))?
            .try_into()?;
        program.load()?;
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
        let (link, mode) = match mode {
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
        info!(interface, mode = mode.as_str(), "XDP program attached");
        Ok(XdpDataplane {
            logger,
            ebpf,
            link: Some(link),
            interface: interface.to_string(),
            mode,
            services: HashMap::new(),
            backend_ids: HashMap::new(),
        })
    }

    /// The mode the program is attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Makes the maps match `plan`: services not in it are removed; changed
    /// services are switched to their new backend list atomically.
    pub fn apply(&mut self, plan: &[ServicePlan]) -> Result<(), XdpError> {
        let wanted: HashMap<ServiceKey, &ServicePlan> =
            plan.iter().map(|s| (service_key(s), s)).collect();

        // Removed services first, so their slots can be reused.
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            self.services_map()?.remove(&key)?;
            self.services.remove(&key);
            info!(service = %key_display(&key), "virtual service removed from the dataplane");
        }
        self.backend_ids.retain(|(key, addr), _| {
            wanted
                .get(key)
                .is_some_and(|s| s.backends.iter().any(|b| b.address == *addr))
        });

        for (key, service) in &wanted {
            if self
                .services
                .get(key)
                .is_some_and(|i| i.backends == service.backends)
            {
                continue;
            }
            let (id, bank, new) = match self.services.get(key) {
                Some(i) => (i.id, 1 - i.bank, false),
                None => (self.free_service_id()?, 0, true),
            };
            let mut slots = Vec::with_capacity(service.backends.len());
            for b in &service.backends {
                let bid = self.backend_id(*key, b.address)?;
                slots.push(Backend {
                    mac: b.mac.0,
                    _pad: [0; 2],
                    id: bid,
                });
            }
            if new {
                self.zero_service_stats(id)?;
            }
            let start = bank_start(id, bank);
            {
                let mut backends: Array<&mut MapData, Backend> = Array::try_from(
                    self.ebpf
                        .map_mut(MAP_BACKENDS)
                        .ok_or(XdpError::MissingMap(MAP_BACKENDS))?,
                )?;
                for (i, slot) in slots.iter().enumerate() {
                    backends.set(start + i as u32, slot, 0)?;
                }
            }
            let value = ServiceValue {
                id,
                backend_start: start,
                backend_count: slots.len() as u32,
            };
            self.services_map()?.insert(key, value, 0)?;
            info!(
                service = %key_display(key),
                backends = ?service.backends.iter().map(|b| b.address).collect::<Vec<_>>(),
                "virtual service programmed"
            );
            self.services.insert(
                *key,
                Installed {
                    id,
                    bank,
                    backends: service.backends.clone(),
                },
            );
        }
        Ok(())
    }

    /// Counters of one service, summed over CPUs (zero if not installed).
    pub fn service_traffic(&self, plan: &ServicePlan) -> Result<Traffic, XdpError> {
        let Some(installed) = self.services.get(&service_key(plan)) else {
            return Ok(Traffic::default());
        };
        self.read_counters(MAP_SERVICE_STATS, installed.id)
    }

    /// Counters of one real server of a service, summed over CPUs.
    pub fn backend_traffic(
        &self,
        plan: &ServicePlan,
        address: IpAddr,
    ) -> Result<Traffic, XdpError> {
        match self.backend_ids.get(&(service_key(plan), address)) {
            Some(id) => self.read_counters(MAP_BACKEND_STATS, *id),
            None => Ok(Traffic::default()),
        }
    }

    /// Detaches the program and unloads everything. Teardown lives here, in
    /// one place, for every way the daemon stops.
    pub fn detach(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        if let Some(link) = self.link.take() {
            let result = self
                .ebpf
                .program_mut(PROG_DIRECTOR)
                .ok_or(XdpError::MissingMap(PROG_DIRECTOR))
                .and_then(|p| {
                    let p: &mut Xdp = p.try_into()?;
                    p.detach(link)?;
                    Ok(())
                });
            match result {
                Ok(()) => info!(interface = %self.interface, "XDP program detached"),
                Err(e) => warn!(interface = %self.interface, error = %e, "detaching XDP failed"),
            }
        }
        if let Some(task) = self.logger.take() {
            task.abort();
        }
    }

    fn services_map(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, ServiceKey, ServiceValue>, XdpError> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut(MAP_SERVICES)
                .ok_or(XdpError::MissingMap(MAP_SERVICES))?,
        )?)
    }

    fn free_service_id(&self) -> Result<u32, XdpError> {
        let used: BTreeSet<u32> = self.services.values().map(|i| i.id).collect();
        (0..MAX_SERVICES)
            .find(|id| !used.contains(id))
            .ok_or(XdpError::Capacity("service"))
    }

    fn backend_id(&mut self, key: ServiceKey, address: IpAddr) -> Result<u32, XdpError> {
        if let Some(id) = self.backend_ids.get(&(key, address)) {
            return Ok(*id);
        }
        let used: BTreeSet<u32> = self.backend_ids.values().copied().collect();
        let id = (0..MAX_REAL_SERVERS)
            .find(|id| !used.contains(id))
            .ok_or(XdpError::Capacity("real server"))?;
        self.backend_ids.insert((key, address), id);
        // A reused id must not inherit the previous owner's counters.
        self.zero_counters(MAP_BACKEND_STATS, id)?;
        Ok(id)
    }

    fn zero_service_stats(&mut self, id: u32) -> Result<(), XdpError> {
        self.zero_counters(MAP_SERVICE_STATS, id)
    }

    fn zero_counters(&mut self, map: &'static str, index: u32) -> Result<(), XdpError> {
        let cpus = nr_cpus().map_err(|(_, e)| XdpError::Cpus(e.to_string()))?;
        let mut array: PerCpuArray<&mut MapData, Counters> =
            PerCpuArray::try_from(self.ebpf.map_mut(map).ok_or(XdpError::MissingMap(map))?)?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
            .map_err(|e| XdpError::Cpus(e.to_string()))?;
        array.set(index, zeros, 0)?;
        Ok(())
    }

    fn read_counters(&self, map: &'static str, index: u32) -> Result<Traffic, XdpError> {
        let array: PerCpuArray<&MapData, Counters> =
            PerCpuArray::try_from(self.ebpf.map(map).ok_or(XdpError::MissingMap(map))?)?;
        let values = array.get(&index, 0)?;
        Ok(values.iter().fold(Traffic::default(), |t, c| Traffic {
            packets: t.packets + c.packets,
            bytes: t.bytes + c.bytes,
        }))
    }
}

impl Drop for XdpDataplane {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn service_key(s: &ServicePlan) -> ServiceKey {
    ServiceKey::new(s.address.octets(), s.port, s.protocol.number())
}

fn key_display(key: &ServiceKey) -> String {
    let proto = match key.protocol {
        director_common::IPPROTO_TCP => "tcp",
        director_common::IPPROTO_UDP => "udp",
        _ => "?",
    };
    format!(
        "{}:{}/{proto}",
        std::net::Ipv4Addr::from(key.vip),
        u16::from_be_bytes(key.port)
    )
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
