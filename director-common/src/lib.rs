//! Types shared by the director daemon (user space) and its XDP program.
//!
//! Every struct here is `#[repr(C)]`, `Copy`, and laid out without implicit
//! padding (explicit `_pad` fields), so the kernel and user space agree on
//! its bytes. Capacities (map sizes) live here too, so both sides agree.
//!
//! Byte order: addresses and ports are stored exactly as they appear on the
//! wire (network byte order), so the XDP program never swaps bytes. IPv4
//! addresses occupy the first 4 bytes of a 16-byte address field; the rest
//! is zero, and a family flag keeps IPv4 and IPv6 keys apart.
#![no_std]

/// Maximum number of virtual services (VIP, port, protocol).
pub const MAX_SERVICES: u32 = 256;
/// Maximum number of real servers across all services (a real server
/// listed by two services counts twice). Ids fit in a `u16` table entry.
pub const MAX_REAL_SERVERS: u32 = 4096;
/// Maximum number of real servers in one service.
pub const MAX_REAL_SERVERS_PER_SERVICE: u32 = 256;
/// Maglev lookup table size per service: a prime, at least 100 times the
/// largest number of real servers a service may have.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;
/// Table entries per element of the Maglev array (entries are `u16`).
pub const MAGLEV_LANES: u32 = 4;
/// Array elements per Maglev table (rounded up).
pub const MAGLEV_ELEMS_PER_TABLE: u32 = MAGLEV_TABLE_SIZE.div_ceil(MAGLEV_LANES);
/// Elements of the Maglev array: two banks per service, so a new table is
/// written into the idle bank and the service is switched over with one
/// atomic map update.
pub const MAGLEV_ELEMS: u32 = MAX_SERVICES * 2 * MAGLEV_ELEMS_PER_TABLE;
/// Table entry meaning "no real server" (the service has none usable).
pub const NO_BACKEND: u16 = u16::MAX;
/// Entries of the flow table in the object file (the daemon sets the
/// size at load: `global.flow_table_size`, a multiple of [`FLOW_WAYS`]).
pub const MAX_FLOWS: u32 = 262_144;
/// Entries (ways) per flow-table bucket. A flow has two buckets: it is
/// recorded in the first while that has a free way, else in a free way of
/// the second, else over a way of the first not used since its bucket's
/// last eviction. Ways are never emptied, so a lookup that misses in a
/// first bucket with a free way is done; only a full first bucket sends
/// it on to the second.
pub const FLOW_WAYS: u32 = 4;

/// Name of the flow table's tag array: a `u32` word per bucket (two to an
/// array element of 8 bytes, the low one first), a byte per way
/// ([`flow_tag`] of the flow there, 0: empty). A new connection reads
/// only its buckets' tag words (a byte per entry: mostly cached) to find a
/// free way and any way that may hold its key, so its entry is written
/// without first reading its (uncached) line.
pub const MAP_FLOW_TAGS: &str = "FLOW_TAGS";

/// Elements of the tag words of a table of `buckets` buckets (the tag
/// array's first part).
pub const fn flow_tag_elements(buckets: u32) -> u32 {
    buckets.div_ceil(2)
}

/// Elements of the occupancy bits of a table of `buckets` buckets (the
/// tag array's second part, after the tag words): a bit per bucket,
/// sixty-four to an element, set once a way of the bucket holds a flow
/// (ways are never emptied; CPUs set bits with an atomic OR). A
/// thirty-second of the tag words' size, so it stays cached where they do
/// not: a new connection whose first bucket is empty (most, in a table
/// sized for its peak) learns it from this bit and writes its entry into
/// that bucket's first way without reading its tag word.
pub const fn flow_occupancy_elements(buckets: u32) -> u32 {
    buckets.div_ceil(64)
}

