//! `director doctor`: the classic LVS-DR outages, found from the director
//! before clients meet them. For every real server of every service (or of
//! one VIP): it answers ARP for its own address on our link (or its tunnel
//! next hop does); a SYN to VIP:port framed to its MAC, as the dataplane
//! forwards clients' packets (inside the tunnel for `lb_kind = "tun"`),
//! gets a SYN-ACK: the VIP is on its `lo` (or tunnel device) and the
//! service listens on it; it does not answer ARP for the VIP (no
//! `arp_ignore`/`arp_announce`: it would take the VIP's traffic from the
//! director). And the XDP attach mode, with why when it is generic. Each
//! finding says what to run to fix it.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    config::{Config, DataplaneKind, LbKind, Protocol},
    health::drpath::{Answer, PathProbe, probe_report},
    net::neighbor::{Mac, Neighbor, Neighbors},
};

/// Errors that stop `doctor` from checking at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("netlink: {0}")]
    Neighbor(#[from] crate::net::neighbor::NeighborError),
    #[error("cannot start the checks: {0}")]
    Runtime(#[from] std::io::Error),
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// `ok`, `fail`, or `note` (a fact worth knowing; not a failure).
    pub level: &'static str,
    pub real_server: Option<String>,
    /// `VIP:PORT/PROTO`.
    pub service: Option<String>,
    pub what: String,
    /// What to run, and where, to fix it.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(rs: IpAddr, service: &str, what: impl Into<String>) -> Finding {
        Finding {
            level: "ok",
            real_server: Some(rs.to_string()),
            service: Some(service.to_string()),
            what: what.into(),
            fix: None,
        }
    }

    fn fail(rs: IpAddr, service: &str, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: "fail",
            real_server: Some(rs.to_string()),
            service: Some(service.to_string()),
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// How long one probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a real server (or next hop) has to answer ARP / NDP.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks every real server of `config` (of the services on `vip` only,
/// when given), and the XDP attach mode of the daemon of `state_dir`.
pub async fn check(config: &Config, vip: Option<IpAddr>) -> Result<Vec<Finding>, DoctorError> {
    let g = &config.global;
    let neighbors = Neighbors::open(&g.interface).await?;
    let link = neighbors.link();
    let mut out = Vec::new();
    if g.dataplane != DataplaneKind::Ipvs {
        out.push(xdp_mode(
            &g.state_dir,
            &g.interface,
            g.xdp_mode == crate::config::XdpMode::Generic,
        ));
    }
    for vs in &config.virtual_server {
        let Some(vaddr) = vs.members.first().map(|m| m.first) else {
            continue;
        };
        if vip.is_some_and(|v| !vs.members.iter().any(|m| m.addresses().contains(&v))) {
            continue;
        }
        let vaddr = vip.unwrap_or(vaddr);
        let service = format!("{}", vs.id());
        let tunnel = vs.lb_kind == LbKind::Tun;
        if tunnel {
            out.push(tunnel_mtu(&service, vaddr, link.mtu));
        }
        for rs in &vs.real_server {
            let port = rs.port.unwrap_or(vs.port());
            // The MAC the dataplane frames its packets to.
            let hop = if tunnel {
                match neighbors.route_to(rs.address).await? {
                    Some((oif, gateway)) if oif == link.index => gateway.unwrap_or(rs.address),
                    Some(_) => {
                        out.push(Finding::fail(
                            rs.address,
                            &service,
                            format!(
                                "the route to it leaves by another interface than {}",
                                g.interface
                            ),
                            format!(
                                "route {} (or its next hop) through {}",
                                rs.address, g.interface
                            ),
                        ));
                        continue;
                    }
                    None => {
                        out.push(Finding::fail(
                            rs.address,
                            &service,
                            "no route to it",
                            format!("add a route to {} through {}", rs.address, g.interface),
                        ));
                        continue;
                    }
                }
            } else {
                rs.address
            };
            let Some(mac) = resolve(&neighbors, hop).await? else {
                let what = if hop == rs.address {
                    format!(
                        "does not answer ARP/NDP for its own address on {}",
                        g.interface
                    )
                } else {
                    format!(
                        "its next hop {hop} does not answer ARP/NDP on {}",
                        g.interface
                    )
                };
                out.push(Finding::fail(
                    rs.address,
                    &service,
                    what,
                    if tunnel {
                        format!("check that {hop} is up and reachable on {}", g.interface)
                    } else {
                        format!(
                            "direct routing needs the real server on {}'s segment: check that {} is up there (ip neigh show {})",
                            g.interface, rs.address, rs.address
                        )
                    },
                ));
                continue;
            };
            if vs.protocol != Protocol::Tcp || port == 0 {
                out.push(Finding {
                    level: "note",
                    real_server: Some(rs.address.to_string()),
                    service: Some(service.clone()),
                    what: "reachable (the VIP path is probed with a TCP SYN: not checked for UDP or any-port services)".into(),
                    fix: None,
                });
                continue;
            }
            let p = PathProbe {
                ifindex: link.index,
                our_mac: link.mac,
                rs_mac: mac,
                rs: rs.address,
                src: None,
                vip: vaddr,
                port,
                arp: true,
                tunnel,
                timeout: PROBE_TIMEOUT,
            };
            let report = tokio::task::spawn_blocking(move || probe_report(&p))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            out.extend(judge(rs.address, &service, vaddr, port, tunnel, report));
        }
    }
    Ok(out)
}

/// The findings of one probe.
fn judge(
    rs: IpAddr,
    service: &str,
    vip: IpAddr,
    port: u16,
    tunnel: bool,
    report: Result<crate::health::drpath::PathReport, String>,
) -> Vec<Finding> {
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            return vec![Finding {
                level: "note",
                real_server: Some(rs.to_string()),
                service: Some(service.to_string()),
                what: format!("could not probe it from here: {e}"),
                fix: Some("run doctor as root in the director's network namespace".into()),
            }];
        }
    };
    let v6 = vip.is_ipv6();
    let mut out = Vec::new();
    match (report.answer, tunnel) {
        (Answer::Accepted, false) => out.push(Finding::ok(
            rs,
            service,
            format!("answers {vip} port {port} on its MAC (the direct-routing path)"),
        )),
        (Answer::Accepted, true) => out.push(Finding::ok(
            rs,
            service,
            format!("decapsulates the tunnel and answers {vip} port {port}"),
        )),
        (Answer::Refused, _) => out.push(Finding::fail(
            rs,
            service,
            format!("holds the VIP {vip} but refuses port {port} on it: the service does not listen on the VIP"),
            format!("on {rs}: make the service listen on {vip}:{port} (or on every address)"),
        )),
        (Answer::Silent, false) => out.push(Finding::fail(
            rs,
            service,
            format!("does not answer {vip} port {port} on its MAC: the VIP is not on its lo (or a firewall drops it)"),
            format!(
                "on {rs}: ip addr add {vip}/{} dev lo",
                if v6 { 128 } else { 32 }
            ),
        )),
        (Answer::Silent, true) => out.push(Finding::fail(
            rs,
            service,
            format!("no answer through the {} tunnel to {vip} port {port}: it does not decapsulate, the VIP is not on its tunnel device, or rp_filter drops the decapsulated packet", if v6 { "IPv6-in-IPv6" } else { "IP-in-IP" }),
            if v6 {
                format!("on {rs}: modprobe ip6_tunnel; ip link set ip6tnl0 up; ip addr add {vip}/128 dev ip6tnl0")
            } else {
                format!("on {rs}: modprobe ipip; ip link set tunl0 up; ip addr add {vip}/32 dev tunl0; sysctl -w net.ipv4.conf.tunl0.rp_filter=0 net.ipv4.conf.all.rp_filter=0")
            },
        )),
    }
    if report.arp_answered {
        out.push(Finding::fail(
            rs,
            service,
            format!("answers ARP for the VIP {vip}: it takes the VIP's traffic from the director"),
            format!("on {rs}: sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 (and in /etc/sysctl.d to keep it)"),
        ));
    } else if !tunnel && !v6 && report.answer == Answer::Accepted {
        out.push(Finding::ok(
            rs,
            service,
            format!("does not answer ARP for the VIP {vip}"),
        ));
    }
    out
}

