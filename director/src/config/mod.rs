//! The TOML configuration: structure, defaults, validation, and errors that
//! name the file, line, column and key.
//!
//! Keys mirror keepalived.conf keywords in snake_case so operators recognise
//! them (`virtual_server`, `real_server`, `router_id`...). Unknown keys are
//! errors, never ignored. One file per part of the file: `global`,
//! `service` (virtual and real servers, groups), `check` (health checks),
//! `vrrp` (instances and what they track); `validate` and `vrrp_validate`
//! hold the checks serde cannot express; this one the whole and its errors.

use std::{
    collections::BTreeMap,
    collections::HashSet,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use director_common::{
    MAX_MEMBER_KEYS, MAX_REAL_SERVERS, MAX_REAL_SERVERS_PER_SERVICE, MAX_SERVICES,
};
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

/// At most this many IPVS services (address x port) per group with
/// `dataplane = "ipvs"`.
pub const MAX_IPVS_GROUP: usize = 4096;

/// Default idle time after which a UDP flow is placed again (as IPVS).
pub const DEFAULT_UDP_TIMEOUT: u32 = 300;

/// Where the daemon keeps its control socket and runtime state by default.
pub const DEFAULT_STATE_DIR: &str = "/run/director";
/// Highest real-server weight (as in keepalived and IPVS).
pub const MAX_WEIGHT: u32 = 65535;
/// The longest `slow_start`, seconds (a day).
pub const MAX_SLOW_START: u32 = 86_400;

mod global;
mod health_check;
pub mod routes;
mod scripts;
mod service;
mod service_validate;
mod vrrp;
mod vrrp_validate;

pub use self::{
    global::*,
    health_check::*,
    scripts::{ScriptIdentity, insecure, resolve_script_user},
    service::*,
    vrrp::*,
};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub global: Global,
    #[serde(default)]
    pub virtual_server: Vec<VirtualServer>,
    #[serde(default)]
    pub vrrp_instance: Vec<VrrpInstance>,
    #[serde(default)]
    pub vrrp_script: Vec<VrrpScript>,
    #[serde(default)]
    pub vrrp_sync_group: Vec<VrrpSyncGroup>,
    /// `[[virtual_server_group]]`: addresses and ports served together.
    #[serde(default)]
    pub virtual_server_group: Vec<VirtualServerGroup>,
    /// `[[track_file]]`: files whose integer adjusts priorities.
    #[serde(default)]
    pub track_file: Vec<TrackFile>,
    /// `[[track_process]]`: processes that must run.
    #[serde(default)]
    pub track_process: Vec<TrackProcess>,
    /// `[[bfd_instance]]`: BFD sessions (RFC 5880/5881) to neighbours.
    #[serde(default)]
    pub bfd_instance: Vec<BfdInstance>,
}

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{col}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        /// Dotted key path, for example `virtual_server[0].port`.
        key: String,
        message: String,
    },
}

/// One step of a key path into the document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A validation failure before it is given a position in the file.
#[derive(Debug)]
struct Problem {
    path: Vec<Seg>,
    message: String,
}

fn problem(path: Vec<Seg>, message: impl Into<String>) -> Problem {
    Problem {
        path,
        message: message.into(),
    }
}

