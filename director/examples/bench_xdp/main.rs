//! `cargo xtask bench xdp [--short]`: per-packet cost of the XDP program
//! with BPF_PROG_TEST_RUN, as ratios to a floor program (MAC swap +
//! XDP_TX) measured the same way in the same run, because this machine is
//! noisy.
//!
//! Every measured run gets a fresh frame: one BPF_PROG_TEST_RUN call with
//! repeat=1 per frame (the kernel copies the frame in for each call; repeat
//! mode would hand the program the frame it rewrote on the previous
//! repetition). Each call costs ~100 ns of overhead, which the floor shows
//! too: the figures that matter are the excess over the floor and the
//! ratio. The process is pinned to one CPU. Rounds of N calls per path
//! (floor first), best round per path, as the Katran anchor does
//! (`../shared/anchors/katran`, run when present: one round of it before
//! each of ours, the best of each of its figures kept).
//!
//! Every call's verdict and output frame are checked, and the program's own
//! counters prove each path: an established flow adds N packets and no new
//! flow, a new flow adds N new flows, a non-VIP frame adds nothing. The
//! live-frame rate (BPF_F_TEST_XDP_LIVE_FRAMES) is checked the same way.
//!
//! Then the flow table (5M entries; the Katran anchor gets the same size)
//! is filled to 1M and 4M established flows, as flow sync imports them
//! (how many found both their buckets full is reported): established
//! lookups drawn at random over the flows it holds (cache
//! misses, not one hot flow) and new flows into it are measured at each
//! population, the counters proving each lookup hit. The live-frame rate
//! is measured on one CPU and on all at once, beside the floor's, for an
//! established flow and for new flows (the `fresh_client` program gives
//! every frame a client address of its own, then tail-calls the director's
//! program on a dataplane of its own, or the floor), and the flow table's
//! kernel memory is read from its fdinfo.
//!
//! `--short`: a few hundred calls per path and every check, no figures (CI
//! proves the harness and the paths with it). For experiments:
//! `BENCH_XDP_TABLE=N` sets the flow table's entries, `BENCH_XDP_QUICK=1`
//! skips the filled-table rows.

mod filled;
mod katran;
mod measure;
mod setup;

use self::{filled::*, katran::*, measure::*, setup::*};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{EbpfLoader, maps::ProgramArray, programs::Xdp};
use director::{
    dataplane::{Traffic, xdp::XdpDataplane},
    net::frames::{self, ACK, DIRECTOR_MAC, SYN},
    net::neighbor::Mac,
};
use director_common::{MAP_BENCH_TARGETS, PROG_FLOOR, PROG_FRESH_CLIENT};

/// The harness's own XDP object (the floor, fresh clients), built by the
/// daemon's build script beside the director's program but embedded only
/// here: the daemon's object holds no benchmark program.
static BENCH_PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director-bench"));

/// One measured path.
struct Row {
    name: String,
    best: f64,
}

fn delta(after: Traffic, before: Traffic) -> (u64, u64) {
    (
        after.packets - before.packets,
        after.new_flows - before.new_flows,
    )
}