/// Elements of the tag array ([`MAP_FLOW_TAGS`]): the tag words, then the
/// occupancy bits.
pub const fn flow_tag_array_elements(buckets: u32) -> u32 {
    flow_tag_elements(buckets) + flow_occupancy_elements(buckets)
}
/// Bits in the VIP filter: a frame whose destination's bucket bit is clear
/// is not for a VIP, which costs one inlined array lookup to learn.
pub const VIP_FILTER_BITS: u32 = 65_536;
/// `u64` words of the VIP filter array.
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;
/// Entries of the persistence (client affinity) table.
pub const MAX_PERSIST: u32 = 65_536;
/// Entries of the table of affinities not yet confirmed: a client's first
/// connection placed it, and it moves to the persistence table once that
/// connection's second packet comes (a spoofed SYN never sends one, so a
/// flood churns only this table, never the clients' affinities).
pub const MAX_PERSIST_PENDING: u32 = 16_384;
/// Entries of the fragment table (datagrams in flight whose first fragment
/// was placed; an LRU).
pub const MAX_FRAGS: u32 = 16_384;

/// First element of `bank` (0 or 1) of the service with index `id`.
pub const fn maglev_base(id: u32, bank: u32) -> u32 {
    (id * 2 + bank) * MAGLEV_ELEMS_PER_TABLE
}

/// Name of the service map in the eBPF object.
pub const MAP_SERVICES: &str = "SERVICES";
/// Name of the real-server array in the eBPF object.
pub const MAP_BACKENDS: &str = "BACKENDS";
/// Name of the Maglev table array in the eBPF object.
pub const MAP_MAGLEV: &str = "MAGLEV";
/// Name of the flow table.
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the persistence table.
pub const MAP_PERSIST: &str = "PERSIST";
/// Name of the fragment table (not pinned: it only holds datagrams in
/// flight).
pub const MAP_FRAGS: &str = "FRAGS";
/// Name of the per-CPU per-service counters.
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
/// Name of the per-CPU per-real-server counters.
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
/// Name of the VIP filter bitmap.
pub const MAP_VIP_FILTER: &str = "VIP_FILTER";
/// Name of the global settings array (one element).
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Name of the XDP entry point in the eBPF object.
pub const PROG_DIRECTOR: &str = "director";
/// Name of the benchmark floor program (MAC swap + XDP_TX).
pub const PROG_FLOOR: &str = "floor";
/// Name of the benchmark program giving each frame a new client address
/// before it tail-calls the measured program (slot 0 of
/// [`MAP_BENCH_TARGETS`]).
pub const PROG_FRESH_CLIENT: &str = "fresh_client";
/// Name of [`PROG_FRESH_CLIENT`]'s tail-call target array.
pub const MAP_BENCH_TARGETS: &str = "BENCH_TARGETS";
/// Name of the service index ([`IndexEntry`], two banks).
pub const MAP_SERVICE_INDEX: &str = "SERVICE_INDEX";
/// Name of the group-member trie ([`MemberKey`]).
pub const MAP_MEMBERS: &str = "MEMBERS";
/// Name of the per-CPU new-flow rate window ([`RateWindow`]; not pinned).
pub const MAP_NEW_FLOW_RATE: &str = "NEW_FLOW_RATE";
/// Name of the per-CPU count of new flows forwarded but not recorded
/// (above `new_flow_limit`; not pinned).
pub const MAP_UNRECORDED: &str = "UNRECORDED";

/// One CPU's new-flow count in the current one-second window.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// When the window began (ns, coarse monotonic clock).
    pub start: u64,
    pub count: u64,
}

/// Name of the virtual-MAC set: MACs (padded to 8 bytes) of the VRRP
/// instances with `use_vmac` this director is master of; frames addressed
/// to them are forwarded like frames addressed to the interface.
pub const MAP_VMACS: &str = "VMACS";
/// Entries of the virtual-MAC set.
pub const MAX_VMACS: u32 = 64;
/// Every map the program pins (and the daemon adopts after a restart).
pub const PINNED_MAPS: [&str; 13] = [
    MAP_FLOW_TAGS,
    MAP_SERVICE_INDEX,
    MAP_VMACS,
    MAP_MEMBERS,
    MAP_VIP_FILTER,
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_FLOWS,
    MAP_PERSIST,
    MAP_SERVICE_STATS,
    MAP_BACKEND_STATS,
    MAP_SETTINGS,
];

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// TCP header flag bits (byte 13).
pub const TCP_FIN: u8 = 0x01;
/// See [`TCP_FIN`].
pub const TCP_SYN: u8 = 0x02;
/// See [`TCP_FIN`].
pub const TCP_RST: u8 = 0x04;
/// See [`TCP_FIN`].
pub const TCP_ACK: u8 = 0x10;

