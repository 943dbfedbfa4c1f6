//! Where the pinned dataplane lives, so that it outlives the daemon.
//!
//! Pins (maps, the XDP link) live as long as the bpffs superblock that
//! holds them. A bpffs mounted inside a private mount namespace (what
//! systemd gives a unit with `ProtectSystem=`/`PrivateTmp=`, and what
//! `ip netns exec` gives every command) goes with the last process of that
//! namespace, and every pin with it: the XDP program is detached and the
//! flow table freed when the daemon exits. So the pins must live on a
//! bpffs that the host's mount namespace holds:
//!
//! 1. In the host's mount namespace: the bpffs at the pin directory is
//!    used, or mounted (at `/sys/fs/bpf` for directories below it, as
//!    systemd does at boot).
//! 2. In a private mount namespace whose view already shares the host's
//!    bpffs (systemd's units: `/sys/fs/bpf` is the host's, propagated):
//!    used as is.
//! 3. In a private mount namespace without it (`ip netns exec` remounts
//!    `/sys`, so `/sys/fs/bpf` is an empty sysfs directory there): a helper
//!    thread enters the host's mount namespace (`setns`), mounts the bpffs
//!    there if the host has none, takes a detached copy of the mount
//!    (`open_tree(OPEN_TREE_CLONE)`) and the daemon attaches it in its own
//!    view (`move_mount`). Both views then share one superblock, which the
//!    host's mount keeps alive.
//! 4. When none of that is possible (no access to another mount namespace,
//!    no right to enter it), the daemon mounts its own bpffs and says, once,
//!    that the dataplane will die with it ([`PinDir::survives`] is false;
//!    the status shows `dataplane_survives_restart: false`).
//!
//! "The host's mount namespace" is PID 1's when we may open it, else the
//! outermost ancestor's we may open (root without `CAP_SYS_PTRACE` cannot
//! open PID 1's when PID 1 holds capabilities we lack).

use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use nix::{
    mount::MsFlags,
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tracing::{info, warn};

/// The host's bpffs, where pins are kept by convention (Cilium, Katran,
/// bpfman).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Under the bpffs root: one directory per daemon (per state directory).
pub use crate::config::{DEFAULT_PIN_PARENT as DEFAULT_PARENT, default_pin_dir, pin_name};

/// Errors preparing the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("pin directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount a bpffs at {path}: {source}{}", if *source == nix::Error::EPERM { " (mounting needs CAP_SYS_ADMIN; the XDP dataplane also needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)" } else { "" })]
    Mount { path: PathBuf, source: nix::Error },
    #[error("pin directory {path}: {what}")]
    Other { path: PathBuf, what: String },
}

/// The prepared pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    /// The directory (on a bpffs) in this process's view.
    pub path: PathBuf,
    /// Whether what is pinned there outlives this process.
    pub survives: bool,
    /// Why it does not, and what to do about it.
    pub why_not: Option<String>,
}

/// What [`prepare`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The daemon: mount a bpffs where none is, create the directory.
    Run,
    /// `director flush`: only find what exists (`None` when nothing does).
    Find,
}

