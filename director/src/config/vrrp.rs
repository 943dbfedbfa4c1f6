//! `[[vrrp_instance]]` and what it tracks: scripts, files, processes,
//! sync groups, BFD sessions; the virtual addresses.

use super::*;

/// keepalived's `bfd_instance`: a single-hop BFD session (RFC 5880
/// asynchronous mode, RFC 5881) to `neighbor_ip`. Intervals in
/// milliseconds, as keepalived.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BfdInstance {
    pub name: String,
    pub neighbor_ip: IpAddr,
    /// Our address for the session (default: what the kernel picks).
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// Required Min RX Interval, ms.
    #[serde(default = "bfd_interval")]
    pub min_rx: u32,
    /// Desired Min TX Interval while Up, ms.
    #[serde(default = "bfd_interval")]
    pub min_tx: u32,
    /// Desired Min TX Interval while not Up, ms.
    #[serde(default = "bfd_idle_tx")]
    pub idle_tx: u32,
    /// Detect Mult: packets missed before the session goes down.
    #[serde(default = "bfd_multiplier")]
    pub multiplier: u8,
    /// Wait for the neighbour to speak first.
    #[serde(default)]
    pub passive: bool,
    /// TTL sent, and the least accepted (255: single hop, RFC 5881).
    #[serde(default = "bfd_ttl")]
    pub ttl: u8,
    /// For `track_bfd` entries that give none: 0 (session down: Fault),
    /// < 0 subtracted while down, > 0 added while up.
    #[serde(default)]
    pub weight: i32,
    /// Command run when the session comes up or, having been up, goes
    /// down, with the arguments `BFD NAME UP|DOWN` (as VRRP's `notify`).
    #[serde(default)]
    pub notify: Option<String>,
}

pub(super) fn bfd_interval() -> u32 {
    10
}

pub(super) fn bfd_idle_tx() -> u32 {
    1000
}

pub(super) fn bfd_multiplier() -> u8 {
    5
}

pub(super) fn bfd_ttl() -> u8 {
    255
}

/// Something a `vrrp_instance` tracks: its name, or `{ name, weight }` to
/// use another weight for this instance (keepalived's `NAME weight W`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Tracked {
    Name(String),
    Weighted(TrackedWeight),
}

/// The `{ name, weight }` form of [`Tracked`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackedWeight {
    pub name: String,
    pub weight: Option<i32>,
}

impl Tracked {
    pub fn name(&self) -> &str {
        match self {
            Tracked::Name(n) => n,
            Tracked::Weighted(w) => &w.name,
        }
    }

    /// The weight this instance gives it, if it overrides the tracked
    /// item's own.
    pub fn weight(&self) -> Option<i32> {
        match self {
            Tracked::Name(_) => None,
            Tracked::Weighted(w) => w.weight,
        }
    }
}

/// `[[track_file]]` (keepalived's `vrrp_track_file`): the file holds an
/// integer; while tracked, the priority changes by value x weight; with
/// weight 0 any non-zero value means Fault.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackFile {
    pub name: String,
    pub file: PathBuf,
    #[serde(default = "default_file_weight")]
    pub weight: i32,
    /// Create the file with this value (`true`: 0) when it does not
    /// exist at start.
    pub init_file: Option<InitFile>,
    /// With `init_file`: write it at start even if the file exists.
    #[serde(default)]
    pub init_file_overwrite: bool,
}

/// `init_file = true` or `init_file = VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum InitFile {
    Create(bool),
    Value(i64),
}

impl InitFile {
    /// The value to write, if any.
    pub fn value(self) -> Option<i64> {
        match self {
            InitFile::Create(true) => Some(0),
            InitFile::Create(false) => None,
            InitFile::Value(v) => Some(v),
        }
    }
}

pub(super) fn default_file_weight() -> i32 {
    1
}

