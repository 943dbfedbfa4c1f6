//! Faults a production director meets, each reproduced here first: health
//! state across reloads, fragments placed like the rest of their flow.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};

/// A reload that changes only a check's timing keeps its verdict: a dead
/// server stays out (without this it came back until its first new check,
/// which may be `delay_loop` away), and with `alpha` a live one stays in.
#[test]
fn a_reload_of_check_timings_keeps_health() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let config = |delay: u32| -> Result<String> {
        let mut c = scenario::global_config(&lab, "director1")?;
        for (port, alpha) in [(80, false), (8080, true)] {
            c.push_str(&format!(
                "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = {port}\nalpha = {alpha}\ndelay_loop = {delay}\n"
            ));
            for rs in &lab.real_servers {
                c.push_str(&format!(
                    "\n  [[virtual_server.real_server]]\n  address = \"{}\"\n  [virtual_server.real_server.tcp_check]\n  connect_timeout = {delay}\n  warmup = {}\n",
                    rs.ip,
                    if delay == 1 { 0 } else { 30 }
                ));
            }
        }
        Ok(c)
    };
    let (first, second) = (config(1)?, config(2)?);
    let path = lab.write("director1.toml", &first)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let healthy = |s: &serde_json::Value, vs: usize, rs: usize| {
        s["virtual_servers"][vs]["real_servers"][rs]["healthy"].as_bool()
    };
    scenario::wait_status(&state, Duration::from_secs(10), |s| {
        scenario::all_resolved(s) && (0..2).all(|v| (0..2).all(|r| healthy(s, v, r) == Some(true)))
    })?;
    lab.stop_http(1)?;
    scenario::wait_status(&state, Duration::from_secs(10), |s| {
        healthy(s, 0, 1) == Some(false) && healthy(s, 1, 1) == Some(false)
    })?;
    // New timings; the first new checks are up to 30 s away (warmup).
    std::fs::write(&path, second)?;
    let (ok, err) = scenario::director_cli(&["reload"], &state)?;
    ensure!(ok, "reload: {err}");
    let s = scenario::status(&state)?;
    for vs in 0..2 {
        ensure!(healthy(&s, vs, 0) == Some(true), "rs1 dropped out: {s}");
        ensure!(healthy(&s, vs, 1) == Some(false), "dead rs2 came back: {s}");
    }
    for port in [80, 8080] {
        let vip = SocketAddr::from((VIP, port));
        let t = lab
            .client
            .run(move || http::hammer(vip, 20, Duration::from_secs(1)))?;
        ensure!(t.ok == 20, "port {port} after the reload: {t:?}");
    }
    Ok(())
}

/// A BIRD that accepts its control connection and never answers delays
/// only the announcements: the daemon keeps answering (every status well
/// within BIRD's 10 s timeout) and forwarding. (BIRD was asked on the daemon's loop, with a
/// 10 s timeout.)
#[test]
fn a_hung_bird_never_stalls_the_daemon() -> Result<()> {
    use std::os::unix::net::UnixListener;
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let socket = lab.path("bird.ctl");
    let listener = UnixListener::bind(&socket)?;
    // Accept, keep, never answer.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let mut c = scenario::global_config(&lab, "director1")?;
    c.push_str(&format!(
        "bgp = {{ bird_socket = \"{}\", withdraw_wait = 0 }}\n",
        socket.display()
    ));
    c.push_str(&scenario::virtual_server(
        &VIP.to_string(),
        80,
        &servers,
        &[],
    ));
    let path = lab.write("director1.toml", &c)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let mut worst = Duration::ZERO;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let t = std::time::Instant::now();
        scenario::status(&state)?;
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A daemon asking BIRD on its loop would stall for BIRD's 10 s
    // timeout; the bound is far from both that and from a performance
    // figure (a status here spawns the CLI on a busy 2-CPU machine).
    ensure!(
        worst < Duration::from_secs(2),
        "status took {worst:?} while BIRD hung (a stall on BIRD takes 10 s)"
    );
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(1)))?;
    ensure!(t.ok == 10, "{t:?}");
    Ok(())
}

