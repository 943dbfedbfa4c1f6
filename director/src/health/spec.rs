//! What a health check is, compiled from the config once per load or
//! reload: the probe specs ([`CheckSpec`]), the typed key that runs one
//! probe for every real server sharing it ([`ProbeKey`]), what a probe
//! checks whatever its timing ([`ProbeIdentity`]), and each real server's
//! probes by what the server is ([`Probes`]).

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use regex::Regex;

use crate::config::{
    CheckCommon, Config, DnsType, HttpCheck, RealServer, ServiceIdentity, VirtualServer,
};

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `tcp_check`: half-open (SYN, SYN-ACK, our kernel's RST) or a full
    /// connect.
    Tcp {
        half_open: bool,
    },
    Http {
        urls: Vec<UrlSpec>,
        host: Option<String>,
        /// `ssl_get`.
        tls: Option<TlsSpec>,
        /// `reuse_connection`: keep the connection between rounds.
        reuse: bool,
    },
    Misc {
        argv: Vec<String>,
        dynamic: bool,
    },
    Udp {
        payload: Vec<u8>,
        require_reply: bool,
    },
    Dns {
        qtype: DnsType,
        name: String,
    },
    /// `ping_check`: ICMP echo.
    Ping,
    /// `smtp_check`: banner 220, HELO answered 250.
    Smtp {
        helo: String,
    },
    /// `dr_check`: a SYN to `vip`:port (the target's port) in a frame to
    /// the real server's MAC.
    DrPath {
        vip: IpAddr,
        arp: bool,
        /// Through the tunnel (`lb_kind = "tun"`).
        tunnel: bool,
    },
}

/// TLS settings of an `ssl_get`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsSpec {
    /// Server name sent (SNI) and verified.
    pub sni: Option<String>,
    pub verify: bool,
    pub ca_file: Option<PathBuf>,
}

/// One URL of an HTTP check.
#[derive(Debug, Clone)]
pub struct UrlSpec {
    pub path: String,
    pub ranges: Vec<(u16, u16)>,
    pub digest: Option<String>,
    pub regex: Option<Regex>,
}

impl UrlSpec {
    /// What tells two URLs apart: the regex by its pattern (a compiled
    /// `Regex` has no equality of its own).
    #[allow(clippy::type_complexity)]
    fn parts(&self) -> (&str, &[(u16, u16)], Option<&str>, Option<&str>) {
        (
            &self.path,
            &self.ranges,
            self.digest.as_deref(),
            self.regex.as_ref().map(Regex::as_str),
        )
    }
}

impl PartialEq for UrlSpec {
    fn eq(&self, other: &UrlSpec) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for UrlSpec {}

impl Hash for UrlSpec {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

/// A probe and its timing.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub kind: Kind,
    pub target: SocketAddr,
    pub bindto: Option<IpAddr>,
    pub timeout: Duration,
    pub retry: u32,
    pub delay_before_retry: Duration,
    pub delay_loop: Duration,
    pub rise: u32,
    pub fall: u32,
    pub warmup: Duration,
    /// Start down (keepalived `alpha`).
    pub alpha: bool,
}

impl CheckSpec {
    /// What this probe checks, whatever its timing.
    pub fn identity(&self) -> ProbeIdentity {
        let kind = match &self.kind {
            Kind::Tcp { .. } => ProbeKind::Tcp,
            Kind::Http { tls: None, .. } => ProbeKind::Http,
            Kind::Http { tls: Some(_), .. } => ProbeKind::Https,
            Kind::Misc { .. } => ProbeKind::Misc,
            Kind::Udp { .. } => ProbeKind::Udp,
            Kind::Dns { .. } => ProbeKind::Dns,
            Kind::DrPath { .. } => ProbeKind::DrPath,
            Kind::Ping => ProbeKind::Ping,
            Kind::Smtp { .. } => ProbeKind::Smtp,
        };
        ProbeIdentity {
            kind,
            target: self.target,
            bindto: self.bindto,
        }
    }

