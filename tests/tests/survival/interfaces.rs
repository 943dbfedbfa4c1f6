//! The dataplane and VRRP follow their interface: re-created, its MAC changed, a real server's new MAC.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec, Proc, http,
    lab::VIP,
    scenario::{self, spawn_director},
};
use nix::sys::signal::Signal;

use super::*;

pub(crate) fn wait_log(daemon: &mut Proc, needle: &str) -> Result<()> {
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
