//! `cargo xtask package [--version V] [--binary PATH] [--out DIR]`: the
//! Debian package, with dpkg-deb (no debian/ tree to keep in step):
//!
//! - `/usr/sbin/director` (stripped), `/lib/systemd/system/director.service`;
//! - `/etc/director/director.toml`, the example, a conffile: the unit is
//!   neither enabled nor started at install (the example serves nobody);
//!   an upgrade restarts a running daemon (the pinned dataplane forwards
//!   throughout, so no request is lost);
//! - man pages rendered from the clap definitions (`director(8)`, one per
//!   subcommand) and `director.toml(5)` rendered from
//!   `docs/configuration.md`;
//! - bash, zsh and fish completions where those shells look for them;
//! - the README and `docs/`, copyright, changelog, the Grafana dashboard
//!   and the Prometheus alert rules.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, exec, root};

pub struct Options {
    /// Package version (default: the workspace's).
    pub version: Option<String>,
    /// The binary to package (default: a release build).
    pub binary: Option<PathBuf>,
    /// Where the .deb goes (default: target/package).
    pub out: Option<PathBuf>,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// gzip -9n (no name, no time stamp: reproducible, as lintian wants).
fn gzip(path: &Path) -> Result<()> {
    exec(Command::new("gzip").args(["-9nf"]).arg(path))
}

/// Builds the package; returns its path.
pub fn run(opts: Options) -> Result<PathBuf> {
    let binary = match opts.binary {
        Some(b) => b,
        None => {
            println!("package: building the release binary (daemon + XDP program)...");
            exec(cargo().args(["build", "--release", "--quiet", "-p", "director"]))?;
            target_dir().join("release/director")
        }
    };
    ensure!(binary.is_file(), "{} is not a file", binary.display());
    let version = opts
        .version
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    let arch = String::from_utf8(output(Command::new("dpkg").arg("--print-architecture"))?)?
        .trim()
        .to_string();
    let out = opts.out.unwrap_or_else(|| target_dir().join("package"));
    std::fs::create_dir_all(&out)?;
    let stage = out.join(format!("stage-{version}"));
    let _ = std::fs::remove_dir_all(&stage);
    let doc = stage.join("usr/share/doc/director");

    // The binary, stripped.
    let sbin = stage.join("usr/sbin/director");
    std::fs::create_dir_all(sbin.parent().context("parent")?)?;
    exec(
        Command::new("objcopy")
            .args(["--strip-all"])
            .arg(&binary)
            .arg(&sbin),
    )?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&sbin, std::fs::Permissions::from_mode(0o755))?;
    }
    let unit = std::fs::read(root().join("packaging/director.service"))?;
    write(
        &stage.join("lib/systemd/system/director.service"),
        &unit,
        0o644,
    )?;
    let tmpfiles = std::fs::read(root().join("packaging/tmpfiles.conf"))?;
    write(
        &stage.join("usr/lib/tmpfiles.d/director.conf"),
        &tmpfiles,
        0o644,
    )?;
    let example = std::fs::read(root().join("examples/director.toml"))?;
    // 0640: it may hold flow_sync.key and VRRP passwords.
    write(&stage.join("etc/director/director.toml"), &example, 0o640)?;

    // Man pages.
    let man8 = stage.join("usr/share/man/man8");
    exec(
        Command::new(&sbin)
            .arg("man")
            .arg(&man8)
            .stdout(std::process::Stdio::null()),
    )?;
    for e in std::fs::read_dir(&man8)?.flatten() {
        gzip(&e.path())?;
    }
    let reference = std::fs::read_to_string(root().join("docs/configuration.md"))
        .context("docs/configuration.md")?;
    let man5 = stage.join("usr/share/man/man5/director.toml.5");
    write(
        &man5,
        config_man_page(&reference, &version)?.as_bytes(),
        0o644,
    )?;
    gzip(&man5)?;

    // Completions.
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/director"),
        ("zsh", "usr/share/zsh/vendor-completions/_director"),
        ("fish", "usr/share/fish/vendor_completions.d/director.fish"),
    ] {
        let text = output(Command::new(&sbin).args(["completions", shell]))?;
        write(&stage.join(path), &text, 0o644)?;
    }

    // Documentation.
    let readme = std::fs::read(root().join("README.md"))?;
    write(&doc.join("README.md"), &readme, 0o644)?;
    gzip(&doc.join("README.md"))?;
    // The docs the README links to, at the same relative place.
    for e in std::fs::read_dir(root().join("docs"))?.flatten() {
        let name = e.file_name();
        if Path::new(&name).extension().is_some_and(|x| x == "md") {
            let target = doc.join("docs").join(&name);
            write(&target, &std::fs::read(e.path())?, 0o644)?;
            gzip(&target)?;
        }
    }
    write(&doc.join("copyright"), COPYRIGHT.as_bytes(), 0o644)?;
    let date = String::from_utf8(output(Command::new("date").arg("-R"))?)?;
    let changelog = format!(
        "director ({version}) unstable; urgency=medium\n\n  * Release {version}.\n\n -- {MAINTAINER}  {}\n",
        date.trim()
    );
    write(&doc.join("changelog"), changelog.as_bytes(), 0o644)?;
    gzip(&doc.join("changelog"))?;
    // Monitoring: the Grafana dashboard, the Prometheus alerting rules and
    // their unit tests (`promtool test rules` runs them where installed).
    for file in [
        "grafana-dashboard.json",
        "prometheus-alerts.yml",
        "prometheus-alerts.test.yml",
    ] {
        let bytes = std::fs::read(root().join("packaging").join(file))?;
        write(&stage.join("usr/share/director").join(file), &bytes, 0o644)?;
    }

    // Control files.
    let depends = shlib_depends(&sbin)?;
    let size_kb = du_kb(&stage)?;
    let control = format!(
        "Package: director\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\nInstalled-Size: {size_kb}\nDepends: {depends}\nSection: net\nPriority: optional\nHomepage: https://github.com/director-lb/director\nDescription: XDP-accelerated LVS-DR load balancer with VRRP\n Replaces the keepalived + LVS pair of a Linux load-balancing front end:\n an XDP program forwards to real servers by MAC rewrite (direct routing),\n with the kernel's IPVS as a fallback; VRRP (RFC 3768/5798) moves the\n virtual addresses between directors; health checks take real servers\n out and back. Its dataplane survives restarts and upgrades of the\n daemon.\n"
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    write(
        &debian.join("conffiles"),
        b"/etc/director/director.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    let sums = output(
        Command::new("sh")
            .arg("-c")
            .arg("find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum")
            .current_dir(&stage),
    )?;
    write(&debian.join("md5sums"), &sums, 0o644)?;

    let deb = out.join(format!("director_{version}_{arch}.deb"));
    exec(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb)
            .stdout(std::process::Stdio::null()),
    )?;
    let _ = std::fs::remove_dir_all(&stage);
    Ok(deb)
}

