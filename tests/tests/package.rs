//! The Debian package (`cargo xtask package`): lintian finds no error, and
//! it holds what an operator expects where Debian puts it.

use std::process::Command;

use anyhow::{Result, ensure};
use director_tests::package;

#[test]
fn the_package_is_lintian_clean_and_complete() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("director-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let deb = package(&dir, "0.1.0~check")?;
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()?;
    let report = String::from_utf8_lossy(&lintian.stdout).to_string();
    ensure!(
        lintian.status.success() && !report.lines().any(|l| l.starts_with("E:")),
        "lintian: {report}{}",
        String::from_utf8_lossy(&lintian.stderr)
    );
    let contents = Command::new("dpkg-deb").arg("-c").arg(&deb).output()?;
    let contents = String::from_utf8_lossy(&contents.stdout).to_string();
    for path in [
        "./usr/sbin/director",
        "./lib/systemd/system/director.service",
        "./etc/director/director.toml",
        "./usr/share/man/man8/director.8.gz",
        "./usr/share/man/man8/director-run.8.gz",
        "./usr/share/man/man8/director-status.8.gz",
        "./usr/share/man/man5/director.toml.5.gz",
        "./usr/share/bash-completion/completions/director",
        "./usr/share/zsh/vendor-completions/_director",
        "./usr/share/fish/vendor_completions.d/director.fish",
        "./usr/share/doc/director/README.md.gz",
        "./usr/share/doc/director/docs/configuration.md.gz",
        "./usr/share/doc/director/docs/operations.md.gz",
        "./usr/share/doc/director/copyright",
        "./usr/share/director/grafana-dashboard.json",
        "./usr/share/director/prometheus-alerts.yml",
        "./usr/share/director/prometheus-alerts.test.yml",
        "./usr/lib/tmpfiles.d/director.conf",
    ] {
        ensure!(contents.contains(path), "{path} missing:\n{contents}");
    }
    // The config may hold flow_sync.key and VRRP passwords: root and its
    // group only.
    let conf = contents
        .lines()
        .find(|l| l.ends_with("./etc/director/director.toml"))
        .unwrap_or_default();
    ensure!(conf.starts_with("-rw-r----- root/root"), "{conf}");
    let conffiles = Command::new("dpkg-deb")
        .args(["-I"])
        .arg(&deb)
        .arg("conffiles")
        .output()?;
    ensure!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/director/director.toml"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
