//! Promises of the README and docs/ that had no test: `track_interface`, the
//! tracking priority clamp, `garp_master_refresh`, `garp_master_repeat` and
//! `garp_master_delay` on the wire, `alpha`, and the XDP
//! program running in native mode where the interface supports it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};

const FAST: &str = "version = 3\nadvert_int = 0.1";

fn pair_lab() -> Result<Lab> {
    Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })
}

/// A tracked interface going down puts the master in Fault (the backup
/// takes the VIP); back up, the master returns. A tracked script whose
/// weight would take the priority below 1 leaves it at 1: still a backup,
/// never "priority 0" (which means resigning).
#[test]
fn track_interface_faults_and_a_deep_weight_clamps_at_one() -> Result<()> {
    let lab = pair_lab()?;
    let d1 = &lab.directors[0];
    d1.ns.ip(&[
        "link", "add", "trk0", "type", "veth", "peer", "name", "trk1",
    ])?;
    d1.ns.ip(&["link", "set", "trk0", "up"])?;
    d1.ns.ip(&["link", "set", "trk1", "up"])?;
    let flag = lab.path("healthy");
    std::fs::write(&flag, "")?;
    let script = format!(
        "\n[[vrrp_script]]\nname = \"chk\"\nscript = \"/usr/bin/test -e {}\"\ninterval = 0.2\nweight = -250\n",
        flag.display()
    );
    let c1 = scenario::vrrp_config(
        &lab,
        "director1",
        150,
        &format!("{FAST}\ntrack_interface = [\"trk0\"]\ntrack_script = [\"chk\"]"),
    )? + &script;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, FAST)?;
    let p1 = lab.write("director1.toml", &c1)?;
    let p2 = lab.write("director2.toml", &c2)?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;

    d1.ns.ip(&["link", "set", "trk0", "down"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "fault", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    ensure!(!d1.holds_vip()?, "a faulted master kept the VIP");
    d1.ns.ip(&["link", "set", "trk0", "up"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;

    std::fs::remove_file(&flag)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(5))?;
    let st = scenario::status(&s1)?;
    ensure!(st["vrrp"][0]["effective_priority"] == 1, "{st}");
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    Ok(())
}

/// With `garp_master_refresh = 1` the master announces the VIP every
/// second: a client whose entry for the VIP was poisoned is healed within
/// three seconds (without refreshes it would keep the wrong MAC until its
/// entry ages out, tens of seconds). `garp_master_delay = 60` keeps the
/// second burst after a takeover out of the test's minute: only the
/// refresh can heal it.
#[test]
fn garp_master_refresh_heals_a_poisoned_client() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let config = scenario::vrrp_config(
        &lab,
        "director1",
        150,
        "standalone = true\ngarp_master_delay = 60\ngarp_master_refresh = 1",
    )?;
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_vrrp_state(&state, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    scenario::assert_carries(&lab, 0, VIP.into(), &state, 5)?;
    let bogus = "02:00:00:00:99:99";
    lab.client.ns.ip(&[
        "neigh",
        "replace",
        &VIP.to_string(),
        "lladdr",
        bogus,
        "dev",
        "eth0",
        "nud",
        "reachable",
    ])?;
    let mac = lab.directors[0].mac()?;
    // (The kernel lets an announcement override an entry updated less
    // than a second ago only after that second: locktime.)
    let deadline = std::time::Instant::now() + Duration::from_millis(3000);
    loop {
        let out = lab
            .client
            .ns
            .ip(&["neigh", "show", &VIP.to_string(), "dev", "eth0"])?;
        let entry = String::from_utf8_lossy(&out.stdout).to_string();
        if entry.contains(&mac) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still poisoned after 3 s: {entry}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `alpha`: a real server starts down until its checks pass. rs2 does not
/// answer (its web server is stopped) and its first check is far off
/// (`warmup`): with alpha no request reaches it meanwhile, and the status
/// says it is down from the start.
#[test]
fn alpha_keeps_unchecked_servers_out() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    lab.stop_http(1)?;
    let mut c = scenario::global_config(&lab, "director1")?;
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\nalpha = true\n\n  [[virtual_server.real_server]]\n  address = \"{}\"\n\n  [[virtual_server.real_server]]\n  address = \"{}\"\n  [virtual_server.real_server.tcp_check]\n  warmup = 30\n  connect_timeout = 1\n",
        lab.real_servers[0].ip, lab.real_servers[1].ip
    ));
    let path = lab.write("director1.toml", &c)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let st = scenario::wait_status(&state, Duration::from_secs(10), |s| {
        s["virtual_servers"][0]["real_servers"][0]["mac"].is_string()
    })?;
    ensure!(
        st["virtual_servers"][0]["real_servers"][1]["healthy"] == false,
        "an unchecked server counts as healthy with alpha: {st}"
    );
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 30, Duration::from_secs(1)))?;
    ensure!(t.ok == 30, "requests reached the unchecked rs2: {t:?}");
    Ok(())
}

