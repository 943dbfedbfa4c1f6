//! `cargo xtask ...`: everything beyond `cargo build`.
//!
//! - `setup`: install what the build, the lab and the tests need (idempotent)
//! - `lab`: the product's main job, shown on a built-in lab
//! - `lab clean`: remove namespaces left by killed runs
//! - `test`: the whole test suite (runs setup first)
//! - `lint`: rustfmt, clippy for the workspace, clippy for the eBPF crate

mod bench;
mod bench_ecmp;
mod bench_ha;
mod bench_health;
mod bench_soak;
mod demo;
mod fuzz;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build, the lab and the tests need (idempotent).
    Setup,
    /// Run the director on a built-in lab and show what it does.
    Lab {
        #[command(subcommand)]
        action: Option<LabAction>,
        /// Requests the client sends through the VIP.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Keep the lab's configs and logs (in /tmp/dlab-*).
        #[arg(long)]
        keep: bool,
    },
    /// Run the whole test suite (unit and lab integration tests) as root.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt check, clippy -D warnings (default members, then the eBPF crate).
    Lint,
    /// Build the release binary (daemon with the XDP program embedded) and
    /// print its path (after `setup` if needed).
    Build,
    /// Build, then run the release binary as root with ARGS (for example
    /// `cargo xtask run -- run --config my.toml`).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (target/package/director_VERSION_ARCH.deb)
    /// and print its path.
    Package {
        /// Package version (default: the workspace's).
        #[arg(long)]
        version: Option<String>,
        /// Package this binary instead of a fresh release build.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Output directory (default: target/package).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Then run lintian on it (no error allowed).
        #[arg(long)]
        lintian: bool,
    },
    /// Run the fuzz targets (cargo fuzz, nightly) from the checked-in
    /// seeds; a crash is saved under fuzz/regressions and fails the run.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Benchmarks (not tests): `xdp` (per-packet cost vs a floor program),
    /// `failover` (outage after kill -9 of the master, vs keepalived),
    /// `health` (10,000 real servers checked every second), `ha`
    /// (connections surviving a master's death).
    Bench {
        /// Which benchmark: xdp, failover, health, ha, ecmp, soak.
        what: String,
        /// Prove the harness and every measured path in seconds, print no
        /// figures (what CI runs).
        #[arg(long)]
        short: bool,
        /// failover: also run a 10 ms pair under CPU load this many seconds.
        #[arg(long, default_value_t = 0)]
        soak: u64,
        /// failover: skip the outage measurements (soak only).
        #[arg(long)]
        soak_only: bool,
        /// soak: how long, minutes.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Remove namespaces and scratch files left by lab runs that died.
    Clean {
        /// Also remove labs whose run is still alive.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::run(setup::Verbosity::Report),
        Cmd::Lab {
            action: Some(LabAction::Clean { all }),
            ..
        } => {
            let removed = director_tests::lab::clean(all)?;
            if removed.is_empty() {
                println!("lab clean: nothing to remove");
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(())
        }
        Cmd::Lab {
            action: None,
            requests,
            keep,
        } => {
            setup::run(setup::Verbosity::Quiet)?;
            let bin = build_director()?;
            demo::run(&bin, requests, keep)
        }
        Cmd::Test { args } => {
            setup::run(setup::Verbosity::Quiet)?;
            let bin = build_director()?;
            let mut cmd = cargo();
            cmd.args(["test", "--no-fail-fast"])
                .env("DIRECTOR_BIN", &bin)
                .arg("--")
                .args(args);
            test_with_summary(&mut cmd)
        }
        Cmd::Lint => lint(),
        Cmd::Build => {
            let bin = build_release()?;
            println!("{}", bin.display());
            Ok(())
        }
        Cmd::Run { args } => {
            let bin = build_release()?;
            let mut cmd = if nix::unistd::Uid::effective().is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            exec(cmd.args(args))
        }
        Cmd::Package {
            version,
            binary,
            out,
            lintian,
        } => {
            if binary.is_none() {
                setup::run(setup::Verbosity::Quiet)?;
            }
            let deb = package::run(package::Options {
                version,
                binary,
                out,
            })?;
            if lintian {
                exec(
                    Command::new("lintian")
                        .args(["--fail-on", "error", "--tag-display-limit", "0"])
                        .arg(&deb),
                )?;
            }
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Fuzz { time, targets } => {
            setup::run(setup::Verbosity::Quiet)?;
            fuzz::run(time, &targets)
        }
        Cmd::Bench {
            what,
            short,
            soak,
            soak_only,
            minutes,
        } => {
            setup::run(setup::Verbosity::Quiet)?;
            match what.as_str() {
                "failover" => {
                    let bin = build_director()?;
                    // SAFETY: single-threaded at this point.
                    unsafe { std::env::set_var("DIRECTOR_BIN", &bin) };
                    bench::run(soak, soak_only, short)
                }
                "xdp" => exec(
                    cargo()
                        .args([
                            "run",
                            "--quiet",
                            "--release",
                            "-p",
                            "director",
                            "--example",
                            "bench_xdp",
                            "--",
                        ])
                        .args(short.then_some("--short")),
                ),
                "health" => bench_health::run(short),
                "ecmp" => {
                    let bin = build_director()?;
                    // SAFETY: single-threaded at this point.
                    unsafe { std::env::set_var("DIRECTOR_BIN", &bin) };
                    bench_ecmp::run(short)
                }
                "ha" => {
                    let bin = build_director()?;
                    // SAFETY: single-threaded at this point.
                    unsafe { std::env::set_var("DIRECTOR_BIN", &bin) };
                    bench_ha::run_ha(short)
                }
                "soak" => {
                    let bin = build_director()?;
                    // SAFETY: single-threaded at this point.
                    unsafe { std::env::set_var("DIRECTOR_BIN", &bin) };
                    bench_soak::run(minutes, short)
                }
                other => {
                    bail!(
                        "unknown benchmark {other:?}; known: xdp, failover, health, ha, ecmp, soak"
                    )
                }
            }
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo` with the environment of the toolchain that runs us.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command, failing when it fails.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and closes with one line that
/// totals every test binary: `tests: N passed, M failed`.
fn test_with_summary(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let started = std::time::Instant::now();
    // stdout and stderr in one pipe, in order: cargo's `Running NAME`
    // lines (stderr) name the result lines (stdout) that follow.
    let (reader, writer) = std::io::pipe().context("a pipe")?;
    let mut child = cmd
        .stdout(writer.try_clone().context("a pipe")?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    // Our copies of the write end go now (else the read never ends).
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let stdout = reader;
    let (mut passed, mut failed) = (0u64, 0u64);
    // Each test binary's time, for the five slowest.
    let mut times: Vec<(String, f64)> = Vec::new();
    let mut current = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(name) = line.trim_start().strip_prefix("Running ") {
            current = name.split(" (").next().unwrap_or(name).to_string();
        }
        if let Some(rest) = line.strip_prefix("test result: ")
            && let Some(secs) = rest
                .rsplit("finished in ")
                .next()
                .and_then(|t| t.trim().strip_suffix('s'))
                .and_then(|t| t.parse::<f64>().ok())
        {
            times.push((std::mem::take(&mut current), secs));
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(what))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    times.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("slowest test binaries:");
    for (name, secs) in times.iter().take(5) {
        let name = if name.is_empty() { "(unnamed)" } else { name };
        println!("  {secs:>7.1} s  {name}");
    }
    println!("test time: {:.0?}", started.elapsed());
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// Builds the release daemon (with its embedded XDP program), after setup;
/// returns the binary.
fn build_release() -> Result<PathBuf> {
    setup::run(setup::Verbosity::Quiet)?;
    exec(cargo().args(["build", "--release", "--quiet", "-p", "director"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("release").join("director");
    if !bin.exists() {
        bail!("{} missing after the build", bin.display());
    }
    Ok(bin)
}

/// Builds the daemon (with its embedded XDP program); returns the binary.
fn build_director() -> Result<PathBuf> {
    println!("building director (daemon + XDP program)...");
    exec(cargo().args(["build", "--quiet", "-p", "director"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug").join("director");
    if !bin.exists() {
        bail!("{} missing after the build", bin.display());
    }
    Ok(bin)
}

fn lint() -> Result<()> {
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate is linted on its own: its panic handler clashes with
    // std's when the two sides are unified.
    let mut ebpf = Command::new("rustup");
    ebpf.current_dir(root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "director-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    exec(&mut ebpf)?;
    println!("lint: clean");
    Ok(())
}
