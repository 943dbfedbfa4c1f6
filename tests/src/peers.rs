//! Second implementations of the protocols, run in a lab host's namespace:
//! FRR's `bfdd` (with the `zebra` it needs) and keepalived's own BFD
//! (`bfd_instance`). Each is a real daemon from Debian's packages, killed
//! with the lab.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{Netns, Proc};

/// FRR's zebra and bfdd in one namespace, with their vty sockets in a
/// directory of their own.
pub struct Frr {
    pub bfdd: Proc,
    pub zebra: Proc,
    /// Where vtysh finds them (`--vty_socket`).
    pub vty: PathBuf,
}

/// Where FRR's daemons live on Debian.
const FRR_LIBEXEC: &str = "/usr/lib/frr";

impl Frr {
    /// Starts zebra, then bfdd with `bfd_conf` (a `bfd` block), in `ns`;
    /// files under `dir/frr-NAME/`.
    pub fn start(ns: &Netns, dir: &Path, name: &str, bfd_conf: &str) -> Result<Frr> {
        let home = dir.join(format!("frr-{name}"));
        std::fs::create_dir_all(&home)?;
        // FRR drops to the frr user: its directory must be its own.
        crate::netns::sh("chown", &["frr:frr", &home.to_string_lossy()])?;
        crate::netns::sh("chmod", &["755", &home.to_string_lossy()])?;
        let zebra_conf = home.join("zebra.conf");
        let bfdd_conf = home.join("bfdd.conf");
        std::fs::write(&zebra_conf, "")?;
        std::fs::write(&bfdd_conf, bfd_conf)?;
        let zserv = home.join("zserv.api");
        let path = |p: &Path| p.to_string_lossy().to_string();
        let common = |conf: &Path, pid: &str| -> Vec<String> {
            vec![
                "-f".into(),
                path(conf),
                "-i".into(),
                path(&home.join(pid)),
                "-z".into(),
                path(&zserv),
                "--vty_socket".into(),
                path(&home),
                "-u".into(),
                "frr".into(),
                "-g".into(),
                "frr".into(),
                "--log".into(),
                "stdout".into(),
            ]
        };
        let args = common(&zebra_conf, "zebra.pid");
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut zebra = ns.spawn(
            &format!("{FRR_LIBEXEC}/zebra"),
            &refs,
            &home.join("zebra.log"),
        )?;
        zebra
            .wait_for_log(Duration::from_secs(10), |l| l.contains("starting"))
            .context("zebra did not start")?;
        // Its API socket, before bfdd connects.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !zserv.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut args = common(&bfdd_conf, "bfdd.pid");
        args.extend(["--bfdctl".into(), path(&home.join("bfdd.sock"))]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut bfdd = ns.spawn(
            &format!("{FRR_LIBEXEC}/bfdd"),
            &refs,
            &home.join("bfdd.log"),
        )?;
        bfdd.wait_for_log(Duration::from_secs(10), |l| l.contains("starting"))
            .context("bfdd did not start")?;
        Ok(Frr {
            bfdd,
            zebra,
            vty: home,
        })
    }

    /// `vtysh -c COMMAND` against these daemons, from `ns`.
    pub fn vtysh(&self, ns: &Netns, command: &str) -> Result<String> {
        let out = ns.exec(
            "vtysh",
            &["--vty_socket", &self.vty.to_string_lossy(), "-c", command],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// bfdd's view of its one peer: `show bfd peers json` (status,
    /// timers) merged with `show bfd peers counters json` (session-up,
    /// session-down).
    pub fn peer(&self, ns: &Netns) -> Result<serde_json::Value> {
        let peers: serde_json::Value =
            serde_json::from_str(&self.vtysh(ns, "show bfd peers json")?)?;
        let counters: serde_json::Value =
            serde_json::from_str(&self.vtysh(ns, "show bfd peers counters json")?)?;
        let mut p = peers[0].clone();
        if let (Some(p), Some(c)) = (p.as_object_mut(), counters[0].as_object()) {
            for (k, v) in c {
                p.insert(k.clone(), v.clone());
            }
        }
        Ok(p)
    }
}

/// keepalived with only a `bfd_instance` (its BFD process), logging to
/// `dir/keepalived-NAME.log`.
pub fn keepalived_bfd(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Result<Proc> {
    let conf_path = dir.join(format!("keepalived-{name}.conf"));
    std::fs::write(&conf_path, conf)?;
    let file = |what: &str| dir.join(format!("keepalived-{name}.{what}"));
    let pid = file("pid");
    let vrrp_pid = file("vrrp.pid");
    let checker_pid = file("checker.pid");
    let bfd_pid = file("bfd.pid");
    let args = [
        "-n".to_string(),
        "-l".into(),
        "-D".into(),
        "-f".into(),
        conf_path.to_string_lossy().to_string(),
        "-p".into(),
        pid.to_string_lossy().to_string(),
        "-r".into(),
        vrrp_pid.to_string_lossy().to_string(),
        "-c".into(),
        checker_pid.to_string_lossy().to_string(),
        format!("--bfd_pid={}", bfd_pid.to_string_lossy()),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.spawn("keepalived", &refs, &file("log"))
}
