//! The lab: network-namespace topologies shared by `cargo xtask lab`, the
//! integration tests and the benchmarks.
//!
//! A lab is a bridge "switch" in its own namespace, and one namespace per
//! host (a client, N directors, M real servers), each with an `eth0` veth
//! plugged into the switch. Every name is unique per run (`dlab-<pid>-<n>`),
//! so labs run side by side with other runs; dropping a [`Lab`] kills its
//! processes and deletes its namespaces, also when a test panics.
//! `cargo xtask lab clean` removes what a killed run left behind.
//!
//! The veth/XDP quirks of this machine are applied here, in one place:
//! - **XDP_TX on a veth is dropped unless the peer veth also runs an XDP
//!   program**, so every director's switch-side port gets a two-instruction
//!   `XDP_PASS` program ([`xdp_pass`]).
//! - **Checksum offload:** a veth sender leaves TCP/UDP checksums partial;
//!   after XDP_TX the real server would drop them, so the client's `eth0`
//!   has `tx` offload off (real NICs checksum in hardware).
//!
//! Real servers are LVS-DR real servers: the VIP on `lo`, `arp_ignore=1`,
//! `arp_announce=2`, and an nginx that answers `GET /` with its own name.

pub mod bpfmap;
pub mod capture;
pub mod connflood;
pub mod ecmp;
pub mod flood;
pub mod http;
pub mod inject;
pub mod lab;
pub mod netns;
pub mod peers;
pub mod prometheus;
pub mod scenario;
pub mod systemd_vm;
pub mod udp;
pub mod vm;
pub mod xdp_pass;

pub use lab::{Lab, LabSpec, Node};
pub use netns::{Netns, Proc};

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The `director` binary under test: `$DIRECTOR_BIN`, or the one cargo built
/// next to the running test (`target/<profile>/director`). `cargo xtask
/// test` builds it first and sets `DIRECTOR_BIN`.
pub fn director_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DIRECTOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/xtask
    // -> target/<profile>/director
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("director");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "director binary not found: run `cargo build -p director` first, or `cargo xtask test`, or set DIRECTOR_BIN"
    )
}

/// `cargo xtask package` of the binary under test, as version `version`.
pub fn package(out: &std::path::Path, version: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let result = std::process::Command::new(cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "run",
            "--quiet",
            "-p",
            "xtask",
            "--",
            "package",
            "--version",
            version,
        ])
        .arg("--binary")
        .arg(director_bin()?)
        .arg("--out")
        .arg(out)
        .output()?;
    anyhow::ensure!(
        result.status.success(),
        "cargo xtask package failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let path = String::from_utf8_lossy(&result.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| anyhow::anyhow!("no package path printed"))?;
    anyhow::ensure!(path.is_file(), "{} missing", path.display());
    Ok(path)
}
