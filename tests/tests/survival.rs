//! The pinned dataplane outlives the daemon wherever operators run it, and
//! follows its interface.
//!
//! Every daemon here is started as an operator starts it: `ip netns exec`
//! (a private mount namespace with `/sys` remounted, so the host's bpffs is
//! not in its view) and the default pin directory; nothing is mounted for
//! it. Requests must complete within 900 ms: a SYN dropped while no program
//! forwards would be retransmitted after 1 s and fail.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec, Proc, director_bin, http,
    lab::VIP,
    scenario::{self, spawn_director},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const WITHIN: Duration = Duration::from_millis(900);

fn one_director() -> Result<(Lab, PathBuf, PathBuf)> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let config = scenario::http_config(&lab, "director1", &servers)?;
    ensure!(
        !config.contains("pin_dir"),
        "the default layout is under test"
    );
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    Ok((lab, path, state))
}

fn ready(state: &Path) -> Result<serde_json::Value> {
    scenario::wait_status(state, Duration::from_secs(20), scenario::all_resolved)
}

/// The pin directory the daemon reports, checked in the host's view (this
/// test runs in the host's mount namespace).
fn host_pins(status: &serde_json::Value) -> Result<PathBuf> {
    let dir = PathBuf::from(status["pin_dir"].as_str().context("pin_dir")?);
    ensure!(
        dir.starts_with("/sys/fs/bpf/director/"),
        "pins at {}",
        dir.display()
    );
    Ok(dir)
}

