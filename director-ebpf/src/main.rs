//! The director's XDP program: LVS direct routing by MAC rewrite.
//!
//! For a frame addressed to a virtual service (VIP, port, protocol) it picks
//! a real server and rewrites the destination MAC to the real server's and
//! the source MAC to ours (the frame's old destination), then sends the
//! frame back out of the same interface (`XDP_TX`). The IP packet is not
//! touched: the real server holds the VIP on `lo` and answers the client
//! directly.
//!
//! Choosing the real server:
//! 1. the flow table (LRU): an established flow keeps its real server while
//!    servers are added, removed or re-weighted;
//! 2. otherwise, with persistence, the client's previous server;
//! 3. otherwise the service's Maglev table, indexed by the flow hash (or the
//!    client address with `sh`), which every director computes identically.
//!
//! Fragments: the first one (it has the ports) is placed like its flow,
//! and the datagram's later ones (no ports) follow it (fragment table); when
//! the first was not seen, by the addresses (the client's affinity, the
//! client with `sh`, both addresses otherwise). ICMP "fragmentation needed" / ICMPv6 "packet too big" for a
//! VIP follow the flow they quote. Everything else (other traffic, VLAN
//! tags, truncated or malformed headers) goes to the kernel untouched, and
//! nothing is ever read past the end of the frame.
#![no_std]
#![no_main]
// An atomic OR on a map value (BPF_ATOMIC | BPF_OR): the bpfel target
// has no `AtomicU64::fetch_or`.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values go by reference: passing them by value copies them
// onto the BPF stack, which is 512 bytes for the whole call chain.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by-value map arguments cost BPF stack"
)]

use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, xdp_action},
    helpers::{
        bpf_csum_diff, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::info;
use core::intrinsics::{AtomicOrdering, atomic_or};
use director_common::{
    BACKEND_DRAINING, BACKEND_FAILED, BACKEND_TUNNEL, BACKEND_USABLE, Backend, CLOSED_FLOW_IDLE_NS,
    Counters, FLOW_V6, FLOW_WAYS, FlowEntry, FlowKey, FlowValue, FragKey, IPPROTO_TCP, IPPROTO_UDP,
    IndexEntry, KEY_FRAGMENT, KEY_V6, MAGLEV_ELEMS, MAGLEV_LANES, MAGLEV_TABLE_SIZE, MAX_FLOWS,
    MAX_FRAGS, MAX_MEMBER_KEYS, MAX_PERSIST, MAX_PERSIST_PENDING, MAX_REAL_SERVERS, MAX_SERVICES,
    MAX_VMACS, MEMBER_PREFIX_BASE, MemberKey, NO_BACKEND, PersistKey, RateWindow,
    SERVICE_INDEX_PROBES, SERVICE_INDEX_SLOTS, SVC_PERSISTENT, SVC_SOURCE_HASH, ServiceKey,
    ServiceValue, Settings, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, VIP_FILTER_WORDS, addr_hash,
    flow_buckets, flow_hash, flow_table_hash, flow_tag, flow_tag_array_elements, flow_tag_elements,
    fmix32, fold_addr, service_index_slot, service_index_tail, source_hash, vip_bucket,
};

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES * 2, 0);

/// The services (and their fragment entries) as an open-addressed array
/// in two banks (see [`IndexEntry`]); `SERVICES` holds the same.
#[map(name = "SERVICE_INDEX")]
static SERVICE_INDEX: Array<IndexEntry> = Array::with_max_entries(2 * SERVICE_INDEX_SLOTS, 0);

/// Members of `[[virtual_server_group]]`s: ports and port ranges (as
/// aligned blocks) of their addresses, and their fragment entries.
#[map(name = "MEMBERS")]
static MEMBERS: LpmTrie<MemberKey, ServiceValue> = LpmTrie::with_max_entries(MAX_MEMBER_KEYS, 0);

#[map(name = "BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_REAL_SERVERS, 0);

#[map(name = "MAGLEV")]
static MAGLEV: Array<[u16; 4]> = Array::with_max_entries(MAGLEV_ELEMS, 0);

/// The flow table: buckets of [`FLOW_WAYS`] entries (see [`FlowEntry`]);
/// its size is set at load, and [`FLOW_BUCKETS`] with it. Mappable, so the
/// daemon reads and writes it in place.
#[map(name = "FLOWS")]
static FLOWS: Array<FlowEntry> = Array::with_max_entries(MAX_FLOWS, BPF_F_MMAPABLE);

/// The flow table's tag words, one per bucket, then its occupancy bits
/// (see [`director_common::MAP_FLOW_TAGS`]); sized with the table at load.
#[map(name = "FLOW_TAGS")]
static FLOW_TAGS: Array<u64> = Array::with_max_entries(
    flow_tag_array_elements(MAX_FLOWS / FLOW_WAYS),
    BPF_F_MMAPABLE,
);

/// Buckets of the flow table, set by the loader with the table's size (a
/// read-only global: the verifier sees a constant).
#[unsafe(no_mangle)]
static FLOW_BUCKETS: Global<u32> = Global::new(MAX_FLOWS / FLOW_WAYS);

#[map(name = "PERSIST")]
static PERSIST: LruHashMap<PersistKey, FlowValue> = LruHashMap::with_max_entries(MAX_PERSIST, 0);

/// Affinities placed by a client's first connection, until that
/// connection's second packet confirms them into `PERSIST` (see
/// [`director_common::MAX_PERSIST_PENDING`]). Not pinned: seconds-lived.
#[map(name = "PERSIST_PENDING")]
static PERSIST_PENDING: LruHashMap<PersistKey, FlowValue> =
    LruHashMap::with_max_entries(MAX_PERSIST_PENDING, 0);

/// Where [`confirm_affinity`] builds the entry it inserts (per CPU).
#[repr(C)]
struct AffinityScratch {
    key: PersistKey,
    value: FlowValue,
}

#[map(name = "AFFINITY_SCRATCH")]
static AFFINITY_SCRATCH: PerCpuArray<AffinityScratch> = PerCpuArray::with_max_entries(1, 0);

/// Datagrams whose first fragment was placed: their later fragments (no
/// ports) follow it.
#[map(name = "FRAGS")]
static FRAGS: LruHashMap<FragKey, FlowValue> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

#[map(name = "SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REAL_SERVERS, 0);

#[map(name = "VIP_FILTER")]
static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

#[map(name = "SETTINGS")]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// This CPU's new flows in the current second (the SYN-flood guard).
#[map(name = "NEW_FLOW_RATE")]
static NEW_FLOW_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// New flows forwarded but not recorded (above `new_flow_limit`), per CPU.
#[map(name = "UNRECORDED")]
static UNRECORDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Virtual MACs (`use_vmac`) of the VRRP instances we are master of.
#[map(name = "VMACS")]
static VMACS: HashMap<[u8; 8], u8> = HashMap::with_max_entries(MAX_VMACS, 0);

const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers we step over (hop-by-hop, routing, destination).
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DSTOPTS: u8 = 60;
/// At most this many IPv6 extension headers are walked (a verifier bound,
/// and more than real traffic carries); deeper chains go to the kernel.
const IPV6_MAX_EXT: usize = 4;

/// A frame we do not forward: the caller passes it to the kernel.
struct Pass;

#[xdp]
pub fn director(ctx: XdpContext) -> u32 {
    action(&ctx, try_forward(&ctx))
}

/// The XDP action for what became of a frame.
#[inline(always)]
fn action(ctx: &XdpContext, out: Result<Out, Pass>) -> u32 {
    match out {
        Ok(Out::Done(action)) => action,
        Ok(Out::Tunnel { id, hash }) => send(ctx, id, hash),
        Err(Pass) => xdp_action::XDP_PASS,
    }
}