/// On a veth (which has native XDP), `xdp_mode = "auto"` attaches in
/// native (driver) mode, and `ip link` shows it as such.
#[test]
fn auto_mode_attaches_natively_where_the_driver_can() -> Result<()> {
    let lab = Lab::build(&LabSpec::default())?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let path = lab.write(
        "director1.toml",
        &scenario::http_config(&lab, "director1", &servers)?,
    )?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let st = scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    ensure!(st["xdp_mode"] == "native", "{st}");
    let out = lab.directors[0].ns.ip(&["-d", "link", "show", "eth0"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("xdp ") || text.contains("xdpdrv"),
        "not a driver-mode attachment: {text}"
    );
    ensure!(!text.contains("xdpgeneric"), "generic mode: {text}");
    Ok(())
}

/// The instance's own interface is tracked (keepalived does, unless
/// `dont_track_primary`): a backup whose link goes down goes to Fault, not
/// Master, and holds no VIP; back up, it is a backup again without a split
/// brain. A master whose link goes down hands over the same way. With
/// `dont_track_primary = true` the old behaviour stays available.
#[test]
fn the_instances_own_interface_is_tracked() -> Result<()> {
    let lab = pair_lab()?;
    let (_d1, _d2) = scenario::vrrp_pair(&lab, FAST)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let transitions = |s: &std::path::Path| -> Result<u64> {
        Ok(scenario::status(s)?["vrrp"][0]["transitions"]
            .as_u64()
            .unwrap_or(0))
    };
    let t1 = transitions(&s1)?;
    let (d1, d2) = (&lab.directors[0], &lab.directors[1]);

    // The backup's link goes down: Fault, no VIP.
    d2.ns.ip(&["link", "set", "eth0", "down"])?;
    scenario::wait_vrrp_state(&s2, "VI_1", "fault", Duration::from_secs(3))?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(!d2.holds_vip()?, "a backup with its link down took the VIP");
    ensure!(scenario::vrrp_state(&s2, "VI_1").as_deref() == Some("fault"));
    // Back up: a backup again, the master undisturbed, no split brain.
    d2.ns.ip(&["link", "set", "eth0", "up"])?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(3))?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(scenario::vrrp_state(&s1, "VI_1").as_deref() == Some("master"));
    ensure!(transitions(&s1)? == t1, "the master moved");
    for s in [&s1, &s2] {
        let st = scenario::status(s)?;
        ensure!(st["vrrp"][0]["split_brains"] == 0, "{st}");
    }

    // The master's link goes down: Fault, the backup takes over; back up,
    // it preempts.
    d1.ns.ip(&["link", "set", "eth0", "down"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "fault", Duration::from_secs(3))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(3))?;
    d1.ns.ip(&["link", "set", "eth0", "up"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(5))?;
    // A preemption is no split brain either.
    for s in [&s1, &s2] {
        let st = scenario::status(s)?;
        ensure!(st["vrrp"][0]["split_brains"] == 0, "{st}");
    }
    Ok(())
}

/// `dont_track_primary = true`: the own interface is not tracked.
#[test]
fn dont_track_primary_opts_out() -> Result<()> {
    let lab = pair_lab()?;
    let extra = format!("{FAST}\ndont_track_primary = true");
    let (_d1, _d2) = scenario::vrrp_pair(&lab, &extra)?;
    let s2 = lab.state_dir("director2")?;
    lab.directors[1].ns.ip(&["link", "set", "eth0", "down"])?;
    // It hears nothing more and takes over, as keepalived would.
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(3))?;
    Ok(())
}