fn main() -> Result<()> {
    let short = std::env::args().any(|a| a == "--short");
    let (n, rounds, live) = if short {
        (300u32, 1u32, 20_000u32)
    } else {
        (20_000, 5, 2_000_000)
    };
    // The flow table's size (Katran's anchor gets the same), and the
    // populations the spread lookups are measured at.
    let (table, populations) = if short {
        (65_536u32, [10_000u32, 40_000])
    } else {
        (5_000_000, [1_000_000, 4_000_000])
    };
    let table = std::env::var("BENCH_XDP_TABLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(table);
    let cpus = allowed_cpus()?;
    let cpu = *cpus.last().context("no CPU")?;
    pin_to(cpu)?;

    let mut floor_obj = EbpfLoader::new()
        .load(BENCH_PROGRAM)
        .context("loading the benchmark object")?;
    let mut targets = ProgramArray::try_from(
        floor_obj
            .take_map(MAP_BENCH_TARGETS)
            .context("bench target array")?,
    )?;
    for name in [PROG_FLOOR, PROG_FRESH_CLIENT] {
        let p: &mut Xdp = floor_obj
            .program_mut(name)
            .with_context(|| format!("{name} program"))?
            .try_into()?;
        p.load()?;
    }
    let program = |name: &str| -> Result<&Xdp> {
        Ok(floor_obj
            .program(name)
            .with_context(|| format!("{name} program"))?
            .try_into()?)
    };
    let (floor, fresh) = (program(PROG_FLOOR)?, program(PROG_FRESH_CLIENT)?);

    // A third service for live frames: its real servers' MAC is the
    // director's, so the rewrite leaves the frame as it was (the kernel
    // recycles live-frame pages without copying the frame in again: a
    // frame rewritten for another MAC would be passed from then on).
    let mut live_service = service("10.0.0.200", &["10.0.0.30"]);
    live_service.backends[0].mac = Some(Mac(DIRECTOR_MAC));
    // Tunnel services (lb_kind = "tun"): the real servers in another
    // subnet, the MACs their next hop's.
    let tunnel = |vip: &str, servers: &[&str]| {
        let mut s = service(vip, servers);
        s.lb_kind = director::config::LbKind::Tun;
        s
    };
    let plan = vec![
        service("10.0.0.100", &["10.0.0.20", "10.0.0.21", "10.0.0.22"]),
        service("fd00::100", &["fd00::20", "fd00::21", "fd00::22"]),
        live_service,
        tunnel(
            "10.0.0.150",
            &["192.168.50.20", "192.168.50.21", "192.168.50.22"],
        ),
        tunnel("fd00::150", &["fd00:50::20", "fd00:50::21", "fd00:50::22"]),
    ];
    let mut dp = XdpDataplane::load_for_test_sized(table)?;
    // The SYN-flood guard on, as the daemon runs it by default (every new
    // flow counted in its CPU's rate window), with a limit never reached:
    // every new flow is recorded (checked at the end).
    dp.set_new_flow_limit(u32::MAX);
    dp.apply(&plan, 300, link())?;
    let prog = dp.program()?;

    // The established flows: one SYN places each, then ACKs follow.
    let est4 = frames::tcp_frame(ip("10.1.0.1"), 40000, ip("10.0.0.100"), 80, ACK);
    let est6 = frames::tcp_frame(ip("fd00::1:1"), 40000, ip("fd00::100"), 80, ACK);
    let tun4 = frames::tcp_frame(ip("10.1.0.1"), 40000, ip("10.0.0.150"), 80, ACK);
    let tun6 = frames::tcp_frame(ip("fd00::1:1"), 40000, ip("fd00::150"), 80, ACK);
    for (src, vip, expect) in [
        ("10.1.0.1", "10.0.0.100", Expect::Forwarded),
        ("fd00::1:1", "fd00::100", Expect::Forwarded),
        ("10.1.0.1", "10.0.0.150", Expect::Tunnelled(20)),
        ("fd00::1:1", "fd00::150", Expect::Tunnelled(40)),
    ] {
        let syn = frames::tcp_frame(ip(src), 40000, ip(vip), 80, SYN);
        loop_ns(prog, &[syn], expect)?;
    }
    let non_vip = frames::tcp_frame(ip("10.1.0.1"), 40000, ip("10.0.0.10"), 22, ACK);
    let copies = |f: &Vec<u8>| vec![f.clone(); n as usize];
    let (est4s, est6s, non_vips) = (copies(&est4), copies(&est6), copies(&non_vip));
    let (tun4s, tun6s) = (copies(&tun4), copies(&tun6));

    let traffic = |i: usize| dp.service_traffic(&plan[i]);
    let mut rows: Vec<Row> = [
        "floor: MAC swap + XDP_TX",
        "non-VIP frame (XDP_PASS)",
        "established TCP flow, IPv4",
        "established TCP flow, IPv6",
        "new TCP flow, IPv4 (Maglev + flow insert)",
        "new TCP flow, IPv6 (Maglev + flow insert)",
        "established TCP flow, IPv4 tunnel (IPIP)",
        "established TCP flow, IPv6 tunnel (IP6IP6)",
        "new TCP flow, IPv4 tunnel (IPIP)",
        "new TCP flow, IPv6 tunnel (IP6IP6)",
    ]
    .into_iter()
    .map(|name| Row {
        name: name.to_string(),
        best: f64::MAX,
    })
    .collect();
    // Katran's anchor runs one round after each of ours (best of each
    // figure kept), so a drift of the machine during the run weighs on
    // both sides alike.
    let mut katran_best: Option<(f64, f64, f64)> = None;
    let mut katran_error = None;
    for round in 0..rounds {
        if !short && katran_error.is_none() {
            match katran(n, 1, table) {
                Ok(Some((f, e, w))) => {
                    let (bf, be, bw) = katran_best.unwrap_or((f64::MAX, f64::MAX, f64::MAX));
                    katran_best = Some((bf.min(f), be.min(e), bw.min(w)));
                }
                Ok(None) => katran_error = Some(None),
                Err(e) => katran_error = Some(Some(e)),
            }
        }
        let mut record = |i: usize, ns: f64| rows[i].best = rows[i].best.min(ns);
        record(0, loop_ns(floor, &est4s, Expect::Swapped)?);

        let before = (traffic(0)?, traffic(1)?);
        record(1, loop_ns(prog, &non_vips, Expect::Untouched)?);
        let after = (traffic(0)?, traffic(1)?);
        ensure!(
            delta(after.0, before.0) == (0, 0) && delta(after.1, before.1) == (0, 0),
            "non-VIP frames were counted for a service"
        );

        for (row, frames, svc) in [(2, &est4s, 0), (3, &est6s, 1)] {
            let before = traffic(svc)?;
            record(row, loop_ns(prog, frames, Expect::Forwarded)?);
            let (packets, flows) = delta(traffic(svc)?, before);
            ensure!(
                packets == u64::from(n) && flows == 0,
                "{}: {packets} packets and {flows} new flows counted for {n} established-flow calls",
                rows[row].name
            );
        }

        for (row, frames, svc, outer) in [(6, &tun4s, 3, 20), (7, &tun6s, 4, 40)] {
            let before = traffic(svc)?;
            record(row, loop_ns(prog, frames, Expect::Tunnelled(outer))?);
            let (packets, flows) = delta(traffic(svc)?, before);
            ensure!(
                packets == u64::from(n) && flows == 0,
                "{}: {packets} packets and {flows} new flows counted for {n} established-flow calls",
                rows[row].name
            );
        }

        for (row, v6, svc, vip, expect) in [
            (4, false, 0, "10.0.0.100", Expect::Forwarded),
            (5, true, 1, "fd00::100", Expect::Forwarded),
            (8, false, 3, "10.0.0.150", Expect::Tunnelled(20)),
            (9, true, 4, "fd00::150", Expect::Tunnelled(40)),
        ] {
            let frames: Vec<Vec<u8>> = (0..n).map(|i| new_flow_to(v6, round, i, vip)).collect();
            let before = traffic(svc)?;
            record(row, loop_ns(prog, &frames, expect)?);
            let (packets, flows) = delta(traffic(svc)?, before);
            ensure!(
                packets == u64::from(n) && flows == u64::from(n),
                "{}: {flows} new flows counted for {n} new-flow calls",
                rows[row].name
            );
        }
    }

    // Live frames: an established IPv4 flow of the third service, on one
    // CPU and on all at once. Its counters must grow by exactly the frames
    // sent, with one new flow.
    let live_frame = frames::tcp_frame(ip("10.1.0.2"), 40000, ip("10.0.0.200"), 80, ACK);
    let before = traffic(2)?;
    let live_one = live_mpps(prog, &live_frame, live, &[cpu]);
    let live_all = live_mpps(prog, &live_frame, live, &cpus);
    let (packets, flows) = delta(traffic(2)?, before);
    let live_sent = u64::from(live) * (1 + cpus.len() as u64);
    let live_floor_one = live_mpps(floor, &live_frame, live, &[cpu]);
    let live_floor_all = live_mpps(floor, &live_frame, live, &cpus);
    // Live frames of new flows, half as many per CPU (the table of their
    // own dataplane ends 60% full in full mode).
    let live_new = live / 2;
    let new_live = live_new_flows(
        (fresh, &mut targets, floor),
        &plan,
        table,
        live_new,
        (cpu, &cpus),
    );

    // Established flows spread over a table filled to each population.
    let mut filled = 0;
    let mut recorded = Vec::new();
    let mut unrecorded = Vec::new();
    let quick = std::env::var_os("BENCH_XDP_QUICK").is_some();
    for target in populations.into_iter().filter(|_| !quick) {
        let before = recorded.len();
        recorded.extend(fill(&mut dp, &plan[0], (filled, target))?);
        unrecorded.push((
            target,
            (target - filled) as usize - (recorded.len() - before),
        ));
        filled = target;
        // New flows measured at the last population may have taken ways of
        // full buckets: draw from the flows the table holds now.
        let table = dp.flow_table();
        recorded.retain(|i| table.get(&filled_key(*i)).is_some());
        let frames = spread(n, &recorded, 0x9e37_79b9_7f4a_7c15 ^ u64::from(target));
        let prog = dp.program()?;
        let mut row = Row {
            name: format!("established TCP flow, IPv4, {filled} flows, spread"),
            best: f64::MAX,
        };
        for _ in 0..rounds {
            rows[0].best = rows[0].best.min(loop_ns(floor, &est4s, Expect::Swapped)?);
            let before = dp.service_traffic(&plan[0])?;
            row.best = row.best.min(loop_ns(prog, &frames, Expect::Forwarded)?);
            let (packets, flows) = delta(dp.service_traffic(&plan[0])?, before);
            ensure!(
                packets == u64::from(n) && flows == 0,
                "{}: {packets} packets and {flows} new flows counted for {n} established-flow calls (the filled flows were not found)",
                row.name
            );
        }
        rows.push(row);
        // New flows into the table at this population (each round's SYNs
        // are new 5-tuples: the table grows by n per round).
        let mut row = Row {
            name: format!("new TCP flow, IPv4, {filled} flows in the table"),
            best: f64::MAX,
        };
        for round in 0..rounds {
            let frames: Vec<Vec<u8>> = (0..n)
                .map(|i| new_flow_to(false, 40 + round + target % 97, i, "10.0.0.100"))
                .collect();
            let before = dp.service_traffic(&plan[0])?;
            row.best = row.best.min(loop_ns(prog, &frames, Expect::Forwarded)?);
            let (packets, flows) = delta(dp.service_traffic(&plan[0])?, before);
            ensure!(
                packets == u64::from(n) && flows == u64::from(n),
                "{}: {flows} new flows counted for {n} new-flow calls",
                row.name
            );
        }
        rows.push(row);
    }
    let memlock = flow_table_memlock(table);
    let past_limit = dp.unrecorded_flows()?;
    ensure!(
        past_limit == 0,
        "{past_limit} new flows past the guard's limit were not recorded"
    );

    // A live-frame path is "not available here" only when the machine
    // refuses live frames to any program: the floor (a MAC swap) too. Our
    // program failing where the floor runs is a failure of the path.
    let floor_refused = live_floor_one
        .as_ref()
        .err()
        .or(live_floor_all.as_ref().err())
        .map(|f| format!("{f:#}"));
    if short {
        for r in &rows {
            println!(
                "ok  {}: {} call(s) per round, verdicts, output frames and counters checked",
                r.name, n
            );
        }
        match (&live_one, &live_all) {
            (Ok(_), Ok(_)) => {
                ensure!(
                    packets == live_sent && flows == 1,
                    "live frames: {packets} packets counted for {live_sent} frames"
                );
                println!(
                    "ok  live frames: {live} frames on one CPU, then on each of {} CPUs at once, counters checked",
                    cpus.len()
                );
            }
            (Err(e), _) | (_, Err(e)) => match &floor_refused {
                Some(f) => println!(
                    "--  live frames not available here (the floor program is refused too: {f}): {e:#}"
                ),
                None => {
                    bail!("live frames: the director's program fails where the floor runs: {e:#}")
                }
            },
        }
        match &new_live {
            Ok(_) => println!(
                "ok  live frames of new flows: {live_new} SYNs of distinct clients on one CPU, then on each of {} CPUs at once, every one counted a new flow",
                cpus.len()
            ),
            Err(e) => match &floor_refused {
                Some(f) => println!(
                    "--  live frames of new flows not available here (the floor program is refused too: {f}): {e:#}"
                ),
                None => bail!(
                    "live frames of new flows: the director's program fails where the floor runs: {e:#}"
                ),
            },
        }
        ensure!(
            memlock.is_some(),
            "the flow table's memory was not found in /proc/self/fdinfo"
        );
        println!("bench xdp --short: every path proven (no figures in short mode)");
        return Ok(());
    }

    let floor_ns = rows[0].best;
    println!(
        "XDP per-packet cost (BPF_PROG_TEST_RUN, one call per fresh frame, CPU {cpu}, best of {rounds} rounds of {n} calls)"
    );
    println!(
        "  {:<44} {:>8} {:>18} {:>8}",
        "path", "ns/call", "excess over floor", "x floor"
    );
    for r in &rows {
        println!(
            "  {:<44} {:>8.1} {:>15.1} ns {:>7.2}x",
            r.name,
            r.best,
            r.best - floor_ns,
            r.best / floor_ns
        );
    }
    let live_floor_ok = floor_refused.is_none();
    match (live_one, live_all, live_floor_one, live_floor_all) {
        (Ok(p1), Ok(pa), Ok(f1), Ok(fa)) => {
            ensure!(
                packets == live_sent && flows == 1,
                "live frames: {packets} packets counted for {live_sent} frames"
            );
            println!(
                "live frames (BPF_F_TEST_XDP_LIVE_FRAMES, {live} frames per CPU, established IPv4, XDP_TX):"
            );
            println!(
                "  1 CPU:  director {p1:.2} Mpps, floor {f1:.2} Mpps ({:.2}x the floor's rate)",
                p1 / f1
            );
            println!(
                "  {} CPUs: director {pa:.2} Mpps, floor {fa:.2} Mpps ({:.2}x the floor's rate)",
                cpus.len(),
                pa / fa
            );
        }
        (Err(e), ..) | (_, Err(e), ..) if live_floor_ok => {
            bail!("live frames: the director's program fails where the floor runs: {e:#}")
        }
        (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
            println!("live frames: not available here ({e})")
        }
    }
    match new_live {
        Err(e) if live_floor_ok => {
            bail!(
                "live frames of new flows: the director's program fails where the floor runs: {e:#}"
            )
        }
        Ok([p1, pa, f1, fa]) => {
            println!(
                "live frames of new flows ({live_new} IPv4 SYNs per CPU, each from a client of its own, into an empty {table}-entry table; `fresh_client` sets the address and tail-calls the program, for the floor too):"
            );
            println!(
                "  1 CPU:  director {p1:.2} M new flows/s, floor {f1:.2} Mpps ({:.2}x the floor's rate)",
                p1 / f1
            );
            println!(
                "  {} CPUs: director {pa:.2} M new flows/s, floor {fa:.2} Mpps ({:.2}x the floor's rate)",
                cpus.len(),
                pa / fa
            );
        }
        Err(e) => println!("live frames of new flows: not available here ({e})"),
    }
    if let Some(bytes) = memlock {
        println!(
            "flow table: {table} entries, {:.1} MiB of kernel memory (memlock), {:.1} MiB per million entries; {} of the {filled} filled flows recorded",
            bytes as f64 / 1048576.0,
            bytes as f64 / 1048576.0 / (f64::from(table) / 1e6),
            recorded.len()
        );
    }
    for (target, missed) in &unrecorded {
        println!(
            "  filling to {target}: {missed} flows found both their buckets full ({:.4}% of the flows filled)",
            *missed as f64 * 100.0 / f64::from(*target)
        );
    }
    match (katran_best, katran_error) {
        (Some((kf, ke, kn)), None) => {
            let ours = |i: usize| rows[i].best - floor_ns;
            println!(
                "Katran anchor, same run (a round of it before each of ours, best of {rounds}): floor {kf:.1} ns, established {ke:.1} ns ({:.2}x), new flow {kn:.1} ns ({:.2}x)",
                ke / kf,
                kn / kf
            );
            println!(
                "  ours / Katran's excess over the floor: established IPv4 {:.2}, new flow IPv4 {:.2} (goal <= 0.5)",
                ours(2) / (ke - kf),
                ours(4) / (kn - kf)
            );
            println!(
                "  the same path as Katran's (IPIP), ours / Katran's excess: established {:.2}, new flow {:.2} (goal <= 0.5)",
                ours(6) / (ke - kf),
                ours(8) / (kn - kf)
            );
        }
        (_, Some(Some(e))) => println!("Katran anchor: {e:#}"),
        _ => println!("Katran anchor not found (../shared/anchors/katran): skipped"),
    }
    Ok(())
}