/// What becomes of a frame: an action taken (the MACs rewritten: direct
/// routing), or a tunnel to real server `id`, with the flow's hash (the
/// outer source varies with it).
enum Out {
    Done(u32),
    Tunnel { id: u32, hash: u32 },
}

/// Sends the frame to real server `b` (id `id`): direct routing rewrites
/// the MACs here; a tunnel is left to [`send`], so the tunnel code is
/// inlined once (five inlined copies would overflow the BPF stack).
#[inline(always)]
fn sent(ctx: &XdpContext, id: u32, b: &Backend, key: &FlowKey) -> Out {
    if b.flags & BACKEND_TUNNEL == 0 {
        return Out::Done(rewrite(ctx, b));
    }
    // The client's address and ports: the outer source varies by flow, so
    // the real server's NIC spreads tunnelled flows.
    let hash = fmix32(
        fold_addr(&key.src)
            ^ u32::from_ne_bytes([key.sport[0], key.sport[1], key.dport[0], key.dport[1]]),
    );
    Out::Tunnel { id, hash }
}

/// Returns a pointer to a `T` at `offset` bytes into the frame, or `Pass`
/// when the frame is too short. The bounds check is also what lets the
/// verifier accept every later access through the pointer.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Pass> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Pass);
    }
    Ok((start + offset) as *mut T)
}

/// Reads a `T` (byte array) at `offset`.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Pass> {
    // SAFETY: ptr_at checked that the whole T is inside the frame; T is a
    // byte array, so any alignment is fine.
    Ok(unsafe { *ptr_at::<T>(ctx, offset)? })
}

/// What the IP layer told us about a frame.
struct Packet {
    key: FlowKey,
    /// Offset of the transport header.
    l4: usize,
    /// The packet is a fragment (first or later).
    fragment: bool,
    /// A fragment at offset 0 (it carries the transport header).
    first_fragment: bool,
    /// The fragment identification (IPv4: 16 bits; IPv6: 32).
    frag_id: u32,
}

#[inline(always)]
fn try_forward(ctx: &XdpContext) -> Result<Out, Pass> {
    let ethertype = u16::from_be_bytes(read::<[u8; 2]>(ctx, 12)?);
    let mut packet = Packet {
        key: FlowKey::default(),
        l4: 0,
        fragment: false,
        first_fragment: false,
        frag_id: 0,
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, &mut packet)?,
        ETH_P_IPV6 => parse_ipv6(ctx, &mut packet)?,
        // ARP, VLAN tags and everything else are the kernel's.
        _ => return Err(Pass),
    }
    // Not for a VIP (most of a director's own traffic): one inlined array
    // lookup, no hash-map lookup.
    let bucket = vip_bucket(&packet.key.dst);
    match VIP_FILTER.get(bucket / 64) {
        Some(word) if word & (1u64 << (bucket % 64)) != 0 => {}
        _ => return Err(Pass),
    }
    // Only frames addressed to us: under unknown-unicast flooding another
    // director's frames reach us too.
    let dst_mac: [u8; 6] = read(ctx, 0)?;
    match SETTINGS.get(0) {
        Some(s) if s.mac == dst_mac => {}
        // A VRRP virtual MAC (00:00:5e:00:0{1,2}:VRID) we are master of.
        Some(_) if is_our_vmac(&dst_mac) => {}
        _ => return Err(Pass),
    }
    let v6 = packet.key.flags & FLOW_V6 != 0;
    let protocol = packet.key.protocol;
    if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP {
        if packet.fragment && !packet.first_fragment {
            return forward_fragment(ctx, &packet);
        }
        let ports: [u8; 4] = read(ctx, packet.l4)?;
        packet.key.sport = [ports[0], ports[1]];
        packet.key.dport = [ports[2], ports[3]];
        let (id, b, service, how) = choose(ctx, &packet.key, packet.l4)?;
        let new = how & PLACED_NEW != 0;
        if packet.fragment && how & PLACED_RECORDED != 0 {
            // The first fragment went where its flow goes: the datagram's
            // other fragments (no ports) follow it. Not for a new flow
            // past the SYN-flood guard's limit: a flood of spoofed first
            // fragments would push real datagrams out of the LRU table.
            let _ = FRAGS.insert(
                &frag_key(&packet),
                &FlowValue::new(id, b.generation, service, 0),
                0,
            );
        }
        count(ctx, service, id, new);
        Ok(sent(ctx, id, b, &packet.key))
    } else if (!v6 && protocol == IPPROTO_ICMP) || (v6 && protocol == IPPROTO_ICMPV6) {
        forward_icmp_error(ctx, &packet)
    } else {
        Err(Pass)
    }
}

/// A VRRP virtual MAC (RFC 5798's 00:00:5e:00:01:VRID for IPv4,
/// 00:00:5e:00:02:VRID for IPv6) in the set the daemon keeps while master:
/// a prefix comparison, and a lookup only for such frames.
#[inline(always)]
fn is_our_vmac(mac: &[u8; 6]) -> bool {
    if mac[..4] != [0x00, 0x00, 0x5e, 0x00] || !(mac[4] == 0x01 || mac[4] == 0x02) {
        return false;
    }
    let key = [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0];
    // SAFETY: only whether the key is there is read.
    unsafe { VMACS.get(&key) }.is_some()
}

/// Fills `p` from an IPv4 header (in place: no copy of the header or of
/// the packet description on the BPF stack).
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, p: &mut Packet) -> Result<(), Pass> {
    // SAFETY: ptr_at checked the whole header is inside the frame.
    let h = unsafe { &*ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN)? };
    if h[0] >> 4 != 4 {
        return Err(Pass);
    }
    // The header length field is 4 bits, so at most 60 bytes: the mask also
    // gives the verifier a bounded offset.
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_LEN {
        return Err(Pass); // malformed
    }
    p.key.protocol = h[9];
    p.key.src[..4].copy_from_slice(&h[12..16]);
    p.key.dst[..4].copy_from_slice(&h[16..20]);
    p.l4 = ETH_LEN + ihl;
    // More-fragments flag or a fragment offset: a fragment.
    p.fragment = h[6] & 0x3f != 0 || h[7] != 0;
    p.first_fragment = p.fragment && h[6] & 0x1f == 0 && h[7] == 0;
    p.frag_id = u16::from_be_bytes([h[4], h[5]]) as u32;
    Ok(())
}

/// Fills `p` from an IPv6 header and its extension headers.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, p: &mut Packet) -> Result<(), Pass> {
    // SAFETY: as in parse_ipv4.
    let h = unsafe { &*ptr_at::<[u8; IPV6_LEN]>(ctx, ETH_LEN)? };
    if h[0] >> 4 != 6 {
        return Err(Pass);
    }
    p.key.flags = FLOW_V6;
    p.key.src.copy_from_slice(&h[8..24]);
    p.key.dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut offset = ETH_LEN + IPV6_LEN;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext: [u8; 2] = read(ctx, offset)?;
                next = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext: [u8; 8] = read(ctx, offset)?;
                next = ext[0];
                offset += 8;
                p.fragment = true;
                p.frag_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                // Offset (13 bits) zero: the first fragment, whose headers
                // follow. A later fragment holds only data: nothing after
                // its fragment header is a header, whatever `next` says.
                p.first_fragment = ext[2] == 0 && ext[3] & 0xf8 == 0;
                if !p.first_fragment {
                    break;
                }
            }
            _ => break,
        }
    }
    p.key.protocol = next;
    p.l4 = offset;
    Ok(())
}

