//! VRRP adverts captured from keepalived 2.2.7 (Debian) in a lab namespace
//! (`tcpdump -w`, then `tshark -x`): our decoder must accept them, and our
//! encoder must produce the same bytes.

use std::net::IpAddr;

use director::vrrp::packet::{AUTH_PASS, Advert, Reject, auth_data};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// VRRPv2, vrid 51, priority 150, 1 s, auth PASS "secret", VIP 10.9.0.100,
/// from 10.9.0.1 to 224.0.0.18, TTL 255.
const V2: [u8; 20] = [
    0x21, 0x33, 0x96, 0x01, 0x01, 0x01, 0x01, 0x11, 0x0a, 0x09, 0x00, 0x64, 0x73, 0x65, 0x63, 0x72,
    0x65, 0x74, 0x00, 0x00,
];
/// VRRPv3 over IPv4, same router, no authentication.
const V3: [u8; 12] = [
    0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x43, 0x61, 0x0a, 0x09, 0x00, 0x64,
];
/// VRRPv3 over IPv6 from fe80::1 to ff02::12, VIP fd00::100.
const V6: [u8; 24] = [
    0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x3c, 0x47, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
];

#[test]
fn keepalived_v2() {
    let (src, dst) = (ip("10.9.0.1"), ip("224.0.0.18"));
    let a = Advert::decode(&V2, false, src, dst).expect("keepalived's v2 advert decodes");
    assert_eq!(
        (a.version.number(), a.vrid, a.priority, a.interval_cs),
        (2, 51, 150, 100)
    );
    assert_eq!(a.addresses, vec![ip("10.9.0.100")]);
    assert_eq!(a.auth, Some((AUTH_PASS, auth_data("secret"))));
    assert_eq!(a.encode(src, dst), V2.to_vec());
}

#[test]
fn keepalived_v3_ipv4() {
    let (src, dst) = (ip("10.9.0.1"), ip("224.0.0.18"));
    let a = Advert::decode(&V3, false, src, dst).expect("keepalived's v3 advert decodes");
    assert_eq!(
        (a.version.number(), a.vrid, a.priority, a.interval_cs),
        (3, 51, 150, 100)
    );
    assert_eq!(a.addresses, vec![ip("10.9.0.100")]);
    assert_eq!(a.auth, None);
    assert_eq!(a.encode(src, dst), V3.to_vec());
    // The v3 checksum covers the pseudo-header.
    assert_eq!(
        Advert::decode(&V3, false, ip("10.9.0.2"), dst),
        Err(Reject::Checksum)
    );
}

#[test]
fn keepalived_v3_ipv6() {
    let (src, dst) = (ip("fe80::1"), ip("ff02::12"));
    let a = Advert::decode(&V6, true, src, dst).expect("keepalived's v3 IPv6 advert decodes");
    assert_eq!(
        (a.version.number(), a.vrid, a.priority, a.interval_cs),
        (3, 51, 150, 100)
    );
    assert_eq!(a.addresses, vec![ip("fd00::100")]);
    assert_eq!(a.encode(src, dst), V6.to_vec());
}

#[test]
fn corrupted_captures_are_rejected() {
    let (src, dst) = (ip("10.9.0.1"), ip("224.0.0.18"));
    let mut bad = V2;
    bad[7] ^= 1;
    assert_eq!(Advert::decode(&bad, false, src, dst), Err(Reject::Checksum));
    assert_eq!(
        Advert::decode(&V3[..11], false, src, dst),
        Err(Reject::Length)
    );
    assert_eq!(
        Advert::decode(&V3[..4], false, src, dst),
        Err(Reject::Short)
    );
}
