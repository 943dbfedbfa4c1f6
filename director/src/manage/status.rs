//! The status document (`director status --json`, the control socket) and
//! its table rendering. Field names are a contract: extend, never rename.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use crate::vrrp::instance::InstanceStatus;

/// The whole director.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub router_id: String,
    /// The daemon's process ID, and when this process started (Unix
    /// seconds): `director restart` keeps the PID and changes the time.
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub started_at: f64,
    /// `xdp` (or `ipvs`).
    pub dataplane: String,
    /// `native` or `generic` for XDP.
    pub xdp_mode: Option<String>,
    pub interface: String,
    /// Whether the dataplane keeps forwarding after the daemon exits and is
    /// adopted by the next one (false when its pins would die with the
    /// daemon's private mount namespace; the daemon logged why at start).
    #[serde(default)]
    pub dataplane_survives_restart: bool,
    /// Where the XDP dataplane is pinned.
    #[serde(default)]
    pub pin_dir: Option<String>,
    /// Entries of the XDP flow table (`global.flow_table_size`), and the
    /// kernel memory it takes (`null` with IPVS).
    #[serde(default)]
    pub flow_table_size: Option<u32>,
    #[serde(default)]
    pub flow_table_memory_bytes: Option<u64>,
    /// The SYN-flood guard (`global.new_flow_limit`: new flows recorded
    /// per second per CPU at most, 0 none) and the new flows forwarded but
    /// not recorded past it since the program was loaded (`null` with
    /// IPVS).
    #[serde(default)]
    pub new_flow_limit: Option<u32>,
    #[serde(default)]
    pub flows_unrecorded: Option<u64>,
    /// The last update the dataplane refused (`null` when the last one
    /// succeeded): the previous state keeps forwarding meanwhile.
    #[serde(default)]
    pub dataplane_error: Option<String>,
    pub virtual_servers: Vec<VirtualServerStatus>,
    /// Flow sync with peer directors (`null` when off).
    #[serde(default)]
    pub flow_sync: Option<FlowSyncStatus>,
    /// BGP announcements through BIRD (`null` when off).
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
    /// VRRP instances.
    #[serde(default)]
    pub vrrp: Vec<InstanceStatus>,
    /// BFD sessions (`[[bfd_instance]]`).
    #[serde(default)]
    pub bfd: Vec<crate::bfd::BfdStatus>,
}

/// Flow sync counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSyncStatus {
    pub peers: usize,
    /// Flows sent (counted once per peer).
    pub flows_sent: u64,
    /// Flows received in accepted datagrams.
    pub flows_received: u64,
    /// Received flows added to our flow table (the others we had).
    pub flows_imported: u64,
    /// Peers this director still waits for all the flows of (since its
    /// start; preemption is held meanwhile, up to `preempt_hold`).
    #[serde(default)]
    pub awaiting_peers: Vec<String>,
    /// Datagrams dropped, by reason (`malformed`, `bad_mac`, `stale`,
    /// `misdirected`, `replay`).
    pub dropped: std::collections::BTreeMap<String, u64>,
}

/// What BIRD announces for us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// VIPs announced (as BIRD confirmed).
    pub announced: Vec<String>,
    /// The last failure talking to BIRD, until an update succeeds.
    pub error: Option<String>,
}

/// One virtual service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualServerStatus {
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub scheduler: String,
    pub persistence_timeout: u32,
    /// `dr` or `tun`.
    #[serde(default = "dr")]
    pub lb_kind: String,
    /// Its `[[virtual_server_group]]` (`address` and `port` are then the
    /// group's first member's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Every member it answers on (`"ADDR[-LAST] [PORT[-LAST]]"`), with a
    /// group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// A firewall-mark service's mark (`address` is then unspecified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    /// Whether the healthy real servers' weights reach `quorum`.
    pub quorum_up: bool,
    /// More than `fail_open` percent of the pool's weight fails its checks:
    /// every real server keeps receiving new flows.
    #[serde(default)]
    pub failing_open: bool,
    /// Why it fails open (`null` while it does not).
    #[serde(default)]
    pub fail_open_reason: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub real_servers: Vec<RealServerStatus>,
}

