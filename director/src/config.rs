//! The TOML configuration: structure, defaults, validation, and errors that
//! name the file, line, column and key.
//!
//! Keys mirror keepalived.conf keywords in snake_case so operators recognise
//! them (`virtual_server`, `real_server`, `router_id`...). Unknown keys are
//! errors, never ignored.

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

/// At most this many IPVS services (address x port) per group with
/// `dataplane = "ipvs"`.
pub const MAX_IPVS_GROUP: usize = 4096;

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

fn bfd_interval() -> u32 {
    10
}

fn bfd_idle_tx() -> u32 {
    1000
}

fn bfd_multiplier() -> u8 {
    5
}

fn bfd_ttl() -> u8 {
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

fn default_file_weight() -> i32 {
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
fn command_line(at: Vec<Seg>, value: Option<&str>) -> Result<(), Problem> {
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
    #[serde(default = "default_vrrp_version")]
    pub version: u8,
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
    pub virtual_ipaddress: Vec<String>,
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

fn default_gateway_interval() -> f64 {
    1.0
}
fn default_gateway_fall() -> u32 {
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

fn default_priority() -> u8 {
    100
}
fn default_advert_int() -> f64 {
    1.0
}
fn default_vrrp_version() -> u8 {
    2
}
fn default_garp_delay() -> u32 {
    5
}
fn default_garp_repeat() -> u32 {
    5
}
fn default_script_interval() -> f64 {
    1.0
}
fn one() -> u32 {
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

impl VrrpInstance {
    /// The parsed virtual addresses (validated at load).
    pub fn addresses(&self) -> Vec<VirtualAddress> {
        self.virtual_ipaddress
            .iter()
            .filter_map(|s| parse_virtual_address(s).ok())
            .collect()
    }

    /// Whether the instance runs over IPv6.
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
    /// Directory (on a bpffs) where the XDP dataplane's maps and link are
    /// pinned so that they outlive the daemon; default
    /// `/sys/fs/bpf/director/<name of the state directory>`
    /// (`/sys/fs/bpf/director/run-director` for the default state
    /// directory). See [`Global::pin_dir`].
    pub pin_dir: Option<PathBuf>,
    /// XDP attach mode: `auto` (native, falling back to generic), `native`
    /// or `generic`.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Seconds a UDP flow may stay idle before it is placed again.
    #[serde(default = "default_udp_timeout")]
    pub udp_timeout: u32,
    /// Entries of the XDP flow table (1,024 to 16,777,216). Restart-only:
    /// a daemon started with another size re-creates the table, and the
    /// flows it held are placed again (by Maglev: the same servers unless
    /// the pool changed meanwhile).
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Where to serve Prometheus `/metrics` and `/status` over HTTP
    /// (`ADDR:PORT`; none by default).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Which dataplane forwards: `auto` (XDP, falling back to IPVS with a
    /// log line saying why), `xdp` or `ipvs`.
    #[serde(default)]
    pub dataplane: DataplaneKind,
    /// Announce VIPs over BGP through BIRD 2 (`[global.bgp]`).
    pub bgp: Option<BgpConfig>,
    /// Share flow-table exceptions with peer directors (XDP dataplane).
    pub flow_sync: Option<FlowSyncConfig>,
    /// Group allowed to use the control socket (mode 0660 instead of 0600;
    /// root only by default).
    pub control_group: Option<String>,
}

impl Global {
    /// Where the XDP dataplane is pinned: `pin_dir`, or the default under
    /// the host's bpffs for this state directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| crate::dataplane::bpffs::default_pin_dir(&self.state_dir))
    }
}

/// How VIPs reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BgpMode {
    /// VRRP only: nothing is announced.
    Vrrp,
    /// Announce each VIP whose virtual server has quorum (active-active
    /// directors behind ECMP).
    #[default]
    Bgp,
    /// Announce only while this director is VRRP master for the VIP.
    Both,
}

/// `[global.bgp]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    #[serde(default)]
    pub mode: BgpMode,
    /// BIRD's control socket.
    #[serde(default = "default_bird_socket")]
    pub bird_socket: PathBuf,
    /// Files BIRD includes (`route VIP/32 blackhole;` lines); default
    /// `<state_dir>/bird-vips4.conf` and `bird-vips6.conf`.
    pub announce_file_v4: Option<PathBuf>,
    pub announce_file_v6: Option<PathBuf>,
    /// Seconds a VIP must be eligible before it is announced.
    #[serde(default)]
    pub announce_delay: f64,
    /// Seconds between withdrawing every route and stopping (drain and
    /// shutdown), so routers move traffic away first.
    #[serde(default = "default_withdraw_wait")]
    pub withdraw_wait: f64,
}

fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}
fn default_withdraw_wait() -> f64 {
    2.0
}

/// `global.flow_sync`: where to listen, the peers, the shared key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSyncConfig {
    /// `ADDR:PORT` to receive peers' flows on.
    pub listen: std::net::SocketAddr,
    /// `ADDR:PORT` of each peer director.
    pub peers: Vec<std::net::SocketAddr>,
    /// Shared secret authenticating the datagrams (HMAC-SHA256).
    pub key: String,
    /// Seconds between rounds (default 0.5).
    #[serde(default = "default_sync_interval")]
    pub interval: f64,
}

fn default_sync_interval() -> f64 {
    0.5
}

/// `global.dataplane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    #[default]
    Auto,
    Xdp,
    Ipvs,
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

/// `[[virtual_server_group]]` (keepalived's `virtual_server_group`): the
/// addresses and ports one `[[virtual_server]]` with `group = NAME` serves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerGroup {
    pub name: String,
    /// `"ADDR[-LAST] [PORT[-LAST]]"`: an address (every port), an address
    /// and port, an address range (the last byte of IPv4, the last group
    /// of IPv6: `10.0.0.101-103`), a port range (`8000-8010`).
    pub members: Vec<String>,
}

/// One member of a virtual server: addresses `first..=last` (they differ
/// only in the last byte/group) and ports `ports.0..=ports.1` (`(0, 0)`:
/// every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupMember {
    pub first: IpAddr,
    pub last: IpAddr,
    pub ports: (u16, u16),
}

