//! Announcing VIPs over BGP through an existing routing daemon, BIRD 2 (no
//! BGP speaker of our own). The director writes the VIPs to announce into
//! two files BIRD's config includes in a `static` protocol - one per
//! address family - and asks BIRD to reconfigure over its control socket
//! (the text protocol `birdc` speaks). BIRD's side, for example:
//!
//! ```text
//! protocol static director4 {
//!   ipv4;
//!   include "/run/director/bird-vips4.conf";  # at the start of a line
//! }
//! protocol static director6 {
//!   ipv6;
//!   include "/run/director/bird-vips6.conf";
//! }
//! protocol bgp upstream { local as 65001; neighbor 10.0.0.1 as 65000;
//!   ipv4 { import none; export where proto = "director4"; }; }
//! ```
//!
//! Each announced VIP is a line `route VIP/32 blackhole;` (BGP sends
//! `next hop self`; the route only exists to be exported).

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{info, warn};

/// Errors talking to BIRD.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("cannot write {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BIRD control socket {path}: {source} (is bird running with this socket?)")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BIRD refused to reconfigure: {0}")]
    Refused(String),
}

/// The announcement files' contents for `vips` of one family.
pub fn routes(vips: &BTreeSet<IpAddr>, v6: bool) -> String {
    let mut s = String::from("# Written by director: the VIPs to announce.\n");
    for v in vips.iter().filter(|v| v.is_ipv6() == v6) {
        let len = if v6 { 128 } else { 32 };
        s.push_str(&format!("route {v}/{len} blackhole;\n"));
    }
    s
}

/// What BIRD answered to `configure`: Ok, or the error line. The reply is
/// lines `CODE-text` ending with one `CODE text`; codes 8xxx and 9xxx are
/// errors (BIRD's `doc/reply_codes`).
pub fn configure_reply(lines: &[String]) -> Result<(), String> {
    for l in lines {
        let code = l.get(..4).unwrap_or("");
        if code.starts_with('8') || code.starts_with('9') {
            return Err(l.clone());
        }
    }
    Ok(())
}

/// The VIPs this director announces through BIRD.
pub struct Bird {
    socket: PathBuf,
    files: [PathBuf; 2],
    announced: Option<BTreeSet<IpAddr>>,
    /// The last failure, logged once (retries are silent until it changes).
    last_error: Option<String>,
}

impl Bird {
    pub fn new(socket: PathBuf, v4_file: PathBuf, v6_file: PathBuf) -> Bird {
        Bird {
            socket,
            files: [v4_file, v6_file],
            announced: None,
            last_error: None,
        }
    }

    /// Whether `e` is news (a failure not logged yet).
    pub fn first_failure(&mut self, e: &BgpError) -> bool {
        let text = e.to_string();
        if self.last_error.as_deref() == Some(&text) {
            return false;
        }
        self.last_error = Some(text);
        true
    }

    /// The set currently announced (None before the first).
    pub fn announced(&self) -> Option<&BTreeSet<IpAddr>> {
        self.announced.as_ref()
    }

    /// Announces exactly `vips` (files rewritten and BIRD reconfigured only
    /// when the set changes). Returns whether anything changed.
    pub fn set(&mut self, vips: &BTreeSet<IpAddr>) -> Result<bool, BgpError> {
        if self.announced.as_ref() == Some(vips) {
            return Ok(false);
        }
        for (file, v6) in self.files.iter().zip([false, true]) {
            write_atomic(file, &routes(vips, v6))?;
        }
        self.configure()?;
        info!(vips = ?vips, "BGP: announced VIPs changed");
        self.announced = Some(vips.clone());
        self.last_error = None;
        Ok(true)
    }

