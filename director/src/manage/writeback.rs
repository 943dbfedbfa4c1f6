//! `director real-server ... --persist`: a runtime change is also written
//! to the config file. The file is edited in place with toml_edit (comments,
//! order and layout are kept), the result is validated like any config,
//! and it replaces the file atomically (a temporary file renamed over it).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::{Config, Protocol, RealServer};

/// Why a change could not be persisted (the file is left as it was).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot edit {path}: {message}")]
    Edit { path: PathBuf, message: String },
    #[error("the edited file would not be valid: {0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which real server of which virtual server.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub address: IpAddr,
    /// Which `[[virtual_server]]` (a group's has no address and port).
    pub index: usize,
}

fn parses_to(item: Option<&Item>, want: IpAddr) -> bool {
    item.and_then(Item::as_str)
        .and_then(|s| s.parse::<IpAddr>().ok())
        == Some(want)
}

fn protocol_of(t: &Table) -> Option<Protocol> {
    match t.get("protocol").and_then(Item::as_str) {
        None | Some("tcp") => Some(Protocol::Tcp),
        Some("udp") => Some(Protocol::Udp),
        Some(_) => None,
    }
}

/// Edits the config text so the real server is `after` (None: removed).
pub fn edit(
    path: &Path,
    text: &str,
    target: Target,
    after: Option<&RealServer>,
) -> Result<String, PersistError> {
    let err = |message: String| PersistError::Edit {
        path: path.to_path_buf(),
        message,
    };
    let mut doc: DocumentMut = text.parse().map_err(|e| err(format!("{e}")))?;
    let services = doc
        .get_mut("virtual_server")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| err("no [[virtual_server]] tables".into()))?;
    let vs = services
        .get_mut(target.index)
        .filter(|t| {
            let plain = parses_to(t.get("address"), target.vip)
                && t.get("port").and_then(Item::as_integer) == Some(i64::from(target.port));
            (plain || t.contains_key("group")) && protocol_of(t) == Some(target.protocol)
        })
        .ok_or_else(|| {
            err(format!(
                "virtual server {}:{}/{} is not written as a [[virtual_server]] table",
                target.vip, target.port, target.protocol
            ))
        })?;
    if !vs.contains_key("real_server") {
        vs.insert("real_server", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let servers = vs
        .get_mut("real_server")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| {
            err("real_server is not written as [[virtual_server.real_server]] tables".into())
        })?;
    let pos = servers
        .iter()
        .position(|t| parses_to(t.get("address"), target.address));
    match (pos, after) {
        (Some(i), None) => {
            servers.remove(i);
        }
        (None, None) => {}
        (Some(i), Some(rs)) => {
            if let Some(t) = servers.get_mut(i) {
                t.insert("weight", value(i64::from(rs.weight)));
            }
        }
        (None, Some(rs)) => {
            let mut t = Table::new();
            t.insert("address", value(rs.address.to_string()));
            t.insert("weight", value(i64::from(rs.weight)));
            servers.push(t);
        }
    }
    let out = doc.to_string();
    // The result must be a valid config that says what the daemon now runs.
    let parsed = Config::parse(path, &out).map_err(|e| PersistError::Invalid(e.to_string()))?;
    let found = parsed
        .virtual_server
        .get(target.index)
        .and_then(|v| v.real_server.iter().find(|r| r.address == target.address));
    if found.map(|r| r.weight) != after.map(|r| r.weight) {
        return Err(PersistError::Invalid(
            "the edited file does not describe the change".into(),
        ));
    }
    Ok(out)
}

/// Replaces `path` with `text` atomically, keeping its permissions.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), PersistError> {
    use std::{
        io::Write as _,
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    };
    let werr = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    // The file may hold flow_sync.key and VRRP passwords: the new one is
    // created with the old one's mode (0600 when there is none), never the
    // umask's, and given its owner before anything is written into it.
    let old = std::fs::metadata(path).ok();
    let mode = old
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o700)
            .open(&tmp)?;
        if let Some(m) = &old {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
        }
        // (`mode()` is filtered by the umask; the exact mode now.)
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e)
    })
}

/// Reads, edits and validates; the caller writes once the change is live.
pub fn prepare(
    path: &Path,
    target: Target,
    after: Option<&RealServer>,
) -> Result<String, PersistError> {
    let text = std::fs::read_to_string(path).map_err(|source| PersistError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    edit(path, &text, target, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"# the lab
[global]
interface = "eth0"

[[virtual_server]]
address = "10.0.0.100"
port = 80

  # first real server
  [[virtual_server.real_server]]
  address = "10.0.0.20"
  weight = 2

[[virtual_server]]
address = "10.0.0.100"
port = 53
protocol = "udp"
"#;

    fn target(port: u16, protocol: Protocol, address: &str) -> Target {
        Target {
            vip: "10.0.0.100".parse().expect("ip"),
            port,
            protocol,
            address: address.parse().expect("ip"),
            // The test config: port 80 first, then port 53.
            index: usize::from(port != 80),
        }
    }

    #[test]
    fn the_written_file_keeps_its_mode_and_a_new_one_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("director-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test setup");
        let path = dir.join("director.toml");
        std::fs::write(&path, "old").expect("test setup");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))
            .expect("test setup");
        write_atomic(&path, "new").expect("written");
        let meta = std::fs::metadata(&path).expect("written");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_to_string(&path).expect("written"), "new");
        let fresh = dir.join("fresh.toml");
        write_atomic(&fresh, "x").expect("written");
        let mode = std::fs::metadata(&fresh)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o7777,
            0o600,
            "a new file holding secrets is private"
        );
        // Nothing left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&dir).expect("test setup");
    }

    #[test]
    fn edits_keep_comments_and_layout() {
        let p = Path::new("director.toml");
        let rs = RealServer::new("10.0.0.21".parse().expect("ip"), 5);
        let added =
            edit(p, CONFIG, target(80, Protocol::Tcp, "10.0.0.21"), Some(&rs)).expect("add");
        assert!(added.contains("# first real server") && added.contains("# the lab"));
        let c = Config::parse(p, &added).expect("valid");
        assert_eq!(c.virtual_server[0].real_server.len(), 2);
        assert_eq!(c.virtual_server[0].real_server[1].weight, 5);
        // Weight of an existing one.
        let rs = RealServer::new("10.0.0.20".parse().expect("ip"), 0);
        let drained =
            edit(p, &added, target(80, Protocol::Tcp, "10.0.0.20"), Some(&rs)).expect("weight");
        let c = Config::parse(p, &drained).expect("valid");
        assert_eq!(c.virtual_server[0].real_server[0].weight, 0);
        // Removal.
        let removed =
            edit(p, &drained, target(80, Protocol::Tcp, "10.0.0.21"), None).expect("remove");
        let c = Config::parse(p, &removed).expect("valid");
        assert_eq!(c.virtual_server[0].real_server.len(), 1);
        // The UDP service is told apart from the TCP one.
        let rs = RealServer::new("10.0.0.22".parse().expect("ip"), 1);
        let udp = edit(p, CONFIG, target(53, Protocol::Udp, "10.0.0.22"), Some(&rs)).expect("udp");
        let c = Config::parse(p, &udp).expect("valid");
        assert_eq!(c.virtual_server[1].real_server.len(), 1);
        assert!(edit(p, CONFIG, target(53, Protocol::Tcp, "10.0.0.22"), Some(&rs)).is_err());
    }
}
