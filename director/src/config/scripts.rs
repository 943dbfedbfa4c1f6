//! Who runs the operator's scripts (keepalived's `script_user` and
//! `enable_script_security`), and every command line of a config.
//!
//! `global.script_user = "USER"` or `"USER GROUP"` (keepalived's form; the
//! group defaults to the user's primary group): every script (notify,
//! quorum, `vrrp_script`, `misc_check`, BFD notify) runs as that user with
//! its groups, so without the daemon's capabilities. Unset, scripts run as
//! the daemon does (root).
//!
//! `global.enable_script_security = true`: a script that would run as root
//! is refused when a user other than root could change it: the program
//! file, or a directory above it, owned by another user, writable by a
//! group other than root's, or writable by anyone. A config with such a
//! script does not load (the error names the key and the path at fault),
//! so a `misc_path` an application user can edit never becomes root code.

use std::os::unix::fs::MetadataExt as _;

use super::*;

/// Whom scripts run as: a resolved user, group and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptIdentity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The user's groups (initgroups), for setgroups.
    pub groups: Vec<u32>,
}

impl ScriptIdentity {
    /// Whether scripts run as root (uid 0).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Resolves `script_user` (`USER` or `USER GROUP`) on this host.
pub fn resolve_script_user(value: &str) -> Result<ScriptIdentity, String> {
    let mut words = value.split_whitespace();
    let (Some(name), group, None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("`{value}`: USER or \"USER GROUP\""));
    };
    let user = match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => u,
        _ => return Err(format!("no user named `{name}` on this system")),
    };
    let gid = match group {
        None => user.gid,
        Some(g) => match nix::unistd::Group::from_name(g) {
            Ok(Some(g)) => g.gid,
            _ => return Err(format!("no group named `{g}` on this system")),
        },
    };
    let cname = std::ffi::CString::new(name).map_err(|_| format!("`{name}`: not a user name"))?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![gid.as_raw()]);
    if !groups.contains(&gid.as_raw()) {
        groups.push(gid.as_raw());
    }
    Ok(ScriptIdentity {
        user: name.to_string(),
        uid: user.uid.as_raw(),
        gid: gid.as_raw(),
        groups,
    })
}

/// Why a user other than root could change `program` (None: it is safe to
/// run as root): the program or a directory above it (as named, and where
/// its links lead) owned by another user, writable by a group other than
/// root's, or by anyone.
pub fn insecure(program: &Path) -> Option<String> {
    let mut paths = vec![program.to_path_buf()];
    if let Ok(real) = std::fs::canonicalize(program)
        && real != program
    {
        paths.push(real);
    }
    for p in paths {
        for part in p.ancestors() {
            if part.as_os_str().is_empty() {
                continue;
            }
            let Ok(m) = std::fs::metadata(part) else {
                continue;
            };
            let shown = part.display();
            if m.uid() != 0 {
                return Some(format!("{shown} is owned by uid {}", m.uid()));
            }
            if m.mode() & 0o002 != 0 {
                return Some(format!("{shown} is writable by anyone"));
            }
            if m.mode() & 0o020 != 0 && m.gid() != 0 {
                return Some(format!("{shown} is writable by group gid {}", m.gid()));
            }
        }
    }
    None
}

/// The program a command line runs: its first word, found on `PATH` when it
/// has no slash.
fn program_of(command: &str) -> Option<PathBuf> {
    let argv = shlex::split(command)?;
    let first = argv.first()?;
    if first.contains('/') {
        return Some(PathBuf::from(first));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(first))
        .find(|p| p.is_file())
}