    /// `configure` over BIRD's control socket.
    fn configure(&self) -> Result<(), BgpError> {
        let err = |source| BgpError::Socket {
            path: self.socket.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(err)?;
        let mut r = BufReader::new(s.try_clone().map_err(err)?);
        let mut greeting = String::new();
        r.read_line(&mut greeting).map_err(err)?;
        s.write_all(b"configure\n").map_err(err)?;
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).map_err(err)? == 0 {
                break;
            }
            let l = l.trim_end().to_string();
            // The last line of a reply: four digits and a space.
            let last = l.len() >= 5 && l.as_bytes()[4] == b' ';
            lines.push(l);
            if last {
                break;
            }
        }
        configure_reply(&lines).map_err(BgpError::Refused)
    }
}

/// BIRD, talked to off the daemon's loop: a hung BIRD (its control socket
/// accepting but never answering) delays only the announcements, never
/// the daemon. The loop says what should be announced; the task makes it
/// so, retrying every second after a failure (logged once).
pub struct BirdTask {
    want: watch::Sender<BTreeSet<IpAddr>>,
    done: watch::Receiver<Option<BTreeSet<IpAddr>>>,
    /// The last failure, until an update succeeds.
    error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BirdTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BirdTask {
    pub fn start(mut bird: Bird) -> BirdTask {
        let (want, mut want_rx) = watch::channel(BTreeSet::new());
        let (done_tx, done) = watch::channel(None);
        let error = std::sync::Arc::new(std::sync::Mutex::new(None));
        let task_error = error.clone();
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                let target = want_rx.borrow_and_update().clone();
                if first || bird.announced() != Some(&target) {
                    first = false;
                    let result = tokio::task::spawn_blocking(move || {
                        let r = bird.set(&target);
                        (bird, r)
                    })
                    .await;
                    let Ok((b, r)) = result else {
                        return;
                    };
                    bird = b;
                    match r {
                        Ok(_) => {
                            let _ = done_tx.send(bird.announced().cloned());
                            if let Ok(mut slot) = task_error.lock() {
                                *slot = None;
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = task_error.lock() {
                                *slot = Some(e.to_string());
                            }
                            if bird.first_failure(&e) {
                                warn!(error = %e, "BGP announcement not updated (retrying)");
                            }
                            // Retry in a second, or sooner on news.
                            let _ = tokio::time::timeout(Duration::from_secs(1), want_rx.changed())
                                .await;
                            continue;
                        }
                    }
                }
                if want_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        BirdTask {
            want,
            done,
            error,
            task,
        }
    }

    /// What BIRD announces now (as far as it confirmed), and the last
    /// failure (until an update succeeds).
    pub fn state(&self) -> (Vec<IpAddr>, Option<String>) {
        let announced = self
            .done
            .borrow()
            .as_ref()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let error = self.error.lock().ok().and_then(|e| e.clone());
        (announced, error)
    }

    /// What should be announced now.
    pub fn set(&self, vips: &BTreeSet<IpAddr>) {
        self.want.send_if_modified(|w| {
            if w == vips {
                false
            } else {
                *w = vips.clone();
                true
            }
        });
    }

    /// Waits (up to `timeout`) until BIRD announces what was last set;
    /// returns whether it does.
    pub async fn settled(&self, timeout: Duration) -> bool {
        let mut done = self.done.clone();
        let want = self.want.borrow().clone();
        tokio::time::timeout(timeout, done.wait_for(|d| d.as_ref() == Some(&want)))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), BgpError> {
    let err = |source| BgpError::File {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_files_and_replies() {
        let vips: BTreeSet<IpAddr> = ["10.0.0.100", "fd00::100", "10.0.0.101"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let v4 = routes(&vips, false);
        assert!(v4.contains("route 10.0.0.100/32 blackhole;") && v4.contains("10.0.0.101/32"));
        assert!(!v4.contains("fd00"));
        assert!(routes(&vips, true).contains("route fd00::100/128 blackhole;"));
        let ok = vec![
            "0002-Reading configuration from /etc/bird.conf".to_string(),
            "0003 Reconfigured".to_string(),
        ];
        assert_eq!(configure_reply(&ok), Ok(()));
        let bad = vec!["8002 /etc/bird.conf:3:1 syntax error".to_string()];
        assert!(configure_reply(&bad).is_err());
    }
}
