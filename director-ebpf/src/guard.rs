//! The SYN-flood guard: at most `new_flow_limit` new flows per second per CPU are recorded.

use super::*;

/// Katran's SYN-flood guard: at most `new_flow_limit` new flows per second
/// are recorded on this CPU. Past it, new flows are still forwarded (by
/// the Maglev table, which places them as the record would) but not
/// inserted, so a flood cannot push established flows out of the LRU flow
/// table. Costs new flows only: a settings read, and with a limit the
/// coarse clock and a per-CPU counter.
#[inline(always)]
pub(crate) fn record_new_flow() -> bool {
    let limit = match SETTINGS.get(0) {
        Some(s) => u64::from(s.new_flow_limit),
        // Verifier: the array's only element always exists.
        None => 0,
    };
    if limit == 0 {
        return true;
    }
    // Verifier: index 0 of a one-element per-CPU array always exists.
    let Some(w) = NEW_FLOW_RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's element; XDP runs with preemption disabled.
    let w = unsafe { &mut *w };
    w.count += 1;
    // The clock is read only every 64th new flow, past the limit, and for
    // the first window: a window ends at most 63 flows late, which the
    // limit never notices (past it, every flow reads the clock).
    if w.count <= limit && w.count % 64 != 0 && w.start != 0 {
        return true;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(w.start) >= 1_000_000_000 {
        w.start = now;
        w.count = 1;
    }
    if w.count <= limit {
        return true;
    }
    // Verifier: index 0 of a one-element per-CPU array always exists.
    if let Some(n) = UNRECORDED.get_ptr_mut(0) {
        // SAFETY: this CPU's element, as above.
        unsafe { *n += 1 };
    }
    false
}
