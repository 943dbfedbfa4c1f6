//! `director explain`: which real server one flow goes to now, and why,
//! read from the program's maps the way the program reads them (the flow
//! table, then the client's persistence, then the Maglev table), so the
//! answer is the decision the next packet of the flow gets. Works on the
//! maps of a loaded dataplane and on the pins of one whose daemon is
//! running or stopped.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::Arc,
};

use aya::maps::{Array, HashMap as BpfHashMap, IterableMap as _, LpmTrie, MapData, lpm_trie::Key};
use director_common::{
    BACKEND_DRAINING, BACKEND_FAILED, BACKEND_USABLE, Backend, CLOSED_FLOW_IDLE_NS, FLOW_V6,
    FLOW_WAYS, FlowKey, FlowValue, KEY_V6, MAGLEV_LANES, MAGLEV_TABLE_SIZE, MAX_REAL_SERVERS,
    MEMBER_PREFIX_BASE, MemberKey, NO_BACKEND, PersistKey, SVC_PERSISTENT, SVC_SOURCE_HASH,
    ServiceKey, ServiceValue, Settings, flow_hash, source_hash,
};
use serde::Serialize;

use super::{FlowTable, XdpDataplane, XdpError, exceptions::dup};
use crate::config::{Protocol, ServiceAddr};

/// The flow asked about.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub client: IpAddr,
    /// `None`: any port of the client (the flow table is not consulted;
    /// a flow-hashed service's answer is for port 0).
    pub client_port: Option<u16>,
    pub service: ServiceAddr,
    /// Explain the packet opening a connection (a SYN) rather than the
    /// flow's next packet.
    pub syn: bool,
}

/// Why the flow goes where it goes (the contract's `"reason"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    FlowTable,
    Persistence,
    Maglev,
    SorryServer,
    NoService,
}

/// The flow's entry in the flow table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowTableEntry {
    pub real_server: Option<String>,
    /// `open`, or `closing` (the client sent a FIN or RST).
    pub state: &'static str,
    /// Seconds since its last packet (UDP and closing TCP flows keep the
    /// time; `null` for an open TCP flow).
    pub idle_seconds: Option<f64>,
    /// A peer director's flow sync wrote it.
    pub from_peer: bool,
    /// Whether the next packet follows it, and why not.
    pub honoured: bool,
    pub why_not: Option<String>,
}

/// The client's affinity (a persistent service).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Affinity {
    pub real_server: Option<String>,
    /// `confirmed`, or `pending` (its first connection's second packet
    /// has not come; only a loaded dataplane's view has those).
    pub state: &'static str,
    pub remaining_seconds: f64,
    pub honoured: bool,
    pub why_not: Option<String>,
}

/// One real server of the service as the program sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolMember {
    pub address: String,
    /// `in_table`, `draining` (weight 0, or failed with
    /// inhibit_on_failure), `failed`, `unresolved` (no MAC yet).
    pub state: &'static str,
    /// Its share of the Maglev table's slots.
    pub slots: u32,
}

/// The Maglev placement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    /// `flow` (the 5-tuple, `mh`) or `client` (its address, `sh`).
    pub hashed_on: &'static str,
    pub slot: u32,
    pub table_size: u32,
    pub real_server: Option<String>,
    /// The pool the table was built from; servers not in it are skipped.
    pub pool: Vec<PoolMember>,
}

/// The SYN-flood guard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guard {
    /// New flows recorded per second per CPU at most (0: no limit).
    pub new_flow_limit: u32,
}

/// What `director explain --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub client: String,
    pub client_port: Option<u16>,
    /// The service the flow's destination matched (`ADDR:PORT/PROTO`).
    pub service: Option<String>,
    /// The chosen real server's address; `null`: the packet goes to the
    /// kernel.
    pub real_server: Option<String>,
    pub reason: Reason,
    pub flow_table: Option<FlowTableEntry>,
    pub persistence: Option<Affinity>,
    pub maglev: Option<Placement>,
    pub syn_flood_guard: Guard,
    /// One line each: how the decision was reached.
    pub notes: Vec<String>,
}

