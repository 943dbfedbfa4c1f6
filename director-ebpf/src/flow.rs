//! The flow table: two-choice buckets of ways with tag words and occupancy bits, lookups, recording and eviction.

use super::*;

/// Writes a flow's entry into way `index`, field by field (no 64-byte
/// copy on the BPF stack), then its tag.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the entry's fields, written in place"
)]
pub(crate) fn record(
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
        // Placed here: no peer's import replaces it.
        (*e).from_peer = 0;
        (*e).atime = now;
    }
    set_tag_byte(index / FLOW_WAYS, index % FLOW_WAYS, flow_tag(hash));
    occupy(index / FLOW_WAYS);
}

/// The occupancy bit of `bucket`: its element and bit.
#[inline(always)]
pub(crate) fn occupancy_at(bucket: u32) -> (u32, u64) {
    (
        flow_tag_elements(table_buckets()) + bucket / 64,
        1 << (bucket % 64),
    )
}

/// Whether a way of the bucket at `first` holds a flow (its occupancy
/// bit; the verifier's case, no such element, counts as taken).
#[inline(always)]
pub(crate) fn occupied(first: u32) -> bool {
    let (element, bit) = occupancy_at(first / FLOW_WAYS);
    match FLOW_TAGS.get(element) {
        Some(word) => word & bit != 0,
        None => true,
    }
}

/// Marks `bucket` occupied: an atomic OR of its bit, once (other CPUs set
/// the element's other bits).
#[inline(always)]
pub(crate) fn occupy(bucket: u32) {
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
pub(crate) fn set_tag_byte(bucket: u32, way: u32, value: u8) {
    if let Some(t) = FLOW_TAGS.get_ptr_mut(bucket / 2) {
        // SAFETY: the byte is within the element: (bucket & 1) * 4 plus
        // way < 4 (the masks are for the verifier).
        unsafe { *(t as *mut u8).add(((bucket & 1) * 4 + (way & 3)) as usize) = value };
    }
}

/// Bucket `first`'s tag word (0 where the array has no such element: the
/// verifier's case only).
#[inline(always)]
pub(crate) fn tags(first: u32) -> u32 {
    let bucket = first / FLOW_WAYS;
    let pair = FLOW_TAGS.get(bucket / 2).copied().unwrap_or(0);
    (pair >> ((bucket & 1) * 32)) as u32
}

/// Whether a tag word's four ways are all taken.
#[inline(always)]
pub(crate) fn full(t: u32) -> bool {
    t & 0xff != 0 && t & 0xff00 != 0 && t & 0xff_0000 != 0 && t & 0xff00_0000 != 0
}

/// Buckets of the flow table (the loader's constant).
#[inline(always)]
pub(crate) fn table_buckets() -> u32 {
    FLOW_BUCKETS.load()
}

/// Looks `key` (check hash `check`) up in its first bucket `b1`, and in
/// its second `b2` only when `b1` is full (a flow goes to its second
/// bucket only then, and ways are never emptied).
#[inline(always)]
pub(crate) fn find_flow(key: &FlowKey, check: u32, b1: u32, b2: u32) -> InBuckets {
    match find_in(key, check, b1) {
        InBuckets::Full => match find_in(key, check, b2) {
            InBuckets::Full => InBuckets::Missing,
            found => found,
        },
        found => found,
    }
}

/// Looks `key` up in the bucket at `first`. Ways fill in order and are
/// never emptied, so an empty way ends the search, and is where a new
/// entry for the key goes (no tag word read to find it).
#[inline(always)]
pub(crate) fn find_in(key: &FlowKey, check: u32, first: u32) -> InBuckets {
    let mut w = 0;
    while w < FLOW_WAYS {
        let index = first + w;
        // Verifier: `first` is below the table's size by construction.
        let Some(e) = FLOWS.get_ptr_mut(index) else {
            return InBuckets::Missing;
        };
        // SAFETY: a pointer into the table's element.
        if unsafe { (*e).key.protocol } == 0 {
            return InBuckets::Free(index);
        }
        if let Some(found) = way_holding(index, e, key, check) {
            return found;
        }
        w += 1;
    }
    InBuckets::Full
}

/// What way `index` (at `e`) is for `key` when it holds it: its entry, or
/// torn when its value does not check; `None` for another key.
#[inline(always)]
pub(crate) fn way_holding(
    index: u32,
    e: *mut FlowEntry,
    key: &FlowKey,
    check: u32,
) -> Option<InBuckets> {
    // SAFETY: a pointer into the table's element.
    let entry = unsafe { &*e };
    if !entry.key.same(key) {
        return None;
    }
    Some(if entry.checks(check) {
        InBuckets::Entry(index, e)
    } else {
        InBuckets::Torn(index)
    })
}

/// [`find_flow`] for a connection opening (its entry is almost never
/// there): its first bucket empty (the occupancy bit, cached), the
/// entry goes to that bucket's first way, no tag word read; else the tag
/// words say which ways may hold the key and where a free way is, so the
/// entry's uncached line is written, never read.
#[inline(always)]
pub(crate) fn find_opening(key: &FlowKey, check: u32, tag: u8, b1: u32, b2: u32) -> InBuckets {
    if !occupied(b1) {
        return InBuckets::Free(b1);
    }
    find_tagged(key, check, tag, b1, b2)
}

/// [`find_flow`] through the tag words: only ways tagged with `tag` are
/// read (a new connection's entry is almost never there).
#[inline(always)]
pub(crate) fn find_tagged(key: &FlowKey, check: u32, tag: u8, b1: u32, b2: u32) -> InBuckets {
    let t1 = tags(b1);
    match find_tag(key, check, tag, t1, b1) {
        InBuckets::Missing if full(t1) => find_tag(key, check, tag, tags(b2), b2),
        found => found,
    }
}

/// The way of bucket `first` (tag word `t`) tagged `tag` that holds `key`.
#[inline(always)]
pub(crate) fn find_tag(key: &FlowKey, check: u32, tag: u8, t: u32, first: u32) -> InBuckets {
    let mut w = 0;
    while w < FLOW_WAYS {
        if (t >> (8 * w)) as u8 == tag {
            let index = first + w;
            // Verifier: as in find_in.
            let Some(e) = FLOWS.get_ptr_mut(index) else {
                return InBuckets::Missing;
            };
            if let Some(found) = way_holding(index, e, key, check) {
                return found;
            }
        }
        w += 1;
    }
    InBuckets::Missing
}

/// The first empty way of a bucket by its tag word.
#[inline(always)]
pub(crate) fn empty_way(t: u32) -> Option<u32> {
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
pub(crate) fn way_for_new_flow(b1: u32, b2: u32, check: u32) -> Option<u32> {
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