/// Makes `dir` a directory on a bpffs that outlives this process where
/// that is possible (see the module documentation). For [`Purpose::Find`],
/// returns `None` when no bpffs holds `dir` anywhere we can see.
pub fn prepare(dir: &Path, purpose: Purpose) -> Result<Option<PinDir>, BpffsError> {
    let mount_point = mount_point(dir);
    let own = namespace_of("self");
    match host_namespace(own) {
        Host::Same => {
            if !on_bpffs(dir) {
                if purpose == Purpose::Find {
                    return Ok(None);
                }
                mount_bpffs(&mount_point)?;
            }
            create(dir, purpose)?;
            Ok(Some(survivor(dir)))
        }
        Host::Other { pid, ns } => {
            // Our view may already show the host's bpffs (inherited or
            // propagated): the same superblock at the same place.
            if shares_host_bpffs(pid, dir) {
                create(dir, purpose)?;
                return Ok(Some(survivor(dir)));
            }
            match bring_host_bpffs(&ns, &mount_point, dir, purpose) {
                Ok(None) => Ok(None),
                Ok(Some(())) => {
                    create(dir, purpose)?;
                    Ok(Some(survivor(dir)))
                }
                Err(_) if on_bpffs(dir) && propagated(&mount_point).unwrap_or(false) => {
                    create(dir, purpose)?;
                    Ok(Some(survivor(dir)))
                }
                Err(why) => {
                    // Not fatal: run, but say that the pins die with us.
                    let why_not = format!(
                        "this process runs in a private mount namespace and cannot reach the host's bpffs (through the mount namespace of pid {pid}): {why}; \
                         mount a bpffs at {} on the host before starting the daemon (systemd does at boot) and make it visible to the service",
                        mount_point.display()
                    );
                    private_fallback(dir, &mount_point, purpose, why_not)
                }
            }
        }
        Host::Unknown => {
            // No other namespace can be opened. A view of the host's bpffs
            // shows as a mount with propagation (systemd: `master:N`).
            if on_bpffs(dir) && propagated(&mount_point).unwrap_or(false) {
                create(dir, purpose)?;
                return Ok(Some(survivor(dir)));
            }
            let why_not = format!(
                "cannot tell whether {} is the host's bpffs (no other process's mount namespace can be opened, and the mount shows no propagation); \
                 if this process runs in a private mount namespace, mount a bpffs at {} on the host before starting the daemon",
                mount_point.display(),
                mount_point.display()
            );
            private_fallback(dir, &mount_point, purpose, why_not)
        }
    }
}

fn survivor(dir: &Path) -> PinDir {
    PinDir {
        path: dir.to_path_buf(),
        survives: true,
        why_not: None,
    }
}

/// Whether the bpffs holding `dir` in our view is the one the host (seen
/// through `/proc/PID/root`) has at the same place.
fn shares_host_bpffs(pid: u32, dir: &Path) -> bool {
    let Some(existing) = dir.ancestors().find(|p| p.exists()) else {
        return false;
    };
    if !on_bpffs(existing) {
        return false;
    }
    let host = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(existing.strip_prefix("/").unwrap_or(existing));
    match (std::fs::metadata(existing), std::fs::metadata(&host)) {
        (Ok(ours), Ok(theirs)) => {
            ours.dev() == theirs.dev()
                && statfs(&host).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
        }
        _ => false,
    }
}

/// [`prepare`] for the daemon: the directory exists afterwards.
pub fn prepare_for_run(dir: &Path) -> Result<PinDir, BpffsError> {
    prepare(dir, Purpose::Run)?.ok_or_else(|| BpffsError::Other {
        path: dir.to_path_buf(),
        what: "no bpffs holds it".to_string(),
    })
}

/// Pins that (may) die with this process: a bpffs in our own view.
fn private_fallback(
    dir: &Path,
    mount_point: &Path,
    purpose: Purpose,
    why_not: String,
) -> Result<Option<PinDir>, BpffsError> {
    if !on_bpffs(dir) {
        if purpose == Purpose::Find {
            return Ok(None);
        }
        mount_bpffs(mount_point)?;
    }
    create(dir, purpose)?;
    Ok(Some(PinDir {
        path: dir.to_path_buf(),
        survives: false,
        why_not: Some(why_not),
    }))
}

/// Where a bpffs is mounted for `dir` when none holds it: the conventional
/// root for directories below it, else `dir` itself.
fn mount_point(dir: &Path) -> PathBuf {
    if dir.starts_with(BPFFS_ROOT) {
        PathBuf::from(BPFFS_ROOT)
    } else {
        dir.to_path_buf()
    }
}

