//! `use_vmac`: the VIP lives on a macvlan with the virtual router's MAC
//! (00:00:5e:00:01:VRID), so a failover changes no client's ARP cache. A
//! client whose ARP entry for the VIP is pinned to the virtual MAC (`nud
//! permanent`: announcements cannot move it) keeps being served across a
//! failover, by the new master (its counters carry the requests); the
//! backup never forwards frames addressed to the virtual MAC.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, anyhow, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};

/// VRID 51.
const VMAC: &str = "00:00:5e:00:01:33";

/// New flows a daemon placed for the VIP.
fn new_flows(state: &std::path::Path) -> Result<u64> {
    let s = scenario::status(state)?;
    Ok(s["virtual_servers"]
        .as_array()
        .map(|v| v.iter().filter_map(|vs| vs["new_flows"].as_u64()).sum())
        .unwrap_or(0))
}

/// What `ip -br link/addr show dev IFACE` print in director `i`'s
/// namespace (empty when there is no such interface).
fn vmac_interface_named(lab: &Lab, i: usize, iface: &str) -> Result<String> {
    let out = lab.directors[i]
        .ns
        .ip(&["-br", "link", "show", "dev", iface])?;
    let addrs = lab.directors[i]
        .ns
        .ip(&["-br", "addr", "show", "dev", iface])?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&addrs.stdout)
    ))
}

fn vmac_interface(lab: &Lab, i: usize) -> Result<String> {
    vmac_interface_named(lab, i, "vrrp.51")
}

