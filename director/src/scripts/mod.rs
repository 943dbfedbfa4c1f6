//! Running operator scripts (health `misc_check`, `vrrp_script`, notify
//! and quorum scripts) with bounds: no shell, stdin closed, output drained
//! and capped, cut at a timeout. Each script runs in its own process group,
//! so a timeout kills everything it started (a script that forks forever
//! included), and checks also kill what is left once the script exits.
//! With `global.script_user` every script runs as that user and its groups
//! ([`set_identity`]): the kernel clears every capability (the unit's
//! ambient ones included) when the ids leave root.

pub mod notify;

use std::{process::Stdio, time::Duration};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::io::AsyncReadExt as _;
use tracing::warn;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Exited with this code.
    Exited(i32),
    /// Killed by a signal (not ours).
    Signalled,
    /// Cut at the timeout (its process group was killed).
    TimedOut,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub ended: Ended,
    /// The first bytes of its standard output.
    pub output: Vec<u8>,
}

/// What to do with processes the script leaves behind when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    /// Kill them (checks: nothing may outlive a check).
    Kill,
    /// Leave them (notify scripts may start services in the background).
    Keep,
}

/// Whom scripts run as (`None`: as the daemon).
#[cfg(not(test))]
static IDENTITY: std::sync::RwLock<Option<crate::config::ScriptIdentity>> =
    std::sync::RwLock::new(None);

/// Sets whom scripts started from now on run as (`global.script_user`;
/// `None`: as the daemon).
#[cfg(not(test))]
pub fn set_identity(identity: Option<crate::config::ScriptIdentity>) {
    if let Ok(mut i) = IDENTITY.write() {
        *i = identity;
    }
}

#[cfg(not(test))]
fn identity() -> Option<crate::config::ScriptIdentity> {
    IDENTITY.read().ok().and_then(|i| i.clone())
}

