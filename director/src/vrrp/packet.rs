//! VRRP advertisements on the wire: version 2 (RFC 3768 section 5) and
//! version 3 (RFC 5798 section 5), IPv4 and IPv6.
//!
//! ```text
//!  v2:  | ver=2 type=1 | VRID | priority | count | auth type | adver int (s) | checksum |
//!  v3:  | ver=3 type=1 | VRID | priority | count | rsvd(4) max adver int (12, cs) | checksum |
//!       | addresses (4 or 16 bytes each) ... | v2 only: 8 bytes of authentication data |
//! ```
//! The v2 checksum covers the VRRP message; the v3 checksum also covers the
//! IPv4/IPv6 pseudo-header (RFC 5798 section 5.2.8).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Version;
pub use crate::net::wire::{checksum, pseudo_header};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group of VRRP.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group of VRRP.
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Adverts are sent, and must arrive, with this TTL / hop limit.
pub const TTL: u8 = 255;
/// Authentication type 1: simple text password (RFC 2338, v2 only).
pub const AUTH_PASS: u8 = 1;

/// A decoded advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2: whole seconds x 100).
    pub interval_cs: u16,
    pub addresses: Vec<IpAddr>,
    /// v2 authentication: type and the 8 bytes of data.
    pub auth: Option<(u8, [u8; 8])>,
}

/// Why a received packet was dropped (each is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Reject {
    #[error("packet too short")]
    Short,
    #[error("TTL or hop limit is not 255")]
    Ttl,
    #[error("wrong VRRP version")]
    Version,
    #[error("not an advertisement")]
    Type,
    #[error("bad checksum")]
    Checksum,
    #[error("address count does not match the length")]
    Length,
    #[error("authentication failed")]
    Auth,
    #[error("advertisement interval is 0, or differs (v2)")]
    Interval,
    #[error("virtual addresses differ from ours")]
    Addresses,
    #[error("not our virtual router")]
    Vrid,
    #[error("our own advertisement")]
    Own,
    #[error("unexpected source")]
    Source,
}

impl Reject {
    /// Every reason, so that metrics export each (at 0 until it happens:
    /// a query by reason has series before the first drop).
    pub const ALL: [Reject; 12] = [
        Reject::Short,
        Reject::Ttl,
        Reject::Version,
        Reject::Type,
        Reject::Checksum,
        Reject::Length,
        Reject::Auth,
        Reject::Interval,
        Reject::Addresses,
        Reject::Vrid,
        Reject::Own,
        Reject::Source,
    ];

    /// A stable label for metrics and status.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Short => "short",
            Reject::Ttl => "ttl",
            Reject::Version => "version",
            Reject::Type => "type",
            Reject::Checksum => "checksum",
            Reject::Length => "length",
            Reject::Auth => "auth",
            Reject::Interval => "interval",
            Reject::Addresses => "addresses",
            Reject::Vrid => "vrid",
            Reject::Own => "own",
            Reject::Source => "source",
        }
    }
}