/// `garp_master_repeat` and `garp_master_delay` on the wire, as the
/// client's kernel stamps what it receives: on becoming master, a burst of
/// `garp_master_repeat` gratuitous ARPs for the VIP, and after
/// `garp_master_delay` a second burst of as many; then nothing (no
/// refresh configured).
#[test]
fn garp_master_repeat_and_delay_on_the_wire() -> Result<()> {
    use director_tests::capture;
    use std::sync::{Arc, Mutex, atomic::AtomicBool};
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let config = scenario::vrrp_config(
        &lab,
        "director1",
        150,
        &format!("{FAST}\nstandalone = true\ngarp_master_repeat = 3\ngarp_master_delay = 1"),
    )?;
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let wire = {
        let (stop, seen) = (stop.clone(), seen.clone());
        lab.client
            .ns
            .spawn_thread(move || capture::frames(&stop, |p, _| p == libc::ETH_P_ARP as u16, &seen))
    };
    std::thread::sleep(Duration::from_millis(200));
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_vrrp_state(&state, "VI_1", "master", Duration::from_secs(10))?;
    let garps = || -> Vec<std::time::Instant> {
        seen.lock()
            .map(|f| {
                f.iter()
                    .filter(|f| !f.outgoing && f.is_garp_for(VIP))
                    .map(|f| f.at)
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while garps().len() < 6 {
        ensure!(
            std::time::Instant::now() < deadline,
            "{} gratuitous ARPs in 5 s",
            garps().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing more in the next 1.5 s (past where a third burst would be).
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    wire.join()
        .map_err(|_| anyhow::anyhow!("the capture panicked"))???;
    let t = garps();
    ensure!(
        t.len() == 6,
        "{} gratuitous ARPs, not 2 bursts of 3",
        t.len()
    );
    let span = |a: usize, b: usize| t[b].duration_since(t[a]).as_secs_f64();
    ensure!(
        span(0, 2) < 0.1 && span(3, 5) < 0.1,
        "bursts spread over {:.3} s and {:.3} s",
        span(0, 2),
        span(3, 5)
    );
    let delay = span(2, 3);
    ensure!(
        (0.95..1.5).contains(&delay),
        "the second burst came {delay:.3} s after the first (garp_master_delay = 1)"
    );
    Ok(())
}

/// Director1 of `lab` on a macvlan `mv0` of its `eth0` (a driver without
/// native XDP), with `extra` lines in `[global]`, run through `wrapper`
/// (a command prefix such as `setpriv ...`, or nothing).
fn on_dummy(lab: &Lab, name: &str, extra: &str, wrapper: &[&str]) -> Result<director_tests::Proc> {
    let ns = &lab.directors[0].ns;
    if ns.ip(&["link", "show", "mv0"]).is_err() {
        ns.ip(&[
            "link", "add", "mv0", "link", "eth0", "type", "macvlan", "mode", "bridge",
        ])?;
        ns.ip(&["addr", "add", "10.0.5.1/24", "dev", "mv0"])?;
        ns.ip(&["link", "set", "mv0", "up"])?;
    }
    let state = lab.state_dir(name)?;
    let config = format!(
        "[global]\nrouter_id = \"{name}\"\ninterface = \"mv0\"\nstate_dir = \"{}\"\n{extra}\n\n[[virtual_server]]\naddress = \"10.0.5.100\"\nport = 80\n\n  [[virtual_server.real_server]]\n  address = \"10.0.5.2\"\n",
        state.display()
    );
    let path = lab.write(&format!("{name}.toml"), &config)?;
    let bin = director_tests::director_bin()?;
    let (bin, path) = (bin.to_string_lossy(), path.to_string_lossy());
    let mut args: Vec<&str> = wrapper.to_vec();
    args.extend([bin.as_ref(), "run", "--config", path.as_ref()]);
    ns.spawn(args[0], &args[1..], &lab.path(&format!("{name}.log")))
}

/// What cannot run says why and exits 1; `auto` falls back: `xdp_mode =
/// "auto"` on a driver without native XDP attaches in generic mode (one
/// warning), a forced `native` there is an error naming the interface;
/// `dataplane = "ipvs"` on this kernel (no IPVS) names the module; a
/// forced `xdp` without the capabilities names them; `auto` without them
/// names both reasons (its fallback to IPVS succeeding is tested where
/// IPVS runs, `tests/tests/ipvs_vm.rs`).
#[test]
fn auto_falls_back_and_what_cannot_run_says_why() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let mut d = on_dummy(&lab, "generic", "xdp_mode = \"auto\"", &[])?;
    d.wait_for_log(Duration::from_secs(20), |l| l.contains("dataplane ready"))?;
    let st = scenario::status(&lab.state_dir("generic")?)?;
    ensure!(st["xdp_mode"] == "generic", "{st}");
    let out = lab.directors[0].ns.ip(&["-d", "link", "show", "mv0"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("xdpgeneric"), "not in generic mode: {text}");
    let log = d.log();
    let warned = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("generic"))
        .count();
    ensure!(warned == 1, "{warned} warnings about the fallback:\n{log}");
    d.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5))?;
    let flushed = std::process::Command::new(director_tests::director_bin()?)
        .args(["flush", "--state-dir"])
        .arg(lab.state_dir("generic")?)
        .status()?;
    ensure!(flushed.success(), "flush");

    let no_caps = ["setpriv", "--bounding-set", "-bpf,-sys_admin,-perfmon"];
    for (name, extra, wrapper, says) in [
        (
            "native",
            "xdp_mode = \"native\"",
            &[][..],
            &["mv0", "native"][..],
        ),
        ("ipvs", "dataplane = \"ipvs\"", &[], &["IPVS", "ip_vs"]),
        (
            "xdp-no-caps",
            "dataplane = \"xdp\"",
            &no_caps,
            &["CAP_SYS_ADMIN", "CAP_BPF"],
        ),
        (
            "auto-no-caps",
            "dataplane = \"auto\"",
            &no_caps,
            &["XDP:", "CAP_SYS_ADMIN", "IPVS:", "ip_vs"],
        ),
    ] {
        let mut d = on_dummy(&lab, name, extra, wrapper)?;
        let code = d.wait_for_exit(Duration::from_secs(20))?;
        let log = d.log();
        ensure!(code == Some(1), "{name}: exit {code:?}:\n{log}");
        let last = log.lines().last().unwrap_or_default();
        for s in says {
            ensure!(
                last.contains(s),
                "{name}: the error does not say {s:?}:\n{log}"
            );
        }
    }
    Ok(())
}