fn dr() -> String {
    "dr".into()
}

/// One real server of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealServerStatus {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    /// The weight new flows see now: `weight` (or a `misc_dynamic`
    /// check's), the share of it a slow start has reached, 0 while it
    /// gets no new flows (failed, drained, or its service on the sorry
    /// server).
    #[serde(default)]
    pub effective_weight: f64,
    /// Seconds until its slow start reaches its whole weight (`null`
    /// when it is not ramping).
    #[serde(default)]
    pub slow_start_remaining: Option<f64>,
    /// `null` until the kernel has resolved it.
    pub mac: Option<String>,
    /// Passing its health checks (true when it has none).
    pub healthy: bool,
    /// Unix time of its last check, seconds (`null` before the first).
    pub last_check: Option<f64>,
    /// Why its last check failed, if it did.
    pub last_error: Option<String>,
    /// Duration of its last check, seconds.
    #[serde(default)]
    pub check_latency: Option<f64>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// A table in the spirit of `ipvsadm -Ln --stats`.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mode = s
        .xdp_mode
        .as_deref()
        .map(|m| format!(", {m} mode"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "director {} on {} (dataplane {}{mode})",
        s.router_id, s.interface, s.dataplane
    );
    if let Some(e) = &s.dataplane_error {
        let _ = writeln!(
            out,
            "WARNING: the dataplane refused the last update ({e}); the previous state keeps forwarding"
        );
    }
    if !s.dataplane_survives_restart {
        let _ = writeln!(
            out,
            "WARNING: the dataplane stops when this daemon stops (its pins at {} die with its mount namespace; see the daemon's log)",
            s.pin_dir.as_deref().unwrap_or("?")
        );
    }
    if !s.vrrp.is_empty() {
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:<8} {:>8} {:>9} {:<22} {:>11}",
            "VRRP instance", "VRID", "State", "Priority", "Effective", "Master", "Transitions"
        );
        for v in &s.vrrp {
            let _ = writeln!(
                out,
                "{:<16} {:>4} {:<8} {:>8} {:>9} {:<22} {:>11}",
                v.name,
                v.virtual_router_id,
                v.state.to_uppercase(),
                v.priority,
                v.effective_priority,
                v.master_address.as_deref().unwrap_or("-"),
                v.transitions
            );
        }
        out.push('\n');
    }
    if !s.bfd.is_empty() {
        let _ = writeln!(
            out,
            "{:<16} {:<40} {:<10} {:<10} {:>10} {:>11}",
            "BFD session", "neighbor", "state", "remote", "detect ms", "transitions"
        );
        for b in &s.bfd {
            let _ = writeln!(
                out,
                "{:<16} {:<40} {:<10} {:<10} {:>10.1} {:>11}",
                b.name,
                b.neighbor_ip,
                b.state.to_uppercase(),
                b.remote_state.to_uppercase(),
                b.detect_time_ms,
                b.transitions
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{:<5} {:<42} {:<6} {:>7} {:>12} {:>14} {:>10}",
        "Prot", "LocalAddress:Port", "Sched", "Weight", "Packets", "Bytes", "NewFlows"
    );
    let _ = writeln!(
        out,
        "  -> {:<43} {:<17} {:>7} {:>12} {:>14} {:>10}",
        "RemoteAddress:Port", "MAC", "", "", "", ""
    );
    for vs in &s.virtual_servers {
        let sched = if vs.persistence_timeout > 0 {
            format!("{} persistent {}", vs.scheduler, vs.persistence_timeout)
        } else {
            vs.scheduler.clone()
        };
        let local = match (&vs.group, vs.fwmark) {
            (Some(g), _) => format!("group {g}"),
            (None, Some(m)) => format!("fwmark {m}"),
            (None, None) => endpoint(&vs.address, vs.port),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<42} {:<6} {:>7} {:>12} {:>14} {:>10}",
            vs.protocol.to_uppercase(),
            local,
            sched,
            "",
            vs.packets,
            vs.bytes,
            vs.new_flows
        );
        for m in &vs.members {
            let _ = writeln!(out, "   = {m}");
        }
        if let Some(why) = &vs.fail_open_reason {
            let _ = writeln!(out, "   ! failing open: {why}");
        }
        for rs in &vs.real_servers {
            let _ = writeln!(
                out,
                "  -> {:<43} {:<17} {:>7} {:>12} {:>14} {:>10}",
                endpoint(&rs.address, rs.port),
                match (rs.healthy, rs.mac.as_deref()) {
                    (false, _) => "(failed check)",
                    (true, Some(m)) => m,
                    (true, None) => "(unresolved)",
                },
                if rs.effective_weight == f64::from(rs.weight) {
                    rs.weight.to_string()
                } else {
                    format!("{}/{}", rs.effective_weight, rs.weight)
                },
                rs.packets,
                rs.bytes,
                rs.new_flows
            );
        }
    }
    out
}