#[test]
fn restart_and_kill_9_in_a_private_mount_namespace_lose_no_request() -> Result<()> {
    let (lab, path, state) = one_director()?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    let status = ready(&state)?;
    ensure!(
        status["dataplane_survives_restart"] == true,
        "the daemon says its dataplane dies with it: {status}"
    );
    let pins = host_pins(&status)?;
    ensure!(
        pins.join("link").exists(),
        "{} is not on the host's bpffs",
        pins.display()
    );
    let vip = SocketAddr::from((VIP, 80));

    // SIGTERM (a goodbye), then kill -9 (none at all): each time a second
    // with no daemon, then a new one adopts the pinned dataplane.
    for (signal, adopted) in [
        (Signal::SIGTERM, "XDP program replaced in the pinned link"),
        (Signal::SIGKILL, "adopted the running dataplane"),
    ] {
        let ((), load) = http::under_load_within(&lab.client.ns, vip, WITHIN, || {
            let pid = daemon.pid().context("pid")?;
            kill(Pid::from_raw(pid as i32), signal)?;
            let _ = daemon.stop(signal, Duration::from_secs(5));
            std::thread::sleep(Duration::from_secs(1));
            ensure!(
                lab.directors[0].xdp_attached()?,
                "XDP gone with the daemon ({signal})"
            );
            daemon = spawn_director(&lab, 0, &path)?;
            ready(&state)?;
            Ok(())
        })?;
        ensure!(
            load.failed == 0 && load.ok > 50,
            "{signal} and restart lost requests: {load:?}"
        );
        ensure!(
            daemon.log().contains(adopted),
            "after {signal} the new daemon did not adopt the dataplane:\n{}",
            daemon.log()
        );
    }

    // Flush from another private namespace removes it all, on the host too:
    // the pins, the program and every one of its maps.
    let (program, maps) = dataplane_objects(&lab)?;
    ensure!(!maps.is_empty(), "program {program} has no maps");
    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    let bin = director_bin()?;
    lab.directors[0].ns.exec(
        &bin.to_string_lossy(),
        &["flush", "--config", &path.to_string_lossy()],
    )?;
    ensure!(!pins.exists(), "{} left after flush", pins.display());
    ensure!(!lab.directors[0].xdp_attached()?, "XDP left after flush");
    // The kernel frees a program and its maps once nothing holds them.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = std::iter::once(("prog", program))
            .chain(maps.iter().map(|m| ("map", *m)))
            .filter(|(kind, id)| bpftool(&[kind, "show", "id", &id.to_string()]).is_ok())
            .map(|(kind, id)| format!("{kind} {id}"))
            .collect();
        if left.is_empty() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "left in the kernel after flush: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn bpftool(args: &[&str]) -> Result<serde_json::Value> {
    let out = director_tests::netns::sh("bpftool", &[&["-j"], args].concat())?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The XDP program on director1's eth0 and its maps' ids.
fn dataplane_objects(lab: &Lab) -> Result<(u64, Vec<u64>)> {
    let out = lab.directors[0]
        .ns
        .ip(&["-d", "-j", "link", "show", "eth0"])?;
    let link: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let program = link[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| link[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
        .with_context(|| format!("no XDP program in {link}"))?;
    let info = bpftool(&["prog", "show", "id", &program.to_string()])?;
    let maps = info["map_ids"]
        .as_array()
        .context("map_ids")?
        .iter()
        .filter_map(|m| m.as_u64())
        .collect();
    Ok((program, maps))
}

/// A unit that mounts its own bpffs (or a namespace that has one) must not
/// fool the daemon: that bpffs dies with the namespace, so the daemon
/// brings the host's into view over it.
#[test]
fn a_private_bpffs_in_the_daemons_view_is_not_trusted() -> Result<()> {
    let (lab, path, state) = one_director()?;
    let bin = director_bin()?;
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && exec {} run --config {}",
        bin.display(),
        path.display()
    );
    let mut daemon =
        lab.directors[0]
            .ns
            .spawn("sh", &["-c", &script], &lab.path("director1.log"))?;
    let status = ready(&state)?;
    ensure!(status["dataplane_survives_restart"] == true, "{status}");
    let pins = host_pins(&status)?;
    ensure!(
        pins.join("link").exists(),
        "the daemon pinned into its private bpffs, not the host's"
    );
    let pid = daemon.pid().context("pid")?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    let _ = daemon.stop(Signal::SIGKILL, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    ensure!(lab.directors[0].xdp_attached()?, "XDP gone with the daemon");
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 20, WITHIN))?;
    ensure!(t.ok == 20, "not forwarding after the daemon died: {t:?}");
    Ok(())
}

/// A VRRP master dies (kill -9) without its link going down: it still
/// holds the VIP, so clients keep sending to it until the backup's
/// gratuitous ARP moves them. Its pinned dataplane keeps forwarding in the
/// meantime: all 20 long downloads complete, byte for byte.
#[test]
fn long_downloads_survive_kill_9_of_the_master() -> Result<()> {
    const SIZE: usize = 2 << 20;
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let (mut d1, _d2) = scenario::vrrp_pair(&lab, "version = 3\nadvert_int = 0.1")?;
    let s2 = lab.state_dir("director2")?;
    lab.write_big_file(SIZE)?;
    let vip = SocketAddr::from((VIP, 80));
    let downloads = http::Downloads::start(&lab.client.ns, vip, 20, SIZE);
    std::thread::sleep(Duration::from_secs(1));
    let pid = d1.pid().context("director1 pid")?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    let _ = d1.stop(Signal::SIGKILL, Duration::from_secs(5));
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    downloads.all()?;
    Ok(())
}

fn wait_log(daemon: &mut Proc, needle: &str) -> Result<()> {
    daemon.wait_for_log(Duration::from_secs(10), |l| l.contains(needle))
}

/// The interface is deleted and re-created under the daemon (directly, then
/// by a rename into its name): the program is attached to the new one and
/// requests are served again; then a daemon started after such a change
/// (its pinned link now defunct) starts and serves.
#[test]
fn the_dataplane_follows_a_recreated_interface() -> Result<()> {
    let (lab, path, state) = one_director()?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    ready(&state)?;
    let vip = SocketAddr::from((VIP, 80));
    let served = |what: &str| -> Result<()> {
        // The client's ARP entry for the VIP is the old MAC: let the
        // kernel re-resolve it (a new device has a new MAC).
        lab.client.ns.ip(&["neigh", "flush", "dev", "eth0"])?;
        let t = lab.client.run(move || http::hammer(vip, 20, WITHIN))?;
        ensure!(t.ok == 20, "{what}: {t:?}");
        Ok(())
    };
    served("before")?;
    for (round, by_rename) in [(1, false), (2, true)] {
        lab.recreate_director_link(0, by_rename)?;
        let needle = "XDP program re-attached";
        daemon.wait_for_log(Duration::from_secs(10), |l| {
            l.matches(needle).count() >= round
        })?;
        ensure!(lab.directors[0].xdp_attached()?, "round {round}: no XDP");
        served(&format!("after re-creation {round} (rename: {by_rename})"))?;
    }

    // Stopped, the interface re-created, started: the stale link is
    // replaced, not an error.
    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    lab.recreate_director_link(0, false)?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    wait_log(&mut daemon, "interface is gone (deleted or re-created)")?;
    ready(&state)?;
    ensure!(lab.directors[0].xdp_attached()?, "no XDP after the restart");
    served("after a restart on a re-created interface")?;
    Ok(())
}

/// The interface's MAC changes under a VRRP master (bond fail_over_mac,
/// `ip link set address`): the program accepts frames to the new MAC and
/// the master announces it at once (the client's entry for the VIP moves
/// without waiting for its cache to expire).
#[test]
fn a_mac_change_is_followed_and_announced() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let config = scenario::vrrp_config(&lab, "director1", 150, "standalone = true")?;
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    scenario::wait_vrrp_state(&state, "VI_1", "master", Duration::from_secs(10))?;
    ready(&state)?;
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 10, WITHIN))?;
    ensure!(t.ok == 10, "{t:?}");
    let new_mac = "02:00:00:00:ab:01";
    lab.directors[0]
        .ns
        .ip(&["link", "set", "eth0", "address", new_mac])?;
    wait_log(&mut daemon, "VRRP interface changed")?;
    let client_mac = || -> Result<String> {
        let out = lab
            .client
            .ns
            .ip(&["neigh", "show", &VIP.to_string(), "dev", "eth0"])?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !client_mac()?.contains(new_mac) {
        ensure!(
            std::time::Instant::now() < deadline,
            "the client's entry for the VIP did not move to {new_mac}: {}",
            client_mac()?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = lab.client.run(move || http::hammer(vip, 20, WITHIN))?;
    ensure!(t.ok == 20, "after the MAC change: {t:?}");
    Ok(())
}

/// Two daemons must never share a dataplane: a second one on the same
/// state directory is refused (the first keeps its control socket), and
/// one sharing only the pin directory from another network namespace is
/// refused before it touches the first one's XDP link.
#[test]
fn a_second_daemon_never_takes_over_the_first_ones_dataplane() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let config = scenario::http_config(&lab, "director1", &servers)?;
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    let mut first = spawn_director(&lab, 0, &path)?;
    let status = ready(&state)?;
    let pins = host_pins(&status)?;

    // Same config, another network namespace: same state directory.
    let mut second = spawn_director(&lab, 1, &path)?;
    second.wait_for_exit(Duration::from_secs(10))?;
    ensure!(
        second.log().contains("another director already runs"),
        "{}",
        second.log()
    );
    // Another state directory, the same pin directory.
    let mut other = scenario::global_config(&lab, "director2")?;
    other.push_str(&format!("pin_dir = \"{}\"\n", pins.display()));
    other.push_str(&scenario::virtual_server(
        &VIP.to_string(),
        80,
        &servers,
        &[],
    ));
    let other_path = lab.write("director2.toml", &other)?;
    let mut third = spawn_director(&lab, 1, &other_path)?;
    third.wait_for_exit(Duration::from_secs(10))?;
    ensure!(
        third.log().contains("another network namespace"),
        "{}",
        third.log()
    );
    ensure!(
        !lab.directors[1].xdp_attached()?,
        "the second daemon attached"
    );
    ensure!(
        lab.directors[0].xdp_attached()?,
        "the first lost its XDP link"
    );
    ensure!(first.running(), "the first daemon died");
    ready(&state)?;
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 20, WITHIN))?;
    ensure!(t.ok == 20, "{t:?}");
    Ok(())
}

