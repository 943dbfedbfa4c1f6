//! `cargo xtask bench xdp`: per-packet cost of the XDP program with
//! BPF_PROG_TEST_RUN, as ratios to a floor program (MAC swap + XDP_TX)
//! measured in the same run, because this machine is noisy.
//!
//! Repeat mode (the kernel runs one frame N times) fits paths that do not
//! change state: a non-VIP frame, an established flow. A new flow inserts
//! into the flow table, so from the second run on it would be established:
//! new flows are timed as a loop of single runs, each a different flow, and
//! the floor is timed the same way; the extra cost over the floor is then
//! added to the floor's repeat-mode figure. Counters prove every run took
//! the intended path.

use std::{net::IpAddr, time::Instant};

use anyhow::{Context as _, Result, ensure};
use aya::{
    EbpfLoader,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use director::{
    config::{Protocol, Scheduler},
    dataplane::{BackendPlan, ServicePlan, xdp::PROGRAM, xdp::XdpDataplane},
    frames::{self, ACK, DIRECTOR_MAC, SYN},
    neighbor::Mac,
};
use director_common::PROG_FLOOR;

const REPEAT: u32 = 1_000_000;
const SINGLE_RUNS: u32 = 100_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn service(vip: &str, servers: &[&str]) -> ServicePlan {
    ServicePlan {
        address: ip(vip),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler: Scheduler::Mh,
        persistence_timeout: 0,
        backends: servers
            .iter()
            .enumerate()
            .map(|(i, a)| BackendPlan {
                address: ip(a),
                weight: 1,
                mac: Some(Mac([2, 0, 0, 0, 1, i as u8])),
            })
            .collect(),
    }
}

/// Mean ns per run in repeat mode (best of 3, to shed noise).
fn repeat_ns(program: &Xdp, frame: &[u8], expect: u32) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut out = vec![0u8; frame.len() + 64];
        let r = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: REPEAT,
            ..Default::default()
        })?;
        ensure!(
            r.return_value == expect,
            "verdict {} not {expect}",
            r.return_value
        );
        best = best.min(r.duration.as_nanos() as f64);
    }
    Ok(best)
}

/// Mean ns per run over single runs, each on the frame `make(i)` gives.
fn single_ns(program: &Xdp, make: impl Fn(u32) -> Vec<u8>, expect: u32) -> Result<f64> {
    let mut total = 0u128;
    for i in 0..SINGLE_RUNS {
        let frame = make(i);
        let mut out = vec![0u8; frame.len() + 64];
        let r = program.test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        ensure!(
            r.return_value == expect,
            "verdict {} not {expect}",
            r.return_value
        );
        total += r.duration.as_nanos();
    }
    Ok(total as f64 / f64::from(SINGLE_RUNS))
}

/// Live-frame mode: the kernel builds real frames and really transmits
/// XDP_TX ones; the rate is measured on the wall clock.
fn live_mpps(program: &Xdp, frame: &[u8]) -> Result<f64> {
    let packets = 5_000_000u32;
    let started = Instant::now();
    program.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat: packets,
        attrs: TestRunAttrs::new().xdp_live_frames(64),
        ..Default::default()
    })?;
    Ok(f64::from(packets) / started.elapsed().as_secs_f64() / 1e6)
}

/// A new client flow per run: source address and port vary.
fn new_flow(i: u32) -> Vec<u8> {
    let src = IpAddr::from([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    frames::tcp_frame(src, 1024 + (i % 60000) as u16, ip("10.0.0.100"), 80, SYN)
}

fn main() -> Result<()> {
    let mut floor_obj = EbpfLoader::new()
        .load(PROGRAM)
        .context("loading the object")?;
    let floor: &mut Xdp = floor_obj
        .program_mut(PROG_FLOOR)
        .context("floor program")?
        .try_into()?;
    floor.load()?;
    let floor: &Xdp = floor;

    let plan = vec![
        service("10.0.0.100", &["10.0.0.20", "10.0.0.21", "10.0.0.22"]),
        service("fd00::100", &["fd00::20", "fd00::21", "fd00::22"]),
    ];
    let mut dp = XdpDataplane::load_for_test()?;
    dp.apply(&plan, 300, Mac(DIRECTOR_MAC))?;
    let prog = dp.program()?;

    const PASS: u32 = 2;
    const TX: u32 = 3;
    let est4 = frames::tcp_frame(ip("10.1.0.1"), 40000, ip("10.0.0.100"), 80, ACK);
    let est6 = frames::tcp_frame(ip("fd00::1:1"), 40000, ip("fd00::100"), 80, ACK);
    let non_vip = frames::tcp_frame(ip("10.1.0.1"), 40000, ip("10.0.0.10"), 22, ACK);

    let floor_rep = repeat_ns(floor, &est4, TX)?;
    let non_vip_rep = repeat_ns(prog, &non_vip, PASS)?;
    let est4_rep = repeat_ns(prog, &est4, TX)?;
    let est6_rep = repeat_ns(prog, &est6, TX)?;
    let before = dp.service_traffic(&plan[0])?;
    ensure!(
        before.new_flows == 1,
        "established-flow runs were not flow-table hits ({} new flows)",
        before.new_flows
    );
    let floor_single = single_ns(floor, new_flow, TX)?;
    let new_single = single_ns(prog, new_flow, TX)?;
    let after = dp.service_traffic(&plan[0])?;
    ensure!(
        after.new_flows - before.new_flows == u64::from(SINGLE_RUNS),
        "only {} of {SINGLE_RUNS} new-flow runs placed a new flow",
        after.new_flows - before.new_flows
    );
    let new_cost = floor_rep + (new_single - floor_single);

    println!("XDP per-packet cost (BPF_PROG_TEST_RUN), ratio to the floor measured in this run");
    println!(
        "  {:<44} {:>8.1} ns",
        "floor: MAC swap + XDP_TX (repeat)", floor_rep
    );
    let row = |name: &str, ns: f64, target: Option<f64>| {
        let ratio = ns / floor_rep;
        let verdict = match target {
            Some(t) if ratio <= t => format!("  (target <= {t}: met)"),
            Some(t) => format!("  (target <= {t}: MISSED)"),
            None => String::new(),
        };
        println!("  {name:<44} {ns:>8.1} ns  {ratio:>5.2}x floor{verdict}");
    };
    row("non-VIP packet (XDP_PASS)", non_vip_rep, None);
    row(
        "established TCP flow, IPv4 (flow-table hit)",
        est4_rep,
        Some(1.5),
    );
    row(
        "established TCP flow, IPv6 (flow-table hit)",
        est6_rep,
        None,
    );
    row(
        "new TCP flow (Maglev + flow insert) [*]",
        new_cost,
        Some(2.5),
    );
    println!(
        "  [*] single-run loop of {SINGLE_RUNS} distinct flows: {new_single:.1} ns vs floor {floor_single:.1} ns the same way; extra cost added to the floor's repeat figure"
    );
    println!(
        "  counters: {} new flows placed, {} packets forwarded",
        after.new_flows, after.packets
    );
    match (live_mpps(floor, &est4), live_mpps(prog, &est4)) {
        (Ok(f), Ok(p)) => println!(
            "live frames (BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX on lo): director {p:.2} Mpps, floor {f:.2} Mpps ({:.2}x)",
            p / f
        ),
        (Err(e), _) | (_, Err(e)) => println!("live frames: not available here ({e})"),
    }
    Ok(())
}