/// [`ServiceKey::flags`]: the address is IPv6.
pub const KEY_V6: u8 = 1;
/// [`ServiceKey::flags`]: the entry that fragments of this VIP and protocol
/// use (fragments after the first carry no ports).
pub const KEY_FRAGMENT: u8 = 2;

/// Key of the service map: one virtual service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Virtual address, as on the wire (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Destination port, network byte order; 0 for "any port".
    pub port: [u8; 2],
    /// IP protocol number ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub protocol: u8,
    /// [`KEY_V6`], [`KEY_FRAGMENT`].
    pub flags: u8,
}

impl ServiceKey {
    /// An IPv4 service key from host-order values.
    pub const fn v4(addr: [u8; 4], port: u16, protocol: u8) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
            port: port.to_be_bytes(),
            protocol,
            flags: 0,
        }
    }

    /// An IPv6 service key from host-order values.
    pub const fn v6(addr: [u8; 16], port: u16, protocol: u8) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            protocol,
            flags: KEY_V6,
        }
    }

    /// Port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Slots of one bank of the service index (a power of two): the XDP
/// program finds a service there with inlined array reads instead of a
/// hash-map lookup. Two banks: the daemon writes the idle one, then
/// switches [`Settings::service_index`] to it.
pub const SERVICE_INDEX_SLOTS: u32 = 4096;
/// Slots a lookup visits at most (linear probing from the key's slot); a
/// key the daemon cannot place within them turns the index off (the
/// program then uses the service hash map).
pub const SERVICE_INDEX_PROBES: u32 = 4;

/// One slot of the service index: a service key, as the XDP program
/// compares it (the address as two words; port, protocol and flags as
/// one, [`service_index_tail`]), and its value. Empty: `tail` 0 (a key's
/// protocol is never 0).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexEntry {
    pub addr: [u64; 2],
    pub tail: u32,
    /// Always zero.
    pub _pad: u32,
    pub value: ServiceValue,
}

/// The last word of an index key: port (network order), protocol, flags.
#[inline(always)]
pub const fn service_index_tail(port: [u8; 2], protocol: u8, flags: u8) -> u32 {
    u32::from_ne_bytes([port[0], port[1], protocol, flags])
}

/// The index slot a key's probing starts at.
#[inline(always)]
pub const fn service_index_slot(addr: &[u64; 2], tail: u32) -> u32 {
    let a = addr[0] ^ addr[1].rotate_left(29);
    fmix32((a as u32) ^ ((a >> 32) as u32).rotate_left(16) ^ tail.wrapping_mul(0x9e37_79b1))
        & (SERVICE_INDEX_SLOTS - 1)
}

impl ServiceKey {
    /// The key's address as the index compares it (native-order words).
    pub fn index_addr(&self) -> [u64; 2] {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&self.addr[..8]);
        hi.copy_from_slice(&self.addr[8..]);
        [u64::from_ne_bytes(lo), u64::from_ne_bytes(hi)]
    }

    /// The key's last index word ([`service_index_tail`]).
    pub const fn index_tail(&self) -> u32 {
        service_index_tail(self.port, self.protocol, self.flags)
    }
}

/// Entries of the group-member trie (ports and port ranges of
/// `[[virtual_server_group]]` members).
pub const MAX_MEMBER_KEYS: u32 = 16_384;

