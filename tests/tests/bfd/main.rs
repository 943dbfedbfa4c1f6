//! BFD (`[[bfd_instance]]`) against the real BFD speakers operators run:
//! BIRD 2's `protocol bfd` (Debian's bird2), FRR 8.4's `bfdd` and
//! keepalived 2.2's own `bfd_instance`. The session comes up (three-way
//! handshake, both sides Up) at 10 ms x 3 without a flap; each side
//! detects the other's death by its detection timer
//! (diagnostic 1, "control detection time expired"), in about multiplier x
//! interval; a graceful stop tells the peer at once (AdminDown).
//! `master_bfd`: with adverts every second, the backup takes over as soon
//! as its BFD session to a killed master expires, long before the
//! master-down interval. `track_bfd`: a weight lowers the priority while
//! the session is down, weight 0 forces Fault.

mod bird;
mod frr;
mod keepalived;

use self::bird::*;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use director_tests::{Lab, LabSpec, Proc, scenario};
use nix::sys::signal::Signal;

/// The tests of this file run one at a time: each runs sessions at 10 ms
/// x 3 (a 30 ms detection time) that two labs competing for the CPUs make
/// flap.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The session in a daemon's status.
fn session(state: &Path) -> Result<serde_json::Value> {
    let s = scenario::status(state)?;
    Ok(s["bfd"][0].clone())
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let started = Instant::now();
    loop {
        // (An error: the daemon is not answering yet.)
        if ok().unwrap_or(false) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a test needs of a second BFD implementation.
struct PeerView<'a> {
    /// Whether the peer sees the session Up.
    up: &'a dyn Fn() -> Result<bool>,
    /// Whether it sees it down (or admin down).
    down: &'a dyn Fn() -> Result<bool>,
    /// How many times it saw the session go down so far.
    downs: &'a dyn Fn() -> Result<u64>,
}

/// A director with one session to the client at 10 ms x 3, notify logged.
fn director_to_client(lab: &Lab) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let client = lab.client.ip.to_string();
    let servers = vec![lab.real_servers[0].ip.to_string()];
    let notified = lab.dir.join("bfd-notify.log");
    let config = format!(
        "{}\n[[bfd_instance]]\nname = \"to-client\"\nneighbor_ip = \"{client}\"\nsource_ip = \"{}\"\nmin_rx = 10\nmin_tx = 10\nmultiplier = 3\nnotify = \"/bin/sh -c 'echo $0 $1 $2 >> {}'\"\n",
        scenario::http_config(lab, "director1", &servers)?,
        lab.directors[0].ip,
        notified.display()
    );
    Ok((lab.write("d.toml", &config)?, notified))
}

/// The session comes up and stays up for 3 s at 10 ms x 3 with no flap
/// at any moment since the peer started: our notify log reads `notes`
/// (UP once for this bring-up), the peer (a fresh process) counts no
/// down, our transitions do not move.
fn comes_up_without_a_flap(
    state: &Path,
    notified: &Path,
    notes: &str,
    peer: &PeerView<'_>,
    what: &str,
) -> Result<()> {
    wait(
        &format!("{what}: our session up"),
        Duration::from_secs(10),
        || Ok(session(state)?["state"] == "up"),
    )?;
    wait(
        &format!("{what}: the peer's session up"),
        Duration::from_secs(10),
        || (peer.up)(),
    )?;
    let transitions = session(state)?["transitions"].as_u64();
    std::thread::sleep(Duration::from_secs(3));
    let s = session(state)?;
    ensure!(
        s["state"] == "up" && s["transitions"].as_u64() == transitions,
        "{what}: our session flapped: {s}"
    );
    let logged = std::fs::read_to_string(notified).unwrap_or_default();
    ensure!(
        logged == notes,
        "{what}: our notify log reads {logged:?}, not {notes:?}"
    );
    ensure!(
        (peer.downs)()? == 0,
        "{what}: the peer saw the session go down"
    );
    ensure!((peer.up)()?, "{what}: the peer's session is not up");
    ensure!(s["detect_time_ms"].as_f64() == Some(30.0), "{what}: {s}");
    Ok(())
}

/// A lab of `directors` and one real server, the lock that runs these
/// tests one at a time held. One director holds the VIP itself (its BFD
/// peer is the client); a pair leaves the VIP to VRRP.
fn locked_lab(directors: usize) -> Result<(std::sync::MutexGuard<'static, ()>, Lab)> {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&LabSpec {
        directors,
        real_servers: 1,
        vip_on_director: directors == 1,
    })?;
    Ok((one, lab))
}

/// The peer killed by `kill`: our detection timer expires (diagnostic 1)
/// within 500 ms. (Not a speed figure: a 30 ms detection that takes half a
/// second is broken; the poll itself spawns a process per status.)
fn we_detect_the_peers_death<T>(
    state: &Path,
    what: &str,
    kill: impl FnOnce() -> Result<T>,
) -> Result<()> {
    kill()?;
    let took = wait("our session down", Duration::from_secs(5), || {
        Ok(session(state)?["state"] == "down")
    })?;
    let s = session(state)?;
    ensure!(s["diagnostic"] == 1, "{s}");
    ensure!(took < Duration::from_millis(500), "detected after {took:?}");
    eprintln!(
        "{what} killed: director's session down after {took:?} (detection time 30 ms; polled)"
    );
    Ok(())
}

/// The director killed: the peer's session goes down within 500 ms.
fn the_peer_detects_our_death(
    director: &mut Proc,
    what: &str,
    down: impl Fn() -> Result<bool>,
) -> Result<()> {
    let killed = Instant::now();
    director.stop(Signal::SIGKILL, Duration::from_secs(5))?;
    let took = wait(
        &format!("{what}'s session down"),
        Duration::from_secs(5),
        down,
    )?;
    ensure!(
        took < Duration::from_millis(500),
        "{what} saw it after {took:?}"
    );
    eprintln!(
        "director killed: {what}'s session down after {:?}",
        killed.elapsed()
    );
    Ok(())
}

/// The director started again from `config`, then stopped gracefully:
/// the peer is told at once (AdminDown), whatever the timers.
fn the_peer_is_told_of_a_graceful_stop(
    lab: &Lab,
    config: &Path,
    what: &str,
    up: impl Fn() -> Result<bool>,
) -> Result<()> {
    let mut d = scenario::spawn_director(lab, 0, config)?;
    wait("up after restart", Duration::from_secs(10), &up)?;
    d.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    wait(
        &format!("{what} told of the stop"),
        Duration::from_secs(1),
        || Ok(!up()?),
    )?;
    Ok(())
}
