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

const FAST: &str = "version = 3\nadvert_int = 0.1";
