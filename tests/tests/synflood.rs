//! A SYN flood against the VIP while long downloads run, idle keep-alive
//! connections wait, and the pool changes: no download and no idle
//! connection breaks when a real server is added mid-flood, and the
//! control socket keeps answering quickly. With the SYN-flood guard
//! (`global.new_flow_limit`) the flood is barely recorded. Without it
//! (limit 0) the flood fills the (small) flow table - the test requires
//! every way taken - and still evicts no connection that sent a second
//! packet: a full bucket gives up a way no packet used since its last
//! eviction, which a SYN-only flood flow always is. (The LRU table this
//! replaced broke 5 to 11 of the 30 idle connections in that run, so the
//! test can tell.)

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, flood, http, lab::VIP, scenario};

const SIZE: usize = 3 << 20;

/// The longest round trip of the control socket's status request while
/// `stop` is unset.
fn worst_status(state: &Path, stop: &AtomicBool) -> Result<(Duration, usize)> {
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let mut s = std::os::unix::net::UnixStream::connect(state.join("director.sock"))?;
        s.write_all(b"{\"command\":\"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        ensure!(line.contains("router_id"), "status answer: {line}");
        worst = worst.max(t.elapsed());
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((worst, n))
}

struct Outcome {
    broken: usize,
    idle_broken: usize,
    flood: flood::Flood,
    worst_status: Duration,
    statuses: usize,
    unrecorded: u64,
    /// Flow-table ways taken after the flood, and in all.
    ways: (usize, usize),
}

/// Ten downloads through the VIP; a flood of SYNs from the client; a real
/// server added by a reload in the middle of it.
fn flood_with_limit(limit: u32) -> Result<Outcome> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let servers = |n: usize| -> Vec<String> {
        lab.real_servers[..n]
            .iter()
            .map(|r| r.ip.to_string())
            .collect()
    };
    let config = |n: usize| -> Result<String> {
        let mut c = scenario::global_config(&lab, "director1")?;
        // The smallest flow table: a flood many times its size is quick.
        c.push_str(&format!(
            "flow_table_size = 1024\nnew_flow_limit = {limit}\n"
        ));
        c.push_str(&scenario::virtual_server(
            &VIP.to_string(),
            80,
            &servers(n),
            &[],
        ));
        Ok(c)
    };
    let path = lab.write("director1.toml", &config(2)?)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    lab.write_big_file(SIZE)?;
    let vip = SocketAddr::from((VIP, 80));
    let downloads = http::Downloads::start(&lab.client.ns, vip, 10, SIZE);
    // Idle keep-alive connections: one request now, the next after the
    // flood (an idle flow is what a flood pushes out of the table).
    let mut idle = lab
        .client
        .run(move || -> Result<Vec<(http::KeepAlive, String)>> {
            (0..30)
                .map(|_| {
                    let mut c = http::KeepAlive::connect(vip, Duration::from_secs(5))?;
                    let body = c.get("/")?.body;
                    Ok((c, body))
                })
                .collect()
        })??;
    std::thread::sleep(Duration::from_millis(500));

    let stop = Arc::new(AtomicBool::new(false));
    let (src, dst) = (
        flood::parse_mac(&lab.client.mac()?)?,
        flood::parse_mac(&lab.directors[0].mac()?)?,
    );
    // One flooder per CPU: the flood reaches the table from every CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let flooders: Vec<_> = (0..cpus)
        .map(|cpu| {
            let flag = stop.clone();
            lab.client.ns.spawn_thread(move || {
                // The flood comes from outside in production: here its
                // sender yields the CPU to the daemon (nice 19, this
                // thread only); the XDP work it causes stays.
                // SAFETY: plain call on the calling thread.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                flood::syn_flood(
                    Some(cpu),
                    cpu as u32,
                    "eth0",
                    src,
                    dst,
                    VIP,
                    80,
                    u64::MAX,
                    &flag,
                )
            })
        })
        .collect();
    let flag = stop.clone();
    let st = state.clone();
    let prober = std::thread::spawn(move || worst_status(&st, &flag));
    std::thread::sleep(Duration::from_millis(1500));
    // The pool changes mid-flood: a new Maglev table.
    std::fs::write(&path, config(3)?)?;
    let (ok, err) = scenario::director_cli(&["reload"], &state)?;
    ensure!(ok, "reload: {err}");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let mut flood = flood::Flood {
        sent: 0,
        took: Duration::ZERO,
    };
    for f in flooders {
        let f = f
            .join()
            .map_err(|_| anyhow::anyhow!("flooder panicked"))???;
        flood.sent += f.sent;
        flood.took = flood.took.max(f.took);
    }
    let (worst, statuses) = prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))??;
    let broken = downloads.outcomes().iter().filter(|o| o.is_err()).count();
    // How full the flood left the table: its tag words, a byte per way
    // (two buckets' words to an element).
    let s = scenario::status(&state)?;
    let pins = std::path::PathBuf::from(s["pin_dir"].as_str().context("pin_dir")?);
    let tags = director_tests::bpfmap::PinnedMap::open(&pins.join("FLOW_TAGS"))?;
    let mut ways = (0, 0);
    for element in 0..director_common::flow_tag_elements(1024 / director_common::FLOW_WAYS) {
        let word = tags.lookup(&element.to_ne_bytes(), 8)?;
        ways.0 += word.iter().filter(|b| **b != 0).count();
        ways.1 += word.len();
    }
    let mut idle_broken = 0;
    for (c, first) in idle.iter_mut() {
        if c.get("/").map(|r| r.body).ok().as_ref() != Some(first) {
            idle_broken += 1;
        }
    }
    let s = scenario::status(&state)?;
    Ok(Outcome {
        broken,
        idle_broken,
        flood,
        worst_status: worst,
        statuses,
        unrecorded: s["flows_unrecorded"].as_u64().context("flows_unrecorded")?,
        ways,
    })
}