/// A status document for tests: one service with one healthy real server.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// One service, one real server (healthy, MAC unknown), no VRRP.
    pub(crate) fn sample() -> Status {
        Status {
            router_id: "lb1".into(),
            pid: 1,
            started_at: 0.0,
            dataplane: "xdp".into(),
            xdp_mode: Some("native".into()),
            interface: "eth0".into(),
            dataplane_survives_restart: true,
            flow_table_size: None,
            flow_table_memory_bytes: None,
            new_flow_limit: None,
            flows_unrecorded: None,
            pin_dir: Some("/sys/fs/bpf/director/run-director".into()),
            dataplane_error: None,
            flow_sync: None,
            bgp: None,
            virtual_servers: vec![VirtualServerStatus {
                address: "10.0.0.100".into(),
                port: 80,
                protocol: "tcp".into(),
                scheduler: "mh".into(),
                persistence_timeout: 0,
                lb_kind: "dr".into(),
                group: None,
                members: Vec::new(),
                fwmark: None,
                quorum_up: true,
                failing_open: false,
                fail_open_reason: None,
                packets: 10,
                bytes: 1000,
                new_flows: 2,
                real_servers: vec![RealServerStatus {
                    address: "10.0.0.20".into(),
                    port: 80,
                    weight: 1,
                    effective_weight: 1.0,
                    slow_start_remaining: None,
                    mac: None,
                    healthy: true,
                    last_check: None,
                    last_error: None,
                    check_latency: None,
                    packets: 10,
                    bytes: 1000,
                    new_flows: 2,
                }],
            }],
            vrrp: vec![],
            bfd: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::sample, *};

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::to_value(sample()).expect("encodes");
        for k in ["router_id", "dataplane", "virtual_servers"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let vs = &v["virtual_servers"][0];
        for k in ["address", "port", "protocol", "scheduler", "real_servers"] {
            assert!(vs.get(k).is_some(), "{k}");
        }
        let rs = &vs["real_servers"][0];
        for k in [
            "address",
            "port",
            "weight",
            "mac",
            "packets",
            "bytes",
            "new_flows",
        ] {
            assert!(rs.get(k).is_some(), "{k}");
        }
        assert!(rs["mac"].is_null());
        assert_eq!(vs["port"], 80);
    }

    #[test]
    fn table_lists_services_and_servers() {
        let t = render(&sample());
        assert!(t.contains("TCP   10.0.0.100:80"), "{t}");
        assert!(t.contains("-> 10.0.0.20:80"), "{t}");
        assert!(t.contains("(unresolved)"), "{t}");
        assert_eq!(endpoint("fd00::1", 80), "[fd00::1]:80");
    }
}
