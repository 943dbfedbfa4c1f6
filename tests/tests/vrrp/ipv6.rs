//! IPv6 pairs (VRRP v3): failover, also with the master's link down; the VIPs' address flags.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{Lab, Proc, http, scenario};
use nix::sys::signal::Signal;

use super::*;

/// An IPv6 pair (VRRP v3, 100 ms) serving fd00::100; director1 master.
pub(crate) fn ipv6_pair(lab: &Lab) -> Result<(Proc, Proc)> {
    use director_tests::lab::VIP6;
    let config = |name: &str, priority: u8| -> Result<String> {
        let mut c = scenario::global_config(lab, name)?;
        c.push_str(&format!(
            "\n[[vrrp_instance]]\nname = \"VI_6\"\nvirtual_router_id = 61\npriority = {priority}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP6}\"]\n"
        ));
        let servers: Vec<String> = lab
            .real_servers
            .iter()
            .map(|r| r.ip6().to_string())
            .collect();
        c.push_str(&scenario::virtual_server(
            &VIP6.to_string(),
            80,
            &servers,
            &[],
        ));
        Ok(c)
    };
    let d1 = start(lab, 0, &config("director1", 150)?)?;
    let d2 = start(lab, 1, &config("director2", 100)?)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s1, "VI_6", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_6", "backup", Duration::from_secs(10))?;
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    Ok((d1, d2))
}

/// The IPv6 VIP on director `i`'s eth0, as `ip -6 addr` shows it.
pub(crate) fn vip6_line(lab: &Lab, i: usize) -> Result<String> {
    let out = lab.directors[i]
        .ns
        .ip(&["-6", "addr", "show", "dev", "eth0"])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    Ok(text
        .lines()
        .skip_while(|l| !l.contains("fd00::100/128"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

/// The master adds the IPv6 VIP without DAD (usable at once, where the
/// directors' kernels do DAD) and deprecated (never the source of the
/// director's own connections).
pub(crate) fn ensure_vip6_flags(lab: &Lab, i: usize) -> Result<()> {
    let line = vip6_line(lab, i)?;
    ensure!(line.contains("nodad"), "VIP without nodad: {line}");
    ensure!(line.contains("deprecated"), "VIP not deprecated: {line}");
    ensure!(!line.contains("tentative"), "VIP tentative: {line}");
    ensure!(line.contains("preferred_lft 0sec"), "VIP preferred: {line}");
    Ok(())
}

#[test]
fn ipv6_failover() -> Result<()> {
    use director_tests::lab::VIP6;
    let lab = lab()?;
    let s2 = lab.state_dir("director2")?;
    let (mut d1, _d2) = ipv6_pair(&lab)?;
    // IPv6 adverts come from the master's link-local address.
    let st = scenario::wait_status(&s2, Duration::from_secs(5), |s| {
        s["vrrp"][0]["master_address"]
            .as_str()
            .is_some_and(|m| m.starts_with("fe80::"))
    })?;
    ensure!(st["vrrp"][0]["adverts_received"].as_u64() > Some(0), "{st}");
    ensure_vip6_flags(&lab, 0)?;
    let vip = SocketAddr::from((VIP6, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 20, Duration::from_secs(2)))?;
    ensure!(t.ok == 20, "{t:?}");
    d1.stop(Signal::SIGKILL, Duration::from_secs(2))?;
    scenario::wait_vrrp_state(&s2, "VI_6", "master", Duration::from_secs(5))?;
    // The unsolicited neighbour advertisement moved the client over, and
    // the new master carries the traffic.
    ensure_vip6_flags(&lab, 1)?;
    scenario::assert_carries(&lab, 1, VIP6.into(), &s2, 20)?;
    Ok(())
}

/// The IPv6 master dies for real (kill -9 and its link down): the backup
/// announces the VIP with an unsolicited NA and serves; nothing else could
/// have answered.
#[test]
fn ipv6_failover_with_the_masters_link_down() -> Result<()> {
    use director_tests::lab::VIP6;
    let lab = lab()?;
    let s2 = lab.state_dir("director2")?;
    let (mut d1, _d2) = ipv6_pair(&lab)?;
    let vip = SocketAddr::from((VIP6, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(2)))?;
    ensure!(t.ok == 10, "{t:?}");
    d1.stop(Signal::SIGKILL, Duration::from_secs(2))?;
    lab.directors[0].ns.ip(&["link", "set", "eth0", "down"])?;
    scenario::wait_vrrp_state(&s2, "VI_6", "master", Duration::from_secs(5))?;
    ensure_vip6_flags(&lab, 1)?;
    scenario::assert_carries(&lab, 1, VIP6.into(), &s2, 20)?;
    Ok(())
}