impl Config {
    /// Every command line of the config with its key path.
    pub(super) fn command_lines(&self) -> Vec<(Vec<Seg>, &str)> {
        use Seg::{Index, Key};
        let mut out: Vec<(Vec<Seg>, &str)> = Vec::new();
        fn push<'a>(out: &mut Vec<(Vec<Seg>, &'a str)>, at: Vec<Seg>, v: Option<&'a String>) {
            if let Some(v) = v {
                out.push((at, v.as_str()));
            }
        }
        for (i, inst) in self.vrrp_instance.iter().enumerate() {
            for (k, v) in [
                ("notify", &inst.notify),
                ("notify_master", &inst.notify_master),
                ("notify_backup", &inst.notify_backup),
                ("notify_fault", &inst.notify_fault),
                ("notify_stop", &inst.notify_stop),
            ] {
                push(
                    &mut out,
                    vec![Key("vrrp_instance"), Index(i), Key(k)],
                    v.as_ref(),
                );
            }
        }
        for (i, g) in self.vrrp_sync_group.iter().enumerate() {
            for (k, v) in [
                ("notify", &g.notify),
                ("notify_master", &g.notify_master),
                ("notify_backup", &g.notify_backup),
                ("notify_fault", &g.notify_fault),
            ] {
                push(
                    &mut out,
                    vec![Key("vrrp_sync_group"), Index(i), Key(k)],
                    v.as_ref(),
                );
            }
        }
        for (i, s) in self.vrrp_script.iter().enumerate() {
            push(
                &mut out,
                vec![Key("vrrp_script"), Index(i), Key("script")],
                Some(&s.script),
            );
        }
        for (i, b) in self.bfd_instance.iter().enumerate() {
            push(
                &mut out,
                vec![Key("bfd_instance"), Index(i), Key("notify")],
                b.notify.as_ref(),
            );
        }
        for (i, vs) in self.virtual_server.iter().enumerate() {
            for (k, v) in [
                ("quorum_up", &vs.quorum_up),
                ("quorum_down", &vs.quorum_down),
            ] {
                push(
                    &mut out,
                    vec![Key("virtual_server"), Index(i), Key(k)],
                    v.as_ref(),
                );
            }
            for (j, rs) in vs.real_server.iter().enumerate() {
                if let Some(m) = &rs.misc_check {
                    push(
                        &mut out,
                        vec![
                            Key("virtual_server"),
                            Index(i),
                            Key("real_server"),
                            Index(j),
                            Key("misc_check"),
                            Key("misc_path"),
                        ],
                        Some(&m.misc_path),
                    );
                }
            }
        }
        out
    }

    /// Whether the config runs any script.
    pub fn has_scripts(&self) -> bool {
        !self.command_lines().is_empty()
    }

    /// Whom this config's scripts run as (`None`: as the daemon, root).
    pub fn script_identity(&self) -> Result<Option<ScriptIdentity>, String> {
        self.global
            .script_user
            .as_deref()
            .map(resolve_script_user)
            .transpose()
    }

    /// `script_user` resolves here; with `enable_script_security`, no
    /// script that runs as root can be changed by another user.
    pub(super) fn validate_scripts(&self) -> Result<(), Problem> {
        use Seg::Key;
        let identity = self
            .script_identity()
            .map_err(|e| problem(vec![Key("global"), Key("script_user")], e))?;
        let as_root = identity.as_ref().is_none_or(ScriptIdentity::is_root);
        if !(self.global.enable_script_security && as_root) {
            return Ok(());
        }
        for (at, command) in self.command_lines() {
            if let Some(program) = program_of(command)
                && let Some(why) = insecure(&program)
            {
                return Err(problem(
                    at,
                    format!(
                        "`{}` would run as root but {why}: enable_script_security refuses it (make it and its directories root's and not writable by others, or set global.script_user)",
                        program.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_others_can_change_is_insecure() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("director-scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test setup");
        let script = dir.join("check.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("test setup");
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
        };
        mode(&dir, 0o755);
        mode(&script, 0o755);
        // (The temporary directory itself is world-writable with the
        // sticky bit: a script under it is never safe.)
        let why = insecure(&script).expect("under a world-writable /tmp");
        assert!(why.contains("writable by anyone"), "{why}");
        assert!(insecure(Path::new("/bin/sh")).is_none());
        assert!(insecure(Path::new("/usr/bin/true")).is_none());
        let _ = std::fs::remove_dir_all(&dir);
        // Under /run (root's, 0755): safe until a group or a user may
        // change it.
        let dir = PathBuf::from(format!("/run/director-scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test setup");
        mode(&dir, 0o755);
        let script = dir.join("check.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("test setup");
        mode(&script, 0o755);
        assert_eq!(insecure(&script), None);
        std::os::unix::fs::chown(&script, None, Some(100)).expect("chgrp");
        mode(&script, 0o775);
        let why = insecure(&script).expect("group-writable by another group");
        assert!(why.contains("group gid 100"), "{why}");
        mode(&script, 0o755);
        std::os::unix::fs::chown(&dir, Some(65534), None).expect("chown");
        let why = insecure(&script).expect("a directory owned by another user");
        assert!(why.contains("owned by uid 65534"), "{why}");
        // Through a link: where it leads counts too.
        std::os::unix::fs::chown(&dir, Some(0), None).expect("chown");
        let link = dir.join("link.sh");
        std::os::unix::fs::symlink("/tmp", &link).expect("symlink");
        assert!(insecure(&link).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn script_user_resolves_users_and_groups() {
        let nobody = resolve_script_user("nobody").expect("nobody exists");
        assert!(!nobody.is_root() && nobody.groups.contains(&nobody.gid));
        let root = resolve_script_user("root root").expect("root exists");
        assert!(root.is_root() && root.gid == 0);
        assert!(resolve_script_user("no-such-user-here").is_err());
        assert!(resolve_script_user("nobody no-such-group-here").is_err());
        assert!(resolve_script_user("a b c").is_err());
    }
}
