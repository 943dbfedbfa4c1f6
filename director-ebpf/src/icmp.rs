//! ICMP errors for a VIP follow the flow they quote; "fragmentation needed" / "packet too big" answered for tunnelled frames.

use super::*;

/// ICMP "fragmentation needed" (IPv4 type 3 code 4) or ICMPv6 "packet too
/// big" (type 2) sent to a VIP quotes a packet the real server sent from
/// the VIP to a client: send it to that real server, so path MTU discovery
/// works through the director.
#[inline(always)]
pub(crate) fn forward_icmp_error(ctx: &XdpContext, packet: &Packet) -> Result<Forwarded, ToKernel> {
    let v6 = packet.key.flags & FLOW_V6 != 0;
    let icmp: [u8; 2] = read(ctx, packet.l4)?;
    let inner = packet.l4 + 8;
    let mut key = FlowKey {
        flags: packet.key.flags,
        ..FlowKey::default()
    };
    let ports_at = if v6 {
        if icmp[0] != 2 {
            return Err(ToKernel);
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
            return Err(ToKernel);
        }
        // SAFETY: as above.
        let h = unsafe { &*ptr_at::<[u8; IPV4_LEN]>(ctx, inner)? };
        let ihl = ((h[0] & 0x0f) as usize) * 4; // masked: bounded for the verifier
        if ihl < IPV4_LEN {
            return Err(ToKernel);
        }
        key.protocol = h[9];
        key.dst[..4].copy_from_slice(&h[12..16]);
        key.src[..4].copy_from_slice(&h[16..20]);
        inner + ihl
    };
    // The ICMP error must be addressed to the VIP the quoted packet came from.
    if key.dst != packet.key.dst {
        return Err(ToKernel);
    }
    if key.protocol != IPPROTO_TCP && key.protocol != IPPROTO_UDP {
        return Err(ToKernel);
    }
    let ports: [u8; 4] = read(ctx, ports_at)?;
    key.dport = [ports[0], ports[1]];
    key.sport = [ports[2], ports[3]];
    let service = find_service(&key).ok_or(ToKernel)?;
    let seed = SETTINGS.get(0).map_or(0, |s| s.flow_seed);
    let hash = flow_table_hash(&key, seed);
    let (b1, b2) = flow_buckets(hash, table_buckets());
    let id = match find_flow(&key, hash as u32, b1, b2) {
        // SAFETY: a pointer into the table's element.
        InBuckets::Entry(_, e) => u32::from(unsafe { (*e).backend }),
        InBuckets::Torn(_) | InBuckets::Missing | InBuckets::Full | InBuckets::Free(_) => {
            let hash = if service.flags & SVC_SOURCE_HASH != 0 {
                source_hash(&key.src)
            } else {
                flow_hash(&key)
            };
            maglev(&service, hash).ok_or(ToKernel)?
        }
    };
    let b = backend(id).ok_or(ToKernel)?;
    count(ctx, service.id, id, false);
    Ok(forward_to(ctx, id, b, &key))
}

/// Bytes of the client's packet an ICMP "fragmentation needed" quotes
/// (its header and the start of its payload; RFC 792 asks for the header
/// and 8 bytes).
pub(crate) const QUOTE4: usize = 64;
/// Bytes an ICMPv6 "packet too big" quotes (the reply stays far below the
/// IPv6 minimum MTU).
pub(crate) const QUOTE6: usize = 256;
pub(crate) const ICMP_LEN: usize = 8;

/// `bpf_csum_diff`'s sum (of the bytes as native-endian 32-bit words)
/// as a sum of big-endian 16-bit words: the one's complement sum commutes
/// with swapping bytes, so fold it and swap.
#[inline(always)]
pub(crate) fn swap_sum(sum: i64) -> u64 {
    fold(sum as u32 as u64).swap_bytes() as u64
}

/// Turns the frame into an ICMP "fragmentation needed" (type 3 code 4)
/// from the VIP to the client, with the MTU left inside the tunnel, so
/// path MTU discovery works through the director.
/// A function of its own (a BPF-to-BPF call, cold: only a packet too
/// big for the tunnel gets here), so its locals stay off the main path's
/// stack frame. Drops what it cannot turn into the reply.
#[inline(never)]
pub(crate) fn too_big4(ctx: &XdpContext, mtu: u16) -> u32 {
    try_too_big4(ctx, mtu).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
pub(crate) fn try_too_big4(ctx: &XdpContext, mtu: u16) -> Result<u32, ToKernel> {
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
pub(crate) fn too_big6(ctx: &XdpContext, mtu: u32) -> u32 {
    try_too_big6(ctx, mtu).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
pub(crate) fn try_too_big6(ctx: &XdpContext, mtu: u32) -> Result<u32, ToKernel> {
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
