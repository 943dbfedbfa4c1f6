//! `vrrp_instance`, `vrrp_sync_group`, the trackers and `bfd_instance`.

use super::*;

impl Translator {
    pub(super) fn vrrp_instance(&mut self, n: &Node) -> Option<Table> {
        let mut t = self.named(n, "vrrp_instance")?;
        let mut addresses = Vec::new();
        let mut vmac: Option<&Node> = None;
        for c in n.children.iter().flatten() {
            let simple: Option<(&str, Conv)> = match c.keyword.as_str() {
                "interface" => Some(("interface", |a| Some(string(a)))),
                "virtual_router_id" => Some(("virtual_router_id", int)),
                "priority" => Some(("priority", int)),
                "advert_int" => Some(("advert_int", num)),
                "version" => Some(("version", int)),
                "preempt_delay" => Some(("preempt_delay", num)),
                "unicast_src_ip" => Some(("unicast_src_ip", |a| Some(string(a)))),
                "notify_master" => Some(("notify_master", |a| Some(string(a)))),
                "notify_backup" => Some(("notify_backup", |a| Some(string(a)))),
                "notify_fault" => Some(("notify_fault", |a| Some(string(a)))),
                "notify_stop" => Some(("notify_stop", |a| Some(string(a)))),
                "notify" => Some(("notify", |a| Some(string(a)))),
                "garp_master_delay" => Some(("garp_master_delay", int)),
                "garp_master_repeat" => Some(("garp_master_repeat", int)),
                "garp_master_refresh" => Some(("garp_master_refresh", int)),
                _ => None,
            };
            if let Some((key, conv)) = simple {
                if let Some(v) = self.one(c, conv) {
                    t.insert(key.into(), v);
                }
                continue;
            }
            match c.keyword.as_str() {
                "state" => match c.args.first().map(|s| s.to_ascii_uppercase()).as_deref() {
                    Some("MASTER") => {
                        t.insert("state".into(), string("master"));
                    }
                    Some("BACKUP") => {
                        t.insert("state".into(), string("backup"));
                    }
                    _ => self.warn(c, "state must be MASTER or BACKUP"),
                },
                "nopreempt" => {
                    t.insert("nopreempt".into(), Value::Boolean(true));
                }
                "preempt" => {}
                "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                    if c.keyword == "virtual_ipaddress_excluded" {
                        self.warn(
                            c,
                            "excluded addresses are added to virtual_ipaddress (they are announced in adverts)",
                        );
                    }
                    for a in c.children.iter().flatten() {
                        let iface = t.get("interface").and_then(Value::as_str).map(String::from);
                        let v6 = |s: &str| s.contains(':');
                        let first = addresses.first().and_then(Value::as_str).map(v6);
                        if first.is_some_and(|f| f != v6(&a.keyword)) {
                            self.warn(
                                a,
                                "an instance holds one address family (keepalived ignores this address too): make a separate instance for it",
                            );
                            continue;
                        }
                        addresses.push(string(&a.keyword));
                        let mut rest = a.args.iter();
                        while let Some(opt) = rest.next() {
                            match (opt.as_str(), rest.next()) {
                                ("dev", Some(d)) if Some(d) == iface.as_ref() => {}
                                ("label", Some(_)) | ("brd", Some(_)) | ("scope", Some(_)) => {
                                    self.warn(a, format!("address option `{opt}` is ignored"));
                                }
                                _ => self.warn(
                                    a,
                                    format!("address option `{opt}`: addresses live on the instance's interface"),
                                ),
                            }
                        }
                    }
                }
                "unicast_peer" => {
                    let peers: Vec<Value> = c
                        .children
                        .iter()
                        .flatten()
                        .map(|p| {
                            if !p.args.is_empty() {
                                self.warn(p, "peer options are ignored");
                            }
                            string(&p.keyword)
                        })
                        .collect();
                    t.insert("unicast_peer".into(), Value::Array(peers));
                }
                "authentication" => {
                    let mut auth = Table::new();
                    for a in c.children.iter().flatten() {
                        match (a.keyword.as_str(), a.args.first()) {
                            ("auth_type", Some(v)) if v.eq_ignore_ascii_case("PASS") => {
                                auth.insert("auth_type".into(), string("PASS"));
                            }
                            ("auth_type", Some(_)) => self.refuse(
                                a,
                                "only PASS authentication exists (RFC 5798 removed AH); without it the keepalived peer would reject every advert and both would be master. Remove `authentication` from the keepalived peers (or switch them to PASS), then import",
                            ),
                            ("auth_pass", Some(v)) => {
                                auth.insert("auth_pass".into(), string(v));
                            }
                            _ => self.warn(a, "unknown authentication keyword"),
                        }
                    }
                    t.insert("authentication".into(), Value::Table(auth));
                }
                "track_interface" | "track_script" | "track_file" | "track_process"
                | "track_bfd" => {
                    let mut items = Vec::new();
                    for a in c.children.iter().flatten() {
                        items.push(self.tracked(a));
                    }
                    t.insert(c.keyword.clone(), Value::Array(items));
                }
                "virtual_routes" | "virtual_rules" => {
                    let v6 = addresses
                        .first()
                        .and_then(Value::as_str)
                        .is_some_and(|a| a.contains(':'));
                    let mut lines = Vec::new();
                    for a in c.children.iter().flatten() {
                        let line = std::iter::once(a.keyword.as_str())
                            .chain(a.args.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(" ");
                        let parsed = if c.keyword == "virtual_routes" {
                            crate::vrrp::routes::parse_route(&line, v6).map(|_| ())
                        } else {
                            crate::vrrp::routes::parse_rule(&line, v6).map(|_| ())
                        };
                        match parsed {
                            Ok(()) => lines.push(string(&line)),
                            Err(e) => self.warn(a, format!("skipped: {e}")),
                        }
                    }
                    t.insert(c.keyword.clone(), Value::Array(lines));
                }
                // Decided once the addresses are known (IPv4 only).
                "use_vmac" => vmac = Some(c),
                "vmac_xmit_base" => {
                    t.insert("vmac_xmit_base".into(), Value::Boolean(true));
                }
                "dont_track_primary" => {
                    t.insert("dont_track_primary".into(), Value::Boolean(true));
                }
                "smtp_alert" => self.warn(c, "director sends no mail"),
                "native_ipv6" => {}
                _ => self.warn(c, no_equivalent(&c.keyword)),
            }
        }
        if let Some(c) = vmac {
            let value = match c.args.first() {
                Some(name) => string(name),
                None => Value::Boolean(true),
            };
            t.insert("use_vmac".into(), value);
        }
        if !addresses.is_empty() {
            t.insert("virtual_ipaddress".into(), Value::Array(addresses));
        }
        for (k, v) in &self.instance_defaults {
            if !t.contains_key(k) {
                t.insert(k.clone(), v.clone());
            }
        }
        // v3 is the only version with sub-second intervals and IPv6.
        let ipv6 = t
            .get("virtual_ipaddress")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|v| v.as_str().is_some_and(|s| s.contains(':')))
            });
        if ipv6 && !t.contains_key("version") {
            t.insert("version".into(), Value::Integer(3));
        }
        Some(t)
    }

    /// One line of an instance's `track_*` block: `NAME` or `NAME weight W
    /// [reverse]`, as a name or a `{ name, weight }` table.
    pub(super) fn tracked(&mut self, a: &Node) -> Value {
        match a.args.as_slice() {
            [] => string(&a.keyword),
            [w, v, rest @ ..] if w == "weight" => {
                if !rest.is_empty() {
                    self.warn(
                        a,
                        "`reverse` is not supported: the weight applies as written",
                    );
                }
                match int(v) {
                    Some(weight) => {
                        let mut t = Table::new();
                        t.insert("name".into(), string(&a.keyword));
                        t.insert("weight".into(), weight);
                        Value::Table(t)
                    }
                    None => {
                        self.warn(
                            a,
                            format!("`{v}` is not a valid weight: the item's own applies"),
                        );
                        string(&a.keyword)
                    }
                }
            }
            _ => {
                self.warn(
                    a,
                    "expected `NAME` or `NAME weight W`: the item's own weight applies",
                );
                string(&a.keyword)
            }
        }
    }

    /// keepalived's `bfd_instance NAME { neighbor_ip ...; ... }`.
    pub(super) fn bfd_instance(&mut self, n: &Node) -> Option<Table> {
        let mut t = self.named(n, "bfd_instance")?;
        for c in n.children.iter().flatten() {
            let conv: Option<(&str, Conv)> = match c.keyword.as_str() {
                "neighbor_ip" => Some(("neighbor_ip", |a| Some(string(a)))),
                "source_ip" => Some(("source_ip", |a| Some(string(a)))),
                "min_rx" => Some(("min_rx", int)),
                "min_tx" => Some(("min_tx", int)),
                "idle_tx" => Some(("idle_tx", int)),
                "multiplier" => Some(("multiplier", int)),
                "ttl" | "max_hops" => Some(("ttl", int)),
                "weight" => Some(("weight", int)),
                _ => None,
            };
            match (c.keyword.as_str(), conv) {
                (_, Some((key, conv))) => {
                    if let Some(v) = self.one(c, conv) {
                        t.insert(key.into(), v);
                    }
                }
                ("passive", None) => {
                    t.insert("passive".into(), Value::Boolean(true));
                }
                _ => self.warn(c, "unknown bfd_instance keyword"),
            }
        }
        if !t.contains_key("neighbor_ip") {
            self.warn(n, "skipped: a bfd_instance needs neighbor_ip");
            return None;
        }
        Some(t)
    }

    /// A tracked item's `weight W [reverse]`.
    fn track_weight(&mut self, c: &Node, t: &mut Table) {
        if c.args.len() > 1 {
            self.warn(
                c,
                "`reverse` is not supported: the weight applies as written",
            );
        }
        if let Some(v) = c.args.first().and_then(|a| int(a)) {
            t.insert("weight".into(), v);
        } else {
            self.warn(c, "expected a weight");
        }
    }

    /// `vrrp_track_file NAME { file PATH; weight W; init_file [V] [overwrite] }`.
    pub(super) fn track_file(&mut self, n: &Node) -> Option<Table> {
        let mut t = self.named(n, "vrrp_track_file")?;
        for c in n.children.iter().flatten() {
            match c.keyword.as_str() {
                "file" => {
                    if let Some(v) = self.one(c, |a| Some(string(a))) {
                        t.insert("file".into(), v);
                    }
                }
                "weight" => self.track_weight(c, &mut t),
                "init_file" => {
                    let mut value = Value::Boolean(true);
                    for a in &c.args {
                        if a == "overwrite" {
                            t.insert("init_file_overwrite".into(), Value::Boolean(true));
                        } else if let Some(v) = int(a) {
                            value = v;
                        } else {
                            self.warn(c, format!("`{a}` is not a value"));
                        }
                    }
                    t.insert("init_file".into(), value);
                }
                _ => self.warn(c, "unknown vrrp_track_file keyword"),
            }
        }
        if !t.contains_key("file") {
            self.warn(n, "a vrrp_track_file without `file` was skipped");
            return None;
        }
        Some(t)
    }

    /// `vrrp_track_process NAME { process P; parameters ...; ... }`.
    pub(super) fn track_process(&mut self, n: &Node) -> Option<Table> {
        let mut t = self.named(n, "vrrp_track_process")?;
        for c in n.children.iter().flatten() {
            let (key, conv): (&str, Conv) = match c.keyword.as_str() {
                "process" => ("process", |a| Some(string(a))),
                "parameters" => {
                    t.insert("parameters".into(), string(&c.args.join(" ")));
                    continue;
                }
                "param_match" => ("param_match", |a| {
                    matches!(a, "exact" | "initial" | "partial").then(|| string(a))
                }),
                "full_command" => {
                    t.insert("full_command".into(), Value::Boolean(true));
                    continue;
                }
                "quorum" => ("quorum", int),
                "quorum_max" => ("quorum_max", int),
                "weight" => {
                    self.track_weight(c, &mut t);
                    continue;
                }
                "delay" => ("delay", num),
                "fork_delay" => ("fork_delay", num),
                "terminate_delay" => ("terminate_delay", num),
                _ => {
                    self.warn(c, "unknown vrrp_track_process keyword");
                    continue;
                }
            };
            // `process` may carry its parameters on the same line.
            if key == "process" && c.args.len() > 1 {
                t.insert("process".into(), string(&c.args[0]));
                t.insert("parameters".into(), string(&c.args[1..].join(" ")));
                continue;
            }
            if let Some(v) = self.one(c, conv) {
                t.insert(key.into(), v);
            }
        }
        if !t.contains_key("process") {
            self.warn(n, "a vrrp_track_process without `process` was skipped");
            return None;
        }
        Some(t)
    }

    pub(super) fn sync_group(&mut self, n: &Node) -> Option<Table> {
        let mut t = self.named(n, "vrrp_sync_group")?;
        for c in n.children.iter().flatten() {
            match c.keyword.as_str() {
                "group" => {
                    let members = c
                        .children
                        .iter()
                        .flatten()
                        .flat_map(|m| {
                            std::iter::once(&m.keyword)
                                .chain(&m.args)
                                .map(|s| string(s))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    t.insert("group".into(), Value::Array(members));
                }
                k @ ("notify_master" | "notify_backup" | "notify_fault" | "notify") => {
                    if let Some(v) = self.one(c, |a| Some(string(a))) {
                        t.insert(k.into(), v);
                    }
                }
                _ => self.warn(c, no_equivalent(&c.keyword)),
            }
        }
        Some(t)
    }
}
