//! Restarts, kill -9 and reloads in a private mount namespace lose no request or datagram; downloads survive a master's kill -9; a second daemon never takes over the first one's dataplane.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec, director_bin, http,
    lab::VIP,
    scenario::{self, spawn_director},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::*;

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