/// The service for a new flow: exact port first, then a group member
/// (the longest match: a port, a port range, every port), then the VIP's
/// "any port" service.
#[inline(always)]
fn find_service(key: &FlowKey) -> Option<ServiceValue> {
    let flags = if key.flags & FLOW_V6 != 0 { KEY_V6 } else { 0 };
    if let Some(v) = service(key, key.dport, flags) {
        return Some(v);
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
    if let Some(v) = MEMBERS.get(&member) {
        return Some(*v);
    }
    service(key, [0, 0], flags)
}

/// The service of `key`'s destination and protocol at `port` (0: any
/// port) with `flags`: from the service index (inlined array reads) when
/// the daemon keeps one, else from the service hash map.
#[inline(always)]
fn service(key: &FlowKey, port: [u8; 2], flags: u8) -> Option<ServiceValue> {
    let bank = match SETTINGS.get(0) {
        Some(s) => s.service_index,
        // Verifier: the array's only element always exists.
        None => 0,
    };
    if bank != 0 {
        let w = key.words();
        let addr = [w[2], w[3]];
        let tail = service_index_tail(port, key.protocol, flags);
        let base = (bank - 1) * SERVICE_INDEX_SLOTS;
        let slot = service_index_slot(&addr, tail);
        let mut p = 0;
        while p < SERVICE_INDEX_PROBES {
            // Verifier: the index is masked into the bank.
            let e = SERVICE_INDEX.get(base + ((slot + p) & (SERVICE_INDEX_SLOTS - 1)))?;
            if e.tail == 0 {
                return None;
            }
            if e.tail == tail && e.addr[0] == addr[0] && e.addr[1] == addr[1] {
                return Some(e.value);
            }
            p += 1;
        }
        return None;
    }
    let skey = ServiceKey {
        addr: key.dst,
        port,
        protocol: key.protocol,
        flags,
    };
    // SAFETY: the value is copied out at once; the daemon replaces
    // entries whole.
    unsafe { SERVICES.get(&skey) }.copied()
}

/// The real server id at `hash` in the service's Maglev table.
#[inline(always)]
fn maglev(service: &ServiceValue, hash: u32) -> Option<u32> {
    let slot = hash % MAGLEV_TABLE_SIZE;
    let elem = MAGLEV.get(service.table + slot / MAGLEV_LANES)?;
    let id = elem[(slot % MAGLEV_LANES) as usize];
    if id == NO_BACKEND {
        None
    } else {
        Some(id as u32)
    }
}

/// A usable backend by id, with the generation it has now.
#[inline(always)]
fn backend(id: u32) -> Option<&'static Backend> {
    let b = BACKENDS.get(id)?;
    if b.flags & BACKEND_USABLE == 0 {
        return None;
    }
    // In place: the slot is read where it is, never copied to the stack.
    Some(b)
}

/// [`choose`]'s verdict bits: the flow is new; it is (or was) recorded in
/// the flow table (not a new flow past the SYN-flood guard's limit).
const PLACED_NEW: u8 = 1;
const PLACED_RECORDED: u8 = 2;

/// The real server for a flow: its entry in the flow table, or a new
/// placement (recorded). Returns the server's id and slot, the service's
/// counter index, and whether the flow is new.
#[inline(always)]
fn choose(
    ctx: &XdpContext,
    key: &FlowKey,
    l4: usize,
) -> Result<(u32, &'static Backend, u32, u8), Pass> {
    let udp = key.protocol == IPPROTO_UDP;
    // UDP flows expire (they have no end); TCP flows live until a new
    // flow needs their way, or, once closing, until idle.
    let now = if udp {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        0
    };

    // 1. An established flow: no service lookup at all. A connection
    // opening (a SYN) reads only its buckets' tag words: its entry is
    // almost never there, and the tags say where it may be and where a
    // free way is, so its bucket's uncached line is written, never read.
    let seed = match SETTINGS.get(0) {
        Some(s) => s.flow_seed,
        // Verifier: the array's only element always exists.
        None => 0,
    };
    let hash = flow_table_hash(key, seed);
    let (b1, b2) = flow_buckets(hash, table_buckets());
    let check = hash as u32;
    let flags = tcp_flags(ctx, key, l4);
    // SYN without ACK: a connection opening.
    let syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let found = if syn {
        find_opening(key, check, flow_tag(hash), b1, b2)
    } else {
        find_flow(key, check, b1, b2)
    };
    // The way the flow's entry goes to, when the lookup found one.
    let mut way = None;
    // An established flow leaves its server only if it is gone (slot
    // generation), a SYN (a reused port) if it drains or failed, a UDP
    // flow if it failed: a TCP connection stays on a failed server, which
    // may still be serving it.
    let refused = if syn {
        BACKEND_DRAINING
    } else if udp {
        BACKEND_FAILED
    } else {
        0
    };
    match found {
        Found::Entry(index, e) => {
            // SAFETY: a pointer into the table's element; each field used
            // is read once, as a scalar (another CPU may rewrite the way:
            // `checks` held; no 64-byte copy on the stack).
            // (`used` and `persist_pending` are read where they are used:
            // fewer values live at once, fewer stack slots.)
            let (atime, closed, backend_id, generation, service) = unsafe {
                (
                    core::ptr::read_volatile(&raw const (*e).atime),
                    core::ptr::read_volatile(&raw const (*e).closed),
                    core::ptr::read_volatile(&raw const (*e).backend),
                    core::ptr::read_volatile(&raw const (*e).generation),
                    core::ptr::read_volatile(&raw const (*e).service),
                )
            };
            let fresh = if udp {
                now.wrapping_sub(atime) < udp_timeout()
            } else {
                closed == 0 || closing_goes_on(e, atime, syn)
            };
            if fresh
                && let Some(b) = backend(u32::from(backend_id))
                && b.generation == generation
                && b.flags & refused == 0
            {
                // SAFETY: as above; one byte.
                if unsafe { core::ptr::read_volatile(&raw const (*e).persist_pending) } != 0 {
                    // The connection's second packet: its client's affinity
                    // is confirmed (once per connection).
                    confirm_affinity(e, key);
                }
                // SAFETY: as above; single-word stores.
                unsafe {
                    if core::ptr::read_volatile(&raw const (*e).used) == 0 {
                        (*e).used = 1;
                    }
                    if udp && now.wrapping_sub(atime) > 1_000_000_000 {
                        // Refresh the idle time at most once a second per flow.
                        (*e).atime = now;
                    }
                    if flags & (TCP_FIN | TCP_RST) != 0 && closed == 0 {
                        // The client closes: from now on the entry lives
                        // only while packets come.
                        (*e).atime = bpf_ktime_get_coarse_ns();
                        (*e).closed = 1;
                    }
                }
                return Ok((
                    u32::from(backend_id),
                    b,
                    u32::from(service),
                    PLACED_RECORDED,
                ));
            }
            way = Some(index);
        }
        Found::Torn(index) | Found::Free(index) => way = Some(index),
        Found::Missing | Found::Full => {}
    }

    // 2. A new flow (or one whose server left): place it, and record it
    // unless this CPU is past its new-flow limit (a flood), in the way its
    // key had or the way `victim` picks. Past the limit nothing of it is
    // recorded anywhere: not its flow entry, not a persistence entry, not
    // a fragment entry (a spoofed flood would evict real clients'
    // affinities from those LRU tables).
    let service = find_service(key).ok_or(Pass)?;
    let recorded = record_new_flow();
    let (id, b, pending) = place(key, &service, now, recorded)?;
    if recorded {
        let way = match way {
            Some(index) => Some(index),
            None => victim(b1, b2, check),
        };
        if let Some(index) = way {
            record(
                index,
                key,
                hash,
                id as u16,
                service.id as u16,
                b.generation,
                now,
                pending,
            );
        }
    }
    let how = if recorded {
        PLACED_NEW | PLACED_RECORDED
    } else {
        PLACED_NEW
    };
    Ok((id, b, service.id, how))
}