/// What a tunnel service's clients must let through: the ICMP the
/// program answers packets that no longer fit once wrapped.
fn tunnel_mtu(service: &str, vip: IpAddr, mtu: u32) -> Finding {
    let (overhead, icmp) = if vip.is_ipv6() {
        (40, "ICMPv6 packet too big (type 2)")
    } else {
        (20, "ICMP fragmentation needed (type 3 code 4)")
    };
    let fits = mtu.saturating_sub(overhead);
    Finding {
        level: "note",
        real_server: None,
        service: Some(service.to_string()),
        what: format!(
            "tunnel: a client's packet over {fits} bytes (MTU {mtu} less the {overhead}-byte outer header) is answered with {icmp} by the director; a client whose firewall drops it stalls on large transfers"
        ),
        fix: Some(format!(
            "let {icmp} reach the clients, or clamp the real servers' MSS to fit (on each: ip route change ROUTE advmss {})",
            fits.saturating_sub(if vip.is_ipv6() { 60 } else { 40 })
        )),
    }
}

/// The MAC of `addr` on our link: the kernel's entry, after asking it to
/// resolve the address (`None`: no answer within [`RESOLVE_TIMEOUT`]).
async fn resolve(n: &Neighbors, addr: IpAddr) -> Result<Option<Mac>, DoctorError> {
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let mut asked = false;
    loop {
        match n.dump().await?.get(&addr) {
            Some(Neighbor::Resolved(mac)) => return Ok(Some(*mac)),
            Some(Neighbor::Failed) if asked => return Ok(None),
            Some(Neighbor::Failed) | None if !asked => {
                n.solicit(addr).await?;
                asked = true;
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The XDP attach mode the daemon recorded, and why when it is generic.
fn xdp_mode(state_dir: &Path, interface: &str, configured_generic: bool) -> Finding {
    let recorded = std::fs::read_to_string(state_dir.join("xdp-link")).unwrap_or_default();
    let mode = recorded.split_whitespace().nth(1).map(str::to_string);
    let driver = std::fs::read_link(format!("/sys/class/net/{interface}/device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    let what = match mode.as_deref() {
        None => format!("{interface}: no XDP program attached by a daemon of {} (is it running?)", state_dir.display()),
        Some("generic") if configured_generic => {
            format!("{interface}: XDP in generic (SKB) mode, as configured (xdp_mode = \"generic\")")
        }
        Some("generic") => format!(
            "{interface}: XDP in generic (SKB) mode: {} (every packet pays for an skb; forwarding runs far below line rate)",
            match &driver {
                Some(d) => format!("the driver {d} has no native XDP or refused it (see the daemon's log)"),
                None => "a virtual device without native XDP, or native attach refused (see the daemon's log)".into(),
            }
        ),
        Some(m) => format!("{interface}: XDP in {m} mode"),
    };
    Finding {
        level: "note",
        real_server: None,
        service: None,
        fix: (mode.as_deref() == Some("generic") && !configured_generic).then(|| {
            "use a NIC whose driver has native XDP (mlx5, ice, i40e, ixgbe, bnxt, virtio_net, veth...), or set xdp_mode = \"native\" to refuse generic mode".to_string()
        }),
        what,
    }
}

/// The report as lines: `ok|FAIL|note  REAL_SERVER  SERVICE  what`, each
/// failure followed by its fix; then a count.
pub fn render(findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in findings {
        let level = match f.level {
            "fail" => "FAIL",
            l => l,
        };
        let _ = writeln!(
            out,
            "{level:<5} {:<16} {:<24} {}",
            f.real_server.as_deref().unwrap_or("-"),
            f.service.as_deref().unwrap_or("-"),
            f.what
        );
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "      fix: {fix}");
        }
    }
    let failed = findings.iter().filter(|f| f.level == "fail").count();
    let _ = writeln!(
        out,
        "{failed} problem{} found",
        if failed == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::drpath::PathReport;

    #[test]
    fn each_outcome_is_named_with_its_fix() {
        let rs: IpAddr = "10.0.0.21".parse().expect("ip");
        let vip: IpAddr = "10.0.0.100".parse().expect("ip");
        let of = |answer, arp_answered, tunnel| {
            judge(
                rs,
                "10.0.0.100:80/tcp",
                vip,
                80,
                tunnel,
                Ok(PathReport {
                    answer,
                    arp_answered,
                }),
            )
        };
        let good = of(Answer::Accepted, false, false);
        assert!(good.iter().all(|f| f.level == "ok"), "{good:?}");
        let lo = of(Answer::Silent, false, false);
        assert_eq!(lo[0].level, "fail");
        assert!(
            lo[0]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("ip addr add 10.0.0.100/32 dev lo"))
        );
        let arp = of(Answer::Accepted, true, false);
        assert!(
            arp.iter().any(|f| f.level == "fail"
                && f.fix.as_deref().is_some_and(|x| x.contains("arp_ignore=1")))
        );
        let tun = of(Answer::Silent, false, true);
        assert!(tun[0].fix.as_deref().is_some_and(|f| f.contains("tunl0")));
        let text = render(&[lo[0].clone()]);
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.starts_with("FAIL") && l.contains("10.0.0.21")),
            "{text}"
        );
        assert!(text.ends_with("1 problem found\n"), "{text}");
    }
}
