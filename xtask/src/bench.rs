//! `cargo xtask bench failover`: the client-visible outage when the VRRP
//! master dies, for director pairs (VRRP alone, and VRRP with
//! `master_bfd` at 10 ms x 3) against keepalived pairs with the same
//! advert settings, in the same run. "Dies" is kill -9 of its VRRP speaker
//! plus its link going down at the same instant: a killed director's
//! pinned dataplane would otherwise keep forwarding the VIP it still holds
//! (and so would the dataplane beside keepalived), which hides the VRRP
//! part. The outage is measured without quantization: a UDP datagram every
//! millisecond through the VIP to an echo on the real servers, the longest
//! run of unanswered datagrams around the kill; 20 kills per setting (FAILOVER_KILLS)
//! and implementation, p50 and p99 reported, and director minus keepalived
//! kill by kill (kill k of each lands at the same phase of its master's
//! adverts). `--soak SECONDS` then runs a
//! 10 ms pair under CPU load and counts false failovers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, Proc, capture, lab::VIP, scenario};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

pub(crate) struct Setting {
    label: &'static str,
    version: u8,
    interval: &'static str,
}

impl Setting {
    /// The advert interval, seconds.
    fn interval_s(&self) -> f64 {
        self.interval.parse().unwrap_or(1.0)
    }
}

pub(crate) const SETTINGS: [Setting; 3] = [
    Setting {
        label: "v2, 1 s",
        version: 2,
        interval: "1",
    },
    Setting {
        label: "v3, 100 ms",
        version: 3,
        interval: "0.1",
    },
    Setting {
        label: "v3, 10 ms",
        version: 3,
        interval: "0.01",
    },
];

