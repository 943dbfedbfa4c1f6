//! `cargo xtask lab`: the product's main job on a built-in lab, with a
//! summary a newcomer can read.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{
    Lab, LabSpec, http,
    lab::{VIP, director_ip},
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

    let lab = Lab::build(&LabSpec::default())?;
    let d = &lab.directors[0];
    println!();
    println!("== lab {} ==", lab.id);
    println!("  client      {}", lab.client.ip);
    println!(
        "  director1   {}  (holds the VIP {VIP}, runs XDP on eth0)",
        d.ip
    );
    for rs in &lab.real_servers {
        println!(
            "  {:<11} {}  (VIP on lo, arp_ignore=1, nginx answers \"{}\")",
            rs.name, rs.ip, rs.name
        );
    }

    let real_servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let config_text = scenario::http_config(&lab, "director1", &real_servers)?;
    let config = lab.write("director.toml", &config_text)?;
    println!("\n== config ({}) ==\n{config_text}", config.display());

    let mut daemon = scenario::spawn_director(&lab, 0, &config)?;
    scenario::wait_forwarding(&mut daemon, real_servers.len())?;
    let mode = if daemon.log().contains("mode=\"native\"") {
        "native"
    } else {
        "generic"
    };

    let vip = SocketAddr::from((VIP, 80));
    println!("== client: {requests} HTTP requests to {vip}, one TCP connection each ==");
    let tally = lab
        .client
        .run(move || http::hammer(vip, requests, Duration::from_secs(3)))?;
    let ping_ok = lab
        .client
        .ns
        .exec("ping", &["-c", "1", "-W", "2", &director_ip(0).to_string()])
        .is_ok();

    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    let log = daemon.log();
    let xdp_left = d.xdp_attached()?;

    println!("\n== director log ==");
    for line in log.lines().filter(|l| {
        [
            "XDP program",
            "MAC resolved",
            "forwarding",
            "first packet",
            "forwarded in total",
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
    println!(
        "  requests answered      {}/{} ({} failed)",
        tally.ok, requests, tally.failed
    );
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for rs in &lab.real_servers {
        by.insert(&rs.name, tally.by_body.get(&rs.name).copied().unwrap_or(0));
    }
    for (name, n) in &by {
        println!("    answered by {name:<8}   {n}");
    }
    let packets = scenario::forwarded_packets(&log).unwrap_or(0);
    println!("  packets forwarded by XDP (MAC rewrite + XDP_TX): {packets}  [{mode} mode]");
    println!(
        "  director's own traffic  ping {}: {}",
        director_ip(0),
        if ping_ok {
            "answered (not forwarded)"
        } else {
            "FAILED"
        }
    );
    println!(
        "  after SIGTERM           XDP program {}",
        if xdp_left {
            "STILL ATTACHED"
        } else {
            "detached, nothing left in the kernel"
        }
    );
    if keep {
        println!("  configs and logs kept in {}", lab.dir.display());
    }
    ensure!(
        tally.failed == 0,
        "some requests failed: {:?}",
        tally.errors
    );
    ensure!(by.values().all(|n| *n > 0), "a real server got no requests");
    ensure!(ping_ok, "the director's own address did not answer ping");
    ensure!(!xdp_left, "the XDP program was left attached");
    println!("\nOK: the director load-balanced the VIP across the real servers in DR mode.");
    Ok(())
}
