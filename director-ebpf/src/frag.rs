//! Fragments: the first is placed like its flow, the later ones (no ports) follow it.

use super::*;

#[inline(always)]
pub(crate) fn frag_key(packet: &Packet) -> FragKey {
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
pub(crate) fn forward_fragment(ctx: &XdpContext, packet: &Packet) -> Result<Forwarded, ToKernel> {
    let key = &packet.key;
    // SAFETY: copied out at once.
    if let Some(f) = unsafe { FRAGS.get(&frag_key(packet)) }.copied()
        && let Some(b) = backend(f.backend)
        && b.generation == f.generation
    {
        count(ctx, f.service, f.backend, false);
        return Ok(forward_to(ctx, f.backend, b, key));
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
            .ok_or(ToKernel)?,
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
            return Ok(forward_to(ctx, id, b, key));
        }
    }
    let hash = if service.flags & SVC_SOURCE_HASH != 0 {
        source_hash(&key.src)
    } else {
        addr_hash(&key.src, &key.dst)
    };
    let id = maglev(&service, hash).ok_or(ToKernel)?;
    let b = backend(id).ok_or(ToKernel)?;
    count(ctx, service.id, id, false);
    Ok(forward_to(ctx, id, b, key))
}
