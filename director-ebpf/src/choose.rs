//! Choosing the real server of a flow: the flow table first, then the client's persistence, then Maglev; and placing a new flow.

use super::*;

/// [`choose`]'s verdict bits: the flow is new; it is (or was) recorded in
/// the flow table (not a new flow past the SYN-flood guard's limit).
pub(crate) const PLACED_NEW: u8 = 1;
pub(crate) const PLACED_RECORDED: u8 = 2;

/// The real server for a flow: its entry in the flow table, or a new
/// placement (recorded). Returns the server's id and slot, the service's
/// counter index, and whether the flow is new.
#[inline(always)]
pub(crate) fn choose(
    ctx: &XdpContext,
    key: &FlowKey,
    l4: usize,
) -> Result<(u32, &'static Backend, u32, u8), ToKernel> {
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
        InBuckets::Entry(index, e) => {
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
        InBuckets::Torn(index) | InBuckets::Free(index) => way = Some(index),
        InBuckets::Missing | InBuckets::Full => {}
    }

    // 2. A new flow (or one whose server left): place it, and record it
    // unless this CPU is past its new-flow limit (a flood), in the way its
    // key had or the way `way_for_new_flow` picks. Past the limit nothing of it is
    // recorded anywhere: not its flow entry, not a persistence entry, not
    // a fragment entry (a spoofed flood would evict real clients'
    // affinities from those LRU tables).
    let service = find_service(key).ok_or(ToKernel)?;
    let recorded = record_new_flow();
    let (id, b, pending) = place_new_flow(key, &service, now, recorded)?;
    if recorded {
        let way = match way {
            Some(index) => Some(index),
            None => way_for_new_flow(b1, b2, check),
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

/// Whether a closing TCP flow's entry (last packet at `atime`) still
/// holds for this packet: not for a SYN (a new connection on the 5-tuple),
/// nor once idle for [`CLOSED_FLOW_IDLE_NS`] (a new connection, maybe
/// opened through another director, must not follow the closed one to its
/// server); else the packet refreshes it.
#[inline(always)]
pub(crate) fn closing_goes_on(e: *mut FlowEntry, atime: u64, syn: bool) -> bool {
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
pub(crate) fn place_new_flow(
    key: &FlowKey,
    service: &ServiceValue,
    now: u64,
    record: bool,
) -> Result<(u32, &'static Backend, bool), ToKernel> {
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
        let s = AFFINITY_SCRATCH.get_ptr_mut(0).ok_or(ToKernel)?;
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
                return Ok((id, backend(id).ok_or(ToKernel)?, false));
            }
            if let Some(p) = PERSIST_PENDING.get(&(*s).key)
                && affinity_holds(p, now, timeout)
            {
                let id = p.backend;
                return Ok((id, backend(id).ok_or(ToKernel)?, true));
            }
        }
    }
    let hash = if service.flags & SVC_SOURCE_HASH != 0 {
        source_hash(&key.src)
    } else {
        flow_hash(key)
    };
    let id = maglev(service, hash).ok_or(ToKernel)?;
    let b = backend(id).ok_or(ToKernel)?;
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
pub(crate) fn affinity_holds(p: &FlowValue, now: u64, timeout: u64) -> bool {
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
pub(crate) fn confirm_affinity(e: *mut FlowEntry, key: &FlowKey) {
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
pub(crate) fn udp_timeout() -> u64 {
    match SETTINGS.get(0) {
        Some(s) if s.udp_timeout_ns != 0 => s.udp_timeout_ns,
        _ => 300_000_000_000, // 300 s, as IPVS
    }
}