impl GroupMember {
    /// Parses `"ADDR[-LAST] [PORT[-LAST]]"`.
    pub fn parse(s: &str) -> Result<GroupMember, String> {
        let mut words = s.split_whitespace();
        let addr = words.next().ok_or("an empty member")?;
        let ports = words.next();
        if let Some(extra) = words.next() {
            return Err(format!(
                "`{extra}`: a member is `ADDR[-LAST] [PORT[-LAST]]`"
            ));
        }
        let (first, last) = match addr.rsplit_once('-') {
            Some((a, last)) => {
                let first: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an address"))?;
                let last = match first {
                    IpAddr::V4(f) => {
                        let n: u8 = last.parse().map_err(|_| {
                            format!("`{last}`: the range's end is the last byte (0-255)")
                        })?;
                        let mut o = f.octets();
                        o[3] = n;
                        IpAddr::from(o)
                    }
                    IpAddr::V6(f) => {
                        let n = u16::from_str_radix(last, 16).map_err(|_| {
                            format!("`{last}`: the range's end is the last group (hex)")
                        })?;
                        let mut g = f.segments();
                        g[7] = n;
                        IpAddr::from(g)
                    }
                };
                if last < first {
                    return Err(format!("`{addr}`: the range ends before it starts"));
                }
                (first, last)
            }
            None => {
                let a: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("`{addr}` is not an address"))?;
                (a, a)
            }
        };
        let ports = match ports {
            None => (0, 0),
            Some(p) => {
                let port = |v: &str| {
                    v.parse::<u16>()
                        .map_err(|_| format!("`{v}` is not a port (0-65535)"))
                };
                let (lo, hi) = match p.split_once('-') {
                    Some((lo, hi)) => (port(lo)?, port(hi)?),
                    None => (port(p)?, port(p)?),
                };
                if hi < lo || (lo == 0 && hi != 0) {
                    return Err(format!("`{p}`: a port range is LOW-HIGH, from 1"));
                }
                (lo, hi)
            }
        };
        Ok(GroupMember { first, last, ports })
    }

    /// Every address of the member.
    pub fn addresses(&self) -> Vec<IpAddr> {
        match (self.first, self.last) {
            (IpAddr::V4(f), IpAddr::V4(l)) => (f.octets()[3]..=l.octets()[3])
                .map(|n| {
                    let mut o = f.octets();
                    o[3] = n;
                    IpAddr::from(o)
                })
                .collect(),
            (IpAddr::V6(f), IpAddr::V6(l)) => (f.segments()[7]..=l.segments()[7])
                .map(|n| {
                    let mut g = f.segments();
                    g[7] = n;
                    IpAddr::from(g)
                })
                .collect(),
            _ => vec![self.first],
        }
    }

    /// Whether the member serves `port` (every port: any).
    pub fn covers_port(&self, port: u16) -> bool {
        self.ports == (0, 0) || (self.ports.0..=self.ports.1).contains(&port)
    }

    /// Whether two members share an address and a port (every-port members
    /// share nothing: exact ports take precedence over them by design).
    fn overlaps(&self, other: &GroupMember) -> bool {
        let addrs = self.first <= other.last && other.first <= self.last;
        let every = self.ports == (0, 0) || other.ports == (0, 0);
        let ports = self.ports.0 <= other.ports.1 && other.ports.0 <= self.ports.1;
        addrs
            && (if every {
                self.ports == other.ports
            } else {
                ports
            })
    }
}

impl std::fmt::Display for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.first)?;
        if self.last != self.first {
            match self.last {
                IpAddr::V4(l) => write!(f, "-{}", l.octets()[3])?,
                IpAddr::V6(l) => write!(f, "-{:x}", l.segments()[7])?,
            }
        }
        match self.ports {
            (0, 0) => Ok(()),
            (lo, hi) if lo == hi => write!(f, " {lo}"),
            (lo, hi) => write!(f, " {lo}-{hi}"),
        }
    }
}

/// `[[virtual_server]]`: one virtual service, VIP:port/protocol, or every
/// member of a `[[virtual_server_group]]` (`group`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    /// The virtual address (none with `group`: see [`VirtualServer::address`]).
    #[serde(rename = "address", default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    /// 0 serves every port of the VIP (like an IPVS fwmark service).
    #[serde(rename = "port", default, skip_serializing_if = "Option::is_none")]
    pub vport: Option<u16>,
    /// A `[[virtual_server_group]]` name: the service answers on every
    /// member (one pool, one set of checks, one Maglev table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// An IPVS firewall-mark service (keepalived's `virtual_server fwmark
    /// N`): what the firewall marked N, whatever its address and port.
    /// `dataplane = "ipvs"` only; then no `address`, `port` or `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    /// The family of a `fwmark` service (keepalived's `ip_family`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<IpFamily>,
    /// The addresses and ports served, resolved at load: the group's
    /// members, or `address port` (none for `fwmark`).
    #[serde(skip)]
    pub members: Vec<GroupMember>,
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
    /// Seconds between health checks of this service's real servers
    /// (a checker's own `delay_loop` overrides it).
    #[serde(default = "default_delay_loop")]
    pub delay_loop: f64,
    /// Minimum total weight of healthy real servers for the service to be
    /// up (keepalived's `quorum`); below it the sorry server takes over.
    #[serde(default = "one")]
    pub quorum: u32,
    /// Up at `quorum + hysteresis`, down below `quorum - hysteresis`.
    #[serde(default)]
    pub hysteresis: u32,
    /// Run when quorum is gained / lost.
    pub quorum_up: Option<String>,
    pub quorum_down: Option<String>,
    /// Receives the traffic while quorum is lost (`ADDR`, same port).
    pub sorry_server: Option<IpAddr>,
    /// Real servers start down until their checks pass (keepalived `alpha`).
    #[serde(default)]
    pub alpha: bool,
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
    /// IPVS only (`dataplane = "ipvs"`): round robin, weighted round robin,
    /// least connections, weighted least connections.
    Rr,
    Wrr,
    Lc,
    Wlc,
}

impl Scheduler {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Mh => "mh",
            Scheduler::Sh => "sh",
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
        }
    }
}

/// Forwarding method (keepalived's `lb_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum LbKind {
    /// Direct routing: only the MAC addresses change.
    #[default]
    #[serde(alias = "DR")]
    #[serde(rename = "dr")]
    Dr,
    /// IP-in-IP tunnelling: the packet is encapsulated to the real server
    /// (which decapsulates it and holds the VIP).
    #[serde(alias = "TUN")]
    #[serde(rename = "tun")]
    Tun,
}

impl LbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LbKind::Dr => "dr",
            LbKind::Tun => "tun",
        }
    }
}

/// Transport protocol of a virtual service.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize, Serialize,
)]
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

/// `use_vmac`: on (`true`, named `vrrp.VRID`), off, or the interface's
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UseVmac {
    On(bool),
    Named(String),
}

/// `inet` or `inet6` (a `fwmark` service's family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Inet,
    Inet6,
}

