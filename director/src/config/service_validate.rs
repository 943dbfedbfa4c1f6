//! The checks of `[[virtual_server]]`, its real servers and
//! `[[virtual_server_group]]` that serde cannot express (beside
//! `service.rs`, as `vrrp_validate.rs` is beside `vrrp.rs`).

use super::*;

impl Config {
    /// The checks of the services and groups serde cannot express (their
    /// checkers' included); returns how many real servers they hold in all
    /// (checked against the dataplane's capacity once the rest passed).
    pub(super) fn validate_services(&self) -> Result<usize, Problem> {
        use Seg::{Index, Key};
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
            if vs.fail_open.is_some_and(|p| p > 100) {
                return Err(problem(
                    at("fail_open"),
                    "must be a percentage of the pool's weight, 0 to 100",
                ));
            }
            if vs.slow_start > MAX_SLOW_START {
                return Err(problem(
                    at("slow_start"),
                    format!("must be between 0 and {MAX_SLOW_START} seconds"),
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
                if rs.slow_start.is_some_and(|s| s > MAX_SLOW_START) {
                    return Err(problem(
                        at("slow_start"),
                        format!("must be between 0 and {MAX_SLOW_START} seconds"),
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
        Ok(total)
    }

    /// The real servers of every service against the dataplane's capacity.
    pub(super) fn validate_capacity(&self, total: usize) -> Result<(), Problem> {
        use Seg::Key;
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