/// A datagram every millisecond through the VIP (one UDP flow) while the
/// daemon is restarted (a second with no daemon), reloaded with a changed
/// weight, and reloaded with a real server added: not one is lost.
#[test]
fn restarts_and_reloads_lose_no_datagram() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let echo = lab.start_udp_echo(VIP.into(), 7)?;
    let servers = |n: usize| -> Vec<String> {
        lab.real_servers[..n]
            .iter()
            .map(|r| r.ip.to_string())
            .collect()
    };
    let config = |n: usize, weights: &[(&str, u32)]| -> Result<String> {
        let mut c = scenario::global_config(&lab, "director1")?;
        c.push_str(&scenario::virtual_server(
            &VIP.to_string(),
            80,
            &servers(n),
            weights,
        ));
        c.push_str(&scenario::udp_virtual_server(
            &VIP.to_string(),
            7,
            &servers(n),
        ));
        Ok(c)
    };
    let path = lab.write("director1.toml", &config(2, &[])?)?;
    let state = lab.state_dir("director1")?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    ready(&state)?;
    let udp = SocketAddr::from((VIP, 7));
    let every = Duration::from_millis(1);

    let ((), restart) = director_tests::udp::probe_during(&lab.client.ns, udp, every, || {
        daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
        std::thread::sleep(Duration::from_secs(1));
        daemon = spawn_director(&lab, 0, &path)?;
        ready(&state)?;
        Ok(())
    })?;
    let reload = |text: String| -> Result<()> {
        std::fs::write(&path, text)?;
        let (ok, err) = scenario::director_cli(&["reload"], &state)?;
        ensure!(ok, "reload failed: {err}");
        Ok(())
    };
    let rs1 = lab.real_servers[0].ip.to_string();
    let ((), weight) = director_tests::udp::probe_during(&lab.client.ns, udp, every, || {
        reload(config(2, &[(rs1.as_str(), 3)])?)
    })?;
    let ((), added) = director_tests::udp::probe_during(&lab.client.ns, udp, every, || {
        reload(config(3, &[(rs1.as_str(), 3)])?)?;
        ready(&state)?;
        Ok(())
    })?;
    drop(echo);
    for (what, t) in [
        ("restart", &restart),
        ("reload (weight)", &weight),
        ("reload (server added)", &added),
    ] {
        eprintln!("{what}: {t:?}");
        ensure!(t.sent > 300, "{what}: only {} datagrams sent", t.sent);
        ensure!(
            t.lost() == 0,
            "{what}: {} of {} datagrams lost (longest gap {} ms)",
            t.lost(),
            t.sent,
            t.longest_gap
        );
    }
    Ok(())
}

