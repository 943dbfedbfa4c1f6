//! Failing open (`fail_open`: a checker that loses its path to the real
//! servers must not take the service down) and slow start (`slow_start`:
//! a server that comes back ramps its share of new flows; established
//! flows stay where they are).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, http, lab::VIP, scenario};

/// The lab's real servers behind one service whose TCP checks run every
/// 0.2 s; `extra` goes into the `[[virtual_server]]` table.
fn config(lab: &Lab, extra: &str) -> Result<String> {
    let mut c = scenario::global_config(lab, "director1")?;
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\n{extra}\n"
    ));
    for rs in &lab.real_servers {
        c.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.http_get]\nconnect_timeout = 0.3\nretry = 0\nurl = [{{ path = \"/\", status_code = 200 }}]\n",
            rs.ip
        ));
    }
    Ok(c)
}

/// `n` requests, each on a new connection: the tally.
fn requests(lab: &Lab, n: usize) -> Result<http::Tally> {
    let vip = SocketAddr::from((VIP, 80));
    lab.client
        .run(move || http::hammer(vip, n, Duration::from_secs(1)))
}

/// Every real server of service 0 healthy (`want`) and checked.
fn wait_health(state: &std::path::Path, want: bool) -> Result<serde_json::Value> {
    scenario::wait_status(state, Duration::from_secs(10), |s| {
        let r = &s["virtual_servers"][0]["real_servers"];
        r.as_array().is_some_and(|r| {
            r.iter()
                .all(|x| x["healthy"].as_bool() == Some(want) && x["last_check"].is_number())
        }) && (!want || scenario::all_resolved(s))
    })
}

#[test]
fn with_fail_open_a_checker_cut_off_from_the_pool_keeps_the_service_up() -> Result<()> {
    let lab = Lab::one_director(2)?;
    let state = lab.state_dir("director1")?;
    let path = lab.write("director.toml", &config(&lab, "fail_open = 50")?)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let s = wait_health(&state, true)?;
    ensure!(s["virtual_servers"][0]["failing_open"] == false, "{s}");
    ensure!(s["virtual_servers"][0]["fail_open_reason"].is_null(), "{s}");

    super::cut_the_checkers_path(&lab, 0)?;
    let s = wait_health(&state, false)?;
    let vs = &s["virtual_servers"][0];
    ensure!(vs["failing_open"] == true, "{s}");
    let why = vs["fail_open_reason"].as_str().context("a reason")?;
    ensure!(why.contains("2 of 2") && why.contains("50%"), "{why}");
    ensure!(vs["quorum_up"] == true, "{s}");
    for rs in vs["real_servers"].as_array().context("servers")? {
        ensure!(rs["effective_weight"] == 1.0, "{rs}");
    }
    // Every request is served, by both servers.
    let t = requests(&lab, 40)?;
    ensure!(t.failed == 0, "{t:?}");
    ensure!(t.by_body.len() == 2, "{t:?}");
    // The path back: the checks pass, the service no longer fails open.
    lab.directors[0]
        .ns
        .exec("nft", &["delete table inet lab"])?;
    let s = wait_health(&state, true)?;
    ensure!(s["virtual_servers"][0]["failing_open"] == false, "{s}");
    Ok(())
}

/// The control: the same cut without `fail_open` empties the pool and
/// the service goes dark.
#[test]
fn without_fail_open_the_same_cut_takes_the_service_down() -> Result<()> {
    let lab = Lab::one_director(2)?;
    let state = lab.state_dir("director1")?;
    let path = lab.write("director.toml", &config(&lab, "")?)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    wait_health(&state, true)?;
    super::cut_the_checkers_path(&lab, 0)?;
    let s = wait_health(&state, false)?;
    ensure!(s["virtual_servers"][0]["failing_open"] == false, "{s}");
    let t = requests(&lab, 20)?;
    ensure!(t.ok == 0, "the service should be dark: {t:?}");
    Ok(())
}

