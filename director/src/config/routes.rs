//! `virtual_routes` and `virtual_rules` as written in the file (keepalived's
//! `ip route` / `ip rule` syntax), parsed once, at load; VRRP turns them
//! into netlink messages (`crate::vrrp::routes`).

use std::net::IpAddr;

/// A prefix: address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

fn parse_prefix(s: &str) -> Result<Prefix, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let address: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}` is not an address or prefix"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{s}`: the prefix length must be 0-{max}"))?,
        None => max,
    };
    Ok(Prefix { address, len })
}

fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    }
}

/// A routing table: a number, a builtin name or a name from
/// /etc/iproute2/rt_tables.
fn parse_table(s: &str) -> Result<u32, String> {
    match s {
        "main" => return Ok(254),
        "local" => return Ok(255),
        "default" => return Ok(253),
        _ => {}
    }
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    for file in ["/etc/iproute2/rt_tables", "/usr/share/iproute2/rt_tables"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some(n), Some(name)) = (words.next(), words.next())
                && name == s
                && let Ok(n) = n.parse()
            {
                return Ok(n);
            }
        }
    }
    Err(format!(
        "unknown table `{s}` (a number, main, local, default, or a name in /etc/iproute2/rt_tables)"
    ))
}

fn number<T: std::str::FromStr>(word: &str, value: Option<&str>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("`{word}` needs a value"))?;
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|n| n.to_string().parse().ok()),
        None => v.parse().ok(),
    };
    parsed.ok_or_else(|| format!("`{word} {v}`: not a valid number"))
}

/// The kind of a route (`ip route`'s TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
}

/// One `virtual_routes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualRoute {
    pub kind: RouteKind,
    pub to: Prefix,
    /// Preferred source (`src`).
    pub src: Option<IpAddr>,
    pub via: Option<IpAddr>,
    /// `dev`; a unicast route with neither `via` nor `dev` goes out of the
    /// instance's interface.
    pub dev: Option<String>,
    pub table: Option<u32>,
    pub metric: Option<u32>,
    pub scope: Option<u8>,
    pub protocol: Option<u8>,
    pub onlink: bool,
    /// The line as written (for logs).
    pub text: String,
}