/// The maps a decision reads.
pub struct Explainer {
    settings: Array<MapData, Settings>,
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    members: LpmTrie<MapData, MemberKey, ServiceValue>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, [u16; 4]>,
    persist: BpfHashMap<MapData, PersistKey, FlowValue>,
    /// Not pinned: only a loaded dataplane's.
    pending: Option<BpfHashMap<MapData, PersistKey, FlowValue>>,
    flows: Arc<FlowTable>,
    /// The Maglev tables read so far, by first element: an explainer is a
    /// view of the tables at its making (make another after the
    /// dataplane's tables change); the flow table and the affinities are
    /// read afresh each time.
    tables: std::cell::RefCell<std::collections::HashMap<u32, Arc<Vec<u16>>>>,
    /// The real-server slots, read once (as the tables).
    slots: std::cell::OnceCell<Vec<Option<Backend>>>,
}

fn typed<T>(map: aya::maps::Map) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    Ok(T::try_from(map)?)
}

impl Explainer {
    /// The pinned dataplane in `dir` (its daemon running or not).
    pub fn from_pins(dir: &Path) -> Result<Explainer, XdpError> {
        use aya::maps::Map;
        let pin = |name: &'static str| -> Result<MapData, XdpError> {
            MapData::from_pin(dir.join(name)).map_err(|e| {
                XdpError::Link(format!(
                    "cannot open the pinned map {}: {e}",
                    dir.join(name).display()
                ))
            })
        };
        let settings: Array<MapData, Settings> =
            typed(Map::Array(pin(director_common::MAP_SETTINGS)?))?;
        let seed = settings.get(&0, 0)?.flow_seed;
        let flows_map = pin(director_common::MAP_FLOWS)?;
        let entries = flows_map.info()?.max_entries();
        let flows = FlowTable::map(
            typed(Map::Array(flows_map))?,
            typed(Map::Array(pin(director_common::MAP_FLOW_TAGS)?))?,
            entries - entries % FLOW_WAYS,
            seed,
        )?;
        Ok(Explainer {
            settings,
            services: typed(Map::HashMap(pin(director_common::MAP_SERVICES)?))?,
            members: typed(Map::LpmTrie(pin(director_common::MAP_MEMBERS)?))?,
            backends: typed(Map::Array(pin(director_common::MAP_BACKENDS)?))?,
            maglev: typed(Map::Array(pin(director_common::MAP_MAGLEV)?))?,
            persist: typed(Map::LruHashMap(pin(director_common::MAP_PERSIST)?))?,
            pending: None,
            flows: Arc::new(flows),
            tables: Default::default(),
            slots: Default::default(),
        })
    }

    /// A loaded dataplane's maps (second handles on them).
    pub fn of(dp: &XdpDataplane) -> Result<Explainer, XdpError> {
        use aya::maps::Map;
        let pending = dp
            .ebpf
            .map("PERSIST_PENDING")
            .and_then(|m| match m {
                Map::LruHashMap(d) | Map::HashMap(d) => Some(d),
                _ => None,
            })
            .map(dup)
            .transpose()?
            .map(|d| typed(Map::LruHashMap(d)))
            .transpose()?;
        let persist = match dp.ebpf.map(director_common::MAP_PERSIST) {
            Some(Map::LruHashMap(d) | Map::HashMap(d)) => dup(d)?,
            _ => return Err(XdpError::Missing(director_common::MAP_PERSIST)),
        };
        Ok(Explainer {
            settings: typed(Map::Array(dup(dp.maps.settings.map())?))?,
            services: typed(Map::HashMap(dup(dp.maps.services.map())?))?,
            members: typed(Map::LpmTrie(dup(dp.maps.members.map())?))?,
            backends: typed(Map::Array(dup(dp.maps.backends.map())?))?,
            maglev: typed(Map::Array(dup(dp.maps.maglev.map())?))?,
            persist: typed(Map::LruHashMap(persist))?,
            pending,
            flows: dp.flows.clone(),
            tables: Default::default(),
            slots: Default::default(),
        })
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.slots
            .get_or_init(|| {
                (0..MAX_REAL_SERVERS)
                    .map(|i| self.backends.get(&i, 0).ok())
                    .collect()
            })
            .get(id as usize)
            .copied()
            .flatten()
    }

    /// The service of a new flow, as the program finds it: the exact
    /// port, a group member (longest match), the VIP's any-port service.
    fn find_service(&self, key: &FlowKey) -> Option<(ServiceKey, ServiceValue)> {
        let flags = if key.flags & FLOW_V6 != 0 { KEY_V6 } else { 0 };
        let exact = ServiceKey {
            addr: key.dst,
            port: key.dport,
            protocol: key.protocol,
            flags,
        };
        if let Ok(v) = self.services.get(&exact, 0) {
            return Some((exact, v));
        }
        let member = Key::new(
            MEMBER_PREFIX_BASE + 16,
            MemberKey {
                protocol: key.protocol,
                flags,
                addr: key.dst,
                port: key.dport,
            },
        );
        if let Ok(v) = self.members.get(&member, 0) {
            return Some((exact, v));
        }
        let any = ServiceKey {
            port: [0, 0],
            ..exact
        };
        self.services.get(&any, 0).ok().map(|v| (any, v))
    }

    /// Explains `q` at the program's clock `now` (ns, CLOCK_MONOTONIC
    /// coarse: [`coarse_now`]); `sorry` is the service's sorry server,
    /// when the configuration is known.
    pub fn explain(&self, q: &Query, now: u64, sorry: Option<IpAddr>) -> Explanation {
        let key = flow_key(q);
        let settings = self.settings.get(&0, 0).unwrap_or_default();
        let mut out = Explanation {
            client: q.client.to_string(),
            client_port: q.client_port,
            service: None,
            real_server: None,
            reason: Reason::NoService,
            flow_table: None,
            persistence: None,
            maglev: None,
            syn_flood_guard: Guard {
                new_flow_limit: settings.new_flow_limit,
            },
            notes: Vec::new(),
        };
        let udp = q.service.protocol == Protocol::Udp;
        let udp_timeout = if settings.udp_timeout_ns != 0 {
            settings.udp_timeout_ns
        } else {
            300_000_000_000
        };

        // 1. The flow table (a 5-tuple only).
        if q.client_port.is_some()
            && let Some(e) = self.flows.get(&key)
        {
            let b = self.backend(u32::from(e.backend));
            let closing = e.closed != 0;
            let idle = now.saturating_sub(e.atime);
            let refused = if q.syn {
                BACKEND_DRAINING
            } else if udp {
                BACKEND_FAILED
            } else {
                0
            };
            let why_not = if udp && idle >= udp_timeout {
                Some(format!(
                    "idle {:.1} s, past the UDP timeout",
                    idle as f64 / 1e9
                ))
            } else if !udp && closing && q.syn {
                Some("closing, and this is a new connection (SYN)".to_string())
            } else if !udp && closing && idle >= CLOSED_FLOW_IDLE_NS {
                Some(format!(
                    "closing and idle {:.1} s: a new connection",
                    idle as f64 / 1e9
                ))
            } else {
                match b {
                    None => Some("its real server's slot is empty".to_string()),
                    Some(b) if b.flags & BACKEND_USABLE == 0 => {
                        Some("its real server is gone".to_string())
                    }
                    Some(b) if b.generation != e.generation => {
                        Some("its real server's slot went to another server".to_string())
                    }
                    Some(b) if b.flags & refused != 0 => Some(
                        if b.flags & BACKEND_FAILED != 0 {
                            "its real server failed its checks"
                        } else {
                            "its real server drains"
                        }
                        .to_string(),
                    ),
                    Some(_) => None,
                }
            };
            let server = b.and_then(|b| address_of(&b)).map(|a| a.to_string());
            out.flow_table = Some(FlowTableEntry {
                real_server: server.clone(),
                state: if closing { "closing" } else { "open" },
                idle_seconds: (udp || closing).then(|| idle as f64 / 1e9),
                from_peer: e.from_peer != 0,
                honoured: why_not.is_none(),
                why_not: why_not.clone(),
            });
            if why_not.is_none() {
                out.service = service_of(&self.services, e.service).map(|s| s.to_string());
                out.real_server = server;
                out.reason = Reason::FlowTable;
                out.notes.push(format!(
                    "the flow table holds this flow on {} ({})",
                    out.real_server.as_deref().unwrap_or("?"),
                    if e.from_peer != 0 {
                        "written by a peer director's flow sync"
                    } else {
                        "placed here"
                    }
                ));
                return out;
            }
            out.notes.push(format!(
                "the flow table's entry is not followed: {}",
                why_not.unwrap_or_default()
            ));
        } else if q.client_port.is_none() {
            out.notes
                .push("no client port: the flow table is not consulted".to_string());
        } else {
            out.notes
                .push("the flow table does not hold this flow: it is placed".to_string());
        }

        // 2. The service.
        let Some((skey, service)) = self.find_service(&key) else {
            out.notes.push(format!(
                "no service answers on {}: the kernel gets the packet",
                q.service
            ));
            return out;
        };
        out.service = ServiceAddr::from_key(&skey).map(|s| s.to_string());

        // 3. Persistence.
        if service.flags & SVC_PERSISTENT != 0 {
            let pkey = PersistKey {
                src: key.src,
                service: service.id,
            };
            let timeout = u64::from(service.persistence_timeout) * 1_000_000_000;
            let tables = [
                ("confirmed", Some(&self.persist)),
                ("pending", self.pending.as_ref()),
            ];
            for (state, map) in tables {
                let Some(p) = map.and_then(|m| m.get(&pkey, 0).ok()) else {
                    continue;
                };
                let b = self.backend(p.backend);
                let age = now.saturating_sub(p.atime);
                let why_not = if age >= timeout {
                    Some("expired".to_string())
                } else {
                    match b {
                        Some(b) if b.flags & BACKEND_USABLE == 0 => {
                            Some("its real server is gone".to_string())
                        }
                        Some(b) if b.flags & BACKEND_DRAINING != 0 => {
                            Some("its real server drains".to_string())
                        }
                        Some(b) if b.generation != p.generation => {
                            Some("its real server's slot went to another server".to_string())
                        }
                        None => Some("its real server's slot is empty".to_string()),
                        Some(_) => None,
                    }
                };
                let server = b.and_then(|b| address_of(&b)).map(|a| a.to_string());
                let honoured = why_not.is_none();
                out.persistence = Some(Affinity {
                    real_server: server.clone(),
                    state,
                    remaining_seconds: timeout.saturating_sub(age) as f64 / 1e9,
                    honoured,
                    why_not: why_not.clone(),
                });
                if honoured {
                    out.real_server = server;
                    out.reason = sorry_or(Reason::Persistence, &out.real_server, sorry);
                    out.notes.push(format!(
                        "the client's {state} affinity ({:.0} s left of {} s) sends it to {}",
                        timeout.saturating_sub(age) as f64 / 1e9,
                        service.persistence_timeout,
                        out.real_server.as_deref().unwrap_or("?")
                    ));
                    return out;
                }
                out.notes.push(format!(
                    "the client's {state} affinity is not followed: {}",
                    why_not.unwrap_or_default()
                ));
            }
        }

        // 4. Maglev.
        let source = service.flags & SVC_SOURCE_HASH != 0;
        let hash = if source {
            source_hash(&key.src)
        } else {
            flow_hash(&key)
        };
        let slot = hash % MAGLEV_TABLE_SIZE;
        let table = self.table(&service);
        let id = table.get(slot as usize).copied().unwrap_or(NO_BACKEND);
        let chosen = (id != NO_BACKEND)
            .then(|| self.backend(u32::from(id)))
            .flatten()
            .filter(|b| b.flags & BACKEND_USABLE != 0);
        out.real_server = chosen.and_then(|b| address_of(&b)).map(|a| a.to_string());
        out.reason = sorry_or(Reason::Maglev, &out.real_server, sorry);
        out.maglev = Some(Placement {
            hashed_on: if source { "client" } else { "flow" },
            slot,
            table_size: MAGLEV_TABLE_SIZE,
            real_server: out.real_server.clone(),
            pool: self.pool(&service, &table),
        });
        match &out.real_server {
            Some(s) => out.notes.push(format!(
                "Maglev slot {slot} of {MAGLEV_TABLE_SIZE} (hash of the {}) is {s}'s",
                if source { "client's address" } else { "5-tuple" }
            )),
            None => out
                .notes
                .push("the Maglev table is empty (no real server takes new flows): the kernel gets the packet".to_string()),
        }
        if q.client_port.is_none() && !source && service.flags & SVC_PERSISTENT == 0 {
            out.notes.push(
                "a flow-hashed service places each connection by its ports: this is client port 0's"
                    .to_string(),
            );
        }
        out
    }

    /// The service's active Maglev table, slot by slot.
    fn table(&self, service: &ServiceValue) -> Arc<Vec<u16>> {
        if let Some(t) = self.tables.borrow().get(&service.table) {
            return t.clone();
        }
        let elems = MAGLEV_TABLE_SIZE.div_ceil(MAGLEV_LANES);
        let table: Arc<Vec<u16>> = Arc::new(
            (0..elems)
                .flat_map(|i| {
                    self.maglev
                        .get(&(service.table + i), 0)
                        .unwrap_or([NO_BACKEND; 4])
                })
                .take(MAGLEV_TABLE_SIZE as usize)
                .collect(),
        );
        self.tables
            .borrow_mut()
            .insert(service.table, table.clone());
        table
    }

    /// The service's real servers, their state and share of `table`.
    fn pool(&self, service: &ServiceValue, table: &[u16]) -> Vec<PoolMember> {
        // Slots per real-server id (the ids are below MAX_REAL_SERVERS).
        let mut slots = vec![0u32; MAX_REAL_SERVERS as usize];
        for id in table {
            if let Some(n) = slots.get_mut(usize::from(*id)) {
                *n += 1;
            }
        }
        (0..MAX_REAL_SERVERS)
            .filter_map(|id| Some((id, self.backend(id)?)))
            .filter(|(_, b)| b.family != 0 && b.service == service.id)
            .filter_map(|(id, b)| {
                let address = address_of(&b)?.to_string();
                let n = slots.get(id as usize).copied().unwrap_or(0);
                let state = if b.flags & BACKEND_USABLE == 0 {
                    "unresolved"
                } else if b.flags & BACKEND_FAILED != 0 {
                    "failed"
                } else if b.flags & BACKEND_DRAINING != 0 {
                    "draining"
                } else {
                    "in_table"
                };
                Some(PoolMember {
                    address,
                    state,
                    slots: n,
                })
            })
            .collect()
    }
}

