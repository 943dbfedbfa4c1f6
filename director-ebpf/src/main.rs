//! The director's XDP program: LVS direct routing by MAC rewrite.
//!
//! For a frame addressed to a virtual service (VIP, port, protocol) it picks
//! a real server, rewrites the destination MAC to the real server's and the
//! source MAC to ours (the frame's old destination), and sends the frame
//! back out of the same interface (`XDP_TX`). The IP packet is untouched:
//! the real server holds the VIP on `lo` and answers the client directly.
//!
//! Everything else is passed to the kernel untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::info;
use director_common::{
    BACKEND_SLOTS, Backend, Counters, IPPROTO_TCP, IPPROTO_UDP, MAX_REAL_SERVERS, MAX_SERVICES,
    ServiceKey, ServiceValue,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(BACKEND_SLOTS, 0);

#[map(name = "SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REAL_SERVERS, 0);

/// A frame we cannot or should not handle: the caller passes it to the kernel.
struct Pass;

#[xdp]
pub fn director(ctx: XdpContext) -> u32 {
    match try_forward(&ctx) {
        Ok(action) => action,
        Err(Pass) => xdp_action::XDP_PASS,
    }
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

#[inline(always)]
fn try_forward(ctx: &XdpContext) -> Result<u32, Pass> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the whole header is inside the frame.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(Pass);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: as above.
    let ip = unsafe { &*ip };
    let protocol = ip.proto;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Err(Pass);
    }
    // Fragments: only the first carries the ports. Until the dataplane
    // hashes fragments on addresses alone, the kernel gets them all.
    if ip.frags[0] & 0x3f != 0 || ip.frags[1] != 0 {
        return Err(Pass);
    }
    // The header length field is 4 bits, so this is at most 60 bytes: the
    // mask also gives the verifier a bounded offset.
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN {
        return Err(Pass); // malformed header length
    }
    // TCP and UDP both start with source port, destination port.
    let ports: *const [u8; 4] = ptr_at(ctx, EthHdr::LEN + ihl)?;
    // SAFETY: ptr_at checked the four port bytes are inside the frame.
    let ports = unsafe { *ports };

    let key = ServiceKey {
        vip: ip.dst_addr,
        port: [ports[2], ports[3]],
        protocol,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; the daemon replaces entries
    // whole, so no partially written value is ever read.
    let service = match unsafe { SERVICES.get(key) } {
        Some(service) => *service,
        None => return Err(Pass),
    };
    if service.backend_count == 0 {
        return Err(Pass);
    }

    // Source-address and port hash: a flow always maps to the same server.
    let hash = flow_hash(ip.src_addr, [ports[0], ports[1]]);
    let index = service.backend_start + hash % service.backend_count;
    let backend = match BACKENDS.get(index) {
        Some(backend) => *backend,
        None => return Err(Pass), // index past the array (daemon bug): do not trust it
    };

    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service.id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        let stats = unsafe { &mut *stats };
        if stats.packets == 0 {
            // Once per service per CPU: the first frame forwarded.
            info!(
                ctx,
                "first packet for service {} forwarded to real server {}", service.id, backend.id
            );
        }
        stats.packets += 1;
        stats.bytes += len;
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend.id) {
        // SAFETY: as above.
        let stats = unsafe { &mut *stats };
        stats.packets += 1;
        stats.bytes += len;
    }

    // SAFETY: `eth` was bounds-checked above and nothing changed the frame size.
    unsafe {
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = backend.mac;
    }
    Ok(xdp_action::XDP_TX)
}

/// A cheap, well-mixed hash of the client's address and port.
#[inline(always)]
fn flow_hash(addr: [u8; 4], port: [u8; 2]) -> u32 {
    let mut h = u32::from_ne_bytes(addr) ^ ((u16::from_ne_bytes(port) as u32) << 16);
    // murmur3 finaliser
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
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
