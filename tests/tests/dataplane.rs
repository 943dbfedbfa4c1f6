//! The XDP dataplane in the lab: two services on IPv4 and IPv6 over three
//! real servers; distribution, draining, removal and re-adding, and daemon
//! restarts under load with zero failed requests.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec, Proc, http,
    lab::{VIP, VIP6},
    scenario,
};
use nix::sys::signal::Signal;

/// The config: VIP:80 and VIP:8080, IPv4 and IPv6, over every real server,
/// with `weights` overriding (address, weight) and `skip` leaving one out.
fn config(lab: &Lab, weights: &[(&str, u32)], skip: Option<&str>) -> Result<String> {
    let mut c = scenario::global_config(lab, "director1")?;
    for v6 in [false, true] {
        let servers: Vec<String> = lab
            .real_servers
            .iter()
            .map(|r| r.addr(v6).to_string())
            .filter(|a| Some(a.as_str()) != skip)
            .collect();
        let vip = if v6 {
            VIP6.to_string()
        } else {
            VIP.to_string()
        };
        for port in [80, 8080] {
            c.push_str(&scenario::virtual_server(&vip, port, &servers, weights));
        }
    }
    Ok(c)
}

fn restart(lab: &Lab, daemon: &mut Proc, config_text: &str, state: &Path) -> Result<()> {
    let code = daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    ensure!(code == Some(0), "exit {code:?}: {}", daemon.log());
    let path = lab.write("director.toml", config_text)?;
    *daemon = scenario::spawn_director(lab, 0, &path)?;
    scenario::wait_status(state, Duration::from_secs(20), scenario::all_resolved)?;
    Ok(())
}

fn servers_seen(lab: &Lab, addr: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
    let t = lab
        .client
        .run(move || http::hammer(addr, n, Duration::from_secs(3)))?;
    ensure!(t.failed == 0 && t.ok == n, "{addr}: {t:?}");
    Ok(t.by_body.keys().cloned().collect())
}

#[test]
fn services_drain_remove_readd_and_restart_without_loss() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let path = lab.write("director.toml", &config(&lab, &[], None)?)?;
    let mut daemon = scenario::spawn_director(&lab, 0, &path)?;
    let status = scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    ensure!(status["dataplane"] == "xdp", "{status}");
    ensure!(status["virtual_servers"].as_array().map(Vec::len) == Some(4));

    // Every service spreads over all three servers, IPv4 and IPv6.
    let all: BTreeSet<String> = ["rs1", "rs2", "rs3"].map(String::from).into();
    let targets: Vec<SocketAddr> = [IpAddr::from(VIP), IpAddr::from(VIP6)]
        .iter()
        .flat_map(|ip| [80u16, 8080].map(|p| SocketAddr::new(*ip, p)))
        .collect();
    for t in &targets {
        ensure!(
            servers_seen(&lab, *t, 60)? == all,
            "{t} does not reach all servers"
        );
    }
    // Counters per real server, and MACs, in the status.
    let s = scenario::status(&state)?;
    for vs in s["virtual_servers"].as_array().context("virtual_servers")? {
        for rs in vs["real_servers"].as_array().context("real_servers")? {
            ensure!(rs["packets"].as_u64() > Some(0), "no packets counted: {rs}");
            ensure!(rs["new_flows"].as_u64() > Some(0), "no flows counted: {rs}");
            ensure!(rs["mac"].is_string(), "{rs}");
        }
        ensure!(vs["scheduler"] == "mh", "{vs}");
    }

    // A long-lived connection, to learn which server it sticks to.
    let vip80 = SocketAddr::from((VIP, 80));
    let (mut conn, pinned) = lab.client.run(move || -> Result<_> {
        let mut c = http::KeepAlive::connect(vip80, Duration::from_secs(3))?;
        let name = c.get("/")?.body.trim().to_string();
        Ok((c, name))
    })??;
    let idx: usize = pinned.trim_start_matches("rs").parse::<usize>()? - 1;
    let pinned_v4 = lab.real_servers[idx].ip.to_string();

    // Drain it (weight 0) with a restart, under load: no failed request.
    let drained = config(&lab, &[(pinned_v4.as_str(), 0)], None)?;
    let ((), load) = http::under_load(&lab.client.ns, vip80, || {
        restart(&lab, &mut daemon, &drained, &state)
    })?;
    ensure!(
        load.failed == 0 && load.ok > 0,
        "restart lost requests: {load:?}"
    );
    // The established connection still reaches its server...
    let again = lab.client.run(move || -> Result<_> {
        let body = conn.get("/")?.body.trim().to_string();
        Ok((conn, body))
    })??;
    ensure!(
        again.1 == pinned,
        "a drained connection moved to {}",
        again.1
    );
    let conn = again.0;
    // ...while new ones avoid it.
    let seen = servers_seen(&lab, vip80, 60)?;
    ensure!(
        !seen.contains(&pinned),
        "new flows reached the draining {pinned}"
    );
    let s = scenario::status(&state)?;
    let weight = s["virtual_servers"][0]["real_servers"][idx]["weight"].as_u64();
    ensure!(weight == Some(0), "status weight {weight:?}");

    // Remove it: new traffic never reaches it, under load, no failures.
    let removed = config(&lab, &[], Some(pinned_v4.as_str()))?;
    let ((), load) = http::under_load(&lab.client.ns, vip80, || {
        restart(&lab, &mut daemon, &removed, &state)
    })?;
    ensure!(load.failed == 0, "restart lost requests: {load:?}");
    ensure!(!load.by_body.contains_key(&pinned), "{load:?}");
    let s = scenario::status(&state)?;
    ensure!(
        s["virtual_servers"][0]["real_servers"]
            .as_array()
            .map(Vec::len)
            == Some(2)
    );
    drop(conn);

    // Re-add it: it takes new flows again.
    let back = config(&lab, &[], None)?;
    let ((), load) = http::under_load(&lab.client.ns, vip80, || {
        restart(&lab, &mut daemon, &back, &state)
    })?;
    ensure!(load.failed == 0, "restart lost requests: {load:?}");
    ensure!(
        servers_seen(&lab, vip80, 60)? == all,
        "{pinned} did not come back"
    );

    // The table view works too.
    let bin = director_tests::director_bin()?;
    let out = std::process::Command::new(bin)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(table.contains("TCP   10.0.0.100:80"), "{table}");
    ensure!(table.contains("[fd00::100]:8080"), "{table}");
    Ok(())
}