const MAINTAINER: &str = "director maintainers <director@lists.debian-lb.org>";

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: director
Source: https://github.com/director-lb/director

Files: *
Copyright: 2026 the director authors
License: MIT or Apache-2.0
 Licensed under either of the MIT license or the Apache License, Version
 2.0, at your option.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0,
 can be found in /usr/share/common-licenses/Apache-2.0.
 .
 Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the
 \"Software\"), to deal in the Software without restriction, including
 without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit
 persons to whom the Software is furnished to do so, subject to the
 following conditions: the above copyright notice and this permission
 notice shall be included in all copies or substantial portions of the
 Software. THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND.
";

const POSTINST: &str = "#!/bin/sh
set -e
# Installed, never started on its own: the example config serves nobody.
# An upgrade restarts a running daemon; its pinned dataplane forwards
# throughout, and the new daemon adopts it.
# The files BIRD includes exist from now on, and from every boot.
if [ \"$1\" = \"configure\" ] && command -v systemd-tmpfiles >/dev/null; then
\tsystemd-tmpfiles --create director.conf >/dev/null || true
fi
if [ \"$1\" = \"configure\" ] && [ -d /run/systemd/system ]; then
\tsystemctl --system daemon-reload >/dev/null || true
\tif [ -n \"$2\" ]; then
\t\tdeb-systemd-invoke try-restart director.service >/dev/null || true
\tfi
fi
exit 0
";

const PRERM: &str = "#!/bin/sh
set -e
# Removal stops the daemon (its dataplane keeps forwarding until
# `director flush`); an upgrade does not (the postinst restarts it).
if [ \"$1\" = \"remove\" ] && [ -d /run/systemd/system ]; then
\tdeb-systemd-invoke stop director.service >/dev/null || true
fi
exit 0
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
\tsystemctl --system daemon-reload >/dev/null || true
fi
if [ \"$1\" = \"purge\" ]; then
\tif command -v deb-systemd-helper >/dev/null; then
\t\tdeb-systemd-helper purge director.service >/dev/null || true
\tfi
fi
exit 0
";

/// The Depends line for the binary's shared libraries (dpkg-shlibdeps).
fn shlib_depends(binary: &Path) -> Result<String> {
    let work = std::env::temp_dir().join(format!("director-shlibdeps-{}", std::process::id()));
    std::fs::create_dir_all(work.join("debian"))?;
    std::fs::write(
        work.join("debian/control"),
        "Source: director\n\nPackage: director\nArchitecture: any\n",
    )?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "-e"])
            .arg(binary)
            .current_dir(&work),
    );
    let _ = std::fs::remove_dir_all(&work);
    let text = String::from_utf8(out?)?;
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no dependencies")
}

fn du_kb(dir: &Path) -> Result<u64> {
    let text = String::from_utf8(output(Command::new("du").args(["-sk"]).arg(dir))?)?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du")
}

/// Roff text: escapes, `code` and **bold** in bold.
fn roff_inline(s: &str) -> String {
    let escaped = s.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::new();
    let mut bold = false;
    let mut chars = escaped.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '`' || (c == '*' && chars.peek() == Some(&'*')) {
            if c == '*' {
                chars.next();
            }
            out.push_str(if bold { "\\fR" } else { "\\fB" });
            bold = !bold;
        } else {
            out.push(c);
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    out
}

/// A line that roff would take for a request is escaped; markdown links
/// keep their text.
fn roff_line(s: &str) -> String {
    let mut text = s.to_string();
    while let (Some(open), Some(mid)) = (text.find('['), text.find("](")) {
        let Some(close) = text[mid..].find(')').map(|c| c + mid) else {
            break;
        };
        if open >= mid {
            break;
        }
        text = format!(
            "{}{}{}",
            &text[..open],
            &text[open + 1..mid],
            &text[close + 1..]
        );
    }
    let line = roff_inline(&text);
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}

/// `director.toml(5)` from `docs/configuration.md`, the configuration
/// reference (one source for both): its `## ` sections become the man
/// page's sections.
pub fn config_man_page(reference: &str, version: &str) -> Result<String> {
    let section = reference
        .strip_prefix("# Configuration reference")
        .context("docs/configuration.md does not start with \"# Configuration reference\"")?;
    let mut out = format!(
        ".TH DIRECTOR.TOML 5 \"\" \"director {version}\" \"File Formats\"\n.SH NAME\ndirector.toml \\- configuration of the director load balancer\n.SH SYNOPSIS\n/etc/director/director.toml\n.SH DESCRIPTION\n"
    );
    let mut in_code = false;
    for line in section.lines() {
        let t = line.trim_end();
        if t.starts_with("```") {
            out.push_str(if in_code { ".fi\n" } else { ".PP\n.nf\n" });
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&format!("{}\n", roff_line(t)));
            continue;
        }
        if let Some(h) = t.strip_prefix("## ") {
            out.push_str(&format!(
                ".SH {}\n",
                roff_line(&h.replace('`', "").to_uppercase())
            ));
        } else if t.starts_with('|') {
            let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
                || cells.first() == Some(&"key")
            {
                continue;
            }
            match cells.as_slice() {
                [key, default, meaning] => out.push_str(&format!(
                    ".TP\n{} (default: {})\n{}\n",
                    roff_line(key),
                    roff_inline(default),
                    roff_inline(meaning)
                )),
                [key, meaning] => out.push_str(&format!(
                    ".TP\n{}\n{}\n",
                    roff_line(key),
                    roff_inline(meaning)
                )),
                other => out.push_str(&format!(".PP\n{}\n", roff_line(&other.join(" ")))),
            }
        } else if t.is_empty() {
            out.push_str(".PP\n");
        } else {
            out.push_str(&format!("{}\n", roff_line(t)));
        }
    }
    out.push_str(".SH SEE ALSO\n.BR director (8),\n.BR director\\-check\\-config (8)\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `director.toml(5)` is rendered from docs/configuration.md: every
    /// section of the reference becomes a man-page section and every key of
    /// its tables an entry (a reference moved or re-headed would otherwise
    /// ship an empty page).
    #[test]
    fn the_config_man_page_holds_every_section_and_key_of_the_reference() -> Result<()> {
        let reference = std::fs::read_to_string(root().join("docs/configuration.md"))?;
        let page = config_man_page(&reference, "0.0.0")?;
        let mut sections = 0;
        let mut keys = 0;
        for line in reference.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                let want = format!(".SH {}", roff_line(&h.replace('`', "").to_uppercase()));
                ensure!(page.contains(&want), "{want:?} missing from the man page");
                sections += 1;
            } else if let Some(row) = line.strip_prefix("| `") {
                let key = row.split('`').next().unwrap_or_default();
                ensure!(
                    page.contains(&roff_line(key)),
                    "key {key:?} missing from the man page"
                );
                keys += 1;
            }
        }
        ensure!(sections >= 10, "only {sections} sections in the reference");
        ensure!(keys >= 80, "only {keys} keys in the reference");
        Ok(())
    }
}
