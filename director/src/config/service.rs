//! `[[virtual_server]]`, its groups and real servers.

use super::*;

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
    pub(super) fn overlaps(&self, other: &GroupMember) -> bool {
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
    /// Fail open (percent of the pool's weight, off when unset): when more
    /// than this share of the real servers' weight fails its checks at
    /// once, every real server keeps receiving new flows (the checker, or
    /// its path, is what more likely failed) until enough pass again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_open: Option<u8>,
    /// Seconds over which a real server that comes back (its checks pass
    /// again, `enable`, or a reload adds it) ramps from a tenth of its
    /// weight to all of it, in ten steps (0: at once). A real server's own
    /// `slow_start` overrides it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slow_start: u32,
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

/// `inet` or `inet6` (a `fwmark` service's family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Inet,
    Inet6,
}

impl VirtualServer {
    /// `rs`'s slow start (its own, or the service's), 0 when off.
    pub fn slow_start_of(&self, rs: &RealServer) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(rs.slow_start.unwrap_or(self.slow_start)))
    }

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

    /// Which service this is: its identity address, port and protocol.
    pub fn id(&self) -> ServiceAddr {
        ServiceAddr {
            address: self.address(),
            port: self.port(),
            protocol: self.protocol,
        }
    }

    /// What the service is, for state kept across reloads (quorum): its
    /// [`ServiceAddr`] and, for an IPVS fwmark service, its mark (fwmark
    /// services of one family share the unspecified address).
    pub fn identity(&self) -> ServiceIdentity {
        ServiceIdentity {
            addr: self.id(),
            fwmark: self.fwmark,
        }
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
    /// This server's slow start, seconds (overrides the virtual server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<u32>,
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
            slow_start: None,
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

fn is_zero(v: &u32) -> bool {
    *v == 0
}

pub(super) fn default_weight() -> u32 {
    1
}

pub(super) fn default_udp_timeout() -> u32 {
    DEFAULT_UDP_TIMEOUT
}

/// A service's identity across reloads: unique within a valid config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceIdentity {
    pub addr: ServiceAddr,
    pub fwmark: Option<u32>,
}

/// Which service: the one identity of a virtual service in logs, status,
/// quorum, the XDP program's key and the IPVS key. Shown as
/// `10.0.0.100:80/tcp` or `[fd00::100]:80/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAddr {
    pub address: IpAddr,
    /// 0: every port of the address.
    pub port: u16,
    pub protocol: Protocol,
}

impl ServiceAddr {
    /// The XDP program's service-map key.
    pub fn key(&self) -> director_common::ServiceKey {
        let proto = self.protocol.number();
        match self.address {
            IpAddr::V4(a) => director_common::ServiceKey::v4(a.octets(), self.port, proto),
            IpAddr::V6(a) => director_common::ServiceKey::v6(a.octets(), self.port, proto),
        }
    }

    /// The service a map key stands for (`None`: a protocol we never put
    /// there).
    pub fn from_key(key: &director_common::ServiceKey) -> Option<ServiceAddr> {
        let protocol = match key.protocol {
            director_common::IPPROTO_TCP => Protocol::Tcp,
            director_common::IPPROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        let address = if key.flags & director_common::KEY_V6 != 0 {
            IpAddr::from(key.addr)
        } else {
            IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
        };
        Some(ServiceAddr {
            address,
            port: key.port(),
            protocol,
        })
    }
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_one_identity_everywhere() {
        for (address, port, protocol, shown) in [
            ("10.0.0.100", 80, Protocol::Tcp, "10.0.0.100:80/tcp"),
            ("fd00::100", 53, Protocol::Udp, "[fd00::100]:53/udp"),
            ("10.0.0.101", 0, Protocol::Udp, "10.0.0.101:0/udp"),
        ] {
            let s = ServiceAddr {
                address: address.parse().expect("address"),
                port,
                protocol,
            };
            assert_eq!(s.to_string(), shown);
            assert_eq!(ServiceAddr::from_key(&s.key()), Some(s));
        }
    }
}