/// Writes a flow's entry into way `index`, field by field (no 64-byte
/// copy on the BPF stack), then its tag.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the entry's fields, written in place"
)]
fn record(
    index: u32,
    key: &FlowKey,
    hash: u64,
    backend: u16,
    service: u16,
    generation: u32,
    now: u64,
    persist_pending: bool,
) {
    // Verifier: the index is one of the flow's buckets' ways.
    let Some(e) = FLOWS.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: a pointer into the table's element.
    unsafe {
        (*e).key = *key;
        (*e).backend = backend;
        (*e).service = service;
        (*e).generation = generation;
        (*e).check = director_common::flow_check(hash as u32, backend, service, generation);
        (*e).used = 0;
        (*e).closed = 0;
        (*e).persist_pending = u8::from(persist_pending);
        (*e).atime = now;
    }
    set_tag_byte(index / FLOW_WAYS, index % FLOW_WAYS, flow_tag(hash));
    occupy(index / FLOW_WAYS);
}

/// The occupancy bit of `bucket`: its element and bit.
#[inline(always)]
fn occupancy_at(bucket: u32) -> (u32, u64) {
    (
        flow_tag_elements(table_buckets()) + bucket / 64,
        1 << (bucket % 64),
    )
}

/// Whether a way of the bucket at `first` holds a flow (its occupancy
/// bit; the verifier's case, no such element, counts as taken).
#[inline(always)]
fn occupied(first: u32) -> bool {
    let (element, bit) = occupancy_at(first / FLOW_WAYS);
    match FLOW_TAGS.get(element) {
        Some(word) => word & bit != 0,
        None => true,
    }
}

/// Marks `bucket` occupied: an atomic OR of its bit, once (other CPUs set
/// the element's other bits).
#[inline(always)]
fn occupy(bucket: u32) {
    let (element, bit) = occupancy_at(bucket);
    if let Some(t) = FLOW_TAGS.get_ptr_mut(element) {
        // SAFETY: a pointer into the array's 8-aligned element.
        unsafe {
            if *t & bit == 0 {
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(t, bit);
            }
        }
    }
}

/// Sets way `way`'s tag in bucket `bucket`'s tag word: one byte store
/// (other CPUs write the other ways' bytes). An array element is a `u64`
/// holding two buckets' words (elements are 8-byte strided: `u32`
/// elements would leave holes in the daemon's mapping).
#[inline(always)]
fn set_tag_byte(bucket: u32, way: u32, value: u8) {
    if let Some(t) = FLOW_TAGS.get_ptr_mut(bucket / 2) {
        // SAFETY: the byte is within the element: (bucket & 1) * 4 plus
        // way < 4 (the masks are for the verifier).
        unsafe { *(t as *mut u8).add(((bucket & 1) * 4 + (way & 3)) as usize) = value };
    }
}

/// Bucket `first`'s tag word (0 where the array has no such element: the
/// verifier's case only).
#[inline(always)]
fn tags(first: u32) -> u32 {
    let bucket = first / FLOW_WAYS;
    let pair = FLOW_TAGS.get(bucket / 2).copied().unwrap_or(0);
    (pair >> ((bucket & 1) * 32)) as u32
}

/// Whether a tag word's four ways are all taken.
#[inline(always)]
fn full(t: u32) -> bool {
    t & 0xff != 0 && t & 0xff00 != 0 && t & 0xff_0000 != 0 && t & 0xff00_0000 != 0
}

/// Buckets of the flow table (the loader's constant).
#[inline(always)]
fn table_buckets() -> u32 {
    FLOW_BUCKETS.load()
}

/// What a flow's buckets hold for it.
enum Found {
    /// The flow's entry (its index and place).
    Entry(u32, *mut FlowEntry),
    /// The way with the flow's key, its value half-written (two writers
    /// at once): treated as absent, and rewritten.
    Torn(u32),
    Missing,
    /// Not in this bucket, whose ways are all taken (the flow may be in
    /// its second).
    Full,
    /// Not there, and the way at the index is free: where its entry goes
    /// (the first free way of its first bucket, or of its second when the
    /// first is full).
    Free(u32),
}

/// Looks `key` (check hash `check`) up in its first bucket `b1`, and in
/// its second `b2` only when `b1` is full (a flow goes to its second
/// bucket only then, and ways are never emptied).
#[inline(always)]
fn find_flow(key: &FlowKey, check: u32, b1: u32, b2: u32) -> Found {
    match find_in(key, check, b1) {
        Found::Full => match find_in(key, check, b2) {
            Found::Full => Found::Missing,
            found => found,
        },
        found => found,
    }
}

/// Looks `key` up in the bucket at `first`. Ways fill in order and are
/// never emptied, so an empty way ends the search, and is where a new
/// entry for the key goes (no tag word read to find it).
#[inline(always)]
fn find_in(key: &FlowKey, check: u32, first: u32) -> Found {
    let mut w = 0;
    while w < FLOW_WAYS {
        let index = first + w;
        // Verifier: `first` is below the table's size by construction.
        let Some(e) = FLOWS.get_ptr_mut(index) else {
            return Found::Missing;
        };
        // SAFETY: a pointer into the table's element.
        if unsafe { (*e).key.protocol } == 0 {
            return Found::Free(index);
        }
        if let Some(found) = holding(index, e, key, check) {
            return found;
        }
        w += 1;
    }
    Found::Full
}

/// What way `index` (at `e`) is for `key` when it holds it: its entry, or
/// torn when its value does not check; `None` for another key.
#[inline(always)]
fn holding(index: u32, e: *mut FlowEntry, key: &FlowKey, check: u32) -> Option<Found> {
    // SAFETY: a pointer into the table's element.
    let entry = unsafe { &*e };
    if !entry.key.same(key) {
        return None;
    }
    Some(if entry.checks(check) {
        Found::Entry(index, e)
    } else {
        Found::Torn(index)
    })
}

/// [`find_flow`] for a connection opening (its entry is almost never
/// there): its first bucket empty (the occupancy bit, cached), the
/// entry goes to that bucket's first way, no tag word read; else the tag
/// words say which ways may hold the key and where a free way is, so the
/// entry's uncached line is written, never read.
#[inline(always)]
fn find_opening(key: &FlowKey, check: u32, tag: u8, b1: u32, b2: u32) -> Found {
    if !occupied(b1) {
        return Found::Free(b1);
    }
    find_tagged(key, check, tag, b1, b2)
}

/// [`find_flow`] through the tag words: only ways tagged with `tag` are
/// read (a new connection's entry is almost never there).
#[inline(always)]
fn find_tagged(key: &FlowKey, check: u32, tag: u8, b1: u32, b2: u32) -> Found {
    let t1 = tags(b1);
    match find_tag(key, check, tag, t1, b1) {
        Found::Missing if full(t1) => find_tag(key, check, tag, tags(b2), b2),
        found => found,
    }
}

/// The way of bucket `first` (tag word `t`) tagged `tag` that holds `key`.
#[inline(always)]
fn find_tag(key: &FlowKey, check: u32, tag: u8, t: u32, first: u32) -> Found {
    let mut w = 0;
    while w < FLOW_WAYS {
        if (t >> (8 * w)) as u8 == tag {
            let index = first + w;
            // Verifier: as in find_in.
            let Some(e) = FLOWS.get_ptr_mut(index) else {
                return Found::Missing;
            };
            if let Some(found) = holding(index, e, key, check) {
                return found;
            }
        }
        w += 1;
    }
    Found::Missing
}

/// The first empty way of a bucket by its tag word.
#[inline(always)]
fn empty_way(t: u32) -> Option<u32> {
    let mut w = 0;
    while w < FLOW_WAYS {
        if (t >> (8 * w)) as u8 == 0 {
            return Some(w);
        }
        w += 1;
    }
    None
}

