//! Measuring a path: BPF_PROG_TEST_RUN one call per fresh frame (every verdict and output checked), the live-frame rate, and the CPUs the process is pinned to.

use std::time::Instant;

use anyhow::{Result, ensure};
use aya::{
    maps::{MapData, ProgramArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use director::{
    dataplane::{ServicePlan, xdp::XdpDataplane},
    net::frames::{self, DIRECTOR_MAC, SYN},
};

use super::*;

/// What a path's output frame must be.
#[derive(Clone, Copy)]
pub(crate) enum Expect {
    /// The floor: the input with the MACs swapped.
    Swapped,
    /// Forwarded: destination a configured real server, source the
    /// director, the rest untouched.
    Forwarded,
    /// Passed to the kernel untouched.
    Untouched,
    /// Wrapped in an outer header of `usize` bytes (20: IPv4 in IPv4, 40:
    /// IPv6 in IPv6) to a real server, sent to its next hop from the
    /// director, the client's packet untouched inside.
    Tunnelled(usize),
}

impl Expect {
    fn verdict(self) -> u32 {
        match self {
            Expect::Swapped | Expect::Forwarded | Expect::Tunnelled(_) => XDP_TX,
            Expect::Untouched => XDP_PASS,
        }
    }

    fn holds(self, input: &[u8], out: &[u8]) -> bool {
        if let Expect::Tunnelled(outer) = self {
            let protocol = if outer == 20 {
                out.get(14 + 9)
            } else {
                out.get(14 + 6)
            };
            return out.len() == input.len() + outer
                && out[6..12] == DIRECTOR_MAC
                && (0..3).any(|i| out[..6] == backend_mac(i))
                && out[12..14] == input[12..14]
                && protocol == Some(&if outer == 20 { 4 } else { 41 })
                && out[14 + outer..] == input[14..];
        }
        if out.len() != input.len() || out[12..] != input[12..] {
            return false;
        }
        match self {
            Expect::Swapped => out[..6] == input[6..12] && out[6..12] == input[..6],
            Expect::Forwarded => {
                out[6..12] == DIRECTOR_MAC && (0..3).any(|i| out[..6] == backend_mac(i))
            }
            Expect::Untouched => out[..12] == input[..12],
            Expect::Tunnelled(_) => false, // handled above
        }
    }
}

/// Mean ns per call over `frames`, one BPF_PROG_TEST_RUN call each, every
/// verdict and output checked.
pub(crate) fn loop_ns(program: &Xdp, frames: &[Vec<u8>], expect: Expect) -> Result<f64> {
    let mut total = 0u128;
    let mut out = vec![0u8; 256];
    for (i, frame) in frames.iter().enumerate() {
        out.resize(frame.len() + 64, 0);
        let r = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        ensure!(
            r.return_value == expect.verdict(),
            "call {i}: verdict {} not {}",
            r.return_value,
            expect.verdict()
        );
        ensure!(
            expect.holds(frame, &out[..r.data_size_out as usize]),
            "call {i}: the output frame is not what the path must produce"
        );
        total += r.duration.as_nanos();
    }
    Ok(total as f64 / frames.len() as f64)
}

/// Live-frame mode: the kernel builds real frames from `frame` and sends
/// the XDP_TX ones on (to lo, whose lack of XDP transmit drops them after
/// the program ran), `packets` on each of `cpus` at once (a thread pinned
/// to each); the rate is the wall clock's, all CPUs together.
pub(crate) fn live_mpps(program: &Xdp, frame: &[u8], packets: u32, cpus: &[usize]) -> Result<f64> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                s.spawn(move || -> Result<()> {
                    pin_to(cpu)?;
                    program.test_run(TestRunOptions {
                        data_in: Some(frame),
                        repeat: packets,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..Default::default()
                    })?;
                    Ok(())
                })
            })
            .collect();
        runs.into_iter().try_for_each(|r| {
            r.join()
                .map_err(|_| anyhow::anyhow!("a live-frame thread panicked"))?
        })
    })?;
    Ok(f64::from(packets) * cpus.len() as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Live-frame rates of new flows, on one CPU and on all of `cpus` at
/// once: the director's program (a dataplane of its own with `plan` and a
/// table of `table` entries, empty), then the floor, each as slot 0 of
/// `targets` behind `fresh`, which gives every frame a client address of
/// its own. The director's counters must count every frame a new flow, all
/// recorded. Returns the director's rates, then the floor's.
pub(crate) fn live_new_flows(
    (fresh, targets, floor): (&Xdp, &mut ProgramArray<MapData>, &Xdp),
    plan: &[ServicePlan],
    table: u32,
    frames: u32,
    (cpu, cpus): (usize, &[usize]),
) -> Result<[f64; 4]> {
    let mut dp = XdpDataplane::load_for_test_sized(table)?;
    dp.set_new_flow_limit(u32::MAX);
    dp.apply(plan, 300, link())?;
    let prog = dp.program()?;
    let syn = frames::tcp_frame(ip("10.9.0.1"), 40001, ip("10.0.0.200"), 80, SYN);
    targets.set(0, prog.fd()?, 0)?;
    let before = dp.service_traffic(&plan[2])?;
    let one = live_mpps(fresh, &syn, frames, &[cpu])?;
    let all = live_mpps(fresh, &syn, frames, cpus)?;
    let (packets, flows) = delta(dp.service_traffic(&plan[2])?, before);
    let sent = u64::from(frames) * (1 + cpus.len() as u64);
    ensure!(
        packets == sent && flows == sent,
        "live frames of new flows: {packets} packets and {flows} new flows counted for {sent} frames"
    );
    let unrecorded = dp.unrecorded_flows()?;
    ensure!(
        unrecorded == 0,
        "live frames of new flows: {unrecorded} not recorded"
    );
    targets.set(0, floor.fd()?, 0)?;
    let floor_one = live_mpps(fresh, &syn, frames, &[cpu])?;
    let floor_all = live_mpps(fresh, &syn, frames, cpus)?;
    Ok([one, all, floor_one, floor_all])
}

/// The CPUs this process may use.
pub(crate) fn allowed_cpus() -> Result<Vec<usize>> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|c| allowed.is_set(*c).unwrap_or(false))
        .collect();
    ensure!(!cpus.is_empty(), "no CPU allowed");
    Ok(cpus)
}

/// Pins this thread to `cpu`.
pub(crate) fn pin_to(cpu: usize) -> Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut one = CpuSet::new();
    one.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &one)?;
    Ok(())
}