    /// What makes two specs one probe: what it checks and how, with its
    /// timing; `warmup` and `alpha` shape only its start.
    #[allow(clippy::type_complexity)]
    fn probe_parts(
        &self,
    ) -> (
        &Kind,
        SocketAddr,
        Option<IpAddr>,
        Duration,
        u32,
        Duration,
        Duration,
        u32,
        u32,
    ) {
        (
            &self.kind,
            self.target,
            self.bindto,
            self.timeout,
            self.retry,
            self.delay_before_retry,
            self.delay_loop,
            self.rise,
            self.fall,
        )
    }
}

/// The checker a probe is, by keepalived's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Tcp,
    Http,
    Https,
    Misc,
    Udp,
    Dns,
    DrPath,
    Ping,
    Smtp,
}

impl ProbeKind {
    /// The config's name of the checker (`tcp_check`, `http_get`...).
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp_check",
            ProbeKind::Http => "http_get",
            ProbeKind::Https => "ssl_get",
            ProbeKind::DrPath => "dr_check",
            ProbeKind::Misc => "misc_check",
            ProbeKind::Udp => "udp_check",
            ProbeKind::Dns => "dns_check",
            ProbeKind::Ping => "ping_check",
            ProbeKind::Smtp => "smtp_check",
        }
    }
}

/// What a probe checks, whatever its timing: its checker, target and
/// source. A reload that changes only a check's timing (delay_loop,
/// timeouts, retries, rise/fall) starts the new probe from the verdict of
/// the one it replaces, found by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeIdentity {
    pub kind: ProbeKind,
    pub target: SocketAddr,
    pub bindto: Option<IpAddr>,
}

/// One probe as the checker runs it, and the key of its verdict on the
/// board: the spec, compared by what it checks and how
/// ([`CheckSpec::probe_parts`]). Real servers of several services whose
/// specs are equal share one probe. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProbeKey {
    spec: Arc<CheckSpec>,
    /// The hash of its parts, computed once: every round looks its probe
    /// up on the board.
    hash: u64,
}

impl ProbeKey {
    pub fn new(spec: CheckSpec) -> ProbeKey {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        spec.probe_parts().hash(&mut h);
        ProbeKey {
            spec: Arc::new(spec),
            hash: h.finish(),
        }
    }

    pub fn spec(&self) -> &CheckSpec {
        &self.spec
    }
}

impl PartialEq for ProbeKey {
    fn eq(&self, other: &ProbeKey) -> bool {
        Arc::ptr_eq(&self.spec, &other.spec)
            || (self.hash == other.hash && self.spec.probe_parts() == other.spec.probe_parts())
    }
}

impl Eq for ProbeKey {}