/// Data of the group-member trie's key: a member's protocol, flags
/// ([`KEY_V6`]) and address are always matched whole; of the port, the
/// first `prefix_len - MEMBER_PREFIX_BASE` bits (a port range is stored
/// as the aligned blocks that cover it; every port: no port bit).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MemberKey {
    /// IP protocol number.
    pub protocol: u8,
    /// [`KEY_V6`].
    pub flags: u8,
    /// Address, as on the wire (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port: [u8; 2],
}

/// Prefix bits of a [`MemberKey`] before the port (protocol, flags,
/// address).
pub const MEMBER_PREFIX_BASE: u32 = 8 + 8 + 128;

/// The aligned blocks `(first port, prefix bits of the port)` that cover
/// `lo..=hi` exactly (at most 30 for any range; `(0, 0)` for every port).
pub fn port_blocks(lo: u16, hi: u16, out: &mut [(u16, u8); 32]) -> usize {
    if lo == 0 && hi == u16::MAX || (lo, hi) == (0, 0) {
        out[0] = (0, 0);
        return 1;
    }
    let (mut lo, hi) = (lo as u32, hi as u32);
    let mut n = 0;
    while lo <= hi && n < out.len() {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out[n] = (lo as u16, (16 - size.trailing_zeros()) as u8);
        n += 1;
        lo += size;
    }
    n
}

/// [`ServiceValue::flags`]: hash on the client address only (`sh`).
pub const SVC_SOURCE_HASH: u32 = 1;
/// [`ServiceValue::flags`]: client affinity for `persistence_timeout`.
pub const SVC_PERSISTENT: u32 = 2;

/// Value of the service map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of this service in the per-service counters.
    pub id: u32,
    /// First element of the active Maglev table ([`maglev_base`]).
    pub table: u32,
    /// [`SVC_SOURCE_HASH`], [`SVC_PERSISTENT`].
    pub flags: u32,
    /// Client affinity in seconds (with [`SVC_PERSISTENT`]).
    pub persistence_timeout: u32,
}

/// [`Backend::flags`]: existing flows may still use this server (it is
/// configured; weight 0 drains but keeps this flag).
pub const BACKEND_USABLE: u8 = 1;

/// [`Backend::flags`]: weight 0. Established flows continue, but a TCP SYN
/// that hits one of its flow entries (a client reusing a port) is placed
/// again, so a draining server gets no new connection at all.
pub const BACKEND_DRAINING: u8 = 2;

/// [`Backend::flags`]: the real server is reached through a tunnel
/// (IPv4 in IPv4, IPv6 in IPv6) to its address; [`Backend::mac`] is the
/// next hop's.
pub const BACKEND_TUNNEL: u8 = 4;

/// [`Backend::flags`]: the real server failed its checks (set with
/// [`BACKEND_DRAINING`]). Its established TCP flows continue (the server
/// may still be serving them, as IPVS keeps a removed server's
/// connections); its UDP flows, which no connection holds to it, are
/// placed again.
pub const BACKEND_FAILED: u8 = 8;

/// One real server (of one service) as the XDP program sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Destination MAC written into forwarded frames.
    pub mac: [u8; 6],
    /// [`BACKEND_USABLE`], [`BACKEND_DRAINING`], [`BACKEND_TUNNEL`],
    /// [`BACKEND_FAILED`].
    pub flags: u8,
    /// 4 or 6 (the tunnel's outer header; the VIP's family is the same).
    pub family: u8,
    /// Bumped each time this slot is given to another server, so flows
    /// pinned to the previous owner are re-hashed instead of following.
    pub generation: u32,
    /// Index of the owning service (user space only).
    pub service: u32,
    /// Real server address (user space only: adoption after restart).
    pub addr: [u8; 16],
    /// Always zero.
    pub _pad: [u8; 4],
}

/// [`FlowKey::flags`]: the addresses are IPv6.
pub const FLOW_V6: u8 = 1;

