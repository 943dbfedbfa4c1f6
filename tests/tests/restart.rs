//! Restarting or upgrading the master moves no VIP: no priority-0 advert,
//! no transition on the backup, no notification, no lost datagram.
//! (`systemctl restart` under a real systemd: `systemd_vm.rs`.)

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{
    Lab, LabSpec, Proc,
    lab::VIP,
    scenario::{self},
};
use nix::sys::signal::Signal;

const FAST: &str = "version = 3\nadvert_int = 0.1";

/// The tests of this file run one at a time: each restarts a master many
/// times (a process start is a burst of CPU) and one runs BFD at 20 ms
/// timers on this 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lab() -> Result<Lab> {
    Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })
}

/// The pair with a UDP echo service on the VIP, notifications logged per
/// director.
fn pair(lab: &Lab) -> Result<(Proc, Proc)> {
    pair_with(lab, false)
}

/// [`pair`]; with `bfd`, a BFD session between the two (20 ms x 5: at
/// 10 ms x 3 a suite running beside it on 2 cores delayed a packet past
/// 30 ms now and then, restart or not) and `master_bfd` on the backup.
fn pair_with(lab: &Lab, bfd: bool) -> Result<(Proc, Proc)> {
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let config = |i: usize, prio: u8| -> Result<String> {
        let name = format!("director{}", i + 1);
        let notify = lab.path(&format!("notify{}.log", i + 1));
        let mut extra = format!(
            "{FAST}\nnotify = \"/bin/sh -c 'echo \\\"$*\\\" >> {}' notify\"",
            notify.display()
        );
        if bfd && i == 1 {
            extra.push_str("\nmaster_bfd = \"peer\"");
        }
        let mut c = scenario::vrrp_config(lab, &name, prio, &extra)?;
        c.push_str(&scenario::udp_virtual_server(&VIP.to_string(), 7, &servers));
        if bfd {
            c.push_str(&format!(
                "\n[[bfd_instance]]\nname = \"peer\"\nneighbor_ip = \"{}\"\nmin_rx = 20\nmin_tx = 20\nmultiplier = 5\n",
                lab.directors[1 - i].ip
            ));
        }
        Ok(c)
    };
    scenario::vrrp_pair_of(lab, &config(0, 150)?, &config(1, 100)?)
}

/// Every datagram of the probe was answered.
fn none_lost(tally: &director_tests::udp::UdpTally) -> Result<()> {
    ensure!(
        tally.lost() == 0,
        "{} of {} datagrams lost (longest gap {} ms)",
        tally.lost(),
        tally.sent,
        tally.longest_gap
    );
    Ok(())
}

fn instance(state: &Path) -> Result<serde_json::Value> {
    Ok(scenario::status(state)?["vrrp"][0].clone())
}

