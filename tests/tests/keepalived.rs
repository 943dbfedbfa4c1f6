//! Interop with the real keepalived (Debian's 2.2.7) in the lab: one
//! virtual router made of a director and a keepalived node, each side
//! failing over to the other. The keepalived node runs the director's
//! dataplane without VRRP, so the VIP serves HTTP whoever holds it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, Proc, http, lab::VIP, scenario};
use nix::sys::signal::Signal;

fn lab() -> Result<Lab> {
    Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })
}

/// keepalived on director `i` of the lab.
fn keepalived(lab: &Lab, i: usize, priority: u8, version: u8, interval: &str) -> Result<Proc> {
    let conf = scenario::keepalived_conf(&format!("ka{i}"), priority, version, interval);
    Ok(scenario::spawn_keepalived(lab, i, &conf)?.proc)
}

/// The director's dataplane alone (no VRRP) on director `i`.
fn dataplane_only(lab: &Lab, i: usize) -> Result<Proc> {
    let name = format!("director{}", i + 1);
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let config = scenario::http_config(lab, &name, &servers)?;
    let path = lab.write(&format!("{name}-dp.toml"), &config)?;
    scenario::spawn_director(lab, i, &path)
}

fn director_vrrp(lab: &Lab, i: usize, priority: u8, extra: &str) -> Result<Proc> {
    let name = format!("director{}", i + 1);
    let config = scenario::vrrp_config(lab, &name, priority, extra)?;
    let path = lab.write(&format!("{name}.toml"), &config)?;
    scenario::spawn_director(lab, i, &path)
}

fn keepalived_state(log: &str) -> Option<&'static str> {
    let master = log.rfind("Entering MASTER STATE");
    let backup = log.rfind("Entering BACKUP STATE");
    match (master, backup) {
        (Some(m), Some(b)) if m > b => Some("master"),
        (Some(_), None) => Some("master"),
        (_, Some(_)) => Some("backup"),
        _ => None,
    }
}

fn wait_keepalived(k: &mut Proc, state: &'static str, timeout: Duration) -> Result<()> {
    k.wait_for_log(timeout, |log| keepalived_state(log) == Some(state))
        .with_context(|| format!("keepalived never became {state}"))
}

fn requests_work(lab: &Lab) -> Result<()> {
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 20, Duration::from_secs(2)))?;
    ensure!(t.ok == 20, "requests to the VIP: {t:?}");
    Ok(())
}

const FAST: &str = "version = 3\nadvert_int = 0.1";

#[test]
fn director_master_keepalived_backup() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let mut d1 = director_vrrp(&lab, 0, 150, FAST)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    let _dp2 = dataplane_only(&lab, 1)?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    let mut ka = keepalived(&lab, 1, 100, 3, "0.1")?;
    wait_keepalived(&mut ka, "backup", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        keepalived_state(&ka.log()) == Some("backup"),
        "{}",
        ka.log()
    );
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    requests_work(&lab)?;

    // The director dies: keepalived takes the VIP and announces it; the
    // dataplane beside it carries the requests (the dead director's still
    // forwards, so only this proves the takeover).
    d1.stop(Signal::SIGKILL, Duration::from_secs(2))?;
    wait_keepalived(&mut ka, "master", Duration::from_secs(5))?;
    scenario::assert_carries(&lab, 1, VIP.into(), &s2, 20)?;

    // watch-vrrp decodes keepalived's adverts: one master, no split brain.
    let w = scenario::watch_vrrp(&lab.client.ns, 1.5)?;
    let r = &w[0];
    ensure!(r["vrid"] == 51 && r["split_brain"] == false, "{w}");
    ensure!(r["advertisers"][0]["address"] == "10.0.0.11", "{w}");
    ensure!(r["advertisers"][0]["priority"] == 100, "{w}");

    // The director returns with a higher priority: keepalived yields.
    let _d1 = director_vrrp(&lab, 0, 150, FAST)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    wait_keepalived(&mut ka, "backup", Duration::from_secs(5))?;
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 20)?;
    Ok(())
}

#[test]
fn keepalived_master_director_backup() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let _dp2 = dataplane_only(&lab, 1)?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    let mut ka = keepalived(&lab, 1, 150, 2, "1")?;
    wait_keepalived(&mut ka, "master", Duration::from_secs(10))?;
    // The director as a v2 backup at keepalived's 1 s.
    let mut d1 = director_vrrp(&lab, 0, 100, "version = 2\nadvert_int = 1")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(10))?;
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    std::thread::sleep(Duration::from_millis(2500));
    let st = scenario::status(&s1)?;
    ensure!(st["vrrp"][0]["state"] == "backup", "{st}");
    ensure!(st["vrrp"][0]["master_address"] == "10.0.0.11", "{st}");
    ensure!(
        st["vrrp"][0]["adverts_received"].as_u64() >= Some(2),
        "{st}"
    );
    requests_work(&lab)?;

    // keepalived dies: the director takes over within ~3.6 s (v2, 1 s),
    // announces the VIP and carries the requests.
    ka.stop(Signal::SIGKILL, Duration::from_secs(2))?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(6))?;
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 20)?;

    // keepalived comes back higher: the director yields to it.
    let mut ka = keepalived(&lab, 1, 150, 2, "1")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(10))?;
    wait_keepalived(&mut ka, "master", Duration::from_secs(10))?;
    scenario::assert_carries(&lab, 1, VIP.into(), &s2, 20)?;
    drop(d1.stop(Signal::SIGTERM, Duration::from_secs(5)));
    Ok(())
}

#[test]
fn tshark_decodes_our_adverts_with_good_checksums() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let pcap = lab.path("vrrp.pcap");
    let mut cap = lab.client.ns.spawn(
        "tcpdump",
        &[
            "-Z",
            "root",
            "-c",
            "5",
            "-i",
            "eth0",
            "-U",
            "-w",
            &pcap.to_string_lossy(),
            "ip proto 112",
        ],
        &lab.path("tcpdump.log"),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let _d1 = director_vrrp(&lab, 0, 150, "version = 3\nadvert_int = 0.1")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    // tcpdump exits after five adverts.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cap.running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = std::process::Command::new("tshark")
        .args(["-r"])
        .arg(&pcap)
        .arg("-V")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let adverts = text.matches("Virtual Router Redundancy Protocol").count();
    ensure!(adverts >= 3, "tshark saw {adverts} adverts:\n{text}");
    ensure!(
        text.matches("[Checksum Status: Good]").count() == adverts,
        "checksums not all correct:\n{text}"
    );
    ensure!(text.contains("Virtual Rtr ID: 51"), "{text}");
    Ok(())
}
