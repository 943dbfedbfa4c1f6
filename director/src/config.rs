//! The TOML configuration: structure, defaults, validation, and errors that
//! name the file, line, column and key.
//!
//! Keys mirror keepalived.conf keywords in snake_case so operators recognise
//! them (`virtual_server`, `real_server`, `router_id`...). Unknown keys are
//! errors, never ignored.

use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use director_common::{MAX_REAL_SERVERS, MAX_REAL_SERVERS_PER_SERVICE, MAX_SERVICES};

/// Default idle time after which a UDP flow is placed again (as IPVS).
pub const DEFAULT_UDP_TIMEOUT: u32 = 300;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

/// Where the daemon keeps its control socket and runtime state by default.
pub const DEFAULT_STATE_DIR: &str = "/run/director";
/// Highest real-server weight (as in keepalived and IPVS).
pub const MAX_WEIGHT: u32 = 65535;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub global: Global,
    #[serde(default)]
    pub virtual_server: Vec<VirtualServer>,
}

/// `[global]`: settings for the whole director (keepalived's `global_defs`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// Name of this director in logs and status (keepalived's `router_id`);
    /// defaults to the host name.
    #[serde(default = "default_router_id")]
    pub router_id: String,
    /// Interface that receives VIP traffic and where the XDP program runs.
    pub interface: String,
    /// Directory for the control socket and runtime state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// XDP attach mode: `auto` (native, falling back to generic), `native`
    /// or `generic`.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Seconds a UDP flow may stay idle before it is placed again.
    #[serde(default = "default_udp_timeout")]
    pub udp_timeout: u32,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

/// `[[virtual_server]]`: one virtual service, VIP:port/protocol.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    pub address: IpAddr,
    /// 0 serves every port of the VIP (like an IPVS fwmark service).
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Scheduler (keepalived's `lb_algo` / `lvs_sched`): `mh` or `sh`.
    #[serde(default, alias = "lb_algo", alias = "lvs_sched")]
    pub scheduler: Scheduler,
    /// Forwarding method (keepalived's `lb_kind` / `lvs_method`): only `dr`.
    #[serde(default, alias = "lvs_method")]
    pub lb_kind: LbKind,
    /// Seconds a client sticks to its real server (0: off).
    #[serde(default)]
    pub persistence_timeout: u32,
    #[serde(default)]
    pub real_server: Vec<RealServer>,
}

/// How a virtual server spreads new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Maglev hashing of the whole flow (addresses, ports, protocol).
    #[default]
    Mh,
    /// Maglev hashing of the client address only.
    Sh,
}

impl Scheduler {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Mh => "mh",
            Scheduler::Sh => "sh",
        }
    }
}

/// Forwarding method. Only direct routing exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum LbKind {
    #[default]
    #[serde(alias = "DR")]
    #[serde(rename = "dr")]
    Dr,
}

/// Transport protocol of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => director_common::IPPROTO_TCP,
            Protocol::Udp => director_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `[[virtual_server.real_server]]`: one real server behind a service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealServer {
    pub address: IpAddr,
    /// In direct routing the real server answers on the virtual port, so
    /// this may only repeat the virtual server's port.
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_router_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "director".to_string())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_weight() -> u32 {
    1
}