pub fn run(soak: u64, soak_only: bool, short: bool) -> Result<()> {
    if soak_only {
        return soak_run(soak.max(1));
    }
    const KINDS: [Kind; 3] = [Kind::Director, Kind::DirectorBfd, Kind::Keepalived];
    if short {
        // One setting, one kill each: the harness and all three pairs
        // proven (the prober saw the VIP answer again after the kill).
        let s = &SETTINGS[1];
        for kind in KINDS {
            let o = outage(s, kind, 0.5)?;
            ensure!(
                o.gap < Duration::from_secs(3),
                "{s:?} {kind:?}: no takeover within 3 s",
                s = s.label
            );
            // The takeover path's figures are measured: the client saw the
            // master's last advert, then the new master's advert and its
            // gratuitous ARP for the VIP.
            ensure!(
                o.takeover.is_some(),
                "{s:?} {kind:?}: the client did not see the master's last advert, the new master's advert and its gratuitous ARP",
                s = s.label
            );
            println!(
                "ok  failover {}: {} pair, master killed, the VIP answered again, its advert and gratuitous ARP seen (no figures in short mode)",
                s.label,
                kind.name()
            );
        }
        return Ok(());
    }
    // FAILOVER_KILLS=N: fewer (or more) kills per cell than the 20 the
    // figures of record use.
    let kills: usize = std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(20);
    println!(
        "failover: client-visible outage when the master dies (kill -9 + link down): the longest run of unanswered UDP datagrams sent every 1 ms through the VIP, {kills} kills per cell, implementations interleaved"
    );
    println!(
        "  {:<12} {:>22} {:>22} {:>22}",
        "setting", "director p50/p99", "director+BFD p50/p99", "keepalived p50/p99"
    );
    // FAILOVER_SETTINGS=1,2 measures only those rows (0: v2 1 s, 1: v3
    // 100 ms, 2: v3 10 ms).
    let only: Option<Vec<usize>> = std::env::var("FAILOVER_SETTINGS")
        .ok()
        .map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    let mut past_lines = Vec::new();
    let mut paired_lines = Vec::new();
    let mut takeover_lines = Vec::new();
    for (si, s) in SETTINGS.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&si)) {
            continue;
        }
        // Outages, ms.
        let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
        // Outage minus what the advert phase explains (see `outage`), ms.
        let mut past: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
        // The new master's first advert and first gratuitous ARP past the
        // master-down deadline, from kernel timestamps, ms.
        let mut adverts: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
        let mut garps: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
        let interval = s.interval_s();
        // The backup's master-down interval (priority 100): 3 intervals
        // plus the skew (256 - 100) / 256 of one.
        let down_ms = interval * (3.0 + 156.0 / 256.0) * 1000.0;
        for k in 0..kills {
            // The kill's phase against the master's adverts decides up to
            // one interval of the outage (the backup counts its down
            // interval from the last advert it heard): kill k lands
            // (k + 0.5) / kills of an interval after an advert, the same
            // phases for every implementation. Without this the phase was
            // set by the start-up path of each implementation, nearly the
            // same on every run, and differed between implementations.
            let phase = (k as f64 + 0.5) / kills as f64;
            for (i, kind) in KINDS.iter().enumerate() {
                let o = outage(s, *kind, phase)?;
                gaps[i].push(o.gap.as_secs_f64() * 1000.0);
                if let Some(since) = o.since {
                    past[i].push((o.gap + since).as_secs_f64() * 1000.0 - down_ms);
                }
                if let Some((advert, garp)) = o.takeover {
                    adverts[i].push(advert);
                    garps[i].push(garp);
                }
            }
        }
        // Director minus keepalived at the same kill phase (kill k of each
        // lands at the same phase of its master's adverts): what the
        // implementations add beyond the phase, kill by kill.
        let mut paired: Vec<f64> = gaps[0].iter().zip(&gaps[2]).map(|(d, k)| d - k).collect();
        let at_or_under = paired.iter().filter(|d| **d <= 0.0).count();
        paired_lines.push(format!(
            "  {:<12} p50 {:+.0} ms, p10 {:+.0} / p90 {:+.0} ms; director at or under keepalived in {at_or_under} of {} kills",
            s.label,
            percentile(&mut paired, 0.5),
            percentile(&mut paired, 0.1),
            percentile(&mut paired, 0.9),
            paired.len()
        ));
        let cells: Vec<(f64, f64)> = gaps
            .iter_mut()
            .map(|g| (percentile(g, 0.5), percentile(g, 0.99)))
            .collect();
        let cell = |c: (f64, f64)| format!("{:.0} / {:.0} ms", c.0, c.1);
        let (d, b, k) = (cells[0], cells[1], cells[2]);
        println!(
            "  {:<12} {:>22} {:>22} {:>22}   director/keepalived p50 {:.2}x{}",
            s.label,
            cell(d),
            cell(b),
            cell(k),
            d.0 / k.0,
            if d.0 <= k.0 && b.1 <= 50.0 {
                ""
            } else if d.0 > k.0 {
                "  (target director <= keepalived: MISSED)"
            } else {
                "  (target BFD p99 <= 50 ms: MISSED)"
            }
        );
        let (d, k) = (
            (
                percentile(&mut past[0], 0.5),
                percentile(&mut past[0], 0.99),
            ),
            (
                percentile(&mut past[2], 0.5),
                percentile(&mut past[2], 0.99),
            ),
        );
        let p =
            |v: &mut Vec<f64>| format!("{:+.3} / {:+.3}", percentile(v, 0.5), percentile(v, 0.99));
        takeover_lines.push(format!(
            "  {:<12} director: advert {} ms, GARP {} ms; keepalived: advert {} ms, GARP {} ms ({} and {} kills)",
            s.label,
            p(&mut adverts[0]),
            p(&mut garps[0]),
            p(&mut adverts[2]),
            p(&mut garps[2]),
            garps[0].len(),
            garps[2].len()
        ));
        past_lines.push(format!(
            "  {:<12} director {:.0} / {:.0} ms, keepalived {:.0} / {:.0} ms ({} and {} kills with the master's last advert seen)",
            s.label,
            d.0,
            d.1,
            k.0,
            k.1,
            past[0].len(),
            past[2].len()
        ));
    }
    if !paired_lines.is_empty() {
        println!("director - keepalived (VRRP alone), kill by kill at the same advert phase:");
        for l in paired_lines {
            println!("{l}");
        }
    }
    if !past_lines.is_empty() {
        println!(
            "takeover past the master-down interval (VRRP alone): outage + time from the master's last advert (seen by the client) to the kill - the backup's master-down interval; p50 / p99:"
        );
        for l in past_lines {
            println!("{l}");
        }
    }
    if !takeover_lines.is_empty() {
        println!(
            "takeover path (VRRP alone): the new master's first advert and first gratuitous ARP for the VIP, from the client's kernel receive timestamps, past the backup's master-down deadline (the master's last advert + the master-down interval); p50 / p99:"
        );
        for l in takeover_lines {
            println!("{l}");
        }
    }
    if soak > 0 {
        soak_run(soak)?;
    }
    Ok(())
}