/// Parses a route in `ip route` syntax:
/// `[TYPE] [to] PREFIX|default [via|gw ADDR] [dev IF] [src ADDR]
/// [table N] [metric|priority|preference N] [scope S] [proto P] [onlink]`
/// (TYPE: unicast, blackhole, unreachable, prohibit, throw). `default`
/// takes the family of `via`/`src`, else of the instance (`v6`).
pub fn parse_route(text: &str, v6: bool) -> Result<VirtualRoute, String> {
    let mut words = text.split_whitespace().peekable();
    let mut kind = RouteKind::Unicast;
    let mut to = None;
    let mut default = false;
    let mut r = VirtualRoute {
        kind,
        to: Prefix {
            address: unspecified(v6),
            len: 0,
        },
        src: None,
        via: None,
        dev: None,
        table: None,
        metric: None,
        scope: None,
        protocol: None,
        onlink: false,
        text: text.to_string(),
    };
    if let Some(first) = words.peek() {
        let k = match *first {
            "unicast" => Some(RouteKind::Unicast),
            "blackhole" => Some(RouteKind::Blackhole),
            "unreachable" => Some(RouteKind::Unreachable),
            "prohibit" => Some(RouteKind::Prohibit),
            "throw" => Some(RouteKind::Throw),
            _ => None,
        };
        if let Some(k) = k {
            kind = k;
            words.next();
        }
    }
    let addr = |word: &str, v: Option<&str>| -> Result<IpAddr, String> {
        let v = v.ok_or_else(|| format!("`{word}` needs an address"))?;
        v.parse()
            .map_err(|_| format!("`{word} {v}`: not an address"))
    };
    while let Some(w) = words.next() {
        match w {
            "to" => {
                let v = words.next().ok_or("`to` needs a prefix")?;
                if v == "default" {
                    default = true;
                } else {
                    to = Some(parse_prefix(v)?);
                }
            }
            "via" | "gw" => r.via = Some(addr(w, words.next())?),
            "src" => r.src = Some(addr(w, words.next())?),
            "dev" | "oif" => {
                r.dev = Some(words.next().ok_or("`dev` needs an interface")?.to_string())
            }
            "table" => r.table = Some(parse_table(words.next().ok_or("`table` needs a table")?)?),
            "metric" | "priority" | "preference" => r.metric = Some(number(w, words.next())?),
            "scope" => {
                r.scope = Some(match words.next() {
                    Some("global" | "universe") => 0,
                    Some("site") => 200,
                    Some("link") => 253,
                    Some("host") => 254,
                    v => number(w, v)?,
                })
            }
            "proto" | "protocol" => {
                r.protocol = Some(match words.next() {
                    Some("kernel") => 2,
                    Some("boot") => 3,
                    Some("static") => 4,
                    v => number(w, v)?,
                })
            }
            "onlink" => r.onlink = true,
            "default" if to.is_none() && !default => default = true,
            other if to.is_none() && !default => to = Some(parse_prefix(other)?),
            other => return Err(format!("`{other}` is not understood in a route")),
        }
    }
    r.kind = kind;
    let family_v6 = r.via.or(r.src).map(|a| a.is_ipv6()).unwrap_or(v6);
    r.to = match (to, default) {
        (Some(p), _) => p,
        (None, true) => Prefix {
            address: unspecified(family_v6),
            len: 0,
        },
        (None, false) => return Err("a route needs a destination (PREFIX or default)".into()),
    };
    for a in [r.via, r.src].into_iter().flatten() {
        if a.is_ipv6() != r.to.address.is_ipv6() {
            return Err(format!("`{a}` is not of the destination's address family"));
        }
    }
    if kind != RouteKind::Unicast && r.via.is_some() {
        return Err("only a unicast route has a gateway (`via`)".into());
    }
    Ok(r)
}

/// One `virtual_rules` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualRule {
    pub v6: bool,
    pub from: Option<Prefix>,
    pub to: Option<Prefix>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub fwmark: Option<(u32, Option<u32>)>,
    pub tos: Option<u8>,
    pub priority: Option<u32>,
    pub action: RuleKind,
    pub invert: bool,
    /// The line as written (for logs).
    pub text: String,
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Table(u32),
    Goto(u32),
    Blackhole,
    Unreachable,
    Prohibit,
}

