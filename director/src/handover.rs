//! Restarting without a failover: what one daemon process hands to the
//! next when the stop is a restart (`systemctl restart`, `director
//! restart`, an upgrade).
//!
//! A stopping master normally says goodbye with a priority-0 advert and
//! releases its addresses, so a backup takes over at once; the restarted
//! process then preempts it back: two moves of the VIP for nothing. When
//! the stop is known to be a restart, the stopping process instead sends
//! one last ordinary advert, keeps its addresses (and virtual MACs,
//! routes, BGP announcements; the pinned dataplane keeps forwarding), and
//! writes `<state_dir>/handover.json`: which instances were in which
//! state, and when. The next process reads it first thing, starts those
//! instances in the same state without a notification, and sends its first
//! advert before the backups' master-down timers run out. A handover older
//! than three advert intervals is not trusted (a backup may have taken
//! over meanwhile): that instance starts as usual.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// File name in the state directory.
pub const FILE: &str = "handover.json";

/// One VRRP instance as the stopping process left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub virtual_router_id: u8,
    pub interface: String,
    /// `master` or `backup` (other states are not handed over).
    pub state: String,
    /// Its virtual addresses as configured (a changed list is a changed
    /// instance: not resumed).
    pub virtual_ipaddress: Vec<String>,
    /// Its advert interval, seconds.
    pub advert_int: f64,
}

/// What a stopping process leaves for the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// CLOCK_BOOTTIME when written, milliseconds (survives nothing but a
    /// process change, which is all it is for).
    pub written_ms: u64,
    pub pid: u32,
    pub instances: Vec<Instance>,
    /// BFD sessions that were Up, held for the next process.
    #[serde(default)]
    pub bfd: Vec<crate::bfd::Handed>,
    /// The kernel's boot id when written (`/proc/sys/kernel/random/boot_id`):
    /// CLOCK_BOOTTIME starts again at a reboot, so a handover from before
    /// one (a `state_dir` that is not a tmpfs) would read as fresh.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// This boot's id (`None` where the kernel does not say).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Milliseconds of CLOCK_BOOTTIME.
fn boottime_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall writing into `t`.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) } != 0 {
        return 0;
    }
    u64::try_from(t.tv_sec).unwrap_or(0) * 1000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
}

impl Handover {
    pub fn new(instances: Vec<Instance>, bfd: Vec<crate::bfd::Handed>) -> Handover {
        Handover {
            written_ms: boottime_ms(),
            pid: std::process::id(),
            instances,
            bfd,
            boot_id: boot_id(),
        }
    }

    /// Whether it was written during this boot: the same boot id, or (a
    /// file from a version that wrote none) a time not after now.
    pub fn this_boot(&self) -> bool {
        match (&self.boot_id, boot_id()) {
            (Some(then), Some(now)) => *then == now,
            _ => self.written_ms <= boottime_ms(),
        }
    }

    /// How long ago it was written.
    pub fn age(&self) -> Duration {
        Duration::from_millis(boottime_ms().saturating_sub(self.written_ms))
    }

    /// The state to resume `name` in, if it was handed over recently
    /// enough and is configured as it was.
    pub fn resume(&self, inst: &crate::config::VrrpInstance, interface: &str) -> Option<String> {
        let h = self.instances.iter().find(|i| i.name == inst.name)?;
        let same = h.virtual_router_id == inst.virtual_router_id
            && h.interface == interface
            && h.virtual_ipaddress == inst.address_texts()
            && (h.advert_int - inst.advert_int).abs() < 1e-9;
        if !same {
            info!(instance = %inst.name, "handed over but configured differently now: starting afresh");
            return None;
        }
        // Three intervals: the shortest master-down interval a backup has.
        let window = Duration::from_secs_f64(3.0 * inst.advert_int);
        if self.age() > window {
            warn!(
                instance = %inst.name,
                age_ms = self.age().as_millis() as u64,
                window_ms = window.as_millis() as u64,
                "handed over too long ago (a backup may hold the VIP now): starting afresh"
            );
            return None;
        }
        Some(h.state.clone())
    }
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes the handover for the next process (atomically).
pub fn write(state_dir: &Path, h: &Handover) -> std::io::Result<()> {
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let text = serde_json::to_vec(h).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path(state_dir))
}

/// Takes the handover left by the previous process, if any (the file is
/// removed: a handover is used once).
pub fn take(state_dir: &Path) -> Option<Handover> {
    let p = path(state_dir);
    let text = std::fs::read(&p).ok()?;
    let _ = std::fs::remove_file(&p);
    match serde_json::from_slice::<Handover>(&text) {
        Ok(h) if !h.this_boot() => {
            warn!(file = %p.display(), from_pid = h.pid, "handover file from before a reboot ignored: starting afresh");
            None
        }
        Ok(h) => {
            info!(
                from_pid = h.pid,
                age_ms = h.age().as_millis() as u64,
                instances = h.instances.len(),
                "taking over from the previous process"
            );
            Some(h)
        }
        Err(e) => {
            warn!(file = %p.display(), error = %e, "unreadable handover file ignored");
            None
        }
    }
}

/// The systemd unit this process runs in, from its cgroup
/// (`0::/system.slice/director.service` -> `director.service`).
fn own_unit() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    unit_of_cgroup(&text)
}

