//! The translator: walks the parsed statements, dispatches each block
//! to its part, and records what did not come across.

use super::*;

#[derive(Default)]
pub(super) struct Translator {
    pub(super) doc: Table,
    pub(super) warnings: Vec<Warning>,
    pub(super) notes: Vec<String>,
    /// A scheduler only IPVS has was asked for: `dataplane = "ipvs"`.
    pub(super) needs_ipvs: bool,
    /// global_defs values that become per-instance defaults.
    pub(super) instance_defaults: Vec<(String, Value)>,
    /// The first directive that stops the import.
    pub(super) refused: Option<Warning>,
}

/// Why a keepalived directive has no translation, with what to use.
pub(super) fn no_equivalent(keyword: &str) -> &'static str {
    match keyword {
        "lvs_sync_daemon" | "lvs_sync_daemon_interface" | "lvs_sync_daemon_inet" => {
            "IPVS connection sync: director shares its flows between directors with `global.flow_sync` (set it on both)"
        }
        "lvs_flush" | "lvs_flush_onstop" => {
            "director owns only the services it creates; `director flush` removes them"
        }
        _ => "no director equivalent",
    }
}

/// Converts one keepalived argument to a TOML value.
pub(super) type Conv = fn(&str) -> Option<Value>;

pub(super) fn int(v: &str) -> Option<Value> {
    v.parse::<i64>().ok().map(Value::Integer)
}

pub(super) fn num(v: &str) -> Option<Value> {
    match v.parse::<i64>() {
        Ok(i) => Some(Value::Integer(i)),
        Err(_) => v.parse::<f64>().ok().map(Value::Float),
    }
}

pub(super) fn string(v: &str) -> Value {
    Value::String(v.to_string())
}

impl Translator {
    /// Stops the import at `n` (the first such directive is reported).
    pub(super) fn refuse(&mut self, n: &Node, reason: impl Into<String>) {
        if self.refused.is_none() {
            self.refused = Some(Warning {
                origin: n.origin.clone(),
                directive: n.text(),
                reason: reason.into(),
            });
        }
    }