/// The sorry server's placement is its own reason.
fn sorry_or(reason: Reason, chosen: &Option<String>, sorry: Option<IpAddr>) -> Reason {
    match (chosen, sorry) {
        (Some(c), Some(s)) if *c == s.to_string() => Reason::SorryServer,
        _ => reason,
    }
}

/// The service with counter index `id`.
fn service_of(
    services: &BpfHashMap<MapData, ServiceKey, ServiceValue>,
    id: u16,
) -> Option<ServiceAddr> {
    services
        .iter()
        .filter_map(Result::ok)
        .find(|(k, v)| v.id == u32::from(id) && k.flags & director_common::KEY_FRAGMENT == 0)
        .and_then(|(k, _)| ServiceAddr::from_key(&k))
}

/// A slot's real-server address (user-space field of the slot).
fn address_of(b: &Backend) -> Option<IpAddr> {
    match b.family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            b.addr[0], b.addr[1], b.addr[2], b.addr[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(b.addr))),
        _ => None,
    }
}

/// The flow-table key of `q`'s flow, as the program builds it.
pub fn flow_key(q: &Query) -> FlowKey {
    let wire = |a: IpAddr| match a {
        IpAddr::V4(a) => {
            let mut w = [0u8; 16];
            w[..4].copy_from_slice(&a.octets());
            w
        }
        IpAddr::V6(a) => a.octets(),
    };
    FlowKey {
        src: wire(q.client),
        dst: wire(q.service.address),
        sport: q.client_port.unwrap_or(0).to_be_bytes(),
        dport: q.service.port.to_be_bytes(),
        protocol: q.service.protocol.number(),
        flags: if q.service.address.is_ipv6() {
            FLOW_V6
        } else {
            0
        },
        _pad: [0; 2],
    }
}

