//! `[[virtual_server_group]]`: one virtual server answering on several
//! addresses, an address range, a port range and every port of an address,
//! IPv4 and IPv6, with one pool and one set of health checks, driven from a
//! client through the real daemon.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{Lab, LabSpec, http, scenario};

const MEMBERS: &str = "members = [\"10.0.0.100 8080\", \"10.0.0.101-102 80\", \"10.0.0.103 8079-8081\", \"10.0.0.104\"]";

fn config(lab: &Lab, extra_global: &str) -> Result<String> {
    let mut c = scenario::global_config(lab, "director1")?;
    c.push_str(extra_global);
    c.push_str(
        "\n[[vrrp_instance]]\nname = \"VI_4\"\nvirtual_router_id = 51\npriority = 150\nstandalone = true\n\
         virtual_ipaddress = [\"10.0.0.100\", \"10.0.0.101\", \"10.0.0.102\", \"10.0.0.103\", \"10.0.0.104\"]\n\
         \n[[vrrp_instance]]\nname = \"VI_6\"\nvirtual_router_id = 52\nversion = 3\npriority = 150\nstandalone = true\n\
         virtual_ipaddress = [\"fd00::100\", \"fd00::101\"]\n",
    );
    c.push_str(&format!(
        "\n[[virtual_server_group]]\nname = \"WEB\"\n{MEMBERS}\n\
         \n[[virtual_server_group]]\nname = \"WEB6\"\nmembers = [\"fd00::100-101 8080\"]\n"
    ));
    let v4: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let v6: Vec<String> = lab
        .real_servers
        .iter()
        .map(|r| r.ip6().to_string())
        .collect();
    for (group, servers) in [("WEB", v4), ("WEB6", v6)] {
        c.push_str(&format!(
            "\n[[virtual_server]]\ngroup = \"{group}\"\ndelay_loop = 0.5\n"
        ));
        for rs in servers {
            c.push_str(&format!(
                "\n  [[virtual_server.real_server]]\n  address = \"{rs}\"\n  port = 8080\n  [virtual_server.real_server.tcp_check]\n  connect_timeout = 1\n  retry = 0\n"
            ));
        }
    }
    Ok(c)
}

fn lab() -> Result<Lab> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: false,
    })?;
    // The real servers hold every member address on lo (LVS-DR), as an
    // operator configures them.
    for rs in &lab.real_servers {
        for a in ["10.0.0.101", "10.0.0.102", "10.0.0.103", "10.0.0.104"] {
            rs.ns
                .ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        rs.ns
            .ip(&["-6", "addr", "add", "fd00::101/128", "dev", "lo", "nodad"])?;
    }
    Ok(lab)
}

#[test]
fn a_group_serves_every_member_with_one_pool() -> Result<()> {
    let mut lab = lab()?;
    let path = lab.write("director1.toml", &config(&lab, "")?)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_vrrp_state(&state, "VI_4", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&state, "VI_6", "master", Duration::from_secs(10))?;
    scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    let st = scenario::status(&state)?;
    let vs = &st["virtual_servers"][0];
    ensure!(vs["group"] == "WEB", "{vs}");
    ensure!(
        vs["members"]
            == serde_json::json!([
                "10.0.0.100 8080",
                "10.0.0.101-102 80",
                "10.0.0.103 8079-8081",
                "10.0.0.104"
            ]),
        "{vs}"
    );

    let served = |lab: &Lab, addr: &str, n: usize| -> Result<http::Tally> {
        let a: SocketAddr = addr.parse()?;
        lab.client
            .ns
            .run(move || http::hammer(a, n, Duration::from_secs(2)))
    };
    // Every member, both real servers (one pool).
    for addr in [
        "10.0.0.100:8080",
        "10.0.0.101:80",
        "10.0.0.102:80",
        "10.0.0.103:8080",
        "10.0.0.104:80",
        "10.0.0.104:8080",
        "[fd00::100]:8080",
        "[fd00::101]:8080",
    ] {
        let t = served(&lab, addr, 20)?;
        ensure!(t.ok == 20, "{addr}: {t:?}");
        ensure!(
            t.by_body.len() == 2,
            "{addr}: both real servers serve: {t:?}"
        );
    }
    // Not members: the director's own kernel answers (nothing listens).
    for addr in ["10.0.0.100:80", "10.0.0.101:8080", "[fd00::100]:80"] {
        let t = served(&lab, addr, 1)?;
        ensure!(t.ok == 0, "{addr} is no member but was served: {t:?}");
    }
    // The counters are the service's, whatever member the packets came to.
    let st = scenario::status(&state)?;
    ensure!(
        st["virtual_servers"][0]["new_flows"].as_u64().unwrap_or(0) >= 120,
        "{st}"
    );

    // One set of checks: real server 2 failing leaves every member to
    // real server 1.
    lab.stop_http(1)?;
    scenario::wait_status(&state, Duration::from_secs(10), |s| {
        s["virtual_servers"][0]["real_servers"][1]["healthy"] == false
    })?;
    for addr in ["10.0.0.100:8080", "10.0.0.102:80", "10.0.0.104:80"] {
        let t = served(&lab, addr, 10)?;
        ensure!(t.ok == 10 && t.by_body.len() == 1, "{addr}: {t:?}");
    }
    Ok(())
}

/// A reload that changes a group's members: the new ones serve, the
/// removed ones stop, the unchanged ones never fail during it; and a bad
/// member names its key and line and changes nothing.
#[test]
fn reloading_a_groups_members() -> Result<()> {
    let lab = lab()?;
    let path = lab.write("director1.toml", &config(&lab, "")?)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_vrrp_state(&state, "VI_4", "master", Duration::from_secs(10))?;
    scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    let get = |addr: &str| -> Result<bool> {
        let a: SocketAddr = addr.parse()?;
        Ok(lab
            .client
            .ns
            .run(move || http::hammer(a, 1, Duration::from_secs(2)))?
            .ok
            == 1)
    };
    ensure!(get("10.0.0.101:80")? && !get("10.0.0.101:8080")?);

    let bad = std::fs::read_to_string(&path)?.replace("10.0.0.101-102 80", "10.0.0.101-102 90-80");
    std::fs::write(&path, &bad)?;
    let (ok, err) = scenario::director_cli(&["reload"], &state)?;
    ensure!(!ok, "a bad member was accepted");
    ensure!(
        err.contains("virtual_server_group[0].members[1]") && err.contains("director1.toml:"),
        "{err}"
    );
    ensure!(
        get("10.0.0.101:80")?,
        "a refused reload changed the dataplane"
    );

    let moved = bad.replace("10.0.0.101-102 90-80", "10.0.0.101-102 8080");
    std::fs::write(&path, moved)?;
    let addr: SocketAddr = "10.0.0.100:8080".parse()?;
    let ((), tally) = http::under_load(&lab.client.ns, addr, || {
        let (ok, err) = scenario::director_cli(&["reload"], &state)?;
        ensure!(ok, "{err}");
        Ok(())
    })?;
    ensure!(
        tally.failed == 0 && tally.ok > 0,
        "an unchanged member failed during the reload: {tally:?}"
    );
    ensure!(
        get("10.0.0.101:8080")? && get("10.0.0.102:8080")?,
        "new members not served"
    );
    ensure!(!get("10.0.0.101:80")?, "a removed member is still served");
    Ok(())
}
