//! Where the dataplane is pinned: a private bpffs in the daemon's view is not trusted, a dataplane that cannot outlive the daemon says so, a refused update keeps the last good state.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec, director_bin, http,
    lab::VIP,
    scenario::{self, spawn_director},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::*;

pub(crate) fn bpftool(args: &[&str]) -> Result<serde_json::Value> {
    let out = director_tests::netns::sh("bpftool", &[&["-j"], args].concat())?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The XDP program on director1's eth0 and its maps' ids.
pub(crate) fn dataplane_objects(lab: &Lab) -> Result<(u64, Vec<u64>)> {
    let out = lab.directors[0]
        .ns
        .ip(&["-d", "-j", "link", "show", "eth0"])?;
    let link: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let program = link[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| link[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
        .with_context(|| format!("no XDP program in {link}"))?;
    let info = bpftool(&["prog", "show", "id", &program.to_string()])?;
    let maps = info["map_ids"]
        .as_array()
        .context("map_ids")?
        .iter()
        .filter_map(|m| m.as_u64())
        .collect();
    Ok((program, maps))
}

/// A unit that mounts its own bpffs (or a namespace that has one) must not
/// fool the daemon: that bpffs dies with the namespace, so the daemon
/// brings the host's into view over it.
#[test]
fn a_private_bpffs_in_the_daemons_view_is_not_trusted() -> Result<()> {
    let (lab, path, state) = one_director()?;
    let bin = director_bin()?;
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && exec {} run --config {}",
        bin.display(),
        path.display()
    );
    let mut daemon =
        lab.directors[0]
            .ns
            .spawn("sh", &["-c", &script], &lab.path("director1.log"))?;
    let status = ready(&state)?;
    ensure!(status["dataplane_survives_restart"] == true, "{status}");
    let pins = host_pins(&status)?;
    ensure!(
        pins.join("link").exists(),
        "the daemon pinned into its private bpffs, not the host's"
    );
    let pid = daemon.pid().context("pid")?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    let _ = daemon.stop(Signal::SIGKILL, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    ensure!(lab.directors[0].xdp_attached()?, "XDP gone with the daemon");
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 20, WITHIN))?;
    ensure!(t.ok == 20, "not forwarding after the daemon died: {t:?}");
    Ok(())
}

/// A daemon that may not enter the host's mount namespace (here: started
/// without `CAP_SYS_CHROOT`, inside `ip netns exec`'s private view) cannot
/// pin its dataplane where it outlives it: it forwards, and says so once
/// in the log naming the cause, in `status` (a warning), in `status
/// --json` (`dataplane_survives_restart: false`) and in the metric
/// (`director_dataplane_survives_restart 0`); stopped, its dataplane goes
/// with it (no XDP left on the interface).
#[test]
fn a_dataplane_that_cannot_outlive_the_daemon_says_so() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: true,
    })?;
    let servers = vec![lab.real_servers[0].ip.to_string()];
    let mut config = scenario::http_config(&lab, "director1", &servers)?;
    config = config.replacen(
        "[global]\n",
        "[global]\nmetrics_address = \"10.0.0.10:9100\"\n",
        1,
    );
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    let bin = director_bin()?;
    let mut daemon = lab.directors[0].ns.spawn(
        "setpriv",
        &[
            "--bounding-set",
            "-sys_chroot",
            "--inh-caps",
            "-sys_chroot",
            &bin.to_string_lossy(),
            "run",
            "--config",
            &path.to_string_lossy(),
        ],
        &lab.path("director1.log"),
    )?;
    let status = ready(&state)?;
    ensure!(
        status["dataplane_survives_restart"] == false,
        "survives without the right to reach the host's bpffs? {status}"
    );
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 10, WITHIN))?;
    ensure!(t.ok == 10, "{t:?}");
    let log = daemon.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("will NOT survive"))
        .collect();
    ensure!(said.len() == 1, "said {} times:\n{log}", said.len());
    let (ok, table) = {
        let out = std::process::Command::new(&bin)
            .args(["status", "--state-dir"])
            .arg(&state)
            .output()?;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    ensure!(
        ok && table.to_lowercase().contains("warning"),
        "director status:\n{table}"
    );
    let addr = SocketAddr::from(([10, 0, 0, 10], 9100));
    let metrics = lab
        .client
        .run(move || http::get(addr, "/metrics", Duration::from_secs(3)))??;
    ensure!(
        metrics
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("director_dataplane_survives_restart "))
            .any(|v| v.parse::<f64>() == Ok(0.0)),
        "{}",
        metrics.body
    );
    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    ensure!(
        !lab.directors[0].xdp_attached()?,
        "XDP outlived a daemon that said it would not"
    );
    Ok(())
}

/// An update the kernel refuses outside a reload (here the real-server
/// and Maglev maps frozen under the daemon, `bpftool map freeze`: every
/// write from user space now fails) never stops the daemon: a health
/// change cannot be applied, the last good state keeps forwarding, the
/// error is logged once however often it is retried, and `status` shows
/// it as `dataplane_error`.
#[test]
fn a_refused_dataplane_update_keeps_the_last_good_state_and_says_so() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let mut c = scenario::global_config(&lab, "director1")?;
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\n"
    ));
    for rs in &lab.real_servers {
        c.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nconnect_timeout = 0.5\nretry = 0\nwarmup = 0\n",
            rs.ip
        ));
    }
    let path = lab.write("director1.toml", &c)?;
    let state = lab.state_dir("director1")?;
    let mut daemon = spawn_director(&lab, 0, &path)?;
    let status = ready(&state)?;
    ensure!(status["dataplane_error"].is_null(), "{status}");
    let pins = host_pins(&status)?;
    for map in ["BACKENDS", "MAGLEV"] {
        let pin = pins.join(map);
        ensure!(pin.exists(), "no {}", pin.display());
        director_tests::netns::sh(
            "bpftool",
            &["map", "freeze", "pinned", &pin.to_string_lossy()],
        )?;
    }
    // rs2 fails its checks: the change cannot reach the frozen maps.
    lab.stop_http(1)?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][0]["real_servers"][1]["healthy"] == false
            && s["dataplane_error"].is_string()
    })?;
    let error = s["dataplane_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Retried for a second: still one line.
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log();
    let said = log
        .lines()
        .filter(|l| l.contains("the dataplane refused an update"))
        .count();
    ensure!(said == 1, "said {said} times ({error}):\n{log}");
    ensure!(daemon.running(), "the daemon stopped:\n{log}");
    // The last good state forwards: rs1 still gets its flows.
    let vip = SocketAddr::from((VIP, 80));
    let t = lab.client.run(move || http::hammer(vip, 20, WITHIN))?;
    ensure!(t.by_body.get("rs1").copied().unwrap_or(0) > 0, "{t:?}");
    let st = scenario::status(&state)?;
    ensure!(st["dataplane_error"] == error.as_str(), "{st}");
    daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    // The frozen maps go with the pins.
    let flushed = std::process::Command::new(director_bin()?)
        .args(["flush", "--state-dir"])
        .arg(&state)
        .status()?;
    ensure!(flushed.success(), "director flush");
    Ok(())
}
