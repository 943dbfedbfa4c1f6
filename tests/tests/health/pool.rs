//! Real servers leaving and returning to the pool, the sorry server, and what a failed server keeps (its TCP connections) and loses (its UDP flows).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};

use super::*;

#[test]
fn failed_servers_leave_recover_and_quorum_falls_back_to_the_sorry_server() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let rs = |j: usize| lab.real_servers[j].ip;
    let check = "[virtual_server.real_server.http_get]\nconnect_timeout = 0.5\nretry = 0\nrise = 3\nurl = [{ path = \"/\", status_code = 200, regex = \"^rs\" }]\n";
    let mut config = scenario::global_config(&lab, "director1")?;
    config.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\nquorum = 1\nsorry_server = \"{}\"\nquorum_down = \"/usr/bin/touch {}\"\n",
        rs(2),
        lab.path("quorum-down").display()
    ));
    for j in 0..2 {
        config.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n{check}",
            rs(j)
        ));
    }
    let path = lab.write("director.toml", &config)?;
    let d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), |s| {
        scenario::all_resolved(s)
            && s["virtual_servers"][0]["real_servers"][0]["last_check"].is_number()
    })?;
    let by = served_by(&lab, 40)?;
    ensure!(
        by.keys().cloned().collect::<Vec<_>>() == ["rs1", "rs2"],
        "{by:?}"
    );

    // rs1's HTTP server dies: detected, and then no request reaches it.
    lab.stop_http(0)?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(false)
    })?;
    let rs1 = &s["virtual_servers"][0]["real_servers"][0];
    ensure!(rs1["last_error"].is_string(), "{rs1}");
    ensure!(s["virtual_servers"][0]["quorum_up"] == true, "{s}");
    let by = served_by(&lab, 40)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs2"], "{by:?}");

    // rs2 dies too: quorum lost, the sorry server (rs3) answers everything.
    lab.stop_http(1)?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][0]["quorum_up"] == false
    })?;
    // (No wait: a status saying quorum is lost is one the dataplane
    // already forwards by.)
    let by = served_by(&lab, 20)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs3"], "{by:?}");
    ensure!(
        lab.path("quorum-down").exists(),
        "quorum_down script not run"
    );

    // rs1 comes back: after rise (3) good rounds it takes traffic again and
    // quorum returns.
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    lab.start_http(0)?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(true) && s["virtual_servers"][0]["quorum_up"] == true
    })?;
    // It took exactly 3 good rounds: the checks rs1's nginx answered since
    // it restarted, up to the daemon's "healthy" line (both stamped by the
    // same clock; the next round comes 200 ms later).
    let log = d.log();
    let healthy_at = log
        .lines()
        .filter(|l| {
            l.contains("real server healthy")
                && l.contains(&format!("{}:80", lab.real_servers[0].ip))
        })
        .filter_map(scenario::log_time)
        .next_back()
        .context("no \"real server healthy\" line for rs1")?;
    let rounds = lab
        .requests_from(0, lab.directors[0].ip)?
        .into_iter()
        .filter(|t| *t > restarted && *t <= healthy_at + 0.05)
        .count();
    ensure!(
        rounds == 3,
        "healthy after {rounds} good rounds (rise = 3):\n{log}"
    );
    let by = served_by(&lab, 20)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs1"], "{by:?}");
    Ok(())
}

/// A real server that fails its checks but still serves what it has (it
/// stops accepting connections: an overloaded or flapping server) keeps
/// its established TCP connections: every download it carries completes,
/// while new connections go elsewhere. Its UDP flows, which hold nothing
/// on it, are placed again at once. Before, its downloads were reset (the
/// flows were placed on another server, which answered with RST).
#[test]
fn a_failed_server_keeps_its_connections_and_loses_its_udp_flows() -> Result<()> {
    const SIZE: usize = 2 << 20;
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    lab.write_big_file(SIZE)?;
    let state = lab.state_dir("director1")?;
    let check = "  [virtual_server.real_server.tcp_check]\n  connect_port = 80\n  connect_timeout = 0.5\n  retry = 0\n";
    let mut c = scenario::global_config(&lab, "director1")?;
    for (protocol, port) in [("tcp", 80), ("udp", 7)] {
        c.push_str(&checked_service(&lab, protocol, port, check));
    }
    let path = lab.write("director.toml", &c)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let healthy = |s: &serde_json::Value, want: bool| {
        (0..2).all(|v| s["virtual_servers"][v]["real_servers"][2]["healthy"] == want)
    };
    scenario::wait_status(&state, Duration::from_secs(10), |s| {
        scenario::all_resolved(s) && healthy(s, true)
    })?;
    let _echo = lab.start_udp_echo(VIP.into(), 7)?;

    // UDP flows from 16 client ports, each answered.
    let udp = SocketAddr::from((VIP, 7));
    let sockets = lab.client.run(move || {
        (0..16)
            .map(|_| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.connect(udp)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()
    })??;
    let answered = |s: &std::net::UdpSocket| {
        let mut buf = [0u8; 8];
        (0..5).any(|_| s.send(b"ping").is_ok() && s.recv(&mut buf).is_ok())
    };
    ensure!(sockets.iter().all(answered), "a UDP flow unanswered");

    // Downloads at 512 KiB/s (4 s each), nine at a time until one is on
    // rs3 (a batch misses it with probability (2/3)^9).
    let vip = SocketAddr::from((VIP, 80));
    let rs3 = &lab.real_servers[2].ns;
    let mut downloads = Vec::new();
    let mut on_rs3 = 0;
    for _ in 0..4 {
        downloads.extend((0..9).map(|_| {
            lab.client
                .ns
                .spawn_thread(move || http::download_big(vip, SIZE).map(|_| ()))
        }));
        std::thread::sleep(Duration::from_millis(300));
        on_rs3 = String::from_utf8_lossy(
            &rs3.exec("ss", &["-Htn", "state", "established", "( sport = :80 )"])?
                .stdout,
        )
        .lines()
        .count();
        if on_rs3 > 0 {
            break;
        }
    }
    ensure!(on_rs3 > 0, "no download on rs3 in 36");

    // rs3 takes no new connection and no UDP: its checks fail.
    rs3.exec("nft", &["add table inet t"])?;
    rs3.exec(
        "nft",
        &["add chain inet t input { type filter hook input priority 0 ; }"],
    )?;
    rs3.exec(
        "nft",
        &["add rule inet t input tcp dport 80 tcp flags syn drop"],
    )?;
    rs3.exec("nft", &["add rule inet t input udp dport 7 drop"])?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| healthy(s, false))?;
    // Every UDP flow is answered again (those on rs3 by another server).
    let unanswered = lab
        .client
        .run(move || sockets.iter().filter(|s| !answered(s)).count())?;
    ensure!(
        unanswered == 0,
        "{unanswered} UDP flows stayed on the failed server"
    );
    let by = served_by(&lab, 30)?;
    ensure!(
        by.keys().cloned().collect::<Vec<_>>() == ["rs1", "rs2"],
        "a new connection reached the failed server: {by:?}"
    );
    // The downloads, rs3's included, complete intact.
    for d in downloads {
        d.join()
            .map_err(|_| anyhow::anyhow!("download thread panicked"))??
            .map_err(|e| anyhow::anyhow!("a download broke ({on_rs3} on rs3): {e:#}"))?;
    }

    // rs3 recovers: it takes new connections again.
    rs3.exec("nft", &["delete table inet t"])?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| healthy(s, true))?;
    let by = served_by(&lab, 30)?;
    ensure!(by.contains_key("rs3"), "rs3 back but unused: {by:?}");
    Ok(())
}
