//! `virtual_server`, `virtual_server_group`, `real_server` and the
//! checkers.

use super::*;

impl Translator {
    /// `virtual_server_group NAME { ADDR[-LAST] [PORT[-LAST]] ... }`.
    pub(super) fn vs_group(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a virtual_server_group needs a name");
            return None;
        };
        let mut members = Vec::new();
        for c in n.children.iter().flatten() {
            if c.keyword == "fwmark" {
                self.warn(
                    c,
                    "a fwmark member matches what firewall rules mark, which keepalived.conf does not say: list its addresses and ports",
                );
                continue;
            }
            let line = std::iter::once(c.keyword.as_str())
                .chain(c.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            match crate::config::GroupMember::parse(&line) {
                Ok(m) => members.push(string(&m.to_string())),
                Err(e) => self.warn(c, format!("skipped: {e}")),
            }
        }
        if members.is_empty() {
            self.warn(n, "a virtual_server_group without members was skipped");
            return None;
        }
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        t.insert("members".into(), Value::Array(members));
        Some(t)
    }

    pub(super) fn virtual_server(&mut self, n: &Node) -> Option<Table> {
        let mut t = Table::new();
        // The virtual port ("" for a group: its members have theirs).
        let port = match n.args.as_slice() {
            [kind, mark] if kind == "fwmark" => {
                let Some(m) = int(mark).filter(|m| m.as_integer().is_some_and(|m| m > 0)) else {
                    self.warn(n, "the mark is not a positive number");
                    return None;
                };
                // Kept as an IPVS fwmark service: the firewall's marking
                // rules stay as they are.
                t.insert("fwmark".into(), m);
                self.needs_ipvs = true;
                self.notes.push(format!(
                    "{}: note: `{}` kept as an IPVS fwmark service, so `dataplane = \"ipvs\"` was written (the XDP dataplane does not see firewall marks: to use it, list the addresses and ports the rules mark in a virtual_server_group)",
                    n.origin,
                    n.text()
                ));
                String::new()
            }
            [kind, name] if kind == "group" => {
                t.insert("group".into(), string(name));
                String::new()
            }
            [a, p] => {
                t.insert("address".into(), string(a));
                let Some(port_v) = int(p) else {
                    self.warn(n, "the port is not a number");
                    return None;
                };
                t.insert("port".into(), port_v);
                p.clone()
            }
            _ => {
                self.warn(
                    n,
                    "expected `virtual_server ADDRESS PORT` or `virtual_server group NAME`",
                );
                return None;
            }
        };
        let mut real_servers = Vec::new();
        let mut check_defaults = Table::new();
        let mut virtualhost = None;
        let children = n.children.as_deref().unwrap_or_default();
        for c in children {
            match c.keyword.as_str() {
                "delay_loop" => {
                    if let Some(v) = self.one(c, num) {
                        t.insert("delay_loop".into(), v);
                    }
                }
                "lb_algo" | "lvs_sched" => {
                    let algo = c.args.first().map(|s| s.to_ascii_lowercase());
                    match algo.as_deref() {
                        Some("mh") => {
                            t.insert("scheduler".into(), string("mh"));
                        }
                        Some("sh") => {
                            t.insert("scheduler".into(), string("sh"));
                        }
                        Some(algo @ ("rr" | "wrr" | "lc" | "wlc")) => {
                            // Kept: the kernel's IPVS runs it.
                            t.insert("scheduler".into(), string(algo));
                            self.needs_ipvs = true;
                            self.notes.push(format!(
                                "{}: note: `{}` kept: it needs the kernel's IPVS, so `dataplane = \"ipvs\"` was written (the XDP dataplane schedules with Maglev: `mh`, or `sh`)",
                                c.origin,
                                c.text()
                            ));
                        }
                        Some(other) => {
                            t.insert("scheduler".into(), string("mh"));
                            self.warn(
                                c,
                                format!(
                                    "`{other}` has no XDP equivalent: Maglev hashing (`mh`) was written, which spreads new flows by weight and keeps them on one server"
                                ),
                            );
                        }
                        None => self.warn(c, "missing scheduler"),
                    }
                }
                "lb_kind" | "lvs_method" => match c.args.first().map(|s| s.to_ascii_uppercase()) {
                    Some(k) if k == "DR" => {
                        t.insert("lb_kind".into(), string("dr"));
                    }
                    Some(k) if k == "TUN" => {
                        t.insert("lb_kind".into(), string("tun"));
                        self.needs_ipvs = true;
                        self.notes.push(format!(
                            "{}: note: `{}` kept as `lb_kind = \"tun\"` (IP-in-IP), which the IPVS dataplane serves, so `dataplane = \"ipvs\"` was written",
                            c.origin,
                            c.text()
                        ));
                    }
                    _ => {
                        t.insert("lb_kind".into(), string("dr"));
                        self.warn(
                            c,
                            "only direct routing (DR) and tunnelling (TUN) exist: `dr` was written; real servers must hold the VIP on lo",
                        );
                    }
                },
                "ip_family" => match c.args.first().map(String::as_str) {
                    Some(f @ ("inet" | "inet6")) if t.contains_key("fwmark") => {
                        t.insert("ip_family".into(), string(f));
                    }
                    Some("inet") => {}
                    _ => self.warn(c, "ip_family is `inet` or `inet6`, for a fwmark service"),
                },
                "protocol" => match c.args.first().map(|s| s.to_ascii_uppercase()).as_deref() {
                    Some("TCP") => {
                        t.insert("protocol".into(), string("tcp"));
                    }
                    Some("UDP") => {
                        t.insert("protocol".into(), string("udp"));
                    }
                    _ => self.warn(c, "only TCP and UDP are supported"),
                },
                k @ ("persistence_timeout" | "quorum" | "hysteresis") => {
                    if let Some(v) = self.one(c, int) {
                        t.insert(k.into(), v);
                    }
                }
                k @ ("quorum_up" | "quorum_down") => {
                    if let Some(v) = self.one(c, |a| Some(string(a))) {
                        t.insert(k.into(), v);
                    }
                }
                "alpha" => {
                    t.insert("alpha".into(), Value::Boolean(true));
                }
                "sorry_server" => match c.args.as_slice() {
                    [a, p] => {
                        t.insert("sorry_server".into(), string(a));
                        if *p != port {
                            self.warn(
                                c,
                                "direct routing keeps the port: the sorry server is used on the virtual port",
                            );
                        }
                    }
                    [a] => {
                        t.insert("sorry_server".into(), string(a));
                    }
                    _ => self.warn(c, "expected `sorry_server ADDRESS PORT`"),
                },
                "virtualhost" => virtualhost = c.args.first().cloned(),
                k @ ("connect_timeout" | "retry" | "delay_before_retry" | "warmup") => {
                    if let Some(v) = self.one(c, num) {
                        check_defaults.insert(k.into(), v);
                    }
                }
                "real_server" => {}
                "persistence_granularity" | "persistence_engine" => {
                    self.warn(c, "persistence is per client address")
                }
                "omega"
                | "ha_suspend"
                | "ops"
                | "one_packet_scheduler"
                | "sorry_server_inhibit"
                | "sorry_server_lvs_method" => self.warn(c, "no director equivalent"),
                _ => self.warn(c, no_equivalent(&c.keyword)),
            }
        }
        for c in children.iter().filter(|c| c.keyword == "real_server") {
            if let Some(rs) = self.real_server(c, &port, &check_defaults, virtualhost.as_deref()) {
                real_servers.push(Value::Table(rs));
            }
        }
        if !real_servers.is_empty() {
            t.insert("real_server".into(), Value::Array(real_servers));
        }
        Some(t)
    }

