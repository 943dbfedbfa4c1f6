//! VRRP between two directors in the lab: election, failover on kill -9,
//! preemption (and nopreempt), graceful handover, unicast, IPv6.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

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

fn start(lab: &Lab, i: usize, config: &str) -> Result<Proc> {
    let name = format!("director{}", i + 1);
    let path = lab.write(&format!("{name}.toml"), config)?;
    scenario::spawn_director(lab, i, &path)
}

const FAST: &str = "version = 3\nadvert_int = 0.1";

#[test]
fn failover_preemption_and_graceful_handover() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let c1 = scenario::vrrp_config(&lab, "director1", 150, FAST)?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, FAST)?;
    let mut d1 = start(&lab, 0, &c1)?;
    let mut d2 = start(&lab, 1, &c2)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
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
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let extra = |peer: &str, pass: &str| {
        format!(
            "unicast_peer = [\"{peer}\"]\nauthentication = {{ auth_type = \"PASS\", auth_pass = \"{pass}\" }}"
        )
    };
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &extra("10.0.0.11", "s3cret"))?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, &extra("10.0.0.10", "s3cret"))?;
    let mut d1 = start(&lab, 0, &c1)?;
    let _d2 = start(&lab, 1, &c2)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
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

/// An IPv6 pair (VRRP v3, 100 ms) serving fd00::100; director1 master.
fn ipv6_pair(lab: &Lab) -> Result<(Proc, Proc)> {
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
fn vip6_line(lab: &Lab, i: usize) -> Result<String> {
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
fn ensure_vip6_flags(lab: &Lab, i: usize) -> Result<()> {
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

#[test]
fn a_failing_tracked_script_moves_the_vip() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    // The check: "is the flag file there" (as "is nginx alive" would be).
    let flag = lab.path("nginx-alive");
    std::fs::write(&flag, "")?;
    let script = format!(
        "\n[[vrrp_script]]\nname = \"chk_nginx\"\nscript = \"/usr/bin/test -e {}\"\ninterval = 0.2\nweight = -100\nfall = 2\nrise = 2\n",
        flag.display()
    );
    let extra = format!("{FAST}\ntrack_script = [\"chk_nginx\"]");
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &extra)? + &script;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, FAST)?;
    let _d1 = start(&lab, 0, &c1)?;
    let _d2 = start(&lab, 1, &c2)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    // The check fails on the master: its priority drops to 50, the backup
    // (100) preempts and takes the VIP.
    std::fs::remove_file(&flag)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(5))?;
    let st = scenario::status(&s1)?;
    ensure!(st["vrrp"][0]["effective_priority"] == 50, "{st}");
    ensure!(st["vrrp"][0]["priority"] == 150, "{st}");
    ensure!(lab.directors[1].holds_vip()? && !lab.directors[0].holds_vip()?);
    // It recovers: priority 150 again, and it preempts back.
    std::fs::write(&flag, "")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn sync_group_moves_instances_together_and_notifies() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let flag = lab.path("healthy");
    std::fs::write(&flag, "")?;
    let notify_log = |n: usize| lab.path(&format!("notify{n}.log"));
    let config = |name: &str, n: usize, priority: u8, track: bool| -> Result<String> {
        let mut c = scenario::global_config(&lab, name)?;
        let log = notify_log(n);
        for (vi, vrid, vip) in [("VI_1", 51, "10.0.0.100"), ("VI_2", 52, "10.0.0.101")] {
            c.push_str(&format!(
                "\n[[vrrp_instance]]\nname = \"{vi}\"\nvirtual_router_id = {vrid}\npriority = {priority}\n{FAST}\nvirtual_ipaddress = [\"{vip}\"]\nnotify = \"/bin/sh -c 'echo \\\"$*\\\" >> {}' notify\"\n",
                log.display()
            ));
            if track && vi == "VI_1" {
                c.push_str("track_script = [\"chk\"]\n");
            }
        }
        c.push_str("\n[[vrrp_sync_group]]\nname = \"G\"\ngroup = [\"VI_1\", \"VI_2\"]\n");
        if track {
            c.push_str(&format!(
                "\n[[vrrp_script]]\nname = \"chk\"\nscript = \"/usr/bin/test -e {}\"\ninterval = 0.2\nweight = -100\n",
                flag.display()
            ));
        }
        Ok(c)
    };
    let _d1 = start(&lab, 0, &config("director1", 1, 150, true)?)?;
    let _d2 = start(&lab, 1, &config("director2", 2, 100, false)?)?;
    for vi in ["VI_1", "VI_2"] {
        scenario::wait_vrrp_state(&s1, vi, "master", Duration::from_secs(10))?;
        scenario::wait_vrrp_state(&s2, vi, "backup", Duration::from_secs(10))?;
    }
    // Only VI_1 tracks the check; when it fails, VI_2 goes with it.
    std::fs::remove_file(&flag)?;
    for vi in ["VI_1", "VI_2"] {
        scenario::wait_vrrp_state(&s2, vi, "master", Duration::from_secs(5))?;
        scenario::wait_vrrp_state(&s1, vi, "backup", Duration::from_secs(5))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    for vi in ["VI_1", "VI_2"] {
        ensure!(
            scenario::vrrp_state(&s1, vi).as_deref() == Some("backup"),
            "{vi} on director1 flapped"
        );
    }
    // Healthy again: director1 preempts, both instances come back.
    std::fs::write(&flag, "")?;
    for vi in ["VI_1", "VI_2"] {
        scenario::wait_vrrp_state(&s1, vi, "master", Duration::from_secs(5))?;
        scenario::wait_vrrp_state(&s2, vi, "backup", Duration::from_secs(5))?;
    }
    // The generic notify script saw every state change, with keepalived's
    // arguments (the scripts run off the loop: waited for).
    for line in [
        "INSTANCE VI_1 MASTER 150",
        "INSTANCE VI_1 BACKUP 50",
        "INSTANCE VI_2 BACKUP 150",
    ] {
        wait_lines(&notify_log(1), &[line], Duration::from_secs(5))?;
    }
    Ok(())
}

