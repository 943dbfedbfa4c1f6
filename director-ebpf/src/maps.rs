//! The maps the daemon shares with the program (pinned, read and written by user space).

use super::*;

#[map(name = "SERVICES")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES * 2, 0);

/// The services (and their fragment entries) as an open-addressed array
/// in two banks (see [`IndexEntry`]); `SERVICES` holds the same.
#[map(name = "SERVICE_INDEX")]
pub(crate) static SERVICE_INDEX: Array<IndexEntry> =
    Array::with_max_entries(2 * SERVICE_INDEX_SLOTS, 0);

/// Members of `[[virtual_server_group]]`s: ports and port ranges (as
/// aligned blocks) of their addresses, and their fragment entries.
#[map(name = "MEMBERS")]
pub(crate) static MEMBERS: LpmTrie<MemberKey, ServiceValue> =
    LpmTrie::with_max_entries(MAX_MEMBER_KEYS, 0);

#[map(name = "BACKENDS")]
pub(crate) static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_REAL_SERVERS, 0);

#[map(name = "MAGLEV")]
pub(crate) static MAGLEV: Array<[u16; 4]> = Array::with_max_entries(MAGLEV_ELEMS, 0);

/// The flow table: buckets of [`FLOW_WAYS`] entries (see [`FlowEntry`]);
/// its size is set at load, and [`FLOW_BUCKETS`] with it. Mappable, so the
/// daemon reads and writes it in place.
#[map(name = "FLOWS")]
pub(crate) static FLOWS: Array<FlowEntry> = Array::with_max_entries(MAX_FLOWS, BPF_F_MMAPABLE);

/// The flow table's tag words, one per bucket, then its occupancy bits
/// (see [`director_common::MAP_FLOW_TAGS`]); sized with the table at load.
#[map(name = "FLOW_TAGS")]
pub(crate) static FLOW_TAGS: Array<u64> = Array::with_max_entries(
    flow_tag_array_elements(MAX_FLOWS / FLOW_WAYS),
    BPF_F_MMAPABLE,
);

/// Buckets of the flow table, set by the loader with the table's size (a
/// read-only global: the verifier sees a constant).
#[unsafe(no_mangle)]
pub(crate) static FLOW_BUCKETS: Global<u32> = Global::new(MAX_FLOWS / FLOW_WAYS);

#[map(name = "PERSIST")]
pub(crate) static PERSIST: LruHashMap<PersistKey, FlowValue> =
    LruHashMap::with_max_entries(MAX_PERSIST, 0);

/// Affinities placed by a client's first connection, until that
/// connection's second packet confirms them into `PERSIST` (see
/// [`director_common::MAX_PERSIST_PENDING`]). Not pinned: seconds-lived.
#[map(name = "PERSIST_PENDING")]
pub(crate) static PERSIST_PENDING: LruHashMap<PersistKey, FlowValue> =
    LruHashMap::with_max_entries(MAX_PERSIST_PENDING, 0);

#[map(name = "AFFINITY_SCRATCH")]
pub(crate) static AFFINITY_SCRATCH: PerCpuArray<AffinityScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// Datagrams whose first fragment was placed: their later fragments (no
/// ports) follow it.
#[map(name = "FRAGS")]
pub(crate) static FRAGS: LruHashMap<FragKey, FlowValue> =
    LruHashMap::with_max_entries(MAX_FRAGS, 0);

#[map(name = "SERVICE_STATS")]
pub(crate) static SERVICE_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
pub(crate) static BACKEND_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(MAX_REAL_SERVERS, 0);

#[map(name = "VIP_FILTER")]
pub(crate) static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

#[map(name = "SETTINGS")]
pub(crate) static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// This CPU's new flows in the current second (the SYN-flood guard).
#[map(name = "NEW_FLOW_RATE")]
pub(crate) static NEW_FLOW_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// New flows forwarded but not recorded (above `new_flow_limit`), per CPU.
#[map(name = "UNRECORDED")]
pub(crate) static UNRECORDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Virtual MACs (`use_vmac`) of the VRRP instances we are master of.
#[map(name = "VMACS")]
pub(crate) static VMACS: HashMap<[u8; 8], u8> = HashMap::with_max_entries(MAX_VMACS, 0);
