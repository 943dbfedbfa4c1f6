//! The health checks of a real server (keepalived's checkers) and their
//! validation.

use super::*;

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

/// `tcp_check`: the server accepts a TCP connection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    #[serde(flatten)]
    pub common: CheckCommon,
    /// Probe half-open (default true): a SYN, the server's SYN-ACK, and a
    /// RST instead of the handshake's last ACK (no connection reaches the
    /// server's application, no socket or TIME_WAIT here); `false`: a full
    /// connect and close, as keepalived does. Same verdict either way.
    pub half_open: Option<bool>,
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
    /// Keep the connection (and TLS session) for the next round while the
    /// server keeps it open (HTTP/1.1 keep-alive; default false: a new
    /// connection per round, as keepalived).
    pub reuse_connection: Option<bool>,
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

pub(super) fn yes() -> bool {
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

pub(super) fn default_delay_loop() -> f64 {
    6.0
}
pub(super) fn default_dns_name() -> String {
    ".".into()
}

/// `dns_check.type`: the record types keepalived's DNS_CHECK asks for
/// (case-insensitive in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
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

impl Config {
    pub(super) fn validate_checks(
        &self,
        i: usize,
        j: usize,
        rs: &RealServer,
    ) -> Result<(), Problem> {
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
}
