//! The benchmark harness's own XDP object (`cargo xtask bench xdp`), built
//! beside the director's and never embedded in the daemon: the floor an
//! XDP program costs, and fresh-client frames for the director's program.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::{PerCpuArray, ProgramArray},
    programs::XdpContext,
};

/// Ethernet header length (the IPv4 header follows it in the frames the
/// harness sends).
const ETH_LEN: usize = 14;

/// A pointer to a `T` at `offset` in the frame, `None` when the frame is
/// too short (the bounds check the verifier needs for every access).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    (ctx.data() + offset + core::mem::size_of::<T>() <= ctx.data_end())
        .then_some((ctx.data() + offset) as *mut T)
}

/// The benchmark floor: swap the MACs and send the frame back. Not used by
/// the daemon; `cargo xtask bench xdp` reports costs relative to it.
#[xdp]
pub fn floor(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<[u8; 12]>(&ctx, 0) else {
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
    let Some(src) = ptr_at::<[u8; 4]>(&ctx, ETH_LEN + 12) else {
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