#[test]
fn split_brain_is_detected_reported_and_healed() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let log = lab.path("notify.log");
    let extra = format!(
        "{FAST}\nnotify = \"/bin/sh -c 'echo \\\"$*\\\" >> {}' notify\"",
        log.display()
    );
    let d1 = start(
        &lab,
        0,
        &scenario::vrrp_config(&lab, "director1", 150, &extra)?,
    )?;
    let d2 = start(
        &lab,
        1,
        &scenario::vrrp_config(&lab, "director2", 100, &extra)?,
    )?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    scenario::wait_status(&s2, Duration::from_secs(5), |s| {
        s["vrrp"][0]["peer_seen"] == true
    })?;
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 10)?;

    // A firewall on director2 drops VRRP: it stops hearing the master and
    // takes over too. Two masters.
    let nft = |args: &str| -> Result<()> {
        lab.directors[1].ns.exec("nft", &[args])?;
        Ok(())
    };
    nft("add table inet lab")?;
    nft("add chain inet lab input { type filter hook input priority 0 ; }")?;
    nft("add rule inet lab input meta l4proto 112 drop")?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    ensure!(
        lab.directors[0].holds_vip()? && lab.directors[1].holds_vip()?,
        "both hold the VIP"
    );

    // The partition heals: director1 hears director2's adverts, reports the
    // split brain, asserts itself; within an advert interval or two only
    // one master is left, and it announced the VIP again. Timed by the
    // daemons' own log stamps (one clock): director1's split-brain report
    // to director2's Master -> Backup line.
    nft("delete table inet lab")?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(2))?;
    ensure!(scenario::vrrp_state(&s1, "VI_1").as_deref() == Some("master"));
    ensure!(!lab.directors[1].holds_vip()?, "the loser kept the VIP");
    let st = scenario::status(&s1)?;
    ensure!(st["vrrp"][0]["split_brains"].as_u64() >= Some(1), "{st}");
    let reported = d1
        .log()
        .lines()
        .filter(|l| l.contains("VRRP split brain"))
        .filter_map(scenario::log_time)
        .next_back()
        .context("no split-brain line in director1's log")?;
    let yielded = d2
        .log()
        .lines()
        .filter(|l| l.contains("VRRP state change") && l.contains("old=\"master\" new=\"backup\""))
        .filter_map(scenario::log_time)
        .next_back()
        .context("no yield in director2's log")?;
    let took = yielded - reported;
    ensure!(
        (0.0..0.5).contains(&took),
        "healing took {took:.3} s after the split brain was heard"
    );
    // Its notification, queued off the loop: waited for, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let notes = std::fs::read_to_string(&log).unwrap_or_default();
        if notes.contains("INSTANCE VI_1 SPLIT_BRAIN") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no SPLIT_BRAIN notification: {notes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The winner announced the VIP again: the client, which director2's
    // announcements had moved, is back on director1, which carries it.
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 20)?;
    Ok(())
}