/// VRRP across a re-created interface: the master's `eth0` is deleted and
/// a new one takes its name (directly, then by a rename). The backup takes
/// over while it is gone; once it is back the instance follows the new
/// interface (its socket, adverts and announcements on the new index and
/// MAC), preempts, and carries the VIP's traffic again.
#[test]
fn vrrp_follows_a_recreated_interface() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let (mut d1, _d2) = scenario::vrrp_pair(&lab, "version = 3\nadvert_int = 0.1")?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 10)?;
    for (round, by_rename) in [(1, false), (2, true)] {
        let what = if by_rename { "by a rename" } else { "directly" };
        lab.recreate_director_link(0, by_rename)?;
        let needle = "VRRP interface changed: following it";
        d1.wait_for_log(Duration::from_secs(10), |l| {
            l.matches(needle).count() >= round
        })?;
        // (The backup may not notice a quick re-creation: the master
        // might be back before its master-down interval.)
        scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))
            .with_context(|| format!("re-created {what}"))?;
        scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))
            .with_context(|| format!("re-created {what}"))?;
        ensure!(
            lab.directors[0].holds_vip()? && !lab.directors[1].holds_vip()?,
            "re-created {what}: VIP placement"
        );
        let heard = scenario::status(&s2)?["vrrp"][0]["adverts_received"].as_u64();
        std::thread::sleep(Duration::from_millis(500));
        let now = scenario::status(&s2)?["vrrp"][0]["adverts_received"].as_u64();
        ensure!(
            now >= heard.map(|h| h + 3),
            "re-created {what}: the backup hears no adverts ({heard:?} -> {now:?})"
        );
        scenario::assert_carries(&lab, 0, VIP.into(), &s1, 10)
            .with_context(|| format!("re-created {what}"))?;
    }
    Ok(())
}

