//! Pieces shared by the lab demo and the integration tests: director
//! configs for the lab, starting the daemon, reading its log.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;

use crate::{Lab, Proc, director_bin, lab::VIP};

/// A director config for `lab`: the VIP on port 80/tcp served by the given
/// real-server addresses, state kept in the lab directory.
pub fn http_config(lab: &Lab, router_id: &str, real_servers: &[String]) -> Result<String> {
    let mut config = global_config(lab, router_id)?;
    config.push_str(&virtual_server(&VIP.to_string(), 80, real_servers, &[]));
    Ok(config)
}

/// The `[global]` table for director `router_id` of the lab.
pub fn global_config(lab: &Lab, router_id: &str) -> Result<String> {
    Ok(format!(
        "[global]\nrouter_id = \"{router_id}\"\ninterface = \"eth0\"\nstate_dir = \"{}\"\n",
        lab.state_dir(router_id)?.display()
    ))
}

/// A TCP `[[virtual_server]]` table; `weights` gives (address, weight)
/// overrides.
pub fn virtual_server(
    vip: &str,
    port: u16,
    real_servers: &[String],
    weights: &[(&str, u32)],
) -> String {
    virtual_server_of("tcp", vip, port, real_servers, weights)
}

/// A UDP `[[virtual_server]]` table (see [`crate::udp`] for an echo).
pub fn udp_virtual_server(vip: &str, port: u16, real_servers: &[String]) -> String {
    virtual_server_of("udp", vip, port, real_servers, &[])
}