    pub(super) fn real_server(
        &mut self,
        n: &Node,
        vs_port: &str,
        defaults: &Table,
        virtualhost: Option<&str>,
    ) -> Option<Table> {
        let [address, port] = n.args.as_slice() else {
            self.warn(n, "expected `real_server ADDRESS PORT`");
            return None;
        };
        let mut t = Table::new();
        t.insert("address".into(), string(address));
        // Direct routing cannot change the port: checks keep probing the
        // real port.
        let mut defaults = defaults.clone();
        if vs_port.is_empty() {
            // A group's real server: checks probe its port.
            if let Some(p) = int(port).filter(|p| p.as_integer() != Some(0)) {
                defaults.insert("connect_port".into(), p);
            }
        } else if port != vs_port {
            self.warn(
                n,
                format!("direct routing keeps the virtual port {vs_port}: the real server gets traffic on it; checks still probe port {port}"),
            );
            if let Some(p) = int(port) {
                defaults.insert("connect_port".into(), p);
            }
        }
        for c in n.children.iter().flatten() {
            let checker = match c.keyword.as_str() {
                "weight" => {
                    if let Some(v) = self.one(c, int) {
                        t.insert("weight".into(), v);
                    }
                    continue;
                }
                "inhibit_on_failure" => {
                    t.insert("inhibit_on_failure".into(), Value::Boolean(true));
                    continue;
                }
                "TCP_CHECK" => "tcp_check",
                "HTTP_GET" => "http_get",
                "SSL_GET" => "ssl_get",
                "MISC_CHECK" => "misc_check",
                "DNS_CHECK" => "dns_check",
                "UDP_CHECK" => "udp_check",
                "PING_CHECK" => "ping_check",
                "SMTP_CHECK" => "smtp_check",
                "notify_up" | "notify_down" => {
                    self.warn(c, "per-server notify is not supported: the logs and metrics record health changes");
                    continue;
                }
                _ => {
                    self.warn(c, "no director equivalent");
                    continue;
                }
            };
            if t.contains_key(checker) {
                self.warn(c, "a second checker of the same kind is not supported");
                continue;
            }
            let mut check = defaults.clone();
            if (checker == "http_get" || checker == "ssl_get")
                && let Some(v) = virtualhost
            {
                check.insert("virtualhost".into(), string(v));
            }
            let mut urls = Vec::new();
            for k in c.children.iter().flatten() {
                self.check_key(checker, k, &mut check, &mut urls);
            }
            if !urls.is_empty() {
                check.insert("url".into(), Value::Array(urls));
            }
            if (checker == "http_get" || checker == "ssl_get") && !check.contains_key("url") {
                self.warn(c, "an HTTP check needs at least one url: skipped");
                continue;
            }
            if checker == "misc_check" && !check.contains_key("misc_path") {
                self.warn(c, "a MISC_CHECK needs misc_path: skipped");
                continue;
            }
            t.insert(checker.into(), Value::Table(check));
        }
        Some(t)
    }

