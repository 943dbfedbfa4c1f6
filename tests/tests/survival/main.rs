//! The pinned dataplane outlives the daemon wherever operators run it, and
//! follows its interface.
//!
//! Every daemon here is started as an operator starts it: `ip netns exec`
//! (a private mount namespace with `/sys` remounted, so the host's bpffs is
//! not in its view) and the default pin directory; nothing is mounted for
//! it. Requests must complete within 900 ms: a SYN dropped while no program
//! forwards would be retransmitted after 1 s and fail.

mod interfaces;
mod pins;
mod restarts;

use self::pins::*;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec,
    scenario::{self},
};

const WITHIN: Duration = Duration::from_millis(900);

fn one_director() -> Result<(Lab, PathBuf, PathBuf)> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let config = scenario::http_config(&lab, "director1", &servers)?;
    ensure!(
        !config.contains("pin_dir"),
        "the default layout is under test"
    );
    let path = lab.write("director1.toml", &config)?;
    let state = lab.state_dir("director1")?;
    Ok((lab, path, state))
}

fn ready(state: &Path) -> Result<serde_json::Value> {
    scenario::wait_status(state, Duration::from_secs(20), scenario::all_resolved)
}

/// The pin directory the daemon reports, checked in the host's view (this
/// test runs in the host's mount namespace).
fn host_pins(status: &serde_json::Value) -> Result<PathBuf> {
    let dir = PathBuf::from(status["pin_dir"].as_str().context("pin_dir")?);
    ensure!(
        dir.starts_with("/sys/fs/bpf/director/"),
        "pins at {}",
        dir.display()
    );
    Ok(dir)
}
