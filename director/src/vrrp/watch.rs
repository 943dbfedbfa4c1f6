//! `director watch-vrrp IFACE`: the VRRP adverts seen on a link, grouped by
//! virtual router (who advertises, priority, interval, addresses), with
//! two advertisers for one virtual router flagged as a split brain (only
//! masters advertise).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    net::{NetError, VrrpSocket},
    packet::{Advert, TTL},
};

/// One advertiser of a virtual router.
#[derive(Debug, Clone, Serialize)]
pub struct Advertiser {
    pub address: IpAddr,
    pub version: u8,
    pub priority: u8,
    /// Seconds.
    pub advert_int: f64,
    pub addresses: Vec<IpAddr>,
    pub adverts: u64,
    /// Adverts whose TTL/hop limit was not 255 (they would be dropped).
    pub bad_ttl: u64,
    /// Seconds since its last advert.
    pub last_seen: f64,
    #[serde(skip)]
    seen: Option<Instant>,
}

/// One virtual router on the link.
#[derive(Debug, Clone, Serialize)]
pub struct Router {
    pub vrid: u8,
    pub family: &'static str,
    pub advertisers: Vec<Advertiser>,
    /// More than one router advertised (with priority > 0) within three
    /// advert intervals of each other: two masters.
    pub split_brain: bool,
}

/// What was seen.
#[derive(Debug, Default)]
pub struct Watch {
    routers: BTreeMap<(bool, u8), BTreeMap<IpAddr, Advertiser>>,
    /// Packets that did not decode.
    pub malformed: u64,
}

impl Watch {
    /// Records one received packet.
    pub fn record(&mut self, src: IpAddr, dst: IpAddr, ttl: u8, payload: &[u8]) {
        let v6 = src.is_ipv6();
        let Ok(a) = Advert::decode(payload, v6, src, dst) else {
            self.malformed += 1;
            return;
        };
        let entry = self
            .routers
            .entry((v6, a.vrid))
            .or_default()
            .entry(src)
            .or_insert(Advertiser {
                address: src,
                version: a.version.number(),
                priority: a.priority,
                advert_int: 0.0,
                addresses: vec![],
                adverts: 0,
                bad_ttl: 0,
                last_seen: 0.0,
                seen: None,
            });
        entry.version = a.version.number();
        entry.priority = a.priority;
        entry.advert_int = f64::from(a.interval_cs) / 100.0;
        entry.addresses = a.addresses;
        entry.adverts += 1;
        if ttl != TTL {
            entry.bad_ttl += 1;
        }
        entry.seen = Some(Instant::now());
    }

    /// The current picture.
    pub fn routers(&self) -> Vec<Router> {
        let now = Instant::now();
        self.routers
            .iter()
            .map(|((v6, vrid), ads)| {
                let advertisers: Vec<Advertiser> = ads
                    .values()
                    .map(|a| Advertiser {
                        last_seen: a
                            .seen
                            .map(|s| now.duration_since(s).as_secs_f64())
                            .unwrap_or(f64::INFINITY),
                        ..a.clone()
                    })
                    .collect();
                // Live masters: advertising with priority > 0 recently.
                let live = advertisers
                    .iter()
                    .filter(|a| a.priority > 0 && a.last_seen <= 3.0 * a.advert_int.max(0.01) + 0.5)
                    .count();
                Router {
                    vrid: *vrid,
                    family: if *v6 { "ipv6" } else { "ipv4" },
                    advertisers,
                    split_brain: live > 1,
                }
            })
            .collect()
    }
}

/// A table of the routers seen.
pub fn render(routers: &[Router]) -> String {
    let mut out = format!(
        "{:<5} {:<5} {:<28} {:>4} {:>8} {:>9} {:>8} {:>7}  {}\n",
        "VRID", "Fam", "Advertiser", "Ver", "Priority", "Interval", "Adverts", "Seen", "Addresses"
    );
    for r in routers {
        for a in &r.advertisers {
            out.push_str(&format!(
                "{:<5} {:<5} {:<28} {:>4} {:>8} {:>8}s {:>8} {:>6.1}s  {}\n",
                r.vrid,
                r.family,
                a.address.to_string(),
                a.version,
                a.priority,
                a.advert_int,
                a.adverts,
                a.last_seen,
                a.addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if r.split_brain {
            out.push_str(&format!(
                "      SPLIT BRAIN: {} routers advertise as master for VRID {} ({})\n",
                r.advertisers.len(),
                r.vrid,
                r.family
            ));
        }
    }
    out
}

/// Watches `interface` for `duration` (forever with `None`), calling
/// `report` about once a second.
pub async fn watch(
    interface: &str,
    ifindex: u32,
    duration: Option<Duration>,
    mut report: impl FnMut(&Watch),
) -> Result<Watch, NetError> {
    let v4 = VrrpSocket::listen(interface, ifindex, false)?;
    let v6 = VrrpSocket::listen(interface, ifindex, true).ok();
    let mut w = Watch::default();
    let end = duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let recv6 = async {
            match &v6 {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = v4.recv() => if let Ok(p) = r { w.record(p.src, p.dst, p.ttl, &p.payload) },
            r = recv6 => if let Ok(p) = r { w.record(p.src, p.dst, p.ttl, &p.payload) },
            _ = tick.tick() => report(&w),
            _ = tokio::time::sleep_until(end.unwrap_or(far)) => return Ok(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(vrid: u8, priority: u8) -> Vec<u8> {
        Advert {
            version: crate::config::Version::V3,
            vrid,
            priority,
            interval_cs: 100,
            addresses: vec!["10.0.0.100".parse().expect("ip")],
            auth: None,
        }
        .encode(
            "10.0.0.1".parse().expect("ip"),
            "224.0.0.18".parse().expect("ip"),
        )
    }

    #[test]
    fn groups_by_router_and_flags_two_masters() {
        let mut w = Watch::default();
        let dst: IpAddr = "224.0.0.18".parse().expect("ip");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        // Checksums cover the source: encode from each source.
        w.record(a, dst, 255, &advert(51, 150));
        assert!(!w.routers()[0].split_brain);
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let from_b = Advert {
            version: crate::config::Version::V3,
            vrid: 51,
            priority: 100,
            interval_cs: 100,
            addresses: vec!["10.0.0.100".parse().expect("ip")],
            auth: None,
        }
        .encode(b, dst);
        w.record(b, dst, 64, &from_b);
        let r = w.routers();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].advertisers.len(), 2);
        assert!(r[0].split_brain);
        assert_eq!(r[0].advertisers[1].bad_ttl, 1);
        assert!(render(&r).contains("SPLIT BRAIN"));
        w.record(a, dst, 255, b"\x00");
        assert_eq!(w.malformed, 1);
    }
}