fn create(dir: &Path, purpose: Purpose) -> Result<(), BpffsError> {
    if purpose == Purpose::Find {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| BpffsError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Whether the nearest existing ancestor of `path` (itself included) is on
/// a bpffs.
pub fn on_bpffs(path: &Path) -> bool {
    path.ancestors()
        .find(|p| p.exists())
        .and_then(|p| statfs(p).ok())
        .is_some_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts a bpffs at `point` unless one is there. Daemons starting side by
/// side (one host, several network namespaces) would otherwise stack two
/// mounts, and the later one would hide the earlier one's pins: the check
/// and the mount happen under a lock on the parent directory (whose inode a
/// mount at `point` does not change).
fn mount_bpffs(point: &Path) -> Result<(), BpffsError> {
    std::fs::create_dir_all(point).map_err(|source| BpffsError::Io {
        path: point.to_path_buf(),
        source,
    })?;
    let parent = point.parent().unwrap_or(point);
    let lock = File::open(parent).map_err(|source| BpffsError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let _guard =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            BpffsError::Io {
                path: parent.to_path_buf(),
                source: e.into(),
            }
        })?;
    if statfs(point).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        point,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpffsError::Mount {
        path: point.to_path_buf(),
        source,
    })?;
    info!(path = %point.display(), "mounted a bpffs for the pinned dataplane");
    Ok(())
}

/// A mount namespace's identity (device and inode of its nsfs file).
type NsId = (u64, u64);

fn namespace_of(pid: &str) -> Option<NsId> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

enum Host {
    /// We are in the host's mount namespace.
    Same,
    /// The host's is another one: `ns` is open on it.
    Other { pid: u32, ns: File },
    /// No other process's namespace can be opened.
    Unknown,
}

/// PID 1's mount namespace if we may open it, else the outermost
/// ancestor's we may open.
fn host_namespace(own: Option<NsId>) -> Host {
    let mut chain = vec![1u32];
    let mut pid = std::process::id();
    for _ in 0..64 {
        match parent_of(pid) {
            Some(ppid) if ppid > 1 => {
                chain.push(ppid);
                pid = ppid;
            }
            _ => break,
        }
    }
    // PID 1 first, then the ancestors from the outermost inwards.
    chain[1..].reverse();
    for pid in chain {
        let path = format!("/proc/{pid}/ns/mnt");
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if Some((meta.dev(), meta.ino())) == own {
            return Host::Same;
        }
        return Host::Other { pid, ns: file };
    }
    Host::Unknown
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the mount holding `path` propagates to or from other
/// namespaces (`shared:` or `master:` in mountinfo).
fn propagated(path: &Path) -> Option<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let canonical = path.canonicalize().ok()?;
    // The last mount at the deepest mount point containing `path` wins.
    let mut best: Option<(usize, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = Path::new(point);
        if !canonical.starts_with(point) {
            continue;
        }
        let optional = fields[6..]
            .iter()
            .take_while(|f| **f != "-")
            .any(|f| f.starts_with("shared:") || f.starts_with("master:"));
        let depth = point.components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, optional));
        }
    }
    best.map(|(_, p)| p)
}