    pub(super) fn check_key(
        &mut self,
        checker: &str,
        k: &Node,
        check: &mut Table,
        urls: &mut Vec<Value>,
    ) {
        let http = checker == "http_get" || checker == "ssl_get";
        let key = match k.keyword.as_str() {
            "connect_timeout" | "delay_before_retry" | "delay_loop" | "warmup" => {
                k.keyword.as_str()
            }
            "retry" | "nb_get_retry" => "retry",
            "connect_port" => "connect_port",
            "connect_ip" | "bindto" => k.keyword.as_str(),
            "url" if http => {
                let mut u = Table::new();
                let mut codes = Vec::new();
                for f in k.children.iter().flatten() {
                    match (f.keyword.as_str(), f.args.first()) {
                        ("path", Some(p)) => {
                            u.insert("path".into(), string(p));
                        }
                        ("digest", Some(d)) => {
                            u.insert("digest".into(), string(d));
                        }
                        ("regex", Some(r)) => {
                            u.insert("regex".into(), string(r));
                        }
                        ("status_code", Some(_)) => {
                            for a in &f.args {
                                codes.push(int(a).unwrap_or_else(|| string(a)));
                            }
                        }
                        _ => self.warn(f, "no director equivalent"),
                    }
                }
                match codes.len() {
                    0 => {}
                    1 => {
                        u.insert("status_code".into(), codes.remove(0));
                    }
                    _ => {
                        u.insert("status_code".into(), Value::Array(codes));
                    }
                }
                if u.contains_key("path") {
                    urls.push(Value::Table(u));
                } else {
                    self.warn(k, "a url without a path was skipped");
                }
                return;
            }
            "virtualhost" if http => "virtualhost",
            "enable_sni" if checker == "ssl_get" => {
                check.insert("enable_sni".into(), Value::Boolean(true));
                return;
            }
            "misc_path" if checker == "misc_check" => {
                check.insert("misc_path".into(), string(&k.args.join(" ")));
                return;
            }
            "misc_timeout" if checker == "misc_check" => "misc_timeout",
            "misc_dynamic" if checker == "misc_check" => {
                check.insert("misc_dynamic".into(), Value::Boolean(true));
                return;
            }
            "type" if checker == "dns_check" => "type",
            "name" if checker == "dns_check" => "name",
            "payload" if checker == "udp_check" => "payload",
            "helo_name" if checker == "smtp_check" => "helo_name",
            "require_reply" if checker == "udp_check" => {
                check.insert("require_reply".into(), Value::Boolean(true));
                if !k.args.is_empty() {
                    self.warn(
                        k,
                        "the expected reply content is not checked, only that one came",
                    );
                }
                return;
            }
            "user" if checker == "misc_check" => {
                self.warn(k, "scripts run as the daemon's user");
                return;
            }
            _ => {
                self.warn(k, format!("no {checker} equivalent"));
                return;
            }
        };
        let conv: Conv = match key {
            "connect_ip" | "bindto" | "virtualhost" | "type" | "name" | "payload" | "helo_name" => {
                |a| Some(string(a))
            }
            "connect_port" | "retry" => int,
            _ => num,
        };
        if let Some(v) = self.one(k, conv) {
            check.insert(key.into(), v);
        }
    }
}
