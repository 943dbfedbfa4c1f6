//! `cargo xtask fuzz [--time SECONDS] [TARGET...]`: runs the fuzz targets
//! (`fuzz/`, cargo fuzz with libFuzzer and AddressSanitizer on nightly),
//! each for SECONDS, starting from the checked-in seed corpus
//! (`fuzz/corpus/TARGET`, read only) with new inputs kept under
//! `target/fuzz-corpus/TARGET`. A crash is copied to
//! `fuzz/regressions/TARGET/` (which the normal test suite replays) and
//! fails the run. Prints the executions each target ran.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::root;

/// Every target (same names as `director::testing::fuzzing::TARGETS`).
const TARGETS: &[&str] = &[
    "vrrp_advert",
    "config",
    "import_keepalived",
    "control_request",
    "netlink_neighbour",
    "ipvs_reply",
    "probe_replies",
    "bfd_control",
];

fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root().join("fuzz"))
        .args(["+nightly", "fuzz"])
        // The fuzz build must not inherit the workspace's cargo settings.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS");
    c
}

pub fn run(seconds: u64, only: &[String]) -> Result<()> {
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in only {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t:?}; known: {}", TARGETS.join(", "));
            }
        }
        TARGETS
            .iter()
            .copied()
            .filter(|t| only.iter().any(|o| o == t))
            .collect()
    };
    println!("fuzz: building the targets (release, AddressSanitizer)...");
    crate::exec(cargo_fuzz().args(["build", "-O"]))?;
    let mut failed = Vec::new();
    println!("fuzz: {seconds} s per target");
    for t in &targets {
        let work = root().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&work)?;
        let seeds = root().join("fuzz/corpus").join(t);
        let artifacts = root().join("target/fuzz-artifacts").join(t);
        let _ = std::fs::remove_dir_all(&artifacts);
        std::fs::create_dir_all(&artifacts)?;
        let out = cargo_fuzz()
            .args(["run", "-O", t])
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-max_len=65536")
            .output()
            .with_context(|| format!("running fuzz target {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let crashed = !out.status.success();
        let executions: u64 = stat("number_of_executed_units").parse().unwrap_or(0);
        if !crashed && executions == 0 {
            // A target that ran nothing proved nothing.
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            for l in tail.iter().rev() {
                println!("    | {l}");
            }
            failed.push(*t);
        }
        println!(
            "  {t:<18} {:>12} executions, {:>5} corpus inputs, peak RSS {} MB{}",
            stat("number_of_executed_units"),
            std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0),
            stat("peak_rss_mb"),
            if crashed { "  CRASH" } else { "" }
        );
        if crashed {
            let regressions = root().join("fuzz/regressions").join(t);
            std::fs::create_dir_all(&regressions)?;
            for e in std::fs::read_dir(&artifacts)?.flatten() {
                let dest = regressions.join(e.file_name());
                std::fs::copy(e.path(), &dest)?;
                println!(
                    "    saved {} (commit it: the test suite replays it)",
                    dest.display()
                );
            }
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                println!("    | {l}");
            }
            failed.push(*t);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets crashed or ran no input: {}",
            failed.join(", ")
        );
    }
    Ok(())
}