/// Makes the host's bpffs at `mount_point` visible at the same path in our
/// view (mounting one on the host first for [`Purpose::Run`]). `Ok(None)`
/// for [`Purpose::Find`] when the host has none.
fn bring_host_bpffs(
    host_ns: &File,
    mount_point: &Path,
    dir: &Path,
    purpose: Purpose,
) -> Result<Option<()>, String> {
    let ns = host_ns.try_clone().map_err(|e| e.to_string())?;
    let point = mount_point.to_path_buf();
    let pin_dir = dir.to_path_buf();
    // setns(CLONE_NEWNS) is refused to a thread sharing its filesystem
    // context with others: a thread of our own unshares it first, so only
    // that thread enters the host's namespace.
    let helper = std::thread::spawn(move || -> Result<Option<(OwnedFd, u64)>, String> {
        unshare(CloneFlags::CLONE_FS).map_err(|e| format!("unshare(CLONE_FS): {e}"))?;
        setns(&ns, CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("entering the host's mount namespace: {e}"))?;
        if !on_bpffs(&pin_dir) {
            if purpose == Purpose::Find {
                return Ok(None);
            }
            mount_bpffs(&point).map_err(|e| format!("on the host: {e}"))?;
        }
        if purpose == Purpose::Run {
            std::fs::create_dir_all(&pin_dir)
                .map_err(|e| format!("on the host, {}: {e}", pin_dir.display()))?;
        }
        let dev = std::fs::metadata(&point)
            .map_err(|e| format!("on the host, {}: {e}", point.display()))?
            .dev();
        let tree = open_tree(&point).map_err(|e| format!("open_tree on the host: {e}"))?;
        Ok(Some((tree, dev)))
    });
    let Some((tree, dev)) = helper
        .join()
        .map_err(|_| "the helper thread panicked".to_string())??
    else {
        return Ok(None);
    };
    // Already the same superblock in our view (a host mount propagated or
    // inherited): nothing to do.
    if std::fs::metadata(mount_point).is_ok_and(|m| m.dev() == dev) && on_bpffs(mount_point) {
        return Ok(Some(()));
    }
    std::fs::create_dir_all(mount_point).map_err(|e| format!("{}: {e}", mount_point.display()))?;
    move_mount(&tree, mount_point).map_err(|e| format!("move_mount: {e}"))?;
    if !std::fs::metadata(mount_point).is_ok_and(|m| m.dev() == dev) {
        return Err(format!(
            "{} does not show the host's bpffs after move_mount",
            mount_point.display()
        ));
    }
    info!(
        path = %mount_point.display(),
        "the host's bpffs is attached in this private mount namespace: the pinned dataplane outlives the daemon"
    );
    Ok(Some(()))
}

fn c_path(path: &Path) -> Result<CString, std::io::Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`).
fn open_tree(path: &Path) -> Result<OwnedFd, std::io::Error> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; the returned fd is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the detached mount `tree` at `path` in our mount namespace.
fn move_mount(tree: &OwnedFd, path: &Path) -> Result<(), std::io::Error> {
    let c = c_path(path)?;
    let empty = c"";
    // SAFETY: valid fds and NUL-terminated strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Logs once how the pins will fare.
pub fn report(pins: &PinDir) {
    match &pins.why_not {
        None => info!(path = %pins.path.display(), "pinned dataplane: survives daemon restarts"),
        Some(why) => warn!(
            path = %pins.path.display(),
            "the pinned dataplane will NOT survive this process: {why}"
        ),
    }
}

/// Removes `dir` and the now-empty parents up to the bpffs root it was
/// created under (`/sys/fs/bpf/director`), ignoring ones still in use.
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
    if dir.parent() == Some(Path::new(DEFAULT_PARENT)) {
        let _ = std::fs::remove_dir(DEFAULT_PARENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_readable_and_distinct() {
        assert_eq!(pin_name(Path::new("/run/director")), "run-director");
        assert_eq!(pin_name(Path::new("/run//director/")), "run-director");
        let lab = pin_name(Path::new("/tmp/dlab-1-2/state-d1"));
        assert!(lab.starts_with("tmp-dlab-1-2-state-d1@"), "{lab}");
        // Paths a plain mapping would confuse get different names.
        let names: std::collections::HashSet<String> =
            ["/a-b", "/a/b", "/a_b", "/a b", "/a\\b", "/", "/root"]
                .iter()
                .map(|p| pin_name(Path::new(p)))
                .collect();
        assert_eq!(names.len(), 7, "{names:?}");
        for n in &names {
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)),
                "{n}"
            );
        }
        assert_eq!(
            default_pin_dir(Path::new("/run/director")),
            PathBuf::from("/sys/fs/bpf/director/run-director")
        );
    }

    #[test]
    fn mount_points() {
        assert_eq!(
            mount_point(Path::new("/sys/fs/bpf/director/x")),
            PathBuf::from("/sys/fs/bpf")
        );
        assert_eq!(
            mount_point(Path::new("/var/lib/director/bpf")),
            PathBuf::from("/var/lib/director/bpf")
        );
    }

    #[test]
    fn parent_of_self() {
        let ppid = nix::unistd::getppid().as_raw() as u32;
        assert_eq!(parent_of(std::process::id()), Some(ppid));
    }
}