impl VirtualServer {
    /// The service's identity address: `address`, or its group's first
    /// (a `fwmark` service: the unspecified address of its family).
    pub fn address(&self) -> IpAddr {
        self.vip
            .or_else(|| self.members.first().map(|m| m.first))
            .unwrap_or(match self.ip_family {
                Some(IpFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            })
    }

    /// The service's identity port: `port`, or its group's first.
    pub fn port(&self) -> u16 {
        self.vport
            .or_else(|| self.members.first().map(|m| m.ports.0))
            .unwrap_or(0)
    }

    /// Whether the service answers on `address`:`port`.
    pub fn serves(&self, address: IpAddr, port: u16) -> bool {
        self.members
            .iter()
            .any(|m| m.covers_port(port) && m.addresses().contains(&address))
    }

    /// Whether the service answers on `port` of some member.
    pub fn covers_port(&self, port: u16) -> bool {
        if self.members.is_empty() {
            return self.port() == 0 || self.port() == port;
        }
        self.members.iter().any(|m| m.covers_port(port))
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
    /// A failed server keeps its flows with weight 0 instead of leaving.
    #[serde(default)]
    pub inhibit_on_failure: bool,
    pub tcp_check: Option<TcpCheck>,
    pub http_get: Option<HttpCheck>,
    /// `http_get` over TLS (rustls).
    pub ssl_get: Option<HttpCheck>,
    pub misc_check: Option<MiscCheck>,
    pub udp_check: Option<UdpCheck>,
    pub dns_check: Option<DnsCheck>,
    /// ICMP (or ICMPv6) echo: the real server answers pings.
    pub ping_check: Option<PingCheck>,
    /// SMTP: a 220 banner, a 250 answer to HELO (keepalived's SMTP_CHECK).
    pub smtp_check: Option<SmtpCheck>,
    /// Probe through the clients' path: a SYN to the VIP sent to this real
    /// server's MAC (and an ARP question for the VIP it must not answer).
    pub dr_check: Option<DrCheck>,
}

impl RealServer {
    /// A real server with no checks.
    pub fn new(address: IpAddr, weight: u32) -> RealServer {
        RealServer {
            address,
            port: None,
            weight,
            inhibit_on_failure: false,
            tcp_check: None,
            http_get: None,
            ssl_get: None,
            misc_check: None,
            udp_check: None,
            dns_check: None,
            ping_check: None,
            smtp_check: None,
            dr_check: None,
        }
    }
}

/// Settings every checker shares (keepalived's names).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CheckCommon {
    /// Address to probe instead of the real server's.
    pub connect_ip: Option<IpAddr>,
    /// Port to probe instead of the service's.
    pub connect_port: Option<u16>,
    /// Source address of probes.
    pub bindto: Option<IpAddr>,
    /// Seconds before an attempt fails (default 5).
    pub connect_timeout: Option<f64>,
    /// Extra attempts before a round counts as failed (default 1).
    pub retry: Option<u32>,
    /// Seconds between attempts of one round (default 1).
    pub delay_before_retry: Option<f64>,
    /// Seconds between rounds (default: the virtual server's).
    pub delay_loop: Option<f64>,
    /// Successful rounds needed to come back (default 1).
    pub rise: Option<u32>,
    /// Failed rounds in a row needed to go down (default 1, keepalived's
    /// behaviour: `retry` attempts make one round).
    pub fall: Option<u32>,
    /// Seconds of random delay before the first round (default: up to the
    /// delay loop), so many checks do not fire in lock-step.
    pub warmup: Option<f64>,
}

/// `tcp_check`: a TCP connection succeeds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
}

/// `http_get`: each URL answers with an accepted status (and body).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
    pub url: Vec<HttpUrl>,
    /// Host header (and, for `ssl_get`, the TLS server name).
    pub virtualhost: Option<String>,
    /// `ssl_get` only: send `virtualhost` as SNI (default true).
    pub enable_sni: Option<bool>,
    /// `ssl_get` only: verify the server's certificate chain and name
    /// (default false, as keepalived: real servers often use self-signed
    /// certificates).
    pub verify_certificate: Option<bool>,
    /// `ssl_get` only: PEM file of the CAs to trust (implies
    /// `verify_certificate`; default: the system's store).
    pub ca_file: Option<std::path::PathBuf>,
}

/// One URL of an `http_get`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUrl {
    pub path: String,
    /// Accepted statuses: `200`, `"200-299"`, or a list of either (default
    /// 200-299).
    pub status_code: Option<StatusCodes>,
    /// MD5 of the body, hex (keepalived's `digest`).
    pub digest: Option<String>,
    /// A regular expression the body must match.
    pub regex: Option<String>,
}

/// `status_code = 200`, `"200-299"` or `[200, "300-302"]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StatusCodes {
    One(u16),
    Range(String),
    List(Vec<StatusCode>),
}

/// One element of a `status_code` list.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StatusCode {
    One(u16),
    Range(String),
}

/// `misc_check`: an external command; exit 0 is healthy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MiscCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
    pub misc_path: String,
    /// Seconds before the command is killed (default: connect_timeout).
    pub misc_timeout: Option<f64>,
    /// Exit codes 2-255 set the weight to code - 2 (keepalived).
    #[serde(default)]
    pub misc_dynamic: bool,
}

/// `udp_check`: send a payload; optionally require a reply.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdpCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub require_reply: bool,
}

/// `dr_check`: the real server answers through the direct-routing path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DrCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
    /// Also fail when the real server answers ARP for the VIP (IPv4;
    /// default true).
    #[serde(default = "yes")]
    pub arp: bool,
}

fn yes() -> bool {
    true
}

/// `ping_check`: an ICMP echo request is answered (keepalived's
/// PING_CHECK; `connect_port` and `bindto` do not apply).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PingCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
}

/// `smtp_check`: the server greets with 220 and answers `HELO` with 250
/// (keepalived's SMTP_CHECK; port 25 unless `connect_port`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
    /// The name sent with HELO (default: this host's name).
    pub helo_name: Option<String>,
}

/// `dns_check`: a query that must get an answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
    /// Record type: A, AAAA, NS, MX, TXT, SOA, CNAME (default A).
    #[serde(default)]
    pub r#type: DnsType,
    /// Name to ask for (default ".").
    #[serde(default = "default_dns_name")]
    pub name: String,
}

fn default_delay_loop() -> f64 {
    6.0
}
fn default_dns_name() -> String {
    ".".into()
}

/// `dns_check.type`: the record types keepalived's DNS_CHECK asks for
/// (case-insensitive in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum DnsType {
    #[default]
    A,
    Ns,
    Cname,
    Soa,
    Mx,
    Txt,
    Aaaa,
}