impl Advert {
    /// Encodes the advertisement sent from `src` to `dst` (the addresses
    /// matter for the v3 checksum).
    pub fn encode(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut b = vec![
            (self.version.number() << 4) | 1,
            self.vrid,
            self.priority,
            self.addresses.len() as u8,
        ];
        if self.version == Version::V2 {
            let (auth_type, _) = self.auth.unwrap_or((0, [0; 8]));
            b.push(auth_type);
            b.push((self.interval_cs / 100).max(1) as u8);
        } else {
            b.extend_from_slice(&(self.interval_cs & 0x0fff).to_be_bytes());
        }
        b.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            match a {
                IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            b.extend_from_slice(&self.auth.map(|(_, d)| d).unwrap_or([0; 8]));
        }
        let sum = if self.version == Version::V2 {
            checksum(&[&b])
        } else {
            checksum(&[&pseudo_header(src, dst, IPPROTO_VRRP, b.len()), &b])
        };
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Decodes and checks an advertisement (the VRRP message, without the
    /// IP header). `v6` says which address family the packet came in.
    pub fn decode(bytes: &[u8], v6: bool, src: IpAddr, dst: IpAddr) -> Result<Advert, Reject> {
        if bytes.len() < 8 {
            return Err(Reject::Short);
        }
        let Ok(version) = Version::try_from(bytes[0] >> 4) else {
            return Err(Reject::Version);
        };
        if v6 && version == Version::V2 {
            return Err(Reject::Version); // VRRPv2 is IPv4 only
        }
        if bytes[0] & 0x0f != 1 {
            return Err(Reject::Type);
        }
        let count = usize::from(bytes[3]);
        let alen = if v6 { 16 } else { 4 };
        let auth_len = if version == Version::V2 { 8 } else { 0 };
        let need = 8 + count * alen + auth_len;
        if bytes.len() < need {
            return Err(Reject::Length);
        }
        // Trailing bytes beyond the message are ignored (RFC 3768 adds none;
        // some senders pad), but the checksum covers what we parse.
        let msg = &bytes[..need];
        let ok = if version == Version::V2 {
            checksum(&[msg]) == 0
        } else {
            checksum(&[&pseudo_header(src, dst, IPPROTO_VRRP, msg.len()), msg]) == 0
        };
        if !ok {
            return Err(Reject::Checksum);
        }
        let interval_cs = if version == Version::V2 {
            u16::from(bytes[5]) * 100
        } else {
            u16::from_be_bytes([bytes[4], bytes[5]]) & 0x0fff
        };
        // An interval of 0 is not a VRRP interval: a backup adopting it
        // (v3) would declare the master down at once, again and again.
        if interval_cs == 0 {
            return Err(Reject::Interval);
        }
        let addresses = (0..count)
            .map(|i| {
                let a = &bytes[8 + i * alen..8 + (i + 1) * alen];
                if v6 {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(a);
                    IpAddr::V6(Ipv6Addr::from(o))
                } else {
                    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
                }
            })
            .collect();
        let auth = (version == Version::V2).then(|| {
            let mut d = [0u8; 8];
            d.copy_from_slice(&bytes[need - 8..need]);
            (bytes[4], d)
        });
        Ok(Advert {
            version,
            vrid: bytes[1],
            priority: bytes[2],
            interval_cs,
            addresses,
            auth,
        })
    }
}

/// What an instance expects of the adverts it hears (RFC 5798 7.1,
/// RFC 3768 7.1): the checks that need its configuration, beside the
/// decoder's.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// Our own source addresses (our adverts come back to us).
    pub own: &'a [IpAddr],
    pub vrid: u8,
    pub version: Version,
    /// v2: the interval every router must use.
    pub interval_cs: u16,
    /// v2: the password (`authentication`), if any.
    pub password: Option<[u8; 8]>,
    /// `unicast_peer`: only these may speak (empty: anyone).
    pub peers: &'a [IpAddr],
    /// Our virtual addresses, sorted.
    pub addresses: &'a [IpAddr],
}

/// Decodes and checks an advert that arrived from `src` to `dst` with
/// `ttl`: every reason to drop it is a [`Reject`].
pub fn accept(
    e: &Expect<'_>,
    payload: &[u8],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
) -> Result<Advert, Reject> {
    if e.own.contains(&src) {
        return Err(Reject::Own);
    }
    // RFC 5798 7.1's first check, and the cheapest: a packet from off the
    // link (a flood at our unicast address) is dropped before any decoding.
    if ttl != TTL {
        return Err(Reject::Ttl);
    }
    let advert = Advert::decode(payload, src.is_ipv6(), src, dst)?;
    if advert.vrid != e.vrid {
        return Err(Reject::Vrid);
    }
    if advert.version != e.version {
        return Err(Reject::Version);
    }
    if !e.peers.is_empty() && !e.peers.contains(&src) {
        return Err(Reject::Source);
    }
    if advert.version == Version::V2 {
        if advert.interval_cs != e.interval_cs {
            return Err(Reject::Interval);
        }
        let (auth_type, data) = advert.auth.unwrap_or((0, [0; 8]));
        match e.password {
            Some(p) if auth_type != AUTH_PASS || data != p => return Err(Reject::Auth),
            Some(_) => {}
            None if auth_type != 0 => return Err(Reject::Auth),
            None => {}
        }
    }
    // Priority 0 (a master leaving) and 255 (an owner) are heard whatever
    // addresses they carry.
    let mut theirs = advert.addresses.clone();
    theirs.sort();
    if advert.priority != 255 && advert.priority != 0 && e.addresses != theirs.as_slice() {
        return Err(Reject::Addresses);
    }
    Ok(advert)
}

/// The password as carried in v2 authentication data (8 bytes, padded).
pub fn auth_data(password: &str) -> [u8; 8] {
    let mut d = [0u8; 8];
    for (o, b) in d.iter_mut().zip(password.bytes()) {
        *o = b;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// A VRRPv2 advert laid out as keepalived sends it (vrid 51, priority
    /// 150, interval 1 s, VIP 10.0.0.100, auth PASS "secret"); the checksum
    /// is filled in by `fix_v2_checksum`. Captured bytes are in
    /// `tests/vrrp_captures.rs`.
    const KEEPALIVED_V2: [u8; 20] = [
        0x21, 0x33, 0x96, 0x01, 0x01, 0x01, 0x00, 0x00, 10, 0, 0, 100, b's', b'e', b'c', b'r',
        b'e', b't', 0, 0,
    ];

    fn fix_v2_checksum(mut b: Vec<u8>) -> Vec<u8> {
        b[6] = 0;
        b[7] = 0;
        let s = checksum(&[&b]);
        b[6..8].copy_from_slice(&s.to_be_bytes());
        b
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 -> sum ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
        // Odd lengths pad with a zero byte.
        assert_eq!(checksum(&[&[0x01]]), !0x0100);
    }

    #[test]
    fn v2_roundtrip_and_keepalived_bytes() {
        let wire = fix_v2_checksum(KEEPALIVED_V2.to_vec());
        let a = Advert::decode(&wire, false, ip("10.0.0.11"), ip("224.0.0.18")).expect("decodes");
        assert_eq!(a.version, Version::V2);
        assert_eq!(a.vrid, 51);
        assert_eq!(a.priority, 150);
        assert_eq!(a.interval_cs, 100);
        assert_eq!(a.addresses, vec![ip("10.0.0.100")]);
        assert_eq!(a.auth, Some((AUTH_PASS, auth_data("secret"))));
        assert_eq!(a.encode(ip("10.0.0.11"), ip("224.0.0.18")), wire);
    }

    #[test]
    fn v3_roundtrip_ipv4_and_ipv6() {
        for (src, dst, addrs) in [
            (
                "10.0.0.11",
                "224.0.0.18",
                vec![ip("10.0.0.100"), ip("10.0.0.101")],
            ),
            ("fe80::1", "ff02::12", vec![ip("fd00::100")]),
        ] {
            let a = Advert {
                version: Version::V3,
                vrid: 7,
                priority: 200,
                interval_cs: 10,
                addresses: addrs,
                auth: None,
            };
            let v6 = src.contains(':');
            let wire = a.encode(ip(src), ip(dst));
            assert_eq!(Advert::decode(&wire, v6, ip(src), ip(dst)), Ok(a.clone()));
            // The pseudo-header is covered: another source fails.
            let other = if v6 { "fe80::2" } else { "10.0.0.12" };
            assert_eq!(
                Advert::decode(&wire, v6, ip(other), ip(dst)),
                Err(Reject::Checksum)
            );
        }
    }

    #[test]
    fn v3_ipv4_wire_layout() {
        let a = Advert {
            version: Version::V3,
            vrid: 1,
            priority: 100,
            interval_cs: 100,
            addresses: vec![ip("192.168.1.1")],
            auth: None,
        };
        let w = a.encode(ip("192.168.1.2"), ip("224.0.0.18"));
        assert_eq!(&w[..6], &[0x31, 1, 100, 1, 0x00, 0x64]);
        assert_eq!(&w[8..], &[192, 168, 1, 1]);
        assert_eq!(w.len(), 12);
    }

    #[test]
    fn receive_checks_name_every_reason() {
        let (us, peer, other) = (ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12"));
        let vips = [ip("10.0.0.100")];
        let v2 = |prio: u8, interval_cs: u16, addrs: Vec<IpAddr>, pass: Option<&str>| {
            Advert {
                version: Version::V2,
                vrid: 51,
                priority: prio,
                interval_cs,
                addresses: addrs,
                auth: pass.map(|p| (AUTH_PASS, auth_data(p))),
            }
            .encode(peer, ip("224.0.0.18"))
        };
        let own = [us];
        let expect = Expect {
            own: &own,
            vrid: 51,
            version: Version::V2,
            interval_cs: 100,
            password: Some(auth_data("secret")),
            peers: &[],
            addresses: &vips,
        };
        let dst = ip("224.0.0.18");
        let good = v2(150, 100, vips.to_vec(), Some("secret"));
        assert!(accept(&expect, &good, peer, dst, 255).is_ok());
        assert_eq!(accept(&expect, &good, us, dst, 255), Err(Reject::Own));
        assert_eq!(accept(&expect, &good, peer, dst, 254), Err(Reject::Ttl));
        let vrid = Expect {
            vrid: 52,
            ..expect.clone()
        };
        assert_eq!(accept(&vrid, &good, peer, dst, 255), Err(Reject::Vrid));
        let v3 = Expect {
            version: Version::V3,
            ..expect.clone()
        };
        assert_eq!(accept(&v3, &good, peer, dst, 255), Err(Reject::Version));
        let unicast = [other];
        let peers = Expect {
            peers: &unicast,
            ..expect.clone()
        };
        assert_eq!(accept(&peers, &good, peer, dst, 255), Err(Reject::Source));
        let slow = v2(150, 200, vips.to_vec(), Some("secret"));
        assert_eq!(
            accept(&expect, &slow, peer, dst, 255),
            Err(Reject::Interval)
        );
        let wrong = v2(150, 100, vips.to_vec(), Some("guess"));
        assert_eq!(accept(&expect, &wrong, peer, dst, 255), Err(Reject::Auth));
        let none = v2(150, 100, vips.to_vec(), None);
        assert_eq!(accept(&expect, &none, peer, dst, 255), Err(Reject::Auth));
        let open = Expect {
            password: None,
            ..expect.clone()
        };
        assert_eq!(accept(&open, &good, peer, dst, 255), Err(Reject::Auth));
        assert!(accept(&open, &none, peer, dst, 255).is_ok());
        let elsewhere = v2(150, 100, vec![ip("10.0.0.200")], Some("secret"));
        assert_eq!(
            accept(&expect, &elsewhere, peer, dst, 255),
            Err(Reject::Addresses)
        );
        // A master leaving (priority 0) and an owner (255) are heard
        // whatever they carry.
        for prio in [0, 255] {
            let p = v2(prio, 100, vec![ip("10.0.0.200")], Some("secret"));
            assert!(
                accept(&expect, &p, peer, dst, 255).is_ok(),
                "priority {prio}"
            );
        }
    }

    #[test]
    fn rejects_bad_packets() {
        let src = ip("10.0.0.11");
        let dst = ip("224.0.0.18");
        let good = fix_v2_checksum(KEEPALIVED_V2.to_vec());
        assert_eq!(
            Advert::decode(&good[..7], false, src, dst),
            Err(Reject::Short)
        );
        assert_eq!(
            Advert::decode(&good[..19], false, src, dst),
            Err(Reject::Length)
        );
        let mut bad = good.clone();
        bad[2] = 200; // priority changed, checksum not
        assert_eq!(Advert::decode(&bad, false, src, dst), Err(Reject::Checksum));
        let mut bad = good.clone();
        bad[0] = 0x41;
        assert_eq!(Advert::decode(&bad, false, src, dst), Err(Reject::Version));
        let mut bad = good.clone();
        bad[0] = 0x22;
        assert_eq!(Advert::decode(&bad, false, src, dst), Err(Reject::Type));
        assert_eq!(Advert::decode(&good, true, src, dst), Err(Reject::Version));
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            assert!(Advert::decode(&good[..n], false, src, dst).is_err());
        }
    }
}