/// `[[track_process]]` (keepalived's `vrrp_track_process`): processes that
/// must run. Up while between `quorum` and `quorum_max` processes match;
/// down: weight 0 means Fault, otherwise the priority changes by the
/// weight as for scripts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackProcess {
    pub name: String,
    /// The process name (`comm`, or the first word of the command line with
    /// `full_command`).
    pub process: String,
    /// Its arguments, matched as `param_match` says.
    pub parameters: Option<String>,
    /// `exact` (default), `initial` (the arguments start with
    /// `parameters`) or `partial` (they contain it).
    #[serde(default)]
    pub param_match: ParamMatch,
    /// Match `process` against the whole program path of the command line.
    #[serde(default)]
    pub full_command: bool,
    #[serde(default = "one")]
    pub quorum: u32,
    pub quorum_max: Option<u32>,
    #[serde(default)]
    pub weight: i32,
    /// Seconds a new process must run before it counts (default 0).
    pub fork_delay: Option<f64>,
    /// Seconds a process may be gone before it counts as gone (default 0).
    pub terminate_delay: Option<f64>,
    /// Both delays at once (when they are not set).
    pub delay: Option<f64>,
}

/// How `[[track_process]]` matches arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamMatch {
    #[default]
    Exact,
    Initial,
    Partial,
}

/// A command line must split as a shell would split it (quotes closed) into
/// at least a program.
pub(super) fn command_line(at: Vec<Seg>, value: Option<&str>) -> Result<(), Problem> {
    match value {
        None => Ok(()),
        Some(v) if shlex::split(v).is_some_and(|argv| !argv.is_empty()) => Ok(()),
        Some(v) => Err(problem(
            at,
            format!(
                "`{v}` is not a command line (an unclosed quote, or empty): it could never run"
            ),
        )),
    }
}

/// `[[vrrp_sync_group]]`: instances that change state together.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpSyncGroup {
    pub name: String,
    /// Member `vrrp_instance` names.
    pub group: Vec<String>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    /// Called with: GROUP, name, state.
    pub notify: Option<String>,
}

/// `[[vrrp_instance]]`: one virtual router (keepalived's `vrrp_instance`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpInstance {
    /// The instance's name (keepalived's `vrrp_instance NAME`).
    pub name: String,
    /// Interface for adverts and addresses; defaults to `global.interface`.
    pub interface: Option<String>,
    pub virtual_router_id: u8,
    /// 1-255; 255 means we own the addresses.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Seconds between adverts: whole seconds for v2, 0.01-40.95 for v3.
    #[serde(default = "default_advert_int")]
    pub advert_int: f64,
    /// VRRP version, 2 or 3.
    #[serde(default)]
    pub version: Version,
    /// Initial state: `backup` (default) or `master` (become master at once).
    #[serde(default)]
    pub state: InitialState,
    /// Do not take over from a lower-priority master.
    #[serde(default)]
    pub nopreempt: bool,
    /// Seconds after startup before a higher priority preempts.
    #[serde(default)]
    pub preempt_delay: f64,
    /// Addresses held by the master: `ADDR` or `ADDR/PREFIX`.
    pub virtual_ipaddress: Vec<VirtualIp>,
    /// Source address for unicast adverts (default: the interface's).
    pub unicast_src_ip: Option<IpAddr>,
    /// Send adverts to these peers instead of multicast.
    #[serde(default)]
    pub unicast_peer: Vec<IpAddr>,
    pub authentication: Option<Authentication>,
    /// Interfaces whose loss puts the instance in Fault (or, `{ name,
    /// weight }`, changes its priority by the weight).
    #[serde(default)]
    pub track_interface: Vec<Tracked>,
    /// Do not track the instance's own interface (by default its loss puts
    /// the instance in Fault, as keepalived does).
    #[serde(default)]
    pub dont_track_primary: bool,
    /// keepalived's `use_vmac [NAME]`: the virtual addresses live on a
    /// macvlan interface with the virtual router's MAC (RFC 5798:
    /// 00:00:5e:00:01:VRID), so a failover changes no client's ARP cache.
    /// `true` names it `vrrp.VRID`; a string names it.
    #[serde(default)]
    pub use_vmac: Option<UseVmac>,
    /// keepalived's `vmac_xmit_base`: adverts leave from the base
    /// interface (its MAC) rather than from the virtual MAC.
    #[serde(default)]
    pub vmac_xmit_base: bool,
    /// `[[vrrp_script]]` names (or `{ name, weight }`) that adjust
    /// priority or force Fault.
    #[serde(default)]
    pub track_script: Vec<Tracked>,
    /// `[[track_file]]` names (or `{ name, weight }`).
    #[serde(default)]
    pub track_file: Vec<Tracked>,
    /// `[[track_process]]` names (or `{ name, weight }`).
    #[serde(default)]
    pub track_process: Vec<Tracked>,
    /// `[[bfd_instance]]` names (or `{ name, weight }`): a session down
    /// forces Fault (weight 0) or adjusts the priority.
    #[serde(default)]
    pub track_bfd: Vec<Tracked>,
    /// A `[[bfd_instance]]` to the master: as a backup, its session going
    /// down is taken as the master's death at once, without waiting for
    /// the master-down interval (the adverts still decide who is master).
    #[serde(default)]
    pub master_bfd: Option<String>,
    /// Virtual servers whose quorum adjusts priority or forces Fault.
    #[serde(default)]
    pub track_virtual_server: Vec<TrackVirtualServer>,
    /// More paths for the adverts (e.g. unicast over a dedicated link):
    /// sent on every path, heard on any; the master is declared down only
    /// when every path is silent.
    #[serde(default)]
    pub heartbeat: Vec<HeartbeatPath>,
    /// Upstream addresses that must answer ICMP echo; losing one forces
    /// Fault (an isolated director gives the VIP up).
    #[serde(default)]
    pub track_gateway: Vec<TrackGateway>,
    /// Routes added while MASTER (keepalived's `virtual_routes`, in `ip
    /// route` syntax).
    #[serde(default)]
    pub virtual_routes: Vec<String>,
    /// Policy rules added while MASTER (keepalived's `virtual_rules`, in
    /// `ip rule` syntax).
    #[serde(default)]
    pub virtual_rules: Vec<String>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    pub notify_stop: Option<String>,
    /// Called with: INSTANCE, name, state (MASTER/BACKUP/FAULT/STOP), priority.
    pub notify: Option<String>,
    /// Seconds after becoming master before a second burst of gratuitous ARPs.
    #[serde(default = "default_garp_delay")]
    pub garp_master_delay: u32,
    /// Gratuitous ARPs (or unsolicited NAs) per burst.
    #[serde(default = "default_garp_repeat")]
    pub garp_master_repeat: u32,
    /// Seconds between refresh bursts while master (0: none).
    #[serde(default)]
    pub garp_master_refresh: u32,
    /// This router has no peers: do not warn that none is ever heard.
    #[serde(default)]
    pub standalone: bool,
}