fn virtual_server_of(
    protocol: &str,
    vip: &str,
    port: u16,
    real_servers: &[String],
    weights: &[(&str, u32)],
) -> String {
    let mut s = format!(
        "\n[[virtual_server]]\naddress = \"{vip}\"\nport = {port}\nprotocol = \"{protocol}\"\n"
    );
    for rs in real_servers {
        s.push_str(&format!(
            "\n  [[virtual_server.real_server]]\n  address = \"{rs}\"\n"
        ));
        if let Some((_, w)) = weights.iter().find(|(a, _)| a == rs) {
            s.push_str(&format!("  weight = {w}\n"));
        }
    }
    s
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

/// `director status --json --state-dir DIR`, parsed.
pub fn status(state_dir: &Path) -> Result<serde_json::Value> {
    let out = std::process::Command::new(director_bin()?)
        .args(["status", "--json", "--state-dir"])
        .arg(state_dir)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "director status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits until the daemon's status satisfies `pred`.
pub fn wait_status(
    state_dir: &Path,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match status(state_dir) {
            Ok(s) if pred(&s) => return Ok(s),
            Ok(s) => last = Some(s.to_string()),
            Err(e) => last = Some(format!("{e:#}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("status never matched within {timeout:?}; last: {last:?}")
}

/// Whether every real server of every virtual server has a MAC.
pub fn all_resolved(s: &serde_json::Value) -> bool {
    s["virtual_servers"].as_array().is_some_and(|v| {
        !v.is_empty()
            && v.iter().all(|vs| {
                vs["real_servers"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|rs| rs["mac"].is_string()))
            })
    })
}

/// A director config with one VRRP instance holding the lab VIPs and the
/// HTTP service on them; `extra` lines go into the `[[vrrp_instance]]`.
pub fn vrrp_config(lab: &Lab, router_id: &str, priority: u8, extra: &str) -> Result<String> {
    let mut c = global_config(lab, router_id)?;
    c.push_str(&format!(
        "\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\npriority = {priority}\nvirtual_ipaddress = [\"{VIP}/32\"]\n{extra}\n"
    ));
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    c.push_str(&virtual_server(&VIP.to_string(), 80, &servers, &[]));
    Ok(c)
}

/// Starts directors 1 and 2 of `lab` as a VRRP pair (priorities 150 and
/// 100, `extra` in both instances) and waits until director1 is master,
/// director2 backup, and both have resolved every real server.
pub fn vrrp_pair(lab: &Lab, extra: &str) -> Result<(Proc, Proc)> {
    vrrp_pair_of(
        lab,
        &vrrp_config(lab, "director1", 150, extra)?,
        &vrrp_config(lab, "director2", 100, extra)?,
    )
}

/// [`vrrp_pair`] with the two directors' whole configs (instance `VI_1`).
pub fn vrrp_pair_of(lab: &Lab, config1: &str, config2: &str) -> Result<(Proc, Proc)> {
    let p1 = lab.write("director1.toml", config1)?;
    let p2 = lab.write("director2.toml", config2)?;
    let d1 = spawn_director(lab, 0, &p1)?;
    let d2 = spawn_director(lab, 1, &p2)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    wait_status(&s1, Duration::from_secs(10), all_resolved)?;
    wait_status(&s2, Duration::from_secs(10), all_resolved)?;
    Ok((d1, d2))
}

/// Proves that director `i` carries the traffic for `vip`, not a previous
/// master whose dataplane still forwards: the client's neighbour entry for
/// the VIP names director `i`'s MAC (its gratuitous ARP or unsolicited NA
/// moved it; waited for up to 2 s), and `n` requests through the VIP add
/// at least `n` new flows to the counters of the daemon whose state
/// directory is `state`.
pub fn assert_carries(lab: &Lab, i: usize, vip: IpAddr, state: &Path, n: usize) -> Result<()> {
    let mac = lab.directors[i].mac()?;
    let neighbour = || -> Result<String> {
        let out = lab
            .client
            .ns
            .ip(&["neigh", "show", &vip.to_string(), "dev", "eth0"])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let addr = std::net::SocketAddr::new(vip, 80);
    if neighbour()?.is_empty() {
        // No entry yet (announcements only move existing ones): one
        // request makes the client resolve the VIP.
        lab.client
            .run(move || crate::http::hammer(addr, 1, Duration::from_secs(2)))?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !neighbour()?.contains(&mac) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the client's neighbour entry for {vip} is `{}`, not director{}'s {mac}",
            neighbour()?,
            i + 1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let flows = |s: &serde_json::Value| -> u64 {
        s["virtual_servers"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|vs| vs["address"] == vip.to_string())
                    .filter_map(|vs| vs["new_flows"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    let before = flows(&status(state)?);
    let t = lab
        .client
        .run(move || crate::http::hammer(addr, n, Duration::from_secs(2)))?;
    anyhow::ensure!(t.ok == n, "requests to {addr}: {t:?}");
    let after = flows(&status(state)?);
    anyhow::ensure!(
        after >= before + n as u64,
        "director{} placed {} new flows for {n} requests: another director carries them",
        i + 1,
        after.saturating_sub(before)
    );
    Ok(())
}

/// The state of VRRP instance `name` in a daemon's status.
pub fn vrrp_state(state_dir: &Path, name: &str) -> Option<String> {
    let s = status(state_dir).ok()?;
    s["vrrp"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["state"].as_str().map(str::to_string))
}

/// Waits until instance `name` of the daemon is in `state`.
pub fn wait_vrrp_state(state_dir: &Path, name: &str, state: &str, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        last = vrrp_state(state_dir, name);
        if last.as_deref() == Some(state) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{name} is {last:?}, not {state}, after {timeout:?}")
}

/// `director watch-vrrp eth0 --duration SECS --json` in `ns`, parsed.
pub fn watch_vrrp(ns: &crate::Netns, seconds: f64) -> Result<serde_json::Value> {
    let bin = director_bin()?;
    let out = ns.exec(
        &bin.to_string_lossy(),
        &[
            "watch-vrrp",
            "eth0",
            "--duration",
            &seconds.to_string(),
            "--json",
        ],
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A keepalived process started by [`spawn_keepalived`], with its files.
pub struct Keepalived {
    pub proc: Proc,
    /// The directory holding its config, pid files and log.
    pub dir: std::path::PathBuf,
}

impl Keepalived {
    /// The pid of keepalived's VRRP child, once it wrote its pid file.
    pub fn vrrp_pid(&self, timeout: Duration) -> Result<i32> {
        let path = self.dir.join("vrrp.pid");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Ok(pid);
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("keepalived wrote no VRRP pid file");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// keepalived with `conf` on director `index` of the lab, in the
/// foreground, logging to the console (captured in its directory). A fresh
/// directory per start: after kill -9, keepalived's pid files (and for a
/// moment its VRRP child) outlive it.
pub fn spawn_keepalived(lab: &Lab, index: usize, conf: &str) -> Result<Keepalived> {
    spawn_keepalived_with(lab, index, conf, &[])
}

/// [`spawn_keepalived`] with more command-line arguments (for example
/// `-P`: only the VRRP subsystem, as beside a dataplane it does not drive).
pub fn spawn_keepalived_with(
    lab: &Lab,
    index: usize,
    conf: &str,
    extra: &[&str],
) -> Result<Keepalived> {
    static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = lab.path(&format!("keepalived{index}-{n}"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("keepalived.conf");
    std::fs::write(&path, conf)?;
    let (conf_path, pid, vrrp_pid) = (
        path.to_string_lossy().to_string(),
        dir.join("keepalived.pid").to_string_lossy().to_string(),
        dir.join("vrrp.pid").to_string_lossy().to_string(),
    );
    let mut args = vec![
        "-n", "-l", "-D", "-f", &conf_path, "-p", &pid, "-r", &vrrp_pid,
    ];
    args.extend_from_slice(extra);
    let proc = lab.directors[index]
        .ns
        .spawn("keepalived", &args, &dir.join("keepalived.log"))?;
    Ok(Keepalived { proc, dir })
}

/// A minimal keepalived.conf: one instance (VRID 51) holding the lab VIP.
pub fn keepalived_conf(router_id: &str, priority: u8, version: u8, interval: &str) -> String {
    format!(
        "global_defs {{\n  router_id {router_id}\n  vrrp_version {version}\n  vrrp_garp_master_delay 0\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {interval}\n  virtual_ipaddress {{\n    {VIP}/32\n  }}\n}}\n"
    )
}

/// Runs `director ARGS... --state-dir STATE`: (success, stderr).
pub fn director_cli(args: &[&str], state_dir: &Path) -> Result<(bool, String)> {
    let out = std::process::Command::new(director_bin()?)
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

/// `director real-server drain` of `address` on the lab VIP's port 80.
pub fn drain_real_server(address: &str, state_dir: &Path) -> Result<()> {
    let (ok, err) = director_cli(
        &[
            "real-server",
            "drain",
            "--vip",
            &VIP.to_string(),
            "--port",
            "80",
            "--address",
            address,
        ],
        state_dir,
    )?;
    anyhow::ensure!(ok, "drain {address}: {err}");
    Ok(())
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

/// The Unix time of a daemon log line (its leading RFC 3339 UTC stamp,
/// `2026-12-06T20:48:35.257237Z`), from the daemon's own clock.
pub fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    // days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

#[cfg(test)]
mod log_time_tests {
    #[test]
    fn log_stamps_are_unix_times() {
        let t = super::log_time("2026-12-06T20:48:35.257237Z  INFO director: x").expect("a stamp");
        assert!((t - 1_796_590_115.257_237).abs() < 1e-6, "{t}");
        assert_eq!(super::log_time("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(super::log_time("not a stamp"), None);
    }
}
