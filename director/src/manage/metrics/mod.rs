//! Prometheus metrics and the status JSON over HTTP, on
//! `global.metrics_address`: `/metrics` (Prometheus text format) and
//! `/status` (the same document as `director status --json`). Both are
//! built from one status snapshot taken by the event loop and shared by
//! every request for a quarter of a second. The server ([`server`]) is
//! bounded: no client can take the descriptors or the loop the
//! dataplane's control needs.

use std::net::SocketAddr;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::warn;

use crate::manage::status::Status;

type Labels = Vec<(String, String)>;

/// Errors starting the metrics server.
#[derive(Debug, thiserror::Error)]
#[error("metrics_address {addr}: {source}")]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Counts by reason for a counter family: every `known` reason (0 when it
/// has not happened, so that queries by reason have series from the
/// start), then any other reason the snapshot holds.
fn by_reason<'a>(
    known: &[&'a str],
    counts: &'a std::collections::BTreeMap<String, u64>,
) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&str, u64)> = known
        .iter()
        .map(|k| (*k, counts.get(*k).copied().unwrap_or(0)))
        .collect();
    out.extend(
        counts
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, n)| (k.as_str(), *n)),
    );
    out
}

/// The Prometheus text exposition of a status snapshot.
pub fn render(s: &Status) -> String {
    let mut reg = Registry::with_prefix("director");
    let info = gauge(&mut reg, "dataplane_info", "Dataplane in use (value 1)");
    info.get_or_create(&l(&[
        ("dataplane", &s.dataplane),
        ("xdp_mode", s.xdp_mode.as_deref().unwrap_or("")),
        ("router_id", &s.router_id),
    ]))
    .set(1.0);
    let survives = gauge(
        &mut reg,
        "dataplane_survives_restart",
        "1 when the dataplane keeps forwarding after the daemon exits (pinned on the host's bpffs); 0 when it dies with the daemon",
    );
    survives
        .get_or_create(&Vec::new())
        .set(if s.dataplane_survives_restart {
            1.0
        } else {
            0.0
        });
    gauge(
        &mut reg,
        "dataplane_error",
        "1 while the dataplane refuses an update (status dataplane_error says why; retried)",
    )
    .get_or_create(&Vec::new())
    .set(if s.dataplane_error.is_some() {
        1.0
    } else {
        0.0
    });

    if let Some(n) = s.flows_unrecorded {
        counter(
            &mut reg,
            "flows_unrecorded",
            "New flows forwarded but not recorded in the flow table (past global.new_flow_limit: a flood)",
        )
        .get_or_create(&Vec::new())
        .inc_by(n);
    }

    let vs_packets = counter(
        &mut reg,
        "virtual_server_packets",
        "Frames forwarded for the virtual server",
    );
    let vs_bytes = counter(
        &mut reg,
        "virtual_server_bytes",
        "Bytes forwarded for the virtual server",
    );
    let vs_flows = counter(
        &mut reg,
        "virtual_server_new_flows",
        "Flows placed for the virtual server",
    );
    let vs_quorum = gauge(
        &mut reg,
        "virtual_server_quorum_up",
        "1 while the virtual server has quorum",
    );
    let vs_open = gauge(
        &mut reg,
        "virtual_server_failing_open",
        "1 while more than fail_open percent of the pool fails its checks (every real server keeps receiving new flows)",
    );
    let rs_packets = counter(
        &mut reg,
        "real_server_packets",
        "Frames forwarded to the real server",
    );
    let rs_bytes = counter(
        &mut reg,
        "real_server_bytes",
        "Bytes forwarded to the real server",
    );
    let rs_flows = counter(
        &mut reg,
        "real_server_new_flows",
        "Flows placed on the real server",
    );
    let rs_healthy = gauge(
        &mut reg,
        "real_server_healthy",
        "1 while the real server passes its checks",
    );
    let rs_weight = gauge(&mut reg, "real_server_weight", "Configured weight");
    let rs_effective = gauge(
        &mut reg,
        "real_server_effective_weight",
        "Weight new flows see now (a slow start's share of it, 0 while out of the pool)",
    );
    let rs_latency = gauge(
        &mut reg,
        "real_server_check_latency_seconds",
        "Duration of the last health check",
    );
    let rs_resolved = gauge(
        &mut reg,
        "real_server_mac_resolved",
        "1 when the real server's MAC is known",
    );
    for vs in &s.virtual_servers {
        let port = vs.port.to_string();
        let base = [
            ("address", vs.address.as_str()),
            ("port", port.as_str()),
            ("protocol", vs.protocol.as_str()),
        ];
        vs_packets.get_or_create(&l(&base)).inc_by(vs.packets);
        vs_bytes.get_or_create(&l(&base)).inc_by(vs.bytes);
        vs_flows.get_or_create(&l(&base)).inc_by(vs.new_flows);
        vs_quorum
            .get_or_create(&l(&base))
            .set(if vs.quorum_up { 1.0 } else { 0.0 });
        vs_open
            .get_or_create(&l(&base))
            .set(if vs.failing_open { 1.0 } else { 0.0 });
        for rs in &vs.real_servers {
            let mut labels = l(&base);
            labels.push(("real_server".into(), rs.address.clone()));
            rs_packets.get_or_create(&labels).inc_by(rs.packets);
            rs_bytes.get_or_create(&labels).inc_by(rs.bytes);
            rs_flows.get_or_create(&labels).inc_by(rs.new_flows);
            rs_healthy
                .get_or_create(&labels)
                .set(if rs.healthy { 1.0 } else { 0.0 });
            rs_weight.get_or_create(&labels).set(f64::from(rs.weight));
            rs_effective.get_or_create(&labels).set(rs.effective_weight);
            rs_resolved
                .get_or_create(&labels)
                .set(if rs.mac.is_some() { 1.0 } else { 0.0 });
            if let Some(t) = rs.check_latency {
                rs_latency.get_or_create(&labels).set(t);
            }
        }
    }

    if let Some(fs) = &s.flow_sync {
        let sent = counter(
            &mut reg,
            "flow_sync_flows_sent",
            "Flow-table exceptions sent to peer directors (once per peer)",
        );
        let received = counter(
            &mut reg,
            "flow_sync_flows_received",
            "Flows received from peer directors in accepted datagrams",
        );
        let imported = counter(
            &mut reg,
            "flow_sync_flows_imported",
            "Received flows added to this director's flow table",
        );
        let dropped = counter(
            &mut reg,
            "flow_sync_dropped",
            "Flow sync datagrams dropped, by reason",
        );
        sent.get_or_create(&Vec::new()).inc_by(fs.flows_sent);
        received
            .get_or_create(&Vec::new())
            .inc_by(fs.flows_received);
        imported
            .get_or_create(&Vec::new())
            .inc_by(fs.flows_imported);
        let known = crate::dataplane::flowsync::Drop::ALL.map(|d| d.as_str());
        for (reason, n) in by_reason(&known, &fs.dropped) {
            dropped.get_or_create(&l(&[("reason", reason)])).inc_by(n);
        }
    }
    if let Some(b) = &s.bgp {
        let announced = gauge(
            &mut reg,
            "bgp_announced",
            "1 for each VIP BIRD announces for this director",
        );
        let error = gauge(
            &mut reg,
            "bgp_error",
            "1 while BIRD refuses or does not answer an update",
        );
        for vip in &b.announced {
            announced.get_or_create(&l(&[("vip", vip)])).set(1.0);
        }
        error
            .get_or_create(&Vec::new())
            .set(if b.error.is_some() { 1.0 } else { 0.0 });
    }

    let state = gauge(&mut reg, "vrrp_state", "1 for the instance's current state");
    let prio = gauge(&mut reg, "vrrp_priority", "Configured priority");
    let eprio = gauge(
        &mut reg,
        "vrrp_effective_priority",
        "Advertised priority after tracking",
    );
    let trans = counter(&mut reg, "vrrp_transitions", "State changes");
    let sent = counter(&mut reg, "vrrp_adverts_sent", "Advertisements sent");
    let recv = counter(
        &mut reg,
        "vrrp_adverts_received",
        "Valid advertisements received",
    );
    let dropped = counter(
        &mut reg,
        "vrrp_adverts_dropped",
        "Received packets dropped, by reason",
    );
    let split = counter(
        &mut reg,
        "vrrp_split_brains",
        "Times another master was heard while master",
    );
    let peer = gauge(
        &mut reg,
        "vrrp_peer_seen",
        "1 once another router's advert has been heard",
    );
    for v in &s.vrrp {
        let vrid = v.virtual_router_id.to_string();
        // `instance` is kept for existing queries, but Prometheus stores
        // it as `exported_instance` (its own `instance` is the scrape
        // target): `vrrp_instance` is the name to query by.
        let base = [
            ("instance", v.name.as_str()),
            ("vrrp_instance", v.name.as_str()),
            ("vrid", vrid.as_str()),
        ];
        for st in ["init", "backup", "master", "fault"] {
            let mut labels = l(&base);
            labels.push(("state".into(), st.into()));
            state
                .get_or_create(&labels)
                .set(if v.state == st { 1.0 } else { 0.0 });
        }
        prio.get_or_create(&l(&base)).set(f64::from(v.priority));
        eprio
            .get_or_create(&l(&base))
            .set(f64::from(v.effective_priority));
        trans.get_or_create(&l(&base)).inc_by(v.transitions);
        sent.get_or_create(&l(&base)).inc_by(v.adverts_sent);
        recv.get_or_create(&l(&base)).inc_by(v.adverts_received);
        split.get_or_create(&l(&base)).inc_by(v.split_brains);
        peer.get_or_create(&l(&base))
            .set(if v.peer_seen { 1.0 } else { 0.0 });
        let known = crate::vrrp::packet::Reject::ALL.map(|r| r.label());
        for (reason, n) in by_reason(&known, &v.rejected) {
            let mut labels = l(&base);
            labels.push(("reason".into(), reason.into()));
            dropped.get_or_create(&labels).inc_by(n);
        }
    }

    let bfd_up = gauge(&mut reg, "bfd_session_up", "1 while the BFD session is Up");
    let bfd_trans = counter(&mut reg, "bfd_transitions", "BFD session state changes");
    let bfd_dropped = counter(
        &mut reg,
        "bfd_packets_dropped",
        "Received BFD packets dropped, by reason",
    );
    for b in &s.bfd {
        let base = [
            ("session", b.name.as_str()),
            ("neighbor", b.neighbor_ip.as_str()),
        ];
        bfd_up
            .get_or_create(&l(&base))
            .set(if b.state == "up" { 1.0 } else { 0.0 });
        bfd_trans.get_or_create(&l(&base)).inc_by(b.transitions);
        let known = crate::bfd::packet::Drop::ALL.map(|d| d.as_str());
        for (reason, n) in by_reason(&known, &b.dropped) {
            let mut labels = l(&base);
            labels.push(("reason".into(), reason.into()));
            bfd_dropped.get_or_create(&labels).inc_by(n);
        }
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// The same metrics in Prometheus's text format 0.0.4, for clients that
/// do not ask for OpenMetrics (`curl`, `promtool check metrics`): a
/// counter's `# HELP`/`# TYPE` lines name its sample (`..._total`), and
/// there is no `# UNIT` or `# EOF` line. Prometheus itself asks for
/// OpenMetrics and gets [`render`]'s output.
pub fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The content type of [`text_format`]'s output.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of [`render`]'s output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an HTTP `Accept` header asks for OpenMetrics (Prometheus's
/// scraper does; `curl` and browsers do not).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut fields = part.split(';').map(str::trim);
            let kind = fields.next().unwrap_or("");
            // `q=0` refuses the type (RFC 9110 section 12.4.2).
            let refused = fields.any(|f| {
                f.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

mod server;

pub use self::server::serve;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::status::InstanceStatus;

    #[test]
    fn a_real_prometheus_parser_reads_the_metrics() {
        let mut s = crate::manage::status::fixtures::sample();
        s.flows_unrecorded = Some(3);
        let vs = &mut s.virtual_servers[0];
        (vs.packets, vs.bytes, vs.new_flows) = (42, 4200, 7);
        vs.failing_open = true;
        let rs = &mut vs.real_servers[0];
        rs.weight = 3;
        rs.effective_weight = 0.3;
        rs.mac = Some("02:00:00:00:00:01".into());
        rs.healthy = false;
        rs.last_check = Some(1.0);
        rs.last_error = Some("refused".into());
        rs.check_latency = Some(0.002);
        (rs.packets, rs.bytes, rs.new_flows) = (40, 4000, 6);
        s.vrrp = vec![InstanceStatus {
            name: "VI_1".into(),
            state: "master".into(),
            priority: 150,
            effective_priority: 130,
            virtual_router_id: 51,
            master_address: Some("10.0.0.10".into()),
            transitions: 2,
            version: 3,
            advert_int: 0.1,
            interface: "eth0".into(),
            virtual_ipaddress: vec!["10.0.0.100".into()],
            adverts_sent: 100,
            adverts_received: 5,
            rejected: [("checksum".to_string(), 3u64)].into(),
            split_brains: 1,
            peer_seen: true,
        }];
        let text = render(&s);
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
        let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert_eq!(value("director_virtual_server_packets_total", None), 42.0);
        assert_eq!(
            value(
                "director_real_server_healthy",
                Some(("real_server", "10.0.0.20"))
            ),
            0.0
        );
        assert_eq!(value("director_real_server_weight", None), 3.0);
        assert_eq!(value("director_real_server_effective_weight", None), 0.3);
        assert_eq!(value("director_virtual_server_failing_open", None), 1.0);
        assert_eq!(value("director_vrrp_state", Some(("state", "master"))), 1.0);
        assert_eq!(value("director_vrrp_state", Some(("state", "backup"))), 0.0);
        assert_eq!(value("director_vrrp_effective_priority", None), 130.0);
        assert_eq!(
            value(
                "director_vrrp_adverts_dropped_total",
                Some(("reason", "checksum"))
            ),
            3.0
        );
        assert_eq!(value("director_vrrp_transitions_total", None), 2.0);
        assert_eq!(
            value("director_dataplane_info", Some(("xdp_mode", "native"))),
            1.0
        );
    }
}

#[cfg(test)]
mod help_tests {
    /// A status with every part present (services, real servers, VRRP).
    pub(crate) fn full_status() -> crate::manage::status::Status {
        serde_json::from_str(
            r#"{"router_id":"a","dataplane":"xdp","xdp_mode":"native","interface":"eth0",
            "dataplane_survives_restart":true,
            "flow_sync":{"peers":1,"flows_sent":1,"flows_received":1,"flows_imported":1,"dropped":{"replay":1}},
            "bgp":{"announced":["10.0.0.100"],"error":null},
            "virtual_servers":[{"address":"10.0.0.100","port":80,"protocol":"tcp","scheduler":"mh",
              "persistence_timeout":0,"quorum_up":true,"packets":1,"bytes":1,"new_flows":1,
              "real_servers":[{"address":"10.0.0.20","port":80,"weight":1,"mac":null,"healthy":true,
                "last_check":null,"last_error":null,"check_latency":0.1,"packets":1,"bytes":1,"new_flows":1}]}],
            "vrrp":[{"name":"VI_1","state":"master","priority":1,"effective_priority":1,"virtual_router_id":1,
              "master_address":null,"transitions":0,"version":3,"advert_int":1.0,"interface":"eth0",
              "virtual_ipaddress":[],"adverts_sent":0,"adverts_received":0,"rejected":{"ttl":1},
              "split_brains":0,"peer_seen":false}]}"#,
        )
        .expect("status json")
    }

    /// Without an OpenMetrics `Accept`, the text format 0.0.4: a counter's
    /// HELP and TYPE name its `_total` sample, no `# EOF`; every family
    /// and sample of the OpenMetrics form is there.
    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let om = super::render(&full_status());
        let text = super::text_format(&om);
        assert!(om.trim_end().ends_with("# EOF"));
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE director_vrrp_transitions_total counter\n"));
        assert!(text.contains("# HELP director_vrrp_transitions_total "));
        assert!(text.contains("# TYPE director_vrrp_state gauge\n"));
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&om), samples(&text));
        // Every reason of a drop counter has a series, at 0 when unseen.
        assert!(text.contains("reason=\"checksum\"} 0\n"), "{text}");
        assert!(text.contains("reason=\"ttl\"} 1\n"), "{text}");
        assert!(text.contains("reason=\"bad_mac\"} 0\n"), "{text}");
    }

    #[test]
    fn prometheus_scrapers_get_openmetrics_others_the_text_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(super::wants_openmetrics(Some(prometheus)));
        assert!(super::wants_openmetrics(Some(
            "Application/OpenMetrics-Text"
        )));
        assert!(!super::wants_openmetrics(None));
        assert!(!super::wants_openmetrics(Some("*/*")));
        assert!(!super::wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!super::wants_openmetrics(Some(
            "application/openmetrics-text; q=0, text/plain"
        )));
    }

    #[test]
    fn every_metric_family_has_help_text() {
        let text = super::render(&full_status());
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(families.len() > 20, "{text}");
        for f in families {
            let help = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# HELP {f} ")))
                .unwrap_or_else(|| panic!("{f} has no HELP:\n{text}"));
            assert!(help.trim().len() > 10, "{f}: HELP {help:?}");
        }
    }

    /// Every metric the Grafana dashboard (`packaging/`) queries is one the
    /// daemon exports.
    #[test]
    fn the_dashboard_queries_only_exported_metrics() {
        let text = super::render(&full_status());
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/grafana-dashboard.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
                .expect("json");
        let mut exprs = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        if (k == "expr" || k == "query")
                            && let Some(s) = v.as_str()
                        {
                            out.push(s.to_string());
                        }
                        walk(v, out);
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&dashboard, &mut exprs);
        assert!(exprs.len() > 20, "{exprs:?}");
        let re = regex::Regex::new(r"director_[a-z0-9_]+").expect("regex");
        let mut used = 0;
        for e in &exprs {
            for m in re.find_iter(e) {
                used += 1;
                assert!(
                    exported.contains(m.as_str()),
                    "the dashboard queries {} (in `{e}`), which is not exported:\n{exported:?}",
                    m.as_str()
                );
            }
        }
        assert!(used > 20);
    }
}