/// Key of the flow table: the client-to-VIP 5-tuple. 8-byte aligned, so
/// the XDP program compares it as five 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub protocol: u8,
    /// [`FLOW_V6`].
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key as five 64-bit words (native order), for comparing and
    /// hashing.
    #[inline(always)]
    pub const fn words(&self) -> [u64; 5] {
        // SAFETY: FlowKey is 40 bytes of plain integers, 8-byte aligned.
        unsafe { *(self as *const FlowKey as *const [u64; 5]) }
    }

    /// Whether the flow-table entry's key is this one (five word
    /// compares). `other`'s words are read where they are for each
    /// compare: a compiler that kept all five in registers across the
    /// ways of a bucket would spill them onto the 512-byte BPF stack.
    #[inline(always)]
    pub fn same(&self, other: &FlowKey) -> bool {
        let a = self as *const FlowKey as *const u64;
        let b = other as *const FlowKey as *const u64;
        // SAFETY: FlowKey is 40 bytes, 8-byte aligned: words 0..5 are
        // inside both keys.
        unsafe {
            let w = |i: usize| *a.add(i) == core::ptr::read_volatile(b.add(i));
            w(0) && w(1) && w(2) && w(3) && w(4)
        }
    }
}

/// One way of the flow table: a flow and the real server it was given,
/// 64 bytes (one cache line). The table is an array of buckets of
/// [`FLOW_WAYS`] entries; a flow's buckets are [`flow_buckets`] of its
/// key's [`flow_table_hash`].
/// Entries are written without a lock by the XDP program on every CPU and
/// by the daemon (imports): `check` binds the value to the key, so a
/// reader that sees a half-written entry finds the check wrong and treats
/// it as absent (the flow is placed again).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry {
    /// The flow; protocol 0: an empty way.
    pub key: FlowKey,
    /// Real server id (index in the backend array).
    pub backend: u16,
    /// The service's counter index (established flows never look the
    /// service up).
    pub service: u16,
    /// The backend slot's generation when the flow was placed.
    pub generation: u32,
    /// [`flow_check`] of the key's hash and the three fields above.
    pub check: u32,
    /// Non-zero once a packet found the entry since its bucket's last
    /// eviction (second chance: a full bucket evicts an unused way first).
    pub used: u8,
    /// Non-zero once the client sent a FIN or RST: the connection is
    /// closing. Its entry is honoured while packets keep coming (the rest
    /// of the close, a half-closed stream), but once idle for
    /// [`CLOSED_FLOW_IDLE_NS`], or for a SYN at once, its 5-tuple is a new
    /// connection and is placed again: it must not follow the closed one to
    /// its server (whose TIME_WAIT socket would stall it) when it was
    /// opened through another director.
    pub closed: u8,
    /// Non-zero while the flow's client affinity (a persistent service) is
    /// only pending: its next packet confirms it into the persistence
    /// table. (Zero in entries of older layouts: nothing pending.)
    pub persist_pending: u8,
    /// Non-zero when a peer director's flow sync wrote the entry (the
    /// program writes zero when it places a flow): a peer's later word on
    /// the flow replaces it, never this director's own placement.
    pub from_peer: u8,
    /// Last time a packet of this flow was seen (coarse clock, ns);
    /// maintained for UDP flows, which expire, and closing TCP ones.
    pub atime: u64,
}

/// How long a closing TCP flow's entry ([`FlowEntry::closed`]) outlives
/// its last packet: its close (FIN, ACK, retransmissions) and a half-closed
/// stream's ACKs come well within it.
pub const CLOSED_FLOW_IDLE_NS: u64 = 2_000_000_000;

/// The flow-table hash of a key: 64-bit multiply-xorshift rounds over the
/// key's five words, from the table's random `seed` (so a client cannot
/// aim its flows at another's bucket). Its low half places the flow in its
/// first bucket (and goes into the entry's check), its high half in its
/// second.
#[inline(always)]
pub const fn flow_table_hash(key: &FlowKey, seed: u32) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let w = key.words();
    let mut h = (seed as u64) ^ 0x2545_f491_4f6c_dd1d;
    h = (h ^ w[0]).wrapping_mul(M);
    h ^= h >> 29;
    h = (h ^ w[1]).wrapping_mul(M);
    h ^= h >> 29;
    h = (h ^ w[2]).wrapping_mul(M);
    h ^= h >> 29;
    h = (h ^ w[3]).wrapping_mul(M);
    h ^= h >> 29;
    h = (h ^ w[4]).wrapping_mul(M);
    h ^= h >> 32;
    h.wrapping_mul(M)
}