impl Hash for ProbeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Builds the probes of one real server of a service (regexes compiled
/// here, once per load or reload).
fn specs_for(vs: &VirtualServer, rs: &RealServer) -> Vec<CheckSpec> {
    let mut out = Vec::new();
    let base = |c: &CheckCommon, default_port: u16| CheckSpec {
        kind: Kind::Tcp { half_open: false },
        target: SocketAddr::new(
            c.connect_ip.unwrap_or(rs.address),
            c.connect_port.unwrap_or(default_port),
        ),
        bindto: c.bindto,
        timeout: secs(c.connect_timeout.unwrap_or(5.0)),
        retry: c.retry.unwrap_or(1),
        delay_before_retry: secs(c.delay_before_retry.unwrap_or(1.0)),
        delay_loop: secs(c.delay_loop.unwrap_or(vs.delay_loop)),
        rise: c.rise.unwrap_or(1).max(1),
        fall: c.fall.unwrap_or(1).max(1),
        warmup: secs(c.warmup.unwrap_or(c.delay_loop.unwrap_or(vs.delay_loop))),
        alpha: vs.alpha,
    };
    let port = rs.port.unwrap_or(vs.port());
    if let Some(c) = &rs.tcp_check {
        out.push(CheckSpec {
            kind: Kind::Tcp {
                half_open: c.half_open.unwrap_or(true),
            },
            ..base(&c.common, port)
        });
    }
    let http = |c: &HttpCheck, tls: bool| {
        let urls = c
            .url
            .iter()
            .map(|u| UrlSpec {
                path: u.path.clone(),
                ranges: u
                    .status_code
                    .as_ref()
                    .and_then(|s| s.ranges().ok())
                    .unwrap_or_else(|| vec![(200, 299)]),
                digest: u.digest.as_ref().map(|d| d.to_ascii_lowercase()),
                regex: u.regex.as_deref().and_then(|r| Regex::new(r).ok()),
            })
            .collect();
        let tls = tls.then(|| TlsSpec {
            sni: c
                .virtualhost
                .clone()
                .filter(|_| c.enable_sni.unwrap_or(true)),
            verify: c.verify_certificate.unwrap_or(false) || c.ca_file.is_some(),
            ca_file: c.ca_file.clone(),
        });
        CheckSpec {
            kind: Kind::Http {
                urls,
                host: c.virtualhost.clone(),
                tls,
                reuse: c.reuse_connection.unwrap_or(false),
            },
            ..base(&c.common, port)
        }
    };
    if let Some(c) = &rs.http_get {
        out.push(http(c, false));
    }
    if let Some(c) = &rs.ssl_get {
        out.push(http(c, true));
    }
    if let Some(c) = &rs.dr_check {
        out.push(CheckSpec {
            kind: Kind::DrPath {
                vip: vs.address(),
                arp: c.arp,
                tunnel: vs.lb_kind == crate::config::LbKind::Tun,
            },
            ..base(&c.common, port)
        });
    }
    if let Some(c) = &rs.misc_check {
        let mut spec = base(&c.common, port);
        if let Some(t) = c.misc_timeout {
            spec.timeout = secs(t);
        }
        spec.kind = Kind::Misc {
            argv: shlex::split(&c.misc_path).unwrap_or_default(),
            dynamic: c.misc_dynamic,
        };
        out.push(spec);
    }
    if let Some(c) = &rs.udp_check {
        out.push(CheckSpec {
            kind: Kind::Udp {
                payload: c.payload.as_bytes().to_vec(),
                require_reply: c.require_reply,
            },
            ..base(&c.common, port)
        });
    }
    if let Some(c) = &rs.ping_check {
        out.push(CheckSpec {
            kind: Kind::Ping,
            ..base(&c.common, 0)
        });
    }
    if let Some(c) = &rs.smtp_check {
        let helo = c.helo_name.clone().unwrap_or_else(crate::config::host_name);
        out.push(CheckSpec {
            kind: Kind::Smtp { helo },
            ..base(&c.common, 25)
        });
    }
    if let Some(c) = &rs.dns_check {
        out.push(CheckSpec {
            kind: Kind::Dns {
                qtype: c.r#type,
                name: c.name.clone(),
            },
            ..base(&c.common, 53)
        });
    }
    out
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

/// A config's probes, compiled once per load or reload: each real server's
/// probes by its service's identity and its address (what the real server
/// is, not where the config lists it), equal specs sharing one key.
#[derive(Debug, Default, Clone)]
pub struct Probes {
    servers: HashMap<(ServiceIdentity, IpAddr), Vec<ProbeKey>>,
}

impl Probes {
    pub fn of(config: &Config) -> Probes {
        let mut distinct: HashSet<ProbeKey> = HashSet::new();
        let mut servers = HashMap::new();
        for vs in &config.virtual_server {
            let service = vs.identity();
            for rs in &vs.real_server {
                let keys = specs_for(vs, rs)
                    .into_iter()
                    .map(|spec| {
                        let key = ProbeKey::new(spec);
                        // One allocation per distinct probe.
                        match distinct.get(&key) {
                            Some(shared) => shared.clone(),
                            None => {
                                distinct.insert(key.clone());
                                key
                            }
                        }
                    })
                    .collect();
                servers.insert((service, rs.address), keys);
            }
        }
        Probes { servers }
    }

    /// The probes of real server `address` of the service `service`
    /// (none when the config has no such server).
    pub fn of_server(&self, service: ServiceIdentity, address: IpAddr) -> &[ProbeKey] {
        self.servers
            .get(&(service, address))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Every distinct probe.
    pub fn distinct(&self) -> HashSet<ProbeKey> {
        self.servers.values().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).expect("valid")
    }

    const HEAD: &str = "[global]\ninterface = \"eth0\"\n";

    fn service(vip: &str, port: u16, check: &str) -> String {
        format!(
            "[[virtual_server]]\naddress = \"{vip}\"\nport = {port}\n[[virtual_server.real_server]]\naddress = \"10.0.0.11\"\n{check}\n[[virtual_server.real_server]]\naddress = \"10.0.0.12\"\n{check}\n"
        )
    }

    const HTTP: &str = "[virtual_server.real_server.http_get]\nconnect_port = 8080\nurl = [{ path = \"/health\", regex = \"ok|up\" }]";

    /// Two services listing the same servers with the same check share one
    /// probe per server, compiled once (the same allocation).
    #[test]
    fn equal_checks_of_two_services_are_one_probe_compiled_once() {
        let c = config(&format!(
            "{HEAD}{}{}",
            service("10.0.0.100", 80, HTTP),
            service("10.0.0.101", 80, HTTP)
        ));
        let probes = Probes::of(&c);
        assert_eq!(probes.distinct().len(), 2, "one probe per real server");
        let a11: IpAddr = "10.0.0.11".parse().expect("ip");
        let first = probes.of_server(c.virtual_server[0].identity(), a11);
        let second = probes.of_server(c.virtual_server[1].identity(), a11);
        assert_eq!(first.len(), 1);
        assert!(
            Arc::ptr_eq(&first[0].spec, &second[0].spec),
            "compiled once"
        );
    }

    /// A server's probes are found by what the service and the server are,
    /// not by where the config lists them.
    #[test]
    fn probes_follow_the_service_wherever_it_moves_in_the_list() {
        let tcp = "[virtual_server.real_server.tcp_check]";
        let a = config(&format!(
            "{HEAD}{}{}",
            service("10.0.0.100", 80, tcp),
            service("10.0.0.101", 443, HTTP)
        ));
        let b = config(&format!(
            "{HEAD}{}{}",
            service("10.0.0.101", 443, HTTP),
            service("10.0.0.100", 80, tcp)
        ));
        let (pa, pb) = (Probes::of(&a), Probes::of(&b));
        let a12: IpAddr = "10.0.0.12".parse().expect("ip");
        for vs in &a.virtual_server {
            assert_eq!(
                pa.of_server(vs.identity(), a12),
                pb.of_server(vs.identity(), a12),
                "{}",
                vs.id()
            );
        }
        let http = pa.of_server(a.virtual_server[1].identity(), a12);
        assert_eq!(http[0].spec().identity().kind, ProbeKind::Http);
        assert!(
            pa.of_server(
                a.virtual_server[0].identity(),
                "10.0.0.99".parse().expect("ip")
            )
            .is_empty()
        );
    }

    /// The key tells apart what changes a probe (a regex, a timeout) and
    /// not what shapes only its start (warmup, alpha); the identity ignores
    /// timing, so a verdict survives a timing-only reload.
    #[test]
    fn the_key_and_the_identity_compare_what_they_should() {
        let c = config(&format!("{HEAD}{}", service("10.0.0.100", 80, HTTP)));
        let spec = Probes::of(&c)
            .distinct()
            .into_iter()
            .next()
            .expect("a probe");
        let base = spec.spec().clone();
        let same = |f: &dyn Fn(&mut CheckSpec)| {
            let mut s = base.clone();
            f(&mut s);
            (
                ProbeKey::new(s.clone()) == spec,
                s.identity() == base.identity(),
            )
        };
        assert_eq!(same(&|s| s.warmup = Duration::from_secs(99)), (true, true));
        assert_eq!(same(&|s| s.alpha = !s.alpha), (true, true));
        assert_eq!(same(&|s| s.timeout = Duration::from_secs(9)), (false, true));
        assert_eq!(same(&|s| s.rise += 1), (false, true));
        assert_eq!(
            same(&|s| if let Kind::Http { urls, .. } = &mut s.kind {
                urls[0].regex = Some(Regex::new("ok|down").expect("regex"));
            }),
            (false, true)
        );
        assert_eq!(
            same(&|s| s.target.set_port(8081)),
            (false, false),
            "another target is another check"
        );
        let mut keys = HashSet::new();
        keys.insert(spec.clone());
        let mut warm = base.clone();
        warm.warmup = Duration::from_secs(1);
        assert!(keys.contains(&ProbeKey::new(warm)), "hash agrees with eq");
    }
}
