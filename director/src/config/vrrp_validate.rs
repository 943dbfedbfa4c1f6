//! The checks serde cannot express for VRRP instances and what they
//! track.

use super::*;

impl Config {
    pub(super) fn validate_vrrp(&self) -> Result<(), Problem> {
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
                Version::V2 => {
                    if v.advert_int.fract() != 0.0 || !(1.0..=255.0).contains(&v.advert_int) {
                        return Err(problem(
                            at("advert_int"),
                            "VRRP version 2 needs whole seconds between 1 and 255 (sub-second intervals need version = 3)",
                        ));
                    }
                }
                Version::V3 => {
                    let cs = v.advert_int * 100.0;
                    if !(1.0..=4095.0).contains(&cs) || (cs - cs.round()).abs() > 1e-6 {
                        return Err(problem(
                            at("advert_int"),
                            "VRRP version 3 needs 0.01 to 40.95 seconds, in steps of 0.01",
                        ));
                    }
                }
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
            for (j, a) in v.addresses().into_iter().enumerate() {
                let at = vec![
                    Key("vrrp_instance"),
                    Index(i),
                    Key("virtual_ipaddress"),
                    Index(j),
                ];
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
                if v6 && v.version == Version::V2 {
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
                if v.version != Version::V2 {
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
                if let Err(e) = routes::parse_route(r, v6) {
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
                if let Err(e) = routes::parse_rule(r, v6) {
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
                if !self.virtual_server.iter().any(|vs| vs.id() == t.id()) {
                    return Err(problem(
                        at("address"),
                        format!("no [[virtual_server]] {}", t.id()),
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