/// One `track_virtual_server` entry: while the virtual server has lost
/// quorum, a negative `weight` lowers the priority, 0 forces Fault; a
/// positive weight is added while it has quorum (keepalived's weights).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackVirtualServer {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub weight: i32,
}

impl TrackVirtualServer {
    /// The service tracked.
    pub fn id(&self) -> ServiceAddr {
        ServiceAddr {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }
}

/// One extra heartbeat path of a VRRP instance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatPath {
    pub interface: String,
    /// Peers on that path (none: multicast on the interface).
    #[serde(default)]
    pub unicast_peer: Vec<IpAddr>,
    /// Source address on that path (default: the interface's).
    pub unicast_src_ip: Option<IpAddr>,
}

/// One `track_gateway` entry: ICMP echo every `interval` seconds; `fall`
/// unanswered in a row force Fault, `rise` answered lift it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackGateway {
    pub address: IpAddr,
    #[serde(default = "default_gateway_interval")]
    pub interval: f64,
    #[serde(default = "default_gateway_fall")]
    pub fall: u32,
    #[serde(default = "one")]
    pub rise: u32,
}

pub(super) fn default_gateway_interval() -> f64 {
    1.0
}
pub(super) fn default_gateway_fall() -> u32 {
    3
}

/// keepalived's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum InitialState {
    #[default]
    #[serde(rename = "backup", alias = "BACKUP")]
    Backup,
    #[serde(rename = "master", alias = "MASTER")]
    Master,
}

/// `authentication = { auth_type = "PASS", auth_pass = "..." }` (v2 only).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    pub auth_type: String,
    pub auth_pass: String,
}

/// `[[vrrp_script]]`: a check whose result adjusts an instance's priority.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpScript {
    pub name: String,
    /// Command line, run without a shell.
    pub script: String,
    /// Seconds between runs.
    #[serde(default = "default_script_interval")]
    pub interval: f64,
    /// Seconds before a run is killed and counted as failed (default: interval).
    pub timeout: Option<f64>,
    /// 0: failure means Fault; > 0: added while it succeeds; < 0: subtracted
    /// while it fails.
    #[serde(default)]
    pub weight: i32,
    /// Successes needed to count as up again.
    #[serde(default = "one")]
    pub rise: u32,
    /// Failures needed to count as down.
    #[serde(default = "one")]
    pub fall: u32,
}