/// A daemon that may not enter the host's mount namespace (here: started
/// without `CAP_SYS_CHROOT`, inside `ip netns exec`'s private view) cannot
/// pin its dataplane where it outlives it: it forwards, and says so once
/// in the log naming the cause, in `status` (a warning), in `status
/// --json` (`dataplane_survives_restart: false`) and in the metric
/// (`director_dataplane_survives_restart 0`); stopped, its dataplane goes
/// with it (no XDP left on the interface).
#[test]
fn a_dataplane_that_cannot_outlive_the_daemon_says_so() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: true,
    })?;
    let servers = vec![lab.real_servers[0].ip.to_string()];
    let mut config = scenario::http_config(&lab, "director1", &servers)?;
    config = config.replacen(
        "[global]\n",
        "[global]\nmetrics_address = \"10.0.0.10:9100\"\n",
        1,
    );
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    let bin = director_bin()?;
    let mut daemon = lab.directors[0].ns.spawn(
        "setpriv",
        &[
            "--bounding-set",
            "-sys_chroot",
            "--inh-caps",
            "-sys_chroot",
            &bin.to_string_lossy(),
            "run",
            "--config",
            &path.to_string_lossy(),
        ],
        &lab.path("director1.log"),
    )?;
    let status = ready(&state)?;
    ensure!(
        status["dataplane_survives_restart"] == false,
        "survives without the right to reach the host's bpffs? {status}"
    );
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 10, WITHIN))?;
    ensure!(t.ok == 10, "{t:?}");
    let log = daemon.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("will NOT survive"))
        .collect();
    ensure!(said.len() == 1, "said {} times:\n{log}", said.len());
    let (ok, table) = {
        let out = std::process::Command::new(&bin)
            .args(["status", "--state-dir"])
            .arg(&state)
            .output()?;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    ensure!(
        ok && table.to_lowercase().contains("warning"),
        "director status:\n{table}"
    );
    let addr = SocketAddr::from(([10, 0, 0, 10], 9100));
    let metrics = lab
        .client
        .run(move || http::get(addr, "/metrics", Duration::from_secs(3)))??;
    ensure!(
        metrics
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("director_dataplane_survives_restart "))
            .any(|v| v.parse::<f64>() == Ok(0.0)),
        "{}",
        metrics.body
    );
    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    ensure!(
        !lab.directors[0].xdp_attached()?,
        "XDP outlived a daemon that said it would not"
    );
    Ok(())
}

