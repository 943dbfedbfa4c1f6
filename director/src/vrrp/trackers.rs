//! What VRRP instances track by name besides scripts: files holding an
//! integer (`[[track_file]]`, keepalived's `vrrp_track_file`) and running
//! processes (`[[track_process]]`, keepalived's `vrrp_track_process`).
//!
//! Each is watched by one task whose verdict every tracking instance
//! shares; the instances read the verdicts at their tracking tick.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{ParamMatch, TrackFile, TrackProcess};

/// How often tracked files are read and processes counted.
const POLL: Duration = Duration::from_millis(200);

/// Creates the files with `init_file` (at start, before anything reads
/// them): missing ones, or all of them with `init_file_overwrite`.
pub fn init_files(files: &[TrackFile]) {
    for f in files {
        let Some(value) = f.init_file.and_then(|i| i.value()) else {
            continue;
        };
        if f.file.exists() && !f.init_file_overwrite {
            continue;
        }
        if let Some(dir) = f.file.parent()
            && !dir.as_os_str().is_empty()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            warn!(track_file = %f.name, file = %f.file.display(), error = %e, "cannot create the tracked file's directory");
            continue;
        }
        match std::fs::write(&f.file, format!("{value}\n")) {
            Ok(()) => {
                info!(track_file = %f.name, file = %f.file.display(), value, "tracked file initialised")
            }
            Err(e) => {
                warn!(track_file = %f.name, file = %f.file.display(), error = %e, "cannot initialise the tracked file")
            }
        }
    }
}

/// The integer a tracked file holds: its first word; a missing, empty or
/// unparsable file counts as 0 (keepalived does the same), so a typo
/// never silently takes a router out.
pub fn file_value(text: &str) -> i64 {
    text.split_whitespace()
        .next()
        .and_then(|w| w.parse::<i64>().ok())
        .unwrap_or(0)
}

/// One task per `[[track_file]]`: its current value (0 until read).
pub fn start_files(files: &[TrackFile]) -> BTreeMap<String, (i32, watch::Receiver<i64>)> {
    let mut out = BTreeMap::new();
    for f in files {
        let (tx, rx) = watch::channel(0i64);
        out.insert(f.name.clone(), (f.weight, rx));
        let f = f.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(POLL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut first = true;
            loop {
                ticker.tick().await;
                // Off the VRRP thread: a slow disk must not delay adverts.
                let v = match tokio::fs::read_to_string(&f.file).await {
                    Ok(text) => file_value(&text),
                    Err(_) => 0,
                };
                if first || v != *tx.borrow() {
                    info!(track_file = %f.name, file = %f.file.display(), value = v, "tracked file value");
                    first = false;
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
    }
    out
}

/// A process as tracking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// `/proc/PID/comm` (at most 15 bytes).
    pub comm: String,
    /// `/proc/PID/cmdline`, split at NULs.
    pub argv: Vec<String>,
}

/// Whether `p` is one of the processes `t` tracks.
pub fn matches(t: &TrackProcess, p: &Proc) -> bool {
    // Kernel threads have no command line: never tracked.
    let Some(argv0) = p.argv.first() else {
        return false;
    };
    let name_ok = if t.full_command {
        *argv0 == t.process
    } else {
        // comm is truncated to 15 bytes; the program's file name is not.
        let base = Path::new(argv0)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        p.comm == t.process
            || base == t.process
            || (t.process.len() > 15
                && t.process.as_bytes().starts_with(p.comm.as_bytes())
                && p.comm.len() == 15)
    };
    if !name_ok {
        return false;
    }
    let Some(want) = &t.parameters else {
        return true;
    };
    let args = p.argv[1..].join(" ");
    match t.param_match {
        ParamMatch::Exact => args == *want,
        ParamMatch::Initial => args.starts_with(want.as_str()),
        ParamMatch::Partial => args.contains(want.as_str()),
    }
}

/// Every process on the machine (as seen from the daemon's PID namespace).
fn scan(proc_root: &Path) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = e.path();
        // A process that exits between the listing and the reads is skipped.
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        out.push(Proc {
            comm: comm.trim_end_matches('\n').to_string(),
            argv,
        });
    }
    out
}

/// Debounces a raw up/down into the reported verdict: a change is reported
/// once it has lasted its delay (`fork_delay` going up, `terminate_delay`
/// going down). The first verdict is reported at once.
#[derive(Debug)]
pub struct Debounce {
    up_delay: Duration,
    down_delay: Duration,
    reported: Option<bool>,
    since: Option<(bool, Instant)>,
}

impl Debounce {
    pub fn new(t: &TrackProcess) -> Debounce {
        let secs = |v: Option<f64>| Duration::from_secs_f64(v.or(t.delay).unwrap_or(0.0));
        Debounce {
            up_delay: secs(t.fork_delay),
            down_delay: secs(t.terminate_delay),
            reported: None,
            since: None,
        }
    }

