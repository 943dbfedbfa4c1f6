//! `[global]`: the director's own settings, BGP and flow sync.

use super::*;

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
    /// Entries of the XDP flow table (1,024 to 16,777,216; rounded up to
    /// whole buckets of 4). Restart-only: a daemon started with another
    /// size re-creates the table and carries the flows it held into it.
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// The SYN-flood guard: at most this many new flows per second per CPU
    /// are recorded in the flow table (0: no limit). Past it new flows are
    /// still forwarded, by the Maglev table, but not recorded, so a flood
    /// cannot push established flows out of the table. A reload applies
    /// it.
    #[serde(default = "default_new_flow_limit")]
    pub new_flow_limit: u32,
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
    /// Whom every script runs as (keepalived's `script_user`): `"USER"` or
    /// `"USER GROUP"`; unset, scripts run as the daemon (root). See
    /// [`super::scripts`].
    pub script_user: Option<String>,
    /// Refuse a script that would run as root when another user could
    /// change it (keepalived's `enable_script_security`).
    #[serde(default)]
    pub enable_script_security: bool,
}

impl Global {
    /// Where the XDP dataplane is pinned: `pin_dir`, or the default under
    /// the host's bpffs for this state directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| default_pin_dir(&self.state_dir))
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

pub(super) fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}
pub(super) fn default_withdraw_wait() -> f64 {
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
    /// Seconds a starting director holds back VRRP preemption (and its
    /// first BGP announcements) at most, waiting for every peer's
    /// exceptions (0: never waits). Also spelt `preempt_sync_timeout`.
    #[serde(default = "default_preempt_hold", alias = "preempt_sync_timeout")]
    pub preempt_hold: f64,
}

pub(super) fn default_sync_interval() -> f64 {
    0.5
}
pub(super) fn default_preempt_hold() -> f64 {
    3.0
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

/// This host's name (the default router_id and SMTP HELO name).
pub fn host_name() -> String {
    default_router_id()
}

pub(super) fn default_router_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "director".to_string())
}

pub(super) fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// The flow table's default size: a million flows.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1_000_000;

/// The SYN-flood guard's default: 20,000 new flows recorded per second
/// per CPU.
pub const DEFAULT_NEW_FLOW_LIMIT: u32 = 20_000;

pub(super) fn default_new_flow_limit() -> u32 {
    DEFAULT_NEW_FLOW_LIMIT
}

pub(super) fn default_flow_table_size() -> u32 {
    DEFAULT_FLOW_TABLE_SIZE
}

/// Where each daemon's pin directory lives by default: one directory per
/// state directory under the host's bpffs.
pub const DEFAULT_PIN_PARENT: &str = "/sys/fs/bpf/director";

/// The pin directory for a daemon whose state directory is `state_dir`,
/// unless configured: `/sys/fs/bpf/director/<name>` where the name is the
/// state directory's path with `/` as `-` (`run-director` for the default
/// `/run/director`); see [`pin_name`].
pub fn default_pin_dir(state_dir: &Path) -> PathBuf {
    Path::new(DEFAULT_PIN_PARENT).join(pin_name(state_dir))
}

/// A directory name for a state directory: its path with `/` written `-`
/// (leading and trailing `/` and repeats dropped). When that could be read
/// two ways (the path has a `-` or a byte other than ASCII letters, digits,
/// `_` and `.`, which become `_`), `@` and a hash of the whole path follow,
/// so different state directories never share a name. Only characters that
/// need no quoting in TOML basic strings or shells.
pub fn pin_name(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_os_str().as_bytes();
    let mut out = String::new();
    let mut plain = true;
    let mut last_slash = true;
    for &b in bytes {
        match b {
            b'/' => {
                if !last_slash {
                    out.push('-');
                }
                last_slash = true;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' => out.push(b as char),
            _ => {
                out.push(if b == b'-' { '-' } else { '_' });
                plain = false;
            }
        }
        last_slash = false;
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("root");
        plain = false;
    }
    if !plain {
        // FNV-1a, 64 bits.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        out.push_str(&format!("@{hash:016x}"));
    }
    out
}

impl Config {
    /// The checks of `[global]` serde cannot express.
    pub(super) fn validate_global(&self) -> Result<(), Problem> {
        use Seg::Key;
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
            // A socket of one family never hears the other's peers (only
            // `[::]` takes both).
            let listen = fs.listen.ip();
            let dual = listen.is_ipv6() && listen.is_unspecified();
            if let Some(p) = fs
                .peers
                .iter()
                .find(|p| !dual && p.is_ipv4() != listen.is_ipv4())
            {
                return Err(problem(
                    at("peers"),
                    format!(
                        "peer {p} is IPv{} but listen {} is IPv{}: listen on \"[::]:{}\" to sync with both families",
                        if p.is_ipv4() { 4 } else { 6 },
                        fs.listen,
                        if listen.is_ipv4() { 4 } else { 6 },
                        fs.listen.port()
                    ),
                ));
            }
            if !(fs.interval >= 0.05 && fs.interval <= 60.0) {
                return Err(problem(
                    at("interval"),
                    "must be between 0.05 and 60 seconds",
                ));
            }
            if !(fs.preempt_hold >= 0.0 && fs.preempt_hold <= 60.0) {
                return Err(problem(
                    at("preempt_hold"),
                    "must be between 0 and 60 seconds",
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
        Ok(())
    }
}