/// A lasting split brain (director2 hears nothing, director1 hears
/// director2's adverts ten times a second) is reported once per 10 s
/// through the generic `notify` with SPLIT_BRAIN, and never runs
/// `notify_stop`.
#[test]
fn a_lasting_split_brain_is_notified_once_and_never_as_a_stop() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let log = lab.path("notify.log");
    let stop = lab.path("stop.log");
    let extra = format!(
        "{FAST}\nnotify = \"/bin/sh -c 'echo \\\"$*\\\" >> {}' notify\"\nnotify_stop = \"/bin/sh -c 'echo stop >> {}'\"",
        log.display(),
        stop.display()
    );
    let _d1 = start(
        &lab,
        0,
        &scenario::vrrp_config(&lab, "director1", 150, &extra)?,
    )?;
    let _d2 = start(
        &lab,
        1,
        &scenario::vrrp_config(&lab, "director2", 100, FAST)?,
    )?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(2));
    let nft = |args: &str| -> Result<()> {
        lab.directors[1].ns.exec("nft", &[args])?;
        Ok(())
    };
    nft("add table inet lab")?;
    nft("add chain inet lab input { type filter hook input priority 0 ; }")?;
    nft("add rule inet lab input meta l4proto 112 drop")?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(scenario::vrrp_state(&s1, "VI_1").as_deref() == Some("master"));
    let st = scenario::status(&s1)?;
    ensure!(
        st["vrrp"][0]["split_brains"].as_u64() >= Some(10),
        "the adverts of the other master were not all counted: {st}"
    );
    let notes = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(
        notes.matches("SPLIT_BRAIN").count() == 1,
        "split brain notified {} times in 3 s:\n{notes}",
        notes.matches("SPLIT_BRAIN").count()
    );
    ensure!(
        !stop.exists(),
        "notify_stop ran during a split brain: {}",
        std::fs::read_to_string(&stop).unwrap_or_default()
    );
    nft("delete table inet lab")?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(3))?;
    Ok(())
}

/// A reload that changes a master's notify script and what it tracks
/// moves nothing: no transition on either side, the VIP stays; the new
/// tracking is in force (its script failing then moves the VIP).
#[test]
fn reloading_notify_or_tracking_does_not_bounce_the_master() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let flag = lab.path("healthy");
    std::fs::write(&flag, "")?;
    let script = format!(
        "\n[[vrrp_script]]\nname = \"chk\"\nscript = \"/usr/bin/test -e {}\"\ninterval = 0.2\nweight = -100\n",
        flag.display()
    );
    let c1 = |extra: &str| -> Result<String> {
        Ok(scenario::vrrp_config(&lab, "director1", 150, &format!("{FAST}\n{extra}"))? + &script)
    };
    let p1 = lab.write("director1.toml", &c1("notify = \"/bin/true\"")?)?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = start(
        &lab,
        1,
        &scenario::vrrp_config(&lab, "director2", 100, FAST)?,
    )?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let transitions = |s: &std::path::Path| -> Result<u64> {
        Ok(scenario::status(s)?["vrrp"][0]["transitions"]
            .as_u64()
            .unwrap_or(0))
    };
    let (t1, t2) = (transitions(&s1)?, transitions(&s2)?);
    std::fs::write(
        &p1,
        c1("notify = \"/bin/sh -c true\"\ntrack_script = [\"chk\"]\ngarp_master_refresh = 30")?,
    )?;
    let (ok, err) = scenario::director_cli(&["reload"], &s1)?;
    ensure!(ok, "reload: {err}");
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        (transitions(&s1)?, transitions(&s2)?) == (t1, t2),
        "the reload moved the VIP: transitions {t1}/{t2} -> {}/{}",
        transitions(&s1)?,
        transitions(&s2)?
    );
    ensure!(lab.directors[0].holds_vip()? && !lab.directors[1].holds_vip()?);
    // The new tracking works.
    std::fs::remove_file(&flag)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    Ok(())
}

