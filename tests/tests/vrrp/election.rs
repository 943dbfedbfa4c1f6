//! Election, failover on kill -9, preemption and nopreempt, graceful handover, unicast peers and authentication.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{http, lab::VIP, scenario};
use nix::sys::signal::Signal;

use super::*;

#[test]
fn failover_preemption_and_graceful_handover() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let c1 = scenario::vrrp_config(&lab, "director1", 150, FAST)?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, FAST)?;
    let (mut d1, mut d2) = pair(&lab, &c1, &c2)?;
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    ensure!(
        lab.directors[0].holds_vip()? && !lab.directors[1].holds_vip()?,
        "VIP placement"
    );
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 20, Duration::from_secs(2)))?;
    ensure!(t.ok == 20, "through the master: {t:?}");
    let st = scenario::status(&s2)?;
    ensure!(st["vrrp"][0]["master_address"] == "10.0.0.10", "{st}");
    ensure!(st["vrrp"][0]["virtual_router_id"] == 51, "{st}");
    ensure!(st["vrrp"][0]["priority"] == 100, "{st}");
    let before = st["vrrp"][0]["transitions"].as_u64().unwrap_or(0);
    // Takeovers the backup logged so far: at the pair's start it may have
    // been master a moment (its master-down timer ran out before the
    // starting master's first advert); those do not count below.
    let takeover =
        |l: &&str| l.contains("VRRP state change") && l.contains("old=\"backup\" new=\"master\"");
    let takeovers_before = d2.log().lines().filter(takeover).count();

    // kill -9 the master: the backup takes over and requests resume.
    let killed = Instant::now();
    d1.stop(Signal::SIGKILL, Duration::from_secs(2))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    let took = killed.elapsed();
    ensure!(took < Duration::from_secs(2), "takeover took {took:?}");
    ensure!(
        lab.directors[1].holds_vip()?,
        "the new master does not hold the VIP"
    );
    // The killed master's pinned dataplane still forwards and its kernel
    // still holds the VIP: only the client's neighbour entry and the new
    // master's counters tell a takeover from that.
    scenario::assert_carries(&lab, 1, VIP.into(), &s2, 20)?;

    // The old master returns with a higher priority and preempts; on its
    // way up it drops the VIP it left behind.
    let mut d1 = start(&lab, 0, &c1)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    ensure!(
        lab.directors[0].holds_vip()? && !lab.directors[1].holds_vip()?,
        "VIP after preemption"
    );
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 20)?;
    let trans = scenario::status(&s2)?["vrrp"][0]["transitions"].as_u64();
    ensure!(
        trans == Some(before + 2),
        "director2 transitions {trans:?}, {before} before the failover"
    );

    // Graceful stop: priority 0, the backup takes over after its skew time
    // (0.061 s at priority 100 and 0.1 s adverts), well before 3 intervals
    // (0.36 s): timed by the two daemons' own log stamps (one clock), from
    // the master's "stopping" to the backup's Backup -> Master line.
    let code = d1.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    ensure!(code == Some(0), "exit {code:?}");
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    ensure!(
        !lab.directors[0].holds_vip()?,
        "a stopped master kept the VIP"
    );
    let stopping = d1
        .log()
        .lines()
        .filter(|l| l.contains("signal=\"SIGTERM\"") && l.contains("stopping"))
        .filter_map(scenario::log_time)
        .next_back()
        .context("no stopping line in the master's log")?;
    let took_over = d2
        .log()
        .lines()
        .filter(|l| l.contains("VRRP state change") && l.contains("old=\"backup\" new=\"master\""))
        .filter_map(scenario::log_time)
        .next_back()
        .context("no takeover line in the backup's log")?;
    let took = took_over - stopping;
    ensure!(
        (0.0..0.36).contains(&took),
        "graceful handover took {took:.3} s (master-down interval 0.36 s)"
    );
    // The backup's own record of its two takeovers since the pair formed
    // (the kill, the graceful stop).
    let log = d2.log();
    let takeovers = log.lines().filter(takeover).count() - takeovers_before;
    ensure!(takeovers == 2, "{takeovers} takeovers logged:\n{log}");
    d2.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn nopreempt_keeps_the_current_master() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let extra = format!("{FAST}\nnopreempt = true");
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &extra)?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, &extra)?;
    // director2 alone first: it becomes master.
    let _d2 = start(&lab, 1, &c2)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(10))?;
    // director1, with a higher priority, joins and stays backup.
    let _d1 = start(&lab, 0, &c1)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(scenario::vrrp_state(&s1, "VI_1").as_deref() == Some("backup"));
    ensure!(scenario::vrrp_state(&s2, "VI_1").as_deref() == Some("master"));
    Ok(())
}

#[test]
fn unicast_peers_and_authentication() -> Result<()> {
    let lab = lab()?;
    let s2 = lab.state_dir("director2")?;
    let extra = |peer: &str, pass: &str| {
        format!(
            "unicast_peer = [\"{peer}\"]\nauthentication = {{ auth_type = \"PASS\", auth_pass = \"{pass}\" }}"
        )
    };
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &extra("10.0.0.11", "s3cret"))?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, &extra("10.0.0.10", "s3cret"))?;
    let (mut d1, _d2) = pair(&lab, &c1, &c2)?;
    let st = scenario::status(&s2)?;
    ensure!(st["vrrp"][0]["adverts_received"].as_u64() > Some(0), "{st}");
    // Unicast means unicast: on the master's switch port, adverts go to
    // the peer and none to the multicast group.
    let port = &lab.directors[0].port;
    let out = lab.switch().exec(
        "sh",
        &[
            "-c",
            &format!("timeout 3 tcpdump -n -l -i {port} 'ip proto 112' 2>/dev/null; true"),
        ],
    )?;
    let seen = String::from_utf8_lossy(&out.stdout).to_string();
    let to_peer = seen.matches("10.0.0.10 > 10.0.0.11").count();
    ensure!(to_peer >= 2, "no unicast adverts seen (v2, 1 s):\n{seen}");
    ensure!(
        !seen.contains("224.0.0.18"),
        "adverts to the multicast group with unicast_peer set:\n{seen}"
    );
    d1.stop(Signal::SIGKILL, Duration::from_secs(2))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(6))?;
    Ok(())
}

#[test]
fn wrong_password_is_rejected_and_counted() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let pass =
        |p: &str| format!("authentication = {{ auth_type = \"PASS\", auth_pass = \"{p}\" }}");
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &pass("right"))?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, &pass("wrong"))?;
    let _d1 = start(&lab, 0, &c1)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    let _d2 = start(&lab, 1, &c2)?;
    // director2 never accepts director1's adverts: it becomes master too.
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(10))?;
    let st = scenario::status(&s2)?;
    ensure!(st["vrrp"][0]["rejected"]["auth"].as_u64() > Some(0), "{st}");
    // watch-vrrp, from the client, sees both advertise: a split brain.
    let w = scenario::watch_vrrp(&lab.client.ns, 2.5)?;
    let r = w
        .as_array()
        .and_then(|a| a.iter().find(|r| r["vrid"] == 51))
        .cloned()
        .unwrap_or_default();
    ensure!(r["split_brain"] == true, "{w}");
    ensure!(r["advertisers"].as_array().map(Vec::len) == Some(2), "{w}");
    Ok(())
}
