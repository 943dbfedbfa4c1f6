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
//!
//! This file holds the entry point and the pipeline (parse, find the
//! service, choose, count, rewrite or tunnel); one module per concern
//! holds the rest (aya inlines across them, as within one file):
//! - `maps`: every map the daemon shares with the program;
//! - `parse`: bounds-checked reads, Ethernet, IPv4, IPv6 extension
//!   headers, TCP flags, our virtual MACs;
//! - `service`: the service of a frame (index, group members, any port)
//!   and the Maglev lookup;
//! - `choose`: which real server (flow table, persistence, Maglev) and
//!   placing a new flow;
//! - `flow`: the flow table's buckets, tags, lookups and eviction;
//! - `guard`: the SYN-flood guard;
//! - `frag`: fragments; `icmp`: ICMP errors and packet-too-big;
//! - `encap`: tunnel encapsulation; `csum`: checksums.
//!
//! The benchmark harness's programs (the floor, fresh clients) are another
//! object, `bench/main.rs`, which the daemon never embeds.
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
    helpers::{bpf_csum_diff, bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
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

mod choose;
mod csum;
mod encap;
mod flow;
mod frag;
mod guard;
mod icmp;
mod maps;
mod parse;
mod service;

use {
    choose::*, csum::*, encap::*, flow::*, frag::*, guard::*, icmp::*, maps::*, parse::*,
    service::*,
};

/// Where [`confirm_affinity`] builds the entry it inserts (per CPU).
#[repr(C)]
struct AffinityScratch {
    key: PersistKey,
    value: FlowValue,
}

/// A frame we do not forward: the caller passes it to the kernel.
struct ToKernel;

#[xdp]
pub fn director(ctx: XdpContext) -> u32 {
    action(&ctx, try_forward(&ctx))
}

/// The XDP action for what became of a frame.
#[inline(always)]
fn action(ctx: &XdpContext, out: Result<Forwarded, ToKernel>) -> u32 {
    match out {
        Ok(Forwarded::Done(action)) => action,
        Ok(Forwarded::Tunnel { id, hash }) => tunnel_to(ctx, id, hash),
        Err(ToKernel) => xdp_action::XDP_PASS,
    }
}

/// What becomes of a frame: an action taken (the MACs rewritten: direct
/// routing), or a tunnel to real server `id`, with the flow's hash (the
/// outer source varies with it).
enum Forwarded {
    Done(u32),
    Tunnel { id: u32, hash: u32 },
}

/// Sends the frame to real server `b` (id `id`): direct routing rewrites
/// the MACs here; a tunnel is left to [`tunnel_to`], so the tunnel code is
/// inlined once (five inlined copies would overflow the BPF stack).
#[inline(always)]
fn forward_to(ctx: &XdpContext, id: u32, b: &Backend, key: &FlowKey) -> Forwarded {
    if b.flags & BACKEND_TUNNEL == 0 {
        return Forwarded::Done(rewrite(ctx, b));
    }
    // The client's address and ports: the outer source varies by flow, so
    // the real server's NIC spreads tunnelled flows.
    let hash = fmix32(
        fold_addr(&key.src)
            ^ u32::from_ne_bytes([key.sport[0], key.sport[1], key.dport[0], key.dport[1]]),
    );
    Forwarded::Tunnel { id, hash }
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
fn try_forward(ctx: &XdpContext) -> Result<Forwarded, ToKernel> {
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
        _ => return Err(ToKernel),
    }
    // Not for a VIP (most of a director's own traffic): one inlined array
    // lookup, no hash-map lookup.
    let bucket = vip_bucket(&packet.key.dst);
    match VIP_FILTER.get(bucket / 64) {
        Some(word) if word & (1u64 << (bucket % 64)) != 0 => {}
        _ => return Err(ToKernel),
    }
    // Only frames addressed to us: under unknown-unicast flooding another
    // director's frames reach us too.
    let dst_mac: [u8; 6] = read(ctx, 0)?;
    match SETTINGS.get(0) {
        Some(s) if s.mac == dst_mac => {}
        // A VRRP virtual MAC (00:00:5e:00:0{1,2}:VRID) we are master of.
        Some(_) if is_our_vmac(&dst_mac) => {}
        _ => return Err(ToKernel),
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
        Ok(forward_to(ctx, id, b, &packet.key))
    } else if (!v6 && protocol == IPPROTO_ICMP) || (v6 && protocol == IPPROTO_ICMPV6) {
        forward_icmp_error(ctx, &packet)
    } else {
        Err(ToKernel)
    }
}

/// What a flow's buckets hold for it.
enum InBuckets {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