/// The `p` quantile (0 to 1) of `v` (sorted in place; NaN when empty).
pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    Director,
    /// Director pair with BFD between them (10 ms x 3) and `master_bfd`.
    DirectorBfd,
    Keepalived,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Director => "director",
            Kind::DirectorBfd => "director + master_bfd",
            Kind::Keepalived => "keepalived",
        }
    }
}

/// The UDP service the failover prober goes through.
pub(crate) const PROBE_PORT: u16 = 9999;

/// The master (director 0) and backup (director 1) of one pair.
pub(crate) struct Pair {
    pub(crate) master: Vec<Proc>,
    _backup: Vec<Proc>,
    pub(crate) master_pids: Vec<i32>,
}

pub(crate) fn start_pair(lab: &Lab, s: &Setting, kind: Kind) -> Result<Pair> {
    start_pair_with(lab, s, kind, false)
}

/// A pair; `flow_sync` turns on flow sharing between the directors.
pub(crate) fn start_pair_with(lab: &Lab, s: &Setting, kind: Kind, flow_sync: bool) -> Result<Pair> {
    let extra = format!("version = {}\nadvert_int = {}", s.version, s.interval);
    let mut procs = Vec::new();
    let mut pids = Vec::new();
    for (i, prio) in [(0usize, 150u8), (1, 100)] {
        let name = format!("director{}", i + 1);
        let mut ps = Vec::new();
        let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
        let probe = scenario::udp_virtual_server(&VIP.to_string(), PROBE_PORT, &servers);
        match kind {
            Kind::Director | Kind::DirectorBfd => {
                let extra = if kind == Kind::DirectorBfd && i == 1 {
                    format!("{extra}\nmaster_bfd = \"peer\"")
                } else {
                    extra.clone()
                };
                let mut c = scenario::vrrp_config(lab, &name, prio, &extra)? + &probe;
                if kind == Kind::DirectorBfd {
                    let peer = lab.directors[1 - i].ip;
                    c.push_str(&format!(
                        "\n[[bfd_instance]]\nname = \"peer\"\nneighbor_ip = \"{peer}\"\nmin_rx = 10\nmin_tx = 10\nmultiplier = 3\n"
                    ));
                }
                if flow_sync {
                    let global = scenario::global_config(lab, &name)?;
                    let (me, peer) = if i == 0 {
                        ("10.0.0.10", "10.0.0.11")
                    } else {
                        ("10.0.0.11", "10.0.0.10")
                    };
                    c = c.replacen(
                        &global,
                        &format!(
                            "{global}flow_sync = {{ listen = \"{me}:8848\", peers = [\"{peer}:8848\"], key = \"bench-sync-key\", interval = 0.2 }}\n"
                        ),
                        1,
                    );
                }
                let p = lab.write(&format!("{name}.toml"), &c)?;
                ps.push(scenario::spawn_director(lab, i, &p)?);
            }
            Kind::Keepalived => {
                let c = scenario::http_config(lab, &name, &servers)? + &probe;
                let p = lab.write(&format!("{name}.toml"), &c)?;
                ps.push(scenario::spawn_director(lab, i, &p)?);
                let (k, vrrp_pid) = keepalived(lab, i, prio, s)?;
                ps.push(k);
                if i == 0 {
                    pids.push(vrrp_pid);
                }
            }
        }
        if i == 0 {
            pids.extend(ps.last().and_then(|p| p.pid()).map(|p| p as i32));
        }
        procs.push(ps);
    }
    let backup = procs.pop().context("backup")?;
    let master = procs.pop().context("master")?;
    Ok(Pair {
        master,
        _backup: backup,
        master_pids: pids,
    })
}

/// keepalived for director `i`; returns it and its VRRP child's pid.
pub(crate) fn keepalived(lab: &Lab, i: usize, prio: u8, s: &Setting) -> Result<(Proc, i32)> {
    let conf = scenario::keepalived_conf(&format!("ka{i}"), prio, s.version, s.interval);
    let k = scenario::spawn_keepalived(lab, i, &conf)?;
    let pid = k.vrrp_pid(Duration::from_secs(10))?;
    Ok((k.proc, pid))
}

