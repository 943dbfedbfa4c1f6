//! Active-active directors behind ECMP, announced over BGP by BIRD 2 (the
//! lab: `director_tests::ecmp`): a client behind the router reaches the VIP
//! through all three directors; killing one withdraws it and its
//! connections continue on the others (same Maglev tables: same real
//! server); a drained director withdraws its route before it stops, with no
//! failed request.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    ecmp::{EcmpLab, EcmpOptions},
    http,
    lab::VIP,
    scenario,
};

#[test]
fn ecmp_directors_announced_by_bird() -> Result<()> {
    let mut e = EcmpLab::start(3, 2)?;
    // Requests from behind the router spread over the three directors.
    let vip = SocketAddr::from((VIP, 80));
    let t = e
        .far
        .run(move || http::hammer(vip, 90, Duration::from_secs(3)))?;
    ensure!(t.failed == 0 && t.ok == 90, "{t:?}");
    let mut carrying = 0;
    for d in &e.lab.directors {
        let s = scenario::status(&e.lab.state_dir(&d.name)?)?;
        if s["virtual_servers"][0]["packets"].as_u64() > Some(0) {
            carrying += 1;
        }
    }
    ensure!(carrying == 3, "ECMP used {carrying} of 3 directors");

    // Long-lived connections; then director3 dies: the router withdraws
    // it, and every connection - also those it carried - goes on with the
    // same real server.
    let (opened, kept) = e.kill_last_with_open_connections(12)?;
    ensure!(
        opened == 12 && kept == 12,
        "only {kept} of {opened} (of 12) connections kept their real server"
    );

    // Drain director2 under load: its route leaves the router while the
    // daemon still runs, withdraw_wait (3 s) before it stops; nothing
    // fails.
    let s2 = e.lab.state_dir("director2")?;
    let pid = e.directors[1].pid().context("director2 pid")?;
    let alive =
        move || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    let ((withdrawn_at, exited_at), tally) = http::under_load(&e.far, vip, || {
        let drain = {
            let s2 = s2.clone();
            std::thread::spawn(move || scenario::director_cli(&["drain"], &s2))
        };
        let started = Instant::now();
        let (mut withdrawn, mut exited) = (None, None);
        while exited.is_none() && started.elapsed() < Duration::from_secs(20) {
            if withdrawn.is_none() && !e.next_hops()?.contains(&"10.0.0.11".to_string()) {
                withdrawn = Some(started.elapsed());
                ensure!(alive(), "the route left only when the daemon was gone");
            }
            if !alive() {
                exited = Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (ok, err) = drain
            .join()
            .map_err(|_| anyhow::anyhow!("drain thread panicked"))??;
        ensure!(ok, "{err}");
        Ok((withdrawn.context("the route never left")?, exited))
    })?;
    ensure!(
        tally.failed == 0 && tally.ok > 50,
        "drain lost requests: {tally:?}"
    );
    // (the process is reaped by the lab; it stopped serving its socket)
    let exited_at = exited_at.unwrap_or(Duration::MAX);
    ensure!(
        exited_at >= withdrawn_at + Duration::from_millis(2500),
        "director2 stopped {exited_at:?} after the drain, its route left at {withdrawn_at:?}: less than withdraw_wait (3 s) between"
    );
    ensure!(e.next_hops()? == ["10.0.0.10"], "director2 still announced");
    ensure!(!e.directors[1].running(), "director2 did not stop");
    eprintln!(
        "ECMP over {carrying} directors; 12/12 connections kept across a director's death; drain under load: {tally:?}"
    );
    Ok(())
}

/// `mode = "both"`: only the VRRP master announces the VIP, and only once
/// it has been eligible for `announce_delay` (2 s); when the master dies
/// the new master's route replaces it.
#[test]
fn mode_both_announces_from_the_vrrp_master_after_the_delay() -> Result<()> {
    let mut e = EcmpLab::start_with(
        2,
        2,
        &EcmpOptions {
            bgp: "mode = \"both\", announce_delay = 2".into(),
            vrrp: true,
            bfd: false,
            ..Default::default()
        },
    )?;
    // Only the master's route, and it stays so.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        e.next_hops()? == ["10.0.0.10"],
        "the backup announced too: {:?}",
        e.next_hops()?
    );
    let s2 = e.lab.state_dir("director2")?;
    ensure!(scenario::vrrp_state(&s2, "VI_1").as_deref() == Some("backup"));
    // The master dies: director2 becomes master, then announces after the
    // delay (not before).
    e.kill_director(0)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    let master_at = Instant::now();
    let deadline = master_at + Duration::from_secs(15);
    loop {
        let hops = e.next_hops()?;
        if hops.contains(&"10.0.0.11".to_string()) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "director2 never announced: {hops:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = master_at.elapsed();
    ensure!(
        took >= Duration::from_millis(1800),
        "announced {took:?} after becoming master: announce_delay is 2 s"
    );
    e.wait_hops(&["10.0.0.11"], Duration::from_secs(10))?;
    let vip = SocketAddr::from((VIP, 80));
    let t = e
        .far
        .run(move || http::hammer(vip, 20, Duration::from_secs(2)))?;
    ensure!(t.ok == 20, "through the new master: {t:?}");
    Ok(())
}

/// A starting director with flow sync announces its VIPs only once its
/// peers' flows are in, or `preempt_sync_timeout` passed (the gate that
/// holds its VRRP preemption): the router would otherwise send it
/// connections its peers placed while it was away. Here the peer never
/// answers: the first announcement comes after the wait is given up.
#[test]
fn a_starting_director_announces_only_once_its_peers_flows_are_in_or_the_wait_ends() -> Result<()> {
    let e = EcmpLab::start_with(
        1,
        2,
        &EcmpOptions {
            global: "flow_sync = { listen = \"10.0.0.10:8848\", peers = [\"10.0.0.99:8848\"], key = \"lab-sync-key\", interval = 0.2, preempt_sync_timeout = 2 }\n".into(),
            ..Default::default()
        },
    )?;
    let log = e.directors[0].log();
    let gave_up = log
        .find("preemption no longer held")
        .context(format!("the wait for the peer never ended: {log}"))?;
    let announced = log
        .lines()
        .scan(0, |at, l| {
            let start = *at;
            *at += l.len() + 1;
            Some((start, l))
        })
        .find(|(_, l)| l.contains("BGP: announced VIPs changed") && l.contains(&VIP.to_string()))
        .map(|(at, _)| at)
        .context(format!("never announced: {log}"))?;
    ensure!(
        gave_up < announced,
        "announced before the peers' flows were in (or the wait ended): {log}"
    );
    ensure!(e.next_hops()? == ["10.0.0.10"], "{:?}", e.next_hops()?);
    Ok(())
}

/// BFD between the router and the directors (BIRD on both sides, `bfd on`
/// in BGP, 10 ms x 3): a director that dies (link down, process killed) is
/// withdrawn by the router long before the BGP hold time (3 s).
#[test]
fn bfd_withdraws_a_dead_director_before_the_hold_time() -> Result<()> {
    let mut e = EcmpLab::start_with(
        2,
        2,
        &EcmpOptions {
            bfd: true,
            ..Default::default()
        },
    )?;
    let took = e.withdrawal_of_a_dead_director()?;
    // The hold time is 3 s: a withdrawal within one second was BFD's.
    ensure!(took < Duration::from_secs(1), "withdrawn after {took:?}");
    eprintln!("dead director withdrawn after {took:?} (BFD 10 ms x 3; hold time 3 s)");
    Ok(())
}