fn unit_of_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|p| p.rsplit('/'))
        .find(|c| c.ends_with(".service"))
        .map(str::to_string)
}

/// Whether systemd has a restart job for our unit (`systemctl restart`,
/// `try-restart`, `reload-or-restart`, a package upgrade's restart): the
/// job is listed as `restart` until the stop half of it completes.
pub async fn systemd_restart_pending() -> bool {
    let Some(unit) = own_unit() else {
        return false;
    };
    // systemd's stop signals every process of our cgroup: a systemctl
    // started while it does so is killed too. It ignores SIGTERM (its
    // disposition survives exec), and a killed one is asked again.
    let mut last = None;
    let mut out = None;
    for _ in 0..3 {
        let mut cmd = tokio::process::Command::new("systemctl");
        cmd.args(["list-jobs", "--no-legend", "--plain", "--no-pager", &unit])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                Ok(())
            });
        }
        // VRRP keeps advertising meanwhile (its own thread), and systemd
        // waits TimeoutStopSec (90 s) for us: a busy machine may be slow.
        match tokio::time::timeout(Duration::from_secs(15), cmd.output()).await {
            Ok(Ok(o)) if o.status.success() => {
                out = Some(o);
                break;
            }
            other => last = Some(format!("{:?}", other.map(|r| r.map(|o| o.status)))),
        }
    }
    let Some(out) = out else {
        warn!(unit = %unit, result = last.unwrap_or_default(), "cannot ask systemd whether this stop is a restart: stopping for good");
        return false;
    };
    let jobs = String::from_utf8_lossy(&out.stdout);
    let restart = restart_job_listed(&jobs, &unit);
    if !restart {
        info!(unit = %unit, jobs = %jobs.trim(), "systemd has no restart job for us: stopping for good");
    }
    restart
}

/// Whether `systemctl list-jobs --plain` output lists a restart of `unit`
/// (columns: JOB UNIT TYPE STATE).
fn restart_job_listed(text: &str, unit: &str) -> bool {
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == unit && (f[2] == "restart" || f[2] == "try-restart")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_comes_from_the_cgroup_path() {
        assert_eq!(
            unit_of_cgroup("0::/system.slice/director.service\n").as_deref(),
            Some("director.service")
        );
        assert_eq!(
            unit_of_cgroup("0::/system.slice/director@a.service/sub\n").as_deref(),
            Some("director@a.service")
        );
        assert_eq!(unit_of_cgroup("0::/user.slice/session-3.scope\n"), None);
        assert_eq!(unit_of_cgroup(""), None);
    }

    #[test]
    fn only_a_restart_of_our_unit_counts() {
        let jobs = "812 director.service restart running\n813 other.service restart waiting\n";
        assert!(restart_job_listed(jobs, "director.service"));
        assert!(!restart_job_listed(
            "812 director.service stop running\n",
            "director.service"
        ));
        assert!(!restart_job_listed(jobs, "director2.service"));
        assert!(!restart_job_listed("", "director.service"));
    }

    #[test]
    fn a_handover_is_used_once_and_only_while_fresh() {
        let dir = std::env::temp_dir().join(format!("director-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test setup");
        let inst: crate::config::VrrpInstance = toml::from_str(
            "name = \"VI_1\"\nvirtual_router_id = 51\npriority = 150\nvirtual_ipaddress = [\"10.0.0.100/32\"]\nadvert_int = 0.1\n",
        )
        .expect("test setup");
        let h = Handover::new(
            vec![Instance {
                name: "VI_1".into(),
                virtual_router_id: 51,
                interface: "eth0".into(),
                state: "master".into(),
                virtual_ipaddress: inst.address_texts(),
                advert_int: 0.1,
            }],
            Vec::new(),
        );
        write(&dir, &h).expect("test setup");
        let taken = take(&dir).expect("test setup");
        assert_eq!(taken.instances, h.instances);
        assert!(take(&dir).is_none(), "used once");
        assert_eq!(taken.resume(&inst, "eth0").as_deref(), Some("master"));
        assert_eq!(taken.resume(&inst, "eth1"), None, "another interface");
        let mut other = inst.clone();
        other.virtual_router_id = 52;
        assert_eq!(taken.resume(&other, "eth0"), None, "another VRID");
        let mut stale = taken.clone();
        stale.written_ms = stale.written_ms.saturating_sub(301);
        assert_eq!(stale.resume(&inst, "eth0"), None, "older than 3 intervals");
        // Written before a reboot: another boot id (its CLOCK_BOOTTIME
        // stamp says nothing then), or, from a version that recorded none,
        // a stamp ahead of this boot's clock.
        let mut before_reboot = h.clone();
        before_reboot.boot_id = Some("00000000-0000-0000-0000-000000000000".into());
        write(&dir, &before_reboot).expect("test setup");
        assert!(take(&dir).is_none(), "another boot");
        let mut unmarked = h.clone();
        unmarked.boot_id = None;
        unmarked.written_ms = boottime_ms() + 60_000;
        write(&dir, &unmarked).expect("test setup");
        assert!(take(&dir).is_none(), "stamped ahead of this boot");
        unmarked.written_ms = boottime_ms();
        write(&dir, &unmarked).expect("test setup");
        assert!(take(&dir).is_some(), "an older version's, this boot");
        std::fs::remove_dir_all(&dir).expect("test setup");
    }
}