/// The program's clock (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE).
pub fn coarse_now() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// A human reading of `e`.
pub fn render(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let client = match e.client_port {
        Some(p) if e.client.contains(':') => format!("[{}]:{p}", e.client),
        Some(p) => format!("{}:{p}", e.client),
        None => e.client.clone(),
    };
    let _ = writeln!(
        out,
        "{client} -> {}: {} ({})",
        e.service.as_deref().unwrap_or("no service"),
        e.real_server.as_deref().unwrap_or("the kernel"),
        match e.reason {
            Reason::FlowTable => "flow table",
            Reason::Persistence => "persistence",
            Reason::Maglev => "Maglev",
            Reason::SorryServer => "sorry server",
            Reason::NoService => "no service",
        }
    );
    for n in &e.notes {
        let _ = writeln!(out, "  - {n}");
    }
    if let Some(m) = &e.maglev {
        for p in &m.pool {
            let _ = writeln!(
                out,
                "    {:<40} {:<10} {:>6} slots",
                p.address, p.state, p.slots
            );
        }
    }
    if e.syn_flood_guard.new_flow_limit > 0 {
        let _ = writeln!(
            out,
            "  - SYN-flood guard: at most {} new flows recorded per second per CPU",
            e.syn_flood_guard.new_flow_limit
        );
    }
    out
}
