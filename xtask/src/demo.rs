//! `cargo xtask lab`: the product's main job on a built-in lab, with a
//! summary a newcomer can read.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{
    Lab, LabSpec, http,
    lab::{VIP, VIP6, director_ip},
    scenario,
};
use nix::sys::signal::Signal;

pub fn run(bin: &Path, requests: usize, keep: bool) -> Result<()> {
    // SAFETY: single-threaded at this point; read by the lab helpers.
    unsafe {
        std::env::set_var("DIRECTOR_BIN", bin);
        if keep {
            std::env::set_var("DIRECTOR_LAB_KEEP", "1");
        }
    }
    // Leftovers of runs that were killed (Ctrl-C) go first.
    director_tests::lab::clean(false)?;

    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let d = &lab.directors[0];
    println!();
    println!("== lab {} ==", lab.id);
    println!("  client      {} / {}", lab.client.ip, lab.client.ip6());
    println!(
        "  director1   {} / {}  (holds the VIPs {VIP} and {VIP6}, runs XDP on eth0)",
        d.ip,
        d.ip6()
    );
    for rs in &lab.real_servers {
        println!(
            "  {:<11} {} / {}  (VIPs on lo, arp_ignore=1, nginx answers \"{}\")",
            rs.name,
            rs.ip,
            rs.ip6(),
            rs.name
        );
    }

    let state = lab.state_dir("director1")?;
    let mut config_text = scenario::global_config(&lab, "director1")?;
    for v6 in [false, true] {
        let servers: Vec<String> = lab
            .real_servers
            .iter()
            .map(|r| r.addr(v6).to_string())
            .collect();
        let vip = if v6 {
            VIP6.to_string()
        } else {
            VIP.to_string()
        };
        config_text.push_str(&scenario::virtual_server(&vip, 80, &servers, &[]));
    }
    let config = lab.write("director.toml", &config_text)?;
    println!("\n== config ({}) ==\n{config_text}", config.display());

    let mut daemon = scenario::spawn_director(&lab, 0, &config)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;

    let mut tallies = Vec::new();
    for vip in [SocketAddr::from((VIP, 80)), SocketAddr::from((VIP6, 80))] {
        println!("== client: {requests} HTTP requests to {vip}, one TCP connection each ==");
        let tally = lab
            .client
            .run(move || http::hammer(vip, requests, Duration::from_secs(3)))?;
        tallies.push((vip, tally));
    }
    let ping_ok = lab
        .client
        .ns
        .exec("ping", &["-c", "1", "-W", "2", &director_ip(0).to_string()])
        .is_ok();

    let status = std::process::Command::new(bin)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()?;
    println!(
        "\n== director status ==\n{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // Restart the daemon while the client keeps sending requests: the
    // pinned dataplane forwards on its own, the new daemon adopts it.
    println!("== restarting the daemon under load ==");
    let vip4 = SocketAddr::from((VIP, 80));
    let ((), restart_load) = http::under_load(&lab.client.ns, vip4, || {
        daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
        std::thread::sleep(Duration::from_millis(300));
        daemon = scenario::spawn_director(&lab, 0, &config)?;
        scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
        Ok(())
    })?;

    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    let log = daemon.log();
    let still_attached = d.xdp_attached()?;
    std::process::Command::new(bin)
        .args(["flush", "--state-dir"])
        .arg(&state)
        .output()?;
    let after_flush = d.xdp_attached()?;

    println!("\n== director log (second run) ==");
    for line in log.lines().filter(|l| {
        [
            "XDP program",
            "adopted",
            "MAC resolved",
            "forwarding",
            "first packet",
            "forwarded in total",
            "pinned",
            "stopped",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        println!(
            "  {}",
            line.split_once("Z ").map(|x| x.1).unwrap_or(line).trim()
        );
    }

    println!("\n== summary ==");
    let mut ok = true;
    for (vip, tally) in &tallies {
        println!(
            "  {vip:<18} {}/{} requests answered ({} failed)",
            tally.ok, requests, tally.failed
        );
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for rs in &lab.real_servers {
            by.insert(&rs.name, tally.by_body.get(&rs.name).copied().unwrap_or(0));
        }
        println!(
            "      spread over the real servers: {}",
            by.iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        ok &= tally.failed == 0 && by.values().all(|n| *n > 0);
    }
    println!(
        "  daemon restart under load      {} requests during the restart, {} failed",
        restart_load.ok + restart_load.failed,
        restart_load.failed
    );
    println!(
        "  director's own traffic         ping {}: {}",
        director_ip(0),
        if ping_ok {
            "answered (not forwarded)"
        } else {
            "FAILED"
        }
    );
    println!(
        "  daemon stopped                 XDP program {}",
        if still_attached {
            "still forwarding (pinned)"
        } else {
            "GONE"
        }
    );
    println!(
        "  director flush                 XDP program {}",
        if after_flush {
            "STILL ATTACHED"
        } else {
            "removed, nothing left in the kernel"
        }
    );
    if keep {
        println!("  configs and logs kept in {}", lab.dir.display());
    }
    ensure!(ok, "some requests failed or a real server got none");
    ensure!(
        restart_load.failed == 0,
        "requests failed during the restart"
    );
    ensure!(ping_ok, "the director's own address did not answer ping");
    ensure!(still_attached, "the dataplane stopped with the daemon");
    ensure!(!after_flush, "flush left the XDP program attached");
    println!(
        "\nOK: the director load-balanced both VIPs over three real servers in DR mode, survived a restart without losing a request, and left nothing behind after the flush."
    );
    Ok(())
}
