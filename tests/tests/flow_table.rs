//! `global.flow_table_size`: the XDP flow table the kernel holds has the
//! configured size (read back with bpftool from the pinned map), the
//! status reports it and its memory, and a daemon restarted with another
//! size re-creates the table at that size (saying so) and keeps serving.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};
use nix::sys::signal::Signal;

/// `max_entries` of the pinned flow table, from bpftool.
fn pinned_flows(pin_dir: &str) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(format!("{pin_dir}/FLOWS"))
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).to_string())?;
    v["max_entries"].as_u64().context("max_entries")
}

#[test]
fn the_flow_table_has_the_configured_size_and_follows_a_change() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let base = scenario::http_config(&lab, "director1", &servers)?;
    let sized = |n: u32| {
        base.replacen(
            "[global]\n",
            &format!("[global]\nflow_table_size = {n}\n"),
            1,
        )
    };
    let path = lab.write("d.toml", &sized(4096))?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    let s = scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    let pin_dir = s["pin_dir"].as_str().context("pin_dir")?.to_string();
    ensure!(pinned_flows(&pin_dir)? == 4096);
    ensure!(
        s["flow_table_size"] == 4096
            && s["flow_table_memory_bytes"]
                .as_u64()
                .is_some_and(|b| b > 4096 * 64),
        "{s}"
    );
    let vip = std::net::SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(2)))?;
    ensure!(t.ok == 10, "{t:?}");

    // Restarted with another size: a table of that size, said in the log.
    d.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    std::fs::write(&path, sized(8192))?;
    let d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    ensure!(pinned_flows(&pin_dir)? == 8192);
    ensure!(d.log().contains("flow table resized"), "{}", d.log());
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(2)))?;
    ensure!(t.ok == 10, "{t:?}");
    Ok(())
}
