//! `cargo xtask bench ha`: streaming downloads open through the VIP when
//! the master dies, for director pairs (stable backends; a drained real
//! server with and without flow sync) and a keepalived pair beside the same
//! XDP dataplane. Shares the failover bench's pairs (`bench`).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::bench::*;

/// One HA scenario's outcome.
struct HaRun {
    survived: usize,
    total: usize,
    stalls: Vec<Duration>,
}

/// `cargo xtask bench ha`: 50 streaming downloads open through the VIP when
/// the master dies (kill -9 + link down), VRRP v3 at 100 ms; with stable
/// backends and with a real server drained before the failure (its flows
/// are then exceptions to the Maglev tables), for director pairs with and
/// without flow sync and for a keepalived pair beside the same XDP
/// dataplane (no connection sync: the "keepalived without IPVS sync"
/// baseline).
pub fn run_ha(short: bool) -> Result<()> {
    if short {
        // The claim (a drained server's downloads survive with flow sync)
        // and the keepalived baseline's harness, with 10 short downloads.
        let r = ha_once(Kind::Director, true, true, 10, 1 << 20)?;
        ensure!(
            r.survived == r.total,
            "flow sync: {} of {} downloads survived",
            r.survived,
            r.total
        );
        println!("ok  ha: director pair, rs3 drained, flow sync: every download survived");
        // The baseline's harness, proven: its downloads ran through the
        // keepalived pair's failover, and each that survived was timed (its
        // figure is the full mode's, not a pass mark: a lost download there
        // is what the baseline measures).
        let r = ha_once(Kind::Keepalived, false, false, 10, 1 << 20)?;
        ensure!(
            r.total == 10 && r.survived > 0 && r.stalls.len() == r.survived,
            "keepalived baseline: {} of {} downloads survived, {} timed",
            r.survived,
            r.total,
            r.stalls.len()
        );
        println!("ok  ha: keepalived pair + XDP measured (no figures in short mode)");
        return Ok(());
    }
    println!(
        "ha: 50 streaming downloads (4 MiB at 512 KiB/s each) open when the master dies (kill -9 + link down), VRRP v3 100 ms"
    );
    println!(
        "  {:<46} {:>14} {:>12} {:>12}",
        "setup", "survived", "stall p50", "stall max"
    );
    let cases: [(&str, Kind, bool, bool); 5] = [
        (
            "director pair, stable backends",
            Kind::Director,
            false,
            false,
        ),
        (
            "director pair, rs3 drained, flow sync",
            Kind::Director,
            true,
            true,
        ),
        (
            "director pair, rs3 drained, no flow sync",
            Kind::Director,
            true,
            false,
        ),
        (
            "keepalived pair + XDP, stable backends",
            Kind::Keepalived,
            false,
            false,
        ),
        (
            "keepalived pair + XDP, rs3 drained",
            Kind::Keepalived,
            true,
            false,
        ),
    ];
    for (label, kind, drain, sync) in cases {
        let r = ha_once(kind, drain, sync, 50, 4 << 20)?;
        let mut stalls = r.stalls.clone();
        stalls.sort();
        let pick = |q: f64| {
            stalls
                .get(((stalls.len().saturating_sub(1)) as f64 * q) as usize)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "  {:<46} {:>5}/{} {:>4.0}% {:>9.0} ms {:>9.0} ms",
            label,
            r.survived,
            r.total,
            100.0 * r.survived as f64 / r.total as f64,
            pick(0.5),
            pick(1.0)
        );
    }
    println!(
        "  (stall: the longest wait between two reads of a surviving download, i.e. the outage its client saw)"
    );
    Ok(())
}

fn ha_once(kind: Kind, drain: bool, sync: bool, n: usize, size: usize) -> Result<HaRun> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let mut pair = start_pair_with(&lab, &SETTINGS[1], kind, sync)?;
    wait_master_serving(&lab, kind, &mut pair)?;
    let s2 = lab.state_dir("director2")?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    lab.write_big_file(size)?;
    let vip = SocketAddr::from((VIP, 80));
    let downloads = http::Downloads::start(&lab.client.ns, vip, n, size);
    std::thread::sleep(Duration::from_secs(1));
    if drain {
        for name in ["director1", "director2"] {
            scenario::drain_real_server("10.0.0.22", &lab.state_dir(name)?)?;
        }
        // A few sync rounds.
        std::thread::sleep(Duration::from_millis(1500));
    }
    for pid in &pair.master_pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    lab.directors[0].ns.ip(&["link", "set", "eth0", "down"])?;
    let mut survived = 0;
    let mut stalls = Vec::new();
    for r in downloads.outcomes().into_iter().flatten() {
        survived += 1;
        stalls.push(r.max_stall);
    }
    drop(pair);
    Ok(HaRun {
        survived,
        total: n,
        stalls,
    })
}