    /// A table holding the name of block `n` (`what NAME { ... }`), or a
    /// warning when it has none.
    pub(super) fn named(&mut self, n: &Node, what: &str) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, format!("a {what} needs a name"));
            return None;
        };
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        Some(t)
    }

    pub(super) fn warn(&mut self, n: &Node, reason: impl Into<String>) {
        self.warnings.push(Warning {
            origin: n.origin.clone(),
            directive: n.text(),
            reason: reason.into(),
        });
    }

    /// The single argument of `n` through `conv`, or a warning.
    pub(super) fn one(&mut self, n: &Node, conv: Conv) -> Option<Value> {
        match n.args.as_slice() {
            [a] => {
                let v = conv(a);
                if v.is_none() {
                    self.warn(n, format!("`{a}` is not a valid value"));
                }
                v
            }
            _ => {
                self.warn(n, "expected exactly one value");
                None
            }
        }
    }

    pub(super) fn run(&mut self, nodes: &[Node]) {
        let mut global = Table::new();
        // Pass 1: global_defs (defaults other blocks use).
        for n in nodes.iter().filter(|n| n.keyword == "global_defs") {
            for c in n.children.iter().flatten() {
                self.global_def(c, &mut global);
            }
        }
        let mut scripts = Vec::new();
        let mut files = Vec::new();
        let mut processes = Vec::new();
        let mut bfds = Vec::new();
        let mut instances = Vec::new();
        let mut groups = Vec::new();
        let mut services = Vec::new();
        let mut vs_groups = Vec::new();
        for n in nodes {
            match n.keyword.as_str() {
                "global_defs" => {}
                "vrrp_script" => scripts.extend(self.vrrp_script(n)),
                "vrrp_track_file" => files.extend(self.track_file(n)),
                "vrrp_track_process" => processes.extend(self.track_process(n)),
                "bfd_instance" => bfds.extend(self.bfd_instance(n)),
                "vrrp_instance" => instances.extend(self.vrrp_instance(n).map(|t| (n, t))),
                "vrrp_sync_group" => groups.extend(self.sync_group(n).map(|t| (n, t))),
                "virtual_server" => services.extend(self.virtual_server(n).map(|t| (n, t))),
                "virtual_server_group" => vs_groups.extend(self.vs_group(n)),
                "static_ipaddress" | "static_routes" | "static_rules" => self.warn(
                    n,
                    "static addresses and routes belong to the system's network configuration",
                ),
                _ => self.warn(n, "unknown top-level block"),
            }
        }
        // A virtual server whose group did not come across goes too.
        let group_names: Vec<&str> = vs_groups
            .iter()
            .filter_map(|g: &Table| g.get("name").and_then(Value::as_str))
            .collect();
        let mut kept = Vec::new();
        for (n, t) in services {
            match t.get("group").and_then(Value::as_str) {
                Some(g) if !group_names.contains(&g) => self.warn(
                    n,
                    format!("skipped: its virtual_server_group `{g}` is not defined or did not come across"),
                ),
                _ => kept.push(t),
            }
        }
        let services = kept;
        // References to what did not come across (skipped, or left out by a
        // conditional line) go, each named.
        let names = |list: &[Table]| -> Vec<String> {
            list.iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(String::from))
                .collect()
        };
        let defined = [
            ("track_script", names(&scripts)),
            ("track_file", names(&files)),
            ("track_process", names(&processes)),
            ("track_bfd", names(&bfds)),
        ];
        for (n, t) in &mut instances {
            for (key, known) in &defined {
                let Some(Value::Array(items)) = t.get_mut(*key) else {
                    continue;
                };
                let mut gone = Vec::new();
                items.retain(|v| {
                    let name = match v {
                        Value::String(s) => s.as_str(),
                        Value::Table(t) => t.get("name").and_then(Value::as_str).unwrap_or(""),
                        _ => "",
                    };
                    let keep = known.iter().any(|k| k == name);
                    if !keep {
                        gone.push(name.to_string());
                    }
                    keep
                });
                for name in gone {
                    let line = n
                        .children
                        .iter()
                        .flatten()
                        .filter(|c| c.keyword == *key)
                        .flat_map(|c| c.children.iter().flatten())
                        .find(|c| c.keyword == name)
                        .unwrap_or(n)
                        .clone();
                    self.warn(
                        &line,
                        format!("skipped: `{name}` is not defined or did not come across"),
                    );
                }
            }
        }
        let instance_names: Vec<String> = instances
            .iter()
            .filter_map(|(_, t)| t.get("name").and_then(Value::as_str).map(String::from))
            .collect();
        let mut kept_groups = Vec::new();
        for (n, mut t) in groups {
            if let Some(Value::Array(members)) = t.get_mut("group") {
                let before: Vec<String> = members
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                members.retain(|v| {
                    v.as_str()
                        .is_some_and(|m| instance_names.iter().any(|i| i == m))
                });
                for m in before.iter().filter(|m| !instance_names.contains(m)) {
                    self.warn(
                        n,
                        format!("member `{m}` skipped: that vrrp_instance is not defined or did not come across"),
                    );
                }
                if members.is_empty() {
                    self.warn(n, "skipped: none of its members came across");
                    continue;
                }
            } else {
                self.warn(n, "skipped: a vrrp_sync_group needs a `group` block");
                continue;
            }
            kept_groups.push(t);
        }
        let groups = kept_groups;
        let instances: Vec<Table> = instances.into_iter().map(|(_, t)| t).collect();
        // The interface the dataplane attaches to: the first instance's.
        let interface = instances
            .iter()
            .find_map(|i: &Table| i.get("interface").cloned());
        match interface {
            Some(i) => {
                global.insert("interface".into(), i);
            }
            None => {
                global.insert("interface".into(), string("eth0"));
                self.warnings.push(Warning {
                    origin: Origin {
                        file: PathBuf::from("(import)"),
                        line: 0,
                    },
                    directive: "global.interface".into(),
                    reason: "keepalived has no such setting and no vrrp_instance names one: `eth0` was written, set the interface that receives the virtual IPs' traffic".into(),
                });
            }
        }
        if self.needs_ipvs {
            global.insert("dataplane".into(), string("ipvs"));
        }
        // Keep router_id first for readability.
        let mut g = Table::new();
        if let Some(r) = global.remove("router_id") {
            g.insert("router_id".into(), r);
        }
        g.extend(global);
        self.doc.insert("global".into(), Value::Table(g));
        for (key, list) in [
            ("vrrp_script", scripts),
            ("track_file", files),
            ("track_process", processes),
            ("bfd_instance", bfds),
            ("vrrp_instance", instances),
            ("vrrp_sync_group", groups),
            ("virtual_server_group", vs_groups),
            ("virtual_server", services),
        ] {
            if !list.is_empty() {
                self.doc.insert(
                    key.into(),
                    Value::Array(list.into_iter().map(Value::Table).collect()),
                );
            }
        }
    }

    pub(super) fn global_def(&mut self, n: &Node, global: &mut Table) {
        let instance_key = match n.keyword.as_str() {
            "router_id" => {
                if let Some(v) = self.one(n, |a| Some(string(a))) {
                    global.insert("router_id".into(), v);
                }
                return;
            }
            "vrrp_version" => "version",
            "vrrp_garp_master_delay" => "garp_master_delay",
            "vrrp_garp_master_repeat" => "garp_master_repeat",
            "vrrp_garp_master_refresh" => "garp_master_refresh",
            "notification_email"
            | "notification_email_from"
            | "smtp_server"
            | "smtp_connect_timeout"
            | "smtp_helo_name"
            | "smtp_alert" => {
                self.warn(
                    n,
                    "director sends no mail: use notify scripts or the Prometheus metrics",
                );
                return;
            }
            "enable_script_security" => {
                global.insert("enable_script_security".into(), Value::Boolean(true));
                return;
            }
            "script_user" => {
                // `script_user USER [GROUP]`: the same words.
                match n.args.as_slice() {
                    [user] | [user, _] => {
                        global.insert("script_user".into(), string(&n.args.join(" ")));
                        if user == "root" {
                            self.warn(n, "scripts run as root with the daemon's capabilities");
                        }
                    }
                    _ => self.warn(n, "expected USER [GROUP]"),
                }
                return;
            }
            "vrrp_skip_check_adv_addr" => {
                self.warn(
                    n,
                    "director always checks that adverts carry the configured addresses",
                );
                return;
            }
            "vrrp_strict" => {
                self.warn(
                    n,
                    "director always applies RFC checks (TTL 255, checksums); v2 authentication stays allowed",
                );
                return;
            }
            _ => {
                self.warn(n, no_equivalent(&n.keyword));
                return;
            }
        };
        if let Some(v) = self.one(n, int) {
            self.instance_defaults.push((instance_key.into(), v));
        }
    }

    pub(super) fn vrrp_script(&mut self, n: &Node) -> Option<Table> {
        let mut t = self.named(n, "vrrp_script")?;
        for c in n.children.iter().flatten() {
            let (key, conv): (&str, Conv) = match c.keyword.as_str() {
                "script" => ("script", |a| Some(string(a))),
                "interval" => ("interval", num),
                "timeout" => ("timeout", num),
                "weight" => ("weight", int),
                "rise" => ("rise", int),
                "fall" => ("fall", int),
                "user" => {
                    self.warn(c, "scripts run as the daemon's user");
                    continue;
                }
                _ => {
                    self.warn(c, "unknown vrrp_script keyword");
                    continue;
                }
            };
            // `script` may be given unquoted as several words.
            let v = if key == "script" && c.args.len() > 1 {
                Some(string(&c.args.join(" ")))
            } else {
                self.one(c, conv)
            };
            if let Some(v) = v {
                t.insert(key.into(), v);
            }
        }
        if !t.contains_key("script") {
            self.warn(n, "a vrrp_script without `script` was skipped");
            return None;
        }
        Some(t)
    }
}
