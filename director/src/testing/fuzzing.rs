//! The invariants the fuzz targets (`fuzz/`) check, one function per
//! parser that takes outside bytes. They live here so the checked-in seed
//! corpora and every crash ever found run as ordinary tests too
//! (`tests/fuzz_regressions.rs`). Each panics when an invariant breaks.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use crate::vrrp::packet::Advert;

/// VRRP adverts (the first byte picks IPv4 or IPv6): decoding never panics;
/// what decodes re-encodes to a packet that decodes to the same advert;
/// `watch-vrrp`'s bookkeeping takes anything.
pub fn vrrp_advert(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let v6 = first & 1 == 1;
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, 9, 0, 1).into(),
            Ipv4Addr::new(224, 0, 0, 18).into(),
        )
    };
    if let Ok(advert) = Advert::decode(bytes, v6, src, dst) {
        let again = advert.encode(src, dst);
        assert_eq!(
            Advert::decode(&again, v6, src, dst).as_ref(),
            Ok(&advert),
            "decode(encode(advert)) differs"
        );
    }
    let mut watch = crate::vrrp::watch::Watch::default();
    watch.record(src, dst, first, bytes);
    let _ = crate::vrrp::watch::render(&watch.routers());
}

/// The TOML config loader and validator: never panics; an accepted config
/// written back as TOML is accepted again, unchanged.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    if let Ok(config) = crate::config::Config::parse(path, text) {
        let written = toml::to_string(&config).expect("an accepted config serializes");
        let again = crate::config::Config::parse(path, &written)
            .unwrap_or_else(|e| panic!("the written config is refused: {e}\n{written}"));
        assert_eq!(again, config, "the config changed when written back");
    }
}

/// The keepalived.conf importer: never panics; whatever it produces passes
/// `check-config`. The input may hold several files: lines `#@ NAME` start
/// a new one (`/fuzz/NAME`); the first is `/fuzz/keepalived.conf`. Includes
/// are read from those, never from the disk.
pub fn import_keepalived(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let main = std::path::PathBuf::from("/fuzz/keepalived.conf");
    let mut files = std::collections::BTreeMap::new();
    let mut name = main.clone();
    let mut body = String::new();
    for line in text.split_inclusive('\n') {
        if let Some(next) = line.strip_prefix("#@ ") {
            files.insert(name, std::mem::take(&mut body));
            name = Path::new("/fuzz").join(next.trim().trim_start_matches('/'));
        } else {
            body.push_str(line);
        }
    }
    files.insert(name, body);
    let src = crate::import::InMemory(files);
    if let Ok(imp) = crate::import::import_from(&src, &main) {
        crate::config::Config::parse(Path::new("imported.toml"), &imp.toml)
            .unwrap_or_else(|e| panic!("the import does not pass check-config: {e}\n{}", imp.toml));
    }
}

/// The control-socket protocol: never panics; an accepted request encodes
/// and parses back to itself; the error answer is JSON.
pub fn control_request(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match crate::manage::control::parse_request(line) {
        Ok(request) => {
            let json = serde_json::to_string(&request).expect("requests serialize");
            assert_eq!(
                crate::manage::control::parse_request(&json).as_ref(),
                Ok(&request),
                "request round trip"
            );
        }
        Err(error) => {
            let answer = crate::manage::control::Response::Error { error };
            serde_json::to_string(&answer).expect("answers serialize");
        }
    }
}

/// Netlink neighbour messages, as the kernel would send them: parsing and
/// our reading of them never panic.
pub fn netlink_neighbour(data: &[u8]) {
    use netlink_packet_core::Parseable as _;
    use netlink_packet_route::neighbour::NeighbourMessage;
    if let Ok(msg) = NeighbourMessage::parse(data) {
        let _ = crate::net::neighbor::entry(&msg);
    }
}

/// IPVS generic-netlink replies, as the kernel would send them (the
/// attributes after the genetlink header): parsing and our reading of
/// services, destinations and statistics never panic; what parses
/// re-encodes to the same attributes.
pub fn ipvs_reply(data: &[u8]) {
    use crate::dataplane::ipvs::netlink::*;
    use netlink_packet_core::Emitable as _;
    let Ok(attrs) = parse_attrs(data, Level::Command) else {
        return;
    };
    // What the dataplane reads from replies, with its own readers.
    if let Some((id, service)) = crate::dataplane::ipvs::read_service(&attrs) {
        let _ = (
            id.port,
            service.scheduler.len(),
            service.flags,
            service.timeout,
        );
        if let Some(s) = nest(&attrs, CMD_ATTR_SERVICE) {
            let _ = crate::dataplane::ipvs::traffic(s, SVC_ATTR_STATS64, SVC_ATTR_STATS);
        }
    }
    for v6 in [false, true] {
        if let Some((_, d)) = crate::dataplane::ipvs::read_dest(&attrs, v6) {
            let _ = get_u32(&d, DEST_ATTR_WEIGHT);
            let _ = crate::dataplane::ipvs::traffic(&d, DEST_ATTR_STATS64, DEST_ATTR_STATS);
        }
    }
    let msg = IpvsMessage {
        cmd: 0,
        attrs: attrs.clone(),
    };
    let mut again = vec![0u8; msg.buffer_len()];
    msg.emit(&mut again);
    assert_eq!(
        parse_attrs(&again, Level::Command).ok(),
        Some(attrs),
        "IPVS attributes changed when re-encoded"
    );
}

/// What real servers send back to probes (HTTP responses, DNS answers,
/// frames caught by the DR-path check): never a panic.
pub fn probe_replies(data: &[u8]) {
    let _ = crate::health::parse_http(data);
    let id = data.first().map_or(0, |b| u16::from(*b) << 8 | 0x34);
    let _ = crate::health::dns_answer_ok(id, "example.com", crate::config::DnsType::A, data);
    let _ = crate::health::drpath::classify(data, Ipv4Addr::new(10, 0, 0, 100).into());
    let _ = crate::health::drpath::classify(
        data,
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100).into(),
    );
}

/// One invariant check over outside bytes.
pub type Check = fn(&[u8]);

/// Every target, by name (for the regression test and `cargo xtask fuzz`).
pub const TARGETS: &[(&str, Check)] = &[
    ("vrrp_advert", vrrp_advert),
    ("config", config),
    ("import_keepalived", import_keepalived),
    ("control_request", control_request),
    ("netlink_neighbour", netlink_neighbour),
    ("ipvs_reply", ipvs_reply),
    ("probe_replies", probe_replies),
    ("bfd_control", bfd_control),
];

/// BFD control packets: parsing never panics; what parses re-encodes to
/// bytes that parse to the same packet; a session takes any parsed packet
/// without panicking and keeps its timers sane.
pub fn bfd_control(data: &[u8]) {
    use crate::bfd::{packet::Control, session};
    let Ok(c) = Control::parse(data) else {
        return;
    };
    assert_eq!(
        Control::parse(&c.encode()),
        Ok(c),
        "parse(encode(packet)) differs"
    );
    let mut s = session::Session::new(
        session::Params {
            min_tx: 10_000,
            min_rx: 10_000,
            idle_tx: 1_000_000,
            multiplier: 3,
            passive: false,
        },
        1,
    );
    let now = std::time::Instant::now();
    s.receive(&c, now);
    let _ = s.detect_time();
    let _ = s.tx_interval();
    let _ = s.packet();
    s.expire(now + std::time::Duration::from_secs(3600));
}