/// 20 `director restart` of the master at adverts every 100 ms, a
/// datagram every millisecond through the VIP: the backup never changes
/// state, no notification runs on either side, no datagram is lost, and
/// each restart is a new process start in the same PID.
#[test]
fn twenty_restarts_of_the_master_move_no_vip() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab()?;
    let echo = lab.start_udp_echo(VIP.into(), 7)?;
    let (mut d1, mut d2) = pair(&lab)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let backup_before = instance(&s2)?;
    let first = scenario::status(&s1)?;
    let notified = |i: usize| std::fs::read_to_string(lab.path(&format!("notify{i}.log")));
    let (n1, n2) = (notified(1)?, notified(2)?);
    ensure!(
        n1.contains("MASTER") && n2.contains("BACKUP"),
        "{n1} / {n2}"
    );

    // The backup's state changes so far (its start; and, when its
    // master-down timer ran out before the master's first advert, a moment
    // as master): none may follow during the restarts.
    let changes_before = d2.log().matches("VRRP state change").count();
    let udp = SocketAddr::from((VIP, 7));
    let mut starts = vec![first["started_at"].as_f64().unwrap_or(0.0)];
    let ((), tally) =
        director_tests::udp::probe_during(&lab.client.ns, udp, Duration::from_millis(1), || {
            for round in 0..20 {
                let (ok, out) = scenario::director_cli(&["restart"], &s1)?;
                ensure!(ok, "restart {round}: {out}");
                let s = scenario::status(&s1)?;
                ensure!(
                    s["pid"] == first["pid"],
                    "restart {round}: the PID changed ({} -> {})",
                    first["pid"],
                    s["pid"]
                );
                starts.push(s["started_at"].as_f64().unwrap_or(0.0));
                ensure!(
                    s["vrrp"][0]["state"] == "master",
                    "restart {round}: {}",
                    s["vrrp"][0]
                );
                // A few adverts' time between restarts.
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(())
        })?;
    drop(echo);
    eprintln!("20 restarts: {tally:?}");
    starts.dedup();
    ensure!(starts.len() == 21, "not 20 new starts: {starts:?}");
    let backup_after = instance(&s2)?;
    ensure!(
        backup_after["state"] == "backup"
            && backup_after["transitions"] == backup_before["transitions"],
        "the backup moved: before {backup_before}, after {backup_after}"
    );
    ensure!(tally.sent > 5000, "only {} datagrams sent", tally.sent);
    none_lost(&tally)?;
    let (m1, m2) = (notified(1)?, notified(2)?);
    ensure!(
        m1 == n1 && m2 == n2,
        "notifications ran: director1 {n1:?} -> {m1:?}; director2 {n2:?} -> {m2:?}"
    );
    ensure!(lab.directors[0].holds_vip()? && !lab.directors[1].holds_vip()?);
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 10)?;
    let log1 = d1.log();
    let ages: Vec<u64> = log1
        .lines()
        .filter(|l| l.contains("taking over from the previous process"))
        .filter_map(|l| {
            l.split("age_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!("handover age at the new process's start, ms: {ages:?}");
    ensure!(
        log1.matches("VRRP state taken over from the previous process")
            .count()
            == 20,
        "master's log:\n{log1}"
    );
    let log2 = d2.log();
    ensure!(
        log2.matches("VRRP state change").count() == changes_before,
        "the backup changed state during the restarts:\n{log2}"
    );

    // A plain stop still hands the VIP over at once (priority 0).
    d1.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(2))?;
    ensure!(
        !s1.join("handover.json").exists(),
        "a stop for good left a handover"
    );
    d2.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    Ok(())
}

/// With `master_bfd` on the backup (BFD at 20 ms x 5 between the pair),
/// 10 restarts of the master: each hands its BFD session to the next
/// process (the peer told to wait longer meanwhile), so the backup's
/// session never leaves Up and the backup never moves; no datagram lost.
/// (Before the sessions were handed over, the backup saw each restart as
/// a dead master and took the VIP.)
#[test]
fn restarts_with_master_bfd_keep_the_bfd_session_up() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab()?;
    let echo = lab.start_udp_echo(VIP.into(), 7)?;
    let (mut d1, d2) = pair_with(&lab, true)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let up = |st: &serde_json::Value| st["bfd"][0]["state"] == "up";
    scenario::wait_status(&s1, Duration::from_secs(10), up)?;
    scenario::wait_status(&s2, Duration::from_secs(10), up)?;
    let before = scenario::status(&s2)?;
    let udp = SocketAddr::from((VIP, 7));
    let ((), tally) =
        director_tests::udp::probe_during(&lab.client.ns, udp, Duration::from_millis(1), || {
            for round in 0..10 {
                let (ok, out) = scenario::director_cli(&["restart"], &s1)?;
                ensure!(ok, "restart {round}: {out}");
                scenario::wait_status(&s1, Duration::from_secs(5), up)?;
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(())
        })?;
    drop(echo);
    eprintln!("10 restarts with BFD: {tally:?}");
    let after = scenario::status(&s2)?;
    let log1 = d1.log();
    ensure!(
        up(&after) && after["bfd"][0]["transitions"] == before["bfd"][0]["transitions"],
        "the backup's BFD session moved: before {}, after {}",
        before["bfd"][0],
        after["bfd"][0]
    );
    ensure!(
        after["vrrp"][0]["state"] == "backup"
            && after["vrrp"][0]["transitions"] == before["vrrp"][0]["transitions"],
        "the backup moved: before {}, after {}",
        before["vrrp"][0],
        after["vrrp"][0]
    );
    none_lost(&tally)?;
    ensure!(
        log1.matches("BFD session taken over from the previous process")
            .count()
            == 10,
        "master's log:\n{log1}"
    );
    d1.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    // A stop for good is told (AdminDown): the backup takes over at once.
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(1))?;
    drop(d2);
    Ok(())
}

/// A restart the new process could not survive is refused: with a config
/// file that no longer loads, `director restart` fails naming the file and
/// line, and the running master keeps running (same process start, VIP
/// held, backup unmoved).
#[test]
fn a_restart_with_a_broken_config_is_refused() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab()?;
    let (_d1, _d2) = pair(&lab)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let before = scenario::status(&s1)?;
    let config = lab.path("director1.toml");
    let good = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!("{good}\n[[virtual_server]]\naddress = \"not an address\"\n"),
    )?;
    let (ok, out) = scenario::director_cli(&["restart"], &s1)?;
    ensure!(!ok, "restart with a broken config succeeded: {out}");
    ensure!(
        out.contains("director1.toml") && out.contains("address"),
        "the error does not name the file and key: {out}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = scenario::status(&s1)?;
    ensure!(
        after["started_at"] == before["started_at"] && after["vrrp"][0]["state"] == "master",
        "the running daemon changed: {}",
        after["vrrp"][0]
    );
    ensure!(scenario::vrrp_state(&s2, "VI_1").as_deref() == Some("backup"));
    std::fs::write(&config, good)?;
    Ok(())
}