/// Waits until the file at `path` holds every line of `want`, in that
/// order (other lines between them allowed); returns its lines.
fn wait_lines(path: &std::path::Path, want: &[&str], timeout: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut rest = lines.iter();
        if want.iter().all(|w| rest.any(|l| l == w)) {
            return Ok(lines);
        }
        ensure!(
            Instant::now() < deadline,
            "{} lacks, in order, {want:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_notify_script_runs_on_its_state_with_its_arguments() -> Result<()> {
    let lab = lab()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    // The maintenance switch of VI_1 (weight 0: any non-zero value is Fault).
    let maint = lab.path("maint");
    std::fs::write(&maint, "0\n")?;
    let log = lab.path("notify.log");
    // Each script writes its own name ($0) and the arguments it was given.
    let script = |args: &str| {
        format!(
            "\"/bin/sh -c 'echo \\\"$0 $*\\\" >> {}' {args}\"",
            log.display()
        )
    };
    let config = |name: &str, priority: u8, scripts: bool| -> Result<String> {
        let mut c = scenario::global_config(&lab, name)?;
        for (vi, vrid, vip) in [("VI_1", 51, "10.0.0.100"), ("VI_2", 52, "10.0.0.101")] {
            c.push_str(&format!(
                "\n[[vrrp_instance]]\nname = \"{vi}\"\nvirtual_router_id = {vrid}\npriority = {priority}\n{FAST}\nvirtual_ipaddress = [\"{vip}\"]\n"
            ));
            if scripts && vi == "VI_1" {
                for state in ["master", "backup", "fault", "stop"] {
                    c.push_str(&format!(
                        "notify_{state} = {}\n",
                        script(&format!("{state} {vi} 'two words'"))
                    ));
                }
                c.push_str("track_file = [\"maint\"]\n");
            }
        }
        c.push_str("\n[[vrrp_sync_group]]\nname = \"G\"\ngroup = [\"VI_1\", \"VI_2\"]\n");
        if scripts {
            for state in ["master", "backup", "fault"] {
                c.push_str(&format!(
                    "notify_{state} = {}\n",
                    script(&format!("group-{state} G"))
                ));
            }
            c.push_str(&format!("notify = {}\n", script("group")));
            c.push_str(&format!(
                "\n[[track_file]]\nname = \"maint\"\nfile = \"{}\"\nweight = 0\n",
                maint.display()
            ));
        }
        Ok(c)
    };
    // director2 first: director1 starts as a backup, then preempts.
    let _d2 = start(&lab, 1, &config("director2", 100, false)?)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(10))?;
    let mut d1 = start(&lab, 0, &config("director1", 150, true)?)?;
    for vi in ["VI_1", "VI_2"] {
        scenario::wait_vrrp_state(&s1, vi, "master", Duration::from_secs(10))?;
    }
    wait_lines(
        &log,
        &[
            "backup VI_1 two words",
            "master VI_1 two words",
            "group-master G",
            "group GROUP G MASTER",
        ],
        Duration::from_secs(5),
    )?;
    // The switch set: Fault for VI_1, and the group with it.
    std::fs::write(&maint, "1\n")?;
    for vi in ["VI_1", "VI_2"] {
        scenario::wait_vrrp_state(&s1, vi, "fault", Duration::from_secs(5))?;
    }
    wait_lines(
        &log,
        &[
            "fault VI_1 two words",
            "group-fault G",
            "group GROUP G FAULT",
        ],
        Duration::from_secs(5),
    )?;
    // Cleared: back through Backup, and director1 preempts again.
    std::fs::write(&maint, "0\n")?;
    for vi in ["VI_1", "VI_2"] {
        scenario::wait_vrrp_state(&s1, vi, "master", Duration::from_secs(5))?;
    }
    // A stop: notify_stop (the group has none).
    let code = d1.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    ensure!(code == Some(0), "exit {code:?}");
    let lines = wait_lines(
        &log,
        &[
            "fault VI_1 two words",
            "backup VI_1 two words",
            "master VI_1 two words",
            "stop VI_1 two words",
        ],
        Duration::from_secs(5),
    )?;
    // Each script ran once per entry into its state and never for VI_2;
    // the group's ran once per change of the group (by the member that
    // moved first, not again for the one that followed).
    let of = |p: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|l| l.starts_with(p))
            .map(String::as_str)
            .collect()
    };
    let instance: Vec<&str> = lines
        .iter()
        .filter(|l| !l.starts_with("group"))
        .map(String::as_str)
        .collect();
    ensure!(
        instance
            == [
                "backup VI_1 two words",
                "master VI_1 two words",
                "fault VI_1 two words",
                "backup VI_1 two words",
                "master VI_1 two words",
                "stop VI_1 two words",
            ],
        "{lines:#?}"
    );
    ensure!(
        of("group ")
            == [
                "group GROUP G BACKUP",
                "group GROUP G MASTER",
                "group GROUP G FAULT",
                "group GROUP G BACKUP",
                "group GROUP G MASTER",
            ],
        "{lines:#?}"
    );
    ensure!(
        of("group-")
            == [
                "group-backup G",
                "group-master G",
                "group-fault G",
                "group-backup G",
                "group-master G",
            ],
        "{lines:#?}"
    );
    Ok(())
}