/// The way a new flow goes to: an empty way of its first bucket `b1`,
/// else of its second `b2`, else a way of `b1` not used since its last
/// eviction or whose connection is closing, else (all used) one of `b1`
/// picked by the hash, and every way's use in `b1` starts over.
#[inline(always)]
fn victim(b1: u32, b2: u32, check: u32) -> Option<u32> {
    if let Some(w) = empty_way(tags(b1)) {
        return Some(b1 + w);
    }
    if let Some(w) = empty_way(tags(b2)) {
        return Some(b2 + w);
    }
    // Both full: read b1's ways (the slow path of a busy table).
    let mut w = 0;
    while w < FLOW_WAYS {
        if let Some(e) = FLOWS.get(b1 + w)
            && (e.used == 0 || e.closed != 0)
        {
            return Some(b1 + w);
        }
        w += 1;
    }
    let mut w = 0;
    while w < FLOW_WAYS {
        if let Some(e) = FLOWS.get_ptr_mut(b1 + w) {
            // SAFETY: a pointer into the table's element; one byte.
            unsafe { (*e).used = 0 };
        }
        w += 1;
    }
    Some(b1 + (check >> 30) % FLOW_WAYS)
}

/// Katran's SYN-flood guard: at most `new_flow_limit` new flows per second
/// are recorded on this CPU. Past it, new flows are still forwarded (by
/// the Maglev table, which places them as the record would) but not
/// inserted, so a flood cannot push established flows out of the LRU flow
/// table. Costs new flows only: a settings read, and with a limit the
/// coarse clock and a per-CPU counter.
#[inline(always)]
fn record_new_flow() -> bool {
    let limit = match SETTINGS.get(0) {
        Some(s) => u64::from(s.new_flow_limit),
        // Verifier: the array's only element always exists.
        None => 0,
    };
    if limit == 0 {
        return true;
    }
    // Verifier: index 0 of a one-element per-CPU array always exists.
    let Some(w) = NEW_FLOW_RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's element; XDP runs with preemption disabled.
    let w = unsafe { &mut *w };
    w.count += 1;
    // The clock is read only every 64th new flow, past the limit, and for
    // the first window: a window ends at most 63 flows late, which the
    // limit never notices (past it, every flow reads the clock).
    if w.count <= limit && w.count % 64 != 0 && w.start != 0 {
        return true;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(w.start) >= 1_000_000_000 {
        w.start = now;
        w.count = 1;
    }
    if w.count <= limit {
        return true;
    }
    // Verifier: index 0 of a one-element per-CPU array always exists.
    if let Some(n) = UNRECORDED.get_ptr_mut(0) {
        // SAFETY: this CPU's element, as above.
        unsafe { *n += 1 };
    }
    false
}

/// The TCP flags of the segment at `l4` (one byte of the header, read in
/// place; 0 for other protocols or a truncated header).
#[inline(always)]
fn tcp_flags(ctx: &XdpContext, key: &FlowKey, l4: usize) -> u8 {
    if key.protocol != IPPROTO_TCP {
        return 0;
    }
    match ptr_at::<[u8; 14]>(ctx, l4) {
        // SAFETY: ptr_at checked the 14 bytes are inside the frame.
        Ok(h) => unsafe { (*h)[13] },
        Err(Pass) => 0,
    }
}

/// Whether a closing TCP flow's entry (last packet at `atime`) still
/// holds for this packet: not for a SYN (a new connection on the 5-tuple),
/// nor once idle for [`CLOSED_FLOW_IDLE_NS`] (a new connection, maybe
/// opened through another director, must not follow the closed one to its
/// server); else the packet refreshes it.
#[inline(always)]
fn closing_goes_on(e: *mut FlowEntry, atime: u64, syn: bool) -> bool {
    if syn {
        return false;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(atime) >= CLOSED_FLOW_IDLE_NS {
        return false;
    }
    // SAFETY: a pointer into the table's element; one word.
    unsafe { (*e).atime = now };
    true
}

/// Chooses the real server for a new flow: the client's previous one with
/// persistence (confirmed, or pending: parallel first connections of one
/// client go together), else the Maglev table. Returns whether the flow
/// leaves an affinity pending: a new one goes to `PERSIST_PENDING` (when
/// `record`, the SYN-flood guard's verdict) and is confirmed by the flow's
/// second packet ([`confirm_affinity`]); a confirmed one is refreshed.
#[inline(always)]
fn place(
    key: &FlowKey,
    service: &ServiceValue,
    now: u64,
    record: bool,
) -> Result<(u32, &'static Backend, bool), Pass> {
    let persistent = service.flags & SVC_PERSISTENT != 0;
    let now = if persistent && now == 0 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        now
    };
    // The persistence key and value are built in this CPU's scratch
    // element, not on the program's stack (which the main path fills to
    // the limit older verifiers allow).
    let scratch = if persistent {
        // Verifier: index 0 of a one-element per-CPU array always exists.
        let s = AFFINITY_SCRATCH.get_ptr_mut(0).ok_or(Pass)?;
        // SAFETY: this CPU's element; XDP runs with preemption disabled.
        unsafe {
            (*s).key.src = key.src;
            (*s).key.service = service.id;
        }
        Some(s)
    } else {
        None
    };
    if let Some(s) = scratch {
        let timeout = service.persistence_timeout as u64 * 1_000_000_000;
        // SAFETY: this CPU's element, as above; map values read in place.
        unsafe {
            if let Some(p) = PERSIST.get(&(*s).key)
                && affinity_holds(p, now, timeout)
            {
                let id = p.backend;
                (*s).value = FlowValue::new(id, p.generation, service.id, now);
                let _ = PERSIST.insert(&(*s).key, &(*s).value, 0);
                return Ok((id, backend(id).ok_or(Pass)?, false));
            }
            if let Some(p) = PERSIST_PENDING.get(&(*s).key)
                && affinity_holds(p, now, timeout)
            {
                let id = p.backend;
                return Ok((id, backend(id).ok_or(Pass)?, true));
            }
        }
    }
    let hash = if service.flags & SVC_SOURCE_HASH != 0 {
        source_hash(&key.src)
    } else {
        flow_hash(key)
    };
    let id = maglev(service, hash).ok_or(Pass)?;
    let b = backend(id).ok_or(Pass)?;
    if let Some(s) = scratch
        && record
    {
        // SAFETY: this CPU's element, as above.
        unsafe {
            (*s).value = FlowValue::new(id, b.generation, service.id, now);
            let _ = PERSIST_PENDING.insert(&(*s).key, &(*s).value, 0);
        }
    }
    Ok((id, b, persistent && record))
}

/// Whether a client's affinity `p` still holds at `now`: not older than
/// the service's `timeout`, its server's slot still the same server, and
/// not draining (weight 0: drained, or failed with inhibit_on_failure: it
/// takes no new connection, even from a client it served; the client's
/// affinity moves, as IPVS's expire_quiescent_template makes it). Reads
/// the server's slot in place (no copy on the stack).
#[inline(always)]
fn affinity_holds(p: &FlowValue, now: u64, timeout: u64) -> bool {
    if now.wrapping_sub(p.atime) >= timeout {
        return false;
    }
    match BACKENDS.get(p.backend) {
        Some(b) => {
            b.flags & BACKEND_USABLE != 0
                && b.flags & BACKEND_DRAINING == 0
                && b.generation == p.generation
        }
        None => false,
    }
}

/// A flow whose affinity was pending sent its second packet (a handshake
/// completed, a second datagram): the affinity goes to `PERSIST`, once.
#[inline(always)]
fn confirm_affinity(e: *mut FlowEntry, key: &FlowKey) {
    // Verifier: index 0 of a one-element per-CPU array always exists.
    let Some(s) = AFFINITY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch element (XDP runs with preemption
    // disabled), the flow's way in the table, and a helper without
    // arguments. The key and value are built in the scratch element, not
    // on the stack.
    unsafe {
        let service = u32::from((*e).service);
        (*s).key.src = key.src;
        (*s).key.service = service;
        (*s).value.backend = u32::from((*e).backend);
        (*s).value.generation = (*e).generation;
        (*s).value.service = service;
        (*s).value._pad = 0;
        (*s).value.atime = bpf_ktime_get_coarse_ns();
        let _ = PERSIST.insert(&(*s).key, &(*s).value, 0);
        (*e).persist_pending = 0;
    }
}

#[inline(always)]
fn udp_timeout() -> u64 {
    match SETTINGS.get(0) {
        Some(s) if s.udp_timeout_ns != 0 => s.udp_timeout_ns,
        _ => 300_000_000_000, // 300 s, as IPVS
    }
}

#[inline(always)]
fn frag_key(packet: &Packet) -> FragKey {
    FragKey {
        src: packet.key.src,
        dst: packet.key.dst,
        id: packet.frag_id,
        protocol: packet.key.protocol,
        flags: packet.key.flags,
        _pad: [0; 2],
    }
}

/// A fragment after the first (no ports): where its datagram's first
/// fragment went; if that was not seen (lost, reordered), placed through
/// the VIP's fragment entry by what the addresses tell: the client's
/// affinity with persistence, the client with `sh`, else both addresses.
#[inline(always)]
fn forward_fragment(ctx: &XdpContext, packet: &Packet) -> Result<Out, Pass> {
    let key = &packet.key;
    // SAFETY: copied out at once.
    if let Some(f) = unsafe { FRAGS.get(&frag_key(packet)) }.copied()
        && let Some(b) = backend(f.backend)
        && b.generation == f.generation
    {
        count(ctx, f.service, f.backend, false);
        return Ok(sent(ctx, f.backend, b, key));
    }
    let flags = KEY_FRAGMENT | if key.flags & FLOW_V6 != 0 { KEY_V6 } else { 0 };
    let service = match service(key, [0, 0], flags) {
        Some(s) => s,
        // A group member's address: its fragment entry is in the trie.
        None => *MEMBERS
            .get(Key::new(
                MEMBER_PREFIX_BASE,
                MemberKey {
                    protocol: key.protocol,
                    flags,
                    addr: key.dst,
                    port: [0, 0],
                },
            ))
            .ok_or(Pass)?,
    };
    if service.flags & SVC_PERSISTENT != 0 {
        let pkey = PersistKey {
            src: key.src,
            service: service.id,
        };
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // A confirmed affinity, else a pending one (the datagram of a
        // client's first flow); read in place.
        let timeout = service.persistence_timeout as u64 * 1_000_000_000;
        // SAFETY: read in place, at once.
        let known = match unsafe { PERSIST.get(&pkey) } {
            Some(p) if affinity_holds(p, now, timeout) => Some(p.backend),
            // SAFETY: as above.
            _ => match unsafe { PERSIST_PENDING.get(&pkey) } {
                Some(p) if affinity_holds(p, now, timeout) => Some(p.backend),
                _ => None,
            },
        };
        if let Some(id) = known
            && let Some(b) = backend(id)
        {
            count(ctx, service.id, id, false);
            return Ok(sent(ctx, id, b, key));
        }
    }
    let hash = if service.flags & SVC_SOURCE_HASH != 0 {
        source_hash(&key.src)
    } else {
        addr_hash(&key.src, &key.dst)
    };
    let id = maglev(&service, hash).ok_or(Pass)?;
    let b = backend(id).ok_or(Pass)?;
    count(ctx, service.id, id, false);
    Ok(sent(ctx, id, b, key))
}

/// ICMP "fragmentation needed" (IPv4 type 3 code 4) or ICMPv6 "packet too
/// big" (type 2) sent to a VIP quotes a packet the real server sent from
/// the VIP to a client: send it to that real server, so path MTU discovery
/// works through the director.
#[inline(always)]
fn forward_icmp_error(ctx: &XdpContext, packet: &Packet) -> Result<Out, Pass> {
    let v6 = packet.key.flags & FLOW_V6 != 0;
    let icmp: [u8; 2] = read(ctx, packet.l4)?;
    let inner = packet.l4 + 8;
    let mut key = FlowKey {
        flags: packet.key.flags,
        ..FlowKey::default()
    };
    let ports_at = if v6 {
        if icmp[0] != 2 {
            return Err(Pass);
        }
        // SAFETY: ptr_at checked the header is inside the frame; read in
        // place (no copy on the BPF stack).
        let h = unsafe { &*ptr_at::<[u8; IPV6_LEN]>(ctx, inner)? };
        key.protocol = h[6];
        // Quoted packet: VIP -> client. The flow is client -> VIP.
        key.dst.copy_from_slice(&h[8..24]);
        key.src.copy_from_slice(&h[24..40]);
        inner + IPV6_LEN
    } else {
        if icmp[0] != 3 || icmp[1] != 4 {
            return Err(Pass);
        }
        // SAFETY: as above.
        let h = unsafe { &*ptr_at::<[u8; IPV4_LEN]>(ctx, inner)? };
        let ihl = ((h[0] & 0x0f) as usize) * 4; // masked: bounded for the verifier
        if ihl < IPV4_LEN {
            return Err(Pass);
        }
        key.protocol = h[9];
        key.dst[..4].copy_from_slice(&h[12..16]);
        key.src[..4].copy_from_slice(&h[16..20]);
        inner + ihl
    };
    // The ICMP error must be addressed to the VIP the quoted packet came from.
    if key.dst != packet.key.dst {
        return Err(Pass);
    }
    if key.protocol != IPPROTO_TCP && key.protocol != IPPROTO_UDP {
        return Err(Pass);
    }
    let ports: [u8; 4] = read(ctx, ports_at)?;
    key.dport = [ports[0], ports[1]];
    key.sport = [ports[2], ports[3]];
    let service = find_service(&key).ok_or(Pass)?;
    let seed = SETTINGS.get(0).map_or(0, |s| s.flow_seed);
    let hash = flow_table_hash(&key, seed);
    let (b1, b2) = flow_buckets(hash, table_buckets());
    let id = match find_flow(&key, hash as u32, b1, b2) {
        // SAFETY: a pointer into the table's element.
        Found::Entry(_, e) => u32::from(unsafe { (*e).backend }),
        Found::Torn(_) | Found::Missing | Found::Full | Found::Free(_) => {
            let hash = if service.flags & SVC_SOURCE_HASH != 0 {
                source_hash(&key.src)
            } else {
                flow_hash(&key)
            };
            maglev(&service, hash).ok_or(Pass)?
        }
    };
    let b = backend(id).ok_or(Pass)?;
    count(ctx, service.id, id, false);
    Ok(sent(ctx, id, b, &key))
}

#[inline(always)]
fn count(ctx: &XdpContext, service: u32, backend: u32, new_flow: bool) {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let new = new_flow as u64;
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        let stats = unsafe { &mut *stats };
        if stats.packets == 0 {
            // Once per service per CPU (rate-limited by construction).
            info!(
                ctx,
                "first packet for service {} forwarded to real server {}", service, backend
            );
        }
        stats.packets += 1;
        stats.bytes += len;
        stats.new_flows += new;
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as above.
        let stats = unsafe { &mut *stats };
        stats.packets += 1;
        stats.bytes += len;
        stats.new_flows += new;
    }
}

/// Sends the frame through a tunnel to real server `id`: inside an outer
/// IP header to the server's address, to the next hop's MAC.
#[inline(always)]
fn send(ctx: &XdpContext, id: u32, hash: u32) -> u32 {
    let (Some(b), Some(s)) = (BACKENDS.get(id), SETTINGS.get(0)) else {
        return xdp_action::XDP_DROP;
    };
    let r = if b.family == 6 {
        encapsulate6(ctx, b, s, hash)
    } else {
        encapsulate4(ctx, b, s, hash)
    };
    // A frame that cannot be wrapped (too short to be one we parsed, or
    // the helper refused the headroom) is dropped: the kernel would
    // answer it from the VIP with a reset.
    r.unwrap_or(xdp_action::XDP_DROP)
}

/// A one's complement sum folded to 16 bits (not inverted).
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The IPv4 header checksum of the 20 bytes of `h` (its checksum field
/// zero).
#[inline(always)]
fn ipv4_checksum(h: &[u8]) -> [u8; 2] {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < IPV4_LEN && i + 1 < h.len() {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    (!fold(sum)).to_be_bytes()
}

/// The frame's IP packet length (the frame less its Ethernet header).
#[inline(always)]
fn ip_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data() - ETH_LEN
}

/// Writes an Ethernet header into the frame's first bytes.
#[inline(always)]
fn write_eth(e: &mut [u8], dst: &[u8], src: &[u8], ethertype: u16) {
    e[..6].copy_from_slice(dst);
    e[6..12].copy_from_slice(src);
    e[12..].copy_from_slice(&ethertype.to_be_bytes());
}

/// Wraps an IPv4 packet in an outer IPv4 header (IP-in-IP, protocol 4)
/// from `tunnel_src4` + hash to the real server, for its next hop.
#[inline(always)]
fn encapsulate4(ctx: &XdpContext, b: &Backend, s: &Settings, hash: u32) -> Result<u32, Pass> {
    let first: [u8; 8] = read(ctx, ETH_LEN)?;
    let len = ip_len(ctx);
    if len + IPV4_LEN > s.mtu as usize {
        // Don't fragment set: tell the client; else XDP cannot fragment
        // it. Longer than the link itself: an aggregate (generic XDP after
        // GRO), which no ICMP can shrink: dropped.
        if first[6] & 0x40 == 0 || len > s.mtu as usize {
            return Ok(xdp_action::XDP_DROP);
        }
        return Ok(too_big4(ctx, s.mtu - IPV4_LEN as u16));
    }
    // SAFETY: the helper checks the headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_LEN as i32)) } != 0 {
        return Err(Pass);
    }
    // After adjust_head every pointer is checked again (for the verifier:
    // the helper made the room).
    let (Ok(eth), Ok(ip)) = (
        ptr_at::<[u8; ETH_LEN]>(ctx, 0),
        ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN),
    ) else {
        return Ok(xdp_action::XDP_DROP);
    };
    // SAFETY: ptr_at checked both are inside the frame.
    let (eth, h) = unsafe { (&mut *eth, &mut *ip) };
    write_eth(eth, &b.mac, &s.mac, ETH_P_IP);
    h[0] = 0x45;
    h[1] = first[1]; // the inner TOS/DSCP, so the path treats it alike
    h[2..4].copy_from_slice(&((len + IPV4_LEN) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    h[6] = 0x40; // don't fragment (an atomic datagram: id 0)
    h[7] = 0;
    h[8] = 64;
    h[9] = IPPROTO_IPIP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12] = s.tunnel_src4[0];
    h[13] = s.tunnel_src4[1];
    h[14] = (hash >> 8) as u8;
    h[15] = hash as u8;
    h[16..20].copy_from_slice(&b.addr[..4]);
    // The checksum from the values just written (in registers), not read
    // back from the frame: the header's 16-bit words summed.
    let word = |hi: u8, lo: u8| u64::from(u16::from_be_bytes([hi, lo]));
    let sum = word(0x45, first[1])
        + (len + IPV4_LEN) as u64
        + word(0x40, 0)
        + word(64, IPPROTO_IPIP)
        + word(s.tunnel_src4[0], s.tunnel_src4[1])
        + u64::from(hash as u16)
        + word(b.addr[0], b.addr[1])
        + word(b.addr[2], b.addr[3]);
    h[10..12].copy_from_slice(&(!fold(sum)).to_be_bytes());
    Ok(xdp_action::XDP_TX)
}

/// Wraps an IPv6 packet in an outer IPv6 header (next header 41) from
/// `tunnel_src6` + hash to the real server, for its next hop.
#[inline(always)]
fn encapsulate6(ctx: &XdpContext, b: &Backend, s: &Settings, hash: u32) -> Result<u32, Pass> {
    let first: [u8; 2] = read(ctx, ETH_LEN)?;
    let len = ip_len(ctx);
    if len + IPV6_LEN > s.mtu as usize {
        if len > s.mtu as usize {
            return Ok(xdp_action::XDP_DROP); // an aggregate, as in encapsulate4
        }
        return Ok(too_big6(ctx, s.mtu as u32 - IPV6_LEN as u32));
    }
    // SAFETY: the helper checks the headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_LEN as i32)) } != 0 {
        return Err(Pass);
    }
    let (Ok(eth), Ok(ip)) = (
        ptr_at::<[u8; ETH_LEN]>(ctx, 0),
        ptr_at::<[u8; IPV6_LEN]>(ctx, ETH_LEN),
    ) else {
        return Ok(xdp_action::XDP_DROP); // for the verifier, as above
    };
    // SAFETY: ptr_at checked both are inside the frame.
    let (eth, h) = unsafe { (&mut *eth, &mut *ip) };
    write_eth(eth, &b.mac, &s.mac, ETH_P_IPV6);
    // Version 6, the inner traffic class, the hash as flow label (routers
    // on the way spread by it too).
    let tc = (first[0] << 4) | (first[1] >> 4);
    h[0] = 0x60 | (tc >> 4);
    h[1] = (tc << 4) | ((hash >> 16) as u8 & 0x0f);
    h[2] = (hash >> 8) as u8;
    h[3] = hash as u8;
    h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    h[6] = IPPROTO_IPV6;
    h[7] = 64;
    h[8..20].copy_from_slice(&s.tunnel_src6[..12]);
    h[20..24].copy_from_slice(&hash.to_be_bytes());
    h[24..40].copy_from_slice(&b.addr);
    Ok(xdp_action::XDP_TX)
}

