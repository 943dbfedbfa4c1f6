//! Quorum: a service losing it moves the VIP (track_virtual_server), hysteresis widens its band, a reload keeps it for the services it keeps.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, lab::VIP, scenario};

use super::*;

/// `track_virtual_server`: a director whose checks see the service lose
/// quorum lowers its VRRP priority and hands the VIP over.
#[test]
fn a_virtual_server_losing_quorum_moves_the_vip() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let config = |name: &str, priority: u8| -> Result<String> {
        let mut c = scenario::global_config(&lab, name)?;
        c.push_str(&format!(
            "\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\npriority = {priority}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP}/32\"]\ntrack_virtual_server = [{{ address = \"{VIP}\", port = 80, weight = -100 }}]\n"
        ));
        c.push_str(&format!(
            "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\n"
        ));
        for rs in &lab.real_servers {
            c.push_str(&format!(
                "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nconnect_timeout = 0.3\nretry = 0\n",
                rs.ip
            ));
        }
        Ok(c)
    };
    let p1 = lab.write("director1.toml", &config("director1", 150)?)?;
    let p2 = lab.write("director2.toml", &config("director2", 100)?)?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;

    // director1 loses its path to the real servers (its checks are
    // dropped on the way out; forwarded client traffic is not affected).
    cut_the_checkers_path(&lab, 0)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(5))?;
    let st = scenario::status(&s1)?;
    ensure!(st["virtual_servers"][0]["quorum_up"] == false, "{st}");
    ensure!(st["vrrp"][0]["effective_priority"] == 50, "{st}");
    // Clients are served by director2 meanwhile.
    let by = served_by(&lab, 20)?;
    ensure!(by.len() == 2, "{by:?}");

    // The path returns: quorum back, priority 150, director1 preempts.
    lab.directors[0]
        .ns
        .exec("nft", &["delete table inet lab"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;
    let st = scenario::status(&s1)?;
    ensure!(st["vrrp"][0]["effective_priority"] == 150, "{st}");
    Ok(())
}

/// The quorum-2, hysteresis-1 service over the lab's three real servers
/// (weight 1, TCP checks every 0.2 s), its `quorum_up` / `quorum_down`
/// scripts appending "up" / "down" to `events`; `before` goes in front of
/// it in the file.
pub(crate) fn hysteresis_config(
    lab: &Lab,
    events: &std::path::Path,
    before: &str,
) -> Result<String> {
    let mut c = scenario::global_config(lab, "director1")?;
    c.push_str(before);
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\nquorum = 2\nhysteresis = 1\nquorum_up = \"/bin/sh -c 'echo up >> {0}'\"\nquorum_down = \"/bin/sh -c 'echo down >> {0}'\"\n",
        events.display()
    ));
    for rs in &lab.real_servers {
        c.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nconnect_timeout = 0.5\nretry = 0\nwarmup = 0\n",
            rs.ip
        ));
    }
    Ok(c)
}

/// A lab of three real servers and director1 running [`hysteresis_config`]:
/// the lab, the daemon, its state directory and the scripts' log.
pub(crate) fn hysteresis_lab() -> Result<(
    Lab,
    director_tests::Proc,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let events = lab.path("quorum.log");
    let path = lab.write("director.toml", &hysteresis_config(&lab, &events, "")?)?;
    let d = scenario::spawn_director(&lab, 0, &path)?;
    Ok((lab, d, state, events))
}

/// Waits until the status shows the real servers of virtual server `vs`
/// healthy as `want`, each checked, then says whether it has quorum.
pub(crate) fn quorum_with(state: &std::path::Path, vs: usize, want: [bool; 3]) -> Result<bool> {
    let s = scenario::wait_status(state, Duration::from_secs(5), |s| {
        let r = &s["virtual_servers"][vs]["real_servers"];
        (0..3).all(|i| r[i]["healthy"].as_bool() == Some(want[i]) && r[i]["last_check"].is_number())
    })?;
    s["virtual_servers"][vs]["quorum_up"]
        .as_bool()
        .context("no quorum_up")
}

/// Waits until the quorum scripts' log reads `want`.
pub(crate) fn quorum_events(events: &std::path::Path, want: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(events).unwrap_or_default();
        if log == want {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "quorum scripts ran as {log:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `hysteresis`: with quorum 2 and hysteresis 1 over three servers of
/// weight 1, quorum holds down to one healthy server (lost below 2 - 1)
/// and comes back only with all three (2 + 1); `quorum_down` and
/// `quorum_up` run once each.
#[test]
fn hysteresis_widens_the_quorum_band() -> Result<()> {
    let (mut lab, _d, state, events) = hysteresis_lab()?;
    let quorum_with = |want| quorum_with(&state, 0, want);
    ensure!(quorum_with([true, true, true])?, "up with three");
    lab.stop_http(0)?;
    ensure!(quorum_with([false, true, true])?, "lost with two");
    lab.stop_http(1)?;
    ensure!(
        quorum_with([false, false, true])?,
        "lost with one (below quorum, not below quorum - hysteresis)"
    );
    lab.stop_http(2)?;
    ensure!(!quorum_with([false, false, false])?, "held with none");
    lab.start_http(0)?;
    ensure!(!quorum_with([true, false, false])?, "regained with one");
    lab.start_http(1)?;
    ensure!(
        !quorum_with([true, true, false])?,
        "regained with two (quorum, not quorum + hysteresis)"
    );
    lab.start_http(2)?;
    ensure!(quorum_with([true, true, true])?, "not regained with three");
    quorum_events(&events, "down\nup\n")
}

/// A reload keeps the quorum state of the services it keeps, wherever they
/// move in the list: a service held down by its hysteresis (two of three
/// healthy: quorum 2, but 2 + 1 to come back) stays down across a reload
/// that puts another service before it - no silent return, no script -
/// and comes back, running `quorum_up`, only with the third server.
#[test]
fn a_reload_keeps_the_quorum_state_of_the_services_it_keeps() -> Result<()> {
    let (mut lab, _d, state, events) = hysteresis_lab()?;
    ensure!(
        quorum_with(&state, 0, [true, true, true])?,
        "down with three"
    );
    for j in 0..3 {
        lab.stop_http(j)?;
    }
    ensure!(
        !quorum_with(&state, 0, [false, false, false])?,
        "up with none"
    );
    lab.start_http(0)?;
    lab.start_http(1)?;
    ensure!(
        !quorum_with(&state, 0, [true, true, false])?,
        "regained with two (quorum, not quorum + hysteresis)"
    );
    quorum_events(&events, "down\n")?;

    let other = format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 8080\n\n  [[virtual_server.real_server]]\n  address = \"{}\"\n",
        lab.real_servers[0].ip
    );
    lab.write("director.toml", &hysteresis_config(&lab, &events, &other)?)?;
    let (ok, said) = scenario::director_cli(&["reload"], &state)?;
    ensure!(ok, "reload: {said}");
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][1]["port"] == 80
    })?;
    ensure!(
        s["virtual_servers"][1]["quorum_up"] == false,
        "the reload brought quorum back: {s}"
    );
    // A few check rounds later: still down, and no script ran.
    std::thread::sleep(Duration::from_millis(1000));
    ensure!(
        !quorum_with(&state, 1, [true, true, false])?,
        "quorum came back after the reload with two of three"
    );
    quorum_events(&events, "down\n")?;
    lab.start_http(2)?;
    ensure!(
        quorum_with(&state, 1, [true, true, true])?,
        "not regained with three"
    );
    quorum_events(&events, "down\nup\n")
}
