//! One host must never take the front end down through the management
//! plane: thousands of idle and slow (a byte a second) connections to the
//! metrics port, from many addresses, under the descriptor limits a
//! service manager gives (soft and hard 1024: the daemon cannot even raise
//! it), while a real server dies and returns. The real server is taken out
//! and brought back on time, every request through the VIP is served,
//! `director status` answers, and a scraper from another host still gets
//! `/metrics`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, Proc, connflood, director_bin, http, lab::VIP, scenario};

const METRICS: &str = "10.0.0.10:9100";

fn healthy(s: &serde_json::Value, j: usize) -> Option<bool> {
    s["virtual_servers"][0]["real_servers"][j]["healthy"].as_bool()
}

/// `director status` of `state`, timed.
fn timed_status(state: &Path) -> Result<(serde_json::Value, Duration)> {
    let t = Instant::now();
    let s = scenario::status(state)?;
    Ok((s, t.elapsed()))
}

/// Starts the director of `lab` under `prlimit --nofile=SOFT:HARD`, as a
/// service manager would.
fn spawn_limited(lab: &Lab, config: &Path, soft: u64, hard: u64) -> Result<Proc> {
    let node = &lab.directors[0];
    let bin = director_bin()?;
    let limit = format!("--nofile={soft}:{hard}");
    node.ns.spawn(
        "prlimit",
        &[
            &limit,
            "--",
            &bin.to_string_lossy(),
            "run",
            "--config",
            &config.to_string_lossy(),
        ],
        &lab.path(&format!("{}.log", node.name)),
    )
}

/// `n` requests through the VIP from the client: every one served.
fn all_served(
    lab: &Lab,
    n: usize,
    when: &str,
) -> Result<std::collections::BTreeMap<String, usize>> {
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, n, Duration::from_secs(2)))?;
    ensure!(t.failed == 0, "{when}: requests failed: {t:?}");
    Ok(t.by_body)
}