/// First entry of the bucket of 32-bit hash `hash` in a table of
/// `buckets` buckets (multiply-shift: no division).
#[inline(always)]
pub const fn flow_bucket(hash: u32, buckets: u32) -> u32 {
    (((hash as u64) * (buckets as u64)) >> 32) as u32 * FLOW_WAYS
}

/// A flow's two buckets (their first entries) for its table hash.
#[inline(always)]
pub const fn flow_buckets(hash: u64, buckets: u32) -> (u32, u32) {
    (
        flow_bucket(hash as u32, buckets),
        flow_bucket((hash >> 32) as u32, buckets),
    )
}

/// A flow's tag in its bucket's tag word: 8 bits of its table hash that
/// neither bucket choice uses, never 0 (0 marks an empty way).
#[inline(always)]
pub const fn flow_tag(hash: u64) -> u8 {
    let t = (hash >> 32) as u8;
    if t == 0 { 1 } else { t }
}

/// The check word of an entry: never zero, so a zeroed way never checks.
#[inline(always)]
pub const fn flow_check(hash: u32, backend: u16, service: u16, generation: u32) -> u32 {
    fmix32(
        hash ^ (((backend as u32) << 16) | service as u32).wrapping_mul(0x9e37_79b1)
            ^ generation.wrapping_mul(0x85eb_ca6b),
    ) | 1
}

impl FlowEntry {
    /// An entry for `key` (table hash `hash`) on real server `backend`.
    #[inline(always)]
    pub const fn new(
        key: FlowKey,
        hash: u32,
        backend: u16,
        service: u16,
        generation: u32,
        atime: u64,
    ) -> Self {
        FlowEntry {
            key,
            backend,
            service,
            generation,
            check: flow_check(hash, backend, service, generation),
            used: 0,
            closed: 0,
            persist_pending: 0,
            from_peer: 0,
            atime,
        }
    }

    /// Whether the entry's value belongs to its key (table hash `hash`):
    /// false for a way written half by one writer and half by another.
    #[inline(always)]
    pub const fn checks(&self, hash: u32) -> bool {
        self.check == flow_check(hash, self.backend, self.service, self.generation)
    }
}

/// Key of the fragment table: one datagram in flight (RFC 791 / RFC 8200
/// fragment identification: addresses, protocol, ID).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub protocol: u8,
    /// [`FLOW_V6`].
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Value of the flow table: which real server a flow was given to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Real server id (index in the backend array).
    pub backend: u32,
    /// The backend slot's generation when the flow was placed.
    pub generation: u32,
    /// The service's counter index (established flows never look the
    /// service up).
    pub service: u32,
    /// Always zero.
    pub _pad: u32,
    /// Last time a packet of this flow was seen (coarse clock, ns);
    /// maintained for UDP only, whose flows expire.
    pub atime: u64,
}

impl FlowValue {
    /// A flow (or client) placed on real server `backend` (slot generation
    /// `generation`) of service `service` at `atime`.
    #[inline(always)]
    pub const fn new(backend: u32, generation: u32, service: u32, atime: u64) -> Self {
        FlowValue {
            backend,
            generation,
            service,
            _pad: 0,
            atime,
        }
    }
}

/// Key of the persistence table: one client of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKey {
    pub src: [u8; 16],
    pub service: u32,
}

/// Per-CPU traffic counters (summed over CPUs by the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Frames forwarded.
    pub packets: u64,
    /// Bytes forwarded (whole frames, as seen by XDP).
    pub bytes: u64,
    /// Flows placed on a real server (flow-table inserts).
    pub new_flows: u64,
}