pub(crate) fn wait_master_serving(lab: &Lab, kind: Kind, pair: &mut Pair) -> Result<()> {
    let s1 = lab.state_dir("director1")?;
    match kind {
        Kind::Director | Kind::DirectorBfd => {
            scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(15))?
        }
        Kind::Keepalived => {
            let ka = pair.master.last_mut().context("keepalived")?;
            ka.wait_for_log(Duration::from_secs(15), |l| {
                l.contains("Entering MASTER STATE")
            })?;
        }
    }
    for s in ["director1", "director2"] {
        scenario::wait_status(
            &lab.state_dir(s)?,
            Duration::from_secs(10),
            scenario::all_resolved,
        )?;
    }
    Ok(())
}

/// What one kill measured.
pub(crate) struct Outage {
    /// The longest run of unanswered datagrams (1 ms each).
    gap: Duration,
    /// From the master's last advert the client saw to the kill.
    since: Option<Duration>,
    /// The new master's first advert and first gratuitous ARP, each
    /// relative to the backup's master-down deadline (the master's last
    /// advert + the master-down interval), from the kernel's receive
    /// timestamps in the client's namespace: microsecond resolution.
    takeover: Option<(f64, f64)>,
}

pub(crate) fn outage(s: &Setting, kind: Kind, phase: f64) -> Result<Outage> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let mut pair = start_pair(&lab, s, kind)?;
    wait_master_serving(&lab, kind, &mut pair)?;
    // Let the backup settle (it must have heard the master; BFD up).
    std::thread::sleep(Duration::from_millis(500));
    if kind == Kind::DirectorBfd {
        let s2 = lab.state_dir("director2")?;
        scenario::wait_status(&s2, Duration::from_secs(10), |st| {
            st["bfd"][0]["state"] == "up"
        })?;
    }
    let _echo = lab.start_udp_echo(VIP.into(), PROBE_PORT)?;
    let probe = SocketAddr::from((VIP, PROBE_PORT));
    // Enough for a v2 takeover (3 x 1 s + skew) plus margin.
    let wait = if s.version == 2 { 5000 } else { 1500 };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let master = lab.directors[0].ip;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let heard = seen.clone();
    // The VRRP adverts and the gratuitous ARPs for the VIP reaching the
    // client, with the kernel's receive timestamps.
    let sniffer = lab.client.ns.spawn_thread(move || {
        capture::frames(
            &flag,
            |protocol, d| {
                (protocol == libc::ETH_P_IP as u16 && d.len() >= 20 && d[9] == 112)
                    || protocol == libc::ETH_P_ARP as u16
            },
            &heard,
        )
    });
    let mut link = capture::LinkSwitch::new(&lab.directors[0].ns, "eth0")?;
    let (killed_at, tally) =
        director_tests::udp::probe_during(&lab.client.ns, probe, Duration::from_millis(1), || {
            let interval = s.interval_s();
            let settled = Instant::now() + Duration::from_millis(300);
            std::thread::sleep(Duration::from_millis(300));
            // The next advert the client sees, then the phase.
            let advert = loop {
                let last = seen
                    .lock()
                    .map_err(|_| anyhow::anyhow!("advert list poisoned"))?
                    .iter()
                    .rev()
                    .find(|f| f.vrrp_source() == Some(master))
                    .map(|f| f.at);
                match last {
                    Some(t) if t >= settled => break t,
                    _ if settled.elapsed() > Duration::from_secs(5) => {
                        anyhow::bail!("no advert from the master within 5 s")
                    }
                    _ => std::thread::sleep(Duration::from_micros(200)),
                }
            };
            let at = advert + Duration::from_secs_f64(phase * interval);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let killed_at = Instant::now();
            for pid in &pair.master_pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            // Microseconds after the kill (not an `ip` process's
            // milliseconds of jitter): the outage starts when the link
            // goes, the backup's deadline from the last advert.
            link.down()?;
            std::thread::sleep(Duration::from_millis(wait));
            Ok(killed_at)
        })?;
    stop.store(true, Ordering::Relaxed);
    sniffer
        .join()
        .map_err(|_| anyhow::anyhow!("the advert sniffer panicked"))???;
    let adverts = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("advert list poisoned"))?
        .clone();
    let last = adverts
        .iter()
        .rev()
        .find(|f| f.vrrp_source() == Some(master) && f.at <= killed_at);
    let since = last.map(|f| killed_at - f.at);
    let takeover = last.and_then(|last| {
        let down = Duration::from_secs_f64(s.interval_s() * (3.0 + 156.0 / 256.0));
        let deadline = last.at + down;
        let ms = |f: &capture::Frame| {
            (f.at.saturating_duration_since(deadline).as_secs_f64()
                - deadline.saturating_duration_since(f.at).as_secs_f64())
                * 1000.0
        };
        let after = adverts.iter().filter(|f| f.at > killed_at);
        let advert = after
            .clone()
            .find(|f| f.vrrp_source().is_some_and(|a| a != master))?;
        let garp = after.clone().find(|f| f.is_garp_for(VIP))?;
        Some((ms(advert), ms(garp)))
    });
    // The probe ran 500 ms before the kill and `wait` after it: a gap that
    // long means the VIP never answered again.
    ensure!(
        tally.longest_gap + 200 < wait,
        "{kind:?}: the VIP did not answer again within {wait} ms (longest gap {} datagrams of {})",
        tally.longest_gap,
        tally.sent
    );
    drop(pair);
    Ok(Outage {
        gap: Duration::from_millis(tally.longest_gap),
        since,
        takeover,
    })
}

