//! Notify scripts (VRRP's and BFD's), run off the protocol loops: one at a
//! time, each cut at 30 s, and never late behind stale news. Each subject
//! (an instance, a sync group, an instance's split-brain reports, a BFD
//! session) has at most one notification
//! waiting: a newer one replaces it (the latest state wins), so a slow
//! script delays the next notification by at most its own run, however
//! often the state flapped meanwhile. The queue is bounded by the number of
//! subjects.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;
use tracing::debug;

/// How long one notify script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Commands (argv) to run for one notification, in order.
pub type Jobs = Vec<Vec<String>>;

use std::sync::atomic::Ordering;

struct Queue {
    waiting: Mutex<VecDeque<(String, Jobs)>>,
    wake: Notify,
    /// A notification's scripts are running.
    busy: std::sync::atomic::AtomicBool,
}

/// A handle on the notifier task (cheap to clone; the task ends when the
/// last handle drops).
#[derive(Clone)]
pub struct Notifier {
    queue: Arc<Queue>,
    _task: Arc<TaskGuard>,
}

struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Notifier {
    /// Starts the notifier task (inside a tokio runtime).
    pub fn start() -> Notifier {
        Self::start_with(SCRIPT_TIMEOUT)
    }

    pub(crate) fn start_with(timeout: Duration) -> Notifier {
        let queue = Arc::new(Queue {
            waiting: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            busy: std::sync::atomic::AtomicBool::new(false),
        });
        let q = queue.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = q.waiting.lock().ok().and_then(|mut w| {
                    let next = w.pop_front();
                    // Set under the lock: `settle` never sees an empty
                    // queue with the popped job not yet marked running.
                    q.busy.store(next.is_some(), Ordering::SeqCst);
                    next
                });
                match next {
                    Some((_, jobs)) => {
                        run_jobs(jobs, timeout).await;
                        q.busy.store(false, Ordering::SeqCst);
                    }
                    None => q.wake.notified().await,
                }
            }
        });
        Notifier {
            queue,
            _task: Arc::new(TaskGuard(task)),
        }
    }

    /// Queues `jobs` for `subject`, replacing what waits for it.
    pub fn send(&self, subject: &str, jobs: Jobs) {
        if jobs.is_empty() {
            return;
        }
        if let Ok(mut w) = self.queue.waiting.lock() {
            match w.iter_mut().find(|(s, _)| s == subject) {
                Some(entry) => {
                    debug!(subject, "notification replaced by a newer one");
                    entry.1 = jobs;
                }
                None => w.push_back((subject.to_string(), jobs)),
            }
        }
        self.queue.wake.notify_one();
    }
}

impl Notifier {
    /// Waits (at most `within`) until every queued notification has run:
    /// a stopping daemon's last ones (`notify_stop`) must not die with it.
    pub async fn settle(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.queue.waiting.lock().map_or(true, |w| w.is_empty())
                && !self.queue.busy.load(Ordering::SeqCst);
            if idle {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("notify scripts still running at stop: cut");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn run_jobs(jobs: Jobs, timeout: Duration) {
    for argv in jobs {
        crate::scripts::run_logged(&argv, timeout, "notify").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification queued as the daemon stops runs before `settle`
    /// returns (dropped at once, its script would be aborted unrun).
    #[tokio::test]
    async fn settle_waits_for_the_queued_notifications() {
        let dir = std::env::temp_dir().join(format!("director-settle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        let n = Notifier::start();
        n.send("VI_1", job(&log, "MASTER", 0.3));
        n.send("VI_2", job(&log, "STOP", 0.0));
        n.settle(Duration::from_secs(10)).await;
        drop(n);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(text, "MASTER\nSTOP\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn job(log: &std::path::Path, word: &str, sleep: f64) -> Jobs {
        vec![vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo {word} >> {}; sleep {sleep}", log.display()),
        ]]
    }

    #[tokio::test]
    async fn a_flapping_state_runs_its_first_and_latest_notification_only() {
        let dir = std::env::temp_dir().join(format!("director-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let n = Notifier::start();
        // A slow first notification; meanwhile the instance flaps.
        n.send("VI_1", job(&log, "MASTER", 0.5));
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (i, s) in ["BACKUP", "MASTER", "BACKUP", "FAULT", "BACKUP"]
            .iter()
            .enumerate()
        {
            n.send("VI_1", job(&log, &format!("{s}{i}"), 0.0));
        }
        // Another subject is queued behind, not replaced.
        n.send("G", job(&log, "GROUP", 0.0));
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("GROUP") {
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines, vec!["MASTER", "BACKUP4", "GROUP"]);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "notifications late: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_script_is_cut_at_its_timeout() {
        let dir = std::env::temp_dir().join(format!("director-notify-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let n = Notifier::start_with(Duration::from_millis(200));
        n.send("VI_1", job(&log, "SLOW", 30.0));
        n.send("VI_2", job(&log, "NEXT", 0.0));
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("NEXT")
        {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "stuck behind a slow script"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
