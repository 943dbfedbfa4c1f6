//! The takeover path of a new master: what it tells the link, in which
//! order. When the XDP program serves every address of an instance, the
//! gratuitous ARPs go out as soon as the instance becomes master, before
//! the addresses are added (clients move a netlink round trip per address
//! sooner: XDP forwards the VIP's services without the address being
//! local); an instance with an address XDP does not serve adds its
//! addresses first (the kernel must own them before clients are sent
//! there). Watched from inside the director's namespace with the kernel's
//! clocks: each GARP's transmit timestamp, each address as rtnetlink
//! reports it added.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use director_tests::{Lab, LabSpec, capture, scenario};

/// Addresses per instance: enough that adding them takes milliseconds, so
/// the order shows whatever the watchers' own delays.
const PER_INSTANCE: u8 = 48;

fn vips(first: u8) -> Vec<Ipv4Addr> {
    (0..PER_INSTANCE)
        .map(|i| Ipv4Addr::new(10, 0, 0, first + i))
        .collect()
}

fn instance(name: &str, vrid: u8, vips: &[Ipv4Addr]) -> String {
    let list: Vec<String> = vips.iter().map(|v| format!("\"{v}/32\"")).collect();
    format!(
        "\n[[vrrp_instance]]\nname = \"{name}\"\nvirtual_router_id = {vrid}\npriority = 100\nversion = 3\nadvert_int = 1\nvirtual_ipaddress = [{}]\n",
        list.join(", ")
    )
}

#[test]
fn xdp_served_addresses_are_announced_before_they_are_added() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let served = vips(100);
    let unserved = vips(160);
    let servers = vec![lab.real_servers[0].ip.to_string()];
    let mut config = scenario::global_config(&lab, "director1")?;
    config.push_str(&instance("SERVED", 61, &served));
    config.push_str(&instance("UNSERVED", 62, &unserved));
    // Every SERVED address has a service; one UNSERVED address has none.
    for v in served.iter().chain(&unserved[1..]) {
        config.push_str(&scenario::virtual_server(&v.to_string(), 80, &servers, &[]));
    }
    let path = lab.write("director1.toml", &config)?;

    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(Mutex::new(Vec::new()));
    let added = Arc::new(Mutex::new(Vec::new()));
    let ns = &lab.directors[0].ns;
    let wire = {
        let (stop, frames) = (stop.clone(), frames.clone());
        ns.spawn_thread(move || capture::frames(&stop, |p, _| p == libc::ETH_P_ARP as u16, &frames))
    };
    let table = {
        let (stop, added) = (stop.clone(), added.clone());
        ns.spawn_thread(move || capture::added_addresses(&stop, &added))
    };
    // Both watchers listening before the daemon starts.
    std::thread::sleep(Duration::from_millis(200));
    let _director = scenario::spawn_director(&lab, 0, &path)?;
    let state = lab.state_dir("director1")?;
    // Alone on the link: each instance becomes master after its
    // master-down interval (3.6 s at 1 s adverts).
    for name in ["SERVED", "UNSERVED"] {
        scenario::wait_vrrp_state(&state, name, "master", Duration::from_secs(15))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for (what, h) in [("frame", wire), ("address", table)] {
        h.join()
            .map_err(|_| anyhow!("the {what} watcher panicked"))???;
    }
    let frames = frames.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let added = added.lock().map_err(|_| anyhow!("poisoned"))?.clone();

    // Per instance: when its first address was reported added, when its
    // first and its last address was first announced.
    let order = |vips: &[Ipv4Addr]| -> Result<(Instant, Instant, Instant)> {
        let mut first_garps = Vec::new();
        for v in vips {
            let garp = frames
                .iter()
                .find(|f| f.outgoing && f.is_garp_for(*v))
                .with_context(|| format!("no gratuitous ARP for {v}"))?;
            first_garps.push(garp.at);
            ensure!(
                added.iter().any(|(_, a)| *a == IpAddr::V4(*v)),
                "{v} was never added"
            );
        }
        let first_added = added
            .iter()
            .filter(|(_, a)| vips.iter().any(|v| IpAddr::V4(*v) == *a))
            .map(|(t, _)| *t)
            .min()
            .context("no address added")?;
        let (Some(first), Some(last)) = (
            first_garps.iter().min().copied(),
            first_garps.iter().max().copied(),
        ) else {
            anyhow::bail!("no gratuitous ARP");
        };
        Ok((first_added, first, last))
    };
    let ms = |a: Instant, b: Instant| {
        (a.saturating_duration_since(b).as_secs_f64()
            - b.saturating_duration_since(a).as_secs_f64())
            * 1000.0
    };

    // Served: every address announced before the first one was added (the
    // report is read after the kernel added it, so this cannot pass by a
    // watcher's delay).
    let (added_at, _, last_garp) = order(&served)?;
    ensure!(
        last_garp < added_at,
        "XDP serves every address of SERVED, yet its last first announcement came {:.3} ms after its first address was added (announced after adding)",
        ms(last_garp, added_at)
    );
    // Not all served: the addresses first, then the announcements.
    let (added_at, first_garp, _) = order(&unserved)?;
    ensure!(
        added_at < first_garp,
        "UNSERVED has an address XDP does not serve, yet it was announced {:.3} ms before its first address was added",
        ms(added_at, first_garp)
    );
    Ok(())
}