#[test]
fn a_syn_flood_breaks_no_download_and_the_daemon_answers() -> Result<()> {
    let guarded = flood_with_limit(100)?;
    eprintln!(
        "guarded: {} SYNs in {:.1} s ({:.0}/s), {} unrecorded, {} downloads and {} idle connections broken, status worst {:?} over {}",
        guarded.flood.sent,
        guarded.flood.took.as_secs_f64(),
        guarded.flood.rate(),
        guarded.unrecorded,
        guarded.broken,
        guarded.idle_broken,
        guarded.worst_status,
        guarded.statuses
    );
    ensure!(
        guarded.flood.sent > 50 * 1024,
        "the flood was too small to matter: {} SYNs",
        guarded.flood.sent
    );
    ensure!(
        guarded.unrecorded > guarded.flood.sent / 2,
        "the guard did not engage: {} of {} unrecorded",
        guarded.unrecorded,
        guarded.flood.sent
    );
    ensure!(guarded.broken == 0, "{} downloads broke", guarded.broken);
    ensure!(
        guarded.idle_broken == 0,
        "{} idle connections broke",
        guarded.idle_broken
    );
    // A loop starved by the flood answers in seconds or not at all; how
    // fast it answers is not this test's figure (a status here spawns the
    // CLI on a machine the flood keeps busy).
    ensure!(
        guarded.worst_status < Duration::from_secs(1),
        "the control socket took {:?}",
        guarded.worst_status
    );

    let open = flood_with_limit(0)?;
    eprintln!(
        "unguarded: {} SYNs, {} unrecorded, {} of {} flow-table ways taken, {} downloads and {} idle connections broken",
        open.flood.sent, open.unrecorded, open.ways.0, open.ways.1, open.broken, open.idle_broken
    );
    // The flood was recorded and filled the table: the pressure is real.
    ensure!(
        open.unrecorded == 0,
        "{} unrecorded without a guard",
        open.unrecorded
    );
    ensure!(
        open.ways.0 == open.ways.1,
        "the flood left {} of {} ways free: it did not fill the table",
        open.ways.1 - open.ways.0,
        open.ways.1
    );
    ensure!(
        open.broken == 0,
        "{} downloads broke unguarded",
        open.broken
    );
    ensure!(
        open.idle_broken == 0,
        "{} idle connections broke unguarded: the flood evicted flows in use",
        open.idle_broken
    );
    Ok(())
}

/// Persistent clients keep their server under a spoofed SYN flood, with
/// the default SYN-flood guard: a flood of 131,072 spoofed sources at a
/// persistent service (twice what the persistence table holds, and at a
/// rate the guard lets through in part) leaves every real client's
/// affinity in place (an affinity is confirmed by the connection's second
/// packet, which a spoofed SYN never sends; the flood only churns the
/// pending table).
#[test]
fn persistent_clients_keep_their_server_under_a_spoofed_syn_flood() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let mut c = scenario::global_config(&lab, "director1")?;
    c.push_str(
        &scenario::virtual_server(&VIP.to_string(), 80, &servers, &[]).replacen(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\npersistence_timeout = 600\n",
            1,
        ),
    );
    let path = lab.write("director1.toml", &c)?;
    let state = lab.state_dir("director1")?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let clients: Vec<std::net::IpAddr> = (150..170u8)
        .map(|i| std::net::IpAddr::from([10, 0, 0, i]))
        .collect();
    for a in &clients {
        lab.client
            .ns
            .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
    }
    let vip = SocketAddr::from((VIP, 80));
    let ask = |clients: Vec<std::net::IpAddr>| -> Result<Vec<String>> {
        lab.client.run(move || -> Result<Vec<String>> {
            clients
                .iter()
                .map(|a| Ok(http::get_from(*a, vip, "/", Duration::from_secs(3))?.body))
                .collect()
        })?
    };
    let first = ask(clients.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let (src, dst) = (
        flood::parse_mac(&lab.client.mac()?)?,
        flood::parse_mac(&lab.directors[0].mac()?)?,
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let flooders: Vec<_> = (0..cpus)
        .map(|cpu| {
            let flag = stop.clone();
            lab.client.ns.spawn_thread(move || {
                // SAFETY: plain call on the calling thread.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                flood::syn_flood(
                    Some(cpu),
                    cpu as u32,
                    "eth0",
                    src,
                    dst,
                    VIP,
                    80,
                    u64::MAX,
                    &flag,
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for f in flooders {
        sent += f
            .join()
            .map_err(|_| anyhow::anyhow!("flooder panicked"))???
            .sent;
    }
    let unrecorded = scenario::status(&state)?["flows_unrecorded"]
        .as_u64()
        .unwrap_or(0);
    ensure!(sent > 131_072, "the flood sent only {sent} SYNs");
    for round in 0..3 {
        let again = ask(clients.clone())?;
        let moved: Vec<String> = clients
            .iter()
            .zip(first.iter().zip(&again))
            .filter(|(_, (a, b))| a != b)
            .map(|(c, (a, b))| format!("{c}: {} -> {}", a.trim(), b.trim()))
            .collect();
        ensure!(
            moved.is_empty(),
            "round {round}: clients lost their server to the flood of {sent} SYNs: {moved:?}"
        );
    }
    eprintln!(
        "{sent} spoofed SYNs ({unrecorded} past the guard): all {} persistent clients kept their server",
        clients.len()
    );
    Ok(())
}