/// The share of new flows rs2 gets out of `n` while its effective weight
/// stays what status says (rs1 at weight 1): (weight, rs2's count).
fn ramp_window(lab: &Lab, state: &std::path::Path, n: usize) -> Result<(f64, usize)> {
    let weight = |s: &serde_json::Value| {
        s["virtual_servers"][0]["real_servers"][1]["effective_weight"].as_f64()
    };
    for _ in 0..5 {
        let before = weight(&scenario::status(state)?);
        let t = requests(lab, n)?;
        ensure!(t.failed == 0, "{t:?}");
        let after = weight(&scenario::status(state)?);
        if let Some(w) = before.filter(|_| before == after) {
            return Ok((w, t.by_body.get("rs2").copied().unwrap_or(0)));
        }
    }
    anyhow::bail!("the weight kept changing during every window")
}

/// Whether `got` of `n` draws fits a share `p` (binomial, 4 standard
/// deviations, at least 6 draws either way).
fn fits(got: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let slack = (4.0 * (n as f64 * p * (1.0 - p)).sqrt()).max(6.0);
    (got as f64 - mean).abs() <= slack
}

#[test]
fn a_server_that_comes_back_ramps_its_new_flows_and_established_flows_stay() -> Result<()> {
    let mut lab = Lab::one_director(2)?;
    let state = lab.state_dir("director1")?;
    let path = lab.write("director.toml", &config(&lab, "slow_start = 20")?)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    // The daemon's first plan ramps nobody.
    let s = wait_health(&state, true)?;
    for rs in s["virtual_servers"][0]["real_servers"]
        .as_array()
        .context("servers")?
    {
        ensure!(rs["effective_weight"] == 1.0, "{rs}");
        ensure!(rs["slow_start_remaining"].is_null(), "{rs}");
    }

    lab.stop_http(1)?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][0]["real_servers"][1]["healthy"] == false
    })?;
    lab.start_http(1)?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][0]["real_servers"][1]["healthy"] == true
    })?;
    let rs2 = &s["virtual_servers"][0]["real_servers"][1];
    let w = rs2["effective_weight"].as_f64().context("weight")?;
    ensure!(w > 0.0 && w < 1.0, "{rs2}");
    ensure!(
        rs2["slow_start_remaining"]
            .as_f64()
            .is_some_and(|r| r > 0.0 && r <= 20.0),
        "{rs2}"
    );

    // Connections opened early in the ramp: where each one went.
    let vip = SocketAddr::from((VIP, 80));
    let mut held = lab
        .client
        .run(move || -> Result<Vec<(http::KeepAlive, String)>> {
            (0..12)
                .map(|_| {
                    let mut c = http::KeepAlive::connect(vip, Duration::from_secs(2))?;
                    let body = c.get("/")?.body.trim().to_string();
                    Ok((c, body))
                })
                .collect()
        })??;

    // New flows follow the schedule: rs2's share is its weight's.
    let mut seen = Vec::new();
    loop {
        let (w, got) = ramp_window(&lab, &state, 120)?;
        let p = w / (1.0 + w);
        ensure!(
            fits(got, 120, p),
            "rs2 got {got} of 120 new flows at weight {w} (share {p:.2})"
        );
        seen.push(w);
        if w >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    ensure!(seen.windows(2).all(|p| p[0] <= p[1]), "weights {seen:?}");
    ensure!(seen.len() >= 4, "too few steps seen: {seen:?}");
    let s = scenario::status(&state)?;
    ensure!(
        s["virtual_servers"][0]["real_servers"][1]["slow_start_remaining"].is_null(),
        "{s}"
    );

    // No established flow moved: each held connection is answered by the
    // server that answered it first.
    let moved: Vec<String> = lab.client.run(move || {
        held.iter_mut()
            .filter_map(|(c, first)| match c.get("/") {
                Ok(r) if r.body.trim() == first => None,
                Ok(r) => Some(format!("{first} -> {}", r.body.trim())),
                Err(e) => Some(format!("{first}: {e}")),
            })
            .collect()
    })?;
    ensure!(moved.is_empty(), "established flows moved: {moved:?}");
    Ok(())
}
