//! Against FRR 8.4's `bfdd`: up without a flap, each side detects the other's death.

use std::time::Duration;

use anyhow::Result;
use director_tests::scenario;
use nix::sys::signal::Signal;

use super::*;

pub(crate) fn frr_conf(me: &str, peer: &str) -> String {
    format!(
        "bfd\n peer {peer} local-address {me} interface eth0\n  receive-interval 10\n  transmit-interval 10\n  detect-multiplier 3\n !\n!\n"
    )
}

/// FRR 8.4's bfdd (the peer operators run beside routers): the session
/// comes up at 10 ms x 3 without a flap (it flapped at every bring-up
/// while we kept the one-second interval after its Poll), each side
/// detects the other's death, a graceful stop is seen at once.
#[test]
fn a_session_with_frr_bfdd_comes_up_without_a_flap_and_each_side_detects_the_others_death()
-> Result<()> {
    use director_tests::peers::Frr;
    let (_one, lab) = locked_lab(1)?;
    let (client, director) = (lab.client.ip.to_string(), lab.directors[0].ip.to_string());
    let state = lab.state_dir("director1")?;
    let (path, notified) = director_to_client(&lab)?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    let mut frr = Frr::start(&lab.client.ns, &lab.dir, "1", &frr_conf(&client, &director))?;
    let ns = &lab.client.ns;
    {
        let f = &frr;
        comes_up_without_a_flap(
            &state,
            &notified,
            "BFD to-client UP\n",
            &PeerView {
                up: &|| Ok(f.peer(ns)?["status"] == "up"),
                down: &|| Ok(f.peer(ns)?["status"] == "down"),
                downs: &|| Ok(f.peer(ns)?["session-down"].as_u64().unwrap_or(0)),
            },
            "FRR",
        )?;
    }

    // bfdd killed: our detection timer expires (diagnostic 1).
    we_detect_the_peers_death(&state, "FRR bfdd", || {
        frr.bfdd.stop(Signal::SIGKILL, Duration::from_secs(5))
    })?;
    drop(frr);

    // FRR back: up again without a flap; then the director is killed, and
    // FRR detects it.
    let frr = Frr::start(&lab.client.ns, &lab.dir, "2", &frr_conf(&client, &director))?;
    let f = &frr;
    let view = PeerView {
        up: &|| Ok(f.peer(ns)?["status"] == "up"),
        down: &|| Ok(f.peer(ns)?["status"] == "down"),
        downs: &|| Ok(f.peer(ns)?["session-down"].as_u64().unwrap_or(0)),
    };
    comes_up_without_a_flap(
        &state,
        &notified,
        "BFD to-client UP\nBFD to-client DOWN\nBFD to-client UP\n",
        &view,
        "FRR again",
    )?;
    the_peer_detects_our_death(&mut d, "FRR", view.down)?;
    // A graceful stop: FRR told at once (AdminDown).
    the_peer_is_told_of_a_graceful_stop(&lab, &path, "FRR", view.up)?;
    Ok(())
}
