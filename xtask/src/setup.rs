//! `cargo xtask setup`: installs what the build, the lab and the tests need
//! on a fresh Debian 12 machine, as root. Every step checks first, so a
//! second run changes nothing and says so.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// Debian packages, and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "lab: namespaces, veth, bridge"),
    ("iputils-ping", "lab: reachability checks"),
    ("ethtool", "lab: checksum offload off on veth clients"),
    ("procps", "lab: sysctl"),
    (
        "psmisc",
        "tests: killall -0 in the imported keepalived corpus",
    ),
    ("nftables", "tests: fault injection (dropping VRRP)"),
    ("tcpdump", "tests: captures"),
    ("tshark", "tests: VRRP decoding"),
    ("nginx-light", "lab: real servers' HTTP"),
    ("dnsmasq-base", "tests: a real DNS server for dns_check"),
    ("keepalived", "tests: VRRP interop"),
    ("bird2", "tests: BGP announcement of VIPs (ECMP lab)"),
    ("frr", "tests: BFD interop with FRR's bfdd"),
    ("ipvsadm", "tests: IPVS cross-check"),
    (
        "prometheus",
        "tests: a real Prometheus scrapes the lab; promtool checks the metrics and the alert rules",
    ),
    ("bpftool", "benchmarks: BPF_PROG_TEST_RUN"),
    ("qemu-system-x86", "tests: IPVS kernel VM"),
    ("busybox-static", "tests: IPVS kernel VM"),
    ("kmod", "tests: IPVS kernel VM"),
    ("cpio", "tests: IPVS kernel VM"),
    (
        "mmdebstrap",
        "tests: the systemd VM's Debian root filesystem",
    ),
    (
        "qemu-utils",
        "tests: the systemd VM's copy-on-write disk (qemu-img)",
    ),
    (
        "e2fsprogs",
        "tests: the systemd VM's ext4 image (mkfs.ext4 -d)",
    ),
    ("lintian", "tests: the Debian package's lintian check"),
    ("llvm-22-dev", "build: bpf-linker"),
    ("libpolly-22-dev", "build: bpf-linker"),
    ("libzstd-dev", "build: bpf-linker"),
    ("zlib1g-dev", "build: bpf-linker"),
];

/// cargo-fuzz release line.
const CARGO_FUZZ_VERSION: &str = "0.13";

/// bpf-linker release line that matches rustc's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Say what was checked, also when nothing was done.
    Report,
    /// Only speak when something is installed.
    Quiet,
}

pub fn run(verbosity: Verbosity) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("setup needs root (apt-get, mount); run it as root");
    }
    let mut done = Vec::new();
    let say = |what: &str| {
        if verbosity == Verbosity::Report {
            println!("  ok  {what}");
        }
    };

    // Debian packages.
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        say(&format!("{} Debian packages installed", PACKAGES.len()));
    } else {
        println!("setup: installing Debian packages: {}", missing.join(" "));
        exec(Command::new("apt-get").arg("update").arg("-q"))?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        done.push(format!("packages ({})", missing.join(" ")));
        // An install may remove a package it conflicts with (Debian's
        // qemu-system-x86 removes a backported qemu-utils of another
        // version): what went missing is installed again, at the version
        // that fits.
        let removed: Vec<&str> = PACKAGES
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !deb_installed(p))
            .collect();
        if !removed.is_empty() {
            println!(
                "setup: installing again what the install removed: {}",
                removed.join(" ")
            );
            exec(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(&removed)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            let still: Vec<&str> = PACKAGES
                .iter()
                .map(|(p, _)| *p)
                .filter(|p| !deb_installed(p))
                .collect();
            if !still.is_empty() {
                bail!(
                    "setup: packages still missing after install: {}",
                    still.join(" ")
                );
            }
        }
    }

    // Nightly toolchain with rust-src (the eBPF crate builds core itself).
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        done.push("nightly toolchain".to_string());
    } else {
        say("nightly toolchain");
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        done.push("nightly rust-src".to_string());
    } else {
        say("nightly rust-src");
    }

    // bpf-linker, linked against LLVM 22 like rustc.
    let linker = Command::new("bpf-linker").arg("--version").output();
    let have = linker
        .as_ref()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if have.contains(&format!(" {BPF_LINKER_VERSION}.")) {
        say(&format!("bpf-linker ({})", have.trim()));
    } else {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        exec(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "install",
                    "bpf-linker",
                    "--force",
                    "--version",
                    &format!("^{BPF_LINKER_VERSION}"),
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
        done.push("bpf-linker".to_string());
    }

    // cargo-fuzz, for the fuzz targets (`cargo xtask fuzz`).
    let fuzz = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["fuzz", "--version"])
        .output();
    if fuzz.as_ref().is_ok_and(|o| o.status.success()) {
        say("cargo-fuzz");
    } else {
        println!("setup: installing cargo-fuzz (about 20 s)");
        exec(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                &format!("^{CARGO_FUZZ_VERSION}"),
            ]),
        )?;
        done.push("cargo-fuzz".to_string());
    }

    // No bpffs is mounted here: the daemon mounts the host's itself where
    // it is missing (as systemd does at boot), and the tests must see it do
    // so.

    if done.is_empty() {
        if verbosity == Verbosity::Report {
            println!("setup: nothing to do, everything is already installed");
        }
    } else {
        println!("setup: done ({})", done.join(", "));
    }
    Ok(())
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}
