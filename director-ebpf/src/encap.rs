//! Tunnel real servers: the frame wrapped in IP-in-IP / IPv6-in-IPv6 to the real server.

use super::*;

/// Sends the frame through a tunnel to real server `id`: inside an outer
/// IP header to the server's address, to the next hop's MAC.
#[inline(always)]
pub(crate) fn tunnel_to(ctx: &XdpContext, id: u32, hash: u32) -> u32 {
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

/// The frame's IP packet length (the frame less its Ethernet header).
#[inline(always)]
pub(crate) fn ip_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data() - ETH_LEN
}

/// Writes an Ethernet header into the frame's first bytes.
#[inline(always)]
pub(crate) fn write_eth(e: &mut [u8], dst: &[u8], src: &[u8], ethertype: u16) {
    e[..6].copy_from_slice(dst);
    e[6..12].copy_from_slice(src);
    e[12..].copy_from_slice(&ethertype.to_be_bytes());
}

/// Wraps an IPv4 packet in an outer IPv4 header (IP-in-IP, protocol 4)
/// from `tunnel_src4` + hash to the real server, for its next hop.
#[inline(always)]
pub(crate) fn encapsulate4(
    ctx: &XdpContext,
    b: &Backend,
    s: &Settings,
    hash: u32,
) -> Result<u32, ToKernel> {
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
        return Err(ToKernel);
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
pub(crate) fn encapsulate6(
    ctx: &XdpContext,
    b: &Backend,
    s: &Settings,
    hash: u32,
) -> Result<u32, ToKernel> {
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
        return Err(ToKernel);
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