/// The client's neighbour entry for `vip` pinned to `vmac`: requests go
/// to director1 (master) only; then director1's link goes down, director2
/// takes instance `instance` over (the VIP on its `iface`), and the same
/// pinned entry reaches it. Neither daemon failed to update the
/// dataplane's set of virtual MACs (a backup starting up clears an entry
/// it never had: no error either).
fn pinned_entry_survives_failover(
    lab: &Lab,
    daemons: [&director_tests::Proc; 2],
    vip: std::net::IpAddr,
    vmac: &str,
    instance: &str,
    iface: &str,
) -> Result<()> {
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    let family = if vip.is_ipv6() { "-6" } else { "-4" };
    lab.client.ns.ip(&[
        family,
        "neigh",
        "replace",
        &vip.to_string(),
        "lladdr",
        vmac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    let addr = SocketAddr::new(vip, 80);
    // The switch learned the virtual MAC on the master's port (a backup
    // that speaks from it, even once, would take its traffic).
    let fdb = lab.switch().exec("bridge", &["fdb", "show"])?;
    let fdb = String::from_utf8_lossy(&fdb.stdout).to_string();
    ensure!(
        fdb.lines()
            .any(|l| l.starts_with(vmac) && l.contains("p-director1")),
        "the switch sends the virtual MAC elsewhere: {fdb}"
    );
    let before = (new_flows(&s1)?, new_flows(&s2)?);
    let t = lab
        .client
        .run(move || http::hammer(addr, 20, Duration::from_secs(2)))?;
    ensure!(t.ok == 20, "through the virtual MAC: {t:?}");
    let after = (new_flows(&s1)?, new_flows(&s2)?);
    ensure!(
        after.0 >= before.0 + 20 && after.1 == before.1,
        "the master placed {} and the backup {} of 20 flows",
        after.0 - before.0,
        after.1 - before.1
    );
    // The master's link goes down: the backup takes the VIP and the
    // virtual MAC; the client's pinned entry now reaches it.
    lab.directors[0].ns.ip(&["link", "set", "eth0", "down"])?;
    scenario::wait_vrrp_state(&s2, instance, "master", Duration::from_secs(5))?;
    let b = vmac_interface_named(lab, 1, iface)?;
    ensure!(b.contains(&vip.to_string()), "new master: {b}");
    let before = new_flows(&s2)?;
    let t = lab
        .client
        .run(move || http::hammer(addr, 20, Duration::from_secs(2)))?;
    ensure!(t.ok == 20, "after the failover: {t:?}");
    ensure!(
        new_flows(&s2)? >= before + 20,
        "the new master did not carry the requests"
    );
    let neigh = lab
        .client
        .ns
        .ip(&[family, "neigh", "show", &vip.to_string(), "dev", "eth0"])?;
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    ensure!(neigh.contains(vmac), "the client's entry moved: {neigh}");
    for d in daemons {
        ensure!(
            !d.log()
                .contains("cannot update the dataplane's virtual MACs"),
            "{}",
            d.log()
        );
    }
    Ok(())
}

/// Frames from the virtual MAC that reach the switch on the backup's
/// (director2's) port while the client asks both directors for their own
/// addresses by ARP: broadcasts that reach the backup's macvlan too, which
/// must not answer from the shared MAC (the switch would then send the
/// virtual MAC's traffic to the backup).
fn backup_frames_from(lab: &Lab, vmac: &str) -> Result<String> {
    let capture = format!(
        "timeout 3 tcpdump -n -e -l -Q in -i {} 'ether src {vmac}' 2>/dev/null; true",
        lab.directors[1].port
    );
    std::thread::scope(|s| {
        let seen = s.spawn(|| lab.switch().exec("sh", &["-c", &capture]));
        std::thread::sleep(Duration::from_secs(1));
        for d in &lab.directors {
            let ip = d.ip.to_string();
            // (No entry yet is fine.)
            let _ = lab.client.ns.ip(&["neigh", "del", &ip, "dev", "eth0"]);
            lab.client.ns.exec("ping", &["-c", "1", "-W", "1", &ip])?;
        }
        let out = seen.join().map_err(|_| anyhow!("the capture panicked"))??;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    })
}

#[test]
fn a_pinned_arp_entry_for_the_virtual_mac_survives_a_failover() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let (d1, d2) = scenario::vrrp_pair(&lab, "version = 3\nadvert_int = 0.1\nuse_vmac = true")?;

    // Both have the interface; only the master holds the VIP on it.
    let (m, b) = (vmac_interface(&lab, 0)?, vmac_interface(&lab, 1)?);
    ensure!(
        m.contains(VMAC) && m.contains(&format!("{VIP}/32")),
        "master: {m}"
    );
    ensure!(
        b.contains(VMAC) && !b.contains(&VIP.to_string()),
        "backup: {b}"
    );
    let heard = backup_frames_from(&lab, VMAC)?;
    ensure!(
        heard.trim().is_empty(),
        "the backup spoke from the virtual MAC:\n{heard}"
    );

    pinned_entry_survives_failover(&lab, [&d1, &d2], VIP.into(), VMAC, "VI_1", "vrrp.51")
}

/// A config with two instances naming the same virtual-MAC interface, or
/// a name that is no interface name, is refused with the key.
#[test]
fn bad_use_vmac_is_refused() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("vmac-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("d.toml");
    let base = "[global]\ninterface = \"eth0\"\n\n[[vrrp_instance]]\nname = \"A\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"10.0.0.100\"]\nuse_vmac = \"vm0\"\n\n[[vrrp_instance]]\nname = \"B\"\nvirtual_router_id = 52\n";
    for (tail, want) in [
        (
            "virtual_ipaddress = [\"10.0.0.101\"]\nuse_vmac = \"vm0\"\n",
            "another instance's virtual MAC interface",
        ),
        (
            "virtual_ipaddress = [\"10.0.0.101\"]\nuse_vmac = \"much-too-long-name\"\n",
            "not an interface name",
        ),
    ] {
        std::fs::write(&path, format!("{base}{tail}"))?;
        let out = std::process::Command::new(director_tests::director_bin()?)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("use_vmac") && err.contains(want),
            "{tail}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// IPv6: the VIP lives on the macvlan with 00:00:5e:00:02:VRID (RFC 5798's
/// IPv6 virtual MAC), which has no link-local address of its own (adverts
/// come from the base interface's); a client whose neighbour entry for the
/// VIP is pinned to the virtual MAC keeps being served across a failover,
/// by the new master.
#[test]
fn ipv6_a_pinned_neighbour_entry_for_the_virtual_mac_survives_a_failover() -> Result<()> {
    use director_tests::lab::VIP6;
    const VMAC6: &str = "00:00:5e:00:02:3d"; // VRID 61
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let servers: Vec<String> = lab
        .real_servers
        .iter()
        .map(|r| r.ip6().to_string())
        .collect();
    let mut procs = Vec::new();
    for (i, prio) in [(0usize, 150u8), (1, 100)] {
        let name = format!("director{}", i + 1);
        let mut c = scenario::global_config(&lab, &name)?;
        c.push_str(&format!(
            "\n[[vrrp_instance]]\nname = \"VI_6\"\nvirtual_router_id = 61\npriority = {prio}\nversion = 3\nadvert_int = 0.1\nuse_vmac = true\nvirtual_ipaddress = [\"{VIP6}\"]\n"
        ));
        c.push_str(&scenario::virtual_server(
            &VIP6.to_string(),
            80,
            &servers,
            &[],
        ));
        let path = lab.write(&format!("{name}.toml"), &c)?;
        procs.push(scenario::spawn_director(&lab, i, &path)?);
    }
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    scenario::wait_vrrp_state(&s1, "VI_6", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_6", "backup", Duration::from_secs(10))?;
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    // Adverts come from the base interface's link-local address.
    scenario::wait_status(&s2, Duration::from_secs(5), |st| {
        st["vrrp"][0]["master_address"]
            .as_str()
            .is_some_and(|m| m.starts_with("fe80::"))
    })?;
    let show = |i: usize, what: &[&str]| -> Result<String> {
        let mut args = vec!["-6", "-br"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["dev", "vrrp.61"]);
        let out = lab.directors[i].ns.ip(&args)?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (m, b) = (show(0, &["link", "show"])?, show(1, &["link", "show"])?);
    ensure!(m.contains(VMAC6) && b.contains(VMAC6), "{m} / {b}");
    let (m, b) = (show(0, &["addr", "show"])?, show(1, &["addr", "show"])?);
    ensure!(
        m.contains(&VIP6.to_string()) && !m.contains("fe80:"),
        "master's virtual-MAC interface: {m}"
    );
    ensure!(
        !b.contains(&VIP6.to_string()) && !b.contains("fe80:"),
        "backup's virtual-MAC interface: {b}"
    );
    pinned_entry_survives_failover(
        &lab,
        [&procs[0], &procs[1]],
        VIP6.into(),
        VMAC6,
        "VI_6",
        "vrrp.61",
    )
}

/// The interface index of `iface` in director `i`'s namespace (None: no
/// such interface).
fn ifindex(lab: &Lab, i: usize, iface: &str) -> Result<Option<u32>> {
    let out = lab.directors[i].ns.ip(&["-o", "link", "show"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "7: vrrp.51@eth0: <...> ..."
    Ok(text.lines().find_map(|l| {
        let mut f = l.split(':');
        let index = f.next()?.trim().parse().ok()?;
        let name = f.next()?.trim();
        (name.split('@').next() == Some(iface)).then_some(index)
    }))
}

/// Source MACs of the VRRP adverts that reach the switch from director
/// `i`'s port in one second.
fn advert_sources(lab: &Lab, i: usize) -> Result<Vec<String>> {
    let capture = format!(
        "timeout 1 tcpdump -n -e -l -Q in -i {} 'ip proto 112' 2>/dev/null; true",
        lab.directors[i].port
    );
    let out = lab.switch().exec("sh", &["-c", &capture])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect())
}

/// `vmac_xmit_base`: the adverts leave from the interface's own MAC (the
/// addresses still live on the macvlan with the virtual MAC; without it
/// they leave from the virtual MAC). The macvlan is kept across a restart
/// (`director restart`: the same interface, not re-created) and removed at
/// stop.
#[test]
fn vmac_xmit_base_and_the_macvlan_kept_across_a_restart_removed_at_stop() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let fast = "version = 3\nadvert_int = 0.1\nuse_vmac = true";
    let c1 = scenario::vrrp_config(
        &lab,
        "director1",
        150,
        &format!("{fast}\nvmac_xmit_base = true"),
    )?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, fast)?;
    let (mut d1, _d2) = scenario::vrrp_pair_of(&lab, &c1, &c2)?;
    let own = lab.directors[0].mac()?;
    let m = vmac_interface(&lab, 0)?;
    ensure!(
        m.contains(VMAC) && m.contains(&format!("{VIP}/32")),
        "master: {m}"
    );
    let sources = advert_sources(&lab, 0)?;
    ensure!(
        sources.len() >= 5 && sources.iter().all(|s| *s == own),
        "the master's adverts came from {sources:?}, not its own {own}"
    );
    let before = ifindex(&lab, 0, "vrrp.51")?.ok_or_else(|| anyhow!("no vrrp.51"))?;
    let s1 = lab.state_dir("director1")?;
    let (ok, err) = scenario::director_cli(&["restart"], &s1)?;
    ensure!(ok, "director restart: {err}");
    d1.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("VRRP state taken over from the previous process")
    })?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;
    ensure!(
        ifindex(&lab, 0, "vrrp.51")? == Some(before),
        "the restart re-created the macvlan"
    );
    let m = vmac_interface(&lab, 0)?;
    ensure!(m.contains(&format!("{VIP}/32")), "after the restart: {m}");
    d1.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5))?;
    ensure!(
        ifindex(&lab, 0, "vrrp.51")?.is_none(),
        "the macvlan outlived the daemon's stop: {}",
        vmac_interface(&lab, 0)?
    );
    // The backup (no vmac_xmit_base) became master: its adverts leave
    // from the virtual MAC.
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    let sources = advert_sources(&lab, 1)?;
    ensure!(
        sources.len() >= 5 && sources.iter().all(|s| s == VMAC),
        "the new master's adverts came from {sources:?}, not {VMAC}"
    );
    Ok(())
}
