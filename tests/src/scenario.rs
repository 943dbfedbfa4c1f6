//! Pieces shared by the lab demo and the integration tests: director
//! configs for the lab, starting the daemon, reading its log.

use std::{path::Path, time::Duration};

use anyhow::Result;

use crate::{Lab, Proc, director_bin, lab::VIP};

/// A director config for `lab`: the VIP on port 80/tcp served by the given
/// real-server addresses, state kept in the lab directory.
pub fn http_config(lab: &Lab, router_id: &str, real_servers: &[String]) -> String {
    let mut config = format!(
        r#"[global]
router_id = "{router_id}"
interface = "eth0"
state_dir = "{state}"

[[virtual_server]]
address = "{VIP}"
port = 80
protocol = "tcp"
"#,
        state = lab.path(&format!("state-{router_id}")).display(),
    );
    for rs in real_servers {
        config.push_str(&format!(
            "\n  [[virtual_server.real_server]]\n  address = \"{rs}\"\n  port = 80\n"
        ));
    }
    config
}

/// Starts `director run --config CONFIG` on director `index` of the lab,
/// logging to `<lab dir>/<director name>.log`.
pub fn spawn_director(lab: &Lab, index: usize, config: &Path) -> Result<Proc> {
    let node = &lab.directors[index];
    let bin = director_bin()?;
    node.ns.spawn(
        &bin.to_string_lossy(),
        &["run", "--config", &config.to_string_lossy()],
        &lab.path(&format!("{}.log", node.name)),
    )
}

/// Waits until the director forwards the lab's service to `n` real servers.
pub fn wait_forwarding(director: &mut Proc, n: usize) -> Result<()> {
    let needle = format!("real_servers={n}");
    director.wait_for_log(Duration::from_secs(20), |log| log.contains(&needle))
}

/// The `packets=` figure of the daemon's exit summary.
pub fn forwarded_packets(log: &str) -> Option<u64> {
    log.lines()
        .find(|l| l.contains("forwarded in total"))
        .and_then(|l| l.split("packets=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exit_summary() {
        let log = "x\n2026 INFO director::daemon: forwarded in total service=10.0.0.100:80/tcp packets=3253 bytes=229298\n";
        assert_eq!(forwarded_packets(log), Some(3253));
        assert_eq!(forwarded_packets("nothing"), None);
    }
}
