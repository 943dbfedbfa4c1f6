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
use director_tests::{Lab, scenario};

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
