//! File descriptors: the daemon's limit, and how much of it each listener
//! that strangers can reach may take.
//!
//! A service manager gives a daemon a soft `RLIMIT_NOFILE` of 1024 (systemd's
//! default, whatever the hard limit). Health checks, VRRP, BFD, flow sync,
//! netlink and the control socket all need descriptors; a client of the
//! metrics port must never be able to take them. So the daemon raises its
//! soft limit to the hard one at start, and the HTTP server and the control
//! socket each hold at most a fixed share of it ([`Budget`]): whatever
//! their clients do, the rest stays for the daemon's own work.

use tracing::{info, warn};

/// The descriptor limit after [`raise_nofile`]: (soft, hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

/// Reads `RLIMIT_NOFILE`.
pub fn nofile() -> NoFile {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => NoFile { soft, hard },
        // (Cannot fail for this resource; the most cautious answer.)
        Err(_) => NoFile {
            soft: 1024,
            hard: 1024,
        },
    }
}

/// The most descriptors a process should ask for: larger tables cost
/// memory for nothing (and `select`-era code breaks on huge values).
const NOFILE_CEILING: u64 = 1 << 20;

/// Raises the soft descriptor limit to the hard one (at most
/// [`NOFILE_CEILING`]), as a daemon that serves many clients and probes
/// should; logs what it did. Returns the limit in force.
pub fn raise_nofile() -> NoFile {
    let before = nofile();
    let want = before.hard.min(NOFILE_CEILING);
    if want > before.soft {
        match nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            want,
            before.hard,
        ) {
            Ok(()) => {
                info!(
                    old_soft = before.soft,
                    soft = want,
                    hard = before.hard,
                    "file descriptor limit raised"
                );
            }
            Err(e) => {
                warn!(soft = before.soft, hard = before.hard, error = %e, "cannot raise the file descriptor limit");
            }
        }
    }
    nofile()
}

/// How many connections each listener open to others may hold at once,
/// out of the descriptor limit: the metrics/status HTTP server at most an
/// eighth of it (and 512), the control socket at most a sixteenth (and
/// 64). What is left (at least three quarters of the limit) is the
/// daemon's own, for health checks, VRRP, BFD, flow sync and netlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Concurrent HTTP connections (metrics and status).
    pub http: usize,
    /// Concurrent HTTP connections from one client address.
    pub http_per_client: usize,
    /// Concurrent control-socket connections.
    pub control: usize,
}

impl Budget {
    /// The shares of a soft limit of `soft` descriptors.
    pub fn of(soft: u64) -> Budget {
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        let http = (soft / 8).clamp(8, 512);
        Budget {
            http,
            // One client (a scraper, a dashboard, a flood) never takes
            // the whole share: Prometheus still gets in.
            http_per_client: (http / 8).max(2),
            control: (soft / 16).clamp(4, 64),
        }
    }

    /// The shares of the limit in force now.
    pub fn current() -> Budget {
        Budget::of(nofile().soft)
    }
}

/// Whether an accept or socket error is the process (or the system)
/// running out of descriptors or memory, not the peer's doing: the caller
/// backs off instead of retrying at once.
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listeners_shares_leave_the_daemon_three_quarters() {
        for soft in [64u64, 1024, 4096, 65536, 1 << 20] {
            let b = Budget::of(soft);
            let listeners = (b.http + b.control) as u64;
            assert!(
                listeners * 4 <= soft * 3 || soft < 128,
                "{soft}: {b:?} leaves too little"
            );
            assert!(b.http_per_client < b.http, "{b:?}");
        }
        // systemd's default soft limit.
        assert_eq!(
            Budget::of(1024),
            Budget {
                http: 128,
                http_per_client: 16,
                control: 64
            }
        );
        assert_eq!(Budget::of(65536).http, 512);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let before = nofile();
        let after = raise_nofile();
        assert_eq!(after.hard, before.hard);
        assert_eq!(after.soft, before.hard.min(NOFILE_CEILING).max(before.soft));
    }

    #[test]
    fn exhaustion_is_told_from_a_peer_error() {
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNRESET
        )));
    }
}
