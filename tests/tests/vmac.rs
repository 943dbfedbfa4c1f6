//! `use_vmac`: the VIP lives on a macvlan with the virtual router's MAC
//! (00:00:5e:00:01:VRID), so a failover changes no client's ARP cache. A
//! client whose ARP entry for the VIP is pinned to the virtual MAC (`nud
//! permanent`: announcements cannot move it) keeps being served across a
//! failover, by the new master (its counters carry the requests); the
//! backup never forwards frames addressed to the virtual MAC.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
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

/// What `ip -br addr show dev vrrp.51` prints in a namespace (empty when
/// there is no such interface).
fn vmac_interface(lab: &Lab, i: usize) -> Result<String> {
    let out = lab.directors[i]
        .ns
        .ip(&["-br", "link", "show", "dev", "vrrp.51"])?;
    let addrs = lab.directors[i]
        .ns
        .ip(&["-br", "addr", "show", "dev", "vrrp.51"])?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&addrs.stdout)
    ))
}

#[test]
fn a_pinned_arp_entry_for_the_virtual_mac_survives_a_failover() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let (d1, d2) = scenario::vrrp_pair(&lab, "version = 3\nadvert_int = 0.1\nuse_vmac = true")?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);

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

    // The client's entry for the VIP: the virtual MAC, pinned.
    lab.client.ns.ip(&[
        "neigh",
        "replace",
        &VIP.to_string(),
        "lladdr",
        VMAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    let vip = SocketAddr::from((VIP, 80));
    let before = (new_flows(&s1)?, new_flows(&s2)?);
    let t = lab
        .client
        .run(move || http::hammer(vip, 20, Duration::from_secs(2)))?;
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
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    let b = vmac_interface(&lab, 1)?;
    ensure!(b.contains(&format!("{VIP}/32")), "new master: {b}");
    let before = new_flows(&s2)?;
    let t = lab
        .client
        .run(move || http::hammer(vip, 20, Duration::from_secs(2)))?;
    ensure!(t.ok == 20, "after the failover: {t:?}");
    ensure!(
        new_flows(&s2)? >= before + 20,
        "the new master did not carry the requests"
    );
    let neigh = lab
        .client
        .ns
        .ip(&["neigh", "show", &VIP.to_string(), "dev", "eth0"])?;
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    ensure!(neigh.contains(VMAC), "the client's entry moved: {neigh}");
    // The dataplane's set of virtual MACs took every change (a backup
    // starting up clears an entry it never had: no error either).
    for d in [&d1, &d2] {
        ensure!(
            !d.log()
                .contains("cannot update the dataplane's virtual MACs"),
            "{}",
            d.log()
        );
    }
    Ok(())
}

/// A config asking for a virtual MAC on an IPv6 instance, or two
/// instances naming the same interface, is refused with the key.
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
            "virtual_ipaddress = [\"fd00::100\"]\nuse_vmac = true\n",
            "IPv4 instances",
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