/// Global settings written by the daemon (element 0 of `SETTINGS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// UDP flows idle for longer than this (ns) are placed again.
    pub udp_timeout_ns: u64,
    /// Our interface's MAC: only frames addressed to it are forwarded (a
    /// switch flooding unknown unicast must not make us forward a frame
    /// meant for another director).
    pub mac: [u8; 6],
    /// The interface's MTU: a packet that would exceed it once
    /// encapsulated gets an ICMP "fragmentation needed" / ICMPv6 "packet
    /// too big" back instead.
    pub mtu: u16,
    /// Outer source of IPv4 tunnels: the first two bytes (a /16); the
    /// flow's hash gives the last two, so a real server's NIC spreads
    /// flows across its queues.
    pub tunnel_src4: [u8; 4],
    /// At most this many new flows per second per CPU are recorded in the
    /// flow table (0: no limit); beyond it new flows are still forwarded,
    /// by the Maglev table, but not recorded, so a SYN flood cannot push
    /// established flows out of the LRU table (Katran's guard). Zero in
    /// the settings of a program older than the field: no limit.
    pub new_flow_limit: u32,
    /// Outer source of IPv6 tunnels: the first 12 bytes (a /96); the
    /// flow's hash gives the last four.
    pub tunnel_src6: [u8; 16],
    /// The flow table's hash seed ([`flow_table_hash`]): random, chosen
    /// when the table is created and kept while it is (its entries sit
    /// where it put them).
    pub flow_seed: u32,
    /// The service index's active bank plus one; 0: no index (services
    /// are looked up in the hash map).
    pub service_index: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), Copy, and has no implicit padding, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above (a key of integers and byte arrays, then integers).
    unsafe impl aya::Pod for super::FlowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IndexEntry {}
    // SAFETY: repr(C), only integers and byte arrays, explicit padding.
    unsafe impl aya::Pod for super::FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PersistKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateWindow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MemberKey {}
}

/// The murmur3 finaliser: spreads every input bit over the output.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// XOR of the four 32-bit words of an address (IPv4: its only word).
#[inline(always)]
pub const fn fold_addr(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
        ^ u32::from_ne_bytes([a[4], a[5], a[6], a[7]])
        ^ u32::from_ne_bytes([a[8], a[9], a[10], a[11]])
        ^ u32::from_ne_bytes([a[12], a[13], a[14], a[15]])
}

/// Hash of a client-to-VIP flow (`mh`): the same on every director, so any
/// director places a flow on the same real server.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let s = fold_addr(&key.src);
    let d = fold_addr(&key.dst);
    let p = u32::from_ne_bytes([key.sport[0], key.sport[1], key.dport[0], key.dport[1]]);
    fmix32(
        s.wrapping_mul(0x9e37_79b1)
            ^ d.rotate_left(16)
            ^ p.wrapping_mul(0x85eb_ca6b)
            ^ key.protocol as u32,
    )
}

/// The VIP filter bit of a destination address.
#[inline(always)]
pub const fn vip_bucket(addr: &[u8; 16]) -> u32 {
    fmix32(fold_addr(addr)) & (VIP_FILTER_BITS - 1)
}

/// Hash of the addresses alone: fragments (no ports after the first).
#[inline(always)]
pub const fn addr_hash(src: &[u8; 16], dst: &[u8; 16]) -> u32 {
    fmix32(fold_addr(src).wrapping_mul(0x9e37_79b1) ^ fold_addr(dst).rotate_left(16))
}

