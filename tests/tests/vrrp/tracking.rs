//! A failing tracked script moves the VIP; a sync group moves its instances together.

use std::time::Duration;

use anyhow::{Result, ensure};
use director_tests::scenario;

use super::*;

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
    let (_d1, _d2) = pair(&lab, &c1, &c2)?;
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