impl DnsType {
    const ALL: [DnsType; 7] = [
        DnsType::A,
        DnsType::Ns,
        DnsType::Cname,
        DnsType::Soa,
        DnsType::Mx,
        DnsType::Txt,
        DnsType::Aaaa,
    ];

    /// The name in the file and in DNS tools.
    pub fn name(self) -> &'static str {
        match self {
            DnsType::A => "A",
            DnsType::Ns => "NS",
            DnsType::Cname => "CNAME",
            DnsType::Soa => "SOA",
            DnsType::Mx => "MX",
            DnsType::Txt => "TXT",
            DnsType::Aaaa => "AAAA",
        }
    }

    /// The record type number (RFC 1035, RFC 3596).
    pub fn code(self) -> u16 {
        match self {
            DnsType::A => 1,
            DnsType::Ns => 2,
            DnsType::Cname => 5,
            DnsType::Soa => 6,
            DnsType::Mx => 15,
            DnsType::Txt => 16,
            DnsType::Aaaa => 28,
        }
    }
}

impl TryFrom<String> for DnsType {
    type Error = String;
    fn try_from(s: String) -> Result<DnsType, String> {
        DnsType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not one of A, AAAA, NS, MX, TXT, SOA, CNAME"))
    }
}

impl From<DnsType> for String {
    fn from(t: DnsType) -> String {
        t.name().to_string()
    }
}

/// The CA certificates in a PEM file (`ca_file`: checked at load, used by
/// `ssl_get`).
pub fn load_ca_file(path: &Path) -> Result<tokio_rustls::rustls::RootCertStore, String> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(roots)
}

/// Parses a status range like `"200-299"` or `"204"`.
pub fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (100..=599).contains(&a).then_some(())?;
    (a <= b && b <= 599).then_some((a, b))
}

impl StatusCodes {
    /// The accepted ranges, or an error naming the bad entry.
    pub fn ranges(&self) -> Result<Vec<(u16, u16)>, String> {
        let one = |c: &StatusCode| match c {
            StatusCode::One(n) => {
                parse_status_range(&n.to_string()).ok_or(format!("{n} is not an HTTP status"))
            }
            StatusCode::Range(r) => {
                parse_status_range(r).ok_or(format!("`{r}` is not a status or range like 200-299"))
            }
        };
        match self {
            StatusCodes::One(n) => Ok(vec![one(&StatusCode::One(*n))?]),
            StatusCodes::Range(r) => Ok(vec![one(&StatusCode::Range(r.clone()))?]),
            StatusCodes::List(l) => l.iter().map(one).collect(),
        }
    }
}