// Unit tests run side by side in one process: each thread has its own.
#[cfg(test)]
thread_local! {
    static IDENTITY: std::cell::RefCell<Option<crate::config::ScriptIdentity>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
pub fn set_identity(identity: Option<crate::config::ScriptIdentity>) {
    IDENTITY.with(|i| *i.borrow_mut() = identity);
}

#[cfg(test)]
fn identity() -> Option<crate::config::ScriptIdentity> {
    IDENTITY.with(|i| i.borrow().clone())
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Runs an operator's notification (`what`: notify, quorum, BFD notify)
/// to its end, leaving what it started, and logs a failure in one line:
/// killed at its timeout, failed (exit code or signal), or not started.
pub async fn run_logged(argv: &[String], timeout: Duration, what: &'static str) {
    let program = argv.first().cloned().unwrap_or_default();
    match run(argv, timeout, 0, Leftovers::Keep).await {
        Ok(r) => match r.ended {
            Ended::Exited(0) => {}
            Ended::TimedOut => {
                warn!(script = %program, kind = what, timeout_s = timeout.as_secs_f64(), "script killed at its timeout")
            }
            ended => warn!(script = %program, kind = what, ?ended, "script failed"),
        },
        Err(e) => warn!(script = %program, kind = what, error = %e, "cannot run script"),
    }
}

/// [`run_logged`] on its own task (off the caller's loop).
pub fn spawn_logged(argv: Vec<String>, timeout: Duration, what: &'static str) {
    tokio::spawn(async move { run_logged(&argv, timeout, what).await });
}

/// Runs `argv` (program and arguments, no shell) for at most `timeout`,
/// keeping at most `keep` bytes of its output. Errors: it could not start.
pub async fn run(
    argv: &[String],
    timeout: Duration,
    keep: usize,
    leftovers: Leftovers,
) -> Result<Run, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    if let Some(id) = identity().filter(|i| !i.is_root()) {
        cmd.env("USER", &id.user).env("LOGNAME", &id.user);
        let (uid, gid, groups) = (id.uid, id.gid, id.groups);
        // SAFETY: only async-signal-safe system calls between fork and
        // exec, on data allocated before the fork. Groups, then the group,
        // then the user (after which the first two are no longer allowed);
        // any failure stops the script from running at all.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(if keep > 0 {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id();
    let mut out = child.stdout.take();
    // Drained to the end so a chatty script never blocks on a full pipe;
    // only `keep` bytes are kept.
    let drain = async move {
        let mut kept = Vec::new();
        if let Some(o) = out.as_mut() {
            let mut buf = [0u8; 8192];
            while let Ok(n) = o.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        kept
    };
    let wait = async {
        let status = child.wait().await;
        // The script is done: what it left behind goes too (for checks),
        // which also closes the pipe the drain is reading.
        if leftovers == Leftovers::Kill {
            kill_group(pid);
        }
        status
    };
    match tokio::time::timeout(timeout, async { tokio::join!(wait, drain) }).await {
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            Ok(Run {
                ended: Ended::TimedOut,
                output: Vec::new(),
            })
        }
        Ok((Err(e), _)) => Err(format!("{program}: {e}")),
        Ok((Ok(status), output)) => Ok(Run {
            ended: match status.code() {
                Some(c) => Ended::Exited(c),
                None => Ended::Signalled,
            },
            output,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(s: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), s.into()]
    }

    /// With a script user, a script runs as that user and its group, with
    /// no capability left (effective, permitted or ambient).
    #[tokio::test]
    async fn scripts_run_as_the_script_user_without_capabilities() {
        set_identity(Some(
            crate::config::resolve_script_user("nobody").expect("nobody exists"),
        ));
        let r = run(
            &sh("id -u; id -g; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status"),
            Duration::from_secs(5),
            4096,
            Leftovers::Kill,
        )
        .await;
        set_identity(None);
        let r = r.expect("run");
        let out = String::from_utf8_lossy(&r.output).to_string();
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("nobody");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], nobody.uid.to_string(), "{out}");
        assert_eq!(lines[1], nobody.gid.to_string(), "{out}");
        for l in &lines[2..] {
            assert!(
                l.ends_with("0000000000000000"),
                "a capability is left: {out}"
            );
        }
        // Without one: as the daemon.
        let r = run(&sh("id -u"), Duration::from_secs(5), 64, Leftovers::Kill)
            .await
            .expect("run");
        assert_eq!(
            String::from_utf8_lossy(&r.output).trim(),
            nix::unistd::Uid::effective().to_string()
        );
    }

    #[tokio::test]
    async fn exit_codes_output_and_timeouts() {
        let t = Duration::from_secs(5);
        let r = run(&sh("echo hi; exit 3"), t, 100, Leftovers::Kill)
            .await
            .expect("run");
        assert_eq!((r.ended, r.output), (Ended::Exited(3), b"hi\n".to_vec()));
        let r = run(
            &sh("sleep 30"),
            Duration::from_millis(200),
            0,
            Leftovers::Kill,
        )
        .await
        .expect("run");
        assert_eq!(r.ended, Ended::TimedOut);
        // Gigabytes of output: drained, capped, and cut at the timeout.
        let started = std::time::Instant::now();
        let r = run(&sh("yes"), Duration::from_millis(500), 64, Leftovers::Kill)
            .await
            .expect("run");
        assert_eq!(r.ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            run(&["/nonexistent".into()], t, 0, Leftovers::Kill)
                .await
                .is_err()
        );
    }

    /// A script that forks forever is cut at its timeout with everything it
    /// started; a finished check leaves nothing behind.
    #[tokio::test]
    async fn fork_bombs_and_leftovers_are_killed() {
        let marker = format!("director-script-test-{}", std::process::id());
        let count = |m: &str| {
            std::process::Command::new("pgrep")
                .args(["-f", m])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
                .unwrap_or(0)
        };
        // Forks a new sleeper every 10 ms, forever (bounded by the test's
        // own limit of 200 forks in case the kill fails).
        let bomb = format!(
            "i=0; while [ $i -lt 200 ]; do bash -c 'exec -a {marker} sleep 60' & i=$((i+1)); sleep 0.01; done; wait"
        );
        let r = run(&sh(&bomb), Duration::from_millis(500), 0, Leftovers::Kill)
            .await
            .expect("run");
        assert_eq!(r.ended, Ended::TimedOut);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(&marker), 0, "the fork bomb's children survived");
        // A check that exits at once but leaves a sleeper behind.
        let leave = format!("bash -c 'exec -a {marker}-left sleep 60' & exit 0");
        let r = run(&sh(&leave), Duration::from_secs(5), 0, Leftovers::Kill)
            .await
            .expect("run");
        assert_eq!(r.ended, Ended::Exited(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(&format!("{marker}-left")), 0, "a leftover survived");
    }
}
