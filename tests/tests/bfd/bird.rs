//! Against BIRD 2's `protocol bfd`: up, each side detects the other's death; `master_bfd` takes over before the master-down interval.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{ecmp::bird, scenario};
use nix::sys::signal::Signal;

use super::*;

/// What BIRD says of its BFD sessions.
pub(crate) fn bird_sessions(sock: &Path) -> Result<String> {
    let out = std::process::Command::new("birdc")
        .args(["-s"])
        .arg(sock)
        .args(["show", "bfd", "sessions"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

pub(crate) fn bird_conf(me: &str, peer: &str) -> String {
    format!(
        "router id {me};\nprotocol device {{}}\nprotocol bfd {{\n  interface \"eth0\" {{ min rx interval 10 ms; min tx interval 10 ms; idle tx interval 300 ms; multiplier 3; }};\n  neighbor {peer} dev \"eth0\" local {me};\n}}\n"
    )
}

#[test]
fn a_session_with_bird_comes_up_and_each_side_detects_the_others_death() -> Result<()> {
    let (_one, lab) = locked_lab(1)?;
    let client = lab.client.ip.to_string();
    let director = lab.directors[0].ip.to_string();
    let state = lab.state_dir("director1")?;
    let servers = vec![lab.real_servers[0].ip.to_string()];
    let notified = lab.dir.join("bfd-notify.log");
    let config = format!(
        "{}\n[[bfd_instance]]\nname = \"to-client\"\nneighbor_ip = \"{client}\"\nmin_rx = 10\nmin_tx = 10\nmultiplier = 3\nnotify = \"/bin/sh -c 'echo $0 $1 $2 >> {}'\"\n",
        scenario::http_config(&lab, "director1", &servers)?,
        notified.display()
    );
    let path = lab.write("d.toml", &config)?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    let (mut b, sock) = bird(
        &lab.client.ns,
        &lab.dir,
        "client",
        &bird_conf(&client, &director),
    )?;

    // Up on both sides.
    wait("our session up", Duration::from_secs(10), || {
        Ok(session(&state)?["state"] == "up")
    })?;
    wait("BIRD's session up", Duration::from_secs(5), || {
        Ok(bird_sessions(&sock)?.contains(" Up "))
    })?;
    // Both Up, and the fast timers negotiated (Poll/Final): BIRD's 10 ms
    // x 3 is our detection time.
    let negotiated = wait("timers negotiated", Duration::from_secs(5), || {
        let s = session(&state)?;
        Ok(s["remote_state"] == "up"
            && s["remote_discriminator"].as_u64().unwrap_or(0) != 0
            && s["detect_time_ms"].as_f64() == Some(30.0))
    });
    ensure!(negotiated.is_ok(), "{}", session(&state)?);

    // BIRD killed: our detection timer expires (diagnostic 1).
    we_detect_the_peers_death(&state, "BIRD", || {
        b.stop(Signal::SIGKILL, Duration::from_secs(5))
    })?;
    // notify ran for each change: up, then down.
    wait("notify", Duration::from_secs(5), || {
        Ok(std::fs::read_to_string(&notified)? == "BFD to-client UP\nBFD to-client DOWN\n")
    })
    .with_context(|| std::fs::read_to_string(&notified).unwrap_or_default())?;

    // BIRD back: up again. Then the director is killed: BIRD detects it.
    let (_b, sock) = bird(
        &lab.client.ns,
        &lab.dir,
        "client2",
        &bird_conf(&client, &director),
    )?;
    wait("session up again", Duration::from_secs(10), || {
        Ok(session(&state)?["state"] == "up" && bird_sessions(&sock)?.contains(" Up "))
    })?;
    the_peer_detects_our_death(&mut d, "BIRD", || {
        Ok(bird_sessions(&sock)?.contains(" Down "))
    })?;
    // A graceful stop tells BIRD at once (AdminDown), whatever the timers.
    the_peer_is_told_of_a_graceful_stop(&lab, &path, "BIRD", || {
        Ok(bird_sessions(&sock)?.contains(" Up "))
    })?;
    Ok(())
}

/// `master_bfd` and `track_bfd`: adverts every second (master-down
/// interval ~3.6 s); the master is killed and the backup holds the VIP
/// once its BFD session to it expires.
#[test]
fn master_bfd_takes_over_before_the_master_down_interval() -> Result<()> {
    let (_one, lab) = locked_lab(2)?;
    let (ip1, ip2) = (lab.directors[0].ip, lab.directors[1].ip);
    let bfd = |peer: std::net::Ipv4Addr| {
        format!(
            "\n[[bfd_instance]]\nname = \"peer\"\nneighbor_ip = \"{peer}\"\nmin_rx = 10\nmin_tx = 10\nmultiplier = 3\n"
        )
    };
    let c1 =
        scenario::vrrp_config(&lab, "director1", 150, "version = 3\nadvert_int = 1")? + &bfd(ip2);
    let c2 = scenario::vrrp_config(
        &lab,
        "director2",
        100,
        "version = 3\nadvert_int = 1\nmaster_bfd = \"peer\"",
    )? + &bfd(ip1);
    let (p1, p2) = (lab.write("d1.toml", &c1)?, lab.write("d2.toml", &c2)?);
    let mut d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    wait("BFD up", Duration::from_secs(10), || {
        Ok(session(&s2)?["state"] == "up")
    })?;
    let killed = Instant::now();
    d1.stop(Signal::SIGKILL, Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(10))
        .context("the backup never took over")?;
    let took = killed.elapsed();
    let log = _d2.log();
    ensure!(
        log.contains("BFD session to the master is down: taking over"),
        "not by BFD:\n{log}"
    );
    // The master-down interval is 3 x 1 s + skew; BFD's is 30 ms.
    ensure!(took < Duration::from_secs(2), "took over after {took:?}");
    eprintln!("master killed: backup master after {took:?} (adverts every 1 s; BFD 10 ms x 3)");
    Ok(())
}
