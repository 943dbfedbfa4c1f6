//! Reading the frame: bounds-checked pointers, Ethernet, IPv4, IPv6 and its extension headers, TCP flags; the virtual MACs we answer for.

use super::*;

pub(crate) const ETH_LEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const IPV4_LEN: usize = 20;
pub(crate) const IPV6_LEN: usize = 40;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const IPPROTO_IPIP: u8 = 4;
pub(crate) const IPPROTO_IPV6: u8 = 41;
pub(crate) const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers we step over (hop-by-hop, routing, destination).
pub(crate) const IPV6_HOPOPTS: u8 = 0;
pub(crate) const IPV6_ROUTING: u8 = 43;
pub(crate) const IPV6_DSTOPTS: u8 = 60;
/// At most this many IPv6 extension headers are walked (a verifier bound,
/// and more than real traffic carries); deeper chains go to the kernel.
pub(crate) const IPV6_MAX_EXT: usize = 4;

/// Returns a pointer to a `T` at `offset` bytes into the frame, or `ToKernel`
/// when the frame is too short. The bounds check is also what lets the
/// verifier accept every later access through the pointer.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ToKernel> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(ToKernel);
    }
    Ok((start + offset) as *mut T)
}

/// Reads a `T` (byte array) at `offset`.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ToKernel> {
    // SAFETY: ptr_at checked that the whole T is inside the frame; T is a
    // byte array, so any alignment is fine.
    Ok(unsafe { *ptr_at::<T>(ctx, offset)? })
}

/// A VRRP virtual MAC (RFC 5798's 00:00:5e:00:01:VRID for IPv4,
/// 00:00:5e:00:02:VRID for IPv6) in the set the daemon keeps while master:
/// a prefix comparison, and a lookup only for such frames.
#[inline(always)]
pub(crate) fn is_our_vmac(mac: &[u8; 6]) -> bool {
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
pub(crate) fn parse_ipv4(ctx: &XdpContext, p: &mut Packet) -> Result<(), ToKernel> {
    // SAFETY: ptr_at checked the whole header is inside the frame.
    let h = unsafe { &*ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN)? };
    if h[0] >> 4 != 4 {
        return Err(ToKernel);
    }
    // The header length field is 4 bits, so at most 60 bytes: the mask also
    // gives the verifier a bounded offset.
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_LEN {
        return Err(ToKernel); // malformed
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
pub(crate) fn parse_ipv6(ctx: &XdpContext, p: &mut Packet) -> Result<(), ToKernel> {
    // SAFETY: as in parse_ipv4.
    let h = unsafe { &*ptr_at::<[u8; IPV6_LEN]>(ctx, ETH_LEN)? };
    if h[0] >> 4 != 6 {
        return Err(ToKernel);
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

/// The TCP flags of the segment at `l4` (one byte of the header, read in
/// place; 0 for other protocols or a truncated header).
#[inline(always)]
pub(crate) fn tcp_flags(ctx: &XdpContext, key: &FlowKey, l4: usize) -> u8 {
    if key.protocol != IPPROTO_TCP {
        return 0;
    }
    match ptr_at::<[u8; 14]>(ctx, l4) {
        // SAFETY: ptr_at checked the 14 bytes are inside the frame.
        Ok(h) => unsafe { (*h)[13] },
        Err(ToKernel) => 0,
    }
}