/// Hash of the client address alone (`sh`, source hashing).
#[inline(always)]
pub const fn source_hash(src: &[u8; 16]) -> u32 {
    fmix32(fold_addr(src).wrapping_mul(0x9e37_79b1) ^ 0x5bd1_e995)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        // The sum of the field sizes equals the struct size: no hidden bytes.
        assert_eq!(size_of::<ServiceKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<ServiceValue>(), 4 * 4);
        assert_eq!(size_of::<Backend>(), 6 + 1 + 1 + 4 + 4 + 16 + 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowValue>(), 4 + 4 + 4 + 4 + 8);
        assert_eq!(size_of::<FlowEntry>(), 40 + 2 + 2 + 4 + 4 + 1 + 3 + 8);
        assert_eq!(size_of::<FlowEntry>(), 64);
        assert_eq!(size_of::<IndexEntry>(), 16 + 4 + 4 + 16);
        assert_eq!(size_of::<PersistKey>(), 16 + 4);
        assert_eq!(size_of::<Counters>(), 3 * 8);
        assert_eq!(size_of::<Settings>(), 8 + 6 + 2 + 4 + 4 + 16 + 4 + 4);
        assert_eq!(size_of::<MemberKey>(), 1 + 1 + 16 + 2);
    }

    fn blocks(lo: u16, hi: u16) -> ([(u16, u8); 32], usize) {
        let mut out = [(0, 0); 32];
        let n = port_blocks(lo, hi, &mut out);
        (out, n)
    }

    #[test]
    fn port_ranges_become_exact_aligned_blocks() {
        let (b, n) = blocks(8000, 8010);
        assert_eq!(&b[..n], &[(8000, 13), (8008, 15), (8010, 16)]);
        assert_eq!(blocks(80, 80).1, 1);
        assert_eq!(blocks(0, 0), ([(0, 0); 32], 1));
        // Exhaustively for small ranges, and the worst case: every port of
        // lo..=hi is covered by exactly one block, nothing else is.
        for (lo, hi) in [
            (1, 65535),
            (1, 65534),
            (2, 65533),
            (1000, 1999),
            (443, 8443),
        ] {
            let (b, n) = blocks(lo, hi);
            assert!(n <= 30, "{lo}-{hi}: {n} blocks");
            let mut covered = 0u32;
            for (start, bits) in &b[..n] {
                let size = 1u32 << (16 - *bits as u32);
                assert_eq!(*start as u32 % size, 0, "aligned");
                assert!(*start as u32 >= lo as u32 && *start as u32 + size - 1 <= hi as u32);
                covered += size;
            }
            assert_eq!(covered, hi as u32 - lo as u32 + 1);
        }
    }

    #[test]
    fn service_keys_store_wire_order() {
        let key = ServiceKey::v4([10, 0, 0, 100], 80, IPPROTO_TCP);
        assert_eq!(key.port, [0, 80]);
        assert_eq!(&key.addr[..4], &[10, 0, 0, 100]);
        assert_eq!(&key.addr[4..], &[0; 12]);
        assert_eq!(key.flags, 0);
        assert_eq!(key.port(), 80);
        let key = ServiceKey::v6([0xfd; 16], 0x1f90, IPPROTO_UDP);
        assert_eq!(key.port, [0x1f, 0x90]);
        assert_eq!(key.flags, KEY_V6);
    }

    #[test]
    fn capacities_are_consistent() {
        const { assert!(MAX_REAL_SERVERS_PER_SERVICE <= MAX_REAL_SERVERS) };
        // Real server ids fit in a table entry, with NO_BACKEND to spare.
        const { assert!(MAX_REAL_SERVERS < NO_BACKEND as u32) };
        // Flow-table entries hold ids as u16.
        const { assert!(MAX_SERVICES <= u16::MAX as u32) };
        const { assert!(MAX_FLOWS.is_multiple_of(FLOW_WAYS)) };
        const { assert!(SERVICE_INDEX_SLOTS.is_power_of_two()) };
        // Every service key and its fragment key fit, sparsely.
        const { assert!(SERVICE_INDEX_SLOTS >= 8 * MAX_SERVICES * 2) };
        // At least 100 table entries per real server.
        const { assert!(MAGLEV_TABLE_SIZE >= 100 * MAX_REAL_SERVERS_PER_SERVICE) };
        assert_eq!(maglev_base(0, 1), MAGLEV_ELEMS_PER_TABLE);
        assert_eq!(
            maglev_base(MAX_SERVICES - 1, 1) + MAGLEV_ELEMS_PER_TABLE,
            MAGLEV_ELEMS
        );
        const { assert!(MAGLEV_ELEMS_PER_TABLE * MAGLEV_LANES >= MAGLEV_TABLE_SIZE) };
    }
}