/// A real server's MAC changes (a replaced NIC, a VM moved to another
/// host) and the server announces it (gratuitous ARP: Linux's `arp_notify`):
/// the director follows at once - new flows and established ones reach
/// the server at its new MAC, the change is logged - while the other real
/// server is untouched.
#[test]
fn a_real_servers_new_mac_is_followed() -> Result<()> {
    let (lab, path, state) = one_director()?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    ready(&state)?;
    let vip = SocketAddr::from((VIP, 80));
    let served = |what: &str| -> Result<()> {
        let t = lab.client.run(move || http::hammer(vip, 40, WITHIN))?;
        ensure!(
            t.ok == 40 && t.by_body.contains_key("rs1") && t.by_body.contains_key("rs2"),
            "{what}: {t:?}"
        );
        Ok(())
    };
    served("before")?;
    // Established connections to rs1 (kept alive across the change).
    let mut kept = Vec::new();
    for _ in 0..20 {
        let mut c = lab
            .client
            .run(move || http::KeepAlive::connect(vip, WITHIN))??;
        if c.get("/")?.body.starts_with("rs1") {
            kept.push(c);
        }
    }
    ensure!(!kept.is_empty(), "no connection reached rs1");
    let rs1 = &lab.real_servers[0].ns;
    rs1.sysctl("net.ipv4.conf.eth0.arp_notify", "1")?;
    let new_mac = "02:00:00:00:cd:01";
    rs1.ip(&["link", "set", "eth0", "address", new_mac])?;
    daemon.wait_for_log(Duration::from_secs(5), |l| {
        l.contains("real server MAC changed") && l.contains(new_mac)
    })?;
    served("after rs1's MAC changed")?;
    // The established connections go on, to rs1 at its new MAC.
    for c in &mut kept {
        let r = c.get("/")?;
        ensure!(
            r.status == 200 && r.body.starts_with("rs1"),
            "a kept connection: {} {:?}",
            r.status,
            r.body
        );
    }
    Ok(())
}

/// An update the kernel refuses outside a reload (here the real-server
/// and Maglev maps frozen under the daemon, `bpftool map freeze`: every
/// write from user space now fails) never stops the daemon: a health
/// change cannot be applied, the last good state keeps forwarding, the
/// error is logged once however often it is retried, and `status` shows
/// it as `dataplane_error`.
#[test]
fn a_refused_dataplane_update_keeps_the_last_good_state_and_says_so() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let mut c = scenario::global_config(&lab, "director1")?;
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\n"
    ));
    for rs in &lab.real_servers {
        c.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nconnect_timeout = 0.5\nretry = 0\nwarmup = 0\n",
            rs.ip
        ));
    }
    let path = lab.write("director1.toml", &c)?;
    let state = lab.state_dir("director1")?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    let status = ready(&state)?;
    ensure!(status["dataplane_error"].is_null(), "{status}");
    let pins = host_pins(&status)?;
    for map in ["BACKENDS", "MAGLEV"] {
        let pin = pins.join(map);
        ensure!(pin.exists(), "no {}", pin.display());
        director_tests::netns::sh(
            "bpftool",
            &["map", "freeze", "pinned", &pin.to_string_lossy()],
        )?;
    }
    // rs2 fails its checks: the change cannot reach the frozen maps.
    lab.stop_http(1)?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][0]["real_servers"][1]["healthy"] == false
            && s["dataplane_error"].is_string()
    })?;
    let error = s["dataplane_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Retried for a second: still one line.
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log();
    let said = log
        .lines()
        .filter(|l| l.contains("the dataplane refused an update"))
        .count();
    ensure!(said == 1, "said {said} times ({error}):\n{log}");
    ensure!(daemon.running(), "the daemon stopped:\n{log}");
    // The last good state forwards: rs1 still gets its flows.
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 20, WITHIN))?;
    ensure!(t.by_body.get("rs1").copied().unwrap_or(0) > 0, "{t:?}");
    let st = scenario::status(&state)?;
    ensure!(st["dataplane_error"] == error.as_str(), "{st}");
    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    // The frozen maps go with the pins.
    let flushed = std::process::Command::new(director_bin()?)
        .args(["flush", "--state-dir"])
        .arg(&state)
        .status()?;
    ensure!(flushed.success(), "director flush");
    Ok(())
}