/// Flow sync with a full flow table (262,144 flows, two thirds of them
/// exceptions) every 50 ms: the daemon keeps answering in under a quarter of
/// one walk of the table timed on the same machine (the table was once
/// walked on its loop, two system calls per flow, every round; the flows
/// are now read, diffed, authenticated and sent on a blocking thread). Seen
/// here: 7-9 ms against a 690 ms walk.
#[test]
fn flow_sync_with_a_full_flow_table_never_stalls_the_daemon() -> Result<()> {
    use director_tests::bpfmap::PinnedMap;
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let mut c = scenario::global_config(&lab, "director1")?;
    c.push_str(
        "flow_sync = { listen = \"10.0.0.10:8848\", peers = [\"10.0.0.99:8848\"], key = \"lab-sync-key\", interval = 0.05 }\n",
    );
    c.push_str(&scenario::virtual_server(
        &VIP.to_string(),
        80,
        &servers,
        &[],
    ));
    let path = lab.write("director1.toml", &c)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let s = scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let pins = std::path::PathBuf::from(s["pin_dir"].as_str().unwrap_or_default());
    let flows = PinnedMap::open(&pins.join("FLOWS"))?;
    // The table's seed, from the pinned settings (offset 40: after the UDP
    // timeout, MAC, MTU, tunnel source, new-flow limit, IPv6 tunnel source).
    let settings = PinnedMap::open(&pins.join("SETTINGS"))?;
    let bytes = settings.lookup(&0u32.to_ne_bytes(), size_of::<director_common::Settings>())?;
    let seed = u32::from_ne_bytes(bytes[40..44].try_into()?);
    let entries = s["flow_table_size"].as_u64().context("flow_table_size")? as u32;
    let buckets = entries / director_common::FLOW_WAYS;
    // Flows client -> VIP:80, all on real server slot 0 (generation 1),
    // each in a free way of its first bucket (as the program records).
    let mut used = std::collections::HashMap::<u32, u32>::new();
    let mut written = 0;
    for i in 0..262_144u32 {
        let mut key = director_common::FlowKey::default();
        key.src[..4].copy_from_slice(&[10, 200 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        key.dst[..4].copy_from_slice(&VIP.octets());
        key.sport = (1024 + (i % 60_000) as u16).to_be_bytes();
        key.dport = 80u16.to_be_bytes();
        key.protocol = 6;
        let hash = director_common::flow_table_hash(&key, seed);
        let (b1, _) = director_common::flow_buckets(hash, buckets);
        let ways = used.entry(b1).or_default();
        if *ways == director_common::FLOW_WAYS {
            continue;
        }
        let entry = director_common::FlowEntry::new(key, hash as u32, 0, 0, 1, 0);
        // SAFETY: FlowEntry is 64 bytes of plain integers.
        let value: [u8; 64] = unsafe { std::mem::transmute(entry) };
        flows.update(&(b1 + *ways).to_ne_bytes(), &value)?;
        *ways += 1;
        written += 1;
    }
    ensure!(written > 250_000, "only {written} flows written");
    // What a stall would cost: one walk of the table from user space, timed
    // here on the same machine (a daemon walking it on its loop answered
    // nothing for that long, 2.5 s on the 2-core lab VM).
    let t = std::time::Instant::now();
    let walked = flows.walk(4, 64)?;
    let walk = t.elapsed();
    ensure!(walked >= entries as usize, "only {walked} entries walked");
    let mut worst = Duration::ZERO;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let t = std::time::Instant::now();
        scenario::status(&state)?;
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("worst status {worst:?}, one walk of {walked} flows {walk:?}");
    ensure!(
        worst < walk / 4,
        "status took {worst:?} with a full flow table and flow sync every 50 ms \
         (one walk of the table takes {walk:?})"
    );
    Ok(())
}
