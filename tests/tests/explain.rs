//! `director explain` in the lab, as an operator runs it: on a running
//! daemon and on the pinned dataplane of a stopped one, for a connection
//! that is open (the flow table) and for one about to open (Maglev: the
//! connection then opened from that port goes where explain said).

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, director_bin, http, lab::VIP, scenario};
use nix::sys::signal::Signal;

/// `director explain ARGS --json` run in director1's namespace.
fn explain(lab: &Lab, state: &std::path::Path, args: &[&str]) -> Result<serde_json::Value> {
    let bin = director_bin()?;
    let state = state.display().to_string();
    let mut full: Vec<&str> = vec!["netns", "exec", lab.directors[0].ns.name()];
    let bin = bin.display().to_string();
    full.push(&bin);
    full.push("explain");
    full.extend_from_slice(args);
    full.extend(["--json", "--state-dir", &state]);
    let out = Command::new("ip").args(&full).output()?;
    ensure!(
        out.status.success(),
        "explain {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("explain --json")
}

#[test]
fn explain_names_the_server_of_an_open_and_of_a_new_connection_with_or_without_the_daemon()
-> Result<()> {
    let lab = Lab::one_director(2)?;
    let state = lab.state_dir("director1")?;
    let mut config = scenario::global_config(&lab, "director1")?;
    config.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\n"
    ));
    for rs in &lab.real_servers {
        config.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n",
            rs.ip
        ));
    }
    let path = lab.write("director.toml", &config)?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let server_ip = |body: &str| -> Option<String> {
        let j: usize = body.strip_prefix("rs")?.parse().ok()?;
        Some(lab.real_servers.get(j.checked_sub(1)?)?.ip.to_string())
    };
    let client = lab.client.ip;
    let vip = SocketAddr::from((VIP, 80));
    let service = format!("{VIP}:80");

    // An open connection: the flow table holds it on the server that
    // answered it.
    let (held, port, body) = lab.client.run(move || -> Result<_> {
        let mut c = http::KeepAlive::connect(vip, Duration::from_secs(2))?;
        let body = c.get("/")?.body.trim().to_string();
        let port = c.local_port()?;
        Ok((c, port, body))
    })??;
    let answered = server_ip(&body).context("a lab server's body")?;
    let e = explain(&lab, &state, &[&format!("{client}:{port}"), &service])?;
    ensure!(e["reason"] == "flow_table", "{e:#}");
    ensure!(e["real_server"] == answered.as_str(), "{e:#}");
    ensure!(e["service"] == format!("{VIP}:80/tcp").as_str(), "{e:#}");

    // Connections about to open, from chosen ports: explain says Maglev
    // and which server; each connection then goes there.
    let mut servers = std::collections::BTreeSet::new();
    for p in 40001..40013u16 {
        let e = explain(&lab, &state, &[&format!("{client}:{p}"), &service, "--syn"])?;
        ensure!(e["reason"] == "maglev", "{e:#}");
        let predicted = e["real_server"].as_str().context("a server")?.to_string();
        let src = SocketAddr::from((client, p));
        let r = lab
            .client
            .run(move || http::get_from_endpoint(src, vip, "/", Duration::from_secs(2)))??;
        let went = server_ip(r.body.trim()).context("a lab server's body")?;
        ensure!(
            went == predicted,
            "port {p}: explain said {predicted}, it went to {went}"
        );
        servers.insert(went);
    }
    ensure!(servers.len() == 2, "12 flows on one server: {servers:?}");

    // No service on that port: the kernel's.
    let e = explain(
        &lab,
        &state,
        &[&format!("{client}:1234"), &format!("{VIP}:81")],
    )?;
    ensure!(
        e["reason"] == "no_service" && e["real_server"].is_null(),
        "{e:#}"
    );

    // The daemon stops; the pinned dataplane forwards on and explain
    // reads its pins: the open connection is still where it was.
    let code = d.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    ensure!(code == Some(0), "exit {code:?}");
    let e = explain(&lab, &state, &[&format!("{client}:{port}"), &service])?;
    ensure!(e["reason"] == "flow_table", "{e:#}");
    ensure!(e["real_server"] == answered.as_str(), "{e:#}");
    let again = lab.client.run(move || {
        let mut held = held;
        held.get("/").map(|r| r.body)
    })??;
    ensure!(server_ip(again.trim()) == Some(answered), "{again}");
    Ok(())
}