fn key_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// An error about key `key` of `[[vrrp_instance]]` number `index` of the
/// file at `path` (re-read), positioned at that key: `FILE:LINE:COL:
/// \`vrrp_instance[N].KEY\`: MESSAGE`. For problems found past validation
/// (the host has no such interface, the address is not ours).
pub fn vrrp_instance_error(
    path: &Path,
    index: usize,
    key: &'static str,
    message: impl std::fmt::Display,
) -> ConfigError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let at = vec![Seg::Key("vrrp_instance"), Seg::Index(index), Seg::Key(key)];
    let (line, col) = line_col(&text, locate(&text, &at));
    let key = key_string(&at);
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        col,
        message: format!("`{key}`: {message}"),
        key,
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |e: toml::de::Error, key: String| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, col) = line_col(text, offset);
            let message = e.message().trim();
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                col,
                message: if key.is_empty() {
                    message.to_string()
                } else {
                    format!("`{key}`: {message}")
                },
                key,
            }
        };
        let document = toml::Deserializer::parse(text).map_err(|e| invalid(e, String::new()))?;
        // A value serde refuses is reported with its key.
        let mut config: Config = serde_path_to_error::deserialize(document).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            invalid(e.into_inner(), key)
        })?;
        if let Err(p) = config.resolve_members().and_then(|()| config.validate()) {
            let offset = locate(text, &p.path);
            let (line, col) = line_col(text, offset);
            let key = key_string(&p.path);
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                col,
                message: format!("`{key}`: {}", p.message),
                key,
            });
        }
        Ok(config)
    }

    /// Resolves each virtual server's members: its group's, or its
    /// `address` and `port`.
    fn resolve_members(&mut self) -> Result<(), Problem> {
        use Seg::{Index, Key};
        let mut groups: BTreeMap<&str, Vec<GroupMember>> = BTreeMap::new();
        for (gi, g) in self.virtual_server_group.iter().enumerate() {
            let at = |k: &'static str| vec![Key("virtual_server_group"), Index(gi), Key(k)];
            if g.name.is_empty() || groups.contains_key(g.name.as_str()) {
                return Err(problem(
                    at("name"),
                    format!("name `{}` is empty or used twice", g.name),
                ));
            }
            if g.members.is_empty() {
                return Err(problem(at("members"), "a group needs at least one member"));
            }
            let mut members = Vec::new();
            for (j, m) in g.members.iter().enumerate() {
                let at = vec![
                    Key("virtual_server_group"),
                    Index(gi),
                    Key("members"),
                    Index(j),
                ];
                let member = GroupMember::parse(m).map_err(|e| problem(at.clone(), e))?;
                if let Some(first) = members.first().map(|f: &GroupMember| f.first)
                    && first.is_ipv4() != member.first.is_ipv4()
                {
                    return Err(problem(at, "a group holds one address family"));
                }
                if let Some(o) = members.iter().find(|o: &&GroupMember| o.overlaps(&member)) {
                    return Err(problem(at, format!("`{m}` overlaps `{o}`")));
                }
                members.push(member);
            }
            groups.insert(&g.name, members);
        }
        for (i, vs) in self.virtual_server.iter_mut().enumerate() {
            let at = |k: &'static str| vec![Key("virtual_server"), Index(i), Key(k)];
            if vs.fwmark.is_some() {
                for (k, set) in [
                    ("address", vs.vip.is_some()),
                    ("port", vs.vport.is_some()),
                    ("group", vs.group.is_some()),
                ] {
                    if set {
                        return Err(problem(
                            at(k),
                            "a fwmark service has no address, port or group: the firewall's mark says what it serves",
                        ));
                    }
                }
                vs.members = Vec::new();
                continue;
            }
            if vs.ip_family.is_some() {
                return Err(problem(
                    at("ip_family"),
                    "only a fwmark service takes ip_family",
                ));
            }
            vs.members = match (&vs.group, vs.vip, vs.vport) {
                (Some(g), None, None) => groups.get(g.as_str()).cloned().ok_or_else(|| {
                    problem(
                        at("group"),
                        format!("no [[virtual_server_group]] named `{g}`"),
                    )
                })?,
                (Some(_), Some(_), _) => {
                    return Err(problem(
                        at("address"),
                        "a virtual server with `group` has no address: its group's members are its addresses",
                    ));
                }
                (Some(_), None, Some(_)) => {
                    return Err(problem(
                        at("port"),
                        "a virtual server with `group` has no port: its group's members are its ports",
                    ));
                }
                (None, Some(a), Some(p)) => vec![GroupMember {
                    first: a,
                    last: a,
                    ports: (p, p),
                }],
                (None, None, _) => {
                    return Err(problem(
                        vec![Key("virtual_server"), Index(i)],
                        "`address` is required (or `group`)",
                    ));
                }
                (None, Some(_), None) => {
                    return Err(problem(
                        vec![Key("virtual_server"), Index(i)],
                        "`port` is required (0: every port)",
                    ));
                }
            };
        }
        Ok(())
    }

    /// The virtual server `vip`:`port`/`protocol` names: the one with that
    /// identity, else the one answering there (a group's member).
    pub fn find_service(&self, vip: IpAddr, port: u16, protocol: Protocol) -> Option<usize> {
        let all = || {
            self.virtual_server
                .iter()
                .enumerate()
                .filter(|(_, v)| v.protocol == protocol)
        };
        all()
            .find(|(_, v)| v.address() == vip && v.port() == port)
            .or_else(|| all().find(|(_, v)| v.serves(vip, port)))
            .map(|(i, _)| i)
    }

    /// The checks serde cannot express, each beside the section it checks:
    /// `global`, `service_validate` (its real servers' checkers in `health_check`),
    /// `vrrp_validate`, `scripts`; then the dataplane's capacity. Reports the
    /// first problem.
    fn validate(&self) -> Result<(), Problem> {
        self.validate_global()?;
        let total = self.validate_services()?;
        self.validate_vrrp()?;
        self.validate_scripts()?;
        self.validate_capacity(total)
    }

    /// Validates a configuration built in memory (runtime changes); the
    /// error names the key.
    pub fn check(&self) -> Result<(), String> {
        self.validate()
            .map_err(|p| format!("`{}`: {}", key_string(&p.path), p.message))
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Byte offset of the deepest part of `path` that exists in the document:
/// the key itself when present, else its table.
fn locate(text: &str, path: &[Seg]) -> usize {
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut table: &DeTable<'_> = root.get_ref();
    let mut best = 0;
    let mut i = 0;
    while i < path.len() {
        let Seg::Key(name) = &path[i] else { break };
        let Some((key, value)) = table.get_key_value(*name) else {
            break;
        };
        best = key.span().start;
        let mut value = value;
        // Follow an index into an array (of tables).
        if let Some(Seg::Index(n)) = path.get(i + 1) {
            let DeValue::Array(items) = value.get_ref() else {
                break;
            };
            let Some(item) = items.get(*n) else { break };
            best = item.span().start;
            value = item;
            i += 1;
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
        i += 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    const GOOD: &str = r#"
[global]
router_id = "lb1"
interface = "eth0"
state_dir = "/tmp/director-test"

[[virtual_server]]
address = "10.0.0.100"
port = 80
protocol = "tcp"

  [[virtual_server.real_server]]
  address = "10.0.0.11"
  port = 80
  weight = 2

  [[virtual_server.real_server]]
  address = "10.0.0.12"

[[virtual_server]]
address = "10.0.0.100"
port = 53
protocol = "udp"
"#;

    #[test]
    fn parses_a_good_file_with_defaults() {
        let c = parse(GOOD).expect("valid config");
        assert_eq!(c.global.router_id, "lb1");
        assert_eq!(c.global.interface, "eth0");
        assert_eq!(c.global.xdp_mode, XdpMode::Auto);
        assert_eq!(c.virtual_server.len(), 2);
        let vs = &c.virtual_server[0];
        assert_eq!(vs.address(), "10.0.0.100".parse::<IpAddr>().expect("ip"));
        assert_eq!(vs.protocol, Protocol::Tcp);
        assert_eq!(vs.real_server[0].weight, 2);
        assert_eq!(vs.real_server[1].weight, 1, "weight defaults to 1");
        assert_eq!(vs.real_server[1].port, None);
        assert_eq!(c.virtual_server[1].protocol, Protocol::Udp);
        assert!(c.virtual_server[1].real_server.is_empty());
    }

    #[test]
    fn command_lines_that_cannot_run_are_refused() {
        let base = "[global]\ninterface = \"eth0\"\n\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"10.0.0.100\"]\n";
        let e = err(&format!("{base}notify_master = \"/bin/echo 'unclosed\"\n"));
        assert!(
            e.contains("notify_master") && e.contains("could never run"),
            "{e}"
        );
        assert!(e.starts_with("test.toml:8:"), "{e}");
        let e = err(&format!(
            "{base}\n[[vrrp_script]]\nname = \"s\"\nscript = \"/bin/true \\\"x\"\n"
        ));
        assert!(e.contains("script") && e.contains("could never run"), "{e}");
        parse(&format!("{base}notify = \"/bin/sh -c 'echo $*'\"\n")).expect("fine");
    }

    #[test]
    fn flow_sync_peers_must_be_reachable_from_the_listening_socket() {
        let sync = |listen: &str, peer: &str| {
            format!(
                "[global]\ninterface = \"eth0\"\nflow_sync = {{ listen = \"{listen}\", peers = [\"{peer}\"], key = \"longenough\" }}\n"
            )
        };
        let e = err(&sync("10.0.0.10:8848", "[fd00::11]:8848"));
        assert!(
            e.contains("flow_sync.peers") && e.contains("[::]:8848"),
            "{e}"
        );
        let e = err(&sync("0.0.0.0:8848", "[fd00::11]:8848"));
        assert!(e.contains("IPv6"), "{e}");
        let e = err(&sync("[fd00::10]:8848", "10.0.0.11:8848"));
        assert!(e.contains("IPv4"), "{e}");
        for (listen, peer) in [
            ("[::]:8848", "10.0.0.11:8848"),
            ("[::]:8848", "[fd00::11]:8848"),
            ("10.0.0.10:8848", "10.0.0.11:8848"),
        ] {
            parse(&sync(listen, peer)).expect("reachable");
        }
    }

    #[test]
    fn an_any_port_ipvs_service_needs_persistence() {
        let text = "[global]\ninterface = \"eth0\"\ndataplane = \"ipvs\"\n\n[[virtual_server]]\naddress = \"10.0.0.100\"\nport = 0\n";
        let e = err(text);
        assert!(e.starts_with("test.toml:7:"), "{e}");
        assert!(e.contains("persistence_timeout"), "{e}");
        parse(&format!("{text}persistence_timeout = 60\n")).expect("persistent: fine");
        // The XDP dataplane forwards any port without persistence.
        parse(&text.replace("dataplane = \"ipvs\"\n", "")).expect("xdp: fine");
    }

    #[test]
    fn defaults_state_dir_and_router_id() {
        let c = parse("[global]\ninterface = \"eth0\"\n").expect("valid");
        assert_eq!(c.global.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert!(!c.global.router_id.is_empty());
        assert!(c.virtual_server.is_empty());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[global]\ninterface = \"eth0\"\nrouter_idd = \"x\"\n");
        assert!(e.starts_with("test.toml:3:1: "), "{e}");
        assert!(e.contains("router_idd"), "{e}");
    }

    #[test]
    fn unknown_key_in_real_server() {
        let text = GOOD.replace("weight = 2", "wieght = 2");
        let e = err(&text);
        assert!(e.starts_with("test.toml:15:3: "), "{e}");
        assert!(e.contains("wieght"), "{e}");
    }

    #[test]
    fn fail_open_and_slow_start_out_of_range_name_their_line() {
        let text = GOOD.replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nfail_open = 101\n",
        );
        let e = err(&text);
        assert!(
            e.starts_with("test.toml:11:") && e.contains("fail_open"),
            "{e}"
        );
        let text = GOOD.replace("weight = 2", "weight = 2\n  slow_start = 90000");
        let e = err(&text);
        assert!(
            e.starts_with("test.toml:16:") && e.contains("slow_start"),
            "{e}"
        );
        let text = GOOD.replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nfail_open = 50\nslow_start = 30\n",
        );
        let c = Config::parse(Path::new("test.toml"), &text).expect("valid");
        assert_eq!(c.virtual_server[0].fail_open, Some(50));
        let rs = &c.virtual_server[0].real_server[0];
        assert_eq!(c.virtual_server[0].slow_start_of(rs).as_secs(), 30);
    }

    #[test]
    fn syntax_error_has_position() {
        let e = err("[global\ninterface = \"eth0\"\n");
        assert!(e.starts_with("test.toml:1:"), "{e}");
    }

    #[test]
    fn missing_interface() {
        let e = err("[global]\nrouter_id = \"a\"\n");
        assert!(e.starts_with("test.toml:1:1: "), "{e}");
        assert!(e.contains("interface"), "{e}");
    }

    #[test]
    fn bad_address_is_reported_at_the_value() {
        let text = GOOD.replace("\"10.0.0.12\"", "\"10.0.0.300\"");
        let e = err(&text);
        assert!(e.starts_with("test.toml:18:13: "), "{e}");
    }

    #[test]
    fn wrong_type() {
        let e = err(
            "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.1\"\nport = \"http\"\n",
        );
        assert!(e.starts_with("test.toml:5:8: "), "{e}");
    }

    #[test]
    fn port_out_of_range() {
        let e = err(
            "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.1\"\nport = 70000\n",
        );
        assert!(e.starts_with("test.toml:5:"), "{e}");
    }

    #[test]
    fn real_server_port_must_match_in_dr() {
        let text = GOOD.replace("port = 80\n  weight", "port = 8080\n  weight");
        let e = err(&text);
        assert!(e.starts_with("test.toml:14:3: "), "{e}");
        assert!(e.contains("virtual_server[0].real_server[0].port"), "{e}");
        assert!(e.contains("cannot change the port"), "{e}");
    }

    #[test]
    fn duplicate_virtual_server() {
        let text = GOOD
            .replace("port = 53", "port = 80")
            .replace("\"udp\"", "\"tcp\"");
        let e = err(&text);
        assert!(e.starts_with("test.toml:21:1: "), "{e}");
        assert!(e.contains("defined twice"), "{e}");
    }

    #[test]
    fn duplicate_real_server() {
        let text = GOOD.replace("\"10.0.0.12\"", "\"10.0.0.11\"");
        let e = err(&text);
        assert!(e.starts_with("test.toml:18:3: "), "{e}");
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn family_mismatch() {
        let text = GOOD.replace("\"10.0.0.12\"", "\"fd00::12\"");
        let e = err(&text);
        assert!(e.contains("address family"), "{e}");
        assert!(e.starts_with("test.toml:18:3: "), "{e}");
    }

    #[test]
    fn weight_out_of_range() {
        let text = GOOD.replace("weight = 2", "weight = 70000");
        let e = err(&text);
        assert!(e.contains("weight"), "{e}");
        assert!(e.starts_with("test.toml:15:3: "), "{e}");
    }

    #[test]
    fn bad_interface_name() {
        let e = err("[global]\ninterface = \"a-very-long-interface-name\"\n");
        assert!(e.starts_with("test.toml:2:1: "), "{e}");
    }

    #[test]
    fn too_many_real_servers_in_a_service() {
        let mut text = String::from(
            "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.1\"\nport = 80\n",
        );
        for i in 0..=MAX_REAL_SERVERS_PER_SERVICE {
            text.push_str(&format!(
                "[[virtual_server.real_server]]\naddress = \"10.1.{}.{}\"\n",
                i / 250,
                i % 250 + 1
            ));
        }
        let e = err(&text);
        assert!(e.contains("at most"), "{e}");
    }

    /// Thousands of VIPs: refused at once, with the limit in the message.
    #[test]
    fn thousands_of_virtual_servers_are_refused_clearly() {
        let mut text = String::from("[global]\ninterface = \"eth0\"\n");
        for i in 0..5000u32 {
            text.push_str(&format!(
                "[[virtual_server]]\naddress = \"10.{}.{}.{}\"\nport = 80\n[[virtual_server.real_server]]\naddress = \"10.200.0.1\"\n",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff
            ));
        }
        let started = std::time::Instant::now();
        let e = err(&text);
        assert!(
            e.contains("5000 virtual servers configured")
                && e.contains(&format!("at most {MAX_SERVICES}")),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn bad_protocol_value() {
        let e = err(
            "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"sctp\"\n",
        );
        assert!(e.starts_with("test.toml:6:12: "), "{e}");
    }

    const VRRP: &str = r#"
[global]
interface = "eth0"

[[vrrp_script]]
name = "chk_nginx"
script = "/usr/bin/pgrep nginx"
weight = -20

[[vrrp_instance]]
name = "VI_1"
virtual_router_id = 51
priority = 150
advert_int = 1
virtual_ipaddress = ["10.0.0.100/24", "10.0.0.101"]
authentication = { auth_type = "PASS", auth_pass = "secret" }
track_script = ["chk_nginx"]
"#;

    #[test]
    fn parses_vrrp_instances() {
        let c = parse(VRRP).expect("valid");
        let v = &c.vrrp_instance[0];
        assert_eq!(v.version, Version::V2, "keepalived's default version");
        assert_eq!(v.state, InitialState::Backup);
        assert!(!v.nopreempt);
        assert_eq!(v.advert_interval_cs(), 100);
        let a = v.addresses();
        assert_eq!(a[0].prefix, 24);
        assert_eq!(a[1].prefix, 32);
        assert_eq!(c.vrrp_script[0].weight, -20);
        let c = parse(&VRRP.replace("priority = 150", "priority = 150\nstate = \"MASTER\""))
            .expect("valid");
        assert_eq!(c.vrrp_instance[0].state, InitialState::Master);
    }

    #[test]
    fn vrrp_errors_name_the_key() {
        let e = err(&VRRP.replace("advert_int = 1", "advert_int = 0.5"));
        assert!(e.starts_with("test.toml:14:1: "), "{e}");
        assert!(e.contains("version = 3"), "{e}");
        let v3 = VRRP.replace("advert_int = 1", "advert_int = 0.5\nversion = 3");
        let e = err(&v3);
        assert!(
            e.contains("authentication exists in VRRP version 2 only"),
            "{e}"
        );
        let e = err(&VRRP.replace("virtual_router_id = 51", "virtual_router_id = 0"));
        assert!(
            e.starts_with("test.toml:12:1: ") && e.contains("1 and 255"),
            "{e}"
        );
        let e = err(&VRRP.replace("virtual_router_id = 51", "virtual_router_id = 256"));
        assert!(e.starts_with("test.toml:12:"), "{e}");
        let e = err(&VRRP.replace("\"10.0.0.101\"", "\"fd00::1\""));
        assert!(e.contains("wrong family"), "{e}");
        assert!(e.contains("virtual_ipaddress[1]"), "{e}");
        let e = err(&VRRP.replace("[\"chk_nginx\"]", "[\"chk_apache\"]"));
        assert!(e.contains("no [[vrrp_script]] named `chk_apache`"), "{e}");
        let e = err(&VRRP.replace("\"10.0.0.101\"", "\"10.0.0.300\""));
        assert!(e.contains("not an IP address"), "{e}");
        let e = err(&VRRP.replace(
            "auth_pass = \"secret\"",
            "auth_pass = \"waytoolongpassword\"",
        ));
        assert!(e.contains("1 to 8"), "{e}");
        let v3 = VRRP
            .replace("advert_int = 1", "advert_int = 0.005\nversion = 3")
            .replace(
                "authentication = { auth_type = \"PASS\", auth_pass = \"secret\" }\n",
                "",
            );
        assert!(err(&v3).contains("0.01 to 40.95"));
        let ok = VRRP
            .replace("advert_int = 1", "advert_int = 0.01\nversion = 3")
            .replace(
                "authentication = { auth_type = \"PASS\", auth_pass = \"secret\" }\n",
                "",
            );
        assert_eq!(
            parse(&ok).expect("valid").vrrp_instance[0].advert_interval_cs(),
            1
        );
    }

    #[test]
    fn health_check_keys() {
        let base = "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.1\"\nport = 80\nquorum = 2\nsorry_server = \"10.0.0.9\"\n[[virtual_server.real_server]]\naddress = \"10.0.0.2\"\n";
        let ok = format!(
            "{base}[virtual_server.real_server.http_get]\nconnect_timeout = 2\nretry = 2\nurl = [{{ path = \"/health\", status_code = \"200-204\", digest = \"5eb63bbbe01eeed093cb22bb8f5acdc3\" }}, {{ path = \"/\", status_code = [200, \"301-302\"], regex = \"ok\" }}]\n[virtual_server.real_server.tcp_check]\nconnect_port = 8080\n[virtual_server.real_server.misc_check]\nmisc_path = \"/usr/local/bin/check --fast\"\nmisc_dynamic = true\n"
        );
        let c = parse(&ok).expect("valid");
        let rs = &c.virtual_server[0].real_server[0];
        assert_eq!(rs.http_get.as_ref().map(|h| h.url.len()), Some(2));
        assert_eq!(
            rs.tcp_check.as_ref().and_then(|t| t.common.connect_port),
            Some(8080)
        );
        assert_eq!(c.virtual_server[0].quorum, 2);
        let e = err(&format!(
            "{base}[virtual_server.real_server.http_get]\nurl = [{{ path = \"/\", status_code = \"700\" }}]\n"
        ));
        assert!(e.contains("status_code") && e.contains("700"), "{e}");
        assert!(e.starts_with("test.toml:11:"), "{e}");
        let e = err(&format!(
            "{base}[virtual_server.real_server.http_get]\nurl = [{{ path = \"/\", digest = \"xyz\" }}]\n"
        ));
        assert!(e.contains("MD5"), "{e}");
        let e = err(&format!(
            "{base}[virtual_server.real_server.http_get]\nurl = [{{ path = \"/\", regex = \"(\" }}]\n"
        ));
        assert!(e.contains("regular expression"), "{e}");
        let e = err(&format!(
            "{base}[virtual_server.real_server.tcp_check]\nconnect_timeout = -1\n"
        ));
        assert!(e.contains("tcp_check.connect_timeout"), "{e}");
        let e = err(&format!(
            "{base}[virtual_server.real_server.tcp_check]\nconect_port = 1\n"
        ));
        assert!(e.contains("conect_port"), "{e}");
        let e = err(&format!(
            "{base}[virtual_server.real_server.dns_check]\ntype = \"SPF\"\n"
        ));
        assert!(e.contains("SPF"), "{e}");
    }

    #[test]
    fn fwmark_services_are_ipvs_only_and_need_a_port_to_probe() {
        let ipvs = "[global]\ninterface = \"eth0\"\ndataplane = \"ipvs\"\n";
        let svc = "\n[[virtual_server]]\nfwmark = 7\n\n  [[virtual_server.real_server]]\n  address = \"10.0.0.11\"\n";
        let c = parse(&format!("{ipvs}{svc}")).expect("a fwmark service");
        let vs = &c.virtual_server[0];
        assert_eq!(vs.fwmark, Some(7));
        assert!(vs.address().is_unspecified() && vs.address().is_ipv4());
        let c = parse(&format!(
            "{ipvs}{}",
            svc.replace("fwmark = 7\n", "fwmark = 7\nip_family = \"inet6\"\n")
                .replace("10.0.0.11", "fd00::11")
        ))
        .expect("an IPv6 fwmark service");
        assert!(c.virtual_server[0].address().is_ipv6());

        // XDP cannot see firewall marks.
        let e = err(&format!("[global]\ninterface = \"eth0\"\n{svc}"));
        assert!(e.contains("fwmark") && e.contains("ipvs"), "{e}");
        // A mark has no address, port or group of its own.
        let e = err(&format!(
            "{ipvs}{}",
            svc.replace("fwmark = 7\n", "fwmark = 7\nport = 80\n")
        ));
        assert!(e.contains("no address, port or group"), "{e}");
        // ip_family belongs to fwmark services.
        let e = err(&format!(
            "{ipvs}\n[[virtual_server]]\naddress = \"10.0.0.100\"\nport = 80\nip_family = \"inet\"\n"
        ));
        assert!(e.contains("ip_family"), "{e}");
        // One service per mark and family.
        let e = err(&format!("{ipvs}{svc}{svc}"));
        assert!(e.contains("fwmark 7 is also"), "{e}");
        parse(&format!(
            "{ipvs}{svc}{}",
            svc.replace("fwmark = 7\n", "fwmark = 7\nip_family = \"inet6\"\n")
                .replace("10.0.0.11", "fd00::11")
        ))
        .expect("the same mark in both families");
        // A TCP check needs a port to connect to.
        let e = err(&format!(
            "{ipvs}{svc}  [virtual_server.real_server.tcp_check]\n"
        ));
        assert!(e.contains("connect_port"), "{e}");
        parse(&format!(
            "{ipvs}{svc}  [virtual_server.real_server.tcp_check]\n  connect_port = 80\n"
        ))
        .expect("a check with its port");
    }

    #[test]
    fn flow_table_size_defaults_to_a_million_and_is_bounded() {
        let base = "[global]\ninterface = \"eth0\"\n";
        assert_eq!(parse(base).expect("ok").global.flow_table_size, 1_000_000);
        let c = parse(&format!("{base}flow_table_size = 4000000\n")).expect("ok");
        assert_eq!(c.global.flow_table_size, 4_000_000);
        for bad in [0u64, 1023, 16_777_217] {
            let e = err(&format!("{base}flow_table_size = {bad}\n"));
            assert!(e.contains("flow_table_size") && e.contains("1024"), "{e}");
        }
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }
}
