//! Finding the service of a frame (exact port, group member, any port) and its real server in the Maglev table.

use super::*;

/// The service for a new flow: exact port first, then a group member
/// (the longest match: a port, a port range, every port), then the VIP's
/// "any port" service.
#[inline(always)]
pub(crate) fn find_service(key: &FlowKey) -> Option<ServiceValue> {
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
pub(crate) fn service(key: &FlowKey, port: [u8; 2], flags: u8) -> Option<ServiceValue> {
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
pub(crate) fn maglev(service: &ServiceValue, hash: u32) -> Option<u32> {
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
pub(crate) fn backend(id: u32) -> Option<&'static Backend> {
    let b = BACKENDS.get(id)?;
    if b.flags & BACKEND_USABLE == 0 {
        return None;
    }
    // In place: the slot is read where it is, never copied to the stack.
    Some(b)
}
