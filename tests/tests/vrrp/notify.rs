//! Notify scripts run on their states with their arguments; reloading notify or tracking does not bounce the master.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use director_tests::scenario;
use nix::sys::signal::Signal;

use super::*;

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
pub(crate) fn wait_lines(
    path: &std::path::Path,
    want: &[&str],
    timeout: Duration,
) -> Result<Vec<String>> {
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
    // The group's scripts run by whichever member moved first (VI_2 may
    // preempt before VI_1): each sequence in order, not one against the
    // other.
    wait_lines(
        &log,
        &["backup VI_1 two words", "master VI_1 two words"],
        Duration::from_secs(5),
    )?;
    wait_lines(
        &log,
        &["group-master G", "group GROUP G MASTER"],
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