/// This host's name (the default router_id and SMTP HELO name).
pub fn host_name() -> String {
    default_router_id()
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

/// The flow table's default size: a million flows.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1_000_000;

fn default_flow_table_size() -> u32 {
    DEFAULT_FLOW_TABLE_SIZE
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
        let mut config: Config = toml::from_str(text).map_err(|e| {
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

    /// Validates a configuration built in memory (runtime changes); the
    /// error names the key.
    pub fn check(&self) -> Result<(), String> {
        self.validate()
            .map_err(|p| format!("`{}`: {}", key_string(&p.path), p.message))
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
        if let Some(dir) = &g.pin_dir
            && (!dir.is_absolute() || dir == Path::new("/"))
        {
            return Err(problem(
                vec![Key("global"), Key("pin_dir")],
                format!("`{}` must be an absolute directory path", dir.display()),
            ));
        }
        if g.udp_timeout == 0 {
            return Err(problem(
                vec![Key("global"), Key("udp_timeout")],
                "must be at least 1 second",
            ));
        }
        if !(1024..=16_777_216).contains(&g.flow_table_size) {
            return Err(problem(
                vec![Key("global"), Key("flow_table_size")],
                "must be between 1024 and 16777216 flows",
            ));
        }
        if let Some(b) = &g.bgp {
            let at = |k: &'static str| vec![Key("global"), Key("bgp"), Key(k)];
            for (k, v) in [
                ("announce_delay", b.announce_delay),
                ("withdraw_wait", b.withdraw_wait),
            ] {
                if !(0.0..=3600.0).contains(&v) {
                    return Err(problem(at(k), "must be between 0 and 3600 seconds"));
                }
            }
        }
        if let Some(fs) = &g.flow_sync {
            let at = |k: &'static str| vec![Key("global"), Key("flow_sync"), Key(k)];
            if fs.key.len() < 8 {
                return Err(problem(at("key"), "must be at least 8 characters"));
            }
            if fs.peers.is_empty() {
                return Err(problem(at("peers"), "at least one peer is needed"));
            }
            if !(fs.interval >= 0.05 && fs.interval <= 60.0) {
                return Err(problem(
                    at("interval"),
                    "must be between 0.05 and 60 seconds",
                ));
            }
        }
        if let Some(group) = &g.control_group
            && !matches!(nix::unistd::Group::from_name(group), Ok(Some(_)))
        {
            return Err(problem(
                vec![Key("global"), Key("control_group")],
                format!("no group named `{group}` on this system"),
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
        let mut total = 0usize;
        let mut member_keys = 0usize;
        for (i, vs) in self.virtual_server.iter().enumerate() {
            let at = |k: &'static str| vec![Key("virtual_server"), Index(i), Key(k)];
            let addr_key = if vs.group.is_some() {
                "group"
            } else {
                "address"
            };
            for a in vs.members.iter().flat_map(GroupMember::addresses) {
                if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                    return Err(problem(
                        at(addr_key),
                        format!("{a} cannot be a virtual address"),
                    ));
                }
            }
            if let Some(mark) = vs.fwmark {
                if self.global.dataplane != DataplaneKind::Ipvs {
                    return Err(problem(
                        at("fwmark"),
                        "a fwmark service needs dataplane = \"ipvs\" (the kernel's IPVS matches firewall marks; with XDP, list the addresses and ports in a [[virtual_server_group]])",
                    ));
                }
                if mark == 0 {
                    return Err(problem(at("fwmark"), "must be at least 1"));
                }
                if let Some(k) = self.virtual_server[..i].iter().position(|o| {
                    o.fwmark == Some(mark) && o.address().is_ipv4() == vs.address().is_ipv4()
                }) {
                    return Err(problem(
                        at("fwmark"),
                        format!("fwmark {mark} is also virtual_server[{k}]'s"),
                    ));
                }
            }
            if vs.group.is_some() {
                let mut ipvs_services = 0usize;
                for m in &vs.members {
                    let addrs = m.addresses().len();
                    let mut blocks = [(0u16, 0u8); 32];
                    let n = director_common::port_blocks(m.ports.0, m.ports.1, &mut blocks);
                    member_keys += addrs * (n + 1);
                    ipvs_services += addrs * (usize::from(m.ports.1 - m.ports.0) + 1);
                }
                if self.global.dataplane == DataplaneKind::Ipvs && ipvs_services > MAX_IPVS_GROUP {
                    return Err(problem(
                        at("group"),
                        format!(
                            "the group's members make {ipvs_services} IPVS services (one per address and port); at most {MAX_IPVS_GROUP} per group"
                        ),
                    ));
                }
            }
            // Two services answering on the same address, port and protocol.
            for (k, other) in self.virtual_server[..i].iter().enumerate() {
                if other.protocol != vs.protocol {
                    continue;
                }
                for m in &vs.members {
                    if let Some(o) = other.members.iter().find(|o| o.overlaps(m)) {
                        return Err(problem(
                            at(addr_key),
                            format!(
                                "virtual server {}:{}/{} is defined twice (`{m}` and virtual_server[{k}]'s `{o}`)",
                                vs.address(),
                                vs.port(),
                                vs.protocol
                            ),
                        ));
                    }
                }
            }
            if !matches!(vs.scheduler, Scheduler::Mh | Scheduler::Sh)
                && self.global.dataplane != DataplaneKind::Ipvs
            {
                return Err(problem(
                    at("scheduler"),
                    format!(
                        "`{}` needs dataplane = \"ipvs\"; the XDP dataplane schedules with Maglev (`mh`, or `sh` by client address)",
                        vs.scheduler.as_str()
                    ),
                ));
            }
            // IPVS forwards every port of an address only for a persistent
            // service (the kernel refuses port 0 otherwise).
            if vs.members.iter().any(|m| m.ports == (0, 0))
                && vs.persistence_timeout == 0
                && self.global.dataplane == DataplaneKind::Ipvs
            {
                return Err(problem(
                    at(if vs.group.is_some() { "group" } else { "port" }),
                    "an any-port service (port 0) needs persistence_timeout with dataplane = \"ipvs\" (IPVS only forwards every port for persistent services)",
                ));
            }
            if !(vs.delay_loop > 0.0 && vs.delay_loop <= 86_400.0) {
                return Err(problem(
                    at("delay_loop"),
                    "must be between 0 and 86400 seconds",
                ));
            }
            if let Some(sorry) = vs.sorry_server
                && sorry.is_ipv4() != vs.address().is_ipv4()
            {
                return Err(problem(
                    at("sorry_server"),
                    "must be of the virtual address's family",
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
                if rs.address.is_ipv4() != vs.address().is_ipv4() {
                    return Err(problem(
                        at("address"),
                        format!(
                            "{} is not of the same address family as the virtual address {}",
                            rs.address,
                            vs.address()
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
                    && !vs.covers_port(port)
                {
                    return Err(problem(
                        at("port"),
                        if vs.group.is_some() {
                            format!(
                                "direct routing cannot change the port: {port} is not a port of the group's members"
                            )
                        } else {
                            format!(
                                "direct routing cannot change the port: the real server must listen on {} (the virtual server's port)",
                                vs.port()
                            )
                        },
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
                self.validate_checks(i, j, rs)?;
            }
        }
        if member_keys > MAX_MEMBER_KEYS as usize {
            return Err(problem(
                vec![Key("virtual_server_group")],
                format!(
                    "the groups need {member_keys} dataplane entries (an address takes one per aligned block of its port range, plus one); at most {MAX_MEMBER_KEYS}"
                ),
            ));
        }
        self.validate_vrrp()?;
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

impl Config {
    fn validate_checks(&self, i: usize, j: usize, rs: &RealServer) -> Result<(), Problem> {
        use Seg::{Index, Key};
        let at = |check: &'static str, k: &'static str| {
            vec![
                Key("virtual_server"),
                Index(i),
                Key("real_server"),
                Index(j),
                Key(check),
                Key(k),
            ]
        };
        let common: [(&'static str, Option<&CheckCommon>); 9] = [
            ("ping_check", rs.ping_check.as_ref().map(|c| &c.common)),
            ("smtp_check", rs.smtp_check.as_ref().map(|c| &c.common)),
            ("tcp_check", rs.tcp_check.as_ref().map(|c| &c.common)),
            ("http_get", rs.http_get.as_ref().map(|c| &c.common)),
            ("ssl_get", rs.ssl_get.as_ref().map(|c| &c.common)),
            ("dr_check", rs.dr_check.as_ref().map(|c| &c.common)),
            ("misc_check", rs.misc_check.as_ref().map(|c| &c.common)),
            ("udp_check", rs.udp_check.as_ref().map(|c| &c.common)),
            ("dns_check", rs.dns_check.as_ref().map(|c| &c.common)),
        ];
        for (name, c) in common {
            let Some(c) = c else { continue };
            for (k, v) in [
                ("connect_timeout", c.connect_timeout),
                ("delay_before_retry", c.delay_before_retry),
                ("delay_loop", c.delay_loop),
                ("warmup", c.warmup),
            ] {
                if let Some(v) = v
                    && !(0.0..=86_400.0).contains(&v)
                {
                    return Err(problem(at(name, k), "must be between 0 and 86400 seconds"));
                }
            }
            if c.connect_timeout == Some(0.0) || c.delay_loop == Some(0.0) {
                let k = if c.connect_timeout == Some(0.0) {
                    "connect_timeout"
                } else {
                    "delay_loop"
                };
                return Err(problem(at(name, k), "must be more than 0"));
            }
            if c.rise == Some(0) || c.fall == Some(0) {
                let k = if c.rise == Some(0) { "rise" } else { "fall" };
                return Err(problem(at(name, k), "must be at least 1"));
            }
            if let Some(ip) = c.connect_ip
                && ip.is_ipv4() != rs.address.is_ipv4()
            {
                return Err(problem(
                    at(name, "connect_ip"),
                    "must be of the real server's address family",
                ));
            }
            // A fwmark service has no port to probe: the check needs one.
            if self.virtual_server[i].fwmark.is_some()
                && !matches!(name, "ping_check" | "misc_check")
                && rs.port.is_none()
                && c.connect_port.is_none()
            {
                return Err(problem(
                    at(name, "connect_port"),
                    "is needed for a fwmark service (or the real server's `port`): it has no port of its own",
                ));
            }
        }
        for (check, h) in [("http_get", &rs.http_get), ("ssl_get", &rs.ssl_get)] {
            let Some(h) = h else { continue };
            if h.url.is_empty() {
                return Err(problem(at(check, "url"), "at least one url is needed"));
            }
            if check == "http_get" {
                for (k, set) in [
                    ("enable_sni", h.enable_sni.is_some()),
                    ("verify_certificate", h.verify_certificate.is_some()),
                    ("ca_file", h.ca_file.is_some()),
                ] {
                    if set {
                        return Err(problem(at(check, k), "only for ssl_get (TLS)"));
                    }
                }
            }
            if let Some(f) = &h.ca_file
                && let Err(e) = load_ca_file(f)
            {
                return Err(problem(at(check, "ca_file"), e));
            }
            for (k, u) in h.url.iter().enumerate() {
                let at = |f: &'static str| {
                    vec![
                        Key("virtual_server"),
                        Index(i),
                        Key("real_server"),
                        Index(j),
                        Key(check),
                        Key("url"),
                        Index(k),
                        Key(f),
                    ]
                };
                if !u.path.starts_with('/') {
                    return Err(problem(at("path"), "must start with /"));
                }
                if let Some(sc) = &u.status_code {
                    sc.ranges().map_err(|m| problem(at("status_code"), m))?;
                }
                if let Some(d) = &u.digest
                    && (d.len() != 32 || !d.chars().all(|c| c.is_ascii_hexdigit()))
                {
                    return Err(problem(at("digest"), "must be an MD5 sum: 32 hex digits"));
                }
                if let Some(r) = &u.regex
                    && let Err(e) = regex::Regex::new(r)
                {
                    return Err(problem(
                        at("regex"),
                        format!("not a valid regular expression: {e}"),
                    ));
                }
            }
        }
        if let Some(m) = &rs.misc_check {
            if shlex::split(&m.misc_path).is_none_or(|v| v.is_empty()) {
                return Err(problem(
                    at("misc_check", "misc_path"),
                    "must be a command line",
                ));
            }
            if let Some(t) = m.misc_timeout
                && !(t > 0.0 && t <= 86_400.0)
            {
                return Err(problem(
                    at("misc_check", "misc_timeout"),
                    "must be between 0 and 86400 seconds",
                ));
            }
        }
        if let Some(d) = &rs.dr_check {
            let vs = &self.virtual_server[i];
            if vs.fwmark.is_some() {
                return Err(problem(
                    at("dr_check", "connect_port"),
                    "dr_check probes the virtual address through the real server; a fwmark service has none",
                ));
            }
            if vs.protocol != Protocol::Tcp {
                return Err(problem(
                    at("dr_check", "connect_port"),
                    "dr_check probes TCP services only",
                ));
            }
            if vs.port() == 0 && d.common.connect_port.is_none() {
                return Err(problem(
                    at("dr_check", "connect_port"),
                    "is needed for a service on every port (port = 0)",
                ));
            }
            if d.common.connect_ip.is_some() {
                return Err(problem(
                    at("dr_check", "connect_ip"),
                    "dr_check always probes the virtual address through the real server",
                ));
            }
        }
        Ok(())
    }

    fn validate_vrrp(&self) -> Result<(), Problem> {
        use Seg::{Index, Key};
        // Command lines are split as a shell would: one that does not split
        // (an unclosed quote) would never run.
        for (i, inst) in self.vrrp_instance.iter().enumerate() {
            for (k, v) in [
                ("notify", &inst.notify),
                ("notify_master", &inst.notify_master),
                ("notify_backup", &inst.notify_backup),
                ("notify_fault", &inst.notify_fault),
                ("notify_stop", &inst.notify_stop),
            ] {
                command_line(vec![Key("vrrp_instance"), Index(i), Key(k)], v.as_deref())?;
            }
        }
        for (i, g) in self.vrrp_sync_group.iter().enumerate() {
            for (k, v) in [
                ("notify", &g.notify),
                ("notify_master", &g.notify_master),
                ("notify_backup", &g.notify_backup),
                ("notify_fault", &g.notify_fault),
            ] {
                command_line(vec![Key("vrrp_sync_group"), Index(i), Key(k)], v.as_deref())?;
            }
        }
        for (i, vs) in self.virtual_server.iter().enumerate() {
            for (k, v) in [
                ("quorum_up", &vs.quorum_up),
                ("quorum_down", &vs.quorum_down),
            ] {
                command_line(vec![Key("virtual_server"), Index(i), Key(k)], v.as_deref())?;
            }
        }
        for (i, b) in self.bfd_instance.iter().enumerate() {
            let at = |k: &'static str| vec![Key("bfd_instance"), Index(i), Key(k)];
            if b.name.is_empty() || self.bfd_instance[..i].iter().any(|o| o.name == b.name) {
                return Err(problem(
                    at("name"),
                    format!("name `{}` is empty or used twice", b.name),
                ));
            }
            if self.bfd_instance[..i]
                .iter()
                .any(|o| o.neighbor_ip == b.neighbor_ip)
            {
                return Err(problem(
                    at("neighbor_ip"),
                    format!("{} has another session already", b.neighbor_ip),
                ));
            }
            if b.source_ip
                .is_some_and(|s| s.is_ipv4() != b.neighbor_ip.is_ipv4())
            {
                return Err(problem(
                    at("source_ip"),
                    "not of the neighbour's address family",
                ));
            }
            for (k, v) in [
                ("min_rx", b.min_rx),
                ("min_tx", b.min_tx),
                ("idle_tx", b.idle_tx),
            ] {
                if !(1..=60_000).contains(&v) {
                    return Err(problem(at(k), "milliseconds between 1 and 60000"));
                }
            }
            if b.multiplier == 0 {
                return Err(problem(at("multiplier"), "must be between 1 and 255"));
            }
            if b.ttl == 0 {
                return Err(problem(at("ttl"), "must be between 1 and 255"));
            }
            if !(-254..=254).contains(&b.weight) {
                return Err(problem(at("weight"), "must be between -254 and 254"));
            }
            command_line(at("notify"), b.notify.as_deref())?;
        }
        for (i, f) in self.track_file.iter().enumerate() {
            let at = |k: &'static str| vec![Key("track_file"), Index(i), Key(k)];
            if f.name.is_empty() || self.track_file[..i].iter().any(|o| o.name == f.name) {
                return Err(problem(
                    at("name"),
                    format!("name `{}` is empty or used twice", f.name),
                ));
            }
            if !(-254..=254).contains(&f.weight) {
                return Err(problem(at("weight"), "must be between -254 and 254"));
            }
        }
        for (i, p) in self.track_process.iter().enumerate() {
            let at = |k: &'static str| vec![Key("track_process"), Index(i), Key(k)];
            if p.name.is_empty() || self.track_process[..i].iter().any(|o| o.name == p.name) {
                return Err(problem(
                    at("name"),
                    format!("name `{}` is empty or used twice", p.name),
                ));
            }
            if p.process.is_empty() {
                return Err(problem(at("process"), "must not be empty"));
            }
            if p.quorum == 0 || p.quorum_max.is_some_and(|m| m < p.quorum) {
                return Err(problem(
                    at(if p.quorum == 0 {
                        "quorum"
                    } else {
                        "quorum_max"
                    }),
                    "quorum must be at least 1, and quorum_max at least quorum",
                ));
            }
            if !(-254..=254).contains(&p.weight) {
                return Err(problem(at("weight"), "must be between -254 and 254"));
            }
            for (k, v) in [
                ("delay", p.delay),
                ("fork_delay", p.fork_delay),
                ("terminate_delay", p.terminate_delay),
            ] {
                if v.is_some_and(|v| !(0.0..=3600.0).contains(&v)) {
                    return Err(problem(at(k), "must be between 0 and 3600 seconds"));
                }
            }
        }
        let mut names = HashSet::new();
        let mut routers = HashSet::new();
        for (i, s) in self.vrrp_script.iter().enumerate() {
            let at = |k: &'static str| vec![Key("vrrp_script"), Index(i), Key(k)];
            if s.name.is_empty() || !names.insert(s.name.clone()) {
                return Err(problem(
                    at("name"),
                    format!("script name `{}` is empty or used twice", s.name),
                ));
            }
            if s.script.trim().is_empty() {
                return Err(problem(at("script"), "must not be empty"));
            }
            command_line(at("script"), Some(&s.script))?;
            if !(s.interval > 0.0 && s.interval <= 3600.0) {
                return Err(problem(
                    at("interval"),
                    "must be between 0 and 3600 seconds",
                ));
            }
            if s.timeout.is_some_and(|t| !(t > 0.0 && t <= 3600.0)) {
                return Err(problem(at("timeout"), "must be between 0 and 3600 seconds"));
            }
            if !(-254..=254).contains(&s.weight) {
                return Err(problem(at("weight"), "must be between -254 and 254"));
            }
            if s.rise == 0 || s.fall == 0 {
                return Err(problem(
                    at(if s.rise == 0 { "rise" } else { "fall" }),
                    "must be at least 1",
                ));
            }
        }
        let mut members = HashSet::new();
        let mut group_names = HashSet::new();
        for (i, g) in self.vrrp_sync_group.iter().enumerate() {
            if g.name.is_empty() || !group_names.insert(g.name.clone()) {
                return Err(problem(
                    vec![Key("vrrp_sync_group"), Index(i), Key("name")],
                    format!("group name `{}` is empty or used twice", g.name),
                ));
            }
            for (j, m) in g.group.iter().enumerate() {
                let at = vec![Key("vrrp_sync_group"), Index(i), Key("group"), Index(j)];
                if !self.vrrp_instance.iter().any(|v| &v.name == m) {
                    return Err(problem(at, format!("no [[vrrp_instance]] named `{m}`")));
                }
                if !members.insert(m.clone()) {
                    return Err(problem(at, format!("`{m}` is in two sync groups")));
                }
            }
        }
        let mut instances = HashSet::new();
        for (i, v) in self.vrrp_instance.iter().enumerate() {
            let at = |k: &'static str| vec![Key("vrrp_instance"), Index(i), Key(k)];
            if v.name.is_empty() || !instances.insert(v.name.clone()) {
                return Err(problem(
                    at("name"),
                    format!("instance name `{}` is empty or used twice", v.name),
                ));
            }
            if v.virtual_router_id == 0 {
                return Err(problem(
                    at("virtual_router_id"),
                    "must be between 1 and 255",
                ));
            }
            if v.priority == 0 {
                return Err(problem(at("priority"), "must be between 1 and 255"));
            }
            if let Some(name) = v.vmac_name() {
                if name.is_empty()
                    || name.len() > 15
                    || name.contains(['/', ' ', ':'])
                    || name == "."
                    || name == ".."
                {
                    return Err(problem(
                        at("use_vmac"),
                        format!(
                            "`{name}` is not an interface name (1-15 characters, no `/`, `:` or spaces)"
                        ),
                    ));
                }
                let clash = self.vrrp_instance[..i]
                    .iter()
                    .any(|o| o.vmac_name().as_deref() == Some(name.as_str()));
                if clash {
                    return Err(problem(
                        at("use_vmac"),
                        format!("interface `{name}` is another instance's virtual MAC interface"),
                    ));
                }
            }
            match v.version {
                2 => {
                    if v.advert_int.fract() != 0.0 || !(1.0..=255.0).contains(&v.advert_int) {
                        return Err(problem(
                            at("advert_int"),
                            "VRRP version 2 needs whole seconds between 1 and 255 (sub-second intervals need version = 3)",
                        ));
                    }
                }
                3 => {
                    let cs = v.advert_int * 100.0;
                    if !(1.0..=4095.0).contains(&cs) || (cs - cs.round()).abs() > 1e-6 {
                        return Err(problem(
                            at("advert_int"),
                            "VRRP version 3 needs 0.01 to 40.95 seconds, in steps of 0.01",
                        ));
                    }
                }
                _ => return Err(problem(at("version"), "must be 2 or 3")),
            }
            if !(v.preempt_delay >= 0.0 && v.preempt_delay <= 1000.0) {
                return Err(problem(
                    at("preempt_delay"),
                    "must be between 0 and 1000 seconds",
                ));
            }
            if v.virtual_ipaddress.is_empty() {
                return Err(problem(
                    at("virtual_ipaddress"),
                    "at least one address is needed",
                ));
            }
            let mut family = None;
            for (j, s) in v.virtual_ipaddress.iter().enumerate() {
                let at = vec![
                    Key("vrrp_instance"),
                    Index(i),
                    Key("virtual_ipaddress"),
                    Index(j),
                ];
                let a = parse_virtual_address(s).map_err(|m| problem(at.clone(), m))?;
                let v6 = a.address.is_ipv6();
                if *family.get_or_insert(v6) != v6 {
                    return Err(problem(
                        at,
                        format!(
                            "{} is of the wrong family: one instance holds IPv4 or IPv6 addresses, not both",
                            a.address
                        ),
                    ));
                }
                if v6 && v.version == 2 {
                    return Err(problem(
                        at,
                        "VRRP version 2 is IPv4 only; use version = 3 for IPv6",
                    ));
                }
            }
            let v6 = family.unwrap_or(false);
            for (j, peer) in v.unicast_peer.iter().enumerate() {
                if peer.is_ipv6() != v6 {
                    return Err(problem(
                        vec![
                            Key("vrrp_instance"),
                            Index(i),
                            Key("unicast_peer"),
                            Index(j),
                        ],
                        format!("{peer} is not of the instance's address family"),
                    ));
                }
            }
            if let Some(src) = v.unicast_src_ip
                && src.is_ipv6() != v6
            {
                return Err(problem(
                    at("unicast_src_ip"),
                    format!("{src} is not of the instance's address family"),
                ));
            }
            if let Some(auth) = &v.authentication {
                if v.version != 2 {
                    return Err(problem(
                        at("authentication"),
                        "authentication exists in VRRP version 2 only (RFC 5798 removed it)",
                    ));
                }
                if !auth.auth_type.eq_ignore_ascii_case("PASS") {
                    return Err(problem(
                        at("authentication"),
                        format!("auth_type `{}` is not supported; use PASS", auth.auth_type),
                    ));
                }
                if auth.auth_pass.is_empty() || auth.auth_pass.len() > 8 {
                    return Err(problem(
                        at("authentication"),
                        "auth_pass must be 1 to 8 characters",
                    ));
                }
            }
            if let Some(m) = &v.master_bfd
                && !self.bfd_instance.iter().any(|b| &b.name == m)
            {
                return Err(problem(
                    at("master_bfd"),
                    format!("no [[bfd_instance]] named `{m}`"),
                ));
            }
            let lists: [(&'static str, &Vec<Tracked>, &str, Vec<&str>); 4] = [
                (
                    "track_bfd",
                    &v.track_bfd,
                    "[[bfd_instance]]",
                    self.bfd_instance.iter().map(|s| s.name.as_str()).collect(),
                ),
                (
                    "track_script",
                    &v.track_script,
                    "[[vrrp_script]]",
                    self.vrrp_script.iter().map(|s| s.name.as_str()).collect(),
                ),
                (
                    "track_file",
                    &v.track_file,
                    "[[track_file]]",
                    self.track_file.iter().map(|s| s.name.as_str()).collect(),
                ),
                (
                    "track_process",
                    &v.track_process,
                    "[[track_process]]",
                    self.track_process.iter().map(|s| s.name.as_str()).collect(),
                ),
            ];
            for (key, list, table, names) in lists {
                for (j, t) in list.iter().enumerate() {
                    let at = vec![Key("vrrp_instance"), Index(i), Key(key), Index(j)];
                    if !names.contains(&t.name()) {
                        return Err(problem(at, format!("no {table} named `{}`", t.name())));
                    }
                    if t.weight().is_some_and(|w| !(-254..=254).contains(&w)) {
                        return Err(problem(at, "weight must be between -254 and 254"));
                    }
                }
            }
            for (j, t) in v.track_interface.iter().enumerate() {
                if t.weight().is_some_and(|w| !(-254..=254).contains(&w)) {
                    return Err(problem(
                        vec![
                            Key("vrrp_instance"),
                            Index(i),
                            Key("track_interface"),
                            Index(j),
                        ],
                        "weight must be between -254 and 254",
                    ));
                }
            }
            for (j, h) in v.heartbeat.iter().enumerate() {
                let at = |k: &'static str| {
                    vec![
                        Key("vrrp_instance"),
                        Index(i),
                        Key("heartbeat"),
                        Index(j),
                        Key(k),
                    ]
                };
                if h.interface.is_empty() || h.interface.len() > 15 {
                    return Err(problem(at("interface"), "not a valid interface name"));
                }
                if h.unicast_peer
                    .iter()
                    .chain(&h.unicast_src_ip)
                    .any(|a| a.is_ipv6() != v6)
                {
                    return Err(problem(
                        at("unicast_peer"),
                        "must be of the instance's address family",
                    ));
                }
            }
            for (j, r) in v.virtual_routes.iter().enumerate() {
                if let Err(e) = crate::vrrp::routes::parse_route(r, v6) {
                    return Err(problem(
                        vec![
                            Key("vrrp_instance"),
                            Index(i),
                            Key("virtual_routes"),
                            Index(j),
                        ],
                        format!("`{r}`: {e}"),
                    ));
                }
            }
            for (j, r) in v.virtual_rules.iter().enumerate() {
                if let Err(e) = crate::vrrp::routes::parse_rule(r, v6) {
                    return Err(problem(
                        vec![
                            Key("vrrp_instance"),
                            Index(i),
                            Key("virtual_rules"),
                            Index(j),
                        ],
                        format!("`{r}`: {e}"),
                    ));
                }
            }
            for (j, g) in v.track_gateway.iter().enumerate() {
                let at = |k: &'static str| {
                    vec![
                        Key("vrrp_instance"),
                        Index(i),
                        Key("track_gateway"),
                        Index(j),
                        Key(k),
                    ]
                };
                if !(g.interval >= 0.05 && g.interval <= 3600.0) {
                    return Err(problem(
                        at("interval"),
                        "must be between 0.05 and 3600 seconds",
                    ));
                }
                if g.fall == 0 || g.rise == 0 {
                    return Err(problem(
                        at(if g.fall == 0 { "fall" } else { "rise" }),
                        "must be at least 1",
                    ));
                }
            }
            for (j, t) in v.track_virtual_server.iter().enumerate() {
                let at = |k: &'static str| {
                    vec![
                        Key("vrrp_instance"),
                        Index(i),
                        Key("track_virtual_server"),
                        Index(j),
                        Key(k),
                    ]
                };
                if !self.virtual_server.iter().any(|vs| {
                    vs.address() == t.address && vs.port() == t.port && vs.protocol == t.protocol
                }) {
                    return Err(problem(
                        at("address"),
                        format!(
                            "no [[virtual_server]] {}",
                            crate::dataplane::key_name(&crate::dataplane::service_key(
                                t.address, t.port, t.protocol
                            ))
                        ),
                    ));
                }
                if !(-254..=254).contains(&t.weight) {
                    return Err(problem(at("weight"), "must be between -254 and 254"));
                }
            }
            let iface = v
                .interface
                .clone()
                .unwrap_or_else(|| self.global.interface.clone());
            if !routers.insert((iface.clone(), v.virtual_router_id, v6)) {
                return Err(problem(
                    at("virtual_router_id"),
                    format!(
                        "virtual router {} is used twice on {iface}",
                        v.virtual_router_id
                    ),
                ));
            }
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
        assert_eq!(v.version, 2, "keepalived's default version");
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