#[test]
fn a_connection_flood_on_the_metrics_port_leaves_forwarding_and_checks_alone() -> Result<()> {
    connflood::raise_own_nofile()?;
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let mut config = scenario::global_config(&lab, "director1")?;
    config.push_str(&format!("metrics_address = \"{METRICS}\"\n"));
    config.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 1\n"
    ));
    for rs in &lab.real_servers {
        config.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.http_get]\nconnect_timeout = 1\nretry = 0\nurl = [{{ path = \"/\", status_code = 200 }}]\n",
            rs.ip
        ));
    }
    let path = lab.write("director.toml", &config)?;
    let d = spawn_limited(&lab, &path, 1024, 1024)?;
    scenario::wait_status(&state, Duration::from_secs(20), |s| {
        scenario::all_resolved(s)
            && (0..3).all(|j| {
                healthy(s, j) == Some(true)
                    && s["virtual_servers"][0]["real_servers"][j]["last_check"].is_number()
            })
    })?;
    let before = all_served(&lab, 30, "before the flood")?;
    ensure!(before.len() == 3, "{before:?}");
    let mut usual = Duration::ZERO;
    for _ in 0..5 {
        usual = usual.max(timed_status(&state)?.1);
    }

    // The flood: 20 source addresses, 2,000 idle and 1,000 slow
    // connections: three times the daemon's whole descriptor limit.
    let sources: Vec<IpAddr> = (150..170u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)))
        .collect();
    for s in &sources {
        lab.client
            .ns
            .ip(&["addr", "add", &format!("{s}/24"), "dev", "eth0"])?;
    }
    let target: SocketAddr = METRICS.parse()?;
    let flood = connflood::ConnFlood::start(&lab.client.ns, target, sources, 2000, 1000);
    // A scraper on another host.
    let prom = lab.add_host("prom", Ipv4Addr::new(10, 0, 0, 5))?;
    std::thread::sleep(Duration::from_secs(3));

    let mut worst = Duration::ZERO;
    // Each status: how long it took, and every check's last round no
    // older than 2.5 rounds (checks on time, none starved).
    let sample = |worst: &mut Duration| -> Result<serde_json::Value> {
        let (s, t) = timed_status(&state)?;
        *worst = (*worst).max(t);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        for j in 0..3 {
            let rs = &s["virtual_servers"][0]["real_servers"][j];
            let last = rs["last_check"].as_f64().unwrap_or(0.0);
            ensure!(now - last < 2.5, "a check is late: {rs}");
        }
        Ok(s)
    };
    let scrape = |prom: &director_tests::Node| -> Result<String> {
        let r = prom.run(move || http::get(target, "/metrics", Duration::from_secs(2)))??;
        ensure!(r.status == 200, "scrape: HTTP {}", r.status);
        Ok(r.body)
    };
    sample(&mut worst)?;
    let metrics = scrape(&prom)
        .with_context(|| format!("a scrape from another host during the flood:\n{}", d.log()))?;
    ensure!(
        metrics.contains("director_real_server_healthy"),
        "{metrics}"
    );
    let during = all_served(&lab, 30, "during the flood")?;
    ensure!(during.len() == 3, "{during:?}");

    // rs2 dies: taken out on time (a round a second, one failure), and
    // then no request reaches it.
    lab.stop_http(1)?;
    let stopped = Instant::now();
    let mut out = None;
    while stopped.elapsed() < Duration::from_secs(6) {
        let s = sample(&mut worst)?;
        if healthy(&s, 1) == Some(false) {
            out = Some(stopped.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = out.context("rs2 was not taken out within 6 s of its HTTP server stopping")?;
    // Down a while (the slow heads reach their timeout meanwhile).
    while stopped.elapsed() < Duration::from_secs(8) {
        let s = sample(&mut worst)?;
        ensure!(healthy(&s, 1) == Some(false), "rs2 came back while down");
        std::thread::sleep(Duration::from_millis(250));
    }
    let without = all_served(&lab, 30, "with rs2 out")?;
    ensure!(!without.contains_key("rs2"), "{without:?}");
    ensure!(without.len() == 2, "{without:?}");

    // rs2 returns: back on time.
    lab.start_http(1)?;
    let started = Instant::now();
    let mut back = None;
    while started.elapsed() < Duration::from_secs(6) {
        let s = sample(&mut worst)?;
        if healthy(&s, 1) == Some(true) {
            back = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = back.context("rs2 was not brought back within 6 s")?;
    std::thread::sleep(Duration::from_millis(300));
    let after = all_served(&lab, 30, "with rs2 back")?;
    ensure!(after.len() == 3, "{after:?}");
    let s = sample(&mut worst)?;
    // Every check kept its schedule: none failed but rs2's, none late.
    for j in 0..3 {
        let rs = &s["virtual_servers"][0]["real_servers"][j];
        ensure!(healthy(&s, j) == Some(true), "{rs}");
    }
    ensure!(
        worst < Duration::from_secs(1),
        "director status took {worst:?} under the flood (usual {usual:?})"
    );
    let log = d.log();
    ensure!(
        !log.contains("Too many open files"),
        "the daemon ran out of descriptors:\n{}",
        log.lines()
            .filter(|l| l.contains("Too many"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let shed_lines = log
        .lines()
        .filter(|l| l.contains("at its connection limit"))
        .count();
    let stats = flood.stop()?;
    // The flood really happened: thousands of connections held by the
    // kernel or shed by the daemon, slow heads cut.
    ensure!(stats.opened >= 3000, "{stats:?}");
    ensure!(stats.closed_by_server > 1000, "{stats:?}");
    ensure!(shed_lines >= 1, "no shedding logged:\n{log}");
    // One line per 10 s at most for all of it.
    ensure!(shed_lines <= 4, "{shed_lines} shedding lines:\n{log}");
    // After the flood, /metrics answers the client host too.
    let r = lab
        .client
        .run(move || http::get(target, "/metrics", Duration::from_secs(2)))??;
    ensure!(r.status == 200, "HTTP {}", r.status);
    eprintln!(
        "flood: {} connections opened, {} closed by the daemon, at most {} open at once as the client saw \
         them (of 3,000); status worst {worst:?} (usual {usual:?}); rs2 out after {out:?}, back after {back:?}; \
         every request served",
        stats.opened, stats.closed_by_server, stats.held_max
    );
    Ok(())
}

/// The daemon raises its soft descriptor limit to the hard one (systemd's
/// default soft limit is 1024, whatever the hard limit).
#[test]
fn the_daemon_raises_its_descriptor_limit() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let servers = vec![lab.real_servers[0].ip.to_string()];
    let path = lab.write(
        "d.toml",
        &scenario::http_config(&lab, "director1", &servers)?,
    )?;
    // (The hard limit this machine allows us, at most 16,384.)
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let hard = hard.min(16_384);
    ensure!(
        hard > 1024,
        "this machine's hard descriptor limit is {hard}"
    );
    let d = spawn_limited(&lab, &path, 1024, hard)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let pid = d.pid().context("no pid")?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-files line")?;
    let soft: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .context("soft limit")?;
    ensure!(soft == hard, "{line}");
    ensure!(
        d.log().contains("file descriptor limit raised"),
        "{}",
        d.log()
    );
    Ok(())
}

/// A reload the host cannot carry out (a VRRP instance on an interface
/// that does not exist, a source address that is not ours) is refused on
/// the master with the reason, and changes nothing: no transition on
/// either director, the VIP never leaves the master, no notification runs,
/// no request fails; the master's instance still runs.
#[test]
fn a_refused_reload_moves_no_vip() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    let notified = lab.path("notified");
    let extra = format!(
        "version = 3\nadvert_int = 0.1\nnotify = \"/bin/sh -c 'echo $0 $1 $2 $3 >> {}'\"",
        notified.display()
    );
    let (_d1, _d2) = scenario::vrrp_pair(&lab, &extra)?;
    std::thread::sleep(Duration::from_millis(500));
    let notes_before = std::fs::read_to_string(&notified).unwrap_or_default();
    let vrrp =
        |s: &Path| -> Result<serde_json::Value> { Ok(scenario::status(s)?["vrrp"][0].clone()) };
    let (t1, t2) = (
        vrrp(&s1)?["transitions"].clone(),
        vrrp(&s2)?["transitions"].clone(),
    );
    let good = std::fs::read_to_string(lab.path("director1.toml"))?;
    let bad_files = [
        (
            "interface",
            good.replace("name = \"VI_1\"", "name = \"VI_1\"\ninterface = \"eth9\""),
            "eth9",
        ),
        (
            "unicast_src_ip",
            good.replace(
                "name = \"VI_1\"",
                "name = \"VI_1\"\nunicast_src_ip = \"10.0.0.99\"\nunicast_peer = [\"10.0.0.11\"]",
            ),
            "10.0.0.99",
        ),
    ];
    let vip = SocketAddr::from((VIP, 80));
    for (what, text, named) in &bad_files {
        ensure!(text != &good, "{what}: the edit did not apply");
        std::fs::write(lab.path("director1.toml"), text)?;
        let watcher = {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let ns = lab.directors[0].ns.name().to_string();
            let t = std::thread::spawn(move || -> Result<u32> {
                // How often the master was seen without the VIP.
                let mut missing = 0;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = std::process::Command::new("ip")
                        .args(["-n", &ns, "-4", "addr", "show", "dev", "eth0"])
                        .output()?;
                    if !String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/32")) {
                        missing += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(missing)
            });
            (stop, t)
        };
        let ((ok, err), tally) = http::under_load(&lab.client.ns, vip, || {
            let r = scenario::director_cli(&["reload"], &s1)?;
            std::thread::sleep(Duration::from_secs(1));
            Ok(r)
        })?;
        watcher.0.store(true, std::sync::atomic::Ordering::Relaxed);
        let missing = watcher
            .1
            .join()
            .map_err(|_| anyhow::anyhow!("watcher panicked"))??;
        ensure!(!ok, "{what}: the reload was accepted");
        ensure!(
            err.contains("refused") && err.contains(named),
            "{what}: the refusal does not say why: {err}"
        );
        ensure!(
            missing == 0,
            "{what}: the master was seen {missing} times without the VIP"
        );
        ensure!(tally.failed == 0 && tally.ok > 0, "{what}: {tally:?}");
        let (v1, v2) = (vrrp(&s1)?, vrrp(&s2)?);
        ensure!(
            v1["state"] == "master" && v2["state"] == "backup",
            "{what}: {v1} / {v2}"
        );
        ensure!(
            v1["transitions"] == t1 && v2["transitions"] == t2,
            "{what}: transitions moved: {} -> {}, {} -> {}",
            t1,
            v1["transitions"],
            t2,
            v2["transitions"]
        );
        ensure!(lab.directors[0].holds_vip()? && !lab.directors[1].holds_vip()?);
        ensure!(
            std::fs::read_to_string(&notified).unwrap_or_default() == notes_before,
            "{what}: a notification ran"
        );
        eprintln!(
            "{what}: refused ({}), {} requests served, 0 transitions",
            err.trim(),
            tally.ok
        );
    }
    // The good file again: accepted, still nothing moves.
    std::fs::write(lab.path("director1.toml"), &good)?;
    let (ok, err) = scenario::director_cli(&["reload"], &s1)?;
    ensure!(ok, "{err}");
    ensure!(vrrp(&s1)?["transitions"] == t1);
    Ok(())
}

/// `script_user`: every script (a VRRP notify, a `misc_check`) runs as
/// that user; `enable_script_security` refuses, at check-config and at
/// start, a script that would run as root while another user can change
/// it, naming the key and what is wrong; the same script as the script
/// user is fine.
#[test]
fn scripts_run_as_the_script_user_and_insecure_ones_are_refused() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let state = lab.state_dir("director1")?;
    let out = lab.path("out");
    std::fs::create_dir_all(&out)?;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777))?;
    let nobody = nix::unistd::User::from_name("nobody")?.context("no user nobody")?;
    let rs = lab.real_servers[0].ip;
    let config = |global_extra: &str, misc: &str| -> Result<String> {
        let mut c = scenario::global_config(&lab, "director1")?;
        c.push_str(global_extra);
        c.push_str(&format!(
            "\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\npriority = 150\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP}/32\"]\nnotify_master = \"/bin/sh -c 'id -u >> {}/notify'\"\n",
            out.display()
        ));
        c.push_str(&format!(
            "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.5\n\n[[virtual_server.real_server]]\naddress = \"{rs}\"\n[virtual_server.real_server.misc_check]\nmisc_path = \"{misc}\"\n"
        ));
        Ok(c)
    };
    let misc = format!("/bin/sh -c 'id -u >> {}/check'", out.display());
    let path = lab.write("d.toml", &config("script_user = \"nobody\"\n", &misc)?)?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_vrrp_state(&state, "VI_1", "master", Duration::from_secs(10))?;
    let uid = nobody.uid.to_string();
    let lines = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    let started = Instant::now();
    while (lines("check").lines().count() < 2 || lines("notify").is_empty())
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for f in ["notify", "check"] {
        let text = lines(f);
        ensure!(
            !text.is_empty() && text.lines().all(|l| l == uid),
            "{f} ran as {text:?}, not uid {uid}:\n{}",
            d.log()
        );
    }
    ensure!(
        d.log().contains("scripts run as the script user"),
        "{}",
        d.log()
    );
    d.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))?;

    // A misc_path in a directory another group may write to.
    let dir = PathBuf::from(format!("/run/{}-scripts", lab.id));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&dir, None, Some(100))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775))?;
    let result = (|| -> Result<()> {
        let insecure = config("enable_script_security = true\n", &script.to_string_lossy())?;
        let bad = lab.write("bad.toml", &insecure)?;
        let check = std::process::Command::new(director_bin()?)
            .args(["check-config", "--config"])
            .arg(&bad)
            .output()?;
        let err = String::from_utf8_lossy(&check.stderr).to_string();
        ensure!(!check.status.success(), "check-config accepted it");
        ensure!(
            err.contains("misc_check.misc_path")
                && err.contains("writable by group")
                && err.contains("bad.toml:"),
            "{err}"
        );
        let mut run = scenario::spawn_director(&lab, 0, &bad)?;
        ensure!(
            run.wait_for_exit(Duration::from_secs(10))? == Some(1),
            "{}",
            run.log()
        );
        // As the script user it is no root code: accepted.
        let fine = lab.write(
            "fine.toml",
            &config(
                "enable_script_security = true\nscript_user = \"nobody\"\n",
                &script.to_string_lossy(),
            )?,
        )?;
        let check = std::process::Command::new(director_bin()?)
            .args(["check-config", "--config"])
            .arg(&fine)
            .output()?;
        ensure!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
