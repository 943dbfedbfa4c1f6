//! Network namespaces and processes inside them, torn down on drop.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Runs a command to completion; fails with its stderr when it fails.
pub fn sh(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop together
/// with every process still inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        sh("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs a command inside the namespace to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A counter of the namespace's /proc/net/snmp, e.g. `("Tcp",
    /// "PassiveOpens")`: connections its kernel accepted (a connection
    /// counts once its handshake completes).
    pub fn snmp(&self, group: &str, field: &str) -> Result<u64> {
        let out = self.exec("cat", &["/proc/net/snmp"])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let prefix = format!("{group}:");
        let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            anyhow::bail!("no {group} lines in /proc/net/snmp");
        };
        let at = names
            .split_whitespace()
            .position(|n| n == field)
            .ok_or_else(|| anyhow::anyhow!("no {group} {field} in /proc/net/snmp"))?;
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{group} {field} unreadable"))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Starts a long-running process inside the namespace, its stdout and
    /// stderr going to `log`. The process is killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str], log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {program} in {}", self.name))?;
        Ok(Proc {
            child: Some(child),
            log: log.to_path_buf(),
            what: format!("{program} in {}", self.name),
        })
    }

    /// Runs `f` on a new thread that has entered this namespace, so every
    /// socket it opens lives here. Async code inside should build its own
    /// current-thread runtime on that thread.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        match self.spawn_thread(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Like [`Netns::run`], but returns at once: join the handle for the
    /// result.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        spawn_in(&self.name, f)
    }

    /// Pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Kills every process in namespace `name` and deletes it. Never panics.
pub fn destroy_netns(name: &str) {
    let ns = Netns {
        name: name.to_string(),
    };
    ns.kill_all();
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
    std::mem::forget(ns); // its Drop would do all this again
}

impl Netns {
    /// Kills every process in the namespace.
    pub fn kill_all(&self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started in a namespace; killed (SIGKILL) on drop unless it
/// was stopped before.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
    what: String,
}

impl Proc {
    /// Pid of `ip netns exec`, which execs the program: the program's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Where the process writes its output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit.
    /// Returns its exit code (None when killed by a signal).
    pub fn stop(&mut self, signal: Signal, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.what);
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?} of {signal}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; returns
    /// its exit code (None when killed by a signal).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("{} was already stopped", self.what);
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still runs after {timeout:?}; its output:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `pred(log)` holds, the process exits, or `timeout` passes.
    pub fn wait_for_log(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if pred(&log) {
                return Ok(());
            }
            if !self.running() {
                bail!("{} exited; its output:\n{log}", self.what);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting on {}; its output:\n{log}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// [`Netns::spawn_thread`] by the namespace's name, for holders of a name
/// rather than the [`Netns`] (which deletes the namespace when dropped).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = PathBuf::from("/run/netns").join(name);
    std::thread::spawn(move || -> Result<T> {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
}
