//! Health checks in the lab: a real server whose HTTP server dies leaves
//! the pool, comes back after `rise` successes; losing quorum switches the
//! service to the sorry server; status reports health.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};

fn served_by(lab: &Lab, n: usize) -> Result<std::collections::BTreeMap<String, usize>> {
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, n, Duration::from_secs(2)))?;
    ensure!(t.failed == 0, "requests failed: {t:?}");
    Ok(t.by_body)
}

fn rs_healthy(s: &serde_json::Value, i: usize) -> Option<bool> {
    s["virtual_servers"][0]["real_servers"][i]["healthy"].as_bool()
}

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
    let _d = scenario::spawn_director(&lab, 0, &path)?;
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
    std::thread::sleep(Duration::from_millis(300));
    let by = served_by(&lab, 20)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs3"], "{by:?}");
    ensure!(
        lab.path("quorum-down").exists(),
        "quorum_down script not run"
    );

    // rs1 comes back: after rise (3) good rounds it takes traffic again and
    // quorum returns.
    lab.start_http(0)?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(true) && s["virtual_servers"][0]["quorum_up"] == true
    })?;
    let by = served_by(&lab, 20)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs1"], "{by:?}");
    Ok(())
}
