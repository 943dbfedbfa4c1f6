//! `director doctor` in the lab: one real server of each classic LVS-DR
//! misconfiguration beside a good one, each named exactly with its fix;
//! the good one passes; the exit status says a problem was found (and 0
//! once every server is good).

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, director_bin, lab::VIP, scenario};

/// `director doctor ARGS` in director1's namespace: exit code and stdout.
fn doctor(lab: &Lab, config: &std::path::Path, args: &[&str]) -> Result<(i32, String)> {
    let bin = director_bin()?.display().to_string();
    let config = config.display().to_string();
    let mut full = vec!["netns", "exec", lab.directors[0].ns.name(), &bin, "doctor"];
    full.extend(["--config", &config]);
    full.extend_from_slice(args);
    let out = Command::new("ip").args(&full).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    ))
}

#[test]
fn doctor_names_each_misconfigured_real_server_and_its_fix() -> Result<()> {
    let lab = Lab::one_director(4)?;
    let state = lab.state_dir("director1")?;
    let rs = |j: usize| lab.real_servers[j].ip;
    let tun_vip = "10.0.0.110";
    let mut config = scenario::global_config(&lab, "director1")?;
    config.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\n"
    ));
    for j in 0..3 {
        config.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n",
            rs(j)
        ));
    }
    // This host's kernel has no ipip device: a tunnel real server here
    // cannot decapsulate.
    config.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{tun_vip}\"\nport = 80\nlb_kind = \"tun\"\n[[virtual_server.real_server]]\naddress = \"{}\"\n",
        rs(3)
    ));
    let path = lab.write("director.toml", &config)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), |s| {
        s["virtual_servers"][0]["real_servers"][2]["mac"].is_string()
    })?;

    // rs2 lost the VIP on lo; rs3 answers ARP for every address it has.
    lab.real_servers[1]
        .ns
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "lo"])?;
    for iface in ["all", "eth0"] {
        lab.real_servers[2]
            .ns
            .sysctl(&format!("net.ipv4.conf.{iface}.arp_ignore"), "0")?;
        lab.real_servers[2]
            .ns
            .sysctl(&format!("net.ipv4.conf.{iface}.arp_announce"), "0")?;
    }

    let (code, out) = doctor(&lab, &path, &[])?;
    ensure!(code == 1, "exit {code}:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let line_of = |level: &str, who: std::net::Ipv4Addr, what: &str| {
        lines.iter().position(|l| {
            l.starts_with(level)
                && l.split_whitespace().nth(1) == Some(who.to_string().as_str())
                && l.contains(what)
        })
    };
    // rs1: good.
    ensure!(line_of("ok", rs(0), "on its MAC").is_some(), "{out}");
    ensure!(
        line_of("ok", rs(0), "does not answer ARP for the VIP").is_some(),
        "{out}"
    );
    ensure!(
        !lines
            .iter()
            .any(|l| l.starts_with("FAIL") && l.contains(&format!(" {} ", rs(0)))),
        "{out}"
    );
    // rs2: the VIP missing on lo, and the command that fixes it.
    let i = line_of("FAIL", rs(1), "the VIP is not on its lo").context(out.clone())?;
    ensure!(
        lines[i + 1].contains(&format!("ip addr add {VIP}/32 dev lo")),
        "{out}"
    );
    // rs3: answers ARP for the VIP (it still serves through the VIP).
    let i = line_of("FAIL", rs(2), "answers ARP for the VIP").context(out.clone())?;
    ensure!(lines[i + 1].contains("arp_ignore=1"), "{out}");
    ensure!(line_of("ok", rs(2), "on its MAC").is_some(), "{out}");
    // rs4: a tunnel real server that does not decapsulate.
    let i = line_of("FAIL", rs(3), "does not decapsulate").context(out.clone())?;
    ensure!(lines[i + 1].contains("tunl0"), "{out}");
    ensure!(
        out.contains("XDP in native mode") || out.contains("XDP in generic"),
        "{out}"
    );
    ensure!(out.contains("3 problems found"), "{out}");

    // --vip: only that VIP's services; --json: one object per finding.
    let (code, out) = doctor(&lab, &path, &["--vip", tun_vip, "--json"])?;
    ensure!(code == 1, "exit {code}:\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).context(out.clone())?;
    let servers: Vec<&str> = v
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|f| f["real_server"].as_str())
        .collect();
    ensure!(servers == [rs(3).to_string()], "{out}");

    // Mended: the VIP back on rs2's lo, rs3 silent for it again; the DR
    // service passes and doctor exits 0 for it.
    lab.real_servers[1]
        .ns
        .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    for iface in ["all", "eth0"] {
        lab.real_servers[2]
            .ns
            .sysctl(&format!("net.ipv4.conf.{iface}.arp_ignore"), "1")?;
        lab.real_servers[2]
            .ns
            .sysctl(&format!("net.ipv4.conf.{iface}.arp_announce"), "2")?;
    }
    let (code, out) = doctor(&lab, &path, &["--vip", &VIP.to_string()])?;
    ensure!(code == 0, "exit {code}:\n{out}");
    ensure!(out.contains("0 problems found"), "{out}");
    Ok(())
}