fn default_udp_timeout() -> u32 {
    DEFAULT_UDP_TIMEOUT
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
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, col) = line_col(text, offset);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                col,
                key: String::new(),
                message: e.message().trim().to_string(),
            }
        })?;
        if let Err(p) = config.validate() {
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

    /// Semantic checks that serde cannot express. Reports the first problem.
    fn validate(&self) -> Result<(), Problem> {
        use Seg::{Index, Key};
        let g = &self.global;
        let iface = vec![Key("global"), Key("interface")];
        if g.interface.is_empty() {
            return Err(problem(iface, "must not be empty"));
        }
        if g.interface.len() > 15 || g.interface.contains(['/', ' ']) {
            return Err(problem(
                iface,
                format!("`{}` is not a valid interface name", g.interface),
            ));
        }
        if g.router_id.is_empty() {
            return Err(problem(
                vec![Key("global"), Key("router_id")],
                "must not be empty",
            ));
        }
        if g.udp_timeout == 0 {
            return Err(problem(
                vec![Key("global"), Key("udp_timeout")],
                "must be at least 1 second",
            ));
        }
        if self.virtual_server.len() > MAX_SERVICES as usize {
            return Err(problem(
                vec![Key("virtual_server")],
                format!(
                    "{} virtual servers configured; the dataplane holds at most {MAX_SERVICES}",
                    self.virtual_server.len()
                ),
            ));
        }
        let mut services = HashSet::new();
        let mut total = 0usize;
        for (i, vs) in self.virtual_server.iter().enumerate() {
            let at = |k: &'static str| vec![Key("virtual_server"), Index(i), Key(k)];
            if vs.address.is_unspecified() || vs.address.is_multicast() || vs.address.is_loopback()
            {
                return Err(problem(
                    at("address"),
                    format!("{} cannot be a virtual address", vs.address),
                ));
            }
            if !services.insert((vs.address, vs.port, vs.protocol)) {
                return Err(problem(
                    at("address"),
                    format!(
                        "virtual server {}:{}/{} is defined twice",
                        vs.address, vs.port, vs.protocol
                    ),
                ));
            }
            if vs.real_server.len() > MAX_REAL_SERVERS_PER_SERVICE as usize {
                return Err(problem(
                    at("real_server"),
                    format!(
                        "{} real servers; a virtual server holds at most {MAX_REAL_SERVERS_PER_SERVICE}",
                        vs.real_server.len()
                    ),
                ));
            }
            total += vs.real_server.len();
            let mut seen = HashSet::new();
            for (j, rs) in vs.real_server.iter().enumerate() {
                let at = |k: &'static str| {
                    vec![
                        Key("virtual_server"),
                        Index(i),
                        Key("real_server"),
                        Index(j),
                        Key(k),
                    ]
                };
                if rs.address.is_ipv4() != vs.address.is_ipv4() {
                    return Err(problem(
                        at("address"),
                        format!(
                            "{} is not of the same address family as the virtual address {}",
                            rs.address, vs.address
                        ),
                    ));
                }
                if rs.address.is_unspecified()
                    || rs.address.is_multicast()
                    || rs.address.is_loopback()
                {
                    return Err(problem(
                        at("address"),
                        format!("{} cannot be a real server address", rs.address),
                    ));
                }
                if let Some(port) = rs.port
                    && port != vs.port
                    && vs.port != 0
                {
                    return Err(problem(
                        at("port"),
                        format!(
                            "direct routing cannot change the port: the real server must listen on {} (the virtual server's port)",
                            vs.port
                        ),
                    ));
                }
                if rs.weight > MAX_WEIGHT {
                    return Err(problem(
                        at("weight"),
                        format!("must be between 0 and {MAX_WEIGHT}"),
                    ));
                }
                if !seen.insert(rs.address) {
                    return Err(problem(
                        at("address"),
                        format!("real server {} is listed twice", rs.address),
                    ));
                }
            }
        }
        if total > MAX_REAL_SERVERS as usize {
            return Err(problem(
                vec![Key("virtual_server")],
                format!(
                    "{total} real servers in all; the dataplane holds at most {MAX_REAL_SERVERS}"
                ),
            ));
        }
        Ok(())
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
        assert_eq!(vs.address, "10.0.0.100".parse::<IpAddr>().expect("ip"));
        assert_eq!(vs.protocol, Protocol::Tcp);
        assert_eq!(vs.real_server[0].weight, 2);
        assert_eq!(vs.real_server[1].weight, 1, "weight defaults to 1");
        assert_eq!(vs.real_server[1].port, None);
        assert_eq!(c.virtual_server[1].protocol, Protocol::Udp);
        assert!(c.virtual_server[1].real_server.is_empty());
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

    #[test]
    fn bad_protocol_value() {
        let e = err(
            "[global]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"sctp\"\n",
        );
        assert!(e.starts_with("test.toml:6:12: "), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }
}