    /// The verdict after observing `raw` at `now`.
    pub fn observe(&mut self, raw: bool, now: Instant) -> Option<bool> {
        match self.reported {
            None => self.reported = Some(raw),
            Some(r) if r == raw => self.since = None,
            Some(_) => {
                let since = match self.since {
                    Some((v, t)) if v == raw => t,
                    _ => {
                        self.since = Some((raw, now));
                        now
                    }
                };
                let delay = if raw { self.up_delay } else { self.down_delay };
                if now.duration_since(since) >= delay {
                    self.reported = Some(raw);
                    self.since = None;
                }
            }
        }
        self.reported
    }
}

/// One task counting the processes of every `[[track_process]]` (one scan
/// of /proc serves them all): each verdict is up while between `quorum`
/// and `quorum_max` processes match.
pub fn start_processes(
    procs: &[TrackProcess],
) -> BTreeMap<String, (i32, watch::Receiver<Option<bool>>)> {
    let mut out = BTreeMap::new();
    if procs.is_empty() {
        return out;
    }
    let mut watched = Vec::new();
    for t in procs {
        let (tx, rx) = watch::channel(None);
        out.insert(t.name.clone(), (t.weight, rx));
        watched.push((t.clone(), Debounce::new(t), tx));
    }
    let root = PathBuf::from("/proc");
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // Off the VRRP thread: reading /proc takes a few milliseconds
            // on a busy machine.
            let r = root.clone();
            let Ok(all) = tokio::task::spawn_blocking(move || scan(&r)).await else {
                continue;
            };
            let now = Instant::now();
            for (t, debounce, tx) in &mut watched {
                let count = all.iter().filter(|p| matches(t, p)).count();
                let count = u32::try_from(count).unwrap_or(u32::MAX);
                let raw = count >= t.quorum && t.quorum_max.is_none_or(|m| count <= m);
                let verdict = debounce.observe(raw, now);
                if verdict != *tx.borrow() {
                    info!(track_process = %t.name, process = %t.process, count, up = ?verdict, "tracked process changed");
                    let _ = tx.send(verdict);
                }
            }
            if watched.iter().all(|(_, _, tx)| tx.is_closed()) {
                return;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(process: &str) -> TrackProcess {
        TrackProcess {
            name: "t".into(),
            process: process.into(),
            parameters: None,
            param_match: ParamMatch::Exact,
            full_command: false,
            quorum: 1,
            quorum_max: None,
            weight: 0,
            fork_delay: None,
            terminate_delay: None,
            delay: None,
        }
    }

    fn p(comm: &str, argv: &[&str]) -> Proc {
        Proc {
            comm: comm.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn file_values() {
        assert_eq!(file_value("12\n"), 12);
        assert_eq!(file_value("  -7 trailing"), -7);
        assert_eq!(file_value(""), 0);
        assert_eq!(file_value("abc"), 0);
    }

    #[test]
    fn process_names_and_parameters() {
        let nginx = p("nginx", &["nginx: master process", "-g", "daemon off;"]);
        assert!(matches(&tp("nginx"), &p("nginx", &["/usr/sbin/nginx"])));
        assert!(!matches(&tp("nginx"), &p("nginx", &[])), "kernel thread");
        assert!(matches(&tp("nginx"), &nginx));
        let mut full = tp("/usr/sbin/nginx");
        full.full_command = true;
        assert!(matches(&full, &p("nginx", &["/usr/sbin/nginx"])));
        assert!(!matches(&full, &p("nginx", &["nginx"])));
        // comm truncated to 15 bytes.
        let long = tp("a-very-long-daemon-name");
        assert!(matches(&long, &p("a-very-long-dae", &["x"])));
        let mut t = tp("sleep");
        t.parameters = Some("1000".into());
        assert!(matches(&t, &p("sleep", &["sleep", "1000"])));
        assert!(!matches(&t, &p("sleep", &["sleep", "10000"])));
        t.param_match = ParamMatch::Initial;
        assert!(matches(&t, &p("sleep", &["sleep", "10000"])));
        assert!(!matches(&t, &p("sleep", &["sleep", "5", "1000"])));
        t.param_match = ParamMatch::Partial;
        assert!(matches(&t, &p("sleep", &["sleep", "5", "1000"])));
    }

    #[test]
    fn debounce_waits_its_delay() {
        let mut t = tp("x");
        t.fork_delay = Some(1.0);
        t.terminate_delay = Some(2.0);
        let mut d = Debounce::new(&t);
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(d.observe(false, s(0)), Some(false), "first verdict at once");
        assert_eq!(d.observe(true, s(100)), Some(false));
        assert_eq!(d.observe(true, s(900)), Some(false));
        assert_eq!(d.observe(true, s(1100)), Some(true));
        assert_eq!(d.observe(false, s(1200)), Some(true));
        // A blip shorter than the delay is never reported.
        assert_eq!(d.observe(true, s(1300)), Some(true));
        assert_eq!(d.observe(false, s(1400)), Some(true));
        assert_eq!(d.observe(false, s(3300)), Some(true));
        assert_eq!(d.observe(false, s(3400)), Some(false));
    }
}
