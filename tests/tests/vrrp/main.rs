//! VRRP between two directors in the lab: election, failover on kill -9,
//! preemption (and nopreempt), graceful handover, unicast, IPv6.

mod election;
mod ipv6;
mod notify;
mod split_brain;
mod tracking;

use self::notify::*;

use anyhow::Result;
use director_tests::{Lab, LabSpec, Proc, scenario};

fn lab() -> Result<Lab> {
    Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })
}

fn start(lab: &Lab, i: usize, config: &str) -> Result<Proc> {
    let name = format!("director{}", i + 1);
    let path = lab.write(&format!("{name}.toml"), config)?;
    scenario::spawn_director(lab, i, &path)
}

/// Director 1 from `c1` and director 2 from `c2`, started; returns once
/// the first is master and the second backup.
fn pair(lab: &Lab, c1: &str, c2: &str) -> Result<(Proc, Proc)> {
    let d1 = start(lab, 0, c1)?;
    let d2 = start(lab, 1, c2)?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    scenario::wait_vrrp_state(&s1, "VI_1", "master", std::time::Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", std::time::Duration::from_secs(10))?;
    Ok((d1, d2))
}

const FAST: &str = "version = 3\nadvert_int = 0.1";