/// A director pair at 10 ms adverts with both cores busy: any transition
/// after convergence is a false failover.
fn soak_run(seconds: u64) -> Result<()> {
    let s = &SETTINGS[2];
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let mut pair = start_pair(&lab, s, Kind::Director)?;
    wait_master_serving(&lab, Kind::Director, &mut pair)?;
    std::thread::sleep(Duration::from_secs(1));
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let transitions = |dir: &std::path::Path| -> Result<u64> {
        scenario::status(dir)?["vrrp"][0]["transitions"]
            .as_u64()
            .context("transitions")
    };
    let (t1, t2) = (transitions(&s1)?, transitions(&s2)?);
    // One busy loop per core: "both cores loaded".
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let load: Vec<std::process::Child> = (0..cores)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    println!(
        "soak: director pair at 10 ms adverts, {cores} busy loops on {cores} cores, {seconds} s"
    );
    std::thread::sleep(Duration::from_secs(seconds));
    for mut c in load {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (n1, n2) = (transitions(&s1)? - t1, transitions(&s2)? - t2);
    let st = scenario::status(&s2)?;
    println!(
        "soak: director: false failovers: {} (master transitions {n1}, backup transitions {n2}); backup received {} adverts",
        n2.div_ceil(2),
        st["vrrp"][0]["adverts_received"]
    );
    let log = pair._backup.first().map(|p| p.log()).unwrap_or_default();
    let mlog = pair.master.first().map(|p| p.log()).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("new=\"master\""))
        .chain(mlog.lines().filter(|l| l.contains("sent late")))
    {
        println!(
            "soak:   {}",
            l.split_once("Z ").map(|x| x.1).unwrap_or(l).trim()
        );
    }
    drop(pair);
    drop(lab);

    // keepalived, same settings and load, for comparison; beside the
    // director's dataplane (XDP on the same interfaces), as in the outage
    // runs, so the kernel path is the same.
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let mut pair = start_pair(&lab, s, Kind::Keepalived)?;
    wait_master_serving(&lab, Kind::Keepalived, &mut pair)?;
    std::thread::sleep(Duration::from_secs(2));
    let backup_log = |pair: &Pair| pair._backup.last().map(|p| p.log()).unwrap_or_default();
    let before = backup_log(&pair).matches("Entering MASTER STATE").count();
    let load: Vec<std::process::Child> = (0..cores)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_secs(seconds));
    for mut c in load {
        let _ = c.kill();
        let _ = c.wait();
    }
    let after = backup_log(&pair).matches("Entering MASTER STATE").count();
    println!(
        "soak: keepalived: false failovers: {} (same settings, load and duration, XDP dataplane beside it)",
        after - before
    );
    drop(pair);
    Ok(())
}