pub(super) fn default_priority() -> u8 {
    100
}
pub(super) fn default_advert_int() -> f64 {
    1.0
}
pub(super) fn default_garp_delay() -> u32 {
    5
}
pub(super) fn default_garp_repeat() -> u32 {
    5
}
pub(super) fn default_script_interval() -> f64 {
    1.0
}
pub(super) fn one() -> u32 {
    1
}

/// A parsed `virtual_ipaddress` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualAddress {
    pub address: IpAddr,
    pub prefix: u8,
}

/// Parses `ADDR` or `ADDR/PREFIX` (default prefix: /32 or /128).
pub fn parse_virtual_address(s: &str) -> Result<VirtualAddress, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let address: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(format!("`{s}`: prefix must be 0-{max}")),
        },
    };
    Ok(VirtualAddress { address, prefix })
}

/// The VRRP version: 2 (RFC 3768: IPv4, whole seconds, authentication;
/// keepalived's default) or 3 (RFC 5798: IPv4 and IPv6, centiseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Version {
    #[default]
    V2,
    V3,
}

impl Version {
    /// The number in the file, the status and the packet.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

impl TryFrom<u8> for Version {
    type Error = String;
    fn try_from(n: u8) -> Result<Version, String> {
        match n {
            2 => Ok(Version::V2),
            3 => Ok(Version::V3),
            _ => Err(format!("{n}: must be 2 or 3")),
        }
    }
}

impl From<Version> for u8 {
    fn from(v: Version) -> u8 {
        v.number()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// A `virtual_ipaddress` entry: parsed once, at load; shown as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VirtualIp {
    pub addr: VirtualAddress,
    text: String,
}

impl TryFrom<String> for VirtualIp {
    type Error = String;
    fn try_from(text: String) -> Result<VirtualIp, String> {
        Ok(VirtualIp {
            addr: parse_virtual_address(&text)?,
            text,
        })
    }
}

impl From<VirtualIp> for String {
    fn from(v: VirtualIp) -> String {
        v.text
    }
}

impl fmt::Display for VirtualIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl VrrpInstance {
    /// The virtual addresses.
    pub fn addresses(&self) -> Vec<VirtualAddress> {
        self.virtual_ipaddress.iter().map(|v| v.addr).collect()
    }

    /// The virtual addresses as written in the file.
    pub fn address_texts(&self) -> Vec<String> {
        self.virtual_ipaddress
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The virtual-MAC interface's name, when `use_vmac` is on.
    pub fn vmac_name(&self) -> Option<String> {
        match &self.use_vmac {
            Some(UseVmac::On(true)) => Some(format!("vrrp.{}", self.virtual_router_id)),
            Some(UseVmac::Named(n)) => Some(n.clone()),
            Some(UseVmac::On(false)) | None => None,
        }
    }

    /// The virtual router's MAC (RFC 5798 section 7.3): 00-00-5E-00-01-{VRID} for IPv4,
    /// 00-00-5E-00-02-{VRID} for IPv6.
    pub fn vmac(&self) -> [u8; 6] {
        let family = if self.is_ipv6() { 0x02 } else { 0x01 };
        [0x00, 0x00, 0x5e, 0x00, family, self.virtual_router_id]
    }

    /// Whether adverts leave from the virtual-MAC interface: with
    /// `use_vmac`, unless `vmac_xmit_base`, for IPv4 (IPv6 adverts need the
    /// base interface's link-local address).
    pub fn adverts_from_vmac(&self) -> bool {
        self.vmac_name().is_some() && !self.vmac_xmit_base && !self.is_ipv6()
    }

    pub fn is_ipv6(&self) -> bool {
        self.addresses()
            .first()
            .is_some_and(|a| a.address.is_ipv6())
    }

    /// The advert interval in centiseconds.
    pub fn advert_interval_cs(&self) -> u16 {
        (self.advert_int * 100.0).round() as u16
    }
}

/// `use_vmac`: on (`true`, named `vrrp.VRID`), off, or the interface's
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UseVmac {
    On(bool),
    Named(String),
}
