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
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let d = &lab.directors[0];
    println!();
    println!("== lab {} ==", lab.id);
    println!("  client      {} / {}", lab.client.ip, lab.client.ip6());
    for (i, dir) in lab.directors.iter().enumerate() {
        println!(
            "  {:<11} {} / {}  (VRRP priority {}, XDP on eth0)",
            dir.name,
            dir.ip,
            dir.ip6(),
            if i == 0 { 150 } else { 100 }
        );
    }
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
    let state2 = lab.state_dir("director2")?;
    let config_for = |name: &str, priority: u8| -> Result<String> {
        let mut c = scenario::global_config(&lab, name)?;
        if name == "director1" {
            c.push_str("metrics_address = \"10.0.0.10:9100\"\n");
        }
        for (v6, vrid) in [(false, 51), (true, 61)] {
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
            c.push_str(&format!(
                "\n[[vrrp_instance]]\nname = \"VI_{vrid}\"\nvirtual_router_id = {vrid}\npriority = {priority}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{vip}\"]\n"
            ));
            c.push_str(&format!(
                "\n[[virtual_server]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\ndelay_loop = 0.3\n"
            ));
            for rs in &servers {
                c.push_str(&format!(
                    "\n  [[virtual_server.real_server]]\n  address = \"{rs}\"\n"
                ));
                // Health checks on the IPv4 service.
                if !v6 {
                    c.push_str("  [virtual_server.real_server.http_get]\n  connect_timeout = 0.5\n  retry = 0\n  url = [{ path = \"/\", status_code = 200 }]\n");
                }
            }
        }
        Ok(c)
    };
    let config_text = config_for("director1", 150)?;
    let config = lab.write("director1.toml", &config_text)?;
    let config2 = lab.write("director2.toml", &config_for("director2", 100)?)?;
    println!(
        "\n== config of director1 ({}) ==\n{config_text}",
        config.display()
    );

    let mut daemon = scenario::spawn_director(&lab, 0, &config)?;
    let mut daemon2 = scenario::spawn_director(&lab, 1, &config2)?;
    for vi in ["VI_51", "VI_61"] {
        scenario::wait_vrrp_state(&state, vi, "master", Duration::from_secs(15))?;
        scenario::wait_vrrp_state(&state2, vi, "backup", Duration::from_secs(15))?;
    }
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    scenario::wait_status(&state2, Duration::from_secs(20), scenario::all_resolved)?;

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
    let vrrp_table = std::process::Command::new(bin)
        .args(["status", "--state-dir"])
        .arg(&state2)
        .output()?;

    let status = std::process::Command::new(bin)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()?;
    println!(
        "\n== director1 status ==\n{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let table = String::from_utf8_lossy(&vrrp_table.stdout);
    println!(
        "== director2 status (VRRP part) ==\n{}",
        table.split("\n\n").next().unwrap_or("")
    );

    // The operator's tools: doctor checks every real server's DR setup
    // from director1; explain says where an open connection goes and why.
    let doctor = std::process::Command::new("ip")
        .args(["netns", "exec", d.ns.name()])
        .arg(bin)
        .args(["doctor", "--config"])
        .arg(&config)
        .output()?;
    println!(
        "== director doctor (director1) ==\n{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
    let vip4 = SocketAddr::from((VIP, 80));
    let (held, held_port, held_by) = lab.client.run(move || -> Result<_> {
        let mut c = http::KeepAlive::connect(vip4, Duration::from_secs(2))?;
        let by = c.get("/")?.body.trim().to_string();
        let port = c.local_port()?;
        Ok((c, port, by))
    })??;
    let explain = std::process::Command::new(bin)
        .args([
            "explain",
            &format!("{}:{held_port}", lab.client.ip),
            &format!("{VIP}:80"),
            "--state-dir",
        ])
        .arg(&state)
        .output()?;
    let explained = String::from_utf8_lossy(&explain.stdout).into_owned();
    println!(
        "== director explain: the client's open connection (answered by {held_by}) ==\n{explained}"
    );
    let held_ip = lab
        .real_servers
        .iter()
        .find(|r| r.name == held_by)
        .map(|r| r.ip.to_string())
        .unwrap_or_default();
    let explain_ok = explain.status.success()
        && explained
            .lines()
            .next()
            .is_some_and(|l| l.contains(&held_ip) && l.contains("(flow table)"));
    drop(held);

    // Restart the backup's daemon while the client keeps sending requests:
    // its pinned dataplane forwards on its own, the new daemon adopts it.
    println!("== restarting director2's daemon under load ==");
    let ((), restart_load) = http::under_load(&lab.client.ns, vip4, || {
        daemon2.stop(Signal::SIGTERM, Duration::from_secs(5))?;
        std::thread::sleep(Duration::from_millis(300));
        daemon2 = scenario::spawn_director(&lab, 1, &config2)?;
        scenario::wait_status(&state2, Duration::from_secs(20), scenario::all_resolved)?;
        Ok(())
    })?;

    // The master dies (its daemon is killed and its link goes down): the
    // backup takes both VIPs; the client's requests resume.
    println!("== director1 dies (kill -9 + link down) under load ==");
    let (takeover, failover_load) = http::under_load(&lab.client.ns, vip4, || {
        let started = std::time::Instant::now();
        daemon.stop(Signal::SIGKILL, Duration::from_secs(5))?;
        d.ns.ip(&["link", "set", "eth0", "down"])?;
        for vi in ["VI_51", "VI_61"] {
            scenario::wait_vrrp_state(&state2, vi, "master", Duration::from_secs(5))?;
        }
        Ok(started.elapsed())
    })?;
    let after_failover = tallies_ok(&lab)?;

    // It comes back with a higher priority and preempts.
    println!("== director1 comes back ==");
    d.ns.ip(&["link", "set", "eth0", "up"])?;
    daemon = scenario::spawn_director(&lab, 0, &config)?;
    for vi in ["VI_51", "VI_61"] {
        scenario::wait_vrrp_state(&state, vi, "master", Duration::from_secs(15))?;
        scenario::wait_vrrp_state(&state2, vi, "backup", Duration::from_secs(15))?;
    }
    let after_preempt = tallies_ok(&lab)?;

    // Health checks: rs3's web server dies; director1 notices and stops
    // sending it traffic; it comes back and returns to the pool.
    println!("== rs3's nginx dies, then comes back ==");
    let rs3 = &lab.real_servers[2];
    rs3.ns.kill_all();
    let unhealthy =
        |s: &serde_json::Value| s["virtual_servers"][0]["real_servers"][2]["healthy"] == false;
    let detected = scenario::wait_status(&state, Duration::from_secs(5), unhealthy).is_ok();
    let during = lab
        .client
        .run(move || http::hammer(vip4, 60, Duration::from_secs(2)))?;
    let base = lab.dir.join("rs3");
    let conf = base.join("nginx.conf").to_string_lossy().to_string();
    let err_log = base.join("error.log").to_string_lossy().to_string();
    let _nginx = rs3.ns.spawn(
        "nginx",
        &["-e", &err_log, "-c", &conf, "-g", "daemon off;"],
        &base.join("nginx2.out"),
    )?;
    let recovered = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][0]["real_servers"][2]["healthy"] == true
    })
    .is_ok();
    let after = lab
        .client
        .run(move || http::hammer(vip4, 60, Duration::from_secs(2)))?;

    // Metrics, as Prometheus would scrape them.
    let metrics_addr = SocketAddr::from(([10, 0, 0, 10], 9100));
    let metrics = lab
        .client
        .run(move || http::get(metrics_addr, "/metrics", Duration::from_secs(2)))?
        .map(|r| r.body)
        .unwrap_or_default();
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("director_"))
        .collect();

    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    daemon2.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    let log = daemon.log();
    let still_attached = d.xdp_attached()?;
    for st in [&state, &state2] {
        std::process::Command::new(bin)
            .args(["flush", "--state-dir"])
            .arg(st)
            .output()?;
    }
    let after_flush = d.xdp_attached()? || lab.directors[1].xdp_attached()?;

    println!("\n== director1 log (after it came back) ==");
    for line in log.lines().filter(|l| {
        [
            "XDP program",
            "adopted",
            "VRRP state change",
            "forwarding",
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
        "  director doctor                {}",
        if doctor.status.success() {
            "every real server answers the VIP on its MAC and none answers ARP for it"
        } else {
            "PROBLEMS FOUND (see above)"
        }
    );
    println!(
        "  director explain               {}:{held_port} -> {held_by} ({})",
        lab.client.ip,
        if explain_ok {
            "flow table: the server that answered the connection"
        } else {
            "WRONG OR MISSING ANSWER"
        }
    );
    println!(
        "  daemon restart under load      {} requests during director2's restart, {} failed",
        restart_load.ok + restart_load.failed,
        restart_load.failed
    );
    println!(
        "  master died                    director2 held both VIPs {:.0} ms after the kill (VRRP v3, 100 ms adverts; status polled); {} of {} requests failed meanwhile (TCP retried); afterwards {}",
        takeover.as_secs_f64() * 1000.0,
        failover_load.failed,
        failover_load.ok + failover_load.failed,
        if after_failover {
            "all requests answered"
        } else {
            "REQUESTS FAILING"
        }
    );
    println!(
        "  master came back               it preempted (priority 150 > 100); afterwards {}",
        if after_preempt {
            "all requests answered"
        } else {
            "REQUESTS FAILING"
        }
    );
    println!(
        "  health check                   rs3 {} as failed; meanwhile {}/{} requests answered, {} by rs3; after its return rs3 answered {} of {}",
        if detected { "detected" } else { "NOT detected" },
        during.ok,
        during.ok + during.failed,
        during.by_body.get("rs3").copied().unwrap_or(0),
        after.by_body.get("rs3").copied().unwrap_or(0),
        after.ok + after.failed
    );
    println!(
        "  metrics                        {} samples at http://10.0.0.10:9100/metrics, e.g.",
        samples.len()
    );
    for l in samples
        .iter()
        .filter(|l| {
            l.starts_with("director_vrrp_state") && l.ends_with(" 1.0")
                || l.starts_with("director_real_server_healthy")
        })
        .take(4)
    {
        println!("                                   {l}");
    }
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
    ensure!(
        after_failover && after_preempt,
        "requests failed after a failover"
    );
    ensure!(
        detected && recovered,
        "the health check did not see rs3 fail and return"
    );
    ensure!(
        during.failed == 0 && !during.by_body.contains_key("rs3"),
        "traffic reached a failed server"
    );
    ensure!(!samples.is_empty(), "no metrics");
    ensure!(
        doctor.status.success(),
        "director doctor found problems in the lab"
    );
    ensure!(
        explain_ok,
        "director explain did not name the connection's server"
    );
    ensure!(takeover < Duration::from_secs(2), "the takeover was slow");
    ensure!(still_attached, "the dataplane stopped with the daemon");
    ensure!(!after_flush, "flush left the XDP program attached");
    println!(
        "\nOK: two directors shared the VIPs with VRRP and load-balanced them over three real servers in DR mode; a daemon restart lost no request, the backup took over when the master died, the master preempted on its return, a failed real server left the pool and came back, doctor found the real servers well set up, explain named an open connection's server, metrics were served, and the flush left nothing behind."
    );
    drop(lab);
    active_active()
}

/// Part two: three active directors behind a BIRD router (BGP, ECMP).
fn active_active() -> Result<()> {
    use director_tests::ecmp::{EcmpLab, EcmpOptions};
    println!(
        "\n== active-active: three directors announce the VIP over BGP (BIRD, with BFD) to a router with ECMP =="
    );
    let mut e = EcmpLab::start_with(
        3,
        2,
        &EcmpOptions {
            bfd: true,
            ..Default::default()
        },
    )?;
    println!(
        "  router next hops for {VIP}: {}",
        e.next_hops()?.join(", ")
    );
    let vip = SocketAddr::from((VIP, 80));
    let t = e
        .far
        .run(move || http::hammer(vip, 90, Duration::from_secs(3)))?;
    let mut shares = Vec::new();
    for d in &e.lab.directors {
        let s = scenario::status(&e.lab.state_dir(&d.name)?)?;
        shares.push(format!(
            "{} {}",
            d.name,
            s["virtual_servers"][0]["new_flows"].as_u64().unwrap_or(0)
        ));
    }
    println!(
        "  90 requests from behind the router: {} ok, {} failed; new flows per director: {}",
        t.ok,
        t.failed,
        shares.join(", ")
    );
    let (opened, kept) = e.kill_last_with_open_connections(20)?;
    println!(
        "  director3 dies: the router withdraws it (BFD notices in tens of milliseconds); {kept} of {opened} open connections continue on the same real server through the other two"
    );
    ensure!(t.failed == 0, "requests failed through the ECMP router");
    ensure!(
        kept == opened && opened > 0,
        "connections were lost when a director died"
    );
    println!(
        "OK: the same Maglev tables on every director: any director can carry any flow, so losing one loses no connection."
    );
    Ok(())
}

/// 20 requests to each VIP, all answered.
fn tallies_ok(lab: &Lab) -> Result<bool> {
    let mut ok = true;
    for vip in [SocketAddr::from((VIP, 80)), SocketAddr::from((VIP6, 80))] {
        let t = lab
            .client
            .run(move || http::hammer(vip, 20, Duration::from_secs(2)))?;
        ok &= t.ok == 20;
    }
    Ok(ok)
}
