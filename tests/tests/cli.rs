//! The command line: `check-config` reports FILE:LINE:COL and exits non-zero.

use std::process::Command;

use anyhow::{Result, ensure};
use director_tests::director_bin;

fn check(contents: &str) -> Result<(i32, String, String)> {
    let dir = std::env::temp_dir().join(format!("director-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("c{}.toml", contents.len()));
    std::fs::write(&path, contents)?;
    let out = Command::new(director_bin()?)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()?;
    let _ = std::fs::remove_file(&path);
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE"),
    ))
}

#[test]
fn check_config_accepts_a_good_file() -> Result<()> {
    let (code, out, err) = check(
        "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.100\"\nport = 80\n[[virtual_server.real_server]]\naddress = \"10.0.0.20\"\n",
    )?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(
        out.contains("ok (1 virtual servers, 1 real servers)"),
        "{out}"
    );
    Ok(())
}

#[test]
fn check_config_names_file_line_and_column() -> Result<()> {
    let (code, _, err) = check(
        "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.100\"\nport = 80\nprotcol = \"tcp\"\n",
    )?;
    ensure!(code != 0, "bad config accepted");
    ensure!(err.starts_with("FILE:6:1: "), "{err}");
    ensure!(err.contains("protcol"), "{err}");
    Ok(())
}

#[test]
fn check_config_reports_a_missing_file() -> Result<()> {
    let out = Command::new(director_bin()?)
        .args(["check-config", "--config", "/nonexistent/director.toml"])
        .output()?;
    ensure!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("/nonexistent/director.toml: cannot read"),
        "{err}"
    );
    Ok(())
}

#[test]
fn run_refuses_a_bad_config_before_touching_anything() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("director-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[global]\ninterface = \"eth0\"\nbogus = 1\n")?;
    let out = Command::new(director_bin()?)
        .args(["run", "--config"])
        .arg(&path)
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("bad.toml:3:1: "), "{err}");
    Ok(())
}

/// With no daemon, every command that needs one says once what is wrong
/// and what to do; a socket left by a dead daemon is told apart.
#[test]
fn commands_without_a_daemon_say_what_to_do() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("director-cli-nodaemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for args in [
        vec!["status"],
        vec!["reload"],
        vec!["drain"],
        vec![
            "real-server",
            "drain",
            "--vip",
            "10.0.0.100",
            "--port",
            "80",
            "--address",
            "10.0.0.20",
        ],
    ] {
        let out = Command::new(director_bin()?)
            .args(&args)
            .arg("--state-dir")
            .arg(&dir)
            .output()?;
        ensure!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.matches("no director daemon runs with state directory")
                .count()
                == 1
                && err.contains("systemctl start director")
                && !err.contains("os error"),
            "{args:?}: {err}"
        );
    }
    // A socket nobody listens on: a daemon that died.
    let socket = dir.join("director.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket)?);
    let out = Command::new(director_bin()?)
        .args(["status", "--state-dir"])
        .arg(&dir)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("left from a daemon that died"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