/// Bytes of the client's packet an ICMP "fragmentation needed" quotes
/// (its header and the start of its payload; RFC 792 asks for the header
/// and 8 bytes).
const QUOTE4: usize = 64;
/// Bytes an ICMPv6 "packet too big" quotes (the reply stays far below the
/// IPv6 minimum MTU).
const QUOTE6: usize = 256;
const ICMP_LEN: usize = 8;

/// `bpf_csum_diff`'s sum (of the bytes as native-endian 32-bit words)
/// as a sum of big-endian 16-bit words: the one's complement sum commutes
/// with swapping bytes, so fold it and swap.
#[inline(always)]
fn swap_sum(sum: i64) -> u64 {
    fold(sum as u32 as u64).swap_bytes() as u64
}

/// Turns the frame into an ICMP "fragmentation needed" (type 3 code 4)
/// from the VIP to the client, with the MTU left inside the tunnel, so
/// path MTU discovery works through the director.
/// A function of its own (a BPF-to-BPF call, cold: only a packet too
/// big for the tunnel gets here), so its locals stay off the main path's
/// stack frame. Drops what it cannot turn into the reply.
#[inline(never)]
fn too_big4(ctx: &XdpContext, mtu: u16) -> u32 {
    try_too_big4(ctx, mtu).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_too_big4(ctx: &XdpContext, mtu: u16) -> Result<u32, Pass> {
    let len = ip_len(ctx);
    if len < QUOTE4 {
        return Ok(xdp_action::XDP_DROP);
    }
    let macs: [u8; 12] = read(ctx, 0)?;
    // SAFETY: the helpers check the frame's bounds themselves.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, -((len - QUOTE4) as i32)) != 0
            || bpf_xdp_adjust_head(ctx.ctx, -((IPV4_LEN + ICMP_LEN) as i32)) != 0
        {
            return Ok(xdp_action::XDP_DROP);
        }
    }
    // Ethernet | IPv4 | ICMP | the quoted packet (where it was).
    const Q: usize = ETH_LEN + IPV4_LEN + ICMP_LEN;
    // One bounds check for the whole reply (for the verifier: the helpers
    // made it this long).
    let Ok(frame) = ptr_at::<[u8; Q + QUOTE4]>(ctx, 0) else {
        return Ok(xdp_action::XDP_DROP);
    };
    // SAFETY: ptr_at checked the reply is inside the frame.
    let frame = unsafe { &mut *frame };
    let (head, q) = frame.split_at_mut(Q);
    let (eth, rest) = head.split_at_mut(ETH_LEN);
    let (h, icmp) = rest.split_at_mut(IPV4_LEN);
    let quote = q.as_mut_ptr();
    // Back to the client, from the MAC it sent to.
    write_eth(eth, &macs[6..12], &macs[..6], ETH_P_IP);
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&((IPV4_LEN + ICMP_LEN + QUOTE4) as u16).to_be_bytes());
    h[4..8].copy_from_slice(&[0, 0, 0, 0]);
    h[8] = 64;
    h[9] = IPPROTO_ICMP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&q[16..20]); // from the VIP
    h[16..20].copy_from_slice(&q[12..16]); // to the client
    let c = ipv4_checksum(h);
    h[10..12].copy_from_slice(&c);
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[2..6].copy_from_slice(&[0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    // SAFETY: the helper reads QUOTE4 bytes ptr_at checked.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            quote as *mut u32,
            QUOTE4 as u32,
            0,
        )
    };
    let total = u16::from_be_bytes([3, 4]) as u64 + mtu as u64 + swap_sum(sum);
    icmp[2..4].copy_from_slice(&(!fold(total)).to_be_bytes());
    Ok(xdp_action::XDP_TX)
}