/// Parses a rule in `ip rule` syntax:
/// `[not] [from PREFIX|all] [to PREFIX|all] [iif IF] [oif IF]
/// [fwmark N[/MASK]] [tos N] [priority|pref|preference|order N]
/// (table|lookup T | goto N | blackhole | unreachable | prohibit)`.
/// The family is the addresses', else the instance's (`v6`).
pub fn parse_rule(text: &str, v6: bool) -> Result<VirtualRule, String> {
    let mut words = text.split_whitespace();
    let mut r = VirtualRule {
        v6,
        from: None,
        to: None,
        iif: None,
        oif: None,
        fwmark: None,
        tos: None,
        priority: None,
        action: RuleKind::Table(254),
        invert: false,
        text: text.to_string(),
    };
    let mut action = None;
    let prefix = |v: Option<&str>, w: &str| -> Result<Option<Prefix>, String> {
        match v {
            None => Err(format!("`{w}` needs a prefix or `all`")),
            Some("all") => Ok(None),
            Some(p) => parse_prefix(p).map(Some),
        }
    };
    while let Some(w) = words.next() {
        match w {
            "not" => r.invert = true,
            "from" => r.from = prefix(words.next(), w)?,
            "to" => r.to = prefix(words.next(), w)?,
            "iif" | "dev" => r.iif = Some(words.next().ok_or("`iif` needs an interface")?.into()),
            "oif" => r.oif = Some(words.next().ok_or("`oif` needs an interface")?.into()),
            "fwmark" => {
                let v = words.next().ok_or("`fwmark` needs a value")?;
                let (m, mask) = match v.split_once('/') {
                    Some((m, k)) => (m, Some(number(w, Some(k))?)),
                    None => (v, None),
                };
                r.fwmark = Some((number(w, Some(m))?, mask));
            }
            "tos" | "dsfield" => r.tos = Some(number(w, words.next())?),
            "priority" | "pref" | "preference" | "order" => {
                r.priority = Some(number(w, words.next())?)
            }
            "table" | "lookup" => {
                action = Some(RuleKind::Table(parse_table(
                    words.next().ok_or("`table` needs a table")?,
                )?))
            }
            "goto" => action = Some(RuleKind::Goto(number(w, words.next())?)),
            "blackhole" => action = Some(RuleKind::Blackhole),
            "unreachable" => action = Some(RuleKind::Unreachable),
            "prohibit" => action = Some(RuleKind::Prohibit),
            other => return Err(format!("`{other}` is not understood in a rule")),
        }
    }
    r.action = action.ok_or("a rule needs an action (`table N`, `goto N`, `blackhole`...)")?;
    let families: Vec<bool> = [r.from, r.to]
        .into_iter()
        .flatten()
        .map(|p| p.address.is_ipv6())
        .collect();
    if let Some(f) = families.first() {
        if families.iter().any(|g| g != f) {
            return Err("`from` and `to` are of different address families".into());
        }
        r.v6 = *f;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_as_ip_route_does() {
        let r = parse_route(
            "src 10.0.0.100 to 192.168.109.0/24 via 10.0.0.254 dev eth1 table 100 metric 5",
            false,
        )
        .expect("route");
        assert_eq!(r.to.to_string(), "192.168.109.0/24");
        assert_eq!(r.via, Some("10.0.0.254".parse().expect("ip")));
        assert_eq!(r.src, Some("10.0.0.100".parse().expect("ip")));
        assert_eq!(
            (r.dev.as_deref(), r.table, r.metric),
            (Some("eth1"), Some(100), Some(5))
        );
        let d = parse_route("default via fe80::1 dev eth0", false).expect("default");
        assert_eq!(d.to.to_string(), "::/0");
        let d = parse_route("default dev eth0", true).expect("default6");
        assert_eq!(d.to.to_string(), "::/0");
        let b = parse_route("blackhole 192.168.114.0/24", false).expect("blackhole");
        assert_eq!(b.kind, RouteKind::Blackhole);
        assert_eq!(
            parse_route("10.1.0.0/16 dev eth2", false)
                .expect("r")
                .to
                .len,
            16
        );
        for bad in [
            "",
            "via 10.0.0.1",
            "10.0.0.0/33",
            "10.0.0.0/8 via fe80::1",
            "10.0.0.0/8 bogus 1",
            "10.0.0.0/8 table nosuchtable",
            "blackhole 10.0.0.0/8 via 10.0.0.1",
            "10.0.0.0/8 10.1.0.0/16",
        ] {
            assert!(parse_route(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_parse_as_ip_rule_does() {
        let r = parse_rule("from 10.0.0.100/32 table 100 priority 1000", false).expect("rule");
        assert_eq!(
            r.from.map(|p| p.to_string()).as_deref(),
            Some("10.0.0.100/32")
        );
        assert_eq!((r.action, r.priority), (RuleKind::Table(100), Some(1000)));
        let r = parse_rule("from all fwmark 0x10/0xff lookup main", true).expect("rule");
        assert!(r.v6 && r.from.is_none());
        assert_eq!(r.fwmark, Some((16, Some(255))));
        assert_eq!(r.action, RuleKind::Table(254));
        let r = parse_rule("not to 2001:db8::/32 blackhole", false).expect("rule");
        assert!(r.v6 && r.invert);
        for bad in [
            "from 10.0.0.1",
            "from 10.0.0.1 to 2001:db8::1 table 1",
            "from 10.0.0.1 frobnicate table 1",
            "fwmark x table 1",
        ] {
            assert!(parse_rule(bad, false).is_err(), "{bad}");
        }
    }
}
