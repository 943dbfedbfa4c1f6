//! The Katran anchor (`../shared/anchors/katran`), run a round at a time beside ours.

use anyhow::{Context as _, Result, bail};

/// Katran's figures from its anchor's run in this same process's run:
/// (floor, established, new flow) in ns.
pub(crate) fn katran(n: u32, rounds: u32, table: u32) -> Result<Option<(f64, f64, f64)>> {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors/katran/run.sh");
    if !root.exists() {
        return Ok(None);
    }
    let out = std::process::Command::new("bash")
        .arg(&root)
        .env("N", n.to_string())
        .env("ROUNDS", rounds.to_string())
        .env("KATRAN_LRU_TOTAL", table.to_string())
        .output()
        .context("running the Katran anchor")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the Katran anchor failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let figure = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split(" ns").next())
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
    };
    match (figure("floor"), figure("established"), figure("new flow")) {
        (Some(f), Some(e), Some(n)) => Ok(Some((f, e, n))),
        _ => bail!("unexpected Katran anchor output:\n{text}"),
    }
}