/// Turns the frame into an ICMPv6 "packet too big" (type 2) from the VIP
/// to the client, with the MTU left inside the tunnel.
/// A function of its own, as [`too_big4`].
#[inline(never)]
fn too_big6(ctx: &XdpContext, mtu: u32) -> u32 {
    try_too_big6(ctx, mtu).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_too_big6(ctx: &XdpContext, mtu: u32) -> Result<u32, Pass> {
    let len = ip_len(ctx);
    if len < QUOTE6 {
        return Ok(xdp_action::XDP_DROP);
    }
    let macs: [u8; 12] = read(ctx, 0)?;
    // SAFETY: the helpers check the frame's bounds themselves.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, -((len - QUOTE6) as i32)) != 0
            || bpf_xdp_adjust_head(ctx.ctx, -((IPV6_LEN + ICMP_LEN) as i32)) != 0
        {
            return Ok(xdp_action::XDP_DROP);
        }
    }
    const Q: usize = ETH_LEN + IPV6_LEN + ICMP_LEN;
    let Ok(frame) = ptr_at::<[u8; Q + QUOTE6]>(ctx, 0) else {
        return Ok(xdp_action::XDP_DROP); // for the verifier, as in too_big4
    };
    // SAFETY: ptr_at checked the reply is inside the frame.
    let frame = unsafe { &mut *frame };
    let (head, q) = frame.split_at_mut(Q);
    let (eth, rest) = head.split_at_mut(ETH_LEN);
    let (h, icmp) = rest.split_at_mut(IPV6_LEN);
    let quote = q.as_mut_ptr();
    write_eth(eth, &macs[6..12], &macs[..6], ETH_P_IPV6);
    h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&((ICMP_LEN + QUOTE6) as u16).to_be_bytes());
    h[6] = IPPROTO_ICMPV6;
    h[7] = 255;
    h[8..24].copy_from_slice(&q[24..40]); // from the VIP
    h[24..40].copy_from_slice(&q[8..24]); // to the client
    icmp[..4].copy_from_slice(&[2, 0, 0, 0]);
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    // The checksum covers a pseudo-header (both addresses, the length,
    // the next header), the ICMPv6 header and the quote.
    let mut sum = (ICMP_LEN + QUOTE6) as u64 + IPPROTO_ICMPV6 as u64;
    // SAFETY: the helper reads the two addresses (32 bytes of the reply's
    // header, which ptr_at checked).
    let addrs = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            h[8..].as_mut_ptr() as *mut u32,
            32,
            0,
        )
    };
    sum += swap_sum(addrs);
    sum += u16::from_be_bytes([2, 0]) as u64 + (mtu >> 16) as u64 + (mtu & 0xffff) as u64;
    // SAFETY: the helper reads QUOTE6 bytes ptr_at checked.
    let q = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            quote as *mut u32,
            QUOTE6 as u32,
            0,
        )
    };
    icmp[2..4].copy_from_slice(&(!fold(sum + swap_sum(q))).to_be_bytes());
    Ok(xdp_action::XDP_TX)
}

