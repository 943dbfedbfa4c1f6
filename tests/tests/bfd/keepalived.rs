//! Against keepalived 2.2's `bfd_instance`; `track_bfd` weights; IPv6, the source address, TTL and drop counters.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, ecmp::bird, scenario};
use nix::sys::signal::Signal;

use super::*;

/// The states keepalived's BFD process logged for instance `director`
/// (`(director) Entering Up state`), in order.
pub(crate) fn keepalived_states(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("(director) Entering ").nth(1))
        .filter_map(|s| s.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

pub(crate) fn keepalived_conf(me: &str, peer: &str) -> String {
    format!(
        "global_defs {{\n  router_id client\n}}\nbfd_instance director {{\n  neighbor_ip {peer}\n  source_ip {me}\n  min_rx 10\n  min_tx 10\n  idle_tx 1000\n  multiplier 3\n}}\n"
    )
}

/// keepalived's own BFD (`bfd_instance`: the migration case, a director
/// beside a keepalived node): up at 10 ms x 3 without a flap, each side
/// detects the other's death.
#[test]
fn a_session_with_keepalived_bfd_comes_up_without_a_flap_and_each_side_detects_the_others_death()
-> Result<()> {
    use director_tests::peers::keepalived_bfd;
    let (_one, lab) = locked_lab(1)?;
    let (client, director) = (lab.client.ip.to_string(), lab.directors[0].ip.to_string());
    let state = lab.state_dir("director1")?;
    let (path, notified) = director_to_client(&lab)?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    let conf = keepalived_conf(&client, &director);
    let mut k = keepalived_bfd(&lab.client.ns, &lab.dir, "1", &conf)?;
    let log = lab.dir.join("keepalived-1.log");
    let last_state =
        || -> Result<String> { Ok(keepalived_states(&log).last().cloned().unwrap_or_default()) };
    let view = PeerView {
        up: &|| Ok(last_state()? == "Up"),
        down: &|| Ok(matches!(last_state()?.as_str(), "Down" | "AdminDown")),
        downs: &|| {
            Ok(keepalived_states(&log)
                .iter()
                .filter(|s| *s == "Down")
                .count() as u64)
        },
    };
    comes_up_without_a_flap(&state, &notified, "BFD to-client UP\n", &view, "keepalived")
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;

    // keepalived killed: we detect it.
    we_detect_the_peers_death(&state, "keepalived", || {
        k.stop(Signal::SIGKILL, Duration::from_secs(5))
    })?;

    // keepalived back; the director killed: keepalived detects it.
    let _k = keepalived_bfd(&lab.client.ns, &lab.dir, "2", &conf)?;
    let log2 = lab.dir.join("keepalived-2.log");
    let last2 =
        || -> Result<String> { Ok(keepalived_states(&log2).last().cloned().unwrap_or_default()) };
    let view2 = PeerView {
        up: &|| Ok(last2()? == "Up"),
        down: &|| Ok(matches!(last2()?.as_str(), "Down" | "AdminDown")),
        downs: &|| {
            Ok(keepalived_states(&log2)
                .iter()
                .filter(|s| *s == "Down")
                .count() as u64)
        },
    };
    comes_up_without_a_flap(
        &state,
        &notified,
        "BFD to-client UP\nBFD to-client DOWN\nBFD to-client UP\n",
        &view2,
        "keepalived again",
    )
    .with_context(|| std::fs::read_to_string(&log2).unwrap_or_default())?;
    the_peer_detects_our_death(&mut d, "keepalived", view2.down)?;
    // A graceful stop: keepalived told at once (AdminDown from us).
    the_peer_is_told_of_a_graceful_stop(&lab, &path, "keepalived", view2.up)?;
    Ok(())
}

/// `track_bfd` with BIRD as the peer: a weight lowers the master's priority
/// while its session is down (the backup preempts; the session back, the
/// master preempts back); weight 0 (the default) forces Fault.
#[test]
fn track_bfd_lowers_the_priority_or_forces_fault() -> Result<()> {
    let (_one, lab) = locked_lab(2)?;
    let (client, director) = (lab.client.ip.to_string(), lab.directors[0].ip.to_string());
    let bfd_table = format!(
        "\n[[bfd_instance]]\nname = \"to-client\"\nneighbor_ip = \"{client}\"\nmin_rx = 20\nmin_tx = 20\nmultiplier = 5\n"
    );
    let c1 = |track: &str| -> Result<String> {
        Ok(scenario::vrrp_config(
            &lab,
            "director1",
            150,
            &format!("version = 3\nadvert_int = 0.1\ntrack_bfd = [{track}]"),
        )? + &bfd_table)
    };
    let c2 = scenario::vrrp_config(&lab, "director2", 100, "version = 3\nadvert_int = 0.1")?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    let p1 = lab.write("d1.toml", &c1("{ name = \"to-client\", weight = -100 }")?)?;
    let p2 = lab.write("d2.toml", &c2)?;
    let (mut b, _) = bird(
        &lab.client.ns,
        &lab.dir,
        "b1",
        &bird_conf(&client, &director),
    )?;
    let mut d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    wait("BFD up", Duration::from_secs(10), || {
        Ok(session(&s1)?["state"] == "up")
    })?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    let prio = |s: &Path| -> Result<u64> {
        Ok(scenario::status(s)?["vrrp"][0]["effective_priority"]
            .as_u64()
            .unwrap_or(0))
    };
    ensure!(prio(&s1)? == 150);

    // BIRD killed: the session goes down, the master's priority drops to
    // 50, the backup (100) preempts.
    b.stop(Signal::SIGKILL, Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(5))?;
    ensure!(prio(&s1)? == 50, "effective priority {}", prio(&s1)?);
    // BIRD back: 150 again, and the master takes the VIP back.
    let (_b2, _) = bird(
        &lab.client.ns,
        &lab.dir,
        "b2",
        &bird_conf(&client, &director),
    )?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    ensure!(prio(&s1)? == 150);
    drop(_b2);

    // Weight 0 (the default): the session's death forces Fault.
    d1.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    std::fs::write(&p1, c1("\"to-client\"")?)?;
    let (mut b3, _) = bird(
        &lab.client.ns,
        &lab.dir,
        "b3",
        &bird_conf(&client, &director),
    )?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    wait("BFD up again", Duration::from_secs(10), || {
        Ok(session(&s1)?["state"] == "up")
    })?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    b3.stop(Signal::SIGKILL, Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s1, "VI_1", "fault", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    Ok(())
}

/// BFD over IPv6 between two directors with `source_ip` and `ttl = 200`:
/// the session comes up; every packet director1 sends leaves from its
/// `source_ip` with hop limit 200 (captured at director2); a packet from
/// the neighbour with hop limit 199 and a 3-byte datagram are dropped and
/// counted by reason (status `dropped`, the metric), the session staying
/// Up.
#[test]
fn ipv6_source_ip_ttl_and_drop_counters() -> Result<()> {
    use director_tests::capture;
    use std::sync::{Arc, Mutex, atomic::AtomicBool};
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let (a1, a2) = (lab.directors[0].ip6(), lab.directors[1].ip6());
    let config = |me: usize,
                  mine: std::net::Ipv6Addr,
                  peer: std::net::Ipv6Addr|
     -> Result<String> {
        let name = format!("director{}", me + 1);
        let mut c = scenario::global_config(&lab, &name)?;
        if me == 0 {
            c.push_str("metrics_address = \"10.0.0.10:9100\"\n");
        }
        c.push_str(&format!(
            "\n[[bfd_instance]]\nname = \"peer\"\nneighbor_ip = \"{peer}\"\nsource_ip = \"{mine}\"\nmin_rx = 50\nmin_tx = 50\nmultiplier = 3\nttl = 200\n"
        ));
        Ok(c)
    };
    let p1 = lab.write("d1.toml", &config(0, a1, a2)?)?;
    let p2 = lab.write("d2.toml", &config(1, a2, a1)?)?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    for s in [&s1, &s2] {
        wait("the IPv6 session up", Duration::from_secs(10), || {
            Ok(session(s)?["state"] == "up")
        })?;
    }
    let transitions = session(&s1)?["transitions"].clone();
    // What director2 receives from director1, for a second.
    let wire = {
        let (stop, seen) = (stop.clone(), seen.clone());
        lab.directors[1].ns.spawn_thread(move || {
            capture::frames(
                &stop,
                |p, d| {
                    // IPv6, UDP (next header 17), destination port 3784.
                    p == libc::ETH_P_IPV6 as u16
                        && d.len() >= 48
                        && d[6] == 17
                        && u16::from_be_bytes([d[42], d[43]]) == 3784
                },
                &seen,
            )
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    wire.join()
        .map_err(|_| anyhow::anyhow!("the capture panicked"))???;
    let frames: Vec<(u8, std::net::Ipv6Addr)> = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .filter(|f| !f.outgoing)
        .map(|f| {
            let src: [u8; 16] = f.data[8..24].try_into().unwrap_or_default();
            (f.data[7], src.into())
        })
        .collect();
    ensure!(
        frames.len() >= 10,
        "{} BFD packets in 1 s at 50 ms",
        frames.len()
    );
    ensure!(
        frames.iter().all(|&(hops, src)| hops == 200 && src == a1),
        "sent as {:?}, not hop limit 200 from {a1}",
        frames.iter().take(5).collect::<Vec<_>>()
    );

    // From the neighbour's address: a valid-looking packet one hop short,
    // and a runt.
    let (mine, theirs) = (
        session(&s2)?["local_discriminator"]
            .as_u64()
            .context("disc")? as u32,
        session(&s1)?["local_discriminator"]
            .as_u64()
            .context("disc")? as u32,
    );
    let mut packet = vec![0x20, 0xc0, 3, 24];
    for v in [mine, theirs, 50_000, 50_000, 0] {
        packet.extend(v.to_be_bytes());
    }
    lab.directors[1].ns.run(move || -> Result<()> {
        let s = std::net::UdpSocket::bind((a2, 0))?;
        socket2::SockRef::from(&s).set_unicast_hops_v6(199)?;
        s.send_to(&packet, (a1, 3784))?;
        s.send_to(&[0x20, 0xc0, 3], (a1, 3784))?;
        Ok(())
    })??;
    let dropped = wait("both drops counted", Duration::from_secs(3), || {
        let d = &session(&s1)?["dropped"];
        Ok(d["ttl"].as_u64() >= Some(1) && d["short"].as_u64() >= Some(1))
    });
    let s = session(&s1)?;
    dropped.with_context(|| format!("{s}"))?;
    ensure!(
        s["state"] == "up" && s["transitions"] == transitions,
        "the session moved: {s}"
    );
    let addr = std::net::SocketAddr::from(([10, 0, 0, 10], 9100));
    let metrics = lab
        .client
        .run(move || director_tests::http::get(addr, "/metrics", Duration::from_secs(3)))??;
    for reason in ["ttl", "short"] {
        ensure!(
            metrics.body.lines().any(|l| {
                l.starts_with("director_bfd_packets_dropped_total")
                    && l.contains(&format!("reason=\"{reason}\""))
                    && !l.ends_with(" 0")
            }),
            "no {reason} drops in the metrics:\n{}",
            metrics.body
        );
    }
    Ok(())
}