/// dst MAC = the real server, src MAC = us (the frame's old destination).
#[inline(always)]
fn rewrite(ctx: &XdpContext, b: &Backend) -> u32 {
    let Ok(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        // Unreachable: the frame was parsed past its Ethernet header. The
        // check is for the verifier.
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at checked both MAC fields are inside the frame.
    unsafe {
        let macs = &mut *eth;
        let mut out = [0u8; 12];
        out[..6].copy_from_slice(&b.mac);
        out[6..].copy_from_slice(&macs[..6]);
        *macs = out;
    }
    xdp_action::XDP_TX
}

/// The benchmark floor: swap the MACs and send the frame back. Not used by
/// the daemon; `cargo xtask bench xdp` reports costs relative to it.
#[xdp]
pub fn floor(ctx: XdpContext) -> u32 {
    let Ok(eth) = ptr_at::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at checked both MAC fields are inside the frame.
    unsafe {
        let macs = &mut *eth;
        let mut out = [0u8; 12];
        out[..6].copy_from_slice(&macs[6..]);
        out[6..].copy_from_slice(&macs[..6]);
        *macs = out;
    }
    xdp_action::XDP_TX
}

/// Tail-call targets of [`fresh_client`] (benchmark only): slot 0, set by
/// `cargo xtask bench xdp` to the program it measures.
#[map(name = "BENCH_TARGETS")]
static BENCH_TARGETS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// This CPU's frames through [`fresh_client`].
#[map(name = "BENCH_FRAMES")]
static BENCH_FRAMES: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Benchmark only (the live-frame rate of new flows, where the kernel
/// hands the program the same frame over and over): gives an IPv4 frame a
/// client address of its own (100 + CPU, then this CPU's frame count),
/// then tail-calls the measured program. Not used by the daemon.
#[xdp]
pub fn fresh_client(ctx: XdpContext) -> u32 {
    let Ok(src) = ptr_at::<[u8; 4]>(&ctx, ETH_LEN + 12) else {
        return xdp_action::XDP_PASS;
    };
    // Verifier: index 0 of a one-element per-CPU array always exists.
    let Some(n) = BENCH_FRAMES.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's element; ptr_at checked the address is inside
    // the frame.
    unsafe {
        *n = (*n).wrapping_add(1);
        let cpu = bpf_get_smp_processor_id() as u8;
        *src = [
            100u8.wrapping_add(cpu),
            (*n >> 16) as u8,
            (*n >> 8) as u8,
            *n as u8,
        ];
        BENCH_TARGETS.tail_call(&ctx, 0);
    }
    xdp_action::XDP_ABORTED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
